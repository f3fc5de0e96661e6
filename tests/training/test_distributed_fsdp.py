"""OpenVLA on two torchrun agents of localhost as two "nodes" (c10d rendezvous, gloo) with
`--strategy fsdp` on the tiny preset, LoRA and full weights: the same losses as one process,
one checkpoint in the single-process layout, resumed by one process; a single process's
checkpoint resumed by the two."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crane_x7_vla.training import checkpoint as ck
from crane_x7_vla.training.metrics import read_metrics
from tests.processes import run_together

from .tiny_cli import TINY_OPENVLA_CPU

ROOT = Path(__file__).resolve().parents[2]
BASE = [*TINY_OPENVLA_CPU, "--save-steps", "2", "--logging-steps", "1", "--warmup-ratio", "0", "--eval-samples", "4",
        "--num-workers", "1", "--val-ratio", "0.2", "--seed", "1"]
TRAIN = [*BASE, "--max-steps", "4", "--learning-rate", "3e-3", "--lora-rank", "8", "--lora-dropout", "0"]
FULL = [*BASE, "--max-steps", "3", "--learning-rate", "1e-3", "--no-use-lora"]
CLI = [sys.executable, "-m", "crane_x7_vla.training.cli"]
#: the losses of 2 processes x 2 samples and of 1 process x 4 samples differ by the order of the
#: floating-point sums only (gradients averaged by a reduce-scatter instead of one backward pass)
RTOL = 1e-4
#: each run's limit on a busy 2-core machine; a tiny run takes about 20 s
TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _losses(out) -> list[float]:
    return [r["train/loss"] for r in read_metrics(out) if "train/loss" in r]


def _one_process(args: list[str]) -> str:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def _two_nodes(args: list[str], tmp_path) -> None:
    """Two torchrun agents, one process each, meeting at a c10d rendezvous on localhost."""
    endpoint = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "fsdp-test",
           "-m", "crane_x7_vla.training.cli", *args]
    logs = run_together([cmd, cmd], [tmp_path / f"node{n}.log" for n in range(2)], env=_env(), cwd=tmp_path,
                        timeout=TIMEOUT)
    assert "2 process(es) on cpu (fsdp)" in "\n".join(logs)


@pytest.fixture(scope="module")
def runs(dataset_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    two = tmp / "two"
    _two_nodes([*TRAIN, "--strategy", "fsdp", "--batch-size", "2", "--data-root", str(dataset_dir),
                "--output-dir", str(two)], tmp)
    one = tmp / "one"
    _one_process([*TRAIN, "--batch-size", "4", "--data-root", str(dataset_dir), "--output-dir", str(one)])
    return two, one


def test_two_nodes_match_one_process(runs):
    two, one = runs
    assert len(_losses(two)) == 4
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=RTOL)


def test_checkpoint_has_the_single_process_layout(runs):
    two, one = runs
    state = ck.read_trainer_state(two / "checkpoint-final")
    assert (state["world_size"], state["strategy"], state["step"], state["global_batch"]) == (2, "fsdp", 4, 4)
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "base/config.json",
                 "processor/tokenizer.json", "policy_config.json", "rng_state.pt", "scheduler.pt"):
        assert (two / "checkpoint-2" / name).is_file(), name
    # the optimizer state: one shard per process, written once into the one checkpoint
    shards = sorted(p.name for p in (two / "checkpoint-2" / "optimizer").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not list(two.glob(".checkpoint-*"))  # no temporary directory left behind
    from safetensors.numpy import load_file

    a = load_file(two / "checkpoint-final" / "adapter" / "adapter_model.safetensors")
    b = load_file(one / "checkpoint-final" / "adapter" / "adapter_model.safetensors")
    assert sorted(a) == sorted(b) and len(a) > 10
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-3, atol=1e-5, err_msg=key)
    ca, cb = (json.loads((d / "checkpoint-final" / "adapter" / "adapter_config.json").read_text()) for d in (two, one))
    assert ca["auto_mapping"] == cb["auto_mapping"]
    assert ca["auto_mapping"]["base_model_class"] == "OpenVLAForActionPrediction"
    assert set(ca["target_modules"]) == set(cb["target_modules"]) and ca["r"] == cb["r"] == 8
    policy = json.loads((two / "checkpoint-final" / "policy_config.json").read_text())
    assert policy["backend"] == "openvla" and policy["train_config"]["strategy"] == "fsdp"


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_one_process_resumes_the_two_node_checkpoint(runs, dataset_dir, tmp_path, strategy):
    two, _ = runs
    out = tmp_path / "resumed"
    stderr = _one_process([*TRAIN, "--strategy", strategy, "--batch-size", "4", "--data-root", str(dataset_dir),
                           "--output-dir", str(out), "--resume-from-checkpoint", str(two / "checkpoint-2")])
    assert "steps 2->4" in stderr and "note: resuming" not in stderr
    assert len(_losses(out)) == 2
    np.testing.assert_allclose(_losses(out), _losses(two)[2:], rtol=RTOL)


def test_two_nodes_resume_a_single_process_checkpoint(runs, dataset_dir, tmp_path):
    """optimizer.pt of one DDP process, loaded by parameter name into two FSDP processes."""
    _, one = runs
    out = tmp_path / "resumed"
    _two_nodes([*TRAIN, "--strategy", "fsdp", "--batch-size", "2", "--data-root", str(dataset_dir), "--output-dir",
                str(out), "--resume-from-checkpoint", str(one / "checkpoint-2")], tmp_path)
    assert len(_losses(out)) == 2
    np.testing.assert_allclose(_losses(out), _losses(one)[2:], rtol=RTOL)


def test_full_weights_on_two_nodes_match_one_process(dataset_dir, tmp_path):
    """Full weights, 2 micro-batches per step, recomputed activations on the two nodes."""
    two = tmp_path / "two"
    _two_nodes([*FULL, "--strategy", "fsdp", "--batch-size", "1", "--grad-accumulation-steps", "2",
                "--gradient-checkpointing", "--data-root", str(dataset_dir), "--output-dir", str(two)], tmp_path)
    one = tmp_path / "one"
    _one_process([*FULL, "--batch-size", "2", "--grad-accumulation-steps", "2", "--data-root", str(dataset_dir),
                  "--output-dir", str(one)])
    assert len(_losses(two)) == 3
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=RTOL)
    from safetensors.numpy import load_file

    a = load_file(two / "checkpoint-final" / "model" / "model.safetensors")
    b = load_file(one / "checkpoint-final" / "model" / "model.safetensors")
    assert sorted(a) == sorted(b)
    config = [(d / "checkpoint-final" / "model" / "config.json").read_text() for d in (two, one)]
    assert config[0] == config[1]  # the model's own class and settings, not FSDP's wrapper
    for key in a:  # the whole model, gathered from the shards, as one process writes it
        assert a[key].shape == b[key].shape, key
        np.testing.assert_allclose(a[key], b[key], rtol=1e-3, atol=1e-5, err_msg=key)
