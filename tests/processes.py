"""Run several processes of one job side by side (two torchrun agents, two JAX processes)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def run_together(cmds: list[list[str]], logs: list[Path], *, env: dict, cwd, timeout: float) -> list[str]:
    """Start every command at once (output to its log file), wait for all, kill any still
    running at the end; returns the logs' texts. An AssertionError shows the last output of
    each when one exits with an error."""
    procs = []
    try:
        for cmd, path in zip(cmds, logs):
            log = open(path, "w")
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd), log))
        for proc, _ in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    texts = [Path(path).read_text() for path in logs]
    assert all(proc.returncode == 0 for proc, _ in procs), "\n".join(t[-3000:] for t in texts)
    return texts
