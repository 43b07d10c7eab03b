"""Click-to-refine sessions: crop-local changes, undo/redo/reset, locked labels, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

import phantoms
from RenalSegLib import RenalSegError
from RenalSegLib import labels as L
from RenalSegLib import network as N
from RenalSegLib.inference import Segmenter
from RenalSegLib.interactive import RefinementSession, click_refiner
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
    # 1.2 mm voxels over 240 x 240 x 180 mm: every crop (72 to 144 mm) is a strict part of the image.
    return phantoms.kidney_phantom(size=(200, 200, 60), spacing=(1.2, 1.2, 3.0), direction=phantoms.oblique_direction(10.0), noise_hu=5)


def _tumor_centre_lps(p: phantoms.Phantom) -> tuple[float, float, float]:
    return tuple(phantoms.image_center(p.ct) + np.array(phantoms.TUMOR["center"]))


def _without_tumor(p: phantoms.Phantom) -> np.ndarray:
    labels = sitk.GetArrayFromImage(p.labels)
    labels[labels == L.TUMOR] = L.KIDNEY
    return labels


class _Oracle:
    """Replaces the network: predicts the phantom's true labels on the crop's grid (ignores guidance)."""

    def __init__(self, session: RefinementSession, p: phantoms.Phantom, truth: np.ndarray | None = None):
        self.labels = p.labels
        if truth is not None:
            self.labels = sitk.GetImageFromArray(truth)
            self.labels.CopyInformation(p.ct)
        self.shapes = []  # the network crops' shapes, one per forward pass

    def __call__(self, image, guidance, grid):
        self.shapes.append(image.shape)
        truth = sitk.GetArrayFromImage(resample_onto(self.labels, grid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
        return np.eye(4, dtype=np.float32)[truth].transpose(3, 0, 1, 2)


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
    box, before, after = session.last_change
    np.testing.assert_array_equal(before, start_labels[box])
    np.testing.assert_array_equal(after, after_click[box])
    session.undo()
    np.testing.assert_array_equal(session.labels, start_labels)
    assert session.clicks == [] and session.last_change is None
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


@pytest.mark.parametrize(("method", "first_mm"), [("gaussian", 72), ("adaptive", 96)])
def test_a_click_on_a_small_missed_tumor_takes_one_pass_of_its_encodings_first_crop(segmenter, phantom, method, first_mm) -> None:
    session = RefinementSession(phantom.ct, _without_tumor(phantom), segmenter=segmenter, guidance=method)
    oracle = _Oracle(session, phantom)
    session._predict_crop = oracle
    session.add_click(_tumor_centre_lps(phantom), positive=True)  # a 24 mm tumor: fits the first crop
    assert oracle.shapes == [(round(first_mm / session._grid.GetSpacing()[0]),) * 3]


def test_an_unknown_click_encoding_is_a_clear_error(segmenter, phantom) -> None:
    with pytest.raises(RenalSegError, match="unknown guidance method"):
        RefinementSession(phantom.ct, sitk.GetArrayFromImage(phantom.labels), segmenter=segmenter, guidance="sphere")


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


def test_a_tumor_and_a_cyst_in_one_mass_are_split_by_one_click_of_each_class(segmenter, phantom) -> None:
    """The tumor's medial half is fluid (a cyst beside it) and both are labelled tumor, as auto mode gives one
    mass one class. A cyst click there makes the whole mass cyst; a tumor click on the solid half then makes
    that half tumor and leaves the tissue the cyst click named cyst (before, each click relabelled the whole mass)."""
    centre = np.array(_tumor_centre_lps(phantom))
    grid = phantoms.physical_grid(phantom.ct)
    mass = sitk.GetArrayViewFromImage(phantom.labels) == L.TUMOR
    fluid = mass & (grid[..., 0] > centre[0] + 1.5)
    solid = mass & (grid[..., 0] < centre[0] - 1.5)
    hu = sitk.GetArrayFromImage(phantom.ct)
    hu[mass & (grid[..., 0] > centre[0])] = phantoms.HU["cyst"]
    ct = sitk.GetImageFromArray(hu)
    ct.CopyInformation(phantom.ct)
    truth = sitk.GetArrayFromImage(phantom.labels)
    truth[mass & (grid[..., 0] > centre[0])] = L.CYST
    session = RefinementSession(ct, sitk.GetArrayFromImage(phantom.labels), segmenter=segmenter)
    session._predict_crop = _Oracle(session, phantom, truth)
    session.add_click(tuple(centre + [6.0, 0.0, 0.0]), positive=True, label=L.CYST)
    assert (session.labels[mass] == L.CYST).mean() > 0.9  # the first class click: the whole mass
    session.add_click(tuple(centre - [6.0, 0.0, 0.0]), positive=True, label=L.TUMOR)
    assert (session.labels[solid] == L.TUMOR).mean() > 0.9
    assert (session.labels[fluid] == L.CYST).mean() > 0.9  # nearer the tissue clicked cyst than the tissue clicked tumor


def test_click_refiner_passes_the_named_class_and_replays_a_changed_history(segmenter, phantom) -> None:
    """The evaluation's simulated user calls a mass a cyst: the refiner relabels it; a new history starts over."""
    session = RefinementSession(phantom.ct, sitk.GetArrayFromImage(phantom.labels), segmenter=segmenter)
    session._predict_crop = _Oracle(session, phantom)
    refine = click_refiner(session)
    centre = tuple(int(v) for v in phantom.ct.TransformPhysicalPointToIndex(_tumor_centre_lps(phantom))[::-1])
    tumor = sitk.GetArrayViewFromImage(phantom.labels) == L.TUMOR
    assert (refine([(centre, True, L.CYST)])[tumor] == L.CYST).mean() > 0.9
    assert (refine([(centre, True, L.TUMOR)])[tumor] == L.TUMOR).mean() > 0.9  # not an extension: reset, then replay
    assert [click.label for click in session.clicks] == [L.TUMOR]


def test_lesion_click_leaves_kidney_and_other_lesions_alone(segmenter, phantom) -> None:
    """The network's proposal also erases the kidney and adds a spurious mass in the crop: only the clicked mass is taken."""
    start_labels = _without_tumor(phantom)
    truth = sitk.GetArrayFromImage(phantom.labels)
    proposal = np.where(truth == L.KIDNEY, L.BACKGROUND, truth)
    centre = phantoms.image_center(phantom.ct) + np.array(phantoms.TUMOR["center"])
    spurious = phantoms.ellipsoid(phantoms.physical_grid(phantom.ct), centre + np.array([0.0, 0.0, -30.0]), (5.0, 5.0, 5.0))
    proposal[spurious] = L.CYST
    session = RefinementSession(phantom.ct, start_labels, segmenter=segmenter)
    session._predict_crop = _Oracle(session, phantom, proposal)
    session.add_click(tuple(centre), positive=True)
    tumor = truth == L.TUMOR
    assert (session.labels[tumor] == L.TUMOR).mean() > 0.85  # less its partial-volume rim, outside the clicked tissue
    elsewhere = ~ndimage.binary_dilation(tumor, iterations=2) & ~spurious  # the 1.5 mm round trip moves the border by a voxel
    np.testing.assert_array_equal(session.labels[elsewhere], start_labels[elsewhere])
    assert not (session.labels[spurious] == L.CYST).any()


def test_negative_click_only_removes_from_the_clicked_mass(segmenter, phantom) -> None:
    """The network, told "not tumor" on a tumor that leaks into kidney, drops the leak, calls the rest cyst and grows
    it into kidney on the far side: only the removal is taken."""
    truth = sitk.GetArrayFromImage(phantom.labels)
    grid = phantoms.physical_grid(phantom.ct)
    centre = phantoms.image_center(phantom.ct) + np.array(phantoms.TUMOR["center"])
    tumor = truth == L.TUMOR
    leak = phantoms.ellipsoid(grid, centre + np.array([16.0, 0.0, 0.0]), (7.0, 7.0, 7.0)) & (truth == L.KIDNEY)  # medial
    grown = phantoms.ellipsoid(grid, centre + np.array([0.0, 0.0, -16.0]), (7.0, 7.0, 7.0)) & (truth == L.KIDNEY)  # caudal
    start_labels = truth.copy()
    start_labels[leak] = L.TUMOR
    proposal = truth.copy()
    proposal[tumor | grown] = L.CYST
    session = RefinementSession(phantom.ct, start_labels, segmenter=segmenter)
    session._predict_crop = _Oracle(session, phantom, proposal)
    session.add_click(tuple(centre + np.array([18.0, 0.0, 0.0])), positive=False)
    inner = ndimage.binary_erosion(leak)  # the 1.5 mm round trip moves borders by a voxel
    assert inner.any() and (session.labels[inner] == L.KIDNEY).all()
    assert (session.labels[ndimage.binary_erosion(tumor)] == L.TUMOR).all()  # not turned into cyst
    assert not np.isin(session.labels[grown], L.LESION_LABELS).any()


def _false_island(phantom) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The phantom's true labels, its voxels' LPS points, a ball of kidney in the left kidney, and its centre (LPS)."""
    truth = sitk.GetArrayFromImage(phantom.labels)
    grid = phantoms.physical_grid(phantom.ct)
    centre = phantoms.image_center(phantom.ct) + np.array([55.0, 20.0, 15.0])
    island = phantoms.ellipsoid(grid, centre, (8.0, 8.0, 8.0))
    assert (truth[island] == L.KIDNEY).all()
    return truth, grid, island, centre


@pytest.mark.parametrize("cut_mm, erased", [(3.0, True), (0.0, True), (-1.5, False), (-3.0, False)])
def test_negative_click_erases_a_false_lesion_the_network_drops_most_of(segmenter, phantom, cut_mm, erased) -> None:
    """A false tumor in the left kidney; told "not tumor", the network keeps only its part on the patient's
    left. Dropping 82 % or 57 % of it (the network keeps what lies 3 mm or 0 mm left of its centre; shares as
    the merge sees them, after resampling) erases it all; dropping 47 % or 32 % (it keeps all but the right
    6.5 or 5 mm, under ``NEGATIVE_ERASE_SHARE``) removes only that."""
    truth, grid, island, centre = _false_island(phantom)
    start_labels = truth.copy()
    start_labels[island] = L.TUMOR
    kept = island & (grid[..., 0] > centre[0] + cut_mm)
    proposal = truth.copy()
    proposal[kept] = L.TUMOR
    session = RefinementSession(phantom.ct, start_labels, segmenter=segmenter)
    session._predict_crop = _Oracle(session, phantom, proposal)
    session.add_click(tuple(centre), positive=False)
    if erased:
        assert (session.labels[island] == L.KIDNEY).all()
    else:
        assert (session.labels[kept] == L.TUMOR).mean() > 0.8  # kept, but for resampling at its edge
        assert (session.labels[island & ~ndimage.binary_dilation(kept, iterations=2)] == L.KIDNEY).all()
    np.testing.assert_array_equal(session.labels[~island], truth[~island])


def test_negative_click_erases_a_false_mass_of_both_classes_when_the_clicked_class_is_dropped(segmenter, phantom) -> None:
    """A false mass, tumor on the patient's right half and cyst on the left; told "not tumor" on its tumor half,
    the network drops that half and keeps the cyst: under half of the mass but all of the class clicked, so
    the whole mass goes, the cyst with it."""
    truth, grid, island, centre = _false_island(phantom)
    cyst_half = island & (grid[..., 0] > centre[0])
    start_labels = truth.copy()
    start_labels[island] = L.TUMOR
    start_labels[cyst_half] = L.CYST
    proposal = truth.copy()
    proposal[cyst_half] = L.CYST
    session = RefinementSession(phantom.ct, start_labels, segmenter=segmenter)
    session._predict_crop = _Oracle(session, phantom, proposal)
    session.add_click(tuple(centre - np.array([4.0, 0.0, 0.0])), positive=False)
    assert (session.labels[island] == L.KIDNEY).all()
    np.testing.assert_array_equal(session.labels[~island], truth[~island])


@pytest.mark.parametrize("positive", [False, True])
def test_after_a_negative_click_a_mass_needs_half_the_foreground_probability(segmenter, phantom, positive) -> None:
    """A leak the network still gives 40 % mass probability: a mass in auto mode (MASS_SHARE 0.3) and after a
    positive click, kidney after a negative one; the tumor itself (all mass) stays."""
    truth = sitk.GetArrayFromImage(phantom.labels)
    grid = phantoms.physical_grid(phantom.ct)
    centre = phantoms.image_center(phantom.ct) + np.array(phantoms.TUMOR["center"])
    leak = phantoms.ellipsoid(grid, centre + np.array([16.0, 0.0, 0.0]), (7.0, 7.0, 7.0)) & (truth == L.KIDNEY)
    start_labels = truth.copy()
    start_labels[leak] = L.TUMOR
    soft = sitk.GetImageFromArray(leak.astype(np.uint8))
    soft.CopyInformation(phantom.ct)
    oracle = _Oracle(None, phantom, start_labels)

    def predict(image, guidance, crop_grid):
        probabilities = oracle(image, guidance, crop_grid)
        in_leak = sitk.GetArrayFromImage(resample_onto(soft, crop_grid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
        probabilities[:, in_leak] = np.array([0.0, 0.6, 0.4, 0.0], np.float32)[:, None]
        return probabilities

    session = RefinementSession(phantom.ct, start_labels, segmenter=segmenter)
    session._predict_crop = predict
    session.add_click(tuple(centre + np.array([18.0, 0.0, 0.0])), positive=positive)
    inner = ndimage.binary_erosion(leak)  # the 1.5 mm round trip moves borders by a voxel
    assert inner.any() and (session.labels[inner] == (L.TUMOR if positive else L.KIDNEY)).all()
    assert (session.labels[ndimage.binary_erosion(truth == L.TUMOR)] == L.TUMOR).all()


def test_kidney_click_restores_kidney(segmenter, phantom) -> None:
    truth = sitk.GetArrayFromImage(phantom.labels)
    start_labels = truth.copy()
    centre = phantoms.image_center(phantom.ct) + np.array(phantoms.LEFT_KIDNEY["center"])
    hole = phantoms.ellipsoid(phantoms.physical_grid(phantom.ct), centre, (10.0, 10.0, 10.0)) & (truth == L.KIDNEY)
    start_labels[hole] = L.BACKGROUND
    session = RefinementSession(phantom.ct, start_labels, segmenter=segmenter)
    session._predict_crop = _Oracle(session, phantom)
    session.add_click(tuple(centre), positive=True, label=L.KIDNEY)
    assert (session.labels[hole] == L.KIDNEY).mean() > 0.9


def test_positive_click_adds_mass_only_over_the_clicked_tissue(segmenter, phantom) -> None:
    """Told "tumor here", the network grows the missed tumor 10 mm into the kidney around it: the click
    restores the tumor and leaves the kidney (other intensities) kidney, but for a thin band where the
    smoothed kidney-fat edge looks like tumor."""
    truth = sitk.GetArrayFromImage(phantom.labels)
    grid = phantoms.physical_grid(phantom.ct)
    centre = np.array(_tumor_centre_lps(phantom))
    radius = phantoms.TUMOR["axes"][0]
    distance = np.linalg.norm(grid - centre, axis=-1)
    overgrown = (distance < radius + 10.0) & (truth == L.KIDNEY)
    proposal = truth.copy()
    proposal[overgrown] = L.TUMOR
    session = RefinementSession(phantom.ct, _without_tumor(phantom), segmenter=segmenter)
    session._predict_crop = _Oracle(session, phantom, proposal)
    session.add_click(tuple(centre), positive=True)
    assert (session.labels[(truth == L.TUMOR) & (distance < radius - 2.0)] == L.TUMOR).all()
    beyond = overgrown & (distance > radius + 3.0)  # past the edge's partial volume
    assert (session.labels[beyond] == L.KIDNEY).mean() > 0.9


def test_large_lesion_grows_the_crop_with_one_network_window_per_pass(segmenter, phantom) -> None:
    """A missed 120 mm tumor, wider than the first crops (72 and 96 mm): the crop grows; the click adds the tumor
    within its reach (the adaptive mask's 40 mm cap) and nothing outside the tumor."""
    from RenalSegLib.guidance import MAX_RADIUS_MM

    centre = phantoms.image_center(phantom.ct) + np.array(phantoms.TUMOR["center"])
    grid = phantoms.physical_grid(phantom.ct)
    big = phantoms.ellipsoid(grid, centre, (60.0, 60.0, 60.0))
    truth = sitk.GetArrayFromImage(phantom.labels)
    truth[big] = L.TUMOR
    values = sitk.GetArrayFromImage(phantom.ct)
    values[big] = phantoms.HU["tumor"]
    ct = sitk.GetImageFromArray(values)
    ct.CopyInformation(phantom.ct)
    start_labels = _without_tumor(phantom)
    session = RefinementSession(ct, start_labels, segmenter=segmenter)
    oracle = _Oracle(session, phantom, truth)
    session._predict_crop = oracle
    session.add_click(tuple(centre), positive=True)
    assert len(oracle.shapes) > 1  # grown
    patch = segmenter.networks["fine"][1].patch_size
    assert all(np.all(np.array(shape) <= patch) for shape in oracle.shapes)
    near = np.linalg.norm(grid - centre, axis=-1) < MAX_RADIUS_MM - 3.0
    assert (session.labels[big & near] == L.TUMOR).mean() > 0.9
    assert not (session.labels[~big] == L.TUMOR).any()


@pytest.mark.parametrize("method", ["adaptive", "gaussian"])
def test_crop_guidance_equals_encoding_the_clicks_on_the_whole_cached_grid(segmenter, phantom, method) -> None:
    from RenalSegLib.guidance import encode_clicks
    from RenalSegLib.volume import physical_to_index

    session = RefinementSession(phantom.ct, sitk.GetArrayFromImage(phantom.labels), segmenter=segmenter, guidance=method)
    session._predict_crop = _Oracle(session, phantom)
    centre = phantoms.image_center(phantom.ct) + np.array(phantoms.TUMOR["center"])
    session.add_click(tuple(centre), positive=True)
    session.add_click(tuple(centre + np.array([0.0, 0.0, 14.0])), positive=False)
    spacing = session._grid.GetSpacing()[::-1]
    voxels = [np.round(physical_to_index(session._grid, np.array(c.point_lps))[0][::-1]).astype(int) for c in session.clicks]
    whole = encode_clicks(session._image, [(v, c.positive) for v, c in zip(voxels, session.clicks)], spacing, method)
    start, stop = session._crop_box(voxels[0], 64)
    _, guidance, _ = session._network_input(start, stop)
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    np.testing.assert_array_equal(guidance, whole[(slice(None), *box)])
    assert guidance[0].max() == 1.0 and guidance[1].max() == 1.0


def test_a_memory_channel_network_sees_the_current_masses_on_its_crop(phantom) -> None:
    """4-channel fine networks get the current tumor/cyst mask on the crop's grid as their last input channel."""
    config = N.NetworkConfig.from_dict({**STAGES["fine"].__dict__, "filters": (4, 8, 16, 32, 64), "in_channels": 4})
    memory = Segmenter(networks={"fine": (N.build_network(config).eval(), config)}, device=torch.device("cpu"))
    session = RefinementSession(phantom.ct, sitk.GetArrayFromImage(phantom.labels), segmenter=memory)
    seen = []

    def capture(image, guidance, grid):
        seen.append((guidance, grid))
        return memory.predict("fine", image, guidance)

    session._predict_crop = capture
    session.add_click(_tumor_centre_lps(phantom), positive=True)
    guidance, grid = seen[0]
    assert guidance.shape[0] == 3
    truth = sitk.GetArrayFromImage(resample_onto(phantom.labels, grid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    np.testing.assert_array_equal(guidance[2], np.isin(truth, L.LESION_LABELS).astype(np.float32))
    assert guidance[2].any() and guidance[0].max() > 0.5  # the tumor is in the crop, and so is the click


@pytest.mark.parametrize("method", ["adaptive", "gaussian"])
def test_a_positive_click_reach_is_its_clicked_tissue_encoded_once_with_adaptive_guidance(segmenter, phantom, method, monkeypatch) -> None:
    """The reach is guidance.click_region on the cached grid; with adaptive guidance it is the guidance mask itself,
    so a positive click encodes one adaptive mask, not two."""
    from RenalSegLib import guidance as G

    encodings = []
    encode = G.encode_clicks
    monkeypatch.setattr(G, "encode_clicks", lambda *a, **k: encodings.append(a[3]) or encode(*a, **k))
    session = RefinementSession(phantom.ct, _without_tumor(phantom), segmenter=segmenter, guidance=method)
    session._predict_crop = _Oracle(session, phantom)
    session.add_click(_tumor_centre_lps(phantom), positive=True)
    assert encodings == (["adaptive"] if method == "adaptive" else ["gaussian", "adaptive"])
    click = session.clicks[-1]
    low, reach = session._reach(click)
    centre = np.round(session._grid.TransformPhysicalPointToContinuousIndex(click.point_lps)[::-1]).astype(int)
    whole = encode(session._image, [(centre, True)], session._grid.GetSpacing()[::-1], "adaptive")[0] > 0
    np.testing.assert_array_equal(reach, whole[tuple(slice(int(a), int(a) + n) for a, n in zip(low, reach.shape))])
    assert reach.any() and whole.sum() == reach.sum()  # the whole region lies in the reach's box
