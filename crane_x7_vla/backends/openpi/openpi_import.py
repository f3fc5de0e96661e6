"""openpi π0 checkpoints on disk <-> this backend's network (see PARAMS.md).

openpi writes a training checkpoint as an orbax step directory

    <step>/params/                   orbax PyTree {"params": tree} (EMA weights when EMA is on)
    <step>/assets/<asset_id>/norm_stats.json
    <step>/train_state/              optimizer state (not read here)

and a released checkpoint (pi0_base, ...) as the same `params/` and `assets/`. The tree
(an nnx "pure dict", its leaves possibly wrapped in {"value": ...}) looks like

    PaliGemma/img/...            SigLIP (big_vision names, layers scanned as `encoderblock`)
    PaliGemma/llm/...            Gemma prefix decoder (suffix-less names) + action expert ("_1")
    state_proj, action_in_proj, action_time_mlp_in, action_time_mlp_out, action_out_proj

Every weight keeps its shape and axis order; only names change (a decoder with as many
KV heads as query heads stores q, k and v as one `qkv_einsum`, split here into q and kv).
The network's sizes, LoRA ranks and the places of LoRA adapters are read from the
weights' shapes (`infer_config`), so a checkpoint of any size builds its own network.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from crane_x7_vla.checkpoint_contract import has_policy_config

_VIT = "PaliGemma/img/Transformer/encoderblock"
_ATTN = f"{_VIT}/MultiHeadDotProductAttention_0"
_LLM = "PaliGemma/llm"
_LAYERS = f"{_LLM}/layers"

#: openpi path -> our path (vision encoder, embedding, final norms, heads)
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
    f"{_LLM}/embedder/input_embedding": "prefix_lm/embed",
    f"{_LLM}/final_norm/scale": "prefix_lm/final_norm",
    f"{_LLM}/final_norm_1/scale": "action_expert/final_norm",
}
HEADS = ("state_proj", "action_in_proj", "action_time_mlp_in", "action_time_mlp_out", "action_out_proj")
for _name in HEADS:
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
#: LoRA adapters (openpi's lora.Einsum names its factors lora_a / lora_b, lora.FeedForward
#: appends _lora_a / _lora_b to the weight's name), by adapter group.
LAYER_LORA = {
    "attn": {
        "attn/q_einsum/lora_a": "q_lora_a",
        "attn/q_einsum/lora_b": "q_lora_b",
        "attn/kv_einsum/lora_a": "kv_lora_a",
        "attn/kv_einsum/lora_b": "kv_lora_b",
        "attn/attn_vec_einsum/lora_a": "attn_out_lora_a",
        "attn/attn_vec_einsum/lora_b": "attn_out_lora_b",
    },
    "ffn": {
        "mlp/gating_einsum_lora_a": "gate_up_lora_a",
        "mlp/gating_einsum_lora_b": "gate_up_lora_b",
        "mlp/linear_lora_a": "down_lora_a",
        "mlp/linear_lora_b": "down_lora_b",
    },
}
#: leaves of `qkv_einsum`, q, k and v in one weight (openpi's Gemma when num_kv_heads == num_heads)
QKV = ("w", "lora_a", "lora_b")
STREAMS = (("", "prefix_lm"), ("_1", "action_expert"))


class OpenpiCheckpointError(ValueError):
    """An openpi checkpoint that does not fit; the message names the file or parameter."""


def _stream_name(name: str, suffix: str) -> str:
    """'attn/q_einsum/w' + '_1' -> 'attn/q_einsum_1/w'; 'mlp/linear' -> 'mlp_1/linear'."""
    if not suffix:
        return name
    head, _, rest = name.partition("/")
    if head == "attn":
        module, _, leaf = rest.partition("/")
        return f"attn/{module}{suffix}/{leaf}"
    return f"{head}{suffix}/{rest}"


def mapping(*, lora: bool = True) -> dict[str, str]:
    """openpi path -> our path for every weight (LoRA adapters of both decoders included)."""
    table = dict(FIXED)
    for suffix, ours_top in STREAMS:
        names = dict(LAYER)
        if lora:
            for group in LAYER_LORA.values():
                names.update(group)
        for theirs, ours in names.items():
            table[f"{_LAYERS}/{_stream_name(theirs, suffix)}"] = f"{ours_top}/layers/{ours}"
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


def _split_qkv(flat: dict) -> dict:
    """Replace every `qkv_einsum` entry (leading axis 3 after depth: q, k, v) by q and kv entries."""
    out = dict(flat)
    for suffix, _ in STREAMS:
        for leaf in QKV:
            path = f"{_LAYERS}/attn/qkv_einsum{suffix}/{leaf}"
            if path not in out:
                continue
            w = out.pop(path)
            shape = tuple(w) if isinstance(w, tuple) else tuple(w.shape)
            if len(shape) < 2 or shape[1] != 3:
                raise OpenpiCheckpointError(
                    f"{path}: shape {shape} has no (q, k, v) axis of size 3 after the depth axis"
                )
            out[f"{_LAYERS}/attn/q_einsum{suffix}/{leaf}"] = _Slice(w, shape, 0)
            out[f"{_LAYERS}/attn/kv_einsum{suffix}/{leaf}"] = _Slice(w, shape, slice(1, 3))
    return out


class _Slice:
    """A lazy w[:, index] of an array or of a shape-only entry (its shape is known without data)."""

    def __init__(self, base, shape: tuple, index):
        self.base, self.index = base, index
        self.shape = (shape[0],) + ((2,) if isinstance(index, slice) else ()) + shape[2:]

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self.base)[:, self.index]
        return a if dtype is None else a.astype(dtype)


def import_params(openpi_tree: dict) -> dict[str, np.ndarray]:
    """openpi π0 parameter tree -> {our path: array}. Raises naming missing/unknown weights."""
    flat = _split_qkv(flatten(openpi_tree))
    _check_names(flat)
    table = mapping()
    return {table[p]: np.asarray(v) for p, v in flat.items()}


def _check_names(flat: dict) -> None:
    if "time_mlp_in/kernel" in flat:
        raise OpenpiCheckpointError("the checkpoint has time_mlp_in: it is a π0.5 checkpoint; this backend runs π0")
    required = sorted(set(mapping(lora=False)) - set(flat))
    if required and f"{_LAYERS}/attn/q_einsum_1/w" in required and f"{_LAYERS}/attn/q_einsum/w" in flat:
        raise OpenpiCheckpointError(
            f"the checkpoint has no action expert ({_LAYERS}/attn/q_einsum_1/w): is it π0-FAST? This backend runs π0"
        )
    if required:
        raise OpenpiCheckpointError(
            f"the openpi parameters lack {len(required)} weight(s) of π0, e.g. {', '.join(required[:3])}; "
            f"is this a π0 (not π0-FAST / π0.5) checkpoint?"
        )
    table = mapping()
    unknown = sorted(p for p in flat if p not in table)
    if unknown:
        raise OpenpiCheckpointError(
            f"the openpi parameters hold weights this model has no place for: {', '.join(unknown[:5])}"
        )


# ---- the network's sizes from the weights' shapes --------------------------------------------------


def infer_config(shapes: dict[str, tuple], base):
    """A ModelConfig with `base`'s run settings and the sizes, LoRA ranks and adapter places
    that the openpi weights' shapes ({openpi path: shape}) imply.

    The image size stays `base`'s and must give as many patches as the checkpoint's
    learned positions hold. LoRA alphas are set to the ranks (openpi's LoRA variants all
    use alpha = rank); the caller may override them. Raises OpenpiCheckpointError naming the parameter.
    """
    from crane_x7_vla.backends.openpi.presets import GemmaConfig, VisionConfig

    flat = _split_qkv(dict(shapes))
    _check_names(flat)
    s = {p: tuple(int(d) for d in v.shape) if hasattr(v, "shape") else tuple(v) for p, v in flat.items()}

    def dims(path, n):
        if len(s[path]) != n:
            raise OpenpiCheckpointError(f"{path}: expected {n} axes, the checkpoint has shape {s[path]}")
        return s[path]

    P, P2, C, W = dims("PaliGemma/img/embedding/kernel", 4)
    if P != P2 or C != 3:
        raise OpenpiCheckpointError(
            f"PaliGemma/img/embedding/kernel: shape {s['PaliGemma/img/embedding/kernel']} is not "
            f"(patch, patch, 3, width)"
        )
    Lv, _, Hn, hd = dims(f"{_ATTN}/query/kernel", 4)
    _, _, M = dims(f"{_VIT}/MlpBlock_0/Dense_0/kernel", 3)
    _, Np, _ = dims("PaliGemma/img/pos_embedding", 3)
    vision = VisionConfig(width=W, depth=Lv, mlp_dim=M, num_heads=Hn, patch_size=P)
    if Hn * hd != W:
        raise OpenpiCheckpointError(f"{_ATTN}/query/kernel: {Hn} heads of {hd} do not make the vision width {W}")

    gemmas, lora = [], []
    for suffix, ours in STREAMS:
        L, N, D, H = dims(f"{_LAYERS}/{_stream_name('attn/q_einsum/w', suffix)}", 4)
        _, two, K, _, _ = dims(f"{_LAYERS}/{_stream_name('attn/kv_einsum/w', suffix)}", 5)
        _, _, _, F = dims(f"{_LAYERS}/{_stream_name('mlp/gating_einsum', suffix)}", 4)
        gemmas.append(GemmaConfig(width=D, depth=L, mlp_dim=F, num_heads=N, num_kv_heads=K, head_dim=H))
        lora.append(_lora_of(s, suffix, ours))
    prefix, expert = gemmas
    V, Dv = dims(f"{_LLM}/embedder/input_embedding", 2)
    A, E = dims("state_proj/kernel", 2)
    if Dv != prefix.width:
        raise OpenpiCheckpointError(
            f"{_LLM}/embedder/input_embedding: width {Dv} is not the prefix decoder's {prefix.width}"
        )
    if E != expert.width:
        raise OpenpiCheckpointError(f"state_proj/kernel: width {E} is not the action expert's {expert.width}")

    (p_rank, p_groups), (e_rank, e_groups) = lora
    if p_rank and e_rank and p_groups != e_groups:
        raise OpenpiCheckpointError(
            f"LoRA adapters sit on {'+'.join(p_groups)} in the prefix decoder but on {'+'.join(e_groups)} in the "
            f"action expert ({_LAYERS}); this backend places them alike in both"
        )
    groups = p_groups or e_groups or base.lora_groups
    cfg = replace(
        base,
        vision=vision,
        prefix=prefix,
        expert=expert,
        vocab_size=V,
        action_dim=A,
        lora_rank=p_rank,
        lora_alpha=float(p_rank or base.lora_alpha),
        expert_lora_rank=e_rank,
        expert_lora_alpha=float(e_rank or base.expert_lora_alpha),
        lora_groups=tuple(groups),
    )
    if cfg.num_patches != Np:
        side = math.isqrt(Np)
        hint = f"--image-size {side * P}x{side * P}" if side * side == Np else f"an image size with {Np} patches of {P}"
        raise OpenpiCheckpointError(
            f"PaliGemma/img/pos_embedding: the checkpoint's images have {Np} patches of {P} pixels, "
            f"{base.image_width}x{base.image_height} gives {cfg.num_patches}; use {hint}"
        )
    try:
        cfg.validate()
    except ValueError as exc:
        raise OpenpiCheckpointError(f"{_LAYERS}: {exc}") from None
    return cfg


def _lora_of(s: dict, suffix: str, ours: str) -> tuple[int, tuple[str, ...]]:
    """(rank, groups) of one decoder's adapters; every adapter of a group must be there, of one rank."""
    ranks = {}
    for group, names in LAYER_LORA.items():
        paths = [f"{_LAYERS}/{_stream_name(n, suffix)}" for n in names]
        present = [p for p in paths if p in s]
        if not present:
            continue
        if len(present) != len(paths):
            missing = sorted(set(paths) - set(present))
            raise OpenpiCheckpointError(f"LoRA adapters of the {ours} are incomplete: {', '.join(missing)} missing")
        group_ranks = {}
        for p in paths:
            shape = s[p]
            group_ranks[p] = shape[-1] if p.endswith("lora_a") else shape[-2]
        if len(set(group_ranks.values())) != 1:
            detail = ", ".join(f"{p.rsplit('/', 2)[-2]}/{p.rsplit('/', 1)[-1]} {r}" for p, r in group_ranks.items())
            raise OpenpiCheckpointError(f"LoRA adapters of the {ours} ({group}) have different ranks: {detail}")
        ranks[group] = next(iter(group_ranks.values()))
    if len(set(ranks.values())) > 1:
        raise OpenpiCheckpointError(
            f"LoRA ranks of the {ours} differ between attention ({ranks['attn']}) and MLP ({ranks['ffn']}) adapters "
            f"({_LAYERS}/{_stream_name('attn/q_einsum/lora_a', suffix)}, "
            f"{_LAYERS}/{_stream_name('mlp/gating_einsum_lora_a', suffix)}); this backend gives a decoder one rank"
        )
    return (next(iter(ranks.values())) if ranks else 0), tuple(g for g in LAYER_LORA if g in ranks)


# ---- writing into a model ----------------------------------------------------------------------------


def load_into(model, params: dict[str, np.ndarray]) -> None:
    """Write imported weights into an nnx model, checking every shape."""
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    ours = {"/".join(str(k) for k in path): var for path, var in nnx.to_flat_state(state)}
    problems = []
    table = {v: k for k, v in mapping().items()}
    for path, value in params.items():
        theirs = table.get(path, path)
        if path not in ours:
            problems.append(f"{theirs}: this model has no {path} (its LoRA settings differ from the checkpoint's)")
        elif tuple(ours[path].get_value().shape) != tuple(value.shape):
            problems.append(f"{theirs}: checkpoint {tuple(value.shape)} vs model {tuple(ours[path].get_value().shape)}")
    if problems:
        raise OpenpiCheckpointError("openpi parameters do not fit this model:\n  " + "\n  ".join(problems[:10]))
    for path, value in params.items():
        var = ours[path]
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
    nnx.update(model, state)


# ---- the checkpoint directory ----------------------------------------------------------------------


class OpenpiCheckpoint:
    """An openpi checkpoint directory: a step directory (params/ + assets/) or its params/ itself."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path).expanduser().resolve()
        if not path.is_dir():
            raise OpenpiCheckpointError(f"{path}: no such directory")
        if has_policy_config(path):
            raise OpenpiCheckpointError(
                f"{path}: a crane-x7-vla checkpoint, not an openpi one; continue it with --resume-from-checkpoint"
            )
        if (path / "params").is_dir():
            params, root = path / "params", path
        elif path.name == "params" and _is_orbax(path):
            params, root = path, path.parent
        else:
            steps = sorted((p.name for p in path.iterdir() if p.name.isdigit() and (p / "params").is_dir()), key=int)
            if steps:
                raise OpenpiCheckpointError(
                    f"{path}: an openpi run directory with step(s) {', '.join(steps)}; pass one of them, "
                    f"e.g. {path / steps[-1]}"
                )
            raise OpenpiCheckpointError(
                f"{path}: no openpi parameters here (expected {path / 'params'}, an orbax directory)"
            )
        if not _is_orbax(params):
            raise OpenpiCheckpointError(f"{params}: not an orbax checkpoint (no _METADATA / _CHECKPOINT_METADATA file)")
        self.path, self.params_dir, self.assets_dir = root, params, root / "assets"

    def shapes(self) -> dict[str, tuple]:
        """{openpi path: shape} from the orbax metadata; no weight is read."""
        import orbax.checkpoint as ocp

        with ocp.PyTreeCheckpointer() as ckptr:
            meta = ckptr.metadata(self.params_dir)
        tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta
        tree = dict(tree)
        tree = dict(tree["params"]) if "params" in tree else tree
        return {p: tuple(m.shape) for p, m in flatten(tree).items()}

    def dtype(self, path: str) -> str | None:
        """The stored dtype of one weight (openpi path), from the orbax metadata; None when absent."""
        import orbax.checkpoint as ocp

        with ocp.PyTreeCheckpointer() as ckptr:
            meta = ckptr.metadata(self.params_dir)
        tree = dict(getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta)
        tree = dict(tree["params"]) if "params" in tree else tree
        found = flatten(tree).get(path)
        return None if found is None or getattr(found, "dtype", None) is None else str(np.dtype(found.dtype))

    def params(self) -> dict:
        """The parameter tree as numpy arrays (openpi paths, 'value' levels dropped)."""
        return read_checkpoint(self.params_dir)

    def asset_ids(self) -> list[str]:
        if not self.assets_dir.is_dir():
            return []
        return sorted(p.name for p in self.assets_dir.iterdir() if (p / "norm_stats.json").is_file())

    def norm_stats(self, asset_id: str) -> dict[str, dict[str, list[float]]]:
        """assets/<asset_id>/norm_stats.json -> {"state": {...}, "actions": {...}} (mean, std, q01, q99)."""
        return read_norm_stats(self.assets_dir / asset_id / "norm_stats.json")


def _is_orbax(path: Path) -> bool:
    return (path / "_METADATA").is_file() or (path / "_CHECKPOINT_METADATA").is_file()


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


NORM_KEYS = ("mean", "std", "q01", "q99")


def read_norm_stats(path: Path) -> dict[str, dict[str, list[float]]]:
    """openpi's norm_stats.json ({"norm_stats": {key: {mean, std, q01?, q99?}}}) -> plain dict."""
    path = Path(path)
    if not path.is_file():
        raise OpenpiCheckpointError(f"{path}: not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OpenpiCheckpointError(f"{path}: not readable JSON ({exc})") from None
    stats = data.get("norm_stats") if isinstance(data, dict) else None
    if not isinstance(stats, dict):
        raise OpenpiCheckpointError(f"{path}: no 'norm_stats' object")
    out = {}
    for key, entry in stats.items():
        if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
            raise OpenpiCheckpointError(f"{path}: norm_stats.{key} needs 'mean' and 'std'")
        out[key] = {}
        for name in NORM_KEYS:
            if entry.get(name) is None:
                continue
            values = np.asarray(entry[name], np.float64).reshape(-1)
            if not np.all(np.isfinite(values)):
                raise OpenpiCheckpointError(f"{path}: norm_stats.{key}.{name} holds a non-finite value")
            out[key][name] = values.tolist()
        lengths = {len(v) for v in out[key].values()}
        if len(lengths) != 1:
            raise OpenpiCheckpointError(f"{path}: norm_stats.{key} has entries of different lengths {sorted(lengths)}")
    return out


def write_norm_stats(directory: Path, stats: dict[str, dict[str, list[float]]]) -> Path:
    """Write {key: {mean, std, q01, q99}} as openpi's `<directory>/norm_stats.json`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    body = {"norm_stats": {k: {n: [float(x) for x in v[n]] for n in NORM_KEYS if n in v} for k, v in stats.items()}}
    path = directory / "norm_stats.json"
    path.write_text(json.dumps(body, indent=2))
    return path
