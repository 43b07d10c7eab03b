"""RENAL score on constructed kidneys: each component gives the expected points for a tumor placed on purpose.

The kidney is an ellipsoid (semi-axes 25 x 20 x 50 mm, LPS x y z) on the patient's right with a medial
notch: the renal sinus, 40 mm tall (polar lines at z = -20 and +20 mm from the kidney centre).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import phantoms
from RenalSegLib import labels as L
from RenalSegLib import measure, nephrometry

KIDNEY_CENTRE = np.array([-60.0, 0.0, 0.0])  # mm from the image centre; the image centre is the midline
KIDNEY_AXES = (25.0, 20.0, 50.0)
SINUS_CENTRE, SINUS_AXES = KIDNEY_CENTRE + [18.0, 0.0, 0.0], (14.0, 9.0, 20.0)  # opens medially (toward +x)


def kidney_with_tumor(centre, radius: float, direction=None) -> sitk.Image:
    """KiTS labels: the notched kidney with one spherical tumor at ``centre`` (mm from the kidney centre)."""
    image = phantoms.blank_image((110, 60, 66), (1.6, 1.6, 1.8), direction, pixel=sitk.sitkUInt8)
    points = phantoms.physical_grid(image) - phantoms.image_center(image)
    values = np.zeros(points.shape[:3], np.uint8)
    values[phantoms.ellipsoid(points, KIDNEY_CENTRE, KIDNEY_AXES) & ~phantoms.ellipsoid(points, SINUS_CENTRE, SINUS_AXES)] = L.KIDNEY
    values[phantoms.ellipsoid(points, KIDNEY_CENTRE + np.asarray(centre, float), (radius,) * 3)] = L.TUMOR
    labels = sitk.GetImageFromArray(values)
    labels.CopyInformation(image)
    return labels


def score(centre, radius: float, direction=None) -> dict:
    (result,) = nephrometry.renal_score(kidney_with_tumor(centre, radius, direction))
    assert result["kidney"] == "Right kidney"
    return result


def points(result: dict) -> dict:
    return {k: c.get("points", c.get("descriptor")) for k, c in result["components"].items()}


def test_sinus_is_found_medially_with_its_polar_lines() -> None:
    labels = kidney_with_tumor((-15.0, 0.0, 35.0), 5.0)
    anatomy = measure.analyse(labels)
    box, sinus = nephrometry.renal_sinus(anatomy, anatomy.kidneys[0])
    assert sinus is not None
    z = anatomy.points_lps(box, sinus)[:, 2] - phantoms.image_center(labels)[2]
    assert z.min() == pytest.approx(-20.0, abs=3.0) and z.max() == pytest.approx(20.0, abs=3.0)
    x = anatomy.points_lps(box, sinus)[:, 0].mean() - phantoms.image_center(labels)[0]
    assert x > KIDNEY_CENTRE[0]  # medial of the kidney centre


@pytest.mark.parametrize(
    "name,centre,radius,expected_e",
    [
        ("exophytic", (-31.0, 0.0, 30.0), 10.0, 1),  # centre 10 mm outside the lateral surface at z = 30
        ("partly_exophytic", (-17.0, 0.0, 28.0), 9.0, 2),  # straddles the lateral surface
        ("endophytic", (-9.0, 0.0, 30.0), 6.0, 3),  # deep in the upper pole's parenchyma
    ],
)
def test_exophytic_component(name, centre, radius, expected_e) -> None:
    assert points(score(centre, radius))["E"] == expected_e, name


@pytest.mark.parametrize(
    "name,centre,radius,expected_n",
    [
        ("two_mm_from_sinus", (-4.0, 0.0, 0.0), 6.0, 3),  # the sinus' lateral wall is at +4 mm
        ("five_mm_from_sinus", (-7.0, 0.0, 0.0), 6.0, 2),
        ("far_from_sinus", (-12.0, 0.0, 36.0), 6.0, 1),  # upper pole
    ],
)
def test_nearness_component(name, centre, radius, expected_n) -> None:
    result = score(centre, radius)
    assert points(result)["N"] == expected_n, (name, result["components"]["N"]["measurement"])


@pytest.mark.parametrize(
    "name,centre,radius,expected_l",
    [
        ("polar", (-12.0, 0.0, 36.0), 6.0, 1),  # entirely above the upper polar line (z = 20)
        ("crossing_a_polar_line", (-14.0, 0.0, 25.0), 7.0, 2),  # z 18-32: crosses the upper line, mostly above
        ("hilar", (-14.0, 0.0, 0.0), 7.0, 3),  # between the lines, across the axial midline
        ("lower_polar", (-12.0, 0.0, -36.0), 6.0, 1),
    ],
)
def test_location_component(name, centre, radius, expected_l) -> None:
    result = score(centre, radius)
    assert points(result)["L"] == expected_l, (name, result["components"]["L"]["measurement"])


@pytest.mark.parametrize("name,centre,expected_a", [("anterior", (-10.0, -12.0, 30.0), "a"), ("posterior", (-10.0, 12.0, 30.0), "p"),
                                                    ("neither", (-22.0, 0.0, 30.0), "x")])
def test_anterior_posterior_descriptor(name, centre, expected_a) -> None:
    assert points(score(centre, 6.0))["A"] == expected_a, name


def test_radius_points_follow_the_diameter_thresholds() -> None:
    assert [nephrometry._points(d, nephrometry.R_CM) for d in (2.0, 4.0, 4.1, 6.9, 7.0, 9.0)] == [1, 1, 2, 2, 3, 3]
    assert [nephrometry._points(d, nephrometry.N_MM, larger_is_worse=False) for d in (1.0, 4.0, 5.0, 7.0, 12.0)] == [3, 3, 2, 1, 1]
    big = score((-30.0, 0.0, 10.0), 22.0)  # a 44 mm tumor
    assert points(big)["R"] == 2 and big["components"]["R"]["value"] == pytest.approx(44.0, rel=0.03)


def test_total_score_and_complexity_are_reported_with_measurements() -> None:
    result = score((-2.0, -8.0, 0.0), 6.0)  # endophytic, about 1 mm from the sinus, hilar, anterior
    assert points(result) == {"R": 1, "E": 3, "N": 3, "A": "a", "L": 3}
    assert (result["total"], result["score"], result["complexity"]) == (10, "10a", "high")
    assert all(c["measurement"] for c in result["components"].values())


def test_score_is_the_same_on_an_oblique_mirrored_grid() -> None:
    direction = phantoms.oblique_direction(20.0, flip_lr=True)
    assert points(score((-2.0, -8.0, 0.0), 6.0, direction)) == {"R": 1, "E": 3, "N": 3, "A": "a", "L": 3}


def test_a_convex_kidney_without_sinus_leaves_n_and_l_uncomputed() -> None:
    p = phantoms.kidney_phantom(size=(64, 48, 40), spacing=(2.5, 2.5, 2.5))
    (result,) = nephrometry.renal_score(p.labels, p.ct)
    assert "N" not in result["components"] and "L" not in result["components"]
    assert result["total"] is None and any("renal sinus" in note for note in result["notes"])


def test_convex_hull_mask_of_an_l_shape_fills_its_notch() -> None:
    mask = np.zeros((5, 10, 10), bool)
    mask[:, 0:10, 0:3] = True
    mask[:, 7:10, 0:10] = True
    hull = nephrometry.convex_hull_mask(mask)
    assert hull[2, 5, 5] and hull[2, 9, 9] and not hull[2, 0, 9]
    assert hull.sum() == pytest.approx(5 * (100 - 7 * 7 / 2 - 3), abs=5 * 4)
