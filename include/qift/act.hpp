// SPDX-License-Identifier: MIT
// A4 activation quantization (QuaRot, arXiv 2404.00456): per-token symmetric INT4 codes with one
// float scale per token, laid out for the integer GEMV/GEMM kernels.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "core.hpp"
#include "detail/xsimd.hpp"

namespace qift {

/// Code range of A4 activations. The scale is always clip·max|x|/7, so with clip = 1 both
/// ranges give codes in −7..7; with clip < 1 the full range also uses −8 for the most negative
/// values (one extra level on one side, as plain two's-complement INT4 does).
enum class a4_range {
    symmetric,  ///< codes −7..7
    full,       ///< codes −8..7
};

/// INT4 activations of `tokens` tokens of `cols` values each, one byte per code.
///   codes  [tokens][padded_cols]  int8, row t starts at t·padded_cols (64-byte aligned); the
///                                 padding columns [cols, padded_cols) hold 0
///   scales [tokens]               x(t, k) ≈ scales[t] · codes(t, k)
///   sums   [tokens]               Σ_k codes(t, k), used by the integer kernels (zero-point and
///                                 unsigned-offset corrections)
/// padded_cols is cols rounded up to a multiple of 256 (one 2-bit packed block).
struct quantized_activations {
    static constexpr std::size_t column_multiple = 256;

    std::size_t tokens = 0;
    std::size_t cols = 0;
    std::size_t padded_cols = 0;
    aligned_vector<std::int8_t> codes;
    aligned_vector<float> scales;
    aligned_vector<std::int32_t> sums;

    const std::int8_t* row(std::size_t t) const noexcept { return codes.data() + t * padded_cols; }
    std::int8_t code(std::size_t t, std::size_t k) const noexcept { return row(t)[k]; }
};

namespace detail {

inline std::size_t padded_activation_cols(std::size_t cols) noexcept {
    constexpr std::size_t m = quantized_activations::column_multiple;
    return (cols + m - 1) / m * m;
}

/// Scalar reference of one token: code = clamp(nearbyint(x · (1/scale)), lo, 7) with
/// scale = clip·max|x|/7 (all codes 0 and scale 0 when max|x| = 0). Returns the scale.
inline float quantize_token_scalar(std::span<const float> x, float clip, int lo,
                                   std::int8_t* codes) noexcept {
    float m = 0.0f;
    for (float v : x) m = std::max(m, std::fabs(v));
    const float scale = clip * m / 7.0f;
    if (scale == 0.0f) {
        std::fill_n(codes, x.size(), std::int8_t{0});
        return 0.0f;
    }
    const float inv = 1.0f / scale;
    for (std::size_t k = 0; k < x.size(); ++k)
        codes[k] = static_cast<std::int8_t>(
            std::clamp(std::nearbyint(x[k] * inv), static_cast<float>(lo), 7.0f));
    return scale;
}

/// xsimd kernel of one token, bit-exact with quantize_token_scalar: a vector max|x| pass,
/// then multiply, round to nearest even, clamp and narrow.
struct quantize_token_kernel {
    template <class Arch>
    float operator()(Arch, std::span<const float> x, float clip, int lo,
                     std::int8_t* codes) const noexcept {
        using bf = xsimd::batch<float, Arch>;
        constexpr std::size_t width = bf::size;
        const std::size_t n = x.size(), vec_end = n - n % width;
        bf mv(0.0f);
        for (std::size_t k = 0; k < vec_end; k += width)
            mv = xsimd::max(mv, xsimd::abs(bf::load_unaligned(x.data() + k)));
        alignas(64) float lanes[width];
        mv.store_aligned(lanes);
        float m = 0.0f;
        for (float v : lanes) m = std::max(m, v);
        for (std::size_t k = vec_end; k < n; ++k) m = std::max(m, std::fabs(x[k]));
        const float scale = clip * m / 7.0f;
        if (scale == 0.0f) {
            std::fill_n(codes, n, std::int8_t{0});
            return 0.0f;
        }
        const float inv = 1.0f / scale;
        const bf vinv(inv), vlo(static_cast<float>(lo)), vhi(7.0f);
        alignas(64) std::int32_t q[width];
        for (std::size_t k = 0; k < vec_end; k += width) {
            const bf v = xsimd::nearbyint(bf::load_unaligned(x.data() + k) * vinv);
            xsimd::batch_cast<std::int32_t>(xsimd::clip(v, vlo, vhi)).store_aligned(q);
            for (std::size_t l = 0; l < width; ++l) codes[k + l] = static_cast<std::int8_t>(q[l]);
        }
        for (std::size_t k = vec_end; k < n; ++k)
            codes[k] = static_cast<std::int8_t>(
                std::clamp(std::nearbyint(x[k] * inv), static_cast<float>(lo), 7.0f));
        return scale;
    }
};

}  // namespace detail

/// Per-token symmetric INT4 quantization of x [tokens][cols] (row-major, any stride) into
/// `out`, reusing its storage (no allocation once it has held as many codes):
/// scale_t = clip·max_k|x(t,k)|/7, code = clamp(round-half-even(x / scale_t), lo, 7) with lo = −7
/// (a4_range::symmetric) or −8 (a4_range::full). A token of zeros gets scale 0 and codes 0.
/// Throws qift::error for an empty x, cols > 65536 (the integer kernels' proven range), clip not
/// in (0, 1] or a non-finite value (naming its position). O(tokens·cols), vectorized.
inline void quantize_activations(matrix_view<const float> x, quantized_activations& q,
                                 float clip = 1.0f, a4_range range = a4_range::symmetric) {
    detail::require(!x.empty(), [&] {
        return "quantize_activations: x is empty (" + std::to_string(x.rows) + "x" +
               std::to_string(x.cols) + ")";
    });
    detail::require(x.stride >= x.cols, [&] {
        return "quantize_activations: x.stride " + std::to_string(x.stride) + " < x.cols " +
               std::to_string(x.cols);
    });
    detail::require(x.cols <= 65536, [&] {
        return "quantize_activations: x.cols " + std::to_string(x.cols) +
               " exceeds 65536, the range of the integer kernels";
    });
    detail::require(clip > 0.0f && clip <= 1.0f, [&] {
        return "quantize_activations: clip must be in (0, 1], got " + std::to_string(clip);
    });
    for (std::size_t t = 0; t < x.rows; ++t)
        for (std::size_t k = 0; k < x.cols; ++k)
            detail::require(std::isfinite(x(t, k)), [&] {
                return "quantize_activations: x(" + std::to_string(t) + ", " + std::to_string(k) +
                       ") is " + std::to_string(x(t, k)) + " (activations must be finite)";
            });
    q.tokens = x.rows;
    q.cols = x.cols;
    q.padded_cols = detail::padded_activation_cols(x.cols);
    q.codes.assign(q.tokens * q.padded_cols, 0);
    q.scales.assign(q.tokens, 0.0f);
    q.sums.assign(q.tokens, 0);
    const int lo = range == a4_range::full ? -8 : -7;
    for (std::size_t t = 0; t < x.rows; ++t) {
        std::int8_t* c = q.codes.data() + t * q.padded_cols;
        q.scales[t] = detail::quantize_token_kernel{}(xsimd::default_arch{}, x.row(t), clip, lo, c);
        std::int32_t s = 0;
        for (std::size_t k = 0; k < x.cols; ++k) s += c[k];
        q.sums[t] = s;
    }
}

/// The same, returning new storage.
inline quantized_activations quantize_activations(matrix_view<const float> x, float clip = 1.0f,
                                                  a4_range range = a4_range::symmetric) {
    quantized_activations q;
    quantize_activations(x, q, clip, range);
    return q;
}

/// One token: x is a span of cols values.
inline quantized_activations quantize_activations(std::span<const float> x, float clip = 1.0f,
                                                  a4_range range = a4_range::symmetric) {
    return quantize_activations(matrix_view<const float>(x.data(), 1, x.size()), clip, range);
}

/// The dequantized [tokens][cols] activations: scales[t] · codes(t, k).
inline matrix<float> dequantize(const quantized_activations& q) {
    matrix<float> out(q.tokens, q.cols);
    for (std::size_t t = 0; t < q.tokens; ++t)
        for (std::size_t k = 0; k < q.cols; ++k)
            out(t, k) = q.scales[t] * static_cast<float>(q.code(t, k));
    return out;
}

}  // namespace qift
