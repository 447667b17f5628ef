// SPDX-License-Identifier: MIT
// Scale search throughput: the xsimd quantization-error kernel against its scalar reference
// (same run, same flags), and a whole 4096 x 4096 RTN quantization per level set.
#include <qift/detail/scale_kernels.hpp>
#include <qift/levels.hpp>
#include <qift/scale.hpp>

#include <benchmark/benchmark.h>

#include <random>

namespace {

using namespace qift;

matrix<float> gaussian(std::size_t rows, std::size_t cols) {
    std::mt19937 gen(1);
    std::normal_distribution<float> n;
    matrix<float> m(rows, cols);
    for (auto& x : m.flat()) x = n(gen);
    return m;
}

template <class L>
void error_scalar(benchmark::State& state) {
    const auto w = gaussian(1, static_cast<std::size_t>(state.range(0)));
    const float e = static_cast<float>(state.range(1)) / 10.0f;
    for (auto _ : state)
        benchmark::DoNotOptimize(detail::quantization_error_scalar<L>(w.row(0), 0.4f, 0.0f, e));
    state.SetItemsProcessed(state.iterations() * state.range(0));
}

template <class L>
void error_simd(benchmark::State& state) {
    const auto w = gaussian(1, static_cast<std::size_t>(state.range(0)));
    const float e = static_cast<float>(state.range(1)) / 10.0f;
    for (auto _ : state)
        benchmark::DoNotOptimize(detail::quantization_error_kernel{}(xsimd::default_arch{},
                                                                     w.row(0), 0.4f, 0.0f, e, L{}));
    state.SetItemsProcessed(state.iterations() * state.range(0));
}

template <class L>
void quantize_matrix(benchmark::State& state) {
    const auto w = gaussian(4096, 4096);
    set_parallel_executor(state.range(0) == 1 ? parallel_executor(serial_executor) : nullptr);
    for (auto _ : state) benchmark::DoNotOptimize(quantize<L>(w));
    set_parallel_executor(nullptr);
    state.SetItemsProcessed(state.iterations() * 4096 * 4096);
    state.counters["threads"] = static_cast<double>(state.range(0));
}

}  // namespace

// range(0): row length, range(1): exponent x 10
BENCHMARK(error_scalar<levels::mnz>)->Args({4096, 20})->Args({4096, 24});
BENCHMARK(error_simd<levels::mnz>)->Args({4096, 20})->Args({4096, 24});
BENCHMARK(error_scalar<levels::e2m1>)->Args({4096, 24});
BENCHMARK(error_simd<levels::e2m1>)->Args({4096, 24});
BENCHMARK(quantize_matrix<levels::mnz>)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);
BENCHMARK(quantize_matrix<levels::asymmetric>)->Arg(2)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
