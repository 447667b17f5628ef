// SPDX-License-Identifier: MIT
// GPTQ on a 4096×4096 layer (MNZ, block 128, groups off and 128) on 1 and 2 threads, against an
// unblocked, non-lazy solve in the same run; plus the lazy updates and H⁻¹ factor on their own.
// CPU times are the whole process's (all threads), so CPU/real shows how much the run got.
#include <benchmark/benchmark.h>

#include <qift/gptq.hpp>

#include <algorithm>
#include <random>
#include <thread>
#include <vector>

namespace {

constexpr std::size_t dim = 4096;

// Exactly `threads` workers (the default executor would use every hardware thread).
qift::parallel_executor fixed_threads(std::size_t threads) {
    return [threads](std::size_t n, const qift::range_fn& body) {
        const std::size_t t = std::min(threads, n);
        if (t <= 1) return body(0, n);
        std::vector<std::thread> pool;
        const std::size_t chunk = (n + t - 1) / t;
        for (std::size_t b = chunk; b < n; b += chunk)
            pool.emplace_back([&body, b, e = std::min(n, b + chunk)] { body(b, e); });
        body(0, std::min(n, chunk));
        for (auto& th : pool) th.join();
    };
}

struct problem {
    qift::matrix<float> w;
    qift::matrix<double> h;
};

const problem& layer() {
    static const problem p = [] {
        std::mt19937 rng(1);
        std::normal_distribution<float> nd;
        problem q{qift::matrix<float>(dim, dim), {}};
        for (auto& v : q.w.flat()) v = nd(rng) * 0.02f;
        // Correlated calibration inputs: a shared low-rank component plus noise.
        const std::size_t tokens = 2048, rank = 64;
        qift::matrix<float> basis(rank, dim), x(tokens, dim);
        for (auto& v : basis.flat()) v = nd(rng);
        for (std::size_t t = 0; t < tokens; ++t) {
            float z[rank];
            for (auto& v : z) v = nd(rng);
            for (std::size_t c = 0; c < dim; ++c) {
                float s = nd(rng) * 0.5f;
                for (std::size_t k = 0; k < rank; ++k) s += z[k] * basis(k, c) * 0.2f;
                x(t, c) = s;
            }
        }
        qift::set_parallel_executor(fixed_threads(2));
        qift::hessian_accumulator acc(dim);
        acc.add(x.view());
        q.h = acc.hessian();
        qift::set_parallel_executor(nullptr);
        return q;
    }();
    return p;
}

// Flops of the lazy batch updates of one solve: Σ over blocks of 2·out·bw·(in − end).
double lazy_flops(std::size_t out, std::size_t in, std::size_t block) {
    double f = 0.0;
    for (std::size_t i2 = block; i2 < in; i2 += block) f += 2.0 * double(out * block * (in - i2));
    return f;
}

void BM_gptq(benchmark::State& state) {
    const problem& p = layer();
    const std::size_t threads = static_cast<std::size_t>(state.range(0));
    qift::set_parallel_executor(fixed_threads(threads));
    qift::gptq_options opt;
    opt.block_size = 128;
    opt.scale.group_size = static_cast<std::size_t>(state.range(1));
    double loss = 0.0;
    for (auto _ : state) {
        const auto res = qift::gptq<qift::levels::mnz>(p.w.view(), p.h, opt);
        loss = res.proxy_loss;
        benchmark::DoNotOptimize(res.quantized.codes().data());
    }
    qift::set_parallel_executor(nullptr);
    state.counters["proxy_loss"] = loss;
    // The lazy updates' flops over the whole solve's time (BM_lazy_updates times them alone).
    state.counters["lazy_GFLOP/s"] = benchmark::Counter(
        lazy_flops(dim, dim, 128) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.SetItemsProcessed(state.iterations() * std::int64_t(dim * dim));
}
BENCHMARK(BM_gptq)
    ->ArgNames({"threads", "group"})
    ->Args({1, 0})
    ->Args({2, 0})
    ->Args({1, 128})
    ->Args({2, 128})
    ->Unit(benchmark::kSecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Iterations(2);

// The baseline: the same solve unblocked and non-lazy (every column updates all remaining
// columns at once; block_size = 1 makes each lazy update a rank-1 update of the rest).
void BM_gptq_unblocked(benchmark::State& state) {
    const problem& p = layer();
    const std::size_t threads = static_cast<std::size_t>(state.range(0));
    qift::set_parallel_executor(fixed_threads(threads));
    qift::gptq_options opt;
    opt.block_size = 1;
    opt.scale.group_size = static_cast<std::size_t>(state.range(1));
    for (auto _ : state) {
        const auto res = qift::gptq<qift::levels::mnz>(p.w.view(), p.h, opt);
        benchmark::DoNotOptimize(res.quantized.codes().data());
    }
    qift::set_parallel_executor(nullptr);
    state.counters["lazy_GFLOP/s"] = benchmark::Counter(
        lazy_flops(dim, dim, 1) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.SetItemsProcessed(state.iterations() * std::int64_t(dim * dim));
}
BENCHMARK(BM_gptq_unblocked)
    ->ArgNames({"threads", "group"})
    ->Args({1, 128})
    ->Args({2, 128})
    ->Unit(benchmark::kSecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Iterations(1);

// The lazy batch updates of one solve alone, as gptq() runs them: tiles of 256 rows in
// parallel, W[:, end:] −= Err·Hinv[block, end:] after each block of 128 columns.
void BM_lazy_updates(benchmark::State& state) {
    const std::size_t threads = static_cast<std::size_t>(state.range(0)), nb = 128, tile = 256;
    qift::set_parallel_executor(fixed_threads(threads));
    std::mt19937 rng(3);
    std::normal_distribution<float> nd;
    qift::matrix<float> wt(dim, dim), ut(dim, dim), err(nb, dim);
    for (auto& v : wt.flat()) v = nd(rng);
    for (auto& v : ut.flat()) v = nd(rng) * 0.01f;
    for (auto& v : err.flat()) v = nd(rng) * 0.01f;
    for (auto _ : state) {
        qift::parallel_for(dim / tile, [&](std::size_t b, std::size_t e) {
            for (std::size_t t = b; t < e; ++t)
                for (std::size_t i2 = nb; i2 < dim; i2 += nb)
                    qift::detail::gemm_sub<float>(
                        {&wt(i2, t * tile), dim - i2, tile, dim},
                        qift::matrix_view<const float>(&ut(i2, i2 - nb), dim - i2, nb, dim),
                        qift::matrix_view<const float>(&err(0, t * tile), nb, tile, dim));
        });
        benchmark::DoNotOptimize(wt.data());
    }
    qift::set_parallel_executor(nullptr);
    state.counters["GFLOP/s"] = benchmark::Counter(lazy_flops(dim, dim, nb) * 1e-9,
                                                   benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_lazy_updates)
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Iterations(3);

// The upper Cholesky factor of H⁻¹ alone, in float as gptq() computes it (2n³/3 flops).
void BM_inverse_cholesky(benchmark::State& state) {
    const problem& p = layer();
    qift::set_parallel_executor(fixed_threads(static_cast<std::size_t>(state.range(0))));
    qift::matrix<double> h = p.h;
    for (std::size_t i = 0; i < dim; ++i) h(i, i) += 0.01;
    qift::matrix<float> ut(dim, dim);
    for (auto _ : state) {
        const bool ok = qift::detail::inverse_cholesky_upper_transposed<float>(h.view(), ut.view());
        benchmark::DoNotOptimize(ok);
    }
    qift::set_parallel_executor(nullptr);
    state.counters["GFLOP/s"] =
        benchmark::Counter(2.0 / 3.0 * double(dim) * double(dim) * double(dim) * 1e-9,
                           benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_inverse_cholesky)
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Iterations(2);

}  // namespace

BENCHMARK_MAIN();
