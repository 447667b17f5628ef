// SPDX-License-Identifier: MIT
// The smoothing study (SmoothRot, arXiv 2506.05413, and its follow-up, arXiv 2606.09927): on
// every down_proj of a llama2.c model and on synthetic layers with massive outlier channels,
// the layer error E of each scale policy on fitting and held-out tokens, the outlier statistic,
// end-to-end W4A4KV4 / W2A4KV4 perplexity per policy (RTN and GPTQ), and the cost of
// statistics, search and training against the float GEMM (--csv, --svg FILE for the chart).
#include <qift/model/calibrate.hpp>
#include <qift/model/eval.hpp>
#include <qift/model/quarot.hpp>
#include <qift/smooth.hpp>
#include <qift/stats.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "example_support.hpp"

namespace {

using namespace qift;

struct options {
    std::string model = std::string(QIFT_SHARED_DIR) + "/models/prose6M.bin";
    std::string test = std::string(QIFT_SHARED_DIR) + "/models/prose6M_test.npy";
    std::string calib = std::string(QIFT_SHARED_DIR) + "/models/prose6M_calib.npy";
    std::size_t windows = 256;        // end-to-end evaluation windows of the test ids
    std::size_t calib_windows = 8;    // fitting windows (scales) of the calibration ids
    std::size_t heldout_windows = 4;  // held-out windows for E: the last ones of the test ids
    std::size_t gptq_windows = 32;    // GPTQ (sequential) calibration windows
    std::uint64_t seed = quarot_options{}.seed;
    int steps = 100;
    double learning_rate = 0.01;
    float act_clip = 0.9f;
    std::vector<std::string> sets{"int4", "mnz", "pot_mnz"};
    std::vector<std::size_t> layers;  // empty: every block
    bool reuse_int4 = false, model_quantizers = false, end_to_end = true, synthetic = true;
    bool csv = false, quiet = false;
    std::string svg;
};

void usage() {
    std::puts(
        "usage: smooth_study [--model FILE] [--test IDS.npy] [--calib IDS.npy] [--windows N]\n"
        "                    [--calib-windows N] [--heldout-windows N] [--gptq-windows N]\n"
        "                    [--layers l1,l2,...] [--sets int4,mnz,pot_mnz] [--steps N] [--lr R]\n"
        "                    [--seed S] [--act-clip C] [--reuse-int4-scales] [--model-quantizers]\n"
        "                    [--no-end-to-end] [--no-synthetic] [--csv] [--svg FILE] [--quiet]\n"
        "Smoothing scales s on the down_proj input of a llama2.c model (default\n"
        "../shared/models/prose6M.bin), each policy fitted on the original float model's\n"
        "down_proj inputs of --calib-windows calibration windows (default 8 = 2048 tokens):\n"
        "rotation alone (s = 1), SmoothRot (max statistic) at alpha 0.5 and at its best\n"
        "alpha, the quantile policy (alpha 0.5, best q), the joint (alpha, q) search and\n"
        "Adam-trained scales (from the joint search; --steps, --lr). Prints the layer error\n"
        "E (QuaRot rotation, A4 per token absmax, weights per channel: absmax RTN for int4,\n"
        "the clipping search for mnz and pot_mnz) on the fitting tokens and on\n"
        "--heldout-windows held-out windows (the last of the test ids, default 4 = 1024\n"
        "tokens), absolute and relative to SmoothRot alpha 0.5; the same on two synthetic\n"
        "768 -> 256 layers with four input channels 50-200x the rest (on every token, and on\n"
        "2% of the tokens only: massive activations); how outlying each down_proj input is;\n"
        "the time of statistics, search and training against the float GEMM of the same\n"
        "tokens; and end-to-end perplexity (--windows test windows, default 256) of W4A4KV4\n"
        "int4 and W2A4KV4 mnz / pot_mnz with each policy's scales folded before QuaRot, by\n"
        "RTN and by GPTQ (sequential, --gptq-windows calibration windows, default 32).\n"
        "Scales are searched and trained per level set unless --reuse-int4-scales.\n"
        "--model-quantizers fits and measures E with the quantizers of the end-to-end model\n"
        "instead of the authors' metric (A4 clip --act-clip, weights with the searched\n"
        "scale). --layers limits the study (other blocks get s = 1). --svg writes the chart\n"
        "of E relative to SmoothRot alpha 0.5 and of the end-to-end perplexity change.");
}

using example::clock_type;
using example::seconds_since;

// ---------------------------------------------------------------------------------------
// Policies and the per-layer study

enum policy : std::size_t {
    rotation_only,
    smoothrot_half,
    smoothrot_best,
    quantile_half,
    joint_search,
    trained,
    policy_count
};
constexpr std::array<const char*, policy_count> policy_names{"rotation", "SR a=0.5", "SR best a",
                                                             "quantile", "joint",    "trained"};
constexpr std::array<const char*, policy_count> policy_keys{
    "rotation", "smoothrot_0.5", "smoothrot_best", "quantile_0.5", "joint", "trained"};

struct policy_error {
    std::vector<float> scales;  // empty: s = 1
    double alpha = std::numeric_limits<double>::quiet_NaN();
    double quantile = std::numeric_limits<double>::quiet_NaN();
    double fit = 0.0, held = 0.0;
    // E of the int4 study's scales under this level set's quantizers (W2 sets only).
    double reuse_fit = std::numeric_limits<double>::quiet_NaN();
    double reuse_held = std::numeric_limits<double>::quiet_NaN();
};

struct layer_study {
    std::string name;
    std::array<policy_error, policy_count> p;
    double fit_energy = 0.0, held_energy = 0.0;  // ‖X·Wᵀ‖²
    std::size_t best_step = 0, evaluations = 0;
    double max_delta = 0.0;
    double setup_s = 0.0, search_s = 0.0, train_s = 0.0;

    double rel(policy k, bool held) const {
        const double base = held ? p[smoothrot_half].held : p[smoothrot_half].fit;
        return 100.0 * ((held ? p[k].held : p[k].fit) / base - 1.0);
    }
};

/// What does not depend on the level set: the layer's tokens, weights and statistics.
struct layer_data {
    std::string name;
    matrix<float> fit, held;  // X [tokens][n]
    matrix<float> w;          // W [out][n], as the model's down_proj sees it (residual-rotated)
    std::uint64_t rotation_seed = default_smooth_rotation_seed;
    double capture_s = 0.0, stats_s = 0.0, gemm_s = 0.0;
};

std::size_t index_of(const std::vector<double>& grid, double v) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < grid.size(); ++i)
        if (std::fabs(grid[i] - v) < std::fabs(grid[best] - v)) best = i;
    return best;
}

/// Every policy of one layer onto level set L: the grid search (smooth_search's defaults:
/// α ∈ {0, 0.05, ..., 1}, q ∈ {0.9, 0.99, 0.995, 0.999, 0.9999, 1}) on the fitting tokens, the
/// policies read off its grid, Adam from the joint optimum, and every E on the held-out tokens.
template <level_set L>
layer_study study_layer(const layer_data& d, const options& opt, const layer_study* int4) {
    layer_study r;
    r.name = d.name;
    auto t0 = clock_type::now();
    smooth_quantizers<L> q;
    if (opt.model_quantizers) {
        q.activation_clip = opt.act_clip;
        q.weight_scale = scale_options{};
    }
    const smooth_layer<L> fit(d.fit, d.w, d.rotation_seed, q),
        held(d.held, d.w, d.rotation_seed, q);
    r.setup_s = seconds_since(t0);
    r.fit_energy = fit.reference_energy();
    r.held_energy = held.reference_energy();

    t0 = clock_type::now();
    const smooth_search_result g = smooth_search(fit);
    r.search_s = seconds_since(t0);
    r.evaluations = g.alphas.size() * g.quantiles.size() + 1;

    const matrix<float> stats = channel_quantiles(d.fit, g.quantiles);
    const std::vector<float> wstat = weight_channel_max(d.w);
    const std::size_t q1 = index_of(g.quantiles, 1.0), a05 = index_of(g.alphas, 0.5);
    const auto grid_point = [&](policy k, std::size_t qi, std::size_t ai) {
        policy_error& p = r.p[k];
        p.alpha = g.alphas[ai];
        p.quantile = g.quantiles[qi];
        p.scales = smooth_scales(stats.row(qi), wstat, p.alpha);
        p.fit = g.errors(qi, ai);
        p.held = held.error(p.scales);
    };
    const std::vector<float> ones(d.w.cols(), 1.0f);
    r.p[rotation_only].fit = g.rotation_error;
    r.p[rotation_only].held = held.error(ones);
    grid_point(smoothrot_half, q1, a05);
    std::size_t best_a = 0, best_q = 0;
    for (std::size_t ai = 1; ai < g.alphas.size(); ++ai)
        if (g.errors(q1, ai) < g.errors(q1, best_a)) best_a = ai;
    for (std::size_t qi = 1; qi < g.quantiles.size(); ++qi)
        if (g.errors(qi, a05) < g.errors(best_q, a05)) best_q = qi;
    grid_point(smoothrot_best, q1, best_a);
    grid_point(quantile_half, best_q, a05);
    grid_point(joint_search, index_of(g.quantiles, g.quantile), index_of(g.alphas, g.alpha));

    t0 = clock_type::now();
    smooth_training_options topt;
    topt.steps = opt.steps;
    topt.learning_rate = opt.learning_rate;
    const smooth_training_result t = train_smooth_scales(fit, g.scales, d.held, topt);
    r.train_s = seconds_since(t0);
    policy_error& p = r.p[trained];
    p.scales = t.scales;
    p.alpha = g.alpha;
    p.quantile = g.quantile;
    p.fit = t.error;
    p.held = t.heldout_error;
    r.best_step = t.best_step;
    for (double v : t.delta) r.max_delta = std::max(r.max_delta, std::fabs(v));

    if (int4)
        for (std::size_t k = 0; k < policy_count; ++k) {
            const auto& s = int4->p[k].scales.empty() ? ones : int4->p[k].scales;
            r.p[k].reuse_fit = fit.error(s);
            r.p[k].reuse_held = held.error(s);
        }
    return r;
}

/// A level set chosen by name at run time: its study, its end-to-end weight quantizer (RTN when
/// stats is null, GPTQ otherwise) and its label.
struct level_set_entry {
    std::string name, label;
    std::function<layer_study(const layer_data&, const options&, const layer_study*)> study;
    std::function<linear(const matrix<float>&, input_quantization, const site_statistics*)>
        quantize;
};

template <class L>
level_set_entry entry_of(std::string name, std::string label) {
    return {std::move(name), std::move(label), study_layer<L>,
            [](const matrix<float>& w, input_quantization in, const site_statistics* st) {
                return quantize_linear<L>(w, in, st);
            }};
}

level_set_entry level_set_named(std::string_view name) {
    if (name == "int4") return entry_of<levels::int4>("int4", "W4A4KV4 int4");
    if (name == "mnz") return entry_of<levels::mnz>("mnz", "W2A4KV4 mnz");
    if (name == "pot_mnz") return entry_of<levels::pot_mnz>("pot_mnz", "W2A4KV4 pot_mnz");
    detail::fail("smooth_study: unknown level set '" + std::string(name) +
                 "' (int4, mnz, pot_mnz)");
}

// ---------------------------------------------------------------------------------------
// Outlier statistics and the synthetic layer

struct outlier_stats {
    double top1 = 0.0, top4 = 0.0;  // largest and 4th largest channel absmax / median channel's
    std::size_t above10 = 0;        // channels whose absmax exceeds 10× the median
    double kurtosis = 0.0;          // excess kurtosis of all values
    double token_top1 = 0.0;        // the loudest token's max|x| over the median token's
    double rotated_top1 = 0.0, rotated_kurtosis = 0.0;
};

outlier_stats outliers_of(const matrix<float>& x, std::uint64_t rotation_seed) {
    const auto channel = [](const matrix<float>& m, outlier_stats& o) {
        std::vector<float> a = channel_absmax(m);
        std::sort(a.begin(), a.end(), std::greater<>());
        const double median = a[a.size() / 2];
        o.top1 = a[0] / median;
        o.top4 = a[std::min<std::size_t>(3, a.size() - 1)] / median;
        o.above10 = std::size_t(
            std::count_if(a.begin(), a.end(), [&](float v) { return double(v) > 10 * median; }));
        o.kurtosis = describe(m.flat()).excess_kurtosis;
        std::vector<float> tok(m.rows());
        for (std::size_t t = 0; t < m.rows(); ++t)
            for (float v : m.row(t)) tok[t] = std::max(tok[t], std::fabs(v));
        std::sort(tok.begin(), tok.end(), std::greater<>());
        o.token_top1 = tok[0] / tok[tok.size() / 2];
    };
    outlier_stats o, rotated;
    channel(x, o);
    matrix<float> xr = x;
    rotation::for_size(x.cols(), rotation_seed).rotate_rows(xr);
    channel(xr, rotated);
    o.rotated_top1 = rotated.top1;
    o.rotated_kurtosis = rotated.kurtosis;
    return o;
}

/// splitmix64 and Box-Muller: the same numbers on every platform.
class normal_source {
  public:
    explicit normal_source(std::uint64_t seed) : state_(seed) {}
    double operator()() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        const double u1 = uniform(), u2 = uniform();
        const double r = std::sqrt(-2.0 * std::log(u1)), phi = 2.0 * 3.14159265358979323846 * u2;
        spare_ = r * std::sin(phi);
        has_spare_ = true;
        return r * std::cos(phi);
    }
    std::uint64_t next() {
        std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }

  private:
    double uniform() { return (double(next() >> 11) + 0.5) * 0x1.0p-53; }
    std::uint64_t state_;
    double spare_ = 0.0;
    bool has_spare_ = false;
};

/// A synthetic layer: X [fit + held][768] Gaussian with log-normal per-token and per-channel
/// magnitudes (σ 0.2 and 0.3 in the log), W [256][768] Gaussian, and four input channels (at
/// seeded positions) 50, 100, 150 and 200 times louder: on every token ("synthetic", persistent
/// outlier channels, the case), or only on a random 2% of the tokens, the same tokens
/// for all four ("syn-spiky", massive activations: the channel's max is far above its typical
/// value, where a max statistic over-migrates and a quantile should not).
layer_data synthetic_layer(std::size_t fit_tokens, std::size_t held_tokens, bool spiky) {
    constexpr std::size_t n = 768, out = 256;
    normal_source rng(20260609);
    std::vector<double> gain(n);
    for (double& v : gain) v = std::exp(0.3 * rng());
    const double massive[] = {50, 100, 150, 200};
    std::vector<std::size_t> where;
    while (where.size() < 4) {
        const std::size_t j = std::size_t(rng.next() % n);
        if (std::find(where.begin(), where.end(), j) == where.end()) where.push_back(j);
    }
    std::vector<double> loud = gain;
    for (std::size_t i = 0; i < 4; ++i) loud[where[i]] = massive[i];
    if (!spiky) gain = loud;
    const auto tokens = [&](std::size_t count) {
        matrix<float> x(count, n);
        for (std::size_t t = 0; t < count; ++t) {
            const double m = std::exp(0.2 * rng());
            const bool spike = spiky && rng.next() % 50 == 0;
            const std::vector<double>& g = spike ? loud : gain;
            for (std::size_t j = 0; j < n; ++j) x(t, j) = float(m * g[j] * rng());
        }
        return x;
    };
    layer_data d;
    d.name = spiky ? "syn-spiky" : "synthetic";
    d.fit = tokens(fit_tokens);
    d.held = tokens(held_tokens);
    d.w = matrix<float>(out, n);
    for (float& v : d.w.flat()) v = float(rng() / std::sqrt(double(n)));
    return d;
}

/// Channel statistics (absmax and the search's six quantiles) and the float GEMM X·Wᵀ of the
/// fitting tokens, timed (the GEMM: best of five).
void time_statistics_and_gemm(layer_data& d) {
    auto t0 = clock_type::now();
    const std::vector<float> a = channel_absmax(d.fit);
    const std::vector<double> qs = smooth_search_options{}.quantiles;
    const matrix<float> q = channel_quantiles(d.fit, qs);
    d.stats_s = seconds_since(t0);
    (void)a;
    (void)q;
    const float_weights fw(d.w);
    matrix<float> y(d.fit.rows(), d.w.rows());
    d.gemm_s = std::numeric_limits<double>::infinity();
    for (int rep = 0; rep < 5; ++rep) {
        t0 = clock_type::now();
        fw.forward(d.fit, y);
        d.gemm_s = std::min(d.gemm_s, seconds_since(t0));
    }
}

// ---------------------------------------------------------------------------------------
// Tables

void print_error_table(const level_set_entry& set, const std::vector<layer_study>& studies,
                       const std::vector<layer_study>& synthetic, bool held, std::size_t tokens,
                       std::size_t synth_tokens) {
    std::printf(
        "\n%s, %s tokens (%zu per layer; synthetic %zu): E absolute | relative to SR a=0.5\n",
        set.label.c_str(), held ? "held-out" : "fitting", tokens, synth_tokens);
    std::printf("%-10s", "layer");
    for (const char* n : policy_names) std::printf(" %10s", n);
    std::printf(" |");
    for (std::size_t k = 0; k < policy_count; ++k)
        if (k != smoothrot_half) std::printf(" %9s", policy_names[k]);
    std::printf("\n");
    const auto row = [&](const std::string& name, const std::array<double, policy_count>& e) {
        std::printf("%-10s", name.c_str());
        for (double v : e) std::printf(" %10.4g", v);
        std::printf(" |");
        for (std::size_t k = 0; k < policy_count; ++k)
            if (k != smoothrot_half)
                std::printf(" %+8.1f%%", 100.0 * (e[k] / e[smoothrot_half] - 1));
        std::printf("\n");
    };
    std::array<double, policy_count> mean{}, mean_rel{};
    for (const auto& s : studies) {
        std::array<double, policy_count> e{};
        for (std::size_t k = 0; k < policy_count; ++k) {
            e[k] = held ? s.p[k].held : s.p[k].fit;
            mean[k] += e[k] / double(studies.size());
            mean_rel[k] += s.rel(policy(k), held) / double(studies.size());
        }
        row(s.name, e);
    }
    if (studies.size() > 1) {
        row("mean", mean);
        std::printf("%-10s %*s |", "mean of %", 11 * int(policy_count) - 1, "");
        for (std::size_t k = 0; k < policy_count; ++k)
            if (k != smoothrot_half) std::printf(" %+8.1f%%", mean_rel[k]);
        std::printf("\n");
    }
    for (const auto& s : synthetic) {
        std::array<double, policy_count> e{};
        for (std::size_t k = 0; k < policy_count; ++k) e[k] = held ? s.p[k].held : s.p[k].fit;
        row(s.name, e);
    }
}

void print_parameter_table(const level_set_entry& set, const std::vector<layer_study>& studies,
                           const std::vector<layer_study>& synthetic, int steps) {
    std::printf(
        "\n%s, chosen parameters and relative error E/|XW^T|^2 of SR a=0.5 (fit, held-out)\n",
        set.label.c_str());
    std::printf("%-10s %9s %11s %14s %13s %9s %11s %11s\n", "layer", "SR best a", "quantile q",
                "joint (a, q)", "trained step", "max|d|", "rel E fit", "rel E held");
    const auto row = [&](const layer_study& s) {
        const auto& p = s.p;
        std::printf("%-10s %9.2f %11.4g %6.2f,%7.4g %7zu/%-5d %9.3f %11.3e %11.3e\n",
                    s.name.c_str(), p[smoothrot_best].alpha, p[quantile_half].quantile,
                    p[joint_search].alpha, p[joint_search].quantile, s.best_step, steps,
                    s.max_delta, p[smoothrot_half].fit / s.fit_energy,
                    p[smoothrot_half].held / s.held_energy);
    };
    for (const auto& s : studies) row(s);
    for (const auto& s : synthetic) row(s);
}

/// For a W2 set: mean E over the layers (and each synthetic layer) with its own scales and
/// with the int4 study's scales.
void print_reuse_table(const level_set_entry& set, const std::vector<layer_study>& studies,
                       const std::vector<layer_study>& synthetic) {
    std::printf(
        "\n%s: mean E with scales searched/trained for %s (own) and with the int4 "
        "scales (reused)\n",
        set.label.c_str(), set.name.c_str());
    std::printf("%-10s %-8s", "", "");
    for (const char* n : policy_names) std::printf(" %10s", n);
    std::printf("\n");
    const auto block = [&](const std::string& name, const std::vector<const layer_study*>& ls) {
        for (int held = 0; held < 2; ++held)
            for (int reuse = 0; reuse < 2; ++reuse) {
                std::printf(
                    "%-10s %-8s", held ? "" : name.c_str(),
                    (std::string(held ? "held" : "fit") + (reuse ? " int4" : " own")).c_str());
                for (std::size_t k = 0; k < policy_count; ++k) {
                    double m = 0;
                    for (const layer_study* s : ls) {
                        const auto& p = s->p[k];
                        m += (held ? (reuse ? p.reuse_held : p.held)
                                   : (reuse ? p.reuse_fit : p.fit)) /
                             double(ls.size());
                    }
                    std::printf(" %10.4g", m);
                }
                std::printf("\n");
            }
    };
    std::vector<const layer_study*> all;
    for (const auto& s : studies) all.push_back(&s);
    block("layers", all);
    for (const auto& s : synthetic) block(s.name, {&s});
}

// ---------------------------------------------------------------------------------------
// The chart

std::string num(double v, int precision) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*f", precision, v);
    return buf;
}

struct bar_group {
    std::string label;
    std::vector<double> values;  // one per series, in %
};

struct bar_panel {
    std::string title;
    std::vector<bar_group> groups;
    std::vector<std::pair<double, std::string>> references{};  // dashed lines, in %
};

/// Panels of grouped bars (percent change against a baseline at 0), one legend for all; values
/// beyond ±cap are drawn to the edge and labelled.
void write_svg(const std::string& path, const std::string& title,
               const std::vector<std::string>& series, const std::vector<bar_panel>& panels) {
    std::ofstream f(path);
    detail::require(bool(f), [&] { return "smooth_study: cannot write " + path; });
    const char* colors[] = {"#7f7f7f", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#c0392b"};
    const double width = 1000, left = 70, right = 130, panel_h = 200, gap = 70, top = 70;
    const double height = top + double(panels.size()) * (panel_h + gap) + 10;
    const double cap = 40.0;
    f << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << left << "\" y=\"24\" font-size=\"15\" font-weight=\"bold\">" << title
      << "</text>\n";
    double lx = left;
    for (std::size_t s = 0; s < series.size(); ++s) {
        f << "<rect x=\"" << num(lx, 1) << "\" y=\"38\" width=\"12\" height=\"12\" fill=\""
          << colors[s % 6] << "\"/><text x=\"" << num(lx + 16, 1) << "\" y=\"48\" font-size=\"12\">"
          << series[s] << "</text>\n";
        lx += 26 + 7.0 * double(series[s].size());
    }
    for (std::size_t pi = 0; pi < panels.size(); ++pi) {
        const bar_panel& p = panels[pi];
        const double y0 = top + double(pi) * (panel_h + gap) + 20;
        double lo = 0, hi = 0;
        for (const auto& g : p.groups)
            for (double v : g.values)
                if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
        for (const auto& r : p.references) lo = std::min(lo, r.first), hi = std::max(hi, r.first);
        lo = std::max(lo, -cap), hi = std::min(hi, cap);
        const double step = hi - lo > 60 ? 20 : hi - lo > 24 ? 10 : hi - lo > 8 ? 5 : 1;
        lo = std::floor((lo - 0.04 * (hi - lo)) / step) * step;
        hi = std::ceil((hi + 0.04 * (hi - lo)) / step) * step;
        if (hi - lo < step) hi = lo + step;
        const auto py = [&](double v) {
            return y0 + panel_h * (hi - std::clamp(v, lo, hi)) / (hi - lo);
        };
        f << "<text x=\"" << left << "\" y=\"" << num(y0 - 8, 1)
          << "\" font-size=\"13\" font-weight=\"bold\">" << p.title << "</text>\n";
        for (double t = lo; t <= hi + 1e-9; t += step) {
            f << "<line x1=\"" << left << "\" x2=\"" << width - right << "\" y1=\"" << num(py(t), 1)
              << "\" y2=\"" << num(py(t), 1) << "\" stroke=\"" << (t == 0 ? "black" : "#e4e4e4")
              << "\"/>\n<text x=\"" << left - 6 << "\" y=\"" << num(py(t) + 4, 1)
              << "\" font-size=\"11\" text-anchor=\"end\">" << num(t, 0) << "%</text>\n";
        }
        for (const auto& [v, label] : p.references)
            f << "<line x1=\"" << left << "\" x2=\"" << width - right << "\" y1=\"" << num(py(v), 1)
              << "\" y2=\"" << num(py(v), 1)
              << "\" stroke=\"#c0392b\" stroke-dasharray=\"5 3\"/>\n<text x=\"" << width - right + 4
              << "\" y=\"" << num(py(v) + 4, 1) << "\" font-size=\"10\" fill=\"#c0392b\">" << label
              << "</text>\n";
        const double group_w = (width - left - right) / double(p.groups.size());
        const double bar_w = (group_w - 16) / double(series.size());
        for (std::size_t gi = 0; gi < p.groups.size(); ++gi) {
            const bar_group& g = p.groups[gi];
            const double gx = left + double(gi) * group_w + 8;
            f << "<text x=\"" << num(gx + (group_w - 16) / 2, 1) << "\" y=\""
              << num(y0 + panel_h + 16, 1) << "\" font-size=\"11\" text-anchor=\"middle\">"
              << g.label << "</text>\n";
            for (std::size_t s = 0; s < g.values.size(); ++s) {
                const double v = g.values[s];
                if (!std::isfinite(v)) continue;
                const double x = gx + double(s) * bar_w, ya = py(std::max(v, 0.0)),
                             yb = py(std::min(v, 0.0));
                f << "<rect x=\"" << num(x, 1) << "\" y=\"" << num(ya, 1) << "\" width=\""
                  << num(bar_w - 1, 1) << "\" height=\"" << num(std::max(yb - ya, 0.5), 1)
                  << "\" fill=\"" << colors[s % 6] << "\"><title>" << series[s] << ": " << num(v, 1)
                  << "%</title></rect>\n";
                if (v > hi || v < lo)  // the value beside the clipped end
                    f << "<text x=\"" << num(x + bar_w + 1, 1) << "\" y=\""
                      << num(v > hi ? ya + 9 : yb - 2, 1) << "\" font-size=\"10\">" << num(v, 0)
                      << "%</text>\n";
            }
        }
    }
    f << "</svg>\n";
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    example::args cl(argc, argv, "smooth_study");
    while (cl.next()) {
        if (example::read_shared_flag(cl, opt)) continue;
        const std::string_view a = cl.flag();
        if (a == "--heldout-windows")
            opt.heldout_windows = cl.integer<std::size_t>();
        else if (a == "--gptq-windows")
            opt.gptq_windows = cl.integer<std::size_t>();
        else if (a == "--layers")
            opt.layers = cl.integer_list<std::size_t>();
        else if (a == "--sets")
            opt.sets = cl.list();
        else if (a == "--steps")
            opt.steps = cl.integer<int>();
        else if (a == "--lr")
            opt.learning_rate = cl.real<double>();
        else if (a == "--reuse-int4-scales")
            opt.reuse_int4 = true;
        else if (a == "--model-quantizers")
            opt.model_quantizers = true;
        else if (a == "--no-end-to-end")
            opt.end_to_end = false;
        else if (a == "--no-synthetic")
            opt.synthetic = false;
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
        const auto start = clock_type::now();
        std::vector<level_set_entry> sets;
        for (const auto& s : opt.sets) sets.push_back(level_set_named(s));
        // int4 first: the W2 sets report E of its scales too.
        std::stable_partition(sets.begin(), sets.end(),
                              [](const level_set_entry& e) { return e.name == "int4"; });
        detail::require(!sets.empty(), [] { return std::string("smooth_study: no level set"); });
        detail::require(!opt.reuse_int4 || sets.front().name == "int4", [] {
            return std::string("smooth_study: --reuse-int4-scales needs int4 among --sets");
        });
        detail::require(opt.calib_windows >= 1 && opt.heldout_windows >= 1, [] {
            return std::string("smooth_study: --calib-windows and --heldout-windows must be >= 1");
        });

        const auto ckpt = load_llama2c(opt.model);
        const auto& c = ckpt.config;
        const std::size_t n_layers = std::size_t(c.n_layers), T = std::size_t(c.seq_len);
        if (opt.layers.empty()) {
            opt.layers.resize(n_layers);
            std::iota(opt.layers.begin(), opt.layers.end(), std::size_t{0});
        }
        for (std::size_t l : opt.layers)
            detail::require(l < n_layers, [&] {
                return "smooth_study: --layers " + std::to_string(l) + " outside [0, " +
                       std::to_string(n_layers) + ")";
            });
        const auto test = load_token_ids(opt.test, c.vocab_size);
        const auto calib = load_token_ids(opt.calib, c.vocab_size);
        const std::size_t test_windows = (test.size() - 1) / T;
        detail::require(
            opt.heldout_windows < test_windows && opt.calib_windows <= calib.size() / T, [&] {
                return "smooth_study: " + std::to_string(test_windows) + " test and " +
                       std::to_string(calib.size() / T) + " calibration windows available";
            });
        const llama_weights weights = llama_weights::from(ckpt);

        example::progress_line line(opt.quiet, 50);
        std::string& current = line.label;
        const auto progress = line.callback();
        const auto note = [&](const std::string& what) {
            current = what;
            if (!opt.quiet) std::fprintf(stderr, "\r%-50s\r", what.c_str());
        };

        // The original float model's down_proj inputs (the SwiGLU product, before any rotation
        // or smoothing): fitting tokens from the calibration ids, held-out from the test ids'
        // last windows (disjoint from the evaluation windows, which are the first ones).
        note("down_proj inputs (fitting tokens)");
        auto t0 = clock_type::now();
        auto fit_stats = calibrate(
            weights, calib, {.max_windows = opt.calib_windows, .raw = true, .progress = progress});
        const double capture_s = seconds_since(t0);
        note("down_proj inputs (held-out tokens)");
        const std::span<const int> held_ids = std::span<const int>(test).subspan(
            (test_windows - opt.heldout_windows) * T, opt.heldout_windows * T);
        auto held_stats =
            calibrate(weights, held_ids, {.max_windows = opt.heldout_windows, .raw = true});
        const rotation residual = rotation::for_size(std::size_t(c.dim), opt.seed);
        const unsigned down = static_cast<unsigned>(input_site::ffn_down);
        std::vector<layer_data> data;
        for (std::size_t l : opt.layers) {
            layer_data d;
            d.name = "layer " + std::to_string(l);
            d.fit = std::move(fit_stats[l][down].inputs);
            d.held = std::move(held_stats[l][down].inputs);
            // The down_proj the rotated model quantizes is Qᵀ·W2·diag(s)·R: the residual
            // rotation Q mixes its output rows (it commutes with s and R), R = the online FFN
            // rotation, which smooth_layer applies with the seed quarot() uses (seed + 2).
            d.w = weights.layers[l][linear_id::w2];
            residual.fold_into_output(d.w);
            d.rotation_seed = opt.seed + 2;
            d.capture_s = capture_s / double(n_layers);
            data.push_back(std::move(d));
        }
        fit_stats.clear();
        held_stats.clear();
        std::vector<outlier_stats> outliers;
        for (auto& d : data) {
            time_statistics_and_gemm(d);
            outliers.push_back(outliers_of(d.fit, d.rotation_seed));
        }
        std::vector<layer_data> synths;
        std::vector<outlier_stats> synth_outliers;
        if (opt.synthetic)
            for (bool spiky : {false, true}) {
                synths.push_back(
                    synthetic_layer(opt.calib_windows * T, opt.heldout_windows * T, spiky));
                time_statistics_and_gemm(synths.back());
                synth_outliers.push_back(
                    outliers_of(synths.back().fit, synths.back().rotation_seed));
            }

        if (!opt.csv) {
            std::printf(
                "model %s: dim %d, hidden %d, %d layers; down_proj W2 [%d][%d]\n"
                "rotations (seed %llu): residual %s (folded, also into the W2 rows E sees), "
                "down_proj input %s (online)\n"
                "fitting tokens: %zu calibration windows = %zu tokens of %s; held-out: the last "
                "%zu test windows = %zu tokens of %s\n"
                "E = |X W^T - Q_a(X~) Q_w(W~)^T|_F^2 (X~ = (X/s)H, W~ = (W diag s)H): %s; weight "
                "statistic max|W| per column (SmoothQuant's, not the reference's signed max)\n"
                "policies, each chosen per layer on E of the fitting tokens: SR = SmoothRot (a = "
                "max|X_j|); quantile = a = q-quantile of |X_j| at alpha 0.5, best q; joint = best "
                "(alpha, q) on the grid alpha 0, 0.05, ..., 1 x q {0.9, 0.99, 0.995, 0.999, "
                "0.9999, 1}; trained = Adam %d steps, lr %g in ln s, |delta| <= 1, mean delta 0, "
                "from the joint search; scales searched/trained per level set%s\n",
                opt.model.c_str(), c.dim, c.hidden_dim, c.n_layers, c.dim, c.hidden_dim,
                static_cast<unsigned long long>(opt.seed), describe(residual).c_str(),
                describe(rotation::for_size(std::size_t(c.hidden_dim), opt.seed + 2)).c_str(),
                opt.calib_windows, opt.calib_windows * T, opt.calib.c_str(), opt.heldout_windows,
                opt.heldout_windows * T, opt.test.c_str(),
                opt.model_quantizers
                    ? ("the end-to-end model's quantizers: A4 per token symmetric clip " +
                       num(opt.act_clip, 2) +
                       ", weights per output channel with qift's searched scale")
                          .c_str()
                    : "A4 per token symmetric absmax (clip 1), weights per output channel: int4 "
                      "absmax RTN (the authors' metric), mnz/pot_mnz qift's clipping search",
                opt.steps, opt.learning_rate,
                opt.reuse_int4 ? " (end to end: the int4 scales for every set)" : "");
            std::printf(
                "\nmassive outliers? down_proj input X of the float model, fitting tokens: "
                "channel absmax a_j over the median channel's\n%-10s %9s %9s %11s %10s %14s | "
                "%15s %15s\n",
                "layer", "max/med", "4th/med", "#a>10*med", "kurtosis", "token max/med",
                "rotated max/med", "rotated kurt.");
            const auto row = [](const std::string& name, const outlier_stats& o) {
                std::printf("%-10s %9.2f %9.2f %11zu %10.2f %14.2f | %15.2f %15.2f\n", name.c_str(),
                            o.top1, o.top4, o.above10, o.kurtosis, o.token_top1, o.rotated_top1,
                            o.rotated_kurtosis);
            };
            for (std::size_t i = 0; i < data.size(); ++i) row(data[i].name, outliers[i]);
            for (std::size_t i = 0; i < synths.size(); ++i) row(synths[i].name, synth_outliers[i]);
            std::printf(
                "(kurtosis: excess kurtosis of all values of X; token max/med: the loudest "
                "token's max|x| over the median token's; rotated: X·H, the down_proj input the "
                "quantizer sees without smoothing)\n");
            std::fflush(stdout);
        }

        // The studies, per level set.
        std::vector<std::vector<layer_study>> studies(sets.size());
        std::vector<std::vector<layer_study>> synth_studies(sets.size());
        for (std::size_t si = 0; si < sets.size(); ++si) {
            const bool w2 = sets[si].name != "int4";
            const bool reuse = w2 && sets.front().name == "int4";
            for (std::size_t i = 0; i < data.size(); ++i) {
                note(sets[si].name + " " + data[i].name + ": search and training");
                studies[si].push_back(
                    sets[si].study(data[i], opt, reuse ? &studies.front()[i] : nullptr));
            }
            for (std::size_t i = 0; i < synths.size(); ++i) {
                note(sets[si].name + " " + synths[i].name + ": search and training");
                synth_studies[si].push_back(
                    sets[si].study(synths[i], opt, reuse ? &synth_studies.front()[i] : nullptr));
            }
            if (opt.csv) continue;
            const std::vector<layer_study>& sy = synth_studies[si];
            print_error_table(sets[si], studies[si], sy, false, opt.calib_windows * T,
                              opt.calib_windows * T);
            print_error_table(sets[si], studies[si], sy, true, opt.heldout_windows * T,
                              opt.heldout_windows * T);
            print_parameter_table(sets[si], studies[si], sy, opt.steps);
            if (reuse) print_reuse_table(sets[si], studies[si], sy);
            std::fflush(stdout);
        }

        if (!opt.csv) {
            std::printf(
                "\nbenchmark (seconds, this machine): statistics = channel absmax + six "
                "quantiles of X (fitting tokens); setup = the two smooth_layers (X W^T "
                "of fit and held-out tokens); search = %zu E evaluations; train = %d "
                "Adam steps + held-out E; GEMM = float X W^T of the fitting tokens "
                "(best of 5); capture = calibrate() share per block (all four sites, "
                "grams, raw copies)\n",
                smooth_search_options{}.alphas.size() * smooth_search_options{}.quantiles.size() +
                    1,
                opt.steps);
            std::printf("%-8s %-10s %8s %8s %8s %8s %8s %9s %10s %10s %10s\n", "set", "layer",
                        "capture", "stats", "setup", "search", "train", "GEMM", "stats/GEMM",
                        "search/GEMM", "train/GEMM");
            for (std::size_t si = 0; si < sets.size(); ++si) {
                const auto row = [&](const layer_data& d, const layer_study& s) {
                    char capture[16] = "-";
                    if (d.capture_s > 0)
                        std::snprintf(capture, sizeof capture, "%.3f", d.capture_s);
                    std::printf(
                        "%-8s %-10s %8s %8.3f %8.3f %8.2f %8.2f %9.5f %10.0f %10.0f "
                        "%10.0f\n",
                        sets[si].name.c_str(), d.name.c_str(), capture, d.stats_s, s.setup_s,
                        s.search_s, s.train_s, d.gemm_s, d.stats_s / d.gemm_s,
                        s.search_s / d.gemm_s, s.train_s / d.gemm_s);
                };
                for (std::size_t i = 0; i < data.size(); ++i) row(data[i], studies[si][i]);
                for (std::size_t i = 0; i < synths.size(); ++i)
                    row(synths[i], synth_studies[si][i]);
            }
            std::fflush(stdout);
        }

        // End to end.
        struct e2e_row {
            std::size_t set;
            policy pol;
            eval_result rtn, gptq;
            double seconds = 0.0;
        };
        std::vector<e2e_row> e2e;
        std::vector<std::pair<std::string, eval_result>> float_rows;
        std::size_t eval_tokens = 0;
        if (opt.end_to_end) {
            const llama_model fp32 = float_model(weights);
            note("float reference logits");
            const reference_logits ref(fp32, test, opt.windows, progress);
            const input_quantization a4 = input_quantization::a4_per_token(opt.act_clip);
            const kv_format kv4 = kv_format::kv4_asymmetric();
            const auto scales_of = [&](std::size_t si, policy k) {
                std::vector<std::vector<float>> s;
                if (k == rotation_only) return s;
                s.assign(n_layers, std::vector<float>(std::size_t(c.hidden_dim), 1.0f));
                const std::size_t from = opt.reuse_int4 ? 0 : si;
                for (std::size_t i = 0; i < opt.layers.size(); ++i)
                    s[opt.layers[i]] = studies[from][i].p[k].scales;
                return s;
            };
            const auto eval = [&](const llama_model& m, const std::string& what) {
                note(what);
                return evaluate(
                    m, test,
                    {.max_windows = opt.windows, .cached_reference = &ref, .progress = progress});
            };
            float_rows.emplace_back("FP32", eval(fp32, "FP32"));
            float_rows.emplace_back(
                "rotated FP32",
                eval(float_model(quarot(weights, {.seed = opt.seed})), "rotated FP32"));
            float_rows.emplace_back(
                "rotated FP32, int4 trained scales",
                eval(float_model(
                         quarot(weights, {.seed = opt.seed, .ffn_scales = scales_of(0, trained)})),
                     "rotated FP32, trained scales"));
            eval_tokens = float_rows.front().second.tokens;
            for (std::size_t si = 0; si < sets.size(); ++si)
                for (std::size_t k = 0; k < policy_count; ++k) {
                    const policy pk = policy(k);
                    const std::string what = sets[si].name + " " + policy_names[k];
                    auto te = clock_type::now();
                    const llama_weights w =
                        quarot(weights, {.seed = opt.seed, .ffn_scales = scales_of(si, pk)});
                    const auto& quantize = sets[si].quantize;
                    e2e_row r{si, pk, {}, {}, 0.0};
                    r.rtn = eval(build_model(
                                     w,
                                     [&](std::size_t, linear_id, const matrix<float>& m) {
                                         return quantize(m, a4, nullptr);
                                     },
                                     kv4),
                                 what + " RTN");
                    note(what + " GPTQ calibration");
                    const llama_model g = quantize_calibrated(
                        w,
                        [&](std::size_t, linear_id, const matrix<float>& m,
                            const site_statistics& st) { return quantize(m, a4, &st); },
                        kv4, calib, {.max_windows = opt.gptq_windows, .progress = progress});
                    r.gptq = eval(g, what + " GPTQ");
                    r.seconds = seconds_since(te);
                    e2e.push_back(r);
                }
            if (!opt.csv) {
                std::printf(
                    "\nend to end on %s: %zu test windows = %zu predicted tokens (perplexity, KL "
                    "from FP32); every linear of every block quantized (A4 per token symmetric "
                    "clip %.2f, weights per channel with the searched scale: RTN, or GPTQ "
                    "sequential on %zu calibration windows), KV4 asymmetric clip 0.95; "
                    "smoothing on the down_proj input of %zu of %zu blocks\n",
                    opt.model.c_str(), float_rows.front().second.windows, eval_tokens,
                    double(opt.act_clip), opt.gptq_windows, opt.layers.size(), n_layers);
                for (const auto& [name, r] : float_rows)
                    std::printf("%-36s %10.3f %9.5f\n", name.c_str(), r.perplexity, r.kl);
                std::printf("%-16s %-10s %9s %8s %9s | %9s %8s %9s | %6s\n", "configuration",
                            "policy", "RTN ppl", "KL", "vs SR.5", "GPTQ ppl", "KL", "vs SR.5", "s");
                for (const auto& r : e2e) {
                    const e2e_row& base = e2e[(&r - e2e.data()) - std::ptrdiff_t(r.pol) +
                                              std::ptrdiff_t(smoothrot_half)];
                    std::printf("%-16s %-10s %9.3f %8.4f %+8.2f%% | %9.3f %8.4f %+8.2f%% | %6.1f\n",
                                sets[r.set].label.c_str(), policy_names[r.pol], r.rtn.perplexity,
                                r.rtn.kl, 100 * (r.rtn.perplexity / base.rtn.perplexity - 1),
                                r.gptq.perplexity, r.gptq.kl,
                                100 * (r.gptq.perplexity / base.gptq.perplexity - 1), r.seconds);
                }
            }
        }

        // The paper's figures against ours (int4, mean over the layers).
        if (!opt.csv && !studies.empty() && sets.front().name == "int4") {
            const auto& s4 = studies.front();
            const auto mean = [&](policy k, bool held) {
                double m = 0;
                for (const auto& s : s4) m += (held ? s.p[k].held : s.p[k].fit) / double(s4.size());
                return m;
            };
            std::printf(
                "\npaper (LLaMA-3.2-1B W4A4, vs SmoothRot): quantile -11.1%%, joint -12%%, "
                "trained -18.5%%; every down_proj, mean E 97.51 -> 78.08 (-19.9%%)\n");
            for (int held = 0; held < 2; ++held) {
                std::printf("here, W4A4 int4, mean E over %zu layers, %-8s vs SR a=0.5:", s4.size(),
                            held ? "held-out" : "fit");
                for (policy k : {smoothrot_best, quantile_half, joint_search, trained})
                    std::printf(" %s %+.1f%%", policy_names[k],
                                100 * (mean(k, held) / mean(smoothrot_half, held) - 1));
                std::printf("; vs SR best a:");
                for (policy k : {quantile_half, joint_search, trained})
                    std::printf(" %s %+.1f%%", policy_names[k],
                                100 * (mean(k, held) / mean(smoothrot_best, held) - 1));
                std::printf("\n");
            }
            for (const auto& sy : synth_studies.front())
                for (int held = 0; held < 2; ++held) {
                    std::printf("here, W4A4 int4, %-9s, %-8s vs SR a=0.5:", sy.name.c_str(),
                                held ? "held-out" : "fit");
                    for (policy k :
                         {rotation_only, smoothrot_best, quantile_half, joint_search, trained})
                        std::printf(" %s %+.1f%%", policy_names[k], sy.rel(k, held != 0));
                    std::printf("\n");
                }
        }

        if (opt.csv) {
            std::puts("section,set,layer,policy,method,metric,value");
            const auto put = [](const char* section, const std::string& set,
                                const std::string& layer, const std::string& pol,
                                const std::string& method, const char* metric, double v) {
                // A field with a comma (a float row's name) is quoted.
                const auto field = [](const std::string& f) {
                    return f.find(',') == std::string::npos ? f : "\"" + f + "\"";
                };
                std::printf("%s,%s,%s,%s,%s,%s,%.9g\n", section, set.c_str(), layer.c_str(),
                            field(pol).c_str(), method.c_str(), metric, v);
            };
            const auto put_outliers = [&](const std::string& name, const outlier_stats& o) {
                put("outliers", "", name, "", "", "max_over_median", o.top1);
                put("outliers", "", name, "", "", "fourth_over_median", o.top4);
                put("outliers", "", name, "", "", "channels_above_10x_median", double(o.above10));
                put("outliers", "", name, "", "", "excess_kurtosis", o.kurtosis);
                put("outliers", "", name, "", "", "token_max_over_median", o.token_top1);
                put("outliers", "", name, "", "", "rotated_max_over_median", o.rotated_top1);
                put("outliers", "", name, "", "", "rotated_excess_kurtosis", o.rotated_kurtosis);
            };
            for (std::size_t i = 0; i < data.size(); ++i) put_outliers(data[i].name, outliers[i]);
            for (std::size_t i = 0; i < synths.size(); ++i)
                put_outliers(synths[i].name, synth_outliers[i]);
            for (std::size_t si = 0; si < sets.size(); ++si) {
                const auto put_study = [&](const layer_data& d, const layer_study& s) {
                    const std::string& set = sets[si].name;
                    for (std::size_t k = 0; k < policy_count; ++k) {
                        const auto& p = s.p[k];
                        const std::string pol = policy_keys[k];
                        put("error", set, s.name, pol, "fit", "E", p.fit);
                        put("error", set, s.name, pol, "heldout", "E", p.held);
                        put("error", set, s.name, pol, "fit", "rel_smoothrot_0.5_pct",
                            s.rel(policy(k), false));
                        put("error", set, s.name, pol, "heldout", "rel_smoothrot_0.5_pct",
                            s.rel(policy(k), true));
                        put("error", set, s.name, pol, "", "alpha", p.alpha);
                        put("error", set, s.name, pol, "", "quantile", p.quantile);
                        if (std::isfinite(p.reuse_fit)) {
                            put("error", set, s.name, pol, "fit", "E_int4_scales", p.reuse_fit);
                            put("error", set, s.name, pol, "heldout", "E_int4_scales",
                                p.reuse_held);
                        }
                    }
                    put("error", set, s.name, "", "fit", "reference_energy", s.fit_energy);
                    put("error", set, s.name, "", "heldout", "reference_energy", s.held_energy);
                    put("timing", set, s.name, "", "", "capture_s", d.capture_s);
                    put("timing", set, s.name, "", "", "statistics_s", d.stats_s);
                    put("timing", set, s.name, "", "", "setup_s", s.setup_s);
                    put("timing", set, s.name, "", "", "search_s", s.search_s);
                    put("timing", set, s.name, "", "", "train_s", s.train_s);
                    put("timing", set, s.name, "", "", "float_gemm_s", d.gemm_s);
                };
                for (std::size_t i = 0; i < data.size(); ++i) put_study(data[i], studies[si][i]);
                for (std::size_t i = 0; i < synths.size(); ++i)
                    put_study(synths[i], synth_studies[si][i]);
            }
            for (const auto& [name, r] : float_rows) {
                put("perplexity", "", "", name, "", "ppl", r.perplexity);
                put("perplexity", "", "", name, "", "kl", r.kl);
            }
            for (const auto& r : e2e)
                for (int g = 0; g < 2; ++g) {
                    const eval_result& e = g ? r.gptq : r.rtn;
                    const std::string method = g ? "GPTQ" : "RTN";
                    put("perplexity", sets[r.set].name, "", policy_keys[r.pol], method, "ppl",
                        e.perplexity);
                    put("perplexity", sets[r.set].name, "", policy_keys[r.pol], method, "kl", e.kl);
                    put("perplexity", sets[r.set].name, "", policy_keys[r.pol], method, "top1",
                        e.top1);
                    put("perplexity", sets[r.set].name, "", policy_keys[r.pol], method, "tokens",
                        double(e.tokens));
                }
        }

        if (!opt.svg.empty()) {
            const std::vector<std::string> series{"rotation alone", "SmoothRot best a",
                                                  "quantile (a = 0.5)", "joint (a, q)", "trained"};
            const policy shown[] = {rotation_only, smoothrot_best, quantile_half, joint_search,
                                    trained};
            std::vector<bar_panel> panels;
            const level_set_entry& s0 = sets.front();
            for (int held = 0; held < 2; ++held) {
                bar_panel p;
                p.title = s0.label + ": layer error E vs SmoothRot a = 0.5, " +
                          (held ? "held-out tokens" : "fitting tokens");
                if (s0.name == "int4")
                    p.references = {{-11.1, "paper: quantile -11.1%"},
                                    {-18.5, "paper: trained -18.5%"}};
                const auto group = [&](const std::string& label, const layer_study& s) {
                    bar_group g{label, {}};
                    for (policy k : shown) g.values.push_back(s.rel(k, held != 0));
                    p.groups.push_back(std::move(g));
                };
                for (const auto& s : studies.front()) group(s.name, s);
                if (studies.front().size() > 1) {
                    bar_group g{"mean E", {}};
                    for (policy k : shown) {
                        double m = 0, base = 0;
                        for (const auto& s : studies.front()) {
                            m += held ? s.p[k].held : s.p[k].fit;
                            base += held ? s.p[smoothrot_half].held : s.p[smoothrot_half].fit;
                        }
                        g.values.push_back(100 * (m / base - 1));
                    }
                    p.groups.push_back(std::move(g));
                }
                for (const auto& sy : synth_studies.front()) group(sy.name, sy);
                panels.push_back(std::move(p));
            }
            if (!e2e.empty()) {
                bar_panel p;
                p.title =
                    "end to end (W4A4KV4 int4, W2A4KV4 mnz / pot_mnz): perplexity vs "
                    "SmoothRot a = 0.5 (" +
                    std::to_string(eval_tokens) + " test tokens)";
                for (std::size_t si = 0; si < sets.size(); ++si)
                    for (int g = 0; g < 2; ++g) {
                        bar_group grp{sets[si].name + (g ? " GPTQ" : " RTN"), {}};
                        const auto find = [&](policy k) -> const e2e_row& {
                            return *std::find_if(e2e.begin(), e2e.end(), [&](const e2e_row& r) {
                                return r.set == si && r.pol == k;
                            });
                        };
                        const e2e_row& base = find(smoothrot_half);
                        for (policy k : shown) {
                            const e2e_row& r = find(k);
                            grp.values.push_back(
                                100 * ((g ? r.gptq.perplexity : r.rtn.perplexity) /
                                           (g ? base.gptq.perplexity : base.rtn.perplexity) -
                                       1));
                        }
                        p.groups.push_back(std::move(grp));
                    }
                panels.push_back(std::move(p));
            }
            const auto slash = opt.model.find_last_of('/');
            write_svg(opt.svg,
                      "Smoothing the down_proj input: " +
                          opt.model.substr(slash == std::string::npos ? 0 : slash + 1) +
                          ", every policy relative to SmoothRot a = 0.5",
                      series, panels);
            if (!opt.csv) std::printf("wrote %s\n", opt.svg.c_str());
        }
        if (!opt.csv) std::printf("total time %.1f s\n", seconds_since(start));
    } catch (const qift::error& e) {
        std::fprintf(stderr, "\nsmooth_study: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "\nsmooth_study: bad argument: %s\n", e.what());
        return 2;
    }
    return 0;
}
