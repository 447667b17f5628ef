// SPDX-License-Identifier: MIT
// Smooth rotation of a W4A4 linear layer: per-channel scales s moved from its input X into its
// weights W (X·diag(1/s) and W·diag(s), exact in real arithmetic), then an orthogonal rotation,
// with s chosen to minimize the quantized layer's output error. SmoothRot (arXiv 2506.05413:
// max statistics, α search) and its follow-up (arXiv 2606.09927: quantile statistics, joint
// (α, q) search, trained scales): channel statistics (exact and streaming), the scale rule, the
// layer error with its straight-through gradient, the grid search and Adam training. Folding the
// chosen scales into a model's down_proj is fold_ffn_scales (model/quarot.hpp); this header
// does not depend on the model layer.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "act.hpp"
#include "core.hpp"
#include "detail/linalg.hpp"
#include "detail/scale_kernels.hpp"
#include "detail/xsimd.hpp"
#include "hadamard.hpp"
#include "levels.hpp"
#include "scale.hpp"

namespace qift::inline QIFT_ISA {

// ---------------------------------------------------------------------------------------
// Per-channel activation statistics

namespace detail {

inline std::string shape_of(matrix_view<const float> m) {
    return std::to_string(m.rows) + "x" + std::to_string(m.cols);
}

/// Throws unless m is non-empty, has stride >= cols and only finite values; the message starts
/// with `fn`, names the argument `what` and the first bad element.
inline void check_finite_matrix(matrix_view<const float> m, const std::string& fn,
                                const char* what) {
    require(!m.empty(), [&] { return fn + ": " + what + " is empty (" + shape_of(m) + ")"; });
    require(m.stride >= m.cols, [&] {
        return fn + ": " + what + ".stride " + std::to_string(m.stride) + " < " + what + ".cols " +
               std::to_string(m.cols);
    });
    for (std::size_t r = 0; r < m.rows; ++r)
        for (std::size_t c = 0; c < m.cols; ++c)
            require(std::isfinite(m(r, c)), [&] {
                return fn + ": " + what + "(" + std::to_string(r) + ", " + std::to_string(c) +
                       ") is " + std::to_string(m(r, c)) + " (must be finite)";
            });
}

inline void check_quantile_level(double q, const std::string& fn) {
    require(q > 0.0 && q <= 1.0,
            [&] { return fn + ": quantile level q must be in (0, 1], got " + std::to_string(q); });
}

/// Where the q-quantile of N sorted values v[0] <= ... <= v[N−1] lies under linear
/// interpolation: position p = q·(N−1), lower rank lo = ⌊p⌋, weight frac = p − lo; the quantile
/// is v[lo] + frac·(v[lo+1] − v[lo]) (v[lo] when frac = 0).
struct quantile_rank {
    std::size_t lo = 0;
    double frac = 0.0;
};

inline quantile_rank rank_of(double q, std::size_t n) noexcept {
    const double p = q * static_cast<double>(n - 1);
    const double floor_p = std::floor(p);
    const auto lo = static_cast<std::size_t>(floor_p);
    if (lo >= n - 1) return {n - 1, 0.0};
    return {lo, p - floor_p};
}

inline float interpolate(double lo, double hi, double frac) noexcept {
    return frac == 0.0 ? static_cast<float>(lo) : static_cast<float>(lo + frac * (hi - lo));
}

}  // namespace detail

/// a_j = max_t |X(t, j)| for X [tokens][n] (row-major, any stride): SmoothRot's activation
/// statistic. Throws qift::error for an empty X or a non-finite value (naming its position).
/// O(tokens·n).
inline std::vector<float> channel_absmax(matrix_view<const float> x) {
    detail::check_finite_matrix(x, "channel_absmax", "x");
    std::vector<float> a(x.cols, 0.0f);
    for (std::size_t t = 0; t < x.rows; ++t)
        for (std::size_t j = 0; j < x.cols; ++j) a[j] = std::max(a[j], std::fabs(x(t, j)));
    return a;
}

/// Exact per-channel quantiles of |X(t, j)| over the tokens t, for every level in `qs`:
/// out(i, j) = the qs[i]-quantile of {|X(0, j)|, ..., |X(T−1, j)|} [qs.size()][n].
/// Convention: linear interpolation between order statistics, position p = q·(T−1) (numpy's
/// default "linear" method and torch.quantile's default, which the follow-up's reference
/// uses), computed in double and rounded to float once. q = 1 is the absmax; one token gives
/// |X(0, j)| for every q. Selection, not sorting: per channel, std::nth_element at each rank in
/// ascending order on the part not yet fixed (and a minimum scan for the upper neighbour),
/// O(T) expected per level. Channels are processed in blocks of 16 (gathered once into a
/// transposed tile), blocks in parallel. Throws qift::error for an empty X or qs, a non-finite
/// value, or a level outside (0, 1].
inline matrix<float> channel_quantiles(matrix_view<const float> x, std::span<const double> qs) {
    detail::check_finite_matrix(x, "channel_quantiles", "x");
    detail::require(!qs.empty(), [] { return std::string("channel_quantiles: no levels given"); });
    for (double q : qs) detail::check_quantile_level(q, "channel_quantiles");
    const std::size_t tokens = x.rows, n = x.cols, nq = qs.size();
    std::vector<std::size_t> order(nq);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t i, std::size_t k) { return qs[i] < qs[k]; });
    std::vector<detail::quantile_rank> ranks(nq);
    for (std::size_t i = 0; i < nq; ++i) ranks[i] = detail::rank_of(qs[i], tokens);
    matrix<float> out(nq, n);
    constexpr std::size_t block = 16;
    const std::size_t blocks = (n + block - 1) / block;
    parallel_for(blocks, [&](std::size_t begin, std::size_t end) {
        std::vector<float> tile(block * tokens);
        for (std::size_t b = begin; b < end; ++b) {
            const std::size_t c0 = b * block, width = std::min(block, n - c0);
            for (std::size_t t = 0; t < tokens; ++t)
                for (std::size_t k = 0; k < width; ++k)
                    tile[k * tokens + t] = std::fabs(x(t, c0 + k));
            for (std::size_t k = 0; k < width; ++k) {
                float* v = tile.data() + k * tokens;
                std::size_t start = 0;  // [0, start) holds the smallest `start` values
                for (std::size_t i : order) {
                    const detail::quantile_rank r = ranks[i];
                    std::nth_element(v + start, v + r.lo, v + tokens);
                    start = r.lo;
                    const double lo = v[r.lo];
                    const double hi =
                        r.frac > 0.0 ? double(*std::min_element(v + r.lo + 1, v + tokens)) : lo;
                    out(i, c0 + k) = detail::interpolate(lo, hi, r.frac);
                }
            }
        }
    });
    return out;
}

/// One level: the qs = {q} row of channel_quantiles as a vector [n].
inline std::vector<float> channel_quantile(matrix_view<const float> x, double q) {
    const double qs[1] = {q};
    const matrix<float> m = channel_quantiles(x, qs);
    return {m.row(0).begin(), m.row(0).end()};
}

/// Bounded-memory streaming estimate of the per-channel quantiles of |x| over any number of
/// token batches (the calibration set need not be held in memory).
///
/// Each channel keeps a histogram with logarithmic buckets of ratio γ = (1+ε)/(1−ε) over
/// [min_value, max_value]: a value v in that range falls in bucket k = ⌈log_γ(v/min_value)⌉,
/// which covers (min_value·γ^(k−1), min_value·γ^k] and is represented by
/// min_value·γ^k·2/(γ+1), within relative error ε of every value in it. Values below min_value
/// (zeros included) share one bucket represented by 0; values above max_value share one
/// represented by the channel's exact maximum; every representative is capped at that maximum
/// (which only moves it closer to the values of its bucket). The exact per-channel maximum and
/// token count are kept too.
///
/// Error bound (tested): quantile(q) uses the same interpolation as channel_quantiles, with
/// each of the two order statistics replaced by its bucket's representative. When both lie in
/// [min_value, max_value], |estimate − exact| ≤ ε·exact (up to float rounding of the result
/// and of the bucket index, ~1e-7 relative); when they lie below min_value the absolute error
/// is below min_value; q = 1 is exact (the maximum). Above max_value the error is not bounded.
///
/// Memory: channels·(⌈ln(max_value/min_value)/ln γ⌉ + 3) 32-bit counters, for the defaults
/// (ε = 0.01, [1e-6, 1e6]) 1385 per channel, 5.4 KiB: 58 MiB at n = 11008, against 172 MiB for
/// 4096 tokens of float activations. add() costs one logarithm per value, O(rows·channels),
/// channel blocks in parallel; quantiles() O(channels·buckets) per level.
class channel_quantile_sketch {
  public:
    /// An empty sketch of `channels` channels. Throws qift::error when channels is 0, ε is not
    /// in (0, 0.5], the range is not 0 < min_value < max_value < inf, or it needs more than
    /// 2^20 buckets per channel.
    explicit channel_quantile_sketch(std::size_t channels, double relative_error = 0.01,
                                     double min_value = 1e-6, double max_value = 1e6)
        : channels_(channels), eps_(relative_error), min_(min_value), max_value_(max_value) {
        detail::require(channels > 0,
                        [] { return std::string("channel_quantile_sketch: channels is 0"); });
        detail::require(relative_error > 0.0 && relative_error <= 0.5, [&] {
            return "channel_quantile_sketch: relative_error must be in (0, 0.5], got " +
                   std::to_string(relative_error);
        });
        detail::require(min_value > 0.0 && max_value > min_value && std::isfinite(max_value), [&] {
            return "channel_quantile_sketch: need 0 < min_value < max_value < "
                   "inf, got min_value " +
                   std::to_string(min_value) + ", max_value " + std::to_string(max_value);
        });
        gamma_ = (1.0 + eps_) / (1.0 - eps_);
        log_gamma_ = std::log(gamma_);
        const double top = std::ceil(std::log(max_value / min_value) / log_gamma_);
        detail::require(top <= double(std::size_t{1} << 20), [&] {
            return "channel_quantile_sketch: " + std::to_string(top) +
                   " buckets per channel exceed 2^20 (raise relative_error or narrow the range)";
        });
        top_ = static_cast<std::size_t>(top);
        buckets_ = top_ + 3;
        counts_.assign(detail::checked_size<std::uint32_t>(
                           {channels_, buckets_}, "channel_quantile_sketch: channels x buckets"),
                       0u);
        max_.assign(channels_, 0.0f);
    }

    std::size_t channels() const noexcept { return channels_; }
    /// Tokens (rows) added so far.
    std::size_t tokens() const noexcept { return tokens_; }
    double relative_error() const noexcept { return eps_; }
    double min_value() const noexcept { return min_; }
    double max_value() const noexcept { return max_value_; }
    /// Buckets per channel, the under- and overflow buckets included.
    std::size_t buckets() const noexcept { return buckets_; }

    /// Adds a batch of rows [tokens][channels] (row-major, any stride; 0 rows is a no-op).
    /// Throws qift::error when rows.cols != channels(), a value is not finite (naming it), or
    /// the token count would pass 2^32 − 1.
    void add(matrix_view<const float> rows) {
        detail::require(rows.cols == channels_, [&] {
            return "channel_quantile_sketch::add: rows have " + std::to_string(rows.cols) +
                   " columns, the sketch has " + std::to_string(channels_) + " channels";
        });
        if (rows.rows == 0) return;
        detail::check_finite_matrix(rows, "channel_quantile_sketch::add", "rows");
        detail::require(rows.rows <= std::numeric_limits<std::uint32_t>::max() - tokens_, [&] {
            return std::string("channel_quantile_sketch::add: more than 2^32 - 1 tokens");
        });
        constexpr std::size_t block = 64;
        const std::size_t blocks = (channels_ + block - 1) / block;
        parallel_for(blocks, [&](std::size_t begin, std::size_t end) {
            for (std::size_t b = begin; b < end; ++b) {
                const std::size_t c0 = b * block, c1 = std::min(channels_, c0 + block);
                for (std::size_t t = 0; t < rows.rows; ++t)
                    for (std::size_t j = c0; j < c1; ++j) {
                        const float v = std::fabs(rows(t, j));
                        ++counts_[j * buckets_ + bucket(v)];
                        max_[j] = std::max(max_[j], v);
                    }
            }
        });
        tokens_ += rows.rows;
    }

    /// Estimated qs[i]-quantile of channel j as out(i, j) [qs.size()][channels]. Throws
    /// qift::error before the first token, for an empty qs, or a level outside (0, 1].
    matrix<float> quantiles(std::span<const double> qs) const {
        detail::require(tokens_ > 0, [] {
            return std::string("channel_quantile_sketch::quantiles: no tokens added yet");
        });
        detail::require(!qs.empty(), [] {
            return std::string("channel_quantile_sketch::quantiles: no levels given");
        });
        for (double q : qs) detail::check_quantile_level(q, "channel_quantile_sketch::quantiles");
        matrix<float> out(qs.size(), channels_);
        for (std::size_t i = 0; i < qs.size(); ++i) {
            const detail::quantile_rank r = detail::rank_of(qs[i], tokens_);
            for (std::size_t j = 0; j < channels_; ++j) {
                const double lo = value_at_rank(j, r.lo);
                const double hi = r.frac > 0.0 ? value_at_rank(j, r.lo + 1) : lo;
                out(i, j) = detail::interpolate(lo, hi, r.frac);
            }
        }
        return out;
    }

    /// One level as a vector [channels].
    std::vector<float> quantile(double q) const {
        const double qs[1] = {q};
        const matrix<float> m = quantiles(qs);
        return {m.row(0).begin(), m.row(0).end()};
    }

    /// The exact max |x| of every channel (0 before the first token).
    const std::vector<float>& absmax() const noexcept { return max_; }

  private:
    std::size_t bucket(float v) const noexcept {
        const double x = v;
        if (x < min_) return 0;
        if (x > max_value_) return buckets_ - 1;
        const double k = std::ceil(std::log(x / min_) / log_gamma_);
        return 1 + std::min(top_, static_cast<std::size_t>(std::max(k, 0.0)));
    }

    // The representative of the order statistic of rank r (0-based) of channel j.
    double value_at_rank(std::size_t j, std::size_t r) const {
        if (r + 1 == tokens_) return max_[j];
        const std::uint32_t* c = counts_.data() + j * buckets_;
        std::size_t seen = 0, b = 0;
        for (; b < buckets_; ++b) {
            seen += c[b];
            if (seen > r) break;
        }
        if (b == 0) return 0.0;
        if (b >= buckets_ - 1) return max_[j];
        const double k = static_cast<double>(b - 1);
        return std::min(min_ * std::pow(gamma_, k) * 2.0 / (gamma_ + 1.0), double(max_[j]));
    }

    std::size_t channels_;
    double eps_, min_, max_value_;
    double gamma_ = 0.0, log_gamma_ = 0.0;
    std::size_t top_ = 0, buckets_ = 0, tokens_ = 0;
    std::vector<std::uint32_t> counts_;  // [channels][buckets]
    std::vector<float> max_;
};

// ---------------------------------------------------------------------------------------
// The scale rule

/// Which per-input-channel weight statistic w_j the scale rule divides by.
enum class weight_statistic {
    abs_max,     ///< w_j = max_o |W(o, j)|, SmoothQuant's (default)
    signed_max,  ///< w_j = max_o W(o, j) without |·|, as the SmoothRot reference computes it; a
                 ///< column with no positive entry then has w_j <= 0 and is rejected
};

/// w_j over the output rows of W [out][in], one value per input channel [in]. Throws
/// qift::error for an empty W or a non-finite weight. O(out·in).
inline std::vector<float> weight_channel_max(matrix_view<const float> w,
                                             weight_statistic stat = weight_statistic::abs_max) {
    detail::check_finite_matrix(w, "weight_channel_max", "w");
    std::vector<float> m(
        w.cols, stat == weight_statistic::abs_max ? 0.0f : -std::numeric_limits<float>::infinity());
    for (std::size_t r = 0; r < w.rows; ++r)
        for (std::size_t j = 0; j < w.cols; ++j)
            m[j] = std::max(m[j], stat == weight_statistic::abs_max ? std::fabs(w(r, j)) : w(r, j));
    return m;
}

/// The smallest smoothing scale: s_j = max(rule, smooth_min_scale), as the reference clamps.
inline constexpr float smooth_min_scale = 1e-5f;

namespace detail {

inline std::vector<float> smooth_scales_checked(std::span<const float> a, std::span<const float> w,
                                                double alpha, const std::string& fn) {
    require(a.size() == w.size(), [&] {
        return fn + ": " + std::to_string(a.size()) + " activation statistics for " +
               std::to_string(w.size()) + " weight statistics (one per input channel each)";
    });
    require(!a.empty(), [&] { return fn + ": no channels"; });
    require(alpha >= 0.0 && alpha <= 1.0,
            [&] { return fn + ": alpha must be in [0, 1], got " + std::to_string(alpha); });
    std::vector<float> s(a.size());
    for (std::size_t j = 0; j < a.size(); ++j) {
        require(std::isfinite(a[j]) && a[j] > 0.0f, [&] {
            return fn + ": activation statistic of channel " + std::to_string(j) + " is " +
                   std::to_string(a[j]) +
                   " (must be positive and finite; a channel that is zero on every calibration "
                   "token cannot be smoothed)";
        });
        require(std::isfinite(w[j]) && w[j] > 0.0f, [&] {
            return fn + ": weight statistic of channel " + std::to_string(j) + " is " +
                   std::to_string(w[j]) +
                   " (must be positive and finite; an all-zero weight column, or one with no "
                   "positive entry under weight_statistic::signed_max)";
        });
        const double v = std::max(std::pow(double(a[j]), alpha) / std::pow(double(w[j]), 1 - alpha),
                                  double(smooth_min_scale));
        require(v <= double(std::numeric_limits<float>::max()), [&] {
            return fn + ": the scale of channel " + std::to_string(j) +
                   " overflows float (a = " + std::to_string(a[j]) +
                   ", w = " + std::to_string(w[j]) + ")";
        });
        s[j] = static_cast<float>(v);
    }
    return s;
}

inline void check_scales(std::span<const float> s, std::size_t n, const std::string& fn) {
    require(s.size() == n, [&] {
        return fn + ": " + std::to_string(s.size()) + " scales for " + std::to_string(n) +
               " channels";
    });
    for (std::size_t j = 0; j < n; ++j)
        require(std::isfinite(s[j]) && s[j] > 0.0f, [&] {
            return fn + ": scale of channel " + std::to_string(j) + " is " + std::to_string(s[j]) +
                   " (must be positive and finite)";
        });
}

}  // namespace detail

/// The SmoothQuant/SmoothRot rule from per-channel statistics a [n] (activations) and w [n]
/// (weights): s_j = max(a_j^α / w_j^(1−α), smooth_min_scale), computed in double. α = 1 gives
/// s_j = a_j, α = 0 gives s_j = 1/w_j (each before the clamp). Throws qift::error when the sizes
/// differ or are 0, α is not in [0, 1], or some a_j or w_j is not positive and finite (naming
/// the channel; checked for every α, since a search covers both ends), or a scale overflows.
inline std::vector<float> smooth_scales(std::span<const float> a, std::span<const float> w,
                                        double alpha) {
    return detail::smooth_scales_checked(a, w, alpha, "smooth_scales");
}

/// SmoothRot's scales for the layer W [out][in] reading an input with channel statistics
/// a [in] (channel_absmax for SmoothRot, channel_quantile or a sketch for the quantile
/// policy): smooth_scales(a, weight_channel_max(W, stat), α).
inline std::vector<float> smoothrot_scales(std::span<const float> a, matrix_view<const float> w,
                                           double alpha,
                                           weight_statistic stat = weight_statistic::abs_max) {
    detail::require(a.size() == w.cols, [&] {
        return "smoothrot_scales: " + std::to_string(a.size()) +
               " activation statistics but W has " + std::to_string(w.cols) +
               " input channels (W is " + detail::shape_of(w) + ")";
    });
    return detail::smooth_scales_checked(a, weight_channel_max(w, stat), alpha, "smoothrot_scales");
}

/// The quantile policy: smoothrot_scales with a_j the exact q-quantile of |X(:, j)|
/// (channel_quantile; q = 1 is SmoothRot's max). Throws qift::error when X and W disagree on
/// the number of input channels, q is not in (0, 1], or as smoothrot_scales.
inline std::vector<float> smoothrot_quantile_scales(
    matrix_view<const float> x, matrix_view<const float> w, double alpha, double q,
    weight_statistic stat = weight_statistic::abs_max) {
    detail::require(x.cols == w.cols, [&] {
        return "smoothrot_quantile_scales: x is " + detail::shape_of(x) + " but W is " +
               detail::shape_of(w) + " (x.cols must equal W.cols)";
    });
    return smoothrot_scales(channel_quantile(x, q), w, alpha, stat);
}

/// X·diag(1/s): x(t, j) / s_j [tokens][n], the smoothed input.
inline matrix<float> smooth_activations(matrix_view<const float> x, std::span<const float> s) {
    detail::check_finite_matrix(x, "smooth_activations", "x");
    detail::check_scales(s, x.cols, "smooth_activations");
    matrix<float> out(x.rows, x.cols);
    for (std::size_t t = 0; t < x.rows; ++t)
        for (std::size_t j = 0; j < x.cols; ++j) out(t, j) = x(t, j) / s[j];
    return out;
}

/// W·diag(s): w(o, j)·s_j [out][n], the smoothed weights (X·Wᵀ = (X/s)·(W·diag s)ᵀ).
inline matrix<float> smooth_weights(matrix_view<const float> w, std::span<const float> s) {
    detail::check_finite_matrix(w, "smooth_weights", "w");
    detail::check_scales(s, w.cols, "smooth_weights");
    matrix<float> out(w.rows, w.cols);
    for (std::size_t o = 0; o < w.rows; ++o)
        for (std::size_t j = 0; j < w.cols; ++j) out(o, j) = w(o, j) * s[j];
    return out;
}

// ---------------------------------------------------------------------------------------
// The layer error

/// The default per-channel weight scale of smooth_quantizers<L>: the plain absmax rule
/// (scale_rule::max, no clipping) for sets with a zero level, which for levels::int4 is the
/// authors' W4 metric (symmetric RTN, scale max|w|/7); qift's default clipping search
/// (scale_options{}, as quantize<L> uses) for the no-zero sets (levels::mnz, levels::pot_mnz),
/// which need it.
template <level_set L>
scale_options default_smooth_weight_scale() {
    scale_options o;
    if constexpr (level_traits<L>::has_zero) o.rule = scale_rule::max;
    return o;
}

/// The quantizers of the layer error, fake-quant (quantize, then dequantize in float):
/// Q_a per token as quantize_activations (A4: scale clip·max|x|/7, codes −7..7 or −8..7,
/// round half to even), Q_w per output row (or group) onto L with weight_scale as quantize<L>.
/// The defaults are the authors' metric: A4 symmetric absmax, W4 symmetric absmax RTN.
/// Turning one off leaves that side in float.
template <level_set L = levels::int4>
struct smooth_quantizers {
    bool activations = true;
    float activation_clip = 1.0f;  ///< in (0, 1]
    a4_range activation_range = a4_range::symmetric;
    bool weights = true;
    scale_options weight_scale = default_smooth_weight_scale<L>();
};

/// How the straight-through gradient of smooth_layer treats the quantizers' scales (rounding and
/// clamping always pass the gradient unchanged).
enum class ste_scales {
    /// Per-token and per-row scales held constant: only the rounding is straight-through.
    constant,
    /// Scales differentiated through the max|x| (or, for affine sets, the range) they are
    /// proportional to, as LSQ-style quantizer training does: a smaller outlier means a finer
    /// step, which the constant form cannot see. The default.
    differentiated,
};

namespace detail {

/// For x̂ = σ·round(x/σ) with σ = c·max|x| and round treated as the identity, ∂x̂_i/∂x_k = δ_ik +
/// [k = k*]·sign(x_k*)·(x̂_i − x_i)/max|x| (k* the first index of the maximum). Adds the second
/// term to the gradient u (= ∂E/∂x̂ on entry): u_k* += sign(x_k*)·Σ_i u_i·(x̂_i − x_i)/max|x|.
/// Nothing for x = 0.
inline void add_absmax_scale_gradient(float* u, const float* x, const float* xq,
                                      std::size_t n) noexcept {
    using batch = xsimd::batch<float>;
    batch vm(0.0f), acc(0.0f);
    std::size_t i = 0;
    for (; i + batch::size <= n; i += batch::size) {
        const batch xi = batch::load_unaligned(x + i);
        vm = xsimd::max(vm, xsimd::abs(xi));
        acc = xsimd::fma(batch::load_unaligned(u + i), batch::load_unaligned(xq + i) - xi, acc);
    }
    alignas(64) float lanes[batch::size];
    vm.store_aligned(lanes);
    float m = 0.0f;
    for (float v : lanes) m = std::max(m, v);
    double dot = double(reduce_add(acc));
    for (; i < n; ++i) {
        m = std::max(m, std::fabs(x[i]));
        dot += double(u[i]) * (double(xq[i]) - double(x[i]));
    }
    if (m == 0.0f) return;
    std::size_t k = 0;
    while (std::fabs(x[k]) != m) ++k;
    u[k] += static_cast<float>(x[k] > 0.0f ? dot / m : -dot / m);
}

/// The same for one weight row (or group) quantized onto L: symmetric sets as above (σ is
/// proportional to max|w| for both scale rules, the clipping factor held constant; a refined
/// scale is treated the same way); affine sets
/// have σ proportional to the range R = max(max w, 0) − min(min w, 0) with the zero-point held
/// constant, so the maximum gets +Σ_i u_i·(ŵ_i − w_i)/R (when max w > 0) and the minimum the
/// negative of it (when min w < 0).
template <level_set L>
void add_weight_scale_gradient(float* u, const float* w, const float* wq, std::size_t n) noexcept {
    if constexpr (level_traits<L>::has_zero_point) {
        const auto [lo, hi] = std::minmax_element(w, w + n);
        const double range = double(std::max(*hi, 0.0f)) - double(std::min(*lo, 0.0f));
        if (range == 0.0) return;
        double dot = 0.0;
        for (std::size_t i = 0; i < n; ++i) dot += double(u[i]) * (double(wq[i]) - double(w[i]));
        if (*hi > 0.0f) u[hi - w] += static_cast<float>(dot / range);
        if (*lo < 0.0f) u[lo - w] -= static_cast<float>(dot / range);
    } else {
        add_absmax_scale_gradient(u, w, wq, n);
    }
}

/// out[j] = x[j] / s[j] (divide) or x[j] · s[j] (multiply), j < n, vectorized; IEEE division and
/// multiplication, so bit-identical with the scalar expressions of smooth_activations and
/// smooth_weights.
template <bool Divide, class Arch = xsimd::default_arch>
inline void scale_row(const float* x, const float* s, float* out, std::size_t n) noexcept {
    using batch = xsimd::batch<float, Arch>;
    std::size_t j = 0;
    for (; j + batch::size <= n; j += batch::size) {
        const batch a = batch::load_unaligned(x + j), b = batch::load_unaligned(s + j);
        (Divide ? divide(a, b) : a * b).store_unaligned(out + j);
    }
    for (; j < n; ++j) out[j] = Divide ? x[j] / s[j] : x[j] * s[j];
}

/// Σ_k x[k]² of n floats: float lanes over chunks of 256 elements, each chunk added in double.
template <class Arch = xsimd::default_arch>
inline double sum_of_squares(const float* x, std::size_t n) noexcept {
    using batch = xsimd::batch<float, Arch>;
    double sum = 0.0;
    std::size_t k = 0;
    for (; k + 256 <= n; k += 256) {
        batch acc(0.0f);
        for (std::size_t i = k; i < k + 256; i += batch::size) {
            const batch v = batch::load_unaligned(x + i);
            acc = xsimd::fma(v, v, acc);
        }
        sum += double(reduce_add(acc));
    }
    for (; k < n; ++k) sum += double(x[k]) * double(x[k]);
    return sum;
}

/// part[j] += a[j]·b[j] in double, j < n.
inline void accumulate_products(double* part, const float* a, const float* b,
                                std::size_t n) noexcept {
    for (std::size_t j = 0; j < n; ++j) part[j] += double(a[j]) * double(b[j]);
}

/// w ← dequantize_value(quantize_value(w, p), p) element-wise onto L, vectorized and
/// bit-identical with those scalar functions (and so with quantize<L>): u = w/scale + zero, then
/// the scale search's nearest_level_value.
template <level_set L, class Arch = xsimd::default_arch>
void fake_quantize_span(std::span<float> w, channel_params p) noexcept {
    using T = level_traits<L>;
    if (p.scale == 0.0f) {
        for (float& x : w) x = dequantize_value<L>(quantize_value<L>(x, p), p);
        return;
    }
    using batch = xsimd::batch<float, Arch>;
    std::array<float, T::count> recon{};
    for (std::size_t k = 0; k < T::count; ++k) recon[k] = p.scale * (T::sorted[k] - p.zero);
    const batch scale(p.scale), zero(p.zero);
    const std::size_t n = w.size();
    std::size_t i = 0;
    for (; i + batch::size <= n; i += batch::size) {
        const batch u = divide(batch::load_unaligned(w.data() + i), scale) + zero;
        nearest_level_value<L>(u, recon).store_unaligned(w.data() + i);
    }
    for (; i < n; ++i) w[i] = dequantize_value<L>(quantize_value<L>(w[i], p), p);
}

/// out[k] = scale · codes[k], k < n (as dequantize(quantized_activations)), vectorized.
template <class Arch = xsimd::default_arch>
inline void dequantize_codes(const std::int8_t* codes, float scale, float* out,
                             std::size_t n) noexcept {
    using batch = xsimd::batch<float, Arch>;
    const batch vs(scale);
    std::size_t k = 0;
    for (; k + batch::size <= n; k += batch::size)
        (vs * batch::load_unaligned(codes + k)).store_unaligned(out + k);
    for (; k < n; ++k) out[k] = scale * static_cast<float>(codes[k]);
}

}  // namespace detail

/// Seed of the default rotation: the one quarot() (model/quarot.hpp) applies to the down_proj
/// input with its default seed (quarot_options::seed + 2).
inline constexpr std::uint64_t default_smooth_rotation_seed = 0x9e3779b9ull + 2;

/// One linear layer under smoothing and rotation, and its quantized output error as a function
/// of the smoothing scales s [n]:
///
///   E(s) = ‖X·Wᵀ − Q_a(X̃)·Q_w(W̃)ᵀ‖²_F,   X̃ = (X·diag(1/s))·H,   W̃ = (W·diag(s))·H,
///
/// for calibration inputs X [tokens][n] and weights W [out][n] (row-major, any stride), H an
/// n×n orthogonal rotation (rows are vectors: x ← x·H, as qift::rotation::apply; std::nullopt:
/// no rotation, plain SmoothQuant) and the quantizers of smooth_quantizers<L>. In real
/// arithmetic X̃·W̃ᵀ = X·Wᵀ for every s, so E measures quantization alone. E is invariant to
/// s → c·s for c > 0 (both quantizers are scale-equivariant), exactly so in float for powers of
/// two.
///
/// The layer keeps views of X and W (they must outlive it) and X·Wᵀ [tokens][out] (computed
/// once). Each error() costs O((tokens + out)·n) for smoothing and quantizing, the rotations
/// (O(n log n) per row for Hadamard sizes, O(n²) otherwise), and one float GEMM of
/// tokens·n·out multiply-adds (detail::gemm_sub, 256-token blocks in parallel); e.g. 0.4 G
/// multiply-adds for 2048 tokens, n = 768, out = 256 (about 10 ms on one AVX-512 core, half of
/// it the GEMM). Every partition is fixed by the sizes alone and sums are added in a fixed
/// order (E per token, then over tokens in double), so results do not depend on the thread
/// count. Not thread-safe: const members reuse an internal workspace of (2·tokens + 2·out)·n +
/// tokens·out floats (plus batch·(n + out) for minibatch gradients); use one object per thread
/// (copies are independent).
template <level_set L = levels::int4>
class smooth_layer {
  public:
    using level_set_type = L;

    /// With an explicit rotation of order n, or std::nullopt for none. Throws qift::error when
    /// X or W is empty or not finite (naming the element), X.cols != W.cols, the rotation has
    /// another size, activation_clip is not in (0, 1], or weight_scale is invalid for W (group
    /// size not dividing n, bad grid).
    smooth_layer(matrix_view<const float> x, matrix_view<const float> w, std::optional<rotation> h,
                 smooth_quantizers<L> q = {})
        : x_(x), w_(w), h_(std::move(h)), q_(q) {
        check_inputs();
        init();
    }

    /// With H = qift::rotation::for_size(n, seed): a randomized Hadamard rotation where one of
    /// order n exists, a seeded Haar-random orthogonal matrix otherwise (O(n³) to build).
    explicit smooth_layer(matrix_view<const float> x, matrix_view<const float> w,
                          std::uint64_t seed = default_smooth_rotation_seed,
                          smooth_quantizers<L> q = {})
        : x_(x), w_(w), q_(q) {
        check_inputs();
        h_ = rotation::for_size(w.cols, seed);
        init();
    }

    std::size_t tokens() const noexcept { return x_.rows; }
    std::size_t channels() const noexcept { return x_.cols; }
    std::size_t outputs() const noexcept { return w_.rows; }
    matrix_view<const float> activations() const noexcept { return x_; }
    matrix_view<const float> weights() const noexcept { return w_; }
    const std::optional<rotation>& transform() const noexcept { return h_; }
    const smooth_quantizers<L>& quantizers() const noexcept { return q_; }
    /// ‖X·Wᵀ‖²_F, the scale of E (E / reference_energy() is the relative output error).
    double reference_energy() const noexcept { return reference_energy_; }

    /// E(s). Throws qift::error when s has the wrong size or an entry that is not positive and
    /// finite (naming the channel).
    double error(std::span<const float> s) const {
        detail::check_scales(s, channels(), "smooth_layer::error");
        return forward(s);
    }

    /// E(s), and in `grad` [n] the straight-through gradient ∂E/∂(ln s_j).
    ///
    /// Definition (derived by hand, no autodiff): the backward pass treats rounding and clamping
    /// of both quantizers as the identity; their scales (per token, per output row or group) are
    /// held constant (ste_scales::constant) or differentiated through the max|x| they are
    /// proportional to (ste_scales::differentiated, the default; see ste_scales). Equivalently,
    /// grad is the exact gradient at s of the smooth surrogate
    ///   F(s') = ‖X·Wᵀ − (X̃(s') + N_a(s'))·(W̃(s') + N_w(s'))ᵀ‖²_F,   F(s) = E(s),
    /// whose quantization noise is frozen at s: N_a = Q_a(X̃(s)) − X̃(s) row by row (constant), or
    /// that noise times max|X̃(s')_t| / max|X̃(s)_t| (differentiated), and likewise N_w per output
    /// row. The tests check both against finite differences of F. With D = X·Wᵀ − Â·B̂ᵀ,
    /// Â = Q_a(X̃), B̂ = Q_w(W̃), G_a = −2·D·B̂ and G_w = −2·Dᵀ·Â (∂E/∂Â and ∂E/∂B̂), each
    /// row plus its scale term (detail::add_absmax_scale_gradient), then rotated back by Hᵀ:
    ///   ∂E/∂ln s_j = Σ_o (W·diag s)(o, j)·(G_w·Hᵀ)(o, j) − Σ_t (X/s)(t, j)·(G_a·Hᵀ)(t, j).
    /// Cost: the forward GEMM and two more of the same size (D·B̂ and Dᵀ·Â), plus one inverse
    /// rotation per token and per output row (and one forward rotation each for the scale terms).
    /// Throws as error(), or when grad has the wrong size.
    double error_and_gradient(std::span<const float> s, std::span<double> grad,
                              ste_scales mode = ste_scales::differentiated) const {
        detail::check_scales(s, channels(), "smooth_layer::error_and_gradient");
        check_gradient_size(grad);
        const double e = forward(s);
        all_tokens();
        backward(s, ws_.all, grad, mode);
        return e;
    }

    /// The same with the gradient estimated on a subset of tokens (a minibatch), scaled by
    /// tokens() / subset.size() to be unbiased; E is still over all tokens. `subset` must be
    /// non-empty, strictly increasing and < tokens(). The two backward GEMMs shrink to the subset.
    double error_and_gradient(std::span<const float> s, std::span<double> grad,
                              std::span<const std::size_t> subset,
                              ste_scales mode = ste_scales::differentiated) const {
        detail::check_scales(s, channels(), "smooth_layer::error_and_gradient");
        check_gradient_size(grad);
        detail::require(!subset.empty(), [] {
            return std::string("smooth_layer::error_and_gradient: the token subset is empty");
        });
        for (std::size_t i = 0; i < subset.size(); ++i)
            detail::require(subset[i] < tokens() && (i == 0 || subset[i] > subset[i - 1]), [&] {
                return "smooth_layer::error_and_gradient: subset[" + std::to_string(i) +
                       "] = " + std::to_string(subset[i]) +
                       " (the subset must be strictly increasing token indices < " +
                       std::to_string(tokens()) + ")";
            });
        const double e = forward(s);
        backward(s, subset, grad, mode);
        return e;
    }

  private:
    // Rows per parallel GEMM block: fixed, so that results do not depend on the thread count,
    // and large enough that packing the GEMM's right operand once per block costs little.
    static constexpr std::size_t block_rows = 256;

    struct workspace {
        aligned_vector<float> a, b, bt, d, dsub, asub, at;
        std::vector<double> row_error;
        std::vector<std::size_t> all;
    };

    void check_inputs() const {
        detail::check_finite_matrix(x_, "smooth_layer", "x");
        detail::check_finite_matrix(w_, "smooth_layer", "w");
        detail::require(x_.cols == w_.cols, [&] {
            return "smooth_layer: x is " + detail::shape_of(x_) + " [tokens][n] but W is " +
                   detail::shape_of(w_) + " [out][n]: the input channels differ";
        });
    }

    // After check_inputs().
    void init() {
        const std::size_t n = channels(), out = outputs(), count = tokens();
        if (h_)
            detail::require(h_->size() == n, [&] {
                return "smooth_layer: the rotation has size " + std::to_string(h_->size()) +
                       " but the layer has " + std::to_string(n) + " input channels";
            });
        detail::require(q_.activation_clip > 0.0f && q_.activation_clip <= 1.0f, [&] {
            return "smooth_layer: activation_clip must be in (0, 1], got " +
                   std::to_string(q_.activation_clip);
        });
        const std::size_t g = q_.weight_scale.group_size == 0 ? n : q_.weight_scale.group_size;
        detail::require(n % g == 0, [&] {
            return "smooth_layer: weight group_size " + std::to_string(g) +
                   " does not divide the input channels " + std::to_string(n);
        });
        if (q_.weights) (void)find_params<L>(w_.row(0).subspan(0, g), q_.weight_scale);
        // Y = X·Wᵀ as Y = 0 − X·(−Wᵀ), by token blocks.
        aligned_vector<float> neg_wt(n * out);
        for (std::size_t o = 0; o < out; ++o)
            for (std::size_t j = 0; j < n; ++j) neg_wt[j * out + o] = -w_(o, j);
        y_ = matrix<float>(count, out);
        const std::size_t blocks = (count + block_rows - 1) / block_rows;
        parallel_for(blocks, [&](std::size_t begin, std::size_t end) {
            for (std::size_t b = begin; b < end; ++b) {
                const std::size_t t0 = b * block_rows, rows = std::min(block_rows, count - t0);
                detail::gemm_sub<float>({&y_(t0, 0), rows, out}, {&x_(t0, 0), rows, n, x_.stride},
                                        matrix_view<const float>(neg_wt.data(), n, out));
            }
        });
        reference_energy_ = 0.0;
        for (float v : y_.flat()) reference_energy_ += double(v) * double(v);
    }

    void check_gradient_size(std::span<double> grad) const {
        detail::require(grad.size() == channels(), [&] {
            return "smooth_layer::error_and_gradient: grad has " + std::to_string(grad.size()) +
                   " entries for " + std::to_string(channels()) + " channels";
        });
    }

    void all_tokens() const {
        if (ws_.all.size() == tokens()) return;
        ws_.all.resize(tokens());
        std::iota(ws_.all.begin(), ws_.all.end(), std::size_t{0});
    }

    static void ensure(aligned_vector<float>& v, std::size_t size) {
        if (v.size() < size) v.resize(size);
    }

    // ws_.b = Q_w((W·diag s)·H) [out][n], ws_.bt its transpose [n][out].
    void quantize_weights(std::span<const float> s) const {
        const std::size_t n = channels(), out = outputs();
        ensure(ws_.b, out * n);
        ensure(ws_.bt, n * out);
        const std::size_t g = group();
        constexpr std::size_t rows_per_block = 16;
        const std::size_t blocks = (out + rows_per_block - 1) / rows_per_block;
        parallel_for(blocks, [&](std::size_t begin, std::size_t end) {
            for (std::size_t b = begin; b < end; ++b) {
                const std::size_t r0 = b * rows_per_block,
                                  rows = std::min(rows_per_block, out - r0);
                for (std::size_t r = r0; r < r0 + rows; ++r) {
                    float* row = ws_.b.data() + r * n;
                    detail::scale_row<false>(&w_(r, 0), s.data(), row, n);
                    if (h_) h_->apply({row, n});
                    if (!q_.weights) continue;
                    for (std::size_t c0 = 0; c0 < n; c0 += g)
                        detail::fake_quantize_span<L>(
                            {row + c0, g},
                            find_params<L>(std::span<const float>(row + c0, g), q_.weight_scale));
                }
                detail::transpose_copy<float, float>(
                    matrix_view<const float>(ws_.b.data() + r0 * n, rows, n),
                    matrix_view<float>(ws_.bt.data() + r0, n, rows, out));
            }
        });
    }

    // ws_.a = Q_a((X·diag(1/s))·H) [tokens][n].
    void quantize_inputs(std::span<const float> s) const {
        const std::size_t n = channels(), count = tokens();
        ensure(ws_.a, count * n);
        const int lo = q_.activation_range == a4_range::full ? -8 : -7;
        const std::size_t blocks = (count + block_rows - 1) / block_rows;
        parallel_for(blocks, [&](std::size_t begin, std::size_t end) {
            std::vector<std::int8_t> codes(n);
            for (std::size_t b = begin; b < end; ++b)
                for (std::size_t t = b * block_rows; t < std::min(count, (b + 1) * block_rows);
                     ++t) {
                    float* row = ws_.a.data() + t * n;
                    detail::scale_row<true>(&x_(t, 0), s.data(), row, n);
                    if (h_) h_->apply({row, n});
                    if (!q_.activations) continue;
                    const float scale = detail::quantize_token_kernel{}(
                        xsimd::default_arch{}, std::span<const float>(row, n), q_.activation_clip,
                        lo, codes.data());
                    detail::dequantize_codes(codes.data(), scale, row, n);
                }
        });
    }

    // E(s); leaves Â, B̂ and D = Y − Â·B̂ᵀ in the workspace.
    double forward(std::span<const float> s) const {
        const std::size_t n = channels(), out = outputs(), count = tokens();
        quantize_weights(s);
        quantize_inputs(s);
        ensure(ws_.d, count * out);
        ws_.row_error.resize(count);
        const std::size_t blocks = (count + block_rows - 1) / block_rows;
        parallel_for(blocks, [&](std::size_t begin, std::size_t end) {
            for (std::size_t b = begin; b < end; ++b) {
                const std::size_t t0 = b * block_rows, rows = std::min(block_rows, count - t0);
                float* d = ws_.d.data() + t0 * out;
                std::copy_n(&y_(t0, 0), rows * out, d);
                detail::gemm_sub<float>({d, rows, out},
                                        matrix_view<const float>(ws_.a.data() + t0 * n, rows, n),
                                        matrix_view<const float>(ws_.bt.data(), n, out));
                for (std::size_t t = 0; t < rows; ++t)
                    ws_.row_error[t0 + t] = detail::sum_of_squares(d + t * out, out);
            }
        });
        double e = 0.0;
        for (double v : ws_.row_error) e += v;
        return e;
    }

    // The straight-through gradient on the tokens of `subset` (after forward(s)).
    void backward(std::span<const float> s, std::span<const std::size_t> subset,
                  std::span<double> grad, ste_scales mode) const {
        const std::size_t n = channels(), out = outputs(), m = subset.size();
        const float* dsub = ws_.d.data();
        const float* asub = ws_.a.data();
        if (m != tokens()) {  // a strictly increasing subset of all tokens is all of them
            ensure(ws_.dsub, m * out);
            ensure(ws_.asub, m * n);
            for (std::size_t i = 0; i < m; ++i) {
                std::copy_n(ws_.d.data() + subset[i] * out, out, ws_.dsub.data() + i * out);
                std::copy_n(ws_.a.data() + subset[i] * n, n, ws_.asub.data() + i * n);
            }
            dsub = ws_.dsub.data();
            asub = ws_.asub.data();
        }
        // Input side: U = (−D·B̂ + scale terms)·Hᵀ by token blocks; part[j] += (X/s)(t, j)·U(t, j).
        const std::size_t token_blocks = (m + block_rows - 1) / block_rows;
        std::vector<double> part_x(token_blocks * n, 0.0);
        parallel_for(token_blocks, [&](std::size_t begin, std::size_t end) {
            aligned_vector<float> u(block_rows * n), pre(n);
            for (std::size_t b = begin; b < end; ++b) {
                const std::size_t i0 = b * block_rows, rows = std::min(block_rows, m - i0);
                std::fill_n(u.data(), rows * n, 0.0f);
                detail::gemm_sub<float>({u.data(), rows, n},
                                        matrix_view<const float>(dsub + i0 * out, rows, out),
                                        matrix_view<const float>(ws_.b.data(), out, n));
                double* part = part_x.data() + b * n;
                for (std::size_t i = 0; i < rows; ++i) {
                    float* ui = u.data() + i * n;
                    const std::size_t t = subset[i0 + i];
                    detail::scale_row<true>(&x_(t, 0), s.data(), pre.data(), n);
                    if (mode == ste_scales::differentiated && q_.activations) {
                        aligned_vector<float>& rotated = rotated_copy(pre, n);
                        detail::add_absmax_scale_gradient(ui, rotated.data(), asub + (i0 + i) * n,
                                                          n);
                    }
                    if (h_) h_->apply_transpose({ui, n});
                    detail::accumulate_products(part, pre.data(), ui, n);
                }
            }
        });
        // Weight side: Vᵀ = −Âᵀ·D [n][out] by blocks of channels (the GEMM then packs only D),
        // then per output row V(o, :) plus scale terms, times Hᵀ; part[j] += (W·diag s)(o, j)·V(o,
        // j).
        ensure(ws_.at, n * m);
        ensure(ws_.bt, n * out);  // holds Vᵀ now; forward() rebuilds B̂ᵀ
        const std::size_t channel_blocks = (n + block_rows - 1) / block_rows;
        parallel_for(channel_blocks, [&](std::size_t begin, std::size_t end) {
            for (std::size_t b = begin; b < end; ++b) {
                const std::size_t j0 = b * block_rows, cols = std::min(block_rows, n - j0);
                detail::transpose_copy<float, float>(
                    matrix_view<const float>(asub + j0, m, cols, n),
                    matrix_view<float>(ws_.at.data() + j0 * m, cols, m));
                float* vt = ws_.bt.data() + j0 * out;
                std::fill_n(vt, cols * out, 0.0f);
                detail::gemm_sub<float>({vt, cols, out},
                                        matrix_view<const float>(ws_.at.data() + j0 * m, cols, m),
                                        matrix_view<const float>(dsub, m, out));
            }
        });
        constexpr std::size_t rows_per_block = 16;
        const std::size_t out_blocks = (out + rows_per_block - 1) / rows_per_block;
        const std::size_t g = group();
        std::vector<double> part_w(out_blocks * n, 0.0);
        parallel_for(out_blocks, [&](std::size_t begin, std::size_t end) {
            aligned_vector<float> v(rows_per_block * n), pre(n);
            for (std::size_t b = begin; b < end; ++b) {
                const std::size_t o0 = b * rows_per_block,
                                  rows = std::min(rows_per_block, out - o0);
                detail::transpose_copy<float, float>(
                    matrix_view<const float>(ws_.bt.data() + o0, n, rows, out),
                    matrix_view<float>(v.data(), rows, n));
                double* part = part_w.data() + b * n;
                for (std::size_t i = 0; i < rows; ++i) {
                    float* vi = v.data() + i * n;
                    detail::scale_row<false>(&w_(o0 + i, 0), s.data(), pre.data(), n);
                    if (mode == ste_scales::differentiated && q_.weights) {
                        aligned_vector<float>& rotated = rotated_copy(pre, n);
                        const float* bq = ws_.b.data() + (o0 + i) * n;
                        for (std::size_t c0 = 0; c0 < n; c0 += g)
                            detail::add_weight_scale_gradient<L>(vi + c0, rotated.data() + c0,
                                                                 bq + c0, g);
                    }
                    if (h_) h_->apply_transpose({vi, n});
                    detail::accumulate_products(part, pre.data(), vi, n);
                }
            }
        });
        const double factor = 2.0 * static_cast<double>(tokens()) / static_cast<double>(m);
        for (std::size_t j = 0; j < n; ++j) {
            double gx = 0.0, gw = 0.0;
            for (std::size_t b = 0; b < token_blocks; ++b) gx += part_x[b * n + j];
            for (std::size_t b = 0; b < out_blocks; ++b) gw += part_w[b * n + j];
            grad[j] = factor * (gw - gx);
        }
    }

    // A per-thread copy of `pre` rotated by H (the pre-quantization row of X̃ or W̃).
    aligned_vector<float>& rotated_copy(const aligned_vector<float>& pre, std::size_t n) const {
        thread_local aligned_vector<float> rotated;
        rotated.assign(pre.begin(), pre.begin() + static_cast<std::ptrdiff_t>(n));
        if (h_) h_->apply({rotated.data(), n});
        return rotated;
    }

    std::size_t group() const noexcept {
        return q_.weight_scale.group_size == 0 ? channels() : q_.weight_scale.group_size;
    }

    matrix_view<const float> x_;
    matrix_view<const float> w_;
    std::optional<rotation> h_;
    smooth_quantizers<L> q_;
    matrix<float> y_;
    double reference_energy_ = 0.0;
    mutable workspace ws_;
};

/// E(s) for one (X, W, s, H, quantizers) in one call: smooth_layer<L>(x, w, h, q).error(s).
/// Builds X·Wᵀ first, so it costs two GEMMs; keep a smooth_layer to evaluate many s.
template <level_set L = levels::int4>
double smooth_error(matrix_view<const float> x, matrix_view<const float> w,
                    std::span<const float> s, std::optional<rotation> h,
                    const smooth_quantizers<L>& q = {}) {
    return smooth_layer<L>(x, w, std::move(h), q).error(s);
}

// ---------------------------------------------------------------------------------------
// Joint (α, q) search

/// `points` equally spaced values i/(points−1) over [0, 1]; 21 points: 0, 0.05, ..., 1.
inline std::vector<double> smooth_alpha_grid(std::size_t points = 21) {
    detail::require(points >= 2, [&] {
        return "smooth_alpha_grid: need at least 2 points, got " + std::to_string(points);
    });
    std::vector<double> g(points);
    for (std::size_t i = 0; i < points; ++i)
        g[i] = static_cast<double>(i) / static_cast<double>(points - 1);
    return g;
}

/// Options of smooth_search(). Defaults: α ∈ {0, 0.05, ..., 1} (SmoothRot's sweep) and
/// q ∈ {0.9, 0.99, 0.995, 0.999, 0.9999, 1} (q = 1 is SmoothRot's max statistic), |W| columns.
struct smooth_search_options {
    std::vector<double> alphas = smooth_alpha_grid();
    std::vector<double> quantiles{0.9, 0.99, 0.995, 0.999, 0.9999, 1.0};
    weight_statistic weight_stat = weight_statistic::abs_max;
    /// When set, the activation statistics are this sketch's estimated quantiles instead of the
    /// exact quantiles of the layer's X (which then still defines E). Must outlive the call.
    const channel_quantile_sketch* sketch = nullptr;
};

/// What smooth_search() returns.
struct smooth_search_result {
    double alpha = 0.0;           ///< the best grid point (first minimum in (q, α) order)
    double quantile = 1.0;        ///< its quantile level
    std::vector<float> scales;    ///< its s [n]
    double error = 0.0;           ///< E(scales)
    double rotation_error = 0.0;  ///< E(1): the rotation alone, no smoothing
    std::vector<double> alphas, quantiles;
    matrix<double> errors;  ///< E at every grid point [quantiles.size()][alphas.size()]
};

/// Joint grid search over (α, q) minimizing the layer's E: for each q the statistic
/// a = q-quantile of |X(:, j)| (channel_quantiles, or opt.sketch), for each α the scales
/// smooth_scales(a, w, α) with w = weight_channel_max(W, opt.weight_stat), and E. Ties keep the
/// first point in (q, α) order. The best grid point can be worse than no smoothing on a layer
/// without outliers: compare error with rotation_error. Cost: |q|·|α| + 1 evaluations of E (one
/// GEMM each, see smooth_layer) plus one quantile selection, O(tokens·n·|q|). Throws qift::error
/// for an empty grid, α outside [0, 1], q outside (0, 1], a sketch of another width, or a statistic
/// that is not positive (naming the channel and q).
template <level_set L>
smooth_search_result smooth_search(const smooth_layer<L>& layer,
                                   const smooth_search_options& opt = {}) {
    detail::require(!opt.alphas.empty() && !opt.quantiles.empty(), [&] {
        return "smooth_search: empty grid (" + std::to_string(opt.alphas.size()) + " alphas, " +
               std::to_string(opt.quantiles.size()) + " quantiles)";
    });
    for (double a : opt.alphas)
        detail::require(a >= 0.0 && a <= 1.0, [&] {
            return "smooth_search: alpha must be in [0, 1], got " + std::to_string(a);
        });
    for (double q : opt.quantiles) detail::check_quantile_level(q, "smooth_search");
    const std::size_t n = layer.channels();
    if (opt.sketch)
        detail::require(opt.sketch->channels() == n, [&] {
            return "smooth_search: the sketch has " + std::to_string(opt.sketch->channels()) +
                   " channels, the layer " + std::to_string(n);
        });
    const matrix<float> stats = opt.sketch ? opt.sketch->quantiles(opt.quantiles)
                                           : channel_quantiles(layer.activations(), opt.quantiles);
    const std::vector<float> wstat = weight_channel_max(layer.weights(), opt.weight_stat);
    smooth_search_result r;
    r.alphas = opt.alphas;
    r.quantiles = opt.quantiles;
    r.errors = matrix<double>(opt.quantiles.size(), opt.alphas.size());
    r.error = std::numeric_limits<double>::infinity();
    for (std::size_t qi = 0; qi < opt.quantiles.size(); ++qi)
        for (std::size_t ai = 0; ai < opt.alphas.size(); ++ai) {
            std::vector<float> s = detail::smooth_scales_checked(
                stats.row(qi), wstat, opt.alphas[ai],
                "smooth_search (q = " + std::to_string(opt.quantiles[qi]) + ")");
            const double e = layer.error(s);
            r.errors(qi, ai) = e;
            if (e < r.error) {
                r.error = e;
                r.alpha = opt.alphas[ai];
                r.quantile = opt.quantiles[qi];
                r.scales = std::move(s);
            }
        }
    r.rotation_error = layer.error(std::vector<float>(n, 1.0f));
    return r;
}

// ---------------------------------------------------------------------------------------
// Trained scales

namespace detail {

/// Euclidean projection of y onto {δ : |δ_j| ≤ bound, Σ_j δ_j = 0} (non-empty: it holds 0), in
/// place. The solution is δ_j = clamp(y_j − λ, −bound, bound) with λ the root of the
/// non-increasing φ(λ) = Σ_j clamp(y_j − λ, −bound, bound): bisection on
/// [min y − bound, max y + bound] to the resolution of double, then λ solved in closed form on
/// the active set it found (λ = (Σ_free y_j + bound·(#upper − #lower)) / #free), kept when it
/// leaves that set unchanged. O(n) per bisection step, at most 200 steps.
inline void project_box_zero_mean(std::span<double> y, double bound) {
    if (y.empty()) return;
    const auto [mn, mx] = std::minmax_element(y.begin(), y.end());
    double lo = *mn - bound, hi = *mx + bound;
    const auto phi = [&](double lambda) {
        double sum = 0.0;
        for (double v : y) sum += std::clamp(v - lambda, -bound, bound);
        return sum;
    };
    for (int it = 0; it < 200; ++it) {
        const double mid = 0.5 * (lo + hi);
        if (!(mid > lo && mid < hi)) break;
        (phi(mid) > 0.0 ? lo : hi) = mid;
    }
    double lambda = 0.5 * (lo + hi);
    const auto side = [&](double v, double l) {
        return v - l >= bound ? 1 : v - l <= -bound ? -1 : 0;
    };
    double free_sum = 0.0, clamped = 0.0;
    std::size_t free = 0;
    for (double v : y) {
        const int k = side(v, lambda);
        if (k == 0)
            free_sum += v, ++free;
        else
            clamped += k * bound;
    }
    if (free > 0) {
        const double exact = (free_sum + clamped) / static_cast<double>(free);
        bool same = true;
        for (double v : y) same = same && side(v, exact) == side(v, lambda);
        if (same) lambda = exact;
    }
    for (double& v : y) v = std::clamp(v - lambda, -bound, bound);
}

}  // namespace detail

/// Options of train_smooth_scales().
struct smooth_training_options {
    int steps = 100;               ///< Adam steps (>= 0)
    double learning_rate = 0.01;   ///< in ln s per step (> 0)
    double beta1 = 0.9;            ///< in [0, 1)
    double beta2 = 0.999;          ///< in [0, 1)
    double epsilon = 1e-8;         ///< > 0, relative: the loss is E / E(s₀)
    double bound = 1.0;            ///< box |δ_j| ≤ bound (> 0): s/s₀ within [e^−B, e^B]
    std::size_t batch_tokens = 0;  ///< tokens per gradient (0 or >= tokens: all)
    std::uint64_t seed = 0;        ///< minibatch sampling
    ste_scales scales = ste_scales::differentiated;  ///< the gradient's treatment of scales
};

/// What train_smooth_scales() returns.
struct smooth_training_result {
    std::vector<float> scales;  ///< the best iterate s = s₀·exp(δ) [n]
    std::vector<double> delta;  ///< its δ [n]: |δ_j| ≤ bound, Σ δ_j = 0
    /// E on the fitting tokens at iterate k = 0..steps (loss[0] = E(s₀); iterate k is after k
    /// Adam steps). Only loss[0] when E(s₀) = 0: there is nothing to learn.
    std::vector<double> loss;
    std::size_t best_step = 0;   ///< argmin of loss (first), the iterate returned
    double initial_error = 0.0;  ///< E(s₀) on the fitting tokens (= loss[0])
    double error = 0.0;          ///< E(scales) on the fitting tokens (= loss[best_step])
    double heldout_initial_error = std::numeric_limits<double>::quiet_NaN();  ///< E(s₀), held out
    double heldout_error = std::numeric_limits<double>::quiet_NaN();  ///< E(scales), held out
};

/// Learns smoothing scales s = s₀·exp(δ) on the layer's (fitting) tokens by Adam on
/// E(s)/E(s₀) with the straight-through gradient of smooth_layer::error_and_gradient (rounding
/// and clamping as identity, quantizer scales as opt.scales: differentiated by default, which
/// on synthetic outlier layers gained about twice as much as constant scales), δ = 0 at the start,
/// and after every step the exact Euclidean projection of δ onto {|δ_j| ≤ bound} ∩ {Σ_j δ_j = 0}
/// (the mean constraint removes the direction s → c·s along which E is invariant; see
/// detail::project_box_zero_mean). E is evaluated exactly at every iterate and the best one is
/// returned, so the fitting E never exceeds E(s₀) (start from smooth_search's scales to improve
/// on the grid). With batch_tokens > 0 each step's gradient uses that many tokens drawn without
/// replacement (splitmix64 from seed). Deterministic for a seed, and independent of the thread
/// count. `heldout_x` [tokens'][n] (0 rows: none) gets E(s₀) and E(scales) under the same W,
/// rotation and quantizers. Cost per step: three GEMMs of tokens·n·out (the two backward ones
/// batch_tokens·n·out), the rotations and quantizers. Throws qift::error for bad options, s₀ of
/// the wrong size or not positive and finite, or held-out tokens of another width.
template <level_set L>
smooth_training_result train_smooth_scales(const smooth_layer<L>& layer, std::span<const float> s0,
                                           matrix_view<const float> heldout_x = {},
                                           const smooth_training_options& opt = {}) {
    const std::size_t n = layer.channels(), tokens = layer.tokens();
    detail::check_scales(s0, n, "train_smooth_scales: s0");
    detail::require(
        opt.steps >= 0 && std::isfinite(opt.learning_rate) && opt.learning_rate > 0.0 &&
            opt.beta1 >= 0.0 && opt.beta1 < 1.0 && opt.beta2 >= 0.0 && opt.beta2 < 1.0 &&
            opt.epsilon > 0.0 && std::isfinite(opt.bound) && opt.bound > 0.0,
        [&] {
            return "train_smooth_scales: bad options (steps " + std::to_string(opt.steps) +
                   ", learning_rate " + std::to_string(opt.learning_rate) + ", beta1 " +
                   std::to_string(opt.beta1) + ", beta2 " + std::to_string(opt.beta2) +
                   ", epsilon " + std::to_string(opt.epsilon) + ", bound " +
                   std::to_string(opt.bound) + ")";
        });
    detail::require(heldout_x.rows == 0 || heldout_x.cols == n, [&] {
        return "train_smooth_scales: held-out tokens have " + std::to_string(heldout_x.cols) +
               " channels, the layer " + std::to_string(n);
    });
    const bool minibatch = opt.batch_tokens > 0 && opt.batch_tokens < tokens;
    std::vector<std::size_t> perm(tokens), batch;
    std::iota(perm.begin(), perm.end(), std::size_t{0});
    std::uint64_t state = opt.seed;

    std::vector<double> delta(n, 0.0), m(n, 0.0), v(n, 0.0), grad(n, 0.0);
    std::vector<float> s(s0.begin(), s0.end());
    smooth_training_result r;
    r.loss.reserve(static_cast<std::size_t>(opt.steps) + 1);
    double e0 = 0.0, best = std::numeric_limits<double>::infinity();
    double b1t = 1.0, b2t = 1.0;
    for (int k = 0;; ++k) {
        for (std::size_t j = 0; j < n; ++j) s[j] = s0[j] * static_cast<float>(std::exp(delta[j]));
        const bool last = k == opt.steps;
        double e;
        if (last) {
            e = layer.error(s);
        } else if (minibatch) {
            for (std::size_t i = 0; i < opt.batch_tokens; ++i)
                std::swap(perm[i], perm[i + detail::splitmix64(state) % (tokens - i)]);
            batch.assign(perm.begin(),
                         perm.begin() + static_cast<std::ptrdiff_t>(opt.batch_tokens));
            std::sort(batch.begin(), batch.end());
            e = layer.error_and_gradient(s, grad, batch, opt.scales);
        } else {
            e = layer.error_and_gradient(s, grad, opt.scales);
        }
        if (k == 0) e0 = e;
        r.loss.push_back(e);
        if (e < best) {
            best = e;
            r.best_step = static_cast<std::size_t>(k);
            r.scales = s;
            r.delta = delta;
        }
        if (last || e0 == 0.0) break;
        b1t *= opt.beta1;
        b2t *= opt.beta2;
        for (std::size_t j = 0; j < n; ++j) {
            const double g = grad[j] / e0;
            m[j] = opt.beta1 * m[j] + (1.0 - opt.beta1) * g;
            v[j] = opt.beta2 * v[j] + (1.0 - opt.beta2) * g * g;
            const double mhat = m[j] / (1.0 - b1t), vhat = v[j] / (1.0 - b2t);
            delta[j] -= opt.learning_rate * mhat / (std::sqrt(vhat) + opt.epsilon);
        }
        detail::project_box_zero_mean(delta, opt.bound);
    }
    r.initial_error = e0;
    r.error = best;
    if (heldout_x.rows > 0) {
        const smooth_layer<L> held(heldout_x, layer.weights(), layer.transform(),
                                   layer.quantizers());
        r.heldout_initial_error = held.error(s0);
        r.heldout_error = held.error(r.scales);
    }
    return r;
}

}  // namespace qift
