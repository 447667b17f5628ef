// SPDX-License-Identifier: MIT
// Decode attention, 32 query heads over 8 kv heads of head_dim 128, single thread: the KV4
// cache against a float32 cache attention written here (same layout and kernel, float storage),
// in the same run. Reports ns per token of context and bytes per cached token.
#include <qift/kv_cache.hpp>

#include <benchmark/benchmark.h>

#include <random>
#include <vector>

namespace {

constexpr std::size_t head_dim = 128, n_heads = 32, n_kv = 8, group = n_heads / n_kv;

std::vector<float> gaussian(std::size_t n, std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> nd;
    std::vector<float> x(n);
    for (auto& e : x) e = nd(gen);
    return x;
}

// Time per cached token and the bytes of K and V one attention call streams per token.
void set_token_counters(benchmark::State& state, std::size_t tokens, std::size_t bytes_per_token) {
    state.counters["ns_per_token"] =
        benchmark::Counter(double(tokens), benchmark::Counter::kIsIterationInvariantRate |
                                               benchmark::Counter::kInvert);
    state.counters["bytes_per_token"] = double(bytes_per_token);
    state.SetBytesProcessed(state.iterations() * std::int64_t(tokens * bytes_per_token));
}

// The float32 baseline: keys in the same transposed blocks of 16 tokens as the KV4 cache
// (detail::float_key_blocks, [kv head][block][head_dim][16] floats: scores of 16 tokens per
// vector, no horizontal sums) and values token-major ([kv head][token][head_dim]), attended by
// the same kernel (detail::attend_rows), so the ratio isolates what the storage format costs or
// saves; both float sources prefetch in software, which brought the 256 MiB a call streams at
// 32768 tokens close to the measured single-thread read bandwidth. float32_rows_attention keeps
// the keys token-major (one reduced dot per token and head), to show the layout choice holds for
// floats too.
void float32_attention(benchmark::State& state) {
    const auto T = static_cast<std::size_t>(state.range(0));
    const std::size_t blocks = (T + 15) / 16;
    const auto kr = gaussian(n_kv * T * head_dim, 1), v = gaussian(n_kv * T * head_dim, 2);
    qift::aligned_vector<float> k(n_kv * blocks * 16 * head_dim, 0.0f);
    for (std::size_t g = 0; g < n_kv; ++g)
        for (std::size_t t = 0; t < T; ++t)
            for (std::size_t i = 0; i < head_dim; ++i)
                k[g * blocks * 16 * head_dim + qift::detail::key_block_index(t, i, head_dim)] =
                    kr[(g * T + t) * head_dim + i];
    const auto q = gaussian(n_heads * head_dim, 3);
    std::vector<float> out(n_heads * head_dim), scores(group * T), scratch(32 * head_dim);
    for (auto _ : state) {
        for (std::size_t g = 0; g < n_kv; ++g)
            qift::detail::attend_rows<xsimd::default_arch, head_dim>(
                qift::detail::float_key_blocks<head_dim>{&k[g * blocks * 16 * head_dim]},
                qift::detail::float_rows<head_dim>{&v[g * T * head_dim]}, &q[g * group * head_dim],
                group, T, &out[g * group * head_dim], scratch.data(), scores.data());
        benchmark::DoNotOptimize(out.data());
    }
    set_token_counters(state, T, 2 * n_kv * head_dim * sizeof(float));
}

void float32_rows_attention(benchmark::State& state) {
    const auto T = static_cast<std::size_t>(state.range(0));
    const auto k = gaussian(n_kv * T * head_dim, 1), v = gaussian(n_kv * T * head_dim, 2);
    const auto q = gaussian(n_heads * head_dim, 3);
    std::vector<float> out(n_heads * head_dim), scores(group * T), scratch(32 * head_dim);
    for (auto _ : state) {
        for (std::size_t g = 0; g < n_kv; ++g)
            qift::detail::attend_rows<xsimd::default_arch, head_dim>(
                qift::detail::float_rows<head_dim>{&k[g * T * head_dim]},
                qift::detail::float_rows<head_dim>{&v[g * T * head_dim]}, &q[g * group * head_dim],
                group, T, &out[g * group * head_dim], scratch.data(), scores.data());
        benchmark::DoNotOptimize(out.data());
    }
    set_token_counters(state, T, 2 * n_kv * head_dim * sizeof(float));
}

void kv4_attention(benchmark::State& state) {
    const auto T = static_cast<std::size_t>(state.range(0));
    qift::set_parallel_executor(qift::serial_executor);  // single thread, like the baseline
    qift::kv_cache<> cache({.head_dim = head_dim, .n_kv_heads = n_kv, .capacity = T});
    const auto k = gaussian(T * n_kv * head_dim, 1), v = gaussian(T * n_kv * head_dim, 2);
    cache.append(qift::matrix_view<const float>(k.data(), T, n_kv * head_dim),
                 qift::matrix_view<const float>(v.data(), T, n_kv * head_dim));
    const auto q = gaussian(n_heads * head_dim, 3);
    std::vector<float> out(n_heads * head_dim);
    for (auto _ : state) {
        cache.attend(q, n_heads, out);
        benchmark::DoNotOptimize(out.data());
    }
    qift::set_parallel_executor(nullptr);
    set_token_counters(state, T, qift::kv_cache<>::bytes_per_token(n_kv, head_dim));
}

}  // namespace

BENCHMARK(float32_attention)->Arg(512)->Arg(4096)->Arg(32768)->Unit(benchmark::kMicrosecond);
BENCHMARK(float32_rows_attention)->Arg(512)->Arg(4096)->Arg(32768)->Unit(benchmark::kMicrosecond);
BENCHMARK(kv4_attention)->Arg(512)->Arg(4096)->Arg(32768)->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
