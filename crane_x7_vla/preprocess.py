"""Image and action transforms that training AND deployment call.

Training calls `prepare_image(..., train=True, rng=...)` (random crop + colour jitter);
deployment calls the same function with `train=False`, which applies the matching
centre crop. Both use the `ImageSpec` stored in the checkpoint, so an image at the
robot is processed exactly as the images the policy learned from.

Actions and states are normalised with `Normalizer`, built from the dataset
statistics the checkpoint carries (q01/q99 by default, as OpenVLA and openpi do).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.episode import jpeg


RESIZE_MODES = ("crop", "pad")


@dataclass(frozen=True)
class ImageSpec:
    """How a camera frame becomes model input."""

    width: int = 224
    height: int = 224
    crop_scale: float = 0.9  # area kept by the crop (random at training, centred at inference)
    color_jitter: float = 0.1  # brightness/contrast jitter at training, 0 = off
    # "crop": crop, then resize to width x height (aspect not kept);
    # "pad": resize keeping the aspect ratio and pad with black to width x height (openpi's
    # resize_with_pad), then at training a random crop of crop_scale resized back; no crop at inference
    resize: str = "crop"

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"image_spec.resize must be one of {RESIZE_MODES} (got {self.resize!r})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ImageSpec":
        return cls(**{k: data[k] for k in ("width", "height", "crop_scale", "color_jitter", "resize") if k in data})


def parse_image_size(text: str) -> tuple[int, int]:
    """'224x224' -> (224, 224); raises ValueError naming the bad value."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"image size must look like WIDTHxHEIGHT, e.g. 224x224 (got '{text}')") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive (got '{text}')")
    return w, h


def _crop_box(h: int, w: int, scale: float, rng: np.random.Generator | None):
    side = math.sqrt(max(min(scale, 1.0), 1e-3))
    ch, cw = max(1, int(round(h * side))), max(1, int(round(w * side)))
    if rng is None:
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
    return top, left, ch, cw


def prepare_image(
    image: np.ndarray | bytes,
    spec: ImageSpec = ImageSpec(),
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """RGB uint8 (H, W, 3) or JPEG bytes -> RGB uint8 (spec.height, spec.width, 3).

    Crop (random when training, centred otherwise) then resize. JPEG bytes are
    decoded with DCT-domain down-scaling to no less than the size needed.
    """
    if train and rng is None:
        raise ValueError("prepare_image(train=True) needs an rng, so augmentation is reproducible")
    if spec.resize == "pad":
        return _prepare_padded(image, spec, train, rng)
    if isinstance(image, (bytes, bytearray)):
        side = 1.0 / math.sqrt(max(min(spec.crop_scale, 1.0), 1e-3))
        image = jpeg.decode(bytes(image), min_size=(int(spec.width * side), int(spec.height * side)))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    top, left, ch, cw = _crop_box(h, w, spec.crop_scale, rng if train else None)
    image = image[top : top + ch, left : left + cw]
    if (cw, ch) != (spec.width, spec.height):
        interp = cv2.INTER_AREA if cw > spec.width else cv2.INTER_LINEAR
        image = cv2.resize(image, (spec.width, spec.height), interpolation=interp)
    if train and spec.color_jitter > 0:
        image = _jitter(image, spec.color_jitter, rng)
    return np.ascontiguousarray(image)


def _jitter(image: np.ndarray, j: float, rng: np.random.Generator) -> np.ndarray:
    gain = 1.0 + rng.uniform(-j, j)
    bias = 255.0 * rng.uniform(-j, j) * 0.5
    return np.clip(image.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


def resize_with_pad(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize keeping the aspect ratio (bilinear, PIL) and centre it on black, as openpi's
    resize_with_pad: scale = max(w / width, h / height), sizes and offsets truncated."""
    from PIL import Image

    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    ratio = max(w / width, h / height)
    rw, rh = int(w / ratio), int(h / ratio)
    resized = np.asarray(Image.fromarray(image).resize((rw, rh), resample=Image.BILINEAR))
    out = np.zeros((height, width, 3), np.uint8)
    top, left = max(0, int((height - rh) / 2)), max(0, int((width - rw) / 2))
    out[top : top + rh, left : left + rw] = resized
    return out


def _prepare_padded(image, spec: ImageSpec, train: bool, rng) -> np.ndarray:
    if isinstance(image, (bytes, bytearray)):
        image = jpeg.decode(bytes(image), min_size=(spec.width, spec.height))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    image = resize_with_pad(image, spec.width, spec.height)
    if train:
        if spec.crop_scale < 1.0:
            top, left, ch, cw = _crop_box(spec.height, spec.width, spec.crop_scale, rng)
            image = cv2.resize(image[top : top + ch, left : left + cw], (spec.width, spec.height),
                               interpolation=cv2.INTER_LINEAR)
        if spec.color_jitter > 0:
            image = _jitter(image, spec.color_jitter, rng)
    return np.ascontiguousarray(image)


@dataclass(frozen=True)
class Normalizer:
    """Maps values between robot units and [-1, 1] with per-dimension bounds.

    Dimensions whose bounds coincide (a joint that never moved) map to 0 and back
    to the bound, instead of dividing by zero.
    """

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def from_stats(cls, stats: dict, key: str, mode: str = "q01_q99") -> "Normalizer":
        """`stats` is the dataset-statistics dict for one dataset; `key` 'action' or 'proprio'."""
        if key not in stats:
            raise KeyError(f"dataset statistics have no '{key}' entry")
        entry = stats[key]
        if mode == "q01_q99":
            low, high = entry["q01"], entry["q99"]
        elif mode == "min_max":
            low, high = entry["min"], entry["max"]
        else:
            raise ValueError(f"unknown normalisation mode '{mode}' (use q01_q99 or min_max)")
        return cls(np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64))

    @property
    def _span(self) -> np.ndarray:
        return self.high - self.low

    def normalize(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        span = self._span
        safe = np.where(span > 1e-8, span, 1.0)
        out = 2.0 * (x - self.low) / safe - 1.0
        out = np.where(span > 1e-8, out, 0.0)
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def unnormalize(self, y: np.ndarray) -> np.ndarray:
        y = np.clip(np.asarray(y, dtype=np.float64), -1.0, 1.0)
        return (0.5 * (y + 1.0) * self._span + self.low).astype(np.float64)


# ---- action representation (both backends, training and deployment) -----------------------
#
# Episodes store ABSOLUTE joint targets (action[t] = proprio[t + 1]). A model may instead
# predict the arm joints as DELTAS from the current state, with the gripper kept absolute
# (an open/close command): a target is then "how far to move from here", which a policy
# can learn without inferring the arm's exact pose, and which does not depend on where
# in the joint range the motion happens. Delta statistics depend on the chunk length, so
# they are computed from the training episodes when training starts and stored in the
# checkpoint (`action_space.model_statistics`).

ABSOLUTE = "absolute"
DELTA_ARM_ABSOLUTE_GRIPPER = "delta_arm_absolute_gripper"
REPRESENTATIONS = (ABSOLUTE, DELTA_ARM_ABSOLUTE_GRIPPER)


#: True where the model predicts a delta from the current state (the 7 arm joints).
DELTA_MASK = np.arange(robot.ACTION_DIM) < robot.NUM_ARM_JOINTS


def delta_mask(representation: str) -> np.ndarray:
    """The per-dimension delta mask of an action representation (all False for 'absolute')."""
    if representation == ABSOLUTE:
        return np.zeros_like(DELTA_MASK)
    if representation == DELTA_ARM_ABSOLUTE_GRIPPER:
        return DELTA_MASK.copy()
    raise ValueError(f"unknown action representation '{representation}' (use one of {', '.join(REPRESENTATIONS)})")


def to_delta(actions: np.ndarray, state: np.ndarray, mask: np.ndarray = DELTA_MASK) -> np.ndarray:
    """Absolute targets (..., H, 8) and state (..., 8) -> model-space actions (unnormalised)."""
    actions = np.asarray(actions, np.float64)
    state = np.asarray(state, np.float64)
    return actions - np.where(mask, state, 0.0)[..., None, :]


def to_absolute(actions: np.ndarray, state: np.ndarray, mask: np.ndarray = DELTA_MASK) -> np.ndarray:
    """Inverse of `to_delta`: model-space actions (..., H, 8) + state (..., 8) -> absolute targets."""
    actions = np.asarray(actions, np.float64)
    state = np.asarray(state, np.float64)
    return actions + np.where(mask, state, 0.0)[..., None, :]


def model_action_statistics(episodes, horizon: int, mask: np.ndarray = DELTA_MASK) -> dict:
    """Statistics (mean/std/min/max/q01/q99) of model-space actions over every chunk of
    `horizon` steps of every episode (chunks padded by repeating the episode's last action)."""
    from crane_x7_vla.episode.stats import summarize

    values = []
    for ep in episodes:
        T = len(ep.proprio)
        idx = np.minimum(np.arange(T)[:, None] + np.arange(horizon)[None, :], T - 1)  # (T, H)
        chunks = np.asarray(ep.action, np.float64)[idx]  # (T, H, 8)
        values.append(to_delta(chunks, ep.proprio, mask).reshape(-1, chunks.shape[-1]))
    if not values:
        raise ValueError("cannot compute action statistics of zero episodes")
    return summarize(np.concatenate(values))


# ---- goal points --------------------------------------------------------------------------
#
# A goal point is where the tool centre point will be at the end of the current movement:
# at the next step where the gripper starts to close or open (a grasp, a release), or at
# the episode's last step. It is computed from the recorded joint states by forward
# kinematics, so every episode, recorded on the robot or in simulation, carries it. A model
# that first says where it is going, then how to move, can be taught the first part from
# pictures without demonstrations too (a policy needs the goal's picture-to-place look-up,
# which a few hundred demonstrations are too few to learn).

#: The box (m, arm base frame) goal points are cut into bins over: the arm's reach.
GOAL_BOUNDS = np.array([[-0.2, -0.45, -0.1], [0.6, 0.45, 0.6]])
#: A gripper target moving by more than this (rad) from one step to the next is a grasp or release.
GRIPPER_EVENT = 0.02


def keyframes(action: np.ndarray) -> np.ndarray:
    """Steps where the gripper target starts to move, and the last step (ascending)."""
    g = np.asarray(action, np.float64)[:, -1]
    moving = np.abs(np.diff(g)) > GRIPPER_EVENT  # between step t and t + 1
    starts = np.flatnonzero(moving & ~np.concatenate([[False], moving[:-1]]))
    return np.unique(np.concatenate([starts, [len(g) - 1]])).astype(np.int64)


def _next_keyframe(action: np.ndarray, steps) -> np.ndarray:
    """The keyframe at or after each of `steps`."""
    keys = keyframes(action)
    return keys[np.searchsorted(keys, steps)]


def goal_point(proprio: np.ndarray, action: np.ndarray, t: int) -> np.ndarray:
    """(3,) the tool centre point at step t's next keyframe."""
    return robot.tool_centre_point(np.asarray(proprio, np.float64)[_next_keyframe(action, t)])


def goal_points(proprio: np.ndarray, action: np.ndarray) -> np.ndarray:
    """(T, 3) the tool centre point at each step's next keyframe (its own step included)."""
    proprio = np.asarray(proprio, np.float64)
    if len(proprio) == 0:
        return np.zeros((0, 3))
    return robot.tool_centre_point(proprio[_next_keyframe(action, np.arange(len(proprio)))])
