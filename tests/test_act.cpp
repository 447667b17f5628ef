// SPDX-License-Identifier: MIT
// Tests of act.hpp: A4 per-token quantization against its scalar reference and its contract.
#include <doctest/doctest.h>

#include <bit>
#include <cfenv>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <qift/act.hpp>

namespace {

qift::matrix<float> act_random_matrix(std::size_t rows, std::size_t cols, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    qift::matrix<float> m(rows, cols);
    for (auto& v : m.flat()) v = dist(gen);
    return m;
}

}  // namespace

TEST_CASE("quantize_activations matches the scalar reference and pads with zeros") {
    for (std::size_t cols : {1u, 7u, 63u, 256u, 257u, 4097u})
        for (auto range : {qift::a4_range::symmetric, qift::a4_range::full})
            for (float clip : {1.0f, 0.9f}) {
                const auto x = act_random_matrix(3, cols, static_cast<unsigned>(cols));
                const auto q = qift::quantize_activations(x, clip, range);
                REQUIRE(q.tokens == 3);
                REQUIRE(q.padded_cols % 256 == 0);
                REQUIRE(q.padded_cols >= cols);
                const int lo = range == qift::a4_range::full ? -8 : -7;
                std::vector<std::int8_t> ref(cols);
                for (std::size_t t = 0; t < 3; ++t) {
                    const float s =
                        qift::detail::quantize_token_scalar(x.row(t), clip, lo, ref.data());
                    CHECK(s == q.scales[t]);
                    std::int32_t sum = 0;
                    for (std::size_t k = 0; k < cols; ++k) {
                        CHECK(q.code(t, k) == ref[k]);
                        CHECK(q.code(t, k) >= lo);
                        CHECK(q.code(t, k) <= 7);
                        sum += ref[k];
                    }
                    CHECK(q.sums[t] == sum);
                    for (std::size_t k = cols; k < q.padded_cols; ++k) CHECK(q.code(t, k) == 0);
                    // round-to-nearest: error at most half a step inside the clip range
                    for (std::size_t k = 0; k < cols; ++k) {
                        const float v = x(t, k);
                        if (std::fabs(v) <= clip * 7.0f * s)
                            CHECK(std::fabs(v - s * float(q.code(t, k))) <= 0.5f * s * 1.0001f);
                    }
                }
            }
}

TEST_CASE("quantize_activations: extremes, zeros and errors") {
    qift::matrix<float> x(2, 300, 1.0f);
    for (std::size_t k = 0; k < 300; ++k) x(1, k) = -1.0f;
    const auto q = qift::quantize_activations(x, 1.0f);
    CHECK(q.code(0, 0) == 7);
    CHECK(q.code(1, 299) == -7);
    CHECK(q.sums[1] == -7 * 300);
    const auto f = qift::quantize_activations(x, 0.5f, qift::a4_range::full);
    CHECK(f.code(1, 5) == -8);
    CHECK(f.code(0, 5) == 7);
    const qift::matrix<float> z(1, 10, 0.0f);
    const auto qz = qift::quantize_activations(z);
    CHECK(qz.scales[0] == 0.0f);
    CHECK(qz.code(0, 3) == 0);
    const auto back = qift::dequantize(q);
    CHECK(back(0, 0) == doctest::Approx(1.0f));

    CHECK_THROWS_AS(qift::quantize_activations(x, 0.0f), qift::error);
    CHECK_THROWS_AS(qift::quantize_activations(x, 1.5f), qift::error);
    qift::matrix<float> bad(1, 4, 1.0f);
    bad(0, 2) = NAN;
    CHECK_THROWS_AS(qift::quantize_activations(bad), qift::error);
    CHECK_THROWS_AS(qift::quantize_activations(qift::matrix<float>(1, 65537, 1.0f)), qift::error);
    CHECK_THROWS_AS(qift::quantize_activations(qift::matrix<float>()), qift::error);
}

namespace {

// Every architecture this build can run, against the scalar reference: codes, scale and sum.
template <class Arch>
void check_token_arch(Arch arch, std::span<const float> x, float clip, int lo, int hi) {
    std::vector<std::int8_t> ref(x.size() + 1, 99), got(x.size() + 1, 99);
    const float s_ref = qift::detail::quantize_token_scalar(x, clip, lo, ref.data(), hi);
    using kernel = qift::detail::quantize_token_kernel;
    const std::uint32_t m = kernel::max_abs_bits(arch, x);
    float m_ref = 0.0f;
    for (float v : x) m_ref = std::max(m_ref, std::fabs(v));
    CHECK(std::bit_cast<float>(m) == m_ref);
    std::int32_t sum = 0;
    const float s = kernel::encode(arch, x, std::bit_cast<float>(m), clip, lo, got.data(), sum, hi);
    CHECK(std::memcmp(&s, &s_ref, sizeof s) == 0);
    CHECK(got == ref);  // includes the guard byte past the end: nothing written beyond x.size()
    std::int32_t sum_ref = 0;
    for (std::size_t k = 0; k < x.size(); ++k) sum_ref += ref[k];
    CHECK(sum == sum_ref);
    std::vector<std::int8_t> via_call(x.size());
    CHECK(kernel{}(arch, x, clip, lo, via_call.data(), hi) == s_ref);
    CHECK(std::equal(via_call.begin(), via_call.end(), ref.begin()));
}

// hi = 7: INT4 activations; hi = 127 with lo = -127: the INT8 ones of binary_matrix.hpp.
void check_token(std::span<const float> x, float clip, int lo, int hi = 7) {
    check_token_arch(xsimd::default_arch{}, x, clip, lo, hi);
#if defined(__AVX512F__)
    check_token_arch(xsimd::avx512f{}, x, clip, lo, hi);
#endif
#if defined(__AVX2__)
    check_token_arch(xsimd::avx2{}, x, clip, lo, hi);
#endif
#if defined(__SSE4_2__)
    check_token_arch(xsimd::sse4_2{}, x, clip, lo, hi);
#endif
}

}  // namespace

TEST_CASE("quantize_token_kernel is bit-exact with the scalar reference on every path") {
    std::mt19937 gen(7);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    for (std::size_t n : {0u, 1u, 5u, 15u, 16u, 17u, 31u, 33u, 63u, 64u, 65u, 100u, 4095u, 4097u})
        for (int lo : {-7, -8})
            for (float clip : {1.0f, 0.9f, 0.37f}) {
                std::vector<float> x(n);
                for (auto& v : x) v = nd(gen);
                check_token(x, clip, lo);
            }
    // Ties: max|x| = 7, so scale = clip and 1/scale = 1/clip exactly for clip = 1 and 0.5;
    // the quarter steps then land on every k + 0.5, rounded in the current mode.
    std::vector<float> ties;
    for (int i = -28; i <= 28; ++i) ties.push_back(0.25f * float(i));
    ties.push_back(-0.0f);
    for (int mode : {FE_TONEAREST, FE_UPWARD, FE_DOWNWARD, FE_TOWARDZERO}) {
        REQUIRE(std::fesetround(mode) == 0);
        for (float clip : {1.0f, 0.5f})
            for (int lo : {-7, -8}) {
                check_token(ties, clip, lo);
                std::vector<float> wide(ties);
                for (int rep = 0; rep < 4; ++rep) wide.insert(wide.end(), ties.begin(), ties.end());
                check_token(wide, clip, lo);
            }
    }
    std::fesetround(FE_TONEAREST);
    // INT8 codes (hi = 127, no clip): random tokens, and ties (max|x| = 127: scale 1, so the
    // half steps are exact ties) in every rounding mode.
    for (std::size_t n : {1u, 15u, 16u, 17u, 33u, 63u, 65u, 100u, 4097u}) {
        std::vector<float> x(n);
        for (auto& v : x) v = 20.0f * nd(gen);
        check_token(x, 1.0f, -127, 127);
    }
    std::vector<float> ties8;
    for (int i = -254; i <= 254; ++i) ties8.push_back(0.5f * float(i));
    for (int mode : {FE_TONEAREST, FE_UPWARD, FE_DOWNWARD, FE_TOWARDZERO}) {
        REQUIRE(std::fesetround(mode) == 0);
        check_token(ties8, 1.0f, -127, 127);
    }
    std::fesetround(FE_TONEAREST);
    // Zero tokens, -0.0, and a max|x| so small that 1/scale overflows: scale 0, codes 0.
    for (std::size_t n : {1u, 17u, 70u}) {
        std::vector<float> z(n, 0.0f);
        z[n / 2] = -0.0f;
        check_token(z, 1.0f, -7);
        std::vector<float> tiny(n, 0.0f);
        tiny[0] = std::numeric_limits<float>::denorm_min() * 3.0f;
        check_token(tiny, 0.5f, -8);
        std::vector<std::int8_t> c(n, 5);
        CHECK(qift::detail::quantize_token_scalar(tiny, 0.5f, -8, c.data()) == 0.0f);
        CHECK(c[0] == 0);
    }
    // Extremes: huge values, tiny clip (x·(1/scale) far beyond the clamp).
    std::vector<float> big{3e38f, -3e38f, 1e-30f, 2e38f, -1.0f};
    check_token(big, 1.0f, -8);
    check_token(big, 1e-6f, -8);
    check_token(big, 1e-6f, -7);
}

TEST_CASE("quantize_activations into reused storage: same result, no reallocation") {
    qift::quantized_activations q;
    const auto big = act_random_matrix(4, 1000, 11);
    qift::quantize_activations(big, q, 0.8f, qift::a4_range::full);
    const auto* codes = q.codes.data();
    const auto* scales = q.scales.data();
    for (std::size_t cols : {1000u, 257u, 1u, 999u}) {
        for (std::size_t tokens : {4u, 1u, 3u}) {
            const auto x = act_random_matrix(tokens, cols, unsigned(cols + tokens));
            // Dirty the reused buffer so that stale padding would show.
            std::fill(q.codes.begin(), q.codes.end(), std::int8_t{5});
            qift::quantize_activations(x, q, 0.8f, qift::a4_range::full);
            const auto fresh = qift::quantize_activations(x, 0.8f, qift::a4_range::full);
            CHECK(q.tokens == fresh.tokens);
            CHECK(q.cols == fresh.cols);
            CHECK(q.padded_cols == fresh.padded_cols);
            CHECK(q.codes == fresh.codes);
            CHECK(q.scales == fresh.scales);
            CHECK(q.sums == fresh.sums);
            CHECK(q.codes.data() == codes);
            CHECK(q.scales.data() == scales);
        }
    }
    // A strided view and the one-token overload.
    const auto x = act_random_matrix(3, 300, 5);
    const qift::matrix_view<const float> sub(x.data() + 10, 3, 200, 300);
    qift::quantize_activations(sub, q);
    const auto fresh = qift::quantize_activations(qift::matrix<float>::from(sub));
    CHECK(q.codes == fresh.codes);
    qift::quantize_activations(x.row(1), q, 0.9f);
    CHECK(q.tokens == 1);
    CHECK(q.codes == qift::quantize_activations(x.row(1), 0.9f).codes);
    // A non-finite value: the error names it and q is left empty.
    qift::matrix<float> bad(3, 40, 1.0f);
    bad(2, 33) = INFINITY;
    CHECK_THROWS_WITH_AS(qift::quantize_activations(bad, q), doctest::Contains("x(2, 33)"),
                         qift::error);
    CHECK(q.tokens == 0);
    CHECK(q.codes.empty());
    bad(2, 33) = 1.0f;
    bad(0, 39) = NAN;
    CHECK_THROWS_WITH_AS(qift::quantize_activations(bad, q), doctest::Contains("x(0, 39)"),
                         qift::error);
}
