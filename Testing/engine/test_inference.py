"""Auto segmentation: output geometry, cascade regions, postprocessing, progress and cancel."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import phantoms
from RenalSegLib import inference as I
from RenalSegLib import labels as L

torch.set_num_threads(2)


@pytest.mark.parametrize("direction", [None, phantoms.oblique_direction(20.0), np.diag([-1.0, 1.0, 1.0])], ids=["axial", "oblique", "flipped"])
def test_output_has_exactly_the_input_geometry(untrained_model: Path, direction) -> None:
    p = phantoms.kidney_phantom(size=(50, 44, 30), spacing=(3.1, 3.3, 4.0), direction=direction, origin=(-7.0, 11.0, 40.0))
    messages = []
    out = I.segment(p.ct, model_path=untrained_model, device="cpu", progress=lambda f, m: messages.append((f, m)))
    assert out.GetSize() == p.ct.GetSize()
    assert out.GetSpacing() == p.ct.GetSpacing() and out.GetOrigin() == p.ct.GetOrigin() and out.GetDirection() == p.ct.GetDirection()
    assert out.GetPixelID() == sitk.sitkUInt8
    assert messages[-1] == (1.0, "done") and [f for f, _ in messages] == sorted(f for f, _ in messages)


def test_cancel_stops_segmentation(untrained_model: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(I.Cancelled):
        I.segment(phantoms.kidney_phantom(size=(24, 24, 16), spacing=(6.0, 6.0, 8.0)).ct, model_path=untrained_model, device="cpu", cancel=cancel)


def test_flip_tta_sums_the_logits_of_the_ct_and_its_left_right_mirror_image() -> None:
    """A voxel-wise network is mirror-equivariant, so two passes mapped back in place give exactly 2x its logits."""
    from RenalSegLib import network as N
    from RenalSegLib.training import STAGES

    config = N.NetworkConfig.from_dict(STAGES["fine"].__dict__)
    torch.manual_seed(0)
    voxelwise = torch.nn.Conv3d(config.in_channels, 4, kernel_size=1).eval()
    image = np.random.default_rng(0).normal(size=(20, 28, 36)).astype(np.float32)  # no symmetry to hide a wrong flip
    plain, tta = (I.Segmenter({"fine": (voxelwise, config)}, torch.device("cpu"), flip_tta=flip).predict("fine", image) for flip in (False, True))
    with torch.no_grad():
        logits = voxelwise(torch.from_numpy(np.concatenate([image[None], np.zeros((config.in_channels - 1, *image.shape), np.float32)])[None]))
    # bf16 autocast where the CPU has it: a few 1e-3; a voxel mapped back to the wrong place is off by about 0.1
    np.testing.assert_allclose(plain, torch.softmax(logits, 1)[0].numpy(), atol=5e-3)
    np.testing.assert_allclose(tta, torch.softmax(2 * logits, 1)[0].numpy(), atol=5e-3)


class _OracleSegmenter(I.Segmenter):
    """Stands in for the networks with the phantom's known kidney mask (coarse) and labels (fine)."""

    def __init__(self, phantom: phantoms.Phantom):
        super().__init__(networks={}, device=torch.device("cpu"))
        self.phantom = phantom

    def predict(self, name, image, guidance=None):
        raise AssertionError("not used")

    def kidney_regions(self, ct):
        from RenalSegLib.training import kidney_boxes

        return I._merge_overlapping(kidney_boxes(self.phantom.labels, I.KIDNEY_MARGIN_MM))

    def segment_region(self, ct, start, stop):
        box = tuple(slice(int(a), int(b)) for a, b in zip(reversed(start), reversed(stop)))
        labels = sitk.GetArrayFromImage(self.phantom.labels)[box]
        return np.eye(4, dtype=np.float32)[labels].transpose(3, 0, 1, 2)


def test_cascade_writes_each_kidney_region_back_in_place() -> None:
    p = phantoms.kidney_phantom()
    out = I.segment(p.ct, segmenter=_OracleSegmenter(p))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out), sitk.GetArrayViewFromImage(p.labels))


def test_lesion_probability_map_is_the_tumor_plus_cyst_probability_in_percent_on_the_ct_grid() -> None:
    class Unsure(_OracleSegmenter):
        """Tumor 0.5 + cyst 0.2 on the phantom's lesions, kidney 1 elsewhere in the region."""

        def segment_region(self, ct, start, stop):
            probabilities = super().segment_region(ct, start, stop)
            lesion = probabilities[L.TUMOR] + probabilities[L.CYST] > 0
            probabilities[:, lesion] = np.array([0.0, 0.3, 0.5, 0.2], np.float32)[:, None]
            return probabilities

    p = phantoms.kidney_phantom(direction=phantoms.oblique_direction(15.0))
    result = I.auto_segment(p.ct, segmenter=Unsure(p))
    probability = result.lesion_probability
    assert probability.GetPixelID() == sitk.sitkUInt8 and probability.GetSize() == p.ct.GetSize()
    assert probability.GetOrigin() == p.ct.GetOrigin() and probability.GetDirection() == p.ct.GetDirection()
    reference, percent = sitk.GetArrayViewFromImage(p.labels), sitk.GetArrayViewFromImage(probability)
    lesion = np.isin(reference, L.LESION_LABELS)
    assert lesion.any() and (percent[lesion] == 70).all()
    assert not percent[~lesion].any()  # kidney in the regions, nothing outside them
    # tumor, the likelier class, except the phantom's cyst: homogeneous fluid (5 HU), so a cyst (fluid_masses_as_cysts)
    expected = np.where(lesion & (sitk.GetArrayViewFromImage(p.ct) > I.FLUID_HU[1]), L.TUMOR, reference)
    assert (expected == L.CYST).any() and (expected == L.TUMOR).any()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result.labels), expected)


def test_a_region_seen_as_all_mass_is_no_kidney_and_is_reported(caplog) -> None:
    """What the network did on a real liver: the coarse stage finds a region, the fine stage calls it tumor."""

    class AllTumor(_OracleSegmenter):
        def segment_region(self, ct, start, stop):
            probabilities = np.zeros((4, *reversed([int(b - a) for a, b in zip(start, stop)])), np.float32)
            probabilities[L.TUMOR] = 1.0
            return probabilities

    p = phantoms.kidney_phantom()
    with caplog.at_level("WARNING", logger="RenalSegLib.inference"):
        out = I.segment(p.ct, segmenter=AllTumor(p))
    assert not sitk.GetArrayViewFromImage(out).any()
    assert "no kidney found" in caplog.text


def test_postprocess_removes_lesions_away_from_kidneys_and_tiny_specks() -> None:
    kits = np.zeros((40, 40, 40), np.uint8)
    kits[5:25, 5:25, 5:25] = L.KIDNEY
    kits[10:15, 20:30, 10:15] = L.TUMOR  # touches and extends the kidney: kept
    kits[32:38, 32:38, 32:38] = L.TUMOR  # floating far from any kidney: removed
    kits[7, 7, 7] = L.CYST  # one-voxel cyst inside the kidney: becomes kidney
    kits[20:24, 10:13, 10:13] = L.CYST  # 36 voxels of 8 uL = 0.29 mL, under MIN_LESION_ML: becomes kidney
    out = I.postprocess(kits, spacing=(2.0, 2.0, 2.0))
    assert (out[10:15, 20:30, 10:15] == L.TUMOR).all()
    assert not out[32:38, 32:38, 32:38].any()
    assert out[7, 7, 7] == L.KIDNEY
    assert (out[20:24, 10:13, 10:13] == L.KIDNEY).all()


def test_postprocess_gives_each_mass_the_class_of_most_of_its_voxels() -> None:
    kits = np.zeros((40, 60, 60), np.uint8)
    kits[5:35, 5:30, 5:30] = L.KIDNEY
    kits[10:20, 10:20, 10:20] = L.TUMOR  # 8 mL tumor ...
    kits[12:15, 12:15, 20:23] = L.CYST  # ... with a 0.2 mL cyst speck on its side ...
    kits[20:30, 10:20, 10:20] = L.CYST  # ... and an 8 mL cyst below it: one mass, 8.2 mL cyst to 8 mL tumor: all cyst
    kits[30:33, 22:27, 22:28] = L.CYST  # a 0.72 mL cyst and a 0.48 mL tumor touching: one 1.2 mL mass ...
    kits[33:35, 22:27, 22:28] = L.TUMOR  # ... of cyst
    kits[10:20, 5:9, 5:9] = L.TUMOR  # a separate 1.3 mL tumor keeps its class
    out = I.postprocess(kits, spacing=(2.0, 2.0, 2.0))
    assert (out[10:30, 10:20, 10:20] == L.CYST).all() and (out[12:15, 12:15, 20:23] == L.CYST).all()
    assert (out[30:35, 22:27, 22:28] == L.CYST).all()
    assert (out[10:20, 5:9, 5:9] == L.TUMOR).all()
    np.testing.assert_array_equal(out > 0, kits > 0)
    np.testing.assert_array_equal(np.isin(out, L.LESION_LABELS), np.isin(kits, L.LESION_LABELS))


def test_homogeneous_fluid_tumor_masses_become_cysts() -> None:
    rng = np.random.default_rng(0)
    kits = np.zeros((30, 40, 95), np.uint8)
    hu = np.full(kits.shape, -80.0)
    kits[5:25, 5:35, 2:93], hu[5:25, 5:35, 2:93] = L.KIDNEY, 160.0
    masses = {  # (label, HU of its voxels): what each 8x8x8 mass holds
        "fluid tumor": (L.TUMOR, rng.normal(8, 10, (8, 8, 8))),
        "necrotic tumor": (L.TUMOR, np.where(rng.random((8, 8, 8)) < 0.5, -40.0, 60.0)),  # median 10, SD 50
        "fat tumor": (L.TUMOR, rng.normal(-80, 10, (8, 8, 8))),
        "enhancing tumor": (L.TUMOR, rng.normal(120, 10, (8, 8, 8))),
        "hyperdense cyst": (L.CYST, rng.normal(80, 10, (8, 8, 8))),
        "fluid tumor taking in kidney": (L.TUMOR, np.concatenate([rng.normal(8, 10, (2, 8, 8)), np.full((1, 8, 8), 160.0),
                                                                  rng.normal(8, 10, (5, 8, 8))])),  # core SD 57, robust SD 13
    }
    for n, (label, values) in enumerate(masses.values()):
        box = (slice(11, 19), slice(16, 24), slice(4 + 15 * n, 12 + 15 * n))
        kits[box], hu[box] = label, values

    out = I.fluid_masses_as_cysts(kits, hu)
    for n, (name, (label, _)) in enumerate(masses.items()):
        got = out[15, 20, 8 + 15 * n]
        assert got == (L.CYST if name.startswith("fluid tumor") else label), name
    np.testing.assert_array_equal(out[kits == L.KIDNEY], L.KIDNEY)  # only masses change
    assert (out == L.CYST).sum() == (kits == L.CYST).sum() + 2 * 8 ** 3


def test_postprocess_keeps_the_two_components_with_most_kidney() -> None:
    kits = np.zeros((40, 60, 60), np.uint8)
    kits[5:25, 5:20, 5:20] = L.KIDNEY  # 4500 voxels of 8 uL = 36 mL
    kits[5:25, 5:20, 40:55] = L.KIDNEY  # the other kidney
    kits[30:38, 30:55, 5:55] = L.TUMOR  # large mass component with a little kidney: third by kidney tissue
    kits[30:32, 30:32, 5:7] = L.KIDNEY
    out = I.postprocess(kits, spacing=(2.0, 2.0, 2.0))
    np.testing.assert_array_equal(out[:26], kits[:26])
    assert not out[30:38].any()


def test_postprocess_drops_a_mass_with_too_little_kidney_tissue_to_be_a_kidney() -> None:
    kits = np.zeros((40, 60, 60), np.uint8)
    kits[5:25, 5:20, 5:20] = L.KIDNEY  # 36 mL: kept
    kits[5:35, 30:55, 30:55] = L.TUMOR  # 150 mL "tumor" ...
    kits[5:35, 30:55, 55:57] = L.KIDNEY  # ... beside a 12 mL rim of "kidney": another organ, removed
    out = I.postprocess(kits, spacing=(2.0, 2.0, 2.0))
    assert I.MIN_KIDNEY_TISSUE_ML > 12
    np.testing.assert_array_equal(out[:, :, :25], kits[:, :, :25])
    assert not out[:, :, 25:].any()


def test_kidney_regions_from_a_segmenter_cover_both_kidneys() -> None:
    p = phantoms.kidney_phantom()
    regions = _OracleSegmenter(p).kidney_regions(p.ct)
    kits = sitk.GetArrayViewFromImage(p.labels)
    covered = np.zeros(kits.shape, bool)
    for start, stop in regions:
        covered[tuple(slice(int(a), int(b)) for a, b in zip(reversed(start), reversed(stop)))] = True
    assert covered[kits > 0].all()


def test_postprocess_is_the_same_wherever_the_labels_lie_in_the_ct() -> None:
    kits = np.zeros((40, 40, 40), np.uint8)
    kits[5:25, 5:25, 5:25] = L.KIDNEY
    kits[20:24, 10:13, 10:13] = L.CYST  # small: becomes kidney
    kits[10:15, 20:30, 10:15] = L.TUMOR
    big = np.zeros((90, 100, 110), np.uint8)
    big[30:70, 50:90, 11:51] = kits
    expected = I.postprocess(kits, spacing=(2.0, 2.0, 2.0))
    out = I.postprocess(big, spacing=(2.0, 2.0, 2.0))
    np.testing.assert_array_equal(out[30:70, 50:90, 11:51], expected)
    assert out.sum() == expected.sum()
    assert not I.postprocess(np.zeros((5, 6, 7), np.uint8), spacing=(1.0, 1.0, 1.0)).any()


def test_labels_are_decided_down_the_kits_hierarchy() -> None:
    from RenalSegLib.inference import MASS_SHARE, decide_labels

    assert MASS_SHARE == 0.3  # the cases below are computed for it
    voxels = np.array([
        [0.60, 0.30, 0.05, 0.05],  # background
        [0.40, 0.45, 0.10, 0.05],  # foreground; masses 0.15 / 0.60 = 25 % of it: kidney
        [0.10, 0.50, 0.25, 0.15],  # masses 44 % of foreground: a mass, tumor likelier (argmax: kidney)
        [0.10, 0.50, 0.15, 0.25],  # the same, cyst likelier
        [0.45, 0.10, 0.20, 0.25],  # foreground although background is the largest class (argmax: background)
    ], np.float32).T.reshape(4, 1, 1, 5)
    np.testing.assert_array_equal(decide_labels(voxels)[0, 0], [0, 1, 2, 3, 3])


def test_bundled_model_on_the_real_ct_puts_lesions_only_on_kidneys(real_ct_dir: Path) -> None:
    """The real upper-abdominal series (no labels): every predicted lesion lies on a plausible kidney."""
    from scipy import ndimage

    from RenalSegLib.network import default_model_path
    from RenalSegLib.volume import read_volume

    ct = read_volume(real_ct_dir)
    out = sitk.GetArrayFromImage(I.segment(ct, model_path=default_model_path(), device="cpu", fast=True))
    components, count = ndimage.label(out > 0)
    kidney_ml = ndimage.sum(out == L.KIDNEY, components, np.arange(1, count + 1)) * np.prod(ct.GetSpacing()) / 1000
    with_lesion = ndimage.maximum(np.isin(out, L.LESION_LABELS), components, np.arange(1, count + 1)).astype(bool)
    assert count <= I.MAX_KIDNEYS
    assert (kidney_ml[with_lesion] >= I.MIN_KIDNEY_TISSUE_ML).all()


def test_bundled_model_scores_its_recorded_dice_on_the_bundled_sample() -> None:
    """A Dice regression test: the shipped engine (preprocessing, networks, decision, postprocessing) still
    scores, on the bundled synthetic sample, the Dice its model card records for ``renalseg demo``."""
    from RenalSegLib.cli import sample_ct_path, sample_labels_path
    from RenalSegLib.evaluation import evaluate_case
    from RenalSegLib.network import default_model_path, read_model_card
    from RenalSegLib.volume import read_labels, read_volume

    recorded = read_model_card(default_model_path())["metrics"]["bundled_sample"]["dice"]
    ct = read_volume(sample_ct_path())
    reference = sitk.GetArrayFromImage(read_labels(sample_labels_path()))
    scores = evaluate_case(sitk.GetArrayFromImage(I.segment(ct, device="cpu")), reference, ct.GetSpacing()[::-1])
    assert recorded.keys() == {"kidney_and_masses", "masses", "tumor"}
    for region, dice in recorded.items():
        assert scores[f"dice_{region}"] >= dice - 0.01, f"{region}: {scores[f'dice_{region}']:.3f}, recorded {dice:.3f}"


def test_an_opt_in_minimum_lesion_probability_turns_unsure_lesions_into_kidney() -> None:
    class TumorSureCystUnsure(_OracleSegmenter):
        """The phantom's tumor at tumor 0.9, its cyst at cyst 0.5 (kidney 0.5), kidney 1 elsewhere in the region."""

        def segment_region(self, ct, start, stop):
            probabilities = super().segment_region(ct, start, stop)
            tumor, cyst = probabilities[L.TUMOR] > 0, probabilities[L.CYST] > 0
            probabilities[:, tumor] = np.array([0.0, 0.1, 0.9, 0.0], np.float32)[:, None]
            probabilities[:, cyst] = np.array([0.0, 0.5, 0.0, 0.5], np.float32)[:, None]
            return probabilities

    p = phantoms.kidney_phantom()
    reference = sitk.GetArrayFromImage(p.labels)
    keep_all = sitk.GetArrayFromImage(I.auto_segment(p.ct, segmenter=TumorSureCystUnsure(p)).labels)
    np.testing.assert_array_equal(keep_all, reference)
    sure_only = sitk.GetArrayFromImage(I.auto_segment(p.ct, segmenter=TumorSureCystUnsure(p), min_lesion_probability=0.7).labels)
    np.testing.assert_array_equal(sure_only, np.where(reference == L.CYST, L.KIDNEY, reference))
    with pytest.raises(I.RenalSegError, match="0-1"):
        I.auto_segment(p.ct, segmenter=TumorSureCystUnsure(p), min_lesion_probability=70)
