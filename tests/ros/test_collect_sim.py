"""`crane-x7-vla collect --sim`: simulator + expert + relay + logger as real processes
produce valid episodes whose success flags are the task check's, every step exactly one
period of the simulated clock after the last (the simulator waits for the logger); nothing
is left running, also after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from crane_x7_vla.episode import jpeg
from crane_x7_vla.episode.reader import list_episodes, load_episode
from crane_x7_vla.episode.validate import validate_dataset
from crane_x7_vla.ros.processes import pick_domain_id


def processes_in_domain(domain_id: int) -> list[int]:
    """PIDs whose environment carries this run's ROS_DOMAIN_ID (our nodes, nothing else)."""
    needle = f"ROS_DOMAIN_ID={domain_id}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def collect_cmd(out, domain, *extra):
    return [sys.executable, "-m", "crane_x7_vla.cli.collect", "collect", "--sim", "--out", str(out),
            "--domain-id", str(domain), *extra]


def assert_at_rate(ep, rate: float = 10.0) -> None:
    """One step per recording instant: exactly 1/rate simulated seconds apart, none dropped."""
    assert np.all(np.diff(ep.timestamp_ns.astype(np.int64)) == int(round(1e9 / rate))), np.diff(ep.timestamp_ns)
    assert ep.meta.dropped_steps == 0 and ep.meta.achieved_fps == rate, (ep.meta.dropped_steps, ep.meta.achieved_fps)


def start_pose(seed: int) -> np.ndarray:
    """The arm joints a reset of the simulated reach task with this seed starts from."""
    from crane_x7_vla.sim import SimEnv

    env = SimEnv(task="reach", seed=seed, cameras=("primary",))
    try:
        return env.joint_positions()[:7]
    finally:
        env.close()


def test_collect_records_valid_episodes_with_the_task_check(tmp_path):
    out = tmp_path / "sim_episodes"
    domain = pick_domain_id()
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        collect_cmd(out, domain, "--task", "reach", "--episodes", "2", "--seed", "3", "--timeout", "120",
                    "--json", str(summary_path)),
        capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validation: 2 episode(s) valid" in proc.stdout
    assert validate_dataset(out) == (2, [])
    summary = json.loads(summary_path.read_text())
    assert [e["seed"] for e in summary["episodes"]] == [3, 4]
    assert summary["recollected"] == []
    for result, ref in zip(summary["episodes"], list_episodes(out)):
        ep = load_episode(ref.path)
        meta = ep.meta
        assert_at_rate(ep)
        # The stored flag is the simulator's task check; the expert solves reach.
        assert meta.success is result["success_check"] is True and result["end"] == "success", result
        assert meta.task == "reach" and meta.seed == result["seed"]
        assert meta.language_instruction == result["instruction"] and meta.language_instruction.startswith("reach the ")
        assert set(meta.cameras) == {"wrist", "primary"}
        assert meta.dropped_steps == result["dropped_steps"]  # counted, whatever the machine's load
        assert ep.proprio.shape[0] >= 10
        # The expert waits for the recording: the episode begins with the arm at rest (the
        # picture a deployed policy sees first), then moves.
        assert np.abs(ep.proprio[1:3, :7] - ep.proprio[0, :7]).max() < 0.005
        # ... at the episode's start pose, where a deployed policy starts, not where the previous
        # episode ended (the relay must not carry the last leader state over a reset).
        np.testing.assert_allclose(ep.proprio[0, :7], start_pose(result["seed"]), atol=0.01)
        # The arm moved: the follower followed the expert through the relay.
        assert abs(ep.proprio[-1, :7] - ep.proprio[0, :7]).max() > 0.1
        # The scene camera shows a scene, not a blank frame.
        rgb = jpeg.decode(ep.images["primary"][0]).astype(int)
        assert rgb.std() > 10
    assert processes_in_domain(domain) == []



def test_speed_3_records_the_same_episodes_on_the_simulated_clock(tmp_path):
    """--speed 3: up to three simulated seconds per wall-clock second, as fast as the logger
    keeps up; the episodes hold 10 steps per SIMULATED second and the same motion as at speed 1."""
    out = tmp_path / "fast"
    domain = pick_domain_id()
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        collect_cmd(out, domain, "--task", "reach", "--episodes", "2", "--seed", "3", "--timeout", "120",
                    "--cameras", "primary", "--speed", "3", "--json", str(summary_path)),
        capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert validate_dataset(out) == (2, [])
    summary = json.loads(summary_path.read_text())
    assert summary["recollected"] == []
    for result, ref in zip(summary["episodes"], list_episodes(out)):
        ep = load_episode(ref.path)
        assert ep.meta.success is result["success_check"] is True, result
        assert_at_rate(ep)  # 10 Hz in simulated time
        np.testing.assert_allclose(ep.proprio[0, :7], start_pose(result["seed"]), atol=0.01)
        assert abs(ep.proprio[-1, :7] - ep.proprio[0, :7]).max() > 0.1
        # The follower tracked the leader as in real time: the recorded targets are smooth
        # (no joint moves faster than the relay's 3 rad/s limit between two recorded steps).
        speed = np.abs(np.diff(ep.proprio[:, :7], axis=0)).max(axis=1) / 0.1
        assert speed.max() < 3.0 * 1.1, speed.max()
    assert processes_in_domain(domain) == []


def test_recovery_starts_begin_beside_a_cube_and_end_at_the_named_one(tmp_path):
    """--start-near 1: every episode starts with the hand a few cm from a cube (posed by the
    simulator's reset, where the recording begins) and the expert reaches the named cube from there."""
    from crane_x7_vla.sim import SimEnv

    out = tmp_path / "near"
    domain = pick_domain_id()
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        collect_cmd(out, domain, "--task", "reach", "--episodes", "2", "--seed", "3", "--timeout", "120",
                    "--cameras", "primary", "--speed", "3", "--start-near", "1", "--json", str(summary_path)),
        capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 started near a cube" in proc.stdout and "(start near a cube)" in proc.stdout
    assert validate_dataset(out) == (2, [])
    summary = json.loads(summary_path.read_text())
    env = SimEnv(task="reach", seed=3, cameras=("primary",))
    try:
        for result, ref in zip(summary["episodes"], list_episodes(out)):
            assert result["start"] == "near cube" and result["end"] == "success", result
            ep = load_episode(ref.path)
            assert ep.meta.success is True
            assert np.abs(ep.proprio[0, :7] - start_pose(result["seed"])).max() > 0.2  # not the home pose
            env.reset(result["seed"])
            cubes = [env.cube_position(i) for i in range(3)]
            env.pose_arm(ep.proprio[0, :7])
            tip = env.fingertip_centre()
            assert min(np.linalg.norm(tip - c) for c in cubes) < 0.13, tip  # by some cube ...
            assert env.distance_to_goal() > 0.045 and not env.success()  # ... not yet at the named one
            assert np.abs(ep.proprio[1:3, :7] - ep.proprio[0, :7]).max() < 0.005  # at rest first
            env.pose_arm(ep.proprio[-1, :7])
            assert env.distance_to_goal() < 0.04  # recorded until the named cube was reached
    finally:
        env.close()
    assert processes_in_domain(domain) == []


def test_start_near_must_be_a_share(tmp_path):
    proc = subprocess.run(collect_cmd(tmp_path / "x", pick_domain_id(), "--start-near", "1.5"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--start-near" in proc.stderr and "0..1" in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists()


def test_ctrl_c_stops_every_node_and_keeps_saved_episodes_valid(tmp_path):
    out = tmp_path / "sim_episodes"
    domain = pick_domain_id()
    proc = subprocess.Popen(
        collect_cmd(out, domain, "--task", "reach", "--episodes", "50", "--timeout", "30"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and list_episodes(out)):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no episode saved within 120 s"
            time.sleep(0.2)
        time.sleep(1.5)  # well into the next episode
        assert processes_in_domain(domain), "the nodes should be running"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)  # each node gets SIGINT, then SIGKILL after 10 s
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert processes_in_domain(domain) == []
    count, problems = validate_dataset(out)
    assert count >= 1 and problems == [], problems
