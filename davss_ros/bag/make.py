"""``davss make-bag``: write a rosbag2 of camera images, with ground-truth labels when known.

Sources: the synthetic driving-clip generator, a folder of images (with an optional folder
of label images matched by file stem), or a video file. The bag holds
``/camera/image_raw`` (sensor_msgs/Image rgb8, frame_id ``camera``) and, where labels
exist, ``/camera/labels_gt`` (mono8 trainIds, 255 = ignore) with the same stamps. Frames are
stamped ``--rate`` Hz apart from ``--start``; the bag time of each message is its stamp.

``--compressed [jpeg|png]`` writes the images as sensor_msgs/CompressedImage on
``<topic>/compressed`` instead (image_transport's compressed transport, as a camera recorded
that way gives them); labels stay lossless Images. ``--cameras N`` (synthetic) writes N
cameras, each its own clip (seed, seed + 1, ...), on ``/camera0/image_raw``,
``/camera1/image_raw``, ... with ``/cameraK/labels_gt`` beside each; their frames are
spread over the frame period (camera K a K/N period later), as free-running cameras are.

The bag is written into a hidden folder next to ``-o`` and renamed at the end, so a bag at
``-o`` is always complete.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .io import (
    COMPRESSED_TYPE,
    DEFAULT_IMAGE_TOPIC,
    DEFAULT_LABELS_TOPIC,
    IMAGE_TYPE,
    STORAGES,
    AtomicBagWriter,
    BagError,
    compressed_msg,
    image_msg,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class Frame:
    rgb: np.ndarray  # HxWx3 uint8
    labels: np.ndarray | None  # HxW uint8 trainIds, or None


@dataclass
class BagSummary:
    path: Path
    frames: int  # per camera (the most any camera has)
    labelled: int
    height: int
    width: int
    start_ns: int
    rate: float
    storage: str
    image_topics: tuple[str, ...] = ()
    compressed: str | None = None


@dataclass
class Camera:
    """One camera of a bag: its frames and where they go."""

    frames: Iterator[Frame]
    image_topic: str = DEFAULT_IMAGE_TOPIC
    labels_topic: str = DEFAULT_LABELS_TOPIC
    frame_id: str = "camera"


def camera_topics(index: int, image_topic: str = DEFAULT_IMAGE_TOPIC,
                  labels_topic: str = DEFAULT_LABELS_TOPIC) -> tuple[str, str]:
    """Camera ``index``'s topics of a several-camera bag: the index appended to the
    topics' namespace (``/camera0/image_raw``, ``/camera0/labels_gt``)."""
    def one(topic: str) -> str:
        head, _, tail = topic.rstrip("/").rpartition("/")
        return f"{head}{index}/{tail}" if head else f"/{tail}{index}"
    return one(image_topic), one(labels_topic)


def synthetic_frames(frames: int, height: int, width: int, seed: int) -> Iterator[Frame]:
    """Frames of one clip of the procedural generator (rendered here, up front: the
    generator renders whole clips)."""
    from davss_ros.data.synthetic import SceneConfig, render_clip

    clip = render_clip(SceneConfig(height=height, width=width, frames=frames, seed=seed))
    return (Frame(rgb, labels) for rgb, labels in zip(clip.images, clip.labels, strict=True))


def folder_frames(images: Path, labels: Path | None = None,
                  size: tuple[int, int] | None = None) -> tuple[int, Iterator[Frame]]:
    """(count, frames) of the images in ``images`` sorted by name; a label image in
    ``labels`` with the same stem (any image suffix) goes with each image that has one."""
    if not images.is_dir():
        raise BagError(f"--images: not a folder: {images}")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BagError(f"--images: no image files ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    label_files: dict[str, Path] = {}
    if labels is not None:
        if not labels.is_dir():
            raise BagError(f"--labels: not a folder: {labels}")
        label_files = {p.stem: p for p in sorted(labels.iterdir())
                       if p.suffix.lower() in IMAGE_SUFFIXES}
        if not any(p.stem in label_files for p in files):
            raise BagError(f"--labels: no label file in {labels} has the name of an image "
                           f"in {images} (labels are matched by file stem)")

    def gen() -> Iterator[Frame]:
        for path in files:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise BagError(f"cannot decode image file: {path}")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            lab = None
            if path.stem in label_files:
                lpath = label_files[path.stem]
                lab = cv2.imread(str(lpath), cv2.IMREAD_UNCHANGED)
                if lab is None:
                    raise BagError(f"cannot decode label file: {lpath}")
                if lab.ndim != 2 or lab.dtype != np.uint8:
                    raise BagError(f"label file must be single-channel 8-bit trainIds, got "
                                   f"shape {lab.shape} dtype {lab.dtype}: {lpath}")
                if lab.shape != rgb.shape[:2]:
                    raise BagError(f"label {lpath} is {lab.shape[1]}x{lab.shape[0]}, its image "
                                   f"{path} {rgb.shape[1]}x{rgb.shape[0]}")
            yield _resized(Frame(rgb, lab), size)

    return len(files), gen()


def video_frames(video: Path, limit: int | None = None,
                 size: tuple[int, int] | None = None) -> tuple[int | None, float | None,
                                                               Iterator[Frame]]:
    """(frame count if known, fps if known, frames) of a video file read with OpenCV."""
    if not video.is_file():
        raise BagError(f"--video: file not found: {video}")
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise BagError(f"--video: OpenCV cannot open {video}")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or None
    if limit is not None and count is not None:
        count = min(count, limit)

    def gen() -> Iterator[Frame]:
        n = 0
        try:
            while limit is None or n < limit:
                ok, bgr = cap.read()
                if not ok:
                    break
                n += 1
                yield _resized(Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None), size)
        finally:
            cap.release()
        if n == 0:
            raise BagError(f"--video: no frame could be decoded from {video}")

    return count, fps, gen()


def _resized(frame: Frame, size: tuple[int, int] | None) -> Frame:
    if size is None or frame.rgb.shape[:2] == size:
        return frame
    h, w = size
    rgb = cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_AREA)
    lab = None if frame.labels is None else cv2.resize(
        frame.labels, (w, h), interpolation=cv2.INTER_NEAREST)
    return Frame(rgb, lab)


def write_bag(out: str | Path, frames: Iterator[Frame], *, rate: float = 30.0,
              start_ns: int | None = None, storage: str = "mcap",
              image_topic: str = DEFAULT_IMAGE_TOPIC, labels_topic: str = DEFAULT_LABELS_TOPIC,
              frame_id: str = "camera", total: int | None = None,
              progress: bool = False, compressed: str | None = None,
              quality: int | None = None, chroma: str | None = None) -> BagSummary:
    """Write ``frames`` to a new bag at ``out``; stamps ``start_ns + i / rate``.

    The labels topic is created only when some frame has labels. ``compressed`` ('jpeg' or
    'png'): CompressedImage on ``<image_topic>/compressed`` instead of Image; ``quality``
    and ``chroma`` (JPEG; None: the encoder's defaults, see ``encode_compressed``). Raises
    BagError when ``out`` exists or nothing was written; the partial bag is removed on any
    failure.
    """
    return write_cameras_bag(out, [Camera(frames, image_topic, labels_topic, frame_id)],
                             rate=rate, start_ns=start_ns, storage=storage, total=total,
                             progress=progress, compressed=compressed, quality=quality,
                             chroma=chroma)


def write_cameras_bag(out: str | Path, cameras: list[Camera], *, rate: float = 30.0,
                      start_ns: int | None = None, storage: str = "mcap",
                      total: int | None = None, progress: bool = False,
                      compressed: str | None = None, quality: int | None = None,
                      chroma: str | None = None) -> BagSummary:
    """Write one or more cameras to a new bag: camera k's frame i at
    ``start_ns + (i + k / len(cameras)) / rate``, in time order (see :func:`write_bag`)."""
    from itertools import zip_longest

    from tqdm import tqdm

    if rate <= 0:
        raise BagError(f"--rate must be > 0, got {rate}")
    if compressed not in (None, "jpeg", "png"):
        raise BagError(f"--compressed must be jpeg or png, got {compressed!r}")
    if not cameras:
        raise BagError("no cameras to write")
    out = Path(out)
    if start_ns is None:
        start_ns = time.time_ns()
    n = labelled = 0
    shape = None
    period = 1e9 / rate
    topics = tuple(c.image_topic + ("/compressed" if compressed else "") for c in cameras)
    with AtomicBagWriter(out, storage=storage) as writer:
        for topic in topics:
            writer.add_topic(topic, COMPRESSED_TYPE if compressed else IMAGE_TYPE)
        rows = zip_longest(*(c.frames for c in cameras))
        for row in tqdm(rows, total=total, desc="writing bag", unit="frame",
                        disable=not progress):
            for k, (cam, topic, frame) in enumerate(zip(cameras, topics, row, strict=True)):
                if frame is None:
                    continue
                t = start_ns + round((n + k / len(cameras)) * period)
                if compressed:
                    writer.write(topic, t, compressed_msg(frame.rgb, compressed, t,
                                                          cam.frame_id, quality=quality,
                                                          chroma=chroma),
                                 COMPRESSED_TYPE)
                else:
                    writer.write(topic, t, image_msg(frame.rgb, "rgb8", t, cam.frame_id),
                                 IMAGE_TYPE)
                if frame.labels is not None:
                    writer.add_topic(cam.labels_topic, IMAGE_TYPE)
                    writer.write(cam.labels_topic, t,
                                 image_msg(frame.labels, "mono8", t, cam.frame_id), IMAGE_TYPE)
                    labelled += k == 0
                shape = shape or frame.rgb.shape[:2]
            n += 1
        if n == 0:
            raise BagError("no frames to write")
        writer.commit()
    return BagSummary(out, n, labelled, shape[0], shape[1], start_ns, rate, storage,
                      topics, compressed)


# -- command line ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true",
                     help="render a clip with the procedural driving-scene generator")
    src.add_argument("--images", type=Path, metavar="DIR",
                     help="a folder of images, replayed in file-name order")
    src.add_argument("--video", type=Path, metavar="FILE", help="a video file (OpenCV)")
    parser.add_argument("--labels", type=Path, metavar="DIR",
                        help="with --images: label images (mono8 trainIds) matched by stem")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                        help="bag folder to create (must not exist)")
    parser.add_argument("--storage", choices=STORAGES, default="mcap")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames to write (synthetic: default 40; others: at most)")
    parser.add_argument("--height", type=int, default=None,
                        help="frame height (synthetic: default 256; others: resize)")
    parser.add_argument("--width", type=int, default=None,
                        help="frame width (synthetic: default 512; others: resize)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    parser.add_argument("--rate", type=float, default=None,
                        help="frame rate of the stamps in Hz (default 30; a video's own rate)")
    parser.add_argument("--start", type=float, default=None, metavar="SEC",
                        help="stamp of the first frame in seconds since the epoch "
                        "(default: now)")
    parser.add_argument("--topic", default=DEFAULT_IMAGE_TOPIC, help="image topic")
    parser.add_argument("--labels-topic", default=DEFAULT_LABELS_TOPIC,
                        help="ground-truth label topic")
    parser.add_argument("--frame-id", default="camera")
    parser.add_argument("--compressed", nargs="?", const="jpeg", choices=("jpeg", "png"),
                        default=None, help="write sensor_msgs/CompressedImage on "
                        "TOPIC/compressed (jpeg unless png is given) instead of Image")
    parser.add_argument("--quality", type=int, default=None,
                        help="JPEG quality of --compressed (1..100; default 95)")
    parser.add_argument("--chroma", choices=("444", "420"), default=None,
                        help="JPEG chroma subsampling of --compressed: 444 (none, the "
                        "default) or 420 (colour at half resolution: smaller, and the labels "
                        "move further from the raw frames')")
    parser.add_argument("--cameras", type=int, default=1, metavar="N",
                        help="synthetic: N cameras, each its own clip (seed, seed+1, ...), on "
                        "/camera0/image_raw ... with /cameraK/labels_gt")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    try:
        summary = _run(args)
    except BagError as exc:
        print(f"davss make-bag: error: {exc}", file=sys.stderr)
        return 2
    cams = len(summary.image_topics)
    print(f"wrote {summary.path}: {summary.frames} frames {summary.width}x{summary.height} "
          f"at {summary.rate:g} Hz ({summary.storage}), {summary.labelled} with labels"
          + (f", {cams} cameras" if cams > 1 else "")
          + (f", {summary.compressed} CompressedImage" if summary.compressed else "")
          + f": {', '.join(summary.image_topics)}")
    return 0


def _run(args: argparse.Namespace) -> BagSummary:
    if args.output.exists():
        raise BagError(f"{args.output} already exists; rosbag2 writes a new folder: "
                       "choose another path or remove it")
    if args.frames is not None and args.frames < 1:
        raise BagError(f"--frames must be >= 1, got {args.frames}")
    if args.labels is not None and args.images is None:
        raise BagError("--labels goes with --images")
    if args.cameras < 1:
        raise BagError(f"--cameras must be >= 1, got {args.cameras}")
    if args.cameras > 1 and not args.synthetic:
        raise BagError("--cameras N > 1 goes with --synthetic (one clip per camera)")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise BagError(f"--quality must be in 1..100, got {args.quality}")
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and value < 4:
            raise BagError(f"--{name} must be >= 4, got {value}")
    size = None
    if args.height is not None or args.width is not None:
        if args.height is None or args.width is None:
            if not args.synthetic:
                raise BagError("--height and --width go together")
        else:
            size = (args.height, args.width)
    rate = args.rate
    total = None
    start_ns = None if args.start is None else round(args.start * 1e9)
    if args.synthetic and args.cameras > 1:
        total = args.frames or 40
        cameras = []
        for k in range(args.cameras):
            image_topic, labels_topic = camera_topics(k, args.topic, args.labels_topic)
            cameras.append(Camera(
                synthetic_frames(total, args.height or 256, args.width or 512, args.seed + k),
                image_topic, labels_topic, f"{args.frame_id}{k}"))
        return write_cameras_bag(args.output, cameras, rate=rate or 30.0, start_ns=start_ns,
                                 storage=args.storage, total=total,
                                 progress=not args.no_progress, compressed=args.compressed,
                                 quality=args.quality, chroma=args.chroma)
    if args.synthetic:
        total = args.frames or 40
        frames = synthetic_frames(total, args.height or 256, args.width or 512, args.seed)
    elif args.images is not None:
        total, frames = folder_frames(args.images, args.labels, size)
        if args.frames is not None:
            total = min(total, args.frames)
            frames = _take(frames, total)
    else:
        total, fps, frames = video_frames(args.video, args.frames, size)
        if rate is None and fps and 0 < fps < 1000:
            rate = fps
    return write_bag(args.output, frames, rate=rate or 30.0, start_ns=start_ns,
                     storage=args.storage, image_topic=args.topic,
                     labels_topic=args.labels_topic, frame_id=args.frame_id, total=total,
                     progress=not args.no_progress, compressed=args.compressed,
                     quality=args.quality, chroma=args.chroma)


def _take(frames: Iterator[Frame], n: int) -> Iterator[Frame]:
    for i, f in enumerate(frames):
        if i >= n:
            return
        yield f


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="davss make-bag", description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
