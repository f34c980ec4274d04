"""Transparent huge pages for the large buffers of a command-line run (Linux with glibc).

XLA:CPU allocates each call's temporary buffer anew (3.8 GB for airbench94's training call at
batch 1024), glibc maps a buffer that large straight from the kernel, and the kernel backs it
in 4 KiB pages at first touch: 930,000 page faults in every call, about 0.7 s of it. With
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` glibc asks for transparent huge pages
(`madvise(MADV_HUGEPAGE)`) on what it maps: 2 MiB pages, about 2,300 faults a call. airbench94
on 2 Intel Xeon cores: training 291 -> 314 img/s (an epoch is 20 calls); the step 305 -> 330
img/s in calls of 4 steps, 320 -> 333 in calls of 16 (docs/results.md, 2026-12-04).

glibc reads the variable when a process starts, so a process cannot turn it on for itself:
the command lines (`python -m cifar_jax.train`, the benchmarks) start again, once, with it
set, as PyTorch's `torch.backends.xeon.run_cpu` launcher starts training with its allocator
settings. Nothing restarts where it cannot help: not glibc 2.35 or later (the tunable's first
release), transparent huge pages off ("never") or on for all memory already ("always"), or
`GLIBC_TUNABLES` naming `glibc.malloc.hugetlb` already: `GLIBC_TUNABLES=glibc.malloc.hugetlb=0`
keeps a run on 4 KiB pages.
"""

import contextlib
import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def environment(environ, thp_mode, libc):
    """The environment to start again with, or None where huge pages are on, off or out of
    reach. `thp_mode`: the contents of `THP_MODE` ("always [madvise] never"), None where it is
    missing; `libc`: `os.confstr("CS_GNU_LIBC_VERSION")` ("glibc 2.36"), None elsewhere."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    name, _, version = (libc or "").partition(" ")
    if (name != "glibc" or tuple(int(v) for v in version.split(".")[:2]) < (2, 35)
            or "[madvise]" not in (thp_mode or "") or TUNABLE in tunables):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{TUNABLE}=1")))}


def restart():
    """Starts this command again with glibc asking for huge pages, where `environment` says
    so; returns (nothing to do) otherwise. Call it first thing in a command line's main."""
    try:
        with open(THP_MODE) as f:
            env = environment(os.environ, f.read(), os.confstr("CS_GNU_LIBC_VERSION"))
    except (OSError, ValueError):  # no such file or name, an odd version: as it is
        return
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(OSError):  # no interpreter to start again: go on as it is
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
