// SPDX-License-Identifier: MIT
// One-bit post-training quantization of W [out][in]: XNOR, ARB / ARB-X / ARB-RC (ARB-LLM,
// arXiv 2410.03129), BiLLM's salient-column and break-point partitions with GPTQ error feedback
// (arXiv 2402.04291), and output alignment with attention-matrix preservation (arXiv 2512.21651).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core.hpp"
#include "detail/linalg.hpp"

namespace qift::inline QIFT_ISA {

// ---------------------------------------------------------------------------------------
// Orientation and notation
//
// The papers write W as [in][out]; qift stores W [out][in] (y = W·x, rows are output
// channels), so every formula in this header is the papers' transposed. B ∈ {−1, +1}^{out×in}
// are the signs, X [N][in] the float model's inputs to the layer, X̂ [N][in] the quantized
// model's, Ŝ = X̂ᵀX̂ (`gram`), S = X̂ᵀX (`cross`, S(i, j) = Σ_t x̂_ti·x_tj) and H = (2/N)·X̂ᵀX̂
// GPTQ's Hessian. The row/column form Ŵ = diag(row_scale)·B·diag(col_scale) is the papers'
// diag(α_r)·B·diag(α_c) transposed: row_scale [out] is the papers' α_c (their columns are
// outputs), col_scale [in] the papers' α_r. Signs of exact zeros are +1 throughout.

/// What a packed form of a binarized matrix stores, counted field by field, and the bits per
/// weight that follow: total_bits() / weights. Every scale and mean counts as one fp16 value
/// (16 bits) — the form a one-bit kernel keeps them in — even though the results below carry
/// them as float (Ŵ is computed from the float values; rounding them to fp16 moves Ŵ by at
/// most 2⁻¹¹ relative). Per method, for W [out][in]:
///  - XNOR, ARB, ARB-X (Ŵ = α_r·B + μ_r per row): out·in sign bits + 2·out fp16 (α, μ):
///    1 + 32/in bits per weight;
///  - ARB-RC and output alignment (Ŵ = diag(u)·B·diag(v)): out·in sign bits + (out + in) fp16:
///    1 + 16/in + 16/out;
///  - BiLLM, per block of width w_b with k_b salient columns: out·w_b first-plane sign bits,
///    out·k_b second-plane bits (salient columns only), out·(w_b − k_b) group-bitmap bits
///    (non-salient weights only: which of the two magnitude groups), w_b salient-column bitmap
///    bits, and per row 3 fp16 for the salient part (α1, α2 and one mean μ1 + μ2) when k_b > 0
///    plus 4 fp16 for the two groups (α, μ each) when k_b < w_b. For a 128-wide block this is
///    (128 + k_b + (128 − k_b) + 7·16)/128 = 2.875 bits per weight plus 1/out for the column
///    bitmap, whatever k_b is. The break-point itself is not stored (the bitmap replaces it).
struct binary_storage {
    std::size_t weights = 0;             ///< out·in
    std::size_t sign_bits = 0;           ///< first bit-plane: one bit per weight
    std::size_t residual_sign_bits = 0;  ///< second bit-plane (BiLLM's salient weights)
    std::size_t bitmap_bits = 0;         ///< salient-column bitmap + group bitmap (BiLLM)
    std::size_t half_values = 0;         ///< scales and means, 16 bits each

    std::size_t total_bits() const noexcept {
        return sign_bits + residual_sign_bits + bitmap_bits + 16 * half_values;
    }
    double bits_per_weight() const noexcept {
        return weights ? double(total_bits()) / double(weights) : 0.0;
    }
};

/// XNOR, ARB and ARB-X: Ŵ(r, c) = scale[r]·signs(r, c) + mean[r].
struct binary_affine_result {
    matrix<std::int8_t> signs;  ///< B [out][in], ±1
    std::vector<float> scale;   ///< α [out]
    std::vector<float> mean;    ///< μ [out]
    /// Ŵ [out][in], computed in float as scale[r] * signs(r, c) + mean[r].
    matrix<float> dequantized;
    /// The method's objective after initialization (index 0, XNOR) and after each iteration:
    /// ‖W − Ŵ‖²_F (XNOR, ARB) or tr((W − Ŵ)·Ŝ·(W − Ŵ)ᵀ) (ARB-X), evaluated with the
    /// double-precision parameters. Never increases (up to rounding).
    std::vector<double> objective;
    binary_storage storage;
};

/// ARB-RC and output alignment: Ŵ(r, c) = row_scale[r]·signs(r, c)·col_scale[c].
/// Scales are normalized so that mean|col_scale| = 1 (Ŵ is invariant under u·t, v/t).
struct binary_rc_result {
    matrix<std::int8_t> signs;     ///< B [out][in], ±1
    std::vector<float> row_scale;  ///< u [out] (the papers' α_c)
    std::vector<float> col_scale;  ///< v [in] (the papers' α_r)
    /// Ŵ [out][in], computed in float as (row_scale[r] * signs(r, c)) * col_scale[c].
    matrix<float> dequantized;
    /// After initialization (index 0) and after each iteration: ‖W − Ŵ‖²_F for ARB-RC; for
    /// output alignment L − ‖X·Wᵀ‖²_F, L = ‖X·Wᵀ − X̂·Ŵᵀ‖²_F (the constant needs XᵀX, which the
    /// method never reads; output_alignment_loss() adds it). Never increases (up to rounding).
    std::vector<double> objective;
    /// Output alignment with AMP: T = Tr[Ŵᵀ_paper·M·Ŵ_paper] (see attention_preservation())
    /// after initialization and after each iteration; empty otherwise.
    std::vector<double> preservation;
    std::size_t sign_flips = 0;    ///< sign updates accepted over all iterations
    std::size_t amp_rejected = 0;  ///< sign updates that lowered L but were refused by AMP
    binary_storage storage;
};

/// Options of ARB and ARB-X.
struct arb_options {
    /// Refinement rounds (μ, then α, then B), each an exact minimization; ARB-LLM's default 15.
    int iterations = 15;
};

/// Options of ARB-RC.
struct arb_rc_options {
    /// Alternating least-squares rounds (row scales, signs, column scales).
    int iterations = 15;
    /// Re-choose B = sign(W ⊙ u·vᵀ) each round (the exact minimizer); false keeps B = sign(W).
    bool refine_signs = true;
};

/// Attention-matrix preservation (AMP) in output alignment's sign updates. Each proposed
/// coordinate update of B (one that lowers L) is accepted only if it does not decrease
/// T = Tr[Ŵᵀ_paper·M·Ŵ_paper], M = (S·W_paper)(S·W_paper)ᵀ (attention_preservation()), so no
/// sign sweep lowers T. The scale updates stay the exact minimizers of L and may move T either
/// way, so the final T is not guaranteed above that of a run without AMP. What AMP costs in L
/// is measured, not bounded (in the tests' synthetic layer: 11–16% more L):
enum class amp_mode {
    off,            ///< every L-lowering update is accepted
    gradient_sign,  ///< the paper's mask: accept iff ΔŴ·∂T/∂Ŵ ≥ 0 at that coordinate
    exact,          ///< accept iff the exact change ΔT ≥ 0 (accepts a superset of the above)
};

/// Options of output alignment.
struct output_alignment_options {
    /// Alternating rounds: row scales, one cyclic sweep over the signs, column scales.
    int iterations = 15;
    /// ARB-RC on W alone gives the starting point.
    arb_rc_options init{};
    /// The paper's method keeps AMP on.
    amp_mode amp = amp_mode::gradient_sign;
};

namespace detail {

/// BiLLM's break-point grid as quantiles of the block's non-salient |w|: 0.10, 0.15, ..., 0.90.
inline std::vector<double> default_break_point_quantiles() {
    std::vector<double> q;
    for (int i = 0; i <= 16; ++i) q.push_back(0.10 + 0.05 * i);
    return q;
}

}  // namespace detail

/// Options of BiLLM.
struct billm_options {
    /// Columns per block (partitions are found per block; GPTQ feedback runs between them).
    std::size_t block_size = 128;
    /// Salient-column counts searched per block: [min_salient, max_salient] ∩ [0, width − 1]
    /// (BiLLM's reference: 1..49).
    std::size_t min_salient = 1;
    std::size_t max_salient = 49;
    /// Break-points searched: these quantiles (in [0, 1], linear interpolation between sorted
    /// values, as numpy.quantile) of |w| over the block's non-salient weights. The reference
    /// searches 81 (0.10, 0.11, ..., 0.90); the default 17 cost a fifth.
    std::vector<double> break_point_quantiles = detail::default_break_point_quantiles();
    /// GPTQ's relative damping H_ii += damp·mean(diag H), raised ×10 on a failed
    /// factorization at most max_retries times.
    double damp = 0.01;
    int max_retries = 5;
};

/// One block of a BiLLM result. Per-row vectors are [out]; the salient ones are empty when the
/// block has no salient column, the group ones when every column is salient.
struct billm_block {
    std::size_t begin = 0;              ///< first column
    std::size_t width = 0;              ///< columns
    std::vector<std::size_t> salient;   ///< salient columns (absolute indices, ascending)
    float break_point = 0.0f;           ///< |w| threshold: high group iff |w| > break_point
    double search_error = 0.0;          ///< Σ (w − ŵ)² / U_jj² of the chosen partition
    std::vector<float> salient_scale1;  ///< α1
    std::vector<float> salient_scale2;  ///< α2
    std::vector<float> salient_mean;    ///< μ1 + μ2
    std::vector<float> low_scale, low_mean, high_scale, high_mean;
};

/// BiLLM's result. Ŵ(r, c) = α1·B1 + α2·B2 + μ on salient columns, α_g·B1 + μ_g on the others
/// with g the row's group (high_group(r, c)), parameters from the column's block, computed in
/// float in that order; B1 = signs, B2 = residual_signs.
struct billm_result {
    matrix<std::int8_t> signs;                 ///< B1 [out][in], ±1
    matrix<std::int8_t> residual_signs;        ///< B2 [out][in]: ±1 on salient columns, else 0
    matrix<std::uint8_t> high_group;           ///< [out][in]: 1 for non-salient |w| > p, else 0
    std::vector<std::uint8_t> salient_column;  ///< [in]: 1 for salient columns
    std::vector<billm_block> blocks;
    matrix<float> dequantized;  ///< Ŵ [out][in]
    /// Σ (w − ŵ)² / d², d = U_jj, with w as GPTQ feedback left it (gptq_result's proxy_loss).
    double proxy_loss = 0.0;
    double damping = 0.0;           ///< relative damping finally used
    double damping_absolute = 0.0;  ///< added to each diagonal entry
    int retries = 0;
    std::size_t dead_columns = 0;  ///< H_jj = 0: H_jj = 1, W[:, j] = 0 (as GPTQ)
    binary_storage storage;
};

namespace detail {

// ---------------------------------------------------------------------------------------
// Validation

inline std::string shape_string(std::size_t rows, std::size_t cols) {
    return std::to_string(rows) + "x" + std::to_string(cols);
}

inline void check_binary_weights(matrix_view<const float> w, const char* fn) {
    require(!w.empty(), [&] {
        return std::string(fn) + ": w is empty (" + shape_string(w.rows, w.cols) + ")";
    });
    for (std::size_t r = 0; r < w.rows; ++r)
        for (std::size_t c = 0; c < w.cols; ++c)
            require(std::isfinite(w(r, c)), [&] {
                return std::string(fn) + ": w(" + std::to_string(r) + ", " + std::to_string(c) +
                       ") is " + std::to_string(w(r, c)) + " (weights must be finite)";
            });
}

/// `name` must be n×n and finite.
inline void check_square(matrix_view<const double> g, std::size_t n, const char* fn,
                         const char* name) {
    require(g.rows == n && g.cols == n, [&] {
        return std::string(fn) + ": " + name + " is " + shape_string(g.rows, g.cols) +
               ", expected in x in = " + shape_string(n, n);
    });
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j)
            require(std::isfinite(g(i, j)), [&] {
                return std::string(fn) + ": " + name + "(" + std::to_string(i) + ", " +
                       std::to_string(j) + ") is " + std::to_string(g(i, j));
            });
}

/// Symmetry tolerance of a Gram: |G_ij − G_ji| ≤ 1e-6·max_i |G_ii| (a Gram accumulated in
/// double is symmetric to ~1e-15).
inline constexpr double gram_symmetry_tolerance = 1e-6;
/// PSD check: the Cholesky factorization of G + 1e-6·mean(diag G)·I must succeed. It fails
/// when G has an eigenvalue below about −1e-6·mean(diag G), far beyond rounding in a Gram.
inline constexpr double gram_psd_damping = 1e-6;

inline void check_symmetric(matrix_view<const double> g, const char* fn, const char* name) {
    double max_diag = 0.0;
    for (std::size_t i = 0; i < g.rows; ++i) max_diag = std::max(max_diag, std::fabs(g(i, i)));
    const double tol = gram_symmetry_tolerance * max_diag;
    for (std::size_t i = 0; i < g.rows; ++i)
        for (std::size_t j = 0; j < i; ++j)
            require(std::fabs(g(i, j) - g(j, i)) <= tol, [&] {
                return std::string(fn) + ": " + name + " is not symmetric: " + name + "(" +
                       std::to_string(i) + ", " + std::to_string(j) +
                       ") = " + std::to_string(g(i, j)) + " but " + name + "(" + std::to_string(j) +
                       ", " + std::to_string(i) + ") = " + std::to_string(g(j, i));
            });
}

/// Shape, finiteness, symmetry and positive semi-definiteness of a Gram (n³/3 flops for the
/// PSD check, on both cores).
inline void check_gram(matrix_view<const double> g, std::size_t n, const char* fn,
                       const char* name) {
    check_square(g, n, fn, name);
    check_symmetric(g, fn, name);
    double mean_diag = 0.0;
    for (std::size_t i = 0; i < n; ++i) mean_diag += g(i, i);
    mean_diag /= double(n);
    const double add =
        gram_psd_damping * std::max(mean_diag, 0.0) + std::numeric_limits<double>::min();
    matrix<double> a(n, n);
    for (std::size_t i = 0; i < n; ++i) {
        std::copy_n(&g(i, 0), i + 1, &a(i, 0));
        a(i, i) += add;
    }
    require(cholesky_lower<double>(a), [&] {
        return std::string(fn) + ": " + name + " is not positive semi-definite (the Cholesky " +
               "factorization of " + name + " + 1e-6·mean(diag)·I failed)";
    });
}

inline void check_iterations(int iterations, const char* fn) {
    require(iterations >= 0, [&] {
        return std::string(fn) + ": iterations must be >= 0, got " + std::to_string(iterations);
    });
}

// ---------------------------------------------------------------------------------------
// Small dense helpers (double)

/// c = a·b (c: a.rows × b.cols, a.cols == b.rows) through the blocked GEMM, in one row block
/// of c per hardware thread (at least 64 rows each): every gemm_sub call packs all of b, so
/// fewer, taller blocks pack it fewer times. 2·m·n·k flops.
inline void multiply(matrix_view<double> c, matrix_view<const double> a,
                     matrix_view<const double> b) {
    if (c.rows == 0 || c.cols == 0) return;
    const std::size_t blocks =
        std::max<std::size_t>(1, std::min<std::size_t>(default_thread_count(), c.rows / 64));
    const std::size_t rb = (c.rows + blocks - 1) / blocks;
    parallel_for(blocks, [&](std::size_t t0, std::size_t t1) {
        for (std::size_t t = t0; t < t1; ++t) {
            const std::size_t i0 = t * rb, rows = std::min(rb, c.rows - i0);
            const matrix_view<double> ct(&c(i0, 0), rows, c.cols, c.stride);
            for (std::size_t i = 0; i < rows; ++i) std::fill_n(&ct(i, 0), c.cols, 0.0);
            gemm_sub<double>(ct, matrix_view<const double>(&a(i0, 0), rows, a.cols, a.stride), b);
            for (std::size_t i = 0; i < rows; ++i)
                for (std::size_t j = 0; j < c.cols; ++j) ct(i, j) = -ct(i, j);
        }
    });
}

inline matrix<double> to_double(matrix_view<const float> w) {
    matrix<double> d(w.rows, w.cols);
    for (std::size_t r = 0; r < w.rows; ++r)
        for (std::size_t c = 0; c < w.cols; ++c) d(r, c) = double(w(r, c));
    return d;
}

/// Solves L·Lᵀ·x = b in place (b becomes x), L the lower triangle of `l`. O(n²).
inline void cholesky_solve(matrix_view<const double> l, std::span<double> b) noexcept {
    const std::size_t n = l.rows;
    for (std::size_t i = 0; i < n; ++i) {
        double s = b[i];
        for (std::size_t k = 0; k < i; ++k) s -= l(i, k) * b[k];
        b[i] = s / l(i, i);
    }
    for (std::size_t i = n; i-- > 0;) {
        double s = b[i];
        for (std::size_t k = i + 1; k < n; ++k) s -= l(k, i) * b[k];
        b[i] = s / l(i, i);
    }
}

inline std::int8_t sign_of(double x) noexcept {
    return x >= 0.0 ? std::int8_t{1} : std::int8_t{-1};
}

// ---------------------------------------------------------------------------------------
// Per-row affine binarization (XNOR, ARB)

/// XNOR of one row: μ = mean w, α = mean|w − μ|, b = sign(w − μ).
inline void xnor_row(std::span<const float> w, std::int8_t* b, double& alpha, double& mu) noexcept {
    const std::size_t n = w.size();
    double s = 0.0;
    for (float x : w) s += double(x);
    mu = s / double(n);
    double a = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
        const double d = double(w[i]) - mu;
        a += std::fabs(d);
        b[i] = sign_of(d);
    }
    alpha = a / double(n);
}

inline double affine_row_error(std::span<const float> w, const std::int8_t* b, double alpha,
                               double mu) noexcept {
    double e = 0.0;
    for (std::size_t i = 0; i < w.size(); ++i) {
        const double d = double(w[i]) - alpha * double(b[i]) - mu;
        e += d * d;
    }
    return e;
}

/// Result assembly for Ŵ = α·B + μ per row; storage 1 + 32/in bits per weight.
inline binary_affine_result make_affine_result(matrix<std::int8_t>&& signs,
                                               const std::vector<double>& alpha,
                                               const std::vector<double>& mu,
                                               std::vector<double>&& objective) {
    binary_affine_result res;
    const std::size_t out = signs.rows(), in = signs.cols();
    res.scale.resize(out);
    res.mean.resize(out);
    res.dequantized = matrix<float>(out, in);
    for (std::size_t r = 0; r < out; ++r) {
        const float a = static_cast<float>(alpha[r]), m = static_cast<float>(mu[r]);
        res.scale[r] = a;
        res.mean[r] = m;
        for (std::size_t c = 0; c < in; ++c)
            res.dequantized(r, c) = a * static_cast<float>(signs(r, c)) + m;
    }
    res.signs = std::move(signs);
    res.objective = std::move(objective);
    res.storage.weights = out * in;
    res.storage.sign_bits = out * in;
    res.storage.half_values = 2 * out;
    return res;
}

/// Sums obj(t, ·) over rows for each t, in row order (independent of the executor).
inline std::vector<double> row_sums(const matrix<double>& obj) {
    std::vector<double> s(obj.rows(), 0.0);
    for (std::size_t t = 0; t < obj.rows(); ++t)
        for (std::size_t r = 0; r < obj.cols(); ++r) s[t] += obj(t, r);
    return s;
}

// ---------------------------------------------------------------------------------------
// Row/column form (ARB-RC, output alignment)

/// Signs and scales of Ŵ = diag(u)·B·diag(v) in double.
struct rc_solution {
    matrix<std::int8_t> signs;
    std::vector<double> u;  // [out]
    std::vector<double> v;  // [in]
};

inline double rc_weight_error(matrix_view<const float> w, const rc_solution& s) noexcept {
    double e = 0.0;
    for (std::size_t r = 0; r < w.rows; ++r)
        for (std::size_t c = 0; c < w.cols; ++c) {
            const double d = double(w(r, c)) - s.u[r] * double(s.signs(r, c)) * s.v[c];
            e += d * d;
        }
    return e;
}

/// ARB-RC's alternating least squares on ‖W − diag(u)·B·diag(v)‖²_F, from B = sign(W), v = 1,
/// u_r = mean_c |W(r, c)|. Each round, each step the exact minimizer of its block of unknowns:
///   u_r = Σ_c W_rc·B_rc·v_c / Σ_c v_c²;
///   B_rc = sign(W_rc·u_r·v_c) (kept where that is 0);
///   v_c = Σ_r W_rc·B_rc·u_r / Σ_r u_r².
/// `objective` receives ‖W − Ŵ‖²_F after the start and after each round. O(out·in) per round.
inline rc_solution arb_rc_solve(matrix_view<const float> w, const arb_rc_options& opt,
                                std::vector<double>& objective) {
    const std::size_t out = w.rows, in = w.cols;
    rc_solution s{matrix<std::int8_t>(out, in), std::vector<double>(out, 0.0),
                  std::vector<double>(in, 1.0)};
    for (std::size_t r = 0; r < out; ++r) {
        double a = 0.0;
        for (std::size_t c = 0; c < in; ++c) {
            s.signs(r, c) = sign_of(double(w(r, c)));
            a += std::fabs(double(w(r, c)));
        }
        s.u[r] = a / double(in);
    }
    objective.push_back(rc_weight_error(w, s));
    std::vector<double> acc(in);
    for (int it = 0; it < opt.iterations; ++it) {
        double v2 = 0.0;
        for (double x : s.v) v2 += x * x;
        if (v2 > 0.0)
            for (std::size_t r = 0; r < out; ++r) {
                double p = 0.0;
                for (std::size_t c = 0; c < in; ++c)
                    p += double(w(r, c)) * double(s.signs(r, c)) * s.v[c];
                s.u[r] = p / v2;
            }
        if (opt.refine_signs)
            for (std::size_t r = 0; r < out; ++r)
                for (std::size_t c = 0; c < in; ++c) {
                    const double x = double(w(r, c)) * s.u[r] * s.v[c];
                    if (x != 0.0) s.signs(r, c) = sign_of(x);
                }
        double u2 = 0.0;
        for (double x : s.u) u2 += x * x;
        if (u2 > 0.0) {
            std::fill(acc.begin(), acc.end(), 0.0);
            for (std::size_t r = 0; r < out; ++r)
                for (std::size_t c = 0; c < in; ++c)
                    acc[c] += double(w(r, c)) * double(s.signs(r, c)) * s.u[r];
            for (std::size_t c = 0; c < in; ++c) s.v[c] = acc[c] / u2;
        }
        objective.push_back(rc_weight_error(w, s));
    }
    return s;
}

/// Result assembly for Ŵ = diag(u)·B·diag(v), after rescaling to mean|v| = 1; storage
/// 1 + 16/in + 16/out bits per weight.
inline binary_rc_result make_rc_result(rc_solution&& s, std::vector<double>&& objective) {
    const std::size_t out = s.signs.rows(), in = s.signs.cols();
    double m = 0.0;
    for (double x : s.v) m += std::fabs(x);
    m /= double(in);
    if (m > 0.0 && std::isfinite(m)) {
        for (double& x : s.v) x /= m;
        for (double& x : s.u) x *= m;
    }
    binary_rc_result res;
    res.row_scale.resize(out);
    res.col_scale.resize(in);
    for (std::size_t r = 0; r < out; ++r) res.row_scale[r] = static_cast<float>(s.u[r]);
    for (std::size_t c = 0; c < in; ++c) res.col_scale[c] = static_cast<float>(s.v[c]);
    res.dequantized = matrix<float>(out, in);
    for (std::size_t r = 0; r < out; ++r)
        for (std::size_t c = 0; c < in; ++c)
            res.dequantized(r, c) =
                (res.row_scale[r] * static_cast<float>(s.signs(r, c))) * res.col_scale[c];
    res.signs = std::move(s.signs);
    res.objective = std::move(objective);
    res.storage.weights = out * in;
    res.storage.sign_bits = out * in;
    res.storage.half_values = out + in;
    return res;
}

// ---------------------------------------------------------------------------------------
// Output alignment: the problem and its three exact block updates (qift's orientation)
//
// With P = W·Sᵀ [out][in] (P(r, i) = Σ_j W(r, j)·S(i, j)) and ŵ_r the r-th row of Ŵ:
//   L = ‖X·Wᵀ − X̂·Ŵᵀ‖²_F = ‖X·Wᵀ‖²_F − 2·Σ_r ⟨ŵ_r, P_r⟩ + Σ_r ŵ_rᵀ·Ŝ·ŵ_r,
// separable over output rows r. With Ŵ = diag(u)·B·diag(v) and Q = (B ⊙ 1vᵀ)·Ŝ
// (Q(r, i) = Σ_j Ŝ_ij·v_j·B_rj, kept current by every step):
//   u_r = Σ_i B_ri·v_i·P_ri / Σ_i B_ri·v_i·Q_ri                      (L quadratic in u_r);
//   B_ri = sign(u_r·v_i·(P_ri − u_r·(Q_ri − Ŝ_ii·v_i·B_ri)))         (L linear in B_ri given
//          the others; cyclic over i, all rows at once; unchanged where the argument is 0);
//   (Ŝ ⊙ Bᵀ·diag(u²)·B)·v = c, c_i = Σ_r u_r·B_ri·P_ri             (L quadratic in v).
// These are the paper's α_c, row-by-row B and α_r updates transposed (its row i of B is our
// column i). A flip of B_ri changes L by −4·|argument|, so no accepted update raises L.
// AMP: T = Tr[Ŵᵀ_paper·M·Ŵ_paper] with M = (S·W_paper)(S·W_paper)ᵀ = Pᵀ·P [in][in] is
// Σ_r ŵ_rᵀ·M·ŵ_r = ‖P·Ŵᵀ‖²_F; with Z = (B ⊙ 1vᵀ)·M a flip ΔB_ri = δ = ±2 changes it by
// u_r²·(2·v_i·δ·Z_ri + v_i²·δ²·M_ii), and ∂T/∂Ŵ_ri = 2·u_r·Z_ri.

struct oa_problem {
    matrix_view<const double> gram;  // Ŝ [in][in]
    matrix<double> p;                // P = W·Sᵀ [out][in]
    matrix<double> m;                // M = Pᵀ·P [in][in] (AMP only, else empty)
};

/// P = W·Sᵀ and, with AMP, M = Pᵀ·P. 2·out·in² (+ 2·out·in²) flops.
inline oa_problem make_oa_problem(matrix_view<const float> w, matrix_view<const double> cross,
                                  matrix_view<const double> gram, bool amp) {
    const std::size_t out = w.rows, in = w.cols;
    oa_problem pr{gram, matrix<double>(out, in), {}};
    const matrix<double> wd = to_double(w);
    matrix<double> st(in, in);
    transpose_copy<double, double>(cross, st);
    multiply(pr.p, wd, st);
    if (amp) {
        matrix<double> pt(in, out);
        transpose_copy<double, double>(pr.p.view(), pt);
        pr.m = matrix<double>(in, in);
        multiply(pr.m, pt, pr.p);
    }
    return pr;
}

struct oa_state {
    rc_solution x;
    matrix<double> q;  // Q = (B ⊙ 1vᵀ)·Ŝ
    matrix<double> z;  // Z = (B ⊙ 1vᵀ)·M (AMP only)
    std::size_t flips = 0, rejected = 0;
};

/// Recomputes Q (and Z with AMP) from B and v. 2·out·in² flops each.
inline void oa_refresh(const oa_problem& pr, oa_state& st) {
    const std::size_t out = st.x.signs.rows(), in = st.x.signs.cols();
    matrix<double> bv(out, in);
    for (std::size_t r = 0; r < out; ++r)
        for (std::size_t c = 0; c < in; ++c) bv(r, c) = double(st.x.signs(r, c)) * st.x.v[c];
    st.q = matrix<double>(out, in);
    multiply(st.q, bv, pr.gram);
    if (!pr.m.empty()) {
        st.z = matrix<double>(out, in);
        multiply(st.z, bv, pr.m);
    }
}

/// L − ‖X·Wᵀ‖²_F = Σ_r (u_r²·Σ_i B_ri·v_i·Q_ri − 2·u_r·Σ_i B_ri·v_i·P_ri). O(out·in).
inline double oa_objective(const oa_problem& pr, const oa_state& st) {
    double l = 0.0;
    for (std::size_t r = 0; r < st.q.rows(); ++r) {
        double p = 0.0, q = 0.0;
        for (std::size_t i = 0; i < st.q.cols(); ++i) {
            const double bv = double(st.x.signs(r, i)) * st.x.v[i];
            p += bv * pr.p(r, i);
            q += bv * st.q(r, i);
        }
        l += st.x.u[r] * st.x.u[r] * q - 2.0 * st.x.u[r] * p;
    }
    return l;
}

/// T = Σ_r u_r²·Σ_i B_ri·v_i·Z_ri (AMP only). O(out·in).
inline double oa_preservation(const oa_state& st) {
    double t = 0.0;
    for (std::size_t r = 0; r < st.z.rows(); ++r) {
        double s = 0.0;
        for (std::size_t i = 0; i < st.z.cols(); ++i)
            s += double(st.x.signs(r, i)) * st.x.v[i] * st.z(r, i);
        t += st.x.u[r] * st.x.u[r] * s;
    }
    return t;
}

/// u_r = Σ_i B_ri·v_i·P_ri / Σ_i B_ri·v_i·Q_ri (kept where the denominator is not positive).
inline void oa_update_row_scales(const oa_problem& pr, oa_state& st) {
    for (std::size_t r = 0; r < st.q.rows(); ++r) {
        double p = 0.0, q = 0.0;
        for (std::size_t i = 0; i < st.q.cols(); ++i) {
            const double bv = double(st.x.signs(r, i)) * st.x.v[i];
            p += bv * pr.p(r, i);
            q += bv * st.q(r, i);
        }
        if (q > 0.0) st.x.u[r] = p / q;
    }
}

/// One cyclic sweep i = 0..in−1 of exact coordinate updates of B, rows in parallel, keeping
/// Q (and Z) current: O(out·in) plus O(in) per flip.
inline void oa_sweep_signs(const oa_problem& pr, oa_state& st, amp_mode amp) {
    const std::size_t out = st.q.rows(), in = st.q.cols();
    const bool track = !pr.m.empty(), use_amp = amp != amp_mode::off && track;
    std::vector<std::size_t> flips(out, 0), rejected(out, 0);
    parallel_for(out, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            const double u = st.x.u[r];
            if (u == 0.0) continue;
            std::int8_t* b = &st.x.signs(r, 0);
            double* q = &st.q(r, 0);
            double* z = track ? &st.z(r, 0) : nullptr;
            for (std::size_t i = 0; i < in; ++i) {
                const double v = st.x.v[i];
                if (v == 0.0) continue;
                const double old = double(b[i]);
                const double a = u * v * (pr.p(r, i) - u * (q[i] - pr.gram(i, i) * v * old));
                if (a == 0.0 || (a > 0.0) == (old > 0.0)) continue;
                const double delta = -2.0 * old;
                if (use_amp) {
                    const bool keep =
                        amp == amp_mode::gradient_sign
                            ? v * delta * z[i] >= 0.0
                            : 2.0 * v * delta * z[i] + v * v * delta * delta * pr.m(i, i) >= 0.0;
                    if (!keep) {
                        ++rejected[r];
                        continue;
                    }
                }
                b[i] = static_cast<std::int8_t>(-b[i]);
                ++flips[r];
                const double step = v * delta;
                const double* g = &pr.gram(i, 0);  // column i of the symmetric Ŝ
                for (std::size_t j = 0; j < in; ++j) q[j] += step * g[j];
                if (track) {
                    const double* m = &pr.m(i, 0);
                    for (std::size_t j = 0; j < in; ++j) z[j] += step * m[j];
                }
            }
        }
    });
    for (std::size_t r = 0; r < out; ++r) st.flips += flips[r], st.rejected += rejected[r];
}

/// Solves (Ŝ ⊙ Bᵀ·diag(u²)·B)·v = c, c_i = Σ_r u_r·B_ri·P_ri, then refreshes Q (and Z).
/// Coordinates with a zero diagonal (v_i does not enter L) keep their value; a ridge of
/// 1e-12·mean(diag) (×100 per failed factorization, at most 6 times) makes a singular system
/// solvable; the new v is kept only if L does not rise (so a failed or inaccurate solve never
/// costs objective). 2·out·in² + in³/3 flops.
inline void oa_update_col_scales(const oa_problem& pr, oa_state& st) {
    const std::size_t out = st.q.rows(), in = st.q.cols();
    matrix<double> bu(in, out), bd(out, in), g(in, in);
    std::vector<double> c(in, 0.0);
    for (std::size_t r = 0; r < out; ++r) {
        const double u = st.x.u[r];
        for (std::size_t i = 0; i < in; ++i) {
            const double b = double(st.x.signs(r, i));
            bu(i, r) = b * u * u;
            bd(r, i) = b;
            c[i] += u * b * pr.p(r, i);
        }
    }
    multiply(g, bu, bd);
    for (std::size_t i = 0; i < in; ++i)
        for (std::size_t j = 0; j < in; ++j) g(i, j) *= pr.gram(i, j);
    double mean_diag = 0.0;
    for (std::size_t i = 0; i < in; ++i) {
        if (!(g(i, i) > 0.0)) {
            for (std::size_t j = 0; j < in; ++j) g(i, j) = g(j, i) = 0.0;
            g(i, i) = 1.0;
            c[i] = st.x.v[i];
        }
        mean_diag += g(i, i);
    }
    mean_diag /= double(in);
    // f(v) = vᵀ·G·v − 2·cᵀ·v, L − const up to terms of the pinned coordinates (equal for both).
    const auto f = [&](const std::vector<double>& v) {
        double s = 0.0;
        for (std::size_t i = 0; i < in; ++i) {
            double gv = 0.0;
            for (std::size_t j = 0; j < in; ++j) gv += g(i, j) * v[j];
            s += v[i] * (gv - 2.0 * c[i]);
        }
        return s;
    };
    matrix<double> l(in, in);
    double ridge = 1e-12 * mean_diag;
    bool solved = false;
    for (int attempt = 0; attempt <= 6 && !solved; ++attempt, ridge *= 100.0) {
        for (std::size_t i = 0; i < in; ++i) {
            std::copy_n(&g(i, 0), i + 1, &l(i, 0));
            l(i, i) += ridge;
        }
        solved = cholesky_lower<double>(l);
    }
    if (solved) {
        std::vector<double> x = c;
        cholesky_solve(l, x);
        bool finite = true;
        for (double e : x) finite = finite && std::isfinite(e);
        if (finite && f(x) <= f(st.x.v)) st.x.v = std::move(x);
    }
    oa_refresh(pr, st);
}

// ---------------------------------------------------------------------------------------
// BiLLM pieces

/// Σ c_t·(x_t − x̂_t)² of BiLLM's order-1 binarization of x[0, n) split at |x| ≤ p (low) and
/// > p (high): per group μ = mean, α = mean|x − μ|, x̂ = μ + α·sign(x − μ), an empty group
/// contributing 0. With sign(0) = +1 each term is c·(|x − μ| − α)², so per group
/// Σ c·(x − μ)² − 2α·Σ c·|x − μ| + α²·Σ c, from two branch-free passes (group membership as a
/// 0/1 factor; the low group's sums are the totals minus the high group's).
inline double split_error(const double* x, const double* c, std::size_t n, double p) noexcept {
    double n_hi = 0.0, s_hi = 0.0, s_all = 0.0;
    for (std::size_t t = 0; t < n; ++t) {
        const double h = std::fabs(x[t]) > p ? 1.0 : 0.0;
        n_hi += h;
        s_hi += h * x[t];
        s_all += x[t];
    }
    const double n_lo = double(n) - n_hi, s_lo = s_all - s_hi;
    const double mu_lo = n_lo > 0.0 ? s_lo / n_lo : 0.0, mu_hi = n_hi > 0.0 ? s_hi / n_hi : 0.0;
    const double dmu = mu_hi - mu_lo;
    double a_all = 0.0, a_hi = 0.0, ca_all = 0.0, ca_hi = 0.0, cs_all = 0.0, cs_hi = 0.0,
           cc_all = 0.0, cc_hi = 0.0;
    for (std::size_t t = 0; t < n; ++t) {
        const double h = std::fabs(x[t]) > p ? 1.0 : 0.0;
        const double d = std::fabs(x[t] - mu_lo - h * dmu), cd = c[t] * d;
        a_all += d;
        a_hi += h * d;
        ca_all += cd;
        ca_hi += h * cd;
        cs_all += cd * d;
        cs_hi += h * cd * d;
        cc_all += c[t];
        cc_hi += h * c[t];
    }
    const double al_lo = n_lo > 0.0 ? (a_all - a_hi) / n_lo : 0.0,
                 al_hi = n_hi > 0.0 ? a_hi / n_hi : 0.0;
    return (cs_all - cs_hi) - 2.0 * al_lo * (ca_all - ca_hi) + al_lo * al_lo * (cc_all - cc_hi) +
           cs_hi - 2.0 * al_hi * ca_hi + al_hi * al_hi * cc_hi;
}

/// split_error for many break-points at once. In value order the low group |x| ≤ p is one
/// contiguous range [L, R) (−p ≤ x ≤ p) and the high group its two tails, so with prefix sums of
/// x, c, c·x and c·x² over the sorted values each group's μ, Σ|x − μ|, Σ c·|x − μ| and
/// Σ c·(x − μ)² take O(log n) (a binary search for where x crosses μ): build() is O(n) on sorted
/// input, error(p) O(log n). Agrees with split_error up to rounding.
class split_scorer {
  public:
    /// xs ascending, cs their weights; both read during build() only.
    void build(const double* xs, const double* cs, std::size_t n) {
        xs_.assign(xs, xs + n);
        px_.assign(n + 1, 0.0);
        pc_.assign(n + 1, 0.0);
        pcx_.assign(n + 1, 0.0);
        pcx2_.assign(n + 1, 0.0);
        for (std::size_t t = 0; t < n; ++t) {
            px_[t + 1] = px_[t] + xs[t];
            pc_[t + 1] = pc_[t] + cs[t];
            pcx_[t + 1] = pcx_[t] + cs[t] * xs[t];
            pcx2_[t + 1] = pcx2_[t] + cs[t] * xs[t] * xs[t];
        }
    }

    double error(double p) const noexcept {
        const std::size_t n = xs_.size();
        const auto lo = std::lower_bound(xs_.begin(), xs_.end(), -p) - xs_.begin(),
                   hi = std::upper_bound(xs_.begin(), xs_.end(), p) - xs_.begin();
        const std::size_t l = std::size_t(lo), r = std::size_t(std::max(lo, hi));
        double e = 0.0;
        if (r > l) {  // low group [l, r)
            const double mu = (px_[r] - px_[l]) / double(r - l);
            e += group_error(terms(l, r, mu), double(r - l));
        }
        const std::size_t nh = l + (n - r);
        if (nh > 0) {  // high group [0, l) ∪ [r, n)
            const double mu = (px_[l] + px_[n] - px_[r]) / double(nh);
            terms_t t = terms(0, l, mu);
            const terms_t u = terms(r, n, mu);
            t.abs += u.abs, t.cabs += u.cabs, t.csq += u.csq, t.csum += u.csum;
            e += group_error(t, double(nh));
        }
        return e;
    }

  private:
    struct terms_t {
        double abs = 0.0, cabs = 0.0, csq = 0.0, csum = 0.0;
    };
    // Σ|x − μ|, Σ c·|x − μ|, Σ c·(x − μ)², Σ c over [a, b).
    terms_t terms(std::size_t a, std::size_t b, double mu) const noexcept {
        if (a >= b) return {};
        const std::size_t s = std::size_t(
            std::lower_bound(xs_.begin() + std::ptrdiff_t(a), xs_.begin() + std::ptrdiff_t(b), mu) -
            xs_.begin());
        terms_t t;
        t.abs = (px_[b] - px_[s]) - mu * double(b - s) + mu * double(s - a) - (px_[s] - px_[a]);
        t.cabs = (pcx_[b] - pcx_[s]) - mu * (pc_[b] - pc_[s]) + mu * (pc_[s] - pc_[a]) -
                 (pcx_[s] - pcx_[a]);
        t.csum = pc_[b] - pc_[a];
        t.csq = (pcx2_[b] - pcx2_[a]) - 2.0 * mu * (pcx_[b] - pcx_[a]) + mu * mu * t.csum;
        return t;
    }
    static double group_error(const terms_t& t, double n) noexcept {
        const double alpha = t.abs / n;
        return t.csq - 2.0 * alpha * t.cabs + alpha * alpha * t.csum;
    }
    std::vector<double> xs_, px_, pc_, pcx_, pcx2_;
};

/// BiLLM's order-2 residual binarization of x[0, k): μ1 = mean x, α1 = mean|x − μ1|,
/// b1 = sign(x − μ1); ρ = x − μ1 − α1·b1, μ2 = mean ρ, α2 = mean|ρ − μ2|, b2 = sign(ρ − μ2).
/// Returns Σ c·(x − x̂)², x̂ = α1·b1 + α2·b2 + μ1 + μ2; writes the parameters and, when b1 is
/// not null, the signs. `rho` is scratch of k values.
struct residual2_params {
    double a1 = 0.0, a2 = 0.0, mu = 0.0;
};
inline double residual2(const double* x, const double* c, std::size_t k, double* rho,
                        residual2_params& prm, std::int8_t* b1 = nullptr,
                        std::int8_t* b2 = nullptr) noexcept {
    prm = {};
    if (k == 0) return 0.0;
    const double nk = double(k);
    double s = 0.0;
    for (std::size_t t = 0; t < k; ++t) s += x[t];
    const double mu1 = s / nk;
    double a = 0.0;
    for (std::size_t t = 0; t < k; ++t) a += std::fabs(x[t] - mu1);
    const double a1 = a / nk;
    s = 0.0;
    for (std::size_t t = 0; t < k; ++t) {
        const std::int8_t sg = sign_of(x[t] - mu1);
        if (b1) b1[t] = sg;
        rho[t] = x[t] - mu1 - a1 * double(sg);
        s += rho[t];
    }
    const double mu2 = s / nk;
    a = 0.0;
    for (std::size_t t = 0; t < k; ++t) a += std::fabs(rho[t] - mu2);
    const double a2 = a / nk;
    double e = 0.0;
    for (std::size_t t = 0; t < k; ++t) {
        const double d = std::fabs(rho[t] - mu2) - a2;
        if (b2) b2[t] = sign_of(rho[t] - mu2);
        e += c[t] * d * d;
    }
    prm = {a1, a2, mu1 + mu2};
    return e;
}

/// q-quantile of the sorted values `v` (numpy's default linear interpolation).
inline double quantile_sorted(std::span<const double> v, double q) noexcept {
    const double h = q * double(v.size() - 1);
    const std::size_t lo = static_cast<std::size_t>(std::floor(h));
    if (lo + 1 >= v.size()) return v.back();
    return v[lo] + (h - double(lo)) * (v[lo + 1] - v[lo]);
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Methods

/// XNOR binarization per row of W [out][in] (row-major, any stride): μ_r = mean_c W(r, c),
/// α_r = mean_c |W(r, c) − μ_r| (the least-squares α for those signs), B = sign(W − μ).
/// objective has one entry, ‖W − Ŵ‖²_F. Throws qift::error for an empty or non-finite W.
/// O(out·in).
inline binary_affine_result binarize_xnor(matrix_view<const float> w) {
    detail::check_binary_weights(w, "binarize_xnor");
    const std::size_t out = w.rows, in = w.cols;
    matrix<std::int8_t> signs(out, in);
    std::vector<double> alpha(out), mu(out);
    double e = 0.0;
    for (std::size_t r = 0; r < out; ++r) {
        detail::xnor_row(w.row(r), &signs(r, 0), alpha[r], mu[r]);
        e += detail::affine_row_error(w.row(r), &signs(r, 0), alpha[r], mu[r]);
    }
    return detail::make_affine_result(std::move(signs), alpha, mu, {e});
}

/// ARB (ARB-LLM's alternating refined binarization) per row of W [out][in]: from XNOR, each
/// iteration sets μ = mean(w − α·b) (the paper's μ += mean of the residual), then
/// α = mean(b ⊙ (w − μ)), then b = sign(α·(w − μ)) — each the exact minimizer of
/// ‖w − α·b − μ‖² in its unknown, so objective[t] (‖W − Ŵ‖²_F) never increases.
/// Throws qift::error for an empty or non-finite W or negative iterations. O(out·in) per
/// iteration, rows in parallel.
inline binary_affine_result binarize_arb(matrix_view<const float> w, const arb_options& opt = {}) {
    detail::check_binary_weights(w, "binarize_arb");
    detail::check_iterations(opt.iterations, "binarize_arb");
    const std::size_t out = w.rows, in = w.cols, iters = std::size_t(opt.iterations);
    matrix<std::int8_t> signs(out, in);
    std::vector<double> alpha(out), mu(out);
    matrix<double> obj(iters + 1, out);
    parallel_for(out, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            const std::span<const float> row = w.row(r);
            std::int8_t* b = &signs(r, 0);
            double& a = alpha[r];
            double& m = mu[r];
            detail::xnor_row(row, b, a, m);
            obj(0, r) = detail::affine_row_error(row, b, a, m);
            for (std::size_t t = 1; t <= iters; ++t) {
                double s = 0.0;
                for (std::size_t c = 0; c < in; ++c) s += double(row[c]) - a * double(b[c]);
                m = s / double(in);
                s = 0.0;
                for (std::size_t c = 0; c < in; ++c) s += double(b[c]) * (double(row[c]) - m);
                a = s / double(in);
                for (std::size_t c = 0; c < in; ++c) {
                    const double x = a * (double(row[c]) - m);
                    if (x != 0.0) b[c] = detail::sign_of(x);
                }
                obj(t, r) = detail::affine_row_error(row, b, a, m);
            }
        }
    });
    return detail::make_affine_result(std::move(signs), alpha, mu, detail::row_sums(obj));
}

/// ARB-X: ARB with the objective weighted by the input Gram Ŝ = X̂ᵀX̂ [in][in] (`gram`,
/// symmetric PSD), tr((W − Ŵ)·Ŝ·(W − Ŵ)ᵀ) = Σ_r e_rᵀ·Ŝ·e_r, e_r = w_r − α_r·b_r − μ_r·1.
/// From XNOR, each iteration per row, each step exact in its unknown:
///   μ = 1ᵀŜ(w − α·b) / 1ᵀŜ1;   α = bᵀŜ(w − μ·1) / bᵀŜb;
///   b: one cyclic sweep of coordinate updates, flipping b_i iff that lowers the objective
///   (ΔF = −2αδ·(Ŝe)_i + α²δ²·Ŝ_ii < 0 for δ = −2·b_i) —
/// the unweighted ARB's sign(w − μ) is not the minimizer once Ŝ couples the columns.
/// A step whose denominator is not positive keeps its value. Ŝ = I gives ARB exactly.
/// Throws qift::error for an empty or non-finite W, a gram that is not in×in, finite,
/// symmetric and PSD (see detail::check_gram), or negative iterations. 4·out·in² flops for
/// Ŝ·w and Ŝ·b (kept current on flips) plus O(out·in) per iteration and O(in) per flip, rows
/// in parallel.
inline binary_affine_result binarize_arb_x(matrix_view<const float> w,
                                           matrix_view<const double> gram,
                                           const arb_options& opt = {}) {
    detail::check_binary_weights(w, "binarize_arb_x");
    detail::check_gram(gram, w.cols, "binarize_arb_x", "gram");
    detail::check_iterations(opt.iterations, "binarize_arb_x");
    const std::size_t out = w.rows, in = w.cols, iters = std::size_t(opt.iterations);
    matrix<std::int8_t> signs(out, in);
    std::vector<double> alpha(out), mu(out);
    for (std::size_t r = 0; r < out; ++r) detail::xnor_row(w.row(r), &signs(r, 0), alpha[r], mu[r]);
    // Ŝ symmetric: W·Ŝ has rows Ŝ·w_r, B·Ŝ rows Ŝ·b_r.
    matrix<double> gw(out, in), hb(out, in), bd(out, in);
    const matrix<double> wd = detail::to_double(w);
    for (std::size_t i = 0; i < bd.size(); ++i) bd.data()[i] = double(signs.data()[i]);
    detail::multiply(gw, wd, gram);
    detail::multiply(hb, bd, gram);
    std::vector<double> g1(in, 0.0);
    double s11 = 0.0;
    for (std::size_t i = 0; i < in; ++i) {
        for (std::size_t j = 0; j < in; ++j) g1[i] += gram(i, j);
        s11 += g1[i];
    }
    matrix<double> obj(iters + 1, out);
    parallel_for(out, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            const double* x = &wd(r, 0);
            const double* gx = &gw(r, 0);
            double* h = &hb(r, 0);
            std::int8_t* b = &signs(r, 0);
            double& a = alpha[r];
            double& m = mu[r];
            double wgw = 0.0, sgw = 0.0;
            for (std::size_t i = 0; i < in; ++i) wgw += x[i] * gx[i], sgw += gx[i];
            const auto objective = [&] {
                double bgw = 0.0, bg1 = 0.0, bh = 0.0;
                for (std::size_t i = 0; i < in; ++i) {
                    bgw += double(b[i]) * gx[i];
                    bg1 += double(b[i]) * g1[i];
                    bh += double(b[i]) * h[i];
                }
                return wgw - 2.0 * m * sgw - 2.0 * a * bgw + m * m * s11 + 2.0 * m * a * bg1 +
                       a * a * bh;
            };
            obj(0, r) = objective();
            for (std::size_t t = 1; t <= iters; ++t) {
                double bgw = 0.0, bg1 = 0.0, bh = 0.0;
                for (std::size_t i = 0; i < in; ++i) {
                    bgw += double(b[i]) * gx[i];
                    bg1 += double(b[i]) * g1[i];
                    bh += double(b[i]) * h[i];
                }
                if (s11 > 0.0) m = (sgw - a * bg1) / s11;
                if (bh > 0.0) a = (bgw - m * bg1) / bh;
                for (std::size_t i = 0; i < in; ++i) {
                    const double delta = -2.0 * double(b[i]);
                    const double resid = gx[i] - m * g1[i] - a * h[i];  // (Ŝe)_i
                    const double df = -2.0 * a * delta * resid + a * a * delta * delta * gram(i, i);
                    if (!(df < 0.0)) continue;
                    b[i] = static_cast<std::int8_t>(-b[i]);
                    const double* gi = &gram(i, 0);
                    for (std::size_t j = 0; j < in; ++j) h[j] += delta * gi[j];
                }
                obj(t, r) = objective();
            }
        }
    });
    return detail::make_affine_result(std::move(signs), alpha, mu, detail::row_sums(obj));
}

/// ARB-RC: Ŵ = diag(u)·B·diag(v) (row scales u [out], column scales v [in], no mean) by
/// alternating least squares on ‖W − Ŵ‖²_F (see detail::arb_rc_solve for the updates).
/// Throws qift::error for an empty or non-finite W or negative iterations. O(out·in) per
/// iteration.
inline binary_rc_result binarize_arb_rc(matrix_view<const float> w,
                                        const arb_rc_options& opt = {}) {
    detail::check_binary_weights(w, "binarize_arb_rc");
    detail::check_iterations(opt.iterations, "binarize_arb_rc");
    std::vector<double> objective;
    detail::rc_solution s = detail::arb_rc_solve(w, opt, objective);
    return detail::make_rc_result(std::move(s), std::move(objective));
}

/// Output alignment (arXiv 2512.21651): Ŵ = diag(u)·B·diag(v) minimizing
/// L = ‖X·Wᵀ − X̂·Ŵᵀ‖²_F from `cross` S = X̂ᵀX [in][in] (finite; not symmetric in general),
/// `gram` Ŝ = X̂ᵀX̂ [in][in] (symmetric PSD) and W only — never the activations. Starts from
/// ARB-RC on W (opt.init), then each iteration: the row scales, one cyclic sweep of exact
/// coordinate updates of the signs (with AMP as opt.amp), and the column scales by a linear
/// solve — the closed forms in the comment above detail::oa_problem, each an exact minimization
/// in its unknowns, so L never rises (AMP only withholds L-lowering flips). `objective` holds
/// L − ‖X·Wᵀ‖²_F, `preservation` the AMP quantity T (with AMP). Throws qift::error for an empty
/// or non-finite W, Grams of the wrong shape, non-finite, or (gram) not symmetric PSD, and
/// negative iterations. Per iteration: 4·out·in² flops (6 with AMP) through the blocked GEMM,
/// an in×in Cholesky, O(out·in) plus O(in) per flip for the sweep; rows in parallel.
inline binary_rc_result binarize_output_aligned(matrix_view<const float> w,
                                                matrix_view<const double> cross,
                                                matrix_view<const double> gram,
                                                const output_alignment_options& opt = {}) {
    constexpr const char* fn = "binarize_output_aligned";
    detail::check_binary_weights(w, fn);
    detail::check_square(cross, w.cols, fn, "cross");
    detail::check_gram(gram, w.cols, fn, "gram");
    detail::check_iterations(opt.iterations, fn);
    detail::check_iterations(opt.init.iterations, fn);
    const bool amp = opt.amp != amp_mode::off;
    std::vector<double> init_objective;
    detail::oa_state st{detail::arb_rc_solve(w, opt.init, init_objective), {}, {}, 0, 0};
    const detail::oa_problem pr = detail::make_oa_problem(w, cross, gram, amp);
    detail::oa_refresh(pr, st);
    std::vector<double> objective{detail::oa_objective(pr, st)}, preservation;
    if (amp) preservation.push_back(detail::oa_preservation(st));
    for (int it = 0; it < opt.iterations; ++it) {
        detail::oa_update_row_scales(pr, st);
        detail::oa_sweep_signs(pr, st, opt.amp);
        detail::oa_update_col_scales(pr, st);
        objective.push_back(detail::oa_objective(pr, st));
        if (amp) preservation.push_back(detail::oa_preservation(st));
    }
    binary_rc_result res = detail::make_rc_result(std::move(st.x), std::move(objective));
    res.preservation = std::move(preservation);
    res.sign_flips = st.flips;
    res.amp_rejected = st.rejected;
    return res;
}

/// BiLLM (arXiv 2402.04291) with GPTQ error feedback, for W [out][in] and GPTQ's Hessian
/// H [in][in] (finite, symmetric to detail::gram_symmetry_tolerance, non-negative diagonal;
/// e.g. site_statistics::hessian()). As GPTQ: dead columns (H_jj = 0: H_jj = 1, W[:, j] = 0),
/// damping H_ii += damp·mean(diag H) (raised ×10 on failure, at most max_retries times), U the
/// upper Cholesky factor of H⁻¹ (float, as gptq()). Then per block of block_size columns, on W
/// as feedback from the earlier blocks left it:
///  1. salience of column j: Σ_r W_rj² / U_jj²; columns ranked by it (stable for ties);
///  2. joint search over the salient count k (the top k columns; opt.min/max_salient) and the
///     break-point p (opt.break_point_quantiles of the non-salient |w|) for the least
///     Σ_r Σ_j (W_rj − Ŵ_rj)² / U_jj² over the block, where salient columns get order-2
///     residual binarization per row (detail::residual2) and the others, split into |w| ≤ p and
///     |w| > p, order-1 binarization per row and group (detail::split_error). Each binarizer
///     subtracts the group's row mean before taking signs and stores it, as BiLLM's reference
///     does (its residual binarizer takes nanmean over the group, subtracts it and adds it
///     back); the two salient means are stored as one sum;
///  3. with Ŵ of the block fixed, GPTQ's column loop runs over the block (err = (w − ŵ)/U_jj,
///     later in-block columns updated by err ⊗ U[j, ·]), then the lazy update
///     W[:, end:] −= Err·U[block, end:] — the exact OBS compensation of later columns for the
///     whole block. (BiLLM's reference leaves in-block columns unupdated, computing Err from
///     the block as it was; the block's codes are the same either way.)
/// Differences from the reference, all choices of this header: the reference first picks k
/// (rest binarized as one order-2 group) then p, over 81 quantiles of |w| including zeros at
/// the salient positions, scoring on the salience matrix W²/U_jj² itself with an unweighted
/// MSE; here (k, p) are searched jointly on W with the 1/U_jj² weighting that GPTQ's loss uses.
/// Throws qift::error for an empty or non-finite W, a bad H (shape, non-finite, negative
/// diagonal, asymmetric), H not positive definite after the retries, and bad options.
/// Cost: 2in³/3 flops for U, 2·out·in² for the feedback, and per block a sort of its out·w_b
/// magnitudes plus, per row and k, O(w_b) to order the non-salient values and O(log w_b) per
/// break-point (detail::split_scorer); rows in parallel through parallel_for.
inline billm_result binarize_billm(matrix_view<const float> w, matrix_view<const double> h,
                                   const billm_options& opt = {}) {
    constexpr const char* fn = "binarize_billm";
    detail::check_binary_weights(w, fn);
    detail::check_square(h, w.cols, fn, "hessian");
    detail::check_symmetric(h, fn, "hessian");
    for (std::size_t i = 0; i < h.rows; ++i)
        detail::require(h(i, i) >= 0.0, [&] {
            return std::string(fn) + ": hessian(" + std::to_string(i) + ", " + std::to_string(i) +
                   ") is " + std::to_string(h(i, i)) + " (a Hessian has a non-negative diagonal)";
        });
    detail::require(opt.block_size >= 1, [&] { return std::string(fn) + ": block_size is 0"; });
    detail::require(opt.min_salient <= opt.max_salient, [&] {
        return std::string(fn) + ": min_salient " + std::to_string(opt.min_salient) +
               " > max_salient " + std::to_string(opt.max_salient);
    });
    detail::require(!opt.break_point_quantiles.empty(),
                    [&] { return std::string(fn) + ": break_point_quantiles is empty"; });
    for (double q : opt.break_point_quantiles)
        detail::require(q >= 0.0 && q <= 1.0, [&] {
            return std::string(fn) + ": break-point quantile " + std::to_string(q) +
                   " is outside [0, 1]";
        });
    detail::require(opt.damp >= 0.0 && std::isfinite(opt.damp), [&] {
        return std::string(fn) + ": damp must be finite and >= 0, got " + std::to_string(opt.damp);
    });
    detail::require(opt.max_retries >= 0, [&] {
        return std::string(fn) + ": max_retries must be >= 0, got " +
               std::to_string(opt.max_retries);
    });

    const std::size_t out = w.rows, n = w.cols;
    billm_result res;
    std::vector<double> diag(n);
    std::vector<char> dead(n, 0);
    for (std::size_t j = 0; j < n; ++j) {
        diag[j] = h(j, j);
        if (diag[j] == 0.0) dead[j] = 1, diag[j] = 1.0, ++res.dead_columns;
    }
    double mean_diag = 0.0;
    for (double d : diag) mean_diag += d;
    mean_diag /= double(n);
    std::vector<std::size_t> perm(n);
    std::iota(perm.begin(), perm.end(), std::size_t{0});
    const detail::scratch<float> ut_buf(n * n);
    const matrix_view<float> ut(ut_buf.get(), n, n);  // ut(j, i) = U(i, j)
    std::vector<double> damped(n);
    double damp = opt.damp;
    for (int attempt = 0;; ++attempt) {
        const double add = damp * mean_diag;
        for (std::size_t i = 0; i < n; ++i) damped[i] = diag[i] + add;
        if (detail::inverse_cholesky_upper_transposed<float, double>(h, perm, damped, ut)) {
            res.damping = damp;
            res.damping_absolute = add;
            res.retries = attempt;
            break;
        }
        detail::require(attempt < opt.max_retries, [&] {
            return std::string(fn) + ": the Hessian is not positive definite: Cholesky failed " +
                   "with damp " + std::to_string(opt.damp) + " and after " +
                   std::to_string(opt.max_retries) + " retries up to damp " + std::to_string(damp);
        });
        damp = damp > 0.0 ? damp * 10.0 : 1e-4;
    }

    // W transposed (columns as rows), dead columns zeroed; GPTQ's feedback updates it.
    const detail::scratch<float> wt_buf(n * out);
    const matrix_view<float> wt(wt_buf.get(), n, out);
    for (std::size_t j = 0; j < n; ++j)
        for (std::size_t r = 0; r < out; ++r) wt(j, r) = dead[j] ? 0.0f : w(r, j);

    res.signs = matrix<std::int8_t>(out, n);
    res.residual_signs = matrix<std::int8_t>(out, n);
    res.high_group = matrix<std::uint8_t>(out, n);
    res.salient_column.assign(n, 0);
    res.dequantized = matrix<float>(out, n);
    const std::size_t nb = opt.block_size, np = opt.break_point_quantiles.size();
    constexpr std::size_t row_chunk = 16;
    const std::size_t chunks = (out + row_chunk - 1) / row_chunk;
    for (std::size_t i1 = 0; i1 < n; i1 += nb) {
        const std::size_t i2 = std::min(n, i1 + nb), bw = i2 - i1;
        // 1. Salience ranking.
        std::vector<double> cw(bw), salience(bw, 0.0);
        for (std::size_t j = 0; j < bw; ++j) {
            const double d = double(ut(i1 + j, i1 + j));
            cw[j] = 1.0 / (d * d);
            for (std::size_t r = 0; r < out; ++r)
                salience[j] += double(wt(i1 + j, r)) * double(wt(i1 + j, r));
            salience[j] *= cw[j];
        }
        std::vector<std::size_t> order(bw);
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::stable_sort(order.begin(), order.end(),
                         [&](std::size_t a, std::size_t b) { return salience[a] > salience[b]; });
        std::vector<std::size_t> rank(bw);
        for (std::size_t t = 0; t < bw; ++t) rank[order[t]] = t;
        std::vector<double> cr(bw);
        for (std::size_t t = 0; t < bw; ++t) cr[t] = cw[order[t]];
        const std::size_t khi = std::min(opt.max_salient, bw - 1),
                          klo = std::min(opt.min_salient, khi), nk = khi - klo + 1;

        // Break-point candidates per k: quantiles of |w| over the non-salient weights.
        std::vector<std::pair<double, std::size_t>> mags(out * bw);
        for (std::size_t j = 0; j < bw; ++j)
            for (std::size_t r = 0; r < out; ++r)
                mags[j * out + r] = {std::fabs(double(wt(i1 + j, r))), rank[j]};
        std::sort(mags.begin(), mags.end());
        matrix<double> pv(nk, np);
        {
            std::vector<double> kept;
            kept.reserve(out * bw);
            for (std::size_t ki = 0; ki < nk; ++ki) {
                kept.clear();
                for (const auto& e : mags)
                    if (e.second >= klo + ki) kept.push_back(e.first);
                for (std::size_t pi = 0; pi < np; ++pi)
                    pv(ki, pi) = detail::quantile_sorted(kept, opt.break_point_quantiles[pi]);
            }
        }

        // 2. Joint search, row chunks in parallel, each with its own table (summed in order).
        matrix<double> table(chunks, nk * np);
        parallel_for(chunks, [&](std::size_t c0, std::size_t c1) {
            std::vector<double> x(bw), rho(bw), xs(bw), cs(bw);
            std::vector<std::size_t> by_value(bw);
            detail::split_scorer scorer;
            for (std::size_t ch = c0; ch < c1; ++ch) {
                double* tab = &table(ch, 0);
                for (std::size_t r = ch * row_chunk; r < std::min(out, (ch + 1) * row_chunk); ++r) {
                    for (std::size_t t = 0; t < bw; ++t) x[t] = double(wt(i1 + order[t], r));
                    std::iota(by_value.begin(), by_value.end(), std::size_t{0});
                    std::sort(by_value.begin(), by_value.end(),
                              [&](std::size_t a, std::size_t b) { return x[a] < x[b]; });
                    for (std::size_t ki = 0; ki < nk; ++ki) {
                        const std::size_t k = klo + ki;
                        detail::residual2_params prm;
                        const double es =
                            detail::residual2(x.data(), cr.data(), k, rho.data(), prm);
                        std::size_t m = 0;  // the non-salient values (ranks >= k), ascending
                        for (std::size_t t : by_value)
                            if (t >= k) xs[m] = x[t], cs[m] = cr[t], ++m;
                        scorer.build(xs.data(), cs.data(), m);
                        for (std::size_t pi = 0; pi < np; ++pi)
                            tab[ki * np + pi] += es + scorer.error(pv(ki, pi));
                    }
                }
            }
        });
        std::size_t best = 0;
        double best_err = std::numeric_limits<double>::infinity();
        for (std::size_t e = 0; e < nk * np; ++e) {
            double s = 0.0;
            for (std::size_t ch = 0; ch < chunks; ++ch) s += table(ch, e);
            if (s < best_err) best_err = s, best = e;
        }
        const std::size_t k = klo + best / np;
        const double p = pv(best / np, best % np);

        // The block's binarization with (k, p).
        billm_block blk;
        blk.begin = i1;
        blk.width = bw;
        blk.break_point = static_cast<float>(p);
        blk.search_error = best_err;
        for (std::size_t t = 0; t < k; ++t) blk.salient.push_back(i1 + order[t]);
        std::sort(blk.salient.begin(), blk.salient.end());
        for (std::size_t j : blk.salient) res.salient_column[j] = 1;
        if (k > 0) {
            blk.salient_scale1.resize(out);
            blk.salient_scale2.resize(out);
            blk.salient_mean.resize(out);
        }
        if (k < bw) {
            blk.low_scale.resize(out);
            blk.low_mean.resize(out);
            blk.high_scale.resize(out);
            blk.high_mean.resize(out);
        }
        matrix<float> qb(bw, out);  // the block's Ŵ, transposed like wt
        parallel_for(out, [&](std::size_t r0, std::size_t r1) {
            std::vector<double> x(bw), rho(bw), cone(bw, 1.0);
            std::vector<std::int8_t> b1(bw), b2(bw);
            for (std::size_t r = r0; r < r1; ++r) {
                for (std::size_t t = 0; t < bw; ++t) x[t] = double(wt(i1 + order[t], r));
                if (k > 0) {
                    detail::residual2_params prm;
                    detail::residual2(x.data(), cone.data(), k, rho.data(), prm, b1.data(),
                                      b2.data());
                    const float a1 = static_cast<float>(prm.a1), a2 = static_cast<float>(prm.a2),
                                mu = static_cast<float>(prm.mu);
                    blk.salient_scale1[r] = a1;
                    blk.salient_scale2[r] = a2;
                    blk.salient_mean[r] = mu;
                    for (std::size_t t = 0; t < k; ++t) {
                        const std::size_t j = order[t];
                        res.signs(r, i1 + j) = b1[t];
                        res.residual_signs(r, i1 + j) = b2[t];
                        qb(j, r) = a1 * float(b1[t]) + a2 * float(b2[t]) + mu;
                    }
                }
                if (k < bw) {
                    double cnt[2] = {0.0, 0.0}, sum[2] = {0.0, 0.0}, mean[2], al[2] = {0.0, 0.0};
                    for (std::size_t t = k; t < bw; ++t) {
                        const int g = std::fabs(x[t]) > p ? 1 : 0;
                        cnt[g] += 1.0;
                        sum[g] += x[t];
                    }
                    for (int g = 0; g < 2; ++g) mean[g] = cnt[g] > 0.0 ? sum[g] / cnt[g] : 0.0;
                    for (std::size_t t = k; t < bw; ++t) {
                        const int g = std::fabs(x[t]) > p ? 1 : 0;
                        al[g] += std::fabs(x[t] - mean[g]);
                    }
                    float af[2], mf[2];
                    for (int g = 0; g < 2; ++g) {
                        af[g] = static_cast<float>(cnt[g] > 0.0 ? al[g] / cnt[g] : 0.0);
                        mf[g] = static_cast<float>(mean[g]);
                    }
                    blk.low_scale[r] = af[0];
                    blk.low_mean[r] = mf[0];
                    blk.high_scale[r] = af[1];
                    blk.high_mean[r] = mf[1];
                    for (std::size_t t = k; t < bw; ++t) {
                        const std::size_t j = order[t];
                        const int g = std::fabs(x[t]) > p ? 1 : 0;
                        const std::int8_t s = detail::sign_of(x[t] - mean[g]);
                        res.signs(r, i1 + j) = s;
                        res.high_group(r, i1 + j) = static_cast<std::uint8_t>(g);
                        qb(j, r) = af[g] * float(s) + mf[g];
                    }
                }
            }
        });
        res.storage.residual_sign_bits += out * k;
        res.storage.bitmap_bits += bw + out * (bw - k);
        res.storage.half_values += out * ((k > 0 ? 3 : 0) + (k < bw ? 4 : 0));

        // 3. GPTQ's column loop with the block's Ŵ fixed, then the lazy update.
        matrix<float> err(bw, out);
        for (std::size_t i = i1; i < i2; ++i) {
            const float d = ut(i, i);
            float* wi = &wt(i, 0);
            float* ei = &err(i - i1, 0);
            const float* qi = &qb(i - i1, 0);
            for (std::size_t r = 0; r < out; ++r) {
                const float diff = wi[r] - qi[r];
                res.proxy_loss += double(diff) * double(diff) / (double(d) * double(d));
                ei[r] = diff / d;
                res.dequantized(r, i) = qi[r];
            }
            for (std::size_t j = i + 1; j < i2; ++j) detail::axpy_sub(&wt(j, 0), ei, ut(j, i), out);
        }
        if (i2 < n) {
            constexpr std::size_t cb = 64;
            const std::size_t col_blocks = (out + cb - 1) / cb;
            parallel_for(col_blocks, [&](std::size_t b0, std::size_t b1) {
                for (std::size_t t = b0; t < b1; ++t) {
                    const std::size_t c0 = t * cb, cwid = std::min(cb, out - c0);
                    detail::gemm_sub<float>({&wt(i2, c0), n - i2, cwid, out},
                                            matrix_view<const float>(&ut(i2, i1), n - i2, bw, n),
                                            matrix_view<const float>(&err(0, c0), bw, cwid, out));
                }
            });
        }
        res.blocks.push_back(std::move(blk));
    }
    res.storage.weights = out * n;
    res.storage.sign_bits = out * n;
    return res;
}

// ---------------------------------------------------------------------------------------
// Objectives, for evaluation and tests

/// tr((W − Ŵ)·G·(W − Ŵ)ᵀ) for W, Ŵ [out][in] and a Gram or Hessian G [in][in]: ARB-X's
/// objective with G = Ŝ, GPTQ's layer error with G = H. Throws qift::error on shape mismatch.
/// 2·out·in² flops.
inline double weighted_error(matrix_view<const float> w, matrix_view<const float> w_hat,
                             matrix_view<const double> g) {
    detail::require(w_hat.rows == w.rows && w_hat.cols == w.cols, [&] {
        return "weighted_error: w_hat is " + detail::shape_string(w_hat.rows, w_hat.cols) +
               ", w is " + detail::shape_string(w.rows, w.cols);
    });
    detail::check_square(g, w.cols, "weighted_error", "g");
    matrix<double> e(w.rows, w.cols), eg(w.rows, w.cols);
    for (std::size_t r = 0; r < w.rows; ++r)
        for (std::size_t c = 0; c < w.cols; ++c) e(r, c) = double(w(r, c)) - double(w_hat(r, c));
    detail::multiply(eg, e, g);
    double s = 0.0;
    for (std::size_t i = 0; i < e.size(); ++i) s += e.data()[i] * eg.data()[i];
    return s;
}

/// L = ‖X·Wᵀ − X̂·Ŵᵀ‖²_F = tr(W·F·Wᵀ) − 2·tr(Ŵ·S·Wᵀ) + tr(Ŵ·Ŝ·Ŵᵀ) from `cross` S = X̂ᵀX,
/// `gram` Ŝ = X̂ᵀX̂ and `gram_float` F = XᵀX (all [in][in]); with gram_float empty, the
/// constant tr(W·F·Wᵀ) is left out (what binarize_output_aligned's objective reports).
/// Throws qift::error on shape mismatch. O(out·in²).
inline double output_alignment_loss(matrix_view<const float> w, matrix_view<const float> w_hat,
                                    matrix_view<const double> cross, matrix_view<const double> gram,
                                    matrix_view<const double> gram_float = {}) {
    constexpr const char* fn = "output_alignment_loss";
    detail::require(w_hat.rows == w.rows && w_hat.cols == w.cols, [&] {
        return std::string(fn) + ": w_hat is " + detail::shape_string(w_hat.rows, w_hat.cols) +
               ", w is " + detail::shape_string(w.rows, w.cols);
    });
    detail::check_square(cross, w.cols, fn, "cross");
    detail::check_square(gram, w.cols, fn, "gram");
    if (!gram_float.empty()) detail::check_square(gram_float, w.cols, fn, "gram_float");
    const matrix<double> wd = detail::to_double(w), hd = detail::to_double(w_hat);
    matrix<double> t(w.rows, w.cols);
    const auto dot = [](const matrix<double>& a, const matrix<double>& b) {
        double s = 0.0;
        for (std::size_t i = 0; i < a.size(); ++i) s += a.data()[i] * b.data()[i];
        return s;
    };
    detail::multiply(t, hd, gram);
    double l = dot(t, hd);
    detail::multiply(t, hd, cross);
    l -= 2.0 * dot(t, wd);
    if (!gram_float.empty()) {
        detail::multiply(t, wd, gram_float);
        l += dot(t, wd);
    }
    return l;
}

/// AMP's quantity T = Tr[Ŵᵀ_paper·M·Ŵ_paper], M = (S·W_paper)(S·W_paper)ᵀ, which in qift's
/// orientation is ‖P·Ŵᵀ‖²_F with P = W·Sᵀ = W·XᵀX̂: the energy of the cross-similarity between
/// float and quantized outputs, ‖Yᵀ·Ŷ‖²_F = Σ_{r,r'} (Σ_t y_tr·ŷ_tr')² with Y = X·Wᵀ,
/// Ŷ = X̂·Ŵᵀ.
/// Throws qift::error on shape mismatch. 2·out·in² + 2·out²·in flops.
inline double attention_preservation(matrix_view<const float> w, matrix_view<const float> w_hat,
                                     matrix_view<const double> cross) {
    detail::require(w_hat.rows == w.rows && w_hat.cols == w.cols, [&] {
        return "attention_preservation: w_hat is " + detail::shape_string(w_hat.rows, w_hat.cols) +
               ", w is " + detail::shape_string(w.rows, w.cols);
    });
    detail::check_square(cross, w.cols, "attention_preservation", "cross");
    const detail::oa_problem pr = detail::make_oa_problem(w, cross, cross, false);
    matrix<double> ht(w.cols, w.rows), pw(w.rows, w.rows);
    for (std::size_t r = 0; r < w.rows; ++r)
        for (std::size_t c = 0; c < w.cols; ++c) ht(c, r) = double(w_hat(r, c));
    detail::multiply(pw, pr.p, ht);
    double s = 0.0;
    for (double x : pw.flat()) s += x * x;
    return s;
}

}  // namespace qift
