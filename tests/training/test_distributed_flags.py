"""Bad multi-process settings stop with one line naming the flag, before anything is built."""

import pytest

from crane_x7_vla.training.cli import main

from .tiny_cli import TINY_OPENVLA_CPU

OPENPI = ["train", "--backend", "openpi", "--model", "tiny", "--image-size", "32x32", "--device", "cpu",
          "--max-steps", "1"]


def _refused(argv, capsys, one_line: bool = True) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 or not one_line, err
    return err.splitlines()[-1]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-processes", "2"], "--num-processes needs --coordinator-address HOST:PORT"),
        (["--coordinator-address", "127.0.0.1:1234", "--num-processes", "2"],
         "--coordinator-address needs --num-processes N and --process-id I"),
        (["--coordinator-address", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
         "--process-id 2 must be below --num-processes 2"),
        (["--coordinator-address", "localhost"], "--coordinator-address must be HOST:PORT"),
        (["--fsdp-devices", "0"], "--fsdp-devices must be > 0"),
    ],
)
def test_openpi_process_flags(flags, message, dataset_dir, tmp_path, capsys):
    err = _refused([*OPENPI, *flags, "--data-root", str(dataset_dir), "--output-dir", str(tmp_path)], capsys)
    assert message in err


def test_openpi_fsdp_devices_must_divide_the_devices(dataset_dir, tmp_path, capsys):
    pytest.importorskip("jax")
    err = _refused([*OPENPI, "--fsdp-devices", "3", "--data-root", str(dataset_dir), "--output-dir", str(tmp_path)],
                   capsys)
    assert "--fsdp-devices 3 must divide the" in err
    assert not (tmp_path / "checkpoint-final").exists()


def test_openvla_strategy_is_a_choice(dataset_dir, tmp_path, capsys):
    # the parser's own error: its usage, then the line naming the flag
    err = _refused([*TINY_OPENVLA_CPU, "--strategy", "zero3", "--data-root", str(dataset_dir)], capsys, False)
    assert "--strategy" in err and "zero3" in err


def test_openvla_one_gpu_named_for_several_processes(dataset_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    argv = [a if a != "cpu" else "cuda:0" for a in TINY_OPENVLA_CPU]
    err = _refused([*argv, "--strategy", "fsdp", "--data-root", str(dataset_dir), "--output-dir", str(tmp_path)],
                   capsys)
    assert "--device cuda:0 names one GPU" in err and "LOCAL_RANK" in err
