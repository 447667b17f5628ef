// SPDX-License-Identifier: MIT
// KV4 cache: keys and values stored as 4-bit codes per (token, kv head) group of head_dim
// values (QuaRot, methods.md §5), with decode attention computed on the packed data.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core.hpp"
#include "detail/kv_kernels.hpp"
#include "hadamard.hpp"
#include "levels.hpp"
#include "scale.hpp"

namespace qift {

/// A 4-bit KV quantization policy: asymmetric (min-max with an integer zero-point, the
/// default, as QuaRot) or symmetric signed INT4 (codes −8..7, scale max|x|·clip/7).
template <class P>
concept kv_policy = level_set<P> && P::bits == 4 && P::levels.size() == 16 &&
                    (affine_level_set<P> || std::same_as<P, levels::int4>);

/// Construction options of a kv_cache.
struct kv_cache_options {
    std::size_t n_kv_heads = 1;
    /// Tokens the cache holds; append beyond it throws (grow with reserve, or slide).
    std::size_t capacity = 0;
    /// Clip ratio applied to each group's range before quantization (QuaRot: 0.95).
    float clip = 0.95f;
    /// Rotate keys (and queries by the same matrix) over head_dim by a randomized Hadamard
    /// (or the seeded orthogonal fallback when head_dim has no Hadamard construction):
    /// q·kᵀ is unchanged in exact arithmetic, while outlier channels are spread out.
    bool rotate_keys = true;
    std::uint64_t rotation_seed = 0x51f7;
};

/// Cache of keys and values for one attention layer.
///
/// Shapes: one token's keys (or values) are [n_kv_heads][HeadDim] floats, contiguous. Each
/// (token, kv head) group of HeadDim values is quantized to 4-bit codes c with its own scale
/// s and zero z: x ≈ s·(c − z) (z = 8 for the symmetric policy). Storage per kv head and
/// token: HeadDim/2 bytes (byte j: code j in the low nibble, code j + HeadDim/2 in the high
/// one), a float scale and a one-byte zero — for HeadDim = 128, 69 bytes against 512 for
/// float32 (0.135×).
/// attend() computes softmax(q·Kᵀ/√HeadDim)·V per query head straight from these codes,
/// unpacking each key and value once per token for all the query heads that share it (GQA).
template <std::size_t HeadDim, kv_policy Policy = levels::asymmetric_int<4>>
requires(HeadDim >= 2 && HeadDim % 2 == 0) class kv_cache {
  public:
    static constexpr std::size_t head_dim = HeadDim;
    static constexpr std::size_t bytes_per_group = HeadDim / 2;

    explicit kv_cache(const kv_cache_options& opt) : opt_(opt) {
        detail::require(opt.n_kv_heads >= 1, [] {
            return std::string("kv_cache: n_kv_heads must be at least 1, got 0");
        });
        detail::require(opt.clip > 0.0f && opt.clip <= 1.0f, [&] {
            return "kv_cache: clip must be in (0, 1], got " + std::to_string(opt.clip);
        });
        if (opt.rotate_keys) rotation_ = rotation::for_size(HeadDim, opt.rotation_seed);
        allocate(opt.capacity);
    }

    std::size_t size() const noexcept { return size_; }
    std::size_t capacity() const noexcept { return opt_.capacity; }
    std::size_t n_kv_heads() const noexcept { return opt_.n_kv_heads; }
    /// Bytes held by the cache's storage at its capacity (codes and per-group parameters).
    std::size_t memory_bytes() const noexcept {
        return opt_.capacity * bytes_per_token(opt_.n_kv_heads);
    }
    /// Bytes one token costs (all kv heads, keys and values): per group HeadDim/2 code bytes,
    /// a float scale and a one-byte zero-point.
    static constexpr std::size_t bytes_per_token(std::size_t n_kv_heads) noexcept {
        return 2 * n_kv_heads * (bytes_per_group + sizeof(float) + 1);
    }

    /// Appends one token: k and v are [n_kv_heads · HeadDim]. Throws qift::error when the
    /// cache is full, the sizes are wrong, or a value is not finite.
    void append(std::span<const float> k, std::span<const float> v) {
        append(matrix_view<const float>(k.data(), 1, k.size()),
               matrix_view<const float>(v.data(), 1, v.size()));
    }

    /// Appends M tokens: k and v are [M][n_kv_heads · HeadDim].
    void append(matrix_view<const float> k, matrix_view<const float> v) {
        const std::size_t width = opt_.n_kv_heads * HeadDim;
        detail::require(k.cols == width && v.cols == width && k.rows == v.rows, [&] {
            return "kv_cache::append: k is " + std::to_string(k.rows) + "x" +
                   std::to_string(k.cols) + " and v is " + std::to_string(v.rows) + "x" +
                   std::to_string(v.cols) + ", expected M x " + std::to_string(width) +
                   " (n_kv_heads * head_dim) for both";
        });
        detail::require(size_ + k.rows <= opt_.capacity, [&] {
            return "kv_cache::append: capacity " + std::to_string(opt_.capacity) +
                   " tokens exceeded (holding " + std::to_string(size_) + ", appending " +
                   std::to_string(k.rows) +
                   "); grow with reserve() or drop old tokens with slide()";
        });
        std::array<float, HeadDim> buf;
        for (std::size_t t = 0; t < k.rows; ++t) {
            for (std::size_t h = 0; h < opt_.n_kv_heads; ++h) {
                std::copy_n(&k(t, h * HeadDim), HeadDim, buf.begin());
                if (rotation_) rotation_->apply(buf);
                quantize_group(buf, k_, h, size_ + t);
                std::copy_n(&v(t, h * HeadDim), HeadDim, buf.begin());
                quantize_group(buf, v_, h, size_ + t);
            }
        }
        size_ += k.rows;
    }

    /// Grows (or shrinks, down to size()) the capacity, keeping the tokens. O(size()).
    void reserve(std::size_t new_capacity) {
        detail::require(new_capacity >= size_, [&] {
            return "kv_cache::reserve: new capacity " + std::to_string(new_capacity) +
                   " is below the " + std::to_string(size_) + " tokens held";
        });
        kv_cache grown(opt_, new_capacity, rotation_);
        for (std::size_t h = 0; h < opt_.n_kv_heads; ++h) {
            std::memcpy(grown.codes_at(grown.k_.codes, h, 0), codes_at(k_.codes, h, 0),
                        size_ * bytes_per_group);
            std::memcpy(grown.codes_at(grown.v_.codes, h, 0), codes_at(v_.codes, h, 0),
                        size_ * bytes_per_group);
            for (int kv = 0; kv < 2; ++kv) {
                std::copy_n(&store_of(kv).scales[h * opt_.capacity], size_,
                            &grown.store_of(kv).scales[h * new_capacity]);
                std::copy_n(&store_of(kv).zeros[h * opt_.capacity], size_,
                            &grown.store_of(kv).zeros[h * new_capacity]);
            }
        }
        grown.size_ = size_;
        *this = std::move(grown);
    }

    /// Drops the oldest `count` tokens (a sliding window); positions shift down by count.
    void slide(std::size_t count) {
        detail::require(count <= size_, [&] {
            return "kv_cache::slide: cannot drop " + std::to_string(count) + " of " +
                   std::to_string(size_) + " tokens";
        });
        for (std::size_t h = 0; h < opt_.n_kv_heads; ++h)
            for (int kv = 0; kv < 2; ++kv) {
                auto& st = store_of(kv);
                std::memmove(codes_at(st.codes, h, 0), codes_at(st.codes, h, count),
                             (size_ - count) * bytes_per_group);
                const std::size_t base = h * opt_.capacity;
                std::copy(&st.scales[base + count], &st.scales[base + size_], &st.scales[base]);
                std::copy(&st.zeros[base + count], &st.zeros[base + size_], &st.zeros[base]);
            }
        size_ -= count;
    }

    void clear() noexcept { size_ = 0; }

    /// Decode attention over the first `length` tokens (all of them by default): for query
    /// head h (q and out are [n_heads · HeadDim]) and kv head g = h / (n_heads / n_kv_heads),
    /// out_h = Σ_t softmax_t(q_h·k_t/√HeadDim) · v_t with k_t, v_t the dequantized cache.
    /// Numerically stable softmax (max subtracted). Throws qift::error on bad sizes, an empty
    /// range, or n_heads not a multiple of n_kv_heads. O(length · n_heads · HeadDim).
    void attend(std::span<const float> q, std::size_t n_heads, std::span<float> out,
                std::optional<std::size_t> length = std::nullopt) const {
        const std::size_t T = length.value_or(size_);
        detail::require(n_heads >= opt_.n_kv_heads && n_heads % opt_.n_kv_heads == 0, [&] {
            return "kv_cache::attend: n_heads " + std::to_string(n_heads) +
                   " is not a multiple of n_kv_heads " + std::to_string(opt_.n_kv_heads);
        });
        detail::require(q.size() == n_heads * HeadDim && out.size() == q.size(), [&] {
            return "kv_cache::attend: q has " + std::to_string(q.size()) + " and out " +
                   std::to_string(out.size()) +
                   " values, expected n_heads * head_dim = " + std::to_string(n_heads * HeadDim);
        });
        detail::require(T >= 1 && T <= size_, [&] {
            return "kv_cache::attend: length " + std::to_string(T) + " outside [1, " +
                   std::to_string(size_) + "]";
        });
        const std::size_t group = n_heads / opt_.n_kv_heads;
        detail::require(group <= 64, [&] {
            return "kv_cache::attend: " + std::to_string(group) +
                   " query heads per kv head, at most 64 supported";
        });
        parallel_for(opt_.n_kv_heads, [&](std::size_t begin, std::size_t end) {
            for (std::size_t g = begin; g < end; ++g)
                attend_group(q.subspan(g * group * HeadDim, group * HeadDim), group, g, T,
                             out.subspan(g * group * HeadDim, group * HeadDim));
        });
    }

    /// Causal prefill of M new tokens: appends k, v ([M][n_kv_heads·HeadDim]) and computes,
    /// for each new token i, attention of q[i] ([M][n_heads·HeadDim]) over every token up to
    /// and including itself, into out [M][n_heads·HeadDim].
    void prefill(matrix_view<const float> q, matrix_view<const float> k, matrix_view<const float> v,
                 std::size_t n_heads, matrix_view<float> out) {
        detail::require(q.rows == k.rows && out.rows == q.rows && out.cols == q.cols, [&] {
            return "kv_cache::prefill: q has " + std::to_string(q.rows) + " rows, k " +
                   std::to_string(k.rows) + ", out " + std::to_string(out.rows) +
                   "; they must agree";
        });
        const std::size_t start = size_;
        append(k, v);
        for (std::size_t i = 0; i < q.rows; ++i)
            attend(q.row(i), n_heads, out.row(i), start + i + 1);
    }

    /// Dequantized key of token t, kv head h, rotated back to the original basis.
    void read_key(std::size_t t, std::size_t h, std::span<float> out) const {
        read(k_, t, h, out, "read_key");
        if (rotation_) rotation_->apply_transpose(out);
    }
    /// Dequantized value of token t, kv head h.
    void read_value(std::size_t t, std::size_t h, std::span<float> out) const {
        read(v_, t, h, out, "read_value");
    }

  private:
    // Codes [kv head][capacity][HeadDim/2], scales and zero-points [kv head][capacity].
    struct storage {
        aligned_vector<std::uint8_t> codes;
        std::vector<float> scales;
        std::vector<std::uint8_t> zeros;
    };

    kv_cache(const kv_cache_options& opt, std::size_t capacity, std::optional<rotation> rot)
        : opt_(opt), rotation_(std::move(rot)) {
        allocate(capacity);
    }

    storage& store_of(int kv) noexcept { return kv == 0 ? k_ : v_; }
    const storage& store_of(int kv) const noexcept { return kv == 0 ? k_ : v_; }

    void allocate(std::size_t capacity) {
        opt_.capacity = capacity;
        for (storage* st : {&k_, &v_}) {
            st->codes.assign(opt_.n_kv_heads * capacity * bytes_per_group, 0);
            st->scales.assign(opt_.n_kv_heads * capacity, 0.0f);
            st->zeros.assign(opt_.n_kv_heads * capacity, 0);
        }
    }

    std::uint8_t* codes_at(aligned_vector<std::uint8_t>& c, std::size_t h, std::size_t t) {
        return c.data() + (h * opt_.capacity + t) * bytes_per_group;
    }
    const std::uint8_t* codes_at(const aligned_vector<std::uint8_t>& c, std::size_t h,
                                 std::size_t t) const {
        return c.data() + (h * opt_.capacity + t) * bytes_per_group;
    }

    detail::nibble_rows<HeadDim> rows_of(const storage& st, std::size_t h) const noexcept {
        return {codes_at(st.codes, h, 0), &st.scales[h * opt_.capacity],
                &st.zeros[h * opt_.capacity]};
    }

    // Quantizes one group (QuaRot's rule: range widened to contain 0, times clip).
    void quantize_group(std::span<const float> x, storage& st, std::size_t h, std::size_t t) {
        float lo = x[0], hi = x[0];
        for (float e : x) {
            detail::require(std::isfinite(e), [&] {
                return "kv_cache::append: non-finite value " + std::to_string(e) + " (token " +
                       std::to_string(t) + ", kv head " + std::to_string(h) + ")";
            });
            lo = std::min(lo, e), hi = std::max(hi, e);
        }
        const channel_params p = detail::clip_params<Policy>(lo, hi, opt_.clip);
        std::uint8_t* dst = codes_at(st.codes, h, t);
        for (std::size_t j = 0; j < bytes_per_group; ++j) {
            const unsigned lo_code = quantize_value<Policy>(x[j], p);
            const unsigned hi_code = quantize_value<Policy>(x[j + bytes_per_group], p);
            dst[j] = static_cast<std::uint8_t>(lo_code | hi_code << 4);
        }
        // The unified form s·(c − z): the symmetric int4 set's level is c − 8.
        st.scales[h * opt_.capacity + t] = p.scale;
        st.zeros[h * opt_.capacity + t] =
            static_cast<std::uint8_t>(level_traits<Policy>::has_zero_point ? p.zero : 8.0f);
    }

    void read(const storage& st, std::size_t t, std::size_t h, std::span<float> out,
              const char* fn) const {
        detail::require(t < size_ && h < opt_.n_kv_heads && out.size() == HeadDim, [&] {
            return "kv_cache::" + std::string(fn) + ": token " + std::to_string(t) + " of " +
                   std::to_string(size_) + ", kv head " + std::to_string(h) + " of " +
                   std::to_string(opt_.n_kv_heads) + ", out size " + std::to_string(out.size()) +
                   " (head_dim " + std::to_string(HeadDim) + ")";
        });
        const auto rows = rows_of(st, h);
        const float* r = rows.rows(t, 1, out.data());
        for (std::size_t i = 0; i < HeadDim; ++i) out[i] = rows.scale(t) * (r[i] - rows.zero(t));
    }

    // Attention of `group` query heads sharing kv head g, over tokens [0, T).
    void attend_group(std::span<const float> q, std::size_t group, std::size_t g, std::size_t T,
                      std::span<float> out) const {
        std::vector<float> qr(q.begin(), q.end()), scores(group * T);
        aligned_vector<float> scratch(detail::attention_block * HeadDim);
        if (rotation_)
            for (std::size_t h = 0; h < group; ++h)
                rotation_->apply(std::span(qr).subspan(h * HeadDim, HeadDim));
        using arch = xsimd::default_arch;
        if constexpr (HeadDim % xsimd::batch<float, arch>::size == 0)
            detail::attend_rows<arch, HeadDim>(rows_of(k_, g), rows_of(v_, g), qr.data(), group, T,
                                               out.data(), scratch.data(), scores.data());
        else
            detail::attend_rows_reference<HeadDim>(rows_of(k_, g), rows_of(v_, g), qr.data(), group,
                                                   T, out.data(), scratch.data(), scores.data());
    }

    kv_cache_options opt_;
    std::optional<rotation> rotation_;
    std::size_t size_ = 0;
    storage k_, v_;
};

}  // namespace qift
