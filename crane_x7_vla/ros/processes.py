"""Run our ROS 2 nodes as child processes and always stop them (no orphans).

Each node runs in its own process group (session); stopping sends SIGINT to the whole
group (rclpy shuts down cleanly: the logger finishes its files), waits, then SIGKILLs
whatever is left. No rclpy import here: collect, tests and benchmarks share it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Console entry points (setup.py) and the modules they run.
NODE_MODULES = {
    "crane_x7_sim": "crane_x7_vla.ros.sim_node",
    "scripted_expert": "crane_x7_vla.ros.expert_node",
    "teleop_relay": "crane_x7_vla.ros.teleop_relay",
    "data_logger": "crane_x7_vla.ros.data_logger",
    "vla_inference_node": "crane_x7_vla.ros.inference_node",
    "eval_runner": "crane_x7_vla.ros.eval_runner",
}


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the parent dies (Linux), so even a killed
    parent leaves no orphan node behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_DOMAIN_LOCK_DIR = Path(tempfile.gettempdir()) / "crane_x7_vla_ros_domains"
_held_domains: dict[int, int] = {}  # domain id -> open lock file descriptor
_domains_lock = threading.Lock()


# RTPS well-known ports (DDS-RTPS 9.6.1.1, Fast DDS's defaults): a participant of domain d
# listens on PB + DG*d (discovery multicast) and PB + DG*d + 10 + PG*i / + 11 + PG*i, i its
# participant id on the host.
_PORT_BASE, _DOMAIN_GAIN, _PARTICIPANT_GAIN = 7400, 250, 2
_PARTICIPANTS_CHECKED = 60


def _udp_ports_in_use() -> set[int]:
    """Local UDP ports bound on this host (this network namespace)."""
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 1 and ":" in fields[1]:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def domain_in_use(domain: int, ports: set[int] | None = None) -> bool:
    """Whether a DDS participant of this domain runs on this host (it has bound the domain's
    discovery ports), whoever started it: processes that outlived the run that held the id, a
    `ros2 launch` or a user's node with that ROS_DOMAIN_ID."""
    ports = _udp_ports_in_use() if ports is None else ports
    base = _PORT_BASE + _DOMAIN_GAIN * int(domain)
    wanted = {base} | {base + 10 + _PARTICIPANT_GAIN * i + k for i in range(_PARTICIPANTS_CHECKED) for k in (0, 1)}
    return not wanted.isdisjoint(ports)


def pick_domain_id() -> int:
    """A ROS_DOMAIN_ID (1..200) no other run on this machine holds, held until
    release_domain_id() or the end of this process.

    Every id is an flock'ed file: two runs started at the same moment (the evaluation's two
    baselines, parallel tests, another user's collection) can never share a domain, where
    their service calls would reach each other's nodes. An id whose DDS ports are bound on
    this host (domain_in_use: nodes left running by an earlier run, or started without a
    lock) is skipped too."""
    import fcntl

    _DOMAIN_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # shared by every user of the machine (DDS discovery is)
        os.chmod(_DOMAIN_LOCK_DIR, 0o1777)
    candidates = list(range(1, 201))
    random.Random(os.getpid() * 7919 + time.time_ns()).shuffle(candidates)
    ports = _udp_ports_in_use()
    with _domains_lock:
        for domain in candidates:
            if domain in _held_domains or domain_in_use(domain, ports):
                continue
            path = _DOMAIN_LOCK_DIR / f"{domain}.lock"
            try:
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o666)
            except PermissionError:  # another user's lock file: locking needs only read access
                fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if domain_in_use(domain):  # a participant started between the port scan and the lock
                os.close(fd)
                continue
            _held_domains[domain] = fd
            return domain
    raise RuntimeError(f"all ROS domain ids 1..200 are in use by runs on this machine (locks in {_DOMAIN_LOCK_DIR}, "
                       "or DDS participants bound to their ports)")


@contextlib.contextmanager
def domain_lease():
    """`with domain_lease() as domain_id:` a free ROS_DOMAIN_ID for the block."""
    domain = pick_domain_id()
    try:
        yield domain
    finally:
        release_domain_id(domain)


def release_domain_id(domain: int) -> None:
    """Give back an id from pick_domain_id() (no-op for ids this process does not hold)."""
    with _domains_lock:
        fd = _held_domains.pop(int(domain), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


#: Fast DDS profile with a shared-memory segment large enough for camera images
#: (see the file for the measurement); set for child nodes unless the caller chose one.
FASTDDS_PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_large_data.xml"


def ros_env(domain_id: int, base: dict | None = None) -> dict:
    """Environment for child nodes: own DDS domain, discovery kept on this host,
    the large-data Fast DDS profile."""
    env = dict(os.environ if base is None else base)
    if FASTDDS_PROFILE.exists():
        env.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))
    env["ROS_DOMAIN_ID"] = str(int(domain_id))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    env.setdefault("MUJOCO_GL", "egl")
    return env


def format_param(value) -> str:
    """A --ros-args parameter value (YAML): strings are quoted, so '1' stays a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def node_command(executable: str, params: dict | None = None, *, name: str | None = None) -> list[str]:
    """The console script of `executable` (or `python -m` its module) with --ros-args."""
    script = Path(sys.executable).parent / executable
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", NODE_MODULES[executable]]
    args = []
    if name:
        args += ["-r", f"__node:={name}"]
    for key, value in (params or {}).items():
        args += ["-p", f"{key}:={format_param(value)}"]
    return cmd + (["--ros-args", *args] if args else [])


# An rclpy log line: "[ERROR] [1733400000.123456789] [eval_runner]: message"
_ROS_LOG_LINE = re.compile(r"^\[(?P<level>[A-Z]+)\] \[[0-9.]+\] \[(?P<logger>[^\]]+)\]: (?P<message>.*)$")


class NodeProcess:
    """One node in its own process group, output to a log file."""

    def __init__(self, executable: str, params: dict | None = None, *, env: dict, log_dir: Path,
                 name: str | None = None, stdin=subprocess.DEVNULL) -> None:
        self.name = name or executable
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        self.cmd = node_command(executable, params, name=name)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=stdin, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT to the group, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self.alive():
            self._signal_group(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # children the node may have started
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL now (a crash), no clean-up in the node."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait(5.0)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def last_error(self) -> str:
        """The node's last error line in its log (an ERROR/FATAL log line as 'logger: message', an
        `error:` line, the last line of a traceback), else its last line; '' for an empty log."""
        lines = [ln.strip() for ln in self.log_tail(200).splitlines() if ln.strip()]
        for line in reversed(lines):
            logged = _ROS_LOG_LINE.match(line)
            if logged and logged["level"] in ("ERROR", "FATAL"):
                return f"{logged['logger']}: {logged['message']}"
            head = line.split(":", 1)[0]
            if line.startswith("error:") or (head.endswith(("Error", "Exception")) and " " not in head):
                return line
        return lines[-1] if lines else ""

    def exit_message(self) -> str:
        """One line: which node ended, its exit code, its last error line and where its log is."""
        why = self.last_error()
        return (f"node {self.name} exited with code {self.proc.returncode}"
                f"{': ' + why if why else ''} (log: {self.log_path})")


class NodeGroup:
    """Several NodeProcesses stopped together (in reverse start order), also on errors."""

    def __init__(self, env: dict, log_dir: Path) -> None:
        self.env = env
        self.log_dir = Path(log_dir)
        self.nodes: list[NodeProcess] = []

    def start(self, executable: str, params: dict | None = None, **kwargs) -> NodeProcess:
        node = NodeProcess(executable, params, env=self.env, log_dir=self.log_dir, **kwargs)
        self.nodes.append(node)
        return node

    def check_alive(self) -> None:
        self.check_alive_except()

    def check_alive_except(self, *allowed: NodeProcess) -> None:
        """Like check_alive, but `allowed` nodes may have ended (e.g. a runner that finished)."""
        for node in self.nodes:
            if node not in allowed and not node.alive():
                raise RuntimeError(node.exit_message())

    def stop_all(self, timeout: float = 10.0) -> dict[str, int | None]:
        codes = {}
        for node in reversed(self.nodes):
            codes[node.name] = node.stop(timeout)
        return codes

    def __enter__(self) -> "NodeGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
