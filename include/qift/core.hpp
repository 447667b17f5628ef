// SPDX-License-Identifier: MIT
// Vocabulary shared by every qift header: the error type, the row-major matrix view and its
// owning counterpart, a cache-line-aligned allocator, and the replaceable parallel_for hook.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#define QIFT_HAS_EXCEPTIONS 1
#else
#define QIFT_HAS_EXCEPTIONS 0
#endif

namespace qift {

/// The one exception type qift throws for bad input at the API boundary (shapes, sizes,
/// non-finite values, malformed files). The message names the argument and the values.
/// When exceptions are disabled (-fno-exceptions) the same message goes to stderr and
/// the program aborts.
class error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

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

}  // namespace detail

/// Alignment of every buffer qift allocates for kernels: one cache line, which is also the
/// width of an AVX-512 register.
inline constexpr std::size_t buffer_alignment = 64;

/// std::allocator replacement that returns `buffer_alignment`-aligned storage.
template <class T>
struct aligned_allocator {
    using value_type = T;
    aligned_allocator() noexcept = default;
    template <class U>
    aligned_allocator(const aligned_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) {
        return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{buffer_alignment}));
    }
    void deallocate(T* p, std::size_t) noexcept {
        ::operator delete (p, std::align_val_t{buffer_alignment});
    }
    template <class U>
    bool operator==(const aligned_allocator<U>&) const noexcept {
        return true;
    }
};

/// A std::vector whose data() is `buffer_alignment`-aligned.
template <class T>
using aligned_vector = std::vector<T, aligned_allocator<T>>;

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
    matrix(std::size_t rows, std::size_t cols, T fill = T{})
        : rows_(rows), cols_(cols), data_(rows * cols, fill) {}

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

/// Default executor: splits [0, n) into one contiguous chunk per hardware thread (the calling
/// thread runs the last one). Cheap enough for the coarse loops qift uses it for (rows of a
/// matrix, blocks of a solve); an engine with its own pool installs it via set_parallel_executor.
inline void std_thread_executor(std::size_t n, const range_fn& body) {
    const std::size_t threads = std::min<std::size_t>(default_thread_count(), n);
    if (threads <= 1) {
        if (n) body(0, n);
        return;
    }
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    const std::size_t chunk = (n + threads - 1) / threads;
#if QIFT_HAS_EXCEPTIONS
    std::exception_ptr first_error;
    std::mutex error_mutex;
#endif
    // An exception escaping a worker thread would terminate: carry the first one back.
    auto run = [&](std::size_t b, std::size_t e) {
#if QIFT_HAS_EXCEPTIONS
        try {
            body(b, e);
        } catch (...) {
            std::lock_guard lock(error_mutex);
            if (!first_error) first_error = std::current_exception();
        }
#else
        body(b, e);
#endif
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

inline parallel_executor& executor_slot() {
    static parallel_executor slot = std_thread_executor;
    return slot;
}

}  // namespace detail

/// Replaces the executor every qift parallel loop uses (pass nullptr to restore the default).
/// Not thread-safe with respect to loops already running; set it once at start-up.
inline void set_parallel_executor(parallel_executor exec) {
    detail::executor_slot() =
        exec ? std::move(exec) : parallel_executor(detail::std_thread_executor);
}

/// A serial executor, for callers that want qift single-threaded.
inline void serial_executor(std::size_t n, const range_fn& body) {
    if (n) body(0, n);
}

/// Runs body over [0, n) through the installed executor. Loops shorter than `min_parallel`
/// run inline on the calling thread.
inline void parallel_for(std::size_t n, const range_fn& body, std::size_t min_parallel = 2) {
    if (n < min_parallel) {
        if (n) body(0, n);
        return;
    }
    detail::executor_slot()(n, body);
}

}  // namespace qift
