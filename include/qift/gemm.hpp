// SPDX-License-Identifier: MIT
// GEMM over M tokens (prefill): the GEMV kernels run on tiles of 4 rows × 4 tokens, so each
// decoded weight register serves four tokens; same arithmetic and references as gemv.hpp.
#pragma once

#include <cstddef>
#include <span>
#include <string>

#include "act.hpp"
#include "core.hpp"
#include "gemv.hpp"

namespace qift::inline QIFT_ISA {

namespace detail {

inline void check_gemm_output(std::size_t tokens, std::size_t rows, matrix_view<float> y,
                              const char* fn) {
    require(y.rows == tokens && y.cols == rows && y.stride >= y.cols, [&] {
        return std::string(fn) + ": y is " + std::to_string(y.rows) + "x" + std::to_string(y.cols) +
               " (stride " + std::to_string(y.stride) + "), expected " + std::to_string(tokens) +
               "x" + std::to_string(rows);
    });
}

template <class Kernel, class Arch, class L>
void gemm_integer(const Kernel& kernel, Arch arch, const packed_matrix<L>& w,
                  const quantized_activations& a, matrix_view<float> y, const char* fn) {
    check_integer_shapes(w, a, fn);
    check_gemm_output(a.tokens, w.rows(), y, fn);
    for_row_chunks(w.rows(), w.rows() * a.padded_cols * a.tokens,
                   [&](std::size_t r0, std::size_t r1) {
                       integer_rows(kernel, arch, w, a, r0, r1, 0, a.tokens, y.data, y.stride);
                   });
}

/// The W2A16 GEMM on activations already in the kernels' layout, without a copy: x.stride is
/// the packed row length w.codes().padded_cols() and x(t, k) = 0 for cols <= k < stride (the
/// model layer's reused buffers). Shapes are the caller's to check.
template <class Arch, class L>
void gemm_float_padded(Arch arch, const packed_matrix<L>& w, matrix_view<const float> x,
                       matrix_view<float> y, bool reference) {
    const std::size_t pk = w.codes().padded_cols();
    require(x.stride == pk && x.cols == w.cols() && y.rows == x.rows && y.cols == w.rows(), [&] {
        return "gemm_float_padded: x is " + std::to_string(x.rows) + "x" + std::to_string(x.cols) +
               " (stride " + std::to_string(x.stride) + "), expected stride " + std::to_string(pk);
    });
    for_row_chunks(w.rows(), w.rows() * pk * x.rows, [&](std::size_t r0, std::size_t r1) {
        w2a16_rows(arch, w, x.data, pk, r0, r1, 0, x.rows, y.data, y.stride, reference);
    });
}

template <class Arch, class L>
void gemm_float(Arch arch, const packed_matrix<L>& w, matrix_view<const float> x,
                matrix_view<float> y, bool reference, const char* fn) {
    require(x.cols == w.cols() && x.stride >= x.cols, [&] {
        return std::string(fn) + ": x has " + std::to_string(x.cols) + " columns, weights " +
               std::to_string(w.cols());
    });
    check_gemm_output(x.rows, w.rows(), y, fn);
    const float* buf = padded_float_activations(w, x);
    const std::size_t pk = w.codes().padded_cols();
    gemm_float_padded(arch, w, matrix_view<const float>(buf, x.rows, x.cols, pk), y, reference);
}

}  // namespace detail

/// W2A4 / W4A4 GEMM: y(t, r) = s_r/m · s_a[t] · Σ_k (Lint[code(r,k)] − z_r)·a(t,k) for every
/// token t of `a` (a.cols == w.cols()); y is [a.tokens][w.rows()] (row-major, any stride).
/// Tiles of 4 rows × 4 tokens (decoded weights reused across tokens), token blocks of 64,
/// 16-row chunks split over threads through parallel_for. Equals gemv token by token, bit for
/// bit. Throws qift::error on a shape mismatch. O(tokens·rows·cols).
template <integer_dot_level_set L, class Arch = xsimd::default_arch>
void gemm(const packed_matrix<L>& w, const quantized_activations& a, matrix_view<float> y,
          Arch arch = {}) {
    detail::gemm_integer(detail::integer_dot_lut_madd{}, arch, w, a, y, "gemm");
}

/// W2A16 GEMM (any level set): y(t, r) = s_r · Σ_k (L[code(r,k)] − z_r)·x(t,k), x [tokens][cols],
/// y [tokens][w.rows()]. Throws qift::error on a shape mismatch. O(tokens·rows·cols).
template <packed_level_set L, class Arch = xsimd::default_arch>
void gemm(const packed_matrix<L>& w, matrix_view<const float> x, matrix_view<float> y,
          Arch arch = {}) {
    detail::gemm_float(arch, w, x, y, false, "gemm");
}

/// Scalar references of both GEMMs (test oracles); the integer one equals gemm bit for bit.
template <integer_dot_level_set L>
void gemm_reference(const packed_matrix<L>& w, const quantized_activations& a,
                    matrix_view<float> y) {
    detail::gemm_integer(detail::integer_dot_scalar_kernel{}, xsimd::default_arch{}, w, a, y,
                         "gemm_reference");
}
template <packed_level_set L>
void gemm_reference(const packed_matrix<L>& w, matrix_view<const float> x, matrix_view<float> y) {
    detail::gemm_float(xsimd::default_arch{}, w, x, y, true, "gemm_reference");
}

}  // namespace qift
