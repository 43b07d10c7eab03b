"""Segment read/write helpers and terminology on Slicer's real MRML: exact box updates, terminology file agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest

import slicer
from RenalSegLib import labels
from RenalSegModuleLib import segmentation_io as io
from RenalSegModuleLib import terminology


def test_box_writes_equal_the_patched_array_and_spare_other_segments(scene, small_phantom):
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    matrix = io.ijk_to_ras(volume_node)
    segmentation_node = io.new_segmentation_node(scene, volume_node)
    segmentation = segmentation_node.GetSegmentation()
    names = ["A", "B", "C", "D"]
    ids = [segmentation.AddEmptySegment("", name) for name in names]
    user_id = segmentation.AddEmptySegment("", "user")
    shape = tuple(reversed(small_phantom.ct.GetSize()))
    current = np.zeros(shape, np.uint8)
    current[5:20, 5:20, 5:20] = 1
    current[8:12, 8:12, 8:12] = 2
    current[25:28, 30:40, 30:40] = 4
    user = np.zeros(shape, np.uint8)
    user[0:30, 10:12, 0:48] = 1  # crosses every box below
    io.write_masks(segmentation_node, {i: current == n + 1 for n, i in enumerate(ids)}, matrix, None, shape)
    io.write_masks(segmentation_node, {user_id: user}, matrix, None, shape)
    rng = np.random.default_rng(0)
    for _ in range(6):  # boxes inside, across and outside the segments' current extents
        start, width = rng.integers(0, 24, 3), rng.integers(2, 10, 3)
        box = tuple(slice(int(a), int(a + w)) for a, w in zip(start, width))
        updated = current.copy()
        updated[box] = rng.integers(0, 5, updated[box].shape)
        io.write_masks(segmentation_node, {i: updated[box] == n + 1 for n, i in enumerate(ids)}, matrix, box, shape)
        read = io.read_segment_map(segmentation_node, volume_node, dict(zip(names, ids)), dict(zip(names, [1, 2, 3, 4])))
        np.testing.assert_array_equal(read, updated)
        np.testing.assert_array_equal(io.read_segment_map(segmentation_node, volume_node, {"user": user_id}), user)
        current = updated


def test_terminology_file_agrees_with_labels_segments():
    on_disk = json.loads(terminology.TERMINOLOGY_PATH.read_text(encoding="utf-8"))
    assert on_disk == terminology.terminology_document()  # regenerate: python -m RenalSegModuleLib.terminology
    styles = terminology.load_segment_styles()
    assert list(styles) == [segment.name for segment in labels.SEGMENTS]
    for segment in labels.SEGMENTS:
        style = styles[segment.name]
        assert tuple(round(c * 255) for c in style.color) == segment.color_uint8
        fields = style.terminology.split("~")
        assert fields[0] == terminology.CONTEXT_NAME
        assert fields[1:4] == [segment.category.slicer(), segment.type.slicer(), segment.type_modifier.slicer()]
        assert fields[5] == segment.region.slicer()


def test_terminology_loads_into_slicers_terminology_logic():
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert terminology.register_terminology(logic)
    assert terminology.register_terminology(logic)  # idempotent
    for segment in labels.SEGMENTS:
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(terminology.load_segment_styles()[segment.name].terminology, entry)
        assert entry.GetTypeObject().GetCodeValue() == segment.type.value
        found = slicer.vtkSlicerTerminologyEntry()
        assert logic.FindTypeInTerminologyBy3dSlicerLabel(terminology.CONTEXT_NAME, segment.name, found)
        assert (found.GetTypeModifierObject().GetCodeValue() or "") == segment.type_modifier.value


def test_volume_to_image_round_trips_the_geometry(scene, oblique_phantom):
    from RenalSegLib import volume

    node = io.add_volume_node(scene, oblique_phantom.ct)
    image = io.volume_to_image(node)
    assert volume.same_geometry(image, oblique_phantom.ct, 1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), np.asarray(
        __import__("SimpleITK").GetArrayFromImage(oblique_phantom.ct)))
    with pytest.raises(ValueError):
        io.volume_to_image(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"))
