import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from cifar_jax import ops, steps
from cifar_jax.models import CNN, MLP
from cifar_jax.ops import (
    conv_as_matmul,
    conv_winograd,
    crop_for_pool,
    max_pool_2x2,
    same_padding_for_pool,
)
from cifar_jax.train_state import create


def n_params(params):
    return sum(x.size for x in jax.tree.leaves(params))


# Inputs from NumPy and each computation jitted: eagerly, JAX compiles one program per operation
# and shape (a fifth of a second each on the CPU), most of what these small checks cost.
def normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def uniform(seed, shape):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize("model, expected", [(MLP(), 12_230_010), (CNN(), 167_562)])
def test_parameter_counts_match_keras(model, expected):
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))  # shapes
    assert n_params(params) == expected


@pytest.mark.parametrize("model", [MLP(), CNN()])
def test_models_map_images_to_ten_logits(model):
    x = uniform(1, (5, 32, 32, 3))
    params = jax.jit(model.init)(jax.random.key(0), x)
    logits = jax.jit(model.apply)(params, x)
    assert logits.shape == (5, 10)
    assert logits.dtype == jnp.float32
    assert not np.allclose(jax.nn.softmax(logits).sum(-1), 0)


def test_cnn_shapes_follow_valid_padding():
    params = jax.eval_shape(CNN().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert params["Conv_0"]["kernel"].shape == (3, 3, 3, 32)
    assert params["Conv_1"]["kernel"].shape == (3, 3, 32, 64)
    assert params["Dense_0"]["kernel"].shape == (6 * 6 * 64, 64)  # 32 -> 30 -> 15 -> 13 -> 6


def test_init_is_glorot_uniform_with_zero_biases():
    params = jax.jit(MLP().init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    params = jax.tree.map(np.asarray, params)
    kernel = params["Dense_0"]["kernel"]
    limit = np.sqrt(6 / (3072 + 3000))
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.99 * limit
    assert abs(kernel.std() - limit / np.sqrt(3)) < 0.01 * limit
    assert all(np.abs(layer["bias"]).max() == 0 for layer in params.values())


@pytest.mark.parametrize("shape", [(2, 30, 30, 4), (2, 13, 13, 3)])
def test_max_pool_2x2_equals_flax_max_pool_and_its_gradient(shape):
    x = normal(0, shape)
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(jax.jit(max_pool_2x2)(x), jax.jit(ref)(x))
    g = normal(1, (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    grad = lambda f: jax.jit(jax.grad(lambda x: (f(x) * g).sum()))(x)
    np.testing.assert_array_equal(grad(max_pool_2x2), grad(ref))


def test_relu_then_pool_has_flax_gradient_despite_zero_ties():
    x = normal(0, (2, 30, 30, 8)) - 1.0  # mostly negative: many ties at 0
    g = normal(1, (2, 15, 15, 8))
    grad = lambda pool: jax.jit(jax.grad(lambda x: (pool(nn.relu(x)) * g).sum()))(x)
    ours, ref = grad(max_pool_2x2), grad(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))
    assert (np.maximum(x, 0) == 0).mean() > 0.8
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("size, padding", [((15, 7), ((1, 0), (1, 0))),
                                           ((14, 8), ((1, 1), (1, 1))),
                                           ((15, 8), ((1, 0), (1, 1)))])
def test_same_padding_for_pool_is_same_conv_then_pool_with_its_gradients(size, padding):
    x = normal(0, (2, *size, 4))
    w = normal(1, (3, 3, 4, 5))
    assert same_padding_for_pool(size, 3) == padding

    @functools.partial(jax.jit, static_argnums=2)  # one compiled program, not one per operation
    def pooled(x, w, padding):
        return max_pool_2x2(lax.conv_general_dilated(x, w, (1, 1), padding,
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")))

    ours, ref = pooled(x, w, padding), pooled(x, w, "SAME")
    assert ours.shape == (2, size[0] // 2, size[1] // 2, 5)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    g = normal(2, ref.shape)
    grads = lambda padding: jax.jit(jax.grad(lambda x, w: (pooled(x, w, padding) * g).sum(),
                                             (0, 1)))(x, w)
    for a, b in zip(grads(padding), grads("SAME")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_as_matmul_equals_lax_conv_and_its_gradients():
    x = normal(0, (2, 15, 15, 32))
    w = normal(1, (3, 3, 32, 64))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    conv = jax.jit(lambda conv, x, w: conv(x, w, (1, 1), "VALID", dimension_numbers=dn),
                   static_argnums=0)
    grads = jax.jit(jax.grad(lambda conv, x, w: (conv(x, w, (1, 1), "VALID", dimension_numbers=dn)
                                                 ** 2).sum(), (1, 2)), static_argnums=0)
    np.testing.assert_allclose(conv(conv_as_matmul, x, w), conv(lax.conv_general_dilated, x, w),
                               rtol=1e-4, atol=1e-4)
    for ours, ref in zip(grads(conv_as_matmul, x, w), grads(lax.conv_general_dilated, x, w)):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)


def assert_same_values_and_gradients(ours, ref, x, seed):
    """`ours` and `ref` (modules of the same parameters) agree on a loss of their outputs on `x`
    and on its gradients, the parameters' and the input's; returns the parameters."""
    params = jax.jit(ref.init)(jax.random.key(seed), x)
    loss = lambda model: jax.jit(jax.value_and_grad(
        lambda p, x: (model.apply(p, x) ** 2).sum(), (0, 1)))(params, x)
    (value, grads), (ref_value, ref_grads) = loss(ours), loss(ref)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    return params


@pytest.mark.parametrize("other", [{"kernel_dilation": 2}, {"feature_group_count": 2},
                                   {"feature_group_count": 4, "strides": 2},  # depthwise
                                   {"kernel_dilation": (2, 1), "feature_group_count": 2}])
def test_conv_as_matmul_takes_kernel_dilation_and_feature_groups(other):
    x = normal(0, (2, 9, 8, 4))
    ours = nn.Conv(8, (3, 3), padding="SAME", conv_general_dilated=conv_as_matmul, **other)
    params = assert_same_values_and_gradients(ours, nn.Conv(8, (3, 3), padding="SAME", **other),
                                              x, seed=0)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(jax.grad(
        lambda p: (ours.apply(p, x) ** 2).sum()))(params))


@pytest.mark.parametrize("x_shape, w_shape, layout, lhs_dilation", [
    ((1, 8, 8, 4), (3, 3, 4, 4), ("NHWC", "HWIO", "NHWC"), (2, 2)),  # a transposed convolution's
    ((1, 4, 8, 8), (4, 4, 3, 3), ("NCHW", "OIHW", "NCHW"), None)])
def test_conv_as_matmul_hands_other_cases_to_lax(x_shape, w_shape, layout, lhs_dilation):
    @functools.partial(jax.jit, static_argnums=0)
    def conv(f, x, w):
        return f(x, w, (1, 1), ((1, 1), (1, 1)), lhs_dilation=lhs_dilation,
                 dimension_numbers=layout)

    x, w = normal(0, x_shape), normal(1, w_shape)
    np.testing.assert_array_equal(conv(conv_as_matmul, x, w), conv(lax.conv_general_dilated, x, w))


class PlainNet(nn.Module):
    """A CNN as Flax's docs write one, with XLA's convolution: strided, grouped, dilated, one in
    a nested jit."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x)))
        x = nn.Conv(8, (3, 3), strides=2, feature_group_count=4)(x)
        x = jax.jit(nn.relu)(nn.Conv(16, (3, 3), kernel_dilation=2, padding="VALID")(x))
        x = nn.Dropout(0.1, deterministic=not train)(x.reshape(len(x), -1))
        return nn.Dense(10)(x)


def test_any_models_convolutions_become_matmuls_with_the_same_values_and_gradients():
    model, x = PlainNet(), uniform(0, (2, 16, 16, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)

    def loss(apply):
        def f(params):
            logits, updates = apply({**variables, "params": params}, x, train=True,
                                    rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
            return (logits ** 2).sum(), updates
        return f

    ours, ref = loss(ops.convolutions_as_matmuls(model.apply)), loss(model.apply)
    assert "conv_general_dilated" in str(jax.make_jaxpr(jax.grad(ref, has_aux=True))(
        variables["params"]))
    assert "conv_general_dilated" not in str(jax.make_jaxpr(jax.grad(ours, has_aux=True))(
        variables["params"]))
    (value, updates), grads = jax.jit(jax.value_and_grad(ours, has_aux=True))(variables["params"])
    (ref_value, ref_updates), ref_grads = jax.jit(jax.value_and_grad(ref, has_aux=True))(
        variables["params"])
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for a, b in zip(jax.tree.leaves((grads, updates)), jax.tree.leaves((ref_grads, ref_updates)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_function_without_xla_convolutions_keeps_its_program():
    model, x = CNN(conv=conv_as_matmul), uniform(0, (2, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    plain = jax.jit(model.apply).lower(variables, x).as_text()
    assert jax.jit(ops.convolutions_as_matmuls(model.apply)).lower(variables, x).as_text() == plain
    assert ops.for_backend(model.apply)(variables, x).shape == (2, 10)


@pytest.mark.parametrize("kernel, strides, padding", [((3, 3), 2, "SAME"), ((1, 1), 2, "VALID"),
                                                      ((3, 3), (2, 1), "VALID"),
                                                      ((2, 2), 1, "SAME")])
def test_conv_as_matmul_strided_and_padded_equals_lax_conv_and_its_gradients(kernel, strides,
                                                                              padding):
    """ResNets' strided 3x3 and 1x1 convolutions; 'SAME' pads as XLA does (more after)."""
    x = normal(0, (2, 15, 16, 4))
    kw = {"kernel_size": kernel, "strides": strides, "padding": padding, "use_bias": False}
    assert_same_values_and_gradients(nn.Conv(8, conv_general_dilated=conv_as_matmul, **kw),
                                     nn.Conv(8, **kw), x, seed=1)


def _dots(conv, x, w, strides, padding):
    """How many matmuls `conv` traces to: Winograd's 16 products and 2 for the filter transform,
    or im2col's one."""
    jaxpr = jax.make_jaxpr(lambda x, w: conv(x, w, strides, padding,
                                              dimension_numbers=("NHWC", "HWIO", "NHWC")))(x, w)
    return sum(e.primitive.name == "dot_general" for e in jaxpr.eqns)


@pytest.mark.parametrize("size, padding", [((15, 15), "SAME"), ((16, 12), "VALID"),
                                           ((31, 31), ((1, 0), (1, 0))), ((9, 6), ((2, 0), (0, 1)))])
def test_conv_winograd_equals_lax_conv_and_its_gradients(size, padding):
    """Odd and even outputs, airbench's conv1 padding (31 -> 30), uneven padding; 3 -> 8 channels
    (by Winograd: `min_channels=1`)."""
    winograd = functools.partial(conv_winograd, min_channels=1)
    x, w = normal(0, (2, *size, 3)), normal(1, (3, 3, 3, 8))
    apply = jax.jit(lambda conv, x, w: conv(x, w, (1, 1), padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")),
                    static_argnums=0)
    g = normal(2, jax.eval_shape(apply, lax.conv_general_dilated, x, w).shape)
    loss = jax.jit(jax.value_and_grad(lambda conv, x, w: (apply(conv, x, w) * g).sum(), (1, 2)),
                   static_argnums=0)
    assert _dots(winograd, x, w, (1, 1), padding) == 18
    np.testing.assert_allclose(apply(winograd, x, w), apply(lax.conv_general_dilated, x, w),
                               rtol=1e-5, atol=1e-5)
    (value, grads) = loss(winograd, x, w)
    (ref_value, ref_grads) = loss(lax.conv_general_dilated, x, w)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_conv_winograd_writes_its_output_gradient_to_memory_once():
    """XLA:CPU keeps the conditional that stops it from recomputing the output's gradient in
    each of the 16 products' gradients (64 input channels: Winograd by default); batched over
    seeds (vmap) it is a select that XLA removes: the same values."""
    x, w = normal(0, (2, 8, 8, 64)), normal(1, (3, 3, 64, 8))

    def loss(x, w):
        y = conv_winograd(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (jax.nn.relu(y) ** 2).sum()

    grad = jax.jit(jax.grad(loss, (0, 1)))
    assert "conditional(" in grad.lower(x, w).compile().as_text()
    assert "conditional(" not in jax.jit(loss).lower(x, w).compile().as_text()  # forward: none
    batched_grad = jax.jit(jax.vmap(jax.grad(loss, (0, 1))))
    xs, ws = x[None].repeat(2, 0), w[None].repeat(2, 0)
    assert "conditional(" not in batched_grad.lower(xs, ws).compile().as_text()
    for a, b in zip(batched_grad(xs, ws), grad(x, w), strict=True):
        np.testing.assert_allclose(a[1], b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape, strides, padding, cin", [
    ((3, 3), (1, 1), "SAME", 64),  # output < 4x4
    ((3, 3), (1, 1), "SAME", 63),  # fewer input channels than `min_channels`, 64
    ((3, 3), (2, 2), "SAME", 3), ((2, 2), (1, 1), "VALID", 3), ((5, 5), (1, 1), "SAME", 3)])
def test_conv_winograd_hands_other_cases_to_conv_as_matmul(shape, strides, padding, cin):
    x = normal(0, (2, 3 if cin == 64 else 9, 9, cin))
    w = normal(1, (*shape, cin, 8))
    assert _dots(conv_winograd, x, w, strides, padding) == 1
    conv = jax.jit(lambda conv, x, w: conv(x, w, strides, padding,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC")),
                   static_argnums=0)
    np.testing.assert_array_equal(conv(conv_winograd, x, w), conv(conv_as_matmul, x, w))


def test_cnn_is_the_same_function_with_either_convolution():
    x = uniform(1, (4, 32, 32, 3))
    params = jax.jit(CNN().init)(jax.random.key(0), x)
    np.testing.assert_allclose(jax.jit(CNN(conv=conv_as_matmul).apply)(params, x),
                               jax.jit(CNN(conv=lax.conv_general_dilated).apply)(params, x),
                               rtol=1e-4, atol=1e-5)


class TextbookCNN(nn.Module):
    """The tutorial's CNN as plain Flax writes it: XLA's convolution, nn.max_pool, nothing cropped."""

    @nn.compact
    def __call__(self, x):
        for f in (32, 64):
            x = nn.max_pool(nn.relu(nn.Conv(f, (3, 3), padding="VALID")(x)), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def test_cnn_equals_the_textbook_cnn_and_its_gradients():
    x = uniform(1, (4, 32, 32, 3))
    labels = np.arange(4)
    params = jax.jit(CNN().init)(jax.random.key(0), x)

    def loss(model, params):
        logits = model.apply(params, x)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean(), logits

    value_and_grad = jax.jit(jax.value_and_grad(loss, 1, has_aux=True), static_argnums=0)
    (ours, ours_logits), ours_grads = value_and_grad(CNN(), params)
    (ref, ref_logits), ref_grads = value_and_grad(TextbookCNN(), params)
    np.testing.assert_allclose(ours_logits, ref_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    for name in ("Conv_0", "Conv_1", "Dense_0", "Dense_1"):
        for leaf in ("kernel", "bias"):
            g, g_ref = (np.asarray(grads["params"][name][leaf]) for grads in (ours_grads, ref_grads))
            assert np.abs(g_ref).max() > 0
            np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-5 * np.abs(g_ref).max())


@pytest.mark.parametrize("size, kept", [((32, 32), (32, 32)), ((15, 15), (14, 14)), ((14, 13), (14, 12))])
def test_crop_for_pool_keeps_the_rows_whose_outputs_the_pool_uses(size, kept):
    # 3x3 'VALID': 15 rows -> 13 outputs, of which the 2x2 pool uses 12, computed from 14 rows
    assert crop_for_pool(np.zeros((2, *size, 5)), 3).shape == (2, *kept, 5)


def test_half_precision_sums_accumulate_in_float32():
    # the gradient of a bias over 64 x 32 x 32 positions: a sum autodiff emits as reduce_sum
    x = jnp.ones((64, 32, 32, 8), jnp.bfloat16)

    def f(bias):
        return (x + bias.astype(jnp.bfloat16)).astype(jnp.float32).sum()

    grad = jax.jit(ops.sums_in_float32(jax.grad(f)))(jnp.zeros(8))
    np.testing.assert_array_equal(grad, np.full(8, 64 * 32 * 32))  # 65,536: a bfloat16 too
    # the float32 program is left as it is
    f32 = jax.grad(lambda b: (x.astype(jnp.float32) + b).sum())
    assert (jax.jit(ops.sums_in_float32(f32)).lower(jnp.zeros(8)).as_text()
            == jax.jit(f32).lower(jnp.zeros(8)).as_text())


class BiasNet(nn.Module):
    """A plain Flax CNN whose convolution has a bias and no BatchNorm after it."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.gelu(nn.Conv(4, (3, 3), dtype=self.dtype)(x))
        return nn.Dense(10, dtype=self.dtype)(x.mean((1, 2))).astype(jnp.float32)


def test_a_bfloat16_train_step_gives_a_bias_the_gradient_float32_gives():
    """The bias's gradient sums over 64 x 32 x 32 positions: in bfloat16, XLA:CPU's own sum came
    out many times off (airbench94_muon's bfloat16 runs then evaluated at 0.16 against 0.53)."""
    images = jax.random.randint(jax.random.key(0), (64, 32, 32, 3), 0, 256).astype(jnp.uint8)
    batch = {"image": images, "label": jnp.arange(64) % 10, "mask": jnp.ones(64),
             "index": jnp.arange(64), "epoch": 0}
    tx = optax.sgd(1.0)  # the update is minus the gradient

    def bias_grad(dtype):
        state = create(BiasNet(dtype=dtype), tx, jax.random.key(1))
        new, _ = jax.jit(steps.train_step)(state, batch, jax.random.key(2))
        return state.params["Conv_0"]["bias"] - new.params["Conv_0"]["bias"]

    ours, exact = bias_grad(jnp.bfloat16), bias_grad(jnp.float32)
    np.testing.assert_allclose(ours, exact, rtol=0.05, atol=0.02 * np.abs(exact).max())
