// SPDX-License-Identifier: MIT
// The link test: this translation unit is compiled for the baseline (x86-64), link_wide.cpp for
// avx512_vnni, and both call qift::isa_name() (an inline function whose body is QIFT_ISA_NAME)
// and qift::gemv. Every qift name lives in a namespace named after the target
// (detail/target.hpp), so the two units' copies have different symbols and each unit runs its
// own: the names differ and the GEMVs agree bit for bit. Before that namespace, both units
// defined qift::isa_name() and qift::gemv<...>(...) under one mangled name each; the linker kept
// one copy (the first unit's) for both, so the wide unit silently ran baseline code, or, with the
// units in the other order, the baseline unit ran AVX-512 code and crashed on older CPUs.
#include <cstdio>
#include <cstring>
#include <string>

#include "link_common.hpp"

int main() {
    const std::string base_name = link_test_isa_name();
    const std::vector<float> base = link_test_gemv();
    std::printf("baseline unit: %s\n", base_name.c_str());
    if (!qift::cpu_supports(qift::x86_target::avx512_vnni)) {
        std::printf(
            "skipped: this CPU lacks %s\n",
            qift::detail::missing_features(qift::x86_target::avx512_vnni, qift::detail::cpu_words())
                .c_str());
        return 77;
    }
    const std::string wide_name = wide_isa_name();
    const std::vector<float> wide = wide_gemv();
    std::printf("avx512_vnni unit: %s\n", wide_name.c_str());
    bool ok = base_name == "isa_x86v1" && wide_name == "isa_x86v4_vnni_vbmi";
    if (!ok) std::printf("FAILED: unexpected target namespace names\n");
    const bool equal = base.size() == wide.size() &&
                       std::memcmp(base.data(), wide.data(), base.size() * sizeof(float)) == 0;
    if (!equal) std::printf("FAILED: the two units' GEMVs differ\n");
    ok = ok && equal;
    std::printf(ok ? "PASSED\n" : "FAILED\n");
    return ok ? 0 : 1;
}
