"""Networks: channel contract, shapes, model-file round trip, and a tiny model that can learn a case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from RenalSegLib import RenalSegError
from RenalSegLib import network as N
from RenalSegLib.training import FINE_CLASS_WEIGHTS, STAGES

torch.set_num_threads(2)


@pytest.mark.parametrize("architecture", ["dynunet", "vnet_attention"])
def test_fine_network_maps_three_channels_to_four_classes(architecture: str) -> None:
    config = N.NetworkConfig(architecture=architecture, filters=(4, 8, 16, 32))
    model = N.build_network(config).eval()
    x = torch.zeros(1, N.FINE_IN_CHANNELS, 32, 48, 40)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 4, 32, 48, 40)


def test_stage_configs_follow_the_channel_contract() -> None:
    assert STAGES["fine"].in_channels == 3 and STAGES["fine"].out_channels == 4
    assert STAGES["coarse"].in_channels == 1 and STAGES["coarse"].out_channels == 2
    assert STAGES["coarse"].spacing_mm > STAGES["fine"].spacing_mm


def test_model_file_round_trip_restores_weights_and_card(tmp_path: Path) -> None:
    config = N.NetworkConfig(filters=(4, 8, 16))
    model = N.build_network(config)
    path = N.save_model(tmp_path / "m.pt", {"fine": (model, config)}, {"training_data": "phantom"})
    loaded, loaded_config = N.load_model(path, onnx=False)["fine"]  # a module, whose weights can be compared
    assert loaded_config == config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        # Stored in half precision: equal to fp16 rounding.
        torch.testing.assert_close(b, a.half().float() if a.is_floating_point() else a, msg=name)
    card = json.loads(N.model_card_path(path).read_text())
    assert card["training_data"] == "phantom" and card["sha256"] == N.sha256(path)
    assert card["networks"]["fine"]["parameters"] == N.count_parameters(model)


def test_loading_a_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(RenalSegError, match="not a RenalSeg model file"):
        N.load_model(bad)
    with pytest.raises(RenalSegError, match="not found"):
        N.load_model(tmp_path / "missing.pt")


def test_tiny_network_overfits_one_phantom_case() -> None:
    """A small DynUNet learns kidney, tumor and cyst of one phantom to Dice > 0.9 in ~150 steps."""
    import phantoms
    import SimpleITK as sitk

    from RenalSegLib.preprocess import normalize_ct

    torch.manual_seed(0)
    # Anatomy grown by 1.3 so that the cyst holds 57 voxels (28 at 1.0 fell short of 0.9 on some CPUs and seeds).
    p = phantoms.kidney_phantom(size=(48, 48, 32), spacing=(4.0, 4.0, 5.0), noise_hu=15, scale=1.3)
    image = torch.from_numpy(normalize_ct(sitk.GetArrayFromImage(p.ct)))[None, None]
    x = torch.cat([image, torch.zeros(1, 2, *image.shape[2:])], 1)
    y = torch.from_numpy(sitk.GetArrayFromImage(p.labels).astype(np.int64))[None, None]
    from monai.losses import DiceCELoss

    model = N.build_network(N.NetworkConfig(filters=(8, 16, 32, 64)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, weight=torch.tensor(FINE_CLASS_WEIGHTS))  # the fine stage's lesion weights
    for _ in range(150):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        prediction = model(x).argmax(1)[0].numpy()
    reference = y[0, 0].numpy()
    for label in (1, 2, 3):
        p_, r_ = prediction == label, reference == label
        assert 2 * (p_ & r_).sum() / (p_.sum() + r_.sum()) > 0.9, f"label {label}"


def test_onnx_cpu_network_computes_what_the_module_does_at_any_input_size_and_is_exported_once(tmp_path: Path, monkeypatch) -> None:
    """The ONNX Runtime network used for float32 CPU inference: exported on a small input, it gives the module's
    outputs for other sizes and batches, is cached by its weights (an export, not a cached load, is announced),
    and load_model uses it on CPUs without native bf16 (or when asked)."""
    from RenalSegLib import device, onnx_cpu

    monkeypatch.setenv("RENALSEG_CACHE", str(tmp_path / "cache"))
    config = N.NetworkConfig(filters=(8, 16, 32, 64))
    module = N.build_network(config).eval()
    notices = []
    network = onnx_cpu.for_cpu(module, config, notices.append)
    assert isinstance(network, onnx_cpu.OnnxNetwork) and network.path.parent == tmp_path / "cache"
    assert len(notices) == 1 and "once" in notices[0]
    for shape in ((1, 3, 32, 32, 32), (2, 3, 48, 32, 64)):
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(network(x), module(x), atol=1e-3, rtol=1e-3)
    exports, export = [], onnx_cpu.export
    monkeypatch.setattr(onnx_cpu, "export", lambda *args: exports.append(args) or export(*args))
    assert onnx_cpu.for_cpu(module, config, notices.append).path == network.path and not exports  # the cached export is reused
    assert len(notices) == 1
    path = N.save_model(tmp_path / "m.pt", {"fine": (module, config)}, card={})
    for native_bf16, onnx in ((False, True), (True, False)):
        monkeypatch.setattr(device, "bf16_supported", lambda native_bf16=native_bf16: native_bf16)
        loaded, loaded_config = N.load_model(path, notify=notices.append)["fine"]
        assert isinstance(loaded, onnx_cpu.OnnxNetwork) is onnx and loaded_config == config
    assert isinstance(N.load_model(path, onnx=False)["fine"][0], torch.nn.Module)
    assert len(exports) == 1 and len(notices) == 2  # half-precision weights in the file: another network, another export

    def failing_export(*args):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(onnx_cpu, "export", failing_export)  # an export that fails: the module itself
    other = N.build_network(config).eval()
    assert onnx_cpu.for_cpu(other, config) is other
