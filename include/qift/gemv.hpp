// SPDX-License-Identifier: MIT
// The kernel-ready weight matrix (packed 2- or 4-bit codes + per-row scales) and the one-token
// GEMV: y = s_w ⊙ s_a · Σ_k L[c_k]·a_k in integers (W2A4, W4A4), or in float (W2A16).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "act.hpp"
#include "core.hpp"
#include "detail/gemv_kernels.hpp"
#include "levels.hpp"
#include "pack.hpp"
#include "scale.hpp"

namespace qift::inline QIFT_ISA {

/// A [rows][cols] weight matrix in kernel form: codes packed with storage_bits<L> bits in the
/// layout of pack.hpp, one scale per output row (per-channel; grouped scales are rejected),
/// and for affine sets one integer zero-point per row. Weight (r, c) = scale(r)·(L[code] −
/// zero(r)). Derived per-row data kept for the kernels:
///   integer_scales  scale(r) / level_traits<L>::integer_multiplier (integer sets): the factor
///                   that turns Σ integer_level·a into weight units (exact: a power of two)
///   level_tables    [rows][16] floats L[c] − zero(r) (float W2A16 path)
template <packed_level_set L>
class packed_matrix {
  public:
    using level_set_type = L;
    static constexpr unsigned bits = storage_bits<L>;

    packed_matrix() = default;

    /// Packs the output of the scale search or GPTQ. Throws qift::error when q has more than
    /// one group per row, or is empty.
    explicit packed_matrix(const quantized_matrix<L>& q)
        : codes_(pack<bits>(q.codes().view())),
          scales_(q.rows()),
          integer_scales_(q.rows()),
          tables_(q.rows() * 16, 0.0f) {
        detail::require(q.groups() == 1, [&] {
            return "packed_matrix: per-row scales only, got group_size " +
                   std::to_string(q.group_size()) + " (" + std::to_string(q.groups()) +
                   " groups per row of " + std::to_string(q.cols()) + ")";
        });
        if constexpr (level_traits<L>::has_zero_point) {
            zeros_.resize(q.rows());
            zero_points_.resize(q.rows());
        }
        for (std::size_t r = 0; r < q.rows(); ++r) {
            const channel_params p = q.params(r, 0);
            scales_[r] = p.scale;
            if constexpr (level_traits<L>::has_integer_form)
                integer_scales_[r] = p.scale / float(level_traits<L>::integer_multiplier);
            if constexpr (level_traits<L>::has_zero_point) {
                zeros_[r] = p.zero;
                zero_points_[r] = static_cast<std::int32_t>(p.zero);
            }
            for (std::size_t c = 0; c < level_traits<L>::count; ++c)
                tables_[r * 16 + c] = L::levels[c] - p.zero;
        }
    }

    std::size_t rows() const noexcept { return codes_.rows(); }
    std::size_t cols() const noexcept { return codes_.cols(); }
    const packed_codes<bits>& codes() const noexcept { return codes_; }
    /// Per-row scale s_r, and zero-point z_r (affine sets; empty otherwise).
    std::span<const float> scales() const noexcept { return scales_; }
    std::span<const float> zeros() const noexcept { return zeros_; }
    std::span<const std::int32_t> zero_points() const noexcept { return zero_points_; }
    std::span<const float> integer_scales() const noexcept { return integer_scales_; }
    const float* level_tables() const noexcept { return tables_.data(); }
    /// Bytes of packed codes (what a GEMV streams, besides rows·4 bytes of scales).
    std::size_t code_bytes() const noexcept { return codes_.size_bytes(); }

  private:
    packed_codes<bits> codes_;
    aligned_vector<float> scales_, integer_scales_, zeros_;
    aligned_vector<std::int32_t> zero_points_;
    aligned_vector<float> tables_;
};

namespace detail {

// Rows a parallel task takes at once and the work below which a call stays on one thread.
inline constexpr std::size_t row_chunk = 16;
inline constexpr std::size_t min_parallel_work = std::size_t{1} << 20;

inline std::size_t parallel_tasks(std::size_t rows, std::size_t work,
                                  std::size_t chunk = row_chunk) noexcept {
    return work < min_parallel_work ? 1 : (rows + chunk - 1) / chunk;
}

/// Runs body(b, e) over ranges of the ceil(rows / chunk) pieces of `chunk` rows, through
/// parallel_for when the call is large enough to pay for it (else once, over all of them).
template <class Body>
void for_chunk_ranges(std::size_t rows, std::size_t work, std::size_t chunk, const Body& body) {
    const std::size_t pieces = (rows + chunk - 1) / chunk;
    if (parallel_tasks(rows, work, chunk) <= 1)
        body(std::size_t{0}, pieces);
    else
        parallel_for(pieces, body);
}

/// Runs body(r0, r1) over [0, rows) in row_chunk pieces, through parallel_for when the call is
/// large enough to pay for it.
template <class Body>
void for_row_chunks(std::size_t rows, std::size_t work, const Body& body) {
    for_chunk_ranges(rows, work, row_chunk, [&](std::size_t b, std::size_t e) {
        const std::size_t r_end = std::min(rows, e * row_chunk);
        for (std::size_t r = b * row_chunk; r < r_end; r += row_chunk)
            body(r, std::min(r_end, r + row_chunk));
    });
}

/// The integer epilogue shared by every integer kernel (so their outputs agree bit for bit
/// when their dot products do): y = (s_r / m) · s_a · (dot − z_r · Σa).
inline float integer_epilogue(std::int32_t dot, float row_scale, std::int32_t zero, float act_scale,
                              std::int32_t act_sum) noexcept {
    return row_scale * act_scale * static_cast<float>(dot - zero * act_sum);
}

template <class L>
void check_integer_shapes(const packed_matrix<L>& w, const quantized_activations& a,
                          const char* fn) {
    require(a.cols == w.cols(), [&] {
        return std::string(fn) + ": activations have " + std::to_string(a.cols) +
               " columns, weights " + std::to_string(w.cols());
    });
    require(w.cols() <= max_dot_length, [&] {
        return std::string(fn) + ": K = " + std::to_string(w.cols()) + " exceeds " +
               std::to_string(max_dot_length);
    });
    require(a.padded_cols >= w.codes().padded_cols() && a.codes.size() == a.tokens * a.padded_cols,
            [&] {
                return std::string(fn) + ": activation buffer of " + std::to_string(a.padded_cols) +
                       " padded columns is malformed";
            });
}

/// Integer rows [r0, r1) × tokens [t0, t1) into y(t, r) = y_data[t·y_stride + r].
template <class Kernel, class Arch, class L>
void integer_rows(const Kernel& kernel, Arch arch, const packed_matrix<L>& w,
                  const quantized_activations& a, std::size_t r0, std::size_t r1, std::size_t t0,
                  std::size_t t1, float* y, std::size_t y_stride) {
    constexpr std::size_t tb = 64;
    std::int32_t dots[row_chunk * tb];
    const auto& codes = w.codes();
    const std::size_t blocks = codes.row_bytes() / packed_codes<storage_bits<L>>::block_bytes;
    for (std::size_t tt = t0; tt < t1; tt += tb) {
        const std::size_t nt = std::min(tb, t1 - tt);
        kernel(arch, L{}, codes.row_data(r0), codes.row_bytes(), r1 - r0, blocks, a.row(tt),
               a.padded_cols, a.sums.data() + tt, nt, dots, tb);
        // Token-major: each token's outputs are one contiguous run of y. (Row-major order here
        // wrote 64 tokens y_stride apart, one L1 set for a 4096-wide y: a third of the GEMM.)
        for (std::size_t j = 0; j < nt; ++j)
            for (std::size_t i = 0; i < r1 - r0; ++i) {
                const std::int32_t z =
                    level_traits<L>::has_zero_point ? w.zero_points()[r0 + i] : 0;
                y[(tt + j) * y_stride + r0 + i] =
                    integer_epilogue(dots[i * tb + j], w.integer_scales()[r0 + i], z,
                                     a.scales[tt + j], a.sums[tt + j]);
            }
    }
}

/// Adapts integer_dot_scalar to the kernel call shape (the reference path of gemv_reference).
struct integer_dot_scalar_kernel {
    template <class Arch, class L>
    void operator()(Arch, L, const std::uint8_t* w, std::size_t w_stride, std::size_t rows,
                    std::size_t blocks, const std::int8_t* a, std::size_t a_stride,
                    const std::int32_t*, std::size_t tokens, std::int32_t* out,
                    std::size_t ldo) const noexcept {
        integer_dot_scalar<L>(w, w_stride, rows, blocks, a, a_stride, tokens, out, ldo);
    }
};

/// Adapts integer_dot_shift_add to the kernel call shape.
struct integer_dot_shift_add_kernel {
    template <class Arch, class L>
    void operator()(Arch arch, L set, const std::uint8_t* w, std::size_t w_stride, std::size_t rows,
                    std::size_t blocks, const std::int8_t* a, std::size_t a_stride,
                    const std::int32_t*, std::size_t tokens, std::int32_t* out,
                    std::size_t ldo) const noexcept {
        integer_dot_shift_add{}(arch, set, w, w_stride, rows, blocks, a, a_stride, tokens, out,
                                ldo);
    }
};

/// Float rows [r0, r1) × tokens [t0, t1) of x (padded, stride x_stride) into y(t, r).
template <class Arch, class L>
void w2a16_rows(Arch arch, const packed_matrix<L>& w, const float* x, std::size_t x_stride,
                std::size_t r0, std::size_t r1, std::size_t t0, std::size_t t1, float* y,
                std::size_t y_stride, bool reference) {
    constexpr std::size_t tb = 64;
    float dots[row_chunk * tb];
    const auto& codes = w.codes();
    constexpr unsigned bits = storage_bits<L>;
    const std::size_t blocks = codes.row_bytes() / packed_codes<bits>::block_bytes;
    for (std::size_t tt = t0; tt < t1; tt += tb) {
        const std::size_t nt = std::min(tb, t1 - tt);
        if (reference)
            float_dot_scalar<bits>(codes.row_data(r0), codes.row_bytes(), r1 - r0, blocks,
                                   w.level_tables() + r0 * 16, x + tt * x_stride, x_stride, nt,
                                   dots, tb);
        else
            float_dot_lut_fma{}(arch, std::integral_constant<unsigned, bits>{}, codes.row_data(r0),
                                codes.row_bytes(), r1 - r0, blocks, w.level_tables() + r0 * 16,
                                x + tt * x_stride, x_stride, nt, dots, tb);
        for (std::size_t j = 0; j < nt; ++j)
            for (std::size_t i = 0; i < r1 - r0; ++i)
                y[(tt + j) * y_stride + r0 + i] = w.scales()[r0 + i] * dots[i * tb + j];
    }
}

/// x [tokens][cols] copied into a zero-padded [tokens][packed row length] buffer: the calling
/// thread's scratch (detail::thread_scratch), valid until its next W2A16 call.
template <class L>
const float* padded_float_activations(const packed_matrix<L>& w, matrix_view<const float> x) {
    const std::size_t pk = w.codes().padded_cols();
    float* buf = thread_scratch<scratch_slot::float_activations>(
        checked_mul(x.rows, pk, "padded_float_activations"));
    for (std::size_t t = 0; t < x.rows; ++t) {
        std::copy_n(&x(t, 0), x.cols, buf + t * pk);
        std::fill(buf + t * pk + x.cols, buf + (t + 1) * pk, 0.0f);
    }
    return buf;
}

template <class Kernel, class Arch, class L>
void gemv_integer(const Kernel& kernel, Arch arch, const packed_matrix<L>& w,
                  const quantized_activations& a, std::span<float> y, const char* fn) {
    check_integer_shapes(w, a, fn);
    require(a.tokens == 1 && y.size() == w.rows(), [&] {
        return std::string(fn) + ": expected 1 token and y of " + std::to_string(w.rows()) +
               ", got " + std::to_string(a.tokens) + " tokens and y of " + std::to_string(y.size());
    });
    for_row_chunks(w.rows(), w.rows() * a.padded_cols, [&](std::size_t r0, std::size_t r1) {
        integer_rows(kernel, arch, w, a, r0, r1, 0, 1, y.data(), 0);
    });
}

template <class Arch, class L>
void gemv_float(Arch arch, const packed_matrix<L>& w, std::span<const float> x, std::span<float> y,
                bool reference, const char* fn) {
    require(x.size() == w.cols() && y.size() == w.rows(), [&] {
        return std::string(fn) + ": x has " + std::to_string(x.size()) + " values, y " +
               std::to_string(y.size()) + "; the weights are " + std::to_string(w.rows()) + "x" +
               std::to_string(w.cols());
    });
    const float* buf = padded_float_activations(w, matrix_view<const float>(x.data(), 1, x.size()));
    const std::size_t pk = w.codes().padded_cols();
    for_row_chunks(w.rows(), w.rows() * pk, [&](std::size_t r0, std::size_t r1) {
        w2a16_rows(arch, w, buf, pk, r0, r1, 0, 1, y.data(), 0, reference);
    });
}

}  // namespace detail

/// W2A4 / W4A4 GEMV: y[r] = s_r/m · s_a · Σ_k (Lint[code(r,k)] − z_r)·a_k for the one token
/// of `a` (a.tokens == 1, a.cols == w.cols()), y of w.rows() values; Lint = L·m the integer
/// form, z_r the zero-point (affine sets) or 0. All arithmetic before the final two float
/// multiplies is exact in int32 (the proof is in detail/gemv_kernels.hpp). Kernel: byte-shuffle
/// decode + integer multiply-add (detail::integer_dot_lut_madd) on Arch (xsimd::default_arch
/// unless given). Rows are split over threads through parallel_for. Throws qift::error on a
/// shape mismatch. O(rows·cols); streams w.code_bytes() bytes.
template <integer_dot_level_set L, class Arch = xsimd::default_arch>
void gemv(const packed_matrix<L>& w, const quantized_activations& a, std::span<float> y,
          Arch arch = {}) {
    detail::gemv_integer(detail::integer_dot_lut_madd{}, arch, w, a, y, "gemv");
}

/// W2A16 GEMV (any level set, the path for NF2 and Lloyd): y[r] = s_r · Σ_k (L[code(r,k)] −
/// z_r)·x_k in float with fused multiply-adds. x has w.cols() values, y w.rows(). Throws
/// qift::error on a shape mismatch. O(rows·cols).
template <packed_level_set L, class Arch = xsimd::default_arch>
void gemv(const packed_matrix<L>& w, std::span<const float> x, std::span<float> y, Arch arch = {}) {
    detail::gemv_float(arch, w, x, y, false, "gemv");
}

/// Scalar references of both GEMVs (the test oracles): the same contracts, computed with
/// detail::integer_dot_scalar / detail::float_dot_scalar. The integer one equals gemv bit for bit.
template <integer_dot_level_set L>
void gemv_reference(const packed_matrix<L>& w, const quantized_activations& a, std::span<float> y) {
    detail::gemv_integer(detail::integer_dot_scalar_kernel{}, xsimd::default_arch{}, w, a, y,
                         "gemv_reference");
}
template <packed_level_set L>
void gemv_reference(const packed_matrix<L>& w, std::span<const float> x, std::span<float> y) {
    detail::gemv_float(xsimd::default_arch{}, w, x, y, true, "gemv_reference");
}

/// The same integer GEMV computed by literal shift-add (detail::integer_dot_shift_add: sign
/// flip and shifts of the activation, selected per code), kept for measurement and for
/// architectures without a byte shuffle. Bit-exact with gemv.
template <integer_dot_level_set L, class Arch = xsimd::default_arch>
void gemv_shift_add(const packed_matrix<L>& w, const quantized_activations& a, std::span<float> y,
                    Arch arch = {}) {
    detail::gemv_integer(detail::integer_dot_shift_add_kernel{}, arch, w, a, y, "gemv_shift_add");
}

}  // namespace qift
