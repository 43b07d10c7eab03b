"""CT volumes and label maps: reading, validation, writing, and the one place for geometry conversions.

The engine holds images as SimpleITK images in LPS physical space. Slicer holds (k, j, i) arrays with
an IJK-to-RAS matrix. ``image_to_slicer`` / ``slicer_to_image`` convert between the two, and
``lps_to_ras`` converts points; nothing else in RenalSeg touches direction matrices by hand.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import RenalSegError
from .outputs import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
LABEL_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
# Plausible voxel sizes for a clinical CT; anything outside is a header error, not a scan.
MIN_SPACING_MM, MAX_SPACING_MM = 0.05, 20.0
# Largest supported volume: 2048^2 x 2000 voxels is far beyond any clinical CT.
MAX_VOXELS = 2048 * 2048 * 2000
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def case_name(path: str | os.PathLike, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> str | None:
    """A volume file's case name: its file name without the image suffix (None if it has none of ``suffixes``)."""
    name = Path(path).name
    suffix = _suffix(Path(path))
    return name[: -len(suffix)] if suffix in suffixes and len(name) > len(suffix) else None


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def dicom_series_files(folder: str | os.PathLike, series_uid: str | None = None) -> list[str]:
    """Return the files of one DICOM series in ``folder``, sorted by slice position.

    With several series, the one with the most slices is chosen (the diagnostic series, not a localizer
    or a dose report) unless ``series_uid`` names one. When ``folder`` itself holds no series, its
    subfolders are searched (a PACS export or CD nests the series a few levels down).
    """
    folder = Path(folder)
    found = _series_in(folder)
    if not found:
        found = {key: files for sub in sorted(p for p in folder.rglob("*") if p.is_dir()) for key, files in _series_in(sub).items()}
    if not found:
        raise RenalSegError(f"{folder}: no DICOM image series found in this folder or its subfolders")
    if series_uid is not None:
        matching = {key: files for key, files in found.items() if key[1] == series_uid}
        if not matching:
            raise RenalSegError(f"{folder}: DICOM series {series_uid} not found (found {len(found)} series)")
        found = matching
    chosen = max(found, key=lambda key: len(found[key]))
    if len(found) > 1:
        log.info("%s holds %d DICOM series; using %s in %s (%d slices)", folder, len(found), chosen[1], chosen[0], len(found[chosen]))
    return found[chosen]


def _series_in(directory: Path) -> dict[tuple[Path, str], list[str]]:
    """{(directory, series UID): files sorted along the slice normal} for the series stored directly in ``directory``."""
    return {
        (directory, uid): list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid))
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
    }


def _read_dicom(folder: Path) -> sitk.Image:
    files = dicom_series_files(folder)
    if len(files) < 2:
        raise RenalSegError(f"{folder}: the DICOM series has a single slice; a 3D CT needs several")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # keeps per-slice tags (modality, UIDs) readable
    try:
        image = reader.Execute()  # GDCM applies rescale slope/intercept: values are HU
    except RuntimeError as exc:
        raise RenalSegError(f"{folder}: unreadable DICOM series ({_first_line(exc)})") from None
    modality = reader.GetMetaData(0, "0008|0060").strip() if reader.HasMetaDataKey(0, "0008|0060") else ""
    if modality and modality != "CT":
        raise RenalSegError(f"{folder}: DICOM modality is {modality}, RenalSeg needs CT")
    return image


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if "ERROR" not in line and "sitk::" not in line), lines[-1] if lines else "")
    return detail[:160]


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D image file or DICOM folder as it is stored, checking only that it is a 3D scalar image."""
    path = Path(path)
    if not path.exists():
        raise RenalSegError(f"{path}: no such file or folder")
    if path.is_dir():
        image = _read_dicom(path)
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError:
            raise RenalSegError(f"{path}: not a readable image (supported: {', '.join(IMAGE_SUFFIXES)}, a DICOM folder)") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise RenalSegError(f"{path}: image has {image.GetNumberOfComponentsPerPixel()} components per voxel; a CT has one")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise RenalSegError(f"{path}: image is {image.GetDimension()}D; RenalSeg needs a 3D volume")
    if min(image.GetSize()) < 2:
        raise RenalSegError(f"{path}: image is a single slice (size {image.GetSize()}); RenalSeg needs a 3D volume")
    _check_geometry(image, path)
    return image


def _check_geometry(image: sitk.Image, source: os.PathLike | str) -> None:
    spacing = np.array(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or spacing.min() < MIN_SPACING_MM or spacing.max() > MAX_SPACING_MM:
        raise RenalSegError(
            f"{source}: voxel spacing {tuple(np.round(spacing, 4))} mm is outside {MIN_SPACING_MM}-{MAX_SPACING_MM} mm; check the header"
        )
    if int(np.prod(image.GetSize(), dtype=np.int64)) > MAX_VOXELS:
        raise RenalSegError(f"{source}: image of size {image.GetSize()} is larger than any supported CT")


def validate_ct(image: sitk.Image, source: os.PathLike | str = "image") -> None:
    """Raise a specific ``RenalSegError`` unless ``image`` looks like a CT in Hounsfield units."""
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) and not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
        raise RenalSegError(f"{source}: image contains NaN or infinite values")
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    low, high = stats.GetMinimum(), stats.GetMaximum()
    if high - low < 1.0:
        raise RenalSegError(f"{source}: image is constant ({low:g}); nothing to segment")
    if low > -200:
        raise RenalSegError(
            f"{source}: intensities {low:g}..{high:g} do not look like CT in HU (no air below -200); MR or unscaled data?"
        )
    if high < 0 or low < -10000 or high > 40000:
        raise RenalSegError(f"{source}: intensities {low:g}..{high:g} are outside the range of CT in HU")


def read_volume(path: str | os.PathLike) -> sitk.Image:
    """Read a CT (NIfTI, NRRD, MetaImage file or DICOM folder) as HU, int16 when lossless else float32.

    Raises ``RenalSegError`` with a one-line message for anything that is not a readable 3D CT.
    """
    image = read_image(path)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        image = sitk.Cast(image, sitk.sitkFloat32)
        validate_ct(image, path)
        values = sitk.GetArrayViewFromImage(image)
        if np.array_equal(values, np.round(values)) and values.min() >= -32768 and values.max() <= 32767:
            image = sitk.Cast(image, sitk.sitkInt16)
        return image
    validate_ct(image, path)
    if image.GetPixelID() != sitk.sitkInt16:
        image = sitk.Cast(image, sitk.sitkInt16 if _fits_int16(image) else sitk.sitkFloat32)
    return image


def _fits_int16(image: sitk.Image) -> bool:
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    return stats.GetMinimum() >= -32768 and stats.GetMaximum() <= 32767


def read_labels(path: str | os.PathLike) -> sitk.Image:
    """Read a label map (any 3D integer image) as UInt8."""
    image = read_image(path)
    values = sitk.GetArrayViewFromImage(image)
    if values.min() < 0 or values.max() > 255 or not np.array_equal(values, np.round(values)):
        raise RenalSegError(f"{path}: not a label map (values must be integers 0-255)")
    return sitk.Cast(image, sitk.sitkUInt8)


def labels_like(labels: sitk.Image | np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Return ``labels`` as a UInt8 image with exactly ``reference``'s geometry.

    A numpy array must be in SimpleITK order (k, j, i) with the reference's size; an image must have
    the reference's size (its own origin/spacing/direction are replaced by the reference's).
    """
    if isinstance(labels, np.ndarray):
        expected = tuple(reversed(reference.GetSize()))
        if labels.shape != expected:
            raise ValueError(f"label array shape {labels.shape} != reference array shape {expected}")
        image = sitk.GetImageFromArray(labels.astype(np.uint8, copy=False))
    else:
        if labels.GetSize() != reference.GetSize():
            raise ValueError(f"label size {labels.GetSize()} != reference size {reference.GetSize()}")
        image = sitk.Cast(labels, sitk.sitkUInt8)
    image.CopyInformation(reference)
    return image


def check_label_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path; ``RenalSegError`` unless its extension is a label map format (``LABEL_SUFFIXES``)."""
    path = Path(path)
    if _suffix(path) not in LABEL_SUFFIXES:
        raise RenalSegError(f"{path}: unsupported label map format (use one of {', '.join(LABEL_SUFFIXES)})")
    return path


def write_labels(labels: sitk.Image | np.ndarray, path: str | os.PathLike, reference: sitk.Image) -> Path:
    """Write a label map with exactly ``reference``'s geometry (size, spacing, origin, direction).

    The file appears only when complete; the format follows the extension (.nii.gz, .nrrd, .mha).
    """
    path = check_label_path(path)
    image = labels_like(labels, reference)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def write_volume(image: sitk.Image, path: str | os.PathLike) -> Path:
    """Write an image as it is (used for synthesised CT and samples), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


# --- geometry: the only place that converts between LPS images and Slicer's RAS arrays -------------

def ijk_to_lps_matrix(image: sitk.Image) -> np.ndarray:
    """4x4 matrix mapping (i, j, k, 1) voxel indices to LPS millimetres."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def image_to_slicer(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(array, ijk_to_ras)``: the voxel array in Slicer's (k, j, i) order and the 4x4 IJK-to-RAS matrix."""
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps_matrix(image)
    return sitk.GetArrayFromImage(image), ijk_to_ras


def slicer_to_image(array: np.ndarray, ijk_to_ras: np.ndarray) -> sitk.Image:
    """Build a SimpleITK (LPS) image from a Slicer-style (k, j, i) array and its IJK-to-RAS matrix."""
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (k, j, i) array, got shape {array.shape}")
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(ijk_to_ras, dtype=float)
    linear = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((linear / spacing).flatten().tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    return image


def lps_to_ras(points: np.ndarray | list | tuple) -> np.ndarray:
    """Convert points (shape (3,) or (n, 3)) between LPS and RAS; the conversion is its own inverse."""
    return np.asarray(points, dtype=float) * _LPS_TO_RAS


ras_to_lps = lps_to_ras


def physical_to_index(image: sitk.Image, points_lps: np.ndarray) -> np.ndarray:
    """Continuous (i, j, k) indices of LPS points (shape (n, 3))."""
    matrix = np.linalg.inv(ijk_to_lps_matrix(image))
    points = np.atleast_2d(np.asarray(points_lps, dtype=float))
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def index_to_physical(image: sitk.Image, indices: np.ndarray) -> np.ndarray:
    """LPS points of continuous (i, j, k) indices (shape (n, 3))."""
    matrix = ijk_to_lps_matrix(image)
    indices = np.atleast_2d(np.asarray(indices, dtype=float))
    return indices @ matrix[:3, :3].T + matrix[:3, 3]


def voxel_ml(spacing) -> float:
    """The volume of one voxel in mL, from its spacing in mm (any axis order)."""
    return float(np.prod(spacing)) / 1000.0


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tolerance``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )
