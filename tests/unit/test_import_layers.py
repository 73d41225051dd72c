"""labkit's modules form layers without cycles: read from the source with `ast`, imports inside
functions included (an import moved into a function to dodge a cycle is still a cycle).

Run with -s to see the layers; docs/architecture.md shows the same picture, module by module.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import labkit

ROOT = Path(labkit.__file__).parent


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package] + parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: the package's modules it imports anywhere in its source (module level or in a function)}."""
    files = {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:   # relative: resolved against the importing module's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from pkg import sub` imports the submodule pkg.sub when there is one
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:      # labkit.net.Network -> labkit.net
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layers(graph: dict[str, set[str]]) -> dict[int, list[str]]:
    """Layer 0 imports nothing of the package; layer n imports only from layers below n."""
    level: dict[str, int] = {}

    def depth(v):
        if v not in level:
            level[v] = 1 + max((depth(w) for w in graph[v]), default=-1)
        return level[v]

    result: dict[int, list[str]] = {}
    for v in sorted(graph):
        result.setdefault(depth(v), []).append(v)
    return result


def test_labkit_has_no_import_cycle():
    graph = import_graph(ROOT, "labkit")
    found = cycles(graph)
    assert not found, "import cycles in labkit (each line: modules that import each other in a circle):\n" + \
        "\n".join(" <-> ".join(c) for c in found)
    print()
    for n, modules in sorted(layers(graph).items()):
        print(f"layer {n}: {', '.join(m.removeprefix('labkit.') or 'labkit' for m in modules)}")


def test_a_cycle_made_on_purpose_is_found_even_inside_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "leaf.py").write_text("X = 1\n")
    (pkg / "a.py").write_text("from . import leaf\n\ndef f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.leaf", "pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    (pkg / "sub" / "b.py").write_text("from ..leaf import X\n")
    graph = import_graph(pkg, "pkg")
    assert cycles(graph) == [] and layers(graph)[0] == ["pkg", "pkg.leaf", "pkg.sub"]


def test_host_is_a_leaf_and_views_sit_on_no_kernel_module():
    graph = import_graph(ROOT, "labkit")
    assert graph["labkit.host"] <= {"labkit.syscalls", "labkit.errors", "labkit.mountinfo"}, graph["labkit.host"]
    for view in ("labkit.netview", "labkit.vmview"):
        assert graph[view] == set(), (view, graph[view])


def test_docs_architecture_has_one_line_per_module():
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    listed = {m if m == "labkit" else f"labkit.{m}" for m in re.findall(r"^\| \d+ \| `([a-z0-9_.]+)` \|", doc, re.M)}
    modules = set(import_graph(ROOT, "labkit"))
    assert not modules - listed, f"add a line to docs/architecture.md for: {sorted(modules - listed)}"
    assert not listed - modules, f"docs/architecture.md lists modules that do not exist: {sorted(listed - modules)}"


def test_docs_architecture_shows_each_modules_layer_and_imports_as_the_source_has_them():
    graph = import_graph(ROOT, "labkit")
    level = {m: n for n, ms in layers(graph).items() for m in ms}
    short = lambda m: m.removeprefix("labkit.") or "labkit"
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| `([a-z0-9_.]+)` \| [^|]* \| ([^|]*) \|", doc, re.M)
    assert len(rows) == len(re.findall(r"^\| \d+ \| `", doc, re.M)), "a row whose columns this test cannot read"
    stale = []
    for layer, module, uses in rows:
        full = module if module == "labkit" else f"labkit.{module}"
        if full not in graph:
            continue                     # the test above names it
        actual = ", ".join(sorted(short(m) for m in graph[full])) or "-"
        if int(layer) != level[full] or {u.strip() for u in uses.split(",")} != {u.strip() for u in actual.split(",")}:
            stale.append(f"| {level[full]} | `{module}` | ... | {actual} |")
    assert not stale, "docs/architecture.md: correct these rows' layer and uses:\n" + "\n".join(stale)


def test_no_module_imports_another_modules_private_names():
    reaches = []
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text())
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("labkit")):
                for alias in node.names:
                    modules.add(alias.asname or alias.name)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        reaches.append(f"{path.relative_to(ROOT)}: from {node.module} import {alias.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                reaches.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not reaches, "make what is shared public, named for what it does:\n" + "\n".join(reaches)


def test_every_module_is_under_600_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    over = sorted(name for name, lines in sizes.items() if lines >= 600)
    assert not over, f"over 600 lines, split along a seam: {over}"
