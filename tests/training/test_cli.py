"""Every flag reaches TrainConfig (and from there the code: see test_openvla_train), bad
input is refused before any model is built."""

import json
import subprocess
import sys

import numpy as np
import pytest

from crane_x7_vla import checkpoint_contract as contract
from crane_x7_vla.episode import schema, tfrecord
from crane_x7_vla.episode.stats import write_statistics
from crane_x7_vla.episode.writer import step_features
from crane_x7_vla.training import checkpoint as ck
from crane_x7_vla.training import data
from crane_x7_vla.training.cli import build_parser, config_from_args, main
from crane_x7_vla.training.config import ConfigError, TrainConfig


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


ALL_FLAGS = {
    "--data-root": ("/d", "data_root", "/d"),
    "--instruction": ("wave", "instruction", "wave"),
    "--image-size": ("96x64", "image_size", "96x64"),
    "--crop-scale": ("0.8", "crop_scale", 0.8),
    "--color-jitter": ("0.2", "color_jitter", 0.2),
    "--val-ratio": ("0.3", "val_ratio", 0.3),
    "--num-workers": ("3", "num_workers", 3),
    "--batch-size": ("7", "batch_size", 7),
    "--num-epochs": ("9", "num_epochs", 9),
    "--max-steps": ("11", "max_steps", 11),
    "--learning-rate": ("1e-4", "learning_rate", 1e-4),
    "--lr-scheduler": ("linear", "lr_scheduler", "linear"),
    "--warmup-ratio": ("0.05", "warmup_ratio", 0.05),
    "--weight-decay": ("0.01", "weight_decay", 0.01),
    "--max-grad-norm": ("0.5", "max_grad_norm", 0.5),
    "--grad-accumulation-steps": ("4", "grad_accumulation_steps", 4),
    "--seed": ("3", "seed", 3),
    "--model": ("tiny", "model", "tiny"),
    "--lora-rank": ("4", "lora_rank", 4),
    "--lora-alpha": ("8", "lora_alpha", 8),
    "--lora-dropout": ("0.2", "lora_dropout", 0.2),
    "--attn-implementation": ("sdpa", "attn_implementation", "sdpa"),
    "--precision": ("bf16", "precision", "bf16"),
    "--device": ("cpu", "device", "cpu"),
    "--experiment-name": ("exp", "experiment_name", "exp"),
    "--output-dir": ("/o", "output_dir", "/o"),
    "--save-steps": ("13", "save_steps", 13),
    "--logging-steps": ("2", "logging_steps", 2),
    "--eval-steps": ("5", "eval_steps", 5),
    "--eval-samples": ("6", "eval_samples", 6),
    "--wandb-project": ("p", "wandb_project", "p"),
    "--wandb-entity": ("e", "wandb_entity", "e"),
}


def test_every_flag_sets_its_field(tmp_path):
    argv = ["--backend", "openvla"]
    for flag, (value, _, _) in ALL_FLAGS.items():
        argv += [flag, value]
    argv += [
        "--gradient-checkpointing",
        "--use-wandb",
        "--merge-lora",
        "--cameras",
        "primary",
        "wrist",
        "--resume-from-checkpoint",
        str(tmp_path),
    ]
    cfg = parse(*argv)
    for flag, (_, field, expected) in ALL_FLAGS.items():
        assert getattr(cfg, field) == expected, flag
    assert cfg.gradient_checkpointing and cfg.use_wandb and cfg.merge_lora and cfg.use_lora
    assert cfg.cameras == ["primary", "wrist"] and cfg.resume_from_checkpoint == str(tmp_path)
    spec = cfg.image_spec
    assert (spec.width, spec.height, spec.crop_scale, spec.color_jitter) == (96, 64, 0.8, 0.2)
    assert parse("--backend", "openvla", "--no-use-lora").use_lora is False
    assert parse("--backend", "openpi", "--action-horizon", "5").action_horizon == 5


def test_defaults_per_backend():
    vla, pi = parse("--backend", "openvla"), parse("--backend", "openpi")
    assert (vla.batch_size, vla.learning_rate, vla.num_epochs, vla.save_steps) == (16, 5e-4, 100, 500)
    assert (pi.batch_size, pi.learning_rate) == (32, 3e-4)
    assert vla.output_dir == "/workspace/outputs/crane_x7_openvla" and vla.data_root == "/workspace/data/tfrecord_logs"
    assert (vla.lora_rank, vla.lora_alpha, vla.lora_dropout, vla.warmup_ratio) == (32, 64, 0.1, 0.1)
    assert vla.image_size == "224x224" and vla.instruction == "Pick and place the object" and not vla.use_wandb
    assert parse("--backend", "openvla", "--experiment-name", "x").output_dir == "/workspace/outputs/x"


def test_yaml_config_and_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 3\nlora-rank: 6\nimage_size: 64x64\n")
    cfg = parse("--backend", "openvla", "--config", str(path), "--batch-size", "5")
    assert (cfg.batch_size, cfg.lora_rank, cfg.image_size) == (5, 6, "64x64")
    path.write_text("batch_sise: 3\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        parse("--backend", "openvla", "--config", str(path))


def test_shipped_default_config_loads(repo_root):
    cfg = parse("--backend", "openvla", "--config", str(repo_root / "vla_training" / "openvla" / "default.yaml"))
    assert cfg.backend == "openvla" and cfg.model == "openvla/openvla-7b"
    pi = parse("--backend", "openpi", "--config", str(repo_root / "vla_training" / "openpi" / "default.yaml"))
    assert (pi.backend, pi.model, pi.ema_decay, pi.num_inference_steps, pi.lora_rank) == ("openpi", "pi0", 0.99, 10, 16)


def test_backend_settings_as_flags_and_yaml_keys(tmp_path):
    pi = parse(
        "--backend",
        "openpi",
        "--ema-decay",
        "0.5",
        "--image-slots",
        "primary",
        "none",
        "wrist",
        "--conventions",
        "openpi",
        "--freeze-prefix",
    )
    assert (pi.ema_decay, pi.image_slots, pi.conventions, pi.freeze_prefix) == (
        0.5,
        ["primary", None, "wrist"],
        "openpi",
        True,
    )
    path = tmp_path / "c.yaml"
    path.write_text("backend: openpi\nema_decay: 0.9\nimage_slots: [primary, null, null]\n")
    pi = parse("--backend", "openpi", "--config", str(path))
    assert (pi.ema_decay, pi.image_slots) == (0.9, ["primary", None, None])
    path.write_text("backend: openpi\nextra:\n  ema_decay: 0.9\n")
    with pytest.raises(ConfigError, match="`extra:` holds no settings; write ema_decay: ... at the top level"):
        parse("--backend", "openpi", "--config", str(path))
    with pytest.raises(ConfigError, match="--ema-decay is for the openpi backend"):
        parse("--backend", "openvla", "--ema-decay", "0.5")
    with pytest.raises(ConfigError, match="--ema-decay must be in"):
        parse("--backend", "openpi", "--ema-decay", "1.5")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--no-use-lora", "--lora-rank", "8"], "--lora-rank contradicts --no-use-lora"),
        (["--no-use-lora", "--merge-lora"], "--merge-lora contradicts --no-use-lora"),
        (["--action-horizon", "0"], "--action-horizon"),
        (["--warmup-ratio", "1.2"], "--warmup-ratio"),
        (["--image-size", "big"], "--image-size"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_contradictions_and_bad_values(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse("--backend", "openvla", *argv)


def test_unknown_flag_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--backend", "openvla", "--lora-rnak", "8"])
    assert exc.value.code == 2 and "--lora-rnak" in capsys.readouterr().err


def test_help_lists_flags_with_defaults():
    out = subprocess.run(
        [sys.executable, "-m", "crane_x7_vla.training.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = " ".join(out.split())
    for flag in list(ALL_FLAGS) + [
        "--use-lora",
        "--no-use-lora",
        "--use-wandb",
        "--resume-from-checkpoint",
        "--gradient-checkpointing",
        "--config",
        "--action-horizon",
        "--merge-lora",
    ]:
        assert flag in out, flag
    for default in (
        "16 / 32",
        "0.0005 / 0.0003",
        "/workspace/data/tfrecord_logs",
        "224x224",
        "crane_x7_{backend}",
        "(default: 500)",
    ):
        assert default in out, default


# ---- bad input: a clear error before any model is built ------------------------------------------


def run_cli(tmp_path, data_root, *extra):
    out = tmp_path / "out"
    rc = main(
        [
            "train",
            "--backend",
            "openvla",
            "--model",
            "tiny",
            "--image-size",
            "64x64",
            "--device",
            "cpu",
            "--data-root",
            str(data_root),
            "--output-dir",
            str(out),
            "--max-steps",
            "1",
            *extra,
        ]
    )
    assert not (out / "base_model").exists()  # refused before building the model
    return rc


def test_no_episodes(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(tmp_path, empty) == 1
    assert f"no episodes found under {empty.resolve()}" in capsys.readouterr().err


def test_corrupt_record(dataset_copy, tmp_path, capsys):
    target = sorted(dataset_copy.glob("episode_*"))[1] / "episode_data.tfrecord"
    raw = bytearray(target.read_bytes())
    raw[200] ^= 0x55
    target.write_bytes(bytes(raw))
    assert run_cli(tmp_path, dataset_copy) == 1
    err = capsys.readouterr().err
    assert str(target) in err and "record 0" in err


def test_stale_statistics(dataset_copy, tmp_path, capsys):
    stats = json.loads((dataset_copy / "dataset_statistics.json").read_text())
    stats["crane_x7"]["fingerprint"] = "0" * 16
    (dataset_copy / "dataset_statistics.json").write_text(json.dumps(stats))
    assert run_cli(tmp_path, dataset_copy) == 1
    assert f"crane-x7-vla dataset stats {dataset_copy}" in capsys.readouterr().err


def test_missing_statistics(dataset_copy, tmp_path, capsys):
    (dataset_copy / "dataset_statistics.json").unlink()
    assert run_cli(tmp_path, dataset_copy) == 1
    assert "dataset_statistics.json not found" in capsys.readouterr().err


def test_resume_from_other_backend(dataset_dir, tmp_path, capsys):
    other = tmp_path / "pi"
    other.mkdir()
    contract.write_policy_config(
        other,
        contract.build_policy_config(
            backend="openpi",
            base_model="tiny",
            image_spec={},
            cameras=["primary"],
            horizon=10,
            statistics={},
            default_instruction="",
            control_rate_hz=10.0,
            step=5,
            train_config={},
        ),
    )
    ck.write_trainer_state(other, {"step": 5})
    assert run_cli(tmp_path, dataset_dir, "--resume-from-checkpoint", str(other)) == 1
    assert "written by the 'openpi' backend" in capsys.readouterr().err


def test_unknown_model_is_refused_clearly(dataset_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "train",
                "--backend",
                "openvla",
                "--model",
                str(tmp_path / "no-such-model"),
                "--device",
                "cpu",
                "--image-size",
                "64x64",
                "--data-root",
                str(dataset_dir),
                "--output-dir",
                str(tmp_path / "o"),
                "--max-steps",
                "1",
            ]
        )
    rc = exc.value.code
    assert rc == 2 and "no such model directory" in capsys.readouterr().err


# ---- flags that act inside the data pipeline and model building -----------------------------------


def test_instruction_fills_episodes_without_one(tmp_path):
    ep_dir = tmp_path / "episode_0000"
    ep_dir.mkdir()
    with open(ep_dir / schema.RECORD_FILE, "wb") as f:  # an earlier-stack episode: no metadata, no instruction
        for t in range(5):
            q = np.full(8, 0.1 * t, np.float32)
            f.write(
                tfrecord.frame(
                    tfrecord.encode_example(
                        step_features(
                            proprio=q,
                            action=q,
                            timestep=t,
                            instruction="",
                            images={
                                "primary": __import__("crane_x7_vla.episode.jpeg", fromlist=["x"]).encode(
                                    np.zeros((8, 8, 3), np.uint8)
                                )
                            },
                        )
                    )
                )
            )
    write_statistics(tmp_path)
    td = data.load_training_data(tmp_path, val_ratio=0.0, default_instruction="wave hello")
    assert td.train[0].instruction == "wave hello" and td.default_instruction == "wave hello"


def test_seed_changes_the_split():
    splits = {tuple(data.split_episodes(10, 0.3, seed)[1]) for seed in range(6)}
    assert len(splits) > 1 and all(len(s) == 3 for s in splits)


def test_gradient_checkpointing_reaches_the_model(dataset_dir, tmp_path):
    import torch

    from crane_x7_vla.backends.openvla.model import materialize_preset
    from crane_x7_vla.backends.openvla.trainer import build_model

    base = materialize_preset("tiny", tmp_path / "base", image_size=(64, 64))
    for flag in (True, False):
        cfg = TrainConfig(model="tiny", image_size="64x64", gradient_checkpointing=flag, lora_rank=4).resolved()
        vla = build_model(cfg, str(base), torch.device("cpu"), None)
        assert vla.model.base_model.model.is_gradient_checkpointing is flag
        assert vla.model.peft_config["default"].r == 4


def test_wandb_project_and_entity_reach_wandb(tmp_path, monkeypatch):
    from crane_x7_vla.training.metrics import MetricsLogger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    log = MetricsLogger(tmp_path, {"a": 1}, use_wandb=True, wandb_project="proj-x", wandb_entity="lab-y", run_name="r")
    assert log.wandb_mode == "offline" and log.wandb is not None
    assert log.wandb.project == "proj-x" and log.wandb.entity == "lab-y"
    log.log(1, {"loss": 1.0})
    log.close()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
