"""Choosing the compute device (CUDA, Apple MPS or CPU) and saying clearly why a GPU is not used."""

from __future__ import annotations

from pathlib import Path

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto"):
    """Return the ``torch.device`` for ``name``; "auto" prefers CUDA, then Apple MPS, then CPU.

    Asking for a GPU that is not usable raises ``RenalSegError`` with the reason (for example a
    CPU-only torch build) instead of silently running on the CPU.
    """
    import torch

    from .errors import RenalSegError

    if name not in DEVICE_CHOICES:
        raise RenalSegError(f"unknown device {name!r} (choose from {', '.join(DEVICE_CHOICES)})")
    cuda_ok = torch.cuda.is_available()
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda_ok else "mps" if mps_ok else "cpu")
    if name == "cuda" and not cuda_ok:
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, but no GPU is visible"
        raise RenalSegError(f"--device cuda: no usable CUDA GPU (torch {torch.__version__} is {build})")
    if name == "mps" and not mps_ok:
        raise RenalSegError("--device mps: Apple MPS is not available on this machine")
    return torch.device(name)


def bf16_supported() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX-512 BF16 or AMX); else autocast would be slower."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX512", "AMX"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return capability == "AMX"
    return "avx512_bf16" in flags or "amx_bf16" in flags


def describe_devices() -> dict[str, str]:
    """A short report of torch, its build and the devices it can use (for ``renalseg info``)."""
    import torch

    report = {
        "torch": torch.__version__,
        "torch CUDA build": torch.version.cuda or "none (CPU-only build)",
        "CUDA available": str(torch.cuda.is_available()),
        "CPU threads": str(torch.get_num_threads()),
        "auto device": str(resolve_device("auto")),
        "CPU inference": "bf16 autocast" if bf16_supported() else "float32, networks run by ONNX Runtime",
    }
    if torch.cuda.is_available():
        report["GPU"] = torch.cuda.get_device_name(0)
    return report
