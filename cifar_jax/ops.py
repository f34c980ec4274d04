"""Speed kernels: re-formulations of Flax/lax operations that XLA:CPU runs faster.

Models take them as fields (`conv=...`) or call them in place of the plain operation; tests
check each against the plain form, gradients included. All are exact in exact arithmetic;
all but `conv_winograd` also round as the plain form does, up to the order of a sum.
A model needs none of them to be fast on the CPU: the train and eval steps run every model
through `for_backend`, which computes its XLA convolutions with `conv_as_matmul` there. The
train step takes its gradients through `sums_in_float32` (half-precision sums in float32).
Measured gains: benchmarks/README.md, docs/results.md.
"""

import contextlib
import functools

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
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


def _nhwc(lhs, rhs, lhs_dilation, dimension_numbers):
    """Whether a convolution is one `conv_as_matmul` handles: NHWC/HWIO, no input dilation (a
    transposed convolution's)."""
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    return (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
            and (lhs_dilation is None or tuple(lhs_dilation) == (1, 1)))


def _plain_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count):
    """Whether a convolution is the plain case Winograd's handles: NHWC/HWIO, no dilation, no
    feature groups."""
    return (feature_group_count == 1 and _nhwc(lhs, rhs, lhs_dilation, dimension_numbers)
            and (rhs_dilation is None or tuple(rhs_dilation) == (1, 1)))


def _pads(lhs, kernel, strides, padding):
    """((before, after), (before, after)) of an NHWC convolution's `padding` (a string or pairs)."""
    if isinstance(padding, str):
        return lax.padtype_to_pads(lhs.shape[1:3], kernel, strides, padding)
    return tuple(tuple(p) for p in padding)


def conv_as_matmul(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None,
                   preferred_element_type=None):
    """An NHWC convolution as zero padding, shifted (strided) slices and one matmul (im2col).

    Drop-in for `lax.conv_general_dilated` in `nn.Conv(..., conv_general_dilated=...)`: the
    parameters and the maths are the same, but XLA:CPU's convolution kernels are slow at
    small channel counts, and inside a compiled loop (the scanned training step) slower still
    (jax-ml/jax#12868: 15x for a ResNet-8), where one matmul over the kh*kw shifted views is
    not. Any strides, padding and kernel dilation; feature groups (a depthwise convolution's
    too) as one batched matmul, each group's inputs against its own filters. Other layouts
    than NHWC/HWIO and input dilation (a transposed convolution's) go to
    `lax.conv_general_dilated`.
    """
    if not _nhwc(lhs, rhs, lhs_dilation, dimension_numbers):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    kh, kw, cin, cout = rhs.shape  # cin: a group's input channels
    sh, sw = window_strides
    dh, dw = rhs_dilation or (1, 1)
    pads = _pads(lhs, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), (sh, sw), padding)
    if any(tuple(p) != (0, 0) for p in pads):
        lhs = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
    b = lhs.shape[0]
    oh = (lhs.shape[1] - (kh - 1) * dh - 1) // sh + 1
    ow = (lhs.shape[2] - (kw - 1) * dw - 1) // sw + 1

    def shifted(i, j):  # the inputs that kernel tap (i, j) sees, one per output pixel
        y, x = i * dh, j * dw
        if (sh, sw) == (1, 1):
            return lhs[:, y:y + oh, x:x + ow, :]
        return lhs[:, y:y + (oh - 1) * sh + 1:sh, x:x + (ow - 1) * sw + 1:sw, :]

    taps = [shifted(i, j) for i in range(kh) for j in range(kw)]
    if feature_group_count == 1:
        patches = jnp.concatenate(taps, axis=-1)
        # A 2-D matmul, so that the weight gradient is a 2-D one too: contracting over
        # [b, oh, ow] made XLA:CPU transpose the output gradient first.
        out = jnp.dot(patches.reshape(b * oh * ow, kh * kw * cin),
                      rhs.reshape(kh * kw * cin, cout),
                      precision=precision, preferred_element_type=preferred_element_type)
        return out.reshape(b, oh, ow, cout)
    groups = feature_group_count
    patches = jnp.stack([tap.reshape(b * oh * ow, groups, cin) for tap in taps], axis=2)
    out = jnp.einsum("ngk,kgo->ngo", patches.reshape(b * oh * ow, groups, kh * kw * cin),
                     rhs.reshape(kh * kw * cin, groups, cout // groups), precision=precision,
                     preferred_element_type=preferred_element_type)
    return out.reshape(b, oh, ow, cout)


# Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional
# Neural Networks", 2016): each 2x2 block of outputs is A^T [(G g G^T) * (B^T d B)] A, where d is
# the 4x4 block of inputs under it and g the 3x3 filter.
_WINOGRAD_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_WINOGRAD_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_WINOGRAD_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def _combine(parts, matrix):
    """[sum_j matrix[i][j] * parts[j] for each row i] for matrices of 0 and +-1: adds only."""
    rows = []
    for row in matrix:
        terms = [p if c == 1 else -p for c, p in zip(row, parts) if c]
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        rows.append(total)
    return rows


def conv_winograd(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                  dimension_numbers=None, feature_group_count=1, precision=None,
                  preferred_element_type=None, min_channels=64):
    """A 3x3 stride-1 NHWC convolution by Winograd's F(2x2, 3x3): 4/9 of the multiplies.

    Drop-in for `lax.conv_general_dilated`, as `conv_as_matmul`: the same parameters and, in
    exact arithmetic, the same outputs and gradients; in float32 they differ from the direct
    sum by rounding (relative 1e-6 at airbench's sizes), so a run with it is not bit for bit the
    run with `conv_as_matmul`, and a recipe's accuracy is measured again (benchmarks/README.md).
    Each 2x2 block of outputs takes 16 products of transformed 4x4 input blocks and transformed
    filters instead of 36: 16 matmuls [blocks, cin] x [cin, cout], and adds around them. They
    stay 16 separate matmuls on purpose: stacked into one batched matmul, XLA:CPU writes the 16
    transformed inputs and then copies them into the stack, which costs more than it saves (the
    price of 16: about twice the compile time of `conv_as_matmul`). An odd output side is
    computed one row (column) longer and cropped, so small outputs gain little: outputs smaller
    than 4x4, inputs of fewer than `min_channels` channels (below), other kernel sizes, strides
    and anything `conv_as_matmul` hands on go there.

    Few input channels: the 16 products' inner dimension is `cin`, im2col's one is 9 * cin, and
    the Winograd arrays are 4x the layer's input and output. Forward and backward at batch 1024
    on 2 Xeon cores (`python -m benchmarks.convs --batch-size 1024`): 31x31x24 -> 64, im2col
    0.89 s, Winograd 1.05 s; 15x15x64 -> 64, 0.61 and 0.54 s. With a pool and GELU after,
    31x31 inputs: 32 channels im2col 1.00 s, Winograd 1.10 s; 48: 1.42 and 1.49 s
    (docs/results.md, 2026-12-04).
    """
    winograd = (rhs.shape[:2] == (3, 3) and tuple(window_strides) == (1, 1)
                and rhs.shape[2] >= min_channels
                and _plain_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                                feature_group_count))
    if winograd:
        pads = _pads(lhs, (3, 3), (1, 1), padding)
        oh, ow = (lhs.shape[i + 1] + sum(pads[i]) - 2 for i in range(2))
    if not winograd or min(oh, ow) < 4:
        return conv_as_matmul(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type)
    cin, cout = rhs.shape[2:]
    th, tw = (oh + 1) // 2, (ow + 1) // 2  # 2x2 output blocks; an odd side gets one more row
    b = lhs.shape[0]
    lhs = jnp.pad(lhs, ((0, 0), (pads[0][0], pads[0][1] + 2 * th - oh),
                        (pads[1][0], pads[1][1] + 2 * tw - ow), (0, 0)))

    def input_transform(x, axis, blocks):  # B^T d along `axis`: rows 2t + r, r = 0..3
        rows = [lax.slice_in_dim(x, r, r + 2 * blocks - 1, stride=2, axis=axis) for r in range(4)]
        return _combine(rows, _WINOGRAD_BT)

    inputs = [v.reshape(b * th * tw, cin) for u in input_transform(lhs, 1, th)
              for v in input_transform(u, 2, tw)]
    g = jnp.asarray(_WINOGRAD_G, rhs.dtype)
    filters = jnp.einsum("ai,ijco,bj->abco", g, rhs, g).reshape(16, cin, cout)
    products = [jnp.dot(v, filters[k], precision=precision,
                        preferred_element_type=preferred_element_type).reshape(b, th, tw, cout)
                for k, v in enumerate(inputs)]
    m = [products[4 * a:4 * a + 4] for a in range(4)]  # m[a][c]: row term a, column term c
    rows = [_combine([m[a][c] for a in range(4)], _WINOGRAD_AT) for c in range(4)]  # A^T m ...
    blocks = [_combine([rows[c][i] for c in range(4)], _WINOGRAD_AT)  # ... A:
              for i in range(2)]  # blocks[i][j] = outputs [2t + i, 2s + j]
    out = jnp.stack([jnp.stack(r, axis=3) for r in blocks], axis=2)  # [b, th, 2, tw, 2, cout]
    return _gradient_in_memory(out.reshape(b, 2 * th, 2 * tw, cout)[:, :oh, :ow])


@jax.custom_vjp
def _gradient_in_memory(x):
    """`x`, whose gradient is computed once and written to memory before it is used.

    The transpose of Winograd's output transform reads the output's gradient 16 times (once
    for each product's gradient), and XLA:CPU fuses the cheap operations that compute it (a
    pool's, a norm's and an activation's gradients) into each of those 16 fusions: it computed
    them 16 times, reading their 8 or so inputs each time (group 1 of airbench94: 16 fusions of
    28 ms a step). A conditional's operand is one place XLA cannot fuse through
    (`lax.optimization_barrier` is dropped before fusion on the CPU): with it, those fusions took
    19 ms each. The predicate only needs to be unknown to the compiler; both branches return
    the gradient. Under `vmap` (seeds batched, as on accelerators) the predicate is batched,
    JAX makes the conditional a select, XLA removes it, and the program is as without this.
    """
    return x


def _gradient_in_memory_bwd(_, g):
    first = g.reshape(-1)[0]
    return (lax.cond(first == first, lambda g: g, lambda g: g * 1, g),)


_gradient_in_memory.defvjp(lambda x: (x, None), _gradient_in_memory_bwd)


# --------------------------------------------------------------------------------------------
# Any model's convolutions as matmuls
#
# Inside a compiled loop (the scanned training step) XLA:CPU runs its own convolution kernels
# 20-30x slower than outside one (jax-ml/jax#12868): a plain Flax CNN, nn.Conv(32) and
# nn.Conv(64) at batch 256, took 6.7 s a step scanned against 0.53 s a step dispatched from
# Python, and 0.23-0.25 s scanned with `conv_as_matmul` in place of XLA's convolution
# (`python -m benchmarks.loops`). So the steps do not ask models to be written with cifar_jax's
# kernels: on the CPU they trace the model's function to a jaxpr and evaluate it again with
# each `conv_general_dilated` computed by `conv_as_matmul` (which hands the cases it does not
# handle back to XLA). Gradients are those of the rewritten function: matmuls too. A function
# with no XLA convolution runs as it is, so a model written with the kernels keeps its program.
# --------------------------------------------------------------------------------------------

_CONV = "conv_general_dilated"
_CALLS = ("jit", "pjit", "closed_call", "core_call")  # a nested function, evaluated inline


def for_backend(fn):
    """`fn` (a model's `apply`, or any JAX function) as this backend runs it fastest: on the
    CPU, `convolutions_as_matmuls(fn)`; elsewhere `fn` as it is (cuDNN's convolutions on a
    GPU). Decided when `fn` is traced."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if jax.default_backend() == "cpu":
            return convolutions_as_matmuls(fn)(*args, **kwargs)
        return fn(*args, **kwargs)

    return run


def convolutions_as_matmuls(fn):
    """`fn` with every XLA convolution it computes (`lax.conv_general_dilated`, so `nn.Conv`'s
    and plain JAX's alike) computed by `conv_as_matmul` instead: the same values and
    gradients, rounded as `conv_as_matmul` rounds them. Convolutions inside a nested jit are
    replaced too; those inside a loop, a branch or a remat of `fn` itself are left to XLA.
    Arguments that are not arrays (train=True, Flax's `mutable`) are passed on as they are.
    A function with no XLA convolution runs as it is."""
    return _rewritten(fn, {_CONV: (lambda eqn: eqn.params["batch_group_count"] == 1,
                                   _conv_by_matmul)})


def _conv_by_matmul(params, lhs, rhs):
    return conv_as_matmul(
        lhs, rhs, params["window_strides"], params["padding"],
        lhs_dilation=params["lhs_dilation"], rhs_dilation=params["rhs_dilation"],
        dimension_numbers=params["dimension_numbers"],
        feature_group_count=params["feature_group_count"], precision=params["precision"],
        preferred_element_type=params["preferred_element_type"])


def _rewritten(fn, rules):
    """`fn`, traced to a jaxpr and evaluated again with the equations that `rules` take
    computed by them: `rules[primitive name] = (takes(eqn), compute(params, *inputs))`, one
    output. Non-array arguments are passed on as they are."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        leaves, tree = jax.tree.flatten((args, kwargs))
        where = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]

        def on_arrays(*arrays):
            full = list(leaves)
            for i, array in zip(where, arrays):
                full[i] = array
            args, kwargs = jax.tree.unflatten(tree, full)
            return fn(*args, **kwargs)

        arrays = [leaves[i] for i in where]
        closed, shape = jax.make_jaxpr(on_arrays, return_shape=True)(*arrays)
        if not _uses(closed.jaxpr, rules):
            return fn(*args, **kwargs)
        return jax.tree.unflatten(jax.tree.structure(shape),
                                  _evaluate(closed.jaxpr, closed.consts, rules, *arrays))

    return run


def _is_array(leaf):
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))  # tracers are jax.Arrays


def _inner(eqn):
    """(jaxpr, consts) of a call's function."""
    inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    return (inner.jaxpr, inner.consts) if hasattr(inner, "jaxpr") else (inner, ())


def _uses(jaxpr, rules):
    """Whether `jaxpr` computes a primitive that `rules` names (in a nested call too)."""
    return any(_takes(eqn, rules)
               or (eqn.primitive.name in _CALLS and _uses(_inner(eqn)[0], rules))
               for eqn in jaxpr.eqns)


def _takes(eqn, rules):
    return eqn.primitive.name in rules and rules[eqn.primitive.name][0](eqn)


def _evaluate(jaxpr, consts, rules, *args):
    """`jaxpr`'s outputs on `args`, as `jax.core.eval_jaxpr` computes them, but for the
    equations that `rules` compute."""
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))

    def read(var):
        return var.val if isinstance(var, jex.core.Literal) else env[var]

    for eqn in jaxpr.eqns:
        inputs, params, name = [read(var) for var in eqn.invars], eqn.params, eqn.primitive.name
        if _takes(eqn, rules):
            outputs = [rules[name][1](params, *inputs)]
        elif name in _CALLS and _uses(_inner(eqn)[0], rules):
            outputs = _evaluate(*_inner(eqn), rules, *inputs)
        else:  # as traced, in the context it was traced in (its PRNG's implementation, ...)
            bind = eqn.primitive.get_bind_params(params)
            subfunctions, bind = bind if isinstance(bind, tuple) else ((), bind)  # older JAX
            with eqn.ctx.manager if hasattr(eqn, "ctx") else contextlib.nullcontext():
                outputs = eqn.primitive.bind(*subfunctions, *inputs, **bind)
            if not eqn.primitive.multiple_results:
                outputs = [outputs]
        env.update(zip(eqn.outvars, outputs))
    return [read(var) for var in jaxpr.outvars]


# --------------------------------------------------------------------------------------------
# Sums of half-precision numbers in float32
#
# XLA:CPU adds up a bfloat16 `reduce_sum` in bfloat16: 2000 x 31 x 31 ones summed over their
# first three axes came to 16,128, not 1,922,000. Autodiff emits exactly such a sum for the
# gradient of every broadcast operand: a bias added to a [B, H, W, C] activation in bfloat16
# (Flax's nn.Conv with dtype=bfloat16) gets its gradient from a sum over B x H x W positions.
# airbench94_muon's whitening bias (2000 x 31 x 31 of them) got a gradient 5x off in norm,
# its running statistics drifted from its batch statistics, and its bfloat16 runs evaluated at
# 0.16 against float32's 0.53 while training alike. `jnp.sum` already accumulates half
# precision in float32; `sums_in_float32` makes every `reduce_sum` of a step do so too.
# --------------------------------------------------------------------------------------------

_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def sums_in_float32(fn):
    """`fn` with every `lax.reduce_sum` of bfloat16 or float16 numbers it computes (those of
    its gradients too, when `fn` takes them) accumulated in float32 and rounded once to the
    half type at the end, as `jnp.sum` does. Nested jits too; loops, branches and remats of
    `fn` itself are left as they are. Functions without such a sum run as they are."""
    return _rewritten(fn, {"reduce_sum": (lambda eqn: eqn.invars[0].aval.dtype in _HALF,
                                          _sum_in_float32)})


def _sum_in_float32(params, x):
    return lax.reduce_sum(x.astype(jnp.float32), params["axes"]).astype(x.dtype)


def default_conv(winograd=False):
    """The convolution a model should use on this backend, chosen once when the model is built:
    on the CPU `conv_as_matmul`, or `conv_winograd` where `winograd` (it rounds differently:
    the tutorial's models keep their figures with `conv_as_matmul`, airbench's recipes take
    Winograd's speed); XLA's own convolution (cuDNN on GPUs) elsewhere."""
    if jax.default_backend() != "cpu":
        return lax.conv_general_dilated
    return conv_winograd if winograd else conv_as_matmul
