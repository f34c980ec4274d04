"""cifar10_speedrun in PyTorch: the peer that cifar_jax's `cifar10_speedrun` recipe is run beside.

A port of hiverge/cifar10-speedrun `cifar10_speedrun.py` at 5cd49b1 (94.01% mean test accuracy in
2.015 s on an A100), fed the uint8 NHWC numpy arrays of `cifar_jax.data.load_cifar10`. Its `Muon`
and `_zeropower_via_newtonschulz5` are the original's, verbatim but for torch.compile; its
network, whitening, optimiser groups, learning-rate loop, colour jitter and selective test-time
augmentation follow the original line by line. The loop, the data and evaluation, timing and the
command line are those every port shares (`benchmarks/torch_ports.py`; its alternating flip and
translation draw their offsets as airbench's port does, the same distribution as the original's).

`device="cuda"` runs as the original: half precision (BatchNorm in float32), half-precision Muon
momentum, fused SGD. `device="cpu"` runs in float32, the Muon momentum in float32 buffers (the
original keeps a momentum only for half-precision buffers: its `step` tests `== torch.half`;
here any dtype). Not done: torch.compile, the warm-up run on random data, CUDA-event timing.
"""

import functools
import sys

import torch
import torch.nn.functional as F

from benchmarks import airbench_muon_torch as abm
from benchmarks import airbench_torch as ab
from benchmarks import torch_ports

NAME = "cifar10_speedrun"
SOURCE = "hiverge/cifar10-speedrun cifar10_speedrun.py"

# The recipe's hyperparameters, as named in the original's main().
BATCH_SIZE = 1536
EPOCHS = 7.59
BIAS_LR = 0.0573
HEAD_LR = 0.5415
WD_PER_EXAMPLE = 1.0418e-06  # wd = 1.0418e-6 * batch_size
SGD_MOMENTUM = 0.825
MUON_LR = 0.205
MUON_MOMENTUM = 0.655
WHITEN_BIAS_EPOCHS = 0.19
LABEL_SMOOTHING = 0.09
BN_MOMENTUM = 0.5566
WIDTHS = (64, 256, 256)
WHITEN_IMAGES = 960
BRIGHTNESS, CONTRAST = 0.1399, 0.1308
TTA_LEVEL = 3  # selective (`torch_ports.evaluate`)


# ----------------------------------------------------------------------------------------------
# Muon (the original's)
# ----------------------------------------------------------------------------------------------

def _zeropower_via_newtonschulz5(gradients_4d, filter_meta_data, max_D, max_K, current_step,
                                 total_steps):
    a, b, c = (3.4576, -4.7391, 2.0843)
    eps_stable = 1e-05
    eps_gms = 1e-05
    progress_ratio = current_step / max(1, total_steps)
    initial_target_mag = 0.5012
    final_target_mag = 0.0786
    target_magnitude = initial_target_mag * (1 - progress_ratio) + final_target_mag * progress_ratio
    if not filter_meta_data:
        return gradients_4d
    grad_list = []
    for meta in filter_meta_data:
        original_shape, reshaped_D, reshaped_K, list_idx = meta
        g_reshaped = gradients_4d[list_idx].reshape(reshaped_D, reshaped_K)
        padding_dims = (0, max_K - reshaped_K, 0, max_D - reshaped_D)
        grad_list.append(F.pad(g_reshaped, padding_dims, "constant", 0))
    X = torch.stack(grad_list)
    current_batch_mags = X.norm(dim=(1, 2), keepdim=True)
    X = X * (target_magnitude / (current_batch_mags + eps_gms))
    X = X / (X.norm(dim=(1, 2), keepdim=True) + eps_stable)
    transposed = False
    if X.size(1) > X.size(2):
        X = X.transpose(1, 2)
        transposed = True
    for _ in range(3):
        A = X @ X.transpose(1, 2)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.transpose(1, 2)
    final = [None] * len(gradients_4d)
    for i, meta in enumerate(filter_meta_data):
        original_shape, reshaped_D, reshaped_K, list_idx = meta
        final[list_idx] = X[i][:reshaped_D, :reshaped_K].view(original_shape)
    return final


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr=0.08, momentum=0.88, nesterov=True, norm_freq=1,
                 total_train_steps=None, weight_decay=0.0):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, norm_freq=norm_freq,
                        total_train_steps=total_train_steps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.step_count = 0
        self.last_norm_step = 0
        self.total_train_steps = total_train_steps
        self.filter_params_meta = []
        self.max_D, self.max_K = (0, 0)
        for group in self.param_groups:
            for p in group["params"]:
                if len(p.shape) == 4 and p.requires_grad:
                    reshaped_D = p.shape[0]
                    reshaped_K = p.data.numel() // p.shape[0]
                    self.filter_params_meta.append({"param": p, "original_shape": p.data.shape,
                                                    "reshaped_dims": (reshaped_D, reshaped_K)})
                    self.max_D = max(self.max_D, reshaped_D)
                    self.max_K = max(self.max_K, reshaped_K)
        self.max_D = max(1, self.max_D)
        self.max_K = (max(1, self.max_K) + 15) // 16 * 16
        self.current_grad_norms = None

    @torch.no_grad()
    def step(self):
        self.step_count += 1
        group = self.param_groups[0]
        progress = self.step_count / self.total_train_steps
        group["norm_freq"] = 2 + int(15 * progress)
        filter_params_with_grad = []
        filter_meta_for_current_step = []
        # The original tests `== torch.half` (it always sets half): any dtype here, so that the
        # CPU's float32 buffers accumulate the momentum too (with None, none is kept).
        momentum_buffers = [] if group["momentum_buffer_dtype"] is not None else None
        for p_meta in self.filter_params_meta:
            p = p_meta["param"]
            if p.grad is not None:
                filter_params_with_grad.append(p)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(
                        p.grad, dtype=group["momentum_buffer_dtype"],
                        memory_format=torch.preserve_format)
                if momentum_buffers is not None:
                    momentum_buffers.append(state["momentum_buffer"])
                filter_meta_for_current_step.append((
                    p_meta["original_shape"], p_meta["reshaped_dims"][0],
                    p_meta["reshaped_dims"][1], len(filter_params_with_grad) - 1))
        if not filter_params_with_grad:
            return
        if momentum_buffers is not None:
            torch._foreach_mul_(momentum_buffers, group["momentum"])
            grad_casts = [g.to(mb.dtype) for g, mb in
                          zip([p.grad for p in filter_params_with_grad], momentum_buffers)]
            torch._foreach_add_(momentum_buffers, grad_casts)
        else:
            momentum_buffers = [p.grad for p in filter_params_with_grad]
        if group["nesterov"]:
            nesterov_grads = torch._foreach_add([p.grad for p in filter_params_with_grad],
                                                momentum_buffers, alpha=group["momentum"])
        else:
            nesterov_grads = momentum_buffers
        do_norm_scaling = self.step_count - self.last_norm_step >= group["norm_freq"]
        if do_norm_scaling:
            self.last_norm_step = self.step_count
            self.current_grad_norms = torch._foreach_norm(filter_params_with_grad)
            scale_factors = [(len(p.data) ** 0.5 / (n + 1e-07)).to(p.data.dtype)
                             for p, n in zip(filter_params_with_grad, self.current_grad_norms)]
        final_orthogonalized_grads = _zeropower_via_newtonschulz5(
            nesterov_grads, filter_meta_for_current_step, self.max_D, self.max_K,
            self.step_count, self.total_train_steps)
        if do_norm_scaling:
            torch._foreach_mul_(filter_params_with_grad, scale_factors)
        torch._foreach_add_(filter_params_with_grad, final_orthogonalized_grads,
                            alpha=-group["lr"])
        weight_decay_factor = 1 - group["lr"] * group["weight_decay"]
        if weight_decay_factor != 1.0:
            torch._foreach_mul_(filter_params_with_grad, weight_decay_factor)


# ----------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------

def make_net(device, widths=WIDTHS):
    """The original's `CifarNet` on `device`, as it places it (`torch_ports.on_device`):
    airbench94_muon's network (`airbench_muon_torch.CifarNet`) with SiLU in the conv groups and
    BatchNorm momentum 0.5566."""
    group = functools.partial(ab.ConvGroup, activation=F.silu, bn_momentum=BN_MOMENTUM)
    return torch_ports.on_device(abm.CifarNet(widths, group), device)


@torch.no_grad()
def init_whitening(conv, images, eps=0.0005):
    """The original's `init_whiten` on `images` (normalised, NCHW): the SVD of the patch
    covariance, U * rsqrt(S + eps) as filters, then their negations."""
    c, (h, w) = images.shape[1], conv.weight.shape[2:]
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()
    patches_flat = patches.view(len(patches), -1)
    covariance = torch.mm(patches_flat.t(), patches_flat) / len(patches_flat)
    U, S, V = torch.svd(covariance)
    scaled = (U * torch.rsqrt(S + eps).unsqueeze(0)).T.reshape(-1, c, h, w)
    conv.weight.data[:] = torch.cat((scaled, -scaled)).to(conv.weight.dtype)


def jitter(images):
    """The original's `batch_color_jitter`, on the epoch's normalised images."""
    shape = (images.shape[0], 1, 1, 1)
    shift = (torch.rand(shape, device=images.device, dtype=images.dtype) * 2 - 1) * BRIGHTNESS
    scale = (torch.rand(shape, device=images.device, dtype=images.dtype) * 2 - 1) * CONTRAST + 1
    return (images + shift) * scale


# ----------------------------------------------------------------------------------------------
# Optimisers and the step
# ----------------------------------------------------------------------------------------------

def make_optimizers(net, batch_size, total_steps):
    """(SGD, Muon) over `net`'s groups, as the original's main(); each group's `initial_lr`."""
    wd = WD_PER_EXAMPLE * batch_size
    cuda = net.head.weight.is_cuda
    filters = [p for p in net.parameters() if len(p.shape) == 4 and p.requires_grad]
    norm_biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    groups = [{"params": [net.whiten.bias], "lr": BIAS_LR, "weight_decay": wd / BIAS_LR},
              {"params": norm_biases, "lr": BIAS_LR, "weight_decay": wd / BIAS_LR},
              {"params": [net.head.weight], "lr": HEAD_LR, "weight_decay": wd / HEAD_LR}]
    sgd = torch.optim.SGD(groups, momentum=SGD_MOMENTUM, nesterov=True, fused=cuda or None)
    muon = Muon(filters, lr=MUON_LR, momentum=MUON_MOMENTUM, nesterov=True, norm_freq=4,
                total_train_steps=total_steps, weight_decay=wd)
    muon.param_groups[0]["momentum_buffer_dtype"] = torch.half if cuda else torch.float32
    for opt in (sgd, muon):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return sgd, muon


class Steps(abm.Steps):
    """cifar10_speedrun's training step, for `torch_ports`' loop: airbench94_muon's (the summed
    smoothed cross-entropy, then SGD and Muon at the rates of this step; the stem's bias has a
    gradient in its first ceil(0.19 x steps per epoch) steps only), with this recipe's numbers
    and optimisers."""

    label_smoothing = LABEL_SMOOTHING
    whiten_bias_epochs = WHITEN_BIAS_EPOCHS

    def make_optimizers(self, net, batch_size, total_steps):
        return make_optimizers(net, batch_size, total_steps)


if __name__ == "__main__":
    sys.exit(torch_ports.main(sys.modules[__name__]))
