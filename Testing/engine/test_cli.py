"""The renalseg command line: help, info, and one-line errors that leave no output behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import phantoms
from RenalSegLib import cli

COMMANDS = ("segment", "refine", "export", "synth", "train", "evaluate", "bench", "demo", "info")


def test_help_lists_every_command() -> None:
    result = subprocess.run([sys.executable, "-m", "RenalSegLib.cli", "--help"], capture_output=True, text=True, check=True)
    for command in COMMANDS:
        assert f"\n    {command} " in result.stdout, command


def test_info_reports_torch_and_devices(capsys) -> None:
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "auto device" in out and "model:" in out


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    (tmp / "notes.nii.gz").write_text("not an image")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((16, 16), -1000, np.int16)), str(tmp / "slice.nii.gz"))
    mr = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 900, (8, 16, 16)).astype(np.int16))
    sitk.WriteImage(mr, str(tmp / "mr.nii.gz"))
    (tmp / "dicom").mkdir()
    (tmp / "dicom" / "1.dcm").write_bytes(b"\0" * 132)
    return {
        "missing": (tmp / "missing.nii.gz", "no such file"),
        "not_an_image": (tmp / "notes.nii.gz", "not a readable image"),
        "2d": (tmp / "slice.nii.gz", "2D"),
        "mr": (tmp / "mr.nii.gz", "do not look like CT"),
        "unreadable_dicom": (tmp / "dicom", "no DICOM"),
    }


@pytest.mark.parametrize("case", ["missing", "not_an_image", "2d", "mr", "unreadable_dicom"])
def test_segment_bad_input_prints_one_line_and_writes_nothing(tmp_path: Path, case: str, capsys) -> None:
    path, message = _bad_inputs(tmp_path)[case]
    out_dir = tmp_path / "out"
    code = cli.main(["segment", str(path), "-o", str(out_dir / "labels.nii.gz"), "--stl", str(out_dir / "stl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_USER_ERROR
    assert len(err) == 1 and message in err[0] and err[0].startswith("renalseg segment: error:")
    assert not out_dir.exists()


def test_cuda_request_without_gpu_is_a_clear_error(tmp_path: Path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available here")
    p = phantoms.kidney_phantom(size=(24, 24, 16), spacing=(6.0, 6.0, 8.0), scale=0.5)
    sitk.WriteImage(p.ct, str(tmp_path / "ct.nii.gz"))
    code = cli.main(["segment", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "labels.nii.gz"), "--device", "cuda"])
    assert code == cli.EXIT_USER_ERROR
    assert "no usable CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "labels.nii.gz").exists()


@pytest.mark.parametrize("tta", [False, True], ids=["plain", "tta"])
def test_segment_writes_labels_with_the_ct_geometry(tmp_path: Path, untrained_model: Path, monkeypatch, tta: bool) -> None:
    from RenalSegLib.inference import Segmenter

    loaded = []
    load = Segmenter.load.__func__
    monkeypatch.setattr(Segmenter, "load", classmethod(lambda cls, *a, **kw: loaded.append(load(cls, *a, **kw)) or loaded[-1]))
    p = phantoms.kidney_phantom(size=(40, 36, 24), spacing=(5.0, 5.5, 7.0), direction=phantoms.oblique_direction(15.0), scale=0.8)
    sitk.WriteImage(p.ct, str(tmp_path / "ct.nrrd"))
    args = ["segment", str(tmp_path / "ct.nrrd"), "-o", str(tmp_path / "labels.nii.gz"), "--model", str(untrained_model), "--device", "cpu",
            "--probability", str(tmp_path / "probability.nrrd")]
    assert cli.main(args + ["--tta"] * tta) == 0
    assert [segmenter.flip_tta for segmenter in loaded] == [tta]
    for name in ("labels.nii.gz", "probability.nrrd"):
        written = sitk.ReadImage(str(tmp_path / name))
        assert written.GetSize() == p.ct.GetSize()
        np.testing.assert_allclose(written.GetDirection(), p.ct.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(written.GetOrigin(), p.ct.GetOrigin(), atol=1e-4)
    assert sitk.GetArrayViewFromImage(written).max() <= 100  # percent


def test_refine_writes_the_refined_labels_and_says_what_each_click_changed(tmp_path: Path, untrained_model: Path, capsys) -> None:
    from RenalSegLib.labels import ClassChange

    p = phantoms.kidney_phantom(size=(60, 60, 30), spacing=(4.0, 4.0, 6.0), direction=phantoms.oblique_direction(10.0))
    sitk.WriteImage(p.ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(p.labels, str(tmp_path / "labels.nii.gz"))
    tumor = ",".join(f"{v:.1f}" for v in phantoms.image_center(p.ct) + np.array(phantoms.TUMOR["center"]))
    args = ["refine", str(tmp_path / "ct.nii.gz"), str(tmp_path / "labels.nii.gz"), "--coords", "LPS", "--click", f"{tumor},-,tumor",
            "-o", str(tmp_path / "refined.nii.gz"), "--model", str(untrained_model), "--device", "cpu"]
    assert cli.main(args) == 0
    refined = sitk.ReadImage(str(tmp_path / "refined.nii.gz"))
    assert refined.GetSize() == p.ct.GetSize()
    np.testing.assert_allclose(refined.GetDirection(), p.ct.GetDirection(), atol=1e-6)
    before, after = (sitk.GetArrayFromImage(image) for image in (p.labels, refined))
    change = ClassChange.between(before, after, float(np.prod(p.ct.GetSpacing())) / 1000.0)
    assert f"click -tumor at LPS ({tumor.replace(',', ', ')}): {change.describe()}" in capsys.readouterr().out

    bad = [*args[:5], "--click", f"{tumor},x", "-o", str(tmp_path / "not_written.nii.gz"), *args[9:]]
    assert cli.main(bad) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is neither + / - nor tumor / cyst / kidney" in err[0]
    assert not (tmp_path / "not_written.nii.gz").exists()


def test_segment_refuses_an_unknown_output_format_before_any_work(tmp_path: Path, capsys) -> None:
    code = cli.main(["segment", str(tmp_path / "not_read.nii.gz"), "-o", str(tmp_path / "labels.nii.gz"), "--probability", str(tmp_path / "p.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_USER_ERROR
    assert len(err) == 1 and "p.png: unsupported label map format" in err[0]


def test_segment_batch_writes_one_label_map_per_ct_and_keeps_existing(tmp_path: Path, untrained_model: Path, capsys) -> None:
    cts = tmp_path / "cts"
    cts.mkdir()
    shapes = {"case_a": (40, 36, 24), "case_b": (36, 40, 20)}
    for name, size in shapes.items():
        sitk.WriteImage(phantoms.kidney_phantom(size=size, spacing=(5.0, 5.5, 7.0), scale=0.8).ct, str(cts / f"{name}.nii.gz"))
    (cts / "notes.txt").write_text("not a CT")
    args = ["segment", str(cts), "-o", str(tmp_path / "labels"), "--batch", "--model", str(untrained_model), "--device", "cpu"]
    assert cli.main(args) == 0
    for name, size in shapes.items():
        assert sitk.ReadImage(str(tmp_path / "labels" / f"{name}.nii.gz")).GetSize() == size
    assert "2 written, 0 already there" in capsys.readouterr().out
    assert cli.main(args) == 0
    assert "0 written, 2 already there" in capsys.readouterr().out
    assert cli.main(args + ["--probability", str(tmp_path / "probability")]) == 0  # maps missing: segmented again
    assert "2 written, 0 already there" in capsys.readouterr().out
    for name, size in shapes.items():
        assert sitk.ReadImage(str(tmp_path / "probability" / f"{name}.nii.gz")).GetSize() == size


def _write_click_case(folder: Path, name: str) -> None:
    """A phantom case in folder/{ct,pred,ref}: its auto segmentation missed the tumor."""
    p = phantoms.kidney_phantom(size=(48, 44, 24), spacing=(4.0, 4.5, 6.0), scale=0.8)
    for sub in ("ct", "pred", "ref"):
        (folder / sub).mkdir(exist_ok=True)
    sitk.WriteImage(p.ct, str(folder / "ct" / f"{name}.nii.gz"))
    sitk.WriteImage(p.labels, str(folder / "ref" / f"{name}.nii.gz"))
    auto = sitk.GetArrayFromImage(p.labels)
    auto[auto == 2] = 1
    predicted = sitk.GetImageFromArray(auto)
    predicted.CopyInformation(p.labels)
    sitk.WriteImage(predicted, str(folder / "pred" / f"{name}.nii.gz"))


def test_interactive_evaluation_reports_both_encodings_and_click_latency(tmp_path: Path, untrained_model: Path, capsys) -> None:
    _write_click_case(tmp_path, "case_a")
    out = tmp_path / "clicks.json"
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "--interactive", str(tmp_path / "ct"), "--json", str(out), "--model", str(untrained_model), "--device", "cpu"]
    assert cli.main(args) == 0
    import json

    result = json.loads(out.read_text())
    for method in ("adaptive", "gaussian"):
        summary = result["methods"][method]
        assert summary["lesion_fn_rate_auto"] == 0.5  # the tumor missed, the cyst found
        assert summary["click_seconds"]["clicks"] >= 1 and summary["click_seconds"]["median"] > 0
        assert sum(group["cases"] for group in summary["by_tumor_size"]) == 1  # the one case, in its size group
    printed = capsys.readouterr().out
    assert "click latency (adaptive" in printed and "tumor figures by tumor size" in printed
    both = tmp_path / "both.json"
    out.rename(both)
    assert cli.main([*args, "--guidance", "gaussian", "--interactive-baseline", str(both)]) == 0  # one encoding only
    assert list(json.loads(out.read_text())["methods"]) == ["gaussian"]
    printed = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"gaussian clicks against {both} (same cases") for line in printed)
    assert next(line for line in printed if line.startswith("tumor Dice after 0")).split()[6:] == ["+0.0000", "+0.0000", "to", "+0.0000"]  # same auto labels
    (tmp_path / "not.json").write_text("not json")
    assert cli.main([*args, "--interactive-baseline", str(tmp_path / "not.json")]) == 2
    assert "not a readable JSON file" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"methods": {"gaussian": {"cases": {"case_b": {}}}}}))
    assert cli.main([*args, "--interactive-baseline", str(tmp_path / "other.json")]) == 2
    assert "played on other cases than these" in capsys.readouterr().err
    assert cli.main([*args, "--guidance", "adaptive", "--interactive-baseline", str(tmp_path / "other.json")]) == 2
    assert "holds no adaptive clicks" in capsys.readouterr().err


def test_interactive_evaluation_holds_one_case_at_a_time(tmp_path: Path, untrained_model: Path, monkeypatch) -> None:
    import gc
    import weakref

    from RenalSegLib import interactive

    for name in ("case_a", "case_b", "case_c"):
        _write_click_case(tmp_path, name)
    live: weakref.WeakSet = weakref.WeakSet()
    alive_at_start = []

    class CountedSession(interactive.RefinementSession):
        def __init__(self, *args, **kwargs):
            gc.collect()
            alive_at_start.append(len(live))
            super().__init__(*args, **kwargs)
            live.add(self)

    monkeypatch.setattr(interactive, "RefinementSession", CountedSession)
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "--interactive", str(tmp_path / "ct"), "--model", str(untrained_model), "--device", "cpu"]
    assert cli.main(args) == 0
    assert len(alive_at_start) == 6  # a session per case and encoding
    assert alive_at_start == [0] * 6  # each case's session (its CT and caches) freed before the next one opens


def test_a_minimum_lesion_probability_outside_0_to_1_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["segment", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "labels.nii.gz"), "--min-lesion-probability", "70"])
    assert exit_info.value.code == cli.EXIT_USER_ERROR
    assert "'70' is not a number in 0-1" in capsys.readouterr().err
