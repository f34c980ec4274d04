"""The airbench recipes, cifar_jax beside their PyTorch ports (`benchmarks/airbench_torch.py`
for airbench94, `benchmarks/airbench_muon_torch.py` for airbench94_muon,
`benchmarks/cifar10_speedrun_torch.py` for cifar10_speedrun), in one run on one machine:
training images/s, and test accuracy (with TTA) over several seeds.

    python -m benchmarks.airbench --throughput                  # images/s at batch 1024, both sides
    python -m benchmarks.airbench --data-dir DIR --seeds 0 1 2 --epochs 2 --json out.json
    python -m benchmarks.airbench --recipe airbench94_muon --throughput   # batch 2000
    python -m benchmarks.airbench --recipe cifar10_speedrun --throughput  # batch 1536

Throughput: steady-state training steps on random data (compilation and warm-up apart), passes
taken in turn so that drift hits both sides alike; the median counts. Each phase of a run's
steps apart (while the stem's bias trains, and after: no gradient for it on either side), and a
whole run's images/s from them. Accuracy: each seed trains
in full on each side (`--epochs` shortens the run and its schedules alike); the summary gives
mean ± std (ddof 1) of the TTA test accuracy and of the training seconds.
"""

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks.throughput import describe_device, device_name, interleaved_medians
from cifar_jax import data, hugepages, steps, train_state
from cifar_jax.config import Config
from cifar_jax.train import freeze, train_and_evaluate

# recipe -> its PyTorch port's module, and the batch size it trains at
PORTS = {"airbench94": ("benchmarks.airbench_torch", 1024),
         "airbench94_muon": ("benchmarks.airbench_muon_torch", 2000),
         "cifar10_speedrun": ("benchmarks.cifar10_speedrun_torch", 1536)}


def port(recipe):
    """The recipe's PyTorch port (a module), imported now: `--help` needs no PyTorch."""
    return importlib.import_module(PORTS[recipe][0])


class JaxSide:
    """cifar_jax's compiled step of an airbench recipe on random uint8 images kept on the
    device."""

    def __init__(self, batch_size, steps_per_pass, dtype="float32", recipe="airbench94",
                 first_step=0):
        config = Config.for_model(recipe, batch_size=batch_size, dtype=dtype)
        rng = np.random.default_rng(0)
        n = batch_size * steps_per_pass
        images = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
        self.images, self.labels = jax.device_put((images, rng.integers(0, 10, n).astype(np.int32)))
        state = train_state.from_config(config, jax.random.key(0), 50_000, images)
        # A run's steps from `first_step` on: without the gradients of parameters the
        # optimiser has stopped training by then, as `train.train_epoch` runs them.
        self.state = freeze(state, state.recipe, train_state.freezing(config, 50_000, state.params),
                            first_step)
        self.idx, self.mask = data.batch_indices(n, batch_size, jax.random.key(1))
        self.key = jax.random.key(2)
        start = time.perf_counter()
        steps.train_batches.lower(self.state, self.images, self.labels, self.idx, self.mask,
                                  self.key).compile()
        self.compile_s = time.perf_counter() - start
        self.train_pass()  # warm jit's own cache

    def train_pass(self):
        start = time.perf_counter()
        self.state, metrics = steps.train_batches(self.state, self.images, self.labels, self.idx,
                                                  self.mask, self.key)
        jax.block_until_ready(metrics)
        return len(self.labels) / (time.perf_counter() - start)


def throughput(batch_size, steps_per_pass, repeats, device, recipe="airbench94", dtype="float32",
               torch_compile=False, settle=1):
    """Each side's images/s in each phase of a run's steps: while the stem's bias trains, and
    after (no gradient for it: cifar_jax's `StepRecipe.frozen`, PyTorch's requires_grad or
    detach, as the ports train); and over a whole run's steps, each phase by its share."""
    config = Config.for_model(recipe, batch_size=batch_size)
    per_epoch, total = train_state.run_length(config, 50_000)
    params = jax.eval_shape(lambda: train_state.from_config(config, jax.random.key(0)).params)
    starts = sorted({0, *(step for step in train_state.freezing(config, 50_000, params).values()
                          if step < total)})
    phases = []
    for first, end in zip(starts, [*starts[1:], total]):
        phases.append({"first_step": first, "steps": end - first,
                       **_phase(batch_size, steps_per_pass, repeats, device, recipe, dtype,
                                torch_compile, settle, first, per_epoch)})
    result = {side: total / sum(p["steps"] / p[side] for p in phases)
              for side in ("cifar_jax", "pytorch")}
    result["ratio"] = result["cifar_jax"] / result["pytorch"]
    result.update(phases=phases, torch_compile=torch_compile, settle=settle)
    if len(phases) > 1:
        print(f"{recipe}, a run's {total} steps: cifar_jax {result['cifar_jax']:,.0f} img/s, "
              f"PyTorch {result['pytorch']:,.0f} img/s (x{result['ratio']:.2f})", flush=True)
    return result


def _phase(batch_size, steps_per_pass, repeats, device, recipe, dtype, torch_compile, settle,
           first_step, steps_per_epoch):
    jax_side = JaxSide(batch_size, steps_per_pass, dtype, recipe, first_step)
    from benchmarks import torch_ports  # with PyTorch, as the port

    start = time.perf_counter()
    torch_pass = torch_ports.throughput_pass(port(recipe), batch_size, steps_per_pass, device,
                                             torch_compile=torch_compile, first_step=first_step,
                                             steps_per_epoch=steps_per_epoch)
    torch_warmup_s = time.perf_counter() - start
    # One untimed pass before each timed one (`settle`): on 2 cores of an Intel Xeon, a
    # cifar_jax pass that followed PyTorch's ran at 201 img/s, and 228 after 5 s more, where
    # back-to-back passes ran at 250 (airbench94_muon); a training run never waits between its
    # calls. PyTorch's passes did not slow that way. docs/results.md (2026-12-04, Xeon).
    result = interleaved_medians({"cifar_jax": jax_side.train_pass, "pytorch": torch_pass},
                                 repeats, settle)
    result["ratio"] = result["cifar_jax"] / result["pytorch"]
    result["cifar_jax_compile_s"] = jax_side.compile_s
    result["pytorch_warmup_s"] = torch_warmup_s
    print(f"{recipe} batch {batch_size}, steps from {first_step} "
          f"({', '.join(jax_side.state.recipe.frozen) or 'nothing'} frozen): cifar_jax "
          f"{result['cifar_jax']:,.0f} img/s, PyTorch{' (torch.compile)' if torch_compile else ''}"
          f" {result['pytorch']:,.0f} img/s (x{result['ratio']:.2f}); cifar_jax compile "
          f"{jax_side.compile_s:.1f} s, PyTorch's set-up and warm-up steps {torch_warmup_s:.1f} s",
          flush=True)
    return result


def accuracy(data_dir, seeds, epochs, device, recipe="airbench94", dtype="float32"):
    from benchmarks import torch_ports  # with PyTorch, as the port

    splits = data.load_cifar10(data_dir, download=False)
    runs = {"cifar_jax": [], "pytorch": []}
    for seed in seeds:
        with tempfile.TemporaryDirectory() as workdir:
            config = Config.for_model(recipe, epochs=epochs, seed=seed, data_dir=data_dir,
                                      download=False, dtype=dtype)
            history = train_and_evaluate(config, os.path.join(workdir, "run"), progress=False)
        runs["cifar_jax"].append({"seed": seed, "test_accuracy": history[-1]["test_accuracy"],
                                  "test_accuracy_tta": history[-1]["test_accuracy_tta"],
                                  "train_seconds": sum(row["seconds"] for row in history)})
        torch_run = torch_ports.train(port(recipe), *splits["train"], *splits["test"],
                                      seed=seed, epochs=epochs, device=device, progress=False)
        runs["pytorch"].append({key: torch_run[key] for key in (
            "seed", "test_accuracy", "test_accuracy_tta", "train_seconds")})
        print(f"seed {seed}: " + "; ".join(
            f"{side} TTA acc {r[-1]['test_accuracy_tta']:.4f} in {r[-1]['train_seconds']:.0f} s"
            for side, r in runs.items()), flush=True)
    summary = {side: _mean_std(r) for side, r in runs.items()}
    for side, s in summary.items():
        print(f"{side}: TTA test accuracy {s['test_accuracy_tta']['mean']:.4f} ± "
              f"{s['test_accuracy_tta']['std']:.4f}, training {s['train_seconds']['mean']:.0f} ± "
              f"{s['train_seconds']['std']:.0f} s (n={len(seeds)}, {epochs} epochs)", flush=True)
    return {"runs": runs, "summary": summary}


def _mean_std(rows):
    return {key: {"mean": statistics.mean(r[key] for r in rows),
                  "std": statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0}
            for key in ("test_accuracy", "test_accuracy_tta", "train_seconds")}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.airbench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", choices=sorted(PORTS), default="airbench94",
                   help="which recipe, with its PyTorch port (default: airbench94)")
    p.add_argument("--throughput", action="store_true",
                   help="measure training images/s on random data instead of training")
    p.add_argument("--batch-size", type=int,
                   help="throughput's batch (default: the recipe's: 1024, 2000, 1536)")
    p.add_argument("--steps", type=int, default=4, help="throughput: steps per timed pass (default: 4)")
    p.add_argument("--repeats", type=int, default=5,
                   help="throughput: timed passes per side; the median counts (default: 5)")
    p.add_argument("--data-dir", help="a prepared TFDS cifar10 (accuracy runs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="accuracy: seeds trained on each side (default: 0 1 2)")
    p.add_argument("--epochs", type=float,
                   help="accuracy: epochs (default: the recipe's: 9.9, 8, 7.59)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if jax.default_backend() == "gpu" else "cpu",
                   help="PyTorch's device (default: the one JAX uses)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="cifar_jax's compute dtype (default: float32); the port keeps its own: "
                        "float32 on the CPU, half precision on CUDA as the original")
    p.add_argument("--settle", type=int, default=1,
                   help="throughput: untimed passes each side runs before each timed one "
                        "(default: 1; 0 times every pass, as before 2026-12-04)")
    p.add_argument("--torch-compile", action="store_true",
                   help="throughput: the port's network compiled by torch.compile (default: "
                        "eager, as the ports train)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    try:
        torch = port(args.recipe).torch
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        print("error: benchmarks.airbench runs the PyTorch port beside cifar_jax, and PyTorch is "
              "not installed: pip install -e \".[peers]\"", file=sys.stderr)
        return 2
    print(f"{describe_device()}, torch {torch.__version__}", flush=True)
    if args.throughput:
        result = throughput(args.batch_size or PORTS[args.recipe][1], args.steps, args.repeats,
                            args.device, args.recipe, args.dtype, args.torch_compile,
                            args.settle)
    else:
        result = accuracy(args.data_dir, args.seeds,
                          args.epochs or Config.for_model(args.recipe).epochs, args.device,
                          args.recipe, args.dtype)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"recipe": args.recipe, "dtype": args.dtype, "backend": jax.default_backend(),
                       "device": device_name(), "jax": jax.__version__, **result},
                      f, indent=2)


if __name__ == "__main__":
    hugepages.restart()  # as the command lines train: cifar_jax/hugepages.py
    sys.exit(main())
