"""The import graph of the package: no cycle, and imports point one way
(ops ← data, precision ← layers ← training ← tools ← command line).

Every import statement counts, also those inside functions (a lazy import is
still a dependency); the parent packages Python initializes on the way are
not counted as the importer's own."""
import ast
import pathlib

import jaxbp

ROOT = pathlib.Path(jaxbp.__file__).parent
# Lower layers first; a module may import its own layer and those before it.
LAYERS = [("jaxbp.ops", "jaxbp.autodiff", "jaxbp.validate"),
          ("jaxbp._files", "jaxbp.precision", "jaxbp.data"),
          ("jaxbp.layers",),
          ("jaxbp.train",),
          ("jaxbp.tools",),
          ("jaxbp.cli",)]


def _modules():
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def graph():
    """module -> the jaxbp modules it imports."""
    modules, edges = _modules(), {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from jaxbp import data`: the module jaxbp.data if there is one, else jaxbp itself.
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names}
        edges[name] = {t for t in targets if t in modules and t != name}
    return edges


def _layer(module):
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def cycles(edges):
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_the_source():
    edges = graph()
    assert "jaxbp.data.download" in edges["jaxbp.data"] and "jaxbp._files" in edges["jaxbp.data.download"]
    assert "jaxbp.train.audit" in edges["jaxbp.tools.gradcheck"]   # an import inside a function counts


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_imports_point_one_way():
    edges = graph()
    unplaced = [m for m in edges if m != "jaxbp" and _layer(m) is None]
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"
    upward = [(a, b) for a, targets in edges.items() for b in targets
              if a != "jaxbp" and b != "jaxbp" and _layer(b) > _layer(a)]
    assert not upward, f"imports from a lower layer into a higher one: {upward}"
