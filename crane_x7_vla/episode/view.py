"""A picture of an episode: frames along time above joint curves (state and action)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.episode import jpeg
from crane_x7_vla.episode.reader import EpisodeData


def plot_episode(ep: EpisodeData, out: str | os.PathLike, *, frames: int = 8) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cams = sorted(ep.images)
    n = len(ep)
    picks = np.unique(np.linspace(0, n - 1, min(frames, n)).round().astype(int))
    rows = len(cams) + 2
    fig = plt.figure(figsize=(2.0 * len(picks), 2.0 * len(cams) + 6.0), constrained_layout=True)
    grid = fig.add_gridspec(rows, len(picks), height_ratios=[1.0] * len(cams) + [1.6, 1.6])
    fps = ep.fps or 10.0
    for r, cam in enumerate(cams):
        for c, t in enumerate(picks):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(jpeg.decode(ep.images[cam][t]))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={t / fps:.1f}s", fontsize=8)
            if c == 0:
                ax.set_ylabel(cam, fontsize=8)
    time = np.arange(n) / fps
    short = [j.replace("crane_x7_", "").replace("_joint", "") for j in robot.JOINT_NAMES]
    ax = fig.add_subplot(grid[len(cams), :])
    for j in range(7):
        line = ax.plot(time, ep.proprio[:, j], label=short[j])[0]
        ax.plot(time, ep.action[:, j], "--", color=line.get_color(), alpha=0.6)
    ax.set_ylabel("arm joints [rad]")
    ax.legend(fontsize=6, ncol=4, loc="upper right")
    ax.set_title("state (solid) and action = absolute target (dashed)", fontsize=9)
    ax = fig.add_subplot(grid[len(cams) + 1, :])
    ax.plot(time, np.degrees(ep.proprio[:, 7]), label="state")
    ax.plot(time, np.degrees(ep.action[:, 7]), "--", label="action")
    ax.set_ylabel("gripper [deg]")
    ax.set_xlabel("time [s]")
    ax.legend(fontsize=7)
    title = f"{ep.path.name}: \"{ep.instruction}\", {n} steps"
    if ep.meta is not None and ep.meta.success is not None:
        title += f", success={ep.meta.success}"
    fig.suptitle(title, fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
