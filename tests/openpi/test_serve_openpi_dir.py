"""`crane-x7-vla serve DIR` / load_policy(DIR) on a directory in openpi's on-disk layout (written by
openpi_layout.py), served as it is: the network, its LoRA and its statistics come from the
directory, the rest from serving options; the served actions are those of the imported
weights sampled directly with the same noise."""

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.backends.openpi.presets import GemmaConfig, VisionConfig
from crane_x7_vla.checkpoint_contract import CheckpointError
from crane_x7_vla.policy.loader import load_policy

from .openpi_layout import norm_stats, openpi_tree, unwrap, write_checkpoint, write_spm_model
from .test_conventions import GEMMA_LIKE_PIECES

HORIZON, STEPS = 4, 10
ACTION_DIMS = [0, 1, 2, 3, 4, 5, 6, 9]  # the gripper sits at position 9 of this other robot's 10 dimensions
STATE_DIMS = [0, 1, 2, 3, 4, 5, 6, 8]


@pytest.fixture(scope="module")
def openpi_dir(tiny_cfg, tmp_path_factory):
    """A LoRA checkpoint (adapters on both decoders, q/k/v as one qkv_einsum) with 10-dimensional norm stats."""
    cfg = replace(
        tiny_cfg,
        vision=VisionConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8),
        prefix=GemmaConfig(width=48, depth=2, mlp_dim=96, num_heads=2, num_kv_heads=2, head_dim=16),
        expert=GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=2, head_dim=16),
        vocab_size=320,
        action_dim=32,
    )
    root = tmp_path_factory.mktemp("openpi_serve")
    tree = openpi_tree(cfg, np.random.default_rng(11), lora={"": (4, 4), "_1": (2, 2)}, scale=0.1)
    step_dir = write_checkpoint(root / "run", 500, tree, norm_stats(10, 10, seed=3), asset_id="other_robot")
    tokenizer = write_spm_model(root / "paligemma_tokenizer.model", GEMMA_LIKE_PIECES)
    return step_dir, tokenizer, unwrap(tree)


def _options(tokenizer, **more):
    return {
        "tokenizer": str(tokenizer),
        "action_horizon": HORIZON,
        "image_slots": "primary,-,wrist",
        "action_dims": ",".join(map(str, ACTION_DIMS)),
        "state_dims": ",".join(map(str, STATE_DIMS)),
        **more,
    }


def _observation():
    rng = np.random.default_rng(2)
    images = {c: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for c in ("primary", "wrist")}
    state = np.r_[robot.HOME_POSE + rng.uniform(-0.1, 0.1, 7), robot.GRIPPER_OPEN]
    return {"images": images, "state": state, "instruction": "Pick up the red cube"}


def _direct_actions(step_dir, tree, tokenizer, obs):
    """The imported weights sampled directly: openpi's inputs built here by hand (images of the
    model's size need no resize; z-score with the file's statistics; three slots, one empty)."""
    import jax
    import jax.numpy as jnp

    from crane_x7_vla.backends.openpi import train_state as ts
    from crane_x7_vla.backends.openpi.openpi_import import (
        OpenpiCheckpoint,
        import_params,
        infer_config,
        load_into,
        read_norm_stats,
    )
    from crane_x7_vla.backends.openpi.presets import PI0
    from crane_x7_vla.backends.openpi.tokenizer import PromptTokenizer

    ck = OpenpiCheckpoint(step_dir)
    mcfg = infer_config(
        ck.shapes(),
        replace(
            PI0,
            image_width=32,
            image_height=32,
            num_cameras=3,
            action_horizon=HORIZON,
            max_token_len=48,
            dtype="float32",
        ),
    )
    model = ts.init_model(mcfg, 0)
    load_into(model, import_params(tree))
    stats = read_norm_stats(step_dir / "assets" / "other_robot" / "norm_stats.json")
    s_mean, s_std = (np.asarray(stats["state"][k])[STATE_DIMS] for k in ("mean", "std"))
    a_mean, a_std = (np.asarray(stats["actions"][k])[ACTION_DIMS] for k in ("mean", "std"))
    state = np.zeros((1, 32), np.float32)
    state[0, STATE_DIMS] = (obs["state"] - s_mean) / (s_std + 1e-6)
    ids, mask, _ = PromptTokenizer.from_file(tokenizer, 48, "openpi").encode(obs["instruction"])
    images = np.stack([obs["images"]["primary"], np.zeros((32, 32, 3), np.uint8), obs["images"]["wrist"]])[None]
    batch = {
        "images": jnp.asarray(images),
        "image_mask": jnp.asarray([[True, False, True]]),
        "tokens": jnp.asarray(ids[None]),
        "token_mask": jnp.asarray(mask[None]),
        "state": jnp.asarray(state),
    }
    key = jax.random.fold_in(ts.prng_key(0), 0)  # the policy's first draw
    noise = jax.random.normal(key, (1, HORIZON, 32))
    out = np.asarray(model.sample_actions(key, batch, num_steps=STEPS, noise=noise))[0]
    actions = out[:, ACTION_DIMS] * (a_std + 1e-6) + a_mean
    actions[:, :7] += obs["state"][:7]  # arm joints as deltas, gripper absolute
    return robot.clamp_to_limits(actions)


def test_served_openpi_directory_samples_the_imported_weights(openpi_dir):
    from crane_x7_vla.policy.client import RemotePolicy
    from crane_x7_vla.policy.server import PolicyServer

    step_dir, tokenizer, tree = openpi_dir
    policy = load_policy(step_dir, "cpu", openpi=_options(tokenizer))
    mc = policy.config["openpi"]["model_config"]
    # sizes and adapters from the weights, the image size from the learned positions (16 of 8x8 pixels)
    assert (mc["vision"]["width"], mc["prefix"]["width"], mc["expert"]["width"], mc["vocab_size"]) == (32, 48, 32, 320)
    assert (mc["lora_rank"], mc["expert_lora_rank"], mc["lora_groups"]) == (4, 2, ["attn", "ffn"])
    assert (mc["image_width"], mc["image_height"], mc["num_cameras"], mc["dtype"]) == (32, 32, 3, "float32")
    conv = policy.config["openpi"]["conventions"]
    assert conv == {
        "normalization": "zscore",
        "prompt": "openpi",
        "image_resize": "pad",
        "image_slots": ["primary", None, "wrist"],
        "loss": "all_dims",
    }
    assert policy.config["cameras"] == ["primary", "wrist"] and policy.config["openpi"]["asset_id"] == "other_robot"
    obs = _observation()
    expected = _direct_actions(step_dir, tree, tokenizer, obs)
    srv = PolicyServer(policy, port=0).start()
    try:
        remote = RemotePolicy(srv.url)
        served = remote.predict(obs, timeout=120)
        remote.close()
    finally:
        srv.stop()
    assert served.shape == (HORIZON, 8)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert np.abs(expected - obs["state"]).max() > 0.01  # the model moves the arm: a comparison that can fail


def test_what_the_directory_cannot_tell_is_a_one_line_error_naming_the_flag(openpi_dir, tmp_path):
    import shutil

    step_dir, tokenizer, _ = openpi_dir
    with pytest.raises(CheckpointError, match=r"carry no tokenizer; give PaliGemma's with --tokenizer PATH"):
        load_policy(step_dir, "cpu")
    with pytest.raises(
        CheckpointError, match=r"--action-dims: position 12 is beyond the 10 values of .*norm_stats.actions"
    ):
        load_policy(step_dir, "cpu", openpi=_options(tokenizer, action_dims="0-6,12"))
    with pytest.raises(CheckpointError, match=r"--state-dims: give 8 different positions"):
        load_policy(step_dir, "cpu", openpi=_options(tokenizer, state_dims="0-6"))
    with pytest.raises(CheckpointError, match=r"--image-slots: give a camera name or '-' for each"):
        load_policy(step_dir, "cpu", openpi=_options(tokenizer, image_slots="primary"))
    with pytest.raises(CheckpointError, match=r"--asset-id droid: .*not found \(assets with norm stats: other_robot\)"):
        load_policy(step_dir, "cpu", openpi=_options(tokenizer, asset_id="droid"))
    with pytest.raises(CheckpointError, match="--action-horizon: must be a number above 0"):
        load_policy(step_dir, "cpu", openpi=_options(tokenizer, action_horizon=0))
    two = tmp_path / "two_assets"
    shutil.copytree(step_dir, two)
    shutil.copytree(two / "assets" / "other_robot", two / "assets" / "droid")
    with pytest.raises(
        CheckpointError, match=r"norm stats of 2 assets \(droid, other_robot\); choose one with --asset-id"
    ):
        load_policy(two, "cpu", openpi=_options(tokenizer))
    # the options belong to openpi directories only
    with pytest.raises(CheckpointError, match="apply to a directory in openpi's layout"):
        load_policy(tmp_path, "cpu", openpi={"asset_id": "x"})
    res = subprocess.run(
        [sys.executable, "-m", "crane_x7_vla.cli.serve", str(step_dir), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert len(errors) == 1 and "--tokenizer PATH" in errors[0], res.stderr
