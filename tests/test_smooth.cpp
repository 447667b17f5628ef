// SPDX-License-Identifier: MIT
// Tests of smooth.hpp: channel quantiles against sorting, the streaming sketch against its error
// bound, closed forms of the scale rule, exactness of smoothing, the layer error against a
// reference written here, the straight-through gradient against finite differences of its
// frozen-noise surrogate, the projection, the joint search and training on a layer with massive
// outlier channels, and bad input.
#include <qift/act.hpp>
#include <qift/hadamard.hpp>
#include <qift/levels.hpp>
#include <qift/scale.hpp>
#include <qift/smooth.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "test_support.hpp"

using namespace qift;

namespace {

/// X [tokens][n] ~ N(0, 1) with four massive outlier channels, 50, 80, 120 and 200× the rest.
matrix<float> outlier_activations(std::size_t tokens, std::size_t n, std::uint32_t seed) {
    auto x = test::gaussian_matrix(tokens, n, seed);
    const std::size_t channels[4] = {3, 17, n / 2, n - 5};
    const float factor[4] = {50.0f, 80.0f, 120.0f, 200.0f};
    for (std::size_t t = 0; t < tokens; ++t)
        for (int k = 0; k < 4; ++k) x(t, channels[k]) *= factor[k];
    return x;
}

/// A·Bᵀ in double for A [m][k], B [n][k].
std::vector<double> product_transposed(matrix_view<const float> a, matrix_view<const float> b) {
    std::vector<double> c(a.rows * b.rows, 0.0);
    for (std::size_t i = 0; i < a.rows; ++i)
        for (std::size_t j = 0; j < b.rows; ++j) {
            double sum = 0.0;
            for (std::size_t p = 0; p < a.cols; ++p) sum += double(a(i, p)) * double(b(j, p));
            c[i * b.rows + j] = sum;
        }
    return c;
}

double squared_distance(const std::vector<double>& a, const std::vector<double>& b) {
    double e = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) e += (a[i] - b[i]) * (a[i] - b[i]);
    return e;
}

/// The exact linear-interpolation quantile of |v| by sorting: the reference of the tests.
float sorted_quantile(std::vector<float> v, double q) {
    for (float& x : v) x = std::fabs(x);
    std::sort(v.begin(), v.end());
    const double p = q * static_cast<double>(v.size() - 1);
    const auto lo = static_cast<std::size_t>(std::floor(p));
    if (lo + 1 >= v.size()) return v.back();
    const double frac = p - std::floor(p);
    if (frac == 0.0) return v[lo];
    return static_cast<float>(double(v[lo]) + frac * (double(v[lo + 1]) - double(v[lo])));
}

std::vector<float> column(const matrix<float>& x, std::size_t j) {
    std::vector<float> c(x.rows());
    for (std::size_t t = 0; t < x.rows(); ++t) c[t] = x(t, j);
    return c;
}

/// E at s = 1 written here: X and W rotated by H (or not), A4 per token and Q_w per row by
/// qift's own quantizers, the product and the error in double.
template <level_set L>
double plain_rotation_error(const matrix<float>& x, const matrix<float>& w,
                            const std::optional<rotation>& h) {
    auto xr = x, wr = w;
    if (h) {
        h->rotate_rows(xr);
        h->fold_into_input(wr);
    }
    const matrix<float> aq = dequantize(quantize_activations(xr));
    const matrix<float> bq = fake_quantize<L>(wr, default_smooth_weight_scale<L>());
    return squared_distance(product_transposed(x, w), product_transposed(aq, bq));
}

/// The frozen-noise surrogate F(δ) of smooth_layer::error_and_gradient, in double with the
/// explicit rotation matrix: noise N = Q(·) − (·) at s0 from qift's quantizers, kept constant
/// (ste_scales::constant) or scaled per row by the ratio of the row's scale measure (max|row|,
/// or the range for affine sets) to its value at s0 (ste_scales::differentiated).
template <level_set L>
struct frozen_surrogate {
    frozen_surrogate(const matrix<float>& x_, const matrix<float>& w_, std::vector<float> s0_,
                     const std::optional<rotation>& h, ste_scales mode_)
        : x(x_), w(w_), s0(std::move(s0_)), mode(mode_), n(x_.cols()) {
        hd.assign(n * n, 0.0);
        const matrix<float> q = h ? h->to_matrix() : matrix<float>();
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j < n; ++j) hd[i * n + j] = h ? double(q(i, j)) : i == j;
        y = product_transposed(x, w);
        auto a0 = smooth_activations(x, s0);
        auto b0 = smooth_weights(w, s0);
        if (h) {
            h->rotate_rows(a0);
            h->rotate_rows(b0);
        }
        const matrix<float> aq = dequantize(quantize_activations(a0));
        const matrix<float> bq = fake_quantize<L>(b0, default_smooth_weight_scale<L>());
        noise_a = difference(aq, a0, measure_a0, false);
        noise_w = difference(bq, b0, measure_w0, level_traits<L>::has_zero_point);
    }

    static double measure(std::span<const double> row, bool range) {
        double lo = 0.0, hi = 0.0, m = 0.0;
        for (double v : row)
            lo = std::min(lo, v), hi = std::max(hi, v), m = std::max(m, std::fabs(v));
        return range ? hi - lo : m;
    }

    std::vector<double> difference(const matrix<float>& q, const matrix<float>& v,
                                   std::vector<double>& measures, bool range) const {
        std::vector<double> d(q.size());
        measures.resize(q.rows());
        for (std::size_t r = 0; r < q.rows(); ++r) {
            std::vector<double> row(v.row(r).begin(), v.row(r).end());
            measures[r] = measure(row, range);
            for (std::size_t c = 0; c < n; ++c) d[r * n + c] = double(q(r, c)) - double(v(r, c));
        }
        return d;
    }

    // rows·diag(scale)·H plus the frozen noise, in double.
    std::vector<double> perturbed(const matrix<float>& m, const std::vector<double>& scale,
                                  const std::vector<double>& noise,
                                  const std::vector<double>& measures0, bool range) const {
        std::vector<double> out(m.rows() * n, 0.0), pre(n);
        for (std::size_t r = 0; r < m.rows(); ++r) {
            for (std::size_t i = 0; i < n; ++i) pre[i] = double(m(r, i)) * scale[i];
            double* o = out.data() + r * n;
            for (std::size_t i = 0; i < n; ++i)
                for (std::size_t k = 0; k < n; ++k) o[k] += pre[i] * hd[i * n + k];
            double ratio = 1.0;
            if (mode == ste_scales::differentiated && measures0[r] > 0.0)
                ratio = measure({o, n}, range) / measures0[r];
            for (std::size_t k = 0; k < n; ++k) o[k] += noise[r * n + k] * ratio;
        }
        return out;
    }

    double operator()(const std::vector<double>& delta) const {
        std::vector<double> inv(n), mul(n);
        for (std::size_t j = 0; j < n; ++j) {
            const double s = double(s0[j]) * std::exp(delta[j]);
            inv[j] = 1.0 / s;
            mul[j] = s;
        }
        const auto a = perturbed(x, inv, noise_a, measure_a0, false);
        const auto b = perturbed(w, mul, noise_w, measure_w0, level_traits<L>::has_zero_point);
        double e = 0.0;
        for (std::size_t t = 0; t < x.rows(); ++t)
            for (std::size_t o = 0; o < w.rows(); ++o) {
                double p = 0.0;
                for (std::size_t k = 0; k < n; ++k) p += a[t * n + k] * b[o * n + k];
                const double d = y[t * w.rows() + o] - p;
                e += d * d;
            }
        return e;
    }

    const matrix<float>& x;
    const matrix<float>& w;
    std::vector<float> s0;
    ste_scales mode;
    std::size_t n;
    std::vector<double> hd, y, noise_a, noise_w, measure_a0, measure_w0;
};

/// Runs the finite-difference check of the gradient for one configuration; returns the largest
/// component error relative to the largest component.
template <level_set L>
double gradient_check(const std::optional<rotation>& h, ste_scales mode, std::uint32_t seed) {
    const std::size_t tokens = 20, n = 32, out = 12;
    auto x = test::gaussian_matrix(tokens, n, seed);
    for (std::size_t t = 0; t < tokens; ++t) x(t, 5) *= 30.0f;
    const auto w = test::gaussian_matrix(out, n, seed + 1, 0.1f);
    std::mt19937 gen(seed + 2);
    std::normal_distribution<float> nd(0.0f, 0.4f);
    std::vector<float> s(n);
    for (float& v : s) v = std::exp(nd(gen));
    const smooth_layer<L> layer(x, w, h);
    std::vector<double> grad(n);
    const double e = layer.error_and_gradient(s, grad, mode);
    const frozen_surrogate<L> f(x, w, s, h, mode);
    std::vector<double> delta(n, 0.0);
    CHECK(f(delta) == doctest::Approx(e).epsilon(1e-5));  // the same noise as the library
    const double step = 1e-4;
    double worst = 0.0, largest = 0.0;
    for (std::size_t j = 0; j < n; ++j) {
        delta[j] = step;
        const double up = f(delta);
        delta[j] = -step;
        const double down = f(delta);
        delta[j] = 0.0;
        const double fd = (up - down) / (2 * step);
        worst = std::max(worst, std::fabs(fd - grad[j]));
        largest = std::max(largest, std::fabs(fd));
    }
    CHECK(largest > 1e-3 * e);  // the gradient is not trivially zero
    return worst / largest;
}

}  // namespace

TEST_CASE("smooth: channel quantiles equal sorting for every level and tiny token counts") {
    const double levels[] = {1e-9, 0.1, 0.25, 0.5, 0.9, 0.99, 0.995, 0.9999, 1.0};
    for (std::size_t tokens : {1u, 2u, 3u, 5u, 64u, 257u}) {
        auto x = test::gaussian_matrix(tokens, 5, static_cast<std::uint32_t>(tokens));
        for (std::size_t t = 0; t < tokens; ++t) x(t, 2) = std::round(x(t, 2) * 2.0f);  // ties
        const matrix<float> all = channel_quantiles(x, levels);
        REQUIRE(all.rows() == std::size(levels));
        REQUIRE(all.cols() == 5);
        for (std::size_t i = 0; i < std::size(levels); ++i) {
            const auto one = channel_quantile(x, levels[i]);
            for (std::size_t j = 0; j < 5; ++j) {
                CHECK(all(i, j) == sorted_quantile(column(x, j), levels[i]));
                CHECK(one[j] == all(i, j));
            }
        }
        CHECK(channel_quantile(x, 1.0) == channel_absmax(x));
    }
    // levels in any order, repeated, and a strided view
    auto big = test::gaussian_matrix(100, 40, 9);
    const matrix_view<const float> view(big.data(), 100, 33, 40);
    const double shuffled[] = {0.99, 0.5, 1.0, 0.5, 0.9};
    const matrix<float> q = channel_quantiles(view, shuffled);
    for (std::size_t i = 0; i < std::size(shuffled); ++i)
        for (std::size_t j = 0; j < 33; ++j)
            CHECK(q(i, j) == sorted_quantile(column(big, j), shuffled[i]));
}

TEST_CASE("smooth: the streaming sketch stays within its relative error bound") {
    const std::size_t n = 6, tokens = 608;
    std::mt19937 gen(3);
    std::normal_distribution<double> nd(0.0, 2.0);
    matrix<float> x(tokens, n);
    for (std::size_t t = 0; t < tokens; ++t) {
        for (std::size_t j = 0; j < n; ++j)
            x(t, j) = static_cast<float>(std::exp(nd(gen)) * (t % 2 ? 1 : -1));  // ~1e-3..1e3
        x(t, 3) = t % 10 == 0 ? 0.0f : x(t, 3);                                  // 10% zeros
        x(t, 4) = 0.75f;                                                         // constant
    }
    const double levels[] = {0.05, 0.5, 0.9, 0.99, 0.995, 0.999, 0.9999, 1.0};
    const matrix<float> exact = channel_quantiles(x, levels);
    for (double eps : {0.01, 0.05}) {
        channel_quantile_sketch sketch(n, eps);
        CHECK(sketch.tokens() == 0);
        std::size_t t0 = 0;
        for (std::size_t batch : {1u, 7u, 100u, 500u}) {
            sketch.add(matrix_view<const float>(x.data() + t0 * n, batch, n));
            t0 += batch;
        }
        sketch.add(matrix_view<const float>(x.data(), 0, n));  // no-op
        REQUIRE(sketch.tokens() == tokens);
        const matrix<float> est = sketch.quantiles(levels);
        double worst = 0.0;
        for (std::size_t i = 0; i < std::size(levels); ++i)
            for (std::size_t j = 0; j < n; ++j) {
                const double ex = exact(i, j), e = est(i, j);
                // tight bound where the order statistics are in range; zeros add < min_value
                CHECK(std::fabs(e - ex) <= eps * ex * (1 + 1e-6) + (j == 3 ? 1e-6 : 0.0));
                if (ex > 0) worst = std::max(worst, std::fabs(e - ex) / ex);
            }
        MESSAGE("epsilon " << eps << ": worst relative error " << worst);
        CHECK(worst > eps / 20);  // the estimate is not accidentally exact
        const auto top = sketch.quantile(1.0);
        CHECK(top == channel_absmax(x));
        CHECK(sketch.absmax() == channel_absmax(x));
    }
    CHECK(channel_quantile_sketch(11008).buckets() == 1385);  // the documented memory
}

TEST_CASE("smooth: closed forms of the scale rule") {
    const std::size_t n = 24;
    const auto x = outlier_activations(50, n, 4);
    const auto w = test::gaussian_matrix(16, n, 5, 0.05f);
    const auto a = channel_absmax(x);
    const auto wmax = weight_channel_max(w);
    const auto s1 = smoothrot_scales(a, w, 1.0);
    const auto s0 = smoothrot_scales(a, w, 0.0);
    const auto sh = smoothrot_scales(a, w, 0.5);
    for (std::size_t j = 0; j < n; ++j) {
        CHECK(s1[j] == a[j]);
        CHECK(s0[j] == doctest::Approx(1.0 / wmax[j]).epsilon(1e-6));
        CHECK(sh[j] == doctest::Approx(std::sqrt(double(a[j]) / wmax[j])).epsilon(1e-6));
    }
    CHECK(smooth_scales(a, wmax, 0.3) == smoothrot_scales(a, w, 0.3));
    CHECK(smoothrot_quantile_scales(x, w, 0.3, 1.0) == smoothrot_scales(a, w, 0.3));
    CHECK(smoothrot_quantile_scales(x, w, 0.3, 0.9) ==
          smoothrot_scales(channel_quantile(x, 0.9), w, 0.3));
    // the clamp at 1e-5
    const std::vector<float> tiny{1e-12f, 2.0f}, one{1.0f, 1.0f};
    CHECK(smooth_scales(tiny, one, 1.0) == std::vector<float>{smooth_min_scale, 2.0f});
    // signed max: column 0 is {-5, 0.5}, column 1 is {2, -3}
    const matrix<float> ws = [] {
        matrix<float> m(2, 2);
        m(0, 0) = -5.0f, m(1, 0) = 0.5f, m(0, 1) = 2.0f, m(1, 1) = -3.0f;
        return m;
    }();
    CHECK(weight_channel_max(ws) == std::vector<float>{5.0f, 3.0f});
    CHECK(weight_channel_max(ws, weight_statistic::signed_max) == std::vector<float>{0.5f, 2.0f});
    CHECK(smoothrot_scales(one, ws, 0.0, weight_statistic::signed_max) ==
          std::vector<float>{2.0f, 0.5f});
}

TEST_CASE("smooth: smoothing is exact, X·Wᵀ = (X/s)·(W·diag s)ᵀ, and E without quantizers is 0") {
    const std::size_t n = 48;
    const auto x = outlier_activations(40, n, 6);
    const auto w = test::gaussian_matrix(20, n, 7, 0.05f);
    std::mt19937 gen(8);
    std::uniform_real_distribution<float> u(-4.6f, 4.6f);  // s in [0.01, 100]
    std::vector<float> s(n);
    for (float& v : s) v = std::exp(u(gen));
    const auto y = product_transposed(x, w);
    const auto ys = product_transposed(smooth_activations(x, s), smooth_weights(w, s));
    double worst = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < y.size(); ++i)
        worst = std::max(worst, std::fabs(y[i] - ys[i])), norm = std::max(norm, std::fabs(y[i]));
    CHECK(worst <= 1e-5 * norm);
    smooth_quantizers<> none;
    none.activations = false;
    none.weights = false;
    for (const std::optional<rotation>& h :
         {std::optional<rotation>{}, std::optional<rotation>(rotation::for_size(n, 3))}) {
        const smooth_layer<> layer(x, w, h, none);
        CHECK(layer.error(s) <= 1e-9 * layer.reference_energy());
        CHECK(
            layer.reference_energy() ==
            doctest::Approx(squared_distance(y, std::vector<double>(y.size(), 0.0))).epsilon(1e-5));
    }
}

TEST_CASE_TEMPLATE("smooth: s = 1 gives the error of plain rotation", L, levels::int4, levels::mnz,
                   levels::pot_mnz) {
    const std::size_t n = 64;
    const auto x = outlier_activations(70, n, 10);
    const auto w = test::gaussian_matrix(24, n, 11, 0.05f);
    const std::vector<float> ones(n, 1.0f);
    for (const std::optional<rotation>& h :
         {std::optional<rotation>{}, std::optional<rotation>(rotation::for_size(n, 12))}) {
        const smooth_layer<L> layer(x, w, h);
        const double e = layer.error(ones);
        CHECK(e == doctest::Approx(plain_rotation_error<L>(x, w, h)).epsilon(1e-4));
        CHECK(smooth_error<L>(x, w, ones, h) == e);
    }
    // the seed constructor is rotation::for_size(n, seed)
    const smooth_layer<L> seeded(x, w, 12);
    CHECK(seeded.error(ones) == smooth_layer<L>(x, w, rotation::for_size(n, 12)).error(ones));
}

TEST_CASE_TEMPLATE("smooth: the vectorized weight fake-quant is bit-identical with quantize<L>", L,
                   levels::int4, levels::mnz, levels::pot_mnz, levels::asymmetric_int<4>,
                   levels::e2m1) {
    auto w = test::gaussian_matrix(6, 77, 80);
    for (std::size_t c = 0; c < 77; ++c) w(5, c) = 0.0f;  // an all-zero row: scale 0
    // values exactly on the decision thresholds of row 0's scale
    const channel_params p0 = find_params<L>(w.row(0), default_smooth_weight_scale<L>());
    for (std::size_t k = 0; k < level_traits<L>::thresholds.size() && k + 10 < 77; ++k)
        w(0, k + 10) = p0.scale * (level_traits<L>::thresholds[k] - p0.zero);
    const matrix<float> ref = fake_quantize<L>(w, default_smooth_weight_scale<L>());
    for (std::size_t r = 0; r < w.rows(); ++r) {
        std::vector<float> row(w.row(r).begin(), w.row(r).end());
        detail::fake_quantize_span<L>(row,
                                      find_params<L>(w.row(r), default_smooth_weight_scale<L>()));
        for (std::size_t c = 0; c < row.size(); ++c) {
            CHECK(row[c] == ref(r, c));
            CHECK(std::signbit(row[c]) == std::signbit(ref(r, c)));
        }
    }
}

TEST_CASE("smooth: E is invariant to a power-of-two rescaling of s, bit for bit") {
    const std::size_t n = 64;
    const auto x = outlier_activations(33, n, 13);
    const auto w = test::gaussian_matrix(17, n, 14, 0.05f);
    const smooth_layer<> layer(x, w);
    const auto s = smoothrot_scales(channel_absmax(x), w, 0.5);
    const double e = layer.error(s);
    for (float c : {0.125f, 2.0f, 32.0f}) {
        std::vector<float> sc(s);
        for (float& v : sc) v *= c;
        CHECK(layer.error(sc) == e);
    }
}

TEST_CASE("smooth: the straight-through gradient equals finite differences of its surrogate") {
    const std::optional<rotation> none, h = rotation::hadamard(32, 7);
    for (ste_scales mode : {ste_scales::constant, ste_scales::differentiated}) {
        CAPTURE(static_cast<int>(mode));
        CHECK(gradient_check<levels::int4>(h, mode, 20) < 1e-4);
        CHECK(gradient_check<levels::int4>(none, mode, 21) < 1e-4);
        CHECK(gradient_check<levels::mnz>(h, mode, 22) < 1e-4);
        CHECK(gradient_check<levels::asymmetric_int<4>>(h, mode, 23) < 1e-4);
    }
    // The two modes differ, so the check above tells them apart.
    const auto x = outlier_activations(20, 32, 24);
    const auto w = test::gaussian_matrix(12, 32, 25, 0.1f);
    const smooth_layer<> layer(x, w, h);
    const std::vector<float> s(32, 1.0f);
    std::vector<double> gc(32), gd(32);
    layer.error_and_gradient(s, gc, ste_scales::constant);
    layer.error_and_gradient(s, gd, ste_scales::differentiated);
    double diff = 0.0, norm = 0.0;
    for (std::size_t j = 0; j < 32; ++j)
        diff = std::max(diff, std::fabs(gc[j] - gd[j])), norm = std::max(norm, std::fabs(gd[j]));
    CHECK(diff > 0.1 * norm);
}

TEST_CASE("smooth: a token subset's gradient is that of a layer of those tokens, rescaled") {
    const std::size_t n = 32;
    const auto x = outlier_activations(150, n, 30);
    const auto w = test::gaussian_matrix(70, n, 31, 0.05f);
    const smooth_layer<> layer(x, w);
    const auto s = smoothrot_scales(channel_absmax(x), w, 0.5);
    std::vector<double> full(n), all(n), part(n), sub(n);
    const double e = layer.error_and_gradient(s, full);
    std::vector<std::size_t> every(150);
    for (std::size_t t = 0; t < 150; ++t) every[t] = t;
    CHECK(layer.error_and_gradient(s, all, every) == e);
    CHECK(all == full);
    const std::vector<std::size_t> subset{0, 2, 3, 64, 65, 100, 149};
    CHECK(layer.error_and_gradient(s, part, subset) == e);  // E stays over all tokens
    matrix<float> xs(subset.size(), n);
    for (std::size_t i = 0; i < subset.size(); ++i) std::copy_n(&x(subset[i], 0), n, &xs(i, 0));
    const smooth_layer<> small(xs, w);
    small.error_and_gradient(s, sub);
    for (std::size_t j = 0; j < n; ++j)
        CHECK(part[j] == doctest::Approx(sub[j] * 150.0 / 7.0).epsilon(1e-6));
}

TEST_CASE("smooth: the exact projection onto the box and the zero-mean hyperplane") {
    std::mt19937 gen(40);
    std::normal_distribution<double> nd(0.3, 1.5);
    for (int trial = 0; trial < 20; ++trial) {
        std::vector<double> y(57);
        for (double& v : y) v = nd(gen);
        std::vector<double> d = y;
        detail::project_box_zero_mean(d, 1.0);
        double sum = 0.0;
        for (double v : d) {
            sum += v;
            CHECK(std::fabs(v) <= 1.0);
        }
        CHECK(std::fabs(sum) <= 1e-12);
        // KKT: d = clamp(y − λ, −1, 1) for one λ
        double lambda = std::numeric_limits<double>::quiet_NaN();
        for (std::size_t j = 0; j < y.size(); ++j)
            if (std::fabs(d[j]) < 1.0) lambda = y[j] - d[j];
        REQUIRE(std::isfinite(lambda));
        for (std::size_t j = 0; j < y.size(); ++j)
            CHECK(d[j] == doctest::Approx(std::clamp(y[j] - lambda, -1.0, 1.0)).epsilon(1e-12));
        // a feasible point stays where it is
        std::vector<double> again = d;
        detail::project_box_zero_mean(again, 1.0);
        for (std::size_t j = 0; j < d.size(); ++j) CHECK(again[j] == doctest::Approx(d[j]));
    }
}

TEST_CASE("smooth: the joint search lowers E clearly on massive outlier channels") {
    const std::size_t n = 256;
    const auto x = outlier_activations(256, n, 50);
    const auto w = test::gaussian_matrix(128, n, 51, 0.02f);
    const smooth_layer<> layer(x, w);
    const auto r = smooth_search(layer);
    REQUIRE(r.errors.rows() == 6);
    REQUIRE(r.errors.cols() == 21);
    CHECK(r.alphas == smooth_alpha_grid());
    CHECK(r.rotation_error == layer.error(std::vector<float>(n, 1.0f)));
    MESSAGE("rotation alone " << r.rotation_error << ", smoothed " << r.error << " at alpha "
                              << r.alpha << ", q " << r.quantile);
    CHECK(r.error < 0.2 * r.rotation_error);
    double least = r.errors(0, 0);
    for (double e : r.errors.flat()) least = std::min(least, e);
    CHECK(r.error == least);
    CHECK(r.scales == smoothrot_quantile_scales(x, w, r.alpha, r.quantile));
    CHECK(layer.error(r.scales) == r.error);
    // SmoothRot's own point (q = 1, α = 0.5) also helps; α = 0 and α = 1 are worse than the best
    CHECK(r.errors(5, 10) < 0.2 * r.rotation_error);
    CHECK(r.errors(5, 0) > r.error);
    CHECK(r.errors(5, 20) > r.error);
    // the statistics from a streaming sketch do nearly as well
    channel_quantile_sketch sketch(n);
    sketch.add(matrix_view<const float>(x.data(), 100, n));
    sketch.add(matrix_view<const float>(x.data() + 100 * n, 156, n));
    smooth_search_options opt;
    opt.sketch = &sketch;
    opt.alphas = {0.4, 0.5, 0.6};
    const auto rs = smooth_search(layer, opt);
    CHECK(rs.error < 0.2 * rs.rotation_error);
}

TEST_CASE("smooth: training never increases the fitting E and is deterministic") {
    const std::size_t n = 128;
    const auto x = outlier_activations(256, n, 60);
    const auto w = test::gaussian_matrix(64, n, 61, 0.02f);
    const matrix<float> fit = matrix<float>::from({x.data(), 128, n});
    const matrix<float> held = matrix<float>::from({x.data() + 128 * n, 128, n});
    const smooth_layer<> layer(fit, w);
    smooth_search_options so;
    so.alphas = smooth_alpha_grid(11);
    const auto start = smooth_search(layer, so);
    smooth_training_options opt;
    opt.steps = 30;
    opt.batch_tokens = 64;
    opt.seed = 5;
    const auto r = train_smooth_scales(layer, start.scales, held, opt);
    REQUIRE(r.loss.size() == 31);
    CHECK(r.loss[0] == start.error);
    CHECK(r.initial_error == start.error);
    CHECK(r.error <= start.error);
    CHECK(r.error == *std::min_element(r.loss.begin(), r.loss.end()));
    CHECK(r.error == r.loss[r.best_step]);
    CHECK(layer.error(r.scales) == r.error);
    MESSAGE("fit E " << r.initial_error << " -> " << r.error << " (step " << r.best_step
                     << "), held-out " << r.heldout_initial_error << " -> " << r.heldout_error);
    CHECK(r.error < r.initial_error);  // it does learn something here
    CHECK(std::isfinite(r.heldout_error));
    CHECK(r.heldout_initial_error == smooth_layer<>(held, w).error(start.scales));
    double sum = 0.0;
    for (std::size_t j = 0; j < n; ++j) {
        CHECK(std::fabs(r.delta[j]) <= opt.bound);
        CHECK(r.scales[j] == start.scales[j] * static_cast<float>(std::exp(r.delta[j])));
        sum += r.delta[j];
    }
    CHECK(std::fabs(sum) <= 1e-9);
    // the same seed gives the same run, on one thread or several
    const auto again = train_smooth_scales(layer, start.scales, held, opt);
    CHECK(again.loss == r.loss);
    CHECK(again.scales == r.scales);
    set_parallel_executor(serial_executor);
    const auto serial = train_smooth_scales(layer, start.scales, held, opt);
    set_parallel_executor(nullptr);
    CHECK(serial.loss == r.loss);
    // no steps: the start itself; full batch without held-out tokens
    opt.steps = 0;
    const auto none = train_smooth_scales(layer, start.scales, {}, opt);
    CHECK(none.loss == std::vector<double>{start.error});
    CHECK(none.scales == start.scales);
    CHECK(std::isnan(none.heldout_error));
    opt.steps = 5;
    opt.batch_tokens = 0;
    CHECK(train_smooth_scales(layer, start.scales, {}, opt).error <= start.error);
}

TEST_CASE("smooth: bad input throws qift::error naming the problem") {
    const std::size_t n = 16;
    auto x = test::gaussian_matrix(8, n, 70);
    auto w = test::gaussian_matrix(4, n, 71);
    const auto a = channel_absmax(x);
    const double half[] = {0.5};
    const double zero[] = {0.0};
    CHECK_THROWS_WITH_AS(channel_quantile(x, 0.0), doctest::Contains("(0, 1]"), qift::error);
    CHECK_THROWS_WITH_AS(channel_quantile(x, 1.5), doctest::Contains("got 1.5"), qift::error);
    CHECK_THROWS_WITH_AS(channel_quantiles(x, std::span<const double>{}),
                         doctest::Contains("no levels"), qift::error);
    CHECK_THROWS_WITH_AS(channel_quantiles(matrix<float>(), half), doctest::Contains("empty"),
                         qift::error);
    CHECK_THROWS_WITH_AS(smoothrot_scales(a, w, 1.5), doctest::Contains("alpha"), qift::error);
    CHECK_THROWS_WITH_AS(smoothrot_scales(a, w, -0.1), doctest::Contains("alpha"), qift::error);
    CHECK_THROWS_WITH_AS(smoothrot_scales(std::vector<float>(15, 1.0f), w, 0.5),
                         doctest::Contains("15 activation statistics"), qift::error);
    auto dead = a;
    dead[7] = 0.0f;
    CHECK_THROWS_WITH_AS(smoothrot_scales(dead, w, 0.5), doctest::Contains("channel 7"),
                         qift::error);
    auto wz = w;
    for (std::size_t o = 0; o < 4; ++o) wz(o, 9) = 0.0f;
    CHECK_THROWS_WITH_AS(smoothrot_scales(a, wz, 0.5), doctest::Contains("channel 9"), qift::error);
    auto wneg = w;
    for (std::size_t o = 0; o < 4; ++o) wneg(o, 2) = -std::fabs(wneg(o, 2));
    CHECK_THROWS_WITH_AS(smoothrot_scales(a, wneg, 0.5, weight_statistic::signed_max),
                         doctest::Contains("signed_max"), qift::error);
    auto xnan = x;
    xnan(3, 4) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(channel_absmax(xnan), doctest::Contains("x(3, 4)"), qift::error);
    CHECK_THROWS_WITH_AS(smooth_layer<>(xnan, w), doctest::Contains("x(3, 4)"), qift::error);
    CHECK_THROWS_WITH_AS(smoothrot_quantile_scales(test::gaussian_matrix(8, 15, 1), w, 0.5, 1.0),
                         doctest::Contains("x.cols must equal W.cols"), qift::error);
    CHECK_THROWS_WITH_AS(smooth_layer<>(test::gaussian_matrix(8, 15, 1), w),
                         doctest::Contains("input channels differ"), qift::error);
    CHECK_THROWS_WITH_AS(smooth_layer<>(x, w, rotation::for_size(32, 1)),
                         doctest::Contains("rotation has size 32"), qift::error);
    smooth_quantizers<> clip;
    clip.activation_clip = 0.0f;
    CHECK_THROWS_WITH_AS(smooth_layer<>(x, w, 1, clip), doctest::Contains("activation_clip"),
                         qift::error);
    smooth_quantizers<> groups;
    groups.weight_scale.group_size = 5;
    CHECK_THROWS_WITH_AS(smooth_layer<>(x, w, 1, groups), doctest::Contains("group_size 5"),
                         qift::error);
    const smooth_layer<> layer(x, w);
    std::vector<float> s(n, 1.0f);
    s[11] = -1.0f;
    CHECK_THROWS_WITH_AS(layer.error(s), doctest::Contains("channel 11"), qift::error);
    CHECK_THROWS_WITH_AS(layer.error(std::vector<float>(3, 1.0f)),
                         doctest::Contains("3 scales for 16 channels"), qift::error);
    std::vector<double> g(n);
    const std::vector<float> ones(n, 1.0f);
    std::vector<double> two(2);
    CHECK_THROWS_WITH_AS(layer.error_and_gradient(ones, two), doctest::Contains("grad has 2"),
                         qift::error);
    const std::vector<std::size_t> unsorted{3, 1}, outside{8};
    CHECK_THROWS_WITH_AS(layer.error_and_gradient(ones, g, unsorted),
                         doctest::Contains("strictly increasing"), qift::error);
    CHECK_THROWS_WITH_AS(layer.error_and_gradient(ones, g, outside),
                         doctest::Contains("subset[0] = 8"), qift::error);
    smooth_search_options so;
    so.quantiles = {0.0};
    CHECK_THROWS_WITH_AS(smooth_search(layer, so), doctest::Contains("(0, 1]"), qift::error);
    so.quantiles = {};
    CHECK_THROWS_WITH_AS(smooth_search(layer, so), doctest::Contains("empty grid"), qift::error);
    so = {};
    const channel_quantile_sketch narrow(4);
    so.sketch = &narrow;
    CHECK_THROWS_WITH_AS(smooth_search(layer, so), doctest::Contains("sketch has 4"), qift::error);
    auto xdead = x;
    for (std::size_t t = 0; t < 8; ++t) xdead(t, 6) = 0.0f;
    CHECK_THROWS_WITH_AS(smooth_search(smooth_layer<>(xdead, w)), doctest::Contains("channel 6"),
                         qift::error);
    smooth_training_options to;
    to.bound = 0.0;
    CHECK_THROWS_WITH_AS(train_smooth_scales(layer, ones, {}, to), doctest::Contains("bound 0"),
                         qift::error);
    CHECK_THROWS_WITH_AS(train_smooth_scales(layer, ones, test::gaussian_matrix(2, 5, 1)),
                         doctest::Contains("held-out tokens have 5"), qift::error);
    CHECK_THROWS_WITH_AS(train_smooth_scales(layer, std::vector<float>(n, 0.0f)),
                         doctest::Contains("s0"), qift::error);
    CHECK_THROWS_WITH_AS(channel_quantile_sketch(0), doctest::Contains("channels is 0"),
                         qift::error);
    CHECK_THROWS_WITH_AS(channel_quantile_sketch(4, 0.0), doctest::Contains("relative_error"),
                         qift::error);
    CHECK_THROWS_WITH_AS(channel_quantile_sketch(4, 0.01, 1.0, 0.5), doctest::Contains("min_value"),
                         qift::error);
    channel_quantile_sketch sk(n);
    CHECK_THROWS_WITH_AS(sk.quantile(0.5), doctest::Contains("no tokens"), qift::error);
    CHECK_THROWS_WITH_AS(sk.add(test::gaussian_matrix(2, 5, 1)), doctest::Contains("5 columns"),
                         qift::error);
    CHECK_THROWS_WITH_AS(sk.add(xnan), doctest::Contains("rows(3, 4)"), qift::error);
    sk.add(x);
    CHECK_THROWS_WITH_AS(sk.quantiles(zero), doctest::Contains("(0, 1]"), qift::error);
}

TEST_CASE("smooth: sizes that overflow size_t are refused before allocating") {
    // channels × buckets (1385 per channel at the defaults) wraps, or is over 2^63 bytes.
    CHECK_THROWS_WITH_AS(channel_quantile_sketch(std::size_t{1} << 62),
                         doctest::Contains("channel_quantile_sketch: channels x buckets"),
                         qift::error);
    CHECK_THROWS_WITH_AS(channel_quantile_sketch(std::size_t{1} << 52),
                         doctest::Contains("exceeds the largest allocation"), qift::error);
}
