"""The one error family of mnistlab: a problem the user can fix, said in one line.

`main()` prints `mnistlab COMMAND: error: MESSAGE` for any `MnistlabError` and
exits with its `exit_code`; library callers catch `MnistlabError` alone. The
subclasses only say where the problem was found (data, model file, run
directory, image), so that callers that care can tell them apart.
"""

from __future__ import annotations


def shown(value: object, width: int = 60) -> str:
    """`value` as it may appear inside a one-line message: its repr, whitespace (a tensor's
    rows, a newline in a string) folded into single spaces, cut to about `width` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= width else text[:width - 3] + "..."


class MnistlabError(Exception):
    """A problem the user can fix: the message says what was wrong and what to do."""

    exit_code = 1


class UsageError(MnistlabError):
    """A bad flag or argument value (found after parsing): exit code 2, like argparse."""

    exit_code = 2


class DataError(MnistlabError):
    """A dataset that cannot be found, downloaded or read."""


class CheckpointError(MnistlabError):
    """A model file that is missing, damaged or does not fit."""


class RunError(MnistlabError):
    """A run directory that cannot be created, resumed or read, or a run that failed."""


class DeviceError(UsageError):
    """A device that does not exist on this machine."""


class PredictionError(MnistlabError):
    """A problem with one image: the file (when there is one) and the reason."""

    def __init__(self, reason: str, file: str | None = None):
        super().__init__(f"{file}: {reason}" if file else reason)
        self.reason = reason
        self.file = file


class WriteError(MnistlabError):
    """A file that could not be written (full disk, read-only folder, no permission)."""

    def __init__(self, path: str, cause: OSError):
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path
        self.cause = cause


class Interrupted(MnistlabError):
    """Ctrl-C or SIGTERM: the message says what was kept and how to continue."""

    exit_code = 130
