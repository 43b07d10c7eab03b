"""Benchmark of CT synthesis: time and peak memory for a 512x512x600 label map and the training grids.

Usage: python Testing/benchmarks/bench_synthesis.py [--labels case_00000.nii.gz] [--threads N]
Budget (issue 3): a 512x512x600 map in under 30 s and under 4 GB. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

TESTING = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTING))
DEFAULT_LABELS = TESTING.parent.parent / "shared" / "data" / "kits23" / "labels" / "case_00000.nii.gz"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in kB on Linux


def label_map_512(path: Path) -> sitk.Image:
    """A 512x512x600 KiTS label map: the given case (padded or cut to 600 slices), else a large phantom."""
    if path.is_file():
        labels = sitk.ReadImage(str(path), sitk.sitkUInt8)
        size = list(labels.GetSize())
        slice_axis = int(np.argmax(np.abs(np.array(labels.GetDirection()).reshape(3, 3)[2])))
        if size[slice_axis] >= 600:
            index = [0, 0, 0]
            size[slice_axis] = 600
            return sitk.RegionOfInterest(labels, size, index)
        pad = [0, 0, 0]
        pad[slice_axis] = 600 - size[slice_axis]
        return sitk.ConstantPad(labels, [0, 0, 0], pad, 0)
    import phantoms

    return phantoms.kidney_phantom(size=(512, 512, 600), spacing=(0.8, 0.8, 0.5)).labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--threads", type=int, default=0, help="SimpleITK threads (default: SimpleITK's own choice)")
    args = parser.parse_args()
    if args.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    from RenalSegLib.synthesis import SynthesisConfig, synthesize

    labels = label_map_512(args.labels)
    print(f"label map: size {labels.GetSize()}, spacing {tuple(round(s, 3) for s in labels.GetSpacing())} mm, "
          f"source {args.labels.name if args.labels.is_file() else 'phantom'}; peak RSS after loading {peak_rss_gb():.2f} GB")
    realistic = SynthesisConfig(domain_randomization_rate=0.0)
    started, cpu = time.perf_counter(), time.process_time()
    result = synthesize(labels, seed=0, config=realistic)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"native grid {result.ct.GetSize()}: {elapsed:.1f} s wall ({cpu:.1f} s CPU), peak RSS {peak_rss_gb():.2f} GB (budget 30 s, 4 GB)")
    del result
    for spacing in (1.5, 4.0):
        times, cpus = [], []
        for seed in range(3):
            started, cpu = time.perf_counter(), time.process_time()
            result = synthesize(labels, seed=seed, config=SynthesisConfig(), spacing=(spacing,) * 3)
            times.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu)
        print(f"{spacing} mm grid {result.ct.GetSize()}: median {np.median(times):.2f} s wall ({np.median(cpus):.2f} s CPU) over 3 seeds")
    print(f"peak RSS of the whole run {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
