"""`TrainConfig`: every setting of a training run, shared by both backends.

Precedence: dataclass defaults < per-backend defaults < `--config FILE.yaml` < flags.
The config is stored in every checkpoint (`policy_config.json` -> "train_config"),
so a run can be reproduced or resumed from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from crane_x7_vla.errors import ConfigError
from crane_x7_vla.messages import clip
from crane_x7_vla.backends.openvla.prompt import IMAGE_AFTER_INSTRUCTION, IMAGE_FIRST, IMAGE_POSITIONS
from crane_x7_vla.preprocess import ABSOLUTE, DELTA_ARM_ABSOLUTE_GRIPPER, REPRESENTATIONS, ImageSpec, parse_image_size

BACKENDS = ("openvla", "openpi")

# Values that differ between backends; `None` in TrainConfig means "take it from here".
BACKEND_DEFAULTS: dict[str, dict] = {
    "openvla": {
        "batch_size": 16,
        "learning_rate": 5e-4,
        "model": "openvla/openvla-7b",
        "action_horizon": 1,
        # as OpenVLA-7B was trained: absolute targets from image + instruction only
        "action_representation": ABSOLUTE,
        "state_in_prompt": False,
        "noop_threshold": 0.0,
        "action_label_sigma": 0.0,  # one-hot bin targets, as OpenVLA
        "image_position": IMAGE_FIRST,  # as Llava-family models are trained
        "goal_tokens": False,  # as OpenVLA-7B was trained: actions only
        "goal_before_state": True,  # with goal tokens and the state in the prompt (prompt.GOAL_FIRST_TEMPLATE)
        "normalize_gripper": True,  # every action dimension normalised with q01/q99
    },
    "openpi": {
        "batch_size": 32,
        "learning_rate": 3e-4,
        "model": "pi0",
        "action_horizon": 10,
        "action_representation": DELTA_ARM_ABSOLUTE_GRIPPER,  # the only one the openpi backend has
        "state_in_prompt": False,  # the state is a model input of its own
        "noop_threshold": 0.0,
        "action_label_sigma": 0.0,  # continuous actions: no bins
        "goal_tokens": False,
        "goal_before_state": False,
        "normalize_gripper": True,
    },
}

# Defaults of a built-in preset (a model trained from scratch, so no pretrained prompt or
# action format to stay compatible with); they take precedence over BACKEND_DEFAULTS.
# The tiny preset learns far better with the state in its prompt and delta arm actions:
# from 64x64 pixels alone it cannot tell the arm's pose precisely enough to name the next
# absolute target, while "move by this much from the given state" is what the
# demonstrations actually vary in.
PRESET_DEFAULTS: dict[tuple[str, str], dict] = {
    ("openvla", "tiny"): {
        "action_representation": DELTA_ARM_ABSOLUTE_GRIPPER,
        "state_in_prompt": True,
        "noop_threshold": 0.002,
        # Trained from scratch, 256 one-hot classes per joint learn slowly; a Gaussian over
        # neighbouring bins tells the model that bins are ordered (closed-loop reach 15 -> 20 %).
        "action_label_sigma": 2.0,
        # The picture after the instruction: a language model trained from scratch learns to
        # find the named cube this way and not with the picture first (see backends/openvla/prompt.py).
        "image_position": IMAGE_AFTER_INSTRUCTION,
    },
}


def preset_of(model: str | None) -> str | None:
    """The preset a base model was built from: its name, or for a local model directory
    written by `crane-x7-vla pretrain` the preset named in its pretraining.json (it keeps
    that preset's defaults)."""
    if model is None:
        return None
    marker = Path(model).expanduser() / "pretraining.json"
    if marker.is_file():
        try:
            return json.loads(marker.read_text()).get("preset")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{marker}: not readable JSON ({exc})") from None
    return model


DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# What a setting's value may be, by the type written in TrainConfig (None where it says "| None").
_KINDS = {
    "str": ((str,), "text"),
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "list[str]": ((list,), "a list of names"),
    "dict": ((dict,), "a mapping"),
}


def check_kinds(data: dict, where: str) -> dict:
    """`data` with each value checked against its setting's kind; ConfigError naming `where`
    and the setting otherwise (a YAML file can hold anything: 'batch_size: lots'). A number
    written as text, such as YAML's 1e-4, is taken as that number."""
    out = dict(data)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in data:
            continue
        value = data[f.name]
        kind, _, none = str(f.type).partition(" | ")
        if value is None and none == "None":
            continue
        types, what = _KINDS[kind]
        if kind == "float" and isinstance(value, str):
            try:
                value = out[f.name] = float(value)
            except ValueError:
                pass
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if ok and kind == "list[str]":
            ok = all(isinstance(v, str) for v in value)
        if ok and kind == "float":
            ok = math.isfinite(value)
        if not ok:
            flag = "--" + f.name.replace("_", "-")
            raise ConfigError(f"{where}: {f.name} ({flag}) must be {what}, got {clip(json.dumps(value, default=str))}")
    return out


@dataclass
class TrainConfig:
    backend: str = "openvla"
    data_root: str = "/workspace/data/tfrecord_logs"
    instruction: str = "Pick and place the object"  # used where an episode has none
    image_size: str = "224x224"  # WIDTHxHEIGHT fed to the model
    crop_scale: float = 0.9  # area kept by the training crop (centre crop at inference)
    color_jitter: float = 0.1  # brightness/contrast jitter at training, 0 = off
    cameras: list[str] | None = None  # camera names fed to the model; None = all in the episodes
    batch_size: int | None = None  # per process (per GPU)
    num_epochs: int = 100
    max_steps: int | None = None  # optimizer steps; overrides num_epochs when set
    learning_rate: float | None = None
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"  # cosine | linear | constant (after warmup)
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    grad_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    use_lora: bool = True
    lora_rank: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.1
    merge_lora: bool = False  # also write merged full weights into checkpoint-final/merged
    model: str | None = None  # preset name, hub id or local path of the base model
    attn_implementation: str | None = None  # e.g. flash_attention_2, sdpa, eager
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    action_horizon: int | None = None
    # absolute | delta_arm_absolute_gripper (arm joints relative to the current state, gripper absolute)
    action_representation: str | None = None
    state_in_prompt: bool | None = None  # openvla: the current joint state as 8 tokens in the prompt
    image_position: str | None = None  # openvla, Llava family: first | after_instruction (the image tokens)
    freeze_vision: bool = False  # keep the image encoder's weights as the base model has them
    goal_tokens: bool | None = None  # openvla: write the goal point (3 tokens) before the actions
    goal_before_state: bool | None = None  # openvla, goal tokens + state in prompt: the goal comes before the state
    normalize_gripper: bool | None = None  # openvla: normalise the gripper with q01/q99 too (OpenVLA's mask)
    goal_scenes: int = 0  # openvla with goal_tokens: simulated pictures of goal_scenes_task labelled with the goal
    goal_scenes_task: str = "reach"  # the simulated task those pictures show
    goal_scenes_alone: float = 0.0  # share of the goal scenes that show the named cube alone
    goal_scenes_near: float = 0.0  # share of the goal scenes with the hand near a cube
    goal_warmup_steps: int = 0  # the first N steps train on the goal scenes only
    goal_warmup_lr: float | None = None  # their constant learning rate (None: learning_rate)
    experiment_name: str | None = None  # crane_x7_{backend}
    output_dir: str | None = None  # /workspace/outputs/{experiment_name}
    save_steps: int = 500
    logging_steps: int = 10
    eval_steps: int = 0  # validation every N optimizer steps (0: only at the end)
    eval_samples: int = 64  # samples per split for validation metrics
    use_wandb: bool = False
    wandb_project: str = "crane_x7_vla"
    wandb_entity: str | None = None
    resume_from_checkpoint: str | None = None
    seed: int = 42
    val_ratio: float = 0.1  # share of EPISODES held out for validation
    noop_threshold: float | None = None  # rad; train only on steps whose action moves a joint more than this
    action_label_sigma: float | None = None  # bins; Gaussian soft targets over neighbouring action bins (0: one-hot)
    goal_label_sigma: float | None = None  # bins, on the goal tokens (None: as action_label_sigma)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 2  # threads preparing samples in the background
    prefetch_batches: int = 4
    extra: dict = field(default_factory=dict)  # backend-specific settings

    # ---- derived -------------------------------------------------------------------------
    @property
    def image_spec(self) -> ImageSpec:
        w, h = parse_image_size(self.image_size)
        return ImageSpec(width=w, height=h, crop_scale=self.crop_scale, color_jitter=self.color_jitter)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "config") -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")
        return cls(**check_kinds(data, where))

    def resolved(self) -> "TrainConfig":
        """Fill per-backend defaults and check every value; returns a new config."""
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS} (got '{self.backend}')")
        cfg = dataclasses.replace(self, extra=dict(self.extra), cameras=None if self.cameras is None else list(self.cameras))
        if cfg.model is None:
            cfg.model = BACKEND_DEFAULTS[cfg.backend]["model"]
        preset = preset_of(cfg.model)
        defaults = {**BACKEND_DEFAULTS[cfg.backend], **PRESET_DEFAULTS.get((cfg.backend, preset), {})}
        for key, value in defaults.items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        if cfg.experiment_name is None:
            cfg.experiment_name = f"crane_x7_{cfg.backend}"
        if cfg.output_dir is None:
            cfg.output_dir = f"/workspace/outputs/{cfg.experiment_name}"
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def positive(name, allow_zero=False):
            v = getattr(self, name)
            if v is None or v < 0 or (v == 0 and not allow_zero):
                raise ConfigError(f"--{name.replace('_', '-')} must be {'>= 0' if allow_zero else '> 0'} (got {v})")

        try:
            parse_image_size(self.image_size)
        except ValueError as exc:
            raise ConfigError(f"--image-size: {exc}") from None
        for name in ("batch_size", "num_epochs", "learning_rate", "grad_accumulation_steps", "save_steps",
                     "logging_steps", "lora_rank", "lora_alpha", "action_horizon", "eval_samples",
                     "prefetch_batches"):
            positive(name)
        for name in ("eval_steps", "num_workers", "weight_decay", "max_grad_norm", "noop_threshold",
                     "action_label_sigma"):
            positive(name, allow_zero=True)
        positive("goal_warmup_steps", allow_zero=True)
        for name in ("goal_label_sigma", "goal_warmup_lr"):  # None: as --action-label-sigma / --learning-rate
            if getattr(self, name) is not None:
                positive(name, allow_zero=name == "goal_label_sigma")
        if self.max_steps is not None:
            positive("max_steps")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1) (got {self.lora_dropout})")
        if not 0.0 <= self.val_ratio < 1.0:
            raise ConfigError(f"--val-ratio must be in [0, 1) (got {self.val_ratio})")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ConfigError(f"--crop-scale must be in (0, 1] (got {self.crop_scale})")
        if not 0.0 <= self.color_jitter < 1.0:
            raise ConfigError(f"--color-jitter must be in [0, 1) (got {self.color_jitter})")
        if self.lr_scheduler not in ("cosine", "linear", "constant"):
            raise ConfigError(f"--lr-scheduler must be cosine, linear or constant (got '{self.lr_scheduler}')")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16 or fp32 (got '{self.precision}')")
        if self.merge_lora and not self.use_lora:
            raise ConfigError("--merge-lora needs LoRA training; it contradicts --no-use-lora")
        if self.action_representation is not None and self.action_representation not in REPRESENTATIONS:
            raise ConfigError(f"--action-representation must be one of {', '.join(REPRESENTATIONS)} "
                              f"(got '{self.action_representation}')")
        if self.backend == "openpi" and self.action_representation not in (None, DELTA_ARM_ABSOLUTE_GRIPPER):
            raise ConfigError(f"the openpi backend predicts {DELTA_ARM_ABSOLUTE_GRIPPER} actions only "
                              f"(got --action-representation {self.action_representation})")
        if self.backend == "openpi" and self.action_label_sigma:
            raise ConfigError("--action-label-sigma is for the openvla backend (action bins); openpi actions are continuous")
        if self.backend == "openpi" and self.state_in_prompt:
            raise ConfigError("--state-in-prompt is for the openvla backend; openpi feeds the state to the model itself")
        if self.image_position is not None and self.image_position not in IMAGE_POSITIONS:
            raise ConfigError(f"--image-position must be one of {', '.join(IMAGE_POSITIONS)} "
                              f"(got '{self.image_position}')")
        if self.backend == "openpi" and self.image_position not in (None, IMAGE_FIRST):
            raise ConfigError("--image-position is for the openvla backend; openpi places the picture itself")
        if self.goal_scenes < 0:
            raise ConfigError(f"--goal-scenes must be 0 or more (got {self.goal_scenes})")
        if self.goal_warmup_steps and not self.goal_scenes:
            raise ConfigError("--goal-warmup-steps trains on the goal scenes first: it needs --goal-scenes N")
        if self.goal_warmup_steps and self.max_steps and self.goal_warmup_steps >= self.max_steps:
            raise ConfigError(f"--goal-warmup-steps ({self.goal_warmup_steps}) must be fewer than --max-steps "
                              f"({self.max_steps}): the actions are learned after it")
        for flag in ("alone", "near"):
            share = getattr(self, f"goal_scenes_{flag}")
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"--goal-scenes-{flag} is a share of the goal scenes, 0..1 (got {share})")
        if self.backend == "openpi" and self.normalize_gripper is False:
            raise ConfigError("--no-normalize-gripper is for the openvla backend (action bins)")
        if self.backend == "openpi" and (self.goal_tokens or self.goal_scenes):
            raise ConfigError("--goal-tokens and --goal-scenes are for the openvla backend")
        if self.goal_scenes and self.goal_tokens is False:
            raise ConfigError("--goal-scenes teaches the goal tokens; it needs --goal-tokens")
        if self.cameras is not None and not self.cameras:
            raise ConfigError("--cameras needs at least one camera name")
        if self.resume_from_checkpoint and not Path(self.resume_from_checkpoint).is_dir():
            raise ConfigError(f"--resume-from-checkpoint: {self.resume_from_checkpoint} is not a directory")
        if not DEVICE_RE.match(self.device):
            raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N (got {clip(self.device)!r})")
        if self.output_dir and Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ConfigError(f"--output-dir {self.output_dir} is a file; checkpoints are written into a folder")
        if not str(self.data_root).strip():
            raise ConfigError("--data-root is empty: give the folder of recorded episodes")


def load_yaml(path: str | os.PathLike) -> dict:
    """A YAML config file as a dict of TrainConfig field names (dashes allowed)."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config: {path} is a folder; a YAML settings file is expected")
    if not path.is_file():
        raise ConfigError(f"--config: {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected YAML settings)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of setting: value at the top level")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {unknown}")
    return check_kinds(data, str(path))
