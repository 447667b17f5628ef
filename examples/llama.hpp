// SPDX-License-Identifier: MIT
// A small Llama (llama2.c architecture) decoder for the examples: float32 reference forward
// pass with pluggable linear layers, KV stores and online rotations, plus sampling and metrics.
#pragma once

#include <qift/core.hpp>
#include <qift/model/llama2c.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <vector>

namespace llama {

using qift::matrix;

/// y = W·x for one token. Implementations: float weights here; packed W2A4 ones in the tool.
struct linear_op {
    virtual ~linear_op() = default;
    virtual std::size_t in() const noexcept = 0;
    virtual std::size_t out() const noexcept = 0;
    virtual void apply(std::span<const float> x, std::span<float> y) const = 0;
};

/// Float32 weights [out][in].
class float_linear final : public linear_op {
  public:
    explicit float_linear(matrix<float> w) : w_(std::move(w)) {}
    std::size_t in() const noexcept override { return w_.cols(); }
    std::size_t out() const noexcept override { return w_.rows(); }
    void apply(std::span<const float> x, std::span<float> y) const override {
        for (std::size_t r = 0; r < w_.rows(); ++r) {
            const float* row = &w_(r, 0);
            float s = 0.0f;
            for (std::size_t c = 0; c < w_.cols(); ++c) s += row[c] * x[c];
            y[r] = s;
        }
    }
    const matrix<float>& weights() const noexcept { return w_; }

  private:
    matrix<float> w_;
};

/// The keys and values of one layer for all kv heads, and attention over them.
struct kv_store {
    virtual ~kv_store() = default;
    /// Appends the next token's keys and values, each [n_kv_heads · head_dim].
    virtual void append(std::span<const float> k, std::span<const float> v) = 0;
    /// out[h] = softmax(q[h]·K[g]ᵀ / √d) · V[g] for every query head h, g = h / group.
    virtual void attend(std::span<const float> q, std::span<float> out) const = 0;
};

/// Float32 cache: the reference.
class float_kv_store final : public kv_store {
  public:
    float_kv_store(int n_heads, int n_kv_heads, int head_dim)
        : nh_(n_heads), nkv_(n_kv_heads), hd_(head_dim) {}
    void append(std::span<const float> k, std::span<const float> v) override {
        keys_.insert(keys_.end(), k.begin(), k.end());
        values_.insert(values_.end(), v.begin(), v.end());
    }
    void attend(std::span<const float> q, std::span<float> out) const override {
        const std::size_t kvd = std::size_t(nkv_ * hd_), T = keys_.size() / kvd;
        std::vector<float> p(T);
        const float inv = 1.0f / std::sqrt(static_cast<float>(hd_));
        for (int h = 0; h < nh_; ++h) {
            const int g = h / (nh_ / nkv_);
            const float* qh = q.data() + h * hd_;
            float m = -INFINITY;
            for (std::size_t t = 0; t < T; ++t) {
                const float* k = keys_.data() + t * kvd + std::size_t(g * hd_);
                float s = 0.0f;
                for (int i = 0; i < hd_; ++i) s += qh[i] * k[i];
                p[t] = s * inv;
                m = std::max(m, p[t]);
            }
            float z = 0.0f;
            for (auto& x : p) z += (x = std::exp(x - m));
            float* o = out.data() + h * hd_;
            std::fill(o, o + hd_, 0.0f);
            for (std::size_t t = 0; t < T; ++t) {
                const float* v = values_.data() + t * kvd + std::size_t(g * hd_);
                for (int i = 0; i < hd_; ++i) o[i] += p[t] / z * v[i];
            }
        }
    }

  private:
    int nh_, nkv_, hd_;
    std::vector<float> keys_, values_;
};

using kv_factory =
    std::function<std::unique_ptr<kv_store>(int n_heads, int n_kv_heads, int head_dim)>;
using span_transform = std::function<void(std::span<float>)>;

/// One decoder layer with pluggable parts. Empty norm gains mean "folded into the linears".
struct layer {
    std::vector<float> rms_att, rms_ffn;
    std::unique_ptr<linear_op> wq, wk, wv, wo, w1, w2, w3;
};

/// The model: everything the forward pass needs, float or quantized.
struct model {
    qift::llama2c_config config;
    matrix<float> embedding;  ///< [vocab][dim] (rotated when the residual stream is)
    std::vector<layer> layers;
    std::vector<float> rms_final;  ///< empty when folded into the classifier
    std::unique_ptr<linear_op> classifier;
    /// Applied to each head of q and k after RoPE (QuaRot's online Hadamard); may be empty.
    span_transform qk_head_rotation;
    /// Applied to the down_proj input (the SwiGLU output); may be empty.
    span_transform down_input_rotation;
    kv_factory make_kv = [](int h, int kv, int d) {
        return std::make_unique<float_kv_store>(h, kv, d);
    };
};

/// The float32 model exactly as stored (llama2.c's forward pass).
inline model float_model(const qift::llama2c_model& m) {
    model out;
    out.config = m.config;
    out.embedding = m.token_embedding;
    for (const auto& l : m.layers) {
        layer L;
        L.rms_att = l.rms_att;
        L.rms_ffn = l.rms_ffn;
        L.wq = std::make_unique<float_linear>(l.wq);
        L.wk = std::make_unique<float_linear>(l.wk);
        L.wv = std::make_unique<float_linear>(l.wv);
        L.wo = std::make_unique<float_linear>(l.wo);
        L.w1 = std::make_unique<float_linear>(l.w1);
        L.w2 = std::make_unique<float_linear>(l.w2);
        L.w3 = std::make_unique<float_linear>(l.w3);
        out.layers.push_back(std::move(L));
    }
    out.rms_final = m.rms_final;
    out.classifier = std::make_unique<float_linear>(m.classifier);
    return out;
}

/// RMSNorm (eps 1e-5) with an optional gain (empty: gain folded elsewhere).
inline void rmsnorm(std::span<const float> x, std::span<const float> gain, std::span<float> out) {
    double ss = 0.0;
    for (float v : x) ss += double(v) * v;
    const float r = 1.0f / std::sqrt(static_cast<float>(ss / double(x.size())) + 1e-5f);
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = x[i] * r * (gain.empty() ? 1.0f : gain[i]);
}

/// RoPE on the (x[2i], x[2i+1]) pairs inside each head, angle pos · 10000^(-2i/head_dim).
inline void rope(std::span<float> x, int head_dim, int pos) {
    for (std::size_t j = 0; j + 1 < x.size(); j += 2) {
        const int i = static_cast<int>(j % std::size_t(head_dim));
        const float freq = 1.0f / std::pow(10000.0f, static_cast<float>(i) / float(head_dim));
        const float a = static_cast<float>(pos) * freq, c = std::cos(a), s = std::sin(a);
        const float x0 = x[j], x1 = x[j + 1];
        x[j] = x0 * c - x1 * s;
        x[j + 1] = x0 * s + x1 * c;
    }
}

/// Decoding state: one KV store per layer and scratch buffers.
class session {
  public:
    explicit session(const model& m) : m_(m) {
        const auto& c = m.config;
        for (std::size_t l = 0; l < m.layers.size(); ++l)
            kv_.push_back(m.make_kv(c.n_heads, c.n_kv_heads, c.head_dim()));
        const auto d = std::size_t(c.dim), h = std::size_t(c.hidden_dim),
                   kv = std::size_t(c.kv_dim());
        x_.resize(d), xb_.resize(d), q_.resize(d), att_.resize(d), o_.resize(d);
        k_.resize(kv), v_.resize(kv), h1_.resize(h), h3_.resize(h);
        logits_.resize(std::size_t(c.vocab_size));
    }

    /// Feeds `token` at the next position and returns the next-token logits.
    std::span<const float> step(int token) {
        const auto& c = m_.config;
        const auto hd = std::size_t(c.head_dim());
        std::copy_n(&m_.embedding(std::size_t(token), 0), x_.size(), x_.begin());
        for (std::size_t l = 0; l < m_.layers.size(); ++l) {
            const layer& L = m_.layers[l];
            rmsnorm(x_, L.rms_att, xb_);
            L.wq->apply(xb_, q_);
            L.wk->apply(xb_, k_);
            L.wv->apply(xb_, v_);
            rope(q_, c.head_dim(), pos_);
            rope(k_, c.head_dim(), pos_);
            if (m_.qk_head_rotation) {
                for (std::size_t i = 0; i < q_.size(); i += hd)
                    m_.qk_head_rotation(std::span(q_).subspan(i, hd));
                for (std::size_t i = 0; i < k_.size(); i += hd)
                    m_.qk_head_rotation(std::span(k_).subspan(i, hd));
            }
            kv_[l]->append(k_, v_);
            kv_[l]->attend(q_, att_);
            L.wo->apply(att_, o_);
            for (std::size_t i = 0; i < x_.size(); ++i) x_[i] += o_[i];
            rmsnorm(x_, L.rms_ffn, xb_);
            L.w1->apply(xb_, h1_);
            L.w3->apply(xb_, h3_);
            for (std::size_t i = 0; i < h1_.size(); ++i)
                h1_[i] = h1_[i] / (1.0f + std::exp(-h1_[i])) * h3_[i];
            if (m_.down_input_rotation) m_.down_input_rotation(h1_);
            L.w2->apply(h1_, o_);
            for (std::size_t i = 0; i < x_.size(); ++i) x_[i] += o_[i];
        }
        rmsnorm(x_, m_.rms_final, xb_);
        m_.classifier->apply(xb_, logits_);
        ++pos_;
        return logits_;
    }
    int position() const noexcept { return pos_; }

  private:
    const model& m_;
    std::vector<std::unique_ptr<kv_store>> kv_;
    std::vector<float> x_, xb_, q_, k_, v_, att_, o_, h1_, h3_, logits_;
    int pos_ = 0;
};

/// Log-softmax of logits (double accuracy).
inline std::vector<double> log_softmax(std::span<const float> logits) {
    const double m = *std::max_element(logits.begin(), logits.end());
    double z = 0.0;
    for (float x : logits) z += std::exp(double(x) - m);
    const double lz = m + std::log(z);
    std::vector<double> out(logits.size());
    for (std::size_t i = 0; i < logits.size(); ++i) out[i] = double(logits[i]) - lz;
    return out;
}

/// `count` sequences of `length` tokens sampled from `m` at temperature 1, each starting
/// with BOS (id 1), seeded.
inline std::vector<std::vector<int>> sample_sequences(const model& m, int count, int length,
                                                      std::uint64_t seed) {
    std::mt19937_64 gen(seed);
    std::vector<std::vector<int>> out;
    for (int s = 0; s < count; ++s) {
        session sess(m);
        std::vector<int> seq{1};
        while (int(seq.size()) < length) {
            const auto lp = log_softmax(sess.step(seq.back()));
            std::vector<double> p(lp.size());
            for (std::size_t i = 0; i < lp.size(); ++i) p[i] = std::exp(lp[i]);
            std::discrete_distribution<int> d(p.begin(), p.end());
            seq.push_back(d(gen));
        }
        out.push_back(std::move(seq));
    }
    return out;
}

/// Next-token log-probabilities of `m` at every predicted position of every sequence.
using logprob_table = std::vector<std::vector<std::vector<double>>>;

inline logprob_table logprobs(const model& m, const std::vector<std::vector<int>>& seqs) {
    logprob_table out;
    for (const auto& seq : seqs) {
        session s(m);
        auto& rows = out.emplace_back();
        for (std::size_t t = 0; t + 1 < seq.size(); ++t)
            rows.push_back(log_softmax(s.step(seq[t])));
    }
    return out;
}

/// Perplexity of `m` on the sequences, mean KL(reference ‖ m) of the next-token distributions,
/// and top-1 agreement with the reference, over every predicted position.
struct eval_result {
    double perplexity = 0, kl = 0, top1_agreement = 0;
    std::size_t tokens = 0;
};

inline eval_result evaluate(const model& m, const logprob_table& reference,
                            const std::vector<std::vector<int>>& seqs) {
    const auto la_all = logprobs(m, seqs);
    eval_result r;
    double nll = 0, kl = 0, agree = 0;
    for (std::size_t s = 0; s < seqs.size(); ++s)
        for (std::size_t t = 0; t + 1 < seqs[s].size(); ++t) {
            const auto& la = la_all[s][t];
            const auto& lb = reference[s][t];
            nll -= la[std::size_t(seqs[s][t + 1])];
            double k = 0;
            for (std::size_t i = 0; i < la.size(); ++i) k += std::exp(lb[i]) * (lb[i] - la[i]);
            kl += k;
            agree += std::max_element(la.begin(), la.end()) - la.begin() ==
                     std::max_element(lb.begin(), lb.end()) - lb.begin();
            ++r.tokens;
        }
    const double n = double(r.tokens);
    r.perplexity = std::exp(nll / n);
    r.kl = kl / n;
    r.top1_agreement = agree / n;
    return r;
}

}  // namespace llama
