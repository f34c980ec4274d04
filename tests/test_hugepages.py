"""The command lines start again with glibc asking for huge pages, where that helps."""

import os
import subprocess
import sys

import pytest

from cifar_jax import hugepages

MADVISE = "always [madvise] never\n"


def test_environment_adds_the_tunable_where_huge_pages_are_on_request():
    env = hugepages.environment({"HOME": "/h"}, MADVISE, "glibc 2.36")
    assert env == {"HOME": "/h", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    kept = hugepages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, MADVISE,
                                 "glibc 2.35")
    assert kept == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}


@pytest.mark.parametrize("environ, thp_mode, libc", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, MADVISE, "glibc 2.36"),  # the user's choice
    ({}, "[always] madvise never\n", "glibc 2.36"),  # every page a huge one already
    ({}, "always madvise [never]\n", "glibc 2.36"),  # none to be had
    ({}, None, "glibc 2.36"),  # no transparent huge pages in this kernel
    ({}, MADVISE, "glibc 2.34"),  # no such tunable before 2.35
    ({}, MADVISE, None),  # musl, macOS
])
def test_environment_is_none_where_starting_again_cannot_help(environ, thp_mode, libc):
    assert hugepages.environment(environ, thp_mode, libc) is None


def test_restart_starts_the_command_again_once_with_the_tunable():
    code = ("import os; from cifar_jax import hugepages; print('start', flush=True); "
            "hugepages.restart(); print(os.environ.get('GLIBC_TUNABLES'))")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    try:
        with open(hugepages.THP_MODE) as f:
            expected = hugepages.environment(env, f.read(), os.confstr("CS_GNU_LIBC_VERSION"))
    except (OSError, ValueError):
        expected = None
    if expected is None:  # this machine: nothing to gain, so the command runs once, as it was
        assert out == ["start", "None"]
    else:  # printed before the restart, and again after it (flushed: nothing lost)
        assert out == ["start", "start", "glibc.malloc.hugetlb=1"]
