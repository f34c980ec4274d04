"""Spreading a run over devices: a 2-D mesh ("models", "data"). Batches are split along "data";
the N models of a multi-seed run (`--num-seeds`) along "models"; the rest is replicated.

Plain `jax.jit` does the rest: the compiled step sees sharded inputs, and XLA inserts the
gradient all-reduce over "data" only. The rule: the "models" axis takes gcd(N, devices), so 8
seeds on 8 GPUs train one model per GPU with no gradient traffic, and one model uses every
device for data parallelism. One device is the size-1 case of the same code. Across hosts,
`initialize()` joins the processes with `jax.distributed` first.
"""

import math
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P


def initialize():
    """Join a multi-process run when launched with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
    and JAX_PROCESS_ID set (the same on every host but the id); a no-op otherwise."""
    # Before anything touches a backend (jax.process_count() would): initialize() must come first.
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and not jax.distributed.is_initialized():
        jax.distributed.initialize(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))


def data_mesh(num_models=1):
    """All devices of all processes as ("models", "data"): gcd(num_models, devices) x the rest."""
    # Auto axes: XLA propagates the splits through the step (the gather, the gradient
    # all-reduce) by itself, so the step's code knows nothing of devices.
    models = math.gcd(num_models, jax.device_count())
    return jax.make_mesh((models, jax.device_count() // models), ("models", "data"),
                         axis_types=(AxisType.Auto,) * 2)


def replicated(mesh):
    return NamedSharding(mesh, P())


def batch_split(mesh, stacked=False):
    """For [steps, batch] index and mask arrays ([models, steps, batch] when `stacked`): each
    device gets its slice of every batch (of its models' batches)."""
    return NamedSharding(mesh, P("models", None, "data") if stacked else P(None, "data"))


def models_split(mesh):
    """For the stacked train state of N models: each device holds its models' share."""
    return NamedSharding(mesh, P("models"))


def check_divisible(batch_size, mesh, flag="--batch-size"):
    """The global batch is split evenly over the "data" axis, or this says what to pass instead."""
    n = mesh.shape["data"]
    if batch_size % n:
        lower, upper = batch_size // n * n, -(-batch_size // n) * n
        hint = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(f"{flag} {batch_size} does not split evenly over {n} devices: use a "
                         f"multiple of {n}, such as {hint}")


def is_main_process():
    """Only process 0 writes metrics, plots and prints; every process takes part in checkpoints."""
    return jax.process_index() == 0


def sync(name):
    """Wait until every process has got here (at once in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def process_split(split):
    """The part of a TFDS split that this process reads, for `builder.as_data_source` (and
    `as_dataset`) alike: all of it on one host; else this process's contiguous share, the shares
    in process order making up the split (`tfds.split_for_jax_process`, which needs no
    TensorFlow)."""
    if jax.process_count() == 1:
        return split
    import tensorflow_datasets as tfds

    return tfds.split_for_jax_process(split)


def gather_from_processes(array):
    """As one numpy array on every process: a global jax.Array whole, or the host arrays of all
    processes joined in process order."""
    if jax.process_count() == 1:
        return np.asarray(array)
    return multihost_utils.process_allgather(array, tiled=True)
