// SPDX-License-Identifier: MIT
// The bit-plane W2A16 matrix and its GEMV / GEMM: 2-bit weights whose levels are linear in the
// two code bits (every symmetric or uniform set: NF2, Lloyd, MNZ, PoT-MNZ, ...) times float
// activations, as two subset sums per row read from shared 32-entry tables.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

#include "core.hpp"
#include "detail/bitplane_kernels.hpp"
#include "gemv.hpp"
#include "levels.hpp"

namespace qift::inline QIFT_ISA {

/// 2-bit level sets whose level is an affine function of the two code bits h = c >> 1,
/// l = c & 1: L[c] = L[0] + (L[2] − L[0])·h + (L[1] − L[0])·l, i.e. L[0] + L[3] == L[1] + L[2].
/// Symmetric sets ({±a, ±b} in ascending code order) and uniform grids qualify; a three-level
/// set (ternary) does too, its unused code 3 read as L[1] + L[2] − L[0].
template <class L>
concept bit_linear_level_set = level_set<L> &&(storage_bits<L> == 2) &&
                               (level_traits<L>::count == 3 ||
                                (level_traits<L>::count == 4 &&
                                 L::levels[0] + L::levels[3] == L::levels[1] + L::levels[2]));

/// True when this build's default architecture (xsimd::default_arch) runs the AVX-512
/// bit-plane tile; without it the products run a portable lane loop.
inline constexpr bool bitplane_native =
#if defined(__AVX512F__)
    std::is_base_of_v<xsimd::avx512f, xsimd::default_arch>;
#else
    false;
#endif

/// A [rows][cols] 2-bit weight matrix stored as two bit planes, for the W2A16 product.
///
/// Why: with levels linear in the code bits, y_r = s_r Σ_k (L[c_rk] − z_r)·x_k
///   = a_r·Σ_k x_k + b_r·Σ_{k: h_rk = 1} x_k + c_r·Σ_{k: l_rk = 1} x_k,
/// with a_r = s_r(L[0] − z_r), b_r = s_r(L[2] − L[0]), c_r = s_r(L[1] − L[0]). A subset sum
/// over 5 activations is one entry of a 32-entry table built once per token, so one two-source
/// permute (vpermi2ps) sums 5 columns of a plane for 16 rows: per 16 rows × 5 columns, 2
/// permutes, 2 adds and (amortized over 32 rows) 2 shifts, against 5 permutes and 5 FMAs for
/// the per-row 16-entry table of packed_matrix's tile. Measured in bench_gemv (README).
///
/// Layout. Rows form tiles of 32 (the last one padded with zero rows), columns form chunks of
/// 30 (the last padded with zero bits), and chunks form panels of 32 (960 columns; the last
/// panel may have fewer chunks). One tile's part of one chunk is 64 consecutive 32-bit words, four
/// registers of 16:
///   [high bits, rows 0-15][low bits, rows 0-15][high bits, rows 16-31][low bits, rows 16-31]
/// (rows relative to the tile). In word i of a register, bit 5f + b (f < 6, b < 5) is that
/// row's bit of the code of column 30c + 5f + b; bits 30 and 31 are zero. Storage is panel-major:
/// panel p holds tile 0's chunks, then tile 1's, ..., so tile t, chunk c (c = 32p + d) starts at
/// word 64·(32p·tiles() + t·n_p + d), n_p the panel's chunk count (chunk_data gives it). A
/// product walks panel by panel (the tables of a token's panel stay in L1), so one thread's
/// rows are one sequential stream. The storage is 64-byte aligned; the 2 spare bits a word
/// make it 32/30 of the packed size.
template <bit_linear_level_set L>
class bitplane_matrix {
  public:
    using level_set_type = L;
    using geometry = detail::bitplane_geometry;
    /// The levels the kernel realizes, one per code (code 3 of a three-level set extended).
    static constexpr std::array<float, 4> levels{L::levels[0], L::levels[1], L::levels[2],
                                                 level_traits<L>::count == 4
                                                     ? L::levels[level_traits<L>::count - 1]
                                                     : L::levels[1] + L::levels[2] - L::levels[0]};

    bitplane_matrix() = default;

    /// Re-lays the codes of a packed matrix (same rows, cols, scales and zero-points).
    explicit bitplane_matrix(const packed_matrix<L>& w)
        : rows_(w.rows()),
          cols_(w.cols()),
          tiles_((w.rows() + geometry::tile_rows - 1) / geometry::tile_rows),
          chunks_(w.cols() / geometry::chunk_cols + (w.cols() % geometry::chunk_cols != 0)),
          planes_(detail::checked_size({tiles_, chunks_, geometry::chunk_words}, "bitplane_matrix"),
                  0u),
          scales_(w.scales().begin(), w.scales().end()),
          zeros_(w.zeros().begin(), w.zeros().end()),
          coefficients_(3 * rows_) {
        for (std::size_t r = 0; r < rows_; ++r) {
            const std::size_t t = r / geometry::tile_rows, i = r % geometry::tile_rows;
            const std::size_t reg = 2 * (i / geometry::lanes), lane = i % geometry::lanes;
            for (std::size_t k = 0; k < cols_; ++k) {
                const unsigned code = w.codes().get(r, k);
                std::uint32_t* words = planes_.data() + chunk_offset(t, k / geometry::chunk_cols);
                const unsigned bit = static_cast<unsigned>(k % geometry::chunk_cols);
                words[reg * geometry::lanes + lane] |= std::uint32_t{code >> 1} << bit;
                words[(reg + 1) * geometry::lanes + lane] |= std::uint32_t{code & 1u} << bit;
            }
            const float z = zeros_.empty() ? 0.0f : zeros_[r];
            coefficients_[r] = scales_[r] * (levels[0] - z);
            coefficients_[rows_ + r] = scales_[r] * (levels[2] - levels[0]);
            coefficients_[2 * rows_ + r] = scales_[r] * (levels[1] - levels[0]);
        }
    }

    /// Packs the output of the scale search or GPTQ (per-row scales only, as packed_matrix).
    explicit bitplane_matrix(const quantized_matrix<L>& q) : bitplane_matrix(packed_matrix<L>(q)) {}

    std::size_t rows() const noexcept { return rows_; }
    std::size_t cols() const noexcept { return cols_; }
    std::size_t tiles() const noexcept { return tiles_; }
    std::size_t chunks() const noexcept { return chunks_; }
    /// Per-row scale s_r and zero-point z_r (affine sets; empty otherwise).
    std::span<const float> scales() const noexcept { return scales_; }
    std::span<const float> zeros() const noexcept { return zeros_; }
    /// Code of weight (r, c), read back from the planes.
    std::uint8_t code(std::size_t r, std::size_t c) const noexcept {
        const std::size_t i = r % geometry::tile_rows, reg = 2 * (i / geometry::lanes);
        const std::uint32_t* words =
            chunk_data(r / geometry::tile_rows, c / geometry::chunk_cols) + i % geometry::lanes;
        const unsigned bit = static_cast<unsigned>(c % geometry::chunk_cols);
        return static_cast<std::uint8_t>((words[reg * geometry::lanes] >> bit & 1u) << 1 |
                                         (words[(reg + 1) * geometry::lanes] >> bit & 1u));
    }
    /// The 64 words of tile t, chunk c; the chunks of a tile within one panel are consecutive.
    const std::uint32_t* chunk_data(std::size_t t, std::size_t c) const noexcept {
        return planes_.data() + chunk_offset(t, c);
    }
    /// Bytes of planes a product streams.
    std::size_t plane_bytes() const noexcept { return planes_.size() * sizeof(std::uint32_t); }
    /// a_r, b_r, c_r of the row formula above (rows() values each).
    std::span<const float> offset_coefficients() const noexcept { return coefficient(0); }
    std::span<const float> high_coefficients() const noexcept { return coefficient(1); }
    std::span<const float> low_coefficients() const noexcept { return coefficient(2); }

  private:
    std::size_t chunk_offset(std::size_t t, std::size_t c) const noexcept {
        const std::size_t first = c - c % geometry::panel_chunks;  // the panel's first chunk
        const std::size_t in_panel = std::min(geometry::panel_chunks, chunks_ - first);
        return (first * tiles_ + t * in_panel + c % geometry::panel_chunks) * geometry::chunk_words;
    }
    std::span<const float> coefficient(std::size_t which) const noexcept {
        return std::span<const float>(coefficients_).subspan(which * rows_, rows_);
    }

    std::size_t rows_ = 0, cols_ = 0, tiles_ = 0, chunks_ = 0;
    aligned_vector<std::uint32_t> planes_;
    aligned_vector<float> scales_, zeros_, coefficients_;
};

/// bitplane_matrix<L> when Planes, else Otherwise: a type choice that never names
/// bitplane_matrix<L> for a set it rejects (std::conditional_t would).
template <class L, bool Planes, class Otherwise>
struct bitplane_if {
    using type = Otherwise;
};
template <class L, class Otherwise>
struct bitplane_if<L, true, Otherwise> {
    using type = bitplane_matrix<L>;
};

namespace detail {

inline constexpr std::size_t bitplane_token_block = 4;

/// Tiles [tb, te) for the nt <= 4 tokens of `tables`, panel by panel, into
/// y(t0 + j, r) = a_r·totals[j] + b_r·S_high + c_r·S_low. The running sums live in this
/// thread's scratch.
template <class Arch, class L>
void bitplane_tiles(Arch arch, const bitplane_matrix<L>& w, std::size_t tb, std::size_t te,
                    std::size_t nt, const float* const* tables, const float* totals, std::size_t t0,
                    matrix_view<float> y) {
    using G = bitplane_geometry;
    const std::size_t stride = nt * G::tile_sums;  // floats of sums a tile
    float* sums = thread_scratch<scratch_slot::bitplane_sums>((te - tb) * stride);
    std::fill_n(sums, (te - tb) * stride, 0.0f);
    for (std::size_t c0 = 0; c0 < w.chunks(); c0 += G::panel_chunks) {
        const std::size_t n = std::min(G::panel_chunks, w.chunks() - c0);
        const float* panel_tables[bitplane_token_block];
        for (std::size_t j = 0; j < nt; ++j) panel_tables[j] = tables[j] + c0 * G::chunk_table;
        for (std::size_t t = tb; t < te; ++t) {
            const std::uint32_t* tw = w.chunk_data(t, c0);
            float* s = sums + (t - tb) * stride;
            switch (nt) {
                case 1:
                    bitplane_tile<1>{}(arch, tw, n, panel_tables, s);
                    break;
                case 2:
                    bitplane_tile<2>{}(arch, tw, n, panel_tables, s);
                    break;
                case 3:
                    bitplane_tile<3>{}(arch, tw, n, panel_tables, s);
                    break;
                default:
                    bitplane_tile<4>{}(arch, tw, n, panel_tables, s);
                    break;
            }
        }
    }
    const auto a = w.offset_coefficients(), b = w.high_coefficients(), c = w.low_coefficients();
    for (std::size_t j = 0; j < nt; ++j)
        for (std::size_t r = tb * G::tile_rows; r < std::min(w.rows(), te * G::tile_rows); ++r) {
            const std::size_t i = r % G::tile_rows, reg = 2 * (i / G::lanes);
            const float* s = sums + (r / G::tile_rows - tb) * stride + j * G::tile_sums;
            const float high = s[reg * G::lanes + i % G::lanes];
            const float low = s[(reg + 1) * G::lanes + i % G::lanes];
            y(t0 + j, r) = a[r] * totals[j] + b[r] * high + c[r] * low;
        }
}

/// y(t, r) = a_r·Σx_t + b_r·S_high(t, r) + c_r·S_low(t, r) for every token t of x: tokens in
/// blocks of up to 4 (their tables built by the calling thread, in its scratch), ranges of
/// 32-row tiles split over threads.
template <class Arch, class L>
void bitplane_product(Arch arch, const bitplane_matrix<L>& w, matrix_view<const float> x,
                      matrix_view<float> y, const char* fn) {
    using G = bitplane_geometry;
    require(x.cols == w.cols() && y.rows == x.rows && y.cols == w.rows(), [&] {
        return std::string(fn) + ": x is " + std::to_string(x.rows) + "x" + std::to_string(x.cols) +
               ", y " + std::to_string(y.rows) + "x" + std::to_string(y.cols) +
               "; the weights are " + std::to_string(w.rows()) + "x" + std::to_string(w.cols());
    });
    constexpr std::size_t block = bitplane_token_block;
    const std::size_t table_floats = checked_mul(w.chunks(), G::chunk_table, fn);
    float* tables =
        thread_scratch<scratch_slot::bitplane_tables>(checked_mul(block, table_floats, fn));
    for (std::size_t t0 = 0; t0 < x.rows; t0 += block) {
        const std::size_t nt = std::min(block, x.rows - t0);
        float totals[block];
        const float* tabs[block];
        for (std::size_t j = 0; j < nt; ++j) {
            tabs[j] = tables + j * table_floats;
            totals[j] = bitplane_tables(arch, x.data + (t0 + j) * x.stride, x.cols, w.chunks(),
                                        tables + j * table_floats);
        }
        for_chunk_ranges(w.rows(), nt * w.tiles() * G::tile_rows * w.chunks() * G::chunk_cols,
                         G::tile_rows, [&](std::size_t tb, std::size_t te) {
                             bitplane_tiles(arch, w, tb, te, nt, tabs, totals, t0, y);
                         });
    }
}

}  // namespace detail

/// W2A16 GEMV on bit planes: y[r] = s_r · Σ_k (L[code(r,k)] − z_r)·x_k, x of w.cols() values,
/// y of w.rows(). Float arithmetic in a different order from the dequantized product (subset
/// sums of 5 activations, then the three-term row formula): the tests bound the difference by
/// 1e-5·Σ|w·x|. Kernel on Arch (xsimd::default_arch unless given): AVX-512 permutes, else a
/// portable lane loop (slower than packed_matrix's AVX2 tile; use that one on AVX2 machines).
/// Tiles of 32 rows are split over threads through parallel_for. Throws qift::error on a shape
/// mismatch. O(rows·cols); streams w.plane_bytes() bytes.
template <bit_linear_level_set L, class Arch = xsimd::default_arch>
void gemv(const bitplane_matrix<L>& w, std::span<const float> x, std::span<float> y,
          Arch arch = {}) {
    detail::bitplane_product(arch, w, matrix_view<const float>(x.data(), 1, x.size()),
                             matrix_view<float>(y.data(), 1, y.size()), "gemv");
}

/// W2A16 GEMM on bit planes: y(t, r) for every token of x [tokens][w.cols()] into y
/// [tokens][w.rows()]; each row of y equals the GEMV of its token bit for bit. Tokens go in
/// blocks of 4 (one tile pass reads its planes once for the block).
template <bit_linear_level_set L, class Arch = xsimd::default_arch>
void gemm(const bitplane_matrix<L>& w, matrix_view<const float> x, matrix_view<float> y,
          Arch arch = {}) {
    detail::bitplane_product(arch, w, x, y, "gemm");
}

/// Scalar reference (the test oracle): y[r] = s_r · Σ_k (levels[code(r,k)] − z_r)·x_k, the
/// weights decoded one by one from the planes, summed in column order in float.
template <bit_linear_level_set L>
void gemv_reference(const bitplane_matrix<L>& w, std::span<const float> x, std::span<float> y) {
    detail::require(x.size() == w.cols() && y.size() == w.rows(), [&] {
        return "gemv_reference: x has " + std::to_string(x.size()) + " values, y " +
               std::to_string(y.size()) + "; the weights are " + std::to_string(w.rows()) + "x" +
               std::to_string(w.cols());
    });
    for (std::size_t r = 0; r < w.rows(); ++r) {
        const float z = w.zeros().empty() ? 0.0f : w.zeros()[r];
        float sum = 0.0f;
        for (std::size_t k = 0; k < w.cols(); ++k)
            sum += (bitplane_matrix<L>::levels[w.code(r, k)] - z) * x[k];
        y[r] = w.scales()[r] * sum;
    }
}

}  // namespace qift
