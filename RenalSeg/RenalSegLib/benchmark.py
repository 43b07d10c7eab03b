"""Auto-segmentation benchmark: time per stage and peak memory, against a full-resolution baseline.

The baseline is what a plain nnU-Net-style pipeline does: the same fine network slid over the whole
CT at its original resolution (128^3 windows, 50 % overlap), with no cascade. Both run in one process
on the same input, so the ratio is fair for the machine at hand.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

KITS_SIZE = (512, 512, 300)
KITS_SPACING = (0.8, 0.8, 1.5)


def kits_size_ct(ct: sitk.Image, size=KITS_SIZE, spacing=KITS_SPACING) -> sitk.Image:
    """Resample a CT onto a KiTS-size grid (default 512x512x300 at 0.8x0.8x1.5 mm) around its centre."""
    centre = np.array(ct.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ct.GetSize()]))
    direction = np.array(ct.GetDirection()).reshape(3, 3)
    grid = sitk.Image(list(size), sitk.sitkInt16)
    grid.SetSpacing(spacing)
    grid.SetDirection(ct.GetDirection())
    grid.SetOrigin((centre - direction @ ((np.array(size) - 1) / 2 * np.array(spacing))).tolist())
    return sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, -1024, sitk.sitkInt16)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports kB


def time_renalseg(ct_path: Path, out_path: Path, segmenter) -> dict[str, float]:
    """One file-in-to-labels-out run of the cascade; returns seconds per stage."""
    from .inference import segment
    from .volume import read_volume, write_labels

    t0 = time.perf_counter()
    ct = read_volume(ct_path)
    t_read = time.perf_counter() - t0
    labels = segment(ct, segmenter=segmenter)
    t1 = time.perf_counter()
    write_labels(labels, out_path, ct)
    return {"read": t_read, **segmenter.timings, "write": time.perf_counter() - t1, "total": time.perf_counter() - t0}


def time_baseline(ct_path: Path, segmenter) -> float:
    """Full-resolution sliding window of the fine network over the whole CT (no cascade)."""
    import torch
    from monai.inferers import sliding_window_inference

    from .inference import _autocast
    from .preprocess import normalize_ct
    from .volume import read_volume

    module, config = segmenter.networks["fine"]
    t0 = time.perf_counter()
    ct = read_volume(ct_path)
    x = torch.zeros((1, config.in_channels, *reversed(ct.GetSize())))
    x[0, 0] = torch.from_numpy(normalize_ct(sitk.GetArrayViewFromImage(ct)))
    with torch.inference_mode(), _autocast(segmenter.device):
        logits = sliding_window_inference(x, (128, 128, 128), 1, module, overlap=0.5, mode="gaussian")
        logits.argmax(1)
    return time.perf_counter() - t0


def run(ct: sitk.Image, repeats: int = 3, device: str = "cpu", baseline: bool = True, model_path=None) -> dict:
    """Benchmark RenalSeg on ``ct`` (written to a temporary NIfTI first, so reading is timed too)."""
    import torch

    from .inference import Segmenter

    t0 = time.perf_counter()
    segmenter = Segmenter.load(model_path, device)
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        ct_path = Path(tmp) / "ct.nii.gz"
        sitk.WriteImage(ct, str(ct_path))
        runs = [time_renalseg(ct_path, Path(tmp) / "labels.nii.gz", segmenter) for _ in range(repeats)]
        result = {
            "input": f"{ct.GetSize()} voxels at {tuple(round(s, 2) for s in ct.GetSpacing())} mm",
            "device": str(segmenter.device),
            "threads": torch.get_num_threads(),
            "model_load_s": round(load_s, 2),
            "renalseg_median_s": statistics.median(r["total"] for r in runs),
            "renalseg_stages_median_s": {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]},
            "renalseg_peak_rss_gb": round(peak_rss_gb(), 2),
        }
        if baseline:
            result["baseline_s"] = time_baseline(ct_path, segmenter)
            result["speedup_vs_baseline"] = round(result["baseline_s"] / result["renalseg_median_s"], 1)
            result["peak_rss_gb_after_baseline"] = round(peak_rss_gb(), 2)
    return result
