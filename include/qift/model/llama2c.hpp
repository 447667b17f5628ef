// SPDX-License-Identifier: MIT
// Reader for llama2.c checkpoints (a Llama-architecture model as a header of 7 int32 and
// float32 arrays), validated against the file size, for tests and examples on real weights.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "../core.hpp"

namespace qift::inline QIFT_ISA {

/// The 7-int32 header. `shared_classifier` is true when the file's vocab_size was positive
/// (the classifier reuses the token embedding); vocab_size is stored here as its magnitude.
/// `rope_theta` (RoPE frequency rope_theta^(−2i/head_dim)) and `norm_eps` (RMSNorm ε) are not
/// in llama2.c files: its constants by default; Hugging Face configs set them (model/hf.hpp).
struct llama2c_config {
    int dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0,
        seq_len = 0;
    bool shared_classifier = true;
    float rope_theta = 10000.0f;
    float norm_eps = 1e-5f;

    int head_dim() const noexcept { return dim / n_heads; }
    int kv_dim() const noexcept { return head_dim() * n_kv_heads; }
};

/// One transformer layer; linear weights are row-major [out][in] (y = W·x).
struct llama2c_layer {
    std::vector<float> rms_att;  ///< [dim]
    matrix<float> wq;            ///< [dim][dim]
    matrix<float> wk;            ///< [kv_dim][dim]
    matrix<float> wv;            ///< [kv_dim][dim]
    matrix<float> wo;            ///< [dim][dim]
    std::vector<float> rms_ffn;  ///< [dim]
    matrix<float> w1;            ///< gate [hidden][dim]
    matrix<float> w2;            ///< down [dim][hidden]
    matrix<float> w3;            ///< up [hidden][dim]
};

/// A whole checkpoint. `classifier` is [vocab][dim]: a copy of the embedding when shared.
struct llama2c_model {
    llama2c_config config;
    matrix<float> token_embedding;  ///< [vocab][dim]
    std::vector<llama2c_layer> layers;
    std::vector<float> rms_final;  ///< [dim]
    matrix<float> classifier;      ///< [vocab][dim]
};

namespace detail {

inline void check_llama2c_config(const llama2c_config& c, const std::string& path) {
    const auto field = [&](const char* name, int v, int lo, int hi) {
        require(v >= lo && v <= hi, [&] {
            return "load_llama2c: " + path + ": header field " + name + " = " + std::to_string(v) +
                   " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
        });
    };
    field("dim", c.dim, 1, 1 << 16);
    field("hidden_dim", c.hidden_dim, 1, 1 << 18);
    field("n_layers", c.n_layers, 1, 1024);
    field("n_heads", c.n_heads, 1, c.dim);
    field("n_kv_heads", c.n_kv_heads, 1, c.n_heads);
    field("vocab_size", c.vocab_size, 1, 1 << 21);
    field("seq_len", c.seq_len, 1, 1 << 20);
    require(c.dim % c.n_heads == 0 && c.head_dim() % 2 == 0, [&] {
        return "load_llama2c: " + path + ": dim " + std::to_string(c.dim) +
               " is not an even multiple of n_heads " + std::to_string(c.n_heads);
    });
    require(c.n_heads % c.n_kv_heads == 0, [&] {
        return "load_llama2c: " + path + ": n_heads " + std::to_string(c.n_heads) +
               " is not a multiple of n_kv_heads " + std::to_string(c.n_kv_heads);
    });
}

}  // namespace detail

/// Number of float32 values the checkpoint holds after its header. Throws qift::error when a
/// field is negative, n_heads is 0, or the count overflows 64 bits (a config no file matches;
/// load_llama2c bounds every field before calling this).
inline std::uint64_t llama2c_float_count(const llama2c_config& c) {
    detail::require(
        c.dim >= 0 && c.hidden_dim >= 0 && c.n_layers >= 0 && c.n_heads > 0 && c.n_kv_heads >= 0 &&
            c.vocab_size >= 0 && c.seq_len >= 0,
        [&] {
            return "llama2c_float_count: negative field or n_heads 0 in {dim " +
                   std::to_string(c.dim) + ", hidden_dim " + std::to_string(c.hidden_dim) +
                   ", n_layers " + std::to_string(c.n_layers) + ", n_heads " +
                   std::to_string(c.n_heads) + ", n_kv_heads " + std::to_string(c.n_kv_heads) +
                   ", vocab_size " + std::to_string(c.vocab_size) + ", seq_len " +
                   std::to_string(c.seq_len) + "}";
        });
    const std::uint64_t d = std::uint64_t(c.dim), h = std::uint64_t(c.hidden_dim),
                        L = std::uint64_t(c.n_layers), v = std::uint64_t(c.vocab_size),
                        kv = std::uint64_t(c.kv_dim()), s = std::uint64_t(c.seq_len),
                        hd = std::uint64_t(c.head_dim());
    constexpr std::string_view what = "llama2c_float_count";
    const auto mul = [&](std::uint64_t a, std::uint64_t b) {
        return detail::checked_mul(a, b, what);
    };
    const auto add = [&](std::uint64_t a, std::uint64_t b) {
        return detail::checked_add(a, b, what);
    };
    // Per layer: two RMSNorm gains (d each), wq and wo (d·d each), wk and wv (kv·d each), and
    // w1, w2, w3 (h·d each).
    const std::uint64_t layer =
        add(add(mul(2, d), mul(2, mul(d, d))), add(mul(2, mul(kv, d)), mul(3, mul(h, d))));
    const std::uint64_t embeddings = mul(c.shared_classifier ? 1 : 2, mul(v, d));
    return add(add(embeddings, mul(L, layer)), add(d, mul(s, hd)));
}

/// Loads a llama2.c checkpoint (llama2.c's export: a header of 7 int32, then the float32 arrays
/// in the order read below). Throws qift::error if the
/// file cannot be read, a header field is nonsensical, or the size is not exactly the size
/// the header implies (truncated or oversized), naming both sizes.
inline llama2c_model load_llama2c(const std::string& path) {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
    detail::require(f != nullptr, [&] {
        return "load_llama2c: cannot open " + path + ": " + std::strerror(errno);
    });
    std::fseek(f.get(), 0, SEEK_END);
    const long file_size = std::ftell(f.get());
    std::fseek(f.get(), 0, SEEK_SET);
    // ftell fails (−1) for a file larger than `long` (on a 32-bit target, 2 GiB and more).
    detail::require(file_size >= 0, [&] {
        return "load_llama2c: cannot determine the size of " + path + ": " + std::strerror(errno);
    });
    std::int32_t h[7] = {};
    detail::require(file_size >= 28 && std::fread(h, sizeof(std::int32_t), 7, f.get()) == 7, [&] {
        return "load_llama2c: " + path + " is " + std::to_string(file_size) +
               " bytes, too short for the 28-byte header";
    });
    llama2c_model m;
    auto& c = m.config;
    // |vocab_size|: INT32_MIN has no magnitude in int32, so it becomes 0, which the check refuses.
    const std::int32_t vocab = h[5] == std::numeric_limits<std::int32_t>::min() ? 0
                               : h[5] < 0                                       ? -h[5]
                                                                                : h[5];
    c = {h[0], h[1], h[2], h[3], h[4], vocab, h[6], h[5] > 0};
    detail::check_llama2c_config(c, path);
    const std::uint64_t expected = detail::checked_add(
        std::uint64_t{28},
        detail::checked_mul(std::uint64_t{4}, llama2c_float_count(c), "load_llama2c"),
        "load_llama2c");
    detail::require(static_cast<std::uint64_t>(file_size) == expected, [&] {
        return "load_llama2c: " + path + " is " + std::to_string(file_size) +
               " bytes but its header implies " + std::to_string(expected) +
               (static_cast<std::uint64_t>(file_size) < expected ? " (truncated)" : " (oversized)");
    });
    const auto read = [&](float* dst, std::size_t n) {
        detail::require(std::fread(dst, sizeof(float), n, f.get()) == n,
                        [&] { return "load_llama2c: read error in " + path; });
    };
    const auto read_matrix = [&](std::size_t rows, std::size_t cols) {
        matrix<float> w(rows, cols);
        read(w.data(), w.size());
        return w;
    };
    const auto read_vector = [&](std::size_t n) {
        std::vector<float> v(n);
        read(v.data(), n);
        return v;
    };
    const std::size_t d = std::size_t(c.dim), hd = std::size_t(c.hidden_dim),
                      kv = std::size_t(c.kv_dim()), v = std::size_t(c.vocab_size);
    m.token_embedding = read_matrix(v, d);
    m.layers.resize(std::size_t(c.n_layers));
    // llama2.c stores each weight kind for all layers contiguously.
    for (auto& l : m.layers) l.rms_att = read_vector(d);
    for (auto& l : m.layers) l.wq = read_matrix(d, d);
    for (auto& l : m.layers) l.wk = read_matrix(kv, d);
    for (auto& l : m.layers) l.wv = read_matrix(kv, d);
    for (auto& l : m.layers) l.wo = read_matrix(d, d);
    for (auto& l : m.layers) l.rms_ffn = read_vector(d);
    for (auto& l : m.layers) l.w1 = read_matrix(hd, d);
    for (auto& l : m.layers) l.w2 = read_matrix(d, hd);
    for (auto& l : m.layers) l.w3 = read_matrix(hd, d);
    m.rms_final = read_vector(d);
    (void)read_vector(std::size_t(c.seq_len) * std::size_t(c.head_dim()));  // legacy freq_cis
    m.classifier = c.shared_classifier ? m.token_embedding : read_matrix(v, d);
    return m;
}

}  // namespace qift
