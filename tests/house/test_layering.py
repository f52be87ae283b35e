"""The house rules of src/sencache, checked on its source (AST) and in a fresh interpreter.

Layers, dependencies pointing down only:

    errors, version, toolbox  <-  core, statistics  <-  adapter, runtime  <-  calibration, methods  <-  report
    <-  harness  <-  cli
    (adapter and runtime do not know each other, nor do calibration and methods, nor calibration and harness: the
    harness reads calibrated baselines through the methods' context, never by importing calibration)
    demo_model: a leaf that only the CLI (and tests, scripts, benchmarks) import

plus: no import cycle, no function-local import of the package's own modules, no cross-module import of an
``_underscore`` name, the core free of diffusers / transformers / torch.distributed, and nothing outside the
adapter touching a CacheSession's private state.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "sencache"

# layer of each top-level part of the package; a module may import only its own layer or lower ones
LAYERS = {
    "errors": 0, "version": 0, "toolbox": 0,
    "core": 1, "budget": 1, "statistics": 1,  # sencache.budget: the public name of core.budget
    "adapter": 2, "runtime": 2,
    "calibration": 3, "methods": 3,
    "report": 4,
    "harness": 5,
    "cli": 6,
}
# same layer, must not know each other
SIBLINGS_APART = {("adapter", "runtime"), ("runtime", "adapter"), ("calibration", "harness"),
                  ("harness", "calibration"), ("calibration", "methods"), ("methods", "calibration")}
CORE_FORBIDDEN = ("diffusers", "transformers", "torch.distributed", "accelerate")


def module_map(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``package``."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = ("sencache",) + path.relative_to(package).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = module_map(PACKAGE)


def part_of(module: str) -> str:
    """"core" for sencache.core.rules.base, "face" for the package itself, "demo_model", ..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "face"


def resolve(module: str, node: ast.ImportFrom, modules: dict[str, Path]) -> str:
    if not node.level:
        return node.module or ""
    is_package = modules[module].name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, modules: dict[str, Path] = MODULES):
    """(imported module, imported names, node, inside a function) for every import statement of ``module``."""
    tree = ast.parse(modules[module].read_text(encoding="utf-8"))
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(fn) if n is not fn)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node, id(node) in inside
        elif isinstance(node, ast.ImportFrom):
            yield resolve(module, node, modules), [a.name for a in node.names], node, id(node) in inside


def own_targets(target: str, names: list[str], modules: dict[str, Path] = MODULES) -> list[str]:
    """The package modules an import statement depends on (``from a import b`` with b a module -> a.b)."""
    if target.split(".")[0] != "sencache":
        return []
    subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
    rest = [n for n in names if f"{target}.{n}" not in modules]
    return subs + ([target] if (rest or not names) and target in modules else [])


def graph(modules: dict[str, Path] = MODULES) -> dict[str, set[str]]:
    return {m: {t for target, names, _, _ in imports_of(m, modules) for t in own_targets(target, names, modules)} - {m}
            for m in modules}


def import_cycles(modules: dict[str, Path] = MODULES) -> list[list[str]]:
    """Every set of modules that import each other in a circle (Tarjan's strongly connected components)."""
    edges = graph(modules)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return cycles


def upward_dependencies(modules: dict[str, Path] = MODULES) -> list[str]:
    """Imports that break the layering, each as 'importer -> imported (why)'."""
    wrong = []
    for module, targets in graph(modules).items():
        mine = part_of(module)
        for target in targets:
            theirs = part_of(target)
            if mine == theirs or theirs == "face" and mine in ("cli", "demo_model"):
                continue
            if theirs == "demo_model":
                if mine != "cli":
                    wrong.append(f"{module} -> {target} (only the CLI may import the demo model)")
                continue
            if mine in ("face", "demo_model"):
                if mine == "face" and theirs not in ("core", "budget", "errors", "version"):
                    wrong.append(f"{module} -> {target} (the package face imports only the core eagerly)")
                continue
            if theirs == "face":
                wrong.append(f"{module} -> {target} (import the defining module, not the package face)")
            elif LAYERS[theirs] > LAYERS[mine] or (mine, theirs) in SIBLINGS_APART:
                wrong.append(f"{module} -> {target} ({mine} may not depend on {theirs})")
    return wrong


def local_imports(modules: dict[str, Path] = MODULES) -> list[str]:
    """Imports of the package's own modules inside functions (they hide cycles)."""
    return [f"{m}:{node.lineno} imports {target}" for m in modules for target, names, node, inside
            in imports_of(m, modules) if inside and own_targets(target, names, modules)]


def test_no_import_cycle():
    cycles = import_cycles()
    assert not cycles, f"import cycles: {cycles}"


def test_dependencies_point_down():
    wrong = upward_dependencies()
    assert not wrong, "\n".join(wrong)


def test_no_function_local_imports_of_the_package():
    local = local_imports()
    assert not local, "\n".join(local)


def test_no_cross_module_import_of_private_names():
    private = [f"{m}:{node.lineno} imports {target}.{n}" for m in MODULES for target, names, node, _ in imports_of(m)
               if target.split(".")[0] == "sencache" for n in names
               if n.startswith("_") and not n.startswith("__")]
    private += [f"{m}:{node.lineno} imports module {target}" for m in MODULES for target, _, node, _ in imports_of(m)
                if target.split(".")[0] == "sencache" and any(p.startswith("_") and not p.startswith("__")
                                                               for p in target.split("."))]
    assert not private, "\n".join(private)


def test_core_never_imports_frameworks_or_upper_layers():
    bad = [f"{m}:{node.lineno} imports {target}" for m in MODULES if part_of(m) == "core"
           for target, _, node, _ in imports_of(m)
           if target.startswith(CORE_FORBIDDEN)]
    assert not bad, "\n".join(bad)


SESSION_PARTS = ("session", "call_protocol", "residual_store", "step_clock", "trace_recorder", "rank_guard")


def session_private_names() -> set[str]:
    """Attributes and methods whose names start with '_' of the classes a CacheSession is made of (read from their
    source: the session, its call protocol, residual store, step clock, trace recorder and rank guard)."""
    names = set()
    for part in SESSION_PARTS:
        tree = ast.parse((PACKAGE / "adapter" / f"{part}.py").read_text(encoding="utf-8"))
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            names |= {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
            names |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
                      and isinstance(n.value, ast.Name) and n.value.id == "self"}
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_nothing_outside_the_session_reads_its_internals():
    """Code outside the adapter, and the hooks inside it, use the session's and the call protocol's public names."""
    private = session_private_names()
    assert {"_remove", "_decide", "_generation_for", "_shift_history"} <= private  # the real names are looked at
    bad = []
    for module, path in MODULES.items():
        if part_of(module) == "adapter" and module != "sencache.adapter.hooks":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in private:
                bad.append(f"{module}:{node.lineno} reads .{node.attr}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("statement", [
    "import sencache",
    "import " + ", ".join(m for m in MODULES if part_of(m) == "core"),
])
def test_core_imports_without_diffusers(statement):
    code = (f"import sys; {statement}; "
            "bad = [m for m in ('diffusers', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_layering_checks_catch_violations(tmp_path):
    """The checks fail on planted violations: a core module importing the adapter inside a function, and a
    cycle between two runtime modules."""
    root = tmp_path / "sencache"
    for name, text in {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/rule.py": "def f():\n    from sencache.adapter.hooks import enable\n    return enable\n",
        "adapter/__init__.py": "",
        "adapter/hooks.py": "from sencache.core.rule import f\n",
        "runtime/__init__.py": "",
        "runtime/a.py": "from sencache.runtime import b\n",
        "runtime/b.py": "from sencache.runtime.a import x\nx = 1\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name and text)
    planted = module_map(root)
    assert upward_dependencies(planted) == [
        "sencache.core.rule -> sencache.adapter.hooks (core may not depend on adapter)"
    ]
    assert local_imports(planted) == ["sencache.core.rule:2 imports sencache.adapter.hooks"]
    assert sorted(map(sorted, import_cycles(planted))) == [["sencache.adapter.hooks", "sencache.core.rule"],
                                                           ["sencache.runtime.a", "sencache.runtime.b"]]
    assert upward_dependencies() == [] and local_imports() == [] and import_cycles() == []


def documented_layers(text: str) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """The layer table and the pairs kept apart, as docs/layout.md's "Layers" list states them."""
    layers, apart = {}, set()
    for line in text.splitlines():
        match = re.fullmatch(r"- layer (\d+): (.+)", line.strip())
        if match:
            layers.update({name.strip(): int(match.group(1)) for name in match.group(2).split(",")})
        elif line.strip().startswith("- apart: "):
            for pair in line.strip().removeprefix("- apart: ").split(";"):
                a, b = (name.strip() for name in pair.split(" and "))
                apart |= {(a, b), (b, a)}
    return layers, apart


def test_the_layout_doc_states_the_layers_the_code_keeps():
    layers, apart = documented_layers((PACKAGE.parents[1] / "docs" / "layout.md").read_text(encoding="utf-8"))
    assert layers == LAYERS
    assert apart == SIBLINGS_APART
    tops = {part_of(m) for m in MODULES} - {"face", "demo_model"}
    assert tops <= set(LAYERS), f"parts of the package on no layer: {sorted(tops - set(LAYERS))}"


def test_the_layout_doc_parser_sees_a_changed_layer():
    text = "- layer 0: errors\n- layer 1: core, statistics\n- apart: adapter and runtime\n"
    assert documented_layers(text) == ({"errors": 0, "core": 1, "statistics": 1},
                                       {("adapter", "runtime"), ("runtime", "adapter")})
    assert documented_layers(text.replace("layer 1", "layer 2"))[0]["core"] == 2


MAX_CLASS_LINES, MAX_FUNCTION_LINES = 150, 50


def oversized(paths) -> list[str]:
    """Classes over MAX_CLASS_LINES and functions over MAX_FUNCTION_LINES lines (docstrings included)."""
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef) and lines > MAX_CLASS_LINES:
                out.append(f"{path.name}: class {node.name} has {lines} lines")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and lines > MAX_FUNCTION_LINES:
                out.append(f"{path.name}: {node.name}() has {lines} lines")
    return out


def test_adapter_and_core_keep_classes_and_functions_short():
    paths = [p for m, p in MODULES.items() if part_of(m) in ("adapter", "core")]
    assert len(paths) > 20
    assert not oversized(paths), "\n".join(oversized(paths))


def test_the_size_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f"def long():\n{body}\n")
    assert oversized([path]) == [f"long.py: long() has {MAX_FUNCTION_LINES + 1} lines"]


def name_ladders(paths) -> list[str]:
    """``if name == "..."`` / ``name in (...)`` tests on a method name: what one object per method replaces."""
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "name" and any(
                    isinstance(c, (ast.Constant, ast.Tuple, ast.Set, ast.List)) for c in node.comparators):
                out.append(f"{path.name}:{node.lineno}")
    return out


def test_methods_are_objects_not_name_ladders(tmp_path):
    paths = [p for m, p in MODULES.items() if part_of(m) == "methods"]
    assert len(paths) >= 5 and not name_ladders(paths), name_ladders(paths)
    planted = tmp_path / "ladder.py"
    planted.write_text('def config(name):\n    if name == "magcache":\n        return 1\n')
    assert name_ladders([planted]) == ["ladder.py:2"]


def undocumented(paths) -> list[str]:
    """Public classes, functions and methods (names without a leading '_') that have no docstring."""
    out = []

    def visit(body, path, prefix):
        for node in body:
            named = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if named and not node.name.startswith("_"):
                setter = any(isinstance(d, ast.Attribute) and d.attr == "setter" for d in node.decorator_list)
                if not ast.get_docstring(node) and not setter:
                    out.append(f"{path.name}:{node.lineno} {prefix}{node.name}")
                if isinstance(node, ast.ClassDef):
                    visit(node.body, path, f"{prefix}{node.name}.")

    for path in paths:
        visit(ast.parse(path.read_text(encoding="utf-8")).body, path, "")
    return out


def test_every_public_name_has_a_docstring(tmp_path):
    assert not undocumented(MODULES.values()), "\n".join(undocumented(MODULES.values()))
    planted = tmp_path / "bare.py"
    planted.write_text('class Bare:\n    """Said."""\n\n    def method(self):\n        return 1\n')
    assert undocumented([planted]) == ["bare.py:4 Bare.method"]
