"""Fixtures for module-logic tests on slicer-core: a real MRML scene, converter rules, a phantom volume, fake engines."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for module_dir in (ROOT / "RenalSeg", ROOT / "RenalSegInteractive"):  # what Slicer puts on sys.path for each module
    if str(module_dir) not in sys.path:
        sys.path.insert(0, str(module_dir))

try:
    import slicer
except ImportError:  # without slicer-core (Slicer's MRML for plain Python) these tests cannot run: skip them all
    slicer = None
    collect_ignore_glob = ["test_*.py"]

import phantoms  # noqa: E402  (Testing/ is on sys.path through Testing/conftest.py)

SMALL = dict(size=(48, 48, 32), spacing=(4.0, 4.0, 5.0), scale=0.5)  # a small phantom grid: fast tests

_RULES_REGISTERED = False


def register_segmentation_converters() -> None:
    """Register the representation converters, as Slicer's Segmentations module does at start-up."""
    global _RULES_REGISTERED
    if _RULES_REGISTERED:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule, slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
                 slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule, slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule):
        factory.RegisterConverterRule(rule())
    _RULES_REGISTERED = True


@pytest.fixture
def scene(monkeypatch):
    """A fresh MRML scene, also installed as ``slicer.mrmlScene`` (as in the application) for slicer.util helpers."""
    register_segmentation_converters()
    mrml_scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", mrml_scene, raising=False)
    yield mrml_scene
    mrml_scene.Clear(True)


@pytest.fixture
def small_phantom():
    """A 48x48x32 phantom CT (4x4x5 mm) with its exact KiTS labels."""
    return phantoms.kidney_phantom(**SMALL)


@pytest.fixture
def oblique_phantom():
    """The same anatomy on an oblique, left-right flipped grid with an off-centre origin."""
    return phantoms.kidney_phantom(**SMALL, direction=phantoms.oblique_direction(25.0, flip_lr=True), origin=(12.0, -30.0, 40.0))
