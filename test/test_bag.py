"""``davss make-bag`` and the bag helpers: real rosbag2 files written and read with rosbags."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags", reason="rosbags is not installed")

from rosbags.rosbag2 import Reader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from davss_ros.bag.io import (  # noqa: E402
    AtomicBagWriter,
    BagError,
    BagReader,
    cdr_header_stamp,
    image_msg,
    pick_image_topic,
    typestore,
)
from davss_ros.cli import main as davss  # noqa: E402
from davss_ros.data.synthetic import SceneConfig, render_clip  # noqa: E402

H, W, FRAMES, SEED = 64, 128, 5, 3
START_NS = 1_000 * 1_000_000_000
PERIOD_NS = round(1e9 / 30)


@pytest.fixture(scope="module")
def clip():
    return render_clip(SceneConfig(height=H, width=W, frames=FRAMES, seed=SEED))


def _read_all(path):
    """topic -> [(bag time, decoded Image)] through a plain rosbags Reader."""
    ts = get_typestore(Stores.ROS2_KILTED)
    out: dict[str, list] = {}
    types = {}
    with Reader(path) as reader:
        for conn in reader.connections:
            types[conn.topic] = conn.msgtype
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, ts.deserialize_cdr(raw, conn.msgtype)))
    return types, out


@pytest.mark.parametrize("storage,suffix", [("mcap", ".mcap"), ("sqlite3", ".db3")])
def test_synthetic_bag_round_trip_keeps_topics_types_stamps_and_pixels(
        tmp_path, clip, storage, suffix, capsys):
    out = tmp_path / "bag"
    code = davss(["make-bag", "--synthetic", "--frames", str(FRAMES), "--height", str(H),
                  "--width", str(W), "--seed", str(SEED), "--start", "1000", "-o", str(out),
                  "--storage", storage, "--no-progress"])
    assert code == 0
    assert f"wrote {out}: {FRAMES} frames {W}x{H}" in capsys.readouterr().out
    assert (out / "metadata.yaml").is_file() and (out / f"bag{suffix}").is_file()
    assert not list(tmp_path.glob(".*partial*"))  # the temporary folder is gone

    types, msgs = _read_all(out)
    assert types == {"/camera/image_raw": "sensor_msgs/msg/Image",
                     "/camera/labels_gt": "sensor_msgs/msg/Image"}
    images, labels = msgs["/camera/image_raw"], msgs["/camera/labels_gt"]
    assert len(images) == len(labels) == FRAMES
    expected = [START_NS + round(i * 1e9 / 30) for i in range(FRAMES)]
    for i, ((t_img, img), (t_lab, lab)) in enumerate(zip(images, labels, strict=True)):
        stamp = img.header.stamp.sec * 1_000_000_000 + img.header.stamp.nanosec
        assert t_img == t_lab == stamp == expected[i]
        assert lab.header.stamp == img.header.stamp
        assert img.header.frame_id == lab.header.frame_id == "camera"
        assert (img.encoding, img.height, img.width, img.step) == ("rgb8", H, W, 3 * W)
        assert (lab.encoding, lab.height, lab.width, lab.step) == ("mono8", H, W, W)
        np.testing.assert_array_equal(img.data.reshape(H, W, 3), clip.images[i])
        np.testing.assert_array_equal(lab.data.reshape(H, W), clip.labels[i])
    assert expected[1] - expected[0] == PERIOD_NS


def test_images_folder_with_labels_matched_by_stem(tmp_path, clip):
    imgs, labs = tmp_path / "img", tmp_path / "lab"
    imgs.mkdir()
    labs.mkdir()
    for i in range(3):
        cv2.imwrite(str(imgs / f"f{i:02d}.png"), clip.images[i][..., ::-1])
    # Labels for frames 0 and 2 only (sparse annotation, as in CamVid)
    for i in (0, 2):
        cv2.imwrite(str(labs / f"f{i:02d}.png"), clip.labels[i])
    out = tmp_path / "bag"
    assert davss(["make-bag", "--images", str(imgs), "--labels", str(labs), "-o", str(out),
                  "--rate", "10", "--start", "5", "--no-progress"]) == 0
    _, msgs = _read_all(out)
    images, labels = msgs["/camera/image_raw"], msgs["/camera/labels_gt"]
    assert [t for t, _ in images] == [5_000_000_000, 5_100_000_000, 5_200_000_000]
    assert [t for t, _ in labels] == [5_000_000_000, 5_200_000_000]
    for i, (_, img) in enumerate(images):
        np.testing.assert_array_equal(img.data.reshape(H, W, 3), clip.images[i])
    np.testing.assert_array_equal(labels[1][1].data.reshape(H, W), clip.labels[2])


def test_video_file_uses_its_frame_rate(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (W, H))
    assert writer.isOpened()
    for i in range(4):
        writer.write(np.full((H, W, 3), (40 * i, 80, 200 - 40 * i), np.uint8))
    writer.release()
    out = tmp_path / "bag"
    assert davss(["make-bag", "--video", str(video), "-o", str(out), "--start", "0",
                  "--no-progress"]) == 0
    types, msgs = _read_all(out)
    assert list(types) == ["/camera/image_raw"]  # no labels topic without labels
    frames = msgs["/camera/image_raw"]
    assert [t for t, _ in frames] == [0, 40_000_000, 80_000_000, 120_000_000]  # 25 Hz
    first = frames[0][1].data.reshape(H, W, 3).astype(int)
    assert np.abs(first - np.array([200, 80, 0])).max() < 12  # RGB order, JPEG-close


def _jpeg_luma_sampling(data: bytes) -> int:
    """The first component's (luma's) sampling-factor byte of a baseline JPEG (SOF0)."""
    at = data.index(b"\xff\xc0")
    return data[at + 11]


def test_compressed_jpeg_bags_keep_full_colour_resolution_unless_420_is_asked(tmp_path, clip):
    sizes = {}
    for name, extra in (("default", []), ("420", ["--chroma", "420"])):
        out = tmp_path / name
        assert davss(["make-bag", "--synthetic", "--frames", str(FRAMES), "--height", str(H),
                      "--width", str(W), "--seed", str(SEED), "--compressed", "-o", str(out),
                      "--no-progress", *extra]) == 0
        _, msgs = _read_all(out)
        frames = msgs["/camera/image_raw/compressed"]
        assert len(frames) == FRAMES
        data = [bytes(m.data) for _, m in frames]
        assert all(m.format == "rgb8; jpeg compressed bgr8" for _, m in frames)
        assert {_jpeg_luma_sampling(d) for d in data} == {0x11 if name == "default" else 0x22}
        sizes[name] = sum(len(d) for d in data)
        first = cv2.imdecode(np.frombuffer(data[0], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert np.abs(first.astype(int) - clip.images[0]).mean() < 4
    assert sizes["420"] < sizes["default"]  # the trade-off: full colour costs bytes


def test_existing_output_is_refused_with_exit_code_2(tmp_path, capsys):
    out = tmp_path / "bag"
    out.mkdir()
    code = davss(["make-bag", "--synthetic", "--frames", "2", "--height", "64", "--width",
                  "64", "-o", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{out} already exists" in err and "Traceback" not in err


def test_a_failure_half_way_leaves_no_bag_behind(tmp_path, clip, capsys):
    imgs = tmp_path / "img"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "a.png"), clip.images[0][..., ::-1])
    (imgs / "b.png").write_bytes(b"not a png")  # fails after the first frame was written
    out = tmp_path / "bag"
    code = davss(["make-bag", "--images", str(imgs), "-o", str(out), "--no-progress"])
    assert code == 2
    assert "cannot decode image file" in capsys.readouterr().err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img"]  # no partial folder


def test_reader_errors_name_the_file_and_the_topics(tmp_path):
    bag = tmp_path / "bag"
    with AtomicBagWriter(bag) as w:
        w.add_topic("/chatter", "std_msgs/msg/String")
        String = typestore().types["std_msgs/msg/String"]
        w.write("/chatter", 5, String(data="hi"), "std_msgs/msg/String")
        w.add_topic("/cam/image_raw", "sensor_msgs/msg/Image")
        w.write("/cam/image_raw", 5, image_msg(np.zeros((4, 4, 3), np.uint8), "rgb8", 5, "c"),
                "sensor_msgs/msg/Image")
        w.commit()
    with BagReader(bag) as r:
        assert pick_image_topic(r) == "/cam/image_raw"
        with pytest.raises(BagError, match=r"topic /nope is not in the bag; topics in the "
                           r"bag: /cam/image_raw \(sensor_msgs/msg/Image, 1 msgs\), /chatter"):
            pick_image_topic(r, "/nope")
        with pytest.raises(BagError, match="/chatter holds std_msgs/msg/String messages, "
                           "expected sensor_msgs/msg/Image"):
            pick_image_topic(r, "/chatter")
        (_, _, raw), = r.messages(["/cam/image_raw"])
        assert cdr_header_stamp(raw) == 5

    with pytest.raises(BagError, match="bag not found"):
        BagReader(tmp_path / "missing")
    data = bag / "bag.mcap"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(BagError, match=r"bag.*truncated, corrupt"):
        BagReader(bag)
