// SPDX-License-Identifier: MIT
// Kernels behind gemv.hpp / gemm.hpp: integer W2A4 / W4A4 dot-product tiles (byte-shuffle decode
// + integer multiply-add on x86, literal shift-add on the portable xsimd path) and the float
// W2A16 tile, each with its scalar reference.
#pragma once

#include <array>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "xsimd.hpp"

#include "../levels.hpp"
#include "../pack.hpp"

namespace qift {

/// Level sets the integer (A4) kernels accept: an integer form (levels · integer_multiplier
/// are integers) of magnitude at most 15, stored in 2 or 4 bits. Every built-in set except
/// NF2, Lloyd, the ratio family and binary qualifies (PoT-MNZ {±1,±4}, MNZ {±1,±3}, standard,
/// asymmetric, pm12, ternary, int3, int4, E2M1 {0,±1,...,±12}).
template <class L>
concept integer_dot_level_set = integer_level_set<L> &&
                                (storage_bits<L> == 2 || storage_bits<L> == 4) &&
                                [] {
                                    for (auto v : level_traits<L>::integer_levels)
                                        if (v > 15 || v < -15) return false;
                                    return true;
                                }();

/// Level sets the float (W2A16) kernels accept: any set stored in 2 or 4 bits.
template <class L>
concept packed_level_set = level_set<L> &&(storage_bits<L> == 2 || storage_bits<L> == 4);

namespace detail {

/// Compile-time tables of the integer kernels for level set L.
///   level[c]  integer level of code c (0 for codes beyond the table: never stored)
///   offset    −min level (or 0): u[c] = level[c] + offset is in [0, 30], an unsigned byte
/// The x86 kernels compute Σ u·a with unsigned×signed byte products (vpdpbusd / vpmaddubsw)
/// and subtract offset·Σa; the identity Σ level·a = Σ u·a − offset·Σa is exact in integers.
template <class L>
struct integer_dot_tables {
    static constexpr unsigned bits = storage_bits<L>;
    static constexpr std::size_t block_codes = packed_codes<bits>::block_codes;
    static constexpr std::size_t slots = packed_codes<bits>::slots;
    static constexpr std::array<std::int8_t, 16> level = [] {
        std::array<std::int8_t, 16> t{};
        for (std::size_t c = 0; c < level_traits<L>::count; ++c)
            t[c] = static_cast<std::int8_t>(level_traits<L>::integer_levels[c]);
        return t;
    }();
    static constexpr int offset = [] {
        int m = 0;
        for (auto v : level) m = v < m ? v : m;
        return -m;
    }();
    static constexpr std::array<std::uint8_t, 16> u = [] {
        std::array<std::uint8_t, 16> t{};
        for (std::size_t c = 0; c < 16; ++c) t[c] = static_cast<std::uint8_t>(level[c] + offset);
        return t;
    }();
    static_assert(offset >= 0 && offset <= 15);
};

// ---------------------------------------------------------------------------------------
// Overflow proof of the integer kernels (for every kernel below).
//
// Activations are INT4 codes, |a| <= 8; integer levels |l| <= 15 and offset levels 0 <= u <= 30
// (integer_dot_level_set); the padded row length is K <= 65536 = 2^16 (checked by the callers).
//  * int32 accumulators: |Σ l·a| <= 15·8·2^16 < 2^23; the unsigned-offset form adds at most
//    |Σ u·a| <= 30·8·2^16 < 2^24 and subtracts offset·|Σa| <= 15·8·2^16 < 2^23. Every partial
//    sum fits int32 with room to spare.
//  * int16 intermediates (vpmaddubsw path): one vpmaddubsw lane is u1·a1 + u2·a2, |.| <= 2·30·8
//    = 480 (never saturates); the kernel adds the lanes of the S <= 4 slots of one block before
//    widening with vpmaddwd: |.| <= 4·480 = 1920 < 2^15.
//  * int8 intermediates (shift-add path): one product l·a, |.| <= 15·8 = 120 < 2^7; it is
//    widened to int16 lanes holding two products (<= 240) summed over at most 64 slots before
//    flushing to int32: 64·240 = 15360 < 2^15.
inline constexpr std::size_t max_dot_length = 65536;

/// Scalar reference (the oracle, bit-exact with every integer kernel): for i < rows, j < tokens
///   out[i·ldo + j] = Σ_{k < blocks·block_codes} level[code(i, k)] · a[j·a_stride + k]
/// where code(i, k) is read from `w + i·w_stride` in the packed layout of pack.hpp.
/// Complexity O(rows · tokens · blocks · block_codes).
template <integer_dot_level_set L>
void integer_dot_scalar(const std::uint8_t* w, std::size_t w_stride, std::size_t rows,
                        std::size_t blocks, const std::int8_t* a, std::size_t a_stride,
                        std::size_t tokens, std::int32_t* out, std::size_t ldo) noexcept {
    using T = integer_dot_tables<L>;
    using P = packed_codes<T::bits>;
    const std::size_t k_end = blocks * T::block_codes;
    for (std::size_t i = 0; i < rows; ++i)
        for (std::size_t j = 0; j < tokens; ++j) {
            std::int32_t sum = 0;
            for (std::size_t k = 0; k < k_end; ++k) {
                const unsigned code = (w[i * w_stride + P::byte_of(k)] >> P::shift_of(k)) & P::mask;
                sum += std::int32_t{T::level[code]} * std::int32_t{a[j * a_stride + k]};
            }
            out[i * ldo + j] = sum;
        }
}

/// Integer dot tile by literal shift-add, the portable xsimd path (any xsimd architecture).
/// Per 64 codes: c = (block >> slot·bits) & mask, then the product l·a is built without a
/// multiply: a·|l| as a sum of the doublings a, 2a, 4a, 8a selected by the bits of |l| (PoT-MNZ:
/// a or 4a; MNZ: a or 2a + a), negated where l < 0, and picked per lane by compare/select on
/// c. Same contract as integer_dot_scalar.
struct integer_dot_shift_add {
    template <class Arch, integer_dot_level_set L>
    void operator()(Arch, L, const std::uint8_t* w, std::size_t w_stride, std::size_t rows,
                    std::size_t blocks, const std::int8_t* a, std::size_t a_stride,
                    std::size_t tokens, std::int32_t* out, std::size_t ldo) const noexcept {
        using T = integer_dot_tables<L>;
        using b8 = xsimd::batch<std::int8_t, Arch>;
        using u8 = xsimd::batch<std::uint8_t, Arch>;
        using b16 = xsimd::batch<std::int16_t, Arch>;
        using u16 = xsimd::batch<std::uint16_t, Arch>;
        using b32 = xsimd::batch<std::int32_t, Arch>;
        constexpr std::size_t width = b8::size;
        static_assert(64 % width == 0, "a 64-byte block must hold whole batches");
        constexpr std::size_t count = level_traits<L>::count;
        for (std::size_t i = 0; i < rows; ++i)
            for (std::size_t j = 0; j < tokens; ++j) {
                const std::uint8_t* wr = w + i * w_stride;
                const std::int8_t* ar = a + j * a_stride;
                b32 acc32(0);
                b16 acc16(0);
                std::size_t pending = 0;
                for (std::size_t b = 0; b < blocks; ++b)
                    for (std::size_t s = 0; s < T::slots; ++s)
                        for (std::size_t v = 0; v < 64; v += width) {
                            const u16 raw =
                                xsimd::bitwise_cast<u16>(u8::load_unaligned(wr + b * 64 + v));
                            // 16-bit shift, then a byte mask that drops the bits leaking in
                            // from the neighbouring byte.
                            const b8 code = xsimd::bitwise_cast<b8>(
                                xsimd::bitwise_cast<u8>(raw >> static_cast<int>(s * T::bits)) &
                                u8(packed_codes<T::bits>::mask));
                            const b8 x1 = b8::load_unaligned(ar + b * T::block_codes + s * 64 + v);
                            const b8 x2 = x1 + x1, x4 = x2 + x2, x8 = x4 + x4;
                            b8 p(0);
                            [&]<std::size_t... C>(std::index_sequence<C...>) {
                                const auto term = [&](auto cc) {
                                    constexpr int l = T::level[decltype(cc)::value];
                                    constexpr int m = l < 0 ? -l : l;
                                    b8 t(0);
                                    if constexpr ((m & 1) != 0) t += x1;
                                    if constexpr ((m & 2) != 0) t += x2;
                                    if constexpr ((m & 4) != 0) t += x4;
                                    if constexpr ((m & 8) != 0) t += x8;
                                    if constexpr (l < 0) t = -t;
                                    if constexpr (m != 0)
                                        p = xsimd::select(code == b8(static_cast<std::int8_t>(
                                                                      decltype(cc)::value)),
                                                          t, p);
                                };
                                (term(std::integral_constant<std::size_t, C>{}), ...);
                            }
                            (std::make_index_sequence<count>{});
                            // Widen the int8 products: sign-extended low and high bytes of
                            // each 16-bit lane.
                            const b16 p16 = xsimd::bitwise_cast<b16>(p);
                            acc16 += ((p16 << 8) >> 8) + (p16 >> 8);
                            if (++pending == 64) {
                                const b32 q = xsimd::bitwise_cast<b32>(acc16);
                                acc32 += ((q << 16) >> 16) + (q >> 16);
                                acc16 = b16(0);
                                pending = 0;
                            }
                        }
                const b32 q = xsimd::bitwise_cast<b32>(acc16);
                acc32 += ((q << 16) >> 16) + (q >> 16);
                // Lane sum through memory: xsimd's 512-bit hadd trips GCC 12's
                // -Wmaybe-uninitialized (bug 105593) in sanitizer builds.
                alignas(64) std::int32_t lanes[b32::size];
                acc32.store_aligned(lanes);
                std::int32_t sum = 0;
                for (std::int32_t v : lanes) sum += v;
                out[i * ldo + j] = sum;
            }
    }
};

#if defined(__AVX2__)
inline std::int32_t hsum_epi32(__m256i v) noexcept {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}
#endif

/// Integer dot tile by byte-shuffle decode and integer multiply-add, the x86 path (AVX2 and
/// AVX-512BW, with VNNI vpdpbusd where the target has it). Why this realizes "no multiplies by
/// weights": a 2-bit code selects one of four small integers, so decoding is a table lookup
/// (vpshufb: 16-entry byte table, indexed by 4 bits = two codes, so four slots of 64 codes cost
/// 2 masks, 1 shift and 4 shuffles per 64-byte block), and the dot product then runs on the
/// integer multiply-add unit, which multiplies bytes by bytes at 64 (AVX-512) products an
/// instruction; the literal sign/shift/select of integer_dot_shift_add needs ~8 ops per 64
/// products for PoT-MNZ before widening and measures slower (bench_gemv, PoT-MNZ 4096x4096, one
/// Zen 5 thread, weights hot: 108 µs here against 588 µs for the shift-add kernel). Unsigned×signed
/// products use u = level + offset (integer_dot_tables) and subtract offset·Σa, with
/// asum[j] = Σ_k a[j·a_stride + k] supplied by the caller (quantized_activations::sums).
/// Same contract as integer_dot_scalar otherwise; on other architectures it runs
/// integer_dot_shift_add.
struct integer_dot_lut_madd {
    template <class Arch, integer_dot_level_set L>
    void operator()(Arch arch, L set, const std::uint8_t* w, std::size_t w_stride, std::size_t rows,
                    std::size_t blocks, const std::int8_t* a, std::size_t a_stride,
                    const std::int32_t* asum, std::size_t tokens, std::int32_t* out,
                    std::size_t ldo) const noexcept {
        constexpr bool use512 =
#if defined(__AVX512BW__)
            std::is_base_of_v<xsimd::avx512bw, Arch>;
#else
            false;
#endif
        constexpr bool use256 =
#if defined(__AVX2__)
            !use512 && std::is_base_of_v<xsimd::avx2, Arch>;
#else
            false;
#endif
        if constexpr (use512 || use256) {
            std::size_t i = 0;
            for (; i + 4 <= rows; i += 4)
                tiles<4, use512, L>(w + i * w_stride, w_stride, blocks, a, a_stride, asum, tokens,
                                    out + i * ldo, ldo);
            for (; i < rows; ++i)
                tiles<1, use512, L>(w + i * w_stride, w_stride, blocks, a, a_stride, asum, tokens,
                                    out + i * ldo, ldo);
        } else {
            integer_dot_shift_add{}(arch, set, w, w_stride, rows, blocks, a, a_stride, tokens, out,
                                    ldo);
            (void)asum;
        }
    }

  private:
    template <int R, bool Wide, class L>
    static void tiles(const std::uint8_t* w, std::size_t w_stride, std::size_t blocks,
                      const std::int8_t* a, std::size_t a_stride, const std::int32_t* asum,
                      std::size_t tokens, std::int32_t* out, std::size_t ldo) noexcept {
        std::size_t j = 0;
        for (; j + 4 <= tokens; j += 4)
            tile<R, 4, Wide, L>(w, w_stride, blocks, a + j * a_stride, a_stride, asum + j, out + j,
                                ldo);
        for (; j < tokens; ++j)
            tile<R, 1, Wide, L>(w, w_stride, blocks, a + j * a_stride, a_stride, asum + j, out + j,
                                ldo);
    }

    template <int R, int Tk, bool Wide, class L>
    static void tile(const std::uint8_t* w, std::size_t w_stride, std::size_t blocks,
                     const std::int8_t* a, std::size_t a_stride, const std::int32_t* asum,
                     std::int32_t* out, std::size_t ldo) noexcept {
        using T = integer_dot_tables<L>;
        // Table 0 decodes the code in bits 0-1 of a 4-bit index, table 1 the code in bits 2-3
        // (2-bit storage); 4-bit storage uses table 0 = u directly.
        alignas(16) std::array<std::uint8_t, 16> t0{}, t1{};
        for (std::size_t n = 0; n < 16; ++n) {
            t0[n] = T::bits == 2 ? T::u[n & 3] : T::u[n];
            t1[n] = T::bits == 2 ? T::u[n >> 2] : 0;
        }
        std::int32_t res[R][Tk];
        if constexpr (Wide) {
#if defined(__AVX512BW__)
            const __m512i lut0 =
                _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(t0.data())));
            const __m512i lut1 =
                _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(t1.data())));
            const __m512i nib = _mm512_set1_epi8(0x0F);
            __m512i acc[R][Tk];
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
                for (int t = 0; t < Tk; ++t) acc[r][t] = _mm512_setzero_si512();
#if !defined(__AVX512VNNI__)
            const __m512i ones = _mm512_set1_epi16(1);
#endif
            for (std::size_t b = 0; b < blocks; ++b) {
                __m512i dec[R][T::slots];
#pragma GCC unroll 16
                for (int r = 0; r < R; ++r) {
                    const __m512i blk = _mm512_load_si512(w + std::size_t(r) * w_stride + b * 64);
                    const __m512i lo = _mm512_and_si512(blk, nib);
                    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(blk, 4), nib);
                    if constexpr (T::bits == 2) {
                        dec[r][0] = _mm512_shuffle_epi8(lut0, lo);
                        dec[r][1] = _mm512_shuffle_epi8(lut1, lo);
                        dec[r][2] = _mm512_shuffle_epi8(lut0, hi);
                        dec[r][3] = _mm512_shuffle_epi8(lut1, hi);
                    } else {
                        dec[r][0] = _mm512_shuffle_epi8(lut0, lo);
                        dec[r][1] = _mm512_shuffle_epi8(lut0, hi);
                    }
                }
#pragma GCC unroll 16
                for (int t = 0; t < Tk; ++t) {
                    const std::int8_t* at = a + std::size_t(t) * a_stride + b * T::block_codes;
#if defined(__AVX512VNNI__)
#pragma GCC unroll 16
                    for (std::size_t s = 0; s < T::slots; ++s) {
                        const __m512i x = _mm512_load_si512(at + s * 64);
#pragma GCC unroll 16
                        for (int r = 0; r < R; ++r)
                            acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], dec[r][s], x);
                    }
#else
                    __m512i x[T::slots];
#pragma GCC unroll 16
                    for (std::size_t s = 0; s < T::slots; ++s)
                        x[s] = _mm512_load_si512(at + s * 64);
#pragma GCC unroll 16
                    for (int r = 0; r < R; ++r) {
                        __m512i p = _mm512_maddubs_epi16(dec[r][0], x[0]);
#pragma GCC unroll 16
                        for (std::size_t s = 1; s < T::slots; ++s)
                            p = _mm512_add_epi16(p, _mm512_maddubs_epi16(dec[r][s], x[s]));
                        acc[r][t] = _mm512_add_epi32(acc[r][t], _mm512_madd_epi16(p, ones));
                    }
#endif
                }
            }
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
                for (int t = 0; t < Tk; ++t) res[r][t] = _mm512_reduce_add_epi32(acc[r][t]);
#endif
        } else {
#if defined(__AVX2__)
            const __m256i lut0 = _mm256_broadcastsi128_si256(
                _mm_load_si128(reinterpret_cast<const __m128i*>(t0.data())));
            const __m256i lut1 = _mm256_broadcastsi128_si256(
                _mm_load_si128(reinterpret_cast<const __m128i*>(t1.data())));
            const __m256i nib = _mm256_set1_epi8(0x0F);
            const __m256i ones = _mm256_set1_epi16(1);
            __m256i acc[R][Tk];
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
                for (int t = 0; t < Tk; ++t) acc[r][t] = _mm256_setzero_si256();
            for (std::size_t b = 0; b < blocks; ++b)
#pragma GCC unroll 16
                for (std::size_t h = 0; h < 64; h += 32) {
                    __m256i dec[R][T::slots];
#pragma GCC unroll 16
                    for (int r = 0; r < R; ++r) {
                        const __m256i blk = _mm256_load_si256(reinterpret_cast<const __m256i*>(
                            w + std::size_t(r) * w_stride + b * 64 + h));
                        const __m256i lo = _mm256_and_si256(blk, nib);
                        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(blk, 4), nib);
                        if constexpr (T::bits == 2) {
                            dec[r][0] = _mm256_shuffle_epi8(lut0, lo);
                            dec[r][1] = _mm256_shuffle_epi8(lut1, lo);
                            dec[r][2] = _mm256_shuffle_epi8(lut0, hi);
                            dec[r][3] = _mm256_shuffle_epi8(lut1, hi);
                        } else {
                            dec[r][0] = _mm256_shuffle_epi8(lut0, lo);
                            dec[r][1] = _mm256_shuffle_epi8(lut0, hi);
                        }
                    }
#pragma GCC unroll 16
                    for (int t = 0; t < Tk; ++t) {
                        const std::int8_t* at =
                            a + std::size_t(t) * a_stride + b * T::block_codes + h;
                        __m256i x[T::slots];
#pragma GCC unroll 16
                        for (std::size_t s = 0; s < T::slots; ++s)
                            x[s] = _mm256_load_si256(reinterpret_cast<const __m256i*>(at + s * 64));
#pragma GCC unroll 16
                        for (int r = 0; r < R; ++r) {
                            __m256i p = _mm256_maddubs_epi16(dec[r][0], x[0]);
#pragma GCC unroll 16
                            for (std::size_t s = 1; s < T::slots; ++s)
                                p = _mm256_add_epi16(p, _mm256_maddubs_epi16(dec[r][s], x[s]));
                            acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(p, ones));
                        }
                    }
                }
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
                for (int t = 0; t < Tk; ++t) res[r][t] = hsum_epi32(acc[r][t]);
#endif
        }
        (void)t1;
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
            for (int t = 0; t < Tk; ++t)
                out[std::size_t(r) * ldo + std::size_t(t)] = res[r][t] - T::offset * asum[t];
    }
};

// ---------------------------------------------------------------------------------------
// Float (W2A16) tiles

/// Scalar reference of the float path: for i < rows, j < tokens
///   out[i·ldo + j] = Σ_{k < blocks·block_codes} lut[i·16 + code(i, k)] · x[j·x_stride + k]
/// with `lut` the per-row decoded levels (levels[c] − zero of that row, 16 entries a row).
template <unsigned Bits>
void float_dot_scalar(const std::uint8_t* w, std::size_t w_stride, std::size_t rows,
                      std::size_t blocks, const float* lut, const float* x, std::size_t x_stride,
                      std::size_t tokens, float* out, std::size_t ldo) noexcept {
    using P = packed_codes<Bits>;
    const std::size_t k_end = blocks * P::block_codes;
    for (std::size_t i = 0; i < rows; ++i)
        for (std::size_t j = 0; j < tokens; ++j) {
            float sum = 0.0f;
            for (std::size_t k = 0; k < k_end; ++k) {
                const unsigned code = (w[i * w_stride + P::byte_of(k)] >> P::shift_of(k)) & P::mask;
                sum += lut[i * 16 + code] * x[j * x_stride + k];
            }
            out[i * ldo + j] = sum;
        }
}

/// Float dot tile: decode codes to float levels through a per-row 16-entry table and
/// fused-multiply-add with float activations. AVX-512: vpmovzxbd + shift/mask + vpermps per 16
/// codes; AVX2: the same with 8 codes and (4-bit) two vpermps and a blend; other
/// architectures decode 64 codes into a buffer and run xsimd FMAs. Same contract as
/// float_dot_scalar; float rounding differs from it (several partial sums).
struct float_dot_lut_fma {
    template <class Arch, unsigned Bits>
    void operator()(Arch, std::integral_constant<unsigned, Bits>, const std::uint8_t* w,
                    std::size_t w_stride, std::size_t rows, std::size_t blocks, const float* lut,
                    const float* x, std::size_t x_stride, std::size_t tokens, float* out,
                    std::size_t ldo) const noexcept {
        constexpr bool use512 =
#if defined(__AVX512F__)
            std::is_base_of_v<xsimd::avx512f, Arch>;
#else
            false;
#endif
        constexpr bool use256 =
#if defined(__AVX2__) && defined(__FMA__)
            !use512 && std::is_base_of_v<xsimd::avx2, Arch>;
#else
            false;
#endif
        if constexpr (use512 || use256) {
            std::size_t i = 0;
            for (; i + 4 <= rows; i += 4)
                tiles<4, use512, Bits>(w + i * w_stride, w_stride, blocks, lut + i * 16, x,
                                       x_stride, tokens, out + i * ldo, ldo);
            for (; i < rows; ++i)
                tiles<1, use512, Bits>(w + i * w_stride, w_stride, blocks, lut + i * 16, x,
                                       x_stride, tokens, out + i * ldo, ldo);
        } else {
            using bf = xsimd::batch<float, Arch>;
            using P = packed_codes<Bits>;
            static_assert(64 % bf::size == 0);
            alignas(64) float dec[64];
            for (std::size_t i = 0; i < rows; ++i)
                for (std::size_t j = 0; j < tokens; ++j) {
                    bf acc(0.0f);
                    for (std::size_t b = 0; b < blocks; ++b)
#pragma GCC unroll 16
                        for (std::size_t s = 0; s < P::slots; ++s) {
                            for (std::size_t v = 0; v < 64; ++v)
                                dec[v] =
                                    lut[i * 16 +
                                        ((w[i * w_stride + b * 64 + v] >> (s * Bits)) & P::mask)];
                            const float* xs = x + j * x_stride + b * P::block_codes + s * 64;
                            for (std::size_t v = 0; v < 64; v += bf::size)
                                acc = xsimd::fma(bf::load_aligned(dec + v),
                                                 bf::load_unaligned(xs + v), acc);
                        }
                    out[i * ldo + j] = reduce_add(acc);
                }
        }
    }

  private:
    template <int R, bool Wide, unsigned Bits>
    static void tiles(const std::uint8_t* w, std::size_t w_stride, std::size_t blocks,
                      const float* lut, const float* x, std::size_t x_stride, std::size_t tokens,
                      float* out, std::size_t ldo) noexcept {
        std::size_t j = 0;
        for (; j + 4 <= tokens; j += 4)
            tile<R, 4, Wide, Bits>(w, w_stride, blocks, lut, x + j * x_stride, x_stride, out + j,
                                   ldo);
        for (; j < tokens; ++j)
            tile<R, 1, Wide, Bits>(w, w_stride, blocks, lut, x + j * x_stride, x_stride, out + j,
                                   ldo);
    }

    template <int R, int Tk, bool Wide, unsigned Bits>
    static void tile(const std::uint8_t* w, std::size_t w_stride, std::size_t blocks,
                     const float* lut, const float* x, std::size_t x_stride, float* out,
                     std::size_t ldo) noexcept {
        using P = packed_codes<Bits>;
        float res[R][Tk];
        if constexpr (Wide) {
#if defined(__AVX512F__)
            // Two accumulator sets (even/odd slot) hide the FMA latency in the GEMV case.
            __m512i mask = _mm512_set1_epi32(P::mask);
            __m512 tab[R];
            __m512 acc[2][R][Tk];
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) {
                tab[r] = _mm512_loadu_ps(lut + r * 16);
#pragma GCC unroll 16
                for (int t = 0; t < Tk; ++t) acc[0][r][t] = acc[1][r][t] = _mm512_setzero_ps();
            }
            for (std::size_t b = 0; b < blocks; ++b)
                for (std::size_t q = 0; q < 64; q += 16) {
                    __m512i c[R];
#pragma GCC unroll 16
                    for (int r = 0; r < R; ++r)
                        c[r] = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(
                            w + std::size_t(r) * w_stride + b * 64 + q)));
#pragma GCC unroll 16
                    for (std::size_t s = 0; s < P::slots; ++s) {
                        __m512 wv[R];
#pragma GCC unroll 16
                        for (int r = 0; r < R; ++r)
                            wv[r] = _mm512_permutexvar_ps(
                                _mm512_and_si512(_mm512_srli_epi32(c[r], unsigned(s * Bits)), mask),
                                tab[r]);
#pragma GCC unroll 16
                        for (int t = 0; t < Tk; ++t) {
                            const __m512 xv = _mm512_loadu_ps(x + std::size_t(t) * x_stride +
                                                              b * P::block_codes + s * 64 + q);
#pragma GCC unroll 16
                            for (int r = 0; r < R; ++r)
                                acc[s & 1][r][t] = _mm512_fmadd_ps(wv[r], xv, acc[s & 1][r][t]);
                        }
                    }
                }
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
                for (int t = 0; t < Tk; ++t)
                    res[r][t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][r][t], acc[1][r][t]));
#endif
        } else {
#if defined(__AVX2__) && defined(__FMA__)
            const __m256i mask = _mm256_set1_epi32(P::mask);
            __m256 tab_lo[R], tab_hi[R];
            __m256 acc[2][R][Tk];
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) {
                tab_lo[r] = _mm256_loadu_ps(lut + r * 16);
                tab_hi[r] = _mm256_loadu_ps(lut + r * 16 + 8);
#pragma GCC unroll 16
                for (int t = 0; t < Tk; ++t) acc[0][r][t] = acc[1][r][t] = _mm256_setzero_ps();
            }
            for (std::size_t b = 0; b < blocks; ++b)
                for (std::size_t q = 0; q < 64; q += 8) {
                    __m256i c[R];
#pragma GCC unroll 16
                    for (int r = 0; r < R; ++r)
                        c[r] =
                            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(
                                w + std::size_t(r) * w_stride + b * 64 + q)));
#pragma GCC unroll 16
                    for (std::size_t s = 0; s < P::slots; ++s) {
                        __m256 wv[R];
#pragma GCC unroll 16
                        for (int r = 0; r < R; ++r) {
                            const __m256i idx =
                                _mm256_and_si256(_mm256_srli_epi32(c[r], int(s * Bits)), mask);
                            if constexpr (Bits == 2) {
                                wv[r] = _mm256_permutevar8x32_ps(tab_lo[r], idx);
                            } else {
                                // bit 3 of the index, moved to the sign bit, picks the upper table
                                const __m256 hi_sel =
                                    _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
                                wv[r] = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tab_lo[r], idx),
                                                         _mm256_permutevar8x32_ps(tab_hi[r], idx),
                                                         hi_sel);
                            }
                        }
#pragma GCC unroll 16
                        for (int t = 0; t < Tk; ++t) {
                            const __m256 xv = _mm256_loadu_ps(x + std::size_t(t) * x_stride +
                                                              b * P::block_codes + s * 64 + q);
#pragma GCC unroll 16
                            for (int r = 0; r < R; ++r)
                                acc[s & 1][r][t] = _mm256_fmadd_ps(wv[r], xv, acc[s & 1][r][t]);
                        }
                    }
                }
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
                for (int t = 0; t < Tk; ++t) {
                    const __m256 v = _mm256_add_ps(acc[0][r][t], acc[1][r][t]);
                    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
                    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
                    res[r][t] = _mm_cvtss_f32(s4);
                }
#endif
        }
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
            for (int t = 0; t < Tk; ++t) out[std::size_t(r) * ldo + std::size_t(t)] = res[r][t];
    }
};

}  // namespace detail
}  // namespace qift
