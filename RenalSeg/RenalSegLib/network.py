"""Network factory, the input-channel contract, and model files (weights + model card).

A RenalSeg model file holds two networks, both built from a plain config dict:
- ``coarse``: finds the kidneys on a low-resolution copy of the CT (input: CT; output: background,
  kidney-and-masses);
- ``fine``: segments each kidney region at high resolution (input: CT, positive guidance, negative
  guidance, and optionally the current mass mask; output: background, kidney, tumor, cyst). Auto mode
  feeds zero guidance (and an empty mask), so the same network serves one-click segmentation and
  click-to-refine.
Weights are stored in half precision (the file stays small) and loaded with ``weights_only=True``.
A JSON model card with the same stem sits beside the weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import RenalSegError

# Input channels of the fine network. A 4-channel fine network also takes the current mask of the masses
# (tumor or cyst) being refined: nnInteractive's interaction memory; 0 in auto mode.
CT_CHANNEL, POSITIVE_CHANNEL, NEGATIVE_CHANNEL, MEMORY_CHANNEL = 0, 1, 2, 3
FINE_IN_CHANNELS = 3
# The bundled weights: Resources/Models of the source tree, or beside RenalSegLib in an installed extension.
MODEL_DIRS = (Path(__file__).resolve().parents[2] / "Resources" / "Models", Path(__file__).resolve().parents[1] / "Resources" / "Models")
DEFAULT_MODEL_NAME = "renalseg_v1.pt"


# "dynunet": nnU-Net-style residual U-Net (the default); "vnet_attention": attention_vnet.AttentionVNet.
ARCHITECTURES = ("dynunet", "vnet_attention")


@dataclass
class NetworkConfig:
    """Everything needed to rebuild a network: architecture, channels and the grid it was trained on."""

    architecture: str = "dynunet"  # one of ARCHITECTURES
    in_channels: int = FINE_IN_CHANNELS
    out_channels: int = 4
    filters: tuple[int, ...] = (16, 32, 64, 128, 256)
    spacing_mm: float = 1.5  # isotropic spacing of the network's input grid
    patch_size: tuple[int, int, int] = (64, 64, 64)  # training patch (k, j, i); inference windows may be larger
    residual: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict) -> "NetworkConfig":
        values = dict(values)
        values["filters"] = tuple(values["filters"])
        values["patch_size"] = tuple(values["patch_size"])
        return cls(**values)


def build_network(config: NetworkConfig):
    """Build the torch module described by ``config`` (MONAI networks)."""
    if config.architecture == "dynunet":
        from monai.networks.nets import DynUNet

        depth = len(config.filters)
        return DynUNet(
            spatial_dims=3,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            kernel_size=[3] * depth,
            strides=[1] + [2] * (depth - 1),
            upsample_kernel_size=[2] * (depth - 1),
            filters=list(config.filters),
            norm_name=("INSTANCE", {"affine": True}),
            act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
            res_block=config.residual,
        )
    if config.architecture == "vnet_attention":
        from .attention_vnet import AttentionVNet

        return AttentionVNet(config.in_channels, config.out_channels, tuple(config.filters))
    raise RenalSegError(f"unknown network architecture {config.architecture!r} (choose from {', '.join(ARCHITECTURES)})")


def minimum_input_multiple(config: NetworkConfig) -> int:
    """Spatial sizes fed to the network must be multiples of this (one halving per level)."""
    return 2 ** (len(config.filters) - 1)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- model files -----------------------------------------------------------------------------------

def save_model(path: str | os.PathLike, networks: dict[str, tuple[Any, NetworkConfig]], card: dict) -> Path:
    """Save named networks (module, config) in half precision, plus the JSON model card beside them."""
    import torch

    from .outputs import atomic_path

    path = Path(path)
    payload = {
        name: {
            "config": config_dict(config),
            # A half-precision copy of the module keeps shared parameters shared (saved once).
            "state_dict": copy.deepcopy(module).to("cpu").half().state_dict(),
        }
        for name, (module, config) in networks.items()
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    card = dict(card)
    card["file"] = path.name
    card["sha256"] = sha256(path)
    card["networks"] = {name: {"config": payload[name]["config"], "parameters": count_parameters(module)} for name, (module, _) in networks.items()}
    with atomic_path(model_card_path(path)) as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return path


def config_dict(config: NetworkConfig) -> dict:
    """A network config as plain JSON-able values (how model files and checkpoints store it)."""
    return _plain(asdict(config))


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def load_model(
    path: str | os.PathLike | None = None, device=None, onnx: bool | None = None, notify: Callable[[str], None] | None = None
) -> dict[str, tuple[Any, NetworkConfig]]:
    """Load every network in a model file, in eval mode, float32, on ``device`` (None: CPU): {name: (network, config)}.

    ``onnx`` (None: on a CPU without native bf16; never on a GPU) runs each network through ONNX Runtime
    (``onnx_cpu.for_cpu``, which calls ``notify(message)`` before a first-time export); otherwise the
    networks stay PyTorch modules, channels-last.
    """
    import torch

    from .device import bf16_supported

    path = Path(path) if path is not None else default_model_path()
    payload = read_weights_file(path)
    on_cpu = device is None or torch.device(device).type == "cpu"
    onnx = on_cpu and (not bf16_supported() if onnx is None else onnx)
    networks = {}
    for name, entry in payload.items():
        config = NetworkConfig.from_dict(entry["config"])
        module = build_network(config)
        module.load_state_dict(float_weights(entry["state_dict"]))
        module.eval()
        if onnx:
            from .onnx_cpu import for_cpu

            networks[name] = (for_cpu(module, config, notify), config)
            continue
        # Channels-last weights make oneDNN use its fast 3D convolutions (a 64^3 fine window on 2 CPU
        # cores: 0.31 -> 0.21 s in bf16, identical output); training uses the same layout.
        networks[name] = (module.to(device, memory_format=torch.channels_last_3d), config)
    return networks


def read_weights_file(path: str | os.PathLike, kind: str = "model file") -> dict:
    """``torch.load`` (weights only) of a RenalSeg model file or training checkpoint, with one-line errors."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise RenalSegError(f"{path}: {kind} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise RenalSegError(f"{path}: not a RenalSeg {kind} ({type(exc).__name__})") from None


def float_weights(state_dict: dict) -> dict:
    """A model file's half-precision weights as float32 (integer buffers unchanged)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


def model_card_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".json")


def read_model_card(model_path: str | os.PathLike) -> dict:
    card = model_card_path(model_path)
    if not card.is_file():
        raise RenalSegError(f"{card}: model card not found")
    return json.loads(card.read_text(encoding="utf-8"))


def default_model_path() -> Path:
    """The bundled model, or the file named by the RENALSEG_MODEL environment variable."""
    override = os.environ.get("RENALSEG_MODEL")
    candidates = [Path(override)] if override else [folder / DEFAULT_MODEL_NAME for folder in MODEL_DIRS]
    path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        raise RenalSegError(f"{path}: model file not found (set RENALSEG_MODEL or reinstall RenalSeg)")
    return path


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
