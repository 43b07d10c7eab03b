"""Label conventions: KiTS label ids, the segments shown to users, terminology, left/right kidney split, and what
a change of a label map did (``ClassChange``, told to users after each click).

Two label maps appear in RenalSeg:
- the *KiTS label map* (what the network predicts and what KiTS23 ships): 0 background, 1 kidney,
  2 tumor, 3 cyst;
- the *segment map* (what users see): the kidney label split by patient side, values in ``SEGMENTS``.
Left and right always come from the image's physical LPS coordinates (+x is the patient's left),
never from array order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .volume import voxel_ml

BACKGROUND, KIDNEY, TUMOR, CYST = 0, 1, 2, 3
CLASS_NAMES = ("background", "kidney", "tumor", "cyst")
NUM_CLASSES = 4
LESION_LABELS = (TUMOR, CYST)

# KiTS hierarchical evaluation classes and their surface-Dice tolerances (neheller/kits23).
HEC_REGIONS: dict[str, tuple[int, ...]] = {
    "kidney_and_masses": (KIDNEY, TUMOR, CYST),
    "masses": (TUMOR, CYST),
    "tumor": (TUMOR,),
}
SURFACE_DICE_TOLERANCE_MM: dict[str, float] = {"kidney_and_masses": 1.0330, "masses": 1.1328, "tumor": 1.1500}


@dataclass(frozen=True)
class Code:
    """A coded concept (DICOM style): coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def slicer(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


NO_CODE = Code("", "", "")
# Terminology contexts of the segments (RenalSeg's own context file, RenalSeg/Resources/RenalSeg.term.json,
# is generated from SEGMENTS and loaded into Slicer's Terminologies module).
TERMINOLOGY_CONTEXT = "Segmentation category and type - RenalSeg"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_ANATOMY = Code("SCT", "123037004", "Anatomical Structure")
_ALTERED = Code("SCT", "49755003", "Morphologically Altered Structure")
_KIDNEY = Code("SCT", "64033007", "Kidney")


@dataclass(frozen=True)
class Segment:
    """A segment shown to users: value in the segment map, KiTS label it comes from, name, colour, codes."""

    value: int
    kits_label: int
    name: str
    color: tuple[float, float, float]
    category: Code
    type: Code
    type_modifier: Code = NO_CODE
    region: Code = NO_CODE

    @property
    def color_uint8(self) -> tuple[int, int, int]:
        return tuple(int(round(c * 255)) for c in self.color)

    def slicer_terminology(self) -> str:
        """The segment's terminology entry in 3D Slicer's ``~``-separated tag format."""
        return "~".join(
            [
                TERMINOLOGY_CONTEXT,
                self.category.slicer(),
                self.type.slicer(),
                self.type_modifier.slicer(),
                ANATOMIC_CONTEXT,
                self.region.slicer(),
                NO_CODE.slicer(),
            ]
        )


SEGMENTS: tuple[Segment, ...] = (
    Segment(1, KIDNEY, "Right kidney", (185 / 255, 102 / 255, 83 / 255), _ANATOMY, _KIDNEY, Code("SCT", "24028007", "Right")),
    Segment(2, KIDNEY, "Left kidney", (212 / 255, 140 / 255, 110 / 255), _ANATOMY, _KIDNEY, Code("SCT", "7771000", "Left")),
    Segment(3, TUMOR, "Renal tumor", (241 / 255, 214 / 255, 69 / 255), _ALTERED, Code("SCT", "108369006", "Neoplasm"), region=_KIDNEY),
    Segment(4, CYST, "Renal cyst", (111 / 255, 184 / 255, 210 / 255), _ALTERED, Code("SCT", "367643001", "Cyst"), region=_KIDNEY),
)
SEGMENT_BY_NAME = {segment.name: segment for segment in SEGMENTS}


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of a KiTS HEC region ("kidney_and_masses", "masses" or "tumor")."""
    return np.isin(labels, HEC_REGIONS[region])


def lesion_classes(components: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """The class of most of each lesion's voxels: for components 1..``count`` of ``components`` (index 0 unused),
    TUMOR, or CYST where its cyst voxels in ``labels`` outnumber its tumor voxels (a tie is tumor)."""
    tumor, cyst = (np.bincount(components[labels == label], minlength=count + 1) for label in (TUMOR, CYST))
    return np.where(tumor >= cyst, TUMOR, CYST).astype(np.uint8)


def keep_locked(before: np.ndarray, after: np.ndarray, locked) -> None:
    """Keep the user's locked classes in ``after``, in place: voxels holding a locked label in ``before``
    stay as they were, and no voxel becomes a locked label."""
    if locked:
        locked = list(locked)
        keep = np.isin(before, locked) | np.isin(after, locked)
        after[keep] = before[keep]


def _lps_x_of_voxels(image: sitk.Image, kji: np.ndarray) -> np.ndarray:
    """LPS x (patient left is positive) of voxels given as an (n, 3) array of (k, j, i) indices."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    row = direction[0] * np.array(image.GetSpacing())  # x as a function of (i, j, k)
    return kji[:, ::-1] @ row + image.GetOrigin()[0]


def body_midline_x(ct: sitk.Image, body_threshold_hu: float = -500.0) -> float:
    """LPS x of the body's midline: the centroid of voxels denser than air, on a coarse grid."""
    step = max(1, int(round(4.0 / min(ct.GetSpacing()))))
    coarse = sitk.GetArrayViewFromImage(ct)[::step, ::step, ::step]
    kji = np.argwhere(coarse > body_threshold_hu) * step
    if len(kji) == 0:
        return image_center_x(ct)
    return float(np.median(_lps_x_of_voxels(ct, kji)))


def image_center_x(image: sitk.Image) -> float:
    """LPS x of the image's centre."""
    centre = (np.array(image.GetSize()) - 1) / 2.0
    return float(image.TransformContinuousIndexToPhysicalPoint(centre.tolist())[0])


def segment_map(labels: sitk.Image, midline_x: float | None = None) -> sitk.Image:
    """Split a KiTS label map into the user-facing segment map (right/left kidney, tumor, cyst).

    Each connected kidney-and-masses component is assigned to the side of ``midline_x`` (LPS x of the
    patient's midline, e.g. from ``body_midline_x``; the image centre when omitted) on which its
    centroid lies. A component that crosses the midline by more than a quarter of its width on both
    sides (horseshoe kidney) is split voxel-wise at the midline.
    """
    kits = sitk.GetArrayViewFromImage(labels)
    midline = image_center_x(labels) if midline_x is None else midline_x
    out = np.zeros(kits.shape, np.uint8)
    out[kits == TUMOR] = SEGMENT_BY_NAME["Renal tumor"].value
    out[kits == CYST] = SEGMENT_BY_NAME["Renal cyst"].value
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.Cast(labels > 0, sitk.sitkUInt8), True))
    right, left = SEGMENT_BY_NAME["Right kidney"].value, SEGMENT_BY_NAME["Left kidney"].value
    for component in range(1, int(components.max()) + 1):
        kidney_kji = np.argwhere((components == component) & (kits == KIDNEY))
        if len(kidney_kji) == 0:
            continue
        x = _lps_x_of_voxels(labels, kidney_kji)
        width = x.max() - x.min()
        horseshoe = min(x.max() - midline, midline - x.min()) > 0.25 * width
        if horseshoe:
            side = np.where(x > midline, left, right)
        else:
            side = left if x.mean() > midline else right
        out[tuple(kidney_kji.T)] = side
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(labels)
    return result


def kits_labels_from_segments(segments: np.ndarray) -> np.ndarray:
    """Inverse of ``segment_map`` on arrays: segment values back to KiTS labels."""
    lookup = np.zeros(256, np.uint8)
    for segment in SEGMENTS:
        lookup[segment.value] = segment.kits_label
    return lookup[segments]


@dataclass(frozen=True)
class ClassChange:
    """What one change did, for people: the mL each KiTS class gained (negative: lost), for the classes whose volume
    changed, and the mL of voxels that changed label at all (a reshaped mass can keep its volume)."""

    gained_ml: dict[int, float]
    moved_ml: float

    @classmethod
    def between(cls, before: np.ndarray, after: np.ndarray, ml_per_voxel: float) -> "ClassChange":
        moved = before != after
        gained = np.bincount(after[moved], minlength=NUM_CLASSES) - np.bincount(before[moved], minlength=NUM_CLASSES)
        return cls({klass: float(gained[klass] * ml_per_voxel) for klass in (KIDNEY, *LESION_LABELS) if gained[klass]},
                   float(moved.sum() * ml_per_voxel))

    @classmethod
    def of_last_change(cls, session) -> "ClassChange":
        """The change a session's latest click (or redo, or reset) made; nothing when it has none."""
        if session.last_change is None:
            return cls({}, 0.0)
        _, before, after = session.last_change
        return cls.between(before, after, voxel_ml(session.ct.GetSpacing()))

    def describe(self) -> str:
        """E.g. "tumor +2.4 mL, kidney -2.4 mL", or why nothing happened."""
        if not self.moved_ml:
            return ("nothing changed: the network kept its answer here (click nearer the middle of the missed or leaked "
                    "part, or correct it by hand)")
        if not self.gained_ml:
            return f"{_ml(self.moved_ml)} mL reshaped, no class's volume changed"
        by_size = sorted(self.gained_ml.items(), key=lambda item: -abs(item[1]))
        return ", ".join(f"{CLASS_NAMES[klass]} {_ml(ml, '+')} mL" for klass, ml in by_size)


def _ml(volume: float, sign: str = "") -> str:
    """A volume in mL to one decimal, or to two significant digits below 0.1 mL (a few voxels are not "0.0")."""
    return f"{volume:{sign}.1f}" if abs(volume) >= 0.1 else f"{volume:{sign}.2g}"
