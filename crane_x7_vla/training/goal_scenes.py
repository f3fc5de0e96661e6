"""`--goal-scenes N`: simulated pictures that teach the goal point alone, for either backend.

Each is a one-step episode whose `goal` is the named cube's centre (sim/goal_scenes.py); the
batches mark it `goal_only`, so its actions are not learned."""

from __future__ import annotations

import sys
import time

from crane_x7_vla.training.config import ConfigError, TrainConfig


def training_goal_scenes(cfg: TrainConfig, train_episodes: list, cameras: list[str], main: bool = True) -> list:
    """The run's goal scenes ([] without --goal-scenes), rendered at the recorded pictures' size."""
    if not cfg.goal_scenes:
        return []
    from crane_x7_vla.episode import jpeg
    from crane_x7_vla.sim.goal_scenes import goal_scenes

    t0 = time.perf_counter()
    size = jpeg.size_of(train_episodes[0].images[cameras[0]][0])
    try:
        scenes = goal_scenes(cfg.goal_scenes_task, cfg.goal_scenes, cameras, camera_size=size, seed=cfg.seed,
                             alone=cfg.goal_scenes_alone, near=cfg.goal_scenes_near)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if main:
        shares = f", {cfg.goal_scenes_alone:.0%} with the named cube alone" if cfg.goal_scenes_alone else ""
        shares += f", {cfg.goal_scenes_near:.0%} with the hand near a cube" if cfg.goal_scenes_near else ""
        print(f"goal scenes: {len(scenes)} simulated '{cfg.goal_scenes_task}' pictures{shares} in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return scenes
