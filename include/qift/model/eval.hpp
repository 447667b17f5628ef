// SPDX-License-Identifier: MIT
// Evaluation of a Llama model on token ids: perplexity over non-overlapping windows of the
// context, and the KL divergence from a reference (float) model and top-1 agreement with it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../core.hpp"
#include "../detail/softmax_kernels.hpp"
#include "../npy.hpp"
#include "llama.hpp"

namespace qift::inline QIFT_ISA {

/// Reads token ids from a 1-D .npy file of int32 or int64 and checks them against a vocabulary
/// of `vocab_size` tokens. Throws qift::error naming the file when it cannot be read, is not
/// 1-D integer, is empty, or holds an id outside [0, vocab_size) (naming the id and index).
inline std::vector<int> load_token_ids(const std::string& path, int vocab_size) {
    const std::string bytes = detail::read_file_bytes(path);
    const npy_header h = detail::parse_npy_header(bytes, path);
    detail::require(
        h.kind == 'i' && (h.item_size == 4 || h.item_size == 8) && h.shape.size() == 1, [&] {
            return "load_token_ids: " + path + " must be a 1-D int32 or int64 array, got '" +
                   std::string(1, h.kind) + std::to_string(h.item_size) + "' of rank " +
                   std::to_string(h.shape.size());
        });
    std::vector<int> ids;
    if (h.item_size == 4) {
        const auto a = parse_npy<std::int32_t>(bytes, path);
        ids.assign(a.data.begin(), a.data.end());
    } else {
        const auto a = parse_npy<std::int64_t>(bytes, path);
        for (std::int64_t v : a.data)
            ids.push_back(static_cast<int>(std::clamp<std::int64_t>(v, -1, vocab_size)));
    }
    detail::require(!ids.empty(), [&] { return "load_token_ids: " + path + " holds no ids"; });
    for (std::size_t i = 0; i < ids.size(); ++i)
        detail::require(ids[i] >= 0 && ids[i] < vocab_size, [&] {
            return "load_token_ids: " + path + ": id " + std::to_string(ids[i]) + " at index " +
                   std::to_string(i) + " is outside the vocabulary [0, " +
                   std::to_string(vocab_size) + ")";
        });
    return ids;
}

/// A reference model's logits on the evaluation windows of some ids, computed once so that many
/// models can be compared with it without rerunning it (evaluate's `reference_logits`).
/// Memory: windows·T·vocab floats (3.6 GB for prose6M's 857 test windows).
class reference_logits {
  public:
    reference_logits(const llama_model& ref, std::span<const int> ids, std::size_t max_windows = 0,
                     const std::function<void(std::size_t, std::size_t)>& progress = {})
        : T_(std::size_t(ref.config.seq_len)), V_(std::size_t(ref.config.vocab_size)) {
        windows_ = ids.size() > 0 ? (ids.size() - 1) / T_ : 0;
        if (max_windows) windows_ = std::min(windows_, max_windows);
        logits_.resize(windows_ * T_ * V_);
        llama_state s(ref, T_);
        for (std::size_t k = 0; k < windows_; ++k) {
            s.reset();
            const auto r = forward(ref, s, ids.subspan(k * T_, T_));
            std::copy_n(r.data, T_ * V_, logits_.data() + k * T_ * V_);
            if (progress) progress(k + 1, windows_);
        }
    }
    std::size_t windows() const noexcept { return windows_; }
    /// Logits [T][vocab] of window k.
    matrix_view<const float> window(std::size_t k) const noexcept {
        return {logits_.data() + k * T_ * V_, T_, V_};
    }

  private:
    std::size_t T_, V_, windows_ = 0;
    std::vector<float> logits_;
};

struct eval_options {
    /// Evaluate only the first N windows (0: all).
    std::size_t max_windows = 0;
    /// When set: KL(reference ‖ model) and top-1 agreement, the reference run on the same
    /// windows (typically the float model).
    const llama_model* reference = nullptr;
    /// Or the reference's logits computed beforehand (on the same ids, at least as many
    /// windows); takes precedence over `reference`.
    const reference_logits* cached_reference = nullptr;
    /// Called after each window with (windows done, windows).
    std::function<void(std::size_t done, std::size_t total)> progress{};
};

struct eval_result {
    double perplexity = 0;  ///< exp(mean NLL)
    double nll = 0;         ///< mean negative log-likelihood (nats per token)
    double kl = 0;          ///< mean KL(reference ‖ model) per token (0 without a reference)
    double top1 = 0;        ///< fraction of tokens where both argmaxes agree (with a reference)
    std::size_t tokens = 0, windows = 0;
};

namespace detail {

/// log Σ exp(x) (max subtracted; exponentials in float, the sum in double), and with `y`
/// also Σ_i p_i·(x_i − y_i) for p = softmax(x).
inline double log_sum_exp(std::span<const float> x, const float* y = nullptr,
                          double* expected_diff = nullptr) noexcept {
    const float m = *std::max_element(x.begin(), x.end());
    double z = 0.0, w = 0.0;
    sum_exp_kernel{}(xsimd::default_arch{}, x.data(), y, x.size(), m, z, w);
    if (expected_diff) *expected_diff = w / z;
    return double(m) + std::log(z);
}

inline std::size_t argmax(std::span<const float> x) noexcept {
    return std::size_t(std::max_element(x.begin(), x.end()) - x.begin());
}

}  // namespace detail

/// Perplexity of `m` on `ids` as the llama2.c model cards define it: with T = seq_len, window
/// k has inputs ids[kT : (k+1)T] and targets ids[kT+1 : (k+1)T+1] for k < (n − 1)/T, each window
/// from position 0 with empty caches, run as one prefill; perplexity = exp(mean NLL over every
/// predicted token), logits float32, log-sum-exp accumulated in double
/// (detail::sum_exp_kernel: float exponentials, about 1e-7 relative). With a reference model, also
/// the mean KL(reference ‖ m) of the next-token distributions and the top-1 agreement. Throws
/// qift::error when the ids hold no whole window or an id is out of range.
inline eval_result evaluate(const llama_model& m, std::span<const int> ids,
                            const eval_options& opt = {}) {
    const std::size_t T = std::size_t(m.config.seq_len);
    std::size_t windows = ids.size() > 0 ? (ids.size() - 1) / T : 0;
    if (opt.max_windows) windows = std::min(windows, opt.max_windows);
    detail::require(windows >= 1, [&] {
        return "evaluate: " + std::to_string(ids.size()) + " ids hold no whole window of " +
               std::to_string(T) + " inputs and their targets";
    });
    for (std::size_t i = 0; i <= windows * T; ++i)
        detail::require(ids[i] >= 0 && ids[i] < m.config.vocab_size, [&] {
            return "evaluate: id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                   " is outside [0, " + std::to_string(m.config.vocab_size) + ")";
        });
    if (opt.reference)
        detail::require(
            opt.reference->config.vocab_size == m.config.vocab_size &&
                opt.reference->config.seq_len == m.config.seq_len,
            [] {
                return std::string("evaluate: the reference model's vocabulary or context differs");
            });
    if (opt.cached_reference)
        detail::require(opt.cached_reference->windows() >= windows, [&] {
            return "evaluate: the cached reference holds " +
                   std::to_string(opt.cached_reference->windows()) + " windows, " +
                   std::to_string(windows) + " are evaluated";
        });
    llama_state s(m, T);
    std::optional<llama_state> rs;
    if (opt.reference && !opt.cached_reference) rs.emplace(*opt.reference, T);
    const bool with_reference = opt.cached_reference || rs;
    std::vector<float> ref_logits;
    double nll = 0, kl = 0;
    std::size_t agree = 0;
    const std::size_t V = std::size_t(m.config.vocab_size);
    for (std::size_t k = 0; k < windows; ++k) {
        const std::span<const int> in = ids.subspan(k * T, T);
        const float* ref = nullptr;
        if (opt.cached_reference) {
            ref = opt.cached_reference->window(k).data;
        } else if (rs) {
            rs->reset();
            const auto r = forward(*opt.reference, *rs, in);
            ref_logits.assign(r.data, r.data + T * V);
            ref = ref_logits.data();
        }
        s.reset();
        const auto logits = forward(m, s, in);
        for (std::size_t t = 0; t < T; ++t) {
            const std::span<const float> la = logits.row(t);
            const double lse = detail::log_sum_exp(la);
            nll += lse - double(la[std::size_t(ids[k * T + t + 1])]);
            if (ref) {
                const std::span<const float> lb(ref + t * V, V);
                // KL = Σ p_b (log p_b − log p_a) = Σ p_b (b − a) − lse_b + lse_a.
                double e = 0;
                const double lse_b = detail::log_sum_exp(lb, la.data(), &e);
                kl += e - lse_b + lse;
                agree += detail::argmax(la) == detail::argmax(lb);
            }
        }
        if (opt.progress) opt.progress(k + 1, windows);
    }
    eval_result r;
    r.windows = windows;
    r.tokens = windows * T;
    r.nll = nll / double(r.tokens);
    r.perplexity = std::exp(r.nll);
    if (with_reference) {
        r.kl = kl / double(r.tokens);
        r.top1 = double(agree) / double(r.tokens);
    }
    return r;
}

}  // namespace qift
