"""Drive simulated data collection: start the nodes, run N episodes, stop everything.

Processes (each in its own process group, own ROS_DOMAIN_ID per run):
    scripted_expert (crane_x7_sim with the expert)  ->  teleop_relay  ->  data_logger

Every node runs on the simulator's clock (/clock, use_sim_time), at any --speed, and the
simulator runs in lockstep with the logger (its `step_rate`, the logger's `step_topic`): the
simulated time goes on only once the logger holds the step of each recording instant, so a
busy machine slows the simulation down instead of thinning out the recording. An episode
still recorded below RATE_SHARE of the rate is deleted and recorded again (same seed), at
most RECOLLECT_TRIES times; then the collection stops with an error.

Per episode: set the simulator's `seed` parameter; /teleop_relay/hold (the clutch);
/crane_x7_sim/reset; wait for the new instruction; release the clutch and wait for the
follower to rest at the episode's start pose (as it will at deployment); set the logger's
task/seed parameters; /data_logger/start (again until it records with the scene's
instruction); /crane_x7_sim/start_expert (the recording begins with the arm at rest); wait
until the task's success check has held for `settle` seconds, the expert gives up, or
`timeout`; read /crane_x7_sim/check_success; /data_logger/stop (the logger stores the
success flag it received from /crane_x7_sim/success). On any exit path (also Ctrl-C or
SIGTERM) the nodes get SIGINT, then SIGKILL.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.ros.processes import NodeGroup, pick_domain_id, release_domain_id, ros_env

SIM = "/crane_x7_sim"
LOGGER = "/data_logger"
RELAY = "/teleop_relay"
CAMERA_TOPICS = {"wrist": "/camera/color/image_raw", "primary": "/scene_camera/color/image_raw"}
SUCCESS_RATE = 10.0  # Hz of the simulator's ~/success (its success_rate default), in simulated time
RATE_SHARE = 0.95  # an episode recorded below this share of the requested rate is recorded again
RECOLLECT_TRIES = 3  # recordings of one seed before the collection gives up
RESEND_AFTER = 5.0  # s without an answer before a request that may be repeated is sent again


@dataclass
class EpisodeResult:
    index: int
    seed: int
    instruction: str
    path: str | None
    steps: int
    success_check: bool
    success_stored: bool | None
    seconds: float
    achieved_hz: float | None
    dropped_steps: int
    stale_frames: dict
    end: str  # "success", "expert failed", "timeout"
    start: str = "home"  # or "near cube": a recovery start (start_near)


@dataclass
class CollectionSummary:
    out: str
    task: str
    requested: int
    episodes: list[EpisodeResult] = field(default_factory=list)
    domain_id: int = 0
    log_dir: str = ""
    checked: int = 0  # episodes the validator read
    problems: list[str] = field(default_factory=list)
    recollected: list[dict] = field(default_factory=list)  # recordings below the rate, deleted and done again

    @property
    def successes(self) -> int:
        return sum(e.success_check for e in self.episodes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["successes"] = self.successes
        return d


class _Client:
    """The driver's own rclpy node (a BackgroundNode) with the simulator's topics."""

    def __init__(self, domain_id: int) -> None:
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, String

        from crane_x7_vla.ros import msgs
        from crane_x7_vla.ros.background_node import BackgroundNode

        self._bg = BackgroundNode("crane_x7_collect", domain_id)
        self.node = self._bg.node
        self.success = False
        self.success_count = 0  # consecutive true ~/success messages: simulated time at success
        self.expert = ""
        self.instruction = ""
        self.joints = None  # (positions, velocities) of the follower's newest /joint_states
        self._joint_state_vector = msgs.joint_state_vector
        self.node.create_subscription(Bool, f"{SIM}/success", self._on_success, 10)
        self.node.create_subscription(JointState, robot.JOINT_STATES_TOPIC, self._on_joints, msgs.STATE_QOS)
        self.node.create_subscription(String, f"{SIM}/expert_status", self._on_expert, msgs.LATCHED_QOS)
        self.node.create_subscription(String, "/instruction", self._on_instruction, msgs.LATCHED_QOS)

    def _on_success(self, msg) -> None:
        self.success = bool(msg.data)
        self.success_count = self.success_count + 1 if msg.data else 0

    def _on_joints(self, msg) -> None:
        try:
            q = self._joint_state_vector(msg)
        except (KeyError, ValueError):
            return
        # velocities in robot.JOINT_NAMES order too (the message may list the joints in any order)
        names = list(msg.name)
        v = robot.order_joints(names, list(msg.velocity)) if len(msg.velocity) == len(names) else np.zeros(0)
        self.joints = (q, np.asarray(v, dtype=float))

    def wait_at_rest(self, start, nodes: NodeGroup, timeout: float = 20.0, tolerance: float = 0.01) -> None:
        """Wait until the follower's arm is within `tolerance` rad of `start` and still."""
        start = np.asarray(start, dtype=float)[: robot.NUM_ARM_JOINTS]
        deadline, settled = time.monotonic() + timeout, 0
        while settled < 3:
            nodes.check_alive()
            joints = self.joints
            if joints is not None:
                q, v = joints
                near = np.abs(q[: robot.NUM_ARM_JOINTS] - start).max() < tolerance
                still = v.size == 0 or np.abs(v[: robot.NUM_ARM_JOINTS]).max() < 0.05
                settled = settled + 1 if near and still else 0
            if time.monotonic() > deadline:
                off = "no joint states" if joints is None else \
                    f"max joint error {np.abs(joints[0][: robot.NUM_ARM_JOINTS] - start).max():.3f} rad"
                raise RuntimeError(f"after the reset the follower did not come to rest at the episode's start pose "
                                   f"within {timeout:.0f} s ({off}); is something else commanding "
                                   f"{robot.ARM_TRAJECTORY_TOPIC}?")
            time.sleep(0.02)

    def _on_expert(self, msg) -> None:
        self.expert = msg.data

    def _on_instruction(self, msg) -> None:
        self.instruction = msg.data

    def call(self, srv_type, name: str, request, timeout: float, nodes: NodeGroup, resend_after: float | None = None):
        return self._bg.call(srv_type, name, request, timeout, check=nodes.check_alive, resend_after=resend_after)

    def trigger(self, name: str, nodes: NodeGroup, timeout: float = 60.0, resend_after: float | None = None):
        from std_srvs.srv import Trigger

        return self.call(Trigger, name, Trigger.Request(), timeout, nodes, resend_after)

    def hold_relay(self, hold: bool, nodes: NodeGroup, timeout: float = 60.0) -> None:
        from std_srvs.srv import SetBool

        res = self.call(SetBool, f"{RELAY}/hold", SetBool.Request(data=hold), timeout, nodes, RESEND_AFTER)
        if not res.success:
            raise RuntimeError(f"{RELAY}/hold {hold}: {res.message}")

    def set_params(self, node_name: str, values: dict, nodes: NodeGroup, timeout: float = 60.0) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        res = self.call(SetParameters, f"{node_name}/set_parameters", req, timeout, nodes, RESEND_AFTER)
        bad = [r.reason for r in res.results if not r.successful]
        if bad:
            raise RuntimeError(f"could not set {values} on {node_name}: {bad}")

    def close(self) -> None:
        self._bg.close()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def collect_sim(
    out: str | Path,
    *,
    task: str = "reach",
    episodes: int = 20,
    seed: int = 0,
    rate: float = 10.0,
    cameras: tuple[str, ...] = ("wrist", "primary"),
    camera_size: tuple[int, int] = (320, 240),
    timeout: float = 40.0,
    settle: float = 0.5,
    speed: float = 1.0,
    start_near: float = 0.0,
    domain_id: int | None = None,
    log_dir: str | Path | None = None,
    echo=print,
) -> CollectionSummary:
    """Record `episodes` simulated episodes into `out`; returns the summary."""
    out = Path(out).expanduser().resolve()
    unknown = [c for c in cameras if c not in CAMERA_TOPICS]
    if unknown or not cameras:
        raise ValueError(f"cameras must be chosen from {sorted(CAMERA_TOPICS)}, got {list(cameras)}")
    if episodes < 1 or rate <= 0 or timeout <= 0:
        raise ValueError("episodes must be >= 1, rate and timeout positive")
    if not 0 < speed <= 10:
        raise ValueError(f"--speed must be in (0, 10] (simulated seconds per wall-clock second), got {speed}")
    if not 0.0 <= start_near <= 1.0:
        raise ValueError(f"--start-near is a share of the episodes, 0..1; got {start_near}")
    # The simulator publishes /clock and every node runs on it (use_sim_time), at any speed: the
    # simulated time pauses while the logger records a step.
    sim_clock = {"use_sim_time": True}
    domain = domain_id if domain_id is not None else pick_domain_id()
    log_dir = Path(log_dir) if log_dir else out / "collect_logs"
    summary = CollectionSummary(out=str(out), task=task, requested=episodes, domain_id=domain, log_dir=str(log_dir))
    topics = [CAMERA_TOPICS[c] for c in cameras]
    # Ctrl-C and SIGTERM end the run the same way (KeyboardInterrupt in the main thread),
    # whatever handler a library may have installed for SIGINT before.
    main = threading.current_thread() is threading.main_thread()
    old_handlers = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)
                    if main}
    nodes = NodeGroup(ros_env(domain), log_dir)
    client = None
    try:
        echo(f"starting the simulated CRANE-X7, relay and logger (ROS_DOMAIN_ID={domain}, logs in {log_dir})")
        nodes.start("scripted_expert", {
            "task": task, "seed": seed, "cameras": list(cameras), "camera_topics": topics,
            "camera_frames": [f"{c}_camera_optical_frame" for c in cameras],
            "camera_width": camera_size[0], "camera_height": camera_size[1],
            "real_time_factor": float(speed), "publish_clock": True, "expert_waits_for_start": True,
            "start_near": float(start_near), "step_rate": float(rate), "step_ack_topic": f"{LOGGER}/recorded",
            "success_rate": SUCCESS_RATE,
        }, name="crane_x7_sim")
        nodes.start("teleop_relay", dict(sim_clock))
        nodes.start("data_logger", {**sim_clock,
            "output_dir": str(out), "rate": float(rate), "camera_names": list(cameras), "camera_topics": topics,
            "success_topic": f"{SIM}/success", "task": task, "keyboard": False, "step_topic": f"{SIM}/step",
        })
        client = _Client(domain)
        for i in range(episodes):
            summary.episodes.append(_at_rate(client, nodes, i, seed + i, task, timeout, settle, rate, summary, echo))
        from crane_x7_vla.episode.validate import validate_dataset

        summary.checked, summary.problems = validate_dataset(out)
        return summary
    except KeyboardInterrupt:
        if client is not None:  # drop the unfinished episode so the saved ones stay a valid dataset
            try:
                client.trigger(f"{LOGGER}/discard", nodes, timeout=5.0)
            except Exception:
                pass
        raise
    finally:
        if client is not None:
            client.close()
        codes = nodes.stop_all()
        if domain_id is None:
            release_domain_id(domain)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        unclean = {n: c for n, c in codes.items() if c not in (0, None)}
        if unclean:
            echo(f"note: nodes exited with codes {unclean} (logs in {log_dir})")


def below_rate(result: EpisodeResult, rate: float) -> bool:
    """Whether an episode was recorded below RATE_SHARE of the requested rate."""
    return result.achieved_hz is None or result.achieved_hz < RATE_SHARE * rate


def _at_rate(client: _Client, nodes: NodeGroup, index: int, seed: int, task: str, timeout: float, settle: float,
             rate: float, summary: CollectionSummary, echo) -> EpisodeResult:
    """Record episode `index`; a recording below the rate is deleted and made again."""
    for attempt in range(1, RECOLLECT_TRIES + 1):
        result = _episode(client, nodes, index, seed, task, timeout, settle, echo)
        if not below_rate(result, rate):
            return result
        shutil.rmtree(result.path, ignore_errors=True)
        summary.recollected.append({"index": index, "seed": seed, "achieved_hz": result.achieved_hz,
                                    "dropped_steps": result.dropped_steps})
        echo(f"episode {index + 1}: recorded at {result.achieved_hz} Hz, below {RATE_SHARE:.0%} of {rate:g} Hz: "
             f"deleted{', recording it again' if attempt < RECOLLECT_TRIES else ''}")
    raise RuntimeError(f"episode {index + 1} (seed {seed}) was recorded below {RATE_SHARE:.0%} of {rate:g} Hz "
                       f"{RECOLLECT_TRIES} times: the logger could not keep up (see {nodes.log_dir})")


def _episode(client: _Client, nodes: NodeGroup, index: int, seed: int, task: str, timeout: float, settle: float,
             echo) -> EpisodeResult:
    client.set_params(SIM, {"seed": seed, "task": task}, nodes)
    client.hold_relay(True, nodes)  # the follower is put back by the reset, not by the relay
    res = client.trigger(f"{SIM}/reset", nodes)
    if not res.success:
        raise RuntimeError(f"simulator reset failed: {res.message}")
    scene = json.loads(res.message)
    deadline = time.monotonic() + 10.0
    while client.instruction != scene["instruction"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the new instruction {scene['instruction']!r} did not arrive on /instruction")
        time.sleep(0.02)
    # The leader rests at the start pose until the expert moves; the relay follows it again from
    # where the reset put the follower. Record from there, as the policy will start at deployment.
    client.hold_relay(False, nodes)
    client.wait_at_rest(scene["start_state"], nodes)
    client.set_params(LOGGER, {"task": task, "seed": seed}, nodes)
    started = time.monotonic()
    wanted = f": {scene['instruction']!r}"  # the end of ~/start's answer when it has the new instruction
    while True:  # the first frames after a reset take a moment; so may the latched instruction
        res = client.trigger(f"{LOGGER}/start", nodes)
        if res.success and res.message.endswith(wanted):
            break
        if res.success:  # started with the previous scene's instruction: not yet arrived
            client.trigger(f"{LOGGER}/discard", nodes, timeout=5.0)
        if time.monotonic() - started > 15.0:
            raise RuntimeError(f"the logger did not start with {scene['instruction']!r}: {res.message}")
        time.sleep(0.02 if res.success else 0.2)
    # The expert moves only once the logger records: every episode begins at rest, the
    # picture the policy sees first when deployed (a human starts recording, then moves).
    res = client.trigger(f"{SIM}/start_expert", nodes, resend_after=RESEND_AFTER)
    if not res.success:
        raise RuntimeError(f"the expert did not start: {res.message}")
    t0 = time.monotonic()
    client.success, client.success_count = False, 0
    settled = max(1, math.ceil(settle * SUCCESS_RATE))  # success held for `settle` simulated seconds
    end = "timeout"
    while time.monotonic() - t0 < timeout:
        nodes.check_alive()
        if client.success_count >= settled:
            end = "success"
            break
        if client.expert == "failed":
            end = "expert failed"
            break
        time.sleep(0.02)
    check = client.trigger(f"{SIM}/check_success", nodes, resend_after=RESEND_AFTER)
    res = client.trigger(f"{LOGGER}/stop", nodes)
    if not res.success:
        raise RuntimeError(f"the logger could not save episode {index}: {res.message}")
    saved = json.loads(res.message)
    from crane_x7_vla.episode.schema import EpisodeMeta

    meta = EpisodeMeta.load(Path(saved["path"]) / "episode_meta.json")
    if meta.language_instruction != scene["instruction"]:
        raise RuntimeError(f"{saved['path']} holds instruction {meta.language_instruction!r}, "
                           f"the scene's is {scene['instruction']!r}")
    result = EpisodeResult(
        index=index, seed=seed, instruction=scene["instruction"], path=saved["path"], steps=saved["steps"],
        success_check=bool(check.success), success_stored=meta.success, seconds=round(time.monotonic() - t0, 2),
        achieved_hz=saved["achieved_hz"], dropped_steps=saved["dropped_steps"], stale_frames=saved["stale_frames"],
        end=end, start=scene.get("start", "home"),
    )
    stale = sum(saved["stale_frames"].values())
    near = " (start near a cube)" if result.start == "near cube" else ""
    echo(f"episode {index + 1}: seed {seed} {scene['instruction']!r}{near}: {end}, {result.steps} steps in "
         f"{result.seconds:.1f} s ({result.achieved_hz} Hz), {result.dropped_steps} dropped, {stale} stale frames "
         f"-> {Path(saved['path']).name}")
    return result
