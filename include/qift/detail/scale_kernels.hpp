// SPDX-License-Identifier: MIT
// SIMD kernel behind the scale search: the quantization error Σ|w − q(w)|^e of one row (or
// group) for one candidate scale, with its scalar reference.
#pragma once

#include <cmath>
#include <cstddef>
#include <span>

#include "xsimd.hpp"

#include "../levels.hpp"

namespace qift::detail {

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

/// xsimd kernel: the same sum, nearest level picked by comparing against the sorted
/// thresholds (count − 1 compare/selects per batch, no table lookups).
struct quantization_error_kernel {
    template <class Arch, level_set L>
    double operator()(Arch, std::span<const float> w, float scale, float zero, float exponent,
                      L) const noexcept {
        using T = level_traits<L>;
        using batch = xsimd::batch<float, Arch>;
        constexpr std::size_t width = batch::size;
        const batch inv(1.0f / scale), z(zero), s(scale), e(exponent);
        // dequantized value of sorted level k, precomputed once per call
        std::array<float, T::count> recon{};
        for (std::size_t k = 0; k < T::count; ++k) recon[k] = scale * (T::sorted[k] - zero);
        batch acc(0.0f);
        const std::size_t n = w.size(), vec_end = n - n % width;
        for (std::size_t i = 0; i < vec_end; i += width) {
            const batch x = batch::load_unaligned(w.data() + i);
            const batch u = xsimd::fma(x, inv, z);
            batch q(recon[0]);
            for (std::size_t k = 0; k + 1 < T::count; ++k)
                q = xsimd::select(u > batch(T::thresholds[k]), batch(recon[k + 1]), q);
            const batch d = xsimd::abs(x - q);
            acc += exponent == 2.0f ? d * d : xsimd::pow(d, e);
        }
        double sum = static_cast<double>(reduce_add(acc));
        return sum + quantization_error_scalar<L>(w.subspan(vec_end), scale, zero, exponent);
    }
};

}  // namespace qift::detail
