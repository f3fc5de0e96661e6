"""Small episodes for the export tests: solid colour blocks (so colours can be checked
after JPEG and video coding) that move with the joints."""

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.episode import EpisodeWriter

COLOURS = [(220, 30, 30), (30, 180, 40), (30, 60, 220)]  # red, green, blue


def frame(t: int, size=(64, 48), colour=(220, 30, 30)) -> np.ndarray:
    """Left half: `colour`; right half: a grey level that changes with t."""
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = colour
    img[:, w // 2 :] = (40 + 10 * t) % 256
    return img


def write_episodes(root, *, episodes=3, steps=8, cameras=None, fps=10.0):
    cameras = cameras or {"primary": (64, 48), "wrist": (32, 32)}
    paths = []
    for e in range(episodes):
        colour = COLOURS[e % 3]
        writer = EpisodeWriter(root, fps=fps, instruction=f"pick up the cube {e % 2}", cameras=cameras)
        for t in range(steps):
            q = robot.home_state() + 0.01 * (t + 10 * e)
            images = {cam: frame(t, size, colour) for cam, size in cameras.items()}
            stamp = 1_000_000_000 * (e + 1) + t * 100_000_000
            writer.add_step(q, images, timestamp_ns=stamp, image_timestamps_ns={c: stamp for c in cameras})
        paths.append(writer.close(success=[True, False, None][e % 3]))
    return paths


@pytest.fixture()
def episodes_dir(tmp_path):
    root = tmp_path / "episodes"
    write_episodes(root)
    return root
