"""Click-to-refine: a session holding a CT, its current labels and the clicks, refined on crops.

Each click runs the fine network (with positive/negative click guidance) on a crop of the cached,
preprocessed CT around the click, never on the whole volume, and merges the result back only inside
that crop. Labels the user locked are never changed. Every change is undoable.

Example::

    session = RefinementSession(ct, labels)                 # ct, labels: SimpleITK images
    changed = session.add_click((x, y, z), positive=True)   # LPS mm; returns the changed (k, j, i) slices
    session.undo()
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from . import labels as L
from .errors import RenalSegError
from .inference import Segmenter
from .preprocess import grid_for_image, normalize_ct, resample_onto
from .volume import physical_to_index

Box = tuple[slice, slice, slice]
CROP_SIZES = (64, 96, 128)  # voxels on the 1.5 mm grid; grown while the clicked lesion touches the border


@dataclass(frozen=True)
class Click:
    point_lps: tuple[float, float, float]
    positive: bool = True
    label: int = L.TUMOR


@dataclass
class _Change:
    box: Box
    before: np.ndarray
    after: np.ndarray
    clicks_before: tuple[Click, ...]
    clicks_after: tuple[Click, ...]


class RefinementSession:
    """Interactive refinement of one CT's KiTS label map (see the module docstring)."""

    def __init__(
        self,
        ct: sitk.Image,
        labels: sitk.Image | np.ndarray,
        *,
        device: str = "auto",
        model_path=None,
        segmenter: Segmenter | None = None,
        locked_labels=(),
        guidance: str = "adaptive",
    ):
        self.ct = ct
        self.segmenter = segmenter or Segmenter.load(model_path, device)
        array = sitk.GetArrayFromImage(labels) if isinstance(labels, sitk.Image) else np.array(labels, np.uint8)
        if array.shape != tuple(reversed(ct.GetSize())):
            raise RenalSegError(f"label map shape {array.shape} does not match the CT ({tuple(reversed(ct.GetSize()))})")
        self.labels = array.astype(np.uint8)
        self._initial = self.labels.copy()
        self.locked_labels = set(locked_labels)
        self.guidance = guidance
        self.clicks: list[Click] = []
        self._undo: list[_Change] = []
        self._redo: list[_Change] = []
        # The preprocessed CT on the fine network's grid, computed once: a click costs one crop forward pass.
        _, config = self.segmenter.networks["fine"]
        self._grid = grid_for_image(ct, config.spacing_mm)
        self._image = normalize_ct(sitk.GetArrayFromImage(resample_onto(ct, self._grid, sitk.sitkLinear, -1024.0)))

    # -- public API ---------------------------------------------------------------------------------

    def add_click(self, point_lps, positive: bool = True, label: int = L.TUMOR) -> Box:
        """Refine around a click (LPS mm); returns the (k, j, i) slices of the CT region that changed."""
        point = tuple(float(v) for v in point_lps)
        index = physical_to_index(self.ct, np.array(point))[0]
        if np.any(index < -0.5) or np.any(index > np.array(self.ct.GetSize()) - 0.5):
            raise RenalSegError(f"click at LPS {tuple(round(v, 1) for v in point)} mm is outside the image")
        if label not in (L.KIDNEY, L.TUMOR, L.CYST):
            raise RenalSegError(f"click label must be kidney (1), tumor (2) or cyst (3), got {label}")
        clicks_before = tuple(self.clicks)
        self.clicks.append(Click(point, positive, label))
        box, proposal = self._refine_around(self.clicks[-1])
        return self._apply(box, proposal, clicks_before)

    def undo(self) -> Box | None:
        """Undo the last change (click or reset); returns the region restored, or None if nothing to undo."""
        if not self._undo:
            return None
        change = self._undo.pop()
        self.labels[change.box] = change.before
        self.clicks = list(change.clicks_before)
        self._redo.append(change)
        return change.box

    def redo(self) -> Box | None:
        if not self._redo:
            return None
        change = self._redo.pop()
        self.labels[change.box] = change.after
        self.clicks = list(change.clicks_after)
        self._undo.append(change)
        return change.box

    def reset(self) -> Box:
        """Back to the labels the session started with (undoable)."""
        whole = tuple(slice(0, n) for n in self.labels.shape)
        return self._apply(whole, self._initial.copy(), tuple(self.clicks), clicks_after=())

    @property
    def labels_image(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.labels)
        image.CopyInformation(self.ct)
        return image

    # -- internals ----------------------------------------------------------------------------------

    def _apply(self, box: Box, proposal: np.ndarray, clicks_before, clicks_after=None) -> Box:
        before = self.labels[box].copy()
        after = proposal.copy()
        if self.locked_labels:
            locked = list(self.locked_labels)
            keep = np.isin(before, locked) | np.isin(after, locked)  # locked voxels stay; nothing becomes a locked label
            after[keep] = before[keep]
        self.labels[box] = after
        clicks_after = tuple(self.clicks) if clicks_after is None else tuple(clicks_after)
        self.clicks = list(clicks_after)
        self._undo.append(_Change(box, before, after, tuple(clicks_before), clicks_after))
        self._redo.clear()
        return box

    def _refine_around(self, click: Click) -> tuple[Box, np.ndarray]:
        """Run the network on growing crops around ``click`` until the clicked lesion fits inside."""
        centre = np.round(physical_to_index(self._grid, np.array(click.point_lps))[0][::-1]).astype(int)  # (k, j, i)
        for size in CROP_SIZES:
            start, stop = self._crop_box(centre, size)
            probabilities = self._predict_crop(start, stop)
            local = tuple(np.clip(centre - start, 0, stop - start - 1))
            if not _lesion_touches_border(probabilities, local) or size == CROP_SIZES[-1]:
                break
        return self._to_ct(start, stop, probabilities, click)

    def _crop_box(self, centre: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        shape = np.array(self._image.shape)
        extent = np.minimum(size, shape)
        start = np.clip(centre - extent // 2, 0, shape - extent)
        return start, start + extent

    def _predict_crop(self, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """Fine-network probabilities (4, k, j, i) for a crop of the cached grid, with click guidance."""
        from .guidance import encode_clicks

        box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
        crop = self._image[box]
        spacing = (self._grid.GetSpacing()[0],) * 3
        clicks = []
        for c in self.clicks:
            kji = np.round(physical_to_index(self._grid, np.array(c.point_lps))[0][::-1]).astype(int) - start
            if np.all(kji >= 0) and np.all(kji < crop.shape):
                clicks.append((tuple(int(v) for v in kji), c.positive))
        guidance = encode_clicks(crop, clicks, spacing, self.guidance)
        return self.segmenter._predict("fine", crop, guidance)

    def _to_ct(self, start, stop, probabilities: np.ndarray, click: Click) -> tuple[Box, np.ndarray]:
        """Resample crop probabilities onto the CT voxels strictly inside the crop; apply the click's class."""
        crop_grid = sitk.Image([int(v) for v in (stop - start)[::-1]], sitk.sitkFloat32)
        crop_grid.SetSpacing(self._grid.GetSpacing())
        crop_grid.SetDirection(self._grid.GetDirection())
        crop_grid.SetOrigin(self._grid.TransformIndexToPhysicalPoint([int(v) for v in start[::-1]]))
        corners = np.array([crop_grid.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner]) for corner in _corners(crop_grid.GetSize())])
        ct_index = physical_to_index(self.ct, corners)
        low = np.clip(np.ceil(ct_index.min(0)), 0, None).astype(int)
        high = np.minimum(np.floor(ct_index.max(0)) + 1, self.ct.GetSize()).astype(int)
        target = sitk.RegionOfInterest(self.ct, [int(v) for v in high - low], [int(v) for v in low])
        out = np.empty((probabilities.shape[0], *reversed(target.GetSize())), np.float32)
        for c, p in enumerate(probabilities):
            image = sitk.GetImageFromArray(p)
            image.CopyInformation(crop_grid)
            out[c] = sitk.GetArrayFromImage(sitk.Resample(image, target, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        proposal = out.argmax(0).astype(np.uint8)
        box = tuple(slice(int(a), int(b)) for a, b in zip(low[::-1], high[::-1]))
        if click.positive and click.label in L.LESION_LABELS:
            proposal = _relabel_clicked_lesion(proposal, physical_to_index(target, np.array(click.point_lps))[0][::-1], click.label)
        return box, proposal


def _corners(size) -> list[tuple[float, float, float]]:
    """Centres of the outermost voxels of an image of ``size`` (i, j, k)."""
    return [tuple((n - 1) * c for n, c in zip(size, corner)) for corner in np.ndindex(2, 2, 2)]


def _lesion_touches_border(probabilities: np.ndarray, local) -> bool:
    """True when the predicted mass containing the crop-local click voxel reaches the crop's border."""
    from scipy import ndimage

    masses = np.isin(probabilities.argmax(0), L.LESION_LABELS)
    if not masses[local]:
        return False
    components, _ = ndimage.label(masses)
    region = components == components[local]
    return bool(region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any() or region[:, :, 0].any() or region[:, :, -1].any())


def _relabel_clicked_lesion(proposal: np.ndarray, click_kji, label: int) -> np.ndarray:
    """Give the mass component under a positive click the class the user asked for (tumor or cyst)."""
    from scipy import ndimage

    index = tuple(np.clip(np.round(click_kji).astype(int), 0, np.array(proposal.shape) - 1))
    masses = np.isin(proposal, L.LESION_LABELS)
    if not masses[index]:
        return proposal
    components, _ = ndimage.label(masses)
    proposal[components == components[index]] = label
    return proposal


def click_refiner(session: RefinementSession):
    """Adapt a session to ``evaluation.click_protocol``'s ``refine(clicks) -> labels`` callable.

    Clicks arrive as ((k, j, i) voxel of the CT, positive) with the whole history each time; only the
    new ones are applied, and a history that does not extend the previous one starts over from the
    session's initial labels.
    """
    applied: list = []

    def refine(clicks) -> np.ndarray:
        nonlocal applied
        clicks = list(clicks)
        if clicks[: len(applied)] != applied or len(clicks) < len(applied):
            session.reset()
            applied = []
        for kji, positive in clicks[len(applied):]:
            session.add_click(session.ct.TransformIndexToPhysicalPoint([int(v) for v in reversed(kji)]), positive)
        applied = clicks
        return session.labels.copy()

    return refine
