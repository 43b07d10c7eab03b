"""Benchmark: time to encode clicks as guidance channels and to simulate the next click on a 96^3 crop, one CPU thread.

Prints median and p95 milliseconds per call for each guidance method and click count (budget: 50 ms
per crop), and for ``clicksim.next_click`` / ``missed_lesion_clicks`` (used inside the training loop).
Run: python Testing/benchmarks/bench_guidance.py
"""

from __future__ import annotations

import os
import time

import numpy as np

from RenalSegLib.clicksim import missed_lesion_clicks, next_click
from RenalSegLib.guidance import encode_clicks
from RenalSegLib.labels import KIDNEY, TUMOR
from RenalSegLib.preprocess import normalize_ct

BUDGET_MS = 50.0


def lesion_crop(size: int = 96, spacing_mm: float = 1.5, seed: int = 0) -> np.ndarray:
    """A normalised CT crop: soft tissue, a kidney-like ellipsoid and a darker tumour on it, CT noise."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices((size,) * 3, dtype=np.float32) * spacing_mm
    c = size * spacing_mm / 2
    hu = np.full((size,) * 3, 45.0, np.float32)
    hu[((k - c) / 45) ** 2 + ((j - c) / 25) ** 2 + ((i - c) / 30) ** 2 <= 1] = 200.0
    hu[(k - c - 20) ** 2 + (j - c) ** 2 + (i - c - 25) ** 2 <= 18**2] = 120.0
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    return normalize_ct(hu)


def clicks_on(crop: np.ndarray, count: int, rng: np.random.Generator):
    size = crop.shape[0]
    return [(tuple(int(v) for v in rng.integers(size // 4, 3 * size // 4, 3)), bool(n % 3 != 2)) for n in range(count)]


def timed(function, repeats: int = 30) -> tuple[float, float, float]:
    """Median and p95 wall milliseconds, and median CPU milliseconds (less sensitive to a busy machine)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return float(np.median(wall)), float(np.percentile(wall, 95)), float(np.median(cpu))


def click_simulation_case(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Reference: kidney with a tumour; prediction: the tumour half missed, a leak and a false-positive blob."""
    grid = np.indices((size,) * 3)
    c = size // 2
    reference = np.zeros((size,) * 3, np.uint8)
    reference[((grid[0] - c) / 30.0) ** 2 + ((grid[1] - c) / 17.0) ** 2 + ((grid[2] - c) / 20.0) ** 2 <= 1] = KIDNEY
    reference[(grid[0] - c - 12) ** 2 + (grid[1] - c) ** 2 + (grid[2] - c - 16) ** 2 <= 12**2] = TUMOR
    prediction = np.where(reference == TUMOR, KIDNEY, reference).astype(np.uint8)
    prediction[(reference == TUMOR) & (grid[2] > c + 16)] = TUMOR
    prediction[(grid[0] - 15) ** 2 + (grid[1] - 20) ** 2 + (grid[2] - 20) ** 2 <= 5**2] = TUMOR
    return prediction, reference


def main() -> None:
    import torch

    torch.set_num_threads(1)
    crop = lesion_crop()
    rng = np.random.default_rng(1)
    spacing = (1.5, 1.5, 1.5)
    print(f"guidance encoding, crop {crop.shape}, spacing {spacing} mm, 1 thread (budget {BUDGET_MS:.0f} ms)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: wall times grow on a busy machine, CPU times less so")
    print(f"{'method':10s} {'clicks':>6s} {'median ms':>10s} {'p95 ms':>8s} {'CPU ms':>8s}  within budget (p95)")
    for method in ("adaptive", "gaussian"):
        for count in (1, 3, 10):
            click_sets = iter([clicks_on(crop, count, rng) for _ in range(30)])
            median, p95, cpu = timed(lambda: encode_clicks(crop, next(click_sets), spacing, method))
            print(f"{method:10s} {count:6d} {median:10.1f} {p95:8.1f} {cpu:8.1f}  {'yes' if p95 <= BUDGET_MS else 'NO'}")

    prediction, reference = click_simulation_case()
    print(f"\nclick simulation, {reference.shape} label maps, spacing {spacing} mm")
    for name, function in (
        ("next_click", lambda: next_click(prediction, reference, spacing=spacing)),
        ("missed_lesion_clicks", lambda: missed_lesion_clicks(prediction, reference, spacing)),
    ):
        median, p95, cpu = timed(function)
        print(f"{name:22s} median {median:6.1f} ms  p95 {p95:6.1f} ms  CPU {cpu:6.1f} ms")


if __name__ == "__main__":
    main()
