"""`mnistlab export`: ONNX and TorchScript files that give PyTorch's probabilities from raw pixels."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mnistlab import cli

from mnistlab.base import data
from mnistlab.core.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.base.errors import MnistlabError, UsageError
from mnistlab.commands.export import TOLERANCE, export
from mnistlab.base.models import build_model, log_probabilities


def pytorch_probabilities(run: Path, images: torch.Tensor) -> torch.Tensor:
    """What mnistlab itself computes: the training normalisation, the model, exp(log-probabilities)."""
    ckpt = load_checkpoint(run)
    x, _ = data.to_device(data.Split(images, torch.zeros(len(images), dtype=torch.int64)),
                          torch.device("cpu"), ckpt.mean, ckpt.std)
    with torch.no_grad():
        return log_probabilities(ckpt.model, ckpt.output, x).exp()


def onnx_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def torchscript_probabilities(path: Path, images: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return loaded(images)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """The tiny run's checkpoint in a folder of its own, so exports do not meet each other."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("model.safetensors", "model.json"):
        (folder / name).write_bytes((tiny_run / name).read_bytes())
    return folder


@pytest.fixture
def fresh_cnn(tmp_path) -> Path:
    """An untrained CNN with a LogSoftmax output and an unusual normalisation, as a checkpoint."""
    arch = {"model": "cnn", "input_shape": [1, 28, 28], "hidden": [], "activation": "relu",
            "output": "log_softmax", "num_classes": 10}
    torch.manual_seed(0)
    model = build_model(arch).eval()
    return save_checkpoint(tmp_path / "cnn", model.state_dict(), {
        "architecture": arch, "dataset": "fashion-mnist", "classes": list(data.DATASETS["fashion-mnist"].classes),
        "normalization": {"mean": 0.2860, "std": 0.3530}}).parent


def test_onnx_gives_pytorchs_probabilities_from_uint8_pixels(run_copy, tiny_idx_dir):
    pytest.importorskip("onnxruntime")
    info = export(run_copy)
    assert info["path"] == str(run_copy / "model.onnx") and info["sidecar"] == str(run_copy / "model.onnx.json")
    test = data.load("mnist", tiny_idx_dir).test
    got = onnx_probabilities(run_copy / "model.onnx", test.images.numpy())
    expected = pytorch_probabilities(run_copy, test.images).numpy()
    assert got.dtype == np.float32 and got.shape == (len(test), 10)
    assert np.abs(got - expected).max() <= TOLERANCE
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)
    assert (got.argmax(1) == test.labels.numpy()).mean() > 0.9  # a trained model, not noise


def test_the_sidecar_says_how_to_use_the_file(run_copy):
    pytest.importorskip("onnxruntime")
    export(run_copy)
    sidecar = json.loads((run_copy / "model.onnx.json").read_text())
    meta = json.loads((run_copy / "model.json").read_text())
    assert sidecar["file"] == "model.onnx" and sidecar["format"] == "onnx"
    assert sidecar["classes"] == meta["classes"] and sidecar["dataset"] == "mnist"
    assert sidecar["architecture"] == meta["architecture"]
    assert sidecar["input"] == {"name": "images", "dtype": "uint8", "shape": ["N", 28, 28], "range": [0, 255],
                                "meaning": sidecar["input"]["meaning"]}
    assert sidecar["output"]["name"] == "probabilities" and sidecar["output"]["shape"] == ["N", 10]
    assert sidecar["check"]["max_abs_difference"] <= TOLERANCE
    import hashlib

    assert sidecar["sha256"] == hashlib.sha256((run_copy / "model.onnx").read_bytes()).hexdigest()


def test_a_log_softmax_cnn_exports_to_both_formats_with_float_input(fresh_cnn):
    pytest.importorskip("onnxruntime")
    images = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = pytorch_probabilities(fresh_cnn, images)
    onnx = export(fresh_cnn, "onnx", input_kind="float")
    script = export(fresh_cnn, "torchscript", out=fresh_cnn / "exported" / "cnn", input_kind="float")
    assert script["path"] == str(fresh_cnn / "exported" / "cnn.pt")
    assert onnx["input"]["dtype"] == "float32" and onnx["input"]["range"] == [0.0, 1.0]
    assert onnx["classes"][0] == "T-shirt/top"
    import onnx as onnx_package

    metadata = {p.key: p.value for p in onnx_package.load(onnx["path"]).metadata_props}
    assert json.loads(metadata["classes"]) == list(data.DATASETS["fashion-mnist"].classes)
    floats = images.float() / 255
    got_onnx = onnx_probabilities(Path(onnx["path"]), floats.numpy())
    got_script = torchscript_probabilities(Path(script["path"]), floats)
    assert np.abs(got_onnx - expected.numpy()).max() <= TOLERANCE
    assert (got_script - expected).abs().max() <= TOLERANCE


def test_torchscript_round_trip_with_uint8_pixels(run_copy, tiny_idx_dir):
    info = export(run_copy, "torchscript")
    test = data.load("mnist", tiny_idx_dir).test
    got = torchscript_probabilities(Path(info["path"]), test.images)
    assert (got - pytorch_probabilities(run_copy, test.images)).abs().max() <= TOLERANCE
    assert json.loads(Path(info["sidecar"]).read_text())["format"] == "torchscript"


def test_missing_onnx_packages_name_the_extra(run_copy, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(MnistlabError, match=r'needs the onnxruntime package: pip install "mnistlab\[export\]"'):
        export(run_copy)
    assert cli.main(["export", str(run_copy)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "mnistlab[export]"' in err
    assert not (run_copy / "model.onnx").exists() and not (run_copy / "model.onnx.json").exists()


@pytest.mark.parametrize("name", ["model.safetensors", "model.json"])
def test_out_never_overwrites_the_checkpoint(run_copy, name):
    before = (run_copy / name).read_bytes()
    with pytest.raises(UsageError, match="would overwrite the checkpoint"):
        export(run_copy, "torchscript", out=run_copy / name)
    assert (run_copy / name).read_bytes() == before


def test_out_that_is_a_folder_gets_the_default_name_inside(run_copy, tmp_path):
    info = export(run_copy, "torchscript", out=tmp_path)
    assert info["path"] == str(tmp_path / "model.pt") and Path(info["sidecar"]).is_file()
    (run_copy / "model.pt").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        export(run_copy, "torchscript")


def test_cli_export_prints_the_contract_and_the_files(run_copy, capsys):
    assert cli.main(["export", str(run_copy), "--format", "torchscript", "--out", str(run_copy / "m.pt")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"wrote {run_copy / 'm.pt'} (torchscript)"
    assert out[1].startswith("  input  images: uint8 N x 28 x 28, 0 to 255")
    assert out[-1] == f"wrote {run_copy / 'm.pt.json'}"
    assert cli.main(["export", str(run_copy / "nothing-here")]) == 1
    assert "no such run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_onnx_equals_pytorch_on_real_mnist_test_images(real_mnist, tmp_path):
    pytest.importorskip("onnxruntime")
    from mnistlab.base.config import recipe
    from mnistlab.core.engine import train

    config = recipe("fast", epochs=1, device="cpu")  # confident outputs: probabilities near 0 and 1 too
    run = train(config, out=tmp_path / "fast", data_dir=real_mnist).run_dir
    info = export(run)
    test = data.load("mnist", real_mnist).test
    got = onnx_probabilities(Path(info["path"]), test.images.numpy())
    expected = pytorch_probabilities(run, test.images).numpy()
    assert got.shape == (10_000, 10)
    assert np.abs(got - expected).max() <= TOLERANCE
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert (got.argmax(1) == test.labels.numpy()).mean() > 0.9
