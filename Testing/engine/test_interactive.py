"""Click-to-refine sessions: crop-local changes, undo/redo/reset, locked labels, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import phantoms
from RenalSegLib import RenalSegError
from RenalSegLib import labels as L
from RenalSegLib import network as N
from RenalSegLib.inference import Segmenter
from RenalSegLib.interactive import RefinementSession
from RenalSegLib.preprocess import resample_onto
from RenalSegLib.training import STAGES

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    config = N.NetworkConfig.from_dict({**STAGES["fine"].__dict__, "filters": (4, 8, 16, 32, 64)})
    return Segmenter(networks={"fine": (N.build_network(config).eval(), config)}, device=torch.device("cpu"))


@pytest.fixture
def phantom() -> phantoms.Phantom:
    # 1.2 mm voxels over 240 mm: the 64-voxel (96 mm) crop is a strict part of the image.
    return phantoms.kidney_phantom(size=(200, 200, 60), spacing=(1.2, 1.2, 3.0), direction=phantoms.oblique_direction(10.0), noise_hu=5)


def _tumor_centre_lps(p: phantoms.Phantom) -> tuple[float, float, float]:
    return tuple(phantoms.image_center(p.ct) + np.array(phantoms.TUMOR["center"]))


def _without_tumor(p: phantoms.Phantom) -> np.ndarray:
    labels = sitk.GetArrayFromImage(p.labels)
    labels[labels == L.TUMOR] = L.KIDNEY
    return labels


class _Oracle:
    """Replaces the network: predicts the phantom's true labels on the cached grid (ignores guidance)."""

    def __init__(self, session: RefinementSession, p: phantoms.Phantom):
        self.truth = sitk.GetArrayFromImage(resample_onto(p.labels, session._grid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))

    def __call__(self, start, stop):
        box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
        return np.eye(4, dtype=np.float32)[self.truth[box]].transpose(3, 0, 1, 2)


def test_click_on_missed_tumor_restores_it_and_changes_only_the_crop(segmenter, phantom) -> None:
    start_labels = _without_tumor(phantom)
    session = RefinementSession(phantom.ct, start_labels, segmenter=segmenter)
    session._predict_crop = _Oracle(session, phantom)
    box = session.add_click(_tumor_centre_lps(phantom), positive=True)
    truth = sitk.GetArrayViewFromImage(phantom.labels)
    outside = np.ones(truth.shape, bool)
    outside[box] = False
    assert outside.any() and outside.sum() > truth.size / 2  # the crop is a small part of the volume
    np.testing.assert_array_equal(session.labels[outside], start_labels[outside])
    tumor = truth == L.TUMOR
    assert (session.labels[tumor] == L.TUMOR).mean() > 0.9  # boundary voxels differ by the 1.5 mm grid round trip


def test_undo_redo_reset_restore_exactly(segmenter, phantom) -> None:
    start_labels = _without_tumor(phantom)
    session = RefinementSession(phantom.ct, start_labels, segmenter=segmenter)
    session._predict_crop = _Oracle(session, phantom)
    session.add_click(_tumor_centre_lps(phantom))
    after_click = session.labels.copy()
    session.undo()
    np.testing.assert_array_equal(session.labels, start_labels)
    assert session.clicks == []
    session.redo()
    np.testing.assert_array_equal(session.labels, after_click)
    assert len(session.clicks) == 1
    session.reset()
    np.testing.assert_array_equal(session.labels, start_labels)
    session.undo()
    np.testing.assert_array_equal(session.labels, after_click)
    assert session.undo() is not None and session.undo() is None


def test_locked_labels_are_never_changed(segmenter, phantom) -> None:
    start_labels = _without_tumor(phantom)
    session = RefinementSession(phantom.ct, start_labels, segmenter=segmenter, locked_labels=(L.KIDNEY,))
    session._predict_crop = _Oracle(session, phantom)
    session.add_click(_tumor_centre_lps(phantom))
    kidney_before = start_labels == L.KIDNEY
    assert (session.labels[kidney_before] == L.KIDNEY).all()  # tumor voxels were kidney: locked, so unchanged
    assert not ((session.labels == L.KIDNEY) & ~kidney_before).any()


def test_real_network_click_runs_on_a_crop_only(segmenter, phantom) -> None:
    start_labels = sitk.GetArrayFromImage(phantom.labels)
    session = RefinementSession(phantom.ct, start_labels, segmenter=segmenter)
    box = session.add_click(_tumor_centre_lps(phantom), positive=False)
    outside = np.ones(start_labels.shape, bool)
    outside[box] = False
    np.testing.assert_array_equal(session.labels[outside], start_labels[outside])
    assert all(s.stop - s.start < n for s, n in zip(box[1:], start_labels.shape[1:]))


def test_click_outside_the_image_is_a_clear_error(segmenter, phantom) -> None:
    session = RefinementSession(phantom.ct, sitk.GetArrayFromImage(phantom.labels), segmenter=segmenter)
    with pytest.raises(RenalSegError, match="outside the image"):
        session.add_click((1e4, 0.0, 0.0))
    assert session.clicks == [] and session.undo() is None


def test_cyst_click_relabels_the_clicked_mass(segmenter, phantom) -> None:
    session = RefinementSession(phantom.ct, _without_tumor(phantom), segmenter=segmenter)
    session._predict_crop = _Oracle(session, phantom)
    session.add_click(_tumor_centre_lps(phantom), positive=True, label=L.CYST)
    tumor = sitk.GetArrayViewFromImage(phantom.labels) == L.TUMOR
    assert (session.labels[tumor] == L.CYST).mean() > 0.9
