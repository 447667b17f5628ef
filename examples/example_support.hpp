// SPDX-License-Identifier: MIT
// What the examples share: command-line reading (flags, their values, and numbers checked in
// full: a bad value ends the program with "<program>: <flag> expects ..., got '<text>'" on
// stderr and exit status 2, instead of an uncaught std::invalid_argument or a negative count
// wrapped to a huge one by std::stoul), the one-line progress report and the step timer.
#pragma once

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
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

/// The flags the model studies share, read into whichever of these members Options has:
/// --model, --test, --calib (paths), --windows, --calib-windows (counts), --seed, --act-clip,
/// --csv, --quiet, --svg. True when the current flag was one of them (its value consumed).
template <class Options>
bool read_shared_flag(args& cl, Options& opt) {
    const auto text = [&](std::string& member) {
        member = cl.value();
        return true;
    };
    const auto number = [&](auto& member) {
        using T = std::remove_cvref_t<decltype(member)>;
        if constexpr (std::is_floating_point_v<T>)
            member = cl.real<T>();
        else
            member = cl.integer<T>();
        return true;
    };
    if constexpr (requires { opt.model; })
        if (cl.is("--model")) return text(opt.model);
    if constexpr (requires { opt.test; })
        if (cl.is("--test")) return text(opt.test);
    if constexpr (requires { opt.calib; })
        if (cl.is("--calib")) return text(opt.calib);
    if constexpr (requires { opt.svg; })
        if (cl.is("--svg")) return text(opt.svg);
    if constexpr (requires { opt.windows; })
        if (cl.is("--windows")) return number(opt.windows);
    if constexpr (requires { opt.calib_windows; })
        if (cl.is("--calib-windows")) return number(opt.calib_windows);
    if constexpr (requires { opt.seed; })
        if (cl.is("--seed")) return number(opt.seed);
    if constexpr (requires { opt.act_clip; })
        if (cl.is("--act-clip")) return number(opt.act_clip);
    if constexpr (requires { opt.csv; })
        if (cl.is("--csv")) return opt.csv = true;
    if constexpr (requires { opt.quiet; })
        if (cl.is("--quiet")) return opt.quiet = true;
    return false;
}

using clock_type = std::chrono::steady_clock;

/// Seconds on the steady clock since t0.
inline double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// The one-line progress report of the long steps: "<label> done/total" on stderr, rewritten in
/// place and erased when done == total; nothing when quiet. Set `label` before each step and
/// hand `callback()` to the library's progress options (it refers to this object).
struct progress_line {
    explicit progress_line(bool quiet_, int width_ = 44) : quiet(quiet_), width(width_) {}

    bool quiet;
    int width;  ///< columns of the label
    std::string label;

    void operator()(std::size_t done, std::size_t total) const {
        if (!quiet)
            std::fprintf(stderr, "\r%-*s %zu/%zu%s", width, label.c_str(), done, total,
                         done == total ? "\r\033[K" : "");
    }
    std::function<void(std::size_t, std::size_t)> callback() const {
        return [this](std::size_t done, std::size_t total) { (*this)(done, total); };
    }
};

}  // namespace example
