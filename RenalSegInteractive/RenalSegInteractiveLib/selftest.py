"""A stand-in refinement session for the self-test and the headless tests: each click paints a ball on a crop."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from RenalSegLib import volume
from RenalSegLib.errors import RenalSegError
from RenalSegLib.labels import keep_locked


class BallSession:
    """Stand-in for ``RenalSegLib.interactive.RefinementSession``: a click paints a ball on a crop, with undo/redo/reset."""

    RADIUS_MM = 8.0

    def __init__(self, ct, labels, *, device="auto", model_path=None, locked_labels=()):
        self.ct = ct
        self.initial = sitk.GetArrayFromImage(labels).copy()
        self.labels = self.initial.copy()
        self.done, self.undone = [], []  # (box, labels before, labels after)
        self.clicks_lps = []
        self.locked_labels = set(locked_labels)

    def add_click(self, point_lps, positive=True, label=2):
        index = np.round(volume.physical_to_index(self.ct, point_lps)[0]).astype(int)  # (i, j, k)
        size = np.array(self.ct.GetSize())
        if np.any(index < 0) or np.any(index >= size):
            raise RenalSegError("click outside the image")
        self.clicks_lps.append(np.asarray(point_lps, float))
        half = np.ceil(self.RADIUS_MM / np.array(self.ct.GetSpacing())).astype(int) + 1
        lo, hi = np.maximum(index - half, 0), np.minimum(index + half + 1, size)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1]))
        kji = np.stack(np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij"), -1).reshape(-1, 3)
        grid = volume.index_to_physical(self.ct, kji[:, ::-1]).reshape(*(s.stop - s.start for s in box), 3)
        ball = np.linalg.norm(grid - np.asarray(point_lps, float), axis=-1) <= self.RADIUS_MM
        before = self.labels[box].copy()
        after = before.copy()
        after[ball] = label if positive else 0
        keep_locked(before, after, self.locked_labels)
        self.labels[box] = after
        self.done.append((box, before, after))
        self.undone.clear()
        return box

    @property
    def last_change(self):
        return self.done[-1] if self.done else None

    def undo(self):
        if not self.done:
            return None
        box, before, after = self.done.pop()
        self.labels[box] = before
        self.undone.append((box, before, after))
        return box

    def redo(self):
        if not self.undone:
            return None
        box, before, after = self.undone.pop()
        self.labels[box] = after
        self.done.append((box, before, after))
        return box

    def reset(self):
        changed = np.argwhere(self.labels != self.initial)
        if len(changed) == 0:
            return None
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(changed.min(0), changed.max(0)))
        self.labels = self.initial.copy()
        self.done.clear()
        self.undone.clear()
        return box
