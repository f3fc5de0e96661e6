"""Training the tiny preset end to end: loss falls, exact resume, checkpoint-final -> policy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.checkpoint_contract import CheckpointError
from crane_x7_vla.training.config import ConfigError
from crane_x7_vla.training import metrics as mn
from crane_x7_vla.training.metrics import read_metrics
from crane_x7_vla.episode.reader import DatasetError

from .conftest import make_episodes, tiny_train_config

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def full_run(episodes_dir, tmp_path_factory):
    from crane_x7_vla.backends.openpi.trainer import train

    out = tmp_path_factory.mktemp("run_full")
    final = train(tiny_train_config(episodes_dir, out, max_steps=12, save_steps=6, merge_lora=True))
    return out, final


def _losses(out):
    return {r["step"]: r["train/loss"] for r in read_metrics(out) if "train/loss" in r}


def test_loss_falls_and_checkpoints(full_run):
    out, final = full_run
    losses = _losses(out)
    assert sorted(losses) == list(range(1, 13))
    assert np.mean([losses[s] for s in (10, 11, 12)]) < 0.7 * np.mean([losses[s] for s in (1, 2, 3)])
    assert final == out / "checkpoint-final"
    for d in (out / "checkpoint-6", final):
        assert {"params", "train_state", "tokenizer.json", "policy_config.json", "trainer_state.json"} <= set(
            os.listdir(d)
        )
    cfg = json.loads((final / "policy_config.json").read_text())
    assert cfg["backend"] == "openpi" and cfg["step"] == 12
    assert cfg["action_space"]["representation"] == "delta_arm_absolute_gripper"
    assert cfg["action_space"]["horizon"] == 4 and cfg["control_rate_hz"] == 10.0
    assert cfg["openpi"]["model_config"]["lora_rank"] == 4
    # the tiny preset keeps this backend's own conventions
    assert cfg["openpi"]["conventions"]["prompt"] == "lowercase" and cfg["image_spec"]["resize"] == "crop"
    assert cfg["action_space"]["normalization"] == "quantile" and cfg["openpi"]["tokenizer_file"] == "tokenizer.json"
    evals = [r for r in read_metrics(out) if "val/l1" in r]
    assert evals and np.isfinite(evals[-1]["val/l1"]) and np.isfinite(evals[-1]["train_eval/loss"])
    assert (out / "tensorboard").is_dir()
    # the names both backends log (tests/training/test_openvla_train.py checks the same)
    shared = {*mn.TRAINING_METRICS, *(mn.eval_metric(s, m) for s in mn.EVAL_SPLITS for m in mn.EVAL_METRICS)}
    assert shared <= {k for r in read_metrics(out) for k in r}


def test_resume_continues_exactly(full_run, episodes_dir, tmp_path):
    from crane_x7_vla.backends.openpi.trainer import train

    out, _ = full_run
    resumed = tmp_path / "resumed"
    train(
        tiny_train_config(
            episodes_dir,
            resumed,
            max_steps=12,
            save_steps=6,
            merge_lora=True,
            resume_from_checkpoint=str(out / "checkpoint-6"),
        )
    )
    a, b = _losses(out), _losses(resumed)
    assert sorted(b) == list(range(7, 13))
    np.testing.assert_allclose([b[s] for s in b], [a[s] for s in b], rtol=1e-6)


def test_policy_from_checkpoint_final(full_run):
    from crane_x7_vla.policy.loader import load_policy, warm_up

    _, final = full_run
    policy = load_policy(final, device="cpu")
    state = np.r_[robot.HOME_POSE, robot.GRIPPER_OPEN]
    obs = {
        "images": {"primary": np.full((48, 64, 3), 90, np.uint8)},
        "state": state,
        "instruction": "pick up the red cube",
    }
    actions = policy.predict(obs)
    assert actions.shape == (4, 8) and actions.dtype == np.float64
    assert np.all(np.isfinite(actions)) and robot.within_limits(actions).all()
    # absolute targets near the current pose (the model predicts small arm deltas)
    assert np.abs(actions[:, :7] - state[:7]).max() < 0.6
    assert policy.metadata["action_horizon"] == 4 and policy.metadata["cameras"] == ["primary"]
    with pytest.raises(ValueError, match="primary"):
        policy.predict({"images": {}, "state": state, "instruction": "x"})
    # the warm-up call (at load, in the node and the server) compiles the model and leaves no trace
    warmed = load_policy(final, device="cpu")
    assert warm_up(warmed) > 0
    np.testing.assert_array_equal(warmed.predict(obs), load_policy(final, device="cpu").predict(obs))
    # this backend's own conventions are not exported in openpi's layout (openpi would feed it other inputs)
    from crane_x7_vla.backends.openpi.export import ExportError, export

    with pytest.raises(ExportError, match="--conventions openpi"):
        export(final, final.parent / "exported")
    # LoRA folded into the weights: the merged export predicts the same chunk
    merged = load_policy(final / "merged", device="cpu")
    np.testing.assert_allclose(merged.predict(obs), load_policy(final, device="cpu").predict(obs), atol=1e-4)


def test_bad_input_is_refused_before_building(episodes_dir, tmp_path):
    from crane_x7_vla.backends.openpi.trainer import train

    with pytest.raises(DatasetError, match="does not exist"):
        train(tiny_train_config(tmp_path / "nowhere", tmp_path / "o1"))
    with pytest.raises(ConfigError, match="patch size"):
        train(tiny_train_config(episodes_dir, tmp_path / "o2", image_size="40x40"))
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['ema'\]"):
        train(tiny_train_config(episodes_dir, tmp_path / "o3", ema=0.9))
    with pytest.raises(ConfigError, match="--model 'gpt'"):
        train(tiny_train_config(episodes_dir, tmp_path / "o4", model="gpt"))
    other = tmp_path / "openvla_ckpt"
    other.mkdir()
    (other / "policy_config.json").write_text(
        json.dumps(
            {"backend": "openvla", "image_spec": {}, "joint_names": [], "action_space": {}, "dataset_statistics": {}}
        )
    )
    with pytest.raises(CheckpointError, match="openvla"):
        train(tiny_train_config(episodes_dir, tmp_path / "o5", resume_from_checkpoint=str(other)))
    stale = make_episodes(tmp_path / "stale", n_episodes=2, steps=6)
    (stale / "dataset_statistics.json").write_text(
        (stale / "dataset_statistics.json").read_text().replace('"fingerprint": "', '"fingerprint": "x')
    )
    with pytest.raises(DatasetError, match="dataset stats"):
        train(tiny_train_config(stale, tmp_path / "o6"))


def test_data_parallel_two_devices(episodes_dir, full_run, tmp_path):
    """Two CPU devices (forced), batch split on the 'data' axis: same losses as one device."""
    out = tmp_path / "dp"
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from tests.openpi.conftest import tiny_train_config\n"
        "from crane_x7_vla.backends.openpi.trainer import train\n"
        "import jax; assert jax.device_count() == 2, jax.devices()\n"
        "train(tiny_train_config(%r, %r, max_steps=3, save_steps=100, merge_lora=True, eval_samples=4))\n"
    ) % (str(HERE.parent.parent), str(episodes_dir), str(out))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 device(s) [cpu]" in proc.stderr
    one = _losses(full_run[0])
    two = _losses(out)
    # the first step starts from the same weights and batch: same loss up to summation order
    np.testing.assert_allclose(two[1], one[1], rtol=1e-4)
    assert (out / "checkpoint-final" / "params").is_dir()
