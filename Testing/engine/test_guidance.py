"""Guidance channels from clicks: shape, range, channels by sign, image bounds, edges and radius caps."""

from __future__ import annotations

import numpy as np
import pytest

from RenalSegLib.errors import RenalSegError
from RenalSegLib.guidance import GAUSSIAN_SIGMA_VOXELS, MAX_RADIUS_MM, METHODS, encode_clicks
from RenalSegLib.preprocess import normalize_ct

SPACING = (1.5, 1.5, 1.5)


def bright_sphere(shape=(32, 32, 32), center=(16, 16, 16), radius=6.0, noise_hu=10.0):
    """Normalised CT: a 300 HU sphere in a 0 HU background, with noise; and the sphere mask."""
    grid = np.indices(shape, dtype=float)
    inside = sum((grid[a] - center[a]) ** 2 for a in range(3)) <= radius**2
    hu = np.where(inside, 300.0, 0.0) + np.random.default_rng(0).normal(0, noise_hu, shape)
    return normalize_ct(hu), inside


@pytest.mark.parametrize("method", METHODS)
def test_no_clicks_give_zero_guidance_of_the_image_shape(method):
    image, _ = bright_sphere()
    guidance = encode_clicks(image, [], SPACING, method)
    assert guidance.shape == (2, *image.shape) and guidance.dtype == np.float32
    assert not guidance.any()


@pytest.mark.parametrize("method", METHODS)
def test_positive_and_negative_clicks_fill_their_own_channel_with_values_in_0_1(method):
    image, _ = bright_sphere()
    positive = encode_clicks(image, [((16, 16, 16), True)], SPACING, method)
    negative = encode_clicks(image, [((16, 16, 16), False)], SPACING, method)
    assert positive[0, 16, 16, 16] == 1.0 and not positive[1].any()
    assert negative[1, 16, 16, 16] == 1.0 and not negative[0].any()
    np.testing.assert_array_equal(positive[0], negative[1])
    both = encode_clicks(image, [((16, 16, 16), True), ((2, 2, 2), False)], SPACING, method)
    assert both.min() >= 0.0 and both.max() <= 1.0
    assert both[0, 16, 16, 16] == 1.0 and both[1, 2, 2, 2] == 1.0 and both[0, 2, 2, 2] < 1.0


@pytest.mark.parametrize("method", METHODS)
def test_clicks_at_the_border_stay_inside_the_image_and_clicks_outside_are_errors(method):
    image, _ = bright_sphere()
    corner = encode_clicks(image, [((0, 0, 0), True), ((31, 31, 31), False)], SPACING, method)
    assert corner.shape == (2, *image.shape)
    assert corner[0, 0, 0, 0] == 1.0 and corner[1, 31, 31, 31] == 1.0
    with pytest.raises(RenalSegError, match="outside the image"):
        encode_clicks(image, [((32, 0, 0), True)], SPACING, method)
    with pytest.raises(RenalSegError, match="outside the image"):
        encode_clicks(image, [((0, -1, 0), True)], SPACING, method)


def test_gaussian_is_deepedits_sigma_3_voxels_and_ignores_the_image():
    image, inside = bright_sphere()
    guidance = encode_clicks(image, [((16, 16, 16), True)], (4.0, 1.0, 1.0), "gaussian")[0]
    for offset in (1, 3, 6):
        expected = np.exp(-(offset**2) / (2 * GAUSSIAN_SIGMA_VOXELS**2))
        assert guidance[16, 16, 16 + offset] == pytest.approx(expected, rel=1e-5)
        assert guidance[16 + offset, 16, 16] == pytest.approx(expected, rel=1e-5)  # voxels, not mm
    assert guidance[16, 16, 23] == pytest.approx(np.exp(-49 / 18), rel=1e-5)  # one voxel beyond the sphere's edge (radius 6): no edge stops it
    assert not inside[16, 16, 23]


def test_adaptive_mask_fills_a_bright_sphere_and_stops_at_its_edge():
    image, inside = bright_sphere()
    guidance = encode_clicks(image, [((16, 16, 16), True)], SPACING, "adaptive")[0]
    assert guidance[inside].mean() > 0.6
    assert guidance[16, 16, 20] > 0.5  # 4 voxels out from the click, still inside the sphere
    # Outside the sphere (beyond the voxel of partial volume the smoothing creates) the mask is zero,
    # where a Gaussian of the same click is not.
    grid = np.indices(image.shape)
    far_outside = sum((grid[a] - 16) ** 2 for a in range(3)) >= 7.5**2
    assert guidance[far_outside].max() == 0.0
    gaussian = encode_clicks(image, [((16, 16, 16), True)], SPACING, "gaussian")[0]
    assert gaussian[far_outside].max() > 0.01


def test_adaptive_mask_in_a_dark_sphere_stops_at_the_bright_background():
    image, inside = bright_sphere()
    inverted = -image  # a dark sphere in bright surroundings: the edge stops growth the other way too
    guidance = encode_clicks(inverted, [((16, 16, 16), False)], SPACING, "adaptive")[1]
    assert guidance[inside].mean() > 0.6 and guidance[~inside].max() < 0.5


def test_adaptive_radius_is_capped_in_millimetres_on_anisotropic_voxels():
    image = np.zeros((40, 100, 100), np.float32)  # homogeneous: nothing stops the growth but the cap
    spacing = (4.0, 1.0, 1.0)
    guidance = encode_clicks(image, [((20, 50, 50), True)], spacing, "adaptive")[0]
    nonzero = np.argwhere(guidance > 0)
    reach_mm = (np.abs(nonzero - (20, 50, 50)) * spacing).max(axis=0)
    assert reach_mm[0] < MAX_RADIUS_MM and reach_mm[0] >= MAX_RADIUS_MM - 4.0
    assert reach_mm[2] < MAX_RADIUS_MM and reach_mm[2] >= MAX_RADIUS_MM - 1.0


def test_adaptive_radius_scales_with_the_clicked_structure():
    small, small_inside = bright_sphere(radius=3.0)
    large, large_inside = bright_sphere(radius=9.0)
    small_guidance = encode_clicks(small, [((16, 16, 16), True)], SPACING, "adaptive")[0]
    large_guidance = encode_clicks(large, [((16, 16, 16), True)], SPACING, "adaptive")[0]
    assert (small_guidance > 0).sum() < (large_guidance > 0).sum() / 5
    assert small_guidance[~small_inside].max() < 0.5 and large_guidance[large_inside].mean() > 0.6


def test_unknown_method_is_a_clear_error():
    image, _ = bright_sphere()
    with pytest.raises(RenalSegError, match="guidance method"):
        encode_clicks(image, [((1, 1, 1), True)], SPACING, "sphere")


@pytest.mark.parametrize("method", METHODS)
def test_each_clicks_mask_is_the_same_alone_or_with_other_clicks(method):
    image, _ = bright_sphere(shape=(40, 64, 64), center=(20, 16, 16))
    alone = encode_clicks(image, [((20, 16, 16), True)], SPACING, method)
    with_far_click = encode_clicks(image, [((20, 16, 16), True), ((39, 63, 63), False)], SPACING, method)
    np.testing.assert_array_equal(alone[0], with_far_click[0])
    two_positive = encode_clicks(image, [((20, 16, 16), True), ((39, 63, 63), True)], SPACING, method)
    far_alone = encode_clicks(image, [((39, 63, 63), True)], SPACING, method)
    np.testing.assert_array_equal(two_positive[0], np.maximum(alone[0], far_alone[0]))


def test_adaptive_mask_covers_a_heterogeneous_lesion_despite_scattered_inconsistent_voxels():
    image, inside = bright_sphere(radius=9.0)
    speckle = np.random.default_rng(1).random(image.shape) < 0.05  # 5 % of voxels far darker (necrosis-like)
    speckle[16, 16, 16] = False
    image = np.where(speckle, normalize_ct(np.full(image.shape, -50.0)), image)
    guidance = encode_clicks(image, [((16, 16, 16), True)], SPACING, "adaptive")[0]
    assert (guidance[inside] > 0.5).mean() > 0.7
    grid = np.indices(image.shape)
    assert guidance[sum((grid[a] - 16) ** 2 for a in range(3)) >= 10.5**2].max() == 0.0
