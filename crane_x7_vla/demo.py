"""`crane-x7-vla demo`: the whole loop on the embedded default.

Stages: write episodes → validate → statistics → a picture of an episode.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _run(args) -> int:
    from crane_x7_vla.episode.stats import write_statistics
    from crane_x7_vla.episode.synthetic import write_synthetic_dataset
    from crane_x7_vla.episode.validate import validate_dataset
    from crane_x7_vla.episode.view import plot_episode
    from crane_x7_vla.episode import list_episodes, load_episode

    out = Path(args.out) / time.strftime("demo_%Y%m%d_%H%M%S")
    data = out / "data"
    t0 = time.monotonic()
    paths = write_synthetic_dataset(data, episodes=args.episodes, steps=args.steps, seed=args.seed)
    print(f"[1/4] wrote {len(paths)} episodes to {data}")
    count, problems = validate_dataset(data)
    if problems:
        for p in problems:
            print(f"ERROR {p}")
        return 1
    print(f"[2/4] validated {count} episodes")
    stats_path, stats = write_statistics(data)
    print(f"[3/4] statistics: {stats_path} (fingerprint {stats['fingerprint']})")
    picture = plot_episode(load_episode(list_episodes(data)[0].path), out / "episode_0.png")
    print(f"[4/4] episode picture: {picture}")
    print(f"done in {time.monotonic() - t0:.1f} s; everything is in {out}")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="run the loop on the embedded default and report")
    p.add_argument("--out", default="runs", help="folder for the run (default ./runs)")
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)
    return p
