"""A sweep in one compiled program (`--sweep`, x `--num-seeds`) against its points' separate
runs one after another: training images/s summed over the models, and compile seconds.

    python -m benchmarks.sweep [--model cnn] [--learning-rates 2.5e-4 5e-4 1e-3 2e-3]
                               [--num-seeds 2]

The separate runs take, one after another, as many times one run's time as there are models
(every point's run is the same program but for a constant, and as fast), so their summed rate
is one model's rate; the ratio is the sweep's summed rate over it. Each separate run also
compiles its own program (its learning rate is a constant in it), the sweep once. Passes
alternate between the sides, so drift hits both alike; the median of `--repeats` counts.
Synthetic data.
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


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    p.add_argument("--batch-size", type=int, default=32, help="per model (default: 32)")
    p.add_argument("--learning-rates", type=float, nargs="+", default=[2.5e-4, 5e-4, 1e-3, 2e-3],
                   help="the swept points (default: 2.5e-4 5e-4 1e-3 2e-3)")
    p.add_argument("--num-seeds", type=int, default=2, help="seeds per point (default: 2)")
    add_pass_flags(p, 4096, per="pass, per model")
    args = p.parse_args(argv)
    print(describe_device(), flush=True)
    models = len(args.learning_rates) * args.num_seeds
    single = JaxSide(args.model, args.batch_size, args.images)
    swept = JaxSide(args.model, args.batch_size, args.images, num_seeds=args.num_seeds,
                    sweep={"learning_rate": args.learning_rates})
    rates = interleaved_medians({"separate": single.train_pass, "sweep": swept.train_pass},
                                args.repeats)
    one, together = rates["separate"], rates["sweep"]
    row = {"model": args.model, "batch_size": args.batch_size, "points": len(args.learning_rates),
           "num_seeds": args.num_seeds, "separate_images_per_s": one,
           "sweep_images_per_s": together, "ratio": together / one,
           "sweep_compile_s": swept.compile_s, "separate_compile_s": models * single.compile_s}
    print(f"{args.model} b{args.batch_size}, {len(args.learning_rates)} points x {args.num_seeds} "
          f"seeds: the sweep {together:,.0f} img/s (summed), {models} separate runs {one:,.0f} "
          f"img/s: x{together / one:.2f}; compile {swept.compile_s:.1f} s once against "
          f"{models} x {single.compile_s:.1f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name(), **row}, f, indent=2)


if __name__ == "__main__":
    hugepages.restart()  # as the command lines train: cifar_jax/hugepages.py
    main()
