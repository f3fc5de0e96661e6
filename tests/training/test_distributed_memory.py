"""bench/distributed_memory.py: the per-rank figures come from the sharded modules and scale
as each strategy says (FSDP halves from 1 to 2 ranks, DDP stays)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "distributed_memory.py"


def _bench():
    spec = importlib.util.spec_from_file_location("distributed_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_openvla_7b_lora_shards_over_ranks():
    bench = _bench()
    one, two = bench.openvla_rank0(1, "fsdp", True), bench.openvla_rank0(2, "fsdp", True)
    ddp = bench.openvla_rank0(2, "ddp", True)
    assert 7.5e9 < one["parameters"] < 7.8e9 and 50e6 < one["trained"] < 200e6  # LoRA r=32 on OpenVLA-7B
    assert one["weights"] == 4 * one["parameters"]  # fp32 master weights on one rank
    for part in ("weights", "gradients", "optimizer"):
        assert 0.49 < two[part] / one[part] <= 0.51, part  # FSDP rounds a shard up, rank 0 holds the larger
    # DDP: the whole bf16 model on every rank; PEFT keeps the adapters it adds in fp32
    frozen = ddp["parameters"] - ddp["trained"]
    assert ddp["weights"] == 2 * frozen + 4 * ddp["trained"] and ddp["gradients"] == 4 * ddp["trained"]


def test_pi0_shapes_shard_over_the_fsdp_axis():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = ("import sys; sys.argv=['x']; sys.path.insert(0, 'bench'); import os; "
            "os.environ['XLA_FLAGS']='--xla_force_host_platform_device_count=2'; os.environ['JAX_PLATFORMS']='cpu'; "
            "import distributed_memory as b; one=b.openpi_device0(1, True, False); "
            "two=b.openpi_device0(2, True, False); "
            "dp=b.openpi_device0(2, False, False); "
            "print(one['optimizer'], two['optimizer'], dp['optimizer'], one['weights'], two['weights'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    opt1, opt2, opt_dp, w1, w2 = map(int, proc.stdout.split())
    assert opt_dp == opt1  # --fsdp-devices 1: every device holds it all
    assert 0.5 <= opt2 / opt1 < 0.52 and 0.5 <= w2 / w1 < 0.52  # all but the arrays under 4 MiB are halved
