// SPDX-License-Identifier: MIT
// Kernels behind binary_matrix.hpp: per (row, column block) masked signed sums of one-bit weight
// planes against int8 activations (A8 / A4, exact in int32) or float activations. AVX-512 uses
// the stored words as k-masks (masked byte adds for A4, zero-masked moves + vpdpbusd for A8,
// masked float adds), AVX2 expands the bits with vpshufb / vpsllvd; the scalar form is the oracle
// and the portable path.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "../core.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define QIFT_BINARY_AVX512 1
#else
#define QIFT_BINARY_AVX512 0
#endif
#if defined(__AVX2__)
#define QIFT_BINARY_AVX2 1
#else
#define QIFT_BINARY_AVX2 0
#endif

namespace qift::inline QIFT_ISA::detail {

// ---------------------------------------------------------------------------------------
// What the kernels compute
//
// A plane is a [rows][words] array of 64-bit words: bit j of word c of row r is column 64c + j
// (1 = +1, 0 = −1; bits past the last column are 0; sign_stride 0: one row read by all rows),
// optionally with a mask in the same layout
// (element mask: row stride `words`; column mask: row stride 0, one row shared by all rows),
// used as is or complemented. For rows r0 .. r0 + R − 1 and every column block b (block_chunks
// words; the last block may be shorter) a kernel writes
//   out[i·ldo + b] = Σ_{k in block b} m(r0 + i, k) · s(r0 + i, k) · a[k],  s = ±1, m = 0/1,
// a the activations of one token, zero-padded to words·64 values (integer kernels also get the
// block sums of a, asum; float kernels those of z, zsum). Padding columns contribute 0 through
// a = 0, whatever their bits.
//
// Overflow proof of the integer kernels. Codes satisfy |a| <= 127 (A8: −127..127; never −128,
// so −a is an int8) or, for the Int4 kernels, |a| <= 8 (A4: −8..7), and a row has at most 65536
// columns (checked by the callers).
//  * int32 results: |Σ m·s·a| <= 127·65536 < 2^23; without a mask the AVX-512 kernels form
//    2·Σ_{s=+1} a − Σ a with |2·Σ_{s=+1} a| < 2^24 and |Σ a| < 2^23.
//  * AVX-512, A8 with VNNI: a vpdpbusd int32 lane gains 4 products 1·v, |v| <= 127, per
//    64-column word: |lane| <= 4·127·1024 < 2^19 over a 65536-column block.
//  * AVX-512, A8 without VNNI: int16 lanes gain one code per word, |.| <= 127, and are widened
//    after at most 128 words: |lane| <= 128·127 = 16256, the two halves added <= 32512 < 2^15;
//    vpmaddwd then adds pairs into int32.
//  * AVX-512, A4: int8 lanes gain one code per word, |.| <= 8, widened after at most 15 words:
//    |lane| <= 120 < 2^7; widened by vpdpbusd(1, lane) (exact in int32) or vpmaddubsw(1, lane)
//    (pairs <= 240 < 2^15) + vpmaddwd.
//  * AVX2: vpsignb of −127..127 by ±1 never wraps; vpmaddubsw(1, v) pairs |.| <= 254, two
//    32-column halves added <= 508 < 2^15, widened at once by vpmaddwd.
//  * The tree sums of int32 lanes are the block sums (< 2^23).

/// How a plane's mask is applied.
enum class binary_mask_mode {
    none,      ///< no mask: every element counts
    direct,    ///< an element counts where its mask bit is 1
    inverted,  ///< an element counts where its mask bit is 0 (the stored mask is shared)
};

/// One plane as a kernel reads it (see the comment above).
struct binary_plane_ref {
    const std::uint64_t* signs = nullptr;
    /// Words between the sign rows: `words`, or 0 when every row reads the same words (a
    /// constant plane on a column mask reads its mask as signs).
    std::size_t sign_stride = 0;
    const std::uint64_t* mask = nullptr;
    std::size_t mask_stride = 0;
    binary_mask_mode mode = binary_mask_mode::none;
};

/// Row geometry shared by every plane of a matrix.
struct binary_geometry {
    std::size_t words = 0;         ///< 64-bit words per row, ceil(cols / 64): the row stride
    std::size_t block_chunks = 0;  ///< words per scale block (the last block may have fewer)
    std::size_t blocks = 0;        ///< scale blocks per row
    std::size_t prefetch_l1 = 0;   ///< software prefetch distances in words
    std::size_t prefetch_l2 = 0;   ///< (binary_prefetch_words)
    /// One past the last word of block b.
    std::size_t block_end(std::size_t b) const noexcept {
        return std::min(words, (b + 1) * block_chunks);
    }
};

/// Most scale blocks a row may have: 65536 columns in blocks of 64.
inline constexpr std::size_t binary_max_blocks = 1024;

// ---------------------------------------------------------------------------------------
// Scalar reference

/// Scalar kernels (the oracle; also the portable path). int_tile and float_tile have the same
/// contract as the vector kernels; the float one adds the columns of each block in order.
/// `zsum` (per-block sums of the float activations) is not needed here.
struct binary_scalar {
    static constexpr int max_rows = 8;

    template <int R, binary_mask_mode M, bool Int4>
    static void int_tile(const binary_plane_ref& p, const binary_geometry& g, std::size_t r0,
                         const std::int8_t* a, const std::int32_t* /*asum*/, std::int32_t* out,
                         std::size_t ldo) noexcept {
        for (std::size_t i = 0; i < std::size_t(R); ++i) {
            const std::uint64_t* s = p.signs + (r0 + i) * p.sign_stride;
            const std::uint64_t* m =
                M == binary_mask_mode::none ? nullptr : p.mask + (r0 + i) * p.mask_stride;
            for (std::size_t b = 0; b < g.blocks; ++b) {
                std::int32_t sum = 0;
                for (std::size_t c = b * g.block_chunks; c < g.block_end(b); ++c)
                    for (unsigned j = 0; j < 64; ++j) {
                        const std::int32_t v = a[c * 64 + j];
                        if (!counts<M>(m, c, j)) continue;
                        sum += ((s[c] >> j) & 1u) != 0 ? v : -v;
                    }
                out[i * ldo + b] = sum;
            }
        }
    }

    template <int R, binary_mask_mode M>
    static void float_tile(const binary_plane_ref& p, const binary_geometry& g, std::size_t r0,
                           const float* z, const float* /*zsum*/, float* out,
                           std::size_t ldo) noexcept {
        for (std::size_t i = 0; i < std::size_t(R); ++i) {
            const std::uint64_t* s = p.signs + (r0 + i) * p.sign_stride;
            const std::uint64_t* m =
                M == binary_mask_mode::none ? nullptr : p.mask + (r0 + i) * p.mask_stride;
            for (std::size_t b = 0; b < g.blocks; ++b) {
                float sum = 0.0f;
                for (std::size_t c = b * g.block_chunks; c < g.block_end(b); ++c)
                    for (unsigned j = 0; j < 64; ++j) {
                        const float v = z[c * 64 + j];
                        if (!counts<M>(m, c, j)) continue;
                        sum += ((s[c] >> j) & 1u) != 0 ? v : -v;
                    }
                out[i * ldo + b] = sum;
            }
        }
    }

  private:
    template <binary_mask_mode M>
    static bool counts(const std::uint64_t* m, std::size_t c, unsigned j) noexcept {
        if constexpr (M == binary_mask_mode::none) {
            return true;
        } else {
            const bool bit = ((m[c] >> j) & 1u) != 0;
            return M == binary_mask_mode::direct ? bit : !bit;
        }
    }
};

/// Bits [16q, 16q + 16) (q < 4) or [32h, 32h + 32) (h < 2) of a stored word, read from memory
/// (so that the compiler loads a k-mask or broadcasts straight from it). Little-endian.
inline std::uint16_t binary_word16(const std::uint64_t* w, unsigned q) noexcept {
    std::uint16_t v;
    std::memcpy(&v, reinterpret_cast<const unsigned char*>(w) + 2 * q, sizeof v);
    return v;
}
inline std::uint32_t binary_word32(const std::uint64_t* w, unsigned h) noexcept {
    std::uint32_t v;
    std::memcpy(&v, reinterpret_cast<const unsigned char*>(w) + 4 * h, sizeof v);
    return v;
}

/// Software prefetch distances of the vector kernels, in bytes of each plane array: into L1 (T0)
/// near, and into L2 (T1) far ahead (tuned on 4096×4096 A8 weights from DRAM, see
/// binary_avx512).
inline constexpr std::size_t binary_prefetch_l1 = 4096, binary_prefetch_l2 = 32768;

/// A distance in words, rounded up to whole 8-row tiles, so that a tile's prefetches cover the
/// same rows of a later tile (rows follow each other in memory; the hardware prefetchers stop at
/// 4 KiB pages).
inline std::size_t binary_prefetch_words(std::size_t bytes, std::size_t words) noexcept {
    const std::size_t tile = 8 * words * sizeof(std::uint64_t);
    return (bytes + tile - 1) / tile * 8 * words;
}

// ---------------------------------------------------------------------------------------
// AVX-512

#if QIFT_BINARY_AVX512
/// Bits [16q, 16q + 16) and [32h, 32h + 32) of a stored word as a k-mask, loaded straight from
/// memory (kmovw / kmovd k, m: one instruction, where GCC 12 makes a general-register load and a
/// kmov of the intrinsics, an extra vector-port uop per mask).
__attribute__((always_inline)) inline __mmask16 binary_kload16(const std::uint64_t* w,
                                                               unsigned q) noexcept {
#if defined(__GNUC__) && !defined(__clang__)
    __mmask16 k;
    __asm__("kmovw %1, %0"
            : "=Yk"(k)
            : "m"(*reinterpret_cast<const std::uint16_t*>(
                reinterpret_cast<const unsigned char*>(w) + 2 * q)));
    return k;
#else
    return _cvtu32_mask16(binary_word16(w, q));
#endif
}
__attribute__((always_inline)) inline __mmask32 binary_kload32(const std::uint64_t* w,
                                                               unsigned h) noexcept {
#if defined(__GNUC__) && !defined(__clang__)
    __mmask32 k;
    __asm__("kmovd %1, %0"
            : "=Yk"(k)
            : "m"(*reinterpret_cast<const std::uint32_t*>(
                reinterpret_cast<const unsigned char*>(w) + 4 * h)));
    return k;
#else
    return _cvtu32_mask32(binary_word32(w, h));
#endif
}

/// acc += x in the lanes k selects (vpaddb / vpaddw / vaddps with a merge mask). GCC 12 copies
/// the accumulator around the intrinsics (a move per add, and spills with 8-row tiles); the asm
/// form adds in place (by value: a reference operand kept the accumulators in memory).
__attribute__((always_inline)) inline __m512i binary_mask_add8(__m512i acc, __mmask64 k,
                                                               __m512i x) noexcept {
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("vpaddb %2, %0, %0%{%1%}" : "+v"(acc) : "Yk"(k), "v"(x));
    return acc;
#else
    return _mm512_mask_add_epi8(acc, k, acc, x);
#endif
}
__attribute__((always_inline)) inline __m512i binary_mask_add16(__m512i acc, __mmask32 k,
                                                                __m512i x) noexcept {
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("vpaddw %2, %0, %0%{%1%}" : "+v"(acc) : "Yk"(k), "v"(x));
    return acc;
#else
    return _mm512_mask_add_epi16(acc, k, acc, x);
#endif
}
__attribute__((always_inline)) inline __m512 binary_mask_add_ps(__m512 acc, __mmask16 k,
                                                                __m512 x) noexcept {
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("vaddps %2, %0, %0%{%1%}" : "+v"(acc) : "Yk"(k), "v"(x));
    return acc;
#else
    return _mm512_mask_add_ps(acc, k, acc, x);
#endif
}

/// acc += Σ of the 4 unsigned × signed byte products u·v of each int32 lane: vpdpbusd (VNNI;
/// GCC 12 copies the accumulator around the intrinsic, the asm form keeps it in its register),
/// else vpmaddubsw + vpmaddwd (exact for u <= 1, the only use).
__attribute__((always_inline)) inline __m512i binary_dpbusd(__m512i acc, __m512i u,
                                                            __m512i v) noexcept {
#if defined(__AVX512VNNI__) && defined(__GNUC__) && !defined(__clang__)
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(v));
    return acc;
#elif defined(__AVX512VNNI__)
    return _mm512_dpbusd_epi32(acc, u, v);
#else
    return _mm512_add_epi32(acc,
                            _mm512_madd_epi16(_mm512_maddubs_epi16(u, v), _mm512_set1_epi16(1)));
#endif
}

/// Lane i of the result = Σ of the 16 lanes of v[i] (int32, or float through `add`): a
/// transposing tree, 46 shuffle/add instructions for 16 sums instead of 16 reductions.
template <class Add>
__attribute__((always_inline)) inline __m512i binary_sum16(const __m512i (&v)[16],
                                                           Add add) noexcept {
    __m512i t[8], u[4], w[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i)  // 128-bit lanes 0-1: partials of v[2i], 2-3: of v[2i+1]
        t[i] = add(_mm512_shuffle_i32x4(v[2 * i], v[2 * i + 1], 0x44),
                   _mm512_shuffle_i32x4(v[2 * i], v[2 * i + 1], 0xEE));
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i)  // 128-bit lane j: v[4i + j]
        u[i] = add(_mm512_shuffle_i32x4(t[2 * i], t[2 * i + 1], 0x88),
                   _mm512_shuffle_i32x4(t[2 * i], t[2 * i + 1], 0xDD));
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i)  // lane j: dwords 0-1 v[8i + j], 2-3 v[8i + 4 + j]
        w[i] = add(_mm512_unpacklo_epi64(u[2 * i], u[2 * i + 1]),
                   _mm512_unpackhi_epi64(u[2 * i], u[2 * i + 1]));
    const __m512 w0 = _mm512_castsi512_ps(w[0]), w1 = _mm512_castsi512_ps(w[1]);
    // lane j, dword d: v[4d + j]
    const __m512i r = add(_mm512_castps_si512(_mm512_shuffle_ps(w0, w1, 0x88)),
                          _mm512_castps_si512(_mm512_shuffle_ps(w0, w1, 0xDD)));
    const __m512i natural = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_epi32(natural, r);
}

/// The AVX-512 kernels: the stored words are used as k-masks as they are (no bit is expanded).
/// On the development machine a mask load from memory cost about as much as a vector
/// instruction, so the kernels load each 64-bit word once where they can.
///  * A4 codes (Int4, |a| <= 8): per 64 columns and row one kmovq and one vpaddb{k} into int8
///    lanes (Σ_{s=+1} a; the block's dot is 2·Σ_{s=+1} a − Σ a, asum, exact), widened every 15
///    words. About 1.0 cycle per 64 weights and row (weights in L2, 2.6 GHz).
///  * A8 codes with VNNI: per 64 columns and row one kmovq, one vmovdqu8{z} (a where s = +1) and
///    one vpdpbusd with a vector of ones into int32 lanes, then the same correction. About 1.35
///    cycles (vpdpbusd zmm ran at about 0.8 a cycle there); two kmovd + two vpaddw{k} into int16
///    lanes cost about 2, and are the path without VNNI (widened every 128 words).
///  * Masked planes: blend a and −a by the sign bits (vpblendmb / vpblendmw), then zero the
///    elements out of the mask (vmovdqu8{z}, or merge-masked to zero for an inverted mask) or
///    add masked by the mask bits (knot for an inverted mask).
///  * Float: no mask, one kmovw + vaddps{k} of z per 16 columns (2·Σ_{s=+1} z − Σ z, zsum),
///    about 3.3 cycles per 64 weights (compute-bound: below the read roofline from DRAM); with a
///    mask, a blend of z and −z and a vaddps{k} by the mask bits.
/// Rows are processed in tiles of up to 8 sharing each activation load, with one or two
/// accumulators per row; per block and row the widened sums are saved, and every 16 blocks (or
/// at the end) a transposing tree adds their lanes.
struct binary_avx512 {
    static constexpr int max_rows = 8;

    template <int R, binary_mask_mode M, bool Int4>
    __attribute__((noinline)) static void int_tile(const binary_plane_ref& p,
                                                   const binary_geometry& g, std::size_t r0,
                                                   const std::int8_t* a, const std::int32_t* asum,
                                                   std::int32_t* out, std::size_t ldo) noexcept {
        constexpr bool masked = M != binary_mask_mode::none;
        if constexpr (masked && R > 4) {
            // 8 rows of signs and masks are 16 row pointers: more than the general registers
            // hold next to the loop's own (GCC then reloads the masks through them).
            int_tile<R / 2, M, Int4>(p, g, r0, a, asum, out, ldo);
            int_tile<R / 2, M, Int4>(p, g, r0 + R / 2, a, asum, out + (R / 2) * ldo, ldo);
            return;
        }
        const std::uint64_t* s[R];
        const std::uint64_t* m[R];
        rows(p, g, r0, s, m);
        const bool mask_rows = masked && p.mask_stride != 0;
#if defined(__AVX512VNNI__)
        constexpr bool vnni = true;
#else
        constexpr bool vnni = false;
#endif
        // Words between widenings: |byte lane| <= 15·8 = 120, |int16 lane| <= 128·127 and the
        // two int16 halves added <= 32512; vpdpbusd's int32 lanes never need one (the overflow
        // proof at the top of this file).
        constexpr std::size_t span = Int4 ? 15 : vnni ? std::size_t(-1) / 2 : 128;
        const __m512i zero = _mm512_setzero_si512();
        const __m512i ones8 = _mm512_set1_epi8(1), ones16 = _mm512_set1_epi16(1);
        __m512i part[R][16];
        std::size_t c = 0;
        for (std::size_t b0 = 0; b0 < g.blocks; b0 += 16) {
            const std::size_t nb = std::min<std::size_t>(16, g.blocks - b0);
            for (std::size_t j = 0; j < nb; ++j) {
                const std::size_t c_end = g.block_end(b0 + j);
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) part[r][j] = zero;
                while (c < c_end) {
                    const std::size_t g_end = std::min(c_end, c + span);
                    if constexpr (Int4) {
                        __m512i acc[R];
#pragma GCC unroll 8
                        for (int r = 0; r < R; ++r) acc[r] = zero;
                        for (; c < g_end; ++c) {
                            prefetch(s, m, mask_rows, c, g);
                            const __m512i x = _mm512_loadu_si512(a + c * 64);
                            [[maybe_unused]] const __m512i nx = _mm512_sub_epi8(zero, x);
#pragma GCC unroll 8
                            for (int r = 0; r < R; ++r) {
                                const __mmask64 ks = _cvtu64_mask64(s[r][c]);
                                if constexpr (!masked) {
                                    acc[r] = binary_mask_add8(acc[r], ks, x);
                                } else {
                                    __mmask64 km = _cvtu64_mask64(m[r][c]);
                                    if constexpr (M == binary_mask_mode::inverted)
                                        km = _knot_mask64(km);
                                    acc[r] = binary_mask_add8(acc[r], km,
                                                              _mm512_mask_blend_epi8(ks, nx, x));
                                }
                            }
                        }
#pragma GCC unroll 8
                        for (int r = 0; r < R; ++r)
                            part[r][j] = binary_dpbusd(part[r][j], ones8, acc[r]);
                    } else if constexpr (vnni) {
                        // One group per block (no widening): accumulate in the block's register.
                        __m512i acc[R];
#pragma GCC unroll 8
                        for (int r = 0; r < R; ++r) acc[r] = part[r][j];
                        for (; c < g_end; ++c) {
                            prefetch(s, m, mask_rows, c, g);
                            const __m512i x = _mm512_loadu_si512(a + c * 64);
                            [[maybe_unused]] const __m512i nx = _mm512_sub_epi8(zero, x);
#pragma GCC unroll 8
                            for (int r = 0; r < R; ++r) {
                                const __mmask64 ks = _cvtu64_mask64(s[r][c]);
                                __m512i v;
                                if constexpr (!masked) {
                                    v = _mm512_maskz_mov_epi8(ks, x);
                                } else {
                                    v = _mm512_mask_blend_epi8(ks, nx, x);
                                    const __mmask64 km = _cvtu64_mask64(m[r][c]);
                                    v = M == binary_mask_mode::direct
                                            ? _mm512_maskz_mov_epi8(km, v)
                                            : _mm512_mask_mov_epi8(v, km, zero);
                                }
                                acc[r] = binary_dpbusd(acc[r], ones8, v);
                            }
                        }
#pragma GCC unroll 8
                        for (int r = 0; r < R; ++r) part[r][j] = acc[r];
                    } else {
                        __m512i acc[R][2];
#pragma GCC unroll 8
                        for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = zero;
                        for (; c < g_end; ++c) {
                            prefetch(s, m, mask_rows, c, g);
                            __m512i x[2];
                            [[maybe_unused]] __m512i nx[2];
#pragma GCC unroll 2
                            for (unsigned h = 0; h < 2; ++h) {
                                x[h] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(
                                    reinterpret_cast<const __m256i*>(a + c * 64 + 32 * h)));
                                if constexpr (masked) nx[h] = _mm512_sub_epi16(zero, x[h]);
                            }
#pragma GCC unroll 8
                            for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
                                for (unsigned h = 0; h < 2; ++h) {
                                    const __mmask32 ks = binary_kload32(s[r] + c, h);
                                    __m512i& ac = acc[r][h];
                                    if constexpr (!masked) {
                                        ac = binary_mask_add16(ac, ks, x[h]);
                                    } else {
                                        __mmask32 km = binary_kload32(m[r] + c, h);
                                        if constexpr (M == binary_mask_mode::inverted)
                                            km = _knot_mask32(km);
                                        ac = binary_mask_add16(
                                            ac, km, _mm512_mask_blend_epi16(ks, nx[h], x[h]));
                                    }
                                }
                        }
#pragma GCC unroll 8
                        for (int r = 0; r < R; ++r)
                            part[r][j] = _mm512_add_epi32(
                                part[r][j],
                                _mm512_madd_epi16(_mm512_add_epi16(acc[r][0], acc[r][1]), ones16));
                    }
                }
            }
            std::int32_t sums[R][16];
            flush<R>(part, nb, &sums[0][0], 16,
                     [](__m512i x, __m512i y) { return _mm512_add_epi32(x, y); });
            for (int r = 0; r < R; ++r)
                for (std::size_t b = 0; b < nb; ++b)
                    out[std::size_t(r) * ldo + b0 + b] =
                        masked ? sums[r][b] : 2 * sums[r][b] - asum[b0 + b];
        }
    }

    template <int R, binary_mask_mode M>
    __attribute__((noinline)) static void float_tile(const binary_plane_ref& p,
                                                     const binary_geometry& g, std::size_t r0,
                                                     const float* z, const float* zsum, float* out,
                                                     std::size_t ldo) noexcept {
        if constexpr (M != binary_mask_mode::none && R > 4) {  // as int_tile
            float_tile<R / 2, M>(p, g, r0, z, zsum, out, ldo);
            float_tile<R / 2, M>(p, g, r0 + R / 2, z, zsum, out + (R / 2) * ldo, ldo);
            return;
        }
        const std::uint64_t* s[R];
        const std::uint64_t* m[R];
        rows(p, g, r0, s, m);
        constexpr bool masked = M != binary_mask_mode::none;
        const bool mask_rows = masked && p.mask_stride != 0;
        const __m512 sign = _mm512_set1_ps(-0.0f);
        __m512i part[R][16];
        std::size_t c = 0;
        for (std::size_t b0 = 0; b0 < g.blocks; b0 += 16) {
            const std::size_t nb = std::min<std::size_t>(16, g.blocks - b0);
            for (std::size_t j = 0; j < nb; ++j) {
                const std::size_t c_end = g.block_end(b0 + j);
                __m512 acc[R][2];
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
                for (; c < c_end; ++c) {
                    prefetch(s, m, mask_rows, c, g);
#pragma GCC unroll 4
                    for (unsigned q = 0; q < 4; ++q) {
                        const __m512 x = _mm512_loadu_ps(z + c * 64 + q * 16);
                        [[maybe_unused]] const __m512 nx = _mm512_xor_ps(x, sign);
#pragma GCC unroll 8
                        for (int r = 0; r < R; ++r) {
                            __m512& ac = acc[r][q & 1];
                            const __mmask16 ks = binary_kload16(s[r] + c, q);
                            if constexpr (!masked) {
                                ac = binary_mask_add_ps(ac, ks, x);
                            } else {
                                __mmask16 km = binary_kload16(m[r] + c, q);
                                if constexpr (M == binary_mask_mode::inverted)
                                    km = _knot_mask16(km);
                                ac = binary_mask_add_ps(ac, km, _mm512_mask_blend_ps(ks, nx, x));
                            }
                        }
                    }
                }
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r)
                    part[r][j] = _mm512_castps_si512(_mm512_add_ps(acc[r][0], acc[r][1]));
            }
            float sums[R][16];
            flush<R>(part, nb, &sums[0][0], 16, add_ps);
            for (int r = 0; r < R; ++r)
                for (std::size_t b = 0; b < nb; ++b)
                    out[std::size_t(r) * ldo + b0 + b] =
                        masked ? sums[r][b] : 2.0f * sums[r][b] - zsum[b0 + b];
        }
    }

  private:
    template <int R>
    __attribute__((always_inline)) static void rows(const binary_plane_ref& p,
                                                    const binary_geometry& /*g*/, std::size_t r0,
                                                    const std::uint64_t* (&s)[R],
                                                    const std::uint64_t* (&m)[R]) noexcept {
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            s[r] = p.signs + (r0 + std::size_t(r)) * p.sign_stride;
            m[r] = p.mode == binary_mask_mode::none
                       ? s[r]
                       : p.mask + (r0 + std::size_t(r)) * p.mask_stride;
        }
    }

    /// Software prefetch, spread evenly: at word c, row c mod 8 of the tile (if the tile has it)
    /// prefetches its cache line of words [c − c mod 8, + 8) g.prefetch_l1 words ahead into L1
    /// and g.prefetch_l2 words ahead into L2: the same row of later tiles. One Sapphire-Rapids-
    /// class core, 4096×4096 A8 from DRAM (256 MiB of copies), CPU time against a plain read of
    /// the same bytes (~145 µs): no prefetch 298 µs, T0 4 KiB 280 µs, T1 32 KiB 230 µs, T0 +
    /// T1 issued together every 8 words 221-233 µs, spread as here 185 µs.
    template <int R>
    __attribute__((always_inline)) static void prefetch(const std::uint64_t* const (&s)[R],
                                                        const std::uint64_t* const (&m)[R],
                                                        bool mask_rows, std::size_t c,
                                                        const binary_geometry& g) noexcept {
        const std::size_t r = c & 7, line = c - r;
        if (r >= std::size_t(R)) return;
        _mm_prefetch(reinterpret_cast<const char*>(s[r] + line + g.prefetch_l1), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(s[r] + line + g.prefetch_l2), _MM_HINT_T1);
        if (mask_rows) {
            _mm_prefetch(reinterpret_cast<const char*>(m[r] + line + g.prefetch_l1), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(m[r] + line + g.prefetch_l2), _MM_HINT_T1);
        }
    }

    static __m512i add_ps(__m512i x, __m512i y) noexcept {
        return _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(x), _mm512_castsi512_ps(y)));
    }

    /// out[r·ldo + b] = Σ lanes of part[r][b] for b < nb (int32 or float bits, by `add`).
    template <int R, class T, class Add>
    __attribute__((always_inline)) static void flush(const __m512i (*part)[16], std::size_t nb,
                                                     T* out, std::size_t ldo, Add add) noexcept {
        if (nb == 1) {
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                // Halve to one 128-bit lane with `add`, then the last four lanes.
                __m512i v = part[r][0];
                v = add(v, _mm512_shuffle_i32x4(v, v, 0x4E));
                v = add(v, _mm512_shuffle_i32x4(v, v, 0xB1));
                v = add(v, _mm512_shuffle_epi32(v, _MM_PERM_BADC));
                v = add(v, _mm512_shuffle_epi32(v, _MM_PERM_CDAB));
                const std::uint32_t bits =
                    static_cast<std::uint32_t>(_mm_cvtsi128_si32(_mm512_castsi512_si128(v)));
                std::memcpy(out + std::size_t(r) * ldo, &bits, sizeof bits);
            }
            return;
        }
        const __mmask16 keep = static_cast<__mmask16>((1u << nb) - 1);
        for (int r = 0; r < R; ++r) {
            __m512i v[16];
            for (std::size_t b = 0; b < 16; ++b)
                v[b] = b < nb ? part[r][b] : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(out + std::size_t(r) * ldo, keep, binary_sum16(v, add));
        }
    }
};
#endif

// ---------------------------------------------------------------------------------------
// AVX2

#if QIFT_BINARY_AVX2
/// The AVX2 kernels. Integer, per 32 columns and row: the 32-bit half word is broadcast,
/// vpshufb copies byte j of it to bytes 8j..8j+7, vpand + vpcmpeqb with 1, 2, 4, ..., 128 turn
/// each bit into a byte of 0 or −1, and vpsignb by (that | 1) (0 where the mask excludes the
/// element) gives −s·a; vpmaddubsw + vpmaddwd add the bytes into int32 lanes, negated at the
/// end. Float, per 8 columns and row: vpsllvd moves bit k of the broadcast half word to each
/// lane's sign bit, which flips z (−s·z; a mask bit likewise becomes an all-ones lane by
/// vpsrad); adds into two accumulators per row. One horizontal sum per block and row.
struct binary_avx2 {
    static constexpr int max_rows = 4;

    template <int R, binary_mask_mode M, bool Int4>
    __attribute__((noinline)) static void int_tile(const binary_plane_ref& p,
                                                   const binary_geometry& g, std::size_t r0,
                                                   const std::int8_t* a,
                                                   const std::int32_t* /*asum*/, std::int32_t* out,
                                                   std::size_t ldo) noexcept {
        const std::uint64_t* s[R];
        const std::uint64_t* m[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            s[r] = p.signs + (r0 + std::size_t(r)) * p.sign_stride;
            m[r] =
                M == binary_mask_mode::none ? s[r] : p.mask + (r0 + std::size_t(r)) * p.mask_stride;
        }
        const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2,
                                                2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
        const __m256i one8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
        const auto expand = [&](std::uint32_t w) __attribute__((always_inline)) {
            const __m256i t = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(w)), spread);
            return _mm256_cmpeq_epi8(_mm256_and_si256(t, bit), bit);
        };
        for (std::size_t b = 0; b < g.blocks; ++b) {
            __m256i acc[R];
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
            for (std::size_t c = b * g.block_chunks; c < g.block_end(b); ++c) {
                __m256i prod[R][2];
#pragma GCC unroll 2
                for (unsigned h = 0; h < 2; ++h) {
                    const __m256i x =
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + c * 64 + h * 32));
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) {
                        __m256i sg = _mm256_or_si256(expand(binary_word32(s[r] + c, h)), one8);
                        if constexpr (M == binary_mask_mode::direct)
                            sg = _mm256_and_si256(sg, expand(binary_word32(m[r] + c, h)));
                        else if constexpr (M == binary_mask_mode::inverted)
                            sg = _mm256_andnot_si256(expand(binary_word32(m[r] + c, h)), sg);
                        prod[r][h] = _mm256_maddubs_epi16(one8, _mm256_sign_epi8(x, sg));
                    }
                }
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r)
                    acc[r] = _mm256_add_epi32(
                        acc[r],
                        _mm256_madd_epi16(_mm256_add_epi16(prod[r][0], prod[r][1]), ones16));
            }
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                __m128i v = _mm_add_epi32(_mm256_castsi256_si128(acc[r]),
                                          _mm256_extracti128_si256(acc[r], 1));
                v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4E));
                v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xB1));
                out[std::size_t(r) * ldo + b] = -_mm_cvtsi128_si32(v);
            }
        }
    }

    template <int R, binary_mask_mode M>
    __attribute__((noinline)) static void float_tile(const binary_plane_ref& p,
                                                     const binary_geometry& g, std::size_t r0,
                                                     const float* z, const float* /*zsum*/,
                                                     float* out, std::size_t ldo) noexcept {
        const std::uint64_t* s[R];
        const std::uint64_t* m[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            s[r] = p.signs + (r0 + std::size_t(r)) * p.sign_stride;
            m[r] =
                M == binary_mask_mode::none ? s[r] : p.mask + (r0 + std::size_t(r)) * p.mask_stride;
        }
        // shift[q], lane l: moves bit 8q + l of a 32-bit word to bit 31.
        __m256i shift[4];
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q)
            shift[q] = _mm256_sub_epi32(_mm256_set1_epi32(31 - 8 * q),
                                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
        for (std::size_t b = 0; b < g.blocks; ++b) {
            __m256 acc[R][2];
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
            for (std::size_t c = b * g.block_chunks; c < g.block_end(b); ++c)
#pragma GCC unroll 2
                for (unsigned h = 0; h < 2; ++h) {
                    __m256i ws[R], wm[R];
#pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) {
                        ws[r] = _mm256_set1_epi32(static_cast<int>(binary_word32(s[r] + c, h)));
                        wm[r] =
                            M == binary_mask_mode::none
                                ? ws[r]
                                : _mm256_set1_epi32(static_cast<int>(binary_word32(m[r] + c, h)));
                    }
#pragma GCC unroll 4
                    for (int q = 0; q < 4; ++q) {
                        const __m256 x = _mm256_loadu_ps(z + c * 64 + h * 32 + unsigned(q) * 8);
#pragma GCC unroll 8
                        for (int r = 0; r < R; ++r) {
                            const __m256i sb =
                                _mm256_and_si256(_mm256_sllv_epi32(ws[r], shift[q]), sign);
                            __m256 v = _mm256_xor_ps(x, _mm256_castsi256_ps(sb));
                            if constexpr (M != binary_mask_mode::none) {
                                const __m256 mm = _mm256_castsi256_ps(
                                    _mm256_srai_epi32(_mm256_sllv_epi32(wm[r], shift[q]), 31));
                                v = M == binary_mask_mode::direct ? _mm256_and_ps(v, mm)
                                                                  : _mm256_andnot_ps(mm, v);
                            }
                            acc[r][q & 1] = _mm256_add_ps(acc[r][q & 1], v);
                        }
                    }
                }
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                const __m256 v = _mm256_add_ps(acc[r][0], acc[r][1]);
                __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
                s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
                out[std::size_t(r) * ldo + b] = -_mm_cvtss_f32(s4);
            }
        }
    }
};
#endif

}  // namespace qift::detail
