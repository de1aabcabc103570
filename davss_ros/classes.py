"""Class tables: names and RGB palettes of the label spaces davss_ros knows."""

from __future__ import annotations

IGNORE_ID = 255

# Cityscapes trainIds 0..18, in order, with the official colours.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Cityscapes colours for the first 19 classes, then a deterministic spread."""
    out = list(CITYSCAPES_PALETTE[:num_classes])
    for i in range(len(out), num_classes):
        out.append(((i * 67) % 256, (i * 141) % 256, (i * 29 + 97) % 256))
    return out


def default_class_names(num_classes: int) -> list[str]:
    if num_classes == len(CITYSCAPES_CLASSES):
        return list(CITYSCAPES_CLASSES)
    return [f"class_{i}" for i in range(num_classes)]
