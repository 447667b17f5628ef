// SPDX-License-Identifier: MIT
// libFuzzer target: MXFP4 quantization of arbitrary floats in the three rounding modes, against
// the per-block reference bit for bit (NaN blocks included), its dequantization, and the ggml
// block_mxfp4 reader on arbitrary bytes and shapes (sizes that overflow must be refused).
#include <cmath>

#include <qift/mx.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    qift::fuzz::byte_reader in(data, size);
    const auto mode = static_cast<qift::mx_rounding>(in.take<std::uint8_t>() % 3);
    const std::size_t rows = 1 + in.take<std::uint8_t>() % 3;
    const auto ggml_rows = in.take<std::uint64_t>(), ggml_cols = in.take<std::uint64_t>();
    const auto rest = in.rest();
    try {
        (void)qift::from_ggml_mxfp4(rest, ggml_rows, ggml_cols);
    } catch (const qift::error&) {
    }
    std::vector<float> xs(rest.size() / sizeof(float));
    if (!xs.empty()) std::memcpy(xs.data(), rest.data(), xs.size() * sizeof(float));
    if (xs.size() < rows) return 0;
    const std::size_t cols = xs.size() / rows;
    const qift::matrix_view<const float> x(xs.data(), rows, cols);
    const auto q = qift::quantize_mxfp4(x, mode);
    std::uint8_t codes[qift::mxfp4_matrix::block_bytes];
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t b = 0; b * 32 < cols; ++b) {
            const std::size_t n = std::min<std::size_t>(32, cols - b * 32);
            float block[32] = {};
            std::copy_n(&x(r, b * 32), n, block);
            const std::uint8_t e = qift::quantize_mxfp4_block({block, 32}, codes, mode);
            if (e != q.row_scales(r)[b]) qift::fuzz::violated("mxfp4: scale differs");
            if (std::memcmp(codes, q.row_codes(r) + b * 16, 16) != 0)
                qift::fuzz::violated("mxfp4: codes differ");
        }
    const auto d = qift::dequantize(q);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t k = 0; k < cols; ++k)
            if (std::isfinite(x(r, k)) && std::fabs(x(r, k)) < 1e30f &&
                q.row_scales(r)[k / 32] != qift::e8m0_nan && !std::isfinite(d(r, k)))
                qift::fuzz::violated("mxfp4: a finite block dequantized to a non-finite value");
    return 0;
}
