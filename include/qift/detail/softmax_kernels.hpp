// SPDX-License-Identifier: MIT
// Vectorized sums of exponentials over a row of logits (log-sum-exp and the KL divergence of
// two next-token distributions), with scalar references beside them.
#pragma once

#include "target.hpp"

#include <cmath>
#include <cstddef>

#include "xsimd.hpp"

namespace qift::inline QIFT_ISA::detail {

/// Σ_i exp(x_i − shift), and with `y` also Σ_i exp(x_i − shift)·(x_i − y_i). Each exponential
/// in float (xsimd::exp, about 1 ulp), every sum in double: relative error about 1e-7 against
/// double exponentials, far below what a perplexity or a KL divergence is reported to.
struct sum_exp_kernel {
    template <class Arch>
    void operator()(Arch, const float* x, const float* y, std::size_t n, float shift, double& sum,
                    double& weighted) const noexcept {
        using bf = xsimd::batch<float, Arch>;
        constexpr std::size_t W = bf::size;
        const bf vs(shift);
        double s = 0, w = 0;
        std::size_t i = 0;
        for (; i + W <= n; i += W) {
            const bf vx = bf::load_unaligned(x + i);
            const bf e = xsimd::exp(vx - vs);
            alignas(64) float lanes[W], prod[W];
            e.store_aligned(lanes);
            if (y) (e * (vx - bf::load_unaligned(y + i))).store_aligned(prod);
            for (std::size_t l = 0; l < W; ++l) {
                s += double(lanes[l]);
                if (y) w += double(prod[l]);
            }
        }
        for (; i < n; ++i) {
            const float e = std::exp(x[i] - shift);
            s += double(e);
            if (y) w += double(e * (x[i] - y[i]));
        }
        sum = s;
        weighted = y ? w : 0.0;
    }
};

/// Scalar reference of sum_exp_kernel, in double throughout.
inline void sum_exp_reference(const float* x, const float* y, std::size_t n, float shift,
                              double& sum, double& weighted) noexcept {
    double s = 0, w = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const double e = std::exp(double(x[i]) - double(shift));
        s += e;
        if (y) w += e * (double(x[i]) - double(y[i]));
    }
    sum = s;
    weighted = y ? w : 0.0;
}

}  // namespace qift::detail
