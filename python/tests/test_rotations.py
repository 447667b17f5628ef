# SPDX-License-Identifier: MIT
"""Hadamard transforms and rotations against NumPy: orthogonality, involution, explicit
matrices, in-place semantics and errors."""

import numpy as np
import pytest

import qift


@pytest.mark.parametrize("n", [1, 2, 12, 20, 40, 64, 768])
def test_hadamard_matrix_is_orthogonal(n):
    assert qift.is_hadamard_size(n)
    h = qift.hadamard_matrix(n)
    assert h.shape == (n, n) and h.dtype == np.float32
    assert set(np.unique(h)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(h.astype(np.float64) @ h.T, n * np.eye(n))


@pytest.mark.parametrize("n", [12, 20, 40, 64, 768])
def test_hadamard_transform_is_h_times_x(rng, n):
    x = rng.standard_normal((5, n)).astype(np.float32)
    h = qift.hadamard_matrix(n).astype(np.float64)
    y = qift.hadamard_transform(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x @ h.T / np.sqrt(n), rtol=0, atol=2e-5 * np.sqrt(n))
    y1 = qift.hadamard_transform(x[2])
    assert y1.shape == (n,)
    np.testing.assert_array_equal(y1, y[2])
    raw = qift.hadamard_transform(x, "none")
    np.testing.assert_allclose(raw, x @ h.T, atol=1e-4 * n)
    # H^T is the inverse of the orthonormal transform.
    np.testing.assert_allclose(qift.hadamard_transform(y, transpose=True), x, atol=1e-5)
    np.testing.assert_allclose(qift.hadamard_transform(x, transpose=True), x @ h / np.sqrt(n),
                               atol=2e-5 * np.sqrt(n))


def test_fwht_is_an_involution(rng):
    x = rng.standard_normal((3, 256)).astype(np.float32)
    y = qift.fwht(x)
    np.testing.assert_allclose(qift.fwht(y), x, atol=1e-5)
    h = qift.hadamard_matrix(256).astype(np.float64)
    np.testing.assert_allclose(y, x @ h.T / 16, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    with pytest.raises(qift.Error, match="qift::fwht_rows"):
        qift.fwht(np.ones((2, 12), np.float32))


def test_sizes_and_factorization():
    assert not qift.is_hadamard_size(0) and not qift.is_hadamard_size(22)
    assert qift.hadamard_sizes_near(22) == (20, 24)
    f = qift.hadamard_factorization(11008)
    assert f == {"power_of_two": 32, "blocks": [344]}
    assert qift.hadamard_factorization(22) is None
    with pytest.raises(qift.Error, match="no Hadamard construction for n = 22.*20 and 24"):
        qift.hadamard_transform(np.ones(22, np.float32))


def test_inplace_transform_and_its_errors(rng):
    x = rng.standard_normal((4, 64)).astype(np.float32)
    expect = qift.hadamard_transform(x)
    y = x.copy()
    assert qift.hadamard_transform(y, inplace=True) is y
    np.testing.assert_array_equal(y, expect)
    # A column slice with contiguous rows is transformed in place.
    wide = np.zeros((4, 128), np.float32)
    wide[:, 32:96] = x
    qift.hadamard_transform(wide[:, 32:96], inplace=True)
    np.testing.assert_array_equal(wide[:, 32:96], expect)
    assert not wide[:, :32].any() and not wide[:, 96:].any()
    with pytest.raises(TypeError, match="inplace=True needs a float32 array, got dtype float64"):
        qift.hadamard_transform(x.astype(np.float64), inplace=True)
    with pytest.raises(ValueError, match="contiguous last axis"):
        qift.hadamard_transform(np.asfortranarray(x), inplace=True)
    ro = x.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        qift.hadamard_transform(ro, inplace=True)
    # Without inplace the input is left alone, whatever its dtype.
    x16 = x.astype(np.float16)
    before = x16.copy()
    out = qift.hadamard_transform(x16)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(x16, before)


@pytest.mark.parametrize("make", [lambda: qift.Rotation.hadamard(64, 7),
                                  lambda: qift.Rotation.random_orthogonal(24, 3),
                                  lambda: qift.Rotation.for_size(22, 5)])
def test_rotation_matches_its_matrix(rng, make):
    r = make()
    n = r.size
    q = r.to_matrix().astype(np.float64)
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-5)
    x = rng.standard_normal((6, n)).astype(np.float32)
    np.testing.assert_allclose(r.apply(x), x @ q, atol=1e-5)
    np.testing.assert_allclose(r.apply(x[0]), x[0] @ q, atol=1e-5)
    np.testing.assert_allclose(r.apply_transpose(r.apply(x)), x, atol=1e-5)
    np.testing.assert_allclose(r.rotate_rows_transpose(x), x @ q.T, atol=1e-5)
    w = rng.standard_normal((9, n)).astype(np.float32)
    np.testing.assert_allclose(r.fold_into_input(w), w @ q, atol=1e-5)
    wo = rng.standard_normal((n, 5)).astype(np.float32)
    np.testing.assert_allclose(r.fold_into_output(wo), q.T @ wo, atol=1e-5)
    np.testing.assert_allclose(r.rotate_columns_transpose(wo), q @ wo, atol=1e-5)
    # A rotated layer computes the same outputs: (x·Q)·(W·Q)ᵀ = x·Wᵀ.
    np.testing.assert_allclose(r.apply(x) @ r.fold_into_input(w).T, x @ w.T, atol=1e-4)


def test_rotation_properties_and_errors():
    r = qift.Rotation.for_size(22, 5)
    assert (r.kind, r.size, r.seed) == ("random_orthogonal", 22, 5)
    assert qift.Rotation.hadamard(32).kind == "hadamard"
    with pytest.raises(qift.Error, match="qift::rotation::rotate_rows: matrix has 8 columns but "
                                         "the rotation has size 22"):
        r.apply(np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="must be 2-D"):
        r.fold_into_output(np.zeros(22, np.float32))
    with pytest.raises(qift.Error, match="rotation::hadamard"):
        qift.Rotation.hadamard(22)
