"""Small timing helpers shared by the benchmarks: synchronised wall-clock, medians, spread."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> float | None:
    """Half the inter-quartile range relative to the median (3 decimals): the noise figure we
    report; None with fewer than 4 values."""
    if len(values) < 4:
        return None
    q1, _, q3 = statistics.quantiles(values, n=4)
    return round((q3 - q1) / 2 / statistics.median(values), 3)


def interleaved(cases: dict[str, Callable[[], object]], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Times every case once per round, rotating the order each round so that drifts in machine
    load hit all cases alike. Returns seconds per case, one entry per round."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_once(cases[name], device))
    return times


def paired_ratio(times: dict[str, list[float]], top: str, bottom: str) -> tuple[float, float | None]:
    """Median and spread of the per-round ratios top/bottom (paired: same round, same load)."""
    ratios = [a / b for a, b in zip(times[top], times[bottom])]
    return median(ratios), spread(ratios)
