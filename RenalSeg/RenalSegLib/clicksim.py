"""Simulated user clicks: where a user would click next to correct a prediction, for training and evaluation.

The simulated user follows the standard iterative protocol: find the largest connected error region
of the target class (missed voxels or leaked voxels) and click at its centre, the point farthest from
the region's border (maximum of the Euclidean distance transform, in millimetres so anisotropic
voxels are honoured). Border-of-image voxels count as border, so clicks stay inside the data.

The network's guidance knows only where and which sign (``Click``); the evaluation's user also names
the class of each click, as the Slicer module's user does (``UserClick``, ``user_click``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .guidance import Click
from .labels import LESION_LABELS, TUMOR

UserClick = tuple[tuple[int, int, int], bool, int]  # ((k, j, i) voxel index, positive?, class named)

_FACES = ndimage.generate_binary_structure(3, 1)  # error regions: face-connected, as a user sees them in slices
_FULL = ndimage.generate_binary_structure(3, 3)  # lesions: 26-connected, as in evaluation.lesion_detection


def next_click(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Sequence[int] = (TUMOR,),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> Click | None:
    """The next simulated click correcting ``prediction`` towards ``reference`` for the class ``labels``.

    Both maps are KiTS label arrays (k, j, i); the target is the union of ``labels``. The largest
    face-connected error region wins (ties: false negatives first); its centre becomes a positive
    click for a missed region and a negative one for a leak. Returns None when the target class is
    already exact. ``spacing`` is in (k, j, i) order, mm.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} != reference shape {reference.shape}")
    target = np.isin(reference, labels)
    predicted = np.isin(prediction, labels)
    best: tuple[int, np.ndarray, tuple[slice, ...], bool] | None = None
    for errors, positive in ((target & ~predicted, True), (predicted & ~target, False)):
        if not errors.any():
            continue
        components, count = ndimage.label(errors, structure=_FACES)
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        sizes[0] = 0
        largest = int(sizes.argmax())
        if best is None or sizes[largest] > best[0]:
            box = ndimage.find_objects(components)[largest - 1]
            best = (int(sizes[largest]), components[box] == largest, box, positive)
    if best is None:
        return None
    _, region, box, positive = best
    return region_center(region, box, spacing), positive


def user_click(click: Click, reference: np.ndarray, target: Sequence[int] = (TUMOR,)) -> UserClick:
    """``click`` as given by a user who also names a class: the class the reference has under it.

    A positive click names the reference class at its voxel. A negative click on a voxel that the
    reference labels as a mass of another class (a cyst predicted as tumor, for a tumor target)
    becomes a positive click of that class: the user relabels the mass instead of erasing it. Any
    other negative click names the target's first class.
    """
    point, positive = click
    truth = int(reference[point])
    if positive or (truth in LESION_LABELS and truth not in target):
        return point, True, truth
    return point, False, int(target[0])


def missed_lesion_clicks(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    labels: Sequence[int] = LESION_LABELS,
) -> list[UserClick]:
    """One positive click, naming the lesion's class, at the centre of each reference lesion that the
    prediction misses entirely.

    Lesions are the 26-connected components of ``labels`` (tumor and cyst by default) in
    ``reference``; a lesion is missed when no voxel of it is predicted as any of ``labels``.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} != reference shape {reference.shape}")
    lesions, count = ndimage.label(np.isin(reference, labels), structure=_FULL)
    if count == 0:
        return []
    found = np.zeros(count + 1, bool)
    found[np.unique(lesions[np.isin(prediction, labels)])] = True
    clicks = []
    for lesion, box in enumerate(ndimage.find_objects(lesions), start=1):
        if not found[lesion]:
            clicks.append(user_click((region_center(lesions[box] == lesion, box, spacing), True), reference))
    return clicks


def region_center(region: np.ndarray, box: tuple[slice, ...], spacing: Sequence[float]) -> tuple[int, int, int]:
    """The voxel of ``region`` (a mask cut out at ``box``) farthest from its border, as a full-image index.

    The mask is padded with background so that the image border counts as border; ties go to the
    first voxel in (k, j, i) order, so the result is deterministic.
    """
    padded = np.pad(region, 1)
    depth = ndimage.distance_transform_edt(padded, sampling=tuple(float(s) for s in spacing))
    peak = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return tuple(int(p - 1 + b.start) for p, b in zip(peak, box))
