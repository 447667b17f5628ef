// SPDX-License-Identifier: MIT
// GEMV / GEMM throughput of the W2A4, W2A16 and W4A4 kernels against baselines run in the same
// process: OpenBLAS sgemv/sgemm, an int8×int8 GEMV, and a plain read of as many bytes as the
// packed weights (the bandwidth roofline), hot in cache and cold (copies cycled).
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <qift/gemm.hpp>
#include <qift/gemv.hpp>

#include "bench_support.hpp"

#if defined(QIFT_HAVE_OPENBLAS)
#include <cblas.h>
extern "C" void openblas_set_num_threads(int);
#endif

namespace {

// ---------------------------------------------------------------------------------------
// A persistent two-thread executor: what an engine installs with set_parallel_executor (the
// default executor starts threads per call, which costs more than a 4096×4096 W2 GEMV).

class spin_pool {
  public:
    spin_pool() : worker_([this] { loop(); }) {}
    ~spin_pool() {
        stop_.store(true);
        generation_.fetch_add(1);
        generation_.notify_one();
        worker_.join();
    }
    void run(std::size_t n, const qift::range_fn& body) {
        const std::size_t half = (n + 1) / 2;
        body_ = &body;
        begin_ = half;
        end_ = n;
        done_.store(false, std::memory_order_relaxed);
        generation_.fetch_add(1, std::memory_order_release);
        generation_.notify_one();
        if (half) body(0, half);
        // Spin briefly, then sleep: on a shared, oversubscribed machine a caller spinning on a
        // descheduled worker burns the time slice the worker needs (2-thread runs of 5-8 ms
        // for a 100 µs GEMV at load average 5 on 2 cores).
        for (int spins = 0; !done_.load(std::memory_order_acquire);)
            if (++spins > 20000) done_.wait(false, std::memory_order_acquire);
    }

  private:
    void loop() {
        std::uint64_t seen = 0;
        for (;;) {
            std::uint64_t g;
            int spins = 0;
            // spin briefly (GEMV calls come back to back), then sleep on the futex
            while ((g = generation_.load(std::memory_order_acquire)) == seen)
                if (++spins > 20000) generation_.wait(seen);
            seen = g;
            if (stop_.load()) return;
            if (begin_ < end_) (*body_)(begin_, end_);
            done_.store(true, std::memory_order_release);
            done_.notify_one();
        }
    }
    const qift::range_fn* body_ = nullptr;
    std::size_t begin_ = 0, end_ = 0;
    std::atomic<std::uint64_t> generation_{0};
    std::atomic<bool> done_{true}, stop_{false};
    std::thread worker_;
};

spin_pool& pool() {
    static spin_pool p;
    return p;
}

void use_threads(int threads) {
    if (threads == 1)
        qift::set_parallel_executor(qift::serial_executor);
    else
        qift::set_parallel_executor(
            [](std::size_t n, const qift::range_fn& body) { pool().run(n, body); });
#if defined(QIFT_HAVE_OPENBLAS)
    openblas_set_num_threads(threads);
#endif
}

// Copies cycled in the cold runs: at least 256 MiB in total, well beyond the L3.
using bench::cold_copies;
using bench::random_packed;

std::vector<float> random_floats(std::size_t n, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) x = d(gen);
    return v;
}

// Arguments: N (rows), K (cols), threads, cold (0/1).
void set_counters(benchmark::State& st, std::size_t weight_bytes) {
    st.counters["weight_bytes"] = static_cast<double>(weight_bytes);
    st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations() * weight_bytes));
}

// One GEMV benchmark over packed weights, hot or cycled through cold copies; `call(w, y)` is
// the kernel under test.
template <class L, class Call>
void run_packed_gemv(benchmark::State& st, const Call& call) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    use_threads(int(st.range(2)));
    const auto first = random_packed<L>(n, k, 1);
    const std::size_t copies = st.range(3) ? cold_copies(first.code_bytes()) : 1;
    std::vector<qift::packed_matrix<L>> w(copies, first);
    std::vector<float> y(n);
    std::size_t i = 0;
    for (auto _ : st) {
        call(w[i], y);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        i = i + 1 == copies ? 0 : i + 1;
    }
    set_counters(st, first.code_bytes());
}

template <class L, bool ShiftAdd = false>
void bm_w2a4(benchmark::State& st) {
    const auto x = random_floats(std::size_t(st.range(1)), 2);
    const auto a = qift::quantize_activations(std::span<const float>(x));
    run_packed_gemv<L>(st, [&](const qift::packed_matrix<L>& w, std::vector<float>& y) {
        if constexpr (ShiftAdd)
            qift::gemv_shift_add(w, a, y);
        else
            qift::gemv(w, a, y);
    });
}

template <class L>
void bm_w2a16(benchmark::State& st) {
    const auto x = random_floats(std::size_t(st.range(1)), 2);
    run_packed_gemv<L>(st, [&](const qift::packed_matrix<L>& w, std::vector<float>& y) {
        qift::gemv(w, std::span<const float>(x), y);
    });
}

void bm_int8(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    use_threads(int(st.range(2)));
    const std::size_t bytes = n * k;
    const std::size_t copies = st.range(3) ? cold_copies(bytes) : 1;
    std::mt19937 gen(3);
    std::vector<qift::aligned_vector<std::int8_t>> w(copies,
                                                     qift::aligned_vector<std::int8_t>(bytes));
    for (auto& v : w[0]) v = static_cast<std::int8_t>(int(gen() % 255) - 127);
    for (std::size_t c = 1; c < copies; ++c) w[c] = w[0];
    qift::aligned_vector<std::int8_t> a(k);
    for (auto& v : a) v = static_cast<std::int8_t>(int(gen() % 16) - 8);
    std::vector<std::int32_t> y(n);
    std::size_t i = 0;
    for (auto _ : st) {
        const std::int8_t* wp = w[i].data();
        qift::parallel_for((n + 15) / 16, [&](std::size_t b, std::size_t e) {
            bench::int8_gemv_rows(wp, a.data(), k, b * 16, std::min(n, e * 16), y.data());
        });
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        i = i + 1 == copies ? 0 : i + 1;
    }
    set_counters(st, bytes);
}

// Reads range(4) bytes per call (the packed size of an N×K matrix at `bits` bits a weight).
template <unsigned Bits>
void bm_read(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    use_threads(int(st.range(2)));
    const std::size_t bytes = n * ((k * Bits + 511) / 512 * 64);
    const std::size_t copies = st.range(3) ? cold_copies(bytes) : 1;
    std::vector<qift::aligned_vector<std::uint64_t>> buf(
        copies, qift::aligned_vector<std::uint64_t>(bytes / 8, 1));
    std::uint64_t sink[2] = {0, 0};
    std::size_t i = 0;
    for (auto _ : st) {
        const std::uint64_t* p = buf[i].data();
        const std::size_t words = bytes / 8, chunk = 4096;
        qift::parallel_for((words + chunk - 1) / chunk, [&](std::size_t b, std::size_t e) {
            sink[b == 0 ? 0 : 1] += bench::read_words(p, b * chunk, std::min(words, e * chunk));
        });
        benchmark::DoNotOptimize(sink);
        i = i + 1 == copies ? 0 : i + 1;
    }
    set_counters(st, bytes);
}

#if defined(QIFT_HAVE_OPENBLAS)
void bm_sgemv(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    use_threads(int(st.range(2)));
    const auto w = random_floats(n * k, 4);
    const auto x = random_floats(k, 5);
    std::vector<float> y(n);
    for (auto _ : st) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, int(n), int(k), 1.0f, w.data(), int(k), x.data(),
                    1, 0.0f, y.data(), 1);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    set_counters(st, n * k * 4);
}

// Args: N, K, threads, M
void bm_sgemm(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const auto m = std::size_t(st.range(3));
    use_threads(int(st.range(2)));
    const auto w = random_floats(n * k, 4);
    const auto x = random_floats(m * k, 5);
    std::vector<float> y(m * n);
    for (auto _ : st) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(n), int(k), 1.0f, x.data(),
                    int(k), w.data(), int(k), 0.0f, y.data(), int(n));
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    st.counters["ops"] = benchmark::Counter(double(2 * m * n * k) * double(st.iterations()),
                                            benchmark::Counter::kIsRate);
}
#endif

template <class L>
void bm_gemm(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const auto m = std::size_t(st.range(3));
    use_threads(int(st.range(2)));
    const auto w = random_packed<L>(n, k, 1);
    const auto x = random_floats(m * k, 5);
    const auto a = qift::quantize_activations(qift::matrix_view<const float>(x.data(), m, k));
    qift::matrix<float> y(m, n);
    for (auto _ : st) {
        qift::gemm(w, a, y);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    st.counters["ops"] = benchmark::Counter(double(2 * m * n * k) * double(st.iterations()),
                                            benchmark::Counter::kIsRate);
}

void gemv_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"N", "K", "threads", "cold"});
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}, {4096, 11008}})
        for (int t : {1, 2})
            for (int cold : {0, 1}) b->Args({n, k, t, cold});
    b->Unit(benchmark::kMicrosecond)->MinTime(0.2)->UseRealTime();
}

void sgemv_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"N", "K", "threads", "cold"});
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}, {4096, 11008}})
        for (int t : {1, 2}) b->Args({n, k, t, 1});
    b->Unit(benchmark::kMicrosecond)->MinTime(0.2)->UseRealTime();
}

void gemm_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"N", "K", "threads", "M"});
    for (int m : {64, 256})
        for (int t : {1, 2}) b->Args({4096, 4096, t, m});
    b->Unit(benchmark::kMillisecond)->MinTime(0.2)->UseRealTime();
}

BENCHMARK(bm_read<2>)->Apply(gemv_shapes)->Name("read_w2_bytes");
BENCHMARK(bm_read<4>)->Apply(gemv_shapes)->Name("read_w4_bytes");
BENCHMARK(bm_w2a4<qift::levels::pot_mnz>)->Apply(gemv_shapes)->Name("w2a4_pot_mnz");
BENCHMARK(bm_w2a4<qift::levels::pot_mnz, true>)->Apply(gemv_shapes)->Name("w2a4_pot_mnz_shift_add");
BENCHMARK(bm_w2a4<qift::levels::mnz>)->Apply(gemv_shapes)->Name("w2a4_mnz");
BENCHMARK(bm_w2a16<qift::levels::nf2>)->Apply(gemv_shapes)->Name("w2a16_nf2");
BENCHMARK(bm_w2a4<qift::levels::int4>)->Apply(gemv_shapes)->Name("w4a4_int4");
BENCHMARK(bm_int8)->Apply(gemv_shapes)->Name("int8_gemv");
#if defined(QIFT_HAVE_OPENBLAS)
BENCHMARK(bm_sgemv)->Apply(sgemv_shapes)->Name("sgemv_f32");
BENCHMARK(bm_sgemm)->Apply(gemm_shapes)->Name("sgemm_f32");
#endif
BENCHMARK(bm_gemm<qift::levels::pot_mnz>)->Apply(gemm_shapes)->Name("gemm_w2a4_pot_mnz");
BENCHMARK(bm_gemm<qift::levels::int4>)->Apply(gemm_shapes)->Name("gemm_w4a4_int4");

// Collects every run so the summary can put each kernel beside its baselines.
class summary_reporter : public benchmark::ConsoleReporter {
  public:
    struct row {
        std::string family;
        std::vector<std::int64_t> args;
        double us;
        double bytes;
        double ops;
    };
    std::vector<row> rows;

    void ReportRuns(const std::vector<Run>& runs) override {
        ConsoleReporter::ReportRuns(runs);
        for (const auto& r : runs) {
            if (r.error_occurred) continue;
            // With --benchmark_repetitions=N the summary uses each benchmark's median.
            if (r.run_type == Run::RT_Aggregate ? r.aggregate_name != "median" : r.repetitions > 1)
                continue;
            std::string name = r.benchmark_name();
            if (const auto agg = name.rfind("_median"); agg != std::string::npos) name.erase(agg);
            const auto slash = name.find('/');
            row x{name.substr(0, slash), {}, r.GetAdjustedRealTime(), 0.0, 0.0};
            for (std::size_t p = slash; p != std::string::npos && p < name.size();) {
                const auto colon = name.find(':', p);
                const auto next = name.find('/', p + 1);
                if (colon == std::string::npos) break;
                const auto end = next == std::string::npos ? name.size() : next;
                if (colon < end && name.compare(p + 1, colon - p - 1, "min_time") != 0)
                    x.args.push_back(std::stoll(name.substr(colon + 1, end - colon - 1)));
                p = next;
            }
            if (auto it = r.counters.find("weight_bytes"); it != r.counters.end())
                x.bytes = it->second.value;
            if (auto it = r.counters.find("ops"); it != r.counters.end()) x.ops = it->second.value;
            rows.push_back(x);
        }
    }

    const row* find(const std::string& family, std::int64_t n, std::int64_t k, std::int64_t t,
                    std::int64_t c) const {
        for (const auto& r : rows)
            if (r.family == family && r.args.size() == 4 && r.args[0] == n && r.args[1] == k &&
                r.args[2] == t && r.args[3] == c)
                return &r;
        return nullptr;
    }

    void summary() const {
        std::printf(
            "\nGEMV summary (time in µs; GB/s of weight bytes; x sgemv = sgemv time / "
            "this time; roofline = read of the same bytes, same threads and hot/cold, "
            "time / this time)\n");
        std::printf("%-24s %6s %6s %3s %5s %10s %8s %9s %9s\n", "kernel", "N", "K", "thr", "cache",
                    "us", "GB/s", "x_sgemv", "roofline");
        for (const auto& r : rows) {
            if (r.args.size() != 4 || r.family.rfind("sgemm", 0) == 0 ||
                r.family.rfind("gemm", 0) == 0)
                continue;
            const bool w4 = r.family.find("w4") != std::string::npos;
            const row* sg = find("sgemv_f32", r.args[0], r.args[1], r.args[2], 1);
            const row* rd = find(w4 ? "read_w4_bytes" : "read_w2_bytes", r.args[0], r.args[1],
                                 r.args[2], r.args[3]);
            const bool is_int8 = r.family == "int8_gemv";
            std::printf(
                "%-24s %6lld %6lld %3lld %5s %10.1f %8.1f %9.2f %9s\n", r.family.c_str(),
                (long long)r.args[0], (long long)r.args[1], (long long)r.args[2],
                r.args[3] ? "cold" : "hot", r.us, r.bytes / r.us * 1e-3, sg ? sg->us / r.us : 0.0,
                rd && !is_int8 && r.family.rfind("read", 0) != 0 && r.family.rfind("sgemv", 0) != 0
                    ? std::to_string(rd->us / r.us).substr(0, 5).c_str()
                    : "-");
        }
        std::printf(
            "\nGEMM summary (N = K = 4096; Gop/s = 2·M·N·K / time; x sgemm = sgemm time "
            "/ this time)\n");
        std::printf("%-24s %5s %3s %10s %9s %9s\n", "kernel", "M", "thr", "ms", "Gop/s", "x_sgemm");
        for (const auto& r : rows) {
            if (r.args.size() != 4 ||
                (r.family.rfind("sgemm", 0) != 0 && r.family.rfind("gemm", 0) != 0))
                continue;
            const row* sg = find("sgemm_f32", r.args[0], r.args[1], r.args[2], r.args[3]);
            std::printf("%-24s %5lld %3lld %10.2f %9.1f %9.2f\n", r.family.c_str(),
                        (long long)r.args[3], (long long)r.args[2], r.us, r.ops * 1e-9,
                        sg ? sg->us / r.us : 0.0);
        }
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
