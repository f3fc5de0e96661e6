"""`OpenPIConfig`: the settings of an OpenPI training run (the shared ones and its own).

Imports no jax: the `train` flags are built from it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from crane_x7_vla.backends.openpi.conventions import CHOICES
from crane_x7_vla.preprocess import DELTA_ARM_ABSOLUTE_GRIPPER
from crane_x7_vla.training.config import ConfigError, TrainConfig, setting


@dataclass
class OpenPIConfig(TrainConfig):
    backend: str = setting("openpi", "model family to fine-tune (required)", group="", choices=("openvla", "openpi"))
    ema_decay: float = setting(
        0.99, "decay of the exponential moving average of the trained weights, which the checkpoints hold (0 = off)")
    freeze_prefix: bool = setting(
        False, "keep the image encoder and the prefix decoder as the base model has them; only the action expert "
        "learns")
    goal_dims: bool = setting(
        False, "the action expert also writes the goal point (where the hand will be at the end of the current "
        "movement, 3 values in the arm's base frame, from the recorded joint states) into 3 spare dimensions of every "
        "action, and learns it with the actions: it has to find the named object to write it; deployment ignores them")
    tokenizer: str | None = setting(
        None, "the prompt tokenizer: PaliGemma's SentencePiece model (`paligemma_tokenizer.model`) or a "
        "`tokenizer.json`; needed with openpi π0 weights; not set: one trained on this run's instructions",
        metavar="PATH")
    tokenizer_vocab: int = setting(512, "vocabulary size of the tokenizer trained on this run's instructions")
    num_inference_steps: int = setting(10, "flow-matching integration steps per predicted chunk")
    conventions: str = setting(
        "auto", "how data meets the network: this backend's own (`crane_x7`) or openpi's π0 conventions; `auto`: "
        "`openpi` for an openpi checkpoint, `crane_x7` for a preset", choices=CHOICES)
    image_slots: list[str | None] | None = setting(
        None, "with openpi's conventions: the camera in each of openpi's three image slots (base, left wrist, right "
        "wrist), `none` for an empty slot; not set: the cameras in order", metavar="NAME")
    norm_stats_asset: str | None = setting(
        None, "an asset id of `--model`'s `assets/`: its `norm_stats.json` normalises states and actions instead of "
        "statistics of this run's data", metavar="ASSET")
    fsdp_devices: int = setting(
        1, "devices the weights, gradients and optimizer state are sharded over (openpi's fsdp_devices); the other "
        "devices hold copies of these shards (the data axis); must divide the device count; see docs/distributed.md",
        group="optimisation")
    fsdp_min_mbytes: float = setting(
        4.0, "with --fsdp-devices above 1: weights smaller than this (MiB) are not sharded but copied to every "
        "device, as openpi does", group="optimisation", metavar="MIB")
    coordinator_address: str | None = setting(
        None, "HOST:PORT of process 0 in a run of several JAX processes (jax.distributed); not set: one process, "
        "or under `srun` with several tasks SLURM's own", group="optimisation", metavar="HOST:PORT")
    num_processes: int | None = setting(
        None, "with --coordinator-address: the number of processes of the run", group="optimisation", metavar="N")
    process_id: int | None = setting(
        None, "with --coordinator-address: this process's number, 0 .. N-1", group="optimisation", metavar="I")

    def validate(self) -> None:
        super().validate()
        if self.backend != "openpi":
            raise ConfigError(f"the openpi settings were given --backend {self.backend}")
        if self.action_representation not in (None, DELTA_ARM_ABSOLUTE_GRIPPER):
            raise ConfigError(f"the openpi backend predicts {DELTA_ARM_ABSOLUTE_GRIPPER} actions only "
                              f"(got --action-representation {self.action_representation})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"--ema-decay must be in [0, 1) (got {self.ema_decay})")
        self.positive("num_inference_steps")
        self.positive("fsdp_devices")
        self.positive("fsdp_min_mbytes", allow_zero=True)
        if self.num_processes is not None:
            self.positive("num_processes")
        if self.process_id is not None:
            self.positive("process_id", allow_zero=True)
        if self.coordinator_address is not None and not re.match(r"^[^:\s]+:\d+$", self.coordinator_address):
            raise ConfigError(f"--coordinator-address must be HOST:PORT (got {self.coordinator_address!r})")
        given = [f for f in ("num_processes", "process_id") if getattr(self, f) is not None]
        if self.coordinator_address is None and given:
            raise ConfigError(f"--{given[0].replace('_', '-')} needs --coordinator-address HOST:PORT (process 0's)")
        if self.coordinator_address is not None and len(given) < 2:
            raise ConfigError("--coordinator-address needs --num-processes N and --process-id I")
        if given and self.process_id >= self.num_processes:
            raise ConfigError(f"--process-id {self.process_id} must be below --num-processes {self.num_processes}")
        self.positive("tokenizer_vocab")
        if self.goal_scenes and not self.goal_dims:
            raise ConfigError("--goal-scenes teaches the goal point; it needs --goal-dims")
        if self.conventions not in CHOICES:
            raise ConfigError(f"--conventions must be one of {CHOICES} (got {self.conventions!r})")
