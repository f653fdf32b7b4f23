"""The package's layering, read from the source (function-local imports included).

Layers, bottom to top; a module imports only its own layer and those below it:
  base     errors, settings, names, checks, formats, cache, data, conceptsets, wordnet, version
  store    store/ (DuckDB access, the index directory, bulk writes, FAISS vectors)
  nets     nets/ (models, layer tracing, receptive fields, taps, per-batch reductions)
  science  science/ (computations from arrays; imports nets, never storage)
  query    query/ (read side: the Reader, guarded SQL, search, export, stored categories, maps, pictures)
  jobs     jobs/ (open an index, compute, publish)
  facade   api, the package's __init__
  edges    report, demo, service/, the CLI
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"neuronindex": ROOT / "neuronindex", "neuronindex_cli": ROOT / "cli"}
BASE = {"errors", "settings", "names", "checks", "formats", "cache", "data", "conceptsets", "wordnet", "version"}
ORDER = ["base", "store", "nets", "science", "query", "jobs", "facade", "edges"]
# what each layer may import besides itself (science never touches storage; nets and store are apart)
ALLOWED = {"base": set(), "store": {"base"}, "nets": {"base"}, "science": {"base", "nets"},
           "query": {"base", "store", "nets", "science"}, "jobs": {"base", "store", "nets", "science", "query"},
           "facade": {"base", "store", "nets", "science", "query", "jobs"},
           "edges": {"base", "store", "nets", "science", "query", "jobs", "facade"}}


def modules() -> dict[str, Path]:
    found = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [pkg, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "neuronindex_cli" or (len(parts) > 1 and parts[1] in ("service", "report", "demo")):
        return "edges"
    if module == "neuronindex" or parts[1] == "api":
        return "facade"
    if parts[1] in BASE:
        return "base"
    return parts[1]


def imports(found: dict[str, Path]) -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported project module, line, inside a function)]."""
    out = {}
    for mod, path in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                subs = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in found]
                targets = subs if len(subs) == len(node.names) else [prefix, *subs]
            else:
                continue
            for t in targets:
                if t in found and t != mod:
                    edges.append((t, node.lineno, id(node) in local))
        out[mod] = edges
    return out


@pytest.fixture(scope="module")
def graph():
    found = modules()
    return found, imports(found)


def test_the_layers_are_read_from_real_files(graph):
    found, edges = graph
    # a hand-made tally, so an empty walk cannot pass: every layer holds modules
    assert {layer(m) for m in found} == set(ORDER)
    assert layer("neuronindex.jobs.ingest") == "jobs" and layer("neuronindex.query.reader") == "query"
    assert any(t == "neuronindex.query.reader" for t, _, _ in edges["neuronindex.api"])


def cycles(nodes, edges) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _, _ in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_project_modules(graph):
    found, edges = graph
    assert cycles(found, edges) == []


def test_a_planted_cycle_is_found(graph):
    """The check above can fail: a function-local import of the facade from a base module closes
    a cycle through every module on the way from the facade to that base module."""
    found, edges = graph
    planted = {k: list(v) for k, v in edges.items()}
    planted["neuronindex.errors"].append(("neuronindex.api", 1, True))
    (component,) = cycles(found, planted)
    assert {"neuronindex.api", "neuronindex.errors", "neuronindex.query.reader"} <= set(component)


def test_every_import_goes_down_the_layers(graph):
    found, edges = graph
    wrong = [f"{m}:{line} imports {t} ({layer(m)} -> {layer(t)})" for m, targets in edges.items()
             for t, line, _ in targets if layer(t) != layer(m) and layer(t) not in ALLOWED[layer(m)]]
    assert wrong == []


def test_project_modules_import_each_other_at_module_level(graph):
    """Function-local imports hide routes; only optional packages (ray, umap, timm, the compiled
    kernels) are imported where they are used, and those are not project modules."""
    found, edges = graph
    local = [f"{m}:{line} imports {t} inside a function" for m, targets in edges.items() for t, line, inside in targets
             if inside]
    assert local == []


SQL_WORDS = __import__("re").compile(r"\b(SELECT|INSERT|UPDATE|DELETE|JOIN)\b[^\"']*\b(FROM|INTO|SET|ON)\b")


def test_the_edges_hold_no_sql():
    """The service and the CLI only parse and format: no SQL text and no raw connection use in
    them (the queries live behind the Python API). The scan finds SQL where it is planted."""
    assert SQL_WORDS.search('x = "SELECT a FROM b"') and not SQL_WORDS.search('"send {\\"sql\\": \\"SELECT ...\\"}"')
    found = []
    for folder in (PACKAGES["neuronindex"] / "service", PACKAGES["neuronindex_cli"]):
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_WORDS.search(node.value):
                    found.append(f"{path.name}:{node.lineno}: {node.value[:60]}")
                if isinstance(node, ast.Attribute) and node.attr in ("con", "execute") and \
                        isinstance(node.value, ast.Name) and node.value.id in ("idx", "index", "view"):
                    found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert found == []
