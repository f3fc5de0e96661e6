"""Model construction, trainable/frozen split, optimizer and the jitted step functions.

Parameters are split once into `trainable` (float32, optimised, with an EMA copy) and
`frozen` (stored in the run's precision, never updated). Which weights are frozen:

  * LoRA: the weights of each decoder that carries adapters (the prefix decoder, and the
    action expert when it has its own adapters, as openpi's freeze filter); adapters train.
  * `--freeze-vision`: the image encoder.
  * `--freeze-prefix`: image encoder and prefix decoder (only the action expert
    and the projections, plus LoRA adapters if any, train).

One optimizer step = `grad_accumulation_steps` micro-batches (a scan inside one jitted
call), AdamW with warmup + cosine/linear/constant schedule and gradient clipping, then the
EMA update. The random key of step s is fold_in(seed, s): a resumed run draws the same
noise, times and dropout as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from crane_x7_vla.backends.openpi.model import Pi0Model
from crane_x7_vla.backends.openpi.presets import ModelConfig


def trainable_filter(cfg: ModelConfig, *, freeze_vision: bool = False, freeze_prefix: bool = False):
    def is_trainable(path, _value) -> bool:
        top, leaf = str(path[0]), str(path[-1])
        if "_lora_" in leaf:
            return True
        if top == "prefix_lm":
            return not (cfg.lora_rank > 0 or freeze_prefix)
        if top == "action_expert":
            return not cfg.expert_lora_rank > 0
        if top == "vision":
            return not (freeze_vision or freeze_prefix)
        return True

    return is_trainable


@dataclass
class Parts:
    graphdef: object
    trainable: nnx.State
    frozen: nnx.State


def build(cfg: ModelConfig, seed: int, *, freeze_vision=False, freeze_prefix=False, init_params=None) -> Parts:
    """Create the model (optionally load imported weights), split it, cast frozen weights."""
    model = init_model(cfg, seed)
    if init_params is not None:
        from crane_x7_vla.backends.openpi.openpi_import import load_into

        load_into(model, init_params)
    graphdef, trainable, frozen = nnx.split(
        model, trainable_filter(cfg, freeze_vision=freeze_vision, freeze_prefix=freeze_prefix), ...
    )
    dtype = jnp.dtype(cfg.dtype)
    frozen = jax.tree.map(lambda x: x.astype(dtype), frozen)
    return Parts(graphdef, trainable, frozen)


def prng_key(seed: int):
    """Random keys of this backend. XLA's RngBitGenerator ("rbg") compiles several times
    faster than the default threefry; draws are reproducible on the same platform."""
    return jax.random.key(seed, impl="rbg")


def init_model(cfg: ModelConfig, seed: int) -> Pi0Model:
    """A randomly initialised model; the initialisation runs as one compiled program
    (eagerly, every weight's random draw would be compiled on its own)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Pi0Model(cfg, nnx.Rngs(params=prng_key(seed)))))
    state = jax.jit(lambda: nnx.split(Pi0Model(cfg, nnx.Rngs(params=prng_key(seed))))[1])()
    return nnx.merge(graphdef, state)


def abstract_model(cfg: ModelConfig):
    """graphdef and a shape-only state of the full model (no memory allocated)."""
    model = nnx.eval_shape(lambda: Pi0Model(cfg, nnx.Rngs(0)))
    return nnx.split(model)


def learning_rate_schedule(peak: float, total_steps: int, warmup_ratio: float, kind: str):
    warmup = int(round(total_steps * warmup_ratio))
    rest = max(1, total_steps - warmup)
    if kind == "cosine":
        after = optax.cosine_decay_schedule(peak, rest)
    elif kind == "linear":
        after = optax.linear_schedule(peak, 0.0, rest)
    else:
        after = optax.constant_schedule(peak)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def optimizer(schedule, *, weight_decay: float, max_grad_norm: float):
    parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=weight_decay))
    return optax.chain(*parts)


def loss_mask(cfg: ModelConfig, real_dim: int = 8, all_dims: bool = False, extra_dims=()) -> jnp.ndarray:
    """Loss on the robot's real action dimensions only (padding carries no signal) and on
    `extra_dims` (the goal point's), or on every padded dimension (all_dims, openpi's π0 loss)."""
    dims = np.arange(cfg.action_dim)
    return jnp.asarray((dims < real_dim) | np.isin(dims, list(extra_dims)) | all_dims, jnp.float32)


def _masked_mean(err, mask, batch=None, goal_mask=None):
    """Mean error over the dimensions of `mask`. A batch with `action_weight` (B,) (goal scenes:
    0 for a picture whose actions are not to be learned) weighs each sample's dimensions of
    `mask` outside `goal_mask` by it; the goal point's dimensions always count."""
    if batch is None or "action_weight" not in batch:
        return (err * mask).sum() / (err.shape[0] * err.shape[1] * mask.sum())
    goal = jnp.zeros_like(mask) if goal_mask is None else goal_mask
    w = (mask - goal)[None, :] * batch["action_weight"][:, None] + goal[None, :]  # (B, A)
    return (err * w[:, None, :]).sum() / (err.shape[1] * jnp.maximum(w.sum(), 1.0))


def make_train_step(graphdef, tx, cfg: ModelConfig, seed: int, ema_decay: float, all_dims: bool = False,
                    extra_dims=()):
    mask = loss_mask(cfg, all_dims=all_dims, extra_dims=extra_dims)
    goal_mask = loss_mask(cfg, real_dim=0, extra_dims=extra_dims)
    base_key = prng_key(seed)

    def loss_fn(trainable, frozen, micro, key):
        model = nnx.merge(graphdef, trainable, frozen)
        return _masked_mean(model.flow_matching_error(key, micro, train=True), mask, micro, goal_mask)

    def step_fn(trainable, frozen, ema, opt_state, batch, step):
        """batch: arrays with a leading micro-batch axis (grad accumulation)."""
        key = jax.random.fold_in(base_key, step)
        n_micro = batch["state"].shape[0]

        def micro_step(carry, xs):
            grads, loss = carry
            micro, i = xs
            loss_i, g = jax.value_and_grad(loss_fn)(trainable, frozen, micro, jax.random.fold_in(key, i))
            return (jax.tree.map(jnp.add, grads, g), loss + loss_i), None

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        (grads, loss), _ = jax.lax.scan(micro_step, (zeros, 0.0), (batch, jnp.arange(n_micro)))
        grads = jax.tree.map(lambda g: g / n_micro, grads)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        # EMA with a warm-up (short runs are not dominated by the random init); decay 0 = the weights.
        d = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, trainable)
        metrics = {"loss": loss / n_micro, "grad_norm": optax.tree.norm(grads)}
        return trainable, ema, opt_state, metrics

    return step_fn


def make_eval_loss(graphdef, cfg: ModelConfig, all_dims: bool = False, extra_dims=()):
    mask = loss_mask(cfg, all_dims=all_dims, extra_dims=extra_dims)
    goal_mask = loss_mask(cfg, real_dim=0, extra_dims=extra_dims)

    def fn(trainable, frozen, batch, key):
        model = nnx.merge(graphdef, trainable, frozen)
        return _masked_mean(model.flow_matching_error(key, batch, train=False), mask, batch, goal_mask)

    return fn


def make_sampler(graphdef, num_steps: int):
    """fn(obs, key, *states) -> (B, horizon, action_dim) normalised model-space actions."""

    def fn(obs, key, *states):
        model = nnx.merge(graphdef, *states)
        return model.sample_actions(key, obs, num_steps=num_steps)

    return fn


def merge_lora(flat: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Fold LoRA adapters into their weights (W + scale * delta(A, B), gemma.lora_delta; scale
    alpha / r for attention adapters, 1 for MLP ones); returns a tree without adapters."""
    from crane_x7_vla.backends.openpi.gemma import LORA_TARGETS_BY_GROUP, lora_delta

    scales = {"prefix_lm": cfg.lora_alpha / cfg.lora_rank if cfg.lora_rank else 0.0,
              "action_expert": cfg.expert_lora_alpha / cfg.expert_lora_rank if cfg.expert_lora_rank else 0.0}
    out = {k: v for k, v in flat.items() if "_lora_" not in k.rsplit("/", 1)[-1]}
    for key in list(out):
        a, b = f"{key}_lora_a", f"{key}_lora_b"
        if a in flat:
            target = key.rsplit("/", 1)[-1]
            scale = 1.0 if target in LORA_TARGETS_BY_GROUP["ffn"] else scales[key.split("/", 1)[0]]
            delta = lora_delta(target, np.asarray(flat[a], np.float32), np.asarray(flat[b], np.float32), xp=np)
            out[key] = (np.asarray(out[key], np.float32) + scale * delta).astype(np.asarray(out[key]).dtype)
    return out
