// SPDX-License-Identifier: MIT
// End-to-end W2A4KV4 inference of a llama2.c model with every level set, RTN and GPTQ, and
// mixed W2/W4 layers: perplexity, KL from the float model and top-1 agreement (--csv, --svg).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "quarot.hpp"

namespace {

using namespace llama;

struct options {
    std::string model = std::string(QIFT_SHARED_DIR) + "/models/stories260K.bin";
    int sequences = 8, tokens = 128, calibration = 16;
    std::uint64_t seed = 2606;
    float act_clip = 0.9f;
    std::vector<int> w2_layers{2, 3};
    bool csv = false;
    std::string svg;
};

struct row {
    std::string name, method;
    eval_result r;
    double seconds = 0;  // quantization time
};

void usage() {
    std::puts(
        "usage: w2a4kv4 [--model FILE] [--sequences N] [--tokens T] [--calibration N]\n"
        "               [--seed S] [--act-clip C] [--w2-layers L1,L2,...] [--csv] [--svg FILE]\n"
        "Evaluates a llama2.c checkpoint (default: ../shared/models/stories260K.bin) as FP32,\n"
        "rotated FP32, W4A4KV4, W3A4KV4, W2A4KV4 with every 2-bit level set (RTN and GPTQ), and\n"
        "mixed precision with the last L layers at W2 and the rest at W4 for the Qift sets.\n"
        "Evaluation: N sequences of T tokens sampled from the float model (seeded), calibration\n"
        "sequences from a different seed. Float: embeddings, norms, classifier, softmax.");
}

std::vector<int> parse_list(std::string_view s) {
    std::vector<int> out;
    while (!s.empty()) {
        const auto comma = s.find(',');
        out.push_back(std::stoi(std::string(s.substr(0, comma))));
        s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
    }
    return out;
}

void write_svg(const std::string& path, const std::vector<row>& rows) {
    std::ofstream f(path);
    const int bar_h = 16, left = 260, width = 520, top = 40;
    const int height = top + int(rows.size()) * (bar_h + 4) + 30;
    double max_log = 0;
    for (const auto& r : rows) max_log = std::max(max_log, std::log10(r.r.perplexity));
    f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << left + width + 80 << "' height='"
      << height << "' font-family='sans-serif' font-size='12'>\n"
      << "<text x='10' y='20' font-size='14'>Perplexity (log scale) on sequences sampled from "
         "the float model</text>\n";
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const auto& r = rows[i];
        const int y = top + int(i) * (bar_h + 4);
        const double w = std::max(1.0, width * std::log10(r.r.perplexity) / max_log);
        const char* color = r.name.find("mnz") != std::string::npos    ? "#2a7"
                            : r.name.find("FP32") != std::string::npos ? "#57a"
                                                                       : "#c65";
        f << "<text x='" << left - 6 << "' y='" << y + 12 << "' text-anchor='end'>" << r.name
          << (r.method.empty() ? "" : " " + r.method) << "</text>\n"
          << "<rect x='" << left << "' y='" << y << "' width='" << w << "' height='" << bar_h
          << "' fill='" << color << "'/>\n"
          << "<text x='" << left + w + 4 << "' y='" << y + 12 << "'>" << r.r.perplexity
          << "</text>\n";
    }
    f << "</svg>\n";
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        const auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "w2a4kv4: %s needs a value\n", argv[i]);
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--model")
            opt.model = value();
        else if (a == "--sequences")
            opt.sequences = std::stoi(value());
        else if (a == "--tokens")
            opt.tokens = std::stoi(value());
        else if (a == "--calibration")
            opt.calibration = std::stoi(value());
        else if (a == "--seed")
            opt.seed = std::stoull(value());
        else if (a == "--act-clip")
            opt.act_clip = std::stof(value());
        else if (a == "--w2-layers")
            opt.w2_layers = parse_list(value());
        else if (a == "--csv")
            opt.csv = true;
        else if (a == "--svg")
            opt.svg = value();
        else if (a == "--help" || a == "-h") {
            usage();
            return 0;
        } else {
            std::fprintf(stderr, "w2a4kv4: unknown argument '%s'\n", argv[i]);
            usage();
            return 2;
        }
    }
    try {
        qift::detail::require(opt.sequences > 0 && opt.tokens >= 2 && opt.calibration > 0, [&] {
            return "w2a4kv4: need --sequences > 0, --tokens >= 2, --calibration > 0";
        });
        const auto ckpt = qift::load_llama2c(opt.model);
        const auto& c = ckpt.config;
        qift::detail::require(opt.tokens <= c.seq_len, [&] {
            return "w2a4kv4: --tokens " + std::to_string(opt.tokens) + " exceeds seq_len " +
                   std::to_string(c.seq_len);
        });
        const model fp32 = float_model(ckpt);
        const auto eval_seqs = sample_sequences(fp32, opt.sequences, opt.tokens, opt.seed);
        const auto calib_seqs = sample_sequences(fp32, opt.calibration, opt.tokens, opt.seed + 1);
        const auto reference = logprobs(fp32, eval_seqs);
        const auto rotated = rotate(ckpt, opt.seed);
        const auto hessians = calibrate(rotated, calib_seqs);
        const auto kv = kv4_factory(c.head_dim(), std::size_t(opt.tokens));
        if (!opt.csv) {
            std::printf(
                "model %s: dim %d, hidden %d, %d layers, %d heads (%d kv, head_dim %d), vocab %d\n",
                opt.model.c_str(), c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                c.head_dim(), c.vocab_size);
            std::printf(
                "rotations: residual %s (folded), per-head hadamard %d on q/k (online) and v/o "
                "(folded), down_proj input %s (online)\n",
                rotated.residual_kind.c_str(), c.head_dim(), rotated.down_kind.c_str());
            std::printf(
                "quantized: every linear of every block (A4 per token, symmetric -7..7, clip "
                "%.2f; weights per-channel searched scale); KV4 asymmetric clip 0.95.\n"
                "float: token embedding, RMSNorms, classifier, RoPE, softmax.\n"
                "evaluation: %d sequences x %d tokens sampled from FP32 (seed %llu); GPTQ "
                "calibration: %d other sequences\n\n",
                double(opt.act_clip), opt.sequences, opt.tokens,
                static_cast<unsigned long long>(opt.seed), opt.calibration);
        }

        std::vector<row> rows;
        const auto add = [&](std::string name, std::string meth, const model& m, double secs) {
            rows.push_back(
                {std::move(name), std::move(meth), evaluate(m, reference, eval_seqs), secs});
            const auto& r = rows.back();
            if (opt.csv) return;
            std::printf("%-24s %-5s %12.3f %10.5f %8.2f%% %9.2f\n", r.name.c_str(),
                        r.method.c_str(), r.r.perplexity, r.r.kl, 100 * r.r.top1_agreement,
                        r.seconds);
            std::fflush(stdout);
        };
        if (!opt.csv)
            std::printf("%-24s %-5s %12s %10s %9s %9s\n", "configuration", "quant", "perplexity",
                        "KL", "top-1", "quant s");
        add("FP32", "", fp32, 0);
        add("rotated FP32", "", rotated_float_model(rotated), 0);

        const std::size_t n_layers = rotated.layers.size();
        const auto run = [&](const std::string& name, const std::vector<linear_factory>& f) {
            for (method m : {method::rtn, method::gptq}) {
                const auto t0 = std::chrono::steady_clock::now();
                const model q =
                    quantized_model(rotated, f, m == method::gptq ? &hessians : nullptr, kv);
                const double secs =
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                add(name, m == method::rtn ? "RTN" : "GPTQ", q, secs);
            }
        };
        const auto uniform = [&](linear_factory f) {
            return std::vector<linear_factory>(n_layers, f);
        };
        const float clip = opt.act_clip;
        run("W4A4KV4 int4", uniform(packed_factory<qift::levels::int4>(clip)));
        run("W3A4KV4 int3", uniform(packed_factory<qift::levels::int3>(clip)));
        run("W2A4KV4 standard", uniform(packed_factory<qift::levels::standard>(clip)));
        run("W2A4KV4 asymmetric", uniform(packed_factory<qift::levels::asymmetric>(clip)));
        run("W2A4KV4 mnz", uniform(packed_factory<qift::levels::mnz>(clip)));
        run("W2A4KV4 pot_mnz", uniform(packed_factory<qift::levels::pot_mnz>(clip)));
        run("W2A4KV4 nf2", uniform(packed_factory<qift::levels::nf2>(clip)));
        run("W2A4KV4 lloyd", uniform(packed_factory<qift::levels::lloyd>(clip)));
        run("W2A4KV4 pm12", uniform(packed_factory<qift::levels::pm12>(clip)));
        for (int L : opt.w2_layers) {
            qift::detail::require(L >= 0 && std::size_t(L) <= n_layers, [&] {
                return "w2a4kv4: --w2-layers " + std::to_string(L) + " outside [0, " +
                       std::to_string(n_layers) + "]";
            });
            const auto mixed = [&](linear_factory w2) {
                std::vector<linear_factory> f(n_layers, packed_factory<qift::levels::int4>(clip));
                for (std::size_t l = n_layers - std::size_t(L); l < n_layers; ++l) f[l] = w2;
                return f;
            };
            const std::string tag = " L=" + std::to_string(L) + "/" + std::to_string(n_layers);
            run("W2/W4 mnz" + tag, mixed(packed_factory<qift::levels::mnz>(clip)));
            run("W2/W4 pot_mnz" + tag, mixed(packed_factory<qift::levels::pot_mnz>(clip)));
        }
        if (opt.csv) {
            std::puts("configuration,method,perplexity,kl,top1_agreement,tokens,quantize_seconds");
            for (const auto& r : rows)
                std::printf("%s,%s,%.6f,%.6f,%.6f,%zu,%.4f\n", r.name.c_str(), r.method.c_str(),
                            r.r.perplexity, r.r.kl, r.r.top1_agreement, r.r.tokens, r.seconds);
        }
        if (!opt.svg.empty()) write_svg(opt.svg, rows);
    } catch (const qift::error& e) {
        std::fprintf(stderr, "w2a4kv4: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "w2a4kv4: bad argument: %s\n", e.what());
        return 2;
    }
    return 0;
}
