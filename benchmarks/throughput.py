"""Training-step throughput of cifar_jax, beside Keras and PyTorch, on the current backend.

    python -m benchmarks.throughput [--models mlp cnn] [--batch-sizes 32 128 512]
                                    [--dtypes float32 bfloat16] [--json out.json]

For each model, dtype and batch size: steady-state training images/s (compilation excluded,
timed apart), evaluation images/s, compile time, the on-device input pipeline's images/s, and
the achieved FLOP/s against the device's peak (its datasheet's dense tensor-core figure for
that dtype on known GPUs; on a CPU, its measured float32 matmul rate). Keras (`model.fit` on
in-memory arrays) and PyTorch (a plain training loop), where installed, are timed in the same
run (float32 only), interleaved with cifar_jax pass by pass, so drift hits every side alike;
ratios are cifar_jax / peer. Synthetic data of CIFAR-10's shape: throughput does not depend on
the pixel values.
"""

import argparse
import json
import os
import platform
import statistics
import time

import jax
import numpy as np

from benchmarks import peers
from cifar_jax import data, hugepages, parallel, stack, steps, train_state
from cifar_jax.config import Config

# Multiply-accumulates per image of each layer, from its shapes; the first layer needs no
# input gradient. A training step costs 2 FLOPs per MAC forward, and again for the weight
# gradient and (but for the first layer) the input gradient. Counted as executed: conv2 makes
# the 12x12 outputs that its pool keeps, not 13x13 (`ops.crop_for_pool`).
LAYER_MACS = {
    "mlp": [3072 * 3000, 3000 * 1000, 1000 * 10],
    "cnn": [30 * 30 * (3 * 3 * 3) * 32, 12 * 12 * (3 * 3 * 32) * 64, 2304 * 64, 64 * 10],
}


def train_flops_per_image(name):
    return sum(2 * macs * (2 if i == 0 else 3) for i, macs in enumerate(LAYER_MACS[name]))


# Dense peak TFLOP/s from the vendors' datasheets (SXM parts; float32 matmuls run on TF32 tensor
# cores under JAX's default precision on these GPUs), by a substring of jax's device_kind.
PEAK_TFLOPS = {"H100": {"float32": 495, "bfloat16": 989}, "H200": {"float32": 495, "bfloat16": 989},
               "A100": {"float32": 156, "bfloat16": 312}}


def peak_gflops(dtype):
    """The device's peak GFLOP/s for `dtype`: a datasheet figure, or on a CPU the measured
    float32 matmul rate; None for an accelerator not in PEAK_TFLOPS."""
    if jax.default_backend() == "cpu":
        return matmul_gflops()
    kind = jax.devices()[0].device_kind
    return next((1000 * peaks[dtype] for name, peaks in PEAK_TFLOPS.items() if name in kind), None)


def matmul_gflops(n=2048, repeats=10):
    """This machine's float32 matmul rate through XLA (best of `repeats`), in GFLOP/s."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def cpu_name(cpuinfo="/proc/cpuinfo"):
    """The host's CPU as the kernel names it, with its family and model numbers and the cores
    this process may use: 'Intel(R) Xeon(R) Processor, family 6 model 207, 2 cores'.

    Hosts sold under one name differ: two 2-core Intel Xeons both named "Intel(R) Xeon(R)
    Processor" (models 167 and 207) ran airbench94 at x1.00 and x0.85 its PyTorch port
    (docs/results.md, 2026-12-05), so each figure records its CPU's numbers. Without
    /proc/cpuinfo (macOS, Windows): `platform.processor()`."""
    try:
        with open(cpuinfo) as f:
            first = f.read().split("\n\n")[0]  # the first processor's block
    except OSError:
        first = ""
    fields = {k.strip(): v.strip() for k, _, v in
              (line.partition(":") for line in first.splitlines()) if v}
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f", family {fields['cpu family']} model {fields['model']}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"


def device_name():
    """What the benchmarks' JSON records as "device": the CPU's `cpu_name()` on the CPU, else
    JAX's device kind ("NVIDIA H200")."""
    if jax.default_backend() == "cpu":
        return cpu_name()
    return jax.devices()[0].device_kind


def describe_device():
    """'cpu: 1 x cpu (Intel(R) Xeon(R) Processor, family 6 model 207, 2 cores); jax 0.10.2':
    where a benchmark runs, its first line."""
    host = f" ({cpu_name()})" if jax.default_backend() == "cpu" else ""
    return (f"{jax.default_backend()}: {jax.device_count()} x {jax.devices()[0].device_kind}"
            f"{host}; jax {jax.__version__}")


def add_pass_flags(parser, images, per="pass"):
    """--images (per timed pass), --repeats and --json, as the timed benchmarks take them."""
    parser.add_argument("--images", type=int, default=images,
                        help=f"images per timed {per} (default: {images})")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed passes per side; the median counts (default: 5)")
    parser.add_argument("--json", help="also write the results to this JSON file")


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class JaxSide:
    """cifar_jax's compiled training loop on synthetic uint8 data kept on the device."""

    def __init__(self, name, batch_size, n_images, dtype="float32", num_seeds=1, sweep=()):
        """`num_seeds` > 1: that many models at once, as `--num-seeds` trains them (each model
        its own batch order over the same images); `sweep`: as `--sweep` (x `num_seeds`)."""
        config = Config.for_model(name, dtype=dtype, num_seeds=num_seeds, sweep=sweep)
        members = config.members
        mesh = parallel.data_mesh(members)  # as in training: a stack of N >= 1 models
        replicate = parallel.replicated(mesh)
        rng = np.random.default_rng(0)
        self.images = jax.device_put(rng.integers(0, 256, (n_images, 32, 32, 3), np.uint8), replicate)
        self.labels = jax.device_put(rng.integers(0, 10, n_images).astype(np.int32), replicate)
        self.key = jax.random.split(jax.random.key(0), members)
        self.state = jax.device_put(train_state.from_config(config, self.key),
                                    parallel.models_split(mesh))
        idx, mask = stack.epoch_batches(n_images, batch_size, self.key, 1)
        self.idx, self.mask = jax.device_put((idx, mask), parallel.batch_split(mesh, stacked=True))
        # evaluation shares one batch order between the models
        self.test = jax.device_put((idx[0], mask[0]), parallel.batch_split(mesh))
        self.images_per_pass = n_images * members
        self.train_batches = steps.train_batches_stacked(members)
        args = (self.state, self.images, self.labels, self.idx, self.mask)
        self.compile_s = _timed(lambda: self.train_batches.lower(*args, self.key, 0).compile())
        if members == 1:  # (the throughput benchmark times one model's evaluation)
            self.eval_compile_s = _timed(lambda: steps.eval_batches.lower(
                self.state, self.images, self.labels, *self.test).compile())
        self.train_pass()  # warm the cache of jit itself: later passes dispatch only

    def train_pass(self):
        """One pass over the images (by each model); returns the images/s reached, summed."""
        start = time.perf_counter()
        self.state, metrics = self.train_batches(self.state, self.images, self.labels,
                                                 self.idx, self.mask, self.key, 0)
        jax.block_until_ready(metrics)
        return self.images_per_pass / (time.perf_counter() - start)

    def eval_pass(self):
        jax.block_until_ready(steps.eval_batches(self.state, self.images, self.labels,
                                                 *self.test))


def pipeline_images_per_s(batch_size, n_images=50_000, repeats=5):
    """The input pipeline alone: a shuffled epoch of indices, gathered and scaled to float."""
    images = jax.device_put(np.random.default_rng(0).integers(0, 256, (n_images, 32, 32, 3), np.uint8))

    @jax.jit
    def epoch(images, rng):
        idx, _ = data.batch_indices(n_images, batch_size, rng)
        return jax.lax.map(lambda i: data.to_float(images[i]).sum(), idx).sum()

    epoch(images, jax.random.key(0)).block_until_ready()
    best = min(_timed(lambda r=r: epoch(images, jax.random.key(r)).block_until_ready())
               for r in range(repeats))
    return n_images / best


def run(models, batch_sizes, dtypes, n_images, repeats, peer_names):
    found = peers.available()
    missing = [peer for peer in peer_names if peer not in found]
    rows = []
    peaks = {dtype: peak_gflops(dtype) for dtype in dtypes}
    print(f"{describe_device()}; peak GFLOP/s "
          + ", ".join(f"{d} {p:,.0f}" if p else f"{d} unknown" for d, p in peaks.items())
          + "".join(f"; {peer}: not installed" for peer in missing), flush=True)
    for name in models:
        for dtype in dtypes:
            for batch_size in batch_sizes:
                rows.append(measure(name, dtype, batch_size, n_images, repeats,
                                    [p for p in peer_names if p in found] if dtype == "float32"
                                    else [], found, peaks[dtype]))
                print_row(rows[-1])
    return rows


def interleaved_medians(passes, repeats, settle=0):
    """{side: the median of `repeats` images/s of its pass}: `passes` maps each side to a
    function that runs one timed pass and returns its images/s; the sides take turns, so that
    drift hits every side alike. `settle` untimed passes run before each timed one: a side
    coming back from waiting on the others can run slower than it trains (see airbench.py)."""
    rates = {side: [] for side in passes}
    for _ in range(repeats):
        for side, train_pass in passes.items():
            for _ in range(settle):
                train_pass()
            rates[side].append(train_pass())
    return {side: statistics.median(r) for side, r in rates.items()}


def measure(name, dtype, batch_size, n_images, repeats, peer_names, found, peak):
    rng = np.random.default_rng(0)
    x = rng.random((n_images, 32, 32, 3), np.float32)
    y = rng.integers(0, 10, n_images).astype(np.int32)
    jax_side = JaxSide(name, batch_size, n_images, dtype)
    sides = {"cifar_jax": jax_side.train_pass}
    for peer in peer_names:
        sides[peer] = found[peer](name, batch_size, x, y)
        sides[peer]()  # warm-up pass: tracing, graph building, allocation
    train_images_per_s = interleaved_medians(sides, repeats)
    eval_s = min(_timed(jax_side.eval_pass) for _ in range(repeats))
    row = {"model": name, "dtype": dtype, "batch_size": batch_size, "images_per_pass": n_images,
           "device": device_name(),
           "train_images_per_s": train_images_per_s,
           "compile_s": jax_side.compile_s, "eval_compile_s": jax_side.eval_compile_s,
           "eval_images_per_s": n_images / eval_s,
           "pipeline_images_per_s": pipeline_images_per_s(batch_size),
           "train_flops_per_image": train_flops_per_image(name), "peak_gflops": peak}
    ips = row["train_images_per_s"]
    row["ratios"] = {peer: ips["cifar_jax"] / ips[peer] for peer in ips if peer != "cifar_jax"}
    row["train_gflops"] = ips["cifar_jax"] * row["train_flops_per_image"] / 1e9
    return row


def print_row(row):
    ips = row["train_images_per_s"]
    peers_text = "  ".join(f"{p} {ips[p]:7,.0f} (x{r:.2f})" for p, r in row["ratios"].items())
    of_peak = f" ({row['train_gflops'] / row['peak_gflops']:.1%} of peak)" if row["peak_gflops"] else ""
    print(f"{row['model']:3s} {row['dtype']:8s} b{row['batch_size']:<4d} cifar_jax "
          f"{ips['cifar_jax']:9,.0f} img/s  {peers_text}  | compile {row['compile_s']:.2f}s  eval "
          f"{row['eval_images_per_s']:9,.0f} img/s  pipeline {row['pipeline_images_per_s']:9,.0f} "
          f"img/s  | {row['train_flops_per_image'] / 1e6:.1f} MFLOP/img -> "
          f"{row['train_gflops']:,.0f} GFLOP/s{of_peak}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"],
                   help="the tutorial's models to measure (default: both)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128, 512],
                   help="global training batch sizes (default: 32 128 512)")
    p.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"],
                   default=["float32"] if jax.default_backend() == "cpu" else ["float32", "bfloat16"],
                   help="computation dtypes (default: float32 on a CPU, both elsewhere)")
    p.add_argument("--peers", nargs="*", default=["keras", "torch"],
                   choices=["keras", "torch", "torch.compile"],
                   help="frameworks to measure beside cifar_jax when importable (default: keras "
                        "torch; torch.compile: PyTorch with the model under torch.compile)")
    add_pass_flags(p, 8192)
    args = p.parse_args(argv)
    rows = run(args.models, args.batch_sizes, args.dtypes, args.images, args.repeats, args.peers)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": jax.default_backend(), "devices": jax.device_count(),
                       "device": device_name(), "jax": jax.__version__,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    hugepages.restart()  # as the command lines train: cifar_jax/hugepages.py
    main()
