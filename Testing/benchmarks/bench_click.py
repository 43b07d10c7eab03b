"""Benchmark: latency of one click-to-refine on a KiTS-size CT (512x512x300, 0.8x0.8x1.5 mm), end to end.

A session is opened once on the bundled sample CT resampled to KiTS size (its start-up, which caches the
preprocessed CT, is reported separately); then clicks alternate between the tumor and the cyst, positive
and negative, and each is timed from `add_click` to the merged label map. Prints median and p95
(budget on 2 CPU cores: median <= 0.5 s, p95 <= 1 s) and, as the baseline, one full auto segmentation
(what a tool without crop-local refinement re-runs per click). Also times the results table's refresh
after each click (`measure.measure` of the refined labels with the lesion probability and the shapes of
unchanged structures cached, what RenalSeg Interactive runs on its worker once the clicks pause), against
the click itself.
Run: python Testing/benchmarks/bench_click.py [--clicks 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import SimpleITK as sitk

from RenalSegLib import benchmark
from RenalSegLib import labels as L
from RenalSegLib.cli import sample_ct_path
from RenalSegLib.inference import Segmenter, auto_segment
from RenalSegLib.interactive import RefinementSession
from RenalSegLib.measure import measure
from RenalSegLib.volume import labels_like, read_labels, read_volume


def lesion_points(labels: sitk.Image) -> list[tuple[tuple[float, float, float], bool]]:
    """Clicks at lesion centroids (positive) and just outside them (negative), in LPS mm."""
    array = sitk.GetArrayViewFromImage(labels)
    points = []
    for label in (L.TUMOR, L.CYST):
        kji = np.argwhere(array == label)
        if len(kji):
            centre = kji.mean(0)[::-1]
            points.append((labels.TransformContinuousIndexToPhysicalPoint(centre.tolist()), True))
            edge = kji[np.argmax(kji[:, 2])][::-1] + np.array([4.0, 0.0, 0.0])
            points.append((labels.TransformContinuousIndexToPhysicalPoint(edge.tolist()), False))
    return points


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sample = read_volume(sample_ct_path())
    ct = benchmark.kits_size_ct(sample)
    reference = sitk.Resample(read_labels(str(sample_ct_path()).replace("_ct", "_labels")), ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    segmenter = Segmenter.load(None, args.device)
    t0 = time.perf_counter()
    auto = auto_segment(ct, segmenter=segmenter)
    auto_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    session = RefinementSession(ct, auto.labels, segmenter=segmenter)
    start_s = time.perf_counter() - t0
    points = lesion_points(reference)
    latencies, refreshes, cache = [], [], {}
    for n in range(args.clicks):
        point, positive = points[n % len(points)]
        t0 = time.perf_counter()
        session.add_click(point, positive)
        latencies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        measure(labels_like(session.labels, ct), ct, lesion_probability=auto.lesion_probability, cache=cache)
        refreshes.append(time.perf_counter() - t0)
    print(f"CT {ct.GetSize()} at {ct.GetSpacing()} mm, device {segmenter.device}")
    print(f"session start (preprocessed CT cached): {start_s:.2f} s")
    print(f"click latency over {len(latencies)} clicks: median {statistics.median(latencies):.3f} s, p95 {p95(latencies):.3f} s "
          "(budget 0.5 / 1.0 s)")
    print(f"results table refresh after a click: median {statistics.median(refreshes):.3f} s, p95 {p95(refreshes):.3f} s "
          f"-> {statistics.median(refreshes) / statistics.median(latencies):.1f}x a click")
    print(f"baseline, full auto segmentation per click: {auto_s:.2f} s -> {auto_s / statistics.median(latencies):.0f}x slower than one click")
    print(f"peak RSS {benchmark.peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
