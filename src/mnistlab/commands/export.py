"""Export a trained model for use without mnistlab: ONNX or TorchScript.

The exported graph is the whole path from stored pixels to probabilities: the
checkpoint's normalisation x = (x/255 - mean) / std is folded in front of the
network and a softmax after it (or exp, for a LogSoftmax output), so a user
needs neither the mean and std nor the model's output type.

Input contract, chosen at export time (`input`):
  "uint8": images as N x 28 x 28 unsigned bytes, 0 = background, 255 = ink,
           exactly as the dataset's IDX files store them (the default);
  "float": N x 28 x 28 float32 in [0, 1], i.e. those bytes divided by 255
           (what torchvision's ToTensor gives, without its channel axis).
Output: N x C float32 class probabilities, each row summing to 1.

Beside the model file goes a JSON sidecar (`<file>.json`) with the class names,
the input and output contracts, the dataset, the architecture and the check
made at export: the exported file is loaded back (onnxruntime, or
torch.jit.load) and its probabilities compared with PyTorch's on a fixed batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..base.data import normalize
from ..core.runs import RUN_FILES, is_run
from ..core.checkpoint import load_checkpoint, resolve
from ..base.errors import CheckpointError, MnistlabError, UsageError
from ..base.files import write_bytes, write_json

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INPUTS = ("uint8", "float")
ONNX_OPSET = 17  # supported by every onnxruntime since 1.11 (2022)
TOLERANCE = 1e-5  # largest allowed difference between exported and PyTorch probabilities
CHECK_IMAGES = 32  # images in the export-time check
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
EXTRA_HINT = 'pip install "mnistlab[export]"'


class WithPreprocessing(nn.Module):
    """images (N x H x W, uint8 or float in [0, 1]) -> class probabilities (N x C)."""

    def __init__(self, model: nn.Module, mean: float, std: float, input_kind: str, log_softmax: bool):
        super().__init__()
        self.model = model
        self.mean, self.std = mean, std
        self.from_bytes = input_kind == "uint8"
        self.log_softmax = log_softmax

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # data.normalize, as in training: the same operations in the same order, the same float32 rounding.
        out = self.model(normalize(images, self.mean, self.std, scaled=not self.from_bytes))
        return out.exp() if self.log_softmax else torch.softmax(out, dim=1)


def input_contract(input_kind: str, image_shape: tuple[int, int]) -> dict[str, Any]:
    height, width = image_shape
    if input_kind == "uint8":
        return {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", height, width], "range": [0, 255],
                "meaning": "grey levels as stored in the dataset's IDX files: 0 background, 255 ink"}
    return {"name": INPUT_NAME, "dtype": "float32", "shape": ["N", height, width], "range": [0.0, 1.0],
            "meaning": "grey levels divided by 255: 0 background, 1 ink"}


def check_batch(input_kind: str, image_shape: tuple[int, int]) -> torch.Tensor:
    """A fixed batch covering the input range: blank, saturated and random images."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (CHECK_IMAGES, *image_shape), dtype=torch.uint8, generator=generator)
    images[0], images[1] = 0, 255
    return images if input_kind == "uint8" else images.float() / 255


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise MnistlabError(f"ONNX export needs the {e.name} package: {EXTRA_HINT}") from None
    return onnx, onnxruntime


def default_output(checkpoint: str | os.PathLike, fmt: str) -> Path:
    """`model.onnx` or `model.pt` in the run directory, or beside the checkpoint's weights."""
    if Path(checkpoint).is_dir():
        return Path(checkpoint) / ("model" + FORMATS[fmt])
    weights, _ = resolve(checkpoint)
    return weights.with_name("model" + FORMATS[fmt])


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The exported file is made and checked in memory, then written in one atomic write: a full disk or a
# read-only folder is then a WriteError naming the file (torch's and onnx's own writers fail with their own
# errors halfway through), and an earlier export at that path is left as it was.

def _onnx_bytes(wrapper: nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    onnx, _ = _require_onnx()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter (dynamo=False) works offline with torch alone; torch marks it
        # deprecated in favour of the torch.export-based one, which needs the onnxscript package.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapper, (example,), buf, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}})
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def _run_onnx(model: bytes, images: torch.Tensor) -> torch.Tensor:
    _, onnxruntime = _require_onnx()
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])


def _torchscript_bytes(wrapper: nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 marks torch.jit deprecated
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)  # checked below, loaded back
        torch.jit.save(traced, buf)
    return buf.getvalue()


def _run_torchscript(model: bytes, images: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(io.BytesIO(model), map_location="cpu")
    with torch.no_grad():
        return loaded(images)


def _check_targets(path: Path, sidecar: Path, checkpoint_files: tuple[Path, ...], fmt: str, force: bool) -> None:
    """UsageError unless the model file and its sidecar may be written: never over the checkpoint or a run's own
    files, never onto a folder, and over an existing file only with `force`."""
    for target in (path, sidecar):
        if target.resolve() in [f.resolve() for f in checkpoint_files]:
            raise UsageError(f"--out {path} would overwrite the checkpoint's {target.name}; choose another name")
        if target.name in RUN_FILES and is_run(target.parent):
            raise UsageError(f"--out {path} would write over {target.name}, a file of the run in {target.parent}; "
                             "choose another name")
        if target.is_dir():
            hint = f"; give a file name such as {path / ('model' + FORMATS[fmt])}" if target == path else ""
            raise UsageError(f"--out {path}: {target} is a folder{hint}")
        if target.exists() and not force:
            raise UsageError(f"{target} exists; pass --force to replace it")


def export(checkpoint: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None,
           input_kind: str = "uint8", force: bool = False) -> dict[str, Any]:
    """Write the model of `checkpoint` (a run directory or checkpoint file) as `fmt`, plus its sidecar.

    `out` defaults to model.onnx / model.pt beside the checkpoint; an existing folder gets that
    name inside it, and a name without a suffix gets the format's. The file is only kept if,
    loaded back, it gives PyTorch's probabilities within TOLERANCE. Returns the sidecar's
    content, with "path" and "sidecar" added.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    if input_kind not in INPUTS:
        raise UsageError(f"unknown input type {input_kind!r}; choose {' or '.join(INPUTS)}")
    if fmt == "onnx":
        _require_onnx()  # before any work: the missing package is the first thing to hear about
    ckpt = load_checkpoint(checkpoint)
    arch = ckpt.meta["architecture"]
    channels, *image_shape = arch["input_shape"]
    if channels != 1 or len(image_shape) != 2:
        raise CheckpointError(f"{ckpt.path}: input shape {arch['input_shape']} is not one grey channel")
    path = Path(out) if out is not None else default_output(checkpoint, fmt)
    if out is not None and path.is_dir():
        path = path / ("model" + FORMATS[fmt])
    elif not path.suffix:
        path = path.with_suffix(FORMATS[fmt])
    sidecar = path.with_name(path.name + ".json")
    beside = [ckpt.path]
    with contextlib.suppress(CheckpointError):  # a run whose model files are gone: its commit is the checkpoint
        beside += resolve(checkpoint)
    _check_targets(path, sidecar, tuple(beside), fmt, force)

    wrapper = WithPreprocessing(ckpt.model, ckpt.mean, ckpt.std, input_kind, ckpt.output == "log_softmax").eval()
    images = check_batch(input_kind, tuple(image_shape))
    with torch.no_grad():
        expected = wrapper(images)
    info: dict[str, Any] = {
        "format": fmt,
        "file": path.name,
        "input": input_contract(input_kind, tuple(image_shape)),
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", len(ckpt.classes)],
                   "meaning": "class probabilities (softmax applied); each row sums to 1"},
        "classes": list(ckpt.classes),
        "dataset": ckpt.meta.get("dataset"),
        "architecture": arch,
        "normalization": {"mean": ckpt.mean, "std": ckpt.std,
                          "folded_in": "x = (images" + (" / 255" if input_kind == "uint8" else "")
                          + f" - {ckpt.mean:g}) / {ckpt.std:g}, done inside the exported model"},
        "source": {"checkpoint": str(ckpt.path), "sha256": _file_sha256(ckpt.path), "commit": ckpt.meta.get("commit"),
                   "metrics": ckpt.meta.get("metrics")},
        "mnistlab": __version__,
        "torch": torch.__version__,
    }
    if fmt == "onnx":
        info["opset"] = ONNX_OPSET
    if fmt == "onnx":
        model = _onnx_bytes(wrapper, images[:2], {
            "classes": json.dumps(list(ckpt.classes)), "producer": "mnistlab",
            "input": f"{info['input']['dtype']} N x {' x '.join(map(str, image_shape))}, "
            f"range {info['input']['range']}", "output": "class probabilities"})
        got = _run_onnx(model, images)
    else:
        model = _torchscript_bytes(wrapper, images[:2])
        got = _run_torchscript(model, images)
    difference = float((got - expected).abs().max())
    if got.shape != expected.shape or not difference <= TOLERANCE:
        raise MnistlabError(f"the exported {fmt} model disagrees with PyTorch (largest difference "
                            f"{difference:.2g} > {TOLERANCE:g}); nothing was written")
    info["check"] = {"images": len(images), "max_abs_difference": difference, "tolerance": TOLERANCE,
                     "against": "the PyTorch model, on blank, saturated and random images"}
    info["sha256"] = hashlib.sha256(model).hexdigest()
    # The pair is one unit: the old sidecar goes first, so a kill between the two writes leaves a model
    # without its sidecar (its own metadata says the classes and the input), never one beside another's.
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # nothing there: write_bytes says why not
        sidecar.unlink()
    write_bytes(path, model)  # WriteError names the path and the cause
    write_json(sidecar, info)
    return info | {"path": str(path), "sidecar": str(sidecar)}
