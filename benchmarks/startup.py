"""How long a run waits before and while it trains its first epoch, each phase apart, cold (no
caches: a fresh machine) and warm (the decoded-data and compilation caches a first run leaves):

    python -m benchmarks.startup --data-dir DIR [--models cnn airbench94] [--epochs 1 0.1]

Each measurement is a new process (imports, caches and compiled programs are per process), in a
temporary copy of the prepared data dir and with a temporary compilation cache, so the user's
own caches are neither used nor touched. Phases: import (of cifar_jax's training loop), data
load, state init (the model's and optimiser's initial state, compilation included), the first
epoch's training (its compilation apart), and the whole process's wall time.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
start = time.perf_counter()
import cifar_jax.train as train
from cifar_jax import compilation, data, train_state
phases = {"import": time.perf_counter() - start}

def timed(name, fn):
    def wrapped(*args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
        return out
    return wrapped

data.load_cifar10 = timed("data load", data.load_cifar10)
train_state.from_config = timed("state init", train_state.from_config)
tally = compilation.Tally()
model, epochs, workdir = sys.argv[1], float(sys.argv[2]), sys.argv[3]
history = train.train_and_evaluate(
    train.Config.for_model(model, epochs=epochs, data_dir=sys.argv[4], download=False), workdir,
    progress=False)
phases["first epoch"] = history[0]["seconds"]
phases["compile"] = tally.seconds
phases["programs"], phases["from cache"] = tally.programs, tally.from_cache
print("PHASES " + json.dumps(phases))
"""


def measure(model, epochs, data_dir, cache_dir, workdir):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, model, str(epochs), workdir, data_dir],
                          capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{model}: the run failed:\n{proc.stderr}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("PHASES "))
    return {**json.loads(line[len("PHASES "):]), "process wall": wall}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.startup",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="a prepared TFDS cifar10 (copied, not changed)")
    p.add_argument("--models", nargs="+", default=["cnn", "airbench94"])
    p.add_argument("--epochs", type=float, nargs="+", default=[1.0, 0.1],
                   help="epochs each model trains, in the order of --models (default: 1 0.1: a "
                        "tenth of airbench94's epoch, minutes on a CPU)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    source = os.path.join(args.data_dir, "cifar10")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(source, os.path.join(tmp, "data", "cifar10"),
                        ignore=shutil.ignore_patterns("cifar_jax-cache"))  # no decoded cache yet
        for model, epochs in zip(args.models, args.epochs):
            cache_dir = os.path.join(tmp, f"jax-cache-{model}")
            shutil.rmtree(os.path.join(tmp, "data", "cifar10", "3.0.2", "cifar_jax-cache"),
                          ignore_errors=True)
            runs = {side: measure(model, epochs, os.path.join(tmp, "data"), cache_dir,
                                  os.path.join(tmp, f"{model}-{side}"))
                    for side in ("cold", "warm")}
            results[model] = {"epochs": epochs, **runs}
            print(f"{model} ({epochs:g} epoch): " + "; ".join(
                f"{phase} {runs['cold'][phase]:.1f} s -> {runs['warm'][phase]:.1f} s"
                for phase in ("import", "data load", "state init", "compile", "first epoch",
                              "process wall"))
                  + f"; programs from the cache {runs['warm']['from cache']} of "
                    f"{runs['warm']['programs']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
