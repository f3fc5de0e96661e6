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
