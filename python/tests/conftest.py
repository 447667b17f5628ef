# SPDX-License-Identifier: MIT
"""Shared fixtures of the qift Python tests.

The package must be importable (ctest puts <build>/python on PYTHONPATH). QIFT_PY_ORACLE names
the C++ oracle (python/tests/oracle.cpp) that runs the same calls through the C++ API; the
tests that need it are skipped when it is not set (running pytest by hand)."""

import os
import subprocess

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def oracle(tmp_path):
    exe = os.environ.get("QIFT_PY_ORACLE")
    if not exe or not os.path.exists(exe):
        pytest.skip("QIFT_PY_ORACLE is not set (ctest sets it to the built C++ oracle)")

    def run(*args, **arrays):
        """Saves `arrays` as <name>.npy, runs the oracle with args (names of arrays replaced by
        their paths, the string 'OUT' by an output folder) and returns its .npy outputs."""
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        paths = {}
        for name, a in arrays.items():
            paths[name] = str(tmp_path / f"{name}.npy")
            np.save(paths[name], a)
        argv = [exe] + [paths.get(a, str(out) if a == "OUT" else str(a)) for a in args]
        subprocess.run(argv, check=True)
        return {p.stem: np.load(p) for p in out.glob("*.npy")}

    return run
