"""Surface meshes of segments: vtk surface extraction in physical millimetres, mesh checks and mesh files.

The pipeline follows 3D Slicer's labelmap-to-closed-surface conversion: discrete flying edges on a
zero-padded crop of the mask (so every surface closes), decimation, windowed-sinc smoothing (which
does not shrink the surface), then consistently oriented outward normals. Points are mapped through
the image's full IJK-to-LPS matrix (oblique and flipped directions included) before smoothing, so the
smoothing works in isotropic millimetres; RAS output then negates x and y.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import SimpleITK as sitk

from . import volume
from .errors import RenalSegError
from .labels import SEGMENTS, Segment
from .outputs import atomic_path


COORDINATE_SYSTEMS = ("RAS", "LPS")
MESH_FORMATS = ("stl", "obj", "3mf", "mtl-obj")
# Slicer's default smoothing factor 0.5 gives a windowed-sinc pass band of 10**(-4 * 0.5).
SMOOTHING_PASS_BAND = 0.01
SMOOTHING_ITERATIONS = 20
MAX_VOLUME_CHANGE = 0.02  # smoothing + decimation must keep the enclosed volume within 2 %
COMBINED_NAME = "segments"  # segments.3mf, segments.obj + segments.mtl


def segment_file_stem(segment: Segment) -> str:
    """File name stem of a segment's mesh, e.g. "right_kidney"."""
    return segment.name.lower().replace(" ", "_")


def _lps_to(coords: str) -> np.ndarray:
    if coords not in COORDINATE_SYSTEMS:
        raise RenalSegError(f"unknown coordinate system {coords!r} (use RAS for Slicer or LPS for DICOM/printing)")
    return np.diag([-1.0, -1.0, 1.0, 1.0]) if coords == "RAS" else np.eye(4)


def surface_from_mask(mask: np.ndarray, ijk_to_lps: np.ndarray, coords: str = "LPS", smooth: bool = True, decimate: float = 0.0):
    """Closed triangle surface (vtkPolyData, millimetres) of a boolean (k, j, i) mask.

    ``ijk_to_lps`` is the image's 4x4 voxel-to-LPS matrix (``volume.ijk_to_lps_matrix``); the surface
    is returned in ``coords`` ("RAS" or "LPS"). ``decimate`` is the fraction of triangles to remove
    (0 keeps all). Triangles are wound counter-clockwise seen from outside (normals point out of the
    structure, into any cavity). Smoothing and decimation are weakened step by step, down to none,
    until the enclosed volume stays within ``MAX_VOLUME_CHANGE`` of the unsmoothed surface: small
    structures (a few voxels across) would otherwise shrink.
    """
    if not 0.0 <= decimate < 1.0:
        raise RenalSegError(f"decimation {decimate} must be in [0, 1) (fraction of triangles removed)")
    raw = _raw_surface(mask, _lps_to(coords) @ np.asarray(ijk_to_lps, dtype=float))
    raw_volume = _signed_volume(raw)
    pass_band = SMOOTHING_PASS_BAND if smooth else None
    while pass_band is not None or decimate > 0:
        surface = _finish(_smooth_and_decimate(raw, pass_band, decimate))
        if abs(_signed_volume(surface) / raw_volume - 1.0) <= MAX_VOLUME_CHANGE:
            return surface
        # Weaker settings: a wider pass band smooths less; fewer triangles removed.
        pass_band = None if pass_band is None or pass_band >= 0.5 else pass_band * 10
        decimate = 0.0 if decimate < 0.1 else decimate / 2
    return _finish(raw)


def _raw_surface(mask: np.ndarray, ijk_to_out: np.ndarray):
    """Discrete flying-edges surface of a mask, mapped to physical millimetres, wound outward."""
    import vtk
    from vtk.util import numpy_support

    kji = np.argwhere(mask)
    if len(kji) == 0:
        raise RenalSegError("cannot build a surface from an empty mask")
    low, high = kji.min(0), kji.max(0) + 1
    # A one-voxel empty border closes surfaces of structures that touch the image edge.
    crop = np.pad(mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]], 1).astype(np.uint8)
    image = vtk.vtkImageData()
    image.SetDimensions(crop.shape[2], crop.shape[1], crop.shape[0])
    image.SetOrigin(*(low[::-1] - 1).astype(float))  # points come out in (i, j, k) voxel indices
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(crop.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    contour = vtk.vtkDiscreteFlyingEdges3D()
    contour.SetInputData(image)
    contour.SetValue(0, 1)
    contour.ComputeNormalsOff()
    contour.ComputeGradientsOff()
    contour.ComputeScalarsOff()
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(ijk_to_out.ravel().tolist())
    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix)
    to_physical = vtk.vtkTransformPolyDataFilter()
    to_physical.SetInputConnection(contour.GetOutputPort())
    to_physical.SetTransform(transform)
    to_physical.Update()
    surface = to_physical.GetOutput()
    # Flying edges winds every piece consistently; a mirroring matrix (or its own convention) can make
    # that inward, which the sign of the enclosed volume reveals. Cavities keep their opposite winding.
    if _signed_volume(surface) < 0:
        reverse = vtk.vtkReverseSense()
        reverse.SetInputData(surface)
        reverse.ReverseCellsOn()
        reverse.Update()
        surface = reverse.GetOutput()
    return surface


def _smooth_and_decimate(surface, pass_band: float | None, decimate: float):
    import vtk

    if decimate > 0:
        decimation = vtk.vtkQuadricDecimation()
        decimation.SetInputData(surface)
        decimation.SetTargetReduction(decimate)
        decimation.VolumePreservationOn()
        decimation.Update()
        surface = decimation.GetOutput()
    if pass_band is not None:
        smoothing = vtk.vtkWindowedSincPolyDataFilter()
        smoothing.SetInputData(surface)
        smoothing.SetNumberOfIterations(SMOOTHING_ITERATIONS)
        smoothing.SetPassBand(pass_band)
        smoothing.BoundarySmoothingOff()
        smoothing.FeatureEdgeSmoothingOff()
        smoothing.NonManifoldSmoothingOn()
        smoothing.NormalizeCoordinatesOn()
        smoothing.Update()
        surface = smoothing.GetOutput()
    return surface


def _finish(surface):
    """Triangles only, with point normals; no consistency/auto-orient pass, which would flip cavities."""
    import vtk

    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputData(surface)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(triangles.GetOutputPort())
    normals.ConsistencyOff()
    normals.AutoOrientNormalsOff()
    normals.SplittingOff()  # splitting sharp edges would duplicate points and open the surface
    normals.ComputePointNormalsOn()
    normals.Update()
    return normals.GetOutput()


def _signed_volume(surface) -> float:
    """Enclosed volume (mm3) by the divergence theorem: positive when triangles are wound outward."""
    points, triangles = mesh_arrays(surface)
    if len(triangles) == 0:
        return 0.0
    a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def mesh_quality(polydata) -> dict:
    """Watertightness and size of a surface: boundary and non-manifold edge counts, volume (mm3), area (mm2)."""
    import vtk

    def count(boundary: bool) -> int:
        edges = vtk.vtkFeatureEdges()
        edges.SetInputData(polydata)
        edges.SetBoundaryEdges(boundary)
        edges.SetNonManifoldEdges(not boundary)
        edges.FeatureEdgesOff()
        edges.ManifoldEdgesOff()
        edges.Update()
        return edges.GetOutput().GetNumberOfCells()

    mass = vtk.vtkMassProperties()
    mass.SetInputData(polydata)
    mass.Update()
    return {
        "boundary_edges": count(True),
        "non_manifold_edges": count(False),
        "volume_mm3": float(mass.GetVolume()),
        "area_mm2": float(mass.GetSurfaceArea()),
        "triangles": int(polydata.GetNumberOfCells()),
    }


def mesh_arrays(polydata) -> tuple[np.ndarray, np.ndarray]:
    """``(points (n, 3) float, triangles (m, 3) int)`` of a triangle surface."""
    from vtk.util import numpy_support

    points = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(float)
    cells = numpy_support.vtk_to_numpy(polydata.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    return points, cells.astype(np.int64)


def segment_surfaces(segments: sitk.Image, coords: str = "RAS", smooth: bool = True, decimate: float = 0.0) -> list[tuple[Segment, object]]:
    """One closed surface per segment present in a segment map (values of ``labels.SEGMENTS``)."""
    from scipy import ndimage

    values = sitk.GetArrayViewFromImage(segments)
    ijk_to_lps = volume.ijk_to_lps_matrix(segments)
    boxes = ndimage.find_objects(np.asarray(values))  # one pass over the volume; box n-1 holds value n
    surfaces = []
    for segment in SEGMENTS:
        box = boxes[segment.value - 1] if segment.value <= len(boxes) else None
        if box is None:
            continue
        # The crop's voxel (0, 0, 0) is the image's voxel at the box corner: shift the matrix accordingly.
        corner = np.eye(4)
        corner[:3, 3] = [box[2].start, box[1].start, box[0].start]
        surfaces.append((segment, surface_from_mask(values[box] == segment.value, ijk_to_lps @ corner, coords, smooth, decimate)))
    return surfaces


def export_meshes(segments: sitk.Image, out_dir: str | os.PathLike, coords: str = "RAS", smooth: bool = True, decimate: float = 0.0,
                  formats: tuple[str, ...] | list[str] = ("stl",)) -> list[Path]:
    """Write each segment's surface as binary STL and/or OBJ, and all of them as one multi-colour file.

    ``segments`` is a segment map (``labels.segment_map``). Files are in millimetres, in ``coords``
    ("RAS" for Slicer, "LPS" for DICOM tools and most printing software), which the STL header and
    the OBJ comment state as ``SPACE=RAS``/``SPACE=LPS`` (3D Slicer reads this). Formats: "stl",
    "obj" (one file per segment), "3mf" and "mtl-obj" (all segments in one coloured file).
    """
    unknown = [f for f in formats if f not in MESH_FORMATS]
    if unknown:
        raise RenalSegError(f"unknown mesh format(s) {', '.join(unknown)} (choose from {', '.join(MESH_FORMATS)})")
    _lps_to(coords)
    surfaces = segment_surfaces(segments, coords, smooth, decimate)
    if not surfaces:
        raise RenalSegError("the segmentation is empty: no mesh to write")
    out_dir = Path(out_dir)
    written = []
    for segment, surface in surfaces:
        if "stl" in formats:
            written.append(_write_stl(surface, out_dir / f"{segment_file_stem(segment)}.stl", f"SPACE={coords} units=mm RenalSeg {segment.name}"))
        if "obj" in formats:
            written.append(_write_obj(surface, out_dir / f"{segment_file_stem(segment)}.obj", coords, segment))
    if "3mf" in formats:
        written.append(write_3mf(surfaces, out_dir / f"{COMBINED_NAME}.3mf"))
    if "mtl-obj" in formats:
        written.extend(write_obj_with_materials(surfaces, out_dir / f"{COMBINED_NAME}.obj", coords))
    return written


def _write_stl(surface, path: Path, header: str) -> Path:
    import vtk

    with atomic_path(path) as tmp:
        writer = vtk.vtkSTLWriter()
        writer.SetInputData(surface)
        writer.SetFileTypeToBinary()
        writer.SetHeader(header[:79])
        writer.SetFileName(str(tmp))
        if not writer.Write():
            raise RenalSegError(f"{path}: could not write the STL file")
    return path


def _write_obj(surface, path: Path, coords: str, segment: Segment) -> Path:
    import vtk

    with atomic_path(path) as tmp:
        writer = vtk.vtkOBJWriter()
        writer.SetInputData(surface)
        writer.SetFileName(str(tmp))
        if not writer.Write():
            raise RenalSegError(f"{path}: could not write the OBJ file")
        # Slicer reads the coordinate system of an OBJ from a "SPACE=" comment; vtk's writer has no header option.
        text = tmp.read_text(encoding="utf-8")
        tmp.write_text(f"# RenalSeg {segment.name}, SPACE={coords}, units mm\n{text}", encoding="utf-8")
    return path


# Hand-written writers: vtk has no 3MF writer, and its OBJ exporter needs a render window; both formats
# are short text formats (3MF is zipped XML) whose materials we must control (one colour per segment).

def write_3mf(surfaces: list[tuple[Segment, object]], path: str | os.PathLike) -> Path:
    """One 3MF file (millimetres) holding each segment as a named object with its segment colour."""
    path = Path(path)
    materials = "".join(f'<base name={quoteattr(s.name)} displaycolor="#{"".join(f"{c:02X}" for c in s.color_uint8)}FF"/>' for s, _ in surfaces)
    objects, items = [], []
    for index, (segment, surface) in enumerate(surfaces):
        points, triangles = mesh_arrays(surface)
        vertices = "".join(f'<vertex x="{x:.4f}" y="{y:.4f}" z="{z:.4f}"/>' for x, y, z in points)
        faces = "".join(f'<triangle v1="{a}" v2="{b}" v3="{c}"/>' for a, b, c in triangles)
        object_id = index + 2
        objects.append(
            f'<object id="{object_id}" type="model" name={quoteattr(segment.name)} pid="1" pindex="{index}">'
            f"<mesh><vertices>{vertices}</vertices><triangles>{faces}</triangles></mesh></object>"
        )
        items.append(f'<item objectid="{object_id}"/>')
    model = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<model unit="millimeter" xml:lang="en-US" xmlns="http://schemas.microsoft.com/3dmanufacturing/core/2015/02">'
        '<metadata name="Title">RenalSeg segments</metadata>'
        f'<resources><basematerials id="1">{materials}</basematerials>{"".join(objects)}</resources>'
        f'<build>{"".join(items)}</build></model>'
    )
    content_types = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="model" ContentType="application/vnd.ms-package.3dmanufacturing-3dmodel+xml"/></Types>'
    )
    relationships = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Target="/3D/3dmodel.model" Id="rel0" '
        'Type="http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"/></Relationships>'
    )
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", content_types)
        archive.writestr("_rels/.rels", relationships)
        archive.writestr("3D/3dmodel.model", model)
    return path


def write_obj_with_materials(surfaces: list[tuple[Segment, object]], path: str | os.PathLike, coords: str) -> list[Path]:
    """One OBJ (one named object per segment) plus its MTL file giving each segment its colour."""
    path = Path(path)
    mtl_path = path.with_suffix(".mtl")
    materials, lines, offset = [], [f"# RenalSeg segments, SPACE={coords}, units mm", f"mtllib {mtl_path.name}"], 1
    for segment, surface in surfaces:
        stem = segment_file_stem(segment)
        r, g, b = segment.color
        materials += [f"newmtl {stem}", f"Ka {r:.4f} {g:.4f} {b:.4f}", f"Kd {r:.4f} {g:.4f} {b:.4f}", "Ks 0.1 0.1 0.1", "d 1.0", "illum 2", ""]
        points, triangles = mesh_arrays(surface)
        lines += [f"o {stem}", f"usemtl {stem}"]
        lines += [f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in points]
        lines += [f"f {a} {b} {c}" for a, b, c in triangles + offset]
        offset += len(points)
    with atomic_path(mtl_path) as tmp:
        tmp.write_text("\n".join(materials), encoding="utf-8")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [path, mtl_path]
