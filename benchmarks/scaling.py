"""Training images/s by device count: `benchmarks.throughput` (cifar_jax only) once per count.

    python -m benchmarks.scaling [--devices 1 2 4] [--models cnn] [--batch-sizes 128 512]

Each count runs in a fresh process: on the CPU with that many simulated devices
(--xla_force_host_platform_device_count, all sharing this machine's cores, so this checks the
sharded code path and its overhead, not a speed-up); on GPUs with CUDA_VISIBLE_DEVICES limited
to the first N cards.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 512])
    p.add_argument("--backend", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    table = {}
    for n in args.devices:
        env = dict(os.environ)
        if args.backend == "cpu":
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
            env["JAX_PLATFORMS"] = "cpu"
        else:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(n)))
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--peers", "--repeats", "3",
                            "--models", *args.models, "--batch-sizes", *map(str, args.batch_sizes),
                            "--json", out.name], env=env, check=True, stdout=subprocess.DEVNULL)
            result = json.load(out)
        for row in result["rows"]:
            by_n = table.setdefault((row["model"], row["batch_size"]), {})
            by_n[n] = row["train_images_per_s"]["cifar_jax"]
    print(f"{'model':5s} {'batch':>5s} " + " ".join(f"{n:>4d} dev" for n in args.devices) + "   (images/s)")
    for (model, batch), by_n in table.items():
        print(f"{model:5s} {batch:5d} " + " ".join(f"{by_n[n]:8,.0f}" for n in args.devices))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"model": m, "batch_size": b, "images_per_s": by_n} for (m, b), by_n in table.items()],
                      f, indent=2)


if __name__ == "__main__":
    main()
