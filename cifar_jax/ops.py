"""Speed kernels: exact re-formulations of Flax/lax operations that XLA:CPU runs faster.

Models take them as fields (`conv=...`) or call them in place of the plain operation; tests
check each against the plain form, gradients included. Measured gains: benchmarks/README.md.
"""

import jax
import jax.numpy as jnp
from jax import lax


@jax.custom_vjp
def max_pool_2x2(x):
    """2x2 max pooling, stride 2, 'VALID' (a trailing odd row/column is dropped, as in Keras).

    Equal to `nn.max_pool(x, (2, 2), strides=(2, 2))`, and so is its gradient but at exact ties
    inside a window, where every tied element gets it (after a relu the common ties are zeros,
    whose gradient the relu stops either way). Written as a reshape and a max, with its own
    gradient, so that XLA:CPU needs neither its select-and-scatter kernel nor the
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
    compute it; the outputs and gradients are exactly those of the uncropped model.
    """
    h, w = ((size - kernel_size + 1) // 2 * 2 + kernel_size - 1 for size in x.shape[1:3])
    return x[:, :h, :w]


def same_padding_for_pool(size, kernel_size):
    """The padding of a stride-1 'SAME' convolution whose output a 2x2 pool takes next.

    'SAME' pads (k - 1) // 2 before and k // 2 after; where a side's `size` is odd, the pool
    drops the last output row (column), so this pads one less after and the convolution
    computes only the rows the pool keeps: `size - size % 2` of them. The pooled outputs and
    all gradients are exactly those of 'SAME'.
    """
    return tuple(((kernel_size - 1) // 2, kernel_size // 2 - s % 2) for s in size)


def conv_as_matmul(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None,
                   preferred_element_type=None):
    """An NHWC convolution as zero padding, shifted (strided) slices and one matmul (im2col).

    Drop-in for `lax.conv_general_dilated` in `nn.Conv(..., conv_general_dilated=...)`: the
    parameters and the maths are the same, but XLA:CPU's convolution kernels are slow at
    small channel counts, and inside a compiled loop (the scanned training step) slower still
    (jax-ml/jax#12868: 15x for a ResNet-8), where one matmul over the kh*kw shifted views is
    not. Anything but the plain case (no dilation, no groups, NHWC/HWIO; any strides) goes to
    `lax.conv_general_dilated`.
    """
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    plain = (feature_group_count == 1
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
             and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation)))
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    kh, kw, cin, cout = rhs.shape
    sh, sw = window_strides
    pads = (lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (sh, sw), padding)
            if isinstance(padding, str) else padding)
    if any(tuple(p) != (0, 0) for p in pads):
        lhs = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
    b, oh, ow = lhs.shape[0], (lhs.shape[1] - kh) // sh + 1, (lhs.shape[2] - kw) // sw + 1

    def shifted(i, j):  # the inputs that kernel tap (i, j) sees, one per output pixel
        if (sh, sw) == (1, 1):
            return lhs[:, i:i + oh, j:j + ow, :]
        return lhs[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]

    patches = jnp.concatenate([shifted(i, j) for i in range(kh) for j in range(kw)], axis=-1)
    # A 2-D matmul, so that the weight gradient is a 2-D one too: contracting over [b, oh, ow]
    # made XLA:CPU transpose the output gradient first.
    out = jnp.dot(patches.reshape(b * oh * ow, kh * kw * cin), rhs.reshape(kh * kw * cin, cout),
                  precision=precision, preferred_element_type=preferred_element_type)
    return out.reshape(b, oh, ow, cout)


def default_conv():
    """The convolution a model should use on this backend, chosen once when the model is built:
    `conv_as_matmul` on the CPU, XLA's own convolution (cuDNN on GPUs) elsewhere."""
    return conv_as_matmul if jax.default_backend() == "cpu" else lax.conv_general_dilated
