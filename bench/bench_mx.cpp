// SPDX-License-Identifier: MIT
// MXFP4 kernels against baselines run in the same process, one thread: the MXFP4 × MXFP4 and
// MXFP4 × float GEMVs, qift's W4A4 (INT4) and W2A4 (MNZ) GEMVs, an int8 × int8 GEMV and a plain
// read of as many bytes as the MXFP4 weights (the bandwidth roofline), at 4096×4096 and
// 11008×4096 (rows × cols), hot (one matrix, cache-resident where it fits) and cold (copies
// cycled, 256 MiB in all, as bench_gemv); the activation quantizer on 4096 values; and a
// 4-token GEMM. The summary at the end prints the times and the ratios the kernels aim at:
// MXFP4 / W4A4 hot (<= 1.5), roofline / MXFP4 cold (>= 0.70).
//
// Default run: about 30 s. Useful flags: --benchmark_min_time=0.05 (shorter, noisier),
// --benchmark_repetitions=3 (the summary then uses medians), --benchmark_filter=mx_ (only the
// MXFP4 kernels).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <qift/gemv.hpp>
#include <qift/mx.hpp>

#include "bench_support.hpp"

namespace {

using bench::cold_copies;
using bench::random_packed;

qift::matrix<float> gaussian(std::size_t rows, std::size_t cols, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    qift::matrix<float> m(rows, cols);
    for (auto& x : m.flat()) x = d(gen);
    return m;
}

void counters(benchmark::State& st, std::size_t bytes) {
    st.counters["weight_bytes"] = static_cast<double>(bytes);
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * bytes));
}

// Runs call(weights) over `first` (hot) or over cycled copies of it (cold).
template <class W, class Call>
void run_cycled(benchmark::State& st, const W& first, std::size_t bytes, const Call& call) {
    qift::set_parallel_executor(qift::serial_executor);
    const std::size_t copies = st.range(2) ? cold_copies(bytes) : 1;
    std::vector<W> w(copies, first);
    std::size_t i = 0;
    for (auto _ : st) {
        call(w[i]);
        benchmark::ClobberMemory();
        i = i + 1 == copies ? 0 : i + 1;
    }
    counters(st, bytes);
}

// Args: N (rows), K (cols), cold (0/1).
void bm_mx_mx_gemv(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const auto w = qift::quantize_mxfp4(gaussian(n, k, 1));
    const auto a = qift::quantize_mxfp4(gaussian(1, k, 2));
    std::vector<float> y(n);
    run_cycled(st, w, w.size_bytes(), [&](const qift::mxfp4_matrix& wi) {
        qift::gemv(wi, a, y);
        benchmark::DoNotOptimize(y.data());
    });
}

void bm_mx_f32_gemv(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const auto w = qift::quantize_mxfp4(gaussian(n, k, 1));
    const auto x = gaussian(1, k, 2);
    std::vector<float> y(n);
    run_cycled(st, w, w.size_bytes(), [&](const qift::mxfp4_matrix& wi) {
        qift::gemv(wi, x.row(0), y);
        benchmark::DoNotOptimize(y.data());
    });
}

template <class L>
void bm_integer(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const auto w = random_packed<L>(n, k, 1);
    const auto x = gaussian(1, k, 2);
    const auto a = qift::quantize_activations(x.row(0));
    std::vector<float> y(n);
    run_cycled(st, w, w.code_bytes(), [&](const qift::packed_matrix<L>& wi) {
        qift::gemv(wi, a, y);
        benchmark::DoNotOptimize(y.data());
    });
}

void bm_int8(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    std::mt19937 gen(3);
    qift::aligned_vector<std::int8_t> w(n * k), a(k);
    for (auto& v : w) v = static_cast<std::int8_t>(int(gen() % 255) - 127);
    for (auto& v : a) v = static_cast<std::int8_t>(int(gen() % 16) - 8);
    std::vector<std::int32_t> y(n);
    run_cycled(st, w, w.size(), [&](const qift::aligned_vector<std::int8_t>& wi) {
        bench::int8_gemv_rows(wi.data(), a.data(), k, 0, n, y.data());
        benchmark::DoNotOptimize(y.data());
    });
}

// Reads as many bytes as the MXFP4 weights of an N×K matrix (codes and scales).
void bm_read(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const std::size_t bytes = qift::mxfp4_matrix(1, k).size_bytes() * n / 64 * 64;
    const qift::aligned_vector<std::uint64_t> buf(bytes / 8, 1);
    std::uint64_t sink = 0;
    run_cycled(st, buf, bytes, [&](const qift::aligned_vector<std::uint64_t>& b) {
        sink += bench::read_words(b.data(), 0, b.size());
        benchmark::DoNotOptimize(sink);
    });
}

// The activation quantizer on K values (arg 0: K, arg 1: rounding mode, arg 2: 1 = the scalar
// reference quantize_mxfp4_block instead).
void bm_quantize(benchmark::State& st) {
    const auto k = std::size_t(st.range(0));
    const auto mode = static_cast<qift::mx_rounding>(st.range(1));
    const auto x = gaussian(1, k, 4);
    qift::mxfp4_matrix q(1, k);
    for (auto _ : st) {
        if (st.range(2)) {
            for (std::size_t b = 0; b < q.blocks_per_row(); ++b)
                q.row_scales(0)[b] = qift::quantize_mxfp4_block(
                    x.row(0).subspan(b * 32, std::min<std::size_t>(32, k - b * 32)),
                    q.row_codes(0) + b * 16, mode);
        } else {
            qift::quantize_mxfp4(x, q, mode);
        }
        benchmark::DoNotOptimize(q.row_codes(0));
        benchmark::ClobberMemory();
    }
}

// GEMM over M tokens (args N, K, M; hot).
void bm_mx_mx_gemm(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const auto m = std::size_t(st.range(2));
    qift::set_parallel_executor(qift::serial_executor);
    const auto w = qift::quantize_mxfp4(gaussian(n, k, 1));
    const auto a = qift::quantize_mxfp4(gaussian(m, k, 2));
    qift::matrix<float> y(m, n);
    for (auto _ : st) {
        qift::gemm(w, a, y);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
}

void bm_mx_f32_gemm(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const auto m = std::size_t(st.range(2));
    qift::set_parallel_executor(qift::serial_executor);
    const auto w = qift::quantize_mxfp4(gaussian(n, k, 1));
    const auto x = gaussian(m, k, 2);
    qift::matrix<float> y(m, n);
    for (auto _ : st) {
        qift::gemm(w, x, y);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
}

void gemv_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"N", "K", "cold"});
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}})
        for (int cold : {0, 1}) b->Args({n, k, cold});
    b->Unit(benchmark::kMicrosecond)->MinTime(0.1)->UseRealTime();
}

BENCHMARK(bm_read)->Apply(gemv_shapes)->Name("read_mx_bytes");
BENCHMARK(bm_mx_mx_gemv)->Apply(gemv_shapes)->Name("mx_mxfp4_gemv");
BENCHMARK(bm_mx_f32_gemv)->Apply(gemv_shapes)->Name("mx_f32_gemv");
BENCHMARK(bm_integer<qift::levels::int4>)->Apply(gemv_shapes)->Name("w4a4_int4");
BENCHMARK(bm_integer<qift::levels::mnz>)->Apply(gemv_shapes)->Name("w2a4_mnz");
BENCHMARK(bm_int8)->Apply(gemv_shapes)->Name("int8_gemv");
BENCHMARK(bm_quantize)
    ->ArgNames({"K", "mode", "scalar"})
    ->Args({4096, 0, 0})
    ->Args({4096, 1, 0})
    ->Args({4096, 2, 0})
    ->Args({4096, 0, 1})
    ->Name("mx_quantize")
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.1);
BENCHMARK(bm_mx_mx_gemm)
    ->ArgNames({"N", "K", "M"})
    ->Args({4096, 4096, 4})
    ->Name("mx_mxfp4_gemm")
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.1)
    ->UseRealTime();
BENCHMARK(bm_mx_f32_gemm)
    ->ArgNames({"N", "K", "M"})
    ->Args({4096, 4096, 4})
    ->Name("mx_f32_gemm")
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.1)
    ->UseRealTime();

// Collects every run (the median of repetitions when there are several) for the summary.
class summary_reporter : public benchmark::ConsoleReporter {
  public:
    std::map<std::string, double> us;  // "family/arg/arg/..." -> µs

    void ReportRuns(const std::vector<Run>& runs) override {
        ConsoleReporter::ReportRuns(runs);
        for (const auto& r : runs) {
            if (r.error_occurred) continue;
            if (r.run_type == Run::RT_Aggregate ? r.aggregate_name != "median" : r.repetitions > 1)
                continue;
            std::string name = r.benchmark_name();
            if (const auto agg = name.rfind("_median"); agg != std::string::npos) name.erase(agg);
            // family/N:4096/K:4096/cold:0/min_time:0.100/real_time -> family/4096/4096/0
            std::string key = name.substr(0, name.find('/'));
            for (std::size_t p = name.find('/'); p != std::string::npos;) {
                const std::size_t next = name.find('/', p + 1);
                const std::string part = name.substr(
                    p + 1, next == std::string::npos ? std::string::npos : next - p - 1);
                const auto colon = part.find(':');
                if (colon != std::string::npos && part.compare(0, colon, "min_time") != 0) {
                    key.push_back('/');  // not "/" + ...: GCC 12 -Wrestrict false positive
                    key.append(part, colon + 1, std::string::npos);
                }
                p = next;
            }
            // Quantizer times are reported in µs by the run's unit; GEMVs too.
            us[key] = r.GetAdjustedRealTime();
        }
    }

    double get(const std::string& key) const {
        const auto it = us.find(key);
        return it == us.end() ? 0.0 : it->second;
    }

    void summary() const {
        std::printf("\nMXFP4 summary (µs, one thread; ratios = time / time)\n");
        std::printf("%-14s %5s %10s %10s %10s %10s %10s %10s\n", "shape", "cache", "mxfp4",
                    "mx_f32", "w4a4_int4", "w2a4_mnz", "int8", "read_mx");
        for (const char* shape : {"4096/4096", "11008/4096"})
            for (const char* cold : {"0", "1"}) {
                const auto at = [&](const char* fam) {
                    return get(std::string(fam) + "/" + shape + "/" + cold);
                };
                std::printf("%-14s %5s %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f\n", shape,
                            cold[0] == '1' ? "cold" : "hot", at("mx_mxfp4_gemv"), at("mx_f32_gemv"),
                            at("w4a4_int4"), at("w2a4_mnz"), at("int8_gemv"), at("read_mx_bytes"));
            }
        std::printf("\n%-40s %10s %10s %8s\n", "ratio", "4096", "11008", "target");
        const auto ratio = [&](const char* what, const char* num, const char* den, const char* c,
                               const char* target) {
            double v[2];
            int i = 0;
            for (const char* shape : {"4096/4096", "11008/4096"}) {
                const double a = get(std::string(num) + "/" + shape + "/" + c);
                const double b = get(std::string(den) + "/" + shape + "/" + c);
                v[i++] = a > 0 && b > 0 ? a / b : 0.0;
            }
            std::printf("%-40s %10.2f %10.2f %8s\n", what, v[0], v[1], target);
        };
        ratio("MXFP4xMXFP4 / W4A4 INT4, hot", "mx_mxfp4_gemv", "w4a4_int4", "0", "<= 1.5");
        ratio("MXFP4xMXFP4 / W4A4 INT4, cold", "mx_mxfp4_gemv", "w4a4_int4", "1", "");
        ratio("roofline (read) / MXFP4xMXFP4, cold", "read_mx_bytes", "mx_mxfp4_gemv", "1",
              ">= 0.70");
        ratio("roofline (read) / MXFP4xMXFP4, hot", "read_mx_bytes", "mx_mxfp4_gemv", "0", "");
        ratio("roofline (read) / MXFP4xfloat, cold", "read_mx_bytes", "mx_f32_gemv", "1", "");
        ratio("MXFP4xMXFP4 / W2A4 MNZ, hot", "mx_mxfp4_gemv", "w2a4_mnz", "0", "");
        ratio("MXFP4xMXFP4 / int8, cold", "mx_mxfp4_gemv", "int8_gemv", "1", "");
        std::printf(
            "\nactivation quantizer, 4096 values (µs): nearest %.3f, even %.3f, floor "
            "%.3f; scalar reference (nearest) %.1f\n",
            get("mx_quantize/4096/0/0"), get("mx_quantize/4096/1/0"), get("mx_quantize/4096/2/0"),
            get("mx_quantize/4096/0/1"));
        const double g1 = get("mx_mxfp4_gemv/4096/4096/0"), g4 = get("mx_mxfp4_gemm/4096/4096/4");
        const double f1 = get("mx_f32_gemv/4096/4096/0"), f4 = get("mx_f32_gemm/4096/4096/4");
        std::printf(
            "GEMM, 4 tokens, 4096x4096 hot (µs): MXFP4xMXFP4 %.1f (%.2f x its GEMV), "
            "MXFP4xfloat %.1f (%.2f x its GEMV)\n",
            g4, g1 > 0 ? g4 / g1 : 0.0, f4, f1 > 0 ? f4 / f1 : 0.0);
    }
};

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    summary_reporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    reporter.summary();
    benchmark::Shutdown();
    return 0;
}
