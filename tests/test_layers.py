"""The import graph points one way: cli -> experiments / inference / export -> train ->
models / evaluation / data / losses -> the neutral modules (tools/import_graph.py)."""

from __future__ import annotations

import importlib.util

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("import_graph", REPO / "tools" / "import_graph.py")
graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(graph)


def test_no_import_points_up_or_closes_a_circle():
    edges = graph.arrows()
    assert ("train", "models") in edges and ("cli", "experiments") in edges  # it reads the real tree
    upward = [(a, b, files) for (a, b), files in edges.items() if graph.LEVEL.get(b, 0) > graph.LEVEL.get(a, 0)]
    assert not upward
    assert not graph.circles(edges)


def test_an_upward_import_and_a_circle_would_be_found(tmp_path):
    pkg = tmp_path / "cupre"
    for name, text in {"modelfile.py": "def f():\n    from cupre.models.loading import x\n",
                       "models/__init__.py": "", "models/loading.py": "from cupre.train import y\n",
                       "train/__init__.py": "import cupre.models.loading\n"}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    edges = graph.arrows(pkg)
    assert {("modelfile", "models"), ("models", "train"), ("train", "models")} <= set(edges)
    assert graph.LEVEL["models"] > graph.LEVEL["modelfile"]  # the lazy import inside f() is an upward arrow
    assert graph.circles(edges) == [["models", "train", "models"]]
