// SPDX-License-Identifier: MIT
// Single-thread float32 Hadamard transform against the textbook radix-2 loop and (n = K·2^m)
// the previous dense block-mix path, the path before the Rader and narrow-panel DFT forms and
// (688, 1376) the narrow kernel before its packed AVX-512 form, compiled in the same binary:
// ns/transform, ns/element, the speedups (vs_previous, vs_before, vs_before_packed), and the
// ratio to the power of two nearest n measured earlier in the same run.
#include <qift/hadamard.hpp>

#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
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

// The previous qift path for n = K·2^m, kept here as the baseline of the any-size kernels: the
// FWHT of each row, then every Paley block as a dense ±1 register-blocked product
// (hadamard_mix_kernel) on each outer panel, its narrow columns scalar.
struct previous_path {
    std::size_t n = 0, len = 0;
    std::vector<std::size_t> blocks;
    std::vector<qift::aligned_vector<float>> packed;
    qift::aligned_vector<float> scratch;

    explicit previous_path(std::size_t size) : n(size), scratch(size) {
        const auto f = qift::find_hadamard_factorization(n);
        len = f->power_of_two;
        blocks = f->blocks;
        for (std::size_t k : blocks) {
            const std::vector<std::int8_t> h = qift::detail::paley_matrix(k);
            const std::vector<float> hf(h.begin(), h.end());
            packed.emplace_back((k + 3) / 4 * 4 * k);
            qift::detail::pack_mix_coefficients(hf.data(), k, packed.back().data());
        }
    }

    void operator()(float* x) {
        for (std::size_t r = 0; r < n; r += len)
            qift::detail::fwht_kernel{}(xsimd::default_arch{}, x + r, len, 1.0f);
        std::size_t outer = 1;
        for (std::size_t t = 0; t < blocks.size(); ++t) {
            const std::size_t k = blocks[t], inner = n / outer / k;
            for (std::size_t o = 0; o < outer; ++o) {
                float* panel = x + o * k * inner;
                qift::detail::hadamard_mix_kernel{}(xsimd::default_arch{}, packed[t].data(), k,
                                                    panel, scratch.data(), inner);
                std::copy_n(scratch.data(), k * inner, panel);
            }
            outer *= k;
        }
    }
};

// The qift path before the Rader and narrow-panel DFT forms, in the same binary: the cached plan
// with those forms switched off, so prime-field Paley cores (18944 = 148·128) run the dense mix
// and GF(p^r) cores on panels under 2W columns (688 = 344·2) the narrow GEMV.
struct before_fast_forms {
    qift::detail::hadamard_plan plan;

    explicit before_fast_forms(std::size_t n) : plan(*qift::detail::hadamard_plan_for(n)) {
        for (qift::detail::kron_block& b : plan.blocks) {
            b.rader_radix.clear();
            b.dft_narrow = false;
        }
    }

    void operator()(float* x) const {
        qift::detail::apply_hadamard_plan<xsimd::default_arch>(plan, x, false, 1.0f);
    }
};

#if XSIMD_WITH_AVX512F && XSIMD_WITH_FMA3_AVX2
// The qift path before the packed AVX-512 narrow kernel, in the same binary, for a plan of one
// GF(p^r) block on a K×2^m panel narrower than 2W (688 = 344·2, 1376 = 344·4): the FWHT of the
// rows, then the narrow kernel as it ran under AVX-512 before (on 8-float AVX2 registers, its
// digit-0 convolution from broadcast loads), the FWHT and the scale not fused into it.
struct before_packed {
    std::shared_ptr<const qift::detail::hadamard_plan> plan;

    static bool applies(std::size_t n) {
        const auto p = qift::detail::hadamard_plan_for(n);
        return p->blocks.size() == 1 && p->blocks[0].dft_narrow && !p->blocks[0].pairs &&
               p->shape.power_of_two < 32;
    }

    explicit before_packed(std::size_t n) : plan(qift::detail::hadamard_plan_for(n)) {}

    void operator()(float* x) const {
        const std::size_t len = plan->shape.power_of_two;
        if (len > 1)
            qift::detail::fwht_short_rows_kernel{}(xsimd::default_arch{}, x, plan->n, len, 1.0f);
        qift::detail::apply_dft_core<xsimd::fma3<xsimd::avx2>>(plan->blocks[0], 0, x, len);
    }
};
#endif

std::map<std::size_t, double>& before_packed_ns() {
    static std::map<std::size_t, double> m;
    return m;
}

std::map<std::size_t, double>& before_ns() {
    static std::map<std::size_t, double> m;
    return m;
}

std::map<std::size_t, double>& previous_ns() {
    static std::map<std::size_t, double> m;
    return m;
}

// ns/element of qift's transform at each power of two, for the x_pow2 ratio.
std::map<std::size_t, double>& pow2_ns_per_element() {
    static std::map<std::size_t, double> m;
    return m;
}

void ratio_to_pow2(benchmark::State& state, std::size_t n, double ns) {
    const double lg = std::log2(static_cast<double>(n));
    const std::size_t nearest = std::size_t{1} << static_cast<unsigned>(std::lround(lg));
    if (auto it = pow2_ns_per_element().find(nearest); it != pow2_ns_per_element().end())
        state.counters["x_pow2"] = ns / static_cast<double>(n) / it->second;
}

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

void bench_previous(benchmark::State& state, std::size_t n) {
    previous_path p(n);
    previous_ns()[n] = run(state, n, [&p](float* x) { p(x); });
}

void bench_before(benchmark::State& state, std::size_t n) {
    const before_fast_forms p(n);
    const double ns = run(state, n, [&p](float* x) { p(x); });
    before_ns()[n] = ns;
    ratio_to_pow2(state, n, ns);
}

#if XSIMD_WITH_AVX512F && XSIMD_WITH_FMA3_AVX2
void bench_before_packed(benchmark::State& state, std::size_t n) {
    const before_packed p(n);
    const double ns = run(state, n, [&p](float* x) { p(x); });
    before_packed_ns()[n] = ns;
    ratio_to_pow2(state, n, ns);
}
#endif

template <class Arch>
void bench_qift(benchmark::State& state, std::size_t n) {
    const double ns = run(state, n, [n](float* x) {
        qift::hadamard_transform<Arch>(std::span<float>(x, n), qift::hadamard_norm::none);
    });
    if (auto it = baseline_ns().find(n); it != baseline_ns().end())
        state.counters["speedup"] = it->second / ns;
    if (auto it = previous_ns().find(n); it != previous_ns().end())
        state.counters["vs_previous"] = it->second / ns;
    if (auto it = before_ns().find(n);
        it != before_ns().end() && std::is_same_v<Arch, xsimd::default_arch>)
        state.counters["vs_before"] = it->second / ns;
    if (auto it = before_packed_ns().find(n);
        it != before_packed_ns().end() && std::is_same_v<Arch, xsimd::default_arch>)
        state.counters["vs_before_packed"] = it->second / ns;
    if (is_power_of_two(n) && std::is_same_v<Arch, xsimd::default_arch>)
        pow2_ns_per_element()[n] = ns / static_cast<double>(n);
    else
        ratio_to_pow2(state, n, ns);
}

// The rotation objects (orthonormal, seeded signs): `any` (true Hadamard where one exists),
// `kronecker` (seeded orthogonal K ⊗ FWHT) and `dense` (the O(n²) fallback) at the same n.
void bench_rotation(benchmark::State& state, std::size_t n, qift::rotation_construction c) {
    const qift::rotation rot = qift::rotation::make(n, {c, 7});
    // Orthonormal: values stay finite however many iterations run.
    const double ns = run(state, n, [&rot, n](float* x) { rot.apply(std::span<float>(x, n)); });
    ratio_to_pow2(state, n, ns);
    if (auto it = previous_ns().find(n); it != previous_ns().end())
        state.counters["vs_previous"] = it->second / ns;
}

}  // namespace

int main(int argc, char** argv) {
    // Powers of two first: the other sizes report their ratio to the nearest one (x_pow2).
    std::vector<std::size_t> sizes;
    for (std::size_t n = 128; n <= 65536; n *= 2) sizes.push_back(n);
    for (std::size_t n : {11008u, 14336u, 13824u, 18944u, 28672u, 172u, 688u, 1376u, 4864u, 5120u})
        sizes.push_back(n);
    using qift::rotation_construction;
    for (std::size_t n : sizes) {
        const std::string suffix = std::string("/").append(std::to_string(n));
        if (qift::is_hadamard_size(n)) {
            benchmark::RegisterBenchmark(("textbook" + suffix).c_str(), bench_textbook, n);
            if (!is_power_of_two(n)) {
                benchmark::RegisterBenchmark(("previous_dense_mix" + suffix).c_str(),
                                             bench_previous, n);
                benchmark::RegisterBenchmark(("qift_before_rader_narrow" + suffix).c_str(),
                                             bench_before, n);
#if XSIMD_WITH_AVX512F && XSIMD_WITH_FMA3_AVX2
                if (before_packed::applies(n))
                    benchmark::RegisterBenchmark(("qift_before_packed" + suffix).c_str(),
                                                 bench_before_packed, n);
#endif
            }
            benchmark::RegisterBenchmark(("qift" + suffix).c_str(), bench_qift<xsimd::default_arch>,
                                         n);
#if XSIMD_WITH_AVX512F && XSIMD_WITH_FMA3_AVX2
            // The AVX2 kernel in the same binary, for the AVX2-versus-AVX-512 comparison.
            benchmark::RegisterBenchmark(("qift_avx2" + suffix).c_str(),
                                         bench_qift<xsimd::fma3<xsimd::avx2>>, n);
#endif
        }
        if (is_power_of_two(n)) continue;
        benchmark::RegisterBenchmark(("rotation_any" + suffix).c_str(), bench_rotation, n,
                                     rotation_construction::any);
        benchmark::RegisterBenchmark(("rotation_kronecker" + suffix).c_str(), bench_rotation, n,
                                     rotation_construction::kronecker);
        if (n <= 1024)
            benchmark::RegisterBenchmark(("rotation_dense" + suffix).c_str(), bench_rotation, n,
                                         rotation_construction::dense);
    }
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
