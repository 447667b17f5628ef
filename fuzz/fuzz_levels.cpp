// SPDX-License-Identifier: MIT
// libFuzzer target: level-set encode on arbitrary floats (NaN, infinities, denormals included),
// scale search + RTN quantization and the distribution statistics of arbitrary matrices.
// Properties: a finite value encodes to a nearest level; quantize refuses a matrix with a value
// that is not finite or beyond ±max_weight_magnitude with qift::error and otherwise returns
// finite scales and values; matrix_stats refuses exactly the non-finite matrices.
#include <cmath>

#include <qift/levels.hpp>
#include <qift/scale.hpp>
#include <qift/stats.hpp>

#include "fuzz_support.hpp"

namespace {

template <class L>
void encode_all(std::span<const float> xs) {
    using T = qift::level_traits<L>;
    for (float x : xs) {
        const std::uint8_t c = T::encode(x);
        if (c >= L::levels.size()) qift::fuzz::violated("encode: code out of range");
        if (!std::isfinite(x)) continue;
        const double got = std::fabs(double(x) - double(T::decode(c)));
        for (float l : L::levels)
            if (std::fabs(double(x) - double(l)) < got)
                qift::fuzz::violated("encode: not a nearest level");
    }
}

template <class L>
void quantize_matrix(const qift::matrix<float>& w, bool finite, std::size_t group) {
    try {
        const auto q = qift::quantize<L>(w.view(), {.group_size = group});
        if (!finite) qift::fuzz::violated("quantize: accepted a non-finite matrix");
        for (float s : q.scales().flat())
            if (!std::isfinite(s)) qift::fuzz::violated("quantize: non-finite scale");
        const auto d = q.dequantize();
        for (float v : d.flat())
            if (!std::isfinite(v)) qift::fuzz::violated("quantize: non-finite value");
    } catch (const qift::error&) {
        if (finite && !w.empty() && (group == 0 || w.cols() % group == 0))
            qift::fuzz::violated("quantize: refused a valid matrix");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    qift::fuzz::byte_reader in(data, size);
    const std::size_t rows = 1 + in.take<std::uint8_t>() % 4;
    const std::size_t group = std::size_t(in.take<std::uint8_t>() % 3) * 16;  // 0, 16, 32
    std::vector<float> xs(in.remaining() / sizeof(float));
    if (!xs.empty()) std::memcpy(xs.data(), in.rest().data(), xs.size() * sizeof(float));
    encode_all<qift::levels::mnz>(xs);
    encode_all<qift::levels::pot_mnz>(xs);
    encode_all<qift::levels::standard>(xs);
    encode_all<qift::levels::nf2>(xs);
    encode_all<qift::levels::int4>(xs);
    encode_all<qift::levels::e2m1>(xs);
    if (xs.size() < rows) return 0;
    const std::size_t cols = xs.size() / rows;
    qift::matrix<float> w(rows, cols);
    bool finite = true;
    for (std::size_t i = 0; i < w.size(); ++i) {
        w.flat()[i] = xs[i];
        finite = finite && std::fabs(xs[i]) <= qift::max_weight_magnitude;
    }
    quantize_matrix<qift::levels::mnz>(w, finite, group);
    quantize_matrix<qift::levels::asymmetric>(w, finite, group);
    quantize_matrix<qift::levels::int4>(w, finite, group);
    bool all_finite = true;
    for (float v : w.flat()) all_finite = all_finite && std::isfinite(v);
    try {
        const auto s = qift::matrix_stats(w.view());
        if (!all_finite) qift::fuzz::violated("matrix_stats: accepted a non-finite matrix");
        (void)s;
    } catch (const qift::error&) {
        if (all_finite) qift::fuzz::violated("matrix_stats: refused a finite matrix");
    }
    return 0;
}
