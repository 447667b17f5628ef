// SPDX-License-Identifier: MIT
// Dense linear algebra behind GPTQ: a register-blocked GEMM update C -= A·B (float and double,
// xsimd), blocked Cholesky and triangular inverse on both cores, and the upper Cholesky factor
// of an inverse. Scalar references of each kernel live beside them as test oracles.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

#if defined(__linux__) && __has_include(<sys/mman.h>)
#include <sys/mman.h>
#if defined(MADV_HUGEPAGE)
#define QIFT_HAS_MADVISE 1
#endif
#endif
#ifndef QIFT_HAS_MADVISE
#define QIFT_HAS_MADVISE 0
#endif

#include "xsimd.hpp"

#include "../core.hpp"

namespace qift::inline QIFT_ISA::detail {

// ---------------------------------------------------------------------------------------
// Work ordering for triangular loops

/// Order in which a parallel loop visits `n` items whose cost grows (or shrinks) linearly with
/// the index: item t maps to 0, n−1, 1, n−2, ... so that the contiguous halves the default
/// executor hands to two threads carry about the same work.
constexpr std::size_t balanced_index(std::size_t t, std::size_t n) noexcept {
    return t % 2 == 0 ? t / 2 : n - 1 - t / 2;
}

/// Uninitialized, `buffer_alignment`-aligned scratch storage (no value-initialization: the
/// kernels overwrite it before reading). Buffers of `huge_page_bytes` or more are aligned to
/// that size and, on Linux, advised for transparent huge pages before their first touch: the
/// solver's n×n buffers (64–128 MiB at n = 4096) otherwise cost one page fault per 4 KiB,
/// which on a virtualized host measured 11 µs each (0.35 s per 128 MiB) against 0.2–0.5 µs
/// per 4 KiB with huge pages.
template <class T>
class scratch {
  public:
    static constexpr std::size_t huge_page_bytes = std::size_t{2} << 20;

    explicit scratch(std::size_t n) : align_(alignment(n * sizeof(T))) {
        if (n == 0) return;
        p_ = static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{align_}));
#if QIFT_HAS_MADVISE
        if (align_ == huge_page_bytes)
            ::madvise(static_cast<void*>(p_), n * sizeof(T) / huge_page_bytes * huge_page_bytes,
                      MADV_HUGEPAGE);
#endif
    }
    scratch(const scratch&) = delete;
    scratch& operator=(const scratch&) = delete;
    ~scratch() {
        if (p_) ::operator delete (p_, std::align_val_t{align_});
    }
    T* get() const noexcept {
        return p_;
    }

  private:
    static constexpr std::size_t alignment(std::size_t bytes) noexcept {
        return bytes >= huge_page_bytes ? huge_page_bytes : buffer_alignment;
    }
    std::size_t align_;
    T* p_ = nullptr;
};

/// dst(i, j) = src(j, i) for the src.rows × src.cols view (dst is src.cols × src.rows),
/// in 32×32 tiles so that both sides stream through cache lines. Element types may differ.
template <class S, class D>
void transpose_copy(matrix_view<const S> src, matrix_view<D> dst) noexcept {
    constexpr std::size_t tb = 32;
    for (std::size_t i0 = 0; i0 < src.rows; i0 += tb)
        for (std::size_t j0 = 0; j0 < src.cols; j0 += tb)
            for (std::size_t j = j0; j < std::min(j0 + tb, src.cols); ++j)
                for (std::size_t i = i0; i < std::min(i0 + tb, src.rows); ++i)
                    dst(j, i) = static_cast<D>(src(i, j));
}

// ---------------------------------------------------------------------------------------
// GEMM update C -= A·B

/// Scalar reference: C[m×n] -= A[m×k] · B[k×n], all row-major views. O(m·n·k).
template <class T>
void gemm_sub_scalar(matrix_view<T> c, matrix_view<const T> a, matrix_view<const T> b) noexcept {
    for (std::size_t i = 0; i < c.rows; ++i)
        for (std::size_t j = 0; j < c.cols; ++j) {
            T sum = 0;
            for (std::size_t p = 0; p < a.cols; ++p) sum += a(i, p) * b(p, j);
            c(i, j) -= sum;
        }
}

/// Register tile of the GEMM micro-kernel for element type T on Arch: MR rows of A times
/// NV vectors of B (NR = NV · width columns). With 32 vector registers (AVX-512) 8×3 tiles keep
/// 24 accumulators live; with 16 (AVX2, SSE) 6×2 tiles keep 12.
template <class T, class Arch>
struct gemm_tile {
    using batch = xsimd::batch<T, Arch>;
    static constexpr std::size_t width = batch::size;
    static constexpr bool wide = sizeof(batch) >= 64;
    static constexpr std::size_t mr = wide ? 8 : 6;
    static constexpr std::size_t nv = wide ? 3 : 2;
    static constexpr std::size_t nr = nv * width;
    static constexpr std::size_t kc = 128;      // depth of one packed B panel (L1-resident)
    static constexpr std::size_t mc = 96;       // rows of A reused across panels (L2-resident)
    static constexpr std::size_t nc = 64 * nr;  // columns packed at once
};

/// C[mr'×nr'] -= A[mr'×kc] · Bp[kc×NR] with mr' ≤ MR rows, nr' ≤ NR columns; Bp is a packed,
/// zero-padded, aligned panel (row p at Bp + p·NR).
template <class T, class Arch>
inline void gemm_micro(const T* a, std::size_t lda, const T* bp, std::size_t kc, T* c,
                       std::size_t ldc, std::size_t mr, std::size_t nr) noexcept {
    using tile = gemm_tile<T, Arch>;
    using batch = typename tile::batch;
    constexpr std::size_t MR = tile::mr, NV = tile::nv, NR = tile::nr, W = tile::width;
    std::array<const T*, MR> rows{};
    for (std::size_t i = 0; i < MR; ++i) rows[i] = a + std::min(i, mr - 1) * lda;
    batch acc[MR][NV];
#pragma GCC unroll 8
    for (std::size_t i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (std::size_t v = 0; v < NV; ++v) acc[i][v] = batch(T(0));
    for (std::size_t p = 0; p < kc; ++p) {
        batch b[NV];
#pragma GCC unroll 4
        for (std::size_t v = 0; v < NV; ++v) b[v] = batch::load_aligned(bp + p * NR + v * W);
#pragma GCC unroll 8
        for (std::size_t i = 0; i < MR; ++i) {
            const batch ai(rows[i][p]);
#pragma GCC unroll 4
            for (std::size_t v = 0; v < NV; ++v) acc[i][v] = xsimd::fma(ai, b[v], acc[i][v]);
        }
    }
    if (nr == NR) {
        for (std::size_t i = 0; i < mr; ++i)
#pragma GCC unroll 4
            for (std::size_t v = 0; v < NV; ++v) {
                T* dst = c + i * ldc + v * W;
                (batch::load_unaligned(dst) - acc[i][v]).store_unaligned(dst);
            }
    } else {
        alignas(64) T buf[MR * NR];
        for (std::size_t i = 0; i < MR; ++i)
            for (std::size_t v = 0; v < NV; ++v) acc[i][v].store_aligned(buf + i * NR + v * W);
        for (std::size_t i = 0; i < mr; ++i)
            for (std::size_t j = 0; j < nr; ++j) c[i * ldc + j] -= buf[i * NR + j];
    }
}

/// C[m×n] -= A[m×k] · B[k×n], row-major views of any stride; runs on the calling thread
/// (callers split C into independent views for parallel_for). B is packed into aligned panels
/// of NR columns and depth ≤ kc; A is read in place. O(m·n·k) flops, vectorized with xsimd.
template <class T, class Arch = xsimd::default_arch>
void gemm_sub(matrix_view<T> c, matrix_view<const T> a, matrix_view<const T> b) {
    using tile = gemm_tile<T, Arch>;
    constexpr std::size_t MR = tile::mr, NR = tile::nr, KC = tile::kc, MC = tile::mc, NC = tile::nc;
    const std::size_t m = c.rows, n = c.cols, k = a.cols;
    if (m == 0 || n == 0 || k == 0) return;
    const scratch<T> packed(KC * std::min(NC, (n + NR - 1) / NR * NR));
    for (std::size_t jc = 0; jc < n; jc += NC) {
        const std::size_t nc = std::min(NC, n - jc), panels = (nc + NR - 1) / NR;
        for (std::size_t pc = 0; pc < k; pc += KC) {
            const std::size_t kc = std::min(KC, k - pc);
            for (std::size_t q = 0; q < panels; ++q) {
                T* dst = packed.get() + q * kc * NR;
                const std::size_t j0 = jc + q * NR, w = std::min(NR, n - j0);
                for (std::size_t p = 0; p < kc; ++p) {
                    const T* src = &b(pc + p, j0);
                    std::size_t j = 0;
                    for (; j < w; ++j) dst[p * NR + j] = src[j];
                    for (; j < NR; ++j) dst[p * NR + j] = T(0);
                }
            }
            for (std::size_t ic = 0; ic < m; ic += MC) {
                const std::size_t mc = std::min(MC, m - ic);
                for (std::size_t q = 0; q < panels; ++q) {
                    const std::size_t j0 = jc + q * NR, w = std::min(NR, n - j0);
                    for (std::size_t ir = ic; ir < ic + mc; ir += MR)
                        gemm_micro<T, Arch>(&a(ir, pc), a.stride, packed.get() + q * kc * NR, kc,
                                            &c(ir, j0), c.stride, std::min(MR, ic + mc - ir), w);
                }
            }
        }
    }
}

/// y[i] -= alpha · x[i] for i < n (float), the rank-1 step of GPTQ's inner loop.
template <class Arch = xsimd::default_arch>
inline void axpy_sub(float* y, const float* x, float alpha, std::size_t n) noexcept {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t W = batch::size;
    const batch va(alpha);
    std::size_t i = 0;
    for (; i + W <= n; i += W)
        xsimd::fnma(va, batch::load_unaligned(x + i), batch::load_unaligned(y + i))
            .store_unaligned(y + i);
    for (; i < n; ++i) y[i] = std::fma(-alpha, x[i], y[i]);
}

// ---------------------------------------------------------------------------------------
// Small unblocked factorizations (diagonal blocks), accumulating in double for any T

/// In-place lower Cholesky of the n×n block `a` (reads the lower triangle, writes L there and
/// zeros above it). Returns false when a pivot is not positive and finite (the block is not
/// positive definite).
template <class T>
bool cholesky_unblocked(matrix_view<T> a) noexcept {
    const std::size_t n = a.rows;
    for (std::size_t j = 0; j < n; ++j) {
        double d = a(j, j);
        for (std::size_t p = 0; p < j; ++p) d -= double(a(j, p)) * double(a(j, p));
        if (!(d > 0.0) || !std::isfinite(d)) return false;
        const double ljj = std::sqrt(d);
        a(j, j) = static_cast<T>(ljj);
        for (std::size_t i = j + 1; i < n; ++i) {
            double s = a(i, j);
            for (std::size_t p = 0; p < j; ++p) s -= double(a(i, p)) * double(a(j, p));
            a(i, j) = static_cast<T>(s / ljj);
        }
        for (std::size_t i = j + 1; i < n; ++i) a(j, i) = T(0);
    }
    return true;
}

/// x = L⁻¹ for the n×n lower-triangular `l` (x lower, its upper triangle set to 0). O(n³/6).
template <class T>
void lower_inverse_unblocked(matrix_view<const T> l, matrix_view<T> x) noexcept {
    const std::size_t n = l.rows;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = i + 1; j < n; ++j) x(i, j) = T(0);
    for (std::size_t j = 0; j < n; ++j) {
        x(j, j) = static_cast<T>(1.0 / double(l(j, j)));
        for (std::size_t i = j + 1; i < n; ++i) {
            double s = 0.0;
            for (std::size_t p = j; p < i; ++p) s += double(l(i, p)) * double(x(p, j));
            x(i, j) = static_cast<T>(-s / double(l(i, i)));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Blocked factorizations on both cores

inline constexpr std::size_t factor_block = 128;

/// In-place blocked lower Cholesky of the n×n SPD matrix `a` (row-major; only the lower triangle
/// is read; on success the lower triangle holds L with A = L·Lᵀ and the upper triangles of the
/// 128×128 diagonal blocks are zeroed — the rest of the upper triangle is left as it was).
/// Right-looking: factor the diagonal block, solve the panel by a GEMM with the block's inverse,
/// update the trailing lower triangle by row blocks in parallel. Returns false when A is not
/// positive definite (the contents of `a` are then unspecified). n³/3 + O(n²·128) flops in T.
template <class T>
bool cholesky_lower(matrix_view<T> a) {
    const std::size_t n = a.rows, nb = factor_block;
    matrix<T> xkk(nb, nb), negxt(nb, nb);
    const std::size_t panel_size = n > nb ? (n - nb) * nb : 0;
    const scratch<T> panel(panel_size), panel_t(panel_size);
    for (std::size_t k0 = 0; k0 < n; k0 += nb) {
        const std::size_t kb = std::min(nb, n - k0);
        if (!cholesky_unblocked<T>({&a(k0, k0), kb, kb, a.stride})) return false;
        const std::size_t r0 = k0 + kb, m = n - r0;
        if (m == 0) break;
        // Panel P = A[r0:, k0:k0+kb] · L_kk⁻ᵀ, as P ← 0 − Tmp·(−L_kk⁻ᵀ).
        lower_inverse_unblocked<T>({&a(k0, k0), kb, kb, a.stride}, {xkk.data(), kb, kb, nb});
        for (std::size_t p = 0; p < kb; ++p)
            for (std::size_t j = 0; j < kb; ++j) negxt(p, j) = -xkk(j, p);
        const matrix_view<T> pv(&a(r0, k0), m, kb, a.stride);
        const std::size_t row_blocks = (m + nb - 1) / nb;
        parallel_for(row_blocks, [&](std::size_t b, std::size_t e) {
            for (std::size_t t = b; t < e; ++t) {
                const std::size_t i0 = t * nb, rows = std::min(nb, m - i0);
                matrix_view<T> dst(&pv(i0, 0), rows, kb, pv.stride);
                for (std::size_t i = 0; i < rows; ++i) {
                    std::copy_n(&dst(i, 0), kb, panel.get() + (i0 + i) * kb);
                    std::fill_n(&dst(i, 0), kb, T(0));
                }
                gemm_sub<T>(dst, matrix_view<const T>(panel.get() + i0 * kb, rows, kb),
                            matrix_view<const T>(negxt.data(), kb, kb, nb));
                // Pᵀ for the trailing update, this block's columns.
                transpose_copy<T, T>(matrix_view<const T>(&pv(i0, 0), rows, kb, pv.stride),
                                     {panel_t.get() + i0, kb, rows, m});
            }
        });
        // Trailing lower triangle: A[r0:, r0:] −= P·Pᵀ, by row blocks (each up to its diagonal).
        parallel_for(row_blocks, [&](std::size_t b, std::size_t e) {
            for (std::size_t t = b; t < e; ++t) {
                const std::size_t rb = balanced_index(t, row_blocks);
                const std::size_t i0 = rb * nb, rows = std::min(nb, m - i0);
                gemm_sub<T>({&a(r0 + i0, r0), rows, i0 + rows, a.stride},
                            matrix_view<const T>(&pv(i0, 0), rows, kb, pv.stride),
                            matrix_view<const T>(panel_t.get(), kb, i0 + rows, m));
            }
        });
    }
    return true;
}

/// In-place inverse of the n×n lower-triangular `a` (row-major; the upper triangles of the
/// 128×128 diagonal blocks must be zero and stay zero; the rest of the upper triangle is not
/// read). Row-block form: X[I, :I] = −L_II⁻¹ · L[I, :I] · X[:I, :I], two GEMMs per block row
/// split into column chunks in parallel. n³/3 + O(n²·128) flops in T.
template <class T>
void lower_inverse(matrix_view<T> a) {
    const std::size_t n = a.rows, nb = factor_block;
    matrix<T> xii(nb, nb);
    const scratch<T> t(n > nb ? nb * (n - nb) : 0);
    for (std::size_t i0 = 0; i0 < n; i0 += nb) {
        const std::size_t ib = std::min(nb, n - i0), k = i0;
        lower_inverse_unblocked<T>({&a(i0, i0), ib, ib, a.stride}, {xii.data(), ib, ib, nb});
        if (k > 0) {
            // T = −L[I, :k] · X[:k, :k]; X is lower, so chunk [c0, c1) needs rows c0.. only.
            const std::size_t chunks = (k + nb - 1) / nb;
            parallel_for(chunks, [&](std::size_t b, std::size_t e) {
                for (std::size_t s = b; s < e; ++s) {
                    const std::size_t c0 = balanced_index(s, chunks) * nb,
                                      cw = std::min(nb, k - c0);
                    for (std::size_t i = 0; i < ib; ++i)
                        std::fill_n(t.get() + i * k + c0, cw, T(0));
                    gemm_sub<T>({t.get() + c0, ib, cw, k},
                                matrix_view<const T>(&a(i0, c0), ib, k - c0, a.stride),
                                matrix_view<const T>(&a(c0, c0), k - c0, cw, a.stride));
                }
            });
            // X[I, :k] = 0 − (−X_II)·T.
            for (std::size_t i = 0; i < ib; ++i)
                for (std::size_t j = 0; j <= i; ++j) xii(i, j) = -xii(i, j);
            parallel_for(chunks, [&](std::size_t b, std::size_t e) {
                for (std::size_t s = b; s < e; ++s) {
                    const std::size_t c0 = s * nb, cw = std::min(nb, k - c0);
                    matrix_view<T> dst(&a(i0, c0), ib, cw, a.stride);
                    for (std::size_t i = 0; i < ib; ++i) std::fill_n(&dst(i, 0), cw, T(0));
                    gemm_sub<T>(dst, matrix_view<const T>(xii.data(), ib, ib, nb),
                                matrix_view<const T>(t.get() + c0, ib, cw, k));
                }
            });
            for (std::size_t i = 0; i < ib; ++i)
                for (std::size_t j = 0; j <= i; ++j) xii(i, j) = -xii(i, j);
        }
        for (std::size_t i = 0; i < ib; ++i) std::copy_n(&xii(i, 0), ib, &a(i0 + i, i0));
    }
}

/// In place x(a, b) ↔ x(n−1−b, n−1−a) over the lower triangle (the transpose about the
/// anti-diagonal, J·Xᵀ·J, which maps lower-triangular to lower-triangular), then the upper
/// triangle set to 0. In 32×32 tiles paired with their mirror tiles, in parallel by tile rows.
template <class T>
void antitranspose_lower(matrix_view<T> x) {
    constexpr std::size_t tb = 32;
    const std::size_t n = x.rows, tiles = (n + tb - 1) / tb;
    parallel_for(tiles, [&](std::size_t begin, std::size_t end) {
        for (std::size_t s = begin; s < end; ++s) {
            const std::size_t a0 = balanced_index(s, tiles) * tb, a1 = std::min(n, a0 + tb);
            for (std::size_t a = a0; a < a1; ++a) std::fill(&x(a, 0) + a + 1, &x(a, 0) + n, T(0));
            // Each pair once: the element with a + b < n − 1 swaps with its mirror.
            for (std::size_t b0 = 0; b0 < a1 && b0 + a0 + 1 < n; b0 += tb)
                for (std::size_t a = a0; a < a1; ++a)
                    for (std::size_t b = b0; b < std::min({b0 + tb, a + 1, n - 1 - a}); ++b)
                        std::swap(x(a, b), x(n - 1 - b, n - 1 - a));
        }
    });
}

/// The upper Cholesky factor of B⁻¹ (what GPTQ calls Hinv) for B = P·A·P with its diagonal
/// replaced: B(i, j) = A(perm[i], perm[j]) for i ≠ j, B(i, i) = diag[i]. U is upper-triangular
/// with positive diagonal and Uᵀ·U = B⁻¹: the same factor as the reference's cholesky →
/// cholesky_inverse → cholesky(upper), computed with one factorization and one inverse: with J
/// the index reversal, J·B·J = L·Lᵀ gives U = J·L⁻¹·J. Writes Uᵀ (lower, row-major,
/// ut(j, i) = U(i, j), upper triangle 0) into `ut` (n×n), computing in ut's own precision T
/// and in place (no n×n buffer besides ut). A must be symmetric (its rows are read as its
/// columns); perm a permutation of [0, n). Returns false when B is not positive definite.
/// 2n³/3 flops in T, on both cores through parallel_for.
template <class T, class S>
bool inverse_cholesky_upper_transposed(matrix_view<const S> a, std::span<const std::size_t> perm,
                                       std::span<const double> diag, matrix_view<T> ut) {
    const std::size_t n = a.rows;
    // R = J·B·J: R(i, j) = B(n−1−i, n−1−j) = A(perm[n−1−i], perm[n−1−j]), lower triangle.
    parallel_for(n, [&](std::size_t b, std::size_t e) {
        for (std::size_t s = b; s < e; ++s) {
            const std::size_t i = balanced_index(s, n);
            const S* src = &a(perm[n - 1 - i], 0);
            for (std::size_t j = 0; j < i; ++j) ut(i, j) = static_cast<T>(src[perm[n - 1 - j]]);
            ut(i, i) = static_cast<T>(diag[n - 1 - i]);
            // The rest of the diagonal block's row: written (as zeros) by the trailing updates.
            std::fill(&ut(i, 0) + i + 1,
                      &ut(i, 0) + std::min(n, (i / factor_block + 1) * factor_block), T(0));
        }
    });
    if (!cholesky_lower<T>(ut)) return false;
    lower_inverse<T>(ut);
    // U(i, j) = R(n−1−i, n−1−j) for j ≥ i, so Uᵀ(a, b) = R(n−1−b, n−1−a) for b ≤ a.
    antitranspose_lower<T>(ut);
    return true;
}

/// The upper Cholesky factor of A⁻¹ for symmetric positive definite A, transposed into `ut`
/// (see the overload above; identity permutation, A's own diagonal).
template <class T>
bool inverse_cholesky_upper_transposed(matrix_view<const double> a, matrix_view<T> ut) {
    std::vector<std::size_t> perm(a.rows);
    std::vector<double> diag(a.rows);
    for (std::size_t i = 0; i < a.rows; ++i) perm[i] = i, diag[i] = a(i, i);
    return inverse_cholesky_upper_transposed<T, double>(a, perm, diag, ut);
}

}  // namespace qift::detail
