"""airbench94_muon in PyTorch: the peer that cifar_jax's `airbench94_muon` recipe is run beside.

A port of KellerJordan/cifar10-airbench `airbench94_muon.py` (94.01% mean test accuracy, n=200, in
2.59 s on an A100), fed the uint8 NHWC numpy arrays of `cifar_jax.data.load_cifar10` so that both
ports train on the very same data. The data, the loop, evaluation, timing and the command line
are those every port shares (`benchmarks/torch_ports.py`), the conv groups and the whitening
maths airbench94's (`benchmarks/airbench_torch.py`); what is here is what airbench94_muon
changes:

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

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import airbench_torch as ab
from benchmarks import torch_ports

NAME = "airbench94_muon"
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
    """airbench94's network (airbench_torch's conv groups, or `group`) with airbench94_muon's
    stem and head."""

    def __init__(self, widths=WIDTHS, group=ab.ConvGroup):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)  # PyTorch's default init
        self.whiten.weight.requires_grad_(False)
        self.group1 = group(24, widths[0])
        self.group2 = group(widths[0], widths[1])
        self.group3 = group(widths[1], widths[2])
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
    """The network on `device`, as the original places it (`torch_ports.on_device`)."""
    return torch_ports.on_device(CifarNet(widths), device)


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
        group["lr"] = group["initial_lr"] * (1 - step / max(1, whiten_steps))
    for group in sgd.param_groups[1:] + muon.param_groups:
        group["lr"] = group["initial_lr"] * (1 - step / total_steps)
    for opt in optimizers:
        opt.step()


class Steps:
    """airbench94_muon's training step, for `torch_ports`' loop: the summed smoothed
    cross-entropy, then SGD and Muon at the rates of this step; the stem's bias has a gradient
    in its first ceil(WHITEN_BIAS_EPOCHS x steps per epoch) steps only."""

    label_smoothing = LABEL_SMOOTHING
    whiten_bias_epochs = WHITEN_BIAS_EPOCHS

    def __init__(self, net, batch_size, total_steps, steps_per_epoch):
        self.net, self.total_steps = net, total_steps
        self.whiten_steps = math.ceil(self.whiten_bias_epochs * steps_per_epoch)
        self.optimizers = self.make_optimizers(net, batch_size, total_steps)

    def make_optimizers(self, net, batch_size, total_steps):
        return make_optimizers(net, batch_size)

    def epoch(self, epoch):
        pass

    def step(self, inputs, labels, step):
        """Step `step` (0-based); (outputs, summed loss)."""
        outputs = self.net(inputs, whiten_bias_grad=step < self.whiten_steps)
        loss = F.cross_entropy(outputs, labels, label_smoothing=self.label_smoothing,
                               reduction="sum")
        loss.backward()
        optimizer_step(self.optimizers, step, self.total_steps, self.whiten_steps)
        self.net.zero_grad(set_to_none=True)
        return outputs, loss

    def finish(self):
        pass


if __name__ == "__main__":
    sys.exit(torch_ports.main(sys.modules[__name__]))
