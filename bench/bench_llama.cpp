// SPDX-License-Identifier: MIT
// End-to-end speed of prose6M through the model layer: decode tokens per second (GEMV, one
// token a call) and prefill tokens per second (one 256-token GEMM batch, and the same tokens fed
// one at a time) of the packed W2A4KV4 models against the float32 model, on 1 and 2 threads,
// with a summary of ratios measured in this run.
#include <qift/model/calibrate.hpp>
#include <qift/model/quarot.hpp>

#include <benchmark/benchmark.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace qift;

const std::string model_path = std::string(QIFT_SHARED_DIR) + "/models/prose6M.bin";
constexpr std::size_t decode_tokens = 64;

struct models {
    llama_weights rotated = quarot(llama_weights::from(load_llama2c(model_path)), {.seed = 2606});
    llama_model fp32 = float_model(rotated);
    llama_model mnz = packed<levels::mnz>(), pot_mnz = packed<levels::pot_mnz>();
    std::vector<int> tokens = [&] {
        std::mt19937 gen(1);
        std::uniform_int_distribution<int> d(3, rotated.config.vocab_size - 1);
        std::vector<int> t{1};
        while (t.size() < std::size_t(rotated.config.seq_len)) t.push_back(d(gen));
        return t;
    }();

    template <class L>
    llama_model packed() const {
        return build_model(
            rotated,
            [](std::size_t, linear_id, const matrix<float>& w) {
                return quantize_linear<L>(w, input_quantization::a4_per_token(0.9f));
            },
            kv_format::kv4_asymmetric());
    }
};

const models& data() {
    static const models m;
    return m;
}

void set_threads(int threads) {
    if (threads == 1)
        set_parallel_executor(serial_executor);
    else
        set_parallel_executor(nullptr);
}

// Tokens per second of the three ways to run tokens through a model.
enum class mode { decode, prefill, prefill_token_by_token };

void run(benchmark::State& state, const llama_model& m, mode how) {
    set_threads(int(state.range(0)));
    const auto& toks = data().tokens;
    llama_state s(m);
    const std::size_t n = how == mode::decode ? decode_tokens : toks.size();
    for (auto _ : state) {
        s.reset();
        if (how == mode::prefill) {
            benchmark::DoNotOptimize(forward(m, s, toks).data);
        } else {
            for (std::size_t t = 0; t < n; ++t)
                benchmark::DoNotOptimize(forward(m, s, std::span(&toks[t], 1)).data);
        }
    }
    set_parallel_executor(nullptr);
    state.counters["tokens_per_s"] =
        benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}

// Collects each run's tokens per second for the summary.
class summary_reporter : public benchmark::ConsoleReporter {
  public:
    void ReportRuns(const std::vector<Run>& runs) override {
        for (const auto& r : runs)
            if (r.run_type == Run::RT_Iteration || r.aggregate_name == "median")
                rate[r.run_name.str()] = r.counters.at("tokens_per_s");
        ConsoleReporter::ReportRuns(runs);
    }
    std::map<std::string, double> rate;
};

}  // namespace

int main(int argc, char** argv) {
    if (!std::filesystem::exists(model_path)) {
        std::fprintf(stderr, "bench_llama: %s is missing\n", model_path.c_str());
        return 1;
    }
    const std::pair<const char*, const llama_model*> all[] = {{"float32", &data().fp32},
                                                              {"w2a4kv4_mnz", &data().mnz},
                                                              {"w2a4kv4_pot_mnz", &data().pot_mnz}};
    const std::pair<const char*, mode> modes[] = {
        {"decode", mode::decode},
        {"prefill", mode::prefill},
        {"prefill_token_by_token", mode::prefill_token_by_token}};
    for (const auto& [how_name, how] : modes)
        for (const auto& [name, m] : all)
            benchmark::RegisterBenchmark(
                (std::string(how_name) + "/" + name).c_str(),
                [m = m, how = how](benchmark::State& s) { run(s, *m, how); })
                ->Arg(1)
                ->Arg(2)
                ->ArgName("threads")
                ->Unit(benchmark::kMillisecond);
    benchmark::Initialize(&argc, argv);
    summary_reporter rep;
    benchmark::RunSpecifiedBenchmarks(&rep);
    benchmark::Shutdown();
    const auto get = [&](const std::string& k) {
        const auto it = rep.rate.find(k);
        return it == rep.rate.end() ? 0.0 : it->second;
    };
    std::printf("\nprose6M tokens per second (context %d), ratios from this run:\n",
                data().rotated.config.seq_len);
    std::printf("%-18s %8s %12s %12s %12s %10s %12s\n", "model", "threads", "decode", "prefill",
                "tok-by-tok", "prefill/", "decode vs");
    std::printf("%-18s %8s %12s %12s %12s %10s %12s\n", "", "", "tok/s", "tok/s", "tok/s",
                "tok-by-tok", "float32");
    for (const auto& [name, m] : all)
        for (int th : {1, 2}) {
            const std::string suf = std::string(name) + "/threads:" + std::to_string(th);
            const double dec = get("decode/" + suf), pre = get("prefill/" + suf),
                         tbt = get("prefill_token_by_token/" + suf),
                         fdec = get("decode/float32/threads:" + std::to_string(th));
            std::printf("%-18s %8d %12.0f %12.0f %12.0f %9.2fx %11.2fx\n", name, th, dec, pre, tbt,
                        tbt > 0 ? pre / tbt : 0.0, fdec > 0 ? dec / fdec : 0.0);
        }
    return 0;
}
