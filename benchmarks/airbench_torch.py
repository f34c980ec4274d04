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

The data, the loop, evaluation, timing and the command line are those every port shares
(`benchmarks/torch_ports.py`); this file holds what is airbench94's: its network, optimiser,
schedules and lookahead, and its step (`Steps`).

Where this port differs from the original, and why:

* Data comes from `cifar_jax.data.load_cifar10` (TFDS) rather than torchvision, so the training
  set's order, and with it the 5000 images the whitening filters are computed from, differs.
* Per-epoch `train_loss` / `train_accuracy` are means over the epoch's examples, as cifar_jax
  reports them; the original prints those of the epoch's last batch, kept here as
  `last_batch_loss` / `last_batch_accuracy`.
* Timing uses `torch.cuda.synchronize()` and a wall clock instead of CUDA events.

Usage:

    python -m benchmarks.airbench_torch --data-dir /work/data/tfr --seeds 0 1 2 --device cuda
    python -m benchmarks.airbench_torch --throughput --device cpu
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn

# First: it loads torch._dynamo before cifar_jax.data can bring TensorFlow in.
from benchmarks import torch_ports

NAME = "airbench94"
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
WIDTHS = (64, 256, 256)
BN_MOMENTUM = 0.6       # weight of the old running statistics
SCALING_FACTOR = 1 / 9
TTA_LEVEL = 2
WHITEN_EPS = 5e-4
WARMUP_FRACTION = 0.23
LOOKAHEAD_EVERY = 5


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
    """conv -> pool -> norm -> act -> conv -> norm -> act; cifar10-speedrun's takes SiLU and its
    own BatchNorm momentum."""

    def __init__(self, c_in, c_out, activation=F.gelu, bn_momentum=BN_MOMENTUM):
        super().__init__()
        self.activation = activation
        self.conv1 = DiracConv(c_in, c_out)
        self.norm1 = ShiftOnlyBatchNorm(c_out, bn_momentum)
        self.conv2 = DiracConv(c_out, c_out)
        self.norm2 = ShiftOnlyBatchNorm(c_out, bn_momentum)

    def forward(self, x):
        x = self.activation(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return self.activation(self.norm2(self.conv2(x)))


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
    """The network on `device`, as the original places it (`torch_ports.on_device`)."""
    return torch_ports.on_device(AirbenchNet(), device)


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


class Steps:
    """airbench94's training step, for `torch_ports`' loop: the summed smoothed cross-entropy,
    Nesterov SGD under the LambdaLR schedule, lookahead every 5 steps and at the end; the stem's
    bias trains in the first WHITEN_BIAS_EPOCHS epochs."""

    def __init__(self, net, batch_size, total_steps, steps_per_epoch):
        self.net = net
        self.optimizer = make_optimizer(net, batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_multiplier(step, total_steps))
        self.decays = lookahead_decays(total_steps)
        self.lookahead = Lookahead(net)  # taken before the whitening init, as in the original
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING, reduction="none")

    def epoch(self, epoch):
        self.net.whiten.bias.requires_grad_(epoch < WHITEN_BIAS_EPOCHS)

    def step(self, inputs, labels, step):
        """Step `step` (0-based); (outputs, summed loss)."""
        outputs = self.net(inputs)
        loss = self.loss_fn(outputs, labels).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if (step + 1) % LOOKAHEAD_EVERY == 0:
            self.lookahead.update(self.net, decay=self.decays[step + 1].item())
        return outputs, loss

    def finish(self):
        self.lookahead.update(self.net, decay=1.0)  # the model takes the slow weights


if __name__ == "__main__":
    sys.exit(torch_ports.main(sys.modules[__name__]))
