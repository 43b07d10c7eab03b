"""Volume IO and geometry: round trips keep geometry exactly; bad input fails with a specific message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import phantoms
from RenalSegLib import RenalSegError
from RenalSegLib import volume as V

GEOMETRIES = {
    "axial": None,
    "oblique": phantoms.oblique_direction(25.0),
    "flipped_lr": np.diag([-1.0, 1.0, 1.0]),
    "oblique_flipped": phantoms.oblique_direction(-15.0, flip_lr=True),
}


def _assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_read_write_label_round_trip_keeps_geometry(tmp_path: Path, suffix: str, geometry: str) -> None:
    p = phantoms.kidney_phantom(size=(40, 36, 24), spacing=(0.8, 0.9, 2.5), direction=GEOMETRIES[geometry], origin=(-12.5, 30.0, 101.0), scale=0.12)
    sitk.WriteImage(p.ct, str(tmp_path / f"ct{suffix}"))
    ct = V.read_volume(tmp_path / f"ct{suffix}")
    _assert_same_geometry(ct, p.ct)
    assert ct.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct), sitk.GetArrayViewFromImage(p.ct))
    V.write_labels(sitk.GetArrayFromImage(p.labels), tmp_path / f"labels{suffix}", ct)
    labels = V.read_labels(tmp_path / f"labels{suffix}")
    _assert_same_geometry(labels, p.ct)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(p.labels))


def _write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, intercept: int = -1024) -> None:
    """Write ``image`` (HU) as a CT DICOM series whose stored values are HU - intercept (unsigned)."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])),
            "0020|0013": str(k + 1),
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        path = folder / f"{series_uid[-6:]}_{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(slice_)
        # Store unsigned raw values with a rescale intercept, as most scanners do.
        dataset = pydicom.dcmread(path)
        raw = (dataset.pixel_array.astype(np.int32) - intercept).astype(np.uint16)
        dataset.PixelRepresentation = 0
        dataset.RescaleIntercept, dataset.RescaleSlope = intercept, 1
        dataset.PixelData = raw.tobytes()
        dataset.save_as(path)


@pytest.mark.parametrize("geometry", ["axial", "oblique", "flipped_lr"])
def test_dicom_folder_reads_hu_and_geometry(tmp_path: Path, geometry: str) -> None:
    p = phantoms.kidney_phantom(size=(32, 28, 12), spacing=(0.75, 0.75, 2.0), direction=GEOMETRIES[geometry], origin=(5.0, -7.0, 20.0), scale=0.1)
    _write_dicom_series(p.ct, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.2")
    ct = V.read_volume(tmp_path / "dicom")
    # DICOM cannot store a left-handed voxel order: a mirrored series comes back with its slice order
    # reversed. The same voxels must sit at the same physical points with the same HU (stored values
    # are HU + 1024, so this also checks that the rescale intercept is applied).
    assert ct.GetSize() == p.ct.GetSize()
    np.testing.assert_allclose(ct.GetSpacing(), p.ct.GetSpacing(), atol=1e-5)
    on_original_grid = sitk.Resample(ct, p.ct, sitk.Transform(), sitk.sitkNearestNeighbor, -5000)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(on_original_grid), sitk.GetArrayViewFromImage(p.ct))
    V.write_labels(sitk.Resample(p.labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor), tmp_path / "labels.nii.gz", ct)
    _assert_same_geometry(V.read_labels(tmp_path / "labels.nii.gz"), ct)


def test_dicom_folder_with_two_series_uses_the_larger(tmp_path: Path) -> None:
    big = phantoms.kidney_phantom(size=(24, 24, 10), spacing=(1.0, 1.0, 2.0), scale=0.1)
    localizer = phantoms.kidney_phantom(size=(24, 24, 3), spacing=(1.0, 1.0, 5.0), scale=0.1)
    _write_dicom_series(big.ct, tmp_path, "1.2.826.0.1.3680043.2.1125.10")
    _write_dicom_series(localizer.ct, tmp_path, "1.2.826.0.1.3680043.2.1125.11")
    assert V.read_volume(tmp_path).GetSize() == (24, 24, 10)


def test_dicom_series_in_subfolders_is_found(tmp_path: Path) -> None:
    """A PACS export nests series a few folders down; the largest one anywhere below is read."""
    big = phantoms.kidney_phantom(size=(24, 24, 10), spacing=(1.0, 1.0, 2.0), scale=0.1)
    localizer = phantoms.kidney_phantom(size=(24, 24, 3), spacing=(1.0, 1.0, 5.0), scale=0.1)
    _write_dicom_series(localizer.ct, tmp_path / "export" / "STUDY1" / "SER1", "1.2.826.0.1.3680043.2.1125.21")
    _write_dicom_series(big.ct, tmp_path / "export" / "STUDY1" / "SER2", "1.2.826.0.1.3680043.2.1125.20")
    (tmp_path / "export" / "README.txt").write_text("not DICOM")
    assert V.read_volume(tmp_path / "export").GetSize() == (24, 24, 10)
    files = V.dicom_series_files(tmp_path / "export", "1.2.826.0.1.3680043.2.1125.21")
    assert len(files) == 3 and all("SER1" in f for f in files)


def test_real_dicom_series_has_ct_hu_and_geometry(real_ct_dir: Path) -> None:
    ct = V.read_volume(real_ct_dir)
    assert ct.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(ct.GetSpacing(), (0.977, 0.977, 2.0), atol=1e-3)
    hu = sitk.GetArrayViewFromImage(ct)
    assert -1030 <= np.median(hu[:, :20, :20]) <= -950  # air in the corner of the field of view
    # Liver: patient right (low i in this axial series), mid-abdomen rows.
    assert 40 <= np.median(hu[8:12, 250:300, 130:180]) <= 120


def test_kits_label_map_axis_order_comes_from_the_header(kits_labels_dir: Path) -> None:
    labels = V.read_labels(kits_labels_dir / "case_00000.nii.gz")
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    # The first array axis of the file (SimpleITK's i axis) is the cranio-caudal one.
    assert abs(direction[2, 0]) == pytest.approx(1.0)
    assert labels.GetSpacing()[0] == pytest.approx(max(labels.GetSpacing()[:1]))
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) <= {0, 1, 2, 3}


# --- Slicer geometry -------------------------------------------------------------------------------

@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_slicer_conversion_round_trip(geometry: str) -> None:
    p = phantoms.kidney_phantom(size=(20, 16, 12), spacing=(0.7, 0.8, 3.0), direction=GEOMETRIES[geometry], origin=(1.0, 2.0, 3.0))
    array, ijk_to_ras = V.image_to_slicer(p.ct)
    back = V.slicer_to_image(array, ijk_to_ras)
    _assert_same_geometry(back, p.ct)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), array)
    # Voxel (i, j, k) lands on the same physical point: RAS = LPS with x, y negated.
    ijk = np.array([3, 5, 7])
    ras = (ijk_to_ras @ np.append(ijk, 1.0))[:3]
    np.testing.assert_allclose(V.ras_to_lps(ras), p.ct.TransformIndexToPhysicalPoint(ijk.tolist()), atol=1e-6)


@pytest.mark.parametrize("geometry", ["axial", "oblique_flipped"])
def test_slicer_conversion_matches_slicer_volume_node(geometry: str) -> None:
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    import vtk
    from slicer import util

    p = phantoms.kidney_phantom(size=(20, 16, 12), spacing=(0.7, 0.8, 3.0), direction=GEOMETRIES[geometry], origin=(1.0, 2.0, 3.0))
    array, ijk_to_ras = V.image_to_slicer(p.ct)
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, ijk_to_ras[r, c])
    node.SetIJKToRASMatrix(matrix)
    util.updateVolumeFromArray(node, array)
    np.testing.assert_array_equal(util.arrayFromVolume(node), sitk.GetArrayViewFromImage(p.ct))
    # Slicer's own RAS of a voxel equals the engine's LPS point with x, y negated.
    node_matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(node_matrix)
    ras = node_matrix.MultiplyPoint((4, 2, 9, 1))[:3]
    np.testing.assert_allclose(V.lps_to_ras(p.ct.TransformIndexToPhysicalPoint((4, 2, 9))), ras, atol=1e-6)
    spacing = node.GetSpacing()
    np.testing.assert_allclose(spacing, p.ct.GetSpacing(), atol=1e-6)


def test_lps_ras_conversion_negates_x_and_y() -> None:
    np.testing.assert_array_equal(V.lps_to_ras([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]]), [[-1.0, -2.0, 3.0], [4.0, -5.0, -6.0]])
    np.testing.assert_array_equal(V.ras_to_lps(V.lps_to_ras([7.0, 8.0, 9.0])), [7.0, 8.0, 9.0])


def test_voxel_ml_is_the_voxel_volume_in_millilitres() -> None:
    assert V.voxel_ml((0.8, 0.8, 2.5)) == pytest.approx(0.0016)  # 1.6 mm^3
    assert V.voxel_ml([2.0, 2.0, 2.0]) == pytest.approx(0.008)


# --- bad input -------------------------------------------------------------------------------------

def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _ct_like(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


BAD_INPUTS = {
    "missing": (lambda d: d / "nope.nii.gz", "no such file"),
    "not_an_image": (lambda d: (d / "notes.nii.gz").write_text("hello") and d / "notes.nii.gz", "not a readable image"),
    "2d": (lambda d: _write(sitk.GetImageFromArray(np.full((16, 16), -1000, np.int16)), d / "slice.nii.gz"), "2D"),
    "4d": (lambda d: _write(sitk.JoinSeries([sitk.GetImageFromArray(np.full((4, 8, 8), v, np.int16)) for v in (-1000, 50)]), d / "series.nii.gz"), "4D"),
    "mr_range": (lambda d: _write(_ct_like(np.random.default_rng(0).integers(0, 900, (8, 16, 16)).astype(np.int16)), d / "mr.nii.gz"), "do not look like CT"),
    "constant": (lambda d: _write(_ct_like(np.full((8, 16, 16), -1000, np.int16)), d / "flat.nii.gz"), "constant"),
    "nan": (lambda d: _write(_ct_like(np.where(np.eye(16)[None] > 0, np.nan, -500.0).repeat(4, 0).astype(np.float32)), d / "nan.mha"), "NaN"),
    "absurd_spacing": (lambda d: _write(_ct_like(np.linspace(-1000, 500, 8 * 16 * 16).reshape(8, 16, 16).astype(np.int16), (1.0, 1.0, 80.0)), d / "big.nii.gz"), "spacing"),
    "empty_folder": (lambda d: (d / "empty").mkdir() or d / "empty", "no DICOM"),
    "corrupt_dicom": (lambda d: ((d / "bad").mkdir(), (d / "bad" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"junk" * 10))[0] or d / "bad", "no DICOM"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_specific_error(tmp_path: Path, case: str) -> None:
    make, message = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(RenalSegError, match=message):
        V.read_volume(path)


def test_write_labels_leaves_no_partial_file_on_failure(tmp_path: Path) -> None:
    p = phantoms.kidney_phantom(size=(8, 8, 8))
    with pytest.raises(ValueError):
        V.write_labels(np.zeros((3, 3, 3), np.uint8), tmp_path / "labels.nii.gz", p.ct)
    assert list(tmp_path.iterdir()) == []
