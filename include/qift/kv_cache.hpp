// SPDX-License-Identifier: MIT
// KV4 cache: keys and values stored as 4-bit codes per (token, kv head) group of head_dim
// values (QuaRot, arXiv 2404.00456), with decode attention computed on the packed data.
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

namespace qift::inline QIFT_ISA {

/// A 4-bit KV quantization policy: asymmetric (min-max with an integer zero-point, the
/// default, as QuaRot) or symmetric signed INT4 (codes −8..7, scale max|x|·clip/7).
template <class P>
concept kv_policy = level_set<P> && P::bits == 4 && P::levels.size() == 16 &&
                    (affine_level_set<P> || std::same_as<P, levels::int4>);

/// Construction options of a kv_cache.
struct kv_cache_options {
    /// Values per (token, kv head) group: even, in [2, kv_cache<>::max_head_dim]. Sizes 16,
    /// 32, 64, 128 and 256 run kernels compiled for that size; any other even size runs the
    /// same kernels with the size as a run-time value (the scalar reference attention).
    std::size_t head_dim = 0;
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
/// Shapes: one token's keys (or values) are [n_kv_heads][head_dim] floats, contiguous. Each
/// (token, kv head) group of head_dim values is quantized to 4-bit codes c with its own scale
/// s and zero z: x ≈ s·(c − z) (z = 8 for the symmetric policy). Storage per kv head and
/// token: head_dim/2 code bytes, a float scale and a one-byte zero — for head_dim = 128, 69
/// bytes against 512 for float32 (0.135×).
///
/// Layout (owned by detail::kv4_layout, whose index functions every writer and kernel uses).
/// Storage holds `slots` tokens per kv head, the capacity rounded up to a multiple of 16
/// (detail::key_block); B = head_dim/2 code bytes per group. Keys and values have one code
/// array each, [n_kv_heads][slots·B] (head_offset(h) = h·slots·B), and one scale array and
/// one zero array each, [n_kv_heads][slots] (param_index(h, t) = h·slots + t). Within a head:
///   values: token-major, row t at value_row_offset(t) = t·B, byte j = code j | code j + B << 4;
///   keys: transposed blocks of 16 tokens, block b = [B][16] bytes; the byte of dim pair p
///         (dims 2p, 2p + 1) of token t is key_byte_index(t, p) = ((t/16)·B + p)·16 + t mod 16
///         and holds code(2p, t) | code(2p + 1, t) << 4, so one 16-byte load (key_pair_offset(b,
///         p)) feeds the scores of 16 tokens without horizontal sums.
/// attend() computes softmax(q·Kᵀ/√head_dim)·V per query head straight from these codes,
/// widening each key and value once per token for up to 4 query heads that share it (GQA).
template <kv_policy Policy = levels::asymmetric_int<4>>
class kv_cache {
  public:
    /// The largest head_dim accepted (models use 64..256; the bound keeps a group's
    /// per-call buffers small).
    static constexpr std::size_t max_head_dim = 1024;
    /// Below this many multiply-adds (n_heads · length · head_dim), attend() runs on the
    /// calling thread: starting threads (the default executor creates them per parallel loop)
    /// costs more than it saves. 2^18 is about 20 µs of attention on one core.
    static constexpr std::size_t parallel_work = std::size_t{1} << 18;

    /// Throws qift::error when head_dim is odd or outside [2, max_head_dim], n_kv_heads is 0
    /// or clip is outside (0, 1].
    explicit kv_cache(const kv_cache_options& opt) : opt_(opt) {
        detail::require(
            opt.head_dim >= 2 && opt.head_dim <= max_head_dim && opt.head_dim % 2 == 0, [&] {
                return "kv_cache: head_dim must be even and in [2, " +
                       std::to_string(max_head_dim) + "], got " + std::to_string(opt.head_dim);
            });
        detail::require(opt.n_kv_heads >= 1, [] {
            return std::string("kv_cache: n_kv_heads must be at least 1, got 0");
        });
        detail::require(opt.clip > 0.0f && opt.clip <= 1.0f, [&] {
            return "kv_cache: clip must be in (0, 1], got " + std::to_string(opt.clip);
        });
        // The widest query a call accepts (64 query heads per kv head, see check_heads) must be
        // addressable: then no n_heads · head_dim of attend/prefill wraps.
        (void)detail::checked_size<float>({std::size_t{64}, opt.n_kv_heads, opt.head_dim},
                                          "kv_cache: 64 x n_kv_heads x head_dim");
        if (opt.rotate_keys) rotation_ = rotation::for_size(opt.head_dim, opt.rotation_seed);
        allocate(opt.capacity);
    }

    std::size_t size() const noexcept { return size_; }
    std::size_t capacity() const noexcept { return opt_.capacity; }
    std::size_t n_kv_heads() const noexcept { return opt_.n_kv_heads; }
    std::size_t head_dim() const noexcept { return opt_.head_dim; }
    /// Code bytes per (token, kv head) group: head_dim/2.
    std::size_t bytes_per_group() const noexcept { return layout_.bytes_per_group(); }
    /// Bytes held by the cache's storage at its capacity rounded up to a multiple of 16 tokens
    /// (codes and per-group parameters).
    std::size_t memory_bytes() const noexcept {
        return layout_.slots * bytes_per_token(opt_.n_kv_heads, opt_.head_dim);
    }
    /// Bytes one token costs (all kv heads, keys and values): per group head_dim/2 code bytes,
    /// a float scale and a one-byte zero-point.
    static constexpr std::size_t bytes_per_token(std::size_t n_kv_heads,
                                                 std::size_t head_dim) noexcept {
        return 2 * n_kv_heads * (head_dim / 2 + sizeof(float) + 1);
    }

    /// Appends one token: k and v are [n_kv_heads · head_dim]. Throws qift::error when the
    /// cache is full, the sizes are wrong, or a value is not finite.
    void append(std::span<const float> k, std::span<const float> v) {
        append(matrix_view<const float>(k.data(), 1, k.size()),
               matrix_view<const float>(v.data(), 1, v.size()));
    }

    /// Appends M tokens: k and v are [M][n_kv_heads · head_dim].
    void append(matrix_view<const float> k, matrix_view<const float> v) {
        const std::size_t d = opt_.head_dim, B = layout_.bytes_per_group();
        const std::size_t width = opt_.n_kv_heads * d;
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
        // One group's values and codes on the stack (d <= max_head_dim): append allocates nothing.
        std::array<float, max_head_dim> buf_storage;
        std::array<std::uint8_t, max_head_dim> code_storage;
        const std::span<float> buf(buf_storage.data(), d);
        const std::span<std::uint8_t> codes(code_storage.data(), d);
        for (std::size_t t = 0; t < k.rows; ++t) {
            const std::size_t slot = size_ + t;
            for (std::size_t h = 0; h < opt_.n_kv_heads; ++h) {
                std::copy_n(&k(t, h * d), d, buf.begin());
                if (rotation_) rotation_->apply(buf);
                quantize_group(buf, codes, k_, h, slot);
                std::uint8_t* keys = head_codes(k_, h);
                for (std::size_t p = 0; p < B; ++p)
                    keys[layout_.key_byte_index(slot, p)] =
                        static_cast<std::uint8_t>(codes[2 * p] | codes[2 * p + 1] << 4);
                std::copy_n(&v(t, h * d), d, buf.begin());
                quantize_group(buf, codes, v_, h, slot);
                std::uint8_t* dst = head_codes(v_, h) + layout_.value_row_offset(slot);
                for (std::size_t j = 0; j < B; ++j)
                    dst[j] = static_cast<std::uint8_t>(codes[j] | codes[j + B] << 4);
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
            // Key blocks do not depend on the capacity: whole blocks move as they are.
            std::memcpy(grown.head_codes(grown.k_, h), head_codes(k_, h),
                        layout_.key_bytes_for(size_));
            std::memcpy(grown.head_codes(grown.v_, h), head_codes(v_, h),
                        layout_.value_row_offset(size_));
            for (int kv = 0; kv < 2; ++kv) {
                std::copy_n(&store_of(kv).scales[layout_.param_index(h, 0)], size_,
                            &grown.store_of(kv).scales[grown.layout_.param_index(h, 0)]);
                std::copy_n(&store_of(kv).zeros[layout_.param_index(h, 0)], size_,
                            &grown.store_of(kv).zeros[grown.layout_.param_index(h, 0)]);
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
        const std::size_t kept = size_ - count, B = layout_.bytes_per_group();
        for (std::size_t h = 0; h < opt_.n_kv_heads; ++h) {
            // Keys: whole blocks when count is a multiple of 16, else byte by byte (every byte
            // holds one token's codes of a dim pair, so no nibble moves), forward.
            std::uint8_t* keys = head_codes(k_, h);
            if (count % detail::key_block == 0)
                std::memmove(keys, keys + layout_.key_byte_index(count, 0),
                             layout_.key_bytes_for(kept));
            else
                for (std::size_t t = 0; t < kept; ++t)
                    for (std::size_t p = 0; p < B; ++p)
                        keys[layout_.key_byte_index(t, p)] =
                            keys[layout_.key_byte_index(t + count, p)];
            std::uint8_t* values = head_codes(v_, h);
            std::memmove(values, values + layout_.value_row_offset(count),
                         layout_.value_row_offset(kept));
            for (int kv = 0; kv < 2; ++kv) {
                auto& st = store_of(kv);
                const std::size_t base = layout_.param_index(h, 0);
                std::copy(&st.scales[base + count], &st.scales[base + size_], &st.scales[base]);
                std::copy(&st.zeros[base + count], &st.zeros[base + size_], &st.zeros[base]);
            }
        }
        size_ = kept;
    }

    void clear() noexcept { size_ = 0; }

    /// Decode attention over the first `length` tokens (all of them by default): for query
    /// head h (q and out are [n_heads · head_dim]) and kv head g = h / (n_heads / n_kv_heads),
    /// out_h = Σ_t softmax_t(q_h·k_t/√head_dim) · v_t with k_t, v_t the dequantized cache.
    /// Numerically stable softmax (max subtracted). Throws qift::error on bad sizes, an empty
    /// range, or n_heads not a multiple of n_kv_heads. O(length · n_heads · head_dim); kv heads
    /// in parallel (parallel_for) from parallel_work multiply-adds, on the calling thread
    /// below. SIMD (detail::attend_rows) when head_dim is one of the compiled sizes (16, 32,
    /// 64, 128, 256) and a multiple of twice the float batch width (32 on AVX-512, 16 on
    /// AVX2), the scalar detail::attend_rows_reference otherwise.
    void attend(std::span<const float> q, std::size_t n_heads, std::span<float> out,
                std::optional<std::size_t> length = std::nullopt) const {
        const std::size_t T = length.value_or(size_), d = opt_.head_dim;
        check_heads(n_heads, "attend");
        detail::require(q.size() == n_heads * d && out.size() == q.size(), [&] {
            return "kv_cache::attend: q has " + std::to_string(q.size()) + " and out " +
                   std::to_string(out.size()) +
                   " values, expected n_heads * head_dim = " + std::to_string(n_heads * d);
        });
        detail::require(T >= 1 && T <= size_, [&] {
            return "kv_cache::attend: length " + std::to_string(T) + " outside [1, " +
                   std::to_string(size_) + "]";
        });
        const std::size_t group = n_heads / opt_.n_kv_heads;
        dispatch([&](auto dim) {
            const auto body = [&](std::size_t begin, std::size_t end) {
                // Uninitialized buffers (zero-filling group·T scores on every call cost about
                // a tenth of the attention), the thread's own, reused across calls.
                group_buffers buf(group, T, d);
                for (std::size_t g = begin; g < end; ++g)
                    attend_group(dim, q.subspan(g * group * d, group * d), group, g, T,
                                 out.subspan(g * group * d, group * d), buf);
            };
            if (n_heads * T * d < parallel_work)
                body(0, opt_.n_kv_heads);
            else
                parallel_for(opt_.n_kv_heads, body);
        });
    }

    /// Causal prefill of M new tokens: appends k, v ([M][n_kv_heads·head_dim]) and computes,
    /// for each new token i, attention of q[i] ([M][n_heads·head_dim]) over every token up to
    /// and including itself, into out [M][n_heads·head_dim] — bit for bit what attend(q[i],
    /// n_heads, out[i], size() + i + 1) after the append gives. One parallel loop over the M ·
    /// n_kv_heads (token, kv head) pairs (on the calling thread below parallel_work
    /// multiply-adds in all), tokens in the order 0, M−1, 1, M−2, ... so that contiguous chunks
    /// of pairs carry similar work; the work buffers are the threads' own, reused across calls.
    void prefill(matrix_view<const float> q, matrix_view<const float> k, matrix_view<const float> v,
                 std::size_t n_heads, matrix_view<float> out) {
        const std::size_t d = opt_.head_dim, M = q.rows;
        detail::require(q.rows == k.rows && out.rows == q.rows && out.cols == q.cols, [&] {
            return "kv_cache::prefill: q has " + std::to_string(q.rows) + " rows, k " +
                   std::to_string(k.rows) + ", out " + std::to_string(out.rows) +
                   "; they must agree";
        });
        check_heads(n_heads, "prefill");
        detail::require(q.cols == n_heads * d, [&] {
            return "kv_cache::prefill: q has " + std::to_string(q.cols) +
                   " columns, expected n_heads * head_dim = " + std::to_string(n_heads * d);
        });
        const std::size_t start = size_;
        append(k, v);
        if (M == 0) return;
        const std::size_t nkv = opt_.n_kv_heads, group = n_heads / nkv;
        dispatch([&](auto dim) {
            const auto body = [&](std::size_t begin, std::size_t end) {
                group_buffers buf(group, start + M, d);
                for (std::size_t pair = begin; pair < end; ++pair) {
                    const std::size_t j = pair / nkv, g = pair % nkv;
                    const std::size_t i = j % 2 == 0 ? j / 2 : M - 1 - j / 2;
                    attend_group(dim, q.row(i).subspan(g * group * d, group * d), group, g,
                                 start + i + 1, out.row(i).subspan(g * group * d, group * d), buf);
                }
            };
            // Σ_i n_heads·(start + i + 1)·head_dim multiply-adds.
            if (n_heads * d * (M * start + M * (M + 1) / 2) < parallel_work)
                body(0, M * nkv);
            else
                parallel_for(M * nkv, body);
        });
    }

    /// Dequantized key of token t, kv head h, rotated back to the original basis.
    void read_key(std::size_t t, std::size_t h, std::span<float> out) const {
        read(keys_of(detail::extent<>{opt_.head_dim}, h), t, h, out, "read_key");
        if (rotation_) rotation_->apply_transpose(out);
    }
    /// Dequantized value of token t, kv head h.
    void read_value(std::size_t t, std::size_t h, std::span<float> out) const {
        read(values_of(detail::extent<>{opt_.head_dim}, h), t, h, out, "read_value");
    }

  private:
    // Per kv head, layout_.slots tokens (see the layout above).
    struct storage {
        aligned_vector<std::uint8_t> codes;
        std::vector<float> scales;
        std::vector<std::uint8_t> zeros;
    };

    // Buffers of one attend_group call: scores [group][T] and the rotated queries
    // [group][head_dim] (uninitialized), the dequantized rows [attention_block][head_dim]. The
    // calling thread's scratch (detail::thread_scratch), so a decode step allocates nothing once
    // each thread has attended over its longest context.
    struct group_buffers {
        float *scores, *scratch, *q;
        group_buffers(std::size_t group, std::size_t T, std::size_t d)
            : scores(detail::thread_scratch<detail::scratch_slot::attention_scores>(group * T)),
              scratch(detail::thread_scratch<detail::scratch_slot::attention_rows>(
                  detail::attention_block * d)),
              q(detail::thread_scratch<detail::scratch_slot::attention_queries>(group * d)) {}
    };

    kv_cache(const kv_cache_options& opt, std::size_t capacity, std::optional<rotation> rot)
        : opt_(opt), rotation_(std::move(rot)) {
        allocate(capacity);
    }

    // Calls f(detail::extent<D>{}) for the head sizes with compiled kernels, else
    // f(detail::extent<>{head_dim}) (run-time size): the one place the sizes are listed.
    template <class F>
    decltype(auto) dispatch(F&& f) const {
        switch (opt_.head_dim) {
            case 16:
                return f(detail::extent<16>{});
            case 32:
                return f(detail::extent<32>{});
            case 64:
                return f(detail::extent<64>{});
            case 128:
                return f(detail::extent<128>{});
            case 256:
                return f(detail::extent<256>{});
            default:
                return f(detail::extent<>{opt_.head_dim});
        }
    }

    void check_heads(std::size_t n_heads, const char* fn) const {
        detail::require(n_heads >= opt_.n_kv_heads && n_heads % opt_.n_kv_heads == 0, [&] {
            return "kv_cache::" + std::string(fn) + ": n_heads " + std::to_string(n_heads) +
                   " is not a multiple of n_kv_heads " + std::to_string(opt_.n_kv_heads);
        });
        detail::require(n_heads / opt_.n_kv_heads <= 64, [&] {
            return "kv_cache::" + std::string(fn) + ": " +
                   std::to_string(n_heads / opt_.n_kv_heads) +
                   " query heads per kv head, at most 64 supported";
        });
    }

    storage& store_of(int kv) noexcept { return kv == 0 ? k_ : v_; }
    const storage& store_of(int kv) const noexcept { return kv == 0 ? k_ : v_; }

    // Storage tokens for `capacity` (rounded up to whole key blocks), after checking that the
    // rounding and the cache's bytes (slots · bytes_per_token) fit in std::size_t: throws
    // qift::error naming the capacity before anything is allocated.
    std::size_t check_capacity(std::size_t capacity) const {
        constexpr std::size_t block = detail::key_block;
        detail::require(capacity <= std::numeric_limits<std::size_t>::max() - (block - 1), [&] {
            return "kv_cache: capacity " + std::to_string(capacity) +
                   " overflows std::size_t when rounded up to whole blocks of " +
                   std::to_string(block) + " tokens";
        });
        const std::size_t slots = detail::kv4_layout<>::slots_for(capacity);
        (void)detail::checked_size({slots, bytes_per_token(opt_.n_kv_heads, opt_.head_dim)},
                                   "kv_cache: capacity x bytes per token");
        return slots;
    }

    void allocate(std::size_t capacity) {
        const std::size_t slots = check_capacity(capacity);
        opt_.capacity = capacity;
        layout_ = {{opt_.head_dim}, slots};
        for (storage* st : {&k_, &v_}) {
            st->codes.assign(opt_.n_kv_heads * layout_.head_bytes(), 0);
            st->scales.assign(opt_.n_kv_heads * layout_.slots, 0.0f);
            st->zeros.assign(opt_.n_kv_heads * layout_.slots, 0);
        }
    }

    std::uint8_t* head_codes(storage& st, std::size_t h) noexcept {
        return st.codes.data() + layout_.head_offset(h);
    }
    const std::uint8_t* head_codes(const storage& st, std::size_t h) const noexcept {
        return st.codes.data() + layout_.head_offset(h);
    }

    template <std::size_t D>
    detail::nibble_key_blocks<D> keys_of(detail::extent<D> dim, std::size_t h) const noexcept {
        const std::size_t i = layout_.param_index(h, 0);
        return {head_codes(k_, h), &k_.scales[i], &k_.zeros[i], layout_.with_extent(dim)};
    }
    template <std::size_t D>
    detail::nibble_rows<D> values_of(detail::extent<D> dim, std::size_t h) const noexcept {
        const std::size_t i = layout_.param_index(h, 0);
        return {head_codes(v_, h), &v_.scales[i], &v_.zeros[i], layout_.with_extent(dim)};
    }

    // Quantizes one group into codes (QuaRot's rule: range widened to contain 0, times clip)
    // and stores its scale and zero for token slot t.
    void quantize_group(std::span<const float> x, std::span<std::uint8_t> codes, storage& st,
                        std::size_t h, std::size_t t) {
        float lo = x[0], hi = x[0];
        for (float e : x) {
            detail::require(std::isfinite(e), [&] {
                return "kv_cache::append: non-finite value " + std::to_string(e) + " (token " +
                       std::to_string(t) + ", kv head " + std::to_string(h) + ")";
            });
            lo = std::min(lo, e), hi = std::max(hi, e);
        }
        const channel_params p = detail::clip_params<Policy>(lo, hi, opt_.clip);
        for (std::size_t j = 0; j < x.size(); ++j)
            codes[j] = static_cast<std::uint8_t>(quantize_value<Policy>(x[j], p));
        // The unified form s·(c − z): the symmetric int4 set's level is c − 8.
        st.scales[layout_.param_index(h, t)] = p.scale;
        st.zeros[layout_.param_index(h, t)] =
            static_cast<std::uint8_t>(level_traits<Policy>::has_zero_point ? p.zero : 8.0f);
    }

    template <class Rows>
    void read(const Rows& rows, std::size_t t, std::size_t h, std::span<float> out,
              const char* fn) const {
        const std::size_t d = opt_.head_dim;
        detail::require(t < size_ && h < opt_.n_kv_heads && out.size() == d, [&] {
            return "kv_cache::" + std::string(fn) + ": token " + std::to_string(t) + " of " +
                   std::to_string(size_) + ", kv head " + std::to_string(h) + " of " +
                   std::to_string(opt_.n_kv_heads) + ", out size " + std::to_string(out.size()) +
                   " (head_dim " + std::to_string(d) + ")";
        });
        const float* r = rows.rows(t, 1, out.data());
        for (std::size_t i = 0; i < d; ++i) out[i] = rows.scale(t) * (r[i] - rows.zero(t));
    }

    // Attention of `group` query heads sharing kv head g, over tokens [0, T), with the head
    // size `dim` (a compiled constant or the run-time value).
    template <std::size_t D>
    void attend_group(detail::extent<D> dim, std::span<const float> q, std::size_t group,
                      std::size_t g, std::size_t T, std::span<float> out,
                      const group_buffers& buf) const {
        const std::size_t d = dim;
        float* qr = buf.q;
        std::copy(q.begin(), q.end(), qr);
        if (rotation_)
            for (std::size_t h = 0; h < group; ++h) rotation_->apply(std::span(qr + h * d, d));
        using arch = xsimd::default_arch;
        if constexpr (D != detail::dynamic_head_dim &&
                      D % (2 * xsimd::batch<float, arch>::size) == 0)
            detail::attend_rows<arch, D>(keys_of(dim, g), values_of(dim, g), qr, group, T,
                                         out.data(), buf.scratch, buf.scores);
        else
            detail::attend_rows_reference(keys_of(dim, g), values_of(dim, g), qr, d, group, T,
                                          out.data(), buf.scratch, buf.scores);
    }

    kv_cache_options opt_;
    std::optional<rotation> rotation_;
    std::size_t size_ = 0;
    detail::kv4_layout<> layout_{{0}, 0};
    storage k_, v_;
};

}  // namespace qift
