"""The run report: report.json, report.md and PNGs (training curves, success per seed,
frames of successes and failures, predicted vs demonstrated joint trajectories)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.evaluation.summary import format_achieved_rates, format_grasp_rate, format_rate
from crane_x7_vla.training.metrics import is_curve


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def plot_training_curves(rows: list[dict], out: Path) -> Path | None:
    """Every numeric metric against the step, one panel per metric family."""
    rows = [r for r in rows if "step" in r]
    if not rows:
        return None
    keys = sorted(
        {
            k
            for r in rows
            for k, v in r.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    keys = [k for k in keys if is_curve(k)] or keys  # losses and accuracies, not timings or the learning rate
    families: dict[str, list[str]] = {}
    for k in keys:
        base = k.split("/")[-1]
        families.setdefault(base, []).append(k)
    plt = _plt()
    n = len(families)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False)
    for ax, (base, members) in zip(axes[0], sorted(families.items())):
        for k in members:
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=k)
        ax.set_title(base, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        if base.startswith("loss") and all(
            v > 0 for k in members for r in rows if isinstance(r.get(k), (int, float)) for v in [r[k]]
        ):
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_success_per_seed(results: dict[str, dict], out: Path) -> Path:
    """One row per policy, one cell per seed: green = success, red = failure."""
    plt = _plt()
    names = list(results)
    seeds = [o["seed"] for o in results[names[0]]["per_seed"]]
    grid = np.zeros((len(names), len(seeds)))
    for i, name in enumerate(names):
        by_seed = {o["seed"]: o["success"] for o in results[name]["per_seed"]}
        grid[i] = [1.0 if by_seed.get(s) else 0.0 for s in seeds]
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(seeds) + 2), 0.6 * len(names) + 1.2))
    ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(len(names)), [f"{n} ({results[n]['success_rate'] * 100:.0f}%)" for n in names])
    ax.set_xticks(range(len(seeds)), [str(s) for s in seeds], fontsize=7)
    ax.set_xlabel("held-out seed")
    ax.set_title("success per seed (green = solved)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_frames(frames: list[tuple[str, np.ndarray]], out: Path, title: str = "") -> Path | None:
    if not frames:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(frames), figsize=(2.4 * len(frames), 2.6), squeeze=False)
    for ax, (label, img) in zip(axes[0], frames):
        ax.imshow(img)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_predicted_vs_demonstrated(
    predicted: np.ndarray, demonstrated: np.ndarray, fps: float, out: Path, title: str = ""
) -> Path:
    """Open-loop predictions on a held-out demonstration against its recorded actions."""
    plt = _plt()
    t = np.arange(len(demonstrated)) / fps
    fig, axes = plt.subplots(2, 4, figsize=(14, 5), sharex=True)
    for j, ax in enumerate(axes.ravel()):
        ax.plot(t, demonstrated[:, j], label="demonstrated", color="k")
        ax.plot(t, predicted[:, j], "--", label="predicted", color="tab:orange")
        ax.set_title(robot.JOINT_NAMES[j].replace("crane_x7_", "").replace("_joint", ""), fontsize=8)
        if j == 0:
            ax.legend(fontsize=7)
    fig.suptitle(title or "predicted vs demonstrated joint targets [rad]", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def write_report(run_dir: Path, summary: dict, pictures: dict[str, Path | None]) -> tuple[Path, Path]:
    """report.json (the figures) and report.md (figures + pictures) in run_dir."""
    run_dir = Path(run_dir)
    json_path = run_dir / "report.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str))
    lines = [f"# crane_x7_vla run: {summary.get('task', '')} / {summary.get('backend', '')}", ""]
    policy = summary.get("evaluation", {}).get("policy")
    if policy:
        lines.append(f"**Trained policy success: {format_rate(policy)}** over held-out seeds.")
        lines.append("")
    grasp = any(res.get("grasp_rate") is not None for res in summary.get("evaluation", {}).values())
    lines.append(
        "| policy | success | " + ("grasped the named cube | " if grasp else "")
        + "mean time to success | failures ended from the goal (median) | safety interventions |"
    )
    lines.append("|---|---|---|---|---|" + ("---|" if grasp else ""))
    for name, res in summary.get("evaluation", {}).items():
        tts, miss = res.get("mean_time_to_success_s"), res.get("median_failure_distance_m")
        lines.append(
            f"| {name} | {format_rate(res)} | " + (f"{format_grasp_rate(res)} | " if grasp else "")
            + f"{'-' if tts is None else f'{tts:.1f} s'} | "
            f"{'-' if miss is None else f'{miss * 100:.1f} cm'} | {sum(res.get('safety_interventions', {}).values())} |"
        )
    lines.append("")
    for name, res in summary.get("evaluation", {}).items():
        achieved = format_achieved_rates(res)
        if achieved:
            lines.append(
                f"- {name}: the inference node achieved {achieved}; lockstep waits that ran out: "
                f"{res.get('lockstep_timeouts') or 0}"
            )
    lines.append("")
    for key in (
        "episodes_collected",
        "demo_success_rate",
        "train_steps",
        "train_seconds",
        "final_train_loss",
        "checkpoint",
    ):
        if key in summary:
            lines.append(f"- {key.replace('_', ' ')}: {summary[key]}")
    pre = summary.get("pretraining")
    if pre:
        lines.append(
            f"- vision stage: {pre['steps']} steps on {pre['scenes']} rendered scenes, held-out pointing "
            f"error {pre['held_out_error_pixels']:.1f} pixels of the {pre['image_size'][0]}x"
            f"{pre['image_size'][1]} picture"
        )
    lines.append("")
    for label, pic in pictures.items():
        if pic is not None:
            lines += [f"## {label}", "", f"![{label}]({Path(pic).name})", ""]
    md_path = run_dir / "report.md"
    md_path.write_text("\n".join(lines))
    return json_path, md_path
