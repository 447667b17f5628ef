// SPDX-License-Identifier: MIT
// The boundary between the dispatch test's main (baseline) and the kernel suite compiled once
// per target: only std types cross it, since qift's own types differ per target.
#pragma once

#include <qift/dispatch.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dispatch_test {

/// One kernel family of one target's run: every SIMD kernel against its scalar reference.
struct family_result {
    std::string name;  ///< e.g. "gemv W2A4 mnz"
    /// Bit-exact contract against the scalar reference (else a float tolerance).
    bool exact = false;
    /// The outputs are the same bit for bit on every target (else: within a float tolerance,
    /// e.g. where the compiler contracts a float epilogue into FMAs on FMA targets only).
    bool portable = false;
    std::size_t checks = 0;     ///< comparisons made (one per output vector)
    std::size_t failures = 0;   ///< comparisons outside the contract
    std::uint64_t hash = 0;     ///< FNV-1a 64 of the kernel outputs' bytes
    double sum = 0.0;           ///< Σ of the kernel outputs (as double)
    double abs_sum = 0.0;       ///< Σ |kernel outputs|
    std::string first_failure;  ///< where the first failure was, empty when none
};

/// One target's run of the suite.
struct suite_result {
    std::string isa;  ///< qift::isa_name() of the copy that ran, e.g. "isa_x86v3"
    std::vector<family_result> families;
};

/// Runs every kernel family on random odd shapes generated from `seed`.
using suite_fn = suite_result(std::uint64_t seed);
QIFT_DISPATCH_DECLARE(kernel_suite, suite_fn);

}  // namespace dispatch_test
