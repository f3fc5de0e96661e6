"""Every command given nonsense exits non-zero with one line naming the argument or file.

Each case runs the installed `crane-x7-vla` console script (or `python -m
crane_x7_vla.training.cli`) in its own process, on real files: a recorded dataset, a
dataset whose metadata file is damaged, a baseline checkpoint, checkpoints whose
policy_config.json is broken or holds wrong values, YAML settings files, plain files where
folders belong and folders where files belong. Every case must be refused while the
arguments are checked: no model is loaded and no ROS process is started.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import cli_path
from crane_x7_vla.episode import schema
from crane_x7_vla.episode.synthetic import write_synthetic_dataset
from crane_x7_vla.policy.baselines import HoldPolicy, MeanTrajectoryPolicy

TIMEOUT_S = 60  # a command still running then has accepted its arguments
WORKERS = 2
LONG = "x" * 5000  # a value far longer than any error line may echo
MAX_LINE = 600


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad_inputs")
    data = root / "data"
    write_synthetic_dataset(data, episodes=2, steps=4)

    corrupt = root / "corrupt_meta"
    write_synthetic_dataset(corrupt, episodes=2, steps=3)
    damaged = sorted(corrupt.glob("episode_*"))[1] / schema.META_FILE
    damaged.write_text('{"fps": 10.0, "language_instr')

    wrong_meta = root / "wrong_meta"
    write_synthetic_dataset(wrong_meta, episodes=1, steps=3)
    wrong = next(wrong_meta.glob("episode_*")) / schema.META_FILE
    wrong.write_text(json.dumps({"fps": "fast", "language_instruction": 3, "cameras": [1], "start_time": 0}))

    notes = root / "notes.txt"
    notes.write_text("not a dataset\n")
    empty = root / "empty"
    empty.mkdir()
    unrelated = root / "unrelated"
    unrelated.mkdir()
    (unrelated / "thesis.tex").write_text("months of work\n")

    ckpt = HoldPolicy(horizon=1, control_rate_hz=10.0, cameras=("primary",)).save(root / "ckpt")
    mean = MeanTrajectoryPolicy.from_dataset(data, horizon=4).save(root / "mean")
    published = root / "published"  # OpenVLA's published layout: config.json, no policy_config.json
    published.mkdir()
    (published / "config.json").write_text(json.dumps({"model_type": "openvla"}))
    bad_json = root / "ckpt_bad_json"
    bad_json.mkdir()
    (bad_json / "policy_config.json").write_text('{"backend": "baseline", "image_')
    bad_values = root / "ckpt_bad_values"
    bad_values.mkdir()
    config = json.loads((ckpt / "policy_config.json").read_text())
    config["action_space"] = {"dim": "eight", "horizon": "one"}
    config["control_rate_hz"] = "fast"
    (bad_values / "policy_config.json").write_text(json.dumps(config))
    not_object = root / "ckpt_list"
    not_object.mkdir()
    (not_object / "policy_config.json").write_text("[1, 2, 3]")

    yaml_broken = root / "broken.yaml"
    yaml_broken.write_text("batch_size: [1,\n  learning_rate: 3\n")
    yaml_values = root / "values.yaml"
    yaml_values.write_text("batch_size: lots\nlearning_rate: fast\n")
    yaml_list = root / "list.yaml"
    yaml_list.write_text("- batch_size\n- 8\n")
    return {
        "data": data,
        "corrupt": corrupt,
        "damaged": damaged,
        "wrong_meta": wrong_meta,
        "wrong": wrong,
        "notes": notes,
        "empty": empty,
        "unrelated": unrelated,
        "ckpt": ckpt,
        "mean": mean,
        "published": published,
        "bad_json": bad_json,
        "bad_values": bad_values,
        "not_object": not_object,
        "yaml_broken": yaml_broken,
        "yaml_values": yaml_values,
        "yaml_list": yaml_list,
        "root": root,
    }


# (id, arguments with {place} fields, text the last error line must hold)
CASES = [
    # dataset info / validate / stats / recover
    ("info-corrupt-meta", "dataset info {corrupt}", "{damaged}"),
    ("info-wrong-meta", "dataset info {wrong_meta}", "{wrong}"),
    ("stats-corrupt-meta", "dataset stats {corrupt}", "{damaged}"),
    ("stats-wrong-meta", "dataset stats {wrong_meta}", "{wrong}"),
    ("validate-corrupt-meta", "dataset validate {corrupt}", "{corrupt}"),
    ("info-file", "dataset info {notes}", "{notes}"),
    ("validate-file", "dataset validate {notes}", "{notes}"),
    ("stats-file", "dataset stats {notes}", "{notes}"),
    ("recover-file", "dataset recover {notes}", "{notes}"),
    ("recover-missing", "dataset recover {root}/nowhere", "nowhere"),
    ("view-frames-0", "dataset view {data} --out {root}/v.png --frames 0", "--frames"),
    ("view-frames-negative", "dataset view {data} --out {root}/v.png --frames -3", "--frames"),
    ("view-episode-negative", "dataset view {data} --out {root}/v.png --episode -1", "--episode"),
    ("view-out-folder", "dataset view {data} --out {empty}", "--out"),
    ("view-file", "dataset view {notes} --out {root}/v.png", "{notes}"),
    ("view-out-kind", "dataset view {data} --out {root}/v.xyz", "--out"),
    ("info-missing", "dataset info {root}/nowhere", "nowhere"),
    ("stats-missing", "dataset stats {root}/nowhere", "nowhere"),
    ("sample-steps-negative", "dataset sample {new} --steps -5", "--steps"),
    ("sample-episodes-negative", "dataset sample {new} --episodes -1", "--episodes"),
    ("sample-episodes-zero", "dataset sample {new} --episodes 0", "--episodes"),
    ("sample-out-file", "dataset sample {notes}", "{notes}"),
    ("sample-steps-text", "dataset sample {new} --steps many", "--steps"),
    ("import-legacy-into-itself", "dataset import-legacy {data} {data}", "{data}"),
    ("import-legacy-into-inside", "dataset import-legacy {data} {data}/converted", "{data}"),
    ("import-legacy-file", "dataset import-legacy {notes} {new}", "{notes}"),
    ("import-legacy-fps-0", "dataset import-legacy {data} {new} --fps 0", "--fps"),
    ("import-legacy-dst-file", "dataset import-legacy {data} {notes}", "{notes}"),
    # dataset export / import-bag
    ("export-overwrite-unrelated", "dataset export {data} --format rlds --out {unrelated} --overwrite", "{unrelated}"),
    (
        "export-lerobot-overwrite-unrelated",
        "dataset export {data} --format lerobot --out {unrelated} --overwrite",
        "{unrelated}",
    ),
    ("export-out-file", "dataset export {data} --format lerobot --out {notes} --overwrite", "{notes}"),
    ("export-source-file", "dataset export {notes} --format rlds --out {new}", "{notes}"),
    ("export-format-long", "dataset export {data} --format " + LONG + " --out {new}", "--format"),
    ("export-crf-h264", "dataset export {data} --format lerobot --vcodec h264 --crf 60 --out {new}", "--crf"),
    (
        "export-shards-0",
        "dataset export {data} --format rlds --out {new} --episodes-per-shard 0",
        "--episodes-per-shard",
    ),
    ("export-fps-negative", "dataset export {data} --format rlds --out {new} --fps -10", "--fps"),
    ("export-gop-0", "dataset export {data} --format lerobot --out {new} --gop 0", "--gop"),
    ("export-crf-negative", "dataset export {data} --format lerobot --out {new} --crf -1", "--crf"),
    ("export-corrupt-meta", "dataset export {corrupt} --format lerobot --out {new}", "{damaged}"),
    ("import-bag-missing", "dataset import-bag {root}/no.mcap --out {new} --instruction go", "no.mcap"),
    ("import-bag-folder-of-files", "dataset import-bag {unrelated} --out {new} --instruction go", "{unrelated}"),
    ("import-bag-min-steps-0", "dataset import-bag {notes} --out {new} --instruction go --min-steps 0", "--min-steps"),
    ("import-bag-rate-0", "dataset import-bag {notes} --out {new} --instruction go --rate 0", "--rate"),
    ("import-bag-out-file", "dataset import-bag {unrelated} --out {notes} --instruction go", "{notes}"),
    ("import-bag-not-a-bag", "dataset import-bag {notes} --out {new} --instruction go", "{notes}"),
    (
        "import-bag-long-topic",
        "dataset import-bag {notes} --out {new} --instruction go --image-topic " + LONG,
        "--image-topic",
    ),
    # collect / logger-keys
    ("collect-episodes-negative", "collect --sim --out {new} --episodes -1", "--episodes"),
    ("collect-episodes-0", "collect --sim --out {new} --episodes 0", "--episodes"),
    ("collect-out-file", "collect --sim --out {notes}", "{notes}"),
    ("collect-rate-0", "collect --sim --out {new} --rate 0", "--rate"),
    ("collect-timeout-negative", "collect --sim --out {new} --timeout -1", "--timeout"),
    ("collect-speed-0", "collect --sim --out {new} --speed 0", "--speed"),
    ("collect-start-near-2", "collect --sim --out {new} --start-near 2", "--start-near"),
    ("collect-camera-size-0", "collect --sim --out {new} --camera-size 0x0", "--camera-size"),
    ("collect-cameras-unknown", "collect --sim --out {new} --cameras nosuch", "--cameras"),
    ("collect-task-unknown", "collect --sim --out {new} --task nosuch", "--task"),
    ("collect-domain-id", "collect --sim --out {new} --domain-id 9999", "--domain-id"),
    ("collect-json-folder", "collect --sim --out {new} --json {empty}", "--json"),
    ("collect-log-dir-file", "collect --sim --out {new} --log-dir {notes}", "--log-dir"),
    ("collect-seed-negative", "collect --sim --out {new} --seed -1", "--seed"),
    ("logger-keys-bad-name", "logger-keys --logger 'no spaces'", "--logger"),
    # pretrain
    ("pretrain-steps-0", "pretrain --out {new} --steps 0", "--steps"),
    ("pretrain-scenes-negative", "pretrain --out {new} --scenes -1", "--scenes"),
    ("pretrain-batch-0", "pretrain --out {new} --batch-size 0", "--batch-size"),
    ("pretrain-image-size", "pretrain --out {new} --image-size big", "--image-size"),
    ("pretrain-out-file", "pretrain --out {notes}", "{notes}"),
    ("pretrain-task-unknown", "pretrain --out {new} --task nosuch", "--task"),
    ("pretrain-learning-rate-0", "pretrain --out {new} --learning-rate 0", "--learning-rate"),
    ("pretrain-answer-steps-negative", "pretrain --out {new} --answer-steps -1", "--answer-steps"),
    # train / merge-lora
    ("train-batch-0", "train --backend openvla --model tiny --data-root {data} --batch-size 0", "--batch-size"),
    (
        "train-max-steps-negative",
        "train --backend openvla --model tiny --data-root {data} --max-steps -5",
        "--max-steps",
    ),
    ("train-data-root-file", "train --backend openvla --model tiny --data-root {notes}", "{notes}"),
    ("train-data-root-missing", "train --backend openvla --model tiny --data-root {root}/nowhere", "nowhere"),
    ("train-device-unknown", "train --backend openvla --model tiny --data-root {data} --device nosuch", "--device"),
    ("train-openpi-device-unknown", "train --backend openpi --model tiny --data-root {data} --device gpu7", "--device"),
    ("train-config-broken", "train --backend openvla --config {yaml_broken}", "{yaml_broken}"),
    ("train-config-values", "train --backend openvla --config {yaml_values}", "batch"),
    ("train-config-missing", "train --backend openvla --config {root}/none.yaml", "none.yaml"),
    ("train-config-folder", "train --backend openvla --config {empty}", "{empty}"),
    ("train-config-not-mapping", "train --backend openvla --config {yaml_list}", "{yaml_list}"),
    ("train-learning-rate-text", "train --backend openvla --learning-rate fast", "--learning-rate"),
    (
        "train-output-dir-file",
        "train --backend openvla --model tiny --data-root {data} --output-dir {notes}",
        "{notes}",
    ),
    (
        "train-resume-file",
        "train --backend openvla --model tiny --data-root {data} --resume-from-checkpoint {notes}",
        "{notes}",
    ),
    ("merge-lora-file", "merge-lora {notes}", "{notes}"),
    ("merge-lora-bad-json", "merge-lora {bad_json}", "{bad_json}"),
    ("merge-lora-bad-values", "merge-lora {bad_values}", "{bad_values}"),
    ("merge-lora-not-object", "merge-lora {not_object}", "{not_object}"),
    ("merge-lora-baseline", "merge-lora {ckpt}", "{ckpt}"),
    ("merge-lora-output-file", "merge-lora {ckpt} --output {notes}", "--output"),
    # training.cli as a module
    ("module-train-batch-negative", "-m train --backend openpi --batch-size -2", "--batch-size"),
    ("module-train-device-unknown", "-m train --backend openpi --data-root {data} --device nosuch", "--device"),
    ("module-train-config-broken", "-m train --backend openpi --config {yaml_broken}", "{yaml_broken}"),
    # serve
    ("serve-file", "serve {notes}", "{notes}"),
    ("serve-bad-json", "serve {bad_json}", "{bad_json}"),
    ("serve-not-object", "serve {not_object}", "{not_object}"),
    ("serve-bad-values", "serve {bad_values}", "{bad_values}"),
    ("serve-max-message-0", "serve {ckpt} --max-message-mb 0", "--max-message-mb"),
    ("serve-port", "serve {ckpt} --port 70000", "--port"),
    ("serve-device-unknown", "serve {ckpt} --device nosuch", "--device"),
    ("serve-device-long", "serve {ckpt} --device " + LONG, "--device"),
    ("serve-device-index-text", "serve {ckpt} --device cuda:first", "--device"),
    ("serve-mean-device-unknown", "serve {mean} --device tpu", "--device"),
    ("serve-published-device-unknown", "serve {published} --device nosuch", "--device"),
    ("serve-token-file-missing", "serve {ckpt} --token-file {root}/no_token", "no_token"),
    # eval
    ("eval-episodes-negative", "eval {ckpt} --episodes -1", "--episodes"),
    ("eval-episodes-0", "eval {ckpt} --episodes 0", "--episodes"),
    ("eval-timeout-0", "eval {ckpt} --timeout 0", "--timeout"),
    ("eval-task-unknown", "eval {ckpt} --task nosuch", "--task"),
    ("eval-file", "eval {notes}", "{notes}"),
    ("eval-empty-folder", "eval {empty}", "{empty}"),
    ("eval-bad-json", "eval {bad_json}", "{bad_json}"),
    ("eval-bad-values", "eval {bad_values}", "{bad_values}"),
    ("eval-not-object", "eval {not_object}", "{not_object}"),
    ("eval-data-root-file", "eval {ckpt} --data-root {notes}", "{notes}"),
    ("eval-out-file", "eval {ckpt} --out {notes}", "{notes}"),
    ("eval-first-seed-negative", "eval {ckpt} --first-seed -4", "--first-seed"),
    ("eval-no-training-data", "eval {ckpt}", "--data-root"),
    ("eval-device-unknown", "eval {ckpt} --no-baselines --device nosuch", "--device"),
    ("eval-mean-device-unknown", "eval {mean} --no-baselines --device gpu", "--device"),
    # demo
    ("demo-episodes-negative", "demo --episodes -1 --out {root}", "--episodes"),
    ("demo-eval-episodes-0", "demo --eval-episodes 0 --out {root}", "--eval-episodes"),
    ("demo-train-steps-0", "demo --train-steps 0 --out {root}", "--train-steps"),
    ("demo-collect-speed-0", "demo --collect-speed 0 --out {root}", "--collect-speed"),
    ("demo-task-unknown", "demo --task nosuch --out {root}", "--task"),
    ("demo-cameras-unknown", "demo --cameras nosuch --out {root}", "--cameras"),
    ("demo-out-file", "demo --out {notes}", "{notes}"),
    ("demo-pretrain-scenes-0", "demo --pretrain-scenes 0 --out {root}", "--pretrain-scenes"),
    ("demo-eval-timeout-negative", "demo --eval-timeout -1 --out {root}", "--eval-timeout"),
    ("demo-seed-negative", "demo --seed -1 --out {root}", "--seed"),
    ("demo-start-near-share", "demo --start-near 1.5 --out {root}", "--start-near"),
]


def _command(args: str, places: dict) -> list[str]:
    words = shlex.split(args.format(**places))
    if words[0] == "-m":
        return [sys.executable, "-m", "crane_x7_vla.training.cli", *words[1:]]
    return [cli_path(), *words]


def test_the_simulated_cameras_are_the_simulators():
    from crane_x7_vla.cli.collect import SIM_CAMERAS
    from crane_x7_vla.evaluation.closed_loop import SIM_CAMERA_TOPICS
    from crane_x7_vla.ros.collect_driver import CAMERA_TOPICS

    assert set(SIM_CAMERAS) == set(CAMERA_TOPICS) == set(SIM_CAMERA_TOPICS)


def _run(command: list[str], cwd, env=None) -> tuple[subprocess.CompletedProcess, bool]:
    """Run a command in its own session: (its result, whether it was still running after
    TIMEOUT_S, having accepted its arguments; it is then stopped as Ctrl-C would stop it,
    so the nodes it started end with it)."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, start_new_session=True, env=env
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        return subprocess.CompletedProcess(command, proc.returncode, out, err), False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return subprocess.CompletedProcess(command, proc.returncode, out, err), True


@pytest.fixture(scope="module")
def outcomes(request, places, tmp_path_factory) -> dict:
    """The selected cases, run two at a time (each is a fresh Python process): case id ->
    (result, timed out, the text the last line must hold)."""
    selected = {
        item.callspec.id
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    }

    def one(case):
        name, args, needle = case
        here = {**places, "new": tmp_path_factory.mktemp(name) / "new_folder"}
        result, timed_out = _run(_command(args, here), places["root"])
        return name, (result, timed_out, needle.format(**here))

    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(pool.map(one, [case for case in CASES if case[0] in selected]))


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_bad_input_is_one_line(outcomes, case):
    result, timed_out, needle = outcomes[case]
    assert not timed_out, f"still running after {TIMEOUT_S:g} s: the arguments were accepted"
    assert result.returncode != 0, f"accepted: {result.stdout[-500:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    last = lines[-1]
    assert needle in last, result.stderr[-3000:]
    assert len(last) <= MAX_LINE, f"{len(last)} characters: {last[:200]}..."


@pytest.mark.parametrize("value", ["nosuch", "cuda:x", LONG])
def test_the_inference_nodes_device_parameter_is_checked_at_start(places, value):
    """The node refuses a device name before it loads anything: one line naming the parameter."""
    pytest.importorskip("rclpy")
    from crane_x7_vla.ros.processes import domain_lease, ros_env

    node = os.path.join(os.path.dirname(sys.executable), "vla_inference_node")
    with domain_lease() as domain:
        result, timed_out = _run(
            [
                node,
                "--ros-args",
                "-p",
                f"model_path:={places['mean']}",
                "-p",
                f"device:={value}",
                "-p",
                "use_gripper:=false",
            ],
            places["root"],
            env=ros_env(domain),
        )
    assert not timed_out, "the node started with a device no backend knows"
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: parameter 'device' must be auto, cpu, cuda or cuda:N (got "), lines
    assert len(lines[-1]) <= MAX_LINE
