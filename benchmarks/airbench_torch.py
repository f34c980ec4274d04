"""airbench94 in PyTorch: the peer that cifar_jax's JAX port of the recipe is measured against.

A port of the airbench94 recipe from KellerJordan/cifar10-airbench, file `legacy/airbench94.py`
(Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", arXiv 2404.00498), written
afresh for this project: same network, initialisation, optimiser, schedules, lookahead,
augmentation and test-time augmentation, but fed the uint8 NHWC numpy arrays that
`cifar_jax.data.load_cifar10` returns, so that both ports train on the very same data on the same
machine. The original reports 94.01% mean test accuracy (n=1000) in 3.83 s on one A100.

The recipe:

* Network (1,972,792 parameters, of which 1,971,352 train: the stem's 288 weights and the
  1,152 BatchNorm scales are fixed, and the stem's 24 biases train in epochs 1-3 only): a 2x2
  VALID conv 3->24 with bias whose weights are fixed whitening filters (eigenvectors of the
  2x2-patch covariance of the first 5000 normalised training images, scaled by
  1/sqrt(eigenvalue + 5e-4), and their negations), GELU; three groups of [conv3x3 SAME no
  bias, maxpool 2, BatchNorm, GELU, conv3x3, BatchNorm, GELU] of widths 64, 256, 256;
  maxpool 3; Linear(256, 10, no bias); times 1/9. BatchNorm: eps 1e-12, running statistics
  new = 0.6 old + 0.4 batch, scale fixed at 1, bias trained. Convolutions: PyTorch's default
  init, then identity ("dirac") on the first in_channels filters, bias zero.
* Training: batch 1024, last partial batch dropped; cross-entropy with label smoothing 0.2,
  summed over the batch; Nesterov SGD, momentum 0.85, lr = 11.5 / (1024 (1 + 1/(1 - 0.85))) and
  coupled weight decay 0.0153 * 1024 / (1024 (1 + 1/(1 - 0.85))) in absolute terms, BatchNorm
  biases at 64x the lr with the same absolute decay; lr multiplier 0.2 -> 1 linearly over the
  first 23% of steps, then -> 0.07; lookahead every 5 steps (ema <- lerp(ema, params, 1 - d),
  params <- ema, d = 0.95**5 (step / total)**3; at the end the model takes the ema), over the
  BatchNorm running statistics too; ceil(48 * epochs) steps, the last epoch cut short.
* Data: normalised by the CIFAR-10 mean and std; "alternating flip" (each image flipped with
  p = 0.5 once, then the whole set flipped on every odd epoch) and a random translation of up to
  2 pixels with reflect padding, new every epoch; order by `torch.randperm`.
* Evaluation: plain after every epoch; at the end with 6-view test-time augmentation (0.5 x the
  flip-averaged logits + 0.5 x the mean of the flip-averaged logits of the image shifted one
  pixel up-left and one down-right, reflect-padded).

`device="cuda"` runs as the original does: half precision, BatchNorm in float32,
channels_last, cuDNN autotuning (so a process's first run carries the autotuning). `device="cpu"`
runs in float32 (channels_last), and a seed then gives a reproducible run.

Timing follows the original: the whitening initialisation and the per-epoch data augmentation
count as training time; moving the uint8 data to the device and converting it does not, nor does
evaluation (the original also counts its final TTA evaluation, reported here apart as
`tta_seconds`).

Where this port differs from the original, and why:

* Data comes from `cifar_jax.data.load_cifar10` (TFDS) rather than torchvision, so the training
  set's order, and with it the 5000 images the whitening filters are computed from, differs.
* Per-epoch `train_loss` / `train_accuracy` are means over the epoch's examples, as cifar_jax
  reports them; the original prints those of the epoch's last batch, kept here as
  `last_batch_loss` / `last_batch_accuracy`.
* Timing uses `torch.cuda.synchronize()` and a wall clock instead of CUDA events.
* Importing this module loads torch._dynamo (which torch.optim needs) at once: loaded after
  TensorFlow, its triton library crashes the process (see `_load_dynamo_before_tensorflow`).

Usage:

    python -m benchmarks.airbench_torch --data-dir /work/data/tfr --seeds 0 1 2 --device cuda
    python -m benchmarks.airbench_torch --throughput --device cpu
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _load_dynamo_before_tensorflow():
    """torch.optim imports torch._dynamo, which imports triton, whose native library crashes
    the process (segfault) when TensorFlow's is already loaded, as `cifar_jax.data` loads it.
    So load them now; if TensorFlow is in already, hide triton instead (nothing here compiles)."""
    if "triton" not in sys.modules and "tensorflow" in sys.modules:
        sys.modules["triton"] = None  # `import triton` then fails cleanly; torch copes
    import torch._dynamo  # noqa: F401


_load_dynamo_before_tensorflow()

SOURCE = "KellerJordan/cifar10-airbench legacy/airbench94.py"

# The recipe's hyperparameters, as named in the original.
BATCH_SIZE = 1024
EPOCHS = 9.9
LR = 11.5               # per 1024 examples, decoupled from the momentum
MOMENTUM = 0.85
WEIGHT_DECAY = 0.0153   # per 1024 examples, decoupled from the lr
BIAS_SCALER = 64.0      # lr multiplier (not decay) for BatchNorm biases
LABEL_SMOOTHING = 0.2
WHITEN_BIAS_EPOCHS = 3
TRANSLATE = 2
WIDTHS = (64, 256, 256)
BN_MOMENTUM = 0.6       # weight of the old running statistics
SCALING_FACTOR = 1 / 9
TTA_LEVEL = 2
WHITEN_IMAGES = 5000
WHITEN_EPS = 5e-4
WARMUP_FRACTION = 0.23
LOOKAHEAD_EVERY = 5
EVAL_BATCH = 2000

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# ----------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------

class DiracConv(nn.Conv2d):
    """Conv2d with PyTorch's default init, then identity on the first in_channels filters and
    a zero bias."""

    def __init__(self, c_in, c_out, kernel_size=3, padding="same", bias=False):
        super().__init__(c_in, c_out, kernel_size, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        with torch.no_grad():
            if self.bias is not None:
                self.bias.zero_()
            n = min(self.in_channels, self.out_channels)
            nn.init.dirac_(self.weight[:n])


class ShiftOnlyBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays at 1 (not trained); only the bias trains."""

    def __init__(self, channels, momentum=BN_MOMENTUM, eps=1e-12):
        # PyTorch's momentum is the weight of the new batch statistics.
        super().__init__(channels, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1 = DiracConv(c_in, c_out)
        self.norm1 = ShiftOnlyBatchNorm(c_out)
        self.conv2 = DiracConv(c_out, c_out)
        self.norm2 = ShiftOnlyBatchNorm(c_out)

    def forward(self, x):
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    def __init__(self, widths=WIDTHS):
        super().__init__()
        self.whiten = DiracConv(3, 24, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.group1 = ConvGroup(24, widths[0])
        self.group2 = ConvGroup(widths[0], widths[1])
        self.group3 = ConvGroup(widths[1], widths[2])
        self.head = nn.Linear(widths[2], 10, bias=False)

    def forward(self, x):
        x = F.gelu(self.whiten(x))
        x = self.group3(self.group2(self.group1(x)))
        x = F.max_pool2d(x, 3).flatten(1)
        return self.head(x) * SCALING_FACTOR


def make_net(device):
    """The network on `device`: float32 on the CPU; on CUDA half precision with BatchNorm kept in
    float32, as the original. channels_last either way."""
    net = AirbenchNet()
    if device.type == "cuda":
        net = net.half()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.float()
    return net.to(device=device, memory_format=torch.channels_last)


def init_whitening(conv, images, eps=WHITEN_EPS):
    """Set the stem's weight to whitening filters for `images` (normalised, NCHW) and their
    negations: eigenvectors of the patch covariance, largest eigenvalue first, each divided by
    sqrt(eigenvalue + eps)."""
    c, (kh, kw) = images.shape[1], conv.kernel_size
    # [N, C*kh*kw, L]: each column a patch, flattened (c, y, x) like the conv weight.
    cols = F.unfold(images.float(), (kh, kw))
    patches = cols.transpose(1, 2).reshape(-1, c * kh * kw)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance, UPLO="U")  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # rows, descending
    filters = (eigenvectors / torch.sqrt(eigenvalues + eps)[:, None]).reshape(-1, c, kh, kw)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([filters, -filters]))


# ----------------------------------------------------------------------------------------------
# Optimiser, schedules, lookahead
# ----------------------------------------------------------------------------------------------

def make_optimizer(net, batch_size=BATCH_SIZE):
    """Nesterov SGD in the original's parametrisation: the lr is divided by the step-size gain of
    momentum, and the decay is set so that its absolute size is WEIGHT_DECAY per 1024 examples in
    both groups (BatchNorm biases get BIAS_SCALER times the lr)."""
    kilostep_scale = 1024 * (1 + 1 / (1 - MOMENTUM))
    lr = LR / kilostep_scale
    wd = WEIGHT_DECAY * batch_size / kilostep_scale
    lr_biases = lr * BIAS_SCALER
    bn_params = {id(p) for m in net.modules() if isinstance(m, nn.BatchNorm2d)
                 for p in m.parameters()}
    norm_biases = [p for p in net.parameters() if p.requires_grad and id(p) in bn_params]
    others = [p for p in net.parameters() if p.requires_grad and id(p) not in bn_params]
    groups = [{"params": norm_biases, "lr": lr_biases, "weight_decay": wd / lr_biases},
              {"params": others, "lr": lr, "weight_decay": wd / lr}]
    return torch.optim.SGD(groups, momentum=MOMENTUM, nesterov=True)


def lr_multiplier(step, total_steps):
    """0.2 -> 1 linearly over the first 23% of the steps, then 1 -> 0.07 at the end."""
    warmup = int(total_steps * WARMUP_FRACTION)
    if step < warmup:
        t = step / warmup
        return 0.2 + 0.8 * t
    t = (step - warmup) / (total_steps - warmup)
    return 1.0 - 0.93 * t


def lookahead_decays(total_steps):
    """d[step] = 0.95**5 * (step / total)**3 for step in 0..total, as float32 like the original."""
    return 0.95 ** 5 * (torch.arange(total_steps + 1) / total_steps) ** 3


class Lookahead:
    """A slow copy of every floating-point entry of the state dict (BatchNorm running statistics
    included) that the model is pulled back to every few steps."""

    def __init__(self, net):
        self.slow = [v.clone() for v in net.state_dict().values()]

    @torch.no_grad()
    def update(self, net, decay):
        for slow, fast in zip(self.slow, net.state_dict().values()):
            if fast.dtype in (torch.float16, torch.float32):
                slow.lerp_(fast, 1 - decay)
                fast.copy_(slow)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def to_device_images(images, device):
    """uint8 NHWC numpy -> [0, 1] NCHW channels_last on `device` (half on CUDA, as the original)."""
    # A copy: the decoded-data cache is memory-mapped read-only, which torch warns about.
    x = torch.from_numpy(np.array(images, order="C")).to(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return (x.to(dtype) / 255).permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last


def normalize(x):
    mean = torch.tensor(CIFAR_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def random_flip(x):
    flip = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_crop(padded, size):
    """Each image of `padded` cropped to size x size at an independent random offset
    (both offsets uniform over the 2r + 1 positions); done in two passes, rows then columns."""
    r = (padded.shape[-1] - size) // 2
    n = len(padded)
    shifts = torch.randint(-r, r + 1, (n, 2), device=padded.device)
    rows = torch.empty((n, padded.shape[1], size, padded.shape[-1]),
                       device=padded.device, dtype=padded.dtype)
    for s in range(-r, r + 1):
        sel = shifts[:, 0] == s
        rows[sel] = padded[sel, :, r + s:r + s + size, :]
    out = torch.empty((n, padded.shape[1], size, size), device=padded.device, dtype=padded.dtype)
    for s in range(-r, r + 1):
        sel = shifts[:, 1] == s
        out[sel] = rows[sel, :, :, r + s:r + s + size]
    return out


class TrainBatches:
    """The original loader's augmentation and order: on the first pass the set is normalised,
    flipped at random (p = 0.5) and reflect-padded once; every pass crops it afresh, flips all of
    it on odd passes, and yields the full batches of a `torch.randperm` order."""

    def __init__(self, images, labels, batch_size):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.padded = None
        self.epoch = 0

    def __len__(self):
        return len(self.images) // self.batch_size

    def __iter__(self):
        if self.padded is None:
            flipped = random_flip(normalize(self.images))
            self.padded = F.pad(flipped, (TRANSLATE,) * 4, mode="reflect")
        images = random_crop(self.padded, self.images.shape[-1])
        if self.epoch % 2 == 1:
            images = images.flip(-1)
        self.epoch += 1
        order = torch.randperm(len(images), device=images.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield images[idx], self.labels[idx]


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

def _mirror_logits(net, x):
    return 0.5 * net(x) + 0.5 * net(x.flip(-1))


def _tta_logits(net, x, level):
    if level == 0:
        return net(x)
    if level == 1:
        return _mirror_logits(net, x)
    # level 2: 6 views, translated by one pixel up-left and down-right, each flip-averaged.
    padded = F.pad(x, (1,) * 4, mode="reflect")
    h, w = x.shape[-2:]
    shifted = [padded[:, :, :h, :w], padded[:, :, 2:h + 2, 2:w + 2]]
    translated = torch.stack([_mirror_logits(net, s) for s in shifted]).mean(0)
    return 0.5 * _mirror_logits(net, x) + 0.5 * translated


@torch.no_grad()
def evaluate(net, images, labels, tta_level=0):
    """Accuracy of `net` on normalised `images`, with the original's test-time augmentation."""
    net.eval()
    logits = torch.cat([_tta_logits(net, x, tta_level) for x in images.split(EVAL_BATCH)])
    return (logits.argmax(1) == labels).float().mean().item()


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(device):
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the original
    return device


def train(train_images, train_labels, test_images, test_labels, *, seed=0, epochs=EPOCHS,
          device="cpu", progress=True, batch_size=BATCH_SIZE):
    """Train airbench94 on the given uint8 NHWC images and int labels; return the run's results.

    `progress` shows a bar per epoch and prints a line after each. `batch_size` is the recipe's
    1024; another value is for tests on small sets (the lr and decay then follow the original's
    formulas for that batch size). Returns {"seed", "epochs", "steps", "device",
    "rows": [{"epoch" (1-based), "train_loss", "train_accuracy", "last_batch_loss",
    "last_batch_accuracy", "test_accuracy", "seconds"}], "test_accuracy" (final, no TTA),
    "test_accuracy_tta", "train_seconds", "tta_seconds", "images_per_second"}.
    """
    from tqdm.auto import tqdm

    device = _device(device)
    torch.manual_seed(seed)
    x_train = to_device_images(train_images, device)
    y_train = torch.from_numpy(np.asarray(train_labels, dtype=np.int64)).to(device)
    x_test = normalize(to_device_images(test_images, device))
    y_test = torch.from_numpy(np.asarray(test_labels, dtype=np.int64)).to(device)

    batches = TrainBatches(x_train, y_train, batch_size)
    if len(batches) == 0:
        raise ValueError(f"{len(x_train)} training images make no full batch of {batch_size}")
    total_steps = math.ceil(len(batches) * epochs)
    n_epochs = math.ceil(epochs)

    net = make_net(device)
    optimizer = make_optimizer(net, batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps))
    decays = lookahead_decays(total_steps)
    lookahead = Lookahead(net)  # taken before the whitening init, as in the original
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING, reduction="none")

    _sync(device)
    start = time.perf_counter()
    init_whitening(net.whiten, normalize(x_train[:WHITEN_IMAGES]))
    _sync(device)
    train_seconds = time.perf_counter() - start

    rows, step = [], 0
    for epoch in range(n_epochs):
        net.whiten.bias.requires_grad_(epoch < WHITEN_BIAS_EPOCHS)
        epoch_steps = min(len(batches), total_steps - step)
        desc = f"seed {seed} epoch {epoch + 1}/{n_epochs}"
        bar = tqdm(total=epoch_steps, desc=desc, leave=False, disable=not progress)
        _sync(device)
        start = time.perf_counter()
        net.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for inputs, labels in batches:
            outputs = net(inputs)
            loss = loss_fn(outputs, labels).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss.detach().float()
            correct += (outputs.detach().argmax(1) == labels).sum()
            seen += len(labels)
            if step % LOOKAHEAD_EVERY == 0:
                lookahead.update(net, decay=decays[step].item())
            bar.update(1)
            if step >= total_steps:
                lookahead.update(net, decay=1.0)  # the model takes the slow weights
                break
        _sync(device)
        seconds = time.perf_counter() - start
        bar.close()
        train_seconds += seconds
        row = {"epoch": epoch + 1,
               "train_loss": loss_sum.item() / seen,
               "train_accuracy": correct.item() / seen,
               "last_batch_loss": loss.item() / len(labels),
               "last_batch_accuracy": (outputs.argmax(1) == labels).float().mean().item(),
               "test_accuracy": evaluate(net, x_test, y_test, tta_level=0),
               "seconds": round(seconds, 4)}
        rows.append(row)
        if progress:
            print(f"{desc}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
                  f"test acc {row['test_accuracy']:.4f}  {seconds:.2f}s "
                  f"({seen / seconds:,.0f} img/s)", flush=True)

    _sync(device)
    start = time.perf_counter()
    test_accuracy_tta = evaluate(net, x_test, y_test, tta_level=TTA_LEVEL)
    _sync(device)
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


def throughput_pass(batch_size=BATCH_SIZE, steps=8, device="cpu", warmup=2):
    """A function that runs `steps` training steps of the network and optimiser on random data
    and returns the images/s they ran at: the same step as `train` (forward, summed smoothed
    loss, backward, SGD, schedule, lookahead every 5 steps), no data loading or augmentation.
    `warmup` steps run once first, untimed."""
    device = _device(device)
    torch.manual_seed(0)
    net = make_net(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x = torch.randn(batch_size, 3, 32, 32, device=device, dtype=dtype)  # NCHW, as crops are
    y = torch.randint(0, 10, (batch_size,), device=device)
    init_whitening(net.whiten, x)
    total = 1_000_000  # a long schedule: the passes never reach its end
    optimizer = make_optimizer(net, batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, total))
    lookahead = Lookahead(net)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING, reduction="none")
    net.train()
    done = 0

    def run(n):
        nonlocal done
        for _ in range(n):
            loss = loss_fn(net(x), y).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            done += 1
            if done % LOOKAHEAD_EVERY == 0:
                lookahead.update(net, decay=0.95**5 * (done / total) ** 3)

    def timed_pass():
        _sync(device)
        start = time.perf_counter()
        run(steps)
        _sync(device)
        return steps * batch_size / (time.perf_counter() - start)

    run(warmup)
    return timed_pass


def throughput(batch_size=BATCH_SIZE, steps=8, device="cpu", warmup=2):
    """Steady-state training images/s over one timed pass of `steps` steps (`throughput_pass`)."""
    return throughput_pass(batch_size, steps, device, warmup)()


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def summarise(results):
    def mean_std(key):
        values = [r[key] for r in results]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.fmean(values), std

    tta_mean, tta_std = mean_std("test_accuracy_tta")
    acc_mean, acc_std = mean_std("test_accuracy")
    return {"source": SOURCE, "torch": torch.__version__, "n": len(results),
            "seeds": [r["seed"] for r in results], "epochs": results[0]["epochs"],
            "device": results[0]["device"],
            "test_accuracy_tta_mean": tta_mean, "test_accuracy_tta_std": tta_std,
            "test_accuracy_mean": acc_mean, "test_accuracy_std": acc_std,
            "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in results),
            "images_per_second_mean": statistics.fmean(r["images_per_second"] for r in results)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.airbench_torch",
        description="Train the airbench94 recipe (KellerJordan/cifar10-airbench, "
                    "legacy/airbench94.py) in PyTorch on CIFAR-10 from cifar_jax's loader, one "
                    "run per seed, and report test accuracy and training speed; or, with "
                    "--throughput, time training steps on random data.")
    p.add_argument("--data-dir", help="a prepared TFDS cifar10 folder, read with "
                                      "cifar_jax.data.load_cifar10 (required unless --throughput)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="one training run per seed, in turn (default: 0)")
    p.add_argument("--epochs", type=float, default=EPOCHS,
                   help=f"training epochs, fractions allowed (default: {EPOCHS}, the recipe's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: float32; cuda: half precision as the original (default: cpu)")
    p.add_argument("--json", metavar="PATH",
                   help="also write the per-seed results and a summary to this JSON file")
    p.add_argument("--throughput", action="store_true",
                   help="print steady-state training images/s on random data instead of "
                        "training")
    args = p.parse_args(argv)
    if not args.throughput and args.data_dir is None:
        p.error("--data-dir is required unless --throughput")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    if args.throughput:
        rate = throughput(device=args.device)
        print(f"airbench94 (PyTorch {torch.__version__}, {args.device}): "
              f"{rate:,.0f} training images/s at batch {BATCH_SIZE}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"source": SOURCE, "torch": torch.__version__, "device": args.device,
                           "batch_size": BATCH_SIZE, "images_per_second": rate}, f, indent=1)
        return

    from cifar_jax import data

    splits = data.load_cifar10(args.data_dir, download=False)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    results = [train(train_x, train_y, test_x, test_y, seed=seed, epochs=args.epochs,
                     device=args.device, progress=True) for seed in args.seeds]
    summary = summarise(results)
    spread = f" ± {summary['test_accuracy_tta_std']:.4f}" if len(results) > 1 else ""
    print(f"airbench94 PyTorch, {len(results)} seed(s), {args.epochs:g} epochs: test accuracy "
          f"with TTA {summary['test_accuracy_tta_mean']:.4f}{spread}, mean train time "
          f"{summary['train_seconds_mean']:.2f}s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": results, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
