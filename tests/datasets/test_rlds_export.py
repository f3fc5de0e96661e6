"""RLDS export read back through TFDS's own loader (what OpenVLA/Octo pipelines call)."""

import json

import numpy as np
import pytest

from crane_x7_vla.episode import EpisodeWriter, list_episodes, load_episode, schema
from crane_x7_vla.episode.reader import DatasetError
from crane_x7_vla.episode.rlds import dataset_dir, export_rlds, load_rlds
from crane_x7_vla.episode.stats import load_arrays, compute_statistics

from .conftest import COLOURS, frame

tfds = pytest.importorskip("tensorflow_datasets")


def test_tfds_reads_the_export(episodes_dir, tmp_path):
    out = tmp_path / "rlds"
    summary = export_rlds(episodes_dir, out, progress=False)
    assert summary["episodes"] == 3 and summary["steps"] == 24
    for name in ("dataset_info.json", "features.json", schema.STATS_FILE):
        assert (out / "crane_x7" / "1.0.0" / name).is_file(), name
    assert summary["dataset"] == str(dataset_dir(out))

    builder = tfds.builder_from_directory(str(dataset_dir(out)))
    assert builder.info.splits["train"].num_examples == 3
    step_features = builder.info.features["steps"].feature
    assert set(step_features["observation"].keys()) == {"image_primary", "image_wrist", "state"}
    assert set(step_features.keys()) >= {
        "observation", "action", "language_instruction", "is_first", "is_last", "is_terminal", "reward", "discount"
    }

    sources = [load_episode(ref.path) for ref in list_episodes(episodes_dir)]
    read = list(tfds.as_numpy(builder.as_dataset(split="train")))
    assert len(read) == 3
    by_path = {ep["episode_metadata"]["file_path"].decode(): ep for ep in read}
    for e, src in enumerate(sources):
        ep = by_path[str(src.path.resolve())]
        steps = list(ep["steps"])
        assert len(steps) == len(src)
        np.testing.assert_array_equal(np.stack([s["observation"]["state"] for s in steps]), src.proprio)
        np.testing.assert_array_equal(np.stack([s["action"] for s in steps]), src.action)
        assert [bool(s["is_first"]) for s in steps] == [True] + [False] * (len(src) - 1)
        assert [bool(s["is_last"]) for s in steps] == [False] * (len(src) - 1) + [True]
        assert all(s["language_instruction"].decode() == src.instruction for s in steps)
        assert all(float(s["discount"]) == 1.0 for s in steps)
        success = src.meta.success
        assert int(ep["episode_metadata"]["success"]) == {True: 1, False: 0, None: -1}[success]
        assert float(steps[-1]["reward"]) == (1.0 if success else 0.0)
        assert sum(float(s["reward"]) for s in steps) == (1.0 if success else 0.0)
        assert bool(steps[-1]["is_terminal"]) == (success is not False)
        assert not any(bool(s["is_terminal"]) for s in steps[:-1])
        for t, s in enumerate(steps):
            img = s["observation"]["image_primary"]
            assert img.shape == (48, 64, 3) and img.dtype == np.uint8
            assert s["observation"]["image_wrist"].shape == (32, 32, 3)
            # TF's JPEG decoder gives back the recorded RGB picture (colour block on the left).
            assert np.abs(img.astype(int) - frame(t, (64, 48), COLOURS[e]).astype(int)).mean() < 4
            assert np.abs(img[24, 10].astype(int) - np.array(COLOURS[e])).max() < 12

    # top-level action/proprio, as OpenVLA's make_dataset_from_rlds reads a statistics file
    stats = json.loads((dataset_dir(out) / schema.STATS_FILE).read_text())
    expected = compute_statistics(load_arrays(episodes_dir))
    assert stats["fingerprint"] == expected["fingerprint"]
    np.testing.assert_allclose(stats["action"]["q99"], expected["action"]["q99"])
    assert stats["num_transitions"] == 24 and stats["num_trajectories"] == 3
    assert set(stats["proprio"]) >= {"mean", "std", "min", "max", "q01", "q99"}


def test_refuses_to_overwrite_or_write_into_the_source(episodes_dir, tmp_path):
    out = tmp_path / "rlds"
    export_rlds(episodes_dir, out, progress=False)
    with pytest.raises(DatasetError, match="--overwrite"):
        export_rlds(episodes_dir, out, progress=False)
    export_rlds(episodes_dir, out, overwrite=True, progress=False)
    with pytest.raises(DatasetError, match="source episodes"):
        export_rlds(episodes_dir, episodes_dir, overwrite=True, progress=False)
    with pytest.raises(DatasetError, match="source episodes"):
        export_rlds(episodes_dir / list_episodes(episodes_dir)[0].name, episodes_dir, overwrite=True, progress=False)
    assert len(list_episodes(episodes_dir)) == 3


def test_mixed_camera_layouts_are_named(episodes_dir, tmp_path):
    writer = EpisodeWriter(episodes_dir, fps=10, instruction="other", cameras={"primary": (32, 32)})
    writer.add_step(np.zeros(8), {"primary": frame(0, (32, 32))})
    odd = writer.close()
    with pytest.raises(DatasetError, match=odd.name):
        export_rlds(episodes_dir, tmp_path / "rlds", progress=False)


def test_cli_export_rlds_flags_reach_the_writer(episodes_dir, tmp_path, capsys):
    from crane_x7_vla.cli.dataset import main_parser

    parser = main_parser()
    args = parser.parse_args(["export", str(episodes_dir), "--format", "rlds", "--out", str(tmp_path / "r"),
                              "--episodes-per-shard", "1", "--no-progress"])
    assert args.func(args) == 0
    assert "3 episode(s), 24 steps" in capsys.readouterr().out
    shards = sorted(p.name for p in dataset_dir(tmp_path / "r").iterdir() if ".tfrecord-" in p.name)
    assert len(shards) == 3
    builder = tfds.builder_from_directory(str(dataset_dir(tmp_path / "r")))
    assert builder.info.splits["train"].shard_lengths == [1, 1, 1]
    assert len(list(builder.as_dataset(split="train"))) == 3


def test_found_by_name_under_a_data_dir(episodes_dir, tmp_path):
    """OpenVLA's loader: tfds.builder(<name>, data_dir=<the --out folder>)."""
    export_rlds(episodes_dir, tmp_path / "data", progress=False)
    assert len(list(load_rlds(tmp_path / "data"))) == 3
    builder = tfds.builder("crane_x7", data_dir=str(tmp_path / "data"))
    assert builder.info.splits["train"].num_examples == 3
    first = next(iter(tfds.as_numpy(builder.as_dataset(split="train"))))
    steps = list(first["steps"])
    assert len(steps) == 8 and steps[0]["observation"]["state"].shape == (8,)
