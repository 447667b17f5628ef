// SPDX-License-Identifier: MIT
// Tests of torq.hpp: every method's Q is orthogonal and applied consistently, the inter stage
// equalizes the second moments with at most d − 1 Givens rotations whose angles match a
// brute-force scan, rotations folded into weights leave a layer unchanged, TORQ never loses to
// no rotation on its fitting data, PeRQ's permutation balances the blocks, and the errors.
#include <qift/torq.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "test_support.hpp"

using namespace qift;

namespace {

// Student-t with 3 degrees of freedom, z / √(χ²₃/3), from Gaussians only. `loud` channels are
// scaled by `gain` (outlier channels).
matrix<float> student_t3(std::size_t rows, std::size_t d, std::uint32_t seed,
                         const std::vector<std::size_t>& loud = {}, float gain = 1.0f) {
    std::mt19937 gen(seed);
    std::normal_distribution<double> nd(0.0, 1.0);
    matrix<float> m(rows, d);
    for (auto& v : m.flat()) {
        const double z = nd(gen), a = nd(gen), b = nd(gen), c = nd(gen);
        v = static_cast<float>(z / std::sqrt((a * a + b * b + c * c) / 3.0));
    }
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t j : loud) m(r, j) *= gain;
    return m;
}

// Small, quick intra-stage settings for the tests.
torq_options quick(std::uint64_t seed) {
    torq_options opt;
    opt.seed = seed;
    opt.iterations = 16;
    opt.max_blocks = 1024;
    return opt;
}

matrix<float> rotated(const mx_rotation& q, matrix_view<const float> x) {
    matrix<float> y = matrix<float>::from(x);
    q.rotate_rows(y);
    return y;
}

// max |(AᵀA − I)_ij| in double.
double orthogonality_error(const matrix<float>& q) {
    const std::size_t n = q.rows();
    double worst = 0.0;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = i; j < n; ++j) {
            double s = 0.0;
            for (std::size_t k = 0; k < n; ++k) s += double(q(k, i)) * q(k, j);
            worst = std::max(worst, std::fabs(s - (i == j ? 1.0 : 0.0)));
        }
    return worst;
}

// Σ = XᵀX / rows in double.
std::vector<double> second_moment(const matrix<float>& x) {
    const std::size_t d = x.cols();
    std::vector<double> s(d * d, 0.0);
    for (std::size_t t = 0; t < x.rows(); ++t)
        for (std::size_t i = 0; i < d; ++i)
            for (std::size_t j = 0; j < d; ++j) s[i * d + j] += double(x(t, i)) * x(t, j);
    for (double& v : s) v /= static_cast<double>(x.rows());
    return s;
}

}  // namespace

TEST_CASE("torq: method names round-trip") {
    for (mx_rotation_method m : all_mx_rotation_methods) {
        CHECK(parse_mx_rotation(to_string(m)) == m);
    }
    CHECK(to_string(mx_rotation_method::block_hadamard) == "block-hadamard");
    CHECK(to_string(mx_rotation_method::torq_inter) == "torq-inter");
    CHECK(parse_mx_rotation("block_hadamard") == mx_rotation_method::block_hadamard);
    CHECK(parse_mx_rotation("torq_intra") == mx_rotation_method::torq_intra);
    CHECK_FALSE(parse_mx_rotation("quarot").has_value());
    CHECK_FALSE(parse_mx_rotation("").has_value());
}

TEST_CASE("torq: mxfp4_quality on blocks worked out by hand") {
    // max 6 gives exponent floor(log2 6) − 2 = 0: every E2M1 magnitude is exact, each used 4
    // times in the block (signs alternating): no error, log2(8) = 3 bits.
    std::vector<float> x;
    const float mags[] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    for (int rep = 0; rep < 4; ++rep)
        for (float v : mags) x.push_back(rep % 2 ? -v : v);
    const mxfp4_fit exact = mxfp4_quality(matrix_view<const float>(x.data(), 1, x.size()));
    CHECK(exact.relative_mse == 0.0);
    CHECK(exact.code_entropy == doctest::Approx(3.0).epsilon(1e-12));
    // One 6 and 31 values of 0.1 (0.1 < 0.25 rounds to 0): two codes, 1/32 and 31/32.
    std::vector<float> y(32, 0.1f);
    y[7] = 6.0f;
    const mxfp4_fit two = mxfp4_quality(matrix_view<const float>(y.data(), 1, y.size()));
    const double p = 1.0 / 32.0;
    CHECK(two.code_entropy == doctest::Approx(-p * std::log2(p) - (1 - p) * std::log2(1 - p)));
    CHECK(two.relative_mse ==
          doctest::Approx(31.0 * 0.01 / (36.0 + 31.0 * 0.01)).epsilon(1e-6));  // 0.1f ≈ 0.1
    // All zero: no error, one code.
    const matrix<float> z(2, 64);
    CHECK(mxfp4_quality(z).relative_mse == 0.0);
    CHECK(mxfp4_quality(z).code_entropy == 0.0);
    // A ragged width: 40 columns, the padding of the second block is not counted.
    const matrix<float> r = student_t3(3, 40, 5);
    const mxfp4_fit fr = mxfp4_quality(r);
    CHECK(fr.relative_mse > 0.0);
    CHECK(fr.relative_mse < 0.1);
}

TEST_CASE("torq: every method is orthogonal, and apply, rotate_rows and to_matrix agree") {
    for (std::size_t d : {64u, 96u, 256u}) {
        const matrix<float> x = student_t3(64, d, static_cast<std::uint32_t>(d), {3}, 10.0f);
        for (mx_rotation_method m : all_mx_rotation_methods) {
            CAPTURE(d);
            CAPTURE(to_string(m));
            const mx_rotation q = mx_rotation::fit(m, x, quick(7));
            CHECK(q.method() == m);
            CHECK(q.size() == d);
            const matrix<float> qm = q.to_matrix();
            CHECK(orthogonality_error(qm) < 1e-5);
            // rotate_rows(x) = x·Q, Q explicit, in double.
            const matrix<float> y = rotated(q, x);
            double worst = 0.0;
            for (std::size_t t = 0; t < x.rows(); ++t) {
                double err = 0.0, norm = 0.0;
                for (std::size_t j = 0; j < d; ++j) {
                    double v = 0.0;
                    for (std::size_t k = 0; k < d; ++k) v += double(x(t, k)) * qm(k, j);
                    err += (v - y(t, j)) * (v - y(t, j));
                    norm += v * v;
                }
                worst = std::max(worst, std::sqrt(err / norm));
            }
            CHECK(worst < 1e-5);
            // apply on one row is rotate_rows on that row, bit for bit.
            std::vector<float> row(x.row(5).begin(), x.row(5).end());
            q.apply(row);
            CHECK(std::equal(row.begin(), row.end(), y.row(5).begin()));
        }
    }
}

TEST_CASE("torq: the inter stage equalizes diag(QᵀΣQ) with at most d − 1 Givens rotations") {
    for (std::size_t d : {128u, 256u}) {
        CAPTURE(d);
        // Gaussian channels of unequal spread, one loud block (channels 32..63 at 30× std) and
        // a correlated pair.
        matrix<float> x = test::gaussian_matrix(1024, d, static_cast<std::uint32_t>(d) + 1);
        for (std::size_t t = 0; t < x.rows(); ++t) {
            for (std::size_t j = 32; j < 64; ++j) x(t, j) *= 30.0f;
            for (std::size_t j = 64; j < d; ++j) x(t, j) *= 0.5f + float(j % 7) / 7.0f;
            x(t, 1) = 0.8f * x(t, 0) + 0.2f * x(t, 1);
        }
        const mx_rotation q = mx_rotation::fit(mx_rotation_method::torq_inter, x);
        CHECK(q.givens_count() > 0);
        CHECK(q.givens_count() <= d - 1);
        CHECK(q.permutation().empty());
        CHECK_FALSE(q.block_matrix().has_value());
        CHECK(q.online_flops_per_token() == 6.0 * double(q.givens_count()));
        const std::vector<double> sigma = second_moment(x);
        double mu = 0.0;
        for (std::size_t i = 0; i < d; ++i) mu += sigma[i * d + i];
        mu /= double(d);
        const matrix<float> qm = q.to_matrix();
        double worst = 0.0;
        std::vector<double> block_energy(d / 32, 0.0);
        for (std::size_t k = 0; k < d; ++k) {
            double diag = 0.0;  // (QᵀΣQ)_kk = Σ_ab Q_ak Σ_ab Q_bk
            for (std::size_t a = 0; a < d; ++a) {
                double row = 0.0;
                for (std::size_t b = 0; b < d; ++b) row += sigma[a * d + b] * qm(b, k);
                diag += qm(a, k) * row;
            }
            worst = std::max(worst, std::fabs(diag - mu) / mu);
            block_energy[k / 32] += diag;
        }
        CHECK(worst < 1e-4);
        for (double e : block_energy) CHECK(e == doctest::Approx(32.0 * mu).epsilon(1e-4));
    }
}

TEST_CASE("torq: the Givens angle solver matches a brute-force scan of θ") {
    std::mt19937 gen(11);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int trial = 0; trial < 40; ++trial) {
        // A random SPD 2×2 [[a, b], [b, e]] and a target strictly between e and a.
        const double e = 0.05 + u(gen), a = e + 0.1 + 3.0 * u(gen);
        const double b = (2.0 * u(gen) - 1.0) * 0.95 * std::sqrt(a * e);
        const double mu = e + (0.05 + 0.9 * u(gen)) * (a - e);
        for (bool fix_j : {false, true}) {
            CAPTURE(trial);
            CAPTURE(fix_j);
            // The rotated entry as a function of θ (c = cos θ, s = sin θ).
            auto entry = [&](double th) {
                const double c = std::cos(th), s = std::sin(th);
                return fix_j ? s * s * a + 2 * c * s * b + c * c * e
                             : c * c * a - 2 * c * s * b + s * s * e;
            };
            // Scan (−π/2, π/2) for sign changes of entry − mu, refine each by bisection, keep
            // the root of smallest |θ|.
            const int steps = 20000;
            double best = 10.0;
            for (int k = 0; k < steps; ++k) {
                double lo = -std::numbers::pi / 2 + std::numbers::pi * k / steps;
                double hi = lo + std::numbers::pi / steps;
                if ((entry(lo) - mu) * (entry(hi) - mu) > 0) continue;
                for (int it = 0; it < 100; ++it) {
                    const double mid = 0.5 * (lo + hi);
                    ((entry(lo) - mu) * (entry(mid) - mu) <= 0 ? hi : lo) = mid;
                }
                if (std::fabs(0.5 * (lo + hi)) < std::fabs(best)) best = 0.5 * (lo + hi);
            }
            REQUIRE(best < 5.0);
            const auto g = detail::equalizing_givens(a, b, e, mu, fix_j);
            CHECK(g.c > 0.0);
            CHECK(g.c * g.c + g.s * g.s == doctest::Approx(1.0).epsilon(1e-14));
            CHECK(std::atan2(g.s, g.c) == doctest::Approx(best).epsilon(1e-9));
            CHECK(entry(std::atan2(g.s, g.c)) == doctest::Approx(mu).epsilon(1e-12));
        }
    }
}

TEST_CASE("torq: folding Q into the weights leaves the layer unchanged, (XQ)(WQ)ᵀ = XWᵀ") {
    const std::size_t d = 128;
    const matrix<float> x = student_t3(48, d, 21, {9, 77}, 15.0f);
    const matrix<float> w = test::gaussian_matrix(40, d, 22);
    for (mx_rotation_method m : all_mx_rotation_methods) {
        CAPTURE(to_string(m));
        const mx_rotation q = mx_rotation::fit(m, x, quick(3));
        const matrix<float> xq = rotated(q, x), wq = rotated(q, w);
        double err = 0.0, norm = 0.0;
        for (std::size_t t = 0; t < x.rows(); ++t)
            for (std::size_t o = 0; o < w.rows(); ++o) {
                double ref = 0.0, got = 0.0;
                for (std::size_t k = 0; k < d; ++k) {
                    ref += double(x(t, k)) * w(o, k);
                    got += double(xq(t, k)) * wq(o, k);
                }
                err += (got - ref) * (got - ref);
                norm += ref * ref;
            }
        CHECK(std::sqrt(err / norm) < 2e-6);
    }
}

TEST_CASE("torq: TORQ is never worse than no rotation on the data it was fitted to") {
    const std::size_t d = 128;
    for (std::uint32_t seed : {1u, 2u, 3u}) {
        for (bool outliers : {false, true}) {
            CAPTURE(seed);
            CAPTURE(outliers);
            const matrix<float> x =
                outliers ? student_t3(256, d, seed, {5, 70, 127}, 20.0f) : student_t3(256, d, seed);
            const mxfp4_fit none = mxfp4_quality(x);
            for (mx_rotation_method m :
                 {mx_rotation_method::torq_inter, mx_rotation_method::torq_intra,
                  mx_rotation_method::torq}) {
                CAPTURE(to_string(m));
                const mx_rotation q = mx_rotation::fit(m, x, quick(seed));
                const mxfp4_fit f = mxfp4_quality(rotated(q, x));
                CHECK(f.relative_mse <= none.relative_mse);
                CHECK(f.code_entropy > none.code_entropy);
            }
        }
    }
}

TEST_CASE(
    "torq: the intra stage never loses to its Hadamard-32 start in the metric it selects by") {
    const std::size_t d = 128;
    for (std::uint32_t seed : {4u, 5u}) {
        CAPTURE(seed);
        const matrix<float> x = student_t3(128, d, seed, {17}, 12.0f);  // 512 blocks: all used
        torq_options opt = quick(seed);
        opt.iterations = 24;
        const mxfp4_fit h32 = mxfp4_quality(
            rotated(mx_rotation::fixed(mx_rotation_method::block_hadamard, d, opt), x));

        // Default: select by relative MSE.
        const mx_rotation by_mse = mx_rotation::fit(mx_rotation_method::torq_intra, x, opt);
        const torq_fit_report& r = by_mse.report();
        CHECK(r.sample_blocks == x.rows() * d / 32);
        CHECK(r.steps > 0);
        CHECK(r.accepted > 0);
        const mxfp4_fit f = mxfp4_quality(rotated(by_mse, x));
        // The report scores exactly what the quantizer sees: all blocks, in order, rotated by
        // the same routine as apply.
        CHECK(r.selected.relative_mse == doctest::Approx(f.relative_mse).epsilon(1e-12));
        CHECK(r.selected.code_entropy == doctest::Approx(f.code_entropy).epsilon(1e-12));
        // The start is H₃₂·D as an explicit matrix, block_hadamard its FWHT: the same up to
        // float rounding.
        CHECK(r.start.relative_mse == doctest::Approx(h32.relative_mse).epsilon(1e-4));
        CHECK(r.start.code_entropy == doctest::Approx(h32.code_entropy).epsilon(1e-3));
        CHECK(r.selected.relative_mse <= r.start.relative_mse);
        CHECK(f.relative_mse <= h32.relative_mse * (1 + 1e-4));
        CHECK(r.best_mse.relative_mse == r.selected.relative_mse);
        CHECK(r.best_entropy.code_entropy >= r.start.code_entropy);

        // TORQ's aim, select by entropy: more E2M1 codes in use than plain Hadamard-32.
        opt.select = torq_selection::code_entropy;
        const mx_rotation by_entropy = mx_rotation::fit(mx_rotation_method::torq_intra, x, opt);
        const mxfp4_fit g = mxfp4_quality(rotated(by_entropy, x));
        CHECK(g.code_entropy > h32.code_entropy);
        CHECK(g.code_entropy == doctest::Approx(by_entropy.report().best_entropy.code_entropy));
        CHECK(orthogonality_error(by_entropy.to_matrix()) < 1e-5);
    }
}

TEST_CASE("torq: the PeRQ permutation evens the blocks' l1 masses") {
    const std::size_t d = 256;
    // Channel scales from 0.1 to 10, sorted so that the loud channels share the last blocks.
    matrix<float> x = student_t3(256, d, 31);
    for (std::size_t t = 0; t < x.rows(); ++t)
        for (std::size_t j = 0; j < d; ++j)
            x(t, j) *= static_cast<float>(0.1 * std::pow(100.0, double(j) / double(d - 1)));
    const mx_rotation q = mx_rotation::fit(mx_rotation_method::perq, x);
    const auto perm = q.permutation();
    REQUIRE(perm.size() == d);
    std::vector<int> seen(d, 0);
    for (std::uint32_t p : perm) ++seen.at(p);
    CHECK(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; }));
    std::vector<double> mass(d, 0.0);
    for (std::size_t t = 0; t < x.rows(); ++t)
        for (std::size_t j = 0; j < d; ++j) mass[j] += std::fabs(double(x(t, j)));
    auto ratio = [&](auto channel_at) {
        std::vector<double> block(d / 32, 0.0);
        for (std::size_t p = 0; p < d; ++p) block[p / 32] += mass[channel_at(p)];
        return *std::max_element(block.begin(), block.end()) /
               *std::min_element(block.begin(), block.end());
    };
    const double before = ratio([](std::size_t p) { return p; });
    const double after = ratio([&](std::size_t p) { return perm[p]; });
    CHECK(before > 20.0);
    CHECK(after < 1.05);
    // Then the block Hadamard-32 of the same seed.
    const auto r = q.block_matrix();
    REQUIRE(r.has_value());
    CHECK(*r == *mx_rotation::fixed(mx_rotation_method::block_hadamard, d).block_matrix());
    CHECK(q.online_flops_per_token() == 7.0 * double(d));
}

TEST_CASE("torq: the same seed gives the identical Q, another seed another one") {
    const std::size_t d = 96;
    const matrix<float> x = student_t3(96, d, 41, {40}, 8.0f);
    for (mx_rotation_method m : all_mx_rotation_methods) {
        CAPTURE(to_string(m));
        const matrix<float> a = mx_rotation::fit(m, x, quick(9)).to_matrix();
        const matrix<float> b = mx_rotation::fit(m, x, quick(9)).to_matrix();
        CHECK(std::equal(a.flat().begin(), a.flat().end(), b.flat().begin()));
        const matrix<float> c = mx_rotation::fit(m, x, quick(10)).to_matrix();
        const bool differs = !std::equal(a.flat().begin(), a.flat().end(), c.flat().begin());
        // Only the Hadamard-based methods and the intra stage depend on the seed.
        const bool seeded = m != mx_rotation_method::none && m != mx_rotation_method::torq_inter;
        CHECK(differs == seeded);
    }
}

TEST_CASE("torq: online cost and stage layout of each method") {
    const std::size_t d = 256;
    const matrix<float> x = student_t3(32, d, 51);
    CHECK(mx_rotation::fit(mx_rotation_method::none, x).online_flops_per_token() == 0.0);
    CHECK(mx_rotation::fixed(mx_rotation_method::block_hadamard, d).online_flops_per_token() ==
          7.0 * d);
    CHECK(mx_rotation::fixed(mx_rotation_method::hadamard, d).online_flops_per_token() ==
          10.0 * d);  // log2 256 + 2
    const mx_rotation intra = mx_rotation::fit(mx_rotation_method::torq_intra, x, quick(1));
    CHECK(intra.givens_count() == 0);
    CHECK(intra.online_flops_per_token() == 64.0 * d);
    const mx_rotation both = mx_rotation::fit(mx_rotation_method::torq, x, quick(1));
    CHECK(both.givens_count() > 0);
    CHECK(both.online_flops_per_token() == 64.0 * d + 6.0 * double(both.givens_count()));
    CHECK(both.report().sample_blocks == 32 * d / 32);
    CHECK(mx_rotation::fit(mx_rotation_method::torq_inter, x).report().sample_blocks == 0);
}

TEST_CASE("torq: bad input throws qift::error naming the problem") {
    const matrix<float> x48 = student_t3(8, 48, 61);
    CHECK_THROWS_WITH_AS(mx_rotation::fit(mx_rotation_method::torq, x48),
                         doctest::Contains("d = 48 is not a positive multiple"), error);
    CHECK_THROWS_WITH_AS(mx_rotation::fixed(mx_rotation_method::hadamard, 0),
                         doctest::Contains("d = 0"), error);
    CHECK_THROWS_WITH_AS(mx_rotation::fit(mx_rotation_method::none, matrix_view<const float>()),
                         doctest::Contains("empty"), error);
    matrix<float> bad = student_t3(8, 64, 62);
    bad(3, 17) = NAN;
    CHECK_THROWS_WITH_AS(mx_rotation::fit(mx_rotation_method::torq_inter, bad),
                         doctest::Contains("x(3, 17)"), error);
    bad(3, 17) = INFINITY;
    CHECK_THROWS_WITH_AS(mx_rotation::fit(mx_rotation_method::block_hadamard, bad),
                         doctest::Contains("x(3, 17)"), error);
    CHECK_THROWS_WITH_AS(mxfp4_quality(bad), doctest::Contains("x(3, 17)"), error);
    CHECK_THROWS_WITH_AS(mxfp4_quality(matrix_view<const float>()), doctest::Contains("empty"),
                         error);
    CHECK_THROWS_WITH_AS(mx_rotation::fixed(mx_rotation_method::torq, 64),
                         doctest::Contains("fitted to activations"), error);
    const mx_rotation q = mx_rotation::fixed(mx_rotation_method::block_hadamard, 64);
    std::vector<float> v(63);
    CHECK_THROWS_WITH_AS(q.apply(v), doctest::Contains("x.size() = 63"), error);
    matrix<float> m(4, 96);
    CHECK_THROWS_WITH_AS(q.rotate_rows(m), doctest::Contains("96 columns"), error);
}

TEST_CASE("torq: the intra stage keeps no rotation when nothing beats the blocks as they are") {
    // Every block already on its E2M1 grid (a 6 in each block fixes the scale at 1): no error
    // without rotation, which any rotation would introduce.
    std::mt19937 gen(71);
    std::uniform_int_distribution<int> code(0, 15);
    matrix<float> x(64, 128);
    for (std::size_t t = 0; t < x.rows(); ++t)
        for (std::size_t j = 0; j < x.cols(); ++j)
            x(t, j) = j % 32 == 0 ? 6.0f : levels::e2m1::levels[std::size_t(code(gen))];
    REQUIRE(mxfp4_quality(x).relative_mse == 0.0);
    const mx_rotation q = mx_rotation::fit(mx_rotation_method::torq_intra, x, quick(1));
    CHECK(q.report().selected_identity);
    CHECK(q.report().identity.relative_mse == 0.0);
    CHECK(q.report().start.relative_mse > 0.0);
    CHECK_FALSE(q.block_matrix().has_value());
    CHECK(q.online_flops_per_token() == 0.0);
    const matrix<float> y = rotated(q, x);
    CHECK(std::equal(y.flat().begin(), y.flat().end(), x.flat().begin()));
}
