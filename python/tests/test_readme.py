# SPDX-License-Identifier: MIT
"""The README's Python example runs: the block between <!-- python-example --> and
<!-- /python-example --> in README.md when it has one, and python/examples/readme_example.py."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
README = pathlib.Path(os.environ.get("QIFT_README", HERE.parent.parent / "README.md"))
EXAMPLES = pathlib.Path(os.environ.get("QIFT_PYTHON_EXAMPLES", HERE.parent / "examples"))


def run(source, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(source)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "GPTQ relative MSE" in done.stdout and "error: quantize: group_size 100" in done.stdout
    return done.stdout


def test_example_file_runs(tmp_path):
    run((EXAMPLES / "readme_example.py").read_text(), tmp_path)


def test_readme_block_runs(tmp_path):
    text = README.read_text() if README.exists() else ""
    m = re.search(r"<!-- python-example -->\s*```python\n(.*?)```\s*<!-- /python-example -->",
                  text, re.S)
    if not m:
        pytest.skip("README.md has no <!-- python-example --> block yet")
    run(m.group(1), tmp_path)
