// SPDX-License-Identifier: MIT
// MXFP4 (OCP Microscaling Formats v1.0): blocks of 32 E2M1 elements sharing one E8M0 power-of-two
// scale, quantized bit-exactly as the reference implementation (microsoft/microxcaling) does, a
// packed matrix type, and lossless conversion to and from ggml's block_mxfp4 bytes.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core.hpp"
#include "levels.hpp"

namespace qift {

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
    mxfp4_matrix(std::size_t rows, std::size_t cols)
        : rows_(rows),
          cols_(cols),
          blocks_((cols + mx_block_size - 1) / mx_block_size),
          codes_(rows * blocks_ * block_bytes, 0),
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

/// MXFP4 quantization of x [rows][cols] (row-major, any stride), blocks of 32 along each row,
/// the last block of a row padded with zeros. Never throws for non-finite values: a block
/// holding one becomes a NaN block (count them with nan_blocks()). Throws qift::error for an
/// empty x. O(rows·cols).
inline mxfp4_matrix quantize_mxfp4(matrix_view<const float> x,
                                   mx_rounding mode = mx_rounding::nearest) {
    detail::require(!x.empty(), [&] {
        return "quantize_mxfp4: x is empty (" + std::to_string(x.rows) + "x" +
               std::to_string(x.cols) + ")";
    });
    mxfp4_matrix q(x.rows, x.cols);
    for (std::size_t r = 0; r < x.rows; ++r)
        for (std::size_t b = 0; b < q.blocks_per_row(); ++b) {
            const std::size_t k0 = b * mx_block_size, n = std::min(mx_block_size, x.cols - k0);
            q.row_scales(r)[b] =
                quantize_mxfp4_block(std::span(&x(r, k0), n), q.row_codes(r) + b * 16, mode);
        }
    return q;
}

/// The values of an MXFP4 matrix [rows][cols] (padding dropped); NaN blocks read as NaN. As in
/// the reference's float32 arithmetic, a block whose max is within a rounding of FLT_MAX gets
/// exponent 126 and an element rounded up to 4·2^126 reads as infinity.
inline matrix<float> dequantize(const mxfp4_matrix& q) {
    matrix<float> out(q.rows(), q.cols());
    for (std::size_t r = 0; r < q.rows(); ++r)
        for (std::size_t k = 0; k < q.cols(); ++k) {
            const std::uint8_t s = q.row_scales(r)[k / mx_block_size];
            out(r, k) =
                s == e8m0_nan ? NAN : std::ldexp(levels::e2m1::levels[q.code(r, k)], int(s) - 127);
        }
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
    detail::require(bytes.size() == rows * blocks * 17, [&] {
        return "from_ggml_mxfp4: " + std::to_string(bytes.size()) + " bytes, a " +
               std::to_string(rows) + "x" + std::to_string(cols) + " matrix needs " +
               std::to_string(rows * blocks * 17);
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
