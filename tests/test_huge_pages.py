"""The command lines start themselves again with glibc's malloc asking for huge pages."""

import os
import subprocess
import sys

import pytest

from cifar_jax import huge_pages


@pytest.fixture
def host(monkeypatch):
    """A Linux host with glibc 2.35+ and huge pages on request: where `wanted` asks for them."""
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(huge_pages, "_glibc_has_tunable", lambda: True)
    monkeypatch.setattr(huge_pages, "_on_request", lambda: True)


def test_wanted_adds_the_tunable_once(host):
    assert huge_pages.wanted({}) == "glibc.malloc.hugetlb=1"
    assert (huge_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
            == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
    # already started with it (the second start, or the user's own value): go on as is
    assert huge_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) is None
    assert huge_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert huge_pages.wanted({"CIFAR_JAX_HUGE_PAGES": "0"}) is None


def test_wanted_only_where_it_helps(host, monkeypatch):
    monkeypatch.setattr(huge_pages, "_on_request", lambda: False)  # THP 'always' or 'never'
    assert huge_pages.wanted({}) is None
    monkeypatch.setattr(huge_pages, "_on_request", lambda: True)
    monkeypatch.setattr(huge_pages, "_glibc_has_tunable", lambda: False)  # musl, old glibc
    assert huge_pages.wanted({}) is None
    monkeypatch.setattr(huge_pages, "_glibc_has_tunable", lambda: True)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert huge_pages.wanted({}) is None


def test_use_starts_the_same_command_again(host, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(huge_pages.ENV, raising=False)
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-m", "cifar_jax.train", "--model", "cnn"])
    calls = []

    def execve(path, argv, env):
        calls.append((path, argv, env["GLIBC_TUNABLES"]))
        monkeypatch.setenv("GLIBC_TUNABLES", env["GLIBC_TUNABLES"])  # as the new process starts
    monkeypatch.setattr(os, "execve", execve)
    huge_pages.use()
    assert calls == [(sys.executable, [sys.executable, "-m", "cifar_jax.train", "--model", "cnn"],
                      "glibc.malloc.hugetlb=1")]
    huge_pages.use()  # started again: nothing more
    assert len(calls) == 1


def test_use_goes_on_when_it_cannot_start_again(host, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)

    def execve(path, argv, env):
        raise FileNotFoundError(path)
    monkeypatch.setattr(os, "execve", execve)
    huge_pages.use()  # no exception: the command goes on with 4 KiB pages
    assert "GLIBC_TUNABLES" not in os.environ


@pytest.mark.skipif(huge_pages.wanted({}) is None,
                    reason="this host gives no huge pages on request (or has no glibc 2.35+)")
def test_a_large_malloc_gets_huge_pages_after_the_new_start():
    script = """
import ctypes, os
from cifar_jax import huge_pages
huge_pages.use()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 256 << 20
block = libc.malloc(ctypes.c_size_t(size))
ctypes.memset(block, 1, size)
rollup = open("/proc/self/smaps_rollup").read()
kib = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("AnonHugePages"))
print(os.environ["GLIBC_TUNABLES"], kib)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.ENV)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "glibc.malloc.hugetlb=1"
    assert int(out[1]) >= 128 << 10  # most of the 256 MiB block in 2 MiB pages
    env[huge_pages.ENV] = "0"  # turned off: 4 KiB pages, as before
    out = subprocess.run([sys.executable, "-c", script.replace('os.environ["GLIBC_TUNABLES"]',
                                                               '"-"')],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert int(out[1]) < 128 << 10
