// SPDX-License-Identifier: MIT
// SIMD kernels of the Hadamard transform: the in-place power-of-two Walsh-Hadamard transform
// and the dense ±1 block mix, each with the scalar reference that is its test oracle.
#pragma once

#include "xsimd.hpp"

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <utility>

#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

// The register blocks only stay in registers when every step of the unrolled networks is
// inlined, lambdas included; GCC otherwise outlines the larger ones.
#if defined(__GNUC__)
#define QIFT_HADAMARD_INLINE inline __attribute__((always_inline))
#define QIFT_HADAMARD_LAMBDA_INLINE __attribute__((always_inline))
#else
#define QIFT_HADAMARD_INLINE inline
#define QIFT_HADAMARD_LAMBDA_INLINE
#endif

namespace qift::detail {

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
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t w = batch::size;
        constexpr std::size_t rows_block = is_avx512_arch<Arch> ? 8 : 4;
        std::size_t c = 0;
        for (; c + 2 * w <= cols; c += 2 * w)
            strip<Arch, rows_block, 2>(packed, k, in, out, cols, c);
        for (; c + w <= cols; c += w) strip<Arch, rows_block, 1>(packed, k, in, out, cols, c);
        for (; c < cols; ++c)
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

}  // namespace qift::detail
