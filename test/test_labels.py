import numpy as np
import pytest

from davss_ros.classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from davss_ros.data.labels import (
    CAMVID32_COLORS,
    CAMVID_CLASSES,
    CITYSCAPES_LABELS,
    camvid32_rgb_to_train_id,
    camvid_index_to_train_id,
    id_to_train_id,
    train_id_to_id,
)


def test_known_ids_map_to_their_train_ids():
    ids = np.array([[7, 8, 26], [0, 23, 24]], np.uint8)
    assert id_to_train_id(ids).tolist() == [[0, 1, 13], [255, 10, 11]]


def test_every_void_id_maps_to_255():
    void = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]
    assert (id_to_train_id(np.array(void, np.uint8)) == 255).all()


def test_table_has_34_ids_plus_license_plate_and_matches_classes():
    ids = sorted(lab.id for lab in CITYSCAPES_LABELS)
    assert ids == [-1] + list(range(34))
    for lab in CITYSCAPES_LABELS:
        if 0 <= lab.train_id < 255:
            assert CITYSCAPES_CLASSES[lab.train_id] == lab.name
            assert CITYSCAPES_PALETTE[lab.train_id] == lab.color


def test_ids_outside_the_table_raise_naming_them():
    with pytest.raises(ValueError, match=r"\[34, 200\]"):
        id_to_train_id(np.array([7, 34, 200, 8], np.uint8))


def test_non_strict_maps_unknown_ids_to_ignore():
    out = id_to_train_id(np.array([7, 34, 200], np.uint8), strict=False)
    assert out.tolist() == [0, 255, 255]


def test_train_id_to_id_round_trips_all_train_ids():
    train = np.array(list(range(19)) + [255], np.uint8)
    ids = train_id_to_id(train)
    assert ids[-1] == 0 and ids[0] == 7 and ids[13] == 26
    assert (id_to_train_id(ids) == train).all()
    with pytest.raises(ValueError, match="19"):
        train_id_to_id(np.array([19], np.uint8))


def test_float_labels_are_refused():
    with pytest.raises(ValueError, match="integer"):
        id_to_train_id(np.zeros((2, 2), np.float32))


def test_camvid_indices_map_void_to_255_and_reject_above_11():
    assert len(CAMVID_CLASSES) == 11
    assert camvid_index_to_train_id(np.array([0, 3, 10, 11], np.uint8)).tolist() == [
        0, 3, 10, 255]
    with pytest.raises(ValueError, match=r"\[12\]"):
        camvid_index_to_train_id(np.array([12], np.uint8))


def test_camvid32_colours_group_into_11_classes():
    names = ["Road", "LaneMkgsDriv", "SUVPickupTruck", "Child", "Void", "Sky"]
    rgb = np.array([[CAMVID32_COLORS[n] for n in names]], np.uint8)
    out = camvid32_rgb_to_train_id(rgb)
    car, ped = CAMVID_CLASSES.index("Car"), CAMVID_CLASSES.index("Pedestrian")
    assert out.tolist() == [[3, 3, car, ped, 255, 0]]
    with pytest.raises(ValueError, match=r"\(1, 2, 3\)"):
        camvid32_rgb_to_train_id(np.array([[[1, 2, 3]]], np.uint8))
