"""The course notebooks (French and English) run top to bottom: on real MNIST, and on the synthetic digits
when MNIST cannot be found."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

import mnistlab

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# What each notebook prints after each epoch of the hand-written loop, and when MNIST is missing.
EPOCH_LINE = {
    "en": re.compile(r"^epoch (\d+)/(\d+): mean training loss (\d+\.\d+) ", re.M),
    "fr": re.compile(r"^époque (\d+)/(\d+) : perte moyenne d'entraînement (\d+\.\d+) ", re.M),
}
ACCURACY_LINE = {
    "en": re.compile(r"^test accuracy: (\d+\.\d+)%", re.M),
    "fr": re.compile(r"^exactitude sur le test : (\d+\.\d+) %", re.M),
}
FALLBACK = {"en": "Using the synthetic digits instead.", "fr": "On utilise les chiffres synthétiques à la place."}
FILES = {"en": "course-mnist-en.ipynb", "fr": "cours-mnist-fr.ipynb"}
# The course notebook's printed losses for SGD lr 0.003, batch 64, 5 epochs on MNIST.
COURSE_LOSSES = (1.94, 0.91, 0.55, 0.44, 0.39)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One data cache for every notebook run here, so the synthetic digits are rendered once."""
    return tmp_path_factory.mktemp("notebook-cache")


def execute(name: str, monkeypatch, tmp_path: Path, cache: Path, **env: str) -> tuple[str, list]:
    """Run the notebook in a fresh kernel that imports this mnistlab, with a home of its own and the
    platform cache in `cache`; return its printed text (stdout and stderr) and its cells."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    source = str(Path(mnistlab.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no copy of MNIST in ~/.pytorch or ~/.cache by chance
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # the parsed cache, when MNISTLAB_DATA is a data folder
    monkeypatch.setenv("MNISTLAB_DATA", str(cache / "mnistlab"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' run folders
    for key in ("MNISTLAB_NOTEBOOK_QUICK", "MNISTLAB_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    start = time.perf_counter()
    # Timeouts in seconds: a kernel can take over a minute to start on a loaded 2-core machine.
    nbclient.NotebookClient(notebook, timeout=600, startup_timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"{name}: {time.perf_counter() - start:.0f} s (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    text = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for out in cell.outputs if out.output_type == "stream")
    return text, notebook.cells


def leftovers(tmp_path: Path) -> list[str]:
    """What the notebook left in its temporary folder (TMPDIR) besides the home the test gave it."""
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mnistlab"))


def figures(cells: list) -> int:
    return sum("image/png" in out.get("data", {}) for cell in cells if cell.cell_type == "code"
               for out in cell.outputs)


def test_the_notebooks_are_committed_without_outputs():
    for name in FILES.values():
        notebook = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
        code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
        assert code and all(not cell["outputs"] and cell["execution_count"] is None for cell in code), name


@pytest.mark.slow  # nbformat's schema check takes 2 s
def test_the_notebooks_are_valid_for_jupyter():
    nbformat = pytest.importorskip("nbformat")
    for name in FILES.values():
        nbformat.validate(nbformat.read(NOTEBOOKS / name, as_version=4))


@pytest.mark.slow
@pytest.mark.parametrize("lang", FILES)
def test_the_notebook_runs_the_course_on_real_mnist(lang, monkeypatch, tmp_path, shared_cache, real_mnist):
    # MNISTLAB_DATA names the folder of the four files, as a student sets it.
    text, cells = execute(FILES[lang], monkeypatch, tmp_path, shared_cache, MNISTLAB_DATA=str(real_mnist))
    epochs = EPOCH_LINE[lang].findall(text)
    assert [(int(e), int(n)) for e, n, _ in epochs] == [(e, 5) for e in range(1, 6)]
    losses = [float(loss) for _, _, loss in epochs]
    assert losses == pytest.approx(COURSE_LOSSES, abs=0.03), "the hand-written loop is the course's"
    accuracy = float(ACCURACY_LINE[lang].findall(text)[0])
    assert 88 < accuracy < 92
    assert FALLBACK[lang] not in text
    assert figures(cells) >= 3  # the batch grid and two view_classify figures
    assert leftovers(tmp_path) == []  # its run folders are removed
    if lang == "fr":  # what the French notebook prints is French: no English line from mnistlab
        english = re.compile(r"^(epoch \d|run: |recipe |device: |data: )|train loss|test acc|accuracy", re.M)
        assert not english.search(text), english.search(text)
        assert "précision" not in text and "exactitude sur le test" in text


@pytest.mark.slow
@pytest.mark.parametrize("lang", FILES)
def test_the_notebook_falls_back_on_the_synthetic_digits(lang, monkeypatch, tmp_path, shared_cache):
    # No MNIST in the cache folder, and offline: every download goes through a proxy that refuses at once.
    offline = "http://127.0.0.1:9"
    text, cells = execute(FILES[lang], monkeypatch, tmp_path, shared_cache, MNISTLAB_NOTEBOOK_QUICK="1",
                          http_proxy=offline, https_proxy=offline, no_proxy="")
    assert FALLBACK[lang] in text and "synthetic" in text
    assert leftovers(tmp_path) == []
    epochs = EPOCH_LINE[lang].findall(text)
    assert [(int(e), int(n)) for e, n, _ in epochs] == [(1, 2), (2, 2)]
    assert float(epochs[1][2]) < float(epochs[0][2]) < 2.5  # it learns
    assert figures(cells) >= 3
