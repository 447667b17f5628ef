# SPDX-License-Identifier: MIT
"""MXFP4, MX rotations (TORQ), smoothing and one-bit weights against NumPy closed forms."""

import numpy as np
import pytest

import qift

E2M1 = qift.levels("e2m1")


def mx_reference(x):
    """MXFP4 of one row in NumPy (microxcaling's algorithm, round to nearest, ties away), for data
    without ties or near-power-of-two maxima: the dequantized values."""
    out = np.zeros_like(x)
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float64)
    for b in range(0, x.size, 32):
        blk = x[b:b + 32].astype(np.float64)
        e = int(np.floor(np.log2(np.abs(blk).max()))) - 2
        s = np.abs(blk) / 2.0 ** e
        mag = grid[np.abs(s[:, None] - grid[None]).argmin(axis=1)]
        out[b:b + 32] = np.sign(blk) * mag * 2.0 ** e
    return out


def test_mxfp4_quantize_and_dequantize(rng):
    x = rng.standard_normal((5, 100)).astype(np.float32)
    q = qift.quantize_mxfp4(x)
    assert (q.shape, q.blocks_per_row, q.padded_cols, q.nan_blocks) == ((5, 100), 4, 128, 0)
    d = q.dequantize()
    for r in range(5):
        np.testing.assert_array_equal(d[r], mx_reference(x[r]))
    # Element codes and E8M0 scales decode to the same values.
    scale = np.ldexp(1.0, q.scales.astype(np.int64) - 127)
    np.testing.assert_array_equal(d, E2M1[q.codes()] * np.repeat(scale, 32, axis=1)[:, :100])
    assert q.size_bytes == 5 * 4 * 17
    for mode in ("even", "floor"):
        assert qift.quantize_mxfp4(x, mode).shape == (5, 100)
    with pytest.raises(ValueError, match="unknown rounding 'up'"):
        qift.quantize_mxfp4(x, "up")
    x[2, 40] = np.nan
    assert qift.quantize_mxfp4(x).nan_blocks == 1
    assert np.isnan(qift.quantize_mxfp4(x).dequantize()[2, 32:64]).all()


def test_mxfp4_products(rng):
    w = rng.standard_normal((19, 96)).astype(np.float32)
    x = rng.standard_normal((4, 96)).astype(np.float32)
    qw = qift.quantize_mxfp4(w)
    wd = qw.dequantize().astype(np.float64)
    tol = 1e-5 * (np.abs(wd) @ np.abs(x).T.astype(np.float64)) + 1e-6
    y = qift.gemv(qw, x[0])
    assert np.all(np.abs(y - wd @ x[0]) <= tol[:, 0])
    assert np.all(np.abs(qw.gemv(x[0], reference=True) - wd @ x[0]) <= tol[:, 0])
    ys = qift.gemm(qw, x)
    for t in range(4):
        np.testing.assert_array_equal(ys[t], qw.gemv(x[t]))
    qa = qift.quantize_mxfp4(x)
    ad = qa.dequantize().astype(np.float64)
    ya = qw.gemm(qa)
    assert np.all(np.abs(ya - ad @ wd.T) <= 1e-5 * (np.abs(ad) @ np.abs(wd).T) + 1e-6)
    np.testing.assert_array_equal(ya[1], qw.gemv(qift.quantize_mxfp4(x[1])))
    np.testing.assert_allclose(qw.gemv(qift.quantize_mxfp4(x[1]), reference=True), ya[1],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(qift.Error, match="gemv"):
        qw.gemv(np.ones(95, np.float32))


def test_mxfp4_ggml_round_trip_and_quality(rng):
    x = rng.standard_normal((3, 64)).astype(np.float32)
    q = qift.quantize_mxfp4(x)
    raw = q.to_ggml()
    assert raw.dtype == np.uint8 and raw.size == 3 * 2 * 17
    back = qift.MXFP4Matrix.from_ggml(raw, 3, 64)
    np.testing.assert_array_equal(back.dequantize(), q.dequantize())
    with pytest.raises(qift.Error, match="cols must be a positive multiple of 32"):
        qift.MXFP4Matrix.from_ggml(raw, 3, 60)
    fit = qift.mxfp4_quality(x)
    d = q.dequantize().astype(np.float64)
    assert fit["relative_mse"] == pytest.approx(((x - d) ** 2).sum() / (x.astype(np.float64) ** 2).sum(),
                                                rel=1e-9)
    assert 0 < fit["code_entropy"] <= 3


@pytest.mark.parametrize("method", ["none", "hadamard", "block-hadamard", "perq", "torq-inter",
                                    "torq-intra", "torq"])
def test_mx_rotations_are_orthogonal(rng, method):
    x = rng.standard_normal((128, 64)).astype(np.float32)
    x[:, 3] *= 30
    r = qift.MXRotation.fit(method, x, iterations=4, max_blocks=64)
    assert (r.method, r.size) == (method, 64)
    q = r.to_matrix().astype(np.float64)
    np.testing.assert_allclose(q @ q.T, np.eye(64), atol=1e-5)
    np.testing.assert_allclose(r.apply(x), x @ q, rtol=1e-5, atol=1e-4)
    assert set(r.report) >= {"sample_blocks", "steps", "selected"}
    assert r.online_flops_per_token() >= 0
    if method in ("none", "hadamard", "block-hadamard"):
        np.testing.assert_array_equal(qift.MXRotation.fixed(method, 64).to_matrix(), r.to_matrix())
    if method == "torq-inter":
        assert r.givens and all(len(g) == 4 for g in r.givens)


def test_mx_rotation_errors(rng):
    assert qift.mx_rotation_methods()[0] == "none"
    with pytest.raises(ValueError, match="unknown method 'rot13'; valid: 'none', 'hadamard'"):
        qift.MXRotation.fit("rot13", np.ones((4, 32), np.float32))
    with pytest.raises(qift.Error, match="d = 40 is not a positive multiple of the MX block size 32"):
        qift.MXRotation.fit("torq", np.ones((4, 40), np.float32))


def test_channel_statistics(rng):
    x = rng.standard_normal((200, 24)).astype(np.float32)
    np.testing.assert_array_equal(qift.channel_absmax(x), np.abs(x).max(axis=0))
    qs = [0.5, 0.9, 0.99, 1.0]
    got = qift.channel_quantiles(x, qs)
    ref = np.quantile(np.abs(x).astype(np.float64), qs, axis=0)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    np.testing.assert_array_equal(qift.channel_quantile(x, 0.9), got[1])
    sk = qift.ChannelQuantileSketch(24, relative_error=0.01)
    sk.add(x[:100])
    sk.add(x[100:])
    assert sk.tokens == 200
    np.testing.assert_allclose(sk.quantiles([0.9])[0], got[1], rtol=0.011)
    np.testing.assert_array_equal(sk.quantile(1.0), got[3])


def test_smoothing_scales_closed_forms(rng):
    a = rng.uniform(0.1, 10, 16).astype(np.float32)
    w = rng.uniform(0.1, 2, 16).astype(np.float32)
    s = qift.smooth_scales(a, w, 0.5)
    ref = np.maximum(a.astype(np.float64) ** 0.5 / w.astype(np.float64) ** 0.5, 1e-5)
    np.testing.assert_allclose(s, ref, rtol=1e-6)
    wm = rng.standard_normal((8, 16)).astype(np.float32)
    np.testing.assert_array_equal(qift.weight_channel_max(wm), np.abs(wm).max(axis=0))
    np.testing.assert_array_equal(qift.weight_channel_max(wm, "signed_max"), wm.max(axis=0))
    np.testing.assert_array_equal(qift.smoothrot_scales(a, wm, 0.5),
                                  qift.smooth_scales(a, np.abs(wm).max(axis=0), 0.5))
    x = rng.standard_normal((50, 16)).astype(np.float32)
    np.testing.assert_array_equal(qift.smooth_activations(x, s), x / s)
    np.testing.assert_array_equal(qift.smooth_weights(wm, s), wm * s)
    with pytest.raises(qift.Error, match="smooth_scales"):
        qift.smooth_scales(a, w[:3], 0.5)


def test_smooth_layer(rng):
    x = rng.standard_normal((128, 64)).astype(np.float32)
    x[:, 7] *= 25
    w = rng.standard_normal((32, 64)).astype(np.float32)
    exact = qift.SmoothLayer(x, w, activations=False, weights=False)
    ones = np.ones(64, np.float32)
    assert exact.error(ones) <= 1e-9 * exact.reference_energy
    layer = qift.SmoothLayer(x, w, levels="int4")
    assert (layer.levels, layer.tokens, layer.channels, layer.outputs) == ("int4", 128, 64, 32)
    s = qift.channel_absmax(x) ** 0.5
    e = layer.error(s)
    assert e > 0 and layer.error(2 * s) == e  # invariant to s -> 2s, exactly
    e2, grad = layer.error_and_gradient(s)
    assert e2 == e and grad.shape == (64,) and grad.dtype == np.float64
    _, g_sub = layer.error_and_gradient(s, mode="constant", subset=[0, 5, 9])
    assert np.isfinite(g_sub).all()
    found = layer.search(alphas=[0.0, 0.5, 1.0], quantiles=[0.99, 1.0])
    assert found["errors"].shape == (2, 3) and found["error"] == found["errors"].min()
    assert found["scales"].shape == (64,)
    trained = layer.train(found["scales"], x[:16], steps=3)
    assert trained["loss"][0] == trained["initial_error"] and trained["error"] <= trained["initial_error"]
    assert np.isfinite(trained["heldout_error"])
    for rotation in (None, qift.Rotation.hadamard(64, 3)):
        assert qift.SmoothLayer(x, w, rotation=rotation, levels="mnz").error(ones) > 0
    with pytest.raises(TypeError, match="rotation must be None, a seed"):
        qift.SmoothLayer(x, w, rotation="hadamard")
    with pytest.raises(ValueError, match="unknown level set 'nf2'; valid names: int4, int3, mnz"):
        qift.SmoothLayer(x, w, levels="nf2")
    with pytest.raises(qift.Error, match="smooth_layer::error"):
        layer.error(np.ones(3, np.float32))


def test_one_bit_closed_forms(rng):
    w = rng.standard_normal((16, 128)).astype(np.float32)
    r = qift.binarize_xnor(w)
    mu = w.astype(np.float64).mean(axis=1)
    alpha = np.abs(w - mu[:, None]).mean(axis=1)
    np.testing.assert_allclose(r.mean, mu, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r.scale, alpha, rtol=1e-6)
    np.testing.assert_array_equal(r.signs, np.where(w - r.mean[:, None] >= 0, 1, -1))
    np.testing.assert_array_equal(r.dequantized, r.scale[:, None] * r.signs + r.mean[:, None])
    arb = qift.binarize_arb(w, iterations=5)
    assert len(arb.objective) == 6 and np.all(np.diff(arb.objective) <= 1e-9)
    arbx = qift.binarize_arb_x(w, np.eye(128), iterations=5)
    np.testing.assert_allclose(arbx.dequantized, arb.dequantized, rtol=1e-5, atol=1e-6)
    rc = qift.binarize_arb_rc(w)
    np.testing.assert_array_equal(rc.dequantized,
                                  (rc.row_scale[:, None] * rc.signs) * rc.col_scale[None, :])
    assert rc.storage["bits_per_weight"] == pytest.approx(1 + 16 / 128 + 16 / 16)


def test_output_alignment_and_billm(rng):
    w = rng.standard_normal((16, 128)).astype(np.float32)
    x = rng.standard_normal((256, 128)).astype(np.float64)
    gram = x.T @ x
    oa = qift.binarize_output_aligned(w, gram, gram, iterations=3)
    assert np.all(np.diff(oa.objective) <= 1e-6 * abs(oa.objective[0]))
    loss = qift.output_alignment_loss(w, oa.dequantized, gram, gram)
    assert loss == pytest.approx(oa.objective[-1], rel=1e-6, abs=1e-6)
    assert len(oa.preservation) == 4
    assert qift.weighted_error(w, oa.dequantized, gram) >= 0
    assert qift.attention_preservation(w, oa.dequantized, gram) > 0
    h = 2.0 / 256 * gram
    b = qift.binarize_billm(w, h, block_size=64)
    assert b.dequantized.shape == (16, 128) and len(b.blocks) == 2
    assert b.salient_column.sum() == sum(len(blk["salient"]) for blk in b.blocks)
    np.testing.assert_allclose(qift.pack(b).dequantize(), b.dequantized, rtol=1e-5, atol=1e-5)


def test_binary_matrix_products(rng):
    w = rng.standard_normal((24, 200)).astype(np.float32)
    for result in (qift.binarize_arb(w), qift.binarize_arb_rc(w)):
        bm = qift.pack(result)
        assert bm.shape == (24, 200)
        wd = bm.dequantize()
        np.testing.assert_array_equal(wd, result.dequantized)
        x = rng.standard_normal(200).astype(np.float32)
        tol = 2e-6 * (np.abs(wd).astype(np.float64) @ np.abs(x)) + 1e-6
        assert np.all(np.abs(qift.gemv(bm, x) - wd.astype(np.float64) @ x) <= tol)
        assert np.all(np.abs(bm.gemv(x, reference=True) - wd.astype(np.float64) @ x) <= tol)
        xs = rng.standard_normal((3, 200)).astype(np.float32)
        for act in (bm.quantize_int8_activations(xs), bm.quantize_activations(xs)):
            y = bm.gemm(act)
            np.testing.assert_array_equal(y, bm.gemm(act, reference=True))
            # The activations quantize column_scales ⊙ x: compare with the unscaled weights.
            cs = np.ones(200, np.float32) if bm.column_scales is None else bm.column_scales
            core = wd / cs
            ad = act.dequantize().astype(np.float64)
            assert np.all(np.abs(y - ad @ core.T.astype(np.float64))
                          <= 1e-5 * (np.abs(ad) @ np.abs(core).T) + 1e-5)
        one = bm.quantize_int8_activations(xs[1])
        np.testing.assert_array_equal(bm.gemv(one), bm.gemm(bm.quantize_int8_activations(xs))[1])


def test_binary_matrix_from_planes(rng):
    signs = np.where(rng.standard_normal((4, 130)) > 0, 1, -1).astype(np.int8)
    scales = rng.uniform(0.5, 1, (4, 1)).astype(np.float32)
    bm = qift.BinaryMatrix([(signs, scales)])
    np.testing.assert_array_equal(bm.dequantize(), scales * signs)
    mask = (rng.standard_normal((4, 130)) > 0).astype(np.uint8)
    two = qift.BinaryMatrix([{"signs": signs, "scales": scales},
                             {"signs": signs, "scales": scales, "mask": mask}],
                            means=np.zeros((4, 1), np.float32))
    assert two.plane_count == 2 and two.stored_sign_planes == 1
    np.testing.assert_allclose(two.dequantize(), scales * signs * (1 + mask))
    bad = signs.copy()
    bad[1, 2] = 2
    with pytest.raises(qift.Error, match=r"binary_matrix: plane 0 signs\(1, 2\) is 2"):
        qift.BinaryMatrix([(bad, scales)])
    with pytest.raises(ValueError, match="plane 0 has no 'scales'"):
        qift.BinaryMatrix([{"signs": signs}])
