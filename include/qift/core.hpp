// SPDX-License-Identifier: MIT
// Vocabulary shared by every qift header: the error type, the row-major matrix view and its
// owning counterpart, a cache-line-aligned allocator, and the replaceable parallel_for hook
// (by default a persistent thread pool).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#define QIFT_HAS_EXCEPTIONS 1
#else
#define QIFT_HAS_EXCEPTIONS 0
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "detail/target.hpp"

// qift::error is the one name outside the target namespace (detail/target.hpp): code built for
// one instruction set catches what code built for another throws.
namespace qift {

/// The one exception type qift throws for bad input at the API boundary (shapes, sizes,
/// non-finite values, malformed files). The message names the argument and the values.
/// When exceptions are disabled (-fno-exceptions) the same message goes to stderr and
/// the program aborts.
class error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

}  // namespace qift

namespace qift::inline QIFT_ISA {

namespace detail {

[[noreturn]] inline void fail(const std::string& message) {
#if QIFT_HAS_EXCEPTIONS
    throw error(message);
#else
    std::fprintf(stderr, "qift::error: %s\n", message.c_str());
    std::abort();
#endif
}

/// Throws qift::error(message()) when `ok` is false; the message is built only on failure.
template <class MakeMessage>
inline void require(bool ok, MakeMessage&& message) {
    if (!ok) [[unlikely]]
        fail(std::forward<MakeMessage>(message)());
}

// Checked size arithmetic. Every size formed from numbers a caller or a file supplies (rows ×
// cols, shape products, offsets) goes through these before anything is allocated: a result that
// wraps around in U, or a byte count over the largest object the standard library allocates,
// throws qift::error naming `what` and the operands. U is a template parameter so that the
// arithmetic of a 32-bit target (std::size_t of 32 bits) is testable on a 64-bit host.

/// The largest object, in bytes, qift allocates with a U-sized size type: the maximum of U's
/// signed counterpart (PTRDIFF_MAX for std::size_t, the bound of std::vector::max_size).
template <std::unsigned_integral U>
inline constexpr U max_object_bytes =
    static_cast<U>(std::numeric_limits<std::make_signed_t<U>>::max());

/// a · b, or qift::error "what: a x b overflows N-bit size arithmetic".
template <std::unsigned_integral U>
constexpr U checked_mul(U a, U b, std::string_view what) {
    U r{};
    if (__builtin_mul_overflow(a, b, &r)) [[unlikely]]
        fail(std::string(what) + ": " + std::to_string(a) + " x " + std::to_string(b) +
             " overflows " + std::to_string(std::numeric_limits<U>::digits) +
             "-bit size arithmetic");
    return r;
}

/// a + b, or qift::error "what: a + b overflows N-bit size arithmetic".
template <std::unsigned_integral U>
constexpr U checked_add(U a, U b, std::string_view what) {
    U r{};
    if (__builtin_add_overflow(a, b, &r)) [[unlikely]]
        fail(std::string(what) + ": " + std::to_string(a) + " + " + std::to_string(b) +
             " overflows " + std::to_string(std::numeric_limits<U>::digits) +
             "-bit size arithmetic");
    return r;
}

/// Number of elements of an array of shape `dims` (their product; 0 when a dimension is 0,
/// however large the others, 1 for no dimensions), checked: throws qift::error naming `what`
/// and the shape when the product wraps around in U or product · sizeof(Element) exceeds
/// max_object_bytes<U>. The default Element (one byte) bounds a count of bytes.
template <class Element = std::byte, std::unsigned_integral U = std::size_t>
constexpr U checked_size(std::span<const U> dims, std::string_view what) {
    constexpr U element_bytes = static_cast<U>(sizeof(Element));
    U n = 1;
    bool wrapped = false;
    for (U d : dims) {
        if (d == 0) return 0;
        wrapped = __builtin_mul_overflow(n, d, &n) || wrapped;
    }
    if (!wrapped && n <= max_object_bytes<U> / element_bytes) [[likely]]
        return n;
    std::string shape;
    for (U d : dims) shape += (shape.empty() ? "" : " x ") + std::to_string(d);
    if (element_bytes > 1) shape += " elements of " + std::to_string(element_bytes) + " bytes";
    fail(std::string(what) + ": size " + shape +
         (wrapped ? " overflows " + std::to_string(std::numeric_limits<U>::digits) +
                        "-bit size arithmetic"
                  : " exceeds the largest allocation, " + std::to_string(max_object_bytes<U>) +
                        " bytes"));
}

template <class Element = std::byte, std::unsigned_integral U = std::size_t>
constexpr U checked_size(std::initializer_list<U> dims, std::string_view what) {
    return checked_size<Element, U>(std::span<const U>(dims.begin(), dims.size()), what);
}

}  // namespace detail

/// Alignment of every buffer qift allocates for kernels: one cache line, which is also the
/// width of an AVX-512 register.
inline constexpr std::size_t buffer_alignment = 64;

/// The huge page size aligned_allocator aligns its large buffers to (x86-64 and AArch64 with
/// 4 KiB base pages: 2 MiB).
inline constexpr std::size_t huge_page_bytes = std::size_t{2} << 20;

// Buffers of at least this many bytes (weights, cold copies, long caches) are aligned to
// huge_page_bytes and, on Linux, advised as transparent huge pages. Where THP is `madvise` only
// (a common distribution default, and this project's build VM), large buffers otherwise stream
// through 4 KiB pages and a cold GEMV pays a TLB miss every 4 KiB. Define it to 0 to turn this
// off; every translation unit of a program must agree (deallocate derives the alignment from
// the size, as allocate does).
#ifndef QIFT_HUGE_PAGE_MIN_BYTES
#define QIFT_HUGE_PAGE_MIN_BYTES (std::size_t{4} << 20)
#endif

/// Buffers of at least this many bytes get huge-page alignment and advice (0: none).
inline constexpr std::size_t huge_page_min_bytes = QIFT_HUGE_PAGE_MIN_BYTES;

namespace detail {

/// Whether aligned_allocator gives a buffer of `bytes` bytes huge-page alignment and advice.
constexpr bool wants_huge_pages(std::size_t bytes) noexcept {
    return huge_page_min_bytes != 0 && bytes >= huge_page_min_bytes;
}

/// Advises the whole huge pages of [p, p + bytes) as transparent huge pages (Linux
/// madvise(MADV_HUGEPAGE); p huge-page aligned). Advice only: where THP is off or the call
/// fails, the buffer keeps base pages and nothing else changes. Elsewhere it does nothing.
inline void advise_huge_pages([[maybe_unused]] void* p,
                              [[maybe_unused]] std::size_t bytes) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const std::size_t whole = bytes / huge_page_bytes * huge_page_bytes;
    if (whole) (void)::madvise(p, whole, MADV_HUGEPAGE);
#endif
}

}  // namespace detail

/// std::allocator replacement that returns `buffer_alignment`-aligned storage, and for
/// buffers of at least huge_page_min_bytes, huge_page_bytes-aligned storage advised as
/// transparent huge pages (before its first touch, so the first faults can map huge pages).
template <class T>
struct aligned_allocator {
    using value_type = T;
    aligned_allocator() noexcept = default;
    template <class U>
    aligned_allocator(const aligned_allocator<U>&) noexcept {}
    /// Throws qift::error when n·sizeof(T) exceeds detail::max_object_bytes (never for
    /// std::vector, which checks max_size() first).
    T* allocate(std::size_t n) {
        const std::size_t bytes =
            detail::checked_size<T>({n}, "aligned_allocator::allocate") * sizeof(T);
        void* p = ::operator new(bytes, alignment(bytes));
        if (detail::wants_huge_pages(bytes)) detail::advise_huge_pages(p, bytes);
        return static_cast<T*>(p);
    }
    void deallocate(T* p, std::size_t n) noexcept {
        ::operator delete(p, alignment(n * sizeof(T)));
    }
    template <class U>
    bool operator==(const aligned_allocator<U>&) const noexcept {
        return true;
    }

  private:
    static std::align_val_t alignment(std::size_t bytes) noexcept {
        return std::align_val_t{detail::wants_huge_pages(bytes) ? huge_page_bytes
                                                                : buffer_alignment};
    }
};

/// A std::vector whose data() is `buffer_alignment`-aligned.
template <class T>
using aligned_vector = std::vector<T, aligned_allocator<T>>;

namespace detail {

/// The per-call work buffers that qift keeps per thread instead of allocating on every call
/// (one slot per buffer that is in use at the same time as another).
enum class scratch_slot {
    attention_scores,
    attention_rows,
    attention_queries,
    float_activations,
    hadamard_dft_narrow,
    hadamard_rader,
    bitplane_tables,
    bitplane_sums
};

/// A `buffer_alignment`-aligned buffer of at least n floats, contents unspecified, owned by the
/// calling thread and handed out again to its later calls with the same slot: the hot paths of
/// a decode step (attention, the W2A16 GEMV) allocate nothing once every thread has seen its
/// largest call. A too-small buffer is replaced by one of max(n, 2·capacity, 4096) floats, so a
/// slowly growing request (attention over a growing context) reallocates O(log n) times. The
/// buffer lives until the thread exits; memory: the largest request per slot and thread.
template <scratch_slot Slot>
float* thread_scratch(std::size_t n) {
    thread_local aligned_vector<float> buffer;
    if (n > buffer.size()) {
        const std::size_t grown =
            buffer.size() > buffer.max_size() / 2 ? buffer.max_size() : 2 * buffer.size();
        aligned_vector<float> bigger(std::max({n, grown, std::size_t{4096}}));
        buffer.swap(bigger);  // the old buffer is kept if the allocation throws
    }
    return buffer.data();
}

}  // namespace detail

/// Non-owning view of a row-major matrix: element (r, c) is at data[r * stride + c].
/// `stride >= cols`; a view never allocates and is cheap to copy. Every qift function that
/// takes a matrix takes one of these (`matrix_view<const float>` for inputs).
template <class T>
struct matrix_view {
    T* data = nullptr;
    std::size_t rows = 0;
    std::size_t cols = 0;
    std::size_t stride = 0;

    constexpr matrix_view() = default;
    constexpr matrix_view(T* d, std::size_t r, std::size_t c) noexcept
        : data(d), rows(r), cols(c), stride(c) {}
    constexpr matrix_view(T* d, std::size_t r, std::size_t c, std::size_t s) noexcept
        : data(d), rows(r), cols(c), stride(s) {}
    /// A view of non-const elements converts to a view of const ones.
    template <class U>
    requires(std::is_same_v<const U, T> &&
             !std::is_same_v<U, T>) constexpr matrix_view(matrix_view<U> other) noexcept
        : data(other.data), rows(other.rows), cols(other.cols), stride(other.stride) {}

    constexpr T& operator()(std::size_t r, std::size_t c) const noexcept {
        return data[r * stride + c];
    }
    constexpr std::span<T> row(std::size_t r) const noexcept { return {data + r * stride, cols}; }
    constexpr std::size_t size() const noexcept { return rows * cols; }
    constexpr bool empty() const noexcept { return rows == 0 || cols == 0; }
};

/// Owning row-major matrix (stride == cols), storage `buffer_alignment`-aligned and
/// value-initialised. Converts implicitly to a matrix_view.
template <class T>
class matrix {
  public:
    matrix() = default;
    /// Throws qift::error, before allocating, when rows·cols·sizeof(T) overflows std::size_t or
    /// exceeds detail::max_object_bytes.
    matrix(std::size_t rows, std::size_t cols, T fill = T{})
        : rows_(rows), cols_(cols), data_(detail::checked_size<T>({rows, cols}, "matrix"), fill) {}

    std::size_t rows() const noexcept { return rows_; }
    std::size_t cols() const noexcept { return cols_; }
    std::size_t size() const noexcept { return data_.size(); }
    bool empty() const noexcept { return data_.empty(); }
    T* data() noexcept { return data_.data(); }
    const T* data() const noexcept { return data_.data(); }
    T& operator()(std::size_t r, std::size_t c) noexcept { return data_[r * cols_ + c]; }
    const T& operator()(std::size_t r, std::size_t c) const noexcept {
        return data_[r * cols_ + c];
    }
    std::span<T> row(std::size_t r) noexcept { return {data_.data() + r * cols_, cols_}; }
    std::span<const T> row(std::size_t r) const noexcept {
        return {data_.data() + r * cols_, cols_};
    }
    std::span<T> flat() noexcept { return {data_.data(), data_.size()}; }
    std::span<const T> flat() const noexcept { return {data_.data(), data_.size()}; }

    matrix_view<T> view() noexcept { return {data_.data(), rows_, cols_}; }
    matrix_view<const T> view() const noexcept { return {data_.data(), rows_, cols_}; }
    operator matrix_view<T>() noexcept { return view(); }
    operator matrix_view<const T>() const noexcept { return view(); }

    /// Copies any view (of any stride) into a new owning matrix.
    static matrix from(matrix_view<const T> v) {
        matrix m(v.rows, v.cols);
        for (std::size_t r = 0; r < v.rows; ++r) std::copy_n(&v(r, 0), v.cols, &m(r, 0));
        return m;
    }

  private:
    std::size_t rows_ = 0;
    std::size_t cols_ = 0;
    aligned_vector<T> data_;
};

// ---------------------------------------------------------------------------------------
// parallel_for

/// The body of a parallel loop: processes indices [begin, end).
using range_fn = std::function<void(std::size_t begin, std::size_t end)>;

/// An executor runs `body` over [0, n) in chunks, possibly concurrently, and returns when all
/// chunks are done. Chunks must be disjoint and cover [0, n) exactly once.
using parallel_executor = std::function<void(std::size_t n, const range_fn& body)>;

namespace detail {

inline unsigned default_thread_count() noexcept {
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1u : hw;
}

/// Runs body(b, e) and stores the first exception escaping it in `error` (an exception leaving
/// a worker thread would terminate the program).
inline void run_catching(const range_fn& body, std::size_t b, std::size_t e,
                         [[maybe_unused]] std::exception_ptr& error,
                         [[maybe_unused]] std::mutex& error_mutex) {
#if QIFT_HAS_EXCEPTIONS
    try {
        body(b, e);
    } catch (...) {
        std::lock_guard lock(error_mutex);
        if (!error) error = std::current_exception();
    }
#else
    body(b, e);
#endif
}

/// The executor of qift before the pool: one contiguous chunk per hardware thread, a new
/// std::thread for each but the last (run by the caller), joined before returning. Kept for
/// measurement: starting and joining the threads costs tens of microseconds a call, more than a
/// 4096×4096 W2 GEMV.
inline void std_thread_executor(std::size_t n, const range_fn& body) {
    const std::size_t threads = std::min<std::size_t>(default_thread_count(), n);
    if (threads <= 1) {
        if (n) body(0, n);
        return;
    }
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    const std::size_t chunk = (n + threads - 1) / threads;
    std::exception_ptr first_error;
    std::mutex error_mutex;
    const auto run = [&](std::size_t b, std::size_t e) {
        run_catching(body, b, e, first_error, error_mutex);
    };
    std::size_t begin = 0;
    for (std::size_t t = 0; t + 1 < threads && begin < n; ++t, begin += chunk)
        pool.emplace_back(run, begin, std::min(n, begin + chunk));
    if (begin < n) run(begin, n);
    for (auto& th : pool) th.join();
#if QIFT_HAS_EXCEPTIONS
    if (first_error) std::rethrow_exception(first_error);
#endif
}

/// Spins for up to about 100 µs until done() holds, then sleeps on `a` (atomic wait) until a
/// notify finds done() true. Loops of back-to-back calls (a GEMV per layer) then hand work over
/// without a futex wake-up, and an idle pool costs no CPU.
template <class T, class Done>
void spin_then_wait(const std::atomic<T>& a, Done done) noexcept {
    const auto start = std::chrono::steady_clock::now();
    for (unsigned i = 1;; ++i) {
        if (done()) return;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (i % 64 == 0 &&
            std::chrono::steady_clock::now() - start > std::chrono::microseconds(100))
            break;
    }
    for (;;) {
        const T v = a.load(std::memory_order_acquire);
        if (done()) return;
        a.wait(v, std::memory_order_acquire);
    }
}

/// True on the pool's workers, and on a thread while it runs a parallel region: parallel_for
/// called from there runs serially instead of waiting on itself.
inline thread_local bool inside_parallel_region = false;

/// The default executor's persistent pool: default_thread_count() − 1 workers, started on the
/// first parallel loop and joined at exit. A call splits [0, n) into one contiguous chunk per
/// thread (as std_thread_executor does); the caller and the workers claim chunks in order, so
/// a worker that the OS has not scheduled yet leaves its chunk to the caller instead of
/// stalling the call. One region at a time: a call from a worker, from inside a body, or from
/// another thread while a region runs executes serially on its caller. The first exception of
/// a body is rethrown on the caller once every chunk is done.
class thread_pool {
  public:
    explicit thread_pool(unsigned workers) {
        threads_.reserve(workers);
        for (unsigned i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
    }
    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;
    ~thread_pool() {
        {
            std::lock_guard lock(state_mutex_);
            stop_ = true;
        }
        generation_.fetch_add(1, std::memory_order_release);
        generation_.notify_all();
        for (auto& t : threads_) t.join();
    }

    /// The process-wide pool (nullptr once it has been destroyed at exit, or when the machine
    /// has one hardware thread).
    static thread_pool* instance() {
        static const unsigned workers = default_thread_count() - 1;
        if (workers == 0) return nullptr;
        static thread_pool pool(workers);
        static const lifetime guard;
        return lifetime::alive.load(std::memory_order_acquire) ? &pool : nullptr;
    }

    /// Runs body over [0, n) on the pool; returns false (having run nothing) when the pool is
    /// busy or the caller is inside a parallel region.
    bool try_run(std::size_t n, const range_fn& body) {
        if (inside_parallel_region) return false;
        std::unique_lock call(call_mutex_, std::try_to_lock);
        if (!call.owns_lock()) return false;
        const std::size_t chunks = std::min<std::size_t>(threads_.size() + 1, n);
        {
            std::lock_guard lock(state_mutex_);
            body_ = &body;
            n_ = n;
            chunk_ = (n + chunks - 1) / chunks;
            chunks_ = (n + chunk_ - 1) / chunk_;
            next_ = 0;
            remaining_.store(static_cast<std::uint32_t>(chunks_), std::memory_order_relaxed);
            error_ = nullptr;
        }
        generation_.fetch_add(1, std::memory_order_release);
        generation_.notify_all();
        inside_parallel_region = true;
        claim_chunks();
        spin_then_wait(remaining_, [&] { return remaining_.load(std::memory_order_acquire) == 0; });
        inside_parallel_region = false;
        std::exception_ptr error;
        {
            std::lock_guard lock(state_mutex_);
            body_ = nullptr;
            error = std::move(error_);
        }
#if QIFT_HAS_EXCEPTIONS
        if (error) std::rethrow_exception(error);
#endif
        return true;
    }

  private:
    // Marks the pool dead when static destruction reaches it (constructed after the pool, so
    // destroyed before it): later calls run serially.
    struct lifetime {
        static inline std::atomic<bool> alive{false};
        lifetime() noexcept { alive.store(true, std::memory_order_release); }
        ~lifetime() { alive.store(false, std::memory_order_release); }
    };

    // Claims and runs chunks of the current region until none is left.
    void claim_chunks() {
        for (;;) {
            const range_fn* body = nullptr;
            std::size_t b = 0, e = 0;
            {
                std::lock_guard lock(state_mutex_);
                if (body_ == nullptr || next_ >= chunks_) return;
                b = next_++ * chunk_;
                e = std::min(n_, b + chunk_);
                body = body_;
            }
            run_catching(*body, b, e, error_, error_mutex_);
            if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) remaining_.notify_all();
        }
    }

    void work() {
        inside_parallel_region = true;
        // The generation at construction, not the current one: a worker the OS starts only
        // after the destructor's bump must still see it (else it sleeps and join() hangs).
        std::uint32_t seen = 0;
        for (;;) {
            spin_then_wait(generation_,
                           [&] { return generation_.load(std::memory_order_acquire) != seen; });
            seen = generation_.load(std::memory_order_acquire);
            {
                std::lock_guard lock(state_mutex_);
                if (stop_) return;
            }
            claim_chunks();
            // Stay in step with the caller: wait for the end of this region (or the start of
            // the next) before the idle spin starts. Timed from the worker's own wake-up instead,
            // a worker that arrived late (the caller had claimed every chunk) slept again before
            // the next call of a back-to-back loop, missed it, and the loop ran serially.
            spin_then_wait(remaining_, [&] {
                return remaining_.load(std::memory_order_acquire) == 0 ||
                       generation_.load(std::memory_order_acquire) != seen;
            });
        }
    }

    std::vector<std::thread> threads_;
    std::mutex call_mutex_;   // held by the thread running a region
    std::mutex state_mutex_;  // guards the region's description and next_
    const range_fn* body_ = nullptr;
    std::size_t n_ = 0, chunk_ = 1, chunks_ = 0, next_ = 0;
    bool stop_ = false;
    // 32-bit: the width that std::atomic::wait maps onto a futex directly.
    std::atomic<std::uint32_t> remaining_{0};   // chunks not yet finished
    std::atomic<std::uint32_t> generation_{0};  // bumped per region (and at shutdown)
    std::exception_ptr error_;
    std::mutex error_mutex_;
};

}  // namespace detail

/// The default executor: the persistent pool of detail::thread_pool (started on first use,
/// joined at exit), falling back to a serial loop on the calling thread when called from inside
/// a parallel region (nested parallel_for), while another thread's region runs, or on a
/// one-thread machine.
inline void thread_pool_executor(std::size_t n, const range_fn& body) {
    if (n == 0) return;
    if (n > 1)
        if (detail::thread_pool* pool = detail::thread_pool::instance();
            pool && pool->try_run(n, body))
            return;
    body(0, n);
}

namespace detail {

inline parallel_executor& executor_slot() {
    static parallel_executor slot = thread_pool_executor;
    return slot;
}

}  // namespace detail

/// Replaces the executor every qift parallel loop uses (pass nullptr to restore the default,
/// thread_pool_executor). Not thread-safe with respect to loops already running; set it once
/// at start-up.
inline void set_parallel_executor(parallel_executor exec) {
    detail::executor_slot() = exec ? std::move(exec) : parallel_executor(thread_pool_executor);
}

/// A serial executor, for callers that want qift single-threaded.
inline void serial_executor(std::size_t n, const range_fn& body) {
    if (n) body(0, n);
}

/// Runs body(begin, end) over [0, n) through the installed executor. Loops shorter than
/// `min_parallel` run inline on the calling thread. `body` is any callable; the executor gets it
/// by reference (a range_fn holding a std::reference_wrapper, which std::function stores without
/// allocating), so neither path allocates.
template <class Body>
requires std::invocable<Body&, std::size_t, std::size_t>
inline void parallel_for(std::size_t n, Body&& body, std::size_t min_parallel = 2) {
    if (n < min_parallel) {
        if (n) body(0, n);
        return;
    }
    detail::executor_slot()(n, range_fn(std::ref(body)));
}

}  // namespace qift
