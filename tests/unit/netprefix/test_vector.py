"""Bulk prefix operations agree with ``ipaddress`` on random inputs."""

from __future__ import annotations

import ipaddress
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cdr_policy.netprefix.vector import collapse_v4, collapsed_size_v4, covered_v4


def _random_networks(rng: random.Random) -> list[ipaddress.IPv4Network]:
    nets = []
    for _ in range(rng.randint(0, 60)):
        length = rng.choice([32, 32, 31, 30, 28, 24, 16, 8, rng.randint(0, 32)])
        base = rng.choice([0, 0x0A000000, 0xFFFFFF00, rng.getrandbits(32)])
        address = (base + rng.randint(0, 300)) & 0xFFFFFFFF
        nets.append(ipaddress.IPv4Network((address >> (32 - length) << (32 - length), length)))
    return nets


def _intervals(nets: list[ipaddress.IPv4Network]) -> tuple[np.ndarray, np.ndarray]:
    first = np.array([int(n.network_address) for n in nets], dtype=np.int64)
    last = np.array([int(n.broadcast_address) for n in nets], dtype=np.int64)
    return first, last


@pytest.mark.parametrize("seed", range(40))
def test_collapse_equals_collapse_addresses(seed: int) -> None:
    rng = random.Random(seed)
    nets = _random_networks(rng)
    expected = [(int(n.network_address), n.prefixlen) for n in ipaddress.collapse_addresses(nets)]
    first, last = _intervals(nets)
    got = collapse_v4(first, last)
    assert list(zip(got.networks.tolist(), got.lengths.tolist(), strict=True)) == expected
    assert collapsed_size_v4(first, last) == len(expected)
    assert got.strings() == [str(n) for n in ipaddress.collapse_addresses(nets)]


@pytest.mark.parametrize("seed", range(20))
def test_covered_means_inside_the_union(seed: int) -> None:
    rng = random.Random(seed)
    by, probes = _random_networks(rng), _random_networks(rng)
    union = list(ipaddress.collapse_addresses(by))
    expected = [any(p.subnet_of(u) for u in union) for p in probes]
    assert covered_v4(*_intervals(probes), *_intervals(by)).tolist() == expected


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts the process's threads in /proc")
def test_numpy_starts_no_blas_threads_under_the_package() -> None:
    """``cdr_policy`` keeps OpenBLAS to the importing thread: its spinning threads slowed cold starts."""
    code = "import os, cdr_policy.netprefix.vector; print(len(os.listdir('/proc/self/task')))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1"
