"""The purity guard: the core imports no I/O, clock, randomness or event loop.

It reads the import statements of every module in ``stepflow/core`` and of the
stepflow modules they import, so a forbidden import anywhere the core can reach
fails this test, even one hidden inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import stepflow

PACKAGE = Path(stepflow.__file__).parent
CORE = PACKAGE / "core"

FORBIDDEN = {
    "asyncio",
    "concurrent",
    "datetime",
    "http",
    "io",
    "logging",
    "multiprocessing",
    "os",
    "pathlib",
    "random",
    "secrets",
    "select",
    "selectors",
    "shutil",
    "signal",
    "socket",
    "sqlite3",
    "ssl",
    "subprocess",
    "sys",
    "tempfile",
    "threading",
    "time",
    "urllib",
    "uuid",
}
# The shell may use the core; the core may never use the shell.
SHELL = {"stepflow.codec", "stepflow.flow", "stepflow.interpreter"}


def imports_of(path: Path) -> set[str]:
    return imports_in(path.read_text(), str(path))


def imports_in(source: str, filename: str = "<probe>") -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def module_path(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "stepflow":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def reachable_from_core() -> dict[Path, set[str]]:
    todo = sorted(CORE.glob("*.py"))
    seen: dict[Path, set[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen[path] = imports_of(path)
        for name in seen[path]:
            target = module_path(name)
            if target is not None and target not in seen:
                todo.append(target)
    return seen


def test_the_core_reaches_no_io_clock_randomness_or_event_loop() -> None:
    offenders = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path, names in reachable_from_core().items()
        for name in names
        if name.split(".")[0] in FORBIDDEN or name in SHELL
    }
    assert not offenders


def test_the_guard_sees_what_the_core_imports() -> None:
    reached = {p.relative_to(PACKAGE).as_posix() for p in reachable_from_core()}
    assert {"core/advance.py", "core/definition.py", "errors.py"} <= reached
    assert "time" in imports_in("import time\n")
    assert "os.path" in imports_in("def f():\n    from os.path import join\n")
