// SPDX-License-Identifier: MIT
// Tests of core.hpp's parallel_for: the default persistent pool (coverage, many calls, nested
// and concurrent calls, exceptions), the spawning executor and executor replacement.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <qift/core.hpp>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

TEST_CASE("core: sizes that overflow size_t are refused before allocating") {
    using qift::detail::checked_add;
    using qift::detail::checked_mul;
    using qift::detail::checked_size;
    constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
    constexpr std::size_t g32 = std::size_t{1} << 32;
    // The helpers, 64-bit: exact below the limit, qift::error naming the operands above it.
    static_assert(checked_mul<std::size_t>(g32 - 1, g32 + 1, "t") == max);
    static_assert(checked_add<std::size_t>(max - 1, 1, "t") == max);
    static_assert(checked_size<float>({std::size_t{3}, std::size_t{5}, std::size_t{7}}, "t") ==
                  105);
    static_assert(checked_size<float>({std::size_t{0}, max, max}, "t") == 0);  // 0 wins
    static_assert(checked_size<float>(std::initializer_list<std::size_t>{}, "t") == 1);
    CHECK_THROWS_WITH_AS(checked_mul(g32, g32, "f"),
                         "f: 4294967296 x 4294967296 overflows 64-bit size arithmetic",
                         qift::error);
    CHECK_THROWS_WITH_AS(checked_add(max, std::size_t{1}, "f"),
                         doctest::Contains("f: 18446744073709551615 + 1 overflows"), qift::error);
    CHECK_THROWS_WITH_AS(checked_size<float>({g32, g32}, "f"),
                         doctest::Contains("f: size 4294967296 x 4294967296 elements of 4 bytes "
                                           "overflows 64-bit size arithmetic"),
                         qift::error);
    // Huge but representable: 2^61 floats are 2^63 bytes, over PTRDIFF_MAX.
    CHECK(checked_size<float>({std::size_t{1} << 30, std::size_t{1} << 30}, "f") == std::size_t{1}
                                                                                        << 60);
    CHECK_THROWS_WITH_AS(checked_size<float>({std::size_t{1} << 30, std::size_t{1} << 31}, "f"),
                         doctest::Contains("exceeds the largest allocation"), qift::error);

    // The arithmetic of a 32-bit target (std::size_t of 32 bits), through U = uint32_t: a
    // 2^20 x 2^20 matrix wraps to 0 there and must be refused, not allocated empty.
    using u32 = std::uint32_t;
    static_assert(qift::detail::max_object_bytes<u32> == 0x7fffffffu);
    static_assert(checked_mul<u32>(65535u, 65537u, "t") == 0xffffffffu);
    static_assert(checked_size<float, u32>({1u << 14, 1u << 14}, "t") == 1u << 28);  // 1 GiB
    CHECK_THROWS_WITH_AS((checked_size<float, u32>({1u << 20, 1u << 20}, "matrix")),
                         doctest::Contains("matrix: size 1048576 x 1048576 elements of 4 bytes "
                                           "overflows 32-bit size arithmetic"),
                         qift::error);
    CHECK_THROWS_WITH_AS(checked_mul<u32>(65536u, 65536u, "f"),
                         doctest::Contains("65536 x 65536 overflows 32-bit"), qift::error);
    CHECK_THROWS_WITH_AS(checked_add<u32>(0xffffffffu, 1u, "f"),
                         doctest::Contains("overflows 32-bit"), qift::error);
    // 2^29 floats fit in 32 bits as a count but are 2^31 bytes, over a 32-bit PTRDIFF_MAX.
    CHECK_THROWS_WITH_AS((checked_size<float, u32>({1u << 15, 1u << 14}, "f")),
                         doctest::Contains("exceeds the largest allocation, 2147483647 bytes"),
                         qift::error);

    // matrix<T>(rows, cols): refused before the vector is sized (std::length_error or
    // std::bad_alloc would fail CHECK_THROWS_AS), sizes in the message.
    CHECK_THROWS_WITH_AS(qift::matrix<float>(g32, g32),
                         doctest::Contains("matrix: size 4294967296 x 4294967296"), qift::error);
    CHECK_THROWS_AS(qift::matrix<float>(max, 2), qift::error);
    CHECK_THROWS_AS(qift::matrix<double>(std::size_t{1} << 31, std::size_t{1} << 30),
                    qift::error);  // 2^61 doubles: no wrap, 2^64 bytes
    CHECK_THROWS_AS(qift::matrix<float>(std::size_t{1} << 30, std::size_t{1} << 31),
                    qift::error);  // 2^63 bytes
    const qift::matrix<float> empty(0, max);
    CHECK(empty.size() == 0);
    // The allocator, called directly.
    qift::aligned_allocator<float> alloc;
    CHECK_THROWS_AS((void)alloc.allocate(max / 2), qift::error);
}

namespace {

// The VmFlags of the mapping that holds address a, from /proc/self/smaps ("" when unreadable).
std::string vm_flags_at(std::uintptr_t a) {
    std::ifstream smaps("/proc/self/smaps");
    std::string line;
    bool inside = false;
    while (std::getline(smaps, line)) {
        std::uintptr_t lo = 0, hi = 0;
        char dash = 0;
        std::istringstream head(line);
        if (head >> std::hex >> lo >> dash >> hi && dash == '-') {
            inside = lo <= a && a < hi;
            continue;
        }
        if (inside && line.rfind("VmFlags:", 0) == 0) return line;
    }
    return "";
}

}  // namespace

TEST_CASE("aligned_allocator: large buffers are huge-page aligned and advised") {
    qift::aligned_allocator<float> alloc;
    float* small = alloc.allocate(1000);
    CHECK(reinterpret_cast<std::uintptr_t>(small) % qift::buffer_alignment == 0);
    alloc.deallocate(small, 1000);
    if (qift::huge_page_min_bytes == 0) return;  // built with the advice off
    // Just below the threshold and just over it (not a whole number of huge pages). Each
    // deallocate must pass the alignment its allocate used; ASan (the asan preset) reports a
    // mismatch, and the vector's value-initialization writes every byte of the big buffer.
    const std::size_t below = qift::huge_page_min_bytes / sizeof(float) - 1;
    float* b = alloc.allocate(below);
    CHECK(reinterpret_cast<std::uintptr_t>(b) % qift::buffer_alignment == 0);
    alloc.deallocate(b, below);
    const qift::aligned_vector<std::uint8_t> v(qift::huge_page_min_bytes + 12345);
    const auto at = reinterpret_cast<std::uintptr_t>(v.data());
    CHECK(at % qift::huge_page_bytes == 0);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // madvise(MADV_HUGEPAGE) marks the mapping "hg" in smaps whatever the THP mode. Where a
    // probe mapping advised here does not show it (no THP in the kernel, no smaps in a sandbox,
    // or qemu-user, which accepts the advice and drops it) the check is skipped.
    const auto advised_here = [] {
        const std::size_t len = 2 * qift::huge_page_bytes;
        void* m = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return false;
        const bool ok =
            ::madvise(m, qift::huge_page_bytes, MADV_HUGEPAGE) == 0 &&
            vm_flags_at(reinterpret_cast<std::uintptr_t>(m)).find(" hg") != std::string::npos;
        ::munmap(m, len);
        return ok;
    };
    if (advised_here()) {
        const std::string flags = vm_flags_at(at);
        CHECK_MESSAGE(flags.find(" hg") != std::string::npos, flags);
    } else {
        MESSAGE("madvise(MADV_HUGEPAGE) leaves no mark in smaps here: the advice is not checked");
    }
#endif
}
