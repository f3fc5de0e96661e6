"""The training loop both trainers run: steps, the logging window, evaluation, checkpoints,
the progress bar and cleanup. A backend supplies the work through `Hooks`.

Order at each step: the optimizer step (`Hooks.train_step`), then the metrics row at every
--logging-steps (and at the last step), then checkpoint-{step} at every --save-steps, then
the validation at every --eval-steps. After the last step: checkpoint-final, then the final
validation. A failing validation is reported in one line and training goes on: checkpoints
never depend on it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from crane_x7_vla.training import metrics as mn
from crane_x7_vla.training.metrics import MetricsLogger


class Hooks:
    """What a backend does in the loop. `train_step` is required, the rest have defaults."""

    #: the progress bar's label
    desc = "train"
    #: training samples of one optimizer step, over all processes (for perf/samples_per_second)
    samples_per_step = 0

    def train_step(self, step: int) -> dict:
        """Run optimizer step number `step` (0-based); return per-step values to average over the
        logging window (metric name -> float), or {} to log only what `logged` gives."""
        raise NotImplementedError

    def logged(self, step: int) -> dict:
        """Values added to the metrics row at logging step `step` (they replace window means)."""
        return {}

    def data_wait(self) -> float:
        """Seconds spent so far waiting for training batches (a running total)."""
        return 0.0

    def postfix(self, values: dict) -> dict:
        """The progress bar's postfix from a step's values or a logged row ({}: unchanged)."""
        return {"loss": f"{values[mn.LOSS]:.4f}"} if mn.LOSS in values else {}

    def evaluate(self, step: int) -> dict:
        """Validation metrics at `step` (metric name -> float); {} logs nothing."""
        return {}

    def save(self, step: int, final: bool) -> Path:
        """Write checkpoint-{step} or, with `final`, checkpoint-final; return its directory."""
        raise NotImplementedError

    def close(self) -> None:
        """Release data streams and the like (called once, also after an error)."""


def run(cfg, hooks: Hooks, *, start_step: int, total_steps: int, main: bool = True) -> Path:
    """Train from `start_step` to `total_steps`; returns the checkpoint-final directory. Only
    the main process (`main`) writes metrics and shows progress."""
    from tqdm import tqdm

    logger = MetricsLogger(
        cfg.output_dir,
        cfg.to_dict(),
        enabled=main,
        use_wandb=cfg.use_wandb,
        wandb_project=cfg.wandb_project,
        wandb_entity=cfg.wandb_entity,
        run_name=cfg.experiment_name,
    )
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        disable=not main,
        desc=hooks.desc,
        dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )  # a log file gets a line every 30 s
    window = _Window(hooks.data_wait())
    step = start_step
    try:
        while step < total_steps:
            values = hooks.train_step(step)
            step += 1
            window.add(values)
            bar.update(1)
            if postfix := hooks.postfix(values):
                bar.set_postfix(**postfix)
            if step % cfg.logging_steps == 0 or step == total_steps:
                row = hooks.logged(step)  # before the clock stops: it may wait for the step's results
                row = {**window.means(), **window.timing(hooks.data_wait(), hooks.samples_per_step), **row}
                logger.log(step, row)
                if postfix := hooks.postfix(row):
                    bar.set_postfix(**postfix)
                window = _Window(hooks.data_wait())
            if step % cfg.save_steps == 0 and step < total_steps:
                with window.paused():
                    hooks.save(step, False)
            if cfg.eval_steps and step % cfg.eval_steps == 0 and step < total_steps:
                with window.paused():
                    _evaluate(hooks, step, logger)
        bar.close()
        # the final checkpoint is written before the final evaluation, which may take long or fail
        final = hooks.save(step, True)
        _evaluate(hooks, step, logger)
    finally:
        bar.close()
        hooks.close()
        logger.close()
    return final


def _evaluate(hooks: Hooks, step: int, logger: MetricsLogger) -> None:
    """Log the validation of `step`. A failing evaluation (out of memory, a model that cannot
    decode) is reported in one line and the run goes on."""
    try:
        values = hooks.evaluate(step)
    except Exception as exc:  # noqa: BLE001 (any failure of the evaluation, reported and survived)
        print(f"eval step {step} failed, training goes on: {type(exc).__name__}: {exc}"[:2000], file=sys.stderr)
        return
    if values:
        logger.log(step, values)
        print("eval step %d: %s" % (step, ", ".join(f"{k} {v:.4f}" for k, v in values.items())), file=sys.stderr)


class _Window:
    """The steps since the last metrics row: per-step values and the training time (without
    the time spent saving and evaluating)."""

    def __init__(self, wait0: float):
        self.values: dict[str, list[float]] = {}
        self.steps = 0
        self.start = time.perf_counter()
        self.excluded = 0.0
        self.wait0 = wait0

    def add(self, values: dict) -> None:
        self.steps += 1
        for k, v in values.items():
            self.values.setdefault(k, []).append(float(v))

    def means(self) -> dict:
        return {k: float(np.mean(v)) for k, v in self.values.items()}

    def timing(self, wait_now: float, samples_per_step: int) -> dict:
        n = max(1, self.steps)
        seconds = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        wait = wait_now - self.wait0
        return {
            mn.STEP_TIME: seconds / n,
            mn.DATA_WAIT: wait / n,
            mn.DATA_WAIT_SHARE: wait / seconds,
            mn.SAMPLES_PER_SECOND: n * samples_per_step / seconds,
        }

    def paused(self):
        return _Pause(self)


class _Pause:
    def __init__(self, window: _Window):
        self.window = window

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.window.excluded += time.perf_counter() - self.t0
        return False
