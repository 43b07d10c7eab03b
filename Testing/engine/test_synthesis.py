"""Specification of CT synthesis from label maps: geometry, labels, anatomy placement, HU ranges, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import phantoms
from RenalSegLib import labels as L
from RenalSegLib.synthesis import PHASES, TISSUE_NAMES, SynthesisConfig, Synthesized, synthesize
from RenalSegLib.volume import index_to_physical, same_geometry

REALISTIC = SynthesisConfig(domain_randomization_rate=0.0)


def _small_phantom_labels(direction=None) -> sitk.Image:
    return phantoms.kidney_phantom(size=(80, 72, 48), spacing=(2.5, 2.5, 3.0), direction=direction).labels


@pytest.fixture(scope="module")
def kits_crop() -> sitk.Image:
    """A downsampled crop around the kidneys of a real KiTS23 label map (first array axis = slice axis)."""
    # Not the kits_labels_dir fixture: this fixture is module-scoped. Same place: ../shared beside the checkout.
    kits_labels = Path(__file__).resolve().parents[3] / "shared" / "data" / "kits23" / "labels"
    path = kits_labels / "case_00002.nii.gz"
    if not path.is_file():
        pytest.skip(f"KiTS23 label maps not found at {kits_labels} (the ../shared data of the development checkout)")
    labels = sitk.ReadImage(str(path))
    mask = sitk.GetArrayViewFromImage(labels) > 0
    k, j, i = (np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3))
    crop = labels[max(i[0] - 10, 0) : i[-1] + 10 : 2, max(j[0] - 20, 0) : j[-1] + 20 : 3, max(k[0] - 20, 0) : k[-1] + 20 : 3]
    return crop


def _tissue_x(result: Synthesized, name: str) -> float:
    tissues = sitk.GetArrayViewFromImage(result.tissues)
    kji = np.argwhere(tissues == TISSUE_NAMES.index(name))
    assert len(kji) > 0, f"no {name} voxels"
    return float(index_to_physical(result.tissues, kji[:, ::-1].astype(float))[:, 0].mean())


def test_output_has_the_input_geometry_and_unchanged_labels_for_an_oblique_phantom():
    labels = _small_phantom_labels(phantoms.oblique_direction(25.0))
    result = synthesize(labels, seed=1, config=REALISTIC)
    for image in (result.ct, result.labels, result.tissues):
        assert same_geometry(image, labels, tolerance=0.0)
    assert result.ct.GetPixelID() == sitk.sitkInt16
    assert result.labels.GetPixelID() == sitk.sitkUInt8 and result.tissues.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result.labels), sitk.GetArrayViewFromImage(labels))


def test_kits_axis_order_keeps_geometry_labels_and_places_organs_by_patient_side(kits_crop):
    direction = np.array(kits_crop.GetDirection()).reshape(3, 3)
    assert abs(direction[2, 0]) == 1.0  # KiTS: the first index axis (first array axis in nibabel) is the slice axis
    result = synthesize(kits_crop, seed=3, config=REALISTIC)
    assert same_geometry(result.ct, kits_crop, tolerance=0.0)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result.labels), sitk.GetArrayViewFromImage(kits_crop))
    midline = result.parameters["midline_x_mm"]
    assert _tissue_x(result, "liver") < midline < _tissue_x(result, "spleen")


@pytest.mark.parametrize("flip", [False, True])
def test_liver_on_patient_right_and_spleen_on_left_whatever_the_direction(flip):
    labels = _small_phantom_labels(phantoms.oblique_direction(0.0, flip_lr=flip))
    result = synthesize(labels, seed=5, config=REALISTIC)
    midline = result.parameters["midline_x_mm"]
    assert abs(midline - phantoms.image_center(labels)[0]) < 5.0
    assert _tissue_x(result, "liver") < midline - 20  # patient right = LPS -x
    assert _tissue_x(result, "spleen") > midline + 20
    assert _tissue_x(result, "ivc") < _tissue_x(result, "aorta")


def test_same_seed_gives_the_same_volume_and_another_seed_a_different_one():
    labels = _small_phantom_labels()
    a = sitk.GetArrayFromImage(synthesize(labels, seed=11).ct)
    b = sitk.GetArrayFromImage(synthesize(labels, seed=11).ct)
    c = sitk.GetArrayFromImage(synthesize(labels, seed=12).ct)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 10


def test_values_are_finite_ct_numbers_in_every_mode():
    labels = _small_phantom_labels()
    for rate in (0.0, 1.0):
        ct = sitk.GetArrayFromImage(synthesize(labels, seed=2, config=SynthesisConfig(domain_randomization_rate=rate)).ct)
        assert ct.min() >= -1024 and ct.max() <= 3071
        assert ct.std() > 50  # not a constant image


@pytest.mark.parametrize("phase", PHASES)
def test_clean_tissue_means_lie_within_the_configured_ranges(phase):
    config = SynthesisConfig(phase=phase, domain_randomization_rate=0.0, acquisition_effects=False)
    labels = _small_phantom_labels()
    result = synthesize(labels, seed=7, config=config)
    ct = sitk.GetArrayViewFromImage(result.ct)
    tissues = sitk.GetArrayViewFromImage(result.tissues)
    drawn = result.parameters["mean_hu"]
    ranges = config.hu_ranges[phase]
    checked = 0
    for name in ("renal_cortex", "renal_medulla", "liver", "spleen", "muscle", "subcutaneous_fat", "aorta", "cyst_fluid"):
        if name == "cyst_fluid" and result.parameters["cyst_type"] != "simple":
            continue
        low, high = ranges[name]
        assert low <= drawn[name] <= high, (name, drawn[name], ranges[name])
        values = ct[tissues == TISSUE_NAMES.index(name)]
        assert len(values) > 20, name
        assert abs(float(np.median(values)) - drawn[name]) < 15, (name, float(np.median(values)), drawn[name])
        checked += 1
    assert checked >= 7
    low, high = config.tumor_types[result.parameters["tumor_type"]]["hu"][phase]
    assert low <= drawn["tumor"] <= high
    tumor = ct[tissues == TISSUE_NAMES.index("tumor")]
    assert abs(float(np.median(tumor)) - drawn["tumor"]) < 45  # heterogeneous by design (texture SD up to 40 HU)


def test_realistic_mode_with_noise_keeps_tissue_medians_near_the_ranges():
    labels = _small_phantom_labels()
    config = SynthesisConfig(phase="nephrographic", domain_randomization_rate=0.0)
    result = synthesize(labels, seed=8, config=config)
    ct = sitk.GetArrayViewFromImage(result.ct)
    tissues = sitk.GetArrayViewFromImage(result.tissues)
    eroded = sitk.GetArrayViewFromImage(sitk.BinaryErode(sitk.Cast(result.tissues == TISSUE_NAMES.index("liver"), sitk.sitkUInt8), [2, 2, 2]))
    low, high = config.hu_ranges["nephrographic"]["liver"]
    assert low - 25 <= float(np.median(ct[eroded > 0])) <= high + 25  # cupping, bias and noise allowed
    air = ct[tissues == TISSUE_NAMES.index("air")]
    assert float(np.median(air)) < -900


def test_spacing_option_resamples_labels_onto_a_grid_of_the_same_extent():
    labels = _small_phantom_labels(phantoms.oblique_direction(10.0))
    result = synthesize(labels, seed=4, config=REALISTIC, spacing=(4.0, 4.0, 4.0))
    assert result.ct.GetSpacing() == (4.0, 4.0, 4.0)
    assert result.ct.GetSize() == (50, 45, 36)  # 80*2.5/4, 72*2.5/4, 48*3/4
    assert same_geometry(result.ct, result.labels, tolerance=0.0) and same_geometry(result.ct, result.tissues, tolerance=0.0)
    np.testing.assert_allclose(result.ct.GetDirection(), labels.GetDirection())
    # The same physical extent: the outer edges of the first voxels coincide.
    edge_in = labels.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5))
    edge_out = result.ct.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5))
    np.testing.assert_allclose(edge_in, edge_out, atol=1e-6)
    volume_in = (sitk.GetArrayViewFromImage(labels) == L.TUMOR).sum() * np.prod(labels.GetSpacing())
    volume_out = (sitk.GetArrayViewFromImage(result.labels) == L.TUMOR).sum() * 64.0
    assert abs(volume_out - volume_in) / volume_in < 0.25


def test_empty_label_map_still_gives_a_body():
    labels = sitk.Image(110, 110, 20, sitk.sitkUInt8)  # 440 x 440 x 80 mm: wider than any body
    labels.SetSpacing((4.0, 4.0, 4.0))
    result = synthesize(labels, seed=0, config=REALISTIC)
    ct = sitk.GetArrayViewFromImage(result.ct)
    assert (ct > -500).mean() > 0.2 and (ct < -900).mean() > 0.05


def test_parameters_are_json_ready_and_name_the_drawn_lesion_types():
    import json

    result = synthesize(_small_phantom_labels(), seed=9)
    parameters = json.loads(json.dumps(result.parameters))
    assert parameters["seed"] == 9 and parameters["phase"] in PHASES
    assert parameters["tumor_type"] in SynthesisConfig().tumor_types
    assert parameters["cyst_type"] in ("simple", "hyperdense", "complex")


def test_forced_tumor_types_change_the_tumor_intensity_as_configured():
    labels = _small_phantom_labels()
    medians = {}
    for tumor_type in ("papillary", "clear_cell"):
        config = SynthesisConfig(phase="corticomedullary", domain_randomization_rate=0.0, acquisition_effects=False,
                                 tumor_type_weights={tumor_type: 1.0})
        result = synthesize(labels, seed=3, config=config)
        assert result.parameters["tumor_type"] == tumor_type
        medians[tumor_type] = result.parameters["mean_hu"]["tumor"]
    assert 35 <= medians["papillary"] <= 100
    assert 128 <= medians["clear_cell"] <= 218


def test_roi_statistics_measure_the_known_phantom_tissues():
    from RenalSegLib.synthesis_qc import roi_statistics

    stats = roi_statistics(phantoms.kidney_phantom().ct)  # air -1000, fat ring -100, soft tissue 45, no noise
    assert stats["air"]["mean"] == pytest.approx(-1000.0)
    assert stats["subcutaneous_fat"]["mean"] == pytest.approx(-100.0)
    assert stats["muscle"]["mean"] == pytest.approx(45.0)
    assert stats["bone"]["n"] == 0


def test_preview_is_a_small_png_and_the_cli_writes_volumes_parameters_and_report(tmp_path):
    from RenalSegLib.cli import main
    from RenalSegLib.volume import read_labels, read_volume

    labels = _small_phantom_labels()
    source = tmp_path / "labels"
    source.mkdir()
    sitk.WriteImage(labels, str(source / "case_00001.nii.gz"))
    out = tmp_path / "synth"
    assert main(["synth", "--labels", str(source), "--out", str(out), "--n", "2", "--seed", "5", "--spacing", "4",
                 "--preview", "--report", "--domain-randomization-rate", "0"]) == 0
    for seed in (5, 6):
        ct = read_volume(out / f"case_00001_s{seed}_ct.nii.gz")
        assert same_geometry(ct, read_labels(out / f"case_00001_s{seed}_labels.nii.gz"))
        png = out / f"case_00001_s{seed}_preview.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 150_000
    assert len((out / "parameters.jsonl").read_text().splitlines()) == 2
    assert "| renal_cortex |" in (out / "realism_report.md").read_text()
    assert main(["synth", "--labels", str(source), "--out", str(out), "--spacing", "1", "2"]) == 2  # user error, one line
    kits_json = tmp_path / "kits23.json"
    kits_json.write_text('[{"case_id": "case_00001", "tumor_histologic_subtype": "papillary_rcc"}]')
    assert main(["synth", "--labels", str(source), "--out", str(tmp_path / "by_histology"), "--n", "2", "--spacing", "4",
                 "--kits-json", str(kits_json)]) == 0
    import json

    drawn = [json.loads(line) for line in (tmp_path / "by_histology" / "parameters.jsonl").read_text().splitlines()]
    assert [d["tumor_type"] for d in drawn] == ["papillary", "papillary"]


def test_cli_synthesises_the_held_out_or_tune_split_into_folders_ready_for_evaluation(tmp_path):
    from RenalSegLib.cli import main
    from RenalSegLib.evaluation import label_files

    source = tmp_path / "labels"
    source.mkdir()
    sitk.WriteImage(_small_phantom_labels(), str(source / "case_00000.nii.gz"))
    for n in range(1, 30):
        (source / f"case_{n:05d}.nii.gz").symlink_to(source / "case_00000.nii.gz")
    out = tmp_path / "held_out"
    assert main(["synth", "--labels", str(source), "--out", str(out), "--split", "held-out", "--layout", "folders", "--seed", "7",
                 "--spacing", "4", "--domain-randomization-rate", "0"]) == 0
    names = ["case_00009_s7", "case_00019_s8", "case_00029_s9"]
    assert sorted(label_files(out / "labels", "reference")) == names
    assert sorted(p.name for p in (out / "ct").iterdir()) == [f"{name}.nii.gz" for name in names]
    assert main(["synth", "--labels", str(source), "--out", str(tmp_path / "tune"), "--split", "tune", "--layout", "folders", "--spacing", "4"]) == 0
    assert sorted(p.name for p in (tmp_path / "tune" / "ct").iterdir()) == ["case_00004_s0.nii.gz"]
    assert main(["synth", "--labels", str(source / "case_00009.nii.gz"), "--out", str(tmp_path / "one"), "--split", "tune"]) == 2


def test_reconstruction_circle_blanks_the_corners_but_never_a_labelled_voxel():
    labels = _small_phantom_labels()
    result = synthesize(labels, seed=1, config=SynthesisConfig(domain_randomization_rate=0.0, fov_circle_rate=1.0))
    ct = sitk.GetArrayViewFromImage(result.ct)
    kits = sitk.GetArrayViewFromImage(result.labels)
    tissues = sitk.GetArrayViewFromImage(result.tissues)
    assert result.parameters["fov_circle"]
    assert (ct[:, 0, 0] == -1024).all() and (tissues[:, 0, 0] == TISSUE_NAMES.index("air")).all()
    assert ct[kits > 0].min() > -500


def test_a_solitary_kidney_still_gets_the_liver_on_the_right_and_the_spleen_on_the_left():
    labels = _small_phantom_labels(phantoms.oblique_direction(0.0, flip_lr=True))
    kits = sitk.GetArrayFromImage(labels)
    x = index_to_physical(labels, np.argwhere(kits >= 0)[:, ::-1].astype(float))[:, 0].reshape(kits.shape)
    centre_x = phantoms.image_center(labels)[0]
    kits[x > centre_x] = 0  # remove the left kidney (and its cyst): a nephrectomy
    solitary = sitk.GetImageFromArray(kits)
    solitary.CopyInformation(labels)
    result = synthesize(solitary, seed=2, config=REALISTIC)
    assert result.parameters["midline_x_mm"] == pytest.approx(centre_x, abs=1.0)
    assert _tissue_x(result, "liver") < centre_x < _tissue_x(result, "spleen")


def test_a_crop_around_one_kidney_keeps_the_spine_and_organs_out_of_the_kidney():
    labels = _small_phantom_labels()
    right_half = labels[:40, :, :]  # the crop holds the right kidney (LPS -x) only, centred near it
    result = synthesize(right_half, seed=4, config=REALISTIC)
    kidney_x = index_to_physical(right_half, np.argwhere(sitk.GetArrayViewFromImage(right_half) > 0)[:, ::-1].astype(float))[:, 0].mean()
    assert abs(result.parameters["midline_x_mm"] - kidney_x) == pytest.approx(70.0, abs=1.0)
