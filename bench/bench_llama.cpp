// SPDX-License-Identifier: MIT
// End-to-end decode speed of the stories260K model: tokens per second of the packed W2A4KV4
// model (MNZ, PoT-MNZ) against the float32 model in the same run, and the time to quantize the
// model with RTN and with GPTQ.
#include <benchmark/benchmark.h>

#include <filesystem>

#include "quarot.hpp"

namespace {

using namespace llama;

const std::string model_path = std::string(QIFT_SHARED_DIR) + "/models/stories260K.bin";
constexpr int decode_tokens = 128;

struct fixture {
    qift::llama2c_model ckpt = qift::load_llama2c(model_path);
    rotated_weights rotated = rotate(ckpt, 2606);
    std::vector<std::vector<int>> calib = sample_sequences(float_model(ckpt), 8, 96, 2607);
    std::vector<std::array<matrix<double>, 7>> hessians = calibrate(rotated, calib);
};

const fixture& data() {
    static const fixture f;
    return f;
}

void decode(benchmark::State& state, const model& m) {
    qift::set_parallel_executor(qift::serial_executor);
    for (auto _ : state) {
        session s(m);
        int tok = 1;
        for (int t = 0; t < decode_tokens; ++t) {
            const auto logits = s.step(tok);
            tok = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
        }
        benchmark::DoNotOptimize(tok);
    }
    qift::set_parallel_executor(nullptr);
    state.counters["tokens_per_s"] =
        benchmark::Counter(double(decode_tokens), benchmark::Counter::kIsIterationInvariantRate);
}

void decode_float32(benchmark::State& state) {
    decode(state, float_model(data().ckpt));
}

template <class L>
void decode_w2a4kv4(benchmark::State& state) {
    const auto& d = data();
    const model m = quantized_model(
        d.rotated, std::vector<linear_factory>(d.rotated.layers.size(), packed_factory<L>(0.9f)),
        nullptr, kv4_factory(d.ckpt.config.head_dim(), decode_tokens));
    decode(state, m);
}

template <class L>
void quantize_model(benchmark::State& state) {
    const auto& d = data();
    const bool gptq = state.range(0) == 1;
    for (auto _ : state) {
        const model m = quantized_model(
            d.rotated,
            std::vector<linear_factory>(d.rotated.layers.size(), packed_factory<L>(0.9f)),
            gptq ? &d.hessians : nullptr, {});
        benchmark::DoNotOptimize(&m);
    }
    state.SetLabel(gptq ? "GPTQ" : "RTN");
}

}  // namespace

int main(int argc, char** argv) {
    if (!std::filesystem::exists(model_path)) {
        std::fprintf(stderr, "bench_llama: %s is missing\n", model_path.c_str());
        return 1;
    }
    benchmark::RegisterBenchmark("decode/float32", decode_float32)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("decode/w2a4kv4_mnz", decode_w2a4kv4<qift::levels::mnz>)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("decode/w2a4kv4_pot_mnz", decode_w2a4kv4<qift::levels::pot_mnz>)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("quantize/mnz", quantize_model<qift::levels::mnz>)
        ->Arg(0)
        ->Arg(1)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("quantize/pot_mnz", quantize_model<qift::levels::pot_mnz>)
        ->Arg(0)
        ->Arg(1)
        ->Unit(benchmark::kMillisecond);
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
