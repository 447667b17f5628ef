// SPDX-License-Identifier: MIT
// Kernels of the KV4 cache: nibble unpacking to float (intrinsics for AVX-512 and AVX2, a
// scalar reference), and the dot / axpy loops of decode attention on xsimd batches.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "xsimd.hpp"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace qift::detail {

/// Scalar reference: dst[j] = src[j] & 15 and dst[j + half] = src[j] >> 4 for j < half.
inline void unpack_nibbles_scalar(const std::uint8_t* src, std::size_t half, float* dst) noexcept {
    for (std::size_t j = 0; j < half; ++j) {
        dst[j] = static_cast<float>(src[j] & 15u);
        dst[j + half] = static_cast<float>(src[j] >> 4);
    }
}

/// The same unpacking, 16 (AVX-512) or 8 (AVX2) bytes a step. xsimd 8.1 has no widening
/// u8 -> f32 conversion, so the ISA paths use vpmovzxbd directly.
inline void unpack_nibbles(const std::uint8_t* src, std::size_t half, float* dst) noexcept {
    std::size_t j = 0;
#if defined(__AVX512F__)
    const __m128i low = _mm_set1_epi8(15);
    for (; j + 16 <= half; j += 16) {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j));
        const __m128i lo = _mm_and_si128(b, low);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
        _mm512_storeu_ps(dst + j, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)));
        _mm512_storeu_ps(dst + half + j, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)));
    }
#endif
#if defined(__AVX2__)
    const __m128i low8 = _mm_set1_epi8(15);
    for (; j + 8 <= half; j += 8) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + j));
        const __m128i lo = _mm_and_si128(b, low8);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low8);
        _mm256_storeu_ps(dst + j, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)));
        _mm256_storeu_ps(dst + half + j, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)));
    }
#endif
    for (; j < half; ++j) {
        dst[j] = static_cast<float>(src[j] & 15u);
        dst[j + half] = static_cast<float>(src[j] >> 4);
    }
}

/// Σ a[i]·b[i] on xsimd batches with a scalar tail.
template <class Arch = xsimd::default_arch>
inline float dot(const float* a, const float* b, std::size_t n) noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t w = batch::size;
    const std::size_t vec_end = n - n % w;
    batch acc(0.0f);
    for (std::size_t i = 0; i < vec_end; i += w)
        acc = xsimd::fma(batch::load_unaligned(a + i), batch::load_unaligned(b + i), acc);
    float s = reduce_add(acc);
    for (std::size_t i = vec_end; i < n; ++i) s += a[i] * b[i];
    return s;
}

/// y[i] += alpha·x[i] on xsimd batches with a scalar tail.
template <class Arch = xsimd::default_arch>
inline void axpy(float alpha, const float* x, float* y, std::size_t n) noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t w = batch::size;
    const batch a(alpha);
    const std::size_t vec_end = n - n % w;
    for (std::size_t i = 0; i < vec_end; i += w)
        xsimd::fma(a, batch::load_unaligned(x + i), batch::load_unaligned(y + i))
            .store_unaligned(y + i);
    for (std::size_t i = vec_end; i < n; ++i) y[i] += alpha * x[i];
}

/// Rows of one kv head's keys or values as float32, stored as is (the float baseline and the
/// reference): row t is data[t·HeadDim, ...), every row's affine parameters are (1, 0).
template <std::size_t HeadDim>
struct float_rows {
    static constexpr bool affine = false;
    const float* data;
    const float* rows(std::size_t t0, std::size_t, float*) const noexcept {
        return data + t0 * HeadDim;
    }
    float scale(std::size_t) const noexcept { return 1.0f; }
    float zero(std::size_t) const noexcept { return 0.0f; }
};

/// Rows of one kv head in the KV4 layout: row t is scale[t]·(c − zero[t]) with c the 4-bit
/// codes of codes[t·HeadDim/2, ...) (byte j: code j low, code j + HeadDim/2 high).
template <std::size_t HeadDim>
struct nibble_rows {
    static constexpr bool affine = true;
    const std::uint8_t* codes;
    const float* scales;
    const std::uint8_t* zeros;
    const float* rows(std::size_t t0, std::size_t n, float* scratch) const noexcept {
        for (std::size_t t = 0; t < n; ++t)
            unpack_nibbles(codes + (t0 + t) * (HeadDim / 2), HeadDim / 2, scratch + t * HeadDim);
        return scratch;
    }
    float scale(std::size_t t) const noexcept { return scales[t]; }
    float zero(std::size_t t) const noexcept { return static_cast<float>(zeros[t]); }
};

/// Scalar reference of attend_rows (same contract), for head sizes that are not a multiple of
/// the SIMD width and as the test oracle.
template <std::size_t HeadDim, class KeyRows, class ValueRows>
void attend_rows_reference(const KeyRows& keys, const ValueRows& values, const float* q,
                           std::size_t heads, std::size_t T, float* out, float* scratch,
                           float* scores) noexcept {
    const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(HeadDim));
    for (std::size_t h = 0; h < heads; ++h) {
        const float* qh = q + h * HeadDim;
        float* sh = scores + h * T;
        float m = -std::numeric_limits<float>::infinity();
        for (std::size_t t = 0; t < T; ++t) {
            const float* k = keys.rows(t, 1, scratch);
            float dot = 0.0f;
            for (std::size_t i = 0; i < HeadDim; ++i)
                dot += qh[i] * keys.scale(t) * (k[i] - keys.zero(t));
            sh[t] = dot * inv_sqrt_d;
            m = std::max(m, sh[t]);
        }
        double z = 0.0;
        for (std::size_t t = 0; t < T; ++t) z += (sh[t] = std::exp(sh[t] - m));
        float* o = out + h * HeadDim;
        for (std::size_t i = 0; i < HeadDim; ++i) o[i] = 0.0f;
        for (std::size_t t = 0; t < T; ++t) {
            const float* v = values.rows(t, 1, scratch);
            const float w = static_cast<float>(sh[t] / z);
            for (std::size_t i = 0; i < HeadDim; ++i)
                o[i] += w * values.scale(t) * (v[i] - values.zero(t));
        }
    }
}

/// Tokens per block of the attention kernel: the unpacked block (block · HeadDim floats, 16 KiB
/// at HeadDim 128) stays in L1 while every query head of the group uses it.
inline constexpr std::size_t attention_block = 32;

/// Decode attention of `heads` query heads q [heads][HeadDim] over the T rows of one kv head:
/// out[h] = Σ_t softmax_t(q_h·k_t / √HeadDim) · v_t, k_t and v_t the dequantized rows. Rows
/// are produced a block at a time and reused by all heads; the value sum keeps 4 heads × 4
/// vectors of accumulators in registers. Precondition: heads <= 64. `scratch` holds
/// attention_block·HeadDim floats, `scores` heads·T. Both sources' parameters enter as s·(q·c −
/// z·Σq) and Σ(p·s)·c − Σ(p·s)·z.
template <class Arch, std::size_t HeadDim, class KeyRows, class ValueRows>
void attend_rows(const KeyRows& keys, const ValueRows& values, const float* q, std::size_t heads,
                 std::size_t T, float* out, float* scratch, float* scores) noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t W = batch::size;
    static_assert(HeadDim % W == 0, "attend_rows needs HeadDim to be a multiple of the width");
    constexpr std::size_t V = HeadDim / W;
    const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(HeadDim));
    float qsum[64];
    for (std::size_t h = 0; h < heads; ++h) {
        float s = 0.0f;
        for (std::size_t i = 0; i < HeadDim; ++i) s += q[h * HeadDim + i];
        qsum[h] = s;
    }
    // Scores. (xsimd 8.1's AVX-512 haddp returns its sums in permuted lane order, so each
    // token's dot is reduced on its own.)
    for (std::size_t t0 = 0; t0 < T; t0 += attention_block) {
        const std::size_t n = std::min(attention_block, T - t0);
        const float* rows = keys.rows(t0, n, scratch);
        for (std::size_t h = 0; h < heads; ++h) {
            const float* qh = q + h * HeadDim;
            float* sh = scores + h * T;
            for (std::size_t j = 0; j < n; ++j) {
                const float* r = rows + j * HeadDim;
                batch a0(0.0f), a1(0.0f);
                for (std::size_t v = 0; v + 1 < V; v += 2) {
                    a0 = xsimd::fma(batch::load_unaligned(qh + v * W),
                                    batch::load_unaligned(r + v * W), a0);
                    a1 = xsimd::fma(batch::load_unaligned(qh + (v + 1) * W),
                                    batch::load_unaligned(r + (v + 1) * W), a1);
                }
                if constexpr (V % 2)
                    a0 = xsimd::fma(batch::load_unaligned(qh + (V - 1) * W),
                                    batch::load_unaligned(r + (V - 1) * W), a0);
                const float dot = reduce_add(a0 + a1);
                const std::size_t t = t0 + j;
                sh[t] = KeyRows::affine
                            ? keys.scale(t) * (dot - keys.zero(t) * qsum[h]) * inv_sqrt_d
                            : dot * inv_sqrt_d;
            }
        }
    }
    // Softmax per head, vectorized exp; the 1/Z and the value scales are folded into weights.
    float corr[64];
    for (std::size_t h = 0; h < heads; ++h) {
        float* sh = scores + h * T;
        float m = sh[0];
        for (std::size_t t = 1; t < T; ++t) m = std::max(m, sh[t]);
        const batch mb(m);
        batch zb(0.0f);
        std::size_t t = 0;
        for (; t + W <= T; t += W) {
            const batch e = xsimd::exp(batch::load_unaligned(sh + t) - mb);
            e.store_unaligned(sh + t);
            zb += e;
        }
        double z = static_cast<double>(reduce_add(zb));
        for (; t < T; ++t) z += (sh[t] = std::exp(sh[t] - m));
        const float inv_z = static_cast<float>(1.0 / z);
        float c = 0.0f;
        for (t = 0; t < T; ++t) {
            const float w = sh[t] * inv_z * values.scale(t);
            sh[t] = w;
            c += w * values.zero(t);
        }
        corr[h] = c;
    }
    // Values: 4 heads × 4 vectors of accumulators per pass over a block.
    for (std::size_t i = 0; i < heads * HeadDim; ++i) out[i] = 0.0f;
    constexpr std::size_t PV = V % 4 == 0 ? 4 : V % 2 == 0 ? 2 : 1;
    for (std::size_t t0 = 0; t0 < T; t0 += attention_block) {
        const std::size_t n = std::min(attention_block, T - t0);
        const float* rows = values.rows(t0, n, scratch);
        for (std::size_t h0 = 0; h0 < heads; h0 += 4) {
            const std::size_t nh = std::min<std::size_t>(4, heads - h0);
            for (std::size_t v0 = 0; v0 < V; v0 += PV) {
                batch acc[4][PV];
                for (auto& a : acc)
                    for (auto& b : a) b = batch(0.0f);
                for (std::size_t j = 0; j < n; ++j) {
                    const float* r = rows + j * HeadDim + v0 * W;
                    batch rb[PV];
                    for (std::size_t v = 0; v < PV; ++v) rb[v] = batch::load_unaligned(r + v * W);
                    for (std::size_t h = 0; h < nh; ++h) {
                        const batch wb(scores[(h0 + h) * T + t0 + j]);
                        for (std::size_t v = 0; v < PV; ++v)
                            acc[h][v] = xsimd::fma(wb, rb[v], acc[h][v]);
                    }
                }
                for (std::size_t h = 0; h < nh; ++h)
                    for (std::size_t v = 0; v < PV; ++v) {
                        float* o = out + (h0 + h) * HeadDim + (v0 + v) * W;
                        (batch::load_unaligned(o) + acc[h][v]).store_unaligned(o);
                    }
            }
        }
    }
    if constexpr (ValueRows::affine)
        for (std::size_t h = 0; h < heads; ++h)
            for (std::size_t i = 0; i < HeadDim; ++i) out[h * HeadDim + i] -= corr[h];
}

}  // namespace qift::detail
