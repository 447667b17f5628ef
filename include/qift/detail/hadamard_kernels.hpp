// SPDX-License-Identifier: MIT
// SIMD kernels of the Hadamard transform: the in-place power-of-two Walsh-Hadamard transform
// (long rows and short rows), the dense block mix (wide and narrow panels), the Paley II row
// pairs and the Jacobsthal core by DFTs (over GF(p^r), wide and narrow panels, and over a prime
// field in Rader form), each with the scalar reference that is its test oracle.
#pragma once

#include "target.hpp"

#include "xsimd.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

// The register blocks only stay in registers when every step of the unrolled networks is
// inlined, lambdas included; GCC otherwise outlines the larger ones. Sanitizer builds leave the
// choice to the compiler: the forced inlining of every network into every caller, instrumented,
// made test_hadamard.cpp alone take six minutes to compile under ASan + UBSan.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define QIFT_HADAMARD_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define QIFT_HADAMARD_SANITIZED 1
#endif
#endif
#if defined(__GNUC__) && !defined(QIFT_HADAMARD_SANITIZED)
#define QIFT_HADAMARD_INLINE inline __attribute__((always_inline))
#define QIFT_HADAMARD_LAMBDA_INLINE __attribute__((always_inline))
#else
#define QIFT_HADAMARD_INLINE inline
#define QIFT_HADAMARD_LAMBDA_INLINE
#endif

namespace qift::inline QIFT_ISA::detail {

// ---------------------------------------------------------------------------------------
// Scalar references

/// Textbook radix-2 Walsh-Hadamard transform in place (h doubling), then every element times
/// `scale`. `n` is a power of two (n = 0 and 1 allowed). y = scale · H_n x with H_n the
/// Sylvester matrix, H_n[i][j] = (-1)^popcount(i & j). O(n log n).
inline void fwht_reference(float* x, std::size_t n, float scale) noexcept {
    for (std::size_t h = 1; h < n; h *= 2)
        for (std::size_t i = 0; i < n; i += 2 * h)
            for (std::size_t j = i; j < i + h; ++j) {
                const float a = x[j];
                const float b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    if (scale != 1.0f)
        for (std::size_t i = 0; i < n; ++i) x[i] *= scale;
}

/// Dense block mix: out[i][c] = Σ_j h[i·k + j] · in[j][c] for a k×k coefficient matrix `h`
/// (row-major) and k×cols row-major `in`/`out` (row stride `cols`, no aliasing). O(k²·cols).
inline void hadamard_mix_reference(const float* h, std::size_t k, const float* in, float* out,
                                   std::size_t cols) noexcept {
    for (std::size_t i = 0; i < k; ++i) {
        float* o = out + i * cols;
        std::fill(o, o + cols, 0.0f);
        for (std::size_t j = 0; j < k; ++j) {
            const float c = h[i * k + j];
            const float* x = in + j * cols;
            for (std::size_t col = 0; col < cols; ++col) o[col] += c * x[col];
        }
    }
}

// ---------------------------------------------------------------------------------------
// Compile-time helpers

template <class F, std::size_t... I>
QIFT_HADAMARD_INLINE void static_for_impl(F&& f, std::index_sequence<I...>) {
    (f(std::integral_constant<std::size_t, I>{}), ...);
}

/// Calls f(std::integral_constant<size_t, i>) for i = 0 .. N-1, fully unrolled.
template <std::size_t N, class F>
QIFT_HADAMARD_INLINE void static_for(F&& f) {
    static_for_impl(f, std::make_index_sequence<N>{});
}

template <class Arch>
inline constexpr bool is_avx512_arch = std::is_base_of_v<xsimd::avx512f, Arch>;
template <class Arch>
inline constexpr bool is_avx_arch = std::is_base_of_v<xsimd::avx, Arch>;

/// log2 of the register count of one fused pass: 16 of the 32 zmm registers on AVX-512,
/// 8 of the 16 ymm/xmm registers elsewhere.
template <class Arch>
inline constexpr std::size_t fwht_max_radix_log = is_avx512_arch<Arch> ? 4 : 3;

// Register blocks are arrays of the native register type: GCC keeps an array of xsimd batch
// objects in memory (one store and load per stage) but an array of __m512 in registers.
template <class Arch>
using native_register = typename xsimd::batch<float, Arch>::register_type;

/// Butterflies across `G` registers: the log2(G) stages with partner distance 1, 2, .. G/2.
template <std::size_t G, class B>
QIFT_HADAMARD_INLINE void register_butterflies(typename B::register_type* v) noexcept {
    static_for<G>([&](auto h_log) QIFT_HADAMARD_LAMBDA_INLINE {
        constexpr std::size_t h = std::size_t{1} << h_log;
        if constexpr (h < G)
            static_for<G>([&](auto k) QIFT_HADAMARD_LAMBDA_INLINE {
                if constexpr ((k & h) == 0) {
                    const B a(v[k]), b(v[k + h]);
                    v[k] = a + b;
                    v[k + h] = a - b;
                }
            });
    });
}

/// The log2(W) butterfly stages inside one register of W floats, as a ±1 multiply-add with
/// the register's partner-swapped copy: lane l becomes x[l^h] + s·x[l], s = -1 where bit h of
/// l is set; that is a+b in the low lane of each pair and a-b in the high one, exactly.
template <class Arch>
struct in_register_fwht {
    using batch = xsimd::batch<float, Arch>;
    static constexpr std::size_t width = batch::size;

    alignas(64) float signs[8][width] = {};
    in_register_fwht() noexcept {
        for (std::size_t s = 0; (std::size_t{1} << s) < width && s < 8; ++s)
            for (std::size_t l = 0; l < width; ++l) signs[s][l] = (l >> s) & 1 ? -1.0f : 1.0f;
    }

    template <std::size_t Regs>
    QIFT_HADAMARD_INLINE void operator()(native_register<Arch>* v) const noexcept {
#if defined(__AVX512F__)
        if constexpr (is_avx512_arch<Arch>) {
            const batch s0 = batch::load_aligned(signs[0]), s1 = batch::load_aligned(signs[1]);
            const batch s2 = batch::load_aligned(signs[2]), s3 = batch::load_aligned(signs[3]);
            // The full-mask forms: GCC 12's unmasked ones read an undefined register and trip
            // -Wmaybe-uninitialized.
            constexpr __mmask16 all = 0xFFFF;
            static_for<Regs>([&](auto k) QIFT_HADAMARD_LAMBDA_INLINE {
                __m512 x = v[k];
                x = _mm512_fmadd_ps(x, s0, _mm512_mask_permute_ps(x, all, x, 0xB1));
                x = _mm512_fmadd_ps(x, s1, _mm512_mask_permute_ps(x, all, x, 0x4E));
                x = _mm512_fmadd_ps(x, s2, _mm512_mask_shuffle_f32x4(x, all, x, x, 0xB1));
                x = _mm512_fmadd_ps(x, s3, _mm512_mask_shuffle_f32x4(x, all, x, x, 0x4E));
                v[k] = x;
            });
            return;
        }
#endif
#if defined(__AVX__)
        if constexpr (is_avx_arch<Arch> && !is_avx512_arch<Arch>) {
            const batch s0 = batch::load_aligned(signs[0]), s1 = batch::load_aligned(signs[1]);
            const batch s2 = batch::load_aligned(signs[2]);
            static_for<Regs>([&](auto k) QIFT_HADAMARD_LAMBDA_INLINE {
                batch x(v[k]);
                x = xsimd::fma(x, s0, batch(_mm256_permute_ps(x, 0xB1)));
                x = xsimd::fma(x, s1, batch(_mm256_permute_ps(x, 0x4E)));
                x = xsimd::fma(x, s2, batch(_mm256_permute2f128_ps(x, x, 0x01)));
                v[k] = x;
            });
            return;
        }
#endif
        // Portable path (SSE, NEON, ...): the in-register stages through memory.
        static_for<Regs>([&](auto k) QIFT_HADAMARD_LAMBDA_INLINE {
            alignas(64) float lanes[width];
            batch(v[k]).store_aligned(lanes);
            fwht_reference(lanes, width, 1.0f);
            v[k] = batch::load_aligned(lanes);
        });
    }
};

// ---------------------------------------------------------------------------------------
// Walsh-Hadamard transform

/// In-place Walsh-Hadamard transform of a power-of-two length, then times `scale`; the same
/// result as fwht_reference up to float rounding order. Stages commute, so they are grouped
/// into as few memory passes as possible: one leaf pass does the log2(W) in-register stages
/// and the first log2(16 or 8) cross-register stages on each 256 (AVX-512) or 64 (AVX) float
/// block, then fused radix-16/8 passes finish each L1-sized block, then the strides beyond it.
/// The scale is fused into the store of the last pass.
struct fwht_kernel {
    /// Elements finished in L1 before the strides that cross blocks (32 KiB of floats).
    static constexpr std::size_t l1_block = 8192;

    template <class Arch>
    void operator()(Arch, float* x, std::size_t n, float scale) const noexcept {
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        constexpr std::size_t max_log = fwht_max_radix_log<Arch>;
        if (n < 2 * w) {
            fwht_reference(x, n, scale);
            return;
        }
        static const in_register_fwht<Arch> lanes;
        const std::size_t leaf = std::min(n, w << max_log);
        const std::size_t block = std::min(n, l1_block);
        const bool scaled = scale != 1.0f;
        // Stages still to do after the leaf pass inside a block, and across blocks.
        const unsigned inner = log2_of(block / leaf);
        const unsigned outer = log2_of(n / block);
        for (std::size_t b = 0; b < n; b += block) {
            const bool last = inner == 0 && outer == 0;
            leaf_pass<Arch>(lanes, x + b, block, leaf / w, last && scaled, scale);
            radix_passes<Arch>(x + b, block, leaf, inner, outer == 0 && scaled, scale);
        }
        radix_passes<Arch>(x, n, block, outer, scaled, scale);
    }

    /// The transform of every row of length `len` (a power of two >= 2W) of n contiguous
    /// floats: rows that fit one leaf pass are done together in a single pass over x.
    template <class Arch>
    void rows(Arch, float* x, std::size_t n, std::size_t len, float scale) const noexcept {
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        if (len <= (w << fwht_max_radix_log<Arch>)) {
            static const in_register_fwht<Arch> lanes;
            leaf_pass<Arch>(lanes, x, n, len / w, scale != 1.0f, scale);
            return;
        }
        for (std::size_t r = 0; r < n; r += len) (*this)(Arch{}, x + r, len, scale);
    }

  private:
    static unsigned log2_of(std::size_t v) noexcept {
        unsigned r = 0;
        while ((std::size_t{1} << r) < v) ++r;
        return r;
    }

    template <class Arch, std::size_t Regs, bool Scale>
    static void leaf_pass_impl(const in_register_fwht<Arch>& lanes, float* x, std::size_t len,
                               float scale) noexcept {
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        const batch s(scale);
        for (std::size_t i = 0; i < len; i += Regs * w) {
            native_register<Arch> v[Regs];
            static_for<Regs>([&](auto k) QIFT_HADAMARD_LAMBDA_INLINE {
                v[k] = batch::load_unaligned(x + i + k * w);
            });
            lanes.template operator()<Regs>(v);
            register_butterflies<Regs, batch>(v);
            static_for<Regs>([&](auto k) QIFT_HADAMARD_LAMBDA_INLINE {
                batch r(v[k]);
                if constexpr (Scale) r *= s;
                r.store_unaligned(x + i + k * w);
            });
        }
    }

    template <class Arch>
    static void leaf_pass(const in_register_fwht<Arch>& lanes, float* x, std::size_t len,
                          std::size_t regs, bool scaled, float scale) noexcept {
        auto run = [&](auto r) QIFT_HADAMARD_LAMBDA_INLINE {
            if (scaled)
                leaf_pass_impl<Arch, decltype(r)::value, true>(lanes, x, len, scale);
            else
                leaf_pass_impl<Arch, decltype(r)::value, false>(lanes, x, len, scale);
        };
        switch (regs) {
            case 2:
                run(std::integral_constant<std::size_t, 2>{});
                break;
            case 4:
                run(std::integral_constant<std::size_t, 4>{});
                break;
            case 8:
                run(std::integral_constant<std::size_t, 8>{});
                break;
            default:
                if constexpr (fwht_max_radix_log<Arch> >= 4)
                    run(std::integral_constant<std::size_t, 16>{});
                break;
        }
    }

    // One pass of log2(G) stages with partner distances h, 2h, .. G/2·h (h a multiple of W).
    template <class Arch, std::size_t G, bool Scale>
    static void radix_pass_impl(float* x, std::size_t len, std::size_t h, float scale) noexcept {
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        const batch s(scale);
        for (std::size_t i = 0; i < len; i += G * h)
            for (std::size_t j = i; j < i + h; j += w) {
                native_register<Arch> v[G];
                static_for<G>([&](auto k) QIFT_HADAMARD_LAMBDA_INLINE {
                    v[k] = batch::load_unaligned(x + j + k * h);
                });
                register_butterflies<G, batch>(v);
                static_for<G>([&](auto k) QIFT_HADAMARD_LAMBDA_INLINE {
                    batch r(v[k]);
                    if constexpr (Scale) r *= s;
                    r.store_unaligned(x + j + k * h);
                });
            }
    }

    template <class Arch>
    static void radix_pass(float* x, std::size_t len, std::size_t h, unsigned log_g, bool scaled,
                           float scale) noexcept {
        auto run = [&](auto g) QIFT_HADAMARD_LAMBDA_INLINE {
            if (scaled)
                radix_pass_impl<Arch, decltype(g)::value, true>(x, len, h, scale);
            else
                radix_pass_impl<Arch, decltype(g)::value, false>(x, len, h, scale);
        };
        switch (log_g) {
            case 1:
                run(std::integral_constant<std::size_t, 2>{});
                break;
            case 2:
                run(std::integral_constant<std::size_t, 4>{});
                break;
            case 3:
                run(std::integral_constant<std::size_t, 8>{});
                break;
            default:
                if constexpr (fwht_max_radix_log<Arch> >= 4)
                    run(std::integral_constant<std::size_t, 16>{});
                break;
        }
    }

    // `stages` stages starting at partner distance h, split as evenly as possible into passes
    // of at most max_radix_log stages; the last pass applies the scale when asked.
    template <class Arch>
    static void radix_passes(float* x, std::size_t len, std::size_t h, unsigned stages, bool scaled,
                             float scale) noexcept {
        constexpr unsigned max_log = fwht_max_radix_log<Arch>;
        unsigned passes = (stages + max_log - 1) / max_log;
        while (stages > 0) {
            const unsigned now = (stages + passes - 1) / passes;
            stages -= now;
            --passes;
            radix_pass<Arch>(x, len, h, now, scaled && stages == 0, scale);
            h <<= now;
        }
    }
};

// ---------------------------------------------------------------------------------------
// Block mix

/// The coefficient layout hadamard_mix_kernel reads: rows in groups of 4, and within a group
/// the 4 coefficients of one input row j next to each other, so a register tile of 4 or 8
/// output rows reads 16 or 2×16 contiguous bytes per j instead of 4 or 8 strided floats.
/// packed[((i / 4)·k + j)·4 + i % 4] = h[i·k + j]; size 4·ceil(k/4)·k, padding rows zero.
inline std::size_t packed_mix_index(std::size_t k, std::size_t i, std::size_t j) noexcept {
    return ((i / 4) * k + j) * 4 + i % 4;
}

inline void pack_mix_coefficients(const float* h, std::size_t k, float* packed) noexcept {
    std::fill(packed, packed + (k + 3) / 4 * 4 * k, 0.0f);
    for (std::size_t i = 0; i < k; ++i)
        for (std::size_t j = 0; j < k; ++j) packed[packed_mix_index(k, i, j)] = h[i * k + j];
}

/// out = h · in for a k×k coefficient matrix, given in the layout of pack_mix_coefficients,
/// and k×cols row-major panels (see hadamard_mix_reference). Register-blocked over 8
/// (AVX-512) or 4 output rows and two vectors of columns, so each loaded input vector feeds 8
/// or 4 multiply-adds; the column strip of k rows stays in L1/L2 while all output rows pass
/// over it.
struct hadamard_mix_kernel {
    template <class Arch>
    void operator()(Arch, const float* packed, std::size_t k, const float* in, float* out,
                    std::size_t cols) const noexcept {
        columns(Arch{}, packed, k, in, out, cols, cols);
    }

    /// The same on the columns [0, c_end) only (c_end <= cols; cols is the row stride).
    template <class Arch>
    void columns(Arch, const float* packed, std::size_t k, const float* in, float* out,
                 std::size_t cols, std::size_t c_end) const noexcept {
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        constexpr std::size_t rows_block = is_avx512_arch<Arch> ? 8 : 4;
        std::size_t c = 0;
        for (; c + 2 * w <= c_end; c += 2 * w)
            strip<Arch, rows_block, 2>(packed, k, in, out, cols, c);
        for (; c + w <= c_end; c += w) strip<Arch, rows_block, 1>(packed, k, in, out, cols, c);
        for (; c < c_end; ++c)
            for (std::size_t i = 0; i < k; ++i) {
                float acc = 0.0f;
                for (std::size_t j = 0; j < k; ++j)
                    acc += packed[packed_mix_index(k, i, j)] * in[j * cols + c];
                out[i * cols + c] = acc;
            }
    }

  private:
    // Rows output rows from row i (a multiple of 4 when Rows is), Vecs vectors from column c.
    template <class Arch, std::size_t Rows, std::size_t Vecs>
    QIFT_HADAMARD_INLINE static void tile(const float* packed, std::size_t k, const float* in,
                                          float* out, std::size_t cols, std::size_t c,
                                          std::size_t i) noexcept {
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        native_register<Arch> acc[Rows][Vecs];
        static_for<Rows>([&](auto r) QIFT_HADAMARD_LAMBDA_INLINE {
            static_for<Vecs>([&](auto v) QIFT_HADAMARD_LAMBDA_INLINE { acc[r][v] = batch(0.0f); });
        });
        const float* group = packed + packed_mix_index(k, i, 0);
        for (std::size_t j = 0; j < k; ++j) {
            native_register<Arch> x[Vecs];
            static_for<Vecs>([&](auto v) QIFT_HADAMARD_LAMBDA_INLINE {
                x[v] = batch::load_unaligned(in + j * cols + c + v * w);
            });
            static_for<Rows>([&](auto r) QIFT_HADAMARD_LAMBDA_INLINE {
                const batch coef(group[(r / 4) * 4 * k + j * 4 + r % 4]);
                static_for<Vecs>([&](auto v) QIFT_HADAMARD_LAMBDA_INLINE {
                    acc[r][v] = xsimd::fma(batch(x[v]), coef, batch(acc[r][v]));
                });
            });
        }
        static_for<Rows>([&](auto r) QIFT_HADAMARD_LAMBDA_INLINE {
            static_for<Vecs>([&](auto v) QIFT_HADAMARD_LAMBDA_INLINE {
                batch(acc[r][v]).store_unaligned(out + (i + r) * cols + c + v * w);
            });
        });
    }

    template <class Arch, std::size_t Rows, std::size_t Vecs>
    static void strip(const float* packed, std::size_t k, const float* in, float* out,
                      std::size_t cols, std::size_t c) noexcept {
        std::size_t i = 0;
        for (; i + Rows <= k; i += Rows) tile<Arch, Rows, Vecs>(packed, k, in, out, cols, c, i);
        for (; i + 4 <= k; i += 4) tile<Arch, 4, Vecs>(packed, k, in, out, cols, c, i);
        for (; i < k; ++i) {
            // A single row: its coefficients sit at stride 4 inside its group.
            using batch = xsimd::batch<float, Arch>;
            constexpr std::size_t w = batch::size;
            native_register<Arch> acc[Vecs];
            static_for<Vecs>([&](auto v) QIFT_HADAMARD_LAMBDA_INLINE { acc[v] = batch(0.0f); });
            for (std::size_t j = 0; j < k; ++j) {
                const batch coef(packed[packed_mix_index(k, i, j)]);
                static_for<Vecs>([&](auto v) QIFT_HADAMARD_LAMBDA_INLINE {
                    acc[v] = xsimd::fma(batch::load_unaligned(in + j * cols + c + v * w), coef,
                                        batch(acc[v]));
                });
            }
            static_for<Vecs>([&](auto v) QIFT_HADAMARD_LAMBDA_INLINE {
                batch(acc[v]).store_unaligned(out + i * cols + c + v * w);
            });
        }
    }
};

// ---------------------------------------------------------------------------------------
// Short rows

/// x <- scale · (I ⊗ H_len) x: the Walsh-Hadamard transform of every row of length `len` (a
/// power of two, len <= the register width W) of n contiguous floats (n a multiple of len), the
/// same result as fwht_reference on each row. The log2(len) stages run inside registers, W/len
/// rows per register.
struct fwht_short_rows_kernel {
    template <class Arch>
    void operator()(Arch, float* x, std::size_t n, std::size_t len, float scale) const noexcept {
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        std::size_t i = 0;
        unsigned stages = 0;
        while ((std::size_t{1} << stages) < len) ++stages;
#if defined(__AVX512F__)
        if constexpr (is_avx512_arch<Arch>) {
            static const in_register_fwht<Arch> lanes;
            const __m512 s0 = _mm512_load_ps(lanes.signs[0]), s1 = _mm512_load_ps(lanes.signs[1]);
            const __m512 s2 = _mm512_load_ps(lanes.signs[2]), s3 = _mm512_load_ps(lanes.signs[3]);
            const __m512 sc = _mm512_set1_ps(scale);
            constexpr __mmask16 all = 0xFFFF;
            for (; i + w <= n; i += w) {
                __m512 v = _mm512_loadu_ps(x + i);
                if (stages > 0) v = _mm512_fmadd_ps(v, s0, _mm512_mask_permute_ps(v, all, v, 0xB1));
                if (stages > 1) v = _mm512_fmadd_ps(v, s1, _mm512_mask_permute_ps(v, all, v, 0x4E));
                if (stages > 2)
                    v = _mm512_fmadd_ps(v, s2, _mm512_mask_shuffle_f32x4(v, all, v, v, 0xB1));
                if (stages > 3)
                    v = _mm512_fmadd_ps(v, s3, _mm512_mask_shuffle_f32x4(v, all, v, v, 0x4E));
                _mm512_storeu_ps(x + i, _mm512_mul_ps(v, sc));
            }
        }
#endif
#if defined(__AVX__)
        if constexpr (is_avx_arch<Arch> && !is_avx512_arch<Arch>) {
            static const in_register_fwht<Arch> lanes;
            const batch s0 = batch::load_aligned(lanes.signs[0]);
            const batch s1 = batch::load_aligned(lanes.signs[1]);
            const batch s2 = batch::load_aligned(lanes.signs[2]), sc(scale);
            for (; i + w <= n; i += w) {
                batch v = batch::load_unaligned(x + i);
                if (stages > 0) v = xsimd::fma(v, s0, batch(_mm256_permute_ps(v, 0xB1)));
                if (stages > 1) v = xsimd::fma(v, s1, batch(_mm256_permute_ps(v, 0x4E)));
                if (stages > 2) v = xsimd::fma(v, s2, batch(_mm256_permute2f128_ps(v, v, 0x01)));
                (v * sc).store_unaligned(x + i);
            }
        }
#endif
        (void)w;
        for (; i < n; i += len) fwht_reference(x + i, len, scale);
    }
};

// ---------------------------------------------------------------------------------------
// Narrow block mix

/// Row stride of the column-major coefficient layout narrow_mix_kernel reads: k rounded up to
/// 16 floats (one AVX-512 register), so every column starts aligned and padding rows are zero.
inline std::size_t narrow_mix_stride(std::size_t k) noexcept {
    return (k + 15) / 16 * 16;
}

/// cm[j·narrow_mix_stride(k) + i] = h[i·k + j] (h row-major k×k), padding zero.
inline void pack_narrow_mix_coefficients(const float* h, std::size_t k, float* cm) noexcept {
    const std::size_t kp = narrow_mix_stride(k);
    std::fill(cm, cm + kp * k, 0.0f);
    for (std::size_t i = 0; i < k; ++i)
        for (std::size_t j = 0; j < k; ++j) cm[j * kp + i] = h[i * k + j];
}

/// out[i][c] = Σ_j h[i][j] · in[j][c] for the columns c in [c0, c1) of k×cols row-major
/// panels (see hadamard_mix_reference), h in the layout of pack_narrow_mix_coefficients: one
/// column at a time, vectorized over the output rows (a GEMV per column), for panels narrower
/// than a register where hadamard_mix_kernel has no full vector of columns. `cm` is 64-byte
/// aligned.
struct narrow_mix_kernel {
    template <class Arch>
    void operator()(Arch, const float* cm, std::size_t k, const float* in, float* out,
                    std::size_t cols, std::size_t c0, std::size_t c1) const noexcept {
        // Up to 4 columns share every coefficient load (the matrix is read from L2 once per
        // 4 columns, not once per column).
        std::size_t c = c0;
        for (; c + 4 <= c1; c += 4) block<Arch, 4>(cm, k, in, out, cols, c);
        switch (c1 - c) {
            case 3:
                block<Arch, 3>(cm, k, in, out, cols, c);
                break;
            case 2:
                block<Arch, 2>(cm, k, in, out, cols, c);
                break;
            case 1:
                block<Arch, 1>(cm, k, in, out, cols, c);
                break;
            default:
                break;
        }
    }

  private:
    // Columns [c, c + C): 4 registers of output rows at a time, C accumulators each (and two
    // sets, even and odd j, when C = 1, so at least 8 FMA chains are in flight).
    template <class Arch, std::size_t C>
    static void block(const float* cm, std::size_t k, const float* in, float* out, std::size_t cols,
                      std::size_t c) noexcept {
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        constexpr std::size_t regs = 4;
        constexpr std::size_t sets = C == 1 ? 2 : 1;
        const std::size_t kp = narrow_mix_stride(k);
        alignas(64) float lanes[C][regs * w];
        for (std::size_t i0 = 0; i0 < k; i0 += regs * w) {
            const std::size_t live = std::min(regs, (kp - i0 + w - 1) / w);
            native_register<Arch> acc[sets][C][regs];
            static_for<sets>([&](auto e) QIFT_HADAMARD_LAMBDA_INLINE {
                static_for<C>([&](auto cc) QIFT_HADAMARD_LAMBDA_INLINE {
                    static_for<regs>(
                        [&](auto r) QIFT_HADAMARD_LAMBDA_INLINE { acc[e][cc][r] = batch(0.0f); });
                });
            });
            auto step = [&](std::size_t j, auto e) QIFT_HADAMARD_LAMBDA_INLINE {
                const float* col = cm + j * kp + i0;
                native_register<Arch> b[C];
                static_for<C>([&](auto cc) QIFT_HADAMARD_LAMBDA_INLINE {
                    b[cc] = batch(in[j * cols + c + cc]);
                });
                static_for<regs>([&](auto r) QIFT_HADAMARD_LAMBDA_INLINE {
                    if (r < live) {
                        const batch h = batch::load_aligned(col + r * w);
                        static_for<C>([&](auto cc) QIFT_HADAMARD_LAMBDA_INLINE {
                            acc[e][cc][r] = xsimd::fma(h, batch(b[cc]), batch(acc[e][cc][r]));
                        });
                    }
                });
            };
            std::size_t j = 0;
            if constexpr (sets == 2)
                for (; j + 2 <= k; j += 2) {
                    step(j, std::integral_constant<std::size_t, 0>{});
                    step(j + 1, std::integral_constant<std::size_t, sets - 1>{});
                }
            for (; j < k; ++j) step(j, std::integral_constant<std::size_t, 0>{});
            static_for<C>([&](auto cc) QIFT_HADAMARD_LAMBDA_INLINE {
                static_for<regs>([&](auto r) QIFT_HADAMARD_LAMBDA_INLINE {
                    batch v(acc[0][cc][r]);
                    if constexpr (sets == 2) v += batch(acc[sets - 1][cc][r]);
                    v.store_aligned(lanes[cc] + r * w);
                });
            });
            const std::size_t end = std::min(k, i0 + regs * w);
            for (std::size_t i = i0; i < end; ++i)
                static_for<C>([&](auto cc) QIFT_HADAMARD_LAMBDA_INLINE {
                    out[i * cols + c + cc] = lanes[cc][i - i0];
                });
        }
    }
};

// ---------------------------------------------------------------------------------------
// Paley II row pairs

/// z <- (I ⊗ [[1, 1], [1, -1]]) x on `pairs` pairs of rows of length `cols` (rows 2i, 2i+1 of
/// a row-major panel; x and z may not alias): z[2i] = x[2i] + x[2i+1], z[2i+1] = x[2i] - x[2i+1].
template <class Arch>
void paley_pairs_split(const float* x, float* z, std::size_t pairs, std::size_t cols) noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t w = batch::size;
    for (std::size_t i = 0; i < pairs; ++i) {
        const float* a = x + 2 * i * cols;
        const float* b = a + cols;
        float* za = z + 2 * i * cols;
        float* zb = za + cols;
        std::size_t c = 0;
        for (; c + w <= cols; c += w) {
            const batch u = batch::load_unaligned(a + c), v = batch::load_unaligned(b + c);
            (u + v).store_unaligned(za + c);
            (u - v).store_unaligned(zb + c);
        }
        for (; c < cols; ++c) {
            const float u = a[c], v = b[c];
            za[c] = u + v;
            zb[c] = u - v;
        }
    }
}

/// The Paley II diagonal term: y <- y - z + [[1, -1], [-1, -1]]·x per row pair, written with
/// z = pairs(x): y[2i] += z[2i+1] - z[2i], y[2i+1] -= z[2i+1] + z[2i].
template <class Arch>
void paley_pairs_join(float* y, const float* z, std::size_t pairs, std::size_t cols) noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t w = batch::size;
    for (std::size_t i = 0; i < pairs; ++i) {
        float* ya = y + 2 * i * cols;
        float* yb = ya + cols;
        const float* za = z + 2 * i * cols;
        const float* zb = za + cols;
        std::size_t c = 0;
        for (; c + w <= cols; c += w) {
            const batch u = batch::load_unaligned(za + c), v = batch::load_unaligned(zb + c);
            (batch::load_unaligned(ya + c) + (v - u)).store_unaligned(ya + c);
            (batch::load_unaligned(yb + c) - (v + u)).store_unaligned(yb + c);
        }
        for (; c < cols; ++c) {
            ya[c] += zb[c] - za[c];
            yb[c] -= zb[c] + za[c];
        }
    }
}

// ---------------------------------------------------------------------------------------
// Small complex DFTs on columns of complex lanes

/// Cosines and sines of 2π·(k·t mod P)/P for the P-point DFT, k, t < P.
template <std::size_t P>
struct dft_twiddles {
    alignas(64) float c[P][P], s[P][P];
    dft_twiddles() noexcept {
        for (std::size_t k = 0; k < P; ++k)
            for (std::size_t t = 0; t < P; ++t) {
                const double a = 2.0 * 3.14159265358979323846 * static_cast<double>(k * t % P) /
                                 static_cast<double>(P);
                c[k][t] = static_cast<float>(std::cos(a));
                s[k][t] = static_cast<float>(std::sin(a));
            }
    }
};

/// The P-point complex DFTs the Jacobsthal kernels run, P in {2, 3, 4, 5, 7, 8, 9, 11, 13}, on
/// complex rows: a row holds W complex lanes, the real parts at +0 and the imaginary parts at
/// +W floats (W the batch width of Arch). Forward X_k = Σ_t x_t·ω^(-kt), inverse with ω^(+kt),
/// ω = e^(2πi/P), both unscaled. One DFT keeps its P rows in registers: the rows t and P - t
/// are combined first (sums and differences), so it costs about P²/4 multiply-adds per
/// complex register pair and lane group instead of P².
struct dft_codelets {
    static constexpr bool supports(std::size_t p) noexcept {
        return p == 2 || p == 3 || p == 4 || p == 5 || p == 7 || p == 8 || p == 9 || p == 11 ||
               p == 13;
    }

    /// One DFT in place on the P rows row0 + t·stride (stride in floats), t < P.
    template <class Arch, std::size_t P, bool Inverse>
    QIFT_HADAMARD_INLINE static void dft(const dft_twiddles<P>& tw, float* row0,
                                         std::size_t stride) noexcept {
        if constexpr (P == 4 || P == 8) {
            // The inverse DFT is the forward one with real and imaginary parts swapped on the
            // way in and out.
            constexpr std::size_t w = xsimd::batch<float, Arch>::size;
            radix2<Arch, P>(row0 + (Inverse ? w : 0), row0 + (Inverse ? 0 : w), stride);
            return;
        }
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        constexpr bool even = P % 2 == 0;
        constexpr std::size_t h = (P - 1) / 2;  // the pairs (t, P - t), t = 1 .. h
        native_register<Arch> sr[h + 1], si[h + 1], dr[h + 1], di[h + 1];
        const batch r0 = batch::load_unaligned(row0), i0 = batch::load_unaligned(row0 + w);
        // Even P: the middle row m = P/2 enters X_k with the sign (-1)^k, so X_k starts from
        // e = x_0 + x_m (k even) or o = x_0 - x_m (k odd). Odd P: both are x_0.
        batch er = r0, ei = i0, orr = r0, oi = i0;
        if constexpr (even) {
            const float* m = row0 + (P / 2) * stride;
            const batch mr = batch::load_unaligned(m), mi = batch::load_unaligned(m + w);
            er = r0 + mr;
            ei = i0 + mi;
            orr = r0 - mr;
            oi = i0 - mi;
        }
        batch outr = er, outi = ei;
        static_for<h>([&](auto tm1) QIFT_HADAMARD_LAMBDA_INLINE {
            constexpr std::size_t t = tm1 + 1;
            const float* a = row0 + t * stride;
            const float* b = row0 + (P - t) * stride;
            const batch ar = batch::load_unaligned(a), ai = batch::load_unaligned(a + w);
            const batch br = batch::load_unaligned(b), bi = batch::load_unaligned(b + w);
            sr[t] = ar + br;
            si[t] = ai + bi;
            dr[t] = ar - br;
            di[t] = ai - bi;
            outr += batch(sr[t]);
            outi += batch(si[t]);
        });
        outr.store_unaligned(row0);
        outi.store_unaligned(row0 + w);
        if constexpr (even) {
            // X_(P/2) = x_0 + (-1)^(P/2)·x_m + Σ_t (-1)^t (x_t + x_(P-t)).
            batch mr = (P / 2) % 2 == 0 ? er : orr, mi = (P / 2) % 2 == 0 ? ei : oi;
            static_for<h>([&](auto tm1) QIFT_HADAMARD_LAMBDA_INLINE {
                constexpr std::size_t t = tm1 + 1;
                if constexpr (t % 2 == 1) {
                    mr -= batch(sr[t]);
                    mi -= batch(si[t]);
                } else {
                    mr += batch(sr[t]);
                    mi += batch(si[t]);
                }
            });
            mr.store_unaligned(row0 + (P / 2) * stride);
            mi.store_unaligned(row0 + (P / 2) * stride + w);
        }
        static_for<h>([&](auto km1) QIFT_HADAMARD_LAMBDA_INLINE {
            constexpr std::size_t k = km1 + 1;
            batch ar = k % 2 == 1 ? orr : er, ai = k % 2 == 1 ? oi : ei, brr(0.0f), bri(0.0f);
            static_for<h>([&](auto tm1) QIFT_HADAMARD_LAMBDA_INLINE {
                constexpr std::size_t t = tm1 + 1;
                const batch c(tw.c[k][t]), s(tw.s[k][t]);
                ar = xsimd::fma(batch(sr[t]), c, ar);
                ai = xsimd::fma(batch(si[t]), c, ai);
                brr = xsimd::fma(batch(dr[t]), s, brr);
                bri = xsimd::fma(batch(di[t]), s, bri);
            });
            // Forward: X_k = A - iB, X_(P-k) = A + iB; inverse the other way round.
            float* pk = row0 + (Inverse ? P - k : k) * stride;
            float* pm = row0 + (Inverse ? k : P - k) * stride;
            (ar + bri).store_unaligned(pk);
            (ai - brr).store_unaligned(pk + w);
            (ar - bri).store_unaligned(pm);
            (ai + brr).store_unaligned(pm + w);
        });
    }

    /// The P-point DFT along one axis of a mixed-radix row index: `rows` rows at `stride`
    /// floats from `base`, the axis of length P with a step of s rows (rows a multiple of P·s):
    /// one DFT on the rows i + t·s (t < P) for every i whose digit on this axis is 0.
    template <class Arch, std::size_t P, bool Inverse>
    static void pass(const dft_twiddles<P>& tw, float* base, std::size_t rows, std::size_t s,
                     std::size_t stride) noexcept {
        const std::size_t step = s * stride;
        for (std::size_t hi = 0; hi < rows; hi += P * s)
            for (std::size_t lo = 0; lo < s; ++lo)
                dft<Arch, P, Inverse>(tw, base + (hi + lo) * stride, step);
    }

    /// pass with P chosen at run time (p must satisfy supports(p); others do nothing).
    template <class Arch, bool Inverse>
    static void pass(std::size_t p, float* base, std::size_t rows, std::size_t s,
                     std::size_t stride) noexcept {
        switch (p) {
            case 2:
                with_twiddles<Arch, 2, Inverse>(base, rows, s, stride);
                break;
            case 3:
                with_twiddles<Arch, 3, Inverse>(base, rows, s, stride);
                break;
            case 4:
                with_twiddles<Arch, 4, Inverse>(base, rows, s, stride);
                break;
            case 5:
                with_twiddles<Arch, 5, Inverse>(base, rows, s, stride);
                break;
            case 7:
                with_twiddles<Arch, 7, Inverse>(base, rows, s, stride);
                break;
            case 8:
                with_twiddles<Arch, 8, Inverse>(base, rows, s, stride);
                break;
            case 9:
                with_twiddles<Arch, 9, Inverse>(base, rows, s, stride);
                break;
            case 11:
                with_twiddles<Arch, 11, Inverse>(base, rows, s, stride);
                break;
            case 13:
                with_twiddles<Arch, 13, Inverse>(base, rows, s, stride);
                break;
            default:
                break;
        }
    }

  private:
    // Forward 4- and 8-point DFTs by radix-2 steps (52 instead of 76 operations for P = 8), on
    // rows whose real parts start at re + t·stride and imaginary parts at im + t·stride.
    template <class Arch, std::size_t P>
    QIFT_HADAMARD_INLINE static void radix2(float* re, float* im, std::size_t stride) noexcept {
        using batch = xsimd::batch<float, Arch>;
        auto ld = [&](const float* base, std::size_t t) QIFT_HADAMARD_LAMBDA_INLINE {
            return batch::load_unaligned(base + t * stride);
        };
        auto st = [&](float* base, std::size_t t, const batch& v)
                      QIFT_HADAMARD_LAMBDA_INLINE { v.store_unaligned(base + t * stride); };
        // The 4-point DFT of rows (e0, e1, e2, e3) = y, stored at the rows out[0..3]:
        // c = y0 ± y2, d = y1 ± y3, Y0 = c0 + d0, Y2 = c0 - d0, Y1 = c1 - i·d1, Y3 = c1 + i·d1.
        if constexpr (P == 4) {
            const batch c0r = ld(re, 0) + ld(re, 2), c0i = ld(im, 0) + ld(im, 2);
            const batch c1r = ld(re, 0) - ld(re, 2), c1i = ld(im, 0) - ld(im, 2);
            const batch d0r = ld(re, 1) + ld(re, 3), d0i = ld(im, 1) + ld(im, 3);
            const batch d1r = ld(re, 1) - ld(re, 3), d1i = ld(im, 1) - ld(im, 3);
            st(re, 0, c0r + d0r);
            st(im, 0, c0i + d0i);
            st(re, 2, c0r - d0r);
            st(im, 2, c0i - d0i);
            st(re, 1, c1r + d1i);
            st(im, 1, c1i - d1r);
            st(re, 3, c1r - d1i);
            st(im, 3, c1i + d1r);
        } else {
            // a_t = x_t + x_(t+4) gives the even outputs, b_t = (x_t - x_(t+4))·ω^(-t) the odd
            // ones, each by a 4-point DFT; ω^(-1) = (1 - i)/√2, ω^(-2) = -i, ω^(-3) = -(1 + i)/√2.
            const batch h(0.70710678118654752f);
            native_register<Arch> ar[4], ai[4], br[4], bi[4];
            static_for<4>([&](auto t) QIFT_HADAMARD_LAMBDA_INLINE {
                const batch xr = ld(re, t), xi = ld(im, t), yr = ld(re, t + 4), yi = ld(im, t + 4);
                ar[t] = xr + yr;
                ai[t] = xi + yi;
                br[t] = xr - yr;
                bi[t] = xi - yi;
            });
            {
                const batch c0r = batch(ar[0]) + batch(ar[2]), c0i = batch(ai[0]) + batch(ai[2]);
                const batch c1r = batch(ar[0]) - batch(ar[2]), c1i = batch(ai[0]) - batch(ai[2]);
                const batch d0r = batch(ar[1]) + batch(ar[3]), d0i = batch(ai[1]) + batch(ai[3]);
                const batch d1r = batch(ar[1]) - batch(ar[3]), d1i = batch(ai[1]) - batch(ai[3]);
                st(re, 0, c0r + d0r);
                st(im, 0, c0i + d0i);
                st(re, 4, c0r - d0r);
                st(im, 4, c0i - d0i);
                st(re, 2, c1r + d1i);
                st(im, 2, c1i - d1r);
                st(re, 6, c1r - d1i);
                st(im, 6, c1i + d1r);
            }
            // y0 = b0, y2 = -i·b2: c0 = y0 + y2, c1 = y0 - y2. y1 = h·(P, M), y3 = h·(T, -S)
            // with P = b1r + b1i, M = b1i - b1r, S = b3r + b3i, T = b3i - b3r.
            const batch c0r = batch(br[0]) + batch(bi[2]), c0i = batch(bi[0]) - batch(br[2]);
            const batch c1r = batch(br[0]) - batch(bi[2]), c1i = batch(bi[0]) + batch(br[2]);
            const batch pp = batch(br[1]) + batch(bi[1]), mm = batch(bi[1]) - batch(br[1]);
            const batch ss = batch(br[3]) + batch(bi[3]), tt = batch(bi[3]) - batch(br[3]);
            const batch d0r = pp + tt, d0i = mm - ss, d1r = pp - tt, d1i = mm + ss;  // / h
            st(re, 1, xsimd::fma(h, d0r, c0r));
            st(im, 1, xsimd::fma(h, d0i, c0i));
            st(re, 5, xsimd::fnma(h, d0r, c0r));
            st(im, 5, xsimd::fnma(h, d0i, c0i));
            st(re, 3, xsimd::fma(h, d1i, c1r));
            st(im, 3, xsimd::fnma(h, d1r, c1i));
            st(re, 7, xsimd::fnma(h, d1i, c1r));
            st(im, 7, xsimd::fma(h, d1r, c1i));
        }
    }

    template <class Arch, std::size_t P, bool Inverse>
    static void with_twiddles(float* base, std::size_t rows, std::size_t s,
                              std::size_t stride) noexcept {
        static const dft_twiddles<P> tw;
        pass<Arch, P, Inverse>(tw, base, rows, s, stride);
    }
};

/// Scalar reference of one dft_codelets DFT on a single complex lane: x (P complex values)
/// <- its forward (ω^(-kt)) or inverse (ω^(+kt)) unscaled DFT, in double.
inline void dft_reference(std::complex<double>* x, std::size_t p, bool inverse) {
    std::vector<std::complex<double>> y(p);
    for (std::size_t k = 0; k < p; ++k)
        for (std::size_t t = 0; t < p; ++t) {
            const double a = (inverse ? 2.0 : -2.0) * 3.14159265358979323846 *
                             static_cast<double>(k * t % p) / static_cast<double>(p);
            y[k] += x[t] * std::complex<double>(std::cos(a), std::sin(a));
        }
    std::copy(y.begin(), y.end(), x);
}

// ---------------------------------------------------------------------------------------
// Jacobsthal core by a DFT over (Z_p)^r

/// The complex multipliers jacobsthal_dft_kernel applies in the DFT domain, for a Jacobsthal
/// matrix with eigenvalues Λ (see jacobsthal_eigenvalues): mul[2u] + i·mul[2u+1] =
/// (d + ε·Λ(u)) / q, the core being [[d', τ·1ᵀ], [σ·1, d·I + ε·Q]].
/// The field and border of a bordered Jacobsthal core of order q + 1 over GF(p^r): the border
/// signs τ (row 0) and σ (column 0), and the corner d'.
struct jacobsthal_field {
    std::size_t p = 0;
    unsigned r = 0;
    std::size_t q = 0;
    int tau = 1, sigma = 1;
    float diag = 1.0f;  ///< the corner d' (= d)
};

struct jacobsthal_dft_params : jacobsthal_field {
    const float* mul = nullptr;  ///< 2q floats
};

/// y = core · x in place for the bordered Jacobsthal core of order q + 1 over GF(p^r), p in
/// {3, 5, 7, 11, 13}: row 0 of y is d'·x_0 + τ·Σ_a x_(1+a), row 1+a is σ·x_0 + (d·x' + ε·Q x')_a.
/// x is (q+1)×cols row-major; the columns [0, c_end) are transformed, c_end a multiple of 2W:
/// every 2W columns form W complex lanes
/// (the first W the real parts, the next W the imaginary ones; the core is real, so the pairing
/// is exact), the convolution by χ runs as r forward P-point DFT passes (one per base-p digit),
/// a complex multiply per frequency and r inverse passes: O(q·r·p) per 2W columns instead of
/// O(q²), all in registers and on a panel of q·2W floats that stays in L1/L2.
struct jacobsthal_dft_kernel {
    template <class Arch>
    void operator()(Arch, const jacobsthal_dft_params& prm, float* x,
                    std::size_t cols) const noexcept {
        (*this)(Arch{}, prm, x, cols, cols);
    }

    template <class Arch>
    void operator()(Arch, const jacobsthal_dft_params& prm, float* x, std::size_t cols,
                    std::size_t c_end) const noexcept {
        switch (prm.p) {
            case 3:
                run<Arch, 3>(prm, x, cols, c_end);
                break;
            case 5:
                run<Arch, 5>(prm, x, cols, c_end);
                break;
            case 7:
                run<Arch, 7>(prm, x, cols, c_end);
                break;
            case 11:
                run<Arch, 11>(prm, x, cols, c_end);
                break;
            case 13:
                run<Arch, 13>(prm, x, cols, c_end);
                break;
            default:
                break;
        }
    }

    static constexpr bool supports(std::size_t p) noexcept {
        return p == 3 || p == 5 || p == 7 || p == 11 || p == 13;
    }

  private:
    template <class Arch, std::size_t P>
    static void run(const jacobsthal_dft_params& prm, float* x, std::size_t cols,
                    std::size_t c_end) noexcept {
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        static const dft_twiddles<P> tw;
        const std::size_t q = prm.q;
        const batch tau(static_cast<float>(prm.tau)), sigma(static_cast<float>(prm.sigma));
        const batch diag(prm.diag);
        for (std::size_t c = 0; c < c_end; c += 2 * w) {
            float* top = x + c;
            float* base = x + cols + c;
            const batch x0r = batch::load_unaligned(top), x0i = batch::load_unaligned(top + w);
            std::size_t s = 1;
            for (unsigned t = 0; t < prm.r; ++t, s *= P)
                dft_codelets::pass<Arch, P, false>(tw, base, q, s, cols);
            // The zero frequency is Σ_a x'_a; then the multiply by (d + εΛ(u))/q.
            const batch f0r = batch::load_unaligned(base), f0i = batch::load_unaligned(base + w);
            for (std::size_t u = 0; u < q; ++u) {
                float* row = base + u * cols;
                const batch mr(prm.mul[2 * u]), mi(prm.mul[2 * u + 1]);
                const batch vr = batch::load_unaligned(row), vi = batch::load_unaligned(row + w);
                xsimd::fms(vr, mr, vi * mi).store_unaligned(row);
                xsimd::fma(vr, mi, vi * mr).store_unaligned(row + w);
            }
            s = 1;
            for (unsigned t = 0; t < prm.r; ++t, s *= P)
                dft_codelets::pass<Arch, P, true>(tw, base, q, s, cols);
            for (std::size_t a = 0; a < q; ++a) {
                float* row = base + a * cols;
                xsimd::fma(sigma, x0r, batch::load_unaligned(row)).store_unaligned(row);
                xsimd::fma(sigma, x0i, batch::load_unaligned(row + w)).store_unaligned(row + w);
            }
            xsimd::fma(tau, f0r, diag * x0r).store_unaligned(top);
            xsimd::fma(tau, f0i, diag * x0i).store_unaligned(top + w);
        }
    }
};

// ---------------------------------------------------------------------------------------
// Complex rows packed in one AVX-512 register

#if defined(__AVX512F__)
/// Small DFTs and circulant products on complex rows of 8 lanes packed in one 16-float
/// register, the real parts in the low half and the imaginary parts in the high one (the row
/// layout of jacobsthal_dft_narrow_kernel for p <= 8): every complex add is one instruction
/// instead of two, and a multiply by ±i is a swap of the halves. P odd, P <= 7.
template <std::size_t P>
struct packed_dft {
    static_assert(P % 2 == 1 && P <= 7, "packed_dft: odd P <= 7");
    static constexpr std::size_t h = (P - 1) / 2;  // the pairs (t, P - t), t = 1 .. h

    alignas(64) float c[h + 1][h + 1] = {}, s[h + 1][h + 1] = {};
    /// rot[m]: the permutation moving lane a - m to lane a (mod P) in both halves (a < P; the
    /// padding lanes P .. 7 stay in place), so y = Σ_m K(m)·rot_m(x) is y_a = Σ_b K(a - b)·x_b.
    alignas(64) std::int32_t rot[P][16] = {};
    alignas(64) float sign[16] = {};  ///< +1 in the low half, -1 in the high one

    packed_dft() noexcept {
        const dft_twiddles<P> tw;
        for (std::size_t k = 1; k <= h; ++k)
            for (std::size_t t = 1; t <= h; ++t) {
                c[k][t] = tw.c[k][t];
                s[k][t] = tw.s[k][t];
            }
        for (std::size_t m = 0; m < P; ++m)
            for (std::size_t half = 0; half < 2; ++half)
                for (std::size_t a = 0; a < 8; ++a)
                    rot[m][half * 8 + a] =
                        static_cast<std::int32_t>(half * 8 + (a < P ? (a + P - m) % P : a));
        for (std::size_t l = 0; l < 16; ++l) sign[l] = l < 8 ? 1.0f : -1.0f;
    }

    // The full-mask forms: GCC 12's unmasked ones read an undefined register and trip
    // -Wmaybe-uninitialized.
    static constexpr __mmask16 all = 0xFFFF;

    /// [high half | low half].
    QIFT_HADAMARD_INLINE static __m512 swap_halves(__m512 v) noexcept {
        return _mm512_mask_shuffle_f32x4(v, all, v, v, 0x4E);
    }

    /// The P-point DFT (forward ω^(-kt) or inverse ω^(+kt), unscaled, ω = e^(2πi/P)) across
    /// the registers v[0 .. P-1], in place, lane by lane. With s_t = x_t + x_(P-t) and d_t =
    /// x_t - x_(P-t): X_k = A_k - i·B_k, X_(P-k) = A_k + i·B_k, A_k = x_0 + Σ_t cos·s_t, B_k =
    /// Σ_t sin·d_t, and -i·B is [Im B | -Re B]: B is summed from the swapped d_t, then signed.
    template <bool Inverse>
    QIFT_HADAMARD_INLINE void dft(__m512* v) const noexcept {
        const __m512 sg = _mm512_load_ps(sign);
        __m512 sum[h + 1], dif[h + 1];
        const __m512 x0 = v[0];
        __m512 out = x0;
        static_for<h>([&](auto tm1) QIFT_HADAMARD_LAMBDA_INLINE {
            constexpr std::size_t t = tm1 + 1;
            sum[t] = _mm512_add_ps(v[t], v[P - t]);
            dif[t] = swap_halves(_mm512_sub_ps(v[t], v[P - t]));
            out = _mm512_add_ps(out, sum[t]);
        });
        v[0] = out;
        static_for<h>([&](auto km1) QIFT_HADAMARD_LAMBDA_INLINE {
            constexpr std::size_t k = km1 + 1;
            __m512 a = x0, b = _mm512_mul_ps(dif[1], _mm512_set1_ps(s[k][1]));
            static_for<h>([&](auto tm1) QIFT_HADAMARD_LAMBDA_INLINE {
                constexpr std::size_t t = tm1 + 1;
                a = _mm512_fmadd_ps(sum[t], _mm512_set1_ps(c[k][t]), a);
                if constexpr (t > 1) b = _mm512_fmadd_ps(dif[t], _mm512_set1_ps(s[k][t]), b);
            });
            v[Inverse ? P - k : k] = _mm512_fmadd_ps(b, sg, a);
            v[Inverse ? k : P - k] = _mm512_fnmadd_ps(b, sg, a);
        });
    }

    /// y_a = Σ_b K(a - b mod P)·x_b for one packed row x (complex, lanes a, b < P), K(m) given
    /// as k[m] + i·k[8 + m]: Σ_m K(m)·rot_m(x), the real and imaginary parts of K in two
    /// accumulators, combined by one swap: Re K·x = [Re | Im] and Im K·x = [-Im | Re].
    QIFT_HADAMARD_INLINE __m512 convolve(const float* k, __m512 x) const noexcept {
        __m512 re = _mm512_mul_ps(x, _mm512_set1_ps(k[0]));
        __m512 im = _mm512_mul_ps(x, _mm512_set1_ps(k[8]));
        static_for<P - 1>([&](auto mm1) QIFT_HADAMARD_LAMBDA_INLINE {
            constexpr std::size_t m = mm1 + 1;
            const __m512 xm = _mm512_mask_permutexvar_ps(x, all, _mm512_load_si512(rot[m]), x);
            re = _mm512_fmadd_ps(xm, _mm512_set1_ps(k[m]), re);
            im = _mm512_fmadd_ps(xm, _mm512_set1_ps(k[8 + m]), im);
        });
        return _mm512_fnmadd_ps(swap_halves(im), _mm512_load_ps(sign), re);
    }
};
#endif

// ---------------------------------------------------------------------------------------
// Jacobsthal core over GF(p^r) on panels narrower than 2W columns

/// Complex lanes of one row of jacobsthal_dft_narrow_kernel (its table and its work rows): p
/// rounded up to 8 or 16, a multiple of the batch width of every narrow_dft_arch.
inline constexpr std::size_t narrow_dft_lanes(std::size_t p) noexcept {
    return p <= 8 ? 8 : 16;
}

/// The batch architecture of jacobsthal_dft_narrow_kernel's portable path for Arch: 8-float
/// AVX2 registers under AVX-512 (there only p = 11, 13 take that path; p <= 7 runs on packed
/// 16-float rows), Arch itself elsewhere (AVX2: 8 floats; SSE, NEON: 4).
template <class Arch>
struct narrow_dft_arch {
    using type = Arch;
};
#if XSIMD_WITH_FMA3_AVX2
template <class Arch>
requires is_avx512_arch<Arch>
struct narrow_dft_arch<Arch> {
    using type = xsimd::fma3<xsimd::avx2>;
};
#endif

/// The table of jacobsthal_dft_narrow_kernel for the core [[d', τ·1ᵀ], [σ·1, M]] over GF(p^r)
/// with M = d·I + ε·Q, the convolution over (Z_p)^r by M(a) = d·[a = 0] + ε·χ(a).
struct jacobsthal_dft_narrow_params : jacobsthal_field {  // r >= 2
    /// (q/p)·p·2·L floats, L = narrow_dft_lanes(p): conv[((u·p + b)·2 + part)·L + a] =
    /// K_u(a - b mod p) (part 0: real, 1: imaginary; 0 for a >= p), K_u(m_0) the DFT of M along
    /// the base-p digits 1 .. r-1 at the frequency u (u = Σ_i u_i·p^(i-1)), divided by p^(r-1).
    const float* conv = nullptr;
    /// The output of each column pair (c, c+1) times `scale`, after the 2-point Walsh-Hadamard
    /// transform (y_c, y_(c+1)) <- (y_c + y_(c+1), y_c - y_(c+1)) when `pair_hadamard` (then
    /// c1 - c0 is even): the FWHT of a K×2 panel's rows and the transform's scale, fused into
    /// the core's output (H_K ⊗ H_2 = (I ⊗ H_2)·(H_K ⊗ I)).
    float scale = 1.0f;
    bool pair_hadamard = false;
};

/// y = core · x in place on the columns [c0, c1) of the (q+1)×cols row-major panel x, for
/// panels too narrow for jacobsthal_dft_kernel (q = p^r, r >= 2, p in {3, 5, 7, 11, 13}), then
/// the pair transform and scale of the params.
/// Columns go in pairs (the real and imaginary parts of one complex column; a last odd column
/// gets a zero imaginary part). The q values of a complex column are laid out as p^(r-1) rows
/// (base-p digits 1 .. r-1) of L lanes (digit 0): the DFT passes along the digits 1 .. r-1 run
/// vectorized across the lanes, and digit 0, which lies inside the registers, is convolved
/// directly in the DFT domain of the other digits (a p×p complex circulant per row), then the
/// inverse passes. Under AVX-512 with p <= 7 a row is one packed 16-float register
/// (packed_dft: [re | im] halves, the circulant as p lane rotations times broadcast taps), the
/// last digit's passes and the convolution run in registers, and the column pair is read and
/// written by the first and last passes (no separate gather or scatter); elsewhere the rows are
/// two registers of narrow_dft_arch and the circulant takes each input lane broadcast from
/// memory. `work` holds work_floats(p, q) floats. O(q·(2(r-1)·p/2 + 2p)) multiply-adds per
/// complex column instead of the dense core's 2q².
struct jacobsthal_dft_narrow_kernel {
    static constexpr std::size_t work_floats(std::size_t p, std::size_t q) noexcept {
        return q / p * 2 * narrow_dft_lanes(p);
    }

    template <class Arch>
    void operator()(Arch, const jacobsthal_dft_narrow_params& prm, float* x, std::size_t cols,
                    std::size_t c0, std::size_t c1, float* work) const noexcept {
#if defined(__AVX512F__)
        if constexpr (is_avx512_arch<Arch>) {
            switch (prm.p) {
                case 3:
                    return run_packed<3>(prm, x, cols, c0, c1, work);
                case 5:
                    return run_packed<5>(prm, x, cols, c0, c1, work);
                case 7:
                    return run_packed<7>(prm, x, cols, c0, c1, work);
                default:
                    break;
            }
        }
#endif
        using narrow = typename narrow_dft_arch<Arch>::type;
        switch (prm.p) {
            case 3:
                run<narrow, 3>(prm, x, cols, c0, c1, work);
                break;
            case 5:
                run<narrow, 5>(prm, x, cols, c0, c1, work);
                break;
            case 7:
                run<narrow, 7>(prm, x, cols, c0, c1, work);
                break;
            case 11:
                run<narrow, 11>(prm, x, cols, c0, c1, work);
                break;
            case 13:
                run<narrow, 13>(prm, x, cols, c0, c1, work);
                break;
            default:
                break;
        }
    }

  private:
#if defined(__AVX512F__)
    // AVX-512, p <= 7: a row is one packed register (see packed_dft). The pass along the digit
    // 1 reads the column pair from x and its inverse writes it back; the passes along the
    // digits 2 .. r-2 go through `work`; the pass along the digit r-1, the convolution of every
    // row and the inverse pass run on P rows in registers. When P panel rows (P·cols floats)
    // fit two registers (cols <= 4 for p = 7), a column pair is read by two masked loads and a
    // two-source permute and written by permutes and masked stores; wider panels use a gather
    // and a scatter.
    template <std::size_t P>
    static void run_packed(const jacobsthal_dft_narrow_params& prm, float* x, std::size_t cols,
                           std::size_t c0, std::size_t c1, float* work) noexcept {
        static const packed_dft<P> dft;
        constexpr std::size_t row = 16;
        constexpr __mmask16 live = ((1u << P) - 1) | (((1u << P) - 1) << 8);
        const std::size_t rows = prm.q / P;
        std::size_t last = 1;  // the row step of the digit r - 1
        for (unsigned t = 2; t < prm.r; ++t) last *= P;
        // The P·cols floats of P panel rows (one work row) fit two registers when dense.
        const std::size_t span = P * cols;
        const bool dense = span <= 32;
        const auto span_lo = static_cast<__mmask16>(span >= 16 ? 0xFFFF : (1u << span) - 1);
        const auto span_hi = static_cast<__mmask16>(span <= 16   ? 0
                                                    : span >= 32 ? 0xFFFF
                                                                 : (1u << (span - 16)) - 1);
        const __m512 sign = _mm512_load_ps(dft.sign), scale = _mm512_set1_ps(prm.scale);
        for (std::size_t c = c0; c < c1; c += 2) {
            const bool pair = c + 1 < c1, h2 = prm.pair_hadamard;
            const __mmask16 lanes = pair ? live : live & 0xFF;
            // Lane l of the low (high) half is float l·cols + c (+ 1) of the P rows; when dense,
            // float f of them is lane pick_out[f] on the way out.
            alignas(64) std::int32_t pick_in[16] = {}, pick_out[32] = {};
            std::uint32_t out_mask = 0;
            for (std::size_t l = 0; l < P; ++l)
                for (std::size_t e = 0; e < (pair ? 2u : 1u); ++e) {
                    const std::size_t f = l * cols + c + e;
                    pick_in[e * 8 + l] = static_cast<std::int32_t>(f);
                    if (!dense) continue;
                    pick_out[f] = static_cast<std::int32_t>(e * 8 + l);
                    out_mask |= 1u << f;
                }
            const auto out_lo = static_cast<__mmask16>(out_mask & 0xFFFF);
            const auto out_hi = static_cast<__mmask16>(out_mask >> 16);
            const __m512i in_at = _mm512_load_si512(pick_in);
            const __m512i out_lo_at = _mm512_load_si512(pick_out);
            const __m512i out_hi_at = _mm512_load_si512(pick_out + 16);
            const float x0r = x[c], x0i = pair ? x[c + 1] : 0.0f;
            float sr = static_cast<float>(prm.sigma) * x0r;
            float si = static_cast<float>(prm.sigma) * x0i;
            if (h2) std::tie(sr, si) = std::pair(sr + si, sr - si);
            // Row u of the column pair in and out: on the way out, (re, im) <- (re + im, re -
            // im) when h2, then times the scale, plus the (so transformed) σ·x_0.
            const __m512 bias = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(sr * prm.scale),
                                                     _mm512_set1_ps(si * prm.scale));
            float* base = x + cols;
            auto in = [&](std::size_t u) QIFT_HADAMARD_LAMBDA_INLINE {
                const float* src = base + u * span;
                if (!dense)
                    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, in_at, src, 4);
                const __m512 hi =
                    span > 16 ? _mm512_maskz_loadu_ps(span_hi, src + 16) : _mm512_setzero_ps();
                return _mm512_maskz_permutex2var_ps(lanes, _mm512_maskz_loadu_ps(span_lo, src),
                                                    in_at, hi);
            };
            auto out = [&](std::size_t u, __m512 v) QIFT_HADAMARD_LAMBDA_INLINE {
                if (h2) v = _mm512_fmadd_ps(v, sign, packed_dft<P>::swap_halves(v));
                v = _mm512_fmadd_ps(v, scale, bias);
                float* dst = base + u * span;
                if (!dense) {
                    _mm512_mask_i32scatter_ps(dst, lanes, in_at, v, 4);
                    return;
                }
                _mm512_mask_storeu_ps(dst, out_lo,
                                      _mm512_mask_permutexvar_ps(v, 0xFFFF, out_lo_at, v));
                if (out_hi)
                    _mm512_mask_storeu_ps(dst + 16, out_hi,
                                          _mm512_mask_permutexvar_ps(v, 0xFFFF, out_hi_at, v));
            };
            auto load = [&](std::size_t u)
                            QIFT_HADAMARD_LAMBDA_INLINE { return _mm512_loadu_ps(work + u * row); };
            auto store = [&](std::size_t u, __m512 v)
                             QIFT_HADAMARD_LAMBDA_INLINE { _mm512_storeu_ps(work + u * row, v); };
            __m512 zero_frequency;
            if (last == 1) {
                zero_frequency = fused<P>(dft, prm.conv, 1, in, out);
            } else {
                pass<P, false>(dft, rows, 1, in, store);
                for (std::size_t s = P; s < last; s *= P) pass<P, false>(dft, rows, s, load, store);
                zero_frequency = fused<P>(dft, prm.conv, last, load, store);
                for (std::size_t s = P; s < last; s *= P) pass<P, true>(dft, rows, s, load, store);
                pass<P, true>(dft, rows, 1, load, out);
            }
            // Σ_a x'_a: the lanes of the zero frequency row.
            alignas(64) float zf[row];
            _mm512_store_ps(zf, zero_frequency);
            float sum_r = 0.0f, sum_i = 0.0f;
            for (std::size_t l = 0; l < P; ++l) {
                sum_r += zf[l];
                sum_i += zf[8 + l];
            }
            store_pair(prm, x + c, pair, prm.diag * x0r + static_cast<float>(prm.tau) * sum_r,
                       prm.diag * x0i + static_cast<float>(prm.tau) * sum_i);
        }
    }

    // One pass of packed P-point DFTs along the digit of row step s (rows a multiple of P·s):
    // row u comes from load(u) and goes to store(u, v).
    template <std::size_t P, bool Inverse, class Load, class Store>
    QIFT_HADAMARD_INLINE static void pass(const packed_dft<P>& dft, std::size_t rows, std::size_t s,
                                          Load&& load, Store&& store) noexcept {
        for (std::size_t hi = 0; hi < rows; hi += P * s)
            for (std::size_t lo = 0; lo < s; ++lo) {
                __m512 v[P];
                static_for<P>([&](auto t)
                                  QIFT_HADAMARD_LAMBDA_INLINE { v[t] = load(hi + lo + t * s); });
                dft.template dft<Inverse>(v);
                static_for<P>([&](auto t)
                                  QIFT_HADAMARD_LAMBDA_INLINE { store(hi + lo + t * s, v[t]); });
            }
    }

    // The last digit (row step `last`, P·last rows): forward DFT, the convolution of every row
    // (table row u at conv + u·P·16), inverse DFT, on P rows in registers. Returns row 0 after
    // the forward DFT (the zero frequency).
    template <std::size_t P, class Load, class Store>
    QIFT_HADAMARD_INLINE static __m512 fused(const packed_dft<P>& dft, const float* conv,
                                             std::size_t last, Load&& load,
                                             Store&& store) noexcept {
        __m512 zero_frequency = _mm512_setzero_ps();
        for (std::size_t lo = 0; lo < last; ++lo) {
            __m512 v[P];
            static_for<P>([&](auto t) QIFT_HADAMARD_LAMBDA_INLINE { v[t] = load(lo + t * last); });
            dft.template dft<false>(v);
            if (lo == 0) zero_frequency = v[0];
            static_for<P>([&](auto t) QIFT_HADAMARD_LAMBDA_INLINE {
                v[t] = dft.convolve(conv + (lo + t * last) * P * 16, v[t]);
            });
            dft.template dft<true>(v);
            static_for<P>([&](auto t) QIFT_HADAMARD_LAMBDA_INLINE { store(lo + t * last, v[t]); });
        }
        return zero_frequency;
    }
#endif

    template <class Arch, std::size_t P>
    static void run(const jacobsthal_dft_narrow_params& prm, float* x, std::size_t cols,
                    std::size_t c0, std::size_t c1, float* work) noexcept {
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        constexpr std::size_t lanes = narrow_dft_lanes(P), chunks = lanes / w, row = 2 * lanes;
        static_assert(lanes % w == 0, "narrow_dft_arch must divide the lane count");
        static const dft_twiddles<P> tw;
        const std::size_t q = prm.q, rows = q / P;
        // Lane l of a row: real part at (l / w)·2w + l % w, imaginary part w floats later.
        auto at = [](std::size_t l) { return (l / w) * 2 * w + l % w; };
        for (std::size_t c = c0; c < c1; c += 2) {
            const bool pair = c + 1 < c1;
            std::fill(work, work + rows * row, 0.0f);  // the padding lanes stay 0
            const float* src = x + cols + c;
            for (std::size_t u = 0; u < rows; ++u) {
                float* dst = work + u * row;
                for (std::size_t l = 0; l < P; ++l, src += cols) {
                    dst[at(l)] = src[0];
                    dst[at(l) + w] = pair ? src[1] : 0.0f;
                }
            }
            for (std::size_t j = 0; j < chunks; ++j) {
                std::size_t s = 1;
                for (unsigned t = 1; t < prm.r; ++t, s *= P)
                    dft_codelets::pass<Arch, P, false>(tw, work + j * 2 * w, rows, s, row);
            }
            // Σ_a x'_a: the lanes of the zero frequency row.
            float sum_r = 0.0f, sum_i = 0.0f;
            for (std::size_t l = 0; l < P; ++l) {
                sum_r += work[at(l)];
                sum_i += work[at(l) + w];
            }
            for (std::size_t u = 0; u < rows; ++u)
                convolve_lanes<Arch, P>(prm.conv + u * P * 2 * lanes, work + u * row);
            for (std::size_t j = 0; j < chunks; ++j) {
                std::size_t s = 1;
                for (unsigned t = 1; t < prm.r; ++t, s *= P)
                    dft_codelets::pass<Arch, P, true>(tw, work + j * 2 * w, rows, s, row);
            }
            const float x0r = x[c], x0i = pair ? x[c + 1] : 0.0f;
            const float sr = static_cast<float>(prm.sigma) * x0r;
            const float si = static_cast<float>(prm.sigma) * x0i;
            float* dst = x + cols + c;
            for (std::size_t u = 0; u < rows; ++u) {
                const float* from = work + u * row;
                for (std::size_t l = 0; l < P; ++l, dst += cols)
                    store_pair(prm, dst, pair, sr + from[at(l)], si + from[at(l) + w]);
            }
            store_pair(prm, x + c, pair, prm.diag * x0r + static_cast<float>(prm.tau) * sum_r,
                       prm.diag * x0i + static_cast<float>(prm.tau) * sum_i);
        }
    }

    // The output pair (re, im) of one row into dst[0], dst[1] (dst[0] only when !pair), after
    // the pair transform and scale of prm.
    static void store_pair(const jacobsthal_dft_narrow_params& prm, float* dst, bool pair, float re,
                           float im) noexcept {
        if (prm.pair_hadamard) std::tie(re, im) = std::pair(re + im, re - im);
        dst[0] = prm.scale * re;
        if (pair) dst[1] = prm.scale * im;
    }

    // One row: y_a = Σ_b K(a - b)·x_b over the P lanes (complex), in place.
    template <class Arch, std::size_t P>
    QIFT_HADAMARD_INLINE static void convolve_lanes(const float* k, float* rw) noexcept {
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        constexpr std::size_t lanes = narrow_dft_lanes(P), chunks = lanes / w;
        native_register<Arch> yr[chunks], yi[chunks];
        static_for<chunks>([&](auto j) QIFT_HADAMARD_LAMBDA_INLINE {
            yr[j] = batch(0.0f);
            yi[j] = batch(0.0f);
        });
        static_for<P>([&](auto b) QIFT_HADAMARD_LAMBDA_INLINE {
            constexpr std::size_t off = (b / w) * 2 * w + b % w;
            const batch xr(rw[off]), xi(rw[off + w]);
            const float* kb = k + b * 2 * lanes;
            static_for<chunks>([&](auto j) QIFT_HADAMARD_LAMBDA_INLINE {
                const batch kr = batch::load_unaligned(kb + j * w);
                const batch ki = batch::load_unaligned(kb + lanes + j * w);
                yr[j] = xsimd::fma(kr, xr, xsimd::fnma(ki, xi, batch(yr[j])));
                yi[j] = xsimd::fma(kr, xi, xsimd::fma(ki, xr, batch(yi[j])));
            });
        });
        static_for<chunks>([&](auto j) QIFT_HADAMARD_LAMBDA_INLINE {
            batch(yr[j]).store_unaligned(rw + j * 2 * w);
            batch(yi[j]).store_unaligned(rw + j * 2 * w + w);
        });
    }
};

// ---------------------------------------------------------------------------------------
// Jacobsthal core over a prime field GF(q) in Rader form

/// The tables of jacobsthal_rader_kernel for the core [[1, τ·1ᵀ], [σ·1, I + ε·Q]] over a prime
/// field, Q[a][b] = χ(a - b) mod q (see make_rader_form): with a generator g of Z_q^*,
/// χ(g^k - g^j) = χ(g^k)·c(j - k), c(t) = χ(1 - g^t), so on the nonzero elements Q is a sign
/// diagonal times a circulant of length q - 1, which is diagonalized by DFTs of the coprime
/// axis lengths `radix` (the Chinese remainder theorem turns Z_(q-1) into their product).
struct jacobsthal_rader_params {
    std::size_t q = 0;                   ///< prime, q - 1 = Π radix
    const std::size_t* radix = nullptr;  ///< `axes` coprime lengths, each dft_codelets::supports
    std::size_t axes = 0;
    const std::uint32_t* slot = nullptr;  ///< slot[a]: work row of x'_a, a in [1, q)
    std::size_t alternating_slot = 0;     ///< slot of the frequency (q-1)/2, the character (-1)^k
    const float* chi = nullptr;           ///< χ(a), a in [0, q)
    const float* mul = nullptr;  ///< 2(q-1) floats: the circulant's eigenvalue / (q-1) at slot u
    int tau = 1, sigma = 1, eps = 1;
};

/// y = core · x for the bordered Jacobsthal core of order q + 1 over a prime field (see
/// jacobsthal_rader_params): y_0 = x_0 + τ·Σ_a x'_a, y'_0 = σ·x_0 + x'_0 + ε·χ(-1)·Σ_(b≠0)
/// χ(b)·x'_b and, for a = g^k ≠ 0, y'_a = σ·x_0 + x'_a + ε·χ(a)·(x'_0 + w_k) with w_k =
/// Σ_j c(j - k)·x'_(g^j), a cyclic correlation of length q - 1 run as forward DFT passes over
/// the coprime axes, a complex multiply per frequency and the inverse passes (Rader's
/// reindexing, without the prime-length DFT itself). The two sums are the DFT at the
/// frequencies 0 and (q-1)/2, and x'_0 is added at frequency 0. `in` and `out` are (q+1)×cols
/// row-major and may be the same array; the columns [0, c_end) are done, c_end a multiple of
/// 2W, as W complex lanes per 2W columns like jacobsthal_dft_kernel. `work` holds (q-1)·2W
/// floats (the permuted x' of one column strip, in L1). O(Σ radix) multiply-adds per element
/// instead of q.
struct jacobsthal_rader_kernel {
    template <class Arch>
    void operator()(Arch, const jacobsthal_rader_params& prm, const float* in, float* out,
                    std::size_t cols, std::size_t c_end, float* work) const noexcept {
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size, row = 2 * w;
        const std::size_t q = prm.q, n = q - 1;
        const batch tau(static_cast<float>(prm.tau)), sigma(static_cast<float>(prm.sigma));
        const batch eps_chi_m1(static_cast<float>(prm.eps) * prm.chi[q - 1]);
        const float* alt = work + prm.alternating_slot * row;
        for (std::size_t c = 0; c < c_end; c += row) {
            const batch x0r = batch::load_unaligned(in + c),
                        x0i = batch::load_unaligned(in + c + w);
            const float* zero = in + cols + c;
            const batch zr = batch::load_unaligned(zero), zi = batch::load_unaligned(zero + w);
            for (std::size_t a = 1; a < q; ++a) {
                const float* src = in + (1 + a) * cols + c;
                float* dst = work + prm.slot[a] * row;
                batch::load_unaligned(src).store_unaligned(dst);
                batch::load_unaligned(src + w).store_unaligned(dst + w);
            }
            std::size_t s = 1;
            for (std::size_t t = 0; t < prm.axes; s *= prm.radix[t], ++t)
                dft_codelets::pass<Arch, false>(prm.radix[t], work, n, s, row);
            // Σ_(b≠0) x'_b and Σ_(b≠0) χ(b)·x'_b.
            const batch sr = batch::load_unaligned(work), si = batch::load_unaligned(work + w);
            const batch ar = batch::load_unaligned(alt), ai = batch::load_unaligned(alt + w);
            for (std::size_t u = 0; u < n; ++u) {
                float* r = work + u * row;
                const batch mr(prm.mul[2 * u]), mi(prm.mul[2 * u + 1]);
                const batch vr = batch::load_unaligned(r), vi = batch::load_unaligned(r + w);
                xsimd::fms(vr, mr, vi * mi).store_unaligned(r);
                xsimd::fma(vr, mi, vi * mr).store_unaligned(r + w);
            }
            (batch::load_unaligned(work) + zr).store_unaligned(work);
            (batch::load_unaligned(work + w) + zi).store_unaligned(work + w);
            s = 1;
            for (std::size_t t = 0; t < prm.axes; s *= prm.radix[t], ++t)
                dft_codelets::pass<Arch, true>(prm.radix[t], work, n, s, row);
            const batch br = sigma * x0r, bi = sigma * x0i;
            for (std::size_t a = 1; a < q; ++a) {
                const float* src = in + (1 + a) * cols + c;
                float* dst = out + (1 + a) * cols + c;
                const float* from = work + prm.slot[a] * row;
                const batch f(static_cast<float>(prm.eps) * prm.chi[a]);
                const batch yr = batch::load_unaligned(src) + br;
                const batch yi = batch::load_unaligned(src + w) + bi;
                xsimd::fma(f, batch::load_unaligned(from), yr).store_unaligned(dst);
                xsimd::fma(f, batch::load_unaligned(from + w), yi).store_unaligned(dst + w);
            }
            xsimd::fma(eps_chi_m1, ar, br + zr).store_unaligned(out + cols + c);
            xsimd::fma(eps_chi_m1, ai, bi + zi).store_unaligned(out + cols + c + w);
            xsimd::fma(tau, zr + sr, x0r).store_unaligned(out + c);
            xsimd::fma(tau, zi + si, x0i).store_unaligned(out + c + w);
        }
    }
};

// ---------------------------------------------------------------------------------------
// Signs

/// x[i] *= s[i] for i < n (the ±1 diagonal of a randomized rotation).
// GCC 12 -O3 reports a false "iteration 2^62 - 1 invokes undefined behavior" for the tail loop
// once this is inlined into a caller whose x points into a small local array (torq's fit of a
// 32-point rotation, through rotation::apply): it cannot see that n is the rotation's width. The
// loop is bounded by n; the diagnostic is silenced here, at its location, and nowhere else.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Waggressive-loop-optimizations"
#endif
template <class Arch>
void multiply_elementwise(float* x, const float* s, std::size_t n) noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t w = batch::size;
    std::size_t i = 0;
    for (; i + w <= n; i += w)
        (batch::load_unaligned(x + i) * batch::load_unaligned(s + i)).store_unaligned(x + i);
    for (; i < n; ++i) x[i] *= s[i];
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace qift::detail
