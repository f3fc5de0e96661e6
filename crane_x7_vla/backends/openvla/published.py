"""OpenVLA's published layout on both sides of our checkpoints.

`write_published` (used by `crane-x7-vla merge-lora`): a LoRA checkpoint trained on an
OpenVLA base model, merged and written as the published `openvla/openvla-7b` layout: the
weights under the published names, config.json with `norm_stats["crane_x7"]` (the dataset's
action q01/q99, the normalisation mask, 8 dimensions) besides the base model's own keys,
dataset_statistics.json with the same entry, the base model's processor and tokenizer files
unchanged, and its `*_prismatic.py` files when the base folder has them. OpenVLA's own code
(`AutoModelForVision2Seq.from_pretrained(DIR, trust_remote_code=True)`,
`predict_action(unnorm_key="crane_x7")`) reads that folder.

`published_policy_config`: a folder in that layout (no policy_config.json) described as a
policy, so `crane-x7-vla serve DIR` serves it as it is: its own statistics (`--unnorm-key`,
else "crane_x7", else its only key), OpenVLA's own image processing (no crop) and OpenVLA's
greedy decoding over the whole vocabulary, ending early at `</s>` as its `generate` does,
and the last 8 ids of prompt and written tokens mapped to actions as `predict_action` maps
them. This module reads JSON only; the model is loaded by the policy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from crane_x7_vla.checkpoint_contract import FORMAT_VERSION, CheckpointError, has_policy_config

UNNORM_KEY = "crane_x7"
LAYOUT = "published"  # policy_config.json's openvla.layout for a folder served as it is
CODE_FILES = ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py")
DEFAULT_CONTROL_RATE_HZ = 10.0  # a published folder that does not say its control rate


class PublishedLayoutError(CheckpointError):
    """A checkpoint that cannot be written as, or a folder that cannot be served from, the published layout."""


def format_problems(config: dict) -> list[str]:
    """Why a checkpoint's prompt and action format is not the one OpenVLA's predict_action
    uses (8 absolute action tokens from one picture and the instruction); empty when it is."""
    space = config.get("action_space") or {}
    info = config.get("openvla") or {}
    problems = []
    if info.get("family", "openvla") != "openvla":
        problems.append(f"its base model is a {info.get('family')} model, not OpenVLA")
    if space.get("representation", "absolute") != "absolute":
        problems.append(f"actions are {space.get('representation')} (--action-representation absolute)")
    if int(space.get("horizon", 1)) != 1:
        problems.append(f"it writes a chunk of {space.get('horizon')} steps (--action-horizon 1)")
    if space.get("discretization") != "openvla":
        problems.append("its action bins are not OpenVLA's (trained before they were)")
    if info.get("state_in_prompt"):
        problems.append("the joint state is in its prompt (--no-state-in-prompt)")
    if info.get("goal_tokens"):
        problems.append("it writes goal tokens (--no-goal-tokens)")
    if info.get("image_position", "first") != "first":
        problems.append(f"its picture goes {info.get('image_position')} (--image-position first)")
    if len(config.get("cameras") or []) != 1:
        problems.append(f"it reads {len(config.get('cameras') or [])} cameras (one --cameras NAME)")
    return problems


def norm_stats_entry(config: dict) -> dict:
    """norm_stats["crane_x7"] of an export: OpenVLA's statistics layout (action and proprio
    with q01/q99 and whatever else the dataset statistics hold, the action's `mask`), plus what
    serving the folder needs (joint names, control rate, camera, instruction, fingerprint),
    which OpenVLA's code does not read."""
    stats = config["dataset_statistics"]
    mask = (config.get("action_space") or {}).get("normalization_mask") or [True] * len(stats["action"]["q01"])
    entry = {"action": {**{k: v for k, v in stats["action"].items()}, "mask": [bool(m) for m in mask]},
             "proprio": dict(stats["proprio"])}
    for key in ("num_transitions", "num_trajectories"):
        if key in stats:
            entry[key] = stats[key]
    entry.update(joint_names=list(config["joint_names"]), control_rate_hz=config.get("control_rate_hz"),
                 cameras=list(config.get("cameras") or []), default_instruction=config.get("default_instruction"),
                 fingerprint=config.get("statistics_fingerprint"))
    return entry


def write_published(model, vla, config: dict, out, checkpoint_dir) -> Path:
    """Write `model` (a merged OpenVLAForActionPrediction) with `vla`'s processor files and the
    checkpoint's statistics into `out` in the published layout."""
    from crane_x7_vla.backends.openvla.model import save_processor

    problems = format_problems(config)
    if problems:
        raise PublishedLayoutError(
            f"{checkpoint_dir}: cannot be written in OpenVLA's published layout: {'; '.join(problems)}. "
            f"OpenVLA's predict_action writes 8 absolute action tokens from one picture and the instruction")
    out = Path(out)
    entry = norm_stats_entry(config)
    model.config.norm_stats = {**(model.config.norm_stats or {}), UNNORM_KEY: entry}
    model.save_pretrained(out)
    save_processor(vla, out)
    (out / "dataset_statistics.json").write_text(json.dumps({UNNORM_KEY: entry}, indent=2))
    base = Path(vla.source).expanduser()
    for name in CODE_FILES:  # OpenVLA's remote code, where the base folder has it
        if (base / name).is_file():
            shutil.copyfile(base / name, out / name)
    return out


def stop_ids(model_dir, text_config) -> tuple[int, ...]:
    """The end-of-sequence ids at which OpenVLA's `generate` stops writing: the folder's
    generation_config.json `eos_token_id` where it has one, else config.json's, else that of
    its language model (`text_config`, Llama's `</s>` by default)."""
    model_dir = Path(model_dir)
    found = None
    for name in ("generation_config.json", "config.json"):
        try:
            found = json.loads((model_dir / name).read_text()).get("eos_token_id")
        except (OSError, ValueError):
            continue
        if found is not None:
            break
    if found is None:
        found = getattr(text_config, "eos_token_id", None)
    if found is None:
        return ()
    return tuple(int(i) for i in (found if isinstance(found, (list, tuple)) else [found]))


def is_published_dir(path) -> bool:
    """A folder with an OpenVLA config.json (model_type "openvla") and no policy_config.json."""
    path = Path(path)
    if has_policy_config(path) or not (path / "config.json").is_file():
        return False
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "openvla"
    except (OSError, ValueError):
        return False


def choose_unnorm_key(norm_stats: dict, wanted: str | None, where: Path) -> str:
    """The statistics to serve with: `wanted`, else "crane_x7", else the only key."""
    keys = sorted(norm_stats)
    if wanted is not None:
        if wanted not in norm_stats:
            raise PublishedLayoutError(f"{where}: norm_stats has no '{wanted}' (it has: {', '.join(keys) or 'none'})")
        return wanted
    if UNNORM_KEY in norm_stats:
        return UNNORM_KEY
    if len(keys) == 1:
        return keys[0]
    raise PublishedLayoutError(f"{where}: norm_stats holds {len(keys)} datasets' statistics; choose one with "
                               f"--unnorm-key ({', '.join(keys) or 'none'})")


def published_policy_config(model_dir, unnorm_key: str | None = None, *, joint_names=None) -> dict:
    """policy_config.json for a published-layout folder served as it is (see the module docstring)."""
    from crane_x7_vla import robot

    model_dir = Path(model_dir)
    where = model_dir / "config.json"
    try:
        model_config = json.loads(where.read_text())
    except (OSError, ValueError) as exc:
        raise PublishedLayoutError(f"{where}: not readable JSON ({exc})") from None
    norm_stats = model_config.get("norm_stats")
    if not isinstance(norm_stats, dict) or not norm_stats:
        raise PublishedLayoutError(f"{where}: no norm_stats, so its action tokens cannot be turned into joint targets")
    key = choose_unnorm_key(norm_stats, unnorm_key, where)
    entry = norm_stats[key]
    action = entry.get("action") or {}
    joint_names = list(joint_names or robot.JOINT_NAMES)
    dim = len(action.get("q01") or [])
    if dim != len(joint_names) or len(action.get("q99") or []) != dim:
        raise PublishedLayoutError(
            f"{where}: norm_stats['{key}'].action has {dim} dimensions; this robot takes {len(joint_names)} joint "
            f"targets ({', '.join(joint_names)}), so '{key}' is not a dataset of this robot")
    proprio = entry.get("proprio") or {}
    if len(proprio.get("q01") or []) != dim or len(proprio.get("q99") or []) != dim:
        proprio = {"q01": list(action["q01"]), "q99": list(action["q99"])}  # unused: the prompt has no state
    fingerprint = entry.get("fingerprint") or "openvla-" + hashlib.sha256(
        json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]
    side = int((model_config.get("image_sizes") or [224])[0])
    mask = action.get("mask")
    return {
        "format_version": FORMAT_VERSION,
        "backend": "openvla",
        "base_model": str(model_dir),
        "image_spec": {"width": side, "height": side, "crop_scale": 1.0, "color_jitter": 0.0},
        "cameras": list(entry.get("cameras") or ["primary"])[:1],
        "joint_names": list(entry.get("joint_names") or joint_names),
        "action_space": {"dim": dim, "horizon": 1, "kind": "absolute_joint_positions", "representation": "absolute",
                         "discretization": "openvla",
                         "normalization_mask": [bool(m) for m in mask] if mask is not None else [True] * dim},
        "normalization": {"mode": "q01_q99"},
        "dataset_statistics": {"action": {"q01": list(action["q01"]), "q99": list(action["q99"])},
                               "proprio": {"q01": list(proprio["q01"]), "q99": list(proprio["q99"])},
                               "fingerprint": fingerprint},
        "statistics_fingerprint": fingerprint,
        "default_instruction": entry.get("default_instruction"),
        "control_rate_hz": entry.get("control_rate_hz") or DEFAULT_CONTROL_RATE_HZ,
        "openvla": {"layout": LAYOUT, "unnorm_key": key, "weights": "model", "family": "openvla"},
    }
