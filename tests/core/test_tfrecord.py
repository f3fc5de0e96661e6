import numpy as np
import pytest

from crane_x7_vla.episode import tfrecord


def test_example_round_trip_all_types():
    features = {
        "floats": np.array([1.5, -2.25, 3.0], dtype=np.float32),
        "ints": [0, -5, 2**40],
        "bytes": b"\x00\xffjpeg",
        "text": "reach the red cube",
        "many": [b"a", b"bc"],
    }
    out = tfrecord.decode_example(tfrecord.encode_example(features))
    np.testing.assert_array_equal(out["floats"], features["floats"])
    assert out["ints"].tolist() == [0, -5, 2**40]
    assert out["bytes"] == [b"\x00\xffjpeg"]
    assert out["text"] == [b"reach the red cube"]
    assert out["many"] == [b"a", b"bc"]


def test_framing_round_trip(tmp_path):
    path = tmp_path / "x.tfrecord"
    payloads = [b"", b"a" * 10, bytes(range(256)) * 40]
    path.write_bytes(b"".join(tfrecord.frame(p) for p in payloads))
    assert list(tfrecord.iter_records(path)) == payloads


def test_corrupt_byte_names_the_record(tmp_path):
    path = tmp_path / "x.tfrecord"
    records = [tfrecord.frame(bytes([i]) * 100) for i in range(3)]
    data = bytearray(b"".join(records))
    data[len(records[0]) + 12 + 50] ^= 0xFF  # inside record 1's payload
    path.write_bytes(bytes(data))
    with pytest.raises(tfrecord.RecordError, match=r"x\.tfrecord: record 1 is corrupt"):
        list(tfrecord.iter_records(path))
    scan = tfrecord.scan_records(path)
    assert len(scan.records) == 1 and "record 1" in scan.error


def test_truncated_tail_is_reported(tmp_path):
    path = tmp_path / "x.tfrecord"
    data = tfrecord.frame(b"first") + tfrecord.frame(b"second")
    path.write_bytes(data[:-3])
    with pytest.raises(tfrecord.RecordError, match="record 1 is truncated"):
        list(tfrecord.iter_records(path))


def test_masked_crc_matches_known_value():
    # TFRecord's masked CRC of an empty payload, as TensorFlow writes it.
    assert tfrecord.masked_crc(b"") == 0xA282EAD8


def test_garbage_is_not_an_example():
    with pytest.raises(ValueError, match="not a valid tf.train.Example"):
        tfrecord.decode_example(b"\x0a\xff\xff\xff")
