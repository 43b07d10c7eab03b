"""Quality control of synthesised CT: preview images and the realism report (synthetic versus published and real HU)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import labels as L
from .outputs import atomic_path

WINDOW_WIDTH, WINDOW_LEVEL = 400.0, 40.0  # soft-tissue window (W400/L40)
_OUTLINE_COLORS = {L.KIDNEY: (0.1, 0.9, 0.2), L.TUMOR: (1.0, 0.85, 0.1), L.CYST: (0.3, 0.7, 1.0)}


def preview(ct: sitk.Image, labels: sitk.Image, path: str | os.PathLike, title: str = "", dpi: int = 80) -> Path:
    """Write a PNG with axial, coronal and sagittal planes through the tumor (else the largest lesion or
    kidney), soft-tissue window, label outlines, radiological convention (patient right on image left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # DICOMOrient to LPS: array axes become (S-I as k, P as j, L as i) without interpolation (axis permutations/flips).
    ct_lps = sitk.DICOMOrient(ct, "LPS")
    lab_lps = sitk.DICOMOrient(labels, "LPS")
    hu = sitk.GetArrayViewFromImage(ct_lps)  # (z, y, x): z inferior->superior, y anterior->posterior, x right->left
    lab = sitk.GetArrayViewFromImage(lab_lps)
    sx, sy, sz = ct_lps.GetSpacing()
    target = next((value for value in (L.TUMOR, L.CYST, L.KIDNEY) if (lab == value).any()), None)
    if target is None:
        centre = np.array(hu.shape) // 2
    else:
        where = np.argwhere(lab == target)
        centre = np.median(where, axis=0).astype(int)
        centre = where[np.argmin(((where - centre) ** 2).sum(1))]  # a voxel inside the structure
    k, j, i = centre
    low, high = WINDOW_LEVEL - WINDOW_WIDTH / 2, WINDOW_LEVEL + WINDOW_WIDTH / 2
    # Crop every view to the body (voxels denser than -500 HU) seen on coarse steps, with a small margin.
    body = hu[::2, ::2, ::2] > -500
    box = []
    for axis in range(3):
        hit = np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis))) * 2
        box.append(slice(max(int(hit[0]) - 6, 0), int(hit[-1]) + 8) if len(hit) else slice(None))
    zs, ys, xs = box
    # Axial: rows anterior->posterior, columns patient right->left (radiological: right on the image left).
    planes = [
        ("axial", hu[k, ys, xs], lab[k, ys, xs], sy / sx),
        # Coronal: rows superior->inferior, columns right->left.
        ("coronal", hu[zs, j, xs][::-1], lab[zs, j, xs][::-1], sz / sx),
        # Sagittal: rows superior->inferior, columns anterior->posterior.
        ("sagittal", hu[zs, ys, i][::-1], lab[zs, ys, i][::-1], sz / sy),
    ]
    widths = [p[1].shape[1] * (sx if n < 2 else sy) for n, p in enumerate(planes)]
    height = max(p[1].shape[0] * (sy if n == 0 else sz) for n, p in enumerate(planes))
    fig, axes = plt.subplots(1, 3, figsize=(12, 12 * height / sum(widths) + 0.5), gridspec_kw=dict(width_ratios=widths))
    for ax, (name, image, outline, aspect) in zip(axes, planes):
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        for value, color in _OUTLINE_COLORS.items():
            if (outline == value).any():
                ax.contour(outline == value, levels=[0.5], colors=[color], linewidths=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    axes[0].text(0.02, 0.97, "R", color="w", fontsize=9, transform=axes[0].transAxes, va="top")
    axes[0].text(0.98, 0.97, "L", color="w", fontsize=9, transform=axes[0].transAxes, va="top", ha="right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    plt.close(fig)
    # A fixed palette (60 grey levels + the outline colours), no dithering: 2x smaller files, exact outline colours.
    colors = [(g, g, g) for g in np.linspace(0, 255, 60).astype(int)]
    colors += [tuple(int(round(255 * c)) for c in color) for color in _OUTLINE_COLORS.values()]
    palette = Image.new("P", (1, 1))
    palette.putpalette([value for color in colors for value in color] + [0] * (3 * (256 - len(colors))))
    image = Image.open(buffer).convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    return path


# --- realism report ----------------------------------------------------------------------------------
# Regions measured alike on real and synthetic CT (arrays reoriented to LPS: axes z, y, x):
# - body: the largest connected region denser than -500 HU, holes (lungs, bowel gas) filled;
# - air: outside the body grown by 10 mm, below -500 HU (no table), above -1100 HU (no padding);
# - subcutaneous fat: within 30 mm of the skin, -190 to -30 HU (fat thresholds of the Alberta
#   body-composition protocol, Mitsiopoulos et al. J Appl Physiol 1998);
# - muscle: the posterior quarter of the body (paraspinal muscles) away from the midline +-10 mm,
#   -29 to 150 HU (same protocol);
# - bone: within 35 mm of the midline in the posterior 40 % of the body, above 200 HU (vertebrae);
# - liver: right of the midline by > 20 mm, 0-200 HU, opened by 3 voxels, the largest connected
#   region eroded by 5 mm (in an upper-abdominal CT the liver is the largest soft-tissue organ there).
ROI_NAMES = ("air", "subcutaneous_fat", "muscle", "bone", "liver")


def _stats(values: np.ndarray) -> dict:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return dict(mean=float("nan"), sd=float("nan"), n=0)
    return dict(mean=float(values.mean()), sd=float(values.std()), n=int(values.size))


def roi_statistics(ct: sitk.Image) -> dict[str, dict]:
    """HU mean / SD / voxel count of the threshold regions (``ROI_NAMES``, defined above) of a CT."""
    from scipy import ndimage

    from .labels import body_midline_x

    oriented = sitk.DICOMOrient(ct, "LPS")
    hu = sitk.GetArrayFromImage(oriented).astype(np.float32)
    spacing = np.array(oriented.GetSpacing())[::-1]  # z, y, x
    dense = sitk.BinaryMorphologicalOpening(sitk.Cast(oriented > -500, sitk.sitkUInt8), [1, 1, 0])
    components = sitk.RelabelComponent(sitk.ConnectedComponent(dense), sortByObjectSize=True)
    body_image = sitk.BinaryFillhole(sitk.Cast(components == 1, sitk.sitkUInt8))
    body = sitk.GetArrayFromImage(body_image).astype(bool)
    # Fill each axial slice too: a lung or gas region open at the volume's top or bottom is not a 3D hole.
    body = np.stack([ndimage.binary_fill_holes(plane) for plane in body])
    if not body.any():
        return {name: _stats([]) for name in ROI_NAMES}
    outside_mm = ndimage.distance_transform_edt(~body, sampling=spacing)
    depth_mm = ndimage.distance_transform_edt(body, sampling=spacing)
    x = (np.arange(hu.shape[2]) * spacing[2] + oriented.GetOrigin()[0])[None, None, :]
    y_index = np.arange(hu.shape[1])[None, :, None]
    rows = np.flatnonzero(body.any(axis=(0, 2)))
    front, back = rows[0], rows[-1]
    midline = body_midline_x(oriented)
    regions = {
        "air": (outside_mm > 10) & (hu < -500) & (hu > -1100),
        "subcutaneous_fat": body & (depth_mm <= 30) & (hu >= -190) & (hu <= -30),
        "muscle": body & (y_index > back - 0.25 * (back - front)) & (np.abs(x - midline) > 10) & (hu >= -29) & (hu <= 150),
        "bone": body & (y_index > back - 0.4 * (back - front)) & (np.abs(x - midline) < 35) & (hu > 200),
    }
    candidate = body & (x < midline - 20) & (hu >= 0) & (hu <= 200)
    candidate = ndimage.binary_opening(candidate, iterations=3)
    labelled, count = ndimage.label(candidate)
    if count:
        largest = np.argmax(np.bincount(labelled.ravel())[1:]) + 1
        liver = labelled == largest
        liver &= ndimage.distance_transform_edt(liver, sampling=spacing) > 5
        regions["liver"] = liver
    else:
        regions["liver"] = np.zeros_like(body)
    return {name: _stats(hu[mask]) for name, mask in regions.items()}


def tissue_statistics(ct: sitk.Image, tissues: sitk.Image) -> dict[str, dict]:
    """HU mean / SD / count of each synthetic tissue class, one voxel in from its border (partial volume
    excluded; a class too thin to have such voxels is measured whole)."""
    from .synthesis import TISSUE_NAMES

    hu = sitk.GetArrayViewFromImage(ct).astype(np.float64).ravel()
    tissue = sitk.GetArrayViewFromImage(tissues)
    # A voxel is "core" when its 6 neighbours share its class (one pass instead of one erosion per class).
    core = np.ones(tissue.shape, bool)
    for axis in range(3):
        same = np.diff(tissue, axis=axis) == 0
        lead = [slice(None)] * 3
        lead[axis] = slice(1, None)
        trail = [slice(None)] * 3
        trail[axis] = slice(None, -1)
        core[tuple(lead)] &= same
        core[tuple(trail)] &= same
        edge = [slice(None)] * 3
        edge[axis] = [0, -1]
        core[tuple(edge)] = False
    ids = tissue.ravel().astype(np.int64)
    size = len(TISSUE_NAMES)
    out = {}
    for mask in (core.ravel(), None):
        selected_ids = ids if mask is None else ids[mask]
        values = hu if mask is None else hu[mask]
        n = np.bincount(selected_ids, minlength=size)
        total = np.bincount(selected_ids, weights=values, minlength=size)
        squares = np.bincount(selected_ids, weights=values**2, minlength=size)
        for index, name in enumerate(TISSUE_NAMES):
            if name in out or n[index] < 30:
                continue
            mean = total[index] / n[index]
            out[name] = dict(mean=float(mean), sd=float(np.sqrt(max(squares[index] / n[index] - mean**2, 0.0))), n=int(n[index]))
    return {name: out[name] for name in TISSUE_NAMES if name in out}


def case_statistics(case) -> dict:
    """What the realism report needs from one ``Synthesized`` case (small: the volumes can be dropped)."""
    return dict(parameters=dict(case.parameters), tissues=tissue_statistics(case.ct, case.tissues), regions=roi_statistics(case.ct))


def _pool(entries: list[dict]) -> dict:
    """Mean and SD of the union of several (mean, sd, n) groups."""
    entries = [e for e in entries if e["n"]]
    if not entries:
        return _stats([])
    n = np.array([e["n"] for e in entries], float)
    means = np.array([e["mean"] for e in entries])
    sds = np.array([e["sd"] for e in entries])
    mean = float((means * n).sum() / n.sum())
    sd = float(np.sqrt(((sds**2 + (means - mean) ** 2) * n).sum() / n.sum()))
    return dict(mean=mean, sd=sd, n=int(n.sum()), cases=len(entries), case_min=float(means.min()), case_max=float(means.max()))


def realism_report(cases: list[dict], real: dict | None = None) -> str:
    """Markdown report from ``case_statistics`` of synthetic cases and ``roi_statistics`` of a real CT:
    per-tissue HU beside the configured (published) ranges, then threshold regions side by side."""
    from .synthesis import HU_SOURCES, TUMOR_TYPES, SynthesisConfig

    config = SynthesisConfig()
    realistic = [case for case in cases if not case["parameters"].get("domain_randomized")]
    groups: dict[str, list] = {}
    phases: dict[str, set] = {}
    for case in realistic:
        for name, stats in case["tissues"].items():
            key = f"tumor ({case['parameters']['tumor_type']})" if name == "tumor" else name
            if name == "cyst_fluid" and case["parameters"].get("cyst_type") == "hyperdense":
                key = "cyst_fluid (hyperdense)"
            groups.setdefault(key, []).append(stats)
            phases.setdefault(key, set()).add(case["parameters"]["phase"][:2].upper())
    lines = [
        "# Realism report: synthetic CT versus published ranges and a real CT",
        "",
        f"{len(realistic)} realistic synthetic cases ({len(cases) - len(realistic)} domain-randomised cases left out). "
        "Synthetic HU are measured one voxel inside each tissue class, after blur, noise and bias; "
        "the configured range is the range of the per-case mean (CM corticomedullary, NP nephrographic). "
        "Thin structures (table, bowel wall, vessels in the lungs and the renal sinus, discs, cortical bone) have "
        "few or no voxels free of partial volume, so their measured means lie between their own and their "
        "neighbours' values.",
        "",
        "| tissue | phases | voxel mean +- SD | case means min..max | configured CM / NP | source |",
        "|---|---|---|---|---|---|",
    ]
    for key in sorted(groups):
        pooled = _pool(groups[key])
        name = key.split(" ")[0]
        subtype = key[key.find("(") + 1 : -1] if "(" in key else None
        if subtype in TUMOR_TYPES:
            cm, np_ = TUMOR_TYPES[subtype]["hu"]["corticomedullary"], TUMOR_TYPES[subtype]["hu"]["nephrographic"]
            source = HU_SOURCES.get(subtype, "")
        elif subtype == "hyperdense":
            cm = np_ = (70, 90)
            source = HU_SOURCES["hyperdense_cyst"]
        elif name in config.hu_ranges["corticomedullary"]:
            cm, np_ = config.hu_ranges["corticomedullary"][name], config.hu_ranges["nephrographic"][name]
            source = HU_SOURCES.get(name, "")
        else:
            lines.append(f"| {key} | {','.join(sorted(phases[key]))} | {pooled['mean']:.0f} +- {pooled['sd']:.0f} | "
                         f"{pooled['case_min']:.0f}..{pooled['case_max']:.0f} | lesion component | |")
            continue
        lines.append(f"| {key} | {','.join(sorted(phases[key]))} | {pooled['mean']:.0f} +- {pooled['sd']:.0f} | "
                     f"{pooled['case_min']:.0f}..{pooled['case_max']:.0f} | {cm[0]}..{cm[1]} / {np_[0]}..{np_[1]} | {source} |")
    lines += [
        "",
        "## Threshold regions: synthetic and real CT side by side",
        "",
        "Same definitions on both (`RenalSegLib/synthesis_qc.py`): air outside the body; subcutaneous fat "
        "(-190..-30 HU within 30 mm of the skin); paraspinal muscle (-29..150 HU, posterior quarter of the body); "
        "vertebral bone (> 200 HU near the posterior midline); liver (largest 0..200 HU region right of the "
        "midline, eroded 5 mm; on synthetic cases the liver tissue class, as their volumes are centred on the kidneys).",
        "",
        "| region | synthetic mean +- SD | real CT mean +- SD |",
        "|---|---|---|",
    ]
    for name in ROI_NAMES:
        if name == "liver":
            pooled = _pool([case["tissues"]["liver"] for case in realistic if "liver" in case["tissues"]])
        else:
            pooled = _pool([case["regions"][name] for case in realistic])
        synth = "n/a" if not pooled["n"] else f"{pooled['mean']:.0f} +- {pooled['sd']:.0f} ({pooled['cases']} cases)"
        real_text = "n/a" if real is None or not real[name]["n"] else f"{real[name]['mean']:.0f} +- {real[name]['sd']:.0f}"
        lines.append(f"| {name} | {synth} | {real_text} |")
    return "\n".join(lines) + "\n"
