"""Training: case sources, a cache of network-grid volumes, the MONAI patch pipeline and the training loop.

Steps, each with its own inputs and outputs on disk (nnU-Net style):
1. ``prepare_cache``: case source (KiTS23 label maps + synthesis, or real CT) -> cropped, resampled
   ``.npz`` volumes on the stage's grid (coarse 4 mm whole body, fine 1.5 mm around the kidneys).
2. ``fit``: MONAI patch sampling that over-samples lesions, Dice + cross-entropy, AdamW with warm-up and
   cosine decay, bf16 autocast on CPUs that support it, checkpoints + resume, a JSON-lines log, and
   optional simulated click rounds so the fine network also learns click-to-refine.
3. ``bundle``: the two trained networks -> one model file with its model card.
Multi-GPU: launch ``fit`` under ``torchrun``; it then uses DistributedDataParallel.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import labels as L
from .device import bf16_supported
from .errors import RenalSegError
from .network import FINE_IN_CHANNELS, MEMORY_CHANNEL, NetworkConfig, minimum_input_multiple
from .preprocess import LEFT_RIGHT_AXIS, grid_for_region, normalize_ct, resample_onto
from .volume import read_labels, read_volume, voxel_ml

log = logging.getLogger(__name__)

STAGES = {
    "coarse": NetworkConfig(in_channels=1, out_channels=2, filters=(8, 16, 32, 64, 128), spacing_mm=4.0, patch_size=(64, 64, 64)),
    "fine": NetworkConfig(in_channels=FINE_IN_CHANNELS, out_channels=4, filters=(16, 32, 64, 128, 256), spacing_mm=1.5, patch_size=(64, 64, 64)),
}
FINE_MARGIN_MM = 40.0  # context kept around the kidneys in fine-stage volumes
# Fine-stage defaults (FitOptions may change both): patch centre ratios and loss weights per class
# (background, kidney, tumor, cyst). Lesions are small and rare, and are what users need most.
LESION_PATCH_RATIOS = (0.1, 0.25, 0.45, 0.2)
FINE_CLASS_WEIGHTS = (1.0, 1.0, 3.0, 3.0)
VALIDATION_EVERY = 10  # every 10th KiTS case (sorted by id) is held out for validation
TUNE_FIRST, TUNE_EVERY = 4, 26  # tune cases: every 26th training case from the 5th (14 of KiTS23's 360)


# --- case sources ----------------------------------------------------------------------------------

def kits_case_split(label_dir: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """Fixed train/validation split of a folder of KiTS label maps: every 10th case is validation."""
    files = sorted(Path(label_dir).glob("case_*.nii.gz"))
    if not files:
        raise RenalSegError(f"{label_dir}: no case_*.nii.gz label maps found")
    validation = files[VALIDATION_EVERY - 1 :: VALIDATION_EVERY]
    train = [f for f in files if f not in set(validation)]
    return train, validation


def tune_cases(label_dir: str | os.PathLike) -> list[Path]:
    """Training-split label maps that release decisions (checkpoints, rules, thresholds) are made on, so that
    the held-out cases stay untouched until a model is reported."""
    return kits_case_split(label_dir)[0][TUNE_FIRST::TUNE_EVERY]


def real_case_pairs(root: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(CT, labels) pairs of a real dataset: KiTS layout (case_*/imaging.nii.gz + segmentation.nii.gz)
    or an nnU-Net raw dataset (imagesTr/NAME_0000.nii.gz + labelsTr/NAME.nii.gz)."""
    root = Path(root)
    pairs = [(d / "imaging.nii.gz", d / "segmentation.nii.gz") for d in sorted(root.glob("case_*")) if (d / "imaging.nii.gz").is_file()]
    if not pairs and (root / "labelsTr").is_dir():
        for label in sorted((root / "labelsTr").glob("*.nii.gz")):
            image = root / "imagesTr" / label.name.replace(".nii.gz", "_0000.nii.gz")
            if image.is_file():
                pairs.append((image, label))
    if not pairs:
        raise RenalSegError(f"{root}: neither a KiTS (case_*/imaging.nii.gz) nor an nnU-Net raw dataset (imagesTr/, labelsTr/)")
    return pairs


def synthetic_case(label_path: Path, seed: int, stage: str) -> tuple[sitk.Image, sitk.Image]:
    """A synthetic CT and its labels from one real KiTS label map, synthesised directly on the stage's grid.

    For the fine stage only the kidneys' region (plus context) is synthesised: the rest is never used.
    """
    from .synthesis import synthesize

    labels = read_labels(label_path)
    spacing = STAGES[stage].spacing_mm
    if stage == "fine":
        boxes = kidney_boxes(labels, FINE_MARGIN_MM + 20.0)
        if boxes:
            start = np.min([b[0] for b in boxes], axis=0)
            stop = np.max([b[1] for b in boxes], axis=0)
            labels = sitk.RegionOfInterest(labels, [int(v) for v in stop - start], [int(v) for v in start])
    result = synthesize(labels, seed=seed, spacing=(spacing,) * 3)
    return result.ct, result.labels


def real_case(ct_path: Path, label_path: Path) -> tuple[sitk.Image, sitk.Image]:
    ct = read_volume(ct_path)
    labels = read_labels(label_path)
    labels.CopyInformation(ct)  # real datasets store both on one grid; tiny header differences are noise
    return ct, labels


# --- stage volumes ---------------------------------------------------------------------------------

def stage_volumes(ct: sitk.Image, labels: sitk.Image, stage: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Resample one case onto a stage's grid: the whole image (coarse) or each kidney region (fine).

    Returns (ct int16 HU, labels uint8) pairs in (k, j, i) order; coarse labels are 0/1 (kidney and masses).
    """
    config = STAGES[stage]
    if stage == "coarse":
        grid = grid_for_region(ct, (0, 0, 0), ct.GetSize(), config.spacing_mm)
        regions = [grid]
    else:
        regions = [grid_for_region(ct, start, stop, config.spacing_mm) for start, stop in kidney_boxes(labels, FINE_MARGIN_MM)]
    out = []
    for grid in regions:
        hu = sitk.GetArrayFromImage(resample_onto(ct, grid, sitk.sitkLinear, -1024.0))
        lab = sitk.GetArrayFromImage(resample_onto(labels, grid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
        if stage == "coarse":
            lab = (lab > 0).astype(np.uint8)
        out.append((np.round(hu).astype(np.int16), lab))
    return out


def kidney_boxes(labels: sitk.Image, margin_mm: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(start, stop) index boxes (i, j, k) around each kidney-and-masses component larger than 10 mL."""
    components = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.Cast(labels > 0, sitk.sitkUInt8)), sortByObjectSize=True)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(components)
    margin = np.ceil(margin_mm / np.array(labels.GetSpacing())).astype(int)
    boxes = []
    for label in stats.GetLabels():
        if stats.GetPhysicalSize(label) < 10_000:  # mm^3
            continue
        box = stats.GetBoundingBox(label)  # (i, j, k, size_i, size_j, size_k)
        start = np.maximum(np.array(box[:3]) - margin, 0)
        stop = np.minimum(np.array(box[:3]) + np.array(box[3:]) + margin, labels.GetSize())
        boxes.append((start, stop))
    return boxes


def prepare_cache(cases: list[tuple[str, Callable[[], tuple[sitk.Image, sitk.Image]]]], cache_dir: str | os.PathLike, stage: str, progress: bool = True) -> list[Path]:
    """Write each case's stage volumes to ``cache_dir/<name>_<n>.npz`` (skipping files already there)."""
    from tqdm import tqdm

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, load in tqdm(cases, desc=f"caching {stage} volumes", disable=not progress):
        if list(cache_dir.glob(f"{name}_*.npz")):
            continue
        ct, labels = load()
        for n, (hu, lab) in enumerate(stage_volumes(ct, labels, stage)):
            path = cache_dir / f"{name}_{n}.npz"
            tmp = path.with_name(f".partial-{path.name}")
            np.savez(tmp, ct=hu, labels=lab)
            os.replace(tmp, path)
            written.append(path)
    return written


# --- patch pipeline --------------------------------------------------------------------------------

def patch_transforms(config: NetworkConfig, fine_ratios: Sequence[float] = LESION_PATCH_RATIOS):
    """MONAI pipeline: crop patches (class-balanced: lesions over-sampled), flips, intensity jitter.

    Patch centres are drawn per class: ``fine_ratios`` (background, kidney, tumor, cyst) for the fine
    stage's four classes, 0.4 / 0.6 (background, kidney) for the coarse stage's two.
    """
    from monai import transforms as T

    classes = config.out_channels
    ratios = list(fine_ratios) if classes == 4 else [0.4, 0.6]
    return T.Compose(
        [
            T.SpatialPadd(keys=("image", "label"), spatial_size=config.patch_size, mode="constant", value=0),
            T.RandCropByLabelClassesd(
                keys=("image", "label"), label_key="label", spatial_size=config.patch_size, ratios=ratios, num_classes=classes, num_samples=1, warn=False
            ),
            T.RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=LEFT_RIGHT_AXIS),  # left-right mirror: kidneys are near-symmetric
            T.RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            T.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            T.RandGaussianNoised(keys="image", std=0.03, prob=0.3),
        ]
    )


class CachePatches:
    """Endless stream of training patches from a cache folder that may still be growing."""

    def __init__(self, cache_dir: Path, config: NetworkConfig, seed: int, exclude: set[str] = frozenset(),
                 fine_ratios: Sequence[float] = LESION_PATCH_RATIOS):
        self.cache_dir, self.config, self.seed, self.exclude = Path(cache_dir), config, seed, exclude
        self.transform = patch_transforms(config, fine_ratios)

    def _files(self) -> list[Path]:
        # Hidden files are volumes still being written (prepare_cache's ".partial-" names).
        return [f for f in sorted(self.cache_dir.glob("*.npz")) if not f.name.startswith(".") and f.name.rsplit("_", 1)[0] not in self.exclude]

    def __iter__(self) -> Iterator[dict]:
        rng = random.Random(self.seed)
        self.transform.set_random_state(seed=self.seed)
        files: list[Path] = []
        for n in range(10**12):
            if n % 64 == 0:
                files = self._files() or files
                if not files:
                    raise RenalSegError(f"{self.cache_dir}: no cached volumes to train on")
            with np.load(rng.choice(files)) as data:
                image = normalize_ct(data["ct"])[None]
                label = data["labels"][None].astype(np.int64)
            sample = self.transform({"image": image, "label": label})[0]
            yield {"image": np.asarray(sample["image"], np.float32), "label": np.asarray(sample["label"], np.int64)}


def batches(patches: CachePatches, batch_size: int, workers: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (images, labels) batches; ``workers`` > 0 samples patches in background processes so that
    cropping and augmentation overlap the training step instead of adding to it."""
    import torch

    class _Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            if info is not None:
                patches.seed += 7919 * info.id  # each worker its own random stream
            return iter(patches)

    loader = torch.utils.data.DataLoader(_Stream(), batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0)
    for batch in loader:
        yield batch["image"].numpy(), batch["label"].numpy()


# --- the training loop -----------------------------------------------------------------------------

@dataclass
class FitOptions:
    stage: str = "fine"
    cache_dir: str = "cache/fine"
    run_dir: str = "runs/fine"
    steps: int = 10_000
    time_budget_s: float = 0.0  # > 0: also stop (and finish the schedule) after this much training time
    batch_size: int = 2
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 200
    checkpoint_every: int = 200
    snapshot_every: int = 0  # > 0: also keep the weights every this many steps as RUN/step_NNNNNN.pt (to average them)
    validate_every: int = 500
    validation_cases: list[str] = field(default_factory=list)  # cache names held out of training
    click_rate: float = 0.0  # fraction of fine-stage batches trained with simulated clicks
    max_click_rounds: int = 3
    guidance_method: str = "adaptive"  # or "gaussian", or "mixed": each click batch draws one of guidance.METHODS
    memory_channel: bool = False  # fine stage: a 4th input channel holding the current mass mask (interaction memory)
    architecture: str = "dynunet"  # or "vnet_attention" (network.ARCHITECTURES): the same stage grid, filters and patch
    lesion_patch_ratios: tuple[float, ...] = LESION_PATCH_RATIOS  # fine stage: patch centre ratio per class
    class_weights: tuple[float, ...] = FINE_CLASS_WEIGHTS  # fine stage: loss weight per class (Dice and cross-entropy terms)
    seed: int = 0
    init_weights: str = ""  # a new run starts from this checkpoint's or model file's weights (fine-tuning)
    bf16: bool = True
    threads: int = 0  # 0: torch default
    loader_workers: int = 1  # background patch-sampling processes (0: sample in the training process)
    compile: bool = False  # torch.compile the training forward pass: about a minute of compiling, then faster steps
    patch_size: int = 0  # edge of the cubic training patch in voxels (0: the stage's); inference windows follow it


def stage_config(stage: str, memory_channel: bool = False, architecture: str = "dynunet", patch_size: int = 0) -> NetworkConfig:
    """The network config a run of ``stage`` trains: the stage's grid, filters and patch with ``architecture``
    (``network.ARCHITECTURES``); ``memory_channel`` adds the fine stage's mass-mask input; ``patch_size``
    (voxels, > 0) replaces the stage's cubic patch, which also sets the inference windows."""
    config = replace(STAGES[stage], architecture=architecture)
    if patch_size:
        if patch_size < 0 or patch_size % minimum_input_multiple(config):
            raise RenalSegError(f"the patch size must be a positive multiple of {minimum_input_multiple(config)} voxels, got {patch_size}")
        config = replace(config, patch_size=(patch_size,) * 3)
    if memory_channel:
        if stage != "fine":
            raise RenalSegError("the memory channel (current mass mask) is an input of the fine stage only")
        config = replace(config, in_channels=MEMORY_CHANNEL + 1)
    return config


def training_progress(step: int, elapsed_s: float, options: FitOptions) -> float:
    """Fraction of the run done: by steps, or by training time when a time budget is set (whichever is further)."""
    by_steps = step / max(1, options.steps)
    return max(by_steps, elapsed_s / options.time_budget_s) if options.time_budget_s > 0 else by_steps


def lr_at(step: int, progress: float, options: FitOptions) -> float:
    """Linear warm-up over the first steps, then cosine decay over the run's progress to 1% of the peak."""
    if step < options.warmup_steps:
        return options.learning_rate * (step + 1) / options.warmup_steps
    return options.learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def fit(options: FitOptions) -> Path:
    """Train one stage's network; resumes from ``run_dir/last.pt`` if present. Returns the checkpoint path.

    With validation cases, the weights of the best validation score so far (``validate``) are kept in
    ``run_dir/best.pt`` beside ``last.pt``; with ``snapshot_every``, those of every so many steps too.
    """
    _check_counts(options)
    _check_same_held_out_cases(options)
    _check_per_class_values(options)
    config = stage_config(options.stage, options.memory_channel, options.architecture, options.patch_size)  # refused before a process group starts
    import torch
    from monai.losses import DiceCELoss

    from .network import build_network, count_parameters

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed + rank)
    # channels-last 3D lets oneDNN (CPU) and cuDNN pick their fastest convolution kernels (~25 % per step here).
    model = build_network(config).to(device, memory_format=torch.channels_last_3d)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    # Compiled for the training step only: click rounds and validation run the module as it is (eval mode,
    # other shapes), and checkpoints save its own state dict. Float32 on a 2-core AVX2 CPU: 2.15 s per step
    # against 2.73 s, after about a minute of compiling.
    forward = torch.compile(model) if options.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    weights = torch.tensor(options.class_weights, dtype=torch.float32, device=device) if config.out_channels == 4 else None
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, weight=weights)
    run_dir = Path(options.run_dir)
    checkpoint = run_dir / "last.pt"
    step, elapsed = 0, 0.0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        theirs = NetworkConfig.from_dict(state["config"]) if "config" in state else config
        if theirs != config:
            raise RenalSegError(f"{checkpoint} trains a {theirs.architecture} network with {theirs.in_channels} input channels on "
                                f"{theirs.patch_size[0]}^3 patches, this run a {config.architecture} with {config.in_channels} on "
                                f"{config.patch_size[0]}^3: resume it with the same --memory-channel, --architecture and --patch-size")
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
        log.info("resumed %s at step %d", checkpoint, step)
    elif options.init_weights:
        load_stage_weights(_unwrap(model), Path(options.init_weights), options.stage, widen=True)
        log.info("new run: weights from %s (%s stage), fresh optimizer and schedule", options.init_weights, options.stage)
    run_dir.mkdir(parents=True, exist_ok=True)  # only once the weights are known to load
    use_bf16 = options.bf16 and (device.type == "cuda" or bf16_supported())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
    (run_dir / "options.json").write_text(json.dumps(asdict(options), indent=2), encoding="utf-8")
    log.info("training %s: %d parameters, bf16=%s, device=%s", options.stage, count_parameters(model), use_bf16, device)
    patches = CachePatches(Path(options.cache_dir), config, options.seed + 1000 * step + rank, set(options.validation_cases), options.lesion_patch_ratios)
    stream = batches(patches, options.batch_size, options.loader_workers)
    clicker = ClickRounds(options) if options.stage == "fine" and options.click_rate > 0 else None
    rng = np.random.default_rng(options.seed + step)
    log_file = (run_dir / "log.jsonl").open("a", encoding="utf-8")
    started, losses = time.time(), []
    model.train()
    run_started = time.time() - elapsed
    while training_progress(step, time.time() - run_started, options) < 1.0:
        images, targets = next(stream)
        if config.in_channels > 1:
            guidance = np.zeros((images.shape[0], config.in_channels - 1, *images.shape[2:]), np.float32)
            images = np.concatenate([images, guidance], axis=1)
        x = torch.from_numpy(images).to(device, memory_format=torch.channels_last_3d)
        y = torch.from_numpy(targets).to(device)
        if clicker is not None and rng.random() < options.click_rate:
            x = clicker.add_clicks(model, x, targets, autocast, rng)
        learning_rate = lr_at(step, training_progress(step, time.time() - run_started, options), options)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        with autocast:
            logits = forward(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if rank == 0 and step % 20 == 0:
            record = {"step": step, "loss": float(np.mean(losses)), "lr": learning_rate, "sec_per_step": (time.time() - started) / len(losses)}
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            log.info("step %d loss %.4f (%.2f s/step)", step, record["loss"], record["sec_per_step"])
            losses, started = [], time.time()
        done = training_progress(step, time.time() - run_started, options) >= 1.0
        if rank == 0 and (step % options.checkpoint_every == 0 or done):
            _save_checkpoint(checkpoint, model, config, optimizer, step, time.time() - run_started)
        if rank == 0 and options.snapshot_every and step % options.snapshot_every == 0:
            _save_weights(run_dir / f"step_{step:06d}.pt", model, config, step)
        if rank == 0 and options.validation_cases and (step % options.validate_every == 0 or done):
            scores = validate(_unwrap(model), config, Path(options.cache_dir), options.validation_cases, autocast)
            log_file.write(json.dumps({"step": step, "validation": scores}) + "\n")
            log_file.flush()
            log.info("step %d validation %s", step, scores)
            if _keep_if_best(run_dir / "best.pt", model, config, step, scores):
                log.info("step %d is the best validation so far: %s", step, run_dir / "best.pt")
            model.train()
            started = time.time()
    log_file.close()
    if distributed:
        torch.distributed.destroy_process_group()
    return checkpoint


def _check_counts(options: FitOptions) -> None:
    at_least = {"steps": 1, "batch_size": 1, "checkpoint_every": 1, "validate_every": 1, "warmup_steps": 0, "snapshot_every": 0, "time_budget_s": 0}
    for name, least in at_least.items():
        if getattr(options, name) < least:
            raise RenalSegError(f"{name} must be at least {least}: got {getattr(options, name)}")
    if options.learning_rate < 0 or not 0 <= options.click_rate <= 1:
        raise RenalSegError(f"learning rate must not be negative (got {options.learning_rate}), click rate within 0..1 (got {options.click_rate})")


def _check_per_class_values(options: FitOptions) -> None:
    for name in ("lesion_patch_ratios", "class_weights"):
        values = getattr(options, name)
        if len(values) != 4 or min(values) < 0 or sum(values) <= 0:
            raise RenalSegError(f"{name} needs 4 values (background, kidney, tumor, cyst), none negative, not all 0: got {tuple(values)}")
    if sum(options.lesion_patch_ratios[:2]) <= 0:
        raise RenalSegError(f"lesion_patch_ratios {tuple(options.lesion_patch_ratios)}: background or kidney needs a share, as not every volume holds a lesion")


def _check_same_held_out_cases(options: FitOptions) -> None:
    """A resumed run must hold out the cases it held out before, or validation cases leak into training."""
    saved = Path(options.run_dir) / "options.json"
    if (Path(options.run_dir) / "last.pt").is_file() and saved.is_file():
        before = set(json.loads(saved.read_text(encoding="utf-8")).get("validation_cases", []))
        if before != set(options.validation_cases):
            raise RenalSegError(f"{options.run_dir} was trained holding out {len(before)} validation case(s), this run holds out "
                                f"{len(options.validation_cases)}: resume it with the same --labels")


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _save_checkpoint(path: Path, model, config: NetworkConfig, optimizer, step: int, elapsed_s: float) -> None:
    import torch

    from .network import config_dict

    tmp = path.with_name(".partial-" + path.name)
    state = {"model": _unwrap(model).state_dict(), "config": config_dict(config), "optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed_s}
    torch.save(state, tmp)
    os.replace(tmp, path)


def _keep_if_best(path: Path, model, config: NetworkConfig, step: int, scores: dict[str, float]) -> bool:
    """Save the weights to ``path`` when their validation score beats the one saved there (survives resume).

    A best.pt scored by the earlier rule (mean region Dice, no ``score`` among its figures) is not comparable
    and is replaced."""
    import torch

    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if "score" in saved.get("validation", {}) and saved["score"] >= scores["score"]:
            return False
    _save_weights(path, model, config, step, score=scores["score"], validation=scores)
    return True


def _save_weights(path: Path, model, config: NetworkConfig, step: int, **extra) -> None:
    """Weights and network config only (no optimizer state): what ``train bundle`` reads, a quarter of last.pt."""
    import torch

    from .network import config_dict

    tmp = path.with_name(".partial-" + path.name)
    torch.save({"model": _unwrap(model).state_dict(), "config": config_dict(config), "step": step, **extra}, tmp)
    os.replace(tmp, path)


def validation_files(cache_dir: Path, names: Sequence[str]) -> list[Path]:
    """One cached volume per held-out case, the case's kidneys taken in turn, so that validation sees
    every held-out label map at the cost of one kidney each."""
    files = []
    for n, name in enumerate(names):
        volumes = sorted(Path(cache_dir).glob(f"{name}_*.npz"))
        if volumes:
            files.append(volumes[n % len(volumes)])
    return files


def validate(model, config: NetworkConfig, cache_dir: Path, names: list[str], autocast) -> dict[str, float]:
    """Validation figures of a network on held-out cached volumes (``validation_files``), and its ``score``.

    Each volume is cropped as inference crops the fine stage's input: its kidneys and masses (here the reference's)
    with ``KIDNEY_MARGIN_MM`` around them. Sliding windows of the training patch size; for the fine stage the labels
    are decided down the KiTS hierarchy and postprocessed as in inference (so checkpoints are chosen on the decision
    that ships).
    Figures: mean Dice per KiTS region (the coarse stage: of its kidney mask) and, for the fine stage, the
    lesions pooled over the volumes: recall of those of 1 mL or more, precision, false positives per volume.
    ``score``, which picks best.pt, is the mean of the region Dice and, for the fine stage, the lesion F1
    (recall of 1 mL lesions with precision): Dice alone kept checkpoints that found fewer lesions.
    """
    import torch
    from monai.inferers import sliding_window_inference

    from .evaluation import dice as region_dice, lesion_detection, padded_box
    from .inference import KIDNEY_MARGIN_MM, decide_labels, postprocess

    model.eval()
    dice: dict[str, list[float]] = {}
    lesions = dict.fromkeys(("lesions_reference_1ml", "lesions_found_1ml", "lesions_predicted", "false_positive_lesions"), 0)
    files = validation_files(cache_dir, names)
    spacing = (config.spacing_mm,) * 3
    with torch.no_grad():
        for path in files:
            with np.load(path) as data:
                image, reference = normalize_ct(data["ct"]), data["labels"]
            if reference.any():
                box = padded_box(reference > 0, round(KIDNEY_MARGIN_MM / config.spacing_mm))
                image, reference = image[box], reference[box]
            x = torch.zeros((1, config.in_channels, *image.shape))
            x[0, 0] = torch.from_numpy(image)
            with autocast:
                logits = sliding_window_inference(x, config.patch_size, 1, model, overlap=0.25, mode="gaussian", padding_mode="constant")
            if config.out_channels == 4:
                prediction = postprocess(decide_labels(torch.softmax(logits.float(), 1)[0].numpy()), spacing)
                regions = L.HEC_REGIONS
                found = lesion_detection(prediction, reference, voxel_ml=voxel_ml(spacing))
                for key in lesions:
                    lesions[key] += found[key]
            else:
                prediction, regions = logits.float().argmax(1)[0].numpy(), {"kidney_and_masses": (1,)}
            for region, values in regions.items():
                p, r = np.isin(prediction, values), np.isin(reference, values)
                if r.any() or p.any():  # a region empty in both says nothing about the network
                    dice.setdefault(region, []).append(region_dice(p, r))
    scores = {region: float(np.mean(values)) for region, values in dice.items()}
    parts = list(scores.values())
    if config.out_channels == 4 and files:
        n_reference, n_found, n_predicted, n_false = lesions.values()
        recall = n_found / n_reference if n_reference else 1.0
        precision = 1.0 - n_false / n_predicted if n_predicted else 1.0
        scores.update(lesion_recall_1ml=recall, lesion_precision=precision, false_positives_per_volume=n_false / len(files))
        parts.append(2 * recall * precision / (recall + precision) if recall + precision else 0.0)
    scores["score"] = float(np.mean(parts)) if parts else 0.0
    return {key: round(value, 4) for key, value in scores.items()}


class ClickRounds:
    """Simulated user clicks during training: the standard iterative protocol on the current prediction."""

    def __init__(self, options: FitOptions):
        self.options = options

    def add_clicks(self, model, x, targets: np.ndarray, autocast, rng: np.random.Generator):
        import torch

        from .clicksim import next_click
        from .guidance import METHODS, encode_clicks

        x = x.clone()
        spacing = (STAGES["fine"].spacing_mm,) * 3
        method = self.options.guidance_method if self.options.guidance_method != "mixed" else METHODS[int(rng.integers(len(METHODS)))]
        clicks: list[list] = [[] for _ in range(x.shape[0])]
        rounds = int(rng.integers(1, self.options.max_click_rounds + 1))
        model.eval()
        for _ in range(rounds):
            with torch.no_grad(), autocast:
                prediction = model(x).float().argmax(1).cpu().numpy()
            for b in range(x.shape[0]):
                click = next_click(prediction[b], targets[b, 0], labels=L.LESION_LABELS)
                if click is None:
                    continue
                clicks[b].append(click)
                image = x[b, 0].cpu().numpy()
                x[b, 1:3] = torch.from_numpy(encode_clicks(image, clicks[b], spacing, method))
                if x.shape[1] > MEMORY_CHANNEL:  # the mask the user is correcting: this round's masses
                    x[b, MEMORY_CHANNEL] = torch.from_numpy(np.isin(prediction[b], L.LESION_LABELS).astype(np.float32))
        model.train()
        return x


def stage_weights(path: Path, stage: str) -> tuple[dict, NetworkConfig]:
    """One stage's float32 weights and network config from a training checkpoint (RUN/last.pt, RUN/best.pt)
    or a model file (checkpoints written before configs were stored there get the stage's default)."""
    from .network import float_weights, read_weights_file

    payload = read_weights_file(path, "checkpoint or model file")
    if "model" in payload:
        state, config = payload["model"], NetworkConfig.from_dict(payload["config"]) if "config" in payload else STAGES[stage]
    elif stage in payload:
        state, config = float_weights(payload[stage]["state_dict"]), NetworkConfig.from_dict(payload[stage]["config"])
    else:
        raise RenalSegError(f"{path}: model file has no {stage} stage (it has: {', '.join(payload)})")
    default = STAGES[stage]
    if replace(config, in_channels=default.in_channels, architecture=default.architecture, patch_size=default.patch_size) != default:
        raise _not_fitting(path, stage)
    return state, config


def load_stage_weights(module, path: Path, stage: str, widen: bool = False) -> None:
    """Load one stage's weights from ``path`` into ``module``; weights of another network are a one-line error.

    ``widen``: weights of a network with fewer input channels fill the first ones and the extra input
    channels start at zero weight, so the widened network computes exactly what the loaded one did
    while the new inputs are empty (fine-tuning a 3-channel model into one with the memory channel).
    """
    state, _ = stage_weights(path, stage)
    _load_state(module, _widened(state, module.state_dict()) if widen else state, path, stage)


def _load_state(module, state: dict, path: Path, stage: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError:  # torch lists every missing or mis-shaped tensor
        raise _not_fitting(path, stage) from None


def _not_fitting(path: Path, stage: str) -> RenalSegError:
    return RenalSegError(f"{path}: its weights do not fit the {stage} network (another stage's or another architecture's)")


def _widened(state: dict, target: dict) -> dict:
    """``state`` with each tensor that has fewer input channels (dim 1) than ``target``'s zero-padded to fit."""
    import torch

    out = dict(state)
    for key, tensor in state.items():
        want = target.get(key)
        if want is not None and tensor.dim() == want.dim() >= 2 and tensor.shape[1] < want.shape[1] and tensor.shape[:1] + tensor.shape[2:] == want.shape[:1] + want.shape[2:]:
            padding = torch.zeros((tensor.shape[0], want.shape[1] - tensor.shape[1], *tensor.shape[2:]), dtype=tensor.dtype)
            out[key] = torch.cat([tensor, padding], dim=1)
    return out


def train_from_checkpoint(checkpoint: Path, stage: str):
    """A network of the stage, as configured and with the weights of a checkpoint or model file (for bundling)."""
    from .network import build_network

    state, config = stage_weights(checkpoint, stage)
    module = build_network(config)
    _load_state(module, state, checkpoint, stage)
    return module.eval(), config


def averaged_from_checkpoints(checkpoints: Sequence[Path], stage: str):
    """A network of the stage whose weights are the mean of several checkpoints' (a uniform model soup).

    Meant for runs fine-tuned from one start (Wortsman et al. 2022, "Model soups"): their weights lie in one
    basin, so the mean is a model of its own, often better than each, at the inference cost of one. A plain
    mean of state dicts: ``torch.optim.swa_utils.AveragedModel`` averages one model's trajectory step by step.
    The networks must share one configuration.
    """
    import torch

    module, config = train_from_checkpoint(checkpoints[0], stage)
    states = [module.state_dict()]
    for checkpoint in checkpoints[1:]:
        state, other_config = stage_weights(checkpoint, stage)  # float32 weights only: no second network built
        if other_config != config:
            raise RenalSegError(f"{checkpoint}: its {stage} network is configured differently from {checkpoints[0]}'s; only networks of one configuration can be averaged")
        states.append(state)
    module.load_state_dict({k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v for k, v in states[0].items()})
    return module, config


def bundle(coarse_checkpoint: Path, fine_checkpoints: Sequence[Path], out_path: Path, card: dict) -> Path:
    """Write the bundled model file (both stages) and its model card; several fine checkpoints are averaged."""
    from .network import save_model

    networks = {"coarse": train_from_checkpoint(coarse_checkpoint, "coarse"), "fine": averaged_from_checkpoints(fine_checkpoints, "fine")}
    return save_model(out_path, networks, card)
