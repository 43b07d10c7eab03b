"""Time the export steps on a real KiTS23 label map (design budget: STL export of all segments <= 2 s).

Usage: python Testing/benchmarks/bench_export.py [case_00100]   (needs ../shared/data; prints figures)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from RenalSegLib import measure, mesh, nephrometry, volume

LABELS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kits23" / "labels"


def main(case: str = "case_00100") -> None:
    labels = volume.read_labels(LABELS / f"{case}.nii.gz")
    print(f"{case}: size {labels.GetSize()}, spacing {tuple(round(s, 3) for s in labels.GetSpacing())} mm")
    start = time.perf_counter()
    anatomy = measure.analyse(labels)
    print(f"analyse (side split, components):      {time.perf_counter() - start:6.2f} s")
    with tempfile.TemporaryDirectory() as folder:
        for smooth, decimate in ((False, 0.0), (True, 0.0), (True, 0.5)):
            start = time.perf_counter()
            paths = mesh.export_meshes(anatomy.segments, folder, smooth=smooth, decimate=decimate, formats=("stl",))
            size = sum(p.stat().st_size for p in paths) / 1e6
            print(f"STL, all segments, smooth={smooth!s:5} decimate={decimate}: {time.perf_counter() - start:6.2f} s ({size:.1f} MB)")
    start = time.perf_counter()
    rows = measure.measure(labels, None, anatomy)
    print(f"measurements ({len(rows)} structures):           {time.perf_counter() - start:6.2f} s")
    start = time.perf_counter()
    scores = nephrometry.renal_score(labels, None, anatomy)
    print(f"RENAL ({len(scores)} tumors):                       {time.perf_counter() - start:6.2f} s")
    for score in scores:
        print(f"  {score['tumor']}: {score['score']}  " + ", ".join(f"{k} {c['measurement']}" for k, c in score["components"].items()))


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    main(*sys.argv[1:])
