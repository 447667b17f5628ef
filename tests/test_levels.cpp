// SPDX-License-Identifier: MIT
// Level-set policies: the concept, the derived tables, and the Lloyd and NF2 tables checked
// against numerical integration and normal quantiles.
#include <qift/levels.hpp>
#include <qift/stats.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

using namespace qift;

// Simpson's rule on [a, b] with n (even) intervals.
template <class F>
double integrate(F f, double a, double b, int n = 2000) {
    const double h = (b - a) / n;
    double s = f(a) + f(b);
    for (int i = 1; i < n; ++i) s += f(a + i * h) * (i % 2 ? 4.0 : 2.0);
    return s * h / 3.0;
}

double phi(double x) {
    return std::exp(-0.5 * x * x) / std::sqrt(2.0 * 3.14159265358979323846);
}

// MSE of the nearest-level quantizer with scale s on N(0,1), integrated region by region.
template <class L>
double gaussian_mse(double s) {
    using T = level_traits<L>;
    double mse = 0.0;
    for (std::size_t k = 0; k < T::count; ++k) {
        const double lo = k == 0 ? -12.0 : s * T::thresholds[k - 1];
        const double hi = k + 1 == T::count ? 12.0 : s * T::thresholds[k];
        const double q = s * T::sorted[k];
        mse += integrate([&](double x) { return (x - q) * (x - q) * phi(x); }, lo, hi);
    }
    return mse;
}

// Malformed level sets that the concept must reject.
struct bad_type {
    static constexpr unsigned bits = 2;
    static constexpr std::array<double, 4> levels{-1, 0, 1, 2};
};
struct bad_too_many {
    static constexpr unsigned bits = 1;
    static constexpr std::array<float, 4> levels{-1, 0, 1, 2};
};
struct bad_duplicate {
    static constexpr unsigned bits = 2;
    static constexpr std::array<float, 4> levels{-1, 1, 1, 2};
};
struct bad_nan {
    static constexpr unsigned bits = 2;
    static constexpr std::array<float, 4> levels{-1, 0, 1, std::numeric_limits<float>::quiet_NaN()};
};
struct bad_single {
    static constexpr unsigned bits = 1;
    static constexpr std::array<float, 1> levels{1};
};
struct bad_no_table {
    static constexpr unsigned bits = 2;
};
struct bad_affine {
    static constexpr unsigned bits = 2;
    static constexpr bool zero_point = true;
    static constexpr std::array<float, 4> levels{-1, 0, 1, 2};
};
// A user-defined set: accepted like a built-in.
struct user_set {
    static constexpr unsigned bits = 2;
    static constexpr std::array<float, 4> levels{-3.0f, -0.75f, 0.75f, 3.0f};
};

static_assert(!level_set<bad_type> && !level_set<bad_too_many> && !level_set<bad_duplicate> &&
              !level_set<bad_nan> && !level_set<bad_single> && !level_set<bad_no_table> &&
              !level_set<bad_affine>);
static_assert(level_set<user_set> && level_traits<user_set>::integer_multiplier == 4 &&
              level_traits<user_set>::inner_outer_ratio == 0.25f &&
              level_set_name<user_set>() == "custom");

}  // namespace

TEST_CASE_TEMPLATE("every code decodes and re-encodes to its own level", L, levels::standard,
                   levels::asymmetric, levels::mnz, levels::pot_mnz, levels::nf2, levels::lloyd,
                   levels::pm12, levels::ternary, levels::int3, levels::int4, levels::e2m1,
                   levels::binary, user_set) {
    using T = level_traits<L>;
    for (std::size_t c = 0; c < T::count; ++c) {
        const auto code = static_cast<std::uint8_t>(c);
        CHECK(T::decode(T::encode(T::decode(code))) == T::decode(code));
        if (T::decode(code) != 0.0f) CHECK(T::encode(T::decode(code)) == code);
    }
    for (std::size_t k = 0; k + 1 < T::count; ++k) {
        CHECK(T::sorted[k] <= T::sorted[k + 1]);
        CHECK(T::thresholds[k] == doctest::Approx(0.5 * (T::sorted[k] + T::sorted[k + 1])));
    }
    CHECK(T::decode(T::encode(1e30f)) == T::max_level);
    CHECK(T::decode(T::encode(-1e30f)) == T::min_level);
    // nearest level, checked by brute force on a grid
    for (float x = -10.0f; x <= 10.0f; x += 0.013f) {
        float best = T::sorted[0];
        for (float v : T::sorted)
            if (std::fabs(x - v) < std::fabs(x - best)) best = v;
        CHECK(std::fabs(x - T::decode(T::encode(x))) == doctest::Approx(std::fabs(x - best)));
    }
    if constexpr (T::has_integer_form)
        for (std::size_t c = 0; c < T::count; ++c)
            CHECK(T::integer_levels[c] == L::levels[c] * static_cast<float>(T::integer_multiplier));
}

TEST_CASE("Lloyd levels satisfy the Lloyd-Max conditions for N(0,1) by integration") {
    using T = level_traits<levels::lloyd>;
    // Textbook values (Max 1960): ±0.4528, ±1.510, thresholds 0, ±0.9816, MSE 0.1175.
    CHECK(T::sorted[3] == doctest::Approx(1.510).epsilon(1e-3));
    CHECK(T::sorted[2] == doctest::Approx(0.4528).epsilon(1e-3));
    CHECK(T::thresholds[2] == doctest::Approx(0.9816).epsilon(1e-4));
    // Centroid condition: each level is the conditional mean of its decision region.
    for (std::size_t k = 0; k < T::count; ++k) {
        const double lo = k == 0 ? -12.0 : T::thresholds[k - 1];
        const double hi = k + 1 == T::count ? 12.0 : T::thresholds[k];
        const double mass = integrate(phi, lo, hi);
        const double mean = integrate([](double x) { return x * phi(x); }, lo, hi) / mass;
        CHECK(T::sorted[k] == doctest::Approx(mean).epsilon(1e-5));
    }
    CHECK(gaussian_mse<levels::lloyd>(1.0) == doctest::Approx(0.11748).epsilon(1e-4));
}

TEST_CASE("closed-form optimal-scale Gaussian MSE of the 2-bit sets (methods.md table)") {
    // Minimise the integrated MSE over the scale by golden-section search.
    auto best = [](auto mse) {
        double a = 0.05, b = 3.0;
        const double g = (std::sqrt(5.0) - 1.0) / 2.0;
        for (int i = 0; i < 200; ++i) {
            const double c = b - g * (b - a), d = a + g * (b - a);
            (mse(c) < mse(d) ? b : a) = (mse(c) < mse(d) ? d : c);
        }
        return std::pair{0.5 * (a + b), mse(0.5 * (a + b))};
    };
    const auto [s_mnz, e_mnz] = best(gaussian_mse<levels::mnz>);
    const auto [s_pot, e_pot] = best(gaussian_mse<levels::pot_mnz>);
    CHECK(e_mnz == doctest::Approx(0.11885).epsilon(2e-4));
    CHECK(s_mnz == doctest::Approx(0.9957).epsilon(1e-3));
    CHECK(e_pot == doctest::Approx(0.12049).epsilon(2e-4));
    CHECK(s_pot == doctest::Approx(0.3769).epsilon(1e-3));
    CHECK(best(gaussian_mse<levels::standard>).second == doctest::Approx(0.14943).epsilon(2e-4));
    CHECK(best(gaussian_mse<levels::pm12>).second == doctest::Approx(0.15812).epsilon(2e-4));
    CHECK(best(gaussian_mse<levels::ternary>).second == doctest::Approx(0.19017).epsilon(2e-4));
    CHECK(best(gaussian_mse<levels::lloyd>).second == doctest::Approx(0.11748).epsilon(2e-4));
}

TEST_CASE("NF2 levels are midpoints of adjacent N(0,1) quantiles at linspace(1-o, o, 5)") {
    const double o = 0.9677083;
    std::vector<double> q;
    for (int i = 0; i < 5; ++i) q.push_back(normal_quantile(1.0 - o + i * (2.0 * o - 1.0) / 4.0));
    std::vector<double> mid;
    for (std::size_t i = 0; i < 4; ++i) mid.push_back(0.5 * (q[i] + q[i + 1]));
    for (std::size_t i = 0; i < 4; ++i)
        CHECK(levels::nf2::levels[i] == doctest::Approx(mid[i] / mid[3]).epsilon(1e-6));
    CHECK(level_traits<levels::nf2>::inner_outer_ratio == doctest::Approx(0.2526).epsilon(1e-3));
}
