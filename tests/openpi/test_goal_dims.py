"""`train --backend openpi --goal-dims`: the action expert writes the goal point beside the actions."""

import numpy as np
import pytest

from tests.openpi.conftest import make_episodes, tiny_train_config


def _space(**kw):
    from crane_x7_vla.backends.openpi.transforms import ActionSpace

    stats = {"q01": [-1.0] * 8, "q99": [1.0] * 8, "mean": [0.0] * 8, "std": [1.0] * 8}
    return ActionSpace(4, 32, stats, stats, **kw)


def test_the_goal_point_is_written_into_every_step_and_read_back():
    from crane_x7_vla.backends.openpi.transforms import ActionSpace
    from crane_x7_vla.preprocess import GOAL_BOUNDS

    space = _space(goal_dims=(8, 9, 10))
    rng = np.random.default_rng(0)
    state = rng.uniform(-0.5, 0.5, (5, 8))
    actions = state[:, None, :] + rng.uniform(-0.1, 0.1, (5, 4, 8))
    goal = rng.uniform(GOAL_BOUNDS[0], GOAL_BOUNDS[1], (5, 3))
    model = space.training_actions(actions, state, goal)
    np.testing.assert_array_equal(model[..., :8], space.encode_actions(actions, state)[..., :8])
    assert np.all(model[:, :, 8:11] == model[:, :1, 8:11])  # the same goal at every step
    assert not np.any(model[..., 11:])
    np.testing.assert_allclose(space.decode_goal(model), goal, atol=1e-6)
    np.testing.assert_allclose(space.decode_actions(model, state), actions, atol=1e-6)  # deployment ignores it
    again = ActionSpace.from_config({"action_space": space.to_dict(), "dataset_statistics": {"proprio":
                                                                                            space.state_stats}})
    assert again.goal_dims == (8, 9, 10)
    with pytest.raises(ValueError, match="batch has none"):
        space.training_actions(actions, state, None)
    with pytest.raises(ValueError, match="goal_dims must name 3 different positions"):
        _space(goal_dims=(7, 8, 9))  # 7 is the gripper's


def test_training_with_goal_dims_learns_and_reports_the_goal(tmp_path):
    from crane_x7_vla.backends.openpi.trainer import train
    from crane_x7_vla.checkpoint_contract import read_policy_config
    from crane_x7_vla.policy.loader import load_policy
    from crane_x7_vla.training.config import ConfigError
    from crane_x7_vla.training.metrics import read_metrics

    data = tmp_path / "data"
    make_episodes(data, n_episodes=3, steps=10)
    out = tmp_path / "run"
    final = train(tiny_train_config(data, out, goal_dims=True, use_lora=False, max_steps=2, save_steps=100))
    assert read_policy_config(final)["action_space"]["goal_dims"] == [8, 9, 10]
    errors = [r["val/goal_error_m"] for r in read_metrics(out) if "val/goal_error_m" in r]
    assert errors and all(0.0 <= e < 2.0 for e in errors)
    policy = load_policy(final, device="cpu")
    obs = {"images": {"primary": np.zeros((32, 32, 3), np.uint8)}, "state": np.zeros(8),
           "instruction": "pick up the red cube"}
    chunk = policy.predict(obs)
    assert chunk.shape[-1] == 8 and np.all(np.isfinite(chunk))
    with pytest.raises(ConfigError, match="--goal-dims .* --conventions crane_x7"):
        train(tiny_train_config(data, tmp_path / "run2", goal_dims=True, conventions="openpi", use_lora=False))


def test_goal_scenes_teach_the_goal_dimensions_only():
    import jax.numpy as jnp

    from crane_x7_vla.backends.openpi.presets import PRESETS
    from crane_x7_vla.backends.openpi.train_state import _masked_mean, loss_mask

    cfg = PRESETS["tiny"]
    mask = loss_mask(cfg, extra_dims=(8, 9, 10))
    goal = loss_mask(cfg, real_dim=0, extra_dims=(8, 9, 10))
    err = jnp.zeros((2, 4, cfg.action_dim))
    robot_only = err.at[1, :, :8].set(1.0)  # sample 1 (a goal scene) is wrong only in the robot's dimensions
    weights = {"action_weight": jnp.array([1.0, 0.0])}
    assert float(_masked_mean(robot_only, mask, weights, goal)) == 0.0
    goal_wrong = err.at[1, :, 8:11].set(1.0)
    # 3 goal values of sample 1 out of 11 + 3 counted values per step
    assert float(_masked_mean(goal_wrong, mask, weights, goal)) == pytest.approx(3 / 14)
    assert float(_masked_mean(robot_only, mask)) == pytest.approx(8 / 22)  # without weights: as before


def test_training_mixes_in_goal_scenes(tmp_path, capsys):
    from crane_x7_vla.backends.openpi.trainer import train
    from crane_x7_vla.training.config import ConfigError

    data = tmp_path / "data"
    make_episodes(data, n_episodes=3, steps=10)
    final = train(tiny_train_config(data, tmp_path / "run", goal_dims=True, goal_scenes=4, use_lora=False,
                                    max_steps=2, save_steps=100))
    assert (final / "policy_config.json").is_file()
    assert "goal scenes: 4 simulated 'reach' pictures" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--goal-scenes teaches the goal point; it needs --goal-dims"):
        train(tiny_train_config(data, tmp_path / "run2", goal_scenes=4, use_lora=False))
