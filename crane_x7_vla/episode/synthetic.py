"""Synthetic episodes: smooth joint motions and simple pictures, for tests and benchmarks.

The pictures carry the motion (a coloured marker at a position that follows the
joint angles), so a model trained on them has something to learn. Real data comes
from the simulated or the real CRANE-X7.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.episode.writer import EpisodeWriter

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}


def joint_path(rng: np.random.Generator, steps: int) -> np.ndarray:
    """(steps, 8) smooth motion from home towards a random reachable pose, gripper closing."""
    start = robot.home_state()
    goal = start.copy()
    goal[:7] += rng.uniform(-0.5, 0.5, size=7)
    goal[-1] = robot.GRIPPER_CLOSED
    goal = robot.clamp_to_limits(goal)
    s = np.linspace(0.0, 1.0, steps)
    s = 3 * s**2 - 2 * s**3  # ease in and out
    return start + s[:, None] * (goal - start)


def picture(q: np.ndarray, size: tuple[int, int], colour: tuple[int, int, int]) -> np.ndarray:
    """An RGB picture whose marker position follows joints 0 and 1."""
    w, h = size
    img = np.full((h, w, 3), 235, np.uint8)
    img[int(h * 0.6) :, :] = (150, 120, 90)  # table
    cx = int((0.5 + 0.35 * np.tanh(q[0])) * w)
    cy = int((0.5 + 0.35 * np.tanh(q[1] - 0.4)) * h)
    r = max(2, w // 16)
    img[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r] = colour
    return img


def write_synthetic_dataset(
    root: str | os.PathLike,
    *,
    episodes: int = 4,
    steps: int = 20,
    cameras: dict[str, tuple[int, int]] | None = None,
    fps: float = 10.0,
    seed: int = 0,
) -> list[Path]:
    cameras = cameras or {"primary": (128, 96)}
    rng = np.random.default_rng(seed)
    paths = []
    names = list(COLOURS)
    for e in range(episodes):
        colour = names[e % len(names)]
        path = joint_path(rng, steps)
        writer = EpisodeWriter(
            root, fps=fps, instruction=f"reach the {colour} cube", cameras=cameras, task="synthetic", seed=seed + e
        )
        t0 = 1_000_000_000 * (e + 1)
        for t, q in enumerate(path):
            stamp = t0 + int(t * 1e9 / fps)
            images = {cam: picture(q, size, COLOURS[colour]) for cam, size in cameras.items()}
            writer.add_step(q, images, timestamp_ns=stamp, image_timestamps_ns={c: stamp for c in cameras})
        paths.append(writer.close(success=True))
    return paths
