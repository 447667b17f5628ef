// SPDX-License-Identifier: MIT
// Command-line GPTQ: reads W [out][in] and H [in][in] (or calibration X [tokens][in]) from .npy
// files, quantizes with any built-in level set, writes codes, scales, Q and a JSON summary.
#include <qift/gptq.hpp>
#include <qift/levels.hpp>
#include <qift/npy.hpp>
#include <qift/scale.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "example_support.hpp"

namespace {

const char* const usage =
    R"(usage: gptq_tool --w W.npy (--h H.npy | --x X.npy) --out PREFIX [options]

  --w FILE            weights [out][in], float32 or float64, C order
  --h FILE            Hessian [in][in] (float32 or float64), e.g. 2/N · XᵀX
  --x FILE            calibration activations [tokens][in]; H = (2/tokens)·XᵀX
  --out PREFIX        writes PREFIX_codes.npy (uint8 [out][in]), PREFIX_scales.npy
                      ([out][groups] float32), PREFIX_zeros.npy (affine sets),
                      PREFIX_g_idx.npy (int64 [in]), PREFIX_dequantized.npy
                      (float32 [out][in]) and PREFIX_summary.json
options:
  --levels NAME       standard asymmetric mnz pot_mnz nf2 lloyd pm12 ternary int3 int4
                      e2m1 binary (default mnz)
  --rule search|max   scale rule (default search: GPTQ/QuaRot clipping grid)
  --exponent E        search objective exponent (default 2.4)
  --refine            least-squares scale refinement after the rule
  --group-size N      columns per group (default 0: one group per row)
  --act-order         process columns by descending diag(H)
  --static-groups     group parameters up front on the original W
  --damp F            relative damping (default 0.01)
  --block-size N      lazy-update block (default 128)
  --max-retries N     damping retries when H is not positive definite (default 5)
  --threads 1         run single-threaded
  --quiet             no progress on stderr
The scales file holds the compact per-group parameters; with --act-order and dynamic groups,
column c uses group g_idx[c] (as GPTQ's g_idx).
)";

struct arguments {
    std::string w, h, x, out, levels = "mnz";
    qift::gptq_options opt;
    bool quiet = false;
};

[[noreturn]] void die(const std::string& message) {
    std::fprintf(stderr, "gptq_tool: %s\n", message.c_str());
    std::exit(2);
}

arguments parse(int argc, char** argv) {
    arguments a;
    example::args cl(argc, argv, "gptq_tool");
    while (cl.next()) {
        const std::string_view flag = cl.flag();
        if (flag == "--help" || flag == "-h") {
            std::fputs(usage, stdout);
            std::exit(0);
        } else if (flag == "--w") {
            a.w = cl.value();
        } else if (flag == "--h") {
            a.h = cl.value();
        } else if (flag == "--x") {
            a.x = cl.value();
        } else if (flag == "--out") {
            a.out = cl.value();
        } else if (flag == "--levels") {
            a.levels = cl.value();
        } else if (flag == "--rule") {
            const std::string r = cl.value();
            if (r != "search" && r != "max") die("--rule is search or max");
            a.opt.scale.rule = r == "max" ? qift::scale_rule::max : qift::scale_rule::search;
        } else if (flag == "--exponent") {
            a.opt.scale.exponent = cl.real<float>();
        } else if (flag == "--refine") {
            a.opt.scale.refine = true;
        } else if (flag == "--group-size") {
            a.opt.scale.group_size = cl.integer<std::size_t>();
        } else if (flag == "--act-order") {
            a.opt.act_order = true;
        } else if (flag == "--static-groups") {
            a.opt.static_groups = true;
        } else if (flag == "--damp") {
            a.opt.damp = cl.real<double>();
        } else if (flag == "--block-size") {
            a.opt.block_size = cl.integer<std::size_t>();
        } else if (flag == "--max-retries") {
            a.opt.max_retries = cl.integer<std::uint16_t>();
        } else if (flag == "--threads") {
            if (cl.integer<std::size_t>() <= 1) qift::set_parallel_executor(qift::serial_executor);
        } else if (flag == "--quiet") {
            a.quiet = true;
        } else {
            die("unknown option " + std::string(flag) + " (see --help)");
        }
    }
    if (a.w.empty() || a.out.empty() || a.h.empty() == a.x.empty())
        die("need --w, --out and exactly one of --h and --x (see --help)");
    return a;
}

std::string json_string(std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
            out += buf;
        } else {
            out += c;
        }
    }
    return out + "\"";
}

template <qift::level_set L>
void run(const arguments& a) {
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    const qift::matrix<float> w = qift::read_npy_matrix<float>(a.w);
    qift::matrix<double> h;
    std::size_t tokens = 0;
    if (!a.h.empty()) {
        h = qift::read_npy_matrix<double>(a.h);
    } else {
        const qift::matrix<float> x = qift::read_npy_matrix<float>(a.x);
        qift::hessian_accumulator acc(x.cols());
        acc.add(x.view());
        tokens = x.rows();
        h = acc.hessian();
    }
    qift::gptq_options opt = a.opt;
    if (!a.quiet)
        opt.progress = [last = std::size_t{0}](std::size_t done, std::size_t total) mutable {
            const std::size_t pct = done * 100 / total;
            if (pct / 10 != last / 10 || done == total)
                std::fprintf(stderr, "\rgptq: %3zu%%%s", pct, done == total ? "\n" : "");
            last = pct;
        };
    const auto t1 = clock::now();
    const qift::gptq_result<L> res = qift::gptq<L>(w.view(), h, opt);
    const auto t2 = clock::now();

    const std::string p = a.out;
    qift::write_npy<std::uint8_t>(p + "_codes.npy", res.quantized.codes().view());
    qift::write_npy<float>(p + "_scales.npy", res.group_scales.view());
    if constexpr (qift::level_traits<L>::has_zero_point)
        qift::write_npy<float>(p + "_zeros.npy", res.group_zeros.view());
    std::vector<std::int64_t> g_idx(res.g_idx.begin(), res.g_idx.end());
    const std::size_t g_shape[1] = {g_idx.size()};
    qift::write_npy<std::int64_t>(p + "_g_idx.npy", g_idx, g_shape);
    qift::write_npy<float>(p + "_dequantized.npy", res.dequantized.view());

    const double solve_s = std::chrono::duration<double>(t2 - t1).count();
    const double total_s = std::chrono::duration<double>(clock::now() - t0).count();
    std::ofstream js(p + "_summary.json");
    js << "{\n"
       << "  \"levels\": " << json_string(a.levels) << ",\n"
       << "  \"out\": " << w.rows() << ",\n  \"in\": " << w.cols() << ",\n"
       << "  \"hessian_from\": " << (a.h.empty() ? "\"x\"" : "\"h\"") << ",\n"
       << "  \"calibration_tokens\": " << tokens << ",\n"
       << "  \"group_size\": " << opt.scale.group_size << ",\n"
       << "  \"act_order\": " << (opt.act_order ? "true" : "false") << ",\n"
       << "  \"static_groups\": " << (opt.static_groups ? "true" : "false") << ",\n"
       << "  \"block_size\": " << opt.block_size << ",\n"
       << "  \"scale_rule\": "
       << (opt.scale.rule == qift::scale_rule::max ? "\"max\"" : "\"search\"")
       << ",\n  \"exponent\": " << opt.scale.exponent << ",\n"
       << "  \"refine\": " << (opt.scale.refine ? "true" : "false") << ",\n"
       << "  \"damp_requested\": " << opt.damp << ",\n"
       << "  \"damp_used\": " << res.damping << ",\n"
       << "  \"damping_absolute\": " << res.damping_absolute << ",\n"
       << "  \"retries\": " << res.retries << ",\n"
       << "  \"dead_columns\": " << res.dead_columns << ",\n"
       << "  \"proxy_loss\": " << res.proxy_loss << ",\n"
       << "  \"relative_mse\": " << qift::relative_mse(w.view(), res.dequantized.view()) << ",\n"
       << "  \"solve_seconds\": " << solve_s << ",\n"
       << "  \"total_seconds\": " << total_s << "\n}\n";
    if (!js) die("cannot write " + p + "_summary.json");
    if (!a.quiet)
        std::fprintf(stderr, "gptq: %zux%zu %s, proxy loss %g, %.3f s; wrote %s_*\n", w.rows(),
                     w.cols(), a.levels.c_str(), res.proxy_loss, solve_s, p.c_str());
}

template <qift::level_set... Ls>
bool dispatch(const arguments& a) {
    return ((a.levels == Ls::name ? (run<Ls>(a), true) : false) || ...);
}

}  // namespace

int main(int argc, char** argv) {
    const arguments a = parse(argc, argv);
    try {
        namespace lv = qift::levels;
        if (!dispatch<lv::standard, lv::asymmetric, lv::mnz, lv::pot_mnz, lv::nf2, lv::lloyd,
                      lv::pm12, lv::ternary, lv::int3, lv::int4, lv::e2m1, lv::binary>(a))
            die("unknown level set '" + a.levels + "' (see --help)");
    } catch (const qift::error& e) {
        die(e.what());
    }
    return 0;
}
