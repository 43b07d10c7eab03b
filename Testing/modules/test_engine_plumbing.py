"""The module logic with the real engine code (untrained small networks): plumbing and geometry, not accuracy."""

from __future__ import annotations


import numpy as np
import pytest

torch = pytest.importorskip("torch")

from RenalSegInteractiveLib.logic import EngineSessions, InteractiveLogic  # noqa: E402
from RenalSegLib import labels, volume  # noqa: E402
from RenalSegModuleLib import segmentation_io as io  # noqa: E402
from RenalSegModuleLib.logic import InferenceEngine, RenalSegLogic, SegmentationSettings  # noqa: E402


def test_auto_segmentation_through_the_real_engine_keeps_the_volume_grid(scene, oblique_phantom, untrained_model):
    volume_node = io.add_volume_node(scene, oblique_phantom.ct)
    engine = InferenceEngine()
    logic = RenalSegLogic(scene, engine)
    settings = SegmentationSettings(device="cpu", fast=True, model_path=str(untrained_model))
    messages = []
    result = logic.process(volume_node, settings=settings, progress=lambda f, m: messages.append(m))
    assert messages[0] == "loading model" and messages[-1] == "done"
    segment_map = io.read_segment_map(result.segmentation_node, volume_node, result.segment_ids)
    assert segment_map.shape == tuple(reversed(oblique_phantom.ct.GetSize()))
    assert result.segmentation_node.GetSegmentation().GetNumberOfSegments() == 4
    loaded = engine._segmenter
    logic.process(volume_node, result.segmentation_node, settings=settings)
    assert engine._segmenter is loaded and not loaded.flip_tta  # the model is loaded once and reused
    logic.process(volume_node, result.segmentation_node, settings=SegmentationSettings(device="cpu", mirror=True, model_path=str(untrained_model)))
    assert engine._segmenter.flip_tta  # the mirror is a setting of the loaded segmenter


def test_the_minimum_lesion_probability_reaches_auto_segment(scene, oblique_phantom, untrained_model, monkeypatch):
    from RenalSegLib import inference
    from RenalSegLib.errors import RenalSegError

    minimums = []
    original = inference.auto_segment

    def spy(ct, **kwargs):
        minimums.append(kwargs["min_lesion_probability"])
        return original(ct, **kwargs)

    monkeypatch.setattr(inference, "auto_segment", spy)
    volume_node = io.add_volume_node(scene, oblique_phantom.ct)
    logic = RenalSegLogic(scene, InferenceEngine())
    for minimum in (0.0, 0.7):
        logic.process(volume_node, settings=SegmentationSettings(device="cpu", fast=True, min_lesion_probability=minimum,
                                                                 model_path=str(untrained_model)))
    assert minimums == [0.0, 0.7]
    with pytest.raises(RenalSegError, match="0-1"):  # the engine refuses a value outside 0-1, as the CLI does
        logic.process(volume_node, settings=SegmentationSettings(device="cpu", fast=True, min_lesion_probability=70,
                                                                 model_path=str(untrained_model)))


def test_refinement_through_the_real_session_changes_only_the_crop(scene, small_phantom, untrained_model):
    from module_fakes import FakeEngine

    volume_node = io.add_volume_node(scene, small_phantom.ct)
    result = RenalSegLogic(scene, FakeEngine(small_phantom.labels)).process(volume_node)
    sessions = EngineSessions()
    logic = InteractiveLogic(scene, sessions, device="cpu", model_path=str(untrained_model))
    try:
        logic.warm_up().result(120)
        logic.start(volume_node, result.segmentation_node).result(120)
        before = logic.read_kits_labels()
        tumor_lps = volume.index_to_physical(small_phantom.ct, np.argwhere(before == labels.TUMOR)[:, ::-1]).mean(0)
        box = logic.click(volume.lps_to_ras(tumor_lps), label=labels.TUMOR, timeout=120)
        after = logic.read_kits_labels()
        np.testing.assert_array_equal(after, logic._session.labels)  # the segments hold exactly the session's labels
        outside = np.ones(after.shape, bool)
        outside[box] = False
        np.testing.assert_array_equal(after[outside], before[outside])
        assert logic.undo(timeout=120)
        np.testing.assert_array_equal(logic.read_kits_labels(), before)
    finally:
        logic.shutdown()


def test_warm_up_says_what_a_first_time_export_is_doing_while_it_runs(scene, untrained_model, tmp_path, monkeypatch):
    """On a CPU without bf16 the first load exports the networks (about 30 s for the bundled model): while it
    runs on the worker, the logic's notice says so (the widget shows it); after it, the notice is empty."""
    from RenalSegLib import device, onnx_cpu

    monkeypatch.setenv("RENALSEG_CACHE", str(tmp_path / "cache"))  # nothing exported yet
    monkeypatch.setattr(device, "bf16_supported", lambda: False)
    sessions = EngineSessions()
    logic = InteractiveLogic(scene, sessions, device="cpu", model_path=str(untrained_model))
    during, export = [], onnx_cpu.export
    monkeypatch.setattr(onnx_cpu, "export", lambda *args: during.append(logic.loading_notice()) or export(*args))
    try:
        assert logic.loading_notice() == ""
        logic.warm_up().result(120)
    finally:
        logic.shutdown()
    assert during and all("once per model" in notice for notice in during)
    assert logic.loading_notice() == ""


def test_auto_segmentation_progress_says_when_the_first_load_exports_the_networks(scene, oblique_phantom, untrained_model, tmp_path, monkeypatch):
    """The RenalSeg module's engine loads the model itself: its progress also carries the one-time export's message."""
    from RenalSegLib import device

    monkeypatch.setenv("RENALSEG_CACHE", str(tmp_path / "cache"))  # nothing exported yet
    monkeypatch.setattr(device, "bf16_supported", lambda: False)
    messages = []
    settings = SegmentationSettings(device="cpu", fast=True, model_path=str(untrained_model))
    RenalSegLogic(scene, InferenceEngine()).process(io.add_volume_node(scene, oblique_phantom.ct), settings=settings,
                                                    progress=lambda f, m: messages.append(m))
    assert messages[0] == "loading model" and any("once per model" in m for m in messages[1:3])
