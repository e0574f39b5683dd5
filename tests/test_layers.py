"""refvit's imports go one way: the layer table at the top of docs/DESIGN.md §1 is read here, every module of refvit/
must sit in exactly one layer, no import (at module level or inside a function) may reach a higher layer, and the
import graph between modules has no cycle."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "refvit"


def design_layers() -> dict[str, int]:
    """{top-level name under refvit/ ("model", "models", "__init__"): layer number} from DESIGN.md §1's table."""
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    section = text.split("\n## 1.", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for row in re.findall(r"^\| *(\d+) *\|([^|]*)\|", section, re.M):
        for name in re.findall(r"`([^`]+)`", row[1]):
            layers[name.removesuffix(".py").removesuffix("/")] = int(row[0])
    assert layers, "docs/DESIGN.md §1 has no layer table (| N | `module.py` … |)"
    return layers


def modules() -> dict[str, Path]:
    """{dotted module name: file} for every .py under refvit/ ("refvit" is the package's __init__)."""
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, file: Path, known: dict) -> set[str]:
    """The refvit modules `file` imports anywhere in it (a name imported from a package counts as the submodule when
    there is one, else as the package)."""
    package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else (node.module or "")
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer_of(module: str, layers: dict) -> int:
    top = "__init__" if module == "refvit" else module.split(".")[1]
    assert top in layers, f"refvit/{top} is in no layer of docs/DESIGN.md §1's table: add it to the table"
    return layers[top]


def test_every_import_goes_down_or_sideways():
    layers, known = design_layers(), modules()
    upward = []
    for name, file in known.items():
        for target in imports(name, file, known):
            if layer_of(target, layers) > layer_of(name, layers):
                upward.append(f"{name} (layer {layer_of(name, layers)}) imports {target} "
                              f"(layer {layer_of(target, layers)})")
    assert not upward, "imports against the layer order of docs/DESIGN.md §1:\n" + "\n".join(upward)


def test_no_import_cycle():
    known = modules()
    graph = {name: imports(name, file, known) for name, file in known.items()}
    state, stack = {}, []

    def visit(node):                                        # depth-first: a grey node met again closes a cycle
        state[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "grey":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "black"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_walk_sees_lazy_and_relative_imports():
    """The checker itself: a function-level `from .. import hub` and a package's submodule are found."""
    known = modules()
    assert "refvit.hub" in imports("refvit.processing.base", known["refvit.processing.base"], known)
    assert "refvit.models.architecture" in imports("refvit.runner", known["refvit.runner"], known)
    assert "refvit.processing" in imports("refvit.verify", known["refvit.verify"], known)    # inside a function
