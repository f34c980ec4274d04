"""benchmarks/airbench_muon_torch.py, the PyTorch airbench94_muon peer: network, optimisers (step
for step against the JAX recipe's `muon`), and a few training steps on tiny random data (skipped
where torch is not installed)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import airbench_muon_torch as abm
from benchmarks import airbench_torch as ab
from benchmarks import torch_ports

CPU = torch.device("cpu")


def test_network():
    torch.manual_seed(0)
    net = abm.make_net(CPU)
    assert sum(p.numel() for p in net.parameters()) == 1_972_792  # as airbench94's
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"whiten.weight"} | {f"group{g}.norm{i}.weight" for g in (1, 2, 3)
                                          for i in (1, 2)}
    assert net.head.weight.std().item() == pytest.approx(1.0, rel=1e-5)
    bias = net.whiten.bias.detach()
    assert bias.abs().max() <= 1 / math.sqrt(12) and bias.abs().min() > 0
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    seen = {}
    net.head.register_forward_hook(lambda m, i, o: seen.update(out=o))
    logits = net.eval()(x)
    assert logits.shape == (3, 10)
    assert torch.allclose(logits, seen["out"] / 256)


def test_whitening_filters_ascending():
    torch.manual_seed(0)
    images = torch.randn(16, 3, 8, 8) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    mine, theirs = (torch.nn.Conv2d(3, 24, 2, bias=True) for _ in range(2))
    abm.init_whitening(mine, images)
    ab.init_whitening(theirs, images)
    assert torch.equal(mine.weight[:12], theirs.weight[:12].flip(0))
    assert torch.equal(mine.weight[12:], -mine.weight[:12])


def test_optimizer_groups():
    net = abm.make_net(CPU)
    sgd, muon = abm.make_optimizers(net)
    assert [g["lr"] for g in sgd.param_groups] == [0.053, 0.053, 0.67]
    for group in sgd.param_groups:  # wd = 2e-6 * 2000, given as wd / lr
        assert group["lr"] * group["weight_decay"] == pytest.approx(0.004)
        assert group["nesterov"] and group["momentum"] == 0.85
        assert group["initial_lr"] == group["lr"]
    assert [len(g["params"]) for g in sgd.param_groups] == [1, 6, 1]
    (group,) = muon.param_groups
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.24, 0.6, True)
    assert len(group["params"]) == 6 and muon.ns_dtype == torch.float32  # on the CPU


def _flax_tree(net):
    """`net`'s trained parameters (and the stem weight) as the Flax network's params tree."""
    tree = {}
    for name, p in net.named_parameters():
        *modules, leaf = name.split(".")
        value = p.detach().numpy().astype(np.float32)
        if leaf == "bias":
            key = "bias"
        elif value.ndim == 4:
            key, value = "kernel", value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif value.ndim == 2:
            key, value = "kernel", value.T
        else:
            continue  # BatchNorm scales: fixed at 1, not in the Flax network
        sub = tree
        for module in modules:
            sub = sub.setdefault(module, {})
        sub[key] = value
    return tree


def test_optimizers_step_as_the_jax_recipe():
    """The same gradients through the port's SGD + Muon and cifar_jax's `muon`: the same
    parameters after every step (stem bias: 3 steps, then no gradient)."""
    import jax
    import optax

    from cifar_jax.optim import muon as muon_optim

    torch.manual_seed(0)
    net = abm.make_net(CPU, widths=(8, 16, 16))
    total, whiten_steps, batch = 5, 3, 2000
    optimizers = abm.make_optimizers(net, batch)
    params = _flax_tree(net)
    tx = muon_optim.muon(batch_size=batch, total_steps=total, steps_per_epoch=1)
    state = tx.init(params)
    update = jax.jit(tx.update)
    rng = np.random.default_rng(0)
    for step in range(total - 1):
        flax_grads = random_grads(net, rng, stem_bias=step < whiten_steps)
        abm.optimizer_step(optimizers, step, total, whiten_steps)
        updates, state = update(flax_grads, state, params)
        params = optax.apply_updates(params, updates)
        assert_same_params(params, net, step, rtol=1e-5, atol=1e-6)


def random_grads(net, rng, stem_bias):
    """Random gradients set on `net`'s trained parameters (none on the stem bias unless
    `stem_bias`), returned in the Flax layout too (zeros where torch has none: the JAX side
    ignores the stem kernel's and, after its steps, the stem bias's)."""
    for name, p in net.named_parameters():
        p.grad = None
        if p.requires_grad and (stem_bias or name != "whiten.bias"):
            p.grad = torch.from_numpy(rng.standard_normal(p.shape).astype(np.float32))
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]
    with torch.no_grad():
        saved = [p.clone() for p in net.parameters()]
        for p, g in zip(net.parameters(), grads):
            p.copy_(g)
        flax_grads = _flax_tree(net)
        for p, s in zip(net.parameters(), saved):
            p.copy_(s)
    return flax_grads


def assert_same_params(params, net, step, rtol, atol):
    """The Flax `params` equal `net`'s, leaf by leaf."""
    import jax

    want = _flax_tree(net)
    for path, got in jax.tree_util.tree_leaves_with_path(params):
        np.testing.assert_allclose(got, _at(want, path), rtol=rtol, atol=atol,
                                   err_msg=f"{jax.tree_util.keystr(path)} at step {step}")


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def _tiny_data(n_train, n_test):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n_train + n_test).astype(np.int32)
    images = rng.integers(0, 256, (n_train + n_test, 32, 32, 3), dtype=np.uint8)
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


def test_train_tiny_run_is_reproducible():
    data = _tiny_data(12, 4)
    runs = [torch_ports.train(abm, *data, seed=3, epochs=1.5, batch_size=4, progress=False,
                              widths=(8, 16, 16))
            for _ in range(2)]
    r = runs[0]
    assert r["steps"] == math.ceil(3 * 1.5) == 5
    assert [row["epoch"] for row in r["rows"]] == [1, 2]
    assert all(math.isfinite(row["train_loss"]) for row in r["rows"])
    strip = [{k: v for k, v in row.items() if k != "seconds"} for run in runs for row in run["rows"]]
    assert strip[:2] == strip[2:]
    assert runs[0]["test_accuracy_tta"] == runs[1]["test_accuracy_tta"]


def test_cli_flags():
    args = torch_ports.parse_args(abm, ["--data-dir", "d", "--seeds", "0", "1", "--epochs", "0.5"])
    assert args.seeds == [0, 1] and args.epochs == 0.5 and args.device == "cpu"
    with pytest.raises(SystemExit):
        torch_ports.parse_args(abm, [])
