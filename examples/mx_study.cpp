// SPDX-License-Identifier: MIT
// MXFP4 activations on a llama2.c model: which rotation makes them work. For every linear input
// (4 sites × layers) each method of torq.hpp is fitted on calibration activations of the float
// model; the tool reports MXFP4 activation error, E2M1 code-usage entropy and the linears'
// output error on held-out activations, then perplexity end to end with MXFP4 weights and
// MXFP4 activations (KV4 cache), with float weights and MXFP4 activations, and with MXFP4
// weights and float activations (--csv, --svg for the chart).
#include <qift/model/calibrate.hpp>
#include <qift/model/eval.hpp>
#include <qift/model/quarot.hpp>
#include <qift/torq.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
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
    std::size_t windows = 0, calib_windows = 8, stat_windows = 4;
    std::uint64_t seed = 2605;
    std::vector<mx_rotation_method> methods{mx_rotation_method::none,
                                            mx_rotation_method::hadamard,
                                            mx_rotation_method::block_hadamard,
                                            mx_rotation_method::perq,
                                            mx_rotation_method::torq_inter,
                                            mx_rotation_method::torq_intra,
                                            mx_rotation_method::torq};
    bool csv = false, quiet = false, no_eval = false;
    std::string svg;
};

void usage() {
    std::puts(
        "usage: mx_study [--model FILE] [--test IDS.npy] [--calib IDS.npy] [--windows N]\n"
        "                [--calib-windows N] [--stat-windows N] [--seed S] [--methods a,b,...]\n"
        "                [--no-eval] [--csv] [--svg FILE] [--quiet]\n"
        "Fits each rotation method (none, hadamard, block-hadamard, perq, torq-inter, torq-intra,\n"
        "torq) per linear input of a llama2.c checkpoint (default ../shared/models/prose6M.bin)\n"
        "on --calib-windows windows of calibration ids (float model, norms folded; default 8),\n"
        "reports MXFP4 activation relative MSE, E2M1 code entropy and the linears' relative\n"
        "output error on --stat-windows windows of held-out ids (default 4) and on the fitting\n"
        "tokens, then perplexity on --windows held-out windows (default 0: all 857) with MXFP4\n"
        "weights × MXFP4 activations, float weights × MXFP4 activations and MXFP4 weights ×\n"
        "float activations, all with the KV4 cache. --no-eval skips the perplexity runs.");
}

matrix<float> copy_of(matrix_view<const float> x) {
    matrix<float> m(x.rows, x.cols);
    for (std::size_t r = 0; r < x.rows; ++r) std::copy_n(&x(r, 0), x.cols, &m(r, 0));
    return m;
}

/// Y = X·Wᵀ in float.
matrix<float> product(matrix_view<const float> x, matrix_view<const float> w) {
    matrix<float> y(x.rows, w.rows);
    float_weights(w).forward(x, y);
    return y;
}

/// Inter-block imbalance: the largest 32-block's mean energy over the mean block energy (1 when
/// every block carries the same energy, d/32 when one block carries all of it).
double block_imbalance(const matrix<float>& x) {
    const std::size_t blocks = x.cols() / mx_block_size;
    std::vector<double> e(blocks, 0.0);
    for (std::size_t t = 0; t < x.rows(); ++t)
        for (std::size_t k = 0; k < x.cols(); ++k)
            e[k / mx_block_size] += double(x(t, k)) * double(x(t, k));
    double total = 0, top = 0;
    for (double v : e) total += v, top = std::max(top, v);
    return top / (total / double(blocks));
}

double relative_error(const matrix<float>& ref, const matrix<float>& y) {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        const double d = double(y.data()[i]) - double(ref.data()[i]);
        num += d * d;
        den += double(ref.data()[i]) * double(ref.data()[i]);
    }
    return num / den;
}

/// Per method, summed over every (layer, site) or (layer, linear).
struct site_score {
    double mse_fit = 0, mse_test = 0, entropy_test = 0, imbalance = 0;
    double out_act = 0, out_both = 0;  // relative output error: W16·A-MX and W-MX·A-MX (test)
    double fit_seconds = 0, flops_per_token = 0;
    std::size_t sites = 0, linears = 0;
};

struct eval_row {
    std::string config;
    eval_result r;
};

/// Grouped bars per rotation (MXFP4 × MXFP4, float × MXFP4) against dashed reference lines
/// (FP32, and MXFP4 weights with float activations).
void write_svg(const std::string& path, const std::vector<std::string>& names,
               const std::vector<double>& both, const std::vector<double>& act, double fp32,
               double weights_only, const std::string& model, std::size_t tokens) {
    std::ofstream f(path);
    detail::require(bool(f), [&] { return "mx_study: cannot write " + path; });
    const double W = 780, H = 380, left = 70, right = 140, top = 60, bottom = 70;
    double hi = fp32;
    for (double v : both) hi = std::max(hi, v);
    for (double v : act) hi = std::max(hi, v);
    const double lo = fp32 * 0.97;
    hi *= 1.08;
    const auto py = [&](double p) {
        return top + (H - top - bottom) * (1 - std::log(p / lo) / std::log(hi / lo));
    };
    const double slot = (W - left - right) / double(names.size()), bar = slot * 0.36;
    f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
      << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' "
         "fill='white'/>\n";
    f << "<text x='" << W / 2
      << "' y='20' text-anchor='middle' font-size='14'>Perplexity with "
         "MXFP4 activations, per rotation (log scale)</text>\n";
    f << "<text x='" << W / 2 << "' y='38' text-anchor='middle' fill='#555'>" << model << ", "
      << tokens << " held-out tokens, KV4 cache</text>\n";
    for (int k = 0; k <= 4; ++k) {
        const double p = lo * std::pow(hi / lo, k / 4.0), y = py(p);
        f << "<line x1='" << left << "' x2='" << W - right << "' y1='" << y << "' y2='" << y
          << "' stroke='#ddd'/><text x='" << left - 6 << "' y='" << y + 4 << "' text-anchor='end'>"
          << std::round(p * 10) / 10 << "</text>\n";
    }
    const auto reference = [&](double p, const char* label, const char* color) {
        const double y = py(p);
        f << "<line x1='" << left << "' x2='" << W - right << "' y1='" << y << "' y2='" << y
          << "' stroke='" << color << "' stroke-dasharray='5,4'/><text x='" << W - right + 4
          << "' y='" << y + 4 << "' fill='" << color << "' font-size='11'>" << label << " "
          << std::round(p * 100) / 100 << "</text>\n";
    };
    reference(fp32, "FP32", "black");
    reference(weights_only, "W-MXFP4 A16", "#777");
    const auto bars = [&](const std::vector<double>& v, double dx, const char* color) {
        for (std::size_t i = 0; i < v.size(); ++i) {
            const double x = left + slot * double(i) + slot / 2 + dx, y = py(v[i]);
            f << "<rect x='" << x << "' y='" << y << "' width='" << bar << "' height='"
              << H - bottom - y << "' fill='" << color << "'/><text x='" << x + bar / 2 << "' y='"
              << y - 3 << "' text-anchor='middle' font-size='9'>" << std::round(v[i] * 100) / 100
              << "</text>\n";
        }
    };
    bars(both, -bar, "#c0392b");
    bars(act, 0, "#2e86c1");
    for (std::size_t i = 0; i < names.size(); ++i)
        f << "<text x='" << left + slot * (double(i) + 0.5) << "' y='" << H - bottom + 16
          << "' text-anchor='middle'>" << names[i] << "</text>\n";
    const double ly = H - 22;
    f << "<rect x='" << left << "' y='" << ly - 10 << "' width='12' height='12' "
      << "fill='#c0392b'/><text x='" << left + 18 << "' y='" << ly
      << "'>MXFP4 weights × MXFP4 activations</text><rect x='" << left + 280 << "' y='" << ly - 10
      << "' width='12' height='12' fill='#2e86c1'/><text x='" << left + 298 << "' y='" << ly
      << "'>float weights × MXFP4 activations</text>\n</svg>\n";
}

/// The same per-method table on a synthetic layer where the paper's imbalances exist: d = 768
/// inputs, Gaussian activations with log-normal channel scales (σ = 0.5) and 6 outlier channels
/// 50-200x louder in two blocks, W [256][768] Gaussian; fitted on 2048 tokens, measured on 1024
/// others.
void synthetic_table(const std::vector<mx_rotation_method>& methods, std::uint64_t seed) {
    const std::size_t d = 768, out = 256;
    std::mt19937_64 gen(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> channel(d);
    for (float& c : channel) c = std::exp(0.5f * nd(gen));
    const std::array<std::size_t, 6> loud{40, 41, 47, 300, 305, 310};
    const std::array<float, 6> gain{200, 120, 50, 150, 80, 60};
    const auto make_x = [&](std::size_t n) {
        matrix<float> x(n, d);
        for (std::size_t t = 0; t < n; ++t) {
            for (std::size_t k = 0; k < d; ++k) x(t, k) = channel[k] * nd(gen);
            for (std::size_t i = 0; i < loud.size(); ++i) x(t, loud[i]) *= gain[i];
        }
        return x;
    };
    const matrix<float> fx = make_x(2048), tx = make_x(1024);
    matrix<float> w(out, d);
    for (float& v : w.flat()) v = nd(gen) * 0.05f;
    const matrix<float> ref = product(tx, w);
    std::printf(
        "\nSynthetic layer (768 inputs, Gaussian, log-normal channel scales, 6 channels 50-200x "
        "louder in two blocks; 2048 fit / 1024 held-out tokens)\n%-15s %12s %9s %10s %13s %13s\n",
        "method", "act MSE test", "entropy", "imbalance", "out err W16", "out err W-MX");
    for (const auto method : methods) {
        const mx_rotation rot = mx_rotation::fit(method, fx, {.seed = seed});
        matrix<float> tr = tx, wr = w;
        rot.rotate_rows(tr);
        rot.rotate_rows(wr);
        const mxfp4_fit q = mxfp4_quality(tr);
        const matrix<float> ta = dequantize(quantize_mxfp4(tr));
        std::printf("%-15s %12.5f %9.4f %10.3f %13.5f %13.5f\n",
                    std::string(to_string(method)).c_str(), q.relative_mse, q.code_entropy,
                    block_imbalance(tr), relative_error(ref, product(ta, wr)),
                    relative_error(ref, product(ta, dequantize(quantize_mxfp4(wr)))));
    }
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    example::args cl(argc, argv, "mx_study");
    while (cl.next()) {
        if (example::read_shared_flag(cl, opt)) continue;
        const std::string_view a = cl.flag();
        if (a == "--stat-windows")
            opt.stat_windows = cl.integer<std::size_t>();
        else if (a == "--methods") {
            opt.methods.clear();
            for (const auto& s : cl.list()) {
                const auto m = parse_mx_rotation(s);
                if (!m) {
                    std::fprintf(stderr, "mx_study: unknown method '%s'\n", s.c_str());
                    return 2;
                }
                opt.methods.push_back(*m);
            }
        } else if (a == "--no-eval")
            opt.no_eval = true;
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
        const auto ckpt = load_llama2c(opt.model);
        const auto& c = ckpt.config;
        const std::size_t n_layers = std::size_t(c.n_layers);
        const auto test = load_token_ids(opt.test, c.vocab_size);
        const auto calib = load_token_ids(opt.calib, c.vocab_size);
        // Norm gains folded (exact), no residual/FFN rotation: every method starts from the
        // same unrotated inputs. The keys get QuaRot's online per-head Hadamard (it cancels in
        // q·kᵀ) so that the KV4 cache sees rotated keys, as in the W2A4KV4 tool; values stay
        // unrotated (QuaRot would fold a per-head Hadamard into v/o, which is a block
        // Hadamard-32 on o's input and would blur the "none" row).
        llama_weights w = quarot(llama_weights::from(ckpt), {.seed = opt.seed,
                                                             .rotate_residual = false,
                                                             .rotate_heads = false,
                                                             .rotate_ffn = false});
        w.head_rotation = rotation::for_size(std::size_t(c.head_dim()), opt.seed + 1);
        const kv_format kv4 = kv_format::kv4_asymmetric();
        example::progress_line line(opt.quiet, 44);
        std::string& current = line.label;
        const auto progress = line.callback();
        const auto now = [] { return example::clock_type::now(); };
        const auto secs = [](auto t0) { return example::seconds_since(t0); };

        current = "capturing calibration inputs";
        calibration_options co{.max_windows = opt.calib_windows, .raw = true};
        co.progress = progress;
        const auto fit_stats = calibrate(w, calib, co);
        current = "capturing held-out inputs";
        co.max_windows = opt.stat_windows;
        const auto test_stats = calibrate(w, test, co);
        if (!opt.csv)
            std::printf(
                "model %s (dim %d, hidden %d, %d layers), norms folded, keys Hadamard-rotated per "
                "head (online), KV4 cache\nrotations fitted on %zu calibration tokens per site "
                "(seed %llu); errors on %zu held-out tokens\n",
                opt.model.c_str(), c.dim, c.hidden_dim, c.n_layers, fit_stats[0][0].tokens,
                static_cast<unsigned long long>(opt.seed), test_stats[0][0].tokens);

        // Rotations per method, layer and site (shared by the linears of a site and by the
        // end-to-end models).
        using site_rotations = std::vector<std::array<std::shared_ptr<const mx_rotation>, 4>>;
        std::vector<site_rotations> rotations(opt.methods.size(), site_rotations(n_layers));
        std::vector<site_score> scores(opt.methods.size());
        if (opt.csv)
            std::printf(
                "method,layer,site,linear,act_rel_mse_fit,act_rel_mse_test,code_entropy_test,"
                "block_imbalance_test,out_rel_err_w16,out_rel_err_wmx\n");
        for (std::size_t mi = 0; mi < opt.methods.size(); ++mi) {
            const auto method = opt.methods[mi];
            auto& sc = scores[mi];
            current = "fitting " + std::string(to_string(method));
            for (std::size_t l = 0; l < n_layers; ++l) {
                for (std::size_t si = 0; si < site_count; ++si) {
                    const auto& fx = fit_stats[l][si].inputs;
                    const auto& tx = test_stats[l][si].inputs;
                    const auto t0 = now();
                    auto rot = std::make_shared<const mx_rotation>(
                        mx_rotation::fit(method, fx, {.seed = opt.seed + 17 * l + si}));
                    sc.fit_seconds += secs(t0);
                    sc.flops_per_token += rot->online_flops_per_token();
                    matrix<float> fr = copy_of(fx), tr = copy_of(tx);
                    rot->rotate_rows(fr);
                    rot->rotate_rows(tr);
                    const mxfp4_fit qf = mxfp4_quality(fr), qt = mxfp4_quality(tr);
                    sc.mse_fit += qf.relative_mse;
                    sc.mse_test += qt.relative_mse;
                    sc.entropy_test += qt.code_entropy;
                    ++sc.sites;
                    const matrix<float> ta = dequantize(quantize_mxfp4(tr));
                    const double imbalance = block_imbalance(tr);
                    sc.imbalance += imbalance;
                    for (linear_id id : all_linears) {
                        if (static_cast<std::size_t>(site_of(id)) != si) continue;
                        const matrix<float>& wt = w.layers[l][id];
                        matrix<float> wr = copy_of(wt);
                        rot->rotate_rows(wr);
                        const matrix<float> ref = product(tx, wt);
                        const double e_act = relative_error(ref, product(ta, wr));
                        const double e_both =
                            relative_error(ref, product(ta, dequantize(quantize_mxfp4(wr))));
                        sc.out_act += e_act;
                        sc.out_both += e_both;
                        ++sc.linears;
                        if (opt.csv)
                            std::printf("%s,%zu,%s,%s,%.6g,%.6g,%.5f,%.4f,%.6g,%.6g\n",
                                        std::string(to_string(method)).c_str(), l,
                                        std::string(site_names[si]).c_str(),
                                        std::string(name_of(id)).c_str(), qf.relative_mse,
                                        qt.relative_mse, qt.code_entropy, imbalance, e_act, e_both);
                    }
                    rotations[mi][l][si] = std::move(rot);
                }
                progress(l + 1, n_layers);
            }
        }
        if (!opt.csv) {
            std::printf(
                "\nMXFP4 activations per method (means over %zu layers x 4 sites, %zu linears)\n"
                "%-15s %12s %12s %9s %10s %13s %13s %8s %12s\n",
                n_layers, scores.empty() ? 0 : scores[0].linears, "method", "act MSE fit",
                "act MSE test", "entropy", "imbalance", "out err W16", "out err W-MX", "fit s",
                "flops/token");
            for (std::size_t mi = 0; mi < opt.methods.size(); ++mi) {
                const auto& sc = scores[mi];
                const double ns = double(sc.sites), nl = double(sc.linears);
                std::printf("%-15s %12.5f %12.5f %9.4f %10.3f %13.5f %13.5f %8.2f %12.0f\n",
                            std::string(to_string(opt.methods[mi])).c_str(), sc.mse_fit / ns,
                            sc.mse_test / ns, sc.entropy_test / ns, sc.imbalance / ns,
                            sc.out_act / nl, sc.out_both / nl, sc.fit_seconds,
                            sc.flops_per_token / double(n_layers));
            }
            std::printf(
                "(act MSE: ||x - MXFP4(x)||^2/||x||^2 of the rotated inputs; entropy: bits of "
                "E2M1 magnitude-code usage, max 3; imbalance: largest 32-block energy over the "
                "mean block energy; out err: ||XW^T - Q(XQ)(WQ)^T||^2/||XW^T||^2 "
                "with float W (W16) or MXFP4 W (W-MX); flops/token: the online rotations of one "
                "block)\n");
        }
        if (!opt.csv) synthetic_table(opt.methods, opt.seed);
        if (opt.no_eval) return 0;

        // End to end.
        current = "float reference";
        const llama_model fp32 = float_model(w);
        const reference_logits ref(fp32, test, opt.windows, progress);
        const std::size_t windows = ref.windows();
        std::vector<eval_row> rows;
        const auto run = [&](const std::string& name, const llama_model& m) {
            current = name;
            eval_options eo{.max_windows = windows, .cached_reference = &ref};
            eo.progress = progress;
            rows.push_back({name, evaluate(m, test, eo)});
            if (!opt.csv)
                std::printf("%-44s ppl %9.3f  KL %.4f  top-1 %.3f\n", name.c_str(),
                            rows.back().r.perplexity, rows.back().r.kl, rows.back().r.top1);
            std::fflush(stdout);
        };
        if (!opt.csv)
            std::printf("\nEnd to end, %zu held-out windows (%zu tokens), KV4 cache:\n", windows,
                        windows * std::size_t(c.seq_len));
        run("FP32", fp32);
        run("FP32 weights/activations, KV4",
            build_model(
                w, [](std::size_t, linear_id, const matrix<float>& m) { return linear(m); }, kv4));
        run("W-MXFP4 A16 KV4 (no rotation)",
            build_model(
                w,
                [](std::size_t, linear_id, const matrix<float>& m) {
                    return linear(quantize_mxfp4(m), input_quantization::none());
                },
                kv4));
        std::vector<std::string> names;
        std::vector<double> ppl_both, ppl_act;
        for (std::size_t mi = 0; mi < opt.methods.size(); ++mi) {
            const auto& rots = rotations[mi];
            for (bool mx_weights : {true, false}) {
                llama_model m = build_model(
                    w,
                    [&](std::size_t l, linear_id id, const matrix<float>& wt) {
                        matrix<float> wr = copy_of(wt);
                        rots[l][static_cast<std::size_t>(site_of(id))]->rotate_rows(wr);
                        return mx_weights ? linear(quantize_mxfp4(wr), input_quantization::mxfp4())
                                          : linear(wr, input_quantization::mxfp4());
                    },
                    kv4);
                for (std::size_t l = 0; l < n_layers; ++l)
                    for (std::size_t si = 0; si < site_count; ++si)
                        m.layers[l].input_rotation[si] = [r = rots[l][si]](matrix_view<float> x) {
                            r->rotate_rows(x);
                        };
                const std::string method(to_string(opt.methods[mi]));
                run((mx_weights ? "W-MXFP4 A-MXFP4 KV4, " : "W16 A-MXFP4 KV4, ") + method, m);
                (mx_weights ? ppl_both : ppl_act).push_back(rows.back().r.perplexity);
            }
            names.emplace_back(to_string(opt.methods[mi]));
        }
        if (opt.csv) {
            std::printf("\nconfig,perplexity,kl,top1,tokens\n");
            for (const auto& r : rows)
                std::printf("%s,%.4f,%.5f,%.4f,%zu\n", r.config.c_str(), r.r.perplexity, r.r.kl,
                            r.r.top1, r.r.tokens);
        }
        if (!opt.svg.empty()) {
            const auto slash = opt.model.find_last_of('/');
            write_svg(opt.svg, names, ppl_both, ppl_act, rows[0].r.perplexity, rows[2].r.perplexity,
                      opt.model.substr(slash == std::string::npos ? 0 : slash + 1),
                      windows * std::size_t(c.seq_len));
            if (!opt.csv) std::printf("wrote %s\n", opt.svg.c_str());
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "mx_study: %s\n", e.what());
        return 1;
    }
    return 0;
}
