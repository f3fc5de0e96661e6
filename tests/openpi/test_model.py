"""The π0-style network: shapes, attention structure, flow-matching sampling with a KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crane_x7_vla.backends.openpi.model import Pi0Model, attention_mask, count_params
from crane_x7_vla.backends.openpi.presets import PI0, TINY, get_preset, with_depth


def _batch(cfg, B=2, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "images": jnp.asarray(
            rng.integers(0, 255, (B, cfg.num_cameras, cfg.image_height, cfg.image_width, 3)), jnp.uint8
        ),
        "tokens": jnp.asarray(rng.integers(3, 100, (B, cfg.max_token_len)), jnp.int32),
        "token_mask": jnp.asarray(np.arange(cfg.max_token_len)[None].repeat(B, 0) < np.array([[5], [3]])[:B]),
        "state": jnp.asarray(rng.normal(size=(B, cfg.action_dim)), jnp.float32),
        "actions": jnp.asarray(rng.uniform(-1, 1, (B, cfg.action_horizon, cfg.action_dim)), jnp.float32),
    }


def test_tiny_preset_is_small_and_pi0_is_sized_like_openpi():
    model = Pi0Model(TINY, nnx.Rngs(0))
    assert 1_000_000 <= count_params(nnx.state(model, nnx.Param)) <= 3_000_000
    # π0: Gemma 2B + 300M expert, 8 heads, 1 KV head, head dim 256; SigLIP So400m/14.
    assert (PI0.prefix.width, PI0.prefix.depth, PI0.prefix.mlp_dim) == (2048, 18, 16384)
    assert (PI0.expert.width, PI0.expert.depth, PI0.expert.mlp_dim) == (1024, 18, 4096)
    assert (PI0.prefix.num_heads, PI0.prefix.num_kv_heads, PI0.prefix.head_dim) == (8, 1, 256)
    assert (PI0.vision.width, PI0.vision.depth, PI0.vision.patch_size, PI0.num_patches) == (1152, 27, 14, 256)
    # Parameter count of the real shapes without allocating them (π0: ~3.3B).
    shapes = nnx.eval_shape(lambda: Pi0Model(PI0, nnx.Rngs(0)))
    n = count_params(nnx.state(shapes, nnx.Param))
    assert 3.1e9 < n < 3.5e9, n
    assert with_depth(PI0, 1).prefix.depth == 1 and with_depth(PI0, 1).vision.width == 1152
    assert get_preset("tiny") is TINY


def test_attention_mask_prefix_lm():
    # prefix of 3 (one padded), then state, then 3 actions
    input_mask = jnp.array([[True, True, False, True, True, True, True]])
    starts = jnp.array([False, False, False, True, True, False, False])
    m = np.asarray(attention_mask(input_mask, starts))[0]
    prefix, state, actions = [0, 1], [3], [4, 5, 6]
    assert m[np.ix_(prefix, prefix)].all()  # bidirectional prefix
    assert not m[np.ix_(prefix, state + actions)].any()  # prefix never sees the suffix
    assert m[np.ix_(state + actions, prefix)].all()  # suffix sees the prefix
    assert not m[np.ix_(state, actions)].any()  # the state token does not see actions
    assert m[np.ix_(actions, state + actions)].all()  # actions see state and each other
    assert not m[:, 2].any() and not m[2].any()  # padding is invisible and sees nothing


def test_loss_shape_and_prefix_independent_of_suffix(tiny_cfg):
    model = Pi0Model(tiny_cfg, nnx.Rngs(0))
    batch = _batch(tiny_cfg)
    err = model.flow_matching_error(jax.random.key(0), batch)
    assert err.shape == (2, tiny_cfg.action_horizon, tiny_cfg.action_dim)
    assert np.isfinite(np.asarray(err)).all()

    p_x, p_mask, p_start = model.embed_prefix(batch["images"], batch["tokens"], batch["token_mask"])
    outs = []
    for scale in (0.0, 5.0):
        s_x, s_mask, s_start = model.embed_suffix(batch["state"] * scale, batch["actions"] * scale, jnp.ones(2) * 0.3)
        mask = jnp.concatenate([p_mask, s_mask], 1)
        attn = attention_mask(mask, jnp.concatenate([p_start, s_start]))
        (prefix_out, suffix_out), _ = model._run([p_x, s_x], jnp.cumsum(mask, 1) - 1, attn)
        outs.append((np.asarray(prefix_out), np.asarray(suffix_out)))
    valid = np.asarray(p_mask)  # padding tokens see nothing valid; their outputs are never used
    np.testing.assert_allclose(outs[0][0][valid], outs[1][0][valid], atol=1e-5)  # prefix unaffected by suffix
    assert np.abs(outs[0][1] - outs[1][1]).max() > 1e-3  # the suffix did change

    # the suffix depends on the prefix (a different image changes it)
    other = dict(batch, images=255 - batch["images"])
    e1 = model.flow_matching_error(jax.random.key(3), batch)
    e2 = model.flow_matching_error(jax.random.key(3), other)
    assert np.abs(np.asarray(e1) - np.asarray(e2)).max() > 1e-4


def test_cached_sampling_matches_full_forward(tiny_cfg):
    """One Euler step with the prefix KV cache equals the step computed by a full forward pass."""
    model = Pi0Model(tiny_cfg, nnx.Rngs(1))
    batch = _batch(tiny_cfg, seed=2)
    noise = jax.random.normal(jax.random.key(5), batch["actions"].shape)
    one_step = model.sample_actions(None, batch, num_steps=1, noise=noise)
    # full forward at t = 1: x_t = noise, so the velocity v gives x_0 = noise - v
    p_x, p_mask, p_start = model.embed_prefix(batch["images"], batch["tokens"], batch["token_mask"])
    s_x, s_mask, s_start = model.embed_suffix(batch["state"], noise, jnp.ones(2))
    mask = jnp.concatenate([p_mask, s_mask], 1)
    attn = attention_mask(mask, jnp.concatenate([p_start, s_start]))
    (_, suffix_out), _ = model._run([p_x, s_x], jnp.cumsum(mask, 1) - 1, attn)
    np.testing.assert_allclose(np.asarray(one_step), np.asarray(noise - model._velocity(suffix_out)), atol=1e-4)

    ten = model.sample_actions(jax.random.key(0), batch, num_steps=10)
    assert ten.shape == (2, tiny_cfg.action_horizon, tiny_cfg.action_dim)
    assert np.isfinite(np.asarray(ten)).all()


def test_fresh_lora_adapters_are_initialised_as_openpis(tiny_cfg):
    """openpi's LoRAConfig.init_fn (normal, stddev 0.01) draws both factors; the adapted model
    starts as the base model with those adapters' small product folded into its weights."""
    from dataclasses import replace

    from crane_x7_vla.backends.openpi.train_state import merge_lora

    cfg = replace(tiny_cfg, lora_rank=4, lora_alpha=8.0, expert_lora_rank=2, expert_lora_alpha=2.0, lora_dropout=0.5)
    base = Pi0Model(tiny_cfg, nnx.Rngs(4))
    lora = Pi0Model(cfg, nnx.Rngs(4))
    flat = {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(lora, nnx.Param))}
    factors = {k: v for k, v in flat.items() if "_lora_" in k}
    assert {"prefix_lm/layers/q_lora_a", "prefix_lm/layers/down_lora_b", "action_expert/layers/attn_out_lora_a"} <= set(
        factors
    )
    for side in ("_lora_a", "_lora_b"):
        values = np.concatenate([v.ravel() for k, v in factors.items() if k.endswith(side)])
        assert values.size > 5000
        assert abs(values.std() - 0.01) < 0.0005 and abs(values.mean()) < 0.0005, (side, values.std(), values.mean())
    nnx.update(lora, nnx.state(base, nnx.Param))  # the base weights, the fresh adapters kept
    flat = {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(lora, nnx.Param))}
    merged = Pi0Model(tiny_cfg, nnx.Rngs(9))
    nnx.update(merged, nnx.State(_nest({k: jnp.asarray(v) for k, v in merge_lora(flat, cfg).items()})))
    batch = _batch(tiny_cfg)
    a = np.asarray(base.flow_matching_error(jax.random.key(1), batch))
    b = np.asarray(lora.flow_matching_error(jax.random.key(1), batch))  # no dropout outside training
    m = np.asarray(merged.flow_matching_error(jax.random.key(1), batch))
    np.testing.assert_allclose(b, m, rtol=2e-6, atol=1e-5)  # float32 rounding of errors up to ~25
    assert 0 < np.abs(b - a).max() < 1e-2 * np.abs(a).max()  # adapters on: a small change, not none


def _nest(flat):
    out = {}
    for path, v in flat.items():
        d = out
        *head, last = path.split("/")
        for k in head:
            d = d.setdefault(k, {})
        d[last] = v
    return out


# ---- LoRA: openpi's published equations (models/lora.py) ------------------------------------------
#
# lora.Einsum(eqn = "lhs,rhs->out") with adapters on the weight's last two axes (a, b labels):
#   eqn_a = lhs , rhs[b -> L] -> out[b -> L]        eqn_b = out[b -> L] , rhs[a -> L] -> out
#   y = einsum(eqn, x, W) + alpha / rank * einsum(eqn_b, einsum(eqn_a, x, A), B)
# lora.FeedForward:  y = x @ W + (x @ A) @ B      (no scaling)
# The einsums below are the ones openpi's Gemma calls (upper-case labels as there; its "2" of
# the k/v axis is written C, as numpy's einsum takes letters only).

GEMMA_EINSUMS = {"q": "BTD,NDH->BTNH", "kv": "BSD,CKDH->CBSKH", "attn_out": "BTNH,NHD->BTD"}


def _published_lora_eqns(eqn):
    lhs, rest = eqn.split(",")
    rhs, out = rest.split("->")
    a_label, b_label = rhs[-2], rhs[-1]
    a_out = out.replace(b_label, "L")
    return f"{lhs},{rhs.replace(b_label, 'L')}->{a_out}", f"{a_out},{rhs.replace(a_label, 'L')}->{out}"


def test_lora_layers_agree_with_openpis_equations():
    from crane_x7_vla.backends.openpi.gemma import _project, lora_delta, lora_shapes

    rng = np.random.default_rng(0)
    B, T, D, N, K, H, F, r, alpha = 2, 5, 12, 3, 1, 4, 10, 2, 5.0
    shapes = {"q": (N, D, H), "kv": (2, K, D, H), "attn_out": (N, H, D), "gate_up": (2, D, F), "down": (F, D)}
    inputs = {"q": (B, T, D), "kv": (B, T, D), "attn_out": (B, T, N, H), "gate_up": (B, T, D), "down": (B, T, F)}
    for name, shape in shapes.items():
        a_shape, b_shape = lora_shapes(shape, r)
        w = {
            name: rng.normal(size=shape),
            f"{name}_lora_a": rng.normal(size=a_shape),
            f"{name}_lora_b": rng.normal(size=b_shape),
        }
        w = {k: jnp.asarray(v, jnp.float32) for k, v in w.items()}
        x = jnp.asarray(rng.normal(size=inputs[name]), jnp.float32)
        ours = np.asarray(_project(w, name, x, jnp.float32, (alpha / r, 0.0), None))
        W, A, Bm = (np.asarray(w[k], np.float64) for k in (name, f"{name}_lora_a", f"{name}_lora_b"))
        xx = np.asarray(x, np.float64)
        if name in GEMMA_EINSUMS:
            eqn = GEMMA_EINSUMS[name]
            eqn_a, eqn_b = _published_lora_eqns(eqn)
            ref = np.einsum(eqn, xx, W) + alpha / r * np.einsum(eqn_b, np.einsum(eqn_a, xx, A), Bm)
        elif name == "gate_up":  # FeedForward: w_gating[0] and w_gating[1], each x @ W + (x @ A) @ B
            ref = np.stack([xx @ W[c] + (xx @ A[c]) @ Bm[c] for c in range(2)])
        else:
            ref = xx @ W + (xx @ A) @ Bm
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4, err_msg=name)
        # the adapters folded into the weight give the same output
        scale = 1.0 if name in ("gate_up", "down") else alpha / r
        merged = {name: w[name] + scale * lora_delta(name, w[f"{name}_lora_a"], w[f"{name}_lora_b"])}
        np.testing.assert_allclose(
            np.asarray(_project(merged, name, x, jnp.float32, (0.0, 0.0), None)),
            ref,
            rtol=1e-4,
            atol=1e-4,
            err_msg=f"{name} merged",
        )
    # the attention output's adapter sums over heads in both factors
    assert _published_lora_eqns(GEMMA_EINSUMS["attn_out"]) == ("BTNH,NHL->BTL", "BTL,NLD->BTD")
