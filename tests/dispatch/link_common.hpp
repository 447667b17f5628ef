// SPDX-License-Identifier: MIT
// What both translation units of the link test compute, and the functions link_wide.cpp (built
// for avx512_vnni) gives link_baseline.cpp (built for the baseline): std types only.
#pragma once

#include <qift/dispatch.hpp>
#include <qift/gemv.hpp>
#include <qift/scale.hpp>

#include <cstdint>
#include <random>
#include <vector>

namespace {

// Internal linkage on purpose: each translation unit keeps its own copy. Were this an inline
// function (external linkage, outside qift's target namespace), both units would emit it under
// one mangled name and the linker would keep one copy for both: the caveat of dispatch.hpp.

/// A 37×1000 W2A4 GEMV (MNZ levels, max-rule scales) on seeded Gaussian data: integer kernels,
/// so every target's result is the same bit for bit.
[[maybe_unused]] std::vector<float> link_test_gemv() {
    std::mt19937 gen(7);
    std::normal_distribution<float> nd;
    qift::matrix<float> w(37, 1000), x(1, 1000);
    for (auto& v : w.flat()) v = nd(gen);
    for (auto& v : x.flat()) v = nd(gen);
    qift::scale_options opt;
    opt.rule = qift::scale_rule::max;
    const qift::packed_matrix<qift::levels::mnz> p(qift::quantize<qift::levels::mnz>(w, opt));
    std::vector<float> y(p.rows());
    qift::gemv(p, qift::quantize_activations(x, 0.9f), y);
    return y;
}

/// qift::isa_name() called through its address, so that the call goes to the symbol the linker
/// kept (a direct call may be inlined, which would hide a merged symbol).
[[maybe_unused]] const char* link_test_isa_name() {
    const char* (*volatile fn)() noexcept = &qift::isa_name;
    return fn();
}

}  // namespace

/// Defined in link_wide.cpp (avx512_vnni); call only where qift::cpu_supports says so.
std::vector<float> wide_gemv();
const char* wide_isa_name();
