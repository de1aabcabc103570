"""davss_ros.resize: how camera images reach the network input and outputs come back."""

import numpy as np
import pytest

from davss_ros.resize import Framing


def _stripes(h, w):
    """An image whose column index (mod 256) is its red value: positions are readable."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (np.arange(w) * 255 // max(w - 1, 1))[None, :]
    img[..., 1] = (np.arange(h) * 255 // max(h - 1, 1))[:, None]
    return img


def test_same_aspect_is_a_plain_resize_under_every_policy():
    for policy in ("letterbox", "stretch", "crop"):
        f = Framing.of(policy, (128, 256), (256, 512))
        assert f.is_plain and f.offset == (0, 0) and not f.changes_aspect


def test_letterbox_keeps_the_aspect_ratio_and_centres_the_image():
    f = Framing.of("letterbox", (144, 176), (256, 512))
    assert f.scaled == (256, 313) and f.offset == (0, 99)
    net = f.to_network(_stripes(144, 176))
    assert net.shape == (256, 512, 3)
    assert not net[:, :99].any() and not net[:, 99 + 313:].any()  # black borders
    assert net[:, 99:99 + 313].any()
    assert "letterboxed" in f.describe()


def test_stretch_says_that_it_changes_the_aspect_ratio():
    f = Framing.of("stretch", (144, 176), (256, 512))
    assert f.is_plain and f.changes_aspect
    assert "aspect ratio changed" in f.describe()


@pytest.mark.parametrize("policy", ["letterbox", "stretch", "crop"])
@pytest.mark.parametrize("size", [(144, 176), (480, 640), (720, 1280), (100, 37)])
def test_a_map_made_from_the_network_image_maps_back_onto_the_input_pixels(policy, size):
    """Labels computed per network pixel from what that pixel shows come back to the input
    pixel that shows the same thing (within the resampling of one network pixel)."""
    h, w = size
    f = Framing.of(policy, size, (256, 512))
    img = _stripes(h, w)
    net = f.to_network(img)
    labels = (net[..., 0] // 32).astype(np.uint8)  # a "segmenter" reading the red stripes
    back = f.to_image(labels, 255)
    assert back.shape == (h, w) and back.dtype == np.uint8
    seen = back != 255
    truth = img[..., 0] // 32
    # each input pixel's label is the band of its own column, but where a band boundary
    # falls inside one network pixel
    agree = (back == truth)[seen].mean()
    assert agree > 0.9, agree
    if policy == "crop" and not f.is_plain:
        assert not seen.all() and seen.any()  # the cut-off columns or rows are 255
        sh, sw = f.scaled
        if sw > 512:  # cut left and right: the unseen pixels are the outer columns
            assert (~seen[:, 0]).all() and (~seen[:, -1]).all() and seen[:, w // 2].all()
    else:
        assert seen.all()


def test_float_maps_come_back_bilinear_and_unseen_pixels_take_the_fill():
    f = Framing.of("crop", (256, 256), (256, 512))
    back = f.to_image(np.full((256, 512), 0.25, np.float32), 1.0)
    assert back.shape == (256, 256) and back.dtype == np.float32
    assert (back == 0.25).sum() + (back == 1.0).sum() == back.size


def test_bad_policy_and_map_size_are_refused():
    with pytest.raises(ValueError, match="letterbox, stretch, crop"):
        Framing.of("zoom", (10, 10), (64, 64))
    with pytest.raises(ValueError, match="expected a 64x64 map"):
        Framing.of("stretch", (10, 10), (64, 64)).to_image(np.zeros((8, 8), np.uint8), 255)
