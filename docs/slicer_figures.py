"""Draw the Slicer modules' icons and the workflow figure of the README (section "Use in 3D Slicer") (no Slicer needed).

Run: python docs/slicer_figures.py   (writes RenalSeg/Resources/Icons/*.png and docs/slicer_workflow.png)
The figure is drawn from the engine's own data (a synthetic phantom, its labels standing in for a model
output, the module logic's measurements and mesh.py's surfaces) because no Slicer screenshot can be taken here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.patches import Circle, Ellipse  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "Testing"), str(ROOT / "RenalSeg")]

from RenalSegLib import labels  # noqa: E402


def _icon(path: Path, interactive: bool) -> None:
    fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    kidney = labels.SEGMENT_BY_NAME["Right kidney"].color
    ax.add_patch(Ellipse((0.47, 0.5), 0.5, 0.78, angle=-12, color=kidney))
    ax.add_patch(Ellipse((0.66, 0.5), 0.16, 0.26, angle=-12, color="white"))  # renal hilum
    ax.add_patch(Circle((0.36, 0.7), 0.13, color=labels.SEGMENT_BY_NAME["Renal tumor"].color))
    ax.add_patch(Circle((0.4, 0.28), 0.08, color=labels.SEGMENT_BY_NAME["Renal cyst"].color))
    if interactive:  # a click: green dot with a ring
        ax.add_patch(Circle((0.78, 0.2), 0.11, color=(0.2, 0.7, 0.2)))
        ax.add_patch(Circle((0.78, 0.2), 0.05, color="white"))
    fig.savefig(path, transparent=True)
    plt.close(fig)


def _workflow(path: Path) -> None:
    import phantoms
    from RenalSegLib.mesh import segment_surfaces, mesh_arrays
    from RenalSegLib.measure import measure

    phantom = phantoms.kidney_phantom(size=(128, 128, 80), spacing=(1.6, 1.6, 2.0), noise_hu=12)
    segments = labels.segment_map(phantom.labels, labels.body_midline_x(phantom.ct))
    seg = sitk.GetArrayFromImage(segments)
    ct = sitk.GetArrayFromImage(phantom.ct)
    fig = plt.figure(figsize=(13, 4.6))
    fig.suptitle("RenalSeg in 3D Slicer: Segment -> results table -> click to refine -> Export STL "
                 "(drawn from the engine on a synthetic phantom; its labels stand in for the model output)", fontsize=10)
    ax = fig.add_subplot(1, 3, 1)
    k = int(np.argmax((seg == 3).sum((1, 2))))
    ax.imshow(ct[k], cmap="gray", vmin=-160, vmax=240, origin="upper")  # anterior up, patient right on the left (radiological view)
    for segment in labels.SEGMENTS:
        if (seg[k] == segment.value).any():
            ax.contour(seg[k] == segment.value, levels=[0.5], colors=[segment.color], linewidths=1.5)
    kji = np.argwhere(seg[k] == 3).mean(0)
    ax.plot(kji[1] + 9, kji[0] - 3, "o", color=(0.2, 0.85, 0.2), markersize=7, label="positive click (A)")
    ax.plot(kji[1] - 16, kji[0] + 12, "o", color=(0.9, 0.2, 0.2), markersize=7, label="negative click (S)")
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title("Axial slice: segments + clicks", fontsize=9)
    ax.axis("off")
    ax3 = fig.add_subplot(1, 3, 2, projection="3d")
    for segment, surface in segment_surfaces(segments, coords="RAS", smooth=True):
        points, triangles = mesh_arrays(surface)
        ax3.plot_trisurf(points[:, 0], points[:, 1], points[:, 2], triangles=triangles, color=segment.color,
                         alpha=0.55 if segment.kits_label == labels.KIDNEY else 1.0, linewidth=0)
    ax3.view_init(elev=15, azim=90)  # anterior view, as Slicer's default 3D view
    ax3.set_axis_off()
    ax3.set_title("3D view (closed surfaces, as exported to STL)", fontsize=9)
    axt = fig.add_subplot(1, 3, 3)
    axt.axis("off")
    rows = measure(phantom.labels, phantom.ct)
    table = axt.table(cellText=[[r["structure"], f"{r['volume_ml']:.1f}", f"{r['max_diameter_mm']:.0f}", f"{r['hu_mean']:.0f}",
                                 r["pole"] or ""] for r in rows],
                      colLabels=["Structure", "Volume mL", "Max diam. mm", "Mean HU", "Pole"], loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.1, 1.6)
    for n, row in enumerate(rows, start=1):
        table[n, 0].set_facecolor(labels.SEGMENT_BY_NAME[row["structure"].rstrip(" 0123456789")].color)
    axt.set_title("Results table (vtkMRMLTableNode)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    _icon(ROOT / "RenalSeg" / "Resources" / "Icons" / "RenalSeg.png", interactive=False)
    _icon(ROOT / "RenalSegInteractive" / "Resources" / "Icons" / "RenalSegInteractive.png", interactive=True)
    _workflow(ROOT / "docs" / "slicer_workflow.png")
    print("icons and docs/slicer_workflow.png written")
