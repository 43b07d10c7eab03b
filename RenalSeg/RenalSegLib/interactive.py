"""Click-to-refine: a session holding a CT, its current labels and the clicks, refined on crops.

Each click runs the fine network (with positive/negative click guidance) on a crop of the cached,
preprocessed CT around the click, never on the whole volume, as one network window: crops grown for
large lesions are seen at a coarser spacing. The result is merged back only inside that crop and only
on the structure clicked (a lesion click changes that lesion, never the kidney or another lesion), and a
positive lesion click adds mass only over the tissue clicked (intensities consistent with the click).
Labels the user locked are never changed. Every change is undoable.

Example::

    session = RefinementSession(ct, labels)                 # ct, labels: SimpleITK images
    changed = session.add_click((x, y, z), positive=True)   # LPS mm; returns the changed (k, j, i) slices
    session.undo()
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from . import labels as L
from .errors import RenalSegError
from .guidance import CLICK_DEFAULT, check_method
from .inference import MASS_SHARE, Segmenter, decide_labels
from .network import MEMORY_CHANNEL
from .preprocess import grid_for_image, grid_for_region, index_box_covering, normalize_ct, resample_onto
from .volume import index_to_physical, physical_to_index

Box = tuple[slice, slice, slice]
# Crop extents in voxels of the 1.5 mm grid, per click encoding, each seen as one network window of at most the
# training patch (64^3): 72 and 96 mm at 1.5 mm, 144 mm at 2.25 mm; grown while the clicked lesion touches the
# border. Chosen on 14 training-split synthetic cases (docs/accuracy.md, "The first click crop"): with Gaussian
# clicks a 72 mm first crop (a third of the compute of a 64^3 pass) raised tumor Dice after 5 and 10 clicks and
# lowered NoC@85 and NoC@90; with adaptive masks it left 4 of the 19 lesions missed in auto mode still missed
# after one click each (none from 96 mm). A 48 mm first crop has too little context (on 10 held-out cases
# NoC@85 2.5 -> 9.0). No 192 mm / 3 mm level: at 3 mm the network sees masses that are not there (on 10
# held-out synthetic cases, 3 clicks in 100 grew 100-300 mL false tumor and halved kidney-and-masses Dice).
CROP_EXTENTS = {"gaussian": (48, 64, 96), "adaptive": (64, 96)}
CROP_MARGIN_MM = 10.0  # context kept around a labelled mass when choosing the first crop
# A negative click erases the whole structure under it when the network drops at least this share of the class
# clicked in it (the labelled class under the click: a false lesion; see _merge_clicked_structure). On 14
# training-split synthetic cases (the bundled model, Gaussian clicks, 129 negative clicks) the network dropped at
# most 0.37 of the clicked class of a mass holding true lesion and 0.56-1.0 of a false mass's; measured on the
# whole mass (the rule before, at 0.6) two false masses half tumor, half cyst stayed at 0.56 and 0.58.
NEGATIVE_ERASE_SHARE = 0.5
# After a negative click a voxel stays a mass only where the masses hold half of the foreground probability
# (auto mode needs inference.MASS_SHARE, 0.3): the user has said there is too much mass here.
NEGATIVE_MASS_SHARE = 0.5


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
        guidance: str | None = None,
    ):
        self.guidance = guidance or CLICK_DEFAULT
        check_method(self.guidance)  # before the model loads
        self.ct = ct
        self.segmenter = segmenter or Segmenter.load(model_path, device)
        array = sitk.GetArrayFromImage(labels) if isinstance(labels, sitk.Image) else np.array(labels, np.uint8)
        if array.shape != tuple(reversed(ct.GetSize())):
            raise RenalSegError(f"label map shape {array.shape} does not match the CT ({tuple(reversed(ct.GetSize()))})")
        self.labels = array.astype(np.uint8)
        self._initial = self.labels.copy()
        self.locked_labels = set(locked_labels)
        self._extents = CROP_EXTENTS[self.guidance]
        self.clicks: list[Click] = []
        self.click_seconds: list[float] = []  # wall time of each add_click, click to merged labels
        self._undo: list[_Change] = []
        self._redo: list[_Change] = []
        self._masks: dict[Click, tuple[np.ndarray, np.ndarray]] = {}  # each click's guidance on the cached grid
        self._reaches: dict[Click, tuple[np.ndarray, np.ndarray]] = {}  # each positive click's reach on it
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
        started = time.perf_counter()
        clicks_before = tuple(self.clicks)
        self.clicks.append(Click(point, positive, label))
        box, proposal = self._refine_around(self.clicks[-1])
        changed = self._apply(box, proposal, clicks_before)
        self.click_seconds.append(time.perf_counter() - started)
        return changed

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
    def last_change(self) -> tuple[Box, np.ndarray, np.ndarray] | None:
        """The latest change still applied (click, redo or reset): (box, its labels before, after); None if none."""
        if not self._undo:
            return None
        change = self._undo[-1]
        return change.box, change.before, change.after

    @property
    def labels_image(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.labels)
        image.CopyInformation(self.ct)
        return image

    # -- internals ----------------------------------------------------------------------------------

    def _apply(self, box: Box, proposal: np.ndarray, clicks_before, clicks_after=None) -> Box:
        before = self.labels[box].copy()
        after = proposal.copy()
        L.keep_locked(before, after, self.locked_labels)
        self.labels[box] = after
        clicks_after = tuple(self.clicks) if clicks_after is None else tuple(clicks_after)
        self.clicks = list(clicks_after)
        self._undo.append(_Change(box, before, after, tuple(clicks_before), clicks_after))
        self._redo.clear()
        return box

    def _refine_around(self, click: Click) -> tuple[Box, np.ndarray]:
        """Run the network on growing crops around ``click`` until the clicked lesion fits inside, then merge.

        Every crop is one network window of at most the training patch size: the largest crop is seen at a
        coarser spacing (144 mm at 2.25 mm), so a forward pass costs at most one 64^3 window whatever the
        lesion's size. A click on a mass already labelled starts at the crop that holds it, so it usually
        needs one pass; only a positive click grows the crop, centred on the lesion the first one found.
        """
        centre, first = self._first_crop(click)
        for extent in self._extents[first:]:
            start, stop = self._crop_box(centre, extent)
            image, guidance, grid = self._network_input(start, stop)
            probabilities = self._predict_crop(image, guidance, grid)
            seen = decide_labels(probabilities)
            lesion = _component_at(seen, _voxel_of(grid, click.point_lps))
            if not click.positive or lesion is None or not _touches_border(lesion) or extent == self._extents[-1]:
                break
            # Centre the next crop on the lesion (the click stays inside: it lies within the lesion's box).
            hit = np.argwhere(lesion)
            middle = grid.TransformContinuousIndexToPhysicalPoint(((hit.min(0) + hit.max(0)) / 2.0)[::-1].tolist())
            centre = _voxel_of(self._grid, middle)
        return self._to_ct(grid, probabilities, seen, click)

    def _first_crop(self, click: Click) -> tuple[np.ndarray, int]:
        """Centre ((k, j, i) of the 1.5 mm grid) and index into the encoding's CROP_EXTENTS of a click's first crop.

        On a mass of the current labels: the smallest crop holding that mass with a margin, centred on
        it. Elsewhere (a missed lesion): the smallest crop, centred on the click.
        """
        centre = _voxel_of(self._grid, click.point_lps)
        voxel = _voxel_of(self.ct, click.point_lps)
        if self.labels[tuple(np.clip(voxel, 0, np.array(self.labels.shape) - 1))] not in L.LESION_LABELS:
            return centre, 0
        spacing = np.array(self.ct.GetSpacing()[::-1])
        extents = self._extents
        reach = np.ceil(extents[-1] * self._grid.GetSpacing()[0] / 2 / spacing).astype(int)
        low = np.clip(voxel - reach, 0, None)
        lesion = _component_at(self.labels[tuple(slice(int(a), int(b)) for a, b in zip(low, voxel + reach + 1))], voxel - low)
        hit = np.argwhere(lesion)
        first, last = hit.min(0) + low, hit.max(0) + low
        size_mm = float(np.max((last - first + 1) * spacing)) + 2 * CROP_MARGIN_MM
        fits = [n for n, extent in enumerate(extents) if extent * self._grid.GetSpacing()[0] >= size_mm]
        middle = self.ct.TransformContinuousIndexToPhysicalPoint(((first + last) / 2.0)[::-1].tolist())
        return _voxel_of(self._grid, middle), (fits[0] if fits else len(extents) - 1)

    def _crop_box(self, centre: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        shape = np.array(self._image.shape)
        extent = np.minimum(size, shape)
        start = np.clip(centre - extent // 2, 0, shape - extent)
        return start, start + extent

    def _network_input(self, start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
        """CT and click guidance (channels, k, j, i) in box [start, stop) of the cached grid, on a grid of at most
        one network window, and that grid. Guidance holds the session's clicks that lie inside the box and,
        for a fine network with the memory channel, the current mass mask there."""
        _, config = self.segmenter.networks["fine"]
        box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
        guidance = np.zeros((config.in_channels - 1, *(stop - start)), np.float32)
        for click in self.clicks:
            voxel = _voxel_of(self._grid, click.point_lps)
            if np.all(voxel >= start) and np.all(voxel < stop):
                low, mask = self._guidance_mask(click)
                inside = [slice(max(a, l), min(b, l + n)) for a, b, l, n in zip(start, stop, low, mask.shape)]
                target = guidance[(0 if click.positive else 1, *(slice(i.start - a, i.stop - a) for i, a in zip(inside, start)))]
                np.maximum(target, mask[tuple(slice(i.start - l, i.stop - l) for i, l in zip(inside, low))], out=target)
        crop = _box_image(self._image[box], self._grid, start)
        if config.in_channels > MEMORY_CHANNEL:
            guidance[MEMORY_CHANNEL - 1] = self._current_masses(crop)
        factor = max(1.0, float(np.max((stop - start) / np.array(config.patch_size))))
        if factor == 1.0:
            return sitk.GetArrayFromImage(crop), guidance, crop
        grid = grid_for_region(crop, (0, 0, 0), crop.GetSize(), self._grid.GetSpacing()[0] * factor)
        image = sitk.GetArrayFromImage(resample_onto(crop, grid, sitk.sitkLinear, AIR))
        masks = _box_image(np.ascontiguousarray(np.moveaxis(guidance, 0, -1)), self._grid, start, vector=True)
        guidance = np.moveaxis(sitk.GetArrayFromImage(sitk.Resample(masks, grid, sitk.Transform(), sitk.sitkLinear, 0.0)), -1, 0)
        return image, np.ascontiguousarray(guidance), grid

    def _current_masses(self, grid: sitk.Image) -> np.ndarray:
        """The current labels' masses (tumor or cyst) on ``grid``, 0/1 float32 (k, j, i): the memory channel."""
        corners = [grid.TransformContinuousIndexToPhysicalPoint(corner) for corner in _box_corners(np.zeros(3), np.array(grid.GetSize()) - 1)]
        low, high = (corner[::-1] for corner in index_box_covering(self.ct, corners, 1))  # (k, j, i)
        masses = np.isin(self.labels[tuple(slice(int(a), int(b)) for a, b in zip(low, high))], L.LESION_LABELS)
        region = _box_image(masses.astype(np.uint8), self.ct, low)
        return sitk.GetArrayFromImage(resample_onto(region, grid, sitk.sitkNearestNeighbor, 0, sitk.sitkFloat32))

    def _guidance_mask(self, click: Click) -> tuple[np.ndarray, np.ndarray]:
        """A click's guidance mask on the cached grid, computed once: (its box's start (k, j, i), values).

        Encoded on the sub-image that holds the mask's reach (``guidance.reach_voxels``): the same mask as
        on the whole grid, so later clicks only paste it into their crops.
        """
        from .guidance import encode_clicks, reach_voxels

        if click not in self._masks:
            spacing = self._grid.GetSpacing()[::-1]
            low, sub, centre = self._around(click, reach_voxels(spacing, self.guidance) + 2)
            masks = encode_clicks(sub, [(centre, click.positive)], spacing, self.guidance)
            self._masks[click] = (low, masks[0 if click.positive else 1])
        return self._masks[click]

    def _reach(self, click: Click) -> tuple[np.ndarray, np.ndarray]:
        """Where a positive lesion click may add mass, on the cached grid, computed once: (its box's start
        (k, j, i), mask): the clicked tissue (``guidance.click_region``: connected voxels of intensities
        consistent with the click, within the adaptive mask's radius).

        Told "tumor here", the network often grows a mass far into the kidney around the click. On 14
        training-split synthetic cases (Gaussian clicks) bounding what a positive click adds to this region
        raised tumor Dice after 1 / 3 / 10 clicks from 0.615 / 0.752 / 0.862 to 0.653 / 0.773 / 0.864 and
        cut NoC@85 / 90 from 9.5 / 13.3 to 7.7 / 11.3; widening the region by 1 or 2 voxels did worse.
        """
        from .guidance import click_region, reach_voxels

        if click not in self._reaches:
            if self.guidance == "adaptive":  # the click's guidance mask is that same adaptive mask: no second encoding
                low, mask = self._guidance_mask(click)
                self._reaches[click] = (low, mask > 0)
            else:
                spacing = self._grid.GetSpacing()[::-1]
                low, sub, centre = self._around(click, reach_voxels(spacing) + 2)
                self._reaches[click] = (low, click_region(sub, centre, spacing))
        return self._reaches[click]

    def _around(self, click: Click, half: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The cached image within ``half`` voxels (k, j, i) of a click: (the box's start, the sub-image, the click in it)."""
        centre = np.clip(_voxel_of(self._grid, click.point_lps), 0, np.array(self._image.shape) - 1)
        low = np.clip(centre - half, 0, None)
        return low, self._image[tuple(slice(int(a), int(b)) for a, b in zip(low, centre + half + 1))], centre - low

    def _within_reach(self, box: Box, kji: np.ndarray, click: Click) -> np.ndarray:
        """Which of the CT voxels ``kji`` (offsets in ``box``) lie in ``click``'s reach (``_reach``)."""
        low, reach = self._reach(click)
        points = index_to_physical(self.ct, (kji + [s.start for s in box])[:, ::-1].astype(float))
        grid_kji = np.round(physical_to_index(self._grid, points)[:, ::-1]).astype(int) - low
        inside = np.all((grid_kji >= 0) & (grid_kji < reach.shape), axis=1)
        within = np.zeros(len(kji), bool)
        within[inside] = reach[tuple(grid_kji[inside].T)]
        return within

    def _predict_crop(self, image: np.ndarray, guidance: np.ndarray, grid: sitk.Image) -> np.ndarray:
        """Fine-network probabilities (4, k, j, i) on a network crop with its click guidance."""
        return self.segmenter.predict("fine", image, guidance)

    def _to_ct(self, grid: sitk.Image, probabilities: np.ndarray, seen: np.ndarray, click: Click) -> tuple[Box, np.ndarray]:
        """The CT box where ``click`` acts, and its labels after the click (``seen``: the labels decided on ``grid``).

        The click acts on one structure (``_merge_clicked_structure``): the box covers it as the network
        now sees it and as it is labelled now, within the CT voxels strictly inside the crop, so only
        voxels that can change are resampled. There the network's probabilities are resampled onto the
        CT, decided into labels (``inference.decide_labels``; after a negative click with the stricter
        ``NEGATIVE_MASS_SHARE``) and merged into the current labels; a positive lesion click adds mass
        only within its reach (``_reach``).
        """
        family = _family(click.label)
        corners = [grid.TransformContinuousIndexToPhysicalPoint(corner) for corner in _box_corners(np.zeros(3), np.array(grid.GetSize()) - 1)]
        inside = physical_to_index(self.ct, np.array(corners))
        crop_low = np.clip(np.ceil(inside.min(0)), 0, None).astype(int)  # (i, j, k)
        crop_high = np.minimum(np.floor(inside.max(0)) + 1, self.ct.GetSize()).astype(int)
        low, high = np.array(self.ct.GetSize()), np.zeros(3, int)
        structure = _component_at(seen, _voxel_of(grid, click.point_lps), family)
        if structure is not None:
            hit = np.argwhere(structure)[:, ::-1]  # (i, j, k) of the network grid
            ends = [grid.TransformContinuousIndexToPhysicalPoint(corner) for corner in _box_corners(hit.min(0) - 1, hit.max(0) + 1)]
            low, high = index_box_covering(self.ct, ends, 1)
        crop = tuple(slice(int(a), int(b)) for a, b in zip(crop_low[::-1], crop_high[::-1]))
        labelled = _component_at(self.labels[crop], _voxel_of(self.ct, click.point_lps) - crop_low[::-1], family)
        if labelled is not None:
            hit = np.argwhere(labelled)[:, ::-1] + crop_low
            low, high = np.minimum(low, hit.min(0) - 1), np.maximum(high, hit.max(0) + 2)
        low, high = np.maximum(low, crop_low), np.minimum(high, crop_high)
        if np.any(high <= low):  # the click is on no structure of its kind: nothing changes
            voxel = np.clip(_voxel_of(self.ct, click.point_lps)[::-1], crop_low, crop_high - 1)
            low, high = voxel, voxel + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(low[::-1], high[::-1]))
        target = sitk.RegionOfInterest(self.ct, [int(v) for v in high - low], [int(v) for v in low])
        # Foreground channels in one vector resampling; background is the rest (softmax sums to 1).
        foreground = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(probabilities[1:], 0, -1)), isVector=True)
        foreground.CopyInformation(grid)
        resampled = sitk.GetArrayFromImage(sitk.Resample(foreground, target, sitk.Transform(), sitk.sitkLinear, 0.0))
        kidney, tumor, cyst = (resampled[..., c] for c in range(3))
        share = MASS_SHARE if click.positive else NEGATIVE_MASS_SHARE
        proposal = decide_labels((1.0 - (kidney + tumor + cyst), kidney, tumor, cyst), share)
        click_kji = _voxel_of(target, click.point_lps)
        before = self.labels[box]
        merged = _merge_clicked_structure(before, proposal, click_kji, family, click.positive)
        if click.positive and click.label in L.LESION_LABELS:
            added = np.argwhere(np.isin(merged, L.LESION_LABELS) & ~np.isin(before, L.LESION_LABELS))
            if len(added):  # a relabelling click adds nothing: no reach to compute
                beyond = tuple(added[~self._within_reach(box, added, click)].T)
                merged[beyond] = before[beyond]
            lesion = _component_at(merged, click_kji)
            if lesion is not None:
                other = L.CYST if click.label == L.TUMOR else L.TUMOR
                merged[lesion] = click.label  # the class asked for
                merged[self._named_other_class(box, lesion, click, click_kji, other)] = other
        return box, merged

    def _named_other_class(self, box: Box, mass: np.ndarray, click: Click, click_kji, other: int) -> np.ndarray:
        """The voxels of ``mass`` (a mask of ``box``) to give the ``other`` lesion class than ``click``'s (at
        ``click_kji`` in ``box``): those nearer to tissue that positive clicks named ``other`` for (their reaches,
        ``_reach``) than to tissue named ``click``'s class (the click itself included); empty until a click has
        named ``other``.

        A class click gives the whole mass under it its class (a cyst called tumor is one cyst click), but a
        mass holding a tumor beside a cyst is split by one click of each class, where giving the whole mass
        each click's class made the two clicks undo each other.
        """
        from scipy import ndimage

        naming = [earlier for earlier in self.clicks if earlier.positive and earlier.label in (click.label, other)]
        if all(earlier.label != other for earlier in naming):  # the usual click: no reach to test
            return np.zeros_like(mass)
        kji = np.argwhere(mass)
        named = {label: np.zeros(len(kji), bool) for label in (click.label, other)}
        for earlier in naming:
            named[earlier.label] |= self._within_reach(box, kji, earlier)
        if not named[other].any():
            return np.zeros_like(mass)
        named[click.label] |= np.all(kji == click_kji, axis=1)
        spacing = self.ct.GetSpacing()[::-1]

        def distance(to: np.ndarray) -> np.ndarray:
            outside = np.ones(mass.shape, bool)
            outside[tuple(kji[to].T)] = False
            return ndimage.distance_transform_edt(outside, sampling=spacing)[tuple(kji.T)]

        split = np.zeros_like(mass)
        split[tuple(kji[distance(named[other]) < distance(named[click.label])].T)] = True
        return split


AIR = float(normalize_ct(np.array(-1024.0)))  # the normalised value of air, outside the CT


def _voxel_of(image: sitk.Image, point_lps) -> np.ndarray:
    """The (k, j, i) voxel of ``image`` nearest to an LPS point (may lie outside the image)."""
    return np.round(physical_to_index(image, np.array(point_lps))[0][::-1]).astype(int)


def _box_image(array: np.ndarray, reference: sitk.Image, start: np.ndarray, vector: bool = False) -> sitk.Image:
    """``array``, the box of ``reference``'s voxels starting at ``start`` (k, j, i), as an image in place."""
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    image.SetOrigin(reference.TransformIndexToPhysicalPoint([int(v) for v in start[::-1]]))
    return image


def _family(label: int) -> tuple[int, ...]:
    """The labels a click of class ``label`` acts on: a tumor or cyst click on masses, a kidney click on the kidney with its masses."""
    return L.LESION_LABELS if label in L.LESION_LABELS else (L.KIDNEY, *L.LESION_LABELS)


def _component_at(labels: np.ndarray, kji, family=L.LESION_LABELS) -> np.ndarray | None:
    """The mask of the connected component of ``family`` labels under voxel ``kji``, or None if there is none."""
    from scipy import ndimage

    index = tuple(np.clip(kji, 0, np.array(labels.shape) - 1))
    if labels[index] not in family:
        return None
    components, _ = ndimage.label(np.isin(labels, family))
    return components == components[index]


def _box_corners(low, high) -> list[tuple[float, ...]]:
    """The 8 corners of the index box [low, high] (inclusive, any order of axes)."""
    return [tuple(float(h if c else l) for l, h, c in zip(low, high, corner)) for corner in np.ndindex(2, 2, 2)]


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any())


def _merge_clicked_structure(before: np.ndarray, proposal: np.ndarray, click_kji, family, positive: bool) -> np.ndarray:
    """Take the proposal only on the structure the click is about; keep every other voxel as it was.

    The structure is the connected component, under the click, of the ``family`` labels (``_family``)
    of both the current labels and the proposal: a tumor or cyst click acts on the one mass it touches,
    as it was and as the network now sees it, so it cannot erode or leak the kidney or change another
    lesion in the crop. Nothing changes if the click lies on neither. A negative click only removes:
    voxels may leave the structure, none join it or change class (the network, told "not tumor here",
    sometimes answers "cyst" or grows the mass elsewhere). When the network drops (to no ``family`` label)
    at least ``NEGATIVE_ERASE_SHARE`` of the clicked class's part of the labelled structure (the label under
    the click: told "not tumor" on a false mass half tumor, half cyst, it drops the tumor and keeps the
    cyst), the structure is a false one and all of it goes, every class (a mass becomes kidney, a kidney
    background), so one click erases a false lesion the network only thins.
    """
    from scipy import ndimage

    components, _ = ndimage.label(np.isin(before, family) | np.isin(proposal, family))
    index = tuple(np.clip(click_kji, 0, np.array(before.shape) - 1))
    merged = before.copy()
    if components[index]:
        region = components == components[index]
        if not positive:
            region &= np.isin(before, family) & ~np.isin(proposal, family)
        merged[region] = proposal[region]
    if positive:
        return merged
    labelled = _component_at(before, click_kji, family)
    if labelled is None:
        return merged
    clicked = labelled & (before == before[index])
    if (clicked & ~np.isin(proposal, family)).sum() >= NEGATIVE_ERASE_SHARE * clicked.sum():
        outside = L.KIDNEY if family == L.LESION_LABELS else L.BACKGROUND
        merged[labelled] = np.where(np.isin(proposal[labelled], family), outside, proposal[labelled])
    return merged


def click_refiner(session: RefinementSession):
    """Adapt a session to ``evaluation.click_protocol``'s ``refine(clicks) -> labels`` callable.

    Clicks arrive as ((k, j, i) voxel of the CT, positive, class) with the whole history each time; only the
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
        for kji, positive, label in clicks[len(applied):]:
            session.add_click(session.ct.TransformIndexToPhysicalPoint([int(v) for v in reversed(kji)]), positive, label)
        applied = clicks
        return session.labels.copy()

    return refine
