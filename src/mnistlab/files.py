"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every failure to write (full disk, read-only folder, no permission) is a
`WriteError` naming the path and the cause; the previous file is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import WriteError

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    umask = os.umask(0)  # there is no getter: set and restore
    os.umask(umask)
    return umask


def make_dirs(path: str | os.PathLike) -> Path:
    """`mkdir -p`, or WriteError naming the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteError(str(path), OSError(0, "a file of that name is in the way")) from None
    except OSError as e:
        raise WriteError(str(path), e) from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    The temporary file is named `.NAME.*.tmp`, so that whoever owns the folder
    can recognise and remove one left by a killed process (`remove_stale_temps`).
    """
    path = Path(path)
    make_dirs(path.parent)
    tmp_path = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        # Writers may replace the file rather than fill it, so the mode is set last:
        # every file gets the permissions the umask gives a normal new file.
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:
        raise WriteError(str(path), e) from None
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the `.NAME.*.tmp` files that a killed writer left in `folder`; return them."""
    stale = [p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    # allow_nan=False: a NaN would make the file invalid JSON; callers store None instead.
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
