"""Success statistics of evaluation episodes (plain Python; no ROS, torch or jax).

`summarize_episodes` turns per-episode outcomes into a success rate with a 95% Wilson
interval and mean time to success; `format_rate` and `format_achieved_rates` say them in a line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class EpisodeOutcome:
    seed: int
    success: bool
    time_to_success: float | None  # seconds from start, None if not solved
    duration: float  # seconds the episode ran (simulated seconds in a lockstep evaluation)
    interventions: dict = field(default_factory=dict)  # safety-filter counts by kind
    instruction: str = ""
    inferences: int = 0  # policy calls during the episode
    latency_ms: dict = field(default_factory=dict)  # the inference node's latency percentiles by stage
    final_distance_m: float | None = None  # how far from success the episode ended (the task's distance)
    inference_hz: float | None = None  # policy calls per second the inference node achieved in the episode
    control_hz: float | None = None  # commands per second it published
    # the same per wall-clock second, and the episode's wall-clock length (the machine's pace)
    wall_duration: float | None = None
    inference_hz_wall: float | None = None
    control_hz_wall: float | None = None
    # lockstep waits that ran out in the episode: the simulator's for a command, the node's for its inputs
    lockstep_timeouts: int = 0
    grasped: bool | None = None  # pick_place: the named cube was held off the table at some point


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sane at 0% and 100%)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize_episodes(outcomes: list[EpisodeOutcome]) -> dict:
    n = len(outcomes)
    wins = [o for o in outcomes if o.success]
    low, high = wilson_interval(len(wins), n)
    interventions: dict[str, int] = {}
    for o in outcomes:
        for kind, count in o.interventions.items():
            interventions[kind] = interventions.get(kind, 0) + int(count)
    return {
        "episodes": n,
        "successes": len(wins),
        "success_rate": len(wins) / n if n else 0.0,
        "success_rate_ci95": [low, high],
        "mean_time_to_success_s": float(np.mean([o.time_to_success for o in wins])) if wins else None,
        # pick_place: the grasp half of the task on its own (None where the task has no grasp)
        **_grasps(outcomes),
        # where the failures ended: just short of the goal, or somewhere else entirely
        "median_failure_distance_m": _median([o.final_distance_m for o in outcomes if not o.success]),
        "safety_interventions": interventions,
        # what the inference node achieved, per episode: the figure holds for these rates
        "achieved_inference_hz": _spread([o.inference_hz for o in outcomes]),
        "achieved_control_hz": _spread([o.control_hz for o in outcomes]),
        "achieved_inference_hz_wall": _spread([o.inference_hz_wall for o in outcomes]),
        "achieved_control_hz_wall": _spread([o.control_hz_wall for o in outcomes]),
        "lockstep_timeouts": int(sum(o.lockstep_timeouts for o in outcomes)),
        "per_seed": [asdict(o) for o in outcomes],
    }


def _grasps(outcomes: list[EpisodeOutcome]) -> dict:
    known = [o.grasped for o in outcomes if o.grasped is not None]
    if not known:
        return {"grasps": None, "grasp_rate": None, "grasp_rate_ci95": None}
    low, high = wilson_interval(sum(known), len(known))
    return {"grasps": int(sum(known)), "grasp_rate": sum(known) / len(known), "grasp_rate_ci95": [low, high]}


def _spread(values: list) -> dict | None:
    known = [float(v) for v in values if v is not None]
    if not known:
        return None
    return {"min": min(known), "median": float(np.median(known)), "max": max(known)}


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.median(known)) if known else None


def format_achieved_rates(summary: dict) -> str:
    """'policy calls 9.8 Hz, commands 24.9 Hz (medians; lowest 9.1 and 24.7), per wall-clock second
    3.1 and 7.8 Hz' or ''."""
    calls, commands = summary.get("achieved_inference_hz"), summary.get("achieved_control_hz")
    if not calls or not commands:
        return ""
    text = (f"policy calls {calls['median']:.1f} Hz, commands {commands['median']:.1f} Hz (medians over the "
            f"episodes; lowest {calls['min']:.1f} and {commands['min']:.1f})")
    calls_wall, commands_wall = summary.get("achieved_inference_hz_wall"), summary.get("achieved_control_hz_wall")
    if calls_wall and commands_wall:
        text += (f"; per wall-clock second {calls_wall['median']:.1f} and {commands_wall['median']:.1f} Hz "
                 f"(lowest {calls_wall['min']:.1f} and {commands_wall['min']:.1f})")
    return text


def format_rate(summary: dict) -> str:
    low, high = summary["success_rate_ci95"]
    return (
        f"{summary['success_rate'] * 100:.0f}% ({summary['successes']}/{summary['episodes']}, "
        f"95% CI {low * 100:.0f}-{high * 100:.0f}%)"
    )


def format_grasp_rate(summary: dict) -> str:
    """'85% (17/20, 95% CI 64-95%)' of the grasps, or '-' for a task without a grasp."""
    if summary.get("grasp_rate") is None:
        return "-"
    low, high = summary["grasp_rate_ci95"]
    return (f"{summary['grasp_rate'] * 100:.0f}% ({summary['grasps']}/{summary['episodes']}, "
            f"95% CI {low * 100:.0f}-{high * 100:.0f}%)")
