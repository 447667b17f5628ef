// SPDX-License-Identifier: MIT
// The level-set study: relative quantization error of every level set with a max-based and a
// searched per-channel scale, and the {±r, ±1} ratio sweep, on embedded synthetic weights or
// on every linear layer of a llama2.c checkpoint (--model FILE). --csv for machine output.
#include <qift/qift.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using namespace qift;

template <class... L>
struct type_list {};

using all_sets = type_list<levels::standard, levels::asymmetric, levels::ternary, levels::pm12,
                           levels::mnz, levels::pot_mnz, levels::nf2, levels::lloyd, levels::binary,
                           levels::int3, levels::int4, levels::e2m1>;

struct named_matrix {
    std::string name;
    matrix<float> w;
};

// Deterministic LLM-like weights: Student-t(5) rows (heavy tails) with log-normal per-row
// scales, and a few input channels (columns) ten times louder, as outlier features make them.
matrix<float> synthetic_llm_like(std::size_t rows, std::size_t cols, std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::student_t_distribution<float> t(5.0f);
    std::normal_distribution<float> n(0.0f, 0.5f);
    std::uniform_int_distribution<std::size_t> col(0, cols - 1);
    std::vector<float> column_gain(cols, 1.0f);
    for (int i = 0; i < 8; ++i) column_gain[col(gen)] = 10.0f;
    matrix<float> w(rows, cols);
    for (std::size_t r = 0; r < rows; ++r) {
        const float row_scale = 0.02f * std::exp(n(gen));
        for (std::size_t c = 0; c < cols; ++c) w(r, c) = row_scale * column_gain[c] * t(gen);
    }
    return w;
}

matrix<float> synthetic_gaussian(std::size_t rows, std::size_t cols, std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> n(0.0f, 0.02f);
    matrix<float> w(rows, cols);
    for (auto& x : w.flat()) x = n(gen);
    return w;
}

struct options {
    bool csv = false;
    std::string model;
};

struct row_result {
    std::string_view level_set;
    unsigned bits;
    double max_scale, searched, refined;
};

template <class L>
row_result study_one(const matrix<float>& w) {
    scale_options max_rule;
    max_rule.rule = scale_rule::max;
    scale_options search;  // GPTQ/QuaRot w_clip: exponent 2.4, p = 1 - i/100, i < 80
    scale_options refine;
    refine.exponent = 2.0f;
    refine.refine = true;
    return {level_set_name<L>(), L::bits, relative_mse(w, fake_quantize<L>(w, max_rule)),
            relative_mse(w, fake_quantize<L>(w, search)),
            relative_mse(w, fake_quantize<L>(w, refine))};
}

template <class... L>
std::vector<row_result> study(const matrix<float>& w, type_list<L...>) {
    return {study_one<L>(w)...};
}

template <int... N>
std::vector<std::pair<double, double>> ratio_sweep(const matrix<float>& w,
                                                   std::integer_sequence<int, N...>) {
    scale_options refine;
    refine.exponent = 2.0f;
    refine.refine = true;
    return {{N / 100.0, relative_mse(w, fake_quantize<levels::ratio<N>>(w, refine))}...};
}

// Returns the per-level-set rows so the caller can summarise over matrices.
std::vector<row_result> report(const named_matrix& m, const options& opt, bool sweep) {
    const auto stats = row_stats(m.w);
    const double kurt = mean_of(stats, &distribution_stats::excess_kurtosis);
    const double qq = mean_of(stats, &distribution_stats::qq_error);
    const auto rows = study(m.w, all_sets{});
    std::vector<std::pair<double, double>> sw;
    if (sweep)
        sw = ratio_sweep(m.w,
                         std::integer_sequence<int, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60>{});
    if (opt.csv) {
        for (const auto& r : rows)
            std::printf("%s,%zu,%zu,%.6f,%.6f,%.*s,%u,%.6f,%.6f,%.6f\n", m.name.c_str(), m.w.rows(),
                        m.w.cols(), kurt, qq, int(r.level_set.size()), r.level_set.data(), r.bits,
                        r.max_scale, r.searched, r.refined);
        for (const auto& [ratio, e] : sw)
            std::printf("%s,%zu,%zu,%.6f,%.6f,ratio_%.2f,2,,,%.6f\n", m.name.c_str(), m.w.rows(),
                        m.w.cols(), kurt, qq, ratio, e);
        return rows;
    }
    std::printf("\n%s  [%zu x %zu]  excess kurtosis %.3f, Q-Q error %.4f (means over rows)\n",
                m.name.c_str(), m.w.rows(), m.w.cols(), kurt, qq);
    std::printf("  %-11s %4s %11s %11s %11s\n", "level set", "bits", "max scale", "searched",
                "searched+LS");
    for (const auto& r : rows)
        std::printf("  %-11.*s %4u %11.5f %11.5f %11.5f\n", int(r.level_set.size()),
                    r.level_set.data(), r.bits, r.max_scale, r.searched, r.refined);
    if (!sw.empty()) {
        std::size_t best = 0;
        for (std::size_t i = 1; i < sw.size(); ++i)
            if (sw[i].second < sw[best].second) best = i;
        std::printf("  ratio sweep {±r, ±1}, searched+LS scale:");
        for (std::size_t i = 0; i < sw.size(); ++i)
            std::printf("%s r=%.2f %.5f", i % 4 == 0 ? "\n   " : "", sw[i].first, sw[i].second);
        std::printf("\n  minimum at r = %.2f\n", sw[best].first);
    }
    return rows;
}

void summarize(const std::vector<std::vector<row_result>>& all) {
    std::printf("\nmean over the %zu matrices\n", all.size());
    std::printf("  %-11s %4s %11s %11s %11s\n", "level set", "bits", "max scale", "searched",
                "searched+LS");
    for (std::size_t i = 0; i < all.front().size(); ++i) {
        double a = 0, b = 0, c = 0;
        for (const auto& rows : all)
            a += rows[i].max_scale, b += rows[i].searched, c += rows[i].refined;
        const double n = static_cast<double>(all.size());
        const auto& r = all.front()[i];
        std::printf("  %-11.*s %4u %11.5f %11.5f %11.5f\n", int(r.level_set.size()),
                    r.level_set.data(), r.bits, a / n, b / n, c / n);
    }
}

void usage() {
    std::puts(
        "usage: level_study [--model FILE] [--csv]\n"
        "  no arguments: embedded synthetic weights (LLM-like heavy-tailed with outlier\n"
        "  channels, and Gaussian), 1024 x 1024 each\n"
        "  --model FILE  every linear layer of a llama2.c checkpoint\n"
        "  --csv         machine-readable output\n"
        "Columns: relative MSE ||W - Q(W)||^2 / ||W||^2 with a per-output-channel scale:\n"
        "  max scale    outer clip level at max|w| (no clipping)\n"
        "  searched     GPTQ/QuaRot clipping grid, objective sum |w - q|^2.4\n"
        "  searched+LS  grid with objective sum |w - q|^2, then least-squares scale refinement");
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--csv") {
            opt.csv = true;
        } else if (a == "--model" && i + 1 < argc) {
            opt.model = argv[++i];
        } else if (a == "--help" || a == "-h") {
            usage();
            return 0;
        } else {
            std::fprintf(stderr, "level_study: unknown argument '%s'\n", argv[i]);
            usage();
            return 2;
        }
    }
    try {
        std::vector<named_matrix> mats;
        if (opt.model.empty()) {
            mats.push_back({"synthetic_llm_like", synthetic_llm_like(1024, 1024, 2606)});
            mats.push_back({"synthetic_gaussian", synthetic_gaussian(1024, 1024, 2823)});
        } else {
            auto model = load_llama2c(opt.model);
            const auto& c = model.config;
            if (!opt.csv)
                std::printf("model %s: dim %d, hidden %d, %d layers, %d heads (%d kv)\n",
                            opt.model.c_str(), c.dim, c.hidden_dim, c.n_layers, c.n_heads,
                            c.n_kv_heads);
            for (std::size_t l = 0; l < model.layers.size(); ++l) {
                auto& L = model.layers[l];
                const std::string p = "layer" + std::to_string(l) + ".";
                const std::pair<const char*, matrix<float>*> linears[] = {
                    {"wq", &L.wq}, {"wk", &L.wk}, {"wv", &L.wv}, {"wo", &L.wo},
                    {"w1", &L.w1}, {"w2", &L.w2}, {"w3", &L.w3}};
                for (auto [name, w] : linears) mats.push_back({p + name, std::move(*w)});
            }
        }
        if (opt.csv)
            std::puts(
                "matrix,rows,cols,excess_kurtosis,qq_error,level_set,bits,mse_max_scale,"
                "mse_searched,mse_searched_ls");
        else
            std::puts(
                "qift level study: relative MSE ||W - Q(W)||^2 / ||W||^2, per-channel scale, "
                "round-to-nearest");
        std::vector<std::vector<row_result>> all;
        for (const auto& m : mats) all.push_back(report(m, opt, opt.model.empty()));
        if (!opt.csv && !opt.model.empty()) summarize(all);
    } catch (const qift::error& e) {
        std::fprintf(stderr, "level_study: %s\n", e.what());
        return 1;
    }
    return 0;
}
