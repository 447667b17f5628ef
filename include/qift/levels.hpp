// SPDX-License-Identifier: MIT
// Level-set policies: a fixed code -> level table chosen at compile time, the concept that
// checks one, the tables derived from it (sorted levels, thresholds, integer form), and the
// built-in sets of the Qift paper (arXiv 2606.02823) and its baselines.
#pragma once

#include "detail/target.hpp"

#include <array>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string_view>
#include <type_traits>

namespace qift::inline QIFT_ISA {

// ---------------------------------------------------------------------------------------
// The concept

namespace detail {

constexpr bool is_finite(float x) noexcept {
    return x == x && x <= std::numeric_limits<float>::max() &&
           x >= -std::numeric_limits<float>::max();
}

template <class L>
constexpr bool levels_are_finite() {
    for (float v : L::levels)
        if (!is_finite(v)) return false;
    return true;
}

template <class L>
constexpr bool levels_not_all_equal() {
    for (float v : L::levels)
        if (v != L::levels[0]) return true;
    return false;
}

// Distinct except for one allowed duplicate value pair like E2M1's +0/-0: every value may
// appear at most twice, and only 0 may appear twice.
template <class L>
constexpr bool levels_are_distinct() {
    for (std::size_t i = 0; i < L::levels.size(); ++i)
        for (std::size_t j = i + 1; j < L::levels.size(); ++j)
            if (L::levels[i] == L::levels[j] && L::levels[i] != 0.0f) return false;
    return true;
}

template <class L>
constexpr bool declares_zero_point() {
    if constexpr (requires { L::zero_point; })
        return static_cast<bool>(L::zero_point);
    else
        return false;
}

template <class L>
constexpr bool affine_levels_are_0_to_n() {
    if constexpr (declares_zero_point<L>()) {
        for (std::size_t i = 0; i < L::levels.size(); ++i)
            if (L::levels[i] != static_cast<float>(i)) return false;
    }
    return true;
}

}  // namespace detail

/// The shape a level-set policy must have: `static constexpr unsigned bits` (1..8) and
/// `static constexpr std::array<float, N> levels` with 2 <= N <= 2^bits, indexed by code.
template <class L>
concept level_set_shape = requires {
    { L::bits } -> std::convertible_to<unsigned>;
    typename std::integral_constant<unsigned, L::bits>;  // bits is a constant expression
    typename std::integral_constant<std::size_t, L::levels.size()>;
    requires std::same_as < std::remove_cvref_t<decltype(L::levels[0])>,
    float > ;
};

/// A level-set policy: a fixed table `levels[code]`, code in [0, levels.size()), of finite,
/// distinct (up to a duplicated zero) floats stored in `bits` bits. A quantized weight is
/// `scale * levels[code]`, or `scale * (levels[code] - zero)` for an affine set that declares
/// `static constexpr bool zero_point = true` (its levels must then be 0, 1, ..., N-1).
/// Optional: `static constexpr std::string_view name`.
template <class L>
concept level_set = level_set_shape<L> &&(L::bits >= 1u && L::bits <= 8u) &&
                    (L::levels.size() >= 2 && L::levels.size() <= (std::size_t{1} << L::bits)) &&
                    detail::levels_are_finite<L>() && detail::levels_not_all_equal<L>() &&
                    detail::levels_are_distinct<L>() && detail::affine_levels_are_0_to_n<L>();

/// A level set quantized with a per-channel zero-point (min-max affine, as GPTQ's asymmetric
/// integer quantizer).
template <class L>
concept affine_level_set = level_set<L> && detail::declares_zero_point<L>();

/// A level set without zero-point: q = scale * levels[code].
template <class L>
concept symmetric_scale_level_set = level_set<L> && !detail::declares_zero_point<L>();

// ---------------------------------------------------------------------------------------
// Derived tables

namespace detail {

template <class L>
constexpr auto sorted_codes() {
    constexpr std::size_t n = L::levels.size();
    std::array<std::uint8_t, n> order{};
    for (std::size_t i = 0; i < n; ++i) order[i] = static_cast<std::uint8_t>(i);
    // insertion sort: constexpr, stable, and n <= 256
    for (std::size_t i = 1; i < n; ++i)
        for (std::size_t j = i; j > 0 && L::levels[order[j]] < L::levels[order[j - 1]]; --j) {
            const auto t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    return order;
}

constexpr bool is_integer(double x) noexcept {
    return x == static_cast<double>(static_cast<long long>(x));
}

// Smallest power-of-two multiplier m <= 2^8 such that every m * level is an integer of at
// most 16 bits; 0 if there is none.
template <class L>
constexpr int integer_multiplier() {
    for (int m = 1; m <= 256; m *= 2) {
        bool ok = true;
        for (float v : L::levels) {
            const double x = static_cast<double>(v) * m;
            ok = ok && is_integer(x) && x >= -32768.0 && x <= 32767.0;
        }
        if (ok) return m;
    }
    return 0;
}

}  // namespace detail

/// Everything derived from a level set's table at compile time. All members are constexpr.
template <level_set L>
struct level_traits {
    static constexpr unsigned bits = L::bits;
    static constexpr std::size_t count = L::levels.size();
    static constexpr bool has_zero_point = detail::declares_zero_point<L>();

    /// Codes ordered by ascending level; `sorted[k] == levels[sorted_code[k]]`.
    static constexpr std::array<std::uint8_t, count> sorted_code = detail::sorted_codes<L>();
    static constexpr std::array<float, count> sorted = [] {
        std::array<float, count> s{};
        for (std::size_t k = 0; k < count; ++k) s[k] = L::levels[sorted_code[k]];
        return s;
    }();
    /// Decision thresholds of the nearest-level quantizer: midpoints of adjacent sorted levels.
    static constexpr std::array<float, count - 1> thresholds = [] {
        std::array<float, count - 1> t{};
        for (std::size_t k = 0; k + 1 < count; ++k) t[k] = 0.5f * (sorted[k] + sorted[k + 1]);
        return t;
    }();

    static constexpr float min_level = sorted.front();
    static constexpr float max_level = sorted.back();
    static constexpr float max_abs = max_level > -min_level ? max_level : -min_level;
    /// The largest magnitude m such that [-m, m] lies inside [min_level, max_level]: the
    /// max-based scale maps max|w| to it, so nothing clips (for {-2,-1,0,1} that is 1, as
    /// QuaRot/GPTQ's symmetric INT2 does).
    static constexpr float clip_abs = max_level < -min_level ? max_level : -min_level;
    static constexpr bool has_zero = [] {
        for (float v : L::levels)
            if (v == 0.0f) return true;
        return false;
    }();
    /// Symmetric about zero: the set equals its negation.
    static constexpr bool symmetric = [] {
        for (std::size_t k = 0; k < count; ++k)
            if (sorted[k] != -sorted[count - 1 - k]) return false;
        return true;
    }();
    /// Smallest non-zero magnitude over the largest magnitude (1/3 for MNZ, 1/4 for PoT-MNZ).
    static constexpr float inner_outer_ratio = [] {
        float inner = max_abs;
        for (float v : L::levels) {
            const float a = v < 0 ? -v : v;
            if (a != 0.0f && a < inner) inner = a;
        }
        return inner / max_abs;
    }();

    /// Power-of-two multiplier that makes every level an integer (MNZ: 2, giving {±1, ±3}),
    /// or 0 when no multiplier up to 256 does (NF2, Lloyd).
    static constexpr int integer_multiplier = detail::integer_multiplier<L>();
    static constexpr bool has_integer_form = integer_multiplier != 0;
    /// `levels[c] * integer_multiplier`, valid when has_integer_form.
    static constexpr std::array<std::int16_t, count> integer_levels = [] {
        std::array<std::int16_t, count> r{};
        if constexpr (integer_multiplier != 0)
            for (std::size_t c = 0; c < count; ++c)
                r[c] = static_cast<std::int16_t>(L::levels[c] * integer_multiplier);
        return r;
    }();
    /// Every integer level is ±2^k: a product with an integer activation is a sign flip and a
    /// left shift (PoT-MNZ {±1, ±4}, binary, {±1, ±2}).
    static constexpr bool sign_shift_decodable = [] {
        if (!has_integer_form) return false;
        for (auto v : integer_levels) {
            const unsigned a = static_cast<unsigned>(v < 0 ? -v : v);
            if (!std::has_single_bit(a)) return false;
        }
        return true;
    }();
    /// log2 |integer_levels[c]| for sign-shift-decodable sets (0 otherwise).
    static constexpr std::array<std::uint8_t, count> shift = [] {
        std::array<std::uint8_t, count> s{};
        if (sign_shift_decodable)
            for (std::size_t c = 0; c < count; ++c) {
                const unsigned a = static_cast<unsigned>(integer_levels[c] < 0 ? -integer_levels[c]
                                                                               : integer_levels[c]);
                s[c] = static_cast<std::uint8_t>(std::countr_zero(a));
            }
        return s;
    }();

    /// Level of a code. Precondition: code < count.
    static constexpr float decode(std::uint8_t code) noexcept { return L::levels[code]; }

    /// Code of the level nearest to x (x in level units, i.e. already divided by the scale).
    /// A value exactly on a threshold goes to the lower level; values beyond the ends clamp.
    static constexpr std::uint8_t encode(float x) noexcept {
        std::size_t k = 0;
        for (float t : thresholds) k += static_cast<std::size_t>(x > t);
        return sorted_code[k];
    }
};

/// Power-of-two level sets: every product with an integer is a sign and a shift.
template <class L>
concept power_of_two_level_set = level_set<L> && level_traits<L>::sign_shift_decodable;

/// Level sets whose levels are integers after a fixed power-of-two rescale.
template <class L>
concept integer_level_set = level_set<L> && level_traits<L>::has_integer_form;

/// The set's `name` member, or "custom".
template <level_set L>
constexpr std::string_view level_set_name() {
    if constexpr (requires { std::string_view(L::name); })
        return L::name;
    else
        return "custom";
}

// ---------------------------------------------------------------------------------------
// Built-in level sets

namespace levels {

/// Signed two's-complement integer grid {-2^(B-1), ..., 2^(B-1)-1}, code c -> c - 2^(B-1).
template <unsigned B>
struct signed_int {
    static constexpr unsigned bits = B;
    static constexpr std::array<float, (1u << B)> levels = [] {
        std::array<float, (1u << B)> l{};
        for (unsigned c = 0; c < (1u << B); ++c)
            l[c] = static_cast<float>(static_cast<int>(c) - (1 << (B - 1)));
        return l;
    }();
    static constexpr std::string_view name = B == 2   ? "standard"
                                             : B == 3 ? "int3"
                                             : B == 4 ? "int4"
                                                      : "signed_int";
};

/// Min-max affine unsigned grid with a per-channel zero-point: q = s * (c - z), c in [0, 2^B).
template <unsigned B>
struct asymmetric_int {
    static constexpr unsigned bits = B;
    static constexpr bool zero_point = true;
    static constexpr std::array<float, (1u << B)> levels = [] {
        std::array<float, (1u << B)> l{};
        for (unsigned c = 0; c < (1u << B); ++c) l[c] = static_cast<float>(c);
        return l;
    }();
    static constexpr std::string_view name = B == 2 ? "asymmetric" : "asymmetric_int";
};

/// Standard symmetric INT2 {-2,-1,0,+1} (QuaRot/GPTQ); with the max-based scale code -2 is
/// never used, so it is in effect ternary. The collapsing baseline.
using standard = signed_int<2>;
/// Min-max affine INT2 with a per-channel zero-point: the stronger conventional baseline.
using asymmetric = asymmetric_int<2>;
/// Signed INT3 and INT4 grids (W3, W4).
using int3 = signed_int<3>;
using int4 = signed_int<4>;

/// Mirror no-zero {±0.5, ±1.5}: the main Qift set; integer form {±1, ±3}.
struct mnz {
    static constexpr unsigned bits = 2;
    static constexpr std::array<float, 4> levels{-1.5f, -0.5f, 0.5f, 1.5f};
    static constexpr std::string_view name = "mnz";
};

/// Power-of-two mirror no-zero {±1, ±4}: w*a = ±(a << 2m), sign-and-shift decodable.
struct pot_mnz {
    static constexpr unsigned bits = 2;
    static constexpr std::array<float, 4> levels{-4.0f, -1.0f, 1.0f, 4.0f};
    static constexpr std::string_view name = "pot_mnz";
};

/// NormalFloat-style 2-bit set: midpoints of adjacent N(0,1) quantiles at
/// linspace(1-o, o, 5), o = 0.9677083, normalised to max 1: {±0.2525685, ±1}.
struct nf2 {
    static constexpr unsigned bits = 2;
    static constexpr std::array<float, 4> levels{-1.0f, -0.25256847f, 0.25256847f, 1.0f};
    static constexpr std::string_view name = "nf2";
};

/// Lloyd-Max optimum for N(0,1) with 4 levels: {±0.4527800, ±1.5104176}, thresholds 0 and
/// ±0.9815988, MSE 0.11748 (verified by numerical integration in the tests).
struct lloyd {
    static constexpr unsigned bits = 2;
    static constexpr std::array<float, 4> levels{-1.5104176f, -0.45278003f, 0.45278003f,
                                                 1.5104176f};
    static constexpr std::string_view name = "lloyd";
};

/// {±1, ±2}: the no-zero set that does not work (inner/outer ratio 1/2 is too large).
struct pm12 {
    static constexpr unsigned bits = 2;
    static constexpr std::array<float, 4> levels{-2.0f, -1.0f, 1.0f, 2.0f};
    static constexpr std::string_view name = "pm12";
};

/// Ternary {-1, 0, +1} in two bits (code 3 unused).
struct ternary {
    static constexpr unsigned bits = 2;
    static constexpr std::array<float, 3> levels{-1.0f, 0.0f, 1.0f};
    static constexpr std::string_view name = "ternary";
};

/// Binary {±1} (one-bit weights).
struct binary {
    static constexpr unsigned bits = 1;
    static constexpr std::array<float, 2> levels{-1.0f, 1.0f};
    static constexpr std::string_view name = "binary";
};

/// E2M1, the 4-bit float element of MXFP4 (OCP MX v1.0): code = sign << 3 | magnitude index,
/// magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}; code 8 is -0.
struct e2m1 {
    static constexpr unsigned bits = 4;
    static constexpr std::array<float, 16> levels{0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,
                                                  4.0f,  6.0f,  -0.0f, -0.5f, -1.0f, -1.5f,
                                                  -2.0f, -3.0f, -4.0f, -6.0f};
    static constexpr std::string_view name = "e2m1";
};

/// {±r, ±1} with r = N/100: the family swept by the level study.
template <int N>
requires(N > 0 && N < 100) struct ratio {
    static constexpr unsigned bits = 2;
    static constexpr std::array<float, 4> levels{-1.0f, -static_cast<float>(N) / 100.0f,
                                                 static_cast<float>(N) / 100.0f, 1.0f};
    static constexpr std::string_view name = "ratio";
};

}  // namespace levels

// ---------------------------------------------------------------------------------------
// Proofs of the built-in tables

static_assert(level_set<levels::standard> && level_set<levels::asymmetric> &&
              level_set<levels::mnz> && level_set<levels::pot_mnz> && level_set<levels::nf2> &&
              level_set<levels::lloyd> && level_set<levels::pm12> && level_set<levels::ternary> &&
              level_set<levels::int3> && level_set<levels::int4> && level_set<levels::e2m1> &&
              level_set<levels::binary>);
static_assert(level_traits<levels::standard>::clip_abs == 1.0f &&
              level_traits<levels::standard>::has_zero);
static_assert(level_traits<levels::mnz>::integer_multiplier == 2 &&
              level_traits<levels::mnz>::integer_levels ==
                  std::array<std::int16_t, 4>{-3, -1, 1, 3});
static_assert(level_traits<levels::mnz>::inner_outer_ratio == 1.0f / 3.0f &&
              !level_traits<levels::mnz>::has_zero && level_traits<levels::mnz>::symmetric);
static_assert(power_of_two_level_set<levels::pot_mnz> && !power_of_two_level_set<levels::mnz> &&
              !power_of_two_level_set<levels::standard> && power_of_two_level_set<levels::binary>);
static_assert(level_traits<levels::pot_mnz>::shift == std::array<std::uint8_t, 4>{2, 0, 0, 2} &&
              level_traits<levels::pot_mnz>::inner_outer_ratio == 0.25f);
static_assert(!integer_level_set<levels::nf2> && !integer_level_set<levels::lloyd>);
static_assert(level_traits<levels::e2m1>::integer_multiplier == 2 &&
              level_traits<levels::e2m1>::max_abs == 6.0f);
static_assert(level_traits<levels::lloyd>::thresholds[1] == 0.0f);
static_assert(level_traits<levels::mnz>::encode(0.9f) == 2 &&
              level_traits<levels::mnz>::encode(1.1f) == 3 &&
              level_traits<levels::mnz>::encode(-100.0f) == 0);
static_assert(level_traits<levels::int4>::min_level == -8.0f &&
              level_traits<levels::int4>::clip_abs == 7.0f);
static_assert(affine_level_set<levels::asymmetric> && !affine_level_set<levels::standard>);

}  // namespace qift
