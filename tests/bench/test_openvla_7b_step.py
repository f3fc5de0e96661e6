"""bench/openvla_7b_step.py end to end on a CPU with a reduced-size model (the same code the
full-size GPU run takes), and its refusal to build the full-size model on a CPU."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "openvla_7b_step.py"


def _run(*args, timeout=120):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_reduced_model_trains_with_and_without_checkpointing_and_predicts(tmp_path):
    out = tmp_path / "figures.json"
    result = _run(
        "--device",
        "cpu",
        "--depth-override",
        "1",
        "--width-divisor",
        "64",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--gradient-checkpointing",
        "both",
        "--mode",
        "all",
        "--infer-actions",
        "2",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "not the full-size GPU figures" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["functional_check_only"] is True and figures["full_size"] is False
    arch = figures["architecture"]
    assert arch["text_layers"] == 1 and arch["vision_layers"] == arch["siglip_layers"] == 2
    assert arch["text_hidden"] == 4096 // 64 and arch["vision_hidden"] == 1024 // 64 and arch["vocab_rows"] == 32064
    assert arch["siglip_hidden"] == 16  # 1152 // 64, rounded down to a multiple of 16

    train = figures["train"]
    assert set(train) == {"off", "on"}
    for mode, entry in train.items():
        assert entry["status"] == "ok"
        assert entry["checkpointing_active"] is (mode == "on")
        assert entry["step_time_s"] > 0 and len(entry["step_times_s"]) == 1
        # on a CPU PyTorch keeps no peak-memory counter: the field is there, and None
        assert "peak_gpu_bytes" in entry and entry["peak_gpu_bytes"] is None
        assert 0 < entry["params_trained"] < entry["params_total"]
        assert entry["sequence_tokens"] > 256 + 8  # 256 visual tokens + prompt + 8 action tokens
        assert len(entry["losses"]) == 2 and all(math.isfinite(x) for x in entry["losses"])
    # recomputing activations does not change the maths: same seed, same first loss
    assert math.isclose(train["off"]["losses"][0], train["on"]["losses"][0], rel_tol=1e-4)

    infer = figures["inference"]
    assert infer["status"] == "ok" and infer["actions_per_s"] > 0
    assert "peak_gpu_bytes" in infer and infer["peak_gpu_bytes"] is None
    assert len(infer["last_action"]) == 8 and infer["deterministic"] is True
    assert figures["peak_host_rss_bytes"] > 0


def test_full_size_model_is_openvla_7b(tmp_path):
    """The full-size build (on the meta device: no memory) is OpenVLA's class with the published
    parameter names and OpenVLA-7B's parameter count."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import openvla_7b_step as bench
    finally:
        sys.path.remove(str(SCRIPT.parent))
    import torch

    from crane_x7_vla.backends.openvla.prismatic import OpenVLAForActionPrediction

    with torch.device("meta"):
        model = OpenVLAForActionPrediction(bench.openvla_config(bench.Arch()))
    names = dict(model.named_parameters())
    assert sum(p.numel() for p in names.values()) == bench.count_params(bench.Arch()) == 7_541_237_184
    assert names["vision_backbone.featurizer.blocks.23.ls1.scale_factor"].shape == (1024,)
    assert names["vision_backbone.fused_featurizer.blocks.26.mlp.fc1.weight"].shape == (4304, 1152)
    assert names["projector.fc1.weight"].shape == (8704, 2176)
    assert names["language_model.lm_head.weight"].shape == (32064, 4096)
    assert len([n for n in names if n.endswith("self_attn.q_proj.weight")]) == 32


def test_full_size_model_is_not_built_on_a_cpu(tmp_path):
    result = _run("--device", "cpu", "--json", str(tmp_path / "f.json"), timeout=60)
    assert result.returncode == 2
    assert "7.54B-parameter model is not built on a CPU" in result.stderr
    assert "--depth-override" in result.stderr
    assert not (tmp_path / "f.json").exists()
