"""Per-GPU memory of weights + gradients + optimizer state under DDP and FSDP, at 1, 2, 4 and 8
ranks, for the OpenVLA-7B and π0 shapes: what each `--strategy` (OpenVLA) and
`--fsdp-devices` (OpenPI) needs before activations.

    python bench/distributed_memory.py            # the table (no GPU needed: nothing is allocated)
    python bench/distributed_memory.py --ranks 1 2 4 8 16 --json out.json

Nothing here is counted by hand from a formula. OpenVLA: the backend's own OpenVLA-7B class
(bench/openvla_7b_step.py's config) is built on PyTorch's meta device, made trainable by the
trainer's `make_trainable` (LoRA rank 32 on all linear layers, or all weights) and wrapped by
the trainer's `distributed.wrap` under a process group of N ranks that only pretends to talk
(torch's "fake" backend), so each parameter becomes the DTensor shard rank 0 holds; the
gradients are meta tensors shaped like the trained shards and AdamW's state is the one
`optimizer.step()` creates on them. Rank 0 holds the largest shard (FSDP rounds up), so its
figure is the per-GPU need. OpenPI: the π0 preset's abstract state (jax.eval_shape, no
memory), split into trained and frozen weights by the trainer's filter, the optimizer state
from `optax` on those shapes, and each array's shard shape from the trainer's own
`distributed.shardings` on a mesh of N devices (host CPU devices stand in for GPUs; only
shapes are computed).

What the strategies keep: OpenVLA DDP holds the weights, gradients and AdamW state in the
run's precision (bf16 on a GPU; PEFT's LoRA adapters in fp32) on every rank, plus DDP's
gradient buckets (another copy of
the gradients, not counted here). OpenVLA FSDP keeps fp32 master weights, gradients and AdamW
state sharded, and gathers one transformer block at a time in bf16 for compute (transient,
not counted). OpenPI keeps trained weights, their EMA and AdamW state in fp32 and frozen
weights in bf16; DDP is `--fsdp-devices 1`, FSDP `--fsdp-devices N` with openpi's 4 MiB
threshold (smaller arrays stay replicated). Gradients of OpenPI exist inside the jitted
step only, sharded like the trained weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
GiB = 2**30


def _tensor_bytes(t) -> int:
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def openvla_rank0(ranks: int, strategy: str, use_lora: bool) -> dict:
    """Bytes rank 0 of `ranks` holds for weights, gradients and AdamW state of OpenVLA-7B."""
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from openvla_7b_step import make_arch, openvla_config

    from crane_x7_vla.backends.openvla import distributed as dd
    from crane_x7_vla.backends.openvla.prismatic import OpenVLAForActionPrediction
    from crane_x7_vla.backends.openvla.trainer import make_trainable
    from crane_x7_vla.training.config import TrainConfig

    cfg = TrainConfig(backend="openvla", use_lora=use_lora, data_root=".").resolved()
    compute = torch.bfloat16  # --precision auto on a GPU
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=ranks)
    try:
        with torch.device("meta"):
            model = OpenVLAForActionPrediction(openvla_config(make_arch()))
        model = model.to(dd.load_dtype(strategy, compute))
        model = make_trainable(model, cfg)
        place = type("Place", (), {"strategy": strategy, "world": ranks, "device": torch.device("cpu")})
        wrapped = dd.wrap(model, place, compute) if strategy == "fsdp" else model
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.grad = torch.zeros_like(p)
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=False)
        optimizer.step()
        state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        out = {
            "weights": sum(_tensor_bytes(p) for p in model.parameters()),
            "gradients": sum(_tensor_bytes(p.grad) for p in trainable),
            "optimizer": sum(_tensor_bytes(t) for t in state),
            "parameters": sum(p.numel() for p in model.parameters()),
            "trained": sum(p.numel() for p in trainable),
        }
        del wrapped, model, optimizer
        return out
    finally:
        dist.destroy_process_group()


def openpi_device0(ranks: int, fsdp: bool, use_lora: bool) -> dict:
    """Bytes the most loaded device of `ranks` holds for π0's weights, EMA, gradients and AdamW
    state: the `pi0` preset as the trainer configures it (LoRA rank 32 on the prefix decoder, or
    all weights)."""
    import jax
    import numpy as np
    from flax import nnx

    from crane_x7_vla.backends.openpi import distributed, train_state as ts
    from crane_x7_vla.backends.openpi.trainer import model_config
    from crane_x7_vla.training.config import TrainConfig

    cfg = TrainConfig(backend="openpi", model="pi0", use_lora=use_lora, data_root=".").resolved()
    mcfg, _ = model_config(cfg, num_cameras=3, precision="bf16")  # openpi's three image slots, bf16 on a GPU
    graphdef, state = ts.abstract_model(mcfg)
    model = nnx.merge(graphdef, state)
    _, trainable, frozen = nnx.split(model, ts.trainable_filter(mcfg), ...)
    dtype = np.dtype(mcfg.dtype) if mcfg.dtype != "bfloat16" else jax.numpy.bfloat16
    as_struct = lambda x, d=None: jax.ShapeDtypeStruct(x.shape, d or x.dtype)  # noqa: E731
    trainable = jax.tree.map(lambda x: as_struct(x, jax.numpy.float32), trainable)
    frozen = jax.tree.map(lambda x: as_struct(x, dtype), frozen)
    tx = ts.optimizer(ts.learning_rate_schedule(1e-4, 10, 0.0, "cosine"), weight_decay=0.0, max_grad_norm=1.0)
    opt_state = jax.eval_shape(tx.init, trainable)
    mesh = distributed.make_mesh(jax.devices()[:ranks], ranks if fsdp else 1)
    parts = {"weights": (trainable, frozen), "ema": trainable, "gradients": trainable, "optimizer": opt_state}
    out = {}
    for name, tree in parts.items():
        sh = distributed.shardings(tree, mesh, 4.0)
        total = 0
        for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(sh)):
            total += int(np.prod(s.shard_shape(x.shape), dtype=np.int64)) * np.dtype(x.dtype).itemsize
        out[name] = total
    out["parameters"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves((trainable, frozen)))
    out["trained"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainable))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8], metavar="N")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if max(args.ranks) > 64 or min(args.ranks) < 1:
        parser.error("--ranks: 1 .. 64")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={max(args.ranks)}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    rows = []
    for model, mode in (("openvla-7b", "full"), ("openvla-7b", "lora"), ("pi0", "full"), ("pi0", "lora")):
        for strategy in ("ddp", "fsdp"):
            row = {"model": model, "training": mode, "strategy": strategy, "ranks": {}}
            first: dict = {}
            for n in args.ranks:
                if model != "pi0" and strategy == "ddp" and n > args.ranks[0]:
                    figures = dict(first)  # DDP replicates: every rank count holds the same
                elif model == "pi0":
                    figures = openpi_device0(n, strategy == "fsdp", mode == "lora")
                else:
                    figures = openvla_rank0(n, strategy, mode == "lora")
                first = first or dict(figures)
                row["parameters"], row["trained"] = figures.pop("parameters"), figures.pop("trained")
                row["ranks"][n] = figures
            rows.append(row)
            print(f"done: {model} {mode} {strategy}", file=sys.stderr)
    print("Per-GPU memory (GiB) of weights + gradients + optimizer state (+ EMA for π0), before activations;")
    print("computed from the sharded modules' shapes (no GPU used).")
    head = "| model | training | strategy | " + " | ".join(f"{n} rank{'s' if n > 1 else ''}" for n in args.ranks)
    print(head + " | split at the largest rank count (weights / grads / optimizer / EMA) |")
    print("|---|---|---|" + "---|" * len(args.ranks) + "---|")
    for row in rows:
        cells = [f"{sum(f.values()) / GiB:.1f}" for f in row["ranks"].values()]
        last = row["ranks"][args.ranks[-1]]
        split = " / ".join(f"{last.get(k, 0) / GiB:.1f}" for k in ("weights", "gradients", "optimizer", "ema"))
        label = f"{row['model']} ({row['parameters'] / 1e9:.2f}B, {row['trained'] / 1e6:.0f}M trained)"
        print(f"| {label} | {row['training']} | {row['strategy']} | " + " | ".join(cells) + f" | {split} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
