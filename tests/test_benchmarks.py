"""The benchmarks' command lines where a peer is missing: `--help` works, a run says in one line
what to install; and how their passes are timed."""

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


def test_interleaved_medians_take_turns_and_time_only_the_settled_passes():
    from benchmarks.throughput import interleaved_medians

    calls = []

    def side(name, rates):
        rates = iter(rates)

        def train_pass():
            calls.append(name)
            return next(rates)
        return train_pass

    # each side's first pass of a turn is slow (it came back from waiting): settle=1 drops it
    result = interleaved_medians({"a": side("a", [1, 10, 1, 30, 1, 20]),
                                  "b": side("b", [2, 5, 2, 7, 2, 6])}, repeats=3, settle=1)
    assert result == {"a": 20, "b": 6}
    assert calls == ["a", "a", "b", "b"] * 3
    calls.clear()
    assert interleaved_medians({"a": side("a", [3, 1, 2]), "b": side("b", [4, 6, 5])},
                               repeats=3) == {"a": 2, "b": 5}
    assert calls == ["a", "b"] * 3


def test_the_benchmarks_name_the_cpu_by_its_family_and_model(tmp_path, monkeypatch):
    import os

    import jax

    from benchmarks import throughput

    cores = len(os.sched_getaffinity(0))
    cpuinfo = tmp_path / "cpuinfo"
    block = ("processor\t: {}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n"
             "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx512f amx_tile\n")
    cpuinfo.write_text(block.format(0) + "\n" + block.format(1).replace("207", "143"))
    assert throughput.cpu_name(cpuinfo) == (
        f"Intel(R) Xeon(R) Processor, family 6 model 207, {cores} cores")
    monkeypatch.setattr(throughput.platform, "processor", lambda: "arm")
    assert throughput.cpu_name(tmp_path / "absent") == f"arm, {cores} cores"
    assert jax.default_backend() == "cpu"  # the suite's backend: the JSON's "device" is the CPU
    monkeypatch.setattr(throughput, "cpu_name", lambda: "a CPU, 2 cores")
    assert throughput.device_name() == "a CPU, 2 cores"
    assert throughput.describe_device() == (
        f"cpu: {jax.device_count()} x cpu (a CPU, 2 cores); jax {jax.__version__}")
