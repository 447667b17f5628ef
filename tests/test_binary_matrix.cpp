// SPDX-License-Identifier: MIT
// Tests of binary_matrix.hpp: packing, sharing and byte counts by hand, dequantize against the
// defining formula, every compiled kernel path against the scalar reference (int32 block dots
// and integer GEMVs bit for bit, float within rounding) and against dequantize()·x in double,
// on odd shapes with 1-3 planes, element / column / complementary masks, column scales and
// means; GEMM = GEMV token by token; the A8 quantizer; errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <qift/binary_matrix.hpp>

#include "test_support.hpp"

namespace {

using qift::binary_matrix;
using qift::binary_plane_view;
using qift::matrix;
using qift::matrix_view;
using qift::detail::binary_path;

/// complement: the complement of the previous plane's mask, same signs (BiLLM's two groups);
/// const_*: a constant plane (no signs, B = +1) on a random element / column mask.
enum class mask_kind { none, element, column, complement, const_element, const_column };

bool constant_kind(mask_kind k) {
    return k == mask_kind::const_element || k == mask_kind::const_column;
}

/// The inputs of a random binary matrix, kept for the oracles, and the matrix itself.
struct random_binary {
    std::size_t rows = 0, cols = 0, group = 0, blocks = 0;
    std::vector<matrix<std::int8_t>> signs;
    std::vector<matrix<float>> scales;
    std::vector<matrix<std::uint8_t>> masks;  // 0x0 for a plane without mask
    std::vector<float> col;                   // empty: no column scales
    matrix<float> means;                      // 0x0: no means
    binary_matrix w;

    /// Σ_p α m s + μ at (r, k): Ŵ without the column scale, in double.
    double base(std::size_t r, std::size_t k) const {
        const std::size_t b = k / group;
        double v = 0.0;
        for (std::size_t p = 0; p < signs.size(); ++p)
            if (masks[p].empty() || masks[p](r, k))
                v += double(scales[p](r, b)) * double(signs[p](r, k));
        if (!means.empty()) v += double(means(r, b));
        return v;
    }
};

/// Plane p gets mask kinds[p]; complement: the complement of plane p − 1's mask, with the same
/// signs (BiLLM's two groups). group 0: one block per row.
random_binary make_binary(std::size_t rows, std::size_t cols, std::size_t group,
                          const std::vector<mask_kind>& kinds, bool col_scales, bool means,
                          unsigned seed) {
    std::mt19937 gen(seed);
    std::uniform_int_distribution<int> coin(0, 1);
    std::uniform_real_distribution<float> scale(0.01f, 1.0f), mean(-0.5f, 0.5f);
    random_binary rb;
    rb.rows = rows;
    rb.cols = cols;
    rb.group = group == 0 || group >= cols ? cols : group;
    rb.blocks = (cols + rb.group - 1) / rb.group;
    for (std::size_t p = 0; p < kinds.size(); ++p) {
        matrix<std::int8_t> s(rows, cols);
        for (auto& v : s.flat()) v = static_cast<std::int8_t>(coin(gen) ? 1 : -1);
        matrix<float> a(rows, rb.blocks);
        for (auto& v : a.flat()) v = scale(gen);
        matrix<std::uint8_t> m;
        if (constant_kind(kinds[p])) std::fill(s.flat().begin(), s.flat().end(), std::int8_t{1});
        if (kinds[p] == mask_kind::element || kinds[p] == mask_kind::const_element) {
            m = matrix<std::uint8_t>(rows, cols);
            for (auto& v : m.flat()) v = static_cast<std::uint8_t>(coin(gen));
        } else if (kinds[p] == mask_kind::column || kinds[p] == mask_kind::const_column) {
            m = matrix<std::uint8_t>(rows, cols);
            std::vector<std::uint8_t> on(cols);
            for (auto& v : on) v = static_cast<std::uint8_t>(gen() % 8 == 0);  // ~1/8 of columns
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t k = 0; k < cols; ++k) m(r, k) = on[k];
        } else if (kinds[p] == mask_kind::complement) {
            REQUIRE(p > 0);
            REQUIRE(!rb.masks[p - 1].empty());
            m = matrix<std::uint8_t>(rows, cols);
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t k = 0; k < cols; ++k)
                    m(r, k) = static_cast<std::uint8_t>(1 - rb.masks[p - 1](r, k));
            s = rb.signs[p - 1];
        }
        rb.signs.push_back(std::move(s));
        rb.scales.push_back(std::move(a));
        rb.masks.push_back(std::move(m));
    }
    if (col_scales) {
        rb.col.resize(cols);
        for (auto& v : rb.col) v = scale(gen) * 2.0f;
    }
    if (means) {
        rb.means = matrix<float>(rows, rb.blocks);
        for (auto& v : rb.means.flat()) v = mean(gen);
    }
    std::vector<binary_plane_view> views;
    for (std::size_t p = 0; p < kinds.size(); ++p)
        views.push_back({constant_kind(kinds[p]) ? matrix_view<const std::int8_t>{}
                                                 : matrix_view<const std::int8_t>(rb.signs[p]),
                         rb.scales[p], rb.masks[p]});
    rb.w = binary_matrix(views, group, rb.col, rb.means);
    return rb;
}

std::vector<binary_path> compiled_paths() {
    std::vector<binary_path> out;
    for (auto p : {binary_path::scalar, binary_path::avx2, binary_path::avx512})
        if (qift::detail::binary_path_compiled(p)) out.push_back(p);
    return out;
}

bool bit_equal(std::span<const float> a, std::span<const float> b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](float x, float y) {
               return std::memcmp(&x, &y, sizeof x) == 0;
           });
}

struct config {
    std::vector<mask_kind> kinds;
    std::size_t group;
    bool col_scales, means;
};

// 1-3 planes; with and without masks (element, column, complementary), α_c and μ; per-row
// scales, 64- and 128-column blocks (ragged at 300 columns).
const std::vector<config>& configs() {
    static const std::vector<config> c{
        {{mask_kind::none}, 0, false, false},
        {{mask_kind::none}, 0, true, false},
        {{mask_kind::none}, 128, false, true},
        {{mask_kind::element, mask_kind::none}, 64, true, true},
        {{mask_kind::element, mask_kind::complement, mask_kind::column}, 128, true, false},
        {{mask_kind::none, mask_kind::column, mask_kind::element}, 0, false, true},
        // Constant planes (BiLLM's group means), also as plane 0.
        {{mask_kind::const_column, mask_kind::none, mask_kind::element, mask_kind::const_element},
         128,
         true,
         true},
        {{mask_kind::const_element}, 0, false, false},
    };
    return c;
}

const std::vector<std::size_t> test_rows{1, 3, 17, 100};
const std::vector<std::size_t> test_cols{64, 128, 192, 300, 4096};

}  // namespace

TEST_CASE("binary matrix: packing, accessors and dequantize follow the definition") {
    unsigned seed = 1;
    for (const auto& cf : configs())
        for (std::size_t rows : {1u, 5u})
            for (std::size_t cols : {64u, 300u}) {
                const auto rb =
                    make_binary(rows, cols, cf.group, cf.kinds, cf.col_scales, cf.means, seed++);
                const auto& w = rb.w;
                REQUIRE(w.rows() == rows);
                REQUIRE(w.cols() == cols);
                CHECK(w.plane_count() == cf.kinds.size());
                CHECK(w.blocks_per_row() == rb.blocks);
                CHECK(w.words_per_row() == (cols + 63) / 64);
                const auto d = qift::dequantize(w);
                bool ok = true;
                for (std::size_t r = 0; r < rows; ++r)
                    for (std::size_t k = 0; k < cols; ++k) {
                        for (std::size_t p = 0; p < cf.kinds.size(); ++p) {
                            ok = ok && w.sign(p, r, k) == rb.signs[p](r, k);
                            const int m = rb.masks[p].empty() ? 1 : rb.masks[p](r, k);
                            ok = ok && w.mask(p, r, k) == m;
                        }
                        const double want = rb.base(r, k) * (rb.col.empty() ? 1.0 : rb.col[k]);
                        ok =
                            ok && std::fabs(double(d(r, k)) - want) <= 1e-6 * (1 + std::fabs(want));
                    }
                CHECK(ok);
            }
}

TEST_CASE("binary matrix: bits_per_weight and storage sharing by hand") {
    // 2 x 100, per-row scales, one plane, no mask: 2 words a row.
    matrix<std::int8_t> s(2, 100, 1), s2(2, 100, -1);
    s(1, 99) = -1;
    matrix<float> a(2, 1, 0.5f);
    const binary_matrix w1({binary_plane_view{s, a}});
    // signs 2·2·8 = 32 bytes, scales 2·4 = 8: 40 bytes for 200 weights = 1.6 bits.
    CHECK(w1.size_bytes() == 40);
    CHECK(w1.bits_per_weight() == doctest::Approx(1.6));
    CHECK(w1.sign(0, 1, 99) == -1);
    CHECK(w1.sign(0, 1, 98) == 1);

    // Column scales (100 floats) and means (2 floats): + 408 bytes.
    std::vector<float> cs(100, 2.0f);
    matrix<float> mu(2, 1, 0.25f);
    const binary_matrix w2({binary_plane_view{s, a}}, 0, cs, mu);
    CHECK(w2.size_bytes() == 40 + 400 + 8);

    // Element mask M, its complement with the same signs (stored once each), and a plane of
    // other signs with a column mask (one row of 2 words): 2 sign planes (64 bytes), one element
    // mask (32), one column mask (16), 3·2 scales (24) = 136 bytes.
    matrix<std::uint8_t> m(2, 100, 0), mc(2, 100, 1), col(2, 100, 0);
    for (std::size_t k = 0; k < 100; k += 3) m(0, k) = 1, mc(0, k) = 0;
    m(1, 7) = 1, mc(1, 7) = 0;
    col(0, 10) = col(1, 10) = 1;
    const binary_matrix w3(
        {binary_plane_view{s, a, m}, binary_plane_view{s, a, mc}, binary_plane_view{s2, a, col}});
    CHECK(w3.stored_sign_planes() == 2);
    CHECK(w3.stored_masks() == 2);
    CHECK(!w3.has_column_mask(0));
    CHECK(w3.has_column_mask(2));
    CHECK(w3.size_bytes() == 136);
    CHECK(w3.bits_per_weight() == doctest::Approx(136.0 * 8 / 200));
    CHECK(w3.mask(1, 0, 3) == 0);
    CHECK(w3.mask(1, 0, 4) == 1);
    CHECK(w3.mask(2, 1, 10) == 1);
    CHECK(w3.mask(2, 1, 11) == 0);

    // An all-ones mask is dropped; 128-column blocks at 300 columns: 3 blocks, the last ragged.
    matrix<std::int8_t> s3(4, 300, 1);
    matrix<float> a3(4, 3, 1.0f);
    matrix<std::uint8_t> ones(4, 300, 1);
    const binary_matrix w4({binary_plane_view{s3, a3, ones}}, 128);
    CHECK(!w4.has_mask(0));
    CHECK(w4.blocks_per_row() == 3);
    CHECK(w4.group_size() == 128);
    // 4·5 words (160 bytes) + 12 scales (48 bytes)
    CHECK(w4.size_bytes() == 208);

    // A constant plane stores no signs and keeps even an all-ones mask (it reads it as signs);
    // it shares an equal mask but not a complementary one.
    const binary_matrix w5({binary_plane_view{s3, a3, ones}, binary_plane_view{{}, a3, ones}}, 128);
    CHECK(w5.stored_sign_planes() == 1);
    CHECK(!w5.has_signs(1));
    CHECK(w5.has_mask(1));
    CHECK(w5.sign(1, 2, 7) == 1);
    CHECK(w5.has_column_mask(1));  // all ones: the same on every row, one row of 5 words
    CHECK(w5.size_bytes() == 160 + 40 + 2 * 48);
    matrix<std::int8_t> s6(2, 100, 1);
    const binary_matrix w6(
        {binary_plane_view{s6, a, m}, binary_plane_view{{}, a, mc}, binary_plane_view{{}, a, m}});
    CHECK(w6.stored_masks() == 2);
    CHECK(w6.mask(1, 0, 3) == 0);
    CHECK(w6.mask(2, 0, 3) == 1);
}

TEST_CASE("binary matrix: float GEMV matches dequantize()·x and the reference, every path") {
    unsigned seed = 100;
    for (const auto& cf : configs())
        for (std::size_t rows : test_rows)
            for (std::size_t cols : test_cols) {
                CAPTURE(rows);
                CAPTURE(cols);
                CAPTURE(cf.kinds.size());
                CAPTURE(cf.group);
                const auto rb =
                    make_binary(rows, cols, cf.group, cf.kinds, cf.col_scales, cf.means, seed++);
                const auto x = qift::test::gaussian_matrix(1, cols, seed++);
                const auto d = qift::dequantize(rb.w);
                std::vector<double> want(rows), mag(rows);
                for (std::size_t r = 0; r < rows; ++r)
                    for (std::size_t k = 0; k < cols; ++k) {
                        want[r] += double(d(r, k)) * double(x(0, k));
                        mag[r] += std::fabs(double(d(r, k)) * double(x(0, k)));
                    }
                std::vector<float> yr(rows), y(rows);
                qift::gemv_reference(rb.w, x.row(0), yr);
                for (auto path : compiled_paths()) {
                    CAPTURE(int(path));
                    qift::detail::binary_gemv(rb.w, matrix_view<const float>(x.data(), 1, cols),
                                              std::span<float>(y), path, "gemv");
                    bool ok = true;
                    for (std::size_t r = 0; r < rows; ++r) {
                        const double tol = 1e-5 * mag[r] + 1e-30;
                        ok = ok && std::fabs(double(y[r]) - want[r]) <= tol &&
                             std::fabs(double(y[r]) - double(yr[r])) <= tol;
                    }
                    CHECK(ok);
                }
                qift::gemv(rb.w, x.row(0), y);
                bool ok = true;
                for (std::size_t r = 0; r < rows; ++r)
                    ok = ok && std::fabs(double(y[r]) - want[r]) <= 1e-5 * mag[r] + 1e-30;
                CHECK(ok);
            }
}

TEST_CASE("binary matrix: integer block dots are exact in int32 on every path") {
    // The kernels' per-(row, block) dots against the scalar kernel, for every plane and mask mode
    // and every row tile, A8 codes with extremes (−127 / 127) mixed in and A4 codes (−8..8).
    unsigned seed = 300;
    for (const auto& cf : configs())
        for (std::size_t cols : test_cols)
            for (bool int4 : {false, true}) {
                CAPTURE(cols);
                CAPTURE(int4);
                const std::size_t rows = 13;  // 8-, 4- and single-row tiles
                const auto rb = make_binary(rows, cols, cf.group, cf.kinds, false, false, seed++);
                const auto& w = rb.w;
                const auto& g = w.geometry();
                std::mt19937 gen(seed++);
                qift::aligned_vector<std::int8_t> a(g.words * 64, 0);
                for (std::size_t k = 0; k < cols; ++k) {
                    const int lim = int4 ? 8 : 127;
                    a[k] = static_cast<std::int8_t>(k % 7 == 0
                                                        ? (k % 2 ? lim : -lim)
                                                        : int(gen() % unsigned(2 * lim + 1)) - lim);
                }
                std::vector<std::int32_t> asum(g.blocks);
                for (std::size_t b = 0; b < g.blocks; ++b)
                    for (std::size_t k = b * rb.group; k < std::min(cols, (b + 1) * rb.group); ++k)
                        asum[b] += a[k];
                const auto tiles = [&](auto kernel, const qift::detail::binary_plane_ref& ref,
                                       std::int32_t* out) {
                    using K = decltype(kernel);
                    const auto one = [&](auto rt, std::size_t r) {
                        constexpr int R = decltype(rt)::value;
                        if (int4)
                            qift::detail::binary_int_tile<K, R, true>(
                                ref, g, r, a.data(), asum.data(), out + r * g.blocks, g.blocks);
                        else
                            qift::detail::binary_int_tile<K, R, false>(
                                ref, g, r, a.data(), asum.data(), out + r * g.blocks, g.blocks);
                    };
                    qift::detail::binary_row_tiles<K>(0, rows, one);
                };
                for (std::size_t p = 0; p < w.plane_count(); ++p) {
                    const auto ref = w.plane_ref(p);
                    std::vector<std::int32_t> want(rows * g.blocks), got(rows * g.blocks);
                    for (std::size_t r = 0; r < rows; ++r)
                        qift::detail::binary_int_tile<qift::detail::binary_scalar, 1, false>(
                            ref, g, r, a.data(), asum.data(), want.data() + r * g.blocks, g.blocks);
                    // Hand check of the oracle on the first and last rows.
                    bool hand = true;
                    for (std::size_t r : {std::size_t{0}, rows - 1})
                        for (std::size_t b = 0; b < g.blocks; ++b) {
                            std::int64_t sum = 0;
                            for (std::size_t k = b * rb.group;
                                 k < std::min(cols, (b + 1) * rb.group); ++k)
                                sum += std::int64_t{w.mask(p, r, k)} * w.sign(p, r, k) * a[k];
                            hand = hand && want[r * g.blocks + b] == sum;
                        }
                    CHECK(hand);
                    for (auto path : compiled_paths()) {
                        CAPTURE(int(path));
                        std::fill(got.begin(), got.end(), -1);
                        qift::detail::binary_dispatch(
                            path, [&](auto kernel) { tiles(kernel, ref, got.data()); });
                        CHECK(got == want);
                    }
                }
            }
}

TEST_CASE("binary matrix: A8 and A4 GEMVs equal the reference bit for bit, every path") {
    unsigned seed = 500;
    for (const auto& cf : configs())
        for (std::size_t rows : test_rows)
            for (std::size_t cols : test_cols) {
                CAPTURE(rows);
                CAPTURE(cols);
                const auto rb =
                    make_binary(rows, cols, cf.group, cf.kinds, cf.col_scales, cf.means, seed++);
                const auto x = qift::test::gaussian_matrix(1, cols, seed++);
                const auto a8 = qift::quantize_int8_activations(rb.w, x);
                const auto a4 = qift::quantize_activations(rb.w, x, 0.9f, qift::a4_range::full);
                const auto check = [&](const auto& act, const qift::matrix<float>& deq) {
                    std::vector<float> yr(rows), y(rows);
                    qift::gemv_reference(rb.w, act, yr);
                    // The reference against Ŵ'·dequantized activations in double (Ŵ' without α_c:
                    // the activations already hold it).
                    bool close = true;
                    for (std::size_t r = 0; r < rows; ++r) {
                        double want = 0.0, mag = 0.0;
                        for (std::size_t k = 0; k < cols; ++k) {
                            want += rb.base(r, k) * double(deq(0, k));
                            mag += std::fabs(rb.base(r, k) * double(deq(0, k)));
                        }
                        close = close && std::fabs(double(yr[r]) - want) <= 2e-6 * mag + 1e-30;
                    }
                    CHECK(close);
                    for (auto path : compiled_paths()) {
                        CAPTURE(int(path));
                        qift::detail::binary_gemv(rb.w, act, std::span<float>(y), path, "gemv");
                        CHECK(bit_equal(y, yr));
                    }
                    qift::gemv(rb.w, act, y);
                    CHECK(bit_equal(y, yr));
                };
                check(a8, qift::dequantize(a8));
                check(a4, qift::dequantize(a4));
            }
}

TEST_CASE("binary matrix: A8 GEMV tracks the float GEMV") {
    const auto rb = make_binary(64, 4096, 0, {mask_kind::none}, true, false, 7);
    const auto x = qift::test::gaussian_matrix(1, 4096, 8);
    const auto a8 = qift::quantize_int8_activations(rb.w, x);
    std::vector<float> yf(64), y8(64);
    qift::gemv(rb.w, x.row(0), yf);
    qift::gemv(rb.w, a8, y8);
    double err = 0.0, norm = 0.0;
    for (std::size_t r = 0; r < 64; ++r) {
        err += (double(y8[r]) - yf[r]) * (double(y8[r]) - yf[r]);
        norm += double(yf[r]) * yf[r];
    }
    CHECK(std::sqrt(err / norm) < 0.02);  // INT8 rounding of a Gaussian token: about 0.6%
}

TEST_CASE("binary matrix: GEMM equals the GEMV of each token, bit for bit, every path") {
    unsigned seed = 700;
    for (const auto& cf : configs())
        for (std::size_t tokens : {1u, 3u, 6u})
            for (std::size_t cols : {192u, 300u}) {
                const std::size_t rows = 21;
                const auto rb =
                    make_binary(rows, cols, cf.group, cf.kinds, cf.col_scales, cf.means, seed++);
                const auto x = qift::test::gaussian_matrix(tokens, cols, seed++);
                const auto a8 = qift::quantize_int8_activations(rb.w, x);
                const auto a4 = qift::quantize_activations(rb.w, x);
                for (auto path : compiled_paths()) {
                    CAPTURE(int(path));
                    // y with a stride wider than its rows
                    matrix<float> yf(tokens, rows + 3), y8(tokens, rows + 3), y4(tokens, rows + 3);
                    const matrix_view<float> vf(yf.data(), tokens, rows, rows + 3),
                        v8(y8.data(), tokens, rows, rows + 3),
                        v4(y4.data(), tokens, rows, rows + 3);
                    qift::detail::binary_gemm(rb.w, matrix_view<const float>(x), vf, path, "gemm");
                    qift::detail::binary_gemm(rb.w, a8, v8, path, "gemm");
                    qift::detail::binary_gemm(rb.w, a4, v4, path, "gemm");
                    for (std::size_t t = 0; t < tokens; ++t) {
                        std::vector<float> g(rows);
                        qift::detail::binary_gemv(rb.w, matrix_view<const float>(&x(t, 0), 1, cols),
                                                  std::span<float>(g), path, "gemv");
                        CHECK(bit_equal(g, std::span<const float>(&yf(t, 0), rows)));
                        const auto a8t = qift::quantize_int8_activations(qift::apply_column_scales(
                            rb.w, matrix_view<const float>(&x(t, 0), 1, cols)));
                        qift::detail::binary_gemv(rb.w, a8t, std::span<float>(g), path, "gemv");
                        CHECK(bit_equal(g, std::span<const float>(&y8(t, 0), rows)));
                        const auto a4t = qift::quantize_activations(
                            rb.w, matrix_view<const float>(&x(t, 0), 1, cols));
                        qift::detail::binary_gemv(rb.w, a4t, std::span<float>(g), path, "gemv");
                        CHECK(bit_equal(g, std::span<const float>(&y4(t, 0), rows)));
                    }
                }
                // The public entries and references agree with the paths.
                matrix<float> y(tokens, rows), yr(tokens, rows);
                qift::gemm(rb.w, a8, y);
                qift::gemm_reference(rb.w, a8, yr);
                CHECK(bit_equal(y.flat(), yr.flat()));
                qift::gemm(rb.w, a4, y);
                qift::gemm_reference(rb.w, a4, yr);
                CHECK(bit_equal(y.flat(), yr.flat()));
                qift::gemm(rb.w, x, y);
                qift::gemm_reference(rb.w, x, yr);
                bool close = true;
                for (std::size_t i = 0; i < y.size(); ++i)
                    close = close && std::fabs(y.flat()[i] - yr.flat()[i]) <=
                                         1e-4f * (1.0f + std::fabs(yr.flat()[i]));
                CHECK(close);
            }
}

TEST_CASE("binary matrix: the int32 range at 65536 columns of extreme codes") {
    // All +1 signs and codes 127: each row's dot is 127·65536 = 8323072 < 2^23, exact in float.
    const std::size_t rows = 5, cols = 65536;
    matrix<std::int8_t> s(rows, cols, 1);
    for (std::size_t k = 0; k < cols; ++k) s(1, k) = -1;
    matrix<float> a(rows, 1, 1.0f);
    const binary_matrix w({binary_plane_view{s, a}});
    std::vector<float> z(cols, 1.0f);
    const auto a8 = qift::quantize_int8_activations(z);
    REQUIRE(a8.code(0, 0) == 127);
    for (auto path : compiled_paths()) {
        std::vector<float> y(rows);
        qift::detail::binary_gemv(w, a8, std::span<float>(y), path, "gemv");
        CHECK(y[0] == doctest::Approx(65536.0).epsilon(1e-6));
        CHECK(y[1] == doctest::Approx(-65536.0).epsilon(1e-6));
        std::vector<std::int32_t> dot(1);
        const std::int32_t asum = 127 * 65536;
        qift::detail::binary_dispatch(path, [&](auto kernel) {
            qift::detail::binary_int_tile<decltype(kernel), 1, false>(
                w.plane_ref(0), w.geometry(), 2, a8.row(0), &asum, dot.data(), 1);
        });
        CHECK(dot[0] == 127 * 65536);
    }
}

TEST_CASE("binary matrix: the A8 quantizer") {
    const std::vector<float> z{0.5f, -1.27f, 0.0f, 1.0f, 0.004f, -0.006f};
    const auto q = qift::quantize_int8_activations(z);
    CHECK(q.tokens == 1);
    CHECK(q.cols == 6);
    CHECK(q.padded_cols == 64);
    CHECK(q.scales[0] == doctest::Approx(0.01f));
    CHECK(q.code(0, 0) == 50);
    CHECK(q.code(0, 1) == -127);
    CHECK(q.code(0, 2) == 0);
    CHECK(q.code(0, 3) == 100);
    CHECK(q.code(0, 4) == 0);
    CHECK(q.code(0, 5) == -1);
    for (std::size_t k = 6; k < 64; ++k) CHECK(q.codes[k] == 0);
    const std::vector<float> zeros(70, 0.0f);
    const auto q0 = qift::quantize_int8_activations(zeros);
    CHECK(q0.padded_cols == 128);
    CHECK(q0.scales[0] == 0.0f);
    // Column scales are applied before quantizing.
    matrix<std::int8_t> s(1, 2, 1);
    matrix<float> a(1, 1, 1.0f);
    const std::vector<float> cs{2.0f, -1.0f};
    const binary_matrix w({binary_plane_view{s, a}}, 0, cs);
    const std::vector<float> x{1.0f, 0.5f};
    const auto qa = qift::quantize_int8_activations(w, matrix_view<const float>(x.data(), 1, 2));
    CHECK(qa.code(0, 0) == 127);
    CHECK(qa.code(0, 1) == -32);  // −0.5 / (2/127) = −31.75
}

TEST_CASE("binary matrix: errors") {
    matrix<std::int8_t> s(3, 100, 1), s_small(3, 99, 1);
    matrix<float> a(3, 1, 1.0f), a2(3, 2, 1.0f);
    matrix<std::uint8_t> m(3, 100, 1);
    const auto make = [&](std::vector<binary_plane_view> v, std::size_t g = 0,
                          std::span<const float> cs = {},
                          matrix_view<const float> mu = {}) { return binary_matrix(v, g, cs, mu); };
    CHECK_THROWS_AS(make({}), qift::error);
    CHECK_THROWS_AS(make(std::vector<binary_plane_view>(9, binary_plane_view{s, a})), qift::error);
    CHECK_THROWS_AS(make({{s, a}, {s_small, a}}), qift::error);
    CHECK_THROWS_AS(make({{s, a2}}), qift::error);     // 2 scale columns, 1 block
    CHECK_THROWS_AS(make({{s, a}}, 32), qift::error);  // not a multiple of 64
    CHECK_NOTHROW(make({{s, a}}, 100));                // G = cols: one block
    CHECK_NOTHROW(make({{s, a2}}, 64));                // 2 blocks
    CHECK_THROWS_AS(make({{s, a}}, 64), qift::error);  // needs 2 scale columns
    CHECK_THROWS_AS(make({{s, a, matrix<std::uint8_t>(3, 99)}}), qift::error);
    matrix<std::int8_t> bad = s;
    bad(2, 50) = 0;
    CHECK_THROWS_WITH_AS(make({{bad, a}}), doctest::Contains("signs(2, 50) is 0"), qift::error);
    matrix<std::uint8_t> bad_m = m;
    bad_m(1, 3) = 2;
    CHECK_THROWS_WITH_AS(make({{s, a, bad_m}}), doctest::Contains("mask(1, 3) is 2"), qift::error);
    matrix<float> nan_a = a;
    nan_a(1, 0) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(make({{s, nan_a}}), doctest::Contains("scales(1, 0)"), qift::error);
    const std::vector<float> cs99(99, 1.0f);
    std::vector<float> cs_inf(100, 1.0f);
    cs_inf[7] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(make({{s, a}}, 0, cs99), qift::error);
    CHECK_THROWS_WITH_AS(make({{s, a}}, 0, cs_inf), doctest::Contains("column scale 7"),
                         qift::error);
    CHECK_THROWS_AS(make({{s, a}}, 0, {}, a2), qift::error);
    matrix<float> nan_mu = a;
    nan_mu(2, 0) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH_AS(make({{s, a}}, 0, {}, nan_mu), doctest::Contains("means(2, 0)"),
                         qift::error);
    CHECK_THROWS_AS(make({{matrix<std::int8_t>(), matrix<float>()}}), qift::error);
    CHECK_THROWS_WITH_AS(make({{s, a}, {{}, a}}), doctest::Contains("plane 1 has neither signs"),
                         qift::error);
    CHECK_THROWS_AS(make({{{}, a, matrix<std::uint8_t>(3, 99)}, {s, a}}), qift::error);

    const binary_matrix w({binary_plane_view{s, a}});
    std::vector<float> x(100, 1.0f), x99(99, 1.0f), y(3), y2(2);
    CHECK_THROWS_AS(qift::gemv(w, x99, y), qift::error);
    CHECK_THROWS_AS(qift::gemv(w, x, y2), qift::error);
    CHECK_THROWS_AS(qift::gemv_reference(w, x, y2), qift::error);
    const auto a8 = qift::quantize_int8_activations(matrix_view<const float>(x.data(), 1, 100));
    const auto a8_99 = qift::quantize_int8_activations(x99);
    CHECK_THROWS_AS(qift::gemv(w, a8_99, y), qift::error);
    CHECK_THROWS_AS(qift::gemv(w, a8, y2), qift::error);
    auto a8_bad = a8;
    a8_bad.codes.resize(10);
    CHECK_THROWS_AS(qift::gemv(w, a8_bad, y), qift::error);
    const auto a4 = qift::quantize_activations(std::span<const float>(x99));
    CHECK_THROWS_AS(qift::gemv(w, a4, y), qift::error);
    const matrix<float> x2(2, 100, 1.0f);
    const auto a8_2 = qift::quantize_int8_activations(x2);
    CHECK_THROWS_AS(qift::gemv(w, a8_2, y), qift::error);  // two tokens
    matrix<float> yg(2, 3), yg_bad(2, 4);
    CHECK_NOTHROW(qift::gemm(w, a8_2, yg));
    CHECK_THROWS_AS(qift::gemm(w, a8_2, yg_bad), qift::error);
    CHECK_THROWS_AS(qift::gemm(w, matrix<float>(2, 99), yg), qift::error);
    CHECK_THROWS_AS(qift::gemm(binary_matrix(), x2, yg), qift::error);
    CHECK_THROWS_AS(qift::apply_column_scales(w, matrix<float>(1, 99)), qift::error);
    CHECK_THROWS_AS(qift::quantize_int8_activations(matrix<float>()), qift::error);
    std::vector<float> xnan(100, 1.0f);
    xnan[4] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(qift::quantize_int8_activations(xnan), doctest::Contains("z(0, 4)"),
                         qift::error);
}

TEST_CASE("binary matrix: the results of binary.hpp pack exactly and run through the kernels") {
    std::mt19937 gen(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    qift::matrix<float> w(19, 200), x(3, 200);
    for (float& v : w.flat()) v = nd(gen);
    for (float& v : x.flat()) v = nd(gen);
    const auto check = [&](const qift::binary_matrix& packed, const qift::matrix<float>& w_hat) {
        const qift::matrix<float> d = qift::dequantize(packed);
        for (std::size_t i = 0; i < d.size(); ++i) CHECK(d.data()[i] == w_hat.data()[i]);
        qift::matrix<float> y(3, 19);
        qift::gemm(packed, x.view(), y.view());
        for (std::size_t t = 0; t < 3; ++t)
            for (std::size_t r = 0; r < 19; ++r) {
                double e = 0, m = 0;
                for (std::size_t k = 0; k < 200; ++k)
                    e += double(w_hat(r, k)) * double(x(t, k)),
                        m += std::fabs(double(w_hat(r, k)) * double(x(t, k)));
                CHECK(std::fabs(double(y(t, r)) - e) <= 1e-5 * m);
            }
    };
    const auto xnor = qift::binarize_xnor(w.view());
    check(qift::pack(xnor), xnor.dequantized);
    const auto rc = qift::binarize_arb_rc(w.view());
    check(qift::pack(rc), rc.dequantized);
}

TEST_CASE("binary matrix: BiLLM partitions pack and run through the kernels") {
    // Heavy-tailed weights with a few loud input channels (so that salient columns are chosen),
    // a Hessian from correlated activations; 3 blocks of 128 at 300 columns (the last ragged).
    std::mt19937 gen(5);
    std::student_t_distribution<float> td(3.0f);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const std::size_t rows = 21, cols = 300, n = 600;
    matrix<float> w(rows, cols), x(n, cols);
    for (float& v : w.flat()) v = 0.02f * td(gen);
    for (std::size_t t = 0; t < n; ++t)
        for (std::size_t k = 0; k < cols; ++k) x(t, k) = nd(gen) * (k % 37 == 0 ? 8.0f : 1.0f);
    qift::matrix<double> h(cols, cols);
    for (std::size_t t = 0; t < n; ++t)
        for (std::size_t i = 0; i < cols; ++i)
            for (std::size_t j = 0; j < cols; ++j) h(i, j) += double(x(t, i)) * double(x(t, j));
    const auto r = qift::binarize_billm(w.view(), h.view());
    bool salient = false, high = false;
    for (auto c : r.salient_column) salient = salient || c;
    for (auto v : r.high_group.flat()) high = high || v;
    REQUIRE(salient);
    REQUIRE(high);
    const binary_matrix packed = qift::pack(r);
    CHECK(packed.plane_count() == 6);
    CHECK(packed.stored_sign_planes() == 2);
    CHECK(packed.group_size() == 128);
    double max_w = 0;
    for (float v : r.dequantized.flat()) max_w = std::max(max_w, double(std::fabs(v)));
    const auto d = qift::dequantize(packed);
    bool close = true;
    for (std::size_t i = 0; i < d.size(); ++i)
        close = close &&
                std::fabs(double(d.data()[i]) - double(r.dequantized.data()[i])) <= 1e-6 * max_w;
    CHECK(close);
    // Every path against the reference (integer bit for bit, float within rounding) and the
    // float GEMV against Ŵ·x.
    const auto xt = qift::test::gaussian_matrix(1, cols, 9);
    std::vector<float> yr(rows), y(rows);
    qift::gemv_reference(packed, xt.row(0), yr);
    const auto a8 = qift::quantize_int8_activations(matrix_view<const float>(xt.data(), 1, cols));
    const auto a4 = qift::quantize_activations(matrix_view<const float>(xt.data(), 1, cols));
    std::vector<float> y8r(rows), y4r(rows);
    qift::gemv_reference(packed, a8, y8r);
    qift::gemv_reference(packed, a4, y4r);
    for (auto path : compiled_paths()) {
        CAPTURE(int(path));
        qift::detail::binary_gemv(packed, matrix_view<const float>(xt.data(), 1, cols),
                                  std::span<float>(y), path, "gemv");
        bool ok = true;
        for (std::size_t i = 0; i < rows; ++i) {
            double e = 0, m = 0;
            for (std::size_t k = 0; k < cols; ++k)
                e += double(r.dequantized(i, k)) * double(xt(0, k)),
                    m += std::fabs(double(r.dequantized(i, k)) * double(xt(0, k)));
            ok = ok && std::fabs(double(y[i]) - e) <= 1e-5 * m &&
                 std::fabs(double(y[i]) - double(yr[i])) <= 1e-5 * m;
        }
        CHECK(ok);
        qift::detail::binary_gemv(packed, a8, std::span<float>(y), path, "gemv");
        CHECK(bit_equal(y, y8r));
        qift::detail::binary_gemv(packed, a4, std::span<float>(y), path, "gemv");
        CHECK(bit_equal(y, y4r));
    }
    // The stored bytes: B1, B2 and H as full planes (3 bits per weight, rows padded to 320
    // columns), the column mask, six float32 scale arrays and the means.
    const std::size_t words = 5, blocks = 3;
    CHECK(packed.size_bytes() ==
          3 * rows * words * 8 + words * 8 + 7 * rows * blocks * sizeof(float));

    // A block size the layout cannot hold.
    qift::billm_options opt;
    opt.block_size = 100;
    CHECK_THROWS_WITH_AS(qift::pack(qift::binarize_billm(w.view(), h.view(), opt)),
                         doctest::Contains("multiple of 64"), qift::error);
}
