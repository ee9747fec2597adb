"""`cellzoo export`: the exported TorchScript / ONNX models give the same maps as eager PyTorch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cellzoo.cli import main
from cellzoo.models import build_model
from cellzoo.zoo import register_model
from cellzoo.zoo.export import export_model, read_export_metadata


def _randomise_batchnorm(model):
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            module.weight.data.copy_(1 + torch.randn(module.weight.shape, generator=gen) * 0.1)
    return model


@pytest.fixture
def user_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLZOO_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("CELLZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CELLZOO_REGISTRY", raising=False)
    monkeypatch.delenv("CELLZOO_MIRROR", raising=False)
    return tmp_path


def _eager(model, batch):
    with torch.no_grad():
        return {k: v.numpy() for k, v in model.eval()(batch).items()}


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_cli_export_repsnet_matches_eager(user_env, fmt, capsys):
    torch.manual_seed(0)
    model = _randomise_batchnorm(build_model("repsnet", {"variant": "S", "filters": [8, 16, 16, 16],
                                                         "num_classes": 3}))
    register_model(model, "tiny-export", {"licence": "CC0-1.0 (test)"})
    out = user_env / ("tiny.pt" if fmt == "torchscript" else "tiny.onnx")
    assert main(["export", "tiny-export", "--format", fmt, "--out", str(out), "--example-size", "64"]) == 0
    assert "exported tiny-export" in capsys.readouterr().out

    # a different size than the traced one, from a real image
    image = np.random.default_rng(0).uniform(0, 255, (48, 80, 3)).astype(np.float32)
    batch = model.preprocess(image)[None]
    expected = _eager(model, batch)  # train form; the export is the re-parameterised deploy form
    meta = read_export_metadata(out)
    assert meta["outputs"] == list(expected) and meta["family"] == "repsnet" and meta["config"]["deploy"]
    if fmt == "torchscript":
        with torch.no_grad():
            got = [t.numpy() for t in torch.jit.load(str(out))(batch)]
    else:
        import onnxruntime as ort
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": batch.numpy()})
    for name, array in zip(meta["outputs"], got):
        np.testing.assert_allclose(array, expected[name], rtol=1e-4, atol=1e-4)


def test_export_fullnet_torchscript_matches_eager(tmp_path):
    torch.manual_seed(0)
    model = _randomise_batchnorm(build_model("fullnet", {"growth_rate": 4, "n_layers": 4,
                                                         "dilations": [1, 2, 1], "stem_channels": 8}))
    out = export_model(model, "torchscript", tmp_path / "fullnet.pt", example_size=32)
    batch = model.preprocess(np.random.default_rng(1).uniform(0, 255, (24, 40, 3)).astype(np.float32))[None]
    expected = _eager(model, batch)
    with torch.no_grad():
        (got,) = torch.jit.load(str(out))(batch)
    np.testing.assert_allclose(got.numpy(), expected["ternary"], rtol=1e-4, atol=1e-5)


def test_export_refuses_detection_models_and_bad_formats(tmp_path, capsys):
    from cellzoo.models.cascade import CascadeConfig

    detector = build_model("cascade", CascadeConfig.small().__dict__)
    with pytest.raises(ValueError, match="detection model"):
        export_model(detector, "onnx", tmp_path / "x.onnx")
    tiny = build_model("repsnet", {"variant": "S", "filters": [4, 8, 8, 8]})
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(tiny, "tflite", tmp_path / "x.tflite")
    assert main(["export", "no-such-model", "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
