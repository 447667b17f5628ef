// SPDX-License-Identifier: MIT
// GEMV / GEMM throughput of the W2A4, W2A16 (packed codes and bit planes) and W4A4 kernels
// against baselines run in the same process: OpenBLAS sgemv/sgemm, an int8×int8 GEMV, and a
// plain read of as many bytes as the packed weights (the bandwidth roofline), hot in cache and
// cold (copies cycled); on one and two threads (the default pool, and the old spawn-per-call
// executor), the AVX2 kernels forced through their xsimd architecture, and activation
// quantization alone against its old path.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <qift/bitplane.hpp>
#include <qift/gemm.hpp>
#include <qift/gemv.hpp>

#include "bench_support.hpp"

#if defined(QIFT_HAVE_OPENBLAS)
#include <cblas.h>
extern "C" void openblas_set_num_threads(int);
#endif

namespace {

// ---------------------------------------------------------------------------------------
// Executors: one thread (serial), or two through the default persistent pool
// (qift::thread_pool_executor) or the spawn-per-call executor qift shipped before it.

enum class executor_kind { pool, spawn };

void use_threads(int threads, executor_kind kind = executor_kind::pool) {
    if (threads == 1)
        qift::set_parallel_executor(qift::serial_executor);
    else if (kind == executor_kind::spawn)
        qift::set_parallel_executor(qift::detail::std_thread_executor);
    else
        qift::set_parallel_executor(nullptr);
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

// One GEMV benchmark over packed weights (or the same codes re-laid as a Matrix built from the
// packed_matrix), hot or cycled through cold copies; `call(w, y)` is the kernel under test. The
// byte count, and so the roofline, is that of the packed codes in every case.
template <class L, class Call, class Matrix = qift::packed_matrix<L>>
void run_packed_gemv(benchmark::State& st, const Call& call,
                     executor_kind kind = executor_kind::pool) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    use_threads(int(st.range(2)), kind);
    const auto first = random_packed<L>(n, k, 1);
    const std::size_t copies = st.range(3) ? cold_copies(first.code_bytes()) : 1;
    std::vector<Matrix> w(copies, Matrix(first));
    std::vector<float> y(n);
    std::size_t i = 0;
    for (auto _ : st) {
        call(w[i], y);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        i = i + 1 == copies ? 0 : i + 1;
    }
    set_counters(st, first.code_bytes());
    use_threads(1);
}

// Kernel variants: the default path, the literal shift-add kernel, the AVX2 (256-bit) kernels
// forced through their xsimd architecture in this binary, and the default path run through the
// spawn-per-call executor.
enum class variant { native, shift_add, avx2, spawn };

template <variant V>
auto variant_arch() {
#if defined(__AVX2__)
    if constexpr (V == variant::avx2)
        return xsimd::avx2{};
    else
#endif
        return xsimd::default_arch{};
}

template <class L, variant V = variant::native>
void bm_w2a4(benchmark::State& st) {
    const auto x = random_floats(std::size_t(st.range(1)), 2);
    const auto a = qift::quantize_activations(std::span<const float>(x));
    run_packed_gemv<L>(
        st,
        [&](const qift::packed_matrix<L>& w, std::vector<float>& y) {
            if constexpr (V == variant::shift_add)
                qift::gemv_shift_add(w, a, y);
            else
                qift::gemv(w, a, y, variant_arch<V>());
        },
        V == variant::spawn ? executor_kind::spawn : executor_kind::pool);
}

template <class L, variant V = variant::native>
void bm_w2a16(benchmark::State& st) {
    const auto x = random_floats(std::size_t(st.range(1)), 2);
    run_packed_gemv<L>(
        st,
        [&](const qift::packed_matrix<L>& w, std::vector<float>& y) {
            qift::gemv(w, std::span<const float>(x), y, variant_arch<V>());
        },
        V == variant::spawn ? executor_kind::spawn : executor_kind::pool);
}

// The bit-plane W2A16 GEMV (bitplane.hpp) on the same codes.
template <class L>
void bm_w2a16_bitplane(benchmark::State& st) {
    const auto x = random_floats(std::size_t(st.range(1)), 2);
    const auto call = [&](const qift::bitplane_matrix<L>& w, std::vector<float>& y) {
        qift::gemv(w, std::span<const float>(x), y);
    };
    run_packed_gemv<L, decltype(call), qift::bitplane_matrix<L>>(st, call);
}

// ---------------------------------------------------------------------------------------
// Activation quantization alone

// The path before the reused-storage overload and the vector code pass (kept verbatim in
// spirit, for the ratio): a scalar finite check, assign() of fresh buffers per call, an xsimd
// round-and-clip with per-lane narrowing, and a scalar sum.
namespace old_path {

qift::quantized_activations quantize_activations(qift::matrix_view<const float> x, float clip) {
    for (std::size_t t = 0; t < x.rows; ++t)
        for (std::size_t k = 0; k < x.cols; ++k)
            if (!std::isfinite(x(t, k))) throw qift::error("old_path: non-finite");
    qift::quantized_activations q;
    q.tokens = x.rows;
    q.cols = x.cols;
    q.padded_cols = qift::detail::padded_activation_cols(x.cols);
    q.codes.assign(q.tokens * q.padded_cols, 0);
    q.scales.assign(q.tokens, 0.0f);
    q.sums.assign(q.tokens, 0);
    using bf = xsimd::batch<float>;
    constexpr std::size_t width = bf::size;
    for (std::size_t t = 0; t < x.rows; ++t) {
        std::int8_t* codes = q.codes.data() + t * q.padded_cols;
        const float* p = &x(t, 0);
        const std::size_t n = x.cols, vec_end = n - n % width;
        bf mv(0.0f);
        for (std::size_t k = 0; k < vec_end; k += width)
            mv = xsimd::max(mv, xsimd::abs(bf::load_unaligned(p + k)));
        alignas(64) float lanes[width];
        mv.store_aligned(lanes);
        float m = 0.0f;
        for (float v : lanes) m = std::max(m, v);
        for (std::size_t k = vec_end; k < n; ++k) m = std::max(m, std::fabs(p[k]));
        const float scale = clip * m / 7.0f;
        if (scale != 0.0f) {
            const float inv = 1.0f / scale;
            const bf vinv(inv), vlo(-7.0f), vhi(7.0f);
            alignas(64) std::int32_t qv[width];
            for (std::size_t k = 0; k < vec_end; k += width) {
                const bf v = xsimd::nearbyint(bf::load_unaligned(p + k) * vinv);
                xsimd::batch_cast<std::int32_t>(xsimd::clip(v, vlo, vhi)).store_aligned(qv);
                for (std::size_t l = 0; l < width; ++l)
                    codes[k + l] = static_cast<std::int8_t>(qv[l]);
            }
            for (std::size_t k = vec_end; k < n; ++k)
                codes[k] =
                    static_cast<std::int8_t>(std::clamp(std::nearbyint(p[k] * inv), -7.0f, 7.0f));
        }
        q.scales[t] = scale;
        std::int32_t s = 0;
        for (std::size_t k = 0; k < n; ++k) s += codes[k];
        q.sums[t] = s;
    }
    return q;
}

}  // namespace old_path

enum class act_variant { old_path, allocating, reused, scalar_reference };

// Args: cols, tokens. Reports ns per value in the summary.
template <act_variant V>
void bm_act(benchmark::State& st) {
    const auto k = std::size_t(st.range(0)), m = std::size_t(st.range(1));
    const auto x = random_floats(m * k, 9);
    const qift::matrix_view<const float> xv(x.data(), m, k);
    qift::quantized_activations q = qift::quantize_activations(xv);
    std::vector<std::int8_t> codes(k);
    for (auto _ : st) {
        if constexpr (V == act_variant::old_path) {
            auto r = old_path::quantize_activations(xv, 1.0f);
            benchmark::DoNotOptimize(r.codes.data());
        } else if constexpr (V == act_variant::allocating) {
            auto r = qift::quantize_activations(xv);
            benchmark::DoNotOptimize(r.codes.data());
        } else if constexpr (V == act_variant::reused) {
            qift::quantize_activations(xv, q);
            benchmark::DoNotOptimize(q.codes.data());
        } else {
            for (std::size_t t = 0; t < m; ++t)
                q.scales[t] =
                    qift::detail::quantize_token_scalar({&x[t * k], k}, 1.0f, -7, codes.data());
            benchmark::DoNotOptimize(codes.data());
        }
        benchmark::ClobberMemory();
    }
    st.counters["values"] = double(m * k);
    st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations() * m * k));
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

// W2A16 GEMM on float activations: Matrix = packed_matrix<L> (per-row table tile) or
// bitplane_matrix<L>.
template <class L, class Matrix>
void bm_gemm_w2a16(benchmark::State& st) {
    const auto n = std::size_t(st.range(0)), k = std::size_t(st.range(1));
    const auto m = std::size_t(st.range(3));
    use_threads(int(st.range(2)));
    const Matrix w(random_packed<L>(n, k, 1));
    const auto x = random_floats(m * k, 5);
    qift::matrix<float> y(m, n);
    for (auto _ : st) {
        qift::gemm(w, qift::matrix_view<const float>(x.data(), m, k), y.view());
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    st.counters["ops"] = benchmark::Counter(double(2 * m * n * k) * double(st.iterations()),
                                            benchmark::Counter::kIsRate);
}

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

// The two-thread executor comparison and the forced-AVX2 kernels: the LLaMA-7B-like shapes.
void spawn_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"N", "K", "threads", "cold"});
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}})
        for (int cold : {0, 1}) b->Args({n, k, 2, cold});
    b->Unit(benchmark::kMicrosecond)->MinTime(0.2)->UseRealTime();
}

[[maybe_unused]] void avx2_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"N", "K", "threads", "cold"});
    for (auto [n, k] : {std::pair{4096, 4096}, {11008, 4096}})
        for (int cold : {0, 1}) b->Args({n, k, 1, cold});
    b->Unit(benchmark::kMicrosecond)->MinTime(0.2)->UseRealTime();
}

void act_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"K", "M"});
    for (int k : {4096, 11008})
        for (int m : {1, 64}) b->Args({k, m});
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
BENCHMARK(bm_w2a4<qift::levels::pot_mnz, variant::shift_add>)
    ->Apply(gemv_shapes)
    ->Name("w2a4_pot_mnz_shift_add");
BENCHMARK(bm_w2a4<qift::levels::mnz>)->Apply(gemv_shapes)->Name("w2a4_mnz");
BENCHMARK(bm_w2a16<qift::levels::nf2>)->Apply(gemv_shapes)->Name("w2a16_nf2");
BENCHMARK(bm_w2a16_bitplane<qift::levels::nf2>)->Apply(gemv_shapes)->Name("w2a16_nf2_bitplane");
BENCHMARK(bm_w2a4<qift::levels::int4>)->Apply(gemv_shapes)->Name("w4a4_int4");
BENCHMARK(bm_w2a4<qift::levels::mnz, variant::spawn>)->Apply(spawn_shapes)->Name("w2a4_mnz_spawn");
BENCHMARK(bm_w2a16<qift::levels::nf2, variant::spawn>)
    ->Apply(spawn_shapes)
    ->Name("w2a16_nf2_spawn");
BENCHMARK(bm_w2a4<qift::levels::int4, variant::spawn>)
    ->Apply(spawn_shapes)
    ->Name("w4a4_int4_spawn");
#if defined(__AVX512BW__)
// The 256-bit kernels of this build (VNNI where it has it), forced: compare with a build for
// -march=x86-64-v3 [-mavxvnni] for the true AVX2 machine (16 registers, VEX encodings).
BENCHMARK(bm_w2a4<qift::levels::pot_mnz, variant::avx2>)
    ->Apply(avx2_shapes)
    ->Name("w2a4_pot_mnz_avx2");
BENCHMARK(bm_w2a4<qift::levels::mnz, variant::avx2>)->Apply(avx2_shapes)->Name("w2a4_mnz_avx2");
BENCHMARK(bm_w2a16<qift::levels::nf2, variant::avx2>)->Apply(avx2_shapes)->Name("w2a16_nf2_avx2");
BENCHMARK(bm_w2a4<qift::levels::int4, variant::avx2>)->Apply(avx2_shapes)->Name("w4a4_int4_avx2");
#endif
BENCHMARK(bm_int8)->Apply(gemv_shapes)->Name("int8_gemv");
#if defined(QIFT_HAVE_OPENBLAS)
BENCHMARK(bm_sgemv)->Apply(sgemv_shapes)->Name("sgemv_f32");
BENCHMARK(bm_sgemm)->Apply(gemm_shapes)->Name("sgemm_f32");
#endif
BENCHMARK(bm_gemm<qift::levels::pot_mnz>)->Apply(gemm_shapes)->Name("gemm_w2a4_pot_mnz");
BENCHMARK(bm_gemm<qift::levels::int4>)->Apply(gemm_shapes)->Name("gemm_w4a4_int4");
BENCHMARK(bm_gemm_w2a16<qift::levels::nf2, qift::packed_matrix<qift::levels::nf2>>)
    ->Apply(gemm_shapes)
    ->Name("gemm_w2a16_nf2");
BENCHMARK(bm_gemm_w2a16<qift::levels::nf2, qift::bitplane_matrix<qift::levels::nf2>>)
    ->Apply(gemm_shapes)
    ->Name("gemm_w2a16_nf2_bitplane");
BENCHMARK(bm_act<act_variant::old_path>)->Apply(act_shapes)->Name("act_quant_old_path");
BENCHMARK(bm_act<act_variant::allocating>)->Apply(act_shapes)->Name("act_quant_allocating");
BENCHMARK(bm_act<act_variant::reused>)->Apply(act_shapes)->Name("act_quant_reused");
BENCHMARK(bm_act<act_variant::scalar_reference>)
    ->Apply(act_shapes)
    ->Name("act_quant_scalar_reference");

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

    // The family a variant is compared with: its name without the variant suffix.
    static std::string base_family(const std::string& family) {
        for (const char* suffix : {"_avx2", "_spawn", "_shift_add", "_bitplane"}) {
            const std::string sfx(suffix);
            if (family.size() > sfx.size() &&
                family.compare(family.size() - sfx.size(), sfx.size(), sfx) == 0)
                return family.substr(0, family.size() - sfx.size());
        }
        return family;
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
            "time / this time; x_base = default variant's time / this variant's (_avx2: "
            "AVX-512 kernel, _spawn: pool executor, _shift_add: byte-shuffle kernel, _bitplane: "
            "packed-code tile; the bit planes stream 32/30 of the packed bytes counted here); "
            "x_1thr = one-thread time of the same kernel (else of the default variant) / this "
            "two-thread time)\n");
        std::printf("%-26s %6s %6s %3s %5s %10s %8s %9s %9s %7s %7s\n", "kernel", "N", "K", "thr",
                    "cache", "us", "GB/s", "x_sgemv", "roofline", "x_base", "x_1thr");
        for (const auto& r : rows) {
            if (r.args.size() != 4 || r.family.rfind("sgemm", 0) == 0 ||
                r.family.rfind("gemm", 0) == 0)
                continue;
            const bool w4 = r.family.find("w4") != std::string::npos;
            const row* sg = find("sgemv_f32", r.args[0], r.args[1], r.args[2], 1);
            const row* rd = find(w4 ? "read_w4_bytes" : "read_w2_bytes", r.args[0], r.args[1],
                                 r.args[2], r.args[3]);
            const bool is_int8 = r.family == "int8_gemv";
            // x_base: the same kernel's default path (AVX-512 or pool) over this variant;
            // x_1thr: one thread (default path) over this two-thread time.
            const std::string base = base_family(r.family);
            const row* bs =
                base == r.family ? nullptr : find(base, r.args[0], r.args[1], r.args[2], r.args[3]);
            // (its own family's one-thread run where there is one, as for _bitplane)
            const row* one = nullptr;
            if (r.args[2] == 2) {
                one = find(r.family, r.args[0], r.args[1], 1, r.args[3]);
                if (!one) one = find(base, r.args[0], r.args[1], 1, r.args[3]);
            }
            const auto ratio = [](const row* b, double us) {
                return b ? std::to_string(b->us / us).substr(0, 5) : std::string("-");
            };
            std::printf(
                "%-26s %6lld %6lld %3lld %5s %10.1f %8.1f %9.2f %9s %7s %7s\n", r.family.c_str(),
                (long long)r.args[0], (long long)r.args[1], (long long)r.args[2],
                r.args[3] ? "cold" : "hot", r.us, r.bytes / r.us * 1e-3, sg ? sg->us / r.us : 0.0,
                rd && !is_int8 && r.family.rfind("read", 0) != 0 && r.family.rfind("sgemv", 0) != 0
                    ? std::to_string(rd->us / r.us).substr(0, 5).c_str()
                    : "-",
                ratio(bs, r.us).c_str(), ratio(one, r.us).c_str());
        }
        std::printf(
            "\nActivation quantization (K values a token, M tokens; x old = old path time / "
            "this time)\n");
        std::printf("%-28s %6s %4s %10s %9s %7s\n", "variant", "K", "M", "us", "ns/value", "x_old");
        for (const auto& r : rows) {
            if (r.family.rfind("act_quant", 0) != 0 || r.args.size() != 2) continue;
            const row* old = nullptr;
            for (const auto& o : rows)
                if (o.family == "act_quant_old_path" && o.args == r.args) old = &o;
            std::printf("%-28s %6lld %4lld %10.3f %9.3f %7.2f\n", r.family.c_str(),
                        (long long)r.args[0], (long long)r.args[1], r.us,
                        r.us * 1e3 / double(r.args[0] * r.args[1]), old ? old->us / r.us : 0.0);
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
