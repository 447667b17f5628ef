// SPDX-License-Identifier: MIT
// Kernels behind gemv.hpp / gemm.hpp: integer W2A4 / W4A4 dot-product tiles (byte-shuffle decode
// + integer multiply-add on x86, literal shift-add on the portable xsimd path) and the float
// W2A16 tile, each with its scalar reference.
#pragma once

#include "target.hpp"

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

namespace qift::inline QIFT_ISA {

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
//  * The VNNI GEMV tile (integer_dot_lut_madd::gemv_tile) keeps one int32 accumulator per slot:
//    its bytes are u <= 30, or for linear sets 2^(bits·s)·c <= 240, so each product is at most
//    255·8 and |acc| <= 255·8·2^16 < 2^27; the shift back by bits·s is exact (every term of
//    that accumulator is a multiple of 2^(bits·s)) and the scaled sum is the bound above.
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

/// Decode tables of the 256-bit kernels for level set L (no intrinsics: usable on any x86
/// target). linear: the offset levels are u[c] = scale·c, so a mask alone decodes slot s to
/// 2^shift(s)·c (the caller shifts the slot's sum back, exactly). table0 / table1: u of the code
/// in bits [0, bits) / [bits, 2·bits) of a 4-bit index (vpshufb tables; 4-bit sets use table0).
template <class L>
struct nibble_decode {
    using T = integer_dot_tables<L>;
    static constexpr bool linear = [] {
        for (std::size_t c = 0; c < (std::size_t{1} << T::bits); ++c)
            if (T::u[c] != T::u[1] * c) return false;
        return true;
    }();
    static constexpr int scale = linear ? int(T::u[1]) : 1;
    static constexpr unsigned shift(int s) noexcept { return unsigned(s) * T::bits; }
    alignas(16) static constexpr std::array<std::uint8_t, 16> table0 = [] {
        std::array<std::uint8_t, 16> t{};
        for (std::size_t i = 0; i < 16; ++i) t[i] = T::u[i & packed_codes<T::bits>::mask];
        return t;
    }();
    alignas(16) static constexpr std::array<std::uint8_t, 16> table1 = [] {
        std::array<std::uint8_t, 16> t{};
        for (std::size_t i = 0; i < 16; ++i)
            t[i] = T::bits == 2 ? T::u[(i >> 2) & packed_codes<T::bits>::mask] : 0;
        return t;
    }();
};

#if defined(__AVX512BW__)
/// Decoding of 64-byte blocks of level set L into S registers of unsigned bytes u, register s
/// holding the codes of slot s. Sets whose offset levels are linear in the code (u[c] = scale·c:
/// standard, MNZ, int4, ...) are decoded by a mask alone, to 2^(bits·s)·c; the caller shifts the
/// slot-s sum right by shift(s) (exact) and multiplies by scale. Other sets go through a byte
/// table: vpermb (VBMI: 64 entries, the 6 low bits select, so no mask) or vpshufb.
template <class L>
struct block_decode_512 {
    using T = integer_dot_tables<L>;
    static constexpr int S = int(T::slots);
    static constexpr bool linear = [] {
        for (std::size_t c = 0; c < (std::size_t{1} << T::bits); ++c)
            if (T::u[c] != T::u[1] * c) return false;
        return true;
    }();
    static constexpr int scale = linear ? int(T::u[1]) : 1;
    static constexpr unsigned shift(int s) noexcept { return unsigned(s) * T::bits; }
    // Table k maps a byte to u of the code in bits [k·bits, k·bits + bits) of its index.
    static constexpr std::array<std::uint8_t, 64> table(unsigned k) noexcept {
        std::array<std::uint8_t, 64> t{};
        for (std::size_t i = 0; i < 64; ++i)
            t[i] = T::u[(i >> (k * T::bits)) & packed_codes<T::bits>::mask];
        return t;
    }
    alignas(64) static constexpr std::array<std::uint8_t, 64> table0 = table(0);
    alignas(64) static constexpr std::array<std::uint8_t, 64> table1 = table(1);
    alignas(64) static constexpr std::array<std::uint8_t, 64> table2 = table(2);

    /// The three tables (table k in lut[k]) as registers.
    static void load(__m512i (&lut)[3]) noexcept {
        lut[0] = _mm512_load_si512(table0.data());
        lut[1] = _mm512_load_si512(table1.data());
        lut[2] = _mm512_load_si512(table2.data());
    }

    __attribute__((always_inline)) static inline void run(__m512i blk, const __m512i (&lut)[3],
                                                          __m512i (&d)[S]) noexcept {
        if constexpr (linear) {
#pragma GCC unroll 4
            for (int s = 0; s < S; ++s)
                d[s] = _mm512_and_si512(
                    blk,
                    _mm512_set1_epi8(static_cast<char>(packed_codes<T::bits>::mask << shift(s))));
        } else {
#if defined(__AVX512VBMI__)
            if constexpr (T::bits == 2) {
                d[0] = _mm512_permutexvar_epi8(blk, lut[0]);
                d[1] = _mm512_permutexvar_epi8(blk, lut[1]);
                d[2] = _mm512_permutexvar_epi8(blk, lut[2]);
                // Bits 6-7 move to 4-5; what the 16-bit shift brings into bits 6-7 is ignored.
                d[3] = _mm512_permutexvar_epi8(_mm512_srli_epi16(blk, 2), lut[2]);
            } else {
                d[0] = _mm512_permutexvar_epi8(blk, lut[0]);
                d[1] = _mm512_permutexvar_epi8(_mm512_srli_epi16(blk, 4), lut[0]);
            }
#else
            // vpshufb reads 4 index bits (and gives 0 where bit 7 is set): nibbles first. Its
            // tables are the first 16 entries of table 0 and 1, in each 128-bit lane.
            const __m512i nib = _mm512_set1_epi8(0x0F);
            const __m512i lo = _mm512_and_si512(blk, nib);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(blk, 4), nib);
            const __m512i t0 = _mm512_shuffle_i32x4(lut[0], lut[0], 0);
            if constexpr (T::bits == 2) {
                const __m512i t1 = _mm512_shuffle_i32x4(lut[1], lut[1], 0);
                d[0] = _mm512_shuffle_epi8(t0, lo);
                d[1] = _mm512_shuffle_epi8(t1, lo);
                d[2] = _mm512_shuffle_epi8(t0, hi);
                d[3] = _mm512_shuffle_epi8(t1, hi);
            } else {
                d[0] = _mm512_shuffle_epi8(t0, lo);
                d[1] = _mm512_shuffle_epi8(t0, hi);
            }
#endif
        }
    }

    /// Slot s alone through the tables (to u), for tiles that decode slot by slot.
    template <int s>
    __attribute__((always_inline)) static inline __m512i slot(__m512i blk,
                                                              const __m512i (&lut)[3]) noexcept {
#if defined(__AVX512VBMI__)
        if constexpr (T::bits == 2)
            return s < 3 ? _mm512_permutexvar_epi8(blk, lut[s])
                         : _mm512_permutexvar_epi8(_mm512_srli_epi16(blk, 2), lut[2]);
        else
            return _mm512_permutexvar_epi8(s == 0 ? blk : _mm512_srli_epi16(blk, 4), lut[0]);
#else
        const __m512i nib = _mm512_set1_epi8(0x0F);
        const __m512i idx =
            _mm512_and_si512(s * T::bits < 4 ? blk : _mm512_srli_epi16(blk, 4), nib);
        const int k = T::bits == 2 ? s % 2 : 0;
        return _mm512_shuffle_epi8(_mm512_shuffle_i32x4(lut[k], lut[k], 0), idx);
#endif
    }
};

/// Horizontal sums of R int32 vectors at once (R = 1, 2, 4 or 8): res[r] = Σ lanes of v[r].
/// Halving and pairwise adds reduce them together, about 2 instructions a row instead of ~8.
template <int R>
inline void reduce_rows_epi32(const __m512i* v, std::int32_t* res) noexcept {
    if constexpr (R < 4) {
        for (int r = 0; r < R; ++r) res[r] = _mm512_reduce_add_epi32(v[r]);
    } else {
        const auto half = [](__m512i x) {
            return _mm256_add_epi32(_mm512_castsi512_si256(x), _mm512_extracti64x4_epi64(x, 1));
        };
#pragma GCC unroll 2
        for (int g = 0; g < R; g += 4) {
            // [Σ4 of row g, g+1, g+2, g+3] in each 128-bit half, then the halves added.
            const __m256i p = _mm256_hadd_epi32(_mm256_hadd_epi32(half(v[g]), half(v[g + 1])),
                                                _mm256_hadd_epi32(half(v[g + 2]), half(v[g + 3])));
            _mm_store_si128(
                reinterpret_cast<__m128i*>(res + g),
                _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1)));
        }
    }
}
#endif

/// Whether the GEMV tiles (integer and float) prefetch their weights with the non-temporal hint
/// (locality 0) rather than T1 (locality 2): on AMD CPUs (checked once, at run time). Measured,
/// 4096² PoT-MNZ, one Zen 5 thread, median of 400 calls: cold no prefetch 293 µs, T0 212, T1 197,
/// NTA 118-127; hot none 60, T0 67, NTA 65. On a 2-core Sapphire Rapids VM (one thread; mean of two
/// interleaved runs of the four builds, load 4-6 on the 2 cores; µs, NTA / T0 / T1 / none) NTA is
/// 2-5x slower than the others, hot and cold: W2A4 MNZ 4096² hot 689 / 255 / 253 / 271, cold 1083 /
/// 723 / 749 / 952; 11008x4096 hot 2802 / 826 / 867 / 802, cold 3104 / 1793 / 1766 / 2645; W4A4
/// INT4 4096² hot 2275 / 611 / 614 / 572, cold 2443 / 1298 / 1148 / 1406; 11008x4096 hot 7000 /
/// 1678 / 1504 / 1500, cold 6783 / 3466 / 2830 / 3680. T1 is the best or within the noise
/// of the best in every case there (prefetching pays cold: up to 1.5x over none), hence T1
/// on other vendors.
inline bool prefetch_non_temporal() noexcept {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    static const bool amd = [] {
        __builtin_cpu_init();
        return __builtin_cpu_is("amd") != 0;
    }();
    return amd;
#else
    return false;
#endif
}

/// Bytes ahead (rounded up to whole row tiles) that the GEMV tiles prefetch their weights.
inline constexpr std::size_t gemv_prefetch_distance = 8192;

/// Integer dot tile by byte-shuffle decode and integer multiply-add, the x86 path (AVX2 and
/// AVX-512BW, with VNNI vpdpbusd where the target has it). Why this realizes "no multiplies by
/// weights": a 2-bit code selects one of four small integers, so decoding is a table lookup
/// (vpshufb: 16-entry byte table, indexed by 4 bits = two codes, so four slots of 64 codes cost
/// 2 masks, 1 shift and 4 shuffles per 64-byte block), and the dot product then runs on the
/// integer multiply-add unit, which multiplies bytes by bytes at 64 (AVX-512) products an
/// instruction; the literal sign/shift/select of integer_dot_shift_add needs ~8 ops per 64
/// products for PoT-MNZ before widening and measures slower (PoT-MNZ 4096x4096, one Zen 5
/// thread, weights hot: 588 µs for shift-add, 108 µs for the earlier vpshufb tile, ~62 µs best
/// of 600 calls for the VNNI GEMV tile below with vpermb decode, ~50 µs with MNZ's mask decode).
/// That gap is a port bound: on Zen 5 vpermb shares a port with vpdpbusd (16 of each take 10.7
/// cycles; 16 vpdpbusd + 16 vpand take 8.0), so PoT-MNZ's 4 vpermb + 4 vpdpbusd per 64-byte
/// block cost >= 2.67 cycles against 2.0 for MNZ; an exhaustive search found no decode of a
/// PoT-MNZ slot in two mask/add/min/avg-class instructions, which would avoid that port.
/// Unsigned×signed products use u = level + offset (integer_dot_tables) and subtract
/// offset·Σa, with asum[j] = Σ_k a[j·a_stride + k] supplied by the caller
/// (quantized_activations::sums).
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
            // Token tiles outside, row tiles inside: the activations of 4 tokens (4·K bytes)
            // stay in L1 while the rows pass, instead of every token streaming from L2 once
            // per row tile.
            std::size_t j = 0;
            for (; j + 4 <= tokens; j += 4)
                row_tiles<4, use512, L>(w, w_stride, rows, blocks, a + j * a_stride, a_stride,
                                        asum + j, out + j, ldo);
            for (; j < tokens; ++j)
                row_tiles<1, use512, L>(w, w_stride, rows, blocks, a + j * a_stride, a_stride,
                                        asum + j, out + j, ldo);
        } else {
            integer_dot_shift_add{}(arch, set, w, w_stride, rows, blocks, a, a_stride, tokens, out,
                                    ldo);
            (void)asum;
        }
    }

  private:
    static constexpr std::size_t prefetch_distance = gemv_prefetch_distance;

    template <int Tk, bool Wide, class L>
    static void row_tiles(const std::uint8_t* w, std::size_t w_stride, std::size_t rows,
                          std::size_t blocks, const std::int8_t* a, std::size_t a_stride,
                          const std::int32_t* asum, std::int32_t* out, std::size_t ldo) noexcept {
        if constexpr (Tk == 1) {
            if (prefetch_non_temporal())
                gemv_row_tiles<Wide, L, 0>(w, w_stride, rows, blocks, a, asum, out, ldo);
            else
                gemv_row_tiles<Wide, L, 2>(w, w_stride, rows, blocks, a, asum, out, ldo);
            (void)a_stride;
            return;
        }
        std::size_t i = 0;
        for (; i + 4 <= rows; i += 4)
            tile<4, Tk, Wide, L>(w + i * w_stride, w_stride, blocks, a, a_stride, asum,
                                 out + i * ldo, ldo);
        for (; i < rows; ++i)
            tile<1, Tk, Wide, L>(w + i * w_stride, w_stride, blocks, a, a_stride, asum,
                                 out + i * ldo, ldo);
    }

    /// The GEMV (one token) over all rows: AVX-512 tiles of 4 rows, AVX2 tiles of 2 (its 16
    /// registers hold 2 rows' per-slot accumulators), then single rows. Locality is the
    /// __builtin_prefetch locality of the weight prefetch (0 = NTA, 2 = T1).
    template <bool Wide, class L, int Locality>
    static void gemv_row_tiles(const std::uint8_t* w, std::size_t w_stride, std::size_t rows,
                               std::size_t blocks, const std::int8_t* a, const std::int32_t* asum,
                               std::int32_t* out, std::size_t ldo) noexcept {
        constexpr int R = Wide ? 4 : 2;
        std::size_t i = 0;
        for (; i + R <= rows; i += R)
            gemv_tile_any<R, Wide, L, Locality>(w + i * w_stride, w_stride, blocks, a, asum,
                                                out + i * ldo, ldo);
        for (; i < rows; ++i)
            gemv_tile_any<1, Wide, L, Locality>(w + i * w_stride, w_stride, blocks, a, asum,
                                                out + i * ldo, ldo);
    }

    template <int R, bool Wide, class L, int Locality>
    static void gemv_tile_any(const std::uint8_t* w, std::size_t w_stride, std::size_t blocks,
                              const std::int8_t* a, const std::int32_t* asum, std::int32_t* out,
                              std::size_t ldo) noexcept {
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
        if constexpr (Wide) {
            gemv_tile<R, L, Locality>(w, w_stride, blocks, a, asum, out, ldo);
            return;
        }
#endif
#if defined(__AVX2__)
        if constexpr (!Wide) {
            gemv_tile_256<R, L, Locality>(w, w_stride, blocks, a, asum, out, ldo);
            return;
        }
#endif
        maddubs_tile<R, 1, Wide, L>(w, w_stride, blocks, a, 0, asum, out, ldo);
    }

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
    /// One token against R rows with vpdpbusd (the GEMV tile). Each weight byte is loaded
    /// once and decoded to S registers of u; the activations of a block are shared by the R
    /// rows (memory operands of vpdpbusd, from L1). Four int32 accumulators per row, one per
    /// slot (2-bit) or per slot and block parity (4-bit), so consecutive vpdpbusd do not wait
    /// on each other; the R·4 are reduced together at the end.

    // Not inlined: inlined into the token/row loops, GCC 12 reloaded the activations from
    // memory for every row and copied accumulators (4096² PoT-MNZ: 81 µs instead of 65 µs).
    template <int R, class L, int Locality>
    __attribute__((noinline)) static void gemv_tile(const std::uint8_t* w, std::size_t w_stride,
                                                    std::size_t blocks, const std::int8_t* a,
                                                    const std::int32_t* asum, std::int32_t* out,
                                                    std::size_t ldo) noexcept {
        using T = integer_dot_tables<L>;
        using D = block_decode_512<L>;
        constexpr int S = int(T::slots);
        __m512i lut[3];
        D::load(lut);
        __m512i acc[R][4];
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) acc[r][k] = _mm512_setzero_si512();
        std::size_t b = 0;
        // Software prefetch of the same block some tiles ahead (the rows that follow in
        // memory), at least prefetch_distance bytes: a 4-row tile of a 4096-column matrix is
        // one 4 KiB page, which the hardware prefetchers do not cross, and each row is a short
        // stream they barely train on. The hint (Locality) is chosen per CPU vendor, from the
        // measurements at prefetch_non_temporal. Addresses past the matrix are only
        // prefetched, never loaded.
        const std::size_t tile_bytes = std::size_t(R) * w_stride;
        const std::size_t ahead = (prefetch_distance + tile_bytes - 1) / tile_bytes * tile_bytes;
        const auto wp = reinterpret_cast<std::uintptr_t>(w);
        const auto step = [&](std::size_t bb, auto set) __attribute__((always_inline)) {
            // Activations in registers, loaded once for the R rows: loads, not the vector
            // units, were the limit with memory operands (6 loads per row and block).
            __m512i x[S];
#pragma GCC unroll 4
            for (int s = 0; s < S; ++s)
                x[s] = _mm512_load_si512(a + bb * T::block_codes + std::size_t(s) * 64);
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) {
                __builtin_prefetch(
                    reinterpret_cast<const char*>(wp + std::size_t(r) * w_stride + bb * 64 + ahead),
                    0, Locality);
                __m512i blk = _mm512_load_si512(w + std::size_t(r) * w_stride + bb * 64);
#if defined(__GNUC__) && !defined(__clang__)
                // One load of the weights, not one folded into each of the S decode ops.
                __asm__("" : "+v"(blk));
#endif
                __m512i d[S];
                D::run(blk, lut, d);
#pragma GCC unroll 4
                for (int s = 0; s < S; ++s) {
                    __m512i c = acc[r][decltype(set)::value * S + s];
#if defined(__GNUC__) && !defined(__clang__)
                    // GCC 12 copies (and spills) the accumulator around the intrinsic; the
                    // asm form keeps it in its register.
                    __asm__("vpdpbusd %2, %1, %0" : "+v"(c) : "v"(d[s]), "v"(x[s]));
#else
                    c = _mm512_dpbusd_epi32(c, d[s], x[s]);
#endif
                    acc[r][decltype(set)::value * S + s] = c;
                }
            }
        };
        if constexpr (S == 4) {
            for (; b < blocks; ++b) step(b, std::integral_constant<int, 0>{});
        } else {
            for (; b + 2 <= blocks; b += 2) {
                step(b, std::integral_constant<int, 0>{});
                step(b + 1, std::integral_constant<int, 1>{});
            }
            if (b < blocks) step(b, std::integral_constant<int, 0>{});
        }
        __m512i tot[R];
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            // Linear sets decode slot s to 2^(bits·s)·c: scale each slot back (exact shifts).
            __m512i t = acc[r][0];
#pragma GCC unroll 4
            for (int k = 1; k < 4; ++k)
                t = _mm512_add_epi32(
                    t, D::linear ? _mm512_srai_epi32(acc[r][k], D::shift(k % S)) : acc[r][k]);
            tot[r] = t;
        }
        alignas(16) std::int32_t res[R < 4 ? 4 : R];
        reduce_rows_epi32<R>(tot, res);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
            out[std::size_t(r) * ldo] = D::scale * res[r] - T::offset * asum[0];
    }
#endif

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
    /// Tk tokens against R rows with vpdpbusd (the GEMM tile). Slot by slot: the Tk
    /// activation registers of the slot are loaded once for the R rows, and each row's slot is
    /// decoded once, through the tables, to u, for the Tk tokens. Per block R·S + S·Tk loads,
    /// R·S decode ops and R·S·Tk vpdpbusd (with activations as memory operands instead, one
    /// 64-byte load per vpdpbusd capped it at one a cycle). One int32 accumulator per (row,
    /// token): R·Tk + Tk + 4 vector registers, 24 for 4 × 4.
    template <int R, int Tk, class L>
    static void gemm_tile(const std::uint8_t* w, std::size_t w_stride, std::size_t blocks,
                          const std::int8_t* a, std::size_t a_stride, const std::int32_t* asum,
                          std::int32_t* out, std::size_t ldo) noexcept {
        using T = integer_dot_tables<L>;
        using D = block_decode_512<L>;
        constexpr int S = int(T::slots);
        __m512i lut[3];
        D::load(lut);
        __m512i acc[R][Tk];
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
            for (int t = 0; t < Tk; ++t) acc[r][t] = _mm512_setzero_si512();
        for (std::size_t b = 0; b < blocks; ++b) {
            const std::int8_t* ab = a + b * T::block_codes;
            [&]<int... s>(std::integer_sequence<int, s...>) {
                const auto one_slot = [&](auto sc) __attribute__((always_inline)) {
                    constexpr int sl = decltype(sc)::value;
                    __m512i x[Tk];
#pragma GCC unroll 16
                    for (int t = 0; t < Tk; ++t)
                        x[t] = _mm512_load_si512(ab + std::size_t(t) * a_stride +
                                                 std::size_t(sl) * 64);
#pragma GCC unroll 16
                    for (int r = 0; r < R; ++r) {
                        // The block is loaded again for each slot (L1): keeping R of them in
                        // registers made GCC spill accumulators.
                        const __m512i d = D::template slot<sl>(
                            _mm512_load_si512(w + std::size_t(r) * w_stride + b * 64), lut);
#pragma GCC unroll 16
                        for (int t = 0; t < Tk; ++t) {
#if defined(__GNUC__) && !defined(__clang__)
                            __asm__("vpdpbusd %2, %1, %0" : "+v"(acc[r][t]) : "v"(d), "v"(x[t]));
#else
                            acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], d, x[t]);
#endif
                        }
                    }
                };
                (one_slot(std::integral_constant<int, s>{}), ...);
            }
            (std::make_integer_sequence<int, S>{});
        }
#pragma GCC unroll 16
        for (int t = 0; t < Tk; ++t) {
            __m512i col[R];
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) col[r] = acc[r][t];
            alignas(16) std::int32_t res[R < 4 ? 4 : R];
            reduce_rows_epi32<R>(col, res);
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r)
                out[std::size_t(r) * ldo + std::size_t(t)] = res[r] - T::offset * asum[t];
        }
    }
#endif

#if defined(__AVX2__)
    /// One token against R rows on 256-bit registers (the AVX2 GEMV tile), the ideas of the
    /// AVX-512 gemv_tile in halves of a 64-byte block: each weight half is loaded once (with the
    /// same software prefetch) and decoded to S registers; the activations of the half are
    /// loaded once for the R rows. With VNNI (AVX-VNNI vpdpbusd, or its AVX-512VL form) one
    /// int32 accumulator per row and slot (and per half for 4-bit), linear sets decoded by a
    /// mask alone (nibble_decode); without VNNI, vpshufb table decode, vpmaddubsw per slot
    /// summed in int16 (<= 1920, see the proof above) and one vpmaddwd into the row's
    /// accumulator. 16 registers: R = 2 (8 accumulators, 4 activation registers).
    template <int R, class L, int Locality>
    __attribute__((noinline)) static void gemv_tile_256(const std::uint8_t* w, std::size_t w_stride,
                                                        std::size_t blocks, const std::int8_t* a,
                                                        const std::int32_t* asum, std::int32_t* out,
                                                        std::size_t ldo) noexcept {
        using T = integer_dot_tables<L>;
        using D = nibble_decode<L>;
        constexpr int S = int(T::slots);
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
        constexpr bool vnni = true;
#else
        constexpr bool vnni = false;
#endif
        constexpr bool by_mask = vnni && D::linear;
        const __m256i lut0 = _mm256_broadcastsi128_si256(
            _mm_load_si128(reinterpret_cast<const __m128i*>(D::table0.data())));
        const __m256i lut1 = _mm256_broadcastsi128_si256(
            _mm_load_si128(reinterpret_cast<const __m128i*>(D::table1.data())));
        const __m256i nib = _mm256_set1_epi8(0x0F);
        constexpr int A = vnni ? 4 : 1;  // accumulators per row
        __m256i acc[R][A];
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
            for (int k = 0; k < A; ++k) acc[r][k] = _mm256_setzero_si256();
        const std::size_t tile_bytes = std::size_t(R) * w_stride;
        const std::size_t ahead = (prefetch_distance + tile_bytes - 1) / tile_bytes * tile_bytes;
        const auto wp = reinterpret_cast<std::uintptr_t>(w);
        for (std::size_t b = 0; b < blocks; ++b)
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                __m256i x[S];
#pragma GCC unroll 4
                for (int s = 0; s < S; ++s)
                    x[s] = _mm256_load_si256(reinterpret_cast<const __m256i*>(
                        a + b * T::block_codes + std::size_t(s) * 64 + std::size_t(h) * 32));
#pragma GCC unroll 16
                for (int r = 0; r < R; ++r) {
                    const std::size_t off = std::size_t(r) * w_stride + b * 64;
                    if (h == 0)
                        __builtin_prefetch(reinterpret_cast<const char*>(wp + off + ahead), 0,
                                           Locality);
                    const __m256i blk = _mm256_load_si256(
                        reinterpret_cast<const __m256i*>(w + off + std::size_t(h) * 32));
                    __m256i d[S];
                    if constexpr (by_mask) {
#pragma GCC unroll 4
                        for (int s = 0; s < S; ++s)
                            d[s] = _mm256_and_si256(
                                blk, _mm256_set1_epi8(static_cast<char>(packed_codes<T::bits>::mask
                                                                        << D::shift(s))));
                    } else {
                        const __m256i lo = _mm256_and_si256(blk, nib);
                        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(blk, 4), nib);
                        if constexpr (S == 4) {
                            d[0] = _mm256_shuffle_epi8(lut0, lo);
                            d[1] = _mm256_shuffle_epi8(lut1, lo);
                            d[2] = _mm256_shuffle_epi8(lut0, hi);
                            d[3] = _mm256_shuffle_epi8(lut1, hi);
                        } else {
                            d[0] = _mm256_shuffle_epi8(lut0, lo);
                            d[S - 1] = _mm256_shuffle_epi8(lut0, hi);
                        }
                    }
                    if constexpr (vnni) {
#pragma GCC unroll 4
                        for (int s = 0; s < S; ++s) {
                            [[maybe_unused]] __m256i& c = acc[r][A == S ? s : (h * S + s) % A];
#if defined(__AVXVNNI__)
                            c = _mm256_dpbusd_avx_epi32(c, d[s], x[s]);
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
                            c = _mm256_dpbusd_epi32(c, d[s], x[s]);
#endif
                        }
                    } else {
                        __m256i p = _mm256_maddubs_epi16(d[0], x[0]);
#pragma GCC unroll 4
                        for (int s = 1; s < S; ++s)
                            p = _mm256_add_epi16(p, _mm256_maddubs_epi16(d[s], x[s]));
                        acc[r][0] =
                            _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
                    }
                }
            }
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            __m256i t = acc[r][0];
#pragma GCC unroll 4
            for (int k = 1; k < A; ++k)
                t = _mm256_add_epi32(
                    t, by_mask ? _mm256_srai_epi32(acc[r][k], int(D::shift(k % S))) : acc[r][k]);
            out[std::size_t(r) * ldo] =
                (by_mask ? D::scale : 1) * hsum_epi32(t) - T::offset * asum[0];
        }
    }
#endif

    template <int R, int Tk, bool Wide, class L>
    static void tile(const std::uint8_t* w, std::size_t w_stride, std::size_t blocks,
                     const std::int8_t* a, std::size_t a_stride, const std::int32_t* asum,
                     std::int32_t* out, std::size_t ldo) noexcept {
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
        if constexpr (Wide)
            gemm_tile<R, Tk, L>(w, w_stride, blocks, a, a_stride, asum, out, ldo);
        else
#endif
            maddubs_tile<R, Tk, Wide, L>(w, w_stride, blocks, a, a_stride, asum, out, ldo);
    }

    /// The tile without VNNI (AVX-512BW or AVX2): vpshufb decode, vpmaddubsw + vpmaddwd.
    template <int R, int Tk, bool Wide, class L>
    // Without AVX-512BW or AVX2 the body is empty (never called): hence [[maybe_unused]].
    static void maddubs_tile([[maybe_unused]] const std::uint8_t* w,
                             [[maybe_unused]] std::size_t w_stride,
                             [[maybe_unused]] std::size_t blocks,
                             [[maybe_unused]] const std::int8_t* a,
                             [[maybe_unused]] std::size_t a_stride, const std::int32_t* asum,
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
#if defined(__AVX512BW__) && !defined(__AVX512VNNI__)
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
            const __m512i ones = _mm512_set1_epi16(1);
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
/// fused-multiply-add with float activations. AVX-512: vpmovzxbd per 16 bytes, then one
/// vpermps per slot straight on the widened bytes (see the tile); AVX2: vpmovzxbd per 8 bytes,
/// a shift and one vpermps per slot ((4-bit) two vpermps and a blend); other
/// architectures decode 64 codes into a buffer and run xsimd FMAs. Same contract as
/// float_dot_scalar; float rounding differs from it (several partial sums).
/// Measured and not adopted (AVX-512, one thread, 4096²): a two-code table per activation pair
/// (T[c_a + 4·c_b] = L[c_a]·x_a + L[c_b]·x_b, 16 rows in the lanes, one vpermps per two codes)
/// is no faster hot with this layout (the 16×16 dword transpose costs what it saves) and
/// 1.4–1.7× slower cold; on a row-interleaved layout it would be 1.3× faster hot only.
/// One vpermps and one FMA per 16 weights is the floor of this tile.
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
            if (prefetch_non_temporal())
                row_tiles<use512, Bits, 0>(w, w_stride, rows, blocks, lut, x, x_stride, tokens, out,
                                           ldo);
            else
                row_tiles<use512, Bits, 2>(w, w_stride, rows, blocks, lut, x, x_stride, tokens, out,
                                           ldo);
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
    // Locality: the __builtin_prefetch locality of the weight prefetch (0 = NTA, 2 = T1).
    template <bool Wide, unsigned Bits, int Locality>
    static void row_tiles(const std::uint8_t* w, std::size_t w_stride, std::size_t rows,
                          std::size_t blocks, const float* lut, const float* x,
                          std::size_t x_stride, std::size_t tokens, float* out,
                          std::size_t ldo) noexcept {
        std::size_t i = 0;
        for (; i + 4 <= rows; i += 4)
            tiles<4, Wide, Bits, Locality>(w + i * w_stride, w_stride, blocks, lut + i * 16, x,
                                           x_stride, tokens, out + i * ldo, ldo);
        for (; i < rows; ++i)
            tiles<1, Wide, Bits, Locality>(w + i * w_stride, w_stride, blocks, lut + i * 16, x,
                                           x_stride, tokens, out + i * ldo, ldo);
    }

    template <int R, bool Wide, unsigned Bits, int Locality>
    static void tiles(const std::uint8_t* w, std::size_t w_stride, std::size_t blocks,
                      const float* lut, const float* x, std::size_t x_stride, std::size_t tokens,
                      float* out, std::size_t ldo) noexcept {
        std::size_t j = 0;
        for (; j + 4 <= tokens; j += 4)
            tile<R, 4, Wide, Bits, Locality>(w, w_stride, blocks, lut, x + j * x_stride, x_stride,
                                             out + j, ldo);
        for (; j < tokens; ++j)
            tile<R, 1, Wide, Bits, Locality>(w, w_stride, blocks, lut, x + j * x_stride, x_stride,
                                             out + j, ldo);
    }

    template <int R, int Tk, bool Wide, unsigned Bits, int Locality>
    // Without AVX-512F or AVX2 the body is empty (never called): hence [[maybe_unused]].
    static void tile([[maybe_unused]] const std::uint8_t* w, [[maybe_unused]] std::size_t w_stride,
                     [[maybe_unused]] std::size_t blocks, [[maybe_unused]] const float* lut,
                     [[maybe_unused]] const float* x, [[maybe_unused]] std::size_t x_stride,
                     float* out, std::size_t ldo) noexcept {
        using P [[maybe_unused]] = packed_codes<Bits>;
        float res[R][Tk];
        // The software prefetch of the integer GEMV tile (same distance and hint): without it
        // the cold GEMV waited on every row's first lines.
        [[maybe_unused]] const std::size_t tile_bytes = std::size_t(R) * w_stride;
        [[maybe_unused]] const std::size_t ahead =
            (gemv_prefetch_distance + tile_bytes - 1) / tile_bytes * tile_bytes;
        [[maybe_unused]] const auto wp = reinterpret_cast<std::uintptr_t>(w);
        if constexpr (Wide) {
#if defined(__AVX512F__)
            // vpermps reads only the 4 low bits of each index lane, and a widened byte holds the
            // codes of all slots: with tables indexed by those 4 bits (2-bit: T0[i] = lut[i & 3]
            // for the slot in bits 0-1, T1[i] = lut[i >> 2] for bits 2-3; 4-bit: lut itself),
            // the low slots decode with no shift or mask and the high ones after one shift of
            // the widened byte by 4. Per 16 bytes: 1 widen, 1 shift, S permutes, S·Tk FMAs.
            // Two accumulator sets (even/odd slot) hide the FMA latency in the GEMV case.
            constexpr int A = Tk == 1 ? 2 : 1;
            constexpr int NT = Bits == 2 ? 2 : 1;
            __m512 tab[NT][R];
            __m512 acc[A][R][Tk];
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) {
                alignas(64) float t[NT][16];
                for (int i = 0; i < 16; ++i) {
                    t[0][i] = lut[r * 16 + (Bits == 2 ? (i & 3) : i)];
                    if constexpr (NT == 2) t[NT - 1][i] = lut[r * 16 + (i >> 2)];
                }
#pragma GCC unroll 2
                for (int k = 0; k < NT; ++k) tab[k][r] = _mm512_load_ps(t[k]);
#pragma GCC unroll 16
                for (int t2 = 0; t2 < Tk; ++t2)
#pragma GCC unroll 2
                    for (int k = 0; k < A; ++k) acc[k][r][t2] = _mm512_setzero_ps();
            }
            for (std::size_t b = 0; b < blocks; ++b)
                for (std::size_t q = 0; q < 64; q += 16) {
                    __m512i c[R];
#pragma GCC unroll 16
                    for (int r = 0; r < R; ++r) {
                        if (q == 0)
                            __builtin_prefetch(reinterpret_cast<const char*>(
                                                   wp + std::size_t(r) * w_stride + b * 64 + ahead),
                                               0, Locality);
                        c[r] = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(
                            w + std::size_t(r) * w_stride + b * 64 + q)));
                    }
#pragma GCC unroll 16
                    for (std::size_t s = 0; s < P::slots; ++s) {
                        if (s * Bits == 4)
#pragma GCC unroll 16
                            for (int r = 0; r < R; ++r) c[r] = _mm512_srli_epi32(c[r], 4);
#pragma GCC unroll 16
                        for (int r = 0; r < R; ++r) {
                            const __m512 wv = _mm512_permutexvar_ps(c[r], tab[s % NT][r]);
#pragma GCC unroll 16
                            for (int t = 0; t < Tk; ++t) {
                                __m512& ac = acc[s % A][r][t];
                                ac = _mm512_fmadd_ps(
                                    wv,
                                    _mm512_loadu_ps(x + std::size_t(t) * x_stride +
                                                    b * P::block_codes + s * 64 + q),
                                    ac);
                            }
                        }
                    }
                }
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
                for (int t = 0; t < Tk; ++t)
                    res[r][t] = _mm512_reduce_add_ps(
                        A == 2 ? _mm512_add_ps(acc[0][r][t], acc[A - 1][r][t]) : acc[0][r][t]);
#endif
        } else {
#if defined(__AVX2__) && defined(__FMA__)
            // vpermps reads the 3 low index bits (and the 4-bit path's blend bit 3 alone), so
            // no mask: the 2-bit table repeats lut[0..3] for bit 2.
            __m256 tab_lo[R], tab_hi[R];
            __m256 acc[2][R][Tk];
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) {
                tab_lo[r] = Bits == 2 ? _mm256_castps128_ps256(_mm_loadu_ps(lut + r * 16))
                                      : _mm256_loadu_ps(lut + r * 16);
                if constexpr (Bits == 2)
                    tab_lo[r] = _mm256_insertf128_ps(tab_lo[r], _mm_loadu_ps(lut + r * 16), 1);
                tab_hi[r] = _mm256_loadu_ps(lut + r * 16 + 8);
#pragma GCC unroll 16
                for (int t = 0; t < Tk; ++t) acc[0][r][t] = acc[1][r][t] = _mm256_setzero_ps();
            }
            for (std::size_t b = 0; b < blocks; ++b)
                for (std::size_t q = 0; q < 64; q += 8) {
                    __m256i c[R];
#pragma GCC unroll 16
                    for (int r = 0; r < R; ++r) {
                        if (q == 0)
                            __builtin_prefetch(reinterpret_cast<const char*>(
                                                   wp + std::size_t(r) * w_stride + b * 64 + ahead),
                                               0, Locality);
                        c[r] =
                            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(
                                w + std::size_t(r) * w_stride + b * 64 + q)));
                    }
#pragma GCC unroll 16
                    for (std::size_t s = 0; s < P::slots; ++s) {
                        __m256 wv[R];
#pragma GCC unroll 16
                        for (int r = 0; r < R; ++r) {
                            const __m256i idx = _mm256_srli_epi32(c[r], int(s * Bits));
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
