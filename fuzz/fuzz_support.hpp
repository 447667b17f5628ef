// SPDX-License-Identifier: MIT
// Shared pieces of the libFuzzer targets: a reader over the fuzzer's bytes, a scratch file for
// the readers that take a path, and the rule every target follows: qift::error is the expected
// answer to bad input; any other exception, a crash or a sanitizer report is a finding.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace qift::fuzz {

/// Takes values off the front of the input; past the end it yields zeros.
class byte_reader {
  public:
    byte_reader(const std::uint8_t* data, std::size_t size) noexcept : data_(data), size_(size) {}

    template <class T>
    T take() noexcept {
        T v{};
        const std::size_t n = std::min(sizeof v, size_ - pos_);
        std::memcpy(&v, data_ + pos_, n);
        pos_ += n;
        return v;
    }
    std::span<const std::uint8_t> rest() const noexcept { return {data_ + pos_, size_ - pos_}; }
    std::size_t remaining() const noexcept { return size_ - pos_; }

  private:
    const std::uint8_t* data_;
    std::size_t size_, pos_ = 0;
};

/// Where scratch_file writes (for the exit handler).
inline std::string& scratch_path() {
    static std::string p;
    return p;
}

/// A file holding the given bytes, one per process (removed at exit).
inline const std::string& scratch_file(std::span<const std::uint8_t> bytes) {
    static const std::string path = [] {
        const char* dir = std::getenv("TMPDIR");
        std::string p = std::string(dir && *dir ? dir : "/tmp") + "/qift_fuzz_" +
                        std::to_string(static_cast<long>(::getpid())) + ".bin";
        std::atexit([] { std::remove(scratch_path().c_str()); });
        return p;
    }();
    scratch_path() = path;
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) std::abort();
    if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size())
        std::abort();
    std::fclose(f);
    return path;
}

/// Stops the run with a message: a property of the library that must hold did not.
[[noreturn]] inline void violated(const char* what) {
    std::fprintf(stderr, "fuzz property violated: %s\n", what);
    std::abort();
}

}  // namespace qift::fuzz
