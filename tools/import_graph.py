"""Print cupre's import graph between its packages and check its direction.

    python tools/import_graph.py            # edges, then any upward arrow or circle; exit 1 if any

Every ``import`` / ``from ... import`` of a ``cupre`` module, at the top of a file or inside
a function, is an arrow from the importing package to the imported one. The layers, from
the top: ``cli`` and the napari plugin; ``experiments``, ``inference`` and ``export``;
``train``; ``models``, ``detect``, ``evaluation``, ``data`` and ``losses``; and the neutral modules
(``config``, ``errors``, ``fileio``, ``devices``, ``masks``, ``modelfile``, ``shipped``, ``scale``,
``runlock``, ``methods``). An arrow may point down or sideways, never up; arrows between packages
must not close a circle.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "cupre"
LAYERS = [
    {"cli", "napari_plugin"},
    {"experiments", "inference", "export"},
    {"train"},
    {"models", "detect", "evaluation", "data", "losses"},
    {"config", "errors", "fileio", "devices", "masks", "modelfile", "shipped", "scale", "runlock", "methods",
     "presets", "__init__"},
]
LEVEL = {name: len(LAYERS) - i for i, layer in enumerate(LAYERS) for name in layer}


def package_of(module: str) -> str:
    """``cupre.train.finetune`` -> ``train``; ``cupre`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def arrows(root: Path = ROOT) -> dict[tuple[str, str], list[str]]:
    """``(from package, to package)`` -> the files that import across it."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        here = package_of(".".join(rel.parts))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [])
            for name in names:
                if name == "cupre" or name.startswith("cupre."):
                    there = package_of(name)
                    if there != here:
                        found[here, there].append(str(path.relative_to(root.parent)))
    return found


def circles(edges) -> list[list[str]]:
    """Package cycles (each once, from its smallest name)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    out = []

    def visit(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt == start:
                out.append(path + [start])
            elif nxt not in path and nxt > start:
                visit(start, nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, start, [start])
    return out


def main() -> int:
    edges = arrows()
    for (a, b), files in sorted(edges.items()):
        print(f"{a:14s} -> {b:14s} ({len(files)} import(s))")
    upward = [(a, b, files) for (a, b), files in sorted(edges.items()) if LEVEL.get(b, 0) > LEVEL.get(a, 0)]
    for a, b, files in upward:
        print(f"UPWARD: {a} -> {b} in {', '.join(sorted(set(files)))}")
    loops = circles(edges)
    for loop in loops:
        print(f"CIRCLE: {' -> '.join(loop)}")
    print(f"{len(edges)} arrows between packages, {len(upward)} upward, {len(loops)} circles")
    return 1 if upward or loops else 0


if __name__ == "__main__":
    sys.exit(main())
