"""Simulated clicks: the centre of the largest error region, with the right sign; missed-lesion clicks."""

from __future__ import annotations

import numpy as np

from RenalSegLib.clicksim import missed_lesion_clicks, next_click, user_click
from RenalSegLib.labels import CYST, KIDNEY, TUMOR


def ball(shape, center, radius):
    grid = np.indices(shape)
    return sum((grid[a] - center[a]) ** 2 for a in range(3)) <= radius**2


def test_a_missed_tumor_gets_a_positive_click_at_its_centre():
    reference = np.zeros((30, 30, 30), np.uint8)
    reference[ball(reference.shape, (12, 15, 17), 5)] = TUMOR
    prediction = np.zeros_like(reference)
    assert next_click(prediction, reference) == ((12, 15, 17), True)


def test_a_leak_larger_than_the_miss_gets_a_negative_click_in_the_leak():
    reference = np.zeros((40, 40, 40), np.uint8)
    reference[5:9, 5:9, 5:9] = TUMOR  # missed: 64 voxels
    prediction = np.zeros_like(reference)
    prediction[20:31, 20:31, 20:31] = TUMOR  # leaked: 1331 voxels, centre (25, 25, 25)
    assert next_click(prediction, reference) == ((25, 25, 25), False)


def test_the_largest_of_several_error_regions_wins():
    reference = np.zeros((40, 40, 40), np.uint8)
    reference[2:7, 2:7, 2:7] = TUMOR  # 125 voxels
    reference[20:29, 20:29, 20:29] = TUMOR  # 729 voxels, centre (24, 24, 24)
    reference[30:35, 2:12, 2:12] = TUMOR  # 500 voxels
    click = next_click(np.zeros_like(reference), reference)
    assert click == ((24, 24, 24), True)


def test_the_click_is_the_deepest_point_in_millimetres_on_anisotropic_voxels():
    # One error region: a cube A (5 x 5 x 5) joined to a slab B (3 x 11 x 11 voxels, thin along k).
    reference = np.zeros((20, 40, 40), np.uint8)
    reference[2:7, 2:7, 2:7] = TUMOR  # A, centre (4, 4, 4)
    reference[3:6, 7:18, 2:13] = TUMOR  # B, touches A; centre (4, 12, 7)
    prediction = np.zeros_like(reference)
    # Isotropic voxels: A's centre is 3 voxels deep, B's only 2 (its thickness along k).
    assert next_click(prediction, reference, spacing=(1.0, 1.0, 1.0)) == ((4, 4, 4), True)
    # Slices 4 mm apart: B is 8 mm thick and 11 mm wide, so its centre is now deeper than A's.
    assert next_click(prediction, reference, spacing=(4.0, 1.0, 1.0)) == ((4, 12, 7), True)


def test_an_error_region_at_the_image_border_is_clicked_inside_not_on_the_border():
    reference = np.zeros((20, 20, 20), np.uint8)
    reference[0:7, 0:20, 5:12] = TUMOR
    (k, j, i), positive = next_click(np.zeros_like(reference), reference)
    assert positive and k == 3 and 3 <= j <= 16 and i == 8


def test_no_click_when_the_target_class_is_exact_and_other_classes_are_ignored():
    reference = np.zeros((20, 20, 20), np.uint8)
    reference[5:15, 5:15, 5:15] = KIDNEY
    reference[8:11, 8:11, 8:11] = TUMOR
    prediction = reference.copy()
    prediction[5:8] = 0  # kidney error only: a 3-slice slab, 2 voxels deep at k = 6 (ties: first voxel)
    assert next_click(prediction, reference) is None
    assert next_click(prediction, reference, labels=(KIDNEY,)) == ((6, 6, 6), True)


def test_target_labels_combine_tumor_and_cyst():
    reference = np.zeros((20, 20, 20), np.uint8)
    reference[3:8, 3:8, 3:8] = CYST
    prediction = np.zeros_like(reference)
    assert next_click(prediction, reference) is None  # tumor alone is exact
    assert next_click(prediction, reference, labels=(TUMOR, CYST)) == ((5, 5, 5), True)


def test_missed_lesion_clicks_mark_each_lesion_with_no_overlap():
    reference = np.zeros((30, 30, 30), np.uint8)
    reference[2:28, 2:28, 2:28] = KIDNEY
    reference[4:9, 4:9, 4:9] = TUMOR  # found (as a cyst: any mass counts)
    reference[15:20, 15:20, 4:9] = TUMOR  # missed, centre (17, 17, 6)
    reference[20:25, 4:9, 20:25] = CYST  # missed, centre (22, 6, 22)
    prediction = np.zeros_like(reference)
    prediction[2:28, 2:28, 2:28] = KIDNEY
    prediction[7:12, 7:12, 7:12] = CYST
    clicks = missed_lesion_clicks(prediction, reference)
    assert sorted(clicks) == [((17, 17, 6), True, TUMOR), ((22, 6, 22), True, CYST)]  # each names its lesion's class
    assert missed_lesion_clicks(reference, reference) == []


def test_the_user_names_the_class_a_click_is_about():
    reference = np.zeros((20, 20, 20), np.uint8)
    reference[2:18, 2:18, 2:18] = KIDNEY
    reference[4:8, 4:8, 4:8] = TUMOR
    reference[12:16, 12:16, 12:16] = CYST
    assert user_click(((5, 5, 5), True), reference) == ((5, 5, 5), True, TUMOR)
    assert user_click(((10, 10, 10), False), reference) == ((10, 10, 10), False, TUMOR)  # a leak into kidney
    # A cyst predicted as tumor: the user says "cyst" there rather than erasing the mass.
    assert user_click(((13, 13, 13), False), reference) == ((13, 13, 13), True, CYST)
    # With masses as the target, a cyst is no error of class, so a negative click stays negative.
    assert user_click(((10, 10, 10), False), reference, target=(TUMOR, CYST)) == ((10, 10, 10), False, TUMOR)
