"""The layout is the architecture: three layers and the command line on top, no import cycle, no import
from a lower layer up to a higher one, imports at the top of each module, and every module importable on
its own."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "mnistlab"
LAYERS = {"base": 0, "core": 1, "commands": 2}
TOP = 3  # cli.py and __main__.py
# Heavy optional dependencies may be imported where they are used, so that mnistlab works without them
# (and `import mnistlab.commands.figures` does not start matplotlib).
LAZY_ALLOWED = {"fastapi", "starlette", "uvicorn", "onnx", "onnxruntime", "matplotlib", "tensorboard",
                "torch.utils.tensorboard", "qrcode", "segno", "tqdm", "torchvision", "mkdocs"}


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS[parts[1]]
    return TOP if name != "mnistlab" else -1  # the package's own __init__ imports nothing at its top


def imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module top?) for each import of `path`, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.level and not node.module:  # `from . import x`: x is a module
                out += [(f"{target}.{alias.name}", id(node) in top_level) for alias in node.names]
            else:
                out.append((target, id(node) in top_level))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, _ in imports(name, path):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("mnistlab") and target != name and target in known and target != "mnistlab":
                edges[name].add(target)
    return edges


def test_no_module_imports_from_a_higher_layer():
    upward = [(a, b) for a, targets in graph().items() for b in targets if layer(b) > layer(a)]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_imports_are_at_the_top_of_each_module_but_heavy_optional_ones_and_the_cli_s_commands():
    inside = []
    for name, path in modules().items():
        for target, at_top in imports(name, path):
            if at_top or target.split(".")[0] in {t.split(".")[0] for t in LAZY_ALLOWED} or target in LAZY_ALLOWED:
                continue
            if layer(name) == TOP and target.startswith("mnistlab"):
                continue  # the command line imports the command it runs, not all of them (see cli.py)
            if target in ("fcntl", "msvcrt", "resource", "tomli", "tomllib"):
                continue  # the platform's or the Python version's module, where it exists
            inside.append(f"{name}: {target}")
    assert inside == []


def test_every_module_imports_on_its_own():
    names = sorted(n for n in modules() if n != "mnistlab.__main__")
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    for loaded in [m for m in sys.modules if m == 'mnistlab' or m.startswith('mnistlab.')]:\n"
            "        del sys.modules[loaded]\n"
            "    importlib.import_module(name)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
