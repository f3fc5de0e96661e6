"""The tiny preset trained for real on CPU: loss, checkpoints, exact resume, merge, policy."""

import json

import numpy as np
import pytest

from crane_x7_vla import checkpoint_contract as contract
from crane_x7_vla import robot
from crane_x7_vla.training import checkpoint as ck
from crane_x7_vla.training.cli import main
from crane_x7_vla.training import metrics as mn
from crane_x7_vla.training.metrics import read_metrics
from .tiny_cli import TINY_OPENVLA_CPU

COMMON = TINY_OPENVLA_CPU + [
    "--batch-size",
    "4",
    "--val-ratio",
    "0.2",
    "--learning-rate",
    "3e-3",
    "--warmup-ratio",
    "0.25",
    "--logging-steps",
    "1",
    "--eval-samples",
    "8",
    "--num-workers",
    "2",
    "--seed",
    "5",
    # OpenVLA-7B's own format (the tiny preset's defaults are tested in test_action_representation)
    "--action-representation",
    "absolute",
    "--no-state-in-prompt",
    "--noop-threshold",
    "0",
    "--action-label-sigma",
    "0",
    "--image-position",
    "first",
]
LORA = ["--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0.05"]


def losses(out_dir):
    return {r["step"]: r["train/loss"] for r in read_metrics(out_dir) if "train/loss" in r}


@pytest.fixture(scope="module")
def lora_run(dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_run")
    rc = main(
        COMMON
        + LORA
        + [
            "--data-root",
            str(dataset_dir),
            "--output-dir",
            str(out),
            "--max-steps",
            "24",
            "--save-steps",
            "12",
            "--merge-lora",
        ]
    )
    assert rc == 0
    return out


def test_loss_falls_and_metrics_are_logged(lora_run):
    loss = losses(lora_run)
    assert sorted(loss) == list(range(1, 25))
    first, last = np.mean([loss[s] for s in range(1, 5)]), np.mean([loss[s] for s in range(21, 25)])
    assert last < first - 0.2, (first, last)
    rows = read_metrics(lora_run)
    final = {k: v for r in rows if r["step"] == 24 for k, v in r.items()}
    for key in ("val/l1", "val/action_accuracy", "val/loss", "train_eval/l1", "train/l1", "train/action_accuracy"):
        assert key in final and np.isfinite(final[key])
    lr = {r["step"]: r["train/learning_rate"] for r in rows if "train/learning_rate" in r}
    assert lr[1] < 0.5 * 3e-3 and lr[7] == pytest.approx(3e-3) and lr[24] < lr[12] < lr[7]  # warmup, cosine
    assert list((lora_run / "tensorboard").glob("events.out.tfevents.*"))
    # the names both backends log (tests/openpi/test_train.py checks the same)
    shared = {*mn.TRAINING_METRICS, *(mn.eval_metric(s, m) for s in mn.EVAL_SPLITS for m in mn.EVAL_METRICS)}
    assert shared <= {k for r in rows for k in r}


def test_checkpoints_describe_themselves(lora_run, dataset_dir):
    assert (lora_run / "checkpoint-12").is_dir() and (lora_run / "checkpoint-final").is_dir()
    cfg = contract.read_policy_config(lora_run / "checkpoint-final")
    assert cfg["backend"] == "openvla" and cfg["base_model"] == "tiny" and cfg["step"] == 24
    assert cfg["image_spec"]["width"] == 64 and cfg["image_spec"]["height"] == 64
    assert cfg["cameras"] == ["primary"] and cfg["joint_names"] == list(robot.JOINT_NAMES)
    assert cfg["action_space"] == {
        "dim": 8,
        "horizon": 1,
        "kind": "absolute_joint_positions",
        "representation": "absolute",
        "discretization": "openvla",
        "normalization_mask": [True] * 8,
    }
    stats = json.loads((dataset_dir / "dataset_statistics.json").read_text())["crane_x7"]
    assert cfg["dataset_statistics"] == stats and cfg["statistics_fingerprint"] == stats["fingerprint"]
    assert cfg["default_instruction"] == "reach the green cube" and cfg["control_rate_hz"] == 10.0
    assert cfg["train_config"]["lora_rank"] == 8
    adapter = json.loads((lora_run / "checkpoint-12" / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (8, 16, 0.05)
    base = json.loads((lora_run / "checkpoint-12" / "base" / "config.json").read_text())
    assert base["model_type"] == "openvla" and base["image_sizes"] == [64, 64]
    state = ck.read_trainer_state(lora_run / "checkpoint-12")
    assert state["step"] == 12 and state["data_position"] == {"epoch": 0, "batch": 12}
    for name in ("optimizer.pt", "rng_state.pt", "processor/tokenizer.json"):
        assert (lora_run / "checkpoint-12" / name).exists()


def test_resume_continues_exactly(lora_run, dataset_dir, tmp_path):
    out = tmp_path / "resumed"
    rc = main(
        COMMON
        + LORA
        + [
            "--data-root",
            str(dataset_dir),
            "--output-dir",
            str(out),
            "--max-steps",
            "24",
            "--save-steps",
            "12",
            "--resume-from-checkpoint",
            str(lora_run / "checkpoint-12"),
        ]
    )
    assert rc == 0
    straight, resumed = losses(lora_run), losses(out)
    assert sorted(resumed) == list(range(13, 25))
    np.testing.assert_allclose([resumed[s] for s in range(13, 25)], [straight[s] for s in range(13, 25)], rtol=1e-6)


def test_merged_weights_load(lora_run):
    from crane_x7_vla.backends.openvla.prismatic import OpenVLAForActionPrediction

    merged, info = OpenVLAForActionPrediction.from_pretrained(
        lora_run / "checkpoint-final" / "merged", output_loading_info=True
    )
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_policy_predicts_absolute_targets(lora_run, dataset_dir):
    from crane_x7_vla.backends.openvla import policy as vla_policy
    from crane_x7_vla.episode.reader import list_episodes, load_episode
    from crane_x7_vla.episode import jpeg

    d = lora_run / "checkpoint-final"
    pol = vla_policy.load(d, contract.read_policy_config(d), "cpu")
    ep = load_episode(list_episodes(dataset_dir)[0].path)
    obs = {
        "images": {"primary": jpeg.decode(ep.images["primary"][3])},
        "state": ep.proprio[3],
        "instruction": ep.instruction,
    }
    action = pol.predict(obs)
    assert action.shape == (1, 8) and action.dtype == np.float64 and np.all(np.isfinite(action))
    assert np.all(robot.within_limits(action[0]))
    stats = pol.config["dataset_statistics"]["action"]
    assert np.all(action[0] >= np.array(stats["q01"]) - 1e-6) and np.all(action[0] <= np.array(stats["q99"]) + 1e-6)
    np.testing.assert_array_equal(action, pol.predict(obs))  # greedy: deterministic
    big = {"images": {"primary": np.zeros((480, 640, 3), np.uint8)}, "state": ep.proprio[0], "instruction": ""}
    assert pol.predict(big).shape == (1, 8)  # any size, default instruction
    assert pol.metadata["action_horizon"] == 1 and pol.metadata["cameras"] == ["primary"]
    with pytest.raises(KeyError, match="primary"):
        pol.predict({"images": {"wrist": obs["images"]["primary"]}, "state": ep.proprio[0], "instruction": "x"})


def test_cpu_threads_reach_torch_and_change_no_action(lora_run, dataset_dir):
    import torch

    from crane_x7_vla.episode import jpeg
    from crane_x7_vla.episode.reader import list_episodes, load_episode
    from crane_x7_vla.policy.loader import load_policy

    d = lora_run / "checkpoint-final"
    ep = load_episode(list_episodes(dataset_dir)[0].path)
    obs = {
        "images": {"primary": jpeg.decode(ep.images["primary"][3])},
        "state": ep.proprio[3],
        "instruction": ep.instruction,
    }
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        default = load_policy(d, "cpu").predict(obs)
        assert torch.get_num_threads() == 2  # 0: the library's default is left alone
        one = load_policy(d, "cpu", cpu_threads=1)
        assert torch.get_num_threads() == 1
        np.testing.assert_allclose(one.predict(obs), default, atol=1e-9)
        with pytest.raises(contract.CheckpointError, match="cpu_threads"):
            load_policy(d, "cpu", cpu_threads=-1)
    finally:
        torch.set_num_threads(before)


def test_full_weights_epochs_accumulation_wandb(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    out = tmp_path / "full"
    rc = main(
        COMMON
        + [
            "--data-root",
            str(dataset_dir),
            "--output-dir",
            str(out),
            "--no-use-lora",
            "--batch-size",
            "8",
            "--num-epochs",
            "2",
            "--grad-accumulation-steps",
            "3",
            "--gradient-checkpointing",
            "--save-steps",
            "100",
            "--use-wandb",
            "--wandb-project",
            "crane-test",
        ]
    )
    assert rc == 0
    # 5 train episodes x 20 steps / batch 8 = 12 batches per epoch; 3 per step -> 4 steps per epoch
    state = ck.read_trainer_state(out / "checkpoint-final")
    assert state["total_steps"] == 8 and state["step"] == 8 and state["data_position"] == {"epoch": 2, "batch": 0}
    assert sorted(losses(out)) == list(range(1, 9))
    final = out / "checkpoint-final"
    assert (final / "model" / "config.json").exists() and not (final / "adapter").exists()
    from safetensors.torch import load_file

    trained = load_file(str(final / "model" / "model.safetensors"))
    base = load_file(str(out / "base_model" / "model.safetensors"))
    changed = [k for k in base if not np.array_equal(base[k].numpy(), trained[k].numpy())]
    unchanged = set(base) - set(changed)  # all weights trained, embeddings and lm_head included, except
    # the layers OpenVLA's forward pass never runs (each tower's last block and final norm, SigLIP's pool)
    from crane_x7_vla.backends.openvla.prismatic import OpenVLAConfig, OpenVLAForActionPrediction

    never_run = tuple(
        f"{n}." for n in OpenVLAForActionPrediction(OpenVLAConfig.from_pretrained(out / "base_model")).unused_modules()
    )
    assert unchanged and all(k.startswith(never_run) for k in unchanged), sorted(unchanged)[:5]
    assert any(k.endswith("lm_head.weight") for k in changed) and any(
        k.endswith("embed_tokens.weight") for k in changed
    )
    assert list((out / "wandb").glob("offline-run-*"))


def test_merge_lora_command(lora_run, tmp_path):
    out = tmp_path / "merged"
    assert main(["merge-lora", str(lora_run / "checkpoint-12"), "--output", str(out)]) == 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_a_failing_evaluation_does_not_stop_the_run(tmp_path, capsys):
    from crane_x7_vla.training.data import split_episodes

    from .conftest import write_episodes

    data = tmp_path / "data"
    _, val = split_episodes(5, 0.2, 5)  # the episode --val-ratio 0.2 --seed 5 holds out
    write_episodes(data, episodes=5, unreadable=tuple(val))
    out = tmp_path / "run"
    rc = main(
        COMMON
        + LORA
        + [
            "--data-root",
            str(data),
            "--output-dir",
            str(out),
            "--max-steps",
            "4",
            "--save-steps",
            "100",
            "--eval-steps",
            "2",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "eval step 2 failed, training goes on" in err and "eval step 4 failed, training goes on" in err
    assert ck.read_trainer_state(out / "checkpoint-final")["step"] == 4
    assert sorted(losses(out)) == [1, 2, 3, 4]
    assert not any(k.startswith("val/") for r in read_metrics(out) for k in r)


def test_a_damaged_adapter_or_an_unknown_device_is_one_line(lora_run, dataset_dir, tmp_path):
    import shutil
    import subprocess

    from conftest import cli_path
    from crane_x7_vla.policy.loader import load_policy

    damaged = tmp_path / "damaged"
    shutil.copytree(lora_run / "checkpoint-12", damaged)
    weights = damaged / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])  # cut short, as by a full disk or an interrupted copy
    with pytest.raises(contract.CheckpointError, match=f"^{damaged / 'adapter'}: the LoRA adapter cannot be loaded"):
        load_policy(damaged, "cpu")
    final = lora_run / "checkpoint-final"
    cases = [
        (["merge-lora", str(damaged), "--output", str(tmp_path / "merged")], str(damaged / "adapter")),
        (["serve", str(final), "--device", "nosuch"], "--device: must be auto, cpu, cuda or cuda:N (got 'nosuch')"),
        (
            [
                "train",
                *COMMON[1:],
                "--data-root",
                str(dataset_dir),
                "--output-dir",
                str(tmp_path / "run"),
                "--max-steps",
                "24",
                "--resume-from-checkpoint",
                str(damaged),
            ],
            str(weights),
        ),
    ]
    for args, needle in cases:
        result = subprocess.run([cli_path(), *args], capture_output=True, text=True, timeout=600)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert needle in result.stderr.strip().splitlines()[-1], result.stderr[-3000:]
    assert not (tmp_path / "merged").exists()
