"""Several JAX processes training one π0 model: `jax.distributed`, the device mesh and the
placement of weights and batches on it.

Start: `--coordinator-address HOST:PORT --num-processes N --process-id I` on every process
(the same address everywhere: process 0's), or nothing under `srun` with several tasks, where
JAX reads SLURM's environment. CPU processes exchange data with gloo.

Mesh: all devices of all processes as a 2-D grid (`data`, `fsdp`) of
(devices / --fsdp-devices) x --fsdp-devices. A batch is split over both axes; each weight of
at least --fsdp-min-mbytes is split along its largest dimension that the `fsdp` axis divides
(its gradient and its optimizer state with it), smaller ones are replicated: openpi's FSDP
layout. With --fsdp-devices 1 every device holds every weight (data parallel).

Data: process p loads only its own --batch-size samples of each step (rank p of the
processes in training.data.BatchStream); the global batch is assembled from the processes'
parts without copying data between them.
"""

from __future__ import annotations

import os

import numpy as np

from crane_x7_vla.training.config import ConfigError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
#: the batch dimension is split over every device: both mesh axes
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def slurm_tasks() -> int:
    """The number of tasks of the current `srun` step (1 outside one)."""
    try:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    except ValueError:
        return 1


def initialize(cfg) -> bool:
    """Join the run's other processes (jax.distributed) when the settings or SLURM say there
    are some; must come before JAX's first use of a device. Returns whether it did."""
    import jax

    explicit = cfg.coordinator_address is not None  # with --num-processes and --process-id (OpenPIConfig)
    if not explicit and slurm_tasks() <= 1:
        return False
    if jax.distributed.is_initialized():
        return True
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes, process_id=cfg.process_id
        )
    else:
        jax.distributed.initialize()  # SLURM: coordinator, process count and id from its environment
    return True


def make_mesh(devices, fsdp_devices: int):
    from jax.sharding import Mesh

    n = len(devices)
    if fsdp_devices < 1 or n % fsdp_devices:
        raise ConfigError(f"--fsdp-devices {fsdp_devices} must divide the {n} device(s) of the run")
    return Mesh(np.array(devices).reshape(n // fsdp_devices, fsdp_devices), (DATA_AXIS, FSDP_AXIS))


def weight_spec(shape, nbytes: int, fsdp: int, min_bytes: float):
    """The PartitionSpec of one weight (or its optimizer state): split along the largest
    dimension the fsdp axis divides, when the array is big enough; replicated otherwise."""
    from jax.sharding import PartitionSpec as P

    if fsdp == 1 or nbytes < min_bytes:
        return P()
    for dim in sorted(range(len(shape)), key=lambda i: (-shape[i], i)):
        if shape[dim] % fsdp == 0:
            return P(*([None] * dim), FSDP_AXIS)
    return P()


def shardings(tree, mesh, min_mbytes: float):
    """A NamedSharding for every array of `tree` (weights, EMA, optimizer state)."""
    import jax
    from jax.sharding import NamedSharding

    fsdp = mesh.shape[FSDP_AXIS]

    def one(x):
        shape = tuple(np.shape(x))
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
        return NamedSharding(mesh, weight_spec(shape, nbytes, fsdp, min_mbytes * 2**20))

    return jax.tree.map(one, tree)


def place(tree, tree_shardings):
    """Global arrays laid out as `tree_shardings` from host values every process holds alike;
    each process puts only the pieces its own devices hold."""
    import jax

    def one(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, tree_shardings)


def batch_sharding(mesh):
    """Batches with a leading micro-batch axis, the samples split over every device."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    return NamedSharding(mesh, P(None, BATCH_AXES))


def global_batch(local: dict, sharding) -> dict:
    """This process's part of a batch (its own samples) -> the run's global batch arrays."""
    import jax

    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def sharded_bytes(tree) -> int:
    """Bytes of `tree` held by the most loaded device (each array's largest shard)."""
    import jax

    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape)
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


_barriers = 0


def sync(name: str, timeout_s: float = 3600.0) -> None:
    """Wait for every process at the coordination service (no device collective, nothing to
    compile; nothing to wait for with one process). Every process passes the same barriers in
    the same order."""
    import jax

    global _barriers
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed

    _barriers += 1
    jax_distributed.global_state.client.wait_at_barrier(f"{name} #{_barriers}", int(timeout_s * 1000))


class Aligned:
    """A jitted function whose first call with each kind of arguments compiles on every
    process and then waits for all of them before it runs. The first collective of a program
    sets up the CPU collectives' connection with a fixed 30 s limit, which a process that
    compiles longer than another (or finds the program in the compilation cache while the
    other does not) would miss."""

    def __init__(self, fn, name: str):
        self.fn, self.name = fn, name
        self.compiled: dict = {}

    def __call__(self, *args):
        import jax

        leaves, tree = jax.tree.flatten(args)
        key = (str(tree), tuple((getattr(x, "shape", ()), str(getattr(x, "dtype", type(x)))) for x in leaves))
        if key not in self.compiled:
            self.compiled[key] = self.fn.lower(*args).compile()
            sync(f"{self.name} compiled")
        return self.compiled[key](*args)
