"""The earlier stack's episodes (no metadata, red/blue swapped) export after import-legacy,
and directly when the recording rate is given."""

import json

import numpy as np
import pytest
import simplejpeg

from crane_x7_vla import robot
from crane_x7_vla.episode import tfrecord
from crane_x7_vla.episode.legacy import import_legacy
from crane_x7_vla.episode.lerobot import export_lerobot
from crane_x7_vla.episode.reader import DatasetError
from crane_x7_vla.episode.rlds import export_rlds


def write_legacy_episode(root, steps=5):
    ep = root / "episode_0000_20250101_120000"
    ep.mkdir(parents=True)
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :, 0] = 230  # red, handed to an encoder that assumed BGR (the earlier stack's defect)
    states = [robot.home_state() + 0.02 * t for t in range(steps)]
    with open(ep / "episode_data.tfrecord", "wb") as f:
        for t, q in enumerate(states):
            f.write(tfrecord.frame(tfrecord.encode_example({
                "observation/proprio": np.asarray(q, np.float32),
                "observation/image_primary": simplejpeg.encode_jpeg(img, quality=90, colorspace="BGR"),
                "observation/timestep": [t],
                "action": np.asarray(states[min(t + 1, steps - 1)], np.float32),
                "task/language_instruction": b"pick up the red cube",
                "dataset_name": b"crane_x7",
            })))


def test_legacy_dataset_exports_to_both_formats(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    write_legacy_episode(tmp_path / "legacy")
    with pytest.raises(DatasetError, match="--fps"):
        export_lerobot(tmp_path / "legacy", tmp_path / "x", progress=False)
    direct = export_rlds(tmp_path / "legacy", tmp_path / "direct", fps=10, progress=False)
    assert direct["steps"] == 5

    import_legacy(tmp_path / "legacy", tmp_path / "ours", swap_rb=True, fps=10, progress=False)
    export_lerobot(tmp_path / "ours", tmp_path / "lr", progress=False)
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert (info["total_frames"], info["fps"]) == (5, 10)
    export_rlds(tmp_path / "ours", tmp_path / "rlds", progress=False)
    (episode,) = tfds.as_numpy(tfds.builder("crane_x7", data_dir=str(tmp_path / "rlds")).as_dataset(split="train"))
    steps = list(episode["steps"])
    assert len(steps) == 5
    red = steps[0]["observation"]["image_primary"][16, 16].astype(int)
    assert red[0] > 200 and red[2] < 40  # the swap was fixed on import and survives the export
