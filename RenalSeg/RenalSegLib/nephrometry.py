"""RENAL nephrometry score (Kutikov & Uzzo 2009) of each renal tumor, computed from the segmentation.

Each component keeps the measurement behind it. The label maps have no collecting-system label, so
the renal sinus is approximated as the hilar pocket of the kidney's convex hull that holds neither
parenchyma nor lesion; docs/nephrometry.md explains every computation and its limits.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .measure import Anatomy, Structure, analyse, shape_metrics
from .volume import voxel_ml

# Kutikov & Uzzo 2009 thresholds (see REFERENCE.md).
R_CM = (4.0, 7.0)  # <= 4 cm: 1, > 4 and < 7: 2, >= 7: 3
N_MM = (4.0, 7.0)  # <= 4 mm: 3, > 4 and < 7: 2, >= 7: 1
# Below this fraction of its volume outside the kidney's convex outline a tumor counts as endophytic:
# a voxelised outline puts a few boundary voxels of a flush tumor outside.
ENDOPHYTIC_FRACTION = 0.01
# Tumor centroid within this distance (mm) of the kidney centroid along anterior-posterior: neither (x).
A_TOLERANCE_MM = 5.0
# The renal sinus pocket must hold at least this volume after an opening that removes slivers.
MIN_SINUS_ML = 0.5
SINUS_OPENING_MM = 2.0
COMPLEXITY = ((6, "low"), (9, "moderate"), (12, "high"))


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """Voxels (same grid) whose centres lie in the convex hull of the voxel centres of ``mask``.

    Convexity survives the affine voxel-to-millimetre map, so the hull is computed in voxel indices.
    scikit-image's ``convex_hull_image`` tests every voxel against every facet; here each (k, j) row
    is clipped by all facets at once, which is ~100 times faster on a kidney-sized crop.
    """
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError

    surface = mask & ~ndimage.binary_erosion(mask)
    points = np.argwhere(surface).astype(float)
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):
        return mask.copy()  # flat or tiny: the mask is its own outline
    normals, offsets = hull.equations[:, :3], hull.equations[:, 3]  # inside: normals . p + offsets <= 0
    shape = mask.shape
    k, j = (a.ravel() for a in np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"))
    along = normals[:, 2]
    eps = 1e-6
    i = np.arange(shape[2])
    inside = np.zeros((len(k), shape[2]), bool)
    for start in range(0, len(k), 2048):  # chunks of rows keep the (rows, facets) table small
        rows = slice(start, start + 2048)
        base = k[rows, None] * normals[:, 0] + j[rows, None] * normals[:, 1] + offsets
        with np.errstate(divide="ignore", invalid="ignore"):
            limit = -base / along
        upper = np.where(along > eps, limit, np.inf).min(1)
        lower = np.where(along < -eps, limit, -np.inf).max(1)
        blocked = np.any((np.abs(along) <= eps) & (base > eps), axis=1)
        inside[rows] = (i >= np.ceil(lower - eps)[:, None]) & (i <= np.floor(upper + eps)[:, None]) & ~blocked[:, None]
    return inside.reshape(shape) | mask


def axial_convex_outline(mask: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Union of the 2D convex hulls of ``mask`` on each slice along the image axis closest to cranio-caudal.

    This is the kidney's convex outline as a reader sees it on axial slices. The 3D hull of a curved,
    tilted kidney reaches far around it and would call most exophytic tumors endophytic.
    """
    from skimage.morphology import convex_hull_image

    direction = np.array(image.GetDirection()).reshape(3, 3)
    axis = 2 - int(np.argmax(np.abs(direction[2])))  # (k, j, i) array axis whose index axis is closest to LPS z
    outline = np.zeros_like(mask)
    for index in np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))):
        where = [slice(None)] * 3
        where[axis] = index
        section = mask[tuple(where)]
        outline[tuple(where)] = convex_hull_image(section) if section.sum() >= 3 else section
    return outline


def renal_sinus(anatomy: Anatomy, kidney: Structure) -> tuple[tuple[slice, slice, slice], np.ndarray | None]:
    """The approximate renal sinus of a kidney as ``(box, mask)``; mask None when no hilar pocket is found.

    Pocket = convex hull of the parenchyma minus parenchyma and lesions, opened by ``SINUS_OPENING_MM``
    to drop slivers, keeping the largest part whose centroid lies medial to the kidney's centroid
    (the hilum faces the midline) and that holds at least ``MIN_SINUS_ML``.
    """
    from scipy import ndimage

    box = anatomy.kidney_box(kidney)
    parenchyma = kidney.mask_in(box)
    lesions = np.zeros_like(parenchyma)
    for name in kidney.lesions:
        lesions |= anatomy.structure(name).mask_in(box)
    pocket = convex_hull_mask(parenchyma) & ~parenchyma & ~lesions
    spacing = np.array(anatomy.labels.GetSpacing())[::-1]  # (k, j, i)
    radius = np.maximum(1, np.round(SINUS_OPENING_MM / spacing)).astype(int)
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g / r) ** 2 for g, r in zip(grid, radius)) <= 1.0
    pocket = ndimage.binary_opening(pocket, structure=ball)
    parts, count = ndimage.label(pocket)
    if count == 0:
        return box, None
    kidney_x = anatomy.points_lps(box, parenchyma)[:, 0].mean()
    midline = anatomy_midline_x(anatomy)
    ml_per_voxel = voxel_ml(anatomy.labels.GetSpacing())
    sizes = ndimage.sum_labels(pocket, parts, range(1, count + 1))
    for index in np.argsort(sizes)[::-1]:
        if sizes[index] * ml_per_voxel < MIN_SINUS_ML:
            break
        part = parts == index + 1
        if abs(anatomy.points_lps(box, part)[:, 0].mean() - midline) < abs(kidney_x - midline):
            return box, part
    return box, None


def anatomy_midline_x(anatomy: Anatomy) -> float:
    """LPS x of the patient's midline: from the CT's body when available, else the image centre."""
    from . import labels as L

    return L.body_midline_x(anatomy.ct) if anatomy.ct is not None else L.image_center_x(anatomy.labels)


def _gap_mm(a: np.ndarray, b: np.ndarray, spacing_kji: np.ndarray) -> float:
    """Smallest surface-to-surface gap (mm) between two masks on one grid (0 when they touch).

    The distance between the nearest voxel centres, less the extent of one voxel along that direction
    (half a voxel on each side), so that face-adjacent voxels are 0 mm apart.
    """
    from scipy import ndimage

    distance, nearest = ndimage.distance_transform_edt(~b, sampling=spacing_kji, return_indices=True)
    where = np.argwhere(a)
    closest = where[np.argmin(distance[a])]
    vector = (nearest[(slice(None), *closest)] - closest) * spacing_kji
    length = float(np.linalg.norm(vector))
    if length == 0.0:
        return 0.0
    return max(0.0, length - float(np.abs(vector / length) @ spacing_kji))


def _points(value: int, thresholds: tuple[float, float], larger_is_worse: bool = True) -> int:
    low, high = thresholds
    if larger_is_worse:
        return 1 if value <= low else (2 if value < high else 3)
    return 3 if value <= low else (2 if value < high else 1)


def score_tumor(anatomy: Anatomy, tumor: Structure) -> dict:
    """RENAL components of one tumor component, each with points, the measurement and how it was made."""
    spacing = np.array(anatomy.labels.GetSpacing())[::-1]
    metrics = shape_metrics(anatomy.labels, tumor.box, tumor.mask)
    diameter = metrics["max_diameter_mm"]
    components: dict[str, dict] = {
        "R": {"points": _points(diameter / 10.0, R_CM), "value": round(diameter, 1), "unit": "mm",
              "measurement": f"maximal diameter {diameter / 10:.1f} cm"},
    }
    notes = ["h (hilar: touching the main renal artery or vein) is not assessed: the segmentation has no vessels"]
    result = {"tumor": tumor.name, "kidney": tumor.kidney, "volume_ml": metrics["volume_ml"], "components": components, "notes": notes}
    if tumor.kidney is None:
        notes.append("no kidney in the segmentation: E, N, A and L cannot be computed")
        return _total(result)
    kidney = anatomy.structure(tumor.kidney)
    box = anatomy.kidney_box(kidney)
    parenchyma = kidney.mask_in(box)
    in_tumor = tumor.mask_in(box)

    outside = float((in_tumor & ~axial_convex_outline(parenchyma, anatomy.labels)).sum() / in_tumor.sum())
    e_points = 1 if outside >= 0.5 else (2 if outside >= ENDOPHYTIC_FRACTION else 3)
    components["E"] = {"points": e_points, "value": round(100 * outside, 1), "unit": "%",
                       "measurement": f"{100 * outside:.0f}% of the tumor volume outside the kidney's convex outline (axial slices)"
                       + (" (endophytic)" if e_points == 3 else "")}

    tumor_points = anatomy.points_lps(box, in_tumor)
    kidney_centre = anatomy.points_lps(box, parenchyma).mean(0)
    dy = float(tumor_points[:, 1].mean() - kidney_centre[1])  # LPS +y is posterior
    descriptor = "x" if abs(dy) < A_TOLERANCE_MM else ("a" if dy < 0 else "p")
    where = {"a": "anterior", "p": "posterior", "x": "neither anterior nor posterior"}[descriptor]
    components["A"] = {"descriptor": descriptor, "value": round(dy, 1), "unit": "mm",
                       "measurement": f"tumor centre {abs(dy):.0f} mm {'anterior' if dy < 0 else 'posterior'} of the kidney centre: {where}"}

    sinus_box, sinus = renal_sinus(anatomy, kidney)
    if sinus is None:
        notes.append("no renal sinus (hilar concavity) found in the kidney outline: N and L cannot be computed")
        return _total(result)
    nearest = _gap_mm(in_tumor, sinus, spacing)
    components["N"] = {"points": _points(nearest, N_MM, larger_is_worse=False), "value": round(nearest, 1), "unit": "mm",
                       "measurement": f"nearest gap between tumor and renal sinus {nearest:.1f} mm"}

    sinus_z = anatomy.points_lps(sinus_box, sinus)[:, 2]
    upper_line, lower_line = float(sinus_z.max()), float(sinus_z.min())
    z = tumor_points[:, 2]
    between = float(((z >= lower_line) & (z <= upper_line)).mean())
    midline = (upper_line + lower_line) / 2.0
    if z.min() > upper_line or z.max() < lower_line:
        l_points, why = 1, "entirely " + ("above the upper" if z.min() > upper_line else "below the lower") + " polar line"
    elif between > 0.5 or z.min() < midline < z.max():
        l_points, why = 3, ("crosses the axial renal midline" if z.min() < midline < z.max() else f"{100 * between:.0f}% between the polar lines")
    else:
        l_points, why = 2, f"crosses a polar line ({100 * between:.0f}% between the lines)"
    components["L"] = {"points": l_points, "value": round(100 * between, 1), "unit": "%",
                       "measurement": f"{why} (polar lines {upper_line - lower_line:.0f} mm apart)"}
    result["polar_lines_z_mm"] = [lower_line, upper_line]
    return _total(result)


def _total(result: dict) -> dict:
    components = result["components"]
    scored = [components[k]["points"] for k in "RENL" if k in components]
    descriptor = components.get("A", {}).get("descriptor", "")
    if len(scored) == 4:
        total = int(sum(scored))
        result.update(total=total, score=f"{total}{descriptor}", complexity=next(c for limit, c in COMPLEXITY if total <= limit))
    else:
        result.update(total=None, score=None, complexity=None)
    return result


def renal_score(kits_labels: sitk.Image, ct: sitk.Image | None = None, anatomy: Anatomy | None = None) -> list[dict]:
    """RENAL nephrometry score of every tumor component (largest first), components with their measurements.

    Each result holds ``components`` R, E, N, L (``points`` 1-3) and A (``descriptor`` a/p/x), each
    with ``value``, ``unit`` and a readable ``measurement``; ``total`` (4-12), ``score`` (e.g. "9p")
    and ``complexity`` (low/moderate/high), or None where a component could not be computed, with
    the reason in ``notes``. The CT, when given, locates the body midline for the left/right split.
    """
    anatomy = anatomy or analyse(kits_labels, ct)
    return [score_tumor(anatomy, lesion) for lesion in anatomy.lesions if lesion.kind == "tumor"]
