// SPDX-License-Identifier: MIT
// A Llama decoder (llama2.c architecture) over any qift weight format: float weights as loaded,
// the runtime model of `linear`s with a float or KV4 cache, and its forward pass on M tokens at
// once (prefill through GEMM) or one at a time (decode through GEMV), with a reused workspace.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "../core.hpp"
#include "../detail/linalg.hpp"
#include "../hadamard.hpp"
#include "../kv_cache.hpp"
#include "linear.hpp"
#include "llama2c.hpp"

namespace qift::inline QIFT_ISA {

/// The seven linears of a block, in this order everywhere in the model layer.
enum class linear_id : unsigned { wq, wk, wv, wo, w1, w2, w3 };
inline constexpr std::array<linear_id, 7> all_linears{linear_id::wq, linear_id::wk, linear_id::wv,
                                                      linear_id::wo, linear_id::w1, linear_id::w2,
                                                      linear_id::w3};
inline constexpr std::array<std::string_view, 7> linear_names{"wq", "wk", "wv", "wo",
                                                              "w1", "w2", "w3"};
inline constexpr std::string_view name_of(linear_id id) noexcept {
    return linear_names[static_cast<unsigned>(id)];
}

/// The distinct inputs of a block's linears: q, k and v read the attention norm's output;
/// o the attention output; gate (w1) and up (w3) the FFN norm's output; down (w2) the SwiGLU
/// product (after the online rotation, when there is one).
enum class input_site : unsigned { attention, attention_output, ffn, ffn_down };
inline constexpr std::size_t site_count = 4;
inline constexpr std::array<std::string_view, site_count> site_names{"attention", "attention_out",
                                                                     "ffn", "ffn_down"};
inline constexpr input_site site_of(linear_id id) noexcept {
    switch (id) {
        case linear_id::wq:
        case linear_id::wk:
        case linear_id::wv:
            return input_site::attention;
        case linear_id::wo:
            return input_site::attention_output;
        case linear_id::w1:
        case linear_id::w3:
            return input_site::ffn;
        case linear_id::w2:
            break;
    }
    return input_site::ffn_down;
}

/// Float weights of a Llama model, as loaded or after function-preserving transformations
/// (quarot.hpp). Linear weights are [out][in] (y = W·x), indexed by linear_id. An empty norm
/// gain means "folded into the following linears" (the norm then only normalizes). The online
/// rotations, when present, are applied by the forward pass: `head_rotation` to every head of q
/// and k after RoPE, `ffn_rotation` to the down_proj input.
struct llama_weights {
    struct block {
        std::vector<float> rms_att, rms_ffn;
        std::array<matrix<float>, 7> w;
        matrix<float>& operator[](linear_id id) noexcept { return w[static_cast<unsigned>(id)]; }
        const matrix<float>& operator[](linear_id id) const noexcept {
            return w[static_cast<unsigned>(id)];
        }
    };
    llama2c_config config;
    matrix<float> embedding;  ///< [vocab][dim]
    std::vector<block> layers;
    std::vector<float> rms_final;  ///< [dim] or empty (folded)
    matrix<float> classifier;      ///< [vocab][dim]
    std::optional<rotation> head_rotation, ffn_rotation;

    /// The checkpoint's weights as stored.
    static llama_weights from(const llama2c_model& m) {
        llama_weights w;
        w.config = m.config;
        w.embedding = m.token_embedding;
        for (const auto& l : m.layers)
            w.layers.push_back({l.rms_att, l.rms_ffn, {l.wq, l.wk, l.wv, l.wo, l.w1, l.w2, l.w3}});
        w.rms_final = m.rms_final;
        w.classifier = m.classifier;
        return w;
    }
};

/// Where keys and values live: a float32 cache, or qift's KV4 cache (kv_cache.hpp) with its
/// clip ratio (QuaRot: 0.95). Keys are not rotated by the cache: with QuaRot the per-head
/// rotation is already applied by the model (llama_weights::head_rotation).
struct kv_format {
    bool kv4 = false;
    float clip = 0.95f;
    static constexpr kv_format float32() noexcept { return {}; }
    static constexpr kv_format kv4_asymmetric(float clip = 0.95f) noexcept { return {true, clip}; }
};

/// An online rotation of one input site's rows, in place: rows <- rows·Q for an orthogonal Q
/// whose counterpart W·Q is already folded into the site's linears (so their products do not
/// change in real arithmetic). Applied before the linears and the site's observers see the rows.
using site_rotation = std::function<void(matrix_view<float> rows)>;

/// The runtime model: embeddings, norms, RoPE, attention and the classifier input in float; each
/// block's seven linears in any format (chosen per layer and per linear), optional online
/// rotations of its input sites; the KV format.
struct llama_model {
    struct block {
        std::vector<float> rms_att, rms_ffn;  ///< empty: gain folded into the linears
        std::array<linear, 7> w;
        /// Per input site, applied to the site's rows before its linears (empty: none).
        std::array<site_rotation, site_count> input_rotation{};
        linear& operator[](linear_id id) noexcept { return w[static_cast<unsigned>(id)]; }
        const linear& operator[](linear_id id) const noexcept {
            return w[static_cast<unsigned>(id)];
        }
    };
    llama2c_config config;
    matrix<float> embedding;
    std::vector<block> layers;
    std::vector<float> rms_final;
    linear classifier;
    std::optional<rotation> head_rotation, ffn_rotation;
    kv_format kv;
};

/// Makes linear `id` of block `layer` from its float weights W [out][in].
using linear_maker = std::function<linear(std::size_t layer, linear_id id, const matrix<float>& w)>;

namespace detail {

/// A made linear must have the shape of the weights it was made from.
inline void check_made_linear(std::size_t layer, linear_id id, const matrix<float>& w,
                              const linear& made) {
    require(made.rows() == w.rows() && made.cols() == w.cols(), [&] {
        return "build_model: the linear made for " + std::string(name_of(id)) + " of block " +
               std::to_string(layer) + " is " + std::to_string(made.rows()) + "x" +
               std::to_string(made.cols()) + ", its weights " + std::to_string(w.rows()) + "x" +
               std::to_string(w.cols());
    });
}

}  // namespace detail

/// The model with every block linear made by `make` (the classifier stays float32). Throws
/// qift::error when a made linear's shape is not its weights'.
inline llama_model build_model(const llama_weights& w, const linear_maker& make,
                               kv_format kv = {}) {
    llama_model m;
    m.config = w.config;
    m.embedding = w.embedding;
    for (std::size_t l = 0; l < w.layers.size(); ++l) {
        auto& b = m.layers.emplace_back();
        b.rms_att = w.layers[l].rms_att;
        b.rms_ffn = w.layers[l].rms_ffn;
        for (linear_id id : all_linears) {
            b[id] = make(l, id, w.layers[l][id]);
            detail::check_made_linear(l, id, w.layers[l][id], b[id]);
        }
    }
    m.rms_final = w.rms_final;
    m.classifier = linear(w.classifier);
    m.head_rotation = w.head_rotation;
    m.ffn_rotation = w.ffn_rotation;
    m.kv = kv;
    return m;
}

/// The float32 model of the weights (float linears, float cache).
inline llama_model float_model(const llama_weights& w) {
    return build_model(w, [](std::size_t, linear_id, const matrix<float>& m) { return linear(m); });
}

// ---------------------------------------------------------------------------------------
// Float KV cache

/// Keys and values of one attention layer in float32, the reference next to kv_cache (same
/// prefill/attend contract). Keys are stored transposed per kv head ([head_dim][capacity]), so
/// the scores of all tokens accumulate along the token axis; values are [capacity][head_dim].
class float_kv_cache {
  public:
    /// Throws qift::error, before allocating, when n_kv_heads·head_dim·capacity floats do not
    /// fit in std::size_t.
    float_kv_cache(std::size_t head_dim, std::size_t n_kv_heads, std::size_t capacity)
        : hd_(head_dim),
          nkv_(n_kv_heads),
          cap_(capacity),
          keys_(detail::checked_size<float>({n_kv_heads, head_dim, capacity}, "float_kv_cache")),
          values_(n_kv_heads * capacity * head_dim) {}

    std::size_t size() const noexcept { return size_; }
    void clear() noexcept { size_ = 0; }

    /// Appends M tokens (k, v [M][n_kv_heads·head_dim]) and writes, for each new token i, the
    /// attention of q[i] ([M][n_heads·head_dim]) over every token up to and including itself
    /// into out [M][n_heads·head_dim].
    void prefill(matrix_view<const float> q, matrix_view<const float> k, matrix_view<const float> v,
                 std::size_t n_heads, matrix_view<float> out) {
        detail::require(size_ + k.rows <= cap_, [&] {
            return "float_kv_cache: capacity " + std::to_string(cap_) + " exceeded (holding " +
                   std::to_string(size_) + ", appending " + std::to_string(k.rows) + ")";
        });
        for (std::size_t t = 0; t < k.rows; ++t, ++size_)
            for (std::size_t g = 0; g < nkv_; ++g)
                for (std::size_t i = 0; i < hd_; ++i) {
                    keys_[(g * hd_ + i) * cap_ + size_] = k(t, g * hd_ + i);
                    values_[(g * cap_ + size_) * hd_ + i] = v(t, g * hd_ + i);
                }
        const std::size_t start = size_ - k.rows, group = n_heads / nkv_;
        const auto body = [&](std::size_t b, std::size_t e) {
            std::vector<float> s(size_);
            for (std::size_t job = b; job < e; ++job) {
                const std::size_t i = job / n_heads, h = job % n_heads;
                attend_head(&q(i, h * hd_), h / group, start + i + 1, s.data(), &out(i, h * hd_));
            }
        };
        // One job per (token, query head); threads only when the batch is worth it.
        const std::size_t jobs = q.rows * n_heads;
        if (q.rows * size_ * n_heads * hd_ < (std::size_t{1} << 18))
            body(0, jobs);
        else
            parallel_for(jobs, body);
    }

  private:
    // out = Σ_t softmax_t(q·k_t/√d)·v_t over tokens [0, T) of kv head g.
    void attend_head(const float* q, std::size_t g, std::size_t T, float* s, float* out) const {
        // Both products stream contiguous rows through the vectorized axpy of linalg.hpp.
        std::fill_n(s, T, 0.0f);
        for (std::size_t i = 0; i < hd_; ++i)
            detail::axpy_sub(s, &keys_[(g * hd_ + i) * cap_], -q[i], T);
        const float inv = 1.0f / std::sqrt(static_cast<float>(hd_));
        float m = -INFINITY;
        for (std::size_t t = 0; t < T; ++t) m = std::max(m, s[t] *= inv);
        float z = 0.0f;
        for (std::size_t t = 0; t < T; ++t) z += (s[t] = std::exp(s[t] - m));
        std::fill_n(out, hd_, 0.0f);
        for (std::size_t t = 0; t < T; ++t)
            detail::axpy_sub(out, &values_[(g * cap_ + t) * hd_], -(s[t] / z), hd_);
    }

    std::size_t hd_, nkv_, cap_, size_ = 0;
    aligned_vector<float> keys_, values_;
};

// ---------------------------------------------------------------------------------------
// State and forward pass

/// Called with the input of each site of each block as the forward pass computes it
/// (calibration); x is [M][site width].
using site_observer =
    std::function<void(std::size_t layer, input_site site, matrix_view<const float> x)>;

/// What a forward pass keeps between calls: one KV cache per layer, the position, the RoPE
/// tables and the activation workspace (buffers grow to the largest M seen and are then
/// reused: after warm-up the activations, A4 codes and padded kernel inputs allocate nothing;
/// the attention's per-call score buffers and the float GEMM's packed panel still do).
class llama_state {
  public:
    /// State for `m` holding up to `capacity` tokens (default: the model's context). Throws
    /// qift::error, before allocating, when the caches of all layers or the RoPE tables for
    /// `capacity` tokens do not fit in std::size_t.
    explicit llama_state(const llama_model& m, std::size_t capacity = 0) : config_(m.config) {
        const auto& c = m.config;
        cap_ = capacity ? capacity : std::size_t(c.seq_len);
        const std::size_t hd = std::size_t(c.head_dim()), half = hd / 2;
        const std::size_t nkv = std::size_t(c.n_kv_heads), layers = m.layers.size();
        (void)detail::checked_size<float>({cap_, half},
                                          "llama_state: RoPE table capacity x head_dim/2");
        if (m.kv.kv4)
            (void)detail::checked_size(
                {layers, detail::checked_add(cap_, detail::key_block - 1, "llama_state: capacity"),
                 kv_cache<>::bytes_per_token(nkv, hd)},
                "llama_state: KV4 caches layers x capacity x bytes per token");
        else
            (void)detail::checked_size<float>(
                {layers, std::size_t{2}, nkv, hd, cap_},
                "llama_state: float KV caches layers x 2 x n_kv_heads x head_dim x capacity");
        for (std::size_t l = 0; l < m.layers.size(); ++l) {
            if (m.kv.kv4)
                caches_.emplace_back(std::in_place_type<kv_cache<>>,
                                     kv_cache_options{.head_dim = hd,
                                                      .n_kv_heads = std::size_t(c.n_kv_heads),
                                                      .capacity = cap_,
                                                      .clip = m.kv.clip,
                                                      .rotate_keys = false});
            else
                caches_.emplace_back(std::in_place_type<float_kv_cache>, hd,
                                     std::size_t(c.n_kv_heads), cap_);
        }
        // RoPE: angle pos·θ^(−2i/head_dim) (θ = rope_theta), computed in double, stored as float.
        cos_.resize(cap_ * half);
        sin_.resize(cap_ * half);
        for (std::size_t p = 0; p < cap_; ++p)
            for (std::size_t i = 0; i < half; ++i) {
                const double freq = std::pow(double(c.rope_theta), -double(2 * i) / double(hd));
                cos_[p * half + i] = float(std::cos(double(p) * freq));
                sin_[p * half + i] = float(std::sin(double(p) * freq));
            }
    }

    std::size_t position() const noexcept { return pos_; }
    std::size_t capacity() const noexcept { return cap_; }
    /// Empties every cache: the next token is at position 0.
    void reset() noexcept {
        pos_ = 0;
        for (auto& c : caches_) std::visit([](auto& k) { k.clear(); }, c);
    }
    /// Installs (or removes, with an empty function) the calibration observer.
    void observe(site_observer obs) { observer_ = std::move(obs); }

  private:
    friend void forward_block(const llama_model&, std::size_t, llama_state&, matrix_view<float>);
    friend matrix_view<const float> forward(const llama_model&, llama_state&, std::span<const int>);
    friend matrix_view<const float> classify(const llama_model&, llama_state&,
                                             matrix_view<const float>);

    struct buffer {
        aligned_vector<float> data;
        matrix_view<float> view(std::size_t rows, std::size_t cols) {
            if (data.size() < rows * cols) data.resize(rows * cols);
            return {data.data(), rows, cols};
        }
    };

    llama2c_config config_;
    std::size_t cap_ = 0, pos_ = 0;
    std::vector<std::variant<float_kv_cache, kv_cache<>>> caches_;
    std::vector<float> cos_, sin_;
    buffer x_, xb_, q_, k_, v_, att_, o_, h1_, h3_, logits_;
    linear_input in_;
    site_observer observer_;
};

namespace detail {

/// RMSNorm of every row (sum of squares in double), times the gain when not empty.
inline void rmsnorm_rows(matrix_view<const float> x, std::span<const float> gain,
                         matrix_view<float> out, float eps = 1e-5f) noexcept {
    for (std::size_t t = 0; t < x.rows; ++t) {
        double ss = 0.0;
        for (std::size_t i = 0; i < x.cols; ++i) ss += double(x(t, i)) * double(x(t, i));
        const float r = 1.0f / std::sqrt(static_cast<float>(ss / double(x.cols)) + eps);
        for (std::size_t i = 0; i < x.cols; ++i)
            out(t, i) = x(t, i) * r * (gain.empty() ? 1.0f : gain[i]);
    }
}

/// RoPE on the (x[2i], x[2i+1]) pairs of every head of row t at position pos0 + t.
inline void rope_rows(matrix_view<float> x, std::size_t head_dim, std::size_t pos0,
                      const std::vector<float>& cos, const std::vector<float>& sin) noexcept {
    const std::size_t half = head_dim / 2;
    for (std::size_t t = 0; t < x.rows; ++t) {
        const float* c = &cos[(pos0 + t) * half];
        const float* s = &sin[(pos0 + t) * half];
        for (std::size_t j = 0; j < x.cols; j += 2) {
            const std::size_t i = (j % head_dim) / 2;
            const float x0 = x(t, j), x1 = x(t, j + 1);
            x(t, j) = x0 * c[i] - x1 * s[i];
            x(t, j + 1) = x0 * s[i] + x1 * c[i];
        }
    }
}

}  // namespace detail

/// Block `layer` of `m` on the residual stream x [M][dim] (in place) at positions
/// s.position() .. s.position() + M − 1, appending to that layer's cache. Does not advance
/// the position (forward() does, after the last block). Calibration runs blocks one at a time
/// through this.
inline void forward_block(const llama_model& m, std::size_t layer, llama_state& s,
                          matrix_view<float> x) {
    const auto& c = m.config;
    const auto& b = m.layers[layer];
    const std::size_t M = x.rows, d = std::size_t(c.dim), hd = std::size_t(c.head_dim()),
                      kvd = std::size_t(c.kv_dim()), hidden = std::size_t(c.hidden_dim),
                      heads = std::size_t(c.n_heads);
    detail::require(x.cols == d && s.pos_ + M <= s.cap_, [&] {
        return "forward_block: " + std::to_string(M) + " tokens of width " +
               std::to_string(x.cols) + " at position " + std::to_string(s.pos_) + " (model dim " +
               std::to_string(d) + ", capacity " + std::to_string(s.cap_) + ")";
    });
    const auto observe = [&](input_site site, matrix_view<float> v) {
        if (const auto& rotate = b.input_rotation[static_cast<unsigned>(site)]) rotate(v);
        if (s.observer_) s.observer_(layer, site, v);
        s.in_.reset(v);
    };
    auto xb = s.xb_.view(M, d), q = s.q_.view(M, d), k = s.k_.view(M, kvd), v = s.v_.view(M, kvd),
         att = s.att_.view(M, d), o = s.o_.view(M, d), h1 = s.h1_.view(M, hidden),
         h3 = s.h3_.view(M, hidden);
    detail::rmsnorm_rows(x, b.rms_att, xb, c.norm_eps);
    observe(input_site::attention, xb);
    b[linear_id::wq].forward(s.in_, q);
    b[linear_id::wk].forward(s.in_, k);
    b[linear_id::wv].forward(s.in_, v);
    detail::rope_rows(q, hd, s.pos_, s.cos_, s.sin_);
    detail::rope_rows(k, hd, s.pos_, s.cos_, s.sin_);
    if (m.head_rotation)
        for (std::size_t t = 0; t < M; ++t) {
            for (std::size_t i = 0; i < d; i += hd) m.head_rotation->apply(q.row(t).subspan(i, hd));
            for (std::size_t i = 0; i < kvd; i += hd)
                m.head_rotation->apply(k.row(t).subspan(i, hd));
        }
    std::visit([&](auto& cache) { cache.prefill(q, k, v, heads, att); }, s.caches_[layer]);
    observe(input_site::attention_output, att);
    b[linear_id::wo].forward(s.in_, o);
    for (std::size_t t = 0; t < M; ++t)
        for (std::size_t i = 0; i < d; ++i) x(t, i) += o(t, i);
    detail::rmsnorm_rows(x, b.rms_ffn, xb, c.norm_eps);
    observe(input_site::ffn, xb);
    b[linear_id::w1].forward(s.in_, h1);
    b[linear_id::w3].forward(s.in_, h3);
    for (std::size_t t = 0; t < M; ++t) {
        for (std::size_t i = 0; i < hidden; ++i) {
            const float g = h1(t, i);
            h1(t, i) = g / (1.0f + std::exp(-g)) * h3(t, i);
        }
        if (m.ffn_rotation) m.ffn_rotation->apply(h1.row(t));
    }
    observe(input_site::ffn_down, h1);
    b[linear_id::w2].forward(s.in_, o);
    for (std::size_t t = 0; t < M; ++t)
        for (std::size_t i = 0; i < d; ++i) x(t, i) += o(t, i);
}

/// The final norm and the classifier on x [M][dim]: logits [M][vocab], a view into the state's
/// workspace valid until its next call.
inline matrix_view<const float> classify(const llama_model& m, llama_state& s,
                                         matrix_view<const float> x) {
    const std::size_t M = x.rows, d = std::size_t(m.config.dim);
    auto xb = s.xb_.view(M, d);
    detail::rmsnorm_rows(x, m.rms_final, xb, m.config.norm_eps);
    s.in_.reset(xb);
    auto logits = s.logits_.view(M, std::size_t(m.config.vocab_size));
    m.classifier.forward(s.in_, logits);
    return logits;
}

/// Embedding rows of `tokens` into x [M][dim]. Throws qift::error naming an id out of range.
inline void embed(const llama_model& m, std::span<const int> tokens, matrix_view<float> x) {
    for (std::size_t t = 0; t < tokens.size(); ++t) {
        const int id = tokens[t];
        detail::require(id >= 0 && id < m.config.vocab_size, [&] {
            return "embed: token id " + std::to_string(id) + " at index " + std::to_string(t) +
                   " is outside [0, " + std::to_string(m.config.vocab_size) + ")";
        });
        std::copy_n(&m.embedding(std::size_t(id), 0), x.cols, &x(t, 0));
    }
}

/// Runs `tokens` (M ≥ 1) at the state's next positions and returns their next-token logits
/// [M][vocab] (a view into the state's workspace, valid until the next call). M > 1 is a
/// prefill (every linear a GEMM, attention causal within the batch); M = 1 a decode step
/// (GEMV). Both give the logits of feeding the tokens one at a time. Throws qift::error when
/// the tokens do not fit the capacity or an id is out of range.
inline matrix_view<const float> forward(const llama_model& m, llama_state& s,
                                        std::span<const int> tokens) {
    const std::size_t M = tokens.size(), d = std::size_t(m.config.dim);
    detail::require(M >= 1 && s.pos_ + M <= s.cap_, [&] {
        return "forward: " + std::to_string(M) + " tokens at position " + std::to_string(s.pos_) +
               " do not fit the state's capacity " + std::to_string(s.cap_);
    });
    auto x = s.x_.view(M, d);
    embed(m, tokens, x);
    for (std::size_t l = 0; l < m.layers.size(); ++l) forward_block(m, l, s, x);
    s.pos_ += M;
    return classify(m, s, x);
}

}  // namespace qift
