"""openpi π0 parameter import, on a synthetic tree with openpi's structure at tiny sizes.

The tree is written here from openpi's module layout (big_vision SigLIP with scanned
`encoderblock`, Gemma mixture with `_1` names for the action expert, scanned `layers`,
nnx "value" leaves, orbax {"params": ...}), not from the import table.
"""

from dataclasses import replace

import jax
import numpy as np
import pytest
from flax import nnx

from crane_x7_vla.backends.openpi import openpi_import as oi
from crane_x7_vla.backends.openpi.model import Pi0Model


def openpi_tree(cfg, rng, lora_rank=0):
    v, p, e = cfg.vision, cfg.prefix, cfg.expert
    L, W, M, Hn = v.depth, v.width, v.mlp_dim, v.num_heads
    r = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    dense = lambda i, o, lead=(): {"kernel": r(*lead, i, o), "bias": r(*lead, o)}  # noqa: E731
    ln = lambda: {"scale": r(L, W), "bias": r(L, W)}  # noqa: E731
    hd = W // Hn
    img = {
        "embedding": {"kernel": r(v.patch_size, v.patch_size, 3, W), "bias": r(W)},
        "pos_embedding": r(1, cfg.num_patches, W),
        "Transformer": {
            "encoderblock": {
                "LayerNorm_0": ln(),
                "LayerNorm_1": ln(),
                "MultiHeadDotProductAttention_0": {
                    "query": {"kernel": r(L, W, Hn, hd), "bias": r(L, Hn, hd)},
                    "key": {"kernel": r(L, W, Hn, hd), "bias": r(L, Hn, hd)},
                    "value": {"kernel": r(L, W, Hn, hd), "bias": r(L, Hn, hd)},
                    "out": {"kernel": r(L, Hn, hd, W), "bias": r(L, W)},
                },
                "MlpBlock_0": {"Dense_0": dense(W, M, (L,)), "Dense_1": dense(M, W, (L,))},
            },
            "encoder_norm": {"scale": r(W), "bias": r(W)},
        },
        "head": dense(W, p.width),
    }
    layers = {"attn": {}}
    for suffix, g in (("", p), ("_1", e)):
        D, F, N, K, H, Ld = g.width, g.mlp_dim, g.num_heads, g.num_kv_heads, g.head_dim, g.depth
        layers["attn"][f"q_einsum{suffix}"] = {"w": r(Ld, N, D, H)}
        layers["attn"][f"kv_einsum{suffix}"] = {"w": r(Ld, 2, K, D, H)}
        layers["attn"][f"attn_vec_einsum{suffix}"] = {"w": r(Ld, N, H, D)}
        layers[f"pre_attention_norm{suffix}"] = {"scale": r(Ld, D)}
        layers[f"pre_ffw_norm{suffix}"] = {"scale": r(Ld, D)}
        layers[f"mlp{suffix}"] = {"gating_einsum": r(Ld, 2, D, F), "linear": r(Ld, F, D)}
        if lora_rank and not suffix:
            q = layers["attn"]["q_einsum"]
            q["lora_a"], q["lora_b"] = r(Ld, N, D, lora_rank), r(Ld, N, lora_rank, H)
    A, E = cfg.action_dim, e.width
    tree = {
        "PaliGemma": {
            "img": img,
            "llm": {
                "embedder": {"input_embedding": r(cfg.vocab_size, p.width)},
                "layers": layers,
                "final_norm": {"scale": r(p.width)},
                "final_norm_1": {"scale": r(E)},
            },
        },
        "state_proj": dense(A, E),
        "action_in_proj": dense(A, E),
        "action_time_mlp_in": dense(2 * E, E),
        "action_time_mlp_out": dense(E, E),
        "action_out_proj": dense(E, A),
    }
    return jax.tree.map(lambda x: {"value": x}, tree)  # nnx State leaves, as openpi saves them


def _flat_model(model):
    return {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_import_from_orbax_checkpoint(tiny_cfg, tmp_path):
    import orbax.checkpoint as ocp

    tree = openpi_tree(tiny_cfg, np.random.default_rng(0))
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save((tmp_path / "pi0_base" / "params").resolve(), {"params": tree})
    imported = oi.import_params(oi.read_checkpoint(tmp_path / "pi0_base"))
    model = Pi0Model(tiny_cfg, nnx.Rngs(0))
    before = _flat_model(model)
    oi.load_into(model, imported)
    after = _flat_model(model)
    assert set(imported) == set(after)  # every weight of the model came from openpi
    # spot checks against the source tree, with openpi's names
    src = tree["PaliGemma"]
    np.testing.assert_array_equal(after["prefix_lm/layers/kv"], src["llm"]["layers"]["attn"]["kv_einsum"]["w"]["value"])
    np.testing.assert_array_equal(after["action_expert/layers/q"], src["llm"]["layers"]["attn"]["q_einsum_1"]["w"]["value"])
    np.testing.assert_array_equal(after["action_expert/layers/gate_up"], src["llm"]["layers"]["mlp_1"]["gating_einsum"]["value"])
    np.testing.assert_array_equal(
        after["vision/blocks/v_kernel"],
        src["img"]["Transformer"]["encoderblock"]["MultiHeadDotProductAttention_0"]["value"]["kernel"]["value"],
    )
    np.testing.assert_array_equal(after["vision/proj_kernel"], src["img"]["head"]["kernel"]["value"])
    np.testing.assert_array_equal(after["action_out_proj/bias"], tree["action_out_proj"]["bias"]["value"])
    assert not np.array_equal(before["prefix_lm/embed"], after["prefix_lm/embed"])
    # the imported model runs
    err = model.flow_matching_error(jax.random.key(0), {
        "images": np.zeros((1, tiny_cfg.num_cameras, 32, 32, 3), np.uint8),
        "tokens": np.ones((1, tiny_cfg.max_token_len), np.int32),
        "token_mask": np.ones((1, tiny_cfg.max_token_len), bool),
        "state": np.zeros((1, 32), np.float32),
        "actions": np.zeros((1, tiny_cfg.action_horizon, 32), np.float32),
    })
    assert np.isfinite(np.asarray(err)).all()


def test_import_lora_adapters_and_errors(tiny_cfg):
    tree = openpi_tree(tiny_cfg, np.random.default_rng(1), lora_rank=2)
    imported = oi.import_params(tree)
    assert "prefix_lm/layers/q_lora_a" in imported
    with pytest.raises(ValueError, match="LoRA adapters need"):
        oi.load_into(Pi0Model(tiny_cfg, nnx.Rngs(0)), imported)  # this model has no adapters
    oi.load_into(Pi0Model(replace(tiny_cfg, lora_rank=2), nnx.Rngs(0)), imported)

    broken = openpi_tree(tiny_cfg, np.random.default_rng(2))
    del broken["PaliGemma"]["llm"]["layers"]["mlp_1"]
    with pytest.raises(ValueError, match="mlp_1/linear"):
        oi.import_params(broken)
    other = openpi_tree(replace(tiny_cfg, action_dim=16), np.random.default_rng(3))
    with pytest.raises(ValueError, match="state_proj/kernel"):
        oi.load_into(Pi0Model(tiny_cfg, nnx.Rngs(0)), oi.import_params(other))
