"""Dataset names: the datasets mnistlab knows by name, and your own data by its path.

    mnist, fashion-mnist, ...    a dataset described in `data.DATASETS`
    folder:PATH                  a folder of images, one sub-folder per class (`own.py`)
    csv:TRAIN.csv[,TEST.csv]     pixels in CSV files, Kaggle's digit-recognizer layout (`own.py`)

The name of your own data holds its absolute path (`canonical`), so a run's
config.json says where its data came from whatever folder a later command runs
in. Only text is handled here: nothing is opened, so the configuration can use
these names without importing the data code.
"""

from __future__ import annotations

import os

KNOWN = ("mnist", "fashion-mnist", "kmnist", "qmnist", "emnist-digits", "emnist-letters", "emnist-balanced",
         "synthetic")
FOLDER, CSV = "folder", "csv"
SYNTAX = "folder:PATH or csv:TRAIN.csv[,TEST.csv]"
MAX_NAME = 4096  # characters: PATH_MAX on Linux


def own(name: str) -> tuple[str, tuple[str, ...]] | None:
    """(kind, paths) when `name` names your own data, else None: ("folder", (PATH,)) or ("csv", (TRAIN[, TEST]))."""
    kind, sep, rest = name.partition(":")
    if not sep or kind not in (FOLDER, CSV):
        return None
    if kind == CSV:
        # TRAIN.csv,TEST.csv: split at the last comma that ends a .csv name (a path may hold commas)
        train, comma, test = rest.rpartition(",")
        if comma and train.lower().endswith(".csv") and test:
            return kind, (train, test)
    return kind, (rest,)


def canonical(name: str) -> str:
    """`name` with the paths of your own data made absolute (no file is looked at); other names unchanged."""
    parsed = own(name)
    if parsed is None or not all(parsed[1]):
        return name
    kind, paths = parsed
    return f"{kind}:" + ",".join(os.path.abspath(os.path.expanduser(p)) for p in paths)


def problem(name: str) -> str | None:
    """What is wrong with `name` as a dataset name, or None when it is one (known, or your own data with a path)."""
    if name in KNOWN:
        return None
    parsed = own(name)
    if parsed is not None and all(parsed[1]) and name.isprintable() and len(name) <= MAX_NAME:
        return None
    if parsed is not None and not all(parsed[1]):
        return f"dataset {name!r} lacks its path; use {SYNTAX}"
    if parsed is not None:
        # It is written into config.json and model.json, and shown on one line in every message.
        return (f"dataset {name[:MAX_NAME]!r}: a path of at most {MAX_NAME} printable characters is needed "
                "(rename or move the folder)")
    hint = ""
    if name.lower().endswith(".csv"):
        # e.g. `sweep --dataset csv:train.csv,test.csv`: the sweep's comma list cut it in two
        hint = (" (a CSV dataset is csv:TRAIN.csv[,TEST.csv]; in `mnistlab sweep`, whose flags split at commas, "
                "give it with its test file in the TOML file)")
    elif "/" in name or os.sep in name:
        hint = " (a folder of images is folder:PATH)"
    return f"unknown dataset {name!r}; known: {', '.join(KNOWN)}, or your own data as {SYNTAX}{hint}"


def short(name: str) -> str:
    """A name fit for a file name: known names as they are, your own data as folder-<last folder name>
    or csv-<train file's stem> (e.g. for runs/<recipe>-<dataset>)."""
    parsed = own(name)
    if parsed is None:
        return name
    kind, paths = parsed
    base = os.path.basename(os.path.normpath(paths[0])) or "data"
    if kind == CSV:
        base = os.path.splitext(base)[0] or "data"
    return f"{kind}-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in base)
