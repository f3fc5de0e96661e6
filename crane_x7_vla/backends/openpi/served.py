"""An openpi checkpoint directory served as it is (`crane-x7-vla serve DIR`, `load_policy(DIR)`).

A directory in openpi's on-disk layout (no policy_config.json) is

    DIR/params/                       orbax PyTree {"params": tree}: π0's weights, LoRA adapters included
    DIR/assets/<asset_id>/norm_stats.json

(a training step directory of openpi, a released checkpoint such as pi0_base, or this
backend's export, which adds crane_x7_vla_export.json and the tokenizer file). The network's
sizes, the LoRA ranks and the places of adapters come from the weights (openpi_import.infer_config),
the image size from the learned positions of the vision encoder, the normalisation from the
norm stats (z-score, openpi's π0), and openpi's π0 conventions apply: prompt format,
resize-with-pad, three image slots.

What the weights cannot tell comes from serving options (`crane-x7-vla serve` flags; the same
keys in `load_policy(..., openpi={...})`); an export's crane_x7_vla_export.json gives its own
values first:

    asset_id          --asset-id           the norm stats under assets/ (default: the only one, else crane_x7)
    tokenizer         --tokenizer          PaliGemma's tokenizer (.model or tokenizer.json); default: one in DIR
    image_slots       --image-slots        a camera per openpi image slot (base, left wrist, right wrist),
                                           '-' for none (default primary,-,-)
    action_dims       --action-dims        the positions of the CRANE-X7's 8 joint targets among the
                                           model's actions (default 0-7)
    state_dims        --state-dims         the same for the state (default: --action-dims)
    absolute_actions  --absolute-actions   the model's actions are absolute joint targets (default: arm
                                           joints as deltas from the state, gripper absolute)
    action_horizon    --action-horizon     steps per chunk (default 50, openpi's π0)
    max_token_len     --max-token-len      prompt tokens (default 48, openpi's π0)
    control_rate_hz   --control-rate-hz    steps per second of the chunk (default 10)

This module reads JSON and orbax metadata only; the weights are read by the policy.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from crane_x7_vla.backends.openpi.openpi_import import (
    OpenpiCheckpoint,
    OpenpiCheckpointError,
    _is_orbax,
    infer_config,
    read_norm_stats,
)
from crane_x7_vla.checkpoint_contract import FORMAT_VERSION, CheckpointError, has_policy_config

LAYOUT = "openpi"  # policy_config.json's openpi.layout for a directory served as it is
EXPORT_FILE = "crane_x7_vla_export.json"
TOKENIZER_NAMES = ("tokenizer.model", "tokenizer.json", "paligemma_tokenizer.model")
DEFAULT_ASSET_ID = "crane_x7"
#: flag of each serving option (one-line errors name the flag)
FLAGS = {
    "asset_id": "--asset-id",
    "tokenizer": "--tokenizer",
    "image_slots": "--image-slots",
    "action_dims": "--action-dims",
    "state_dims": "--state-dims",
    "absolute_actions": "--absolute-actions",
    "action_horizon": "--action-horizon",
    "max_token_len": "--max-token-len",
    "control_rate_hz": "--control-rate-hz",
}
DEFAULTS = {
    "image_slots": "primary,-,-",
    "action_horizon": 50,
    "max_token_len": 48,
    "control_rate_hz": 10.0,
    "num_inference_steps": 10,
}


class OpenpiDirError(CheckpointError):
    """An openpi directory that cannot be served with these options; the message names the file or flag."""


def is_openpi_dir(path) -> bool:
    """A directory with openpi parameters (params/ as an orbax directory) and no policy_config.json."""
    path = Path(path)
    if has_policy_config(path) or not path.is_dir():
        return False
    params = path / "params"
    return params.is_dir() and _is_orbax(params)


def parse_dims(text, flag: str, n: int) -> tuple[int, ...]:
    """'0-7' / '0,1,2,3,4,5,6,13' / a list -> n positions; raises OpenpiDirError naming the flag."""
    if isinstance(text, (list, tuple)):
        parts = [str(v) for v in text]
    else:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
    out = []
    try:
        for part in parts:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-"))
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise OpenpiDirError(f"{flag}: expected positions such as 0-7 or 0,1,2,3,4,5,6,13 (got {text!r})") from None
    if len(out) != n or len(set(out)) != n or min(out) < 0:
        raise OpenpiDirError(
            f"{flag}: give {n} different positions >= 0, one per joint of the CRANE-X7 (got {len(out)}: {out})"
        )
    return tuple(out)


def parse_slots(text, flag: str = FLAGS["image_slots"]) -> tuple:
    from crane_x7_vla.backends.openpi.conventions import OPENPI_IMAGE_SLOTS

    parts = list(text) if isinstance(text, (list, tuple)) else str(text).split(",")
    slots = tuple(None if p in (None, "", "-") else str(p).strip() for p in parts)
    if len(slots) != len(OPENPI_IMAGE_SLOTS) or not any(slots):
        raise OpenpiDirError(
            f"{flag}: give a camera name or '-' for each of openpi's image slots "
            f"{', '.join(OPENPI_IMAGE_SLOTS)}, e.g. primary,wrist,- (got {text!r})"
        )
    named = [s for s in slots if s]
    if len(set(named)) != len(named):
        raise OpenpiDirError(f"{flag}: a camera fills one slot only (got {text!r})")
    return slots


def _positive(value, flag: str, kind=int):
    try:
        out = kind(value)
    except (TypeError, ValueError):
        out = None
    if out is None or not out > 0 or (kind is float and not math.isfinite(out)):
        raise OpenpiDirError(f"{flag}: must be a number above 0 (got {value!r})")
    return out


def _choose_asset(ck: OpenpiCheckpoint, wanted) -> str:
    ids = ck.asset_ids()
    if wanted:
        if wanted not in ids:
            raise OpenpiDirError(
                f"{FLAGS['asset_id']} {wanted}: {ck.assets_dir / wanted / 'norm_stats.json'} not found "
                f"(assets with norm stats: {', '.join(ids) or 'none'})"
            )
        return wanted
    if len(ids) == 1:
        return ids[0]
    if DEFAULT_ASSET_ID in ids:
        return DEFAULT_ASSET_ID
    if not ids:
        raise OpenpiDirError(
            f"{ck.assets_dir}: no assets/<asset_id>/norm_stats.json, so the model's actions cannot be "
            f"un-normalised; openpi writes them beside params/"
        )
    raise OpenpiDirError(
        f"{ck.assets_dir}: norm stats of {len(ids)} assets ({', '.join(ids)}); choose one with {FLAGS['asset_id']}"
    )


def _tokenizer(directory: Path, wanted, export: dict) -> Path:
    if wanted:
        path = Path(wanted).expanduser()
        if not path.is_file():
            raise OpenpiDirError(f"{FLAGS['tokenizer']} {wanted}: no such file")
        return path.resolve()
    names = ([export["tokenizer_file"]] if export.get("tokenizer_file") else []) + list(TOKENIZER_NAMES)
    for name in names:
        if (directory / name).is_file():
            return (directory / name).resolve()
    raise OpenpiDirError(
        f"{directory}: openpi checkpoints carry no tokenizer; give PaliGemma's with "
        f"{FLAGS['tokenizer']} PATH (paligemma_tokenizer.model or a tokenizer.json)"
    )


def _stat_subset(entry: dict, dims, where: str, flag: str) -> dict:
    n = len(next(iter(entry.values())))
    if max(dims) >= n:
        raise OpenpiDirError(f"{flag}: position {max(dims)} is beyond the {n} values of {where}")
    return {k: [float(v[d]) for d in dims] for k, v in entry.items()}


def openpi_policy_config(directory, options: dict | None = None, *, joint_names=None) -> dict:
    """policy_config.json for an openpi directory served as it is (see the module docstring)."""
    from crane_x7_vla import robot
    from crane_x7_vla.backends.openpi import conventions as cv
    from crane_x7_vla.backends.openpi.presets import PI0, ModelConfig
    from crane_x7_vla.backends.openpi.transforms import DELTA_MASK, ActionSpace

    directory = Path(directory).resolve()
    options = {k: v for k, v in (options or {}).items() if v is not None and v is not False}
    unknown = sorted(set(options) - set(FLAGS) - {"num_inference_steps"})
    if unknown:
        raise OpenpiDirError(f"unknown openpi serving option(s) {unknown}; known: {sorted(FLAGS)}")
    export = {}
    if (directory / EXPORT_FILE).is_file():
        try:
            export = json.loads((directory / EXPORT_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise OpenpiDirError(f"{directory / EXPORT_FILE}: not readable JSON ({exc})") from None
    n = robot.ACTION_DIM
    joint_names = list(joint_names or robot.JOINT_NAMES)
    if export.get("joint_names") and list(export["joint_names"]) != joint_names:
        raise OpenpiDirError(
            f"{directory / EXPORT_FILE}: exported for joints {export['joint_names']}, this robot has {joint_names}"
        )
    try:
        ck = OpenpiCheckpoint(directory)
        shapes = ck.shapes()
    except OpenpiCheckpointError as exc:
        raise OpenpiDirError(str(exc)) from None
    ex_model = export.get("model_config") or {}
    ex_space = export.get("action_space") or {}
    ex_conv = export.get("conventions") or {}

    # images: the side that gives the checkpoint's number of learned positions
    try:
        (patch, *_), (_, n_pos, _) = shapes["PaliGemma/img/embedding/kernel"], shapes["PaliGemma/img/pos_embedding"]
    except (KeyError, ValueError):
        raise OpenpiDirError(
            f"{ck.params_dir}: no PaliGemma/img/embedding/kernel and pos_embedding; not a π0 checkpoint"
        )
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise OpenpiDirError(f"{ck.params_dir}: PaliGemma/img/pos_embedding holds {n_pos} positions, not a square grid")
    horizon = _positive(
        options.get("action_horizon", ex_space.get("horizon", DEFAULTS["action_horizon"])), FLAGS["action_horizon"]
    )
    max_len = _positive(
        options.get("max_token_len", ex_model.get("max_token_len", DEFAULTS["max_token_len"])), FLAGS["max_token_len"]
    )
    rate = _positive(
        options.get("control_rate_hz", export.get("control_rate_hz", DEFAULTS["control_rate_hz"])),
        FLAGS["control_rate_hz"],
        float,
    )
    steps = _positive(options.get("num_inference_steps", DEFAULTS["num_inference_steps"]), "num_inference_steps")
    dtype = "bfloat16" if ck.dtype("PaliGemma/img/embedding/kernel") == "bfloat16" else "float32"
    slots = parse_slots(options.get("image_slots") or ex_conv.get("image_slots") or DEFAULTS["image_slots"])
    base = replace(
        PI0,
        image_width=side * patch,
        image_height=side * patch,
        num_cameras=len(slots),
        action_horizon=horizon,
        max_token_len=max_len,
        dtype=dtype,
        lora_dropout=0.0,
    )
    try:
        mcfg = infer_config(shapes, base)
    except OpenpiCheckpointError as exc:
        raise OpenpiDirError(f"{ck.params_dir}: {exc}") from None
    if ex_model:  # an export of this backend: its LoRA scaling (alpha is not in the weights)
        saved = ModelConfig.from_dict(ex_model)
        mcfg = replace(mcfg, lora_alpha=saved.lora_alpha, expert_lora_alpha=saved.expert_lora_alpha)

    asset = _choose_asset(ck, options.get("asset_id") or export.get("asset_id"))
    stats_path = ck.assets_dir / asset / "norm_stats.json"
    try:
        stats = read_norm_stats(stats_path)
    except OpenpiCheckpointError as exc:
        raise OpenpiDirError(str(exc)) from None
    for key in ("state", "actions"):
        if key not in stats:
            raise OpenpiDirError(f"{stats_path}: norm_stats has no '{key}' entry")
    default_dims = (ex_space.get("model_dims") or {}).get("action") or tuple(range(n))
    action_dims = parse_dims(options.get("action_dims", default_dims), FLAGS["action_dims"], n)
    state_dims = parse_dims(
        options.get("state_dims", (ex_space.get("model_dims") or {}).get("state") or action_dims),
        FLAGS["state_dims"],
        n,
    )
    for flag, dims in ((FLAGS["action_dims"], action_dims), (FLAGS["state_dims"], state_dims)):
        if max(dims) >= mcfg.action_dim:
            raise OpenpiDirError(
                f"{flag}: position {max(dims)} is beyond the model's {mcfg.action_dim} action "
                f"dimensions (state_proj/kernel)"
            )
    action_stats = _stat_subset(stats["actions"], action_dims, f"{stats_path} norm_stats.actions", FLAGS["action_dims"])
    state_stats = _stat_subset(stats["state"], state_dims, f"{stats_path} norm_stats.state", FLAGS["state_dims"])
    if options.get("absolute_actions"):
        mask = np.zeros(n, bool)
    elif ex_space.get("delta_mask") is not None:
        mask = np.asarray(ex_space["delta_mask"], bool)
    else:
        mask = DELTA_MASK.copy()
    space = ActionSpace(
        horizon,
        mcfg.action_dim,
        action_stats,
        state_stats,
        mask=mask,
        normalization="zscore",
        state_from_dataset=False,
        action_dims=action_dims,
        state_dims=state_dims,
    )
    conv = cv.Conventions("zscore", "openpi", "pad", slots, "all_dims")
    cameras = [s for s in slots if s]

    fingerprint = "openpi-" + hashlib.sha256(stats_path.read_bytes()).hexdigest()[:16]
    # The loader's statistics check reads q01/q99 of absolute joint positions: the state's
    # (absolute targets live in the same space); mean -/+ 3 std where the file has no quantiles.
    mean, std = np.asarray(state_stats["mean"]), np.asarray(state_stats["std"])
    q01, q99 = state_stats.get("q01", mean - 3 * std), state_stats.get("q99", mean + 3 * std)
    absolute = {"q01": [float(x) for x in q01], "q99": [float(x) for x in q99]}
    config = {
        "format_version": FORMAT_VERSION,
        "backend": "openpi",
        "base_model": str(directory),
        "image_spec": {
            "width": mcfg.image_width,
            "height": mcfg.image_height,
            "crop_scale": 1.0,
            "color_jitter": 0.0,
            "resize": "pad",
        },
        "cameras": cameras,
        "joint_names": joint_names,
        "action_space": space.to_dict(),
        "normalization": {"mode": "zscore"},
        "dataset_statistics": {
            "action": dict(absolute),
            "proprio": dict(absolute),
            "fingerprint": fingerprint,
            "source": str(stats_path),
        },
        "statistics_fingerprint": fingerprint,
        "default_instruction": export.get("default_instruction") or "",
        "control_rate_hz": rate,
        "step": int(directory.name) if directory.name.isdigit() else None,
        "openpi": {
            "layout": LAYOUT,
            "params_dir": str(ck.params_dir),
            "asset_id": asset,
            "model_config": mcfg.to_dict(),
            "conventions": conv.to_dict(),
            "num_inference_steps": steps,
            "tokenizer_path": str(_tokenizer(directory, options.get("tokenizer"), export)),
        },
    }
    return json.loads(json.dumps(config))  # as policy_config.json would read
