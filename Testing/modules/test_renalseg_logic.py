"""RenalSeg module logic on Slicer's real MRML (slicer-core): segments, geometry, user segments, table, STL, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
from module_fakes import FakeEngine, ras_bounds

import slicer
from RenalSegLib import labels, volume
from RenalSegModuleLib import segmentation_io as io
from RenalSegModuleLib.logic import RenalSegLogic, SegmentationSettings
from RenalSegModuleLib.tasks import BackgroundTask

NAMES = ["Right kidney", "Left kidney", "Renal tumor", "Renal cyst"]


def expected_segment_map(phantom) -> np.ndarray:
    return sitk.GetArrayFromImage(labels.segment_map(phantom.labels, labels.body_midline_x(phantom.ct)))


@pytest.mark.parametrize("grid", ["small_phantom", "oblique_phantom"])
def test_auto_segmentation_writes_the_four_named_segments_in_the_volume_geometry(scene, grid, request):
    phantom = request.getfixturevalue(grid)
    volume_node = io.add_volume_node(scene, phantom.ct)
    engine = FakeEngine(phantom.labels)
    settings = SegmentationSettings(device="cpu", fast=True, mirror=True, min_lesion_probability=0.7)
    result = RenalSegLogic(scene, engine).process(volume_node, settings=settings)

    call = engine.calls[0]  # the engine saw the CT with its exact LPS geometry, and every setting
    assert call["size"] == phantom.ct.GetSize()
    assert (call["device"], call["fast"], call["flip_tta"], call["min_lesion_probability"]) == ("cpu", True, True, 0.7)
    np.testing.assert_allclose(call["origin"], phantom.ct.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(call["direction"], phantom.ct.GetDirection(), atol=1e-9)

    segmentation = result.segmentation_node.GetSegmentation()
    assert [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())] == NAMES
    for segment in labels.SEGMENTS:
        written = segmentation.GetSegment(result.segment_ids[segment.name])
        np.testing.assert_allclose(written.GetColor(), segment.color, atol=1e-6)
        assert f"SCT^{segment.type.value}^{segment.type.meaning}" in written.GetTerminology()
    assert result.segmentation_node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is volume_node
    read_back = io.read_segment_map(result.segmentation_node, volume_node, result.segment_ids)
    np.testing.assert_array_equal(read_back, expected_segment_map(phantom))
    # patient anatomy, not array order: RAS +x points to the patient's right, whatever the direction matrix
    right, left = (ras_bounds(read_back == labels.SEGMENT_BY_NAME[name].value, io.ijk_to_ras(volume_node)) for name in NAMES[:2])
    assert right[0] > left[1]


def test_rerun_replaces_only_renalseg_segments_and_keeps_the_users(scene, small_phantom):
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    segmentation_node = io.new_segmentation_node(scene, volume_node, "Planning")
    user_mask = np.zeros(tuple(reversed(small_phantom.ct.GetSize())), np.uint8)
    user_mask[10:20, 5:25, 8:30] = 1  # overlaps the kidneys: RenalSeg must not erase any of it
    user_id = segmentation_node.GetSegmentation().AddEmptySegment("", "My vessel", [0.9, 0.1, 0.1])
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        io.oriented_image(user_mask, io.ijk_to_ras(volume_node)), segmentation_node, user_id)

    logic = RenalSegLogic(scene, FakeEngine(small_phantom.labels))
    assert logic.segments_to_replace(segmentation_node) == []  # the user's own segment is never replaced
    first = logic.process(volume_node, segmentation_node)
    assert logic.segments_to_replace(segmentation_node) == NAMES  # the widget asks before a re-run replaces them
    no_cyst = sitk.ChangeLabel(small_phantom.labels, {labels.CYST: labels.KIDNEY})
    logic.engine = FakeEngine(no_cyst)
    second = logic.process(volume_node, segmentation_node)

    segmentation = segmentation_node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 5
    assert second.segment_ids == first.segment_ids  # same segments re-filled, not duplicated
    np.testing.assert_array_equal(io.read_segment_map(segmentation_node, volume_node, {"My vessel": user_id}) > 0, user_mask > 0)
    read_back = io.read_segment_map(segmentation_node, volume_node, second.segment_ids)
    assert not (read_back == labels.SEGMENT_BY_NAME["Renal cyst"].value).any()
    np.testing.assert_array_equal(read_back, sitk.GetArrayFromImage(labels.segment_map(no_cyst, labels.body_midline_x(small_phantom.ct))))


def test_results_table_holds_volume_diameter_and_mean_hu(scene, small_phantom):
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    result = RenalSegLogic(scene, FakeEngine(small_phantom.labels)).process(volume_node)
    segment_map = expected_segment_map(small_phantom)
    kits = sitk.GetArrayFromImage(small_phantom.labels)
    ct = sitk.GetArrayFromImage(small_phantom.ct)
    table = result.table_node.GetTable()
    structures = [table.GetValue(row, 0).ToString() for row in range(table.GetNumberOfRows())]
    assert structures == ["Right kidney", "Left kidney", "Renal tumor 1", "Renal cyst 1"]
    voxel_ml = 4.0 * 4.0 * 5.0 / 1000.0
    masks = [(segment_map == 1) & (kits == labels.KIDNEY), (segment_map == 2) & (kits == labels.KIDNEY),
             kits == labels.TUMOR, kits == labels.CYST]
    for row, mask in enumerate(masks):  # kidney rows measure the parenchyma of that side
        assert table.GetValue(row, 1).ToDouble() == pytest.approx(round(mask.sum() * voxel_ml, 1))
        assert table.GetValue(row, 3).ToDouble() == pytest.approx(round(ct[mask].mean(), 1))
    tumor = result.measurements[2]  # a 12 mm-diameter ball (scale 0.5) on 4-5 mm voxels: within a voxel
    assert abs(tumor["max_diameter_mm"] - 12.0) <= 5.0
    assert table.GetValue(2, 4).ToString() == "Right kidney"  # the tumor's host kidney
    assert result.table_node.GetColumnUnitLabel("Volume") == "mL"


def test_no_kidney_found_gives_empty_segments_and_an_empty_table(scene, small_phantom):
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    empty = sitk.Image(small_phantom.labels.GetSize(), sitk.sitkUInt8)
    result = RenalSegLogic(scene, FakeEngine(empty)).process(volume_node)
    assert result.segmentation_node.GetSegmentation().GetNumberOfSegments() == 4
    assert not io.read_segment_map(result.segmentation_node, volume_node, result.segment_ids).any()
    assert result.table_node.GetNumberOfRows() == 0


def test_segmentation_and_table_sit_beside_the_volume_in_the_subject_hierarchy(scene, small_phantom):
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    hierarchy = scene.GetSubjectHierarchyNode()
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient"), "Study")
    hierarchy.CreateItem(study, volume_node)
    result = RenalSegLogic(scene, FakeEngine(small_phantom.labels)).process(volume_node)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(result.segmentation_node)) == study
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(result.table_node)) == study


def test_engine_failure_leaves_the_scene_as_it_was(scene, small_phantom):
    from RenalSegLib.errors import RenalSegError

    volume_node = io.add_volume_node(scene, small_phantom.ct)
    before = scene.GetNumberOfNodes()

    def broken_engine(ct, **_):
        raise RenalSegError("image is constant (0); nothing to segment")

    with pytest.raises(RenalSegError, match="constant"):
        RenalSegLogic(scene, broken_engine).process(volume_node)
    assert scene.GetNumberOfNodes() == before

    def wrong_size_engine(ct, **_):  # an engine bug must not leave half-made nodes either
        return sitk.Image([4, 4, 4], sitk.sitkUInt8)

    with pytest.raises(RuntimeError, match="size"):
        RenalSegLogic(scene, wrong_size_engine).process(volume_node)
    assert scene.GetNumberOfNodes() == before


def test_a_failure_writing_the_probability_volume_leaves_the_scene_as_it_was(scene, small_phantom, monkeypatch):
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    scene.GetSubjectHierarchyNode()  # the scene's singleton, made on first use
    before = scene.GetNumberOfNodes()
    probability = sitk.Cast(small_phantom.labels == labels.TUMOR, sitk.sitkUInt8) * 90

    def no_memory(node, array):
        raise MemoryError("no room for the probability volume")

    monkeypatch.setattr(io.slicer.util, "updateVolumeFromArray", no_memory)
    with pytest.raises(MemoryError):
        RenalSegLogic(scene, FakeEngine(small_phantom.labels, probability)).process(volume_node)
    assert scene.GetNumberOfNodes() == before


@pytest.mark.parametrize("coordinates, smoothing", [("RAS", False), ("LPS", False), ("LPS", True)])
def test_stl_export_bounds_match_the_segment(scene, oblique_phantom, tmp_path, coordinates, smoothing):
    vtk = pytest.importorskip("vtk")
    volume_node = io.add_volume_node(scene, oblique_phantom.ct)
    logic = RenalSegLogic(scene, FakeEngine(oblique_phantom.labels))
    result = logic.process(volume_node)
    files = logic.export_stl(result.segmentation_node, tmp_path, coordinates=coordinates, smoothing=smoothing)
    assert [f.exists() for f in files] == [True] * 4
    segment_map = expected_segment_map(oblique_phantom)
    for path, segment in zip(files, labels.SEGMENTS):
        assert segment.name in path.name
        reader = vtk.vtkSTLReader()
        reader.SetFileName(str(path))
        reader.Update()
        bounds = np.array(reader.GetOutput().GetBounds())
        expected = ras_bounds(segment_map == segment.value, io.ijk_to_ras(volume_node))
        if coordinates == "LPS":
            expected[:4] = -expected[[1, 0, 3, 2]]
        # the surface lies on voxel faces: within one voxel diagonal of the voxel-centre bounds
        np.testing.assert_allclose(bounds, expected, atol=np.linalg.norm([4.0, 4.0, 5.0]))


def test_background_task_reports_progress_and_cancels(small_phantom):
    logic = RenalSegLogic(scene=None, engine=FakeEngine(small_phantom.labels))
    seen = []
    task = BackgroundTask(lambda progress, cancel: logic.compute_labels(small_phantom.ct, progress=progress, cancel=cancel)).start()
    results = []
    assert task.wait(timeout=30, on_progress=lambda f, m: seen.append(m), on_done=results.append)
    kits, probability = results[0]
    assert seen == ["step 1", "step 2", "step 3"] and volume.same_geometry(kits, small_phantom.ct) and probability is None

    from RenalSegLib.inference import Cancelled

    started = threading.Event()

    def slow(progress, cancel):
        started.set()
        cancel.wait(10)
        return logic.compute_labels(small_phantom.ct, progress=progress, cancel=cancel)

    task = BackgroundTask(slow).start()
    started.wait(10)
    task.cancel()
    errors = []
    assert task.wait(timeout=30, on_error=errors.append)
    assert isinstance(errors[0], Cancelled)


def _real_model_or_skip():
    inference = pytest.importorskip("RenalSegLib.inference", reason="engine inference module not available")
    if not hasattr(inference, "segment"):
        pytest.skip("RenalSegLib.inference.segment does not exist yet")
    from RenalSegLib.errors import RenalSegError
    from RenalSegLib.network import default_model_path

    try:
        return default_model_path()
    except RenalSegError as exc:
        pytest.skip(f"no trained model to run end to end: {exc}")


def test_real_engine_end_to_end_on_the_bundled_sample(scene):
    """The real engine through the module logic: four named segments, exactly on the volume's grid.

    Runs on the bundled sample (a synthetic CT around a real KiTS23 label map), the kind of image the
    model was trained for; a geometric toy phantom is not.
    """
    from RenalSegLib.cli import sample_ct_path, sample_labels_path

    _real_model_or_skip()
    ct = volume.read_volume(sample_ct_path())
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_labels_path())))
    volume_node = io.add_volume_node(scene, ct)
    result = RenalSegLogic(scene).process(volume_node, settings=SegmentationSettings(device="cpu", fast=True))
    segmentation = result.segmentation_node.GetSegmentation()
    assert [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())] == NAMES
    read_back = io.read_segment_map(result.segmentation_node, volume_node, result.segment_ids)
    assert read_back.shape == tuple(reversed(ct.GetSize()))
    kidneys = int(np.isin(read_back, [1, 2]).sum())
    truth = int((reference == labels.KIDNEY).sum())
    assert kidneys > 0.5 * truth, "the trained model should find most of the sample's kidneys"


def test_results_table_gives_each_lesion_the_network_probability(scene, small_phantom):
    values = sitk.GetArrayViewFromImage(small_phantom.labels)
    probability = sitk.GetImageFromArray(np.select([values == labels.TUMOR, values == labels.CYST], [86, 41], 0).astype(np.uint8))
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    result = RenalSegLogic(scene, FakeEngine(small_phantom.labels, probability)).process(volume_node)
    table = result.table_node.GetTable()
    structures, network = (table.GetColumnByName(name) for name in ("Structure", "Network P"))
    by_structure = {structures.GetValue(row): network.GetValue(row) for row in range(table.GetNumberOfRows())}
    assert (by_structure["Renal tumor 1"], by_structure["Renal cyst 1"]) == (0.86, 0.41)
    assert np.isnan(by_structure["Right kidney"]) and np.isnan(by_structure["Left kidney"])


def test_lesion_probability_is_a_volume_beside_the_ct_refilled_by_a_rerun(scene, oblique_phantom):
    values = sitk.GetArrayViewFromImage(oblique_phantom.labels)
    percent = np.where(values == labels.TUMOR, 88, 0).astype(np.uint8)
    volume_node = io.add_volume_node(scene, oblique_phantom.ct)
    logic = RenalSegLogic(scene, FakeEngine(oblique_phantom.labels, sitk.GetImageFromArray(percent)))
    first = logic.process(volume_node)
    node = first.probability_node
    assert first.segmentation_node.GetNodeReference(io.PROBABILITY_ROLE) is node
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), percent)  # voxel for voxel on the CT's grid
    np.testing.assert_allclose(io.ijk_to_ras(node), io.ijk_to_ras(volume_node), atol=1e-9)
    assert (node.GetDisplayNode().GetWindowLevelMin(), node.GetDisplayNode().GetWindowLevelMax()) == (0.0, 100.0)
    logic.engine = FakeEngine(oblique_phantom.labels, sitk.GetImageFromArray(percent // 2))
    nodes = scene.GetNumberOfNodes()
    second = logic.process(volume_node, first.segmentation_node, table_node=first.table_node)
    assert second.probability_node is node and scene.GetNumberOfNodes() == nodes  # the same node, refilled
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), percent // 2)
    assert RenalSegLogic(scene, FakeEngine(oblique_phantom.labels)).process(volume_node).probability_node is None


def test_gui_path_prepares_on_the_worker_and_writes_on_the_main_thread(scene, oblique_phantom):
    from RenalSegModuleLib.logic import PreparedLabels

    volume_node = io.add_volume_node(scene, oblique_phantom.ct)
    logic = RenalSegLogic(scene, FakeEngine(oblique_phantom.labels))
    nodes_before = scene.GetNumberOfNodes()
    task = logic.start_process(volume_node)
    prepared, messages = [], []
    assert task.wait(timeout=60, on_progress=lambda f, m: messages.append(m), on_done=prepared.append)
    assert isinstance(prepared[0], PreparedLabels) and messages[-1] == "measuring"
    assert scene.GetNumberOfNodes() == nodes_before  # the worker touched no MRML
    result = logic.apply_labels(volume_node, prepared[0])
    np.testing.assert_array_equal(io.read_segment_map(result.segmentation_node, volume_node, result.segment_ids),
                                  expected_segment_map(oblique_phantom))
    assert result.table_node.GetNumberOfRows() == 4


def test_update_measurements_measures_the_segments_as_edited(scene, small_phantom):
    values = sitk.GetArrayViewFromImage(small_phantom.labels)
    probability = sitk.GetImageFromArray(np.where(values == labels.TUMOR, 70, 0).astype(np.uint8))
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    logic = RenalSegLogic(scene, FakeEngine(small_phantom.labels, probability))
    result = logic.process(volume_node)
    before = {r["structure"]: r for r in result.measurements}
    tumor = values == labels.TUMOR
    kept = tumor.copy()
    kept[: int(np.median(np.argwhere(tumor)[:, 0]))] = False  # the user erases the tumor's slices below its middle one
    tumor_id = result.segment_ids["Renal tumor"]
    io.write_masks(result.segmentation_node, {tumor_id: kept}, io.ijk_to_ras(volume_node), None, kept.shape)

    table, rows = logic.update_measurements(volume_node, result.segmentation_node, result.table_node)
    after = {r["structure"]: r for r in rows}
    assert table is result.table_node and table.GetNumberOfRows() == len(rows) == 4
    voxel_ml = np.prod(small_phantom.ct.GetSpacing()) / 1000
    assert after["Renal tumor 1"]["volume_ml"] == pytest.approx(kept.sum() * voxel_ml)
    assert kept.sum() < 0.9 * tumor.sum() and before["Renal tumor 1"]["volume_ml"] == pytest.approx(tumor.sum() * voxel_ml)
    assert after["Renal tumor 1"]["lesion_probability"] == pytest.approx(0.70)  # from the segmentation's probability volume
    assert after["Renal cyst 1"]["volume_ml"] == pytest.approx(before["Renal cyst 1"]["volume_ml"])
    with pytest.raises(ValueError, match="choose the CT"):
        logic.update_measurements(volume_node, None)


def test_planning_report_of_the_segments_as_edited(scene, small_phantom, tmp_path):
    import csv
    import json

    values = sitk.GetArrayViewFromImage(small_phantom.labels)
    probability = sitk.GetImageFromArray(np.where(values == labels.TUMOR, 70, 0).astype(np.uint8))
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    logic = RenalSegLogic(scene, FakeEngine(small_phantom.labels, probability))
    result = logic.process(volume_node)
    tumor = values == labels.TUMOR
    kept = tumor.copy()
    kept[: int(np.median(np.argwhere(tumor)[:, 0]))] = False  # an edit after the auto segmentation
    io.write_masks(result.segmentation_node, {result.segment_ids["Renal tumor"]: kept}, io.ijk_to_ras(volume_node), None, kept.shape)

    files = logic.export_report(volume_node, result.segmentation_node, tmp_path)
    folder = tmp_path / f"{result.segmentation_node.GetName()} report"
    assert sorted(files) == sorted(folder / name for name in ("measurements.csv", "measurements.json", "report.png", "report.pdf",
                                                              "report.html"))
    assert all(f.stat().st_size > 0 for f in files)
    with open(folder / "measurements.csv", newline="") as handle:
        rows = {row["structure"]: row for row in csv.DictReader(handle)}
    voxel_ml = np.prod(small_phantom.ct.GetSpacing()) / 1000
    assert float(rows["Renal tumor 1"]["volume_mL"]) == pytest.approx(kept.sum() * voxel_ml, rel=1e-3)  # as edited
    assert float(rows["Renal tumor 1"]["network_lesion_probability"]) == pytest.approx(0.70)
    scores = json.loads((folder / "measurements.json").read_text())["renal_scores"]
    assert [s["tumor"] for s in scores] == ["Renal tumor 1"] and scores[0]["volume_ml"] == pytest.approx(kept.sum() * voxel_ml)
    with pytest.raises(ValueError, match="choose the CT"):
        logic.export_report(None, result.segmentation_node, tmp_path)


def test_update_measurements_after_every_segment_is_erased_gives_an_empty_table(scene, small_phantom):
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    logic = RenalSegLogic(scene, FakeEngine(small_phantom.labels))
    result = logic.process(volume_node)
    assert result.table_node.GetNumberOfRows() == 4
    empty = np.zeros(tuple(reversed(small_phantom.ct.GetSize())), bool)
    io.write_masks(result.segmentation_node, {segment_id: empty for segment_id in result.segment_ids.values()},
                   io.ijk_to_ras(volume_node), None, empty.shape)
    table, rows = logic.update_measurements(volume_node, result.segmentation_node, result.table_node)
    assert rows == [] and table is result.table_node and table.GetNumberOfRows() == 0
