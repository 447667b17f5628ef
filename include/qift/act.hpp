// SPDX-License-Identifier: MIT
// A4 activation quantization (QuaRot, arXiv 2404.00456): per-token symmetric INT4 codes with one
// float scale per token, laid out for the integer GEMV/GEMM kernels.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "core.hpp"
#include "detail/xsimd.hpp"

namespace qift::inline QIFT_ISA {

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

/// Bit pattern of |v|. For non-negative floats the bit patterns order as the values do, so an
/// unsigned integer max of them is max|x|; a pattern >= abs_bits_infinity is ±inf or a NaN.
inline std::uint32_t abs_bits(float v) noexcept {
    return std::bit_cast<std::uint32_t>(v) & 0x7FFFFFFFu;
}
inline constexpr std::uint32_t abs_bits_infinity = 0x7F800000u;

/// The scale of a token of max|x| = m with codes up to hi (7 for INT4, 127 for INT8):
/// clip·m/hi, or 0 (an all-zero token) when m = 0 or when 1/scale overflows (m below about
/// hi·2^-128/clip, where x·(1/scale) is not finite).
inline float token_scale(float m, float clip, int hi = 7) noexcept {
    const float scale = clip * m / static_cast<float>(hi);
    return scale == 0.0f || !std::isfinite(1.0f / scale) ? 0.0f : scale;
}

/// Scalar reference of one token (finite x): code = clamp(nearbyint(x · (1/scale)), lo, hi)
/// with scale = token_scale(max|x|, clip, hi); all codes 0 and scale 0 for a zero token.
/// nearbyint rounds in the current rounding mode (ties to even by default). Returns the scale.
inline float quantize_token_scalar(std::span<const float> x, float clip, int lo, std::int8_t* codes,
                                   int hi = 7) noexcept {
    float m = 0.0f;
    for (float v : x) m = std::max(m, std::fabs(v));
    const float scale = token_scale(m, clip, hi);
    if (scale == 0.0f) {
        std::fill_n(codes, x.size(), std::int8_t{0});
        return 0.0f;
    }
    const float inv = 1.0f / scale;
    for (std::size_t k = 0; k < x.size(); ++k)
        codes[k] = static_cast<std::int8_t>(
            std::clamp(std::nearbyint(x[k] * inv), static_cast<float>(lo), static_cast<float>(hi)));
    return scale;
}

/// Vector kernel of one token, bit-exact with quantize_token_scalar in every rounding mode
/// (for finite x): a max pass over the bit patterns of |x| (abs_bits; it also flags non-finite
/// values), then a code pass: multiply, clamp to [lo, hi] in float, convert in the current
/// rounding mode (clamping before rounding equals rounding before clamping: the bounds are
/// integers) and narrow. AVX-512F: 32 values a step, masked loads for the tail; AVX2: 32 a step,
/// packs + one permute to narrow; SSE2: 16 a step, packs; scalar tails and other architectures.
/// hi is 7 (INT4 activations) or up to 127 (INT8, binary_matrix.hpp): the narrowing saturates
/// to int8, which every code in [lo, hi] fits.
struct quantize_token_kernel {
    /// Quantizes x into codes[0, x.size()) and returns the scale (the interface smooth.hpp
    /// uses).
    template <class Arch>
    float operator()(Arch arch, std::span<const float> x, float clip, int lo, std::int8_t* codes,
                     int hi = 7) const noexcept {
        std::int32_t sum = 0;
        return encode(arch, x, std::bit_cast<float>(max_abs_bits(arch, x)), clip, lo, codes, sum,
                      hi);
    }

    /// max_k abs_bits(x[k]) (0 for an empty x).
    template <class Arch>
    static std::uint32_t max_abs_bits(Arch, std::span<const float> x) noexcept {
        const std::size_t n = x.size();
        const float* p = x.data();
        std::size_t k = 0;
        std::uint32_t m = 0;
#if defined(__AVX512F__)
        if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
            const __m512i mask = _mm512_set1_epi32(0x7FFFFFFF);
            __m512i m0 = _mm512_setzero_si512(), m1 = m0, m2 = m0, m3 = m0;
            const auto bits = [&](std::size_t i) {
                return _mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(p + i)), mask);
            };
            for (; k + 64 <= n; k += 64) {
                m0 = _mm512_max_epu32(m0, bits(k));
                m1 = _mm512_max_epu32(m1, bits(k + 16));
                m2 = _mm512_max_epu32(m2, bits(k + 32));
                m3 = _mm512_max_epu32(m3, bits(k + 48));
            }
            for (; k + 16 <= n; k += 16) m0 = _mm512_max_epu32(m0, bits(k));
            if (k < n) {
                const auto tail = static_cast<__mmask16>((1u << (n - k)) - 1u);
                m1 = _mm512_max_epu32(
                    m1, _mm512_and_si512(_mm512_castps_si512(_mm512_maskz_loadu_ps(tail, p + k)),
                                         mask));
            }
            return _mm512_reduce_max_epu32(
                _mm512_max_epu32(_mm512_max_epu32(m0, m1), _mm512_max_epu32(m2, m3)));
        }
#endif
#if defined(__AVX2__)
        if constexpr (std::is_base_of_v<xsimd::avx2, Arch>) {
            const __m256i mask = _mm256_set1_epi32(0x7FFFFFFF);
            __m256i m0 = _mm256_setzero_si256(), m1 = m0, m2 = m0, m3 = m0;
            const auto bits = [&](std::size_t i) {
                return _mm256_and_si256(_mm256_castps_si256(_mm256_loadu_ps(p + i)), mask);
            };
            for (; k + 32 <= n; k += 32) {
                m0 = _mm256_max_epu32(m0, bits(k));
                m1 = _mm256_max_epu32(m1, bits(k + 8));
                m2 = _mm256_max_epu32(m2, bits(k + 16));
                m3 = _mm256_max_epu32(m3, bits(k + 24));
            }
            for (; k + 8 <= n; k += 8) m0 = _mm256_max_epu32(m0, bits(k));
            const __m256i v = _mm256_max_epu32(_mm256_max_epu32(m0, m1), _mm256_max_epu32(m2, m3));
            __m128i h = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            h = _mm_max_epu32(h, _mm_shuffle_epi32(h, 0x4E));
            h = _mm_max_epu32(h, _mm_shuffle_epi32(h, 0xB1));
            m = static_cast<std::uint32_t>(_mm_cvtsi128_si32(h));
        }
#endif
        for (; k < n; ++k) m = std::max(m, abs_bits(p[k]));
        return m;
    }

    /// The code pass for a token of max|x| = m: codes[0, x.size()), their sum in `sum`; returns
    /// the scale (token_scale(m, clip, hi)).
    template <class Arch>
    static float encode(Arch, std::span<const float> x, float m, float clip, int lo,
                        std::int8_t* codes, std::int32_t& sum, int hi = 7) noexcept {
        const std::size_t n = x.size();
        const float* p = x.data();
        const float scale = token_scale(m, clip, hi);
        sum = 0;
        if (scale == 0.0f) {
            std::fill_n(codes, n, std::int8_t{0});
            return 0.0f;
        }
        const float inv = 1.0f / scale, flo = static_cast<float>(lo), fhi = static_cast<float>(hi);
        std::size_t k = 0;
#if defined(__AVX512F__)
        if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
            const __m512 vinv = _mm512_set1_ps(inv), vlo = _mm512_set1_ps(flo),
                         vhi = _mm512_set1_ps(fhi);
            __m512i s0 = _mm512_setzero_si512(), s1 = s0;
            const auto code = [&](__m512 v) {
                return _mm512_cvtps_epi32(
                    _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, vinv), vlo), vhi));
            };
            for (; k + 32 <= n; k += 32) {
                const __m512i c0 = code(_mm512_loadu_ps(p + k));
                const __m512i c1 = code(_mm512_loadu_ps(p + k + 16));
                s0 = _mm512_add_epi32(s0, c0);
                s1 = _mm512_add_epi32(s1, c1);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + k), _mm512_cvtepi32_epi8(c0));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + k + 16),
                                 _mm512_cvtepi32_epi8(c1));
            }
            for (; k < n; k += 16) {
                const auto tail =
                    static_cast<__mmask16>(n - k >= 16 ? 0xFFFFu : (1u << (n - k)) - 1u);
                // Masked-off lanes load 0, which codes to 0: they add nothing to the sum.
                const __m512i c = code(_mm512_maskz_loadu_ps(tail, p + k));
                s0 = _mm512_add_epi32(s0, c);
                _mm512_mask_cvtepi32_storeu_epi8(codes + k, tail, c);
            }
            sum = _mm512_reduce_add_epi32(_mm512_add_epi32(s0, s1));
            return scale;
        }
#endif
#if defined(__AVX2__)
        if constexpr (std::is_base_of_v<xsimd::avx2, Arch>) {
            const __m256 vinv = _mm256_set1_ps(inv), vlo = _mm256_set1_ps(flo),
                         vhi = _mm256_set1_ps(fhi);
            // packs interleaves the 128-bit lanes: dword i of the packed result holds codes
            // 4·order[i] .. 4·order[i] + 3.
            const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            __m256i s = _mm256_setzero_si256();
            const auto code = [&](std::size_t i) {
                return _mm256_cvtps_epi32(_mm256_min_ps(
                    _mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(p + i), vinv), vlo), vhi));
            };
            for (; k + 32 <= n; k += 32) {
                const __m256i c0 = code(k), c1 = code(k + 8), c2 = code(k + 16), c3 = code(k + 24);
                s = _mm256_add_epi32(
                    s, _mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)));
                const __m256i b =
                    _mm256_packs_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + k),
                                    _mm256_permutevar8x32_epi32(b, order));
            }
            sum = hsum_codes(s);
        }
#endif
#if defined(__SSE2__)
        if constexpr (std::is_base_of_v<xsimd::sse2, Arch>) {
            const __m128 vinv = _mm_set1_ps(inv), vlo = _mm_set1_ps(flo), vhi = _mm_set1_ps(fhi);
            __m128i s = _mm_setzero_si128();
            const auto code = [&](std::size_t i) {
                return _mm_cvtps_epi32(
                    _mm_min_ps(_mm_max_ps(_mm_mul_ps(_mm_loadu_ps(p + i), vinv), vlo), vhi));
            };
            for (; k + 16 <= n; k += 16) {
                const __m128i c0 = code(k), c1 = code(k + 4), c2 = code(k + 8), c3 = code(k + 12);
                s = _mm_add_epi32(s, _mm_add_epi32(_mm_add_epi32(c0, c1), _mm_add_epi32(c2, c3)));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + k),
                                 _mm_packs_epi16(_mm_packs_epi32(c0, c1), _mm_packs_epi32(c2, c3)));
            }
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
            sum += _mm_cvtsi128_si32(s);
        }
#endif
        // Elsewhere the scalar loop: xsimd's nearbyint rounds to nearest whatever the mode.
        for (; k < n; ++k) {
            codes[k] = static_cast<std::int8_t>(std::clamp(std::nearbyint(p[k] * inv), flo, fhi));
            sum += codes[k];
        }
        return scale;
    }

  private:
#if defined(__AVX2__)
    static std::int32_t hsum_codes(__m256i v) noexcept {
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
        return _mm_cvtsi128_si32(s);
    }
#endif
};

/// The position of the first non-finite value of x, for the error message.
inline std::pair<std::size_t, std::size_t> first_non_finite(matrix_view<const float> x) noexcept {
    for (std::size_t t = 0; t < x.rows; ++t)
        for (std::size_t k = 0; k < x.cols; ++k)
            if (!std::isfinite(x(t, k))) return {t, k};
    return {x.rows, 0};
}

/// The token loop of both activation quantizers (INT4 here, INT8 in binary_matrix.hpp): token t
/// of x into codes + t·stride (codes up to hi, at least lo; the padding [x.cols, stride) zeroed),
/// scales[t] and, when sums is not null, sums[t], through quantize_token_kernel. Returns false at
/// the first token holding a non-finite value; the caller then empties its output and reports
/// the position with fail_non_finite.
inline bool quantize_token_rows(matrix_view<const float> x, float clip, int lo, int hi,
                                std::int8_t* codes, std::size_t stride, float* scales,
                                std::int32_t* sums) noexcept {
    const xsimd::default_arch arch{};
    using kernel = quantize_token_kernel;
    for (std::size_t t = 0; t < x.rows; ++t) {
        const std::span<const float> row = x.row(t);
        const std::uint32_t m = kernel::max_abs_bits(arch, row);
        if (m >= abs_bits_infinity) [[unlikely]]
            return false;
        std::int8_t* c = codes + t * stride;
        std::int32_t sum = 0;
        scales[t] = kernel::encode(arch, row, std::bit_cast<float>(m), clip, lo, c, sum, hi);
        if (sums) sums[t] = sum;
        std::fill(c + x.cols, c + stride, std::int8_t{0});
    }
    return true;
}

/// Throws qift::error naming the first non-finite value of x (`fn: name(t, k) is v ...`).
[[noreturn]] inline void fail_non_finite(const char* fn, const char* name,
                                         matrix_view<const float> x) {
    const auto [t, k] = first_non_finite(x);
    fail(std::string(fn) + ": " + name + "(" + std::to_string(t) + ", " + std::to_string(k) +
         ") is " + std::to_string(x(t, k)) + " (activations must be finite)");
}

}  // namespace detail

/// Per-token symmetric INT4 quantization of x [tokens][cols] (row-major, any stride) into
/// `out`, reusing its storage (no allocation once it has held as many tokens and codes):
/// scale_t = clip·max_k|x(t,k)|/7, code = clamp(nearbyint(x / scale_t), lo, 7) with lo = −7
/// (a4_range::symmetric) or −8 (a4_range::full); nearbyint rounds in the current rounding mode
/// (ties to even by default). A token of zeros (or of max|x| so small that 1/scale overflows)
/// gets scale 0 and codes 0. Throws qift::error for an empty x, cols > 65536 (the integer
/// kernels' proven range), clip not in (0, 1] or a non-finite value (naming its position); after
/// a throw for a non-finite value `out` is empty (its storage kept). O(tokens·cols): two
/// vectorized passes over each token (detail::quantize_token_kernel), bit-exact with
/// detail::quantize_token_scalar.
inline void quantize_activations(matrix_view<const float> x, quantized_activations& out,
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
    out.tokens = x.rows;
    out.cols = x.cols;
    out.padded_cols = detail::padded_activation_cols(x.cols);
    // resize keeps the capacity; every byte is written below (codes, then the padding).
    out.codes.resize(out.tokens * out.padded_cols);
    out.scales.resize(out.tokens);
    out.sums.resize(out.tokens);
    const int lo = range == a4_range::full ? -8 : -7;
    if (!detail::quantize_token_rows(x, clip, lo, 7, out.codes.data(), out.padded_cols,
                                     out.scales.data(), out.sums.data())) [[unlikely]] {
        out.tokens = out.cols = out.padded_cols = 0;
        out.codes.clear();
        out.scales.clear();
        out.sums.clear();
        detail::fail_non_finite("quantize_activations", "x", x);
    }
}

/// The same, returning new storage (a thin wrapper of the overload above).
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

/// One token into reused storage.
inline void quantize_activations(std::span<const float> x, quantized_activations& out,
                                 float clip = 1.0f, a4_range range = a4_range::symmetric) {
    quantize_activations(matrix_view<const float>(x.data(), 1, x.size()), out, clip, range);
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
