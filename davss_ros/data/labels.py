"""Label tables: the official Cityscapes ids and trainIds, CamVid's 11 classes.

Cityscapes files store *ids* (0..33, the ``*_gtFine_labelIds.png`` images); networks are
trained on *trainIds* (0..18 and 255 = ignore). ``id_to_train_id`` maps the first to the
second through a lookup table and refuses ids that are not in the official table, since
a stray id almost always means a wrong file (a colour image, an instance map) rather than
a class to ignore. ``train_id_to_id`` goes the other way, for writing label files.

CamVid is used here in its common 11-class form (the SegNet split): label indices 0..10
and 11 = void, mapped to 255. ``camvid32_rgb_to_train_id`` maps the original 32-class
colour-coded labels (``*_L.png``) to those 11 classes with the grouping documented at
``CAMVID32_TO_11``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from davss_ros.classes import CITYSCAPES_CLASSES, IGNORE_ID


class CityscapesLabel(NamedTuple):
    name: str
    id: int
    train_id: int  # 255 = ignored in training; -1 only for the license plate, as upstream
    category: str
    color: tuple[int, int, int]


# The official table (cityscapesscripts/helpers/labels.py): 34 ids and the license plate.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, "void", (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, "void", (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, "void", (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, "void", (0, 0, 0)),
    CityscapesLabel("static", 4, 255, "void", (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, "void", (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, "void", (81, 0, 81)),
    CityscapesLabel("road", 7, 0, "flat", (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, "flat", (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, "flat", (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, "flat", (230, 150, 140)),
    CityscapesLabel("building", 11, 2, "construction", (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, "construction", (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, "construction", (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, "construction", (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, "construction", (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, "construction", (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, "object", (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, "object", (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, "object", (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, "object", (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, "nature", (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, "nature", (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, "sky", (70, 130, 180)),
    CityscapesLabel("person", 24, 11, "human", (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, "human", (255, 0, 0)),
    CityscapesLabel("car", 26, 13, "vehicle", (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, "vehicle", (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, "vehicle", (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, "vehicle", (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, "vehicle", (0, 0, 110)),
    CityscapesLabel("train", 31, 16, "vehicle", (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, "vehicle", (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, "vehicle", (0, 0, 142)),
)

NUM_CITYSCAPES_IDS = 34  # ids 0..33 can appear in a labelIds image


def _build_id_lut() -> tuple[np.ndarray, np.ndarray]:
    lut = np.full(256, IGNORE_ID, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    for label in CITYSCAPES_LABELS:
        if label.id < 0:
            continue  # the license plate never appears in a uint8 labelIds image
        known[label.id] = True
        lut[label.id] = label.train_id if 0 <= label.train_id < 255 else IGNORE_ID
    return lut, known


_ID_TO_TRAIN, _ID_KNOWN = _build_id_lut()

# trainId -> id: the first (lowest) id carrying each trainId; 255 -> 0 ("unlabeled").
_TRAIN_TO_ID = np.zeros(256, dtype=np.uint8)
for _label in reversed(CITYSCAPES_LABELS):
    if 0 <= _label.train_id < 255 and _label.id >= 0:
        _TRAIN_TO_ID[_label.train_id] = _label.id
_TRAIN_KNOWN = np.zeros(256, dtype=bool)
_TRAIN_KNOWN[: len(CITYSCAPES_CLASSES)] = True
_TRAIN_KNOWN[IGNORE_ID] = True

# The 19 trainId names must agree with davss_ros.classes.
assert tuple(
    lab.name for lab in sorted(
        (lab for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 255), key=lambda x: x.train_id)
) == CITYSCAPES_CLASSES


def _as_index_array(values: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be an integer array, got dtype {arr.dtype}")
    return arr


def _out_of_table(arr: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Sorted unique values of ``arr`` that the boolean table ``known`` does not accept."""
    uniq = np.unique(arr)
    in_range = (uniq >= 0) & (uniq < 256)
    ok = np.zeros(uniq.shape, dtype=bool)
    ok[in_range] = known[uniq[in_range].astype(np.int64)]
    return uniq[~ok]


def id_to_train_id(label_ids: np.ndarray, *, strict: bool = True) -> np.ndarray:
    """Map Cityscapes ids (as stored in ``*_labelIds.png``) to trainIds, uint8.

    Ids that train on nothing (void, parking, guard rail, ...) become 255. An id outside the
    official table raises ValueError naming it, unless ``strict=False``, which maps it to 255.
    """
    arr = _as_index_array(label_ids, "label_ids")
    bad = _out_of_table(arr, _ID_KNOWN)
    if bad.size:
        if strict:
            raise ValueError(
                f"ids not in the Cityscapes label table: {bad.tolist()[:20]} "
                f"(valid ids are 0..{NUM_CITYSCAPES_IDS - 1})")
        arr = np.where(np.isin(arr, bad), 0, arr)
    return _ID_TO_TRAIN[arr.astype(np.intp, copy=False)]


def train_id_to_id(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds (0..18, 255) to Cityscapes ids for writing ``*_labelIds.png``; uint8.

    255 becomes id 0 ("unlabeled"); any other value outside 0..18 raises ValueError.
    """
    arr = _as_index_array(train_ids, "train_ids")
    bad = _out_of_table(arr, _TRAIN_KNOWN)
    if bad.size:
        raise ValueError(f"not Cityscapes trainIds (0..18 or 255): {bad.tolist()[:20]}")
    return _TRAIN_TO_ID[arr.astype(np.intp, copy=False)]


def cityscapes_id_names() -> dict[int, str]:
    return {lab.id: lab.name for lab in CITYSCAPES_LABELS}


# ----------------------------------------------------------------------------- CamVid

CAMVID_CLASSES: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
)
CAMVID_VOID = 11  # index of "void" in the SegNet-style annotation PNGs
# The SegNet tutorial's colours for the 11 classes.
CAMVID_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)

_CAMVID_LUT = np.full(256, IGNORE_ID, dtype=np.uint8)
_CAMVID_LUT[: len(CAMVID_CLASSES)] = np.arange(len(CAMVID_CLASSES), dtype=np.uint8)
_CAMVID_KNOWN = np.zeros(256, dtype=bool)
_CAMVID_KNOWN[: CAMVID_VOID + 1] = True


def camvid_index_to_train_id(indices: np.ndarray, *, strict: bool = True) -> np.ndarray:
    """SegNet-style CamVid label indices (0..10, 11 = void) to train ids (void -> 255)."""
    arr = _as_index_array(indices, "indices")
    bad = _out_of_table(arr, _CAMVID_KNOWN)
    if bad.size:
        if strict:
            raise ValueError(
                f"values outside the CamVid 11-class indices 0..{CAMVID_VOID}: "
                f"{bad.tolist()[:20]}")
        arr = np.where(np.isin(arr, bad), CAMVID_VOID, arr)
    return _CAMVID_LUT[arr.astype(np.intp, copy=False)]


# The original 32-class CamVid colour code (label_colors.txt), name -> RGB.
CAMVID32_COLORS: dict[str, tuple[int, int, int]] = {
    "Animal": (64, 128, 64), "Archway": (192, 0, 128), "Bicyclist": (0, 128, 192),
    "Bridge": (0, 128, 64), "Building": (128, 0, 0), "Car": (64, 0, 128),
    "CartLuggagePram": (64, 0, 192), "Child": (192, 128, 64), "Column_Pole": (192, 192, 128),
    "Fence": (64, 64, 128), "LaneMkgsDriv": (128, 0, 192), "LaneMkgsNonDriv": (192, 0, 64),
    "Misc_Text": (128, 128, 64), "MotorcycleScooter": (192, 0, 192),
    "OtherMoving": (128, 64, 64), "ParkingBlock": (64, 192, 128), "Pedestrian": (64, 64, 0),
    "Road": (128, 64, 128), "RoadShoulder": (128, 128, 192), "Sidewalk": (0, 0, 192),
    "SignSymbol": (192, 128, 128), "Sky": (128, 128, 128), "SUVPickupTruck": (64, 128, 192),
    "TrafficCone": (0, 0, 64), "TrafficLight": (0, 64, 64), "Train": (192, 64, 128),
    "Tree": (128, 128, 0), "Truck_Bus": (192, 128, 192), "Tunnel": (64, 0, 64),
    "VegetationMisc": (192, 192, 0), "Void": (0, 0, 0), "Wall": (64, 192, 0),
}

# Our grouping of the 32 classes into the 11 (the usual one in the video-segmentation
# literature; it is a convention, not part of the data set). Anything not listed -> void.
CAMVID32_TO_11: dict[str, str] = {
    "Sky": "Sky",
    "Building": "Building", "Wall": "Building", "Bridge": "Building", "Tunnel": "Building",
    "Archway": "Building",
    "Column_Pole": "Pole", "TrafficCone": "Pole",
    "Road": "Road", "LaneMkgsDriv": "Road", "LaneMkgsNonDriv": "Road",
    "Sidewalk": "Sidewalk", "ParkingBlock": "Sidewalk", "RoadShoulder": "Sidewalk",
    "Tree": "Tree", "VegetationMisc": "Tree",
    "SignSymbol": "SignSymbol", "Misc_Text": "SignSymbol", "TrafficLight": "SignSymbol",
    "Fence": "Fence",
    "Car": "Car", "SUVPickupTruck": "Car", "Truck_Bus": "Car", "Train": "Car",
    "OtherMoving": "Car",
    "Pedestrian": "Pedestrian", "Child": "Pedestrian", "CartLuggagePram": "Pedestrian",
    "Animal": "Pedestrian",
    "Bicyclist": "Bicyclist", "MotorcycleScooter": "Bicyclist",
}


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


_CAMVID32_CODES = np.array(sorted(_pack_rgb(np.array(c)) for c in CAMVID32_COLORS.values()))
_CAMVID32_CODE_TO_TRAIN = {
    int(_pack_rgb(np.array(color))): (
        CAMVID_CLASSES.index(CAMVID32_TO_11[name]) if name in CAMVID32_TO_11 else IGNORE_ID)
    for name, color in CAMVID32_COLORS.items()
}
_CAMVID32_TRAIN = np.array(
    [_CAMVID32_CODE_TO_TRAIN[int(c)] for c in _CAMVID32_CODES], dtype=np.uint8)


def camvid32_rgb_to_train_id(rgb: np.ndarray, *, strict: bool = True) -> np.ndarray:
    """Colour-coded 32-class CamVid label (H, W, 3 RGB) -> 11-class train ids (void 255).

    A colour that is not one of the 32 raises ValueError naming it (``strict=False``: 255).
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB label image, got shape {arr.shape}")
    codes = _pack_rgb(arr)
    pos = np.searchsorted(_CAMVID32_CODES, codes)
    pos = np.minimum(pos, len(_CAMVID32_CODES) - 1)
    found = _CAMVID32_CODES[pos] == codes
    if not found.all():
        if strict:
            bad = np.unique(codes[~found])[:10]
            names = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in bad]
            raise ValueError(f"colours not in the CamVid 32-class table: {names}")
    out = _CAMVID32_TRAIN[pos]
    out[~found] = IGNORE_ID
    return out
