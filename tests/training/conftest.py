"""Small generated datasets: pictures whose content follows the joint motion."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.episode.stats import write_statistics
from crane_x7_vla.episode.writer import EpisodeWriter


def _picture(q: np.ndarray, size: int) -> np.ndarray:
    img = np.full((size, size, 3), 230, np.uint8)
    cx = int((0.5 + 0.4 * np.tanh(2.0 * (q[0] - robot.HOME_POSE[0]))) * size)
    cy = int((0.5 + 0.4 * np.tanh(2.0 * (q[1] - robot.HOME_POSE[1]))) * size)
    r = max(3, size // 10)
    img[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r] = (200, 30, 30)
    return img


def write_episodes(root, *, episodes=6, steps=20, size=64, seed=0, cameras=("primary",)):
    rng = np.random.default_rng(seed)
    paths = []
    for e in range(episodes):
        start = robot.home_state()
        goal = start.copy()
        goal[:7] += rng.uniform(-0.6, 0.6, size=7)
        goal[-1] = robot.GRIPPER_CLOSED
        goal = robot.clamp_to_limits(goal)
        s = np.linspace(0.0, 1.0, steps)[:, None]
        path = start + s * (goal - start)
        w = EpisodeWriter(root, fps=10.0, instruction="reach the red cube",
                          cameras={c: (size, size) for c in cameras}, task="test", seed=seed + e)
        for q in path:
            w.add_step(q, {c: _picture(q, size) for c in cameras})
        paths.append(w.close(success=True))
    write_statistics(root)
    return paths


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    write_episodes(root)
    return root


@pytest.fixture()
def dataset_copy(dataset_dir, tmp_path):
    """A private copy a test may damage."""
    dst = tmp_path / "data"
    shutil.copytree(dataset_dir, dst)
    return dst
