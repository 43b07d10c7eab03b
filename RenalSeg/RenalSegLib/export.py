"""Surgical-planning export: from a KiTS label map and its CT to meshes, segmentation files, measurements,
RENAL scores and the one-page report, written all-or-nothing into one folder.

The work is split by responsibility: ``mesh`` (surfaces and mesh files), ``segfiles`` (.seg.nrrd,
NIfTI, DICOM SEG), ``measure`` (sizes, HU, side, pole), ``nephrometry`` (RENAL) and ``report``;
this module re-exports their public functions and orchestrates them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import SimpleITK as sitk

from .errors import RenalSegError
from .measure import analyse, check_inputs, check_probability_map, measure, write_measurements_csv  # noqa: F401  (public API)
from .mesh import COORDINATE_SYSTEMS, MESH_FORMATS, export_meshes  # noqa: F401
from .nephrometry import renal_score  # noqa: F401
from .outputs import atomic_path
from .report import write_report  # noqa: F401
from .segfiles import write_dicom_seg, write_nifti, write_seg_nrrd  # noqa: F401


EXPORT_FORMATS = MESH_FORMATS + ("seg.nrrd", "nifti", "dicomseg", "csv", "json", "report")
DEFAULT_FORMATS = ("stl", "3mf", "seg.nrrd", "nifti", "csv", "json", "report")
FILE_NAMES = {"seg.nrrd": "segments.seg.nrrd", "nifti": "segments.nii.gz", "dicomseg": "segments.dcm",
              "csv": "measurements.csv", "json": "measurements.json"}


def parse_formats(text: str | Iterable[str]) -> tuple[str, ...]:
    """Formats from a comma-separated list ("stl,3mf,report"); "all" means every format but dicomseg."""
    items = [f.strip().lower() for f in (text.split(",") if isinstance(text, str) else text) if f.strip()]
    if items == ["all"]:
        return tuple(f for f in EXPORT_FORMATS if f != "dicomseg")
    aliases = {"nii": "nifti", "nii.gz": "nifti", "seg": "seg.nrrd", "dicom-seg": "dicomseg", "obj-mtl": "mtl-obj", "html": "report", "png": "report"}
    items = [aliases.get(f, f) for f in items]
    unknown = [f for f in items if f not in EXPORT_FORMATS]
    if unknown or not items:
        raise RenalSegError(f"unknown export format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(EXPORT_FORMATS)} or all")
    return tuple(dict.fromkeys(items))


def export_all(kits_labels: sitk.Image, ct: sitk.Image, out_dir: str | os.PathLike, formats: Iterable[str] = DEFAULT_FORMATS,
               coords: str = "RAS", smooth: bool = True, decimate: float = 0.0, dicom_files: list[str] | None = None,
               title: str = "", progress: Callable[[float, str], None] | None = None,
               lesion_probability: sitk.Image | None = None) -> list[Path]:
    """Write every requested output for a KiTS label map (0 bg, 1 kidney, 2 tumor, 3 cyst) on ``ct``'s grid.

    Everything is checked before anything is written (``RenalSegError`` for a bad request or input),
    and the files are produced in a hidden staging folder and moved into ``out_dir`` only when all of
    them succeeded, so a failure leaves ``out_dir`` as it was. ``dicom_files`` (the CT's DICOM series,
    slice order) are needed for "dicomseg". ``progress(fraction, step)`` is called before each step.
    ``lesion_probability`` (the auto segmentation's map, ``inference.AutoSegmentation``) adds each lesion's
    network probability to the measurements and the report. Returns the written paths.
    """
    formats = parse_formats(list(formats))
    if coords not in COORDINATE_SYSTEMS:
        raise RenalSegError(f"unknown coordinate system {coords!r} (use RAS for Slicer or LPS for DICOM/printing)")
    if not 0.0 <= decimate < 1.0:
        raise RenalSegError(f"decimation {decimate} must be in [0, 1) (fraction of triangles removed)")
    if "dicomseg" in formats and not dicom_files:
        raise RenalSegError("DICOM SEG needs the CT as a DICOM series (give --ct a DICOM folder) to reference it")
    for needed, package in (("report", "matplotlib"), ("dicomseg", "highdicom")):
        if needed in formats and importlib.util.find_spec(package) is None:
            raise RenalSegError(f"the {needed} output needs the {package} package: pip install {package}")
    check_inputs(kits_labels, ct)
    check_probability_map(lesion_probability, kits_labels)
    steps = ["analysing the label map", "meshes", "Slicer segmentation", "NIfTI label map", "DICOM SEG", "measurements",
             "RENAL nephrometry score", "report"]

    def step(name: str) -> None:
        if progress is not None:
            progress(steps.index(name) / len(steps), name)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".partial-export-{uuid.uuid4().hex[:8]}"
    try:
        staged = _write_all(kits_labels, ct, staging, formats, coords, smooth, decimate, dicom_files, title, step, lesion_probability)
        written = []
        for path in staged:
            final = out_dir / path.relative_to(staging)
            os.replace(path, final)
            written.append(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if progress is not None:
        progress(1.0, "done")
    return written


def _write_all(kits_labels, ct, staging: Path, formats, coords, smooth, decimate, dicom_files, title, step, lesion_probability) -> list[Path]:
    step("analysing the label map")
    anatomy = analyse(kits_labels, ct)
    written: list[Path] = []
    mesh_formats = tuple(f for f in formats if f in MESH_FORMATS)
    if mesh_formats:
        step("meshes")
        written += export_meshes(anatomy.segments, staging, coords, smooth, decimate, mesh_formats)
    if "seg.nrrd" in formats:
        step("Slicer segmentation")
        written.append(write_seg_nrrd(anatomy.segments, staging / FILE_NAMES["seg.nrrd"]))
    if "nifti" in formats:
        step("NIfTI label map")
        written.append(write_nifti(anatomy.segments, staging / FILE_NAMES["nifti"]))
    if "dicomseg" in formats:
        step("DICOM SEG")
        written.append(write_dicom_seg(anatomy.segments, dicom_files, staging / FILE_NAMES["dicomseg"]))
    rows = scores = None
    if {"csv", "json", "report"} & set(formats):
        step("measurements")
        rows = measure(kits_labels, ct, anatomy, lesion_probability)
        step("RENAL nephrometry score")
        from .nephrometry import renal_score as score

        scores = score(kits_labels, ct, anatomy)
    if "csv" in formats:
        written.append(write_measurements_csv(rows, staging / FILE_NAMES["csv"]))
    if "json" in formats:
        path = staging / FILE_NAMES["json"]
        document = {
            "units": {"volume": "mL", "length": "mm", "intensity": "HU", "coordinates": "LPS mm"},
            "segments": [{"name": s.name, "value": s.value, "color": list(s.color)} for s in _segments_present(anatomy)],
            "structures": rows,
            "renal_scores": scores,
            "note": "Automatic measurements: to be reviewed by a clinician. RENAL N and L use an approximate renal sinus "
                    "(see docs/nephrometry.md).",
        }
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(document, indent=2, default=float), encoding="utf-8")
        written.append(path)
    if "report" in formats:
        step("report")
        written += write_report(kits_labels, ct, staging, title=title, anatomy=anatomy, rows=rows, scores=scores)
    return written


def _segments_present(anatomy) -> list:
    import numpy as np

    from .labels import SEGMENTS

    present = set(np.unique(sitk.GetArrayViewFromImage(anatomy.segments)).tolist())
    return [s for s in SEGMENTS if s.value in present]
