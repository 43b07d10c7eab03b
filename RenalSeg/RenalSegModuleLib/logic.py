"""RenalSeg module logic: a CT volume node in, named kidney/tumor/cyst segments, a results table and STL files out.

Works without any widget (``process`` is the headless entry point) and receives the segmentation
engine through its constructor, so tests and the Python console can pass a stand-in. Usage from
Slicer's Python console::

    from RenalSegModuleLib.logic import RenalSegLogic, SegmentationSettings
    logic = RenalSegLogic(slicer.mrmlScene)
    result = logic.process(getNode("CT"), settings=SegmentationSettings(fast=True), progress=lambda f, m: print(f, m))
    logic.export_stl(result.segmentation_node, "/tmp/meshes", coordinates="LPS")
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from . import segmentation_io as io
from .results import fill_table, measure_rows
from .tasks import BackgroundTask
from .terminology import TERMINOLOGY_PATH, SegmentStyle, load_segment_styles

Progress = Callable[[float, str], None]
COORDINATE_SYSTEMS = ("RAS", "LPS")
REPORT_FORMATS = ("csv", "json", "report")  # ``renalseg export --format``: measurements, RENAL scores, the one-page report
SMOOTHING_FACTOR = 0.5  # Slicer's default closed-surface smoothing


class SegmentationEngine(Protocol):
    """What the logic needs from the engine (``RenalSegLib.inference.auto_segment`` has this signature): a KiTS
    label map, or an ``AutoSegmentation`` (the label map and the network's lesion probability map)."""

    def __call__(self, ct: sitk.Image, *, device: str, fast: bool, flip_tta: bool, min_lesion_probability: float, model_path,
                 progress: Progress | None, cancel: threading.Event | None) -> object: ...


class InferenceEngine:
    """The real engine: ``RenalSegLib.inference.auto_segment`` with the loaded model kept between runs."""

    def __init__(self):
        self._segmenter = None
        self._key = None

    def __call__(self, ct, *, device="auto", fast=False, flip_tta=False, min_lesion_probability=0.0, model_path=None,
                 progress=None, cancel=None):
        from RenalSegLib import inference  # torch/MONAI load here, on the worker thread, not at module import

        key = (str(model_path), device, fast, flip_tta)
        if self._key != key:
            self._segmenter, self._key = inference.load_segmenter(model_path, device, fast, flip_tta, progress=progress), key
        return inference.auto_segment(ct, device=device, fast=fast, model_path=model_path, segmenter=self._segmenter,
                                      progress=progress, cancel=cancel, min_lesion_probability=min_lesion_probability)


@dataclass
class SegmentationSettings:
    """User choices for one auto-segmentation run (saved in the scene by the widget's parameter node)."""

    device: str = "auto"  # auto | cpu | cuda | mps
    fast: bool = False
    # The CT's left-right mirror too (``renalseg segment --tta``): on 40 held-out synthetic cases better outlines and
    # fewer false lesions, but two lesions of 1 mL or more fewer found, at about twice the time (docs/accuracy.md).
    mirror: bool = False
    # Lesions whose mean network probability is under this become kidney (``renalseg segment --min-lesion-probability``;
    # 0 keeps all). At 0.7 on 40 held-out synthetic cases: 0.28 instead of 0.70 false lesions per case, but 56 instead
    # of 63 of the 76 lesions of 1 mL or more found (docs/accuracy.md).
    min_lesion_probability: float = 0.0
    model_path: str | None = None


@dataclass
class PreparedLabels:
    """Everything derived from the engine's output without touching MRML (computed on the worker thread)."""

    kits: sitk.Image
    segment_map: np.ndarray  # (k, j, i) values of labels.SEGMENTS: kidneys split by patient side
    measurements: list[dict]  # RenalSegLib.measure rows
    lesion_probability: np.ndarray | None = None  # (k, j, i) percent, the network's tumor-or-cyst probability


@dataclass
class SegmentationResult:
    segmentation_node: object
    segment_ids: dict[str, str]
    table_node: object | None
    measurements: list[dict] = field(default_factory=list)  # RenalSegLib.measure rows
    probability_node: object | None = None  # the lesion probability volume, when the engine gave one


class RenalSegLogic:
    """Auto segmentation of a volume node into RenalSeg's four named segments."""

    def __init__(self, scene, engine: SegmentationEngine | None = None, terminology_path: str | Path = TERMINOLOGY_PATH):
        self.scene = scene
        self.engine = engine or InferenceEngine()
        self.styles: dict[str, SegmentStyle] = load_segment_styles(terminology_path)

    # -- worker-thread part: no MRML access ----------------------------------------------------------

    def compute_labels(self, ct: sitk.Image, settings: SegmentationSettings | None = None, progress: Progress | None = None,
                       cancel: threading.Event | None = None) -> tuple[sitk.Image, sitk.Image | None]:
        """Run the engine on a CT image; returns the KiTS label map in the CT's geometry and the network's lesion
        probability map (None from an engine that gives labels only). Thread-safe."""
        settings = settings or SegmentationSettings()
        result = self.engine(ct, device=settings.device, fast=settings.fast, flip_tta=settings.mirror,
                             min_lesion_probability=settings.min_lesion_probability, model_path=settings.model_path,
                             progress=progress, cancel=cancel)
        kits, probability = (result.labels, result.lesion_probability) if hasattr(result, "labels") else (result, None)
        if kits.GetSize() != ct.GetSize():
            raise RuntimeError(f"engine returned labels of size {kits.GetSize()} for a CT of size {ct.GetSize()}")
        return kits, probability

    @staticmethod
    def prepare_labels(ct: sitk.Image, kits: sitk.Image, lesion_probability: sitk.Image | None = None) -> PreparedLabels:
        """Split the kidneys by patient side and measure every structure (with ``lesion_probability``, each
        lesion's mean network probability too). Thread-safe (no MRML).

        Both come from one ``RenalSegLib.measure.analyse`` pass (it splits the kidneys on the labels'
        bounding box only), so the Slicer segments and the table always agree.
        """
        from RenalSegLib.measure import analyse, measure

        percent = None if lesion_probability is None else sitk.GetArrayFromImage(lesion_probability)
        if not sitk.GetArrayViewFromImage(kits).any():
            return PreparedLabels(kits, np.zeros(tuple(reversed(kits.GetSize())), np.uint8), [], percent)
        anatomy = analyse(kits, ct)
        return PreparedLabels(kits, sitk.GetArrayFromImage(anatomy.segments), measure(kits, ct, anatomy, lesion_probability), percent)

    # -- main-thread part: MRML ------------------------------------------------------------------------

    def apply_labels(self, volume_node, kits: sitk.Image | PreparedLabels, segmentation_node=None, table_node=None) -> SegmentationResult:
        """Write a KiTS label map as the named segments and fill the results table (main thread); with the
        engine's lesion probability map, also show it as a volume (``segmentation_io.write_probability_volume``).

        A new segmentation node is created when none is given; in an existing one only RenalSeg's
        segments are replaced. If writing fails, a node created here is removed again. Pass the
        ``PreparedLabels`` computed on the worker thread to keep the main thread's share short.
        """
        prepared = kits if isinstance(kits, PreparedLabels) else self.prepare_labels(io.volume_to_image(volume_node), kits)
        segment_map, measurements = prepared.segment_map, prepared.measurements
        if segment_map.shape != tuple(reversed(volume_node.GetImageData().GetDimensions())):
            raise RuntimeError("the labels do not match the volume's grid (was the volume changed during segmentation?)")
        with io.removed_on_failure() as created:
            if segmentation_node is None:
                segmentation_node = io.new_segmentation_node(self.scene, volume_node)
                created.append(segmentation_node)
            else:
                io.attach_to_volume(segmentation_node, volume_node)
            segment_ids = io.write_segment_map(segmentation_node, segment_map, io.ijk_to_ras(volume_node), self.styles)
            table_node = self._results_table(volume_node, segmentation_node, table_node, created)
            fill_table(table_node, measurements)
            probability_node = None
            if prepared.lesion_probability is not None:  # last: on failure it removes a node it created itself
                probability_node = io.write_probability_volume(segmentation_node, volume_node, prepared.lesion_probability)
        return SegmentationResult(segmentation_node, segment_ids, table_node, measurements, probability_node)

    def update_measurements(self, volume_node, segmentation_node, table_node=None) -> tuple[object, list[dict]]:
        """Measure RenalSeg's segments as they are now (after clicks or Segment Editor edits) into the results
        table (a new one when none is given), with each lesion's network probability when the segmentation has
        its probability volume; returns (table node, measurement rows). Main thread."""
        kits, ct, probability = self._current_labels(volume_node, segmentation_node)
        rows = measure_rows(kits, ct, probability)
        with io.removed_on_failure() as created:
            table_node = self._results_table(volume_node, segmentation_node, table_node, created)
            fill_table(table_node, rows)
        return table_node, rows

    def export_report(self, volume_node, segmentation_node, folder: str | Path, progress: Progress | None = None) -> list[Path]:
        """Write the planning report of RenalSeg's segments as they are now into ``folder``/"NAME report" (NAME: the
        segmentation's): the measurements (CSV, and JSON with the RENAL nephrometry score of each tumor) and the one-page
        report (PNG, PDF, HTML), as ``renalseg export`` writes them, with each lesion's network probability when the
        segmentation has its probability volume. Returns the files written. Main thread (the report may render with VTK)."""
        from RenalSegLib.export import export_all

        kits, ct, probability = self._current_labels(volume_node, segmentation_node)
        return export_all(kits, ct, self.report_folder(segmentation_node, folder), REPORT_FORMATS, progress=progress,
                          title=f"{volume_node.GetName()}: {segmentation_node.GetName()}", lesion_probability=probability)

    @staticmethod
    def report_folder(segmentation_node, folder: str | Path) -> Path:
        """Where ``export_report`` writes: a folder named after the segmentation, beside its STL files."""
        return Path(folder) / f"{segmentation_node.GetName()} report"

    def _current_labels(self, volume_node, segmentation_node) -> tuple[sitk.Image, sitk.Image, sitk.Image | None]:
        """RenalSeg's four segments as a KiTS label map on the volume's grid, the CT, and the segmentation's lesion
        probability map (None without one). Main thread."""
        from RenalSegLib.labels import kits_labels_from_segments
        from RenalSegLib.volume import labels_like

        if volume_node is None or segmentation_node is None:
            raise ValueError("choose the CT and its segmentation")
        segmentation = segmentation_node.GetSegmentation()
        ids = {name: segmentation.GetSegmentIdBySegmentName(name) for name in self.styles}
        ct = io.volume_to_image(volume_node)
        kits = labels_like(kits_labels_from_segments(io.read_segment_map(segmentation_node, volume_node, ids)), ct)
        probability_node = segmentation_node.GetNodeReference(io.PROBABILITY_ROLE)
        return kits, ct, io.volume_to_image(probability_node) if probability_node is not None else None

    def _results_table(self, volume_node, segmentation_node, table_node, created: list):
        """``table_node``, or a new results table beside the volume (appended to ``created``), referenced from the
        segmentation (``io.MEASUREMENTS_ROLE``: RenalSeg Interactive refreshes it after clicks)."""
        if table_node is None:
            table_node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{segmentation_node.GetName()} measurements")
            created.append(table_node)
            io.place_beside(table_node, volume_node)
        segmentation_node.SetNodeReferenceID(io.MEASUREMENTS_ROLE, table_node.GetID())
        return table_node

    def segments_to_replace(self, segmentation_node) -> list[str]:
        """Names of RenalSeg's segments that hold voxels in ``segmentation_node`` (a re-run replaces them)."""
        if segmentation_node is None:
            return []
        segmentation = segmentation_node.GetSegmentation()
        names = []
        for name in self.styles:
            segment_id = segmentation.GetSegmentIdBySegmentName(name)
            labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id) if segment_id else None
            if labelmap is not None and _holds_value(labelmap, segmentation.GetSegment(segment_id).GetLabelValue()):
                names.append(name)
        return names

    def process(self, volume_node, segmentation_node=None, settings: SegmentationSettings | None = None,
                progress: Progress | None = None, cancel: threading.Event | None = None, table_node=None) -> SegmentationResult:
        """Headless auto segmentation in the calling thread: volume node -> engine -> segments + table."""
        ct = io.volume_to_image(volume_node)
        prepared = self.prepare_labels(ct, *self.compute_labels(ct, settings, progress, cancel))
        return self.apply_labels(volume_node, prepared, segmentation_node, table_node)

    def start_process(self, volume_node, settings: SegmentationSettings | None = None) -> BackgroundTask:
        """Start the engine on a worker thread (the CT is copied here, on the main thread).

        The caller polls the returned task and hands its result (``PreparedLabels``) to ``apply_labels``.
        """
        ct = io.volume_to_image(volume_node)

        def work(progress, cancel):
            kits, probability = self.compute_labels(ct, settings, progress, cancel)
            progress(1.0, "measuring")
            return self.prepare_labels(ct, kits, probability)

        return BackgroundTask(work).start()

    # -- export ----------------------------------------------------------------------------------------

    def export_stl(self, segmentation_node, folder: str | Path, coordinates: str = "RAS", smoothing: bool = True,
                   segment_names: Sequence[str] | None = None) -> list[Path]:
        """Write one STL per segment with Slicer's closed-surface conversion; returns the files written.

        ``coordinates`` is "RAS" (Slicer) or "LPS" (DICOM; what most printing and planning software expects).
        """
        import slicer
        import vtk

        if coordinates not in COORDINATE_SYSTEMS:
            raise ValueError(f"coordinates must be one of {COORDINATE_SYSTEMS}, got {coordinates!r}")
        segmentation = segmentation_node.GetSegmentation()
        names = list(segment_names) if segment_names is not None else [s for s in self.styles if segmentation.GetSegmentIdBySegmentName(s)]
        ids = vtk.vtkStringArray()
        for name in names:
            segment_id = segmentation.GetSegmentIdBySegmentName(name)
            if not segment_id:
                raise ValueError(f"segment {name!r} not found in {segmentation_node.GetName()}")
            ids.InsertNextValue(segment_id)
        factor = f"{SMOOTHING_FACTOR if smoothing else 0.0}"
        if segmentation.GetConversionParameter("Smoothing factor") != factor:
            segmentation.SetConversionParameter("Smoothing factor", factor)
            segmentation_node.RemoveClosedSurfaceRepresentation()  # force re-conversion with the new smoothing
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsClosedSurfaceRepresentationToFiles(
                str(folder), segmentation_node, ids, "STL", coordinates == "LPS"):
            raise RuntimeError(f"STL export to {folder} failed")
        return [folder / f"{segmentation_node.GetName()}_{name}.stl" for name in names]


def _holds_value(labelmap, value: int) -> bool:
    """Whether a (possibly shared) labelmap layer holds voxels of one segment's label value."""
    from vtk.util import numpy_support

    if labelmap.GetPointData().GetScalars() is None:
        return False
    return bool((numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()) == value).any())
