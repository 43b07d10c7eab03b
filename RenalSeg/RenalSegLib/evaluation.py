"""Evaluation: KiTS Dice and surface Dice per HEC, lesion detection, and the simulated-click protocol.

Metrics follow the KiTS23 evaluation (neheller/kits23): per hierarchical evaluation class (HEC)
Dice and surface Dice at the KiTS tolerance, 1 when prediction and reference are both empty, 0 when
only one is. Surface Dice uses MONAI's ``compute_surface_dice`` with sub-voxel surfels, which matches
DeepMind's ``surface_distance`` used by KiTS (checked to 1e-7 on anisotropic spheres). Lesions are the
26-connected components of the masses {tumor, cyst}: a reference lesion is found when any predicted
lesion voxel overlaps it; a predicted lesion that overlaps no reference lesion is a false positive.
``confidence_intervals`` gives each summary figure a case-bootstrap interval, or the interval of its difference
from another set of predictions of the same cases (paired).

The interactive protocol (``click_protocol`` / ``interactive_evaluation``) works with any model: it
takes a ``refine(clicks) -> prediction`` callable and plays a simulated user (``clicksim``)::

    def make_refine(name, method):  # clicks are ((k, j, i), positive, class) in the reference's voxels
        return lambda clicks: my_model_segment(images[name], clicks, guidance=method)

    result = interactive_evaluation([(name, reference, spacing), ...], make_refine)
    print(format_interactive_table(result))

``compare_interactive`` sets two such results of the same cases side by side, with paired intervals.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .clicksim import UserClick, missed_lesion_clicks, next_click, user_click
from .errors import RenalSegError
from .labels import CYST, HEC_REGIONS, LESION_LABELS, SURFACE_DICE_TOLERANCE_MM, TUMOR, lesion_classes, region_mask
from .outputs import atomic_path
from .volume import LABEL_SUFFIXES, case_name, voxel_ml

if TYPE_CHECKING:
    import SimpleITK as sitk

HEC_NAMES = tuple(HEC_REGIONS)
_FULL = ndimage.generate_binary_structure(3, 3)  # lesion components: 26-connected
# Detection is also reported for reference lesions of at least this volume: KiTS label maps hold many
# sub-millilitre fragments, and inference drops predicted lesions under 1 mL, so the pooled recall mixes
# what the model misses with what it is built not to report.
COUNTED_LESION_ML = 1.0
Refine = Callable[[list[UserClick]], np.ndarray]  # clicks so far -> KiTS label prediction (k, j, i)


# --- per-case metrics ------------------------------------------------------------------------------

def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (KiTS rule).

    Hand-written rather than MONAI's ``compute_dice``: that needs one-hot float tensors (4 bytes per
    voxel per class), this counts voxels of the boolean masks directly.
    """
    total = np.count_nonzero(prediction) + np.count_nonzero(reference)
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(prediction & reference)) / int(total)


def surface_dice(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface Dice of two boolean masks at ``tolerance_mm``; ``spacing`` in the arrays' axis order, mm.

    Both empty gives 1.0, one empty 0.0 (KiTS rule; MONAI returns NaN and 0 there). Only the bounding
    box of both masks plus one voxel is handed to MONAI, which gives the same surfels and distances
    at a fraction of the memory of a full CT.
    """
    import torch
    from monai.metrics import compute_surface_dice

    pred_any, ref_any = bool(prediction.any()), bool(reference.any())
    if not (pred_any or ref_any):
        return 1.0
    if not (pred_any and ref_any):
        return 0.0
    box = padded_box(prediction | reference, 1)
    masks = np.stack([prediction[box], reference[box]]).astype(np.float32)[:, None]
    pred_t, ref_t = torch.from_numpy(masks[:1]), torch.from_numpy(masks[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty classes; handled above
        value = compute_surface_dice(
            pred_t, ref_t, [float(tolerance_mm)], include_background=True,
            spacing=[float(s) for s in spacing], use_subvoxels=True,
        )
    return float(value[0, 0])


def padded_box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """The box (a tuple of slices) around a non-empty mask's voxels, ``pad`` voxels wider each side, clipped to the array."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(slice(max(b.start - pad, 0), min(b.stop + pad, n)) for b, n in zip(box, mask.shape))


def _ratio(part: float, whole: float) -> float:
    """part / whole, NaN when there is no whole (no lesions to find, no predictions to check)."""
    return part / whole if whole else math.nan


def lesion_detection(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int] = LESION_LABELS,
                     voxel_ml: float | None = None) -> dict:
    """Lesion-level detection on KiTS label maps: counts of reference, found, predicted and false-positive lesions.

    Lesions are 26-connected components of ``labels`` (masses by default). Recall is found / reference
    (NaN without reference lesions), precision is true predicted / predicted (NaN without predictions).
    With ``voxel_ml`` (mL per voxel) the reference lesions of at least ``COUNTED_LESION_ML`` are also
    counted, with their recall (``*_1ml``), and split by their majority class (``tumors_*_1ml``,
    ``cysts_*_1ml``; a tie counts as tumor).
    """
    ref_masses, pred_masses = np.isin(reference, labels), np.isin(prediction, labels)
    if ref_masses.any() or pred_masses.any():
        # Label only the box holding every lesion: int32 labels of a whole CT would take 4 bytes a voxel.
        box = padded_box(ref_masses | pred_masses, 1)
        ref_masses, pred_masses, reference = ref_masses[box], pred_masses[box], reference[box]
    ref_lesions, n_ref = ndimage.label(ref_masses, structure=_FULL)
    pred_lesions, n_pred = ndimage.label(pred_masses, structure=_FULL)
    overlap = (ref_lesions > 0) & (pred_lesions > 0)
    found_ids = np.unique(ref_lesions[overlap])
    true_predicted = np.unique(pred_lesions[overlap]).size
    n_found_all = found_ids.size
    large = {}
    if voxel_ml is not None:
        volumes = np.bincount(ref_lesions.ravel(), minlength=n_ref + 1)[1:] * voxel_ml
        counted = np.flatnonzero(volumes >= COUNTED_LESION_ML) + 1
        found = np.isin(counted, found_ids)
        n_found = int(found.sum())
        large = {"lesions_reference_1ml": int(counted.size), "lesions_found_1ml": n_found, "lesion_recall_1ml": _ratio(n_found, counted.size)}
        classes = lesion_classes(ref_lesions, reference, n_ref)[counted]
        for name, kind in (("tumors", classes == TUMOR), ("cysts", classes == CYST)):
            large.update({f"{name}_reference_1ml": int(kind.sum()), f"{name}_found_1ml": int((kind & found).sum())})
    return {
        "lesions_reference": int(n_ref),
        "lesions_found": int(n_found_all),
        "lesions_predicted": int(n_pred),
        "false_positive_lesions": int(n_pred - true_predicted),
        "lesion_recall": _ratio(n_found_all, n_ref),
        "lesion_precision": _ratio(true_predicted, n_pred),
        **large,
    }


def evaluate_case(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict:
    """KiTS metrics of one case: ``dice_<hec>``, ``surface_dice_<hec>`` for each HEC, and lesion detection.

    ``pred`` and ``ref`` are KiTS label arrays of one shape; ``spacing`` is in the arrays' axis order
    ((k, j, i) for SimpleITK arrays), mm.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {pred.ndim}D array")
    row: dict = {}
    for hec in HEC_NAMES:
        p, r = region_mask(pred, hec), region_mask(ref, hec)
        row[f"dice_{hec}"] = dice(p, r)
        row[f"surface_dice_{hec}"] = surface_dice(p, r, spacing, SURFACE_DICE_TOLERANCE_MM[hec])
    row.update(lesion_detection(pred, ref, voxel_ml=voxel_ml(spacing)))
    return row


def grid_ceiling(reference: sitk.Image, spacing_mm: float) -> dict[str, float]:
    """Dice per HEC that a perfect network working on an isotropic ``spacing_mm`` grid would reach.

    ``reference`` (a SimpleITK KiTS label map) becomes one probability image per class, is resampled onto
    the grid and back onto its own voxels (linear, as inference does with the network's probabilities)
    and decided by ``inference.decide_labels``: what remains is the loss of the grid alone.
    """
    import SimpleITK as sitk

    from .inference import decide_labels
    from .preprocess import grid_for_image, resample_onto

    values = sitk.GetArrayFromImage(reference)
    grid = grid_for_image(reference, spacing_mm)
    probabilities = []
    for label in range(CYST + 1):
        one_hot = sitk.GetImageFromArray((values == label).astype(np.float32))
        one_hot.CopyInformation(reference)
        outside = 1.0 if label == 0 else 0.0
        on_grid = resample_onto(one_hot, grid, sitk.sitkLinear, outside)
        probabilities.append(sitk.GetArrayFromImage(resample_onto(on_grid, reference, sitk.sitkLinear, outside)))
    decided = decide_labels(np.stack(probabilities))
    return {hec: dice(region_mask(decided, hec), region_mask(values, hec)) for hec in HEC_NAMES}


# --- folders, summary, reports ----------------------------------------------------------------------

def label_files(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise RenalSegError(f"{folder}: {role} folder not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        case = case_name(path, LABEL_SUFFIXES)
        if case is None or not path.is_file() or path.name.startswith("."):
            continue
        if case in files:
            raise RenalSegError(f"{folder}: two {role} files for case {case!r} ({files[case].name}, {path.name})")
        files[case] = path
    if not files:
        raise RenalSegError(f"{folder}: no label maps ({', '.join(LABEL_SUFFIXES)}) in the {role} folder")
    return files


def _kits_array(image, path: Path) -> np.ndarray:
    import SimpleITK as sitk

    values = sitk.GetArrayFromImage(image)
    if values.max() > CYST:
        raise RenalSegError(f"{path}: label {int(values.max())} found; expected a KiTS label map (0 background, 1 kidney, 2 tumor, 3 cyst)")
    return values


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, progress: bool = True) -> list[dict]:
    """Evaluate every prediction in ``pred_dir`` against the reference of the same case name in ``ref_dir``.

    Files pair by name without extension (``case_00001.nii.gz`` with ``case_00001.nrrd``). A case
    present in only one folder, or a pair whose geometries differ, raises ``RenalSegError``. Returns
    one row per case (``case`` first, then ``evaluate_case``'s keys), sorted by case name.
    """
    from .volume import read_labels, same_geometry

    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    predictions, references = label_files(pred_dir, "prediction"), label_files(ref_dir, "reference")
    for missing, have, folder in ((set(references) - set(predictions), "reference", pred_dir), (set(predictions) - set(references), "prediction", ref_dir)):
        if missing:
            names = ", ".join(sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
            raise RenalSegError(f"{folder}: no file for {len(missing)} {have} case(s): {names}")
    cases = sorted(references)
    rows = []
    for case in _progress(cases, progress, "evaluate"):
        pred_image, ref_image = read_labels(predictions[case]), read_labels(references[case])
        if not same_geometry(pred_image, ref_image):
            raise RenalSegError(
                f"{predictions[case]}: geometry (size {pred_image.GetSize()}, spacing {tuple(round(s, 4) for s in pred_image.GetSpacing())}) "
                f"differs from the reference {references[case].name} (size {ref_image.GetSize()}, spacing "
                f"{tuple(round(s, 4) for s in ref_image.GetSpacing())}) or their origins/directions differ"
            )
        spacing = tuple(reversed(ref_image.GetSpacing()))  # SimpleITK arrays are (k, j, i)
        row = {"case": case}
        row.update(evaluate_case(_kits_array(pred_image, predictions[case]), _kits_array(ref_image, references[case]), spacing))
        rows.append(row)
    return rows


def _progress(items, enabled: bool, description: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="case")


def _mean(values, axis=-1):
    return np.mean(values, axis=axis)


def _pooled(part, whole, axis=-1):
    with np.errstate(invalid="ignore", divide="ignore"):  # no lesions (in the cases or a resample): NaN
        return np.sum(part, axis=axis) / np.sum(whole, axis=axis)


def _precision(predicted, false_positive, axis=-1):
    return _pooled(np.subtract(predicted, false_positive), predicted, axis)


# Each summary figure as a function of per-case columns: ``summarize`` computes it on the cases,
# ``confidence_intervals`` on resampled cases.
SUMMARY_FIGURES: dict[str, tuple[tuple[str, ...], Callable]] = {
    **{f"{metric}_{hec}": ((f"{metric}_{hec}",), _mean) for hec in HEC_NAMES for metric in ("dice", "surface_dice")},
    "lesion_recall": (("lesions_found", "lesions_reference"), _pooled),
    "lesion_recall_1ml": (("lesions_found_1ml", "lesions_reference_1ml"), _pooled),
    "lesion_precision": (("lesions_predicted", "false_positive_lesions"), _precision),
    "false_positives_per_case": (("false_positive_lesions",), _mean),
}


def _columns(rows: Sequence[dict], columns: Sequence[str]) -> list[np.ndarray]:
    return [np.array([row[c] for row in rows], float) for c in columns]


def summarize(rows: Sequence[dict]) -> dict:
    """Mean Dice and surface Dice per HEC over cases, and pooled lesion detection.

    ``rows`` are ``evaluate_case`` rows. Lesion recall and precision are pooled over all lesions of all
    cases (a case with many lesions weighs more), and false positives are counted per case.
    """
    if not rows:
        raise RenalSegError("no cases to summarize")
    means = [f"{metric}_{hec}" for hec in HEC_NAMES for metric in ("dice", "surface_dice")]
    counts = ("lesions_reference", "lesions_found", "lesions_predicted", "false_positive_lesions", "lesions_reference_1ml", "lesions_found_1ml",
              "tumors_reference_1ml", "tumors_found_1ml", "cysts_reference_1ml", "cysts_found_1ml")
    for row in rows:
        missing = [key for key in (*means, *counts) if key not in row]
        if missing:
            raise RenalSegError(f"case {row.get('case', '?')}: no {', '.join(missing)} (rows to summarize come from evaluate_case)")
    summary: dict = {"cases": len(rows)}
    totals = {key: int(sum(row[key] for row in rows)) for key in counts}
    summary.update(totals)
    for key, (columns, figure) in SUMMARY_FIGURES.items():
        summary[key] = float(figure(*_columns(rows, columns)))
    for name in ("tumor", "cyst"):
        summary[f"{name}_recall_1ml"] = _ratio(totals[f"{name}s_found_1ml"], totals[f"{name}s_reference_1ml"])
    return summary


# --- uncertainty of the summary: case bootstrap ----------------------------------------------------

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
INTERVAL_TITLE = f"{CONFIDENCE:.0%} CI"


def confidence_intervals(rows: Sequence[dict], baseline: Sequence[dict] | None = None,
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % percentile-bootstrap intervals of the ``summarize`` figures in ``SUMMARY_FIGURES``, cases resampled
    with replacement (``scipy.stats.bootstrap``, seeded: the same rows give the same intervals).

    With ``baseline`` (rows of the same cases from other predictions) the intervals are of the differences
    rows - baseline, paired: each resample draws the same cases from both, so a model that is better on every
    case shows it even when the cases differ widely among themselves.
    """
    if baseline is not None and [r["case"] for r in rows] != [r["case"] for r in baseline]:
        raise RenalSegError("the two sets of predictions must hold the same cases to be compared case by case")
    if not rows:
        raise RenalSegError("no cases to resample")
    rng = np.random.default_rng(seed)
    intervals = {}
    for key, (columns, figure) in SUMMARY_FIGURES.items():
        data = _columns(rows, columns)
        if baseline is None:
            statistic = figure
        else:
            data += _columns(baseline, columns)

            def statistic(*arrays, axis=-1, figure=figure, n=len(columns)):
                return figure(*arrays[:n], axis=axis) - figure(*arrays[n:], axis=axis)
        intervals[key] = bootstrap_interval(data, statistic, rng, resamples)
    return intervals


def bootstrap_interval(data: Sequence[np.ndarray], statistic: Callable, rng: np.random.Generator,
                       resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """``CONFIDENCE`` percentile-bootstrap interval of ``statistic(*data, axis=-1)``, the arrays' cases (one per
    element) resampled together; one case gives the value itself as both bounds."""
    from scipy.stats import DegenerateDataWarning, bootstrap

    if len(data[0]) == 1:  # nothing to resample
        value = float(statistic(*[d[None] for d in data], axis=-1)[0])
        return value, value
    with warnings.catch_warnings():
        # A figure is undefined on a resample without lesions (recall) or predictions (precision): the
        # percentiles are taken over the other resamples (NaN when there are none).
        warnings.simplefilter("ignore", DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        distribution = bootstrap(data, statistic, n_resamples=resamples, paired=True, vectorized=True,
                                 method="percentile", random_state=rng).bootstrap_distribution
        low, high = np.nanpercentile(distribution, [50 * (1 - CONFIDENCE), 100 - 50 * (1 - CONFIDENCE)])
    return float(low), float(high)


_SUMMARY_KEY = {"false_positive_lesions": "false_positives_per_case"}  # a table column's figure in the summary
_TABLE_COLUMNS = (
    [(f"dice_{hec}", f"Dice {short}") for hec, short in zip(HEC_NAMES, ("kid+mass", "masses", "tumor"))]
    + [(f"surface_dice_{hec}", f"SD {short}") for hec, short in zip(HEC_NAMES, ("kid+mass", "masses", "tumor"))]
    + [("lesion_recall", "recall"), ("lesion_recall_1ml", "recall>=1mL"), ("lesion_precision", "precision"), ("false_positive_lesions", "FP")]
)


def format_table(rows: Sequence[dict], summary: dict | None = None, intervals: dict | None = None) -> str:
    """A plain-text table: one line per case and a final line of means (pooled lesion figures), with
    ``intervals`` (``confidence_intervals``) a line of their bounds, then the recall of the lesions of at
    least ``COUNTED_LESION_ML`` by class."""
    summary = summarize(rows) if summary is None else summary
    width = max([len(INTERVAL_TITLE)] + [len(str(row["case"])) for row in rows])
    header = f"{'case':{width}s} " + " ".join(f"{title:>12s}" for _, title in _TABLE_COLUMNS)
    lines = [header, "-" * len(header)]
    mean = dict(summary, case="mean", false_positive_lesions=summary["false_positives_per_case"])
    for row in [*rows, mean]:
        cells = []
        for key, _ in _TABLE_COLUMNS:
            value = row[key]
            cells.append(f"{value:12d}" if isinstance(value, int) else f"{value:12.4f}")
        if row is mean:
            lines.append("-" * len(header))
        lines.append(f"{str(row['case']):{width}s} " + " ".join(cells))
    if intervals is not None:
        bounds = (intervals[_SUMMARY_KEY.get(key, key)] for key, _ in _TABLE_COLUMNS)
        lines.append(f"{INTERVAL_TITLE:{width}s} " + " ".join(f"{f'{low:.3f}-{high:.3f}':>12s}" for low, high in bounds))
    by_class = (f"{summary[f'{kind}s_found_1ml']} of {summary[f'{kind}s_reference_1ml']} {kind}s ({summary[f'{kind}_recall_1ml']:.2f})" for kind in ("tumor", "cyst"))
    lines.append(f"lesions of at least {COUNTED_LESION_ML:g} mL found: " + ", ".join(by_class))
    return "\n".join(lines)


def format_comparison(summary: dict, baseline_summary: dict, intervals: dict, baseline_name: str) -> str:
    """A plain-text table of each summary figure, its baseline's, their difference and the difference's paired
    interval (``confidence_intervals(rows, baseline)``); ``*`` marks an interval that leaves out 0."""
    titles = dict(_TABLE_COLUMNS, false_positive_lesions="FP / case")
    rows = [(title, summary[key], baseline_summary[key], *intervals[key])
            for key, title in ((_SUMMARY_KEY.get(key, key), title) for key, title in titles.items())]
    return _comparison_table(f"against {baseline_name} (same {summary['cases']} cases", rows, 14)


def _comparison_table(heading: str, rows: Sequence[tuple[str, float, float, float, float]], width: int) -> str:
    """Rows of (figure, this, baseline, low, high) under one heading; ``*`` marks an interval that leaves out 0."""
    lines = [f"{heading}; {CONFIDENCE:.0%} intervals of the difference, paired bootstrap):",
             f"{'figure':{width}s} {'this':>8s} {'baseline':>8s} {'difference':>10s}   interval"]
    for title, this, base, low, high in rows:
        mark = " *" if low > 0 or high < 0 else ""
        lines.append(f"{title:{width}s} {this:8.4f} {base:8.4f} {this - base:+10.4f}   {low:+.4f} to {high:+.4f}{mark}")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: str | os.PathLike, summary: dict | None = None) -> Path:
    """Write the per-case rows and a final ``mean`` row (see ``summarize``) as CSV, atomically."""
    summary = summarize(rows) if summary is None else summary
    fields = list(rows[0])
    mean = {key: summary.get(key, "") for key in fields}
    mean["case"] = "mean"
    mean["false_positive_lesions"] = summary["false_positives_per_case"]
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
            writer.writerow(mean)
    return path


# --- interactive protocol ---------------------------------------------------------------------------

NOC_THRESHOLDS = (0.85, 0.90)
NOC_CAP = 20  # clicks; a case that never reaches the threshold counts as NOC_CAP (the usual convention)
# What the clicks changed of the target classes: voxels positive clicks added, negative clicks removed, and how many of
# each the reference holds (``click_protocol`` counts them per case, ``interactive_evaluation`` pools them).
CLICK_CHANGE_COUNTS = ("positive_added", "positive_added_true", "negative_removed", "negative_removed_true")
# The click figures are also given per tumor size: the diameter of a sphere of a case's reference tumor volume,
# split at the TNM bounds of 4 and 7 cm (T1a / T1b / T2, which TNM takes on the greatest diameter). Partial
# nephrectomy, what the clicks serve, is mostly for tumors of up to 4 cm, and a thin error rim costs a small
# tumor far more Dice than a large one.
TUMOR_SIZE_BOUNDS_CM = (4.0, 7.0)


def click_protocol(
    reference: np.ndarray,
    spacing: Sequence[float],
    refine: Refine,
    max_clicks: int = 10,
    noc_cap: int = NOC_CAP,
    target: Sequence[int] = (TUMOR,),
) -> dict:
    """Play one simulated user on one case with one model and guidance encoding.

    Click 0 is auto mode (``refine([])``). Each further click goes to the centre of the largest error
    region of the ``target`` class (``clicksim.next_click``), naming a class as a user would
    (``clicksim.user_click``: a cyst called tumor gets a positive cyst click), and ``refine`` gets the
    whole click history. Returns ``dice`` (per HEC, Dice after 0..max_clicks clicks), ``tumor_ml`` (the reference
    tumor volume, mL, with ``spacing`` in mm), ``clicks_played`` and ``clicks_unchanged`` (how many of them left the
    labels as they were: the simulated user then clicks the same error again), ``positive_added`` /
    ``positive_added_true`` (voxels of the ``target`` classes the positive clicks added, and how many of those the
    reference holds), ``negative_removed`` / ``negative_removed_true`` (the same for what the negative clicks removed:
    reference voxels there were taken back wrongly), ``noc85``/``noc90`` (the fewest clicks, 0..noc_cap, giving tumor
    Dice >= 0.85 / 0.90; ``noc_cap`` when never reached; None when the reference has no tumor), and the lesion false
    negatives of auto mode versus after one click per missed lesion (a fresh session with only those clicks).
    """
    tumor_voxels = int(np.count_nonzero(reference == TUMOR))
    truth = np.isin(reference, target)
    has_tumor = tumor_voxels > 0
    clicks: list[UserClick] = []
    prediction = refine([])
    if prediction.shape != reference.shape:
        raise ValueError(f"refine returned shape {prediction.shape}, the reference has {reference.shape}")
    auto = prediction
    curves = {hec: [dice(region_mask(prediction, hec), region_mask(reference, hec))] for hec in HEC_NAMES}
    tumor = [curves["tumor"][0]]
    settled = False  # the target class is exact: further clicks change nothing
    unchanged = 0
    changes = dict.fromkeys(CLICK_CHANGE_COUNTS, 0)
    in_target = np.isin(prediction, target)
    last_needed = max(max_clicks, noc_cap if has_tumor else 0)
    for k in range(1, last_needed + 1):
        if k > max_clicks and tumor[-1] >= max(NOC_THRESHOLDS):
            break
        if not settled:
            click = next_click(prediction, reference, labels=target, spacing=spacing)
            if click is None:
                settled = True
            else:
                clicks.append(user_click(click, reference, target))
                previous, prediction = prediction, refine(list(clicks))
                unchanged += bool(np.array_equal(previous, prediction))
                before, in_target = in_target, np.isin(prediction, target)
                _, positive, _ = clicks[-1]
                kind, changed = ("positive_added", in_target & ~before) if positive else ("negative_removed", before & ~in_target)
                changes[kind] += int(np.count_nonzero(changed))
                changes[f"{kind}_true"] += int(np.count_nonzero(changed & truth))
        tumor.append(dice(prediction == TUMOR, reference == TUMOR))
        if k <= max_clicks:
            for hec in HEC_NAMES:
                curves[hec].append(dice(region_mask(prediction, hec), region_mask(reference, hec)))

    result: dict = {"dice": curves, "clicks": clicks[:max_clicks], "clicks_played": len(clicks), "clicks_unchanged": unchanged,
                    **changes, "tumor_ml": tumor_voxels * voxel_ml(spacing)}
    for threshold in NOC_THRESHOLDS:
        reached = [k for k, value in enumerate(tumor) if value >= threshold]
        result[f"noc{round(threshold * 100)}"] = (reached[0] if reached else noc_cap) if has_tumor else None

    missed = missed_lesion_clicks(auto, reference, spacing)
    after = refine(list(missed)) if missed else auto
    result["lesions"] = lesion_detection(auto, reference)["lesions_reference"]
    result["lesions_missed_auto"] = len(missed)
    result["lesions_missed_after_clicks"] = len(missed_lesion_clicks(after, reference, spacing))
    return result


def interactive_evaluation(
    cases: Sequence[tuple[str, np.ndarray, Sequence[float]]],
    make_refine: Callable[[str, str], Refine],
    methods: Sequence[str] = ("adaptive", "gaussian"),
    max_clicks: int = 10,
    noc_cap: int = NOC_CAP,
    target: Sequence[int] = (TUMOR,),
    progress: bool = False,
) -> dict:
    """Run ``click_protocol`` on every case for every guidance method and aggregate, methods side by side.

    ``cases`` holds ``(name, reference KiTS labels, spacing)``; ``make_refine(name, method)`` returns
    the refine callable of that case with that guidance encoding. Per method: mean Dice per HEC
    after each click, mean NoC@85 / NoC@90 over cases with a tumor, the area under the tumor
    Dice-per-click curve (mean over clicks 0..max_clicks), the pooled lesion false-negative rate
    of auto mode and after one click per missed lesion, the share of clicks that changed nothing, the pooled share of
    what positive clicks added that the reference holds and of what negative clicks removed that it holds (a click
    rule or model that leaks less raises the first and lowers the second), and the tumor figures per tumor size
    (``by_tumor_size``).
    """
    result: dict = {"max_clicks": max_clicks, "noc_cap": noc_cap, "target": list(target), "methods": {}}
    for method in methods:
        per_case = {}
        for name, reference, spacing in _progress(cases, progress, f"clicks ({method})"):
            per_case[name] = click_protocol(reference, spacing, make_refine(name, method), max_clicks, noc_cap, target)
        runs = list(per_case.values())
        lesions = sum(run["lesions"] for run in runs)
        changed = {key: sum(run[key] for run in runs) for key in CLICK_CHANGE_COUNTS}
        summary: dict = {
            "dice": {hec: np.mean([run["dice"][hec] for run in runs], axis=0).round(4).tolist() for hec in HEC_NAMES},
            "tumor_cases": sum(run["noc85"] is not None for run in runs),
            "lesions": lesions,
            "lesion_fn_rate_auto": _ratio(sum(run["lesions_missed_auto"] for run in runs), lesions),
            "lesion_fn_rate_after_clicks": _ratio(sum(run["lesions_missed_after_clicks"] for run in runs), lesions),
            "unchanged_click_rate": _ratio(sum(run["clicks_unchanged"] for run in runs), sum(run["clicks_played"] for run in runs)),
            "positive_added_true_share": _ratio(changed["positive_added_true"], changed["positive_added"]),
            "negative_removed_true_share": _ratio(changed["negative_removed_true"], changed["negative_removed"]),
            "cases": per_case,
        }
        summary["tumor_dice_auc"] = float(np.mean(summary["dice"]["tumor"]))
        summary["by_tumor_size"] = by_tumor_size(runs)
        rng = np.random.default_rng(0)
        tumor_dice = np.array([run["dice"]["tumor"] for run in runs], float)  # (cases, clicks + 1)
        summary["intervals"] = {"tumor_dice": [bootstrap_interval([column], _mean, rng) for column in tumor_dice.T]}
        for key in ("noc85", "noc90"):
            values = [run[key] for run in runs if run[key] is not None]
            summary[key] = float(np.mean(values)) if values else math.nan
            summary["intervals"][key] = bootstrap_interval([np.array(values, float)], _mean, rng) if values else (math.nan, math.nan)
        result["methods"][method] = summary
    return result


def sphere_diameter_cm(volume_ml: float) -> float:
    """The diameter (cm) of a sphere of ``volume_ml`` millilitres (cm^3)."""
    return (6.0 * volume_ml / math.pi) ** (1.0 / 3.0)


def by_tumor_size(runs: Sequence[dict]) -> list[dict]:
    """``click_protocol`` runs of cases with a tumor grouped by size (``TUMOR_SIZE_BOUNDS_CM`` on the diameter of a
    sphere of the reference tumor volume): per group its bounds (``diameter_cm``, low exclusive), the number of
    cases, their mean tumor Dice after each click and mean NoC@85 / NoC@90 (NaN for an empty group)."""
    bounds = (0.0, *TUMOR_SIZE_BOUNDS_CM, math.inf)
    groups = []
    for low, high in zip(bounds[:-1], bounds[1:]):
        members = [run for run in runs if low < sphere_diameter_cm(run["tumor_ml"]) <= high]  # no tumor: diameter 0, in none
        group = {"diameter_cm": [low, high], "cases": len(members),
                 "tumor_dice": np.mean([run["dice"]["tumor"] for run in members], axis=0).round(4).tolist() if members else []}
        for key in ("noc85", "noc90"):
            group[key] = float(np.mean([run[key] for run in members])) if members else math.nan
        groups.append(group)
    return groups


def _size_title(low: float, high: float) -> str:
    return f"up to {high:g} cm" if low == 0 else f"over {low:g} cm" if math.isinf(high) else f"{low:g}-{high:g} cm"


def format_interactive_table(result: dict) -> str:
    """Plain-text comparison of the guidance methods: Dice per HEC after each click (with the interval of tumor
    Dice), NoC (with intervals), lesion misses, and the tumor figures per tumor size."""
    methods = list(result["methods"])
    columns = [(method, hec) for hec in HEC_NAMES for method in methods]
    short = {"kidney_and_masses": "kid+mass", "masses": "masses", "tumor": "tumor"}
    header = (f"{'clicks':>6s} " + " ".join(f"{short[hec] + ' ' + method[:5]:>15s}" for method, hec in columns)
              + "".join(f"{'tumor ' + INTERVAL_TITLE + ' ' + method[:5]:>22s}" for method in methods))
    lines = [header, "-" * len(header)]
    for k in range(result["max_clicks"] + 1):
        cells = " ".join(f"{result['methods'][method]['dice'][hec][k]:15.4f}" for method, hec in columns)
        bounds = "".join(f"{'{:.3f}-{:.3f}'.format(*result['methods'][method]['intervals']['tumor_dice'][k]):>22s}" for method in methods)
        lines.append(f"{k:6d} {cells}{bounds}")
    lines.append("-" * len(header))
    lines.append(f"{'':22s}" + "".join(f"{method:>15s}" for method in methods))
    for key, title in (
        ("noc85", f"NoC@85 (cap {result['noc_cap']})"),
        ("noc90", f"NoC@90 (cap {result['noc_cap']})"),
        ("tumor_dice_auc", "tumor Dice AUC"),
        ("lesion_fn_rate_auto", "lesion FN rate, auto"),
        ("lesion_fn_rate_after_clicks", "lesion FN, 1 click/miss"),
        ("unchanged_click_rate", "clicks changing nothing"),
        ("positive_added_true_share", "+ click adds, true"),
        ("negative_removed_true_share", "- click removes, true"),
    ):
        lines.append(f"{title:22s}" + "".join(f"{result['methods'][method][key]:15.3f}" for method in methods))
        if key in ("noc85", "noc90"):
            bounds = ("{:.1f}-{:.1f}".format(*result["methods"][method]["intervals"][key]) for method in methods)
            lines.append(f"{'  ' + INTERVAL_TITLE:22s}" + "".join(f"{b:>15s}" for b in bounds))
    shown = sorted({1, 3, result["max_clicks"]} & set(range(1, result["max_clicks"] + 1)))
    for method in methods:
        lines.append(f"tumor figures by tumor size (diameter of a sphere of the reference tumor volume), {method}:")
        lines.append(f"{'  size':16s}{'cases':>6s}" + "".join(f"{'after ' + str(k):>9s}" for k in shown) + f"{'NoC@85':>8s}{'NoC@90':>8s}")
        for group in result["methods"][method]["by_tumor_size"]:
            dice_after = "".join(f"{group['tumor_dice'][k]:9.3f}" if group["cases"] else f"{'-':>9s}" for k in shown)
            lines.append(f"  {_size_title(*group['diameter_cm']):14s}{group['cases']:6d}{dice_after}{group['noc85']:8.1f}{group['noc90']:8.1f}")
    return "\n".join(lines)


def compare_interactive(result: dict, baseline: dict, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, list[tuple]]:
    """Paired differences between two ``interactive_evaluation`` results of the same cases (two models, say).

    Per click encoding in both: rows of (figure, this, baseline, low, high) for tumor Dice after each click, the
    tumor Dice AUC and NoC@85 / NoC@90 (cases with a tumor), low and high bounding the ``CONFIDENCE`` interval
    of the difference with the same cases resampled from both.
    """
    rng = np.random.default_rng(seed)
    comparison: dict[str, list[tuple]] = {}
    for method in (m for m in result["methods"] if m in baseline["methods"]):
        cases, base_cases = result["methods"][method]["cases"], baseline["methods"][method]["cases"]
        if sorted(cases) != sorted(base_cases):
            raise RenalSegError(f"the two {method} evaluations hold different cases; a paired comparison needs the same cases")
        names = sorted(cases)
        this, base = (np.array([c[name]["dice"]["tumor"] for name in names], float) for c in (cases, base_cases))
        if this.shape != base.shape:
            raise RenalSegError(f"the two {method} evaluations played different numbers of clicks ({this.shape[1] - 1} and {base.shape[1] - 1})")
        figures = [(f"tumor Dice after {k}", this[:, k], base[:, k]) for k in range(this.shape[1])]
        figures.append(("tumor Dice AUC", this.mean(axis=1), base.mean(axis=1)))
        for key in ("noc85", "noc90"):
            both = [name for name in names if cases[name][key] is not None and base_cases[name][key] is not None]
            if both:
                figures.append((f"NoC@{key[3:]}", *(np.array([c[name][key] for name in both], float) for c in (cases, base_cases))))
        comparison[method] = [(title, float(a.mean()), float(b.mean()), *bootstrap_interval([a - b], _mean, rng, resamples))
                              for title, a, b in figures]
    if not comparison:
        raise RenalSegError("the two interactive evaluations share no click encoding")
    return comparison


def format_interactive_comparison(comparison: dict[str, list[tuple]], baseline_name: str) -> str:
    """``compare_interactive``'s rows as plain-text tables, one per click encoding."""
    return "\n".join(_comparison_table(f"{method} clicks against {baseline_name} (same cases", rows, 22)
                     for method, rows in comparison.items())
