// SPDX-License-Identifier: MIT
// Building a rotated W2A4KV4 Llama the QuaRot way from qift parts: norm gains folded, residual
// stream rotated by a randomized Hadamard, online rotations, packed weights, A4, KV4 cache.
#pragma once

#include <qift/qift.hpp>

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "llama.hpp"

namespace llama {

/// The seven linear layers of a block, in this order everywhere below.
enum linear_index { wq, wk, wv, wo, w1, w2, w3 };
inline constexpr std::array<const char*, 7> linear_names{"wq", "wk", "wv", "wo", "w1", "w2", "w3"};

/// Float weights of a model with RMSNorm gains folded and every rotation applied offline:
/// y = W·x for each linear, all [out][in].
struct rotated_weights {
    qift::llama2c_config config;
    matrix<float> embedding;                           ///< E·Q
    std::vector<std::array<matrix<float>, 7>> layers;  ///< per layer, in linear_index order
    matrix<float> classifier;                          ///< W_cls·diag(g_final)·Q
    /// The online rotations the forward pass applies (per head on q and k after RoPE, and on
    /// the down_proj input).
    std::shared_ptr<const qift::rotation> head, down;
    std::string residual_kind, down_kind;
};

namespace detail {

inline void scale_columns(matrix<float>& w, const std::vector<float>& g) {
    for (std::size_t r = 0; r < w.rows(); ++r)
        for (std::size_t c = 0; c < w.cols(); ++c) w(r, c) *= g[c];
}

// Applies `rot` (head_dim) to each head-sized block of W's rows (output side) or columns
// (input side).
inline void fold_per_head_output(const qift::rotation& rot, matrix<float>& w) {
    const std::size_t hd = rot.size();
    for (std::size_t h = 0; h < w.rows() / hd; ++h)
        rot.fold_into_output(qift::matrix_view<float>(&w(h * hd, 0), hd, w.cols(), w.cols()));
}
inline void fold_per_head_input(const qift::rotation& rot, matrix<float>& w) {
    const std::size_t hd = rot.size();
    for (std::size_t h = 0; h < w.cols() / hd; ++h)
        rot.fold_into_input(qift::matrix_view<float>(&w(0, h * hd), w.rows(), hd, w.cols()));
}

}  // namespace detail

/// QuaRot's transformation of a float model, exact in real arithmetic:
/// - RMSNorm gains folded into the following linears (q, k, v; gate, up; classifier);
/// - the residual stream rotated by Q = randomized Hadamard of order dim (W·Q on embeddings,
///   q/k/v, gate/up and classifier inputs; Qᵀ·W on the o and down outputs);
/// - per head a Hadamard H on v's outputs and o's inputs (offline), and on q and k after RoPE
///   (online: it cancels in q·kᵀ);
/// - an online rotation R on the down_proj input (R folded into down's columns): a randomized
///   Hadamard of order hidden_dim, or qift's seeded random-orthogonal fallback where none
///   exists (stories260K's 172).
inline rotated_weights rotate(const qift::llama2c_model& m, std::uint64_t seed) {
    const auto& c = m.config;
    rotated_weights r;
    r.config = c;
    const auto q = qift::rotation::for_size(std::size_t(c.dim), seed);
    r.head = std::make_shared<const qift::rotation>(
        qift::rotation::for_size(std::size_t(c.head_dim()), seed + 1));
    r.down = std::make_shared<const qift::rotation>(
        qift::rotation::for_size(std::size_t(c.hidden_dim), seed + 2));
    const auto kind = [](const qift::rotation& x) {
        return std::string(x.type() == qift::rotation::kind::hadamard ? "hadamard"
                                                                      : "random orthogonal") +
               " " + std::to_string(x.size());
    };
    r.residual_kind = kind(q);
    r.down_kind = kind(*r.down);
    r.embedding = m.token_embedding;
    q.rotate_rows(r.embedding);
    for (const auto& l : m.layers) {
        std::array<matrix<float>, 7> w{l.wq, l.wk, l.wv, l.wo, l.w1, l.w2, l.w3};
        for (int i : {wq, wk, wv}) detail::scale_columns(w[std::size_t(i)], l.rms_att);
        for (int i : {w1, w3}) detail::scale_columns(w[std::size_t(i)], l.rms_ffn);
        for (int i : {wq, wk, wv, w1, w3}) q.fold_into_input(w[std::size_t(i)]);
        detail::fold_per_head_output(*r.head, w[wv]);
        detail::fold_per_head_input(*r.head, w[wo]);
        q.fold_into_output(w[wo]);
        r.down->fold_into_input(w[w2]);
        q.fold_into_output(w[w2]);
        r.layers.push_back(std::move(w));
    }
    r.classifier = m.classifier;
    detail::scale_columns(r.classifier, m.rms_final);
    q.fold_into_input(r.classifier);
    return r;
}

/// Makes the runtime linear for one weight matrix; `hessian` is null for round-to-nearest.
using linear_factory = std::function<std::unique_ptr<linear_op>(const matrix<float>& w,
                                                                const matrix<double>* hessian)>;

/// Assembles a model from rotated weights: `make(layer, linear)` builds each linear (float by
/// default), the KV store comes from `kv`. Embeddings, norms (gain-free) and the classifier stay
/// float.
inline model assemble(const rotated_weights& r,
                      const std::function<std::unique_ptr<linear_op>(std::size_t, int)>& make,
                      kv_factory kv = {}) {
    model m;
    m.config = r.config;
    m.embedding = r.embedding;
    for (std::size_t l = 0; l < r.layers.size(); ++l) {
        layer L;
        L.wq = make(l, wq), L.wk = make(l, wk), L.wv = make(l, wv), L.wo = make(l, wo);
        L.w1 = make(l, w1), L.w2 = make(l, w2), L.w3 = make(l, w3);
        m.layers.push_back(std::move(L));
    }
    m.classifier = std::make_unique<float_linear>(r.classifier);
    auto head = r.head, down = r.down;
    m.qk_head_rotation = [head](std::span<float> x) { head->apply(x); };
    m.down_input_rotation = [down](std::span<float> x) { down->apply(x); };
    if (kv) m.make_kv = std::move(kv);
    return m;
}

/// The rotated model in float32 (no quantization): equal to the original up to rounding.
inline model rotated_float_model(const rotated_weights& r) {
    return assemble(r, [&](std::size_t l, int i) -> std::unique_ptr<linear_op> {
        return std::make_unique<float_linear>(r.layers[l][std::size_t(i)]);
    });
}

// ---------------------------------------------------------------------------------------
// Quantized linears

/// A packed weight with A4 activations (per token INT4, symmetric −7..7, `clip`). Integer
/// sets (W2A4, W4A4) run the integer GEMV; sets without an integer form (NF2, Lloyd) feed the
/// same A4 activations, dequantized, to the W2A16 kernel: numerically W2 × A4, float arithmetic.
template <qift::packed_level_set L>
class packed_a4_linear final : public linear_op {
  public:
    packed_a4_linear(const qift::quantized_matrix<L>& q, float clip) : w_(q), clip_(clip) {}
    std::size_t in() const noexcept override { return w_.cols(); }
    std::size_t out() const noexcept override { return w_.rows(); }
    void apply(std::span<const float> x, std::span<float> y) const override {
        const auto a = qift::quantize_activations(x, clip_);
        if constexpr (qift::integer_dot_level_set<L>)
            qift::gemv(w_, a, y);
        else
            qift::gemv(w_, qift::dequantize(a).row(0), y);
    }

  private:
    qift::packed_matrix<L> w_;
    float clip_;
};

/// Fake-quant reference of packed_a4_linear: dequantized weights, A4 quantize-dequantize, float
/// matrix-vector product (the oracle the packed model is tested against).
class fake_quant_linear final : public linear_op {
  public:
    fake_quant_linear(matrix<float> w, float clip) : w_(std::move(w)), clip_(clip) {}
    std::size_t in() const noexcept override { return w_.weights().cols(); }
    std::size_t out() const noexcept override { return w_.weights().rows(); }
    void apply(std::span<const float> x, std::span<float> y) const override {
        const auto a = qift::dequantize(qift::quantize_activations(x, clip_));
        w_.apply(a.row(0), y);
    }

  private:
    float_linear w_;
    float clip_;
};

/// How a weight is quantized: round-to-nearest with the searched scale, or GPTQ.
enum class method { rtn, gptq };

/// Quantizes w onto L (per-channel searched scale; GPTQ when a Hessian is given).
template <qift::level_set L>
qift::quantized_matrix<L> quantize_weight(const matrix<float>& w, const matrix<double>* hessian) {
    if (hessian == nullptr) return qift::quantize<L>(w);
    return qift::gptq<L>(w, *hessian).quantized;
}

/// A linear_factory for level set L with A4 activations (clip) through the packed kernels.
template <qift::packed_level_set L>
linear_factory packed_factory(float clip) {
    return [clip](const matrix<float>& w, const matrix<double>* h) -> std::unique_ptr<linear_op> {
        return std::make_unique<packed_a4_linear<L>>(quantize_weight<L>(w, h), clip);
    };
}

/// The matching fake-quant factory (dequantized weights, A4 quantize-dequantize).
template <qift::level_set L>
linear_factory fake_quant_factory(float clip) {
    return [clip](const matrix<float>& w, const matrix<double>* h) -> std::unique_ptr<linear_op> {
        return std::make_unique<fake_quant_linear>(quantize_weight<L>(w, h).dequantize(), clip);
    };
}

// ---------------------------------------------------------------------------------------
// KV4

/// A layer's keys and values in qift's KV4 cache; attention on the packed data.
template <std::size_t HeadDim>
class kv4_store final : public kv_store {
  public:
    kv4_store(int n_heads, int n_kv_heads, std::size_t capacity)
        : n_heads_(std::size_t(n_heads)),
          cache_(
              {.n_kv_heads = std::size_t(n_kv_heads), .capacity = capacity, .rotate_keys = false}) {
    }
    void append(std::span<const float> k, std::span<const float> v) override {
        cache_.append(k, v);
    }
    void attend(std::span<const float> q, std::span<float> out) const override {
        cache_.attend(q, n_heads_, out);
    }
    const qift::kv_cache<HeadDim>& cache() const noexcept { return cache_; }

  private:
    std::size_t n_heads_;
    qift::kv_cache<HeadDim> cache_;
};

/// Float attention over the KV4 cache's dequantized read-back (the test oracle).
template <std::size_t HeadDim>
class kv4_readback_store final : public kv_store {
  public:
    kv4_readback_store(int n_heads, int n_kv_heads, std::size_t capacity)
        : store_(n_heads, n_kv_heads, capacity), ref_(n_heads, n_kv_heads, int(HeadDim)) {}
    void append(std::span<const float> k, std::span<const float> v) override {
        store_.append(k, v);
        const auto& c = store_.cache();
        std::vector<float> kd(k.size()), vd(v.size());
        for (std::size_t h = 0; h < c.n_kv_heads(); ++h) {
            c.read_key(c.size() - 1, h, std::span(kd).subspan(h * HeadDim, HeadDim));
            c.read_value(c.size() - 1, h, std::span(vd).subspan(h * HeadDim, HeadDim));
        }
        ref_.append(kd, vd);
    }
    void attend(std::span<const float> q, std::span<float> out) const override {
        ref_.attend(q, out);
    }

  private:
    kv4_store<HeadDim> store_;
    float_kv_store ref_;
};

/// KV4 factory for the model's head_dim (8 to 128), holding `capacity` tokens per layer.
template <template <std::size_t> class Store = kv4_store>
kv_factory kv4_factory(int head_dim, std::size_t capacity) {
    const auto make = [capacity](auto hd) -> kv_factory {
        return [capacity](int h, int kv, int) -> std::unique_ptr<kv_store> {
            return std::make_unique<Store<decltype(hd)::value>>(h, kv, capacity);
        };
    };
    switch (head_dim) {
        case 8:
            return make(std::integral_constant<std::size_t, 8>{});
        case 16:
            return make(std::integral_constant<std::size_t, 16>{});
        case 32:
            return make(std::integral_constant<std::size_t, 32>{});
        case 64:
            return make(std::integral_constant<std::size_t, 64>{});
        case 128:
            return make(std::integral_constant<std::size_t, 128>{});
    }
    qift::detail::fail("kv4_factory: head_dim " + std::to_string(head_dim) +
                       " is not one of 8, 16, 32, 64, 128");
}

// ---------------------------------------------------------------------------------------
// Calibration

/// Records each input vector a linear sees, then forwards to it.
class recording_linear final : public linear_op {
  public:
    recording_linear(const linear_op& inner, std::vector<float>& sink)
        : inner_(inner), sink_(sink) {}
    std::size_t in() const noexcept override { return inner_.in(); }
    std::size_t out() const noexcept override { return inner_.out(); }
    void apply(std::span<const float> x, std::span<float> y) const override {
        sink_.insert(sink_.end(), x.begin(), x.end());
        inner_.apply(x, y);
    }

  private:
    const linear_op& inner_;
    std::vector<float>& sink_;
};

/// GPTQ Hessians H = (2/N)·Σ x xᵀ of every linear's inputs, from the rotated float model run on
/// the calibration sequences (inputs taken from the float model, not the partly quantized one).
inline std::vector<std::array<matrix<double>, 7>> calibrate(
    const rotated_weights& r, const std::vector<std::vector<int>>& seqs) {
    const model f = rotated_float_model(r);
    std::vector<std::array<std::vector<float>, 7>> inputs(r.layers.size());
    model rec = assemble(r, [&](std::size_t l, int i) -> std::unique_ptr<linear_op> {
        const layer& L = f.layers[l];
        const linear_op* all[7] = {L.wq.get(), L.wk.get(), L.wv.get(), L.wo.get(),
                                   L.w1.get(), L.w2.get(), L.w3.get()};
        return std::make_unique<recording_linear>(*all[i], inputs[l][std::size_t(i)]);
    });
    for (const auto& s : seqs) {
        session sess(rec);
        for (std::size_t t = 0; t + 1 < s.size(); ++t) sess.step(s[t]);
    }
    std::vector<std::array<matrix<double>, 7>> out(r.layers.size());
    for (std::size_t l = 0; l < r.layers.size(); ++l)
        for (std::size_t i = 0; i < 7; ++i) {
            const std::size_t n = r.layers[l][i].cols();
            qift::hessian_accumulator acc(n);
            const auto& x = inputs[l][i];
            acc.add(qift::matrix_view<const float>(x.data(), x.size() / n, n));
            out[l][i] = acc.hessian();
        }
    return out;
}

/// A quantized model: layer l's linears built by factories[l] (RTN, or GPTQ with `hessians`),
/// KV4 through `kv` (float cache when empty).
inline model quantized_model(const rotated_weights& r, const std::vector<linear_factory>& factories,
                             const std::vector<std::array<matrix<double>, 7>>* hessians,
                             kv_factory kv) {
    return assemble(
        r,
        [&](std::size_t l, int i) {
            return factories[l](r.layers[l][std::size_t(i)],
                                hessians ? &(*hessians)[l][std::size_t(i)] : nullptr);
        },
        std::move(kv));
}

}  // namespace llama
