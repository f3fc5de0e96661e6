"""The π0-style policy network: vision-language prefix + action expert, flow matching.

Tokens: [images of every camera | instruction]  (prefix, bidirectional)
        [state | a_1 ... a_H]                     (suffix)
The state token attends to the prefix and itself; action tokens attend to the
prefix, the state and each other; prefix tokens never attend to the suffix.

Flow matching (openpi's convention, t = 1 is noise, t = 0 is data):
    x_t = t * noise + (1 - t) * actions,   target u = noise - actions,
    t ~ Beta(1.5, 1) * 0.999 + 0.001.
Sampling integrates dx/dt = v(x_t, t) from t = 1 to 0 with a fixed number of Euler
steps; the prefix keys/values are computed once and reused by every step. Real-time
chunking guides that integration towards the actions already committed to (see
sample_actions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from crane_x7_vla.backends.openpi.gemma import GemmaLayers, joint_layers, rms_norm
from crane_x7_vla.backends.openpi.presets import ModelConfig
from crane_x7_vla.backends.openpi.vit import VisionEncoder


def attention_mask(input_mask: jax.Array, block_start: jax.Array) -> jax.Array:
    """(B, N) valid tokens + (N,) flags starting a new causal block -> (B, N, N) bool.

    A token attends to every valid token whose block index is <= its own: tokens of
    one block see each other, later blocks see earlier ones, never the reverse.
    """
    block = jnp.cumsum(jnp.broadcast_to(block_start, input_mask.shape), axis=1)
    causal = block[:, None, :] <= block[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    return causal & valid


def time_embedding(t: jax.Array, dim: int, min_period=4e-3, max_period=4.0) -> jax.Array:
    """Sinusoidal embedding of scalars t (B,) in [0, 1] -> (B, dim)."""
    frac = jnp.linspace(0.0, 1.0, dim // 2)
    period = min_period * (max_period / min_period) ** frac
    angle = t[:, None].astype(jnp.float32) * (2 * jnp.pi / period)[None, :]
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


class Dense(nnx.Module):
    def __init__(self, d_in: int, d_out: int, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (d_in, d_out)) * d_in**-0.5)
        self.bias = nnx.Param(jnp.zeros((d_out,)))

    def __call__(self, x):
        return x @ self.kernel[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


class PrefixLM(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        D = cfg.prefix.width
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (cfg.vocab_size, D)) * D**-0.5)
        self.layers = GemmaLayers(cfg.prefix, rngs, lora_rank=cfg.lora_rank, lora_groups=cfg.lora_groups)
        self.final_norm = nnx.Param(jnp.zeros((D,)))


class ActionExpert(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.layers = GemmaLayers(cfg.expert, rngs, lora_rank=cfg.expert_lora_rank, lora_groups=cfg.lora_groups)
        self.final_norm = nnx.Param(jnp.zeros((cfg.expert.width,)))


class Pi0Model(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        E = cfg.expert.width
        self.vision = VisionEncoder(cfg.vision, cfg.num_patches, cfg.prefix.width, rngs, remat=cfg.remat)
        self.prefix_lm = PrefixLM(cfg, rngs)
        self.action_expert = ActionExpert(cfg, rngs)
        self.state_proj = Dense(cfg.action_dim, E, rngs)
        self.action_in_proj = Dense(cfg.action_dim, E, rngs)
        self.action_time_mlp_in = Dense(2 * E, E, rngs)
        self.action_time_mlp_out = Dense(E, E, rngs)
        self.action_out_proj = Dense(E, cfg.action_dim, rngs)

    # -- pieces -------------------------------------------------------------------
    @property
    def dtype(self):
        return jnp.dtype(self.cfg.dtype)

    def _lora(self):
        """(attention adapter scale alpha / r, dropout rate) of each stream."""
        c = self.cfg
        return [
            (c.lora_alpha / c.lora_rank if c.lora_rank else 0.0, c.lora_dropout),
            (c.expert_lora_alpha / c.expert_lora_rank if c.expert_lora_rank else 0.0, c.lora_dropout),
        ]

    def embed_prefix(self, images, tokens, token_mask, image_mask=None):
        """images (B, C, H, W, 3) uint8; tokens/token_mask (B, Lt) -> (B, P, D), (B, P), (P,).

        image_mask (B, C) bool, optional: False marks a camera slot without a picture; its
        tokens are left out of attention (openpi's image masks). None: every slot is valid.
        """
        B, C = images.shape[:2]
        pix = images.reshape((B * C,) + images.shape[2:]).astype(jnp.float32) / 127.5 - 1.0
        img = self.vision(pix, self.dtype).reshape(B, C * self.cfg.num_patches, -1)
        D = self.cfg.prefix.width
        txt = jnp.take(self.prefix_lm.embed[...], tokens, axis=0).astype(self.dtype) * jnp.asarray(
            D**0.5, self.dtype
        )
        x = jnp.concatenate([img, txt], axis=1)
        if image_mask is None:
            img_mask = jnp.ones(img.shape[:2], bool)
        else:
            img_mask = jnp.repeat(jnp.asarray(image_mask, bool), self.cfg.num_patches, axis=1)
        mask = jnp.concatenate([img_mask, token_mask.astype(bool)], axis=1)
        return x, mask, jnp.zeros((x.shape[1],), bool)

    def embed_suffix(self, state, x_t, t):
        """state (B, A), x_t (B, Hz, A), t (B,) -> (B, 1 + Hz, E), (B, 1 + Hz), (1 + Hz,)."""
        dt = self.dtype
        s = self.state_proj(state.astype(dt))[:, None, :]
        a = self.action_in_proj(x_t.astype(dt))
        te = jnp.broadcast_to(time_embedding(t, a.shape[-1]).astype(dt)[:, None, :], a.shape)
        h = self.action_time_mlp_out(nnx.swish(self.action_time_mlp_in(jnp.concatenate([a, te], axis=-1))))
        x = jnp.concatenate([s, h], axis=1)
        Hz = x_t.shape[1]
        starts = jnp.array([True, True] + [False] * (Hz - 1))
        return x, jnp.ones(x.shape[:2], bool), starts

    def _stream_weights(self):
        return [self.prefix_lm.layers.weights(), self.action_expert.layers.weights()]

    def _run(self, xs, positions, mask, kv_cache=None, dropout_key=None):
        return joint_layers(
            self._stream_weights(),
            xs,
            positions,
            mask,
            num_kv_heads=self.cfg.prefix.num_kv_heads,
            dtype=self.dtype,
            lora=self._lora(),
            kv_cache=kv_cache,
            remat=self.cfg.remat,
            dropout_key=dropout_key,
        )

    def _velocity(self, suffix_out):
        h = rms_norm(suffix_out, self.action_expert.final_norm[...])
        return self.action_out_proj(h[:, -self.cfg.action_horizon :]).astype(jnp.float32)

    # -- training -----------------------------------------------------------------
    def flow_matching_error(self, rng, batch, *, train: bool = False) -> jax.Array:
        """Squared error of the predicted velocity, per element (B, Hz, A).

        batch: images (B, C, H, W, 3) uint8, tokens (B, Lt) int, token_mask (B, Lt) bool,
               state (B, A), actions (B, Hz, A) normalised and padded; optional image_mask (B, C).
        train: apply LoRA dropout (the only stochastic layer besides noise and time).
        """
        actions = batch["actions"].astype(jnp.float32)
        noise_rng, time_rng, dropout_rng = jax.random.split(rng, 3)
        noise = jax.random.normal(noise_rng, actions.shape)
        # Beta(1.5, 1) has CDF t**1.5, so u**(1/1.5) with u uniform is an exact draw (and cheap to compile).
        t = jax.random.uniform(time_rng, actions.shape[:1]) ** (1.0 / 1.5) * 0.999 + 0.001
        x_t = t[:, None, None] * noise + (1.0 - t[:, None, None]) * actions
        u_t = noise - actions
        p_x, p_mask, p_start = self.embed_prefix(batch["images"], batch["tokens"], batch["token_mask"],
                                                 batch.get("image_mask"))
        s_x, s_mask, s_start = self.embed_suffix(batch["state"], x_t, t)
        mask_all = jnp.concatenate([p_mask, s_mask], axis=1)
        attn = attention_mask(mask_all, jnp.concatenate([p_start, s_start]))
        positions = jnp.cumsum(mask_all, axis=1) - 1
        (_, suffix_out), _ = self._run([p_x, s_x], positions, attn, dropout_key=dropout_rng if train else None)
        return jnp.square(self._velocity(suffix_out) - u_t)

    # -- inference ----------------------------------------------------------------
    def sample_actions(self, rng, obs, num_steps: int = 10, noise=None, guide=None, guide_weights=None,
                       max_guidance: float | None = None, guide_jacobian: bool = False) -> jax.Array:
        """Euler integration from noise (t = 1) to actions (t = 0): (B, Hz, A) normalised.

        With `guide` (B, Hz, A) and `guide_weights` (B, Hz, A) in [0, 1] (real-time chunking,
        Black et al. 2025): every step pulls the chunk towards the guide where the weights are
        not zero. The step's estimate of the clean chunk is a = x - t * v(x); the velocity gets
        c * g subtracted, c = min(max_guidance, (1 - s) / (s * r^2)) with s = 1 - t and
        r^2 = (1 - s)^2 / (s^2 + (1 - s)^2); max_guidance defaults to num_steps, so that one
        step moves the clean estimate at most onto the guide. g is W * (guide - a), the
        residual passed through the identity in place of da/dx; with `guide_jacobian`, the
        exact -d/dx of 1/2 sum(W * (guide - a)^2), a vector-Jacobian product through the
        action expert. The exact form vanishes where a barely depends on x (a denoiser that
        has learned its data closely maps every x to nearly the same chunk): on the tiny
        preset trained here it left the seams' gaps almost as they were, the identity form cut
        them by 6-15x (bench/rtc_seams.py)."""
        p_x, p_mask, p_start = self.embed_prefix(obs["images"], obs["tokens"], obs["token_mask"], obs.get("image_mask"))
        p_attn = attention_mask(p_mask, p_start)
        p_pos = jnp.cumsum(p_mask, axis=1) - 1
        _, kv_cache = self._run([p_x, None], p_pos, p_attn)
        B = p_x.shape[0]
        shape = (B, self.cfg.action_horizon, self.cfg.action_dim)
        x = jax.random.normal(rng, shape) if noise is None else noise
        n_prefix = jnp.sum(p_mask, axis=1)

        def velocity(x, t):
            s_x, s_mask, s_start = self.embed_suffix(obs["state"], x, jnp.full((B,), t))
            to_prefix = jnp.broadcast_to(p_mask[:, None, :], (B, s_x.shape[1], p_mask.shape[1]))
            mask = jnp.concatenate([to_prefix, attention_mask(s_mask, s_start)], axis=-1)
            positions = n_prefix[:, None] + jnp.cumsum(s_mask, axis=1) - 1
            (_, out), _ = self._run([None, s_x], positions, mask, kv_cache=kv_cache)
            return self._velocity(out)

        def step(i, x):
            t = 1.0 - i / num_steps
            if guide is None:
                return x - velocity(x, t) / num_steps
            if guide_jacobian:
                v, pullback = jax.vjp(lambda y: velocity(y, t), x)
            else:
                v = velocity(x, t)
            residual = guide_weights * (guide - (x - t * v))
            g = residual - t * pullback(residual)[0] if guide_jacobian else residual
            s = 1.0 - t
            r2 = (1.0 - s) ** 2 / (s**2 + (1.0 - s) ** 2)
            c = jnp.minimum(num_steps if max_guidance is None else max_guidance,
                            (1.0 - s) / jnp.maximum(s * r2, 1e-9))
            return x - (v - c * g) / num_steps

        return jax.lax.fori_loop(0, num_steps, step, x)


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))
