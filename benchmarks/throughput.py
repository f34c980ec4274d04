"""Training-step throughput of cifar_jax, beside Keras and PyTorch, on the current backend.

    python -m benchmarks.throughput [--models mlp cnn] [--batch-sizes 32 128 512] [--json out.json]

For each model and batch size: steady-state training images/s (compilation excluded, timed
apart), evaluation images/s, compile time, the on-device input pipeline's images/s, and the
achieved GFLOP/s against this machine's measured matmul rate. Keras (`model.fit` on in-memory
arrays) and PyTorch (a plain training loop) are timed in the same run, interleaved with
cifar_jax pass by pass, so drift hits every side alike; ratios are cifar_jax / peer.
Synthetic data of CIFAR-10's shape: throughput does not depend on the pixel values.
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np

from benchmarks import peers
from cifar_jax import data, parallel, steps
from cifar_jax import state as train_state
from cifar_jax.config import RECIPES, Config

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


def matmul_gflops(n=2048, repeats=10):
    """This machine's float32 matmul rate through XLA (best of `repeats`), in GFLOP/s."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class JaxSide:
    """cifar_jax's compiled training loop on synthetic uint8 data kept on the device."""

    def __init__(self, name, batch_size, n_images):
        config = Config.for_model(name)
        mesh = parallel.data_mesh()  # as in training: batches split over all devices
        replicate, split = parallel.replicated(mesh), parallel.batch_split(mesh)
        rng = np.random.default_rng(0)
        self.images = jax.device_put(rng.integers(0, 256, (n_images, 32, 32, 3), np.uint8), replicate)
        self.labels = jax.device_put(rng.integers(0, 10, n_images).astype(np.int32), replicate)
        self.state = jax.device_put(train_state.from_config(config, jax.random.key(0)), replicate)
        self.idx, self.mask = jax.device_put(
            data.batch_indices(n_images, batch_size, jax.random.key(1)), split)
        self.key = jax.random.key(2)
        args = (self.state, self.images, self.labels, self.idx, self.mask)
        self.compile_s = _timed(lambda: steps.train_batches.lower(*args, self.key).compile())
        self.eval_compile_s = _timed(lambda: steps.eval_batches.lower(*args).compile())
        self.train_pass()  # warm the cache of jit itself: later passes dispatch only

    def train_pass(self):
        """One pass over the images; returns the images/s reached."""
        start = time.perf_counter()
        self.state, metrics = steps.train_batches(self.state, self.images, self.labels,
                                                  self.idx, self.mask, self.key)
        jax.block_until_ready(metrics)
        return len(self.labels) / (time.perf_counter() - start)

    def eval_pass(self):
        jax.block_until_ready(steps.eval_batches(self.state, self.images, self.labels,
                                                 self.idx, self.mask))


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


def run(models, batch_sizes, n_images, repeats, peer_names):
    found = peers.available()
    rows = []
    peak = matmul_gflops()
    print(f"{jax.default_backend()}, {jax.device_count()} device(s); float32 matmul "
          f"(2048x2048, XLA) {peak:,.0f} GFLOP/s", flush=True)
    for name in models:
        for batch_size in batch_sizes:
            rng = np.random.default_rng(0)
            x = rng.random((n_images, 32, 32, 3), np.float32)
            y = rng.integers(0, 10, n_images).astype(np.int32)
            jax_side = JaxSide(name, batch_size, n_images)
            sides = {"cifar_jax": jax_side.train_pass}
            for peer in peer_names:
                if peer in found:
                    sides[peer] = found[peer](name, batch_size, x, y)
                    sides[peer]()  # warm-up pass: tracing, graph building, allocation
            rates = {side: [] for side in sides}
            for _ in range(repeats):  # interleaved, so drift hits every side alike
                for side, train_pass in sides.items():
                    rates[side].append(train_pass())
            eval_s = min(_timed(jax_side.eval_pass) for _ in range(repeats))
            row = {"model": name, "batch_size": batch_size, "images_per_pass": n_images,
                   "train_images_per_s": {s: statistics.median(r) for s, r in rates.items()},
                   "compile_s": jax_side.compile_s, "eval_compile_s": jax_side.eval_compile_s,
                   "eval_images_per_s": n_images / eval_s,
                   "pipeline_images_per_s": pipeline_images_per_s(batch_size),
                   "train_flops_per_image": train_flops_per_image(name), "matmul_gflops": peak}
            ips = row["train_images_per_s"]
            row["ratios"] = {peer: ips["cifar_jax"] / ips[peer] for peer in ips if peer != "cifar_jax"}
            row["train_gflops"] = ips["cifar_jax"] * row["train_flops_per_image"] / 1e9
            rows.append(row)
            print_row(row)
    return rows


def print_row(row):
    ips = row["train_images_per_s"]
    peers_text = "  ".join(f"{p} {ips[p]:7,.0f} (x{r:.2f})" for p, r in row["ratios"].items())
    print(f"{row['model']:3s} b{row['batch_size']:<4d} cifar_jax {ips['cifar_jax']:7,.0f} img/s  "
          f"{peers_text}  | compile {row['compile_s']:.2f}s  eval {row['eval_images_per_s']:8,.0f} img/s"
          f"  pipeline {row['pipeline_images_per_s']:9,.0f} img/s  | "
          f"{row['train_flops_per_image'] / 1e6:.1f} MFLOP/img -> {row['train_gflops']:.0f} GFLOP/s "
          f"({row['train_gflops'] / row['matmul_gflops']:.0%} of matmul)", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(RECIPES), default=["mlp", "cnn"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128, 512])
    p.add_argument("--images", type=int, default=8192, help="images per timed pass (default: 8192)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per side; the median counts (default: 5)")
    p.add_argument("--peers", nargs="*", default=["keras", "torch"], choices=["keras", "torch"],
                   help="frameworks to measure beside cifar_jax when importable (default: both)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    rows = run(args.models, args.batch_sizes, args.images, args.repeats, args.peers)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": jax.default_backend(), "devices": jax.device_count(),
                       "jax": jax.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
