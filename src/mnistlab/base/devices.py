"""Devices: which one to use, what it can do, and how to time work on it honestly.

Every command that takes `--device` goes through `select_device`, so a device
that this machine lacks is one line (exit 2), never a torch traceback.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

import torch

from .errors import DeviceError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # matched whole (fullmatch): "cpu\n" is no name


def check_name(name: str) -> str:
    """`name` if it is a device name mnistlab knows (whether or not this machine has it)."""
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise DeviceError(f"--device {name}: unknown device; use {DEVICE_CHOICES}")
    return name


def select_device(name: str = "auto") -> torch.device:
    """The torch device for `name`: auto picks CUDA, then MPS, then the CPU."""
    check_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available on this machine (try --device auto)")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"numbered from 0")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("--device mps: MPS is not available on this machine (try --device auto)")
    return torch.device(name)


def describe(device: torch.device) -> str:
    """For people: `cpu (2 threads)`, `cpu (1 thread)`, `cuda:0 (NVIDIA H100 80GB HBM3)`."""
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def count_dtype(device: torch.device) -> torch.dtype:
    """The widest float type the device has, for ratios of counts (MPS has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextlib.contextmanager
def flush_denormals(device: torch.device) -> Iterator[None]:
    """On the CPU, compute with floats below 1.2e-38 taken as zero.

    As the network grows confident, exp() of its log-probabilities underflows
    into denormal numbers, which x86 CPUs process many times slower. Such
    values are far below the float32 rounding error of any sum they join, so
    the losses are unchanged (see benchmarks/README.md for the measurement).
    """
    if device.type != "cpu" or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # PyTorch's default; it offers no way to read the current mode
