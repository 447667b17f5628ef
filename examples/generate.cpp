// SPDX-License-Identifier: MIT
// Text generation with a llama2.c model and its tokenizer: the float model and the W2A4KV4
// model side by side, greedy and seeded sampling, with prefill and decode tokens per second.
#include <qift/model/calibrate.hpp>
#include <qift/model/eval.hpp>
#include <qift/model/quarot.hpp>
#include <qift/model/tokenizer.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "example_support.hpp"

namespace {

using namespace qift;

struct options {
    std::string model = std::string(QIFT_SHARED_DIR) + "/models/prose6M.bin";
    std::string tokenizer = std::string(QIFT_SHARED_DIR) + "/models/prose6M_tokenizer.bin";
    std::string calib = std::string(QIFT_SHARED_DIR) + "/models/prose6M_calib.npy";
    std::string prompt = "The old ship";
    std::string set = "mnz";
    std::size_t tokens = 64, calib_windows = 16;
    float temperature = 0.8f;
    std::uint64_t seed = 42;
    bool gptq = true;
};

void usage() {
    std::puts(
        "usage: generate [--model FILE] [--tokenizer FILE] [--prompt TEXT] [--tokens N]\n"
        "                [--temperature T] [--seed S] [--set mnz|pot_mnz|standard|int4]\n"
        "                [--rtn] [--calib IDS.npy] [--calib-windows N]\n"
        "Continues the prompt with the float model and with its W2A4KV4 version (QuaRot\n"
        "rotations, A4 activations, KV4 cache; weights by GPTQ with sequential calibration on\n"
        "N windows of the calibration ids, or by --rtn), greedy and sampled at temperature T\n"
        "(seeded), and prints tokens per second of the prefill and of the decode.");
}

struct timing {
    double prefill_tps = 0, decode_tps = 0;
};

// Continues `prompt` by `n` tokens (greedy when rng is null), printing the text as it goes.
timing generate(const llama_model& m, const tokenizer& tok, const std::vector<int>& prompt,
                std::size_t n, float temperature, std::mt19937_64* rng) {
    const auto now = [] { return std::chrono::steady_clock::now(); };
    llama_state s(m);
    n = std::min(n, s.capacity() - prompt.size());
    const auto t0 = now();
    auto logits = forward(m, s, prompt);
    const auto t1 = now();
    std::string text = tok.decode(prompt);
    std::printf("%s", text.c_str());
    int prev = prompt.back();
    std::vector<double> p(std::size_t(m.config.vocab_size));
    for (std::size_t i = 0; i < n; ++i) {
        const std::span<const float> last = logits.row(logits.rows - 1);
        int next;
        if (rng == nullptr) {
            next = int(std::max_element(last.begin(), last.end()) - last.begin());
        } else {
            const float mx = *std::max_element(last.begin(), last.end());
            for (std::size_t v = 0; v < p.size(); ++v)
                p[v] = std::exp(double(last[v] - mx) / double(temperature));
            next = std::discrete_distribution<int>(p.begin(), p.end())(*rng);
        }
        if (next == tokenizer::eos_id || next == tokenizer::bos_id) break;
        std::printf("%s", std::string(tok.decode_piece(prev, next)).c_str());
        std::fflush(stdout);
        prev = next;
        logits = forward(m, s, std::span(&next, 1));
    }
    const auto t2 = now();
    std::printf("\n");
    const auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    return {double(prompt.size()) / secs(t0, t1),
            double(s.position() - prompt.size()) / secs(t1, t2)};
}

template <class L>
linear make(const matrix<float>& w, const site_statistics* st) {
    return quantize_linear<L>(w, input_quantization::a4_per_token(0.9f), st);
}

linear make_by_name(const std::string& set, const matrix<float>& w, const site_statistics* st) {
    if (set == "mnz") return make<levels::mnz>(w, st);
    if (set == "pot_mnz") return make<levels::pot_mnz>(w, st);
    if (set == "standard") return make<levels::standard>(w, st);
    if (set == "int4") return make<levels::int4>(w, st);
    detail::fail("generate: --set " + set + " is not one of mnz, pot_mnz, standard, int4");
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    example::args cl(argc, argv, "generate");
    while (cl.next()) {
        if (example::read_shared_flag(cl, opt)) continue;
        const std::string_view a = cl.flag();
        if (a == "--tokenizer")
            opt.tokenizer = cl.value();
        else if (a == "--prompt")
            opt.prompt = cl.value();
        else if (a == "--tokens")
            opt.tokens = cl.integer<std::size_t>();
        else if (a == "--temperature")
            opt.temperature = cl.real<float>();
        else if (a == "--set")
            opt.set = cl.value();
        else if (a == "--rtn")
            opt.gptq = false;
        else if (a == "--help" || a == "-h") {
            usage();
            return 0;
        } else {
            cl.unknown();
            usage();
            return 2;
        }
    }
    try {
        detail::require(opt.temperature > 0.0f, [&] {
            return "generate: --temperature must be positive, got " +
                   std::to_string(opt.temperature);
        });
        const auto ckpt = load_llama2c(opt.model);
        const tokenizer tok = tokenizer::load(opt.tokenizer, ckpt.config.vocab_size);
        check_tokenizer_matches(tok, ckpt.config, opt.model);
        const std::vector<int> prompt = tok.encode(opt.prompt, true, false);
        detail::require(prompt.size() < std::size_t(ckpt.config.seq_len), [&] {
            return "generate: the prompt is " + std::to_string(prompt.size()) +
                   " tokens, the context " + std::to_string(ckpt.config.seq_len);
        });
        const llama_weights w = llama_weights::from(ckpt);
        const llama_model fp32 = float_model(w);
        const llama_weights rotated = quarot(w, {.seed = 2606});
        llama_model q;
        if (opt.gptq) {
            const auto calib = load_token_ids(opt.calib, ckpt.config.vocab_size);
            std::fprintf(stderr, "quantizing with GPTQ (sequential, %zu calibration windows)...\n",
                         opt.calib_windows);
            q = quantize_calibrated(
                rotated,
                [&](std::size_t, linear_id, const matrix<float>& m, const site_statistics& st) {
                    return make_by_name(opt.set, m, &st);
                },
                kv_format::kv4_asymmetric(), calib, {.max_windows = opt.calib_windows});
        } else {
            q = build_model(
                rotated,
                [&](std::size_t, linear_id, const matrix<float>& m) {
                    return make_by_name(opt.set, m, nullptr);
                },
                kv_format::kv4_asymmetric());
        }
        std::printf("prompt: \"%s\" (%zu tokens)\n", opt.prompt.c_str(), prompt.size());
        const std::string qname = "W2A4KV4 " + opt.set + (opt.gptq ? " GPTQ" : " RTN");
        for (bool greedy : {true, false}) {
            for (const auto& [name, m] :
                 {std::pair<std::string, const llama_model*>{"FP32", &fp32}, {qname, &q}}) {
                std::mt19937_64 rng(opt.seed);
                if (greedy)
                    std::printf("\n== %s, greedy ==\n", name.c_str());
                else
                    std::printf("\n== %s, sampled at temperature %.2f, seed %llu ==\n",
                                name.c_str(), double(opt.temperature),
                                static_cast<unsigned long long>(opt.seed));
                const timing t =
                    generate(*m, tok, prompt, opt.tokens, opt.temperature, greedy ? nullptr : &rng);
                std::printf("[%s: prefill %.0f tokens/s, decode %.0f tokens/s]\n", name.c_str(),
                            t.prefill_tps, t.decode_tps);
            }
        }
    } catch (const qift::error& e) {
        std::fprintf(stderr, "generate: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "generate: bad argument: %s\n", e.what());
        return 2;
    }
    return 0;
}
