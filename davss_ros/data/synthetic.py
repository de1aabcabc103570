"""Procedurally rendered driving clips with a label, depth and true optical flow per frame.

No public data can be downloaded where this project is built, so it makes its own labelled
video. A clip is a pinhole camera driving along a road through a small procedural town:

- the road is a circular arc (straight in some clips, curving left or right in others), so
  the camera's yaw changes over a turning clip; speed varies, the car wobbles in its lane
  and pitches a little;
- every surface is a real 3-D primitive: the ground plane, boxes (buildings, walls,
  fences, poles, sign panels, traffic lights, car bodies and cabins, pedestrians) and
  spheres (tree crowns, heads); each pixel's ray is intersected with them (vectorised,
  per primitive inside its projected bounding box) and the nearest hit wins, so
  perspective, occlusion and disocclusion are right by construction;
- surfaces are textured as functions of their own surface coordinates (asphalt noise and
  lane markings, sidewalk tiles, facades with windows, leafy crowns, clouds), with the
  finest noise octaves faded out where a pixel covers more than half their wavelength, so
  consecutive frames sample the same texture consistently (flow needs texture; aliasing
  would break brightness constancy);
- cars drive in their lanes in both directions and pedestrians walk along sidewalks or
  cross the road, each with its own rigid motion;
- some clips drift in exposure (global gain and gamma) or have static shadow bands on the
  ground; an optional ego-vehicle hood at the bottom is labelled 255 (Cityscapes' "ego
  vehicle" is ignored in training too);
- one ray per pixel (no anti-aliasing): a slight Gaussian "optical" blur and sensor noise
  are added to the images, never to labels or flow.

Labels are Cityscapes trainIds (0..18, 255 = ignore). The scene is generated from the seed
alone, independent of the image size, so any resolution renders the same scene.

True backward flow: for pixel x of frame t, ``x + flow[t](x)`` is where the same surface
point was in frame t - 1. It is computed from the geometry: the pixel's 3-D point comes from
the depth buffer; a point on a moving object is carried back by that object's own rigid
motion; the point is projected with the previous camera. ``flow_valid`` is False where the
point was hidden in frame t - 1 (the previous frame shows another primitive there, or a
depth that does not match) or fell outside the image. Frame 0 has zero flow, all invalid.

Output conventions: ``depth`` is the camera z-depth (inf for the sky, 0.5 m on the hood);
the hood moves with the camera, so its flow is zero and valid.

Speed: about 30 ms per 256x512 frame in one process (CPU time, measured on a shared
2-core machine), roughly proportional to the pixel count; ``write_cityscapes_layout``
renders clips in parallel processes.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from davss_ros.classes import IGNORE_ID

# ---------------------------------------------------------------------------- constants

NEAR = 0.3  # metres: nothing is drawn closer to the camera than this
SKY_DEPTH = 1.0e6  # depth-buffer value of the sky (points at infinity)
LOOKS = ("day", "dusk")
# Dusk: light tinted warm and dimmed, haze of this colour reaching 1 - 1/e at DUSK_HAZE_M.
DUSK_TINT = np.array([1.0, 0.74, 0.52], np.float32) * np.float32(0.5)
DUSK_HAZE = np.array([0.32, 0.24, 0.30], np.float32)
DUSK_HAZE_M = 45.0
DUSK_NOISE_FACTOR = 3.0
MAX_GROUND = 1.0e5  # ground hits further than this (at the horizon) are drawn as sky
HOOD_DEPTH = 0.5
SMALL_AREA = 3000  # primitives whose screen box is smaller are rasterised in one batch

# trainIds used by the renderer
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TLIGHT, SIGN, VEGETATION, TERRAIN, SKY, \
    PERSON, CAR = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13

# materials (shaders)
(M_SKY, M_GROUND, M_HOOD, M_FACADE, M_FENCE, M_WALL, M_POLE, M_SIGN, M_TLIGHT, M_FOLIAGE,
 M_TRUNK, M_CAR, M_CABIN, M_PERSON, M_HEAD) = range(15)

# the three pseudo-primitives at the start of the table
P_SKY, P_GROUND, P_HOOD = 0, 1, 2
K_NONE, K_BOX, K_SPHERE = 0, 1, 2

LANE_W = 3.3
_BOX_EDGES = np.array([(0, 1), (1, 3), (3, 2), (2, 0), (4, 5), (5, 7), (7, 6), (6, 4),
                       (0, 4), (1, 5), (2, 6), (3, 7)])


@dataclass
class SceneConfig:
    """What to render. Knobs left as None are drawn from the seed (each clip differs).

    The scene depends on the seed only; height and width choose the sampling (the focal
    length follows the width and ``hfov_deg``). Drawn knobs: ``turning`` (half the clips),
    ``lighting_change`` (40 %), ``shadows`` (half), ``hood`` (half), ``moving_cars`` (2..6),
    ``pedestrians`` (3..8). ``noise`` and ``blur`` are applied to the images only."""

    height: int = 256
    width: int = 512
    frames: int = 30
    seed: int = 0
    fps: float = 17.0  # Cityscapes' frame rate
    hfov_deg: float = 50.0  # horizontal field of view (Cityscapes: about 49 degrees)
    min_speed: float = 4.0  # ego speed range at the start of the clip, m/s
    max_speed: float = 14.0
    turning: bool | None = None  # the road curves (camera yaw changes over the clip)
    lighting_change: bool | None = None  # global gain and gamma drift over the clip
    shadows: bool | None = None  # static shadow bands on the ground
    hood: bool | None = None  # ego-vehicle hood at the bottom of the image (label 255)
    moving_cars: int | None = None
    pedestrians: int | None = None
    noise: float = 1.0  # sensor noise, standard deviation in 8-bit levels
    blur: float = 0.6  # optical blur, Gaussian sigma in pixels (softens the aliased edges)
    # The look of the images (labels, geometry and flow are the same for every look): day
    # (what the shipped models are trained on) or dusk (dim warm light, haze that thickens
    # with distance, 3x the sensor noise): a domain shift made on demand.
    look: str = "day"
    # A sudden pan (a robot turning on the spot, a pan-tilt head): the view turns by
    # pan_deg degrees, direction drawn, over pan_frames frames from a frame drawn in the
    # clip's middle third, and stays turned. Motion that changes within a clip is what
    # adaptive key frames are for; 0 = none (the clips are then exactly those rendered
    # before the option existed: its draws come from a stream of their own).
    pan_deg: float = 0.0
    pan_frames: int = 3

    def __post_init__(self) -> None:
        if self.look not in LOOKS:
            raise ValueError(f"look must be one of {', '.join(LOOKS)}, got {self.look!r}")
        if self.height < 8 or self.width < 8:
            raise ValueError(f"image size must be at least 8x8, got {self.height}x{self.width}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if not 10.0 <= self.hfov_deg <= 150.0:
            raise ValueError(f"hfov_deg must be in [10, 150], got {self.hfov_deg}")
        if not 0.0 < self.min_speed <= self.max_speed:
            raise ValueError(f"need 0 < min_speed <= max_speed, got {self.min_speed}, "
                             f"{self.max_speed}")
        if self.noise < 0 or self.blur < 0:
            raise ValueError(f"noise and blur must be >= 0, got {self.noise}, {self.blur}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if not 0.0 <= self.pan_deg <= 60.0:
            raise ValueError(f"pan_deg must be in [0, 60], got {self.pan_deg}")
        if self.pan_frames < 1:
            raise ValueError(f"pan_frames must be >= 1, got {self.pan_frames}")

    @property
    def focal(self) -> float:
        return self.width / 2.0 / math.tan(math.radians(self.hfov_deg) / 2.0)


@dataclass
class Clip:
    images: np.ndarray  # (T, H, W, 3) uint8 RGB
    labels: np.ndarray  # (T, H, W) uint8 Cityscapes trainIds, 255 = ignore
    flows: np.ndarray  # (T, H, W, 2) float32 backward flow (dx, dy); flows[0] = 0
    flow_valid: np.ndarray  # (T, H, W) bool; flow_valid[0] = False
    depth: np.ndarray  # (T, H, W) float32 camera z-depth in metres, inf for the sky
    object_ids: np.ndarray  # (T, H, W) uint16: k >= 1 on independently moving object k
    intrinsics: np.ndarray  # (3, 3) float64 K
    cam_to_world: np.ndarray  # (T, 4, 4) float64; camera x right, y up, z forward
    config: SceneConfig
    info: dict = field(default_factory=dict)  # the knobs the seed chose


# ------------------------------------------------------------------------------ helpers


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(a: float) -> np.ndarray:  # positive a looks up
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])


def _periodic_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Tileable smooth noise, zero mean and unit standard deviation (Gaussian-filtered)."""
    white = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    transfer = np.exp(-2.0 * (math.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    out = np.fft.ifft2(np.fft.fft2(white) * transfer).real
    out -= out.mean()
    out /= out.std() + 1e-12
    return out.astype(np.float32)


def _rows_times(A: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``A @ M`` for row vectors A (..., 3) and a 3x3 M, without BLAS (whose thread start-up
    costs more than this product on 2 cores)."""
    M = M.astype(A.dtype, copy=False)
    out = np.empty(A.shape, A.dtype)
    for j in range(3):
        out[..., j] = A[..., 0] * M[0, j] + A[..., 1] * M[1, j] + A[..., 2] * M[2, j]
    return out


def _rows(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` for a row index (np.take is several times faster than fancy
    indexing for this)."""
    return np.take(table, index, axis=0)


def _fade(fp: np.ndarray, wavelength: float) -> np.ndarray:
    """Amplitude of a texture octave: 1 when a pixel covers < 1/4 wavelength, 0 above 1/2."""
    return np.clip(wavelength / (2.0 * fp) - 1.0, 0.0, 1.0)


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _hash01(i: np.ndarray, j: np.ndarray, salt: int = 0) -> np.ndarray:
    """Deterministic per-cell value in [0, 1) from integer cell coordinates."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h >> 8) & 1023).astype(np.float32) / 1024.0


class _Textures:
    """A few tileable noise images sampled bilinearly with cv2.remap (wrap-around)."""

    SIZE = 256

    def __init__(self, rng: np.random.Generator) -> None:
        self.tex = [_periodic_noise(rng, self.SIZE, s) for s in (0.8, 2.5, 8.0)]

    def __call__(self, k: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        n = u.size
        if n == 0:
            return np.zeros(0, np.float32)
        size = np.float32(self.SIZE)
        inv = np.float32(1.0 / self.SIZE)
        cols = 1024  # cv2.remap wants maps narrower and shorter than 32767
        rows = -(-n // cols)
        mu = np.zeros(rows * cols, np.float32)
        mv = np.zeros(rows * cols, np.float32)
        # wrap into the tile here: cv2 stores map coordinates as 16-bit fixed point
        u = np.asarray(u, np.float32)
        v = np.asarray(v, np.float32)
        mu[:n] = u - np.floor(u * inv) * size
        mv[:n] = v - np.floor(v * inv) * size
        out = cv2.remap(self.tex[k], mu.reshape(rows, cols), mv.reshape(rows, cols),
                        cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        return out.ravel()[:n]


# --------------------------------------------------------------------------- the scene


class _Road:
    """A circular-arc road (straight when kappa = 0) with curvilinear coordinates (s, l).

    s runs along the centre line from the origin (heading +z), l is the lateral offset to
    the right (+x at s = 0)."""

    def __init__(self, kappa: float) -> None:
        self.kappa = kappa if abs(kappa) > 1e-7 else 0.0

    def pose(self, s, l):  # -> x, z, heading
        k = self.kappa
        s = np.asarray(s, np.float64)
        l = np.asarray(l, np.float64)
        if k == 0.0:
            return l, s, np.zeros_like(s)
        phi = k * s
        x = 2.0 * np.sin(phi / 2.0) ** 2 / k + l * np.cos(phi)
        z = np.sin(phi) / k - l * np.sin(phi)
        return x, z, phi

    def coords(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = self.kappa
        if k == 0.0:
            return z, x
        sg = 1.0 if k > 0 else -1.0
        dx = x - np.float32(1.0 / k)
        r = np.sqrt(dx * dx + z * z)
        l = np.float32(1.0 / k) - sg * r
        s = np.arctan2(sg * z, -sg * dx) / np.float32(k)
        return s, l


class _Prims:
    """Structure-of-arrays table of primitives, filled by the scene builder."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        # the pseudo-primitives: sky, ground, hood
        for mat, label in ((M_SKY, SKY), (M_GROUND, ROAD), (M_HOOD, IGNORE_ID)):
            self.rows.append((K_NONE, 0, (0.0, 0.0, 0.0), 0.0, (0.0, 0.0, 0.0), mat, label,
                              (0.0, 0.0, 0.0), (0.0,) * 8, -1))

    def box(self, obj, centre, heading, half, mat, label, color, params=(), shape=-1):
        p = tuple(params) + (0.0,) * (8 - len(params))
        self.rows.append((K_BOX, obj, tuple(centre), heading, tuple(half), mat, label,
                          tuple(color), p, shape))

    def sphere(self, obj, centre, radius, mat, label, color, params=()):
        p = tuple(params) + (0.0,) * (8 - len(params))
        self.rows.append((K_SPHERE, obj, tuple(centre), 0.0, (radius, radius, radius), mat,
                          label, tuple(color), p, -1))

    def freeze(self) -> dict[str, np.ndarray]:
        cols = list(zip(*self.rows, strict=True))
        return {
            "kind": np.array(cols[0], np.int8), "obj": np.array(cols[1], np.int32),
            "centre": np.array(cols[2], np.float64), "heading": np.array(cols[3], np.float64),
            "half": np.array(cols[4], np.float64), "mat": np.array(cols[5], np.int16),
            "label": np.array(cols[6], np.uint8), "color": np.array(cols[7], np.float32),
            "param": np.array(cols[8], np.float32), "shape": np.array(cols[9], np.int8),
        }


def _uniform(rng, lo, hi):
    return float(rng.uniform(lo, hi))


class _Scene:
    """Everything about a clip that does not depend on the image size."""

    def __init__(self, cfg: SceneConfig) -> None:
        self.cfg = cfg
        root = np.random.SeedSequence(cfg.seed)
        (r_knobs, r_cam, r_layout, r_traffic, r_peds, r_look, r_tex, self.noise_seed) = (
            root.spawn(8))
        # a ninth stream, spawned after the others so that they are unchanged
        self.pan_start, self.pan_yaw = self._pan(np.random.default_rng(root.spawn(1)[0]))
        rk = np.random.default_rng(r_knobs)
        draws = rk.random(4)
        self.turning = bool(draws[0] < 0.5) if cfg.turning is None else cfg.turning
        self.lighting_change = (bool(draws[1] < 0.4) if cfg.lighting_change is None
                                else cfg.lighting_change)
        self.shadows = bool(draws[2] < 0.5) if cfg.shadows is None else cfg.shadows
        self.hood = bool(draws[3] < 0.5) if cfg.hood is None else cfg.hood
        n_cars = int(rk.integers(2, 7))
        n_peds = int(rk.integers(3, 9))
        self.n_moving_cars = n_cars if cfg.moving_cars is None else cfg.moving_cars
        self.n_pedestrians = n_peds if cfg.pedestrians is None else cfg.pedestrians
        self.textures = _Textures(np.random.default_rng(r_tex))
        self._look(np.random.default_rng(r_look))
        self._camera(np.random.default_rng(r_cam))
        self.prims = _Prims()
        self._layout(np.random.default_rng(r_layout))
        self.trajectories: list[np.ndarray] = [np.zeros((cfg.frames, 3))]  # object 0: world
        self._traffic(np.random.default_rng(r_traffic))
        self._pedestrians(np.random.default_rng(r_peds))
        self.table = self.prims.freeze()
        self.n_objects = len(self.trajectories)

    # ---- appearance
    def _look(self, rng: np.random.Generator) -> None:
        el = math.radians(_uniform(rng, 25, 60))
        az = _uniform(rng, -math.pi, math.pi)
        self.sun = np.array([math.cos(el) * math.sin(az), math.sin(el),
                             math.cos(el) * math.cos(az)], np.float32)
        self.ambient = _uniform(rng, 0.5, 0.65)
        self.diffuse = 1.0 - self.ambient
        self.sky_zenith = np.array([0.30, 0.50, 0.82]) + rng.uniform(-0.06, 0.06, 3)
        self.sky_horizon = np.array([0.78, 0.84, 0.90]) + rng.uniform(-0.05, 0.05, 3)
        self.cloud_cover = _uniform(rng, 0.0, 0.9)
        self.asphalt = _uniform(rng, 0.26, 0.40)
        self.sidewalk_rgb = np.array([0.62, 0.60, 0.58]) * _uniform(rng, 0.85, 1.1) + (
            rng.uniform(-0.04, 0.04, 3))
        self.tile = _uniform(rng, 0.3, 0.6)
        self.grass_rgb = np.array([0.33, 0.45, 0.20]) + rng.uniform(-0.05, 0.05, 3)
        self.center_dashed = bool(rng.random() < 0.6)
        self.hood_rgb = np.array([0.10, 0.10, 0.12]) + rng.uniform(0.0, 0.15) * rng.random(3)
        self.hood_frac = _uniform(rng, 0.12, 0.2)
        for name in ("sky_zenith", "sky_horizon", "sidewalk_rgb", "grass_rgb", "hood_rgb"):
            setattr(self, name + "32", getattr(self, name).astype(np.float32))
        self.gain_end = _uniform(rng, 0.6, 1.4)
        self.gamma_end = _uniform(rng, 0.8, 1.25)
        self.bands = []  # shadow bands (s0, s1, l0, l1, factor)
        for _ in range(int(rng.integers(3, 7))):
            s0 = _uniform(rng, 0.0, 90.0)
            l0 = _uniform(rng, -14.0, 4.0)
            self.bands.append((s0, s0 + _uniform(rng, 2.0, 9.0), l0, l0 + _uniform(rng, 4, 18),
                               _uniform(rng, 0.45, 0.7)))

    # ---- ego camera
    def _pan(self, rng: np.random.Generator) -> tuple[int | None, np.ndarray]:
        """The pan's first frame (None: no pan) and its yaw per frame in radians."""
        cfg = self.cfg
        T = cfg.frames
        if cfg.pan_deg == 0.0:
            return None, np.zeros(T)
        start = int(rng.integers(T // 3, max(T // 3 + 1, (2 * T) // 3)))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        u = np.clip((np.arange(T) - start + 1) / cfg.pan_frames, 0.0, 1.0)
        u = u * u * (3.0 - 2.0 * u)  # smoothstep: the turn eases in and out
        return start, sign * math.radians(cfg.pan_deg) * u

    def _camera(self, rng: np.random.Generator) -> None:
        cfg = self.cfg
        T, dt = cfg.frames, 1.0 / cfg.fps
        self.n_lanes = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))  # left, right
        self.parking = (bool(rng.random() < 0.6), bool(rng.random() < 0.6))
        self.road_w = tuple(n * LANE_W + (2.3 if p else 0.3)
                            for n, p in zip(self.n_lanes, self.parking, strict=True))
        self.sidewalk_w = (_uniform(rng, 2.0, 4.5), _uniform(rng, 2.0, 4.5))
        kappa = _uniform(rng, 1 / 250, 1 / 70) * (1 if rng.random() < 0.5 else -1)
        self.road = _Road(kappa if self.turning else 0.0)
        v0 = _uniform(rng, cfg.min_speed, cfg.max_speed)
        acc = _uniform(rng, -1.5, 1.5)
        t = np.arange(T) * dt
        v = np.clip(v0 + acc * t + 0.4 * np.sin(2.0 * t + _uniform(rng, 0, 6)), 1.0, 20.0)
        s = np.concatenate([[0.0], np.cumsum(v[1:] * dt)])
        self.ego_speed = v
        self.ego_s = s
        self.ego_lane_l = (self.n_lanes[1] - 0.5) * LANE_W
        l = self.ego_lane_l + _uniform(rng, 0.05, 0.3) * np.sin(
            _uniform(rng, 0.5, 1.5) * t + _uniform(rng, 0, 6))
        yaw_amp = math.radians(_uniform(rng, 0.0, 1.2))
        yaw = yaw_amp * np.sin(_uniform(rng, 0.6, 2.0) * t + _uniform(rng, 0, 6))
        yaw = yaw + self.pan_yaw
        pitch0 = math.radians(_uniform(rng, -3.0, -0.5))
        pitch = pitch0 + math.radians(_uniform(rng, 0.1, 0.5)) * np.sin(
            _uniform(rng, 6.0, 12.0) * t + _uniform(rng, 0, 6))
        self.cam_h = _uniform(rng, 1.2, 1.6)
        x, z, heading = self.road.pose(s, l)
        self.cams = []
        for i in range(T):
            R = _rot_y(float(heading[i] + yaw[i])) @ _rot_x(float(pitch[i]))
            self.cams.append((R, np.array([x[i], self.cam_h, z[i]])))
        self.s_range = (float(s[0]) - 25.0, float(s[-1]) + 170.0)

    # ---- static world
    def _place(self, s, l):
        x, z, h = self.road.pose(s, l)
        return float(x), float(z), float(h)

    def _layout(self, rng: np.random.Generator) -> None:
        P = self.prims
        s_lo, s_hi = self.s_range
        facades = np.array([[0.75, 0.70, 0.62], [0.62, 0.60, 0.58], [0.55, 0.33, 0.26],
                            [0.85, 0.83, 0.78], [0.80, 0.74, 0.55], [0.45, 0.45, 0.48],
                            [0.66, 0.52, 0.40]])
        tree_density = _uniform(rng, 0.2, 0.9)
        for side in (-1, 1):
            w = self.road_w[0 if side < 0 else 1]
            sw = self.sidewalk_w[0 if side < 0 else 1]
            l_out = w + sw
            s = s_lo - _uniform(rng, 0, 10)
            while s < s_hi:
                if rng.random() < 0.25:  # a gap: fence, wall or hedge, with terrain behind
                    gap = _uniform(rng, 4, 14)
                    kind = int(rng.integers(0, 4))
                    sc = s + gap / 2
                    if kind < 3:
                        mat, label, thick, hgt, col = (
                            (M_FENCE, FENCE, 0.03, _uniform(rng, 1.0, 2.0), (0.45, 0.47, 0.42)),
                            (M_WALL, WALL, 0.15, _uniform(rng, 0.8, 2.5), (0.62, 0.58, 0.52)),
                            (M_FOLIAGE, VEGETATION, 0.4, _uniform(rng, 0.8, 1.6),
                             (0.22, 0.36, 0.14)),
                        )[kind]
                        x, z, h = self._place(sc, side * (l_out + 0.1 + thick))
                        P.box(0, (x, hgt / 2, z), h, (thick, hgt / 2, gap / 2), mat, label,
                              np.array(col) * rng.uniform(0.85, 1.15, 3))
                    for _ in range(int(rng.integers(0, 3))):
                        self._tree(rng, s + _uniform(rng, 0, gap),
                                   side * (l_out + _uniform(rng, 2.0, 7.0)))
                    s += gap
                    continue
                L = _uniform(rng, 8, 28)
                hb = _uniform(rng, 7, 24)
                depth = _uniform(rng, 8, 15)
                lf = l_out + _uniform(rng, 0.0, 2.5)
                x, z, h = self._place(s + L / 2, side * (lf + depth / 2))
                col = facades[int(rng.integers(len(facades)))] * rng.uniform(0.85, 1.1, 3)
                params = (_uniform(rng, 2.4, 4.0), _uniform(rng, 2.9, 3.5),  # window pitch u, v
                          _uniform(rng, 0.35, 0.6), _uniform(rng, 0.4, 0.6),  # window w, h frac
                          _uniform(rng, 3.0, 4.5), _uniform(rng, 0, 10),  # ground floor, offset
                          _uniform(rng, 0.0, 1.0))  # window tint
                P.box(0, (x, hb / 2, z), h, (depth / 2, hb / 2, L / 2), M_FACADE, BUILDING,
                      col, params)
                s += L + (_uniform(rng, 0.0, 1.5) if rng.random() < 0.3 else 0.0)
            # skyline behind
            for _ in range(int(rng.integers(3, 7))):
                L, hb = _uniform(rng, 15, 40), _uniform(rng, 15, 45)
                x, z, h = self._place(_uniform(rng, s_lo, s_hi + 40),
                                      side * _uniform(rng, 35, 70))
                col = facades[int(rng.integers(len(facades)))] * 0.9
                P.box(0, (x, hb / 2, z), h, (8.0, hb / 2, L / 2), M_FACADE, BUILDING, col,
                      (3.0, 3.2, 0.5, 0.5, 0.0, 0.0, 0.5))
            # trees along the curb
            s = s_lo + _uniform(rng, 0, 10)
            while s < s_hi:
                if rng.random() < tree_density:
                    self._tree(rng, s, side * (w + min(1.0, sw / 2)))
                s += _uniform(rng, 7, 16)
            # street lamps
            s = s_lo + _uniform(rng, 0, 20)
            while s < s_hi:
                hp = _uniform(rng, 5.5, 8.0)
                l_p = side * (w + 0.45)
                x, z, h = self._place(s, l_p)
                P.box(0, (x, hp / 2, z), h, (0.09, hp / 2, 0.09), M_POLE, POLE,
                      (0.5, 0.5, 0.52))
                x, z, h = self._place(s, l_p - side * 0.8)
                P.box(0, (x, hp - 0.08, z), h, (0.8, 0.05, 0.05), M_POLE, POLE,
                      (0.5, 0.5, 0.52))
                s += _uniform(rng, 18, 32)
        # traffic signs and lights; one sign and one fence or wall always stand a little
        # ahead, so that every clip shows these thin, flow-sensitive classes
        self._sign(rng, self.ego_s[0] + _uniform(rng, 15, 30), 1, light=False)
        self._sign(rng, self.ego_s[0] + _uniform(rng, 25, 45), -1, light=False)
        for _ in range(int(rng.integers(4, 9))):
            self._sign(rng, _uniform(rng, s_lo + 20, s_hi - 20),
                       -1 if rng.random() < 0.35 else 1, light=rng.random() < 0.2)
        side = 1 if rng.random() < 0.5 else -1
        l_out = self.road_w[side > 0] + self.sidewalk_w[side > 0]
        length, hgt = _uniform(rng, 6, 14), _uniform(rng, 1.2, 2.0)
        wall = rng.random() < 0.5
        thick = 0.15 if wall else 0.03
        x, z, h = self._place(self.ego_s[0] + _uniform(rng, 12, 30), side * (l_out - 0.05 - thick))
        P.box(0, (x, hgt / 2, z), h, (thick, hgt / 2, length / 2), M_WALL if wall else M_FENCE,
              WALL if wall else FENCE, (0.62, 0.58, 0.52) if wall else (0.45, 0.47, 0.42))

    def _sign(self, rng: np.random.Generator, s: float, side: int, light: bool) -> None:
        """A traffic sign (or light) on a post at the curb, facing approaching traffic."""
        P = self.prims
        w = self.road_w[0 if side < 0 else 1]
        x, z, h = self._place(s, side * (w + 0.6))
        hp = _uniform(rng, 2.0, 2.8)
        P.box(0, (x, hp / 2, z), h, (0.04, hp / 2, 0.04), M_POLE, POLE, (0.55, 0.55, 0.57))
        if light:
            P.box(0, (x, hp + 0.45, z), h, (0.16, 0.45, 0.14), M_TLIGHT, TLIGHT,
                  (0.12, 0.12, 0.1), (float(rng.integers(0, 3)),))
            return
        shape = int(rng.integers(0, 5))
        size = _uniform(rng, 0.55, 0.85)
        # the panel sits just in front of the post, towards the road
        x, z, h = self._place(s - 0.06, side * (w + 0.6) - side * 0.1)
        P.box(0, (x, hp + size / 2, z), h, (size / 2, size / 2, 0.02), M_SIGN, SIGN,
              (0.8, 0.8, 0.8), (float(shape),), shape=shape)

    def _tree(self, rng: np.random.Generator, s: float, l: float) -> None:
        P = self.prims
        x, z, h = self._place(s, l)
        th = _uniform(rng, 1.8, 3.2)
        r = _uniform(rng, 1.3, 2.6)
        P.box(0, (x, th / 2 + 0.3, z), h, (0.14, th / 2 + 0.3, 0.14), M_TRUNK, VEGETATION,
              (0.30, 0.22, 0.15))
        green = np.array([0.22, 0.38, 0.12]) * rng.uniform(0.75, 1.25, 3)
        P.sphere(0, (x, th + 0.7 * r, z), r, M_FOLIAGE, VEGETATION, green)

    # ---- objects
    def _car(self, obj: int, pose: tuple[float, float, float] | None,
             rng: np.random.Generator) -> None:
        """A car in object frame ``obj``; static cars (obj 0) are placed at ``pose``."""
        P = self.prims
        colors = [(0.7, 0.05, 0.05), (0.05, 0.1, 0.45), (0.8, 0.8, 0.8), (0.1, 0.1, 0.1),
                  (0.45, 0.45, 0.48), (0.15, 0.35, 0.2), (0.85, 0.75, 0.2), (0.3, 0.3, 0.5)]
        col = np.array(colors[int(rng.integers(len(colors)))]) * rng.uniform(0.85, 1.1)
        length, width = _uniform(rng, 3.9, 4.8), _uniform(rng, 1.7, 1.9)
        top = _uniform(rng, 1.35, 1.6)
        parts = [((0.0, 0.55, 0.0), (width / 2, 0.4, length / 2), M_CAR),
                 ((0.0, 0.95 + (top - 0.95) / 2, -0.25), (width / 2 - 0.08, (top - 0.95) / 2,
                                                           length / 2 - 1.0), M_CABIN)]
        for centre, half, mat in parts:
            c = np.array(centre)
            heading = 0.0
            if pose is not None:
                x0, z0, h0 = pose
                c = _rot_y(h0) @ c + np.array([x0, 0.0, z0])
                heading = h0
            P.box(obj, c, heading, half, mat, CAR, col, (length / 2,))

    def _traffic(self, rng: np.random.Generator) -> None:
        s_lo, s_hi = self.s_range
        # parked cars in the parking lanes
        for side_i, side in ((0, -1), (1, 1)):
            if not self.parking[side_i]:
                continue
            l = side * (self.n_lanes[side_i] * LANE_W + 1.15)
            s = s_lo + _uniform(rng, 0, 8)
            while s < s_hi - 30:
                if rng.random() < 0.7:
                    x, z, h = self._place(s, l)
                    self._car(0, (x, z, h + (math.pi if rng.random() < 0.2 else 0.0)), rng)
                s += _uniform(rng, 5.5, 9.0)
        # moving cars, one speed per lane so that cars in a lane never collide
        T, dt = self.cfg.frames, 1.0 / self.cfg.fps
        t = np.arange(T) * dt
        lanes = [(-1, i) for i in range(self.n_lanes[0])] + [(1, i)
                                                             for i in range(self.n_lanes[1])]
        lane_speed = {ln: (_uniform(rng, 5, 14) if ln[0] < 0 else
                           _uniform(rng, 0.5, 1.4) * float(self.ego_speed.mean()))
                      for ln in lanes}
        taken: dict[tuple[int, int], list[float]] = {ln: [] for ln in lanes}
        ego_lane = (1, self.n_lanes[1] - 1)
        for _ in range(self.n_moving_cars):
            lane = lanes[int(rng.integers(len(lanes)))]
            side, i = lane
            v = lane_speed[lane]
            for _attempt in range(20):
                if side < 0:
                    s0 = _uniform(rng, 15, 150)
                else:
                    s0 = _uniform(rng, -10 if lane != ego_lane else 10, 80)
                s_path = s0 + side * v * t
                if any(abs(s0 - o) < 8.0 for o in taken[lane]):
                    continue
                if lane == ego_lane and np.min(s_path - self.ego_s) < 8.0:
                    continue
                break
            else:
                continue
            taken[lane].append(s0)
            l = side * (i + 0.5) * LANE_W
            x, z, h = self.road.pose(s_path, np.full(T, l))
            h = h + (math.pi if side < 0 else 0.0)
            obj = len(self.trajectories)
            self.trajectories.append(np.stack([x, z, h], axis=1))
            self._car(obj, None, rng)

    def _pedestrians(self, rng: np.random.Generator) -> None:
        T, dt = self.cfg.frames, 1.0 / self.cfg.fps
        t = np.arange(T) * dt
        s_c = float(self.ego_s[0])
        for _ in range(self.n_pedestrians):
            side = -1 if rng.random() < 0.5 else 1
            w = self.road_w[0 if side < 0 else 1]
            sw = self.sidewalk_w[0 if side < 0 else 1]
            if rng.random() < 0.3:  # crossing the road ahead
                s0 = s_c + _uniform(rng, 15, 50)
                v = _uniform(rng, 1.0, 1.8) * -side
                l_path = _uniform(rng, -self.road_w[0], self.road_w[1]) + v * t
                s_path = np.full(T, s0)
                dheading = -side * math.pi / 2
            else:
                l_path = np.full(T, side * (w + _uniform(rng, 0.6, max(0.7, sw - 0.4))))
                v = _uniform(rng, 0.8, 1.8) * (1 if rng.random() < 0.5 else -1)
                s_path = s_c + _uniform(rng, 3, 80) + v * t
                dheading = 0.0 if v > 0 else math.pi
            x, z, h = self.road.pose(s_path, l_path)
            obj = len(self.trajectories)
            self.trajectories.append(np.stack([x, z, h + dheading], axis=1))
            sc = _uniform(rng, 0.92, 1.1)
            shirt = rng.uniform(0.05, 0.9, 3)
            trousers = rng.uniform(0.05, 0.4, 3)
            skin = np.array([0.85, 0.65, 0.5]) * _uniform(rng, 0.45, 1.05)
            hair = rng.uniform(0.05, 0.35) * np.ones(3)
            P = self.prims
            P.box(obj, (0.0, 0.43 * sc, 0.0), 0.0, (0.17 * sc, 0.43 * sc, 0.11 * sc), M_PERSON,
                  PERSON, trousers)
            P.box(obj, (0.0, 1.16 * sc, 0.0), 0.0, (0.21 * sc, 0.30 * sc, 0.12 * sc), M_PERSON,
                  PERSON, shirt)
            P.sphere(obj, (0.0, 1.58 * sc, 0.0), 0.11 * sc, M_HEAD, PERSON, skin, tuple(hair))

    # ---- per frame
    def object_poses(self, t: int) -> np.ndarray:
        return np.stack([tr[t] for tr in self.trajectories])  # (n_obj, 3): x, z, heading

    def prim_world(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """World centre (N, 3) and heading (N,) of every primitive at frame t."""
        tab = self.table
        poses = self.object_poses(t)
        obj = tab["obj"]
        ox, oz, oh = poses[obj, 0], poses[obj, 1], poses[obj, 2]
        moving = obj > 0
        c = tab["centre"].copy()
        cs, sn = np.cos(oh), np.sin(oh)
        lx, lz = c[:, 0], c[:, 2]
        c[:, 0] = np.where(moving, cs * lx + sn * lz + ox, lx)
        c[:, 2] = np.where(moving, -sn * lx + cs * lz + oz, lz)
        heading = tab["heading"] + np.where(moving, oh, 0.0)
        return c, heading


# ---------------------------------------------------------------------------- rendering


class _Renderer:
    def __init__(self, scene: _Scene) -> None:
        cfg = scene.cfg
        self.scene = scene
        self.H, self.W = H, W = cfg.height, cfg.width
        self.f = cfg.focal
        self.cx, self.cy = (W - 1) / 2.0, (H - 1) / 2.0
        self.X = ((np.arange(W) - self.cx) / self.f).astype(np.float32)
        self.Y = (-(np.arange(H) - self.cy) / self.f).astype(np.float32)
        self.A = self.X[None, :] ** 2 + self.Y[:, None] ** 2 + 1.0  # |d_cam|^2
        uu = np.arange(W, dtype=np.float32)
        vv = np.arange(H, dtype=np.float32)
        self.gu = np.tile(uu, H)
        self.gv = np.repeat(vv, W)
        self.off_u = np.float32(self.cx) - self.gu
        self.off_v = np.float32(self.cy) - self.gv
        if scene.hood:
            xn = (uu - self.cx) / W
            top = H * (1.0 - scene.hood_frac) + H * 0.25 * xn ** 2
            self.hood = vv[:, None] >= top[None, :]
        else:
            self.hood = np.zeros((H, W), bool)
        tab = scene.table
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        self.corners_local = signs[None, :, :] * tab["half"][:, None, :]  # (N, 8, 3)
        self.is_sphere = tab["kind"] == K_SPHERE
        self.is_none = tab["kind"] == K_NONE
        self.half32 = tab["half"].astype(np.float32)
        # sensor noise: one bank per clip, read at a random offset per frame
        rng = np.random.default_rng(scene.noise_seed)
        self.noise_rng = rng
        n = H * W * 3
        sigma = cfg.noise * (DUSK_NOISE_FACTOR if cfg.look == "dusk" else 1.0)
        self.noise_bank = (rng.standard_normal(n + 4099, dtype=np.float32)
                           * np.float32(sigma) + np.float32(0.5))

    # ---- per-frame transforms of all primitives
    def _frame(self, t: int) -> dict:
        scene = self.scene
        R, c = scene.cams[t]
        centres, headings = scene.prim_world(t)
        ch, sh = np.cos(headings), np.sin(headings)
        ch = np.where(self.is_sphere, 1.0, ch)
        sh = np.where(self.is_sphere, 0.0, sh)
        # box frame: local = R_y(h)^T (world - centre); ray direction local = M d_cam
        M = np.empty((len(ch), 3, 3))
        M[:, 0, :] = ch[:, None] * R[0] - sh[:, None] * R[2]
        M[:, 1, :] = R[1]
        M[:, 2, :] = sh[:, None] * R[0] + ch[:, None] * R[2]
        e = c - centres
        o = np.stack([ch * e[:, 0] - sh * e[:, 2], e[:, 1], sh * e[:, 0] + ch * e[:, 2]], 1)
        oc = _rows_times(e, R)  # camera position in sphere-centred camera axes
        # face shading table: face = 2 * axis + (coordinate > 0)
        L = scene.sun
        lam = np.empty((len(ch), 6))
        for s_i, sg in enumerate((-1.0, 1.0)):
            lam[:, 0 + s_i] = sg * (ch * L[0] - sh * L[2])
            lam[:, 2 + s_i] = sg * L[1]
            lam[:, 4 + s_i] = sg * (sh * L[0] + ch * L[2])
        shade = (scene.ambient + scene.diffuse * np.maximum(lam, 0.0)).astype(np.float32)
        return {"R": R, "c": c, "centres": centres, "centres32": centres.astype(np.float32),
                "ch": ch.astype(np.float32), "sh": sh.astype(np.float32),
                "M": M.astype(np.float32), "o": o.astype(np.float32),
                "oc": oc.astype(np.float32),
                "shade": shade}

    def _bboxes(self, fr: dict) -> tuple[np.ndarray, np.ndarray]:
        """Screen boxes (N, 4) = u0, u1, v0, v1 (exclusive ends) and nearest depth (N,)."""
        R, c, centres = fr["R"], fr["c"], fr["centres"]
        loc = self.corners_local
        ch, sh = fr["ch"][:, None], fr["sh"][:, None]
        wx = ch * loc[..., 0] + sh * loc[..., 2] + centres[:, None, 0]
        wz = -sh * loc[..., 0] + ch * loc[..., 2] + centres[:, None, 2]
        wy = loc[..., 1] + centres[:, None, 1]
        q = np.stack([wx, wy, wz], axis=-1) - c
        q = _rows_times(q, R)  # camera coordinates, (N, 8, 3)
        z = q[..., 2]
        front = z >= NEAR
        zs = np.where(front, z, np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.cx + self.f * q[..., 0] / zs
            v = self.cy - self.f * q[..., 1] / zs
            a, b = q[:, _BOX_EDGES[:, 0]], q[:, _BOX_EDGES[:, 1]]
            za, zb = a[..., 2], b[..., 2]
            cross = (za - NEAR) * (zb - NEAR) < 0
            tt = np.where(cross, (NEAR - za) / np.where(cross, zb - za, 1.0), 0.0)
        p = a + tt[..., None] * (b - a)
        big = 1e9
        u_lo = np.minimum(np.where(front, u, big).min(1),
                          np.where(cross, self.cx + self.f * p[..., 0] / NEAR, big).min(1))
        u_hi = np.maximum(np.where(front, u, -big).max(1),
                          np.where(cross, self.cx + self.f * p[..., 0] / NEAR, -big).max(1))
        v_lo = np.minimum(np.where(front, v, big).min(1),
                          np.where(cross, self.cy - self.f * p[..., 1] / NEAR, big).min(1))
        v_hi = np.maximum(np.where(front, v, -big).max(1),
                          np.where(cross, self.cy - self.f * p[..., 1] / NEAR, -big).max(1))
        W, H = self.W, self.H
        # pixel centres are at integer coordinates: those in [lo, hi] can be covered
        out = np.stack([np.clip(np.floor(u_lo), 0, W), np.clip(np.ceil(u_hi) + 1, 0, W),
                        np.clip(np.floor(v_lo), 0, H), np.clip(np.ceil(v_hi) + 1, 0, H)],
                       axis=1).astype(np.int64)
        visible = front.any(axis=1) & ~self.is_none
        out[~visible] = 0
        zmin = np.where(cross.any(axis=1), NEAR, zs.min(axis=1))
        return out, zmin

    def _raster(self, t: int, fr: dict):
        scene = self.scene
        tab = scene.table
        R, c = fr["R"], fr["c"]
        # ground plane y = 0: camera z-depth of a ground hit is constant along a row when
        # the camera does not roll; sky elsewhere
        Rf = R.astype(np.float32)
        dwy = Rf[1, 0] * self.X[None, :] + (Rf[1, 1] * self.Y[:, None] + Rf[1, 2])
        with np.errstate(divide="ignore"):
            tg = np.float32(c[1]) / -dwy
        ground = (dwy < 0) & (tg < MAX_GROUND)
        zbuf = np.where(ground, tg, np.float32(SKY_DEPTH)).astype(np.float32)
        pbuf = np.where(ground, P_GROUND, P_SKY).astype(np.int32)
        if scene.hood:
            zbuf[self.hood] = HOOD_DEPTH
            pbuf[self.hood] = P_HOOD
        boxes, zmin = self._bboxes(fr)
        order = np.flatnonzero((boxes[:, 1] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 2]))
        order = order[np.argsort(zmin[order], kind="stable")]  # front to back
        M, o, oc = fr["M"], fr["o"], fr["oc"]
        kinds, half, shapes = tab["kind"], self.half32, tab["shape"]
        area = (boxes[order, 1] - boxes[order, 0]) * (boxes[order, 3] - boxes[order, 2])
        for i in order[area >= SMALL_AREA]:
            u0, u1, v0, v1 = boxes[i]
            zb = zbuf[v0:v1, u0:u1]
            if zmin[i] >= zb.max():
                continue  # everything in its screen box is already nearer
            Xb = self.X[None, u0:u1]
            Yb = self.Y[v0:v1, None]
            if kinds[i] == K_BOX:
                tnear = _box_hit(M[i], o[i], half[i], shapes[i], Xb, Yb)
            else:
                tnear = _sphere_hit(oc[i], half[i, 0], Xb, Yb, self.A[v0:v1, u0:u1])
            hit = tnear < zb  # NaN (miss) compares False
            np.copyto(zb, tnear, where=hit)
            np.copyto(pbuf[v0:v1, u0:u1], np.int32(i), where=hit)
        small = order[area < SMALL_AREA]
        if small.size:
            self._raster_small(small, boxes[small], fr, zbuf, pbuf)
        return zbuf, pbuf

    def _raster_small(self, prims, boxes, fr, zbuf, pbuf) -> None:
        """All small primitives at once: one row per (primitive, pixel of its screen box).

        Looping over a hundred distant poles and people costs more in interpreter overhead
        than in arithmetic, so their pixels are stacked and tested together; the nearest
        hit per pixel is resolved with ``np.minimum.at``."""
        W = self.W
        w = boxes[:, 1] - boxes[:, 0]
        area = w * (boxes[:, 3] - boxes[:, 2])
        total = int(area.sum())
        pp = np.repeat(prims, area)
        off = np.arange(total) - np.repeat(np.cumsum(area) - area, area)
        ww = np.repeat(w, area)
        row = off // ww
        u = np.repeat(boxes[:, 0], area) + (off - row * ww)
        v = np.repeat(boxes[:, 2], area) + row
        pix = v * W + u
        X, Y = np.take(self.X, u), np.take(self.Y, v)
        t = np.full(total, np.nan, np.float32)
        kinds = np.take(self.scene.table["kind"], pp)
        sel = np.flatnonzero(kinds == K_BOX)
        if sel.size:
            q = np.take(pp, sel)
            t[sel] = _box_hit(_rows(fr["M"], q), _rows(fr["o"], q), _rows(self.half32, q),
                              np.take(self.scene.table["shape"], q), np.take(X, sel),
                              np.take(Y, sel))
        sel = np.flatnonzero(kinds == K_SPHERE)
        if sel.size:
            q = np.take(pp, sel)
            t[sel] = _sphere_hit(_rows(fr["oc"], q), np.take(self.half32[:, 0], q),
                                 np.take(X, sel), np.take(Y, sel),
                                 np.take(self.A.ravel(), np.take(pix, sel)))
        zflat = zbuf.ravel()
        hit = np.flatnonzero(t < zflat[pix])
        if hit.size:
            hp, ht = pix[hit], t[hit]
            np.minimum.at(zflat, hp, ht)
            win = ht == zflat[hp]
            pbuf.ravel()[hp[win]] = pp[hit[win]]

    # ---- shading
    def _rays(self, R: np.ndarray, flat: bool = True) -> tuple[np.ndarray, ...]:
        """R @ (X, Y, 1) per pixel, as three (H*W,) arrays (or (H, W) when not flat)."""
        R = R.astype(np.float32)
        out = []
        for i in range(3):
            a = R[i, 0] * self.X[None, :] + (R[i, 1] * self.Y[:, None] + R[i, 2])
            out.append(a.ravel() if flat else a)
        return tuple(out)

    def _shade(self, fr: dict, zbuf: np.ndarray, pbuf: np.ndarray):
        scene = self.scene
        tab = scene.table
        H, W = self.H, self.W
        DW = self._rays(fr["R"])  # world direction per pixel
        zflat = zbuf.ravel()
        pflat = pbuf.ravel()
        rgb = np.empty((H * W, 3), np.float32)
        label = np.take(tab["label"], pflat)
        mat = np.take(tab["mat"], pflat)
        ctx = _ShadeContext(self, scene, fr, DW, zflat, pflat)
        pixel = np.dtype((np.void, 12))  # one RGB float32 triple, to scatter whole rows
        order = np.argsort(mat, kind="stable")
        bounds = np.searchsorted(mat[order], np.arange(len(_SHADERS) + 1))
        for m in range(len(_SHADERS)):
            if bounds[m + 1] == bounds[m]:
                continue
            idx = order[bounds[m]:bounds[m + 1]]
            col, lab = _SHADERS[m](ctx, idx)
            col = np.ascontiguousarray(col, np.float32)
            np.put(rgb.view(pixel).ravel(), idx, col.view(pixel).ravel())
            if lab is not None:
                label[idx] = lab
        return rgb.reshape(H, W, 3), label.reshape(H, W)

    # ---- flow
    def _flow(self, t: int, zbuf, pbuf, prev_z, prev_p):
        """Backward flow from frame t to t - 1, its validity, and the object per pixel."""
        scene = self.scene
        tab = scene.table
        H, W = self.H, self.W
        pflat = pbuf.ravel()
        zflat = zbuf.ravel()
        R, c = scene.cams[t]
        R1, c1 = scene.cams[t - 1]
        # a static point: q = R1^T (c + z R d - c1) = z (R1^T R) d + R1^T (c - c1); the sky
        # (at infinity) keeps only the rotation
        sky = pflat == P_SKY
        dd = np.where(sky, np.float32(1), zflat)
        b = (R1.T @ (c - c1)).astype(np.float32)
        nsky = (~sky).astype(np.float32)
        Q = [r * dd + b[j] * nsky for j, r in enumerate(self._rays(R1.T @ R))]
        obj = tab["obj"][pflat]
        counts = np.bincount(obj, minlength=scene.n_objects)
        if counts[1:].any():
            DW = self._rays(R)
            poses_t = scene.object_poses(t)
            poses_p = scene.object_poses(t - 1)
            for k in np.flatnonzero(counts[1:]) + 1:
                idx = np.flatnonzero(obj == k)
                z = zflat[idx]
                px = c[0] + z * DW[0][idx]
                py = c[1] + z * DW[1][idx]
                pz = c[2] + z * DW[2][idx]
                x0, z0, h0 = poses_t[k]
                x1, z1, h1 = poses_p[k]
                a = h1 - h0  # carried back by R_y(h1 - h0) about the object's position
                ca, sa = math.cos(a), math.sin(a)
                dx, dz = px - x0, pz - z0
                v = (ca * dx + sa * dz + x1 - c1[0], py - c1[1], -sa * dx + ca * dz + z1 - c1[2])
                for j in range(3):
                    Q[j][idx] = v[0] * R1[0, j] + v[1] * R1[1, j] + v[2] * R1[2, j]
        qx, qy, qz = Q
        with np.errstate(divide="ignore", invalid="ignore"):
            iz = np.float32(self.f) / qz
            fu = qx * iz + self.off_u  # u1 - u
            fv = self.off_v - qy * iz  # v1 - v
        hood = pflat == P_HOOD
        if scene.hood:
            fu[hood] = 0.0
            fv[hood] = 0.0
            qz[hood] = HOOD_DEPTH
        ui = np.rint(fu + self.gu)
        vi = np.rint(fv + self.gv)
        inside = (qz > NEAR * 0.5) & (ui >= 0) & (ui <= W - 1) & (vi >= 0) & (vi <= H - 1)
        j = np.where(inside, vi * W + ui, 0).astype(np.int64)
        valid = inside & (prev_p.ravel()[j] == pflat)
        depth_ok = np.abs(prev_z.ravel()[j] - qz) <= 0.1 * qz + 0.3
        valid &= depth_ok | sky
        flow = np.stack([fu, fv], axis=1)
        flow[~inside] = 0.0
        return flow.reshape(H, W, 2), valid.reshape(H, W), obj.reshape(H, W)

    def render(self) -> Clip:
        scene = self.scene
        cfg = scene.cfg
        T, H, W = cfg.frames, self.H, self.W
        images = np.empty((T, H, W, 3), np.uint8)
        labels = np.empty((T, H, W), np.uint8)
        flows = np.zeros((T, H, W, 2), np.float32)
        valid = np.zeros((T, H, W), bool)
        depth = np.empty((T, H, W), np.float32)
        objs = np.zeros((T, H, W), np.uint16)
        moving = np.array([np.ptp(tr, axis=0).max() > 0 for tr in scene.trajectories])
        prev = None
        for t in range(T):
            fr = self._frame(t)
            zbuf, pbuf = self._raster(t, fr)
            rgb, lab = self._shade(fr, zbuf, pbuf)
            if t > 0:
                flows[t], valid[t], obj = self._flow(t, zbuf, pbuf, *prev)
            else:
                obj = scene.table["obj"][pbuf]
            objs[t] = np.where(moving[obj], obj, 0).reshape(H, W)
            prev = (zbuf, pbuf)
            depth[t] = zbuf
            labels[t] = lab
            images[t] = self._expose(self._grade(rgb, zbuf), t)
        depth[depth >= SKY_DEPTH] = np.inf
        K = np.array([[self.f, 0, self.cx], [0, self.f, self.cy], [0, 0, 1.0]])
        poses = np.zeros((T, 4, 4))
        for t, (R, c) in enumerate(scene.cams):  # camera x right, y up, z forward; world y up
            poses[t, :3, :3] = R
            poses[t, :3, 3] = c
            poses[t, 3, 3] = 1.0
        info = {"turning": scene.turning, "lighting_change": scene.lighting_change,
                "shadows": scene.shadows, "hood": scene.hood,
                "moving_cars": scene.n_moving_cars, "pedestrians": scene.n_pedestrians,
                "curvature": scene.road.kappa, "speed_mps": scene.ego_speed.tolist(),
                "pan_start": scene.pan_start}
        return Clip(images, labels, flows, valid, depth, objs, K, poses, cfg, info)

    def _grade(self, rgb: np.ndarray, zbuf: np.ndarray) -> np.ndarray:
        """The clip's look applied to the shaded linear image (day: unchanged)."""
        if self.scene.cfg.look == "day":
            return rgb
        depth = np.minimum(zbuf.reshape(rgb.shape[:2]), np.float32(1e4))
        haze = (1.0 - np.exp(-depth / np.float32(DUSK_HAZE_M)))[..., None].astype(np.float32)
        lit = rgb * DUSK_TINT
        return lit + (DUSK_HAZE - lit) * haze  # towards the haze colour with distance

    def _expose(self, rgb: np.ndarray, t: int) -> np.ndarray:
        scene = self.scene
        T = scene.cfg.frames
        if scene.cfg.blur > 0:
            rgb = cv2.GaussianBlur(rgb, (0, 0), scene.cfg.blur)
        out = rgb * np.float32(255.0)
        if scene.cfg.noise > 0:
            k = int(self.noise_rng.integers(0, 4096))
            out += self.noise_bank[k:k + out.size].reshape(out.shape)
        else:
            out += np.float32(0.5)
        np.clip(out, 0, 255, out=out)
        img = out.astype(np.uint8)
        if scene.lighting_change and T > 1:  # exposure drift as a tone curve
            a = 0.5 - 0.5 * math.cos(math.pi * t / (T - 1))  # smooth 0 -> 1
            gain = 1.0 + a * (scene.gain_end - 1.0)
            gamma = 1.0 + a * (scene.gamma_end - 1.0)
            x = np.arange(256) / 255.0
            lut = np.clip(255.0 * np.clip(gain * x, 0, 1) ** gamma + 0.5, 0, 255)
            img = cv2.LUT(img, lut.astype(np.uint8))
        return img


def _box_hit(M, o, half, shape, X, Y) -> np.ndarray:
    """Camera z-depth of the ray's entry into a box (slab method); NaN where it misses.

    Either one box (M 3x3, o and half (3,), shape an int; X a row, Y a column) or one box
    per ray (M (n, 3, 3), o and half (n, 3), shape (n,); X, Y (n,))."""
    single = np.ndim(M) == 2
    with np.errstate(divide="ignore", invalid="ignore"):
        tmin = tmax = None
        for ax in (1, 0, 2):  # y first: for one box it depends on the row only (no roll)
            m0, m1, m2 = M[..., ax, 0], M[..., ax, 1], M[..., ax, 2]
            d = m1 * Y + m2
            if not (single and m0 == 0):
                d = m0 * X + d
            inv = np.float32(1.0) / d
            t1 = (-half[..., ax] - o[..., ax]) * inv
            t2 = (half[..., ax] - o[..., ax]) * inv
            lo = np.minimum(t1, t2)
            hi = np.maximum(t1, t2)
            tmin = lo if tmin is None else np.maximum(tmin, lo)
            tmax = hi if tmax is None else np.minimum(tmax, hi)
        ok = (tmin <= tmax) & (tmin > NEAR)
        shape = np.asarray(shape)
        if (shape >= 0).any():  # sign panels: cut the outline out of the square face
            dx = M[..., 0, 0] * X + M[..., 0, 1] * Y + M[..., 0, 2]
            dy = M[..., 1, 0] * X + M[..., 1, 1] * Y + M[..., 1, 2]
            px = (o[..., 0] + tmin * dx) / half[..., 0]
            py = (o[..., 1] + tmin * dy) / half[..., 1]
            if single:
                ok &= _sign_inside(int(shape), px, py)
            else:
                for k in np.unique(shape[shape >= 0]):
                    sel = shape == k
                    ok[sel] &= _sign_inside(int(k), px[sel], py[sel])
    return np.where(ok, tmin, np.float32(np.nan))


def _sphere_hit(oc, r, X, Y, A) -> np.ndarray:
    """Camera z-depth of a ray's first hit on a sphere; oc is the camera position relative
    to the centre in camera axes. One sphere (oc (3,)) or one per ray (oc (n, 3))."""
    ox, oy, oz = oc[..., 0], oc[..., 1], oc[..., 2]
    b = X * ox + (Y * oy + oz)
    cc = ox * ox + oy * oy + oz * oz - r * r
    disc = b * b - A * cc
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / A
    return np.where(t > NEAR, t, np.float32(np.nan))


def _sign_inside(shape: int, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Outline of a sign panel in its [-1, 1]^2 face coordinates."""
    if shape in (0, 1):  # round
        return px * px + py * py <= 1.0
    if shape == 2:  # triangle, point up
        return (py >= -0.85) & (np.abs(px) <= (1.0 - py) * 0.55)
    if shape == 4:  # diamond
        return np.abs(px) + np.abs(py) <= 1.0
    return np.ones(np.broadcast_shapes(px.shape, py.shape), bool)  # square


# ------------------------------------------------------------------------------ shaders


class _ShadeContext:
    def __init__(self, r: _Renderer, scene: _Scene, fr: dict, DW, z, p) -> None:
        self.r, self.scene, self.fr = r, scene, fr
        self.DW, self.z, self.p = DW, z, p
        self.c = fr["c"].astype(np.float32)
        self.tex = scene.textures
        self.tab = scene.table

    def footprint(self, idx):
        return self.z[idx] * np.float32(1.0 / self.r.f)  # metres per pixel, facing surface

    def dirs(self, idx):
        return self.DW[0][idx], self.DW[1][idx], self.DW[2][idx]

    def point(self, idx):
        z = self.z[idx]
        return tuple(self.c[j] + z * self.DW[j][idx] for j in range(3))

    def local(self, idx):
        """Hit point in its primitive's frame, its face (2 * axis + positive) and shading."""
        pid = np.take(self.p, idx)
        fr = self.fr
        px, py, pz = self.point(idx)
        cen = _rows(fr["centres32"], pid)
        ex, ly, ez = px - cen[:, 0], py - cen[:, 1], pz - cen[:, 2]
        cs, sn = np.take(fr["ch"], pid), np.take(fr["sh"], pid)
        lx = cs * ex - sn * ez
        lz = sn * ex + cs * ez
        half = _rows(self.r.half32, pid)
        rx, ry, rz = np.abs(lx) / half[:, 0], np.abs(ly) / half[:, 1], np.abs(lz) / half[:, 2]
        is_x = (rx >= ry) & (rx >= rz)
        is_y = ~is_x & (ry >= rz)
        is_z = ~(is_x | is_y)
        axis = is_y.astype(np.int8) + 2 * is_z.astype(np.int8)
        positive = (is_x & (lx > 0)) | (is_y & (ly > 0)) | (is_z & (lz > 0))
        face = 2 * axis + positive
        shade = np.take(fr["shade"].ravel(), 6 * pid + face)
        return pid, lx, ly, lz, axis, face, half, shade

    @staticmethod
    def face_uv(axis, lx, ly, lz, half):
        """Surface coordinates in metres: u along the face, v up from the box bottom."""
        side = axis == 0
        top = axis == 1
        u = lx + side * (lz - lx)
        v = ly + half[:, 1]
        v += top * (lz - v)
        return u, v


def _shade_sky(ctx: _ShadeContext, idx):
    s = ctx.scene
    dx, dy, dz = ctx.dirs(idx)
    el = np.arctan2(dy, np.sqrt(dx * dx + dz * dz))
    az = np.arctan2(dx, dz)
    a = np.clip(el * np.float32(1 / 0.6), 0.0, 1.0)[:, None]
    col = s.sky_horizon32 + a * (s.sky_zenith32 - s.sky_horizon32)
    # clouds on a dome: texture coordinates from the direction, stretched near the horizon
    cu = az * np.float32(256 / math.pi)
    cv = np.float32(60.0) / (np.maximum(el, 0.0) + np.float32(0.15))
    n = 0.7 * ctx.tex(2, cu, cv) + 0.3 * ctx.tex(1, cu * 2.0, cv * 2.0)
    cloud = np.clip((n - np.float32(1.4 - 2.2 * s.cloud_cover)) * 0.9, 0.0, 1.0)[:, None]
    return col + cloud * (np.float32(0.93) - col), None


def _shade_ground(ctx: _ShadeContext, idx):
    s = ctx.scene
    tex = ctx.tex
    px, _, pz = ctx.point(idx)
    S, L = s.road.coords(px, pz)
    dx, dy, dz = ctx.dirs(idx)
    # the footprint along the ground grows at grazing angles
    cos_inc = np.abs(dy) / np.sqrt(dx * dx + dy * dy + dz * dz)
    fp = ctx.footprint(idx) / np.maximum(np.sqrt(cos_inc), np.float32(0.2))
    wl, wr = s.road_w
    swl, swr = s.sidewalk_w
    on_road = (L >= -wl) & (L <= wr)
    on_side = ~on_road & (L >= -wl - swl) & (L <= wr + swr)
    lab = np.where(on_road, ROAD, np.where(on_side, SIDEWALK, TERRAIN)).astype(np.uint8)
    # asphalt: noise octaves of about 0.12 m, 0.6 m and 3 m, and darker patches
    n_f = tex(0, S * np.float32(25), L * np.float32(25)) * _fade(fp, 0.12)
    n_m = tex(1, S * np.float32(16) + 50, L * np.float32(16)) * _fade(fp, 0.6)
    n_c = tex(2, S * np.float32(2), L * np.float32(2) + 80)
    g = np.float32(s.asphalt) * (1.0 + 0.16 * n_f + 0.12 * n_m + 0.12 * np.clip(n_c, -1.5, 0.6))
    # lane markings
    lw = 0.07
    if s.center_dashed:
        mark = (np.abs(L) < lw) & (_frac(S * np.float32(1 / 9.0)) < 0.4)
    else:
        mark = np.abs(np.abs(L) - 0.12) < lw
    for side, n_l, park in ((-1, s.n_lanes[0], s.parking[0]), (1, s.n_lanes[1], s.parking[1])):
        for i in range(1, n_l):
            mark |= (np.abs(L - side * i * LANE_W) < lw) & (_frac(S * np.float32(1 / 9) + 0.3)
                                                              < 0.33)
        edge = side * (n_l * LANE_W + (0.0 if park else 0.15))
        mark |= np.abs(L - edge) < lw
    mark &= on_road
    g = np.where(mark, 0.82 + 0.05 * n_f, g)
    col = g[:, None] * np.float32([1.0, 1.0, 1.04])
    if on_side.any():  # sidewalk tiles and a lighter curb
        Si, Li = S[on_side], L[on_side]
        ts = np.float32(1.0 / s.tile)
        tone = 0.9 + 0.2 * _hash01(np.floor(Si * ts), np.floor(Li * ts))
        joint = (_frac(Si * ts) < 0.07) | (_frac(Li * ts) < 0.07)
        tone *= 1.0 - 0.25 * joint * _fade(fp[on_side], s.tile * 0.5)
        tone *= 1.0 + 0.06 * n_f[on_side] + 0.05 * n_m[on_side]
        curb = (np.abs(Li) - np.where(Li < 0, wl, wr)) < 0.18
        tone = np.where(curb, np.float32(1.12), tone)
        col[on_side] = tone[:, None] * s.sidewalk_rgb32
    terr = lab == TERRAIN
    if terr.any():
        gn = 1.0 + 0.25 * n_m[terr] + 0.2 * n_c[terr] + 0.15 * n_f[terr]
        col[terr] = gn[:, None] * s.grass_rgb32
    shade = np.float32(s.ambient + s.diffuse * max(float(s.sun[1]), 0.0))
    if s.shadows:
        for s0, s1, l0, l1, fac in s.bands:
            shade = shade * np.where((S >= s0) & (S <= s1) & (L >= l0) & (L <= l1),
                                     np.float32(fac), np.float32(1.0))
    shade = np.asarray(shade, np.float32)
    return col * (shade[:, None] if shade.ndim else shade), lab


def _shade_facade(ctx: _ShadeContext, idx):
    pid, lx, ly, lz, axis, face, half, shade = ctx.local(idx)
    u, v = ctx.face_uv(axis, lx, ly, lz, half)
    par = _rows(ctx.tab["param"], pid)
    pu, pv, wf, hf, gf, off, tint = (par[:, k] for k in range(7))
    uo = u + off
    fu = _frac(uo / pu)
    fv = _frac((v - gf) / pv)
    vertical = axis != 1
    win = (np.abs(fu - 0.5) < wf * 0.5) & (fv > 0.25) & (fv < 0.25 + hf) & (v > gf) & (
        v < 2 * half[:, 1] - 0.8)
    shop = (v > 0.4) & (v < gf - 0.5) & (_frac(uo / (2 * pu)) < 0.7)
    glass = (win | shop) & vertical
    fp = ctx.footprint(idx)
    g = 1.0 + 0.07 * ctx.tex(0, u * np.float32(20), v * np.float32(20)) * _fade(fp, 0.2) + (
        0.06 * ctx.tex(1, u * np.float32(5), v * np.float32(5) + 30))
    g = np.where(v < 0.5, g * np.float32(0.75), g)  # plinth
    col = _rows(ctx.tab["color"], pid) * (g * shade)[:, None]
    if glass.any():
        gi = np.flatnonzero(glass)
        cell = _hash01(np.floor(uo[gi] / pu[gi]), np.floor((v[gi] - gf[gi]) / pv[gi]), 7)
        lum = 0.12 + 0.25 * v[gi] / np.maximum(2 * half[gi, 1], 1) + 0.12 * cell + 0.05 * tint[gi]
        col[gi] = (lum * shade[gi])[:, None] * np.float32([0.8, 0.9, 1.0])
    return col, None


def _shade_fence(ctx: _ShadeContext, idx):
    pid, lx, ly, lz, axis, face, half, shade = ctx.local(idx)
    u, v = ctx.face_uv(axis, lx, ly, lz, half)
    slat = (_frac(u * np.float32(1 / 0.16)) < 0.45) * _fade(ctx.footprint(idx), 0.16)
    g = 1.0 - 0.35 * slat
    g = np.where((_frac(u * np.float32(0.4)) < 0.05) | (v > 2 * half[:, 1] - 0.08), 0.7, g)
    return _rows(ctx.tab["color"], pid) * (g * shade)[:, None], None


def _shade_wall(ctx: _ShadeContext, idx):
    pid, lx, ly, lz, axis, face, half, shade = ctx.local(idx)
    u, v = ctx.face_uv(axis, lx, ly, lz, half)
    fp = ctx.footprint(idx)
    row = np.floor(v * np.float32(1 / 0.09))
    bu = u * np.float32(1 / 0.27) + 0.5 * (row % 2)
    mortar = ((_frac(v * np.float32(1 / 0.09)) < 0.14) | (_frac(bu) < 0.06)) * _fade(fp, 0.09)
    tone = 0.9 + 0.2 * _hash01(np.floor(bu), row, 3) * _fade(fp, 0.27)
    g = tone * (1.0 - 0.3 * mortar)
    return _rows(ctx.tab["color"], pid) * (g * shade)[:, None], None


def _shade_pole(ctx: _ShadeContext, idx):
    pid, lx, ly, lz, axis, face, half, shade = ctx.local(idx)
    g = 1.0 + 0.05 * ctx.tex(0, (lx + lz) * np.float32(50), ly * np.float32(20))
    return _rows(ctx.tab["color"], pid) * (g * shade)[:, None], None


_SIGN_RGB = {k: np.array(v, np.float32) for k, v in {
    "red": (0.8, 0.08, 0.08), "white": (0.92, 0.92, 0.92), "blue": (0.1, 0.25, 0.7),
    "yellow": (0.95, 0.8, 0.1), "grey": (0.5, 0.5, 0.52)}.items()}


def _shade_sign(ctx: _ShadeContext, idx):
    pid, lx, ly, lz, axis, face, half, shade = ctx.local(idx)
    shape = np.take(ctx.tab["shape"], pid)
    px, py = lx / half[:, 0], ly / half[:, 1]
    C = _SIGN_RGB
    col = np.empty((idx.size, 3), np.float32)
    r2 = px * px + py * py
    s0 = shape == 0  # prohibition: red ring, white disc
    col[s0] = np.where((r2[s0] > 0.5625)[:, None], C["red"], C["white"])
    s1 = shape == 1  # mandatory: blue disc, white arrow
    arrow = ((np.abs(px) < 0.12) & (py > -0.6) & (py < 0.3)) | (
        (np.abs(px) < 0.55 - (py - 0.3)) & (py >= 0.3) & (py < 0.7))
    col[s1] = np.where(arrow[s1][:, None], C["white"], C["blue"])
    s2 = shape == 2  # warning triangle
    inner = (py >= -0.6) & (np.abs(px) <= (0.6 - py) * 0.5)
    col[s2] = np.where(inner[s2][:, None], C["white"], C["red"])
    s3 = shape == 3  # information square
    col[s3] = np.where((np.maximum(np.abs(px), np.abs(py)) > 0.85)[s3][:, None], C["white"],
                       C["blue"])
    s4 = shape == 4  # priority diamond
    col[s4] = np.where(((np.abs(px) + np.abs(py)) > 0.7)[s4][:, None], C["white"], C["yellow"])
    col[(axis != 2) | (lz > 0)] = C["grey"]  # edges and the back of the panel
    return col * shade[:, None], None


_LAMPS = np.array([(0.9, 0.1, 0.05), (0.95, 0.65, 0.05), (0.1, 0.9, 0.35)], np.float32)


def _shade_tlight(ctx: _ShadeContext, idx):
    pid, lx, ly, lz, axis, face, half, shade = ctx.local(idx)
    lit = np.take(ctx.tab["param"][:, 0], pid).astype(int)
    col = _rows(ctx.tab["color"], pid).copy()
    front = (axis == 2) & (lz < 0)
    for k, yc in enumerate((0.28, 0.0, -0.28)):
        inside = front & ((lx * lx + (ly - yc) ** 2) < 0.01)
        col[inside] = np.where((lit[inside] == k)[:, None], _LAMPS[k], _LAMPS[k] * 0.25)
    return col * shade[:, None], None


def _shade_foliage(ctx: _ShadeContext, idx):
    pid = np.take(ctx.p, idx)
    sph = np.take(ctx.tab["kind"], pid) == K_SPHERE
    shade = np.empty(idx.size, np.float32)
    u = np.empty(idx.size, np.float32)
    v = np.empty(idx.size, np.float32)
    if sph.any():
        cen = _rows(ctx.fr["centres32"], pid[sph])
        ex, ey, ez = (a - cen[:, j] for j, a in enumerate(ctx.point(idx[sph])))
        r = np.take(ctx.r.half32[:, 0], pid[sph])
        u[sph] = np.arctan2(ex, ez) * r
        v[sph] = ey
        L = ctx.scene.sun
        lam = np.maximum((ex * L[0] + ey * L[1] + ez * L[2]) / r, 0)
        shade[sph] = ctx.scene.ambient * (0.75 + 0.25 * ey / r) + ctx.scene.diffuse * lam
    if not sph.all():
        _, lx, ly, lz, axis, face, half, sh = ctx.local(idx[~sph])
        u[~sph], v[~sph] = ctx.face_uv(axis, lx, ly, lz, half)
        shade[~sph] = sh
    leaf = ctx.tex(0, u * np.float32(20), v * np.float32(20)) * _fade(ctx.footprint(idx), 0.2)
    clump = ctx.tex(1, u * np.float32(8) + 100, v * np.float32(8))
    g = 0.85 + 0.3 * leaf + 0.25 * clump
    return _rows(ctx.tab["color"], pid) * (g * shade)[:, None], None


def _shade_trunk(ctx: _ShadeContext, idx):
    pid, lx, ly, lz, axis, face, half, shade = ctx.local(idx)
    g = 1.0 + 0.2 * ctx.tex(0, (lx + lz) * np.float32(33), ly * np.float32(7))
    return _rows(ctx.tab["color"], pid) * (g * shade)[:, None], None


def _shade_car(ctx: _ShadeContext, idx):
    pid, lx, ly, lz, axis, face, half, shade = ctx.local(idx)
    hl = np.take(ctx.tab["param"][:, 0], pid)
    g = 1.0 + 0.15 * np.clip(ly / half[:, 1], -1, 1)
    g = np.where((axis != 1) & (ly < -0.28), g * 0.4, g)  # bumper band
    col = _rows(ctx.tab["color"], pid) * g[:, None]
    # wheels on the sides (the body box's centre is 0.55 m up, a wheel's 0.33 m)
    wy = ly + 0.22
    wb = hl - 0.85
    dist = np.minimum((lz - wb) ** 2, (lz + wb) ** 2) + wy * wy
    wheel = (axis == 0) & (dist < 0.33 ** 2)
    col[wheel] = np.where((dist[wheel] < 0.17 ** 2)[:, None], np.float32(0.45), np.float32(0.05))
    lamps = (axis == 2) & (np.abs(np.abs(lx) - half[:, 0] + 0.25) < 0.15) & (
        np.abs(ly - 0.12) < 0.07)
    col[lamps] = np.where((lz[lamps] > 0)[:, None], np.float32([0.95, 0.95, 0.85]),
                          np.float32([0.8, 0.05, 0.05]))
    return col * shade[:, None], None


def _shade_cabin(ctx: _ShadeContext, idx):
    pid, lx, ly, lz, axis, face, half, shade = ctx.local(idx)
    u, v = ctx.face_uv(axis, lx, ly, lz, half)
    edge_u = np.where(axis == 0, half[:, 2], half[:, 0])
    glass = (axis != 1) & (np.abs(u) < edge_u - 0.1) & (v > 0.06) & (v < 2 * half[:, 1] - 0.06)
    glass &= ~((axis == 0) & (np.abs(u + 0.1) < 0.06))  # B-pillar
    col = _rows(ctx.tab["color"], pid).copy()
    lum = 0.1 + 0.25 * v[glass] / (2 * half[glass, 1])
    col[glass] = lum[:, None] * np.float32([0.8, 0.9, 1.0])
    return col * shade[:, None], None


def _shade_person(ctx: _ShadeContext, idx):
    pid, lx, ly, lz, axis, face, half, shade = ctx.local(idx)
    g = 1.0 + 0.1 * ctx.tex(0, (lx + lz) * np.float32(50), ly * np.float32(50)) * _fade(
        ctx.footprint(idx), 0.06)
    return _rows(ctx.tab["color"], pid) * (g * shade)[:, None], None


def _shade_head(ctx: _ShadeContext, idx):
    pid = np.take(ctx.p, idx)
    ey = ctx.point(idx)[1] - np.take(ctx.fr["centres32"][:, 1], pid)
    r = np.take(ctx.r.half32[:, 0], pid)
    hair = _rows(ctx.tab["param"][:, :3], pid)
    col = np.where((ey > 0.25 * r)[:, None], hair, _rows(ctx.tab["color"], pid))
    return col * np.float32(ctx.scene.ambient + ctx.scene.diffuse * 0.6), None


def _shade_hood(ctx: _ShadeContext, idx):
    r = ctx.r
    v = r.gv[idx]
    u = r.gu[idx]
    a = (v - r.H * (1 - ctx.scene.hood_frac)) / (r.H * ctx.scene.hood_frac)
    g = 0.7 + 0.5 * np.clip(a, 0, 1)
    hl = np.exp(-((u - r.cx) / (0.3 * r.W)) ** 2) * np.exp(-(a - 0.15) ** 2 / 0.01) * 0.25
    return (ctx.scene.hood_rgb32 * g[:, None] + hl[:, None]).astype(np.float32), None


_SHADERS = (
    _shade_sky, _shade_ground, _shade_hood, _shade_facade, _shade_fence, _shade_wall,
    _shade_pole, _shade_sign, _shade_tlight, _shade_foliage, _shade_trunk, _shade_car,
    _shade_cabin, _shade_person, _shade_head,
)  # indexed by material id, M_SKY .. M_HEAD


# ---------------------------------------------------------------------------------- API


def render_clip(cfg: SceneConfig) -> Clip:
    """Render one clip: images, trainId labels, backward flow and its validity, depth."""
    return _Renderer(_Scene(cfg)).render()


def colorize(labels: np.ndarray) -> np.ndarray:
    """trainIds (H, W) -> RGB (H, W, 3) with the Cityscapes palette; 255 black."""
    from davss_ros.classes import CITYSCAPES_PALETTE

    lut = np.zeros((256, 3), np.uint8)
    lut[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    return lut[labels]


def clip_seed(seed: int, split: str, clip: int) -> int:
    """The seed of clip ``clip`` of ``split``: splits never share scenes."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(clip)])
    return int(ss.generate_state(1, np.uint32)[0])


# ------------------------------------------------------------------- Cityscapes layout

ANNOTATED_INDEX = 19  # Cityscapes annotates the 20th frame of each 30-frame snippet


def cityscapes_names(city: str, clip: int, frame: int) -> dict[str, str]:
    stem = f"{city}_{clip:06d}_{frame:06d}"
    return {"image": f"{stem}_leftImg8bit.png", "label": f"{stem}_gtFine_labelIds.png",
            "flow": f"{stem}_flow.npy", "flow_valid": f"{stem}_flowvalid.png"}


def _write_one(job: dict) -> int:
    from davss_ros.data.imageio import write_label, write_rgb
    from davss_ros.data.labels import train_id_to_id

    cv2.setNumThreads(1)
    root, split, city = Path(job["root"]), job["split"], job["city"]
    cfg = SceneConfig(**job["cfg"])
    clip = render_clip(cfg)
    k = job["clip"]
    img_dir = root / "leftImg8bit_sequence" / split / city
    gt_dir = root / "gtFine" / split / city
    seq_dir = root / "gtFine_sequence" / split / city
    flow_dir = root / "flow_sequence" / split / city
    for t in range(cfg.frames):
        names = cityscapes_names(city, k, t)
        write_rgb(img_dir / names["image"], clip.images[t])
        ids = train_id_to_id(clip.labels[t])
        if t == ANNOTATED_INDEX:
            write_label(gt_dir / names["label"], ids)
        if job["all_labels"]:
            write_label(seq_dir / names["label"], ids)
        if job["flows"] and t > 0:
            flow_dir.mkdir(parents=True, exist_ok=True)
            np.save(flow_dir / names["flow"], clip.flows[t].astype(np.float16))
            write_label(flow_dir / names["flow_valid"], clip.flow_valid[t].astype(np.uint8) * 255)
    return k


def write_cityscapes_layout(root: str | Path, split: str, n_clips: int, height: int,
                            width: int, seed: int, frames: int = 30, city: str = "synth",
                            all_labels: bool = True, workers: int = 1, progress: bool = True,
                            flows: bool = False, **knobs) -> list[Path]:
    """Render ``n_clips`` clips into the Cityscapes sequence layout under ``root``.

    Writes, for clip k and frame t (0-based, numbered like Cityscapes' 000000..000029):
      leftImg8bit_sequence/{split}/{city}/{city}_{k:06d}_{t:06d}_leftImg8bit.png  (all t)
      gtFine/{split}/{city}/{city}_{k:06d}_000019_gtFine_labelIds.png  (frame 19 only)
      gtFine_sequence/{split}/{city}/..._gtFine_labelIds.png  (every frame; all_labels)
      flow_sequence/{split}/{city}/..._flow.npy (float16 backward flow, frames >= 1) and
      ..._flowvalid.png (0/255) when ``flows`` (off by default: 0.5 MB per 256x512 frame),
      synthetic_{split}.json: the arguments, for the record.
    Labels are written as Cityscapes *ids* (through ``train_id_to_id``), as the official
    files are, so the loaders' id -> trainId path is exercised. Extra keyword arguments
    are SceneConfig knobs. Returns the gtFine label paths.
    """
    if frames <= ANNOTATED_INDEX:
        raise ValueError(f"frames must be > {ANNOTATED_INDEX} (the annotated frame index), "
                         f"got {frames}")
    if n_clips < 0:
        raise ValueError(f"n_clips must be >= 0, got {n_clips}")
    root = Path(root)
    jobs = []
    for k in range(n_clips):
        cfg = SceneConfig(height=height, width=width, frames=frames,
                          seed=clip_seed(seed, split, k), **knobs)
        jobs.append({"root": str(root), "split": split, "city": city, "clip": k,
                     "cfg": asdict(cfg), "all_labels": all_labels, "flows": flows})
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=f"{split} clips", disable=not progress, unit="clip")
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        # spawn, not fork: a forked child can inherit OpenCV's or OpenBLAS's thread pool
        # mid-operation and hang
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for _ in pool.imap_unordered(_write_one, jobs):
                bar.update(1)
    else:
        for job in jobs:
            _write_one(job)
            bar.update(1)
    bar.close()
    meta = {"split": split, "n_clips": n_clips, "height": height, "width": width,
            "seed": seed, "frames": frames, "city": city, "annotated_index": ANNOTATED_INDEX,
            "all_labels": all_labels, "flows": flows, "knobs": knobs}
    (root / f"synthetic_{split}.json").write_text(json.dumps(meta, indent=1))
    return [root / "gtFine" / split / city / cityscapes_names(city, k, ANNOTATED_INDEX)["label"]
            for k in range(n_clips)]
