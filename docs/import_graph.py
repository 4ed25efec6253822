"""Draw mnistlab's import graph, layer by layer, as docs/figures/imports.png.

    python docs/import_graph.py            # reads src/mnistlab, writes docs/figures/imports.png

Each module is a box in its layer's band (the command line on top, then commands, core, base); each
arrow goes from a module to one it imports. tests/test_architecture.py holds the rules the picture
shows: no arrow runs upwards, and there is no cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mnistlab"
BANDS = [("command line", ("mnistlab.cli",)), ("commands", ("mnistlab.commands.",)),
         ("core", ("mnistlab.core.",)), ("base", ("mnistlab.base.",))]
COLOURS = {"command line": "#f2d7d5", "commands": "#d6eaf8", "core": "#d5f5e3", "base": "#fcf3cf"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__"):
            continue
        found[".".join(parts)] = path
    return found


def edges(known: dict[str, Path]) -> set[tuple[str, str]]:
    """(importer, imported) for every import between two modules of the package."""
    out = set()
    for name, path in known.items():
        package = name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
            for t in targets:
                while t and t not in known:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    out.add((name, t))
    return out


def reduced(links: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The imports not implied by others (a -> c is left out when a -> b -> ... -> c): the graph's skeleton."""
    after: dict[str, set[str]] = {}
    for a, b in links:
        after.setdefault(a, set()).add(b)

    def reachable(start: str, skip: str) -> set[str]:
        seen, todo = set(), [n for n in after.get(start, ()) if n != skip]
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo += after.get(node, ())
        return seen

    return {(a, b) for a, b in links if b not in reachable(a, b)}


def band(name: str) -> str:
    return next(title for title, prefixes in BANDS if name.startswith(prefixes))


def draw(out: Path) -> None:
    known = modules()
    every = edges(known)
    links = reduced(every)
    rows = {title: sorted(n for n in known if band(n) == title) for title, _ in BANDS}
    width = max(len(r) for r in rows.values())
    fig, ax = plt.subplots(figsize=(1.55 * width + 1.5, 9.5))
    place = {}
    for level, (title, _) in enumerate(BANDS):
        y = len(BANDS) - 1 - level
        names = rows[title]
        ax.add_patch(FancyBboxPatch((-0.9, y - 0.38), width + 0.8, 0.76, boxstyle="round,pad=0.02",
                                    facecolor=COLOURS[title], edgecolor="none", zorder=0))
        ax.text(-0.8, y + 0.3, title, fontsize=10, fontweight="bold", va="top")
        for k, name in enumerate(names):
            x = (k + 0.5) * width / len(names) - 0.5
            place[name] = (x, y)
            ax.text(x, y, name.rsplit(".", 1)[-1], ha="center", va="center", fontsize=8.5, zorder=3,
                    bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor="#555555", linewidth=0.8))
    for a, b in sorted(links):
        (xa, ya), (xb, yb) = place[a], place[b]
        if ya == yb:  # within a band: an arc from the top of one box to the top of the other, above them
            start, end, bend = (xa, ya + 0.12), (xb, yb + 0.12), -0.25 if xa < xb else 0.25
        else:
            start, end, bend = (xa, ya - 0.12), (xb, yb + 0.12), 0.06
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=7,
                                     connectionstyle=f"arc3,rad={bend}", color="#7f8c8d", linewidth=0.6,
                                     alpha=0.55, zorder=1))
    ax.set_xlim(-1.0, width)
    ax.set_ylim(-0.6, len(BANDS) - 0.4)
    ax.axis("off")
    ax.set_title(f"mnistlab: {len(known)} modules, {len(every)} imports between them, of which the {len(links)} not "
                 "implied by others are drawn;\nevery arrow points down or across a band, none up, and there is no "
                 "cycle", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "figures" / "imports.png")
