// SPDX-License-Identifier: MIT
// MXFP4 (OCP Microscaling Formats v1.0): blocks of 32 E2M1 elements sharing one E8M0 power-of-two
// scale, quantized bit-exactly as the reference implementation (microsoft/microxcaling) does, a
// packed matrix type, lossless conversion to and from ggml's block_mxfp4 bytes, and the GEMV /
// GEMM of MXFP4 weights with MXFP4 or float activations.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "core.hpp"
#include "detail/mx_kernels.hpp"
#include "gemm.hpp"
#include "levels.hpp"

namespace qift::inline QIFT_ISA {

/// Rounding of the scaled elements onto the E2M1 grid (microxcaling's `RoundingMode`).
enum class mx_rounding {
    nearest,  ///< to nearest, ties away from zero (the reference's default)
    even,     ///< to nearest, ties to even
    floor,    ///< toward zero
};

/// Elements per MX block.
inline constexpr std::size_t mx_block_size = 32;
/// The E8M0 code of a NaN block (no value; the reference's NaN scale).
inline constexpr std::uint8_t e8m0_nan = 0xFF;

namespace detail {

/// The reference's shared exponent of a block with max |x| = amax: floor(log2(amax)) in float32
/// (an amax within a float32 rounding below 2^k counts as 2^k, as torch.log2 makes it), log2 of
/// the smallest normal float for an all-zero block, minus E2M1's emax 2; clamped below at −127.
/// Returns false for a NaN block (amax not finite, or an exponent above 127).
inline bool mx_shared_exponent(float amax, int& e) noexcept {
    if (!std::isfinite(amax)) return false;
    const float a = amax == 0.0f ? 1.17549435e-38f : amax;  // FP32_MIN_NORMAL
    const int k = static_cast<int>(std::floor(std::log2(a))) - 2;
    if (k > 127) return false;
    e = std::max(k, -127);
    return true;
}

/// E2M1 code (sign << 3 | magnitude index, the order of levels::e2m1) of a value already divided
/// by its block scale, as the reference's _quantize_elemwise_core does for FP4 E2M1 (ebits 2,
/// mbits 3, denormals allowed, normals saturated at 6): private exponent p = max(floor(log2|a|),
/// 0), one fractional mantissa bit, rounding per `mode`, clamp to 6.
inline std::uint8_t e2m1_code(float a, mx_rounding mode) noexcept {
    const std::uint8_t sign = std::signbit(a) ? 8 : 0;
    const float m = std::fabs(a);
    if (m == 0.0f) return sign;
    const int p = std::max(static_cast<int>(std::floor(std::log2(m))), 0);
    const float s = std::ldexp(m, 1 - p);  // mantissa with one fractional bit as an integer
    float r = 0.0f;
    switch (mode) {
        case mx_rounding::nearest:
            r = std::floor(s + 0.5f);
            break;
        case mx_rounding::even:
            r = std::floor(s + 0.5f) - (std::fmod(s - 0.5f, 2.0f) == 0.0f ? 1.0f : 0.0f);
            break;
        case mx_rounding::floor:
            r = std::floor(s);
            break;
    }
    const float v = std::min(std::ldexp(r, p - 1), 6.0f);
    // v is one of the E2M1 magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}.
    const std::uint8_t index = v < 2.0f   ? static_cast<std::uint8_t>(v * 2.0f)
                               : v < 4.0f ? static_cast<std::uint8_t>(v + 2.0f)
                               : v < 6.0f ? std::uint8_t{6}
                                          : std::uint8_t{7};
    return static_cast<std::uint8_t>(sign | index);
}

}  // namespace detail

/// A [rows][cols] matrix in MXFP4, blocks of 32 along each row (the reduction dimension). A row
/// whose length is not a multiple of 32 is padded with zeros to whole blocks (padded_cols()).
/// Layout, per row r and block b (blocks_per_row() blocks, 16 code bytes each):
///   codes   [rows][blocks·16] bytes: byte j of block b holds element j in its low nibble and
///           element j + 16 in its high nibble (ggml's block_mxfp4 nibble order, so one 64-byte
///           load carries four whole blocks);
///   scales  [rows][blocks] E8M0 codes, e + 127 for the scale 2^e, e8m0_nan for a NaN block.
/// Element (r, k) = 2^e · levels::e2m1::levels[code]; every element of a NaN block is NaN.
class mxfp4_matrix {
  public:
    static constexpr std::size_t block_bytes = mx_block_size / 2;

    mxfp4_matrix() = default;
    /// An all-zero-code matrix with zero scale codes (filled by quantize_mxfp4 / from_ggml).
    /// Throws qift::error, before allocating, when the padded size (rows · blocks · 16 code
    /// bytes, blocks · 32 padded columns) does not fit in std::size_t.
    mxfp4_matrix(std::size_t rows, std::size_t cols)
        : rows_(rows),
          cols_(cols),
          blocks_(blocks_for(cols)),
          codes_(detail::checked_size({rows, blocks_, block_bytes}, "mxfp4_matrix"), 0),
          scales_(rows * blocks_, 0) {}

    std::size_t rows() const noexcept { return rows_; }
    std::size_t cols() const noexcept { return cols_; }
    std::size_t blocks_per_row() const noexcept { return blocks_; }
    std::size_t padded_cols() const noexcept { return blocks_ * mx_block_size; }
    /// Code bytes of row r (blocks_per_row()·16) and its E8M0 scale codes (blocks_per_row()).
    std::uint8_t* row_codes(std::size_t r) noexcept { return codes_.data() + r * blocks_ * 16; }
    const std::uint8_t* row_codes(std::size_t r) const noexcept {
        return codes_.data() + r * blocks_ * 16;
    }
    std::uint8_t* row_scales(std::size_t r) noexcept { return scales_.data() + r * blocks_; }
    const std::uint8_t* row_scales(std::size_t r) const noexcept {
        return scales_.data() + r * blocks_;
    }
    /// E2M1 code of element k (< padded_cols()) of row r.
    std::uint8_t code(std::size_t r, std::size_t k) const noexcept {
        const std::uint8_t byte = row_codes(r)[k / mx_block_size * 16 + k % 16];
        return k % mx_block_size < 16 ? byte & 0x0F : byte >> 4;
    }
    /// Number of NaN blocks (a block that held a NaN or an infinity, or overflowed the scale).
    std::size_t nan_blocks() const noexcept {
        return std::size_t(std::count(scales_.begin(), scales_.end(), e8m0_nan));
    }
    /// Bytes of codes and scales: 4.25 bits per (padded) element.
    std::size_t size_bytes() const noexcept { return codes_.size() + scales_.size(); }

  private:
    // ceil(cols / 32) without forming cols + 31 (which wraps near SIZE_MAX); padded_cols() must
    // fit as well.
    static std::size_t blocks_for(std::size_t cols) {
        const std::size_t blocks = cols / mx_block_size + (cols % mx_block_size != 0);
        detail::require(blocks <= std::numeric_limits<std::size_t>::max() / mx_block_size, [&] {
            return "mxfp4_matrix: cols " + std::to_string(cols) +
                   " overflows std::size_t when padded to whole blocks of " +
                   std::to_string(mx_block_size);
        });
        return blocks;
    }

    std::size_t rows_ = 0, cols_ = 0, blocks_ = 0;
    aligned_vector<std::uint8_t> codes_, scales_;
};

/// Quantizes one block of up to 32 values (missing ones are zeros) into 16 code bytes (ggml
/// nibble order) and returns its E8M0 scale code; e8m0_nan when the block holds a NaN or an
/// infinity or its exponent exceeds 127 (the codes are then 0). The reference's algorithm:
/// e = floor(log2(max|x|)) − 2 (clamped at −127), each element x/2^e rounded onto E2M1 by
/// `mode` and saturated at ±6.
inline std::uint8_t quantize_mxfp4_block(std::span<const float> x, std::uint8_t* codes,
                                         mx_rounding mode = mx_rounding::nearest) noexcept {
    float amax = 0.0f;
    bool finite = true;
    for (float v : x) {
        finite = finite && std::isfinite(v);
        amax = std::max(amax, std::fabs(v));
    }
    int e = 0;
    std::fill_n(codes, mxfp4_matrix::block_bytes, std::uint8_t{0});
    if (!finite || !detail::mx_shared_exponent(amax, e)) return e8m0_nan;
    for (std::size_t j = 0; j < x.size(); ++j) {
        const std::uint8_t c = detail::e2m1_code(std::ldexp(x[j], -e), mode);
        codes[j % 16] |= static_cast<std::uint8_t>(j < 16 ? c : c << 4);
    }
    return static_cast<std::uint8_t>(e + 127);
}

static_assert(int(mx_rounding::nearest) == detail::mx_nearest &&
              int(mx_rounding::even) == detail::mx_even &&
              int(mx_rounding::floor) == detail::mx_floor);

/// MXFP4 quantization of x [rows][cols] (row-major, any stride) into `out`, blocks of 32 along
/// each row, the last block of a row padded with zeros: out's storage is reused when it already
/// has x's shape (rows, cols) and reallocated otherwise, so a caller quantizing one activation
/// row per token allocates once. The result equals quantize_mxfp4_block on every block, bit for
/// bit, in all three modes: the kernels (detail/mx_kernels.hpp) compute the reference's
/// floor(log2 ·) and float32 rounding on the float bits, with AVX-512 where the target has
/// AVX-512F/BW/VL (every mode) and a portable bit-level loop elsewhere (AVX2 included). Never
/// throws for non-finite values: a block holding one becomes a NaN block. Throws qift::error for
/// an empty x. O(rows·cols), one thread: 4096 values take about 0.5 µs (nearest; 0.6 µs even or
/// floor) on one Sapphire Rapids core, about 5 µs on the portable path, against about 100 µs
/// for quantize_mxfp4_block.
inline void quantize_mxfp4(matrix_view<const float> x, mxfp4_matrix& out,
                           mx_rounding mode = mx_rounding::nearest) {
    detail::require(!x.empty(), [&] {
        return "quantize_mxfp4: x is empty (" + std::to_string(x.rows) + "x" +
               std::to_string(x.cols) + ")";
    });
    if (out.rows() != x.rows || out.cols() != x.cols) out = mxfp4_matrix(x.rows, x.cols);
    std::uint8_t* codes = out.row_codes(0);
    std::uint8_t* scales = out.row_scales(0);
    switch (mode) {
        case mx_rounding::nearest:
            detail::mx_quantize_rows<detail::mx_nearest>(x.data, x.stride, x.rows, x.cols, codes,
                                                         scales);
            break;
        case mx_rounding::even:
            detail::mx_quantize_rows<detail::mx_even>(x.data, x.stride, x.rows, x.cols, codes,
                                                      scales);
            break;
        case mx_rounding::floor:
            detail::mx_quantize_rows<detail::mx_floor>(x.data, x.stride, x.rows, x.cols, codes,
                                                       scales);
            break;
    }
}

/// MXFP4 quantization of x [rows][cols] (row-major, any stride), blocks of 32 along each row,
/// the last block of a row padded with zeros, into a new matrix (the in-place overload above).
/// Never throws for non-finite values: a block holding one becomes a NaN block (count them with
/// nan_blocks()). Throws qift::error for an empty x. O(rows·cols).
inline mxfp4_matrix quantize_mxfp4(matrix_view<const float> x,
                                   mx_rounding mode = mx_rounding::nearest) {
    mxfp4_matrix q;
    quantize_mxfp4(x, q, mode);
    return q;
}

/// The values of row r of q into out[0, q.cols()) (out.size() >= q.cols(); padding dropped), as
/// dequantize() reads them.
inline void dequantize_row(const mxfp4_matrix& q, std::size_t r, std::span<float> out) noexcept {
    for (std::size_t k = 0; k < q.cols(); ++k) {
        const std::uint8_t s = q.row_scales(r)[k / mx_block_size];
        out[k] = s == e8m0_nan ? NAN : std::ldexp(levels::e2m1::levels[q.code(r, k)], int(s) - 127);
    }
}

/// The values of an MXFP4 matrix [rows][cols] (padding dropped); NaN blocks read as NaN. As in
/// the reference's float32 arithmetic, a block whose max is within a rounding of FLT_MAX gets
/// exponent 126 and an element rounded up to 4·2^126 reads as infinity.
inline matrix<float> dequantize(const mxfp4_matrix& q) {
    matrix<float> out(q.rows(), q.cols());
    for (std::size_t r = 0; r < q.rows(); ++r) dequantize_row(q, r, out.row(r));
    return out;
}

namespace detail {

/// E2M1 values doubled, by code: the integers {0, 1, 2, 3, 4, 6, 8, 12} and their negatives, so a
/// block's dot product of codes is exact in int32 (|Σ| ≤ 32·144) and scaled by 2^(e_w + e_a − 2).
inline constexpr std::array<std::int32_t, 16> e2m1_doubled = [] {
    std::array<std::int32_t, 16> t{};
    for (std::size_t c = 0; c < 16; ++c)
        t[c] = static_cast<std::int32_t>(levels::e2m1::levels[c] * 2.0f);
    return t;
}();
static_assert(e2m1_doubled[7] == 12 && e2m1_doubled[15] == -12 && e2m1_doubled[9] == -1);

inline void check_mx_gemv(const mxfp4_matrix& w, std::size_t x_cols, std::size_t y_size,
                          const char* fn) {
    require(x_cols == w.cols() && y_size == w.rows(), [&] {
        return std::string(fn) + ": x has " + std::to_string(x_cols) + " values, y " +
               std::to_string(y_size) + "; the weights are " + std::to_string(w.rows()) + "x" +
               std::to_string(w.cols());
    });
}

}  // namespace detail

/// Scalar reference of the MXFP4 × MXFP4 GEMV (the oracle of the kernels to come): a is one
/// token quantized with quantize_mxfp4 (1 × w.cols()), and y[r] = Σ_b 2^(e_w(r,b) + e_a(b) − 2) ·
/// Σ_j 2w_j·2a_j, the inner sums exact in int32, the blocks added in order in float. A NaN block
/// on either side makes its row NaN. Throws qift::error on a shape mismatch.
inline void gemv_reference(const mxfp4_matrix& w, const mxfp4_matrix& a, std::span<float> y) {
    detail::require(a.rows() == 1, [&] {
        return "gemv_reference: MXFP4 activations have " + std::to_string(a.rows()) +
               " rows, expected 1";
    });
    detail::check_mx_gemv(w, a.cols(), y.size(), "gemv_reference");
    for (std::size_t r = 0; r < w.rows(); ++r) {
        float acc = 0.0f;
        for (std::size_t b = 0; b < w.blocks_per_row(); ++b) {
            const std::uint8_t sw = w.row_scales(r)[b], sa = a.row_scales(0)[b];
            if (sw == e8m0_nan || sa == e8m0_nan) {
                acc = NAN;
                break;
            }
            std::int32_t dot = 0;
            for (std::size_t j = 0; j < mx_block_size; ++j)
                dot += detail::e2m1_doubled[w.code(r, b * mx_block_size + j)] *
                       detail::e2m1_doubled[a.code(0, b * mx_block_size + j)];
            acc += std::ldexp(static_cast<float>(dot), int(sw) + int(sa) - 254 - 2);
        }
        y[r] = acc;
    }
}

/// Scalar reference of the MXFP4 × float GEMV: y[r] = Σ_b 2^e_w(r,b) · Σ_j E2M1(w_j)·x_j, x of
/// w.cols() floats, in float. Throws qift::error on a shape mismatch.
inline void gemv_reference(const mxfp4_matrix& w, std::span<const float> x, std::span<float> y) {
    detail::check_mx_gemv(w, x.size(), y.size(), "gemv_reference");
    for (std::size_t r = 0; r < w.rows(); ++r) {
        float acc = 0.0f;
        for (std::size_t b = 0; b < w.blocks_per_row(); ++b) {
            const std::uint8_t sw = w.row_scales(r)[b];
            if (sw == e8m0_nan) {
                acc = NAN;
                break;
            }
            float dot = 0.0f;
            for (std::size_t k = b * mx_block_size; k < std::min(w.cols(), (b + 1) * mx_block_size);
                 ++k)
                dot += levels::e2m1::levels[w.code(r, k)] * x[k];
            acc += std::ldexp(dot, int(sw) - 127);
        }
        y[r] = acc;
    }
}

namespace detail {

/// The MXFP4 kernel paths compiled into this build; gemv / gemm use mx_best_path, the tests run
/// every compiled one.
enum class mx_path { scalar, avx2, avx512 };
inline constexpr mx_path mx_best_path = QIFT_MX_AVX512 ? mx_path::avx512
                                        : QIFT_MX_AVX2 ? mx_path::avx2
                                                       : mx_path::scalar;
inline constexpr bool mx_path_compiled(mx_path p) noexcept {
    return p == mx_path::scalar || (p == mx_path::avx2 && QIFT_MX_AVX2) ||
           (p == mx_path::avx512 && QIFT_MX_AVX512);
}

inline void check_mx_nonempty(const mxfp4_matrix& m, const char* what, const char* fn) {
    require(m.rows() > 0 && m.cols() > 0, [&] {
        return std::string(fn) + ": " + what + " are empty (" + std::to_string(m.rows()) + "x" +
               std::to_string(m.cols()) + ")";
    });
}

/// y(t, r) = y[t·y_stride + r] = MXFP4 row r of w · MXFP4 row t of a, for every row and token,
/// rows split over threads in 16-row chunks. Shapes are the caller's to check.
inline void mx_int_product(const mxfp4_matrix& w, const mxfp4_matrix& a, float* y,
                           std::size_t y_stride, mx_path path) {
    const std::size_t rows = w.rows(), blocks = w.blocks_per_row(), tokens = a.rows();
    const std::size_t work = rows * blocks * mx_block_size * tokens;
    if (path == mx_path::scalar) {
        for_row_chunks(rows, work, [&](std::size_t r0, std::size_t r1) {
            mx_int_rows_scalar(w.row_codes(r0), w.row_scales(r0), r1 - r0, blocks, a.row_codes(0),
                               a.row_scales(0), tokens, y + r0, 1, y_stride);
        });
        return;
    }
    mx_prepared_activations prep;
    const auto run = [&](auto kernel) {
        using K = decltype(kernel);
        mx_prepare(a.row_codes(0), a.row_scales(0), tokens, blocks, K::group, prep);
        for_row_chunks(rows, work, [&](std::size_t r0, std::size_t r1) {
            mx_int_rows<K>(w.row_codes(0), w.row_scales(0), blocks, prep, r0, r1, y, y_stride);
        });
    };
#if QIFT_MX_AVX512
    if (path == mx_path::avx512) return run(mx_int_avx512{});
#endif
#if QIFT_MX_AVX2
    if (path == mx_path::avx2) return run(mx_int_avx2{});
#endif
    (void)run;
    fail("mx_int_product: kernel path not compiled into this build");
}

/// y(t, r) = y[t·y_stride + r] = MXFP4 row r of w · row t of x (x.cols == w.cols()), rows split
/// over threads in 16-row chunks; x is copied to a zero-padded buffer when its rows are not whole
/// blocks. Shapes are the caller's to check.
inline void mx_float_product(const mxfp4_matrix& w, matrix_view<const float> x, float* y,
                             std::size_t y_stride, mx_path path) {
    const std::size_t rows = w.rows(), blocks = w.blocks_per_row(), tokens = x.rows;
    const std::size_t work = rows * blocks * mx_block_size * tokens;
    if (path == mx_path::scalar) {
        for_row_chunks(rows, work, [&](std::size_t r0, std::size_t r1) {
            mx_float_rows_scalar(w.row_codes(r0), w.row_scales(r0), r1 - r0, blocks, w.cols(),
                                 x.data, x.stride, tokens, y + r0, 1, y_stride);
        });
        return;
    }
    aligned_vector<float> buf;
    const float* xp = x.data;
    std::size_t xs = x.stride;
    if (x.cols % mx_block_size != 0) {
        xs = blocks * mx_block_size;
        buf.assign(tokens * xs, 0.0f);
        for (std::size_t t = 0; t < tokens; ++t) std::copy_n(&x(t, 0), x.cols, buf.data() + t * xs);
        xp = buf.data();
    }
    const auto run = [&](auto kernel) {
        for_row_chunks(rows, work, [&](std::size_t r0, std::size_t r1) {
            mx_float_rows<decltype(kernel)>(w.row_codes(0), w.row_scales(0), blocks, xp, xs, tokens,
                                            r0, r1, y, y_stride);
        });
    };
#if QIFT_MX_AVX512
    if (path == mx_path::avx512) return run(mx_float_avx512{});
#endif
#if QIFT_MX_AVX2
    if (path == mx_path::avx2) return run(mx_float_avx2{});
#endif
    (void)run;
    fail("mx_float_product: kernel path not compiled into this build");
}

}  // namespace detail

/// MXFP4 × MXFP4 GEMV: y[r] = Σ_b 2^(e_w(r,b) + e_a(b) − 2) · Σ_j 2w_j·2a_j for the one token
/// a (1 × w.cols(), e.g. from quantize_mxfp4), y of w.rows() values. Contract: each block's
/// integer dot is exact and so is its scaling (each term equals gemv_reference's); the float sum
/// over blocks runs in another order (16 blocks per vector on AVX-512, 8 on AVX2, then a
/// horizontal sum), so |y − y_ref| <= (blocks_per_row + 16)·ε·Σ_b |term_b| with ε = 2^−24 (0
/// with one block per row). A NaN block on either side makes its output NaN. Kernels
/// (detail/mx_kernels.hpp): AVX-512 vpermb / vpshufb decode + vpdpbusd (VNNI) or vpmaddubsw,
/// AVX2 vpshufb + vpmaddubsw + vpmaddwd, scalar elsewhere; the activation is prepared once per
/// call. Rows are split over threads through parallel_for (16-row chunks). Throws qift::error
/// when a has more than one row, when the shapes do not match, or when w is empty. O(rows·cols);
/// streams w.size_bytes() bytes.
inline void gemv(const mxfp4_matrix& w, const mxfp4_matrix& a, std::span<float> y) {
    detail::check_mx_nonempty(w, "the weights", "gemv");
    detail::require(a.rows() == 1, [&] {
        return "gemv: MXFP4 activations have " + std::to_string(a.rows()) + " rows, expected 1";
    });
    detail::check_mx_gemv(w, a.cols(), y.size(), "gemv");
    detail::mx_int_product(w, a, y.data(), 0, detail::mx_best_path);
}

/// MXFP4 × MXFP4 GEMM over the tokens of a (a [tokens][w.cols()], one MXFP4 row per token):
/// y(t, r) = the GEMV of token t, y [tokens][w.rows()] (row-major, any stride, as gemm.hpp).
/// Tiles of 4 tokens share each decoded weight register; every output equals gemv of its token
/// bit for bit. Throws qift::error on a shape mismatch or empty operands.
/// O(tokens·rows·cols).
inline void gemm(const mxfp4_matrix& w, const mxfp4_matrix& a, matrix_view<float> y) {
    detail::check_mx_nonempty(w, "the weights", "gemm");
    detail::check_mx_nonempty(a, "the activations", "gemm");
    detail::require(a.cols() == w.cols(), [&] {
        return "gemm: activations have " + std::to_string(a.cols()) + " columns, weights " +
               std::to_string(w.cols());
    });
    detail::check_gemm_output(a.rows(), w.rows(), y, "gemm");
    detail::mx_int_product(w, a, y.data, y.stride, detail::mx_best_path);
}

/// MXFP4 × float GEMV: y[r] = Σ_b 2^e_w(r,b) · Σ_j E2M1(w_j)·x_j, x of w.cols() floats, y of
/// w.rows(). Codes are decoded to floats through a 16-entry vpermps table and multiplied with
/// FMAs; each block's partial products are scaled by 2^e_w inside an FMA (exact). Differs from
/// gemv_reference(w, x, y) only by float rounding order: |y − y_ref| <= 2·(32 + blocks)·ε·
/// Σ_k |w_k·x_k|. A NaN weight block makes its row NaN; non-finite x propagate. Throws
/// qift::error on a shape mismatch or empty weights. O(rows·cols).
inline void gemv(const mxfp4_matrix& w, std::span<const float> x, std::span<float> y) {
    detail::check_mx_nonempty(w, "the weights", "gemv");
    detail::check_mx_gemv(w, x.size(), y.size(), "gemv");
    detail::mx_float_product(w, matrix_view<const float>(x.data(), 1, x.size()), y.data(), 0,
                             detail::mx_best_path);
}

/// MXFP4 × float GEMM: y(t, r) = gemv of row t of x, x [tokens][w.cols()] and y
/// [tokens][w.rows()] (row-major, any strides). Tiles of 2 rows × 4 tokens; equals gemv token by
/// token, bit for bit. Throws qift::error on a shape mismatch or empty operands.
/// O(tokens·rows·cols).
inline void gemm(const mxfp4_matrix& w, matrix_view<const float> x, matrix_view<float> y) {
    detail::check_mx_nonempty(w, "the weights", "gemm");
    detail::require(!x.empty() && x.cols == w.cols() && x.stride >= x.cols, [&] {
        return "gemm: x is " + std::to_string(x.rows) + "x" + std::to_string(x.cols) + " (stride " +
               std::to_string(x.stride) + "), weights have " + std::to_string(w.cols()) +
               " columns";
    });
    detail::check_gemm_output(x.rows, w.rows(), y, "gemm");
    detail::mx_float_product(w, x, y.data, y.stride, detail::mx_best_path);
}

/// ggml's block_mxfp4 bytes of q: for each row, each block as {e8m0 scale byte, 16 code bytes}
/// (17 bytes; ggml reads 2^(e − 128) times its doubled table {0, 1, 2, 3, 4, 6, 8, 12}, the same
/// value). ggml rows hold whole blocks: throws qift::error when cols is not a multiple of 32.
inline std::vector<std::uint8_t> to_ggml_mxfp4(const mxfp4_matrix& q) {
    detail::require(q.cols() % mx_block_size == 0, [&] {
        return "to_ggml_mxfp4: " + std::to_string(q.cols()) +
               " columns, ggml rows hold whole blocks of 32";
    });
    std::vector<std::uint8_t> out;
    out.reserve(q.rows() * q.blocks_per_row() * 17);
    for (std::size_t r = 0; r < q.rows(); ++r)
        for (std::size_t b = 0; b < q.blocks_per_row(); ++b) {
            out.push_back(q.row_scales(r)[b]);
            out.insert(out.end(), q.row_codes(r) + b * 16, q.row_codes(r) + b * 16 + 16);
        }
    return out;
}

/// The matrix [rows][cols] held in ggml block_mxfp4 bytes (rows·cols/32 blocks of 17 bytes).
/// The bytes are kept as they are; a scale byte 0xFF, which ggml reads as 2^127 and its
/// quantizer never writes for finite weights, is a NaN block here, as OCP MX defines it.
/// Throws qift::error when cols is not a positive multiple of 32, rows is 0, or the byte count
/// does not match.
inline mxfp4_matrix from_ggml_mxfp4(std::span<const std::uint8_t> bytes, std::size_t rows,
                                    std::size_t cols) {
    detail::require(rows > 0 && cols > 0 && cols % mx_block_size == 0, [&] {
        return "from_ggml_mxfp4: shape " + std::to_string(rows) + "x" + std::to_string(cols) +
               " (cols must be a positive multiple of 32)";
    });
    const std::size_t blocks = cols / mx_block_size;
    // rows·blocks·17 must not wrap around: a shape that large cannot match any buffer.
    detail::require(rows <= std::numeric_limits<std::size_t>::max() / 17 / blocks &&
                        bytes.size() == rows * blocks * 17,
                    [&] {
                        return "from_ggml_mxfp4: " + std::to_string(bytes.size()) + " bytes, a " +
                               std::to_string(rows) + "x" + std::to_string(cols) +
                               " matrix needs " +
                               (rows <= std::numeric_limits<std::size_t>::max() / 17 / blocks
                                    ? std::to_string(rows * blocks * 17)
                                    : std::string("more than SIZE_MAX"));
                    });
    mxfp4_matrix q(rows, cols);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t b = 0; b < blocks; ++b) {
            const std::uint8_t* src = bytes.data() + (r * blocks + b) * 17;
            q.row_scales(r)[b] = src[0];
            std::copy_n(src + 1, 16, q.row_codes(r) + b * 16);
        }
    return q;
}

}  // namespace qift
