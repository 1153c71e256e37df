"""The package's import structure, read from the source with the stdlib: no import cycle, Dagster
objects only under defs/, and an import inside a function only where a heavy dependency is
deferred on purpose, saying so in a comment."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "promo_pipeline"
# What a function may import, and why it is not imported at the top of its module.
DEFERRED = {
    "dagster": "seconds to import; the CLI and the library run without it",
    "pyspark": "a second to import; `promo --help` and TAB completion do not need it",
    "alembic": "only to check or migrate the schema",
    "sqlalchemy": "only to migrate the schema (through Alembic)",
    "prometheus_client": "only for `promo metrics`",
    "promo_pipeline.definitions": "imports Dagster",
    "promo_pipeline.metrics": "imports prometheus_client",
    "promo_pipeline.ingest": "imports pyspark",
}
# Where Dagster may be imported at module level: the code location and its definitions.
DAGSTER_HOMES = ("promo_pipeline.defs", "promo_pipeline.definitions")


def _modules() -> dict[str, Path]:
    """Every module of the package (migrations are Alembic's scripts, loaded by path)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if "migrations" in parts:
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """Imports under `if TYPE_CHECKING:`, which never run."""
    return {
        node
        for statement in tree.body
        if isinstance(statement, ast.If)
        and isinstance(statement.test, ast.Name)
        and statement.test.id == "TYPE_CHECKING"
        for node in ast.walk(statement)
    }


def _imports(name: str) -> list[tuple[ast.Import | ast.ImportFrom, str, bool]]:
    """(statement, module imported, inside a function) for each import that runs."""
    tree = ast.parse(MODULES[name].read_text())
    skipped = _type_checking_only(tree)
    in_function = {
        node
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
    }
    found = []
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node, alias.name, node in in_function) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                package = name.split(".")[: -node.level + (MODULES[name].stem == "__init__")]
                base = ".".join([*package, base] if base else package)
            # `from package import module` imports the module itself.
            targets = [f"{base}.{alias.name}" for alias in node.names]
            known = [target for target in targets if target in MODULES]
            found += [(node, target, node in in_function) for target in known or [base]]
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_no_import_cycle() -> None:
    """Each module's imports of the package's own modules form no cycle (a function-level
    import counts too: it is a cycle that only waits to run)."""
    graph = {
        name: {target for _, target, _ in _imports(name) if target in MODULES and target != name}
        for name in MODULES
    }
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100  # the walk found the package
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_functions_import_only_deferred_heavy_dependencies_with_a_comment() -> None:
    found: list[str] = []
    problems: list[str] = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        imports = _imports(name)
        import_lines = {
            line for node, _, _ in imports for line in range(node.lineno, node.end_lineno + 1)
        }
        for node, target, in_function in imports:
            if not in_function:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {target}"
            found.append(where)
            if not any(_within(target, allowed) for allowed in DEFERRED):
                problems.append(f"{where}: not a deferred heavy dependency (import it on top)")
            # The comment sits above the function's group of imports (blank lines between).
            above = node.lineno - 2
            while above >= 0 and (above + 1 in import_lines or not lines[above].strip()):
                above -= 1
            if not (lines[above].strip().startswith("#") or "#" in lines[node.lineno - 1]):
                problems.append(f"{where}: no comment says why it is deferred")
    assert found, "the walk found no function-level import at all"
    assert problems == []


def test_dagster_objects_live_in_defs() -> None:
    """Library code takes plain config: outside the code location nothing imports Dagster or
    promo_pipeline.defs at module level (a deferred import to read Dagster's run storage, or
    to run the job from `promo run`, is allowed above)."""
    offenders = [
        f"{name} imports {target}"
        for name in MODULES
        if not any(_within(name, home) for home in DAGSTER_HOMES)
        for _, target, in_function in _imports(name)
        if not in_function
        and (target.startswith("dagster") or _within(target, "promo_pipeline.defs"))
    ]
    assert offenders == []
