// SPDX-License-Identifier: MIT
// Scale search and RTN quantization: Gaussian optima, the ratio sweep, a brute-force search
// written here, the SIMD error kernel against its scalar reference, groups and bad input.
#include <qift/levels.hpp>
#include <qift/scale.hpp>

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "test_support.hpp"

using namespace qift;

namespace {

scale_options mse_search() {
    scale_options o;
    o.exponent = 2.0f;
    return o;
}

template <int... N>
std::pair<int, double> ratio_sweep_minimum(matrix_view<const float> w,
                                           std::integer_sequence<int, N...>) {
    std::pair<int, double> best{0, 1e9};
    (
        (void)[&] {
            const double e = relative_mse(w, fake_quantize<levels::ratio<N>>(w, mse_search()));
            if (e < best.second) best = {N, e};
        }(),
        ...);
    return best;
}

template <int Offset, int... N>
auto shifted(std::integer_sequence<int, N...>) {
    return std::integer_sequence<int, (N + Offset)...>{};
}

}  // namespace

TEST_CASE("searched-scale MSE on a large Gaussian sample matches the closed-form optima") {
    const auto w = test::gaussian_matrix(64, 16384, 7);  // 1M values, unit variance
    const auto mse = [&](auto tag) {
        using L = decltype(tag);
        return relative_mse(w, fake_quantize<L>(w, mse_search()));
    };
    // methods.md: mnz 0.11885, pot_mnz 0.12049, standard 0.14943, pm12 0.15812 (within 1%)
    CHECK(mse(levels::mnz{}) == doctest::Approx(0.11885).epsilon(0.01));
    CHECK(mse(levels::pot_mnz{}) == doctest::Approx(0.12049).epsilon(0.01));
    CHECK(mse(levels::standard{}) == doctest::Approx(0.14943).epsilon(0.01));
    CHECK(mse(levels::pm12{}) == doctest::Approx(0.15812).epsilon(0.01));
    CHECK(mse(levels::lloyd{}) == doctest::Approx(0.11748).epsilon(0.01));
}

TEST_CASE("the {±r, ±1} ratio sweep has its minimum inside 0.25-0.33") {
    const auto w = test::gaussian_matrix(32, 8192, 11);
    const auto [best, err] =
        ratio_sweep_minimum(w, shifted<10>(std::make_integer_sequence<int, 51>{}));
    MESSAGE("ratio sweep minimum at r = " << best / 100.0 << ", relative MSE " << err);
    CHECK(best >= 25);
    CHECK(best <= 33);
}

TEST_CASE("a max-based scale makes MNZ no better than asymmetric W2, searching fixes it") {
    const auto w = test::gaussian_matrix(64, 4096, 3);
    scale_options max_rule;
    max_rule.rule = scale_rule::max;
    const double mnz_max = relative_mse(w, fake_quantize<levels::mnz>(w, max_rule));
    const double asym_max = relative_mse(w, fake_quantize<levels::asymmetric>(w, max_rule));
    const double mnz_search = relative_mse(w, fake_quantize<levels::mnz>(w, mse_search()));
    MESSAGE("max-scale mnz " << mnz_max << ", asymmetric " << asym_max << "; searched mnz "
                             << mnz_search);
    CHECK(mnz_max > 0.9 * asym_max);
    CHECK(mnz_search < 0.6 * mnz_max);
}

TEST_CASE_TEMPLATE("the grid search equals a brute-force search written here", L, levels::mnz,
                   levels::pot_mnz, levels::standard, levels::asymmetric, levels::nf2,
                   levels::int4) {
    using T = level_traits<L>;
    const auto w = test::gaussian_matrix(6, 515, 5);
    for (float exponent : {2.0f, 2.4f}) {
        scale_options opt;
        opt.exponent = exponent;
        for (std::size_t r = 0; r < w.rows(); ++r) {
            const auto row = w.row(r);
            float lo = 0, hi = 0;
            for (float x : row) lo = std::min(lo, x), hi = std::max(hi, x);
            double best_err = std::numeric_limits<double>::infinity();
            float best_scale = 0, best_zero = 0;
            for (int i = 0; i < 80; ++i) {
                const float p = 1.0f - static_cast<float>(i) * 0.01f;
                float s, z = 0;
                if constexpr (T::has_zero_point) {
                    s = (p * hi - p * lo) / static_cast<float>(T::count - 1);
                    z = std::round(-p * lo / s);
                } else {
                    s = p * std::max(-lo, hi) / T::clip_abs;
                }
                double err = 0;
                for (float x : row) {
                    float u = x / s + z, q = T::sorted[0];
                    for (float v : T::sorted)
                        if (std::fabs(u - v) < std::fabs(u - q)) q = v;
                    err += std::pow(std::fabs(double(x) - double(s) * (q - z)), double(exponent));
                }
                if (err < best_err * (1 - 1e-6)) best_err = err, best_scale = s, best_zero = z;
            }
            const channel_params p = find_params<L>(row, opt);
            CHECK(p.scale == doctest::Approx(best_scale).epsilon(1e-5));
            CHECK(p.zero == best_zero);
        }
    }
}

TEST_CASE_TEMPLATE("the SIMD error kernel matches its scalar reference on ragged sizes", L,
                   levels::mnz, levels::lloyd, levels::asymmetric, levels::e2m1) {
    for (std::size_t n : {1u, 7u, 15u, 16u, 17u, 63u, 64u, 65u, 1000u}) {
        const auto w = test::gaussian_matrix(1, n, static_cast<std::uint32_t>(n));
        for (float e : {2.0f, 2.4f}) {
            const double ref = detail::quantization_error_scalar<L>(w.row(0), 0.37f, 1.0f, e);
            const double simd = detail::quantization_error_kernel{}(xsimd::default_arch{}, w.row(0),
                                                                    0.37f, 1.0f, e, L{});
            CHECK(simd == doctest::Approx(ref).epsilon(1e-5));
        }
    }
}

TEST_CASE("pow_nonnegative: d^e within 3e-6 relative of std::pow, exact for e = 2, 0 at d = 0") {
    using batch = xsimd::batch<float>;
    constexpr std::size_t width = batch::size;
    std::vector<float> d{0.0f, 1.0f, 0.5f, 2.0f, 0.70710677f, 1.4142135f, 3.0e-38f, 1.0e30f};
    for (int i = -3000; i <= 3000; ++i)
        d.push_back(std::pow(10.0f, static_cast<float>(i) / 100.0f));
    for (int i = 0; i < 1000; ++i) d.push_back(static_cast<float>(i) / 997.0f);
    while (d.size() % width) d.push_back(1.0f);
    for (float e : {2.4f, 2.0f, 0.4f, 1.0f, 0.5f, 3.3f, 7.25f, 1.5f}) {
        CAPTURE(e);
        const detail::split_exponent se(e);
        double worst = 0.0;
        for (std::size_t i = 0; i < d.size(); i += width) {
            std::array<float, width> got{};
            detail::pow_nonnegative(batch::load_unaligned(d.data() + i), se)
                .store_unaligned(got.data());
            for (std::size_t k = 0; k < width; ++k) {
                const double x = d[i + k], ref = std::pow(x, double(e));
                if (x == 0.0) {
                    CHECK(got[k] == 0.0f);
                } else if (e == 2.0f) {
                    CHECK(got[k] == d[i + k] * d[i + k]);
                } else if (ref > 1e-36 && ref < 1e36) {
                    worst = std::max(worst, std::abs(double(got[k]) / ref - 1.0));
                }
            }
        }
        MESSAGE("e = " << e << ": worst relative error " << worst);
        CHECK(worst < 3e-6);  // d in [1e-30, 1e30]; ≤ 1.5e-6 at weight scales (below)
        double near = 0.0;
        for (float x = 1e-4f; x < 10.0f; x *= 1.01f) {
            std::array<float, width> got{};
            detail::pow_nonnegative(batch(x), se).store_unaligned(got.data());
            near = std::max(near, std::abs(double(got[0]) / std::pow(double(x), double(e)) - 1.0));
        }
        CHECK(near < 1e-6);
    }
}

TEST_CASE_TEMPLATE("least-squares refinement reaches a fixed point and never hurts the MSE", L,
                   levels::mnz, levels::pot_mnz, levels::nf2, levels::lloyd, levels::standard) {
    const auto w = test::gaussian_matrix(16, 1024, 9);
    scale_options opt = mse_search();
    const double plain = relative_mse(w, fake_quantize<L>(w, opt));
    opt.refine = true;
    const auto q = quantize<L>(w, opt);
    CHECK(relative_mse(w, q.dequantize()) <= plain * (1 + 1e-9));
    // fixed point: with these codes, the least-squares scale is the stored scale
    for (std::size_t r = 0; r < w.rows(); ++r) {
        double num = 0, den = 0;
        for (std::size_t c = 0; c < w.cols(); ++c) {
            const double l = level_traits<L>::decode(q.codes()(r, c));
            num += w(r, c) * l, den += l * l;
        }
        CHECK(q.scales(r, 0) == doctest::Approx(num / den).epsilon(1e-5));
    }
}

TEST_CASE("groups: each group is quantized as if it were its own row") {
    const auto w = test::gaussian_matrix(5, 384, 2);
    scale_options opt;
    opt.group_size = 128;
    const auto q = quantize<levels::mnz>(w, opt);
    REQUIRE(q.groups() == 3);
    CHECK(q.scales().rows() == 5);
    CHECK(q.scales().cols() == 3);
    for (std::size_t r = 0; r < 5; ++r)
        for (std::size_t g = 0; g < 3; ++g) {
            const auto p = find_params<levels::mnz>(w.row(r).subspan(g * 128, 128), opt);
            CHECK(q.scales(r, g) == p.scale);
        }
    opt.group_size = 0;
    CHECK(relative_mse(w, quantize<levels::mnz>(w, opt).dequantize()) >
          relative_mse(w, q.dequantize()));
}

TEST_CASE("asymmetric W2: integer zero-points in range, range always contains zero") {
    auto w = test::gaussian_matrix(8, 256, 4);
    for (std::size_t c = 0; c < 256; ++c) w(0, c) = 1.0f + std::fabs(w(0, c));  // all positive
    const auto q = quantize<levels::asymmetric>(w);
    REQUIRE(q.zeros().rows() == 8);
    for (std::size_t r = 0; r < 8; ++r) {
        const float z = q.zeros()(r, 0);
        CHECK(z == std::round(z));
        CHECK(z >= 0.0f);
        CHECK(z <= 3.0f);
    }
    CHECK(q.zeros()(0, 0) == 0.0f);
}

TEST_CASE_TEMPLATE("an all-zero row dequantizes to exact zeros, with no NaN", L, levels::mnz,
                   levels::pot_mnz, levels::standard, levels::asymmetric, levels::nf2) {
    auto w = test::gaussian_matrix(3, 64, 1);
    for (auto& x : w.row(1)) x = 0.0f;
    for (bool refine : {false, true})
        for (auto rule : {scale_rule::max, scale_rule::search}) {
            scale_options opt;
            opt.rule = rule;
            opt.refine = refine;
            const auto d = fake_quantize<L>(w, opt);
            for (std::size_t c = 0; c < 64; ++c) CHECK(d(1, c) == 0.0f);
            for (float x : d.flat()) CHECK(std::isfinite(x));
        }
}

TEST_CASE("bad input raises qift::error naming the argument and the values") {
    matrix<float> w(2, 6, 1.0f);
    scale_options opt;
    opt.group_size = 4;
    CHECK_THROWS_WITH_AS(quantize<levels::mnz>(w, opt),
                         "quantize: group_size 4 does not divide the row length 6", error);
    CHECK_THROWS_AS(quantize<levels::mnz>(matrix<float>()), error);
    w(1, 3) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(quantize<levels::mnz>(w), doctest::Contains("w(1, 3) is nan"), error);
    w(1, 3) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH_AS(quantize<levels::mnz>(w), doctest::Contains("w(1, 3) is inf"), error);
    // Beyond 2^126 the scale arithmetic could overflow (found by fuzz_levels: an affine range
    // of [-4.2e37, 3.4e38] dequantized its top code to inf); 2^126 itself is accepted and every
    // value stays finite.
    w(1, 3) = 3.4e38f;
    CHECK_THROWS_WITH_AS(quantize<levels::asymmetric>(w), doctest::Contains("|w| <= 2^126"), error);
    w(1, 3) = max_weight_magnitude;
    w(0, 0) = -max_weight_magnitude;
    for (const auto& d :
         {quantize<levels::asymmetric>(w).dequantize(), quantize<levels::mnz>(w).dequantize(),
          quantize<levels::int4>(w).dequantize()})
        for (float v : d.flat()) CHECK(std::isfinite(v));
    // A range of a few denormals: the affine scale underflows to 0 (found by fuzz_levels: it
    // gave a NaN zero-point); the row dequantizes to zeros.
    matrix<float> tiny(1, 3, 0.0f);
    tiny(0, 1) = 1.4e-45f;
    const auto dt = quantize<levels::asymmetric>(tiny).dequantize();
    for (float v : dt.flat()) CHECK(v == 0.0f);
    w(0, 0) = 1.0f;
    CHECK_THROWS_AS(find_params<levels::mnz>(std::span<const float>{}), error);
    scale_options bad_grid;
    bad_grid.grid = 200;
    CHECK_THROWS_WITH_AS(find_params<levels::mnz>(w.row(0), bad_grid),
                         doctest::Contains("grid=200"), error);
    CHECK_THROWS_AS(relative_mse(matrix<float>(2, 3), matrix<float>(3, 2)), error);
    CHECK_THROWS_AS(quantized_matrix<levels::mnz>(matrix<std::uint8_t>(2, 4, 7),
                                                  matrix<float>(2, 1), matrix<float>(), 4),
                    error);
}
