"""The ``renalseg`` command line: argument parsing and error reporting around the engine's functions.

Each subcommand has an ``_add_<name>`` function declaring its arguments and a ``_run_<name>``
function calling the engine. Heavy modules are imported inside the ``_run_`` functions so that
``renalseg --help`` is instant. User errors (``RenalSegError``) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .device import DEVICE_CHOICES
from .errors import RenalSegError
from .network import ARCHITECTURES

log = logging.getLogger("renalseg")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="compute device (default: auto = CUDA, then Apple MPS, then CPU)")


# --- segment ---------------------------------------------------------------------------------------

def _fraction(text: str) -> float:
    """An argparse type: a number in 0-1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in 0-1")
    return value


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="auto-segment kidneys, tumors and cysts in a CT")
    p.add_argument("ct", help="CT: NIfTI/NRRD/MetaImage file or DICOM folder (with --batch: a folder of CT files)")
    p.add_argument("-o", "--output", required=True, help="output KiTS label map (.nii.gz, .nrrd, .mha): 1 kidney, 2 tumor, 3 cyst "
                   "(with --batch: a folder, one NAME.nii.gz per input CT)")
    p.add_argument("--batch", action="store_true", help="segment every CT file in the folder CT, loading the model once; "
                   "label maps already in the output folder are kept")
    p.add_argument("--stl", metavar="DIR", help="also write one STL mesh per segment into DIR")
    p.add_argument("--probability", metavar="PATH", help="also write the network's tumor-or-cyst probability map (percent, "
                   "0-100, the CT's grid; 'renalseg export --probability' adds each lesion's mean to the measurements) "
                   "(with --batch: a folder, one NAME.nii.gz per input CT)")
    p.add_argument("--min-lesion-probability", type=_fraction, default=0.0, metavar="P",
                   help="turn into kidney each lesion whose mean network probability is under P (0-1; default 0: keep all). "
                   "Fewer false lesions for some true ones: at 0.7, 18 of 29 false and 9 of 59 true lesions went on "
                   "40 held-out synthetic cases")
    p.add_argument("--fast", action="store_true", help="less window overlap: faster, slightly less accurate")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average the networks over the CT and its "
                   "left-right mirror image (about 2x the network time; ignored with --fast)")
    p.add_argument("--model", help="model file (default: the bundled model)")
    _add_device(p)


def _tqdm_progress(description: str):
    """A progress callback (fraction, message) drawing a tqdm bar; returns (callback, close)."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc=description, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}", leave=False)

    def update(fraction: float, message: str) -> None:
        bar.n = int(round(100 * fraction))
        bar.set_postfix_str(message)
        bar.refresh()

    return update, bar.close


def _run_segment(args: argparse.Namespace) -> int:
    from .device import resolve_device
    from .inference import auto_segment
    from .volume import check_label_path, read_volume, write_labels

    output = Path(args.output)
    resolve_device(args.device)  # a missing GPU is reported before any work
    if args.batch:
        return _segment_folder(Path(args.ct), output, args)
    for path in filter(None, (output, args.probability)):
        check_label_path(path)  # a wrong extension is reported before the work, not after it
    from tqdm.contrib.logging import logging_redirect_tqdm

    ct = read_volume(args.ct)
    progress, close = _tqdm_progress("segmenting")
    try:
        with logging_redirect_tqdm():  # warnings print above the bar, not into it
            result = auto_segment(ct, device=args.device, fast=args.fast, flip_tta=args.tta, model_path=args.model, progress=progress,
                                  min_lesion_probability=args.min_lesion_probability)
    finally:
        close()
    labels = result.labels
    print(f"labels: {write_labels(labels, output, ct)}")
    if args.probability:
        print(f"lesion probability: {write_labels(result.lesion_probability, args.probability, ct)}")
    if args.stl:
        from .export import export_meshes
        from .labels import body_midline_x, segment_map

        for path in export_meshes(segment_map(labels, body_midline_x(ct)), args.stl):
            print(f"mesh:   {path}")
    return 0


def _segment_folder(folder: Path, out_dir: Path, args: argparse.Namespace) -> int:
    """``segment --batch``: every CT file of ``folder`` -> ``out_dir/NAME.nii.gz`` (and with ``--probability``
    its lesion probability map), one model load."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .inference import Segmenter, auto_segment
    from .volume import IMAGE_SUFFIXES, case_name, read_volume, write_labels

    if args.stl:
        raise RenalSegError("--stl is for one CT; use 'renalseg export' on the batch's label maps")
    if not folder.is_dir():
        raise RenalSegError(f"{folder}: with --batch, CT must be a folder of CT files")
    cases = {case_name(f): f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".") and case_name(f)}
    if not cases:
        raise RenalSegError(f"{folder}: no CT files ({', '.join(IMAGE_SUFFIXES)})")
    probability_dir = Path(args.probability) if args.probability else None
    outputs = [d for d in (out_dir, probability_dir) if d is not None]
    for directory in outputs:
        directory.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter.load(args.model, args.device, args.fast, args.tta)
    todo = {name: path for name, path in cases.items() if not all((d / f"{name}.nii.gz").exists() for d in outputs)}
    with logging_redirect_tqdm():
        for name, path in tqdm(todo.items(), desc="segmenting", unit="CT"):
            ct = read_volume(path)
            result = auto_segment(ct, segmenter=segmenter, min_lesion_probability=args.min_lesion_probability)
            write_labels(result.labels, out_dir / f"{name}.nii.gz", ct)
            if probability_dir is not None:
                write_labels(result.lesion_probability, probability_dir / f"{name}.nii.gz", ct)
    print(f"labels: {len(todo)} written, {len(cases) - len(todo)} already there, in {out_dir}")
    return 0


# --- refine ----------------------------------------------------------------------------------------

_CLICK_LABELS = {"tumor": 2, "cyst": 3, "kidney": 1}


def _parse_click(text: str) -> tuple[tuple[float, float, float], bool, int]:
    """'x,y,z[,+|-][,tumor|cyst|kidney]' -> (point, positive, label)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        point = tuple(float(v) for v in parts[:3])
    except ValueError:
        point = ()
    if len(point) != 3 or len(parts) > 5:
        raise RenalSegError(f"--click {text!r}: expected x,y,z[,+|-][,tumor|cyst|kidney]")
    positive, label = True, _CLICK_LABELS["tumor"]
    for extra in parts[3:]:
        if extra in ("+", "-"):
            positive = extra == "+"
        elif extra in _CLICK_LABELS:
            label = _CLICK_LABELS[extra]
        else:
            raise RenalSegError(f"--click {text!r}: {extra!r} is neither + / - nor tumor / cyst / kidney")
    return point, positive, label


def _add_refine(sub) -> None:
    p = sub.add_parser("refine", help="refine a label map with positive/negative clicks (scripted click-to-refine)")
    p.add_argument("ct", help="CT: NIfTI/NRRD/MetaImage file or DICOM folder")
    p.add_argument("labels", help="current KiTS label map (e.g. from 'renalseg segment')")
    p.add_argument("--click", action="append", required=True, metavar="x,y,z[,+|-][,tumor|cyst|kidney]",
                   help="a click in mm (repeatable, applied in order); + adds (default), - removes; class default tumor")
    p.add_argument("--coords", choices=("RAS", "LPS"), default="RAS", help="coordinate system of the clicks (default RAS, as 3D Slicer shows)")
    p.add_argument("--lock", action="append", choices=tuple(_CLICK_LABELS), default=[], help="never change this class (repeatable)")
    p.add_argument("--guidance", choices=("adaptive", "gaussian"), help="click encoding (default: the better one in the click evaluation, see README)")
    p.add_argument("-o", "--output", required=True, help="refined KiTS label map")
    p.add_argument("--model", help="model file (default: the bundled model)")
    _add_device(p)


def _run_refine(args: argparse.Namespace) -> int:
    from . import labels as L
    from .device import resolve_device
    from .interactive import RefinementSession
    from .volume import ras_to_lps, read_labels, read_volume, same_geometry, write_labels

    clicks = [_parse_click(text) for text in args.click]
    resolve_device(args.device)
    ct, labels = read_volume(args.ct), read_labels(args.labels)
    if not same_geometry(ct, labels, tolerance=1e-3):
        raise RenalSegError(f"{args.labels}: label map geometry differs from the CT's")
    session = RefinementSession(ct, labels, device=args.device, model_path=args.model,
                                locked_labels=[_CLICK_LABELS[name] for name in args.lock], guidance=args.guidance)
    for point, positive, label in clicks:
        lps = tuple(ras_to_lps(point)) if args.coords == "RAS" else point
        session.add_click(lps, positive, label)
        print(f"click {'+' if positive else '-'}{L.CLASS_NAMES[label]} at {args.coords} {point}: {L.ClassChange.of_last_change(session).describe()}")
    print(f"labels: {write_labels(session.labels, args.output, ct)}")
    return 0


# --- train -----------------------------------------------------------------------------------------

def _per_class(text: str) -> tuple[float, ...]:
    """'0.1,0.25,0.45,0.2' -> four numbers, one per KiTS class (background, kidney, tumor, cyst)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r}: give 4 comma-separated numbers (background, kidney, tumor, cyst)")
    return values


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="prepare training data, train a network stage, bundle a model file")
    steps = p.add_subparsers(dest="train_step", metavar="STEP", required=True)
    prep = steps.add_parser("prepare", help="cache stage volumes from KiTS23 label maps (+ synthesis) or a real dataset")
    prep.add_argument("--stage", choices=("coarse", "fine"), required=True)
    source = prep.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", help="folder of KiTS23 label maps (case_*.nii.gz): CT is synthesised")
    source.add_argument("--real", help="real dataset: KiTS layout (case_*/imaging.nii.gz) or nnU-Net raw (imagesTr/, labelsTr/)")
    prep.add_argument("--cache", required=True, help="output folder of cached .npz volumes")
    prep.add_argument("--variants", type=int, default=2, help="synthetic variants per label map (default 2)")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--part", default="1/1", help="K/N: prepare only the K-th of N interleaved parts (run parts in parallel)")
    fit = steps.add_parser("fit", help="train one stage on a cache (resumes from RUN/last.pt; use torchrun for several GPUs)")
    fit.add_argument("--stage", choices=("coarse", "fine"), required=True)
    fit.add_argument("--cache", required=True)
    fit.add_argument("--run", required=True, help="run folder: checkpoints and log.jsonl")
    fit.add_argument("--steps", type=int, default=10_000)
    fit.add_argument("--minutes", type=float, default=0.0, help="total training-time budget of the run, earlier sittings of a resumed run included: the schedule ends after this many minutes (or --steps)")
    fit.add_argument("--batch-size", type=int, default=2)
    fit.add_argument("--lr", type=float, default=2e-3)
    fit.add_argument("--labels", help="KiTS label folder: its validation cases are held out and used for validation")
    fit.add_argument("--click-rate", type=float, default=0.0, help="fraction of batches with simulated click rounds (fine stage)")
    fit.add_argument("--guidance", choices=("adaptive", "gaussian", "mixed"), default="adaptive", help="click encoding of the simulated clicks (mixed: each click batch draws one)")
    fit.add_argument("--memory-channel", action="store_true", help="fine stage: a 4th input channel with the current mass mask (interaction memory); --init may name a 3-channel model")
    fit.add_argument("--architecture", choices=ARCHITECTURES, default="dynunet",
                     help="network: the default nnU-Net-style DynUNet, or the V-Net with channel and spatial attention, to compare them on the same data")
    fit.add_argument("--patch-size", type=int, default=0, metavar="N",
                     help="edge of the cubic training patch in voxels, a multiple of 16 (default: 64); inference windows follow it")
    fit.add_argument("--lesion-patch-ratios", type=_per_class, metavar="B,K,T,C",
                     help="fine stage: how often a patch is centred on background, kidney, tumor, cyst (default: the bundled model's recipe)")
    fit.add_argument("--class-weights", type=_per_class, metavar="B,K,T,C",
                     help="fine stage: loss weight of background, kidney, tumor, cyst (default: the bundled model's recipe)")
    fit.add_argument("--validate-every", type=int, default=500)
    fit.add_argument("--snapshot-every", type=int, default=0, metavar="N",
                     help="also keep the weights every N steps as RUN/step_NNNNNN.pt, to average them with train bundle (default: off)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--init", help="a new run starts from these weights: a checkpoint or a model file, e.g. the bundled one, to fine-tune it (on real CT with a --real cache)")
    fit.add_argument("--no-bf16", action="store_true", help="train in float32 even where bf16 autocast is available")
    fit.add_argument("--compile", action="store_true", help="torch.compile the training step: about a minute of compiling, then about 20 %% less time per step")
    bundle = steps.add_parser("bundle", help="write a model file (coarse + fine) and its model card")
    bundle.add_argument("--coarse", required=True, help="coarse run's checkpoint (RUN/last.pt or best.pt), or a model file to take that stage from")
    bundle.add_argument("--fine", required=True, nargs="+", metavar="CHECKPOINT",
                        help="fine run's checkpoint (RUN/last.pt or best.pt), or a model file to take that stage from; "
                             "several (runs fine-tuned from one start): their weights are averaged into one network")
    bundle.add_argument("--card", required=True, help="JSON file with the model card's text fields")
    bundle.add_argument("-o", "--output", required=True)


def _run_train(args: argparse.Namespace) -> int:
    from . import training as T

    if args.train_step == "prepare":
        index, parts = (int(v) for v in args.part.split("/"))
        if args.labels:
            train, validation = T.kits_case_split(args.labels)
            cases = [
                (f"{path.name[:-7]}_v{variant}", lambda path=path, seed=args.seed * 1000 + n * 10 + variant: T.synthetic_case(path, seed, args.stage))
                for n, path in enumerate(validation + train)
                for variant in range(1 if path in validation else args.variants)
            ]
        else:
            cases = [(ct.parent.name if ct.name == "imaging.nii.gz" else ct.name[:-12], lambda ct=ct, lab=lab: T.real_case(ct, lab)) for ct, lab in T.real_case_pairs(args.real)]
        written = T.prepare_cache(cases[index - 1 :: parts], args.cache, args.stage)
        print(f"{len(written)} volumes written to {args.cache}")
    elif args.train_step == "fit":
        validation = [f"{p.name[:-7]}_v0" for p in T.kits_case_split(args.labels)[1]] if args.labels else []
        per_class = {name: getattr(args, name) for name in ("lesion_patch_ratios", "class_weights") if getattr(args, name) is not None}
        options = T.FitOptions(
            stage=args.stage, cache_dir=args.cache, run_dir=args.run, steps=args.steps, time_budget_s=60 * args.minutes, batch_size=args.batch_size, learning_rate=args.lr,
            validation_cases=validation, click_rate=args.click_rate, guidance_method=args.guidance, validate_every=args.validate_every,
            snapshot_every=args.snapshot_every,
            seed=args.seed, init_weights=args.init or "", bf16=not args.no_bf16, memory_channel=args.memory_channel,
            architecture=args.architecture, compile=args.compile, patch_size=args.patch_size,
            **per_class,
        )
        print(f"checkpoint: {T.fit(options)}")
    else:
        card = json.loads(Path(args.card).read_text(encoding="utf-8"))
        print(f"model: {T.bundle(Path(args.coarse), [Path(f) for f in args.fine], Path(args.output), card)}")
    return 0


# --- bench -----------------------------------------------------------------------------------------

def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time auto segmentation of a KiTS-size CT (512x512x300) against a full-resolution baseline")
    p.add_argument("--ct", help="CT to benchmark (default: the bundled sample resampled to 512x512x300 at 0.8x0.8x1.5 mm)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-baseline", action="store_true", help="skip the (slow) full-resolution baseline")
    p.add_argument("--model", help="model file (default: the bundled model)")
    _add_device(p)


def _run_bench(args: argparse.Namespace) -> int:
    from . import benchmark
    from .volume import read_volume

    ct = read_volume(args.ct) if args.ct else benchmark.kits_size_ct(read_volume(sample_ct_path()))
    result = benchmark.run(ct, repeats=args.repeats, device=args.device, baseline=not args.no_baseline, model_path=args.model)
    print(json.dumps(result, indent=2))
    return 0


def sample_ct_path() -> Path:
    """The bundled sample CT (synthesised from a KiTS23 label map)."""
    path = Path(__file__).resolve().parents[2] / "Resources" / "SampleData" / "renalseg_sample_ct.nii.gz"
    if not path.is_file():
        raise RenalSegError(f"{path}: bundled sample CT not found (reinstall RenalSeg from its source tree)")
    return path


def sample_labels_path() -> Path:
    """The bundled sample's reference KiTS label map (the real label map its CT was synthesised around)."""
    ct_path = sample_ct_path()
    return ct_path.with_name(ct_path.name.replace("_ct", "_labels"))


# --- demo ------------------------------------------------------------------------------------------

def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="segment the bundled sample CT: labels, STL meshes, measurements and a report")
    p.add_argument("--out", default="renalseg_demo", help="output folder (default: ./renalseg_demo)")
    _add_device(p)


def _run_demo(args: argparse.Namespace) -> int:
    import time

    from .device import resolve_device
    from .evaluation import evaluate_case
    from .export import export_all
    from .inference import auto_segment
    from .volume import read_labels, read_volume, write_labels

    resolve_device(args.device)
    ct_path = sample_ct_path()
    ct = read_volume(ct_path)
    print(f"sample CT: {ct_path} ({ct.GetSize()[0]}x{ct.GetSize()[1]}x{ct.GetSize()[2]} voxels; synthetic CT from a real KiTS23 label map)")
    progress, close = _tqdm_progress("segmenting")
    started = time.perf_counter()
    try:
        result = auto_segment(ct, device=args.device, progress=progress)
    finally:
        close()
    print(f"segmented in {time.perf_counter() - started:.1f} s")
    labels, out = result.labels, Path(args.out)
    written = [write_labels(labels, out / "labels.nii.gz", ct), write_labels(result.lesion_probability, out / "lesion_probability.nii.gz", ct)]
    progress, close = _tqdm_progress("exporting")
    try:
        written += export_all(labels, ct, out, formats=("stl", "3mf", "seg.nrrd", "csv", "json", "report"),
                              title="RenalSeg demo: synthetic sample CT", progress=progress, lesion_probability=result.lesion_probability)
    finally:
        close()
    for path in written:
        print(f"  {path}")
    reference_path = sample_labels_path()
    if reference_path.is_file():
        import SimpleITK as sitk

        scores = evaluate_case(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(read_labels(reference_path)), ct.GetSpacing()[::-1])
        dice = ", ".join(f"{region} {scores[f'dice_{region}']:.3f}" for region in ("kidney_and_masses", "masses", "tumor") if f"dice_{region}" in scores)
        print(f"Dice against the sample's reference labels (synthetic CT, not a clinical result): {dice}")
    return 0


# --- info ------------------------------------------------------------------------------------------

def _add_info(sub) -> None:
    sub.add_parser("info", help="show the environment, the compute devices and the bundled model card")


def _run_info(args: argparse.Namespace) -> int:
    import platform

    from .device import describe_devices

    print(f"RenalSeg {__version__}  (Python {platform.python_version()}, {platform.system()} {platform.machine()})")
    for key, value in describe_devices().items():
        print(f"  {key:18s} {value}")
    try:
        from .network import default_model_path, read_model_card

        path = default_model_path()
        card = read_model_card(path)
        print(f"model: {path}")
        print(json.dumps(card, indent=2))
    except (ImportError, RenalSegError) as exc:
        print(f"model: none available ({exc})")
    return 0


# --- evaluate --------------------------------------------------------------------------------------

def _add_evaluate(sub) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="KiTS metrics of predicted label maps against references: Dice, surface Dice, lesion detection",
        description="Pairs files by case name (extension ignored) and prints per-case and mean Dice and surface Dice "
        "for the KiTS regions (kidney+masses, masses, tumor) and lesion recall (all lesions, and those of at least 1 mL, also by class), precision and false positives, "
        "with 95%% bootstrap intervals of the means.",
    )
    parser.add_argument("pred_dir", metavar="PRED_DIR", type=Path, help="folder of predicted KiTS label maps")
    parser.add_argument("ref_dir", metavar="REF_DIR", type=Path, help="folder of reference KiTS label maps, same case names")
    parser.add_argument("--csv", metavar="OUT", type=Path, help="also write the per-case metrics and the means to this CSV file")
    parser.add_argument("--baseline", metavar="BASE_DIR", type=Path,
                        help="also score the predictions in BASE_DIR (same case names) and print the differences with paired 95 %% bootstrap intervals")
    parser.add_argument("--interactive", metavar="CT_DIR", type=Path,
                        help="also run the simulated-click protocol (1..10 clicks, NoC@85/90, missed-lesion clicks) starting from "
                        "PRED_DIR's auto segmentations, with the CTs of the same case names in CT_DIR, for adaptive and gaussian guidance")
    parser.add_argument("--json", metavar="OUT", type=Path, help="write the interactive results as JSON")
    parser.add_argument("--interactive-baseline", metavar="JSON", type=Path,
                        help="with --interactive: compare with an earlier --json result of the same cases (another model, say) and print "
                        "the differences with paired 95 %% bootstrap intervals")
    parser.add_argument("--model", help="model file for --interactive (default: the bundled model)")
    parser.add_argument("--guidance", action="append", choices=("adaptive", "gaussian"),
                        help="click encoding(s) to evaluate with --interactive (repeatable; default: both, side by side)")
    _add_device(parser)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import confidence_intervals, evaluate_folders, format_comparison, format_table, summarize, write_csv

    if args.interactive:
        if args.baseline:
            raise RenalSegError("--baseline compares auto segmentations; with --interactive use --interactive-baseline")
        return _run_interactive_evaluation(args)
    if args.interactive_baseline:
        raise RenalSegError("--interactive-baseline compares click evaluations; it needs --interactive")
    rows = evaluate_folders(args.pred_dir, args.ref_dir)
    summary = summarize(rows)
    print(format_table(rows, summary, confidence_intervals(rows)))
    if args.csv:
        print(f"metrics: {write_csv(rows, args.csv, summary)}")
    if args.baseline:
        baseline = evaluate_folders(args.baseline, args.ref_dir)
        print(format_comparison(summary, summarize(baseline), confidence_intervals(rows, baseline), str(args.baseline)))
    return 0


def _read_click_results(path: Path, methods: tuple[str, ...], names: list[str]) -> dict:
    """An earlier ``evaluate --interactive --json`` result to compare with, checked before the long evaluation
    starts: it must hold one of ``methods`` played on the cases ``names``."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RenalSegError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(result, dict) or not isinstance(result.get("methods"), dict):
        raise RenalSegError(f"{path}: not the --json result of 'renalseg evaluate --interactive'")
    shared = [method for method in methods if method in result["methods"]]
    if not shared:
        raise RenalSegError(f"{path} holds no {' or '.join(methods)} clicks to compare with")
    for method in shared:
        if sorted(result["methods"][method].get("cases", {})) != names:
            raise RenalSegError(f"{path}: its {method} clicks were played on other cases than these; a paired comparison needs the same cases")
    return result


class _ReferenceCases(Sequence):
    """``interactive_evaluation``'s cases, (name, reference labels, spacing (k, j, i)), each read from its file when
    its turn comes: a folder of whole CTs' label maps need not fit in memory at once."""

    def __init__(self, files: dict[str, Path]):
        self.names, self.files = sorted(files), files

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        import SimpleITK as sitk

        from .volume import read_labels

        name = self.names[index]
        image = read_labels(self.files[name])
        return name, sitk.GetArrayFromImage(image), image.GetSpacing()[::-1]


def _run_interactive_evaluation(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk

    from .evaluation import compare_interactive, format_interactive_comparison, format_interactive_table, interactive_evaluation, label_files
    from .inference import Segmenter
    from .interactive import RefinementSession, click_refiner
    from .outputs import atomic_path
    from .volume import read_labels, read_volume

    predictions, references = label_files(args.pred_dir, "prediction"), label_files(args.ref_dir, "reference")
    cts = {name: path for name, path in label_files(args.interactive, "CT").items()}
    missing = sorted(name for name in references if name not in predictions or name not in cts)
    if missing or not references:
        raise RenalSegError(f"no prediction or CT for case(s) {', '.join(missing) or '(none)'}")
    methods = tuple(args.guidance or ("adaptive", "gaussian"))
    baseline = _read_click_results(args.interactive_baseline, methods, sorted(references)) if args.interactive_baseline else None
    segmenter = Segmenter.load(args.model, args.device)
    click_seconds: dict[str, list[float]] = {}

    def make_refine(name: str, method: str):  # the CT and auto labels are read per case and freed after it
        auto = sitk.GetArrayFromImage(read_labels(predictions[name]))
        session = RefinementSession(read_volume(cts[name]), auto, segmenter=segmenter, guidance=method)
        click_seconds.setdefault(method, []).append(session.click_seconds)
        return click_refiner(session)

    result = interactive_evaluation(_ReferenceCases(references), make_refine, methods=methods, progress=True)
    print(format_interactive_table(result))
    for method, per_case in click_seconds.items():
        seconds = np.concatenate(per_case)
        result["methods"][method]["click_seconds"] = {"clicks": len(seconds), "median": float(np.median(seconds)), "p95": float(np.percentile(seconds, 95))}
        print(f"click latency ({method}, {len(seconds)} clicks): median {np.median(seconds):.3f} s, p95 {np.percentile(seconds, 95):.3f} s")
    if baseline is not None:
        print(format_interactive_comparison(compare_interactive(result, baseline), str(args.interactive_baseline)))
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
        print(f"results: {args.json}")
    return 0


# --- export ----------------------------------------------------------------------------------------

def _add_export(sub) -> None:
    parser = sub.add_parser(
        "export",
        help="surgical-planning outputs from a label map: meshes, .seg.nrrd, NIfTI, DICOM SEG, measurements, RENAL score, report",
        description="Turns a KiTS label map (0 background, 1 kidney, 2 tumor, 3 cyst; from 'renalseg segment', a user or "
        "KiTS23) on the CT's grid into per-segment meshes (STL/OBJ, and one coloured 3MF or OBJ+MTL for printing), "
        "Slicer .seg.nrrd, NIfTI and DICOM SEG files, measurements (CSV/JSON), the RENAL nephrometry score of each tumor "
        "and a one-page report (PNG, PDF, HTML). Files appear only when every requested output succeeded.",
    )
    parser.add_argument("labels", metavar="LABELS", type=Path, help="KiTS label map (NIfTI, NRRD or MHA) on the CT's grid")
    parser.add_argument("--ct", required=True, type=Path, help="the CT (file or DICOM folder): HU statistics, body midline, geometry")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if needed)")
    parser.add_argument("--format", default="stl,3mf,seg.nrrd,nifti,csv,json,report",
                        help="comma-separated outputs: stl, obj, 3mf, mtl-obj, seg.nrrd, nifti, dicomseg (needs a DICOM --ct), "
                        "csv, json, report; or all (default: %(default)s)")
    parser.add_argument("--coords", choices=("RAS", "LPS"), default="RAS",
                        help="mesh coordinates: RAS for 3D Slicer, LPS for DICOM tools and printing (default: %(default)s)")
    parser.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=True, help="smooth the meshes (default: on)")
    parser.add_argument("--decimate", type=float, default=0.0, metavar="F",
                        help="fraction of mesh triangles to remove, 0-0.95 (volume kept within 2%%; default: 0)")
    parser.add_argument("--probability", type=Path, metavar="MAP",
                        help="the lesion probability map 'renalseg segment --probability' wrote with these labels: each lesion's "
                        "mean network probability goes into the measurements and the report")


def _run_export(args: argparse.Namespace) -> int:
    from .export import check_inputs, check_probability_map, export_all, parse_formats
    from .volume import dicom_series_files, read_labels, read_volume

    formats = parse_formats(args.format)  # a typo is reported before reading any image
    ct = read_volume(args.ct)
    labels = read_labels(args.labels)
    probability = read_labels(args.probability) if args.probability else None
    dicom_files = dicom_series_files(args.ct) if args.ct.is_dir() else None
    check_inputs(labels, ct)  # a mismatch is reported before the progress bar appears
    check_probability_map(probability, labels)
    progress, close = _tqdm_progress("exporting")
    try:
        written = export_all(labels, ct, args.out, formats, coords=args.coords, smooth=args.smooth, decimate=args.decimate,
                             dicom_files=dicom_files, title=f"labels: {args.labels.name}   CT: {args.ct.name}", progress=progress,
                             lesion_probability=probability)
    finally:
        close()
    for path in written:
        print(path)
    return 0


# --- synth -----------------------------------------------------------------------------------------

def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="synthesise contrast-enhanced CT volumes from KiTS label maps (training/test data)")
    p.add_argument("--labels", required=True, help="a KiTS label map (.nii.gz) or a folder of them (case_*.nii.gz)")
    p.add_argument("--out", required=True, help="output folder: NAME_ct.nii.gz, NAME_labels.nii.gz, parameters.jsonl")
    p.add_argument("--split", choices=("all", "held-out", "tune"), default="all",
                   help="which maps of a KiTS label folder: all (default), the held-out validation cases training never sees, "
                        "or the training-split tune cases release decisions are made on")
    p.add_argument("--layout", choices=("flat", "folders"), default="flat",
                   help="flat: NAME_ct / NAME_labels side by side (default); folders: ct/NAME.nii.gz and labels/NAME.nii.gz, "
                        "ready for 'segment ct --batch' and 'evaluate PRED labels'")
    p.add_argument("--n", type=int, help="number of volumes (default: one per label map; more cycle through the maps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first volume; volume i uses seed + i (default 0)")
    p.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="output spacing in mm: one value (isotropic) or three (i j k); default: the label map's own grid")
    p.add_argument("--phase", choices=("random", "corticomedullary", "nephrographic"), default="random", help="contrast phase (default: random)")
    p.add_argument("--domain-randomization-rate", type=float, default=0.3, help="share of volumes with random tissue intensities (SynthSeg style; default 0.3)")
    p.add_argument("--tissues", action="store_true", help="also write the internal tissue map (NAME_tissues.nii.gz)")
    p.add_argument("--preview", action="store_true", help="write NAME_preview.png (axial, coronal, sagittal through the tumor, W400/L40)")
    p.add_argument("--report", action="store_true", help="write realism_report.md: synthetic HU per tissue beside published ranges and a real CT")
    p.add_argument("--real-ct", help="real CT (DICOM folder or file) measured for the realism report")
    p.add_argument("--kits-json", help="kits23.json: give each case's tumor the appearance of its histology (else random)")


def _synth_paths(out: Path, name: str, layout: str, tissues: bool) -> dict[str, Path]:
    """Where synth writes a volume's CT, labels (and tissue map): side by side, or one folder per kind."""
    kinds = ("ct", "labels", "tissues") if tissues else ("ct", "labels")
    if layout == "folders":
        return {kind: out / kind / f"{name}.nii.gz" for kind in kinds}
    return {kind: out / f"{name}_{kind}.nii.gz" for kind in kinds}


def _run_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import dataclasses

    from .synthesis import TUMOR_TYPE_BY_HISTOLOGY, SynthesisConfig, synthesize
    from .volume import read_labels, read_volume, write_labels, write_volume

    source = Path(args.labels)
    files = sorted(source.glob("*.nii.gz")) if source.is_dir() else [source]
    if not files or not files[0].is_file():
        raise RenalSegError(f"{source}: no label maps (.nii.gz) found")
    if args.split != "all":
        from .training import kits_case_split, tune_cases

        if not source.is_dir():
            raise RenalSegError(f"--split {args.split} picks maps of a KiTS label folder; {source} is one file")
        files = kits_case_split(source)[1] if args.split == "held-out" else tune_cases(source)
    spacing = None
    if args.spacing:
        if len(args.spacing) not in (1, 3) or min(args.spacing) <= 0:
            raise RenalSegError("--spacing takes one positive value (isotropic) or three (i j k), in mm")
        spacing = tuple(args.spacing * 3 if len(args.spacing) == 1 else args.spacing)
    try:
        config = SynthesisConfig(phase=args.phase, domain_randomization_rate=args.domain_randomization_rate)
    except ValueError as exc:
        raise RenalSegError(str(exc)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    count = args.n if args.n is not None else len(files)
    histology = {}
    if args.kits_json:
        try:
            histology = {entry["case_id"]: entry.get("tumor_histologic_subtype") for entry in json.loads(Path(args.kits_json).read_text(encoding="utf-8"))}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RenalSegError(f"{args.kits_json}: not a readable kits23.json ({exc})") from None
    statistics = []
    with open(out / "parameters.jsonl", "a", encoding="utf-8") as log_file:
        for index in tqdm(range(count), desc="synthesising", unit="volume"):
            path = files[index % len(files)]
            seed = args.seed + index
            name = f"{path.name.split('.')[0]}_s{seed}"
            case_config = config
            tumor_type = TUMOR_TYPE_BY_HISTOLOGY.get(histology.get(path.name.split(".")[0]))
            if tumor_type:
                case_config = dataclasses.replace(config, tumor_type_weights={tumor_type: 1.0})
            result = synthesize(read_labels(path), seed=seed, config=case_config, spacing=spacing)
            for kind, path in _synth_paths(out, name, args.layout, args.tissues).items():
                path.parent.mkdir(exist_ok=True)
                if kind == "ct":
                    write_volume(result.ct, path)
                else:
                    write_labels(getattr(result, kind), path, result.ct)
            if args.preview:
                from .synthesis_qc import preview

                p = result.parameters
                title = f"{name} (synthetic): {p['phase']}, tumor {p['tumor_type']}, cyst {p['cyst_type']}" + (", domain-randomised" if p["domain_randomized"] else "")
                preview(result.ct, result.labels, out / f"{name}_preview.png", title=title)
            if args.report:
                from .synthesis_qc import case_statistics

                statistics.append(case_statistics(result))
            log_file.write(json.dumps(dict(name=name, labels=str(path), **result.parameters)) + "\n")
    print(f"{count} synthetic volumes in {out}")
    if args.report:
        from .synthesis_qc import realism_report, roi_statistics

        real = roi_statistics(read_volume(args.real_ct)) if args.real_ct else None
        text = realism_report(statistics, real)
        from .outputs import atomic_path

        with atomic_path(out / "realism_report.md") as tmp:
            tmp.write_text(text, encoding="utf-8")
        print(text)
    return 0


# --- the parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="renalseg",
        description="Kidney, renal tumor and renal cyst segmentation in CT: auto segmentation, click-to-refine, "
        "meshes and measurements for surgical planning.",
        epilog="Run 'renalseg demo' to segment the bundled sample CT. 'renalseg COMMAND --help' explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"renalseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _ADDERS:
        add(sub)
    return parser


_ADDERS = [_add_segment, _add_refine, _add_train, _add_bench, _add_demo, _add_info, _add_evaluate, _add_export, _add_synth]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    runner = globals()[f"_run_{args.command}"]
    try:
        return int(runner(args) or 0)
    except RenalSegError as exc:
        print(f"renalseg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"renalseg {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
