"""Sample actions from an export of this project with openpi's own code (run by OPENPI_PYTHON).

    $OPENPI_PYTHON tests/reference/openpi_upstream.py EXPORT_DIR INPUTS.npz OUT.npz

with openpi's source on the path (PYTHONPATH=$OPENPI_SRC, Physical-Intelligence/openpi's
src/). openpi loads the export the way its serve_policy does: `restore_params` on
EXPORT_DIR/params, `Pi0Config(...).load(params)`, `normalize.load(assets/<asset_id>)`; the
inputs pass openpi's `Normalize` (z-score) and `PadStatesAndActions`, the model samples with the
given noise, the output passes `Unnormalize` and `AbsoluteActions` (the arm joints as deltas,
the gripper absolute). The model sizes come from crane_x7_vla_export.json; openpi's Gemma
variants are looked up by size, and where the export carries LoRA adapters the variant gets
openpi's `LoRAConfig` with the export's ranks and alphas (openpi names LoRA variants only at
the 2B / 300M sizes).

INPUTS.npz: state (8,), images (3, H, W, 3) uint8 in openpi's slot order, image_mask (3,),
tokens (L,), token_mask (L,), noise (1, horizon, 32). OUT.npz: actions (horizon, 8).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np


def restore(params_dir: pathlib.Path):
    """openpi's restore_params; under orbax >= 0.12 (whose metadata is an object, not the dict
    openpi 's pinned orbax 0.11 returns) the same restore with the object's tree."""
    import openpi.models.model as _model
    import orbax.checkpoint as ocp

    try:
        return _model.restore_params(params_dir, restore_type=np.ndarray)
    except TypeError:
        with ocp.PyTreeCheckpointer() as ckptr:
            meta = ckptr.metadata(params_dir)
            tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None)
            item = {"params": tree["params"]}
            args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(restore_type=np.ndarray), item)
            params = ckptr.restore(params_dir, ocp.args.PyTreeRestore(item=item, restore_args=args))["params"]
        flat = {
            k: v["value"] if isinstance(v, dict) and set(v) == {"value"} else v for k, v in _flatten(params).items()
        }
        return _unflatten(flat)


def _flatten(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and not (set(v) == {"value"} and not isinstance(v["value"], dict)):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat):
    out = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def variant_for(gemma: dict, rank: int, alpha: float, groups):
    """openpi's Gemma variant with these sizes (+ its LoRAConfig when rank > 0)."""
    import openpi.models.gemma as _gemma
    import openpi.models.lora as lora

    for name in ("dummy", "gemma_300m", "gemma_2b"):
        cfg = _gemma.get_config(name)
        if (cfg.width, cfg.depth, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (
            gemma["width"],
            gemma["depth"],
            gemma["mlp_dim"],
            gemma["num_heads"],
            gemma["num_kv_heads"],
            gemma["head_dim"],
        ):
            if rank:
                cfg = dataclasses.replace(
                    cfg, lora_configs={g: lora.LoRAConfig(rank=rank, alpha=alpha) for g in groups}
                )
            return cfg
    raise SystemExit(f"no openpi Gemma variant has the sizes {gemma}")


def main(export_dir: str, inputs: str, out: str) -> None:
    import openpi.models.gemma as _gemma
    import openpi.models.model as _model
    import openpi.models.pi0_config as pi0_config
    import openpi.shared.normalize as normalize
    import openpi.transforms as T

    export_dir = pathlib.Path(export_dir).resolve()
    info = json.loads((export_dir / "crane_x7_vla_export.json").read_text())
    mc = info["model_config"]
    groups = tuple(mc.get("lora_groups") or ("attn", "ffn"))
    configs = {
        "prefix": variant_for(mc["prefix"], mc["lora_rank"], mc["lora_alpha"], groups),
        "expert": variant_for(mc["expert"], mc["expert_lora_rank"], mc["expert_lora_alpha"], groups),
    }
    original = _gemma.get_config
    _gemma.get_config = lambda name: configs[name] if name in configs else original(name)  # sizes only
    config = pi0_config.Pi0Config(
        dtype="float32",
        paligemma_variant="prefix",
        action_expert_variant="expert",
        action_dim=mc["action_dim"],
        action_horizon=info["action_space"]["horizon"],
        max_token_len=mc["max_token_len"],
    )
    model = config.load(restore(export_dir / "params"))
    stats = normalize.load(export_dir / "assets" / info["asset_id"])

    x = dict(np.load(inputs))
    data = T.Normalize(stats, use_quantiles=False)({"state": x["state"].astype(np.float32)})
    data = T.PadStatesAndActions(mc["action_dim"])(data)
    slots = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    batch = {
        "state": data["state"][None],
        "image": {s: x["images"][i][None] for i, s in enumerate(slots)},
        "image_mask": {s: np.asarray([bool(x["image_mask"][i])]) for i, s in enumerate(slots)},
        "tokenized_prompt": x["tokens"][None].astype(np.int32),
        "tokenized_prompt_mask": x["token_mask"][None].astype(bool),
    }
    obs = _model.Observation.from_dict(jax.tree.map(jnp.asarray, batch))
    actions = np.asarray(model.sample_actions(jax.random.key(0), obs, num_steps=10, noise=jnp.asarray(x["noise"])))[0]
    result = T.Unnormalize(stats, use_quantiles=False)({"state": x["state"], "actions": actions})
    n = len(x["state"])
    mask = info["action_space"]["delta_mask"]
    result = T.AbsoluteActions(tuple(bool(m) for m in mask))({"state": x["state"], "actions": result["actions"][:, :n]})
    np.savez(out, actions=np.asarray(result["actions"], np.float64))


if __name__ == "__main__":
    main(*sys.argv[1:4])
