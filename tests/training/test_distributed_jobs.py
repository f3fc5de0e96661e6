"""The SLURM job files: valid bash, and the commands they run name only flags that exist
(torchrun's own parser, the `train` parser and its settings checks)."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from crane_x7_vla.training import cli as train_cli

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "vla_training" / "slurm").glob("*.sbatch"))
#: what SLURM would set for a job of 2 nodes with 8 GPUs each
SLURM = {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "8", "HEAD_NODE": "node1",
         "SLURM_SUBMIT_DIR": str(ROOT), "DRY_RUN": "1"}


def test_there_are_job_files_for_both_backends_on_one_and_several_nodes():
    assert {p.name for p in JOBS} >= {"openvla_1node.sbatch", "openvla_multinode.sbatch", "openpi_1node.sbatch",
                                      "openpi_multinode.sbatch"}


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_job_file_is_valid_bash(job):
    proc = subprocess.run(["bash", "-n", str(job)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    head = job.read_text().split("\nset ", 1)[0]  # sbatch reads its directives before the first command
    assert "#SBATCH --nodes=" in head


def _command(job: Path, *extra: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(job), *extra], capture_output=True, text=True, env={**env, **SLURM},
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return shlex.split(lines[0])


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_job_runs_only_flags_that_exist(job):
    argv = _command(job, "--max-steps", "5")
    i = argv.index("crane_x7_vla.training.cli")
    launcher, train_args = argv[: i - 1], argv[i + 1 :]
    assert argv[i - 1] == "-m"
    if "torchrun" in launcher:
        from torch.distributed.run import get_args_parser

        torchrun = launcher[launcher.index("torchrun") + 1 :]
        ns = get_args_parser().parse_args([*torchrun, "--module", "crane_x7_vla.training.cli"])
        if "multinode" in job.name:
            assert (ns.nnodes, ns.nproc_per_node, ns.rdzv_backend, ns.rdzv_endpoint) == ("2", "8", "c10d",
                                                                                          "node1:29500")
        else:
            assert ns.standalone and ns.nproc_per_node == "8"
    ns = train_cli.build_parser().parse_args(train_args)
    cfg = train_cli.config_from_args(ns)  # the settings checks too (ranges, contradictions)
    assert cfg.max_steps == 5 and cfg.backend in job.name
    if cfg.backend == "openvla":
        assert cfg.strategy == "fsdp"
    else:
        assert cfg.fsdp_devices == 8
