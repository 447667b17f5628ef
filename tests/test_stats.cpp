// SPDX-License-Identifier: MIT
// Statistics: the normal quantile against known values, exact moments of a small sample, and
// kurtosis / Q-Q error on Gaussian, Laplace and Student-t samples.
#include <qift/stats.hpp>

#include <doctest/doctest.h>

#include <limits>
#include <random>

#include "test_support.hpp"

using namespace qift;

TEST_CASE("normal quantile and CDF") {
    CHECK(normal_quantile(0.975) == doctest::Approx(1.959963984540054).epsilon(1e-12));
    CHECK(normal_quantile(0.9) == doctest::Approx(1.2815515655446004).epsilon(1e-12));
    CHECK(normal_quantile(0.5) == doctest::Approx(0.0));
    CHECK(normal_quantile(1e-10) == doctest::Approx(-6.361340902404056).epsilon(1e-10));
    for (double p = 1e-6; p < 1.0; p += 0.0137)
        CHECK(normal_cdf(normal_quantile(p)) == doctest::Approx(p).epsilon(1e-12));
    CHECK(std::isnan(normal_quantile(1.5)));
    CHECK(normal_quantile(0.0) == -std::numeric_limits<double>::infinity());
}

TEST_CASE("exact moments of a small sample") {
    const std::vector<float> x{1, 2, 3, 4};
    const auto s = describe(x);
    CHECK(s.count == 4);
    CHECK(s.mean == doctest::Approx(2.5));
    CHECK(s.stddev == doctest::Approx(std::sqrt(1.25)));
    CHECK(s.skewness == doctest::Approx(0.0));
    CHECK(s.excess_kurtosis == doctest::Approx(2.5625 / 1.5625 - 3.0));
    const std::vector<float> constant(10, 3.0f);
    const auto c = describe(constant);
    CHECK(c.stddev == 0.0);
    CHECK(c.excess_kurtosis == 0.0);
    CHECK(c.qq_error == 0.0);
}

TEST_CASE("Gaussian rows look Gaussian, Laplace and Student-t rows do not") {
    const auto g = test::gaussian_matrix(8, 50000, 21, 3.0f);
    const auto sg = matrix_stats(g);
    CHECK(sg.mean == doctest::Approx(0.0).epsilon(0.02));
    CHECK(sg.stddev == doctest::Approx(3.0).epsilon(0.01));
    CHECK(std::fabs(sg.excess_kurtosis) < 0.05);
    CHECK(sg.qq_error < 0.01);

    std::mt19937 gen(5);
    std::exponential_distribution<float> ex(1.0f);
    std::student_t_distribution<float> st(4.0f);
    matrix<float> lap(4, 50000), stu(4, 50000);
    for (auto& x : lap.flat()) x = (gen() & 1 ? 1.0f : -1.0f) * ex(gen);
    for (auto& x : stu.flat()) x = st(gen);
    const auto sl = matrix_stats(lap);
    CHECK(sl.excess_kurtosis == doctest::Approx(3.0).epsilon(0.1));
    CHECK(sl.qq_error > 10 * sg.qq_error);
    const auto rows = row_stats(stu);
    REQUIRE(rows.size() == 4);
    CHECK(mean_of(rows, &distribution_stats::excess_kurtosis) > 1.0);
    CHECK(mean_of(rows, &distribution_stats::qq_error) > 10 * sg.qq_error);
}

TEST_CASE("statistics reject empty and non-finite input") {
    CHECK_THROWS_AS(describe(std::vector<float>{}), error);
    CHECK_THROWS_AS(row_stats(matrix<float>()), error);
    const std::vector<float> bad{1.0f, std::numeric_limits<float>::infinity()};
    CHECK_THROWS_WITH_AS(describe(bad), doctest::Contains("non-finite"), error);
}
