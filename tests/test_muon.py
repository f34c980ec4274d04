"""The airbench94_muon recipe (`cifar_jax/recipes/airbench94_muon.py`): its optimiser against
NumPy transcriptions of the PyTorch original (KellerJordan/cifar10-airbench, airbench94_muon.py:
`Muon.step`, `zeropower_via_newtonschulz5`, torch.optim.SGD and the lr loop of `main()`), its
network, and short runs on mock data (a narrow net)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from conftest import MOCK_EXAMPLES, swept_and_own_optimiser_steps

from cifar_jax import data, main, register_model, registry, train_state
from cifar_jax.cli import config_overrides
from cifar_jax.config import Config, ConfigError
from cifar_jax.models.airbench import (
    CIFAR_MEAN,
    CIFAR_STD,
    AirbenchMuonNet,
    AirbenchNet,
    whitening_kernel,
)
from cifar_jax.optim import muon as muon_optim
from cifar_jax.recipes.airbench94_muon import airbench94_muon
from cifar_jax.registry import REGISTRY
from cifar_jax.run import load_state
from cifar_jax.train import train_and_evaluate

# --- NumPy transcriptions of the original --------------------------------------------------------


def zeropower_via_newtonschulz5(G, steps=3, eps=1e-7):
    """The original's function, in float64 (it runs in bfloat16)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.astype(np.float64)
    X /= (np.linalg.norm(X) + eps)
    if G.shape[0] > G.shape[1]:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.shape[0] > G.shape[1]:
        X = X.T
    return X


def muon_step(p, g, buf, lr, momentum=0.6):
    """The original's `Muon.step` (nesterov=True) for one parameter [out, in, kh, kw]."""
    buf = momentum * buf + g
    g = g + momentum * buf
    p = p * (len(p) ** 0.5 / np.linalg.norm(p))
    update = zeropower_via_newtonschulz5(g.reshape(len(g), -1)).reshape(g.shape)
    return p - lr * update, buf


def sgd_step(p, g, buf, lr, weight_decay, momentum=0.85):
    """torch.optim.SGD(nesterov=True) for one parameter (its buffer starts as the first g)."""
    g = g + weight_decay * p
    buf = momentum * buf + g
    g = g + momentum * buf
    return p - lr * g, buf


def to_torch(kernel):
    return np.transpose(kernel, (3, 2, 0, 1))  # HWIO -> OIHW


def to_flax(weight):
    return np.transpose(weight, (2, 3, 1, 0))


# --- the optimiser -----------------------------------------------------------------------------


def small_params(rng):
    """An airbench-like params tree: the stem, a kernel with out < in*kh*kw and one with
    out > in*kh*kw (the transposed branch), a BatchNorm bias and a head."""
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32) * 0.3
    return {"whiten": {"kernel": f(2, 2, 3, 24), "bias": f(24)},
            "group1": {"conv1": {"kernel": f(3, 3, 4, 8)}, "conv2": {"kernel": f(3, 3, 2, 32)},
                       "norm1": {"bias": f(8)}},
            "head": {"kernel": f(32, 10)}}


def test_muon_matches_the_original_step_by_step():
    rng = np.random.default_rng(0)
    params = small_params(rng)
    total, batch = 6, 2000  # stem bias: ceil(3 * 1) = 3 steps, then frozen
    tx = muon_optim.muon(batch_size=batch, total_steps=total, steps_per_epoch=1)
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    wd = 2e-6 * batch
    ref = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    ref["group1"]["conv1"]["kernel"] = to_torch(ref["group1"]["conv1"]["kernel"])
    ref["group1"]["conv2"]["kernel"] = to_torch(ref["group1"]["conv2"]["kernel"])
    bufs = jax.tree.map(np.zeros_like, ref)
    for t in range(5):
        grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        # the original's loop: lrs set before the step, from the 0-based step count
        for name in ("conv1", "conv2"):
            g = to_torch(np.asarray(grads["group1"][name]["kernel"], np.float64))
            ref["group1"][name]["kernel"], bufs["group1"][name]["kernel"] = muon_step(
                ref["group1"][name]["kernel"], g, bufs["group1"][name]["kernel"],
                0.24 * (1 - t / total))
        for path, lr, until in ((("group1", "norm1", "bias"), 0.053, total),
                                (("head", "kernel"), 0.67, total), (("whiten", "bias"), 0.053, 3)):
            if t >= until:  # no gradient: torch skips the parameter
                continue
            *where, leaf = path
            p, b = _get(ref, where), _get(bufs, where)
            g = np.asarray(_get(grads, path), np.float64)
            p[leaf], b[leaf] = sgd_step(p[leaf], g, b[leaf], lr * (1 - t / until), wd / lr)
        got = jax.tree.map(np.asarray, params)
        for name in ("conv1", "conv2"):
            np.testing.assert_allclose(to_torch(got["group1"][name]["kernel"]),
                                       ref["group1"][name]["kernel"], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} at step {t}")
        for path in (("group1", "norm1", "bias"), ("head", "kernel"), ("whiten", "bias")):
            np.testing.assert_allclose(_get(got, path), _get(ref, path), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{path} at step {t}")
        np.testing.assert_array_equal(got["whiten"]["kernel"],
                                      small_params(np.random.default_rng(0))["whiten"]["kernel"])


SPEEDRUN = {"learning_rate": 0.205, "momentum": 0.655, "weight_decay": 1.0418e-6,
            "ns_coefficients": (3.4576, -4.7391, 2.0843), "ns_eps": 1e-5, "ns_batched": True,
            "target_magnitude": (0.5012, 0.0786), "renorm_every": 2, "renorm_growth": 15,
            "renorm_eps": 1e-7, "filter_decay": 1.0418e-6}


class SpeedrunMuon:
    """hiverge/cifar10-speedrun's `Muon.step` (cifar10_speedrun.py at 5cd49b1, nesterov=True)
    over filters [out, in, kh, kw], in float64: the momentum, the renormalisation every
    `norm_freq` steps, the zero-padded batch Newton-Schulz with the target magnitude, the lr
    step and the decoupled decay."""

    def __init__(self, filters, lr, momentum, total, wd):
        self.filters, self.lr0, self.momentum, self.total, self.wd = filters, lr, momentum, total, wd
        self.bufs = [np.zeros_like(p) for p in filters]
        self.step_count = self.last_norm_step = 0
        self.max_d = max(len(p) for p in filters)
        self.max_k = (max(p[0].size for p in filters) + 15) // 16 * 16

    def newton_schulz(self, grads):
        a, b, c = (3.4576, -4.7391, 2.0843)
        progress = self.step_count / self.total
        target = 0.5012 * (1 - progress) + 0.0786 * progress
        x = np.stack([np.pad(g.reshape(len(g), -1), ((0, self.max_d - len(g)),
                                                     (0, self.max_k - g[0].size))) for g in grads])
        x = x * (target / (np.linalg.norm(x, axis=(1, 2), keepdims=True) + 1e-5))
        x = x / (np.linalg.norm(x, axis=(1, 2), keepdims=True) + 1e-5)
        transposed = x.shape[1] > x.shape[2]
        if transposed:
            x = x.transpose(0, 2, 1)
        for _ in range(3):
            a_ = x @ x.transpose(0, 2, 1)
            x = a * x + (b * a_ + c * a_ @ a_) @ x
        if transposed:
            x = x.transpose(0, 2, 1)
        return [x[i, :len(g), :g[0].size].reshape(g.shape) for i, g in enumerate(grads)]

    def step(self, grads, loop_step):
        lr = self.lr0 * (1 - loop_step / self.total)  # set before the step, 0-based
        self.step_count += 1
        norm_freq = 2 + int(15 * self.step_count / self.total)
        self.bufs = [self.momentum * buf + g for buf, g in zip(self.bufs, grads)]
        nesterov = [g + self.momentum * buf for g, buf in zip(grads, self.bufs)]
        renorm = self.step_count - self.last_norm_step >= norm_freq
        if renorm:
            self.last_norm_step = self.step_count
            self.filters = [p * (len(p) ** 0.5 / (np.linalg.norm(p) + 1e-7)) for p in self.filters]
        self.filters = [(p - lr * u) * (1 - lr * self.wd)
                        for p, u in zip(self.filters, self.newton_schulz(nesterov))]
        return renorm


def test_muons_speedrun_settings_step_as_cifar10_speedrun():
    rng = np.random.default_rng(1)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32) * 0.3
    params = {"a": {"kernel": f(3, 3, 4, 8)}, "b": {"kernel": f(3, 3, 8, 8)},
              "c": {"kernel": f(3, 3, 2, 40)}}  # out > in * 9: the batch's rows win
    total, batch = 40, 1536
    tx = muon_optim.muon(**SPEEDRUN, batch_size=batch, total_steps=total, steps_per_epoch=20)
    state, step = tx.init(params), jax.jit(tx.update)
    names = sorted(params)
    ref = SpeedrunMuon([to_torch(np.float64(params[n]["kernel"])) for n in names],
                       0.205, 0.655, total, 1.0418e-6 * batch)
    renormalised = []
    for t in range(12):
        grads = {n: {"kernel": f(*params[n]["kernel"].shape)} for n in names}
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        renormalised.append(ref.step([to_torch(np.float64(grads[n]["kernel"])) for n in names], t))
        for n, p in zip(names, ref.filters):
            np.testing.assert_allclose(params[n]["kernel"], to_flax(p), rtol=2e-4, atol=2e-6)
    # norm_freq = 2 + int(15 k / 40) at step k: 2, 2, 3, 3, 3, 4, 4, 5, 5, 5, 6, 6
    assert renormalised == [False, True, False, False, True, False, False, False, False, True,
                            False, False]


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_newton_schulz_is_the_originals_on_both_orientations():
    rng = np.random.default_rng(1)
    for shape in ((8, 36), (32, 18)):
        g = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(muon_optim.newton_schulz(jnp.asarray(g)),
                                   zeropower_via_newtonschulz5(g), rtol=1e-5, atol=1e-6)


def test_filters_are_renormalised_to_sqrt_out_before_the_step():
    """With a zero gradient the Muon update is zero: what is left is the renormalisation."""
    kernel = np.random.default_rng(2).standard_normal((3, 3, 4, 8)).astype(np.float32)
    params = {"conv": {"kernel": kernel}}
    tx = muon_optim.muon(batch_size=1, total_steps=10, steps_per_epoch=1)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)["conv"]["kernel"]
    assert float(jnp.linalg.norm(new)) == pytest.approx(math.sqrt(8), rel=1e-6)
    np.testing.assert_allclose(new, kernel * math.sqrt(8) / np.linalg.norm(kernel), rtol=1e-6)


def test_whiten_bias_epochs_zero_freezes_the_stem_bias():
    params = small_params(np.random.default_rng(3))
    tx = muon_optim.muon(whiten_bias_epochs=0, batch_size=1, total_steps=4, steps_per_epoch=2)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert not np.any(updates["whiten"]["bias"]) and not np.any(updates["whiten"]["kernel"])
    assert np.all(updates["group1"]["norm1"]["bias"] != 0)


def test_newton_schulz_runs_in_the_runs_dtype():
    """--dtype bfloat16: the iteration in bfloat16, as the original's; the update stays float32."""
    params = small_params(np.random.default_rng(4))
    grads = jax.tree.map(lambda p: p + 1, params)
    updates = {}
    for dtype in ("float32", "bfloat16"):
        tx = muon_optim.muon(dtype=dtype, batch_size=1, total_steps=4, steps_per_epoch=2)
        updates[dtype] = tx.update(grads, tx.init(params), params)[0]["group1"]["conv1"]["kernel"]
    assert updates["bfloat16"].dtype == jnp.float32
    assert not np.array_equal(updates["bfloat16"], updates["float32"])
    np.testing.assert_allclose(updates["bfloat16"], updates["float32"], atol=0.02)


def test_the_recipe_and_its_run_length():
    config = Config.for_model("airbench94_muon")
    assert (config.optimizer, config.epochs, config.batch_size, config.drop_last) == (
        "muon", 8, 2000, True)
    assert (config.learning_rate, config.settings) == (0.24, {"loss.label_smoothing": 0.2})
    muon = registry.settings_of("optimizer", muon_optim.muon)  # the rest are muon's own defaults
    assert {name: s.default for name, s in muon.items()} == {
        "momentum": 0.6, "weight_decay": 2e-6, "whiten_bias_epochs": 3, "bias_lr": 0.053,
        "head_lr": 0.67, "sgd_momentum": 0.85, "ns_steps": 3,
        "ns_coefficients": (3.4445, -4.7750, 2.0315), "ns_eps": 1e-7, "ns_batched": False,
        "target_magnitude": (), "renorm_every": 1, "renorm_growth": 0.0, "renorm_eps": 0.0,
        "filter_decay": 0.0, "momentum_dtype": ""}
    assert (config.reduction, config.schedule, config.lookahead, config.tta) == (
        "sum", "constant", False, 2)
    assert config.augmentations == ("alternating_flip", "translate")
    assert train_state.run_length(config, 50_000) == (25, 200)
    assert train_state.run_length(Config.for_model("airbench94_muon", epochs=2.5), 50_000) == (
        25, 63)


# --- the network -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net_and_variables():
    net = airbench94_muon(jnp.float32)
    return net, jax.jit(lambda k: net.init(k, jnp.zeros((1, 32, 32, 3)), train=False))(
        jax.random.key(0))


def test_network_is_airbench94s_with_the_muon_changes(net_and_variables):
    net, variables = net_and_variables
    params = variables["params"]
    plain = jax.eval_shape(lambda: AirbenchNet().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, plain["params"])
    assert sum(p.size for p in jax.tree.leaves(params)) == 1_971_640
    assert net.scaling_factor == 1 / 256 and net.batchnorm_momentum == 0.6
    head = params["head"]["kernel"]
    assert float(jnp.std(head, ddof=1)) == pytest.approx(1.0, rel=1e-5)
    bias = params["whiten"]["bias"]
    assert float(jnp.abs(bias).max()) <= 1 / math.sqrt(12) and float(jnp.abs(bias).min()) > 0
    # The logits are the head's output / 256 (the network with XLA's own convolution: the same
    # maths as the recipe's Winograd, and this test in 1.0 s instead of 3.6).
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    logits, state = jax.jit(lambda v, x: net.clone(conv=jax.lax.conv_general_dilated).apply(
        v, x, capture_intermediates=True))(variables, images)  # op by op it takes seconds
    head_out = state["intermediates"]["head"]["__call__"][0]
    np.testing.assert_allclose(logits, head_out / 256, rtol=1e-6)


def test_whitening_filters_in_the_originals_order(net_and_variables):
    net, variables = net_and_variables
    images = np.random.default_rng(4).integers(0, 256, (40, 32, 32, 3), np.uint8)
    kernel = net.init_from_data(variables, images)["params"]["whiten"]["kernel"]
    largest_first = whitening_kernel(images)
    np.testing.assert_array_equal(kernel[..., :12], largest_first[..., 11::-1])
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
    assert variables["params"]["whiten"]["kernel"] is not kernel  # pure


def speedrun_init_whiten(images, eps=5e-4):
    """cifar10-speedrun's `CifarNet.init_whiten` (cifar10_speedrun.py at 5cd49b1) in NumPy, on
    normalised NCHW images: the patch covariance's SVD, U * rsqrt(S + eps) as OIHW filters
    [12, c, 2, 2], then their negations."""
    n, c, hh, ww = images.shape
    patches = np.stack([images[:, :, i:i + 2, j:j + 2] for i in range(hh - 1)
                        for j in range(ww - 1)], axis=1).reshape(-1, c * 4)
    covariance = patches.T @ patches / len(patches)
    u, s, _ = np.linalg.svd(covariance)
    filters = (u / np.sqrt(s + eps)).T.reshape(-1, c, 2, 2)
    return np.concatenate([filters, -filters])


def test_svd_whitening_and_its_images_are_cifar10_speedruns(net_and_variables):
    net, variables = net_and_variables
    images = np.random.default_rng(5).integers(0, 256, (30, 32, 32, 3), np.uint8)
    speedrun = net.clone(whiten_method="svd", whiten_images=20)
    kernel = speedrun.init_from_data(variables, images)["params"]["whiten"]["kernel"]
    normalised = (images[:20] / 255 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
    ref = speedrun_init_whiten(normalised.transpose(0, 3, 1, 2))
    ours = to_torch(np.asarray(kernel, np.float64))
    signs = np.sign((ours * ref).sum(axis=(1, 2, 3)))  # each filter's sign is LAPACK's choice
    np.testing.assert_allclose(ours * signs[:, None, None, None], ref, rtol=2e-4, atol=2e-4)
    assert not np.allclose(kernel, net.init_from_data(variables, images)["params"]["whiten"][
        "kernel"])  # the default: eigh, 5,000 images, ascending


def test_the_conv_groups_activation_is_a_setting(net_and_variables):
    net, variables = net_and_variables
    x = jnp.asarray(np.random.default_rng(6).uniform(size=(2, 32, 32, 3)), jnp.float32)
    gelu, silu = (net.clone(activation=name).apply(variables, x, capture_intermediates=True,
                                                   mutable=["intermediates"])[1]
                  for name in ("gelu", "silu"))
    stem = gelu["intermediates"]["whiten"]["__call__"][0]  # the stem's GELU is not the groups'
    np.testing.assert_array_equal(stem, silu["intermediates"]["whiten"]["__call__"][0])
    pre = silu["intermediates"]["group1"]["norm2"]["__call__"][0]
    np.testing.assert_allclose(silu["intermediates"]["group1"]["__call__"][0],
                               pre * jax.nn.sigmoid(pre), rtol=1e-6, atol=1e-6)
    assert not np.allclose(gelu["intermediates"]["group1"]["__call__"][0],
                           silu["intermediates"]["group1"]["__call__"][0])


# --- runs on mock data -------------------------------------------------------------------------


def narrow_muon(dtype):
    """airbench94_muon's network, narrow, so that a test compiles in seconds."""
    return AirbenchMuonNet(widths=(16, 32, 32), scaling_factor=1 / 32, dtype=dtype)


def narrow_config(**overrides):
    register_model("airbench94_muon_narrow", narrow_muon,
                   **REGISTRY["model"]["airbench94_muon"].recipe)
    return Config.for_model("airbench94_muon_narrow",
                            **{"batch_size": 32, "eval_batch_size": 32, "epochs": 2, **overrides})


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
    """2 epochs of the recipe (narrow), batch 32 on 70 mock images: 2 steps an epoch."""
    workdir = str(tmp_path_factory.mktemp("muon") / "run")
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        history = train_and_evaluate(narrow_config(), workdir, progress=False)
    del REGISTRY["model"]["airbench94_muon_narrow"]  # each test that reads the run registers it
    return workdir, history


def test_recipe_trains_on_mock_data(one_seed, mock_cifar10):
    workdir, history = one_seed
    narrow_config()  # registered again for load_state
    assert [row["epoch"] for row in history] == [1, 2]
    assert "test_accuracy_tta" in history[-1] and "test_accuracy_tta" not in history[0]
    assert all(math.isfinite(row["train_loss"]) for row in history)
    _, state, epoch = load_state(workdir)
    assert (epoch, int(state.step)) == (2, 4)
    images = data.load_cifar10()["train"][0]
    np.testing.assert_allclose(state.params["whiten"]["kernel"][..., :12],
                               whitening_kernel(images[:5000])[..., 11::-1], rtol=1e-5, atol=1e-6)


def test_two_seeds_at_once_and_a_sweep(one_seed, mock_cifar10, tmp_path):
    """One epoch (no TTA, to compile less) of a sweep of Muon's learning rate x seeds 0 and 1,
    in one program: `--num-seeds` and `--sweep` together."""
    history = train_and_evaluate(narrow_config(num_seeds=2, epochs=1, tta=0,
                                               sweep={"learning_rate": [0.24, 0.12]}),
                                 str(tmp_path / "run"), progress=False)
    assert [row["epoch"] for row in history] == [1]
    full, half = (entry["per_seed"]["train_loss"] for entry in history[0]["points"])
    assert len(full) == 2 and full[0] != full[1] and full[1] != half[1]
    # Seed 0 at lr 0.24 is the one-seed run: its first epoch's losses (steps 0 and 1) are the
    # same in a 1-epoch run as in a 2-epoch one (step 0's lrs are the full ones whatever the
    # run's length, and step 1's loss is computed before step 1's update).
    assert full[0] == pytest.approx(one_seed[1][0]["train_loss"], rel=1e-6)


def test_the_sgd_groups_rates_are_muons_own_settings():
    args, settings = main.parse_args(["--model", "cnn", "--optimizer", "muon",
                                       "--optimizer.bias_lr", "0.001", "--optimizer.head_lr=0.002"])
    config = Config.for_model(**config_overrides(args, settings))
    assert config.settings == {"optimizer.bias_lr": 0.001, "optimizer.head_lr": 0.002}
    with pytest.raises(ConfigError, match=r"^optimizer.head_lr: optimizer 'adam' has no setting "
                                          r"'head_lr'"):
        Config.for_model("cnn", settings={"optimizer.head_lr": 1e-3})  # adam has no such group
    with pytest.raises(SystemExit):  # the flag of the version that held it in Config
        main.parse_args(["--optimizer", "muon", "--head-lr", "0.002"])


def test_cnn_trains_with_muon(mock_cifar10, tmp_path):
    config = Config.for_model("cnn", optimizer="muon")
    params = train_state.from_config(config, jax.random.key(0), n_train=64).params
    labels = muon_optim.muon_param_labels(params)
    assert (labels["Conv_0"]["kernel"], labels["Conv_0"]["bias"], labels["Dense_1"]["kernel"],
            labels["Dense_1"]["bias"]) == (muon_optim.FILTERS, muon_optim.BIAS, muon_optim.HEAD, muon_optim.BIAS)
    assert main.main(["--model", "cnn", "--optimizer", "muon", "--epochs", "1", "--workdir",
                       str(tmp_path / "run"), "--no-progress", "--eval-batch-size", "32"]) == 0
    _, state, _ = load_state(str(tmp_path / "run"))
    assert int(state.step) == 3  # 70 images, batch 32, the partial batch padded
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(state.params))


def test_a_sweep_of_muons_settings_steps_as_each_points_own_optimiser():
    """`--sweep` over Muon's learning rate, the SGD groups' weight decay and the head's learning
    rate (the decay is coupled: divided by each group's rate): three updates of every point,
    its values leaves of the optimiser's state, equal to the optimiser built with them (the
    convolution kernel, the stem, a BatchNorm bias and the head)."""
    config = Config.for_model("airbench94_muon", sweep={
        "learning_rate": [0.12, 0.24], "weight_decay": [1e-6, 2e-6],
        "optimizer.head_lr": [0.67, 0.1]})
    rng = np.random.default_rng(0)
    params = {"whiten": {"kernel": rng.normal(size=(2, 2, 3, 4)), "bias": rng.normal(size=4)},
              "group1": {"Conv_0": {"kernel": rng.normal(size=(3, 3, 4, 8))},
                         "BatchNorm_0": {"bias": rng.normal(size=8)}},
              "head": {"kernel": rng.normal(size=(8, 10))}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    grads = [jax.tree.map(lambda x, i=i: jnp.cos(x * (i + 2)), params) for i in range(3)]
    for _, (mine, theirs) in swept_and_own_optimiser_steps(config, params, grads):
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
