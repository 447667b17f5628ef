# SPDX-License-Identifier: MIT
"""GPTQ and the Hessian accumulator: equality with the C++ API, the progress callback, errors
raised in it, the GIL released during the solve, and concurrent calls from Python threads."""

import io
import threading

import numpy as np
import pytest

import qift


def layer(rng, out=48, n=128, tokens=512):
    w = rng.standard_normal((out, n)).astype(np.float32)
    x = rng.standard_normal((tokens, n)).astype(np.float32)
    x[:, 5] *= 20  # an outlier channel, so act-order matters
    return w, x


def test_hessian_accumulator_is_2_over_n_xtx(rng):
    _, x = layer(rng)
    acc = qift.HessianAccumulator(128)
    acc.add(x[:200])
    acc.add(x[200:])
    assert (acc.size, acc.samples) == (128, 512)
    h = acc.hessian()
    assert h.dtype == np.float64
    ref = 2.0 / 512 * x.astype(np.float64).T @ x.astype(np.float64)
    np.testing.assert_allclose(h, ref, rtol=1e-12, atol=1e-9)
    acc.add(x[0], samples=3)  # one token counted as three samples
    assert acc.samples == 515
    with pytest.raises(qift.Error, match="hessian_accumulator::add: x has 7 columns, expected in = 128"):
        acc.add(np.zeros((2, 7), np.float32))


@pytest.mark.parametrize("levels,options", [
    ("mnz", dict(block_size=128, damp=0.01, act_order=False, static_groups=False, group_size=0,
                 rule="search")),
    ("asymmetric", dict(block_size=32, damp=0.02, act_order=True, static_groups=False,
                        group_size=64, rule="search")),
    ("int4", dict(block_size=16, damp=0.01, act_order=True, static_groups=True, group_size=32,
                  rule="max")),
])
def test_gptq_equals_cpp(rng, oracle, levels, options):
    w, x = layer(rng)
    acc = qift.HessianAccumulator(128)
    acc.add(x)
    h = acc.hessian()
    r = qift.gptq(w, h, levels=levels, **options)
    o = options
    ref = oracle("gptq", levels, "w", "h", "OUT", o["block_size"], o["damp"], int(o["act_order"]),
                 int(o["static_groups"]), o["group_size"], o["rule"], w=w, h=h)
    np.testing.assert_array_equal(r.quantized.codes, ref["codes"])
    np.testing.assert_array_equal(r.quantized.scales, ref["scales"])
    np.testing.assert_array_equal(r.dequantized, ref["dequantized"])
    np.testing.assert_array_equal(r.quantized.dequantize(), r.dequantized)
    np.testing.assert_array_equal(r.permutation, ref["permutation"])
    assert r.proxy_loss == ref["proxy_loss"][0]
    if r.quantized.zeros is not None:
        np.testing.assert_array_equal(r.quantized.zeros, ref["zeros"])
    if options["act_order"]:
        assert r.permutation[0] == 5
    # activations= accumulates the same Hessian; a float32 Hessian converts exactly.
    r2 = qift.gptq(w, activations=x, levels=levels, **options)
    np.testing.assert_array_equal(r2.quantized.codes, r.quantized.codes)
    h32 = h.astype(np.float32)
    np.testing.assert_array_equal(qift.gptq(w, h32, levels=levels, **options).dequantized,
                                  qift.gptq(w, h32.astype(np.float64), levels=levels,
                                            **options).dequantized)


def test_gptq_result_fields(rng):
    w, x = layer(rng)
    r = qift.gptq(w, activations=x, levels="asymmetric", group_size=32)
    assert r.quantized.levels == "asymmetric" and r.quantized.shape == (48, 128)
    assert r.group_scales.shape == (48, 4) and r.group_zeros.shape == (48, 4)
    np.testing.assert_array_equal(r.g_idx, np.arange(128) // 32)
    assert r.retries == 0 and r.dead_columns == 0 and r.damping == 0.01
    assert qift.gptq(w, activations=x).group_zeros is None
    # GPTQ beats round-to-nearest on the proxy loss tr((W − Q)·H·(W − Q)ᵀ).
    h = qift.HessianAccumulator(128)
    h.add(x)
    h = h.hessian()
    rtn = qift.quantize(w, "asymmetric", group_size=32).dequantize()

    def loss(q):
        d = (w - q).astype(np.float64)
        return np.einsum("ij,jk,ik->", d, h, d)

    assert loss(r.dequantized) < loss(rtn)


def test_gptq_input_errors(rng):
    w, x = layer(rng)
    with pytest.raises(ValueError, match="give exactly one of hessian="):
        qift.gptq(w)
    with pytest.raises(ValueError, match="give exactly one of hessian="):
        qift.gptq(w, np.eye(128), activations=x)
    with pytest.raises(qift.Error, match="gptq: hessian is 3x3, expected in x in = 128x128"):
        qift.gptq(w, np.eye(3))
    with pytest.raises(qift.Error, match="gptq: block_size is 0"):
        qift.gptq(w, activations=x, block_size=0)
    with pytest.raises(TypeError, match="progress must be callable"):
        qift.gptq(w, activations=x, progress=3)
    with pytest.raises(qift.Error, match="the Hessian is not positive definite"):
        qift.gptq(w, -np.ones((128, 128)) + 2 * np.eye(128), damp=0.0, max_retries=0)


def test_progress_callback(rng):
    w, x = layer(rng, out=64, n=128)
    calls = []
    r = qift.gptq(w, activations=x, block_size=32, progress=lambda d, t: calls.append((d, t)))
    assert calls and all(t == 64 * 128 for _, t in calls)
    assert max(d for d, _ in calls) == 64 * 128 and all(0 < d <= 64 * 128 for d, _ in calls)
    assert r.dequantized.shape == (64, 128)
    buf = io.StringIO()
    qift.gptq(w, activations=x, progress=qift.progress_bar("layer 0", file=buf))
    text = buf.getvalue()
    assert text.startswith("\rlayer 0 [") and "100.0%" in text and text.endswith("\n")


def test_progress_exception_propagates(rng):
    w, x = layer(rng, out=64, n=256)
    calls = []

    def stop(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise RuntimeError("stop at the second block")

    with pytest.raises(RuntimeError, match="stop at the second block"):
        qift.gptq(w, activations=x, block_size=16, progress=stop)
    assert len(calls) < 64 * 256 // 16  # the solve stopped early

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qift.gptq(w, activations=x, progress=interrupt)
    # The library is still usable afterwards.
    assert qift.gptq(w, activations=x).dequantized.shape == (64, 256)


def test_gil_is_released_during_the_solve(rng):
    w = rng.standard_normal((512, 1024)).astype(np.float32)
    x = rng.standard_normal((256, 1024))
    h = x.T @ x / 256 + 0.1 * np.eye(1024)
    counter = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1

    seen = []
    t = threading.Thread(target=spin)
    t.start()
    # The solve on the calling thread alone, so that the counting thread has a core to run on:
    # if the GIL were held, it could not count between two callbacks.
    qift.set_num_threads(1)
    try:
        qift.gptq(w, h, block_size=64, progress=lambda d, n: seen.append(counter[0]))
    finally:
        qift.set_num_threads(0)
        stop.set()
        t.join()
    assert len(seen) >= 2 and seen[-1] > seen[0]


def test_concurrent_calls_from_threads(rng):
    layers = [layer(rng, out=64, n=128) for _ in range(4)]
    expect = [qift.gptq(w, activations=x, levels="mnz").dequantized for w, x in layers]
    results = [None] * 4
    errors = []

    def work(i):
        try:
            w, x = layers[i]
            results[i] = qift.gptq(w, activations=x, levels="mnz").dequantized
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expect):
        np.testing.assert_array_equal(got, want)


def test_shared_accumulator_from_threads(rng):
    x = rng.standard_normal((8, 64, 96)).astype(np.float32)
    acc = qift.HessianAccumulator(96)
    threads = [threading.Thread(target=acc.add, args=(x[i],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert acc.samples == 8 * 64
    flat = x.reshape(-1, 96).astype(np.float64)
    np.testing.assert_allclose(acc.hessian(), 2.0 / flat.shape[0] * flat.T @ flat, rtol=1e-10,
                               atol=1e-10)
