"""fusedopt's modules form layers without import cycles (issue 10): every module imports on
its own in a fresh interpreter, and the graph of fusedopt-internal imports, lazy
function-level imports included, is acyclic. fusedopt/_layout.py, which mirrors
tensor_table.h and common.h, imports nothing of fusedopt."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.no_gpu_needed

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fusedopt"
# Entry points run as scripts, and the bench harness (imports the whole package on purpose).
NOT_IMPORTED_ALONE = {"fusedopt.__main__", "fusedopt.bench.__main__"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def imported_modules(path: pathlib.Path):
    """fusedopt modules a file imports anywhere (top level or inside functions)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from . import x` imports the submodule x when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("fusedopt") and name in MODULES and name != this:
                yield name


def graph():
    return {module_name(p): set(imported_modules(p)) for p in PACKAGE.rglob("*.py")}


def ancestors(name: str):
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_internal_imports_have_no_cycle():
    edges = graph()
    # A package's __init__ runs before its submodules, so a submodule importing its own
    # package (or one above) is how Python works, not a layering cycle: drop those edges.
    edges = {m: {t for t in targets if t not in ancestors(m)} for m, targets in edges.items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_layout_module_is_a_leaf():
    assert graph()["fusedopt._layout"] == set()


def test_backends_do_not_import_the_optimizers_or_buckets():
    edges = graph()
    for module, targets in edges.items():
        if module.startswith("fusedopt.backends"):
            assert not {t for t in targets if t.startswith("fusedopt.optim") and t != "fusedopt.optim._spec"}, module
            assert "fusedopt._buckets" not in targets, module


def test_every_module_imports_alone():
    """Each module in a child forked from an interpreter that has imported torch (and triton)
    but nothing of fusedopt: as alone as a fresh interpreter, at a fraction of the cost."""
    names = [m for m in MODULES if m not in NOT_IMPORTED_ALONE]
    script = ("import os, sys, importlib, traceback\n"
              "import torch\n"
              "try:\n    import triton\nexcept ImportError:\n    pass\n"
              "assert not any(m.startswith('fusedopt') for m in sys.modules)\n"
              "failed = []\n"
              "for name in sys.argv[1:]:\n"
              "    read, write = os.pipe()\n"
              "    pid = os.fork()\n"
              "    if pid == 0:\n"
              "        os.close(read)\n"
              "        try:\n            importlib.import_module(name); code = 0\n"
              "        except BaseException:\n"
              "            os.write(write, traceback.format_exc().strip().splitlines()[-1].encode()); code = 1\n"
              "        os._exit(code)\n"
              "    os.close(write)\n"
              "    message = os.read(read, 4096).decode(); os.close(read)\n"
              "    if os.waitpid(pid, 0)[1]:\n        failed.append(f'{name}: {message}')\n"
              "print('\\n'.join(failed)); sys.exit(bool(failed))\n")
    result = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
