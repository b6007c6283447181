"""The examples of docs/python.md: `mypy --strict` clean, and they run."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from typing import List

import pytest

from conftest import REPO

DOC = REPO / "docs" / "python.md"


def examples() -> List[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 3, "docs/python.md lost its examples"
    return blocks


def test_examples_pass_mypy_strict(tmp_path: pathlib.Path) -> None:
    files = []
    for i, code in enumerate(examples()):
        f = tmp_path / f"example_{i}.py"
        f.write_text(code)
        files.append(str(f))
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *files],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("index", range(3))
def test_examples_run(tmp_path: pathlib.Path, index: int) -> None:
    f = tmp_path / "example.py"
    f.write_text(examples()[index])
    out = subprocess.run([sys.executable, str(f)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
