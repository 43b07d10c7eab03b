"""Preprocessing: HU normalisation and resampling between the CT's grid and the networks' isotropic grids.

Network grids use the CT's own axes, re-ordered into one anatomical orientation (so a crop of the CT
is an axis-aligned box in both, and the network always sees the same orientation), at isotropic
spacing; all resampling goes through SimpleITK in physical space.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

# Fixed CT window for the networks: covers fat (-100) to enhancing cortex / contrast (~500 HU).
HU_MIN, HU_MAX = -250.0, 550.0
HU_CENTER, HU_SCALE = 150.0, 200.0
LEFT_RIGHT_AXIS = 2  # of a (k, j, i) array on the networks' grids (``canonical_axes``): i runs left-right


def normalize_ct(hu: np.ndarray) -> np.ndarray:
    """Map HU to the networks' input range: clip to [-250, 550] HU, centre 150, scale 200 -> [-2, 2]."""
    return ((np.clip(hu.astype(np.float32, copy=False), HU_MIN, HU_MAX) - HU_CENTER) / HU_SCALE).astype(np.float32)


def canonical_axes(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The image's axes re-ordered and re-signed to lie closest to L, P, S: (direction 3x3, axis order).

    Networks always see arrays in one anatomical orientation ((k, j, i) = (S, P, L) up to obliquity),
    whatever order the file stores its axes in (KiTS stores the slice axis first). Column n of the
    returned direction is image axis ``order[n]``, flipped if needed to point along +L/+P/+S.
    """
    direction = np.array(image.GetDirection()).reshape(3, 3)
    order = np.argsort(np.argmax(np.abs(direction), axis=0))  # image axis whose main LPS axis is n
    if len(set(np.argmax(np.abs(direction), axis=0))) < 3:  # 45-degree ties: keep the file's order
        order = np.arange(3)
    columns = direction[:, order]
    signs = np.sign(np.diag(columns))
    signs[signs == 0] = 1.0
    return columns * signs, order


def grid_for_region(image: sitk.Image, start_ijk, stop_ijk, spacing_mm: float, multiple: int = 1) -> sitk.Image:
    """An empty float grid covering index box [start, stop) of ``image`` at isotropic spacing.

    The grid's axes are the image's axes in canonical anatomical order (``canonical_axes``), so a box
    of the image is a box of the grid. Its size is rounded up to a multiple of ``multiple`` (what the
    network needs), growing symmetrically about the box centre.
    """
    start = np.asarray(start_ijk, float)
    stop = np.asarray(stop_ijk, float)
    direction, order = canonical_axes(image)
    extent_mm = ((stop - start) * np.array(image.GetSpacing()))[order]
    size = np.maximum(np.ceil(extent_mm / spacing_mm), 1).astype(int)
    size = (np.ceil(size / multiple) * multiple).astype(int)
    # Centre of the index box (voxel centres at integer indices; box edges at start-0.5 and stop-0.5).
    centre_index = (start + stop - 1) / 2.0
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(centre_index.tolist()))
    origin = centre - direction @ ((size - 1) / 2.0 * spacing_mm)
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def grid_for_image(image: sitk.Image, spacing_mm: float, multiple: int = 1) -> sitk.Image:
    """An empty grid covering the whole image at isotropic ``spacing_mm``."""
    return grid_for_region(image, (0, 0, 0), image.GetSize(), spacing_mm, multiple)


def resample_onto(image: sitk.Image, grid: sitk.Image, interpolator=sitk.sitkLinear, default: float = -1024.0, pixel=sitk.sitkFloat32) -> sitk.Image:
    """Resample ``image`` onto ``grid``'s geometry (identity transform, physical space).

    Downsampling by more than 1.5x is preceded by a Gaussian blur (sigma = half the grid spacing) so that
    thin structures are not aliased. Only the part of ``image`` under the grid is blurred, and where the
    grid is 4x coarser or more, block averaging first shrinks the image (a pyramid step) and the Gaussian
    adds only the remaining blur: the same low-pass at a fraction of the cost (a 512x512x300 CT to 4 mm
    differs from the direct blur by 0.4 HU on average).
    """
    spacing, grid_spacing = np.array(image.GetSpacing()), np.array(grid.GetSpacing())
    factor = grid_spacing / spacing
    if interpolator != sitk.sitkNearestNeighbor and factor.max() > 1.5:
        image = _under_grid(image, grid, 2.0 * grid_spacing.max())  # the blur's reach: 4 sigma
        shrink = np.maximum(np.floor(factor / 2), 1).astype(int)  # keeps >= 2 voxels per grid step
        if shrink.max() > 1:
            image = sitk.BinShrink(image, shrink.tolist())
        variance = (0.5 * grid_spacing) ** 2 - (shrink**2 - 1) / 12 * spacing**2  # a block of n has variance (n^2-1)/12
        sigma = np.where(factor > 1.5, np.sqrt(variance), 1e-3 * grid_spacing)  # ITK needs sigma > 0
        image = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma.tolist())
    return sitk.Resample(image, grid, sitk.Transform(), interpolator, default, pixel)


def _under_grid(image: sitk.Image, grid: sitk.Image, margin_mm: float) -> sitk.Image:
    """The sub-image of ``image`` that covers ``grid`` grown by ``margin_mm`` (the whole image if it all does)."""
    size = np.array(grid.GetSize())
    corners = [grid.TransformContinuousIndexToPhysicalPoint((np.array(c) * size - 0.5).tolist()) for c in np.ndindex(2, 2, 2)]
    start, stop = index_box_covering(image, corners, margin_mm / np.array(image.GetSpacing()) + 1)  # + 1: the interpolator's neighbours
    if np.any(stop <= start) or (np.all(start == 0) and np.all(stop == image.GetSize())):
        return image
    return sitk.RegionOfInterest(image, (stop - start).tolist(), start.tolist())


def index_box_covering(image: sitk.Image, points_lps, margin_vox) -> tuple[np.ndarray, np.ndarray]:
    """(start, stop) (i, j, k) index box of ``image`` covering physical points grown by ``margin_vox``, clipped to it."""
    index = np.array([image.TransformPhysicalPointToContinuousIndex(p) for p in points_lps])
    start = np.clip(np.floor(index.min(0) - margin_vox), 0, None).astype(int)
    stop = np.minimum(np.ceil(index.max(0) + margin_vox) + 1, image.GetSize()).astype(int)
    return start, stop
