"""How a camera image of any size becomes the network input, and how the outputs map back.

Policies (``input.resize`` of the node, ``resize=`` of the API):

- ``letterbox`` (default): scaled to fit inside the network input with its aspect ratio
  kept, centred, the borders black; labels come only from the image area.
- ``stretch``: scaled to the network input, each axis on its own (the aspect ratio changes
  when the two differ).
- ``crop``: scaled to cover the network input with its aspect ratio kept, the overflow cut
  off evenly on both sides; input pixels outside the crop get the ignore label (255) and
  distortion 1 (nothing was seen there).

When the image and the network input have one aspect ratio, all three are the same plain
resize. Every output (labels, distortion) is mapped back to the input pixels: each input
pixel takes the network pixel its centre falls in.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

RESIZE_POLICIES = ("letterbox", "stretch", "crop")


@dataclass(frozen=True)
class Framing:
    """The placement of an ``image_size`` (H, W) image in a ``network_size`` (H, W) input:
    the image is scaled to ``scaled`` (H, W) and its top-left corner lands at ``offset``
    (y, x) of the network input (negative for a crop)."""

    policy: str
    image_size: tuple[int, int]
    network_size: tuple[int, int]
    scaled: tuple[int, int]
    offset: tuple[int, int]

    @classmethod
    def of(cls, policy: str, image_size: tuple[int, int],
           network_size: tuple[int, int]) -> Framing:
        if policy not in RESIZE_POLICIES:
            raise ValueError(f"resize policy must be one of {', '.join(RESIZE_POLICIES)}, got "
                             f"{policy!r}")
        h, w = int(image_size[0]), int(image_size[1])
        nh, nw = int(network_size[0]), int(network_size[1])
        if policy == "stretch" or h * nw == w * nh:
            return cls(policy, (h, w), (nh, nw), (nh, nw), (0, 0))
        scale = (min if policy == "letterbox" else max)(nh / h, nw / w)
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        if policy == "letterbox":
            sh, sw = min(sh, nh), min(sw, nw)
        else:
            sh, sw = max(sh, nh), max(sw, nw)
        return cls(policy, (h, w), (nh, nw), (sh, sw), ((nh - sh) // 2, (nw - sw) // 2))

    @property
    def is_plain(self) -> bool:
        """A plain resize (no border, nothing cut)."""
        return self.scaled == self.network_size

    @property
    def changes_aspect(self) -> bool:
        h, w = self.image_size
        nh, nw = self.network_size
        return self.policy == "stretch" and h * nw != w * nh

    def describe(self) -> str:
        h, w = self.image_size
        nh, nw = self.network_size
        if self.is_plain:
            text = f"{w}x{h} resized to the network's {nw}x{nh}"
            return text + (" (aspect ratio changed: stretch)" if self.changes_aspect else "")
        sh, sw = self.scaled
        if self.policy == "letterbox":
            return (f"{w}x{h} scaled to {sw}x{sh} and letterboxed into the network's {nw}x{nh} "
                    f"(borders {nw - sw} x {nh - sh} px)")
        return (f"{w}x{h} scaled to {sw}x{sh} and cropped to the network's {nw}x{nh} "
                f"({sw - nw} x {sh - nh} px cut; those input pixels are labelled 255)")

    # -- image to network --------------------------------------------------------------
    def to_network(self, image: np.ndarray) -> np.ndarray:
        """H x W x C image -> the network-size image."""
        sh, sw = self.scaled
        if image.shape[:2] != (sh, sw):
            image = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
        if self.is_plain:
            return image
        nh, nw = self.network_size
        oy, ox = self.offset
        if self.policy == "letterbox":
            out = np.zeros((nh, nw) + image.shape[2:], image.dtype)
            out[oy:oy + sh, ox:ox + sw] = image
            return out
        return np.ascontiguousarray(image[-oy:-oy + nh, -ox:-ox + nw])

    # -- network to image --------------------------------------------------------------
    def to_image(self, values: np.ndarray, fill: float | int) -> np.ndarray:
        """A network-size map (labels or distortion, H x W) -> the image size; pixels the
        network did not see (crop) get ``fill``. Nearest neighbour for integer maps,
        bilinear for float ones."""
        nh, nw = self.network_size
        if values.shape[:2] != (nh, nw):
            raise ValueError(f"expected a {nw}x{nh} map, got {values.shape[1]}x{values.shape[0]}")
        sh, sw = self.scaled
        oy, ox = self.offset
        if self.policy == "letterbox" and not self.is_plain:
            values = values[oy:oy + sh, ox:ox + sw]
        elif self.policy == "crop" and not self.is_plain:
            canvas = np.full((sh, sw) + values.shape[2:], fill, values.dtype)
            canvas[-oy:-oy + nh, -ox:-ox + nw] = values
            values = canvas
        h, w = self.image_size
        if values.shape[:2] == (h, w):
            return values
        nearest = not np.issubdtype(values.dtype, np.floating)
        return cv2.resize(values, (w, h),
                          interpolation=cv2.INTER_NEAREST_EXACT if nearest else cv2.INTER_LINEAR)
