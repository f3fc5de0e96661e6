"""SigLIP-style image encoder: patches -> pre-LN transformer -> tokens in the decoder's width.

Layer weights are stacked on a leading depth axis and run with `jax.lax.scan`, so a
27-layer encoder compiles as fast as a 1-layer one. Layout: see PARAMS.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from crane_x7_vla.backends.openpi.presets import VisionConfig


def _lecun(key, shape, fan_in, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * (1.0 / fan_in) ** 0.5


def layer_norm(x, scale, bias, eps=1e-6):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale + bias).astype(x.dtype)


class VisionBlocks(nnx.Module):
    """`depth` encoder blocks, each weight with a leading depth axis."""

    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        L, W, M, Hn = cfg.depth, cfg.width, cfg.mlp_dim, cfg.num_heads
        hd = W // Hn
        k = rngs.params
        self.ln1_scale = nnx.Param(jnp.ones((L, W)))
        self.ln1_bias = nnx.Param(jnp.zeros((L, W)))
        self.q_kernel = nnx.Param(_lecun(k(), (L, W, Hn, hd), W))
        self.q_bias = nnx.Param(jnp.zeros((L, Hn, hd)))
        self.k_kernel = nnx.Param(_lecun(k(), (L, W, Hn, hd), W))
        self.k_bias = nnx.Param(jnp.zeros((L, Hn, hd)))
        self.v_kernel = nnx.Param(_lecun(k(), (L, W, Hn, hd), W))
        self.v_bias = nnx.Param(jnp.zeros((L, Hn, hd)))
        self.out_kernel = nnx.Param(_lecun(k(), (L, Hn, hd, W), W))
        self.out_bias = nnx.Param(jnp.zeros((L, W)))
        self.ln2_scale = nnx.Param(jnp.ones((L, W)))
        self.ln2_bias = nnx.Param(jnp.zeros((L, W)))
        self.mlp_in_kernel = nnx.Param(_lecun(k(), (L, W, M), W))
        self.mlp_in_bias = nnx.Param(jnp.zeros((L, M)))
        self.mlp_out_kernel = nnx.Param(_lecun(k(), (L, M, W), M))
        self.mlp_out_bias = nnx.Param(jnp.zeros((L, W)))

    def weights(self) -> dict:
        return {name: p[...] for name, p in vars(self).items() if isinstance(p, nnx.Param)}


class VisionEncoder(nnx.Module):
    def __init__(self, cfg: VisionConfig, num_patches: int, out_width: int, rngs: nnx.Rngs, remat: bool = False):
        self.cfg = cfg
        self.remat = remat
        P, W = cfg.patch_size, cfg.width
        k = rngs.params
        self.patch_kernel = nnx.Param(_lecun(k(), (P, P, 3, W), P * P * 3))
        self.patch_bias = nnx.Param(jnp.zeros((W,)))
        self.pos_embed = nnx.Param(jax.random.normal(k(), (1, num_patches, W)) * W**-0.5)
        self.blocks = VisionBlocks(cfg, rngs)
        self.final_ln_scale = nnx.Param(jnp.ones((W,)))
        self.final_ln_bias = nnx.Param(jnp.zeros((W,)))
        self.proj_kernel = nnx.Param(_lecun(k(), (W, out_width), W))
        self.proj_bias = nnx.Param(jnp.zeros((out_width,)))

    def __call__(self, images: jax.Array, dtype) -> jax.Array:
        """images (B, H, W, 3) float in [-1, 1] -> tokens (B, num_patches, out_width)."""
        P = self.cfg.patch_size
        B, H, W_img, _ = images.shape
        # Non-overlapping patches as one matmul (same as a stride-P convolution).
        x = images.reshape(B, H // P, P, W_img // P, P, 3).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(B, (H // P) * (W_img // P), P * P * 3).astype(jnp.float32)
        x = x @ self.patch_kernel[...].reshape(P * P * 3, -1) + self.patch_bias[...]
        x = (x + self.pos_embed[...]).astype(dtype)
        hd = self.cfg.width // self.cfg.num_heads

        def block(x, w):
            w = jax.tree.map(lambda a: a.astype(dtype), w)
            h = layer_norm(x, w["ln1_scale"], w["ln1_bias"])
            q = jnp.einsum("btd,dnh->btnh", h, w["q_kernel"]) + w["q_bias"]
            k_ = jnp.einsum("btd,dnh->btnh", h, w["k_kernel"]) + w["k_bias"]
            v = jnp.einsum("btd,dnh->btnh", h, w["v_kernel"]) + w["v_bias"]
            logits = jnp.einsum("btnh,bsnh->bnts", q * hd**-0.5, k_, preferred_element_type=jnp.float32)
            probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
            a = jnp.einsum("bnts,bsnh->btnh", probs, v)
            x = x + jnp.einsum("btnh,nhd->btd", a, w["out_kernel"]) + w["out_bias"]
            h = layer_norm(x, w["ln2_scale"], w["ln2_bias"])
            h = jax.nn.gelu(h @ w["mlp_in_kernel"] + w["mlp_in_bias"], approximate=True)
            return x + h @ w["mlp_out_kernel"] + w["mlp_out_bias"], None

        if self.remat:
            block = jax.checkpoint(block)
        x, _ = jax.lax.scan(block, x, self.blocks.weights())
        x = layer_norm(x, self.final_ln_scale[...].astype(dtype), self.final_ln_bias[...].astype(dtype))
        return x @ self.proj_kernel[...].astype(dtype) + self.proj_bias[...].astype(dtype)
