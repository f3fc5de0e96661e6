"""The demo's settings files (crane_x7_vla/configs/demo): complete, checked, and used."""

import subprocess
import sys

import pytest

from crane_x7_vla.cli.demo_settings import DEMO_CONFIGS, SCHEMA, defaults_file, load_settings
from crane_x7_vla.errors import ConfigError


@pytest.mark.parametrize("backend", ["openvla", "openpi"])
@pytest.mark.parametrize("task", ["reach", "pick_place"])
def test_every_backend_and_task_has_a_complete_settings_file(backend, task):
    settings = load_settings(defaults_file(backend, task))
    assert set(settings) == set(SCHEMA)
    assert all(set(settings[k]) == set(SCHEMA[k]) for k in SCHEMA)
    assert settings["collect"]["episodes"] > 0 and settings["train"]["steps"] > 0
    assert sorted(p.name for p in DEMO_CONFIGS.glob("*.yaml")) == sorted(
        f"{b}_{t}.yaml" for b in ("openvla", "openpi") for t in ("reach", "pick_place"))


@pytest.mark.parametrize("text, message", [
    ("collect: {episodes: 4, start_near: 0.0}\n", "section 'pretrain' is missing"),
    (defaults_file("openvla", "reach").read_text().replace("episodes: 400", "episodes: many"),
     "collect.episodes must be a whole number"),
    (defaults_file("openvla", "reach").read_text().replace("freeze_vision: true", "freeze_vision: 1"),
     "train.freeze_vision must be true or false"),
    (defaults_file("openvla", "reach").read_text().replace("  answer_steps: 0\n", "  answer_steps: 0\n  sceens: 3\n"),
     "pretrain.sceens is not a setting"),
    ("collect: [\n", "not valid YAML"),
])
def test_a_bad_settings_file_is_named_with_the_setting(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_settings(path)
    assert str(path) in str(err.value)


def test_demo_reads_its_settings_from_the_file_given(tmp_path):
    """A file with a contradiction in it stops the demo before any work, naming the value."""
    path = tmp_path / "mine.yaml"
    path.write_text(defaults_file("openvla", "reach").read_text().replace("start_near: 0.25", "start_near: 3.0"))
    out = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "crane_x7_vla.cli", "demo", "--defaults", str(path), "--out",
                             str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--start-near is a share, 0..1 (got 3.0)" in result.stderr
    assert not out.exists()
