"""The README and the documentation site: the site builds strictly, every command they show is one mnistlab
accepts (and the README's first run works), every command and public function has its place, and the README
stays a front page."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import mnistlab
from mnistlab.cli import build_parser

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport the project depends on there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
README = ROOT / "README.md"
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def code_blocks(path: Path, language: str = "bash") -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(encoding="utf-8"), re.M | re.S)


def commands(path: Path) -> list[list[str]]:
    """Every command line of the file's bash blocks, as argument lists: `a && b | c` is three, comments and
    leading VAR=value assignments dropped."""
    found = []
    for block in code_blocks(path):
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            command: list[str] = []
            for token in [*tokens, "&&"]:
                if token in ("&&", "||", "|", ";"):
                    while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):
                        command.pop(0)
                    if command:
                        found.append(command)
                    command = []
                else:
                    command.append(token)
    return found


def mnistlab_args(command: list[str]) -> list[str] | None:
    """The arguments given to mnistlab by `mnistlab ...`, `python -m mnistlab ...` or `torchrun ... -m mnistlab`."""
    if command[0] == "mnistlab":
        return command[1:]
    for i in range(len(command) - 1):
        if command[i] == "-m" and command[i + 1] == "mnistlab":
            return command[i + 2:]
    return None


def accepted(args: list[str]) -> str | None:
    """None when mnistlab's parser accepts `args`, else what it said."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(args)
        except SystemExit as e:
            return None if e.code == 0 else err.getvalue().strip()
    return None


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_shown_is_one_mnistlab_accepts(path):
    problems = []
    for command in commands(path):
        args = mnistlab_args(command)
        if args is not None:
            if (said := accepted(args)) is not None:
                problems.append(f"{shlex.join(command)}: {said}")
        elif command[:2] == ["pip", "install"]:
            for extras in re.findall(r"\.\[([\w,-]+)\]", " ".join(command)):
                problems += [f"{shlex.join(command)}: no extra {name!r}" for name in extras.split(",")
                             if name not in EXTRAS]
        elif command[0] in ("python", "bash") and command[1].startswith("benchmarks/"):
            if not (ROOT / command[1]).is_file():
                problems.append(f"{shlex.join(command)}: no file {command[1]}")
        elif command[:2] == ["jupyter", "lab"]:
            problems += [f"{shlex.join(command)}: no folder {a}" for a in command[2:] if not (ROOT / a).is_dir()]
    assert not problems, "\n".join(problems)


def test_the_readme_and_the_docs_show_commands():
    """The checks above see the commands (a change of fence or of parsing would make them pass on nothing)."""
    shown = [args for path in (README, *PAGES) for c in commands(path) if (args := mnistlab_args(c)) is not None]
    assert len(shown) > 40
    assert {args[0] for args in shown if args} >= {"train", "evaluate", "predict", "serve", "export", "inspect",
                                                 "sweep", "bench", "datasets", "runs", "plot"}


def test_every_command_has_its_place_in_the_docs():
    listed = (DOCS / "commands.md").read_text(encoding="utf-8")
    names = build_parser()._subparsers._group_actions[0].choices
    assert [name for name in names if f"`mnistlab {name}`" not in listed] == []


def test_every_public_name_is_in_the_api_reference():
    reference = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: mnistlab\.([\w.]+)$", reference, re.M))
    public = {f"{module}.{name}" for name, module in mnistlab._API.items()}
    assert public - documented == set(), "add them to docs/api.md"
    assert documented - public == set(), "docs/api.md documents names mnistlab does not export"


def test_the_readme_is_a_front_page_whose_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert links and [link for link in links if not (ROOT / link).exists()] == []
    for needed in ("--recipe fast", '".[notebooks]"', "jupyter lab notebooks/", "mnistlab predict",
                   "mnistlab serve", "docs/figures/serve.png", "mkdocs serve"):
        assert needed in text
    # Set-up order: the CPU build of torch comes before the first install of mnistlab.
    assert text.index("download.pytorch.org/whl/cpu") < text.index("pip install -e .")


def test_every_page_is_in_the_sites_navigation():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    in_nav = set(re.findall(r":\s+([\w-]+\.md)\s*$", config, re.M))
    assert {p.name for p in PAGES} == in_nav


def test_the_site_builds_strictly(tmp_path):
    """Broken links and anchors, pages missing from the navigation, an included file that is gone or a
    docstring the API reference cannot read all fail the build (strict: warnings are errors)."""
    pytest.importorskip("mkdocs", reason="the docs tools come with the test extra: pip install -e '.[test]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "site" / "api" / "index.html").is_file()
    reference = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "mnistlab.core.engine.train" in reference and "data_dir" in reference  # generated, not empty


@pytest.mark.slow
def test_the_readmes_first_run_works_as_written(tmp_path, real_mnist):
    """Every command of the README that needs no file of the reader's, run in order in an empty folder with
    MNISTLAB_DATA naming real MNIST: train --recipe fast, then evaluate, predict, datasets."""
    runnable = []
    for c in commands(README):
        args = mnistlab_args(c)
        # serve runs until stopped (test_serve runs it); the ladder trains for minutes to an hour (test_ladder).
        if (args is not None and args not in runnable and args[0] not in ("serve", "ladder")
                and not any("path/to" in a or "my_digit" in a or a == "synthetic" for a in args)):
            runnable.append(args)
    assert runnable[0] == ["train", "--recipe", "fast"] and len(runnable) >= 4
    # One thread: what is checked is that the commands work; on a busy CI machine two threads can take minutes.
    env = {**os.environ, "MNISTLAB_DATA": str(real_mnist), "HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    env.pop("MNISTLAB_DATA_DIR", None)
    for args in runnable:
        r = subprocess.run([sys.executable, "-m", "mnistlab", *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"mnistlab {shlex.join(args)}:\n{r.stdout}\n{r.stderr}"
        if args[0] == "train":
            assert "test accuracy 9" in r.stdout and (tmp_path / "runs" / "fast-mnist" / "model.json").is_file()
