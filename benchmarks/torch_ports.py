"""What the PyTorch ports of the airbench recipes share (`benchmarks/airbench_torch.py`,
`benchmarks/airbench_muon_torch.py`): the data on the device and the originals' augmentation,
evaluation with their test-time augmentation, the training loop with its timing, the throughput
pass and the command line. A port gives only what differs between the originals: its network
(`make_net`, `init_whitening`), its optimiser and its step (`Steps`), and its constants
(`NAME`, `SOURCE`, `BATCH_SIZE`, `EPOCHS`, `TTA_LEVEL`).

Timing follows the originals: the whitening initialisation and the per-epoch data augmentation
count as training time; moving the uint8 data to the device and converting it does not, nor does
evaluation (the originals also count their final TTA evaluation, reported here apart as
`tta_seconds`).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np


def _load_dynamo_before_tensorflow():
    """torch.optim imports torch._dynamo, which imports triton, whose native library crashes
    the process (segfault) when TensorFlow's is already loaded, as `cifar_jax.data` loads it.
    So load them now; if TensorFlow is in already, hide triton instead (only CUDA's
    torch.compile needs it; the CPU's, `--torch-compile`, generates C++)."""
    if "triton" not in sys.modules and "tensorflow" in sys.modules:
        sys.modules["triton"] = None  # `import triton` then fails cleanly; torch copes
    import torch._dynamo  # noqa: F401


_load_dynamo_before_tensorflow()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
TRANSLATE = 2  # pixels, with reflect padding
WHITEN_IMAGES = 5000  # the first training images the stem's filters come from
EVAL_BATCH = 2000


def torch_device(device):
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the originals
    return device


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def on_device(net, device):
    """`net` on `device` as the originals place it: float32 on the CPU; on CUDA half precision
    with BatchNorm kept in float32. channels_last either way."""
    if device.type == "cuda":
        net = net.half()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.float()
    return net.to(device=device, memory_format=torch.channels_last)


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

    def __init__(self, images, labels, batch_size, jitter=None):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.jitter = jitter  # a function of the epoch's images, after the flip (the speedrun's)
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
        if self.jitter is not None:
            images = self.jitter(images)
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
    """Accuracy of `net` on normalised `images`, with the originals' test-time augmentation:
    airbench's levels 0-2, or 3, cifar10-speedrun's selective one (`_selective_logits`)."""
    net.eval()
    if tta_level == 3:
        logits = _selective_logits(net, images)
    else:
        logits = torch.cat([_tta_logits(net, x, tta_level) for x in images.split(EVAL_BATCH)])
    return (logits.argmax(1) == labels).float().mean().item()


def _selective_logits(net, images, quantile=0.25):
    """cifar10-speedrun's `tta`: plain logits for all; the int(n x quantile) least confident
    (lowest max softmax) get the mean logits of 6 views (the images, them cropped from a
    1-pixel reflect padding at the top-left and bottom-right, and the three mirrored)."""
    logits = torch.cat([net(x) for x in images.split(EVAL_BATCH)])
    confidences, _ = F.softmax(logits, dim=1).max(dim=1)
    k = int(len(images) * quantile)
    _, uncertain = torch.topk(confidences, k, largest=False, sorted=False)
    h, w = images.shape[-2:]
    for i in range(0, k, EVAL_BATCH):
        chosen = uncertain[i:i + EVAL_BATCH]
        batch = images[chosen]
        padded = F.pad(batch, (1,) * 4, mode="reflect")
        views = [batch, padded[:, :, :h, :w], padded[:, :, 2:h + 2, 2:w + 2]]
        views += [v.flip(-1) for v in views]
        logits[chosen] = torch.stack([net(v) for v in views]).mean(0)
    return logits


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

def train(port, train_images, train_labels, test_images, test_labels, *, seed=0, epochs=None,
          device="cpu", progress=True, batch_size=None, **net_options):
    """Train `port`'s recipe on the given uint8 NHWC images and int labels; return the results.

    `epochs`: the recipe's by default; fractions cut the last epoch short, every schedule
    scaled with the run. `progress` shows a bar per epoch and prints a line after each.
    `batch_size` (the recipe's by default) and `net_options` (given to `port.make_net`) are for
    tests on small sets. Returns {"seed", "epochs", "steps", "device",
    "rows": [{"epoch" (1-based), "train_loss", "train_accuracy", "last_batch_loss",
    "last_batch_accuracy", "test_accuracy", "seconds"}], "test_accuracy" (final, no TTA),
    "test_accuracy_tta", "train_seconds", "tta_seconds", "images_per_second"}. Per-epoch
    train loss and accuracy are means over the epoch's examples, as cifar_jax reports them; the
    originals print those of the epoch's last batch, kept as `last_batch_*`.
    """
    from tqdm.auto import tqdm

    epochs = port.EPOCHS if epochs is None else epochs
    batch_size = batch_size or port.BATCH_SIZE
    device = torch_device(device)
    torch.manual_seed(seed)
    x_train = to_device_images(train_images, device)
    y_train = torch.from_numpy(np.asarray(train_labels, dtype=np.int64)).to(device)
    x_test = normalize(to_device_images(test_images, device))
    y_test = torch.from_numpy(np.asarray(test_labels, dtype=np.int64)).to(device)

    # alternating flip and translate, and a port's colour jitter
    batches = TrainBatches(x_train, y_train, batch_size, getattr(port, "jitter", None))
    if len(batches) == 0:
        raise ValueError(f"{len(x_train)} training images make no full batch of {batch_size}")
    total_steps = math.ceil(epochs * len(batches))
    n_epochs = math.ceil(total_steps / len(batches))
    net = port.make_net(device, **net_options)
    steps = port.Steps(net, batch_size, total_steps, len(batches))

    sync(device)
    start = time.perf_counter()
    port.init_whitening(net.whiten,
                        normalize(x_train[:getattr(port, "WHITEN_IMAGES", WHITEN_IMAGES)]))
    sync(device)
    train_seconds = time.perf_counter() - start

    rows, step = [], 0
    for epoch in range(n_epochs):
        steps.epoch(epoch)
        epoch_steps = min(len(batches), total_steps - step)
        desc = f"seed {seed} epoch {epoch + 1}/{n_epochs}"
        bar = tqdm(total=epoch_steps, desc=desc, leave=False, disable=not progress)
        sync(device)
        start = time.perf_counter()
        net.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for inputs, labels in batches:
            outputs, loss = steps.step(inputs, labels, step)
            step += 1
            loss_sum += loss.detach().float()
            correct += (outputs.detach().argmax(1) == labels).sum()
            seen += len(labels)
            bar.update(1)
            if step >= total_steps:
                steps.finish()
                break
        sync(device)
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

    sync(device)
    start = time.perf_counter()
    test_accuracy_tta = evaluate(net, x_test, y_test, tta_level=port.TTA_LEVEL)
    sync(device)
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


def throughput_pass(port, batch_size=None, steps=4, device="cpu", warmup=2,
                    torch_compile=False, first_step=0, steps_per_epoch=None):
    """A function that runs `steps` training steps of `port`'s network and optimiser on random
    data and returns the images/s they ran at: the same step as `train`, no data loading or
    augmentation. `warmup` steps run once first, untimed (with `torch_compile`, the network's
    forward and backward compiled by `torch.compile` there: `nn.Module.compile`, in place).
    The steps are numbered from `first_step`, in epochs of `steps_per_epoch`, as a run's are
    there: airbench's stem bias has no gradient once its epochs are over."""
    batch_size = batch_size or port.BATCH_SIZE
    device = torch_device(device)
    torch.manual_seed(0)
    net = port.make_net(device)
    if torch_compile:
        net.compile()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x = torch.randn(batch_size, 3, 32, 32, device=device, dtype=dtype)  # NCHW, as crops are
    y = torch.randint(0, 10, (batch_size,), device=device)
    port.init_whitening(net.whiten, x)
    total = 1_000_000  # a long schedule: the passes never reach its end
    run_steps = port.Steps(net, batch_size, total, steps_per_epoch or total)
    run_steps.epoch(first_step // (steps_per_epoch or total))
    net.train()
    done = first_step

    def run(n):
        nonlocal done
        for _ in range(n):
            run_steps.step(x, y, done)
            done += 1

    def timed_pass():
        sync(device)
        start = time.perf_counter()
        run(steps)
        sync(device)
        return steps * batch_size / (time.perf_counter() - start)

    run(warmup)
    return timed_pass


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def summarise(port, results):
    def mean_std(key):
        values = [r[key] for r in results]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.fmean(values), std

    tta_mean, tta_std = mean_std("test_accuracy_tta")
    acc_mean, acc_std = mean_std("test_accuracy")
    return {"source": port.SOURCE, "torch": torch.__version__, "n": len(results),
            "seeds": [r["seed"] for r in results], "epochs": results[0]["epochs"],
            "device": results[0]["device"],
            "test_accuracy_tta_mean": tta_mean, "test_accuracy_tta_std": tta_std,
            "test_accuracy_mean": acc_mean, "test_accuracy_std": acc_std,
            "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in results),
            "images_per_second_mean": statistics.fmean(r["images_per_second"] for r in results)}


def parse_args(port, argv=None):
    p = argparse.ArgumentParser(
        prog=f"python -m {port.__spec__.name}",
        description=f"Train the {port.NAME} recipe ({port.SOURCE}) in PyTorch on CIFAR-10 from "
                    "cifar_jax's loader, one run per seed, and report test accuracy and training "
                    "speed; or, with --throughput, time training steps on random data.")
    p.add_argument("--data-dir", help="a prepared TFDS cifar10 folder, read with "
                                      "cifar_jax.data.load_cifar10 (required unless --throughput)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="one training run per seed, in turn (default: 0)")
    p.add_argument("--epochs", type=float, default=port.EPOCHS,
                   help=f"training epochs, fractions allowed (default: {port.EPOCHS}, the "
                        "recipe's)")
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


def main(port, argv=None):
    args = parse_args(port, argv)
    torch.set_num_threads(os.cpu_count())
    if args.throughput:
        rate = throughput_pass(port, device=args.device)()
        print(f"{port.NAME} (PyTorch {torch.__version__}, {args.device}): "
              f"{rate:,.0f} training images/s at batch {port.BATCH_SIZE}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"source": port.SOURCE, "torch": torch.__version__,
                           "device": args.device, "batch_size": port.BATCH_SIZE,
                           "images_per_second": rate}, f, indent=1)
        return 0

    from cifar_jax import data

    splits = data.load_cifar10(args.data_dir, download=False)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    results = [train(port, train_x, train_y, test_x, test_y, seed=seed, epochs=args.epochs,
                     device=args.device, progress=True) for seed in args.seeds]
    summary = summarise(port, results)
    spread = f" ± {summary['test_accuracy_tta_std']:.4f}" if len(results) > 1 else ""
    print(f"{port.NAME} PyTorch, {len(results)} seed(s), {args.epochs:g} epochs: test accuracy "
          f"with TTA {summary['test_accuracy_tta_mean']:.4f}{spread}, mean train time "
          f"{summary['train_seconds_mean']:.2f}s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": results, "summary": summary}, f, indent=1)
    return 0
