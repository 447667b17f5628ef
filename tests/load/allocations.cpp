// SPDX-License-Identifier: MIT
// Allocations in the hot paths, counted by replacing every form of the global operator new
// (plain, array, nothrow, aligned, aligned nothrow) in this executable. After a warm-up call:
//   - W2A4 GEMV and GEMM with caller-provided outputs, and quantize_activations into reused
//     storage, allocate nothing, on the serial executor and on the default thread pool (asserted);
//   - so do the KV4 append and the W2A16 GEMV and GEMM (their padded copy of x is the calling
//     thread's scratch) (asserted), and the bit-plane W2A16 GEMV and GEMM on the serial
//     executor (tables and sums in thread scratch; on the pool a bound, as below);
//   - KV4 attention / one-token prefill and one decode step of the model forward pass allocate
//     nothing on the serial executor (asserted); on the pool, a worker allocates its scratch the
//     first time it runs a chunk, which a warm-up call cannot force, so there an upper bound is
//     asserted that a new allocation in a hot loop (one per row, token or head) would break.
// Built as its own executable: the replaced operators must not count the rest of the suite.
#include <doctest/doctest.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <new>
#include <random>
#include <string>
#include <vector>

#include <qift/bitplane.hpp>
#include <qift/gemm.hpp>
#include <qift/gemv.hpp>
#include <qift/kv_cache.hpp>
#include <qift/model/llama.hpp>
#include <qift/model/llama2c.hpp>
#include <qift/model/quarot.hpp>

#include "../test_support.hpp"

// ---------------------------------------------------------------------------------------
// Counting replacements of the global allocation functions

namespace {

std::atomic<std::size_t> allocation_count{0};
std::atomic<std::size_t> allocation_bytes{0};

void* counted_allocate(std::size_t n, std::size_t align, bool nothrow) {
    allocation_count.fetch_add(1, std::memory_order_relaxed);
    allocation_bytes.fetch_add(n, std::memory_order_relaxed);
    if (n == 0) n = 1;
    void* p = nullptr;
    if (align <= alignof(std::max_align_t)) {
        p = std::malloc(n);
    } else if (posix_memalign(&p, align < sizeof(void*) ? sizeof(void*) : align, n) != 0) {
        p = nullptr;
    }
    if (p == nullptr && !nothrow) throw std::bad_alloc();
    return p;
}

// Out of line: inlined into a delete-expression, free() on a pointer from operator new trips
// GCC's -Wmismatched-new-delete (the pair is matched: every form above uses malloc).
[[gnu::noinline]] void counted_free(void* p) noexcept {
    std::free(p);
}

}  // namespace

void* operator new(std::size_t n) {
    return counted_allocate(n, 0, false);
}
void* operator new[](std::size_t n) {
    return counted_allocate(n, 0, false);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    return counted_allocate(n, 0, true);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
    return counted_allocate(n, 0, true);
}
void* operator new(std::size_t n, std::align_val_t a) {
    return counted_allocate(n, static_cast<std::size_t>(a), false);
}
void* operator new[](std::size_t n, std::align_val_t a) {
    return counted_allocate(n, static_cast<std::size_t>(a), false);
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return counted_allocate(n, static_cast<std::size_t>(a), true);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return counted_allocate(n, static_cast<std::size_t>(a), true);
}
void operator delete(void* p) noexcept {
    counted_free(p);
}
void operator delete[](void* p) noexcept {
    counted_free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    counted_free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
    counted_free(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
    counted_free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
    counted_free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
    counted_free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
    counted_free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
    counted_free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
    counted_free(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
    counted_free(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
    counted_free(p);
}

using namespace qift;

namespace {

/// Allocations (count and bytes) per call of f, averaged over `reps` calls after one warm-up.
struct per_call {
    double count = 0, bytes = 0;
};
per_call measure(const std::function<void()>& f, std::size_t reps = 8) {
    f();  // warm-up: buffers grow, the pool starts
    const std::size_t c0 = allocation_count.load(), b0 = allocation_bytes.load();
    for (std::size_t i = 0; i < reps; ++i) f();
    return {double(allocation_count.load() - c0) / double(reps),
            double(allocation_bytes.load() - b0) / double(reps)};
}

/// The two executors every measurement runs under.
struct executor_case {
    const char* name;
    parallel_executor exec;  // empty: the default pool
};
const std::vector<executor_case>& executors() {
    static const std::vector<executor_case> e{{"serial executor", serial_executor},
                                              {"default pool", nullptr}};
    return e;
}

/// Runs f under each executor (restoring the default after).
template <class F>
void for_each_executor(F&& f) {
    for (const auto& e : executors()) {
        set_parallel_executor(e.exec);
        f(std::string(e.name));
    }
    set_parallel_executor(nullptr);
}

}  // namespace

TEST_CASE("allocations: the counting operator new sees every form") {
    const std::size_t c0 = allocation_count.load();
    // The pointers escape (an empty asm reads them), else new/delete pairs may be elided.
    const auto escape = [](auto* p) {
        asm volatile("" : : "r"(p) : "memory");
        return p;
    };
    delete escape(new int(1));
    delete[] escape(new int[3]);
    delete escape(new (std::nothrow) int(2));
    delete[] escape(new (std::nothrow) int[3]);
    ::operator delete (::operator new (100, std::align_val_t{64}), std::align_val_t{64});
    ::operator delete[](::operator new[](100, std::align_val_t{128}), std::align_val_t{128});
    ::operator delete (::operator new (100, std::align_val_t{64}, std::nothrow),
                       std::align_val_t{64});
    aligned_vector<float> v(1000);
    CHECK(reinterpret_cast<std::uintptr_t>(v.data()) % buffer_alignment == 0);
    CHECK(allocation_count.load() - c0 == 8);
}

TEST_CASE("allocations: W2A4 GEMV and GEMM with caller-provided outputs allocate nothing") {
    // Odd shapes; the large matrix splits its rows over threads (rows · padded cols ≥ 2^20).
    const packed_matrix<levels::mnz> small(
        test::quantize_fast<levels::mnz>(test::gaussian_matrix(67, 1000, 1)));
    const packed_matrix<levels::pot_mnz> big(
        test::quantize_fast<levels::pot_mnz>(test::gaussian_matrix(1031, 1100, 2)));
    const auto x1000 = test::gaussian_matrix(70, 1000, 3),
               x1100 = test::gaussian_matrix(33, 1100, 4);
    const auto a1 = quantize_activations(x1000.row(0), 0.9f);
    const auto a70 = quantize_activations(x1000, 0.9f);
    const auto b1 = quantize_activations(x1100.row(0), 0.9f);
    const auto b33 = quantize_activations(x1100, 0.9f);
    matrix<float> y_small(70, small.rows()), y_big(33, big.rows());
    for_each_executor([&](const std::string& exec) {
        CAPTURE(exec);
        const auto gemv_small = measure([&] { gemv(small, a1, y_small.row(0)); });
        const auto gemv_big = measure([&] { gemv(big, b1, y_big.row(0)); });
        const auto gemm_small = measure([&] { gemm(small, a70, y_small.view()); });
        const auto gemm_big = measure([&] { gemm(big, b33, y_big.view()); });
        const auto gemv_ref = measure([&] { gemv_reference(big, b1, y_big.row(0)); });
        MESSAGE(exec << ": allocations per call: W2A4 GEMV 67x1000 " << gemv_small.count
                     << ", 1031x1100 " << gemv_big.count << "; GEMM 70 tokens x 67x1000 "
                     << gemm_small.count << ", 33 tokens x 1031x1100 " << gemm_big.count);
        CHECK(gemv_small.count == 0);
        CHECK(gemv_big.count == 0);
        CHECK(gemm_small.count == 0);
        CHECK(gemm_big.count == 0);
        CHECK(gemv_ref.count == 0);
    });
}

TEST_CASE("allocations: quantize_activations into reused storage allocates nothing") {
    const auto x = test::gaussian_matrix(64, 1100, 5);
    quantized_activations a;
    for_each_executor([&](const std::string& exec) {
        CAPTURE(exec);
        const auto many = measure([&] { quantize_activations(x, a, 0.9f); });
        // Fewer tokens after more: the storage is kept.
        const auto one =
            measure([&] { quantize_activations(std::span<const float>(x.row(3)), a, 0.9f); });
        const auto again = measure([&] { quantize_activations(x, a, 0.9f); }, 1);
        MESSAGE(exec << ": quantize_activations allocations per call: 64 tokens " << many.count
                     << ", 1 token " << one.count);
        CHECK(many.count == 0);
        CHECK(one.count == 0);
        CHECK(again.count == 0);
    });
}

TEST_CASE("allocations: W2A16 GEMV and GEMM pad x into the thread's scratch") {
    const packed_matrix<levels::mnz> small(
        test::quantize_fast<levels::mnz>(test::gaussian_matrix(67, 1000, 6)));
    const packed_matrix<levels::pot_mnz> big(
        test::quantize_fast<levels::pot_mnz>(test::gaussian_matrix(1031, 1100, 7)));
    const auto x1000 = test::gaussian_matrix(5, 1000, 8), x1100 = test::gaussian_matrix(5, 1100, 9);
    matrix<float> y_small(5, small.rows()), y_big(5, big.rows());
    for_each_executor([&](const std::string& exec) {
        CAPTURE(exec);
        const auto gemv_small = measure([&] { gemv(small, x1000.row(0), y_small.row(0)); });
        const auto gemv_big = measure([&] { gemv(big, x1100.row(0), y_big.row(0)); });
        const auto gemm_big = measure([&] { gemm(big, x1100.view(), y_big.view()); });
        MESSAGE(exec << ": W2A16 allocations per call (bytes): GEMV 67x1000 " << gemv_small.count
                     << " (" << gemv_small.bytes << "), 1031x1100 " << gemv_big.count << " ("
                     << gemv_big.bytes << "); GEMM 5 tokens x 1031x1100 " << gemm_big.count << " ("
                     << gemm_big.bytes << ")");
        // The padded copy of x lives in the calling thread's scratch (grown by the warm-up).
        CHECK(gemv_small.count == 0);
        CHECK(gemv_big.count == 0);
        CHECK(gemm_big.count == 0);
    });
}

TEST_CASE("allocations: bit-plane W2A16 GEMV and GEMM keep tables and sums in scratch") {
    const bitplane_matrix<levels::nf2> planes(
        test::quantize_fast<levels::nf2>(test::gaussian_matrix(1031, 1100, 13)));
    const auto x = test::gaussian_matrix(5, 1100, 14);
    matrix<float> y(5, planes.rows());
    for_each_executor([&](const std::string& exec) {
        CAPTURE(exec);
        const auto one = measure([&] { gemv(planes, x.row(0), y.row(0)); });
        const auto five = measure([&] { gemm(planes, x.view(), y.view()); });
        MESSAGE(exec << ": bit-plane W2A16 allocations per call: GEMV 1031x1100 " << one.count
                     << ", GEMM 5 tokens " << five.count);
        // The tables are the calling thread's scratch, the running sums each thread's: nothing
        // on the serial executor; on the pool at most a worker's first sums buffer.
        if (exec == "serial executor") {
            CHECK(one.count == 0);
            CHECK(five.count == 0);
        }
        CHECK(one.count <= 1);
        CHECK(five.count <= 1);
    });
}

TEST_CASE("allocations: KV4 append, attention and one-token prefill on a reserved cache") {
    // head_dim 128 with 16 query heads on 4 kv heads (compiled kernels; 600 tokens pass the
    // threshold for threads), and head_dim 10 (run-time size) with rotated keys.
    struct shape {
        std::size_t head_dim, n_kv_heads, n_heads, tokens;
        bool rotate;
    };
    for (const shape sh : {shape{128, 4, 16, 600, false}, shape{10, 3, 6, 40, true}}) {
        CAPTURE(sh.head_dim);
        const std::size_t kvw = sh.n_kv_heads * sh.head_dim, qw = sh.n_heads * sh.head_dim;
        const auto k = test::gaussian_matrix(sh.tokens + 40, kvw, 10);
        const auto v = test::gaussian_matrix(sh.tokens + 40, kvw, 11);
        const auto q = test::gaussian_matrix(1, qw, 12);
        for_each_executor([&](const std::string& exec) {
            CAPTURE(exec);
            kv_cache<> cache({.head_dim = sh.head_dim,
                              .n_kv_heads = sh.n_kv_heads,
                              .capacity = 16,
                              .rotate_keys = sh.rotate});
            cache.reserve(sh.tokens + 40);  // sized once: no growth below
            std::size_t t = 0;
            for (; t < sh.tokens; ++t) cache.append(k.row(t), v.row(t));
            std::vector<float> out(qw);
            const auto attend = measure([&] { cache.attend(q.row(0), sh.n_heads, out); });
            const auto append = measure([&] { cache.append(k.row(t), v.row(t)), ++t; }, 4);
            matrix<float> o(1, qw);
            const auto prefill1 = measure(
                [&] {
                    cache.prefill(q.view(), matrix_view<const float>(k.row(t).data(), 1, kvw),
                                  matrix_view<const float>(v.row(t).data(), 1, kvw), sh.n_heads,
                                  o.view());
                    ++t;
                },
                4);
            MESSAGE(exec << ", head_dim " << sh.head_dim << ", " << sh.tokens
                         << " tokens: allocations per call (bytes): attend " << attend.count << " ("
                         << attend.bytes << "), append " << append.count << " (" << append.bytes
                         << "), one-token prefill " << prefill1.count << " (" << prefill1.bytes
                         << ")");
            // append: nothing. attend and prefill: the group buffers (scores, rows, rotated
            // queries) are each thread's scratch: nothing on the serial executor; on the pool
            // at most a worker's first three, never per token or head.
            CHECK(append.count == 0);
            if (exec == "serial executor") {
                CHECK(attend.count == 0);
                CHECK(prefill1.count == 0);
            }
            CHECK(attend.count <= 3);
            CHECK(prefill1.count <= 3);
        });
    }
}

namespace {

// One decode step of the W2A4KV4 forward pass of the model in ../shared/models/<name>.
void check_decode_step(const std::string& name) {
    const std::string path = std::string(QIFT_SHARED_DIR) + "/models/" + name;
    if (!std::filesystem::exists(path)) {
        MESSAGE("SKIPPED: " << path << " is missing (CI always has it)");
        return;
    }
    CAPTURE(name);
    const auto w = quarot(llama_weights::from(load_llama2c(path)), {.seed = 3});
    const llama_model m = build_model(
        w,
        [](std::size_t, linear_id, const matrix<float>& wt) {
            return linear(test::quantize_fast<levels::mnz>(wt),
                          input_quantization::a4_per_token(0.9f));
        },
        kv_format::kv4_asymmetric());
    std::mt19937 gen(5);
    std::uniform_int_distribution<int> id(3, m.config.vocab_size - 1);
    std::vector<int> tokens{1};
    while (tokens.size() < 64) tokens.push_back(id(gen));
    for_each_executor([&](const std::string& exec) {
        CAPTURE(exec);
        llama_state s(m, tokens.size());
        forward(m, s, std::span(tokens).first(40));  // a prefill, then decode steps
        std::size_t t = 40;
        const auto step = measure([&] { forward(m, s, std::span(tokens).subspan(t++, 1)); });
        MESSAGE(name << ", " << exec << ": one decode step allocates " << step.count << " times ("
                     << step.bytes << " bytes), " << m.layers.size() << " layers");
        // Nothing: the attention's buffers are the thread's scratch, and the linears, the
        // A4 quantization, norms, RoPE, the KV4 append and the classifier allocate nothing.
        // On the pool a worker's first chunk may still allocate its scratch.
        if (exec == "serial executor") CHECK(step.count == 0);
        CHECK(step.count <= 3.0 * double(m.layers.size()));
    });
}

}  // namespace

// Two test cases (and two ctests): the sanitizer and emulated builds leave out the prose6M one.
TEST_CASE("allocations: one decode step of the W2A4KV4 forward pass, stories260K") {
    check_decode_step("stories260K.bin");
}

TEST_CASE("allocations: one decode step of the W2A4KV4 forward pass, prose6M") {
    check_decode_step("prose6M.bin");
}
