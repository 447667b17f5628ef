// SPDX-License-Identifier: MIT
// Tests of gptq.hpp and detail/linalg.hpp: the blocked kernels against scalar references, GPTQ
// against RTN and against a straightforward unblocked, non-lazy GPTQ written here.
#include <doctest/doctest.h>

#include <qift/gptq.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using namespace qift;

namespace {

matrix<float> gptq_random_matrix(std::size_t rows, std::size_t cols, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    matrix<float> m(rows, cols);
    for (auto& v : m.flat()) v = nd(rng);
    return m;
}

// Calibration inputs with correlated features: x = z·M, M a random mixing matrix plus a
// per-feature scale spread over two orders of magnitude.
matrix<float> correlated_inputs(std::size_t tokens, std::size_t in, unsigned seed) {
    const matrix<float> z = gptq_random_matrix(tokens, in, seed);
    const matrix<float> m = gptq_random_matrix(in, in, seed + 1);
    matrix<float> x(tokens, in);
    for (std::size_t t = 0; t < tokens; ++t)
        for (std::size_t j = 0; j < in; ++j) {
            double s = 3.0 * z(t, j);
            for (std::size_t k = 0; k < in; ++k) s += double(z(t, k)) * m(k, j) * 0.3;
            x(t, j) = static_cast<float>(s * std::pow(10.0, double(j % 7) / 3.0 - 1.0));
        }
    return x;
}

matrix<double> hessian_of(const matrix<float>& x) {
    hessian_accumulator acc(x.cols());
    acc.add(x.view());
    return acc.hessian();
}

// ‖(W − Q)·Xᵀ‖²
double output_error(const matrix<float>& w, const matrix<float>& q, const matrix<float>& x) {
    double s = 0.0;
    for (std::size_t t = 0; t < x.rows(); ++t)
        for (std::size_t r = 0; r < w.rows(); ++r) {
            double y = 0.0;
            for (std::size_t c = 0; c < w.cols(); ++c)
                y += (double(w(r, c)) - double(q(r, c))) * double(x(t, c));
            s += y * y;
        }
    return s;
}

// The reference's three steps, naively in double: L = chol(H), H⁻¹ = L⁻ᵀL⁻¹, U = chol_upper(H⁻¹).
matrix<double> naive_hinv_upper(const matrix<double>& h) {
    const std::size_t n = h.rows();
    matrix<double> l(n, n), li(n, n), hinv(n, n), u(n, n);
    for (std::size_t j = 0; j < n; ++j) {
        double d = h(j, j);
        for (std::size_t k = 0; k < j; ++k) d -= l(j, k) * l(j, k);
        l(j, j) = std::sqrt(d);
        for (std::size_t i = j + 1; i < n; ++i) {
            double s = h(i, j);
            for (std::size_t k = 0; k < j; ++k) s -= l(i, k) * l(j, k);
            l(i, j) = s / l(j, j);
        }
    }
    for (std::size_t j = 0; j < n; ++j) {
        li(j, j) = 1.0 / l(j, j);
        for (std::size_t i = j + 1; i < n; ++i) {
            double s = 0.0;
            for (std::size_t k = j; k < i; ++k) s += l(i, k) * li(k, j);
            li(i, j) = -s / l(i, i);
        }
    }
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j) {
            double s = 0.0;
            for (std::size_t k = std::max(i, j); k < n; ++k) s += li(k, i) * li(k, j);
            hinv(i, j) = s;
        }
    for (std::size_t i = 0; i < n; ++i) {
        double d = hinv(i, i);
        for (std::size_t k = 0; k < i; ++k) d -= u(k, i) * u(k, i);
        u(i, i) = std::sqrt(d);
        for (std::size_t j = i + 1; j < n; ++j) {
            double s = hinv(i, j);
            for (std::size_t k = 0; k < i; ++k) s -= u(k, i) * u(k, j);
            u(i, j) = s / u(i, i);
        }
    }
    return u;
}

struct naive_result {
    matrix<std::uint8_t> codes;  // original order
    matrix<float> deq;           // original order
    double loss = 0.0;
};

// Straightforward GPTQ: one column at a time, every remaining column updated at once (no
// blocks, no lazy updates), reading the reference's semantics off methods.md §4. The only trace
// of blocks is `snapshot_every`: dynamic groups read W as it stood at the last multiple of the
// block size, as the reference does.
template <level_set L>
naive_result naive_gptq(const matrix<float>& w0, matrix<double> h, const gptq_options& opt) {
    const std::size_t out = w0.rows(), n = w0.cols(), g = opt.scale.group_size;
    scale_options sopt = opt.scale;
    sopt.group_size = 0;
    std::vector<channel_params> params(out);
    if (g == 0)
        for (std::size_t r = 0; r < out; ++r) params[r] = find_params<L>(w0.row(r), sopt);
    matrix<float> w = w0;
    for (std::size_t j = 0; j < n; ++j)
        if (h(j, j) == 0.0) {
            h(j, j) = 1.0;
            for (std::size_t r = 0; r < out; ++r) w(r, j) = 0.0f;
        }
    std::vector<std::vector<channel_params>> stat(out);
    if (g && opt.static_groups)
        for (std::size_t r = 0; r < out; ++r)
            for (std::size_t k = 0; k < n / g; ++k)
                stat[r].push_back(find_params<L>(w.row(r).subspan(k * g, g), sopt));
    std::vector<std::size_t> perm(n);
    std::iota(perm.begin(), perm.end(), std::size_t{0});
    if (opt.act_order)
        std::stable_sort(perm.begin(), perm.end(),
                         [&](std::size_t a, std::size_t b) { return h(a, a) > h(b, b); });
    matrix<double> hp(n, n);
    matrix<float> wp(out, n);
    double mean = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = 0; j < n; ++j) hp(i, j) = h(perm[i], perm[j]);
        for (std::size_t r = 0; r < out; ++r) wp(r, i) = w(r, perm[i]);
        mean += hp(i, i);
    }
    for (std::size_t i = 0; i < n; ++i) hp(i, i) += opt.damp * mean / double(n);
    const matrix<double> u = naive_hinv_upper(hp);
    naive_result res{matrix<std::uint8_t>(out, n), matrix<float>(out, n), 0.0};
    matrix<float> snap = wp;
    for (std::size_t i = 0; i < n; ++i) {
        if (i % opt.block_size == 0) snap = wp;
        for (std::size_t r = 0; r < out; ++r) {
            if (g && !opt.static_groups && i % g == 0)
                params[r] = find_params<L>(snap.row(r).subspan(i, g), sopt);
            if (g && opt.static_groups) params[r] = stat[r][perm[i] / g];
            const float d = static_cast<float>(u(i, i));
            const std::uint8_t c = quantize_value<L>(wp(r, i), params[r]);
            const float q = dequantize_value<L>(c, params[r]);
            const float e = (wp(r, i) - q) / d;
            res.loss += double(wp(r, i) - q) * double(wp(r, i) - q) / (double(d) * double(d));
            res.codes(r, perm[i]) = c;
            res.deq(r, perm[i]) = q;
            for (std::size_t j = i + 1; j < n; ++j) wp(r, j) -= e * static_cast<float>(u(i, j));
        }
    }
    return res;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Kernels

TEST_CASE_TEMPLATE("gemm_sub matches the scalar reference", T, float, double) {
    for (const auto& dims : {std::array<std::size_t, 3>{1, 1, 1},
                             {7, 13, 5},
                             {33, 50, 130},
                             {100, 17, 260},
                             {9, 200, 3}}) {
        const std::size_t m = dims[0], n = dims[1], k = dims[2];
        CAPTURE(m);
        CAPTURE(n);
        CAPTURE(k);
        const matrix<float> af = gptq_random_matrix(m, k + 3, 1),
                            bf = gptq_random_matrix(k, n + 2, 2),
                            cf = gptq_random_matrix(m, n + 1, 3);
        matrix<T> a(m, k + 3), b(k, n + 2), c(m, n + 1), ref;
        for (std::size_t i = 0; i < a.size(); ++i) a.data()[i] = static_cast<T>(af.data()[i]);
        for (std::size_t i = 0; i < b.size(); ++i) b.data()[i] = static_cast<T>(bf.data()[i]);
        for (std::size_t i = 0; i < c.size(); ++i) c.data()[i] = static_cast<T>(cf.data()[i]);
        ref = c;
        // Strided sub-views: stride > cols on every operand.
        const matrix_view<const T> av(a.data(), m, k, k + 3), bv(b.data(), k, n, n + 2);
        detail::gemm_sub<T>({c.data(), m, n, n + 1}, av, bv);
        detail::gemm_sub_scalar<T>({ref.data(), m, n, n + 1}, av, bv);
        double worst = 0.0;
        for (std::size_t i = 0; i < m; ++i) {
            for (std::size_t j = 0; j < n; ++j)
                worst = std::max(worst, std::abs(double(c(i, j)) - double(ref(i, j))));
            CHECK(c(i, n) == ref(i, n));  // the column outside the view is untouched
        }
        CHECK(worst <= (std::is_same_v<T, float> ? 1e-3 : 1e-11) * double(k));
    }
}

TEST_CASE("inverse_cholesky_upper_transposed equals the reference's three-step factor") {
    for (std::size_t n : {1u, 5u, 127u, 129u, 300u}) {
        CAPTURE(n);
        matrix<double> h = hessian_of(correlated_inputs(n + 20, n, 7));
        for (std::size_t i = 0; i < n; ++i) h(i, i) += 0.01;
        const matrix<double> u = naive_hinv_upper(h);
        matrix<double> ut(n, n);
        REQUIRE(detail::inverse_cholesky_upper_transposed<double>(h.view(), ut.view()));
        double worst = 0.0, scale = 0.0;
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j < n; ++j) {
                worst = std::max(worst, std::abs(ut(j, i) - u(i, j)));
                scale = std::max(scale, std::abs(u(i, j)));
            }
        CHECK(worst <= 1e-9 * scale);
    }
}

TEST_CASE("inverse_cholesky_upper_transposed in float: the reference's factor to float accuracy") {
    for (std::size_t n : {1u, 5u, 127u, 129u, 300u}) {
        CAPTURE(n);
        matrix<double> h = hessian_of(correlated_inputs(n + 20, n, 7));
        for (std::size_t i = 0; i < n; ++i) h(i, i) += 0.01;
        const matrix<double> u = naive_hinv_upper(h);
        matrix<float> ut(n, n, 7.0f);  // stale contents must not leak into the result
        REQUIRE(detail::inverse_cholesky_upper_transposed<float>(h.view(), ut.view()));
        double worst = 0.0, scale = 0.0;
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j < n; ++j) {
                worst = std::max(worst, std::abs(double(ut(j, i)) - u(i, j)));
                scale = std::max(scale, std::abs(u(i, j)));
                if (i < j) CHECK(ut(i, j) == 0.0f);
            }
        MESSAGE("n = " << n << ": worst |float − double| / max |U| = " << worst / scale);
        CHECK(worst <= 1e-3 * scale);
    }
}

TEST_CASE("antitranspose_lower maps x(a, b) to x(n−1−b, n−1−a) and zeros the upper triangle") {
    for (std::size_t n : {1u, 2u, 31u, 32u, 33u, 70u, 129u}) {
        CAPTURE(n);
        matrix<float> x(n, n), ref(n, n);
        for (std::size_t a = 0; a < n; ++a)
            for (std::size_t b = 0; b < n; ++b) x(a, b) = static_cast<float>(a * 1000 + b);
        for (std::size_t a = 0; a < n; ++a)
            for (std::size_t b = 0; b <= a; ++b) ref(a, b) = x(n - 1 - b, n - 1 - a);
        detail::antitranspose_lower<float>(x.view());
        CHECK(std::ranges::equal(x.flat(), ref.flat()));
    }
}

TEST_CASE("inverse_cholesky_upper_transposed reports an indefinite matrix") {
    matrix<double> h(200, 200);
    for (std::size_t i = 0; i < 200; ++i) h(i, i) = 1.0;
    h(150, 150) = -1.0;
    matrix<double> ut(200, 200);
    CHECK_FALSE(detail::inverse_cholesky_upper_transposed<double>(h.view(), ut.view()));
}

TEST_CASE("hessian_accumulator: (2/N)·XᵀX, independent of how the tokens are batched") {
    const std::size_t in = 37, tokens = 300;
    const matrix<float> x = gptq_random_matrix(tokens, in, 11);
    hessian_accumulator one(in), three(in);
    one.add(x.view());
    three.add(matrix_view<const float>(x.data(), 100, in));
    three.add(matrix_view<const float>(x.data() + 100 * in, 50, in));
    three.add(matrix_view<const float>(x.data() + 150 * in, 150, in));
    CHECK(one.samples() == tokens);
    CHECK(three.samples() == tokens);
    const matrix<double> a = one.hessian(), b = three.hessian();
    for (std::size_t i = 0; i < in; ++i)
        for (std::size_t j = 0; j < in; ++j) {
            double s = 0.0;
            for (std::size_t t = 0; t < tokens; ++t) s += double(x(t, i)) * double(x(t, j));
            s *= 2.0 / double(tokens);
            CHECK(a(i, j) == doctest::Approx(s).epsilon(1e-12));
            CHECK(b(i, j) == doctest::Approx(s).epsilon(1e-12));
            CHECK(a(i, j) == a(j, i));
        }
    CHECK_THROWS_AS(one.add(matrix_view<const float>(x.data(), 3, in - 1)), qift::error);
    CHECK_THROWS_AS(hessian_accumulator(0), qift::error);
}

// ---------------------------------------------------------------------------------------
// GPTQ

#define QIFT_GPTQ_LEVEL_SETS                                                                    \
    levels::standard, levels::asymmetric, levels::mnz, levels::pot_mnz, levels::nf2,            \
        levels::lloyd, levels::pm12, levels::ternary, levels::int3, levels::int4, levels::e2m1, \
        levels::binary

TEST_CASE_TEMPLATE("gptq with H = I is round-to-nearest with the same scales", L,
                   QIFT_GPTQ_LEVEL_SETS) {
    const std::size_t out = 19, in = 96;
    const matrix<float> w = gptq_random_matrix(out, in, 21);
    matrix<double> h(in, in);
    for (std::size_t i = 0; i < in; ++i) h(i, i) = 1.0;
    for (std::size_t group : {0u, 32u}) {
        CAPTURE(group);
        gptq_options opt;
        opt.block_size = 40;
        opt.scale.group_size = group;
        const auto res = gptq<L>(w.view(), h, opt);
        const auto rtn = quantize<L>(w.view(), opt.scale);
        CHECK(res.quantized.group_size() == rtn.group_size());
        CHECK(std::ranges::equal(res.quantized.codes().flat(), rtn.codes().flat()));
        CHECK(std::ranges::equal(res.quantized.scales().flat(), rtn.scales().flat()));
        CHECK(std::ranges::equal(res.quantized.zeros().flat(), rtn.zeros().flat()));
        const matrix<float> dq = rtn.dequantize();
        CHECK(std::ranges::equal(res.dequantized.flat(), dq.flat()));
        // d = 1/√1.01 for every column: the loss is 1.01·Σ(w − q)².
        double sq = 0.0;
        for (std::size_t i = 0; i < w.size(); ++i)
            sq += double(w.data()[i] - dq.data()[i]) * double(w.data()[i] - dq.data()[i]);
        CHECK(res.proxy_loss == doctest::Approx(1.01 * sq).epsilon(1e-5));
        CHECK(res.retries == 0);
        CHECK(res.damping == 0.01);
    }
}

TEST_CASE_TEMPLATE("gptq beats round-to-nearest on correlated inputs", L, QIFT_GPTQ_LEVEL_SETS) {
    const std::size_t out = 16, in = 64;
    const matrix<float> w = gptq_random_matrix(out, in, 31);
    const matrix<float> x = correlated_inputs(256, in, 32);
    const matrix<double> h = hessian_of(x);
    for (std::size_t group : {0u, 16u}) {
        for (bool act_order : {false, true}) {
            CAPTURE(group);
            CAPTURE(act_order);
            gptq_options opt;
            opt.block_size = 32;
            opt.act_order = act_order;
            opt.scale.group_size = group;
            const auto res = gptq<L>(w.view(), h, opt);
            const matrix<float> rtn = fake_quantize<L>(w.view(), opt.scale);
            CHECK(output_error(w, res.dequantized, x) < output_error(w, rtn, x));
        }
    }
}

TEST_CASE_TEMPLATE("gptq matches an unblocked, non-lazy implementation", L, levels::mnz,
                   levels::asymmetric, levels::standard, levels::nf2, levels::int4) {
    const std::size_t out = 13, in = 96;
    const matrix<float> w = gptq_random_matrix(out, in, 41);
    const matrix<double> h = hessian_of(correlated_inputs(200, in, 42));
    struct config {
        std::size_t block, group;
        bool act_order, static_groups;
    };
    for (const config cfg :
         {config{32, 0, false, false}, config{32, 0, true, false}, config{32, 32, false, false},
          config{32, 16, false, false}, config{32, 16, true, false}, config{24, 48, true, false},
          config{32, 16, true, true}, config{128, 32, false, true}, config{7, 0, true, false}}) {
        CAPTURE(cfg.block);
        CAPTURE(cfg.group);
        CAPTURE(cfg.act_order);
        CAPTURE(cfg.static_groups);
        gptq_options opt;
        opt.block_size = cfg.block;
        opt.act_order = cfg.act_order;
        opt.static_groups = cfg.static_groups;
        opt.scale.group_size = cfg.group;
        const auto res = gptq<L>(w.view(), h, opt);
        const naive_result ref = naive_gptq<L>(w, h, opt);
        std::size_t mismatches = 0;
        for (std::size_t i = 0; i < w.size(); ++i)
            mismatches += res.quantized.codes().data()[i] != ref.codes.data()[i];
        CHECK(mismatches == 0);
        double worst = 0.0;
        for (std::size_t i = 0; i < w.size(); ++i)
            worst =
                std::max(worst, double(std::abs(res.dequantized.data()[i] - ref.deq.data()[i])));
        CHECK(worst <= 1e-4);
        // The proxy loss is the sum of the per-column losses of the straightforward loop.
        CHECK(res.proxy_loss == doctest::Approx(ref.loss).epsilon(1e-4));
        // quantized (original order, possibly per-column parameters) reproduces dequantized.
        const matrix<float> dq = res.quantized.dequantize();
        CHECK(std::ranges::equal(dq.flat(), res.dequantized.flat()));
        // and so do group_scales/group_zeros indexed through g_idx.
        for (std::size_t r = 0; r < out; ++r)
            for (std::size_t c = 0; c < in; ++c) {
                const std::size_t k = res.g_idx[c];
                const channel_params p{res.group_scales(r, k), level_traits<L>::has_zero_point
                                                                   ? res.group_zeros(r, k)
                                                                   : 0.0f};
                REQUIRE(dequantize_value<L>(res.quantized.codes()(r, c), p) ==
                        res.dequantized(r, c));
            }
    }
}

TEST_CASE("gptq act-order: permutation by descending diag(H), undone in the output") {
    const std::size_t out = 11, in = 48;
    const matrix<float> w = gptq_random_matrix(out, in, 51);
    const matrix<double> h = hessian_of(correlated_inputs(150, in, 52));
    gptq_options opt;
    opt.block_size = 16;
    opt.act_order = true;
    const auto res = gptq<levels::mnz>(w.view(), h, opt);
    REQUIRE(res.permutation.size() == in);
    std::vector<std::size_t> sorted = res.permutation;
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t i = 0; i < in; ++i) CHECK(sorted[i] == i);
    for (std::size_t i = 1; i < in; ++i)
        CHECK(h(res.permutation[i - 1], res.permutation[i - 1]) >=
              h(res.permutation[i], res.permutation[i]));
    // Shuffling the columns of W and H (consistently) shuffles the result the same way.
    std::vector<std::size_t> pi(in);
    std::iota(pi.begin(), pi.end(), std::size_t{0});
    std::shuffle(pi.begin(), pi.end(), std::mt19937(53));
    matrix<float> w2(out, in);
    matrix<double> h2(in, in);
    for (std::size_t i = 0; i < in; ++i) {
        for (std::size_t r = 0; r < out; ++r) w2(r, i) = w(r, pi[i]);
        for (std::size_t j = 0; j < in; ++j) h2(i, j) = h(pi[i], pi[j]);
    }
    const auto res2 = gptq<levels::mnz>(w2.view(), h2, opt);
    for (std::size_t r = 0; r < out; ++r)
        for (std::size_t i = 0; i < in; ++i) {
            CHECK(res2.quantized.codes()(r, i) == res.quantized.codes()(r, pi[i]));
            CHECK(res2.dequantized(r, i) == doctest::Approx(res.dequantized(r, pi[i])));
        }
    CHECK(res2.proxy_loss == doctest::Approx(res.proxy_loss).epsilon(1e-5));
}

TEST_CASE("gptq handles rank-deficient and singular Hessians") {
    const std::size_t out = 9, in = 40;
    const matrix<float> w = gptq_random_matrix(out, in, 61);
    matrix<float> x = gptq_random_matrix(10, in, 62);  // 10 tokens: rank ≤ 10 < 40
    for (std::size_t t = 0; t < x.rows(); ++t) x(t, 5) = x(t, 17) = 0.0f;  // two dead columns
    const matrix<double> h = hessian_of(x);
    gptq_options opt;
    opt.block_size = 16;
    opt.act_order = true;
    const auto res = gptq<levels::asymmetric>(w.view(), h, opt);
    CHECK(res.dead_columns == 2);
    CHECK(res.retries == 0);
    for (float v : res.dequantized.flat()) CHECK(std::isfinite(v));
    CHECK(std::isfinite(res.proxy_loss));
    // A dead column is isolated in H, so nothing propagates into it: its zeros stay exact
    // (0 is a level of the affine set).
    for (std::size_t r = 0; r < out; ++r) {
        CHECK(res.dequantized(r, 5) == 0.0f);
        CHECK(res.dequantized(r, 17) == 0.0f);
    }
    // Without damping a singular H fails the factorization: damping is raised and reported.
    opt.damp = 0.0;
    const auto retried = gptq<levels::asymmetric>(w.view(), h, opt);
    CHECK(retried.retries >= 1);
    CHECK(retried.damping > 0.0);
    CHECK(retried.damping_absolute > 0.0);
    // An all-zero Hessian: every column dead, H becomes I.
    const matrix<double> zero(in, in);
    const auto all_dead = gptq<levels::mnz>(w.view(), zero, opt);
    CHECK(all_dead.dead_columns == in);
}

TEST_CASE("gptq gives up on an indefinite Hessian with a qift::error") {
    const std::size_t in = 8;
    const matrix<float> w = gptq_random_matrix(3, in, 71);
    matrix<double> h(in, in);
    for (std::size_t i = 0; i < in; ++i) h(i, i) = 1.0;
    h(0, 1) = h(1, 0) = 50.0;  // eigenvalue −49; ×10 damping twice is not enough
    gptq_options opt;
    opt.max_retries = 2;
    CHECK_THROWS_WITH_AS(gptq<levels::mnz>(w.view(), h, opt),
                         doctest::Contains("not positive definite"), qift::error);
    opt.max_retries = 5;  // damp 0.01·10⁴ = 100 > 49 succeeds
    const auto res = gptq<levels::mnz>(w.view(), h, opt);
    CHECK(res.retries == 4);
    CHECK(res.damping == doctest::Approx(100.0));
}

TEST_CASE("gptq validates its inputs") {
    const matrix<float> w = gptq_random_matrix(4, 8, 81);
    matrix<double> h(8, 8);
    for (std::size_t i = 0; i < 8; ++i) h(i, i) = 1.0;
    const matrix<double> wrong(7, 7);
    CHECK_THROWS_WITH_AS(gptq<levels::mnz>(w.view(), wrong), doctest::Contains("7x7"), qift::error);
    gptq_options opt;
    opt.scale.group_size = 3;
    CHECK_THROWS_WITH_AS(gptq<levels::mnz>(w.view(), h, opt), doctest::Contains("group_size 3"),
                         qift::error);
    opt = {};
    opt.block_size = 0;
    CHECK_THROWS_AS(gptq<levels::mnz>(w.view(), h, opt), qift::error);
    opt = {};
    opt.damp = -1.0;
    CHECK_THROWS_AS(gptq<levels::mnz>(w.view(), h, opt), qift::error);
    matrix<double> bad = h;
    bad(2, 3) = std::nan("");
    CHECK_THROWS_WITH_AS(gptq<levels::mnz>(w.view(), bad), doctest::Contains("hessian(2, 3)"),
                         qift::error);
    bad = h;
    bad(4, 4) = -2.0;
    CHECK_THROWS_AS(gptq<levels::mnz>(w.view(), bad), qift::error);
    matrix<float> wn = w;
    wn(1, 2) = INFINITY;
    CHECK_THROWS_AS(gptq<levels::mnz>(wn.view(), h), qift::error);
}

TEST_CASE("gptq: float Hessian, progress reports and parallel executors agree") {
    const std::size_t out = 40, in = 64;
    const matrix<float> w = gptq_random_matrix(out, in, 91);
    const matrix<double> h = hessian_of(correlated_inputs(120, in, 92));
    matrix<float> hf(in, in);
    for (std::size_t i = 0; i < h.size(); ++i) hf.data()[i] = static_cast<float>(h.data()[i]);
    gptq_options opt;
    opt.block_size = 16;
    std::size_t calls = 0, last = 0, total = 0;
    opt.progress = [&](std::size_t done, std::size_t all) {
        ++calls;
        CHECK(done > last);
        last = done;
        total = all;
    };
    const auto a = gptq<levels::pot_mnz>(w.view(), h, opt);
    CHECK(calls > 0);
    CHECK(last == out * in);
    CHECK(total == out * in);
    opt.progress = nullptr;
    set_parallel_executor(serial_executor);
    const auto b = gptq<levels::pot_mnz>(w.view(), h, opt);
    set_parallel_executor(nullptr);
    CHECK(std::ranges::equal(a.quantized.codes().flat(), b.quantized.codes().flat()));
    CHECK(a.proxy_loss == b.proxy_loss);
    const auto c = gptq<levels::pot_mnz>(w.view(), hf, opt);
    std::size_t same = 0;
    for (std::size_t i = 0; i < w.size(); ++i)
        same += a.quantized.codes().data()[i] == c.quantized.codes().data()[i];
    CHECK(same >= w.size() * 95 / 100);  // H rounded to float: nearly the same codes
}

TEST_CASE("gptq: sizes that overflow size_t are refused before allocating") {
    constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
    // in × in doubles: the count wraps at in = 2^32; at 2^30 it is 2^63 bytes, over PTRDIFF_MAX.
    CHECK_THROWS_WITH_AS(hessian_accumulator(std::size_t{1} << 32),
                         doctest::Contains("hessian_accumulator: in x in: size 4294967296 x "
                                           "4294967296"),
                         error);
    CHECK_THROWS_WITH_AS(hessian_accumulator(std::size_t{1} << 30),
                         doctest::Contains("exceeds the largest allocation"), error);
    // The sample count must not wrap either (it scales H).
    hessian_accumulator h(3);
    const std::vector<float> x = {1.0f, 2.0f, 3.0f};
    h.add(matrix_view<const float>(x.data(), 1, 3), max - 1);
    CHECK_THROWS_WITH_AS(h.add(matrix_view<const float>(x.data(), 1, 3), 2),
                         doctest::Contains("hessian_accumulator::add: samples"), error);
    CHECK(h.samples() == max - 1);
}
