"""Meshes: right place in RAS and LPS whatever the direction matrix, watertight, volume kept, printable files."""

from __future__ import annotations

import zipfile
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import SimpleITK as sitk

import phantoms
from RenalSegLib import labels as L
from RenalSegLib import mesh, volume
from RenalSegLib.errors import RenalSegError

# Oblique (25 degrees about z) and mirrored left-right, anisotropic, off-centre: any axis or sign mistake shows.
OBLIQUE_FLIPPED = dict(size=(88, 52, 44), spacing=(2.0, 2.2, 2.5), direction=phantoms.oblique_direction(25.0, flip_lr=True), origin=(-31.0, 12.0, 40.0))


@pytest.fixture(scope="module")
def segments() -> sitk.Image:
    p = phantoms.kidney_phantom(**OBLIQUE_FLIPPED)
    return L.segment_map(p.labels, L.body_midline_x(p.ct))


@pytest.fixture(scope="module")
def fine_segments() -> sitk.Image:
    """1.1 mm voxels: the 8 mm cyst is 7 voxels in radius, enough for a surface to hold the voxel volume."""
    p = phantoms.kidney_phantom(size=(150, 80, 88), spacing=(1.1, 1.1, 1.1), direction=phantoms.oblique_direction(-15.0, flip_lr=True))
    return L.segment_map(p.labels, L.body_midline_x(p.ct))


def _read_stl_bounds(path) -> np.ndarray:
    import vtk

    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    return np.array(reader.GetOutput().GetBounds())


def _voxel_centre_bounds_lps(segments: sitk.Image, value: int) -> np.ndarray:
    kji = np.argwhere(sitk.GetArrayViewFromImage(segments) == value)
    points = volume.index_to_physical(segments, kji[:, ::-1].astype(float))
    return np.column_stack([points.min(0), points.max(0)]).ravel()  # xmin, xmax, ymin, ymax, zmin, zmax


@pytest.mark.parametrize("coords", ["LPS", "RAS"])
def test_stl_bounds_match_the_label_maps_physical_extent(segments, tmp_path, coords) -> None:
    paths = mesh.export_meshes(segments, tmp_path, coords=coords, smooth=False, formats=("stl",))
    assert [p.name for p in paths] == ["right_kidney.stl", "left_kidney.stl", "renal_tumor.stl", "renal_cyst.stl"]
    tolerance = max(segments.GetSpacing())  # the surface lies half a voxel outside the outer voxel centres
    for segment, path in zip(L.SEGMENTS, paths):
        expected = _voxel_centre_bounds_lps(segments, segment.value)
        if coords == "RAS":
            expected = np.array([-expected[1], -expected[0], -expected[3], -expected[2], expected[4], expected[5]])
        np.testing.assert_allclose(_read_stl_bounds(path), expected, atol=tolerance, err_msg=f"{segment.name} {coords}")


def test_ras_meshes_put_the_right_kidney_at_positive_x(segments, tmp_path) -> None:
    right, left = (mesh.export_meshes(segments, tmp_path, coords="RAS", formats=("stl",))[i] for i in (0, 1))
    assert _read_stl_bounds(right)[:2].mean() > _read_stl_bounds(left)[:2].mean() + 80  # RAS +x is the patient's right


@pytest.mark.parametrize("smooth,decimate", [(False, 0.0), (True, 0.0), (True, 0.6)])
def test_meshes_are_watertight_and_enclose_the_voxel_volume(fine_segments, smooth, decimate) -> None:
    values = sitk.GetArrayViewFromImage(fine_segments)
    voxel_mm3 = float(np.prod(fine_segments.GetSpacing()))
    for segment, surface in mesh.segment_surfaces(fine_segments, "RAS", smooth, decimate):
        quality = mesh.mesh_quality(surface)
        assert quality["boundary_edges"] == 0 and quality["non_manifold_edges"] == 0, segment.name
        assert mesh._signed_volume(surface) > 0, f"{segment.name}: triangles wound inward"
        assert quality["volume_mm3"] == pytest.approx((values == segment.value).sum() * voxel_mm3, rel=0.03), segment.name


def test_smoothing_and_decimation_change_the_volume_by_less_than_2_percent(segments) -> None:
    raw = {s.name: mesh.mesh_quality(m)["volume_mm3"] for s, m in mesh.segment_surfaces(segments, "LPS", smooth=False)}
    for segment, surface in mesh.segment_surfaces(segments, "LPS", smooth=True, decimate=0.7):
        assert mesh.mesh_quality(surface)["volume_mm3"] == pytest.approx(raw[segment.name], rel=0.02), segment.name


def test_decimation_removes_triangles(segments) -> None:
    full = mesh.segment_surfaces(segments, "LPS", decimate=0.0)[0][1].GetNumberOfCells()
    reduced = mesh.segment_surfaces(segments, "LPS", decimate=0.5)[0][1].GetNumberOfCells()
    assert reduced < 0.7 * full


def test_structure_touching_the_image_edge_still_gives_a_closed_surface() -> None:
    mask = np.zeros((10, 12, 14), bool)
    mask[0:6, 3:9, 5:14] = True  # touches k = 0 and i = last
    surface = mesh.surface_from_mask(mask, np.diag([1.5, 1.0, 2.0, 1.0]), smooth=False)
    quality = mesh.mesh_quality(surface)
    assert quality["boundary_edges"] == 0
    assert quality["volume_mm3"] == pytest.approx(mask.sum() * 3.0, rel=0.1)


def test_stl_is_binary_with_its_coordinate_system_in_the_header(segments, tmp_path) -> None:
    path = mesh.export_meshes(segments, tmp_path, coords="LPS", formats=("stl",))[0]
    data = path.read_bytes()
    triangles = int.from_bytes(data[80:84], "little")
    assert len(data) == 84 + 50 * triangles  # the binary STL layout
    assert b"SPACE=LPS" in data[:80]


def test_obj_files_state_their_coordinate_system(segments, tmp_path) -> None:
    path = mesh.export_meshes(segments, tmp_path, coords="RAS", formats=("obj",))[2]
    assert path.name == "renal_tumor.obj"
    assert "SPACE=RAS" in path.read_text().splitlines()[0]


def test_3mf_holds_each_segment_in_millimetres_with_its_colour(segments, tmp_path) -> None:
    (path,) = mesh.export_meshes(segments, tmp_path, formats=("3mf",))
    ns = {"m": "http://schemas.microsoft.com/3dmanufacturing/core/2015/02"}
    with zipfile.ZipFile(path) as archive:
        assert {"[Content_Types].xml", "_rels/.rels", "3D/3dmodel.model"} <= set(archive.namelist())
        model = ET.fromstring(archive.read("3D/3dmodel.model"))
    assert model.get("unit") == "millimeter"
    colours = [b.get("displaycolor") for b in model.iterfind(".//m:basematerials/m:base", ns)]
    objects = model.findall(".//m:object", ns)
    assert [o.get("name") for o in objects] == [s.name for s in L.SEGMENTS]
    for obj, segment in zip(objects, L.SEGMENTS):
        assert colours[int(obj.get("pindex"))] == "#%02X%02X%02XFF" % segment.color_uint8
        assert len(obj.findall(".//m:triangle", ns)) > 100


def test_obj_with_materials_colours_each_segment(segments, tmp_path) -> None:
    obj, mtl = mesh.export_meshes(segments, tmp_path, formats=("mtl-obj",))
    text = obj.read_text()
    assert f"mtllib {mtl.name}" in text and text.count("usemtl ") == 4
    tumor = L.SEGMENT_BY_NAME["Renal tumor"]
    assert "newmtl renal_tumor\nKa {:.4f} {:.4f} {:.4f}".format(*tumor.color) in mtl.read_text()
    faces = np.array([line.split()[1:] for line in text.splitlines() if line.startswith("f ")], int)
    assert faces.min() == 1 and faces.max() == sum(line.startswith("v ") for line in text.splitlines())


def test_bad_mesh_requests_are_refused(segments, tmp_path) -> None:
    with pytest.raises(RenalSegError, match="unknown mesh format"):
        mesh.export_meshes(segments, tmp_path, formats=("ply",))
    with pytest.raises(RenalSegError, match="coordinate system"):
        mesh.export_meshes(segments, tmp_path, coords="XYZ")
    with pytest.raises(RenalSegError, match="decimation"):
        mesh.export_meshes(segments, tmp_path, decimate=1.0)
    assert list(tmp_path.iterdir()) == []
