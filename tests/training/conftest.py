"""Small generated datasets: pictures whose content follows the joint motion."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.episode.stats import write_statistics
from crane_x7_vla.episode.writer import EpisodeWriter


# Two latent coordinates (a, b) set every joint; the picture shows the current (a, b) as a
# red square and the goal as a green one, so the next joint targets follow from the image.
_V1 = np.array([0.5, 0.3, -0.2, 0.4, 0.1, -0.3, 0.2])
_V2 = np.array([-0.2, 0.5, 0.3, -0.1, 0.4, 0.2, -0.3])


def _joints(a: float, b: float, closing: float) -> np.ndarray:
    q = robot.home_state()
    q[:7] = robot.HOME_POSE + a * _V1 + b * _V2
    q[-1] = robot.GRIPPER_OPEN + closing * (robot.GRIPPER_CLOSED - robot.GRIPPER_OPEN)
    return robot.clamp_to_limits(q)


def _square(img, a, b, colour):
    size = img.shape[0]
    cx, cy = int((0.5 + 0.4 * a) * size), int((0.5 + 0.4 * b) * size)
    r = max(3, size // 12)
    img[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r] = colour


def write_episodes(
    root,
    *,
    episodes=6,
    steps=20,
    size=64,
    seed=0,
    cameras=("primary",),
    instruction="reach the green cube",
    unreadable=(),
):
    """`unreadable`: numbers of episodes whose pictures are bytes no JPEG decoder reads (a
    damaged recording that passes the record checks)."""
    rng = np.random.default_rng(seed)
    paths = []
    for e in range(episodes):
        start, goal = rng.uniform(-1, 1, 2), rng.uniform(-1, 1, 2)
        w = EpisodeWriter(
            root,
            fps=10.0,
            instruction=instruction,
            cameras={c: (size, size) for c in cameras},
            task="test",
            seed=seed + e,
        )
        for t in range(steps):
            s = min(1.0, t / (0.7 * steps))
            a, b = start + s * (goal - start)
            img = np.full((size, size, 3), 230, np.uint8)
            _square(img, *goal, (30, 170, 40))
            _square(img, a, b, (200, 30, 30))
            w.add_step(_joints(a, b, s), {c: b"not a picture" if e in unreadable else img for c in cameras})
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
