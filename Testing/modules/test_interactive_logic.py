"""RenalSegInteractive logic on Slicer's real MRML: clicks (RAS, markups) refine only the crop, with undo/redo."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from module_fakes import FakeEngine, FakeSession

from RenalSegInteractiveLib.logic import InteractiveLogic
from RenalSegLib import labels, volume
from RenalSegLib.errors import RenalSegError
from RenalSegModuleLib import segmentation_io as io
from RenalSegModuleLib.logic import RenalSegLogic


@pytest.fixture
def refined(scene, oblique_phantom):
    """A RenalSeg segmentation of the oblique phantom, opened for refinement with the fake session."""
    volume_node = io.add_volume_node(scene, oblique_phantom.ct)
    result = RenalSegLogic(scene, FakeEngine(oblique_phantom.labels)).process(volume_node)
    logic = InteractiveLogic(scene, FakeSession)
    logic.start(volume_node, result.segmentation_node).result(30)
    yield logic, oblique_phantom
    logic.shutdown()


def left_kidney_point_ras(phantom) -> np.ndarray:
    """RAS of a point inside the left kidney, away from the cyst."""
    kji = np.argwhere(sitk.GetArrayFromImage(phantom.labels) == labels.KIDNEY)
    lps = volume.index_to_physical(phantom.ct, kji[:, ::-1])
    left = lps[lps[:, 0] > np.median(lps[:, 0])]
    return volume.lps_to_ras(left[np.argmax(left[:, 2])] - [0, 0, 12.0])


def test_click_refines_only_the_crop_at_the_clicked_point(refined):
    logic, phantom = refined
    before = logic.read_kits_labels()
    point_ras = left_kidney_point_ras(phantom)
    box = logic.click(point_ras, positive=True, label=labels.TUMOR)

    session = logic._session
    np.testing.assert_allclose(session.clicks_lps[0], point_ras * [-1, -1, 1])  # RAS -> LPS in one place
    after = logic.read_kits_labels()
    np.testing.assert_array_equal(after, session.labels)
    outside = np.ones(after.shape, bool)
    outside[box] = False
    np.testing.assert_array_equal(after[outside], before[outside])
    assert (after[box] == labels.TUMOR).sum() > (before[box] == labels.TUMOR).sum()
    assert all(s.stop - s.start < n for s, n in zip(box, after.shape))  # a crop, not the volume
    # the new tumor voxels left the left-kidney segment: segments stay mutually exclusive
    names = {s.name: s for s in labels.SEGMENTS}
    segment_map = io.read_segment_map(logic.segmentation_node, logic.volume_node,
                                      {n: logic.segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(n) for n in names})
    assert not ((segment_map == names["Left kidney"].value) & (after == labels.TUMOR)).any()


def test_markups_click_and_negative_click(refined, scene):
    logic, phantom = refined
    point_ras = left_kidney_point_ras(phantom)
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "positive")
    markups.AddControlPoint(*point_ras)
    result = logic.submit_markups_click(markups, 0, positive=True, label=labels.CYST).result(30)
    logic.apply_click(result)
    assert (logic.read_kits_labels() == labels.CYST).sum() > (sitk.GetArrayFromImage(phantom.labels) == labels.CYST).sum()
    np.testing.assert_allclose(logic._session.clicks_lps[0], volume.ras_to_lps(point_ras))
    logic.click(point_ras, positive=False)
    kji = np.round(volume.physical_to_index(phantom.ct, volume.ras_to_lps(point_ras))[0][::-1]).astype(int)
    assert logic.read_kits_labels()[tuple(kji)] == labels.BACKGROUND


def test_undo_redo_and_reset_restore_the_segmentation(refined):
    logic, phantom = refined
    original = logic.read_kits_labels()
    point = left_kidney_point_ras(phantom)
    logic.click(point, label=labels.TUMOR)
    after_first = logic.read_kits_labels()
    logic.click(point + [0, 0, -10.0], label=labels.CYST)
    assert logic.undo()
    np.testing.assert_array_equal(logic.read_kits_labels(), after_first)
    np.testing.assert_array_equal(logic._session.labels, after_first)  # the session stepped back too
    assert logic.undo()
    np.testing.assert_array_equal(logic.read_kits_labels(), original)
    assert not logic.undo()
    assert logic.redo()
    np.testing.assert_array_equal(logic.read_kits_labels(), after_first)
    logic.reset()
    np.testing.assert_array_equal(logic.read_kits_labels(), original)
    assert logic.undo()  # the reset itself is undoable
    np.testing.assert_array_equal(logic.read_kits_labels(), after_first)


def test_each_click_reports_the_volume_each_class_gained(refined):
    """The status line's figures are the segmentation's own change; a click that changes nothing says so."""
    logic, phantom = refined
    voxel_ml = float(np.prod(phantom.ct.GetSpacing())) / 1000.0
    before = logic.read_kits_labels()
    point = left_kidney_point_ras(phantom)
    result = logic.submit_click(point, label=labels.CYST).result(30)
    logic.apply_click(result)
    after = logic.read_kits_labels()
    gained = {k: float(((after == k).sum() - (before == k).sum()) * voxel_ml) for k in (labels.KIDNEY, labels.TUMOR, labels.CYST)}
    assert result.change.gained_ml == pytest.approx({k: v for k, v in gained.items() if v})
    assert result.change.gained_ml[labels.CYST] > 1.0  # the stand-in paints an 8 mm ball (2.1 mL)
    assert result.change.moved_ml == pytest.approx((after != before).sum() * voxel_ml)
    assert result.change.describe().startswith("cyst +")
    again = logic.submit_click(point, label=labels.CYST).result(30)
    assert again.change.moved_ml == 0 and again.change.describe().startswith("nothing changed")


def test_a_change_that_keeps_every_volume_is_described_as_reshaped_and_a_few_voxels_not_as_zero():
    before = np.array([labels.KIDNEY, labels.TUMOR, labels.TUMOR, labels.KIDNEY], np.uint8)
    after = np.array([labels.TUMOR, labels.TUMOR, labels.KIDNEY, labels.KIDNEY], np.uint8)
    change = labels.ClassChange.between(before, after, 0.5)
    assert change.gained_ml == {} and change.moved_ml == 1.0
    assert change.describe() == "1.0 mL reshaped, no class's volume changed"
    one_voxel = labels.ClassChange.between(before[:1], after[:1], 0.002)  # a kidney voxel became tumor
    assert one_voxel.describe() == "kidney -0.002 mL, tumor +0.002 mL"


def test_click_outside_the_image_changes_nothing(refined):
    logic, phantom = refined
    before = logic.read_kits_labels()
    with pytest.raises(RenalSegError, match="outside"):
        logic.click(np.array([1e4, 1e4, 1e4]))
    np.testing.assert_array_equal(logic.read_kits_labels(), before)
    assert not logic.history.IsRestorePreviousStateAvailable()


def test_locked_classes_are_kept_and_unlocking_reaches_the_session(refined):
    logic, phantom = refined
    point_ras = left_kidney_point_ras(phantom)
    logic.set_locked_labels({labels.KIDNEY}).result(30)
    before = logic.read_kits_labels()
    box = logic.click(point_ras, positive=True, label=labels.TUMOR)
    after = logic.read_kits_labels()
    assert logic._session.locked_labels == {labels.KIDNEY}
    np.testing.assert_array_equal(after[before == labels.KIDNEY], labels.KIDNEY)

    logic.set_locked_labels(()).result(30)
    logic.click(point_ras, positive=True, label=labels.TUMOR)
    unlocked = logic.read_kits_labels()
    assert ((before[box] == labels.KIDNEY) & (unlocked[box] == labels.TUMOR)).any()


def test_a_reused_session_takes_the_current_locks(refined):
    logic, _ = refined
    created = FakeSession.instances
    logic.set_locked_labels({labels.CYST, labels.TUMOR})
    logic.start(logic.volume_node, logic.segmentation_node).result(30)
    assert FakeSession.instances == created  # unchanged segmentation: the same session, with the new locks
    assert logic._session.locked_labels == {labels.CYST, labels.TUMOR}


def test_hand_drawn_segment_is_refined_and_the_session_is_reused(scene, small_phantom):
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Drawn")
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", "Segment_1")
    drawn = (sitk.GetArrayFromImage(small_phantom.labels) == labels.TUMOR).astype(np.uint8)
    io.attach_to_volume(segmentation_node, volume_node)
    io.write_masks(segmentation_node, {segment_id: drawn}, io.ijk_to_ras(volume_node), None, drawn.shape)

    logic = InteractiveLogic(scene, FakeSession)
    created = FakeSession.instances
    logic.start(volume_node, segmentation_node, target_segments={labels.TUMOR: "Segment_1"}).result(30)
    np.testing.assert_array_equal(logic._session.initial == labels.TUMOR, drawn > 0)
    tumor_lps = volume.index_to_physical(small_phantom.ct, np.argwhere(drawn)[:, ::-1]).mean(0)
    box = logic.click(volume.lps_to_ras(tumor_lps + [0, 0, 8.0]), label=labels.TUMOR)
    grown = io.read_segment_map(segmentation_node, volume_node, {"Segment_1": segment_id})
    assert grown.sum() > drawn.sum() and (grown[box] > 0).sum() > (drawn[box] > 0).sum()
    logic.start(volume_node, segmentation_node, target_segments={labels.TUMOR: "Segment_1"}).result(30)  # unchanged: same session
    assert FakeSession.instances == created + 1
    logic.shutdown()


def test_real_refinement_session_end_to_end(scene, small_phantom):
    """The engine's RefinementSession through the logic: a tumor click changes only a crop and undo restores."""
    interactive = pytest.importorskip("RenalSegLib.interactive", reason="RenalSegLib.interactive (the engine's click session) not written yet")
    from RenalSegLib.network import default_model_path

    try:
        default_model_path()
    except RenalSegError as exc:
        pytest.skip(f"no trained model: {exc}")
    import torch

    torch.set_num_threads(1)
    assert hasattr(interactive, "RefinementSession")
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    result = RenalSegLogic(scene, FakeEngine(small_phantom.labels)).process(volume_node)
    logic = InteractiveLogic(scene, device="cpu")
    try:
        logic.start(volume_node, result.segmentation_node).result(300)
        before = logic.read_kits_labels()
        tumor_lps = volume.index_to_physical(small_phantom.ct, np.argwhere(before == labels.TUMOR)[:, ::-1]).mean(0)
        box = logic.click(volume.lps_to_ras(tumor_lps), label=labels.TUMOR, timeout=300)
        after = logic.read_kits_labels()
        outside = np.ones(after.shape, bool)
        outside[box] = False
        np.testing.assert_array_equal(after[outside], before[outside])
        assert logic.undo(timeout=300)
        np.testing.assert_array_equal(logic.read_kits_labels(), before)
    finally:
        logic.shutdown()


def test_model_work_stays_on_one_persistent_worker_thread(scene, small_phantom):
    import threading

    threads = []

    class RecordingSessions:
        def warm_up(self, device, model_path):
            threads.append(threading.current_thread())

        def __call__(self, ct, kits, **kwargs):
            threads.append(threading.current_thread())
            session = FakeSession(ct, kits, **kwargs)
            original = session.add_click

            def add_click(*args, **kw):
                threads.append(threading.current_thread())
                return original(*args, **kw)

            session.add_click = add_click
            return session

    volume_node = io.add_volume_node(scene, small_phantom.ct)
    result = RenalSegLogic(scene, FakeEngine(small_phantom.labels)).process(volume_node)
    logic = InteractiveLogic(scene, RecordingSessions())
    logic.warm_up().result(30)
    logic.start(volume_node, result.segmentation_node).result(30)
    logic.click(left_kidney_point_ras(small_phantom))
    logic.click(left_kidney_point_ras(small_phantom) + [0, 0, 5.0])
    logic.shutdown()
    assert len(threads) == 4 and len(set(threads)) == 1 and threads[0] is not threading.main_thread()


def test_undo_stays_in_step_with_no_op_clicks_and_a_shallow_history(refined):
    logic, phantom = refined
    original = logic.read_kits_labels()
    point = left_kidney_point_ras(phantom)
    logic.click(point, label=labels.TUMOR)
    after_first = logic.read_kits_labels()
    logic.click(point, label=labels.TUMOR)  # the same click again changes nothing: no undo state is saved
    np.testing.assert_array_equal(logic.read_kits_labels(), after_first)
    assert logic.undo()  # undoes the no-op click only
    np.testing.assert_array_equal(logic.read_kits_labels(), after_first)
    assert logic.undo()
    np.testing.assert_array_equal(logic.read_kits_labels(), original)

    logic.history.SetMaximumNumberOfStates(3)  # deeper clicks than the history holds: the session's labels are written back
    states = [logic.read_kits_labels()]
    for dz in (0.0, -10.0, 10.0):
        logic.click(point + [0, 0, dz], label=labels.CYST)
        states.append(logic.read_kits_labels())
    for expected in reversed(states[:-1]):
        assert logic.undo()
        np.testing.assert_array_equal(logic.read_kits_labels(), expected)
        np.testing.assert_array_equal(logic._session.labels, expected)


def table_rows(table_node) -> dict[str, dict[str, float]]:
    """A results table as {structure: {column: value}} (the number columns; an empty cell is None)."""
    table = table_node.GetTable()
    structures = table.GetColumnByName("Structure")

    def cell(column: str, row: int) -> float | None:
        value = table.GetColumnByName(column).GetValue(row)
        return None if np.isnan(value) else value

    numbers = ("Volume", "Max diameter", "Network P")
    return {structures.GetValue(r): {c: cell(c, r) for c in numbers} for r in range(table.GetNumberOfRows())}


def test_the_results_table_follows_the_clicks_with_the_network_probability(scene, oblique_phantom):
    from RenalSegLib import measure

    values = sitk.GetArrayViewFromImage(oblique_phantom.labels)
    probability = sitk.GetImageFromArray(np.where(values == labels.CYST, 64, 0).astype(np.uint8))
    probability.CopyInformation(oblique_phantom.ct)
    volume_node = io.add_volume_node(scene, oblique_phantom.ct)
    result = RenalSegLogic(scene, FakeEngine(oblique_phantom.labels, probability)).process(volume_node)
    logic = InteractiveLogic(scene, FakeSession)
    try:
        logic.start(volume_node, result.segmentation_node).result(30)
        assert logic.measurements_table() is result.table_node
        before = table_rows(result.table_node)
        logic.click(left_kidney_point_ras(oblique_phantom), label=labels.TUMOR)  # a new tumor inside the left kidney
        assert table_rows(result.table_node) == before  # the table changes only when the measurement is applied
        assert logic.apply_measurements(logic.submit_measurements().result(30))

        after = table_rows(result.table_node)
        clicked = sitk.GetImageFromArray(logic.read_kits_labels())
        clicked.CopyInformation(oblique_phantom.ct)
        expected = {r["structure"]: r for r in measure.measure(clicked, oblique_phantom.ct, lesion_probability=probability)}
        assert set(after) == set(expected) and set(after) - set(before) == {"Renal tumor 2"}  # the phantom has one already
        for name, row in expected.items():
            assert after[name]["Volume"] == pytest.approx(row["volume_ml"], abs=0.05)
        assert after["Renal tumor 1"]["Network P"] == 0.0 and after["Renal cyst 1"]["Network P"] == 0.64
        assert after["Left kidney"]["Volume"] < before["Left kidney"]["Volume"]  # the tumor came out of the kidney

        logic.undo()
        assert logic.apply_measurements(logic.submit_measurements().result(30))
        assert table_rows(result.table_node) == before
    finally:
        logic.shutdown()


def test_a_click_cancels_the_measurement_in_flight(refined):
    import threading

    logic, phantom = refined
    before = table_rows(logic.measurements_table())
    gate = threading.Event()
    logic.worker.submit(gate.wait, 30)  # hold the worker so the measurement is still queued when the click comes
    measuring = logic.submit_measurements()
    click = logic.submit_click(left_kidney_point_ras(phantom), label=labels.TUMOR)
    gate.set()
    assert measuring.result(30) is None  # it gave way to the click
    assert not logic.apply_measurements(measuring.result())
    logic.apply_click(click.result(30))
    assert table_rows(logic.measurements_table()) == before


def test_a_hand_drawn_segmentation_has_no_table_to_refresh(scene, small_phantom):
    volume_node = io.add_volume_node(scene, small_phantom.ct)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Drawn")
    segmentation_node.GetSegmentation().AddEmptySegment("", "Segment_1")
    logic = InteractiveLogic(scene, FakeSession)
    try:
        logic.start(volume_node, segmentation_node).result(30)
        assert logic.measurements_table() is None and logic.submit_measurements() is None
    finally:
        logic.shutdown()
