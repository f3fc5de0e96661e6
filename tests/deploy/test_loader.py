import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.episode.reader import load_episode, list_episodes
from crane_x7_vla.policy.baselines import HoldPolicy, MeanTrajectoryPolicy, mean_trajectory
from crane_x7_vla.checkpoint_contract import CheckpointError, fingerprint_of
from crane_x7_vla.policy.loader import load_policy
from crane_x7_vla.episode.stats import write_statistics
from crane_x7_vla.episode.synthetic import write_synthetic_dataset

from .conftest import observation


def test_mean_trajectory_checkpoint_round_trip(dataset, mean_ckpt):
    policy = load_policy(mean_ckpt)
    assert isinstance(policy, MeanTrajectoryPolicy)
    actions = [load_episode(r.path, images=False).action for r in list_episodes(dataset)]
    expected = np.mean(actions, axis=0)  # equal lengths here
    np.testing.assert_allclose(policy.trajectory, expected)
    # time-indexed: at 0.3 s and 10 Hz the chunk starts at step 3
    np.testing.assert_allclose(policy.predict(observation(t=0.3)), expected[3:8])
    # past the end: held at the last step
    chunk = policy.predict(observation(t=100.0))
    np.testing.assert_allclose(chunk, np.repeat(expected[-1:], 5, axis=0))
    assert policy.config["cameras"] == ["primary"] and policy.config["control_rate_hz"] == 10.0


def test_mean_trajectory_holds_shorter_episodes_at_their_end():
    a = np.zeros((2, 8))
    b = np.ones((4, 8))
    np.testing.assert_allclose(mean_trajectory([a, b])[:, 0], [0.5, 0.5, 0.5, 0.5])
    a[1] = 2.0
    np.testing.assert_allclose(mean_trajectory([a, b])[:, 0], [0.5, 1.5, 1.5, 1.5])


def test_hold_policy_checkpoint(tmp_path):
    HoldPolicy(horizon=3).save(tmp_path / "hold")
    policy = load_policy(tmp_path / "hold")
    state = robot.home_state()
    np.testing.assert_allclose(policy.predict(observation(state)), np.tile(state, (3, 1)))
    with pytest.raises(CheckpointError, match="carries no dataset statistics"):
        load_policy(tmp_path / "hold", expected_fingerprint="abcd")


def test_missing_and_broken_config(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_policy(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="policy_config.json: missing"):
        load_policy(tmp_path)
    (tmp_path / "policy_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_policy(tmp_path)


def test_joint_order_mismatch_is_refused(edit_ckpt):
    swapped = edit_ckpt(lambda c: c["joint_names"].__setitem__(slice(0, 2), c["joint_names"][1::-1]))
    with pytest.raises(CheckpointError, match="orders the joints differently"):
        load_policy(swapped)
    other = edit_ckpt(lambda c: c.__setitem__("joint_names", [f"j{i}" for i in range(8)]))
    with pytest.raises(CheckpointError, match="trained for other joints"):
        load_policy(other)


def test_statistics_problems_are_refused(edit_ckpt, mean_ckpt, dataset):
    with pytest.raises(CheckpointError, match="fingerprint is missing"):
        load_policy(edit_ckpt(lambda c: c.pop("statistics_fingerprint")))
    with pytest.raises(CheckpointError, match="does not match the fingerprint of the statistics"):
        load_policy(edit_ckpt(lambda c: c.__setitem__("statistics_fingerprint", "0123456789abcdef")))
    with pytest.raises(CheckpointError, match="dataset_statistics.action.q99"):
        load_policy(edit_ckpt(lambda c: c["dataset_statistics"]["action"].__setitem__("q99", [1.0] * 7)))
    with pytest.raises(CheckpointError, match="'dataset_statistics' is missing"):
        load_policy(edit_ckpt(lambda c: c.pop("dataset_statistics")))
    with pytest.raises(CheckpointError, match="configured for ffff"):
        load_policy(mean_ckpt, expected_fingerprint="ffff")
    write_statistics(dataset)
    fp = fingerprint_of(dataset)
    assert load_policy(mean_ckpt, expected_fingerprint=fp).config["statistics_fingerprint"] == fp


def test_other_config_errors_name_the_field(edit_ckpt):
    with pytest.raises(CheckpointError, match="unknown backend 'nosuch'"):
        load_policy(edit_ckpt(lambda c: c.__setitem__("backend", "nosuch")))
    with pytest.raises(CheckpointError, match="control_rate_hz"):
        load_policy(edit_ckpt(lambda c: c.__setitem__("control_rate_hz", 0)))
    with pytest.raises(CheckpointError, match="horizon"):
        load_policy(edit_ckpt(lambda c: c["action_space"].__setitem__("horizon", 0)))
    with pytest.raises(CheckpointError, match="format_version 7"):
        load_policy(edit_ckpt(lambda c: c.__setitem__("format_version", 7)))

    with pytest.raises(CheckpointError, match=r"field 'joint_names' must be a list, found str"):
        load_policy(edit_ckpt(lambda c: c.__setitem__("joint_names", "shoulder")))
    with pytest.raises(CheckpointError, match=r"a field holds a value of the wrong kind"):
        load_policy(edit_ckpt(lambda c: c.__setitem__("normalization", "q01_q99")))
    with pytest.raises(CheckpointError, match=r"baseline.kind must be 'hold' or 'mean_trajectory' \(got 'median'\)"):
        load_policy(edit_ckpt(lambda c: c["baseline"].__setitem__("kind", "median")))


def test_checkpoint_errors_are_config_errors():
    from crane_x7_vla.errors import ConfigError
    from crane_x7_vla.ros.node_main import ConfigError as NodeConfigError
    from crane_x7_vla.training.config import ConfigError as TrainConfigError

    assert ConfigError is NodeConfigError is TrainConfigError
    assert issubclass(CheckpointError, ConfigError) and issubclass(ConfigError, ValueError)


def test_policies_meet_the_protocol_and_backends_come_from_the_registry(edit_ckpt, monkeypatch):
    from crane_x7_vla.policy.loader import BACKENDS, Policy, register_backend

    policy = load_policy(edit_ckpt(lambda c: None))
    assert isinstance(policy, Policy) and isinstance(policy, MeanTrajectoryPolicy)
    assert sorted(BACKENDS) == ["baseline", "openpi", "openvla"]
    with pytest.raises(CheckpointError, match=r"unknown backend 'replay' \(backends: baseline, openpi, openvla\)"):
        load_policy(edit_ckpt(lambda c: c.__setitem__("backend", "replay")))
    monkeypatch.setitem(BACKENDS, "replay", BACKENDS["baseline"])
    register_backend("replay", "crane_x7_vla.backends.baseline.policy")
    replay = load_policy(edit_ckpt(lambda c: c.__setitem__("backend", "replay")))
    assert isinstance(replay, MeanTrajectoryPolicy) and replay.config["backend"] == "replay"


IMPORTS = """
import json, sys
import crane_x7_vla.{name}
print(json.dumps(sorted(m for m in sys.modules if m in ("torch", "jax") or m.startswith("crane_x7_vla."))))
"""


def _imported_modules(module: str) -> set[str]:
    """Every module a module's source imports, at its top or inside a function."""
    import ast
    import importlib.util

    tree = ast.parse(open(importlib.util.find_spec(module).origin).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("name, other", [("policy.loader", "policy.client"), ("policy.client", "policy.loader")])
def test_loader_and_client_import_neither_each_other_nor_training_nor_heavy_libraries(name, other):
    assert f"crane_x7_vla.{other}" not in _imported_modules(f"crane_x7_vla.{name}")
    res = subprocess.run([sys.executable, "-c", IMPORTS.format(name=name)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = json.loads(res.stdout)
    assert f"crane_x7_vla.{name}" in loaded and "crane_x7_vla.checkpoint_contract" in loaded
    assert not [m for m in loaded if m in ("torch", "jax") or m.startswith("crane_x7_vla.training")], loaded


# --- an OpenVLA checkpoint's parts are read from its directory, never from the model hub ---

LOAD_EACH = """
import json, sys
from crane_x7_vla.checkpoint_contract import CheckpointError
from crane_x7_vla.policy.loader import load_policy
out = []
for path in sys.argv[1:]:
    try:
        load_policy(path, "cpu")
        out.append("loaded")
    except CheckpointError as exc:
        out.append(str(exc))
print(json.dumps(out))
"""


class HubRecorder:
    """A model hub on loopback that knows no model: it answers 404 and records each request."""

    def __init__(self):
        import http.server

        requests = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                requests.append(self.path)
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def load(self, tmp_path, *checkpoints):
        """load_policy on each checkpoint in a fresh process whose model hub is this one."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=self.url, HF_HOME=str(tmp_path / "hf_home"))
        res = subprocess.run(
            [sys.executable, "-c", LOAD_EACH, *map(str, checkpoints)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout.strip().splitlines()[-1])

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def openvla_ckpt(tmp_path_factory):
    """A real tiny-preset OpenVLA checkpoint (LoRA adapter + the preset in base/), one training step."""
    from crane_x7_vla.training.cli import main as train_main

    root = tmp_path_factory.mktemp("openvla")
    write_synthetic_dataset(root / "data", episodes=2, steps=10, fps=10.0)
    write_statistics(root / "data")
    rc = train_main(
        [
            "train",
            "--backend",
            "openvla",
            "--model",
            "tiny",
            "--image-size",
            "64x64",
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--val-ratio",
            "0",
            "--max-steps",
            "1",
            "--save-steps",
            "100",
            "--num-workers",
            "0",
            "--data-root",
            str(root / "data"),
            "--output-dir",
            str(root / "run"),
        ]
    )
    assert rc == 0
    return root / "run" / "checkpoint-final"


def _variant(src, dest, *, drop=(), edit=None):
    shutil.copytree(src, dest)
    for part in drop:
        shutil.rmtree(dest / part)
    if edit is not None:
        config = json.loads((dest / "policy_config.json").read_text())
        edit(config["openvla"], config)
        (dest / "policy_config.json").write_text(json.dumps(config))
    return dest


def test_a_missing_checkpoint_part_is_an_error_naming_it_and_the_hub_is_not_asked(openvla_ckpt, tmp_path):
    config = json.loads((openvla_ckpt / "policy_config.json").read_text())
    assert config["base_model"] == "tiny" and config["openvla"]["base_source"] == "checkpoint"
    no_base = _variant(openvla_ckpt, tmp_path / "no_base", drop=["base"])
    # written before policy_config.json said where the base model is: the preset name tells
    older = _variant(openvla_ckpt, tmp_path / "older", drop=["base"], edit=lambda o, c: o.pop("base_source"))
    folder = _variant(
        openvla_ckpt,
        tmp_path / "folder",
        drop=["base"],
        edit=lambda o, c: o.update(base_source="directory", base_model_dir=str(tmp_path / "gone" / "pretrained")),
    )
    full = _variant(
        openvla_ckpt, tmp_path / "full", drop=["base", "adapter"], edit=lambda o, c: o.update(weights="model")
    )
    hub = HubRecorder()
    try:
        errors = hub.load(tmp_path, no_base, older, folder, full, openvla_ckpt)
        assert hub.requests == []
        assert errors[0].startswith(f"{no_base / 'base'}: missing.") and "'tiny'" in errors[0]
        assert errors[1].startswith(f"{older / 'base'}: missing.")
        assert errors[2].startswith(f"{tmp_path / 'gone' / 'pretrained'}: no such base model directory")
        assert errors[3].startswith(f"{full / 'model'}: missing.") and "--no-use-lora" in errors[3]
        assert errors[4] == "loaded"  # the whole checkpoint loads without the hub
        # a hub id given to train --model is the one thing looked up on the hub
        named = _variant(
            openvla_ckpt,
            tmp_path / "named",
            drop=["base"],
            edit=lambda o, c: (o.update(base_source="hub"), c.update(base_model="crane-x7-tests/no-such-model")),
        )
        [error] = hub.load(tmp_path, named)
        assert "crane-x7-tests/no-such-model" in error
        assert any("crane-x7-tests/no-such-model" in path for path in hub.requests), hub.requests
    finally:
        hub.close()
