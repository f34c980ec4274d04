"""The airbench94 network (Keller Jordan, cifar10-airbench `legacy/airbench94.py`) as a Flax module.

    normalise -> whiten: Conv 2x2 'VALID', 3 -> 24, bias (32 -> 31) -> GELU
    -> group1 (64) -> group2 (256) -> group3 (256)          spatial 31 -> 15 -> 7 -> 3
    -> max over the 3x3 -> Dense(10, no bias) -> x 1/9

each group: Conv 3x3 SAME -> max pool 2 -> BatchNorm -> GELU -> Conv 3x3 SAME -> BatchNorm -> GELU.

Parameters of the default net: 1,971,640 = 288 (the stem kernel, set from the data by
`init_whitening` and never trained) + 24 (the stem bias) + 1,967,616 (six 3x3 kernels:
13,824 + 36,864 + 147,456 + 589,824 x 3) + 1,152 (BatchNorm biases) + 2,560 (the Dense).
The trained ones are 1,971,352 (all but the stem kernel), as in the original. The PyTorch
original's `parameters()` count 1,972,792: the same plus its 1,152 BatchNorm weights, which it
fixes at 1 and never trains, and which do not exist here (`use_scale=False`).

Initialisation, as PyTorch's: every kernel starts U(-1/sqrt(fan_in), 1/sqrt(fan_in))
(`kaiming_uniform_(a=sqrt(5))`, PyTorch's default for Conv2d and Linear), conv biases zero; then
each convolution's first `in_channels` filters become the identity ("dirac"), so a 3x3 conv
with as many outputs as inputs starts as exactly the identity. `model.init` gives all of this
(the stem too, which the original builds with the same Conv class); the stem kernel is then
replaced from the data with `init_whitening` (`AirbenchNet.init_from_data`, which a fresh
train state applies).
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cifar_jax.data import CIFAR_MEAN, CIFAR_STD
from cifar_jax.ops import max_pool_2x2, same_padding_for_pool

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "AirbenchNet", "ConvGroup", "dirac_init", "init_whitening",
           "normalize", "torch_default_init", "whitening_kernel"]


# PyTorch's default for Conv2d and Linear weights, kaiming_uniform_(a=sqrt(5)):
# bound = gain * sqrt(3 / fan_in) with gain^2 = 2 / (1 + 5), i.e. bound = 1 / sqrt(fan_in);
# Flax's variance_scaling "uniform" draws U(-sqrt(3 * scale / fan_in), +...), so scale = 1/3.
# For an HWIO kernel Flax's fan_in is kh * kw * cin, as PyTorch's.
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def dirac_init(base: Callable = torch_default_init) -> Callable:
    """A kernel initialiser: `base`, then the identity on the first min(cin, cout) filters.

    PyTorch's `dirac_(w[:cin])` on an OIHW kernel: for output channel o < cin, w[o] is zero but
    w[o, o, kh // 2, kw // 2] = 1. In Flax's HWIO layout: kernel[..., o] = 0 except
    kernel[kh // 2, kw // 2, o, o] = 1. (When cout < cin, `w[:cin]` is all cout filters and
    dirac_ sets each to the identity of its own channel, hence min(cin, cout).)
    """

    def init(key, shape, dtype=jnp.float32):
        kernel = base(key, shape, dtype)
        kh, kw, cin, cout = shape
        n = min(cin, cout)
        identity = jnp.zeros((kh, kw, cin, n), dtype).at[kh // 2, kw // 2, :n, :].set(
            jnp.eye(n, dtype=dtype))
        return kernel.at[..., :n].set(identity)

    return init


def normalize(images):
    """Float images in [0, 1] -> (images - CIFAR_MEAN) / CIFAR_STD, in float32."""
    images = jnp.asarray(images, jnp.float32)
    return (images - jnp.asarray(CIFAR_MEAN)) / jnp.asarray(CIFAR_STD)


WHITEN_METHODS = ("eigh", "svd")  # how `whitening_kernel` takes the covariance's eigenpairs

# The conv groups' activation, by name (a setting): airbench's exact GELU (torch's nn.GELU()),
# or cifar10-speedrun's SiLU.
ACTIVATIONS = {"gelu": functools.partial(nn.gelu, approximate=False), "silu": nn.silu}


class ConvGroup(nn.Module):
    """conv1 3x3 -> max pool 2 -> norm1 -> act -> conv2 3x3 -> norm2 -> act; no residual."""

    features: int
    batchnorm_momentum: float = 0.6
    dtype: Any = jnp.float32
    conv: Callable = lax.conv_general_dilated
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x, train: bool = False):
        def conv(name, padding="SAME"):
            return nn.Conv(self.features, (3, 3), padding=padding, use_bias=False,
                           kernel_init=dirac_init(), dtype=self.dtype, param_dtype=jnp.float32,
                           conv_general_dilated=self.conv, name=name)

        def norm(name):
            # Flax updates ra = momentum * ra + (1 - momentum) * batch; PyTorch updates
            # ra = (1 - m) * ra + m * batch, and the original builds BatchNorm2d(momentum=1 - 0.6):
            # so Flax momentum=0.6 is the same rule, new = 0.6 * old + 0.4 * batch. PyTorch puts
            # the unbiased batch variance (x n / (n - 1)) into running_var, Flax the biased one;
            # with n = batch x H x W >= 9,216 at batch 1024 the difference is < 0.011% of the
            # batch's share. Statistics are computed and kept in float32 whatever `dtype` is
            # (Flax's force_float32_reductions); only the output is cast to `dtype`.
            # use_fast_variance=False: E[(x - mean)^2] as PyTorch computes it, not
            # E[x^2] - mean^2, whose cancellation the tiny epsilon (1e-12) would not absorb.
            return nn.BatchNorm(use_running_average=not train, momentum=self.batchnorm_momentum,
                                epsilon=1e-12, use_scale=False, use_bias=True,
                                use_fast_variance=False, dtype=self.dtype,
                                param_dtype=jnp.float32, name=name)

        # conv1 is 'SAME' (3x3, pad 1), but the pool floors odd sizes, as torch's MaxPool2d(2)
        # (31 -> 15 -> 7 -> 3), so conv1 skips the last row and column it would drop: the same
        # outputs and gradients for 11% fewer FLOPs in the network (+15% images/s on 2 CPU cores).
        x = conv("conv1", same_padding_for_pool(x.shape[1:3], 3))(x)
        x = max_pool_2x2(x)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r}: choose one of "
                             f"{', '.join(ACTIVATIONS)}")
        act = ACTIVATIONS[self.activation]
        x = act(norm("norm1")(x))
        x = conv("conv2")(x)
        return act(norm("norm2")(x))


class AirbenchNet(nn.Module):
    """airbench94's network: 1,971,640 parameters (see the module docstring).

    `apply(variables, images, train=..., mutable=["batch_stats"] when training)`; images float
    in [0, 1], [B, 32, 32, 3]; returns float32 logits [B, 10]. `dtype` is the computation
    dtype (float32 or bfloat16); parameters and BatchNorm statistics are float32.
    """

    widths: tuple[int, ...] = (64, 256, 256)
    batchnorm_momentum: float = 0.6
    scaling_factor: float = 1 / 9
    whiten_width: int = 24  # 2 * 3 * 2 * 2: the 12 whitening filters and their negations
    whiten_images: int = 5000  # the first training images the stem's filters come from
    whiten_method: str = "eigh"  # or "svd" (cifar10-speedrun's): see `whitening_kernel`
    activation: str = "gelu"  # the conv groups': "gelu" or "silu" (`ACTIVATIONS`)
    num_classes: int = 10
    dtype: Any = jnp.float32
    conv: Callable = lax.conv_general_dilated
    # Initialisers of the stem's bias and of the head's kernel (airbench94: zero, and PyTorch's
    # default); airbench94_muon changes both (`AirbenchMuonNet`).
    whiten_bias_init: Callable = nn.initializers.zeros
    head_init: Callable = torch_default_init

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.whiten_method not in WHITEN_METHODS:  # said before the stem is initialised
            raise ValueError(f"whiten_method {self.whiten_method!r}: choose one of "
                             f"{', '.join(WHITEN_METHODS)}")
        x = normalize(x)
        x = nn.Conv(self.whiten_width, (2, 2), padding="VALID", use_bias=True,
                    kernel_init=dirac_init(), bias_init=self.whiten_bias_init,
                    dtype=self.dtype, param_dtype=jnp.float32, conv_general_dilated=self.conv,
                    name="whiten")(x)
        x = nn.gelu(x, approximate=False)
        for i, width in enumerate(self.widths):
            x = ConvGroup(width, self.batchnorm_momentum, dtype=self.dtype, conv=self.conv,
                          activation=self.activation,
                          name=f"group{i + 1}")(x, train)
        x = x.max(axis=(1, 2))  # MaxPool2d(3) on the last 3x3, then flatten
        x = nn.Dense(self.num_classes, use_bias=False, kernel_init=self.head_init,
                     dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        return x.astype(jnp.float32) * self.scaling_factor

    @nn.nowrap
    def init_from_data(self, variables, images):
        """The whitening stem's filters, from the first `whiten_images` training `images`
        (uint8), as the original's `init_whitening_conv(..., train_images[:5000])`."""
        return init_whitening(variables, images[:self.whiten_images], method=self.whiten_method)


def torch_conv_bias_init(key, shape, dtype=jnp.float32):
    """The stem's bias as PyTorch's nn.Conv2d(3, 24, 2) draws it: U(-1/sqrt(fan_in), +...),
    fan_in = 3 * 2 * 2 = 12."""
    bound = 1 / math.sqrt(12)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def unit_std_head_init(key, shape, dtype=jnp.float32):
    """PyTorch's default Linear init, then `w *= 1 / w.std()` (torch's std: unbiased)."""
    kernel = torch_default_init(key, shape, dtype)
    return kernel / jnp.std(kernel, ddof=1)


class AirbenchMuonNet(AirbenchNet):
    """airbench94's network as airbench94_muon changes it (KellerJordan/cifar10-airbench,
    `airbench94_muon.py`): the head's logits divided by its width (x 1/256, not x 1/9), the
    head's kernel rescaled to unit std at init, the stem's bias drawn as PyTorch's Conv2d
    default, and the whitening filters in the original's order.

    `scaling_factor` is 1 / the head's input width: pass 1 / widths[-1] with other widths.
    """

    scaling_factor: float = 1 / 256
    whiten_bias_init: Callable = torch_conv_bias_init
    head_init: Callable = unit_std_head_init

    @nn.nowrap
    def init_from_data(self, variables, images):
        """The stem's filters from the first `whiten_images` training `images` (uint8), in the
        original's order: eigenvalues ascending (the 12 filters, then their 12 negations).
        `init_whitening` gives them largest first, as airbench94's legacy code; reversing each
        half is the original's order, as no eigenvalue is repeated. With whiten_method="svd"
        (cifar10-speedrun's), largest first, as the SVD gives them."""
        variables = init_whitening(variables, images[:self.whiten_images],
                                   method=self.whiten_method)
        if self.whiten_method == "svd":
            return variables
        kernel = variables["params"]["whiten"]["kernel"]
        half = kernel.shape[-1] // 2
        kernel = jnp.concatenate([kernel[..., half - 1::-1], kernel[..., :half - 1:-1]], axis=-1)
        params = variables["params"]
        return {**variables, "params": {**params, "whiten": {**params["whiten"], "kernel": kernel}}}


@jax.jit
def _patch_covariance(images):
    """C = P^T P / n over every 2x2x3 patch of the normalised images (no mean subtracted).

    A patch is flattened in HWIO-kernel order, index (i * 2 + j) * 3 + c, so that an
    eigenvector reshaped to (2, 2, 3) is a filter of the stem's kernel as it stands.
    """
    x = normalize(images)
    h, w = x.shape[1] - 1, x.shape[2] - 1
    patches = jnp.concatenate([x[:, i:i + h, j:j + w, :] for i in range(2) for j in range(2)],
                              axis=-1).reshape(-1, 12)
    # HIGHEST: no TF32 / bf16 passes on accelerators; the small eigenvalues need the precision.
    return jnp.dot(patches.T, patches, precision=lax.Precision.HIGHEST) / patches.shape[0]


def whitening_kernel(images, eps=5e-4, method="eigh"):
    """The stem's kernel [2, 2, 3, 24] (HWIO) that whitens the 2x2 patches of `images`.

    `images`: float in [0, 1], [N, 32, 32, 3] (the recipe uses the first 5,000 training
    images; uint8 is scaled by 1/255). As the original's init_whitening_conv: normalise,
    C = P^T P / n over all patches, eigenpairs (lambda, v) with lambda descending, filters
    v / sqrt(lambda + eps), then their negations. The original flattens patches as (c, h, w)
    and reshapes v into an OIHW filter; flattening as (h, w, c) and reshaping into HWI is the
    same filter, since an eigendecomposition does not depend on the order of the coordinates
    (eigenvector signs are arbitrary in both). method="svd" takes the eigenpairs from the SVD
    of C (symmetric and positive semi-definite: its singular values are its eigenvalues,
    largest first) and divides by them with rsqrt, as cifar10-speedrun's init_whiten.
    """
    images = jnp.asarray(images)
    if jnp.issubdtype(images.dtype, jnp.integer):
        images = images.astype(jnp.float32) / 255.0
    covariance = _patch_covariance(images)
    if method == "svd":
        eigenvectors, eigenvalues, _ = jnp.linalg.svd(covariance)  # descending
        filters = (eigenvectors * lax.rsqrt(eigenvalues + eps)).reshape(2, 2, 3, 12)
    elif method == "eigh":
        eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)  # ascending
        eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
        filters = (eigenvectors / jnp.sqrt(eigenvalues + eps)).reshape(2, 2, 3, 12)
    else:
        raise ValueError(f"whiten_method {method!r}: choose one of {', '.join(WHITEN_METHODS)}")
    return jnp.concatenate([filters, -filters], axis=-1).astype(jnp.float32)


def init_whitening(variables, images, eps=5e-4, method="eigh"):
    """`variables` with params["whiten"]["kernel"] set by `whitening_kernel(images, eps,
    method)`.

    Pure: returns a new dict; `variables` is left as it was. The kernel is meant to stay
    fixed in training (the optimiser should not update it).
    """
    params = variables["params"]
    kernel = whitening_kernel(images, eps, method)
    if kernel.shape != params["whiten"]["kernel"].shape:
        raise ValueError(f"whitening kernel {kernel.shape} does not fit the stem's "
                         f"{params['whiten']['kernel'].shape} (whiten_width must be 24)")
    return {**variables,
            "params": {**params, "whiten": {**params["whiten"], "kernel": kernel}}}
