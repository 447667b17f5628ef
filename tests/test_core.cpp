// SPDX-License-Identifier: MIT
// Tests of core.hpp's parallel_for: the default persistent pool (coverage, many calls, nested
// and concurrent calls, exceptions), the spawning executor and executor replacement.
#include <doctest/doctest.h>

#include <atomic>
#include <numeric>
#include <stdexcept>
#include <thread>
#include <vector>

#include <qift/core.hpp>

namespace {

// Runs parallel_for over [0, n) and checks that every index is visited exactly once.
void check_cover(std::size_t n) {
    std::vector<std::atomic<int>> hits(n);
    std::atomic<std::size_t> calls{0};
    qift::parallel_for(n, [&](std::size_t b, std::size_t e) {
        REQUIRE(b < e);
        REQUIRE(e <= n);
        calls.fetch_add(1);
        for (std::size_t i = b; i < e; ++i) hits[i].fetch_add(1);
    });
    std::size_t once = 0;
    for (auto& h : hits) once += h.load() == 1;
    CHECK(once == n);
    CHECK(calls.load() <=
          std::max<std::size_t>(1, std::min<std::size_t>(n, qift::detail::default_thread_count())));
}

}  // namespace

TEST_CASE("parallel_for: the default pool covers every index once, call after call") {
    qift::set_parallel_executor(nullptr);
    for (std::size_t n : {0u, 1u, 2u, 3u, 7u, 64u, 1000u}) check_cover(n);
    // Many back-to-back calls (the GEMV pattern): sums stay exact.
    std::atomic<long> total{0};
    for (int call = 0; call < 5000; ++call)
        qift::parallel_for(std::size_t(call % 17 + 2), [&](std::size_t b, std::size_t e) {
            long s = 0;
            for (std::size_t i = b; i < e; ++i) s += long(i);
            total.fetch_add(s);
        });
    long expected = 0;
    for (int call = 0; call < 5000; ++call) {
        const long n = call % 17 + 2;
        expected += n * (n - 1) / 2;
    }
    CHECK(total.load() == expected);
}

TEST_CASE("parallel_for: nested calls and calls from several threads run to completion") {
    qift::set_parallel_executor(nullptr);
    // Nested: the inner loops run serially on whichever thread runs the outer chunk.
    std::vector<std::atomic<int>> grid(40 * 30);
    qift::parallel_for(40, [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i)
            qift::parallel_for(30, [&](std::size_t b2, std::size_t e2) {
                for (std::size_t j = b2; j < e2; ++j) grid[i * 30 + j].fetch_add(1);
            });
    });
    int ones = 0;
    for (auto& g : grid) ones += g.load() == 1;
    CHECK(ones == 40 * 30);
    // Four threads calling at once: one gets the pool, the others run serially; all complete.
    std::vector<std::thread> callers;
    std::vector<long> sums(4, 0);
    for (int t = 0; t < 4; ++t)
        callers.emplace_back([&, t] {
            for (int call = 0; call < 300; ++call) {
                std::atomic<long> s{0};
                qift::parallel_for(100, [&](std::size_t b, std::size_t e) {
                    long local = 0;
                    for (std::size_t i = b; i < e; ++i) local += long(i);
                    s.fetch_add(local);
                });
                sums[std::size_t(t)] += s.load();
            }
        });
    for (auto& c : callers) c.join();
    for (long s : sums) CHECK(s == 300L * 4950L);
}

#if QIFT_HAS_EXCEPTIONS
TEST_CASE("parallel_for: an exception thrown in a body reaches the caller, and the pool lives on") {
    for (int use_spawn = 0; use_spawn < 2; ++use_spawn) {
        qift::set_parallel_executor(
            use_spawn ? qift::parallel_executor(qift::detail::std_thread_executor) : nullptr);
        for (std::size_t thrower : {0u, 5u, 9u}) {
            std::atomic<int> ran{0};
            CHECK_THROWS_WITH_AS(qift::parallel_for(10,
                                                    [&](std::size_t b, std::size_t e) {
                                                        ran.fetch_add(1);
                                                        if (b <= thrower && thrower < e)
                                                            throw std::runtime_error("body failed");
                                                    }),
                                 "body failed", std::runtime_error);
            CHECK(ran.load() >= 1);
        }
        // Nested throw: from an inner (serial) loop through the outer region.
        CHECK_THROWS_AS(qift::parallel_for(8,
                                           [&](std::size_t, std::size_t) {
                                               qift::parallel_for(4, [](std::size_t, std::size_t) {
                                                   throw std::logic_error("inner");
                                               });
                                           }),
                        std::logic_error);
        check_cover(123);
    }
    qift::set_parallel_executor(nullptr);
}
#endif

TEST_CASE("parallel_for: set_parallel_executor replaces the pool and nullptr restores it") {
    std::atomic<int> custom_calls{0};
    qift::set_parallel_executor([&](std::size_t n, const qift::range_fn& body) {
        custom_calls.fetch_add(1);
        body(0, n);
    });
    std::size_t covered = 0;
    qift::parallel_for(50, [&](std::size_t b, std::size_t e) { covered += e - b; });
    CHECK(custom_calls.load() == 1);
    CHECK(covered == 50);
    // Below min_parallel the executor is not called.
    qift::parallel_for(1, [&](std::size_t b, std::size_t e) { covered += e - b; });
    CHECK(custom_calls.load() == 1);
    qift::set_parallel_executor(qift::serial_executor);
    std::vector<std::pair<std::size_t, std::size_t>> chunks;
    qift::parallel_for(9, [&](std::size_t b, std::size_t e) { chunks.emplace_back(b, e); });
    CHECK(chunks.size() == 1);
    qift::set_parallel_executor(qift::detail::std_thread_executor);
    check_cover(77);
    qift::set_parallel_executor(nullptr);
    check_cover(77);
    CHECK(custom_calls.load() == 1);
    // The default executor is usable directly, e.g. wrapped by an engine's own executor.
    std::atomic<std::size_t> direct{0};
    qift::thread_pool_executor(33, [&](std::size_t b, std::size_t e) { direct.fetch_add(e - b); });
    CHECK(direct.load() == 33);
}
