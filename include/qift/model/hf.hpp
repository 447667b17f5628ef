// SPDX-License-Identifier: MIT
// Hugging Face Llama checkpoints: config.json and model.safetensors (one file or shards with an
// index), the rotary row permutation of q/k undone, loaded as a llama2c_model so the model layer
// runs them unchanged.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "../core.hpp"
#include "../detail/json.hpp"
#include "../safetensors.hpp"
#include "llama2c.hpp"

namespace qift::inline QIFT_ISA {

/// Undoes Hugging Face's rotary permutation of a q or k projection W [heads·head_dim][in].
/// Meta's Llama and llama2.c rotate the pairs (2i, 2i+1) of each head; HF's conversion
/// (convert_llama_weights_to_hf.py, `permute`) reorders each head's rows so that its
/// rotate_half rotates the pairs (i, i + head_dim/2) instead: HF row j·head_dim/2 + i holds the
/// original row 2i + j (j ∈ {0, 1}). This returns W with every head's rows back in the
/// interleaved order: out(h·head_dim + 2i + j) = w(h·head_dim + j·head_dim/2 + i). Throws
/// qift::error when head_dim is odd or does not divide the rows.
inline matrix<float> rope_rows_from_hf(matrix_view<const float> w, std::size_t head_dim) {
    detail::require(head_dim >= 2 && head_dim % 2 == 0 && w.rows % head_dim == 0, [&] {
        return "rope_rows_from_hf: head_dim " + std::to_string(head_dim) +
               " is not even or does not divide the " + std::to_string(w.rows) + " rows";
    });
    matrix<float> out(w.rows, w.cols);
    const std::size_t half = head_dim / 2;
    for (std::size_t h = 0; h < w.rows; h += head_dim)
        for (std::size_t i = 0; i < half; ++i)
            for (std::size_t j = 0; j < 2; ++j)
                std::copy_n(&w(h + j * half + i, 0), w.cols, &out(h + 2 * i + j, 0));
    return out;
}

/// The inverse of rope_rows_from_hf: the permutation HF's conversion applies to Meta/llama2.c
/// q and k weights, out(h·head_dim + j·head_dim/2 + i) = w(h·head_dim + 2i + j).
inline matrix<float> rope_rows_to_hf(matrix_view<const float> w, std::size_t head_dim) {
    detail::require(head_dim >= 2 && head_dim % 2 == 0 && w.rows % head_dim == 0, [&] {
        return "rope_rows_to_hf: head_dim " + std::to_string(head_dim) +
               " is not even or does not divide the " + std::to_string(w.rows) + " rows";
    });
    matrix<float> out(w.rows, w.cols);
    const std::size_t half = head_dim / 2;
    for (std::size_t h = 0; h < w.rows; h += head_dim)
        for (std::size_t i = 0; i < half; ++i)
            for (std::size_t j = 0; j < 2; ++j)
                std::copy_n(&w(h + 2 * i + j, 0), w.cols, &out(h + j * half + i, 0));
    return out;
}

/// True when `path` is a directory holding a config.json (a Hugging Face model folder).
inline bool is_hf_model_dir(const std::string& path) {
    std::error_code ec;
    return std::filesystem::is_directory(path, ec) &&
           std::filesystem::is_regular_file(std::filesystem::path(path) / "config.json", ec);
}

namespace detail {

inline std::string read_text_file(const std::string& path, const std::string& fn) {
    std::ifstream f(path, std::ios::binary);
    require(bool(f), [&] { return fn + ": cannot open " + path; });
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    require(!f.bad(), [&] { return fn + ": read error in " + path; });
    return s;
}

}  // namespace detail

/// Reads a Hugging Face Llama config.json into the model layer's config: hidden_size → dim,
/// intermediate_size → hidden_dim, num_hidden_layers, num_attention_heads,
/// num_key_value_heads (default: the number of heads), vocab_size, max_position_embeddings →
/// seq_len (default 2048), tie_word_embeddings → shared_classifier (default false), rope_theta
/// (default 10000), rms_norm_eps → norm_eps (default 1e-6); the defaults are transformers'
/// LlamaConfig's. Throws qift::error naming the file and the key when the JSON is malformed, a
/// required key is missing, a value has the wrong type or is out of range, or the model is not
/// the architecture qift runs: model_type other than "llama" (or, without model_type,
/// architectures without "LlamaForCausalLM"), hidden_act other than "silu", attention_bias or
/// mlp_bias true, a head_dim other than hidden_size / num_attention_heads, or a rope_scaling.
inline llama2c_config read_hf_llama_config(const std::string& path) {
    using detail::json_value;
    using detail::require;
    const std::string where = "read_hf_llama_config: " + path;
    const json_value root =
        detail::parse_json(detail::read_text_file(path, "read_hf_llama_config"), where);
    require(root.is(json_value::kind::object),
            [&] { return where + ": the file is not a JSON object"; });
    const auto bad = [&](const std::string& key, const std::string& why) {
        detail::fail(where + ": " + key + " " + why);
    };
    const auto text_of = [](const json_value& v) {
        return v.is(json_value::kind::number)   ? v.text
               : v.is(json_value::kind::string) ? "\"" + v.text + "\""
                                                : std::string(detail::json_kind_name(v.type));
    };
    // The architecture.
    if (const json_value* mt = root.find("model_type")) {
        if (!mt->is(json_value::kind::string) || mt->text != "llama")
            bad("model_type",
                "is " + text_of(*mt) + ", not \"llama\" (qift loads Llama checkpoints only)");
    } else {
        bool llama = false;
        if (const json_value* a = root.find("architectures"))
            for (const auto& v : a->values) llama = llama || v.text == "LlamaForCausalLM";
        if (!llama)
            bad("model_type",
                "is missing and architectures does not name LlamaForCausalLM: not a Llama config");
    }
    if (const json_value* act = root.find("hidden_act"))
        if (!act->is(json_value::kind::string) || act->text != "silu")
            bad("hidden_act", "is " + text_of(*act) +
                                  ": qift's Llama block is SwiGLU (silu); other activations are "
                                  "not supported");
    for (const char* key : {"attention_bias", "mlp_bias"})
        if (const json_value* b = root.find(key))
            if (!b->is(json_value::kind::boolean) || b->boolean)
                bad(key, "is " + (b->is(json_value::kind::boolean) ? "true" : text_of(*b)) +
                             ": qift's Llama linears have no biases");
    if (const json_value* rs = root.find("rope_scaling"))
        if (!rs->is(json_value::kind::null))
            bad("rope_scaling",
                "is set: scaled RoPE (linear, dynamic, YaRN, llama3) is not "
                "supported; only plain RoPE with rope_theta");
    // The sizes.
    const auto integer = [&](const char* key, int lo, int hi, const int* fallback) {
        const json_value* v = root.find(key);
        if (!v) {
            if (!fallback) bad(key, "is missing");
            return *fallback;
        }
        std::int64_t x = 0;
        if (!detail::json_to_i64(*v, x)) bad(key, "is " + text_of(*v) + ", expected an integer");
        if (x < lo || x > hi)
            bad(key, "= " + std::to_string(x) + " is outside [" + std::to_string(lo) + ", " +
                         std::to_string(hi) + "]");
        return int(x);
    };
    const auto positive_number = [&](const char* key, double fallback) {
        const json_value* v = root.find(key);
        if (!v) return fallback;
        double x = 0;
        if (!detail::json_to_double(*v, x) || !(x > 0) || !std::isfinite(float(x)))
            bad(key, "is " + text_of(*v) + ", expected a positive finite number");
        return x;
    };
    llama2c_config c;
    c.dim = integer("hidden_size", 1, 1 << 16, nullptr);
    c.hidden_dim = integer("intermediate_size", 1, 1 << 18, nullptr);
    c.n_layers = integer("num_hidden_layers", 1, 1024, nullptr);
    c.n_heads = integer("num_attention_heads", 1, c.dim, nullptr);
    c.n_kv_heads = integer("num_key_value_heads", 1, c.n_heads, &c.n_heads);
    c.vocab_size = integer("vocab_size", 1, 1 << 21, nullptr);
    const int default_context = 2048;
    c.seq_len = integer("max_position_embeddings", 1, 1 << 20, &default_context);
    c.shared_classifier = false;
    if (const json_value* t = root.find("tie_word_embeddings")) {
        if (!t->is(json_value::kind::boolean))
            bad("tie_word_embeddings", "is " + text_of(*t) + ", expected true or false");
        c.shared_classifier = t->boolean;
    }
    c.rope_theta = float(positive_number("rope_theta", 10000.0));
    c.norm_eps = float(positive_number("rms_norm_eps", 1e-6));
    require(c.dim % c.n_heads == 0 && c.head_dim() % 2 == 0, [&] {
        return where + ": hidden_size " + std::to_string(c.dim) +
               " is not an even multiple of num_attention_heads " + std::to_string(c.n_heads);
    });
    require(c.n_heads % c.n_kv_heads == 0, [&] {
        return where + ": num_attention_heads " + std::to_string(c.n_heads) +
               " is not a multiple of num_key_value_heads " + std::to_string(c.n_kv_heads);
    });
    if (const json_value* hd = root.find("head_dim"); hd && !hd->is(json_value::kind::null)) {
        std::int64_t x = 0;
        if (!detail::json_to_i64(*hd, x) || x != c.head_dim())
            bad("head_dim", "is " + text_of(*hd) + ", but hidden_size / num_attention_heads = " +
                                std::to_string(c.head_dim()) +
                                ": qift's Llama needs head_dim · heads = hidden_size");
    }
    return c;
}

namespace detail {

/// The tensors of a model folder: model.safetensors, or the shards model.safetensors.index.json
/// names. Knows which file holds each name and which names were consumed.
class hf_tensor_source {
  public:
    explicit hf_tensor_source(const std::filesystem::path& dir) {
        const auto single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
        std::error_code ec;
        if (std::filesystem::is_regular_file(single, ec)) {
            files_.emplace_back(single.string());
            for (const auto& t : files_[0].tensors()) where_.emplace(t.name, 0);
            return;
        }
        require(std::filesystem::is_regular_file(index, ec), [&] {
            return "load_hf_llama: " + dir.string() +
                   " holds neither model.safetensors nor model.safetensors.index.json "
                   "(pytorch_model.bin checkpoints are not read; convert them to safetensors)";
        });
        const std::string where = "load_hf_llama: " + index.string();
        const json_value root = parse_json(read_text_file(index.string(), "load_hf_llama"), where);
        const json_value* map = root.find("weight_map");
        require(map && map->is(json_value::kind::object),
                [&] { return where + ": no \"weight_map\" object"; });
        std::map<std::string, std::size_t> shard_of_file;
        for (std::size_t k = 0; k < map->keys.size(); ++k) {
            const json_value& file = map->values[k];
            require(file.is(json_value::kind::string) && !file.text.empty() &&
                        file.text.find('/') == std::string::npos &&
                        file.text.find('\\') == std::string::npos && file.text != "." &&
                        file.text != "..",
                    [&] {
                        return where + ": weight_map[\"" + map->keys[k] +
                               "\"] is not a file name in the model folder";
                    });
            auto [it, added] = shard_of_file.emplace(file.text, files_.size());
            if (added) files_.emplace_back((dir / file.text).string());
            where_.emplace(map->keys[k], it->second);
        }
        // Every shard's tensors are indexed to that shard, and every indexed name exists.
        for (std::size_t f = 0; f < files_.size(); ++f)
            for (const auto& t : files_[f].tensors()) {
                const auto it = where_.find(t.name);
                require(it != where_.end() && it->second == f, [&] {
                    return where + ": tensor '" + t.name + "' of " + files_[f].path() +
                           (it == where_.end() ? " is not in the weight_map"
                                               : " is mapped to another shard");
                });
            }
        for (const auto& entry : where_) {
            const std::string& name = entry.first;
            const std::size_t f = entry.second;
            require(files_[f].find(name) != nullptr, [&] {
                return where + ": weight_map names '" + name + "' in " + files_[f].path() +
                       ", which does not hold it";
            });
        }
    }

    bool contains(const std::string& name) const { return where_.count(name) != 0; }

    /// The tensor `name` as a float matrix of exactly `shape` (rank 2, or rank 1 as 1×n),
    /// checked finite.
    matrix<float> matrix_of(const std::string& name, std::vector<std::size_t> shape) {
        const auto it = where_.find(name);
        require(it != where_.end(),
                [&] { return "load_hf_llama: the checkpoint has no tensor '" + name + "'"; });
        const safetensors_file& f = files_[it->second];
        const safetensors_tensor& t = f.at(name);
        const std::string what = "load_hf_llama: " + f.path() + ": tensor '" + name + "'";
        require(t.shape == shape, [&] {
            return what + " has shape " + shape_text(t.shape) + ", config.json implies " +
                   shape_text(shape);
        });
        using D = safetensors_dtype;
        require(t.dtype == D::F32 || t.dtype == D::F16 || t.dtype == D::BF16 || t.dtype == D::F64,
                [&] {
                    return what + " is " + std::string(dtype_name(t.dtype)) +
                           ", expected a float type (F32, F16, BF16, F64)";
                });
        matrix<float> m = f.to_matrix(name);
        for (std::size_t k = 0; k < m.size(); ++k)
            require(std::isfinite(m.data()[k]), [&] {
                return what + ": element " + std::to_string(k) + " is " +
                       std::to_string(m.data()[k]) + " (weights must be finite)";
            });
        used_.insert(name);
        return m;
    }

    std::vector<float> vector_of(const std::string& name, std::size_t n) {
        const matrix<float> m = matrix_of(name, {n});
        return {m.data(), m.data() + m.size()};
    }

    /// Throws for a tensor that was not consumed and is not ignorable.
    void check_all_used(const std::set<std::string>& ignored) const {
        for (const auto& entry : where_) {
            const std::string& name = entry.first;
            const std::size_t f = entry.second;
            const bool rotary_buffer = name.ends_with(".rotary_emb.inv_freq");
            require(used_.count(name) || ignored.count(name) || rotary_buffer, [&] {
                return "load_hf_llama: " + files_[f].path() + ": unexpected tensor '" + name +
                       "': qift's Llama has no such weight (a bias, or another architecture)";
            });
        }
    }

  private:
    std::vector<safetensors_file> files_;
    std::map<std::string, std::size_t> where_;
    std::set<std::string> used_;
};

}  // namespace detail

/// Loads a Hugging Face Llama model folder: config.json (read_hf_llama_config) and the weights in
/// model.safetensors, or in the shards that model.safetensors.index.json maps (F32, F16, BF16 or
/// F64, converted to float exactly except F64). Tensor names are transformers' LlamaForCausalLM
/// ones: model.embed_tokens.weight, model.layers.N.{input_layernorm, post_attention_layernorm}
/// .weight, model.layers.N.self_attn.{q,k,v,o}_proj.weight, model.layers.N.mlp.{gate,up,down}
/// _proj.weight, model.norm.weight and lm_head.weight (ignored when tie_word_embeddings is
/// true; rotary_emb.inv_freq buffers are ignored). q_proj and k_proj are returned to llama2.c's
/// interleaved RoPE order (rope_rows_from_hf), gate/down/up become w1/w2/w3. The model's
/// rope_theta and rms_norm_eps travel in the config. Tokenizers (tokenizer.json) are not read.
/// Throws qift::error naming the file and the tensor when a tensor is missing, has the wrong
/// shape or dtype, is not finite, or is unexpected (biases, other architectures), and for
/// everything read_hf_llama_config and safetensors_file reject.
inline llama2c_model load_hf_llama(const std::string& dir) {
    const std::filesystem::path root(dir);
    std::error_code ec;
    detail::require(std::filesystem::is_directory(root, ec), [&] {
        return "load_hf_llama: " + dir + " is not a directory (a Hugging Face model folder)";
    });
    llama2c_model m;
    m.config = read_hf_llama_config((root / "config.json").string());
    const auto& c = m.config;
    detail::hf_tensor_source src(root);
    const std::size_t d = std::size_t(c.dim), h = std::size_t(c.hidden_dim),
                      kv = std::size_t(c.kv_dim()), v = std::size_t(c.vocab_size),
                      hd = std::size_t(c.head_dim());
    m.token_embedding = src.matrix_of("model.embed_tokens.weight", {v, d});
    for (int l = 0; l < c.n_layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        llama2c_layer& L = m.layers.emplace_back();
        L.rms_att = src.vector_of(p + "input_layernorm.weight", d);
        L.wq = rope_rows_from_hf(src.matrix_of(p + "self_attn.q_proj.weight", {d, d}), hd);
        L.wk = rope_rows_from_hf(src.matrix_of(p + "self_attn.k_proj.weight", {kv, d}), hd);
        L.wv = src.matrix_of(p + "self_attn.v_proj.weight", {kv, d});
        L.wo = src.matrix_of(p + "self_attn.o_proj.weight", {d, d});
        L.rms_ffn = src.vector_of(p + "post_attention_layernorm.weight", d);
        L.w1 = src.matrix_of(p + "mlp.gate_proj.weight", {h, d});
        L.w2 = src.matrix_of(p + "mlp.down_proj.weight", {d, h});
        L.w3 = src.matrix_of(p + "mlp.up_proj.weight", {h, d});
    }
    m.rms_final = src.vector_of("model.norm.weight", d);
    std::set<std::string> ignored;
    if (c.shared_classifier) {
        m.classifier = m.token_embedding;
        ignored.insert("lm_head.weight");
    } else {
        detail::require(src.contains("lm_head.weight"), [&] {
            return "load_hf_llama: " + dir +
                   ": no lm_head.weight, and config.json's tie_word_embeddings is not true";
        });
        m.classifier = src.matrix_of("lm_head.weight", {v, d});
    }
    src.check_all_used(ignored);
    return m;
}

}  // namespace qift
