import json

import pytest

from crane_x7_vla import checkpoint_contract as contract
from crane_x7_vla import robot
from crane_x7_vla.training import checkpoint as ck
from crane_x7_vla.training.config import ConfigError, TrainConfig, config_class


def _write(out, step, backend="openvla"):
    with ck.CheckpointWriter(out, step) as d:
        cfg = contract.build_policy_config(
            backend=backend,
            base_model="tiny",
            image_spec={"width": 64, "height": 64, "crop_scale": 0.9, "color_jitter": 0.1},
            cameras=["primary"],
            horizon=1,
            statistics={"fingerprint": "abc", "action": {}},
            default_instruction="go",
            control_rate_hz=10.0,
            step=step or 0,
            train_config=TrainConfig().to_dict(),
        )
        contract.write_policy_config(d, cfg)
        ck.write_trainer_state(d, {"step": step, "data_position": {"epoch": 0, "batch": 3}})
    return ck.checkpoint_dir(out, step)


def test_layout_and_round_trip(tmp_path):
    d = _write(tmp_path, 5)
    assert d.name == "checkpoint-5" and not list(tmp_path.glob(".*"))
    _write(tmp_path, None)
    assert (tmp_path / "checkpoint-final" / "policy_config.json").exists()
    cfg = contract.read_policy_config(d)
    assert cfg["joint_names"] == list(robot.JOINT_NAMES) and cfg["action_space"]["horizon"] == 1
    assert cfg["statistics_fingerprint"] == "abc" and cfg["format_version"] == 1
    assert ck.list_checkpoints(tmp_path) == [(5, d)]
    assert TrainConfig.from_dict(cfg["train_config"]) == config_class("openvla")()


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ck.CheckpointWriter(tmp_path, 7) as d:
            (d / "x").write_text("partial")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_other_backend_and_other_data(tmp_path):
    d = _write(tmp_path, 5, backend="openpi")
    with pytest.raises(contract.CheckpointError, match="'openpi' backend.*--backend openpi"):
        ck.check_resume(d, backend="openvla")
    assert ck.check_resume(d, backend="openpi", fingerprint="abc")["step"] == 5
    with pytest.raises(contract.CheckpointError, match="different dataset"):
        ck.check_resume(d, backend="openpi", fingerprint="zzz")
    with pytest.raises(contract.CheckpointError, match="policy_config.json: missing"):
        ck.check_resume(tmp_path, backend="openpi")
    (d / "policy_config.json").write_text("{oops")
    with pytest.raises(contract.CheckpointError, match="not valid JSON"):
        contract.read_policy_config(d)


def test_config_defaults_per_backend():
    vla = TrainConfig(backend="openvla").resolved()
    pi = TrainConfig(backend="openpi").resolved()
    assert (vla.batch_size, vla.learning_rate, vla.experiment_name) == (16, 5e-4, "crane_x7_openvla")
    assert (pi.batch_size, pi.learning_rate, pi.output_dir) == (32, 3e-4, "/workspace/outputs/crane_x7_openpi")
    assert vla.image_spec.width == 224
    with pytest.raises(ConfigError, match="--warmup-ratio"):
        TrainConfig(warmup_ratio=1.5).resolved()
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig.from_dict({"bogus": 1})
    assert json.loads(json.dumps(vla.to_dict()))["lora_rank"] == 32
    assert TrainConfig.from_dict(pi.to_dict()) == pi and TrainConfig.from_dict(vla.to_dict()) == vla
    with pytest.raises(ConfigError, match="--goal-tokens is for the openvla backend"):
        TrainConfig.from_dict({"backend": "openpi", "goal_tokens": True})
    with pytest.raises(ConfigError, match="--ema-decay is for the openpi backend"):
        TrainConfig.from_dict({"backend": "openvla", "ema_decay": 0.5})


# the train_config of checkpoints written when every backend's settings were one flat mapping,
# the openpi ones under `extra`
LEGACY_SHARED = {
    "backend": "openpi",
    "model": "tiny",
    "batch_size": 8,
    "learning_rate": 1e-3,
    "lora_rank": 4,
    "freeze_vision": False,
    "state_in_prompt": False,
    "image_position": None,
    "goal_tokens": False,
    "goal_before_state": False,
    "normalize_gripper": True,
    "goal_scenes": 0,
    "goal_scenes_task": "reach",
    "action_label_sigma": 0.0,
    "goal_label_sigma": None,
    "attn_implementation": None,
}


def test_train_config_of_older_checkpoints_reads():
    pi = TrainConfig.from_checkpoint(
        {**LEGACY_SHARED, "extra": {"ema_decay": 0.9, "freeze_vision": True, "conventions": "openpi"}}
    )
    assert type(pi) is config_class("openpi")
    assert (pi.ema_decay, pi.freeze_vision, pi.conventions, pi.lora_rank) == (0.9, True, "openpi", 4)
    vla = TrainConfig.from_checkpoint({**LEGACY_SHARED, "backend": "openvla", "goal_tokens": True, "extra": {}})
    assert type(vla) is config_class("openvla") and vla.goal_tokens and vla.lora_rank == 4
    assert TrainConfig.from_checkpoint(pi.to_dict()) == pi  # and as written now
    with pytest.raises(ConfigError, match=r"train_config: extra.ema is not a setting of the openpi backend"):
        TrainConfig.from_checkpoint({**LEGACY_SHARED, "extra": {"ema": 0.9}})
