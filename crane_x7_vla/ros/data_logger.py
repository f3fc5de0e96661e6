"""data_logger: record the FOLLOWER arm, N cameras and the instruction as episodes.

Each tick of the `rate` timer (default 10 Hz) makes one step from

* the newest follower joint state (`joint_states_topic`, default /joint_states),
* for every camera, the buffered image whose header stamp is closest to that joint
  state's stamp; it must lie within `sync_tolerance` seconds.

With `step_topic` set (simulated collection: crane_x7_sim's ~/step), the simulator says
when to record instead of the timer: each step message names an instant of the simulated
clock, the step is made from the joint state and the images stamped with that instant, and
the logger answers on ~/recorded (std_msgs/Header, the instant's stamp) once it holds them;
the simulator waits for that answer before its time goes on, so every episode holds one step
per instant, at `rate` in simulated time, whatever else the machine runs. A step whose data
has not all arrived after `step_wait` seconds of the logger running (a lost image) is paired
by the rules below.

A tick is DROPPED (never filled with an old frame) when the joint state is older than
`state_timeout` or not newer than the last step's, or when a camera has no image within
the tolerance; the episode's metadata counts them: `dropped_steps`, `stale_frames`
per camera, `extra.stale_joint_states`, and `extra.repeated_frames` (a step that paired
the same image as the step before, still within the tolerance).

Stored per step (see crane_x7_vla.episode.schema): observation/proprio = follower joints
in robot.JOINT_NAMES order; action = the NEXT step's proprio (absolute follower joint
targets; the last step repeats its own); images as RGB JPEG; both time stamps.

Episodes are controlled through std_srvs/Trigger services ~/start, ~/stop (save) and
~/discard, or with keys when stdin is a terminal (s = start, e or space = stop and save,
d = discard, q = quit). A worker thread owns the EpisodeWriter: steps are appended as
they come, and closing (fsync, metadata, rename) never runs in the timer. An episode
becomes visible only when closed, so a crash or SIGKILL leaves every saved episode
intact (the unfinished one stays `.partial`; `crane-x7-vla dataset recover` keeps its
complete steps). Each saved episode is summarised in the log and on ~/episodes
(std_msgs/String, JSON).
"""

from __future__ import annotations

import collections
import json
import os
import queue
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Header, String
from std_srvs.srv import Trigger

from crane_x7_vla import robot
from crane_x7_vla.episode.schema import CameraInfo
from crane_x7_vla.ros import msgs
from crane_x7_vla.ros.node_main import ConfigError, run

_CLOSE_TIMEOUT = 60.0
_PENDING_CHECK = 0.05  # s between checks of a step still waiting for its data


class _Worker:
    """A thread that owns the EpisodeWriter; jobs run in order."""

    def __init__(self, logger) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._log = logger
        self.writer = None
        self.write_errors = 0
        self._thread = threading.Thread(target=self._loop, name="episode-writer", daemon=True)
        self._thread.start()

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        self._jobs.put((fn, args, fut))
        return fut

    @property
    def backlog(self) -> int:
        return self._jobs.qsize()

    def stop(self, timeout: float) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, fut = job
            try:
                fut.set_result(fn(*args))
            except Exception as exc:  # reported through the future or the log
                fut.set_exception(exc)

    # jobs (run in the worker thread) ---------------------------------------------------
    def open(self, root, kwargs) -> str:
        from crane_x7_vla.episode.writer import EpisodeWriter

        self.writer = EpisodeWriter(root, **kwargs)
        return self.writer.name

    def add_step(self, q, images: dict, stamp_ns: int, image_stamps: dict) -> None:
        if self.writer is None:
            return
        try:
            rgb = {cam: msgs.image_to_rgb(msg) for cam, msg in images.items()}
            self.writer.add_step(q, rgb, timestamp_ns=stamp_ns, image_timestamps_ns=image_stamps)
        except Exception as exc:
            self.write_errors += 1
            self._log.error(f"could not write step {self.writer.num_steps}: {exc}")

    def close(self, meta: dict) -> tuple[Path, int]:
        writer, self.writer = self.writer, None
        steps = writer.num_steps
        return writer.close(**meta), steps

    def discard(self) -> str:
        writer, self.writer = self.writer, None
        writer.discard()
        return writer.name

    def abandon(self) -> str | None:
        """Stop writing without closing: the episode stays .partial for recovery."""
        writer, self.writer = self.writer, None
        if writer is None:
            return None
        writer.__exit__(RuntimeError, RuntimeError("logger stopped"), None)
        return str(writer.partial_dir)


class _Episode:
    """Counters of the episode being recorded (touched under the node's lock)."""

    def __init__(self, name: str, cameras: dict[str, CameraInfo], started: float) -> None:
        self.name = name
        self.cameras = cameras
        self.started = started
        self.ticks = 0
        self.steps = 0
        self.dropped = 0
        self.stale = {cam: 0 for cam in cameras}
        self.repeated = {cam: 0 for cam in cameras}
        self.stale_joint = 0
        self.first_stamp: int | None = None
        self.last_stamp: int | None = None
        self.last_image_stamp: dict[str, int] = {}
        self.success: bool | None = None


class DataLogger(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("data_logger", **kwargs)
        p = lambda *a: msgs.declare(self, *a)  # noqa: E731
        self.output_dir = Path(
            os.path.expanduser(p("output_dir", "~/crane_x7_data", "Directory the episodes are written into"))
        )
        self.rate = float(p("rate", 10.0, "Steps recorded per second (Hz)"))
        self.joint_topic = p(
            "joint_states_topic", robot.JOINT_STATES_TOPIC, "JointState topic of the FOLLOWER arm (never the leader's)"
        )
        self.camera_names = list(
            p("camera_names", ["primary"], "Camera names as stored in the episode (observation/image_<name>)")
        )
        self.camera_topics = list(
            p("camera_topics", [robot.DEFAULT_IMAGE_TOPIC], "Image topic of each camera, same order as camera_names")
        )
        self.instruction_topic = p(
            "instruction_topic", "/instruction", "std_msgs/String topic (transient local) with the current instruction"
        )
        self.default_instruction = p(
            "instruction", "", "Instruction used when nothing was received on instruction_topic"
        )
        self.success_topic = p(
            "success_topic",
            "",
            "std_msgs/Bool topic with the task's success check ('' = none); "
            "its last value during an episode becomes the episode's success flag",
        )
        self.sync_tolerance = float(
            p("sync_tolerance", 0.1, "Largest |image stamp - joint state stamp| of one step (s)")
        )
        self.state_timeout = float(p("state_timeout", 0.5, "A joint state received longer ago than this is stale (s)"))
        self.jpeg_quality = int(p("jpeg_quality", 90, "JPEG quality of stored images (1-100)"))
        self.image_buffer = int(p("image_buffer", 8, "Images kept per camera for pairing by time stamp"))
        p("task", "", "Task name stored in the episode metadata (read at each start)")
        p("seed", -1, "Seed stored in the episode metadata, -1 = none (read at each start)")
        self.keyboard = bool(
            p(
                "keyboard",
                True,
                "Read keys from the terminal when stdin is one (s start, e/space save, d discard, q quit)",
            )
        )
        self.step_topic = p(
            "step_topic",
            "",
            "std_msgs/Header topic of recording instants (crane_x7_sim's ~/step): record one step "
            "per instant, answered on ~/recorded, instead of on the rate timer ('' = timer)",
        )
        self.step_wait = float(
            p(
                "step_wait",
                2.0,
                "With step_topic: seconds (of this node running) to wait for a step's joint state "
                "and images before pairing the nearest",
            )
        )
        self._check_config()

        self._lock = threading.RLock()
        self._joint: tuple[int, np.ndarray, float] | None = None  # (stamp ns, q, received monotonic)
        self._joints = collections.deque(maxlen=64)  # recent (stamp ns, q): a step's own joint state
        self._pending: list[int] | None = None  # [step instant (ns), check-timer ticks it has waited]
        self._answered_ns = -1  # newest step instant answered on ~/recorded
        self._images = {cam: collections.deque(maxlen=self.image_buffer) for cam in self.camera_names}
        self._instruction = ""
        self._success: bool | None = None
        self._episode: _Episode | None = None
        self._worker = _Worker(self.get_logger())
        self.saved: list[str] = []

        self.create_subscription(JointState, self.joint_topic, self._on_joints, msgs.STATE_QOS)
        for cam, topic in zip(self.camera_names, self.camera_topics):
            self.create_subscription(Image, topic, lambda m, c=cam: self._on_image(c, m), msgs.SENSOR_QOS)
        self.create_subscription(String, self.instruction_topic, self._on_instruction, msgs.LATCHED_QOS)
        if self.success_topic:
            self.create_subscription(Bool, self.success_topic, self._on_success, 10)
        self.create_service(Trigger, "~/start", lambda req, res: self._service(self.start, res))
        self.create_service(Trigger, "~/stop", lambda req, res: self._service(self.stop, res))
        self.create_service(Trigger, "~/discard", lambda req, res: self._service(self.discard, res))
        self._episodes_pub = self.create_publisher(String, "~/episodes", 10)
        if self.step_topic:
            self._recorded_pub = self.create_publisher(Header, "~/recorded", msgs.STATE_QOS)
            self.create_subscription(Header, self.step_topic, self._on_step, msgs.STATE_QOS)
            self.create_timer(_PENDING_CHECK, self._check_pending, clock=self._wall_clock())
        else:
            self.create_timer(1.0 / self.rate, self._tick)
        cams = ", ".join(f"{c} <- {t}" for c, t in zip(self.camera_names, self.camera_topics))
        paced = f" at the instants of {self.step_topic}" if self.step_topic else ""
        self.get_logger().info(
            f"logger ready: {self.rate:g} Hz{paced} into {self.output_dir}; joints <- {self.joint_topic}; {cams}; "
            f"services {self.get_fully_qualified_name()}/start|stop|discard"
        )
        self._keys = None
        if self.keyboard and sys.stdin is not None and sys.stdin.isatty():
            self._keys = threading.Thread(target=self._key_loop, name="logger-keys", daemon=True)
            self._keys.start()

    def _check_config(self) -> None:
        if not (0 < self.rate <= 200):
            raise ConfigError(f"parameter 'rate' must be in (0, 200] Hz, got {self.rate}")
        if not self.camera_names:
            raise ConfigError("parameter 'camera_names' is empty: name at least one camera")
        if len(self.camera_names) != len(self.camera_topics):
            raise ConfigError(
                f"camera_names has {len(self.camera_names)} entries but camera_topics has "
                f"{len(self.camera_topics)}: give one topic per camera"
            )
        if len(set(self.camera_names)) != len(self.camera_names):
            raise ConfigError(f"camera_names repeats a name: {self.camera_names}")
        if self.sync_tolerance <= 0 or self.state_timeout <= 0:
            raise ConfigError("parameters 'sync_tolerance' and 'state_timeout' must be positive")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"parameter 'jpeg_quality' must be 1..100, got {self.jpeg_quality}")
        if self.image_buffer < 1:
            raise ConfigError("parameter 'image_buffer' must be at least 1")
        if self.step_wait <= 0:
            raise ConfigError(f"parameter 'step_wait' must be positive, got {self.step_wait}")

    def _wall_clock(self):
        from rclpy.clock import Clock, ClockType

        return Clock(clock_type=ClockType.STEADY_TIME)

    # -- inputs ---------------------------------------------------------------------------
    def _stamp(self, header) -> int:
        ns = msgs.stamp_to_ns(header.stamp)
        return ns if ns > 0 else self.get_clock().now().nanoseconds

    def _on_joints(self, msg: JointState) -> None:
        try:
            q = msgs.joint_state_vector(msg)
        except (KeyError, ValueError) as exc:
            self.get_logger().warning(f"ignored a joint state on {self.joint_topic}: {exc}", throttle_duration_sec=5.0)
            return
        self._joint = (self._stamp(msg.header), q, time.monotonic())
        if self.step_topic:
            self._joints.append(self._joint[:2])
            if self._pending is not None:
                self._complete_step()

    def _on_image(self, cam: str, msg: Image) -> None:
        self._images[cam].append((self._stamp(msg.header), msg))
        if self._pending is not None:
            self._complete_step()

    def _on_instruction(self, msg: String) -> None:
        if msg.data != self._instruction:
            self.get_logger().info(f"instruction: {msg.data!r}")
        self._instruction = msg.data

    def _on_success(self, msg: Bool) -> None:
        with self._lock:
            if self._episode is not None:
                self._episode.success = bool(msg.data)

    # -- recording at the simulator's instants ---------------------------------------------
    def _answer(self, stamp_ns: int) -> None:
        self._answered_ns = max(self._answered_ns, stamp_ns)
        self._recorded_pub.publish(Header(stamp=msgs.ns_to_stamp(self._answered_ns), frame_id=self.get_name()))

    def _on_step(self, msg: Header) -> None:
        stamp = msgs.stamp_to_ns(msg.stamp)
        with self._lock:
            if stamp <= self._answered_ns:  # sent again while the answer was on its way
                self._answer(stamp)
                return
            if self._episode is None:
                self._answer(stamp)
                return
            if self._pending is not None and self._pending[0] != stamp:
                self._record_pending()  # a newer instant: the older one is settled now
            if self._pending is None or self._pending[0] != stamp:
                self._pending = [stamp, 0]
            self._complete_step()

    def _step_data(self, stamp: int):
        """The joint state and every camera's image stamped `stamp`, or None while one is missing."""
        q = next((q for s, q in reversed(self._joints) if s == stamp), None)
        if q is None:
            return None
        chosen = {}
        for cam, info in self._episode.cameras.items():
            img = next(
                (
                    m
                    for s, m in reversed(self._images[cam])
                    if s == stamp and m.width == info.width and m.height == info.height
                ),
                None,
            )
            if img is None:
                return None
            chosen[cam] = img
        return q, chosen

    def _complete_step(self) -> None:
        with self._lock:
            if self._pending is None:
                return
            if self._episode is None:
                self._answer(self._pending[0])
                self._pending = None
                return
            data = self._step_data(self._pending[0])
            if data is None:
                return
            stamp = self._pending[0]
            self._pending = None
            q, chosen = data
            self._episode.ticks += 1
            self._add_step(self._episode, stamp, q, chosen, {cam: stamp for cam in chosen})
            self._answer(stamp)

    def _record_pending(self) -> None:
        """A step whose data did not all arrive: its own joint state (else the step is dropped) with
        the images nearest to it, as on the timer."""
        stamp, _ = self._pending
        self._pending = None
        if self._episode is not None:
            joint = next(((s, q, 0.0) for s, q in reversed(self._joints) if s == stamp), None)
            self._record_at(self._episode, joint, stale_check=False)
        self._answer(stamp)

    def _check_pending(self) -> None:
        # Waiting is counted in this timer's ticks, not in wall-clock time: a logger that did not
        # run for a while (a starved or stopped process) first takes the messages that came meanwhile.
        with self._lock:
            if self._pending is None:
                return
            self._pending[1] += 1
            if self._pending[1] * _PENDING_CHECK > self.step_wait:
                self.get_logger().warning(
                    f"step at {self._pending[0] * 1e-9:.3f} s: its joint state or images did not all arrive "
                    f"within {self.step_wait:g} s; pairing the nearest",
                    throttle_duration_sec=5.0,
                )
                self._record_pending()

    # -- recording on the timer ------------------------------------------------------------
    def _tick(self) -> None:
        with self._lock:
            if self._episode is not None:
                self._record_at(self._episode, self._joint, stale_check=True)

    def _record_at(self, ep: _Episode, joint, *, stale_check: bool) -> None:
        """One tick of `ep` at `joint` (stamp ns, q, received): each camera's image nearest to its
        stamp within sync_tolerance, or the tick is dropped."""
        ep.ticks += 1
        if (
            joint is None
            or (stale_check and time.monotonic() - joint[2] > self.state_timeout)
            or (ep.last_stamp is not None and joint[0] <= ep.last_stamp)
        ):
            ep.dropped += 1
            ep.stale_joint += 1
            return
        stamp, q, _ = joint
        chosen, stamps, missing = {}, {}, []
        for cam, info in ep.cameras.items():
            best = None
            for img_stamp, msg in self._images[cam]:
                if msg.width != info.width or msg.height != info.height:
                    continue
                if best is None or abs(img_stamp - stamp) < abs(best[0] - stamp):
                    best = (img_stamp, msg)
            if best is None or abs(best[0] - stamp) > self.sync_tolerance * 1e9:
                missing.append(cam)
                continue
            chosen[cam], stamps[cam] = best[1], best[0]
        if missing:
            ep.dropped += 1
            for cam in missing:
                ep.stale[cam] += 1
            return
        self._add_step(ep, stamp, q, chosen, stamps)

    def _add_step(self, ep: _Episode, stamp: int, q, chosen: dict, stamps: dict) -> None:
        if ep.last_stamp is not None and stamp <= ep.last_stamp:
            ep.dropped += 1
            ep.stale_joint += 1
            return
        for cam, s in stamps.items():
            if ep.last_image_stamp.get(cam) == s:
                ep.repeated[cam] += 1
        ep.last_image_stamp = stamps
        if ep.first_stamp is None:
            ep.first_stamp = stamp
        ep.last_stamp = stamp
        ep.steps += 1
        self._worker.submit(self._worker.add_step, q, chosen, stamp, stamps)

    def start(self) -> str:
        with self._lock:
            if self._episode is not None:
                raise RuntimeError(f"already recording {self._episode.name}; stop or discard it first")
            instruction = self._instruction or self.default_instruction
            if not instruction:
                raise RuntimeError(
                    f"no instruction: nothing received on {self.instruction_topic} and parameter 'instruction' is empty"
                )
            joint = self._joint
            # (at the simulator's instants the simulated time may stand still while the logger is busy)
            if joint is None or (not self.step_topic and time.monotonic() - joint[2] > self.state_timeout):
                raise RuntimeError(f"no current follower joint state on {self.joint_topic}")
            cameras = {}
            for cam, topic in zip(self.camera_names, self.camera_topics):
                if not self._images[cam]:
                    raise RuntimeError(f"camera '{cam}' has sent no image on {topic}")
                last = self._images[cam][-1][1]
                cameras[cam] = CameraInfo(width=int(last.width), height=int(last.height), topic=topic)
            seed = int(self.get_parameter("seed").value)
            kwargs = dict(
                fps=self.rate,
                instruction=instruction,
                cameras=cameras,
                task=str(self.get_parameter("task").value),
                seed=None if seed < 0 else seed,
                jpeg_quality=self.jpeg_quality,
            )
            name = self._worker.submit(self._worker.open, self.output_dir, kwargs).result(_CLOSE_TIMEOUT)
            self._episode = _Episode(name, cameras, time.monotonic())
        self.get_logger().info(f"recording {name}: {instruction!r}")
        return f"recording {name} into {self.output_dir}: {instruction!r}"

    def _finish(self) -> _Episode:
        with self._lock:
            ep, self._episode = self._episode, None
            if self._pending is not None:  # the episode ends before this instant: let the simulator go on
                self._answer(self._pending[0])
                self._pending = None
        if ep is None:
            raise RuntimeError("no episode is being recorded")
        return ep

    def stop(self) -> str:
        ep = self._finish()
        span = (ep.last_stamp - ep.first_stamp) / 1e9 if ep.steps > 1 else 0.0
        achieved = round((ep.steps - 1) / span, 3) if span > 0 else None
        meta = dict(
            success=ep.success,
            achieved_fps=achieved,
            dropped_steps=ep.dropped,
            stale_frames=dict(ep.stale),
            extra={
                "timer_ticks": ep.ticks,
                "stale_joint_states": ep.stale_joint,
                "repeated_frames": dict(ep.repeated),
                "sync_tolerance_s": self.sync_tolerance,
                "joint_states_topic": self.joint_topic,
            },
        )
        backlog = self._worker.backlog
        try:
            path, steps = self._worker.submit(self._worker.close, meta).result(_CLOSE_TIMEOUT)
        except ValueError as exc:  # no steps
            self.get_logger().error(f"{ep.name} not saved: {exc} ({ep.dropped} of {ep.ticks} ticks dropped)")
            raise RuntimeError(f"{ep.name} not saved: {exc}") from exc
        summary = {
            "path": str(path),
            "steps": steps,
            "requested_hz": self.rate,
            "achieved_hz": achieved,
            "ticks": ep.ticks,
            "dropped_steps": ep.dropped,
            "stale_frames": dict(ep.stale),
            "stale_joint_states": ep.stale_joint,
            "repeated_frames": dict(ep.repeated),
            "success": ep.success,
            "writer_backlog_at_stop": backlog,
        }
        self.saved.append(str(path))
        stale = ", ".join(f"{c} {n}" for c, n in ep.stale.items())
        self.get_logger().info(
            f"saved {path} ({steps} steps, {achieved if achieved is not None else '-'} Hz of "
            f"{self.rate:g} Hz requested, {ep.dropped} of {ep.ticks} ticks dropped, stale frames: {stale}, "
            f"stale joint states {ep.stale_joint}, success {ep.success})"
        )
        self._episodes_pub.publish(String(data=json.dumps(summary)))
        return json.dumps(summary)

    def discard(self) -> str:
        ep = self._finish()
        name = self._worker.submit(self._worker.discard).result(_CLOSE_TIMEOUT)
        self.get_logger().info(f"discarded {name} ({ep.steps} steps)")
        return f"discarded {name}"

    def _service(self, action, response):
        try:
            response.message = action()
            response.success = True
        except Exception as exc:
            response.success = False
            response.message = str(exc)
            self.get_logger().warning(response.message)
        return response

    def _key_loop(self) -> None:
        import termios
        import tty

        fd = sys.stdin.fileno()
        old = termios.tcgetattr(fd)
        print("[data_logger] keys: s = start, e/space = stop and save, d = discard, q = quit", flush=True)
        try:
            tty.setcbreak(fd)
            while True:
                key = sys.stdin.read(1)
                actions = {"s": self.start, "e": self.stop, " ": self.stop, "d": self.discard}
                if key == "q":
                    print("[data_logger] quitting", flush=True)
                    os.kill(os.getpid(), 2)
                    return
                if key in actions:
                    try:
                        print(f"[data_logger] {actions[key]()}", flush=True)
                    except Exception as exc:
                        print(f"[data_logger] {exc}", flush=True)
        except (OSError, ValueError):
            return
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)

    def close(self) -> None:
        """On shutdown: an episode still recording stays .partial (never a truncated 'saved' one)."""
        with self._lock:
            ep, self._episode = self._episode, None
        if ep is not None:
            partial = self._worker.submit(self._worker.abandon).result(_CLOSE_TIMEOUT)
            self.get_logger().warning(
                f"stopped while recording {ep.name}: left unfinished at {partial}; "
                f"`crane-x7-vla dataset recover {self.output_dir}` keeps its {ep.steps} steps"
            )
        self._worker.stop(_CLOSE_TIMEOUT)


def main(argv=None) -> int:
    return run(DataLogger, argv)


if __name__ == "__main__":
    raise SystemExit(main())
