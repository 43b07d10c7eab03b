"""Stand-ins for the engine used by the module-logic tests (a fixed-label engine, a ball-painting session)."""

from __future__ import annotations

import numpy as np
from RenalSegInteractiveLib.selftest import BallSession

class FakeEngine:
    """Stand-in for ``RenalSegLib.inference.auto_segment``: returns fixed labels (with ``lesion_probability``, an
    ``AutoSegmentation`` of both), reports progress, honours cancel."""

    def __init__(self, kits_labels, lesion_probability=None):
        self.kits_labels = kits_labels
        self.lesion_probability = lesion_probability
        self.calls = []

    def __call__(self, ct, *, device="auto", fast=False, flip_tta=False, min_lesion_probability=0.0, model_path=None, progress=None,
                 cancel=None):
        import SimpleITK as sitk
        from RenalSegLib.inference import Cancelled

        self.calls.append(dict(size=ct.GetSize(), origin=ct.GetOrigin(), direction=ct.GetDirection(), device=device, fast=fast, flip_tta=flip_tta,
                               min_lesion_probability=min_lesion_probability))
        for step in range(3):
            if cancel is not None and cancel.is_set():
                raise Cancelled("segmentation cancelled")
            if progress:
                progress(step / 3, f"step {step + 1}")
        out = sitk.Image(self.kits_labels)
        out.CopyInformation(ct)
        if self.lesion_probability is None:
            return out
        from RenalSegLib.inference import AutoSegmentation

        probability = sitk.Image(self.lesion_probability)
        probability.CopyInformation(ct)
        return AutoSegmentation(out, probability)


def ras_bounds(mask: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """(xmin, xmax, ymin, ymax, zmin, zmax) in RAS of a (k, j, i) mask's voxel centres."""
    kji = np.argwhere(mask)
    ras = kji[:, ::-1] @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    return np.ravel(np.column_stack([ras.min(0), ras.max(0)]))


class FakeSession(BallSession):
    """The self-test's ball-painting session, counting how many sessions were built (preprocessing runs)."""

    instances = 0

    def __init__(self, *args, **kwargs):
        FakeSession.instances += 1
        super().__init__(*args, **kwargs)
