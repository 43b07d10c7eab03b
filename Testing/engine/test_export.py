"""Export orchestration, report and CLI: all requested files or none, clear errors, a readable report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

import phantoms
from RenalSegLib import export, volume
from RenalSegLib.cli import main
from RenalSegLib.errors import RenalSegError


@pytest.fixture(scope="module")
def phantom():
    return phantoms.kidney_phantom(size=(72, 52, 40), spacing=(2.4, 2.4, 2.8), noise_hu=10.0)


def test_export_all_writes_every_requested_file(phantom, tmp_path) -> None:
    steps = []
    written = export.export_all(phantom.labels, phantom.ct, tmp_path, formats=export.parse_formats("all"),
                                progress=lambda fraction, step: steps.append((fraction, step)))
    names = sorted(p.name for p in written)
    assert names == sorted([
        "right_kidney.stl", "left_kidney.stl", "renal_tumor.stl", "renal_cyst.stl",
        "right_kidney.obj", "left_kidney.obj", "renal_tumor.obj", "renal_cyst.obj",
        "segments.3mf", "segments.obj", "segments.mtl", "segments.seg.nrrd", "segments.nii.gz",
        "measurements.csv", "measurements.json", "report.png", "report.pdf", "report.html",
    ])
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no staging folder left behind
    assert steps[-1] == (1.0, "done") and all(a[0] <= b[0] for a, b in zip(steps, steps[1:]))
    document = json.loads((tmp_path / "measurements.json").read_text())
    assert [s["structure"] for s in document["structures"]] == ["Right kidney", "Left kidney", "Renal tumor 1", "Renal cyst 1"]
    assert document["renal_scores"][0]["tumor"] == "Renal tumor 1" and document["renal_scores"][0]["components"]["R"]["points"] == 1


def test_nifti_output_is_the_segment_map_on_the_ct_grid(phantom, tmp_path) -> None:
    (path,) = export.export_all(phantom.labels, phantom.ct, tmp_path, formats=["nifti"])
    written = sitk.ReadImage(str(path))
    assert volume.same_geometry(written, phantom.ct)
    assert set(np.unique(sitk.GetArrayViewFromImage(written))) == {0, 1, 2, 3, 4}


def test_report_is_one_page_png_and_a_self_contained_html(phantom, tmp_path) -> None:
    png, pdf, page = export.write_report(phantom.labels, phantom.ct, tmp_path, title="phantom")
    from matplotlib.image import imread

    image = imread(png)
    assert image.shape[0] > 1000 and image.shape[1] > 1500 and image[..., :3].std() > 0.1
    assert pdf.read_bytes().startswith(b"%PDF")
    text = page.read_text()
    assert "reviewed and confirmed by a clinician" in text
    assert "data:image/png;base64," in text and "RENAL" in text and "Renal tumor 1" in text
    assert "patient&#x27;s right is on the image left" in text or "patient's right is on the image left" in text


def test_text_outputs_are_utf8_whatever_the_locale(phantom, tmp_path) -> None:
    import locale

    saved = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # open()'s default encoding becomes ASCII (on Windows it is cp1252)
    try:
        export.export_all(phantom.labels, phantom.ct, tmp_path, formats=["csv", "report"])
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)
    assert "HU mean ± SD" in (tmp_path / "report.html").read_text(encoding="utf-8")  # as its <meta charset="utf-8"> says
    assert (tmp_path / "measurements.csv").read_text(encoding="utf-8").startswith("structure,")


def test_report_page_lists_kidneys_and_largest_lesions_and_sums_the_rest() -> None:
    from RenalSegLib.report import MAX_TABLE_LESIONS, table_rows

    kidneys = [{"structure": f"{side} kidney", "kind": "kidney", "volume_ml": 150.0} for side in ("Right", "Left")]
    lesions = [{"structure": f"Renal tumor {n}", "kind": "tumor", "volume_ml": v} for n, v in enumerate([0.2, 9.0, 0.1, 4.0, 3.0, 1.0, 2.0, 0.5], 1)]
    shown, hidden = table_rows(kidneys + lesions)
    assert shown[:2] == kidneys and len(shown) == 2 + MAX_TABLE_LESIONS
    assert [r["volume_ml"] for r in shown[2:]] == sorted((r["volume_ml"] for r in lesions), reverse=True)[:MAX_TABLE_LESIONS]
    assert sorted(r["volume_ml"] for r in hidden) == sorted(r["volume_ml"] for r in lesions)[: len(lesions) - MAX_TABLE_LESIONS]
    assert table_rows(kidneys + lesions[:2]) == (kidneys + [lesions[1], lesions[0]], [])


def test_3d_view_renders_offscreen_or_falls_back(phantom) -> None:
    from RenalSegLib import measure, report

    anatomy = measure.analyse(phantom.labels, phantom.ct)
    try:
        rgb, mm_per_pixel = report.render_3d(anatomy, size=(200, 180))
    except Exception as exc:  # no OpenGL here: the report draws the matplotlib fallback instead
        pytest.skip(f"no offscreen OpenGL: {exc}")
    assert rgb.shape == (180, 200, 3) and rgb.std() > 1.0 and 0.1 < mm_per_pixel < 5.0
    # Seen from the front, the right kidney (with the tumor, patient right) is on the image's left half.
    tumor_colour = np.array(report.SEGMENT_BY_NAME["Renal tumor"].color) * 255
    yellow = np.linalg.norm(rgb.astype(float) - tumor_colour, axis=-1) < 60
    assert yellow.any() and np.argwhere(yellow)[:, 1].mean() < 100


def test_label_map_on_another_grid_is_refused_and_nothing_is_written(phantom, tmp_path) -> None:
    other = phantoms.kidney_phantom(size=(72, 52, 40), spacing=(2.4, 2.4, 3.0))
    with pytest.raises(RenalSegError, match="different geometry"):
        export.export_all(other.labels, phantom.ct, tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_empty_label_map_is_refused_and_nothing_is_written(phantom, tmp_path) -> None:
    with pytest.raises(RenalSegError, match="empty"):
        export.export_all(phantom.labels * 0, phantom.ct, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_midway_leaves_the_folder_as_it_was(phantom, tmp_path, monkeypatch) -> None:
    (tmp_path / "keep.txt").write_text("user file")

    def broken(*args, **kwargs):
        raise RenalSegError("disk full")

    monkeypatch.setattr(export, "write_report", broken)
    with pytest.raises(RenalSegError, match="disk full"):
        export.export_all(phantom.labels, phantom.ct, tmp_path, formats=["stl", "csv", "report"])
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_bad_requests_are_refused_before_any_work(phantom, tmp_path) -> None:
    with pytest.raises(RenalSegError, match="unknown export format"):
        export.parse_formats("stl,gltf")
    with pytest.raises(RenalSegError, match="DICOM SEG needs"):
        export.export_all(phantom.labels, phantom.ct, tmp_path, formats=["dicomseg"])
    with pytest.raises(RenalSegError, match="coordinate system"):
        export.export_all(phantom.labels, phantom.ct, tmp_path, coords="RAI")
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_and_reports_user_errors_in_one_line(tmp_path, capsys) -> None:
    phantom = phantoms.kidney_phantom(size=(64, 48, 24), spacing=(5.0, 5.0, 5.0))  # a field of view with air: a valid CT
    labels, ct = tmp_path / "labels.nii.gz", tmp_path / "ct.nii.gz"
    volume.write_labels(phantom.labels, labels, phantom.ct)
    volume.write_volume(phantom.ct, ct)
    assert main(["export", str(labels), "--ct", str(ct), "--out", str(tmp_path / "out"), "--format", "stl,csv", "--coords", "LPS", "--decimate", "0.3"]) == 0
    assert (tmp_path / "out" / "renal_tumor.stl").exists() and (tmp_path / "out" / "measurements.csv").exists()
    capsys.readouterr()
    other = phantoms.kidney_phantom(size=(64, 48, 20), spacing=(5.0, 5.0, 6.0))
    volume.write_volume(other.ct, tmp_path / "other.nii.gz")
    assert main(["export", str(labels), "--ct", str(tmp_path / "other.nii.gz"), "--out", str(tmp_path / "bad")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "different geometry" in error[0]
    assert not (tmp_path / "bad").exists()


def test_cli_export_adds_the_lesion_probability_to_measurements_and_report(tmp_path, capsys) -> None:
    phantom = phantoms.kidney_phantom(size=(64, 48, 24), spacing=(5.0, 5.0, 5.0))
    labels, ct, probability = tmp_path / "labels.nii.gz", tmp_path / "ct.nii.gz", tmp_path / "probability.nii.gz"
    volume.write_labels(phantom.labels, labels, phantom.ct)
    volume.write_volume(phantom.ct, ct)
    values = sitk.GetArrayViewFromImage(phantom.labels)
    volume.write_labels(np.select([values == 2, values == 3], [80, 35], 0).astype(np.uint8), probability, phantom.ct)
    out = tmp_path / "out"
    assert main(["export", str(labels), "--ct", str(ct), "--out", str(out), "--format", "csv,report", "--probability", str(probability)]) == 0
    header, *lines = (out / "measurements.csv").read_text().splitlines()
    column = header.split(",").index("network_lesion_probability")
    assert {line.split(",")[0]: line.split(",")[column] for line in lines} == {
        "Right kidney": "", "Left kidney": "", "Renal tumor 1": "0.8", "Renal cyst 1": "0.35"}
    page = (out / "report.html").read_text()
    assert "<th>Network P</th>" in page and "<td>0.80</td>" in page
    capsys.readouterr()
    other = phantoms.kidney_phantom(size=(64, 48, 20), spacing=(5.0, 5.0, 6.0))
    volume.write_labels(other.labels, tmp_path / "other.nii.gz", other.ct)
    assert main(["export", str(labels), "--ct", str(ct), "--out", str(tmp_path / "bad"), "--probability", str(tmp_path / "other.nii.gz")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "not on the label map's grid" in error[0]
    assert not (tmp_path / "bad").exists()


@pytest.mark.shared_data
def test_real_kits_label_map_measures_and_scores(kits_labels_dir) -> None:
    import json as json_module

    from RenalSegLib import measure, nephrometry

    labels = volume.read_labels(kits_labels_dir / "case_00010.nii.gz")  # 50 slices of 3 mm: small enough
    anatomy = measure.analyse(labels)
    assert [k.name for k in anatomy.kidneys] == ["Right kidney", "Left kidney"]
    (result,) = nephrometry.renal_score(labels, anatomy=anatomy)
    metadata = {c["case_id"]: c for c in json_module.loads((kits_labels_dir.parent / "kits23.json").read_text())}["case_00010"]
    # The segmented maximal diameter agrees with the radiologist's size (3.5 cm) to within 5 mm.
    assert result["components"]["R"]["value"] == pytest.approx(10 * metadata["radiographic_size"], abs=5.0)
    assert result["total"] is not None and {"N", "L"} <= set(result["components"])  # a renal sinus was found


def test_report_falls_back_to_matplotlib_without_offscreen_opengl(phantom, tmp_path, monkeypatch) -> None:
    from RenalSegLib import report

    def no_opengl(*args, **kwargs):
        raise RuntimeError("no OpenGL context")

    monkeypatch.setattr(report, "render_3d", no_opengl)
    png, _, page = report.write_report(phantom.labels, phantom.ct, tmp_path)
    assert png.stat().st_size > 50_000
    assert "rendered with matplotlib (no offscreen OpenGL available)" in page.read_text()
