"""CT synthesis: a contrast-enhanced abdominal CT in HU generated around a real KiTS label map.

The kidneys, tumors and cysts come from the label map (real anatomy, left unchanged); their inner
structure (cortex, medulla, renal sinus, collecting system) and a procedural body around them are
generated, placed from the kidneys' physical LPS positions so that the liver is always on the
patient's right and the spine posterior, whatever the image's direction matrix or array order.

Intensities (per-case means drawn from these ranges; ``SynthesisConfig.hu_ranges``):
- renal cortex: unenhanced 30-50 HU + 195-217 HU enhancement at the corticomedullary peak; cortex
  minus medulla 110-140 HU early, < 30 HU from 45 s on; medulla +~145 HU at 55 s
  (Eur J Radiol 2007;63:420). Kidney unenhanced 30-50 HU (textbooks).
- clear-cell RCC 173+-45 (corticomedullary) / 149+-34 (nephrographic); oncocytoma 151+-36 / 137+-34
  (Urologia J, doi 10.5301/uj.5000256); papillary RCC 32-100 / 18-91 (AJR, 42 cases); fat-rich
  angiomyolipoma fat <= -10 HU, cut-off -20 (Jinzaki 2014); lipid-poor AML ~38 unenhanced (Oncol Lett 2016).
- simple cyst <= 20 HU; hyperdense benign cyst >= 70 HU; Bosniak III/IV enhancing septa (Bosniak 2019).
- renal sinus / perirenal fat -50 to -100; liver / spleen portal venous 100-130 (unenhanced 50-65);
  muscle 40-60; trabecular bone 150-400; cortical bone > 1000; aorta corticomedullary 250-400
  (textbook / typical values, see REFERENCE.md). Values marked "assumption" in ``HU_SOURCES`` are
  typical clinical values without a single citable source.
Acquisition: partial-volume blur (in-plane PSF and slice thickness), correlated quantum noise,
beam-hardening-like cupping, a low-frequency bias, small random deformations of the procedural body
and an optional reconstruction-circle field of view. A domain-randomised mode (SynthSeg, Billot et al.
2023) replaces the table by random intensities per tissue at ``domain_randomization_rate``.

Everything is computed on SimpleITK grids: the procedural body on a coarse grid (>= 2.5 mm) that is
resampled onto the output grid, the kidney interior at full resolution in a crop around the kidneys,
and blur + noise in slabs, so a 512x512x600 map stays within a few GB. The body's shapes are
hand-written implicit functions (no library builds a procedural abdomen); filtering, distance maps
and resampling are SimpleITK / scipy.ndimage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from . import labels as L
from .volume import index_to_physical, ijk_to_lps_matrix, physical_to_index, voxel_ml

PHASES = ("corticomedullary", "nephrographic")

# Internal tissue classes of ``Synthesized.tissues`` (id = position).
TISSUE_NAMES: tuple[str, ...] = (
    "air", "subcutaneous_fat", "visceral_fat", "muscle", "bone_trabecular", "bone_cortical", "disc", "csf",
    "lung", "liver", "liver_vessel", "spleen", "pancreas", "gallbladder", "bowel_wall", "bowel_gas",
    "bowel_fluid", "bowel_contrast", "aorta", "ivc", "renal_artery", "renal_vein", "perirenal_fat",
    "renal_cortex", "renal_medulla", "renal_sinus_fat", "collecting_system", "sinus_vessel", "tumor",
    "tumor_necrosis", "tumor_calcification", "tumor_fat", "cyst_fluid", "cyst_septum", "mediastinum", "table", "lung_vessel", "bladder", "tumor_rim",
)
T = {name: i for i, name in enumerate(TISSUE_NAMES)}
KIDNEY_TISSUES = ("renal_cortex", "renal_medulla", "renal_sinus_fat", "collecting_system", "sinus_vessel")
TUMOR_TISSUES = ("tumor", "tumor_necrosis", "tumor_calcification", "tumor_fat", "tumor_rim")
CYST_TISSUES = ("cyst_fluid", "cyst_septum")

_CM, _NP = PHASES
# Per-case mean HU ranges, (low, high), per phase. Tumour tissues are set per subtype (TUMOR_TYPES).
_HU = {
    "air": ((-1010, -990), (-1010, -990)),
    "subcutaneous_fat": ((-110, -75), (-110, -75)),
    "visceral_fat": ((-105, -70), (-105, -70)),
    "perirenal_fat": ((-100, -70), (-100, -70)),
    "renal_sinus_fat": ((-100, -50), (-100, -50)),
    "muscle": ((40, 60), (40, 60)),
    "bone_trabecular": ((150, 350), (150, 350)),
    "bone_cortical": ((1000, 1400), (1000, 1400)),
    "disc": ((70, 110), (70, 110)),
    "csf": ((0, 15), (0, 15)),
    "lung": ((-900, -820), (-900, -820)),
    "liver": ((60, 95), (100, 130)),
    "liver_vessel": ((40, 80), (140, 190)),
    "spleen": ((100, 160), (100, 130)),
    "pancreas": ((100, 150), (80, 120)),
    "gallbladder": ((0, 25), (0, 25)),
    "bowel_wall": ((60, 120), (80, 130)),
    "bowel_gas": ((-1000, -900), (-1000, -900)),
    "bowel_fluid": ((0, 30), (0, 30)),
    "bowel_contrast": ((150, 400), (150, 400)),
    "aorta": ((250, 400), (150, 220)),
    "ivc": ((70, 130), (120, 170)),
    "renal_artery": ((250, 400), (150, 220)),
    "renal_vein": ((150, 250), (140, 200)),
    "renal_cortex": ((200, 265), (160, 215)),
    "renal_medulla": ((85, 155), (140, 210)),
    "collecting_system": ((0, 30), (0, 30)),
    "sinus_vessel": ((180, 330), (150, 210)),
    "cyst_fluid": ((-5, 20), (-5, 20)),
    "cyst_septum": ((100, 180), (100, 170)),
    "mediastinum": ((35, 60), (35, 60)),
    "table": ((200, 500), (200, 500)),
    "lung_vessel": ((40, 150), (40, 150)),
    "bladder": ((0, 20), (0, 20)),
}
HU_SOURCES = {
    "renal_cortex": "Eur J Radiol 2007;63:420 (30-50 unenhanced + 195-217 peak; low end widened for off-peak timing)",
    "renal_medulla": "Eur J Radiol 2007;63:420 (cortex - 110..140 early; cortex - 0..30 after 45 s; +~145 at 55 s)",
    "renal_sinus_fat": "textbook (-50 to -100)", "perirenal_fat": "textbook (-50 to -100)",
    "visceral_fat": "textbook fat", "subcutaneous_fat": "textbook fat (checked on the real DICOM series)",
    "muscle": "typical values 40-60", "bone_trabecular": "typical values 150-400",
    "bone_cortical": "typical values > 1000", "aorta": "typical values 250-400 CM; NP assumption",
    "renal_artery": "as aorta", "liver": "textbook 100-130 portal venous (unenhanced 50-65); CM assumption",
    "spleen": "textbook 100-130 portal venous; CM arciform assumption",
    "cyst_fluid": "Bosniak 2019 (simple cyst <= 20)", "hyperdense_cyst": "Bosniak 2019 (>= 70 unenhanced)",
    "collecting_system": "unopacified urine, water-like (assumption)",
    "clear_cell": "Urologia J doi 10.5301/uj.5000256 (173+-45 CM, 149+-34 NP; mean +- 1 SD)",
    "oncocytoma": "Urologia J doi 10.5301/uj.5000256 (151+-36 CM, 137+-34 NP; mean +- 1 SD)",
    "papillary": "AJR, 42 cases (32-100 CM, 18-91 NP; lowest values raised to 30)",
    "fat_aml": "Jinzaki 2014 (fat <= -10, cut-off -20); soft-tissue part assumption",
}
HU_SOURCES.update({name: "assumption (typical clinical value)" for name in _HU if name not in HU_SOURCES})

# Within-tissue heterogeneity (SD of a smooth texture, HU) before noise.
_TEXTURE_SD = {
    "subcutaneous_fat": 6, "visceral_fat": 10, "perirenal_fat": 8, "renal_sinus_fat": 15, "muscle": 7,
    "bone_trabecular": 45, "bone_cortical": 120, "liver": 6, "spleen": 8, "pancreas": 12, "bowel_wall": 12,
    "bowel_fluid": 8, "bowel_contrast": 60, "bowel_gas": 30, "lung": 25, "renal_cortex": 8, "renal_medulla": 10,
}

# Tumour subtypes: per-phase mean HU range of the enhancing part, heterogeneity SD range, and the
# probabilities of a necrotic/cystic centre, calcification, macroscopic fat and an enhancing rim
# (pseudocapsule / peripheral enhancement, 1-3 mm, 15-50 HU above the tumor; assumption).
TUMOR_TYPES = {
    "clear_cell": dict(hu={_CM: (128, 218), _NP: (115, 183)}, hetero=(15, 40), necrosis=0.55, calcification=0.1, fat=0.0, rim=0.6),
    "oncocytoma": dict(hu={_CM: (115, 187), _NP: (103, 171)}, hetero=(8, 20), necrosis=0.25, calcification=0.05, fat=0.0, rim=0.2),
    "papillary": dict(hu={_CM: (35, 100), _NP: (30, 91)}, hetero=(5, 15), necrosis=0.2, calcification=0.15, fat=0.0, rim=0.4),
    "fat_aml": dict(hu={_CM: (60, 140), _NP: (60, 130)}, hetero=(10, 25), necrosis=0.0, calcification=0.0, fat=1.0, rim=0.0),
}
# KiTS23 histology (kits23.json "tumor_histologic_subtype") -> the synthetic tumor type whose published
# enhancement fits it best; chromophobe RCC enhances like oncocytoma (both hypo- to iso-enhancing, homogeneous).
TUMOR_TYPE_BY_HISTOLOGY = {
    "clear_cell_rcc": "clear_cell", "multilocular_cystic_rcc": "clear_cell", "papillary_rcc": "papillary",
    "clear_cell_papillary": "papillary", "chromophobe_rcc": "oncocytoma", "oncocytoma": "oncocytoma",
    "angiomyolipoma": "fat_aml",
}
TUMOR_NECROSIS_HU = (5, 35)  # fluid-like necrosis (assumption; between water and unenhanced tissue)
TUMOR_CALCIFICATION_HU = (300, 900)  # assumption
TUMOR_FAT_HU = (-110, -30)  # Jinzaki 2014: <= -10, cut-off -20
HYPERDENSE_CYST_HU = (70, 90)  # Bosniak 2019


@dataclass
class SynthesisConfig:
    """Settings of ``synthesize``: phase, intensity tables, acquisition effects, domain randomisation.

    ``phase`` is "corticomedullary", "nephrographic" or "random" (each half of the cases).
    ``hu_ranges[phase][tissue]`` is the (low, high) range of a tissue's per-case mean HU.
    """

    phase: str = "random"
    domain_randomization_rate: float = 0.3
    hu_ranges: dict = field(default_factory=lambda: {p: {t: v[n] for t, v in _HU.items()} for n, p in enumerate(PHASES)})
    tumor_types: dict = field(default_factory=lambda: dict(TUMOR_TYPES))
    tumor_type_weights: dict = field(default_factory=lambda: {"clear_cell": 0.5, "papillary": 0.2, "oncocytoma": 0.17, "fat_aml": 0.13})
    cyst_type_weights: dict = field(default_factory=lambda: {"simple": 0.7, "hyperdense": 0.12, "complex": 0.18})
    noise_sd_hu: tuple[float, float] = (6.0, 18.0)  # quantum noise SD in soft tissue
    noise_correlation_mm: tuple[float, float] = (0.6, 1.1)  # least in-plane PSF sigma: sets the noise texture
    inplane_psf_fwhm_mm: tuple[float, float] = (0.7, 1.2)
    slice_thickness_factor: tuple[float, float] = (1.0, 1.5)  # slice thickness / source slice spacing
    cupping_hu: tuple[float, float] = (0.0, 12.0)  # beam-hardening-like drop at the body centre
    bias_hu: tuple[float, float] = (0.0, 6.0)  # SD of a smooth additive bias field
    deformation_mm: tuple[float, float] = (0.0, 8.0)  # amplitude of the body's random deformation
    fov_circle_rate: float = 0.3  # share of cases with a reconstruction circle (air outside it)
    coarse_spacing_mm: float = 2.5  # grid of the procedural body (never finer than the output)
    acquisition_effects: bool = True  # blur, noise, bias; False gives the clean tissue intensities

    def __post_init__(self) -> None:
        if self.phase not in (*PHASES, "random"):
            raise ValueError(f"phase must be one of {PHASES} or 'random', got {self.phase!r}")
        if not 0.0 <= self.domain_randomization_rate <= 1.0:
            raise ValueError("domain_randomization_rate must be within [0, 1]")


@dataclass
class Synthesized:
    """A synthesised case: CT (int16 HU), KiTS labels (uint8) and tissue map (uint8 ids of
    ``TISSUE_NAMES``) on one grid, plus the per-case parameters that were drawn."""

    ct: sitk.Image
    labels: sitk.Image
    tissues: sitk.Image
    parameters: dict


# --- geometry helpers --------------------------------------------------------------------------------

def _grid_like(reference: sitk.Image, spacing: tuple[float, float, float], pixel=sitk.sitkUInt8) -> sitk.Image:
    """An empty image covering ``reference``'s extent at ``spacing`` (same direction, edges aligned)."""
    old = np.array(reference.GetSpacing())
    new = np.asarray(spacing, float)
    size = np.maximum(np.round(np.array(reference.GetSize()) * old / new), 1).astype(int)
    # The first voxel's centre lies half a new voxel inside the reference's first voxel edge.
    origin = reference.TransformContinuousIndexToPhysicalPoint((-0.5 + 0.5 * new / old).tolist())
    grid = sitk.Image([int(s) for s in size], pixel)
    grid.SetSpacing(new.tolist())
    grid.SetDirection(reference.GetDirection())
    grid.SetOrigin(origin)
    return grid


def _lps_axes(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS x, y and z (mm) of every voxel as three float32 arrays in (k, j, i) order."""
    matrix = ijk_to_lps_matrix(image)
    size = image.GetSize()
    i = np.arange(size[0], dtype=np.float32)[None, None, :]
    j = np.arange(size[1], dtype=np.float32)[None, :, None]
    k = np.arange(size[2], dtype=np.float32)[:, None, None]
    out = []
    for row in range(3):
        m = matrix[row].astype(np.float32)
        out.append(m[0] * i + m[1] * j + m[2] * k + m[3])
    return tuple(out)


def _slice_axis(image: sitk.Image) -> int:
    """Index axis (0=i, 1=j, 2=k) closest to the patient's superior-inferior axis."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return int(np.argmax(np.abs(direction[2])))


def _bspline_taps(n_out: int, cell: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Lattice indices and weights (n_out, 4) of a cubic B-spline through a lattice of spacing ``cell``
    output voxels, and the lattice length."""
    n_lattice = int(math.ceil(n_out / cell)) + 4
    t = np.arange(n_out, dtype=np.float64) / cell + 2.0
    index = np.floor(t).astype(int)[:, None] + np.arange(-1, 3)[None, :]
    a = np.abs(t[:, None] - index)
    weights = np.where(a < 1, (4 - 6 * a**2 + 3 * a**3) / 6, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))
    return index, weights.astype(np.float32), n_lattice


def _smooth_noise(rng: np.random.Generator, shape_kji, spacing_kji, feature_mm: float) -> np.ndarray:
    """Unit-SD smooth random field of feature size ``feature_mm`` on a (k, j, i) grid.

    A cubic B-spline through random lattice values, applied axis by axis with its 4 taps per output
    voxel (much faster than a 3D spline resample, and linear in the output size).
    """
    cells = np.maximum(feature_mm / np.asarray(spacing_kji, float), 1.0)
    taps = [_bspline_taps(int(n), float(c)) for n, c in zip(shape_kji, cells)]
    field_ = rng.standard_normal([t[2] for t in taps]).astype(np.float32)
    for axis, (index, weights, n_lattice) in enumerate(taps):
        if n_lattice <= 24:  # a short lattice: one dense product per axis is fastest (BLAS)
            matrix = np.zeros((len(index), n_lattice), np.float32)
            np.put_along_axis(matrix, index, weights, axis=1)
            if axis == 0:
                field_ = (matrix @ field_.reshape(n_lattice, -1)).reshape(len(index), *field_.shape[1:])
            elif axis == 1:
                field_ = np.matmul(matrix, field_)
            else:
                field_ = (field_.reshape(-1, n_lattice) @ np.ascontiguousarray(matrix.T)).reshape(*field_.shape[:2], len(index))
            continue
        shape = [1, 1, 1]
        shape[axis] = -1
        out = None
        for tap in range(4):  # a long lattice: the spline's 4 taps per output voxel
            term = np.take(field_, index[:, tap], axis=axis) * weights[:, tap].reshape(shape)
            out = term if out is None else out + term
        field_ = out
    sd = float(field_[::3, ::3, ::3].std())
    field_ *= np.float32(1.0 / (sd if sd > 1e-6 else 1.0))
    return field_


def _ellipsoid(u, v, w, center, axes) -> np.ndarray:
    """Normalised ellipsoid radius (< 1 inside) of points (u, v, w)."""
    return ((u - center[0]) / axes[0]) ** 2 + ((v - center[1]) / axes[1]) ** 2 + ((w - center[2]) / axes[2]) ** 2


def _segment_distance(u, v, w, a, b) -> np.ndarray:
    """Distance (mm) of points to the segment a-b (capsule field)."""
    a = np.asarray(a, np.float32)
    ab = np.asarray(b, np.float32) - a
    t = ((u - a[0]) * ab[0] + (v - a[1]) * ab[1] + (w - a[2]) * ab[2]) / max(float(ab @ ab), 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((u - a[0] - t * ab[0]) ** 2 + (v - a[1] - t * ab[1]) ** 2 + (w - a[2] - t * ab[2]) ** 2)


# --- anatomy frame from the kidneys ----------------------------------------------------------------

@dataclass
class _Kidney:
    centroid: np.ndarray  # LPS mm
    z_range: tuple[float, float]
    medial_extent: float  # mm from centroid to the most medial voxel
    volume_ml: float
    width_mm: float = 0.0  # extent along LPS x


def _kidneys(coarse_labels: np.ndarray, grid: sitk.Image) -> list[_Kidney]:
    """Kidney-and-mass components larger than 15 mL on the coarse grid, sorted by LPS x (right first)."""
    from scipy import ndimage

    components, count = ndimage.label(coarse_labels > 0)
    ml_per_voxel = voxel_ml(grid.GetSpacing())
    found = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        kji = np.argwhere(components[box] == index) + [s.start for s in box]
        if len(kji) * ml_per_voxel < 15.0:
            continue
        lps = index_to_physical(grid, kji[:, ::-1].astype(float))
        found.append(_Kidney(lps.mean(0), (float(lps[:, 2].min()), float(lps[:, 2].max())), 0.0, len(kji) * ml_per_voxel))
        found[-1].medial_extent = float(np.abs(lps[:, 0] - lps[:, 0].mean()).max())
        found[-1].width_mm = float(lps[:, 0].max() - lps[:, 0].min())
    found.sort(key=lambda k: -k.volume_ml)
    return sorted(found[:2], key=lambda k: k.centroid[0])


def _anatomy_frame(kidneys: list[_Kidney], grid: sitk.Image, rng: np.random.Generator) -> dict:
    """Midline x, reference y/z and per-side kidney positions (LPS) of the patient.

    Two kidneys give the midline between them. A single kidney far from the image centre (a full
    field of view, the other kidney removed) puts the midline at the centre; a horseshoe kidney
    spans the midline; a single kidney in a crop around it cannot tell its side (its shape does
    not, tested on KiTS23), so the side is drawn at random and the midline put 70 mm medially.
    """
    centre = np.array(grid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in grid.GetSize()]))
    if len(kidneys) == 2 and kidneys[1].centroid[0] - kidneys[0].centroid[0] > 60:
        right, left = kidneys
        midline = 0.5 * (right.centroid[0] + left.centroid[0])
    elif kidneys:
        one = kidneys[0]
        if abs(one.centroid[0] - centre[0]) > 30:
            midline = centre[0]
        elif one.width_mm > 110:
            midline = one.centroid[0]
        else:
            midline = one.centroid[0] + (70.0 if rng.random() < 0.5 else -70.0)
        mirrored = _Kidney(one.centroid * [-1, 1, 1] + [2 * midline, 0, 0], one.z_range, one.medial_extent, one.volume_ml)
        right, left = (one, mirrored) if one.centroid[0] < midline else (mirrored, one)
    else:
        fake = lambda side: _Kidney(centre + [side * 70.0, 35.0, 0.0], (centre[2] - 55, centre[2] + 55), 30.0, 150.0)  # noqa: E731
        right, left = fake(-1), fake(1)
        midline = centre[0]
    ref = 0.5 * (right.centroid + left.centroid)
    return dict(midline=float(midline), y=float(ref[1]), z=float(ref[2]), right=right, left=left)


# --- parameters ---------------------------------------------------------------------------------

def _choose(rng: np.random.Generator, weights: dict) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _draw_intensities(rng: np.random.Generator, config: SynthesisConfig, phase: str, randomized: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-tissue mean and texture SD (arrays indexed by tissue id) and the case's lesion subtypes."""
    ranges = config.hu_ranges[phase]
    means = np.zeros(len(TISSUE_NAMES), np.float32)
    sds = np.zeros(len(TISSUE_NAMES), np.float32)
    for name in TISSUE_NAMES:
        if name in ranges:
            means[T[name]] = rng.uniform(*ranges[name])
        sds[T[name]] = _TEXTURE_SD.get(name, 4.0)
    low, high = (110, 140) if phase == _CM else (0, 30)  # cortex - medulla (Eur J Radiol 2007)
    lo_m, hi_m = ranges["renal_medulla"]
    means[T["renal_medulla"]] = np.clip(means[T["renal_cortex"]] - rng.uniform(low, high), lo_m, hi_m)
    tumor_type = _choose(rng, config.tumor_type_weights)
    spec = config.tumor_types[tumor_type]
    means[T["tumor"]] = rng.uniform(*spec["hu"][phase])
    sds[T["tumor"]] = rng.uniform(*spec["hetero"])
    means[T["tumor_necrosis"]] = rng.uniform(*TUMOR_NECROSIS_HU)
    means[T["tumor_calcification"]] = rng.uniform(*TUMOR_CALCIFICATION_HU)
    sds[T["tumor_calcification"]] = 100.0
    means[T["tumor_fat"]] = rng.uniform(*TUMOR_FAT_HU)
    sds[T["tumor_fat"]] = 15.0
    means[T["tumor_rim"]] = means[T["tumor"]] + rng.uniform(15, 50)
    sds[T["tumor_rim"]] = 10.0
    cyst_type = _choose(rng, config.cyst_type_weights)
    if cyst_type == "hyperdense":
        means[T["cyst_fluid"]] = rng.uniform(*HYPERDENSE_CYST_HU)
    lesions = dict(
        tumor_type=tumor_type,
        necrosis=bool(rng.random() < spec["necrosis"]),
        calcification=bool(rng.random() < spec["calcification"]),
        fat=bool(rng.random() < spec["fat"]),
        rim=bool(rng.random() < spec.get("rim", 0.0)),
        cyst_type=cyst_type,
    )
    if randomized:
        # SynthSeg-style: any tissue may take any intensity in the networks' window, air stays darkest
        # in half of the cases so the body outline keeps a plausible contrast.
        means = rng.uniform(-250, 550, len(TISSUE_NAMES)).astype(np.float32)
        sds = rng.uniform(0, 35, len(TISSUE_NAMES)).astype(np.float32)
        if rng.random() < 0.5:
            means[T["air"]] = -1000.0
    return means, sds, lesions


# --- the procedural body (coarse grid) ------------------------------------------------------------

def _body(rng: np.random.Generator, grid: sitk.Image, coarse_labels: np.ndarray, frame: dict, config: SynthesisConfig, draw: dict) -> tuple[np.ndarray, dict]:
    """Tissue ids of the procedural body on the coarse grid, and the body geometry that was drawn.

    Structures are implicit shapes in a patient frame (u: mm to the patient's left of the midline,
    v: mm posterior of the kidneys, w: mm superior of the kidneys), evaluated only inside each
    structure's bounding box, and painted in order (later ones win).
    """
    from scipy import ndimage

    shape = coarse_labels.shape
    spacing_kji = grid.GetSpacing()[::-1]
    x, y, z = _lps_axes(grid)
    offset = np.array([frame["midline"], frame["y"], frame["z"]])
    u = x - np.float32(offset[0])
    v = y - np.float32(offset[1])
    w = z - np.float32(offset[2])
    del x, y, z
    amplitude = rng.uniform(*config.deformation_mm)
    for coordinate in (u, v, w):
        coordinate += amplitude * _smooth_noise(rng, shape, spacing_kji, 80.0)
    size_ijk = np.array(grid.GetSize())
    margin_ijk = (4.0 * amplitude + 2.0 * max(spacing_kji)) / np.array(grid.GetSpacing())  # deformation reach

    def region(lo, hi):
        """(k, j, i) slices of the grid covering the frame box [lo, hi] (mm), None when outside."""
        corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T + offset
        ijk = physical_to_index(grid, corners)
        start = np.maximum(np.floor(ijk.min(0) - margin_ijk), 0).astype(int)
        stop = np.minimum(np.ceil(ijk.max(0) + margin_ijk) + 1, size_ijk).astype(int)
        if np.any(stop <= start):
            return None
        return tuple(slice(a, b) for a, b in zip(start[::-1], stop[::-1]))

    def paint(name, lo, hi, inside):
        box = region(lo, hi)
        if box is not None:
            tissue[box][inside(box, u[box], v[box], w[box])] = T[name]

    right, left = frame["right"], frame["left"]
    rz = (right.z_range[0] - offset[2], right.z_range[1] - offset[2])
    lz = (left.z_range[0] - offset[2], left.z_range[1] - offset[2])
    half_width = max(abs(right.centroid[0] - offset[0]), abs(left.centroid[0] - offset[0])) + 45.0
    g = dict(
        spine_v=rng.uniform(-5, 12),
        width=max(rng.uniform(140, 190), half_width + rng.uniform(15, 40)),
        depth_ratio=rng.uniform(1.25, 1.55),  # width / depth of the abdomen
        back=rng.uniform(75, 110),
        subcutaneous=rng.uniform(8, 45),
        wall=rng.uniform(6, 14),
        exponent=rng.uniform(2.1, 2.7),
        perirenal=rng.uniform(1.5, 12.0),
    )
    g["depth"] = min(g["width"] / g.pop("depth_ratio"), 140.0)
    sv = g["spine_v"]
    centre_v = sv + g["back"] - g["depth"]
    draw["body"] = {k: round(float(val), 1) for k, val in g.items()}
    BIG = 1e4

    tissue = np.full(shape, T["air"], np.uint8)
    n = np.float32(g["exponent"])

    def body_radius(a, b, uu=u, vv=v):
        return np.abs(uu / np.float32(a)) ** n + np.abs((vv - np.float32(centre_v)) / np.float32(b)) ** n

    radial = body_radius(g["width"], g["depth"])
    tissue[radial < 1] = T["subcutaneous_fat"]
    # Depth below the skin (approximately, in mm) and the angle about the body axis (0 = posterior midline).
    theta = np.arctan2(u, v - np.float32(centre_v))
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    skin_depth = (1 - np.sqrt(radial) ** (2 / n)) * np.sqrt((g["width"] * sin_t) ** 2 + (g["depth"] * cos_t) ** 2)
    del theta
    # Subcutaneous fat thickest in front, thinnest over the back; the wall thickest at the flanks
    # (three oblique layers); the rectus muscles parted by the linea alba.
    fat_depth = np.float32(g["subcutaneous"]) * (0.8 - 0.3 * cos_t)
    wall_depth = fat_depth + np.float32(g["wall"]) * (0.8 + 0.5 * np.abs(sin_t))
    inner = (radial < 1) & (skin_depth > fat_depth)
    tissue[inner] = T["muscle"]
    cavity = (radial < 1) & (skin_depth > wall_depth)
    tissue[cavity] = T["visceral_fat"]
    linea_alba = inner & ~cavity & (cos_t < -0.8) & (np.abs(u) < rng.uniform(3, 9))
    tissue[linea_alba] = T["subcutaneous_fat"]
    del cos_t, sin_t, fat_depth, wall_depth, linea_alba
    inner_a, inner_b = g["width"] - g["subcutaneous"], g["depth"] - 0.7 * g["subcutaneous"]
    cavity_a = inner_a - g["wall"]

    # Thorax above the diaphragm. The domes peak halfway out on each side; the posterior recesses
    # reach lowest, but not below the kidneys' upper poles.
    top = max(rz[1], lz[1])
    dome_top = top + rng.uniform(40, 90)
    right_higher = rng.uniform(0, 20)  # the liver holds the right dome up
    dome_u, dome_v = rng.uniform(50, 80), rng.uniform(50, 90)  # how far the domes fall to the sides and back
    heart_c = (rng.uniform(0, 30), sv - rng.uniform(60, 90), dome_top + rng.uniform(30, 60))
    heart_axes = (rng.uniform(50, 70), rng.uniform(40, 55), rng.uniform(50, 70))
    thorax = np.zeros(shape, bool)
    box = region((-BIG, -BIG, top + 10), (BIG, BIG, BIG))
    if box is not None:
        uu, vv, ww = u[box], v[box], w[box]
        side_peak = np.float32(0.45 * cavity_a)
        dome = (dome_top + right_higher * (uu < 0) - dome_u * ((np.abs(uu) - side_peak) / np.float32(cavity_a)) ** 2
                - dome_v * ((vv - np.float32(sv - 50)) / np.float32(g["depth"])) ** 2)
        thorax[box] = cavity[box] & (ww > np.maximum(dome, np.float32(top + 10)))
        tissue[thorax] = T["lung"]
        vessels = thorax[box] & (np.abs(_smooth_noise(rng, uu.shape, spacing_kji, 12.0)) < 0.07)
        tissue[box][vessels] = T["lung_vessel"]
        heart = thorax[box] & (_ellipsoid(uu, vv, ww, heart_c, heart_axes) < 1)
        tissue[box][heart] = T["mediastinum"]
    abdomen = cavity & ~thorax
    draw["diaphragm_top_mm"] = round(float(top), 1)

    # Liver: right lobe over the right kidney, left lobe across the midline; portal/hepatic veins as
    # thin bands of a smooth field; gallbladder under the liver.
    liver_c = (-cavity_a * rng.uniform(0.35, 0.55), sv - rng.uniform(30, 60), rz[1] + rng.uniform(0, 40))
    liver_axes = (cavity_a * rng.uniform(0.5, 0.7), rng.uniform(70, 100), rng.uniform(80, 120))
    lobe_c = (rng.uniform(-10, 30), sv - rng.uniform(70, 110), rz[1] + rng.uniform(30, 70))
    lobe_axes = (rng.uniform(50, 90), rng.uniform(30, 50), rng.uniform(40, 70))
    lo = np.minimum(np.subtract(liver_c, liver_axes), np.subtract(lobe_c, lobe_axes))
    hi = np.maximum(np.add(liver_c, liver_axes), np.add(lobe_c, lobe_axes))
    box = region(lo, hi)
    if box is not None:
        uu, vv, ww = u[box], v[box], w[box]
        liver = ((_ellipsoid(uu, vv, ww, liver_c, liver_axes) < 1) | (_ellipsoid(uu, vv, ww, lobe_c, lobe_axes) < 1)) & abdomen[box]
        tissue[box][liver] = T["liver"]
        veins = liver & (np.abs(_smooth_noise(rng, liver.shape, spacing_kji, 25.0)) < 0.12)
        tissue[box][veins] = T["liver_vessel"]
    if rng.random() < 0.7:
        gb_c = (-cavity_a * rng.uniform(0.2, 0.4), sv - rng.uniform(80, 110), rz[1] - rng.uniform(10, 50))
        gb_axes = (rng.uniform(12, 20), rng.uniform(12, 20), rng.uniform(25, 45))
        paint("gallbladder", np.subtract(gb_c, gb_axes), np.add(gb_c, gb_axes), lambda b, uu, vv, ww: abdomen[b] & (_ellipsoid(uu, vv, ww, gb_c, gb_axes) < 1))

    # Spleen: posterolateral on the left at the upper pole of the left kidney, tilted.
    angle = rng.uniform(0.5, 1.0)
    sp_c = (cavity_a * rng.uniform(0.55, 0.75), sv + rng.uniform(-10, 25), lz[1] + rng.uniform(-5, 30))
    sp_axes = (rng.uniform(20, 30), rng.uniform(45, 65), rng.uniform(45, 65))
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))

    def spleen(b, uu, vv, ww):
        su, svv = uu - np.float32(sp_c[0]), vv - np.float32(sp_c[1])
        ru, rv = su * cos + svv * sin, -su * sin + svv * cos
        return abdomen[b] & ((ru / sp_axes[0]) ** 2 + (rv / sp_axes[1]) ** 2 + ((ww - sp_c[2]) / sp_axes[2]) ** 2 < 1)

    reach = max(sp_axes)
    paint("spleen", np.subtract(sp_c, reach), np.add(sp_c, reach), spleen)

    # Bowel: stomach (left upper quadrant, anterior), colon frame, small-bowel loops (bands of a smooth
    # field); contents gas (rising anteriorly), fluid or oral contrast, behind an enhancing wall.
    contrast_oral = rng.random() < 0.4
    gas_level, contrast_level = rng.uniform(0.4, 1.2), rng.uniform(-1.4, -0.6) if contrast_oral else -99.0
    contents = _smooth_noise(rng, shape, spacing_kji, 30.0)
    contents -= np.float32(0.006) * (v - np.float32(sv))  # gas floats up (anteriorly) in a supine patient

    def fill_bowel(box, lumen, wall):
        tissue[box][wall] = T["bowel_wall"]
        c = contents[box]
        filled = np.where(c > gas_level, T["bowel_gas"], np.where(c < contrast_level, T["bowel_contrast"], T["bowel_fluid"])).astype(np.uint8)
        tissue[box][lumen] = filled[lumen]

    if rng.random() < 0.85:
        st_c = (cavity_a * rng.uniform(0.2, 0.45), sv - rng.uniform(80, 110), lz[1] + rng.uniform(0, 30))
        st_axes = np.array([rng.uniform(40, 60), rng.uniform(30, 45), rng.uniform(45, 70)])
        box = region(np.subtract(st_c, st_axes), np.add(st_c, st_axes))
        if box is not None:
            st = _ellipsoid(u[box], v[box], w[box], st_c, st_axes)
            inside = abdomen[box] & (st < 1)
            wall = inside & (st > (1 - 4.0 / st_axes.min()) ** 2)
            fill_bowel(box, inside & ~wall, wall)
    small_top = min(rz[1], lz[1]) - 20
    box = region((-BIG, -BIG, -BIG), (BIG, sv - 40, small_top))
    if box is not None:
        # Packed loops: blobs of a smooth field, each with a wall; mostly fluid, rarely gas.
        loops = _smooth_noise(rng, tuple(s.stop - s.start for s in box), spacing_kji, rng.uniform(12, 18))
        free = abdomen[box] & (v[box] < sv - 40) & (w[box] < small_top) & (tissue[box] == T["visceral_fat"])
        level = rng.uniform(-0.1, 0.5)
        lumen = free & (loops > level)
        tissue[box][free & (loops > level - 0.3) & ~lumen] = T["bowel_wall"]
        c = contents[box]
        tissue[box][lumen] = np.where(c > gas_level + 0.8, T["bowel_gas"], np.where(c < contrast_level, T["bowel_contrast"], T["bowel_fluid"])).astype(np.uint8)[lumen]
    colon_r = rng.uniform(12, 22)
    colon_gas = rng.uniform(-0.3, 1.2)
    hepatic = (-cavity_a * 0.65, sv - rng.uniform(20, 45), rz[1] - rng.uniform(20, 50))
    splenic = (cavity_a * 0.7, sv - rng.uniform(0, 30), lz[1] - rng.uniform(0, 30))
    pelvis_w = min(rz[0], lz[0]) - 90
    segments = [
        ((-cavity_a * 0.65, sv - rng.uniform(25, 50), pelvis_w), hepatic),
        ((cavity_a * 0.7, sv - rng.uniform(0, 25), pelvis_w), splenic),
        (hepatic, (0.0, sv - g["depth"] * rng.uniform(0.9, 1.3), hepatic[2] - rng.uniform(0, 60))),
        ((0.0, sv - g["depth"] * rng.uniform(0.9, 1.3), hepatic[2] - 30), splenic),
    ]
    for a, b in segments:
        box = region(np.minimum(a, b) - colon_r, np.maximum(a, b) + colon_r)
        if box is not None:
            distance = _segment_distance(u[box], v[box], w[box], a, b)
            inside = abdomen[box] & (distance < colon_r)
            lumen = inside & (distance < colon_r - 3)
            tissue[box][inside & ~lumen] = T["bowel_wall"]
            # Colon content: stool (fluid-like, mottled) with gas bubbles, gas collecting anteriorly.
            bubbles = _smooth_noise(rng, distance.shape, spacing_kji, 6.0) - np.float32(0.015) * (v[box] - np.float32(a[1]))
            tissue[box][lumen] = np.where(bubbles > colon_gas, T["bowel_gas"], T["bowel_fluid"]).astype(np.uint8)[lumen]

    # Pancreas: from the head near the duodenum (right of the midline) to the tail at the splenic hilum.
    head = (-rng.uniform(10, 35), sv - rng.uniform(45, 65), min(rz[1], lz[1]) - rng.uniform(10, 40))
    tail = (cavity_a * rng.uniform(0.45, 0.6), sv - rng.uniform(5, 30), lz[1] - rng.uniform(-10, 20))
    radius = rng.uniform(8, 14)
    paint("pancreas", np.minimum(head, tail) - 25, np.maximum(head, tail) + 25, lambda b, uu, vv, ww: abdomen[b] & (
        (_segment_distance(uu, vv, ww, head, tail) < radius) | (_ellipsoid(uu, vv, ww, head, (18, 14, 22)) < 1)))

    # Posterior wall muscles: psoas (widening downwards), quadratus lumborum, erector spinae.
    for side in (-1, 1):
        pu, qu, qv = side * rng.uniform(32, 42), side * rng.uniform(55, 70), sv + rng.uniform(25, 35)
        q_axes = (rng.uniform(12, 18), rng.uniform(8, 12))
        eu, ev, e_axes = side * rng.uniform(22, 30), sv + rng.uniform(45, 52), (rng.uniform(26, 34), rng.uniform(26, 32))
        paint("muscle", (pu - 30, sv - 30, -BIG), (pu + 30, sv + 30, top - 20), lambda b, uu, vv, ww: cavity[b] & (
            ((uu - pu) / np.clip(10 + 0.12 * (rz[1] - ww), 6, 26)) ** 2 + ((vv - sv - 2) / (0.85 * np.clip(10 + 0.12 * (rz[1] - ww), 6, 26))) ** 2 < 1))
        paint("muscle", (qu - 20, qv - 15, -BIG), (qu + 20, qv + 15, top), lambda b, uu, vv, ww: cavity[b] & (
            ((uu - qu) / q_axes[0]) ** 2 + ((vv - qv) / q_axes[1]) ** 2 < 1))
        paint("muscle", (eu - 35, ev - 35, -BIG), (eu + 35, ev + 35, BIG), lambda b, uu, vv, ww: inner[b] & (
            ((uu - eu) / e_axes[0]) ** 2 + ((vv - ev) / e_axes[1]) ** 2 < 1))

    # Great vessels: aorta left-anterior of the spine, IVC to the right; renal arteries and veins to each hilum.
    aorta_c = (rng.uniform(8, 22), sv - rng.uniform(28, 38))
    aorta_r = rng.uniform(8, 13)
    ivc_c = (-rng.uniform(18, 30), sv - rng.uniform(20, 32))
    bifurcation = min(rz[0], lz[0]) - rng.uniform(0, 40)
    paint("aorta", (aorta_c[0] - 15, aorta_c[1] - 15, bifurcation), (aorta_c[0] + 15, aorta_c[1] + 15, BIG), lambda b, uu, vv, ww: ~thorax[b] & (
        (uu - aorta_c[0]) ** 2 + (vv - aorta_c[1]) ** 2 < aorta_r**2))
    paint("ivc", (ivc_c[0] - 12, ivc_c[1] - 10, bifurcation - 15), (ivc_c[0] + 12, ivc_c[1] + 10, top + 30), lambda b, uu, vv, ww: (
        ((uu - ivc_c[0]) / 11.0) ** 2 + ((vv - ivc_c[1]) / 8.0) ** 2 < 1))

    def tube(name, a, b, r):
        paint(name, np.minimum(a, b) - r, np.maximum(a, b) + r, lambda bx, uu, vv, ww: _segment_distance(uu, vv, ww, a, b) < r)

    for side in (-1, 1):
        tube("aorta", (aorta_c[0], aorta_c[1], bifurcation), (side * 60.0, aorta_c[1] + 10, bifurcation - 120), aorta_r * 0.7)
    for kidney in (right, left):
        side = 1 if kidney.centroid[0] > offset[0] else -1
        hilum = (kidney.centroid[0] - offset[0] - side * kidney.medial_extent * 0.8, kidney.centroid[1] - offset[1], kidney.centroid[2] - offset[2])
        artery_start = (aorta_c[0], aorta_c[1] + 3, hilum[2] + rng.uniform(0, 25))
        vein_start = (ivc_c[0], ivc_c[1], hilum[2] + rng.uniform(0, 20)) if side < 0 else (aorta_c[0], aorta_c[1] - aorta_r - 5, hilum[2] + 10)
        tube("renal_vein", vein_start, (hilum[0], hilum[1] - 5, hilum[2]), rng.uniform(4, 6.5))
        if side > 0:  # the left renal vein crosses in front of the aorta into the IVC
            tube("renal_vein", vein_start, (ivc_c[0], ivc_c[1], vein_start[2]), 5.0)
        tube("renal_artery", artery_start, (hilum[0], hilum[1] + 3, hilum[2] + 3), rng.uniform(2.5, 4))

    # Spine: vertebral bodies (trabecular core, cortical shell) with discs, canal, posterior elements.
    period = rng.uniform(32, 38)
    level_phase = rng.uniform(0, period)
    disc_mm = rng.uniform(7, 10)
    vb_a, vb_b = rng.uniform(20, 26), rng.uniform(15, 19)
    canal_v = sv + vb_b + 10
    spinous_end = canal_v + rng.uniform(25, 40)
    transverse_end = rng.uniform(35, 50)
    box = region((-60, sv - 25, -BIG), (60, spinous_end + 5, BIG))
    if box is not None:
        uu, vv, ww = u[box], v[box], w[box]
        spine = tissue[box]
        level = np.mod(ww - np.float32(level_phase), np.float32(period))
        disc = level < disc_mm
        vb = (uu / vb_a) ** 2 + ((vv - sv) / vb_b) ** 2
        spine[(vb < 1) & disc] = T["disc"]
        spine[(vb < 1) & ~disc] = T["bone_cortical"]
        spine[(vb < (1 - 2.5 / vb_b) ** 2) & ~disc] = T["bone_trabecular"]
        posterior = ~disc & (level < period * 0.85)
        spine[posterior & ((uu / 17.0) ** 2 + ((vv - canal_v) / 14.0) ** 2 < 1)] = T["bone_trabecular"]
        spine[(uu / 10.0) ** 2 + ((vv - canal_v) / 8.0) ** 2 < 1] = T["csf"]
        spine[posterior & (np.abs(uu) < 3.5) & (vv > canal_v + 8) & (vv < spinous_end)] = T["bone_trabecular"]
        transverse = posterior & (level > period * 0.35) & (level < period * 0.6) & (np.abs(vv - canal_v + 2) < 4)
        spine[transverse & (np.abs(uu) > 12) & (np.abs(uu) < transverse_end)] = T["bone_trabecular"]

    # Ribs: oval sections inside the body wall, descending forwards, from the upper kidney halves upwards.
    rib_pitch = rng.uniform(24, 32)
    lowest_rib = rng.uniform(-10, 0.6 * top)  # the 12th rib crosses the upper half of the kidneys
    costal_margin = rng.uniform(-25, 5)
    slope = rng.uniform(35, 60)  # mm of descent per radian
    box = region((-BIG, -BIG, costal_margin), (BIG, BIG, BIG))
    if box is not None:
        uu, vv, ww = u[box], v[box], w[box]
        abs_angle = np.abs(np.arctan2(uu, vv - np.float32(centre_v)))  # 0 = posterior midline
        # Ribs run in the middle of the wall muscles (same angular thickness laws as above).
        rib_depth = g["subcutaneous"] * (0.8 - 0.3 * np.cos(abs_angle)) + 0.5 * g["wall"] * (0.8 + 0.5 * np.sin(abs_angle))
        rib_w = ww + np.float32(slope) * np.clip(abs_angle - 0.25, 0, None)
        along = np.mod(rib_w - np.float32(lowest_rib), np.float32(rib_pitch))
        section = ((skin_depth[box] - rib_depth) / 3.5) ** 2 + ((along - 4) / 4) ** 2
        ribs = (rib_w > lowest_rib - 5) & (ww > costal_margin) & (abs_angle > 0.25) & (abs_angle < 2.1) & (section < 1)
        tissue[box][ribs] = T["bone_cortical"]
        tissue[box][ribs & (section < 0.35)] = T["bone_trabecular"]
    # Pelvis: iliac wings (curved plates from the sacroiliac joints, widening up to the iliac crests)
    # and the urinary bladder low in front.
    crest = pelvis_w + rng.uniform(30, 60)
    box = region((-BIG, sv - 60, crest - 120), (BIG, sv + 60, crest))
    if box is not None:
        uu, vv, ww = u[box], v[box], w[box]
        t = np.clip((ww - np.float32(crest - 120)) / 120.0, 0, 1)  # 0 at the acetabulum, 1 at the crest
        su = np.float32(rng.uniform(30, 40))
        sv_joint = np.float32(sv + rng.uniform(35, 50))
        for side in (-1.0, 1.0):
            # Segment from the sacroiliac joint to the plate's anterolateral edge at this height.
            eu, ev = side * (0.4 + 0.35 * t) * np.float32(cavity_a), np.float32(sv + 15) - 45.0 * t
            du, dv = eu - side * su, ev - sv_joint
            along = np.clip(((uu - side * su) * du + (vv - sv_joint) * dv) / (du**2 + dv**2), 0, 1)
            plate = np.sqrt((uu - side * su - along * du) ** 2 + (vv - sv_joint - along * dv) ** 2)
            bone = (plate < 5) & (ww < crest)
            tissue[box][bone] = T["bone_cortical"]
            tissue[box][bone & (plate < 3)] = T["bone_trabecular"]
    bl_c = (0.0, sv - rng.uniform(60, 90), crest - rng.uniform(130, 160))
    bl_axes = (rng.uniform(30, 50), rng.uniform(25, 40), rng.uniform(25, 40))
    paint("bladder", np.subtract(bl_c, bl_axes), np.add(bl_c, bl_axes), lambda b, uu, vv, ww: cavity[b] & (_ellipsoid(uu, vv, ww, bl_c, bl_axes) < 1))

    # CT table behind the patient: two thin shells curving up at the sides.
    if rng.random() < 0.7:
        table_v = sv + g["back"] + rng.uniform(3, 40)
        radius_mm, gap, half = rng.uniform(450, 800), rng.uniform(12, 30), rng.uniform(180, 240)

        def table(b, uu, vv, ww):
            curve = np.float32(table_v) - uu**2 / np.float32(2 * radius_mm)
            return ((np.abs(vv - curve) < 1.5) | (np.abs(vv - curve - gap) < 1.5)) & (np.abs(uu) < half) & (tissue[b] == T["air"])

        paint("table", (-half, table_v - 70, -BIG), (half, table_v + gap + 2, BIG), table)

    # Kidneys sit in perirenal fat: nothing procedural may come closer than the drawn margin.
    occupied = [np.flatnonzero(coarse_labels.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    if all(len(o) for o in occupied):
        reach = np.ceil((g["perirenal"] + 2 * max(spacing_kji)) / np.array(spacing_kji)).astype(int)
        box = tuple(slice(max(int(o[0]) - r, 0), int(o[-1]) + r + 1) for o, r in zip(occupied, reach))
        distance = ndimage.distance_transform_edt(coarse_labels[box] == 0, sampling=spacing_kji)
        near = (distance < g["perirenal"] + 0.5 * min(spacing_kji)) & (tissue[box] != T["air"]) & (tissue[box] != T["subcutaneous_fat"])
        # Muscles and bones (psoas, quadratus lumborum, diaphragm crura, ribs) may lie close against the
        # kidney, behind a thin fat plane; organs and bowel keep the full perirenal margin.
        firm = np.isin(tissue[box], [T["muscle"], T["bone_cortical"], T["bone_trabecular"], T["disc"], T["csf"]])
        near &= ~firm | (distance < min(g["perirenal"], 2.5) + 0.5 * min(spacing_kji))
        tissue[box][near] = T["perirenal_fat"]
    return tissue, dict(cupping_radius=np.clip(1 - radial ** (2 / n), 0, 1).astype(np.float32))


# --- the kidney interior and lesions (full resolution, crop) -----------------------------------------

def _kidney_interior(rng, labels_crop: np.ndarray, spacing_kji, lps_of, frame: dict, lesions: dict) -> np.ndarray:
    """Tissue ids inside kidney-and-mass voxels of a crop (other voxels 0)."""
    kidney_mass = labels_crop > 0
    crop_image = sitk.GetImageFromArray(kidney_mass.astype(np.uint8))
    crop_image.SetSpacing([float(s) for s in spacing_kji[::-1]])
    depth = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(crop_image, insideIsPositive=True, squaredDistance=False, useImageSpacing=True))
    index = np.nonzero(kidney_mass)
    d = depth[index].astype(np.float32)
    lab = labels_crop[index]
    lps = lps_of(index).astype(np.float32)
    shape = labels_crop.shape
    out = np.zeros(len(d), np.uint8)

    # Medial (hilum) direction of each voxel's kidney: towards the midline and slightly anterior.
    side = np.where(lps[:, 0] > frame["midline"], 1.0, -1.0).astype(np.float32)
    centroid_x = np.where(side > 0, frame["left"].centroid[0], frame["right"].centroid[0]).astype(np.float32)
    centroid_y = np.where(side > 0, frame["left"].centroid[1], frame["right"].centroid[1]).astype(np.float32)
    medial = (-(lps[:, 0] - centroid_x) * side * 0.95 - (lps[:, 1] - centroid_y) * 0.3)
    cortex_mm = rng.uniform(4.0, 7.0)
    sinus_threshold = rng.uniform(13.0, 18.0)
    sinus_score = d + np.float32(rng.uniform(0.6, 0.9)) * medial
    pyramids = _smooth_noise(rng, shape, spacing_kji, rng.uniform(8, 12))[index]
    vessel_field = _smooth_noise(rng, shape, spacing_kji, 10.0)[index]

    parenchyma = (lab == L.KIDNEY) | (lab > L.CYST)  # unknown label values are treated as kidney
    out[parenchyma] = T["renal_cortex"]
    medulla = parenchyma & (d > cortex_mm) & (pyramids > rng.uniform(-0.3, 0.2)) & (sinus_score < sinus_threshold)
    out[medulla] = T["renal_medulla"]
    sinus = parenchyma & (sinus_score >= sinus_threshold)
    out[sinus] = T["renal_sinus_fat"]
    out[sinus & (sinus_score >= sinus_threshold + rng.uniform(3, 8)) & (vessel_field > 0.3)] = T["collecting_system"]
    out[sinus & (np.abs(vessel_field) < 0.12)] = T["sinus_vessel"]

    tumor = lab == L.TUMOR
    if tumor.any():
        out[tumor] = T["tumor"]
        tumor_depth = _lesion_depth(labels_crop == L.TUMOR, spacing_kji)[index]
        blobs = _smooth_noise(rng, shape, spacing_kji, rng.uniform(5, 10))[index]
        if lesions["necrosis"]:
            deep = tumor_depth > np.float32(rng.uniform(0.3, 0.6) * max(float(tumor_depth.max()), 1.0))
            out[tumor & deep & (blobs > -0.8)] = T["tumor_necrosis"]
        if lesions["fat"]:
            out[tumor & (blobs > rng.uniform(-0.6, 0.4))] = T["tumor_fat"]
        if lesions["rim"]:
            out[tumor & (tumor_depth < rng.uniform(1.0, 3.0))] = T["tumor_rim"]
        if lesions["calcification"]:
            out[tumor & (_smooth_noise(rng, shape, spacing_kji, 3.0)[index] > 2.2)] = T["tumor_calcification"]
    cyst = lab == L.CYST
    if cyst.any():
        out[cyst] = T["cyst_fluid"]
        if lesions["cyst_type"] == "complex":
            septa = np.abs(_smooth_noise(rng, shape, spacing_kji, 12.0)[index]) < 0.08
            rim = _lesion_depth(labels_crop == L.CYST, spacing_kji)[index] < 1.5
            out[cyst & (septa | rim)] = T["cyst_septum"]
    return index, out


def _lesion_depth(mask: np.ndarray, spacing_kji) -> np.ndarray:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing_kji[::-1]])
    return sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, insideIsPositive=True, squaredDistance=False, useImageSpacing=True))


# --- acquisition --------------------------------------------------------------------------------

def _gaussian_var_factor(sigma_vox: float) -> float:
    """Variance of white noise after scipy's 1D Gaussian filter of ``sigma_vox`` voxels."""
    if sigma_vox <= 0:
        return 1.0
    radius = int(4.0 * sigma_vox + 0.5)
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (x / sigma_vox) ** 2)
    weights /= weights.sum()
    return float((weights**2).sum())


def _acquire(rng, values: np.ndarray, spacing_kji, sigma_mm, noise_sd: float, fov_mask, chunk: int = 32) -> np.ndarray:
    """Add white quantum noise to ``values`` (float32 HU, k j i) and blur both with the system's Gaussian
    PSF of ``sigma_mm`` (kji), in slabs of ``chunk`` k-planes -> int16 HU.

    As in filtered back-projection, one kernel sets both the sharpness and the noise texture; the white
    noise is scaled so that its SD after the blur is ``noise_sd``.
    """
    from scipy import ndimage

    sigma = np.asarray(sigma_mm, float) / np.asarray(spacing_kji, float)
    sigma = np.where(sigma < 0.2, 0.0, sigma)
    scale = np.float32(noise_sd / math.sqrt(float(np.prod([_gaussian_var_factor(s) for s in sigma]))))
    halo = int(math.ceil(4 * sigma[0])) + 1
    out = np.empty(values.shape, np.int16)
    depth = values.shape[0]
    for start in range(0, depth, chunk):
        stop = min(start + chunk, depth)
        lo, hi = max(start - halo, 0), min(stop + halo, depth)
        slab = rng.standard_normal((hi - lo, *values.shape[1:]), dtype=np.float32)
        slab *= scale
        slab += values[lo:hi]
        if sigma.max() > 0:
            slab = ndimage.gaussian_filter(slab, sigma, mode="nearest", truncate=4.0)
        slab = slab[start - lo : stop - lo]
        if fov_mask is not None:
            slab[fov_mask[start:stop]] = -1024.0
        np.clip(slab, -1024, 3071, out=slab)
        out[start:stop] = np.rint(slab)
    return out


def _fov_mask(image: sitk.Image, radius_fraction: float) -> np.ndarray:
    """True outside a reconstruction circle in the image's slice planes (broadcastable k j i mask)."""
    slice_axis = _slice_axis(image)
    size = np.array(image.GetSize())
    spacing = np.array(image.GetSpacing())
    inplane = [a for a in range(3) if a != slice_axis]
    coords = [((np.arange(size[a]) - (size[a] - 1) / 2) * spacing[a]) for a in range(3)]
    radius = radius_fraction * min(size[a] * spacing[a] for a in inplane) / 2
    shape = [1, 1, 1]
    r2 = np.zeros([1, 1, 1], np.float32)
    for a in inplane:
        piece_shape = list(shape)
        piece_shape[2 - a] = size[a]
        r2 = r2 + (coords[a].astype(np.float32) ** 2).reshape(piece_shape)
    return np.broadcast_to(r2 > radius**2, tuple(size[::-1]))


# --- the pipeline's steps -----------------------------------------------------------------------------

def _body_intensities(rng, coarse: sitk.Image, coarse_tissue: np.ndarray, cupping: np.ndarray, means, sds, phase: str,
                      randomized: bool, config: SynthesisConfig, out_spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """HU of the procedural body on the coarse grid, and its low-frequency (cupping + bias) part."""
    coarse_spacing_kji = np.array(coarse.GetSpacing())[::-1]
    texture = _smooth_noise(rng, coarse_tissue.shape, coarse_spacing_kji, rng.uniform(3.0, 8.0))
    body_hu = means[coarse_tissue] + sds[coarse_tissue] * texture
    spleen = coarse_tissue == T["spleen"]
    if phase == _CM and not randomized and spleen.any():  # arciform (zebra) enhancement of the early spleen
        body_hu[spleen] += 25.0 * _smooth_noise(rng, coarse_tissue.shape, coarse_spacing_kji, 12.0)[spleen]
    effects = config.acquisition_effects
    cupping_hu = rng.uniform(*config.cupping_hu) if effects else 0.0
    bias_hu = rng.uniform(*config.bias_hu) if effects else 0.0
    low_frequency = -cupping_hu * cupping + bias_hu * _smooth_noise(rng, coarse_tissue.shape, coarse_spacing_kji, 120.0)
    low_frequency[coarse_tissue == T["air"]] = 0.0
    body_hu += low_frequency
    # Smooth the coarse grid's steps before interpolation, by the resolution it lacks.
    ratio = np.minimum(out_spacing / np.array(coarse.GetSpacing()), 1.0)[::-1]
    step_sigma = 0.75 * np.sqrt(1.0 - ratio**2)
    if step_sigma.max() > 0.1:
        from scipy import ndimage

        body_hu = ndimage.gaussian_filter(body_hu, step_sigma, mode="nearest", truncate=3.0)
    return body_hu, low_frequency, dict(cupping_hu=round(cupping_hu, 1))


def _paint_kidneys(rng, labels: sitk.Image, values: np.ndarray, tissues: np.ndarray, means, sds, frame: dict,
                   lesions: dict, coarse: sitk.Image, low_frequency: np.ndarray | None) -> None:
    """Write the kidney interior and lesions (HU and tissue ids) into the output arrays, in a crop around the labels."""
    label_array = sitk.GetArrayViewFromImage(labels)
    occupied = [np.flatnonzero(label_array.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    if not all(len(o) for o in occupied):
        return
    spacing_kji = np.array(labels.GetSpacing())[::-1]
    crop = tuple(slice(int(o[0]), int(o[-1]) + 1) for o in occupied)
    offset = np.array([c.start for c in crop])
    labels_crop = np.ascontiguousarray(label_array[crop])

    def lps_of(index):
        kji = np.stack(index, axis=1) + offset
        return index_to_physical(labels, kji[:, ::-1].astype(float))

    index, kidney_tissue = _kidney_interior(rng, labels_crop, spacing_kji, lps_of, frame, lesions)
    kidney_texture = _smooth_noise(rng, labels_crop.shape, spacing_kji, rng.uniform(2.0, 5.0))[index]
    kidney_hu = means[kidney_tissue] + sds[kidney_tissue] * kidney_texture
    if low_frequency is not None:  # the same low-frequency bias as the body, sampled at the kidney voxels
        from scipy import ndimage

        coarse_index = physical_to_index(coarse, lps_of(index)).T[::-1]
        kidney_hu += ndimage.map_coordinates(low_frequency, coarse_index, order=1, mode="nearest").astype(np.float32)
    global_index = tuple(ix + o for ix, o in zip(index, offset))
    values[global_index] = kidney_hu
    tissues[global_index] = kidney_tissue


def _acquisition(rng, labels: sitk.Image, values: np.ndarray, tissues: np.ndarray, source_slice_spacing: float,
                 randomized: bool, config: SynthesisConfig) -> tuple[np.ndarray, dict]:
    """Blur, noise and reconstruction circle -> the int16 CT array, and the acquisition parameters drawn."""
    out_spacing = np.array(labels.GetSpacing())
    slice_axis = _slice_axis(labels)
    thickness = max(source_slice_spacing, out_spacing[slice_axis]) * rng.uniform(*config.slice_thickness_factor)
    fwhm = np.full(3, rng.uniform(*config.inplane_psf_fwhm_mm))
    fwhm[slice_axis] = thickness
    # Gaussian PSF convolved with the voxel's box (partial volume): sigma^2 = (FWHM/2.355)^2 + s^2/12
    blur_ijk = np.sqrt((fwhm / 2.355) ** 2 + out_spacing**2 / 12.0) * (1.0 if not randomized else rng.uniform(0.5, 2.0))
    noise_mm = np.full(3, rng.uniform(*config.noise_correlation_mm))
    noise_mm[slice_axis] *= 0.6
    noise_sd = rng.uniform(*config.noise_sd_hu) * (1.0 if not randomized else rng.uniform(0.3, 2.0))
    fov = _fov_mask(labels, rng.uniform(0.92, 1.0)) if rng.random() < config.fov_circle_rate else None
    if fov is not None:
        fov = fov & (sitk.GetArrayViewFromImage(labels) == 0)  # the labels stay true: a labelled voxel is never cut away
        tissues[fov] = T["air"]  # nothing is reconstructed outside the circle
    drawn = dict(noise_sd_hu=round(noise_sd, 1), blur_sigma_mm=[round(float(b), 2) for b in blur_ijk],
                 slice_thickness_mm=round(float(thickness), 2), fov_circle=fov is not None)
    return _acquire(rng, values, out_spacing[::-1], np.maximum(blur_ijk, noise_mm)[::-1], noise_sd, fov), drawn


# --- public API ---------------------------------------------------------------------------------

def synthesize(labels: sitk.Image, seed: int, config: SynthesisConfig | None = None,
               spacing: tuple[float, float, float] | None = None) -> Synthesized:
    """Synthesise a contrast-enhanced CT (int16 HU) around a KiTS label map (0 bg, 1 kidney, 2 tumor, 3 cyst).

    The output shares one grid: the label map's own geometry, or its extent resampled to ``spacing``
    (mm, i j k order; labels nearest-neighbour). The labels are returned unchanged (resampled only
    when ``spacing`` is given). The same ``seed`` and input always give the same volume.
    """
    config = config or SynthesisConfig()
    rng = np.random.default_rng(seed)
    if labels.GetPixelID() != sitk.sitkUInt8:
        labels = sitk.Cast(labels, sitk.sitkUInt8)
    source_slice_spacing = float(labels.GetSpacing()[_slice_axis(labels)])
    if spacing is not None:
        labels = sitk.Resample(labels, _grid_like(labels, spacing), sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    out_spacing = np.array(labels.GetSpacing())

    phase = config.phase if config.phase != "random" else PHASES[int(rng.integers(2))]
    randomized = bool(rng.random() < config.domain_randomization_rate)
    means, sds, lesions = _draw_intensities(rng, config, phase, randomized)
    parameters = dict(seed=int(seed), phase=phase, domain_randomized=randomized, **lesions)
    parameters["mean_hu"] = {name: round(float(means[T[name]]), 1) for name in TISSUE_NAMES}

    # 1. The procedural body on a coarse grid (>= 2.5 mm), placed from the kidneys' positions.
    coarse = _grid_like(labels, tuple(np.maximum(out_spacing, config.coarse_spacing_mm)))
    coarse_labels = sitk.GetArrayFromImage(sitk.Resample(labels, coarse, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    frame = _anatomy_frame(_kidneys(coarse_labels, coarse), coarse, rng)
    parameters["midline_x_mm"] = round(frame["midline"], 1)
    coarse_tissue, extra = _body(rng, coarse, coarse_labels, frame, config, parameters)
    body_hu, low_frequency, drawn = _body_intensities(rng, coarse, coarse_tissue, extra["cupping_radius"], means, sds, phase,
                                                      randomized, config, out_spacing)

    # 2. Onto the output grid: intensities interpolated, tissue ids nearest.
    def to_output(array: np.ndarray, interpolator, pixel, outside: float) -> np.ndarray:
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(coarse)
        return sitk.GetArrayFromImage(sitk.Resample(image, labels, sitk.Transform(), interpolator, outside, pixel, useNearestNeighborExtrapolator=True))

    values = to_output(body_hu, sitk.sitkLinear, sitk.sitkFloat32, float(means[T["air"]]))
    tissues = to_output(coarse_tissue, sitk.sitkNearestNeighbor, sitk.sitkUInt8, float(T["air"]))
    del body_hu

    # 3. Kidney interior and lesions at full resolution; 4. acquisition effects.
    _paint_kidneys(rng, labels, values, tissues, means, sds, frame, lesions, coarse, low_frequency if config.acquisition_effects else None)
    del low_frequency
    if config.acquisition_effects:
        ct_array, acquisition = _acquisition(rng, labels, values, tissues, source_slice_spacing, randomized, config)
        parameters.update(noise_sd_hu=acquisition["noise_sd_hu"], blur_sigma_mm=acquisition["blur_sigma_mm"],
                          slice_thickness_mm=acquisition["slice_thickness_mm"], cupping_hu=drawn["cupping_hu"],
                          fov_circle=acquisition["fov_circle"])
    else:
        ct_array = np.rint(np.clip(values, -1024, 3071)).astype(np.int16)
    del values
    ct = sitk.GetImageFromArray(ct_array)
    ct.CopyInformation(labels)
    tissue_image = sitk.GetImageFromArray(tissues)
    tissue_image.CopyInformation(labels)
    return Synthesized(ct=ct, labels=labels, tissues=tissue_image, parameters=parameters)
