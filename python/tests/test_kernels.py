# SPDX-License-Identifier: MIT
"""PackedMatrix GEMV/GEMM (W2A16, W2A4, W4A4) against NumPy products of the dequantized
operands and against the C++ oracle, and the 4-bit KV cache against NumPy attention."""

import numpy as np
import pytest

import qift

PACKED = ["standard", "asymmetric", "mnz", "pot_mnz", "nf2", "lloyd", "pm12", "ternary", "int3",
          "int4", "asymmetric_int4", "e2m1"]
INTEGER = [s for s in PACKED if s not in ("nf2", "lloyd")]


def bound(w, x):
    """Float rounding bound of a length-K dot product, per output: |W|·|x| times a few ulps."""
    return 2e-6 * (np.abs(w).astype(np.float64) @ np.abs(x).astype(np.float64).T) + 1e-7


@pytest.mark.parametrize("levels", PACKED)
def test_float_gemv_and_gemm(rng, levels):
    w = rng.standard_normal((37, 300)).astype(np.float32)
    q = qift.quantize(w, levels)
    pm = qift.PackedMatrix(q)
    assert (pm.levels, pm.shape, pm.integer) == (levels, (37, 300), levels in INTEGER)
    np.testing.assert_array_equal(pm.packed_codes, qift.pack(q.codes, pm.bits))
    np.testing.assert_array_equal(pm.scales, q.scales[:, 0])
    wd = q.dequantize()
    x = rng.standard_normal(300).astype(np.float32)
    y = qift.gemv(pm, x)
    assert y.shape == (37,) and y.dtype == np.float32
    ref = wd.astype(np.float64) @ x
    assert np.all(np.abs(y - ref) <= bound(wd, x[None])[:, 0])
    assert np.all(np.abs(pm.gemv(x, kernel="reference") - ref) <= bound(wd, x[None])[:, 0])
    xs = rng.standard_normal((5, 300)).astype(np.float32)
    ys = qift.gemm(pm, xs)
    assert ys.shape == (5, 37)
    assert np.all(np.abs(ys - xs.astype(np.float64) @ wd.T.astype(np.float64)) <= bound(wd, xs).T)


@pytest.mark.parametrize("levels", INTEGER)
def test_a4_gemv_is_exact_in_integers(rng, levels):
    w = rng.standard_normal((33, 520)).astype(np.float32)
    pm = qift.PackedMatrix(qift.quantize(w, levels))
    wd = qift.quantize(w, levels).dequantize()
    x = rng.standard_normal(520).astype(np.float32)
    a = qift.quantize_activations(x)
    y = pm.gemv(a)
    np.testing.assert_array_equal(y, pm.gemv(a, kernel="reference"))
    np.testing.assert_array_equal(y, pm.gemv(a, kernel="shift_add"))
    ad = a.dequantize()
    assert np.all(np.abs(y - wd.astype(np.float64) @ ad[0].astype(np.float64))
                  <= bound(wd, ad)[:, 0])
    xs = rng.standard_normal((6, 520)).astype(np.float32)
    a6 = qift.quantize_activations(xs)
    ys = qift.gemm(pm, a6)
    np.testing.assert_array_equal(ys, pm.gemm(a6, kernel="reference"))
    for t in range(6):
        np.testing.assert_array_equal(ys[t], pm.gemv(qift.quantize_activations(xs[t])))


@pytest.mark.parametrize("levels", ["mnz", "int4", "asymmetric"])
def test_gemm_equals_cpp(rng, oracle, levels):
    w = rng.standard_normal((40, 384)).astype(np.float32)
    x = rng.standard_normal((7, 384)).astype(np.float32)
    pm = qift.PackedMatrix(qift.quantize(w, levels))
    ref = oracle("gemm", levels, "w", "x", "OUT", w=w, x=x)
    np.testing.assert_array_equal(pm.gemm(qift.quantize_activations(x)), ref["y_a4"])
    np.testing.assert_array_equal(pm.gemm(x), ref["y_float"])


@pytest.mark.parametrize("levels", ["nf2", "lloyd", "mnz", "asymmetric", "ternary"])
def test_bitplane_kernel(rng, levels):
    w = rng.standard_normal((45, 1000)).astype(np.float32)
    q = qift.quantize(w, levels)
    pm = qift.PackedMatrix(q)
    wd = q.dequantize()
    x = rng.standard_normal(1000).astype(np.float32)
    y = pm.gemv(x, kernel="bitplane")
    assert np.all(np.abs(y - wd.astype(np.float64) @ x) <= bound(wd, x[None])[:, 0])
    xs = rng.standard_normal((6, 1000)).astype(np.float32)
    ys = pm.gemm(xs, kernel="bitplane")
    for t in range(6):  # each row of the GEMM is the GEMV of its token, bit for bit
        np.testing.assert_array_equal(ys[t], pm.gemv(xs[t], kernel="bitplane"))
    with pytest.raises(ValueError, match="kernel='bitplane' needs float activations"):
        pm.gemv(qift.quantize_activations(x), kernel="bitplane")


def test_packed_matrix_errors(rng):
    w = rng.standard_normal((8, 256)).astype(np.float32)
    a = qift.quantize_activations(rng.standard_normal(256).astype(np.float32))
    with pytest.raises(ValueError, match="level set 'nf2' has no integer form for A4"):
        qift.PackedMatrix(qift.quantize(w, "nf2")).gemv(a)
    with pytest.raises(ValueError, match="'binary' has 1-bit codes"):
        qift.PackedMatrix(qift.quantize(w, "binary"))
    with pytest.raises(qift.Error, match="packed_matrix: per-row scales only, got group_size 64"):
        qift.PackedMatrix(qift.quantize(w, "mnz", group_size=64))
    pm = qift.PackedMatrix(qift.quantize(w, "mnz"))
    with pytest.raises(qift.Error, match="gemv: activations have 100 columns, weights 256"):
        pm.gemv(qift.quantize_activations(np.ones(100, np.float32)))
    with pytest.raises(qift.Error, match="gemv: x has 100 values"):
        pm.gemv(np.ones(100, np.float32))
    with pytest.raises(ValueError, match="gemv takes one token, the activations hold 2"):
        pm.gemv(qift.quantize_activations(np.ones((2, 256), np.float32)))
    with pytest.raises(ValueError, match="kernel='shift_add' needs A4 activations"):
        pm.gemv(np.ones(256, np.float32), kernel="shift_add")
    with pytest.raises(ValueError, match="kernel='bitplane' needs a 2-bit level set linear"):
        qift.PackedMatrix(qift.quantize(w, "int4")).gemv(np.ones(256, np.float32),
                                                        kernel="bitplane")
    with pytest.raises(ValueError, match="must be 1-D"):
        pm.gemv(np.ones((2, 256), np.float32))


def attention(kv, q, n_heads, length):
    """softmax(q·Kᵀ/√d)·V per query head on the cache's dequantized keys and values."""
    d, g = kv.head_dim, n_heads // kv.n_kv_heads
    out = np.zeros(n_heads * d)
    for h in range(n_heads):
        kh = h // g
        keys = np.stack([kv.read_key(t, kh) for t in range(length)]).astype(np.float64)
        vals = np.stack([kv.read_value(t, kh) for t in range(length)]).astype(np.float64)
        s = keys @ q[h * d:(h + 1) * d] / np.sqrt(d)
        p = np.exp(s - s.max())
        out[h * d:(h + 1) * d] = (p / p.sum()) @ vals
    return out


@pytest.mark.parametrize("policy,head_dim", [("asymmetric", 64), ("int4", 64), ("asymmetric", 24)])
def test_kv_cache_attention(rng, policy, head_dim):
    n_kv, n_heads, tokens = 2, 4, 37
    kv = qift.KVCache(head_dim, n_kv, capacity=64, policy=policy)
    k = rng.standard_normal((tokens, n_kv * head_dim)).astype(np.float32)
    v = rng.standard_normal((tokens, n_kv * head_dim)).astype(np.float32)
    kv.append(k[:10], v[:10])
    for t in range(10, tokens):
        kv.append(k[t], v[t])
    assert (len(kv), kv.size, kv.capacity, kv.policy) == (tokens, tokens, 64, policy)
    assert kv.bytes_per_group == head_dim // 2
    # The cache holds 4-bit approximations of what was appended.
    err = np.abs(kv.read_value(20, 1) - v[20, head_dim:]).max()
    assert err <= 0.2 * np.abs(v[20, head_dim:]).max()
    q = rng.standard_normal(n_heads * head_dim).astype(np.float32)
    out = kv.attend(q, n_heads)
    np.testing.assert_allclose(out, attention(kv, q, n_heads, tokens), atol=2e-5)
    np.testing.assert_allclose(kv.attend(q, n_heads, length=5), attention(kv, q, n_heads, 5),
                               atol=2e-5)


def test_kv_prefill_equals_append_then_attend(rng):
    d, n_kv, n_heads, m = 32, 1, 2, 9
    a = qift.KVCache(d, n_kv, capacity=16)
    b = qift.KVCache(d, n_kv, capacity=16)
    q = rng.standard_normal((m, n_heads * d)).astype(np.float32)
    k = rng.standard_normal((m, n_kv * d)).astype(np.float32)
    v = rng.standard_normal((m, n_kv * d)).astype(np.float32)
    out = a.prefill(q, k, v, n_heads)
    b.append(k, v)
    for i in range(m):
        np.testing.assert_array_equal(out[i], b.attend(q[i], n_heads, length=i + 1))


def test_kv_cache_management_and_errors(rng):
    kv = qift.KVCache(16, 1, capacity=4)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    kv.append(x, x)
    with pytest.raises(qift.Error, match="kv_cache::append"):
        kv.append(x[0], x[0])
    kv.reserve(8)
    kv.append(x[0], x[0])
    kv.slide(2)
    assert len(kv) == 3
    np.testing.assert_array_equal(kv.read_value(2, 0), kv.read_value(2, 0))
    kv.clear()
    assert len(kv) == 0
    with pytest.raises(qift.Error, match="kv_cache: head_dim must be even"):
        qift.KVCache(15)
    with pytest.raises(ValueError, match="unknown policy 'int8'"):
        qift.KVCache(16, policy="int8")
    with pytest.raises(qift.Error, match="kv_cache::append: k is 1x8"):
        qift.KVCache(16, capacity=2).append(np.ones(8, np.float32), np.ones(8, np.float32))


def test_kv_cache_shared_between_threads(rng):
    import threading

    kv = qift.KVCache(32, 1, capacity=256)
    k = rng.standard_normal((8, 16, 32)).astype(np.float32)
    q = rng.standard_normal(32).astype(np.float32)
    kv.append(k[0], k[0])
    outs = []

    def work(i):
        kv.append(k[i], k[i])
        outs.append(kv.attend(q, 1))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(kv) == 8 * 16 and len(outs) == 7 and all(np.isfinite(o).all() for o in outs)
