"""JPEG in RGB channel order, everywhere.

The earlier stack fed RGB arrays to an encoder that assumed BGR, swapping red and
blue in every recording. Every JPEG this project writes or reads goes through these
two functions, which take and return RGB.
"""

from __future__ import annotations

import numpy as np
import simplejpeg


def encode(rgb: np.ndarray, quality: int = 90) -> bytes:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {rgb.shape}")
    return simplejpeg.encode_jpeg(rgb, quality=quality, colorspace="RGB", colorsubsampling="420")


def decode(data: bytes, *, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode to RGB uint8 (H, W, 3).

    ``min_size=(w, h)`` lets the decoder scale down by powers of two (in the DCT
    domain, much faster) while keeping at least that many pixels per side.
    """
    if min_size is None:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    return simplejpeg.decode_jpeg(
        data, colorspace="RGB", min_width=int(min_size[0]), min_height=int(min_size[1])
    )


def size_of(data: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG header, without decoding."""
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    return width, height
