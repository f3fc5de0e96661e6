"""Training metrics: `metrics.jsonl` and TensorBoard always, Weights & Biases when asked.

W&B runs offline (files under output_dir/wandb, `wandb sync` later) when no API key is
configured, and any W&B failure turns into a warning: logging never stops a training run.
Only the main process (rank 0) writes.

Both trainers log the names below, so W&B, TensorBoard and the report see one set of
metrics whichever backend trained: `train/...` for the training batches, `val/...` and
`train_eval/...` for the validation metrics of the held-out and the training episodes,
`perf/...` for timings.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path


# ---- metric names ------------------------------------------------------------------------------

LOSS = "train/loss"  # training loss, mean over the logging window
GRAD_NORM = "train/grad_norm"  # gradient norm before clipping
LEARNING_RATE = "train/learning_rate"  # the rate of the window's last optimizer step
EPOCH = "epoch"  # passes over the training episodes so far
STEP_TIME = "perf/step_time_s"  # seconds per optimizer step
DATA_WAIT = "perf/data_wait_s"  # seconds per step spent waiting for a batch
DATA_WAIT_SHARE = "perf/data_wait_share"  # DATA_WAIT / STEP_TIME
SAMPLES_PER_SECOND = "perf/samples_per_second"  # training samples per second, all processes

#: logged by every trainer at each logging step
TRAINING_METRICS = (LOSS, GRAD_NORM, LEARNING_RATE, EPOCH, STEP_TIME, DATA_WAIT, DATA_WAIT_SHARE, SAMPLES_PER_SECOND)
#: logged by every trainer for each split of each validation
EVAL_METRICS = ("loss", "l1")

VAL = "val"  # validation on the held-out episodes
TRAIN_EVAL = "train_eval"  # the same metrics on the training episodes
EVAL_SPLITS = (VAL, TRAIN_EVAL)


def train_metric(name: str) -> str:
    """A training-batch metric (e.g. `train/l1`)."""
    return f"train/{name}"


def eval_metric(split: str, name: str) -> str:
    """A validation metric of a split (VAL or TRAIN_EVAL), e.g. `val/loss`."""
    return f"{split}/{name}"


def is_curve(name: str) -> bool:
    """Whether a metric is a training curve (a loss, accuracy or error), not a timing or a rate."""
    return name.split("/")[0] in ("train", *EVAL_SPLITS) and name not in (LEARNING_RATE, EPOCH)


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class _TensorBoard:
    """Scalar summaries in TensorBoard's event-file format: TFRecord-framed `Event` protos
    (tensorboard's own proto classes; its writer would import TensorFlow when installed)."""

    def __init__(self, logdir: Path):
        import socket

        from tensorboard.compat.proto.event_pb2 import Event

        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self._file = open(logdir / name, "wb")
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        from crane_x7_vla.episode.tfrecord import frame

        self._file.write(frame(event.SerializeToString()))
        self._file.flush()

    def scalars(self, step: int, values: dict) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        self._write(Event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self) -> None:
        self._file.close()


class MetricsLogger:
    def __init__(self, output_dir, config: dict, *, enabled: bool = True, use_wandb: bool = False,
                 wandb_project: str = "crane_x7_vla", wandb_entity: str | None = None, run_name: str | None = None):
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.wandb = None
        self.wandb_mode = None
        self._tb = None
        self._file = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / "metrics.jsonl"
        self._file = open(self.path, "a")
        self._tb = _TensorBoard(self.output_dir / "tensorboard")
        if use_wandb:
            self._start_wandb(config, wandb_project, wandb_entity, run_name)

    def _start_wandb(self, config, project, entity, run_name) -> None:
        self.wandb_mode = "online" if _wandb_has_key() else "offline"
        if self.wandb_mode == "offline":
            print("W&B: no API key (WANDB_API_KEY or `wandb login`), logging offline to "
                  f"{self.output_dir / 'wandb'}; upload later with `wandb sync`", file=sys.stderr)
        try:
            import wandb

            self.wandb = wandb.init(
                project=project, entity=entity, name=run_name, config=config, dir=str(self.output_dir),
                mode=self.wandb_mode, reinit="finish_previous",
            )
        except Exception as exc:  # W&B trouble must not stop training
            print(f"warning: W&B could not start ({type(exc).__name__}: {exc}); continuing without it",
                  file=sys.stderr)
            self.wandb = None

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        self._file.write(json.dumps({"step": int(step), "time": round(time.time(), 3), **clean}) + "\n")
        self._file.flush()
        self._tb.scalars(step, clean)
        if self.wandb is not None:
            try:
                self.wandb.log(clean, step=int(step))
            except Exception as exc:
                print(f"warning: W&B log failed ({exc}); continuing", file=sys.stderr)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        self._tb.close()
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as exc:
                print(f"warning: W&B finish failed ({exc})", file=sys.stderr)
            self.wandb = None


def read_metrics(output_dir) -> list[dict]:
    """The rows of `metrics.jsonl` (for reports and tests)."""
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
