"""TFRecord framing and the tf.train.Example wire format, without TensorFlow.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little endian)
    uint32 masked crc32c of the 8 length bytes
    byte   data[length]
    uint32 masked crc32c of data

`data` here is a serialised ``tf.train.Example``: a protobuf ``Features`` map from
string keys to a ``Feature`` holding a BytesList, FloatList or Int64List. The codec
below writes exactly what TensorFlow writes (packed floats/ints) and reads both
packed and unpacked encodings, so files pass through TF and our reader alike.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

try:  # google-crc32c and crc32c are both C implementations of Castagnoli CRC
    from crc32c import crc32c as _crc32c
except ImportError:  # pragma: no cover - exercised only where crc32c is absent
    import google_crc32c

    def _crc32c(data: bytes) -> int:
        return google_crc32c.value(bytes(data))


_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")


class RecordError(ValueError):
    """A TFRecord file is damaged; the message names the file and the record."""


def masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One framed record, ready to append to a .tfrecord file."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + _FOOTER.pack(masked_crc(data))


@dataclass
class RecordScan:
    """What `scan_records` found: complete records and where a damaged tail starts."""

    records: list[bytes]
    valid_bytes: int
    error: str | None


def iter_records(path: str | os.PathLike, *, check_crc: bool = True) -> Iterator[bytes]:
    """Yield the payload of each record; raise RecordError naming file and record index."""
    with open(path, "rb") as f:
        yield from _iter_stream(f, str(path), check_crc)


def _iter_stream(f: BinaryIO, name: str, check_crc: bool) -> Iterator[bytes]:
    index = 0
    while True:
        header = f.read(_HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size:
            raise RecordError(f"{name}: record {index} is truncated (header of {len(header)} bytes)")
        length, length_crc = _HEADER.unpack(header)
        if check_crc and masked_crc(header[:8]) != length_crc:
            raise RecordError(f"{name}: record {index} has a corrupt length field (CRC mismatch)")
        data = f.read(length)
        footer = f.read(_FOOTER.size)
        if len(data) < length or len(footer) < _FOOTER.size:
            raise RecordError(f"{name}: record {index} is truncated ({len(data)} of {length} bytes)")
        if check_crc and masked_crc(data) != _FOOTER.unpack(footer)[0]:
            raise RecordError(f"{name}: record {index} is corrupt (data CRC mismatch)")
        yield data
        index += 1


def scan_records(path: str | os.PathLike) -> RecordScan:
    """Read every complete, CRC-valid record; stop at the first damaged one.

    Used to recover an episode whose writer died: everything before the damage is kept.
    """
    records: list[bytes] = []
    valid = 0
    try:
        with open(path, "rb") as f:
            for data in _iter_stream(f, str(path), True):
                records.append(data)
                valid += _HEADER.size + len(data) + _FOOTER.size
    except RecordError as exc:
        return RecordScan(records, valid, str(exc))
    return RecordScan(records, valid, None)


# ---------------------------------------------------------------- protobuf wire format
# Example   { Features features = 1; }
# Features  { map<string, Feature> feature = 1; }   (map entry: key = 1, value = 2)
# Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
# *List     { repeated <type> value = 1; }


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _encode_feature(value) -> bytes:
    if isinstance(value, (bytes, bytearray, str)):
        value = [value]
    if isinstance(value, np.ndarray):
        arr = value.ravel()
        if arr.dtype.kind == "f":
            return _field(2, _field(1, arr.astype("<f4").tobytes()))
        if arr.dtype.kind in "iub":
            return _field(3, _field(1, b"".join(_varint(int(v)) for v in arr)))
        raise TypeError(f"cannot store an array of dtype {arr.dtype} in a tf.train.Feature")
    value = list(value)
    if not value:
        return _field(2, b"")  # empty float list, as tf.train.Feature() would store
    first = value[0]
    if isinstance(first, (bytes, bytearray, str)):
        items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value]
        return _field(1, b"".join(_field(1, v) for v in items))
    if isinstance(first, (float, np.floating)):
        return _field(2, _field(1, np.asarray(value, dtype="<f4").tobytes()))
    if isinstance(first, (int, np.integer, bool, np.bool_)):
        return _field(3, _field(1, b"".join(_varint(int(v)) for v in value)))
    raise TypeError(f"cannot store {type(first).__name__} values in a tf.train.Feature")


def encode_example(features: dict) -> bytes:
    """Serialise a dict of key -> bytes/str/list/ndarray as a tf.train.Example.

    Floats become a FloatList (float32), ints an Int64List, bytes/str a BytesList.
    Keys are written in sorted order, so the same step always gives the same bytes.
    """
    entries = []
    for key in sorted(features):
        entry = _field(1, key.encode("utf-8")) + _field(2, _encode_feature(features[key]))
        entries.append(_field(1, entry))
    return _field(1, b"".join(entries))


def _read_varint(buf, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _iter_fields(buf, start: int, end: int):
    """Yield (field_number, wire_type, value_start, value_end_or_int)."""
    pos = start
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            length, pos = _read_varint(buf, pos)
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value, None
        elif wire == 5:
            yield number, wire, pos, pos + 4
            pos += 4
        elif wire == 1:
            yield number, wire, pos, pos + 8
            pos += 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos != end:
        raise ValueError("protobuf field runs past its message")


def _decode_feature(buf, start: int, end: int):
    for number, _, s, e in _iter_fields(buf, start, end):
        if number == 1:  # BytesList
            return [bytes(buf[vs:ve]) for n, w, vs, ve in _iter_fields(buf, s, e) if n == 1]
        if number == 2:  # FloatList, packed (wire 2) or not (wire 5)
            parts = []
            for n, w, vs, ve in _iter_fields(buf, s, e):
                if n == 1:
                    parts.append(np.frombuffer(buf[vs:ve], dtype="<f4"))
            return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        if number == 3:  # Int64List, packed or not
            values = []
            for n, w, vs, ve in _iter_fields(buf, s, e):
                if n != 1:
                    continue
                if w == 0:
                    values.append(vs)
                else:
                    p = vs
                    while p < ve:
                        v, p = _read_varint(buf, p)
                        values.append(v)
            arr = np.array(values, dtype=np.uint64).view(np.int64)
            return arr
    return np.zeros(0, np.float32)


def decode_example(data: bytes) -> dict:
    """Parse a serialised tf.train.Example into key -> list[bytes] | ndarray."""
    buf = memoryview(data)
    out: dict = {}
    try:
        for number, _, s, e in _iter_fields(buf, 0, len(buf)):
            if number != 1:
                continue
            for n, _, es, ee in _iter_fields(buf, s, e):
                if n != 1:
                    continue
                key = None
                value = None
                for fn, _, fs, fe in _iter_fields(buf, es, ee):
                    if fn == 1:
                        key = bytes(buf[fs:fe]).decode("utf-8")
                    elif fn == 2:
                        value = _decode_feature(buf, fs, fe)
                if key is not None:
                    out[key] = value if value is not None else np.zeros(0, np.float32)
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a valid tf.train.Example ({exc})") from exc
    return out
