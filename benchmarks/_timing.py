"""Timing and measuring helpers shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds, the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def percentiles(times: list[float]) -> tuple[float, float]:
    """(p50, p99) of the times, in their unit."""
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process in MiB (this one by default)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def copy_bandwidth(gigabytes: float = 1.0) -> float:
    """Bytes read + written per second by a large in-memory copy (the bandwidth ceiling)."""
    src = np.ones(int(gigabytes * 2**30) // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - start))
    return best


def read_bandwidth(nbytes: int, device: torch.device) -> float:
    """Bytes read per second by summing a buffer of ``nbytes`` on ``device`` (best of five): the rate at
    which a pass can stream that much data, e.g. a network's weights, through the cores."""
    buffer = torch.ones(max(nbytes // 4, 1), device=device)
    return buffer.numel() * 4 / min(timed(buffer.sum, device, repeats=1) for _ in range(5))


def interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    setups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Median wall time of each fn, run in turns (a, b, a, b, ...) after one warm-up each, so that a
    shared machine's load changes hit every contender alike. setups: per name, run untimed before each
    call (to put back the state the call starts from)."""
    setups = setups or {}
    for name, fn in fns.items():
        setups.get(name, lambda: None)()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            setups.get(name, lambda: None)()
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
