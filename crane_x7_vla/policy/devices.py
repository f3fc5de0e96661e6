"""The device names a policy may be loaded on, checked before anything is loaded.

Every backend (baseline, openvla, openpi) takes the same names: ``auto`` (the backend's
choice), ``cpu``, ``cuda`` or ``cuda:N``. Whether that device exists is the backend's to say
when it loads; the name itself is checked here, for every checkpoint kind alike, without
importing torch or jax.
"""

from __future__ import annotations

import argparse
import re

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
ACCEPTED = "auto, cpu, cuda or cuda:N"


class DeviceError(ValueError):
    """A device name no backend accepts; the message names the flag or parameter."""


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


def check_device(value: str | None, *, parameter: str) -> str | None:
    """`value` when it is a device name (None or "" mean the backend's choice), else DeviceError
    naming `parameter` and the accepted names."""
    if value is None or value == "":
        return value
    if not isinstance(value, str) or not DEVICE_RE.match(value):
        raise DeviceError(f"{parameter} must be {ACCEPTED} (got {_shown(str(value))})")
    return value


def device_arg(value: str) -> str:
    """argparse type of a --device flag."""
    try:
        return check_device(value, parameter="--device")
    except DeviceError:
        raise argparse.ArgumentTypeError(f"must be {ACCEPTED} (got {_shown(value)})") from None
