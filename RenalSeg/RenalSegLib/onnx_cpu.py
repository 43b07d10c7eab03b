"""Float32 CPU inference through ONNX Runtime, for CPUs without native bf16.

On such a CPU (2 cores, AVX2) ONNX Runtime runs a 64^3 fine window in 0.31-0.34 s against the PyTorch
module's 0.42 s, as fast as the frozen TorchScript graphs it replaced (deprecated in PyTorch), though
slower on small irregular windows (48x64x48: 0.20 s against 0.15 s; click crops are 64^3). Exporting a network
(``torch.onnx.export``, dynamo exporter) takes about 30 s for the bundled model, so each export is cached
on disk, keyed by the network's weights, config and the torch version: a machine pays it once per model.
The ONNX graph accepts any batch and spatial size the network does. Where ONNX Runtime is missing or the
export fails, the module itself is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where exported networks are kept: $RENALSEG_CACHE, else $XDG_CACHE_HOME/renalseg (~/.cache/renalseg)."""
    if os.environ.get("RENALSEG_CACHE"):
        return Path(os.environ["RENALSEG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "renalseg"


class OnnxNetwork:
    """A network exported to ONNX and run by ONNX Runtime on the CPU; called as the module is (tensor in,
    float32 tensor out)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning, leaving the cores to the numpy/PyTorch work between calls
        # (20 clicks on 2 cores: median 0.44 -> 0.39 s).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x):
        import torch

        values = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: values})[0])


def for_cpu(module, config, notify: Callable[[str], None] | None = None) -> OnnxNetwork | torch.nn.Module:
    """``module`` (a network built from ``config``, in eval mode) as an ``OnnxNetwork``, exported on first use;
    the module itself where ONNX Runtime is missing or the export fails (with a log line). ``notify(message)``
    is called before an export, so a user interface can say why this load takes half a minute."""
    import torch

    try:
        import onnxruntime  # noqa: F401  (present: the runtime this path needs)
    except ImportError:
        log.warning("onnxruntime is not installed: the networks run as PyTorch modules (slower on this CPU)")
        return module
    path = cache_dir() / f"{weights_digest(module, config)}.onnx"
    if not path.is_file():
        if notify is None:
            log.info("exporting the %s network for this CPU (once per model, cached in %s)", config.architecture, path.parent)
        else:  # shown by the caller's progress instead of a log line beside it
            notify(f"preparing the {config.architecture} network for this CPU (once per model, about 30 s)")
        try:
            export(module, config, path)
        except Exception as exc:  # the exporter raises many kinds (torch, onnxscript, onnx); any means "not exported"
            log.warning("network not exported to ONNX (%s): running it as a PyTorch module", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return module
    return OnnxNetwork(path, torch.get_num_threads())


def weights_digest(module, config) -> str:
    """A key for one network's export: its config, its weights and the exporting torch's version."""
    import torch

    from .network import config_dict

    digest = hashlib.sha256(json.dumps([config_dict(config), torch.__version__], sort_keys=True).encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def export(module, config, path: Path) -> Path:
    """Export ``module`` to ONNX at ``path`` (atomically), with dynamic batch and spatial sizes."""
    import torch

    from .network import minimum_input_multiple
    from .outputs import atomic_path

    example = torch.zeros((1, config.in_channels, *(2 * minimum_input_multiple(config),) * len(config.patch_size)))
    sizes = {axis: torch.export.Dim.AUTO for axis in (0, *range(2, example.ndim))}
    quiet = [logging.getLogger(name) for name in ("torch", "torch.__trace", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module.eval(), (example,), dynamo=True, dynamic_shapes=(sizes,), verbose=False)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    with atomic_path(path) as tmp:
        program.save(str(tmp))
    return path
