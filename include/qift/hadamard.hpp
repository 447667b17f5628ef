// SPDX-License-Identifier: MIT
// Fast Walsh-Hadamard transform, Hadamard transforms of every size n = K·2^m the Sylvester and
// Paley constructions reach, and the rotation object a rotated (QuaRot-style) model applies
// online to activations and folds offline into weights. See QuaRot (arXiv 2404.00456).
#pragma once

#include "core.hpp"
#include "detail/hadamard_construct.hpp"
#include "detail/hadamard_kernels.hpp"

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <numbers>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace qift {

/// Scaling of a Hadamard transform: `orthonormal` multiplies by 1/√n (the transform is then
/// orthogonal and norm preserving), `none` leaves the ±1 matrix unscaled.
enum class hadamard_norm { orthonormal, none };

// ---------------------------------------------------------------------------------------
// Sizes and matrices

/// How a Hadamard matrix of order n is built: H_n = H_{blocks[0]} ⊗ ... ⊗ H_{blocks[t-1]} ⊗
/// H_{power_of_two}, every block a Paley I (order q+1, q ≡ 3 mod 4 a prime power) or Paley II
/// (order 2(q+1), q ≡ 1 mod 4 a prime power) matrix of order at most 2048, the last factor a
/// Sylvester matrix. Among all such factorizations the one with the smallest Σ blocks (the
/// cheapest transform) is chosen, e.g. 11008 = 344·32, 14336 = 28·512, 18944 = 148·128.
struct hadamard_factorization {
    std::size_t power_of_two = 1;
    std::vector<std::size_t> blocks;  ///< ascending; empty when n is a power of two
};

/// The factorization used for order n, or std::nullopt when no construction reaches n.
/// Cost: trial division over the odd divisors of n, microseconds.
inline std::optional<hadamard_factorization> find_hadamard_factorization(std::size_t n) {
    auto f = detail::factor_hadamard_size(n);
    if (!f) return std::nullopt;
    return hadamard_factorization{f->power_of_two, std::move(f->blocks)};
}

/// True when hadamard_transform supports length n (see hadamard_factorization); every power of
/// two is supported, and n = 0 is not.
inline bool is_hadamard_size(std::size_t n) {
    return detail::factor_hadamard_size(n).has_value();
}

/// The supported sizes next to n: `below` is the largest supported size < n (0 if none),
/// `above` the smallest supported size > n.
struct hadamard_size_neighbours {
    std::size_t below = 0;
    std::size_t above = 0;
};

/// Nearest supported sizes strictly below and above n. Powers of two bound the search.
inline hadamard_size_neighbours supported_hadamard_sizes_near(std::size_t n) {
    hadamard_size_neighbours r;
    for (std::size_t m = n; m-- > 1;)
        if (is_hadamard_size(m)) {
            r.below = m;
            break;
        }
    for (std::size_t m = n + 1;; ++m)
        if (is_hadamard_size(m)) {
            r.above = m;
            break;
        }
    return r;
}

namespace detail {

[[noreturn]] inline void fail_hadamard_size(const char* where, std::size_t n) {
    std::string msg = std::string(where) +
                      ": no Hadamard construction for n = " + std::to_string(n) +
                      " (Sylvester, Paley I/II and their products reach only ";
    msg += "n = K·2^m with K a product of Paley orders)";
    if (n > 0) {
        const auto near = supported_hadamard_sizes_near(n);
        msg += "; nearest supported sizes: ";
        if (near.below) msg += std::to_string(near.below) + " and ";
        msg += std::to_string(near.above);
    }
    msg +=
        "; for this size use qift::rotation::random_orthogonal(n, seed), or "
        "qift::rotation::for_size(n, seed), which falls back to it";
    fail(msg);
}

inline hadamard_blocks require_hadamard_size(const char* where, std::size_t n) {
    auto f = factor_hadamard_size(n);
    if (!f) fail_hadamard_size(where, n);
    return *f;
}

/// The precomputed pieces of the order-n transform: each block's ±1 matrix and its transpose
/// as floats in the layout of pack_mix_coefficients, ready for hadamard_mix_kernel. Immutable and
/// shared between threads.
struct hadamard_plan {
    std::size_t n = 0;
    hadamard_blocks shape;
    std::vector<aligned_vector<float>> forward, transposed;
};

inline std::shared_ptr<const hadamard_plan> make_hadamard_plan(std::size_t n, const char* where) {
    auto plan = std::make_shared<hadamard_plan>();
    plan->n = n;
    plan->shape = require_hadamard_size(where, n);
    for (std::size_t k : plan->shape.blocks) {
        const std::vector<std::int8_t> h = paley_matrix(k);
        std::vector<float> f(k * k), t(k * k);
        for (std::size_t i = 0; i < k; ++i)
            for (std::size_t j = 0; j < k; ++j) {
                f[i * k + j] = h[i * k + j];
                t[j * k + i] = h[i * k + j];
            }
        const std::size_t packed_size = (k + 3) / 4 * 4 * k;
        plan->forward.emplace_back(packed_size);
        plan->transposed.emplace_back(packed_size);
        pack_mix_coefficients(f.data(), k, plan->forward.back().data());
        pack_mix_coefficients(t.data(), k, plan->transposed.back().data());
    }
    return plan;
}

/// The cached plan of order n (built on first use, thread-safe); throws qift::error for an
/// unsupported n, the message starting with `where`.
inline std::shared_ptr<const hadamard_plan> hadamard_plan_for(
    std::size_t n, const char* where = "qift::hadamard_transform") {
    static std::mutex mutex;
    static std::unordered_map<std::size_t, std::shared_ptr<const hadamard_plan>> cache;
    std::lock_guard lock(mutex);
    if (auto it = cache.find(n); it != cache.end()) return it->second;
    auto plan = make_hadamard_plan(n, where);
    cache.emplace(n, plan);
    return plan;
}

inline float hadamard_scale(std::size_t n, hadamard_norm norm) noexcept {
    return norm == hadamard_norm::orthonormal
               ? static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)))
               : 1.0f;
}

/// x <- scale · (H_{blocks} ⊗ H_L) x, or with every block transposed. x has plan.n elements.
template <class Arch>
void apply_hadamard_plan(const hadamard_plan& plan, float* x, bool transpose, float scale) {
    const std::size_t n = plan.n, len = plan.shape.power_of_two;
    for (std::size_t r = 0; r < n; r += len) fwht_kernel{}(Arch{}, x + r, len, scale);
    if (plan.shape.blocks.empty()) return;
    thread_local aligned_vector<float> scratch;
    if (scratch.size() < n) scratch.resize(n);
    // Block t acts on axis t of the [b_0][b_1]..[b_{t-1}][L] view: outer × k × inner.
    std::size_t outer = 1;
    for (std::size_t t = 0; t < plan.shape.blocks.size(); ++t) {
        const std::size_t k = plan.shape.blocks[t];
        const std::size_t inner = n / outer / k;
        const float* h = (transpose ? plan.transposed[t] : plan.forward[t]).data();
        for (std::size_t o = 0; o < outer; ++o) {
            float* panel = x + o * k * inner;
            hadamard_mix_kernel{}(Arch{}, h, k, panel, scratch.data(), inner);
            std::copy_n(scratch.data(), k * inner, panel);
        }
        outer *= k;
    }
}

inline void require_power_of_two(const char* where, std::size_t n) {
    require(n != 0 && (n & (n - 1)) == 0, [&] {
        return std::string(where) + ": length n = " + std::to_string(n) +
               " is not a power of two (use qift::hadamard_transform for n = K·2^m)";
    });
}

// Rows in parallel when there is enough work to pay for the threads.
template <class Fn>
void for_each_row(matrix_view<float> m, Fn&& fn) {
    const std::size_t min_rows = std::max<std::size_t>(2, (std::size_t{1} << 16) / (m.cols + 1));
    parallel_for(
        m.rows,
        [&](std::size_t begin, std::size_t end) {
            for (std::size_t r = begin; r < end; ++r) fn(m.row(r));
        },
        min_rows);
}

}  // namespace detail

/// The explicit ±1 Hadamard matrix of order n, unnormalized: H_n = H_{blocks} ⊗ H_{2^m} (see
/// hadamard_factorization), so H_n·H_nᵀ = n·I and hadamard_transform(x) = H_n x / √n. n×n
/// floats, O(n²); meant for tests and small n. Throws qift::error for an unsupported n or
/// n > 32768.
inline matrix<float> hadamard_matrix(std::size_t n) {
    const auto shape = detail::require_hadamard_size("qift::hadamard_matrix", n);
    detail::require(n <= 32768, [&] {
        return "qift::hadamard_matrix: n = " + std::to_string(n) + " exceeds 32768 (n² floats)";
    });
    std::vector<std::int8_t> m{1};
    std::size_t size = 1;
    auto kron = [&](const std::vector<std::int8_t>& b, std::size_t k) {
        const std::size_t s = size * k;
        std::vector<std::int8_t> out(s * s);
        for (std::size_t i = 0; i < size; ++i)
            for (std::size_t j = 0; j < size; ++j)
                for (std::size_t a = 0; a < k; ++a)
                    for (std::size_t c = 0; c < k; ++c)
                        out[(i * k + a) * s + j * k + c] =
                            static_cast<std::int8_t>(m[i * size + j] * b[a * k + c]);
        m = std::move(out);
        size = s;
    };
    for (std::size_t k : shape.blocks) kron(detail::paley_matrix(k), k);
    matrix<float> h(n, n);
    const std::size_t len = shape.power_of_two;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j) {
            const bool odd = std::popcount((i % len) & (j % len)) & 1;
            h(i, j) = static_cast<float>(m[(i / len) * size + j / len] * (odd ? -1 : 1));
        }
    return h;
}

// ---------------------------------------------------------------------------------------
// Transforms

/// In-place Walsh-Hadamard transform x <- H x · s of a power-of-two length n, H the Sylvester
/// matrix H[i][j] = (-1)^popcount(i & j) (symmetric, its own inverse up to n), s = 1/√n for
/// `orthonormal` and 1 for `none`. O(n log n), vectorized with `Arch` (AVX-512 or AVX2 when
/// compiled for them): in-register butterflies for the first stages, then fused radix-16/8
/// passes over L1-sized blocks. Throws qift::error when n is not a power of two.
template <class Arch = xsimd::default_arch>
void fwht(std::span<float> x, hadamard_norm norm = hadamard_norm::orthonormal) {
    detail::require_power_of_two("qift::fwht", x.size());
    detail::fwht_kernel{}(Arch{}, x.data(), x.size(), detail::hadamard_scale(x.size(), norm));
}

/// fwht on every row of m (rows in parallel through qift::parallel_for).
template <class Arch = xsimd::default_arch>
void fwht_rows(matrix_view<float> m, hadamard_norm norm = hadamard_norm::orthonormal) {
    detail::require_power_of_two("qift::fwht_rows", m.cols);
    const float s = detail::hadamard_scale(m.cols, norm);
    detail::for_each_row(
        m, [&](std::span<float> r) { detail::fwht_kernel{}(Arch{}, r.data(), r.size(), s); });
}

/// In-place Hadamard transform x <- H_n x · s for any supported n = K·2^m (H_n as returned by
/// hadamard_matrix, s as in fwht): x viewed as K×2^m, an FWHT of each row, then the ±1 block
/// matrices across rows (K multiply-adds per element, e.g. 344 for n = 11008). The plan of
/// each n is built once and cached. Throws qift::error for an unsupported n, naming the
/// nearest supported sizes.
template <class Arch = xsimd::default_arch>
void hadamard_transform(std::span<float> x, hadamard_norm norm = hadamard_norm::orthonormal) {
    // Powers of two skip the (locked) plan cache: the transform is one FWHT.
    if (x.size() != 0 && (x.size() & (x.size() - 1)) == 0) {
        detail::fwht_kernel{}(Arch{}, x.data(), x.size(), detail::hadamard_scale(x.size(), norm));
        return;
    }
    const auto plan = detail::hadamard_plan_for(x.size());
    detail::apply_hadamard_plan<Arch>(*plan, x.data(), false,
                                      detail::hadamard_scale(x.size(), norm));
}

/// In-place x <- H_nᵀ x · s; with `orthonormal` this is the inverse of hadamard_transform.
template <class Arch = xsimd::default_arch>
void hadamard_transform_transpose(std::span<float> x,
                                  hadamard_norm norm = hadamard_norm::orthonormal) {
    // Powers of two skip the (locked) plan cache: the transform is one FWHT.
    if (x.size() != 0 && (x.size() & (x.size() - 1)) == 0) {
        detail::fwht_kernel{}(Arch{}, x.data(), x.size(), detail::hadamard_scale(x.size(), norm));
        return;
    }
    const auto plan = detail::hadamard_plan_for(x.size(), "qift::hadamard_transform_transpose");
    detail::apply_hadamard_plan<Arch>(*plan, x.data(), true,
                                      detail::hadamard_scale(x.size(), norm));
}

/// hadamard_transform on every row of m (rows in parallel through qift::parallel_for).
template <class Arch = xsimd::default_arch>
void hadamard_transform_rows(matrix_view<float> m,
                             hadamard_norm norm = hadamard_norm::orthonormal) {
    const auto plan = detail::hadamard_plan_for(m.cols, "qift::hadamard_transform_rows");
    const float s = detail::hadamard_scale(m.cols, norm);
    detail::for_each_row(m, [&](std::span<float> r) {
        detail::apply_hadamard_plan<Arch>(*plan, r.data(), false, s);
    });
}

// ---------------------------------------------------------------------------------------
// Rotations

namespace detail {

inline std::uint64_t splitmix64(std::uint64_t& state) noexcept {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/// Haar-random n×n orthogonal matrix from `seed`: Householder QR of a standard Gaussian matrix
/// (splitmix64 + Box-Muller, identical on every platform) in double, Q·diag(sign R_ii).
/// O(n³) time, O(n²) memory.
inline matrix<float> random_orthogonal_matrix(std::size_t n, std::uint64_t seed) {
    std::uint64_t state = seed;
    auto uniform = [&] {  // (0, 1]
        return (static_cast<double>(splitmix64(state) >> 11) + 1.0) * 0x1.0p-53;
    };
    // Column-major A: a[j * n + i] = A(i, j).
    std::vector<double> a(n * n), v(n), q(n * n, 0.0);
    for (std::size_t i = 0; i < n * n; i += 2) {
        const double r = std::sqrt(-2.0 * std::log(uniform()));
        const double t = 2.0 * std::numbers::pi * uniform();
        a[i] = r * std::cos(t);
        if (i + 1 < n * n) a[i + 1] = r * std::sin(t);
    }
    std::vector<std::vector<double>> reflectors(n);
    std::vector<double> diag_sign(n, 1.0);
    for (std::size_t j = 0; j < n; ++j) {
        double* col = &a[j * n];
        double norm2 = 0;
        for (std::size_t i = j; i < n; ++i) norm2 += col[i] * col[i];
        const double alpha = col[j] >= 0 ? -std::sqrt(norm2) : std::sqrt(norm2);
        std::vector<double> u(col + j, col + n);
        u[0] -= alpha;
        double unorm2 = 0;
        for (double x : u) unorm2 += x * x;
        if (unorm2 > 0)
            for (double& x : u) x /= std::sqrt(unorm2);
        // A[j:, j:] -= 2 u (uᵀ A[j:, j:])
        for (std::size_t c = j; c < n; ++c) {
            double* ac = &a[c * n];
            double d = 0;
            for (std::size_t i = j; i < n; ++i) d += u[i - j] * ac[i];
            for (std::size_t i = j; i < n; ++i) ac[i] -= 2 * d * u[i - j];
        }
        diag_sign[j] = a[j * n + j] < 0 ? -1.0 : 1.0;
        reflectors[j] = std::move(u);
    }
    // Q = H_0 H_1 ... H_{n-1}, applied to the identity from the right end; column-major.
    for (std::size_t i = 0; i < n; ++i) q[i * n + i] = 1.0;
    for (std::size_t j = n; j-- > 0;) {
        const std::vector<double>& u = reflectors[j];
        for (std::size_t c = 0; c < n; ++c) {
            double* qc = &q[c * n];
            double d = 0;
            for (std::size_t i = j; i < n; ++i) d += u[i - j] * qc[i];
            for (std::size_t i = j; i < n; ++i) qc[i] -= 2 * d * u[i - j];
        }
    }
    matrix<float> out(n, n);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j)
            out(i, j) = static_cast<float>(q[j * n + i] * diag_sign[j]);
    return out;
}

}  // namespace detail

/// An n×n orthogonal matrix Q applied without forming it where possible, as a rotated model
/// needs (QuaRot, arXiv 2404.00456): either a randomized Hadamard matrix Q = H_n·diag(s)/√n
/// with seeded signs s ∈ {±1}^n (O(n log n) or O(K·n) per vector), or, for sizes no Hadamard
/// construction reaches, a seeded Haar-random orthogonal matrix (dense, O(n²) per vector).
///
/// Conventions: vectors are rows. apply(x) is x <- x·Q (= Qᵀx for a column x); for a linear
/// layer y = W·x with W [out][in]:
/// - rotating its input x' = x·Q (apply) is undone by fold_into_input(W): W' = W·Q, so
///   W'·x' = W·x;
/// - rotating its output y' = y·Q is produced by fold_into_output(W): W' = Qᵀ·W, so
///   W'·x = apply(W·x); a bias b must then be rotated with apply(b).
/// Copies share the immutable tables; every member is const and thread-safe.
class rotation {
  public:
    enum class kind { hadamard, random_orthogonal };

    /// Randomized Hadamard rotation of order n (is_hadamard_size(n) must hold): Q = H_n·D/√n,
    /// D = diag(s), s_i = ±1 from a splitmix64 stream seeded with `seed`; seed 0 means no sign
    /// flips (D = I). Throws qift::error naming the nearest supported sizes otherwise.
    static rotation hadamard(std::size_t n, std::uint64_t seed = 0) {
        rotation r(kind::hadamard, n, seed);
        r.plan_ = detail::hadamard_plan_for(n, "qift::rotation::hadamard");
        r.signs_.assign(n, 1.0f);
        if (seed != 0) {
            std::uint64_t state = seed;
            for (std::size_t i = 0; i < n; i += 64) {
                const std::uint64_t bits = detail::splitmix64(state);
                for (std::size_t b = 0; b < 64 && i + b < n; ++b)
                    r.signs_[i + b] = (bits >> b) & 1 ? -1.0f : 1.0f;
            }
        }
        return r;
    }

    /// The fallback for any n >= 1: a Haar-random orthogonal Q from `seed` (see
    /// detail::random_orthogonal_matrix; same seed, same matrix on every platform). Building
    /// costs O(n³) and stores n² floats; applying costs O(n²) per vector.
    static rotation random_orthogonal(std::size_t n, std::uint64_t seed) {
        detail::require(n >= 1, [] {
            return std::string("qift::rotation::random_orthogonal: n = 0, need n >= 1");
        });
        rotation r(kind::random_orthogonal, n, seed);
        r.dense_ = std::make_shared<const matrix<float>>(detail::random_orthogonal_matrix(n, seed));
        return r;
    }

    /// hadamard(n, seed) when is_hadamard_size(n), random_orthogonal(n, seed) otherwise.
    static rotation for_size(std::size_t n, std::uint64_t seed) {
        return is_hadamard_size(n) ? hadamard(n, seed) : random_orthogonal(n, seed);
    }

    std::size_t size() const noexcept { return n_; }
    kind type() const noexcept { return kind_; }
    std::uint64_t seed() const noexcept { return seed_; }

    /// x <- x·Q (a row vector; = Qᵀx for a column). x.size() == size().
    void apply(std::span<float> x) const {
        check_vector("apply", x.size());
        apply_unchecked(x.data(), false);
    }

    /// x <- x·Qᵀ (= Qx for a column): the inverse of apply.
    void apply_transpose(std::span<float> x) const {
        check_vector("apply_transpose", x.size());
        apply_unchecked(x.data(), true);
    }

    /// M <- M·Q: apply on every row; m.cols == size(). Rows in parallel.
    void rotate_rows(matrix_view<float> m) const { rows(m, false, "rotate_rows"); }
    /// M <- M·Qᵀ: apply_transpose on every row; m.cols == size().
    void rotate_rows_transpose(matrix_view<float> m) const {
        rows(m, true, "rotate_rows_transpose");
    }
    /// M <- Qᵀ·M: every column c <- Qᵀc; m.rows == size(). Column blocks in parallel.
    void rotate_columns(matrix_view<float> m) const { columns(m, false, "rotate_columns"); }
    /// M <- Q·M: the inverse of rotate_columns; m.rows == size().
    void rotate_columns_transpose(matrix_view<float> m) const {
        columns(m, true, "rotate_columns_transpose");
    }

    /// W <- W·Q for W [out][in] with in == size(): the layer then takes inputs rotated by apply.
    void fold_into_input(matrix_view<float> w) const { rows(w, false, "fold_into_input"); }
    /// W <- Qᵀ·W for W [out][in] with out == size(): the layer then emits outputs rotated as
    /// by apply (rotate its bias with apply too).
    void fold_into_output(matrix_view<float> w) const { columns(w, false, "fold_into_output"); }

    /// The explicit n×n matrix Q (O(n²) memory; for tests and inspection).
    matrix<float> to_matrix() const {
        matrix<float> q(n_, n_);
        for (std::size_t i = 0; i < n_; ++i) q(i, i) = 1.0f;
        rotate_rows(q);  // I·Q
        return q;
    }

  private:
    rotation(kind k, std::size_t n, std::uint64_t seed) : kind_(k), n_(n), seed_(seed) {}

    void check_vector(const char* what, std::size_t len) const {
        detail::require(len == n_, [&] {
            return std::string("qift::rotation::") + what + ": x.size() = " + std::to_string(len) +
                   " but the rotation has size " + std::to_string(n_);
        });
    }

    // x <- x·Q or x·Qᵀ.
    void apply_unchecked(float* x, bool transpose) const {
        if (kind_ == kind::hadamard) {
            const float s = detail::hadamard_scale(n_, hadamard_norm::orthonormal);
            // x·Q = (Qᵀxᵀ)ᵀ = D·Hᵀx/√n; x·Qᵀ = H·D·x/√n.
            if (transpose) {
                for (std::size_t i = 0; i < n_; ++i) x[i] *= signs_[i];
                detail::apply_hadamard_plan<xsimd::default_arch>(*plan_, x, false, s);
            } else {
                detail::apply_hadamard_plan<xsimd::default_arch>(*plan_, x, true, s);
                for (std::size_t i = 0; i < n_; ++i) x[i] *= signs_[i];
            }
            return;
        }
        const matrix<float>& q = *dense_;
        thread_local std::vector<float> y;
        y.assign(n_, 0.0f);
        if (!transpose) {
            // y[j] = Σ_i x[i] Q[i][j]: rows of Q accumulated, contiguous inner loop.
            for (std::size_t i = 0; i < n_; ++i) {
                const float xi = x[i];
                const float* qi = q.data() + i * n_;
                for (std::size_t j = 0; j < n_; ++j) y[j] += xi * qi[j];
            }
        } else {
            for (std::size_t j = 0; j < n_; ++j) {
                const float* qj = q.data() + j * n_;
                float acc = 0.0f;
                for (std::size_t i = 0; i < n_; ++i) acc += x[i] * qj[i];
                y[j] = acc;
            }
        }
        std::copy_n(y.data(), n_, x);
    }

    void rows(matrix_view<float> m, bool transpose, const char* what) const {
        detail::require(m.cols == n_, [&] {
            return std::string("qift::rotation::") + what + ": matrix has " +
                   std::to_string(m.cols) + " columns but the rotation has size " +
                   std::to_string(n_);
        });
        detail::for_each_row(m, [&](std::span<float> r) { apply_unchecked(r.data(), transpose); });
    }

    // Columns are gathered 16 at a time into contiguous rows, rotated, and scattered back.
    void columns(matrix_view<float> m, bool transpose, const char* what) const {
        detail::require(m.rows == n_, [&] {
            return std::string("qift::rotation::") + what + ": matrix has " +
                   std::to_string(m.rows) + " rows but the rotation has size " + std::to_string(n_);
        });
        constexpr std::size_t width = 16;
        const std::size_t blocks = (m.cols + width - 1) / width;
        parallel_for(
            blocks,
            [&](std::size_t begin, std::size_t end) {
                aligned_vector<float> buf(width * n_);
                for (std::size_t b = begin; b < end; ++b) {
                    const std::size_t c0 = b * width, w = std::min(width, m.cols - c0);
                    for (std::size_t i = 0; i < n_; ++i)
                        for (std::size_t t = 0; t < w; ++t) buf[t * n_ + i] = m(i, c0 + t);
                    for (std::size_t t = 0; t < w; ++t)
                        apply_unchecked(buf.data() + t * n_, transpose);
                    for (std::size_t i = 0; i < n_; ++i)
                        for (std::size_t t = 0; t < w; ++t) m(i, c0 + t) = buf[t * n_ + i];
                }
            },
            m.size() >= (std::size_t{1} << 16) ? 2 : blocks + 1);
    }

    kind kind_;
    std::size_t n_;
    std::uint64_t seed_;
    std::shared_ptr<const detail::hadamard_plan> plan_;
    aligned_vector<float> signs_;
    std::shared_ptr<const matrix<float>> dense_;
};

}  // namespace qift
