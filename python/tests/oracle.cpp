// SPDX-License-Identifier: MIT
// Test oracle of the Python module: runs the C++ API on .npy inputs and writes its results as
// .npy files, so that the pytest suite can check that the bindings return exactly what C++ does
// on the same data (options mapped, strides and conversions right).
//   oracle quantize LEVELS W.npy OUT rule exponent grid grid_step refine group_size
//   oracle gptq LEVELS W.npy H.npy OUT block_size damp act_order static_groups group_size rule
//   oracle gemm LEVELS W.npy X.npy OUT
// LEVELS: mnz, int4 or asymmetric.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <qift/act.hpp>
#include <qift/gemm.hpp>
#include <qift/gemv.hpp>
#include <qift/gptq.hpp>
#include <qift/npy.hpp>
#include <qift/scale.hpp>

namespace {

using namespace qift;

std::string out_dir;

template <class T>
void save(const std::string& name, const matrix<T>& m) {
    write_npy<T>(out_dir + "/" + name + ".npy", m.view());
}

template <class T>
void save_vector(const std::string& name, const std::vector<T>& v) {
    const std::size_t shape[1] = {v.size()};
    write_npy<T>(out_dir + "/" + name + ".npy", std::span<const T>(v),
                 std::span<const std::size_t>(shape));
}

scale_options parse_scale(char** a) {
    scale_options o;
    o.rule = std::string(a[0]) == "max" ? scale_rule::max : scale_rule::search;
    o.exponent = std::stof(a[1]);
    o.grid = std::stoi(a[2]);
    o.grid_step = std::stof(a[3]);
    o.refine = std::string(a[4]) == "1";
    o.group_size = std::stoul(a[5]);
    return o;
}

template <class L>
void save_quantized(const quantized_matrix<L>& q) {
    save("codes", q.codes());
    save("scales", q.scales());
    if (level_traits<L>::has_zero_point) save("zeros", q.zeros());
    save("dequantized", q.dequantize());
}

template <class L>
int run(const std::string& cmd, int argc, char** argv) {
    const matrix<float> w = read_npy_matrix<float>(argv[3]);
    if (cmd == "quantize" && argc == 11) {
        out_dir = argv[4];
        save_quantized(quantize<L>(w.view(), parse_scale(argv + 5)));
        return 0;
    }
    if (cmd == "gptq" && argc == 12) {
        const matrix<double> h = read_npy_matrix<double>(argv[4]);
        out_dir = argv[5];
        gptq_options o;
        o.block_size = std::stoul(argv[6]);
        o.damp = std::stod(argv[7]);
        o.act_order = std::string(argv[8]) == "1";
        o.static_groups = std::string(argv[9]) == "1";
        o.scale.group_size = std::stoul(argv[10]);
        o.scale.rule = std::string(argv[11]) == "max" ? scale_rule::max : scale_rule::search;
        const gptq_result<L> r = gptq<L>(w.view(), h, o);
        save_quantized(r.quantized);
        std::vector<std::int64_t> perm(r.permutation.begin(), r.permutation.end());
        save_vector("permutation", perm);
        save_vector("proxy_loss", std::vector<double>{r.proxy_loss});
        return 0;
    }
    if (cmd == "gemm" && argc == 6) {
        const matrix<float> x = read_npy_matrix<float>(argv[4]);
        out_dir = argv[5];
        const packed_matrix<L> p(quantize<L>(w.view()));
        matrix<float> y(x.rows(), p.rows());
        gemm(p, quantize_activations(x.view()), y.view());
        save("y_a4", y);
        gemm(p, x.view(), y.view());
        save("y_float", y);
        return 0;
    }
    std::fprintf(stderr, "oracle: bad command line\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: oracle quantize|gptq|gemm LEVELS W.npy ...\n");
        return 2;
    }
    const std::string cmd = argv[1], levels = argv[2];
    // One thread: results do not depend on the executor, and a short-lived helper need not
    // start the persistent pool.
    qift::set_parallel_executor(qift::serial_executor);
    try {
        if (levels == "mnz") return run<qift::levels::mnz>(cmd, argc, argv);
        if (levels == "int4") return run<qift::levels::int4>(cmd, argc, argv);
        if (levels == "asymmetric") return run<qift::levels::asymmetric>(cmd, argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "oracle: %s\n", e.what());
        return 1;
    }
    std::fprintf(stderr, "oracle: unknown level set %s\n", levels.c_str());
    return 2;
}
