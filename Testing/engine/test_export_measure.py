"""Measurements: analytic shapes measure to within 2 %, lesions find their kidney and pole, bad input is refused."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk

import phantoms
from RenalSegLib import measure
from RenalSegLib.errors import Cancelled, RenalSegError

GRIDS = {
    "axial": dict(spacing=(0.9, 1.0, 1.2), direction=None),
    "oblique_flipped": dict(spacing=(1.0, 0.9, 1.1), direction=phantoms.oblique_direction(25.0, flip_lr=True)),
}


def _shape(axes, grid) -> tuple[sitk.Image, tuple, np.ndarray]:
    image = phantoms.blank_image((64, 60, 50), grid["spacing"], grid["direction"], origin=(10.0, -20.0, 35.0))
    points = phantoms.physical_grid(image) - phantoms.image_center(image)
    mask = phantoms.ellipsoid(points, (0.37, -0.21, 0.44), axes)  # off the voxel grid on purpose
    return image, tuple(slice(0, n) for n in mask.shape), mask


@pytest.mark.parametrize("grid", GRIDS)
def test_sphere_measures_to_within_2_percent(grid) -> None:
    radius = 14.3
    metrics = measure.shape_metrics(*_shape((radius,) * 3, GRIDS[grid]))
    assert metrics["volume_ml"] == pytest.approx(4 / 3 * np.pi * radius**3 / 1000, rel=0.02)
    assert metrics["max_diameter_mm"] == pytest.approx(2 * radius, rel=0.02)
    np.testing.assert_allclose(metrics["axis_lengths_mm"], [2 * radius] * 3, rtol=0.02)
    assert metrics["sphericity"] == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("grid", GRIDS)
def test_ellipsoid_measures_to_within_2_percent(grid) -> None:
    axes = (22.0, 15.0, 10.0)  # a diagonal-free ellipsoid in LPS; the oblique grid samples it rotated
    metrics = measure.shape_metrics(*_shape(axes, GRIDS[grid]))
    assert metrics["volume_ml"] == pytest.approx(4 / 3 * np.pi * np.prod(axes) / 1000, rel=0.02)
    assert metrics["max_diameter_mm"] == pytest.approx(2 * axes[0], rel=0.02)
    np.testing.assert_allclose(metrics["axis_lengths_mm"], [2 * a for a in axes], rtol=0.02)
    # Sphericity of this ellipsoid: 0.922 (surface area from Knud Thomsen's formula, error < 1.1 %).
    assert metrics["sphericity"] == pytest.approx(0.922, rel=0.02)
    image, box, mask = _shape(axes, GRIDS[grid])
    np.testing.assert_allclose(metrics["centroid_lps_mm"], phantoms.image_center(image) + [0.37, -0.21, 0.44], atol=0.1)


def test_phantom_rows_name_kidney_side_pole_hu_and_ratio() -> None:
    p = phantoms.kidney_phantom(size=(80, 56, 44), spacing=(2.2, 2.0, 2.5), direction=phantoms.oblique_direction(-15.0, flip_lr=True))
    rows = {r["structure"]: r for r in measure.measure(p.labels, p.ct)}
    assert list(rows) == ["Right kidney", "Left kidney", "Renal tumor 1", "Renal cyst 1"]
    tumor, cyst = rows["Renal tumor 1"], rows["Renal cyst 1"]
    assert (tumor["kidney"], tumor["pole"]) == ("Right kidney", "upper")  # tumor 15 mm above the kidney centre
    assert (cyst["kidney"], cyst["pole"]) == ("Left kidney", "lower")  # cyst 25 mm below the left kidney centre
    assert tumor["hu_mean"] == pytest.approx(phantoms.HU["tumor"]) and tumor["hu_std"] == pytest.approx(0.0)
    assert rows["Right kidney"]["hu_mean"] == pytest.approx(phantoms.HU["kidney"])
    right = rows["Right kidney"]
    assert right["volume_with_lesions_ml"] == pytest.approx(right["volume_ml"] + tumor["volume_ml"])
    assert tumor["lesion_to_kidney_ratio"] == pytest.approx(tumor["volume_ml"] / right["volume_with_lesions_ml"])
    assert cyst["hu_mean"] == pytest.approx(phantoms.HU["cyst"])


def test_lesion_fragments_below_the_minimum_are_not_lesions() -> None:
    p = phantoms.kidney_phantom(size=(64, 48, 40), spacing=(2.5, 2.5, 2.5))
    values = sitk.GetArrayFromImage(p.labels)
    values[2, 2, 2] = 2  # one stray tumor voxel (15.6 mm3) far from everything
    labels = sitk.GetImageFromArray(values)
    labels.CopyInformation(p.labels)
    anatomy = measure.analyse(labels, p.ct)
    assert [s.name for s in anatomy.lesions] == ["Renal tumor 1", "Renal cyst 1"]
    assert anatomy.ignored_lesion_voxels == 1


def test_measurements_csv_has_units_in_its_header(tmp_path) -> None:
    p = phantoms.kidney_phantom(size=(64, 48, 40), spacing=(2.5, 2.5, 2.5))
    path = measure.write_measurements_csv(measure.measure(p.labels, p.ct), tmp_path / "m.csv")
    header, *lines = path.read_text().splitlines()
    assert "volume_mL" in header and "max_diameter_mm" in header and "HU_mean" in header
    assert len(lines) == 4 and lines[2].startswith("Renal tumor 1,tumor,Right kidney,upper,")


def test_label_map_and_ct_on_different_grids_are_refused() -> None:
    p = phantoms.kidney_phantom(size=(64, 48, 40), spacing=(2.5, 2.5, 2.5))
    other = phantoms.kidney_phantom(size=(64, 48, 40), spacing=(2.5, 2.5, 3.0))
    with pytest.raises(RenalSegError, match="different geometry"):
        measure.measure(p.labels, other.ct)


def test_empty_or_non_kits_label_maps_are_refused() -> None:
    p = phantoms.kidney_phantom(size=(64, 48, 40), spacing=(2.5, 2.5, 2.5))
    with pytest.raises(RenalSegError, match="empty"):
        measure.measure(p.labels * 0, p.ct)
    with pytest.raises(RenalSegError, match=r"values \[7\]"):
        measure.measure(sitk.Cast(p.labels + sitk.Cast(p.labels == 1, sitk.sitkUInt8) * 6, sitk.sitkUInt8), p.ct)
    with pytest.raises(RenalSegError, match=r"values \[-1\]"):
        measure.measure(sitk.Cast(p.labels, sitk.sitkInt16) - sitk.Cast(p.labels == 1, sitk.sitkInt16) * 2, p.ct)
    with pytest.raises(RenalSegError, match=r"values \[1.5\]"):
        measure.measure(sitk.Cast(p.labels, sitk.sitkFloat32) + sitk.Cast(p.labels == 1, sitk.sitkFloat32) * 0.5, p.ct)
    assert measure.measure(sitk.Cast(p.labels, sitk.sitkInt16), p.ct) == measure.measure(p.labels, p.ct)


def test_lesion_rows_give_the_mean_network_probability_over_the_lesion() -> None:
    p = phantoms.kidney_phantom(size=(64, 48, 40), spacing=(2.5, 2.5, 2.5))
    values = sitk.GetArrayViewFromImage(p.labels)
    percent = np.where(values == 1, 40, 0).astype(np.uint8)  # kidney tissue: not averaged into any lesion
    tumor = np.argwhere(values == 2)
    first_half = tuple(tumor[: len(tumor) // 2].T)
    percent[tuple(tumor.T)] = 90
    percent[first_half] = 60
    cyst = values == 3
    percent[cyst] = 25
    probability = sitk.GetImageFromArray(percent)
    probability.CopyInformation(p.labels)
    rows = {r["structure"]: r for r in measure.measure(p.labels, p.ct, lesion_probability=probability)}
    expected_tumor = (60 * (len(tumor) // 2) + 90 * (len(tumor) - len(tumor) // 2)) / len(tumor) / 100
    assert rows["Renal tumor 1"]["lesion_probability"] == pytest.approx(expected_tumor)
    assert rows["Renal cyst 1"]["lesion_probability"] == pytest.approx(0.25)
    assert rows["Right kidney"]["lesion_probability"] is None
    assert all(r["lesion_probability"] is None for r in measure.measure(p.labels, p.ct))  # no map, no figure


def test_a_probability_map_off_the_grid_not_in_percent_or_the_labels_themselves_is_refused() -> None:
    p = phantoms.kidney_phantom(size=(64, 48, 40), spacing=(2.5, 2.5, 2.5))
    other = phantoms.kidney_phantom(size=(64, 48, 40), spacing=(2.5, 2.5, 3.0))
    with pytest.raises(RenalSegError, match="not on the label map's grid"):
        measure.measure(p.labels, p.ct, lesion_probability=sitk.Cast(other.labels, sitk.sitkUInt8))
    with pytest.raises(RenalSegError, match="percentages"):
        measure.measure(p.labels, p.ct, lesion_probability=sitk.Cast(p.labels, sitk.sitkUInt8) * 60)
    with pytest.raises(RenalSegError, match="label map itself"):
        measure.measure(p.labels, p.ct, lesion_probability=p.labels)


def test_measuring_stops_when_cancelled() -> None:
    p = phantoms.kidney_phantom(size=(64, 48, 40), spacing=(2.5, 2.5, 2.5))
    cancel = threading.Event()
    assert measure.measure(p.labels, p.ct, cancel=cancel)  # not set: measures
    cancel.set()
    with pytest.raises(Cancelled):
        measure.measure(p.labels, p.ct, cancel=cancel)


def test_a_cache_reuses_the_shape_of_unchanged_structures_only(monkeypatch) -> None:
    p = phantoms.kidney_phantom(size=(64, 48, 40), spacing=(2.5, 2.5, 2.5))
    cache: dict = {}
    first = measure.measure(p.labels, p.ct, cache=cache)
    assert first == measure.measure(p.labels, p.ct) and len(cache) == len(first)

    values = sitk.GetArrayFromImage(p.labels)
    cyst = np.argwhere(values == 3)
    values[tuple(cyst[cyst[:, 0] == cyst[:, 0].max()].T)] = 1  # the cyst's top slice becomes kidney (a click's change)
    edited = sitk.GetImageFromArray(values)
    edited.CopyInformation(p.labels)
    measured = []
    original = measure.shape_metrics
    monkeypatch.setattr(measure, "shape_metrics", lambda image, box, mask: measured.append(mask.sum()) or original(image, box, mask))
    second = measure.measure(edited, p.ct, cache=cache)
    rows = {r["structure"]: r for r in second}
    assert sorted(measured) == sorted(round(rows[name]["volume_ml"] * 1000 / 2.5**3) for name in ("Renal cyst 1", "Left kidney"))
    assert len(cache) == len(second)  # the cache holds this call's structures only
    assert second == measure.measure(edited, p.ct)  # the same rows as without a cache
