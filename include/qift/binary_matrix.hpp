// SPDX-License-Identifier: MIT
// One-bit weights in kernel form: a matrix of one or more sign-bit planes with optional element
// masks, per (row, column block) scales, optional column scales and per-block means (what XNOR,
// ARB, ARB-RC and BiLLM-style binarizations produce), and its GEMV / GEMM against float, A8
// (int8) and A4 (quantized_activations) activations.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

#include "act.hpp"
#include "binary.hpp"
#include "core.hpp"
#include "detail/binary_kernels.hpp"
#include "gemm.hpp"
#include "gemv.hpp"

namespace qift::inline QIFT_ISA {

/// One plane of a binary_matrix as its producer hands it over: views of plain arrays.
///   signs   [rows][cols]    every value −1 or +1 (B^p), or empty: a constant plane, B^p = +1
///                           (a per-block mean over the mask; it stores no sign bits, and
///                           needs a mask)
///   scales  [rows][blocks]  α^p per row and column block, finite (blocks: see binary_matrix)
///   mask    [rows][cols]    0 or 1 (M^p), or empty: all ones
struct binary_plane_view {
    matrix_view<const std::int8_t> signs;
    matrix_view<const float> scales;
    matrix_view<const std::uint8_t> mask{};
};

/// A [rows][cols] matrix of one-bit weights made of P >= 1 planes:
///   Ŵ(r, k) = α_c(k) · ( Σ_p α^p(r, b) · M^p(r, k) · B^p(r, k) + μ(r, b) ),  b = k / G,
/// with B^p = ±1, M^p = 0/1 (all ones for a plane without mask), α^p [rows][blocks] the plane
/// scales, α_c [cols] optional column scales (absent: 1) and μ [rows][blocks] optional means
/// (absent: 0). Note that α_c multiplies μ as well: y = Ŵx is computed on z = α_c ⊙ x alone.
/// Column blocks: G (group_size) columns, a multiple of 64, the last block of a row may be
/// shorter; one block per row (per-row scales) when G = 0 or G >= cols.
///
/// Layout (what the kernels stream): each plane's signs are [rows][words] 64-bit words,
/// words = ceil(cols / 64), bit j of word c of row r = column 64c + j, 1 for +1 and 0 for −1,
/// bits past the last column 0. A mask has the same layout (bit 1 = the element counts), or,
/// when every column of it is constant over the rows (a column mask, as for salient columns),
/// a single row of words shared by all rows. Identical sign planes are stored once; a mask equal
/// to another one or to its complement is stored once (the kernels read it complemented); an
/// all-ones mask is dropped. A constant plane stores no signs: the kernels read its mask as the
/// signs (Σ m·a), so its mask is always stored, and shared only with an equal one. Scales, column
/// scales and means are float32 (32 bits each).
/// size_bytes() counts every stored byte (row padding to 64 bits included).
class binary_matrix {
  public:
    /// Most planes a matrix may have.
    static constexpr std::size_t max_planes = 8;

    binary_matrix() = default;

    /// Packs `planes` (all of the same shape; scales [rows][blocks]), with column blocks of
    /// group_size columns (0: one block per row), optional column scales [cols] and means
    /// [rows][blocks]. Throws qift::error when there are no planes or more than max_planes,
    /// on a shape mismatch, an empty matrix, more than 65536 columns, a group size that is
    /// neither 0, nor >= cols, nor a multiple of 64, a sign other than ±1, a mask value other
    /// than 0/1, a constant plane (no signs) without a mask, or a non-finite scale or mean
    /// (naming its position).
    /// O(planes · rows · cols).
    explicit binary_matrix(std::span<const binary_plane_view> planes, std::size_t group_size = 0,
                           std::span<const float> column_scales = {},
                           matrix_view<const float> means = {}) {
        init(planes, group_size, column_scales, means);
    }
    explicit binary_matrix(std::initializer_list<binary_plane_view> planes,
                           std::size_t group_size = 0, std::span<const float> column_scales = {},
                           matrix_view<const float> means = {}) {
        init(std::span<const binary_plane_view>(planes.begin(), planes.size()), group_size,
             column_scales, means);
    }

    std::size_t rows() const noexcept { return rows_; }
    std::size_t cols() const noexcept { return cols_; }
    /// Columns per scale block (cols for one block per row).
    std::size_t group_size() const noexcept { return group_; }
    std::size_t blocks_per_row() const noexcept { return geo_.blocks; }
    std::size_t plane_count() const noexcept { return planes_.size(); }
    /// 64-bit words per row of a sign plane or an element mask.
    std::size_t words_per_row() const noexcept { return geo_.words; }

    /// α^p, [rows][blocks_per_row()] row-major.
    std::span<const float> scales(std::size_t p) const noexcept { return planes_[p].scales; }
    /// α_c [cols], empty when the matrix has none.
    std::span<const float> column_scales() const noexcept { return col_scales_; }
    /// μ [rows][blocks_per_row()], empty when the matrix has none.
    std::span<const float> means() const noexcept { return means_; }

    /// B^p(r, k) (±1) and M^p(r, k) (0/1) as stored.
    int sign(std::size_t p, std::size_t r, std::size_t k) const noexcept {
        if (!has_signs(p)) return 1;
        return bit(signs_[planes_[p].sign].data() + r * geo_.words, k) ? 1 : -1;
    }
    int mask(std::size_t p, std::size_t r, std::size_t k) const noexcept {
        const auto ref = plane_ref(p);
        if (ref.mode == detail::binary_mask_mode::none) return 1;
        const bool b = bit(ref.mask + r * ref.mask_stride, k);
        return (ref.mode == detail::binary_mask_mode::direct) == b ? 1 : 0;
    }
    /// Whether plane p stores signs (false: a constant plane, B^p = +1).
    bool has_signs(std::size_t p) const noexcept { return planes_[p].sign != npos; }
    /// Whether plane p has a mask, and whether it is a column mask (one row for all rows).
    bool has_mask(std::size_t p) const noexcept { return planes_[p].mask != npos; }
    bool has_column_mask(std::size_t p) const noexcept {
        return has_mask(p) && masks_[planes_[p].mask].per_column;
    }
    /// Distinct sign planes and masks actually stored (after sharing).
    std::size_t stored_sign_planes() const noexcept { return signs_.size(); }
    std::size_t stored_masks() const noexcept { return masks_.size(); }

    /// Every stored byte: sign words, mask words, scales, column scales and means.
    std::size_t size_bytes() const noexcept {
        std::size_t n = 0;
        for (const auto& s : signs_) n += s.size() * sizeof(std::uint64_t);
        for (const auto& m : masks_) n += m.words.size() * sizeof(std::uint64_t);
        for (const auto& p : planes_) n += p.scales.size() * sizeof(float);
        return n + (col_scales_.size() + means_.size()) * sizeof(float);
    }
    /// 8 · size_bytes() / (rows · cols): everything stored, per weight.
    double bits_per_weight() const noexcept {
        return rows_ * cols_ == 0 ? 0.0 : 8.0 * double(size_bytes()) / double(rows_ * cols_);
    }

    /// The kernels' view of plane p and of the row geometry.
    detail::binary_plane_ref plane_ref(std::size_t p) const noexcept {
        const plane_info& pl = planes_[p];
        detail::binary_plane_ref ref;
        if (pl.sign != npos) {
            ref.signs = signs_[pl.sign].data();
            ref.sign_stride = geo_.words;
        }
        if (pl.mask != npos) {
            const mask_store& m = masks_[pl.mask];
            ref.mask = m.words.data();
            ref.mask_stride = m.per_column ? 0 : geo_.words;
            ref.mode =
                pl.inverted ? detail::binary_mask_mode::inverted : detail::binary_mask_mode::direct;
            if (pl.sign == npos) {  // a constant plane: Σ m·s·a with s = m (never inverted)
                ref.signs = ref.mask;
                ref.sign_stride = ref.mask_stride;
            }
        }
        return ref;
    }
    const detail::binary_geometry& geometry() const noexcept { return geo_; }

  private:
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);

    struct plane_info {
        std::size_t sign = 0;
        std::size_t mask = npos;
        bool inverted = false;
        aligned_vector<float> scales;
    };
    struct mask_store {
        aligned_vector<std::uint64_t> words;
        bool per_column = false;
    };

    static bool bit(const std::uint64_t* row, std::size_t k) noexcept {
        return ((row[k / 64] >> (k % 64)) & 1u) != 0;
    }

    void init(std::span<const binary_plane_view> planes, std::size_t group_size,
              std::span<const float> column_scales, matrix_view<const float> means);

    std::size_t rows_ = 0, cols_ = 0, group_ = 0;
    detail::binary_geometry geo_;
    std::vector<plane_info> planes_;
    std::vector<aligned_vector<std::uint64_t>> signs_;
    std::vector<mask_store> masks_;
    aligned_vector<float> col_scales_, means_;
};

inline void binary_matrix::init(std::span<const binary_plane_view> planes, std::size_t group_size,
                                std::span<const float> column_scales,
                                matrix_view<const float> means) {
    using detail::require;
    require(!planes.empty() && planes.size() <= max_planes, [&] {
        return "binary_matrix: " + std::to_string(planes.size()) + " planes, expected 1 to " +
               std::to_string(max_planes);
    });
    const bool first_constant = planes[0].signs.empty();
    const std::size_t rows = first_constant ? planes[0].mask.rows : planes[0].signs.rows;
    const std::size_t cols = first_constant ? planes[0].mask.cols : planes[0].signs.cols;
    require(rows > 0 && cols > 0 && cols <= 65536, [&] {
        return "binary_matrix: plane 0 is " + std::to_string(rows) + "x" + std::to_string(cols) +
               " (expected a non-empty matrix of at most 65536 columns)";
    });
    require(group_size == 0 || group_size >= cols || group_size % 64 == 0, [&] {
        return "binary_matrix: group_size " + std::to_string(group_size) +
               " is neither 0, nor >= cols (" + std::to_string(cols) + "), nor a multiple of 64";
    });
    const bool one_block = group_size == 0 || group_size >= cols;
    rows_ = rows;
    cols_ = cols;
    group_ = one_block ? cols : group_size;
    geo_.words = (cols + 63) / 64;
    geo_.block_chunks = one_block ? geo_.words : group_size / 64;
    geo_.blocks = one_block ? 1 : (cols + group_size - 1) / group_size;
    geo_.prefetch_l1 = detail::binary_prefetch_words(detail::binary_prefetch_l1, geo_.words);
    geo_.prefetch_l2 = detail::binary_prefetch_words(detail::binary_prefetch_l2, geo_.words);
    const std::size_t words = geo_.words, blocks = geo_.blocks;

    const auto check_finite = [&](matrix_view<const float> v, const std::string& what) {
        require(v.rows == rows && v.cols == blocks && v.stride >= v.cols, [&] {
            return "binary_matrix: " + what + " is " + std::to_string(v.rows) + "x" +
                   std::to_string(v.cols) + ", expected " + std::to_string(rows) + "x" +
                   std::to_string(blocks) + " (rows x column blocks)";
        });
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t b = 0; b < blocks; ++b)
                require(std::isfinite(v(r, b)), [&] {
                    return "binary_matrix: " + what + "(" + std::to_string(r) + ", " +
                           std::to_string(b) + ") is " + std::to_string(v(r, b)) +
                           " (must be finite)";
                });
    };
    // Packs a [rows][cols] 0/1 or ±1 array into words; `one` is the value of a 1 bit.
    const auto pack = [&](auto v, auto one, const std::string& what) {
        aligned_vector<std::uint64_t> out(rows * words, 0);
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t k = 0; k < cols; ++k) {
                const int x = v(r, k);
                const bool valid = one == 1 ? (x == 0 || x == 1) : (x == 1 || x == -1);
                require(valid, [&] {
                    return "binary_matrix: " + what + "(" + std::to_string(r) + ", " +
                           std::to_string(k) + ") is " + std::to_string(x) +
                           (one == 1 ? " (mask values are 0 or 1)" : " (signs are -1 or +1)");
                });
                if (x == 1) out[r * words + k / 64] |= std::uint64_t{1} << (k % 64);
            }
        return out;
    };
    // The valid bits of word c (columns < cols).
    const auto valid = [&](std::size_t c) {
        const std::size_t n = std::min<std::size_t>(64, cols - c * 64);
        return n == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << n) - 1;
    };

    planes_.clear();
    signs_.clear();
    masks_.clear();
    for (std::size_t p = 0; p < planes.size(); ++p) {
        const binary_plane_view& v = planes[p];
        const std::string name = "plane " + std::to_string(p);
        const bool constant = v.signs.empty();
        require(!constant || !v.mask.empty(), [&] {
            return "binary_matrix: " + name +
                   " has neither signs nor a mask (a constant over all columns is a mean)";
        });
        require(
            constant || (v.signs.rows == rows && v.signs.cols == cols && v.signs.stride >= cols),
            [&] {
                return "binary_matrix: " + name + " signs are " + std::to_string(v.signs.rows) +
                       "x" + std::to_string(v.signs.cols) + ", plane 0 " + std::to_string(rows) +
                       "x" + std::to_string(cols);
            });
        check_finite(v.scales, name + " scales");
        plane_info info;
        info.scales.resize(rows * blocks);
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t b = 0; b < blocks; ++b) info.scales[r * blocks + b] = v.scales(r, b);

        if (constant) {
            info.sign = npos;
        } else {
            auto sw = pack(v.signs, -1, name + " signs");
            const auto same_sign = std::find(signs_.begin(), signs_.end(), sw);
            info.sign = std::size_t(same_sign - signs_.begin());
            if (same_sign == signs_.end()) signs_.push_back(std::move(sw));
        }

        if (!v.mask.empty()) {
            require(v.mask.rows == rows && v.mask.cols == cols && v.mask.stride >= cols, [&] {
                return "binary_matrix: " + name + " mask is " + std::to_string(v.mask.rows) + "x" +
                       std::to_string(v.mask.cols) + ", expected " + std::to_string(rows) + "x" +
                       std::to_string(cols);
            });
            auto mw = pack(v.mask, 1, name + " mask");
            bool all_ones = true, per_column = true;
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t c = 0; c < words; ++c) {
                    all_ones = all_ones && mw[r * words + c] == valid(c);
                    per_column = per_column && mw[r * words + c] == mw[c];
                }
            if (!all_ones || constant) {
                if (per_column) mw.resize(words);
                for (std::size_t i = 0; i < masks_.size() && info.mask == npos; ++i) {
                    const mask_store& m = masks_[i];
                    if (m.per_column != per_column) continue;
                    bool equal = true, complement = true;
                    for (std::size_t w = 0; w < mw.size(); ++w) {
                        equal = equal && m.words[w] == mw[w];
                        complement = complement && (m.words[w] ^ mw[w]) == valid(w % words);
                    }
                    if (equal || (complement && !constant)) {
                        info.mask = i;
                        info.inverted = !equal;
                    }
                }
                if (info.mask == npos) {
                    info.mask = masks_.size();
                    masks_.push_back(mask_store{std::move(mw), per_column});
                }
            }
        }
        planes_.push_back(std::move(info));
    }

    col_scales_.clear();
    if (!column_scales.empty()) {
        require(column_scales.size() == cols, [&] {
            return "binary_matrix: " + std::to_string(column_scales.size()) +
                   " column scales, expected " + std::to_string(cols);
        });
        for (std::size_t k = 0; k < cols; ++k)
            require(std::isfinite(column_scales[k]), [&] {
                return "binary_matrix: column scale " + std::to_string(k) + " is " +
                       std::to_string(column_scales[k]) + " (must be finite)";
            });
        col_scales_.assign(column_scales.begin(), column_scales.end());
    }
    means_.clear();
    if (!means.empty()) {
        check_finite(means, "means");
        means_.resize(rows * blocks);
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t b = 0; b < blocks; ++b) means_[r * blocks + b] = means(r, b);
    }
}

/// The packed form of an XNOR / ARB / ARB-X result (binary.hpp): one plane with per-row scales
/// α and per-row means μ; dequantize() of it equals result.dequantized exactly.
inline binary_matrix pack(const binary_affine_result& r) {
    const std::size_t rows = r.signs.rows();
    matrix<float> scales(rows, 1), means(rows, 1);
    for (std::size_t i = 0; i < rows; ++i) scales(i, 0) = r.scale[i], means(i, 0) = r.mean[i];
    return binary_matrix({binary_plane_view{r.signs.view(), scales.view()}}, 0, {}, means.view());
}

/// The packed form of an ARB-RC or output-alignment result (binary.hpp): one plane with the
/// row scales u and the column scales v; dequantize() of it equals result.dequantized exactly.
inline binary_matrix pack(const binary_rc_result& r) {
    const std::size_t rows = r.signs.rows();
    matrix<float> scales(rows, 1);
    for (std::size_t i = 0; i < rows; ++i) scales(i, 0) = r.row_scale[i];
    return binary_matrix({binary_plane_view{r.signs.view(), scales.view()}}, 0, r.col_scale);
}

/// The packed form of a BiLLM-style result (binary.hpp), with column blocks of the result's
/// block size (which must be a multiple of 64 unless there is one block). With S the salient
/// columns (a column mask), H the high group and L the rest, BiLLM's
///   Ŵ = α1·B1 + α2·B2 + μ_s on S,  α_h·B1 + μ_h on H,  α_l·B1 + μ_l on L
/// is stored relative to the low group, so that no mask of L is needed:
///   plane 0: B1, no mask, α_l          plane 1: B1 on S, α1 − α_l     plane 2: B1 on H, α_h − α_l
///   plane 3: B2 on S, α2               plane 4: constant on S, μ_s − μ_l
///   plane 5: constant on H, μ_h − μ_l  means: μ_l
/// (planes whose mask is empty everywhere are left out; B2 is stored as a full plane, +1 off
/// S). Sign planes B1 and B2, the element mask H and the column mask S cost about 3 bits per
/// weight plus six float32 values per row and block: more than binary_storage's count, which
/// keeps B2 only on S and scales as fp16. dequantize() of it equals result.dequantized up to
/// float rounding (the parameters are combined in another order). Throws qift::error on a block
/// size the layout cannot hold.
inline binary_matrix pack(const billm_result& r) {
    const std::size_t rows = r.signs.rows(), cols = r.signs.cols(), nb = r.blocks.size();
    detail::require(nb >= 1 && rows > 0 && cols > 0,
                    [] { return std::string("pack: the BiLLM result is empty"); });
    const std::size_t g = nb == 1 ? cols : r.blocks[0].width;
    for (std::size_t b = 0; b < nb; ++b)
        detail::require(r.blocks[b].begin == b * g && (nb == 1 || g % 64 == 0), [&] {
            return "pack: BiLLM block " + std::to_string(b) + " starts at column " +
                   std::to_string(r.blocks[b].begin) + " with block size " + std::to_string(g) +
                   " (binary_matrix needs equal blocks of a multiple of 64 columns)";
        });
    matrix<float> al(rows, nb), a1(rows, nb), ah(rows, nb), a2(rows, nb), ms(rows, nb),
        mh(rows, nb), ml(rows, nb);
    bool any_salient = false, any_high = false;
    for (std::size_t b = 0; b < nb; ++b) {
        const billm_block& blk = r.blocks[b];
        const bool salient = !blk.salient.empty(), rest = blk.salient.size() < blk.width;
        any_salient = any_salient || salient;
        for (std::size_t i = 0; i < rows; ++i) {
            const float low = rest ? blk.low_scale[i] : 0.0f,
                        low_mean = rest ? blk.low_mean[i] : 0.0f;
            al(i, b) = low;
            ml(i, b) = low_mean;
            ah(i, b) = rest ? blk.high_scale[i] - low : 0.0f;
            mh(i, b) = rest ? blk.high_mean[i] - low_mean : 0.0f;
            a1(i, b) = salient ? blk.salient_scale1[i] - low : 0.0f;
            a2(i, b) = salient ? blk.salient_scale2[i] : 0.0f;
            ms(i, b) = salient ? blk.salient_mean[i] - low_mean : 0.0f;
        }
    }
    matrix<std::int8_t> b2(rows, cols);
    matrix<std::uint8_t> salient_mask(rows, cols);
    for (std::size_t i = 0; i < rows; ++i)
        for (std::size_t k = 0; k < cols; ++k) {
            b2(i, k) = r.residual_signs(i, k) < 0 ? std::int8_t{-1} : std::int8_t{1};
            salient_mask(i, k) = r.salient_column[k] ? 1 : 0;
            any_high = any_high || r.high_group(i, k) != 0;
        }
    std::vector<binary_plane_view> planes{{r.signs.view(), al.view()}};
    if (any_salient) planes.push_back({r.signs.view(), a1.view(), salient_mask.view()});
    if (any_high) planes.push_back({r.signs.view(), ah.view(), r.high_group.view()});
    if (any_salient) {
        planes.push_back({b2.view(), a2.view(), salient_mask.view()});
        planes.push_back({{}, ms.view(), salient_mask.view()});
    }
    if (any_high) planes.push_back({{}, mh.view(), r.high_group.view()});
    return binary_matrix(planes, nb == 1 ? 0 : g, {}, ml.view());
}

/// Ŵ [rows][cols] in float: α_c(k) · (Σ_p α^p(r, b) · M^p(r, k) · B^p(r, k) + μ(r, b)), the
/// plane terms added in plane order. O(planes · rows · cols).
inline matrix<float> dequantize(const binary_matrix& w) {
    matrix<float> out(w.rows(), w.cols());
    const std::size_t blocks = w.blocks_per_row(), g = w.group_size();
    for (std::size_t r = 0; r < w.rows(); ++r)
        for (std::size_t k = 0; k < w.cols(); ++k) {
            const std::size_t b = k / g;
            float v = 0.0f;
            for (std::size_t p = 0; p < w.plane_count(); ++p)
                if (w.mask(p, r, k))
                    v += w.scales(p)[r * blocks + b] * static_cast<float>(w.sign(p, r, k));
            if (!w.means().empty()) v += w.means()[r * blocks + b];
            out(r, k) = w.column_scales().empty() ? v : w.column_scales()[k] * v;
        }
    return out;
}

// ---------------------------------------------------------------------------------------
// Activations

/// A8 activations: per-token symmetric INT8 codes with one float scale per token.
///   codes  [tokens][padded_cols]  int8 in −127..127, row t at t·padded_cols (64-byte aligned),
///                                 padding columns [cols, padded_cols) 0
///   scales [tokens]               z(t, k) ≈ scales[t] · codes(t, k)
/// padded_cols is cols rounded up to a multiple of 64.
struct int8_activations {
    static constexpr std::size_t column_multiple = 64;

    std::size_t tokens = 0;
    std::size_t cols = 0;
    std::size_t padded_cols = 0;
    aligned_vector<std::int8_t> codes;
    aligned_vector<float> scales;

    const std::int8_t* row(std::size_t t) const noexcept { return codes.data() + t * padded_cols; }
    std::int8_t code(std::size_t t, std::size_t k) const noexcept { return row(t)[k]; }
};

/// Per-token symmetric INT8 quantization of z [tokens][cols] (row-major, any stride) into
/// `out`, reusing its storage: scale_t = max_k |z(t, k)| / 127, code = clamp(round-half-even(z ·
/// (1 / scale_t)), −127, 127) (nearbyint: the current rounding mode); a token of zeros, or of
/// max|z| so small that 1/scale overflows, gets scale 0 and codes 0. Throws qift::error for an
/// empty z, cols > 65536 or a non-finite value (naming its position; `out` is then empty).
/// O(tokens · cols): the two vectorized passes of the INT4 activations
/// (detail::quantize_token_kernel with codes up to 127), bit-exact with
/// detail::quantize_token_scalar(z_t, 1, −127, codes, 127).
inline void quantize_int8_activations(matrix_view<const float> z, int8_activations& out) {
    detail::require(!z.empty() && z.stride >= z.cols && z.cols <= 65536, [&] {
        return "quantize_int8_activations: z is " + std::to_string(z.rows) + "x" +
               std::to_string(z.cols) + " (stride " + std::to_string(z.stride) +
               "), expected a non-empty matrix of at most 65536 columns";
    });
    constexpr std::size_t m = int8_activations::column_multiple;
    out.tokens = z.rows;
    out.cols = z.cols;
    out.padded_cols = (z.cols + m - 1) / m * m;
    out.codes.resize(out.tokens * out.padded_cols);  // every byte is written below
    out.scales.resize(out.tokens);
    // The INT4 activation kernel with codes up to 127 and no clip (act.hpp: bit-exact with
    // detail::quantize_token_scalar, both passes vectorized).
    if (!detail::quantize_token_rows(z, 1.0f, -127, 127, out.codes.data(), out.padded_cols,
                                     out.scales.data(), nullptr)) [[unlikely]] {
        out.tokens = out.cols = out.padded_cols = 0;
        out.codes.clear();
        out.scales.clear();
        detail::fail_non_finite("quantize_int8_activations", "z", z);
    }
}

/// The same, returning new storage.
inline int8_activations quantize_int8_activations(matrix_view<const float> z) {
    int8_activations q;
    quantize_int8_activations(z, q);
    return q;
}

/// One token: z is a span of cols values.
inline int8_activations quantize_int8_activations(std::span<const float> z) {
    return quantize_int8_activations(matrix_view<const float>(z.data(), 1, z.size()));
}

/// The dequantized [tokens][cols] activations: scales[t] · codes(t, k).
inline matrix<float> dequantize(const int8_activations& q) {
    matrix<float> out(q.tokens, q.cols);
    for (std::size_t t = 0; t < q.tokens; ++t)
        for (std::size_t k = 0; k < q.cols; ++k)
            out(t, k) = q.scales[t] * static_cast<float>(q.code(t, k));
    return out;
}

/// z = α_c ⊙ x for every token of x [tokens][w.cols()] (a copy of x when w has no column
/// scales): what the integer paths must quantize. Throws qift::error when x has another
/// number of columns. O(tokens · cols).
inline matrix<float> apply_column_scales(const binary_matrix& w, matrix_view<const float> x) {
    detail::require(x.cols == w.cols() && x.stride >= x.cols, [&] {
        return "apply_column_scales: x has " + std::to_string(x.cols) + " columns, weights " +
               std::to_string(w.cols());
    });
    matrix<float> z(x.rows, x.cols);
    const auto cs = w.column_scales();
    for (std::size_t t = 0; t < x.rows; ++t)
        for (std::size_t k = 0; k < x.cols; ++k) z(t, k) = cs.empty() ? x(t, k) : cs[k] * x(t, k);
    return z;
}

/// A8 activations of x for w: quantize_int8_activations(apply_column_scales(w, x)).
inline int8_activations quantize_int8_activations(const binary_matrix& w,
                                                  matrix_view<const float> x) {
    return quantize_int8_activations(apply_column_scales(w, x));
}

/// A4 activations of x for w: quantize_activations(apply_column_scales(w, x), clip, range).
inline quantized_activations quantize_activations(const binary_matrix& w,
                                                  matrix_view<const float> x, float clip = 1.0f,
                                                  a4_range range = a4_range::symmetric) {
    return quantize_activations(apply_column_scales(w, x), clip, range);
}

namespace detail {

/// The kernel paths compiled into this build; gemv / gemm use binary_best_path, the tests run
/// every compiled one, the references the scalar one.
enum class binary_path { scalar, avx2, avx512 };
inline constexpr binary_path binary_best_path = QIFT_BINARY_AVX512 ? binary_path::avx512
                                                : QIFT_BINARY_AVX2 ? binary_path::avx2
                                                                   : binary_path::scalar;
inline constexpr bool binary_path_compiled(binary_path p) noexcept {
    return p == binary_path::scalar || (p == binary_path::avx2 && QIFT_BINARY_AVX2) ||
           (p == binary_path::avx512 && QIFT_BINARY_AVX512);
}

/// acc[i] += Σ_b alpha[i·blocks + b] · float(dots[i·ldd + b]) for i < n (ldd 0: the same dots
/// for every row), in a fixed order: 16 partial sums (partial l takes blocks l, l + 16, ...;
/// independent, so they vectorize), added pairwise. One compiled copy for every kernel path (not
/// inlined), so the paths agree bit for bit whenever their dots do.
template <class D>
__attribute__((noinline)) void binary_accumulate(const float* alpha, std::size_t blocks,
                                                 const D* dots, std::size_t ldd, std::size_t n,
                                                 float* acc) noexcept {
    for (std::size_t i = 0; i < n; ++i) {
        const float* al = alpha + i * blocks;
        const D* d = dots + i * ldd;
        if (blocks == 1) {
            acc[i] += al[0] * static_cast<float>(d[0]);
            continue;
        }
        float part[16] = {};
        std::size_t b = 0;
        for (; b + 16 <= blocks; b += 16)
            for (std::size_t l = 0; l < 16; ++l)
                part[l] += al[b + l] * static_cast<float>(d[b + l]);
        for (std::size_t l = 0; b + l < blocks; ++l)
            part[l] += al[b + l] * static_cast<float>(d[b + l]);
        for (std::size_t h = 8; h >= 1; h /= 2)
            for (std::size_t l = 0; l < h; ++l) part[l] += part[l + h];
        acc[i] += part[0];
    }
}

/// Calls `call` with the mask mode of `ref` as a std::integral_constant.
template <class Call>
void binary_with_mode(const binary_plane_ref& ref, const Call& call) {
    using mm = binary_mask_mode;
    switch (ref.mode) {
        case mm::none:
            return call(std::integral_constant<mm, mm::none>{});
        case mm::direct:
            return call(std::integral_constant<mm, mm::direct>{});
        case mm::inverted:
            return call(std::integral_constant<mm, mm::inverted>{});
    }
}

/// Kernel::int_tile<R, mode of ref, Int4>: the int32 block dots of rows [r0, r0 + R) of one
/// plane against one token a (block sums asum), out[i·ldo + b]. Int4: every |a| <= 8.
template <class Kernel, int R, bool Int4>
void binary_int_tile(const binary_plane_ref& ref, const binary_geometry& g, std::size_t r0,
                     const std::int8_t* a, const std::int32_t* asum, std::int32_t* out,
                     std::size_t ldo) {
    binary_with_mode(ref, [&](auto mode) {
        Kernel::template int_tile<R, decltype(mode)::value, Int4>(ref, g, r0, a, asum, out, ldo);
    });
}

/// Kernel::float_tile<R, mode of ref>: the float block sums of rows [r0, r0 + R) of one plane
/// against one token z (block sums zsum), out[i·ldo + b].
template <class Kernel, int R>
void binary_float_tile(const binary_plane_ref& ref, const binary_geometry& g, std::size_t r0,
                       const float* z, const float* zsum, float* out, std::size_t ldo) {
    binary_with_mode(ref, [&](auto mode) {
        Kernel::template float_tile<R, decltype(mode)::value>(ref, g, r0, z, zsum, out, ldo);
    });
}

/// Runs tile(integral_constant<int, R>, r) over rows [r0, r1): tiles of 8 rows (where the
/// kernel takes them), then 4, then single rows.
template <class Kernel, class Tile>
void binary_row_tiles(std::size_t r0, std::size_t r1, const Tile& tile) {
    std::size_t r = r0;
    if constexpr (Kernel::max_rows >= 8)
        for (; r + 8 <= r1; r += 8) tile(std::integral_constant<int, 8>{}, r);
    for (; r + 4 <= r1; r += 4) tile(std::integral_constant<int, 4>{}, r);
    for (; r < r1; ++r) tile(std::integral_constant<int, 1>{}, r);
}

/// Integer rows [r0, r1) × tokens [0, tokens) into y[t·y_stride + r]: per row tile and token,
/// each plane's block dots through Kernel, then
///   y = s_a · ( Σ_p Σ_b α^p(r, b) · dot^p(r, b) + Σ_b μ(r, b) · Σ_{k in b} a_k )
/// in float, in that order (binary_accumulate). Tokens run inside the 16-row chunk, so the
/// chunk's weight words are read from memory once and from L1 for the other tokens.
template <class Kernel, bool Int4>
void binary_int_rows(const binary_matrix& w, const std::int8_t* a, std::size_t a_stride,
                     const float* a_scales, const std::int32_t* a_block_sums, std::size_t tokens,
                     std::size_t r0, std::size_t r1, float* y, std::size_t y_stride) {
    const binary_geometry& g = w.geometry();
    const std::size_t blocks = g.blocks;
    std::int32_t dots[8 * binary_max_blocks];
    binary_plane_ref refs[binary_matrix::max_planes];
    for (std::size_t p = 0; p < w.plane_count(); ++p) refs[p] = w.plane_ref(p);
    for (std::size_t t = 0; t < tokens; ++t)
        binary_row_tiles<Kernel>(r0, r1, [&](auto rt, std::size_t r) {
            constexpr int R = decltype(rt)::value;
            const std::int32_t* asum = a_block_sums + t * blocks;
            float acc[R] = {};
            for (std::size_t p = 0; p < w.plane_count(); ++p) {
                binary_int_tile<Kernel, R, Int4>(refs[p], g, r, a + t * a_stride, asum, dots,
                                                 blocks);
                binary_accumulate(w.scales(p).data() + r * blocks, blocks, dots, blocks,
                                  std::size_t(R), acc);
            }
            if (!w.means().empty())
                binary_accumulate(w.means().data() + r * blocks, blocks, asum, 0, std::size_t(R),
                                  acc);
            for (std::size_t i = 0; i < std::size_t(R); ++i)
                y[t * y_stride + r + i] = a_scales[t] * acc[i];
        });
}

/// Float rows [r0, r1) × tokens: as binary_int_rows on z (padded to words·64 per token, stride
/// z_stride) with block sums zs [tokens][blocks]: y = Σ_p Σ_b α^p · S^p + Σ_b μ · Σ_{k in b} z_k.
template <class Kernel>
void binary_float_rows(const binary_matrix& w, const float* z, std::size_t z_stride,
                       const float* zs, std::size_t tokens, std::size_t r0, std::size_t r1,
                       float* y, std::size_t y_stride) {
    const binary_geometry& g = w.geometry();
    const std::size_t blocks = g.blocks;
    float dots[8 * binary_max_blocks];
    binary_plane_ref refs[binary_matrix::max_planes];
    for (std::size_t p = 0; p < w.plane_count(); ++p) refs[p] = w.plane_ref(p);
    for (std::size_t t = 0; t < tokens; ++t)
        binary_row_tiles<Kernel>(r0, r1, [&](auto rt, std::size_t r) {
            constexpr int R = decltype(rt)::value;
            float acc[R] = {};
            for (std::size_t p = 0; p < w.plane_count(); ++p) {
                binary_float_tile<Kernel, R>(refs[p], g, r, z + t * z_stride, zs + t * blocks, dots,
                                             blocks);
                binary_accumulate(w.scales(p).data() + r * blocks, blocks, dots, blocks,
                                  std::size_t(R), acc);
            }
            if (!w.means().empty())
                binary_accumulate(w.means().data() + r * blocks, blocks, zs + t * blocks, 0,
                                  std::size_t(R), acc);
            for (std::size_t i = 0; i < std::size_t(R); ++i) y[t * y_stride + r + i] = acc[i];
        });
}

/// Runs `run(kernel)` with the kernel type of `path`; qift::error when it is not compiled.
template <class Run>
void binary_dispatch(binary_path path, const Run& run) {
    switch (path) {
        case binary_path::scalar:
            return run(binary_scalar{});
        case binary_path::avx2:
#if QIFT_BINARY_AVX2
            return run(binary_avx2{});
#else
            break;
#endif
        case binary_path::avx512:
#if QIFT_BINARY_AVX512
            return run(binary_avx512{});
#else
            break;
#endif
    }
    fail("binary_matrix: kernel path not compiled into this build");
}

/// Integer product: tokens of int8 codes at a + t·a_stride (|code| <= 127, or <= 8 when Int4;
/// zero up to w.words_per_row()·64), scales a_scales[t], into y[t·y_stride + r]. Shapes are the
/// caller's to check.
template <bool Int4>
void binary_int_product(const binary_matrix& w, const std::int8_t* a, std::size_t a_stride,
                        const float* a_scales, std::size_t tokens, float* y, std::size_t y_stride,
                        binary_path path) {
    const binary_geometry& g = w.geometry();
    std::vector<std::int32_t> block_sums(tokens * g.blocks);
    for (std::size_t t = 0; t < tokens; ++t)
        for (std::size_t b = 0; b < g.blocks; ++b) {
            std::int32_t s = 0;
            for (std::size_t k = b * g.block_chunks * 64; k < g.block_end(b) * 64; ++k)
                s += a[t * a_stride + k];
            block_sums[t * g.blocks + b] = s;
        }
    const std::size_t work = w.rows() * g.words * 64 * w.plane_count() * tokens;
    binary_dispatch(path, [&](auto kernel) {
        for_row_chunks(w.rows(), work, [&](std::size_t r0, std::size_t r1) {
            binary_int_rows<decltype(kernel), Int4>(w, a, a_stride, a_scales, block_sums.data(),
                                                    tokens, r0, r1, y, y_stride);
        });
    });
}

/// Float product: z = α_c ⊙ x (x [tokens][cols], any stride) into a zero-padded buffer, its
/// block sums, then the kernels, into y[t·y_stride + r]. Shapes are the caller's to check.
inline void binary_float_product(const binary_matrix& w, matrix_view<const float> x, float* y,
                                 std::size_t y_stride, binary_path path) {
    const binary_geometry& g = w.geometry();
    const std::size_t tokens = x.rows, zs_stride = g.words * 64;
    aligned_vector<float> z(tokens * zs_stride, 0.0f), zs(tokens * g.blocks, 0.0f);
    const auto cs = w.column_scales();
    for (std::size_t t = 0; t < tokens; ++t) {
        float* zt = z.data() + t * zs_stride;
        for (std::size_t k = 0; k < x.cols; ++k) zt[k] = cs.empty() ? x(t, k) : cs[k] * x(t, k);
        // 16 partial sums per block (a fixed order, vectorizable), whole words: zero padded.
        for (std::size_t b = 0; b < g.blocks; ++b) {
            float part[16] = {};
            for (std::size_t k = b * g.block_chunks * 64; k < g.block_end(b) * 64; k += 16)
                for (std::size_t l = 0; l < 16; ++l) part[l] += zt[k + l];
            float s = 0.0f;
            for (float v : part) s += v;
            zs[t * g.blocks + b] = s;
        }
    }
    const std::size_t work = w.rows() * zs_stride * w.plane_count() * tokens;
    binary_dispatch(path, [&](auto kernel) {
        for_row_chunks(w.rows(), work, [&](std::size_t r0, std::size_t r1) {
            binary_float_rows<decltype(kernel)>(w, z.data(), zs_stride, zs.data(), tokens, r0, r1,
                                                y, y_stride);
        });
    });
}

inline void check_binary_gemv(const binary_matrix& w, std::size_t x_cols, std::size_t tokens,
                              std::size_t y_size, const char* fn) {
    require(w.rows() > 0, [&] { return std::string(fn) + ": the weights are empty"; });
    require(x_cols == w.cols() && tokens == 1 && y_size == w.rows(), [&] {
        return std::string(fn) + ": activations are " + std::to_string(tokens) + "x" +
               std::to_string(x_cols) + ", y has " + std::to_string(y_size) +
               " values; the weights are " + std::to_string(w.rows()) + "x" +
               std::to_string(w.cols()) + " (expected 1 token)";
    });
}

inline void check_binary_gemm(const binary_matrix& w, std::size_t x_cols, std::size_t tokens,
                              matrix_view<float> y, const char* fn) {
    require(w.rows() > 0, [&] { return std::string(fn) + ": the weights are empty"; });
    require(x_cols == w.cols(), [&] {
        return std::string(fn) + ": activations have " + std::to_string(x_cols) +
               " columns, weights " + std::to_string(w.cols());
    });
    check_gemm_output(tokens, w.rows(), y, fn);
}

inline void check_binary_codes(const binary_matrix& w, std::size_t padded_cols,
                               std::size_t code_count, std::size_t tokens, const char* fn) {
    require(padded_cols >= w.words_per_row() * 64 && code_count == tokens * padded_cols, [&] {
        return std::string(fn) + ": activation buffer of " + std::to_string(padded_cols) +
               " padded columns and " + std::to_string(code_count) + " codes is malformed";
    });
}

/// The one entry behind every public GEMV / GEMM (tests call it with each compiled path).
inline void binary_product(const binary_matrix& w, const int8_activations& a, float* y,
                           std::size_t y_stride, binary_path path, const char* fn) {
    check_binary_codes(w, a.padded_cols, a.codes.size(), a.tokens, fn);
    binary_int_product<false>(w, a.codes.data(), a.padded_cols, a.scales.data(), a.tokens, y,
                              y_stride, path);
}
/// A4 codes: |code| <= 8 (quantized_activations' contract), the Int4 kernels.
inline void binary_product(const binary_matrix& w, const quantized_activations& a, float* y,
                           std::size_t y_stride, binary_path path, const char* fn) {
    check_binary_codes(w, a.padded_cols, a.codes.size(), a.tokens, fn);
    binary_int_product<true>(w, a.codes.data(), a.padded_cols, a.scales.data(), a.tokens, y,
                             y_stride, path);
}
inline void binary_product(const binary_matrix& w, matrix_view<const float> x, float* y,
                           std::size_t y_stride, binary_path path, const char*) {
    binary_float_product(w, x, y, y_stride, path);
}

template <class A>
void binary_gemv(const binary_matrix& w, const A& a, std::span<float> y, binary_path path,
                 const char* fn) {
    if constexpr (std::is_same_v<A, matrix_view<const float>>)
        check_binary_gemv(w, a.cols, a.rows, y.size(), fn);
    else
        check_binary_gemv(w, a.cols, a.tokens, y.size(), fn);
    binary_product(w, a, y.data(), 0, path, fn);
}

template <class A>
void binary_gemm(const binary_matrix& w, const A& a, matrix_view<float> y, binary_path path,
                 const char* fn) {
    if constexpr (std::is_same_v<A, matrix_view<const float>>) {
        require(a.stride >= a.cols, [&] { return std::string(fn) + ": x.stride < x.cols"; });
        check_binary_gemm(w, a.cols, a.rows, y, fn);
    } else {
        check_binary_gemm(w, a.cols, a.tokens, y, fn);
    }
    binary_product(w, a, y.data, y.stride, path, fn);
}

}  // namespace detail

/// Float GEMV: y[r] = Σ_k Ŵ(r, k) · x[k], x of w.cols() values, y of w.rows(), computed as
/// Σ_p Σ_b α^p(r, b) · S^p(r, b) + Σ_b μ(r, b) · Σ_{k in b} z_k with z = α_c ⊙ x and S the
/// masked signed block sums Σ m·s·z (no multiplies by weights). Kernel: AVX-512 (k-masks from
/// the bits, masked adds), AVX2 (bit expansion) or scalar (detail/binary_kernels.hpp). Differs
/// from gemv_reference by float rounding order only. Rows are split over threads through
/// parallel_for (16-row chunks). Throws qift::error on a shape mismatch. O(planes·rows·cols);
/// streams w.size_bytes() bytes.
inline void gemv(const binary_matrix& w, std::span<const float> x, std::span<float> y) {
    detail::binary_gemv(w, matrix_view<const float>(x.data(), 1, x.size()), y,
                        detail::binary_best_path, "gemv");
}

/// A8 GEMV: y[r] = s_a · (Σ_p Σ_b α^p(r, b) · D^p(r, b) + Σ_b μ(r, b) · Σ_{k in b} a_k) for the
/// one token of `a` (a.tokens == 1, a.cols == w.cols(), quantized from α_c ⊙ x: see
/// quantize_int8_activations(w, x); codes in −127..127, as the quantizer makes them), D the block
/// dots Σ m·s·a, exact in int32 (the proof is in detail/binary_kernels.hpp). AVX-512 kernel: the
/// sign words as k-masks, zero-masked byte moves + vpdpbusd (VNNI; masked int16 adds without
/// it); 4096×4096 with per-row scales from DRAM runs at about 0.8 of a plain read of the same
/// bytes on one core. Equals gemv_reference bit for bit. Throws qift::error on a shape mismatch.
/// O(planes·rows·cols); streams w.size_bytes() bytes.
inline void gemv(const binary_matrix& w, const int8_activations& a, std::span<float> y) {
    detail::binary_gemv(w, a, y, detail::binary_best_path, "gemv");
}

/// A4 GEMV: the A8 GEMV on INT4 codes (quantize_activations(w, x) applies α_c first; codes in
/// −8..7, quantized_activations' contract), which AVX-512 adds as bytes (one masked vpaddb per
/// 64 weights and row). Equals gemv_reference bit for bit. Throws qift::error on a shape
/// mismatch. O(planes·rows·cols).
inline void gemv(const binary_matrix& w, const quantized_activations& a, std::span<float> y) {
    detail::binary_gemv(w, a, y, detail::binary_best_path, "gemv");
}

/// GEMMs over the tokens of x [tokens][cols] (any stride) or of a (A8 / A4): y(t, r) = the GEMV
/// of token t, y [tokens][w.rows()] (row-major, any stride); each output equals the GEMV of its
/// token bit for bit (the same kernels run token by token on each 16-row chunk, whose weights
/// then come from L1). Throws qift::error on a shape mismatch. O(tokens·planes·rows·cols).
inline void gemm(const binary_matrix& w, matrix_view<const float> x, matrix_view<float> y) {
    detail::binary_gemm(w, x, y, detail::binary_best_path, "gemm");
}
inline void gemm(const binary_matrix& w, const int8_activations& a, matrix_view<float> y) {
    detail::binary_gemm(w, a, y, detail::binary_best_path, "gemm");
}
inline void gemm(const binary_matrix& w, const quantized_activations& a, matrix_view<float> y) {
    detail::binary_gemm(w, a, y, detail::binary_best_path, "gemm");
}

/// Scalar references of the GEMVs and GEMMs above (the test oracles; detail::binary_scalar):
/// the same contracts; the integer ones equal gemv / gemm bit for bit.
inline void gemv_reference(const binary_matrix& w, std::span<const float> x, std::span<float> y) {
    detail::binary_gemv(w, matrix_view<const float>(x.data(), 1, x.size()), y,
                        detail::binary_path::scalar, "gemv_reference");
}
inline void gemv_reference(const binary_matrix& w, const int8_activations& a, std::span<float> y) {
    detail::binary_gemv(w, a, y, detail::binary_path::scalar, "gemv_reference");
}
inline void gemv_reference(const binary_matrix& w, const quantized_activations& a,
                           std::span<float> y) {
    detail::binary_gemv(w, a, y, detail::binary_path::scalar, "gemv_reference");
}
inline void gemm_reference(const binary_matrix& w, matrix_view<const float> x,
                           matrix_view<float> y) {
    detail::binary_gemm(w, x, y, detail::binary_path::scalar, "gemm_reference");
}
inline void gemm_reference(const binary_matrix& w, const int8_activations& a,
                           matrix_view<float> y) {
    detail::binary_gemm(w, a, y, detail::binary_path::scalar, "gemm_reference");
}
inline void gemm_reference(const binary_matrix& w, const quantized_activations& a,
                           matrix_view<float> y) {
    detail::binary_gemm(w, a, y, detail::binary_path::scalar, "gemm_reference");
}

}  // namespace qift
