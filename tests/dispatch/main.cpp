// SPDX-License-Identifier: MIT
// The dispatch test's driver, compiled for the baseline: runs the kernel suite compiled for each
// target (kernel_suite.cpp), checks every family against its references, and that the targets
// agree (integer outputs bit for bit, float outputs within a coarse bound).
//
//   qift_dispatch_tests                      every target: skipped with a message when the CPU
//                                            lacks it, else run and compared with the baseline
//   qift_dispatch_tests --selected [--expect NAME|best]
//                                            the instance kernel_suite_select() picks (QIFT_TARGET,
//                                            else the best target of this CPU), checked to be NAME
//                                            (best: best_target()) and compared with the baseline
// Exit status: 0 passed, 1 failed, 77 skipped (QIFT_TARGET names a target this CPU lacks).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "kernel_suite.hpp"

namespace {

using dispatch_test::suite_fn;
using dispatch_test::suite_result;

constexpr std::uint64_t seed = 20240917;

/// Prints one target's run; returns false when a family failed.
bool report(std::string_view label, const suite_result& r) {
    std::size_t checks = 0, failures = 0;
    for (const auto& f : r.families) checks += f.checks, failures += f.failures;
    std::printf("%.*s (%s): %zu families, %zu checks, %zu failures\n", int(label.size()),
                label.data(), r.isa.c_str(), r.families.size(), checks, failures);
    for (const auto& f : r.families) {
        std::printf("  %-26s %4zu checks  %-9s hash %016llx  sum %.9g\n", f.name.c_str(), f.checks,
                    f.portable ? "portable"
                    : f.exact  ? "exact"
                               : "float",
                    static_cast<unsigned long long>(f.hash), f.sum);
        if (f.failures)
            std::printf("    FAILED %zu of %zu, first at %s\n", f.failures, f.checks,
                        f.first_failure.c_str());
    }
    return failures == 0 && checks > 0;
}

/// True when `r` agrees with the baseline's run: the same families, the hashes of portable
/// families equal (integer kernels: bit for bit), the others' sums within 1e-3 of the baseline's
/// Σ|y| (a coarse check: each run is already held to its references).
[[maybe_unused]] bool agrees(std::string_view label, const suite_result& r,
                             const suite_result& base) {
    if (r.families.size() != base.families.size()) {
        std::printf("MISMATCH %.*s vs baseline: %zu families against %zu\n", int(label.size()),
                    label.data(), r.families.size(), base.families.size());
        return false;
    }
    bool ok = true;
    for (std::size_t i = 0; i < r.families.size(); ++i) {
        const auto &f = r.families[i], &b = base.families[i];
        const bool same =
            f.name == b.name && f.portable == b.portable &&
            (f.portable ? f.hash == b.hash : std::fabs(f.sum - b.sum) <= 1e-3 * b.abs_sum + 1e-30);
        if (!same)
            std::printf("MISMATCH %.*s vs baseline: %s\n", int(label.size()), label.data(),
                        f.name.c_str());
        ok = ok && same;
    }
    return ok;
}

#if QIFT_DISPATCH_X86

constexpr int skipped = 77;  // ctest's SKIP_RETURN_CODE

int run_all() {
    suite_fn* base_fn = dispatch_test::kernel_suite_instance(qift::x86_target::baseline);
    if (base_fn == nullptr) {
        std::printf("FAILED: the baseline instance is not compiled in\n");
        return 1;
    }
    const suite_result base = base_fn(seed);
    bool ok = report("baseline", base);
    for (qift::x86_target t : qift::x86_targets) {
        if (t == qift::x86_target::baseline) continue;
        const std::string name(qift::target_name(t));
        suite_fn* fn = dispatch_test::kernel_suite_instance(t);
        if (fn == nullptr) {
            std::printf("FAILED: target %s is not compiled in\n", name.c_str());
            ok = false;
            continue;
        }
        if (!qift::cpu_supports(t)) {
            std::printf("%s: skipped, this CPU lacks %s\n", name.c_str(),
                        qift::detail::missing_features(t, qift::detail::cpu_words()).c_str());
            continue;
        }
        const suite_result r = fn(seed);
        ok = report(name, r) && agrees(name, r, base) && ok;
    }
    std::printf(ok ? "PASSED\n" : "FAILED\n");
    return ok ? 0 : 1;
}

int run_selected(std::string_view expect) {
    // A target this CPU lacks is a skip, not a failure; a bad name is left to the selector.
    if (const char* env = std::getenv("QIFT_TARGET"); env && *env)
        if (const auto t = qift::target_from_name(env); t && !qift::cpu_supports(*t)) {
            std::printf("skipped: QIFT_TARGET=%s, this CPU lacks %s\n", env,
                        qift::detail::missing_features(*t, qift::detail::cpu_words()).c_str());
            return skipped;
        }
    suite_fn* fn = dispatch_test::kernel_suite_select();
    qift::x86_target chosen = qift::x86_target::baseline;
    for (qift::x86_target t : qift::x86_targets)
        if (dispatch_test::kernel_suite_instance(t) == fn) chosen = t;
    const std::string name(qift::target_name(chosen));
    std::printf("selected: %s\n", name.c_str());
    bool ok = true;
    if (!expect.empty()) {
        const std::string_view want =
            expect == "best" ? qift::target_name(qift::best_target()) : expect;
        if (want != name) {
            std::printf("FAILED: expected target %.*s\n", int(want.size()), want.data());
            ok = false;
        }
    }
    const suite_result r = fn(seed);
    ok = report(name, r) && ok;
    if (chosen != qift::x86_target::baseline) {
        const suite_result base =
            dispatch_test::kernel_suite_instance(qift::x86_target::baseline)(seed);
        ok = report("baseline", base) && agrees(name, r, base) && ok;
    }
    std::printf(ok ? "PASSED\n" : "FAILED\n");
    return ok ? 0 : 1;
}

#else  // compile-time path: one instance

int run_all() {
    const bool ok = report("compile-time", dispatch_test::kernel_suite_select()(seed));
    std::printf(ok ? "PASSED\n" : "FAILED\n");
    return ok ? 0 : 1;
}
int run_selected(std::string_view) {
    return run_all();
}

#endif

}  // namespace

int main(int argc, char** argv) {
    bool selected = false;
    std::string_view expect;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--selected") {
            selected = true;
        } else if (arg == "--expect" && i + 1 < argc) {
            expect = argv[++i];
        } else {
            std::fprintf(stderr, "usage: %s [--selected [--expect NAME|best]]\n", argv[0]);
            return 2;
        }
    }
    try {
        return selected ? run_selected(expect) : run_all();
    } catch (const qift::error& e) {
        std::printf("qift::error: %s\n", e.what());
        return 1;
    }
}
