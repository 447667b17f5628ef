// SPDX-License-Identifier: MIT
// One-bit weight GEMVs (binary_matrix) against baselines run in the same process, one thread, at
// 4096×4096 and 11008×4096 (rows × cols), hot (one matrix, cache-resident where it fits) and cold
// (copies cycled, 256 MiB in all, as bench_gemv):
//  * bin1: one plane with per-row scales and column scales (ARB-RC-like Ŵ = diag(α_r)·B·diag(α_c))
//    with A8, A4 and float activations;
//  * billm: the six planes pack(billm_result) makes, scales per row and 128-column block: the
//    signs B1 unmasked, on 5% salient columns (a column mask) and on a high group (an element
//    bitmap of 1/4 of the rest), a residual plane B2 on the salient columns, and two constant
//    planes (group means) on the two masks, plus per-block means;
//  * qift's W2A4 GEMV (packed_matrix<levels::mnz> + quantized_activations), an int8 × int8 GEMV
//    and a plain read of as many bytes as each binary matrix stores (the bandwidth roofline).
// The summary prints µs, the bytes per weight of each format (everything stored) and the ratios;
// target: roofline / bin1 A8 >= 0.70 cold.
//
// Default run: about 40 s. Useful flags: --benchmark_min_time=0.05 (shorter, noisier),
// --benchmark_repetitions=3 (the summary then uses medians), --benchmark_filter=bin1_a8.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <qift/binary_matrix.hpp>
#include <qift/gemv.hpp>

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

// Random bits, 64 at a time (std::mt19937_64 is slow for 10^8 values).
struct bit_source {
    std::uint64_t s;
    std::uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
};

qift::matrix<std::int8_t> random_signs(std::size_t n, std::size_t k, std::uint64_t seed) {
    bit_source g{seed * 0x9E3779B97F4A7C15ull + 1};
    qift::matrix<std::int8_t> s(n, k);
    std::uint64_t w = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (i % 64 == 0) w = g.next();
        s.flat()[i] = static_cast<std::int8_t>((w >> (i % 64)) & 1 ? 1 : -1);
    }
    return s;
}

qift::matrix<float> uniform(std::size_t n, std::size_t k, unsigned seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> d(0.005f, 0.02f);
    qift::matrix<float> m(n, k);
    for (auto& x : m.flat()) x = d(gen);
    return m;
}

// The ARB-RC-like matrix: one plane, per-row scales α_r, column scales α_c.
qift::binary_matrix make_bin1(std::size_t n, std::size_t k) {
    const auto s = random_signs(n, k, 1);
    const auto a = uniform(n, 1, 2);
    const auto c = uniform(1, k, 3);
    return qift::binary_matrix({qift::binary_plane_view{s, a}}, 0, c.row(0));
}

// The layout pack(billm_result) makes (see the file comment): blocks of 128 columns.
qift::binary_matrix make_billm(std::size_t n, std::size_t k) {
    const std::size_t g = 128, blocks = (k + g - 1) / g;
    const auto b1 = random_signs(n, k, 4);
    const auto b2 = random_signs(n, k, 5);
    qift::matrix<std::uint8_t> high(n, k), sal(n, k);
    std::mt19937 gen(6);
    std::vector<std::uint8_t> salient(k);
    for (auto& v : salient) v = gen() % 20 == 0 ? 1 : 0;  // ~5% of the columns
    bit_source src{77};
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < k; ++j) {
            sal(i, j) = salient[j];
            // ~1/4 of the other elements in the high group
            high(i, j) = !salient[j] && (src.next() & 3) == 0 ? 1 : 0;
        }
    const auto a0 = uniform(n, blocks, 7), a1 = uniform(n, blocks, 8), a2 = uniform(n, blocks, 9),
               a3 = uniform(n, blocks, 10), a4 = uniform(n, blocks, 11),
               a5 = uniform(n, blocks, 12), mu = uniform(n, blocks, 13);
    const qift::matrix_view<const std::int8_t> none{};
    return qift::binary_matrix(
        {qift::binary_plane_view{b1, a0}, qift::binary_plane_view{b1, a1, sal},
         qift::binary_plane_view{b1, a2, high}, qift::binary_plane_view{b2, a3, sal},
         qift::binary_plane_view{none, a4, sal}, qift::binary_plane_view{none, a5, high}},
        g, {}, mu);
}

// Matrices are built once per shape (10^8 int8 inputs for 11008×4096 take a while).
const qift::binary_matrix& cached(int kind, std::size_t n, std::size_t k) {
    static std::map<std::tuple<int, std::size_t, std::size_t>, std::unique_ptr<qift::binary_matrix>>
        cache;
    auto& slot = cache[{kind, n, k}];
    if (!slot)
        slot =
            std::make_unique<qift::binary_matrix>(kind == 1 ? make_bin1(n, k) : make_billm(n, k));
    return *slot;
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

// Args: N (rows), K (cols), cold (0/1); template: matrix kind (1 or 3), activations (8, 4, 32).
template <int Kind, int Act>
void bm_binary(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const auto& w = cached(Kind, n, k);
    const auto x = gaussian(1, k, 2);
    const auto a8 = qift::quantize_int8_activations(w, x);
    const auto a4 = qift::quantize_activations(w, x);
    std::vector<float> y(n);
    run_cycled(st, w, w.size_bytes(), [&](const qift::binary_matrix& wi) {
        if constexpr (Act == 8)
            qift::gemv(wi, a8, y);
        else if constexpr (Act == 4)
            qift::gemv(wi, a4, y);
        else
            qift::gemv(wi, x.row(0), y);
        benchmark::DoNotOptimize(y.data());
    });
}

void bm_w2a4(benchmark::State& st) {
    using L = qift::levels::mnz;
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const auto w = random_packed<L>(n, k, 1);
    const auto a = qift::quantize_activations(gaussian(1, k, 2).row(0));
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
    for (auto& v : a) v = static_cast<std::int8_t>(int(gen() % 255) - 127);
    std::vector<std::int32_t> y(n);
    run_cycled(st, w, w.size(), [&](const qift::aligned_vector<std::int8_t>& wi) {
        bench::int8_gemv_rows(wi.data(), a.data(), k, 0, n, y.data());
        benchmark::DoNotOptimize(y.data());
    });
}

// Reads as many bytes as the binary matrix of kind Kind stores (size_bytes()).
template <int Kind>
void bm_read(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const std::size_t bytes = cached(Kind, n, k).size_bytes() / 64 * 64;
    const qift::aligned_vector<std::uint64_t> buf(bytes / 8, 1);
    std::uint64_t sink = 0;
    run_cycled(st, buf, bytes, [&](const qift::aligned_vector<std::uint64_t>& b) {
        sink += bench::read_words(b.data(), 0, b.size());
        benchmark::DoNotOptimize(sink);
    });
}

// GEMM over M tokens, A8 (args N, K, M; hot).
void bm_bin1_gemm(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const auto m = std::size_t(st.range(2));
    qift::set_parallel_executor(qift::serial_executor);
    const auto& w = cached(1, n, k);
    const auto a = qift::quantize_int8_activations(w, gaussian(m, k, 2));
    qift::matrix<float> y(m, n);
    for (auto _ : st) {
        qift::gemm(w, a, y);
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

BENCHMARK(bm_read<1>)->Apply(gemv_shapes)->Name("read_bin1_bytes");
BENCHMARK(bm_binary<1, 8>)->Apply(gemv_shapes)->Name("bin1_a8");
BENCHMARK(bm_binary<1, 4>)->Apply(gemv_shapes)->Name("bin1_a4");
BENCHMARK(bm_binary<1, 32>)->Apply(gemv_shapes)->Name("bin1_f32");
BENCHMARK(bm_read<3>)->Apply(gemv_shapes)->Name("read_billm_bytes");
BENCHMARK(bm_binary<3, 8>)->Apply(gemv_shapes)->Name("billm_a8");
BENCHMARK(bm_binary<3, 32>)->Apply(gemv_shapes)->Name("billm_f32");
BENCHMARK(bm_w2a4)->Apply(gemv_shapes)->Name("w2a4_mnz");
BENCHMARK(bm_int8)->Apply(gemv_shapes)->Name("int8_gemv");
BENCHMARK(bm_bin1_gemm)
    ->ArgNames({"N", "K", "M"})
    ->Args({4096, 4096, 8})
    ->Name("bin1_a8_gemm")
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.1)
    ->UseRealTime();

// Collects every run (the median of repetitions when there are several) for the summary, keyed
// "family/arg/arg/...".
class summary_reporter : public benchmark::ConsoleReporter {
  public:
    std::map<std::string, double> us;

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
                    key.push_back('/');
                    key.append(part, colon + 1, std::string::npos);
                }
                p = next;
            }
            us[key] = r.GetAdjustedRealTime();
        }
    }

    double get(const std::string& key) const {
        const auto it = us.find(key);
        return it == us.end() ? 0.0 : it->second;
    }

    void summary() const {
        static const char* const shapes[] = {"4096/4096", "11008/4096"};
        const auto at = [&](const char* fam, const char* shape, const char* cold) {
            return get(std::string(fam) + "/" + shape + "/" + cold);
        };
        std::printf("\nOne-bit GEMV summary (µs, one thread; ratios = time / time)\n");
        std::printf("%-11s %5s %8s %8s %8s %8s %8s %8s %8s %8s %8s\n", "shape", "cache", "bin1_a8",
                    "bin1_a4", "bin1_f32", "read1", "billm_a8", "billm_f32", "read6", "w2a4_mnz",
                    "int8");
        for (const char* shape : shapes)
            for (const char* cold : {"0", "1"})
                std::printf("%-11s %5s %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f\n",
                            shape, cold[0] == '1' ? "cold" : "hot", at("bin1_a8", shape, cold),
                            at("bin1_a4", shape, cold), at("bin1_f32", shape, cold),
                            at("read_bin1_bytes", shape, cold), at("billm_a8", shape, cold),
                            at("billm_f32", shape, cold), at("read_billm_bytes", shape, cold),
                            at("w2a4_mnz", shape, cold), at("int8_gemv", shape, cold));

        std::printf("\nbits per weight, everything stored (4096x4096 / 11008x4096):\n");
        for (auto [n, k] : {std::pair<std::size_t, std::size_t>{4096, 4096}, {11008, 4096}}) {
            const auto& b1 = cached(1, n, k);
            const auto& b3 = cached(3, n, k);
            std::printf(
                "  %zux%zu: bin1 %.4f (%zu bytes), billm %.4f (%zu bytes; %zu sign planes, %zu "
                "masks stored for 6 planes), w2a4 %.4f (codes + row scales), int8 8\n",
                n, k, b1.bits_per_weight(), b1.size_bytes(), b3.bits_per_weight(), b3.size_bytes(),
                b3.stored_sign_planes(), b3.stored_masks(),
                8.0 * double(n * k / 4 + n * 4) / double(n * k));
        }

        std::printf("\n%-40s %10s %10s %8s\n", "ratio", "4096", "11008", "target");
        const auto ratio = [&](const char* what, const char* num, const char* den, const char* c,
                               const char* target) {
            double v[2];
            int i = 0;
            for (const char* shape : shapes) {
                const double a = at(num, shape, c), b = at(den, shape, c);
                v[i++] = a > 0 && b > 0 ? a / b : 0.0;
            }
            std::printf("%-40s %10.2f %10.2f %8s\n", what, v[0], v[1], target);
        };
        ratio("roofline (read) / bin1 A8, cold", "read_bin1_bytes", "bin1_a8", "1", ">= 0.70");
        ratio("roofline (read) / bin1 A8, hot", "read_bin1_bytes", "bin1_a8", "0", "");
        ratio("roofline (read) / bin1 A4, cold", "read_bin1_bytes", "bin1_a4", "1", "");
        ratio("roofline (read) / bin1 float, cold", "read_bin1_bytes", "bin1_f32", "1", "");
        ratio("roofline (read) / billm A8, cold", "read_billm_bytes", "billm_a8", "1", "");
        ratio("roofline (read) / billm float, cold", "read_billm_bytes", "billm_f32", "1", "");
        ratio("bin1 A8 / W2A4 MNZ, hot", "bin1_a8", "w2a4_mnz", "0", "");
        ratio("bin1 A8 / W2A4 MNZ, cold", "bin1_a8", "w2a4_mnz", "1", "");
        ratio("bin1 A8 / int8, cold", "bin1_a8", "int8_gemv", "1", "");
        ratio("billm A8 / W2A4 MNZ, cold", "billm_a8", "w2a4_mnz", "1", "");
        const double g1 = get("bin1_a8/4096/4096/0"), g8 = get("bin1_a8_gemm/4096/4096/8");
        std::printf("GEMM, 8 tokens, 4096x4096 hot (µs): bin1 A8 %.1f (%.2f x its GEMV)\n", g8,
                    g1 > 0 ? g8 / g1 : 0.0);
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
