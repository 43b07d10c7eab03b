"""Training: the stage cache, the patch stream, the learning-rate schedule, the time budget and resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import phantoms
from RenalSegLib import training as T
from RenalSegLib.errors import RenalSegError
from RenalSegLib.network import NetworkConfig, save_model
from RenalSegLib.synthesis import synthesize

# A tiny fine-stage network on a coarser grid, so that fitting takes seconds on 2 CPU cores.
TINY_FINE = replace(T.STAGES["fine"], filters=(8, 16, 32, 64), spacing_mm=3.0, patch_size=(32, 32, 32))


@pytest.fixture
def tiny_fine_stage(monkeypatch) -> NetworkConfig:
    monkeypatch.setitem(T.STAGES, "fine", TINY_FINE)
    return TINY_FINE


@pytest.fixture
def synthetic_cache(tmp_path: Path, tiny_fine_stage) -> Path:
    """One synthetic CT (synthesised around the phantom's label map) cached for the fine stage."""
    p = phantoms.kidney_phantom(size=(80, 64, 48), spacing=(3.0, 3.0, 3.0))

    def load():
        case = synthesize(p.labels, seed=3)
        return case.ct, case.labels

    written = T.prepare_cache([("case_a", load)], tmp_path / "cache", "fine", progress=False)
    assert [w.name for w in written] == ["case_a_0.npz", "case_a_1.npz"]  # one volume per kidney
    return tmp_path / "cache"


def test_fixed_split_holds_out_every_tenth_case(tmp_path: Path) -> None:
    for n in range(25):
        (tmp_path / f"case_{n:05d}.nii.gz").touch()
    train, validation = T.kits_case_split(tmp_path)
    assert [v.name for v in validation] == ["case_00009.nii.gz", "case_00019.nii.gz"]
    assert len(train) == 23 and not set(train) & set(validation)


def test_tune_cases_are_every_26th_training_case_from_the_fifth(tmp_path: Path) -> None:
    for n in range(400):  # KiTS23's numbering: case_00000..case_00299, case_00400..case_00499
        (tmp_path / f"case_{n if n < 300 else n + 100:05d}.nii.gz").touch()
    tune = [p.name[5:10] for p in T.tune_cases(tmp_path)]
    assert tune == ["00004", "00033", "00062", "00091", "00120", "00148", "00177", "00206", "00235", "00264", "00293", "00422", "00451", "00480"]
    assert not set(T.tune_cases(tmp_path)) & set(T.kits_case_split(tmp_path)[1])


def test_cached_fine_volumes_hold_each_kidney_with_its_labels(synthetic_cache: Path) -> None:
    for path in sorted(synthetic_cache.glob("*.npz")):
        with np.load(path) as data:
            assert data["ct"].dtype == np.int16 and data["labels"].dtype == np.uint8
            assert data["ct"].shape == data["labels"].shape
            assert (data["labels"] == 1).any()
    with np.load(synthetic_cache / "case_a_0.npz") as a, np.load(synthetic_cache / "case_a_1.npz") as b:
        assert {2, 3} <= set(np.unique(a["labels"])) | set(np.unique(b["labels"]))  # tumor and cyst kept


def test_patch_batches_have_the_patch_size_and_oversample_lesions(synthetic_cache: Path) -> None:
    stream = T.batches(T.CachePatches(synthetic_cache, TINY_FINE, seed=0), batch_size=2, workers=0)
    lesion_patches = 0
    for _ in range(10):
        images, targets = next(stream)
        assert images.shape == (2, 1, 32, 32, 32) and images.dtype == np.float32
        assert targets.shape == (2, 1, 32, 32, 32)
        lesion_patches += sum(bool(np.isin(t, (2, 3)).any()) for t in targets)
    assert lesion_patches >= 8  # 65 % of patch centres lie in a lesion


def test_patch_centre_ratios_choose_the_class_a_patch_is_centred_on(synthetic_cache: Path) -> None:
    def centres(ratios) -> list[int]:
        patches = iter(T.CachePatches(synthetic_cache, TINY_FINE, seed=0, fine_ratios=ratios))
        return [int(next(patches)["label"][0][16, 16, 16]) for _ in range(8)]  # 32^3 patches: voxel 16 is the centre

    assert centres((0.0, 1.0, 0.0, 0.0)) == [1] * 8
    # Each cached volume holds one lesion class (a tumor, or a cyst): a volume without it falls back on kidney.
    lesion_centred = centres((0.0, 0.01, 0.495, 0.495))
    assert sum(label in (2, 3) for label in lesion_centred) >= 7 and {2, 3} <= set(lesion_centred)


def test_per_class_training_values_must_be_four_non_negative_numbers(tmp_path: Path) -> None:
    for bad in ({"lesion_patch_ratios": (0.5, 0.5, 0.0)}, {"class_weights": (1.0, 1.0, -3.0, 3.0)}, {"class_weights": (0.0,) * 4}):
        with pytest.raises(RenalSegError, match="4 values"):
            T.fit(T.FitOptions(run_dir=str(tmp_path / "run"), **bad))
    with pytest.raises(RenalSegError, match="not every volume holds a lesion"):
        T.fit(T.FitOptions(run_dir=str(tmp_path / "run"), lesion_patch_ratios=(0.0, 0.0, 0.5, 0.5)))
    assert not (tmp_path / "run").exists()


def test_fit_refuses_counts_and_rates_out_of_range_before_writing_anything(tmp_path: Path) -> None:
    bad_values = {"steps": 0, "batch_size": 0, "validate_every": 0, "checkpoint_every": -1, "snapshot_every": -500,
                  "warmup_steps": -1, "time_budget_s": -60.0}
    for name, value in bad_values.items():
        with pytest.raises(RenalSegError, match=f"{name} must be at least"):
            T.fit(T.FitOptions(run_dir=str(tmp_path / "run"), **{name: value}))
    for bad in ({"learning_rate": -1e-3}, {"click_rate": 1.5}):
        with pytest.raises(RenalSegError, match="learning rate must not be negative"):
            T.fit(T.FitOptions(run_dir=str(tmp_path / "run"), **bad))
    assert not (tmp_path / "run").exists()


def test_compiled_training_steps_match_eager_ones_and_save_the_plain_modules_weights(synthetic_cache: Path, tmp_path: Path) -> None:
    from RenalSegLib.network import build_network

    options = T.FitOptions(stage="fine", cache_dir=str(synthetic_cache), run_dir=str(tmp_path / "eager"), steps=2, warmup_steps=1,
                           learning_rate=1e-2, loader_workers=0, bf16=False, seed=4)
    eager = torch.load(T.fit(options), weights_only=True)["model"]
    compiled = torch.load(T.fit(replace(options, run_dir=str(tmp_path / "compiled"), compile=True)), weights_only=True)["model"]
    torch.manual_seed(options.seed)
    start = build_network(T.stage_config("fine")).state_dict()  # fit's initial weights: same seed, same network
    assert compiled.keys() == eager.keys() == start.keys()  # no torch.compile wrapper prefix in the checkpoint
    weights = [name for name, tensor in start.items() if tensor.is_floating_point() and "weight" in name]
    moved = np.mean([(eager[name] - start[name]).abs().mean().item() for name in weights])
    apart = np.mean([(compiled[name] - eager[name]).abs().mean().item() for name in weights])
    assert moved > 1e-3 and apart < 0.05 * moved


def test_patch_stream_skips_volumes_still_being_written(synthetic_cache: Path) -> None:
    """Training may start while prepare_cache is still writing: its '.partial-' files are not volumes yet."""
    (synthetic_cache / ".partial-case_b_0.npz").write_bytes(b"")  # a write in progress (empty, unreadable)
    patches = T.CachePatches(synthetic_cache, TINY_FINE, seed=0)
    assert [f.name for f in patches._files()] == ["case_a_0.npz", "case_a_1.npz"]
    stream = iter(patches)
    for _ in range(4):
        assert next(stream)["image"].shape == (1, 32, 32, 32)


def test_learning_rate_warms_up_then_decays_to_one_percent() -> None:
    options = T.FitOptions(steps=1000, warmup_steps=100, learning_rate=1e-3)
    assert T.lr_at(0, 0.0, options) == pytest.approx(1e-5)
    assert T.lr_at(99, 0.099, options) == pytest.approx(1e-3)
    assert T.lr_at(550, 0.55, options) < 1e-3
    assert T.lr_at(1000, 1.0, options) == pytest.approx(1e-5)


def test_time_budget_ends_the_schedule_before_the_step_count() -> None:
    options = T.FitOptions(steps=1000, time_budget_s=60.0)
    assert T.training_progress(100, 30.0, options) == pytest.approx(0.5)
    assert T.training_progress(900, 30.0, options) == pytest.approx(0.9)


def test_fit_resumes_from_its_checkpoint(synthetic_cache: Path, tmp_path: Path) -> None:
    options = T.FitOptions(stage="fine", cache_dir=str(synthetic_cache), run_dir=str(tmp_path / "run"), steps=4, warmup_steps=1,
                           checkpoint_every=2, loader_workers=0, bf16=False)
    checkpoint = T.fit(options)
    assert torch.load(checkpoint, weights_only=True)["step"] == 4
    T.fit(replace(options, steps=6))
    assert torch.load(checkpoint, weights_only=True)["step"] == 6
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)
    with pytest.raises(RenalSegError, match="holding out 0 validation case"):
        T.fit(replace(options, steps=8, validation_cases=["case_00009_v0"]))  # a different held-out set: refused
    assert torch.load(checkpoint, weights_only=True)["step"] == 6


def test_fit_keeps_the_best_validation_and_snapshots_beside_the_last(synthetic_cache: Path, tmp_path: Path, monkeypatch) -> None:
    scores = iter([{"score": 0.5}, {"score": 0.7}, {"score": 0.6}, {"score": 0.1}])
    monkeypatch.setattr(T, "validate", lambda *args: next(scores))
    options = T.FitOptions(stage="fine", cache_dir=str(synthetic_cache), run_dir=str(tmp_path / "run"), steps=4, warmup_steps=1,
                           checkpoint_every=2, validate_every=2, validation_cases=["case_unseen"], loader_workers=0, bf16=False,
                           snapshot_every=2)
    T.fit(options)  # validates at steps 2 and 4
    T.fit(replace(options, steps=6))  # resumed: validates at 6 with a worse score
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert (best["step"], best["score"]) == (4, 0.7)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 6
    model, _ = T.train_from_checkpoint(tmp_path / "run" / "best.pt", "fine")  # bundles like last.pt
    assert model is not None
    snapshots = sorted((tmp_path / "run").glob("step_*.pt"))
    assert [s.name for s in snapshots] == ["step_000002.pt", "step_000004.pt", "step_000006.pt"]
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    six, _ = T.stage_weights(snapshots[-1], "fine")
    assert all(torch.equal(six[k], v) for k, v in last.items())  # a snapshot holds that step's weights
    averaged, _ = T.averaged_from_checkpoints(snapshots, "fine")  # and snapshots average like checkpoints
    assert averaged is not None
    # a best.pt scored by the earlier rule (no "score" among its figures) is not compared: the next validation replaces it
    torch.save({**best, "score": 0.99, "validation": {"kidney_and_masses": 0.99}}, tmp_path / "run" / "best.pt")
    T.fit(replace(options, steps=8))
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["step"] == 8


def test_a_new_run_can_start_from_a_model_files_weights(synthetic_cache: Path, tmp_path: Path) -> None:
    """--init: fine-tuning starts from a bundled stage's weights; bad weights are refused before anything is
    written; a resumed run keeps its own."""
    options = T.FitOptions(stage="fine", cache_dir=str(synthetic_cache), run_dir=str(tmp_path / "a"), steps=2, warmup_steps=1,
                           loader_workers=0, bf16=False)
    model_file = save_model(tmp_path / "model.pt", {"fine": T.train_from_checkpoint(T.fit(options), "fine")}, card={})
    bundled, _ = T.stage_weights(model_file, "fine")
    # lr 0: the one step leaves the weights as they were loaded
    tuned = T.fit(replace(options, run_dir=str(tmp_path / "b"), steps=1, learning_rate=0.0, init_weights=str(model_file)))
    weights = torch.load(tuned, weights_only=True)["model"]
    assert all(torch.equal(weights[k], v) for k, v in bundled.items() if v.is_floating_point())
    fresh = torch.load(T.fit(replace(options, run_dir=str(tmp_path / "c"), steps=1, learning_rate=0.0)), weights_only=True)["model"]
    assert not all(torch.equal(fresh[k], v) for k, v in bundled.items() if v.is_floating_point())
    with pytest.raises(RenalSegError, match="no coarse stage"):
        T.stage_weights(model_file, "coarse")
    with pytest.raises(RenalSegError, match="not found"):
        T.fit(replace(options, run_dir=str(tmp_path / "d"), init_weights=str(tmp_path / "missing.pt")))
    with pytest.raises(RenalSegError, match="do not fit the coarse network"):  # a fine-stage checkpoint
        T.fit(replace(options, stage="coarse", run_dir=str(tmp_path / "e"), init_weights=str(tmp_path / "a" / "last.pt")))
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()  # a refused run leaves no folder behind
    # a resumed run continues from its own checkpoint: --init is not read again
    T.fit(replace(options, run_dir=str(tmp_path / "b"), steps=2, learning_rate=0.0, init_weights=str(tmp_path / "missing.pt")))
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 2


def test_fit_overfits_one_synthetic_case(synthetic_cache: Path, tmp_path: Path) -> None:
    """The whole training path (worker sampling, bf16 where supported, click rounds) learns one case to Dice > 0.9."""
    options = T.FitOptions(stage="fine", cache_dir=str(synthetic_cache), run_dir=str(tmp_path / "run"), steps=250, warmup_steps=20,
                           learning_rate=1e-2, checkpoint_every=1000, click_rate=0.2, loader_workers=1, seed=1, threads=1)
    threads = torch.get_num_threads()
    try:
        model, config = T.train_from_checkpoint(T.fit(options), "fine")
    finally:
        torch.set_num_threads(threads)  # fit sets the process-wide thread count
    scores = T.validate(model, config, synthetic_cache, ["case_a"], torch.autocast("cpu", enabled=False))
    assert min(scores[region] for region in ("kidney_and_masses", "masses", "tumor")) > 0.9, scores


def test_memory_channel_run_starts_from_a_3_channel_model_unchanged(synthetic_cache: Path, tmp_path: Path) -> None:
    """--memory-channel --init 3-channel model: the widened network computes what the loaded one did while the
    memory input is empty, and its checkpoint bundles as a 4-channel network."""
    options = T.FitOptions(stage="fine", cache_dir=str(synthetic_cache), run_dir=str(tmp_path / "a"), steps=1, warmup_steps=1,
                           loader_workers=0, bf16=False)
    three, config3 = T.train_from_checkpoint(T.fit(options), "fine")
    model_file = save_model(tmp_path / "model.pt", {"fine": (three, config3)}, card={})
    widened = T.fit(replace(options, run_dir=str(tmp_path / "b"), learning_rate=0.0, init_weights=str(model_file), memory_channel=True))
    four, config4 = T.train_from_checkpoint(widened, "fine")
    assert (config3.in_channels, config4.in_channels) == (3, 4)
    three, _ = T.train_from_checkpoint(model_file, "fine")  # the half-precision weights the run started from
    x = torch.randn(1, 3, 32, 32, 32)
    with torch.no_grad():
        before = three(x)
        empty = four(torch.cat([x, torch.zeros(1, 1, 32, 32, 32)], 1))
        filled = four(torch.cat([x, torch.ones(1, 1, 32, 32, 32)], 1))
    torch.testing.assert_close(empty, before)
    torch.testing.assert_close(filled, before)  # the new input starts at zero weight (lr 0: still there)
    with pytest.raises(RenalSegError, match="fine stage only"):
        T.stage_config("coarse", memory_channel=True)
    with pytest.raises(RenalSegError, match=r"dynunet network with 4 input channels on 32\^3 patches, this run a dynunet with 3 on 32\^3: resume it with the same --memory-channel"):
        T.fit(replace(options, run_dir=str(tmp_path / "b"), steps=2))  # resumed without --memory-channel


def test_click_rounds_give_a_memory_network_the_masses_it_predicted() -> None:
    """Simulated clicks: guidance channels get the click, the memory channel this round's predicted masses."""
    target = np.zeros((1, 1, 24, 24, 24), np.int64)
    target[0, 0, 4:12, 4:12, 4:12] = 2  # a lesion the 'network' misses
    predicted = np.zeros((24, 24, 24), np.int64)
    predicted[14:20, 14:20, 14:20] = 2  # ... and a leak it makes

    def model(x):
        return torch.from_numpy(np.eye(4, dtype=np.float32)[predicted].transpose(3, 0, 1, 2)[None].repeat(x.shape[0], 0))

    model.eval = model.train = lambda: None
    options = T.FitOptions(max_click_rounds=1, guidance_method="gaussian", memory_channel=True)
    x = torch.zeros(1, 4, 24, 24, 24)
    out = T.ClickRounds(options).add_clicks(model, x, target, torch.autocast("cpu", enabled=False), np.random.default_rng(0))
    np.testing.assert_array_equal(out[0, 3].numpy(), (predicted == 2).astype(np.float32))
    assert out[0, 1].max() > 0.9 and out[0, 1][4:12, 4:12, 4:12].max() > 0.9  # positive click on the larger missed lesion
    assert float(x.abs().sum()) == 0.0  # the batch passed in is left as it was


def test_validation_scores_the_hierarchical_decision_that_ships(tmp_path: Path) -> None:
    """Background 0.45, kidney 0.40, tumor 0.15 everywhere: argmax says background, the KiTS hierarchy
    (foreground where background < 0.5; not a mass: masses hold under MASS_SHARE) says kidney."""
    shape = (32, 32, 32)
    np.savez(tmp_path / "case_v_0.npz", ct=np.zeros(shape, np.int16), labels=np.ones(shape, np.uint8))
    logits = torch.log(torch.tensor([0.45, 0.40, 0.15, 1e-6])).view(1, 4, 1, 1, 1)

    def model(x):
        return logits.expand(x.shape[0], 4, *x.shape[2:]).clone()

    model.eval = lambda: None
    config = replace(TINY_FINE, patch_size=(16, 16, 16))
    scores = T.validate(model, config, tmp_path, ["case_v"], torch.autocast("cpu", enabled=False))
    # argmax would score 0.0; no mass predicted or present: masses and tumor unscored, no lesion missed or invented
    assert scores == {"kidney_and_masses": 1.0, "lesion_recall_1ml": 1.0, "lesion_precision": 1.0, "false_positives_per_volume": 0.0, "score": 1.0}


def test_validation_covers_every_held_out_case_and_scores_lesions_found_and_invented(tmp_path: Path) -> None:
    """One volume per held-out case, its kidneys in turn; a 27 mL tumor predicted beside the reference one is
    a missed lesion and a false one: recall 0, precision 0, lesion F1 0 in the score."""
    shape = (32, 32, 32)
    reference = np.ones(shape, np.uint8)
    reference[2:12, 2:12, 2:12] = 2
    predicted = np.ones(shape, np.int64)
    predicted[20:30, 20:30, 20:30] = 2
    for name in ("case_a_0", "case_a_1", "case_b_0", "case_b_1"):
        np.savez(tmp_path / f"{name}.npz", ct=np.zeros(shape, np.int16), labels=reference)
    assert [f.name for f in T.validation_files(tmp_path, ["case_a", "case_b", "case_none"])] == ["case_a_0.npz", "case_b_1.npz"]
    logits = torch.from_numpy(np.eye(4, dtype=np.float32)[predicted].transpose(3, 0, 1, 2)[None] * 10)

    def model(x):
        return logits.expand(x.shape[0], *logits.shape[1:]).clone()

    model.eval = lambda: None
    config = replace(TINY_FINE, patch_size=shape)  # 3 mm voxels: each cube is 27 mL
    scores = T.validate(model, config, tmp_path, ["case_a", "case_b"], torch.autocast("cpu", enabled=False))
    assert scores == {"kidney_and_masses": 1.0, "masses": 0.0, "tumor": 0.0, "lesion_recall_1ml": 0.0, "lesion_precision": 0.0,
                      "false_positives_per_volume": 1.0, "score": 0.25}


def test_a_run_on_larger_patches_starts_from_a_model_file_and_keeps_its_patch_size(synthetic_cache: Path, tmp_path: Path) -> None:
    """--patch-size: fine-tuning a model file of the stage's patch on larger cubes; the run and its checkpoints
    keep the new size (inference windows follow it), a resume with another size and a size the network cannot
    halve down to its bottleneck are refused, the latter before anything is written."""
    options = T.FitOptions(stage="fine", cache_dir=str(synthetic_cache), run_dir=str(tmp_path / "a"), steps=1, warmup_steps=1,
                           loader_workers=0, bf16=False)
    model_file = save_model(tmp_path / "model.pt", {"fine": T.train_from_checkpoint(T.fit(options), "fine")}, card={})
    larger = replace(options, run_dir=str(tmp_path / "b"), patch_size=48, init_weights=str(model_file))
    _, config = T.train_from_checkpoint(T.fit(larger), "fine")
    assert config == replace(TINY_FINE, patch_size=(48, 48, 48))
    images, _ = next(T.batches(T.CachePatches(synthetic_cache, config, seed=0), batch_size=1, workers=0))
    assert images.shape[2:] == (48, 48, 48)
    with pytest.raises(RenalSegError, match=r"on 48\^3 patches, this run a dynunet with 3 on 32\^3: .* --patch-size"):
        T.fit(replace(larger, patch_size=0, steps=2))
    for size in (36, -8):
        with pytest.raises(RenalSegError, match=f"must be a positive multiple of 8 voxels, got {size}"):
            T.fit(replace(options, run_dir=str(tmp_path / "c"), patch_size=size))
    assert not (tmp_path / "c").exists()


def test_the_attention_vnet_trains_on_the_same_stage_and_bundles_as_itself(synthetic_cache: Path, tmp_path: Path) -> None:
    """--architecture vnet_attention: the stage's grid, filters and patch with the other network; a run keeps its
    architecture, and an unknown one is refused before anything is written."""
    from RenalSegLib.attention_vnet import AttentionVNet

    options = T.FitOptions(stage="fine", cache_dir=str(synthetic_cache), run_dir=str(tmp_path / "v"), steps=2, warmup_steps=1,
                           loader_workers=0, bf16=False, architecture="vnet_attention")
    model, config = T.train_from_checkpoint(T.fit(options), "fine")
    assert isinstance(model, AttentionVNet) and config == replace(TINY_FINE, architecture="vnet_attention")
    scores = T.validate(model, config, synthetic_cache, ["case_a"], torch.autocast("cpu", enabled=False))
    assert set(scores) >= {"kidney_and_masses"}
    with pytest.raises(RenalSegError, match="trains a vnet_attention network .* this run a dynunet"):
        T.fit(replace(options, steps=3, architecture="dynunet"))
    with pytest.raises(RenalSegError, match="unknown network architecture 'unet'"):
        T.fit(replace(options, run_dir=str(tmp_path / "u"), architecture="unet"))
    assert not (tmp_path / "u").exists()


def test_train_fit_command_passes_per_class_values_architecture_snapshots_compile_patch_size_and_refuses_malformed_values(tmp_path: Path, monkeypatch, capsys) -> None:
    from RenalSegLib import cli

    seen = []
    monkeypatch.setattr(T, "fit", lambda options: seen.append(options) or Path("last.pt"))
    base = ["train", "fit", "--stage", "fine", "--cache", str(tmp_path), "--run", str(tmp_path / "run")]
    assert cli.main(base) == 0 and cli.main([*base, "--lesion-patch-ratios", "0.1,0.2,0.3,0.4", "--class-weights", "1,1,3,5"]) == 0
    assert (seen[0].lesion_patch_ratios, seen[0].class_weights) == (T.LESION_PATCH_RATIOS, T.FINE_CLASS_WEIGHTS)
    assert (seen[1].lesion_patch_ratios, seen[1].class_weights) == ((0.1, 0.2, 0.3, 0.4), (1.0, 1.0, 3.0, 5.0))
    assert cli.main([*base, "--architecture", "vnet_attention"]) == 0
    assert (seen[0].architecture, seen[2].architecture) == ("dynunet", "vnet_attention")
    assert cli.main([*base, "--snapshot-every", "500"]) == 0
    assert (seen[0].snapshot_every, seen[3].snapshot_every) == (0, 500)
    assert cli.main([*base, "--compile"]) == 0
    assert (seen[0].compile, seen[4].compile) == (False, True)
    assert cli.main([*base, "--patch-size", "80"]) == 0
    assert (seen[0].patch_size, seen[5].patch_size) == (0, 80)
    with pytest.raises(SystemExit) as exit_:
        cli.main([*base, "--class-weights", "1,3"])
    assert exit_.value.code == 2 and "4 comma-separated numbers" in capsys.readouterr().err


def test_bundle_averages_several_fine_checkpoints_of_one_configuration(synthetic_cache: Path, tmp_path: Path) -> None:
    """train bundle --fine A B: one fine network holding the mean of A's and B's weights; networks configured
    differently are refused."""
    options = T.FitOptions(stage="fine", cache_dir=str(synthetic_cache), run_dir=str(tmp_path / "a"), steps=1, warmup_steps=1,
                           loader_workers=0, bf16=False)
    a, b = T.fit(options), T.fit(replace(options, run_dir=str(tmp_path / "b"), seed=1))
    weights = [T.train_from_checkpoint(c, "fine")[0].state_dict() for c in (a, b)]
    name = next(k for k, v in weights[0].items() if v.is_floating_point() and not torch.equal(v, weights[1][k]))
    averaged, config = T.averaged_from_checkpoints([a, b], "fine")
    torch.testing.assert_close(averaged.state_dict()[name], (weights[0][name] + weights[1][name]) / 2)
    from RenalSegLib.network import build_network

    coarse = save_model(tmp_path / "coarse.pt", {"coarse": (build_network(T.STAGES["coarse"]), T.STAGES["coarse"])}, card={})
    model_file = T.bundle(coarse, [a, b], tmp_path / "soup.pt", card={})
    bundled, bundled_config = T.train_from_checkpoint(model_file, "fine")
    assert bundled_config == config
    torch.testing.assert_close(bundled.state_dict()[name], averaged.state_dict()[name], atol=1e-3, rtol=1e-3)  # stored in half precision
    vnet = T.fit(replace(options, run_dir=str(tmp_path / "v"), architecture="vnet_attention"))
    with pytest.raises(RenalSegError, match="configured differently"):
        T.averaged_from_checkpoints([a, vnet], "fine")


def test_train_bundle_command_passes_every_fine_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from RenalSegLib import cli

    seen = []
    monkeypatch.setattr(T, "bundle", lambda coarse, fine, out, card: seen.append((coarse, fine, card)) or out)
    (tmp_path / "card.json").write_text('{"name": "x"}')
    base = ["train", "bundle", "--coarse", "c.pt", "--card", str(tmp_path / "card.json"), "-o", "m.pt", "--fine"]
    assert cli.main([*base, "a.pt"]) == 0 and cli.main([*base, "a.pt", "b.pt"]) == 0
    assert [fine for _, fine, _ in seen] == [[Path("a.pt")], [Path("a.pt"), Path("b.pt")]]
    assert seen[0][2] == {"name": "x"}
