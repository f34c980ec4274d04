"""The whole tutorial end to end (MLP 5 epochs + CNN 10 epochs), cifar_jax against Keras.

    python -m benchmarks.tutorial [--data-dir DIR] [--models cnn] [--no-keras] [--json out.json]

Each side runs as a fresh process on the real CIFAR-10 (TFDS), so start-up, data loading,
compilation, training and evaluation all count: cifar_jax is `python -m cifar_jax.train` per
model (its default runs, plots and checkpoints included), on whatever device JAX uses; Keras is
`python -m benchmarks.keras_tutorial` (skipped with --no-keras, or where it is not installed).
The training seconds alone (the epochs' own times from metrics.jsonl) are reported apart.
"""

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time

from benchmarks.throughput import cpu_name


def timed_run(args):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", *args], check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.tutorial", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="TFDS data dir with a prepared cifar10")
    p.add_argument("--models", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"],
                   help="the tutorial's models to run (default: both)")
    p.add_argument("--no-keras", dest="keras", action="store_false",
                   help="time cifar_jax alone (also when Keras is not installed)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    data_args = ["--data-dir", args.data_dir] if args.data_dir else []
    results = {"models": args.models, "cpu": cpu_name()}
    print(f"host: {results['cpu']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        jax_seconds = training_seconds = 0.0
        for model in args.models:
            seconds, out = timed_run(["cifar_jax.train", "--model", model, "--no-progress",
                                      "--workdir", f"{tmp}/{model}", *data_args])
            with open(f"{tmp}/{model}/metrics.jsonl") as f:
                trained = sum(json.loads(line)["seconds"] for line in f)
            jax_seconds += seconds
            training_seconds += trained
            print(f"cifar_jax {model}: {seconds:.1f}s end to end, {trained:.1f}s training "
                  f"({out.splitlines()[0]}); {out.strip().splitlines()[-1]}", flush=True)
        results["cifar_jax_seconds"] = jax_seconds
        results["cifar_jax_training_seconds"] = training_seconds
    if not args.keras or importlib.util.find_spec("keras") is None or args.models != ["mlp", "cnn"]:
        print(f"end to end: cifar_jax {jax_seconds:.1f}s ({training_seconds:.1f}s training)")
        return _write(args.json, results)
    seconds, out = timed_run(["benchmarks.keras_tutorial", *data_args])
    results["keras_seconds"] = seconds
    results["keras"] = json.loads(out.strip().splitlines()[-1])
    results["ratio"] = results["cifar_jax_seconds"] / results["keras_seconds"]
    print(f"keras mlp+cnn: {seconds:.1f}s; {results['keras']}")
    print(f"end to end: cifar_jax {results['cifar_jax_seconds']:.1f}s, keras {seconds:.1f}s, "
          f"ratio {results['ratio']:.2f}")
    return _write(args.json, results)


def _write(path, results):
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
