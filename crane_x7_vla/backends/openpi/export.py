"""Export a checkpoint of this backend in openpi's on-disk layout.

    python -m crane_x7_vla.backends.openpi.export CHECKPOINT OUT [--asset-id crane_x7]

writes

    OUT/params/                          orbax PyTree {"params": tree} with openpi's names
                                         (LoRA adapters kept as openpi's lora_a / lora_b)
    OUT/assets/<asset_id>/norm_stats.json  {"norm_stats": {"state": ..., "actions": ...}}
                                         (mean, std, q01, q99 of the model-space actions and the state)
    OUT/crane_x7_vla_export.json         sizes, LoRA, conventions and the action representation
    OUT/tokenizer.model (or .json)       the checkpoint's tokenizer (openpi reads its own copy of it)

`crane-x7-vla serve OUT` serves the export as it is (served.py).

openpi's `serve_policy --policy.config=<config> --policy.dir=OUT` loads it with a training
config of openpi whose model has these sizes (pi0: gemma_2b + gemma_300m, their _lora
variants when adapters are present) and whose data transforms match this backend's: the
arm joints as deltas from the state, the gripper absolute, 8 dimensions. Only checkpoints
trained with openpi's conventions (conventions.py; z-score statistics, openpi's prompt
format, resize-with-pad, three image slots) are exported: others would be read by openpi
with another normalisation and other inputs than they were trained with.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from crane_x7_vla.backends.openpi import ckpt_io
from crane_x7_vla.backends.openpi.openpi_import import STREAMS, _LAYERS, mapping, write_norm_stats


class ExportError(ValueError):
    pass


def to_openpi(params: dict[str, np.ndarray], mcfg) -> dict[str, np.ndarray]:
    """{our path: array} -> {openpi path: array}; q and kv of a decoder with as many KV heads
    as heads are stored as one qkv_einsum, as openpi's Gemma does."""
    table = {ours: theirs for theirs, ours in mapping().items()}
    out = {}
    for path, value in params.items():
        if path not in table:
            raise ExportError(f"{path}: no openpi name for this weight")
        out[table[path]] = np.asarray(value)
    for (suffix, ours), g in zip(STREAMS, (mcfg.prefix, mcfg.expert)):
        if g.num_kv_heads != g.num_heads:
            continue
        for leaf in ("w", "lora_a", "lora_b"):
            q, kv = f"{_LAYERS}/attn/q_einsum{suffix}/{leaf}", f"{_LAYERS}/attn/kv_einsum{suffix}/{leaf}"
            if q in out:
                out[f"{_LAYERS}/attn/qkv_einsum{suffix}/{leaf}"] = np.concatenate(
                    [out.pop(q)[:, None], out.pop(kv)], axis=1)
    return out


def export(checkpoint_dir, out_dir, asset_id: str = "crane_x7") -> Path:
    from crane_x7_vla.backends.openpi.conventions import Conventions
    from crane_x7_vla.backends.openpi.presets import ModelConfig
    from crane_x7_vla.backends.openpi.transforms import ActionSpace
    from crane_x7_vla.checkpoint_contract import config_path, read_policy_config

    ckpt, out = Path(checkpoint_dir), Path(out_dir)
    config = read_policy_config(ckpt)
    where = config_path(ckpt)
    block = config.get("openpi")
    if config.get("backend") != "openpi" or not isinstance(block, dict) or "model_config" not in block:
        raise ExportError(f"{where}: not a checkpoint of the openpi backend")
    mcfg = ModelConfig.from_dict(block["model_config"])
    conv = Conventions.from_dict(block.get("conventions"), f"{where}: openpi.conventions")
    if conv.name != "openpi" or conv.normalization != "zscore":
        raise ExportError(
            f"{where}: trained with this backend's own conventions (normalization {conv.normalization}, prompt "
            f"{conv.prompt}, images {conv.image_resize}); openpi would feed it other inputs. Train with "
            f"--conventions openpi to export"
        )
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: exists and is not empty")
    space = ActionSpace.from_config(config)
    params = ckpt_io.flat_paths(ckpt_io.restore_numpy(ckpt / ckpt_io.PARAMS_DIR))
    tree = ckpt_io.nest(to_openpi(params, mcfg))
    out.mkdir(parents=True, exist_ok=True)
    ckpt_io._save(out / "params", {"params": tree})
    keys = ("mean", "std", "q01", "q99")
    write_norm_stats(out / "assets" / asset_id, {
        "state": {k: space.state_stats[k] for k in keys if k in space.state_stats},
        "actions": {k: space.action_stats[k] for k in keys if k in space.action_stats},
    })
    (out / "crane_x7_vla_export.json").write_text(json.dumps({
        "source": str(ckpt.resolve()),
        "asset_id": asset_id,
        "model_config": mcfg.to_dict(),
        "conventions": conv.to_dict(),
        "action_space": {k: v for k, v in space.to_dict().items() if k not in ("model_statistics", "state_statistics")},
        "joint_names": config.get("joint_names"),
        "cameras": config.get("cameras"),
        "tokenizer_file": block.get("tokenizer_file"),
        "control_rate_hz": config.get("control_rate_hz"),
        "default_instruction": config.get("default_instruction"),
    }, indent=2))
    tokenizer = ckpt / block.get("tokenizer_file", ckpt_io.TOKENIZER_FILE)
    if tokenizer.is_file():  # openpi reads its own; `crane-x7-vla serve OUT` uses this copy
        shutil.copyfile(tokenizer, out / tokenizer.name)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crane_x7_vla.backends.openpi.export",
                                     description="Write an openpi-backend checkpoint in openpi's on-disk layout.")
    parser.add_argument("checkpoint", help="a checkpoint directory of this backend (e.g. .../checkpoint-final)")
    parser.add_argument("out", help="the directory to write (must be new or empty)")
    parser.add_argument("--asset-id", default="crane_x7", help="name of the norm stats' folder under assets/")
    args = parser.parse_args(argv)
    try:
        path = export(args.checkpoint, args.out, args.asset_id)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
