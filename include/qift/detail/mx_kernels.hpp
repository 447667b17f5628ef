// SPDX-License-Identifier: MIT
// Kernels behind mx.hpp: the MXFP4 quantizer (bit-exact with the scalar reference: a portable
// bit-twiddling path and an AVX-512 one), and the MXFP4 × MXFP4 (integer) and MXFP4 × float
// dot-product tiles (AVX-512 with or without VNNI, AVX2, scalar), each with its scalar form.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "../core.hpp"
#include "../levels.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define QIFT_MX_AVX512 1
#else
#define QIFT_MX_AVX512 0
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define QIFT_MX_AVX2 1
#else
#define QIFT_MX_AVX2 0
#endif

namespace qift::inline QIFT_ISA::detail {

// ---------------------------------------------------------------------------------------
// The quantizer
//
// The reference (quantize_mxfp4_block with mx_shared_exponent and e2m1_code in mx.hpp) takes
// floor(log2 ·) of float32 values through std::log2, and its rounding adds 0.5 in float32. Both
// are reproduced here on the bits, with no libm call per value:
//  * shared exponent: floor(log2f(x)) is the binary exponent E of x, or E + 1 for the top
//    round_up[E + 127] floats of the binade (log2f rounds a value within half an ulp of E + 1
//    up to it: none for E + 1 in {-1, 0, 1, 2}, one float near 2^3, 44 near 2^128). The table is
//    measured once from std::log2 itself (mx_log2_round_up), so it matches whatever libm the
//    reference runs on; with it, the biased exponent of floor(log2 amax) is
//    (bits(amax) + round_up[bits >> 23]) >> 23, and the E8M0 code max(that − 2, 0) (subnormal
//    and zero blocks clamp to 0 = 2^−127, as in the reference).
//  * element codes: with m = |x|·2^−e (< 8, exact: a power-of-two scaling, identical to the
//    reference's ldexp), the reference's E2M1 magnitude is a function of bits(m) >> 21 (exponent
//    and two mantissa bits) for m >= 0.25, looked up in a 32-entry table, except at single
//    points the tests pin down: nearest rounds 0.25 − 2^−26 up to 0.5 (float32 2m + 0.5 is a
//    tie that rounds to even 1.0), even rounds 0.25, 1.25, 2.5 and 5 down, and floor follows
//    log2f's round-up of p = floor(log2 m) at 2^k, k = 1, 2, 3 (7.9999995 floors to 4). An
//    exhaustive comparison over every float m < 8 in all three modes found no other difference.

/// Rounding modes of the quantizer kernels (the values of qift::mx_rounding).
inline constexpr int mx_nearest = 0, mx_even = 1, mx_floor = 2;

/// round_up[be]: how many of the largest floats of the binade with biased exponent be have
/// floor(std::log2(x)) = be − 126 (one above their exponent). Measured on first use (about 7000
/// std::log2 calls); thread-safe.
inline const std::array<std::uint32_t, 256>& mx_log2_round_up() noexcept {
    static const std::array<std::uint32_t, 256> table = [] {
        std::array<std::uint32_t, 256> t{};
        for (std::uint32_t be = 1; be < 255; ++be) {
            const std::uint32_t top = (be + 1) << 23;
            std::uint32_t n = 0;
            while (n < (1u << 22) &&
                   static_cast<int>(std::floor(std::log2(std::bit_cast<float>(top - 1 - n)))) ==
                       static_cast<int>(be) - 126)
                ++n;
            t[be] = n;
        }
        return t;
    }();
    return table;
}

/// E8M0 code of a block whose max |x| has the bits amax_bits (sign cleared; >= 0x7F800000 for a
/// block holding a NaN or an infinity, which gives the NaN code 0xFF).
inline std::uint8_t mx_scale_code(std::uint32_t amax_bits,
                                  const std::array<std::uint32_t, 256>& up) noexcept {
    if (amax_bits >= 0x7F800000u) return 0xFF;
    const std::uint32_t ep = (amax_bits + up[amax_bits >> 23]) >> 23;
    return static_cast<std::uint8_t>(ep < 2 ? 0 : ep - 2);
}

/// E2M1 magnitude index by (bits(m) >> 21) mod 32, for m in [0.25 − 2^−26, 8) (nearest, even) or
/// [0.5, 8) (floor).
inline constexpr std::array<std::uint32_t, 32> mx_lut_nearest = [] {
    std::array<std::uint32_t, 32> t{};
    for (std::uint32_t k = 499; k <= 519; ++k)
        t[k & 31] = k <= 505   ? 1
                    : k <= 508 ? 2
                    : k <= 510 ? 3
                    : k <= 512 ? 4
                    : k <= 514 ? 5
                    : k <= 516 ? 6
                               : 7;
    return t;
}();
inline constexpr std::array<std::uint32_t, 32> mx_lut_floor = [] {
    std::array<std::uint32_t, 32> t{};
    for (std::uint32_t k = 504; k <= 519; ++k) t[k & 31] = k <= 507 ? 1 : (k - 508) / 2 + 2;
    return t;
}();
// Smallest bits(m) with a nonzero code: the nearest/even artifact 0.25 − 2^−26, floor's 0.5.
inline constexpr std::uint32_t mx_small_nearest = 0x3E7FFFFFu, mx_small_floor = 0x3F000000u;

/// The E2M1 code (sign << 3 | magnitude index) of the scaled element with bits a_bits, exactly
/// as detail::e2m1_code (mx.hpp) gives it for |a| < 8.
template <int Mode>
inline std::uint8_t mx_code_bits(std::uint32_t a_bits,
                                 const std::array<std::uint32_t, 256>& up) noexcept {
    const std::uint32_t mb = a_bits & 0x7FFFFFFFu;
    std::uint32_t idx = 0;
    if constexpr (Mode == mx_floor) {
        if (mb >= mx_small_floor) idx = mx_lut_floor[(mb >> 21) & 31];
        for (std::uint32_t k = 1; k <= 3; ++k) {
            const std::uint32_t hi = (127 + k) << 23;
            if (mb < hi && mb >= hi - up[126 + k]) idx = 2 * k;
        }
    } else {
        if (mb >= mx_small_nearest) idx = mx_lut_nearest[(mb >> 21) & 31];
        if constexpr (Mode == mx_even) {
            if (mb == 0x3E800000u) idx = 0;
            if ((mb & 0x7FFFFFu) == 0x200000u && mb >= 0x3F800000u) --idx;
        }
    }
    return static_cast<std::uint8_t>(((a_bits >> 28) & 8u) | idx);
}

/// Portable quantizer of one row of `cols` floats into blocks·16 code bytes (ggml nibble order)
/// and `blocks` E8M0 codes: the reference's algorithm on the bits, O(cols), no libm call.
template <int Mode>
inline void mx_quantize_row_portable(const float* x, std::size_t cols, std::uint8_t* codes,
                                     std::uint8_t* scales) noexcept {
    const auto& up = mx_log2_round_up();
    const std::size_t blocks = (cols + 31) / 32;
    for (std::size_t b = 0; b < blocks; ++b) {
        const float* xb = x + b * 32;
        const std::size_t n = std::min<std::size_t>(32, cols - b * 32);
        std::uint32_t amax = 0;
        for (std::size_t j = 0; j < n; ++j)
            amax = std::max(amax, std::bit_cast<std::uint32_t>(xb[j]) & 0x7FFFFFFFu);
        const std::uint8_t sc = mx_scale_code(amax, up);
        scales[b] = sc;
        std::uint8_t* cb = codes + b * 16;
        std::fill_n(cb, 16, std::uint8_t{0});
        if (sc == 0xFF) continue;
        // 2^−e as a float: e = sc − 127 in [−127, 126], so the biased exponent is in [1, 254].
        const float f = std::bit_cast<float>(static_cast<std::uint32_t>(254 - sc) << 23);
        for (std::size_t j = 0; j < n; ++j) {
            const std::uint8_t c = mx_code_bits<Mode>(std::bit_cast<std::uint32_t>(xb[j] * f), up);
            cb[j % 16] |= static_cast<std::uint8_t>(j < 16 ? c : c << 4);
        }
    }
}

#if QIFT_MX_AVX512
/// Lane b of the result = max over the 16 lanes of v[b] (unsigned): a transposing reduction,
/// 46 shuffle/max instructions for 16 vectors instead of 16 horizontal reductions.
inline __m512i mx_max_tree16(const __m512i (&v)[16]) noexcept {
    __m512i t[8], u[4], w[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i)  // lanes 0-1: v[2i], 2-3: v[2i+1]
        t[i] = _mm512_max_epu32(_mm512_shuffle_i32x4(v[2 * i], v[2 * i + 1], 0x44),
                                _mm512_shuffle_i32x4(v[2 * i], v[2 * i + 1], 0xEE));
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i)  // 128-bit lane j: v[4i + j]
        u[i] = _mm512_max_epu32(_mm512_shuffle_i32x4(t[2 * i], t[2 * i + 1], 0x88),
                                _mm512_shuffle_i32x4(t[2 * i], t[2 * i + 1], 0xDD));
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i)  // lane j: dwords 0-1 v[8i + j], 2-3 v[8i + 4 + j]
        w[i] = _mm512_max_epu32(_mm512_unpacklo_epi64(u[2 * i], u[2 * i + 1]),
                                _mm512_unpackhi_epi64(u[2 * i], u[2 * i + 1]));
    const __m512 w0 = _mm512_castsi512_ps(w[0]), w1 = _mm512_castsi512_ps(w[1]);
    // lane j, dword d: v[4d + j]
    const __m512i r = _mm512_max_epu32(_mm512_castps_si512(_mm512_shuffle_ps(w0, w1, 0x88)),
                                       _mm512_castps_si512(_mm512_shuffle_ps(w0, w1, 0xDD)));
    const __m512i natural = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_epi32(natural, r);
}

/// Magnitude codes of the 32 scaled values of one block (low half: bits 0-2, high half: bits
/// 4-6 of each dword; signs are added by the caller): masks the values below the first
/// rounding point, looks bits >> 21 up with vpermt2d (l0:l1 the table, h0:h1 the table << 4),
/// then the mode's corrections (see the comment at the top of this section).
template <int Mode>
__attribute__((always_inline)) inline __m512i codes16(
    __m512i alo, __m512i ahi, __m512i l0, __m512i l1, __m512i h0, __m512i h1,
    const std::array<std::uint32_t, 256>& up) noexcept {
    const __m512i absmask = _mm512_set1_epi32(0x7FFFFFFF);
    const __m512i small =
        _mm512_set1_epi32(static_cast<int>(Mode == mx_floor ? mx_small_floor : mx_small_nearest));
    const __m512i mlo = _mm512_and_si512(alo, absmask), mhi = _mm512_and_si512(ahi, absmask);
    __mmask16 nzlo = _mm512_cmpge_epu32_mask(mlo, small);
    __mmask16 nzhi = _mm512_cmpge_epu32_mask(mhi, small);
    if constexpr (Mode == mx_even) {
        const __m512i quarter = _mm512_set1_epi32(0x3E800000);
        nzlo = _mm512_mask_cmpneq_epu32_mask(nzlo, mlo, quarter);
        nzhi = _mm512_mask_cmpneq_epu32_mask(nzhi, mhi, quarter);
    }
    __m512i ilo = _mm512_maskz_permutex2var_epi32(nzlo, l0, _mm512_srli_epi32(mlo, 21), l1);
    __m512i ihi = _mm512_maskz_permutex2var_epi32(nzhi, h0, _mm512_srli_epi32(mhi, 21), h1);
    if constexpr (Mode == mx_even) {
        // Exact ties 1.25, 2.5, 5 = 0x3FA00000 + {0, 1, 2}·2^23 round down to even.
        const __m512i base = _mm512_set1_epi32(0x3FA00000);
        const __m512i other = _mm512_set1_epi32(static_cast<int>(0xFE7FFFFFu));
        const __mmask16 tlo = _mm512_testn_epi32_mask(_mm512_sub_epi32(mlo, base), other);
        const __mmask16 thi = _mm512_testn_epi32_mask(_mm512_sub_epi32(mhi, base), other);
        ilo = _mm512_mask_sub_epi32(ilo, tlo, ilo, _mm512_set1_epi32(1));
        ihi = _mm512_mask_sub_epi32(ihi, thi, ihi, _mm512_set1_epi32(16));
    } else if constexpr (Mode == mx_floor) {
        // m in [2^k − round_up ulps, 2^k): log2f rounds p up to k, the code is 2k (only k = 3
        // with glibc; empty ranges are skipped).
#pragma GCC unroll 3
        for (std::uint32_t k = 1; k <= 3; ++k) {
            if (up[126 + k] == 0) continue;
            const std::uint32_t hi = (127 + k) << 23, lo = hi - up[126 + k];
            const __m512i base = _mm512_set1_epi32(static_cast<int>(lo));
            const __m512i width = _mm512_set1_epi32(static_cast<int>(hi - lo));
            const __mmask16 rlo = _mm512_cmplt_epu32_mask(_mm512_sub_epi32(mlo, base), width);
            const __mmask16 rhi = _mm512_cmplt_epu32_mask(_mm512_sub_epi32(mhi, base), width);
            ilo = _mm512_mask_mov_epi32(ilo, rlo, _mm512_set1_epi32(int(2 * k)));
            ihi = _mm512_mask_mov_epi32(ihi, rhi, _mm512_set1_epi32(int(32 * k)));
        }
    }
    return _mm512_or_si512(ilo, ihi);
}

/// AVX-512 quantizer of one row (same contract as mx_quantize_row_portable). Per 16 blocks:
/// pass 1 takes the max |x| bits of each block (and + unsigned max) and reduces the 16 blocks
/// together (mx_max_tree16), the round-up table is gathered and the 16 E8M0 codes and 2^−e factors
/// computed at once; pass 2 scales each half block, masks the small values, looks the magnitude
/// up with vpermt2d on bits >> 21 (codes16), and packs four blocks at once with saturating packs
/// that also carry the signs. About 20 vector instructions per block of 32 values.
template <int Mode>
inline void mx_quantize_row_avx512(const float* x, std::size_t cols, std::uint8_t* codes,
                                   std::uint8_t* scales) noexcept {
    const auto& up = mx_log2_round_up();
    const std::size_t blocks = (cols + 31) / 32;
    const auto& lut = Mode == mx_floor ? mx_lut_floor : mx_lut_nearest;
    alignas(64) std::uint32_t lut_hi[32];
    for (int i = 0; i < 32; ++i) lut_hi[i] = lut[std::size_t(i)] << 4;
    const __m512i l0 = _mm512_loadu_si512(lut.data()), l1 = _mm512_loadu_si512(lut.data() + 16);
    const __m512i h0 = _mm512_load_si512(lut_hi), h1 = _mm512_load_si512(lut_hi + 16);
    const __m512i absmask = _mm512_set1_epi32(0x7FFFFFFF);
    alignas(64) float factor[16];
    // 16 blocks from b0 (nb of them when not Full; the row's last values are masked).
    const auto group = [&](std::size_t b0, std::size_t nb_, auto full) {
        constexpr bool Full = decltype(full)::value;
        const std::size_t nb = Full ? 16 : nb_;
        // Masks of the valid values of block j (all ones but in the row's last block).
        const auto masks = [&](std::size_t j, __mmask16& lo, __mmask16& hi) {
            if constexpr (Full) {
                lo = hi = 0xFFFF;
                return;
            }
            const std::size_t n = std::min<std::size_t>(32, cols - (b0 + j) * 32);
            lo = n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
            hi = n >= 32  ? __mmask16(0xFFFF)
                 : n > 16 ? __mmask16((1u << (n - 16)) - 1)
                          : __mmask16(0);
        };
        __m512i m[16];
#pragma GCC unroll 16
        for (std::size_t j = 0; j < 16; ++j) {
            if (j >= nb) {
                m[j] = _mm512_setzero_si512();
                continue;
            }
            __mmask16 klo, khi;
            masks(j, klo, khi);
            const float* p = x + (b0 + j) * 32;
            const __m512 lo = _mm512_maskz_loadu_ps(klo, p),
                         hi = _mm512_maskz_loadu_ps(khi, p + 16);
            // |x| bits: unsigned order is magnitude order, and NaN > infinity > finite.
            // (vrangeps would save two instructions but does not return a NaN operand.)
            m[j] = _mm512_max_epu32(_mm512_and_si512(_mm512_castps_si512(lo), absmask),
                                    _mm512_and_si512(_mm512_castps_si512(hi), absmask));
        }
        const __m512i amax = mx_max_tree16(m);
        const __m512i n = _mm512_i32gather_epi32(_mm512_srli_epi32(amax, 23), up.data(), 4);
        const __m512i ep = _mm512_srli_epi32(_mm512_add_epi32(amax, n), 23);
        const __mmask16 nan = _mm512_cmpge_epu32_mask(amax, _mm512_set1_epi32(0x7F800000));
        const __m512i sc = _mm512_mask_mov_epi32(
            _mm512_max_epi32(_mm512_sub_epi32(ep, _mm512_set1_epi32(2)), _mm512_setzero_si512()),
            nan, _mm512_set1_epi32(0xFF));
        _mm512_mask_cvtepi32_storeu_epi8(scales + b0, __mmask16((1u << nb) - 1), sc);
        _mm512_store_si512(
            factor, _mm512_maskz_slli_epi32(__mmask16(~nan),
                                            _mm512_sub_epi32(_mm512_set1_epi32(254), sc), 23));
        // Pass 2, four blocks at a time (128 values, one 64-byte store).
        const __m512i transpose =
            _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        for (std::size_t j0 = 0; j0 < nb; j0 += 4) {
            __m512i code[4], slo[4], shi[4];
#pragma GCC unroll 4
            for (std::size_t i = 0; i < 4; ++i) {
                const std::size_t j = j0 + i;
                if (j >= nb) {
                    code[i] = slo[i] = shi[i] = _mm512_setzero_si512();
                    continue;
                }
                __mmask16 klo, khi;
                masks(j, klo, khi);
                const float* p = x + (b0 + j) * 32;
                const __m512 f = _mm512_set1_ps(factor[j]);
                const __m512i alo =
                    _mm512_castps_si512(_mm512_mul_ps(_mm512_maskz_loadu_ps(klo, p), f));
                const __m512i ahi =
                    _mm512_castps_si512(_mm512_mul_ps(_mm512_maskz_loadu_ps(khi, p + 16), f));
                slo[i] = alo;
                shi[i] = ahi;
                code[i] = codes16<Mode>(alo, ahi, l0, l1, h0, h1, up);
            }
            // Saturating packs keep the order of the four blocks' lanes in step: the codes
            // (< 256) unsigned, the scaled floats signed, so bit 7 of each byte is the sign.
            const __m512i c = _mm512_packus_epi16(_mm512_packus_epi32(code[0], code[1]),
                                                  _mm512_packus_epi32(code[2], code[3]));
            const __m512i sl = _mm512_packs_epi16(_mm512_packs_epi32(slo[0], slo[1]),
                                                  _mm512_packs_epi32(slo[2], slo[3]));
            const __m512i sh = _mm512_packs_epi16(_mm512_packs_epi32(shi[0], shi[1]),
                                                  _mm512_packs_epi32(shi[2], shi[3]));
            // Element j's sign to bit 3 (its byte's bit 7 shifted by 4), element j + 16's to 7.
            __m512i r = _mm512_ternarylogic_epi32(c, _mm512_srli_epi16(sl, 4),
                                                  _mm512_set1_epi8(0x08), 0xF8);
            r = _mm512_ternarylogic_epi32(r, sh, _mm512_set1_epi8(char(0x80)), 0xF8);
            // Lane q of the packs holds dwords q of blocks 0-3: back to block-major order.
            r = _mm512_permutexvar_epi32(transpose, r);
            std::uint8_t* dst = codes + (b0 + j0) * 16;
            if (j0 + 4 <= nb)
                _mm512_storeu_si512(dst, r);
            else
                _mm512_mask_storeu_epi8(dst, (std::uint64_t{1} << ((nb - j0) * 16)) - 1, r);
        }
        for (std::uint32_t bits = nan; bits != 0; bits &= bits - 1)
            std::fill_n(codes + (b0 + std::size_t(std::countr_zero(bits))) * 16, 16,
                        std::uint8_t{0});
    };
    std::size_t b0 = 0;
    for (; (b0 + 16) * 32 <= cols; b0 += 16) group(b0, 16, std::true_type{});
    if (b0 < blocks) group(b0, blocks - b0, std::false_type{});
}
#endif

/// Quantizes rows [0, rows) of x (stride x_stride) into the MXFP4 codes / scales arrays
/// (row strides blocks·16 and blocks): the AVX-512 path where compiled, else the portable one.
template <int Mode>
inline void mx_quantize_rows(const float* x, std::size_t x_stride, std::size_t rows,
                             std::size_t cols, std::uint8_t* codes, std::uint8_t* scales) noexcept {
    const std::size_t blocks = (cols + 31) / 32;
    for (std::size_t r = 0; r < rows; ++r) {
#if QIFT_MX_AVX512
        mx_quantize_row_avx512<Mode>(x + r * x_stride, cols, codes + r * blocks * 16,
                                     scales + r * blocks);
#else
        mx_quantize_row_portable<Mode>(x + r * x_stride, cols, codes + r * blocks * 16,
                                       scales + r * blocks);
#endif
    }
}

// ---------------------------------------------------------------------------------------
// MXFP4 × MXFP4: integer block dots
//
// Per block b of row r and token t, with doubled E2M1 values w_j, a_j in {0, ±1, ±2, ±3, ±4, ±6,
// ±8, ±12} (e2m1_doubled):  term = (Σ_j w_j·a_j) · 2^(e8m0_w + e8m0_a − 256), the integer dot
// exact and the scaling exact (vscalefps, or ldexp), so every term equals gemv_reference's; the
// terms are added in float in a different order (16 or 8 blocks per vector, then a horizontal
// sum), which is the only difference from the reference.
//
// The x86 kernels multiply unsigned bytes u_j = w_j + 12 in [0, 24] (the weight nibble through a
// 16-entry byte table, vpermb / vpshufb) by signed activation bytes a_j (vpdpbusd, or vpmaddubsw
// + vpmaddwd), and start each block's accumulator at −12·Σ_j a_j (prepared per token), since
// Σ w·a = Σ u·a − 12·Σ a exactly.
//
// Overflow proof. |a_j| <= 12, 0 <= u_j <= 24, 32 values per block, and nothing is carried from
// block to block in integers, so no row-length limit is needed:
//  * a 32-bit lane of a block holds 4 low-nibble and 4 high-nibble products, |.| <= 8·24·12 =
//    2304, plus (in the block's first lane) the correction |12·Σa| <= 12·32·12 = 4608: <= 6912;
//  * vpmaddubsw lanes are u1·a1 + u2·a2, |.| <= 2·288 = 576 (never saturates), low + high
//    halves <= 1152 in int16;
//  * the reduction packs lanes to int16 with signed saturation (vpackssdw) twice: the first
//    pack sees |.| <= 6912, the pair sums after vpmaddwd |.| <= 13824, both < 2^15, so nothing
//    saturates; the block sum |Σ w·a| <= 32·144 = 4608 is exact in int32 and in float.

/// The doubled E2M1 value of each code (levels::e2m1 times 2) and the unsigned weight byte
/// u = value + 12.
inline constexpr std::array<std::int8_t, 16> mx_act_values = [] {
    std::array<std::int8_t, 16> t{};
    for (std::size_t c = 0; c < 16; ++c)
        t[c] = static_cast<std::int8_t>(levels::e2m1::levels[c] * 2.0f);
    return t;
}();
static_assert(mx_act_values[7] == 12 && mx_act_values[15] == -12 && mx_act_values[9] == -1);
inline constexpr std::array<std::uint8_t, 16> mx_weight_u = [] {
    std::array<std::uint8_t, 16> t{};
    for (std::size_t c = 0; c < 16; ++c) t[c] = static_cast<std::uint8_t>(mx_act_values[c] + 12);
    return t;
}();
/// mx_weight_u repeated to 64 bytes (vpermb reads 6 index bits, vpshufb 4 per 128-bit lane).
alignas(64) inline constexpr std::array<std::uint8_t, 64> mx_weight_u64 = [] {
    std::array<std::uint8_t, 64> t{};
    for (std::size_t i = 0; i < 64; ++i) t[i] = mx_weight_u[i & 15];
    return t;
}();

/// Block index held by lane i of a reduced vector of `group` block sums: the packing reduction
/// leaves block (group/4)·(i mod 4) + i/4 in lane i.
constexpr std::size_t mx_lane_block(std::size_t i, std::size_t group) noexcept {
    return group < 8 ? i : group / 4 * (i % 4) + i / 4;
}

/// MXFP4 activations prepared for the integer kernels, per token (pb = blocks rounded up to 16,
/// padding zero):
///   values  [tokens][pb·32] int8: per 4 blocks (one 64-byte weight load), the doubled values of
///           elements 0-15 of the 4 blocks (64 bytes, block-major), then of elements 16-31: the
///           order of the low and high nibbles of the weight bytes;
///   corr    [tokens][pb·4] int32: −12·Σ_j a_j of block b at 4b, 0 at 4b+1..4b+3 (the initial
///           accumulators);
///   expo    [tokens][pb] int32: e8m0_a − 256 of the block in lane i of each group of `group`
///           blocks (mx_lane_block order; the kernel's group: 16 on AVX-512, 8 on AVX2);
///   nan     [tokens]: 1 when the token has a NaN block.
struct mx_prepared_activations {
    std::size_t tokens = 0, padded_blocks = 0;
    aligned_vector<std::int8_t> values;
    aligned_vector<std::int32_t> corr, expo;
    aligned_vector<std::uint8_t> nan;

    const std::int8_t* token_values(std::size_t t) const noexcept {
        return values.data() + t * padded_blocks * 32;
    }
    const std::int32_t* token_corr(std::size_t t) const noexcept {
        return corr.data() + t * padded_blocks * 4;
    }
    const std::int32_t* token_expo(std::size_t t) const noexcept {
        return expo.data() + t * padded_blocks;
    }
};

/// Fills p from `tokens` MXFP4 rows (codes stride blocks·16, scales stride blocks) for a kernel
/// reducing `group` blocks per vector. O(tokens·blocks·32), scalar: a few microseconds for
/// 4096 columns.
inline void mx_prepare(const std::uint8_t* codes, const std::uint8_t* scales, std::size_t tokens,
                       std::size_t blocks, std::size_t group, mx_prepared_activations& p) {
    const std::size_t pb = (blocks + 15) / 16 * 16;
    p.tokens = tokens;
    p.padded_blocks = pb;
    p.values.assign(tokens * pb * 32, 0);
    p.corr.assign(tokens * pb * 4, 0);
    p.expo.assign(tokens * pb, 0);
    p.nan.assign(tokens, 0);
    const std::size_t g = group;
    for (std::size_t t = 0; t < tokens; ++t) {
        const std::uint8_t* ct = codes + t * blocks * 16;
        const std::uint8_t* st = scales + t * blocks;
        std::int8_t* v = p.values.data() + t * pb * 32;
        std::int32_t* c = p.corr.data() + t * pb * 4;
        std::int32_t* e = p.expo.data() + t * pb;
        for (std::size_t b = 0; b < blocks; ++b) {
            std::int32_t sum = 0;
            std::int8_t* lo = v + b / 4 * 128 + b % 4 * 16;
            for (std::size_t j = 0; j < 16; ++j) {
                const std::uint8_t byte = ct[b * 16 + j];
                lo[j] = mx_act_values[byte & 15];
                lo[j + 64] = mx_act_values[byte >> 4];
                sum += lo[j] + lo[j + 64];
            }
            c[b * 4] = -12 * sum;
            if (st[b] == 0xFF) p.nan[t] = 1;
        }
        for (std::size_t i = 0; i < pb; ++i) {
            const std::size_t b = i / g * g + mx_lane_block(i % g, g);
            e[i] = b < blocks ? int(st[b]) - 256 : 0;
        }
    }
}

/// Scalar block dots (the oracle, equal to gemv_reference bit for bit): for i < rows, j < tokens
///   out[i·ldo + j·ldt] = Σ_b ldexp(Σ_k w2·a2, e8m0_w + e8m0_a − 256), blocks added in order,
/// NaN when either block is NaN.
inline void mx_int_rows_scalar(const std::uint8_t* w, const std::uint8_t* ws, std::size_t rows,
                               std::size_t blocks, const std::uint8_t* a, const std::uint8_t* as,
                               std::size_t tokens, float* out, std::size_t ldo,
                               std::size_t ldt) noexcept {
    for (std::size_t i = 0; i < rows; ++i)
        for (std::size_t j = 0; j < tokens; ++j) {
            const std::uint8_t* wr = w + i * blocks * 16;
            const std::uint8_t* ar = a + j * blocks * 16;
            float acc = 0.0f;
            for (std::size_t b = 0; b < blocks; ++b) {
                const std::uint8_t sw = ws[i * blocks + b], sa = as[j * blocks + b];
                if (sw == 0xFF || sa == 0xFF) {
                    acc = std::numeric_limits<float>::quiet_NaN();
                    break;
                }
                std::int32_t dot = 0;
                for (std::size_t k = 0; k < 16; ++k) {
                    const std::uint8_t wb = wr[b * 16 + k], ab = ar[b * 16 + k];
                    dot += std::int32_t{mx_act_values[wb & 15]} * mx_act_values[ab & 15] +
                           std::int32_t{mx_act_values[wb >> 4]} * mx_act_values[ab >> 4];
                }
                acc += std::ldexp(static_cast<float>(dot), int(sw) + int(sa) - 256);
            }
            out[i * ldo + j * ldt] = acc;
        }
}

#if QIFT_MX_AVX512
/// One weight row against Tk prepared tokens, 16 blocks (4 loads of 64 bytes) per step: decode
/// u (vpermb on VBMI, else mask + vpshufb), vpdpbusd (or vpmaddubsw + vpmaddwd) into 4
/// accumulators started at the correction, reduce them to 16 block sums with vpackssdw +
/// vpmaddwd (3 + 3 instructions), scale with vscalefps by e8m0_w + e8m0_a − 256 (the weight
/// scale bytes transposed into the lanes' block order with vpshufb) and add into a float
/// accumulator per token. NaN weight blocks are found by vpmaxub over the scale bytes. About 33
/// vector instructions per 16 blocks (512 weights) and token. The row is `full` whole groups of
/// 16 blocks at w / ws, then, when tail_w is not null, one group from the zero-padded copy
/// tail_w / tail_s of its last blocks. Software prefetch of the weights (rows follow each other
/// in memory, so ahead of a row's end is the next rows): into L1 (T0) 2 KiB ahead and into L2
/// (T1) 32 KiB ahead. One Sapphire Rapids core, 4096×4096, same process: weights in L3, T0 at
/// 4 KiB 392 µs, no prefetch 449 µs, the non-temporal hint the W4A4 tile uses 1163 µs; weights
/// from DRAM (read roofline ~720 µs), T0 alone 865-940 µs, T0 + T1 790 µs.
struct mx_int_avx512 {
    static constexpr std::size_t group = 16;
    static constexpr std::size_t prefetch_l1 = 2048, prefetch_l2 = 32768;

    template <int Tk>
    __attribute__((noinline)) static void row(const std::uint8_t* w, const std::uint8_t* ws,
                                              std::size_t full, const std::uint8_t* tail_w,
                                              const std::uint8_t* tail_s,
                                              const mx_prepared_activations& p, std::size_t t0,
                                              float* out, std::size_t ldt) noexcept {
        const __m512i lut = _mm512_load_si512(mx_weight_u64.data());
        const __m512i ones = _mm512_set1_epi16(1);
        const __m128i transpose =
            _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        __m512 facc[Tk];
#pragma GCC unroll 8
        for (int t = 0; t < Tk; ++t) facc[t] = _mm512_setzero_ps();
        __m128i nan = _mm_setzero_si128();
        const std::size_t groups = full + (tail_w ? 1 : 0);
        for (std::size_t G = 0; G < groups; ++G) {
            const bool main = G < full;
            const std::uint8_t* wg = main ? w + G * 256 : tail_w;
            const std::uint8_t* sg = main ? ws + G * 16 : tail_s;
            __m512i ulo[4], uhi[4];
#pragma GCC unroll 4
            for (int g = 0; g < 4; ++g) {
                const std::uint8_t* src = wg + std::size_t(g) * 64;
                _mm_prefetch(reinterpret_cast<const char*>(src + prefetch_l1), _MM_HINT_T0);
                _mm_prefetch(reinterpret_cast<const char*>(src + prefetch_l2), _MM_HINT_T1);
                const __m512i blk = _mm512_loadu_si512(src);
#if defined(__AVX512VBMI__)
                ulo[g] = _mm512_permutexvar_epi8(blk, lut);
                uhi[g] = _mm512_permutexvar_epi8(_mm512_srli_epi16(blk, 4), lut);
#else
                const __m512i nib = _mm512_set1_epi8(0x0F);
                ulo[g] = _mm512_shuffle_epi8(lut, _mm512_and_si512(blk, nib));
                uhi[g] = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(blk, 4), nib));
#endif
            }
            const __m128i sw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sg));
            if (G % 4 == 0)
                _mm_prefetch(reinterpret_cast<const char*>(sg + prefetch_l2 / 16), _MM_HINT_T1);
            nan = _mm_max_epu8(nan, sw);
            const __m512i ew = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(sw, transpose));
#pragma GCC unroll 8
            for (int t = 0; t < Tk; ++t) {
                const std::int8_t* av = p.token_values(t0 + std::size_t(t)) + G * 512;
                const std::int32_t* ac = p.token_corr(t0 + std::size_t(t)) + G * 64;
                __m512i acc[4];
#pragma GCC unroll 4
                for (int g = 0; g < 4; ++g) {
                    const __m512i alo = _mm512_load_si512(av + g * 128);
                    const __m512i ahi = _mm512_load_si512(av + g * 128 + 64);
                    const __m512i c = _mm512_load_si512(ac + g * 16);
#if defined(__AVX512VNNI__)
                    acc[g] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(c, ulo[g], alo), uhi[g], ahi);
#else
                    acc[g] = _mm512_add_epi32(
                        c, _mm512_madd_epi16(_mm512_add_epi16(_mm512_maddubs_epi16(ulo[g], alo),
                                                              _mm512_maddubs_epi16(uhi[g], ahi)),
                                             ones));
#endif
                }
                const __m512i m01 = _mm512_madd_epi16(_mm512_packs_epi32(acc[0], acc[1]), ones);
                const __m512i m23 = _mm512_madd_epi16(_mm512_packs_epi32(acc[2], acc[3]), ones);
                const __m512i dot = _mm512_madd_epi16(_mm512_packs_epi32(m01, m23), ones);
                const __m512i e = _mm512_add_epi32(
                    ew, _mm512_load_si512(p.token_expo(t0 + std::size_t(t)) + G * 16));
                facc[t] = _mm512_add_ps(
                    facc[t], _mm512_scalef_ps(_mm512_cvtepi32_ps(dot), _mm512_cvtepi32_ps(e)));
            }
        }
        const bool has_nan = _mm_cmpeq_epi8_mask(nan, _mm_set1_epi8(-1)) != 0;
#pragma GCC unroll 8
        for (int t = 0; t < Tk; ++t)
            out[std::size_t(t) * ldt] =
                has_nan ? std::numeric_limits<float>::quiet_NaN() : _mm512_reduce_add_ps(facc[t]);
    }
};
#endif

#if QIFT_MX_AVX2
/// The AVX2 form of mx_int_avx512: 8 blocks (4 loads of 32 bytes) per step, vpshufb decode,
/// vpmaddubsw + vpmaddwd, the same packing reduction within 128-bit lanes, and the scaling by
/// 2^(e8m0_w + e8m0_a − 256) done exactly with at most two multiplies (mx_ldexp_avx2).
struct mx_int_avx2 {
    static constexpr std::size_t group = 8;

    /// x·2^E for integer-valued x (|x| < 2^24) and E in [−256, 252], rounded once as ldexp:
    /// E in [−126, 127] is one multiply by 2^E; below, (x·2^(E+40))·2^−40 (the first product
    /// exact, E clamped at −166 where every result rounds to ±0); above, (x·2^127)·2^(E−127).
    static __m256 ldexp(__m256 x, __m256i e) noexcept {
        const __m256i ec = _mm256_max_epi32(e, _mm256_set1_epi32(-166));
        const __m256i low = _mm256_cmpgt_epi32(_mm256_set1_epi32(-126), ec);
        const __m256i e2 = _mm256_blendv_epi8(
            _mm256_max_epi32(_mm256_sub_epi32(ec, _mm256_set1_epi32(127)), _mm256_setzero_si256()),
            _mm256_set1_epi32(-40), low);
        const __m256i e1 = _mm256_sub_epi32(ec, e2);
        const __m256i bias = _mm256_set1_epi32(127);
        const __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e1, bias), 23));
        const __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e2, bias), 23));
        return _mm256_mul_ps(_mm256_mul_ps(x, p1), p2);
    }

    template <int Tk>
    __attribute__((noinline)) static void row(const std::uint8_t* w, const std::uint8_t* ws,
                                              std::size_t full, const std::uint8_t* tail_w,
                                              const std::uint8_t* tail_s,
                                              const mx_prepared_activations& p, std::size_t t0,
                                              float* out, std::size_t ldt) noexcept {
        const __m256i lut = _mm256_broadcastsi128_si256(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(mx_weight_u.data())));
        const __m256i nib = _mm256_set1_epi8(0x0F);
        const __m256i ones = _mm256_set1_epi16(1);
        const __m128i transpose =
            _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, -1, -1, -1, -1, -1, -1, -1, -1);
        __m256 facc[Tk];
#pragma GCC unroll 8
        for (int t = 0; t < Tk; ++t) facc[t] = _mm256_setzero_ps();
        __m128i nan = _mm_setzero_si128();
        const std::size_t halves = 2 * (full + (tail_w ? 1 : 0));
        for (std::size_t G = 0; G < halves; ++G) {  // groups of 8 blocks
            const bool main = G < 2 * full;
            const std::uint8_t* wg = main ? w + G * 128 : tail_w + (G % 2) * 128;
            const std::uint8_t* sg = main ? ws + G * 8 : tail_s + (G % 2) * 8;
            __m256i ulo[4], uhi[4];
#pragma GCC unroll 4
            for (int g = 0; g < 4; ++g) {
                const __m256i blk =
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + std::size_t(g) * 32));
                ulo[g] = _mm256_shuffle_epi8(lut, _mm256_and_si256(blk, nib));
                uhi[g] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(blk, 4), nib));
            }
            const __m128i sw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sg));
            nan = _mm_max_epu8(nan, sw);
            const __m256i ew = _mm256_cvtepu8_epi32(_mm_shuffle_epi8(sw, transpose));
#pragma GCC unroll 8
            for (int t = 0; t < Tk; ++t) {
                const std::int8_t* av = p.token_values(t0 + std::size_t(t)) + G * 256;
                const std::int32_t* ac = p.token_corr(t0 + std::size_t(t)) + G * 32;
                __m256i acc[4];
#pragma GCC unroll 4
                for (int g = 0; g < 4; ++g) {
                    // Blocks 2g, 2g+1 of the group: bytes 32g.. of the 4-block pair's lo / hi.
                    const std::int8_t* ab = av + (g / 2) * 128 + (g % 2) * 32;
                    const __m256i alo = _mm256_load_si256(reinterpret_cast<const __m256i*>(ab));
                    const __m256i ahi =
                        _mm256_load_si256(reinterpret_cast<const __m256i*>(ab + 64));
                    acc[g] = _mm256_add_epi32(
                        _mm256_load_si256(reinterpret_cast<const __m256i*>(ac + g * 8)),
                        _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(ulo[g], alo),
                                                           _mm256_maddubs_epi16(uhi[g], ahi)),
                                          ones));
                }
                const __m256i m01 = _mm256_madd_epi16(_mm256_packs_epi32(acc[0], acc[1]), ones);
                const __m256i m23 = _mm256_madd_epi16(_mm256_packs_epi32(acc[2], acc[3]), ones);
                const __m256i dot = _mm256_madd_epi16(_mm256_packs_epi32(m01, m23), ones);
                const __m256i e =
                    _mm256_add_epi32(ew, _mm256_load_si256(reinterpret_cast<const __m256i*>(
                                             p.token_expo(t0 + std::size_t(t)) + G * 8)));
                facc[t] = _mm256_add_ps(facc[t], ldexp(_mm256_cvtepi32_ps(dot), e));
            }
        }
        const bool has_nan = _mm_movemask_epi8(_mm_cmpeq_epi8(nan, _mm_set1_epi8(-1))) != 0;
#pragma GCC unroll 8
        for (int t = 0; t < Tk; ++t) {
            __m128 s =
                _mm_add_ps(_mm256_castps256_ps128(facc[t]), _mm256_extractf128_ps(facc[t], 1));
            s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            s = _mm_add_ss(s, _mm_movehdup_ps(s));
            out[std::size_t(t) * ldt] =
                has_nan ? std::numeric_limits<float>::quiet_NaN() : _mm_cvtss_f32(s);
        }
    }
};
#endif

/// Rows [r0, r1) of w (codes stride blocks·16, scales stride blocks) against every prepared
/// token: y[t·y_stride + r] for t < p.tokens, through Kernel::row (mx_int_avx512 /
/// mx_int_avx2). Token tiles of 4 (each decoded weight register serves 4 tokens), then single
/// tokens; the per-token arithmetic is the same in both, so a GEMM equals its GEMVs bit for
/// bit. A ragged last group of 16 blocks runs from a zero-padded copy.
template <class Kernel>
void mx_int_rows(const std::uint8_t* w, const std::uint8_t* ws, std::size_t blocks,
                 const mx_prepared_activations& p, std::size_t r0, std::size_t r1, float* y,
                 std::size_t y_stride) noexcept {
    const std::size_t full = blocks / 16, tail = blocks % 16;
    alignas(64) std::uint8_t tail_codes[256];
    alignas(16) std::uint8_t tail_scales[16];
    std::fill_n(tail_codes, 256, std::uint8_t{0});
    std::fill_n(tail_scales, 16, std::uint8_t{0});
    const auto one = [&](std::size_t r, std::size_t t, auto tk) {
        const std::uint8_t* wr = w + r * blocks * 16;
        const std::uint8_t* sr = ws + r * blocks;
        if (tail) {
            std::copy_n(wr + full * 256, tail * 16, tail_codes);
            std::copy_n(sr + full * 16, tail, tail_scales);
        }
        Kernel::template row<decltype(tk)::value>(wr, sr, full, tail ? tail_codes : nullptr,
                                                  tail_scales, p, t, y + t * y_stride + r,
                                                  y_stride);
        for (std::size_t k = 0; k < std::size_t(decltype(tk)::value); ++k)
            if (p.nan[t + k]) y[(t + k) * y_stride + r] = std::numeric_limits<float>::quiet_NaN();
    };
    std::size_t t = 0;
    for (; t + 4 <= p.tokens; t += 4)
        for (std::size_t r = r0; r < r1; ++r) one(r, t, std::integral_constant<int, 4>{});
    for (; t < p.tokens; ++t)
        for (std::size_t r = r0; r < r1; ++r) one(r, t, std::integral_constant<int, 1>{});
}

// ---------------------------------------------------------------------------------------
// MXFP4 × float
//
// y = Σ_b 2^e_w(b) · Σ_j E2M1(w_j)·x_j. The kernels decode 16 codes at a time to floats
// through a 16-entry table (vpermps on the widened bytes: the low nibble directly, the high one
// after a shift), form the block's partial products in a vector d (a multiply and an FMA), and
// add d·2^e_w into the row's accumulator with one more FMA, whose product is exact (a power of
// two), so the only roundings are those of d and of the accumulation, as in the reference but
// in another order. 2^e_w is a float for every E8M0 code (2^−127 a subnormal); NaN blocks are
// found from the scale bytes and give NaN.

/// Scalar MXFP4 × float (the reference's formula): for i < rows, j < tokens
///   out[i·ldo + j·ldt] = Σ_b ldexp(Σ_{k in b, k < cols} E2M1(w(i,k))·x[j·x_stride + k], e_w).
inline void mx_float_rows_scalar(const std::uint8_t* w, const std::uint8_t* ws, std::size_t rows,
                                 std::size_t blocks, std::size_t cols, const float* x,
                                 std::size_t x_stride, std::size_t tokens, float* out,
                                 std::size_t ldo, std::size_t ldt) noexcept {
    for (std::size_t i = 0; i < rows; ++i)
        for (std::size_t j = 0; j < tokens; ++j) {
            const std::uint8_t* wr = w + i * blocks * 16;
            const float* xr = x + j * x_stride;
            float acc = 0.0f;
            for (std::size_t b = 0; b < blocks; ++b) {
                const std::uint8_t sw = ws[i * blocks + b];
                if (sw == 0xFF) {
                    acc = std::numeric_limits<float>::quiet_NaN();
                    break;
                }
                float dot = 0.0f;
                for (std::size_t k = b * 32; k < std::min(cols, b * 32 + 32); ++k) {
                    const std::uint8_t byte = wr[k / 32 * 16 + k % 16];
                    dot += levels::e2m1::levels[k % 32 < 16 ? byte & 15 : byte >> 4] * xr[k];
                }
                acc += std::ldexp(dot, int(sw) - 127);
            }
            out[i * ldo + j * ldt] = acc;
        }
}

#if QIFT_MX_AVX512
/// R rows × Tk tokens of MXFP4 × float, AVX-512: per block and row, vpmovzxbd of the 16 code
/// bytes, two vpermps (low / high nibbles) and a shift; per token a multiply and two FMAs.
/// x is zero-padded to whole blocks. Per 16 blocks and row the 16 factors 2^e_w are built at
/// once (bits e8m0 << 23, at least 0x00400000 = 2^−127) and broadcast from memory. Weights are
/// prefetched as in mx_int_avx512.
struct mx_float_avx512 {
    template <int R, int Tk>
    static void tile(const std::uint8_t* w, const std::uint8_t* ws, std::size_t blocks,
                     const float* x, std::size_t x_stride, float* out, std::size_t ldo,
                     std::size_t ldt) noexcept {
        const __m512 lut = _mm512_loadu_ps(levels::e2m1::levels.data());
        __m512 acc[R][Tk];
        __m128i nan[R];
        alignas(64) float factor[R][16];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            nan[r] = _mm_setzero_si128();
#pragma GCC unroll 8
            for (int t = 0; t < Tk; ++t) acc[r][t] = _mm512_setzero_ps();
        }
        for (std::size_t b0 = 0; b0 < blocks; b0 += 16) {
            const std::size_t nb = std::min<std::size_t>(16, blocks - b0);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                const __m128i sw = _mm_maskz_loadu_epi8(__mmask16((1u << nb) - 1),
                                                        ws + std::size_t(r) * blocks + b0);
                nan[r] = _mm_max_epu8(nan[r], sw);
                _mm512_store_si512(factor[r],
                                   _mm512_max_epi32(_mm512_slli_epi32(_mm512_cvtepu8_epi32(sw), 23),
                                                    _mm512_set1_epi32(0x00400000)));
            }
            for (std::size_t j = 0; j < nb; ++j) {
                const std::size_t b = b0 + j;
                __m512 lo[R], hi[R];
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) {
                    const std::uint8_t* src = w + (std::size_t(r) * blocks + b) * 16;
                    if (j % 4 == 0) {  // once per cache line, as mx_int_avx512
                        _mm_prefetch(
                            reinterpret_cast<const char*>(src + mx_int_avx512::prefetch_l1),
                            _MM_HINT_T0);
                        _mm_prefetch(
                            reinterpret_cast<const char*>(src + mx_int_avx512::prefetch_l2),
                            _MM_HINT_T1);
                    }
                    const __m512i c = _mm512_cvtepu8_epi32(
                        _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
                    lo[r] = _mm512_permutexvar_ps(c, lut);
                    hi[r] = _mm512_permutexvar_ps(_mm512_srli_epi32(c, 4), lut);
                }
#pragma GCC unroll 8
                for (int t = 0; t < Tk; ++t) {
                    const float* xt = x + std::size_t(t) * x_stride + b * 32;
                    const __m512 xl = _mm512_loadu_ps(xt), xh = _mm512_loadu_ps(xt + 16);
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) {
                        const __m512 d = _mm512_fmadd_ps(hi[r], xh, _mm512_mul_ps(lo[r], xl));
                        acc[r][t] = _mm512_fmadd_ps(d, _mm512_set1_ps(factor[r][j]), acc[r][t]);
                    }
                }
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const bool has_nan = _mm_cmpeq_epi8_mask(nan[r], _mm_set1_epi8(-1)) != 0;
#pragma GCC unroll 8
            for (int t = 0; t < Tk; ++t)
                out[std::size_t(r) * ldo + std::size_t(t) * ldt] =
                    has_nan ? std::numeric_limits<float>::quiet_NaN()
                            : _mm512_reduce_add_ps(acc[r][t]);
        }
    }
};
#endif

#if QIFT_MX_AVX2
/// The AVX2 form of mx_float_avx512: 8 codes per vpmovzxbd, vpermps on the magnitude table
/// (3 index bits) and the sign from bit 3 of the code by a shift, and and xor.
struct mx_float_avx2 {
    template <int R, int Tk>
    static void tile(const std::uint8_t* w, const std::uint8_t* ws, std::size_t blocks,
                     const float* x, std::size_t x_stride, float* out, std::size_t ldo,
                     std::size_t ldt) noexcept {
        const __m256 mag = _mm256_loadu_ps(levels::e2m1::levels.data());
        const __m256i sign = _mm256_set1_epi32(std::numeric_limits<std::int32_t>::min());
        __m256 acc[R][Tk];
        std::uint8_t nan[R];
        alignas(32) float factor[R][8];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            nan[r] = 0;
#pragma GCC unroll 8
            for (int t = 0; t < Tk; ++t) acc[r][t] = _mm256_setzero_ps();
        }
        const auto decode = [&](__m256i idx, __m256i sign_source, int shift) {
            const __m256i s = _mm256_and_si256(_mm256_slli_epi32(sign_source, shift), sign);
            return _mm256_xor_ps(_mm256_permutevar8x32_ps(mag, idx), _mm256_castsi256_ps(s));
        };
        for (std::size_t b0 = 0; b0 < blocks; b0 += 8) {
            const std::size_t nb = std::min<std::size_t>(8, blocks - b0);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                alignas(16) std::uint8_t sw[16] = {};
                std::copy_n(ws + std::size_t(r) * blocks + b0, nb, sw);
                for (std::size_t j = 0; j < nb; ++j) nan[r] = std::max(nan[r], sw[j]);
                _mm256_store_si256(
                    reinterpret_cast<__m256i*>(factor[r]),
                    _mm256_max_epi32(_mm256_slli_epi32(_mm256_cvtepu8_epi32(_mm_load_si128(
                                                           reinterpret_cast<const __m128i*>(sw))),
                                                       23),
                                     _mm256_set1_epi32(0x00400000)));
            }
            for (std::size_t j = 0; j < nb; ++j) {
                const std::size_t b = b0 + j;
                __m256 v[R][4];  // elements 0-7, 8-15, 16-23, 24-31
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) {
                    const std::uint8_t* c = w + (std::size_t(r) * blocks + b) * 16;
                    const __m256i c0 =
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
                    const __m256i c1 = _mm256_cvtepu8_epi32(
                        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + 8)));
                    v[r][0] = decode(c0, c0, 28);
                    v[r][1] = decode(c1, c1, 28);
                    v[r][2] = decode(_mm256_srli_epi32(c0, 4), c0, 24);
                    v[r][3] = decode(_mm256_srli_epi32(c1, 4), c1, 24);
                }
#pragma GCC unroll 8
                for (int t = 0; t < Tk; ++t) {
                    const float* xt = x + std::size_t(t) * x_stride + b * 32;
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) {
                        __m256 d = _mm256_mul_ps(v[r][0], _mm256_loadu_ps(xt));
                        d = _mm256_fmadd_ps(v[r][1], _mm256_loadu_ps(xt + 8), d);
                        d = _mm256_fmadd_ps(v[r][2], _mm256_loadu_ps(xt + 16), d);
                        d = _mm256_fmadd_ps(v[r][3], _mm256_loadu_ps(xt + 24), d);
                        acc[r][t] = _mm256_fmadd_ps(d, _mm256_set1_ps(factor[r][j]), acc[r][t]);
                    }
                }
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
            for (int t = 0; t < Tk; ++t) {
                const __m256 a = acc[r][t];
                __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                s = _mm_add_ss(s, _mm_movehdup_ps(s));
                out[std::size_t(r) * ldo + std::size_t(t) * ldt] =
                    nan[r] == 0xFF ? std::numeric_limits<float>::quiet_NaN() : _mm_cvtss_f32(s);
            }
    }
};
#endif

/// Rows [r0, r1) of w against `tokens` float rows of x (zero-padded to blocks·32 columns, stride
/// x_stride) into y[t·y_stride + r], through Kernel::tile: 2 rows × 4 tokens, then 4 rows × 1
/// token (the GEMV tile), then single rows. Each (row, token) output is computed by the same
/// operations in every tile shape, so a GEMM equals its GEMVs bit for bit.
template <class Kernel>
void mx_float_rows(const std::uint8_t* w, const std::uint8_t* ws, std::size_t blocks,
                   const float* x, std::size_t x_stride, std::size_t tokens, std::size_t r0,
                   std::size_t r1, float* y, std::size_t y_stride) noexcept {
    const auto rows_at = [&](std::size_t r) { return w + r * blocks * 16; };
    const auto scales_at = [&](std::size_t r) { return ws + r * blocks; };
    std::size_t t = 0;
    for (; t + 4 <= tokens; t += 4) {
        std::size_t r = r0;
        for (; r + 2 <= r1; r += 2)
            Kernel::template tile<2, 4>(rows_at(r), scales_at(r), blocks, x + t * x_stride,
                                        x_stride, y + t * y_stride + r, 1, y_stride);
        for (; r < r1; ++r)
            Kernel::template tile<1, 4>(rows_at(r), scales_at(r), blocks, x + t * x_stride,
                                        x_stride, y + t * y_stride + r, 1, y_stride);
    }
    for (; t < tokens; ++t) {
        std::size_t r = r0;
        for (; r + 4 <= r1; r += 4)
            Kernel::template tile<4, 1>(rows_at(r), scales_at(r), blocks, x + t * x_stride,
                                        x_stride, y + t * y_stride + r, 1, y_stride);
        for (; r < r1; ++r)
            Kernel::template tile<1, 1>(rows_at(r), scales_at(r), blocks, x + t * x_stride,
                                        x_stride, y + t * y_stride + r, 1, y_stride);
    }
}

}  // namespace qift::detail
