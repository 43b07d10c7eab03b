"""Labels: the left/right kidney split follows patient anatomy, whatever the array order."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import phantoms
from RenalSegLib import labels as L

DIRECTIONS = {
    "axial": None,
    "flipped_lr": np.diag([-1.0, 1.0, 1.0]),
    "flipped_ap": np.diag([1.0, -1.0, 1.0]),
    "oblique": phantoms.oblique_direction(30.0),
    "oblique_flipped": phantoms.oblique_direction(-20.0, flip_lr=True),
    "axes_permuted": np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),  # KiTS-like: i is cranio-caudal, x runs along j
}


def _centroid_lps(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    kji = np.argwhere(mask).mean(0)
    return np.array(image.TransformContinuousIndexToPhysicalPoint(kji[::-1].tolist()))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_segment_map_puts_each_kidney_on_its_patient_side(direction: str) -> None:
    p = phantoms.kidney_phantom(size=(72, 72, 72), spacing=(2.5, 2.5, 2.5), direction=DIRECTIONS[direction])
    segments = L.segment_map(p.labels, L.body_midline_x(p.ct))
    values = sitk.GetArrayViewFromImage(segments)
    centre = phantoms.image_center(p.ct)
    right = _centroid_lps(segments, values == L.SEGMENT_BY_NAME["Right kidney"].value) - centre
    left = _centroid_lps(segments, values == L.SEGMENT_BY_NAME["Left kidney"].value) - centre
    assert right[0] == pytest.approx(phantoms.RIGHT_KIDNEY["center"][0], abs=4.0)  # LPS -x is patient right
    assert left[0] == pytest.approx(phantoms.LEFT_KIDNEY["center"][0], abs=4.0)


def test_segment_map_keeps_lesions_and_inverts_exactly() -> None:
    p = phantoms.kidney_phantom()
    kits = sitk.GetArrayFromImage(p.labels)
    segments = sitk.GetArrayFromImage(L.segment_map(p.labels))
    assert np.array_equal(segments == L.SEGMENT_BY_NAME["Renal tumor"].value, kits == L.TUMOR)
    assert np.array_equal(segments == L.SEGMENT_BY_NAME["Renal cyst"].value, kits == L.CYST)
    np.testing.assert_array_equal(L.kits_labels_from_segments(segments), kits)


def test_single_kidney_side_uses_the_body_midline() -> None:
    p = phantoms.kidney_phantom()
    kits = sitk.GetArrayFromImage(p.labels)
    segments0 = sitk.GetArrayFromImage(L.segment_map(p.labels))
    kits[segments0 == L.SEGMENT_BY_NAME["Right kidney"].value] = 0  # right nephrectomy: only the left kidney remains
    only_left = sitk.GetImageFromArray(kits)
    only_left.CopyInformation(p.labels)
    segments = sitk.GetArrayFromImage(L.segment_map(only_left, L.body_midline_x(p.ct)))
    assert (segments == L.SEGMENT_BY_NAME["Left kidney"].value).sum() == (kits == L.KIDNEY).sum()
    assert not (segments == L.SEGMENT_BY_NAME["Right kidney"].value).any()


def test_region_masks_follow_kits_hecs() -> None:
    kits = np.array([0, 1, 2, 3])
    assert L.region_mask(kits, "kidney_and_masses").tolist() == [False, True, True, True]
    assert L.region_mask(kits, "masses").tolist() == [False, False, True, True]
    assert L.region_mask(kits, "tumor").tolist() == [False, False, True, False]


def test_segments_have_unique_values_names_colours_and_terminology() -> None:
    assert len({s.value for s in L.SEGMENTS}) == len({s.name for s in L.SEGMENTS}) == len({s.color for s in L.SEGMENTS}) == 4
    right = L.SEGMENT_BY_NAME["Right kidney"].slicer_terminology().split("~")
    assert right[2] == "SCT^64033007^Kidney" and right[3] == "SCT^24028007^Right"
    assert "SCT^108369006^Neoplasm" in L.SEGMENT_BY_NAME["Renal tumor"].slicer_terminology()
