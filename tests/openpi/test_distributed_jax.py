"""Two JAX processes on localhost (jax.distributed, CPU collectives over gloo) training the
tiny preset with its weights sharded over both (--fsdp-devices 2): the same losses as one
process, one checkpoint written by both together, resumed by one process; and two processes
joined from the environment a SLURM step sets, without flags."""

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

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "crane_x7_vla.training.cli"]
TRAIN = ["train", "--backend", "openpi", "--model", "tiny", "--image-size", "32x32", "--action-horizon", "4",
         "--device", "cpu", "--max-steps", "3", "--save-steps", "2", "--logging-steps", "1", "--learning-rate", "1e-3",
         "--warmup-ratio", "0", "--lora-rank", "4", "--lora-alpha", "8", "--eval-samples", "4",
         "--num-inference-steps", "2", "--num-workers", "1", "--val-ratio", "0.25", "--seed", "3"]
#: 2 processes x 4 samples against 1 process x 8 samples: the same global batch and noise; the
#: losses differ by the order of floating-point sums (measured: below 1e-5 relative)
RTOL = 5e-5
#: the limit of one run on a busy 2-core machine (two processes compiling at once: about 2 min)
TIMEOUT = 420
#: the tiny preset's weights are at most 2 MiB: shard those of 0.25 MiB and more
SHARDED = ["--fsdp-devices", "2", "--fsdp-min-mbytes", "0.25"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _losses(out) -> list[float]:
    return [r["train/loss"] for r in read_metrics(out) if "train/loss" in r]


def _one(args, tmp_path) -> str:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env=_env(), timeout=TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.fixture(scope="module")
def runs(episodes_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jax_fsdp")
    two = tmp / "two"
    address = f"127.0.0.1:{_free_port()}"
    cmds = [[*CLI, *TRAIN, *SHARDED, "--batch-size", "4", "--data-root", str(episodes_dir), "--output-dir", str(two),
             "--coordinator-address", address, "--num-processes", "2", "--process-id", str(pid)] for pid in range(2)]
    logs = run_together(cmds, [tmp / f"process{pid}.log" for pid in range(2)], env=_env(), cwd=tmp, timeout=TIMEOUT)
    one = tmp / "one"
    _one([*TRAIN, "--batch-size", "8", "--data-root", str(episodes_dir), "--output-dir", str(one)], tmp)
    return two, one, logs


def test_two_processes_match_one_process(runs):
    two, one, logs = runs
    assert "2 device(s) [cpu] in 2 process(es), mesh data 1 x fsdp 2" in logs[0]
    assert len(_losses(two)) == 3
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=RTOL)
    final = lambda out, key: [r[key] for r in read_metrics(out) if key in r]  # noqa: E731
    np.testing.assert_allclose(final(two, "val/loss"), final(one, "val/loss"), rtol=1e-3)


def test_checkpoint_written_once_by_both(runs):
    two, _, _ = runs
    state = ck.read_trainer_state(two / "checkpoint-2")
    assert (state["step"], state["processes"], state["data_position"]["batch"]) == (2, 2, 2)
    for name in ("params", "train_state", "tokenizer.json", "policy_config.json"):
        assert (two / "checkpoint-2" / name).exists(), name
    # each process wrote its own pieces of the sharded arrays into the one orbax checkpoint
    assert {p.name for p in (two / "checkpoint-2" / "train_state").glob("ocdbt.process_*")} == {
        "ocdbt.process_0", "ocdbt.process_1"}
    assert not list(two.glob(".checkpoint-*"))


def test_one_process_resumes_the_two_process_checkpoint(runs, episodes_dir, tmp_path):
    two, _, _ = runs
    out = tmp_path / "resumed"
    _one([*TRAIN, "--batch-size", "8", "--data-root", str(episodes_dir), "--output-dir", str(out),
          "--resume-from-checkpoint", str(two / "checkpoint-2")], tmp_path)
    assert len(_losses(out)) == 1
    np.testing.assert_allclose(_losses(out), _losses(two)[2:], rtol=RTOL)


SLURM_PROBE = """
import types
import jax
import jax.numpy as jnp
import numpy as np
from crane_x7_vla.backends.openpi import distributed as d

assert d.initialize(types.SimpleNamespace(coordinator_address=None, num_processes=None, process_id=None))
mesh = d.make_mesh(jax.devices(), 2)
x = d.place(np.arange(8.0), d.shardings(np.zeros(8), mesh, 0.0))
total = d.Aligned(jax.jit(lambda a: a.sum(), out_shardings=d.shardings(np.zeros(()), mesh, 0.0)), "sum")(x)
print(jax.process_count(), jax.process_index(), len(jax.devices()), tuple(x.sharding.spec), float(total))
"""


def _slurm_job_id() -> int:
    """A job number whose coordinator port (JAX: 61440 + job % 4096) is free now."""
    for port in range(61440 + os.getpid() % 4096, 61440 + 4096):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port - 61440
    raise RuntimeError("no free port in 61440..65535")


def test_slurm_environment_starts_jax_distributed(tmp_path):
    """Two processes with the variables `srun` sets for a 2-task step, and no flags: JAX finds
    the coordinator (the first node of the step), the process count and each process's number."""
    job = _slurm_job_id()
    procs = []
    for pid in range(2):
        env = dict(_env(), SLURM_JOB_ID=str(job), SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
                   SLURM_STEP_NUM_TASKS="2", SLURM_PROCID=str(pid), SLURM_LOCALID="0", JAX_PLATFORMS="cpu")
        procs.append(subprocess.Popen([sys.executable, "-c", SLURM_PROBE], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path))
    outs = []
    try:
        for proc in procs:
            outs.append(proc.communicate(timeout=TIMEOUT)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(proc.returncode == 0 for proc in procs), "\n".join(o[-2000:] for o in outs)
    lines = sorted(o.strip().splitlines()[-1] for o in outs)
    assert lines == ["2 0 2 ('fsdp',) 28.0", "2 1 2 ('fsdp',) 28.0"]
