"""First-run Python dependencies in Slicer: what is missing, and installing it after the user agrees.

torch goes through the PyTorch extension's ``PyTorchUtils`` (it chooses the CUDA/CPU build for the
machine); the rest of ``Resources/requirements.txt`` through ``slicer.pydeps.pip_ensure`` (Slicer >= 5.11,
``slicer.packaging`` on some builds), falling back to ``slicer.util.pip_install``. Installs run on the
main thread, as Slicer requires, and never without the user's consent.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.requirements import Requirement

REQUIREMENTS_PATH = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
TORCH_REQUIREMENT = "torch>=2.2"
DOWNLOAD_SIZES = "PyTorch about 250 MB (CPU) or 2.5 GB (NVIDIA GPU build), MONAI, ONNX Runtime and helpers about 100 MB"


def read_requirements(path: str | Path = REQUIREMENTS_PATH) -> list[Requirement]:
    """The requirement lines of a requirements file (comments and blank lines skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]


def unmet(requirements: list[Requirement], version=importlib.metadata.version) -> list[Requirement]:
    """Requirements that are not installed, or installed in a version outside the specifier."""
    missing = []
    for requirement in requirements:
        try:
            installed = version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            missing.append(requirement)
    return missing


def missing_packages(path: str | Path = REQUIREMENTS_PATH, version=importlib.metadata.version) -> list[str]:
    """Names of what must be installed before RenalSeg can run (torch first), empty when ready."""
    needed = unmet([Requirement(TORCH_REQUIREMENT), *read_requirements(path)], version)
    return [str(requirement) for requirement in needed]


def install_message(missing: list[str]) -> str:
    return (f"RenalSeg needs these Python packages: {', '.join(missing)}.\n\n"
            f"Download size: {DOWNLOAD_SIZES}. Installation takes a few minutes; Slicer stays busy meanwhile.\n"
            "The model weights ship with the extension, so nothing else is downloaded. Install now?")


def install(path: str | Path = REQUIREMENTS_PATH, ask=None) -> bool:
    """Install what is missing inside Slicer (main thread). ``ask(message) -> bool`` gets the user's consent.

    Returns True when everything is installed afterwards.
    """
    import slicer

    missing = missing_packages(path)
    if not missing:
        return True
    ask = ask or (lambda message: slicer.util.confirmOkCancelDisplay(message, "RenalSeg: install Python packages"))
    if not ask(install_message(missing)):
        return False
    if any(name.startswith("torch") for name in missing):
        _install_torch()
    requirements = read_requirements(path)
    pydeps = getattr(slicer, "pydeps", None) or getattr(slicer, "packaging", None)
    if pydeps is not None and hasattr(pydeps, "pip_ensure"):
        pydeps.pip_ensure(requirements, requester="RenalSeg")
    else:
        slicer.util.pip_install(" ".join(f'"{r}"' for r in unmet(requirements)))
    return not missing_packages(path)


def _install_torch() -> None:
    try:
        import PyTorchUtils
    except ImportError:  # PyTorch extension absent: plain pip gets the default (CPU or CUDA, by platform) build
        import slicer

        slicer.util.pip_install(f'"{TORCH_REQUIREMENT}"')
        return
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if not logic.torchInstalled():
        logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT.removeprefix("torch"))
