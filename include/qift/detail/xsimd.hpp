// SPDX-License-Identifier: MIT
// The one place qift includes xsimd, with the small compatibility layer for Debian's 8.1.
#pragma once

#include <xsimd/xsimd.hpp>

namespace qift::detail {

/// Horizontal sum of a batch (xsimd 8.1 `hadd`, renamed `reduce_add` later).
template <class Batch>
inline auto reduce_add(const Batch& b) noexcept {
    return xsimd::hadd(b);
}

}  // namespace qift::detail
