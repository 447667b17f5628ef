// SPDX-License-Identifier: MIT
// Rotation quality at widths n = K·2^m: excess kurtosis, Q-Q error and MNZ W2 quantization error
// of weight rows after W·Q with no rotation, a true randomized Hadamard, the seeded orthogonal
// Kronecker construction (Q_K ⊗ FWHT) and a dense Haar rotation, on real and synthetic weights.
#include <qift/model/llama2c.hpp>
#include <qift/qift.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "example_support.hpp"

using namespace qift;

namespace {

struct metrics {
    double kurtosis = 0, qq = 0, mnz = 0;
};

// Means over the rows of W (each row one output channel, as quantized).
metrics measure(const matrix<float>& w) {
    const auto stats = row_stats(w);
    metrics m;
    m.kurtosis = mean_of(stats, &distribution_stats::excess_kurtosis);
    m.qq = mean_of(stats, &distribution_stats::qq_error);
    m.mnz = relative_mse(w, fake_quantize<levels::mnz>(w));
    return m;
}

// A set of matrices of one input width n, studied together (metrics averaged over them).
struct study_case {
    std::string name;
    std::vector<matrix<float>> mats;
};

const char* construction_name(int c) {
    static const char* names[] = {"none", "hadamard", "kronecker", "dense"};
    return names[c];
}

std::string shape_of(std::size_t n) {
    std::size_t k = n, m = 0;
    while (k % 2 == 0) {
        k /= 2;
        ++m;
    }
    return std::to_string(k) + "*2^" + std::to_string(m);
}

// Student-t(ν) rows with log-normal row scales and `outliers` input channels ten times louder.
matrix<float> heavy_tailed(std::size_t rows, std::size_t cols, float nu, int outliers,
                           std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::student_t_distribution<float> t(nu);
    std::normal_distribution<float> n(0.0f, 0.5f);
    std::uniform_int_distribution<std::size_t> col(0, cols - 1);
    std::vector<float> gain(cols, 1.0f);
    for (int i = 0; i < outliers; ++i) gain[col(gen)] = 10.0f;
    matrix<float> w(rows, cols);
    for (std::size_t r = 0; r < rows; ++r) {
        const float scale = 0.02f * std::exp(n(gen));
        for (std::size_t c = 0; c < cols; ++c) w(r, c) = scale * gain[c] * t(gen);
    }
    return w;
}

// The first n columns of every row, the row continued by the next row's columns when n is wider
// (a cut or tiled width K·2^m built from real weights).
matrix<float> cut_or_tile(const matrix<float>& w, std::size_t n) {
    matrix<float> out(w.rows(), n);
    for (std::size_t r = 0; r < w.rows(); ++r)
        for (std::size_t c = 0; c < n; ++c) {
            const std::size_t src = (r + c / w.cols()) % w.rows();
            out(r, c) = w(src, c % w.cols());
        }
    return out;
}

struct options {
    bool quick = false, csv = false;
    std::string models = std::string(QIFT_SHARED_DIR) + "/models";
    std::string csv_path;
    std::uint64_t seed = 2606;
    std::size_t dense_max = 1024;
};

std::vector<study_case> build_cases(const options& opt) {
    std::vector<study_case> cases;
    // Synthetic heavy-tailed weights at LLM-like widths, with and without outlier channels.
    const std::size_t rows = opt.quick ? 32 : 256;
    std::vector<std::size_t> widths = {172, 688, 1376, 768};
    if (!opt.quick) widths.push_back(11008);
    for (std::size_t n : widths) {
        cases.push_back({"synthetic t3 outliers", {heavy_tailed(rows, n, 3.0f, 8, 11)}});
        if (!opt.quick) cases.push_back({"synthetic t5", {heavy_tailed(rows, n, 5.0f, 0, 12)}});
    }
    // Real weights: every linear of each model grouped by input width, rotated along it (W·Q),
    // and prose6M's down projections cut or tiled to other widths K·2^m.
    for (const char* model : {"stories260K", "prose6M"}) {
        if (opt.quick && std::strcmp(model, "prose6M") == 0) continue;
        const std::string path = opt.models + "/" + model + ".bin";
        if (!std::filesystem::exists(path)) {
            std::fprintf(stderr, "%s is missing: its real-weight rows are skipped\n", path.c_str());
            continue;
        }
        const llama2c_model m = load_llama2c(path);
        study_case narrow{std::string(model) + " q,k,v,o,gate,up", {}};
        study_case down{std::string(model) + " down", {}};
        for (const auto& l : m.layers) {
            for (const matrix<float>* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w3})
                narrow.mats.push_back(*w);
            down.mats.push_back(l.w2);
        }
        cases.push_back(narrow);
        cases.push_back(down);
        if (std::strcmp(model, "prose6M") == 0)
            for (std::size_t n : {384u, 640u, 448u, 688u, 1376u}) {
                study_case c{"prose6M down cut/tiled", {}};
                for (const auto& l : m.layers) c.mats.push_back(cut_or_tile(l.w2, n));
                cases.push_back(c);
            }
    }
    return cases;
}

int run(const options& opt) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<study_case> cases = build_cases(opt);
    std::FILE* csv = nullptr;
    if (!opt.csv_path.empty()) {
        csv = std::fopen(opt.csv_path.c_str(), "w");
        if (!csv) {
            std::fprintf(stderr, "rotation_study: cannot open %s for writing\n",
                         opt.csv_path.c_str());
            return 1;
        }
        std::fprintf(csv, "case,n,shape,matrices,rotation,excess_kurtosis,qq_error,mnz_rel_mse\n");
    }
    if (opt.csv)
        std::printf("case,n,shape,matrices,rotation,excess_kurtosis,qq_error,mnz_rel_mse\n");
    else
        std::printf("%-28s %6s %9s %4s  %-10s %10s %8s %10s\n", "weights", "n", "K*2^m", "mats",
                    "rotation", "kurtosis", "Q-Q err", "MNZ relMSE");
    for (const study_case& c : cases) {
        const std::size_t n = c.mats.front().cols();
        for (int k = 0; k < 4; ++k) {
            if (k == 1 && !is_hadamard_size(n)) continue;
            if (k == 3 && n > opt.dense_max) continue;
            std::optional<rotation> rot;
            if (k > 0) {
                const rotation_construction how = k == 1   ? rotation_construction::hadamard
                                                  : k == 2 ? rotation_construction::kronecker
                                                           : rotation_construction::dense;
                rot = rotation::make(n, {how, opt.seed});
            }
            metrics sum;
            for (const matrix<float>& w : c.mats) {
                matrix<float> x = w;
                if (rot) rot->fold_into_input(x);
                const metrics m = measure(x);
                sum.kurtosis += m.kurtosis;
                sum.qq += m.qq;
                sum.mnz += m.mnz;
            }
            const double count = static_cast<double>(c.mats.size());
            const metrics mean{sum.kurtosis / count, sum.qq / count, sum.mnz / count};
            const std::string shape = shape_of(n);
            if (opt.csv)
                std::printf("%s,%zu,%s,%zu,%s,%.6f,%.6f,%.6f\n", c.name.c_str(), n, shape.c_str(),
                            c.mats.size(), construction_name(k), mean.kurtosis, mean.qq, mean.mnz);
            else
                std::printf("%-28s %6zu %9s %4zu  %-10s %10.3f %8.4f %10.5f\n", c.name.c_str(), n,
                            shape.c_str(), c.mats.size(), construction_name(k), mean.kurtosis,
                            mean.qq, mean.mnz);
            if (csv)
                std::fprintf(csv, "%s,%zu,%s,%zu,%s,%.6f,%.6f,%.6f\n", c.name.c_str(), n,
                             shape.c_str(), c.mats.size(), construction_name(k), mean.kurtosis,
                             mean.qq, mean.mnz);
        }
    }
    if (csv) {
        std::fclose(csv);
        std::printf("wrote %s\n", opt.csv_path.c_str());
    }
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("rotation_study: %zu cases in %.1f s\n", cases.size(), s);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    example::args cl(argc, argv, "rotation_study");
    while (cl.next()) {
        const std::string_view a = cl.flag();
        if (a == "--quick")
            opt.quick = true;
        else if (a == "--csv")
            opt.csv = true;
        else if (a == "--write-csv")
            opt.csv_path = cl.value();
        else if (a == "--models")
            opt.models = cl.value();
        else if (a == "--seed")
            opt.seed = cl.integer<std::uint64_t>();
        else if (a == "--dense-max")
            opt.dense_max = cl.integer<std::uint64_t>();
        else {
            std::printf(
                "usage: rotation_study [--quick] [--csv] [--write-csv FILE] [--models DIR]\n"
                "                      [--seed S] [--dense-max N]\n"
                "  Mean row excess kurtosis, Q-Q error and MNZ (W2, searched per-row scale)\n"
                "  relative MSE of W·Q for no rotation, a true randomized Hadamard (where one\n"
                "  exists), the seeded orthogonal Kronecker construction and a dense Haar "
                "rotation\n"
                "  (n <= --dense-max), on synthetic heavy-tailed weights and on the linears of\n"
                "  stories260K and prose6M (and prose6M's down projections cut/tiled to n = "
                "K·2^m).\n");
            return a == "--help" ? 0 : 2;
        }
    }
    try {
        return run(opt);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "rotation_study: %s\n", e.what());
        return 1;
    }
}
