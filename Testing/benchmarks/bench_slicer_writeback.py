"""Slicer write-back cost on a KiTS-size grid (512x512x300): auto-segmentation result, one click's box write, undo.

Prints figures (median of repeats); the baseline is writing the click by replacing all four segments
over the whole volume in the same process. Needs slicer-core. Run: python Testing/benchmarks/bench_slicer_writeback.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "RenalSeg")]

import slicer  # noqa: E402

from RenalSegModuleLib import segmentation_io as io  # noqa: E402
from RenalSegModuleLib.terminology import load_segment_styles  # noqa: E402

SHAPE = (300, 512, 512)  # (k, j, i)
SPACING = (0.8, 0.8, 1.5)  # (i, j, k) mm


def _segment_map() -> np.ndarray:
    """Two kidney ellipsoids (values 1, 2), a tumor (3) and a cyst (4), drawn inside their bounding boxes only."""
    out = np.zeros(SHAPE, np.uint8)

    def ellipsoid(value, centre_mm, axes_mm):
        centre = np.array(centre_mm) / np.array(SPACING)[::-1]
        half = np.array(axes_mm) / np.array(SPACING)[::-1]
        lo, hi = np.floor(centre - half).astype(int), np.ceil(centre + half).astype(int) + 1
        k, j, i = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inside = ((k - centre[0]) / half[0]) ** 2 + ((j - centre[1]) / half[1]) ** 2 + ((i - centre[2]) / half[2]) ** 2 <= 1
        region = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        region[inside] = value

    ellipsoid(1, (225, 230, 150), (60, 30, 25))
    ellipsoid(2, (225, 230, 260), (60, 30, 25))
    ellipsoid(3, (240, 230, 128), (15, 15, 15))
    ellipsoid(4, (190, 230, 260), (10, 10, 10))
    return out


def _median_ms(action, repeats=5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    matrix = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    volume_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    slicer.util.updateVolumeFromArray(volume_node, np.zeros(SHAPE, np.int16))
    segmentation_node = io.new_segmentation_node(scene, volume_node)
    styles = load_segment_styles()
    segment_map = _segment_map()
    full_ms = _median_ms(lambda: io.write_segment_map(segmentation_node, segment_map, matrix, styles), repeats=3)
    ids = io.ensure_segments(segmentation_node, styles)
    box = (slice(128, 192), slice(255, 319), slice(128, 192))  # a 64^3 click crop over the tumor and right kidney
    clicked = segment_map.copy()
    clicked[box][(clicked[box] == 1) & (np.indices(clicked[box].shape).sum(0) % 7 == 0)] = 3
    assert not np.array_equal(clicked, segment_map), "the benchmark click must change the box"
    values = {name: n + 1 for n, name in enumerate(styles)}
    masks = {ids[name]: clicked[box] == value for name, value in values.items()}
    undo_masks = {ids[name]: segment_map[box] == value for name, value in values.items()}
    state = {"clicked": False}

    def toggle():  # alternate click / its reversal so that every repeat really changes the box
        state["clicked"] = not state["clicked"]
        io.write_masks(segmentation_node, masks if state["clicked"] else undo_masks, matrix, box, SHAPE)

    box_ms = _median_ms(toggle, repeats=6)
    whole = {ids[name]: clicked == value for name, value in values.items()}
    baseline_ms = _median_ms(lambda: io.write_masks(segmentation_node, whole, matrix, None, SHAPE), repeats=3)
    io.write_masks(segmentation_node, {ids[name]: segment_map == value for name, value in values.items()}, matrix, None, SHAPE)
    history = slicer.vtkSegmentationHistory()
    history.SetMaximumNumberOfStates(10)
    history.SetSegmentation(segmentation_node.GetSegmentation())

    def click_with_undo():
        history.SaveState()
        io.write_masks(segmentation_node, masks, matrix, box, SHAPE)
        assert history.RestorePreviousState()

    undo_ms = _median_ms(click_with_undo)
    import SimpleITK as sitk

    from RenalSegLib.labels import kits_labels_from_segments
    from RenalSegModuleLib.logic import RenalSegLogic

    kits = sitk.GetImageFromArray(kits_labels_from_segments(segment_map))
    kits.CopyInformation(io.volume_to_image(volume_node))
    logic = RenalSegLogic(scene, engine=lambda *a, **k: None)
    start = time.perf_counter()
    prepared = logic.prepare_labels(io.volume_to_image(volume_node), kits)
    prepare_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    logic.apply_labels(volume_node, prepared)
    apply_ms = (time.perf_counter() - start) * 1000
    print(f"grid {SHAPE[::-1]} voxels, spacing {SPACING} mm")
    print(f"worker thread after inference (left/right split, measurements): {prepare_ms:8.1f} ms")
    print(f"main thread after inference (4 segments written, table): {apply_ms:8.1f} ms")
    print(f"auto-segmentation write (4 segments, whole volume): {full_ms:8.1f} ms")
    print(f"click write-back, 64^3 box (patch into segment extents): {box_ms:8.1f} ms")
    print(f"baseline: same click by rewriting the 4 whole segments: {baseline_ms:8.1f} ms "
          f"(box write is {baseline_ms / box_ms:.1f}x faster)")
    print(f"click write-back + save undo state + undo: {undo_ms:8.1f} ms")


if __name__ == "__main__":
    main()
