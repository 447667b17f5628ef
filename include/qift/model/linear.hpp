// SPDX-License-Identifier: MIT
// One linear layer of a model in any qift weight format (float32, packed codes of a level set,
// MXFP4 or one-bit planes) with its input quantization (none, A4 per token, or MXFP4), run on M
// tokens at once.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

#include "../act.hpp"
#include "../binary_matrix.hpp"
#include "../bitplane.hpp"
#include "../core.hpp"
#include "../detail/linalg.hpp"
#include "../gemm.hpp"
#include "../gemv.hpp"
#include "../levels.hpp"
#include "../mx.hpp"
#include "../scale.hpp"

namespace qift::inline QIFT_ISA {

/// How a linear quantizes its input before the product: not at all (float activations),
/// per-token symmetric INT4 (A4, act.hpp) with a clip ratio and code range, or MXFP4 (mx.hpp:
/// blocks of 32 along the row, E8M0 scales, E2M1 elements rounded by `rounding`).
struct input_quantization {
    enum class format { none, a4, mxfp4 };
    format kind = format::none;
    float clip = 0.9f;                            ///< A4 only
    a4_range range = a4_range::symmetric;         ///< A4 only
    mx_rounding rounding = mx_rounding::nearest;  ///< MXFP4 only

    static constexpr input_quantization none() noexcept { return {}; }
    static constexpr input_quantization a4_per_token(float clip = 0.9f) noexcept {
        return {format::a4, clip, a4_range::symmetric};
    }
    static constexpr input_quantization mxfp4(mx_rounding r = mx_rounding::nearest) noexcept {
        return {format::mxfp4, 0.9f, a4_range::symmetric, r};
    }
    bool a4() const noexcept { return kind == format::a4; }
    bool mx() const noexcept { return kind == format::mxfp4; }
    bool quantized() const noexcept { return kind != format::none; }
    bool operator==(const input_quantization&) const = default;
};

/// The input of one or more linears (q, k and v share one; so do gate and up): x [tokens][cols]
/// and, computed on first request and reused by every linear that shares the input, its A4 or
/// MXFP4 quantization, its dequantized form and copies padded to the packed kernels' row
/// length. All buffers keep their storage across reset(): after warm-up no call allocates.
class linear_input {
  public:
    /// A new input (the view must outlive the linears' forward calls). Invalidates the caches.
    void reset(matrix_view<const float> x) noexcept {
        x_ = x;
        a4_valid_ = mx_valid_ = dequantized_valid_ = padded_valid_ = false;
    }
    matrix_view<const float> x() const noexcept { return x_; }

    /// The A4 codes of x for `q` (computed once per reset and quantization parameters).
    const quantized_activations& a4(const input_quantization& q) {
        if (!a4_valid_ || a4_params_ != q) {
            quantize_activations(x_, a4_, q.clip, q.range);
            a4_params_ = q;
            a4_valid_ = true;
            dequantized_valid_ = false;
        }
        return a4_;
    }

    /// The MXFP4 blocks of x for `q` (computed once per reset and rounding mode).
    const mxfp4_matrix& mx(const input_quantization& q) {
        if (!mx_valid_ || mx_rounding_ != q.rounding) {
            quantize_mxfp4(x_, mx_, q.rounding);
            mx_rounding_ = q.rounding;
            mx_valid_ = true;
            dequantized_valid_ = false;
        }
        return mx_;
    }

    /// The values a quantized input `q` (A4 or MXFP4) stands for, as floats [tokens][cols],
    /// rows padded with zeros to `padded_cols` (the view's stride), as the float kernels read
    /// them (fake quantization, and weights without an integer kernel for that input).
    matrix_view<const float> dequantized(const input_quantization& q, std::size_t padded_cols) {
        if (q.a4()) a4(q);
        if (q.mx()) mx(q);
        if (!dequantized_valid_ || dequantized_stride_ != padded_cols || dequantized_of_ != q) {
            dequantized_.assign(x_.rows * padded_cols, 0.0f);
            for (std::size_t t = 0; t < x_.rows; ++t) {
                float* out = dequantized_.data() + t * padded_cols;
                if (q.a4()) {
                    for (std::size_t k = 0; k < x_.cols; ++k)
                        out[k] = a4_.scales[t] * float(a4_.code(t, k));
                } else {
                    dequantize_row(mx_, t, {out, x_.cols});
                }
            }
            dequantized_stride_ = padded_cols;
            dequantized_of_ = q;
            dequantized_valid_ = true;
        }
        return {dequantized_.data(), x_.rows, x_.cols, padded_cols};
    }

    /// x copied into rows of `padded_cols` floats, zeros past cols.
    matrix_view<const float> padded(std::size_t padded_cols) {
        if (!padded_valid_ || padded_stride_ != padded_cols) {
            padded_.assign(x_.rows * padded_cols, 0.0f);
            for (std::size_t t = 0; t < x_.rows; ++t)
                std::copy_n(&x_(t, 0), x_.cols, padded_.data() + t * padded_cols);
            padded_stride_ = padded_cols;
            padded_valid_ = true;
        }
        return {padded_.data(), x_.rows, x_.cols, padded_cols};
    }

  private:
    matrix_view<const float> x_;
    quantized_activations a4_;
    input_quantization a4_params_, dequantized_of_;
    mxfp4_matrix mx_;
    mx_rounding mx_rounding_ = mx_rounding::nearest;
    aligned_vector<float> dequantized_, padded_;
    std::size_t dequantized_stride_ = 0, padded_stride_ = 0;
    bool a4_valid_ = false, mx_valid_ = false, dequantized_valid_ = false, padded_valid_ = false;
};

/// Float32 weights kept as −Wᵀ [in][out], the operand layout of detail::gemm_sub (C −= A·B)
/// and of the column-streaming GEMV (y −= x_k · (−W[:, k])), so neither transposes per call.
class float_weights {
  public:
    float_weights() = default;
    explicit float_weights(matrix_view<const float> w) : neg_t_(w.cols, w.rows) {
        for (std::size_t r = 0; r < w.rows; ++r)
            for (std::size_t c = 0; c < w.cols; ++c) neg_t_(c, r) = -w(r, c);
    }
    std::size_t rows() const noexcept { return neg_t_.cols(); }
    std::size_t cols() const noexcept { return neg_t_.rows(); }
    /// W [out][in] (a copy).
    matrix<float> weights() const {
        matrix<float> w(rows(), cols());
        for (std::size_t r = 0; r < rows(); ++r)
            for (std::size_t c = 0; c < cols(); ++c) w(r, c) = -neg_t_(c, r);
        return w;
    }

    /// y [tokens][rows] = x [tokens][cols] · Wᵀ. One token: the columns of W streamed once
    /// (axpy per input value); more: the blocked GEMM of detail/linalg.hpp. Output columns are
    /// split over threads through parallel_for when the product is large.
    void forward(matrix_view<const float> x, matrix_view<float> y) const {
        const std::size_t out = rows(), in = cols();
        const std::size_t chunk = 256, chunks = (out + chunk - 1) / chunk;
        const bool parallel = x.rows * out * in >= (std::size_t{1} << 22);
        parallel_for(parallel ? chunks : 1, [&](std::size_t b, std::size_t e) {
            const std::size_t c0 = parallel ? b * chunk : 0,
                              c1 = parallel ? std::min(out, e * chunk) : out;
            for (std::size_t t = 0; t < x.rows; ++t)
                std::fill(&y(t, c0), &y(t, c0) + (c1 - c0), 0.0f);
            if (x.rows == 1) {
                for (std::size_t k = 0; k < in; ++k)
                    detail::axpy_sub(&y(0, c0), &neg_t_(k, c0), x(0, k), c1 - c0);
            } else {
                detail::gemm_sub<float>(
                    matrix_view<float>(&y(0, c0), x.rows, c1 - c0, y.stride), x,
                    matrix_view<const float>(&neg_t_(0, c0), in, c1 - c0, neg_t_.cols()));
            }
        });
    }

  private:
    matrix<float> neg_t_;
};

/// The kernel form a `linear` keeps for a per-row quantization with level set L: bit planes
/// (bitplane.hpp) for the sets only the float W2A16 path runs (no integer form: NF2, Lloyd)
/// when this build's default architecture has the AVX-512 bit-plane tile, packed codes
/// otherwise (on AVX2 the packed tile is the faster one).
template <packed_level_set L>
using linear_weights_for =
    typename bitplane_if<L, !integer_dot_level_set<L> && bit_linear_level_set<L> && bitplane_native,
                         packed_matrix<L>>::type;

/// The weight formats a `linear` can hold (a closed list, so that a forward call is one
/// variant dispatch and no virtual call). A set outside it is rejected at compile time.
using linear_storage = std::variant<float_weights, packed_matrix<levels::int4>,
                                    packed_matrix<levels::int3>, packed_matrix<levels::standard>,
                                    packed_matrix<levels::asymmetric>, packed_matrix<levels::mnz>,
                                    packed_matrix<levels::pot_mnz>, linear_weights_for<levels::nf2>,
                                    linear_weights_for<levels::lloyd>, packed_matrix<levels::pm12>,
                                    packed_matrix<levels::ternary>, mxfp4_matrix, binary_matrix>;

/// A linear layer y = W·x for M tokens: the weights in one of the formats of linear_storage and
/// how the input is quantized. Formats and paths:
///   float weights,  input none       float GEMM (float model)
///   float weights,  input A4/MXFP4   quantize-dequantize, float GEMM (fake-quant twin)
///   packed integer set, input A4     integer GEMV/GEMM (W2A4, W4A4)
///   packed set,     input none       float W2A16 GEMV/GEMM
///   bit planes (NF2/Lloyd with AVX-512), any input: the bit-plane W2A16 GEMV/GEMM on x or its
///                                    dequantized values
///   MXFP4 weights,  input MXFP4      MXFP4 × MXFP4 GEMV/GEMM (integer block dots, mx.hpp)
///   MXFP4 weights,  input none       MXFP4 × float GEMV/GEMM
///   one-bit weights, input A4        one-bit A4 GEMV/GEMM (binary_matrix.hpp), when the matrix
///                                    has no column scales (with them, the codes of x are not
///                                    the codes of α_c ⊙ x the kernel needs: next line)
///   one-bit weights, other inputs    x or its dequantized values through the float kernel
///   any other pair (NF2/Lloyd with A4, packed with MXFP4 input, MXFP4 with A4): the
///                   dequantized input values through the weights' float kernels
class linear {
  public:
    linear() = default;
    /// Float weights W [out][in].
    explicit linear(matrix_view<const float> w, input_quantization in = {})
        : w_(float_weights(w)), in_(in), name_("float") {}
    /// A per-row quantization in its kernel form, linear_weights_for<L> (no groups: both
    /// forms reject them).
    template <packed_level_set L>
    linear(const quantized_matrix<L>& q, input_quantization in)
        : w_(linear_weights_for<L>(q)), in_(in), name_(level_set_name<L>()) {
        static_assert(std::is_constructible_v<linear_storage, linear_weights_for<L>>,
                      "qift::linear: this level set is not in qift::linear_storage");
    }
    /// MXFP4 weights (quantize_mxfp4 of W [out][in], or from_ggml_mxfp4).
    linear(mxfp4_matrix w, input_quantization in) : w_(std::move(w)), in_(in), name_("mxfp4") {}
    /// One-bit weights (pack() of a binary.hpp result, or any binary_matrix).
    linear(binary_matrix w, input_quantization in) : w_(std::move(w)), in_(in), name_("binary") {}

    std::size_t rows() const noexcept {
        return std::visit([](const auto& w) { return w.rows(); }, w_);
    }
    std::size_t cols() const noexcept {
        return std::visit([](const auto& w) { return w.cols(); }, w_);
    }
    /// "float", "mxfp4", "binary" or the level set's name.
    std::string_view format() const noexcept { return name_; }
    const input_quantization& input() const noexcept { return in_; }
    const linear_storage& storage() const noexcept { return w_; }

    /// y [x.rows][rows()] = the layer applied to every token of `in` (x.cols == cols()).
    /// Throws qift::error on a shape mismatch or a non-finite input value.
    void forward(linear_input& in, matrix_view<float> y) const {
        const matrix_view<const float> x = in.x();
        detail::require(x.cols == cols() && y.rows == x.rows && y.cols == rows(), [&] {
            return "linear::forward: x is " + std::to_string(x.rows) + "x" +
                   std::to_string(x.cols) + ", y " + std::to_string(y.rows) + "x" +
                   std::to_string(y.cols) + ", weights " + std::to_string(rows()) + "x" +
                   std::to_string(cols()) + " (" + std::string(name_) + ")";
        });
        std::visit([&](const auto& w) { run(w, in, y); }, w_);
    }

  private:
    /// y = the layer's product on a (codes or float rows): the GEMV for one token, else the
    /// GEMM (each of whose rows equals the GEMV of its token).
    template <class W, class A>
    static void product(const W& w, const A& a, matrix_view<float> y) {
        if (y.rows != 1) return gemm(w, a, y);
        if constexpr (std::is_same_v<A, matrix_view<const float>>)
            gemv(w, a.row(0), y.row(0));
        else
            gemv(w, a, y.row(0));
    }

    void run(const float_weights& w, linear_input& in, matrix_view<float> y) const {
        w.forward(in_.quantized() ? in.dequantized(in_, in.x().cols) : in.x(), y);
    }
    template <class L>
    void run(const packed_matrix<L>& w, linear_input& in, matrix_view<float> y) const {
        const std::size_t pk = w.codes().padded_cols();
        if constexpr (integer_dot_level_set<L>) {
            if (in_.a4()) return product(w, in.a4(in_), y);
        }
        detail::gemm_float_padded(xsimd::default_arch{}, w,
                                  in_.quantized() ? in.dequantized(in_, pk) : in.padded(pk), y,
                                  false);
    }
    template <class L>
    void run(const bitplane_matrix<L>& w, linear_input& in, matrix_view<float> y) const {
        product(w, in_.quantized() ? in.dequantized(in_, w.cols()) : in.x(), y);
    }
    void run(const mxfp4_matrix& w, linear_input& in, matrix_view<float> y) const {
        if (in_.mx()) return product(w, in.mx(in_), y);
        product(w, in_.a4() ? in.dequantized(in_, w.cols()) : in.x(), y);
    }

    void run(const binary_matrix& w, linear_input& in, matrix_view<float> y) const {
        if (in_.a4() && w.column_scales().empty()) return product(w, in.a4(in_), y);
        product(w, in_.quantized() ? in.dequantized(in_, w.cols()) : in.x(), y);
    }

    linear_storage w_;
    input_quantization in_;
    std::string_view name_;
};

}  // namespace qift
