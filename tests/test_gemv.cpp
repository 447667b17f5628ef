// SPDX-License-Identifier: MIT
// Tests of gemv.hpp: integer kernels bit-exact against the scalar reference on every x86 path,
// every path within 1e-5 of dequantize-then-matmul, odd shapes, extreme codes and activations.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include <qift/gemv.hpp>

#include "test_support.hpp"

namespace {

using qift::test::gaussian_matrix;
using qift::test::quantize_fast;

// |y − Σ w·x| <= 1e-5 · Σ|w·x| for token t, in double from the dequantized operands.
void check_close(std::span<const float> y, const qift::matrix<float>& w,
                 const qift::matrix<float>& x, std::size_t t) {
    CHECK(qift::test::max_product_error(y, w, x.row(t)) <= 1e-5);
}

template <class L, class Arch>
void check_integer_arch(const qift::packed_matrix<L>& p, const qift::quantized_activations& a,
                        const std::vector<float>& ref, Arch arch) {
    std::vector<float> y(p.rows());
    qift::gemv(p, a, y, arch);
    CHECK(y == ref);
    std::vector<float> y2(p.rows());
    qift::gemv_shift_add(p, a, y2, arch);
    CHECK(y2 == ref);
}

template <class L>
void check_integer_gemv(const qift::quantized_matrix<L>& q, const qift::quantized_activations& a) {
    const qift::packed_matrix<L> p(q);
    std::vector<float> ref(p.rows());
    qift::gemv_reference(p, a, ref);
    check_integer_arch(p, a, ref, xsimd::default_arch{});
#if defined(__AVX2__)
    check_integer_arch(p, a, ref, xsimd::avx2{});
#endif
#if defined(__SSE4_2__)
    check_integer_arch(p, a, ref, xsimd::sse4_2{});
#endif
    check_close(ref, q.dequantize(), qift::dequantize(a), 0);
}

}  // namespace

TEST_CASE_TEMPLATE("integer gemv is bit-exact with the reference and matches float matmul", L,
                   qift::levels::pot_mnz, qift::levels::mnz, qift::levels::standard,
                   qift::levels::asymmetric, qift::levels::int4, qift::levels::ternary,
                   qift::levels::e2m1) {
    unsigned seed = 1;
    for (std::size_t rows : {1u, 5u, 13u})
        for (std::size_t cols : {1u, 63u, 256u, 257u, 4097u}) {
            const auto w = gaussian_matrix(rows, cols, seed++);
            const auto x = gaussian_matrix(1, cols, seed++);
            check_integer_gemv(quantize_fast<L>(w), qift::quantize_activations(x, 0.9f));
        }
}

TEST_CASE_TEMPLATE("integer gemv: extreme activations and weights, K = 65536", L,
                   qift::levels::pot_mnz, qift::levels::mnz, qift::levels::asymmetric,
                   qift::levels::int4, qift::levels::e2m1) {
    using T = qift::level_traits<L>;
    for (std::size_t cols : {300u, 65536u}) {
        // rows: every code at its largest and smallest integer level, and a mixed row
        std::uint8_t cmin = 0, cmax = 0;
        for (std::uint8_t c = 0; c < T::count; ++c) {
            if (T::integer_levels[c] < T::integer_levels[cmin]) cmin = c;
            if (T::integer_levels[c] > T::integer_levels[cmax]) cmax = c;
        }
        qift::matrix<std::uint8_t> codes(3, cols);
        for (std::size_t k = 0; k < cols; ++k) {
            codes(0, k) = cmin;
            codes(1, k) = cmax;
            codes(2, k) = static_cast<std::uint8_t>(k % T::count);
        }
        qift::matrix<float> scales(3, 1, 0.01f);
        qift::matrix<float> zeros =
            T::has_zero_point ? qift::matrix<float>(3, 1, 2.0f) : qift::matrix<float>();
        const qift::quantized_matrix<L> q(codes, scales, zeros, cols);
        qift::matrix<float> lo(1, cols, -1.0f), hi(1, cols, 1.0f);
        const auto a_lo = qift::quantize_activations(lo, 0.5f, qift::a4_range::full);
        REQUIRE(a_lo.code(0, 0) == -8);
        const auto a_hi = qift::quantize_activations(hi);
        REQUIRE(a_hi.code(0, 0) == 7);
        check_integer_gemv(q, a_lo);
        check_integer_gemv(q, a_hi);
        const qift::packed_matrix<L> p(q);
        std::vector<float> y(3);
        qift::gemv(p, a_lo, y);
        const float lmin = float(T::integer_levels[cmin]) - (T::has_zero_point ? 2.0f : 0.0f);
        CHECK(y[0] == doctest::Approx(0.01f / float(T::integer_multiplier) * a_lo.scales[0] *
                                      (lmin * -8.0f * float(cols))));
    }
}

TEST_CASE_TEMPLATE("float W2A16 gemv matches dequantize-then-matmul", L, qift::levels::nf2,
                   qift::levels::lloyd, qift::levels::pot_mnz, qift::levels::asymmetric,
                   qift::levels::int4) {
    unsigned seed = 100;
    for (std::size_t rows : {1u, 6u, 11u})
        for (std::size_t cols : {1u, 65u, 256u, 4097u}) {
            const auto w = gaussian_matrix(rows, cols, seed++);
            const auto x = gaussian_matrix(1, cols, seed++);
            const auto q = quantize_fast<L>(w);
            const qift::packed_matrix<L> p(q);
            const auto wq = q.dequantize();
            std::vector<float> y(rows), yr(rows);
            qift::gemv_reference(p, x.row(0), yr);
            check_close(yr, wq, x, 0);
            qift::gemv(p, x.row(0), y);
            check_close(y, wq, x, 0);
#if defined(__AVX2__) && defined(__FMA__)
            qift::gemv(p, x.row(0), y, xsimd::avx2{});
            check_close(y, wq, x, 0);
#endif
#if defined(__SSE4_2__)
            qift::gemv(p, x.row(0), y, xsimd::sse4_2{});
            check_close(y, wq, x, 0);
#endif
        }
}

TEST_CASE("packed_matrix and gemv reject bad input") {
    const auto w = gaussian_matrix(4, 64, 7);
    qift::scale_options opt;
    opt.rule = qift::scale_rule::max;
    opt.group_size = 32;
    const auto grouped = qift::quantize<qift::levels::mnz>(w, opt);
    CHECK_THROWS_AS(qift::packed_matrix<qift::levels::mnz>{grouped}, qift::error);
    const qift::packed_matrix<qift::levels::mnz> p(quantize_fast<qift::levels::mnz>(w));
    CHECK(p.rows() == 4);
    CHECK(p.cols() == 64);
    CHECK(p.code_bytes() == 4 * 64);
    const auto a = qift::quantize_activations(gaussian_matrix(1, 63, 8));
    std::vector<float> y(4), y3(3);
    CHECK_THROWS_AS(qift::gemv(p, a, y), qift::error);
    const auto a2 = qift::quantize_activations(gaussian_matrix(2, 64, 8));
    CHECK_THROWS_AS(qift::gemv(p, a2, y), qift::error);
    const auto a1 = qift::quantize_activations(gaussian_matrix(1, 64, 8));
    CHECK_THROWS_AS(qift::gemv(p, a1, y3), qift::error);
    std::vector<float> x(63);
    CHECK_THROWS_AS(qift::gemv(p, x, y), qift::error);
}

TEST_CASE("gemv splits rows over threads with the same result") {
    const auto w = gaussian_matrix(301, 4097, 9);
    const auto x = gaussian_matrix(1, 4097, 10);
    const qift::packed_matrix<qift::levels::pot_mnz> p(quantize_fast<qift::levels::pot_mnz>(w));
    const auto a = qift::quantize_activations(x);
    std::vector<float> y_serial(301), y_par(301);
    qift::set_parallel_executor(qift::serial_executor);
    qift::gemv(p, a, y_serial);
    qift::set_parallel_executor(nullptr);
    qift::gemv(p, a, y_par);
    CHECK(y_serial == y_par);
}

TEST_CASE_TEMPLATE("integer gemv tiles (AVX-512 4-row, AVX2 2-row): odd row counts, long rows", L,
                   qift::levels::pot_mnz, qift::levels::mnz, qift::levels::int4, qift::levels::e2m1,
                   qift::levels::asymmetric) {
    unsigned seed = 500;
    for (std::size_t rows : {2u, 3u, 7u, 37u})
        for (std::size_t cols : {511u, 1000u, 4100u}) {
            const auto w = gaussian_matrix(rows, cols, seed++);
            const auto x = gaussian_matrix(1, cols, seed++);
            check_integer_gemv(quantize_fast<L>(w),
                               qift::quantize_activations(x, 0.8f, qift::a4_range::full));
        }
}

TEST_CASE("gemv: serial, the default pool and the spawning executor agree, call after call") {
    const auto w = gaussian_matrix(517, 2100, 21);
    const auto x = gaussian_matrix(1, 2100, 22);
    const qift::packed_matrix<qift::levels::mnz> p(quantize_fast<qift::levels::mnz>(w));
    const qift::packed_matrix<qift::levels::nf2> pf(quantize_fast<qift::levels::nf2>(w));
    const auto a = qift::quantize_activations(x);
    std::vector<float> ref(517), ref_f(517), y(517), yf(517);
    qift::set_parallel_executor(qift::serial_executor);
    qift::gemv(p, a, ref);
    qift::gemv(pf, x.row(0), ref_f);
    for (int exec = 0; exec < 2; ++exec) {
        qift::set_parallel_executor(
            exec == 0 ? qift::parallel_executor(nullptr)
                      : qift::parallel_executor(qift::detail::std_thread_executor));
        for (int call = 0; call < 20; ++call) {
            qift::gemv(p, a, y);
            CHECK(y == ref);
            qift::gemv(pf, x.row(0), yf);
            CHECK(yf == ref_f);  // rows are independent: the split does not change rounding
        }
    }
    qift::set_parallel_executor(nullptr);
}
