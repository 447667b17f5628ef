// SPDX-License-Identifier: MIT
// The one place qift includes xsimd, with the small compatibility layer for Debian's 8.1.
#pragma once

#include "target.hpp"

#include <type_traits>

#include <xsimd/xsimd.hpp>

namespace qift::inline QIFT_ISA::detail {

/// Horizontal sum of a batch (xsimd 8.1 `hadd`, renamed `reduce_add` later).
template <class Batch>
inline auto reduce_add(const Batch& b) noexcept {
    return xsimd::hadd(b);
}

/// a / b per lane, correctly rounded like the scalar division. xsimd 8.1 divides float batches
/// on ARM (neon and neon64) by a reciprocal estimate and two Newton steps, which is off by an
/// ulp now and then: a vector path that must round exactly like its scalar reference (a value on
/// a decision threshold) divides through here. AArch64 has a true vector divide (FDIV); 32-bit
/// NEON has none, so it divides lane by lane.
template <class Arch>
inline xsimd::batch<float, Arch> divide(const xsimd::batch<float, Arch>& a,
                                        const xsimd::batch<float, Arch>& b) noexcept {
#if XSIMD_WITH_NEON64
    if constexpr (std::is_same_v<Arch, xsimd::neon64>) return vdivq_f32(a, b);
#endif
#if XSIMD_WITH_NEON
    if constexpr (std::is_same_v<Arch, xsimd::neon>) {
        alignas(16) float x[4], y[4];
        a.store_aligned(x);
        b.store_aligned(y);
        for (int i = 0; i < 4; ++i) x[i] /= y[i];
        return xsimd::batch<float, Arch>::load_aligned(x);
    }
#endif
    return a / b;
}

}  // namespace qift::detail
