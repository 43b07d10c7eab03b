"""The one-page surgical-planning report: CT slices with the segmentation, a 3D view, measurements and RENAL score.

Slices are shown in the radiological convention (patient right on the image left, anterior at the
top of axial slices) at a soft-tissue window (W400/L40). The 3D view is rendered offscreen with vtk;
where no offscreen OpenGL context exists it is drawn with matplotlib from the same vtk meshes.
"""

from __future__ import annotations

import base64
import datetime
import html
import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .labels import SEGMENT_BY_NAME, SEGMENTS
from .measure import Anatomy, analyse, measure
from .nephrometry import renal_score
from .outputs import atomic_path

log = logging.getLogger(__name__)

WINDOW_HU, LEVEL_HU = 400.0, 40.0
SLICE_MARGIN_MM = 25.0
MAX_LESION_ROWS = 2
MAX_TABLE_LESIONS = 5  # lesion rows that fit the page's table; smaller lesions are summed in one row (all are in the HTML/CSV)
REVIEW_NOTE = ("Automatic segmentation and measurements: to be reviewed and confirmed by a clinician before any "
               "clinical use. Not a medical device.")
FIGURE_SIZE_IN, FIGURE_DPI = (16.0, 12.2), 110
PROBABILITY_NOTE = ("Network P: the network's mean tumor-or-cyst probability over the lesion; lesions under 0.7 were more "
                    "often false than true on held-out synthetic CT.")
COMPONENT_NAMES = {"R": "Radius", "E": "Exophytic", "N": "Nearness to sinus", "A": "Anterior/posterior", "L": "Location (polar lines)"}


def write_report(kits_labels: sitk.Image, ct: sitk.Image, out_dir: str | os.PathLike, title: str = "", anatomy: Anatomy | None = None,
                 rows: list[dict] | None = None, scores: list[dict] | None = None) -> list[Path]:
    """Write ``report.png``, ``report.pdf`` and a self-contained ``report.html`` (PNG embedded) to ``out_dir``.

    ``title`` names the case (e.g. the CT file); measurements and scores are computed when not given.
    """
    import matplotlib

    matplotlib.use("Agg")
    anatomy = anatomy or analyse(kits_labels, ct)
    rows = rows if rows is not None else measure(kits_labels, ct, anatomy)
    scores = scores if scores is not None else renal_score(kits_labels, ct, anatomy)
    out_dir = Path(out_dir)
    figure, renderer_used = _figure(anatomy, rows, scores, title)
    png, pdf, page = out_dir / "report.png", out_dir / "report.pdf", out_dir / "report.html"
    with atomic_path(png) as tmp:
        figure.savefig(tmp, dpi=FIGURE_DPI)
    with atomic_path(pdf) as tmp:
        figure.savefig(tmp)
    import matplotlib.pyplot as plt

    plt.close(figure)
    with atomic_path(page) as tmp:
        tmp.write_text(_html(png, rows, scores, title, renderer_used), encoding="utf-8")  # as its meta tag says, whatever the locale
    return [png, pdf, page]


# --- figure ----------------------------------------------------------------------------------------

def _figure(anatomy: Anatomy, rows: list[dict], scores: list[dict], title: str):
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=FIGURE_SIZE_IN)
    grid = figure.add_gridspec(5, 4, height_ratios=[0.55, 3.0, 3.0, 1.75, 2.2], hspace=0.3, wspace=0.08,
                               left=0.02, right=0.98, top=0.975, bottom=0.015)
    header = figure.add_subplot(grid[0, :])
    header.axis("off")
    header.text(0.0, 1.0, "Kidney and renal mass segmentation: surgical-planning summary", fontsize=17, weight="bold", va="top")
    when = datetime.date.today().isoformat()
    facts = [title, when, f"CT window W{WINDOW_HU:.0f}/L{LEVEL_HU:.0f} HU", "slices in radiological convention: patient RIGHT on image LEFT"]
    header.text(0.0, 0.42, "   |   ".join(f for f in facts if f), fontsize=10.5, va="top", color="#333333")
    header.text(0.0, -0.05, REVIEW_NOTE, fontsize=10.5, va="top", ha="left", color="#b00020", weight="bold",
                bbox=dict(facecolor="#fff0f0", edgecolor="#b00020", boxstyle="round,pad=0.3"))

    display = _Display(anatomy)
    shown = sorted(anatomy.lesions, key=lambda s: (s.kind != "tumor", -int(s.mask.sum())))[:MAX_LESION_ROWS]
    if len(shown) < MAX_LESION_ROWS:
        shown.append(None)  # a free row shows both kidneys for context
    for row, lesion in enumerate(shown):
        for column, view in enumerate(("axial", "coronal", "sagittal") if lesion is not None else ("axial", "coronal")):
            display.draw(figure.add_subplot(grid[1 + row, column]), view, lesion)
    overview = figure.add_subplot(grid[1, 3])
    renderer_used = _draw_3d(overview, anatomy)
    _legend(header, anatomy)
    focus = next((anatomy.structure(s.kidney) for s in anatomy.lesions if s.kidney is not None), None)
    if focus is not None:
        _draw_3d(figure.add_subplot(grid[2, 3]), anatomy, focus, f"3D close-up: {focus.name.lower()}, from the front")
    score_axis, table_axis = figure.add_subplot(grid[3, :]), figure.add_subplot(grid[4, :])
    score_axis.axis("off")
    _score_panel(score_axis, scores)
    table_axis.axis("off")
    _measurement_table(table_axis, rows, anatomy)
    return figure, renderer_used


class _Display:
    """CT and segment map reoriented to LPS axes (i: to patient left, j: to posterior, k: to superior)."""

    def __init__(self, anatomy: Anatomy):
        ct = anatomy.ct if anatomy.ct is not None else sitk.Cast(anatomy.labels, sitk.sitkInt16) * 0 - 1000
        segments = anatomy.segments
        if anatomy.foreground_box is not None:  # reorienting only the labelled region is ~10x faster
            shape = sitk.GetArrayViewFromImage(segments).shape
            margin = np.ceil((SLICE_MARGIN_MM + 5.0) / np.array(segments.GetSpacing())[::-1]).astype(int)
            k, j, i = (slice(max(0, b.start - m), min(n, b.stop + m)) for b, m, n in zip(anatomy.foreground_box, margin, shape))
            ct, segments = ct[i, j, k], segments[i, j, k]  # SimpleITK slices (i, j, k) and keeps physical positions
        self.ct_image = sitk.DICOMOrient(ct, "LPS")
        self.segments_image = sitk.DICOMOrient(segments, "LPS")
        self.ct = sitk.GetArrayViewFromImage(self.ct_image)  # (k, j, i)
        self.segments = sitk.GetArrayViewFromImage(self.segments_image)
        self.spacing = np.array(self.ct_image.GetSpacing())  # (i, j, k) mm
        self.anatomy = anatomy

    def _index(self, point_lps) -> np.ndarray:
        index = self.ct_image.TransformPhysicalPointToIndex([float(v) for v in point_lps])
        return np.clip(index, 0, np.array(self.ct_image.GetSize()) - 1)

    def _crop(self, lesion) -> tuple[np.ndarray, np.ndarray]:
        """Index box (i, j, k) around the lesion's kidney (or all kidneys), with a margin."""
        if lesion is not None and lesion.kidney is not None:
            names = [lesion.kidney, lesion.name]
        elif lesion is not None:
            names = [lesion.name]
        else:
            names = [k.name for k in self.anatomy.kidneys] or [s.name for s in self.anatomy.lesions]
        corners = []
        for name in names:
            structure = self.anatomy.structure(name)
            points = self.anatomy.points_lps(structure.box, structure.mask)
            corners += [points.min(0), points.max(0)]
        corners = np.array(corners)
        low = corners.min(0) - SLICE_MARGIN_MM
        high = corners.max(0) + SLICE_MARGIN_MM
        # The LPS-oriented grid is axis aligned (up to obliquity), so the box's corners bound the crop.
        box = np.array([self._index(c) for c in np.array(np.meshgrid(*zip(low, high))).T.reshape(-1, 3)])
        return box.min(0), box.max(0) + 1

    def draw(self, axis, view: str, lesion) -> None:
        import matplotlib.patheffects as effects

        low, high = self._crop(lesion)
        if lesion is not None:
            centre = self.anatomy.points_lps(lesion.box, lesion.mask).mean(0)
        else:
            centre = (self.ct_image.TransformIndexToPhysicalPoint([int(v) for v in (low + high) // 2]))
        ci, cj, ck = self._index(centre)
        sx, sy, sz = self.spacing
        if view == "axial":  # rows: anterior -> posterior, columns: patient right -> left
            ct, seg = self.ct[ck, low[1]:high[1], low[0]:high[0]], self.segments[ck, low[1]:high[1], low[0]:high[0]]
            size, marks = (sx, sy), ("R", "L", "A", "P")
        elif view == "coronal":  # rows: superior -> inferior, columns: patient right -> left
            ct, seg = self.ct[low[2]:high[2], cj, low[0]:high[0]][::-1], self.segments[low[2]:high[2], cj, low[0]:high[0]][::-1]
            size, marks = (sx, sz), ("R", "L", "S", "I")
        else:  # sagittal, rows: superior -> inferior, columns: anterior -> posterior
            ct, seg = self.ct[low[2]:high[2], low[1]:high[1], ci][::-1], self.segments[low[2]:high[2], low[1]:high[1], ci][::-1]
            size, marks = (sy, sz), ("A", "P", "S", "I")
        width, height = ct.shape[1] * size[0], ct.shape[0] * size[1]
        extent = (0, width, height, 0)
        axis.imshow(ct, cmap="gray", vmin=LEVEL_HU - WINDOW_HU / 2, vmax=LEVEL_HU + WINDOW_HU / 2, extent=extent, interpolation="bilinear")
        for segment in SEGMENTS:
            mask = seg == segment.value
            if mask.any():
                overlay = np.zeros(mask.shape + (4,))
                overlay[mask] = (*segment.color, 0.28)
                axis.imshow(overlay, extent=extent, interpolation="nearest")
                columns, rows = (np.arange(mask.shape[1]) + 0.5) * size[0], (np.arange(mask.shape[0]) + 0.5) * size[1]
                axis.contour(columns, rows, mask.astype(float), levels=[0.5], colors=[segment.color], linewidths=1.4)
        outline = [effects.withStroke(linewidth=2.5, foreground="black")]
        style = dict(color="white", fontsize=12, weight="bold", path_effects=outline)
        axis.text(4, height / 2, marks[0], ha="left", va="center", **style)
        axis.text(width - 4, height / 2, marks[1], ha="right", va="center", **style)
        axis.text(width / 2, 4, marks[2], ha="center", va="top", **style)
        axis.text(width / 2, height - 4, marks[3], ha="center", va="bottom", **style)
        axis.plot([width - 14 - 20, width - 14], [height - 12] * 2, color="white", linewidth=3, path_effects=outline)
        axis.text(width - 24, height - 16, "2 cm", ha="center", va="bottom", color="white", fontsize=9, path_effects=outline)
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_xticks([])
        axis.set_yticks([])
        name = lesion.name if lesion is not None else "both kidneys (overview)"
        where = f" ({lesion.kidney.lower()})" if lesion is not None and lesion.kidney else ""
        axis.set_title(f"{view.capitalize()} through {name}{where}", fontsize=11)


def _surfaces(anatomy: Anatomy, kidney=None):
    """Display meshes (LPS) of all segments, or of one kidney and its lesions (a crop of the segment map)."""
    from .mesh import segment_surfaces

    segments = anatomy.segments
    if kidney is not None:
        box = anatomy.kidney_box(kidney)
        values = sitk.GetArrayFromImage(segments[box[2], box[1], box[0]])  # SimpleITK slices (i, j, k), keeps positions
        for other in anatomy.kidneys:
            if other is not kidney:
                values[values == other.segment.value] = 0
        cropped = sitk.GetImageFromArray(values)
        cropped.CopyInformation(segments[box[2], box[1], box[0]])
        segments = cropped
    return segment_surfaces(segments, coords="LPS", smooth=True, decimate=0.5)


def render_3d(anatomy: Anatomy, size: tuple[int, int] = (700, 640), kidney=None) -> tuple[np.ndarray, float]:
    """Offscreen vtk rendering of the segments seen from the front (patient right on the image left).

    Returns ``(rgb image, millimetres per pixel)``. Kidneys are translucent so lesions inside show.
    With ``kidney`` (a ``measure.Structure``), only that kidney and its lesions, filling the view.
    """
    import vtk
    from vtk.util import numpy_support

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(1, 1, 1)
    window.AddRenderer(renderer)
    for segment, surface in _surfaces(anatomy, kidney):
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(surface)
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*segment.color)
        if segment.kits_label == 1:  # translucent kidney; culling its back faces avoids unsorted-blending streaks
            actor.GetProperty().SetOpacity(0.4)
            actor.GetProperty().BackfaceCullingOn()
        actor.GetProperty().SetSpecular(0.2)
        renderer.AddActor(actor)
    renderer.ResetCamera()
    camera = renderer.GetActiveCamera()
    focal = np.array(camera.GetFocalPoint())
    distance = camera.GetDistance()
    camera.SetPosition(*(focal + [0.0, -distance, 0.0]))  # anterior: LPS -y
    camera.SetViewUp(0.0, 0.0, 1.0)  # superior up
    camera.ParallelProjectionOn()  # a true scale bar
    renderer.ResetCamera()
    x0, x1, _, _, z0, z1 = renderer.ComputeVisiblePropBounds()
    camera.SetParallelScale(0.6 * max(z1 - z0, (x1 - x0) * size[1] / size[0]))  # fill the view, leaving a border for the labels
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    output = grab.GetOutput()
    width, height, _ = output.GetDimensions()
    rgb = numpy_support.vtk_to_numpy(output.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
    mm_per_pixel = 2.0 * camera.GetParallelScale() / height
    window.Finalize()
    if rgb.std() < 1.0:
        raise RuntimeError("offscreen rendering produced a blank image")
    return rgb, mm_per_pixel


def _draw_3d(axis, anatomy: Anatomy, kidney=None, title: str = "3D view from the front (anterior)") -> str:
    """Draw the 3D view into a matplotlib axis; returns which renderer drew it."""
    axis.set_title(title, fontsize=11)
    try:
        rgb, mm_per_pixel = render_3d(anatomy, kidney=kidney)
        used = "vtk (offscreen OpenGL)"
        axis.imshow(rgb)
        height, width = rgb.shape[:2]
        centimetres = 5 if 50.0 / mm_per_pixel < 0.3 * width else 2
        bar = 10.0 * centimetres / mm_per_pixel
        axis.plot([width - 12 - bar, width - 12], [height - 14] * 2, color="black", linewidth=3)
        axis.text(width - 12 - bar / 2, height - 20, f"{centimetres} cm", ha="center", va="bottom", fontsize=9)
        style = dict(fontsize=12, weight="bold", color="black")
        axis.text(8, height / 2, "R", ha="left", va="center", **style)
        axis.text(width - 8, height / 2, "L", ha="right", va="center", **style)
        axis.text(width / 2, 8, "S", ha="center", va="top", **style)
        axis.text(width / 2, height - 4, "I", ha="center", va="bottom", **style)
    except Exception as exc:  # no OpenGL context (headless without EGL/OSMesa): draw the meshes with matplotlib
        log.info("vtk offscreen rendering unavailable (%s); drawing the 3D view with matplotlib", exc)
        used = "matplotlib (no offscreen OpenGL available)"
        _draw_3d_matplotlib(axis, anatomy, kidney)
    axis.set_xticks([])
    axis.set_yticks([])
    for side in axis.spines.values():
        side.set_visible(False)
    return used


def _draw_3d_matplotlib(axis, anatomy: Anatomy, kidney=None) -> None:
    """Fallback 3D view: orthographic projection of the meshes on the coronal plane, painter-sorted."""
    from matplotlib.collections import PolyCollection

    from .mesh import mesh_arrays

    polygons, colours, depths = [], [], []
    light = np.array([0.3, -1.0, 0.5]) / np.linalg.norm([0.3, -1.0, 0.5])
    for segment, surface in _surfaces(anatomy, kidney):
        points, triangles = mesh_arrays(surface)
        corners = points[triangles]
        normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
        shade = 0.45 + 0.55 * np.clip(normals @ light, 0, 1)
        alpha = 0.35 if segment.kits_label == 1 else 1.0
        # Seen from the front (LPS -y): screen x = LPS x (patient right on the left), screen y = LPS z.
        polygons.append(corners[:, :, [0, 2]])
        colours.append(np.column_stack([np.outer(shade, segment.color), np.full(len(shade), alpha)]))
        depths.append(-corners[:, :, 1].mean(1))
    polygons, colours, depths = np.concatenate(polygons), np.concatenate(colours), np.concatenate(depths)
    order = np.argsort(depths)  # farthest (most posterior) first
    axis.add_collection(PolyCollection(polygons[order], facecolors=colours[order], edgecolors="none"))
    axis.set_xlim(polygons[..., 0].min() - 10, polygons[..., 0].max() + 10)
    axis.set_ylim(polygons[..., 1].min() - 10, polygons[..., 1].max() + 10)
    axis.set_aspect("equal")
    axis.text(0.02, 0.5, "R", transform=axis.transAxes, fontsize=12, weight="bold")
    axis.text(0.96, 0.5, "L", transform=axis.transAxes, fontsize=12, weight="bold")


def _legend(axis, anatomy: Anatomy) -> None:
    """Colour key of the segments present, at the top right of the page."""
    from matplotlib.patches import Patch

    present = set(np.unique(sitk.GetArrayViewFromImage(anatomy.segments)).tolist())
    handles = [Patch(facecolor=s.color, edgecolor="black", label=s.name) for s in SEGMENTS if s.value in present]
    axis.legend(handles=handles, loc="upper right", fontsize=10, ncol=2, frameon=False, handlelength=1.4, borderaxespad=0.0,
                title="Segments (kidneys translucent in 3D)", title_fontsize=9.5)


def _score_panel(axis, scores: list[dict]) -> None:
    """RENAL score of the largest tumor, component by component, and a one-line summary of the others."""
    if not scores:
        axis.text(0.0, 0.95, "RENAL nephrometry score: no renal tumor in the segmentation", fontsize=12, weight="bold", va="top")
        return
    first = scores[0]
    headline = f"RENAL nephrometry score, {first['tumor']} ({(first['kidney'] or 'no kidney').lower()}): "
    headline += f"{first['score']}  ({first['complexity']} complexity)" if first["score"] else "incomplete"
    axis.text(0.0, 1.0, headline, fontsize=12.5, weight="bold", va="top")
    cells = []
    for key in "RENAL":
        component = first["components"].get(key)
        if component is None:
            cells.append([f"{key}  {COMPONENT_NAMES[key]}", "n/a", "not computed (see notes)"])
        else:
            cells.append([f"{key}  {COMPONENT_NAMES[key]}", str(component.get("points", component.get("descriptor"))), component["measurement"]])
    cells.append(["Total (R+E+N+L)", str(first["total"]) if first["total"] else "n/a", "4-6 low, 7-9 moderate, 10-12 high complexity"])
    _table(axis, cells, ["Component", "Points", "Measurement behind it"], [0.0, 0.0, 0.62, 0.86], [0.24, 0.07, 0.69])
    notes = ["Notes:"] + [f"- {n}" for n in first["notes"]]
    notes += [f"- {s['tumor']} ({(s['kidney'] or 'no kidney').lower()}): RENAL {s['score'] or 'incomplete'}" for s in scores[1:4]]
    notes += ["- Renal sinus approximated from the kidney outline (no", "  collecting-system label); see the HTML report."]
    axis.text(0.635, 0.86, "\n".join(_wrap(n) for n in notes), fontsize=9, va="top", color="#333333", linespacing=1.35)


def _table(axis, cells: list[list[str]], header: list[str], bbox: list[float], widths: list[float]):
    """A left-aligned matplotlib table in the report's style (grey rules, bold header on grey)."""
    table = axis.table(cellText=cells, colLabels=header, cellLoc="left", colLoc="left", bbox=bbox, colWidths=widths)
    table.auto_set_font_size(False)
    table.set_fontsize(9.5)
    for (r, _), cell in table.get_celld().items():
        cell.set_edgecolor("#cccccc")
        if r == 0:
            cell.set_facecolor("#e8e8e8")
            cell.set_text_props(weight="bold")
    return table


def _wrap(text: str, width: int = 62) -> str:
    import textwrap

    return "\n  ".join(textwrap.wrap(text, width))


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def table_rows(rows: list[dict], max_lesions: int = MAX_TABLE_LESIONS) -> tuple[list[dict], list[dict]]:
    """(rows shown on the page, lesion rows summed into one line): every kidney and the largest lesions."""
    kidneys = [r for r in rows if r["kind"] == "kidney"]
    lesions = sorted((r for r in rows if r["kind"] != "kidney"), key=lambda r: -r["volume_ml"])
    return kidneys + lesions[:max_lesions], lesions[max_lesions:]


def _measurement_table(axis, rows: list[dict], anatomy: Anatomy) -> None:
    header = ["Structure", "Kidney / pole", "Volume (mL)", "Max diameter (mm)", "Axes (mm)", "HU mean ± SD", "Sphericity", "Lesion / kidney"]
    widths = [0.12, 0.14, 0.2, 0.11, 0.12, 0.11, 0.08, 0.12]
    probabilities = _has_probabilities(rows)
    if probabilities:  # its room comes from the two widest columns
        header, widths = header + ["Network P"], [0.12, 0.12, 0.14] + widths[3:] + [0.08]
    cells, colours = [], []
    shown, hidden = table_rows(rows)
    for row in shown:
        where = "-" if row["kind"] == "kidney" else f"{(row['kidney'] or '?').split()[0].lower()}, {row['pole'] or '?'} pole"
        volume_text = _fmt(row["volume_ml"]) + (f" (with lesions {row['volume_with_lesions_ml']:.1f})" if row["volume_with_lesions_ml"] else "")
        hu = "-" if row["hu_mean"] is None else f"{row['hu_mean']:.0f} ± {row['hu_std']:.0f}"
        ratio = "-" if row["lesion_to_kidney_ratio"] is None else f"{100 * row['lesion_to_kidney_ratio']:.1f}%"
        cells.append([row["structure"], where, volume_text, _fmt(row["max_diameter_mm"]), " x ".join(f"{v:.0f}" for v in row["axis_lengths_mm"]),
                      hu, _fmt(row["sphericity"], 2), ratio] + ([_fmt(row["lesion_probability"], 2)] if probabilities else []))
        segment = SEGMENT_BY_NAME.get(row["structure"]) or SEGMENT_BY_NAME[" ".join(row["structure"].split()[:2])]
        colours.append(segment.color)
    if hidden:
        volume = sum(r["volume_ml"] for r in hidden)
        largest = max(r["volume_ml"] for r in hidden)
        cells.append([f"+ {len(hidden)} smaller lesions", "see report.html", f"{volume:.1f} in total (each <= {largest:.1f})"]
                     + [""] * (len(header) - 3))
        colours.append((0.9, 0.9, 0.9))
    axis.text(0.0, 1.0, "Measurements (kidney volume = parenchyma; lesions = connected components)", fontsize=12.5, weight="bold", va="top")
    if not cells:
        return
    height = 0.078 * (len(cells) + 1)  # fixed row height: a short table is not stretched over the panel
    table = _table(axis, cells, header, [0.0, 0.87 - height, 1.0, height], widths)
    for r, colour in enumerate(colours, start=1):  # the structure column in its segment's colour
        table[r, 0].set_facecolor((*colour, 0.45))
    ignored = anatomy.ignored_lesion_voxels
    if ignored:
        axis.text(0.0, 0.02, f"{ignored} lesion voxels in fragments under 0.02 mL were not counted as lesions.", fontsize=8.5, color="#444444")
    if probabilities:
        axis.text(0.0, 0.06, PROBABILITY_NOTE, fontsize=8.5, color="#444444")


def _has_probabilities(rows: list[dict]) -> bool:
    return any(r.get("lesion_probability") is not None for r in rows)


# --- HTML --------------------------------------------------------------------------------------------

def _html(png: Path, rows: list[dict], scores: list[dict], title: str, renderer_used: str) -> str:
    image = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    e = html.escape
    probabilities = _has_probabilities(rows)
    measurement_rows = "".join(
        "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in (
            r["structure"], r["kidney"] or "-", r["pole"] or "-", _fmt(r["volume_ml"], 2), _fmt(r["volume_with_lesions_ml"], 2),
            _fmt(r["max_diameter_mm"]), " x ".join(f"{v:.1f}" for v in r["axis_lengths_mm"]),
            "-" if r["hu_mean"] is None else f"{r['hu_mean']:.0f} ± {r['hu_std']:.0f}", _fmt(r["sphericity"], 2),
            "-" if r["lesion_to_kidney_ratio"] is None else f"{100 * r['lesion_to_kidney_ratio']:.1f}%")
            + ((_fmt(r["lesion_probability"], 2),) if probabilities else ())) + "</tr>" for r in rows
    )
    score_blocks = []
    for s in scores:
        lines = "".join(
            f"<tr><td>{k} ({COMPONENT_NAMES[k]})</td><td>{e(str(c.get('points', c.get('descriptor'))))}</td><td>{e(c['measurement'])}</td></tr>"
            for k in "RENAL" if (c := s["components"].get(k)) is not None
        )
        notes = "".join(f"<li>{e(n)}</li>" for n in s["notes"])
        score_blocks.append(
            f"<h3>{e(s['tumor'])} ({e(s['kidney'] or 'no kidney')}): RENAL {e(s['score'] or 'incomplete')}"
            f"{' - ' + e(s['complexity']) + ' complexity' if s['complexity'] else ''}</h3>"
            f"<table><tr><th>Component</th><th>Points</th><th>Measurement behind it</th></tr>{lines}</table><ul>{notes}</ul>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>RenalSeg report {e(title)}</title>
<style>body{{font-family:sans-serif;max-width:1800px;margin:1em auto;color:#222}} .review{{border:2px solid #b00020;background:#fff0f0;
color:#b00020;padding:.5em 1em;font-weight:bold}} table{{border-collapse:collapse;margin:.5em 0}} td,th{{border:1px solid #ccc;padding:.25em .6em;
text-align:left}} th{{background:#eee}} img{{width:100%}}</style></head><body>
<h1>Kidney and renal mass segmentation: surgical-planning summary</h1>
<p>{e(title)} &mdash; {datetime.date.today().isoformat()}</p>
<p class="review">{e(REVIEW_NOTE)}</p>
<img src="data:image/png;base64,{image}" alt="CT slices with the segmentation, 3D view, measurements and RENAL score">
<h2>RENAL nephrometry score (Kutikov &amp; Uzzo 2009)</h2>{''.join(score_blocks) or '<p>No renal tumor in the segmentation.</p>'}
<h2>Measurements</h2>
<table><tr><th>Structure</th><th>Kidney</th><th>Pole</th><th>Volume (mL)</th><th>Volume with lesions (mL)</th><th>Max 3D diameter (mm)</th>
<th>Principal axes (mm)</th><th>HU mean ± SD</th><th>Sphericity</th><th>Lesion / kidney volume</th>{'<th>Network P</th>' if probabilities else ''}</tr>
{measurement_rows}</table>{f'<p>{e(PROBABILITY_NOTE)}</p>' if probabilities else ''}
<h2>How to read this report</h2><ul>
<li>Slices use the radiological convention: the patient's right is on the image left; axial slices show anterior at the top.
Window W{WINDOW_HU:.0f}/L{LEVEL_HU:.0f} HU. Colours: {', '.join(e(s.name) for s in SEGMENTS)} as in the 3D view.</li>
<li>Kidney volume is the parenchyma label; lesions are connected components of the tumor and cyst labels, numbered by size.
The pole is the third of the kidney (cranio-caudal) that holds the lesion's centre.</li>
<li>RENAL components are computed from the segmentation: the renal sinus (for N and the polar lines of L) is approximated as the
hilar pocket of the kidney's convex hull, because the segmentation has no collecting-system label. See docs/nephrometry.md.</li>
<li>3D view rendered with {e(renderer_used)}; kidneys are shown translucent.</li></ul>
</body></html>
"""
