"""Measurements of kidneys and lesions (connected components) from a KiTS label map and its CT.

Everything is computed on bounding-box crops in voxel space and converted to millimetres through the
image geometry (``volume.ijk_to_lps_matrix``), so oblique, flipped and anisotropic images measure alike.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import labels as L
from . import volume
from .errors import Cancelled, RenalSegError
from .outputs import atomic_path

# Lesion components smaller than this (a 3.4 mm sphere) are treated as label noise, not lesions.
MIN_LESION_MM3 = 20.0
POLES = ("upper", "middle", "lower")


@dataclass
class Structure:
    """A kidney (one side) or one lesion component: its crop box in (k, j, i) and its mask in that box."""

    name: str
    segment: L.Segment
    box: tuple[slice, slice, slice]
    mask: np.ndarray
    kidney: str | None = None  # for a lesion: the name of the kidney it belongs to
    lesions: list[str] = field(default_factory=list)  # for a kidney: the names of its lesions

    @property
    def kind(self) -> str:
        return {L.KIDNEY: "kidney", L.TUMOR: "tumor", L.CYST: "cyst"}[self.segment.kits_label]

    def mask_in(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """This structure's mask pasted into another crop box (parts outside it are dropped)."""
        out = np.zeros(tuple(s.stop - s.start for s in box), bool)
        low = [max(a.start, b.start) for a, b in zip(self.box, box)]
        high = [min(a.stop, b.stop) for a, b in zip(self.box, box)]
        if any(h <= lo for lo, h in zip(low, high)):
            return out
        src = tuple(slice(lo - a.start, h - a.start) for lo, h, a in zip(low, high, self.box))
        dst = tuple(slice(lo - b.start, h - b.start) for lo, h, b in zip(low, high, box))
        out[dst] = self.mask[src]
        return out


@dataclass
class Anatomy:
    """A label map split into kidneys and lesion components, with the geometry to measure them."""

    labels: sitk.Image
    ct: sitk.Image | None
    segments: sitk.Image
    kidneys: list[Structure]
    lesions: list[Structure]
    ignored_lesion_voxels: int = 0
    foreground_box: tuple[slice, slice, slice] | None = None  # (k, j, i) box of all labelled voxels

    def structure(self, name: str) -> Structure:
        return next(s for s in self.kidneys + self.lesions if s.name == name)

    def kidney_box(self, kidney: Structure, margin: int = 3) -> tuple[slice, slice, slice]:
        """Crop box holding a kidney and all its lesions, with ``margin`` voxels around."""
        boxes = [kidney.box] + [self.structure(n).box for n in kidney.lesions]
        shape = sitk.GetArrayViewFromImage(self.labels).shape
        return tuple(
            slice(max(0, min(b[a].start for b in boxes) - margin), min(shape[a], max(b[a].stop for b in boxes) + margin)) for a in range(3)
        )

    def points_lps(self, box: tuple[slice, slice, slice], mask: np.ndarray) -> np.ndarray:
        """LPS millimetres of the voxels of ``mask`` (a mask in ``box``), shape (n, 3)."""
        kji = np.argwhere(mask) + [s.start for s in box]
        return volume.index_to_physical(self.labels, kji[:, ::-1].astype(float))


def check_inputs(kits_labels: sitk.Image, ct: sitk.Image | None) -> None:
    """Raise ``RenalSegError`` unless the label map is a non-empty KiTS map on the CT's voxel grid."""
    array = sitk.GetArrayViewFromImage(kits_labels)
    # An integer map's minimum and maximum tell whether it holds only 0-3 (a pass each, ~10x faster than
    # counting the values of a CT-size map); the values themselves are listed only to say what is wrong.
    highest = array.max()
    if np.issubdtype(array.dtype, np.integer) and L.BACKGROUND <= array.min() and highest <= L.CYST:
        unknown = []
    else:
        unknown = sorted(set(np.unique(array).tolist()) - {L.BACKGROUND, L.KIDNEY, L.TUMOR, L.CYST})
    if unknown:
        raise RenalSegError(f"the label map holds values {unknown}; a KiTS label map holds 0 background, 1 kidney, 2 tumor, 3 cyst")
    if highest == L.BACKGROUND:
        raise RenalSegError("the label map is empty (no kidney, tumor or cyst voxels): nothing to export")
    if ct is not None and not volume.same_geometry(kits_labels, ct, tolerance=1e-3):
        raise RenalSegError(
            f"the label map and the CT have different geometry (size {kits_labels.GetSize()} vs {ct.GetSize()}, "
            f"spacing {tuple(np.round(kits_labels.GetSpacing(), 3))} vs {tuple(np.round(ct.GetSpacing(), 3))}); "
            "export needs the label map on the CT's voxel grid"
        )


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The (k, j, i) bounding box of a non-empty mask, from its projections (faster than argwhere)."""
    box = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def analyse(kits_labels: sitk.Image, ct: sitk.Image | None = None) -> Anatomy:
    """Split a KiTS label map into right/left kidneys and lesion components, each lesion with its kidney."""
    from scipy import ndimage

    check_inputs(kits_labels, ct)
    midline = L.body_midline_x(ct) if ct is not None else L.image_center_x(kits_labels)
    # Work on the foreground's bounding box (a few % of a CT): labelling the full volume takes seconds.
    foreground = sitk.GetArrayViewFromImage(kits_labels) > 0
    crop = _bounding_box(foreground)
    cropped_labels = kits_labels[crop[2], crop[1], crop[0]]  # SimpleITK slices (i, j, k) and keeps physical positions
    values = sitk.GetArrayFromImage(L.segment_map(cropped_labels, midline))
    full = np.zeros(foreground.shape, np.uint8)
    full[crop] = values
    segments = sitk.GetImageFromArray(full)
    segments.CopyInformation(kits_labels)

    def shifted(box: tuple[slice, ...]) -> tuple[slice, slice, slice]:
        return tuple(slice(b.start + c.start, b.stop + c.start) for b, c in zip(box, crop))

    voxel_mm3 = float(np.prod(kits_labels.GetSpacing()))
    kidneys = []
    for name in ("Right kidney", "Left kidney"):
        segment = L.SEGMENT_BY_NAME[name]
        box = ndimage.find_objects((values == segment.value).astype(np.uint8))
        if box:
            kidneys.append(Structure(name, segment, shifted(box[0]), values[box[0]] == segment.value))
    lesions, ignored = [], 0
    for name in ("Renal tumor", "Renal cyst"):
        segment = L.SEGMENT_BY_NAME[name]
        components, count = ndimage.label(values == segment.value)
        found = []
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            mask = components[box] == index
            if mask.sum() * voxel_mm3 < MIN_LESION_MM3:
                ignored += int(mask.sum())
                continue
            found.append(Structure(name, segment, shifted(box), mask))
        found.sort(key=lambda s: -int(s.mask.sum()))
        for number, lesion in enumerate(found, start=1):
            lesion.name = f"{name} {number}"
        lesions += found
    anatomy = Anatomy(kits_labels, ct, segments, kidneys, lesions, ignored, crop)
    for lesion in lesions:
        lesion.kidney = _host_kidney(anatomy, lesion)
        if lesion.kidney is not None:
            anatomy.structure(lesion.kidney).lesions.append(lesion.name)
    return anatomy


def _host_kidney(anatomy: Anatomy, lesion: Structure) -> str | None:
    """The kidney a lesion touches most (one-voxel shell), else the kidney with the nearest centroid."""
    from scipy import ndimage

    if not anatomy.kidneys:
        return None
    box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in lesion.box)
    shell = ndimage.binary_dilation(lesion.mask_in(box)) & ~lesion.mask_in(box)
    contact = {k.name: int((shell & k.mask_in(box)).sum()) for k in anatomy.kidneys}
    best = max(contact, key=contact.get)
    if contact[best] > 0:
        return best
    centre = anatomy.points_lps(lesion.box, lesion.mask).mean(0)
    return min(anatomy.kidneys, key=lambda k: np.linalg.norm(anatomy.points_lps(k.box, k.mask).mean(0) - centre)).name


def shape_metrics(image: sitk.Image, box: tuple[slice, slice, slice], mask: np.ndarray) -> dict:
    """Volume (mL), centroid (LPS mm), maximal 3D diameter, principal axis lengths (mm) and sphericity of a mask.

    The volume counts voxels. Axis lengths come from the second moments of the voxels (each voxel a
    small box), scaled so a solid ellipsoid gives its full axis lengths exactly. The maximal diameter
    is the largest distance between points of the smoothed surface (via their convex hull), and
    sphericity compares that surface's area with a sphere of the same volume (1 for a sphere).
    """
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import cdist

    from .mesh import mesh_arrays, mesh_quality, surface_from_mask

    kji = np.argwhere(mask) + [s.start for s in box]
    points = volume.index_to_physical(image, kji[:, ::-1].astype(float))
    voxel_mm3 = float(np.prod(image.GetSpacing()))
    volume_mm3 = len(points) * voxel_mm3
    centroid = points.mean(0)
    linear = volume.ijk_to_lps_matrix(image)[:3, :3]
    covariance = np.cov(points.T, bias=True) + linear @ np.diag(np.ones(3) / 12.0) @ linear.T
    eigenvalues = np.sort(np.clip(np.linalg.eigvalsh(covariance), 0, None))[::-1]
    axes = 2.0 * np.sqrt(5.0 * eigenvalues)  # solid ellipsoid: variance along an axis = a^2 / 5

    crop_matrix = volume.ijk_to_lps_matrix(image).copy()
    crop_matrix[:3, 3] = volume.index_to_physical(image, [[s.start for s in box][::-1]])[0]
    surface = surface_from_mask(mask, crop_matrix, "LPS", smooth=True)
    surface_points, _ = mesh_arrays(surface)
    quality = mesh_quality(surface)
    if len(surface_points) >= 4:
        try:
            surface_points = surface_points[ConvexHull(surface_points).vertices]
        except Exception:  # flat (one-voxel-thick) shapes have no 3D hull; use all points
            pass
    diameter = max(float(cdist(chunk, surface_points).max()) for chunk in np.array_split(surface_points, max(1, len(surface_points) // 2000)))
    sphericity = (np.pi ** (1 / 3)) * (6 * quality["volume_mm3"]) ** (2 / 3) / quality["area_mm2"] if quality["area_mm2"] > 0 else float("nan")
    return {
        "volume_ml": volume_mm3 / 1000.0,
        "centroid_lps_mm": centroid.round(2).tolist(),
        "max_diameter_mm": diameter,
        "axis_lengths_mm": axes.tolist(),
        "sphericity": float(sphericity),
    }


def _kidney_z_ranges(anatomy: Anatomy) -> dict[str, tuple[float, float]]:
    """(lowest, highest) cranio-caudal LPS z of each kidney holding lesions, with its lesions, for the poles."""
    ranges = {}
    for kidney in anatomy.kidneys:
        if kidney.lesions:
            box = anatomy.kidney_box(kidney, margin=0)
            whole = kidney.mask_in(box) | np.any([anatomy.structure(n).mask_in(box) for n in kidney.lesions], axis=0)
            z = anatomy.points_lps(box, whole)[:, 2]
            ranges[kidney.name] = (float(z.min()), float(z.max()))
    return ranges


def _pole(z_range: tuple[float, float] | None, centroid_z: float) -> str | None:
    """Upper, middle or lower third of the host kidney's ``z_range`` (``_kidney_z_ranges``) holding ``centroid_z``."""
    if z_range is None:
        return None
    bottom, top = z_range
    third = (top - bottom) / 3.0
    if centroid_z > top - third:
        return "upper"  # LPS +z is superior (cranial)
    return "middle" if centroid_z >= bottom + third else "lower"


def _hu(anatomy: Anatomy, structure: Structure) -> tuple[float | None, float | None]:
    if anatomy.ct is None:
        return None, None
    values = sitk.GetArrayViewFromImage(anatomy.ct)[structure.box][structure.mask].astype(float)
    return float(values.mean()), float(values.std())


def measure(kits_labels: sitk.Image, ct: sitk.Image | None = None, anatomy: Anatomy | None = None,
            lesion_probability: sitk.Image | None = None, cancel: threading.Event | None = None,
            cache: dict | None = None) -> list[dict]:
    """One row per kidney and per lesion component: sizes in mL and mm, HU, shape, side and pole.

    Kidney rows measure the parenchyma (KiTS label 1 on that side); ``volume_with_lesions_ml`` adds
    the lesions attached to it. Lesion rows give the kidney they belong to, the pole (third of that
    kidney along the cranio-caudal axis holding the lesion's centroid) and the lesion-to-kidney
    volume ratio (lesion / kidney including its lesions). HU statistics need the CT. With the
    auto segmentation's ``lesion_probability`` map (``inference.AutoSegmentation``), each lesion row
    also gives the network's mean tumor-or-cyst probability over the lesion (0-1): a low value marks a
    lesion the network was unsure of, often a false one. Setting ``cancel`` stops before the next structure
    with ``Cancelled``: a refresh after each click gives way to the next click. A ``cache`` dict, kept by
    the caller between calls on the same grid (after each click), spares the shape metrics of the
    structures that did not change; it then holds this call's structures only.
    """

    def check_cancel():
        if cancel is not None and cancel.is_set():
            raise Cancelled("measurement cancelled")

    check_probability_map(lesion_probability, kits_labels)
    check_cancel()
    anatomy = anatomy or analyse(kits_labels, ct)
    metrics_of = _ShapeMetrics(kits_labels, cache)
    rows = []
    kidney_total = {}
    for kidney in anatomy.kidneys:
        check_cancel()
        lesion_ml = sum(anatomy.structure(n).mask.sum() for n in kidney.lesions) * volume.voxel_ml(kits_labels.GetSpacing())
        metrics = metrics_of(kidney)
        kidney_total[kidney.name] = metrics["volume_ml"] + lesion_ml
        mean, std = _hu(anatomy, kidney)
        rows.append({"structure": kidney.name, "kind": "kidney", "kidney": kidney.name, **metrics,
                     "volume_with_lesions_ml": float(kidney_total[kidney.name]), "hu_mean": mean, "hu_std": std,
                     "lesion_to_kidney_ratio": None, "pole": None, "lesion_probability": None})
    z_ranges = _kidney_z_ranges(anatomy)
    for lesion in anatomy.lesions:
        check_cancel()
        metrics = metrics_of(lesion)
        mean, std = _hu(anatomy, lesion)
        ratio = float(metrics["volume_ml"] / kidney_total[lesion.kidney]) if lesion.kidney in kidney_total else None
        rows.append({"structure": lesion.name, "kind": lesion.kind, "kidney": lesion.kidney, **metrics,
                     "volume_with_lesions_ml": None, "hu_mean": mean, "hu_std": std,
                     "lesion_to_kidney_ratio": ratio, "pole": _pole(z_ranges.get(lesion.kidney), metrics["centroid_lps_mm"][2]),
                     "lesion_probability": _mean_probability(lesion_probability, lesion)})
    if cache is not None:
        cache.clear()
        cache.update(metrics_of.used)
    return rows


class _ShapeMetrics:
    """``shape_metrics`` of structures, taken from a cache when the grid, box and mask are the same; ``used``
    collects the entries of this measurement."""

    def __init__(self, image: sitk.Image, cache: dict | None):
        self.image, self.cache, self.used = image, cache, {}

    def __call__(self, structure: Structure) -> dict:
        if self.cache is None:
            return shape_metrics(self.image, structure.box, structure.mask)
        key = (self.image.GetOrigin(), self.image.GetSpacing(), self.image.GetDirection(),
               tuple((b.start, b.stop) for b in structure.box), hashlib.blake2b(np.packbits(structure.mask)).digest())
        if key not in self.cache:
            self.cache[key] = shape_metrics(self.image, structure.box, structure.mask)
        self.used[key] = self.cache[key]
        return self.used[key]


def check_probability_map(probability: sitk.Image | None, kits_labels: sitk.Image) -> None:
    """Raise ``RenalSegError`` unless ``probability`` is None or a percent map (0-100) on the label map's grid."""
    if probability is None:
        return
    if not volume.same_geometry(probability, kits_labels, tolerance=1e-3):
        raise RenalSegError(f"the lesion probability map (size {probability.GetSize()}) is not on the label map's grid "
                            f"(size {kits_labels.GetSize()}); use the map written with these labels")
    array = sitk.GetArrayViewFromImage(probability)
    if array.min() < 0 or array.max() > 100:
        raise RenalSegError("the lesion probability map must hold percentages (0-100), as 'renalseg segment --probability' writes")
    if np.array_equal(array, sitk.GetArrayViewFromImage(kits_labels)):  # 0-3 passes as percent, so say it plainly
        raise RenalSegError("the lesion probability map is the label map itself; give the map 'renalseg segment --probability' "
                            "wrote beside these labels")


def _mean_probability(probability: sitk.Image | None, structure: Structure) -> float | None:
    """Mean of a percent probability map over a structure, as a fraction; None without a map."""
    if probability is None:
        return None
    return float(sitk.GetArrayViewFromImage(probability)[structure.box][structure.mask].mean()) / 100.0


CSV_COLUMNS = (
    ("structure", "structure"), ("kind", "kind"), ("kidney", "kidney"), ("pole", "pole"),
    ("volume_ml", "volume_mL"), ("volume_with_lesions_ml", "volume_with_lesions_mL"), ("max_diameter_mm", "max_diameter_mm"),
    ("axis_lengths_mm", "axis_lengths_mm"), ("sphericity", "sphericity"), ("hu_mean", "HU_mean"), ("hu_std", "HU_std"),
    ("lesion_to_kidney_ratio", "lesion_to_kidney_volume_ratio"), ("centroid_lps_mm", "centroid_LPS_mm"),
    ("lesion_probability", "network_lesion_probability"),
)


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " x ".join(f"{v:.1f}" for v in value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def write_measurements_csv(rows: list[dict], path) -> Path:
    """Write measurement rows as CSV: one line per structure, units in the column names, axes as "a x b x c"."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([header for _, header in CSV_COLUMNS])
    for row in rows:
        writer.writerow([_csv_value(row.get(key)) for key, _ in CSV_COLUMNS])
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return Path(path)
