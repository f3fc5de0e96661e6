"""Several processes training one OpenVLA model: the process group, the `--strategy` wrapper
and the parts of a checkpoint that need every process.

Ranks and devices come from the launcher's environment only (torchrun sets RANK, WORLD_SIZE
and LOCAL_RANK on every node; a c10d rendezvous gives a multi-node run the same variables):
each process takes the GPU of its LOCAL_RANK, NCCL between GPUs, gloo on CPUs.

`--strategy ddp`: every process holds the whole model; DistributedDataParallel averages the
gradients. `--strategy fsdp`: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`) shards
every parameter, its gradient and its optimizer state over the processes; each transformer
block (the model's `_no_split_modules`) is gathered for its forward and backward and freed
after. Under bf16 precision the sharded weights stay fp32 and the compute runs in bf16
(MixedPrecisionPolicy), gradients are reduced in fp32.

Checkpoints keep the layout a single process writes (`adapter/` or `model/`, the processor,
policy_config.json, ...): the weights are gathered to rank 0 and written as one model. Under
FSDP the optimizer state is written by every process as a torch.distributed.checkpoint
directory `optimizer/` (each process its own shard, no gathering), which loads into any
number of processes, FSDP or not; the scheduler goes to `scheduler.pt`.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from crane_x7_vla.backends.openvla.config import STRATEGIES  # noqa: F401 (the choices of --strategy)
from crane_x7_vla.training.config import ConfigError

#: the torch.distributed.checkpoint directory of the optimizer state an FSDP run writes
OPTIMIZER_DIR = "optimizer"
#: a DDP or single-process run's optimizer and scheduler state
OPTIMIZER_FILE = "optimizer.pt"
#: the scheduler state beside OPTIMIZER_DIR
SCHEDULER_FILE = "scheduler.pt"


class Dist:
    """This process's place in the run, from torchrun's environment (one process without it)."""

    def __init__(self, cfg):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.strategy = getattr(cfg, "strategy", "ddp")
        if cfg.device == "auto":
            self.device = torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
            if self.device.type == "cuda" and self.device.index is None:
                self.device = torch.device(f"cuda:{self.local_rank}")
            elif self.device.type == "cuda" and self.world > 1:
                raise ConfigError(
                    f"--device {cfg.device} names one GPU, but this is one of {self.world} processes: each takes "
                    "the GPU of its LOCAL_RANK; use --device cuda or auto"
                )
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"--device {cfg.device}: no CUDA GPU is visible to PyTorch")
            torch.cuda.set_device(self.device)
        self.started = False
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend)
            self.started = True
        elif self.strategy == "fsdp" and not dist.is_initialized():
            # FSDP shards over a device mesh, which needs a process group: one of one process
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            self.started = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, values: dict) -> dict:
        if self.world == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: v / self.world for k, v in zip(keys, t.tolist())}

    def gather(self, obj):
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.started:
            dist.destroy_process_group()


def load_dtype(strategy: str, compute: torch.dtype) -> torch.dtype:
    """The dtype the weights are loaded and kept in: FSDP keeps fp32 master weights and computes
    in `compute`; DDP keeps the weights in `compute` itself."""
    return torch.float32 if strategy == "fsdp" else compute


def load_device(strategy: str, device: torch.device) -> torch.device:
    """Where the base model is loaded before training: FSDP loads on the CPU and moves only
    this process's shards to the GPU (fully_shard moves them to the mesh's device)."""
    return torch.device("cpu") if strategy == "fsdp" else device


def shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules FSDP gathers one at a time: those of the model's `_no_split_modules`
    classes (its transformer blocks and projector), outermost first."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    if not names:
        raise ConfigError(
            f"--strategy fsdp: {type(base).__name__} names no transformer block classes (_no_split_modules) "
            "to shard by; use --strategy ddp"
        )
    units, inside = [], []
    for _, module in model.named_modules():
        if type(module).__name__ in names and not any(module in set(u.modules()) for u in inside):
            units.append(module)
            inside.append(module)
    return units


def wrap(model: torch.nn.Module, dist_: Dist, compute: torch.dtype) -> torch.nn.Module:
    """The module the training steps run: DDP's wrapper, FSDP's sharded model (the same object,
    its parameters now DTensor shards), or the model itself for one DDP process."""
    if dist_.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(dist_.device.type, (dist_.world,))
        policy = MixedPrecisionPolicy(
            param_dtype=None if compute == torch.float32 else compute, reduce_dtype=torch.float32
        )
        for unit in shard_units(model):
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model
    if dist_.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        device = dist_.device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def gradient_sync(train_model, dist_: Dist, sync: bool):
    """A context for one micro-batch's backward. DDP: without `sync` the gradients stay local
    (accumulated until the last micro-batch of the step). FSDP reduce-scatters every
    micro-batch's gradients and adds them to the sharded ones: holding unsharded gradients
    across micro-batches would cost a whole model's gradients on every process."""
    if dist_.strategy == "fsdp":
        return nullcontext()
    if not sync and dist_.world > 1:
        return train_model.no_sync()
    return nullcontext()


def to_float(value) -> float:
    """A scalar tensor, also a replicated DTensor (FSDP's gradient norm), as a float."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)


def full_state_dict(model: torch.nn.Module, trainable_only: bool) -> dict:
    """The model's weights gathered whole on rank 0, on the CPU ({} on the other ranks); every
    process must call it. `trainable_only`: the trained weights only (LoRA adapters)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(model, options=options)


def save_optimizer(directory: Path, model: torch.nn.Module, optimizer) -> None:
    """Every process writes its shard of the optimizer state into `directory` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(directory))


def load_optimizer(directory: Path, model: torch.nn.Module, optimizer) -> None:
    """Load an `optimizer/` directory written by any number of processes into this run's
    optimizer (sharded or not); every process must call it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(directory))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def load_single_optimizer(state: dict, model: torch.nn.Module, optimizer, trainable: list) -> None:
    """Load an `optimizer.pt` state (parameters numbered in the order of `trainable`, as a
    single process or DDP writes it) into an FSDP run's sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {id(p): n for n, p in model.named_parameters()}
    fqn = [names[id(p)] for p in trainable]
    full = {
        "state": {fqn[int(i)]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [fqn[int(i)] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))
