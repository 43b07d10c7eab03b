"""Rebuild the synthesis figures: preview PNGs of cases with different tumor types and the realism report.

Usage (from the repository root, with the KiTS23 label maps and the real CT in ../shared/data):
    python docs/synthesis/make_figures.py [--report-cases 12]
Writes docs/synthesis/*.png (synthetic CT from real KiTS23 label maps; previews.png combines six of them),
docs/synthesis/realism_report.md
and, with --sample, the bundled sample Resources/SampleData/renalseg_sample_{ct,labels}.nii.gz.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from RenalSegLib.synthesis import TUMOR_TYPES, SynthesisConfig, synthesize
from RenalSegLib.synthesis_qc import case_statistics, preview, realism_report, roi_statistics
from RenalSegLib.volume import read_labels, read_volume, write_labels, write_volume

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1].parent / "shared" / "data"
LABELS = DATA / "kits23" / "labels"
REAL_CT = DATA / "real_ct" / "dicom_series"

# (KiTS23 case, pathology in kits23.json, synthetic tumor type, phase, forced options, cyst type, seed)
FIGURES = [
    ("case_00008", "clear-cell RCC 10.6 cm, necrosis", "clear_cell", "corticomedullary", dict(necrosis=1.0), "simple", 1),
    ("case_00005", "clear-cell RCC 4.9 cm", "clear_cell", "nephrographic", dict(necrosis=0.0), "simple", 2),
    ("case_00002", "papillary RCC 4.5 cm + cyst", "papillary", "nephrographic", {}, "complex", 3),
    ("case_00104", "oncocytoma 5.0 cm", "oncocytoma", "corticomedullary", dict(necrosis=0.0), "simple", 4),
    ("case_00176", "angiomyolipoma 4.9 cm", "fat_aml", "nephrographic", {}, "simple", 5),
    ("case_00025", "chromophobe RCC 10.4 cm, calcified", "oncocytoma", "nephrographic", dict(calcification=1.0, necrosis=1.0), "hyperdense", 6),
]
RANDOMIZED = ("case_00003", "chromophobe RCC 3.0 cm", 7)
# The sample: a validation case of the training split (its label map is never trained on), clear-cell
# RCC 4.7 cm beside a 141 mL cyst.
SAMPLE = ("case_00069", 69)
SAMPLE_DIR = HERE.parents[1] / "Resources" / "SampleData"


def make_sample(margin_mm: float = 30.0) -> None:
    """Synthesise the sample case and crop it to the abdomen around the kidneys (1.2 mm in-plane, 2.5 mm slices)."""
    case, seed = SAMPLE
    labels = read_labels(LABELS / f"{case}.nii.gz")
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    spacing = [1.2, 1.2, 1.2]
    spacing[int(np.argmax(np.abs(direction[2])))] = 2.5  # the index axis along the patient's z
    config = figure_config("clear_cell", "nephrographic", dict(necrosis=1.0), "simple")
    result = synthesize(labels, seed, config, tuple(spacing))
    ct = sitk.GetArrayViewFromImage(result.ct)
    lab = sitk.GetArrayViewFromImage(result.labels)
    body = ct > -500
    start, stop = [], []
    for axis in range(3):  # array axes k, j, i
        others = tuple(a for a in range(3) if a != axis)
        kidney = np.flatnonzero(lab.any(axis=others))
        inside = np.flatnonzero(body.any(axis=others))
        margin = int(np.ceil(margin_mm / result.ct.GetSpacing()[2 - axis]))
        # Along the patient's z keep the kidneys plus a margin; across it keep the whole body.
        lo, hi = (kidney[0] - margin, kidney[-1] + margin) if 2 - axis == int(np.argmax(np.abs(direction[2]))) else (inside[0] - 3, inside[-1] + 3)
        start.append(max(int(lo), 0))
        stop.append(min(int(hi) + 1, ct.shape[axis]))
    index = [start[2], start[1], start[0]]
    size = [stop[2] - start[2], stop[1] - start[1], stop[0] - start[0]]
    ct_crop = sitk.RegionOfInterest(result.ct, size, index)
    labels_crop = sitk.RegionOfInterest(result.labels, size, index)
    SAMPLE_DIR.mkdir(parents=True, exist_ok=True)
    write_volume(ct_crop, SAMPLE_DIR / "renalseg_sample_ct.nii.gz")
    write_labels(labels_crop, SAMPLE_DIR / "renalseg_sample_labels.nii.gz", ct_crop)
    preview(ct_crop, labels_crop, SAMPLE_DIR / "renalseg_sample_preview.png",
            title=f"RenalSeg sample: synthetic CT from KiTS23 {case} labels (clear-cell RCC 4.7 cm + cyst)")
    print(f"sample: size {ct_crop.GetSize()}, spacing {ct_crop.GetSpacing()}, parameters {result.parameters}")


def figure_config(tumor_type: str, phase: str, forced: dict, cyst_type: str) -> SynthesisConfig:
    types = copy.deepcopy(TUMOR_TYPES)
    types[tumor_type].update(forced)
    return SynthesisConfig(phase=phase, domain_randomization_rate=0.0, tumor_types=types,
                           tumor_type_weights={tumor_type: 1.0}, cyst_type_weights={cyst_type: 1.0})


def montage(scale: float = 0.4) -> None:
    """docs/synthesis/previews.png: the six realistic previews, two per row (shown in the README)."""
    from PIL import Image

    tiles = [Image.open(HERE / f"{case}_{tumor_type}.png").convert("RGB") for case, _, tumor_type, *_ in FIGURES]
    tiles = [t.resize((int(t.width * scale), int(t.height * scale)), Image.LANCZOS) for t in tiles]
    width = max(t.width for t in tiles)
    rows = [tiles[n : n + 2] for n in range(0, len(tiles), 2)]
    heights = [max(t.height for t in row) for row in rows]
    sheet = Image.new("RGB", (2 * width, sum(heights)), "white")
    y = 0
    for row, height in zip(rows, heights):
        for column, tile in enumerate(row):
            sheet.paste(tile, (column * width, y))
        y += height
    sheet.quantize(colors=64, dither=Image.Dither.NONE).save(HERE / "previews.png", optimize=True)  # < 150 kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report-cases", type=int, default=12, help="random realistic cases for the realism report")
    parser.add_argument("--spacing", type=float, default=1.2, help="preview grid spacing, mm")
    parser.add_argument("--sample", action="store_true", help="also rebuild the bundled sample in Resources/SampleData")
    parser.add_argument("--only-sample", action="store_true", help="rebuild only the bundled sample")
    parser.add_argument("--only-report", action="store_true", help="rebuild only the realism report")
    args = parser.parse_args()
    if args.sample or args.only_sample:
        make_sample()
        if args.only_sample:
            return
    spacing = (args.spacing,) * 3
    for case, pathology, tumor_type, phase, forced, cyst_type, seed in [] if args.only_report else FIGURES:
        result = synthesize(read_labels(LABELS / f"{case}.nii.gz"), seed, figure_config(tumor_type, phase, forced, cyst_type), spacing)
        title = f"Synthetic CT from KiTS23 {case} labels ({pathology}): {tumor_type} appearance, {phase} phase"
        preview(result.ct, result.labels, HERE / f"{case}_{tumor_type}.png", title=title)
        print(case, result.parameters)
    if not args.only_report:
        montage()
    case, pathology, seed = RANDOMIZED
    result = None if args.only_report else synthesize(read_labels(LABELS / f"{case}.nii.gz"), seed, SynthesisConfig(domain_randomization_rate=1.0), spacing)
    if result is not None:
        preview(result.ct, result.labels, HERE / f"{case}_domain_randomized.png",
                title=f"Synthetic CT from KiTS23 {case} labels ({pathology}): domain-randomised intensities (training only)")

    statistics = []
    files = sorted(LABELS.glob("case_*.nii.gz"))
    for n in range(args.report_cases):
        path = files[(n * 37) % len(files)]
        result = synthesize(read_labels(path), 100 + n, SynthesisConfig(domain_randomization_rate=0.0), (1.5, 1.5, 1.5))
        statistics.append(case_statistics(result))
    real = roi_statistics(read_volume(REAL_CT)) if REAL_CT.is_dir() else None
    report = realism_report(statistics, real)
    (HERE / "realism_report.md").write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
