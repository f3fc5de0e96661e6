"""The websocket policy protocol's message format (openpi-compatible) and observation keys.

Messages are msgpack maps. A NumPy array travels as the map
``{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": shape}`` and a
NumPy scalar as ``{b"__npgeneric__": True, b"data": value, b"dtype": dtype.str}``, the
encoding openpi-client's ``msgpack_numpy`` uses, so either side can be openpi's.

Observation keys on the wire (client -> server), mapped to a policy observation
``{"images": {camera: RGB uint8}, "state": (8,), "instruction": str}``:

    ==========================  ==============================================
    wire key                    meaning
    ==========================  ==============================================
    observation/image           the policy's first camera (openpi examples)
    observation/wrist_image     camera "wrist" (openpi examples)
    observation/image_<name>    camera <name> (the key our episodes use)
    observation/state           8 joint positions, JOINT_NAMES order (rad)
    prompt                      the language instruction
    episode_time                seconds since the episode started (optional)
    ==========================  ==============================================

The native form ``{"images": {...}, "state": ..., "instruction": ...}`` is accepted too.
The reply is ``{"actions": (H, 8) float64, "server_timing": {"infer_ms": ..., ...}}``.
"""

from __future__ import annotations

import msgpack
import numpy as np

_ARRAY, _SCALAR = b"__ndarray__", b"__npgeneric__"
_BAD_KINDS = ("O", "V", "c")


class WireError(ValueError):
    """A message that does not follow the protocol; the text goes back to the client."""


def _encode(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _BAD_KINDS:
        raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        obj = np.ascontiguousarray(obj)
        return {_ARRAY: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {_SCALAR: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__}")


def _decode(obj):
    if _ARRAY in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind in _BAD_KINDS:
            raise WireError(f"arrays of dtype {dtype} are not accepted")
        shape = tuple(int(s) for s in obj[b"shape"])
        data = obj[b"data"]
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
            raise WireError(f"array data holds {len(data)} bytes, shape {shape} of {dtype} needs more or fewer")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if _SCALAR in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def packb(obj) -> bytes:
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes):
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    except WireError:
        raise
    except Exception as exc:  # msgpack raises many types for bad input
        raise WireError(f"not a msgpack message ({type(exc).__name__}: {exc or 'cannot be decoded'})") from None


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in ("U", "S"):
        return str(value.item() if value.ndim == 0 else value.reshape(-1)[0])
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def _image(value, key: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        # openpi clients may send CHW images
        if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[0] == 3:
            return np.ascontiguousarray(arr.transpose(1, 2, 0))
        raise WireError(f"'{key}' must be an RGB uint8 image (H, W, 3), got {arr.dtype} {arr.shape}")
    return arr


def camera_keys(cameras) -> dict[str, str]:
    """Camera name -> wire key, as the client sends them."""
    cameras = list(cameras)
    keys = {}
    for i, cam in enumerate(cameras):
        if i == 0:
            keys[cam] = "observation/image"
        elif cam == "wrist":
            keys[cam] = "observation/wrist_image"
        else:
            keys[cam] = f"observation/image_{cam}"
    return keys


def encode_observation(observation: dict, cameras) -> dict:
    """A policy observation as wire keys (client side)."""
    keys = camera_keys(cameras)
    msg = {}
    images = observation.get("images", {})
    for cam, key in keys.items():
        if cam not in images:
            raise ValueError(f"observation lacks camera '{cam}' that the policy needs")
        msg[key] = np.ascontiguousarray(images[cam], dtype=np.uint8)
    msg["observation/state"] = np.asarray(observation["state"], dtype=np.float32)
    msg["prompt"] = str(observation.get("instruction", ""))
    if observation.get("episode_time") is not None:
        msg["episode_time"] = float(observation["episode_time"])
    return msg


def decode_observation(msg, cameras, state_dim: int = 8) -> dict:
    """Wire keys -> a policy observation (server side). Raises WireError naming the bad key."""
    if not isinstance(msg, dict):
        raise WireError(f"an observation must be a map, got {type(msg).__name__}")
    cameras = list(cameras)
    images: dict[str, np.ndarray] = {}
    native = msg.get("images")
    if isinstance(native, dict):
        for cam, img in native.items():
            images[_text(cam)] = _image(img, f"images/{_text(cam)}")
    for key, value in msg.items():
        key = _text(key)
        if key == "observation/image" and cameras:
            images.setdefault(cameras[0], _image(value, key))
        elif key == "observation/wrist_image":
            images.setdefault("wrist", _image(value, key))
        elif key.startswith("observation/image_"):
            images.setdefault(key[len("observation/image_"):], _image(value, key))
    missing = [c for c in cameras if c not in images]
    if missing:
        wanted = ", ".join(camera_keys(cameras)[c] for c in missing)
        raise WireError(f"observation lacks camera(s) {', '.join(missing)} (send {wanted})")
    state = msg.get("observation/state", msg.get("state"))
    if state is None:
        raise WireError("observation lacks 'observation/state' (8 joint positions)")
    try:
        state = np.asarray(state, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise WireError("'observation/state' must be a list or array of numbers") from None
    if state.shape != (state_dim,):
        raise WireError(f"'observation/state' must hold {state_dim} values, got {state.shape[0]}")
    if not np.all(np.isfinite(state)):
        raise WireError("'observation/state' holds NaN or inf")
    instruction = msg.get("prompt", msg.get("instruction", ""))
    obs = {"images": images, "state": state, "instruction": _text(instruction)}
    if msg.get("episode_time") is not None:
        try:
            obs["episode_time"] = float(msg["episode_time"])
        except (TypeError, ValueError):
            raise WireError("'episode_time' must be a number") from None
    return obs
