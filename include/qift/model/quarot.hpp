// SPDX-License-Identifier: MIT
// Function-preserving transformations of a Llama's float weights: per-channel FFN scales
// (smoothing), RMSNorm gain folding and QuaRot's rotations (arXiv 2404.00456).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "../core.hpp"
#include "../hadamard.hpp"
#include "llama.hpp"

namespace qift::inline QIFT_ISA {

/// Folds a per-channel scale s [hidden] between up_proj and down_proj of block `layer`: up_proj
/// (w3) rows are divided by s and down_proj (w2) columns multiplied by s. Exact, since the
/// SwiGLU output silu(gate)·up is linear in up. Apply on the original weights, before norm
/// folding and rotation (SmoothRot, arXiv 2506.05413). Throws qift::error when s has the wrong
/// length or an entry that is not positive and finite.
inline void fold_ffn_scales(llama_weights& w, std::size_t layer, std::span<const float> s) {
    auto& b = w.layers.at(layer);
    matrix<float>& up = b[linear_id::w3];
    matrix<float>& down = b[linear_id::w2];
    detail::require(s.size() == up.rows(), [&] {
        return "fold_ffn_scales: layer " + std::to_string(layer) + ": " + std::to_string(s.size()) +
               " scales for hidden size " + std::to_string(up.rows());
    });
    for (std::size_t j = 0; j < s.size(); ++j)
        detail::require(std::isfinite(s[j]) && s[j] > 0.0f, [&] {
            return "fold_ffn_scales: layer " + std::to_string(layer) + ": scale " +
                   std::to_string(j) + " is " + std::to_string(s[j]) +
                   " (must be positive and finite)";
        });
    for (std::size_t j = 0; j < up.rows(); ++j)
        for (float& v : up.row(j)) v /= s[j];
    for (std::size_t r = 0; r < down.rows(); ++r)
        for (std::size_t j = 0; j < s.size(); ++j) down(r, j) *= s[j];
}

/// Folds every RMSNorm gain into the linears that read the norm's output (q, k, v; gate, up;
/// the classifier) and empties the gains. Exact.
inline void fold_norms(llama_weights& w) {
    const auto scale_columns = [](matrix<float>& m, const std::vector<float>& g) {
        for (std::size_t r = 0; r < m.rows(); ++r)
            for (std::size_t c = 0; c < m.cols(); ++c) m(r, c) *= g[c];
    };
    for (auto& b : w.layers) {
        if (!b.rms_att.empty())
            for (linear_id id : {linear_id::wq, linear_id::wk, linear_id::wv})
                scale_columns(b[id], b.rms_att);
        if (!b.rms_ffn.empty())
            for (linear_id id : {linear_id::w1, linear_id::w3}) scale_columns(b[id], b.rms_ffn);
        b.rms_att.clear();
        b.rms_ffn.clear();
    }
    if (!w.rms_final.empty()) scale_columns(w.classifier, w.rms_final);
    w.rms_final.clear();
}

/// Options of quarot(). Rotations are randomized Hadamards (qift::rotation::for_size: the
/// seeded random-orthogonal fallback where no Hadamard of that order exists) seeded from `seed`.
struct quarot_options {
    std::uint64_t seed = 0x9e3779b9;
    /// Per-layer FFN channel scales [layers][hidden] folded first (fold_ffn_scales); empty: none.
    std::vector<std::vector<float>> ffn_scales{};
    bool rotate_residual = true;  ///< Q on the residual stream (folded)
    bool rotate_heads = true;     ///< per-head H on v/o (folded) and on q/k after RoPE (online)
    bool rotate_ffn = true;       ///< R on the down_proj input (online, folded into w2's columns)
};

/// QuaRot's transformation, exact in real arithmetic: FFN scales folded (if given), RMSNorm
/// gains folded, the residual stream rotated by Q (W·Q on the embedding rows and on the inputs
/// of q/k/v, gate/up and the classifier; Qᵀ·W on the outputs of o and down), a per-head
/// rotation H of order head_dim on v's outputs and o's inputs (folded) and on every head of q
/// and k after RoPE (online; it cancels in q·kᵀ), and a rotation R of order hidden on the
/// down_proj input (online, with R folded into down's columns). The result's float model gives
/// the original's logits up to rounding.
inline llama_weights quarot(llama_weights w, const quarot_options& opt = {}) {
    const auto& c = w.config;
    detail::require(opt.ffn_scales.empty() || opt.ffn_scales.size() == w.layers.size(), [&] {
        return "quarot: " + std::to_string(opt.ffn_scales.size()) + " FFN scale vectors for " +
               std::to_string(w.layers.size()) + " layers";
    });
    detail::require(!w.head_rotation && !w.ffn_rotation,
                    [] { return std::string("quarot: the weights are already rotated"); });
    for (std::size_t l = 0; l < opt.ffn_scales.size(); ++l)
        fold_ffn_scales(w, l, opt.ffn_scales[l]);
    fold_norms(w);
    if (opt.rotate_residual) {
        const rotation q = rotation::for_size(std::size_t(c.dim), opt.seed);
        q.rotate_rows(w.embedding);
        for (auto& b : w.layers) {
            for (linear_id id :
                 {linear_id::wq, linear_id::wk, linear_id::wv, linear_id::w1, linear_id::w3})
                q.fold_into_input(b[id]);
            q.fold_into_output(b[linear_id::wo]);
            q.fold_into_output(b[linear_id::w2]);
        }
        q.fold_into_input(w.classifier);
    }
    if (opt.rotate_heads) {
        const std::size_t hd = std::size_t(c.head_dim());
        w.head_rotation = rotation::for_size(hd, opt.seed + 1);
        for (auto& b : w.layers) {
            matrix<float>& v = b[linear_id::wv];
            for (std::size_t h = 0; h < v.rows() / hd; ++h)
                w.head_rotation->fold_into_output(matrix_view<float>(&v(h * hd, 0), hd, v.cols()));
            matrix<float>& o = b[linear_id::wo];
            for (std::size_t h = 0; h < o.cols() / hd; ++h)
                w.head_rotation->fold_into_input(
                    matrix_view<float>(&o(0, h * hd), o.rows(), hd, o.cols()));
        }
    }
    if (opt.rotate_ffn) {
        w.ffn_rotation = rotation::for_size(std::size_t(c.hidden_dim), opt.seed + 2);
        for (auto& b : w.layers) w.ffn_rotation->fold_into_input(b[linear_id::w2]);
    }
    return w;
}

/// "hadamard N" or "random orthogonal N": what a rotation is, for reports.
inline std::string describe(const rotation& r) {
    return std::string(r.type() == rotation::kind::hadamard ? "hadamard " : "random orthogonal ") +
           std::to_string(r.size());
}

}  // namespace qift
