"""benchmarks/cifar10_speedrun_torch.py, the PyTorch cifar10_speedrun peer: its optimisers step as
cifar_jax's `muon` with the recipe's settings, and a few training steps on tiny random data
(skipped where torch is not installed)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_airbench_muon_torch import _flax_tree, assert_same_params, random_grads  # noqa: E402

from benchmarks import cifar10_speedrun_torch as sr  # noqa: E402
from benchmarks import torch_ports  # noqa: E402
from cifar_jax.registry import REGISTRY  # noqa: E402

CPU = torch.device("cpu")


def test_optimizers_step_as_the_jax_recipe():
    """The same gradients through the port's SGD + the original's Muon and cifar_jax's `muon`
    with the recipe's settings: the same parameters after every step (the stem bias: 2 steps,
    then no gradient; the filters renormalised at steps 2, 5, 10)."""
    import jax
    import optax

    from cifar_jax.optim import muon as muon_optim

    torch.manual_seed(0)
    net = sr.make_net(CPU, widths=(8, 16, 16))
    total, steps_per_epoch, batch = 40, 10, 1536
    steps = sr.Steps(net, batch, total, steps_per_epoch)
    assert steps.whiten_steps == math.ceil(0.19 * 10) == 2
    settings = {k.split(".", 1)[1]: v for k, v in
                REGISTRY["model"]["cifar10_speedrun"].recipe["settings"].items()
                if k.startswith("optimizer.")}
    tx = muon_optim.muon(0.205, **settings, batch_size=batch, total_steps=total,
                         steps_per_epoch=steps_per_epoch)
    params = _flax_tree(net)
    state, update = tx.init(params), jax.jit(tx.update)
    rng = np.random.default_rng(0)
    sgd, muon = steps.optimizers
    for step in range(10):
        flax_grads = random_grads(net, rng, stem_bias=step < steps.whiten_steps)
        sgd.param_groups[0]["lr"] = sgd.param_groups[0]["initial_lr"] * (1 - step / 2)
        for group in sgd.param_groups[1:] + muon.param_groups:
            group["lr"] = group["initial_lr"] * (1 - step / total)
        for opt in steps.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        updates, state = update(flax_grads, state, params)
        params = optax.apply_updates(params, updates)
        assert_same_params(params, net, step, rtol=2e-5, atol=2e-6)
    assert muon.last_norm_step == 10  # renormalised at steps 2, 5 and 10 (1-based)


def test_a_short_run_on_tiny_data_and_its_selective_tta():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (28, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 28).astype(np.int32)
    run = torch_ports.train(sr, images[:20], labels[:20], images[20:], labels[20:], seed=1,
                            epochs=1.5, batch_size=4, progress=False, widths=(8, 16, 16))
    assert run["steps"] == math.ceil(5 * 1.5) == 8
    assert [row["epoch"] for row in run["rows"]] == [1, 2]
    assert all(math.isfinite(row["train_loss"]) for row in run["rows"])
    assert 0 <= run["test_accuracy_tta"] <= 1
    net = sr.make_net(CPU, widths=(8, 16, 16)).eval()
    x = torch_ports.normalize(torch_ports.to_device_images(images, CPU))
    with torch.no_grad():
        plain, selective = net(x), torch_ports._selective_logits(net, x)
    changed = (plain != selective).any(1)
    assert int(changed.sum()) == int(28 * 0.25)  # the 7 least confident, the rest as they were
    confidence = torch.softmax(plain, 1).max(1).values
    assert confidence[changed].max() <= confidence[~changed].min()
