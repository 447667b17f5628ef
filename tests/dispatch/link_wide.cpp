// SPDX-License-Identifier: MIT
// The link test's second translation unit, compiled for avx512_vnni (x86-64-v4 + VNNI + VBMI).
#include "link_common.hpp"

std::vector<float> wide_gemv() {
    return link_test_gemv();
}
const char* wide_isa_name() {
    return link_test_isa_name();
}
