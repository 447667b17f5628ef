// SPDX-License-Identifier: MIT
// Under load: one shared, read-only packed model (W2A4 matrices of odd shapes in MNZ and PoT-MNZ,
// an NF2 bit-plane matrix, and stories260K quantized to W2A4KV4 once) used by 8 threads at the
// same time, each running GEMV, GEMM (several token counts), the W2A16 float paths (packed, bit
// planes), its own KV4 caches (append, prefill and attention) and its own forward-pass state;
// every result compared bit for bit with a single-threaded run computed first. Three executors:
// the default persistent pool (its regions serialized between callers, nested calls serial), a
// user pool installed with set_parallel_executor, and nested parallel_for calls from many
// threads. Built on its own so that CI can run it under ThreadSanitizer (the tsan preset builds
// only this target).
#include <doctest/doctest.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <qift/bitplane.hpp>
#include <qift/gemm.hpp>
#include <qift/gemv.hpp>
#include <qift/kv_cache.hpp>
#include <qift/model/llama.hpp>
#include <qift/model/llama2c.hpp>
#include <qift/model/quarot.hpp>

#include "../test_support.hpp"

using namespace qift;

namespace {

constexpr std::size_t user_threads = 8;
constexpr std::size_t iterations = 4;

/// One unit of work on the shared model: computes its outputs into fresh (thread-own) storage.
struct job {
    std::string name;
    std::function<std::vector<float>()> run;
};

/// A few std::threads and a queue: the executor a user might install. The caller claims chunks
/// too, so a call made while every worker is busy (or from a worker) still finishes.
class user_pool {
  public:
    explicit user_pool(unsigned workers) {
        for (unsigned i = 0; i < workers; ++i) threads_.emplace_back([this] { loop(); });
    }
    user_pool(const user_pool&) = delete;
    user_pool& operator=(const user_pool&) = delete;
    ~user_pool() {
        {
            std::lock_guard lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        for (auto& t : threads_) t.join();
    }

    /// Runs body over [0, n) in up to 4 chunks per thread and returns when all are done,
    /// rethrowing the first exception of a chunk.
    void run(std::size_t n, const range_fn& body) {
        if (n == 0) return;
        const std::size_t want = std::min<std::size_t>(n, 4 * (threads_.size() + 1));
        auto t = std::make_shared<task>();
        t->body = &body;
        t->n = n;
        t->chunk = (n + want - 1) / want;
        t->chunks = (n + t->chunk - 1) / t->chunk;
        {
            std::lock_guard lock(mutex_);
            for (std::size_t i = 0; i < threads_.size(); ++i) queue_.push_back(t);
        }
        wake_.notify_all();
        t->help(nullptr);
        std::unique_lock lock(t->mutex);
        t->finished.wait(lock, [&] { return t->done == t->chunks; });
        if (t->error) std::rethrow_exception(t->error);
    }

    /// Chunks run by the pool's own threads so far (not by callers).
    std::size_t worker_chunks() const noexcept { return worker_chunks_.load(); }

  private:
    struct task {
        const range_fn* body = nullptr;  // valid while done < chunks (the caller waits)
        std::size_t n = 0, chunk = 1, chunks = 0;
        std::atomic<std::size_t> next{0};
        std::mutex mutex;
        std::condition_variable finished;
        std::size_t done = 0;  // under mutex
        std::exception_ptr error;

        void help(std::atomic<std::size_t>* counter) {
            for (;;) {
                const std::size_t i = next.fetch_add(1);
                if (i >= chunks) return;
                std::exception_ptr e;
                try {
                    (*body)(i * chunk, std::min(n, (i + 1) * chunk));
                } catch (...) {
                    e = std::current_exception();
                }
                if (counter) counter->fetch_add(1);
                std::lock_guard lock(mutex);
                if (e && !error) error = e;
                if (++done == chunks) finished.notify_all();
            }
        }
    };

    void loop() {
        for (;;) {
            std::shared_ptr<task> t;
            {
                std::unique_lock lock(mutex_);
                wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
                if (queue_.empty()) return;  // stop_ and nothing left
                t = std::move(queue_.front());
                queue_.pop_front();
            }
            t->help(&worker_chunks_);
        }
    }

    std::vector<std::thread> threads_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<std::shared_ptr<task>> queue_;
    bool stop_ = false;
    std::atomic<std::size_t> worker_chunks_{0};
};

std::vector<float> flat(const matrix<float>& m) {
    return {m.flat().begin(), m.flat().end()};
}

/// The shared model: built once, then only read (every job takes it by const reference).
struct shared_model {
    // Odd shapes; the large ones pass the kernels' threshold for splitting rows over threads
    // (rows · padded cols ≥ 2^20), the small one never does.
    packed_matrix<levels::mnz> mnz_small{
        test::quantize_fast<levels::mnz>(test::gaussian_matrix(67, 1000, 1))};
    packed_matrix<levels::pot_mnz> pot_big{
        test::quantize_fast<levels::pot_mnz>(test::gaussian_matrix(1031, 1100, 2))};
    packed_matrix<levels::mnz> mnz_big{
        test::quantize_fast<levels::mnz>(test::gaussian_matrix(900, 1300, 3))};
    bitplane_matrix<levels::nf2> nf2_planes{
        test::quantize_fast<levels::nf2>(test::gaussian_matrix(1031, 1100, 13))};
    matrix<float> x1000 = test::gaussian_matrix(70, 1000, 4);  // up to 70 tokens
    matrix<float> x1100 = test::gaussian_matrix(33, 1100, 5);
    matrix<float> x1300 = test::gaussian_matrix(9, 1300, 6);
    // Keys, values and queries for the KV4 caches: [tokens][kv width] and [tokens][q width].
    matrix<float> k128 = test::gaussian_matrix(144, 4 * 128, 7);
    matrix<float> v128 = test::gaussian_matrix(144, 4 * 128, 8);
    matrix<float> q128 = test::gaussian_matrix(144, 16 * 128, 9);
    matrix<float> k10 = test::gaussian_matrix(40, 3 * 10, 10);
    matrix<float> v10 = test::gaussian_matrix(40, 3 * 10, 11);
    matrix<float> q10 = test::gaussian_matrix(40, 6 * 10, 12);
    std::optional<llama_model> model;  // stories260K, W2A4KV4 (MNZ), when the file is there
    std::vector<int> tokens;

    shared_model() {
        const std::string path = std::string(QIFT_SHARED_DIR) + "/models/stories260K.bin";
        if (!std::filesystem::exists(path)) return;
        const auto w = quarot(llama_weights::from(load_llama2c(path)), {.seed = 3});
        model = build_model(
            w,
            [](std::size_t, linear_id, const matrix<float>& m) {
                return linear(test::quantize_fast<levels::mnz>(m),
                              input_quantization::a4_per_token(0.9f));
            },
            kv_format::kv4_asymmetric());
        std::mt19937 gen(21);
        std::uniform_int_distribution<int> id(3, model->config.vocab_size - 1);
        tokens.push_back(1);
        while (tokens.size() < 32) tokens.push_back(id(gen));
    }
};

const shared_model& the_model() {
    static const shared_model m;
    return m;
}

template <class L>
std::vector<float> integer_gemm(const packed_matrix<L>& w, const matrix<float>& x,
                                std::size_t tokens) {
    // Each call quantizes its own activations: quantize_activations runs concurrently too.
    quantized_activations a;
    quantize_activations(matrix_view<const float>(x.data(), tokens, x.cols()), a, 0.9f);
    matrix<float> y(tokens, w.rows());
    if (tokens == 1)
        gemv(w, a, y.row(0));
    else
        gemm(w, a, y.view());
    return flat(y);
}

template <class W>
std::vector<float> float_gemm(const W& w, const matrix<float>& x, std::size_t tokens) {
    matrix<float> y(tokens, w.rows());
    if (tokens == 1)
        gemv(w, x.row(0), y.row(0));
    else
        gemm(w, matrix_view<const float>(x.data(), tokens, x.cols()), y.view());
    return flat(y);
}

/// A fresh KV4 cache: a prefill of `prefill` tokens, then the rest appended one at a time, each
/// followed by attention over the whole cache; every output concatenated.
std::vector<float> kv_run(const matrix<float>& k, const matrix<float>& v, const matrix<float>& q,
                          std::size_t head_dim, std::size_t n_heads, std::size_t prefill,
                          bool rotate) {
    const std::size_t nkv = k.cols() / head_dim, tokens = k.rows();
    kv_cache<> cache({.head_dim = head_dim,
                      .n_kv_heads = nkv,
                      .capacity = prefill,
                      .rotate_keys = rotate,
                      .rotation_seed = 77});
    std::vector<float> out;
    matrix<float> att(prefill, q.cols());
    cache.prefill(matrix_view<const float>(q.data(), prefill, q.cols()),
                  matrix_view<const float>(k.data(), prefill, k.cols()),
                  matrix_view<const float>(v.data(), prefill, v.cols()), n_heads, att.view());
    out.insert(out.end(), att.flat().begin(), att.flat().end());
    cache.reserve(tokens);
    std::vector<float> o(q.cols());
    for (std::size_t t = prefill; t < tokens; ++t) {
        cache.append(k.row(t), v.row(t));
        cache.attend(q.row(t), n_heads, o);
        out.insert(out.end(), o.begin(), o.end());
    }
    return out;
}

/// A fresh forward-pass state on the shared model: a prefill, then decode steps; all logits.
std::vector<float> model_run(const llama_model& m, std::span<const int> tokens,
                             std::size_t prefill) {
    llama_state s(m, tokens.size());
    std::vector<float> out;
    const auto keep = [&](matrix_view<const float> l) {
        for (std::size_t t = 0; t < l.rows; ++t)
            out.insert(out.end(), l.row(t).begin(), l.row(t).end());
    };
    keep(forward(m, s, tokens.first(prefill)));
    for (std::size_t t = prefill; t < tokens.size(); ++t) keep(forward(m, s, tokens.subspan(t, 1)));
    return out;
}

std::vector<job> make_jobs(const shared_model& m) {
    std::vector<job> jobs;
    for (std::size_t tokens : {1u, 3u, 70u})
        jobs.push_back({"W2A4 mnz 67x1000, " + std::to_string(tokens) + " tokens",
                        [&m, tokens] { return integer_gemm(m.mnz_small, m.x1000, tokens); }});
    for (std::size_t tokens : {1u, 2u, 5u, 33u})
        jobs.push_back({"W2A4 pot_mnz 1031x1100, " + std::to_string(tokens) + " tokens",
                        [&m, tokens] { return integer_gemm(m.pot_big, m.x1100, tokens); }});
    for (std::size_t tokens : {1u, 9u})
        jobs.push_back({"W2A4 mnz 900x1300, " + std::to_string(tokens) + " tokens",
                        [&m, tokens] { return integer_gemm(m.mnz_big, m.x1300, tokens); }});
    for (std::size_t tokens : {1u, 5u})
        jobs.push_back({"W2A16 pot_mnz 1031x1100, " + std::to_string(tokens) + " tokens",
                        [&m, tokens] { return float_gemm(m.pot_big, m.x1100, tokens); }});
    jobs.push_back(
        {"W2A16 mnz 67x1000, 3 tokens", [&m] { return float_gemm(m.mnz_small, m.x1000, 3); }});
    // The caller's tables are read by the pool's workers; each thread keeps its own sums.
    for (std::size_t tokens : {1u, 6u})
        jobs.push_back({"W2A16 bit planes nf2 1031x1100, " + std::to_string(tokens) + " tokens",
                        [&m, tokens] { return float_gemm(m.nf2_planes, m.x1100, tokens); }});
    // head_dim 128 (compiled kernels), 16 query heads on 4 kv heads: the 64-token prefill and
    // the attention from 128 tokens on pass the cache's threshold for threads.
    jobs.push_back({"KV4 head_dim 128, prefill 64 + 80 decode steps",
                    [&m] { return kv_run(m.k128, m.v128, m.q128, 128, 16, 64, false); }});
    // head_dim 10 (the run-time size path), rotated keys (the rotation's thread-local scratch).
    jobs.push_back({"KV4 head_dim 10, rotated keys, prefill 7 + 33 decode steps",
                    [&m] { return kv_run(m.k10, m.v10, m.q10, 10, 6, 7, true); }});
    if (m.model)
        jobs.push_back({"stories260K W2A4KV4, prefill 20 + 12 decode steps",
                        [&m] { return model_run(*m.model, m.tokens, 20); }});
    return jobs;
}

/// Single-threaded reference outputs of every job (serial executor).
std::vector<std::vector<float>> references(const std::vector<job>& jobs) {
    set_parallel_executor(serial_executor);
    std::vector<std::vector<float>> ref;
    for (const auto& j : jobs) ref.push_back(j.run());
    set_parallel_executor(nullptr);
    return ref;
}

/// Runs every job `iterations` times on each of `user_threads` threads (each thread starting
/// at a different job) and returns a description of every result that is not bit for bit the
/// reference's, or of any exception.
std::vector<std::string> hammer(const std::vector<job>& jobs,
                                const std::vector<std::vector<float>>& ref) {
    std::vector<std::vector<std::string>> failures(user_threads);
    std::vector<std::thread> threads;
    std::atomic<bool> go{false};
    for (std::size_t t = 0; t < user_threads; ++t)
        threads.emplace_back([&, t] {
            while (!go.load()) std::this_thread::yield();
            try {
                for (std::size_t it = 0; it < iterations; ++it)
                    for (std::size_t j = 0; j < jobs.size(); ++j) {
                        const std::size_t i = (j + t + it) % jobs.size();
                        const std::vector<float> got = jobs[i].run();
                        if (got.size() != ref[i].size() ||
                            std::memcmp(got.data(), ref[i].data(), got.size() * sizeof(float)))
                            failures[t].push_back("thread " + std::to_string(t) + ": " +
                                                  jobs[i].name + " differs from the reference");
                    }
            } catch (const std::exception& e) {
                failures[t].push_back("thread " + std::to_string(t) + " threw: " + e.what());
            }
        });
    go.store(true);
    for (auto& th : threads) th.join();
    std::vector<std::string> all;
    for (auto& f : failures) all.insert(all.end(), f.begin(), f.end());
    return all;
}

void check_all(const std::vector<std::string>& failures) {
    for (const auto& f : failures) FAIL_CHECK(f);
    CHECK(failures.empty());
}

}  // namespace

TEST_CASE("concurrency: 8 threads share one packed model, default pool, bit for bit") {
    const shared_model& m = the_model();
    if (!m.model) MESSAGE("SKIPPED (model part): stories260K.bin is missing (CI always has it)");
    const auto jobs = make_jobs(m);
    const auto ref = references(jobs);
    // The same jobs one at a time on the default pool first: regions really split over threads.
    for (std::size_t i = 0; i < jobs.size(); ++i) {
        CAPTURE(jobs[i].name);
        CHECK(jobs[i].run() == ref[i]);
    }
    MESSAGE(jobs.size() << " jobs x " << iterations << " iterations on " << user_threads
                        << " threads");
    check_all(hammer(jobs, ref));
}

TEST_CASE("concurrency: the same under a user thread pool installed with set_parallel_executor") {
    const shared_model& m = the_model();
    const auto jobs = make_jobs(m);
    const auto ref = references(jobs);
    user_pool pool(3);
    set_parallel_executor([&pool](std::size_t n, const range_fn& body) { pool.run(n, body); });
    // Chunks are smaller than the default pool's (another split): results must not change.
    for (std::size_t i = 0; i < jobs.size(); ++i) {
        CAPTURE(jobs[i].name);
        CHECK(jobs[i].run() == ref[i]);
    }
    const auto failures = hammer(jobs, ref);
    set_parallel_executor(nullptr);  // before the pool goes
    check_all(failures);
    MESSAGE("user pool: " << pool.worker_chunks() << " chunks ran on its workers");
    CHECK(pool.worker_chunks() > 0);
}

TEST_CASE("concurrency: nested and concurrent parallel_for on the default pool, with exceptions") {
    // Each thread runs loops whose bodies run loops themselves; every index is visited exactly
    // once; a body that throws reaches its own caller only, and the pool keeps working after.
    constexpr std::size_t n = 777, inner = 13;
    std::vector<std::vector<std::string>> failures(user_threads);
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < user_threads; ++t)
        threads.emplace_back([&, t] {
            for (std::size_t it = 0; it < 20; ++it) {
                std::vector<std::atomic<unsigned>> seen(n * inner);
                parallel_for(n, [&](std::size_t b, std::size_t e) {
                    for (std::size_t i = b; i < e; ++i)
                        parallel_for(inner, [&](std::size_t ib, std::size_t ie) {
                            for (std::size_t j = ib; j < ie; ++j) seen[i * inner + j].fetch_add(1);
                        });
                });
                for (std::size_t i = 0; i < seen.size(); ++i)
                    if (seen[i].load() != 1) {
                        failures[t].push_back("thread " + std::to_string(t) + ": index " +
                                              std::to_string(i) + " visited " +
                                              std::to_string(seen[i].load()) + " times");
                        break;
                    }
                const std::size_t bad = (t * 97 + it * 31) % n;
                bool caught = false;
                try {
                    parallel_for(n, [&](std::size_t b, std::size_t e) {
                        if (b <= bad && bad < e)
                            throw error("thread " + std::to_string(t) + " index " +
                                        std::to_string(bad));
                    });
                } catch (const error& e) {
                    caught = std::string(e.what()) ==
                             "thread " + std::to_string(t) + " index " + std::to_string(bad);
                }
                if (!caught)
                    failures[t].push_back("thread " + std::to_string(t) + ": lost its exception");
            }
        });
    for (auto& th : threads) th.join();
    for (const auto& f : failures)
        for (const auto& s : f) FAIL_CHECK(s);
    // And a loop afterwards still splits and covers everything.
    std::vector<std::atomic<unsigned>> seen(5000);
    parallel_for(seen.size(), [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) seen[i].fetch_add(1);
    });
    bool once = true;
    for (const auto& s : seen) once = once && s.load() == 1;
    CHECK(once);
}
