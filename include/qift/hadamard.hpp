// SPDX-License-Identifier: MIT
// Fast Walsh-Hadamard transform, Hadamard transforms of every size n = K·2^m the Sylvester and
// Paley constructions reach, and the rotation object a rotated (QuaRot-style) model applies
// online to activations and folds offline into weights. See QuaRot (arXiv 2404.00456).
#pragma once

#include "core.hpp"
#include "detail/hadamard_construct.hpp"
#include "detail/hadamard_kernels.hpp"

#include <array>
#include <bit>
#include <cmath>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <numbers>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace qift::inline QIFT_ISA {

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
        "; for this size use qift::rotation::make(n, {rotation_construction::any, seed}) (a "
        "seeded orthogonal K×K ⊗ FWHT, about the FWHT's cost), "
        "qift::rotation::random_orthogonal(n, seed) (dense), or "
        "qift::rotation::for_size(n, seed), which falls back to the dense one";
    fail(msg);
}

inline hadamard_blocks require_hadamard_size(const char* where, std::size_t n) {
    auto f = factor_hadamard_size(n);
    if (!f) fail_hadamard_size(where, n);
    return *f;
}

/// One factor H_K (or Q_K) of a transform (H_K ⊗ H_L), ready for apply_kron_block: the dense
/// coefficients of its core in the two kernel layouts, forward and transposed, and the fast
/// forms of a Paley block's Jacobsthal core where they pay: over GF(p^r) with r >= 2 the DFT
/// form (wide panels) and the partial-DFT table of the narrow kernel (panels under 2W columns);
/// over a prime field the Rader form (wide panels). A Paley II block runs as the H_2 row pairs
/// around its conference core of order K/2 (half the multiply-adds).
struct kron_block {
    std::size_t order = 0;  ///< K
    bool pairs = false;     ///< Paley II: core = C + I of order K/2 on row pairs
    std::size_t core = 0;   ///< order of the core matrix (K, or K/2 with pairs)
    std::array<aligned_vector<float>, 2> packed, narrow;   ///< [0] core, [1] its transpose
    std::array<int, 2> tau{1, 1}, sigma{1, 1}, eps{1, 1};  ///< the core's border and ±Q
    // GF(p^r), r >= 2: jacobsthal_dft_kernel.
    std::size_t dft_p = 0;  ///< 0: no DFT form
    unsigned dft_r = 0;
    std::array<aligned_vector<float>, 2> dft_mul;
    // GF(p^r), r >= 2: jacobsthal_dft_narrow_kernel (its table per direction).
    bool dft_narrow = false;
    std::array<aligned_vector<float>, 2> dft_conv;
    // GF(q), q prime: jacobsthal_rader_kernel.
    std::vector<std::size_t> rader_radix;  ///< empty: no Rader form
    std::vector<std::uint32_t> rader_slot;
    std::size_t rader_alternating_slot = 0;
    aligned_vector<float> rader_chi, rader_mul;
};

/// Smallest Jacobsthal core order run by the DFT instead of the dense mix (below it the dense
/// register-blocked mix is as fast).
inline constexpr std::size_t jacobsthal_dft_min_order = 64;

/// Smallest prime-field core order run in Rader form instead of the dense mix: the crossover.
/// Measured with AVX-512 on 64-column panels, time of the dense mix / the Rader form for the
/// block: 12 (q = 11): 0.7, 20 (q = 19): 0.9, 24 (Paley II, core 12): 1.0, 76 (Paley II, core
/// 38, q - 1 = 4·9): 1.4, 44 (q - 1 = 2·3·7): 1.6, 148 (core 74, 8·9): 1.7, 68 (2·3·11): 2.2,
/// 132 (2·5·13): 3.3. The Rader form costs about the same per element at every order (the
/// DFT passes over q - 1 = 2..13-smooth axes), the dense mix grows with the order.
inline constexpr std::size_t jacobsthal_rader_min_order = 32;

inline kron_block make_dense_block(const std::vector<float>& h, std::size_t k) {
    kron_block b;
    b.order = b.core = k;
    std::vector<float> t(k * k);
    for (std::size_t i = 0; i < k; ++i)
        for (std::size_t j = 0; j < k; ++j) t[j * k + i] = h[i * k + j];
    for (std::size_t tr = 0; tr < 2; ++tr) {
        const std::vector<float>& m = tr ? t : h;
        b.packed[tr].resize((k + 3) / 4 * 4 * k);
        pack_mix_coefficients(m.data(), k, b.packed[tr].data());
        b.narrow[tr].resize(narrow_mix_stride(k) * k);
        pack_narrow_mix_coefficients(m.data(), k, b.narrow[tr].data());
    }
    return b;
}

/// The block of Paley order c: its bordered Jacobsthal core (paley_core) densely, by DFT when
/// q = p^r with r >= 2, p small and the core at least jacobsthal_dft_min_order, and in Rader
/// form when q is prime, q - 1 splits into axes dft_codelets runs and the core is at least
/// jacobsthal_rader_min_order.
inline kron_block make_paley_block(std::size_t c) {
    const paley_core pc = make_paley_core(c);
    const galois_field field(prime_power{pc.p, pc.r});
    const std::vector<std::int8_t> core = pc.matrix(field);
    const std::size_t m = pc.order();
    kron_block b = make_dense_block(std::vector<float>(core.begin(), core.end()), m);
    b.order = c;
    b.pairs = pc.kind == 2;
    // Forward: [[1, 1ᵀ], [σ, I + Q]]. Transposed: Qᵀ = χ(-1)·Q, so Paley I (χ(-1) = -1) gives
    // [[1, -1ᵀ], [1, I - Q]] and Paley II is symmetric.
    b.tau = {1, pc.kind == 1 ? -1 : 1};
    b.sigma = {pc.sigma(), pc.kind == 1 ? 1 : pc.sigma()};
    b.eps = {1, pc.kind == 1 ? -1 : 1};
    if (pc.r >= 2 && jacobsthal_dft_kernel::supports(pc.p) && m >= jacobsthal_dft_min_order) {
        b.dft_p = pc.p;
        b.dft_r = pc.r;
        const auto lambda = jacobsthal_eigenvalues(pc);
        const double inv_q = 1.0 / static_cast<double>(pc.q);
        const std::size_t lanes = narrow_dft_lanes(pc.p);
        for (std::size_t tr = 0; tr < 2; ++tr) {
            const double eps = b.eps[tr];
            b.dft_mul[tr].resize(2 * pc.q);
            for (std::size_t u = 0; u < pc.q; ++u) {
                const std::complex<double> v = (1.0 + eps * lambda[u]) * inv_q;
                b.dft_mul[tr][2 * u] = static_cast<float>(v.real());
                b.dft_mul[tr][2 * u + 1] = static_cast<float>(v.imag());
            }
            // conv[((u·p + b)·2 + part)·L + a] = K_u(a - b).
            const auto k = jacobsthal_partial_kernel(pc, 1.0, eps);
            const std::size_t rows = pc.q / pc.p;
            b.dft_conv[tr].assign(rows * pc.p * 2 * lanes, 0.0f);
            for (std::size_t u = 0; u < rows; ++u)
                for (std::size_t bb = 0; bb < pc.p; ++bb)
                    for (std::size_t a = 0; a < pc.p; ++a) {
                        const std::complex<double> v = k[u * pc.p + (a + pc.p - bb) % pc.p];
                        float* dst = b.dft_conv[tr].data() + (u * pc.p + bb) * 2 * lanes + a;
                        dst[0] = static_cast<float>(v.real());
                        dst[lanes] = static_cast<float>(v.imag());
                    }
        }
        b.dft_narrow = true;
    }
    if (pc.r == 1 && m >= jacobsthal_rader_min_order) {
        auto form =
            make_rader_form(pc, [](std::size_t len) { return dft_codelets::supports(len); });
        if (form) {
            b.rader_radix = form->radix;
            b.rader_slot = form->slot;
            b.rader_alternating_slot = form->alternating_slot;
            b.rader_chi.resize(pc.q);
            for (std::size_t a = 0; a < pc.q; ++a) b.rader_chi[a] = static_cast<float>(pc.chi[a]);
            const double inv_n = 1.0 / static_cast<double>(pc.q - 1);
            b.rader_mul.resize(2 * (pc.q - 1));
            for (std::size_t u = 0; u + 1 < pc.q; ++u) {
                b.rader_mul[2 * u] = static_cast<float>(form->eigenvalues[u].real() * inv_n);
                b.rader_mul[2 * u + 1] = static_cast<float>(form->eigenvalues[u].imag() * inv_n);
            }
        }
    }
    return b;
}

/// The precomputed pieces of a transform (H_{blocks} ⊗ H_L) of order n: its blocks in
/// application order. Immutable and shared between threads.
struct hadamard_plan {
    std::size_t n = 0;
    hadamard_blocks shape;
    std::vector<kron_block> blocks;
};

inline std::shared_ptr<const hadamard_plan> make_hadamard_plan(std::size_t n, const char* where) {
    auto plan = std::make_shared<hadamard_plan>();
    plan->n = n;
    plan->shape = require_hadamard_size(where, n);
    for (std::size_t k : plan->shape.blocks) plan->blocks.push_back(make_paley_block(k));
    return plan;
}

/// The cached plan of order n (built on first use, thread-safe); throws qift::error for an
/// unsupported n, the message starting with `where`.
inline std::shared_ptr<const hadamard_plan> hadamard_plan_for(
    std::size_t n, const char* where = "qift::hadamard_transform") {
    // The last plan this thread used, without the lock and the lookup (a transform of n = 688
    // costs about 400 ns, the locked lookup about 6).
    thread_local std::shared_ptr<const hadamard_plan> last;
    if (last && last->n == n) return last;
    static std::mutex mutex;
    static std::unordered_map<std::size_t, std::shared_ptr<const hadamard_plan>> cache;
    std::lock_guard lock(mutex);
    if (auto it = cache.find(n); it != cache.end()) return last = it->second;
    auto plan = make_hadamard_plan(n, where);
    cache.emplace(n, plan);
    return last = plan;
}

inline float hadamard_scale(std::size_t n, hadamard_norm norm) noexcept {
    return norm == hadamard_norm::orthonormal
               ? static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)))
               : 1.0f;
}

// out = core · in (k_core × cols panels, no aliasing): the dense register-blocked mix on the
// columns that fill whole registers, the narrow GEMV form on the rest.
template <class Arch>
void apply_dense_core(const kron_block& b, std::size_t tr, const float* in, float* out,
                      std::size_t cols) noexcept {
    constexpr std::size_t w = xsimd::batch<float, Arch>::size;
    const std::size_t wide = cols / w * w;
    if (wide)
        hadamard_mix_kernel{}.columns(Arch{}, b.packed[tr].data(), b.core, in, out, cols, wide);
    if (wide < cols)
        narrow_mix_kernel{}(Arch{}, b.narrow[tr].data(), b.core, in, out, cols, wide, cols);
}

/// The columns [0, wide) a wide DFT or Rader kernel takes: whole groups of 2W.
template <class Arch>
std::size_t fast_core_columns(std::size_t cols) noexcept {
    constexpr std::size_t w2 = 2 * xsimd::batch<float, Arch>::size;
    return cols / w2 * w2;
}

/// True when the GF(p^r) DFT forms take every column of a cols-wide panel (in place).
template <class Arch>
bool dft_covers(const kron_block& b, std::size_t cols) noexcept {
    return b.dft_p != 0 && (b.dft_narrow || fast_core_columns<Arch>(cols) == cols);
}

// The GF(p^r) field and border of block b (tr: 0, or 1 for the transpose).
inline jacobsthal_field dft_field(const kron_block& b, std::size_t tr) noexcept {
    jacobsthal_field f;
    f.p = b.dft_p;
    f.r = b.dft_r;
    f.q = b.core - 1;
    f.tau = b.tau[tr];
    f.sigma = b.sigma[tr];
    return f;
}

// x <- core · x on the columns [c0, cols) by the narrow GF(p^r) kernel, then (columns in pairs)
// the 2-point FWHT when pair_hadamard, then times scale.
template <class Arch>
void apply_narrow_dft_core(const kron_block& b, std::size_t tr, float* x, std::size_t cols,
                           std::size_t c0, float scale = 1.0f,
                           bool pair_hadamard = false) noexcept {
    jacobsthal_dft_narrow_params prm;
    static_cast<jacobsthal_field&>(prm) = dft_field(b, tr);
    prm.conv = b.dft_conv[tr].data();
    prm.scale = scale;
    prm.pair_hadamard = pair_hadamard;
    float* work = thread_scratch<scratch_slot::hadamard_dft_narrow>(
        jacobsthal_dft_narrow_kernel::work_floats(prm.p, prm.q));
    jacobsthal_dft_narrow_kernel{}(Arch{}, prm, x, cols, c0, cols, work);
}

// x <- core · x in place by the GF(p^r) DFT forms (dft_covers): the wide kernel on whole groups
// of 2W columns, the narrow one on the rest.
template <class Arch>
void apply_dft_core(const kron_block& b, std::size_t tr, float* x, std::size_t cols) noexcept {
    const std::size_t wide = fast_core_columns<Arch>(cols);
    if (wide) {
        jacobsthal_dft_params prm;
        static_cast<jacobsthal_field&>(prm) = dft_field(b, tr);
        prm.mul = b.dft_mul[tr].data();
        jacobsthal_dft_kernel{}(Arch{}, prm, x, cols, wide);
    }
    if (wide < cols) apply_narrow_dft_core<Arch>(b, tr, x, cols, wide);
}

// out = core · in on the columns [0, wide) by the Rader form; in == out allowed.
template <class Arch>
void apply_rader_core(const kron_block& b, std::size_t tr, const float* in, float* out,
                      std::size_t cols, std::size_t wide) noexcept {
    constexpr std::size_t w = xsimd::batch<float, Arch>::size;
    jacobsthal_rader_params prm;
    prm.q = b.core - 1;
    prm.radix = b.rader_radix.data();
    prm.axes = b.rader_radix.size();
    prm.slot = b.rader_slot.data();
    prm.alternating_slot = b.rader_alternating_slot;
    prm.chi = b.rader_chi.data();
    prm.mul = b.rader_mul.data();
    prm.tau = b.tau[tr];
    prm.sigma = b.sigma[tr];
    prm.eps = b.eps[tr];
    float* work = thread_scratch<scratch_slot::hadamard_rader>((prm.q - 1) * 2 * w);
    jacobsthal_rader_kernel{}(Arch{}, prm, in, out, cols, wide, work);
}

// out = core · in on k_core × cols panels, in != out, `in` left unchanged: the fastest form for
// each column range.
template <class Arch>
void apply_core(const kron_block& b, std::size_t tr, const float* in, float* out,
                std::size_t cols) noexcept {
    if (dft_covers<Arch>(b, cols)) {
        std::copy_n(in, b.core * cols, out);
        apply_dft_core<Arch>(b, tr, out, cols);
        return;
    }
    const std::size_t wide = b.rader_radix.empty() ? 0 : fast_core_columns<Arch>(cols);
    if (wide == 0) {
        apply_dense_core<Arch>(b, tr, in, out, cols);
        return;
    }
    apply_rader_core<Arch>(b, tr, in, out, cols, wide);
    if (wide < cols)
        narrow_mix_kernel{}(Arch{}, b.narrow[tr].data(), b.core, in, out, cols, wide, cols);
}

/// panel <- B · panel (or Bᵀ) for one block B of order K on a K×cols row-major panel;
/// `scratch` holds at least K·cols floats.
template <class Arch>
void apply_kron_block(const kron_block& b, float* panel, std::size_t cols, bool transpose,
                      float* scratch) noexcept {
    const std::size_t tr = transpose ? 1 : 0;
    if (b.pairs) {
        // H = C ⊗ H_2 + I ⊗ [[1, -1], [-1, -1]]: z = pairs(x), y = (C + I)·z - z + swap(z).
        const std::size_t half = b.core;
        paley_pairs_split<Arch>(panel, scratch, half, cols);
        apply_core<Arch>(b, tr, scratch, panel, 2 * cols);
        paley_pairs_join<Arch>(panel, scratch, half, cols);
    } else if (dft_covers<Arch>(b, cols)) {
        apply_dft_core<Arch>(b, tr, panel, cols);
    } else if (!b.rader_radix.empty() && fast_core_columns<Arch>(cols) == cols) {
        apply_rader_core<Arch>(b, tr, panel, panel, cols, cols);
    } else {
        apply_core<Arch>(b, tr, panel, scratch, cols);
        std::copy_n(scratch, b.order * cols, panel);
    }
}

// Copies of a few floats: constant sizes become a register move or two instead of a call.
inline void copy_short(const float* src, std::size_t len, float* dst) noexcept {
    switch (len) {
        case 8:
            std::memcpy(dst, src, 8 * sizeof(float));
            break;
        case 16:
            std::memcpy(dst, src, 16 * sizeof(float));
            break;
        case 32:
            std::memcpy(dst, src, 32 * sizeof(float));
            break;
        case 4:
            std::memcpy(dst, src, 4 * sizeof(float));
            break;
        default:
            std::memcpy(dst, src, len * sizeof(float));
            break;
    }
}

/// Panels narrower than this many floats are gathered across the outer index first, so a
/// block sees one wide K×(outer·inner) panel instead of many narrow ones.
inline constexpr std::size_t kron_gather_below = 64;

/// x <- scale · (B_0 ⊗ B_1 ⊗ ... ⊗ H_L) x (every B_t transposed when asked); x has plan.n
/// elements. The FWHT runs on the contiguous rows of length L, then block t on axis t of the
/// [K_0][K_1]..[L] view: on outer × (K_t × inner) panels, gathered into one panel when narrow.
template <class Arch>
void apply_hadamard_plan(const hadamard_plan& plan, float* x, bool transpose, float scale) {
    constexpr std::size_t w = xsimd::batch<float, Arch>::size;
    const std::size_t n = plan.n, len = plan.shape.power_of_two;
    // One GF(p^r) block (no Paley II pairs) on a K×1 or K×2 panel (n = 344·2 = 688): the narrow
    // kernel also does the FWHT of the rows and the scale, in its output stage.
    if (plan.blocks.size() == 1 && len <= 2 && !plan.blocks[0].pairs && plan.blocks[0].dft_narrow &&
        fast_core_columns<Arch>(len) == 0) {
        apply_narrow_dft_core<Arch>(plan.blocks[0], transpose ? 1 : 0, x, len, 0, scale, len == 2);
        return;
    }
    if (len >= 2 * w) {
        fwht_kernel{}.rows(Arch{}, x, n, len, scale);
    } else if (len > 1 || scale != 1.0f) {
        fwht_short_rows_kernel{}(Arch{}, x, n, len, scale);
    }
    if (plan.blocks.empty()) return;
    thread_local aligned_vector<float> scratch, gathered;
    if (scratch.size() < n) scratch.resize(n);
    std::size_t outer = 1;
    for (const kron_block& b : plan.blocks) {
        const std::size_t k = b.order;
        const std::size_t inner = n / outer / k;
        if (outer > 1 && inner < kron_gather_below) {
            if (gathered.size() < n) gathered.resize(n);
            const std::size_t wide = outer * inner;
            float* g = gathered.data();
            for (std::size_t o = 0; o < outer; ++o)
                for (std::size_t j = 0; j < k; ++j) {
                    const float* src = x + (o * k + j) * inner;
                    float* dst = g + j * wide + o * inner;
                    copy_short(src, inner, dst);
                }
            apply_kron_block<Arch>(b, g, wide, transpose, scratch.data());
            for (std::size_t o = 0; o < outer; ++o)
                for (std::size_t j = 0; j < k; ++j) {
                    const float* src = g + j * wide + o * inner;
                    float* dst = x + (o * k + j) * inner;
                    copy_short(src, inner, dst);
                }
        } else {
            for (std::size_t o = 0; o < outer; ++o)
                apply_kron_block<Arch>(b, x + o * k * inner, inner, transpose, scratch.data());
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
    const std::size_t nn = checked_size<double>({n, n}, "qift::rotation: dense orthogonal n x n");
    std::vector<double> a(nn), v(n), q(nn, 0.0);
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

/// n = K·L with L the largest power of two dividing n (K odd).
inline hadamard_blocks odd_split(std::size_t n) noexcept {
    hadamard_blocks b;
    while (n % 2 == 0) {
        n /= 2;
        b.power_of_two *= 2;
    }
    if (n > 1) b.blocks.push_back(n);
    return b;
}

/// The plan of M = Q_K ⊗ H_L (H_L unnormalized; scale by 1/√L), n = K·L as odd_split,
/// Q_K = random_orthogonal_matrix(K, seed).
inline std::shared_ptr<const hadamard_plan> make_kronecker_plan(std::size_t n, std::uint64_t seed) {
    auto plan = std::make_shared<hadamard_plan>();
    plan->n = n;
    plan->shape = odd_split(n);
    if (!plan->shape.blocks.empty()) {
        const std::size_t k = plan->shape.blocks[0];
        const matrix<float> q = random_orthogonal_matrix(k, seed);
        plan->blocks.push_back(make_dense_block(std::vector<float>(q.data(), q.data() + k * k), k));
    }
    return plan;
}

}  // namespace detail

/// How rotation::make builds its n×n orthogonal matrix Q (every choice is seeded and gives the
/// same matrix for the same (n, seed) on every platform).
/// - `hadamard`: a true randomized Hadamard matrix H_n·D/√n (see rotation::hadamard); throws
///   qift::error when no Sylvester/Paley construction reaches n.
/// - `any`: `hadamard` when is_hadamard_size(n), else `kronecker`: the cheap choice for every n.
/// - `kronecker`: (Q_K ⊗ H_L/√L)·D with n = K·L, L = 2^m the largest power of two dividing n,
///   Q_K a seeded Haar-random K×K orthogonal matrix and D seeded signs: the FWHT's O(n log n)
///   plus K multiply-adds per element (e.g. 43 for n = 11008, 172 or 688); exactly orthogonal
///   (up to float rounding), but its entries are not all ±1/√n, so a spike is spread less evenly
///   than by a Hadamard matrix (max |Q_ij|·√n is about √(2 ln K) instead of 1).
/// - `dense`: a seeded Haar-random dense n×n matrix (rotation::random_orthogonal): the best
///   mixing, O(n³) to build and O(n²) per vector.
enum class rotation_construction { hadamard, any, kronecker, dense };

/// Options of rotation::make. Seed 0 means no sign flips for `hadamard` and `kronecker` (Q_K
/// is still drawn from it).
struct rotation_options {
    rotation_construction construction = rotation_construction::any;
    std::uint64_t seed = 0;
};

/// An n×n orthogonal matrix Q applied without forming it where possible, as a rotated model
/// needs (QuaRot, arXiv 2404.00456): a randomized Hadamard matrix Q = H_n·diag(s)/√n with
/// seeded signs s ∈ {±1}^n (O(n log n) plus a fast K-block per vector), a seeded orthogonal
/// Kronecker product (Q_K ⊗ H_L/√L)·diag(s) for any n (same cost), or a seeded Haar-random
/// dense orthogonal matrix (O(n²) per vector). rotation::make chooses by rotation_options.
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
    enum class kind { hadamard, random_orthogonal, kronecker };

    /// The rotation of size n built as opt.construction says (see rotation_construction);
    /// throws qift::error for n = 0 and, with `hadamard`, for sizes no construction reaches.
    static rotation make(std::size_t n, rotation_options opt = {}) {
        switch (opt.construction) {
            case rotation_construction::hadamard:
                return hadamard(n, opt.seed);
            case rotation_construction::any:
                return is_hadamard_size(n) ? hadamard(n, opt.seed) : kronecker(n, opt.seed);
            case rotation_construction::kronecker:
                return kronecker(n, opt.seed);
            case rotation_construction::dense:
                return random_orthogonal(n, opt.seed);
        }
        detail::fail("qift::rotation::make: unknown rotation_construction " +
                     std::to_string(static_cast<int>(opt.construction)));
    }

    /// Q = (Q_K ⊗ H_L/√L)·D for any n >= 1 (see rotation_construction::kronecker): Q_K =
    /// detail::random_orthogonal_matrix(K, ~seed), D = diag(s) with s from `seed` as in
    /// hadamard() (none for seed 0). Building costs O(K³) and stores 4K² floats; applying costs
    /// an FWHT of length L on each of the K rows and a K×K by K×L product. For a power of two
    /// n (K = 1) this is the randomized Hadamard rotation.
    static rotation kronecker(std::size_t n, std::uint64_t seed) {
        detail::require(
            n >= 1, [] { return std::string("qift::rotation::kronecker: n = 0, need n >= 1"); });
        rotation r(kind::kronecker, n, seed);
        r.plan_ = detail::make_kronecker_plan(n, ~seed);
        r.scale_ = detail::hadamard_scale(r.plan_->shape.power_of_two, hadamard_norm::orthonormal);
        r.signs_ = seeded_signs(n, seed);
        return r;
    }

    /// Randomized Hadamard rotation of order n (is_hadamard_size(n) must hold): Q = H_n·D/√n,
    /// D = diag(s), s_i = ±1 from a splitmix64 stream seeded with `seed`; seed 0 means no sign
    /// flips (D = I). Throws qift::error naming the nearest supported sizes otherwise.
    static rotation hadamard(std::size_t n, std::uint64_t seed = 0) {
        rotation r(kind::hadamard, n, seed);
        r.plan_ = detail::hadamard_plan_for(n, "qift::rotation::hadamard");
        r.scale_ = detail::hadamard_scale(n, hadamard_norm::orthonormal);
        r.signs_ = seeded_signs(n, seed);
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

    /// hadamard(n, seed) when is_hadamard_size(n), random_orthogonal(n, seed) otherwise (the
    /// dense fallback, kept for reproducibility of earlier results; make(n, {any, seed}) is the
    /// fast choice for every n).
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
    // Every factory starts here: n floats (the signs, one vector) must be addressable.
    rotation(kind k, std::size_t n, std::uint64_t seed) : kind_(k), n_(n), seed_(seed) {
        (void)detail::checked_size<float>({n}, "qift::rotation: n");
    }

    void check_vector(const char* what, std::size_t len) const {
        detail::require(len == n_, [&] {
            return std::string("qift::rotation::") + what + ": x.size() = " + std::to_string(len) +
                   " but the rotation has size " + std::to_string(n_);
        });
    }

    static aligned_vector<float> seeded_signs(std::size_t n, std::uint64_t seed) {
        aligned_vector<float> signs(n, 1.0f);
        if (seed != 0) {
            std::uint64_t state = seed;
            for (std::size_t i = 0; i < n; i += 64) {
                const std::uint64_t bits = detail::splitmix64(state);
                for (std::size_t b = 0; b < 64 && i + b < n; ++b)
                    signs[i + b] = (bits >> b) & 1 ? -1.0f : 1.0f;
            }
        }
        return signs;
    }

    // x <- x·Q or x·Qᵀ.
    void apply_unchecked(float* x, bool transpose) const {
        if (kind_ != kind::random_orthogonal) {
            const float s = scale_;
            // Q = M·D with M = H/√n or Q_K ⊗ H_L/√L: x·Q = (Qᵀxᵀ)ᵀ = D·Mᵀx; x·Qᵀ = M·D·x.
            using arch = xsimd::default_arch;
            if (transpose) {
                if (seed_ != 0) detail::multiply_elementwise<arch>(x, signs_.data(), n_);
                detail::apply_hadamard_plan<arch>(*plan_, x, false, s);
            } else {
                detail::apply_hadamard_plan<arch>(*plan_, x, true, s);
                if (seed_ != 0) detail::multiply_elementwise<arch>(x, signs_.data(), n_);
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
    float scale_ = 1.0f;
    aligned_vector<float> signs_;
    std::shared_ptr<const matrix<float>> dense_;
};

}  // namespace qift
