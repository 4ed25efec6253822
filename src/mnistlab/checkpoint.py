"""Checkpoints: weights in safetensors, everything else in JSON beside them.

A checkpoint is `model.safetensors` + `model.json` (architecture, dataset,
class names, normalisation, metrics, config). It holds one network, or an
ensemble of K (`"ensemble": K` in model.json, member k's tensors under
`members.<k>.`), which loads as a `models.Ensemble`. Nothing is unpickled, so a
hostile file cannot run code. In a run directory they are published from
the run's committed state (runs.py) after every epoch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .files import write_bytes, write_json
from .models import Ensemble, build_model

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"


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
        from .models import log_probabilities

        shape = tuple(self.meta["architecture"]["input_shape"])
        device = next(self.model.parameters()).device
        x = torch.as_tensor(images, device=device).float().reshape(-1, *shape)
        x = (x / 255 - self.mean) / self.std
        self.model.eval()
        return log_probabilities(self.model, self.output, x).exp()

    def load_data(self, data_dir: str | os.PathLike | None = None):
        """The dataset this model was trained on: from `data_dir`, else from the folder
        it was trained from (if that still exists), else from the usual places."""
        from . import data

        if data_dir is None:
            recorded = self.meta.get("data_dir")
            data_dir = recorded if recorded and Path(recorded).is_dir() else None
        return data.load(self.meta["dataset"], data_dir)


def save_checkpoint(folder: str | os.PathLike, weights: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write `model.safetensors` (the state dict `weights`) and `model.json` (`meta`) into `folder`."""
    from safetensors.torch import save

    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    # Serialised in memory first: a full disk then fails in our write, with a clear error.
    write_bytes(folder / WEIGHTS, save(tensors, metadata={"format": "mnistlab", "version": str(FORMAT_VERSION)}))
    write_json(folder / META, {"format_version": FORMAT_VERSION, **meta})
    return folder / WEIGHTS


def resolve(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights file, metadata file) for a run directory or a checkpoint path."""
    path = Path(path)
    if path.is_dir():
        weights, meta = path / WEIGHTS, path / META
    elif path.suffix == ".json":
        weights, meta = path.with_suffix(".safetensors"), path
    else:
        weights, meta = path, path.with_suffix(".json")
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    for p in (weights, meta):
        if not p.is_file():
            raise CheckpointError(f"{path}: not a checkpoint ({p.name} is missing)")
    return weights, meta


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the network from its metadata and load its weights, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta_path = resolve(path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        members = int(meta.get("ensemble", 1))
        if members > 1:  # K networks whose prediction averages their probabilities
            model = Ensemble([build_model(meta["architecture"]) for _ in range(members)],
                             meta["architecture"].get("output", "logits"))
        else:
            model = build_model(meta["architecture"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({e})") from None
    try:
        state = load_file(str(weights))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{weights}: corrupt or mismatched weights ({first})") from None
    model.to(device).eval()
    return Checkpoint(model, meta, weights)

