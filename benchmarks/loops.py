"""How a training step runs, for models written with and without cifar_jax's kernels: the
measurements behind `ops.for_backend` (why the steps compute any model's XLA convolutions as
matmuls on the CPU, and keep the whole epoch in one scanned program).

    python -m benchmarks.loops [--models plain kernels nnx cnn resnet8 airbench94] [--json out.json]

For each model, cifar_jax's own train step (`steps.train_step`) on synthetic data, four ways:

    scan, XLA convolutions     the steps in one compiled `lax.scan` (how an epoch runs), the
                               model's convolutions XLA's own: how cifar_jax ran before
    Python, XLA convolutions   one compiled step, called from Python for each batch
    4 unrolled, XLA convs      four steps unrolled into one compiled program (no loop), called
                               from Python
    scan, as matmuls           the scan, the model's XLA convolutions computed by
                               `ops.conv_as_matmul` (`ops.convolutions_as_matmuls`): how the
                               steps run a model now on the CPU

Seconds a step after compiling (the median of --repeats timed passes of --steps steps), and each
way's speed against the last; with several models, their last ways once more, one pass of each
in turn (drift hits them alike: the figure to compare the models by). The models: `plain`, a CNN
as Flax's docs write one (nn.Conv(32), BatchNorm, max-pool, nn.Conv(64), BatchNorm, max-pool,
dropout, Dense) at batch 256; `kernels`, the same written with
`conv_general_dilated=ops.conv_as_matmul`; `nnx`, the same written in Flax NNX (`nnx.Conv(3, 32,
(3, 3), rngs=rngs)`, ...); `cnn`, the tutorial's CNN at batch 32; `resnet8`, examples/resnet8.py
at batch 32; `airbench94`, the recipe's network (its convolutions cifar_jax's Winograd kernels
already) at batch 1024.
"""

import argparse
import json
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import optax
from flax import nnx

from benchmarks.throughput import describe_device, interleaved_medians
from cifar_jax import hugepages, ops, steps, train_state
from cifar_jax.config import Config
from cifar_jax.models import from_nnx
from cifar_jax.registry import lookup


class Plain(nn.Module):
    """A CNN as Flax's docs write one."""

    conv: object = jax.lax.conv_general_dilated

    @nn.compact
    def __call__(self, x, train=False):
        for width in (32, 64):
            x = nn.Conv(width, (3, 3), conv_general_dilated=self.conv)(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Dropout(0.25, deterministic=not train)(x.reshape(x.shape[0], -1))
        return nn.Dense(10)(x)


class PlainNNX(nnx.Module):
    """`Plain` as Flax's NNX docs write it (trained through `cifar_jax.models.from_nnx`)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1, self.bn1 = nnx.Conv(3, 32, (3, 3), rngs=rngs), nnx.BatchNorm(32, rngs=rngs)
        self.conv2, self.bn2 = nnx.Conv(32, 64, (3, 3), rngs=rngs), nnx.BatchNorm(64, rngs=rngs)
        self.dropout = nnx.Dropout(0.25, rngs=rngs)
        self.linear = nnx.Linear(64 * 8 * 8, 10, rngs=rngs)

    def __call__(self, x):
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
            x = nnx.max_pool(nnx.relu(bn(conv(x))), (2, 2), strides=(2, 2))
        return self.linear(self.dropout(x.reshape(x.shape[0], -1)))


def _resnet8():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples"))
    from resnet8 import ResNet8  # noqa: PLC0415 - the example, where it lives

    return ResNet8()


# name -> (the model, its batch size, the optimiser)
MODELS = {
    "plain": (Plain, 256, optax.adam(1e-3)),
    "kernels": (lambda: Plain(conv=ops.conv_as_matmul), 256, optax.adam(1e-3)),
    "nnx": (lambda: from_nnx.builder(PlainNNX)(), 256, optax.adam(1e-3)),
    "cnn": (lambda: train_state.build_model(Config.for_model("cnn")), 32, optax.adam(1e-3)),
    "resnet8": (_resnet8, 32, optax.adam(1e-3)),
    "airbench94": (lambda: train_state.build_model(Config.for_model("airbench94")), 1024,
                   lookup("optimizer", "nesterov").obj(11.5, batch_size=1024, steps_per_epoch=48)),
}


UNROLLED = 4  # steps in one program without a loop


class XlaConvolutions(train_state.TrainState):
    """A train state whose model runs as written: its convolutions XLA's own."""

    @property
    def apply_fn(self):
        return self.model.apply


def ways(model, tx, batch_size, n_steps):
    """{way: (a function of no arguments that trains `n_steps` steps, compiled)}."""
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (batch_size * n_steps, 32, 32, 3), np.uint8))
    labels = jax.device_put(rng.integers(0, 10, batch_size * n_steps).astype(np.int32))
    idx = np.arange(batch_size * n_steps, dtype=np.int32).reshape(n_steps, batch_size)
    mask = np.ones(idx.shape, np.float32)
    state = train_state.create(model, tx, jax.random.key(0))
    xla = XlaConvolutions(**{f: getattr(state, f) for f in state.__dataclass_fields__})
    key = jax.random.key(1)
    scan = jax.jit(steps._train_batches)  # no donation: every pass starts from the same state

    def step(state, idx, mask):  # the batch gathered on the device, as the scan does
        return steps.train_step(state, {**steps._gather(images, labels, idx, mask), "epoch": 0},
                                key)

    @jax.jit
    def unrolled(state, idx, mask):  # the steps one after the other in the program, no loop
        for i in range(len(idx)):
            state, metrics = step(state, idx[i], mask[i])
        return state, metrics

    def scanned(state):
        return lambda: jax.block_until_ready(scan(state, images, labels, idx, mask, key))

    def from_python(k):
        def run():
            current = xla
            for i in range(0, n_steps, k):
                current, metrics = unrolled(current, idx[i:i + k], mask[i:i + k])
            return jax.block_until_ready(metrics)
        return run

    return {"scan, XLA convolutions": scanned(xla), "Python, XLA convolutions": from_python(1),
            f"{UNROLLED} unrolled, XLA convs": from_python(UNROLLED),
            "scan, as matmuls": scanned(state)}


def measure(name, n_steps, repeats):
    build, batch_size, tx = MODELS[name]
    rows = []
    for way, run in ways(build(), tx, batch_size, n_steps).items():
        start = time.perf_counter()
        run()  # compiles
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) / n_steps)
        rows.append({"model": name, "batch": batch_size, "way": way,
                     "seconds_per_step": statistics.median(times), "first_call_s": compile_s})
    chosen = rows[-1]["seconds_per_step"]
    for row in rows:
        row["speed_vs_chosen"] = chosen / row["seconds_per_step"]
        print(f"{name:10s} batch {row['batch']:4d}  {row['way']:26s} "
              f"{row['seconds_per_step']:8.3f} s/step  {row['batch'] / row['seconds_per_step']:8,.0f}"
              f" img/s  x{row['speed_vs_chosen']:.2f} of as matmuls  (first call "
              f"{row['first_call_s']:.1f} s)", flush=True)
    return rows, _images_per_s(run, batch_size * n_steps)  # the last way: how the steps run it


def _images_per_s(run, images):
    def timed():
        start = time.perf_counter()
        run()
        return images / (time.perf_counter() - start)
    return timed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--steps", type=int, default=8, help="steps a timed pass trains (a multiple "
                   f"of {UNROLLED})")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per way (median)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    print(describe_device(), flush=True)
    measured = {name: measure(name, args.steps, args.repeats) for name in args.models}
    rows = [row for model_rows, _ in measured.values() for row in model_rows]
    if len(measured) > 1:  # the models' chosen ways again, their passes in turn: drift hits all
        speeds = interleaved_medians({name: run for name, (_, run) in measured.items()},
                                     args.repeats)
        first = args.models[0]
        print("as matmuls, passes in turn: " + ", ".join(
            f"{name} {rate:,.0f} img/s (x{rate / speeds[first]:.2f} of {first})"
            for name, rate in speeds.items()), flush=True)
        rows.append({"interleaved_images_per_s": speeds})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    hugepages.restart()  # as the command lines train: cifar_jax/hugepages.py
    main()
