// SPDX-License-Identifier: MIT
// End-to-end W2A4KV4 evaluation of a llama2.c model on held-out text: every level set by RTN
// and by GPTQ (float-input and sequential calibration), and the paper's L-layer W2/W4 sweep
// (--csv, --svg for the sweep chart).
#include <qift/model/calibrate.hpp>
#include <qift/model/eval.hpp>
#include <qift/model/hf.hpp>
#include <qift/model/quarot.hpp>
#include <qift/stats.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#if __has_include(<sys/resource.h>)
#include <sys/resource.h>

#include "example_support.hpp"
#endif

namespace {

using namespace qift;

struct options {
    std::string model = std::string(QIFT_SHARED_DIR) + "/models/prose6M.bin";
    std::string test = std::string(QIFT_SHARED_DIR) + "/models/prose6M_test.npy";
    std::string calib = std::string(QIFT_SHARED_DIR) + "/models/prose6M_calib.npy";
    std::size_t windows = 0, calib_windows = 0;
    std::uint64_t seed = 2606;
    float act_clip = 0.9f;
    std::vector<std::string> sets{"int4",    "int3", "standard", "asymmetric", "mnz",
                                  "pot_mnz", "nf2",  "lloyd",    "pm12"};
    std::vector<std::string> sweep_sets{"standard", "mnz", "pot_mnz"};
    std::vector<int> sweep{0, 1, 2, 3, 4, 5, 6};
    bool csv = false, quiet = false, activation_stats = false;
    std::string svg;
};

/// Peak resident memory of this process so far, in MiB (getrusage's ru_maxrss, KiB on Linux);
/// -1 where getrusage is missing.
double peak_rss_mib() {
#if __has_include(<sys/resource.h>)
    rusage u{};
    if (getrusage(RUSAGE_SELF, &u) == 0) return double(u.ru_maxrss) / 1024.0;
#endif
    return -1.0;
}

void usage() {
    std::puts(
        "usage: w2a4kv4 [--model FILE|DIR] [--test IDS.npy] [--calib IDS.npy] [--windows N]\n"
        "               [--calib-windows N] [--seed S] [--act-clip C] [--sets a,b,...]\n"
        "               [--sweep L1,L2,...] [--sweep-sets a,b,...] [--csv] [--svg FILE] [--quiet]\n"
        "               [--activation-stats]\n"
        "Evaluates a llama2.c checkpoint (default ../shared/models/prose6M.bin) or a Hugging Face\n"
        "Llama folder (config.json + model.safetensors, float32/16 or bfloat16) on held-out token\n"
        "ids (perplexity over windows of the context, KL from the float model, top-1 agreement):\n"
        "FP32, rotated FP32, and W<b>A4KV4 for each level set (int4, int3, standard, asymmetric,\n"
        "mnz, pot_mnz, nf2, lloyd, pm12) by RTN and by GPTQ calibrated on float-model inputs and\n"
        "sequentially; then the sweep with the last L blocks at W2 (GPTQ, sequential) and the\n"
        "rest at W4. --windows / --calib-windows limit the windows (0: all). --svg writes the\n"
        "sweep chart. --activation-stats prints, instead, how outlying each linear input's\n"
        "channels are before and after the rotations (float model, 32 calibration windows\n"
        "unless --calib-windows). Token ids come from the .npy files: a Hugging Face folder's\n"
        "tokenizer.json is not read, so the ids must be in its vocabulary.");
}

/// A weight quantizer chosen by name at run time: RTN (stats == nullptr) or GPTQ.
using weight_quantizer =
    std::function<linear(const matrix<float>&, input_quantization, const site_statistics*)>;

template <class L>
weight_quantizer quantizer_of() {
    return [](const matrix<float>& w, input_quantization in, const site_statistics* st) {
        return quantize_linear<L>(w, in, st);
    };
}

const std::map<std::string, weight_quantizer, std::less<>>& quantizers() {
    static const std::map<std::string, weight_quantizer, std::less<>> m{
        {"int4", quantizer_of<levels::int4>()},
        {"int3", quantizer_of<levels::int3>()},
        {"standard", quantizer_of<levels::standard>()},
        {"asymmetric", quantizer_of<levels::asymmetric>()},
        {"mnz", quantizer_of<levels::mnz>()},
        {"pot_mnz", quantizer_of<levels::pot_mnz>()},
        {"nf2", quantizer_of<levels::nf2>()},
        {"lloyd", quantizer_of<levels::lloyd>()},
        {"pm12", quantizer_of<levels::pm12>()},
    };
    return m;
}

const weight_quantizer& quantizer(std::string_view name) {
    const auto it = quantizers().find(name);
    detail::require(it != quantizers().end(), [&] {
        return "w2a4kv4: unknown level set '" + std::string(name) +
               "' (int4, int3, standard, asymmetric, mnz, pot_mnz, nf2, lloyd, pm12)";
    });
    return it->second;
}

std::string label_of(std::string_view set) {
    const std::string bits = set == "int4" ? "W4" : set == "int3" ? "W3" : "W2";
    return bits + "A4KV4 " + std::string(set);
}

struct row {
    std::string config, method;
    eval_result r;
    double seconds = 0;  // calibration + quantization
};

/// The sweep chart: perplexity (log scale) against L, one line per level set, reference
/// perplexities (FP32, W3) dashed.
void write_sweep_svg(const std::string& path, const std::vector<int>& Ls,
                     const std::map<std::string, std::vector<double>>& lines,
                     const std::vector<std::pair<std::string, double>>& references, int n_layers,
                     const std::string& model) {
    std::ofstream f(path);
    detail::require(bool(f), [&] { return "w2a4kv4: cannot write " + path; });
    const double W = 640, H = 400, left = 70, right = 150, top = 50, bottom = 50;
    double lo = references.front().second, hi = lo;
    for (const auto& [name, y] : references) lo = std::min(lo, y), hi = std::max(hi, y);
    for (const auto& [name, ys] : lines)
        for (double y : ys) lo = std::min(lo, y), hi = std::max(hi, y);
    lo *= 0.95, hi *= 1.05;
    const auto px = [&](double L) { return left + (W - left - right) * L / n_layers; };
    const auto py = [&](double p) {
        return top + (H - top - bottom) * (1 - std::log(p / lo) / std::log(hi / lo));
    };
    f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
      << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' "
         "fill='white'/>\n<text x='"
      << left << "' y='20' font-size='14'>" << model
      << ": perplexity with the last L blocks at W2, the rest at W4</text>\n<text x='" << left
      << "' y='36' font-size='11'>A4 activations, KV4 cache, GPTQ with sequential calibration; "
         "held-out test text</text>\n";
    for (int L = 0; L <= n_layers; ++L)
        f << "<line x1='" << px(L) << "' x2='" << px(L) << "' y1='" << top << "' y2='" << H - bottom
          << "' stroke='#eee'/><text x='" << px(L) << "' y='" << H - bottom + 16
          << "' text-anchor='middle'>" << L << "</text>\n";
    // Six ticks evenly spaced on the log axis, rounded to two significant digits.
    for (int i = 0; i <= 5; ++i) {
        const double v = lo * std::pow(hi / lo, i / 5.0),
                     unit = std::pow(10.0, std::floor(std::log10(v)) - 1),
                     tick = std::round(v / unit) * unit;
        if (tick < lo || tick > hi) continue;
        f << "<line x1='" << left << "' x2='" << W - right << "' y1='" << py(tick) << "' y2='"
          << py(tick) << "' stroke='#eee'/><text x='" << left - 6 << "' y='" << py(tick) + 4
          << "' text-anchor='end'>" << tick << "</text>\n";
    }
    f << "<text x='" << (left + W - right) / 2 << "' y='" << H - 12
      << "' text-anchor='middle'>L (blocks at W2)</text>\n<text x='16' y='"
      << (top + H - bottom) / 2 << "' transform='rotate(-90 16 " << (top + H - bottom) / 2
      << ")' text-anchor='middle'>perplexity (log scale)</text>\n";
    // Right-hand labels, pushed apart where they would overlap.
    struct label {
        double y;
        std::string text, color;
    };
    std::vector<label> labels;
    for (const auto& [name, value] : references) {
        f << "<line x1='" << left << "' x2='" << W - right << "' y1='" << py(value) << "' y2='"
          << py(value) << "' stroke='#555' stroke-dasharray='4 3'/>\n";
        char text[64];
        std::snprintf(text, sizeof text, "%s %.2f", name.c_str(), value);
        labels.push_back({py(value) + 4, text, "#555"});
    }
    const char* colors[] = {"#c0392b", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"};
    std::size_t i = 0;
    for (const auto& [name, ys] : lines) {
        const char* col = colors[i++ % 5];
        labels.push_back({py(ys.back()) + 4, name, col});
        f << "<polyline fill='none' stroke='" << col << "' stroke-width='2' points='";
        for (std::size_t k = 0; k < ys.size(); ++k) f << px(Ls[k]) << "," << py(ys[k]) << " ";
        f << "'/>\n";
        for (std::size_t k = 0; k < ys.size(); ++k)
            f << "<circle cx='" << px(Ls[k]) << "' cy='" << py(ys[k]) << "' r='3' fill='" << col
              << "'/>\n";
    }
    std::sort(labels.begin(), labels.end(),
              [](const label& a, const label& b) { return a.y < b.y; });
    for (std::size_t k = 1; k < labels.size(); ++k)
        labels[k].y = std::max(labels[k].y, labels[k - 1].y + 14);
    for (const auto& l : labels)
        f << "<text x='" << W - right + 6 << "' y='" << l.y << "' fill='" << l.color << "'>"
          << l.text << "</text>\n";
    f << "</svg>\n";
}

/// Per input site, averaged over blocks: the loudest channel's max|x| over the median channel's
/// (outlier channels), and the mean excess kurtosis of the tokens' values (heavy tails), for
/// the float model's inputs before and after the QuaRot rotations.
void print_activation_stats(const llama_weights& plain, const llama_weights& rotated,
                            const std::vector<int>& calib, std::size_t windows) {
    std::printf("%-14s %22s %22s\n", "", "max/median channel max", "excess kurtosis");
    std::printf("%-14s %11s %10s %11s %10s\n", "input", "plain", "rotated", "plain", "rotated");
    const auto analyse = [&](const llama_weights& w) {
        const auto st = calibrate(w, calib, {.max_windows = windows, .raw = true});
        std::array<std::pair<double, double>, site_count> out{};
        for (const auto& layer : st)
            for (std::size_t s = 0; s < site_count; ++s) {
                std::vector<float> m = layer[s].absmax;
                std::nth_element(m.begin(), m.begin() + long(m.size() / 2), m.end());
                const double median = m[m.size() / 2];
                const double mx = *std::max_element(m.begin(), m.end());
                out[s].first += mx / median / double(st.size());
                out[s].second +=
                    describe(layer[s].inputs.flat()).excess_kurtosis / double(st.size());
            }
        return out;
    };
    const auto a = analyse(plain), b = analyse(rotated);
    for (std::size_t s = 0; s < site_count; ++s)
        std::printf("%-14s %11.2f %10.2f %11.2f %10.2f\n", std::string(site_names[s]).c_str(),
                    a[s].first, b[s].first, a[s].second, b[s].second);
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    example::args cl(argc, argv, "w2a4kv4");
    while (cl.next()) {
        if (example::read_shared_flag(cl, opt)) continue;
        const std::string_view a = cl.flag();
        if (a == "--sets")
            opt.sets = cl.list();
        else if (a == "--sweep-sets")
            opt.sweep_sets = cl.list();
        else if (a == "--sweep")
            opt.sweep = cl.integer_list<int>();
        else if (a == "--activation-stats")
            opt.activation_stats = true;
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
        for (const auto& s : opt.sets) quantizer(s);
        for (const auto& s : opt.sweep_sets) quantizer(s);
        const auto ckpt = std::filesystem::is_directory(opt.model) ? load_hf_llama(opt.model)
                                                                   : load_llama2c(opt.model);
        const auto& c = ckpt.config;
        const std::size_t n_layers = std::size_t(c.n_layers);
        for (int L : opt.sweep)
            detail::require(L >= 0 && std::size_t(L) <= n_layers, [&] {
                return "w2a4kv4: --sweep " + std::to_string(L) + " outside [0, " +
                       std::to_string(n_layers) + "]";
            });
        const auto test = load_token_ids(opt.test, c.vocab_size);
        const auto calib = load_token_ids(opt.calib, c.vocab_size);
        const llama_weights weights = llama_weights::from(ckpt);
        const llama_model fp32 = float_model(weights);
        const llama_weights rotated = quarot(weights, {.seed = opt.seed});
        const input_quantization a4 = input_quantization::a4_per_token(opt.act_clip);
        const kv_format kv4 = kv_format::kv4_asymmetric();
        example::progress_line line(opt.quiet, 40);
        std::string& current = line.label;
        const auto progress = line.callback();
        const auto now = [] { return example::clock_type::now(); };
        const auto secs = [](auto t0) { return example::seconds_since(t0); };

        if (opt.activation_stats) {
            print_activation_stats(weights, rotated, calib,
                                   opt.calib_windows ? opt.calib_windows : 32);
            return 0;
        }
        current = "float reference logits";
        const reference_logits ref(fp32, test, opt.windows, progress);
        if (!opt.csv) {
            std::printf(
                "model %s: dim %d, hidden %d, %d layers, %d heads (%d kv, head_dim %d), "
                "vocab %d, context %d\n",
                opt.model.c_str(), c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                c.head_dim(), c.vocab_size, c.seq_len);
            std::printf(
                "rotations (seed %llu): residual %s (folded), per head %s on q/k (online) "
                "and v/o (folded), down_proj input %s (online)\n",
                static_cast<unsigned long long>(opt.seed),
                describe(rotation::for_size(std::size_t(c.dim), opt.seed)).c_str(),
                describe(*rotated.head_rotation).c_str(), describe(*rotated.ffn_rotation).c_str());
            std::printf(
                "quantized: every linear of every block (A4 per token, symmetric -7..7, "
                "clip %.2f; weights per channel, searched scale); KV4 asymmetric clip "
                "0.95. Float: embedding, norms, classifier, RoPE, softmax.\n"
                "evaluation: %zu windows x %d tokens of %s; calibration: %zu windows of "
                "%s\n\n",
                double(opt.act_clip), ref.windows(), c.seq_len, opt.test.c_str(),
                opt.calib_windows
                    ? std::min(opt.calib_windows, calib.size() / std::size_t(c.seq_len))
                    : calib.size() / std::size_t(c.seq_len),
                opt.calib.c_str());
            std::printf("%-26s %-10s %11s %9s %8s %9s\n", "configuration", "method", "perplexity",
                        "KL", "top-1", "quant s");
        }

        std::vector<row> rows;
        const auto add = [&](std::string config, std::string method, const llama_model& m,
                             double seconds) {
            current = config + " " + method;
            const eval_result r = evaluate(
                m, test,
                {.max_windows = opt.windows, .cached_reference = &ref, .progress = progress});
            rows.push_back({std::move(config), std::move(method), r, seconds});
            if (opt.csv) return;
            const auto& b = rows.back();
            std::printf("%-26s %-10s %11.3f %9.4f %7.2f%% %9.2f\n", b.config.c_str(),
                        b.method.c_str(), r.perplexity, r.kl, 100 * r.top1, b.seconds);
            std::fflush(stdout);
        };
        add("FP32", "", fp32, 0);
        add("rotated FP32", "", float_model(rotated), 0);

        // Float-input statistics do not depend on the quantizer: computed once.
        auto t0 = now();
        current = "calibration (float inputs)";
        const auto float_stats =
            calibrate(rotated, calib, {.max_windows = opt.calib_windows, .progress = progress});
        const double float_stats_seconds = secs(t0);

        // per_layer[l] names the level set of block l.
        const auto rtn = [&](const std::vector<std::string>& per_layer) {
            return build_model(
                rotated,
                [&](std::size_t l, linear_id, const matrix<float>& w) {
                    return quantizer(per_layer[l])(w, a4, nullptr);
                },
                kv4);
        };
        const auto gptq_float = [&](const std::vector<std::string>& per_layer) {
            return build_model(
                rotated,
                [&](std::size_t l, linear_id id, const matrix<float>& w) {
                    return quantizer(per_layer[l])(
                        w, a4, &float_stats[l][static_cast<unsigned>(site_of(id))]);
                },
                kv4);
        };
        const auto gptq_sequential = [&](const std::vector<std::string>& per_layer) {
            current = "sequential calibration";
            return quantize_calibrated(
                rotated,
                [&](std::size_t l, linear_id, const matrix<float>& w, const site_statistics& st) {
                    return quantizer(per_layer[l])(w, a4, &st);
                },
                kv4, calib, {.max_windows = opt.calib_windows, .progress = progress});
        };
        std::map<std::string, double> sequential_ppl;  // per uniform set, for the sweep
        for (const auto& set : opt.sets) {
            const std::vector<std::string> all(n_layers, set);
            t0 = now();
            auto m = rtn(all);
            add(label_of(set), "RTN", m, secs(t0));
            t0 = now();
            m = gptq_float(all);
            add(label_of(set), "GPTQ float", m, secs(t0) + float_stats_seconds);
            t0 = now();
            m = gptq_sequential(all);
            add(label_of(set), "GPTQ seq", m, secs(t0));
            sequential_ppl[set] = rows.back().r.perplexity;
        }

        // The sweep: the last L blocks at W2, the rest at W4, GPTQ with sequential calibration.
        std::map<std::string, std::vector<double>> lines;
        for (const auto& set : opt.sweep_sets)
            for (int L : opt.sweep) {
                std::vector<std::string> per_layer(n_layers, "int4");
                for (std::size_t l = n_layers - std::size_t(L); l < n_layers; ++l)
                    per_layer[l] = set;
                const std::string uniform = L == 0 ? "int4" : std::size_t(L) == n_layers ? set : "";
                if (!uniform.empty() && sequential_ppl.count(uniform)) {
                    lines[set].push_back(sequential_ppl[uniform]);
                    continue;
                }
                t0 = now();
                const auto m = gptq_sequential(per_layer);
                add("W2/W4 " + set + " L=" + std::to_string(L) + "/" + std::to_string(n_layers),
                    "GPTQ seq", m, secs(t0));
                lines[set].push_back(rows.back().r.perplexity);
                if (!uniform.empty()) sequential_ppl[uniform] = rows.back().r.perplexity;
            }
        if (!opt.csv && !opt.sweep.empty() && !opt.sweep_sets.empty()) {
            std::printf(
                "\nsweep (GPTQ seq): perplexity with the last L of %zu blocks at W2, the "
                "rest W4\n%-10s",
                n_layers, "L");
            for (int L : opt.sweep) std::printf(" %9d", L);
            std::printf("\n");
            for (const auto& [set, ys] : lines) {
                std::printf("%-10s", set.c_str());
                for (double y : ys) std::printf(" %9.2f", y);
                std::printf("\n");
            }
        }
        if (opt.csv) {
            std::puts("configuration,method,perplexity,kl,top1_agreement,tokens,quantize_seconds");
            for (const auto& r : rows)
                std::printf("%s,%s,%.6f,%.6f,%.6f,%zu,%.4f\n", r.config.c_str(), r.method.c_str(),
                            r.r.perplexity, r.r.kl, r.r.top1, r.r.tokens, r.seconds);
        }
        if (!opt.svg.empty()) {
            const auto slash = opt.model.find_last_of('/');
            // Dashed references: FP32, and W3A4KV4 (GPTQ seq) when it was evaluated.
            std::vector<std::pair<std::string, double>> refs{{"FP32", rows.front().r.perplexity}};
            if (sequential_ppl.count("int3")) refs.emplace_back("W3A4KV4", sequential_ppl["int3"]);
            write_sweep_svg(opt.svg, opt.sweep, lines, refs, int(n_layers),
                            opt.model.substr(slash == std::string::npos ? 0 : slash + 1));
            if (!opt.csv) std::printf("wrote %s\n", opt.svg.c_str());
        }
        std::fprintf(opt.csv ? stderr : stdout, "peak resident memory: %.1f MiB\n", peak_rss_mib());
    } catch (const qift::error& e) {
        std::fprintf(stderr, "\nw2a4kv4: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "\nw2a4kv4: bad argument: %s\n", e.what());
        return 2;
    }
    return 0;
}
