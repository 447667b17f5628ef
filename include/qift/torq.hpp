// SPDX-License-Identifier: MIT
// Rotations that make MXFP4 activations quantizable, fitted per linear-layer input behind one
// interface: TORQ's two training-free stages (arXiv 2605.19561) — Givens rotations that equalize
// the channels' second moments (inter-block) and one 32×32 rotation per layer that spreads the
// E2M1 code usage (intra-block) — and their neighbours: a full randomized Hadamard (QuaRot), a
// block-diagonal randomized Hadamard-32 (BRQ / MR-GPTQ), and a PeRQ-like ℓ1-balancing
// permutation followed by the block Hadamard-32.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core.hpp"
#include "detail/linalg.hpp"
#include "hadamard.hpp"
#include "levels.hpp"
#include "mx.hpp"

namespace qift::inline QIFT_ISA {

// ---------------------------------------------------------------------------------------
// Methods

/// The rotation families mx_rotation fits (every one an orthogonal Q, x -> x·Q):
/// - none: Q = I;
/// - hadamard: a randomized Hadamard of order d (QuaRot), rotation::for_size(d, seed), which
///   falls back to a seeded Haar-random orthogonal matrix for orders no construction reaches;
/// - block_hadamard: the same randomized Hadamard-32 H₃₂·D/√32 on every block of 32 (BRQ,
///   MR-GPTQ);
/// - perq: a channel permutation that evens the blocks' ℓ1 masses, then block_hadamard;
/// - torq_inter: TORQ's inter-block stage alone (Givens rotations equalizing diag(QᵀΣQ));
/// - torq_intra: TORQ's intra-block stage alone (one fitted 32×32 rotation on every block);
/// - torq: the inter stage, then the intra stage fitted on the inter-rotated activations.
enum class mx_rotation_method {
    none,
    hadamard,
    block_hadamard,
    perq,
    torq_inter,
    torq_intra,
    torq
};

/// Every method, in declaration order (for sweeps).
inline constexpr std::array<mx_rotation_method, 7> all_mx_rotation_methods{
    mx_rotation_method::none, mx_rotation_method::hadamard,   mx_rotation_method::block_hadamard,
    mx_rotation_method::perq, mx_rotation_method::torq_inter, mx_rotation_method::torq_intra,
    mx_rotation_method::torq};

/// "none", "hadamard", "block-hadamard", "perq", "torq-inter", "torq-intra", "torq".
inline std::string_view to_string(mx_rotation_method m) noexcept {
    switch (m) {
        case mx_rotation_method::none:
            return "none";
        case mx_rotation_method::hadamard:
            return "hadamard";
        case mx_rotation_method::block_hadamard:
            return "block-hadamard";
        case mx_rotation_method::perq:
            return "perq";
        case mx_rotation_method::torq_inter:
            return "torq-inter";
        case mx_rotation_method::torq_intra:
            return "torq-intra";
        case mx_rotation_method::torq:
            return "torq";
    }
    return "unknown";
}

/// The method named by to_string, also accepting '_' for '-' ("block_hadamard"); std::nullopt
/// for any other string.
inline std::optional<mx_rotation_method> parse_mx_rotation(std::string_view s) {
    std::string name(s);
    std::replace(name.begin(), name.end(), '_', '-');
    for (mx_rotation_method m : all_mx_rotation_methods)
        if (name == to_string(m)) return m;
    return std::nullopt;
}

// ---------------------------------------------------------------------------------------
// MXFP4 quality

/// MXFP4 quantization quality of a matrix: relative_mse = ‖x − deq(mxfp4(x))‖²/‖x‖² over all
/// elements (0 for an all-zero x), and code_entropy = the Shannon entropy in bits of the usage of
/// the 8 E2M1 *magnitude* codes {0, 0.5, 1, 1.5, 2, 3, 4, 6} (the sign ignored, ±0 one code) over
/// all elements of x (padding excluded): 3 bits when every magnitude is used equally often.
struct mxfp4_fit {
    double relative_mse = 0.0;
    double code_entropy = 0.0;
};

namespace detail {

/// Accumulates mxfp4_fit over MXFP4-quantized rows: squared error, energy and a magnitude-code
/// histogram, all in double.
struct mxfp4_fit_accumulator {
    double error = 0.0, energy = 0.0;
    std::array<double, 8> hist{};

    /// Adds one quantized block: `x` its (≤ 32) values, `codes` its 16 code bytes, `scale` its
    /// E8M0 code. A NaN block makes the error NaN.
    void add_block(std::span<const float> x, const std::uint8_t* codes,
                   std::uint8_t scale) noexcept {
        if (scale == e8m0_nan) {
            error = NAN;
            return;
        }
        const double step = std::ldexp(1.0, int(scale) - 127);
        for (std::size_t j = 0; j < x.size(); ++j) {
            const std::uint8_t byte = codes[j % 16];
            const std::uint8_t c = j < 16 ? byte & 0x0F : byte >> 4;
            const double q = static_cast<double>(levels::e2m1::levels[c]) * step;
            const double v = x[j];
            error += (v - q) * (v - q);
            energy += v * v;
            hist[c & 7] += 1.0;
        }
    }

    mxfp4_fit result() const noexcept {
        double total = 0.0;
        for (double h : hist) total += h;
        double entropy = 0.0;
        for (double h : hist)
            if (h > 0) entropy -= h / total * std::log2(h / total);
        return {energy > 0 ? error / energy : (error > 0 ? 1.0 : 0.0), entropy};
    }
};

inline void require_finite(matrix_view<const float> x, const char* where) {
    for (std::size_t r = 0; r < x.rows; ++r)
        for (std::size_t c = 0; c < x.cols; ++c)
            require(std::isfinite(x(r, c)), [&] {
                return std::string(where) + ": x(" + std::to_string(r) + ", " + std::to_string(c) +
                       ") is " + std::to_string(x(r, c));
            });
}

}  // namespace detail

/// mxfp4_fit of quantize_mxfp4(x) (rounding to nearest, the reference's default) against x, for
/// x [rows][cols] of any shape and stride (rows padded to whole blocks; the padding is not
/// counted). Throws qift::error for an empty x or a non-finite value. O(rows·cols).
inline mxfp4_fit mxfp4_quality(matrix_view<const float> x) {
    detail::require(!x.empty(), [&] {
        return "mxfp4_quality: x is empty (" + std::to_string(x.rows) + "x" +
               std::to_string(x.cols) + ")";
    });
    detail::require_finite(x, "mxfp4_quality");
    detail::mxfp4_fit_accumulator acc;
    std::array<std::uint8_t, mxfp4_matrix::block_bytes> codes{};
    for (std::size_t r = 0; r < x.rows; ++r)
        for (std::size_t k0 = 0; k0 < x.cols; k0 += mx_block_size) {
            const std::span<const float> block(&x(r, k0), std::min(mx_block_size, x.cols - k0));
            acc.add_block(block, codes.data(), quantize_mxfp4_block(block, codes.data()));
        }
    return acc.result();
}

// ---------------------------------------------------------------------------------------
// Options and pieces

/// How the intra stage picks its result among the iterates it visited (see mx_rotation::fit).
enum class torq_selection {
    relative_mse,  ///< the lowest MXFP4 relative MSE on the fitting sample (default)
    code_entropy,  ///< the highest E2M1 magnitude-code entropy on the fitting sample (TORQ's aim)
};

/// What the intra stage's Cayley steps climb (see mx_rotation::fit).
enum class torq_objective {
    code_entropy,  ///< TORQ's: the soft (sigmoid-smoothed) E2M1 magnitude-code entropy
    relative_mse,  ///< the hard MXFP4 relative MSE, codes and scales held fixed per step
};

/// Parameters of mx_rotation::fit. Only the TORQ intra stage reads more than `seed`.
struct torq_options {
    /// Seeds the random signs of every Hadamard (qift::rotation::hadamard's convention: 0 = no sign
    /// flips) and the intra stage's block subsample. Same seed, same data: bit-identical Q.
    std::uint64_t seed = 1;
    /// Cayley steps the intra stage tries (accepted or rejected).
    std::size_t iterations = 48;
    /// First step length: the Frobenius norm of the skew generator of the first Cayley step,
    /// about the rotation angle in radians. Grows ×1.25 after an accepted step (up to 0.5),
    /// halves after a rejected one; the search stops below 1e-4.
    double step = 0.1;
    /// Width of the soft code assignment: the sigmoid at each E2M1 decision boundary has scale
    /// temperature × (gap between the two magnitudes it separates); → 0 is the hard quantizer.
    double temperature = 0.1;
    /// At most this many 32-blocks (rows × d/32 in all) are used to fit the intra stage, drawn
    /// without replacement by the seed; all of them when there are fewer (0: no cap). A step
    /// costs about 200 flops and a table look-up per sampled element, ≈ 8 ms on one core for
    /// 8192 blocks.
    std::size_t max_blocks = 8192;
    /// Which iterate the intra stage returns (see torq_selection).
    torq_selection select = torq_selection::relative_mse;
    /// What the intra stage's steps climb (see torq_objective).
    torq_objective objective = torq_objective::code_entropy;
};

/// One plane rotation of the inter stage, applied to a row vector as
/// (x_i, x_j) <- (c·x_i − s·x_j, s·x_i + c·x_j): x <- x·G with G_ii = G_jj = c, G_ij = s,
/// G_ji = −s. 6 flops.
struct givens_rotation {
    std::uint32_t i = 0, j = 0;
    float c = 1.0f, s = 0.0f;
};

/// What fitting the intra stage saw, all on its fitting sample of blocks (zero when the method
/// has no intra stage): the quality with no intra rotation (`identity`), at the Hadamard-32
/// start, of the iterate with the best relative MSE, of the iterate with the best entropy, and of
/// the returned one. Entropy is the optimized surrogate and relative MSE what a model feels;
/// both are kept so that a caller sees when they disagree.
struct torq_fit_report {
    std::size_t sample_blocks = 0;  ///< blocks of 32 the intra stage was fitted on
    std::size_t steps = 0;          ///< Cayley steps tried
    std::size_t accepted = 0;       ///< steps that did not lower the objective
    mxfp4_fit identity, start, best_mse, best_entropy, selected;
    bool selected_identity = false;  ///< no intra rotation beat leaving the blocks as they are
};

namespace detail {

/// The E2M1 magnitudes (codes 0..7 of levels::e2m1), their decision boundaries (midpoints:
/// round-to-nearest) and the gap each boundary sits in.
inline constexpr std::array<double, 8> e2m1_magnitudes = [] {
    std::array<double, 8> m{};
    for (std::size_t c = 0; c < 8; ++c) m[c] = double(levels::e2m1::levels[c]);
    return m;
}();
inline constexpr std::array<double, 7> e2m1_boundaries = [] {
    std::array<double, 7> b{};
    for (std::size_t k = 0; k < 7; ++k) b[k] = (e2m1_magnitudes[k] + e2m1_magnitudes[k + 1]) / 2;
    return b;
}();
inline constexpr std::array<double, 7> e2m1_gaps = [] {
    std::array<double, 7> g{};
    for (std::size_t k = 0; k < 7; ++k) g[k] = e2m1_magnitudes[k + 1] - e2m1_magnitudes[k];
    return g;
}();
static_assert(e2m1_boundaries[4] == 2.5 && e2m1_boundaries[6] == 5.0 && e2m1_gaps[6] == 2.0);

/// A plane rotation (c, s) as in givens_rotation, computed in double.
struct givens_angle {
    double c = 1.0, s = 0.0;
};

/// The plane rotation of TORQ's inter stage for the 2×2 block [[a, b], [b, e]] of Σ with
/// a > mu > e: (c, s) as in givens_rotation, with c > 0, such that the rotated diagonal entry
/// a' = c²a − 2csb + s²e (when `fix_j` is false) or e' = s²a + 2csb + c²e (when true) equals mu.
/// With t = tan θ the conditions are the quadratics αt² + βt + γ = 0
///   a' = mu:  (e − mu)t² − 2bt + (a − mu) = 0,
///   e' = mu:  (a − mu)t² + 2bt + (e − mu) = 0,
/// whose constant and leading coefficients have opposite signs: two real roots of opposite
/// sign, always. We take the root of smaller |t| (the smaller rotation, closest to I), computed
/// without cancellation as γ/q with q = −(β + sign(β)·√(β² − 4αγ))/2.
inline givens_angle equalizing_givens(double a, double b, double e, double mu,
                                      bool fix_j) noexcept {
    const double alpha = fix_j ? a - mu : e - mu;
    const double beta = fix_j ? 2.0 * b : -2.0 * b;
    const double gamma = fix_j ? e - mu : a - mu;
    const double root = std::sqrt(beta * beta - 4.0 * alpha * gamma);
    const double q = -0.5 * (beta + (beta >= 0 ? root : -root));
    const double t = q != 0.0 ? gamma / q : 0.0;
    const double c = 1.0 / std::sqrt(1.0 + t * t);
    return {c, t * c};
}

/// The second moment Σ = XᵀX / rows [d][d] of x in double, accumulated in chunks of tokens with
/// the blocked GEMM (lower triangle by row blocks in parallel, then mirrored). O(rows·d²).
inline matrix<double> second_moment(matrix_view<const float> x) {
    const std::size_t d = x.cols;
    matrix<double> sigma(d, d);
    constexpr std::size_t chunk = 256, nb = 128;
    const std::size_t tc_max = std::min(chunk, x.rows);
    matrix<double> xs(tc_max, d), xt(d, tc_max);
    for (std::size_t t0 = 0; t0 < x.rows; t0 += chunk) {
        const std::size_t tc = std::min(chunk, x.rows - t0);
        for (std::size_t t = 0; t < tc; ++t)
            for (std::size_t c = 0; c < d; ++c) {
                xs(t, c) = x(t0 + t, c);
                xt(c, t) = -xs(t, c);
            }
        const std::size_t blocks = (d + nb - 1) / nb;
        parallel_for(blocks, [&](std::size_t b, std::size_t e) {
            for (std::size_t k = b; k < e; ++k) {
                const std::size_t i0 = balanced_index(k, blocks) * nb, rows = std::min(nb, d - i0);
                // Σ[i0:i0+rows, 0:i0+rows] −= (−Xᵀ)·X over the chunk.
                gemm_sub<double>({&sigma(i0, 0), rows, i0 + rows, d},
                                 matrix_view<const double>(&xt(i0, 0), rows, tc, xt.cols()),
                                 matrix_view<const double>(xs.data(), tc, i0 + rows, d));
            }
        });
    }
    const double inv = 1.0 / static_cast<double>(x.rows);
    for (std::size_t i = 0; i < d; ++i)
        for (std::size_t j = 0; j <= i; ++j) sigma(j, i) = sigma(i, j) = sigma(i, j) * inv;
    return sigma;
}

/// TORQ's inter stage on the symmetric Σ [d][d] (overwritten with GᵀΣG, G the product of the
/// returned rotations in order): at most d − 1 Givens rotations after which every diagonal entry
/// equals mu = tr Σ / d (to the float rounding of the stored c, s).
///
/// Pairing order (the paper leaves it open): each step pairs the index with the largest
/// diagonal entry above mu with the index with the smallest entry below mu, among indices not
/// yet fixed. Rule for which entry to fix: with a = Σ_ii > mu > e = Σ_jj, the rotation sets
/// e' = mu when a − mu ≥ mu − e (then a' = a + e − mu ≥ mu stays above) and a' = mu otherwise
/// (then e' < mu stays below), so the fixed index leaves the game, the other stays on its side
/// and at most d − 1 steps run. Largest-with-smallest drains the loudest channel into the
/// quietest ones first, so a single outlier channel is spread over about
/// (Σ_ii − mu)/(mu − Σ_jj) channels, one rotation each. Each step updates rows and columns
/// i, j of Σ (O(d)) and finds the next pair by a linear scan (O(d)): O(d²) in all.
/// The rotation applied is the one with c, s rounded to float (what apply uses), and Σ is
/// updated with exactly those values. Indices within 1e-12·mu of mu count as equal.
inline std::vector<givens_rotation> equalizing_rotations(matrix<double>& sigma) {
    const std::size_t d = sigma.rows();
    std::vector<givens_rotation> out;
    double trace = 0.0;
    for (std::size_t i = 0; i < d; ++i) trace += sigma(i, i);
    const double mu = trace / static_cast<double>(d);
    if (!(mu > 0.0)) return out;
    const double tol = 1e-12 * mu;
    std::vector<char> fixed(d, 0);
    for (;;) {
        std::size_t hi = d, lo = d;
        for (std::size_t k = 0; k < d; ++k) {
            if (fixed[k]) continue;
            const double v = sigma(k, k);
            if (v > mu + tol && (hi == d || v > sigma(hi, hi))) hi = k;
            if (v < mu - tol && (lo == d || v < sigma(lo, lo))) lo = k;
        }
        if (hi == d || lo == d) break;
        const double a = sigma(hi, hi), e = sigma(lo, lo), b = sigma(hi, lo);
        const bool fix_lo = a - mu >= mu - e;
        const givens_angle g = equalizing_givens(a, b, e, mu, fix_lo);
        const auto cf = static_cast<float>(g.c), sf = static_cast<float>(g.s);
        const double c = cf, s = sf;
        out.push_back({static_cast<std::uint32_t>(hi), static_cast<std::uint32_t>(lo), cf, sf});
        for (std::size_t k = 0; k < d; ++k) {
            if (k == hi || k == lo) continue;
            const double ski = sigma(k, hi), skj = sigma(k, lo);
            sigma(k, hi) = sigma(hi, k) = c * ski - s * skj;
            sigma(k, lo) = sigma(lo, k) = s * ski + c * skj;
        }
        sigma(hi, hi) = c * c * a - 2.0 * c * s * b + s * s * e;
        sigma(lo, lo) = s * s * a + 2.0 * c * s * b + c * c * e;
        sigma(hi, lo) = sigma(lo, hi) = c * s * (a - e) + (c * c - s * s) * b;
        fixed[fix_lo ? lo : hi] = 1;
        // Both land on mu when a + e = 2mu.
        if (std::fabs(sigma(hi, hi) - mu) <= tol) fixed[hi] = 1;
        if (std::fabs(sigma(lo, lo) - mu) <= tol) fixed[lo] = 1;
    }
    return out;
}

/// PeRQ-like channel permutation: channel j has ℓ1 mass m_j = mean_t |x(t, j)|; channels are
/// taken in decreasing mass (ties by index) and each goes to the block of 32 with the smallest
/// mass so far among those not yet full (ties: the lowest block) — the longest-processing-time
/// greedy for balanced partitioning with equal part sizes. Returns perm with new position
/// p = block·32 + (order of arrival in the block) holding old channel perm[p].
/// O(rows·d + d·d/32).
inline std::vector<std::uint32_t> l1_balancing_permutation(matrix_view<const float> x) {
    const std::size_t d = x.cols, blocks = d / mx_block_size;
    std::vector<double> mass(d, 0.0);
    for (std::size_t t = 0; t < x.rows; ++t)
        for (std::size_t j = 0; j < d; ++j) mass[j] += std::fabs(static_cast<double>(x(t, j)));
    std::vector<std::uint32_t> order(d);
    std::iota(order.begin(), order.end(), std::uint32_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](std::uint32_t p, std::uint32_t q) { return mass[p] > mass[q]; });
    std::vector<double> load(blocks, 0.0);
    std::vector<std::size_t> count(blocks, 0);
    std::vector<std::uint32_t> perm(d);
    for (std::uint32_t ch : order) {
        std::size_t best = blocks;
        for (std::size_t b = 0; b < blocks; ++b)
            if (count[b] < mx_block_size && (best == blocks || load[b] < load[best])) best = b;
        perm[best * mx_block_size + count[best]++] = ch;
        load[best] += mass[ch];
    }
    return perm;
}

/// out[0:32] = in[0:32]·R for a row-major 32×32 R (float). The one routine both the intra
/// stage's fit and mx_rotation::apply use, so that the fit scores exactly what apply computes.
inline void block_multiply(const float* r, const float* in, float* out) noexcept {
    std::array<float, mx_block_size> acc{};
    for (std::size_t i = 0; i < mx_block_size; ++i) {
        const float xi = in[i];
        const float* ri = r + i * mx_block_size;
        for (std::size_t j = 0; j < mx_block_size; ++j) acc[j] += xi * ri[j];
    }
    std::copy(acc.begin(), acc.end(), out);
}

/// Solves A·X = B in place for the n×n A and n×m B (row-major, double) by Gaussian
/// elimination with partial pivoting; B becomes X. A is destroyed. For the Cayley steps, where A
/// = I − K with K skew-symmetric is never singular.
inline void solve_in_place(std::vector<double>& a, std::vector<double>& b, std::size_t n,
                           std::size_t m) noexcept {
    for (std::size_t k = 0; k < n; ++k) {
        std::size_t p = k;
        for (std::size_t i = k + 1; i < n; ++i)
            if (std::fabs(a[i * n + k]) > std::fabs(a[p * n + k])) p = i;
        if (p != k) {
            for (std::size_t j = 0; j < n; ++j) std::swap(a[k * n + j], a[p * n + j]);
            for (std::size_t j = 0; j < m; ++j) std::swap(b[k * m + j], b[p * m + j]);
        }
        const double inv = 1.0 / a[k * n + k];
        for (std::size_t i = k + 1; i < n; ++i) {
            const double f = a[i * n + k] * inv;
            if (f == 0.0) continue;
            for (std::size_t j = k; j < n; ++j) a[i * n + j] -= f * a[k * n + j];
            for (std::size_t j = 0; j < m; ++j) b[i * m + j] -= f * b[k * m + j];
        }
    }
    for (std::size_t k = n; k-- > 0;) {
        for (std::size_t j = 0; j < m; ++j) {
            double v = b[k * m + j];
            for (std::size_t i = k + 1; i < n; ++i) v -= a[k * n + i] * b[i * m + j];
            b[k * m + j] = v / a[k * n + k];
        }
    }
}

/// TORQ's intra stage: fits one orthogonal 32×32 R (row-major, float) to the blocks
/// `sample` [n][32] so that the MXFP4 quantization of the rotated blocks y = x·R uses the E2M1
/// codes as evenly as possible (maximum entropy of code usage).
///
/// The paper gives no equations for this stage; the choices made here:
/// - Start: `start` (mx_rotation passes the randomized Hadamard-32 H₃₂·D/√32 of the seed).
/// - Scale step: each block's shared exponent e is that of quantize_mxfp4 on the rotated block
///   (the reference's floor(log2 max|y|) − 2); it is recomputed for every candidate R and held
///   fixed while differentiating (alternating scale / rotation steps).
/// - Surrogate (objective code_entropy): a soft code histogram. With u = |y|·2^−e and the 7
///   round-to-nearest boundaries b_k (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5),
///   P(code ≥ k) = σ((u − b_k)/τ_k) with τ_k = temperature × gap_k (gaps 0.5, 0.5, 0.5, 0.5, 1,
///   1, 2: the same smoothing relative to the local grid spacing everywhere), p_k = P(≥ k) −
///   P(≥ k+1), h = mean of p over all elements, H(h) = −Σ h_k log2 h_k over the 8 magnitude
///   codes (signs are used evenly by any R on sign-symmetric data, so they are left out). The
///   sigmoids are tabulated on u ∈ [0, 8] and interpolated linearly.
///   Objective relative_mse (an option, not TORQ's): −‖y − q‖²/‖y‖² with the codes and scales
///   of the current R held fixed, i.e. the straight-through gradient −2(y − q)/‖y‖².
/// - Step: Riemannian ascent on O(32) by the Cayley transform, R <- (I − K/2)⁻¹(I + K/2)·R with
///   K = α·A/‖A‖_F, A = G·Rᵀ − R·Gᵀ, G = xᵀ·∂f/∂y. A step is accepted when the objective (with
///   the scales of the new R) does not drop; then α ×= 1.25 (at most 0.5); otherwise it is
///   undone and α /= 2. Stop after `iterations` tries or when α < 1e-4.
/// - Selection: every accepted iterate, the start and the identity (no intra rotation) are
///   candidates, each scored by the true hard quantizer on the sample; `select` picks the
///   lowest relative MSE (default) or the highest code entropy. The result is therefore never
///   worse than the start, nor than no rotation, on the sample in the selected metric.
/// Entropy is a proxy for what a model feels (relative MSE), and the two do not track each
/// other: on synthetic Student-t (3 dof) blocks, with and without outlier channels, the entropy
/// steps raise the hard entropy of the fitting sample by 0.01–0.03 bits over the Hadamard-32
/// start (≈ 2.94 bits; 3 is the maximum) while moving its relative MSE either way, from about
/// 20% lower to 25% higher than the start's (higher in most cases), and on held-out data of the
/// same law the entropy gain mostly vanishes. Hence the default selects by relative MSE with
/// entropy as the optimized surrogate (the returned R is then often the start or a few steps
/// from it); the report keeps both metrics of the start, the MSE-best, the entropy-best and the
/// selected iterate.
struct intra_fit {
    std::array<float, mx_block_size * mx_block_size> r{};
    torq_fit_report report;
};

class intra_optimizer {
  public:
    static constexpr std::size_t B = mx_block_size;
    /// The sigmoids are tabulated on u ∈ [0, 8] (every scaled element lies in [0, 8): the block
    /// max is in [4, 8)) at `table_steps` intervals and interpolated linearly.
    static constexpr std::size_t table_steps = 4096;
    static constexpr double u_max = 8.0;

    intra_optimizer(std::vector<float> sample, std::size_t n, double temperature,
                    torq_objective objective)
        : objective_(objective),
          x_(std::move(sample)),
          n_(n),
          y_(n * B),
          inv_scale_(n),
          dy_(n * B),
          trial_dy_(n * B),
          p_((table_steps + 1) * 8),
          dp_((table_steps + 1) * 7) {
        for (std::size_t t = 0; t <= table_steps; ++t) {
            const double u = u_max * static_cast<double>(t) / static_cast<double>(table_steps);
            double prev = 1.0;  // P(code ≥ 0)
            for (std::size_t k = 0; k < 7; ++k) {
                const double tau = temperature * e2m1_gaps[k];
                const double sk = 1.0 / (1.0 + std::exp(-(u - e2m1_boundaries[k]) / tau));
                p_[t * 8 + k] = prev - sk;
                dp_[t * 7 + k] = sk * (1.0 - sk) / tau;  // ∂P(code ≥ k+1)/∂u
                prev = sk;
            }
            p_[t * 8 + 7] = prev;
        }
    }

    struct evaluation {
        double soft = 0.0;  // soft entropy, bits
        mxfp4_fit hard;
    };

    /// Scores R (float) and leaves ∂H_soft/∂y in the trial buffer. The hard quality is that of
    /// quantize_mxfp4 exactly: the block exponent comes from quantize_mxfp4_block on the block's
    /// max alone (the exponent depends on nothing else), and with u = |y|·2^−e exact in double,
    /// round-to-nearest-ties-away onto E2M1 picks magnitude k = #{boundaries b ≤ u} (saturating
    /// at 6), which is what the reference's private-exponent rounding computes.
    evaluation evaluate(const std::array<float, B * B>& r) {
        double error = 0.0, energy = 0.0;
        std::array<double, 8> hard{}, hist{};
        std::array<std::uint8_t, 16> codes{};
        bool nan_block = false;
        for (std::size_t b = 0; b < n_; ++b) {
            float* y = y_.data() + b * B;
            block_multiply(r.data(), x_.data() + b * B, y);
            float amax = 0.0f;
            for (std::size_t j = 0; j < B; ++j) amax = std::max(amax, std::fabs(y[j]));
            const std::uint8_t sc = quantize_mxfp4_block(std::span(&amax, 1), codes.data());
            if (sc == e8m0_nan) {
                nan_block = true;
                inv_scale_[b] = 0.0;
                continue;
            }
            const double step = std::ldexp(1.0, int(sc) - 127);
            inv_scale_[b] = std::ldexp(1.0, 127 - int(sc));
            for (std::size_t j = 0; j < B; ++j) {
                const double v = y[j], u = std::fabs(v) * inv_scale_[b];
                std::size_t k = 0;
                while (k < 7 && u >= e2m1_boundaries[k]) ++k;
                const double q = e2m1_magnitudes[k] * step;
                error += (std::fabs(v) - q) * (std::fabs(v) - q);
                energy += v * v;
                hard[k] += 1.0;
                const auto [t, f] = locate(u);
                const double* p0 = &p_[t * 8];
                for (std::size_t c = 0; c < 8; ++c) hist[c] += p0[c] + f * (p0[c + 8] - p0[c]);
            }
        }
        const double m = static_cast<double>(n_ * B);
        evaluation ev;
        double hard_entropy = 0.0;
        std::array<double, 8> w{};
        for (std::size_t k = 0; k < 8; ++k) {
            if (hard[k] > 0) hard_entropy -= hard[k] / m * std::log2(hard[k] / m);
            const double q = std::max(hist[k] / m, 1e-300);
            ev.soft -= q * std::log2(q);
            w[k] = -std::log2(std::max(q, 1e-12)) / m;  // ∂H/∂(count k), up to a constant
        }
        ev.hard = {nan_block ? NAN : energy > 0 ? error / energy : 0.0, hard_entropy};
        if (objective_ == torq_objective::relative_mse) {
            // Climb −‖y − q‖²/‖y‖² with the codes and scales of this R held fixed (‖y‖ does not
            // depend on R): ∂/∂y = −2(y − q)/‖y‖².
            ev.soft = -ev.hard.relative_mse;
            const double g2 = energy > 0 ? -2.0 / energy : 0.0;
            for (std::size_t b = 0; b < n_; ++b) {
                const double step = inv_scale_[b] > 0 ? 1.0 / inv_scale_[b] : 0.0;
                for (std::size_t j = 0; j < B; ++j) {
                    const float yv = y_[b * B + j];
                    const double a = std::fabs(static_cast<double>(yv)), u = a * inv_scale_[b];
                    std::size_t k = 0;
                    while (k < 7 && u >= e2m1_boundaries[k]) ++k;
                    const double g = g2 * (a - e2m1_magnitudes[k] * step);
                    trial_dy_[b * B + j] = static_cast<float>(yv < 0.0f ? -g : g);
                }
            }
            return ev;
        }
        // ∂H/∂u = Σ_k (w_{k+1} − w_k)·∂P(code ≥ k+1)/∂u, then ∂u/∂y = sign(y)·2^−e.
        std::array<double, 7> coef{};
        for (std::size_t k = 0; k < 7; ++k) coef[k] = w[k + 1] - w[k];
        for (std::size_t b = 0; b < n_; ++b)
            for (std::size_t j = 0; j < B; ++j) {
                const float yv = y_[b * B + j];
                const auto [t, f] = locate(std::fabs(static_cast<double>(yv)) * inv_scale_[b]);
                const double* d0 = &dp_[t * 7];
                double g = 0.0;
                for (std::size_t k = 0; k < 7; ++k)
                    g += coef[k] * (d0[k] + f * (d0[k + 7] - d0[k]));
                g *= inv_scale_[b];
                trial_dy_[b * B + j] = static_cast<float>(yv < 0.0f ? -g : g);
            }
        return ev;
    }

    /// Makes the last evaluate() the current point.
    void accept() { std::swap(dy_, trial_dy_); }

    /// G = xᵀ·∂H/∂y at the current point, [32][32] row-major.
    std::array<double, B * B> gradient() const {
        std::array<double, B * B> g{};
        for (std::size_t b = 0; b < n_; ++b) {
            const float* x = x_.data() + b * B;
            const float* dy = dy_.data() + b * B;
            for (std::size_t i = 0; i < B; ++i) {
                const double xi = x[i];
                for (std::size_t j = 0; j < B; ++j) g[i * B + j] += xi * dy[j];
            }
        }
        return g;
    }

  private:
    // Table interval and fraction of u (clamped to [0, 8]).
    static std::pair<std::size_t, double> locate(double u) noexcept {
        const double pos = std::min(u, u_max) * (static_cast<double>(table_steps) / u_max);
        const auto t = std::min(static_cast<std::size_t>(pos), table_steps - 1);
        return {t, pos - static_cast<double>(t)};
    }

    torq_objective objective_;
    std::vector<float> x_;
    std::size_t n_;
    std::vector<float> y_;
    std::vector<double> inv_scale_;
    std::vector<float> dy_, trial_dy_;
    std::vector<double> p_, dp_;
};

inline bool better(const mxfp4_fit& a, const mxfp4_fit& b, torq_selection sel) noexcept {
    return sel == torq_selection::relative_mse ? a.relative_mse < b.relative_mse
                                               : a.code_entropy > b.code_entropy;
}

inline intra_fit fit_intra(std::vector<float> sample, std::size_t n,
                           const std::array<float, mx_block_size * mx_block_size>& start,
                           const torq_options& opt) {
    constexpr std::size_t B = mx_block_size;
    intra_fit out;
    out.report.sample_blocks = n;
    intra_optimizer problem(std::move(sample), n, opt.temperature, opt.objective);
    std::array<double, B * B> r{};
    std::array<float, B* B> rf = start;
    for (std::size_t i = 0; i < B * B; ++i) r[i] = start[i];

    {
        std::array<float, B * B> eye{};
        for (std::size_t i = 0; i < B; ++i) eye[i * B + i] = 1.0f;
        out.report.identity = problem.evaluate(eye).hard;
    }
    auto cur = problem.evaluate(rf);
    problem.accept();
    out.report.start = out.report.best_mse = out.report.best_entropy = cur.hard;
    std::array<float, B* B> best_r = rf;
    mxfp4_fit best = cur.hard;

    double alpha = opt.step;
    std::vector<double> lhs(B * B), rhs(B * B);
    for (std::size_t it = 0; it < opt.iterations && alpha >= 1e-4; ++it) {
        const auto g = problem.gradient();
        // A = G·Rᵀ − R·Gᵀ (skew); ascent direction of the Cayley curve R(α) = cay(αA)·R.
        std::array<double, B * B> a{};
        double norm2 = 0.0;
        for (std::size_t i = 0; i < B; ++i)
            for (std::size_t j = 0; j < B; ++j) {
                double v = 0.0;
                for (std::size_t k = 0; k < B; ++k)
                    v += g[i * B + k] * r[j * B + k] - r[i * B + k] * g[j * B + k];
                a[i * B + j] = v;
                norm2 += v * v;
            }
        if (!(norm2 > 0.0)) break;
        const double h = 0.5 * alpha / std::sqrt(norm2);
        // (I − hA)·R' = (I + hA)·R.
        for (std::size_t i = 0; i < B; ++i)
            for (std::size_t j = 0; j < B; ++j) {
                lhs[i * B + j] = (i == j ? 1.0 : 0.0) - h * a[i * B + j];
                double v = r[i * B + j];
                for (std::size_t k = 0; k < B; ++k) v += h * a[i * B + k] * r[k * B + j];
                rhs[i * B + j] = v;
            }
        solve_in_place(lhs, rhs, B, B);
        std::array<float, B * B> trial_f{};
        for (std::size_t i = 0; i < B * B; ++i) trial_f[i] = static_cast<float>(rhs[i]);
        ++out.report.steps;
        const auto ev = problem.evaluate(trial_f);
        if (!(ev.soft >= cur.soft)) {
            alpha *= 0.5;
            continue;
        }
        ++out.report.accepted;
        problem.accept();
        cur = ev;
        std::copy(rhs.begin(), rhs.end(), r.begin());
        rf = trial_f;
        alpha = std::min(alpha * 1.25, 0.5);
        if (ev.hard.relative_mse < out.report.best_mse.relative_mse) out.report.best_mse = ev.hard;
        if (ev.hard.code_entropy > out.report.best_entropy.code_entropy)
            out.report.best_entropy = ev.hard;
        if (better(ev.hard, best, opt.select)) {
            best = ev.hard;
            best_r = rf;
        }
    }
    if (better(out.report.identity, best, opt.select)) {
        best = out.report.identity;
        best_r.fill(0.0f);
        for (std::size_t i = 0; i < B; ++i) best_r[i * B + i] = 1.0f;
        out.report.selected_identity = true;
    }
    out.r = best_r;
    out.report.selected = best;
    return out;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// mx_rotation

/// A fitted orthogonal transform x -> x·Q of width d (a multiple of 32) for the input of one
/// linear layer whose activations are quantized to MXFP4 along d.
///
/// Q is stored as its stages and applied in this order:
///   1. a channel permutation (perq): x'[p] = x[perm[p]];
///   2. Givens rotations (torq_inter, torq), in fitting order, 6 flops each;
///   3. a 32×32 block rotation on every block of 32: the randomized Hadamard-32 by FWHT
///      (block_hadamard, perq) or a dense fitted R (torq_intra, torq; 64 flops per element);
///   4. a full randomized Hadamard of order d (hadamard).
/// Conventions as qift::rotation: vectors are rows; for a layer y = W·x with W [out][d],
/// rotate_rows(W) makes W' = W·Q, and then (x·Q)·W'ᵀ = x·Wᵀ, so the rotation is folded into
/// the weights offline and applied to the activations online. Copies are independent; every
/// const member is thread-safe.
class mx_rotation {
  public:
    /// Fits `method` to the calibration activations x [tokens][d] (rows are tokens, any stride).
    /// none, hadamard and block_hadamard use only d and opt.seed; perq uses the channels' mean
    /// |x|; torq_inter the second moment Σ = XᵀX/tokens (computed in double: O(tokens·d²)
    /// flops and 8·d² bytes, then O(d²) for the rotations); torq_intra fits its 32×32 R on at
    /// most opt.max_blocks blocks of x (O(iterations · blocks · 32²)); torq runs the inter stage
    /// and fits the intra stage on x rotated by it (when the identity wins the intra selection,
    /// no block stage is stored). Deterministic: the same x, method and options give the same
    /// Q, bit for bit, for any parallel executor (on one build: the compiler's floating-point
    /// contraction may differ between target architectures).
    /// Throws qift::error when d is not a positive multiple of 32, x is empty, or x holds a
    /// non-finite value.
    static mx_rotation fit(mx_rotation_method method, matrix_view<const float> x,
                           const torq_options& opt = {}) {
        detail::require(!x.empty(), [&] {
            return "mx_rotation::fit: x is empty (" + std::to_string(x.rows) + "x" +
                   std::to_string(x.cols) + ")";
        });
        check_width("mx_rotation::fit", x.cols);
        detail::require_finite(x, "mx_rotation::fit");
        mx_rotation q(method, x.cols);
        switch (method) {
            case mx_rotation_method::none:
            case mx_rotation_method::hadamard:
            case mx_rotation_method::block_hadamard:
                return fixed(method, x.cols, opt);
            case mx_rotation_method::perq:
                q.perm_ = detail::l1_balancing_permutation(x);
                q.block_hadamard_ = rotation::hadamard(mx_block_size, opt.seed);
                return q;
            case mx_rotation_method::torq_inter:
            case mx_rotation_method::torq_intra:
            case mx_rotation_method::torq:
                break;
        }
        const bool inter = method != mx_rotation_method::torq_intra;
        const bool intra = method != mx_rotation_method::torq_inter;
        if (inter) {
            matrix<double> sigma = detail::second_moment(x);
            q.givens_ = detail::equalizing_rotations(sigma);
        }
        if (intra) q.fit_intra_stage(x, opt);
        return q;
    }

    /// The methods that need no data (none, hadamard, block_hadamard) for width d: the same Q
    /// fit() returns for them. Throws qift::error for any other method or a bad d.
    static mx_rotation fixed(mx_rotation_method method, std::size_t d,
                             const torq_options& opt = {}) {
        check_width("mx_rotation::fixed", d);
        mx_rotation q(method, d);
        switch (method) {
            case mx_rotation_method::none:
                return q;
            case mx_rotation_method::hadamard:
                q.full_ = rotation::for_size(d, opt.seed);
                return q;
            case mx_rotation_method::block_hadamard:
                q.block_hadamard_ = rotation::hadamard(mx_block_size, opt.seed);
                return q;
            default:
                detail::fail("mx_rotation::fixed: method " + std::string(to_string(method)) +
                             " is fitted to activations; use mx_rotation::fit");
        }
    }

    mx_rotation_method method() const noexcept { return method_; }
    /// d, the width of the vectors Q acts on.
    std::size_t size() const noexcept { return d_; }

    /// x <- x·Q for one row vector of size() values.
    void apply(std::span<float> x) const {
        detail::require(x.size() == d_, [&] {
            return "mx_rotation::apply: x.size() = " + std::to_string(x.size()) +
                   " but the rotation has size " + std::to_string(d_);
        });
        apply_unchecked(x.data());
    }

    /// M <- M·Q: apply on every row of m [rows][size()] (any stride); rows in parallel. Used for
    /// activations [tokens][d] and, to fold Q into a layer, for its weights W [out][d].
    void rotate_rows(matrix_view<float> m) const {
        detail::require(m.cols == d_, [&] {
            return "mx_rotation::rotate_rows: matrix has " + std::to_string(m.cols) +
                   " columns but the rotation has size " + std::to_string(d_);
        });
        const std::size_t min_rows = std::max<std::size_t>(2, (std::size_t{1} << 16) / (d_ + 1));
        parallel_for(
            m.rows,
            [&](std::size_t begin, std::size_t end) {
                for (std::size_t r = begin; r < end; ++r) apply_unchecked(m.row(r).data());
            },
            min_rows);
    }

    /// The explicit d×d matrix Q = I·Q (O(d²) memory; for tests and inspection).
    matrix<float> to_matrix() const {
        matrix<float> q(d_, d_);
        for (std::size_t i = 0; i < d_; ++i) q(i, i) = 1.0f;
        rotate_rows(q);
        return q;
    }

    /// Stage 1: the permutation (empty when none): new position p holds old channel perm[p].
    std::span<const std::uint32_t> permutation() const noexcept { return perm_; }
    /// Stage 2: the Givens rotations of the inter stage, in the order they are applied.
    std::span<const givens_rotation> givens() const noexcept { return givens_; }
    /// Number of Givens rotations (≤ d − 1; 0 without an inter stage).
    std::size_t givens_count() const noexcept { return givens_.size(); }
    /// Stage 3: the 32×32 block matrix R applied to every block (row-major), explicit even when
    /// it is applied as a Hadamard transform; std::nullopt when there is no block stage.
    std::optional<std::array<float, mx_block_size * mx_block_size>> block_matrix() const {
        if (block_hadamard_) {
            std::array<float, mx_block_size * mx_block_size> r{};
            for (std::size_t i = 0; i < mx_block_size; ++i) {
                r[i * mx_block_size + i] = 1.0f;
                block_hadamard_->apply(std::span(r.data() + i * mx_block_size, mx_block_size));
            }
            return r;
        }
        if (!block_.empty()) {
            std::array<float, mx_block_size * mx_block_size> r{};
            std::copy(block_.begin(), block_.end(), r.begin());
            return r;
        }
        return std::nullopt;
    }
    /// What fitting the intra stage saw (all zero without one).
    const torq_fit_report& report() const noexcept { return report_; }

    /// Floating-point operations apply() spends per row (token), counting a multiply and an add
    /// as two: 6 per Givens rotation; 64·d for the dense block R; for a Hadamard of order
    /// n = K·2^m applied to the whole row or to each block (n = 32), m additions, 2K per
    /// element for the K×K Paley mixing when K > 1, and 2 multiplications (1/√n and the random
    /// sign) per element; 2d² for a Haar-random fallback. The permutation is counted as 0
    /// (d moves).
    double online_flops_per_token() const {
        const auto d = static_cast<double>(d_);
        double f = 6.0 * static_cast<double>(givens_.size());
        if (!block_.empty()) f += 2.0 * static_cast<double>(mx_block_size) * d;
        if (block_hadamard_) f += (std::log2(static_cast<double>(mx_block_size)) + 2.0) * d;
        if (full_) {
            if (full_->type() == rotation::kind::random_orthogonal) {
                f += 2.0 * d * d;
            } else {
                const auto shape = find_hadamard_factorization(d_);
                double per = 2.0 + std::log2(static_cast<double>(shape->power_of_two));
                for (std::size_t k : shape->blocks) per += 2.0 * static_cast<double>(k);
                f += per * d;
            }
        }
        return f;
    }

  private:
    mx_rotation(mx_rotation_method m, std::size_t d) : method_(m), d_(d) {}

    static void check_width(const char* where, std::size_t d) {
        detail::require(d > 0 && d % mx_block_size == 0, [&] {
            return std::string(where) + ": width d = " + std::to_string(d) +
                   " is not a positive multiple of the MX block size 32";
        });
    }

    void fit_intra_stage(matrix_view<const float> x, const torq_options& opt) {
        constexpr std::size_t B = mx_block_size;
        const std::size_t per_row = d_ / B, total = x.rows * per_row;
        // Deterministic subsample: a partial Fisher–Yates shuffle of the block indices driven by
        // splitmix64(seed), then sorted (rows are read in order).
        std::vector<std::size_t> pick;
        if (total <= opt.max_blocks || opt.max_blocks == 0) {
            pick.resize(total);
            std::iota(pick.begin(), pick.end(), std::size_t{0});
        } else {
            std::vector<std::size_t> all(total);
            std::iota(all.begin(), all.end(), std::size_t{0});
            std::uint64_t state = opt.seed ^ 0x7A3C5E1F2B4D6981ull;
            for (std::size_t k = 0; k < opt.max_blocks; ++k) {
                const std::size_t j =
                    k + static_cast<std::size_t>(detail::splitmix64(state) % (total - k));
                std::swap(all[k], all[j]);
            }
            pick.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(opt.max_blocks));
            std::sort(pick.begin(), pick.end());
        }
        std::vector<float> sample(pick.size() * B);
        std::vector<float> row(d_);
        std::size_t cached_row = x.rows;
        for (std::size_t k = 0; k < pick.size(); ++k) {
            const std::size_t t = pick[k] / per_row, b = pick[k] % per_row;
            if (t != cached_row) {
                std::copy_n(&x(t, 0), d_, row.data());
                apply_givens(row.data());  // the stages before the block stage
                cached_row = t;
            }
            std::copy_n(row.data() + b * B, B, sample.data() + k * B);
        }
        std::array<float, B * B> start{};
        const rotation h32 = rotation::hadamard(B, opt.seed);
        for (std::size_t i = 0; i < B; ++i) {
            start[i * B + i] = 1.0f;
            h32.apply(std::span(start.data() + i * B, B));
        }
        const detail::intra_fit f = detail::fit_intra(std::move(sample), pick.size(), start, opt);
        // An identity R (no intra rotation beat leaving the blocks alone) is not stored.
        if (!f.report.selected_identity) block_.assign(f.r.begin(), f.r.end());
        report_ = f.report;
    }

    void apply_givens(float* x) const noexcept {
        for (const givens_rotation& g : givens_) {
            const float xi = x[g.i], xj = x[g.j];
            x[g.i] = g.c * xi - g.s * xj;
            x[g.j] = g.s * xi + g.c * xj;
        }
    }

    void apply_unchecked(float* x) const {
        constexpr std::size_t B = mx_block_size;
        if (!perm_.empty()) {
            thread_local std::vector<float> tmp;
            tmp.assign(x, x + d_);
            for (std::size_t p = 0; p < d_; ++p) x[p] = tmp[perm_[p]];
        }
        apply_givens(x);
        if (block_hadamard_) {
            for (std::size_t b = 0; b < d_; b += B) block_hadamard_->apply(std::span(x + b, B));
        } else if (!block_.empty()) {
            for (std::size_t b = 0; b < d_; b += B)
                detail::block_multiply(block_.data(), x + b, x + b);
        }
        if (full_) full_->apply(std::span(x, d_));
    }

    mx_rotation_method method_;
    std::size_t d_;
    std::vector<std::uint32_t> perm_;
    std::vector<givens_rotation> givens_;
    std::optional<rotation> block_hadamard_;
    aligned_vector<float> block_;  // 32×32 row-major when the block stage is a fitted R
    std::optional<rotation> full_;
    torq_fit_report report_;
};

}  // namespace qift
