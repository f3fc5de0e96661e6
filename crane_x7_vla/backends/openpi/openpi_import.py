"""Map openpi's released π0 parameters onto this backend's network (see PARAMS.md).

openpi stores π0 as an orbax PyTree checkpoint `<ckpt>/params` holding {"params": tree};
the tree (an nnx "pure dict", leaves possibly wrapped in {"value": ...}) looks like

    PaliGemma/img/...            SigLIP So400m/14 (big_vision names, layers scanned)
    PaliGemma/llm/...            Gemma 2B (suffix-less names) + action expert (names "_1")
    state_proj, action_in_proj, action_time_mlp_in, action_time_mlp_out, action_out_proj

Every weight keeps its shape and axis order; only names change. `import_params`
returns {our path: array}; `load_into` checks every shape and writes into a model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_VIT = "PaliGemma/img/Transformer/encoderblock"
_ATTN = f"{_VIT}/MultiHeadDotProductAttention_0"

#: openpi path -> our path (vision encoder and heads)
FIXED = {
    "PaliGemma/img/embedding/kernel": "vision/patch_kernel",
    "PaliGemma/img/embedding/bias": "vision/patch_bias",
    "PaliGemma/img/pos_embedding": "vision/pos_embed",
    f"{_VIT}/LayerNorm_0/scale": "vision/blocks/ln1_scale",
    f"{_VIT}/LayerNorm_0/bias": "vision/blocks/ln1_bias",
    f"{_ATTN}/query/kernel": "vision/blocks/q_kernel",
    f"{_ATTN}/query/bias": "vision/blocks/q_bias",
    f"{_ATTN}/key/kernel": "vision/blocks/k_kernel",
    f"{_ATTN}/key/bias": "vision/blocks/k_bias",
    f"{_ATTN}/value/kernel": "vision/blocks/v_kernel",
    f"{_ATTN}/value/bias": "vision/blocks/v_bias",
    f"{_ATTN}/out/kernel": "vision/blocks/out_kernel",
    f"{_ATTN}/out/bias": "vision/blocks/out_bias",
    f"{_VIT}/LayerNorm_1/scale": "vision/blocks/ln2_scale",
    f"{_VIT}/LayerNorm_1/bias": "vision/blocks/ln2_bias",
    f"{_VIT}/MlpBlock_0/Dense_0/kernel": "vision/blocks/mlp_in_kernel",
    f"{_VIT}/MlpBlock_0/Dense_0/bias": "vision/blocks/mlp_in_bias",
    f"{_VIT}/MlpBlock_0/Dense_1/kernel": "vision/blocks/mlp_out_kernel",
    f"{_VIT}/MlpBlock_0/Dense_1/bias": "vision/blocks/mlp_out_bias",
    "PaliGemma/img/Transformer/encoder_norm/scale": "vision/final_ln_scale",
    "PaliGemma/img/Transformer/encoder_norm/bias": "vision/final_ln_bias",
    "PaliGemma/img/head/kernel": "vision/proj_kernel",
    "PaliGemma/img/head/bias": "vision/proj_bias",
    "PaliGemma/llm/embedder/input_embedding": "prefix_lm/embed",
    "PaliGemma/llm/final_norm/scale": "prefix_lm/final_norm",
    "PaliGemma/llm/final_norm_1/scale": "action_expert/final_norm",
}
for _name in ("state_proj", "action_in_proj", "action_time_mlp_in", "action_time_mlp_out", "action_out_proj"):
    FIXED[f"{_name}/kernel"] = f"{_name}/kernel"
    FIXED[f"{_name}/bias"] = f"{_name}/bias"

#: Gemma layer weights: openpi name (under PaliGemma/llm/layers) -> ours (under .../layers)
LAYER = {
    "attn/q_einsum/w": "q",
    "attn/kv_einsum/w": "kv",
    "attn/attn_vec_einsum/w": "attn_out",
    "pre_attention_norm/scale": "attn_norm",
    "pre_ffw_norm/scale": "mlp_norm",
    "mlp/gating_einsum": "gate_up",
    "mlp/linear": "down",
}
#: LoRA adapters of a LoRA-fine-tuned openpi checkpoint (prefix decoder only).
LAYER_LORA = {
    "attn/q_einsum/lora_a": "q_lora_a",
    "attn/q_einsum/lora_b": "q_lora_b",
    "attn/kv_einsum/lora_a": "kv_lora_a",
    "attn/kv_einsum/lora_b": "kv_lora_b",
    "attn/attn_vec_einsum/lora_a": "attn_out_lora_a",
    "attn/attn_vec_einsum/lora_b": "attn_out_lora_b",
    "mlp/gating_einsum_lora_a": "gate_up_lora_a",
    "mlp/gating_einsum_lora_b": "gate_up_lora_b",
    "mlp/linear_lora_a": "down_lora_a",
    "mlp/linear_lora_b": "down_lora_b",
}


def _expert_name(name: str) -> str:
    """'attn/q_einsum/w' -> 'attn/q_einsum_1/w'; 'mlp/linear' -> 'mlp_1/linear'."""
    head, _, rest = name.partition("/")
    if head == "attn":
        module, _, leaf = rest.partition("/")
        return f"attn/{module}_1/{leaf}"
    return f"{head}_1/{rest}"


def mapping() -> dict[str, str]:
    """The complete openpi path -> our path table (without LoRA adapters)."""
    table = dict(FIXED)
    for theirs, ours in LAYER.items():
        table[f"PaliGemma/llm/layers/{theirs}"] = f"prefix_lm/layers/{ours}"
        table[f"PaliGemma/llm/layers/{_expert_name(theirs)}"] = f"action_expert/layers/{ours}"
    return table


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """Nested dict -> {'a/b/c': leaf}; a trailing 'value' level (nnx State) is dropped."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict) or hasattr(value, "items") and not hasattr(value, "shape"):
            out.update(flatten(dict(value.items()), path))
        else:
            out[path] = value
    if out and all(p.endswith("/value") for p in out):
        out = {p[: -len("/value")]: v for p, v in out.items()}
    return out


def import_params(openpi_tree: dict, *, with_lora: bool = True) -> dict[str, np.ndarray]:
    """openpi π0 parameter tree -> {our path: array}. Raises naming missing/unknown weights."""
    flat = flatten(openpi_tree)
    table = mapping()
    if with_lora:
        for theirs, ours in LAYER_LORA.items():
            table[f"PaliGemma/llm/layers/{theirs}"] = f"prefix_lm/layers/{ours}"
    required = set(mapping())
    missing = sorted(required - set(flat))
    if missing:
        raise ValueError(
            f"the openpi parameters lack {len(missing)} weight(s) of π0, e.g. {', '.join(missing[:3])}; "
            f"is this a π0 (not π0-FAST / π0.5) checkpoint?"
        )
    unknown = sorted(p for p in flat if p not in table)
    if unknown:
        raise ValueError(f"the openpi parameters hold weights this model has no place for: {', '.join(unknown[:5])}")
    return {table[p]: np.asarray(v) for p, v in flat.items()}


def load_into(model, params: dict[str, np.ndarray]) -> None:
    """Write imported weights into an nnx model, checking every shape."""
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    ours = {"/".join(str(k) for k in path): var for path, var in nnx.to_flat_state(state)}
    problems = []
    for path, value in params.items():
        if path not in ours:
            problems.append(f"{path}: not in this model (LoRA adapters need --lora-rank > 0)")
        elif tuple(ours[path].get_value().shape) != tuple(value.shape):
            problems.append(f"{path}: openpi {tuple(value.shape)} vs model {tuple(ours[path].get_value().shape)}")
    if problems:
        raise ValueError("openpi parameters do not fit this model:\n  " + "\n  ".join(problems[:10]))
    for path, value in params.items():
        var = ours[path]
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
    nnx.update(model, state)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read openpi's `<checkpoint>/params` orbax directory into a nested dict of numpy arrays."""
    import orbax.checkpoint as ocp

    path = Path(path).resolve()
    if (path / "params").is_dir():
        path = path / "params"
    if not path.is_dir():
        raise FileNotFoundError(f"openpi parameter directory {path} not found")
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta
        restore_args = _numpy_restore_args(tree)
        data = ckptr.restore(path, ocp.args.PyTreeRestore(restore_args=restore_args))
    return data["params"] if "params" in data else data


def _numpy_restore_args(tree):
    import jax
    import orbax.checkpoint as ocp

    return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), dict(tree))
