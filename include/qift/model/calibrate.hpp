// SPDX-License-Identifier: MIT
// Calibration of a Llama model on token ids: per-site input statistics of every block (GPTQ
// Hessian, the Grams Ŝ = X̂ᵀX̂ and S = X̂ᵀX of quantized-model and float-model inputs, channel
// maxima, raw inputs on request), and quantization layer by layer, sequential as the GPTQ
// reference does it (block l calibrated on the outputs of blocks 0..l−1 already quantized) or on
// float-model inputs.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "../core.hpp"
#include "../detail/linalg.hpp"
#include "../gptq.hpp"
#include "../scale.hpp"
#include "linear.hpp"
#include "llama.hpp"

namespace qift::inline QIFT_ISA {

/// What calibration measured at one input site of one block, over N calibration tokens.
/// X̂ are the inputs the site sees in the model being quantized (blocks before it already
/// quantized in sequential mode; the float model's in float-input mode), X the float model's.
struct site_statistics {
    std::size_t tokens = 0;      ///< N
    matrix<double> gram;         ///< Ŝ = X̂ᵀX̂ = Σ_t x̂_t x̂_tᵀ [n][n]
    matrix<double> gram_float;   ///< XᵀX (when calibration_options::float_gram)
    matrix<double> cross;        ///< S = X̂ᵀX, S(i, j) = Σ_t x̂_ti x_tj (when ::cross_gram)
    std::vector<float> absmax;   ///< max_t |x̂_tj| per channel j
    matrix<float> inputs;        ///< X̂ [N][n] (when ::raw)
    matrix<float> float_inputs;  ///< X [N][n] (when ::raw and the float stream runs)

    /// GPTQ's Hessian H = (2/N)·X̂ᵀX̂ (the reference's convention; hessian_accumulator's).
    matrix<double> hessian() const {
        matrix<double> h(gram.rows(), gram.cols());
        const double f = 2.0 / double(tokens);
        for (std::size_t i = 0; i < h.size(); ++i) h.data()[i] = f * gram.data()[i];
        return h;
    }
};

/// Which inputs the quantizer of block l sees.
enum class calibration_mode {
    sequential,   ///< the model with blocks 0..l−1 already quantized (the GPTQ reference)
    float_input,  ///< the float model (X̂ = X)
};

struct calibration_options {
    calibration_mode mode = calibration_mode::sequential;
    /// Windows of the model's context taken from the ids (0: every whole window).
    std::size_t max_windows = 0;
    bool float_gram = false;  ///< also accumulate XᵀX
    bool cross_gram = false;  ///< also accumulate S = X̂ᵀX
    bool raw = false;         ///< keep the raw inputs
    /// Called after each block is quantized with (blocks done, blocks).
    std::function<void(std::size_t done, std::size_t total)> progress{};
};

/// Makes linear `id` of block `layer` from its float weights and its input site's statistics.
using calibrated_linear_maker = std::function<linear(
    std::size_t layer, linear_id id, const matrix<float>& w, const site_statistics& stats)>;

/// Round-to-nearest onto L with the per-channel searched scale (stats == nullptr), or GPTQ with
/// the site's Hessian: the codes packed into a linear with input quantization `in`.
template <packed_level_set L>
linear quantize_linear(const matrix<float>& w, input_quantization in,
                       const site_statistics* stats = nullptr, const gptq_options& opt = {}) {
    if (stats == nullptr) return linear(quantize<L>(w), in);
    return linear(gptq<L>(w, stats->hessian(), opt).quantized, in);
}

namespace detail {

/// c += aᵀ·b for a [T][n], b [T][m] (float), c [n][m] (double), through the blocked GEMM,
/// row blocks of c in parallel.
inline void add_transposed_product(matrix<double>& c, matrix_view<const float> a,
                                   matrix_view<const float> b) {
    const std::size_t T = a.rows, n = a.cols, m = b.cols;
    matrix<double> neg_at(n, T), bd(T, m);
    for (std::size_t t = 0; t < T; ++t) {
        for (std::size_t i = 0; i < n; ++i) neg_at(i, t) = -double(a(t, i));
        for (std::size_t j = 0; j < m; ++j) bd(t, j) = double(b(t, j));
    }
    constexpr std::size_t rb = 64;
    parallel_for((n + rb - 1) / rb, [&](std::size_t b0, std::size_t b1) {
        for (std::size_t k = b0; k < b1; ++k) {
            const std::size_t i0 = k * rb, rows = std::min(rb, n - i0);
            gemm_sub<double>(matrix_view<double>(&c(i0, 0), rows, m, m),
                             matrix_view<const double>(&neg_at(i0, 0), rows, T, T), bd.view());
        }
    });
}

inline void check_calibration_ids(std::span<const int> ids, const llama2c_config& c,
                                  std::size_t windows) {
    detail::require(windows >= 1, [&] {
        return "calibration: " + std::to_string(ids.size()) + " ids hold no whole window of " +
               std::to_string(c.seq_len) + " tokens";
    });
    for (std::size_t i = 0; i < windows * std::size_t(c.seq_len); ++i)
        detail::require(ids[i] >= 0 && ids[i] < c.vocab_size, [&] {
            return "calibration: id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                   " is outside [0, " + std::to_string(c.vocab_size) + ")";
        });
}

}  // namespace detail

/// Quantizes the model block by block on calibration ids (windows of the context, each from
/// position 0 with empty caches). For block l: the inputs X̂ of its four sites are captured over
/// every window (sequential: on the stream of the model whose blocks 0..l−1 are already
/// quantized — linears as made, A4 and KV as configured — with block l still float; float_input:
/// on the float model's stream), statistics accumulated, every linear made by
/// `make(l, id, W, stats of its site)`, and the quantized stream advanced through the new block.
/// The float stream (float_input mode, or float_gram / cross_gram / raw float inputs) runs the
/// float model with a float cache. `statistics`, when given, receives every site's statistics
/// [layers][site]. Memory: two residual streams of windows·T·dim floats, plus the raw inputs on
/// request. Throws qift::error for ids that hold no window or are out of range.
inline llama_model quantize_calibrated(
    const llama_weights& w, const calibrated_linear_maker& make, kv_format kv,
    std::span<const int> ids, const calibration_options& opt = {},
    std::vector<std::array<site_statistics, site_count>>* statistics = nullptr) {
    const auto& c = w.config;
    const std::size_t T = std::size_t(c.seq_len), d = std::size_t(c.dim);
    std::size_t windows = ids.size() / T;
    if (opt.max_windows) windows = std::min(windows, opt.max_windows);
    detail::check_calibration_ids(ids, c, windows);
    const bool sequential = opt.mode == calibration_mode::sequential;
    const bool float_stream = !sequential || opt.float_gram || opt.cross_gram || opt.raw;

    const llama_model fm = float_model(w);
    llama_model qm = build_model(
        w, [](std::size_t, linear_id, const matrix<float>& m) { return linear(m); }, kv);
    llama_state sf(fm, T), sq(qm, T);
    matrix<float> xq(sequential ? windows * T : 0, d), xf(float_stream ? windows * T : 0, d),
        tmp(T, d);
    for (std::size_t i = 0; i < windows; ++i) {
        const std::span<const int> win = ids.subspan(i * T, T);
        if (sequential) embed(fm, win, matrix_view<float>(&xq(i * T, 0), T, d));
        if (float_stream) embed(fm, win, matrix_view<float>(&xf(i * T, 0), T, d));
    }
    const auto window = [&](matrix<float>& x, std::size_t i) {
        return matrix_view<float>(&x(i * T, 0), T, d);
    };

    std::vector<std::array<site_statistics, site_count>> all;
    for (std::size_t l = 0; l < w.layers.size(); ++l) {
        std::array<site_statistics, site_count> st;
        // Captured inputs of one window per site, from the stream being quantized (hat) and
        // the float stream.
        std::array<matrix<float>, site_count> hat, flt;
        const auto capture = [](std::array<matrix<float>, site_count>& into) {
            return [&into](std::size_t, input_site s, matrix_view<const float> x) {
                into[static_cast<unsigned>(s)] = matrix<float>::from(x);
            };
        };
        sq.observe(capture(hat));
        sf.observe(capture(flt));
        for (std::size_t i = 0; i < windows; ++i) {
            if (sequential) {
                std::copy_n(&xq(i * T, 0), T * d, tmp.data());
                sq.reset();
                forward_block(qm, l, sq, tmp);
            }
            if (float_stream) {
                sf.reset();
                forward_block(fm, l, sf, window(xf, i));
            }
            for (std::size_t s = 0; s < site_count; ++s) {
                const matrix<float>& xh = sequential ? hat[s] : flt[s];
                site_statistics& ss = st[s];
                const std::size_t n = xh.cols();
                if (ss.tokens == 0) {
                    ss.gram = matrix<double>(n, n);
                    ss.absmax.assign(n, 0.0f);
                    if (opt.float_gram) ss.gram_float = matrix<double>(n, n);
                    if (opt.cross_gram) ss.cross = matrix<double>(n, n);
                    if (opt.raw) {
                        ss.inputs = matrix<float>(windows * T, n);
                        if (float_stream) ss.float_inputs = matrix<float>(windows * T, n);
                    }
                }
                detail::add_transposed_product(ss.gram, xh, xh);
                if (opt.float_gram) detail::add_transposed_product(ss.gram_float, flt[s], flt[s]);
                if (opt.cross_gram) detail::add_transposed_product(ss.cross, xh, flt[s]);
                for (std::size_t t = 0; t < xh.rows(); ++t)
                    for (std::size_t j = 0; j < n; ++j)
                        ss.absmax[j] = std::max(ss.absmax[j], std::fabs(xh(t, j)));
                if (opt.raw) {
                    std::copy_n(xh.data(), xh.size(), &ss.inputs(ss.tokens, 0));
                    if (float_stream)
                        std::copy_n(flt[s].data(), flt[s].size(), &ss.float_inputs(ss.tokens, 0));
                }
                ss.tokens += xh.rows();
            }
        }
        for (linear_id id : all_linears) {
            qm.layers[l][id] = make(l, id, w.layers[l][id], st[static_cast<unsigned>(site_of(id))]);
            detail::check_made_linear(l, id, w.layers[l][id], qm.layers[l][id]);
        }
        sq.observe({});
        sf.observe({});
        if (sequential) {
            for (std::size_t i = 0; i < windows; ++i) {
                sq.reset();
                forward_block(qm, l, sq, window(xq, i));
            }
        }
        if (statistics) all.push_back(std::move(st));
        if (opt.progress) opt.progress(l + 1, w.layers.size());
    }
    if (statistics) *statistics = std::move(all);
    return qm;
}

/// The statistics alone, of the float model (float_input mode, nothing quantized):
/// [layers][site].
inline std::vector<std::array<site_statistics, site_count>> calibrate(
    const llama_weights& w, std::span<const int> ids, calibration_options opt = {}) {
    opt.mode = calibration_mode::float_input;
    std::vector<std::array<site_statistics, site_count>> out;
    quantize_calibrated(
        w,
        [](std::size_t, linear_id, const matrix<float>& m, const site_statistics&) {
            return linear(m);
        },
        {}, ids, opt, &out);
    return out;
}

}  // namespace qift
