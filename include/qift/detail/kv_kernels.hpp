// SPDX-License-Identifier: MIT
// Kernels of the KV4 cache: nibble widening to float (intrinsics for AVX-512 and AVX2, scalar
// fallbacks), the KV4 layout's index functions, the row and transposed-block sources of keys and
// values, and decode attention on xsimd batches beside its scalar reference.
#pragma once

#include "target.hpp"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "xsimd.hpp"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace qift::inline QIFT_ISA::detail {

/// A hint to fetch the cache line `bytes` past p, which may lie beyond the array (the address is
/// formed as an integer, never dereferenced). Streaming float32 rows needs it to reach DRAM
/// bandwidth: the hardware prefetchers alone gave about 60% of it at 32768 tokens.
inline void prefetch(const void* p, std::size_t bytes) noexcept {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(p) + bytes));
#else
    (void)p, (void)bytes;
#endif
}

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

/// x·y + z, fused. xsimd 8.1 has no AVX-512 fma: its generic x*y + z is contracted by g++ but
/// not by clang++ (measured 40% slower attention), so the AVX-512 width calls the intrinsic.
template <class Arch>
inline xsimd::batch<float, Arch> fmadd(const xsimd::batch<float, Arch>& x,
                                       const xsimd::batch<float, Arch>& y,
                                       const xsimd::batch<float, Arch>& z) noexcept {
#if defined(__AVX512F__)
    if constexpr (xsimd::batch<float, Arch>::size == 16) {
        return _mm512_fmadd_ps(x, y, z);
    } else
#endif
    {
        return xsimd::fma(x, y, z);
    }
}

/// The batch::size bytes at src widened to floats (vpmovzxbd + vcvtdq2ps on AVX-512 and AVX2;
/// xsimd 8.1 has no widening conversion).
template <class Arch>
inline xsimd::batch<float, Arch> widen_u8(const std::uint8_t* src) noexcept {
    using batch = xsimd::batch<float, Arch>;
#if defined(__AVX512F__)
    if constexpr (batch::size == 16) {
        return _mm512_cvtepi32_ps(
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
    } else
#endif
#if defined(__AVX2__)
        if constexpr (batch::size == 8) {
        return _mm256_cvtepi32_ps(
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src))));
    } else
#endif
    {
        alignas(64) float f[batch::size];
        for (std::size_t i = 0; i < batch::size; ++i) f[i] = static_cast<float>(src[i]);
        return batch::load_aligned(f);
    }
}

/// The batch::size bytes at src split into low (lo) and high (hi) nibbles as floats:
/// zero-extended to 32-bit lanes first (vpmovzxbd with its load), then masked and shifted
/// there, so one shuffle serves both nibbles.
template <class Arch>
inline void widen_nibbles(const std::uint8_t* src, xsimd::batch<float, Arch>& lo,
                          xsimd::batch<float, Arch>& hi) noexcept {
    using batch = xsimd::batch<float, Arch>;
#if defined(__AVX512F__)
    if constexpr (batch::size == 16) {
        const __m512i b =
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
        lo = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
        hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
    } else
#endif
#if defined(__AVX2__)
        if constexpr (batch::size == 8) {
        const __m256i b =
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src)));
        lo = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(15)));
        hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
    } else
#endif
    {
        alignas(64) float l[batch::size], h[batch::size];
        for (std::size_t i = 0; i < batch::size; ++i) {
            l[i] = static_cast<float>(src[i] & 15u);
            h[i] = static_cast<float>(src[i] >> 4);
        }
        lo = batch::load_aligned(l);
        hi = batch::load_aligned(h);
    }
}

/// The 16 bytes at src as 16 / batch::size batches of low and of high nibbles.
template <class Arch>
inline void widen_nibble_block(const std::uint8_t* src, xsimd::batch<float, Arch>* lo,
                               xsimd::batch<float, Arch>* hi) noexcept {
    constexpr std::size_t W = xsimd::batch<float, Arch>::size;
    static_assert(16 % W == 0, "widen_nibble_block: batch wider than 16 floats");
    for (std::size_t k = 0; k < 16 / W; ++k) widen_nibbles<Arch>(src + k * W, lo[k], hi[k]);
}

/// Tokens per block of the transposed key layouts.
inline constexpr std::size_t key_block = 16;

/// The index of lane `lane` of token t in a transposed-block layout with `lanes` lanes per
/// token: block t / key_block holds [lanes][key_block] elements, token-minor. The one key-block
/// index function: KV4 keys (a lane is a dim pair, an element a byte) and the float key blocks
/// (a lane is a dim, an element a float) both use it.
constexpr std::size_t key_block_index(std::size_t t, std::size_t lane, std::size_t lanes) noexcept {
    return ((t / key_block) * lanes + lane) * key_block + t % key_block;
}

/// Marks a head size known only at run time (extent<dynamic_head_dim>).
inline constexpr std::size_t dynamic_head_dim = 0;

/// A head size: the constant D, or (D == dynamic_head_dim) a run-time value. Converts to
/// std::size_t, so kernels written against it compile to the constant on the fast paths.
template <std::size_t D = dynamic_head_dim>
struct extent {
    static constexpr std::size_t value = D;
    constexpr operator std::size_t() const noexcept { return D; }
};
template <>
struct extent<dynamic_head_dim> {
    static constexpr std::size_t value = dynamic_head_dim;
    std::size_t n;
    constexpr operator std::size_t() const noexcept { return n; }
};

/// The KV4 storage layout (documented on qift::kv_cache) and its index functions: the cache's
/// writer and the kernels' sources below address codes only through it. Offsets are in bytes
/// of one code array (keys or values); parameter indices in floats or bytes of one parameter
/// array (scales or zeros).
template <std::size_t D = dynamic_head_dim>
struct kv4_layout {
    [[no_unique_address]] extent<D> head_dim;
    /// Tokens of storage per kv head, a multiple of key_block.
    std::size_t slots = 0;

    /// Code bytes per (token, kv head) group: two 4-bit codes a byte.
    constexpr std::size_t bytes_per_group() const noexcept { return head_dim / 2; }
    /// Key blocks that hold `tokens` tokens.
    static constexpr std::size_t key_blocks_for(std::size_t tokens) noexcept {
        return (tokens + key_block - 1) / key_block;
    }
    /// Storage tokens for a capacity: rounded up to whole key blocks.
    static constexpr std::size_t slots_for(std::size_t capacity) noexcept {
        return key_blocks_for(capacity) * key_block;
    }
    /// Code bytes of one kv head (keys or values).
    constexpr std::size_t head_bytes() const noexcept { return slots * bytes_per_group(); }
    /// Where kv head h's codes start.
    constexpr std::size_t head_offset(std::size_t h) const noexcept { return h * head_bytes(); }
    /// Within a kv head's keys: the byte of dim pair p (dims 2p, 2p + 1) of token t.
    constexpr std::size_t key_byte_index(std::size_t t, std::size_t p) const noexcept {
        return key_block_index(t, p, bytes_per_group());
    }
    /// Within a kv head's keys: the key_block bytes of dim pair p of the tokens of block b.
    constexpr std::size_t key_pair_offset(std::size_t b, std::size_t p) const noexcept {
        return key_block_index(b * key_block, p, bytes_per_group());
    }
    /// Within a kv head's keys: the bytes of the first `tokens` tokens (whole blocks).
    constexpr std::size_t key_bytes_for(std::size_t tokens) const noexcept {
        return key_blocks_for(tokens) * key_block * bytes_per_group();
    }
    /// Within a kv head's values: where token t's row of bytes_per_group() bytes starts.
    constexpr std::size_t value_row_offset(std::size_t t) const noexcept {
        return t * bytes_per_group();
    }
    /// The scale and zero of token t, kv head h.
    constexpr std::size_t param_index(std::size_t h, std::size_t t) const noexcept {
        return h * slots + t;
    }
    /// The same layout with the head size as the constant E (== head_dim).
    template <std::size_t E>
    constexpr kv4_layout<E> with_extent(extent<E>) const noexcept {
        assert(head_dim == E);
        return {{}, slots};
    }
    constexpr kv4_layout<dynamic_head_dim> with_extent(extent<dynamic_head_dim> e) const noexcept {
        return {e, slots};
    }
};

/// Rows of one kv head's keys or values as float32, stored as is (the float baseline and the
/// reference): row t is data[t·head_dim, ...), every row's affine parameters are (1, 0).
template <std::size_t HeadDim = dynamic_head_dim>
struct float_rows {
    static constexpr bool affine = false;
    const float* data;
    [[no_unique_address]] extent<HeadDim> head_dim = {};
    const float* rows(std::size_t t0, std::size_t, float*) const noexcept {
        return data + t0 * head_dim;
    }
    float scale(std::size_t) const noexcept { return 1.0f; }
    float zero(std::size_t) const noexcept { return 0.0f; }
    /// Row t's dims [c·W, c·W + W) (lo) and [head_dim/2 + c·W, ...) (hi).
    template <class Arch>
    void load_halves(std::size_t t, std::size_t c, xsimd::batch<float, Arch>& lo,
                     xsimd::batch<float, Arch>& hi) const noexcept {
        constexpr std::size_t W = xsimd::batch<float, Arch>::size;
        const std::size_t d = head_dim;
        const float* row = data + t * d;
        prefetch(row + c * W, 32 * d * sizeof(float));  // a value block ahead
        prefetch(row + d / 2 + c * W, 32 * d * sizeof(float));
        lo = xsimd::batch<float, Arch>::load_unaligned(row + c * W);
        hi = xsimd::batch<float, Arch>::load_unaligned(row + d / 2 + c * W);
    }
};

/// Rows of one kv head's values in the KV4 layout: row t is scale[t]·(c − zero[t]) with c the
/// 4-bit codes at codes + layout.value_row_offset(t) (byte j: code j low, code j + head_dim/2
/// high).
template <std::size_t HeadDim = dynamic_head_dim>
struct nibble_rows {
    static constexpr bool affine = true;
    const std::uint8_t* codes;
    const float* scales;
    const std::uint8_t* zeros;
    kv4_layout<HeadDim> layout;
    const float* rows(std::size_t t0, std::size_t n, float* scratch) const noexcept {
        const std::size_t d = layout.head_dim;
        for (std::size_t t = 0; t < n; ++t)
            unpack_nibbles(codes + layout.value_row_offset(t0 + t), d / 2, scratch + t * d);
        return scratch;
    }
    float scale(std::size_t t) const noexcept { return scales[t]; }
    float zero(std::size_t t) const noexcept { return static_cast<float>(zeros[t]); }
    /// Row t's codes of dims [c·W, c·W + W) (lo) and [head_dim/2 + c·W, ...) (hi).
    template <class Arch>
    void load_halves(std::size_t t, std::size_t c, xsimd::batch<float, Arch>& lo,
                     xsimd::batch<float, Arch>& hi) const noexcept {
        const std::uint8_t* src =
            codes + layout.value_row_offset(t) + c * xsimd::batch<float, Arch>::size;
        if (c == 0) prefetch(src, layout.value_row_offset(32));  // a value block ahead
        widen_nibbles<Arch>(src, lo, hi);
    }
};

/// Keys of one kv head in the transposed KV4 layout (kv4_layout::key_byte_index): key_block
/// tokens a block; block b holds, for each dim pair p (dims 2p and 2p + 1), 16 bytes, byte j =
/// code(2p, token 16b + j) | code(2p + 1, token 16b + j) << 4. Key t is scales[t]·(c −
/// zeros[t]). Scales and zeros are readable up to the end of the last block.
template <std::size_t HeadDim = dynamic_head_dim>
struct nibble_key_blocks {
    static constexpr bool affine = true;
    const std::uint8_t* codes;
    const float* scales;
    const std::uint8_t* zeros;
    kv4_layout<HeadDim> layout;
    /// Tokens t0 .. t0 + n - 1 as token-major code rows (for the reference and read_key).
    const float* rows(std::size_t t0, std::size_t n, float* scratch) const noexcept {
        const std::size_t d = layout.head_dim;
        for (std::size_t t = 0; t < n; ++t)
            for (std::size_t p = 0; p < d / 2; ++p) {
                const unsigned c = codes[layout.key_byte_index(t0 + t, p)];
                scratch[t * d + 2 * p] = static_cast<float>(c & 15u);
                scratch[t * d + 2 * p + 1] = static_cast<float>(c >> 4);
            }
        return scratch;
    }
    float scale(std::size_t t) const noexcept { return scales[t]; }
    float zero(std::size_t t) const noexcept { return static_cast<float>(zeros[t]); }
    /// Codes of dims 2p (lo) and 2p + 1 (hi) for the 16 tokens of block b, as float batches.
    template <class Arch>
    void load_pair(std::size_t b, std::size_t p, xsimd::batch<float, Arch>* lo,
                   xsimd::batch<float, Arch>* hi) const noexcept {
        widen_nibble_block<Arch>(codes + layout.key_pair_offset(b, p), lo, hi);
    }
};

/// Keys of one kv head as float32 in transposed blocks (the float baseline): element
/// key_block_index(t, i, head_dim) is dim i of token t, so block b holds for each dim i the 16
/// floats of tokens 16b .. 16b + 15.
template <std::size_t HeadDim = dynamic_head_dim>
struct float_key_blocks {
    static constexpr bool affine = false;
    const float* data;
    [[no_unique_address]] extent<HeadDim> head_dim = {};
    const float* rows(std::size_t t0, std::size_t n, float* scratch) const noexcept {
        const std::size_t d = head_dim;
        for (std::size_t t = 0; t < n; ++t)
            for (std::size_t i = 0; i < d; ++i)
                scratch[t * d + i] = data[key_block_index(t0 + t, i, d)];
        return scratch;
    }
    float scale(std::size_t) const noexcept { return 1.0f; }
    float zero(std::size_t) const noexcept { return 0.0f; }
    template <class Arch>
    void load_pair(std::size_t b, std::size_t p, xsimd::batch<float, Arch>* lo,
                   xsimd::batch<float, Arch>* hi) const noexcept {
        constexpr std::size_t W = xsimd::batch<float, Arch>::size;
        const std::size_t d = head_dim;
        const float* src = data + key_block_index(b * key_block, 2 * p, d);
        // Two blocks (16 KiB at head_dim 128) ahead.
        prefetch(src, 2 * d * key_block * sizeof(float));
        prefetch(src + key_block, 2 * d * key_block * sizeof(float));
        for (std::size_t k = 0; k < key_block / W; ++k) {
            lo[k] = xsimd::batch<float, Arch>::load_unaligned(src + k * W);
            hi[k] = xsimd::batch<float, Arch>::load_unaligned(src + key_block + k * W);
        }
    }
};

/// Scalar reference of attend_rows (same contract), for any even head size (the sources'
/// head_dim, run-time or constant) and as the test oracle.
template <class KeyRows, class ValueRows>
void attend_rows_reference(const KeyRows& keys, const ValueRows& values, const float* q,
                           std::size_t head_dim, std::size_t heads, std::size_t T, float* out,
                           float* scratch, float* scores) noexcept {
    const std::size_t d = head_dim;
    const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
    for (std::size_t h = 0; h < heads; ++h) {
        const float* qh = q + h * d;
        float* sh = scores + h * T;
        float m = -std::numeric_limits<float>::infinity();
        for (std::size_t t = 0; t < T; ++t) {
            const float* k = keys.rows(t, 1, scratch);
            float dot = 0.0f;
            for (std::size_t i = 0; i < d; ++i)
                dot += qh[i] * keys.scale(t) * (k[i] - keys.zero(t));
            sh[t] = dot * inv_sqrt_d;
            m = std::max(m, sh[t]);
        }
        double z = 0.0;
        for (std::size_t t = 0; t < T; ++t) z += (sh[t] = std::exp(sh[t] - m));
        float* o = out + h * d;
        for (std::size_t i = 0; i < d; ++i) o[i] = 0.0f;
        for (std::size_t t = 0; t < T; ++t) {
            const float* v = values.rows(t, 1, scratch);
            const float w = static_cast<float>(sh[t] / z);
            for (std::size_t i = 0; i < d; ++i)
                o[i] += w * values.scale(t) * (v[i] - values.zero(t));
        }
    }
}

/// Tokens per block of the value pass: the block's rows (2 KiB of codes at HeadDim 128) stay in
/// L1 while every query head of the group and every slice of dims uses them.
inline constexpr std::size_t attention_block = 32;

/// Key sources laid out in transposed blocks of key_block tokens.
template <class Keys>
concept key_blocks = requires(const Keys& k, std::size_t i, xsimd::batch<float>* b) {
    k.template load_pair<xsimd::default_arch>(i, i, b, b);
};

/// Raw dots q_h·c_t (codes or floats, before scale and zero) of NH query heads (q [NH][HeadDim])
/// with the 16 keys of block b, as 16 / W batches per head. Every dim pair costs one widening
/// and 2·NH·16/W FMAs with broadcast queries, spread over ~8 independent accumulators; no
/// horizontal reduction.
template <class Arch, std::size_t HeadDim, std::size_t NH, class Keys>
inline void block_dots(
    const Keys& keys, std::size_t b, const float* q,
    xsimd::batch<float, Arch> (&dots)[NH][key_block / xsimd::batch<float, Arch>::size]) noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t K = key_block / batch::size, P = HeadDim / 2;
    constexpr std::size_t want = NH * K >= 8 ? 1 : 8 / (NH * K);
    constexpr std::size_t S = want >= 4 && P % 2 == 0 ? 4 : want >= 2 ? 2 : 1;
    constexpr std::size_t PS = S == 4 ? 2 : 1;  // pairs per step: dims 2u, 2u + 1 -> sets
    batch acc[NH][S][K];
    for (auto& a : acc)
        for (auto& s : a)
            for (auto& x : s) x = batch(0.0f);
    for (std::size_t p = 0; p < P; p += PS)
        for (std::size_t u = 0; u < PS; ++u) {
            batch lo[K], hi[K];
            keys.template load_pair<Arch>(b, p + u, lo, hi);
            for (std::size_t h = 0; h < NH; ++h) {
                const batch qa(q[h * HeadDim + 2 * (p + u)]), qb(q[h * HeadDim + 2 * (p + u) + 1]);
                for (std::size_t k = 0; k < K; ++k) {
                    acc[h][(2 * u) % S][k] = fmadd<Arch>(qa, lo[k], acc[h][(2 * u) % S][k]);
                    acc[h][(2 * u + 1) % S][k] = fmadd<Arch>(qb, hi[k], acc[h][(2 * u + 1) % S][k]);
                }
            }
        }
    for (std::size_t h = 0; h < NH; ++h)
        for (std::size_t k = 0; k < K; ++k) {
            batch d = acc[h][0][k];
            for (std::size_t s = 1; s < S; ++s) d += acc[h][s][k];
            dots[h][k] = d;
        }
}

/// Scores of NH heads (starting at head h0) for block b: scale·(dot − zero·Σq)/√HeadDim, stored
/// for the n valid tokens and folded into the running maxima mx [heads][16].
template <class Arch, std::size_t HeadDim, std::size_t NH, class Keys>
inline void block_scores(const Keys& keys, std::size_t b, std::size_t n, const float* q,
                         std::size_t h0, const float* qsum, std::size_t T, float* scores,
                         float* mx) noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t W = batch::size, K = key_block / W;
    const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(HeadDim));
    const std::size_t t0 = b * key_block;
    batch dots[NH][K];
    block_dots<Arch, HeadDim, NH>(keys, b, q + h0 * HeadDim, dots);
    batch sb[K], zb[K];
    for (std::size_t k = 0; k < K; ++k) {
        if constexpr (Keys::affine) {
            sb[k] = batch::load_unaligned(keys.scales + t0 + k * W) * batch(inv_sqrt_d);
            zb[k] = widen_u8<Arch>(keys.zeros + t0 + k * W);
        } else {
            sb[k] = batch(inv_sqrt_d);
        }
    }
    for (std::size_t h = 0; h < NH; ++h) {
        alignas(64) float s[key_block];
        for (std::size_t k = 0; k < K; ++k) {
            const batch d =
                Keys::affine ? fmadd<Arch>(zb[k], batch(-qsum[h0 + h]), dots[h][k]) : dots[h][k];
            (sb[k] * d).store_aligned(s + k * W);
        }
        float* m = mx + (h0 + h) * key_block;
        float* dst = scores + (h0 + h) * T + t0;
        if (n == key_block) {
            for (std::size_t k = 0; k < K; ++k) {
                const batch v = batch::load_aligned(s + k * W);
                v.store_unaligned(dst + k * W);
                xsimd::max(batch::load_unaligned(m + k * W), v).store_unaligned(m + k * W);
            }
        } else {
            for (std::size_t j = 0; j < n; ++j) dst[j] = s[j], m[j] = std::max(m[j], s[j]);
        }
    }
}

/// Scores of all heads for token-major key rows (one dot per token and head, reduced on its own:
/// xsimd 8.1's AVX-512 haddp returns its sums in permuted lane order).
template <class Arch, std::size_t HeadDim, class KeyRows>
void row_scores(const KeyRows& keys, const float* q, std::size_t heads, const float* qsum,
                std::size_t T, float* scores, float* scratch) noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t W = batch::size, V = HeadDim / W;
    const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(HeadDim));
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
                    a0 = fmadd<Arch>(batch::load_unaligned(qh + v * W),
                                     batch::load_unaligned(r + v * W), a0);
                    a1 = fmadd<Arch>(batch::load_unaligned(qh + (v + 1) * W),
                                     batch::load_unaligned(r + (v + 1) * W), a1);
                }
                if constexpr (V % 2)
                    a0 = fmadd<Arch>(batch::load_unaligned(qh + (V - 1) * W),
                                     batch::load_unaligned(r + (V - 1) * W), a0);
                const float dot = reduce_add(a0 + a1);
                const std::size_t t = t0 + j;
                sh[t] = KeyRows::affine
                            ? keys.scale(t) * (dot - keys.zero(t) * qsum[h]) * inv_sqrt_d
                            : dot * inv_sqrt_d;
            }
        }
    }
}

/// out[h0 + h] += Σ_{j < n} w[h0 + h][t0 + j] · row(t0 + j) for h < NH (w is [heads][T]), on
/// 2·CS vectors of dims at a time per head: dims [cW, cW + W) and HeadDim/2 + the same, the pair
/// one row's W code bytes unpack to.
template <class Arch, std::size_t HeadDim, std::size_t NH, class ValueRows>
inline void value_block(const ValueRows& values, std::size_t t0, std::size_t n, const float* w,
                        std::size_t T, std::size_t h0, float* out) noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t W = batch::size, C = HeadDim / 2 / W;
    constexpr std::size_t regs = W >= 16 ? 32 : 16;
    constexpr std::size_t CS = C % 2 == 0 && NH * 4 <= regs / 2 ? 2 : 1;
    for (std::size_t c0 = 0; c0 < C; c0 += CS) {
        batch acc[NH][CS][2];
        for (auto& a : acc)
            for (auto& b : a) b[0] = b[1] = batch(0.0f);
        for (std::size_t j = 0; j < n; ++j) {
            batch lo[CS], hi[CS];
            for (std::size_t c = 0; c < CS; ++c)
                values.template load_halves<Arch>(t0 + j, c0 + c, lo[c], hi[c]);
            for (std::size_t h = 0; h < NH; ++h) {
                const batch wb(w[(h0 + h) * T + t0 + j]);
                for (std::size_t c = 0; c < CS; ++c) {
                    acc[h][c][0] = fmadd<Arch>(wb, lo[c], acc[h][c][0]);
                    acc[h][c][1] = fmadd<Arch>(wb, hi[c], acc[h][c][1]);
                }
            }
        }
        for (std::size_t h = 0; h < NH; ++h)
            for (std::size_t c = 0; c < CS; ++c) {
                float* o = out + (h0 + h) * HeadDim + (c0 + c) * W;
                (batch::load_unaligned(o) + acc[h][c][0]).store_unaligned(o);
                o += HeadDim / 2;
                (batch::load_unaligned(o) + acc[h][c][1]).store_unaligned(o);
            }
    }
}

/// Decode attention of `heads` query heads q [heads][HeadDim] over the T keys and values of one
/// kv head: out[h] = Σ_t softmax_t(q_h·k_t / √HeadDim) · v_t, k_t and v_t dequantized. Keys
/// either in transposed blocks (key_blocks: 16 tokens' scores per vector, no horizontal sums,
/// running maxima on the fly) or token-major rows; softmax vectorized with the value scales and
/// zeros folded in; values token-major (load_halves), widened straight into registers, up to 4
/// heads × 4 vectors of accumulators per pass over a block of attention_block tokens.
/// Preconditions: heads <= 64, HeadDim a multiple of 2·W and the sources' head_dim. `scratch` holds
/// attention_block·HeadDim floats (used by token-major keys only), `scores` heads·T. Parameters
/// enter as s·(q·c − z·Σq) for keys and (Σ e·s·c − Σ e·s·z) / Σ e for values.
template <class Arch, std::size_t HeadDim, class KeyRows, class ValueRows>
void attend_rows(const KeyRows& keys, const ValueRows& values, const float* q, std::size_t heads,
                 std::size_t T, float* out, float* scratch, float* scores) noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t W = batch::size;
    static_assert(HeadDim % (2 * W) == 0,
                  "attend_rows needs HeadDim to be a multiple of twice the width");
    float qsum[64], m[64];
    for (std::size_t h = 0; h < heads; ++h) {
        float s = 0.0f;
        for (std::size_t i = 0; i < HeadDim; ++i) s += q[h * HeadDim + i];
        qsum[h] = s;
    }
    if constexpr (key_blocks<KeyRows>) {
        alignas(64) float mx[64 * key_block];
        std::fill_n(mx, heads * key_block, -std::numeric_limits<float>::infinity());
        for (std::size_t b = 0; b * key_block < T; ++b) {
            const std::size_t n = std::min(key_block, T - b * key_block);
            std::size_t h0 = 0;
            for (; h0 + 4 <= heads; h0 += 4)
                block_scores<Arch, HeadDim, 4>(keys, b, n, q, h0, qsum, T, scores, mx);
            switch (heads - h0) {
                case 3:
                    block_scores<Arch, HeadDim, 3>(keys, b, n, q, h0, qsum, T, scores, mx);
                    break;
                case 2:
                    block_scores<Arch, HeadDim, 2>(keys, b, n, q, h0, qsum, T, scores, mx);
                    break;
                case 1:
                    block_scores<Arch, HeadDim, 1>(keys, b, n, q, h0, qsum, T, scores, mx);
                    break;
                default:
                    break;
            }
        }
        for (std::size_t h = 0; h < heads; ++h)
            m[h] = *std::max_element(mx + h * key_block, mx + (h + 1) * key_block);
    } else {
        row_scores<Arch, HeadDim>(keys, q, heads, qsum, T, scores, scratch);
        for (std::size_t h = 0; h < heads; ++h) {
            const float* sh = scores + h * T;
            batch mb(sh[0]);
            std::size_t t = 0;
            for (; t + W <= T; t += W) mb = xsimd::max(mb, batch::load_unaligned(sh + t));
            alignas(64) float lanes[W];
            mb.store_aligned(lanes);
            float mh = *std::max_element(lanes, lanes + W);
            for (; t < T; ++t) mh = std::max(mh, sh[t]);
            m[h] = mh;
        }
    }
    // Softmax numerators e_t, times the value scales; 1/Z and the zero correction are applied to
    // the output at the end.
    float inv_z[64], corr[64];
    for (std::size_t h = 0; h < heads; ++h) {
        float* sh = scores + h * T;
        const batch mb(m[h]);
        batch zb(0.0f), cb(0.0f);
        std::size_t t = 0;
        for (; t + W <= T; t += W) {
            const batch e = xsimd::exp(batch::load_unaligned(sh + t) - mb);
            zb += e;
            if constexpr (ValueRows::affine) {
                const batch w = e * batch::load_unaligned(values.scales + t);
                cb = fmadd<Arch>(w, widen_u8<Arch>(values.zeros + t), cb);
                w.store_unaligned(sh + t);
            } else {
                e.store_unaligned(sh + t);
            }
        }
        double z = static_cast<double>(reduce_add(zb));
        float c = reduce_add(cb);
        for (; t < T; ++t) {
            const float e = std::exp(sh[t] - m[h]);
            z += e;
            sh[t] = e * values.scale(t);
            c += sh[t] * values.zero(t);
        }
        inv_z[h] = static_cast<float>(1.0 / z);
        corr[h] = c;
    }
    // Values: NH <= 4 heads at a time, each value vector loaded (or widened from codes) once
    // per block and head chunk straight into registers.
    for (std::size_t i = 0; i < heads * HeadDim; ++i) out[i] = 0.0f;
    for (std::size_t t0 = 0; t0 < T; t0 += attention_block) {
        const std::size_t n = std::min(attention_block, T - t0);
        std::size_t h0 = 0;
        for (; h0 + 4 <= heads; h0 += 4)
            value_block<Arch, HeadDim, 4>(values, t0, n, scores, T, h0, out);
        switch (heads - h0) {
            case 3:
                value_block<Arch, HeadDim, 3>(values, t0, n, scores, T, h0, out);
                break;
            case 2:
                value_block<Arch, HeadDim, 2>(values, t0, n, scores, T, h0, out);
                break;
            case 1:
                value_block<Arch, HeadDim, 1>(values, t0, n, scores, T, h0, out);
                break;
            default:
                break;
        }
    }
    for (std::size_t h = 0; h < heads; ++h)
        for (std::size_t i = 0; i < HeadDim; ++i)
            out[h * HeadDim + i] = (out[h * HeadDim + i] - corr[h]) * inv_z[h];
}

}  // namespace qift::detail
