"""No function in refvit/ is longer than 60 lines or takes more than 6 parameters (methods: not counting self/cls,
nor *args/**kwargs) unless its docstring says why, in a sentence starting "Why so long:" or "Why so many
parameters:" — a long function or a long signature is a choice someone made and wrote down."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES, MAX_PARAMS = 60, 6


def sizes():
    """(place, name, lines, parameters, docstring) of every function and method under refvit/."""
    for f in sorted((ROOT / "refvit").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
                if params[:1] in (["self"], ["cls"]):
                    params = params[1:]
                yield (f"{f.relative_to(ROOT)}:{node.lineno}", node.name, node.end_lineno - node.lineno + 1,
                       len(params), ast.get_docstring(node) or "")


def test_long_functions_and_long_signatures_say_why():
    unexplained = []
    for place, name, lines, params, doc in sizes():
        if lines > MAX_LINES and "Why so long:" not in doc:
            unexplained.append(f"{place} {name}: {lines} lines")
        if params > MAX_PARAMS and "Why so many parameters:" not in doc:
            unexplained.append(f"{place} {name}: {params} parameters")
    assert not unexplained, ("split these, or say in the docstring why not (\"Why so long: …\" / \"Why so many "
                             "parameters: …\"):\n" + "\n".join(unexplained))


def test_the_scan_measures_what_it_says():
    found = {name: (lines, params) for _, name, lines, params, _ in sizes()}
    assert found["run"][1] == 4                                   # refvit/runner.py: model, pixel_values, opts, recorder
    assert found["loads"] == (found["loads"][0], 4) and found["record_output"][1] == 2    # self is not counted
