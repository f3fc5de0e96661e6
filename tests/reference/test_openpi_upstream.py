"""Our export (python -m crane_x7_vla.backends.openpi.export) loaded and sampled by openpi's own
code (openpi_upstream.py, run by $OPENPI_PYTHON with $OPENPI_SRC on its path) gives the actions
our policy gives on the same export, the same inputs and the same noise, within 1e-3.

openpi's π0 always builds SigLIP So400m/14 and a 257,152-token embedding, and names Gemma sizes
down to its `dummy` variant: the checkpoint has those sizes (LoRA on both decoders), fine-tuned
here for one step from an openpi-layout directory, so this test takes minutes on a CPU."""

import importlib.util
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

SRC, PYTHON = os.environ.get("OPENPI_SRC"), os.environ.get("OPENPI_PYTHON")
pytestmark = pytest.mark.skipif(
    not (SRC and PYTHON),
    reason="needs openpi's own code: set OPENPI_SRC (openpi's src/ directory) and OPENPI_PYTHON (a Python with "
           "openpi's dependencies)")
HERE = Path(__file__).resolve().parent


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_openpi_samples_our_export_as_our_policy_does(tmp_path):
    import jax

    from crane_x7_vla import robot
    from crane_x7_vla.backends.openpi import train_state as ts
    from crane_x7_vla.backends.openpi.export import export
    from crane_x7_vla.backends.openpi.presets import PI0, GemmaConfig
    from crane_x7_vla.backends.openpi.trainer import train
    from crane_x7_vla.policy.loader import load_policy

    layout = _load("openpi_layout_fixtures", HERE.parent / "openpi" / "openpi_layout.py")
    fixtures = _load("openpi_test_fixtures", HERE.parent / "openpi" / "conftest.py")

    dummy = GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16)  # openpi's "dummy"
    cfg = replace(PI0, prefix=dummy, expert=dummy, dtype="float32")
    tree = layout.openpi_tree(cfg, np.random.default_rng(0), lora={"": (4, 4), "_1": (6, 6)})
    step_dir = layout.write_checkpoint(tmp_path / "run", 100, tree, layout.norm_stats())
    words = ("Pick", "up", "the", "red", "cube", "pick", "push", "blue", "block")
    tokenizer = layout.paligemma_like_tokenizer(tmp_path / "tokenizer.json", words)
    episodes = fixtures.make_episodes(tmp_path / "episodes", n_episodes=2, steps=8)
    final = train(fixtures.tiny_train_config(
        episodes, tmp_path / "out", model=str(step_dir), image_size="224x224", batch_size=2, max_steps=1,
        eval_samples=2, save_steps=100, merge_lora=False, freeze_vision=True, lora_rank=4, lora_alpha=8,
        extra={"tokenizer": str(tokenizer), "norm_stats_asset": "crane_x7"}))
    out = export(final, tmp_path / "exported")

    policy = load_policy(out, device="cpu")
    rng = np.random.default_rng(4)
    image = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)  # the model's size: no resize on either side
    state = np.r_[robot.HOME_POSE + rng.uniform(-0.1, 0.1, 7), robot.GRIPPER_OPEN]
    instruction = "Pick up the red cube"
    ours = policy.predict({"images": {"primary": image}, "state": state, "instruction": instruction})

    tokens, token_mask = policy.batcher.tokens(instruction)
    horizon = policy.space.horizon
    noise = np.asarray(jax.random.normal(jax.random.fold_in(ts.prng_key(0), 0), (1, horizon, 32)))  # the policy's draw
    np.savez(tmp_path / "inputs.npz", state=state, images=np.stack([image, np.zeros_like(image), np.zeros_like(image)]),
             image_mask=np.array([True, False, False]), tokens=tokens, token_mask=token_mask, noise=noise)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p),
               JAX_PLATFORMS="cpu")
    res = subprocess.run([PYTHON, str(HERE / "openpi_upstream.py"), str(out), str(tmp_path / "inputs.npz"),
                          str(tmp_path / "theirs.npz")], capture_output=True, text=True, env=env, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    theirs = robot.clamp_to_limits(np.load(tmp_path / "theirs.npz")["actions"])
    assert theirs.shape == ours.shape == (horizon, 8)
    print("max abs difference openpi vs ours:", np.abs(theirs - ours).max(), "largest action:", np.abs(ours).max())
    np.testing.assert_allclose(theirs, ours, atol=1e-3)
