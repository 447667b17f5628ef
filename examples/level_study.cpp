// SPDX-License-Identifier: MIT
// The level-set study: relative quantization error of every level set with a max-based and a
// searched per-channel scale, and the {±r, ±1} ratio sweep, on embedded synthetic weights or
// on every linear layer of a llama2.c checkpoint (--model FILE). --csv for machine output,
// --svg FILE for the ratio sweep as a line chart.
#include <qift/qift.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "example_support.hpp"

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
    std::string svg;
};

struct row_result {
    std::string_view level_set;
    unsigned bits;
    double max_scale, searched, refined;
    double family_ratio;  // r when the set is {±r, ±1} up to scale (MNZ: 1/3), else 0
};

// A symmetric four-level set without zero is {±r, ±1} up to scale: a point of the ratio sweep.
template <class L>
constexpr double family_ratio() {
    using T = level_traits<L>;
    return T::count == 4 && T::symmetric && !T::has_zero ? double(T::inner_outer_ratio) : 0.0;
}

template <class L>
row_result study_one(const matrix<float>& w) {
    scale_options max_rule;
    max_rule.rule = scale_rule::max;
    scale_options search;  // GPTQ/QuaRot w_clip: exponent 2.4, p = 1 - i/100, i < 80
    scale_options refine;
    refine.exponent = 2.0f;
    refine.refine = true;
    return {level_set_name<L>(),
            L::bits,
            relative_mse(w, fake_quantize<L>(w, max_rule)),
            relative_mse(w, fake_quantize<L>(w, search)),
            relative_mse(w, fake_quantize<L>(w, refine)),
            family_ratio<L>()};
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

// Mean over matrices of every column and of the ratio sweep.
matrix_study mean_study(const std::vector<matrix_study>& all) {
    matrix_study mean = all.front();
    const double n = double(all.size());
    for (int r = 0; r < 2; ++r) {
        mean.kurt[r] = mean.qq[r] = 0;
        for (auto& row : mean.rows[r]) row.max_scale = row.searched = row.refined = 0;
        for (auto& point : mean.sweep[r]) point.second = 0;
        for (const auto& st : all) {
            mean.kurt[r] += st.kurt[r] / n;
            mean.qq[r] += st.qq[r] / n;
            for (std::size_t i = 0; i < st.rows[r].size(); ++i) {
                mean.rows[r][i].max_scale += st.rows[r][i].max_scale / n;
                mean.rows[r][i].searched += st.rows[r][i].searched / n;
                mean.rows[r][i].refined += st.rows[r][i].refined / n;
            }
            for (std::size_t i = 0; i < st.sweep[r].size(); ++i)
                mean.sweep[r][i].second += st.sweep[r][i].second / n;
        }
    }
    mean.rotation = "per matrix as above";
    return mean;
}

// ---------------------------------------------------------------------------------------
// A minimal SVG line chart: linear x, log y, one polyline per series, labelled markers.

struct chart_series {
    std::string label, color;
    bool dashed;
    std::vector<std::pair<double, double>> points;
};

struct chart_marker {
    std::string label;  // the level set; one guide and label per distinct name
    double x, y;
    std::size_t series;  // whose color the marker takes
};

struct line_chart {
    std::string title, subtitle, x_label, y_label;
    std::vector<chart_series> series;
    std::vector<chart_marker> markers;
};

std::string num(double v, int precision) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*f", precision, v);
    return buf;
}

std::string xml_escape(std::string_view s) {
    std::string out;
    for (char c : s) {
        if (c == '&')
            out += "&amp;";
        else if (c == '<')
            out += "&lt;";
        else if (c == '>')
            out += "&gt;";
        else
            out += c;
    }
    return out;
}

// Log-axis ticks m * 10^k covering [lo, hi] (fewer mantissas the more decades it spans),
// from the last tick at or below lo to the first at or above hi: the axis ends on ticks.
std::vector<double> log_ticks(double lo, double hi) {
    const double decades = std::log10(hi / lo);
    const std::vector<double> mantissas = decades > 2.5 ? std::vector<double>{1}
                                          : decades > 1.2
                                              ? std::vector<double>{1, 2, 5}
                                              : std::vector<double>{1, 1.2, 1.5, 2, 3, 4, 5, 6, 8};
    std::vector<double> all;
    for (int k = int(std::floor(std::log10(lo))) - 1; k <= int(std::ceil(std::log10(hi))); ++k)
        for (double m : mantissas) all.push_back(m * std::pow(10.0, k));
    std::vector<double> ticks;
    for (std::size_t i = 0; i < all.size(); ++i)
        if ((i + 1 < all.size() && all[i + 1] > lo) && (i == 0 || all[i - 1] < hi))
            ticks.push_back(all[i]);
    return ticks;
}

class svg_writer {
  public:
    explicit svg_writer(std::ostream& os) : os_(os) {}
    void text(double x, double y, std::string_view s, int size, const char* anchor = "start",
              const char* extra = "") {
        os_ << "<text x=\"" << num(x, 1) << "\" y=\"" << num(y, 1) << "\" font-size=\"" << size
            << "\" text-anchor=\"" << anchor << "\"" << extra << ">" << xml_escape(s)
            << "</text>\n";
    }
    void line(double x1, double y1, double x2, double y2, const char* stroke, double width,
              const char* dash = nullptr) {
        os_ << "<line x1=\"" << num(x1, 1) << "\" y1=\"" << num(y1, 1) << "\" x2=\"" << num(x2, 1)
            << "\" y2=\"" << num(y2, 1) << "\" stroke=\"" << stroke << "\" stroke-width=\"" << width
            << "\"";
        if (dash) os_ << " stroke-dasharray=\"" << dash << "\"";
        os_ << "/>\n";
    }
    void polyline(const std::vector<std::pair<double, double>>& xy, const std::string& stroke,
                  bool dashed) {
        os_ << "<polyline fill=\"none\" stroke=\"" << stroke << "\" stroke-width=\"2\"";
        if (dashed) os_ << " stroke-dasharray=\"7 4\"";
        os_ << " points=\"";
        for (const auto& [x, y] : xy) os_ << num(x, 1) << "," << num(y, 1) << " ";
        os_ << "\"/>\n";
    }
    void marker(double x, double y, const std::string& fill, std::string_view tooltip) {
        os_ << "<circle cx=\"" << num(x, 1) << "\" cy=\"" << num(y, 1) << "\" r=\"4.5\" fill=\""
            << fill << "\" stroke=\"black\" stroke-width=\"1.2\"><title>" << xml_escape(tooltip)
            << "</title></circle>\n";
    }

  private:
    std::ostream& os_;
};

void write_svg(std::ostream& os, const line_chart& c) {
    // Data range: x linear with 3% padding, y logarithmic between ticks around the data.
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    for (const auto& s : c.series)
        for (const auto& [x, y] : s.points) {
            x0 = std::min(x0, x), x1 = std::max(x1, x);
            y0 = std::min(y0, y), y1 = std::max(y1, y);
        }
    for (const auto& m : c.markers) y0 = std::min(y0, m.y), y1 = std::max(y1, m.y);
    const double pad = (x1 - x0) * 0.03;
    const std::vector<double> y_ticks = log_ticks(y0 / 1.03, y1 * 1.03);
    x0 -= pad, x1 += pad, y0 = y_ticks.front(), y1 = y_ticks.back();

    // Guide labels above the plot, stacked in rows so that none overlap.
    struct guide {
        std::string label;
        double x;
        int row;
    };
    std::vector<guide> guides;
    for (const auto& m : c.markers)
        if (std::none_of(guides.begin(), guides.end(), [&](auto& g) { return g.label == m.label; }))
            guides.push_back({m.label, m.x, 0});
    std::sort(guides.begin(), guides.end(), [](auto& a, auto& b) { return a.x < b.x; });

    const double width = 940, left = 78, plot_w = 560, char_w = 6.6;
    const double x_scale = plot_w / (x1 - x0);
    std::vector<double> row_end;  // right edge (px) of the last label in each row
    for (auto& g : guides) {
        const double half = char_w * double(g.label.size()) / 2 + 4, px = (g.x - x0) * x_scale;
        std::size_t row = 0;
        while (row < row_end.size() && px - half < row_end[row]) ++row;
        if (row == row_end.size()) row_end.push_back(0);
        row_end[row] = px + half;
        g.row = int(row);
    }
    const double top = 62 + 15 * double(row_end.size()), plot_h = 360, height = top + plot_h + 60;
    const auto px = [&](double x) { return left + (x - x0) * x_scale; };
    const auto py = [&](double y) {
        return top + plot_h * (1 - std::log(y / y0) / std::log(y1 / y0));
    };

    os << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
       << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
       << "\" viewBox=\"0 0 " << width << " " << height
       << "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
       << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    svg_writer svg(os);
    svg.text(left, 24, c.title, 15, "start", " font-weight=\"bold\"");
    svg.text(left, 44, c.subtitle, 12);

    // Axes, grid and ticks.
    for (double t = std::ceil(x0 * 20 - 1e-9) / 20; t <= x1 + 1e-9; t += 0.05) {
        svg.line(px(t), top, px(t), top + plot_h, "#e4e4e4", 1);
        svg.line(px(t), top + plot_h, px(t), top + plot_h + 5, "black", 1);
        svg.text(px(t), top + plot_h + 19, num(t, 2), 11, "middle");
    }
    for (double t : y_ticks) {
        svg.line(left, py(t), left + plot_w, py(t), "#e4e4e4", 1);
        svg.line(left - 5, py(t), left, py(t), "black", 1);
        svg.text(left - 8, py(t) + 4, num(t, t < 0.1 ? 3 : 2), 11, "end");
    }
    svg.line(left, top + plot_h, left + plot_w, top + plot_h, "black", 1.2);
    svg.line(left, top, left, top + plot_h, "black", 1.2);
    svg.text(left + plot_w / 2, top + plot_h + 42, c.x_label, 13, "middle");
    const std::string rotate = " transform=\"rotate(-90 20 " + num(top + plot_h / 2, 1) + ")\"";
    svg.text(20, top + plot_h / 2, c.y_label, 13, "middle", rotate.c_str());

    // Named sets: a dotted guide up to a label above the plot, markers on the curves.
    for (const auto& g : guides) {
        const double label_y = top - 8 - 15 * g.row;
        svg.line(px(g.x), label_y + 3, px(g.x), top + plot_h, "#888888", 1, "2 3");
        svg.text(px(g.x), label_y, g.label, 11, "middle");
    }
    for (const auto& s : c.series) {
        std::vector<std::pair<double, double>> xy;
        for (const auto& [x, y] : s.points) xy.emplace_back(px(x), py(y));
        svg.polyline(xy, s.color, s.dashed);
    }
    for (const auto& m : c.markers)
        svg.marker(px(m.x), py(m.y), c.series[m.series].color,
                   m.label + ": r = " + num(m.x, 4) + ", relative MSE " + num(m.y, 5) + " (" +
                       c.series[m.series].label + ")");

    // Legend to the right of the plot.
    const double lx = left + plot_w + 24;
    double ly = top + 10;
    svg.text(lx, ly, "{±r, ±1} sweep", 12, "start", " font-weight=\"bold\"");
    for (const auto& s : c.series) {
        ly += 22;
        svg.polyline({{lx, ly - 4}, {lx + 28, ly - 4}}, s.color, s.dashed);
        svg.text(lx + 36, ly, s.label, 12);
    }
    ly += 30;
    svg.marker(lx + 14, ly - 4, "white", "");
    svg.text(lx + 36, ly, "named set at its own r,", 12);
    svg.text(lx + 36, ly + 15, "in its line's color", 12);
    os << "</svg>\n";
}

// The sweep as the study computed it: per embedded matrix, or the mean over a model's layers.
line_chart sweep_chart(const options& opt, const std::vector<matrix_study>& all) {
    line_chart c;
    c.title = "Two-bit level sets {±r, ±1}: quantization error against r";
    c.x_label = "r = inner / outer level magnitude";
    c.y_label = "relative MSE ‖W − Q(W)‖² / ‖W‖²  (log scale)";
    const auto minimum = [](const std::vector<std::pair<double, double>>& sweep) {
        return std::min_element(sweep.begin(), sweep.end(),
                                [](auto& a, auto& b) { return a.second < b.second; })
            ->first;
    };
    const auto add = [&](std::string label, const char* color, bool dashed, const matrix_study& st,
                         int rotated, bool with_markers) {
        label += " (min r = " + num(minimum(st.sweep[rotated]), 2) + ")";
        c.series.push_back({std::move(label), color, dashed, st.sweep[rotated]});
        if (with_markers)
            for (const auto& row : st.rows[rotated])
                if (row.family_ratio > 0)
                    c.markers.push_back({std::string(row.level_set), row.family_ratio, row.refined,
                                         c.series.size() - 1});
    };
    if (opt.model.empty()) {
        c.subtitle =
            "embedded 1024×1024 matrices, per-channel scale: searched (e = 2) + least squares";
        add("rotated LLM-like", "#1f77b4", false, all[0], 1, true);
        add("unrotated LLM-like", "#d62728", true, all[0], 0, false);
        add("Gaussian", "#2ca02c", false, all[1], 0, true);
    } else {
        const matrix_study mean = mean_study(all);
        c.subtitle = std::filesystem::path(opt.model).filename().string() + ": mean over its " +
                     std::to_string(all.size()) +
                     " linear layers, scale searched (e = 2) + least squares";
        add("rotated layers", "#1f77b4", false, mean, 1, true);
        add("unrotated layers", "#d62728", true, mean, 0, false);
    }
    return c;
}

void usage() {
    std::puts(
        "usage: level_study [--model FILE] [--csv] [--svg FILE]\n"
        "  no arguments: embedded synthetic weights (LLM-like heavy-tailed with outlier\n"
        "  channels, and Gaussian), 1024 x 1024 each\n"
        "  --model FILE  every linear layer of a llama2.c checkpoint\n"
        "  --csv         machine-readable output\n"
        "  --svg FILE    also write the {±r, ±1} ratio sweep as an SVG line chart\n"
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
    example::args cl(argc, argv, "level_study");
    while (cl.next()) {
        const std::string_view a = cl.flag();
        if (a == "--csv") {
            opt.csv = true;
        } else if (a == "--model") {
            opt.model = cl.value();
        } else if (a == "--svg") {
            opt.svg = cl.value();
        } else if (a == "--help" || a == "-h") {
            usage();
            return 0;
        } else {
            cl.unknown();
            usage();
            return 2;
        }
    }
    std::ofstream svg_file;
    if (!opt.svg.empty()) {
        svg_file.open(opt.svg);
        if (!svg_file) {
            std::fprintf(stderr, "level_study: cannot open %s for writing\n", opt.svg.c_str());
            return 1;
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
            all.push_back(study_matrix(m, opt.model.empty() || !opt.svg.empty()));
            if (opt.csv)
                print_csv(m, all.back());
            else
                print_table(m.name.c_str(), m.w.rows(), m.w.cols(), all.back());
        }
        if (!opt.csv && !opt.model.empty())
            print_table(("mean over the " + std::to_string(all.size()) + " matrices").c_str(), 0, 0,
                        mean_study(all));
        if (!opt.svg.empty()) {
            write_svg(svg_file, sweep_chart(opt, all));
            svg_file.close();
            if (!svg_file) {
                std::fprintf(stderr, "level_study: cannot write %s\n", opt.svg.c_str());
                return 1;
            }
            // Keep --csv output parseable: the note goes to stderr there.
            std::fprintf(opt.csv ? stderr : stdout, "wrote %s\n", opt.svg.c_str());
        }
    } catch (const qift::error& e) {
        std::fprintf(stderr, "level_study: %s\n", e.what());
        return 1;
    }
    return 0;
}
