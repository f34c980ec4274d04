"""The command lines' host setting: XLA:CPU's large buffers backed by transparent huge pages.

Each call of a compiled program on the CPU allocates its temporary buffers afresh and frees them
after (airbench94_muon's two steps at batch 2000: about 6.4 GB), and glibc hands such large
blocks back to the kernel, so every call faults them in again, 4 KiB at a time: 1.6 million
page faults and 3.5 s of kernel time a call, about a tenth of its time. Where the kernel's
transparent huge pages are on request only (`madvise`, the usual default), glibc's tunable
`glibc.malloc.hugetlb=1` makes malloc request them, and the faults fall to a few thousand (a
2 MiB page each): airbench94_muon's step x1.13 on 2 cores of an Intel Xeon (docs/results.md).
The arithmetic is untouched: the same bits, only the memory is mapped differently.

glibc reads its tunables when a process starts, so the command lines (`python -m
cifar_jax.train`) set it and start themselves again, once, before JAX is imported. Nothing is
done where it cannot help (not Linux with glibc 2.35 or newer; huge pages `always` or `never`),
where `GLIBC_TUNABLES` already names the setting, or with `CIFAR_JAX_HUGE_PAGES=0`. A library
user gets the same by starting Python with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`.
"""

import os
import platform
import sys

ENV = "CIFAR_JAX_HUGE_PAGES"
TUNABLE = "glibc.malloc.hugetlb"
THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_has_tunable():
    libc, version = platform.libc_ver()
    try:
        return libc == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 35)
    except ValueError:
        return False


def _on_request():
    """True where the kernel gives transparent huge pages to those who ask (`[madvise]`)."""
    try:
        with open(THP) as f:
            return "[madvise]" in f.read()
    except OSError:
        return False


def wanted(environ=os.environ):
    """The GLIBC_TUNABLES this process should have been started with, or None to go on as is."""
    if environ.get(ENV, "").lower() in ("0", "off", "false", "no") or not sys.platform.startswith(
            "linux"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables or not _glibc_has_tunable() or not _on_request():
        return None
    return f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"


def use():
    """Start this command again with huge pages requested, where `wanted` says so; call it first
    thing in a command line's main (the process is replaced: nothing after it runs twice)."""
    tunables = wanted()
    if tunables is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
                  {**os.environ, "GLIBC_TUNABLES": tunables})
    except OSError:  # no interpreter to start again (an embedded Python): go on as is
        pass
