"""davss_ros.evaluate.reliability: confidence bins against observed agreement."""

import numpy as np
import pytest

from davss_ros.evaluate.reliability import Reliability, format_reliability


def test_a_calibrated_confidence_has_zero_ece_and_an_overconfident_one_does_not():
    rng = np.random.default_rng(0)
    conf = np.repeat(np.array([51, 204], np.uint8), 10_000)  # 0.2 and 0.8
    p = conf / 255.0
    calibrated = rng.random(p.size) < p
    rel = Reliability(bins=10)
    rel.update(conf, calibrated)
    assert rel.ece() == pytest.approx(0.0, abs=0.01)
    rows = rel.table()
    assert [r["bin"] for r in rows] == [[0.2, 0.3], [0.8, 0.9]]
    assert [r["share"] for r in rows] == [0.5, 0.5]
    over = Reliability(bins=10)
    over.update(conf, np.zeros(conf.size, bool))  # never agrees
    assert over.ece() == pytest.approx(0.5, abs=1e-9)  # 0.5 * 0.2 + 0.5 * 0.8
    assert over.agreement() == 0.0


def test_the_report_names_every_bin_and_distance():
    a, b = Reliability(4), Reliability(4)
    a.update(np.full((4, 4), 255, np.uint8), np.ones((4, 4), bool))
    b.update(np.full((4, 4), 100, np.uint8), np.zeros((4, 4), bool))
    text = format_reliability({1: a, 9: b})
    assert "d=1 0.00" in text and "d=9" in text and "ECE" in text
    assert a.as_dict()["pixels"] == 16


def test_shapes_must_match():
    with pytest.raises(ValueError, match="differ in shape"):
        Reliability().update(np.zeros((2, 2), np.uint8), np.zeros((3, 2), bool))
