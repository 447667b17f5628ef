// SPDX-License-Identifier: MIT
// Small helpers shared by the test files: seeded random matrices and a quick quantizer.
#pragma once

#include <doctest/doctest.h>

#include <qift/core.hpp>
#include <qift/scale.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <span>

namespace qift::test {

inline matrix<float> gaussian_matrix(std::size_t rows, std::size_t cols, std::uint32_t seed,
                                     float sigma = 1.0f) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> nd(0.0f, sigma);
    matrix<float> m(rows, cols);
    for (auto& x : m.flat()) x = nd(gen);
    return m;
}

inline matrix<std::uint8_t> random_codes(std::size_t rows, std::size_t cols, unsigned bits,
                                         std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::uniform_int_distribution<int> d(0, (1 << bits) - 1);
    matrix<std::uint8_t> m(rows, cols);
    for (auto& x : m.flat()) x = static_cast<std::uint8_t>(d(gen));
    return m;
}

/// RTN with the max-based scale: the quickest way to a valid quantized_matrix in kernel tests.
template <class L>
quantized_matrix<L> quantize_fast(const matrix<float>& w) {
    scale_options opt;
    opt.rule = scale_rule::max;
    return quantize<L>(w, opt);
}

/// Runs check.template operator()<Arch>() in a SUBCASE for each instruction set compiled in:
/// AVX-512F, FMA3+AVX2, AVX2, SSE2 (those this build's flags allow) and xsimd's default. (Call
/// it outside loops: a SUBCASE met again in a later iteration is not re-entered.)
template <class Check>
void on_every_target(const Check& check) {
#if XSIMD_WITH_AVX512F
    SUBCASE("avx512f") {
        check.template operator()<xsimd::avx512f>();
    }
#endif
#if XSIMD_WITH_FMA3_AVX2
    SUBCASE("fma3<avx2>") {
        check.template operator()<xsimd::fma3<xsimd::avx2>>();
    }
#endif
#if XSIMD_WITH_AVX2
    SUBCASE("avx2") {
        check.template operator()<xsimd::avx2>();
    }
#endif
#if XSIMD_WITH_SSE2
    SUBCASE("sse2") {
        check.template operator()<xsimd::sse2>();
    }
#endif
    SUBCASE("default_arch") {
        check.template operator()<xsimd::default_arch>();
    }
}

/// max_r |y[r] − Σ_k w(r,k)·x[k]| / Σ_k |w(r,k)·x[k]|, the sums in double: the error measure of
/// the float product tests (their bound is 1e-5). NaN if any y[r] is NaN.
inline double max_product_error(std::span<const float> y, const matrix<float>& w,
                                std::span<const float> x) {
    double worst = 0.0;
    for (std::size_t r = 0; r < w.rows(); ++r) {
        double sum = 0.0, mag = 0.0;
        for (std::size_t k = 0; k < w.cols(); ++k) {
            sum += double(w(r, k)) * double(x[k]);
            mag += std::fabs(double(w(r, k)) * double(x[k]));
        }
        const double e = std::fabs(double(y[r]) - sum) / (mag + 1e-30);
        if (!(e <= worst)) worst = e;  // a NaN stays
    }
    return worst;
}

}  // namespace qift::test
