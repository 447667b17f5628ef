// SPDX-License-Identifier: MIT
// Kernels behind bitplane.hpp: the per-token subset-sum tables and the bit-plane tile that sums,
// for 32 rows at once, the activations selected by each of the two code bits.
#pragma once

#include "target.hpp"

#include <cstddef>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "xsimd.hpp"

#include "gemv_kernels.hpp"

namespace qift::inline QIFT_ISA {
namespace detail {

/// Geometry of the bit-plane layout (the layout itself is documented in bitplane.hpp).
struct bitplane_geometry {
    static constexpr std::size_t field_bits = 5;  // activations a table covers
    static constexpr std::size_t fields = 6;  // 5-bit fields in a 32-bit lane (bits 30-31 unused)
    static constexpr std::size_t chunk_cols = field_bits * fields;  // 30 activations a chunk
    static constexpr std::size_t lanes = 16;                        // rows in one 512-bit register
    static constexpr std::size_t tile_rows = 2 * lanes;             // rows a tile (two halves)
    static constexpr std::size_t chunk_words = 4 * lanes;  // u32 words of a tile chunk: 256 bytes
    static constexpr std::size_t table_size = 32;          // floats in one field's table
    static constexpr std::size_t chunk_table = fields * table_size;  // 192 floats a chunk
    // Chunks of a column panel: one token's tables for a panel (24 KiB) stay in L1.
    static constexpr std::size_t panel_chunks = 32;
    static constexpr std::size_t tile_sums = 4 * lanes;  // floats of a tile's sums, per token
};

/// The subset-sum tables of one token: for every field g = 6·c + f (chunk c, field f) and
/// every 5-bit m, t[32·g + m] = Σ_{i < 5, bit i of m set} x[5·g + i], with x read as 0 at and
/// beyond `cols`; `chunks` chunks (6·chunks fields). Returns Σ_{k < cols} x[k], summed as the
/// m = 31 entries are (so the sum and the tables round alike). AVX-512: one masked add per
/// activation builds a 16-entry half, one add the other. Elsewhere: scalar, each entry the
/// previous one plus one activation.
template <class Arch>
float bitplane_tables([[maybe_unused]] Arch arch, const float* x, std::size_t cols,
                      std::size_t chunks, float* t) noexcept {
    using G = bitplane_geometry;
    const std::size_t fields = chunks * G::fields;
    float total = 0.0f;
    for (std::size_t g = 0; g < fields; ++g) {
        float xs[G::field_bits];
        const std::size_t k0 = g * G::field_bits;
        for (std::size_t i = 0; i < G::field_bits; ++i) xs[i] = k0 + i < cols ? x[k0 + i] : 0.0f;
        float* tg = t + g * G::table_size;
#if defined(__AVX512F__)
        if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
            // Lane m of the low half holds Σ over the set bits 0-3 of m; the high half adds x4.
            __m512 lo = _mm512_maskz_mov_ps(0xAAAA, _mm512_set1_ps(xs[0]));
            lo = _mm512_mask_add_ps(lo, 0xCCCC, lo, _mm512_set1_ps(xs[1]));
            lo = _mm512_mask_add_ps(lo, 0xF0F0, lo, _mm512_set1_ps(xs[2]));
            lo = _mm512_mask_add_ps(lo, 0xFF00, lo, _mm512_set1_ps(xs[3]));
            const __m512 hi = _mm512_add_ps(lo, _mm512_set1_ps(xs[4]));
            _mm512_store_ps(tg, lo);
            _mm512_store_ps(tg + 16, hi);
            total += tg[31];
            continue;
        }
#endif
        // Same sums in the same order: entry m adds its highest set bit's activation to the
        // entry without that bit (m = 31 is ((((x0 + x1) + x2) + x3) + x4)).
        tg[0] = 0.0f;
        for (std::size_t m = 1; m < G::table_size; ++m) {
            std::size_t top = G::field_bits - 1;
            while (!(m >> top & 1u)) --top;
            tg[m] = tg[m & ~(std::size_t{1} << top)] + xs[top];
        }
        total += tg[31];
    }
    return total;
}

/// Bytes ahead that the bit-plane tile prefetches its weight stream into L2 (see the tile).
inline constexpr std::size_t bitplane_prefetch_distance = 65536;

/// Bit-plane tile: for Tk tokens and `chunks` consecutive chunks of one 32-row tile (w: their
/// chunks·64 words), adds to sums[(j·4 + 2·h + p)·16 + i] the sum over those chunks' columns
/// of plane p (0: high code bit, 1: low) of row 16·h + i times token j's activation, read from
/// token j's tables tables[j] (bitplane_tables, pointing at the first of these chunks).
/// AVX-512: per chunk 4 loads, and per field 4 shifts and, per token, 4 two-source permutes
/// (vpermi2ps: one 32-entry lookup for 16 rows × 5 activations) and 4 adds. Elsewhere: the same
/// lookups lane by lane. The 4 loads go through a stack buffer (staging, below).
///
/// Prefetch (AVX-512): a far prefetch into L2 (bitplane_prefetch_distance ahead) plus a near
/// one into L1 (4 chunks ahead). Cold, without the near one and with the tables in L2 (before
/// the column panels), the GEMV took the read time plus the hot compute time: the tables' L1
/// misses compete with the weight stream for the fill buffers. Measured before the staging, on
/// the 2-core SPR VM, one thread, mean of 3 × 0.3 s over 256 MiB of copies, % of the read of
/// the packed bytes, 4096² / 11008×4096, 3-4 rounds each: far 8 KiB without near 55-64% / -; far 8
/// KiB 62-64% / 66-72%; 32 KiB 57-69% / 69-75%; 64 KiB 64-70% / 67-73%; 128 KiB 57-62% / 71-73%
/// (the packed tile in the same runs: 62-65% / 56-61%).
///
/// Staging: each chunk's four lines are loaded in a rolled loop, each line next to its two
/// prefetches, and stored to an aligned stack buffer that the field loop then reads. This is
/// an empirical form (the VM has no performance counters to say why); the same work with the
/// loop unrolled, the loads kept in registers or folded into the shifts, or the prefetches in a
/// loop of their own ran cold at 60-73% in the same harness (4096², mean of 3 × 0.3 s, 2 runs
/// each); the staged form 77-82%. In bench_gemv (medians of 3; 2 runs of the old binary, 3 of
/// the new), cold went from 51-66% to 70-93% of the read roofline over 4096², 11008×4096 and
/// 4096×11008 on one and two threads; hot, 4096² on one thread went from 185-189 µs to 204-213 µs
/// and the two 11008 shapes from 640-690 to 526-595; GEMM (4 tokens a pass) within the noise. A
/// synthetic stream with the same instruction mix showed the same split (84% staged, 69-74%
/// unrolled). Clang turned the copy loop into a memcpy of 32-byte moves, whose 64-byte reloads
/// then missed store forwarding (hot 4096² 287-295 µs against 166-170 unstaged); the empty asm
/// on each line keeps it one 64-byte load and store (clang 170 µs hot, cold like GCC's).
template <int Tk>
struct bitplane_tile {
    template <class Arch>
    void operator()([[maybe_unused]] Arch arch, const std::uint32_t* w, std::size_t chunks,
                    const float* const* tables, float* sums) const noexcept {
        using G = bitplane_geometry;
#if defined(__AVX512F__)
        if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
            if (prefetch_non_temporal())
                run_512<0>(w, chunks, tables, sums);
            else
                run_512<2>(w, chunks, tables, sums);
            return;
        }
#endif
        for (std::size_t c = 0; c < chunks; ++c)
            for (std::size_t f = 0; f < G::fields; ++f)
                for (std::size_t j = 0; j < std::size_t(Tk); ++j) {
                    const float* tf = tables[j] + c * G::chunk_table + f * G::table_size;
                    for (std::size_t q = 0; q < 4; ++q)
                        for (std::size_t i = 0; i < G::lanes; ++i)
                            sums[(j * 4 + q) * G::lanes + i] +=
                                tf[(w[c * G::chunk_words + q * G::lanes + i] >> (5 * f)) & 31u];
                }
    }

  private:
#if defined(__AVX512F__)
    template <int Locality>
    static void run_512(const std::uint32_t* w, std::size_t chunks, const float* const* tables,
                        float* sums) noexcept {
        using G = bitplane_geometry;
        constexpr std::size_t chunk_bytes = G::chunk_words * 4;
        constexpr std::size_t ahead = bitplane_prefetch_distance, near = 4 * chunk_bytes;
        const char* wb = reinterpret_cast<const char*>(w);
        __m512 acc[Tk][4];
#pragma GCC unroll 4
        for (int j = 0; j < Tk; ++j)
#pragma GCC unroll 4
            for (int q = 0; q < 4; ++q)
                acc[j][q] = _mm512_load_ps(sums + (std::size_t(j) * 4 + std::size_t(q)) * G::lanes);
        for (std::size_t c = 0; c < chunks; ++c) {
            const char* p = wb + c * chunk_bytes;
            // The chunk's lines go through `stage` in a rolled loop (see the comment above).
            alignas(64) std::uint32_t stage[G::chunk_words];
#pragma GCC unroll 1
            for (std::size_t q = 0; q < 4; ++q) {
                __builtin_prefetch(p + ahead + 64 * q, 0, Locality);
                __builtin_prefetch(p + near + 64 * q, 0, 3);
                __m512i line = _mm512_load_si512(p + 64 * q);
                asm("" : "+v"(line));  // one 64-byte copy (clang would make a ymm memcpy of it)
                _mm512_store_si512(stage + G::lanes * q, line);
            }
            asm volatile("" : "+m"(stage));  // keeps the stores and loads (no forwarding away)
            __m512i v[4];
#pragma GCC unroll 4
            for (int q = 0; q < 4; ++q) v[q] = _mm512_load_si512(stage + G::lanes * std::size_t(q));
#pragma GCC unroll 6
            for (unsigned f = 0; f < G::fields; ++f) {
                __m512i idx[4];
#pragma GCC unroll 4
                for (int q = 0; q < 4; ++q) idx[q] = f == 0 ? v[q] : _mm512_srli_epi32(v[q], 5 * f);
#pragma GCC unroll 4
                for (int j = 0; j < Tk; ++j) {
                    const float* tf = tables[j] + c * G::chunk_table + f * G::table_size;
                    const __m512 ta = _mm512_load_ps(tf), tb = _mm512_load_ps(tf + 16);
#pragma GCC unroll 4
                    for (int q = 0; q < 4; ++q)
                        acc[j][q] =
                            _mm512_add_ps(acc[j][q], _mm512_permutex2var_ps(ta, idx[q], tb));
                }
            }
        }
#pragma GCC unroll 4
        for (int j = 0; j < Tk; ++j)
#pragma GCC unroll 4
            for (int q = 0; q < 4; ++q)
                _mm512_store_ps(sums + (std::size_t(j) * 4 + std::size_t(q)) * G::lanes, acc[j][q]);
    }
#endif
};

}  // namespace detail
}  // namespace qift
