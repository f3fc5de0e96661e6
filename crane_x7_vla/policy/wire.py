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
    request_id                  an integer the reply repeats (optional)
    ==========================  ==============================================

The native form ``{"images": {...}, "state": ..., "instruction": ...}`` is accepted too.
The reply is ``{"actions": (H, 8) float64, "server_timing": {"infer_ms": ..., ...}}`` plus
the request's ``request_id`` and ``episode_time`` when it had them, so a client can tell
which observation a reply answers.

Decoding never builds more than the message holds: arrays and scalars are accepted only
as booleans, integers, floats or text (no void, object or complex dtypes), an array's
``data`` must hold exactly shape x item size bytes, a scalar's ``data`` must be a value of
its dtype, and maps and lists are limited to a few dozen entries (an observation has about
ten keys) and to about a thousand in the whole message, however deeply nested.
``decode_observation`` refuses prompts longer than its ``max_prompt_chars``.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np

_ARRAY, _SCALAR = b"__ndarray__", b"__npgeneric__"
_BAD_KINDS = ("O", "V", "c")  # never sent
_KINDS = "biufUS"  # accepted from clients: bool, int, uint, float, str, bytes
MAX_DTYPE_CHARS = 16  # a plain type string is short ("<f4", "|u1", "<U1000000")
MAX_DIMS = 8
MAX_MAP_LEN = 64  # keys in one map (an observation has about ten)
MAX_ARRAY_LEN = 64  # items in one list (a joint state has 8, a shape 3)
MAX_ITEMS = 1024  # list items and map entries in one message, all nesting levels together
MAX_REQUEST_ID = 2**63 - 1
CLIP_CHARS = 200  # longest piece of client text repeated in an error or a log line


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


def clip(text, limit: int = CLIP_CHARS) -> str:
    """Client-supplied text made safe to repeat in a reply or a log line: at most ``limit``
    characters, control characters escaped, and how many characters were left out."""
    text = str(text)
    extra = max(0, len(text) - limit)
    shown = text[:limit]
    if not shown.isprintable():
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)[:limit]
    return f"{shown}... ({extra} more characters)" if extra else shown


def _dtype(obj, what: str) -> np.dtype:
    spec = obj.get(b"dtype")
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", errors="replace")
    if not isinstance(spec, str) or not 0 < len(spec) <= MAX_DTYPE_CHARS:
        raise WireError(
            f"{what}: 'dtype' must be a NumPy type string such as '<f4' or '|u1', got {clip(repr(spec), 40)}"
        )
    try:
        dtype = np.dtype(spec)
    except (TypeError, ValueError):
        raise WireError(f"{what}: dtype {clip(repr(spec), 40)} is not a NumPy type") from None
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise WireError(f"{what}: dtype {dtype.str} is not accepted (send booleans, integers, floats or text)")
    return dtype


def _decode(obj):
    if _ARRAY in obj:
        dtype = _dtype(obj, "array")
        shape, data = obj.get(b"shape"), obj.get(b"data")
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) > MAX_DIMS
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise WireError(
                f"array: 'shape' must be a list of at most {MAX_DIMS} sizes >= 0, got {clip(repr(shape), 80)}"
            )
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise WireError(f"array: 'data' must be raw bytes, got {type(data).__name__}")
        shape = tuple(shape)
        needed = math.prod(shape) * dtype.itemsize  # Python integers: no overflow
        if needed != len(data):
            raise WireError(f"array data holds {len(data)} bytes, shape {shape} of {dtype.str} needs {needed}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if _SCALAR in obj:
        dtype = _dtype(obj, "scalar")
        data = obj.get(b"data")
        fits = {"U": (str,), "S": (bytes,), "b": (bool,)}.get(dtype.kind, (bool, int, float))
        if not isinstance(data, fits):
            raise WireError(
                f"scalar of dtype {dtype.str}: 'data' must be a {fits[0].__name__}, got {type(data).__name__}"
            )
        try:
            return dtype.type(data)
        except (OverflowError, ValueError):
            raise WireError(f"scalar: {clip(repr(data), 40)} does not fit dtype {dtype.str}") from None
    return obj


def packb(obj) -> bytes:
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes, *, limited: bool = False):
    """A decoded message. ``limited`` (the server, for clients' messages) also applies the
    map and list limits in the module docstring; metadata replies are larger."""
    hooks: dict = {"object_hook": _decode}
    if limited:
        left = [MAX_ITEMS]

        def count(container):
            left[0] -= len(container)
            if left[0] < 0:
                raise WireError(
                    f"the message holds more than {MAX_ITEMS} list items and map entries in all "
                    f"(an observation needs a few dozen)"
                )
            return container

        hooks = {
            "object_hook": lambda obj: _decode(count(obj)),
            "list_hook": count,
            "max_map_len": MAX_MAP_LEN,
            "max_array_len": MAX_ARRAY_LEN,
        }
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, **hooks)
    except WireError:
        raise
    except Exception as exc:  # msgpack raises many types for bad input
        detail = clip(exc) if str(exc) else "cannot be decoded"
        limits = f"; at most {MAX_MAP_LEN} keys per map and {MAX_ARRAY_LEN} items per list" if limited else ""
        raise WireError(
            f"not a msgpack message{' within the limits' if limited else ''} ({type(exc).__name__}: {detail}{limits})"
        ) from None


def _text(value) -> str:
    """Text sent as a string, bytes, a NumPy string scalar or a 1-element string array; keys
    may also be numbers."""
    try:
        if isinstance(value, np.ndarray) and value.dtype.kind in ("U", "S") and value.size == 1:
            value = value.reshape(-1)[0]
        if isinstance(value, np.generic):
            value = value.item()
    except Exception:  # NumPy raises SystemError for code points above U+10FFFF
        raise WireError("text that is not valid Unicode") from None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (str, int, float)):
        return str(value)
    raise WireError(f"must be text, got {type(value).__name__}")


def _key(value) -> str:
    try:
        return _text(value)
    except WireError as exc:
        raise WireError(f"a key of the observation: {exc}") from None


def _image(value, key: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        # openpi clients may send CHW images
        if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[0] == 3:
            return np.ascontiguousarray(arr.transpose(1, 2, 0))
        raise WireError(f"'{clip(key, 80)}' must be an RGB uint8 image (H, W, 3), got {arr.dtype} {arr.shape}")
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


def decode_observation(msg, cameras, state_dim: int = 8, max_prompt_chars: int | None = None) -> dict:
    """Wire keys -> a policy observation (server side). Raises WireError naming the bad key.

    Pictures of cameras the policy does not use are left out; a prompt longer than
    ``max_prompt_chars`` characters is refused (None: no limit)."""
    if not isinstance(msg, dict):
        raise WireError(f"an observation must be a map, got {type(msg).__name__}")
    cameras = list(cameras)
    instruction = msg.get("prompt", msg.get("instruction", ""))
    try:
        instruction = "" if instruction is None else _text(instruction)
    except WireError as exc:
        raise WireError(f"'prompt': {exc}") from None
    if max_prompt_chars is not None and len(instruction) > max_prompt_chars:
        raise WireError(
            f"'prompt' holds {len(instruction)} characters; this server accepts at most "
            f"{max_prompt_chars} (its max_prompt_chars, `crane-x7-vla serve --max-prompt-chars`)"
        )
    images: dict[str, np.ndarray] = {}
    native = msg.get("images")
    if isinstance(native, dict):
        for cam, img in native.items():
            cam = _key(cam)
            if cam in cameras:
                images[cam] = _image(img, f"images/{cam}")
    for key, value in msg.items():
        key = _key(key)
        if key == "observation/image" and cameras:
            images.setdefault(cameras[0], _image(value, key))
        elif key == "observation/wrist_image" and "wrist" in cameras:
            images.setdefault("wrist", _image(value, key))
        elif key.startswith("observation/image_") and key[len("observation/image_") :] in cameras:
            images.setdefault(key[len("observation/image_") :], _image(value, key))
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
    obs = {"images": images, "state": state, "instruction": instruction}
    if msg.get("episode_time") is not None:
        try:
            obs["episode_time"] = float(msg["episode_time"])
        except (TypeError, ValueError):
            raise WireError("'episode_time' must be a number") from None
        if not math.isfinite(obs["episode_time"]):
            raise WireError("'episode_time' must be a finite number of seconds")
    return obs


def request_id(msg):
    """The message's ``request_id`` (an integer 0..2**63-1), or None when it has none."""
    rid = msg.get("request_id") if isinstance(msg, dict) else None
    if rid is None:
        return None
    if isinstance(rid, np.integer):
        rid = int(rid)
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid <= MAX_REQUEST_ID:
        raise WireError(f"'request_id' must be an integer from 0 to {MAX_REQUEST_ID}, got {clip(repr(rid), 40)}")
    return rid
