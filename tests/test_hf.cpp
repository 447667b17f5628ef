// SPDX-License-Identifier: MIT
// The Hugging Face Llama loader: the rotary row permutation, a tiny random model in HF layout
// against transformers' forward pass written out here (rotate_half RoPE on the HF weights as
// stored), config.json and tensor errors, sharded folders, and prose6M exported by
// tests/export_hf.py in float16 and bfloat16 against the llama2.c checkpoint.
#include <qift/model/eval.hpp>
#include <qift/model/hf.hpp>

#include <doctest/doctest.h>

#include <unistd.h>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "test_support.hpp"

using namespace qift;

namespace {

const std::string hf_models = std::string(QIFT_SHARED_DIR) + "/models/";

std::filesystem::path temp_dir(const std::string& name) {
    const auto p = std::filesystem::temp_directory_path() /
                   ("qift_test_hf_" + std::to_string(::getpid()) + "_" + name);
    std::filesystem::remove_all(p);
    std::filesystem::create_directories(p);
    return p;
}

void write_text(const std::filesystem::path& p, const std::string& s) {
    std::ofstream(p, std::ios::binary) << s;
}

// A tiny Llama in HF layout: dim 32, 4 heads of 8 (2 kv heads), hidden 24, 2 layers, vocab 40,
// untied classifier; rope_theta 100 and rms_norm_eps 0.05 so both visibly matter.
struct tiny_hf {
    int dim = 32, hidden = 24, layers = 2, heads = 4, kv_heads = 2, vocab = 40, context = 16;
    double theta = 100.0, eps = 0.05;
    std::map<std::string, matrix<float>> tensors;  // name → [rows][cols] (vectors 1×n)

    std::string config(const std::string& extra = "") const {
        return "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", " + extra +
               "\"hidden_size\": " + std::to_string(dim) +
               ", \"intermediate_size\": " + std::to_string(hidden) +
               ", \"num_hidden_layers\": " + std::to_string(layers) +
               ", \"num_attention_heads\": " + std::to_string(heads) +
               ", \"num_key_value_heads\": " + std::to_string(kv_heads) +
               ", \"vocab_size\": " + std::to_string(vocab) +
               ", \"max_position_embeddings\": " + std::to_string(context) +
               ", \"rope_theta\": 100.0, \"rms_norm_eps\": 0.05, \"tie_word_embeddings\": false, "
               "\"hidden_act\": \"silu\", \"attention_bias\": false, \"rope_scaling\": null, "
               "\"torch_dtype\": \"float32\"}";
    }

    tiny_hf() {
        std::uint32_t seed = 1;
        const auto rand = [&](int r, int c, float sigma) {
            return test::gaussian_matrix(std::size_t(r), std::size_t(c), seed++, sigma);
        };
        const auto gain = [&](int n) {
            matrix<float> g = rand(1, n, 0.2f);
            for (auto& x : g.flat()) x += 1.0f;
            return g;
        };
        const int kv = dim / heads * kv_heads;
        tensors["model.embed_tokens.weight"] = rand(vocab, dim, 1.0f);
        for (int l = 0; l < layers; ++l) {
            const std::string p = "model.layers." + std::to_string(l) + ".";
            tensors[p + "input_layernorm.weight"] = gain(dim);
            tensors[p + "self_attn.q_proj.weight"] = rand(dim, dim, 0.4f);
            tensors[p + "self_attn.k_proj.weight"] = rand(kv, dim, 0.4f);
            tensors[p + "self_attn.v_proj.weight"] = rand(kv, dim, 0.3f);
            tensors[p + "self_attn.o_proj.weight"] = rand(dim, dim, 0.2f);
            tensors[p + "post_attention_layernorm.weight"] = gain(dim);
            tensors[p + "mlp.gate_proj.weight"] = rand(hidden, dim, 0.3f);
            tensors[p + "mlp.up_proj.weight"] = rand(hidden, dim, 0.3f);
            tensors[p + "mlp.down_proj.weight"] = rand(dim, hidden, 0.2f);
        }
        tensors["model.norm.weight"] = gain(dim);
        tensors["lm_head.weight"] = rand(vocab, dim, 0.3f);
    }

    void add_to(safetensors_writer& w, const std::string& name,
                safetensors_dtype dtype = safetensors_dtype::F32) const {
        const matrix<float>& m = tensors.at(name);
        if (m.rows() == 1 && name.find("norm") != std::string::npos)
            w.add(name, m.flat(), {m.cols()}, dtype);
        else
            w.add(name, m.view(), dtype);
    }

    /// Writes config.json and model.safetensors (or `shards` files and the index) into dir.
    void write(const std::filesystem::path& dir, int shards = 1) const {
        write_text(dir / "config.json", config());
        if (shards == 1) {
            safetensors_writer w;
            w.set_metadata("format", "pt");
            for (const auto& [name, m] : tensors) add_to(w, name);
            w.write((dir / "model.safetensors").string());
            return;
        }
        std::vector<safetensors_writer> ws(std::size_t(shards), safetensors_writer{});
        std::string index = "{\"metadata\": {}, \"weight_map\": {";
        std::size_t k = 0;
        for (const auto& [name, m] : tensors) {
            const std::size_t s = k++ % std::size_t(shards);
            add_to(ws[s], name);
            index += (k > 1 ? ", \"" : "\"") + name + "\": \"part" + std::to_string(s) + ".st\"";
        }
        write_text(dir / "model.safetensors.index.json", index + "}}");
        for (std::size_t s = 0; s < ws.size(); ++s)
            ws[s].write((dir / ("part" + std::to_string(s) + ".st")).string());
    }

    // transformers' LlamaForCausalLM forward pass on the HF tensors as stored, in double, one
    // token at a time: RMSNorm x·rsqrt(mean x² + eps)·w; RoPE by rotate_half with
    // inv_freq[i] = theta^(−2i/head_dim) on the pairs (i, i + head_dim/2); repeat_kv grouping
    // (query head h reads kv head h / (heads / kv_heads)); softmax(q·k/√head_dim); SwiGLU.
    std::vector<std::vector<double>> forward(const std::vector<int>& toks) const {
        const int hd = dim / heads, half = hd / 2;
        const auto& T = tensors;
        const auto matvec = [](const matrix<float>& w, const std::vector<double>& x) {
            std::vector<double> y(w.rows(), 0.0);
            for (std::size_t r = 0; r < w.rows(); ++r)
                for (std::size_t c = 0; c < w.cols(); ++c) y[r] += double(w(r, c)) * x[c];
            return y;
        };
        const auto norm = [&](const std::vector<double>& x, const matrix<float>& g) {
            double ss = 0;
            for (double v : x) ss += v * v;
            const double r = 1.0 / std::sqrt(ss / double(x.size()) + eps);
            std::vector<double> y(x.size());
            for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * double(g.data()[i]);
            return y;
        };
        const auto rope = [&](std::vector<double>& u, std::size_t pos) {
            for (std::size_t h0 = 0; h0 < u.size(); h0 += std::size_t(hd)) {
                std::vector<double> out(static_cast<std::size_t>(hd));
                for (int i = 0; i < hd; ++i) {
                    const double a = double(pos) * std::pow(theta, -2.0 * (i % half) / hd);
                    const double rot =
                        i < half ? -u[h0 + std::size_t(i + half)] : u[h0 + std::size_t(i - half)];
                    out[std::size_t(i)] = u[h0 + std::size_t(i)] * std::cos(a) + rot * std::sin(a);
                }
                std::copy(out.begin(), out.end(), u.begin() + std::ptrdiff_t(h0));
            }
        };
        std::vector<std::vector<std::vector<double>>> keys(static_cast<std::size_t>(layers)),
            values(static_cast<std::size_t>(layers));
        std::vector<std::vector<double>> logits;
        for (std::size_t pos = 0; pos < toks.size(); ++pos) {
            const auto e = T.at("model.embed_tokens.weight").row(std::size_t(toks[pos]));
            std::vector<double> x(e.begin(), e.end());
            for (int l = 0; l < layers; ++l) {
                const std::string p = "model.layers." + std::to_string(l) + ".";
                const auto xn = norm(x, T.at(p + "input_layernorm.weight"));
                auto q = matvec(T.at(p + "self_attn.q_proj.weight"), xn);
                auto k = matvec(T.at(p + "self_attn.k_proj.weight"), xn);
                const auto v = matvec(T.at(p + "self_attn.v_proj.weight"), xn);
                rope(q, pos);
                rope(k, pos);
                keys[std::size_t(l)].push_back(k);
                values[std::size_t(l)].push_back(v);
                std::vector<double> att(std::size_t(dim), 0.0);
                for (int h = 0; h < heads; ++h) {
                    const int g = h / (heads / kv_heads);
                    std::vector<double> s(pos + 1);
                    double mx = -1e300, z = 0;
                    for (std::size_t t = 0; t <= pos; ++t) {
                        double dot = 0;
                        for (int i = 0; i < hd; ++i)
                            dot += q[std::size_t(h * hd + i)] *
                                   keys[std::size_t(l)][t][std::size_t(g * hd + i)];
                        mx = std::max(mx, s[t] = dot / std::sqrt(double(hd)));
                    }
                    for (auto& sv : s) z += (sv = std::exp(sv - mx));
                    for (std::size_t t = 0; t <= pos; ++t)
                        for (int i = 0; i < hd; ++i)
                            att[std::size_t(h * hd + i)] +=
                                s[t] / z * values[std::size_t(l)][t][std::size_t(g * hd + i)];
                }
                const auto o = matvec(T.at(p + "self_attn.o_proj.weight"), att);
                for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
                const auto xf = norm(x, T.at(p + "post_attention_layernorm.weight"));
                auto a = matvec(T.at(p + "mlp.gate_proj.weight"), xf);
                const auto b = matvec(T.at(p + "mlp.up_proj.weight"), xf);
                for (std::size_t i = 0; i < a.size(); ++i)
                    a[i] = a[i] / (1.0 + std::exp(-a[i])) * b[i];
                const auto f = matvec(T.at(p + "mlp.down_proj.weight"), a);
                for (std::size_t i = 0; i < x.size(); ++i) x[i] += f[i];
            }
            logits.push_back(matvec(T.at("lm_head.weight"), norm(x, T.at("model.norm.weight"))));
        }
        return logits;
    }
};

double worst_rel_diff(matrix_view<const float> a, const std::vector<std::vector<double>>& b) {
    double worst = 0;
    for (std::size_t t = 0; t < a.rows; ++t) {
        double num = 0, den = 0;
        for (std::size_t i = 0; i < a.cols; ++i)
            num = std::max(num, std::fabs(double(a(t, i)) - b[t][i])),
            den = std::max(den, std::fabs(b[t][i]));
        worst = std::max(worst, num / den);
    }
    return worst;
}

matrix<float> logits_of(const llama2c_model& m, const std::vector<int>& toks) {
    const llama_model f = float_model(llama_weights::from(m));
    llama_state s(f);
    return matrix<float>::from(forward(f, s, toks));
}

}  // namespace

TEST_CASE("hf: the rotary row permutation, its inverse, and transformers' definition") {
    // head_dim 4: HF rows (0, 1, 2, 3) of a head hold Meta's rows (0, 2, 1, 3).
    matrix<float> hf(8, 2);
    for (std::size_t r = 0; r < 8; ++r) hf(r, 0) = float(r), hf(r, 1) = float(10 * r);
    const matrix<float> meta = rope_rows_from_hf(hf, 4);
    const float want[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (std::size_t r = 0; r < 8; ++r) {
        CHECK(meta(r, 0) == want[r]);
        CHECK(meta(r, 1) == 10 * want[r]);
    }
    const matrix<float> w = test::gaussian_matrix(48, 5, 3);
    CHECK(std::ranges::equal(rope_rows_from_hf(rope_rows_to_hf(w, 8), 8).flat(), w.flat()));
    CHECK(std::ranges::equal(rope_rows_to_hf(rope_rows_from_hf(w, 8), 8).flat(), w.flat()));
    // transformers: w.view(heads, head_dim/2, 2, in).transpose(1, 2).reshape(out, in).
    const std::size_t heads = 6, hd = 8;
    matrix<float> reference(48, 5);
    for (std::size_t h = 0; h < heads; ++h)
        for (std::size_t a = 0; a < hd / 2; ++a)
            for (std::size_t b = 0; b < 2; ++b)  // after the transpose, index (h, b, a)
                for (std::size_t c = 0; c < 5; ++c)
                    reference(h * hd + b * (hd / 2) + a, c) = w(h * hd + a * 2 + b, c);
    CHECK(std::ranges::equal(rope_rows_to_hf(w, hd).flat(), reference.flat()));
    CHECK_THROWS_WITH_AS(rope_rows_from_hf(w, 7), doctest::Contains("head_dim 7"), qift::error);
    CHECK_THROWS_WITH_AS(rope_rows_to_hf(w, 32), doctest::Contains("48 rows"), qift::error);
}

TEST_CASE("hf: a tiny random model in HF layout gives transformers' logits (single and sharded)") {
    const tiny_hf tiny;
    const std::vector<int> toks{1, 7, 33, 2, 19, 19, 5, 38, 0, 12, 27};
    const auto ref = tiny.forward(toks);
    for (const int shards : {1, 3}) {
        CAPTURE(shards);
        const auto dir = temp_dir("tiny" + std::to_string(shards));
        tiny.write(dir, shards);
        CHECK(is_hf_model_dir(dir.string()));
        const llama2c_model m = load_hf_llama(dir.string());
        const auto& c = m.config;
        CHECK(c.dim == 32);
        CHECK(c.hidden_dim == 24);
        CHECK(c.n_layers == 2);
        CHECK(c.n_heads == 4);
        CHECK(c.n_kv_heads == 2);
        CHECK(c.vocab_size == 40);
        CHECK(c.seq_len == 16);
        CHECK(!c.shared_classifier);
        CHECK(c.rope_theta == 100.0f);
        CHECK(c.norm_eps == 0.05f);
        const matrix<float> logits = logits_of(m, toks);
        const double diff = worst_rel_diff(logits, ref);
        MESSAGE("tiny HF model (" << shards << " shard(s)): worst relative logit difference "
                                  << diff);
        CHECK(diff < 1e-5);
        // The permutation matters: the q/k weights as stored give other logits.
        llama2c_model unpermuted = m;
        for (std::size_t l = 0; l < 2; ++l) {
            const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
            unpermuted.layers[l].wq = tiny.tensors.at(p + "q_proj.weight");
            unpermuted.layers[l].wk = tiny.tensors.at(p + "k_proj.weight");
        }
        CHECK(worst_rel_diff(logits_of(unpermuted, toks), ref) > 1e-3);
        // And so do rope_theta and rms_norm_eps.
        llama2c_model defaults = m;
        defaults.config.rope_theta = 10000.0f;
        CHECK(worst_rel_diff(logits_of(defaults, toks), ref) > 1e-3);
        defaults = m;
        defaults.config.norm_eps = 1e-5f;
        CHECK(worst_rel_diff(logits_of(defaults, toks), ref) > 1e-3);
        std::filesystem::remove_all(dir);
    }
}

TEST_CASE("hf: config.json that is not a Llama qift runs, or is malformed, fails clearly") {
    const tiny_hf tiny;
    const auto dir = temp_dir("config");
    tiny.write(dir);
    const auto config_fails = [&](const std::string& config, const char* text) {
        CAPTURE(text);
        write_text(dir / "config.json", config);
        CHECK_THROWS_WITH_AS(load_hf_llama(dir.string()), doctest::Contains(text), qift::error);
        CHECK_THROWS_WITH_AS(load_hf_llama(dir.string()), doctest::Contains("config.json"),
                             qift::error);
    };
    const std::string good = tiny.config();
    const auto with = [&](const std::string& from, const std::string& to) {
        std::string s = good;
        const auto at = s.find(from);
        REQUIRE(at != std::string::npos);
        return s.replace(at, from.size(), to);
    };
    config_fails(with("\"model_type\": \"llama\"", "\"model_type\": \"mistral\""),
                 "model_type is \"mistral\", not \"llama\"");
    {
        std::string s = with("\"model_type\": \"llama\", ", "");
        s.replace(s.find("LlamaForCausalLM"), 16, "GPT2LMHeadModel");
        config_fails(s, "not a Llama config");
    }
    config_fails(with("\"silu\"", "\"gelu_new\""), "hidden_act is \"gelu_new\"");
    config_fails(with("\"attention_bias\": false", "\"attention_bias\": true"),
                 "attention_bias is true: qift's Llama linears have no biases");
    config_fails(tiny.config("\"mlp_bias\": true, "), "mlp_bias is true");
    config_fails(tiny.config("\"head_dim\": 16, "),
                 "head_dim is 16, but hidden_size / num_attention_heads = 8");
    config_fails(with("\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"linear\"}"),
                 "rope_scaling is set");
    config_fails(with("\"hidden_size\": 32, ", ""), "hidden_size is missing");
    config_fails(with("\"hidden_size\": 32", "\"hidden_size\": 32.5"),
                 "hidden_size is 32.5, expected an integer");
    config_fails(with("\"num_attention_heads\": 4", "\"num_attention_heads\": 5"),
                 "not an even multiple of num_attention_heads 5");
    config_fails(with("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"),
                 "not a multiple of num_key_value_heads 3");
    config_fails(with("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 0"),
                 "num_hidden_layers = 0 is outside [1, 1024]");
    config_fails(with("\"tie_word_embeddings\": false", "\"tie_word_embeddings\": \"no\""),
                 "tie_word_embeddings is \"no\", expected true or false");
    config_fails(with("\"rms_norm_eps\": 0.05", "\"rms_norm_eps\": -1"),
                 "rms_norm_eps is -1, expected a positive finite number");
    config_fails(with("\"rope_theta\": 100.0", "\"rope_theta\": 1e99"), "rope_theta is 1e99");
    config_fails("{\"model_type\": \"llama\",}", "expected a string key");
    config_fails("[]", "not a JSON object");
    // Optional keys take transformers' defaults.
    write_text(dir / "config.json",
               "{\"model_type\": \"llama\", \"hidden_size\": 32, \"intermediate_size\": 24, "
               "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 40}");
    const llama2c_config c = read_hf_llama_config((dir / "config.json").string());
    CHECK(c.n_kv_heads == 4);
    CHECK(c.seq_len == 2048);
    CHECK(!c.shared_classifier);
    CHECK(c.rope_theta == 10000.0f);
    CHECK(c.norm_eps == 1e-6f);
    std::filesystem::remove_all(dir);
}

TEST_CASE("hf: missing, misshapen, unexpected or non-finite tensors fail clearly") {
    tiny_hf tiny;
    const auto dir = temp_dir("tensors");
    const auto weights_fail = [&](const tiny_hf& t, const char* text) {
        CAPTURE(text);
        t.write(dir);
        CHECK_THROWS_WITH_AS(load_hf_llama(dir.string()), doctest::Contains(text), qift::error);
    };
    {
        tiny_hf t = tiny;
        t.tensors.erase("model.layers.1.mlp.up_proj.weight");
        weights_fail(t, "no tensor 'model.layers.1.mlp.up_proj.weight'");
    }
    {
        tiny_hf t = tiny;
        t.tensors["model.layers.0.self_attn.k_proj.weight"] = test::gaussian_matrix(32, 32, 1);
        weights_fail(t,
                     "tensor 'model.layers.0.self_attn.k_proj.weight' has shape [32, 32], "
                     "config.json implies [16, 32]");
    }
    {
        tiny_hf t = tiny;
        t.tensors["model.layers.0.self_attn.q_proj.bias"] = test::gaussian_matrix(1, 32, 1);
        weights_fail(t, "unexpected tensor 'model.layers.0.self_attn.q_proj.bias'");
    }
    {
        tiny_hf t = tiny;
        t.tensors["model.layers.1.mlp.down_proj.weight"](3, 4) = INFINITY;
        weights_fail(t, "tensor 'model.layers.1.mlp.down_proj.weight': element 76 is inf");
    }
    {
        tiny_hf t = tiny;
        t.tensors.erase("lm_head.weight");
        weights_fail(t, "no lm_head.weight, and config.json's tie_word_embeddings is not true");
    }
    {
        // An integer tensor where a weight belongs.
        tiny.write(dir);
        safetensors_writer w;
        for (const auto& [name, m] : tiny.tensors)
            if (name != "model.norm.weight") tiny.add_to(w, name);
        const std::vector<std::int32_t> ints(32, 1);
        w.add("model.norm.weight", std::span<const std::int32_t>(ints), {32});
        w.write((dir / "model.safetensors").string());
        CHECK_THROWS_WITH_AS(load_hf_llama(dir.string()),
                             doctest::Contains("'model.norm.weight' is I32, expected a float type"),
                             qift::error);
    }
    // Tied embeddings: lm_head is not needed, and ignored when present.
    write_text(dir / "config.json",
               tiny.config().replace(tiny.config().find("\"tie_word_embeddings\": false"), 28,
                                     "\"tie_word_embeddings\": true"));
    {
        safetensors_writer w;
        for (const auto& [name, m] : tiny.tensors)
            if (name != "lm_head.weight") tiny.add_to(w, name);
        w.write((dir / "model.safetensors").string());
        const llama2c_model m = load_hf_llama(dir.string());
        CHECK(m.config.shared_classifier);
        CHECK(std::ranges::equal(m.classifier.flat(), m.token_embedding.flat()));
    }
    // Folders without weights, and paths that are not folders.
    std::filesystem::remove(dir / "model.safetensors");
    CHECK_THROWS_WITH_AS(load_hf_llama(dir.string()),
                         doctest::Contains("neither model.safetensors nor"), qift::error);
    CHECK_THROWS_WITH_AS(load_hf_llama((dir / "config.json").string()),
                         doctest::Contains("is not a directory"), qift::error);
    CHECK(!is_hf_model_dir((dir / "config.json").string()));
    CHECK(!is_hf_model_dir("/nonexistent"));
    // Sharded folders: a shard missing, a tensor outside the index, an index naming a path.
    tiny.write(dir, 2);
    std::filesystem::remove(dir / "part1.st");
    CHECK_THROWS_WITH_AS(load_hf_llama(dir.string()), doctest::Contains("cannot open"),
                         qift::error);
    tiny.write(dir, 2);
    {
        std::ifstream in(dir / "model.safetensors.index.json");
        std::string index((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const std::string key = "\"model.norm.weight\":";
        const auto cut = index.find(key);
        REQUIRE(cut != std::string::npos);
        write_text(dir / "model.safetensors.index.json",
                   std::string(index).replace(cut, key.size(), "\"model.norm.weightX\":"));
        CHECK_THROWS_WITH_AS(load_hf_llama(dir.string()),
                             doctest::Contains("tensor 'model.norm.weight' of"), qift::error);
        write_text(dir / "model.safetensors.index.json",
                   std::string(index).replace(index.find("\"part0.st\""), 10, "\"../x.st\""));
        CHECK_THROWS_WITH_AS(load_hf_llama(dir.string()),
                             doctest::Contains("is not a file name in the model folder"),
                             qift::error);
    }
    std::filesystem::remove_all(dir);
}

// Run by ctest's hf_prose6M test after tests/export_hf.py wrote QIFT_HF_DIR/{f16,bf16}.
TEST_CASE("hf: prose6M exported in float16 and bfloat16 equals the llama2.c checkpoint rounded") {
    const char* env = std::getenv("QIFT_HF_DIR");
    if (!env) {
        MESSAGE(
            "SKIPPED: QIFT_HF_DIR is not set (ctest's hf_prose6M test runs this case after "
            "tests/export_hf.py wrote the folders)");
        return;
    }
    const std::string root = env;
    const auto ckpt = load_llama2c(hf_models + "prose6M.bin");
    const auto ids = load_token_ids(hf_models + "prose6M_test.npy", ckpt.config.vocab_size);
    const std::size_t windows = 32;
    const double ppl32 =
        evaluate(float_model(llama_weights::from(ckpt)), ids, {.max_windows = windows}).perplexity;
    MESSAGE("prose6M float32 perplexity, " << windows << " windows: " << std::setprecision(8)
                                           << ppl32);
    for (const bool bf16 : {false, true}) {
        const std::string dir = root + (bf16 ? "/bf16" : "/f16"), kind = bf16 ? "BF16" : "F16";
        CAPTURE(dir);
        REQUIRE(is_hf_model_dir(dir));
        const llama2c_model hf = load_hf_llama(dir);
        // The llama2.c weights rounded the same way.
        const auto round = [&](std::span<float> v) {
            for (float& x : v)
                x = bf16 ? detail::bfloat16_to_float(detail::float_to_bfloat16(x))
                         : detail::half_to_float(detail::float_to_half(x));
        };
        llama2c_model r = ckpt;
        round(r.token_embedding.flat());
        round(r.classifier.flat());
        round(r.rms_final);
        for (auto& L : r.layers) {
            for (auto* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w1, &L.w2, &L.w3}) round(m->flat());
            round(L.rms_att);
            round(L.rms_ffn);
        }
        // Same weights, bit for bit: the loader undid the export's permutation exactly.
        CHECK(std::ranges::equal(hf.token_embedding.flat(), r.token_embedding.flat()));
        CHECK(std::ranges::equal(hf.classifier.flat(), r.classifier.flat()));
        CHECK(hf.rms_final == r.rms_final);
        std::size_t same = 0;
        for (std::size_t l = 0; l < r.layers.size(); ++l) {
            const auto &a = hf.layers[l], &b = r.layers[l];
            same += std::ranges::equal(a.wq.flat(), b.wq.flat()) &&
                    std::ranges::equal(a.wk.flat(), b.wk.flat()) &&
                    std::ranges::equal(a.wv.flat(), b.wv.flat()) &&
                    std::ranges::equal(a.wo.flat(), b.wo.flat()) &&
                    std::ranges::equal(a.w1.flat(), b.w1.flat()) &&
                    std::ranges::equal(a.w2.flat(), b.w2.flat()) &&
                    std::ranges::equal(a.w3.flat(), b.w3.flat()) && a.rms_att == b.rms_att &&
                    a.rms_ffn == b.rms_ffn;
        }
        CHECK(same == r.layers.size());
        // Logits on a test window: the HF model against the rounded llama2.c model.
        const std::vector<int> window(ids.begin(), ids.begin() + 256);
        const matrix<float> a = logits_of(hf, window), b = logits_of(r, window);
        double worst = 0, scale = 0;
        for (std::size_t k = 0; k < a.size(); ++k)
            worst = std::max(worst, double(std::fabs(a.data()[k] - b.data()[k]))),
            scale = std::max(scale, double(std::fabs(b.data()[k])));
        MESSAGE(kind << ": worst logit difference against the rounded "
                        "llama2.c model, 256 tokens: "
                     << worst << " (largest logit " << scale << ")");
        CHECK(worst <= 1e-6 * scale);
        const double ppl =
            evaluate(float_model(llama_weights::from(hf)), ids, {.max_windows = windows})
                .perplexity;
        MESSAGE(kind << " HF folder perplexity, " << windows << " windows: " << std::setprecision(8)
                     << ppl << " (float32 " << ppl32 << ", relative difference "
                     << std::setprecision(3) << ppl / ppl32 - 1 << ")");
        // float16 keeps 11 significant bits, bfloat16 8: their rounding (relative 2^-12 and
        // 2^-9 per weight at most) moves perplexity by about 1e-5 and 3e-4 on this model.
        CHECK(std::fabs(ppl / ppl32 - 1) < (bf16 ? 2e-3 : 1e-4));
        if (!bf16) {
            // qift writes the folder's tensors back in HF layout; tests/export_hf.py compare
            // then checks with NumPy that they equal the exported file byte for byte.
            safetensors_writer w;
            const auto add = [&](const std::string& name, const matrix<float>& m) {
                w.add(name, m.view(), safetensors_dtype::F16);
            };
            const auto add_vec = [&](const std::string& name, const std::vector<float>& v) {
                w.add(name, std::span<const float>(v), {v.size()}, safetensors_dtype::F16);
            };
            const std::size_t hd = std::size_t(hf.config.head_dim());
            add("model.embed_tokens.weight", hf.token_embedding);
            for (std::size_t l = 0; l < hf.layers.size(); ++l) {
                const auto& L = hf.layers[l];
                const std::string p = "model.layers." + std::to_string(l) + ".";
                add_vec(p + "input_layernorm.weight", L.rms_att);
                add(p + "self_attn.q_proj.weight", rope_rows_to_hf(L.wq, hd));
                add(p + "self_attn.k_proj.weight", rope_rows_to_hf(L.wk, hd));
                add(p + "self_attn.v_proj.weight", L.wv);
                add(p + "self_attn.o_proj.weight", L.wo);
                add_vec(p + "post_attention_layernorm.weight", L.rms_ffn);
                add(p + "mlp.gate_proj.weight", L.w1);
                add(p + "mlp.up_proj.weight", L.w3);
                add(p + "mlp.down_proj.weight", L.w2);
            }
            add_vec("model.norm.weight", hf.rms_final);
            w.set_metadata("format", "pt");
            w.write(root + "/qift_f16.safetensors");
        }
    }
}
