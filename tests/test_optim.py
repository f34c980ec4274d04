"""The airbench94 optimiser pieces (`cifar_jax.optim`: nesterov, schedules, lookahead) against transcriptions of the PyTorch
original (KellerJordan/cifar10-airbench, legacy/airbench94.py, `main()`), and against
torch.optim.SGD itself where PyTorch is installed."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import freeze

from cifar_jax.optim import lookahead, nesterov, schedules

TOTAL = 476  # the recipe's steps: ceil(48 * 9.9)

# The original's hyperparameters, derived as its main() does.
MOMENTUM = 0.85
KILOSTEP_SCALE = 1024 * (1 + 1 / (1 - MOMENTUM))
LR = 11.5 / KILOSTEP_SCALE
WD = 0.0153 * 1024 / KILOSTEP_SCALE
LR_BIASES = LR * 64.0


def get_lr(step, total_train_steps):
    """The original's LambdaLR multiplier, transcribed."""
    warmup_steps = int(total_train_steps * 0.23)
    warmdown_steps = total_train_steps - warmup_steps
    if step < warmup_steps:
        frac = step / warmup_steps
        return 0.2 * (1 - frac) + 1.0 * frac
    else:
        frac = (step - warmup_steps) / warmdown_steps
        return 1.0 * (1 - frac) + 0.07 * frac


# --- the schedule ---------------------------------------------------------------------------


def test_schedule_hand_values():
    schedule = schedules.warmup_decay_schedule(TOTAL)  # int(476 * 0.23) = 109 warm-up steps
    expected = {
        0: 0.2,
        1: 0.20733944954128442,  # 0.2 + 0.8 / 109
        108: 0.9926605504587156,  # 0.2 + 0.8 * 108 / 109
        109: 1.0,
        200: 0.769400544959128,  # 1 - 0.93 * 91 / 367
        475: 0.0725340599455041,  # 1 - 0.93 * 366 / 367
        476: 0.07,
    }
    for count, value in expected.items():
        np.testing.assert_allclose(float(schedule(count)), value, rtol=1e-6, err_msg=count)


def test_schedule_matches_get_lr_every_step():
    counts = np.arange(TOTAL + 2)  # one shape for every total: the jnp ops compile once
    for total in (TOTAL, 1, 4, 5, 100, 477):
        want = np.array([get_lr(step, total) for step in range(total + 1)])
        with jax.enable_x64(True):
            got = np.asarray(schedules.warmup_decay_schedule(total)(counts))[: total + 1]
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15, err_msg=total)
        # float32, as it runs inside the optimiser by default
        got32 = np.asarray(schedules.warmup_decay_schedule(total)(counts))[: total + 1]
        np.testing.assert_allclose(got32, want, rtol=2e-7, atol=1e-7, err_msg=total)


# --- the parameter groups -------------------------------------------------------------------

SHAPES = {
    "whiten": {"kernel": (2, 2, 3, 8), "bias": (8,)},
    "group1": {
        "Conv_0": {"kernel": (3, 3, 8, 4)},
        "BatchNorm_0": {"bias": (4,)},
        "Conv_1": {"kernel": (3, 3, 4, 4)},
        "BatchNorm_1": {"bias": (4,)},
    },
    "group2": {
        "Conv_0": {"kernel": (3, 3, 4, 6)},
        "BatchNorm_0": {"bias": (6,)},
        "Conv_1": {"kernel": (3, 3, 6, 6)},
        "BatchNorm_1": {"bias": (6,)},
    },
    "Dense_0": {"kernel": (6, 10)},
}

EXPECTED_LABELS = {
    "whiten": {"kernel": "whiten_kernel", "bias": "whiten_bias"},
    "group1": {
        "Conv_0": {"kernel": "other"},
        "BatchNorm_0": {"bias": "norm_bias"},
        "Conv_1": {"kernel": "other"},
        "BatchNorm_1": {"bias": "norm_bias"},
    },
    "group2": {
        "Conv_0": {"kernel": "other"},
        "BatchNorm_0": {"bias": "norm_bias"},
        "Conv_1": {"kernel": "other"},
        "BatchNorm_1": {"bias": "norm_bias"},
    },
    "Dense_0": {"kernel": "other"},
}


def random_tree(rng, dtype=np.float64):
    return jax.tree.map(
        lambda shape: rng.standard_normal(shape).astype(dtype),
        SHAPES,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def flatten(tree, prefix=()):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def test_labels():
    assert nesterov.airbench_param_labels(random_tree(np.random.default_rng(0))) == EXPECTED_LABELS
    # Robust to the names the network may use: a {"params": ...} wrapper, a FrozenDict,
    # lower-case module names.
    wrapped = nesterov.airbench_param_labels(freeze({"params": random_tree(np.random.default_rng(0))}))
    assert wrapped["params"] == freeze(EXPECTED_LABELS)
    assert nesterov.airbench_param_label(["block1", "norm1", "bias"]) == "norm_bias"
    assert nesterov.airbench_param_label(["params", "whiten", "kernel"]) == "whiten_kernel"
    assert nesterov.airbench_param_label(["head", "kernel"]) == "other"


def test_the_airbench_network_has_all_four_groups():
    from cifar_jax.models import AirbenchNet

    shapes = jax.eval_shape(AirbenchNet().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    labels = nesterov.airbench_param_labels(shapes["params"])
    assert labels["whiten"] == {"kernel": "whiten_kernel", "bias": "whiten_bias"}
    assert labels["group2"]["norm1"] == {"bias": "norm_bias"}
    assert labels["group3"]["conv2"] == {"kernel": "other"} and labels["head"] == {"kernel": "other"}


def torch_sgd_reference(params, grads_per_step, total, whiten_bias_steps):
    """torch.optim.SGD(nesterov=True) with the original's two groups and LambdaLR, in float64
    numpy. Returns the flattened params after each step."""
    params = {k: np.array(v, np.float64) for k, v in flatten(params).items()}
    bufs = {}
    history = []
    for step, grads in enumerate(grads_per_step):
        grads = flatten(grads)
        for key, p in params.items():
            if key == ("whiten", "kernel"):  # requires_grad=False: not in the optimiser
                continue
            if key == ("whiten", "bias") and step >= whiten_bias_steps:  # grad is None: skipped
                continue
            is_norm = any("norm" in name.lower() for name in key)
            group_lr, decay = (LR_BIASES, WD / LR_BIASES) if is_norm else (LR, WD / LR)
            g = grads[key] + decay * p
            bufs[key] = g.copy() if key not in bufs else MOMENTUM * bufs[key] + g
            g = g + MOMENTUM * bufs[key]
            params[key] = p - group_lr * get_lr(step, total) * g
        history.append({k: v.copy() for k, v in params.items()})
    return history


def nesterov_scheduled(total, steps_per_epoch=48, **settings):
    """The recipe's optimiser at its defaults (the original's hyperparameters; 48 steps an
    epoch: 50,000 // 1024) under the warmup_decay schedule, as a run builds it."""
    tx = nesterov.nesterov(batch_size=1024, steps_per_epoch=steps_per_epoch, **settings)
    return schedules.scheduled(tx, "warmup_decay", total)


def run_optax(params, grads_per_step, total, whiten_bias_steps, **kwargs):
    # the stem bias trains `whiten_bias_steps` updates: one "epoch" of that many steps
    tx = nesterov_scheduled(total, whiten_bias_steps, whiten_bias_epochs=1, **kwargs)
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    history = []
    for grads in grads_per_step:
        params, state = step(params, state, grads)
        history.append({k: np.asarray(v) for k, v in flatten(params).items()})
    return history


def assert_moves_match(got_history, want_history, start, **tolerance):
    """Compare the displacement from the start, which is what the optimiser computes."""
    start = flatten(start)
    for step, (got, want) in enumerate(zip(got_history, want_history)):
        for key in want:
            np.testing.assert_allclose(
                got[key] - start[key], want[key] - start[key], **tolerance,
                err_msg=f"step {step} {'/'.join(key)}",
            )


def test_matches_torch_sgd_transcription():
    rng = np.random.default_rng(1)
    total, steps, whiten_bias_steps = 10, 10, 4  # warm-up 2 steps, then the decay
    params = random_tree(rng)
    grads = [random_tree(rng) for _ in range(steps)]
    want = torch_sgd_reference(params, grads, total, whiten_bias_steps)
    with jax.enable_x64(True):
        got = run_optax(params, grads, total, whiten_bias_steps)
    assert_moves_match(got, want, params, rtol=1e-11, atol=1e-15)

    # The same in float32, as it trains.
    params32 = jax.tree.map(lambda x: x.astype(np.float32), params)
    grads32 = jax.tree.map(lambda x: x.astype(np.float32), grads)
    got32 = run_optax(params32, grads32, total, whiten_bias_steps)
    assert_moves_match(got32, want, params, rtol=1e-4, atol=2e-6)

    start = flatten(params)
    for snapshot in got:  # the whitening kernel never moves
        np.testing.assert_array_equal(snapshot[("whiten", "kernel")], start[("whiten", "kernel")])
    bias = [snapshot[("whiten", "bias")] for snapshot in got]
    assert np.all(bias[whiten_bias_steps - 1] != bias[whiten_bias_steps - 2])  # trained...
    for later in bias[whiten_bias_steps:]:  # ...then bit-for-bit frozen
        np.testing.assert_array_equal(later, bias[whiten_bias_steps - 1])


def test_transcription_matches_torch_sgd():
    """The numpy transcription above is torch.optim.SGD + LambdaLR, set up as the original's
    main() (so the recipe's nesterov, which matches the transcription, matches torch)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    total, steps, whiten_bias_steps = 10, 10, 3
    params = random_tree(rng)
    grads = [random_tree(rng) for _ in range(steps)]

    named = {".".join(k): torch.tensor(v) for k, v in flatten(params).items()}
    for tensor in named.values():
        tensor.requires_grad_(True)
    named["whiten.kernel"].requires_grad_(False)
    norm_biases = [p for k, p in named.items() if "norm" in k.lower() and p.requires_grad]
    other_params = [p for k, p in named.items() if "norm" not in k.lower() and p.requires_grad]
    optimizer = torch.optim.SGD(
        [{"params": norm_biases, "lr": LR_BIASES, "weight_decay": WD / LR_BIASES},
         {"params": other_params, "lr": LR, "weight_decay": WD / LR}],
        momentum=MOMENTUM, nesterov=True,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: get_lr(s, total))
    want = []
    for step, step_grads in enumerate(grads):
        optimizer.zero_grad(set_to_none=True)
        for k, g in flatten(step_grads).items():
            name = ".".join(k)
            frozen = name == "whiten.bias" and step >= whiten_bias_steps  # requires_grad=False
            if named[name].requires_grad and not frozen:
                named[name].grad = torch.tensor(g)
        optimizer.step()
        scheduler.step()
        want.append({tuple(k.split(".")): p.detach().numpy().copy() for k, p in named.items()})

    got = torch_sgd_reference(params, grads, total, whiten_bias_steps)
    assert_moves_match(got, want, params, rtol=1e-12, atol=1e-16)


def test_norm_bias_lr_is_64x_and_first_step():
    params = {"whiten": {"kernel": np.zeros(2, np.float32), "bias": np.zeros(2, np.float32)},
              "BatchNorm_0": {"bias": np.zeros(2, np.float32)},
              "Conv_0": {"kernel": np.zeros(2, np.float32)}}
    grads = jax.tree.map(np.ones_like, params)
    tx = nesterov_scheduled(TOTAL, weight_decay=0.0)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    other = np.asarray(updates["Conv_0"]["kernel"])
    # First Nesterov step: buf = g, update = -lr * get_lr(0) * (g + momentum * g).
    np.testing.assert_allclose(other, -LR * 0.2 * (1 + MOMENTUM), rtol=1e-6)
    # as "other", but for one rounding: XLA may fold the schedule's factor into the learning
    # rate on one path and not on the other (bit-equal without a schedule)
    np.testing.assert_allclose(updates["whiten"]["bias"], other, rtol=2e-7)
    np.testing.assert_allclose(updates["BatchNorm_0"]["bias"], 64 * other, rtol=1e-6)
    np.testing.assert_array_equal(updates["whiten"]["kernel"], 0.0)


def test_whiten_bias_default_is_three_epochs():
    """3 epochs of 50,000 // 1024 = 48 steps: updates 0..143 train the stem bias, 144 on do not."""
    params = random_tree(np.random.default_rng(3), np.float32)
    grads = jax.tree.map(np.ones_like, params)
    tx = nesterov_scheduled(TOTAL)
    update = jax.jit(tx.update)
    state = tx.init(params)
    for count in range(146):
        updates, state = update(grads, state, params)
        moved = np.any(np.asarray(updates["whiten"]["bias"]) != 0)
        assert moved == (count < 144), count
        assert np.any(np.asarray(updates["group1"]["Conv_0"]["kernel"]) != 0)


# --- lookahead ------------------------------------------------------------------------------


def test_lookahead_decay():
    for step in (0, 5, 100, 475, 476):
        np.testing.assert_allclose(
            float(lookahead.lookahead_decay(step, TOTAL)), 0.95**5 * (step / TOTAL) ** 3, rtol=1e-6
        )
    np.testing.assert_allclose(float(lookahead.lookahead_decay(TOTAL, TOTAL)), 0.7737809375, rtol=1e-7)


def test_lookahead_update():
    rng = np.random.default_rng(4)
    ema = {"w": rng.standard_normal(5).astype(np.float32), "n": np.int32(7),
           "h": rng.standard_normal(3).astype(jnp.bfloat16)}
    cur = {"w": rng.standard_normal(5).astype(np.float32), "n": np.int32(9),
           "h": rng.standard_normal(3).astype(jnp.bfloat16)}
    new_ema, new_cur = lookahead.lookahead_update(ema, cur, 1.0)  # the final copy
    np.testing.assert_array_equal(new_ema["w"], ema["w"])
    np.testing.assert_array_equal(new_cur["w"], ema["w"])
    new_ema, new_cur = lookahead.lookahead_update(ema, cur, 0.0)  # ema takes the model exactly
    np.testing.assert_array_equal(new_ema["w"], cur["w"])
    new_ema, new_cur = lookahead.lookahead_update(ema, cur, 0.3)
    np.testing.assert_allclose(new_ema["w"], ema["w"] + 0.7 * (cur["w"] - ema["w"]), rtol=1e-6)
    np.testing.assert_array_equal(new_cur["w"], new_ema["w"])
    assert int(new_ema["n"]) == 7 and int(new_cur["n"]) == 9  # not floating point: untouched
    assert new_ema["h"].dtype == jnp.bfloat16 and new_cur["h"].dtype == jnp.bfloat16
    with jax.enable_x64(True):  # float64 leaves stay float64
        e64, c64 = ema["w"].astype(np.float64), cur["w"].astype(np.float64)
        new_ema, _ = lookahead.lookahead_update(e64, c64, 0.25)
        np.testing.assert_allclose(new_ema, e64 + 0.75 * (c64 - e64), rtol=1e-15)


def torch_lerp(start, end, weight):
    """torch.lerp's formula, in float32."""
    weight = np.float32(weight)
    diff = end - start
    if abs(weight) < 0.5:
        return start + weight * diff
    return end - diff * (np.float32(1) - weight)


@pytest.mark.parametrize("total", [23, 25])  # 25: the last step is also a periodic one
def test_lookahead_step_matches_original_loop(total):
    rng = np.random.default_rng(total)
    tree = {"params": {"kernel": rng.standard_normal((3, 4)).astype(np.float32)},
            "batch_stats": {"mean": rng.standard_normal(4).astype(np.float32),
                            "var": rng.random(4).astype(np.float32)}}
    alpha_schedule = 0.95**5 * (np.arange(total + 1, dtype=np.float32) / np.float32(total)) ** 3

    ref_ema, ref_cur = dict(flatten(tree)), dict(flatten(tree))
    ema, cur = tree, tree
    step_fn = jax.jit(lookahead.lookahead_step, static_argnames=("total_steps", "every"))
    for current_steps in range(1, total + 1):  # after each optimiser step
        noise = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in ref_cur.items()}
        ref_cur = {k: v + noise[k] for k, v in ref_cur.items()}
        cur = jax.tree.map(lambda v, path, noise=noise: v + noise[path], cur,
                           {"params": {"kernel": ("params", "kernel")},
                            "batch_stats": {"mean": ("batch_stats", "mean"),
                                            "var": ("batch_stats", "var")}},
                           is_leaf=lambda x: isinstance(x, tuple))
        # The original's loop body.
        if current_steps % 5 == 0:
            decay = float(alpha_schedule[current_steps])
            ref_ema = {k: torch_lerp(ref_ema[k], ref_cur[k], 1 - decay) for k in ref_ema}
            ref_cur = dict(ref_ema)
        if current_steps >= total:
            ref_ema = {k: torch_lerp(ref_ema[k], ref_cur[k], 1 - 1.0) for k in ref_ema}
            ref_cur = dict(ref_ema)

        ema, cur = step_fn(ema, cur, current_steps, total_steps=total)
        for k in ref_ema:
            np.testing.assert_allclose(flatten(ema)[k], ref_ema[k], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(flatten(cur)[k], ref_cur[k], rtol=1e-6, atol=1e-6)
    for k in ref_ema:  # the final copy: the model is the ema
        np.testing.assert_array_equal(flatten(cur)[k], flatten(ema)[k])
