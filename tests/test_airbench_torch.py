"""benchmarks/airbench_torch.py, the PyTorch airbench94 peer: network, schedules, augmentation,
and a few training steps on tiny random data (skipped where torch is not installed)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import airbench_torch as ab
from benchmarks import torch_ports

CPU = torch.device("cpu")


def test_network_shape_and_parameters():
    net = ab.make_net(CPU)
    assert sum(p.numel() for p in net.parameters()) == 1_972_792
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert "whiten.weight" in frozen
    assert all(n.endswith(("norm1.weight", "norm2.weight"))
               for n in frozen - {"whiten.weight"})
    assert len(frozen) == 7
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert net(x).shape == (3, 10)
    bn = net.group1.norm1
    assert bn.eps == 1e-12 and bn.momentum == pytest.approx(0.4)
    # Dirac init: the first in_channels filters are the identity.
    w = net.group2.conv1.weight.detach()
    assert torch.equal(w[:64, :, 1, 1], torch.eye(64))
    assert w[:64].abs().sum() == 64


def test_optimizer_groups():
    net = ab.make_net(CPU)
    bias_group, other_group = ab.make_optimizer(net).param_groups
    lr = 11.5 / (1024 * (1 + 1 / 0.15))
    assert other_group["lr"] == pytest.approx(lr)
    assert bias_group["lr"] == pytest.approx(64 * lr)
    # The same absolute decay in both groups: 0.0153 * 1024 / kilostep_scale.
    decay = 0.0153 * 1024 / (1024 * (1 + 1 / 0.15))
    assert other_group["lr"] * other_group["weight_decay"] == pytest.approx(decay)
    assert bias_group["lr"] * bias_group["weight_decay"] == pytest.approx(
        other_group["lr"] * other_group["weight_decay"])
    assert len(bias_group["params"]) == 6 and len(other_group["params"]) == 8
    assert bias_group["nesterov"] and bias_group["momentum"] == 0.85


def test_schedules_by_hand():
    total = 476  # ceil(48 * 9.9); warm-up int(0.23 * 476) = 109 steps
    assert ab.lr_multiplier(0, total) == pytest.approx(0.2)
    assert ab.lr_multiplier(54, total) == pytest.approx(0.2 + 0.8 * 54 / 109)
    assert ab.lr_multiplier(109, total) == pytest.approx(1.0)
    assert ab.lr_multiplier(300, total) == pytest.approx(1 - 0.93 * 191 / 367)
    assert ab.lr_multiplier(476, total) == pytest.approx(0.07)
    d = ab.lookahead_decays(total)
    assert d[0] == 0 and d[5].item() == pytest.approx(0.95 ** 5 * (5 / 476) ** 3, rel=1e-5)
    assert d[476].item() == pytest.approx(0.95 ** 5, rel=1e-6)


def test_whitening_filters_decorrelate_patches():
    torch.manual_seed(0)
    images = torch.randn(64, 3, 16, 16) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    images = images + 0.5 * images.roll(1, dims=-1)  # correlated neighbours
    conv = ab.DiracConv(3, 24, kernel_size=2, padding=0, bias=True)
    ab.init_whitening(conv, images, eps=0.0)
    w = conv.weight.detach()
    assert torch.allclose(w[12:], -w[:12])
    out = torch.nn.functional.conv2d(images, w[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    cov = out.T @ out / len(out)
    assert torch.allclose(cov, torch.eye(12), atol=1e-3)


def test_random_crop_takes_shifted_windows():
    torch.manual_seed(0)
    padded = torch.arange(50 * 2 * 8 * 8, dtype=torch.float32).reshape(50, 2, 8, 8)
    out = torch_ports.random_crop(padded, 4)
    assert out.shape == (50, 2, 4, 4)
    offsets = set()
    for img, src in zip(out, padded):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(img, src[:, dy:dy + 4, dx:dx + 4])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 10  # the offsets vary


def test_alternating_flip(monkeypatch):
    monkeypatch.setattr(torch_ports, "TRANSLATE", 0)  # no translation: the epochs differ by the flip alone
    torch.manual_seed(0)
    images = torch.rand(8, 3, 6, 6)
    batches = torch_ports.TrainBatches(images, torch.arange(8), batch_size=8)
    (a, la), = list(batches)
    (b, lb), = list(batches)
    a, b = a[la.argsort()], b[lb.argsort()]
    assert torch.equal(b, a.flip(-1))


def _tiny_data(n_train=64, n_test=32):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n_train + n_test).astype(np.int32)
    images = rng.integers(0, 256, (n_train + n_test, 32, 32, 3), dtype=np.uint8)
    images[..., 0] = np.where(labels[:, None, None] < 5, images[..., 0] // 2, images[..., 0])
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


def test_train_tiny_run_is_reproducible():
    data = _tiny_data(12, 4)
    runs = [torch_ports.train(ab, *data, seed=3, epochs=1.5, batch_size=4, progress=False)
            for _ in range(2)]
    r = runs[0]
    assert r["steps"] == math.ceil(3 * 1.5) == 5
    assert [row["epoch"] for row in r["rows"]] == [1, 2]
    for key in ("seed", "epochs", "test_accuracy", "test_accuracy_tta", "train_seconds",
                "images_per_second"):
        assert key in r
    assert r["test_accuracy"] == r["rows"][-1]["test_accuracy"]
    assert r["images_per_second"] == pytest.approx(5 * 4 / r["train_seconds"])
    assert all(math.isfinite(row["train_loss"]) for row in r["rows"])
    strip = [{k: v for k, v in row.items() if k != "seconds"}
             for run in runs for row in run["rows"]]
    assert strip[:2] == strip[2:]
    assert runs[0]["test_accuracy_tta"] == runs[1]["test_accuracy_tta"]


def test_train_rejects_too_few_images():
    with pytest.raises(ValueError, match="no full batch"):
        torch_ports.train(ab, *_tiny_data(8, 4), epochs=1, progress=False)


def test_cli_flags():
    args = torch_ports.parse_args(ab, ["--data-dir", "d", "--seeds", "0", "1", "--epochs", "0.5",
                          "--json", "o.json"])
    assert args.seeds == [0, 1] and args.epochs == 0.5 and args.device == "cpu"
    assert torch_ports.parse_args(ab, ["--throughput"]).throughput
    with pytest.raises(SystemExit):
        torch_ports.parse_args(ab, [])


def test_summary_uses_sample_std():
    runs = [{"seed": s, "epochs": 1.0, "device": "cpu", "test_accuracy_tta": a,
             "test_accuracy": a, "train_seconds": 1.0, "images_per_second": 2.0}
            for s, a in enumerate([0.9, 0.92, 0.94])]
    summary = torch_ports.summarise(ab, runs)
    assert summary["test_accuracy_tta_mean"] == pytest.approx(0.92)
    assert summary["test_accuracy_tta_std"] == pytest.approx(0.02)
    assert torch_ports.summarise(ab, runs[:1])["test_accuracy_tta_std"] == 0.0
