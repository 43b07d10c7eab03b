"""Click-to-refine logic: markups clicks (RAS) -> the engine's refinement session -> the changed box of the segments.

All inference runs on one persistent worker thread (models, cuDNN plans and the session's preprocessed
image stay on it); MRML is only touched by the ``apply_*`` methods, on the main thread. Each write
saves a segmentation undo state first (``vtkSegmentationHistory``, the mechanism behind the Segment
Editor's undo), and only the (k, j, i) box the session reports as changed is written back. A segmentation
made by RenalSeg keeps its results table: ``submit_measurements`` re-measures the refined labels on the
worker, and the next click cancels it. Usage::

    logic = InteractiveLogic(slicer.mrmlScene)
    logic.start(getNode("CT"), getNode("CT RenalSeg"))
    box = logic.click(ras_point, positive=True, label=labels.TUMOR)   # blocking; the widget uses submit_click
    logic.undo()
    logic.apply_measurements(logic.submit_measurements().result())   # the results table follows the clicks
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from RenalSegLib import labels, volume
from RenalSegLib.errors import Cancelled
from RenalSegModuleLib import segmentation_io as io
from RenalSegModuleLib.results import fill_table, measure_rows
from RenalSegModuleLib.tasks import PersistentWorker
from RenalSegModuleLib.terminology import SegmentStyle, load_segment_styles

Box = tuple[slice, slice, slice]
KIDNEY_SEGMENTS = ("Right kidney", "Left kidney")
CLICK_COLORS = {True: (0.2, 0.85, 0.2), False: (0.9, 0.2, 0.2)}
MAX_UNDO_STATES = 30


class RefinementSession(Protocol):
    labels: np.ndarray
    locked_labels: set[int]

    def add_click(self, point_lps, positive: bool = True, label: int = labels.TUMOR) -> Box: ...
    @property
    def last_change(self) -> tuple[Box, np.ndarray, np.ndarray] | None: ...
    def undo(self) -> Box | None: ...
    def redo(self) -> Box | None: ...
    def reset(self) -> Box | None: ...


class SessionFactory(Protocol):
    def __call__(self, ct: sitk.Image, labels: sitk.Image, *, device: str, model_path, locked_labels) -> RefinementSession: ...


class EngineSessions:
    """The real engine's sessions (``RenalSegLib.interactive.RefinementSession``), sharing one loaded model.

    Everything here runs on the logic's worker thread: the model is loaded (and warmed up) there and
    stays there, and each new volume only adds its own preprocessing.
    """

    def __init__(self):
        self._segmenter = None
        self._key = None
        self.notice = ""  # what a slow model load is doing now (a first-time export), for the widget; else ""

    def segmenter(self, device: str = "auto", model_path=None):
        from RenalSegLib.inference import Segmenter  # torch/MONAI load here, on the worker thread

        key = (device, str(model_path))
        if self._key != key:
            try:
                self._segmenter = Segmenter.load(model_path, device, notify=self._notify)
            finally:
                self.notice = ""
            self._key = key
        return self._segmenter

    def _notify(self, message: str) -> None:
        self.notice = message

    def warm_up(self, device: str = "auto", model_path=None) -> None:
        """Load the model now, so that the first click does not wait for it."""
        segmenter = self.segmenter(device, model_path)
        if hasattr(segmenter, "warm_up"):  # a dummy forward pass picks the GPU kernels on this thread
            segmenter.warm_up()

    def __call__(self, ct, kits, *, device="auto", model_path=None, locked_labels=()):
        from RenalSegLib.interactive import RefinementSession as EngineSession

        return EngineSession(ct, kits, device=device, model_path=model_path, segmenter=self.segmenter(device, model_path),
                             locked_labels=locked_labels)


@dataclass
class ClickResult:
    box: Box
    labels: np.ndarray  # the session's (k, j, i) KiTS labels inside box, copied on the worker thread
    change: labels.ClassChange | None = None  # a click's change (undo, redo and reset leave it None)


class InteractiveLogic:
    """Refines a segmentation of one volume with positive/negative clicks, with undo."""

    def __init__(self, scene, session_factory: SessionFactory | None = None, styles: Mapping[str, SegmentStyle] | None = None,
                 worker: PersistentWorker | None = None, device: str = "auto", model_path=None):
        self.scene = scene
        self.session_factory = session_factory or EngineSessions()
        self.styles = dict(styles or load_segment_styles())
        self.worker = worker or PersistentWorker()
        self.device, self.model_path = device, model_path
        self.volume_node = self.segmentation_node = None
        self.class_segments: dict[int, str] = {labels.TUMOR: "Renal tumor", labels.CYST: "Renal cyst"}
        self._session: RefinementSession | None = None
        self.locked_labels: frozenset[int] = frozenset()  # KiTS classes no click may change
        self._sessions: dict[tuple[str, str], RefinementSession] = {}  # kept per volume: preprocessed image reused
        self._matrix = None
        self._midline_x = 0.0
        self._ct: sitk.Image | None = None
        self._probability: sitk.Image | None = None  # the auto segmentation's lesion probability, for the table
        self._measuring = threading.Event()  # set: the measurement in flight gives way to a newer change
        self._shape_cache: dict = {}  # measure's shapes of unchanged structures, per volume
        self.history = None
        self._undo_steps: list[bool] = []
        self._redo_steps: list[bool] = []

    # -- set-up ------------------------------------------------------------------------------------

    def warm_up(self) -> Future | None:
        """Load the model on the worker thread (call when the module opens); None if the factory has nothing to warm."""
        warm = getattr(self.session_factory, "warm_up", None)
        return None if warm is None else self.worker.submit(warm, self.device, self.model_path)

    def loading_notice(self) -> str:
        """What the model load on the worker is doing now, when it is slow (a first-time export); else ""."""
        return getattr(self.session_factory, "notice", "")

    def start(self, volume_node, segmentation_node, target_segments: Mapping[int, str] | None = None) -> Future:
        """Begin refining ``segmentation_node`` (made by RenalSeg or drawn by hand) on ``volume_node``.

        ``target_segments`` maps a KiTS class (TUMOR, CYST) to the segment that holds it, for
        hand-drawn segmentations with other names. The session is built on the worker thread and
        reused while the segmentation is only changed through this logic.
        """
        import slicer

        self._measuring.set()
        self.class_segments = {labels.TUMOR: "Renal tumor", labels.CYST: "Renal cyst", **(target_segments or {})}
        self.volume_node, self.segmentation_node = volume_node, segmentation_node
        if segmentation_node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is None:
            io.attach_to_volume(segmentation_node, volume_node)
        self._matrix = io.ijk_to_ras(volume_node)
        self._ct = io.volume_to_image(volume_node)
        self._midline_x = labels.body_midline_x(self._ct)
        probability_node = segmentation_node.GetNodeReference(io.PROBABILITY_ROLE)
        self._probability = None if probability_node is None else io.volume_to_image(probability_node)
        self._shape_cache = {}
        self.history = slicer.vtkSegmentationHistory()
        self.history.SetMaximumNumberOfStates(MAX_UNDO_STATES)
        self.history.SetSegmentation(segmentation_node.GetSegmentation())
        self._undo_steps, self._redo_steps = [], []  # per click: whether it saved a history state
        key = (volume_node.GetID(), segmentation_node.GetID())
        current = self.read_kits_labels()
        cached = self._sessions.get(key)
        if cached is not None and np.array_equal(cached.labels, current):  # not edited elsewhere since: reuse
            return self.worker.submit(self._use_session, cached)
        return self.worker.submit(self._make_session, key, self._ct, volume.labels_like(current, self._ct))

    def _make_session(self, key, ct, kits):
        session = self.session_factory(ct, kits, device=self.device, model_path=self.model_path, locked_labels=self.locked_labels)
        self._sessions = {key: session}  # one volume cached: bounded memory
        return self._use_session(session)

    def _use_session(self, session):
        session.locked_labels = set(self.locked_labels)
        self._session = session
        return session

    def set_locked_labels(self, locked) -> Future:
        """Keep these KiTS classes unchanged (their voxels stay, no voxel becomes one), from the next click on.

        Applied on the worker thread, between clicks: a click already queued runs with the locks it was
        queued under.
        """
        self.locked_labels = frozenset(int(label) for label in locked)
        return self.worker.submit(lambda: None if self._session is None else self._use_session(self._session))

    def read_kits_labels(self) -> np.ndarray:
        """The segmentation's current content as a KiTS label array on the volume's grid (main thread)."""
        segmentation = self.segmentation_node.GetSegmentation()
        values = {name: labels.KIDNEY for name in KIDNEY_SEGMENTS}
        values.update({self.class_segments[c]: c for c in (labels.CYST, labels.TUMOR)})  # KiTS: tumor over cyst over kidney
        ids = {name: segmentation.GetSegmentIdBySegmentName(name) for name in values}
        return io.read_segment_map(self.segmentation_node, self.volume_node, {n: i for n, i in ids.items() if i}, values)

    # -- clicks ------------------------------------------------------------------------------------

    def click_point_lps(self, markups_node, index: int) -> np.ndarray:
        """LPS position (in the volume's own frame) of a markups control point placed in world RAS."""
        import slicer
        import vtk

        world = np.array(markups_node.GetNthControlPointPositionWorld(index), dtype=float)
        parent = self.volume_node.GetParentTransformNode()
        if parent is not None:  # the volume is transformed: clicks are in world, the session in the volume's frame
            to_volume = vtk.vtkGeneralTransform()
            slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, to_volume)
            world = np.array(to_volume.TransformPoint(world))
        return volume.ras_to_lps(world)

    def submit_click(self, point_ras, positive: bool = True, label: int = labels.TUMOR) -> Future:
        """Queue a click on the worker thread; its future yields a ``ClickResult`` for ``apply_click``."""
        point_lps = volume.ras_to_lps(np.asarray(point_ras, dtype=float))
        return self._submit_change(self._run_click, point_lps, positive, label)

    def submit_markups_click(self, markups_node, index: int, positive: bool, label: int = labels.TUMOR) -> Future:
        point_lps = self.click_point_lps(markups_node, index)
        return self._submit_change(self._run_click, point_lps, positive, label)

    def _submit_change(self, function, *args) -> Future:
        """Queue work that changes the labels on the worker; a measurement in flight gives way to it."""
        self._measuring.set()
        return self.worker.submit(function, *args)

    def _run_click(self, point_lps, positive, label) -> ClickResult:
        box = self._session.add_click(point_lps, positive=positive, label=label)
        return ClickResult(box, np.array(self._session.labels[box]), labels.ClassChange.of_last_change(self._session))

    def _run_history(self, action: str) -> ClickResult | None:
        box = getattr(self._session, action)()
        return None if box is None else ClickResult(box, np.array(self._session.labels[box]))

    def apply_click(self, result: ClickResult) -> None:
        """Write the changed box into the segments, saving an undo state first if anything changes (main thread)."""
        saved = self._write(result, before_write=self._save_state)  # may reset self._undo_steps: append afterwards
        self._undo_steps.append(saved)
        self._redo_steps.clear()

    def _save_state(self) -> None:
        # vtkSegmentationHistory drops its oldest state when full, which would misalign it with the session's
        # undo stack; so before it fills up, older steps are handed to the session (their undo writes the
        # session's labels back) and the history starts afresh. One slot stays free for the redo state that
        # RestorePreviousState saves.
        if self._undo_steps.count(True) + 2 > self.history.GetMaximumNumberOfStates():
            self.history.RemoveAllStates()
            self._undo_steps[:] = [False] * len(self._undo_steps)
        self.history.SaveState()

    def _write(self, result: ClickResult, before_write=None) -> bool:
        box = tuple(result.box)
        crop = sitk.GetImageFromArray(result.labels)  # the box as an image, so left/right come from physical x
        start = [int(s.start) for s in reversed(box)]
        crop.SetSpacing(self._ct.GetSpacing())
        crop.SetDirection(self._ct.GetDirection())
        crop.SetOrigin(self._ct.TransformIndexToPhysicalPoint(start))
        sides = sitk.GetArrayFromImage(labels.segment_map(crop, self._midline_x))  # a copy: a view would outlive its image
        names = {segment.value: segment.name for segment in labels.SEGMENTS}
        targets = {names[1]: sides == 1, names[2]: sides == 2,
                   self.class_segments[labels.TUMOR]: result.labels == labels.TUMOR, self.class_segments[labels.CYST]: result.labels == labels.CYST}
        ids = io.ensure_segments(self.segmentation_node, {n: self.styles[n] for n in targets if n in self.styles})
        segmentation = self.segmentation_node.GetSegmentation()
        for name in targets:
            ids.setdefault(name, segmentation.GetSegmentIdBySegmentName(name) or segmentation.AddEmptySegment("", name))
        shape = tuple(reversed(self._ct.GetSize()))
        changed = io.write_masks(self.segmentation_node, {ids[n]: mask for n, mask in targets.items()}, self._matrix, box, shape,
                                 before_write)
        self._remember_session()
        return changed

    def _remember_session(self) -> None:
        key = (self.volume_node.GetID(), self.segmentation_node.GetID())
        self._sessions = {key: self._session}  # one volume cached: bounded memory

    def click(self, point_ras, positive: bool = True, label: int = labels.TUMOR, timeout: float | None = 60) -> Box:
        """Blocking click: refine and write back (headless use, tests, the self-test)."""
        result = self.submit_click(point_ras, positive, label).result(timeout)
        self.apply_click(result)
        return result.box

    # -- undo / redo / reset -----------------------------------------------------------------------

    def undo(self, timeout: float | None = 60) -> bool:
        """Undo the last click: step the session back and restore the segmentation's previous undo state.

        Session and segmentation history move in lockstep: a click that changed nothing saved no
        state; when the history no longer holds a state (its depth is bounded), the session's
        restored labels are written back instead.
        """
        if not self._undo_steps:
            return False
        saved = self._undo_steps.pop()
        result = self._submit_change(self._run_history, "undo").result(timeout)
        if saved and self.history.IsRestorePreviousStateAvailable():
            self.history.RestorePreviousState()
        elif result is not None:
            self._write(result)
        self._redo_steps.append(saved)
        self._remember_session()
        return True

    def redo(self, timeout: float | None = 60) -> bool:
        if not self._redo_steps:
            return False
        saved = self._redo_steps.pop()
        result = self._submit_change(self._run_history, "redo").result(timeout)
        if saved and self.history.IsRestoreNextStateAvailable():
            self.history.RestoreNextState()
        elif result is not None:
            self._write(result)
        self._undo_steps.append(saved)
        self._remember_session()
        return True

    def reset(self, timeout: float | None = 60) -> None:
        """Drop all clicks: the session returns to its starting labels, written back as one undoable step."""
        result = self._submit_change(self._run_history, "reset").result(timeout)
        if result is not None:
            self.apply_click(result)

    # -- measurements ----------------------------------------------------------------------------------

    def measurements_table(self):
        """The results table RenalSeg filled for this segmentation (``io.MEASUREMENTS_ROLE``), else None."""
        return None if self.segmentation_node is None else self.segmentation_node.GetNodeReference(io.MEASUREMENTS_ROLE)

    def submit_measurements(self) -> Future | None:
        """Measure the refined labels on the worker thread (``RenalSegLib.measure``, with the auto segmentation's
        lesion probability); the future yields the rows for ``apply_measurements``, or None when a click, undo,
        redo or reset came first (it cancels the measurement, so that clicks never wait long behind it).
        None without a results table (a hand-drawn segmentation)."""
        if self.measurements_table() is None:
            return None
        self._measuring.set()
        self._measuring = cancel = threading.Event()
        return self.worker.submit(self._run_measurements, self._ct, self._probability, self._shape_cache, cancel)

    def _run_measurements(self, ct: sitk.Image, probability: sitk.Image | None, cache: dict,
                          cancel: threading.Event) -> list[dict] | None:
        kits = volume.labels_like(self._session.labels, ct)  # the session of this volume: start() queued it on this worker first
        try:
            return measure_rows(kits, ct, probability, cancel=cancel, cache=cache)
        except Cancelled:
            return None

    def apply_measurements(self, rows: list[dict] | None) -> bool:
        """Fill the results table with measurement rows (main thread); False, and nothing changed, for None."""
        table = self.measurements_table()
        if rows is None or table is None:
            return False
        fill_table(table, rows)
        return True

    def shutdown(self) -> None:
        self._measuring.set()
        self.worker.shutdown()
