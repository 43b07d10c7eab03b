"""Segmentation files: .seg.nrrd keeps Slicer's segment metadata, NIfTI keeps values, DICOM SEG references its CT."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import SimpleITK as sitk

import phantoms
from RenalSegLib import labels as L
from RenalSegLib import segfiles, volume
from RenalSegLib.errors import RenalSegError


@pytest.fixture(scope="module")
def segments() -> sitk.Image:
    p = phantoms.kidney_phantom(size=(64, 48, 40), spacing=(2.6, 2.4, 3.0), direction=phantoms.oblique_direction(20.0, flip_lr=True), origin=(5.0, -7.0, 30.0))
    return L.segment_map(p.labels, L.body_midline_x(p.ct))


def test_seg_nrrd_round_trips_names_colours_terminology_values_and_geometry(segments, tmp_path) -> None:
    import slicerio

    path = segfiles.write_seg_nrrd(segments, tmp_path / "case.seg.nrrd")
    read = slicerio.read_segmentation(str(path))
    by_name = {s["name"]: s for s in read["segments"]}
    assert list(by_name) == [s.name for s in L.SEGMENTS]
    for segment in L.SEGMENTS:
        stored = by_name[segment.name]
        np.testing.assert_allclose(stored["color"], segment.color, atol=1e-5)
        assert stored["labelValue"] == segment.value
        assert slicerio.segmentation.terminology_entry_to_string(stored["terminology"]) == segment.slicer_terminology()
    np.testing.assert_allclose(read["ijkToLPS"], volume.ijk_to_lps_matrix(segments), atol=1e-6)
    np.testing.assert_array_equal(read["voxels"].transpose(2, 1, 0), sitk.GetArrayViewFromImage(segments))


def test_seg_nrrd_lists_only_segments_present(segments, tmp_path) -> None:
    import slicerio

    only_tumor = sitk.Cast(segments == L.SEGMENT_BY_NAME["Renal tumor"].value, sitk.sitkUInt8) * L.SEGMENT_BY_NAME["Renal tumor"].value
    read = slicerio.read_segmentation(str(segfiles.write_seg_nrrd(only_tumor, tmp_path / "t.seg.nrrd")))
    assert [s["name"] for s in read["segments"]] == ["Renal tumor"]


def test_nifti_label_map_keeps_values_and_geometry(segments, tmp_path) -> None:
    read = sitk.ReadImage(str(segfiles.write_nifti(segments, tmp_path / "case.nii.gz")))
    assert volume.same_geometry(read, segments, tolerance=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(segments))


def test_empty_segmentation_writes_nothing(tmp_path) -> None:
    empty = phantoms.blank_image((8, 8, 8), pixel=sitk.sitkUInt8)
    with pytest.raises(RenalSegError, match="empty"):
        segfiles.write_seg_nrrd(empty, tmp_path / "e.seg.nrrd")
    assert list(tmp_path.iterdir()) == []


# --- DICOM SEG ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """A 6-slice CT series made from pydicom's CT_small.dcm (new UIDs and slice positions)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder = tmp_path_factory.mktemp("ct_series")
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = generate_uid()
    for k in range(6):
        ds = copy.deepcopy(source)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = k + 1
        z = float(source.ImagePositionPatient[2]) + 5.0 * k
        ds.ImagePositionPatient = [source.ImagePositionPatient[0], source.ImagePositionPatient[1], z]
        ds.SliceLocation = z
        ds.save_as(folder / f"slice{5 - k}.dcm")  # file names in reverse order: the reader must sort by position
    return folder, series_uid


def _labels_on(ct: sitk.Image) -> sitk.Image:
    values = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    values[1:4, 30:60, 20:50] = L.SEGMENT_BY_NAME["Right kidney"].value
    values[2:4, 40:50, 25:35] = L.SEGMENT_BY_NAME["Renal tumor"].value
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(ct)
    return image


def test_dicom_seg_validates_and_references_the_source_series(ct_series, tmp_path) -> None:
    import highdicom as hd

    folder, series_uid = ct_series
    files = volume.dicom_series_files(folder)
    ct = volume.read_volume(folder)
    segments = _labels_on(ct)
    path = segfiles.write_dicom_seg(segments, files, tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)  # parses and checks the IOD
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["Right kidney", "Renal tumor"]
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == L.SEGMENT_BY_NAME["Renal tumor"].type.value
    import pydicom

    sop_uids = [pydicom.dcmread(f).SOPInstanceUID for f in files]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=sop_uids, segment_numbers=[1, 2])
    values = sitk.GetArrayViewFromImage(segments)
    np.testing.assert_array_equal(pixels[..., 0], values == L.SEGMENT_BY_NAME["Right kidney"].value)
    np.testing.assert_array_equal(pixels[..., 1], values == L.SEGMENT_BY_NAME["Renal tumor"].value)


def test_dicom_seg_refuses_a_grid_that_is_not_the_series(ct_series, tmp_path) -> None:
    folder, _ = ct_series
    files = volume.dicom_series_files(folder)
    wrong = phantoms.blank_image((20, 20, 6), pixel=sitk.sitkUInt8) + 1
    with pytest.raises(RenalSegError, match="does not match the DICOM series"):
        segfiles.write_dicom_seg(wrong, files, tmp_path / "seg.dcm")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.shared_data
def test_dicom_seg_on_the_real_ct_series_references_it(real_ct_dir, tmp_path) -> None:
    import highdicom as hd
    import pydicom

    files = volume.dicom_series_files(real_ct_dir)
    ct = volume.read_volume(real_ct_dir)
    path = segfiles.write_dicom_seg(_labels_on(ct), files, tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(files[0]).SeriesInstanceUID
    assert seg.FrameOfReferenceUID == pydicom.dcmread(files[0]).FrameOfReferenceUID


def test_export_all_writes_a_dicom_seg_for_a_dicom_ct(ct_series, tmp_path) -> None:
    import highdicom as hd

    from RenalSegLib import export

    folder, series_uid = ct_series
    ct = volume.read_volume(folder)
    kits = sitk.GetImageFromArray(L.kits_labels_from_segments(sitk.GetArrayFromImage(_labels_on(ct))))
    kits.CopyInformation(ct)
    (path,) = export.export_all(kits, ct, tmp_path, formats=["dicomseg"], dicom_files=volume.dicom_series_files(folder))
    assert path.name == "segments.dcm"
    assert hd.seg.segread(path).ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
