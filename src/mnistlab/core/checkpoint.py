"""Checkpoints: weights in safetensors, everything else in JSON beside them.

A checkpoint is `model.safetensors` + `model.json` (architecture, dataset,
class names, normalisation, metrics, config). It holds one network, or an
ensemble of K (`"ensemble": K` in model.json, member k's tensors under
`members.<k>.`), which loads as a `models.Ensemble`. Nothing is unpickled, so a
hostile file cannot run code, and everything is checked before it is used:
the metadata field by field (`validate_meta`), then the tensors' names,
shapes and types against the network the metadata describes (built on the
`meta` device, which allocates nothing), before any weight is loaded. In a run
directory they are published from the run's committed state (runs.py) after
every epoch.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from ..base import names
from ..base.config import ACTIVATIONS, MAX_ENSEMBLE, MAX_WIDTH
from ..base.own import MAX_CLASSES
from ..base.errors import CheckpointError, DataError, shown
from ..base.files import file_kind, read_json, read_regular, write_bytes, write_json
from ..base import data
from ..base.data import DATASETS
from ..base.models import MODELS, Ensemble, build_model, log_probabilities

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"
STATE = "state.pt"  # a run directory's last commit, written by core/runs.py
INPUT_SHAPE = [1, 28, 28]  # (channels, height, width) of every dataset mnistlab knows
OUTPUTS = ("logits", "log_softmax")
MAX_LAYERS = 16
MAX_CLASS_NAME = 100  # characters


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_one_of(value: Any, names: tuple[str, ...]) -> bool:
    return isinstance(value, str) and value in names


def _is_number(value: Any, lo: float, hi: float) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and lo <= value <= hi)


def validate_meta(meta: Any, where: str | os.PathLike) -> dict[str, Any]:
    """`meta` (the content of model.json) if every field mnistlab uses is there and in range,
    else CheckpointError naming `where`, the first bad field, its allowed values and what it held."""
    def bad(name: str, allowed: str, value: Any) -> CheckpointError:
        return CheckpointError(f"{where}: {name} must be {allowed} (got {shown(value)}); "
                               "the checkpoint is damaged or was not written by mnistlab")

    if not isinstance(meta, dict):
        raise bad("the metadata", "a JSON object", meta)
    # Every value is tested for its type before it is compared: a hostile document may hold
    # anything JSON (or, in state.pt, torch) can express, and a tensor compared with == has no truth value.
    version = meta.get("format_version", FORMAT_VERSION)
    if not _is_int(version, FORMAT_VERSION, FORMAT_VERSION):
        raise bad("format_version", f"{FORMAT_VERSION} (this mnistlab's format)", version)
    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        raise bad("architecture", "a JSON object", arch)
    if not (isinstance(arch.get("model"), str) and arch["model"] in MODELS):
        raise bad("architecture.model", " or ".join(MODELS), arch.get("model"))
    shape = arch.get("input_shape")
    if not (isinstance(shape, list) and all(_is_int(v, 1, 28) for v in shape) and shape == INPUT_SHAPE):
        raise bad("architecture.input_shape", str(INPUT_SHAPE), shape)
    hidden = arch.get("hidden")
    fewest = 0 if arch["model"] == "cnn" else 1  # the cnn ignores its hidden sizes
    if not (isinstance(hidden, list) and fewest <= len(hidden) <= MAX_LAYERS
            and all(_is_int(h, 1, MAX_WIDTH) for h in hidden)):
        raise bad("architecture.hidden", f"a list of {fewest} to {MAX_LAYERS} integers from 1 to {MAX_WIDTH}", hidden)
    if not _is_one_of(arch.get("activation", "relu"), ACTIVATIONS):
        raise bad("architecture.activation", "one of " + ", ".join(ACTIVATIONS), arch.get("activation"))
    if not _is_one_of(arch.get("output", "logits"), OUTPUTS):
        raise bad("architecture.output", " or ".join(OUTPUTS), arch.get("output"))
    dataset = meta.get("dataset")
    if not (isinstance(dataset, str) and names.problem(dataset) is None):
        raise bad("dataset", f"one of {', '.join(names.KNOWN)}, or {names.SYNTAX}", dataset)
    # A dataset known by name fixes its classes; your own data's come with the model.
    if dataset in DATASETS:
        n = len(DATASETS[dataset].classes)
        if not _is_int(arch.get("num_classes"), n, n):
            raise bad("architecture.num_classes", f"{n} (the classes of {dataset})", arch.get("num_classes"))
    elif not _is_int(arch.get("num_classes"), 2, MAX_CLASSES):
        raise bad("architecture.num_classes", f"2 to {MAX_CLASSES}", arch.get("num_classes"))
    n = arch["num_classes"]
    classes = meta.get("classes")
    if not (isinstance(classes, list) and len(classes) == n
            and all(isinstance(c, str) and 1 <= len(c) <= MAX_CLASS_NAME and c.isprintable() for c in classes)):
        raise bad("classes", f"a list of {n} names (printable text of 1 to {MAX_CLASS_NAME} characters)", classes)
    norm = meta.get("normalization")
    if not isinstance(norm, dict):
        raise bad("normalization", 'a JSON object {"mean": ..., "std": ...}', norm)
    # The ranges of `mnistlab train --mean/--std`: std 0 would turn every pixel into NaN.
    if not _is_number(norm.get("mean"), -1000, 1000):
        raise bad("normalization.mean", "a finite number in [-1000, 1000]", norm.get("mean"))
    if not (_is_number(norm.get("std"), 0, 1000) and norm["std"] > 0):
        raise bad("normalization.std", "a finite number > 0 and at most 1000", norm.get("std"))
    for name in ("config", "metrics"):
        if meta.get(name) is not None and not isinstance(meta[name], dict):
            raise bad(name, "a JSON object", meta[name])
    if meta.get("data_dir") is not None and not isinstance(meta["data_dir"], str):
        raise bad("data_dir", "a folder name", meta["data_dir"])
    if not _is_int(meta.get("ensemble", 1), 1, MAX_ENSEMBLE):
        raise bad("ensemble", f"the number of networks, 1 to {MAX_ENSEMBLE}", meta.get("ensemble"))
    return meta


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.int64: "I64"}


def expected_tensors(arch: dict[str, Any], members: int = 1) -> dict[str, tuple[list[int], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor of the network `arch` describes (validated first),
    or of an ensemble of `members` such networks (`members.<k>.` before each name).

    Built on the `meta` device: shapes without memory, so a hostile description costs nothing.
    """
    with torch.device("meta"):
        model = build_model(arch)
    one = {k: (list(v.shape), v.dtype) for k, v in model.state_dict().items()}
    if members == 1:
        return one
    return {f"members.{k}.{name}": v for k in range(members) for name, v in one.items()}


def _dtype_name(dtype: torch.dtype | str) -> str:
    """safetensors' name of a dtype (F32, I64); safetensors names pass through."""
    return _SAFETENSORS_DTYPES.get(dtype, str(dtype)) if isinstance(dtype, torch.dtype) else dtype


def check_tensors(tensors: dict[str, tuple[list[int], torch.dtype | str]], arch: dict[str, Any],
                  where: str | os.PathLike, members: int = 1) -> None:
    """CheckpointError unless `tensors` (name -> (shape, dtype)) are exactly the tensors of the network `arch`
    (or of an ensemble of `members` of them)."""
    expected = {k: (shape, _dtype_name(dtype)) for k, (shape, dtype) in expected_tensors(arch, members).items()}
    tensors = {k: (shape, _dtype_name(dtype)) for k, (shape, dtype) in tensors.items()}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}: the weights do not fit the network described in {META} ("
                              + "; ".join(part for part in (
                                  f"missing {', '.join(missing[:4])}" if missing else "",
                                  f"unexpected {', '.join(map(shown, unexpected[:4]))}" if unexpected else "")
                                  if part) + ")")
    for name, (shape, dtype) in expected.items():
        if list(tensors[name][0]) != shape or tensors[name][1] != dtype:
            raise CheckpointError(f"{where}: {name} is {tensors[name][1]} {list(tensors[name][0])}, but the network "
                                  f"described in {META} needs {dtype} {shape}")


@dataclass
class Checkpoint:
    model: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def output(self) -> str:
        return self.meta["architecture"].get("output", "logits")

    @property
    def mean(self) -> float:
        return float(self.meta["normalization"]["mean"])

    @property
    def std(self) -> float:
        return float(self.meta["normalization"]["std"])

    @torch.no_grad()
    def predict_proba(self, images: Any) -> torch.Tensor:
        """Class probabilities, one row per image, whatever the model's output layer.

        `images`: pixels as the datasets store them, 0 (background) to 255 (ink),
        shaped (H, W) or (N, H, W) (or (N, C, H, W)), uint8 or float; e.g.
        `mnistlab.load("mnist").test.images[:5]`. They are normalised as in training.
        """
        self.model.eval()
        return log_probabilities(self.model, self.output, self.inputs(images)).exp()

    def inputs(self, images: Any) -> torch.Tensor:
        """Pixels as the network takes them: float (N, C, H, W) on the model's device, normalised as in
        training. `images` as for `predict_proba`; a float tensor keeps its autograd graph (saliency maps
        differentiate through this)."""
        shape = tuple(self.meta["architecture"]["input_shape"])
        device = next(self.model.parameters()).device
        return data.normalize(torch.as_tensor(images, device=device).reshape(-1, *shape), self.mean, self.std)

    def load_data(self, data_dir: str | os.PathLike | None = None, any_data: bool = False,
                  download: bool = True):  # download=False: a DataError when not found instead of a download
        """The dataset this model was trained on: from `data_dir`, else from the folder
        it was trained from (if that still exists), else from the usual places. Your own
        data is read from the path in its name (or from `data_dir` if it has moved), skipping
        unreadable files if the run did (`skip_bad` in its config).

        Files recognised as another dataset are a DataError naming both, unless `any_data`;
        so is your own data whose classes are no longer the model's.
        """
        expected = self.meta["dataset"]
        if data_dir is None:
            recorded = self.meta.get("data_dir")
            data_dir = recorded if recorded and _is_dir(recorded) else None
        skip_bad = (self.meta.get("config") or {}).get("skip_bad") is True
        dataset = data.load(expected, data_dir, download_missing=download, any_data=True, skip_bad=skip_bad)
        problem = None if any_data else data.mismatch(dataset, expected)
        if problem:
            raise DataError(f"{problem}, which the model was trained on; point --data-dir at the {expected} "
                            "files, or pass --any-data to use these anyway")
        if list(dataset.classes) != list(self.classes):
            shown_ = ", ".join(dataset.classes[:12]) + (" ..." if len(dataset.classes) > 12 else "")
            raise DataError(f"{dataset.spec.name} now holds the classes {shown_} ({len(dataset.classes)}); the model "
                            f"was trained on {len(self.classes)}: {', '.join(self.classes[:12])}"
                            f"{' ...' if len(self.classes) > 12 else ''}")
        return dataset


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        return False


def save_checkpoint(folder: str | os.PathLike, weights: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write `model.safetensors` (the state dict `weights`) and `model.json` (`meta`) into `folder`."""
    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    # Serialised in memory first: a full disk then fails in our write, with a clear error.
    write_bytes(folder / WEIGHTS, save(tensors, metadata={"format": "mnistlab", "version": str(FORMAT_VERSION)}))
    write_json(folder / META, {"format_version": FORMAT_VERSION, **meta})
    return folder / WEIGHTS


def resolve(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights file, metadata file) for a run directory or a checkpoint path."""
    path = Path(path)
    mode = _mode(path)
    if mode is None:
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    if stat.S_ISDIR(mode):
        weights, meta = path / WEIGHTS, path / META
    elif path.suffix == ".json":
        weights, meta = path.with_suffix(".safetensors"), path
    else:
        weights, meta = path, path.with_suffix(".json")
    for p in (weights, meta):
        mode = _mode(p)
        if mode is None:
            raise CheckpointError(f"{path}: not a checkpoint ({p.name} is missing)")
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"{p}: is {file_kind(mode)}, not a regular file; not a checkpoint")
    return weights, meta


def _mode(path: Path) -> int | None:
    """`st_mode` of `path`, None if there is nothing there; CheckpointError if it cannot be looked at."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:  # a NUL byte in the name
        raise CheckpointError(f"{path!r}: not a file name ({e})") from None


def read_meta(meta_path: Path) -> dict[str, Any]:
    """model.json, parsed and validated."""
    try:
        meta = read_json(meta_path)
    except OSError as e:
        raise CheckpointError(f"{meta_path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({str(e).splitlines()[0]}); the checkpoint "
                              "metadata is damaged") from None
    return validate_meta(meta, meta_path)


def model_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """model.json's "metrics": what the weights were measured at, from the run's metric rows."""
    last = rows[-1] if rows else {}
    return {"epochs": len(rows), "train_loss": [r["train_loss"] for r in rows],
            "test_accuracy": last.get("test_accuracy"), "val_accuracy": last.get("val_accuracy"),
            "train_seconds": sum(r["seconds"] for r in rows)}


def read_state_file(path: Path) -> Any:
    """What `torch.save` wrote to a run's state.pt: tensors and plain data only (nothing else is unpickled).

    Raises FileNotFoundError when there is none, OSError when it cannot be read (a FIFO is refused, never
    waited on), ValueError naming torch's complaint when it is damaged.
    """
    raw = read_regular(path)
    try:
        with warnings.catch_warnings():  # a file that is not ours (TorchScript, say) makes torch warn too
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the unpickler says, the file is unusable
        raise ValueError(type(e).__name__) from None


def _committed(run_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """(meta, weights) of the run's last commit when its model files are older than it, else None.

    The derived files of a run are published after each commit; a kill between the two leaves them one
    epoch behind, so the commit is the truth. A run whose state.pt is missing or unreadable has only its
    model files, which are then used as they are (`mnistlab runs` says what is damaged).
    """
    try:
        state = read_state_file(run_dir / STATE)
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not state.get("epoch") or not isinstance(state.get("commit"), str):
        return None
    try:
        published = read_json(run_dir / META).get("commit")
    except (OSError, ValueError, AttributeError):
        published = None
    if published == state["commit"]:
        return None
    meta = validate_meta({**state.get("meta", {}), "commit": state["commit"],
                          "metrics": model_metrics(state.get("rows", []))}, run_dir / STATE)
    weights = state.get("model")
    if not (isinstance(weights, dict) and all(isinstance(v, torch.Tensor) for v in weights.values())):
        raise CheckpointError(f"{run_dir / STATE}: the weights are not a dictionary of named tensors")
    return meta, weights


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the network from its metadata and load its weights, in eval mode.

    `path` is a checkpoint file or a run directory; of a run, always the last committed epoch.
    """
    path = Path(path)
    committed = _committed(path) if _is_dir(str(path)) else None
    if committed is not None:
        meta, state = committed
        weights = path / STATE
        check_tensors({k: (list(v.shape), v.dtype) for k, v in state.items()}, meta["architecture"], weights,
                      meta.get("ensemble", 1))
    else:
        weights, meta_path = resolve(path)
        meta = read_meta(meta_path)
        try:
            with safe_open(str(weights), framework="pt") as f:  # reads the header only
                header = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}
            check_tensors(header, meta["architecture"], weights, meta.get("ensemble", 1))
            state = load_file(str(weights))
        except (SafetensorError, RuntimeError, OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{weights}: corrupt weights ({first})") from None
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{weights}: {bad} holds NaN or infinite values; the model cannot give probabilities")
    arch, members = meta["architecture"], meta.get("ensemble", 1)
    # K networks whose prediction averages their probabilities, or one network
    model = (Ensemble([build_model(arch) for _ in range(members)], arch.get("output", "logits")) if members > 1
             else build_model(arch))
    model.load_state_dict(state)
    model.to(device).eval()
    return Checkpoint(model, meta, weights)
