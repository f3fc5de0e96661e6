"""The real ROS 2 Jazzy launch stack: `colcon build` of this package as on a robot PC, then
`ros2 launch crane_x7_vla FILE` in a shell that sourced the workspace.

The stack (launch, launch_ros, ros2launch, ros2cli; no wheels on PyPI) is installed into
.venv by scripts/setup.d/ros2_launch.sh from ../shared/ros2-jazzy-launch; without it these
tests skip, saying what is missing. The "ROS install" underneath the workspace is .venv: a
folder holding only `ros2`, `colcon` and `python3` stands in for /opt/ros/jazzy/bin on PATH,
so anything else a test finds on PATH came from the sourced workspace.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
VENV_BIN = Path(sys.executable).parent
STANDINS = ROOT / "tests" / "fixtures" / "vendor_standins"
LAUNCH_FILES = (
    "data_collection.launch.py",
    "sim_collection.launch.py",
    "sim_inference.launch.py",
    "vla_inference.launch.py",
)
EXECUTABLES = (
    "crane-x7-vla",
    "crane_x7_sim",
    "scripted_expert",
    "teleop_relay",
    "data_logger",
    "vla_inference_node",
    "eval_runner",
)


def _missing() -> str | None:
    missing = []
    for module in ("launch", "launch_ros", "ros2launch", "ros2cli", "composition_interfaces"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    for tool in ("ros2", "colcon"):
        if not (VENV_BIN / tool).exists():
            missing.append(f".venv/bin/{tool}")
    if not missing:
        return None
    return (
        f"the ROS 2 launch stack is not installed ({', '.join(missing)} missing): scripts/setup.sh installs it "
        "from ../shared/ros2-jazzy-launch when that folder is beside the repository"
    )


MISSING = _missing()
requires_launch_stack = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def copy_repository(dst: Path) -> Path:
    """The repository's files (tracked and new, not ignored ones such as .venv) under `dst`."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listing.split("\0")):
        src = ROOT / rel
        if src.is_file():
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dst


@pytest.fixture(scope="session")
def underlay(tmp_path_factory) -> dict:
    """The environment of a shell that sourced the ROS install (here: .venv) and nothing else."""
    bin_dir = tmp_path_factory.mktemp("ros_install") / "bin"
    bin_dir.mkdir()
    for tool, target in (("ros2", "ros2"), ("colcon", "colcon"), ("python3", "python")):
        (bin_dir / tool).symlink_to(VENV_BIN / target)
    env = {key: os.environ[key] for key in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER") if key in os.environ}
    env.update(
        {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "AMENT_PREFIX_PATH": str(VENV),
            "PYTHONUNBUFFERED": "1",
            "RCUTILS_COLORIZED_OUTPUT": "0",
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "ROS_LOG_DIR": str(tmp_path_factory.mktemp("ros_logs")),
            "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
        }
    )
    return env


def run(cmd, *, cwd, env, timeout=300, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited with {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def sourced(env: dict, setup_bash: Path) -> dict:
    """`env` after `source setup_bash` in bash."""
    out = subprocess.run(
        ["bash", "-c", f"source '{setup_bash}' >/dev/null && env -0"], env=env, capture_output=True, check=True
    ).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


class Workspace:
    def __init__(self, root: Path, install: Path, env: dict) -> None:
        self.root = root
        self.install = install
        self.env = env  # a shell that sourced install/setup.bash

    def package_prefix(self, package: str = "crane_x7_vla") -> Path:
        merged = (self.install / ".colcon_install_layout").read_text().strip() == "merged"
        return self.install if merged else self.install / package


@pytest.fixture(scope="session")
def readme_workspace(tmp_path_factory, underlay) -> Workspace:
    """The README's layout: the repository with ros2_ws/ inside, the vendor packages (here
    the stand-ins) in ros2_ws/src, built with the README's colcon command."""
    if MISSING:
        pytest.skip(MISSING)
    repo = copy_repository(tmp_path_factory.mktemp("readme_layout") / "crane_x7_vla")
    ws = repo / "ros2_ws"
    for package in ("crane_x7_control", "realsense2_camera"):
        shutil.copytree(STANDINS / package, ws / "src" / package)
    run(
        ["colcon", "build", "--symlink-install", "--base-paths", "src", "..", "--packages-up-to", "crane_x7_vla"],
        cwd=ws,
        env=underlay,
    )
    return Workspace(ws, ws / "install", sourced(underlay, ws / "install" / "setup.bash"))


@pytest.fixture(scope="session")
def docker_workspace(tmp_path_factory, underlay) -> Workspace:
    """docker/Dockerfile.ros2's layout: /ros2_ws/src/crane_x7_vla is a copy of the repository,
    the vendor packages are built first, then crane_x7_vla alone (no symlinks)."""
    if MISSING:
        pytest.skip(MISSING)
    ws = tmp_path_factory.mktemp("docker_layout") / "ros2_ws"
    copy_repository(ws / "src" / "crane_x7_vla")
    for package in ("crane_x7_control", "realsense2_camera"):
        shutil.copytree(STANDINS / package, ws / "src" / package)
    run(
        ["colcon", "build", "--packages-up-to", "crane_x7_vla", "--packages-skip", "crane_x7_vla"], cwd=ws, env=underlay
    )
    vendor = sourced(underlay, ws / "install" / "setup.bash")
    run(["colcon", "build", "--packages-select", "crane_x7_vla"], cwd=ws, env=vendor)
    return Workspace(ws, ws / "install", sourced(underlay, ws / "install" / "setup.bash"))


# `ros2 launch` keeps the Ctrl-C disposition it inherits: started from a shell's background job
# (`bash scripts/test.sh &`), SIGINT is ignored and stop() could never end it. The command is
# exec'd with SIGINT at its default, as a terminal's Ctrl-C would find it.
RESET_SIGINT = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                "os.execvp(sys.argv[1], sys.argv[1:])"]

# "[INFO] [data_logger-5]: process started with pid [1234]": launch names each process it starts
STARTED = re.compile(r"\[INFO\] \[([\w.-]+-\d+)\]: process started with pid \[\d+\]")


class Launch:
    """`ros2 launch crane_x7_vla FILE ARGS` in its own session, output to a log file.

    stop() sends SIGINT to `ros2 launch` only (as `kill -INT`; launch passes it on to its
    nodes) and returns the exit code; leftovers() lists processes of its session still alive.
    """

    def __init__(self, workspace: Workspace, launch_file: str, args, *, domain_id: int, log_dir: Path) -> None:
        self.env = dict(workspace.env, ROS_DOMAIN_ID=str(domain_id))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{launch_file}.{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.cmd = ["ros2", "launch", "crane_x7_vla", launch_file, *args]
        self.proc = subprocess.Popen(
            [*RESET_SIGINT, *self.cmd],
            cwd=workspace.root,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        state = "running" if self.proc.poll() is None else f"exited with {self.proc.returncode}"
        pytest.fail(
            f"'{text}' not in the output of {' '.join(self.cmd)} ({state}) within {timeout} s:\n{self.output()[-4000:]}"
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(self.cmd)} still runs after {timeout} s:\n{self.output()[-4000:]}")

    def session_processes(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    fields = stat[stat.rindex(")") + 2 :].split()
                    if int(fields[3]) == self.proc.pid and fields[0] != "Z":  # session id, state
                        pids.append(int(entry.name))
        return pids

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
        return self.wait(timeout)

    def leftovers(self, grace: float = 10.0) -> list[int]:
        deadline = time.monotonic() + grace
        while self.session_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.session_processes()

    def wait_until_up(self, timeout: float = 90.0) -> None:
        """Until every process the launch started has printed a line of its own (each prints one
        when its node is up): Ctrl-C on a launch whose nodes are still loading their modules
        tests how Python ends an import, not how the nodes stop."""
        deadline = time.monotonic() + timeout
        while True:
            output = self.output()
            started = STARTED.findall(output)
            quiet = [label for label in started if f"[{label}] " not in output]
            if (started and not quiet) or self.proc.poll() is not None:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"{', '.join(quiet) or 'no process'} printed nothing within {timeout} s of "
                            f"{' '.join(self.cmd)}:\n{output[-4000:]}")
            time.sleep(0.1)

    def stop_cleanly(self) -> None:
        """Once every node is up, Ctrl-C: ros2 launch exits with 0, every process ends with 0,
        none is left, and none of this package's nodes prints a traceback (the vendor
        stand-ins' rclpy may print one while it is torn down)."""
        self.wait_until_up()
        code = self.stop()
        output = self.output()
        assert code == 0, f"ros2 launch exited with {code} on SIGINT:\n{output[-4000:]}"
        assert self.leftovers() == [], f"processes left after ros2 launch ended:\n{output[-4000:]}"
        assert "process has died" not in output, output[-4000:]
        ours = [line for line in output.splitlines() if re.match(rf"\[({'|'.join(EXECUTABLES)})-\d+\] ", line)]
        assert not any("Traceback" in line for line in ours), output[-4000:]

    def close(self) -> None:
        """Ctrl-C, then whatever of the session is still alive is killed, also when ros2 launch
        does not end in time (a test that failed must not leave its nodes running)."""
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(30.0)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in self.session_processes():  # one that left the process group, not the session
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5.0)
            self._log.close()


@pytest.fixture
def launches(tmp_path):
    """launches(workspace, FILE, *args, domain_id=...) starts a Launch; all stop after the test."""
    started: list[Launch] = []

    def start(workspace: Workspace, launch_file: str, *args, domain_id: int) -> Launch:
        launch = Launch(workspace, launch_file, args, domain_id=domain_id, log_dir=tmp_path / "launch_logs")
        started.append(launch)
        return launch

    yield start
    for launch in started:
        launch.close()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint the inference node loads in a moment (mean demonstrated trajectory)."""
    from crane_x7_vla.episode.synthetic import write_synthetic_dataset
    from crane_x7_vla.policy.baselines import MeanTrajectoryPolicy

    root = tmp_path_factory.mktemp("launch_ckpt")
    write_synthetic_dataset(root / "data", episodes=3, steps=30, fps=10.0)
    return MeanTrajectoryPolicy.from_dataset(root / "data", horizon=8).save(root / "mean")


@pytest.fixture
def domain_id():
    from crane_x7_vla.ros.processes import domain_lease

    with domain_lease() as domain:
        yield domain


RESEND_S = 5.0


class Probe:
    """The test's own rclpy node in the launch's domain: service calls, parameters, topics."""

    def __init__(self, domain_id: int) -> None:
        from crane_x7_vla.ros.background_node import BackgroundNode

        self.bg = BackgroundNode("launch_test_probe", domain_id)
        self.node = self.bg.node

    def trigger(self, service: str, timeout: float = 30.0):
        from std_srvs.srv import Trigger

        return self.bg.call(Trigger, service, timeout=timeout)

    def parameters(self, node: str, names: list[str], timeout: float = 30.0) -> dict:
        """{name: value} of a running node's parameters (None for one it does not have).

        The request is sent again every RESEND_S without an answer (reading parameters does no
        harm twice): a server whose reply writer has not yet discovered this new client when the
        request arrives drops the reply once it has waited its max_blocking_time, which on a
        busy machine can pass before discovery completes."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        response = self.bg.call(
            GetParameters, f"{node}/get_parameters", GetParameters.Request(names=names), timeout=timeout,
            resend_after=RESEND_S,
        )
        values = [parameter_value_to_python(v) if v.type else None for v in response.values]
        return dict(zip(names, values))

    def collect(self, msg_type, topic: str, qos=10) -> list:
        """Messages arriving on `topic` from now on (a list that grows)."""
        received = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def publisher(self, msg_type, topic: str, qos=10):
        return self.node.create_publisher(msg_type, topic, qos)

    def close(self) -> None:
        self.bg.close()


@pytest.fixture
def probe(domain_id):
    p = Probe(domain_id)
    yield p
    p.close()


def wait_until(predicate, timeout: float, what: str, launch: Launch | None = None):
    deadline = time.monotonic() + timeout

    def printed() -> str:
        return "" if launch is None else f"\nlaunch output:\n{launch.output()[-4000:]}"

    while time.monotonic() < deadline:
        try:
            value = predicate()
        except TimeoutError as exc:  # a service that did not answer: say what the nodes printed
            pytest.fail(f"{exc} (waiting for {what}){printed()}")
        if value:
            return value
        if launch is not None and launch.proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}{printed()}")
