"""Files: atomic writes, and reads that only ever open regular files.

Writes: a reader sees the old file or the new one, never half of one. Every
failure to write (full disk, read-only folder, no permission) is a `WriteError`
naming the path and the cause; the previous file is left as it was.

Reads of anything a user points at (images, IDX files, checkpoints, run files)
go through `open_regular`: opening a FIFO blocks until someone writes into it,
and opening a device can make it act, so anything but a regular file is refused
by name before it is opened.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

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


def finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None (JSON's null), in dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """`obj` as valid JSON: non-finite numbers become null (JSON has no NaN; `json.dumps` would write one)."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


# ---------------------------------------------------------------------------
# Reading: regular files only

class NotRegularFile(OSError):
    """A path that exists but is a FIFO, a device, a socket or a folder: never opened."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str:
    """What a file of this `st_mode` is, for people: `a regular file`, `a FIFO (named pipe)`, ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def _refuse_unless_regular(mode: int, path: str | os.PathLike) -> None:
    if not stat.S_ISREG(mode):
        code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
        raise NotRegularFile(code, f"is {file_kind(mode)}, not a regular file", os.fsdecode(path))


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """Open `path` for reading in binary if it is a regular file (symbolic links followed).

    Raises OSError: FileNotFoundError and the like, or NotRegularFile naming what
    the path is. The kind is checked by name before opening, and again on the
    opened descriptor, in case the path was replaced in between (the open itself
    does not wait on a FIFO then: O_NONBLOCK).
    """
    _refuse_unless_regular(os.stat(path).st_mode, path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _refuse_unless_regular(os.fstat(fd).st_mode, path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of the regular file `path`; with `limit`, OSError (EFBIG) if it holds more bytes than that."""
    with open_regular(path) as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes, far more than such a file holds", os.fsdecode(path))
    return data


def hash_file(path: str | os.PathLike, algorithm: str) -> Any:
    """hashlib's `algorithm` (md5, sha256, ...) fed with the regular file's bytes, a megabyte at a time."""
    digest = hashlib.new(algorithm)
    with open_regular(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest


def display_name(path: str | bytes | os.PathLike) -> str:
    """A file name as text that prints on one line anywhere: bytes that are not UTF-8
    (a name from another system) as \\xNN, control characters (a newline) escaped."""
    try:
        text = os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no byte stands behind
        text = os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# Documents mnistlab writes (configs, checkpoint metadata) are a few kilobytes.
MAX_JSON_BYTES = 16 * 2**20


def read_json(path: str | os.PathLike) -> Any:
    """A JSON document from a regular file of at most MAX_JSON_BYTES.

    Raises OSError, UnicodeDecodeError or ValueError (bad JSON, or nested too deep to parse).
    """
    text = read_regular(path, MAX_JSON_BYTES).decode("utf-8")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
