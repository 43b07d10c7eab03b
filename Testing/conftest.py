"""Shared pytest fixtures: phantoms and the optional ../shared data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTING = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTING))  # `import phantoms` from any test folder

SHARED_DATA = TESTING.parent.parent / "shared" / "data"
KITS_LABELS = SHARED_DATA / "kits23" / "labels"
REAL_CT = SHARED_DATA / "real_ct" / "dicom_series"


@pytest.fixture(scope="session", autouse=True)
def onnx_export_cache(tmp_path_factory):
    """Networks exported for ONNX Runtime (CPUs without bf16) go to one folder per test session, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RENALSEG_CACHE", str(tmp_path_factory.mktemp("onnx_cache")))
        yield


@pytest.fixture
def kits_labels_dir() -> Path:
    if not KITS_LABELS.is_dir():
        pytest.skip(f"KiTS23 label maps not found at {KITS_LABELS} (the ../shared data of the development checkout)")
    return KITS_LABELS


@pytest.fixture
def real_ct_dir() -> Path:
    if not REAL_CT.is_dir():
        pytest.skip(f"real CT DICOM series not found at {REAL_CT} (the ../shared data of the development checkout)")
    return REAL_CT


@pytest.fixture
def phantom():
    import phantoms

    return phantoms.kidney_phantom()


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    """A model file with small untrained networks on the real stage grids: for plumbing and geometry tests."""
    import torch

    from RenalSegLib import network as N
    from RenalSegLib.training import STAGES

    torch.manual_seed(0)
    networks = {}
    for stage in ("coarse", "fine"):
        config = N.NetworkConfig.from_dict({**STAGES[stage].__dict__, "filters": (4, 8, 16, 32, 64)})
        networks[stage] = (N.build_network(config), config)
    return N.save_model(tmp_path_factory.mktemp("model") / "small.pt", networks, {"training_data": "none (untrained)"})
