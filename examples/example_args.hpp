// SPDX-License-Identifier: MIT
// Command-line reading shared by the examples: flags, their values, and numbers checked in full
// (a bad value ends the program with "<program>: <flag> expects ..., got '<text>'" on stderr and
// exit status 2, instead of an uncaught std::invalid_argument or a negative count wrapped to a
// huge one by std::stoul).
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <concepts>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace example {

class args {
  public:
    args(int argc, char** argv, std::string_view program)
        : argc_(argc), argv_(argv), program_(program) {}

    /// Moves to the next argument; false when there is none.
    bool next() {
        flag_ = ++i_;
        return i_ < argc_;
    }
    /// The current argument.
    std::string_view flag() const { return argv_[flag_]; }
    bool is(std::string_view f) const { return flag() == f; }

    /// The argument after the current flag, consumed (exits when there is none).
    std::string value() {
        if (i_ + 1 >= argc_) fail("needs a value", "");
        return argv_[++i_];
    }
    /// The value as an integer of type T, the whole text in range (no sign for unsigned T).
    template <std::integral T = std::size_t>
    T integer() {
        const std::string v = value();
        return parse_integer<T>(v, v);
    }
    /// The value as a finite floating-point number.
    template <std::floating_point T = float>
    T real() {
        const std::string v = value();
        T x{};
        const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
        if (v.empty() || ec != std::errc{} || end != v.data() + v.size() || !std::isfinite(x))
            fail("expects a finite number", v);
        return x;
    }
    /// The value split at commas (empty pieces dropped).
    std::vector<std::string> list() {
        std::vector<std::string> out;
        const std::string v = value();
        std::size_t b = 0;
        while (b <= v.size()) {
            const std::size_t e = std::min(v.find(',', b), v.size());
            if (e > b) out.push_back(v.substr(b, e - b));
            b = e + 1;
        }
        return out;
    }
    /// The value as a comma-separated list of integers of type T.
    template <std::integral T>
    std::vector<T> integer_list() {
        std::vector<T> out;
        for (const auto& s : list()) out.push_back(parse_integer<T>(s, argv_[i_]));
        return out;
    }

    /// Reports the current argument as unknown on stderr (the caller prints its usage).
    void unknown() const {
        std::fprintf(stderr, "%.*s: unknown argument '%s'\n", int(program_.size()), program_.data(),
                     argv_[flag_]);
    }

  private:
    template <std::integral T>
    T parse_integer(const std::string& v, const std::string& whole) {
        T x{};
        const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
        if (ec == std::errc::result_out_of_range) {
            const std::string range = "expects an integer from " +
                                      std::to_string(std::numeric_limits<T>::min()) + " to " +
                                      std::to_string(std::numeric_limits<T>::max());
            fail(range.c_str(), whole);
        }
        if (v.empty() || ec != std::errc{} || end != v.data() + v.size())
            fail(
                std::unsigned_integral<T> ? "expects a non-negative integer" : "expects an integer",
                whole);
        return x;
    }
    [[noreturn]] void fail(const char* what, const std::string& got) const {
        std::fprintf(stderr, "%.*s: %s %s", int(program_.size()), program_.data(), argv_[flag_],
                     what);
        if (what[0] == 'e') std::fprintf(stderr, ", got '%s'", got.c_str());
        std::fputc('\n', stderr);
        std::exit(2);
    }

    int argc_;
    char** argv_;
    std::string_view program_;
    int i_ = 0;     // the last argument read
    int flag_ = 0;  // the current flag
};

}  // namespace example
