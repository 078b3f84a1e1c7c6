"""docs/TESTING_PLUGINS.md shows the guide's example tests (tests/guide/) as they are."""
from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parent.parent
GUIDE = ROOT / "docs" / "TESTING_PLUGINS.md"


@pytest.mark.skipif(not GUIDE.exists(), reason="run from a checkout (the docs are not installed)")
def test_the_guide_shows_the_example_tests_verbatim():
    text = GUIDE.read_text()
    shown = re.findall(r"<!-- file: (\S+) -->\n```python\n(.*?)```\n", text, re.S)
    assert {path for path, _ in shown} == {f"tests/guide/{p.name}" for p in (ROOT / "tests" / "guide").glob("test_*.py")}
    for path, code in shown:
        assert code == (ROOT / path).read_text(), f"{path} differs from the guide"
