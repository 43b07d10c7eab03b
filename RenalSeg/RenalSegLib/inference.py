"""One-click auto segmentation: coarse kidney localisation, fine segmentation per kidney, postprocessing.

Data flow: CT (any grid) -> 4 mm copy -> coarse network -> kidney regions -> for each region a 1.5 mm
crop aligned with the CT -> fine network (zero click guidance) -> class probabilities resampled onto the
CT's own voxels inside the region -> hierarchical decision (``decide_labels``) -> postprocessing -> KiTS
label map with the CT's geometry.
Only the kidney regions are ever processed at high resolution, which bounds time and memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from . import labels as L
from .errors import Cancelled, RenalSegError  # noqa: F401  (Cancelled: callers catch inference.Cancelled)
from .network import minimum_input_multiple
from .preprocess import LEFT_RIGHT_AXIS, grid_for_image, grid_for_region, index_box_covering, normalize_ct, resample_onto
from .volume import labels_like, voxel_ml

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
KIDNEY_MARGIN_MM = 20.0  # context added around each coarse kidney region before the fine stage (40: far worse)
MIN_KIDNEY_ML = 15.0  # coarse components smaller than this are not kidneys
# A kept kidney-and-masses component needs this much kidney tissue. The 791 kidneys of the 400 KiTS23
# label maps hold at least 45 mL each, even beside a large tumor (84 mL beside 2.6 L); a "kidney" of a few
# mL next to a large "mass" is another organ (the real upper-abdominal test series: 10-14 mL of kidney beside
# about 110 mL of tumor, in the liver). A kidney cut down to less than this by the field of view is dropped too.
MIN_KIDNEY_TISSUE_ML = 30.0
MIN_LESION_ML = 1.0  # lesion components smaller than this are noise (tuned with MASS_SHARE, below)
MAX_KIDNEYS = 2  # kidney-and-masses components kept, those with the most kidney voxels
# A foreground voxel is a mass when tumor + cyst hold this share of its foreground probability (argmax
# needs about 0.5, and splits a mass's probability between tumor and cyst). Tuned with MIN_LESION_ML on 10
# training-split synthetic cases (23 lesions), postprocessed: argmax with 0.5 mL, the previous rule, gave
# masses Dice 0.31, lesion recall 0.61, 3.1 false-positive lesions per case; share 0.3 with 0.5 / 1 / 2 mL
# 0.35 / 0.36 / 0.35, recall 0.87 / 0.83 / 0.74, FP 3.0 / 2.3 / 1.6; share 0.4 with 1 mL 0.35, 0.74, 2.0. With the
# bundled model on 34 tune cases 0.5 mL found more small lesions for far more false ones (lesion F1 0.494 vs 0.511;
# docs/accuracy.md, "The smallest lesion kept").
MASS_SHARE = 0.3
# Bosniak 2019: a homogeneous renal mass of simple-fluid attenuation (-9 to 20 HU) on contrast-enhanced CT is a
# benign cyst. A mass the network calls tumor becomes cyst when its core (the mass less its one-voxel rim, where
# partial volume with kidney lies) has a median in FLUID_HU and a robust SD (interquartile range / 1.349, blind to
# the kidney voxels a leaky outline adds) up to FLUID_SD_HU ("homogeneous"; tumors with fluid-like necrosis or fat
# vary far more). See ``fluid_masses_as_cysts``.
FLUID_HU = (-9.0, 20.0)
FLUID_SD_HU = 30.0


@dataclass
class Segmenter:
    """Loaded networks and settings; reuse one instance to segment many CTs without reloading."""

    networks: dict
    device: object
    fast: bool = False
    flip_tta: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(
        cls, model_path=None, device: str = "auto", fast: bool = False, flip_tta: bool = False, notify: Callable[[str], None] | None = None
    ) -> "Segmenter":
        """Load a model file (None: the bundled model); ``notify(message)`` hears of a slow first-time step
        (``network.load_model``)."""
        from .device import resolve_device
        from .network import load_model

        torch_device = resolve_device(device)
        return cls(load_model(model_path, torch_device, notify=notify), torch_device, fast, flip_tta)

    # -- stages -------------------------------------------------------------------------------------

    def predict(self, name: str, image: np.ndarray, guidance: np.ndarray | None = None) -> np.ndarray:
        """Softmax probabilities (classes, k, j, i) of network ``name`` on a normalised image."""
        import torch
        from monai.inferers import sliding_window_inference

        module, config = self.networks[name]
        x = torch.zeros((1, config.in_channels, *image.shape), dtype=torch.float32)
        x[0, 0] = torch.from_numpy(image)
        if guidance is not None:
            x[0, 1:] = torch.from_numpy(guidance)
        x = x.to(self.device)
        # Windows of the training patch size: the networks' instance norms see the statistics they were
        # trained with (on 6 held-out synthetic cases, masses Dice 0.62 with 64^3 windows, 0.45 with 96^3).
        window = [min(p, _round_up(s, minimum_input_multiple(config))) for p, s in zip(config.patch_size, image.shape)]

        # One window per call on a CPU: two per call are no faster, in eager mode or through ONNX Runtime
        # (2-core AVX2, 18 fine windows of 64^3: 5.7 s either way), and hold less memory.
        per_call = 1 if self.device.type == "cpu" else 2

        def windows(inputs):
            return sliding_window_inference(inputs, window, per_call, module, overlap=0.125 if self.fast else 0.25, mode="gaussian", padding_mode="constant")

        with torch.inference_mode(), _autocast(self.device):
            logits = windows(x)
            if self.flip_tta and not self.fast:
                # The left-right mirror only: the networks trained with it (training.patch_transforms). Mirroring all
                # three axes cost 0.03 masses Dice on 40 held-out synthetic cases: the other mirrors are unseen anatomy.
                mirror = (2 + LEFT_RIGHT_AXIS,)  # past the batch and channel axes
                logits = logits + torch.flip(windows(torch.flip(x, mirror)), mirror)
        return torch.softmax(logits.float(), 1)[0].cpu().numpy()

    def kidney_regions(self, ct: sitk.Image) -> list[tuple[np.ndarray, np.ndarray]]:
        """(start, stop) index boxes (i, j, k) of the kidneys found by the coarse network."""
        _, config = self.networks["coarse"]
        grid = grid_for_image(ct, config.spacing_mm)
        coarse_ct = resample_onto(ct, grid, sitk.sitkLinear, -1024.0)
        probabilities = self.predict("coarse", normalize_ct(sitk.GetArrayViewFromImage(coarse_ct)))
        mask = sitk.GetImageFromArray((probabilities[1] > 0.5).astype(np.uint8))
        mask.CopyInformation(grid)
        components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), minimumObjectSize=int(MIN_KIDNEY_ML * 1000 / config.spacing_mm**3))
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(components)
        boxes = []
        for label in list(stats.GetLabels())[:3]:  # two kidneys, or a kidney split by a large mass
            box = stats.GetBoundingBox(label)
            corners = [grid.TransformIndexToPhysicalPoint([int(box[a] + box[a + 3] * c) for a, c in zip(range(3), corner)]) for corner in np.ndindex(2, 2, 2)]
            boxes.append(index_box_covering(ct, corners, KIDNEY_MARGIN_MM / np.array(ct.GetSpacing())))
        return _merge_overlapping(boxes)

    def segment_region(self, ct: sitk.Image, start, stop) -> np.ndarray:
        """KiTS probabilities (4, k, j, i) on the CT's own voxels inside the index box [start, stop)."""
        _, config = self.networks["fine"]
        grid = grid_for_region(ct, start, stop, config.spacing_mm, minimum_input_multiple(config))
        crop = normalize_ct(sitk.GetArrayFromImage(resample_onto(ct, grid, sitk.sitkLinear, -1024.0)))
        probabilities = self.predict("fine", crop)
        target = sitk.RegionOfInterest(ct, [int(s) for s in stop - start], [int(s) for s in start])
        out = np.empty((probabilities.shape[0], *reversed(target.GetSize())), np.float32)
        for c, p in enumerate(probabilities):
            image = sitk.GetImageFromArray(p)
            image.CopyInformation(grid)
            out[c] = sitk.GetArrayFromImage(resample_onto(image, target, sitk.sitkLinear, 1.0 if c == 0 else 0.0))
        return out


def decide_labels(probabilities, mass_share: float = MASS_SHARE) -> np.ndarray:
    """KiTS labels from class probabilities (background, kidney, tumor, cyst), decided down the KiTS hierarchy.

    Foreground where background is below 0.5; within it, a mass (tumor or cyst) where the masses hold
    ``mass_share`` of the foreground probability; within masses, tumor or cyst by the likelier. Each
    decision is the one a KiTS region (kidney and masses, masses, tumor) is scored on.
    """
    background, kidney, tumor, cyst = probabilities
    masses = tumor + cyst
    labels = np.where(background < 0.5, L.KIDNEY, L.BACKGROUND).astype(np.uint8)
    is_mass = (labels == L.KIDNEY) & (masses > mass_share * (kidney + masses))
    labels[is_mass] = np.where(tumor >= cyst, L.TUMOR, L.CYST)[is_mass]
    return labels


def _round_up(value: int, multiple: int) -> int:
    return int(np.ceil(value / multiple) * multiple)


def _autocast(device):
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    from .device import bf16_supported

    if device.type == "cpu" and bf16_supported():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _merge_overlapping(boxes):
    """Merge index boxes that overlap, so no voxel is segmented twice."""
    merged = []
    for start, stop in boxes:
        for n, (s, e) in enumerate(merged):
            if np.all(start < e) and np.all(s < stop):
                merged[n] = (np.minimum(s, start), np.maximum(e, stop))
                break
        else:
            merged.append((start, stop))
    return merged


def postprocess(kits: np.ndarray, spacing) -> np.ndarray:
    """Clean a KiTS label array: keep the (at most two) kidney-and-masses components with the most kidney
    tissue (at least ``MIN_KIDNEY_TISSUE_ML``), turn lesions under ``MIN_LESION_ML`` into kidney, and give
    each mass (a connected tumor-or-cyst component) one class, that of most of its voxels.

    One class per mass: the network often splits a mass between tumor and cyst, while in the KiTS23 reference
    maps a mass is nearly always one class (of every 4th map's 359 masses, 20 hold both classes, and their
    smaller classes are 1.1 % of all mass voxels). On 34 training-split synthetic cases (the bundled model) this
    raised tumor Dice from 0.655 to 0.669, leaving kidney + masses and masses Dice and the lesions found as they
    were (docs/accuracy.md).

    A lesion is kept only when it touches kidney tissue (inside or adjacent), as renal masses do.
    Works on the bounding box of the labelled voxels only (the kidney regions, a few % of a CT).
    """
    from scipy import ndimage

    ml_per_voxel = voxel_ml(spacing)
    out = kits.copy()
    box = _labelled_box(out)
    if box is None:
        return out
    view = out[box]
    components, count = ndimage.label(view > 0)
    if count:
        kidney_ml = np.bincount(components[view == L.KIDNEY], minlength=count + 1)[1:] * ml_per_voxel
        candidates = [c for c in np.argsort(-kidney_ml, kind="stable") if kidney_ml[c] >= MIN_KIDNEY_TISSUE_ML]
        keep = np.zeros(count + 1, bool)
        keep[np.array(candidates[:MAX_KIDNEYS], int) + 1] = True
        view[~keep[components]] = L.BACKGROUND
    lesions, count = ndimage.label(np.isin(view, L.LESION_LABELS))
    if count:
        small = np.zeros(count + 1, bool)
        small[1:] = np.bincount(lesions.ravel(), minlength=count + 1)[1:] * ml_per_voxel < MIN_LESION_ML
        view[small[lesions]] = L.KIDNEY
        lesions[small[lesions]] = 0
        kept = lesions > 0
        view[kept] = L.lesion_classes(lesions, view, count)[lesions[kept]]
    return out


def fluid_masses_as_cysts(kits: np.ndarray, ct_hu: np.ndarray) -> np.ndarray:
    """Turn into cyst each tumor mass (a connected tumor-or-cyst component labelled tumor) that is homogeneous fluid
    on the CT (``ct_hu``, same grid): its core's median HU in ``FLUID_HU`` and its core's robust SD up to ``FLUID_SD_HU``.

    On 34 training-split synthetic cases it changed three masses, a 199 mL simple cyst the network called tumor (that
    case's tumor Dice 0.77 -> 0.96) and two false tumors, and no true tumor (docs/accuracy.md).
    """
    from scipy import ndimage

    out = kits.copy()
    box = _labelled_box(out)
    if box is None:
        return out
    view, hu = out[box], ct_hu[box]
    masses, _ = ndimage.label(np.isin(view, L.LESION_LABELS))
    for index, mass_box in enumerate(ndimage.find_objects(masses), start=1):
        mass = masses[mass_box] == index
        if not (view[mass_box][mass] == L.TUMOR).all():  # one class per mass (``postprocess``): a cyst already
            continue
        core = ndimage.binary_erosion(mass)
        values = hu[mass_box][core if core.sum() > 10 else mass].astype(np.float32)
        low, median, high = np.percentile(values, [25, 50, 75])
        if FLUID_HU[0] <= median <= FLUID_HU[1] and (high - low) / 1.349 <= FLUID_SD_HU:
            view[mass_box][mass] = L.CYST
    return out


def drop_unsure_lesions(kits: np.ndarray, lesion_percent: np.ndarray, minimum: float) -> np.ndarray:
    """Turn into kidney each lesion (connected tumor-or-cyst component) whose mean lesion probability (``lesion_percent``,
    percent) is under ``minimum`` (0-1); the other voxels are kept.

    An opt-in trade: on 40 held-out synthetic cases a minimum of 0.7 would drop 18 of the 29 false lesions and
    9 of the 59 true ones (docs/accuracy.md).
    """
    from scipy import ndimage

    out = kits.copy()
    box = _labelled_box(out)
    if box is None:
        return out
    view = out[box]
    lesions, count = ndimage.label(np.isin(view, L.LESION_LABELS))
    if count:
        means = ndimage.mean(lesion_percent[box], lesions, np.arange(1, count + 1))
        unsure = np.concatenate([[False], means < 100.0 * minimum])
        view[unsure[lesions]] = L.KIDNEY
    return out


def _labelled_box(labels: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box (a tuple of slices) holding every non-zero voxel, or None if there is none."""
    box = []
    for axis in range(labels.ndim):
        hit = np.flatnonzero(labels.any(axis=tuple(a for a in range(labels.ndim) if a != axis)))
        if len(hit) == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def load_segmenter(model_path=None, device: str = "auto", fast: bool = False, flip_tta: bool = False,
                   progress: Progress | None = None) -> Segmenter:
    """``Segmenter.load`` that tells ``progress`` it is loading the model and, on a slow first load, what it is
    doing (a one-time export); without ``progress`` the export is announced in the log instead."""
    if progress is None:
        return Segmenter.load(model_path, device, fast, flip_tta)
    progress(0.0, "loading model")
    return Segmenter.load(model_path, device, fast, flip_tta, notify=lambda message: progress(0.0, message))


@dataclass
class AutoSegmentation:
    """``auto_segment``'s result, both images in the CT's geometry."""

    labels: sitk.Image  # KiTS label map
    # uint8 percent: the fine network's tumor + cyst probability, 0 outside the kidney regions. Its mean over a
    # lesion (``measure``'s ``lesion_probability``) tells true lesions from false ones: on 40 held-out synthetic
    # cases, 50 of the 61 lesions at 0.7 or more were true, 9 of the 27 below (docs/accuracy.md).
    lesion_probability: sitk.Image


def segment(ct: sitk.Image, **options) -> sitk.Image:
    """Segment kidneys, tumors and cysts in a CT (HU); returns a KiTS label map with the CT's geometry.

    ``auto_segment``'s labels; ``options`` are its keyword arguments.
    """
    return auto_segment(ct, **options).labels


def auto_segment(
    ct: sitk.Image,
    *,
    device: str = "auto",
    fast: bool = False,
    flip_tta: bool = False,
    model_path=None,
    segmenter: Segmenter | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    min_lesion_probability: float = 0.0,
) -> AutoSegmentation:
    """Segment kidneys, tumors and cysts in a CT (HU): the KiTS label map and the network's lesion probability.

    ``progress(fraction, message)`` is called between stages; setting ``cancel`` stops at the next
    stage with ``Cancelled``. Pass a loaded ``segmenter`` to avoid reloading the model. Lesions whose mean
    probability is under ``min_lesion_probability`` become kidney (``drop_unsure_lesions``; 0: none).
    """
    if not 0.0 <= min_lesion_probability <= 1.0:
        raise RenalSegError(f"the minimum lesion probability must lie in 0-1, got {min_lesion_probability}")
    report = progress or (lambda fraction, message: None)

    def check_cancel():
        if cancel is not None and cancel.is_set():
            raise Cancelled("segmentation cancelled")

    if ct.GetDimension() != 3:
        raise RenalSegError(f"CT must be 3D, got {ct.GetDimension()}D")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if segmenter is None:
        segmenter = load_segmenter(model_path, device, fast, flip_tta, progress)
    timings["load"] = time.perf_counter() - t0
    check_cancel()
    report(0.05, "finding kidneys")
    t0 = time.perf_counter()
    regions = segmenter.kidney_regions(ct)
    timings["coarse"] = time.perf_counter() - t0
    kits = np.zeros(tuple(reversed(ct.GetSize())), np.uint8)
    lesion_percent = np.zeros_like(kits)
    t0 = time.perf_counter()
    for n, (start, stop) in enumerate(regions):
        check_cancel()
        report(0.1 + 0.8 * n / max(1, len(regions)), f"segmenting kidney region {n + 1} of {len(regions)}")
        probabilities = segmenter.segment_region(ct, start, stop)
        box = tuple(slice(int(a), int(b)) for a, b in zip(reversed(start), reversed(stop)))
        kits[box] = decide_labels(probabilities)  # regions are disjoint (merged when overlapping)
        lesion_percent[box] = np.rint(100.0 * np.clip(probabilities[L.TUMOR] + probabilities[L.CYST], 0.0, 1.0))
    timings["fine"] = time.perf_counter() - t0
    report(0.92, "postprocessing")
    t0 = time.perf_counter()
    kits = fluid_masses_as_cysts(postprocess(kits, ct.GetSpacing()), sitk.GetArrayViewFromImage(ct))
    if min_lesion_probability > 0.0:
        kits = drop_unsure_lesions(kits, lesion_percent, min_lesion_probability)
    timings["postprocess"] = time.perf_counter() - t0
    segmenter.timings = timings
    if not kits.any():
        log.warning("no kidney found in this CT (does it cover the kidneys?)")
    report(1.0, "done")
    return AutoSegmentation(labels_like(kits, ct), labels_like(lesion_percent, ct))
