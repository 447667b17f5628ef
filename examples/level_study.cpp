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

// One matrix studied as given and after rotating its input dimension (W·Q, as a rotated model
// folds Q into its weights): a randomized Hadamard, or the seeded orthogonal fallback.
struct matrix_study {
    std::string rotation;
    double kurt[2], qq[2];
    std::vector<row_result> rows[2];
    std::vector<std::pair<double, double>> sweep[2];
};

matrix_study study_matrix(const named_matrix& m, bool sweep) {
    matrix_study st;
    matrix<float> rotated = m.w;
    const auto q = rotation::for_size(m.w.cols(), 2606);
    q.fold_into_input(rotated);
    st.rotation = q.type() == rotation::kind::hadamard ? "hadamard" : "random_orthogonal";
    for (int r = 0; r < 2; ++r) {
        const matrix<float>& w = r ? rotated : m.w;
        const auto stats = row_stats(w);
        st.kurt[r] = mean_of(stats, &distribution_stats::excess_kurtosis);
        st.qq[r] = mean_of(stats, &distribution_stats::qq_error);
        st.rows[r] = study(w, all_sets{});
        if (sweep)
            st.sweep[r] = ratio_sweep(
                w, std::integer_sequence<int, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60>{});
    }
    return st;
}

void print_csv(const named_matrix& m, const matrix_study& st) {
    for (int r = 0; r < 2; ++r) {
        const char* rot = r ? st.rotation.c_str() : "none";
        for (const auto& row : st.rows[r])
            std::printf("%s,%zu,%zu,%s,%.6f,%.6f,%.*s,%u,%.6f,%.6f,%.6f\n", m.name.c_str(),
                        m.w.rows(), m.w.cols(), rot, st.kurt[r], st.qq[r],
                        int(row.level_set.size()), row.level_set.data(), row.bits, row.max_scale,
                        row.searched, row.refined);
        for (const auto& [ratio, e] : st.sweep[r])
            std::printf("%s,%zu,%zu,%s,%.6f,%.6f,ratio_%.2f,2,,,%.6f\n", m.name.c_str(), m.w.rows(),
                        m.w.cols(), rot, st.kurt[r], st.qq[r], ratio, e);
    }
}

void print_table(const char* title, std::size_t rows, std::size_t cols, const matrix_study& st) {
    if (rows)
        std::printf("\n%s  [%zu x %zu], rotation: %s\n", title, rows, cols, st.rotation.c_str());
    else
        std::printf("\n%s, rotation: %s\n", title, st.rotation.c_str());
    std::printf("  excess kurtosis %.3f -> %.3f, Q-Q error %.4f -> %.4f (means over rows)\n",
                st.kurt[0], st.kurt[1], st.qq[0], st.qq[1]);
    std::printf("  %-11s %4s | %-29s | %-29s\n", "", "", "  unrotated", "  rotated");
    std::printf("  %-11s %4s | %9s %9s %9s | %9s %9s %9s\n", "level set", "bits", "max", "search",
                "search+LS", "max", "search", "search+LS");
    for (std::size_t i = 0; i < st.rows[0].size(); ++i) {
        const auto &a = st.rows[0][i], &b = st.rows[1][i];
        std::printf("  %-11.*s %4u | %9.5f %9.5f %9.5f | %9.5f %9.5f %9.5f\n",
                    int(a.level_set.size()), a.level_set.data(), a.bits, a.max_scale, a.searched,
                    a.refined, b.max_scale, b.searched, b.refined);
    }
    for (int r = 0; r < 2; ++r) {
        const auto& sw = st.sweep[r];
        if (sw.empty()) continue;
        std::size_t best = 0;
        for (std::size_t i = 1; i < sw.size(); ++i)
            if (sw[i].second < sw[best].second) best = i;
        std::printf("  ratio sweep {±r, ±1}, %s, search+LS:", r ? "rotated" : "unrotated");
        for (std::size_t i = 0; i < sw.size(); ++i)
            std::printf("%s r=%.2f %.5f", i % 4 == 0 ? "\n   " : "", sw[i].first, sw[i].second);
        std::printf("\n  minimum at r = %.2f\n", sw[best].first);
    }
}

// Mean over matrices of every column, printed as one more table.
void summarize(const std::vector<matrix_study>& all) {
    matrix_study mean = all.front();
    for (int r = 0; r < 2; ++r) {
        mean.kurt[r] = mean.qq[r] = 0;
        for (auto& row : mean.rows[r]) row.max_scale = row.searched = row.refined = 0;
        for (const auto& st : all) {
            mean.kurt[r] += st.kurt[r] / double(all.size());
            mean.qq[r] += st.qq[r] / double(all.size());
            for (std::size_t i = 0; i < st.rows[r].size(); ++i) {
                mean.rows[r][i].max_scale += st.rows[r][i].max_scale / double(all.size());
                mean.rows[r][i].searched += st.rows[r][i].searched / double(all.size());
                mean.rows[r][i].refined += st.rows[r][i].refined / double(all.size());
            }
        }
    }
    mean.rotation = "per matrix as above";
    const std::string title = "mean over the " + std::to_string(all.size()) + " matrices";
    print_table(title.c_str(), 0, 0, mean);
}

void usage() {
    std::puts(
        "usage: level_study [--model FILE] [--csv]\n"
        "  no arguments: embedded synthetic weights (LLM-like heavy-tailed with outlier\n"
        "  channels, and Gaussian), 1024 x 1024 each\n"
        "  --model FILE  every linear layer of a llama2.c checkpoint\n"
        "  --csv         machine-readable output\n"
        "Columns: relative MSE ||W - Q(W)||^2 / ||W||^2 with a per-output-channel scale,\n"
        "for W as given and for W*Q (input dimension rotated by a randomized Hadamard, or a\n"
        "seeded random orthogonal matrix where no Hadamard order exists):\n"
        "  max        outer clip level at max|w| (no clipping)\n"
        "  search     GPTQ/QuaRot clipping grid, objective sum |w - q|^2.4\n"
        "  search+LS  grid with objective sum |w - q|^2, then least-squares scale refinement");
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
                "matrix,rows,cols,rotation,excess_kurtosis,qq_error,level_set,bits,mse_max_scale,"
                "mse_searched,mse_searched_ls");
        else
            std::puts(
                "qift level study: relative MSE ||W - Q(W)||^2 / ||W||^2, per-channel scale, "
                "round-to-nearest");
        std::vector<matrix_study> all;
        for (const auto& m : mats) {
            all.push_back(study_matrix(m, opt.model.empty()));
            if (opt.csv)
                print_csv(m, all.back());
            else
                print_table(m.name.c_str(), m.w.rows(), m.w.cols(), all.back());
        }
        if (!opt.csv && !opt.model.empty()) summarize(all);
    } catch (const qift::error& e) {
        std::fprintf(stderr, "level_study: %s\n", e.what());
        return 1;
    }
    return 0;
}
