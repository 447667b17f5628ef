// SPDX-License-Identifier: MIT
// SIMD kernel behind the scale search: the quantization error Σ|w − q(w)|^e of one row (or
// group) for one candidate scale, with its scalar reference, and the polynomial power
// function it uses for non-integer exponents.
#pragma once

#include "target.hpp"

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>

#include "xsimd.hpp"

#include "../levels.hpp"

namespace qift::inline QIFT_ISA::detail {

/// Scalar reference: Σ_i |w_i − s·(L[c_i] − z)|^e with c_i the nearest level to w_i/s + z.
/// Precondition: scale > 0.
template <level_set L>
double quantization_error_scalar(std::span<const float> w, float scale, float zero,
                                 float exponent) noexcept {
    using T = level_traits<L>;
    const float inv = 1.0f / scale;
    double sum = 0.0;
    for (float x : w) {
        const float q = scale * (T::decode(T::encode(x * inv + zero)) - zero);
        const float d = std::fabs(x - q);
        sum +=
            exponent == 2.0f ? static_cast<double>(d) * d : std::pow(double(d), double(exponent));
    }
    return sum;
}

// ---------------------------------------------------------------------------------------
// d^e for d >= 0 by polynomials

/// Coefficients of log2(1 + u) ≈ u·(c0 + c1·u + ... + c6·u⁶) on u ∈ [√½ − 1, √2 − 1]
/// (weighted least squares iterated towards minimax; absolute error ≤ 3.1e-7) and of
/// 2^r ≈ Σ e_k·r^k on r ∈ [−½, ½] (relative error ≤ 7.5e-8). Fitted for this library.
inline constexpr std::array<float, 7> log2_poly{1.44269973f,   -0.721375871f, 0.480465014f,
                                                -0.358961895f, 0.297262909f,  -0.272697534f,
                                                0.170632823f};
inline constexpr std::array<float, 6> exp2_poly{1.00000007f,   0.693146967f,   0.240221197f,
                                                0.0555071329f, 0.00967554129f, 0.0013276467f};

/// Splits an exponent e > 0 into its integer part k and fraction f ∈ [0, 1): d^e = d^k·d^f.
struct split_exponent {
    explicit split_exponent(float e) noexcept
        : k(static_cast<unsigned>(std::floor(e))), f(e - std::floor(e)) {}
    unsigned k;
    float f;
};

/// d^f for 0 ≤ d < 2^127 and 0 < f < 1 as 2^(f·log2 d), log2 and exp2 by the polynomials
/// above with the exponent bits handled directly; f·log2 d is clamped at −126, so d = 0 gives
/// a tiny positive value (callers multiply by d^k or select 0).
template <class Arch>
inline xsimd::batch<float, Arch> pow_fraction(xsimd::batch<float, Arch> d, float f) noexcept {
    using batch = xsimd::batch<float, Arch>;
    using ibatch = xsimd::batch<std::int32_t, Arch>;
    // d = 2^x·m with m ∈ [√½, √2): subtracting the bits of √½ makes the exponent field x.
    const ibatch bits = xsimd::bitwise_cast<ibatch>(d);
    const ibatch x = (bits - ibatch(0x3f3504f3)) >> 23;
    const batch u = xsimd::bitwise_cast<batch>(bits - (x << 23)) - batch(1.0f);
    batch p(log2_poly[6]);
    for (std::size_t k = 6; k-- > 0;) p = xsimd::fma(p, u, batch(log2_poly[k]));
    const batch y = xsimd::max(xsimd::fma(u, p, xsimd::to_float(x)) * batch(f), batch(-126.0f));
    const ibatch n = xsimd::nearbyint_as_int(y);
    const batch r = y - xsimd::to_float(n);
    batch q(exp2_poly[5]);
    for (std::size_t k = 5; k-- > 0;) q = xsimd::fma(q, r, batch(exp2_poly[k]));
    return xsimd::bitwise_cast<batch>(xsimd::bitwise_cast<ibatch>(q) + (n << 23));
}

/// d^e for 0 ≤ d < 2^127 and e > 0 as d^k (repeated squaring, exact for e = 2: d·d) times d^f
/// (pow_fraction). Relative error against the exact power for normal d: about
/// 3e-7 + 7e-8·|f·log2 d| (the rounding of f·log2 d in float), so ≤ 1.5e-6 for d in
/// [1e-15, 1e15] and ≤ 3e-6 in [1e-30, 1e30]; 0 for d = 0; exact products for integer e.
/// It is the scale search's replacement for xsimd::pow, with which the search took 2.5× as
/// long, and whose last bits do not decide which grid candidate wins. Subnormal d (below 1.2e-38)
/// gets an approximate d^f; the product is far below any weight error that matters.
template <class Arch>
inline xsimd::batch<float, Arch> pow_nonnegative(xsimd::batch<float, Arch> d,
                                                 split_exponent e) noexcept {
    using batch = xsimd::batch<float, Arch>;
    batch ipow(1.0f);
    if (e.k > 0) {
        batch base = d;
        for (unsigned k = e.k;;) {
            if (k & 1u) ipow *= base;
            k >>= 1;
            if (!k) break;
            base *= base;
        }
    }
    if (e.f == 0.0f) return ipow;
    const batch result = ipow * pow_fraction(d, e.f);
    return e.k > 0 ? result : xsimd::select(d > batch(0.0f), result, batch(0.0f));
}

// ---------------------------------------------------------------------------------------
// Quantization error

/// The dequantized value of the level nearest to u = w/scale + zero, recon[k] being
/// scale·(sorted[k] − zero): count − 1 compare/selects against the sorted thresholds (a tie goes
/// to the lower level, as level_traits::encode), no table lookups.
template <level_set L, class Arch>
xsimd::batch<float, Arch> nearest_level_value(
    xsimd::batch<float, Arch> u, const std::array<float, level_traits<L>::count>& recon) noexcept {
    using batch = xsimd::batch<float, Arch>;
    batch q(recon[0]);
    for (std::size_t k = 0; k + 1 < level_traits<L>::count; ++k)
        q = xsimd::select(u > batch(level_traits<L>::thresholds[k]), batch(recon[k + 1]), q);
    return q;
}

/// xsimd kernel: the same sum, nearest level picked by comparing against the sorted
/// thresholds (count − 1 compare/selects per batch, no table lookups), |d|^e by
/// pow_nonnegative (relative error ≤ 1.5e-6 per term at weight scales; exact for integer e).
struct quantization_error_kernel {
    template <class Arch, level_set L>
    double operator()(Arch, std::span<const float> w, float scale, float zero, float exponent,
                      L) const noexcept {
        using T = level_traits<L>;
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t width = batch::size;
        const batch inv(1.0f / scale), z(zero);
        const split_exponent e(exponent);
        // dequantized value of sorted level k, precomputed once per call
        std::array<float, T::count> recon{};
        for (std::size_t k = 0; k < T::count; ++k) recon[k] = scale * (T::sorted[k] - zero);
        const std::size_t n = w.size(), vec_end = n - n % width;
        // The power is chosen once per call, outside the loop; each form computes exactly
        // what pow_nonnegative does for that exponent.
        const auto sum_powers = [&](auto power) {
            batch acc(0.0f);
            for (std::size_t i = 0; i < vec_end; i += width) {
                const batch x = batch::load_unaligned(w.data() + i);
                const batch q = nearest_level_value<L>(xsimd::fma(x, inv, z), recon);
                acc += power(xsimd::abs(x - q));
            }
            return acc;
        };
        batch acc;
        if (e.k == 2 && e.f == 0.0f)
            acc = sum_powers([](batch d) { return d * d; });
        else if (e.k == 2)
            acc = sum_powers([f = e.f](batch d) { return d * d * pow_fraction(d, f); });
        else
            acc = sum_powers([e](batch d) { return pow_nonnegative(d, e); });
        double sum = static_cast<double>(reduce_add(acc));
        return sum + quantization_error_scalar<L>(w.subspan(vec_end), scale, zero, exponent);
    }
};

}  // namespace qift::detail
