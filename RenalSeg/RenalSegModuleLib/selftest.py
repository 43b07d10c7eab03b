"""Scenario shared by the module's self-test in Slicer and the headless tests: a synthetic CT and a threshold engine."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from RenalSegLib import labels

_KIDNEYS_LPS = ((-55.0, 20.0, 0.0), (55.0, 20.0, 0.0))  # offsets from the image centre: patient right, left
_TUMOR_LPS = (-72.0, 20.0, 10.0)


def synthetic_ct(size=(64, 64, 40), spacing=(3.0, 3.0, 4.0)) -> sitk.Image:
    """A small CT-like volume in HU: air, a soft-tissue body, two enhancing kidneys and a tumor."""
    image = sitk.Image(list(size), sitk.sitkInt16)
    image.SetSpacing(list(spacing))
    k, j, i = np.meshgrid(*(np.arange(n) for n in reversed(size)), indexing="ij")
    centre = (np.array(size) - 1) / 2.0
    mm = [(axis - c) * s for axis, c, s in zip((i, j, k), centre, spacing)]
    values = np.full(k.shape, -1000, np.int16)
    values[(mm[0] / 140) ** 2 + (mm[1] / 100) ** 2 <= 1] = 40
    for x, y, z in _KIDNEYS_LPS:
        values[((mm[0] - x) / 22) ** 2 + ((mm[1] - y) / 18) ** 2 + ((mm[2] - z) / 40) ** 2 <= 1] = 180
    x, y, z = _TUMOR_LPS
    values[((mm[0] - x) / 12) ** 2 + ((mm[1] - y) / 12) ** 2 + ((mm[2] - z) / 12) ** 2 <= 1] = 110
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(image)
    return out


def threshold_engine(ct, *, device="auto", fast=False, flip_tta=False, min_lesion_probability=0.0, model_path=None, progress=None,
                     cancel=None) -> sitk.Image:
    """A stand-in engine: kidney where HU > 150, tumor where 90 < HU <= 150 (right for ``synthetic_ct`` only)."""
    if progress:
        progress(0.5, "thresholding")
    values = sitk.GetArrayViewFromImage(ct)
    kits = np.zeros(values.shape, np.uint8)
    kits[values > 150] = labels.KIDNEY
    kits[(values > 90) & (values <= 150)] = labels.TUMOR
    out = sitk.GetImageFromArray(kits)
    out.CopyInformation(ct)
    return out
