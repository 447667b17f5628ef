// SPDX-License-Identifier: MIT
// Bit packing of code matrices (1, 2 or 4 bits a code) into the kernel layout: 64-byte blocks
// in which one shift and one mask per slot unpack a whole SIMD register of consecutive codes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "core.hpp"
#include "levels.hpp"

namespace qift::inline QIFT_ISA {

/// Packed layout (the one documented place; the GEMV/GEMM kernels rely on it).
///
/// Each row is stored as whole 64-byte blocks; a block holds S = 8/Bits slots of 64 codes,
/// so 64·S codes (Bits = 2: 256 codes, Bits = 4: 128, Bits = 1: 512). Code i of a block
/// (0 <= i < 64·S) lives in byte (i mod 64), slot (i div 64), at bits [slot·Bits, slot·Bits+Bits).
/// For Bits = 2:
///
///   byte j of the block (j = 0..63)
///   bit:   7   6 | 5   4 | 3   2 | 1   0
///        c[192+j] | c[128+j] | c[64+j] | c[j]
///
/// So `(block >> (slot·Bits)) & mask` over the 64 bytes yields codes [64·slot, 64·slot + 64)
/// in order: one AVX-512 register, or two AVX2 registers for bytes 0-31 and 32-63. Rows are
/// padded with code 0 to a multiple of 64·S codes; a kernel must pair padded codes with zero
/// activations. Row r starts at byte r·row_bytes, and the buffer is 64-byte aligned.
template <unsigned Bits>
requires(Bits == 1 || Bits == 2 || Bits == 4) class packed_codes {
  public:
    static constexpr unsigned bits = Bits;
    static constexpr std::size_t block_bytes = 64;
    static constexpr std::size_t slots = 8 / Bits;
    static constexpr std::size_t block_codes = block_bytes * slots;
    static constexpr std::uint8_t mask = static_cast<std::uint8_t>((1u << Bits) - 1u);

    packed_codes() = default;
    /// Zero-filled storage for a [rows][cols] code matrix. Throws qift::error, before
    /// allocating, when the padded size rows·row_bytes() does not fit in std::size_t.
    packed_codes(std::size_t rows, std::size_t cols)
        : rows_(rows),
          cols_(cols),
          row_bytes_(padded_row_bytes(cols)),
          data_(detail::checked_size({rows, row_bytes_}, "packed_codes"), 0) {}

    std::size_t rows() const noexcept { return rows_; }
    std::size_t cols() const noexcept { return cols_; }
    /// Bytes per packed row (a multiple of 64), and codes per row including padding.
    std::size_t row_bytes() const noexcept { return row_bytes_; }
    std::size_t padded_cols() const noexcept { return row_bytes_ / block_bytes * block_codes; }
    std::size_t size_bytes() const noexcept { return data_.size(); }
    const std::uint8_t* row_data(std::size_t r) const noexcept {
        return data_.data() + r * row_bytes_;
    }
    std::uint8_t* row_data(std::size_t r) noexcept { return data_.data() + r * row_bytes_; }

    /// Byte offset within a row and bit shift of code c (see the layout above).
    static constexpr std::size_t byte_of(std::size_t c) noexcept {
        return c / block_codes * block_bytes + c % block_bytes;
    }
    static constexpr unsigned shift_of(std::size_t c) noexcept {
        return static_cast<unsigned>(c % block_codes / block_bytes) * Bits;
    }

    std::uint8_t get(std::size_t r, std::size_t c) const noexcept {
        return static_cast<std::uint8_t>((row_data(r)[byte_of(c)] >> shift_of(c)) & mask);
    }
    /// Precondition: code <= mask.
    void set(std::size_t r, std::size_t c, std::uint8_t code) noexcept {
        std::uint8_t& b = row_data(r)[byte_of(c)];
        const unsigned s = shift_of(c);
        b = static_cast<std::uint8_t>((b & ~(mask << s)) | (code << s));
    }

  private:
    // Whole blocks for `cols` codes: ceil(cols / block_codes) · block_bytes, rounded without
    // forming cols + block_codes − 1 (which wraps for cols near SIZE_MAX); the padded column
    // count (padded_cols()) must fit as well.
    static std::size_t padded_row_bytes(std::size_t cols) {
        const std::size_t blocks = cols / block_codes + (cols % block_codes != 0);
        detail::require(blocks <= std::numeric_limits<std::size_t>::max() / block_codes, [&] {
            return "packed_codes: cols " + std::to_string(cols) +
                   " overflows std::size_t when padded to whole blocks of " +
                   std::to_string(block_codes) + " codes";
        });
        return blocks * block_bytes;
    }

    std::size_t rows_ = 0, cols_ = 0, row_bytes_ = 0;
    aligned_vector<std::uint8_t> data_;
};

/// Storage width for a level set's codes: its bits, with 3-bit sets in 4-bit containers.
template <level_set L>
inline constexpr unsigned storage_bits = L::bits == 3 ? 4u : L::bits;

/// Packs a [rows][cols] code matrix (one code per byte, each < 2^Bits). Throws qift::error
/// for an empty matrix or a code that does not fit, naming its position. O(rows·cols).
template <unsigned Bits>
packed_codes<Bits> pack(matrix_view<const std::uint8_t> codes) {
    detail::require(!codes.empty(), [&] {
        return "pack: codes are empty (" + std::to_string(codes.rows) + "x" +
               std::to_string(codes.cols) + ")";
    });
    packed_codes<Bits> out(codes.rows, codes.cols);
    constexpr std::size_t B = packed_codes<Bits>::block_codes;
    for (std::size_t r = 0; r < codes.rows; ++r) {
        std::uint8_t* dst = out.row_data(r);
        for (std::size_t c0 = 0; c0 < codes.cols; c0 += B) {
            // Gather one block slot by slot: each output byte is written once.
            for (std::size_t j = 0; j < packed_codes<Bits>::block_bytes; ++j) {
                unsigned byte = 0;
                for (std::size_t s = 0; s < packed_codes<Bits>::slots; ++s) {
                    const std::size_t c = c0 + s * packed_codes<Bits>::block_bytes + j;
                    if (c >= codes.cols) continue;
                    const std::uint8_t v = codes(r, c);
                    detail::require(v <= packed_codes<Bits>::mask, [&] {
                        return "pack: codes(" + std::to_string(r) + ", " + std::to_string(c) +
                               ") = " + std::to_string(v) + " does not fit in " +
                               std::to_string(Bits) + " bits";
                    });
                    byte |= unsigned{v} << (s * Bits);
                }
                dst[c0 / B * packed_codes<Bits>::block_bytes + j] = static_cast<std::uint8_t>(byte);
            }
        }
    }
    return out;
}

/// Inverse of pack: the [rows][cols] code matrix (padding dropped).
template <unsigned Bits>
matrix<std::uint8_t> unpack(const packed_codes<Bits>& p) {
    matrix<std::uint8_t> out(p.rows(), p.cols());
    for (std::size_t r = 0; r < p.rows(); ++r)
        for (std::size_t c = 0; c < p.cols(); ++c) out(r, c) = p.get(r, c);
    return out;
}

}  // namespace qift
