"""`TrainConfig`: the settings of a training run that every backend has; each backend's own
dataclass (backends/<name>/config.py) adds its settings to them.

Every setting is a field made by `setting()`: its help text, flag group, per-backend
default and flag form live there, and the `train` flags (add_arguments), the YAML keys
(load_yaml) and the README's flag table (flag_table) are made from these fields.

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
from crane_x7_vla.backends.openvla.prompt import IMAGE_AFTER_INSTRUCTION
from crane_x7_vla.preprocess import ABSOLUTE, DELTA_ARM_ABSOLUTE_GRIPPER, REPRESENTATIONS, ImageSpec, parse_image_size

BACKENDS = ("openvla", "openpi")

# The groups of the `train` flags, in the order of the help text and the README's flag table.
GROUPS = ("data", "optimisation", "model", "output")


def setting(
    default=None,
    help: str = "",
    *,
    group: str = "model",
    per_backend: dict | None = None,
    metavar: str | None = None,
    choices=None,
    negatable: bool = False,
    default_text: str | None = None,
    flag: bool = True,
):
    """A TrainConfig field with what its flag, its YAML key and the README's flag table need.

    `per_backend`: the value a field left at None takes for each backend ({"openvla": 16,
    "openpi": 32}); a preset's own values (PRESET_DEFAULTS) win over it. `negatable`: a
    boolean flag with a --no- form; other booleans are switches that turn a setting on.
    `default_text`: the help text's default where it is not a plain value. `flag=False`: a
    setting of YAML files only."""
    meta = dict(
        help=help,
        group=group,
        per_backend=per_backend or {},
        metavar=metavar,
        choices=choices,
        negatable=negatable,
        default_text=default_text,
        flag=flag,
    )
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# Defaults of a built-in preset (a model trained from scratch, so no pretrained prompt or
# action format to stay compatible with); they take precedence over a field's per_backend value.
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

# What a setting's value may be, by the type written in the dataclass (None where it says "| None").
_KINDS = {
    "str": ((str,), "text"),
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "list[str]": ((list,), "a list of names"),
    "list[str | None]": ((list,), "a list of names or nulls"),
}


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_class(backend: str) -> type["TrainConfig"]:
    """The settings dataclass of a backend (each backend module owns its own)."""
    if backend == "openvla":
        from crane_x7_vla.backends.openvla.config import OpenVLAConfig

        return OpenVLAConfig
    if backend == "openpi":
        from crane_x7_vla.backends.openpi.config import OpenPIConfig

        return OpenPIConfig
    raise ConfigError(f"backend must be one of {BACKENDS} (got '{clip(backend)}')")


def all_fields() -> list[dataclasses.Field]:
    """Every setting of every backend once: the shared ones, then each backend's own."""
    out = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for backend in BACKENDS:
        for f in dataclasses.fields(config_class(backend)):
            out.setdefault(f.name, f)
    return list(out.values())


def owner_of(name: str) -> str | None:
    """The backend a setting belongs to (None: shared by all, or unknown)."""
    if name in {f.name for f in dataclasses.fields(TrainConfig)}:
        return None
    for backend in BACKENDS:
        if name in {f.name for f in dataclasses.fields(config_class(backend))}:
            return backend
    return None


def backend_defaults(backend: str) -> dict:
    """The value each setting left at None takes for `backend` (without a preset's)."""
    return {
        f.name: f.metadata["per_backend"][backend]
        for f in dataclasses.fields(config_class(backend))
        if backend in f.metadata.get("per_backend", {})
    }


def check_kinds(data: dict, where: str, fields=None) -> dict:
    """`data` with each value checked against its setting's kind; ConfigError naming `where`
    and the setting otherwise (a YAML file can hold anything: 'batch_size: lots'). A number
    written as text, such as YAML's 1e-4, is taken as that number."""
    out = dict(data)
    for f in fields if fields is not None else all_fields():
        if f.name not in data:
            continue
        value = data[f.name]
        kind, none = str(f.type), False
        if kind.endswith(" | None"):
            kind, none = kind[: -len(" | None")], True
        if value is None and none:
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
        if ok and kind == "list[str | None]":
            ok = all(v is None or isinstance(v, str) for v in value)
        if ok and kind == "float":
            ok = math.isfinite(value)
        if not ok:
            raise ConfigError(
                f"{where}: {f.name} ({flag_of(f.name)}) must be {what}, got {clip(json.dumps(value, default=str))}"
            )
    return out


def _given_flag(name: str, value) -> str:
    """The flag as the user gave it: --no-x for a negatable setting turned off."""
    return "--no-" + name.replace("_", "-") if value is False else flag_of(name)


@dataclass
class TrainConfig:
    """The settings every backend has. Each backend's dataclass (config_class) adds its own."""

    backend: str = setting("openvla", "model family to fine-tune (required)", group="", choices=BACKENDS)
    # ---- data
    data_root: str = setting(
        "/workspace/data/tfrecord_logs",
        "episode directory (with `dataset_statistics.json`)",
        group="data",
        metavar="PATH",
    )
    instruction: str = setting(
        "Pick and place the object", "instruction for episodes recorded without one", group="data", metavar="TEXT"
    )
    image_size: str = setting("224x224", "model input size", group="data", metavar="WxH")
    crop_scale: float = setting(
        0.9, "image area kept by the random training crop; the same centre crop at inference", group="data"
    )
    color_jitter: float = setting(0.1, "brightness/contrast jitter while training, 0 = off", group="data")
    cameras: list[str] | None = setting(
        None,
        "cameras fed to the model, in order; not set: every camera the episodes share",
        group="data",
        metavar="NAME",
    )
    val_ratio: float = setting(0.1, "share of episodes held out for validation", group="data")
    noop_threshold: float | None = setting(
        None,
        "leave out steps whose action moves no joint by more than RAD (waiting, pauses, holding at the goal); "
        "0 keeps every step; `0.002` for the openvla `tiny` preset",
        group="data",
        metavar="RAD",
        per_backend={"openvla": 0.0, "openpi": 0.0},
    )
    num_workers: int = setting(2, "threads preparing batches ahead of the trainer", group="data")
    prefetch_batches: int = setting(4, "batches prepared ahead", group="data", flag=False)
    # ---- optimisation
    batch_size: int | None = setting(
        None,
        "samples per optimizer micro-step and process (per GPU for openvla)",
        group="optimisation",
        per_backend={"openvla": 16, "openpi": 32},
    )
    num_epochs: int = setting(100, "passes over the training episodes", group="optimisation")
    max_steps: int | None = setting(None, "optimizer steps; when given, replaces `--num-epochs`", group="optimisation")
    learning_rate: float | None = setting(
        None, "peak learning rate (AdamW)", group="optimisation", per_backend={"openvla": 5e-4, "openpi": 3e-4}
    )
    lr_scheduler: str = setting(
        "cosine", "decay after warmup", group="optimisation", choices=("cosine", "linear", "constant")
    )
    warmup_ratio: float = setting(0.1, "share of steps with a linear warmup", group="optimisation")
    weight_decay: float = setting(0.0, "AdamW weight decay", group="optimisation")
    max_grad_norm: float = setting(1.0, "gradient clipping, 0 = off", group="optimisation")
    grad_accumulation_steps: int = setting(1, "batches per optimizer step", group="optimisation")
    gradient_checkpointing: bool = setting(
        False, "recompute activations in the backward pass to save memory", group="optimisation"
    )
    seed: int = setting(42, "seed for split, order, augmentation and initialisation", group="optimisation")
    # ---- model
    model: str | None = setting(
        None,
        "base model: a preset (`tiny` runs on a CPU), a local path or a hub id",
        metavar="NAME|PATH|HUB_ID",
        per_backend={"openvla": "openvla/openvla-7b", "openpi": "pi0"},
    )
    use_lora: bool = setting(True, "train LoRA adapters instead of all weights", negatable=True)
    lora_rank: int = setting(32, "LoRA rank")
    lora_alpha: int = setting(64, "LoRA alpha")
    lora_dropout: float = setting(0.1, "LoRA dropout")
    merge_lora: bool = setting(False, "also write LoRA-merged full weights to `checkpoint-final/merged`")
    action_horizon: int | None = setting(
        None,
        "actions predicted per call, a chunk of future steps (openvla: 8 tokens per chunk step; OpenVLA-7B was "
        "trained with 1)",
        per_backend={"openvla": 1, "openpi": 10},
    )
    action_representation: str | None = setting(
        None,
        "what the model predicts: absolute joint targets, or arm deltas from the current state with the "
        "gripper absolute (delta statistics computed at training start, stored in the checkpoint); the openvla "
        "`tiny` preset uses `delta_arm_absolute_gripper`; openpi predicts `delta_arm_absolute_gripper` only",
        choices=REPRESENTATIONS,
        per_backend={"openvla": ABSOLUTE, "openpi": DELTA_ARM_ABSOLUTE_GRIPPER},
    )
    freeze_vision: bool = setting(
        False,
        "keep the image encoder as the base model has it (a pretrained one, e.g. from `crane-x7-vla "
        "pretrain`); only the rest of the model learns",
    )
    goal_scenes: int = setting(
        0,
        "with the goal point learned (openvla `--goal-tokens`, openpi `--goal-dims`): also train it on N simulated "
        "pictures of `--goal-scenes-task`, labelled with the named cube's place (no demonstration, no actions "
        "learned), a small stand-in for a pretrained model's knowledge of where things are",
        metavar="N",
    )
    goal_scenes_task: str = setting("reach", "the simulated task those pictures show", metavar="TASK")
    goal_scenes_alone: float = setting(
        0.0,
        "share of those pictures that show the named cube alone, the others out of sight: reading where *a* "
        "cube is pays off before choosing among several by colour does",
        metavar="SHARE",
    )
    goal_scenes_near: float = setting(
        0.0,
        "share of those pictures with the hand a few cm beside and above a cube (the named one or another, "
        "posed by inverse kinematics): the goal is the named cube wherever the hand is, not where the hand has "
        "come to",
        metavar="SHARE",
    )
    precision: str = setting("auto", "`auto` = bf16 on a GPU, fp32 on a CPU", choices=("auto", "bf16", "fp32"))
    device: str = setting("auto", "`auto`, `cpu`, `cuda` or `cuda:N`")
    # ---- output
    experiment_name: str | None = setting(
        None, "run name", group="output", metavar="NAME", default_text="crane_x7_{backend}"
    )
    output_dir: str | None = setting(
        None,
        "where checkpoints and logs go (`/workspace/outputs/{experiment_name}`)",
        group="output",
        metavar="PATH",
        default_text="/workspace/outputs/{experiment_name}",
    )
    save_steps: int = setting(500, "write `checkpoint-N` every N optimizer steps", group="output")
    logging_steps: int = setting(10, "log metrics every N steps", group="output")
    eval_steps: int = setting(0, "validation metrics every N steps, 0 = at the end only", group="output")
    eval_samples: int = setting(64, "samples per split for validation metrics", group="output")
    use_wandb: bool = setting(False, "also log to Weights & Biases (offline without an API key)", group="output")
    wandb_project: str = setting("crane_x7_vla", "W&B project", group="output")
    wandb_entity: str | None = setting(None, "W&B entity; not set: your default entity", group="output")
    resume_from_checkpoint: str | None = setting(
        None, "continue a run exactly from its `checkpoint-N` directory", group="output", metavar="PATH"
    )

    # ---- derived -------------------------------------------------------------------------
    @property
    def image_spec(self) -> ImageSpec:
        w, h = parse_image_size(self.image_size)
        return ImageSpec(width=w, height=h, crop_scale=self.crop_scale, color_jitter=self.color_jitter)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "config") -> "TrainConfig":
        """The settings of `data` (flat, as flags and YAML keys name them) in the dataclass of
        their backend. A setting of another backend or an unknown one is a ConfigError."""
        data = dict(data)
        if cls is TrainConfig:
            backend = data.get("backend", "openvla")
            if backend not in BACKENDS:
                raise ConfigError(f"{where}: backend must be one of {BACKENDS} (got '{clip(backend)}')")
            cls = config_class(backend)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        backend = data.get("backend", cls.backend)
        for name in unknown:
            owner = owner_of(name)
            if owner is not None and owner != backend:
                raise ConfigError(
                    f"{where}: {_given_flag(name, data[name])} is for the {owner} backend "
                    f"(this run is --backend {backend})"
                )
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")
        return cls(**check_kinds(data, where, dataclasses.fields(cls)))

    @classmethod
    def from_checkpoint(cls, data: dict, *, where: str = "train_config") -> "TrainConfig":
        """A checkpoint's stored settings, also as older checkpoints stored them: every
        backend's settings in one flat mapping and the openpi settings under `extra`."""
        data = dict(data)
        extra = data.pop("extra", None) or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"{where}: extra must be a mapping (got {clip(json.dumps(extra, default=str))})")
        backend = data.get("backend", "openvla")
        target = config_class(backend) if backend in BACKENDS else TrainConfig
        names = {f.name for f in dataclasses.fields(target)}
        for name in list(data):
            owner = owner_of(name)
            if owner is not None and owner != backend:
                data.pop(name)  # stored at its neutral value by a checkpoint of the other backend
        for key, value in extra.items():
            if key == "freeze_vision":
                data["freeze_vision"] = bool(data.get("freeze_vision")) or bool(value)
            elif key in names:
                data[key] = value
            else:
                raise ConfigError(f"{where}: extra.{key} is not a setting of the {backend} backend")
        return TrainConfig.from_dict(data, where=where)

    def resolved(self) -> "TrainConfig":
        """Fill per-backend and preset defaults and check every value; returns a new config of
        the backend's own dataclass."""
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS} (got '{self.backend}')")
        cls = config_class(self.backend)
        own = {f.name for f in dataclasses.fields(cls)}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        stray = sorted(n for n in values if n not in own)
        if stray:
            raise ConfigError(
                f"{_given_flag(stray[0], values[stray[0]])} is for the {owner_of(stray[0])} backend "
                f"(this run is --backend {self.backend})"
            )
        values = {k: list(v) if isinstance(v, list) else v for k, v in values.items()}
        cfg = cls(**values)
        if cfg.model is None:
            cfg.model = backend_defaults(cfg.backend)["model"]
        preset = preset_of(cfg.model)
        defaults = {**backend_defaults(cfg.backend), **PRESET_DEFAULTS.get((cfg.backend, preset), {})}
        for key, value in defaults.items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        if cfg.experiment_name is None:
            cfg.experiment_name = f"crane_x7_{cfg.backend}"
        if cfg.output_dir is None:
            cfg.output_dir = f"/workspace/outputs/{cfg.experiment_name}"
        cfg.validate()
        return cfg

    def positive(self, name: str, allow_zero: bool = False) -> None:
        """ConfigError unless the setting is > 0 (>= 0 with allow_zero)."""
        v = getattr(self, name)
        if v is None or v < 0 or (v == 0 and not allow_zero):
            raise ConfigError(f"{flag_of(name)} must be {'>= 0' if allow_zero else '> 0'} (got {v})")

    def validate(self) -> None:
        positive = self.positive
        if self.goal_scenes < 0:
            raise ConfigError(f"--goal-scenes must be 0 or more (got {self.goal_scenes})")
        for flag in ("alone", "near"):
            share = getattr(self, f"goal_scenes_{flag}")
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"--goal-scenes-{flag} is a share of the goal scenes, 0..1 (got {share})")
        try:
            parse_image_size(self.image_size)
        except ValueError as exc:
            raise ConfigError(f"--image-size: {exc}") from None
        for name in (
            "batch_size",
            "num_epochs",
            "learning_rate",
            "grad_accumulation_steps",
            "save_steps",
            "logging_steps",
            "lora_rank",
            "lora_alpha",
            "action_horizon",
            "eval_samples",
            "prefetch_batches",
        ):
            positive(name)
        for name in ("eval_steps", "num_workers", "weight_decay", "max_grad_norm", "noop_threshold"):
            positive(name, allow_zero=True)
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
            raise ConfigError(
                f"--action-representation must be one of {', '.join(REPRESENTATIONS)} "
                f"(got '{self.action_representation}')"
            )
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


# ---- flags and the README's flag table, from the field definitions ------------------------------


def _kind(f: dataclasses.Field) -> str:
    """The field's type without its "| None"."""
    kind = str(f.type)
    return kind[: -len(" | None")] if kind.endswith(" | None") else kind


def meaning(f: dataclasses.Field) -> str:
    """A setting's help text, naming the backend a backend's own setting belongs to."""
    owner, text = owner_of(f.name), f.metadata["help"]
    if owner is None:
        return text
    return f"{owner} {text}" if text.startswith("with ") else f"{owner}: {text}"


def _flag_type(f: dataclasses.Field):
    kind = _kind(f)
    if kind == "int":
        return lambda text: _parse_number(text, int)
    if kind == "float":
        return lambda text: _parse_number(text, float)
    if kind == "list[str | None]":
        return lambda text: None if text.lower() in ("none", "null") else text
    return None


def _parse_number(text: str, kind):
    import argparse

    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {clip(text)!r}") from None


def _show(value) -> str:
    return " / ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def default_text(f: dataclasses.Field) -> str | None:
    """A setting's default as the help text shows it."""
    meta = f.metadata
    if meta["default_text"]:
        return meta["default_text"]
    per = meta["per_backend"]
    if per:
        backends = [b for b in BACKENDS if b in per]
        if len(backends) == 1:
            return _render(per[backends[0]])
        if len({str(per[b]) for b in backends}) == 1:
            return _render(per[backends[0]])
        return f"{' / '.join(str(per[b]) for b in backends)} for {' / '.join(backends)}"
    return None if f.default is None else _render(f.default)


def _render(value) -> str:
    if value is True:
        return "on"
    if value is False:
        return "off"
    return str(value)


def add_arguments(parser) -> None:
    """The `train` flags of every setting with a flag. Defaults are NOT set here (the help text
    shows them), so a flag the user did not give can be told apart from one that repeats a default."""
    import argparse

    S = argparse.SUPPRESS
    groups = {"": parser}
    for f in all_fields():
        meta = f.metadata
        if not meta["flag"]:
            continue
        group = meta["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        kw: dict = {"help": meaning(f).replace("`", "").replace("%", "%%")}
        if f.name == "backend":
            groups[group].add_argument(flag_of(f.name), choices=meta["choices"], required=True, **kw)
            parser.add_argument(
                "--config",
                metavar="FILE.yaml",
                default=S,
                help="settings file (keys as the flags, e.g. batch_size: 8); flags override it",
            )
            continue
        shown = default_text(f)
        kw["help"] += f" (default: {shown if shown is not None else 'not set'})"
        kind = _kind(f)
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction if meta["negatable"] else "store_true"
        else:
            if meta["choices"]:
                kw["choices"] = meta["choices"]
            if meta["metavar"]:
                kw["metavar"] = meta["metavar"]
            if kind.startswith("list"):
                kw["nargs"] = "+"
            if _flag_type(f) is not None:
                kw["type"] = _flag_type(f)
        groups[group].add_argument(flag_of(f.name), default=S, **kw)


def _label(f: dataclasses.Field) -> str:
    meta, flag = f.metadata, flag_of(f.name)
    if meta["negatable"]:
        return f"`{flag}` / `--no-{flag[2:]}`"
    if meta["metavar"]:
        value = meta["metavar"].replace("|", "\\|")
        return f"`{flag} {value} [{value} ...]`" if _kind(f).startswith("list") else f"`{flag} {value}`"
    if meta["choices"] and f.name != "backend":
        return f"`{flag} {{{','.join(meta['choices'])}}}`"
    return f"`{flag}`"


def flag_table() -> str:
    """The README's `train` flag table: one row per flag with its default for each backend
    (— where it is not set or not a setting of that backend) and its meaning."""
    resolved = {b: TrainConfig(backend=b).resolved() for b in BACKENDS}

    def cell(backend, f):
        value = getattr(resolved[backend], f.name, None)
        if value is None:
            return "—"
        return _render(value) if isinstance(value, bool) else f"`{_show(value)}`"

    rows = ["| flag | openvla | openpi | meaning |", "|---|---|---|---|"]
    fields = sorted(
        (f for f in all_fields() if f.metadata["flag"]),
        key=lambda f: GROUPS.index(f.metadata["group"]) + 1 if f.metadata["group"] else 0,
    )
    for f in fields:
        text = meaning(f).replace("|", "\\|")
        rows.append(f"| {_label(f)} | {cell('openvla', f)} | {cell('openpi', f)} | {text} |")
        if f.name == "backend":
            rows.append("| `--config FILE.yaml` | — | — | settings file; flags given on the command line override it |")
    return "\n".join(rows) + "\n"


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
    if isinstance(data.get("extra"), dict):
        keys = ", ".join(f"{k}: ..." for k in data["extra"]) or "each setting"
        raise ConfigError(f"{path}: `extra:` holds no settings; write {keys} at the top level")
    names = {f.name for f in all_fields()}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {unknown}")
    return check_kinds(data, str(path))
