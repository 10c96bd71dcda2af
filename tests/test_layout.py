"""Rules about the package's text that no behaviour test sees."""

from __future__ import annotations

import ast
import re

from .conftest import REPO


def test_library_never_names_the_projects_sibling_data_folder():
    """A user's clone has no ``../shared``: library code and its messages never point there."""
    pattern = re.compile(r"\.\./shared|shared/data|shared/docs")
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in sorted((REPO / "qsd_lightning").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def _test_modules_imported_by(path) -> set[str]:
    """The ``tests/test_*`` modules that the module at ``path`` imports, however it spells it:
    ``from .test_<name> import ...``, ``from . import test_<name>``, ``from tests.test_<name>
    import ...``, ``import tests.test_<name>``, or a class path string ``"tests.test_<name>.<Class>"``
    (which the CLI imports when a subprocess runs it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                package, rest = "tests", node.module or ""
            elif node.level == 0:
                package, _, rest = (node.module or "").partition(".")
            else:
                continue
            if package != "tests":
                continue
            names = [rest.split(".")[0]] if rest else [alias.name for alias in node.names]
            found.update(name for name in names if name.startswith("test_"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                package, _, rest = alias.name.partition(".")
                if package == "tests" and rest.startswith("test_"):
                    found.add(rest.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(re.findall(r"\btests\.(test_\w+)\.", node.value))
    return found


def test_test_modules_never_import_one_another():
    """Shared test code lives in tests/helpers.py, tests/data_builders.py and tests/conftest.py
    fixtures: no test module imports another test module (nor names one of its classes by
    class path), so each one can be read, run and changed on its own."""
    tests = REPO / "tests"
    offenders = [
        f"{path.relative_to(REPO)} imports tests.{name}"
        for path in sorted(tests.glob("test_*.py"))
        for name in sorted(_test_modules_imported_by(path) - {path.stem})
    ]
    assert not offenders, offenders
