import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_run_all_gathers_figures_into_one_json(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick", "--only", "episode_io", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["machine"]["cpu_count"] >= 1
    entry = report["benchmarks"]["episode_io"]
    assert entry["exit_code"] == 0
    figures = entry["figures"]
    assert figures["writer_steps_per_s"] > 0 and figures["reader_samples_per_s"] > 0
    assert figures["tfdata_samples_per_s"] > 0
