// SPDX-License-Identifier: MIT
// Single-thread float32 Hadamard transform against the textbook radix-2 loop compiled in the
// same binary: ns/transform, ns/element and the speedup over the baseline measured just before.
#include <qift/hadamard.hpp>

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

// The baseline: the textbook radix-2 loop (h doubling, in place), which is the library's own
// scalar reference detail::fwht_reference with scale 1, compiled here with the same flags.
void textbook_fwht(float* x, std::size_t n) {
    qift::detail::fwht_reference(x, n, 1.0f);
}

// The baseline for n = K·2^m: the textbook FWHT on each row of the K×2^m view, then the
// textbook product with the ±1 matrix H_K across the rows.
struct textbook_composite {
    std::size_t n = 0, k = 1, len = 0;
    std::vector<float> h, scratch;

    explicit textbook_composite(std::size_t size) : n(size) {
        const auto f = qift::find_hadamard_factorization(n);
        len = f->power_of_two;
        for (std::size_t b : f->blocks) k *= b;
        // Blocks multiplied out: one dense K×K matrix, as a plain implementation would use.
        const qift::matrix<float> hk = qift::hadamard_matrix(k);
        h.assign(hk.data(), hk.data() + k * k);
        scratch.resize(n);
    }

    void operator()(float* x) {
        for (std::size_t r = 0; r < n; r += len) textbook_fwht(x + r, len);
        if (k == 1) return;
        for (std::size_t i = 0; i < k; ++i) {
            float* out = scratch.data() + i * len;
            for (std::size_t c = 0; c < len; ++c) out[c] = 0.0f;
            for (std::size_t j = 0; j < k; ++j) {
                const float s = h[i * k + j];
                const float* in = x + j * len;
                for (std::size_t c = 0; c < len; ++c) out[c] += s * in[c];
            }
        }
        std::copy(scratch.begin(), scratch.end(), x);
    }
};

std::map<std::size_t, double>& baseline_ns() {
    static std::map<std::size_t, double> m;
    return m;
}

std::vector<float> input(std::size_t n) {
    std::mt19937 gen(1);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = dist(gen);
    return v;
}

// Runs `transform` on one buffer for the benchmark's iterations. Both sides are unnormalized,
// so values grow to inf/NaN over the iterations; x86 adds run at the same speed on those.
template <class Fn>
double run(benchmark::State& state, std::size_t n, Fn&& transform) {
    std::vector<float> x = input(n);
    const auto start = std::chrono::steady_clock::now();
    for (auto _ : state) {
        transform(x.data());
        benchmark::DoNotOptimize(x.data());
        benchmark::ClobberMemory();
    }
    const auto stop = std::chrono::steady_clock::now();
    const double ns = std::chrono::duration<double, std::nano>(stop - start).count() /
                      static_cast<double>(state.iterations());
    state.counters["ns/transform"] = ns;
    state.counters["ns/element"] = ns / static_cast<double>(n);
    const auto elements = state.iterations() * static_cast<std::int64_t>(n);
    state.SetItemsProcessed(elements);
    state.SetBytesProcessed(elements * static_cast<std::int64_t>(sizeof(float)));
    return ns;
}

bool is_power_of_two(std::size_t n) {
    return (n & (n - 1)) == 0;
}

void bench_textbook(benchmark::State& state, std::size_t n) {
    double ns;
    if (is_power_of_two(n)) {
        ns = run(state, n, [n](float* x) { textbook_fwht(x, n); });
    } else {
        textbook_composite t(n);
        ns = run(state, n, [&t](float* x) { t(x); });
    }
    baseline_ns()[n] = ns;
}

template <class Arch>
void bench_qift(benchmark::State& state, std::size_t n) {
    const double ns = run(state, n, [n](float* x) {
        qift::hadamard_transform<Arch>(std::span<float>(x, n), qift::hadamard_norm::none);
    });
    if (auto it = baseline_ns().find(n); it != baseline_ns().end())
        state.counters["speedup"] = it->second / ns;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::size_t> sizes;
    for (std::size_t n = 256; n <= 65536; n *= 2) sizes.push_back(n);
    sizes.push_back(11008);
    sizes.push_back(14336);
    for (std::size_t n : sizes) {
        const std::string suffix = std::string("/").append(std::to_string(n));
        benchmark::RegisterBenchmark(("textbook" + suffix).c_str(), bench_textbook, n);
        benchmark::RegisterBenchmark(("qift" + suffix).c_str(), bench_qift<xsimd::default_arch>, n);
#if XSIMD_WITH_AVX512F && XSIMD_WITH_FMA3_AVX2
        // The AVX2 kernel in the same binary, for the AVX2-versus-AVX-512 comparison.
        benchmark::RegisterBenchmark(("qift_avx2" + suffix).c_str(),
                                     bench_qift<xsimd::fma3<xsimd::avx2>>, n);
#endif
    }
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
