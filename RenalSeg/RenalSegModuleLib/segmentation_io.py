"""Moving images and segments between MRML nodes and the engine's arrays, in the volume's exact geometry.

Geometry goes through ``RenalSegLib.volume`` only (``slicer_to_image``); segments are written with
Slicer's own ``vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment`` so that layers, overlap
rules and the segmentation's modified events behave exactly as when the Segment Editor writes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from RenalSegLib import volume
from RenalSegLib.labels import SEGMENTS

from .terminology import SegmentStyle

Box = tuple[slice, slice, slice]  # (k, j, i) array slices


def ijk_to_ras(volume_node) -> np.ndarray:
    """The volume's 4x4 IJK-to-RAS matrix as a numpy array."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_to_image(volume_node) -> sitk.Image:
    """A copy of a scalar volume node as a SimpleITK image (LPS), ready for the engine."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("the input volume has no image data")
    array = np.array(slicer.util.arrayFromVolume(volume_node))  # copy: the engine may run while the scene changes
    return volume.slicer_to_image(array, ijk_to_ras(volume_node))


def add_volume_node(scene, image: sitk.Image, name: str = "CT"):
    """Add a scalar volume node holding ``image`` (used by tests and the self-test)."""
    array, matrix = volume.image_to_slicer(image)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    slicer.util.updateVolumeFromArray(node, array)
    return node


def oriented_image(array: np.ndarray, matrix: np.ndarray, box: Box | None = None, crop: np.ndarray | None = None) -> "slicer.vtkOrientedImageData":
    """A vtkOrientedImageData of ``array[box]`` (or of ``crop``) placed at ``box`` in the grid of ``matrix`` (IJK-to-RAS)."""
    box = box or tuple(slice(0, n) for n in array.shape)
    crop = np.ascontiguousarray(array[box] if crop is None else crop, dtype=np.uint8)
    (k0, j0, i0) = (s.start for s in box)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i0, i0 + crop.shape[2] - 1, j0, j0 + crop.shape[1] - 1, k0, k0 + crop.shape[0] - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = crop.ravel()
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(matrix))
    return image


def new_segmentation_node(scene, volume_node, name: str | None = None):
    """A segmentation node with the volume's geometry, display node, transform and subject-hierarchy place."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{volume_node.GetName()} RenalSeg")
    node.CreateDefaultDisplayNodes()
    attach_to_volume(node, volume_node)
    return node


def attach_to_volume(segmentation_node, volume_node) -> None:
    """Reference the volume's geometry, follow its transform and sit beside it in the subject hierarchy."""
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    place_beside(segmentation_node, volume_node)


def place_beside(node, volume_node) -> None:
    """Put ``node`` under the volume's parent item (its study) in the subject hierarchy, when there is one."""
    scene = volume_node.GetScene()
    hierarchy = scene.GetSubjectHierarchyNode() if scene is not None else None
    if hierarchy is None:
        return
    volume_item = hierarchy.GetItemByDataNode(volume_node)
    if not volume_item:
        return
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(hierarchy.GetItemParent(volume_item), node)
    hierarchy.SetItemParent(item, hierarchy.GetItemParent(volume_item))


def remove_node(node) -> None:
    """Remove a node and its display nodes from its scene (``vtkMRMLScene.RemoveNode`` leaves display nodes behind)."""
    scene = node.GetScene()
    displays = [node.GetNthDisplayNode(n) for n in range(node.GetNumberOfDisplayNodes())] if hasattr(node, "GetNumberOfDisplayNodes") else []
    for display in displays:
        if display is not None:
            scene.RemoveNode(display)
    scene.RemoveNode(node)


@contextlib.contextmanager
def removed_on_failure() -> Iterator[list]:
    """A list for the nodes a block creates; if the block raises, they leave the scene (``remove_node``)."""
    created: list = []
    try:
        yield created
    except Exception:
        for node in created:
            remove_node(node)
        raise


PROBABILITY_ROLE = "renalsegLesionProbability"  # node reference from a segmentation to its lesion probability volume
MEASUREMENTS_ROLE = "renalsegMeasurements"  # node reference from a segmentation to its results table
PROBABILITY_COLORS = ("vtkMRMLColorTableNodeFileViridis.txt", "vtkMRMLColorTableNodeRainbow")  # the first in the scene


def write_probability_volume(segmentation_node, volume_node, percent: np.ndarray):
    """Show the auto segmentation's lesion probability map (percent, (k, j, i) on the volume's grid) as a scalar
    volume beside the CT, referenced by the segmentation so that a re-run refills the same node; returns it.

    The display maps 0-100 % onto a colour table, ready to be picked as the foreground of the slice views.
    If writing fails, a node created here is removed again.
    """
    scene = segmentation_node.GetScene()
    node = segmentation_node.GetNodeReference(PROBABILITY_ROLE)
    with removed_on_failure() as created:
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{segmentation_node.GetName()} lesion probability")
            created.append(node)
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras(volume_node)))
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(percent, dtype=np.uint8))
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, 100.0)
        colors = next((c for c in PROBABILITY_COLORS if scene.GetNodeByID(c) is not None), None)
        if colors is not None:
            display.SetAndObserveColorNodeID(colors)
    if created:
        segmentation_node.SetNodeReferenceID(PROBABILITY_ROLE, node.GetID())
        place_beside(node, volume_node)
    return node


def ensure_segments(segmentation_node, styles: Mapping[str, SegmentStyle]) -> dict[str, str]:
    """IDs of the named segments, creating missing ones with their colour and terminology.

    Existing segments (found by name) keep their ID, so references and undo stay valid.
    """
    segmentation = segmentation_node.GetSegmentation()
    ids = {}
    for name, style in styles.items():
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        if not segment_id:
            segment_id = segmentation.AddEmptySegment("", name, list(style.color))
        segment = segmentation.GetSegment(segment_id)
        segment.SetColor(*style.color)
        segment.SetTerminology(style.terminology)
        ids[name] = segment_id
    return ids


def write_segment_map(segmentation_node, segment_map: np.ndarray, matrix: np.ndarray, styles: Mapping[str, SegmentStyle],
                      box: Box | None = None) -> dict[str, str]:
    """Write a segment map (values of ``labels.SEGMENTS``) into the named segments; other segments are untouched.

    With ``box`` only that (k, j, i) region of each named segment is replaced (interactive write-back);
    without it each named segment is replaced entirely (re-running auto segmentation).
    """
    ids = ensure_segments(segmentation_node, styles)
    values = {segment.name: segment.value for segment in SEGMENTS}
    region = segment_map[box] if box is not None else segment_map
    write_masks(segmentation_node, {ids[name]: region == values[name] for name in ids}, matrix, box, segment_map.shape)
    return ids


def write_masks(segmentation_node, masks: Mapping[str, np.ndarray], matrix: np.ndarray, box: Box | None, shape,
                before_write: Callable[[], object] | None = None) -> bool:
    """Replace segments (by ID) with binary masks; with ``box`` the masks cover only that region and only it changes.

    A box update patches the box into the segment's own labelmap (its extent grown to hold the box)
    and writes that back; segments whose content in the box is unchanged are not touched. The
    extent-limited merge modes of ``SetBinaryLabelmapToSegment`` are not used: they neither grow a
    segment beyond its extent nor survive layers re-shared by undo. ``before_write`` (e.g. saving an
    undo state) is called only when something is about to change; returns whether anything changed.
    """
    modifier = slicer.vtkSlicerSegmentationsModuleLogic
    labelmaps = {}
    for segment_id, region_mask in masks.items():
        if box is None:  # a whole segment: only its bounding box needs to travel (the rest is empty)
            labelmaps[segment_id] = oriented_image(region_mask, matrix, _bounding_box(region_mask))
        else:
            patched = _patched_segment(segmentation_node, segment_id, np.asarray(region_mask, bool), box, matrix, shape)
            if patched is not None:
                labelmaps[segment_id] = patched
    if not labelmaps:
        return False
    if before_write is not None:
        before_write()
    was_modifying = segmentation_node.StartModify()
    try:
        for segment_id, labelmap in labelmaps.items():
            if not modifier.SetBinaryLabelmapToSegment(labelmap, segmentation_node, segment_id, modifier.MODE_REPLACE):
                raise RuntimeError(f"could not write segment {segment_id!r}")
    finally:
        segmentation_node.EndModify(was_modifying)
    return True


def _bounding_box(mask: np.ndarray) -> Box:
    """The (k, j, i) bounding box of a mask, from its projections; one voxel at the origin when empty."""
    boxes = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        if len(hit) == 0:
            return (slice(0, 1),) * 3
        boxes.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(boxes)


def _patched_segment(segmentation_node, segment_id: str, region_mask: np.ndarray, box: Box, matrix: np.ndarray, shape):
    """The segment's labelmap over (its extent + box) with ``box`` replaced; None when the box holds no change."""
    current = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, current)
    current_matrix = vtk.vtkMatrix4x4()
    current.GetImageToWorldMatrix(current_matrix)
    extent = current.GetExtent()
    if extent[0] > extent[1] or current.GetPointData().GetScalars() is None:
        old, old_start = np.zeros((0, 0, 0), np.uint8), np.array([s.start for s in box])
    elif np.allclose(slicer.util.arrayFromVTKMatrix(current_matrix), matrix, atol=1e-6):
        old = numpy_support.vtk_to_numpy(current.GetPointData().GetScalars()).reshape(
            extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1) > 0
        old_start = np.array([extent[4], extent[2], extent[0]])
    else:  # drawn on another grid (e.g. oversampled): resample onto the volume's grid
        old = read_segment_map(segmentation_node, None, {"s": segment_id}, {"s": 1}, shape=shape, matrix=matrix) > 0
        old_start = np.zeros(3, int)
    box_start, box_stop = np.array([s.start for s in box]), np.array([s.stop for s in box])
    if old.size:
        low = np.maximum(box_start, old_start)
        high = np.minimum(box_stop, old_start + old.shape)
        before = np.zeros(region_mask.shape, bool)
        if np.all(high > low):
            before[tuple(slice(a - b, c - b) for a, b, c in zip(low, box_start, high))] = old[
                tuple(slice(a - b, c - b) for a, b, c in zip(low, old_start, high))]
        if np.array_equal(before, region_mask):
            return None
        start, stop = np.minimum(box_start, old_start), np.maximum(box_stop, old_start + old.shape)
    else:
        if not region_mask.any():
            return None
        start, stop = box_start, box_stop
    patched = np.zeros(tuple(stop - start), np.uint8)
    if old.size:
        patched[tuple(slice(a - b, a - b + n) for a, b, n in zip(old_start, start, old.shape))] = old
    patched[tuple(slice(a - b, c - b) for a, b, c in zip(box_start, start, box_stop))] = region_mask
    full_box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    image = oriented_image(np.zeros(0, np.uint8), matrix, full_box, patched)
    return image


def read_segment_map(segmentation_node, volume_node, segment_ids: Mapping[str, str], values: Mapping[str, int] | None = None,
                     shape=None, matrix: np.ndarray | None = None) -> np.ndarray:
    """The named segments as one (k, j, i) array on the volume's voxel grid.

    Each segment gets its value from ``values`` (default: ``labels.SEGMENTS`` values, 1 for other
    names); where segments overlap, the one later in ``values`` order wins (lesions over kidney).
    """
    values = dict(values) if values is not None else {segment.name: segment.value for segment in SEGMENTS}
    order = list(values)
    if volume_node is not None:
        shape, matrix = tuple(reversed(volume_node.GetImageData().GetDimensions())), ijk_to_ras(volume_node)
    out = np.zeros(shape, np.uint8)
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(0, shape[2] - 1, 0, shape[1] - 1, 0, shape[0] - 1)
    reference.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(matrix))
    segmentation = segmentation_node.GetSegmentation()
    for name in sorted(segment_ids, key=lambda n: order.index(n) if n in order else -1):
        segment_id = segment_ids[name]
        if not segment_id or segmentation.GetSegment(segment_id) is None:
            continue
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        merged = slicer.vtkOrientedImageData()
        segmentation_node.GenerateMergedLabelmapForAllSegments(merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, reference, ids)
        mask = numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(shape) > 0
        out[mask] = values.get(name, 1)
    return out


def remove_segments(segmentation_node, names: Iterable[str]) -> None:
    """Remove the named segments that exist."""
    segmentation = segmentation_node.GetSegmentation()
    for name in names:
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        if segment_id:
            segmentation.RemoveSegment(segment_id)
