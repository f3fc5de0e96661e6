import json

import numpy as np
import pytest

from crane_x7_vla.episode.reader import DatasetError
from crane_x7_vla.preprocess import ImageSpec
from crane_x7_vla.training import data
from crane_x7_vla.training.data import BatchStream, DataPosition

from .conftest import write_episodes


def test_load_splits_by_episode(dataset_dir):
    td = data.load_training_data(dataset_dir, val_ratio=0.34, seed=1)
    assert len(td.train) + len(td.val) == 6 and len(td.val) == 2
    assert not {e.path for e in td.train} & {e.path for e in td.val}
    assert td.cameras == ["primary"]
    assert td.fps == 10.0 and td.default_instruction == "reach the green cube"
    assert len(td.fingerprint) == 16


def test_batches_shape_and_chunk_padding(dataset_dir):
    td = data.load_training_data(dataset_dir, val_ratio=0.0)
    spec = ImageSpec(32, 32)
    with BatchStream(td.train, cameras=td.cameras, spec=spec, horizon=4, batch_size=5, seed=0) as s:
        pos, b = next(s)
    assert pos == DataPosition(0, 0)
    assert b["images"]["primary"].shape == (5, 32, 32, 3) and b["images"]["primary"].dtype == np.uint8
    assert b["state"].shape == (5, 8) and b["actions"].shape == (5, 4, 8)
    ep = td.train[0]
    last = data.make_sample(ep, len(ep) - 1, td.cameras, spec, 4, train=False)
    assert np.all(last["actions"] == ep.action[-1])  # padded by repeating the last target


def test_order_is_deterministic_and_resumable(dataset_dir):
    td = data.load_training_data(dataset_dir, val_ratio=0.0)
    kw = dict(cameras=td.cameras, spec=ImageSpec(32, 32), horizon=1, batch_size=7, seed=3)
    with BatchStream(td.train, **kw) as s:
        straight = [next(s) for _ in range(40)]  # crosses epoch boundaries (120 samples / 7)
    assert straight[17][0].epoch == 1 and straight[17][0].batch == 0
    with BatchStream(td.train, start=straight[25][0], **kw) as s:
        resumed = [next(s) for _ in range(15)]
    for (p1, b1), (p2, b2) in zip(straight[25:], resumed):
        assert p1 == p2
        np.testing.assert_array_equal(b1["images"]["primary"], b2["images"]["primary"])
        np.testing.assert_array_equal(b1["actions"], b2["actions"])
    with BatchStream(td.train, **dict(kw, seed=4)) as s:
        other = next(s)[1]
    assert not np.array_equal(other["actions"], straight[0][1]["actions"])


def test_ranks_share_a_global_batch(dataset_dir):
    td = data.load_training_data(dataset_dir, val_ratio=0.0)
    kw = dict(cameras=td.cameras, spec=ImageSpec(32, 32), horizon=1, seed=0)
    with BatchStream(td.train, batch_size=8, **kw) as s:
        whole = next(s)[1]
    parts = []
    for rank in (0, 1):
        with BatchStream(td.train, batch_size=4, rank=rank, world_size=2, **kw) as s:
            parts.append(next(s)[1])
    np.testing.assert_array_equal(np.concatenate([p["actions"] for p in parts]), whole["actions"])
    np.testing.assert_array_equal(np.concatenate([p["images"]["primary"] for p in parts]), whole["images"]["primary"])


def test_no_episodes_names_the_directory(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path.resolve())):
        data.load_training_data(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        data.load_training_data(tmp_path / "nope")


def test_missing_and_stale_statistics(dataset_copy):
    (dataset_copy / "dataset_statistics.json").unlink()
    with pytest.raises(DatasetError, match="crane-x7-vla dataset stats"):
        data.load_training_data(dataset_copy)
    write_episodes(dataset_copy, episodes=1, seed=9)  # writes stats for 7 episodes
    stats_path = dataset_copy / "dataset_statistics.json"
    stats = json.loads(stats_path.read_text())
    write_episodes(dataset_copy, episodes=1, seed=10)  # one more episode: stats now stale
    stats_path.write_text(json.dumps(stats))
    with pytest.raises(DatasetError, match="crane-x7-vla dataset stats"):
        data.load_training_data(dataset_copy)


def test_corrupt_record_names_file_and_record(dataset_copy):
    target = sorted(dataset_copy.glob("episode_*"))[2] / "episode_data.tfrecord"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"episode_data\.tfrecord.*record \d+") as err:
        data.load_training_data(dataset_copy)
    assert str(target.parent.name) in str(err.value)


def test_missing_camera_is_named(dataset_dir):
    with pytest.raises(DatasetError, match="wrist"):
        data.load_training_data(dataset_dir, cameras=["wrist"])
