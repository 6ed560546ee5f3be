"""The helper package's layout rules (README, "Inside workshop_utils"): floors whose imports point down, module-level
imports only, no cycles, no module over 400 lines, one error base, and a package an instructor reads in an afternoon."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workshop_utils"
MAX_MODULE_LINES = 400
MAX_PACKAGE_LINES = 9_300
MAX_EXCEPTION_CLASSES = 20
OPTIONAL_HEAVY = {  # may be imported inside the function that needs them, with a comment saying why
    "fastapi", "uvicorn", "starlette", "python_multipart", "selenium",  # only `serve` and its browser test need them
    "google",  # google.colab exists only on Colab
    "tensorflow", "keras", "absl",  # core.runtime.import_tensorflow imports them with stderr silenced: the one place
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _floor(module: str) -> str:
    """core / backbones / lesson / interop / apps / tooling (the package's own entry points count as apps)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in {"core", "backbones", "interop", "apps", "tooling"}:
        return parts[1]
    return "apps" if module in {"workshop_utils", "workshop_utils.__main__"} else "lesson"


MAY_IMPORT = {
    "core": {"core"},
    "backbones": {"core", "backbones"},
    "lesson": {"core", "backbones", "lesson"},
    "interop": {"core", "backbones", "lesson", "interop"},
    "apps": {"core", "backbones", "lesson", "interop", "apps", "tooling"},
    "tooling": {"core", "backbones", "lesson", "interop", "apps", "tooling"},
}
ALLOWED_UPWARD = {("workshop_utils.export.writer", "workshop_utils.interop.frozen_graph")}  # model.pb for ML.NET


def _imported(module: str, node: ast.AST) -> set[str]:
    """The workshop_utils modules an import statement names (a `from x import y` may name module y)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        base = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        full = ".".join(base + ([node.module] if node.module else []))
    else:
        full = node.module or ""
    return {m for m in [full, *(f"{full}.{a.name}" for a in node.names)] if m in MODULES}


def _top_level_imports(module: str) -> set[str]:
    tree = TREES[module]
    found = set()
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for inner in ast.walk(node):
                found |= _imported(module, inner)
    return found - {module}


def test_no_module_is_over_400_lines_and_the_package_stays_small():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    big = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}; split them by job (README, Inside workshop_utils)"
    total = sum(sizes.values())
    assert total <= MAX_PACKAGE_LINES, f"workshop_utils has {total} lines, the budget is {MAX_PACKAGE_LINES}"


def test_imports_are_at_module_level_except_optional_heavy_dependencies():
    inside = []
    for module, tree in TREES.items():
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    roots = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    roots = {"workshop_utils" if node.level else (node.module or "").split(".")[0]}
                else:
                    continue
                if roots - OPTIONAL_HEAVY:
                    inside.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{node.lineno} {sorted(roots)}")
    assert not inside, f"imports inside functions (move them to the top of the module): {inside}"


def test_imports_point_down_the_floors_and_make_no_cycle():
    graph = {m: {d for d in _top_level_imports(m) if not d.startswith(m + ".") and not m.startswith(d + ".")}
             for m in MODULES}
    wrong = [f"{m} ({_floor(m)}) -> {d} ({_floor(d)})" for m, deps in graph.items() for d in deps
             if _floor(d) not in MAY_IMPORT[_floor(m)] and (m, d) not in ALLOWED_UPWARD]
    assert not wrong, f"imports that point up the floors: {wrong}"
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph[module]:
            if state.get(dep) == 1:
                pytest.fail(f"import cycle: {' -> '.join(path[path.index(dep):] + [module, dep])}")
            if not state.get(dep):
                visit(dep, path + [module])
        state[module] = 2

    for module in graph:
        if not state.get(module):
            visit(module, [])


def test_errors_have_one_base_and_live_in_core_errors():
    from workshop_utils.core import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and c.__module__ == errors.__name__]
    exceptions = [c for c in classes if not issubclass(c, Warning)]
    assert all(issubclass(c, errors.WorkshopError) for c in exceptions)
    assert all(issubclass(c, errors.WorkshopWarning) for c in classes if issubclass(c, Warning))
    assert len(exceptions) <= MAX_EXCEPTION_CLASSES, [c.__name__ for c in exceptions]
    elsewhere = [f"{m}.{n.name}" for m, tree in TREES.items() if m != errors.__name__ for n in ast.walk(tree)
                 if isinstance(n, ast.ClassDef) and any(ast.unparse(b).endswith(("Error", "Exception", "Warning"))
                                                        for b in n.bases)]
    assert not elsewhere, f"exception/warning classes outside core/errors.py: {elsewhere}"
