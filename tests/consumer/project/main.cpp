// SPDX-License-Identifier: MIT
// A downstream program: includes the umbrella header and quantizes a small matrix.
#include <qift/qift.hpp>

#include <cstdio>

int main() {
    qift::matrix<float> w(4, 8);
    for (std::size_t i = 0; i < w.size(); ++i) w.data()[i] = static_cast<float>(i % 7) - 3.0f;
    const auto q = qift::quantize<qift::levels::mnz>(w);
    const auto deq = q.dequantize();
    std::printf("consumer: %zux%zu quantized, first scale %g, deq(0,0) %g\n", q.rows(), q.cols(),
                static_cast<double>(q.scales(0, 0)), static_cast<double>(deq(0, 0)));
    return deq.rows() == 4 ? 0 : 1;
}
