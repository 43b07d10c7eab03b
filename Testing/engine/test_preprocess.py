"""Resampling onto the networks' grids: the shortcuts (crop under the grid, block-average pyramid) keep the result."""

import numpy as np
import SimpleITK as sitk

from RenalSegLib.preprocess import grid_for_image, grid_for_region, resample_onto


def _noisy_ct(spacing=(0.8, 0.8, 1.5), size=(96, 80, 40)) -> sitk.Image:
    rng = np.random.default_rng(0)
    array = rng.normal(40.0, 200.0, tuple(reversed(size))).astype(np.int16)
    array[:, 20:50, 30:60] = 900  # a sharp bright block: edges are where resampling shortcuts would show
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    angle = np.deg2rad(20.0)
    image.SetDirection([np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0])
    image.SetOrigin((-30.0, 12.0, 100.0))
    return image


def _blur_then_resample(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """The plain definition: Gaussian (sigma = half the grid spacing) over the whole image, then linear."""
    factor = np.array(grid.GetSpacing()) / np.array(image.GetSpacing())
    sigma = [0.5 * g if f > 1.5 else 1e-3 * g for g, f in zip(grid.GetSpacing(), factor)]
    blurred = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma)
    return sitk.GetArrayFromImage(sitk.Resample(blurred, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32))


def test_resampling_a_region_blurs_only_under_it_with_the_same_result() -> None:
    ct = _noisy_ct()
    grid = grid_for_region(ct, (20, 15, 5), (70, 60, 30), 1.5, 8)
    np.testing.assert_allclose(sitk.GetArrayFromImage(resample_onto(ct, grid)), _blur_then_resample(ct, grid), atol=0.05)


def test_pyramid_downsampling_matches_the_direct_blur() -> None:
    ct = _noisy_ct()
    grid = grid_for_image(ct, 4.0)  # 5x coarser in-plane: block averaging by 2 first
    fast, direct = sitk.GetArrayFromImage(resample_onto(ct, grid)), _blur_then_resample(ct, grid)
    inside = direct > -1000  # grid voxels outside the CT take the default in both
    assert np.array_equal(inside, fast > -1000)
    # HU; the image has 200 HU noise and a 900 HU block (2.7 HU measured): the two low-passes differ far below both
    assert np.abs(fast - direct)[inside].mean() < 4.0
    assert np.abs(fast - direct)[inside].max() < 60.0


def test_downsampling_keeps_a_constant_image_constant() -> None:
    ct = sitk.GetImageFromArray(np.full((40, 80, 96), 123, np.int16))
    ct.SetSpacing((0.8, 0.8, 1.5))
    grid = grid_for_region(ct, (10, 10, 5), (86, 70, 35), 4.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(resample_onto(ct, grid)), 123.0, atol=0.5)
