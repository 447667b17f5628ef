// SPDX-License-Identifier: MIT
// Built with -fno-exceptions: the whole library compiles, and bad input aborts with the message
// a qift::error would carry (the tests expect it on stderr). The argument picks the bad input:
// none, a group size that does not divide the row ("quantize"); "matrix", a matrix whose size
// overflows std::size_t (refused before the allocation, which would otherwise abort silently in
// std::vector); "npy", an in-memory .npy file whose shape product overflows.
#include <qift/qift.hpp>

#include <cstring>
#include <string>

int main(int argc, char** argv) {
    const char* what = argc > 1 ? argv[1] : "quantize";
    if (std::strcmp(what, "matrix") == 0) {
        const qift::matrix<float> m(std::size_t{1} << 32, std::size_t{1} << 32);
        return m.empty() ? 0 : 1;
    }
    if (std::strcmp(what, "npy") == 0) {
        std::string dict =
            "{'descr': '<f4', 'fortran_order': False, 'shape': (8589934592, "
            "8589934592), }";
        dict.append((64 - (10 + dict.size() + 1) % 64) % 64, ' ');
        dict += '\n';
        std::string bytes("\x93NUMPY\x01\x00", 8);
        bytes += static_cast<char>(dict.size() & 0xff);
        bytes += static_cast<char>(dict.size() >> 8);
        bytes += dict;
        return qift::parse_npy<float>(bytes, "overflow.npy").data.empty() ? 0 : 1;
    }
    qift::matrix<float> w(2, 6, 1.0f);
    qift::scale_options opt;
    opt.group_size = 4;  // does not divide 6
    (void)qift::quantize<qift::levels::mnz>(w, opt);
    return 0;
}
