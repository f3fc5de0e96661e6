"""`torchrun --nproc_per_node=2` on CPU (gloo): two processes train as one batch."""

import os
import subprocess
import sys

import numpy as np

from crane_x7_vla.training import checkpoint as ck
from crane_x7_vla.training.metrics import read_metrics

ARGS = ["-m", "crane_x7_vla.training.cli", "train", "--backend", "openvla", "--model", "tiny", "--image-size", "64x64",
        "--device", "cpu", "--max-steps", "4", "--save-steps", "2", "--logging-steps", "1", "--learning-rate", "3e-3",
        "--warmup-ratio", "0", "--lora-rank", "8", "--lora-dropout", "0", "--eval-samples", "4", "--num-workers", "1",
        "--val-ratio", "0.2", "--seed", "1"]


def _losses(out):
    return [r["train/loss"] for r in read_metrics(out) if "train/loss" in r]


def test_torchrun_two_cpu_processes_match_one_process(dataset_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *ARGS,
                           "--batch-size", "2", "--data-root", str(dataset_dir), "--output-dir", str(two)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stderr
    state = ck.read_trainer_state(two / "checkpoint-final")
    assert state["world_size"] == 2 and state["step"] == 4 and state["data_position"]["batch"] == 4
    assert (two / "checkpoint-2").is_dir()
    one = tmp_path / "one"
    proc = subprocess.run([sys.executable, *ARGS, "--batch-size", "4", "--data-root", str(dataset_dir),
                           "--output-dir", str(one)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 2 processes x 2 samples == 1 process x 4 samples: same batches, averaged gradients, same losses
    assert len(_losses(two)) == 4
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=2e-4)
