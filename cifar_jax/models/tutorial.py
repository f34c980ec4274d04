"""The tutorial's two classifiers as plain Flax modules: `model.apply(params, images) -> logits`.

Keras parity: kernels start glorot_uniform, biases zero, convolutions pad 'VALID'.
Both models return logits; apply `jax.nn.softmax` where probabilities are wanted.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

glorot_uniform = nn.initializers.glorot_uniform()


@jax.custom_vjp
def max_pool_2x2(x):
    """2x2 max pooling, stride 2, 'VALID' (a trailing odd row/column is dropped, as in Keras).

    Equal to `nn.max_pool(x, (2, 2), strides=(2, 2))`, and so is its gradient but at exact ties
    inside a window, where every tied element gets it (after a relu the common ties are zeros,
    whose gradient the relu stops either way). Written as a reshape and a max, with its own
    gradient, so that XLA:CPU needs neither its slow select-and-scatter kernel nor the
    tie-counting reductions of `jnp.max`'s gradient.
    """
    return _windows(x).max(axis=(2, 4))


def _windows(x):
    b, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)


def _max_pool_fwd(x):
    y = max_pool_2x2(x)
    return y, (x, y)


def _max_pool_bwd(residuals, g):
    """The gradient goes to the window's maximum; a cropped odd row/column gets none."""
    x, y = residuals
    at_max = _windows(x) == y[:, :, None, :, None, :]
    b, h, w, c = x.shape
    gx = jnp.where(at_max, g[:, :, None, :, None, :], 0.0).reshape(b, h // 2 * 2, w // 2 * 2, c)
    return (jnp.pad(gx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def crop_for_pool(x, kernel_size):
    """The part of `x` whose 'VALID' convolution outputs a following 2x2 pool keeps.

    The pool drops an odd last row/column of the convolution's output, so there is no need to
    compute it: conv2 here makes 12x12 outputs instead of 13x13, 15% less work, and the model's
    outputs and gradients are exactly those of the uncropped model.
    """
    h, w = ((size - kernel_size + 1) // 2 * 2 + kernel_size - 1 for size in x.shape[1:3])
    return x[:, :h, :w]


def conv_as_matmul(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None):
    """A stride-1 'VALID' NHWC convolution as shifted slices and one matmul (im2col).

    Drop-in for `lax.conv_general_dilated` in `nn.Conv(..., conv_general_dilated=...)`: the
    parameters and the maths are the same, but XLA:CPU's convolution kernels are slow at the
    small channel counts of this CNN, and one matmul over the kh*kw shifted views is not.
    Anything but the plain case is handed to `lax.conv_general_dilated` unchanged.
    """
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    plain = (tuple(window_strides) == (1, 1) and padding == "VALID" and feature_group_count == 1
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
             and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation)))
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            precision=precision)
    kh, kw, cin, cout = rhs.shape
    b, oh, ow = lhs.shape[0], lhs.shape[1] - kh + 1, lhs.shape[2] - kw + 1
    patches = jnp.concatenate(
        [lhs[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)], axis=-1)
    # A 2-D matmul, so that the weight gradient is a 2-D one too: contracting over [b, oh, ow]
    # made XLA:CPU transpose the output gradient first (CNN steps/s: +12% at batch 32, +28% at 512).
    out = jnp.dot(patches.reshape(b * oh * ow, kh * kw * cin), rhs.reshape(kh * kw * cin, cout),
                  precision=precision)
    return out.reshape(b, oh, ow, cout)


class MLP(nn.Module):
    """Flatten -> Dense(3000, relu) -> Dense(1000, relu) -> Dense(10): 12,230,010 parameters."""

    hidden: tuple[int, ...] = (3000, 1000)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, kernel_init=glorot_uniform)(x))
        return nn.Dense(self.num_classes, kernel_init=glorot_uniform)(x)


class CNN(nn.Module):
    """[Conv(32, 3x3) -> pool] -> [Conv(64, 3x3) -> pool] -> Dense(64) -> Dense(10): 167,562 parameters."""

    features: tuple[int, ...] = (32, 64)
    dense: int = 64
    num_classes: int = 10
    # How nn.Conv convolves; same parameters, same maths either way. None: `conv_as_matmul` on
    # the CPU, where it is faster, and XLA's own convolution (cuDNN on GPUs) elsewhere.
    conv: Callable | None = None

    @nn.compact
    def __call__(self, x):
        conv = self.conv or (conv_as_matmul if jax.default_backend() == "cpu"
                             else lax.conv_general_dilated)
        for f in self.features:  # crop_for_pool: skip the conv outputs that the pool drops
            x = nn.Conv(f, (3, 3), padding="VALID", kernel_init=glorot_uniform,
                        conv_general_dilated=conv)(crop_for_pool(x, 3))
            x = max_pool_2x2(nn.relu(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.dense, kernel_init=glorot_uniform)(x))
        return nn.Dense(self.num_classes, kernel_init=glorot_uniform)(x)


MODELS = {"mlp": MLP, "cnn": CNN}
