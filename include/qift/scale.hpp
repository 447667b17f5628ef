// SPDX-License-Identifier: MIT
// Per-channel (optionally per-group) scale search and round-to-nearest quantization of a
// row-major weight matrix onto any level set: max-based scale, clipping-grid search as in
// GPTQ/QuaRot `w_clip`, and least-squares refinement (Lloyd iteration on the scale).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>

#include "core.hpp"
#include "detail/scale_kernels.hpp"
#include "levels.hpp"

namespace qift::inline QIFT_ISA {

/// How the per-channel scale is chosen before optional refinement.
enum class scale_rule {
    max,     ///< outer clip level at max|w| (symmetric) or [min w, max w] (affine): no clipping
    search,  ///< clipping grid p = 1 − i·step, i < grid, keeping the least Σ|w − q(w)|^exponent
};

/// Options of the scale search. The defaults are GPTQ/QuaRot's `w_clip` search.
struct scale_options {
    scale_rule rule = scale_rule::search;
    /// Exponent e of the search objective Σ|w − q(w)|^e: 2.4 as GPTQ/QuaRot, or 2 (MSE).
    float exponent = 2.4f;
    /// Number of grid points and their spacing: p = 1 − i·grid_step for i < grid.
    int grid = 80;
    float grid_step = 0.01f;
    /// After the rule: alternate nearest-level assignment and the least-squares scale
    /// s = Σ w·L[c] / Σ L[c]² (with z fixed for affine sets) until the codes stop changing.
    bool refine = false;
    int max_refine_iterations = 100;
    /// Columns per group along `in`; 0 means one group spanning the whole row.
    std::size_t group_size = 0;
};

/// Quantization parameters of one channel (or group): w ≈ scale · (levels[c] − zero).
/// `zero` is 0 for sets without zero-point; for affine sets it is an integer-valued float.
/// scale == 0 only for an all-zero channel, which then dequantizes to exact zeros.
struct channel_params {
    float scale = 0.0f;
    float zero = 0.0f;
};

/// Code of the level nearest to w under `p` (any code decoding to 0 when p.scale == 0).
template <level_set L>
constexpr std::uint8_t quantize_value(float w, channel_params p) noexcept {
    using T = level_traits<L>;
    if (p.scale == 0.0f) return T::encode(p.zero);
    return T::encode(w / p.scale + p.zero);
}

/// p.scale · (levels[code] − p.zero).
template <level_set L>
constexpr float dequantize_value(std::uint8_t code, channel_params p) noexcept {
    return p.scale * (level_traits<L>::decode(code) - p.zero);
}

/// Largest weight magnitude the quantizers take, 2^126 (about 8.5e37): with |w| <= 2^126 every
/// scale, zero-point and dequantized value stays a finite float (an affine range of 2^127
/// rounds its zero-point by up to half a step, which larger values would push past FLT_MAX).
inline constexpr float max_weight_magnitude = 0x1p126f;

namespace detail {

/// Finite and within ±max_weight_magnitude.
inline bool valid_weight(float w) noexcept {
    return std::fabs(w) <= max_weight_magnitude;
}

inline void check_finite(std::span<const float> w, const char* what) {
    for (std::size_t i = 0; i < w.size(); ++i)
        require(valid_weight(w[i]), [&] {
            return std::string(what) + ": element " + std::to_string(i) + " is " +
                   std::to_string(w[i]) + " (weights must be finite, |w| <= 2^126)";
        });
}

template <level_set L>
double quantization_error(std::span<const float> w, channel_params p, float exponent) {
    if (p.scale == 0.0f) {
        double sum = 0.0;
        for (float x : w) sum += std::pow(std::fabs(double(x)), double(exponent));
        return sum;
    }
    return quantization_error_kernel{}(xsimd::default_arch{}, w, p.scale, p.zero, exponent, L{});
}

// Parameters mapping the range scaled by p onto the level set without clipping.
template <level_set L>
channel_params clip_params(float lo, float hi, float p) noexcept {
    using T = level_traits<L>;
    if constexpr (T::has_zero_point) {
        // GPTQ's asymmetric rule: the range always contains 0 so that 0 is representable.
        const float a = std::min(lo, 0.0f) * p, b = std::max(hi, 0.0f) * p;
        // b/n − a/n rather than (b − a)/n: the difference of two large finite values can
        // overflow. A scale that underflows to 0 (a range of a few denormals) is the all-zero
        // channel's: its values dequantize to exact zeros.
        const float n = static_cast<float>(T::count - 1);
        const float s = b / n - a / n;
        if (!(s > 0.0f)) return {};
        const float z = std::clamp(std::round(-a / s), 0.0f, static_cast<float>(T::count - 1));
        return {s, z};
    } else {
        const float m = std::max(std::fabs(lo), std::fabs(hi)) * p;
        if (m <= 0.0f) return {};
        return {m / T::clip_abs, 0.0f};
    }
}

// Least-squares scale with the assignments (and zero) fixed, iterated to a fixed point.
template <level_set L>
channel_params refine_params(std::span<const float> w, channel_params p, int max_iterations) {
    if (p.scale == 0.0f) return p;
    for (int it = 0; it < max_iterations; ++it) {
        double num = 0.0, den = 0.0;
        for (float x : w) {
            const double l =
                double(level_traits<L>::decode(quantize_value<L>(x, p))) - double(p.zero);
            num += double(x) * l;
            den += l * l;
        }
        if (den == 0.0 || num <= 0.0) break;
        const channel_params next{static_cast<float>(num / den), p.zero};
        bool same = true;
        for (float x : w) same = same && quantize_value<L>(x, next) == quantize_value<L>(x, p);
        p = next;
        if (same) break;
    }
    return p;
}

}  // namespace detail

/// Quantization parameters for one channel or group `w` (contiguous values) under `opt`
/// (its group_size is ignored here). Precondition checked: w non-empty and finite.
/// Complexity: O(|w| · grid) for the search, O(|w| · iterations) for refinement.
template <level_set L>
channel_params find_params(std::span<const float> w, const scale_options& opt = {}) {
    detail::require(!w.empty(), [] { return std::string("find_params: w is empty"); });
    detail::require(opt.exponent > 0.0f && std::isfinite(opt.exponent), [&] {
        return "find_params: exponent must be positive and finite, got " +
               std::to_string(opt.exponent);
    });
    detail::require(opt.rule == scale_rule::max ||
                        (opt.grid >= 1 && opt.grid_step > 0.0f &&
                         1.0f - static_cast<float>(opt.grid - 1) * opt.grid_step > 0.0f),
                    [&] {
                        return "find_params: the clipping grid must stay positive, got grid=" +
                               std::to_string(opt.grid) +
                               " grid_step=" + std::to_string(opt.grid_step);
                    });
    detail::check_finite(w, "find_params: w");
    const auto [lo_it, hi_it] = std::minmax_element(w.begin(), w.end());
    const float lo = *lo_it, hi = *hi_it;
    channel_params best = detail::clip_params<L>(lo, hi, 1.0f);
    if (best.scale != 0.0f && opt.rule == scale_rule::search) {
        double best_err = detail::quantization_error<L>(w, best, opt.exponent);
        for (int i = 1; i < opt.grid; ++i) {
            const float p = 1.0f - static_cast<float>(i) * opt.grid_step;
            const channel_params cand = detail::clip_params<L>(lo, hi, p);
            const double err = detail::quantization_error<L>(w, cand, opt.exponent);
            if (err < best_err) best_err = err, best = cand;
        }
    }
    if (opt.refine) best = detail::refine_params<L>(w, best, opt.max_refine_iterations);
    return best;
}

/// The result of quantizing a [rows][cols] matrix onto level set L, produced by the scale
/// search (quantize) and by GPTQ, consumed by packing, fake-quant and statistics.
///   codes  [rows][cols]   one byte per weight, value < level_traits<L>::count
///   scales [rows][groups] groups = cols / group_size
///   zeros  [rows][groups] only for affine sets (empty otherwise)
/// Weight (r, c) dequantizes to scales(r, g) · (levels[codes(r, c)] − zeros(r, g)), g = c /
/// group_size.
template <level_set L>
class quantized_matrix {
  public:
    using level_set_type = L;

    quantized_matrix() = default;
    /// Validates shapes and codes; throws qift::error naming the mismatch.
    quantized_matrix(matrix<std::uint8_t> codes, matrix<float> scales, matrix<float> zeros,
                     std::size_t group_size)
        : codes_(std::move(codes)),
          scales_(std::move(scales)),
          zeros_(std::move(zeros)),
          group_size_(group_size) {
        const auto shape = [](const auto& m) {
            return std::to_string(m.rows()) + "x" + std::to_string(m.cols());
        };
        detail::require(group_size_ > 0 && codes_.cols() % group_size_ == 0, [&] {
            return "quantized_matrix: group_size " + std::to_string(group_size_) +
                   " does not divide cols " + std::to_string(codes_.cols());
        });
        detail::require(scales_.rows() == codes_.rows() && scales_.cols() == groups(), [&] {
            return "quantized_matrix: scales are " + shape(scales_) + ", expected " +
                   std::to_string(codes_.rows()) + "x" + std::to_string(groups());
        });
        if constexpr (level_traits<L>::has_zero_point)
            detail::require(zeros_.rows() == scales_.rows() && zeros_.cols() == scales_.cols(),
                            [&] {
                                return "quantized_matrix: zeros are " + shape(zeros_) +
                                       ", expected " + shape(scales_);
                            });
        else
            detail::require(zeros_.empty(), [&] {
                return "quantized_matrix: zeros given (" + shape(zeros_) +
                       ") for a level set without zero-point";
            });
        for (auto c : codes_.flat())
            detail::require(c < level_traits<L>::count, [&] {
                return "quantized_matrix: code " + std::to_string(c) + " out of range for " +
                       std::to_string(level_traits<L>::count) + " levels";
            });
    }

    std::size_t rows() const noexcept { return codes_.rows(); }
    std::size_t cols() const noexcept { return codes_.cols(); }
    std::size_t group_size() const noexcept { return group_size_; }
    std::size_t groups() const noexcept { return group_size_ ? codes_.cols() / group_size_ : 0; }
    const matrix<std::uint8_t>& codes() const noexcept { return codes_; }
    const matrix<float>& scales() const noexcept { return scales_; }
    float scales(std::size_t r, std::size_t g) const noexcept { return scales_(r, g); }
    const matrix<float>& zeros() const noexcept { return zeros_; }

    /// Parameters of row r, group g.
    channel_params params(std::size_t r, std::size_t g) const noexcept {
        if constexpr (level_traits<L>::has_zero_point)
            return {scales_(r, g), zeros_(r, g)};
        else
            return {scales_(r, g), 0.0f};
    }

    /// The dequantized (fake-quant) [rows][cols] float matrix.
    matrix<float> dequantize() const {
        matrix<float> out(rows(), cols());
        for (std::size_t r = 0; r < rows(); ++r)
            for (std::size_t c = 0; c < cols(); ++c)
                out(r, c) = dequantize_value<L>(codes_(r, c), params(r, c / group_size_));
        return out;
    }

  private:
    matrix<std::uint8_t> codes_;
    matrix<float> scales_;
    matrix<float> zeros_;
    std::size_t group_size_ = 0;
};

namespace detail {

inline std::size_t checked_group_size(matrix_view<const float> w, std::size_t group_size,
                                      const char* fn) {
    require(!w.empty(), [&] {
        return std::string(fn) + ": w is empty (" + std::to_string(w.rows) + "x" +
               std::to_string(w.cols) + ")";
    });
    require(w.stride >= w.cols, [&] {
        return std::string(fn) + ": w.stride " + std::to_string(w.stride) + " < w.cols " +
               std::to_string(w.cols);
    });
    const std::size_t g = group_size == 0 ? w.cols : group_size;
    require(w.cols % g == 0, [&] {
        return std::string(fn) + ": group_size " + std::to_string(group_size) +
               " does not divide the row length " + std::to_string(w.cols);
    });
    for (std::size_t r = 0; r < w.rows; ++r)
        for (std::size_t c = 0; c < w.cols; ++c)
            require(valid_weight(w(r, c)), [&] {
                return std::string(fn) + ": w(" + std::to_string(r) + ", " + std::to_string(c) +
                       ") is " + std::to_string(w(r, c)) +
                       " (weights must be finite, |w| <= 2^126)";
            });
    return g;
}

}  // namespace detail

/// Round-to-nearest quantization of W [rows][cols] (row-major, out × in) onto L with
/// per-row, per-group parameters from find_params. Rows are processed in parallel.
/// Throws qift::error for an empty matrix, a group size that does not divide cols, or a
/// non-finite weight or one beyond ±max_weight_magnitude (naming its position).
template <level_set L>
quantized_matrix<L> quantize(matrix_view<const float> w, const scale_options& opt = {}) {
    const std::size_t g = detail::checked_group_size(w, opt.group_size, "quantize");
    const std::size_t groups = w.cols / g;
    matrix<std::uint8_t> codes(w.rows, w.cols);
    matrix<float> scales(w.rows, groups);
    matrix<float> zeros =
        level_traits<L>::has_zero_point ? matrix<float>(w.rows, groups) : matrix<float>();
    parallel_for(w.rows, [&](std::size_t begin, std::size_t end) {
        for (std::size_t r = begin; r < end; ++r)
            for (std::size_t j = 0; j < groups; ++j) {
                const std::span<const float> part = w.row(r).subspan(j * g, g);
                const channel_params p = find_params<L>(part, opt);
                scales(r, j) = p.scale;
                if constexpr (level_traits<L>::has_zero_point) zeros(r, j) = p.zero;
                for (std::size_t c = 0; c < g; ++c)
                    codes(r, j * g + c) = quantize_value<L>(part[c], p);
            }
    });
    return quantized_matrix<L>(std::move(codes), std::move(scales), std::move(zeros), g);
}

/// Quantize and dequantize in one step: the fake-quant matrix research code compares with W.
template <level_set L>
matrix<float> fake_quantize(matrix_view<const float> w, const scale_options& opt = {}) {
    return quantize<L>(w, opt).dequantize();
}

/// Relative squared error ‖a − b‖² / ‖a‖² (0 when both are zero; +inf when only a is zero).
inline double relative_mse(matrix_view<const float> a, matrix_view<const float> b) {
    detail::require(a.rows == b.rows && a.cols == b.cols, [&] {
        return "relative_mse: shapes differ, a is " + std::to_string(a.rows) + "x" +
               std::to_string(a.cols) + ", b is " + std::to_string(b.rows) + "x" +
               std::to_string(b.cols);
    });
    double num = 0.0, den = 0.0;
    for (std::size_t r = 0; r < a.rows; ++r)
        for (std::size_t c = 0; c < a.cols; ++c) {
            const double d = double(a(r, c)) - double(b(r, c));
            num += d * d;
            den += double(a(r, c)) * double(a(r, c));
        }
    if (den == 0.0) return num == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
    return num / den;
}

}  // namespace qift
