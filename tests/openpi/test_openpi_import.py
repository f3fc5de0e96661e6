"""openpi π0 checkpoints from disk: layout, sizes and LoRA read from the weights, clear errors.

The checkpoints are written by tests/openpi/openpi_layout.py in openpi's on-disk layout
(orbax CheckpointManager step directory, `params` item {"params": tree} with nnx "value"
leaves, assets/<asset_id>/norm_stats.json), at sizes unlike any preset of this backend.
"""

from dataclasses import replace

import jax
import numpy as np
import pytest
from flax import nnx

from crane_x7_vla.backends.openpi import openpi_import as oi
from crane_x7_vla.backends.openpi.model import Pi0Model
from crane_x7_vla.backends.openpi.presets import GemmaConfig, VisionConfig

from .openpi_layout import norm_stats, openpi_tree, unwrap, write_checkpoint


@pytest.fixture(scope="module")
def odd_cfg(tiny_cfg):
    """Sizes no preset has: 2 vision layers of width 48 (patch 8), decoders of depth 3 with
    2 heads of 16 and 1 KV head, an action expert of width 40, 24 action dimensions."""
    return replace(
        tiny_cfg,
        vision=VisionConfig(width=48, depth=2, mlp_dim=96, num_heads=3, patch_size=8),
        prefix=GemmaConfig(width=56, depth=3, mlp_dim=112, num_heads=2, num_kv_heads=1, head_dim=16),
        expert=GemmaConfig(width=40, depth=3, mlp_dim=80, num_heads=2, num_kv_heads=1, head_dim=16),
        vocab_size=300,
        action_dim=24,
        lora_rank=0,
        expert_lora_rank=0,
    )


def _sizes(cfg):
    return (cfg.vision, cfg.prefix, cfg.expert, cfg.vocab_size, cfg.action_dim, cfg.num_patches)


def _flat_model(model):
    return {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _obs(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "images": rng.integers(0, 255, (2, cfg.num_cameras, cfg.image_height, cfg.image_width, 3)).astype(np.uint8),
        "tokens": rng.integers(3, 100, (2, cfg.max_token_len)).astype(np.int32),
        "token_mask": np.arange(cfg.max_token_len)[None].repeat(2, 0) < np.array([[5], [3]]),
        "state": rng.normal(size=(2, cfg.action_dim)).astype(np.float32),
    }


def test_base_checkpoint_sizes_from_weights(odd_cfg, tiny_cfg, tmp_path):
    tree = openpi_tree(odd_cfg, np.random.default_rng(0))
    step_dir = write_checkpoint(tmp_path / "run", 1000, tree, norm_stats())
    for given in (step_dir, step_dir / "params"):  # the step directory or its params item
        ckpt = oi.OpenpiCheckpoint(given)
        assert ckpt.params_dir == step_dir / "params" and ckpt.asset_ids() == ["crane_x7"]
    cfg = oi.infer_config(ckpt.shapes(), tiny_cfg)  # tiny_cfg gives only the run settings
    assert _sizes(cfg) == _sizes(odd_cfg)
    assert (cfg.lora_rank, cfg.expert_lora_rank) == (0, 0)
    assert (cfg.image_width, cfg.action_horizon, cfg.max_token_len) == (32, tiny_cfg.action_horizon, 8)

    imported = oi.import_params(ckpt.params())
    model = Pi0Model(cfg, nnx.Rngs(0))
    oi.load_into(model, imported)
    after = _flat_model(model)
    assert set(imported) == set(after)  # every weight of the model came from the checkpoint
    src = unwrap(tree)
    llm = src["PaliGemma"]["llm"]
    np.testing.assert_array_equal(after["prefix_lm/layers/kv"], llm["layers"]["attn"]["kv_einsum"]["w"])
    np.testing.assert_array_equal(after["action_expert/layers/q"], llm["layers"]["attn"]["q_einsum_1"]["w"])
    np.testing.assert_array_equal(after["action_expert/layers/gate_up"], llm["layers"]["mlp_1"]["gating_einsum"])
    np.testing.assert_array_equal(
        after["vision/blocks/v_kernel"],
        src["PaliGemma"]["img"]["Transformer"]["encoderblock"]["MultiHeadDotProductAttention_0"]["value"]["kernel"],
    )
    np.testing.assert_array_equal(after["action_out_proj/bias"], src["action_out_proj"]["bias"])
    out = model.sample_actions(jax.random.key(0), _obs(cfg), num_steps=2)
    assert out.shape == (2, cfg.action_horizon, 24) and np.isfinite(np.asarray(out)).all()

    stats = ckpt.norm_stats("crane_x7")
    assert set(stats) == {"state", "actions"} and len(stats["actions"]["std"]) == 8


def test_lora_checkpoint_ranks_and_places_from_weights(odd_cfg, tiny_cfg, tmp_path):
    """openpi's gemma_2b_lora + gemma_300m_lora: adapters on attention and MLP of both decoders."""
    from crane_x7_vla.backends.openpi.train_state import trainable_filter

    tree = openpi_tree(odd_cfg, np.random.default_rng(1), lora={"": (4, 4), "_1": (6, 6)})
    step_dir = write_checkpoint(tmp_path / "run", 5, tree)
    ckpt = oi.OpenpiCheckpoint(step_dir)
    cfg = oi.infer_config(ckpt.shapes(), tiny_cfg)
    assert (cfg.lora_rank, cfg.expert_lora_rank, cfg.lora_groups) == (4, 6, ("attn", "ffn"))
    assert (cfg.lora_alpha, cfg.expert_lora_alpha) == (4.0, 6.0)  # openpi's variants: alpha = rank
    model = Pi0Model(cfg, nnx.Rngs(0))
    imported = oi.import_params(ckpt.params())
    oi.load_into(model, imported)
    after = _flat_model(model)
    assert set(imported) == set(after)
    llm = unwrap(tree)["PaliGemma"]["llm"]["layers"]
    np.testing.assert_array_equal(
        after["action_expert/layers/attn_out_lora_b"], llm["attn"]["attn_vec_einsum_1"]["lora_b"]
    )
    np.testing.assert_array_equal(after["prefix_lm/layers/down_lora_a"], llm["mlp"]["linear_lora_a"])
    # as openpi's freeze filter: both decoders' own weights frozen, adapters, vision and heads train
    _, trainable, frozen = nnx.split(model, trainable_filter(cfg), ...)
    t = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable)}
    f = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(frozen)}
    assert {
        "prefix_lm/layers/q_lora_a",
        "action_expert/layers/down_lora_b",
        "vision/patch_kernel",
        "state_proj/kernel",
    } <= t
    assert {"prefix_lm/layers/q", "action_expert/layers/q", "action_expert/final_norm", "prefix_lm/embed"} <= f

    # adapters on the prefix decoder's attention only
    tree = openpi_tree(odd_cfg, np.random.default_rng(2), lora={"": (3, 0)})
    cfg = oi.infer_config(oi.flatten(tree), tiny_cfg)
    assert (cfg.lora_rank, cfg.expert_lora_rank, cfg.lora_groups) == (3, 0, ("attn",))
    oi.load_into(Pi0Model(cfg, nnx.Rngs(0)), oi.import_params(tree))


def test_qkv_einsum_of_a_decoder_with_as_many_kv_heads_as_heads(odd_cfg, tiny_cfg):
    mha = replace(
        odd_cfg, prefix=replace(odd_cfg.prefix, num_kv_heads=2), expert=replace(odd_cfg.expert, num_kv_heads=2)
    )
    tree = openpi_tree(mha, np.random.default_rng(3), lora={"": (2, 2)})
    assert "qkv_einsum" in tree["PaliGemma"]["llm"]["layers"]["attn"]
    cfg = oi.infer_config(oi.flatten(tree), tiny_cfg)
    assert cfg.prefix.num_kv_heads == 2 and cfg.lora_rank == 2
    imported = oi.import_params(tree)
    qkv = unwrap(tree)["PaliGemma"]["llm"]["layers"]["attn"]["qkv_einsum"]
    np.testing.assert_array_equal(imported["prefix_lm/layers/q"], qkv["w"][:, 0])
    np.testing.assert_array_equal(imported["prefix_lm/layers/kv"], qkv["w"][:, 1:3])
    np.testing.assert_array_equal(imported["prefix_lm/layers/kv_lora_b"], qkv["lora_b"][:, 1:3])
    oi.load_into(Pi0Model(cfg, nnx.Rngs(0)), imported)


def test_errors_name_the_parameter_or_directory(odd_cfg, tiny_cfg, tmp_path):
    tree = openpi_tree(odd_cfg, np.random.default_rng(4))
    broken = unwrap(tree)
    del broken["PaliGemma"]["llm"]["layers"]["mlp_1"]
    with pytest.raises(oi.OpenpiCheckpointError, match="mlp_1/linear"):
        oi.infer_config(oi.flatten(broken), tiny_cfg)

    half = openpi_tree(odd_cfg, np.random.default_rng(5), lora={"_1": (2, 2)})
    del half["PaliGemma"]["llm"]["layers"]["attn"]["kv_einsum_1"]["lora_b"]
    with pytest.raises(oi.OpenpiCheckpointError, match="kv_einsum_1/lora_b missing"):
        oi.infer_config(oi.flatten(half), tiny_cfg)

    mixed = openpi_tree(odd_cfg, np.random.default_rng(6), lora={"": (4, 2)})
    with pytest.raises(oi.OpenpiCheckpointError, match=r"attention \(4\) and MLP \(2\).*q_einsum/lora_a"):
        oi.infer_config(oi.flatten(mixed), tiny_cfg)

    with pytest.raises(oi.OpenpiCheckpointError, match=r"pos_embedding.*--image-size 32x32"):
        oi.infer_config(oi.flatten(tree), replace(tiny_cfg, image_width=64, image_height=64))

    pi05 = unwrap(openpi_tree(odd_cfg, np.random.default_rng(7)))
    pi05["time_mlp_in"] = {"kernel": np.zeros((40, 40), np.float32)}
    with pytest.raises(oi.OpenpiCheckpointError, match="π0.5"):
        oi.import_params(pi05)

    # a model built with other LoRA settings names the openpi parameter it cannot take
    lora_tree = openpi_tree(odd_cfg, np.random.default_rng(8), lora={"": (2, 2)})
    with pytest.raises(oi.OpenpiCheckpointError, match="attn/q_einsum/lora_a"):
        oi.load_into(Pi0Model(odd_cfg, nnx.Rngs(0)), oi.import_params(lora_tree))

    step_dir = write_checkpoint(tmp_path / "run", 7, tree)
    with pytest.raises(oi.OpenpiCheckpointError, match=r"step\(s\) 7; pass one of them"):
        oi.OpenpiCheckpoint(tmp_path / "run")
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "policy_config.json").write_text("{}")
    with pytest.raises(oi.OpenpiCheckpointError, match="--resume-from-checkpoint"):
        oi.OpenpiCheckpoint(ours)
    (tmp_path / "empty").mkdir()
    with pytest.raises(oi.OpenpiCheckpointError, match="no openpi parameters"):
        oi.OpenpiCheckpoint(tmp_path / "empty")
    bad = step_dir / "assets" / "bad"
    bad.mkdir(parents=True)
    (bad / "norm_stats.json").write_text('{"norm_stats": {"state": {"mean": [0.0, 1.0], "std": [1.0]}}}')
    with pytest.raises(oi.OpenpiCheckpointError, match="norm_stats.state has entries of different lengths"):
        oi.OpenpiCheckpoint(step_dir).norm_stats("bad")
