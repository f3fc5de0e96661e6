import json
import subprocess


from conftest import cli_path
from crane_x7_vla.cli import main
from crane_x7_vla.episode import schema


def run(*args):
    return subprocess.run([cli_path(), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_dataset_commands_end_to_end(tmp_path):
    data = tmp_path / "data"
    assert run("dataset", "sample", data, "--episodes", "3", "--steps", "7").returncode == 0
    info = run("dataset", "info", data, "--json")
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["episodes"] == 3 and summary["steps"] == 21
    assert summary["cameras"] == {"primary": "128x96"}
    assert run("dataset", "validate", data).returncode == 0
    stats = run("dataset", "stats", data)
    assert stats.returncode == 0 and (data / schema.STATS_FILE).exists()
    view = run("dataset", "view", data, "--episode", "1", "--out", tmp_path / "ep.png")
    assert view.returncode == 0, view.stderr
    assert (tmp_path / "ep.png").read_bytes()[:4] == b"\x89PNG"


def test_validate_exit_code_and_message(tmp_path, capsys):
    main(["dataset", "sample", str(tmp_path), "--episodes", "1", "--steps", "4"])
    record = next(tmp_path.glob("episode_*")) / schema.RECORD_FILE
    data = bytearray(record.read_bytes())
    data[-10] ^= 0xFF
    record.write_bytes(bytes(data))
    assert main(["dataset", "validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "record 3 is corrupt" in err and str(record) in err


def test_missing_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["dataset", "info", str(tmp_path / "nope")]) == 1
    assert "no such directory" in capsys.readouterr().err
    assert main(["dataset", "stats", str(tmp_path)]) == 1
    assert "no episodes found under" in capsys.readouterr().err


def test_import_legacy_command(tmp_path):
    from core.test_legacy_import import write_legacy

    write_legacy(tmp_path / "old")
    result = run("dataset", "import-legacy", tmp_path / "old", tmp_path / "new", "--swap-rb")
    assert result.returncode == 0, result.stderr
    assert "imported 1 episode(s)" in result.stdout and "red/blue fixed" in result.stdout
    assert run("dataset", "validate", tmp_path / "new").returncode == 0
