// SPDX-License-Identifier: MIT
// KV4 cache: keys and values stored as 4-bit codes per (token, kv head) group of head_dim
// values (QuaRot, methods.md §5), with decode attention computed on the packed data.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
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
/// token: HeadDim/2 code bytes, a float scale and a one-byte zero — for HeadDim = 128, 69
/// bytes against 512 for float32 (0.135×). Layout per kv head:
///   values: token-major, byte j of token t = code j | code j + HeadDim/2 << 4;
///   keys: transposed blocks of 16 tokens (detail::key_block), block b = [HeadDim/2][16]
///         bytes, byte (p, j) = code(dim 2p, token 16b + j) | code(dim 2p + 1, same) << 4,
///         so one 16-byte load feeds the scores of 16 tokens without horizontal sums;
///   scales and zeros: [token] floats and bytes, keys and values apart.
/// Storage is allocated for the capacity rounded up to a multiple of 16 tokens.
/// attend() computes softmax(q·Kᵀ/√HeadDim)·V per query head straight from these codes,
/// widening each key and value once per token for up to 4 query heads that share it (GQA).
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
    /// Bytes held by the cache's storage at its capacity rounded up to a multiple of 16 tokens
    /// (codes and per-group parameters).
    std::size_t memory_bytes() const noexcept { return slots_ * bytes_per_token(opt_.n_kv_heads); }
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
        std::array<std::uint8_t, HeadDim> codes;
        for (std::size_t t = 0; t < k.rows; ++t) {
            const std::size_t slot = size_ + t;
            for (std::size_t h = 0; h < opt_.n_kv_heads; ++h) {
                std::copy_n(&k(t, h * HeadDim), HeadDim, buf.begin());
                if (rotation_) rotation_->apply(buf);
                quantize_group(buf, codes, k_, h, slot);
                for (std::size_t p = 0; p < bytes_per_group; ++p)
                    key_byte(h, slot, p) =
                        static_cast<std::uint8_t>(codes[2 * p] | codes[2 * p + 1] << 4);
                std::copy_n(&v(t, h * HeadDim), HeadDim, buf.begin());
                quantize_group(buf, codes, v_, h, slot);
                std::uint8_t* dst = value_codes(h, slot);
                for (std::size_t j = 0; j < bytes_per_group; ++j)
                    dst[j] = static_cast<std::uint8_t>(codes[j] | codes[j + bytes_per_group] << 4);
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
        const std::size_t key_bytes = blocks_for(size_) * detail::key_block * bytes_per_group;
        for (std::size_t h = 0; h < opt_.n_kv_heads; ++h) {
            // Key blocks do not depend on the capacity: whole blocks move as they are.
            std::memcpy(grown.head_codes(grown.k_, h), head_codes(k_, h), key_bytes);
            std::memcpy(grown.value_codes(h, 0), value_codes(h, 0), size_ * bytes_per_group);
            for (int kv = 0; kv < 2; ++kv) {
                std::copy_n(&store_of(kv).scales[h * slots_], size_,
                            &grown.store_of(kv).scales[h * grown.slots_]);
                std::copy_n(&store_of(kv).zeros[h * slots_], size_,
                            &grown.store_of(kv).zeros[h * grown.slots_]);
            }
        }
        grown.size_ = size_;
        *this = std::move(grown);
    }

    /// Drops the oldest `count` tokens (a sliding window); positions shift down by count.
    /// O(size()): a memmove when count is a multiple of 16 (whole key blocks), otherwise the
    /// keys move byte by byte within and across blocks (a few times slower, still no
    /// requantization).
    void slide(std::size_t count) {
        detail::require(count <= size_, [&] {
            return "kv_cache::slide: cannot drop " + std::to_string(count) + " of " +
                   std::to_string(size_) + " tokens";
        });
        const std::size_t kept = size_ - count;
        for (std::size_t h = 0; h < opt_.n_kv_heads; ++h) {
            // Keys: whole blocks when count is a multiple of 16, else byte by byte (every byte
            // holds one token's codes of a dim pair, so no nibble moves), forward.
            if (count % detail::key_block == 0)
                std::memmove(head_codes(k_, h), head_codes(k_, h) + count * bytes_per_group,
                             blocks_for(kept) * detail::key_block * bytes_per_group);
            else
                for (std::size_t t = 0; t < kept; ++t)
                    for (std::size_t p = 0; p < bytes_per_group; ++p)
                        key_byte(h, t, p) = key_byte(h, t + count, p);
            std::memmove(value_codes(h, 0), value_codes(h, count), kept * bytes_per_group);
            for (int kv = 0; kv < 2; ++kv) {
                auto& st = store_of(kv);
                const std::size_t base = h * slots_;
                std::copy(&st.scales[base + count], &st.scales[base + size_], &st.scales[base]);
                std::copy(&st.zeros[base + count], &st.zeros[base + size_], &st.zeros[base]);
            }
        }
        size_ = kept;
    }

    void clear() noexcept { size_ = 0; }

    /// Decode attention over the first `length` tokens (all of them by default): for query
    /// head h (q and out are [n_heads · HeadDim]) and kv head g = h / (n_heads / n_kv_heads),
    /// out_h = Σ_t softmax_t(q_h·k_t/√HeadDim) · v_t with k_t, v_t the dequantized cache.
    /// Numerically stable softmax (max subtracted). Throws qift::error on bad sizes, an empty
    /// range, or n_heads not a multiple of n_kv_heads. O(length · n_heads · HeadDim). SIMD
    /// (detail::attend_rows) when HeadDim is a multiple of twice the float batch width (32 on
    /// AVX-512, 16 on AVX2), the scalar detail::attend_rows_reference otherwise.
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
            // Uninitialized buffers, reused across this range's kv heads: zero-filling group·T
            // scores on every call cost about a tenth of the attention.
            const auto scores = std::make_unique_for_overwrite<float[]>(group * T);
            const auto scratch =
                std::make_unique_for_overwrite<float[]>(detail::attention_block * HeadDim);
            for (std::size_t g = begin; g < end; ++g)
                attend_group(q.subspan(g * group * HeadDim, group * HeadDim), group, g, T,
                             out.subspan(g * group * HeadDim, group * HeadDim), scores.get(),
                             scratch.get());
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
        read(keys_of(h), t, h, out, "read_key");
        if (rotation_) rotation_->apply_transpose(out);
    }
    /// Dequantized value of token t, kv head h.
    void read_value(std::size_t t, std::size_t h, std::span<float> out) const {
        read(values_of(h), t, h, out, "read_value");
    }

  private:
    // Per kv head, slots_ (the capacity rounded up to 16) tokens: key codes in transposed
    // blocks [slots_/16][HeadDim/2][16], value codes [slots_][HeadDim/2], scales and zeros
    // [slots_] each.
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

    static constexpr std::size_t blocks_for(std::size_t tokens) noexcept {
        return (tokens + detail::key_block - 1) / detail::key_block;
    }

    void allocate(std::size_t capacity) {
        opt_.capacity = capacity;
        slots_ = blocks_for(capacity) * detail::key_block;
        for (storage* st : {&k_, &v_}) {
            st->codes.assign(opt_.n_kv_heads * slots_ * bytes_per_group, 0);
            st->scales.assign(opt_.n_kv_heads * slots_, 0.0f);
            st->zeros.assign(opt_.n_kv_heads * slots_, 0);
        }
    }

    std::uint8_t* head_codes(storage& st, std::size_t h) noexcept {
        return st.codes.data() + h * slots_ * bytes_per_group;
    }
    const std::uint8_t* head_codes(const storage& st, std::size_t h) const noexcept {
        return st.codes.data() + h * slots_ * bytes_per_group;
    }
    std::uint8_t* value_codes(std::size_t h, std::size_t t) noexcept {
        return head_codes(v_, h) + t * bytes_per_group;
    }
    // The key byte of dim pair p of token t in kv head h.
    std::uint8_t& key_byte(std::size_t h, std::size_t t, std::size_t p) noexcept {
        return head_codes(k_,
                          h)[((t / detail::key_block) * bytes_per_group + p) * detail::key_block +
                             t % detail::key_block];
    }

    detail::nibble_key_blocks<HeadDim> keys_of(std::size_t h) const noexcept {
        return {head_codes(k_, h), &k_.scales[h * slots_], &k_.zeros[h * slots_]};
    }
    detail::nibble_rows<HeadDim> values_of(std::size_t h) const noexcept {
        return {head_codes(v_, h), &v_.scales[h * slots_], &v_.zeros[h * slots_]};
    }

    // Quantizes one group into codes (QuaRot's rule: range widened to contain 0, times clip)
    // and stores its scale and zero for token slot t.
    void quantize_group(std::span<const float> x, std::array<std::uint8_t, HeadDim>& codes,
                        storage& st, std::size_t h, std::size_t t) {
        float lo = x[0], hi = x[0];
        for (float e : x) {
            detail::require(std::isfinite(e), [&] {
                return "kv_cache::append: non-finite value " + std::to_string(e) + " (token " +
                       std::to_string(t) + ", kv head " + std::to_string(h) + ")";
            });
            lo = std::min(lo, e), hi = std::max(hi, e);
        }
        const channel_params p = detail::clip_params<Policy>(lo, hi, opt_.clip);
        for (std::size_t j = 0; j < HeadDim; ++j)
            codes[j] = static_cast<std::uint8_t>(quantize_value<Policy>(x[j], p));
        // The unified form s·(c − z): the symmetric int4 set's level is c − 8.
        st.scales[h * slots_ + t] = p.scale;
        st.zeros[h * slots_ + t] =
            static_cast<std::uint8_t>(level_traits<Policy>::has_zero_point ? p.zero : 8.0f);
    }

    template <class Rows>
    void read(const Rows& rows, std::size_t t, std::size_t h, std::span<float> out,
              const char* fn) const {
        detail::require(t < size_ && h < opt_.n_kv_heads && out.size() == HeadDim, [&] {
            return "kv_cache::" + std::string(fn) + ": token " + std::to_string(t) + " of " +
                   std::to_string(size_) + ", kv head " + std::to_string(h) + " of " +
                   std::to_string(opt_.n_kv_heads) + ", out size " + std::to_string(out.size()) +
                   " (head_dim " + std::to_string(HeadDim) + ")";
        });
        const float* r = rows.rows(t, 1, out.data());
        for (std::size_t i = 0; i < HeadDim; ++i) out[i] = rows.scale(t) * (r[i] - rows.zero(t));
    }

    // Attention of `group` query heads sharing kv head g, over tokens [0, T).
    // `scores` holds group·T floats, `scratch` attention_block·HeadDim.
    void attend_group(std::span<const float> q, std::size_t group, std::size_t g, std::size_t T,
                      std::span<float> out, float* scores, float* scratch) const {
        std::vector<float> qr(q.begin(), q.end());
        if (rotation_)
            for (std::size_t h = 0; h < group; ++h)
                rotation_->apply(std::span(qr).subspan(h * HeadDim, HeadDim));
        using arch = xsimd::default_arch;
        if constexpr (HeadDim % (2 * xsimd::batch<float, arch>::size) == 0)
            detail::attend_rows<arch, HeadDim>(keys_of(g), values_of(g), qr.data(), group, T,
                                               out.data(), scratch, scores);
        else
            detail::attend_rows_reference<HeadDim>(keys_of(g), values_of(g), qr.data(), group, T,
                                                   out.data(), scratch, scores);
    }

    kv_cache_options opt_;
    std::optional<rotation> rotation_;
    std::size_t size_ = 0;
    std::size_t slots_ = 0;  // capacity rounded up to a multiple of detail::key_block
    storage k_, v_;
};

}  // namespace qift
