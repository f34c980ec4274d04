"""airbench94_muon in PyTorch: the peer that cifar_jax's `airbench94_muon` recipe is run beside.

A port of KellerJordan/cifar10-airbench `airbench94_muon.py` (94.01% mean test accuracy, n=200, in
2.59 s on an A100), fed the uint8 NHWC numpy arrays of `cifar_jax.data.load_cifar10` so that both
ports train on the very same data. The pieces both originals share (the conv groups, the data
pipeline, the test-time augmentation, the whitening maths) are imported from
`benchmarks.airbench_torch`; what is new here is what airbench94_muon changes:

* Network: the stem is a plain nn.Conv2d(3, 24, 2) (its bias PyTorch's default,
  U(-1/sqrt(12), 1/sqrt(12)), its weight frozen and set to the whitening filters in ascending
  eigenvalue order); the head's weight is rescaled to unit std at init and its output divided
  by its width (256) instead of x 1/9.
* Optimisers: `Muon` (the original's class: Nesterov momentum 0.6 on the raw gradient, each
  filter renormalised to norm sqrt(out_channels) before the step, the update orthogonalised by
  3 Newton-Schulz steps, lr 0.24, no decay) on the trained 4-D filters; Nesterov SGD (momentum
  0.85, coupled decay 2e-6 x batch size, given as weight_decay = wd / lr) on the stem bias and
  BatchNorm biases (lr 0.053) and the head (lr 0.67).
* Schedule: each lr = initial x (1 - step / total_steps), set before each step; the stem bias's
  over its first ceil(3 x steps per epoch) steps, after which it gets no gradient. No warm-up,
  no lookahead. Batch 2000 (last partial batch dropped), ceil(8 x 25) = 200 steps.
* Loss: cross-entropy with label smoothing 0.2, summed.

`--epochs E` is the original with 8 -> E: the stem bias keeps its ceil(3 x 25) steps, so in a run
shorter than 3 epochs it trains throughout and its lr stops short of zero (as in the JAX recipe).

`device="cuda"` runs as the original: half precision with BatchNorm in float32, Newton-Schulz in
bfloat16, fused SGD, cuDNN autotuning. `device="cpu"` runs everything in float32 (Newton-Schulz
too). Where this port differs from the original: no torch.compile; the data's order is TFDS's (so
are the 5,000 whitening images); the head is rescaled in float32 before the cast to half; per-epoch
train loss/accuracy are epoch means (the last batch's kept as last_batch_*); timing by
synchronize and a wall clock, the whitening init counted as training, the TTA evaluation apart.

Usage:

    python -m benchmarks.airbench_muon_torch --data-dir /work/data/tfr --seeds 0 1 2 --device cuda
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# airbench_torch loads torch._dynamo (or hides triton) before cifar_jax.data brings TensorFlow in.
from benchmarks import airbench_torch as ab

SOURCE = "KellerJordan/cifar10-airbench airbench94_muon.py"

# The recipe's hyperparameters, as named in the original's main().
BATCH_SIZE = 2000
EPOCHS = 8
BIAS_LR = 0.053         # the stem bias and the BatchNorm biases
HEAD_LR = 0.67
WD_PER_EXAMPLE = 2e-6   # wd = 2e-6 * batch_size, the absolute decay per step at the full lr
SGD_MOMENTUM = 0.85
MUON_LR = 0.24
MUON_MOMENTUM = 0.6
NS_STEPS = 3
WHITEN_BIAS_EPOCHS = 3
LABEL_SMOOTHING = 0.2
TTA_LEVEL = 2
WIDTHS = (64, 256, 256)
WHITEN_IMAGES = 5000


# ----------------------------------------------------------------------------------------------
# Muon (the original's, with the Newton-Schulz dtype a parameter)
# ----------------------------------------------------------------------------------------------

def zeropower_via_newtonschulz5(G, steps=NS_STEPS, eps=1e-7, dtype=torch.bfloat16):
    """The original's: a quintic Newton-Schulz iteration towards the orthogonal factor of G, in
    `dtype` (the original's bfloat16 by default)."""
    assert len(G.shape) == 2
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.to(dtype)
    X /= (X.norm() + eps)  # ensure top singular value <= 1
    if G.size(0) > G.size(1):
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(0) > G.size(1):
        X = X.T
    return X


class Muon(torch.optim.Optimizer):
    """The original's Muon (nesterov=True is the recipe's); `ns_dtype` is Newton-Schulz's."""

    def __init__(self, params, lr=1e-3, momentum=0, nesterov=False, ns_dtype=torch.bfloat16):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov})
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(g)
                g = g.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.data.mul_(len(p.data) ** 0.5 / p.data.norm())  # normalise the weight
                update = zeropower_via_newtonschulz5(g.reshape(len(g), -1),
                                                     dtype=self.ns_dtype).view(g.shape)
                p.data.add_(update, alpha=-lr)


# ----------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------

class CifarNet(nn.Module):
    """airbench94's network (airbench_torch's conv groups) with airbench94_muon's stem and head."""

    def __init__(self, widths=WIDTHS):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)  # PyTorch's default init
        self.whiten.weight.requires_grad_(False)
        self.group1 = ab.ConvGroup(24, widths[0])
        self.group2 = ab.ConvGroup(widths[0], widths[1])
        self.group3 = ab.ConvGroup(widths[1], widths[2])
        self.head = nn.Linear(widths[2], 10, bias=False)
        with torch.no_grad():
            self.head.weight.mul_(1 / self.head.weight.std())  # the original's reset()

    def forward(self, x, whiten_bias_grad=True):
        b = self.whiten.bias
        x = F.gelu(F.conv2d(x, self.whiten.weight, b if whiten_bias_grad else b.detach()))
        x = self.group3(self.group2(self.group1(x)))
        x = F.max_pool2d(x, 3).flatten(1)
        return self.head(x) / x.size(-1)


def make_net(device, widths=WIDTHS):
    """The network on `device`: float32 on the CPU; on CUDA half precision with BatchNorm kept in
    float32, as the original. channels_last either way."""
    net = CifarNet(widths)
    if device.type == "cuda":
        net = net.half()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.float()
    return net.to(device=device, memory_format=torch.channels_last)


def init_whitening(conv, images):
    """The stem's weight from `images` (normalised, NCHW) in the original's order: eigenvalues
    ascending, then the negations (airbench_torch's puts the largest first)."""
    ab.init_whitening(conv, images)
    with torch.no_grad():
        w = conv.weight
        half = len(w) // 2
        w.copy_(torch.cat([w[:half].flip(0), w[half:].flip(0)]))


# ----------------------------------------------------------------------------------------------
# Optimisers and their schedule
# ----------------------------------------------------------------------------------------------

def make_optimizers(net, batch_size=BATCH_SIZE):
    """(SGD, Muon) over `net`'s groups, as the original's main(); each group's `initial_lr` set."""
    wd = WD_PER_EXAMPLE * batch_size
    cuda = net.head.weight.is_cuda
    filters = [p for p in net.parameters() if p.ndim == 4 and p.requires_grad]
    norm_biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    groups = [{"params": [net.whiten.bias], "lr": BIAS_LR, "weight_decay": wd / BIAS_LR},
              {"params": norm_biases, "lr": BIAS_LR, "weight_decay": wd / BIAS_LR},
              {"params": [net.head.weight], "lr": HEAD_LR, "weight_decay": wd / HEAD_LR}]
    sgd = torch.optim.SGD(groups, momentum=SGD_MOMENTUM, nesterov=True, fused=cuda or None)
    muon = Muon(filters, lr=MUON_LR, momentum=MUON_MOMENTUM, nesterov=True,
                ns_dtype=torch.bfloat16 if cuda else torch.float32)
    for opt in (sgd, muon):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return sgd, muon


def optimizer_step(optimizers, step, total_steps, whiten_steps):
    """The original's lr setting and steps for 0-based `step`: the stem bias's lr decays over
    `whiten_steps` (it has no gradient afterwards), every other over `total_steps`."""
    sgd, muon = optimizers
    for group in sgd.param_groups[:1]:
        group["lr"] = group["initial_lr"] * (1 - step / whiten_steps)
    for group in sgd.param_groups[1:] + muon.param_groups:
        group["lr"] = group["initial_lr"] * (1 - step / total_steps)
    for opt in optimizers:
        opt.step()


def throughput_pass(batch_size=BATCH_SIZE, steps=4, device="cpu", warmup=2):
    """A function that runs `steps` training steps of the network and both optimisers on random
    data and returns the images/s they ran at: the same step as `train` (forward, summed
    smoothed loss, backward, the lr setting, SGD and Muon), no data loading or augmentation.
    `warmup` steps run once first, untimed."""
    device = ab._device(device)
    torch.manual_seed(0)
    net = make_net(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x = torch.randn(batch_size, 3, 32, 32, device=device, dtype=dtype)  # NCHW, as crops are
    y = torch.randint(0, 10, (batch_size,), device=device)
    init_whitening(net.whiten, x)
    optimizers = make_optimizers(net, batch_size)
    total = 1_000_000  # a long schedule: the passes never reach its end
    net.train()
    done = 0

    def run(n):
        nonlocal done
        for _ in range(n):
            loss = F.cross_entropy(net(x), y, label_smoothing=LABEL_SMOOTHING, reduction="sum")
            loss.backward()
            optimizer_step(optimizers, done, total, total)
            net.zero_grad(set_to_none=True)
            done += 1

    def timed_pass():
        ab._sync(device)
        start = time.perf_counter()
        run(steps)
        ab._sync(device)
        return steps * batch_size / (time.perf_counter() - start)

    run(warmup)
    return timed_pass


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

def train(train_images, train_labels, test_images, test_labels, *, seed=0, epochs=EPOCHS,
          device="cpu", progress=True, batch_size=BATCH_SIZE, widths=WIDTHS):
    """Train airbench94_muon on the given uint8 NHWC images and int labels; return the results,
    as `airbench_torch.train`'s. `batch_size` and `widths` other than the recipe's are for tests
    on small sets (the decay then follows the original's formula for that batch size)."""
    from tqdm.auto import tqdm

    device = ab._device(device)
    torch.manual_seed(seed)
    x_train = ab.to_device_images(train_images, device)
    y_train = torch.from_numpy(np.asarray(train_labels, dtype=np.int64)).to(device)
    x_test = ab.normalize(ab.to_device_images(test_images, device))
    y_test = torch.from_numpy(np.asarray(test_labels, dtype=np.int64)).to(device)

    batches = ab.TrainBatches(x_train, y_train, batch_size)  # flip + translate 2, as the original
    if len(batches) == 0:
        raise ValueError(f"{len(x_train)} training images make no full batch of {batch_size}")
    total_steps = math.ceil(epochs * len(batches))
    whiten_steps = math.ceil(WHITEN_BIAS_EPOCHS * len(batches))
    n_epochs = math.ceil(total_steps / len(batches))

    net = make_net(device, widths)
    optimizers = make_optimizers(net, batch_size)

    ab._sync(device)
    start = time.perf_counter()
    init_whitening(net.whiten, ab.normalize(x_train[:WHITEN_IMAGES]))
    ab._sync(device)
    train_seconds = time.perf_counter() - start

    rows, step = [], 0
    for epoch in range(n_epochs):
        epoch_steps = min(len(batches), total_steps - step)
        desc = f"seed {seed} epoch {epoch + 1}/{n_epochs}"
        bar = tqdm(total=epoch_steps, desc=desc, leave=False, disable=not progress)
        ab._sync(device)
        start = time.perf_counter()
        net.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for inputs, labels in batches:
            outputs = net(inputs, whiten_bias_grad=step < whiten_steps)
            loss = F.cross_entropy(outputs, labels, label_smoothing=LABEL_SMOOTHING,
                                   reduction="sum")
            loss.backward()
            optimizer_step(optimizers, step, total_steps, whiten_steps)
            net.zero_grad(set_to_none=True)
            step += 1
            loss_sum += loss.detach().float()
            correct += (outputs.detach().argmax(1) == labels).sum()
            seen += len(labels)
            bar.update(1)
            if step >= total_steps:
                break
        ab._sync(device)
        seconds = time.perf_counter() - start
        bar.close()
        train_seconds += seconds
        row = {"epoch": epoch + 1,
               "train_loss": loss_sum.item() / seen,
               "train_accuracy": correct.item() / seen,
               "last_batch_loss": loss.item() / len(labels),
               "last_batch_accuracy": (outputs.argmax(1) == labels).float().mean().item(),
               "test_accuracy": ab.evaluate(net, x_test, y_test, tta_level=0),
               "seconds": round(seconds, 4)}
        rows.append(row)
        if progress:
            print(f"{desc}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
                  f"test acc {row['test_accuracy']:.4f}  {seconds:.2f}s "
                  f"({seen / seconds:,.0f} img/s)", flush=True)

    ab._sync(device)
    start = time.perf_counter()
    test_accuracy_tta = ab.evaluate(net, x_test, y_test, tta_level=TTA_LEVEL)
    ab._sync(device)
    tta_seconds = time.perf_counter() - start
    result = {"seed": seed, "epochs": epochs, "steps": total_steps, "device": str(device),
              "rows": rows,
              "test_accuracy": rows[-1]["test_accuracy"],
              "test_accuracy_tta": test_accuracy_tta,
              "train_seconds": train_seconds,
              "tta_seconds": tta_seconds,
              "images_per_second": total_steps * batch_size / train_seconds}
    if progress:
        print(f"seed {seed}  final test acc {result['test_accuracy']:.4f}  "
              f"with TTA {test_accuracy_tta:.4f}  train {train_seconds:.2f}s "
              f"({result['images_per_second']:,.0f} img/s)  TTA eval {tta_seconds:.2f}s",
              flush=True)
    return result


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.airbench_muon_torch",
        description="Train the airbench94_muon recipe (KellerJordan/cifar10-airbench, "
                    "airbench94_muon.py) in PyTorch on CIFAR-10 from cifar_jax's loader, one run "
                    "per seed, and report test accuracy and training speed.")
    p.add_argument("--data-dir", required=True,
                   help="a prepared TFDS cifar10 folder, read with cifar_jax.data.load_cifar10")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="one training run per seed, in turn (default: 0)")
    p.add_argument("--epochs", type=float, default=EPOCHS,
                   help=f"training epochs, fractions allowed (default: {EPOCHS}, the recipe's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: float32; cuda: half precision as the original (default: cpu)")
    p.add_argument("--json", metavar="PATH",
                   help="also write the per-seed results and a summary to this JSON file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    from cifar_jax import data

    splits = data.load_cifar10(args.data_dir, download=False)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    results = [train(train_x, train_y, test_x, test_y, seed=seed, epochs=args.epochs,
                     device=args.device, progress=True) for seed in args.seeds]
    summary = {**ab.summarise(results), "source": SOURCE}
    spread = f" ± {summary['test_accuracy_tta_std']:.4f}" if len(results) > 1 else ""
    print(f"airbench94_muon PyTorch, {len(results)} seed(s), {args.epochs:g} epochs: test "
          f"accuracy with TTA {summary['test_accuracy_tta_mean']:.4f}{spread}, mean train time "
          f"{summary['train_seconds_mean']:.2f}s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": results, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
