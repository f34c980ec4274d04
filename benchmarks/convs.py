"""cifar_jax's two CPU convolutions against each other: `ops.conv_as_matmul` (im2col: shifted
slices and one matmul) and `ops.conv_winograd` (Winograd's F(2x2, 3x3): 16 matmuls, 4/9 of the
multiplies; as the recipes run it, and on every layer, the first with 24 channels too), on
airbench94's 3x3 layers one by one and in its whole training step.

    python -m benchmarks.convs                       # layers at batch 128, the step at 1024
    python -m benchmarks.convs --step-batch-size 512 --json out.json

Layers: forward and backward of each 3x3 convolution of airbench94 (its input sizes, channels
and padding; random data), the best of `--repeats` calls. Step: airbench94's compiled training
step (`benchmarks.airbench.JaxSide`, random data) built with either convolution, passes taken in
turn and the median counting, with each program's compile seconds (no compilation cache: a new
program each).
"""

import argparse
import functools
import json
import time

import jax
import numpy as np

from benchmarks.airbench import JaxSide
from benchmarks.throughput import describe_device, device_name, interleaved_medians
from cifar_jax import hugepages, ops, register_model
from cifar_jax.config import lookup
from cifar_jax.models.airbench import AirbenchNet

# "winograd" as the recipes run it (layers of fewer than 64 input channels by im2col: the first),
# "winograd_all" with every 3x3 layer of 4x4 outputs or more by Winograd, the first too.
CONVS = {"im2col": ops.conv_as_matmul, "winograd": ops.conv_winograd,
         "winograd_all": functools.partial(ops.conv_winograd, min_channels=1)}
NHWC = ("NHWC", "HWIO", "NHWC")
# airbench94's 3x3 convolutions: (input side, in channels, out channels, padding). Each group's
# conv1 pads for the pool after it (`ops.same_padding_for_pool`), its conv2 is 'SAME'.
LAYERS = [(31, 24, 64, ((1, 0), (1, 0))), (15, 64, 64, "SAME"), (15, 64, 256, ((1, 0), (1, 0))),
          (7, 256, 256, "SAME"), (7, 256, 256, ((1, 0), (1, 0))), (3, 256, 256, "SAME")]


def airbench94_im2col(dtype):
    return AirbenchNet(dtype=dtype, conv=ops.conv_as_matmul)


def airbench94_winograd(dtype):
    return AirbenchNet(dtype=dtype, conv=ops.conv_winograd)


def airbench94_winograd_all(dtype):
    return AirbenchNet(dtype=dtype, conv=CONVS["winograd_all"])


def _best_ms(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def layers(batch_size, repeats):
    rng = np.random.default_rng(0)
    rows = []
    for side, cin, cout, padding in LAYERS:
        x = rng.standard_normal((batch_size, side, side, cin), np.float32)
        w = rng.standard_normal((3, 3, cin, cout), np.float32) / np.sqrt(9 * cin)
        row = {"input": [side, side, cin], "out_channels": cout, "padding": str(padding)}
        for name, conv in CONVS.items():
            def loss(x, w, conv=conv, padding=padding):
                return (conv(x, w, (1, 1), padding, dimension_numbers=NHWC) ** 2).sum()
            row[f"{name}_ms"] = _best_ms(jax.jit(jax.grad(loss, (0, 1))), (x, w), repeats)
        rows.append(row)
        print(f"{side}x{side}x{cin} -> {cout}: forward + backward "
              + ", ".join(f"{name} {row[f'{name}_ms']:.1f} ms" for name in CONVS), flush=True)
    total = {name: sum(r[f"{name}_ms"] for r in rows) for name in CONVS}
    print("all layers: " + ", ".join(f"{name} x{total['im2col'] / total[name]:.2f}"
                                     for name in CONVS), flush=True)
    return rows


def step(batch_size, steps_per_pass, repeats):
    recipe = lookup("model", "airbench94").recipe
    for build in (airbench94_im2col, airbench94_winograd, airbench94_winograd_all):
        register_model(build.__name__, build, **recipe)
    sides = {name: JaxSide(batch_size, steps_per_pass, recipe=f"airbench94_{name}")
             for name in CONVS}
    result = interleaved_medians({name: side.train_pass for name, side in sides.items()}, repeats)
    result["ratio"] = result["winograd"] / result["im2col"]
    result.update({f"{name}_compile_s": side.compile_s for name, side in sides.items()})
    print(f"airbench94 step, batch {batch_size}: " + ", ".join(
        f"{name} {result[name]:,.1f} img/s (compile {result[f'{name}_compile_s']:.1f} s)"
        for name in CONVS) + f"; winograd x{result['ratio']:.2f} im2col", flush=True)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.convs",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=128, help="the layers' batch (default: 128)")
    p.add_argument("--step-batch-size", type=int, default=1024,
                   help="the training step's batch (default: 1024, airbench94's)")
    p.add_argument("--steps", type=int, default=2, help="steps per timed pass (default: 2)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed calls per layer, timed passes per step (default: 3)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    print(describe_device(), flush=True)
    result = {"layers": layers(args.batch_size, args.repeats),
              "step": step(args.step_batch_size, args.steps, args.repeats)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name(), "jax": jax.__version__, **result},
                      f, indent=2)


if __name__ == "__main__":
    hugepages.restart()  # as the command lines train: cifar_jax/hugepages.py
    main()
