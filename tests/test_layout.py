"""Rules about the package's text that no behaviour test sees."""

from __future__ import annotations

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
