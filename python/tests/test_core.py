# SPDX-License-Identifier: MIT
"""Level sets, quantize, statistics, pack/unpack and A4 activations: closed forms, the C++
oracle, dtype/layout conversions and the error mapping."""

import statistics

import numpy as np
import pytest

import qift

ALL_SETS = ["standard", "asymmetric", "mnz", "pot_mnz", "nf2", "lloyd", "pm12", "ternary",
            "binary", "int3", "int4", "asymmetric_int4", "e2m1"]


def nearest_codes(levels, u):
    """level_traits::encode in NumPy: thresholds at float32 midpoints of the sorted levels."""
    table = np.asarray(levels, np.float32)
    order = np.argsort(table, kind="stable")
    s = table[order]
    thresholds = np.float32(0.5) * (s[:-1] + s[1:])
    k = (u[..., None] > thresholds).sum(axis=-1)
    return order[k].astype(np.uint8)


def test_level_sets_listed():
    assert qift.level_sets() == ALL_SETS
    np.testing.assert_array_equal(qift.levels("mnz"), [-1.5, -0.5, 0.5, 1.5])
    np.testing.assert_array_equal(qift.levels("pot_mnz"), [-4, -1, 1, 4])
    assert qift.levels("e2m1").shape == (16,)
    info = qift.level_set_info("pot_mnz")
    assert info["power_of_two"] and info["bits"] == 2 and info["integer_multiplier"] == 1
    assert qift.level_set_info("mnz")["integer_multiplier"] == 2
    assert qift.level_set_info("asymmetric")["has_zero_point"]
    assert qift.level_set_info("int3")["storage_bits"] == 4


def test_unknown_level_set_lists_valid_names(rng):
    w = rng.standard_normal((4, 64)).astype(np.float32)
    with pytest.raises(ValueError) as e:
        qift.quantize(w, "mnz2")
    assert str(e.value) == ("qift.quantize: unknown level set 'mnz2'; valid names: "
                            + ", ".join(ALL_SETS))


@pytest.mark.parametrize("levels", ALL_SETS)
def test_dequantize_is_scale_times_level(rng, levels):
    w = rng.standard_normal((7, 96)).astype(np.float32)
    q = qift.quantize(w, levels, group_size=32)
    assert q.levels == levels and q.shape == (7, 96) and q.group_size == 32 and q.groups == 3
    table = qift.levels(levels)
    codes, scales = q.codes, q.scales
    assert codes.dtype == np.uint8 and scales.shape == (7, 3)
    g = np.arange(96) // 32
    if q.zeros is None:
        assert not qift.level_set_info(levels)["has_zero_point"]
        expect = scales[:, g] * table[codes]
    else:
        expect = scales[:, g] * (table[codes] - q.zeros[:, g])
    np.testing.assert_array_equal(q.dequantize(), expect.astype(np.float32))
    # Codes are the nearest levels of w / scale + zero.
    zeros = np.zeros_like(scales) if q.zeros is None else q.zeros
    u = w / scales[:, g] + zeros[:, g]
    np.testing.assert_array_equal(codes, nearest_codes(table, u))


def test_max_rule_scale_closed_form(rng):
    w = rng.standard_normal((5, 64)).astype(np.float32)
    q = qift.quantize(w, "mnz", rule="max")
    np.testing.assert_array_equal(q.scales[:, 0], np.abs(w).max(axis=1) / np.float32(1.5))
    scale, zero = qift.find_params(w[2], "mnz", rule="max")
    assert (np.float32(scale), zero) == (q.scales[2, 0], 0.0)
    q = qift.quantize(w, "standard", rule="max")
    np.testing.assert_array_equal(q.scales[:, 0], np.abs(w).max(axis=1))


def test_find_params_matches_quantize(rng):
    w = rng.standard_normal((3, 128)).astype(np.float32)
    for levels in ("mnz", "asymmetric", "int4"):
        q = qift.quantize(w, levels, refine=True)
        for r in range(3):
            scale, zero = qift.find_params(w[r], levels, refine=True)
            assert np.float32(scale) == q.scales[r, 0]
            if q.zeros is not None:
                assert np.float32(zero) == q.zeros[r, 0]


@pytest.mark.parametrize("levels", ["mnz", "int4", "asymmetric"])
@pytest.mark.parametrize("options", [
    dict(rule="search", exponent=2.4, grid=80, grid_step=0.01, refine=False, group_size=0),
    dict(rule="max", exponent=2.0, grid=1, grid_step=0.01, refine=True, group_size=64),
    dict(rule="search", exponent=2.0, grid=40, grid_step=0.02, refine=True, group_size=32),
])
def test_quantize_equals_cpp(rng, oracle, levels, options):
    w = rng.standard_normal((33, 192)).astype(np.float32)
    w[3, 7] = 9.0
    q = qift.quantize(w, levels, **options)
    o = options
    ref = oracle("quantize", levels, "w", "OUT", o["rule"], o["exponent"], o["grid"],
                 o["grid_step"], int(o["refine"]), o["group_size"], w=w)
    np.testing.assert_array_equal(q.codes, ref["codes"])
    np.testing.assert_array_equal(q.scales, ref["scales"])
    np.testing.assert_array_equal(q.dequantize(), ref["dequantized"])
    if q.zeros is not None:
        np.testing.assert_array_equal(q.zeros, ref["zeros"])


def test_float16_float64_and_layouts_convert(rng):
    w = rng.standard_normal((16, 128)).astype(np.float32)
    base = qift.quantize(w, "mnz")
    w16 = w.astype(np.float16)
    np.testing.assert_array_equal(qift.quantize(w16, "mnz").codes,
                                  qift.quantize(w16.astype(np.float32), "mnz").codes)
    w64 = w.astype(np.float64)
    np.testing.assert_array_equal(qift.quantize(w64, "mnz").dequantize(), base.dequantize())
    # Fortran order, negative strides, big-endian, a Python list: one copy, same result.
    for variant in (np.asfortranarray(w), w[::-1][::-1], w.astype(">f4"), w.tolist()):
        np.testing.assert_array_equal(qift.quantize(variant, "mnz").dequantize(),
                                      base.dequantize())
    # Non-contiguous columns and a column slice (read in place with its row stride).
    wide = rng.standard_normal((16, 256)).astype(np.float32)
    for view in (wide[:, ::2], wide[:, :128], wide[::2, 64:192]):
        np.testing.assert_array_equal(qift.quantize(view, "mnz").dequantize(),
                                      qift.quantize(np.ascontiguousarray(view), "mnz").dequantize())
    assert qift.fake_quantize(w, "mnz").dtype == np.float32
    np.testing.assert_array_equal(qift.fake_quantize(w, "mnz"), base.dequantize())


def test_bad_inputs_raise_clear_errors(rng):
    w = rng.standard_normal((4, 64)).astype(np.float32)
    with pytest.raises(TypeError, match="qift.quantize: w must be a float32, float64 or float16 "
                                        "array, got dtype int64"):
        qift.quantize(np.zeros((4, 64), np.int64))
    with pytest.raises(TypeError, match="got dtype complex64"):
        qift.quantize(w.astype(np.complex64))
    with pytest.raises(TypeError, match="None"):
        qift.quantize(None)
    with pytest.raises(ValueError, match=r"qift.quantize: w must be 2-D, got a 1-D array of "
                                         r"shape \(64,\)"):
        qift.quantize(w[0])
    with pytest.raises(ValueError, match="must be 2-D, got a 3-D array"):
        qift.quantize(w[None])
    with pytest.raises(ValueError, match="unknown rule 'bogus'; valid: 'search', 'max'"):
        qift.quantize(w, rule="bogus")


def test_qift_errors_become_value_errors_with_the_cpp_message(rng):
    w = rng.standard_normal((4, 256)).astype(np.float32)
    assert issubclass(qift.Error, ValueError)
    with pytest.raises(qift.Error) as e:
        qift.quantize(w, "mnz", group_size=7)
    assert str(e.value) == "quantize: group_size 7 does not divide the row length 256"
    w[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"quantize: w\(1, 3\) is nan \(weights must be finite"):
        qift.quantize(w, "mnz")
    with pytest.raises(qift.Error, match="quantize: w is empty"):
        qift.quantize(np.zeros((0, 8), np.float32))


def test_quantized_matrix_from_parts(rng):
    w = rng.standard_normal((6, 128)).astype(np.float32)
    for levels in ("mnz", "asymmetric"):
        q = qift.quantize(w, levels, group_size=64)
        r = qift.QuantizedMatrix(q.codes, q.scales, q.zeros, levels=levels)
        assert r.group_size == 64
        np.testing.assert_array_equal(r.dequantize(), q.dequantize())
        assert not q.codes.flags.writeable
    q = qift.quantize(w, "mnz")
    with pytest.raises(ValueError, match="zeros given for level set 'mnz'"):
        qift.QuantizedMatrix(q.codes, q.scales, q.scales, levels="mnz")
    with pytest.raises(ValueError, match="needs zeros"):
        qift.QuantizedMatrix(q.codes, q.scales, levels="asymmetric")
    bad = np.array(q.codes)
    bad[0, 0] = 4
    with pytest.raises(qift.Error, match="quantized_matrix: code 4 out of range for 4 levels"):
        qift.QuantizedMatrix(bad, q.scales, levels="mnz")
    with pytest.raises(ValueError, match=r"outside \[0, 255\]"):
        qift.QuantizedMatrix(np.full((6, 128), -1), q.scales, levels="mnz")


def test_results_outlive_their_object(rng):
    w = rng.standard_normal((4, 64)).astype(np.float32)
    codes = qift.quantize(w, "mnz").codes  # a view whose base keeps the result alive
    import gc
    gc.collect()
    assert codes.shape == (4, 64) and codes.max() < 4


def test_describe_matches_numpy(rng):
    x = rng.standard_normal((50, 41)).astype(np.float32) ** 3
    s = qift.describe(x)
    v = x.astype(np.float64).ravel()
    m = v.mean()
    sd = np.sqrt(((v - m) ** 2).mean())
    z = (v - m) / sd
    assert s.count == v.size
    assert s.mean == pytest.approx(m, rel=1e-12, abs=1e-12)
    assert s.stddev == pytest.approx(sd, rel=1e-12)
    assert s.skewness == pytest.approx((z ** 3).mean(), rel=1e-9)
    assert s.excess_kurtosis == pytest.approx((z ** 4).mean() - 3, rel=1e-9)
    nd = statistics.NormalDist()
    q = np.array([nd.inv_cdf((i + 0.5) / v.size) for i in range(v.size)])
    assert s.qq_error == pytest.approx(np.sqrt(((np.sort(z) - q) ** 2).mean()), rel=1e-6)
    ms = qift.matrix_stats(x)
    assert ms.as_dict() == s.as_dict()
    rows = qift.row_stats(x)
    assert len(rows) == 50 and rows[3].mean == pytest.approx(x[3].astype(np.float64).mean())
    with pytest.raises(qift.Error, match="describe: non-finite value"):
        qift.describe(np.array([1.0, np.inf]))


def np_pack(codes, bits):
    """The packed layout of include/qift/pack.hpp, in NumPy."""
    rows, cols = codes.shape
    slots = 8 // bits
    block = 64 * slots
    nblocks = -(-cols // block)
    padded = np.zeros((rows, nblocks * block), np.uint8)
    padded[:, :cols] = codes
    parts = padded.reshape(rows, nblocks, slots, 64)
    out = np.zeros((rows, nblocks, 64), np.uint8)
    for s in range(slots):
        out |= (parts[:, :, s, :] << (s * bits)).astype(np.uint8)
    return out.reshape(rows, nblocks * 64)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_pack_layout_and_round_trip(rng, bits):
    codes = rng.integers(0, 1 << bits, size=(5, 300), dtype=np.uint8)
    packed = qift.pack(codes, bits)
    assert packed.dtype == np.uint8 and packed.shape == (5, qift.packed_row_bytes(300, bits))
    np.testing.assert_array_equal(packed, np_pack(codes, bits))
    np.testing.assert_array_equal(qift.unpack(packed, bits, 300), codes)
    # Other integer dtypes and non-contiguous codes convert.
    np.testing.assert_array_equal(qift.pack(codes.astype(np.int64), bits), packed)
    wide = np.zeros((5, 600), np.uint8)
    wide[:, ::2] = codes
    np.testing.assert_array_equal(qift.pack(wide[:, ::2], bits), packed)


def test_pack_errors():
    codes = np.zeros((2, 10), np.uint8)
    codes[0, 5] = 4
    with pytest.raises(qift.Error, match=r"pack: codes\(0, 5\) = 4 does not fit in 2 bits"):
        qift.pack(codes, 2)
    with pytest.raises(ValueError, match="bits must be 1, 2 or 4, got 3"):
        qift.pack(codes, 3)
    with pytest.raises(TypeError, match="must be an integer array"):
        qift.pack(codes.astype(np.float32), 2)
    with pytest.raises(ValueError, match="take 64 bytes per row, the array has 32"):
        qift.unpack(np.zeros((2, 32), np.uint8), 2, 10)


def test_quantize_activations_closed_form(rng):
    x = rng.standard_normal((3, 300)).astype(np.float32)
    x[1] = 0.0
    for clip, rng_name, lo in ((1.0, "symmetric", -7), (0.9, "full", -8)):
        a = qift.quantize_activations(x, clip=clip, range=rng_name)
        assert (a.tokens, a.cols, a.padded_cols) == (3, 300, 512)
        scale = np.float32(clip) * np.abs(x).max(axis=1) / np.float32(7)
        np.testing.assert_array_equal(a.scales, scale)
        for t in range(3):
            if scale[t] == 0:
                assert not a.codes[t].any()
                continue
            inv = np.float32(1) / scale[t]
            np.testing.assert_array_equal(a.codes[t], np.clip(np.rint(x[t] * inv), lo, 7))
        np.testing.assert_array_equal(a.sums, a.codes.sum(axis=1))
        np.testing.assert_array_equal(a.dequantize(), a.scales[:, None] * a.codes)
    one = qift.quantize_activations(x[0])
    assert one.tokens == 1
    with pytest.raises(qift.Error, match=r"quantize_activations: clip must be in \(0, 1\]"):
        qift.quantize_activations(x, clip=1.5)
    with pytest.raises(ValueError, match="unknown range 'half'"):
        qift.quantize_activations(x, range="half")


def test_threads_setting(rng):
    w = rng.standard_normal((64, 256)).astype(np.float32)
    base = qift.quantize(w, "mnz").dequantize()
    try:
        for n in (1, 3):
            qift.set_num_threads(n)
            assert qift.get_num_threads() == n
            np.testing.assert_array_equal(qift.quantize(w, "mnz").dequantize(), base)
    finally:
        qift.set_num_threads(0)
    assert qift.get_num_threads() >= 1
