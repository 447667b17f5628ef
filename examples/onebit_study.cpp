// SPDX-License-Identifier: MIT
// One-bit post-training quantization of a llama2.c model (binary.hpp): XNOR, BiLLM, ARB,
// ARB-X, ARB-RC and output alignment (float target or not, AMP or not) at their true bits per
// weight, against W2 MNZ (GPTQ): per-layer relative output error of every block's down_proj in
// the sequentially quantized model (the depth curve, --svg) and end-to-end perplexity, KL and
// top-1 agreement with the float model on held-out text.
#include <qift/binary.hpp>
#include <qift/model/calibrate.hpp>
#include <qift/model/eval.hpp>
#include <qift/model/quarot.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "example_support.hpp"

namespace {

using namespace qift;

struct options {
    std::string model = std::string(QIFT_SHARED_DIR) + "/models/prose6M.bin";
    std::string test = std::string(QIFT_SHARED_DIR) + "/models/prose6M_test.npy";
    std::string calib = std::string(QIFT_SHARED_DIR) + "/models/prose6M_calib.npy";
    std::size_t windows = 256, calib_windows = 0;
    std::uint64_t seed = 2606;
    float act_clip = 0.9f;
    int iterations = 15;
    /// Linears that output alignment binarizes (the rest get ARB-RC); the paper: w2 only.
    std::vector<std::string> oa_linears{"w2"};
    std::vector<std::string> methods{"xnor", "arb",    "arb_x",  "arb_rc", "billm",      "oa_self",
                                     "oa",   "oa_amp", "oa_all", "mnz_w2", "mnz_w2a4kv4"};
    bool csv = false, quiet = false;
    std::string svg;
};

void usage() {
    std::puts(
        "usage: onebit_study [--model FILE] [--test IDS.npy] [--calib IDS.npy] [--windows N]\n"
        "                    [--calib-windows N] [--iterations K] [--oa-linears w2,...]\n"
        "                    [--methods a,b,...] [--seed S] [--act-clip C] [--csv] [--svg FILE]\n"
        "                    [--quiet]\n"
        "Binarizes every block linear of a llama2.c checkpoint (default\n"
        "../shared/models/prose6M.bin, unrotated, float activations and KV cache) with each\n"
        "method, calibrated sequentially (block l on the outputs of blocks 0..l-1 already\n"
        "binarized): xnor, arb, arb_x (Gram of the quantized stream), arb_rc, billm (GPTQ\n"
        "Hessian), oa / oa_amp (output alignment to the float target S = X^^T X, AMP off / on,\n"
        "on --oa-linears, ARB-RC elsewhere), oa_self (output alignment to its own input,\n"
        "S = X^^T X^ of the quantized stream, AMP on: no float target), oa_all (output\n"
        "alignment, float target, no AMP, on all seven linears). Baselines: mnz_w2 (W2 MNZ\n"
        "GPTQ seq, unrotated, float activations) and mnz_w2a4kv4 (QuaRot + W2 MNZ GPTQ seq\n"
        "+ A4 + KV4)."
        " Prints bits per weight, the relative output error of each block's down_proj and\n"
        "the perplexity, KL and top-1 agreement with the float model on --windows test windows\n"
        "(default 256 = 65,536 tokens; 0: all 857). --svg writes the error-vs-depth chart.\n"
        "--iterations sets the ARB / ARB-X / ARB-RC / output-alignment rounds.");
}

const std::map<std::string, std::string, std::less<>>& method_labels() {
    static const std::map<std::string, std::string, std::less<>> m{
        {"xnor", "XNOR"},
        {"arb", "ARB"},
        {"arb_x", "ARB-X"},
        {"arb_rc", "ARB-RC"},
        {"billm", "BiLLM"},
        {"oa_self", "OA self-target +AMP"},
        {"oa", "OA float-target"},
        {"oa_amp", "OA float-target +AMP"},
        {"oa_all", "OA all linears"},
        {"mnz_w2", "W2 MNZ GPTQ"},
        {"mnz_w2a4kv4", "W2A4KV4 MNZ QuaRot"},
    };
    return m;
}

/// One binarized linear: Ŵ (for the output error), its bits as the method counts them (fp16
/// scales, B2 only on salient columns) and its packed form, which the model runs.
struct made {
    matrix<float> w_hat;
    double bits = 0;
    binary_matrix packed;
};

struct method_result {
    std::string name, label;
    double bits_per_weight = 0;
    double stored_bits_per_weight = 0;  ///< what binary_matrix stores (0: not packed)
    /// err[l][id]: ‖XWᵀ − X̂Ŵᵀ‖²/‖XWᵀ‖² of linear id in block l (sequential streams).
    std::vector<std::array<double, 7>> err;
    bool has_err = false;
    eval_result r;
    double seconds = 0;
};

double mean_of(const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? 0.0 : s / double(v.size());
}

/// The depth chart: down_proj relative output error (log y) against block index, one line
/// per method.
void write_svg(const std::string& path, const std::vector<method_result>& rs,
               const std::string& model, std::size_t calib_tokens) {
    std::ofstream f(path);
    detail::require(bool(f), [&] { return "onebit_study: cannot write " + path; });
    std::vector<const method_result*> lines;
    for (const auto& r : rs)
        if (r.has_err) lines.push_back(&r);
    detail::require(!lines.empty(), [] { return std::string("onebit_study: no depth curves"); });
    const std::size_t n = lines.front()->err.size();
    const double W = 760, H = 420, left = 70, right = 240, top = 50, bottom = 50;
    double lo = 1e300, hi = 0;
    for (const auto* r : lines)
        for (const auto& e : r->err) {
            const double y = e[static_cast<unsigned>(linear_id::w2)];
            if (y > 0) lo = std::min(lo, y), hi = std::max(hi, y);
        }
    lo = std::pow(10.0, std::floor(std::log10(lo))), hi = std::pow(10.0, std::ceil(std::log10(hi)));
    if (hi <= lo) hi = lo * 10;
    const auto px = [&](double l) {
        return left + (W - left - right) * (n > 1 ? l / double(n - 1) : 0.5);
    };
    const auto py = [&](double e) {
        return top + (H - top - bottom) * (1 - std::log(e / lo) / std::log(hi / lo));
    };
    f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
      << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' "
         "fill='white'/>\n<text x='"
      << left << "' y='20' font-size='14'>" << model
      << ": down_proj output error vs depth, one-bit and W2</text>\n<text x='" << left
      << "' y='36' font-size='11'>‖XWᵀ − X̂Ŵᵀ‖² / ‖XWᵀ‖² "
         "(X float input, X̂ sequentially quantized stream), "
      << calib_tokens << " calibration tokens</text>\n";
    for (std::size_t l = 0; l < n; ++l)
        f << "<line x1='" << px(double(l)) << "' x2='" << px(double(l)) << "' y1='" << top
          << "' y2='" << H - bottom << "' stroke='#eee'/><text x='" << px(double(l)) << "' y='"
          << H - bottom + 16 << "' text-anchor='middle'>" << l << "</text>\n";
    for (double d = lo; d <= hi * 1.001; d *= 10)
        f << "<line x1='" << left << "' x2='" << W - right << "' y1='" << py(d) << "' y2='" << py(d)
          << "' stroke='#ddd'/><text x='" << left - 6 << "' y='" << py(d) + 4
          << "' text-anchor='end'>" << d << "</text>\n";
    f << "<text x='" << (left + W - right) / 2 << "' y='" << H - 12
      << "' text-anchor='middle'>block</text>\n<text x='16' y='" << (top + H - bottom) / 2
      << "' transform='rotate(-90 16 " << (top + H - bottom) / 2
      << ")' text-anchor='middle'>relative output error (log scale)</text>\n";
    struct label {
        double y, y_line;  // text baseline, and the height of its line's last point
        std::string text, color;
    };
    std::vector<label> labels;
    const char* colors[] = {"#c0392b", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e",
                            "#8c564b", "#e377c2", "#17becf", "#555555", "#bcbd22"};
    std::size_t i = 0;
    for (const auto* r : lines) {
        const char* col = colors[i++ % 10];
        const bool dashed = r->name.rfind("mnz", 0) == 0;
        std::vector<double> ys;
        for (const auto& e : r->err)
            ys.push_back(std::max(lo, e[static_cast<unsigned>(linear_id::w2)]));
        char text[96];
        std::snprintf(text, sizeof text, "%s (%.2f b)", r->label.c_str(), r->bits_per_weight);
        labels.push_back({py(ys.back()) + 4, py(ys.back()), text, col});
        f << "<polyline fill='none' stroke='" << col << "' stroke-width='2'"
          << (dashed ? " stroke-dasharray='5 3'" : "") << " points='";
        for (std::size_t k = 0; k < ys.size(); ++k) f << px(double(k)) << "," << py(ys[k]) << " ";
        f << "'/>\n";
        for (std::size_t k = 0; k < ys.size(); ++k)
            f << "<circle cx='" << px(double(k)) << "' cy='" << py(ys[k]) << "' r='3' fill='" << col
              << "'/>\n";
    }
    std::sort(labels.begin(), labels.end(),
              [](const label& a, const label& b) { return a.y < b.y; });
    for (std::size_t k = 1; k < labels.size(); ++k)
        labels[k].y = std::max(labels[k].y, labels[k - 1].y + 14);
    // Labels pushed apart are tied to their line's end by a short leader.
    for (const auto& l : labels) {
        if (l.y - 4 - l.y_line > 1)
            f << "<polyline fill='none' stroke='" << l.color << "' stroke-width='0.8' points='"
              << W - right + 2 << "," << l.y_line << " " << W - right + 14 << "," << l.y - 4
              << "'/>\n";
        f << "<text x='" << W - right + 18 << "' y='" << l.y << "' fill='" << l.color << "'>"
          << l.text << "</text>\n";
    }
    f << "</svg>\n";
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    example::args cl(argc, argv, "onebit_study");
    while (cl.next()) {
        if (example::read_shared_flag(cl, opt)) continue;
        const std::string_view a = cl.flag();
        if (a == "--iterations")
            opt.iterations = cl.integer<int>();
        else if (a == "--oa-linears")
            opt.oa_linears = cl.list();
        else if (a == "--methods")
            opt.methods = cl.list();
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
        for (const auto& m : opt.methods)
            detail::require(method_labels().count(m) != 0, [&] {
                return "onebit_study: unknown method '" + m +
                       "' (xnor, arb, arb_x, arb_rc, billm, oa_self, oa, oa_amp, oa_all, mnz_w2, "
                       "mnz_w2a4kv4)";
            });
        std::array<bool, 7> oa_on{};
        for (const auto& s : opt.oa_linears) {
            const auto it = std::find(linear_names.begin(), linear_names.end(), s);
            detail::require(it != linear_names.end(), [&] {
                return "onebit_study: unknown linear '" + s + "' (wq wk wv wo w1 w2 w3)";
            });
            oa_on[std::size_t(it - linear_names.begin())] = true;
        }
        const auto ckpt = load_llama2c(opt.model);
        const auto& c = ckpt.config;
        const std::size_t n_layers = std::size_t(c.n_layers), T = std::size_t(c.seq_len);
        const auto test = load_token_ids(opt.test, c.vocab_size);
        const auto calib = load_token_ids(opt.calib, c.vocab_size);
        const std::size_t calib_windows =
            opt.calib_windows ? std::min(opt.calib_windows, calib.size() / T) : calib.size() / T;
        const llama_weights weights = llama_weights::from(ckpt);
        const llama_model fp32 = float_model(weights);
        example::progress_line line(opt.quiet, 44);
        std::string& current = line.label;
        const auto progress = line.callback();
        const auto now = [] { return example::clock_type::now(); };
        const auto t_start = now();
        const auto secs = [](auto t0) { return example::seconds_since(t0); };

        current = "float reference logits";
        const reference_logits ref(fp32, test, opt.windows, progress);
        if (!opt.csv) {
            std::printf(
                "model %s: dim %d, hidden %d, %d layers, %d heads (%d kv), vocab %d, context "
                "%d\n",
                opt.model.c_str(), c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                c.vocab_size, c.seq_len);
            std::printf(
                "one-bit: every linear of every block binarized, weights as loaded (no rotation, "
                "norms as in the checkpoint), float activations and KV cache; the model runs the\n"
                "packed one-bit weights (binary_matrix, float GEMV/GEMM). Sequential "
                "calibration on %zu windows (%zu tokens) of %s;\n"
                "ARB/ARB-X/ARB-RC/OA %d rounds; OA on {",
                calib_windows, calib_windows * T, opt.calib.c_str(), opt.iterations);
            for (std::size_t k = 0; k < opt.oa_linears.size(); ++k)
                std::printf("%s%s", k ? "," : "", opt.oa_linears[k].c_str());
            std::printf(
                "}, ARB-RC on the others. bits/w: signs + every scale/mean/bitmap as the method "
                "counts them\n(fp16 values, B2 on salient columns only); stored: every byte of "
                "the packed binary_matrix (float32\nvalues, full planes); means over the block "
                "linears weighted by size; W2 MNZ: 2 + 16/in (one fp16 scale per output\n"
                "channel).\n"
                "W2 MNZ GPTQ: unrotated, float activations and KV (the per-bit-fair baseline); "
                "W2A4KV4 MNZ QuaRot: QuaRot (seed %llu) + A4 per token (clip %.2f) + KV4, the\n"
                "w2a4kv4 configuration. Evaluation: %zu windows x %zu tokens of %s.\n\n",
                static_cast<unsigned long long>(opt.seed), double(opt.act_clip), ref.windows(), T,
                opt.test.c_str());
        }

        output_alignment_options oa_opt{.iterations = opt.iterations,
                                        .init = {.iterations = opt.iterations}};
        const arb_rc_options rc_opt{.iterations = opt.iterations};
        const arb_options arb_opt{.iterations = opt.iterations};
        const auto rc = [&](const matrix<float>& w) {
            auto r = binarize_arb_rc(w, rc_opt);
            binary_matrix p = pack(r);
            return made{std::move(r.dequantized), double(r.storage.total_bits()), std::move(p)};
        };
        using binarizer =
            std::function<made(linear_id, const matrix<float>&, const site_statistics&)>;
        const auto oa_method = [&](amp_mode amp, bool self, bool all = false) -> binarizer {
            return [&, amp, self, all](linear_id id, const matrix<float>& w,
                                       const site_statistics& st) {
                if (!all && !oa_on[static_cast<unsigned>(id)]) return rc(w);
                output_alignment_options o = oa_opt;
                o.amp = amp;
                auto r = binarize_output_aligned(w, self ? st.gram : st.cross, st.gram, o);
                binary_matrix p = pack(r);
                return made{std::move(r.dequantized), double(r.storage.total_bits()), std::move(p)};
            };
        };
        const std::map<std::string, binarizer, std::less<>> binarizers{
            {"xnor",
             [](linear_id, const matrix<float>& w, const site_statistics&) {
                 auto r = binarize_xnor(w);
                 binary_matrix p = pack(r);
                 return made{std::move(r.dequantized), double(r.storage.total_bits()),
                             std::move(p)};
             }},
            {"arb",
             [&](linear_id, const matrix<float>& w, const site_statistics&) {
                 auto r = binarize_arb(w, arb_opt);
                 binary_matrix p = pack(r);
                 return made{std::move(r.dequantized), double(r.storage.total_bits()),
                             std::move(p)};
             }},
            {"arb_x",
             [&](linear_id, const matrix<float>& w, const site_statistics& st) {
                 auto r = binarize_arb_x(w, st.gram, arb_opt);
                 binary_matrix p = pack(r);
                 return made{std::move(r.dequantized), double(r.storage.total_bits()),
                             std::move(p)};
             }},
            {"arb_rc",
             [&](linear_id, const matrix<float>& w, const site_statistics&) { return rc(w); }},
            {"billm",
             [](linear_id, const matrix<float>& w, const site_statistics& st) {
                 auto r = binarize_billm(w, st.hessian());
                 binary_matrix p = pack(r);
                 return made{std::move(r.dequantized), double(r.storage.total_bits()),
                             std::move(p)};
             }},
            {"oa_self", oa_method(amp_mode::gradient_sign, true)},
            {"oa", oa_method(amp_mode::off, false)},
            {"oa_amp", oa_method(amp_mode::gradient_sign, false)},
            {"oa_all", oa_method(amp_mode::off, false, true)},
        };

        if (!opt.csv) {
            std::printf("%-22s %6s %7s %11s %9s %8s %10s %10s %10s %8s\n", "method", "bits/w",
                        "stored", "perplexity", "KL", "top-1", "down err", "all err", "last down",
                        "quant s");
        }
        std::vector<method_result> rows;
        const auto print_row = [&](const method_result& b) {
            if (opt.csv) return;
            char e1[16] = "-", e2[16] = "-", e3[16] = "-";
            if (b.has_err) {
                std::vector<double> down, all;
                for (const auto& e : b.err) {
                    down.push_back(e[static_cast<unsigned>(linear_id::w2)]);
                    for (double x : e) all.push_back(x);
                }
                std::snprintf(e1, sizeof e1, "%.4f", mean_of(down));
                std::snprintf(e2, sizeof e2, "%.4f", mean_of(all));
                std::snprintf(e3, sizeof e3, "%.4f", down.back());
            }
            char bits[16] = "32";
            if (b.bits_per_weight > 0) std::snprintf(bits, sizeof bits, "%.3f", b.bits_per_weight);
            char stored[16] = "-";
            if (b.stored_bits_per_weight > 0)
                std::snprintf(stored, sizeof stored, "%.3f", b.stored_bits_per_weight);
            std::printf("%-22s %6s %7s %11.3f %9.4f %7.2f%% %10s %10s %10s %8.1f\n",
                        b.label.c_str(), bits, stored, b.r.perplexity, b.r.kl, 100 * b.r.top1, e1,
                        e2, e3, b.seconds);
            std::fflush(stdout);
        };
        const auto evaluate_into = [&](method_result& mr, const llama_model& m) {
            current = mr.label + " evaluation";
            mr.r = evaluate(
                m, test,
                {.max_windows = opt.windows, .cached_reference = &ref, .progress = progress});
        };
        {
            method_result f{"fp32", "FP32", 0, 0, {}, false, {}, 0};
            evaluate_into(f, fp32);
            rows.push_back(std::move(f));
            print_row(rows.back());
        }

        for (const auto& name : opt.methods) {
            method_result mr{name, method_labels().find(name)->second, 0, 0, {}, false, {}, 0};
            mr.err.assign(n_layers, {});
            const auto t0 = now();
            double bits = 0, stored_bits = 0, weights_count = 0;
            // The relative output error of one made linear, from the site's Grams.
            const auto record = [&](std::size_t l, linear_id id, const matrix<float>& w,
                                    const matrix<float>& w_hat, const site_statistics& st) {
                const double full =
                    weighted_error(w, matrix<float>(w.rows(), w.cols()), st.gram_float);
                const double loss =
                    output_alignment_loss(w, w_hat, st.cross, st.gram, st.gram_float);
                mr.err[l][static_cast<unsigned>(id)] = full > 0 ? loss / full : 0.0;
            };
            current = mr.label;
            const calibration_options copt{.max_windows = calib_windows,
                                           .float_gram = true,
                                           .cross_gram = true,
                                           .progress = progress};
            if (name == "mnz_w2a4kv4") {
                const llama_weights rotated = quarot(weights, {.seed = opt.seed});
                const auto m = quantize_calibrated(
                    rotated,
                    [&](std::size_t, linear_id, const matrix<float>& w, const site_statistics& st) {
                        bits += 2.0 * double(w.size()) + 16.0 * double(w.rows());
                        weights_count += double(w.size());
                        return quantize_linear<levels::mnz>(
                            w, input_quantization::a4_per_token(opt.act_clip), &st);
                    },
                    kv_format::kv4_asymmetric(), calib,
                    {.max_windows = calib_windows, .progress = progress});
                mr.seconds = secs(t0);
                evaluate_into(mr, m);
            } else if (name == "mnz_w2") {
                const auto m = quantize_calibrated(
                    weights,
                    [&](std::size_t l, linear_id id, const matrix<float>& w,
                        const site_statistics& st) {
                        auto g = gptq<levels::mnz>(w, st.hessian());
                        record(l, id, w, g.dequantized, st);
                        bits += 2.0 * double(w.size()) + 16.0 * double(w.rows());
                        weights_count += double(w.size());
                        return linear(g.quantized, input_quantization::none());
                    },
                    kv_format::float32(), calib, copt);
                mr.has_err = true;
                mr.seconds = secs(t0);
                evaluate_into(mr, m);
            } else {
                const binarizer& bin = binarizers.find(name)->second;
                const auto m = quantize_calibrated(
                    weights,
                    [&](std::size_t l, linear_id id, const matrix<float>& w,
                        const site_statistics& st) {
                        made r = bin(id, w, st);
                        record(l, id, w, r.w_hat, st);
                        bits += r.bits;
                        stored_bits += 8.0 * double(r.packed.size_bytes());
                        weights_count += double(w.size());
                        return linear(std::move(r.packed), input_quantization::none());
                    },
                    kv_format::float32(), calib, copt);
                mr.has_err = true;
                mr.seconds = secs(t0);
                evaluate_into(mr, m);
            }
            mr.bits_per_weight = bits / weights_count;
            mr.stored_bits_per_weight = stored_bits / weights_count;
            rows.push_back(std::move(mr));
            print_row(rows.back());
        }

        // The depth curves.
        if (!opt.csv) {
            std::printf("\ndown_proj relative output error per block (sequential streams)\n%-22s",
                        "method");
            for (std::size_t l = 0; l < n_layers; ++l) std::printf(" %9zu", l);
            std::printf("\n");
            for (const auto& r : rows) {
                if (!r.has_err) continue;
                std::printf("%-22s", r.label.c_str());
                for (const auto& e : r.err)
                    std::printf(" %9.4f", e[static_cast<unsigned>(linear_id::w2)]);
                std::printf("\n");
            }
            std::printf("\nmean relative output error per linear over blocks\n%-22s", "method");
            for (auto nm : linear_names) std::printf(" %9s", std::string(nm).c_str());
            std::printf("\n");
            for (const auto& r : rows) {
                if (!r.has_err) continue;
                std::printf("%-22s", r.label.c_str());
                for (std::size_t k = 0; k < 7; ++k) {
                    double s = 0;
                    for (const auto& e : r.err) s += e[k];
                    std::printf(" %9.4f", s / double(r.err.size()));
                }
                std::printf("\n");
            }
        } else {
            std::puts(
                "method,bits_per_weight,stored_bits_per_weight,perplexity,kl,top1_agreement,tokens,"
                "quantize_seconds");
            for (const auto& r : rows)
                std::printf("%s,%.4f,%.4f,%.6f,%.6f,%.6f,%zu,%.3f\n", r.name.c_str(),
                            r.bits_per_weight, r.stored_bits_per_weight, r.r.perplexity, r.r.kl,
                            r.r.top1, r.r.tokens, r.seconds);
            std::puts("\nmethod,block,linear,relative_output_error");
            for (const auto& r : rows)
                if (r.has_err)
                    for (std::size_t l = 0; l < r.err.size(); ++l)
                        for (std::size_t k = 0; k < 7; ++k)
                            std::printf("%s,%zu,%s,%.6g\n", r.name.c_str(), l,
                                        std::string(linear_names[k]).c_str(), r.err[l][k]);
        }
        if (!opt.svg.empty()) {
            const auto slash = opt.model.find_last_of('/');
            write_svg(opt.svg, rows, opt.model.substr(slash == std::string::npos ? 0 : slash + 1),
                      calib_windows * T);
            if (!opt.csv) std::printf("wrote %s\n", opt.svg.c_str());
        }
        if (!opt.csv) std::printf("total %.0f s\n", secs(t_start));
    } catch (const qift::error& e) {
        std::fprintf(stderr, "\nonebit_study: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "\nonebit_study: bad argument: %s\n", e.what());
        return 2;
    }
    return 0;
}
