"""Gemma-style decoder layers for two token streams that attend jointly (π0's mixture).

The prefix decoder (images + instruction) and the action expert (state + noisy
actions) each have their own weights, but in every layer their queries, keys and
values are concatenated along the sequence, so suffix tokens attend to the prefix
through one attention. Weights are stacked on a leading depth axis and run with
`jax.lax.scan`. Optional LoRA adapters (rank r) add a low-rank branch next to each
frozen weight with openpi's equations (models/lora.py there): A replaces the weight's
output axis by r, B its input axis, and every other axis of the weight is shared by both
factors as the weight's own einsum treats it. So for the attention output
W (N, H, D), the branch is sum_{n,h} x A (N, H, r) -> (r), then (r) x B (N, r, D) summed
over n as well. Attention adapters ("attn") scale the branch by alpha / r, MLP adapters
("ffn") add it unscaled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from crane_x7_vla.backends.openpi.presets import GemmaConfig

#: Weights that get LoRA adapters, by group, with the axes LoRA factorises (the last two).
LORA_TARGETS_BY_GROUP = {"attn": ("q", "kv", "attn_out"), "ffn": ("gate_up", "down")}
LORA_TARGETS = LORA_TARGETS_BY_GROUP["attn"] + LORA_TARGETS_BY_GROUP["ffn"]
#: standard deviation of both LoRA factors of a fresh adapter (openpi's lora.LoRAConfig default)
LORA_INIT_STD = 0.01


def lora_shapes(weight_shape: tuple, rank: int) -> tuple[tuple, tuple]:
    """Shapes of LoRA factors A and B of a weight (its last two axes = input, output)."""
    return tuple(weight_shape[:-1]) + (rank,), tuple(weight_shape[:-2]) + (rank, weight_shape[-1])


def _fan_in_normal(key, shape, fan_in):
    return jax.random.normal(key, shape, jnp.float32) * (1.0 / fan_in) ** 0.5


class GemmaLayers(nnx.Module):
    """`depth` decoder layers; every weight has a leading depth axis."""

    def __init__(self, cfg: GemmaConfig, rngs: nnx.Rngs, lora_rank: int = 0, lora_groups=("attn", "ffn")):
        L, D, F = cfg.depth, cfg.width, cfg.mlp_dim
        N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        k = rngs.params
        self.attn_norm = nnx.Param(jnp.zeros((L, D)))  # RMSNorm scales multiply (1 + scale)
        self.q = nnx.Param(_fan_in_normal(k(), (L, N, D, H), D))
        self.kv = nnx.Param(_fan_in_normal(k(), (L, 2, K, D, H), D))
        self.attn_out = nnx.Param(_fan_in_normal(k(), (L, N, H, D), N * H))
        self.mlp_norm = nnx.Param(jnp.zeros((L, D)))
        self.gate_up = nnx.Param(_fan_in_normal(k(), (L, 2, D, F), D))
        self.down = nnx.Param(_fan_in_normal(k(), (L, F, D), F))
        targets = [t for g in lora_groups for t in LORA_TARGETS_BY_GROUP[g]] if lora_rank > 0 else []
        for name in targets:
            a_shape, b_shape = lora_shapes(getattr(self, name)[...].shape, lora_rank)
            # Both factors drawn from N(0, 0.01^2), as openpi's LoRAConfig.init_fn: the adapted
            # model starts within a small product of two such draws of the base model.
            setattr(self, f"{name}_lora_a", nnx.Param(jax.random.normal(k(), a_shape) * LORA_INIT_STD))
            setattr(self, f"{name}_lora_b", nnx.Param(jax.random.normal(k(), b_shape) * LORA_INIT_STD))

    def weights(self) -> dict:
        return {name: p[...] for name, p in vars(self).items() if isinstance(p, nnx.Param)}


def rms_norm(x, scale, eps=1e-6):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (y * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def rope(x, positions, max_wavelength=10_000.0):
    """Rotary position embedding of x (B, T, heads, H) at integer positions (B, T)."""
    half = x.shape[-1] // 2
    timescale = max_wavelength ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / x.shape[-1])
    angle = positions.astype(jnp.float32)[..., None, None] / timescale
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


#: einsum of each target and of its LoRA factors A and B: A's equation is the weight's with
#: the output axis renamed r, B's consumes A's output with the weight's input axis renamed r.
_EQNS = {
    "q": ("btd,ndh->btnh", "btd,ndr->btnr", "btnr,nrh->btnh"),
    "kv": ("btd,ckdh->cbtkh", "btd,ckdr->cbtkr", "cbtkr,ckrh->cbtkh"),
    "attn_out": ("btnh,nhd->btd", "btnh,nhr->btr", "btr,nrd->btd"),
    "gate_up": ("btd,cdf->cbtf", "btd,cdr->cbtr", "cbtr,crf->cbtf"),
    "down": ("btf,fd->btd", "btf,fr->btr", "btr,rd->btd"),
}


def lora_delta(name: str, a, b, xp=jnp):
    """The weight change W' - W that adapters (A, B) of target `name` make, unscaled.

    a, b: factors with any leading axes before the weight's own (e.g. the depth axis);
    xp: the array module (jax.numpy or numpy). The attention output's B is summed over
    heads, as its branch sums over them twice.
    """
    if name == "attn_out":
        return xp.einsum("...nhr,...rd->...nhd", a, b.sum(axis=-3))
    return xp.matmul(a, b)


def _project(w: dict, name: str, x, dtype, lora: tuple[float, float], key):
    """x through weight `name`, plus its LoRA branch when the weights carry one.

    lora = (attention scale alpha / r, dropout rate); MLP adapters are unscaled.
    key: dropout key for this call, or None (no dropout).
    """
    eqn, eqn_a, eqn_b = _EQNS[name]
    y = jnp.einsum(eqn, x, w[name].astype(dtype))
    if f"{name}_lora_a" in w:
        scale, rate = lora
        if name in LORA_TARGETS_BY_GROUP["ffn"]:
            scale = 1.0
        xl = x
        if key is not None and rate > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(key, list(_EQNS).index(name)), 1.0 - rate, x.shape)
            xl = jnp.where(keep, x / (1.0 - rate), 0).astype(dtype)
        z = jnp.einsum(eqn_a, xl, w[f"{name}_lora_a"].astype(dtype))
        y = y + (scale * jnp.einsum(eqn_b, z, w[f"{name}_lora_b"].astype(dtype))).astype(dtype)
    return y


def joint_layers(
    weights: list[dict | None],
    xs: list[jax.Array | None],
    positions: jax.Array,
    mask: jax.Array,
    *,
    num_kv_heads: int,
    dtype,
    lora: list[tuple[float, float]],
    kv_cache: tuple[jax.Array, jax.Array] | None = None,
    remat: bool = False,
    dropout_key: jax.Array | None = None,
):
    """Run all layers over the streams that are not None.

    weights[i]: stacked weights of stream i (or None when xs[i] is None).
    positions (B, T) for the T tokens being computed; mask (B, T, S) with S = cached + T.
    kv_cache: keys/values (depth, B, S_cached, K, H) from an earlier call, or None.
    lora[i]: (scale, dropout rate) of stream i's LoRA adapters; dropout_key: None at inference.
    Returns (outputs per stream before the final norm, (keys, values) of the computed tokens).
    """
    active = [i for i, x in enumerate(xs) if x is not None]
    lengths = [xs[i].shape[1] for i in active]
    layer_weights = tuple(weights[i] for i in active)

    def layer(carry, scanned):
        hs = list(carry)
        w_all, cache, key = scanned
        qs, ks, vs = [], [], []
        for h, w, i in zip(hs, w_all, active):
            n = rms_norm(h, w["attn_norm"])
            k_i = None if key is None else jax.random.fold_in(key, i)
            q = _project(w, "q", n, dtype, lora[i], k_i)
            kv = _project(w, "kv", n, dtype, lora[i], k_i)
            qs.append(q)
            ks.append(kv[0])
            vs.append(kv[1])
        q, k, v = (jnp.concatenate(t, axis=1) for t in (qs, ks, vs))
        head_dim = q.shape[-1]
        q = rope(q, positions) * jnp.asarray(head_dim**-0.5, dtype)
        k = rope(k, positions)
        new_kv = (k, v)
        if cache is not None:
            k = jnp.concatenate([cache[0], k], axis=1)
            v = jnp.concatenate([cache[1], v], axis=1)
        B, T, N, H = q.shape
        q = q.reshape(B, T, num_kv_heads, N // num_kv_heads, H)
        logits = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
        logits = jnp.where(mask[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
        att = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(B, T, N, H)
        out, start = [], 0
        for h, w, i, n_tok in zip(hs, w_all, active, lengths):
            a = att[:, start : start + n_tok]
            start += n_tok
            k_i = None if key is None else jax.random.fold_in(key, 10 + i)
            h = h + _project(w, "attn_out", a, dtype, lora[i], k_i)
            n = rms_norm(h, w["mlp_norm"])
            gu = _project(w, "gate_up", n, dtype, lora[i], k_i)
            act = jax.nn.gelu(gu[0], approximate=True) * gu[1]
            h = h + _project(w, "down", act, dtype, lora[i], k_i)
            out.append(h)
        return tuple(out), new_kv

    if remat:
        layer = jax.checkpoint(layer)
    carry = tuple(xs[i].astype(dtype) for i in active)
    depth = jax.tree.leaves(layer_weights)[0].shape[0]
    keys = None if dropout_key is None else jax.random.split(dropout_key, depth)
    outs, kv = jax.lax.scan(layer, carry, (layer_weights, kv_cache, keys))
    result: list[jax.Array | None] = [None] * len(xs)
    for i, o in zip(active, outs):
        result[i] = o
    return result, kv
