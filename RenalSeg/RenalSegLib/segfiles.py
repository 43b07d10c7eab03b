"""Segmentation files other tools open: Slicer .seg.nrrd (slicerio), NIfTI label maps and DICOM SEG (highdicom)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__, volume
from .errors import RenalSegError
from .labels import SEGMENTS, Segment
from .outputs import atomic_path


def _present_segments(segments: sitk.Image) -> list[Segment]:
    present = set(np.unique(sitk.GetArrayViewFromImage(segments)).tolist())
    found = [s for s in SEGMENTS if s.value in present]
    if not found:
        raise RenalSegError("the segmentation is empty: no segment to write")
    return found


def write_seg_nrrd(segments: sitk.Image, path: str | os.PathLike) -> Path:
    """Write a segment map as a Slicer ``.seg.nrrd``: one layer, label values as in ``labels.SEGMENTS``,
    with each segment's name, colour and terminology entry, on the image's exact geometry."""
    import slicerio
    from scipy import ndimage

    path = Path(path)
    values = sitk.GetArrayFromImage(segments).astype(np.uint8)
    segmentation = slicerio.create_segmentation(values.shape[::-1], volume.ijk_to_lps_matrix(segments))
    segmentation["voxels"] = values.transpose(2, 1, 0)  # slicerio holds (i, j, k); the Fortran-order write needs no copy
    boxes = ndimage.find_objects(values)  # (k, j, i) box of each value, one pass over the volume
    for segment in _present_segments(segments):
        box = boxes[segment.value - 1][::-1]
        segmentation["segments"].append({
            "id": segment.name.replace(" ", "_"),
            "name": segment.name,
            "color": list(segment.color),
            "labelValue": segment.value,
            "layer": 0,
            "extent": [int(v) for axis in box for v in (axis.start, axis.stop - 1)],
            "terminology": slicerio.segmentation.terminology_entry_from_string(segment.slicer_terminology()),
            "status": "inprogress",  # Slicer's review status: an automatic result awaits a clinician
        })
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return path


def write_nifti(segments: sitk.Image, path: str | os.PathLike) -> Path:
    """Write a segment map as a NIfTI label map (values of ``labels.SEGMENTS``) on its own geometry."""
    return volume.write_labels(segments, path, segments)


def _code(code):
    from pydicom.sr.coding import Code

    return Code(code.value, code.scheme, code.meaning)


def _source_dataset(dataset):
    """Fill, in memory only, attributes that anonymisers blank but a SEG must copy from its source."""
    if not dataset.get("SOPClassUID") and "MediaStorageSOPClassUID" in dataset.file_meta:
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
    if not dataset.get("SOPInstanceUID") and "MediaStorageSOPInstanceUID" in dataset.file_meta:
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    if not dataset.get("SOPClassUID"):
        raise RenalSegError("the DICOM series has no SOP Class UID; cannot reference it from a DICOM SEG")
    return dataset


def write_dicom_seg(segments: sitk.Image, dicom_files: list[str], path: str | os.PathLike) -> Path:
    """Write a DICOM SEG (highdicom, binary, one segment per structure) referencing the source CT series.

    ``dicom_files`` are the CT series' files in slice order (``volume.dicom_series_files``), i.e. the
    order of the image's k axis; the segment map must be on that series' grid.
    """
    import highdicom as hd
    import pydicom

    path = Path(path)
    if not dicom_files:
        raise RenalSegError("a DICOM SEG needs the source DICOM series (give the CT as a DICOM folder)")
    sources = [_source_dataset(pydicom.dcmread(f)) for f in dicom_files]
    size = segments.GetSize()
    if len(sources) != size[2] or (sources[0].Rows, sources[0].Columns) != (size[1], size[0]):
        raise RenalSegError(
            f"the segmentation grid {size} does not match the DICOM series ({sources[0].Columns}x{sources[0].Rows}x{len(sources)})"
        )
    first = np.array([float(v) for v in sources[0].ImagePositionPatient])
    if not np.allclose(first, segments.GetOrigin(), atol=1e-2):
        raise RenalSegError("the segmentation's origin does not match the first slice of the DICOM series")
    present = _present_segments(segments)
    values = sitk.GetArrayViewFromImage(segments)
    # highdicom numbers segments 1..n; map segment values onto that order.
    numbered = np.zeros(values.shape, np.uint8)
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(name="RenalSeg", version=__version__, family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"))
    for number, segment in enumerate(present, start=1):
        numbered[values == segment.value] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.name,
            segmented_property_category=_code(segment.category),
            segmented_property_type=_code(segment.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[_code(segment.region)] if segment.region.value else None,
            display_color=hd.color.CIELabColor.from_rgb(*segment.color_uint8),
        ))
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=numbered,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="RenalSeg",
        manufacturer_model_name="RenalSeg",
        software_versions=__version__,
        device_serial_number="none",
        series_description="RenalSeg kidneys and renal masses (needs clinician review)",
        content_description="Kidneys, renal tumors and renal cysts",
        content_label="RENALSEG",
    )
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return path

