"""RenalSeg engine: kidney, renal tumor and renal cyst segmentation in CT.

Pure Python (no Slicer, no Qt). Heavy libraries (torch, MONAI, vtk) are imported lazily by the
modules that need them, so ``import RenalSegLib`` stays fast.
"""

__version__ = "0.1.0"

from .errors import RenalSegError  # noqa: F401  (the one exception users see)
