"""rosbag2 access shared by ``make-bag`` and ``replay``, through ``rosbags`` (pure Python).

rosbag2_py is not installable everywhere davss_ros runs; ``rosbags`` reads and writes the
same files (mcap and sqlite3) and (de)serialises CDR. This module adds what both commands
need on top of it:

- a typestore that knows the ROS 2 Kilted messages and davss_msgs (registered from the
  package's own ``.msg`` files, wherever the package is installed);
- opening a bag with errors that name the file and say what is wrong (``BagError``);
- choosing the image topic and checking its type;
- Image messages <-> numpy arrays;
- a writer that works in a temporary folder next to its destination and renames it at the
  end, so a bag that is still being written (or failed) never looks complete.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..ros.image import ENCODINGS as _ENCODINGS  # pixel formats, shared with the node
from ..ros.image import INPUT_ENCODINGS  # noqa: F401  (re-exported: what the node accepts)

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
CLOCK_TYPE = "rosgraph_msgs/msg/Clock"
FRAME_INFO_TYPE = "davss_msgs/msg/FrameInfo"
LABEL_INFO_TYPE = "davss_msgs/msg/LabelInfo"
DIAGNOSTICS_TYPE = "diagnostic_msgs/msg/DiagnosticArray"

DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_LABELS_TOPIC = "/camera/labels_gt"
STORAGES = ("mcap", "sqlite3")



class BagError(Exception):
    """A bag that cannot be used, with a message naming the file or topic and the reason."""


# -- types ----------------------------------------------------------------------------------
def davss_msg_dir() -> Path:
    """The folder holding davss_msgs' ``.msg`` files.

    Looked up in the ament index (when ``AMENT_PREFIX_PATH`` is set), next to the installed
    Python package (``<prefix>/share/davss_msgs/msg``), in this interpreter's prefix, and
    finally in the source tree beside this package.
    """
    candidates: list[Path] = []
    if os.environ.get("AMENT_PREFIX_PATH"):
        try:
            from ament_index_python.packages import get_package_share_directory

            candidates.append(Path(get_package_share_directory("davss_msgs")) / "msg")
        except Exception:  # not in the index: try the other places
            pass
    try:
        import davss_msgs

        # <prefix>/lib/pythonX.Y/site-packages/davss_msgs/__init__.py
        candidates.append(Path(davss_msgs.__file__).resolve().parents[4] / "share"
                          / "davss_msgs" / "msg")
    except Exception:
        pass
    candidates.append(Path(sys.prefix) / "share" / "davss_msgs" / "msg")
    candidates.append(Path(__file__).resolve().parents[2] / "davss_msgs" / "msg")
    for folder in candidates:
        if (folder / "FrameInfo.msg").is_file() and (folder / "LabelInfo.msg").is_file():
            return folder
    raise BagError("cannot find davss_msgs' .msg files (looked in: "
                   + ", ".join(str(c) for c in candidates) + ")")


@lru_cache(maxsize=1)
def typestore():
    """A rosbags typestore: ROS 2 Kilted, davss_msgs and vision_msgs' LabelInfo."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from davss_ros.ros.label_info import VISION_MSG_DEFINITIONS

    store = get_typestore(Stores.ROS2_KILTED)
    folder = davss_msg_dir()
    types = {}
    # vision_msgs/LabelInfo: the node's ~/label_info where vision_msgs is installed.
    for name, text in VISION_MSG_DEFINITIONS.items():
        if name not in store.types:
            types.update(get_types_from_msg(text, name))
    for name in ("FrameInfo", "LabelInfo"):
        text = (folder / f"{name}.msg").read_text()
        types.update(get_types_from_msg(text, f"davss_msgs/msg/{name}"))
    store.register(types)
    return store


# -- images ---------------------------------------------------------------------------------
def image_msg(pixels: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """A rosbags sensor_msgs/Image holding ``pixels`` (tightly packed)."""
    ts = typestore()
    Image = ts.types[IMAGE_TYPE]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    channels, dtype = _ENCODINGS[encoding]
    pixels = np.ascontiguousarray(pixels, dtype=dtype)
    h, w = pixels.shape[:2]
    if (pixels.ndim == 2) != (channels == 1) or (channels > 1 and pixels.shape[2] != channels):
        raise ValueError(f"{encoding} needs {channels} channel(s), got shape {pixels.shape}")
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return Image(
        header=Header(stamp=Time(sec=sec, nanosec=nsec), frame_id=frame_id),
        height=h, width=w, encoding=encoding,
        is_bigendian=int(sys.byteorder == "big" and dtype.itemsize > 1),
        step=w * channels * dtype.itemsize,
        data=pixels.view(np.uint8).reshape(-1))


def compressed_msg(rgb: np.ndarray, kind: str, stamp_ns: int, frame_id: str, *,
                   quality: int | None = None, chroma: str | None = None):
    """A rosbags sensor_msgs/CompressedImage (JPEG or PNG) of an RGB or mono array, encoded
    as the node's compressed transport expects (davss_ros.ros.image.encode_compressed)."""
    from ..ros.image import encode_compressed

    ts = typestore()
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    fmt, data = encode_compressed(rgb, kind, quality=quality, chroma=chroma)
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return ts.types[COMPRESSED_TYPE](
        header=Header(stamp=Time(sec=sec, nanosec=nsec), frame_id=frame_id), format=fmt,
        data=np.frombuffer(data, np.uint8))


def base_topic(topic: str) -> str:
    """The image topic of a transport topic (``/a/image_raw`` for ``/a/image_raw/compressed``)."""
    return topic[: -len("/compressed")] if topic.endswith("/compressed") else topic


def image_array(msg, *, where: str = "image") -> np.ndarray:
    """The pixels of a (rosbags) sensor_msgs/Image: HxW or HxWxC, row padding removed."""
    if msg.encoding not in _ENCODINGS:
        raise BagError(f"{where}: unsupported encoding {msg.encoding!r} "
                       f"(expected one of {', '.join(_ENCODINGS)})")
    channels, dtype = _ENCODINGS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row = w * channels * dtype.itemsize
    data = np.asarray(msg.data, dtype=np.uint8)
    if h == 0 or w == 0 or step < row or data.size != step * h:
        raise BagError(f"{where}: {msg.encoding} {w}x{h} with step {step} does not match "
                       f"its {data.size} data bytes")
    rows = data.reshape(h, step)[:, :row]
    if dtype.itemsize > 1:
        rows = np.ascontiguousarray(rows).view(dtype.newbyteorder(">" if msg.is_bigendian
                                                                  else "<"))
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rows.reshape(shape)


def image_rgb(msg, *, where: str = "image") -> np.ndarray:
    """HxWx3 uint8 RGB from an rgb8 / bgr8 / rgba8 / bgra8 / mono8 image message."""
    if msg.encoding not in INPUT_ENCODINGS:
        raise BagError(f"{where}: encoding {msg.encoding!r} is not a camera image "
                       f"(expected one of {', '.join(INPUT_ENCODINGS)})")
    px = image_array(msg, where=where)
    if msg.encoding == "rgb8":
        return px
    if msg.encoding == "mono8":
        return np.repeat(px[:, :, None], 3, axis=2)
    if msg.encoding == "rgba8":
        return np.ascontiguousarray(px[:, :, :3])
    return np.ascontiguousarray(px[:, :, 2::-1])


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def cdr_header_stamp(raw: bytes | memoryview) -> int:
    """The header stamp (ns) of a serialised message whose first field is a std_msgs/Header.

    Reads the 8 bytes after the 4-byte CDR encapsulation header, so a recorder never
    deserialises image payloads just to learn when they were taken.
    """
    if len(raw) < 12:
        raise ValueError(f"serialised message too short ({len(raw)} bytes) for a header")
    little = raw[1] & 1  # CDR_LE = 0x0001, CDR_BE = 0x0000 (and their PL/XCDR2 siblings)
    sec, nsec = struct.unpack_from("<iI" if little else ">iI", raw, 4)
    return sec * 1_000_000_000 + nsec


# -- reading --------------------------------------------------------------------------------
class BagReader:
    """A rosbags Reader whose failures become ``BagError`` naming the bag.

    Usable as a context manager; ``messages`` wraps the iteration as well, since a truncated
    file often opens fine and fails only where the damage starts.
    """

    def __init__(self, path: str | Path) -> None:
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag not found: {self.path}")
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:
            raise BagError(f"{self.path}: cannot read the bag: truncated, corrupt or not a "
                           f"rosbag2 bag ({_reason(exc)})") from None

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._reader.close()
        except Exception:
            pass

    @property
    def connections(self):
        return self._reader.connections

    @property
    def topics(self) -> dict[str, str]:
        """topic -> message type."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    def count(self, topic: str) -> int:
        return sum(c.msgcount for c in self._reader.connections if c.topic == topic)

    def topics_text(self) -> str:
        items = sorted(self.topics.items())
        if not items:
            return "the bag has no topics"
        return "topics in the bag: " + ", ".join(f"{t} ({m}, {self.count(t)} msgs)"
                                                 for t, m in items)

    def messages(self, topics: list[str] | tuple[str, ...] = ()) -> Iterator[tuple[str, int,
                                                                                  bytes]]:
        """(topic, bag time in ns, serialised CDR) in bag order, for ``topics`` (all if empty)."""
        conns = [c for c in self._reader.connections if not topics or c.topic in topics]
        if topics and not conns:
            return
        it = self._reader.messages(connections=conns)
        while True:
            try:
                conn, t, raw = next(it)
            except StopIteration:
                return
            except Exception as exc:
                raise BagError(f"{self.path}: the bag is truncated or corrupt "
                               f"({_reason(exc)})") from None
            yield conn.topic, t, raw

    def deserialize(self, raw: bytes, msgtype: str, *, where: str):
        try:
            return typestore().deserialize_cdr(raw, msgtype)
        except Exception as exc:
            raise BagError(f"{self.path}: a {where} message does not decode as {msgtype} "
                           f"({_reason(exc)})") from None


def pick_image_topic(reader: BagReader, topic: str | None = None) -> str:
    """The camera topic to replay: ``topic`` if given (checked), else the first camera topic
    named ``*image_raw`` (sensor_msgs/Image) or ``*image_raw/compressed``
    (sensor_msgs/CompressedImage), else the only Image topic."""
    topics = reader.topics
    if topic is not None:
        if topic not in topics and topics.get(f"{topic}/compressed") == COMPRESSED_TYPE:
            topic = f"{topic}/compressed"  # the recording has the compressed transport only
        if topic not in topics:
            raise BagError(f"{reader.path}: topic {topic} is not in the bag; "
                           f"{reader.topics_text()}")
        if topics[topic] not in CAMERA_TYPES:
            raise BagError(f"{reader.path}: topic {topic} holds {topics[topic]} messages, "
                           f"expected {' or '.join(CAMERA_TYPES)}")
        return topic
    cameras = camera_topics(reader)
    if cameras:
        return cameras[0]
    images = list(dict.fromkeys(c.topic for c in reader.connections
                                if c.msgtype == IMAGE_TYPE))  # connection order
    candidates = [t for t in images if t != DEFAULT_LABELS_TOPIC and "label" not in t]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise BagError(f"{reader.path}: no camera image topic ({IMAGE_TYPE} named "
                       f"*image_raw); {reader.topics_text()}")
    raise BagError(f"{reader.path}: several image topics ({', '.join(candidates)}); "
                   "choose one with --topic")


def camera_topics(reader: BagReader) -> list[str]:
    """The bag's camera topics in connection order: Image topics named ``*image_raw`` and
    CompressedImage ones named ``*image_raw/compressed`` (a camera recorded both ways counts
    once, raw)."""
    topics = reader.topics
    out = []
    for t in dict.fromkeys(c.topic for c in reader.connections):
        if topics[t] == IMAGE_TYPE and t.endswith("image_raw"):
            out.append(t)
        elif (topics[t] == COMPRESSED_TYPE and t.endswith("image_raw/compressed")
              and topics.get(base_topic(t)) != IMAGE_TYPE):
            out.append(t)
    return out


# -- writing --------------------------------------------------------------------------------
def storage_plugin(name: str):
    from rosbags.rosbag2 import StoragePlugin

    try:
        return {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[name]
    except KeyError:
        raise BagError(f"unknown storage {name!r}; expected one of {', '.join(STORAGES)}") \
            from None


class AtomicBagWriter:
    """A rosbags Writer that writes into a hidden ``.<name>.partial-<pid>/`` folder beside
    ``path`` and renames the bag to ``path`` on ``commit()``; ``abort()`` (or leaving the
    ``with`` block without a commit) removes the partial folder.

    ``replace``: an existing ``path`` is replaced at commit (otherwise it is an error, raised
    at once, before anything is written).
    """

    def __init__(self, path: str | Path, *, storage: str = "mcap",
                 replace: bool = False) -> None:
        from rosbags.rosbag2 import Writer

        self.path = Path(path)
        self.replace = replace
        if self.path.exists() and not replace:
            raise BagError(f"{self.path} already exists; rosbag2 writes a new folder: "
                           "choose another path or remove it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.parent / f".{self.path.name}.partial-{os.getpid()}"
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir()
        # The bag inside has the final name: rosbags names the storage file after it.
        self._writer = Writer(self.partial / self.path.name, version=9,
                              storage_plugin=storage_plugin(storage))
        self._writer.open()
        self._conns: dict[str, object] = {}
        self.counts: dict[str, int] = {}
        self._done = False

    def __enter__(self) -> AtomicBagWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._done:
            self.abort()

    def add_topic(self, topic: str, msgtype: str) -> None:
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(topic, msgtype,
                                                             typestore=typestore())
            self.counts[topic] = 0

    def write_raw(self, topic: str, t_ns: int, raw: bytes | memoryview) -> None:
        self._writer.write(self._conns[topic], int(t_ns), raw)
        self.counts[topic] += 1

    def write(self, topic: str, t_ns: int, msg, msgtype: str) -> None:
        self.write_raw(topic, t_ns, typestore().serialize_cdr(msg, msgtype))

    def commit(self) -> Path:
        """Finish the bag and move it into place."""
        self._writer.close()
        old = None
        if self.path.exists():
            old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
            os.replace(self.path, old)
        os.replace(self.partial / self.path.name, self.path)
        self.partial.rmdir()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._done = True
        return self.path

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._writer.close()
        except Exception:
            pass
        shutil.rmtree(self.partial, ignore_errors=True)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
