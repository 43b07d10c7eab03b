"""Evaluation: KiTS Dice / surface Dice on hand-computed cases, lesion detection, folders, CLI, click protocol."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from RenalSegLib import evaluation
from RenalSegLib.cli import main
from RenalSegLib.errors import RenalSegError
from RenalSegLib.guidance import encode_clicks
from RenalSegLib.labels import CYST, KIDNEY, TUMOR
from RenalSegLib.preprocess import normalize_ct


def sphere(shape, center, radius_mm, spacing) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((grid[a] - center[a]) * spacing[a]) ** 2 for a in range(3)) <= radius_mm**2


def test_two_cubes_with_known_overlap_give_hand_computed_dice():
    ref = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:12, 2:12, 2:12] = TUMOR
    pred[2:12, 2:12, 4:14] = TUMOR  # shifted 2 voxels along i: overlap 10 x 10 x 8 = 800 of 1000 + 1000
    row = evaluation.evaluate_case(pred, ref, (1.0, 1.0, 1.0))
    for hec in evaluation.HEC_NAMES:
        assert row[f"dice_{hec}"] == pytest.approx(0.8)


def test_hec_regions_nest_kidney_masses_and_tumor():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:18, 2:18, 2:18] = KIDNEY
    ref[5:10, 5:10, 5:10] = TUMOR
    pred = ref.copy()
    pred[pred == TUMOR] = CYST  # right mass, wrong kind
    row = evaluation.evaluate_case(pred, ref, (1.0, 1.0, 1.0))
    assert row["dice_kidney_and_masses"] == 1.0 and row["dice_masses"] == 1.0
    assert row["dice_tumor"] == 0.0 and row["surface_dice_tumor"] == 0.0


def test_surface_dice_is_one_for_a_shift_within_tolerance_and_honours_anisotropic_spacing():
    spacing = (3.0, 1.0, 1.0)  # (k, j, i) mm
    ref = sphere((16, 32, 32), (8, 16, 16), 9.0, spacing)
    shifted_in_i = sphere((16, 32, 32), (8, 16, 17), 9.0, spacing)  # 1 mm: within every KiTS tolerance
    shifted_in_k = sphere((16, 32, 32), (9, 16, 16), 9.0, spacing)  # 3 mm: beyond them
    near = evaluation.evaluate_case(shifted_in_i.astype(np.uint8) * TUMOR, ref.astype(np.uint8) * TUMOR, spacing)
    far = evaluation.evaluate_case(shifted_in_k.astype(np.uint8) * TUMOR, ref.astype(np.uint8) * TUMOR, spacing)
    for hec in evaluation.HEC_NAMES:
        assert near[f"surface_dice_{hec}"] == pytest.approx(1.0)
        # Dice from voxel counts: 742 shared voxels of 995 in each sphere.
        assert far[f"dice_{hec}"] == pytest.approx(2 * 742 / (995 + 995))
        # Value of DeepMind's surface_distance (the KiTS implementation) on the same masks.
        assert far[f"surface_dice_{hec}"] == pytest.approx(0.6903075, abs=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own internal deprecation notice
def test_surface_dice_on_a_bounding_box_crop_equals_monai_on_the_whole_volume():
    import torch
    from monai.metrics import compute_surface_dice

    spacing = (2.0, 0.8, 0.8)
    shape = (24, 48, 48)
    ref = sphere(shape, (10, 20, 22), 8.0, spacing)
    pred = sphere(shape, (11, 22, 21), 7.0, spacing)
    whole = compute_surface_dice(
        torch.from_numpy(pred[None, None].astype(np.float32)), torch.from_numpy(ref[None, None].astype(np.float32)),
        [1.15], include_background=True, spacing=list(spacing), use_subvoxels=True,
    )
    assert evaluation.surface_dice(pred, ref, spacing, 1.15) == pytest.approx(float(whole[0, 0]), abs=1e-6)


def test_empty_prediction_and_empty_reference_score_one_and_one_sided_empty_scores_zero():
    empty = np.zeros((8, 8, 8), np.uint8)
    row = evaluation.evaluate_case(empty, empty, (1.0, 1.0, 1.0))
    for hec in evaluation.HEC_NAMES:
        assert row[f"dice_{hec}"] == 1.0 and row[f"surface_dice_{hec}"] == 1.0
    assert row["lesions_reference"] == 0 and row["false_positive_lesions"] == 0 and math.isnan(row["lesion_recall"])
    only_reference = empty.copy()
    only_reference[2:5, 2:5, 2:5] = TUMOR
    row = evaluation.evaluate_case(empty, only_reference, (1.0, 1.0, 1.0))
    assert row["dice_tumor"] == 0.0 and row["surface_dice_tumor"] == 0.0 and row["dice_kidney_and_masses"] == 0.0


def kidney_with_tumor(tumor_radius_mm: float, spacing=(0.8, 0.8, 0.8)) -> sitk.Image:
    shape = (70, 70, 70)
    labels = np.zeros(shape, np.uint8)
    labels[sphere(shape, (35, 35, 35), 22.0, spacing)] = KIDNEY
    labels[sphere(shape, (35, 35, 50), tumor_radius_mm, spacing)] = TUMOR
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(spacing[::-1])
    return image


def test_grid_ceiling_is_perfect_on_the_labels_own_grid_and_falls_on_coarser_ones():
    labels = kidney_with_tumor(4.0)  # a 0.27 mL tumor inside the kidney, 0.8 mm voxels
    assert evaluation.grid_ceiling(labels, 0.8) == pytest.approx(dict.fromkeys(evaluation.HEC_NAMES, 1.0))
    fine, coarse = evaluation.grid_ceiling(labels, 1.5), evaluation.grid_ceiling(labels, 4.0)
    assert 0.5 < coarse["tumor"] < fine["tumor"] < 0.99
    assert fine["kidney_and_masses"] > fine["tumor"]


def test_a_missed_lesion_and_a_false_positive_lesion_are_counted():
    ref = np.zeros((30, 30, 30), np.uint8)
    ref[5:25, 5:25, 5:25] = KIDNEY
    ref[6:10, 6:10, 6:10] = TUMOR  # found
    ref[18:22, 18:22, 18:22] = CYST  # missed
    pred = np.zeros_like(ref)
    pred[5:25, 5:25, 5:25] = KIDNEY
    pred[8:11, 8:11, 8:11] = CYST  # overlaps the tumor: a mass found (kind does not matter for detection)
    pred[12:14, 20:23, 6:8] = TUMOR  # overlaps no reference lesion: false positive
    row = evaluation.evaluate_case(pred, ref, (1.0, 1.0, 1.0))
    assert (row["lesions_reference"], row["lesions_found"], row["lesions_predicted"], row["false_positive_lesions"]) == (2, 1, 2, 1)
    assert row["lesion_recall"] == 0.5 and row["lesion_precision"] == 0.5
    summary = evaluation.summarize([dict(row, case="a"), dict(evaluation.evaluate_case(ref, ref, (1.0, 1.0, 1.0)), case="b")])
    assert summary["lesion_recall"] == pytest.approx(3 / 4)  # pooled over both cases' lesions
    assert summary["lesion_precision"] == pytest.approx(3 / 4)
    assert summary["false_positives_per_case"] == pytest.approx(0.5)
    assert summary["dice_kidney_and_masses"] == pytest.approx((row["dice_kidney_and_masses"] + 1.0) / 2)


def test_detection_of_lesions_of_at_least_one_millilitre_is_reported_beside_the_pooled_recall():
    ref = np.zeros((40, 40, 40), np.uint8)
    ref[2:38, 2:38, 2:38] = KIDNEY
    ref[4:15, 4:15, 4:15] = TUMOR  # 1.331 mL at 1 mm: counted, found
    ref[20:29, 20:29, 20:29] = CYST  # 0.729 mL: below 1 mL, missed
    ref[4:15, 24:35, 24:35] = TUMOR  # 1.331 mL: counted, missed
    pred = np.zeros_like(ref)
    pred[2:38, 2:38, 2:38] = KIDNEY
    pred[6:12, 6:12, 6:12] = TUMOR
    row = evaluation.evaluate_case(pred, ref, (1.0, 1.0, 1.0))
    assert row["lesion_recall"] == pytest.approx(1 / 3)
    assert (row["lesions_reference_1ml"], row["lesions_found_1ml"], row["lesion_recall_1ml"]) == (2, 1, 0.5)
    coarse = evaluation.evaluate_case(pred, ref, (1.0, 1.0, 2.0))  # voxels of 2 uL: the small cyst is 1.458 mL now
    assert (coarse["lesions_reference_1ml"], coarse["lesions_found_1ml"]) == (3, 1)
    summary = evaluation.summarize([dict(row, case="a"), dict(coarse, case="b")])
    assert summary["lesion_recall_1ml"] == pytest.approx(2 / 5)  # pooled, like the recall of all lesions
    assert "recall>=1mL" in evaluation.format_table([dict(row, case="a")])
    # By class: the two tumors in each case (one found), the cyst only where it reaches 1 mL (missed).
    assert (row["tumors_reference_1ml"], row["tumors_found_1ml"], row["cysts_reference_1ml"], row["cysts_found_1ml"]) == (2, 1, 0, 0)
    assert (coarse["cysts_reference_1ml"], coarse["cysts_found_1ml"]) == (1, 0)
    assert (summary["tumor_recall_1ml"], summary["cyst_recall_1ml"]) == (0.5, 0.0)
    table = evaluation.format_table([dict(row, case="a"), dict(coarse, case="b")], summary)
    assert table.splitlines()[-1] == "lesions of at least 1 mL found: 2 of 4 tumors (0.50), 0 of 1 cysts (0.00)"


def test_a_mixed_lesion_counts_as_its_majority_class():
    ref = np.zeros((30, 30, 30), np.uint8)
    ref[2:28, 2:28, 2:28] = KIDNEY
    ref[4:14, 4:14, 4:10] = CYST  # 600 voxels ...
    ref[4:14, 4:14, 10:14] = TUMOR  # ... touching 400 of tumor: one 1 mL lesion, a cyst
    row = evaluation.evaluate_case(ref, ref, (1.0, 1.0, 1.0))
    assert (row["lesions_reference_1ml"], row["cysts_reference_1ml"], row["cysts_found_1ml"], row["tumors_reference_1ml"]) == (1, 1, 1, 0)


def test_summarizing_a_row_without_the_one_millilitre_counts_names_what_it_lacks():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[5:15, 5:15, 5:15] = KIDNEY
    row = dict(evaluation.evaluate_case(ref, ref, (1.0, 1.0, 1.0)), case="a")
    assert math.isnan(evaluation.summarize([row])["lesion_recall_1ml"])  # no lesion to find
    del row["lesions_found_1ml"]  # as in a row made by lesion_detection without voxel_ml
    with pytest.raises(RenalSegError, match="case a: no lesions_found_1ml"):
        evaluation.summarize([row])


def _summary_rows(dice_tumor: list[float], found: list[int], reference: list[int]) -> list[dict]:
    """Rows with the columns the summary figures are computed from (``SUMMARY_FIGURES``), one per case."""
    columns = {c for cs, _ in evaluation.SUMMARY_FIGURES.values() for c in cs}
    rows = []
    for n, (d, f, r) in enumerate(zip(dice_tumor, found, reference)):
        row = dict.fromkeys(columns, 1.0)
        row.update(case=f"case_{n:05d}", dice_tumor=d, lesions_found=f, lesions_reference=r, lesions_found_1ml=f,
                   lesions_reference_1ml=r, lesions_predicted=f + 1, false_positive_lesions=1)
        rows.append(row)
    return rows


def test_bootstrap_intervals_bracket_the_mean_and_collapse_where_cases_agree():
    rows = _summary_rows([0.0, 0.2, 0.5, 0.7, 0.9, 0.95, 0.3, 0.8], [0, 1, 1, 2, 1, 1, 0, 3], [1, 1, 2, 2, 1, 1, 1, 3])
    intervals = evaluation.confidence_intervals(rows)
    low, high = intervals["dice_tumor"]
    mean = np.mean([row["dice_tumor"] for row in rows])
    assert low < mean < high and high - low > 0.2  # eight cases this spread: a wide interval
    low, high = intervals["lesion_recall"]
    assert low < 9 / 12 < high  # pooled: found / reference over the resampled cases
    assert intervals["dice_kidney_and_masses"] == (1.0, 1.0)  # every case 1.0: nothing to be unsure of
    assert intervals["false_positives_per_case"] == (1.0, 1.0)
    assert evaluation.confidence_intervals(rows) == intervals  # seeded
    assert evaluation.confidence_intervals(rows[:1])["dice_tumor"] == (0.0, 0.0)  # one case: nothing to resample
    assert evaluation.confidence_intervals(rows, seed=1)["dice_tumor"] != intervals["dice_tumor"]


def test_a_comparison_resamples_the_same_cases_from_both_sets():
    base = _summary_rows([0.0, 0.2, 0.5, 0.7, 0.9, 0.3, 0.8, 0.4], [0, 1, 1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1])
    better = [dict(row, dice_tumor=row["dice_tumor"] + 0.05, lesions_found=1) for row in base]
    paired = evaluation.confidence_intervals(better, base)
    assert paired["dice_tumor"] == pytest.approx((0.05, 0.05))  # better on every case by 0.05, however the cases differ
    low, high = paired["lesion_recall"]
    assert low == 0 and high > 0  # finds the two lesions the baseline missed (a resample may hold neither), never fewer
    alone_low, alone_high = evaluation.confidence_intervals(better)["dice_tumor"]
    assert alone_high - alone_low > 0.3  # each set alone is far less certain than the difference
    table = evaluation.format_comparison(evaluation.summarize(_with_counts(better)), evaluation.summarize(_with_counts(base)), paired, "base")
    line = next(line for line in table.splitlines() if line.startswith("Dice tumor"))
    assert line.split()[2:] == ["0.5250", "0.4750", "+0.0500", "+0.0500", "to", "+0.0500", "*"]
    assert not next(line for line in table.splitlines() if line.startswith("Dice kid+mass")).endswith("*")  # no difference
    with pytest.raises(RenalSegError, match="same cases"):
        evaluation.confidence_intervals(better[1:], base[:-1])


def _with_counts(rows: list[dict]) -> list[dict]:
    """Summary rows completed with the per-class lesion counts ``summarize`` also wants."""
    counts = ("tumors_reference_1ml", "tumors_found_1ml", "cysts_reference_1ml", "cysts_found_1ml")
    return [dict(row, **dict.fromkeys(counts, 0)) for row in rows]


def _write(array: np.ndarray, path, spacing=(2.0, 2.0, 3.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def folders(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    ref = np.zeros((12, 16, 16), np.uint8)
    ref[2:10, 3:13, 3:13] = KIDNEY
    ref[4:7, 5:9, 5:9] = TUMOR
    pred = ref.copy()
    pred[4:7, 5:9, 5:7] = KIDNEY  # half of the tumor missed
    _write(ref, ref_dir / "case_00001.nii.gz")
    _write(pred, pred_dir / "case_00001.nrrd")  # pairs by name, whatever the format
    _write(ref, ref_dir / "case_00000.nii.gz")
    _write(ref, pred_dir / "case_00000.nii.gz")
    return pred_dir, ref_dir


def test_folders_pair_files_by_case_name_and_read_spacing_from_the_reference(folders):
    pred_dir, ref_dir = folders
    rows = evaluation.evaluate_folders(pred_dir, ref_dir, progress=False)
    assert [row["case"] for row in rows] == ["case_00000", "case_00001"]
    assert rows[0]["dice_tumor"] == 1.0
    assert rows[1]["dice_tumor"] == pytest.approx(2 * 24 / (24 + 48))
    assert rows[1]["dice_kidney_and_masses"] == 1.0


def test_the_table_shows_the_intervals_under_the_means(folders):
    rows = evaluation.evaluate_folders(*folders, progress=False)  # tumor Dice 1.0 and 2/3, kidney + masses 1.0 twice
    intervals = evaluation.confidence_intervals(rows)
    assert intervals["dice_tumor"] == pytest.approx((2 * 24 / 72, 1.0))
    last = evaluation.format_table(rows, intervals=intervals).splitlines()[-2]
    assert last.split()[:5] == ["95%", "CI", "1.000-1.000", "0.667-1.000", "0.667-1.000"]


def test_a_missing_pair_is_a_clear_error(folders):
    pred_dir, ref_dir = folders
    (pred_dir / "case_00000.nii.gz").unlink()
    with pytest.raises(RenalSegError, match="case_00000"):
        evaluation.evaluate_folders(pred_dir, ref_dir, progress=False)


def test_different_geometries_are_a_clear_error(folders):
    pred_dir, ref_dir = folders
    _write(np.zeros((12, 16, 16), np.uint8), pred_dir / "case_00000.nii.gz", spacing=(1.0, 1.0, 3.0))
    with pytest.raises(RenalSegError, match="geometry"):
        evaluation.evaluate_folders(pred_dir, ref_dir, progress=False)


def test_a_segment_map_instead_of_kits_labels_is_a_clear_error(folders):
    pred_dir, ref_dir = folders
    wrong = np.zeros((12, 16, 16), np.uint8)
    wrong[2:5, 2:5, 2:5] = 4  # "Renal cyst" segment value
    _write(wrong, pred_dir / "case_00000.nii.gz")
    with pytest.raises(RenalSegError, match="KiTS label map"):
        evaluation.evaluate_folders(pred_dir, ref_dir, progress=False)


def test_cli_prints_the_table_and_writes_the_csv(folders, tmp_path, capsys):
    pred_dir, ref_dir = folders
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", str(pred_dir), str(ref_dir), "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "case_00001" in printed and "mean" in printed
    with open(out) as stream:
        rows = list(csv.DictReader(stream))
    assert [row["case"] for row in rows] == ["case_00000", "case_00001", "mean"]
    assert float(rows[2]["dice_tumor"]) == pytest.approx((1.0 + 2 * 24 / 72) / 2)
    assert "95% CI" in printed


def test_cli_compares_with_a_baseline_case_by_case(folders, tmp_path, capsys):
    pred_dir, ref_dir = folders
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    for path in pred_dir.iterdir():  # the baseline: no tumor found at all
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
        array[array == TUMOR] = KIDNEY
        _write(array, base_dir / path.name)
    assert main(["evaluate", str(pred_dir), str(ref_dir), "--baseline", str(base_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"against {base_dir} (same 2 cases" in printed
    line = next(line for line in printed.splitlines() if line.startswith("Dice tumor"))
    assert line.split()[2:5] == [f"{(1.0 + 2 * 24 / 72) / 2:.4f}", "0.0000", f"+{(1.0 + 2 * 24 / 72) / 2:.4f}"]
    assert line.endswith("*")  # better on both cases
    assert main(["evaluate", str(pred_dir), str(ref_dir), "--baseline", str(base_dir), "--interactive", str(tmp_path)]) == 2
    assert "with --interactive use --interactive-baseline" in capsys.readouterr().err
    assert main(["evaluate", str(pred_dir), str(ref_dir), "--interactive-baseline", str(tmp_path / "clicks.json")]) == 2
    assert "it needs --interactive" in capsys.readouterr().err
    (base_dir / "case_00000.nii.gz").unlink()
    assert main(["evaluate", str(pred_dir), str(ref_dir), "--baseline", str(base_dir)]) == 2


def test_the_csv_is_utf8_whatever_the_locale(folders, tmp_path):
    """Case names come from file names, which need not be ASCII; the CSV is UTF-8 even where open()'s default is not."""
    import locale

    rows = evaluation.evaluate_folders(*folders, progress=False)
    rows[0]["case"] = "fall_müller_腎"
    saved = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # open()'s default encoding becomes ASCII (on Windows it is cp1252)
    try:
        evaluation.write_csv(rows, tmp_path / "metrics.csv")
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)
    with open(tmp_path / "metrics.csv", encoding="utf-8") as stream:
        assert [row["case"] for row in csv.DictReader(stream)] == ["fall_müller_腎", "case_00001", "mean"]


def test_cli_reports_a_missing_pair_with_exit_code_2(folders, capsys):
    pred_dir, ref_dir = folders
    (ref_dir / "case_00001.nii.gz").unlink()
    assert main(["evaluate", str(pred_dir), str(ref_dir)]) == 2
    assert "case_00001" in capsys.readouterr().err


# --- interactive protocol ---------------------------------------------------------------------------

def two_lesion_case():
    """Kidney with a tumor sphere and a cyst sphere; auto mode finds the cyst and misses the tumor."""
    spacing = (2.0, 2.0, 2.0)
    shape = (24, 32, 32)
    reference = np.zeros(shape, np.uint8)
    reference[sphere(shape, (12, 16, 16), 24.0, spacing)] = KIDNEY
    tumor = sphere(shape, (12, 16, 10), 8.0, spacing)
    reference[tumor] = TUMOR
    reference[sphere(shape, (12, 16, 23), 5.0, spacing)] = CYST
    auto = reference.copy()
    auto[tumor] = KIDNEY
    return reference, auto, tumor, spacing


def test_click_protocol_counts_clicks_to_threshold_and_lesion_misses_exactly():
    reference, auto, tumor, spacing = two_lesion_case()
    calls = []

    def oracle(clicks):  # a stand-in model that gets the tumor right from the third click on
        calls.append(list(clicks))
        return reference.copy() if len(clicks) >= 3 else auto.copy()

    run = evaluation.click_protocol(reference, spacing, oracle, max_clicks=10)
    assert run["dice"]["tumor"] == [0.0, 0.0, 0.0] + [1.0] * 8
    assert run["noc85"] == 3 and run["noc90"] == 3
    assert all(positive and tumor[index] and label == TUMOR for index, positive, label in calls[1])  # inside the missed tumor
    assert (run["lesions"], run["lesions_missed_auto"], run["lesions_missed_after_clicks"]) == (2, 1, 1)
    assert (run["clicks_played"], run["clicks_unchanged"]) == (3, 2)  # the first two clicks left auto mode's labels
    assert run["tumor_ml"] == pytest.approx(tumor.sum() * 8.0 / 1000.0)  # 2 mm voxels: 8 uL each
    # auto + 3 clicks (after which the tumor is exact and no click is left to place) + the missed-lesion session
    assert len(calls) == 5


def test_click_protocol_counts_what_positive_clicks_add_and_negative_clicks_remove_against_the_reference():
    reference, auto, tumor, spacing = two_lesion_case()
    leak = ndimage.binary_dilation(tumor, iterations=2) & (reference == KIDNEY)  # kidney around the tumor
    eroded = ndimage.binary_erosion(tumor)  # the tumor less its rim

    def model(clicks):  # click 1 (positive): tumor and leak; click 2 (negative): leak and rim gone; click 3: exact
        prediction = auto.copy()
        if len(clicks) >= 3:
            return reference.copy()
        if len(clicks) >= 1:
            prediction[(tumor | leak) if len(clicks) == 1 else eroded] = TUMOR
        return prediction

    run = evaluation.click_protocol(reference, spacing, model, max_clicks=3, noc_cap=3)
    assert [positive for _, positive, _ in run["clicks"]] == [True, False, True]
    rim = tumor & ~eroded
    assert (run["positive_added"], run["positive_added_true"]) == (tumor.sum() + leak.sum() + rim.sum(), tumor.sum() + rim.sum())
    assert (run["negative_removed"], run["negative_removed_true"]) == (leak.sum() + rim.sum(), rim.sum())
    result = evaluation.interactive_evaluation([("case", reference, spacing)], lambda name, method: model, methods=("gaussian",),
                                               max_clicks=3, noc_cap=3)["methods"]["gaussian"]
    assert result["positive_added_true_share"] == pytest.approx((tumor.sum() + rim.sum()) / (tumor.sum() + leak.sum() + rim.sum()))
    assert result["negative_removed_true_share"] == pytest.approx(rim.sum() / (leak.sum() + rim.sum()))


def test_click_protocol_names_the_class_a_user_would_click():
    """A cyst called tumor gets a positive cyst click (relabel), not a negative tumor click; so does a missed cyst."""
    reference, _, tumor, spacing = two_lesion_case()
    cyst = reference == CYST
    auto = reference.copy()
    auto[cyst] = TUMOR  # the cyst is called tumor
    calls = []

    def model(clicks):
        calls.append(list(clicks))
        prediction = auto.copy()
        for point, positive, label in clicks:
            if positive and cyst[point]:
                prediction[cyst] = label
        return prediction

    run = evaluation.click_protocol(reference, spacing, model, max_clicks=2, noc_cap=2)
    (point, positive, label), = calls[1]
    assert cyst[point] and positive and label == CYST
    assert run["dice"]["tumor"] == [pytest.approx(2 * tumor.sum() / (2 * tumor.sum() + cyst.sum())), 1.0, 1.0]
    sessions = []

    def misses_the_cyst(clicks):
        sessions.append(list(clicks))
        return np.where(cyst, KIDNEY, reference)

    evaluation.click_protocol(reference, spacing, misses_the_cyst, max_clicks=0, noc_cap=0)
    (point, positive, label), = sessions[-1]  # the one-click-per-missed-lesion session
    assert cyst[point] and positive and label == CYST


def test_click_protocol_caps_noc_when_the_threshold_is_never_reached():
    reference, auto, _, spacing = two_lesion_case()
    calls = []

    def stubborn(clicks):
        calls.append(len(clicks))
        return auto.copy()

    run = evaluation.click_protocol(reference, spacing, stubborn, max_clicks=4, noc_cap=7)
    assert run["noc85"] == 7 and run["noc90"] == 7
    assert len(run["dice"]["tumor"]) == 5
    assert calls == [0, 1, 2, 3, 4, 5, 6, 7, 1]  # clicks go on to the cap, then the missed-lesion session
    assert (run["clicks_played"], run["clicks_unchanged"]) == (7, 7)


def test_interactive_evaluation_reports_both_guidance_methods_side_by_side():
    reference, auto, _, spacing = two_lesion_case()
    hu = np.where(reference == TUMOR, 40.0, np.where(reference > 0, 220.0, -80.0)).astype(np.float32)
    image = normalize_ct(hu)

    def make_refine(name, method):
        def refine(clicks):  # stand-in model: thresholds the guidance the clicks produce
            prediction = auto.copy()
            guidance = encode_clicks(image, [(point, positive) for point, positive, _ in clicks], spacing, method)
            prediction[guidance[0] > 0.5] = TUMOR
            prediction[(guidance[1] > 0.5) & (prediction == TUMOR)] = KIDNEY
            return prediction

        return refine

    result = evaluation.interactive_evaluation([("case", reference, spacing)], make_refine, max_clicks=3, noc_cap=5)
    adaptive, gaussian = result["methods"]["adaptive"], result["methods"]["gaussian"]
    assert len(adaptive["dice"]["tumor"]) == 4 and adaptive["dice"]["tumor"][0] == 0.0
    assert adaptive["dice"]["tumor"][1] > gaussian["dice"]["tumor"][1]  # the adaptive mask fills the lesion
    assert adaptive["lesion_fn_rate_auto"] == 0.5 and adaptive["lesion_fn_rate_after_clicks"] == 0.0
    table = evaluation.format_interactive_table(result)
    assert "NoC@90" in table and "adaptive" in table and "gaussian" in table and "clicks changing nothing" in table
    assert "+ click adds, true" in table and "- click removes, true" in table
    assert [group["cases"] for group in gaussian["by_tumor_size"]] == [1, 0, 0]  # an 8 mm tumor sphere
    assert table.count("tumor figures by tumor size") == 2
    case = gaussian["cases"]["case"]
    assert case["clicks_played"] > 0 and gaussian["unchanged_click_rate"] == case["clicks_unchanged"] / case["clicks_played"]
    assert adaptive["intervals"]["tumor_dice"][1] == (adaptive["dice"]["tumor"][1],) * 2  # one case: no spread
    # A second case segmented perfectly from the start: the intervals span the two cases.
    two = evaluation.interactive_evaluation([("case", reference, spacing), ("perfect", reference, spacing)],
                                            lambda name, method: make_refine(name, method) if name == "case" else (lambda clicks: reference),
                                            methods=("gaussian",), max_clicks=3, noc_cap=5)["methods"]["gaussian"]
    assert two["dice"]["tumor"][0] == 0.5 and two["intervals"]["tumor_dice"][0] == (0.0, 1.0)
    low, high = two["intervals"]["noc90"]
    assert low == 0 and high == 5 and two["noc90"] == 2.5  # 0 clicks for the perfect case, the cap for the other
    lines = evaluation.format_interactive_table({**result, "methods": {"gaussian": two}}).splitlines()
    assert lines[2].split()[-1] == "0.000-1.000"  # click 0, tumor Dice interval
    assert lines[lines.index(next(line for line in lines if line.startswith("NoC@90"))) + 1].split() == ["95%", "CI", "0.0-5.0"]


def test_click_figures_by_tumor_size_split_at_the_tnm_bounds():
    def run(tumor_ml, curve, noc):
        return {"tumor_ml": tumor_ml, "dice": {"tumor": curve}, "noc85": noc, "noc90": noc}

    sphere_4cm = math.pi * 4.0 ** 3 / 6.0  # mL of a 4 cm sphere: the bound itself belongs to the smaller group
    assert evaluation.sphere_diameter_cm(sphere_4cm) == pytest.approx(4.0)
    runs = [run(1.0, [0.2, 0.4], 20), run(sphere_4cm, [0.6, 0.8], 4), run(50.0, [0.9, 0.95], 0),
            run(0.0, [1.0, 1.0], None)]  # no tumor: in no group
    small, middle, large = evaluation.by_tumor_size(runs)
    assert small["diameter_cm"] == [0.0, 4.0] and small["cases"] == 2
    assert small["tumor_dice"] == pytest.approx([0.4, 0.6]) and small["noc90"] == 12.0
    assert middle["cases"] == 1 and middle["tumor_dice"] == [0.9, 0.95] and middle["noc85"] == 0.0
    assert large["diameter_cm"] == [7.0, math.inf] and large["cases"] == 0 and math.isnan(large["noc90"])
    result = {"max_clicks": 1, "noc_cap": 20, "methods": {"gaussian": {
        "dice": {hec: [0.5, 0.6] for hec in evaluation.HEC_NAMES}, "intervals": {"tumor_dice": [(0.0, 1.0)] * 2, "noc85": (0, 20), "noc90": (0, 20)},
        "noc85": 8.0, "noc90": 8.0, "tumor_dice_auc": 0.55, "lesion_fn_rate_auto": 0.0, "lesion_fn_rate_after_clicks": 0.0,
        "unchanged_click_rate": 0.0, "positive_added_true_share": 0.5, "negative_removed_true_share": 0.1,
        "by_tumor_size": [small, middle, large]}}}
    lines = evaluation.format_interactive_table(result).splitlines()
    assert lines[-3].split() == ["up", "to", "4", "cm", "2", "0.600", "12.0", "12.0"]
    assert lines[-2].split() == ["4-7", "cm", "1", "0.950", "0.0", "0.0"]
    assert lines[-1].split() == ["over", "7", "cm", "0", "-", "nan", "nan"]


def _click_result(curves: dict[str, list[list[float]]], noc90: dict[str, list[int | None]]) -> dict:
    """An ``interactive_evaluation`` result reduced to what ``compare_interactive`` reads: per method, per case the
    tumor Dice after each click and NoC@85 / NoC@90."""
    return {"methods": {method: {"cases": {f"case_{i}": {"dice": {"tumor": curve}, "noc85": noc, "noc90": noc}
                                           for i, (curve, noc) in enumerate(zip(curves[method], noc90[method]))}}
                        for method in curves}}


def test_a_click_comparison_resamples_the_same_cases_from_both_evaluations():
    rng = np.random.default_rng(3)
    base_curves = np.sort(rng.uniform(0.3, 0.85, (6, 4)), axis=1)  # six cases, Dice after 0..3 clicks
    base = _click_result({"gaussian": base_curves.tolist(), "adaptive": base_curves.tolist()},
                         {"gaussian": [1, 2, 20, 3, None, 5], "adaptive": [1, 2, 20, 3, None, 5]})
    better = _click_result({"gaussian": (base_curves + 0.05).tolist()}, {"gaussian": [1, 1, 10, 3, None, 4]})
    comparison = evaluation.compare_interactive(better, base)
    assert list(comparison) == ["gaussian"]  # only the encodings both evaluations ran
    rows = {title: values for title, *values in comparison["gaussian"]}
    for k in range(4):
        this, baseline, low, high = rows[f"tumor Dice after {k}"]
        assert this - baseline == pytest.approx(0.05) and (low, high) == pytest.approx((0.05, 0.05))  # every case +0.05
    this, baseline, low, high = rows["NoC@90"]  # the case without a tumor left out
    assert (this, baseline) == pytest.approx((19 / 5, 31 / 5))
    assert low < this - baseline < high <= 0  # never more clicks than the baseline on any case
    table = evaluation.format_interactive_comparison(comparison, "old.json")
    assert table.splitlines()[0].startswith("gaussian clicks against old.json (same cases; 95% intervals")
    line = next(line for line in table.splitlines() if line.startswith("tumor Dice after 3"))
    assert line.endswith("*") and line.split()[-4:-1] == ["+0.0500", "to", "+0.0500"]
    assert next(line for line in table.splitlines() if line.startswith("NoC@90")).split()[1:4] == ["3.8000", "6.2000", "-2.4000"]
    with pytest.raises(RenalSegError, match="different cases"):
        evaluation.compare_interactive(_click_result({"gaussian": base_curves[:5].tolist()}, {"gaussian": [1] * 5}), base)
    with pytest.raises(RenalSegError, match="different numbers of clicks"):
        evaluation.compare_interactive(_click_result({"gaussian": base_curves[:, :3].tolist()}, {"gaussian": [1] * 6}), base)
    with pytest.raises(RenalSegError, match="share no click encoding"):
        evaluation.compare_interactive(better, _click_result({"adaptive": base_curves.tolist()}, {"adaptive": [1] * 6}))
