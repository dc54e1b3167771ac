"""Rules about the code itself: short functions, one-way imports, no citations of documents we do not ship."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tresnet"
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 300
# What each package may import from tresnet: data flows cli -> training -> inference / bench / deploy -> tasks ->
# models -> layers (data beside them).
# The base modules (errors, files, runtime) may be imported by anyone; deploy reads images (int8 calibration).
BASE = {"errors", "files", "runtime", "collectives", "recipes", "version"}
MAY_IMPORT = {
    "layers": BASE | {"layers"},
    "models": BASE | {"layers", "models"},
    "data": BASE | {"data"},
    "tasks": BASE | {"data", "models", "layers", "tasks"},
    "checkpoint": BASE | {"models", "layers", "tasks"},
    "weights": BASE | {"models"},
    "factory": BASE | {"checkpoint", "models", "layers", "tasks", "weights"},
    "deploy": BASE | {"layers", "models", "checkpoint", "data", "deploy"},
    "inference": BASE | {"layers", "models", "checkpoint", "factory", "data", "tasks", "deploy", "inference"},
    "training": BASE | {"layers", "models", "checkpoint", "factory", "data", "tasks", "deploy", "inference",
                        "training", "weights", "__init__"},
}
UNCITED = ("SP" + "EC", "docs/" + "sections")  # written split, so that this file does not match itself


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _tresnet_imports(tree: ast.AST) -> set[str]:
    """The first component under ``tresnet.`` of every import in ``tree`` (``tresnet`` itself: ``__init__``)."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "tresnet":
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def test_no_function_is_longer_than_a_screen():
    long = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into named steps:\n" + "\n".join(long)


def test_imports_flow_one_way():
    wrong = []
    for path, tree in _modules():
        package = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        package = "cli" if package == "__main__" else package
        imported = _tresnet_imports(tree)
        if package != "cli" and "cli" in imported:
            wrong.append(f"{path.relative_to(ROOT)} imports tresnet.cli")
        allowed = MAY_IMPORT.get(package)
        if allowed is not None and not imported <= allowed:
            wrong.append(f"{path.relative_to(ROOT)} imports {sorted(imported - allowed)}")
    assert not wrong, "\n".join(wrong)


def _names_a_task(node: ast.AST, tasks: set[str]) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in tasks
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_task(element, tasks) for element in node.elts)
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    return name in {task.upper() for task in tasks}  # a task module's constant (MULTILABEL)


def test_no_code_outside_a_task_compares_a_task_name():
    """The loops ask the task (tresnet.tasks) rather than branch on its name: no comparison with a registered
    task's name, or a task module's name constant, outside the tasks' own modules."""
    from tresnet.tasks import list_tasks

    tasks = set(list_tasks())
    found = []
    for path, tree in _modules():
        if path.relative_to(PACKAGE).parts[0] == "tasks":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(_names_a_task(side, tasks)
                                                     for side in (node.left, *node.comparators)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, "ask the task instead of comparing its name:\n" + "\n".join(found)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports, at the top or inside a function (``from
    package import name`` depends on the package's ``__init__`` unless ``name`` is a module of it)."""
    modules = {_module_name(path): tree for path, tree in _modules()}
    graph = {name: set() for name in modules}
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]
            else:
                continue
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (strongly connected)."""
    order, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in order:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], order[other])
        if low[node] == order[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in order:
            visit(node)
    return found


def test_no_import_circles():
    """No modules import each other, not even through a function-level or an annotations-only import."""
    circles = _circles(_import_graph())
    assert not circles, "break these import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def _imports_the_package(node: ast.AST) -> bool:
    """Whether ``node`` is an import of the package's own modules (``import tresnet...``, ``from tresnet... import``,
    a relative import)."""
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] == "tresnet" for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "tresnet"
    return False


def _says_which_circle(lines: list[str], node: ast.AST) -> bool:
    """Whether the import (any of its lines) or the line above it carries a ``# ... circle: ...`` comment."""
    nearby = lines[max(node.lineno - 2, 0):node.end_lineno]
    return any("#" in line and "circle:" in line.split("#", 1)[1] for line in nearby)


def test_no_function_level_imports_of_the_package():
    """The package's own modules are imported at the top of a module, where the import graph is seen; inside a
    function only where an import circle cannot be broken, with a ``# circle: ...`` comment that says which."""
    found = set()
    for path, tree in _modules():
        lines = path.read_text().splitlines()
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            found |= {f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}" for node in ast.walk(function)
                      if _imports_the_package(node) and not _says_which_circle(lines, node)}
    assert not found, "import these at the top of the module:\n" + "\n".join(sorted(found))


def test_no_class_is_longer_than_300_lines():
    """A class that grows is composed of parts instead (the trainer: its model, data, optimisation, files)."""
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert not long, "compose these of parts:\n" + "\n".join(long)


def test_no_deprecation_shims_or_hidden_options():
    """At 0.x there are no old names to keep: nothing warns of a deprecation, no option hides from --help."""
    found = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "DeprecationWarning":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} DeprecationWarning")
            if isinstance(node, ast.keyword) and node.arg == "help" and ast.unparse(node.value) == "argparse.SUPPRESS":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} a hidden option")
    assert not found, "\n".join(found)


MAX_PARAMETERS = 10
# The model constructors take timm's options one by one, as timm's create_model does.
MODEL_CONSTRUCTORS = {("factory.py", "create_model"), ("models/registry.py", "build_model")}


def _parameters(node: ast.FunctionDef) -> int:
    args = node.args
    count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) + bool(args.vararg) + bool(args.kwarg)
    return count - (1 if args.args and args.args[0].arg in ("self", "cls") else 0)


def test_no_function_outside_the_layers_and_model_constructors_takes_more_than_ten_parameters():
    """Options that belong together travel as one object (RunOptions, Scoring, Augmentation, Calibration)."""
    many = []
    for path, tree in _modules():
        where = path.relative_to(PACKAGE).as_posix()
        if where.startswith("layers/"):
            continue
        for cls in [tree, *(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef))]:
            for node in ast.iter_child_nodes(cls):
                is_model = where.startswith("models/") and node is not cls and getattr(node, "name", "") == "__init__"
                if (isinstance(node, ast.FunctionDef) and _parameters(node) > MAX_PARAMETERS and not is_model
                        and (where, node.name) not in MODEL_CONSTRUCTORS):
                    many.append(f"{where}:{node.lineno} {node.name} ({_parameters(node)} parameters)")
    assert not many, "pass a small object instead:\n" + "\n".join(many)


def test_no_citation_of_documents_outside_the_repository():
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    hits = []
    for name in listed:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".cfg") or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if any(word in line for word in UNCITED):
                hits.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not hits, "cite the paper, the official release or timm instead:\n" + "\n".join(hits)
