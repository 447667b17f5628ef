// SPDX-License-Identifier: MIT
// Tests of binary.hpp: every closed-form update against a numerical optimum or brute force
// computed from raw activations, monotone objectives, AMP's invariant, BiLLM against a naive
// partition search, the bits-per-weight accounting, and bad input.
#include <doctest/doctest.h>

#include <qift/binary.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "test_support.hpp"

using namespace qift;
using qift::test::gaussian_matrix;

namespace {

// aᵀ·b in double for a [T][n], b [T][m].
matrix<double> transposed_product(const matrix<float>& a, const matrix<float>& b) {
    matrix<double> c(a.cols(), b.cols());
    for (std::size_t t = 0; t < a.rows(); ++t)
        for (std::size_t i = 0; i < a.cols(); ++i)
            for (std::size_t j = 0; j < b.cols(); ++j) c(i, j) += double(a(t, i)) * double(b(t, j));
    return c;
}

// The two input streams of a layer: X (float model) with correlated, unevenly scaled features,
// X̂ = X + noise (the quantized model's), and their Grams S = X̂ᵀX, Ŝ = X̂ᵀX̂, F = XᵀX.
struct streams {
    matrix<float> x, xh;
    matrix<double> cross, gram, gram_float;
};

streams make_streams(std::size_t tokens, std::size_t in, std::uint32_t seed, float noise = 0.3f) {
    const matrix<float> z = gaussian_matrix(tokens, in, seed);
    const matrix<float> mix = gaussian_matrix(in, in, seed + 1);
    const matrix<float> e = gaussian_matrix(tokens, in, seed + 2);
    streams s{matrix<float>(tokens, in), matrix<float>(tokens, in), {}, {}, {}};
    for (std::size_t t = 0; t < tokens; ++t)
        for (std::size_t j = 0; j < in; ++j) {
            double v = (0.5 + 0.4 * double(j % 5)) * z(t, j);
            for (std::size_t k = 0; k < in; ++k) v += 0.6 * z(t, k) * mix(k, j) / std::sqrt(in);
            s.x(t, j) = static_cast<float>(v);
            s.xh(t, j) = static_cast<float>(v + noise * e(t, j));
        }
    s.cross = transposed_product(s.xh, s.x);
    s.gram = transposed_product(s.xh, s.xh);
    s.gram_float = transposed_product(s.x, s.x);
    return s;
}

// ‖X·Wᵀ − X̂·Ŵᵀ‖²_F straight from the activations.
double direct_loss(const matrix<float>& w, const matrix<float>& wh, const streams& s) {
    double l = 0.0;
    for (std::size_t t = 0; t < s.x.rows(); ++t)
        for (std::size_t r = 0; r < w.rows(); ++r) {
            double d = 0.0;
            for (std::size_t c = 0; c < w.cols(); ++c)
                d += double(s.x(t, c)) * w(r, c) - double(s.xh(t, c)) * wh(r, c);
            l += d * d;
        }
    return l;
}

// Row r's share of L for Ŵ_r = u·(b ⊙ v), from the activations.
double row_loss(const matrix<float>& w, std::size_t r, const std::int8_t* b, double u,
                const std::vector<double>& v, const streams& s) {
    double l = 0.0;
    for (std::size_t t = 0; t < s.x.rows(); ++t) {
        double d = 0.0;
        for (std::size_t c = 0; c < w.cols(); ++c)
            d += double(s.x(t, c)) * w(r, c) - double(s.xh(t, c)) * u * double(b[c]) * v[c];
        l += d * d;
    }
    return l;
}

double frobenius2(const matrix<float>& a, const matrix<float>& b) {
    double s = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double d = double(a.data()[i]) - double(b.data()[i]);
        s += d * d;
    }
    return s;
}

bool non_increasing(const std::vector<double>& v, double tol) {
    for (std::size_t i = 1; i < v.size(); ++i)
        if (v[i] > v[i - 1] + tol) return false;
    return true;
}

// Solves a·x = b by Gaussian elimination with partial pivoting in long double.
std::vector<double> gauss_solve(std::vector<std::vector<long double>> a,
                                std::vector<long double> b) {
    const std::size_t n = b.size();
    for (std::size_t k = 0; k < n; ++k) {
        std::size_t piv = k;
        for (std::size_t i = k + 1; i < n; ++i)
            if (std::fabs(a[i][k]) > std::fabs(a[piv][k])) piv = i;
        std::swap(a[k], a[piv]);
        std::swap(b[k], b[piv]);
        for (std::size_t i = k + 1; i < n; ++i) {
            const long double f = a[i][k] / a[k][k];
            for (std::size_t j = k; j < n; ++j) a[i][j] -= f * a[k][j];
            b[i] -= f * b[k];
        }
    }
    std::vector<double> x(n);
    for (std::size_t i = n; i-- > 0;) {
        long double s = b[i];
        for (std::size_t j = i + 1; j < n; ++j) s -= a[i][j] * x[j];
        x[i] = static_cast<double>(s / a[i][i]);
    }
    return x;
}

// A random output-alignment state (signs, u, v) with Q and Z current.
detail::oa_state random_state(const detail::oa_problem& pr, std::size_t out, std::size_t in,
                              std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> scale(0.5, 1.5);
    std::bernoulli_distribution coin;
    detail::rc_solution x{matrix<std::int8_t>(out, in), std::vector<double>(out),
                          std::vector<double>(in)};
    for (auto& b : x.signs.flat()) b = coin(rng) ? std::int8_t{1} : std::int8_t{-1};
    for (auto& u : x.u) u = scale(rng);
    for (auto& v : x.v) v = scale(rng);
    detail::oa_state st{std::move(x), {}, {}, 0, 0};
    detail::oa_refresh(pr, st);
    return st;
}

// W = diag(α)·B with random ±1 signs, `plus` of them +1 in each row (all random if plus < 0).
matrix<float> plus_minus_alpha(std::size_t out, std::size_t in, int plus, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> a(0.25f, 2.0f);
    std::bernoulli_distribution coin;
    matrix<float> w(out, in);
    for (std::size_t r = 0; r < out; ++r) {
        const float alpha = a(rng);
        std::vector<float> row(in, -alpha);
        for (std::size_t c = 0; c < in; ++c)
            if (plus < 0 ? coin(rng) : c < std::size_t(plus)) row[c] = alpha;
        std::shuffle(row.begin(), row.end(), rng);
        std::copy(row.begin(), row.end(), &w(r, 0));
    }
    return w;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// XNOR, ARB, ARB-X, ARB-RC

TEST_CASE("binary: XNOR, ARB and ARB-RC reproduce a matrix that is already ±α per row") {
    const std::size_t out = 6, in = 8;
    // Balanced rows (row mean 0): every method is exact.
    const matrix<float> w = plus_minus_alpha(out, in, 4, 1);
    const auto xn = binarize_xnor(w.view());
    const auto arb = binarize_arb(w.view());
    const auto rc = binarize_arb_rc(w.view());
    CHECK(frobenius2(xn.dequantized, w) <= 1e-12);
    CHECK(frobenius2(arb.dequantized, w) <= 1e-12);
    CHECK(frobenius2(rc.dequantized, w) <= 1e-12);
    for (std::size_t i = 0; i < w.size(); ++i) {
        CHECK(xn.signs.data()[i] == (w.data()[i] > 0 ? 1 : -1));
        CHECK(rc.signs.data()[i] == (w.data()[i] > 0 ? 1 : -1));
    }
    CHECK(xn.objective.size() == 1);
    CHECK(xn.objective[0] <= 1e-12);
    CHECK(rc.objective[0] <= 1e-12);  // exact from ARB-RC's start already

    // 5:3 rows: XNOR's μ = row mean misses, ARB's alternation converges to the exact
    // two-level fit (rate (mean b)² = 1/16 per iteration); ARB-RC (no mean) is exact at once.
    const matrix<float> u = plus_minus_alpha(out, in, 5, 2);
    const auto xn2 = binarize_xnor(u.view());
    const auto arb2 = binarize_arb(u.view());
    const auto rc2 = binarize_arb_rc(u.view());
    CHECK(xn2.objective[0] > 0.1);
    CHECK(frobenius2(arb2.dequantized, u) <= 1e-10);
    CHECK(frobenius2(rc2.dequantized, u) <= 1e-12);

    // W = diag(a)·B·diag(b) with positive a, b: ARB-RC recovers it.
    matrix<float> wr = plus_minus_alpha(out, in, -1, 3);
    for (std::size_t c = 0; c < in; ++c)
        for (std::size_t r = 0; r < out; ++r) wr(r, c) *= 0.5f + 0.25f * float(c);
    const auto rc3 = binarize_arb_rc(wr.view());
    CHECK(frobenius2(rc3.dequantized, wr) <= 1e-10);
    CHECK(rc3.objective.back() <= 1e-10);
}

TEST_CASE("binary: XNOR is the closed form, ARB descends from it") {
    const std::size_t out = 7, in = 33;
    const matrix<float> w = gaussian_matrix(out, in, 11);
    const auto xn = binarize_xnor(w.view());
    for (std::size_t r = 0; r < out; ++r) {
        double mu = 0.0, a = 0.0;
        for (std::size_t c = 0; c < in; ++c) mu += w(r, c);
        mu /= double(in);
        for (std::size_t c = 0; c < in; ++c) a += std::fabs(w(r, c) - mu);
        a /= double(in);
        CHECK(xn.mean[r] == doctest::Approx(mu).epsilon(1e-6));
        CHECK(xn.scale[r] == doctest::Approx(a).epsilon(1e-6));
        for (std::size_t c = 0; c < in; ++c) CHECK(xn.signs(r, c) == (w(r, c) - mu >= 0 ? 1 : -1));
    }
    CHECK(xn.objective[0] == doctest::Approx(frobenius2(w, xn.dequantized)).epsilon(1e-5));

    const auto arb = binarize_arb(w.view());
    REQUIRE(arb.objective.size() == 16);
    CHECK(arb.objective[0] == doctest::Approx(xn.objective[0]));
    CHECK(non_increasing(arb.objective, 1e-12 * arb.objective[0]));
    CHECK(arb.objective.back() < xn.objective[0]);
    CHECK(arb.objective.back() == doctest::Approx(frobenius2(w, arb.dequantized)).epsilon(1e-5));
    // The last step is the sign update: b = sign(α·(w − μ)) everywhere (α > 0 here).
    for (std::size_t r = 0; r < out; ++r) {
        CHECK(arb.scale[r] > 0.0f);
        for (std::size_t c = 0; c < in; ++c) {
            const double d = double(w(r, c)) - double(arb.mean[r]);
            if (std::fabs(d) > 1e-6) CHECK(arb.signs(r, c) == (d > 0 ? 1 : -1));
        }
    }
    arb_options none;
    none.iterations = 0;
    const auto arb0 = binarize_arb(w.view(), none);
    CHECK(frobenius2(arb0.dequantized, xn.dequantized) == 0.0);
}

TEST_CASE("binary: ARB-X lowers the Ŝ-weighted error below XNOR and ARB; Ŝ = I gives ARB") {
    const std::size_t out = 12, in = 24;
    const matrix<float> w = gaussian_matrix(out, in, 21);
    const streams s = make_streams(200, in, 22);
    const auto xn = binarize_xnor(w.view());
    const auto arb = binarize_arb(w.view());
    const auto ax = binarize_arb_x(w.view(), s.gram);
    const double e_xnor = weighted_error(w.view(), xn.dequantized.view(), s.gram);
    const double e_arb = weighted_error(w.view(), arb.dequantized.view(), s.gram);
    const double e_x = weighted_error(w.view(), ax.dequantized.view(), s.gram);
    MESSAGE("Ŝ-weighted error: XNOR " << e_xnor << ", ARB " << e_arb << ", ARB-X " << e_x);
    CHECK(ax.objective[0] == doctest::Approx(e_xnor).epsilon(1e-5));
    CHECK(non_increasing(ax.objective, 1e-9 * ax.objective[0]));
    CHECK(ax.objective.back() == doctest::Approx(e_x).epsilon(1e-4));
    CHECK(e_x < 0.9 * e_xnor);
    CHECK(e_x < e_arb);

    matrix<double> eye(in, in);
    for (std::size_t i = 0; i < in; ++i) eye(i, i) = 1.0;
    const auto ai = binarize_arb_x(w.view(), eye);
    CHECK(std::ranges::equal(ai.signs.flat(), arb.signs.flat()));
    for (std::size_t r = 0; r < out; ++r) {
        CHECK(ai.scale[r] == doctest::Approx(arb.scale[r]).epsilon(1e-6));
        CHECK(ai.mean[r] == doctest::Approx(arb.mean[r]).epsilon(1e-5));
    }
    for (std::size_t t = 0; t < arb.objective.size(); ++t)
        CHECK(ai.objective[t] == doctest::Approx(arb.objective[t]).epsilon(1e-9));
}

TEST_CASE("binary: one ARB-X iteration equals a numerical minimization of eᵀŜe, step by step") {
    const std::size_t out = 4, in = 10;
    const matrix<float> w = gaussian_matrix(out, in, 25);
    const streams s = make_streams(80, in, 26);
    arb_options one;
    one.iterations = 1;
    const auto ax = binarize_arb_x(w.view(), s.gram, one);
    const auto xn = binarize_xnor(w.view());
    for (std::size_t r = 0; r < out; ++r) {
        std::vector<std::int8_t> b(&xn.signs(r, 0), &xn.signs(r, 0) + in);
        double mu = xn.mean[r], alpha = xn.scale[r];
        // f = eᵀŜe, e = w − α·b − μ·1, straight from Ŝ.
        const auto f = [&](double m, double a) {
            double e2 = 0.0;
            for (std::size_t i = 0; i < in; ++i)
                for (std::size_t j = 0; j < in; ++j)
                    e2 += (w(r, i) - a * b[i] - m) * s.gram(i, j) * (w(r, j) - a * b[j] - m);
            return e2;
        };
        // The minimizer of a quadratic from three samples (exact up to rounding).
        const auto parabola_min = [](double x0, double h, double fm, double f0, double fp) {
            return x0 - h * (fp - fm) / (2.0 * (fp - 2.0 * f0 + fm));
        };
        const double h = 0.1;
        mu = parabola_min(mu, h, f(mu - h, alpha), f(mu, alpha), f(mu + h, alpha));
        alpha = parabola_min(alpha, h, f(mu, alpha - h), f(mu, alpha), f(mu, alpha + h));
        for (std::size_t i = 0; i < in; ++i) {
            const double keep = f(mu, alpha);
            b[i] = static_cast<std::int8_t>(-b[i]);
            if (!(f(mu, alpha) < keep)) b[i] = static_cast<std::int8_t>(-b[i]);
        }
        CHECK(ax.mean[r] == doctest::Approx(mu).epsilon(1e-6));
        CHECK(ax.scale[r] == doctest::Approx(alpha).epsilon(1e-6));
        CHECK(std::equal(b.begin(), b.end(), &ax.signs(r, 0)));
    }
}

TEST_CASE("binary: ARB-RC alternating least squares: monotone, stationary in v, as OA with I") {
    const std::size_t out = 9, in = 14;
    const matrix<float> w = gaussian_matrix(out, in, 31);
    const auto rc = binarize_arb_rc(w.view());
    REQUIRE(rc.objective.size() == 16);
    CHECK(non_increasing(rc.objective, 1e-12 * rc.objective[0]));
    CHECK(rc.objective.back() == doctest::Approx(frobenius2(w, rc.dequantized)).epsilon(1e-5));
    CHECK(rc.objective.back() < binarize_xnor(w.view()).objective[0] * 1.5);
    double mean_abs_v = 0.0;
    for (float v : rc.col_scale) mean_abs_v += std::fabs(v);
    CHECK(mean_abs_v / double(in) == doctest::Approx(1.0).epsilon(1e-6));
    // The last step is the column-scale solve: ∂‖W − Ŵ‖²/∂v_c = 0, and a scan of v_c (other
    // scales fixed) finds nothing lower.
    for (std::size_t c = 0; c < in; ++c) {
        const auto err = [&](double vc) {
            double e = 0.0;
            for (std::size_t r = 0; r < out; ++r) {
                const double d = w(r, c) - double(rc.row_scale[r]) * rc.signs(r, c) * vc;
                e += d * d;
            }
            return e;
        };
        const double v0 = rc.col_scale[c];
        for (double f : {0.9, 0.99, 0.999, 1.001, 1.01, 1.1})
            CHECK(err(v0 * f) >= err(v0) - 1e-9 * err(v0));
    }
    // Output alignment with X = X̂ = I (S = Ŝ = I) runs the same updates: started from 15 ARB-RC
    // rounds and run 15 more it is ARB-RC with 30; its objective is ‖W − Ŵ‖² − ‖W‖².
    matrix<double> eye(in, in);
    for (std::size_t i = 0; i < in; ++i) eye(i, i) = 1.0;
    output_alignment_options opt;
    opt.amp = amp_mode::off;
    const auto oa = binarize_output_aligned(w.view(), eye, eye, opt);
    arb_rc_options thirty;
    thirty.iterations = 30;
    const auto rc30 = binarize_arb_rc(w.view(), thirty);
    const double w2 = frobenius2(w, matrix<float>(out, in));
    CHECK(oa.objective[0] + w2 == doctest::Approx(rc.objective.back()).epsilon(1e-9));
    CHECK(oa.objective.back() + w2 == doctest::Approx(rc30.objective.back()).epsilon(1e-9));
    CHECK(std::ranges::equal(oa.signs.flat(), rc30.signs.flat()));
    CHECK(frobenius2(oa.dequantized, rc30.dequantized) <= 1e-10 * w2);
}

// ---------------------------------------------------------------------------------------
// Output alignment

TEST_CASE("binary: the output-alignment loss from (S, Ŝ, W) equals ‖X·Wᵀ − X̂·Ŵᵀ‖² directly") {
    const std::size_t out = 10, in = 16;
    const streams s = make_streams(150, in, 41);
    const matrix<float> w = gaussian_matrix(out, in, 42);
    const matrix<float> wh = binarize_xnor(w.view()).dequantized;
    const double direct = direct_loss(w, wh, s);
    const double from_grams =
        output_alignment_loss(w.view(), wh.view(), s.cross, s.gram, s.gram_float);
    CHECK(from_grams == doctest::Approx(direct).epsilon(1e-9));
    // Without XᵀX the constant ‖X·Wᵀ‖² is left out.
    const double constant = direct_loss(w, matrix<float>(out, in), s);
    CHECK(output_alignment_loss(w.view(), wh.view(), s.cross, s.gram) + constant ==
          doctest::Approx(direct).epsilon(1e-9));
    // AMP's T = ‖P·Ŵᵀ‖² = ‖Yᵀ·Ŷ‖² with Y = X·Wᵀ, Ŷ = X̂·Ŵᵀ.
    double t = 0.0;
    for (std::size_t r = 0; r < out; ++r)
        for (std::size_t q = 0; q < out; ++q) {
            double yy = 0.0;
            for (std::size_t k = 0; k < s.x.rows(); ++k) {
                double y = 0.0, yh = 0.0;
                for (std::size_t c = 0; c < in; ++c) {
                    y += double(s.x(k, c)) * w(r, c);
                    yh += double(s.xh(k, c)) * wh(q, c);
                }
                yy += y * yh;
            }
            t += yy * yy;
        }
    CHECK(attention_preservation(w.view(), wh.view(), s.cross) == doctest::Approx(t).epsilon(1e-9));
}

TEST_CASE("binary: output-alignment row-scale update is the exact least-squares u") {
    const std::size_t out = 5, in = 9;
    const streams s = make_streams(60, in, 51);
    const matrix<float> w = gaussian_matrix(out, in, 52);
    const detail::oa_problem pr = detail::make_oa_problem(w.view(), s.cross, s.gram, false);
    detail::oa_state st = random_state(pr, out, in, 53);
    const double before = detail::oa_objective(pr, st);
    detail::oa_update_row_scales(pr, st);
    CHECK(detail::oa_objective(pr, st) <= before);
    for (std::size_t r = 0; r < out; ++r) {
        // u_r = ⟨X̂·(b ⊙ v), X·w_r⟩ / ‖X̂·(b ⊙ v)‖², from the activations.
        double num = 0.0, den = 0.0;
        for (std::size_t t = 0; t < s.x.rows(); ++t) {
            double y = 0.0, z = 0.0;
            for (std::size_t c = 0; c < in; ++c) {
                y += double(s.x(t, c)) * w(r, c);
                z += double(s.xh(t, c)) * st.x.signs(r, c) * st.x.v[c];
            }
            num += z * y;
            den += z * z;
        }
        CHECK(st.x.u[r] == doctest::Approx(num / den).epsilon(1e-9));
        const double l0 = row_loss(w, r, &st.x.signs(r, 0), st.x.u[r], st.x.v, s);
        for (double f : {0.98, 0.999, 1.001, 1.02})
            CHECK(row_loss(w, r, &st.x.signs(r, 0), st.x.u[r] * f, st.x.v, s) > l0);
    }
}

TEST_CASE("binary: output-alignment column-scale update solves the normal equations") {
    const std::size_t out = 4, in = 7;
    const streams s = make_streams(50, in, 61);
    const matrix<float> w = gaussian_matrix(out, in, 62);
    const detail::oa_problem pr = detail::make_oa_problem(w.view(), s.cross, s.gram, true);
    detail::oa_state st = random_state(pr, out, in, 63);
    const double before = detail::oa_objective(pr, st);
    detail::oa_update_col_scales(pr, st);
    CHECK(detail::oa_objective(pr, st) <= before);
    // Least squares over v: rows (t, r) of the design matrix are u_r·b_ri·x̂_ti, targets y_tr.
    std::vector<std::vector<long double>> ata(in, std::vector<long double>(in, 0.0L));
    std::vector<long double> aty(in, 0.0L);
    std::vector<long double> arow(in);
    for (std::size_t t = 0; t < s.x.rows(); ++t)
        for (std::size_t r = 0; r < out; ++r) {
            long double y = 0.0L;
            for (std::size_t c = 0; c < in; ++c) {
                y += (long double)s.x(t, c) * w(r, c);
                arow[c] = (long double)st.x.u[r] * st.x.signs(r, c) * s.xh(t, c);
            }
            for (std::size_t i = 0; i < in; ++i) {
                aty[i] += arow[i] * y;
                for (std::size_t j = 0; j < in; ++j) ata[i][j] += arow[i] * arow[j];
            }
        }
    const std::vector<double> v = gauss_solve(ata, aty);
    for (std::size_t i = 0; i < in; ++i) CHECK(st.x.v[i] == doctest::Approx(v[i]).epsilon(1e-7));
    // Q and Z are current after the update.
    const matrix<double> q = st.q, z = st.z;
    detail::oa_refresh(pr, st);
    for (std::size_t i = 0; i < q.size(); ++i) {
        CHECK(q.data()[i] == doctest::Approx(st.q.data()[i]).epsilon(1e-12));
        CHECK(z.data()[i] == doctest::Approx(st.z.data()[i]).epsilon(1e-12));
    }
}

TEST_CASE("binary: output-alignment sign sweep: each coordinate step is the brute-force optimum") {
    const std::size_t out = 3, in = 6;
    const streams s = make_streams(40, in, 71, 0.5f);
    const matrix<float> w = gaussian_matrix(out, in, 72);
    const detail::oa_problem pr = detail::make_oa_problem(w.view(), s.cross, s.gram, false);
    for (std::uint32_t seed = 0; seed < 8; ++seed) {
        detail::oa_state st = random_state(pr, out, in, 100 + seed);
        // The sweep replayed coordinate by coordinate: both values of b_ri, L from activations.
        matrix<std::int8_t> sim = st.x.signs;
        for (std::size_t i = 0; i < in; ++i)
            for (std::size_t r = 0; r < out; ++r) {
                std::int8_t* b = &sim(r, 0);
                const std::int8_t old = b[i];
                b[i] = 1;
                const double lp = row_loss(w, r, b, st.x.u[r], st.x.v, s);
                b[i] = -1;
                const double lm = row_loss(w, r, b, st.x.u[r], st.x.v, s);
                b[i] = lp < lm ? 1 : lm < lp ? -1 : old;
            }
        const double before = detail::oa_objective(pr, st);
        detail::oa_sweep_signs(pr, st, amp_mode::off);
        CHECK(std::ranges::equal(st.x.signs.flat(), sim.flat()));
        CHECK(detail::oa_objective(pr, st) <= before);
    }
    // Sweeps to a fixed point: no single flip lowers L; compare with all 2⁶ sign rows.
    detail::oa_state st = random_state(pr, out, in, 99);
    for (int k = 0; k < 50; ++k) {
        const std::size_t f = st.flips;
        detail::oa_sweep_signs(pr, st, amp_mode::off);
        if (st.flips == f) break;
    }
    std::size_t at_global = 0;
    for (std::size_t r = 0; r < out; ++r) {
        std::vector<std::int8_t> b(&st.x.signs(r, 0), &st.x.signs(r, 0) + in);
        const double l = row_loss(w, r, b.data(), st.x.u[r], st.x.v, s);
        for (std::size_t i = 0; i < in; ++i) {
            b[i] = static_cast<std::int8_t>(-b[i]);
            CHECK(row_loss(w, r, b.data(), st.x.u[r], st.x.v, s) >= l * (1 - 1e-12));
            b[i] = static_cast<std::int8_t>(-b[i]);
        }
        double best = INFINITY;
        for (unsigned m = 0; m < (1u << in); ++m) {
            std::vector<std::int8_t> e(in);
            for (std::size_t i = 0; i < in; ++i) e[i] = (m >> i) & 1u ? 1 : -1;
            best = std::min(best, row_loss(w, r, e.data(), st.x.u[r], st.x.v, s));
        }
        CHECK(best <= l * (1 + 1e-12));
        at_global += l <= best * (1 + 1e-12);
    }
    MESSAGE("coordinate descent reached the global sign optimum in " << at_global << " of " << out
                                                                     << " rows");
}

TEST_CASE("binary: output alignment never raises L; AMP keeps Tr[ŴᵀMŴ] from falling") {
    const std::size_t out = 16, in = 24;
    const streams s = make_streams(160, in, 81, 0.5f);
    const matrix<float> w = gaussian_matrix(out, in, 82);
    const double constant = direct_loss(w, matrix<float>(out, in), s);

    // Step by step, with every AMP mode: no step raises L; with AMP no sweep lowers T.
    for (const amp_mode mode : {amp_mode::off, amp_mode::gradient_sign, amp_mode::exact}) {
        CAPTURE(static_cast<int>(mode));
        const detail::oa_problem pr = detail::make_oa_problem(w.view(), s.cross, s.gram, true);
        detail::oa_state st = random_state(pr, out, in, 83);
        double l = detail::oa_objective(pr, st), t = detail::oa_preservation(st);
        const double tol = 1e-12 * std::fabs(l);
        for (int it = 0; it < 6; ++it) {
            detail::oa_update_row_scales(pr, st);
            const double l1 = detail::oa_objective(pr, st);
            CHECK(l1 <= l + tol);
            t = detail::oa_preservation(st);
            detail::oa_sweep_signs(pr, st, mode);
            const double l2 = detail::oa_objective(pr, st), t2 = detail::oa_preservation(st);
            CHECK(l2 <= l1 + tol);
            detail::oa_refresh(pr, st);  // T from a fresh Z agrees with the maintained one
            CHECK(detail::oa_preservation(st) == doctest::Approx(t2).epsilon(1e-9));
            if (mode != amp_mode::off) CHECK(t2 >= t * (1 - 1e-12));
            detail::oa_update_col_scales(pr, st);
            l = detail::oa_objective(pr, st);
            CHECK(l <= l2 + tol);
        }
    }

    // The whole method: monotone objectives; what AMP costs in L and gains in T.
    output_alignment_options opt;
    double l_off = 0.0;
    for (const amp_mode mode : {amp_mode::off, amp_mode::gradient_sign, amp_mode::exact}) {
        opt.amp = mode;
        const auto res = binarize_output_aligned(w.view(), s.cross, s.gram, opt);
        REQUIRE(res.objective.size() == 16);
        CHECK(non_increasing(res.objective, 1e-12 * std::fabs(res.objective[0])));
        CHECK(res.preservation.size() == (mode == amp_mode::off ? 0u : 16u));
        CHECK((mode == amp_mode::off) == (res.amp_rejected == 0));
        const double direct = direct_loss(w, res.dequantized, s);
        CHECK(res.objective.back() + constant == doctest::Approx(direct).epsilon(1e-4));
        const double t = attention_preservation(w.view(), res.dequantized.view(), s.cross);
        if (mode == amp_mode::off) l_off = direct;
        if (mode != amp_mode::off)
            CHECK(res.preservation.back() == doctest::Approx(t).epsilon(1e-4));
        MESSAGE("AMP mode " << static_cast<int>(mode) << ": L = " << direct << " ("
                            << 100.0 * (direct / l_off - 1.0) << "% above no AMP), T = " << t
                            << ", flips " << res.sign_flips << ", rejected " << res.amp_rejected);
    }
}

TEST_CASE("binary: output alignment beats ARB-RC and XNOR on the output error") {
    const std::size_t out = 20, in = 32;
    const streams s = make_streams(300, in, 91, 0.4f);
    const matrix<float> w = gaussian_matrix(out, in, 92);
    output_alignment_options opt;
    opt.amp = amp_mode::off;
    const auto oa = binarize_output_aligned(w.view(), s.cross, s.gram, opt);
    opt.amp = amp_mode::gradient_sign;
    const auto oa_amp = binarize_output_aligned(w.view(), s.cross, s.gram, opt);
    const double l_oa = direct_loss(w, oa.dequantized, s);
    const double l_amp = direct_loss(w, oa_amp.dequantized, s);
    const double l_rc = direct_loss(w, binarize_arb_rc(w.view()).dequantized, s);
    const double l_xnor = direct_loss(w, binarize_xnor(w.view()).dequantized, s);
    MESSAGE("output error: XNOR " << l_xnor << ", ARB-RC " << l_rc << ", OA " << l_oa << ", OA+AMP "
                                  << l_amp);
    CHECK(l_oa < 0.9 * l_rc);
    CHECK(l_amp <= l_rc * (1 + 1e-5));
    CHECK(l_oa < l_xnor);
    CHECK(oa.storage.bits_per_weight() == doctest::Approx(1.0 + 16.0 / in + 16.0 / out));
}

// ---------------------------------------------------------------------------------------
// BiLLM

namespace {

// BiLLM's block search written out plainly: every (k, p) from the grids, masks built
// explicitly, binarized by the definitions, scored by Σ (w − ŵ)²/U_jj². Returns the least
// error and its k.
std::pair<double, std::size_t> naive_block_search(const matrix<float>& wb,
                                                  const std::vector<double>& d,
                                                  const billm_options& opt) {
    const std::size_t out = wb.rows(), bw = wb.cols();
    std::vector<double> sal(bw, 0.0);
    for (std::size_t j = 0; j < bw; ++j)
        for (std::size_t r = 0; r < out; ++r) sal[j] += double(wb(r, j)) * wb(r, j) / (d[j] * d[j]);
    std::vector<std::size_t> order(bw);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return sal[a] > sal[b]; });
    const auto binarize = [](const std::vector<double>& x, int order_count) {
        std::vector<double> res(x.size(), 0.0), cur = x;
        if (x.empty()) return res;
        for (int o = 0; o < order_count; ++o) {
            double mu = 0.0, a = 0.0;
            for (double v : cur) mu += v;
            mu /= double(cur.size());
            for (double v : cur) a += std::fabs(v - mu);
            a /= double(cur.size());
            for (std::size_t t = 0; t < x.size(); ++t) {
                const double q = mu + (cur[t] - mu >= 0 ? a : -a);
                res[t] += q;
                cur[t] -= q;
            }
        }
        return res;
    };
    double best = INFINITY;
    std::size_t best_k = 0;
    for (std::size_t k = opt.min_salient; k <= std::min(opt.max_salient, bw - 1); ++k) {
        std::vector<char> salient(bw, 0);
        for (std::size_t t = 0; t < k; ++t) salient[order[t]] = 1;
        std::vector<double> mags;
        for (std::size_t r = 0; r < out; ++r)
            for (std::size_t j = 0; j < bw; ++j)
                if (!salient[j]) mags.push_back(std::fabs(wb(r, j)));
        std::sort(mags.begin(), mags.end());
        for (double q : opt.break_point_quantiles) {
            const double h = q * double(mags.size() - 1);
            const std::size_t lo = std::size_t(h);
            const double p = lo + 1 < mags.size()
                                 ? mags[lo] + (h - double(lo)) * (mags[lo + 1] - mags[lo])
                                 : mags.back();
            double e = 0.0;
            for (std::size_t r = 0; r < out; ++r)
                for (int g = 0; g < 3; ++g) {  // salient, low, high
                    std::vector<double> x;
                    std::vector<std::size_t> cols;
                    for (std::size_t j = 0; j < bw; ++j) {
                        const double v = wb(r, j);
                        const int gj = salient[j] ? 0 : std::fabs(v) > p ? 2 : 1;
                        if (gj == g) x.push_back(v), cols.push_back(j);
                    }
                    const std::vector<double> q2 = binarize(x, g == 0 ? 2 : 1);
                    for (std::size_t t = 0; t < x.size(); ++t)
                        e += (x[t] - q2[t]) * (x[t] - q2[t]) / (d[cols[t]] * d[cols[t]]);
                }
            if (e < best) best = e, best_k = k;
        }
    }
    return {best, best_k};
}

// U's diagonal (U the upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹), in double.
std::vector<double> hinv_diagonal(const matrix<double>& h, double damp) {
    const std::size_t n = h.rows();
    matrix<double> hd = h, ut(n, n);
    double mean = 0.0;
    for (std::size_t i = 0; i < n; ++i) mean += h(i, i);
    for (std::size_t i = 0; i < n; ++i) hd(i, i) += damp * mean / double(n);
    REQUIRE(detail::inverse_cholesky_upper_transposed<double>(hd.view(), ut.view()));
    std::vector<double> d(n);
    for (std::size_t i = 0; i < n; ++i) d[i] = ut(i, i);
    return d;
}

matrix<double> hessian_of(const streams& s) {
    matrix<double> h = s.gram;
    for (double& x : h.flat()) x *= 2.0 / double(s.xh.rows());
    return h;
}

}  // namespace

TEST_CASE("binary: BiLLM's prefix-sum split scorer equals the two-pass split error") {
    std::mt19937 rng(151);
    std::normal_distribution<double> nd;
    std::uniform_real_distribution<double> cw(0.2, 3.0);
    for (std::size_t n : {1u, 2u, 7u, 64u}) {
        std::vector<double> x(n), c(n);
        for (std::size_t t = 0; t < n; ++t) x[t] = nd(rng), c[t] = cw(rng);
        if (n == 64) x[5] = x[6] = x[7] = 0.25;  // ties at a break-point
        std::vector<std::size_t> idx(n);
        std::iota(idx.begin(), idx.end(), std::size_t{0});
        std::sort(idx.begin(), idx.end(),
                  [&](std::size_t a, std::size_t b) { return x[a] < x[b]; });
        std::vector<double> xs(n), cs(n);
        for (std::size_t t = 0; t < n; ++t) xs[t] = x[idx[t]], cs[t] = c[idx[t]];
        detail::split_scorer sc;
        sc.build(xs.data(), cs.data(), n);
        for (double p : {0.0, 0.1, 0.25, 0.7, 1.3, 5.0}) {
            const double direct = detail::split_error(x.data(), c.data(), n, p);
            CHECK(sc.error(p) == doctest::Approx(direct).epsilon(1e-10).scale(1.0));
        }
    }
}

TEST_CASE("binary: BiLLM partitions lower the Hessian-weighted error below XNOR") {
    const std::size_t out = 24, in = 160;  // blocks of 128 and 32
    const streams s = make_streams(400, in, 101, 0.0f);
    const matrix<double> h = hessian_of(s);
    matrix<float> w = gaussian_matrix(out, in, 102);
    for (std::size_t r = 0; r < out; ++r) w(r, (r * 7) % in) *= 8.0f;  // a few outliers
    const auto bi = binarize_billm(w.view(), h);
    const auto xn = binarize_xnor(w.view());
    const double e_bi = weighted_error(w.view(), bi.dequantized.view(), h);
    const double e_xn = weighted_error(w.view(), xn.dequantized.view(), h);
    MESSAGE("tr((W − Ŵ)H(W − Ŵ)ᵀ): XNOR " << e_xn << ", BiLLM " << e_bi << " at "
                                          << bi.storage.bits_per_weight() << " bits per weight");
    CHECK(e_bi < 0.5 * e_xn);
    CHECK(bi.proxy_loss > 0.0);

    // The representation: planes, bitmaps and per-block parameters rebuild Ŵ exactly.
    REQUIRE(bi.blocks.size() == 2);
    std::size_t salient_total = 0;
    for (const billm_block& b : bi.blocks) {
        CHECK(b.salient.size() >= 1);
        CHECK(b.salient.size() <= std::min<std::size_t>(49, b.width - 1));
        CHECK(std::is_sorted(b.salient.begin(), b.salient.end()));
        salient_total += b.salient.size();
        for (std::size_t c = b.begin; c < b.begin + b.width; ++c) {
            const bool sal = std::binary_search(b.salient.begin(), b.salient.end(), c);
            CHECK(bi.salient_column[c] == (sal ? 1 : 0));
            for (std::size_t r = 0; r < out; ++r) {
                const float b1 = bi.signs(r, c), b2 = bi.residual_signs(r, c);
                CHECK(std::fabs(b1) == 1.0f);
                float q;
                if (sal) {
                    CHECK(std::fabs(b2) == 1.0f);
                    CHECK(bi.high_group(r, c) == 0);
                    q = b.salient_scale1[r] * b1 + b.salient_scale2[r] * b2 + b.salient_mean[r];
                } else {
                    CHECK(b2 == 0.0f);
                    q = bi.high_group(r, c) ? b.high_scale[r] * b1 + b.high_mean[r]
                                            : b.low_scale[r] * b1 + b.low_mean[r];
                }
                CHECK(q == bi.dequantized(r, c));
            }
        }
    }
    CHECK(bi.storage.residual_sign_bits == out * salient_total);

    // Block 0 sees W itself: its search agrees with the naive search.
    const std::vector<double> d = hinv_diagonal(h, 0.01);
    matrix<float> wb(out, 128);
    for (std::size_t r = 0; r < out; ++r) std::copy_n(&w(r, 0), 128, &wb(r, 0));
    const auto [err, k] = naive_block_search(wb, d, billm_options{});
    CHECK(bi.blocks[0].search_error == doctest::Approx(err).epsilon(1e-4));
    CHECK(bi.blocks[0].salient.size() == k);
}

TEST_CASE("binary: BiLLM search matches the naive search; its GPTQ feedback is exact") {
    const std::size_t out = 12, in = 40;
    const streams s = make_streams(120, in, 111, 0.0f);
    const matrix<double> h = hessian_of(s);
    const matrix<float> w = gaussian_matrix(out, in, 112);
    billm_options opt;
    opt.block_size = 20;
    opt.min_salient = 0;
    opt.max_salient = 6;
    opt.break_point_quantiles = {0.2, 0.5, 0.8};
    const auto bi = binarize_billm(w.view(), h, opt);
    const std::vector<double> d = hinv_diagonal(h, 0.01);
    matrix<float> wb(out, 20);
    for (std::size_t r = 0; r < out; ++r) std::copy_n(&w(r, 0), 20, &wb(r, 0));
    const auto [err, k] = naive_block_search(wb, d, opt);
    CHECK(bi.blocks[0].search_error == doctest::Approx(err).epsilon(1e-4));
    CHECK(bi.blocks[0].salient.size() == k);
    // GPTQ's identity for exact feedback: with H⁻¹ = UᵀU, W − Ŵ = Err·U, so the proxy loss
    // Σ err² is tr((W − Ŵ)·(H + λI)·(W − Ŵ)ᵀ) for the damped H (U in float: 1e-3).
    matrix<double> hd = h;
    for (std::size_t i = 0; i < in; ++i) hd(i, i) += bi.damping_absolute;
    CHECK(bi.proxy_loss ==
          doctest::Approx(weighted_error(w.view(), bi.dequantized.view(), hd)).epsilon(1e-3));
    CHECK(bi.retries == 0);
    CHECK(bi.damping_absolute == doctest::Approx(0.01 * 2.0 / 120.0 * [&] {
              double t = 0.0;
              for (std::size_t i = 0; i < in; ++i) t += s.gram(i, i);
              return t / double(in);
          }()));
}

// ---------------------------------------------------------------------------------------
// Storage, executors, bad input

TEST_CASE("binary: bits per weight, counted by hand") {
    const matrix<float> w = gaussian_matrix(4, 8, 121);
    // XNOR/ARB: 32 sign bits + 4 rows · (α, μ) · 16 = 160 bits over 32 weights.
    const auto xn = binarize_xnor(w.view());
    CHECK(xn.storage.total_bits() == 160);
    CHECK(xn.storage.bits_per_weight() == 5.0);
    CHECK(binarize_arb(w.view()).storage.total_bits() == 160);
    // ARB-RC: 32 sign bits + (4 + 8) scales · 16 = 224 bits.
    CHECK(binarize_arb_rc(w.view()).storage.total_bits() == 224);
    CHECK(binarize_arb_rc(w.view()).storage.bits_per_weight() == 7.0);

    // BiLLM, out 2, in 8, blocks of 4 with exactly one salient column each:
    // B1 16 + B2 2·2 + group bitmap 2·(8 − 2) + column bitmap 8 + 2 blocks · 2 rows · 7 fp16.
    const matrix<float> w2 = gaussian_matrix(2, 8, 122);
    matrix<double> h(8, 8);
    for (std::size_t i = 0; i < 8; ++i) h(i, i) = 1.0 + 0.1 * double(i);
    billm_options opt;
    opt.block_size = 4;
    opt.min_salient = opt.max_salient = 1;
    const auto bi = binarize_billm(w2.view(), h, opt);
    CHECK(bi.storage.sign_bits == 16);
    CHECK(bi.storage.residual_sign_bits == 4);
    CHECK(bi.storage.bitmap_bits == 12 + 8);
    CHECK(bi.storage.half_values == 28);
    CHECK(bi.storage.total_bits() == 16 + 4 + 20 + 448);
    CHECK(bi.storage.bits_per_weight() == 30.5);
    // 128-wide blocks: 2.875 bits per weight whatever k is, plus 1/out for the column bitmap.
    const matrix<float> w3 = gaussian_matrix(64, 256, 123);
    matrix<double> h3(256, 256);
    for (std::size_t i = 0; i < 256; ++i) h3(i, i) = 1.0;
    const auto b3 = binarize_billm(w3.view(), h3);
    CHECK(b3.storage.total_bits() == 47360);
    CHECK(b3.storage.bits_per_weight() == 2.890625);
}

TEST_CASE("binary: results do not depend on the executor") {
    const std::size_t out = 40, in = 48;
    const streams s = make_streams(100, in, 131);
    const matrix<float> w = gaussian_matrix(out, in, 132);
    const matrix<double> h = hessian_of(s);
    billm_options bopt;
    bopt.block_size = 16;
    const auto a1 = binarize_output_aligned(w.view(), s.cross, s.gram);
    const auto x1 = binarize_arb_x(w.view(), s.gram);
    const auto b1 = binarize_billm(w.view(), h, bopt);
    set_parallel_executor(serial_executor);
    const auto a2 = binarize_output_aligned(w.view(), s.cross, s.gram);
    const auto x2 = binarize_arb_x(w.view(), s.gram);
    const auto b2 = binarize_billm(w.view(), h, bopt);
    set_parallel_executor(nullptr);
    CHECK(std::ranges::equal(a1.dequantized.flat(), a2.dequantized.flat()));
    CHECK(a1.objective == a2.objective);
    CHECK(std::ranges::equal(x1.dequantized.flat(), x2.dequantized.flat()));
    CHECK(std::ranges::equal(b1.dequantized.flat(), b2.dequantized.flat()));
    CHECK(b1.proxy_loss == b2.proxy_loss);
}

TEST_CASE("binary: bad input is a qift::error naming it") {
    const matrix<float> w = gaussian_matrix(3, 4, 141);
    const matrix<float> empty;
    matrix<double> eye(4, 4);
    for (std::size_t i = 0; i < 4; ++i) eye(i, i) = 1.0;
    CHECK_THROWS_WITH_AS(binarize_xnor(empty.view()), doctest::Contains("w is empty"), qift::error);
    matrix<float> wn = w;
    wn(1, 2) = std::nanf("");
    CHECK_THROWS_WITH_AS(binarize_arb(wn.view()), doctest::Contains("w(1, 2)"), qift::error);
    CHECK_THROWS_AS(binarize_arb_rc(wn.view()), qift::error);
    CHECK_THROWS_AS(binarize_billm(wn.view(), eye), qift::error);
    arb_options neg;
    neg.iterations = -1;
    CHECK_THROWS_WITH_AS(binarize_arb(w.view(), neg), doctest::Contains("iterations"), qift::error);

    // Grams: shape, finiteness, symmetry, positive semi-definiteness.
    const matrix<double> wrong(5, 5);
    CHECK_THROWS_WITH_AS(binarize_arb_x(w.view(), wrong), doctest::Contains("gram is 5x5"),
                         qift::error);
    CHECK_THROWS_WITH_AS(binarize_output_aligned(w.view(), wrong, eye),
                         doctest::Contains("cross is 5x5"), qift::error);
    CHECK_THROWS_WITH_AS(binarize_output_aligned(w.view(), eye, wrong),
                         doctest::Contains("gram is 5x5"), qift::error);
    matrix<double> bad = eye;
    bad(0, 3) = INFINITY;
    CHECK_THROWS_WITH_AS(binarize_output_aligned(w.view(), bad, eye),
                         doctest::Contains("cross(0, 3)"), qift::error);
    bad = eye;
    bad(2, 1) = 0.5;
    CHECK_THROWS_WITH_AS(binarize_arb_x(w.view(), bad), doctest::Contains("not symmetric"),
                         qift::error);
    bad(1, 2) = 0.5;
    CHECK_NOTHROW(binarize_arb_x(w.view(), bad));
    bad(1, 2) = bad(2, 1) = 2.0;  // eigenvalue 1 − 2 < 0
    CHECK_THROWS_WITH_AS(binarize_output_aligned(w.view(), eye, bad),
                         doctest::Contains("not positive semi-definite"), qift::error);
    // The cross Gram need not be symmetric.
    bad = eye;
    bad(0, 1) = 0.3;
    CHECK_NOTHROW(binarize_output_aligned(w.view(), bad, eye));
    // A rank-deficient Gram is PSD and accepted.
    matrix<double> rank1(4, 4, 1.0);
    CHECK_NOTHROW(binarize_output_aligned(w.view(), rank1, rank1));
    CHECK_THROWS_AS(output_alignment_loss(w.view(), empty.view(), eye, eye), qift::error);

    // BiLLM: Hessian and options.
    CHECK_THROWS_WITH_AS(binarize_billm(w.view(), wrong), doctest::Contains("hessian is 5x5"),
                         qift::error);
    bad = eye;
    bad(3, 3) = -1.0;
    CHECK_THROWS_WITH_AS(binarize_billm(w.view(), bad), doctest::Contains("hessian(3, 3)"),
                         qift::error);
    bad = eye;
    bad(0, 1) = 0.2;
    CHECK_THROWS_WITH_AS(binarize_billm(w.view(), bad), doctest::Contains("not symmetric"),
                         qift::error);
    bad(1, 0) = 0.2;
    bad(0, 1) = bad(1, 0) = 5.0;  // indefinite; damping 0.01·mean diag cannot fix it at once
    billm_options opt;
    opt.max_retries = 0;
    CHECK_THROWS_WITH_AS(binarize_billm(w.view(), bad, opt),
                         doctest::Contains("not positive definite"), qift::error);
    opt.max_retries = 5;  // damp up to 1000·mean diag: positive definite again
    CHECK_NOTHROW(binarize_billm(w.view(), bad, opt));
    opt = {};
    opt.block_size = 0;
    CHECK_THROWS_WITH_AS(binarize_billm(w.view(), eye, opt), doctest::Contains("block_size"),
                         qift::error);
    opt = {};
    opt.min_salient = 5;
    opt.max_salient = 2;
    CHECK_THROWS_AS(binarize_billm(w.view(), eye, opt), qift::error);
    opt = {};
    opt.break_point_quantiles = {0.5, 1.5};
    CHECK_THROWS_WITH_AS(binarize_billm(w.view(), eye, opt), doctest::Contains("1.5"), qift::error);
    opt.break_point_quantiles = {};
    CHECK_THROWS_AS(binarize_billm(w.view(), eye, opt), qift::error);
    opt = {};
    opt.damp = -0.1;
    CHECK_THROWS_AS(binarize_billm(w.view(), eye, opt), qift::error);
}
