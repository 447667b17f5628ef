// SPDX-License-Identifier: MIT
// Built with -fno-exceptions: the whole library compiles, and bad input aborts with the message
// a qift::error would carry (the test expects it on stderr).
#include <qift/qift.hpp>

int main() {
    qift::matrix<float> w(2, 6, 1.0f);
    qift::scale_options opt;
    opt.group_size = 4;  // does not divide 6
    (void)qift::quantize<qift::levels::mnz>(w, opt);
    return 0;
}
