// SPDX-License-Identifier: MIT
// MXFP4 kernels: the quantizer bit for bit against quantize_mxfp4_block (every power of two and
// every rounding point, random bits, NaN/Inf, subnormal and huge blocks, every compiled path),
// the MXFP4 × MXFP4 and MXFP4 × float GEMV / GEMM against the scalar references (each compiled
// kernel path, odd shapes, the summation-order bound), NaN propagation and shape errors.
#include <qift/mx.hpp>

#include <doctest/doctest.h>

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

using namespace qift;

namespace {

constexpr mx_rounding all_modes[] = {mx_rounding::nearest, mx_rounding::even, mx_rounding::floor};
constexpr detail::mx_path all_paths[] = {detail::mx_path::scalar, detail::mx_path::avx2,
                                         detail::mx_path::avx512};
constexpr double mx_eps = 1.0 / (1 << 24);

float from_bits(std::uint32_t b) {
    return std::bit_cast<float>(b);
}

// The reference: quantize_mxfp4_block on every block.
mxfp4_matrix reference_quantize(matrix_view<const float> x, mx_rounding mode) {
    mxfp4_matrix q(x.rows, x.cols);
    for (std::size_t r = 0; r < x.rows; ++r)
        for (std::size_t b = 0; b < q.blocks_per_row(); ++b) {
            const std::size_t k0 = b * 32, n = std::min<std::size_t>(32, x.cols - k0);
            q.row_scales(r)[b] =
                quantize_mxfp4_block(std::span(&x(r, k0), n), q.row_codes(r) + b * 16, mode);
        }
    return q;
}

// The quantizer paths compiled into this build, by name: the public function, the portable
// bit-level loop, and the AVX-512 rows where compiled.
template <int Mode>
void quantize_path(int path, matrix_view<const float> x, mxfp4_matrix& q) {
    if (path == 0) return quantize_mxfp4(x, q, static_cast<mx_rounding>(Mode));
    q = mxfp4_matrix(x.rows, x.cols);
    for (std::size_t r = 0; r < x.rows; ++r) {
#if QIFT_MX_AVX512
        if (path == 2) {
            detail::mx_quantize_row_avx512<Mode>(&x(r, 0), x.cols, q.row_codes(r), q.row_scales(r));
            continue;
        }
#endif
        detail::mx_quantize_row_portable<Mode>(&x(r, 0), x.cols, q.row_codes(r), q.row_scales(r));
    }
}
constexpr int quantize_paths = QIFT_MX_AVX512 ? 3 : 2;

void quantize_with(int path, mx_rounding mode, matrix_view<const float> x, mxfp4_matrix& q) {
    switch (mode) {
        case mx_rounding::nearest:
            return quantize_path<detail::mx_nearest>(path, x, q);
        case mx_rounding::even:
            return quantize_path<detail::mx_even>(path, x, q);
        case mx_rounding::floor:
            return quantize_path<detail::mx_floor>(path, x, q);
    }
}

// Counts the blocks where q differs from the reference (scale byte or any of the 16 code bytes).
std::size_t mismatches(const mxfp4_matrix& q, const mxfp4_matrix& ref) {
    std::size_t bad = 0;
    for (std::size_t r = 0; r < q.rows(); ++r)
        for (std::size_t b = 0; b < q.blocks_per_row(); ++b)
            bad += q.row_scales(r)[b] != ref.row_scales(r)[b] ||
                   std::memcmp(q.row_codes(r) + b * 16, ref.row_codes(r) + b * 16, 16) != 0;
    return bad;
}

// Every quantizer path and mode against the reference on x; returns the mismatching blocks.
std::size_t check_all_quantizers(matrix_view<const float> x) {
    std::size_t bad = 0;
    for (mx_rounding mode : all_modes) {
        const mxfp4_matrix ref = reference_quantize(x, mode);
        for (int path = 0; path < quantize_paths; ++path) {
            mxfp4_matrix q;
            quantize_with(path, mode, x, q);
            const std::size_t m = mismatches(q, ref);
            if (m) MESSAGE("quantizer path ", path, " mode ", int(mode), ": ", m, " blocks differ");
            bad += m;
        }
    }
    return bad;
}

matrix<float> gaussian(std::size_t rows, std::size_t cols, std::mt19937& gen, float sigma = 1.0f) {
    std::normal_distribution<float> nd(0.0f, sigma);
    matrix<float> m(rows, cols);
    for (float& v : m.flat()) v = nd(gen);
    return m;
}

// Σ_b |term_b| of the MXFP4 × MXFP4 product of row r of w with token t of a, in double.
double term_magnitude(const mxfp4_matrix& w, std::size_t r, const mxfp4_matrix& a, std::size_t t) {
    double sum = 0.0;
    for (std::size_t b = 0; b < w.blocks_per_row(); ++b) {
        std::int64_t dot = 0;
        for (std::size_t j = 0; j < 32; ++j)
            dot += detail::e2m1_doubled[w.code(r, b * 32 + j)] *
                   detail::e2m1_doubled[a.code(t, b * 32 + j)];
        sum += std::ldexp(std::fabs(double(dot)),
                          int(w.row_scales(r)[b]) + int(a.row_scales(t)[b]) - 256);
    }
    return sum;
}

// The MXFP4 × MXFP4 product of one token through a kernel path.
std::vector<float> int_product(const mxfp4_matrix& w, const mxfp4_matrix& a, detail::mx_path p) {
    std::vector<float> y(w.rows() * a.rows());
    detail::mx_int_product(w, a, y.data(), w.rows(), p);
    return y;
}

std::vector<float> float_product(const mxfp4_matrix& w, matrix_view<const float> x,
                                 detail::mx_path p) {
    std::vector<float> y(w.rows() * x.rows);
    detail::mx_float_product(w, x, y.data(), w.rows(), p);
    return y;
}

bool same_bits(float a, float b) {
    return (std::isnan(a) && std::isnan(b)) ||
           std::bit_cast<std::uint32_t>(a) == std::bit_cast<std::uint32_t>(b);
}

}  // namespace

TEST_CASE("mx kernels: floor(log2) round-ups match std::log2 around every power of two") {
    const auto& up = detail::mx_log2_round_up();
    // Every float within 200 ulps of every power of two from 2^−126 to 2^127, and the top of
    // the float range: floor(log2 x) is E, or E + 1 exactly for the table's last floats.
    std::size_t bad = 0, rounded_up = 0;
    for (std::uint32_t be = 1; be < 255; ++be)
        for (std::int64_t i = -200; i < 200; ++i) {
            const std::int64_t bits = (std::int64_t(be) << 23) + i;
            // Normal floats: a subnormal block max gives E8M0 code 0 whatever its log2 (below).
            if (bits < 0x00800000 || bits >= 0x7F800000) continue;
            const std::uint32_t b = std::uint32_t(bits);
            const int want = int(std::floor(std::log2(from_bits(b))));
            const int got = int((b + up[b >> 23]) >> 23) - 127;
            if (want != got && bad < 5)
                MESSAGE("x bits ", b, ": log2 floor ", want, ", table ", got);
            bad += want != got;
            rounded_up += got != int(b >> 23) - 127;
        }
    CHECK(bad == 0);
    CHECK(rounded_up > 0);
    // As the reference uses it: the E8M0 code of every such block max, subnormal, zero, NaN, Inf.
    std::vector<std::uint32_t> maxima{0u,          1u,          0x00400000u, 0x007FFFFFu,
                                      0x7F7FFFFFu, 0x7F800000u, 0x7FC00000u};
    for (std::uint32_t be = 1; be < 255; ++be)
        for (std::uint32_t i = 1; i < 64; ++i) maxima.push_back((be << 23) - i);
    for (std::uint32_t m : maxima) {
        int e = 0;
        const bool finite = detail::mx_shared_exponent(from_bits(m), e);
        const std::uint8_t want = finite ? std::uint8_t(e + 127) : e8m0_nan;
        CAPTURE(m);
        CHECK(detail::mx_scale_code(m, up) == want);
    }
}

TEST_CASE("mx kernels: quantizer is bit-exact at every power of two and every rounding point") {
    // Block maxima at every float within 64 ulps of every power of two (subnormal to 2^127),
    // with smaller companions: exercises the exponent table and the clamps.
    std::vector<float> x;
    for (int k = -149; k <= 127; ++k)
        for (int i = -64; i <= 64; ++i) {
            const std::int64_t bits =
                std::int64_t(std::bit_cast<std::uint32_t>(std::ldexp(1.0f, k))) + i;
            if (bits <= 0 || bits >= 0x7F800000) continue;
            const float m = from_bits(std::uint32_t(bits));
            const float block[8] = {m,         -m * 0.75f, m * 0.5f, -m * 0.3f,
                                    m * 0.99f, m * 0.125f, 0.0f,     -0.0f};
            x.insert(x.end(), block, block + 8);
            x.resize(x.size() + 24, 0.0f);
        }
    // Elements within 64 ulps of every rounding point t·2^s of every mode, in blocks whose max
    // 4·2^s fixes the scale 2^s (s from the clamp at −127 up to 2^124).
    const float points[] = {0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f, 2.0f,
                            2.5f,  3.0f, 3.5f,  4.0f, 5.0f,  6.0f, 7.0f,  8.0f};
    for (int s : {-127, -126, -100, -20, -3, 0, 5, 60, 124}) {
        std::vector<float> block{std::ldexp(4.0f, s)};
        for (float t : points)
            for (int i = -64; i <= 64; ++i) {
                const float v = from_bits(std::uint32_t(
                    std::int64_t(std::bit_cast<std::uint32_t>(std::ldexp(t, s))) + i));
                if (v >= std::ldexp(8.0f, s) || !std::isfinite(v)) continue;
                block.push_back(i % 2 ? -v : v);
                if (block.size() == 32) {
                    x.insert(x.end(), block.begin(), block.end());
                    block.assign(1, std::ldexp(4.0f, s));
                }
            }
        block.resize(32, 0.0f);
        x.insert(x.end(), block.begin(), block.end());
    }
    REQUIRE(x.size() % 32 == 0);
    CHECK(check_all_quantizers(matrix_view<const float>(x.data(), x.size() / 32, 32)) == 0);
}

TEST_CASE("mx kernels: quantizer is bit-exact on random, special and ragged data") {
    std::mt19937 gen(2024);
    std::uniform_int_distribution<std::uint32_t> bits;
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_int_distribution<int> small(-8, 8), expo(-150, 126);
    // Generators: gaussian, heavy-tailed, random bit patterns (NaN, Inf, subnormals: a quarter
    // of the blocks hold a NaN or an Inf), wide exponents, exact ties t·2^s, subnormals only,
    // values near FLT_MAX.
    const auto value = [&](int kind) -> float {
        switch (kind) {
            case 0:
                return nd(gen);
            case 1:
                return nd(gen) * (nd(gen) > 1.5f ? 100.0f : 1.0f);
            case 2:
                return from_bits(bits(gen));
            case 3:
                return std::ldexp(nd(gen), expo(gen));
            case 4:
                return std::ldexp(float(small(gen)) * 0.25f, small(gen));
            case 5:
                return from_bits(bits(gen) & 0x807FFFFFu);
            default:
                return from_bits(0x7F000000u + (bits(gen) & 0x007FFFFFu)) *
                       (bits(gen) & 1 ? 1.0f : -1.0f);
        }
    };
    // About a million values in all, rows of odd lengths.
    std::size_t total = 0, bad = 0;
    for (std::size_t cols : {1u, 31u, 33u, 100u, 4095u, 4096u})
        for (int kind = 0; kind < 7; ++kind) {
            const std::size_t rows = cols < 100 ? 64 : cols == 100 ? 40 : 5;
            matrix<float> x(rows, cols);
            for (float& v : x.flat()) v = value(kind);
            total += x.size();
            CAPTURE(cols);
            CAPTURE(kind);
            bad += check_all_quantizers(x);
        }
    CHECK(bad == 0);
    CHECK(total > 200000);
    // A strided view: rows of 45 values 64 apart.
    matrix<float> wide(9, 64);
    for (float& v : wide.flat()) v = value(1);
    CHECK(check_all_quantizers(matrix_view<const float>(wide.data(), 9, 45, 64)) == 0);
}

TEST_CASE("mx kernels: a million random activations, every mode, the public quantizer") {
    std::mt19937 gen(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_int_distribution<int> expo(-30, 30);
    matrix<float> x(256, 4096);
    for (std::size_t r = 0; r < x.rows(); ++r) {
        const float scale = std::ldexp(1.0f, expo(gen));
        for (float& v : x.row(r)) v = nd(gen) * scale * (nd(gen) > 2.0f ? 20.0f : 1.0f);
    }
    for (mx_rounding mode : all_modes) {
        mxfp4_matrix q;
        quantize_mxfp4(x, q, mode);
        CHECK(mismatches(q, reference_quantize(x, mode)) == 0);
    }
}

TEST_CASE("mx kernels: quantize_mxfp4 into a matrix reuses its storage") {
    std::mt19937 gen(3);
    const matrix<float> a = gaussian(3, 100, gen), c = gaussian(2, 64, gen);
    mxfp4_matrix q;
    quantize_mxfp4(a, q);
    const std::uint8_t* codes = q.row_codes(0);
    const std::uint8_t* scales = q.row_scales(0);
    const matrix<float> a2 = gaussian(3, 100, gen);
    quantize_mxfp4(a2, q, mx_rounding::even);
    CHECK(q.row_codes(0) == codes);
    CHECK(q.row_scales(0) == scales);
    CHECK(mismatches(q, reference_quantize(a2, mx_rounding::even)) == 0);
    // A different shape reallocates.
    quantize_mxfp4(c, q);
    CHECK(q.rows() == 2);
    CHECK(q.cols() == 64);
    CHECK(mismatches(q, reference_quantize(c, mx_rounding::nearest)) == 0);
    // The value-returning form is the same quantizer.
    CHECK(mismatches(quantize_mxfp4(a2, mx_rounding::floor),
                     reference_quantize(a2, mx_rounding::floor)) == 0);
}

TEST_CASE("mx kernels: MXFP4 x MXFP4 GEMV matches the reference on odd shapes, every path") {
    std::mt19937 gen(11);
    for (std::size_t rows : {1u, 3u, 17u, 33u, 100u})
        for (std::size_t cols : {32u, 33u, 64u, 100u, 4096u}) {
            if (rows * cols > 100 * 1024) continue;
            matrix<float> w = gaussian(rows, cols, gen);
            // Rows and blocks of very different magnitudes.
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t k = 0; k < cols; ++k)
                    w(r, k) *= std::ldexp(1.0f, int((r * 7 + k / 32 * 3) % 23) - 11);
            const matrix<float> x = gaussian(1, cols, gen, 3.0f);
            const mxfp4_matrix qw = quantize_mxfp4(w), qa = quantize_mxfp4(x);
            std::vector<float> ref(rows), y(rows);
            gemv_reference(qw, qa, ref);
            gemv(qw, qa, y);
            CHECK(y == int_product(qw, qa, detail::mx_best_path));
            for (detail::mx_path p : all_paths) {
                if (!detail::mx_path_compiled(p)) continue;
                const std::vector<float> yp = int_product(qw, qa, p);
                CAPTURE(rows);
                CAPTURE(cols);
                CAPTURE(int(p));
                for (std::size_t r = 0; r < rows; ++r) {
                    if (p == detail::mx_path::scalar || qw.blocks_per_row() == 1) {
                        CHECK(yp[r] == ref[r]);  // same order, or a single exact term
                    } else {
                        const double bound = double(qw.blocks_per_row() + 16) * mx_eps *
                                             term_magnitude(qw, r, qa, 0);
                        CHECK(std::fabs(double(yp[r]) - double(ref[r])) <= bound);
                    }
                }
            }
        }
}

TEST_CASE("mx kernels: MXFP4 x MXFP4 terms in the subnormal range are exact") {
    // Scales so small that e_w + e_a − 256 < −126 (down to −166 and below): every term is
    // ldexp-exact and sums of subnormals are exact, so every path equals the reference.
    std::mt19937 gen(5);
    for (auto [sw, sa] : {std::pair{-77, -57}, {-100, -60}, {-110, -70}, {-40, -95}}) {
        matrix<float> w = gaussian(9, 200, gen), x = gaussian(1, 200, gen);
        for (float& v : w.flat()) v = std::ldexp(v, sw);
        for (float& v : x.flat()) v = std::ldexp(v, sa);
        const mxfp4_matrix qw = quantize_mxfp4(w), qa = quantize_mxfp4(x);
        std::vector<float> ref(9);
        gemv_reference(qw, qa, ref);
        for (detail::mx_path p : all_paths) {
            if (!detail::mx_path_compiled(p)) continue;
            CAPTURE(int(p));
            CHECK(int_product(qw, qa, p) == ref);
        }
    }
}

TEST_CASE("mx kernels: MXFP4 x float GEMV matches the reference on odd shapes, every path") {
    std::mt19937 gen(13);
    for (std::size_t rows : {1u, 3u, 17u, 33u, 100u})
        for (std::size_t cols : {32u, 33u, 64u, 100u, 4096u}) {
            if (rows * cols > 100 * 1024) continue;
            const matrix<float> w = gaussian(rows, cols, gen);
            matrix<float> x = gaussian(1, cols, gen);
            for (std::size_t k = 0; k < cols; ++k) x(0, k) *= std::ldexp(1.0f, int(k % 9) - 4);
            const mxfp4_matrix qw = quantize_mxfp4(w);
            const matrix<float> dw = dequantize(qw);
            std::vector<float> ref(rows), y(rows);
            gemv_reference(qw, x.row(0), ref);
            gemv(qw, x.row(0), y);
            CHECK(y == float_product(qw, x, detail::mx_best_path));
            for (detail::mx_path p : all_paths) {
                if (!detail::mx_path_compiled(p)) continue;
                const std::vector<float> yp = float_product(qw, x, p);
                CAPTURE(rows);
                CAPTURE(cols);
                CAPTURE(int(p));
                for (std::size_t r = 0; r < rows; ++r) {
                    double mag = 0.0;
                    for (std::size_t k = 0; k < cols; ++k)
                        mag += std::fabs(double(dw(r, k)) * x(0, k));
                    const double bound = 2.0 * double(32 + qw.blocks_per_row()) * mx_eps * mag;
                    CHECK(std::fabs(double(yp[r]) - double(ref[r])) <= bound);
                }
            }
        }
}

TEST_CASE("mx kernels: GEMM equals the GEMV of each token, bit for bit") {
    std::mt19937 gen(17);
    for (std::size_t cols : {100u, 4096u})
        for (std::size_t tokens : {1u, 3u, 4u, 5u, 9u}) {
            const std::size_t rows = 17;
            const matrix<float> w = gaussian(rows, cols, gen), x = gaussian(tokens, cols, gen);
            const mxfp4_matrix qw = quantize_mxfp4(w), qa = quantize_mxfp4(x);
            // y with a stride wider than its rows, as gemm.hpp allows.
            matrix<float> yi(tokens, rows + 3, -1.0f), yf(tokens, rows + 3, -1.0f);
            gemm(qw, qa, matrix_view<float>(yi.data(), tokens, rows, rows + 3));
            gemm(qw, x, matrix_view<float>(yf.data(), tokens, rows, rows + 3));
            for (std::size_t t = 0; t < tokens; ++t) {
                mxfp4_matrix at;
                quantize_mxfp4(matrix_view<const float>(&x(t, 0), 1, cols), at);
                std::vector<float> gi(rows), gf(rows);
                gemv(qw, at, gi);
                gemv(qw, x.row(t), gf);
                CAPTURE(cols);
                CAPTURE(tokens);
                CAPTURE(t);
                for (std::size_t r = 0; r < rows; ++r) {
                    CHECK(same_bits(yi(t, r), gi[r]));
                    CHECK(same_bits(yf(t, r), gf[r]));
                }
                CHECK(yi(t, rows) == -1.0f);  // the stride padding is left alone
                CHECK(yf(t, rows + 2) == -1.0f);
            }
            // Every path's GEMM against its own GEMVs.
            for (detail::mx_path p : all_paths) {
                if (!detail::mx_path_compiled(p)) continue;
                const std::vector<float> mi = int_product(qw, qa, p), mf = float_product(qw, x, p);
                for (std::size_t t = 0; t < tokens; ++t) {
                    const mxfp4_matrix at =
                        quantize_mxfp4(matrix_view<const float>(&x(t, 0), 1, cols));
                    const std::vector<float> gi = int_product(qw, at, p);
                    const std::vector<float> gf =
                        float_product(qw, matrix_view<const float>(&x(t, 0), 1, cols), p);
                    for (std::size_t r = 0; r < rows; ++r) {
                        CHECK(same_bits(mi[t * rows + r], gi[r]));
                        CHECK(same_bits(mf[t * rows + r], gf[r]));
                    }
                }
            }
        }
}

TEST_CASE("mx kernels: NaN blocks propagate to their outputs") {
    std::mt19937 gen(19);
    matrix<float> w = gaussian(6, 300, gen), x = gaussian(3, 300, gen);
    w(2, 40) = std::numeric_limits<float>::quiet_NaN();   // row 2, block 1
    w(4, 299) = std::numeric_limits<float>::infinity();   // row 4, last block
    x(1, 100) = std::numeric_limits<float>::quiet_NaN();  // token 1
    const mxfp4_matrix qw = quantize_mxfp4(w), qa = quantize_mxfp4(x);
    REQUIRE(qw.nan_blocks() == 2);
    REQUIRE(qa.nan_blocks() == 1);
    for (detail::mx_path p : all_paths) {
        if (!detail::mx_path_compiled(p)) continue;
        CAPTURE(int(p));
        const std::vector<float> yi = int_product(qw, qa, p);
        const std::vector<float> yf = float_product(qw, x, p);
        for (std::size_t t = 0; t < 3; ++t)
            for (std::size_t r = 0; r < 6; ++r) {
                CAPTURE(t);
                CAPTURE(r);
                CHECK(std::isnan(yi[t * 6 + r]) == (r == 2 || r == 4 || t == 1));
                CHECK(std::isnan(yf[t * 6 + r]) == (r == 2 || r == 4 || t == 1));
            }
    }
    // A ggml 0xFF scale is a NaN block too.
    std::vector<std::uint8_t> g = to_ggml_mxfp4(quantize_mxfp4(gaussian(2, 64, gen)));
    g[17] = 0xFF;  // row 0, block 1
    const mxfp4_matrix qg = from_ggml_mxfp4(g, 2, 64);
    std::vector<float> y(2), ones(64, 1.0f);
    gemv(qg, ones, y);
    CHECK(std::isnan(y[0]));
    CHECK(!std::isnan(y[1]));
    gemv(qg, quantize_mxfp4(matrix_view<const float>(ones.data(), 1, 64)), y);
    CHECK(std::isnan(y[0]));
    CHECK(!std::isnan(y[1]));
}

TEST_CASE("mx kernels: shape errors and empty operands throw qift::error") {
    std::mt19937 gen(23);
    const mxfp4_matrix w = quantize_mxfp4(gaussian(4, 64, gen));
    const mxfp4_matrix a1 = quantize_mxfp4(gaussian(1, 64, gen));
    const mxfp4_matrix a2 = quantize_mxfp4(gaussian(2, 64, gen));
    const mxfp4_matrix a_short = quantize_mxfp4(gaussian(1, 63, gen));
    const matrix<float> x2 = gaussian(2, 64, gen);
    std::vector<float> y4(4), y3(3), x64(64, 1.0f), x63(63, 1.0f);
    matrix<float> y24(2, 4), y34(3, 4), y23(2, 3);
    CHECK_THROWS_WITH_AS(gemv(w, a2, y4), doctest::Contains("2 rows, expected 1"), error);
    CHECK_THROWS_WITH_AS(gemv(w, a_short, y4), doctest::Contains("x has 63 values"), error);
    CHECK_THROWS_WITH_AS(gemv(w, a1, y3), doctest::Contains("y 3"), error);
    CHECK_THROWS_WITH_AS(gemv(w, x63, y4), doctest::Contains("x has 63 values"), error);
    CHECK_THROWS_WITH_AS(gemv(w, x64, y3), doctest::Contains("y 3"), error);
    CHECK_THROWS_WITH_AS(gemv(mxfp4_matrix(), a1, y4), doctest::Contains("empty"), error);
    CHECK_THROWS_WITH_AS(gemv(mxfp4_matrix(), x64, y4), doctest::Contains("empty"), error);
    CHECK_THROWS_WITH_AS(gemm(w, a2, y34), doctest::Contains("expected 2x4"), error);
    CHECK_THROWS_WITH_AS(gemm(w, a2, y23), doctest::Contains("expected 2x4"), error);
    CHECK_THROWS_WITH_AS(gemm(w, a_short, y24), doctest::Contains("63 columns"), error);
    CHECK_THROWS_WITH_AS(gemm(w, mxfp4_matrix(), y24), doctest::Contains("empty"), error);
    CHECK_THROWS_WITH_AS(gemm(w, x2, y34), doctest::Contains("expected 2x4"), error);
    CHECK_THROWS_WITH_AS(gemm(w, matrix_view<const float>(x2.data(), 2, 63), y24),
                         doctest::Contains("63"), error);
    CHECK_THROWS_WITH_AS(gemm(w, matrix_view<const float>(), y24), doctest::Contains("x is 0x0"),
                         error);
    mxfp4_matrix q;
    CHECK_THROWS_WITH_AS(quantize_mxfp4(matrix_view<const float>(), q), doctest::Contains("empty"),
                         error);
    // And the happy paths of the same shapes run.
    gemv(w, a1, y4);
    gemm(w, a2, y24);
    gemm(w, x2, y24);
}

TEST_CASE("mx kernels: rows split over threads give the single-threaded results") {
    // 300 rows × 4096 columns is past the parallel threshold of for_row_chunks (19 chunks).
    std::mt19937 gen(29);
    const matrix<float> w = gaussian(300, 4096, gen), x = gaussian(5, 4096, gen);
    const mxfp4_matrix qw = quantize_mxfp4(w), qa = quantize_mxfp4(x);
    matrix<float> yi(5, 300), yf(5, 300), si(5, 300), sf(5, 300);
    gemm(qw, qa, yi);
    gemm(qw, x, yf);
    set_parallel_executor(serial_executor);
    gemm(qw, qa, si);
    gemm(qw, x, sf);
    set_parallel_executor(nullptr);
    bool same = true;
    for (std::size_t i = 0; i < yi.size(); ++i)
        same =
            same && same_bits(yi.flat()[i], si.flat()[i]) && same_bits(yf.flat()[i], sf.flat()[i]);
    CHECK(same);
}
