// SPDX-License-Identifier: MIT
// The W2A4 GEMV 4096×4096 (MNZ levels, A4 activations), single thread, once per x86 target of
// one binary (include/qift/dispatch.hpp: this file is compiled once per target by
// qift_add_dispatch_sources; its baseline copy holds main), with the time of each target as a
// ratio to the avx512_vnni instance, measured in the same run.
#include <qift/dispatch.hpp>
#include <qift/gemv.hpp>

#include <cstdint>
#include <random>
#include <vector>

namespace bench_dispatch {

/// One GEMV with this copy's kernels, on data built at the first call; returns y[0].
using gemv_fn = float();
QIFT_DISPATCH_DECLARE(w2a4_gemv, gemv_fn);

float QIFT_DISPATCH_INSTANCE(w2a4_gemv)() {
    constexpr std::size_t n = 4096, k = 4096;
    using L = qift::levels::mnz;
    struct data {
        qift::packed_matrix<L> w;
        qift::quantized_activations a;
        std::vector<float> y;
    };
    static data d = [] {
        // Single thread: each target's copy of qift has its own executor (set it here, not in
        // the baseline code).
        qift::set_parallel_executor(qift::serial_executor);
        std::mt19937 gen(1);
        qift::matrix<std::uint8_t> codes(n, k);
        for (auto& c : codes.flat())
            c = static_cast<std::uint8_t>(gen() % qift::level_traits<L>::count);
        const qift::matrix<float> scales(n, 1, 0.01f);
        std::normal_distribution<float> nd;
        qift::matrix<float> x(1, k);
        for (auto& v : x.flat()) v = nd(gen);
        return data{qift::packed_matrix<L>(qift::quantized_matrix<L>(codes, scales, {}, k)),
                    qift::quantize_activations(x), std::vector<float>(n)};
    }();
    qift::gemv(d.w, d.a, d.y);
    return d.y[0];
}

QIFT_DISPATCH_REGISTER(w2a4_gemv, gemv_fn);

}  // namespace bench_dispatch

#if QIFT_DISPATCH_PRIMARY

#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <string>
#include <utility>

namespace {

/// The console output, plus the CPU and real time per call of each benchmark for the ratios.
class ratio_reporter : public benchmark::ConsoleReporter {
  public:
    ratio_reporter() : ConsoleReporter(OO_Tabular) {}
    void ReportRuns(const std::vector<Run>& runs) override {
        for (const Run& r : runs)
            if (r.run_type == Run::RT_Iteration)
                times[r.benchmark_name()] = {r.GetAdjustedCPUTime(), r.GetAdjustedRealTime()};
        ConsoleReporter::ReportRuns(runs);
    }
    std::map<std::string, std::pair<double, double>> times;
};

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    std::vector<std::string> names;
    const auto add = [&](const std::string& name, bench_dispatch::gemv_fn* fn) {
        fn();  // build the data outside the timing
        benchmark::RegisterBenchmark(name.c_str(), [fn](benchmark::State& state) {
            for (auto _ : state) benchmark::DoNotOptimize(fn());
            // 4096 rows of 4096 2-bit codes a call.
            state.SetBytesProcessed(state.iterations() * 4096 * 1024);
        })->Unit(benchmark::kMicrosecond);
        names.push_back(name);
    };
#if QIFT_DISPATCH_X86
    for (qift::x86_target t : qift::x86_targets) {
        bench_dispatch::gemv_fn* fn = bench_dispatch::w2a4_gemv_instance(t);
        if (fn == nullptr || !qift::cpu_supports(t)) {
            std::printf("%s: %s\n", std::string(qift::target_name(t)).c_str(),
                        fn ? "this CPU lacks it" : "not compiled in");
            continue;
        }
        add("w2a4_gemv_4096x4096/" + std::string(qift::target_name(t)), fn);
    }
#else
    add("w2a4_gemv_4096x4096/compile_time", bench_dispatch::w2a4_gemv_select());
#endif
    ratio_reporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    // One thread: its CPU time is the time the GEMV took whatever else the machine runs; the
    // real-time ratio is printed beside it. (Into the reporter's stream, after its table.)
    const auto ref = reporter.times.find("w2a4_gemv_4096x4096/avx512_vnni");
    if (ref != reporter.times.end())
        for (const std::string& name : names)
            if (const auto it = reporter.times.find(name); it != reporter.times.end()) {
                char line[160];
                std::snprintf(line, sizeof line,
                              "%-36s %6.2fx the CPU time of avx512_vnni (real time %.2fx)\n",
                              name.c_str(), it->second.first / ref->second.first,
                              it->second.second / ref->second.second);
                reporter.GetOutputStream() << line;
            }
    reporter.GetOutputStream().flush();
    benchmark::Shutdown();
    return 0;
}

#endif
