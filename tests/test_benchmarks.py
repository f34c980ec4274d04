"""The benchmarks' command lines where a peer is missing: `--help` works, a run says in one line
what to install."""

import sys

import pytest

from benchmarks import airbench


def test_airbench_without_torch_names_the_extra_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as if not installed
    for port, _ in airbench.PORTS.values():
        monkeypatch.delitem(sys.modules, port, raising=False)
    with pytest.raises(SystemExit) as exit_:
        airbench.main(["--help"])
    assert exit_.value.code == 0
    assert "--recipe" in capsys.readouterr().out
    assert airbench.main(["--throughput", "--recipe", "airbench94_muon"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("error: benchmarks.airbench runs the PyTorch port beside cifar_jax, "
                            "and PyTorch is not installed: pip install -e \".[peers]\"\n")
