"""N models at once (`--num-seeds N`, one vmapped program) against N runs one after another:
training images/s summed over the models, on the current backend.

    python -m benchmarks.seeds [--models cnn mlp] [--batch-size 32] [--num-seeds 1 4 8]

N sequential runs take N times one run's time, so their summed rate is one model's rate; the
ratio is the N-model program's summed rate over it. Passes are interleaved with the one-model
side, so drift hits both alike; the median of `--repeats` passes counts. Synthetic data.
"""

import argparse
import json

from benchmarks.throughput import (
    JaxSide,
    add_pass_flags,
    describe_device,
    device_name,
    interleaved_medians,
)
from cifar_jax import hugepages


def measure(name, batch_size, num_seeds, n_images, repeats, single):
    many = JaxSide(name, batch_size, n_images, num_seeds=num_seeds)
    rates = interleaved_medians({"one": single.train_pass, "many": many.train_pass}, repeats)
    one, together = rates["one"], rates["many"]
    row = {"model": name, "batch_size": batch_size, "num_seeds": num_seeds,
           "sequential_images_per_s": one, "together_images_per_s": together,
           "ratio": together / one, "compile_s": many.compile_s}
    print(f"{name} b{batch_size} N={num_seeds}: together {together:,.0f} img/s (summed), "
          f"{num_seeds} sequential runs {one:,.0f} img/s: x{together / one:.2f}; "
          f"compile {many.compile_s:.1f} s", flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.seeds",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["cnn", "mlp"], choices=("cnn", "mlp"))
    p.add_argument("--batch-size", type=int, default=32, help="per model (default: 32)")
    p.add_argument("--num-seeds", type=int, nargs="+", default=[1, 4, 8],
                   help="models trained at once (default: 1 4 8)")
    add_pass_flags(p, 4096, per="pass, per model")
    args = p.parse_args(argv)
    print(describe_device(), flush=True)
    rows = []
    for name in args.models:
        single = JaxSide(name, args.batch_size, args.images)
        rows += [measure(name, args.batch_size, n, args.images, args.repeats, single)
                 for n in args.num_seeds]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    hugepages.restart()  # as the command lines train: cifar_jax/hugepages.py
    main()
