"""The house rules of src/sencache, checked on its source (AST) and in a fresh interpreter.

Layers, dependencies pointing down only:

    errors, version  <-  core  <-  adapter, runtime  <-  calibration, harness  <-  cli
    (adapter and runtime do not know each other, nor do calibration and harness: the harness reads calibrated
    baselines through the methods' context, never by importing calibration)
    demo_model: a leaf that only the CLI (and tests, scripts, benchmarks) import

plus: no import cycle, no function-local import of the package's own modules, no cross-module import of an
``_underscore`` name, the core free of diffusers / transformers / torch.distributed, and nothing outside the
adapter touching a CacheSession's private state.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sencache"

# layer of each top-level part of the package; a module may import only its own layer or lower ones
LAYERS = {
    "errors": 0, "version": 0, "toolbox": 0,
    "core": 1, "budget": 1,  # sencache.budget: the public name of core.budget
    "adapter": 2, "runtime": 2,
    "calibration": 3, "harness": 3,
    "cli": 4,
}
# same layer, must not know each other
SIBLINGS_APART = {("adapter", "runtime"), ("runtime", "adapter"), ("calibration", "harness"),
                  ("harness", "calibration")}
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


def session_private_names() -> set[str]:
    """Attributes and methods of CacheSession whose names start with '_' (read from its source)."""
    tree = ast.parse((PACKAGE / "adapter" / "session.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CacheSession")
    names = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    names |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
              and isinstance(n.value, ast.Name) and n.value.id == "self"}
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_nothing_outside_the_adapter_reads_session_internals():
    private = session_private_names()
    assert {"_gen", "_call", "_decide"} <= private  # the check below must be looking at the real names
    bad = []
    for module, path in MODULES.items():
        if part_of(module) == "adapter":
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
