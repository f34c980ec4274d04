"""AirbenchNet against plain references: the PyTorch original's shapes, hand-computed BatchNorm
updates, the identity init, a NumPy whitening written from the original's formula, lax
convolutions, and (when PyTorch is installed) the same network built from torch.nn layers.

Most tests use narrow widths: the structure is the same, and XLA:CPU compiles the default
net's random init slowly. The default net is checked by shapes (jax.eval_shape).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cifar_jax.models.airbench import (
    AirbenchNet,
    dirac_init,
    init_whitening,
    whitening_kernel,
)
from cifar_jax.ops import conv_as_matmul

MEAN = np.array([0.4914, 0.4822, 0.4465])
STD = np.array([0.2470, 0.2435, 0.2616])
SMALL = (64, 32, 16)  # group widths for the tests: 64 -> 64 and a narrowing 64 -> 32 conv
NHWC = ("NHWC", "HWIO", "NHWC")
HIGHEST = lax.Precision.HIGHEST


def structured_images(n, seed=0):
    """Images in [0, 1] whose 2x2x3 patch covariance has well separated eigenvalues (iid pixels
    would make it degenerate, and its eigenvectors undetermined): white noise through a random,
    asymmetric 3x3 filter mixing the channels, a per-image offset, squashed by a sigmoid."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, 34, 34, 3))
    mix = rng.normal(size=(3, 3, 3, 3)) * rng.uniform(0.2, 1.5, size=(3, 3, 1, 1))
    x = sum(noise[:, i:i + 32, j:j + 32] @ mix[i, j] for i in range(3) for j in range(3))
    x = x / x.std() + rng.normal(size=(n, 1, 1, 3)) * 0.5
    return (1 / (1 + np.exp(-x))).astype(np.float32)


def init(model, x, seed=0):
    # an "rbg" key: XLA:CPU compiles the default threefry random bits for these kernels 4x slower
    return jax.jit(model.init)(jax.random.key(seed, impl="rbg"), x)


def forward(model, variables, x):
    """(eval logits, train logits, train's batch_stats updates): one compiled program per model,
    float32 matmuls and convolutions at full precision (no TF32 on GPUs)."""
    with jax.default_matmul_precision("highest"):
        return _forward(model, variables, x)


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, variables, x):
    train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return model.apply(variables, x, train=False), train_logits, updates


@pytest.fixture(scope="session")  # not per module: xdist may interleave modules
def small():
    """A narrow net, its variables as initialised, the same with a whitened stem and non-zero
    biases, and a batch."""
    model = AirbenchNet(widths=SMALL)
    x = jnp.asarray(structured_images(6, seed=1))
    initial = init(model, x)
    variables = init_whitening(initial, structured_images(16, seed=2))
    leaves, tree = jax.tree.flatten(variables["params"])
    rng = np.random.default_rng(3)
    # biases (1-D leaves) random, so that the tests do not pass through zeros
    leaves = [p + jnp.asarray(0.1 * rng.normal(size=p.shape), jnp.float32) if p.ndim == 1 else p
              for p in leaves]
    return model, {**variables, "params": jax.tree.unflatten(tree, leaves)}, x, initial


def conv_ref(x, kernel, padding):
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC,
                                    precision=HIGHEST)


def gelu_ref(x):
    from scipy.special import erf
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def pool_ref(x):
    b, h, w, c = x.shape
    return x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


# ---------------------------------------------------------------- shapes and parameter count

def test_parameter_count_and_shapes_match_the_torch_original():
    shapes = jax.eval_shape(AirbenchNet().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params = shapes["params"]
    assert params["whiten"]["kernel"].shape == (2, 2, 3, 24)
    assert params["whiten"]["bias"].shape == (24,)
    cin = 24
    for g, width in zip(("group1", "group2", "group3"), (64, 256, 256)):
        assert params[g]["conv1"]["kernel"].shape == (3, 3, cin, width)
        assert params[g]["conv2"]["kernel"].shape == (3, 3, width, width)
        assert set(params[g]) == {"conv1", "conv2", "norm1", "norm2"}
        for norm in ("norm1", "norm2"):
            assert set(params[g][norm]) == {"bias"}  # the scale is fixed at 1: not a parameter
            assert {k: v.shape for k, v in shapes["batch_stats"][g][norm].items()} == {
                "mean": (width,), "var": (width,)}
        cin = width
    assert params["head"]["kernel"].shape == (256, 10)

    # The torch original's parameters(), by hand from its layer shapes:
    stem = 24 * 3 * 2 * 2 + 24
    convs = 9 * (24 * 64 + 64 * 64 + 64 * 256 + 256 * 256 + 256 * 256 + 256 * 256)
    bn_weight = bn_bias = 2 * (64 + 256 + 256)
    linear = 256 * 10
    torch_total = stem + convs + bn_weight + bn_bias + linear
    assert torch_total == 1_972_792
    n = sum(p.size for p in jax.tree.leaves(params))
    assert n == torch_total - bn_weight == 1_971_640
    assert n - 288 == 1_971_352  # trained: all but the stem kernel, as in the original


def test_logits_are_float32_b_by_10_in_train_and_eval_mode(small):
    model, variables, x, _ = small
    for logits in forward(model, variables, x)[:2]:
        assert logits.shape == (6, 10) and logits.dtype == jnp.float32
        assert np.isfinite(logits).all() and float(jnp.std(logits)) > 0


def test_every_convolution_goes_through_the_conv_field():
    calls = []

    def spy(lhs, rhs, *args, **kwargs):
        calls.append((rhs.shape, args[1]))
        return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)

    model = AirbenchNet(conv=spy)
    jax.eval_shape(functools.partial(model.init, train=True), jax.random.key(0),
                   jnp.zeros((2, 32, 32, 3)))
    assert [shape for shape, _ in calls] == [
        (2, 2, 3, 24), (3, 3, 24, 64), (3, 3, 64, 64), (3, 3, 64, 256), (3, 3, 256, 256),
        (3, 3, 256, 256), (3, 3, 256, 256)]
    # conv1 of each group skips the odd last row and column that its pool drops (31, 15, 7)
    for_pool = ((1, 0), (1, 0))
    assert [p if isinstance(p, str) else tuple(map(tuple, p)) for _, p in calls] == [
        "VALID", for_pool, "SAME", for_pool, "SAME", for_pool, "SAME"]


# ---------------------------------------------------------------- BatchNorm

def test_batchnorm_running_stats_update_with_momentum_0_6(small):
    model, variables, x, _ = small
    rng = np.random.default_rng(0)
    # start from non-trivial running statistics, so that the 0.6 * old part is tested too
    stats = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 2.0, s.shape), jnp.float32),
                         variables["batch_stats"])
    variables = {**variables, "batch_stats": stats}
    _, _, updates = forward(model, variables, x)

    # group1.norm1's input, by hand: normalise, stem conv + bias, exact GELU, conv1, 2x2 pool
    p = variables["params"]
    h = (np.asarray(x, np.float64) - MEAN) / STD
    h = conv_ref(jnp.asarray(h, jnp.float32), p["whiten"]["kernel"], "VALID") + p["whiten"]["bias"]
    h = gelu_ref(np.asarray(h, np.float64))
    h = conv_ref(jnp.asarray(h, jnp.float32), p["group1"]["conv1"]["kernel"], ((1, 1), (1, 1)))
    h = pool_ref(np.asarray(h, np.float64))
    assert h.shape == (6, 15, 15, SMALL[0])
    old = stats["group1"]["norm1"]
    new = updates["batch_stats"]["group1"]["norm1"]
    np.testing.assert_allclose(new["mean"], 0.6 * old["mean"] + 0.4 * h.mean(axis=(0, 1, 2)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.6 * old["var"] + 0.4 * h.var(axis=(0, 1, 2)),
                               rtol=1e-5, atol=1e-6)  # the biased variance (see airbench.py)
    for g in ("group1", "group2", "group3"):
        for norm in ("norm1", "norm2"):
            for k in ("mean", "var"):
                assert updates["batch_stats"][g][norm][k].dtype == jnp.float32
                assert not np.allclose(updates["batch_stats"][g][norm][k], stats[g][norm][k])


def test_eval_mode_uses_the_running_stats(small):
    model, variables, x, _ = small
    eval_logits, train_logits, updates = forward(model, variables, x)
    assert not np.allclose(eval_logits, train_logits, atol=1e-3)
    # running stats set to this batch's own statistics (recovered from the 0.6 / 0.4 update):
    # eval mode on the same batch must then give train mode's logits
    batch_stats = jax.tree.map(lambda new, old: (new - 0.6 * old) / 0.4,
                               updates["batch_stats"], variables["batch_stats"])
    own_stats_logits, _, _ = forward(model, {**variables, "batch_stats": batch_stats}, x)
    np.testing.assert_allclose(own_stats_logits, train_logits, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- initialisation

def test_init_is_torch_default_then_dirac(small):
    params = small[3]["params"]
    # group1.conv2 (64 -> 64): all 64 filters are the identity, so the layer alone is the identity
    kernel = params["group1"]["conv2"]["kernel"]
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 15, 15, 64)), jnp.float32)
    for conv in (lax.conv_general_dilated, conv_as_matmul):
        layer = nn.Conv(64, (3, 3), padding="SAME", use_bias=False, conv_general_dilated=conv)
        np.testing.assert_array_equal(layer.apply({"params": {"kernel": kernel}}, x), x)
    # group1.conv1 (24 -> 64): filters 0..23 the identity of their channel, 24..63 untouched
    # PyTorch default: U(-b, b), b = 1 / sqrt(fan_in), fan_in = 3 * 3 * 24
    kernel = np.asarray(params["group1"]["conv1"]["kernel"])
    expected = np.zeros((3, 3, 24, 24))
    expected[1, 1] = np.eye(24)
    np.testing.assert_array_equal(kernel[..., :24], expected)
    rest, bound = kernel[..., 24:], 1 / np.sqrt(3 * 3 * 24)
    assert np.abs(rest).max() <= bound and np.abs(rest).max() > 0.98 * bound
    assert abs(rest.std() - bound / np.sqrt(3)) < 0.03 * bound
    # group2.conv1 (64 -> 32, fewer outputs than inputs): every filter is an identity
    expected = np.zeros((3, 3, 64, 32))
    expected[1, 1, np.arange(32), np.arange(32)] = 1
    np.testing.assert_array_equal(params["group2"]["conv1"]["kernel"], expected)
    # the head: U(-1/sqrt(16), 1/sqrt(16)), no bias; the stem bias starts at zero
    head, bound = np.asarray(params["head"]["kernel"]), 1 / np.sqrt(16)
    assert set(params["head"]) == {"kernel"} and head.shape == (16, 10)
    assert np.abs(head).max() <= bound and np.abs(head).max() > 0.9 * bound
    np.testing.assert_array_equal(params["whiten"]["bias"], 0)


def test_dirac_init_is_torch_dirac_on_the_first_cin_filters():
    torch = pytest.importorskip("torch")
    for cin, cout in [(3, 5), (5, 2)]:
        w = torch.zeros(cout, cin, 3, 3)
        torch.nn.init.dirac_(w[:cin])
        ours = dirac_init(nn.initializers.zeros)(None, (3, 3, cin, cout))
        np.testing.assert_array_equal(ours, w.numpy().transpose(2, 3, 1, 0))  # OIHW -> HWIO


# ---------------------------------------------------------------- whitening

def whitening_reference(images, eps=5e-4):
    """The original's init_whitening_conv in NumPy float64, in its own layout: NCHW images,
    patches flattened as (c, h, w), filters [out, c, h, w]. Returns (filters, eigenvalues)."""
    x = ((images.astype(np.float64) - MEAN) / STD).transpose(0, 3, 1, 2)
    windows = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(2, 3))  # n c y x h w
    patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    cov = patches.T @ patches / len(patches)
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1], vec[:, ::-1]
    filters = (vec / np.sqrt(lam + eps)).T.reshape(12, 3, 2, 2)
    return np.concatenate([filters, -filters]), lam


def torch_conv_reference(images, filters):
    """out[n, y, x, o] = sum_{c, i, j} w[o, c, i, j] * x[n, c, y + i, x + j], 'VALID'."""
    x = ((images.astype(np.float64) - MEAN) / STD).transpose(0, 3, 1, 2)
    windows = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(2, 3))
    return np.einsum("ocij,ncyxij->nyxo", filters, windows)


def test_whitening_kernel_matches_the_original_formula():
    images = structured_images(16)
    filters, lam = whitening_reference(images)
    gaps = -np.diff(lam) / lam[:-1]
    assert gaps.min() > 0.01  # distinct eigenvalues: the eigenvectors are determined up to sign

    kernel = np.asarray(whitening_kernel(images))
    assert kernel.shape == (2, 2, 3, 24) and kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
    xn = jnp.asarray((images - MEAN) / STD, jnp.float32)
    ours = np.asarray(conv_ref(xn, jnp.asarray(kernel), "VALID"), np.float64)
    ref = torch_conv_reference(images, filters)
    assert ours.shape == ref.shape == (16, 31, 31, 24)
    for k in range(12):
        sign = np.sign((ours[..., k] * ref[..., k]).sum())
        np.testing.assert_allclose(ours[..., k], sign * ref[..., k], rtol=1e-3, atol=2e-3)
        np.testing.assert_allclose(kernel[..., k], sign * filters[k].transpose(1, 2, 0),
                                   rtol=1e-3, atol=1e-3 * np.abs(filters[k]).max())
    # the whitened patches' covariance is diag(lambda / (lambda + eps))
    z = ours[..., :12].reshape(-1, 12)
    np.testing.assert_allclose(z.T @ z / len(z), np.diag(lam / (lam + 5e-4)), atol=2e-3)


def test_whitening_accepts_uint8_and_init_whitening_is_pure(small):
    _, variables, _, _ = small
    images = structured_images(16, seed=5)
    as_uint8 = np.round(images * 255).astype(np.uint8)
    np.testing.assert_allclose(whitening_kernel(as_uint8), whitening_kernel(as_uint8 / 255.0),
                               rtol=1e-4, atol=1e-4)
    before = jax.tree.map(np.array, variables)
    out = init_whitening(variables, images, eps=1e-3)
    np.testing.assert_array_equal(out["params"]["whiten"]["kernel"],
                                  whitening_kernel(images, eps=1e-3))
    jax.tree.map(np.testing.assert_array_equal, variables, before)  # input untouched
    assert out["params"]["group1"] is variables["params"]["group1"]  # the rest shared
    assert out["batch_stats"] is variables["batch_stats"]
    assert out["params"]["whiten"]["bias"] is variables["params"]["whiten"]["bias"]


# ---------------------------------------------------------------- conv_as_matmul, bfloat16

@pytest.mark.parametrize("kernel_shape, padding", [((3, 3, 16, 24), "SAME"),
                                                   ((2, 2, 3, 24), "VALID")])
def test_conv_as_matmul_equals_lax_conv_and_its_gradients(kernel_shape, padding):
    rng = np.random.default_rng(0)  # (NumPy: XLA:CPU compiles jax.random slowly, op by op)
    x = jnp.asarray(rng.normal(size=(2, 15, 15, kernel_shape[2])), jnp.float32)
    w = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)

    def f(conv, x, w):
        return conv(x, w, (1, 1), padding, dimension_numbers=dn, precision=HIGHEST)

    out_shape = jax.eval_shape(functools.partial(f, lax.conv_general_dilated), x, w).shape
    assert out_shape == ((2, 15, 15, 24) if padding == "SAME" else (2, 14, 14, 24))
    g = jnp.asarray(rng.normal(size=out_shape), jnp.float32)

    @jax.jit
    def out_and_grads(x, w):
        loss = lambda conv, x, w: (f(conv, x, w) * g).sum()
        return [(f(conv, x, w), jax.grad(loss, (1, 2))(conv, x, w))
                for conv in (conv_as_matmul, lax.conv_general_dilated)]

    (ours, ours_grads), (ref, ref_grads) = out_and_grads(x, w)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
    for a, b in zip(ours_grads, ref_grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)


def test_bfloat16_logits_and_stats_stay_float32_and_close(small):
    model, variables, x, _ = small
    ref_eval, ref_train, ref_updates = forward(model, variables, x)
    eval_logits, train_logits, updates = forward(model.clone(dtype=jnp.bfloat16), variables, x)
    for ours, ref in [(eval_logits, ref_eval), (train_logits, ref_train)]:
        assert ours.dtype == jnp.float32
        np.testing.assert_allclose(ours, ref, atol=0.05 * float(jnp.abs(ref).max()))
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05)


# ---------------------------------------------------------------- the PyTorch network

def test_same_outputs_and_running_stats_as_the_torch_layers(small):
    """The original's layer sequence in torch.nn (momentum 1 - 0.6, eps 1e-12, exact GELU,
    MaxPool2d), loaded with our variables: same logits in train and eval mode, same stats."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    model, variables, x, _ = small
    p, stats = variables["params"], variables["batch_stats"]
    t = lambda a: torch.tensor(np.asarray(a))

    def conv(cin, cout, k, kernel, bias=None, padding="same"):
        layer = tnn.Conv2d(cin, cout, k, padding=padding, bias=bias is not None)
        layer.weight.data = t(kernel).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        if bias is not None:
            layer.bias.data = t(bias)
        return layer

    def bn(width, g, norm):
        layer = tnn.BatchNorm2d(width, eps=1e-12, momentum=1 - 0.6)
        layer.bias.data = t(p[g][norm]["bias"])
        layer.running_mean.data = t(stats[g][norm]["mean"]).clone()
        layer.running_var.data = t(stats[g][norm]["var"]).clone()
        return layer

    layers = [conv(3, 24, 2, p["whiten"]["kernel"], p["whiten"]["bias"], padding=0), tnn.GELU()]
    cin = 24
    for i, w in enumerate(SMALL):
        g = f"group{i + 1}"
        layers += [conv(cin, w, 3, p[g]["conv1"]["kernel"]), tnn.MaxPool2d(2), bn(w, g, "norm1"),
                   tnn.GELU(), conv(w, w, 3, p[g]["conv2"]["kernel"]), bn(w, g, "norm2"),
                   tnn.GELU()]
        cin = w
    head = tnn.Linear(cin, 10, bias=False)
    head.weight.data = t(p["head"]["kernel"]).T.contiguous()
    net = tnn.Sequential(*layers, tnn.MaxPool2d(3), tnn.Flatten(), head)
    xt = t((np.asarray(x) - MEAN) / STD).float().permute(0, 3, 1, 2)

    eval_logits, train_logits, updates = forward(model, variables, x)
    with torch.no_grad():
        net.eval()
        np.testing.assert_allclose(eval_logits, net(xt).numpy() / 9, rtol=1e-4, atol=1e-5)
        net.train()
        np.testing.assert_allclose(train_logits, net(xt).numpy() / 9, rtol=1e-4, atol=1e-5)
    norms = [m for m in net if isinstance(m, tnn.BatchNorm2d)]
    sizes = {1: 15 * 15, 2: 7 * 7, 3: 3 * 3}
    for j, layer in enumerate(norms):
        g, norm = f"group{j // 2 + 1}", f"norm{j % 2 + 1}"
        new, old = updates["batch_stats"][g][norm], stats[g][norm]
        np.testing.assert_allclose(new["mean"], layer.running_mean.numpy(), rtol=1e-4, atol=1e-5)
        # torch's running_var took the unbiased batch variance; Flax's the biased one
        n = 6 * sizes[j // 2 + 1]
        torch_batch_var = (layer.running_var.numpy() - 0.6 * np.asarray(old["var"])) / 0.4
        np.testing.assert_allclose(new["var"],
                                   0.6 * old["var"] + 0.4 * torch_batch_var * (n - 1) / n,
                                   rtol=1e-4, atol=1e-5)
