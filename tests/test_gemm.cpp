// SPDX-License-Identifier: MIT
// Tests of gemm.hpp: tiled GEMM bit-exact with the scalar reference and with gemv token by
// token, float paths within 1e-5 of dequantize-then-matmul, M not a multiple of the tile.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include <qift/gemm.hpp>

#include "test_support.hpp"

namespace {

using qift::test::gaussian_matrix;
using qift::test::quantize_fast;

void check_close(const qift::matrix<float>& y, const qift::matrix<float>& w,
                 const qift::matrix<float>& x) {
    for (std::size_t t = 0; t < x.rows(); ++t)
        CHECK(qift::test::max_product_error(y.row(t), w, x.row(t)) <= 1e-5);
}

bool equal(const qift::matrix<float>& a, const qift::matrix<float>& b) {
    return std::equal(a.flat().begin(), a.flat().end(), b.flat().begin());
}

}  // namespace

TEST_CASE_TEMPLATE("integer gemm is bit-exact with the reference and with gemv", L,
                   qift::levels::pot_mnz, qift::levels::mnz, qift::levels::asymmetric,
                   qift::levels::int4) {
    unsigned seed = 1;
    for (std::size_t tokens : {1u, 3u, 17u, 70u})
        for (std::size_t rows : {5u, 18u})
            for (std::size_t cols : {129u, 1000u}) {
                const auto w = gaussian_matrix(rows, cols, seed++);
                const auto x = gaussian_matrix(tokens, cols, seed++);
                const auto q = quantize_fast<L>(w);
                const qift::packed_matrix<L> p(q);
                const auto a = qift::quantize_activations(x, 0.9f);
                qift::matrix<float> y(tokens, rows), yr(tokens, rows);
                qift::gemm_reference(p, a, yr);
                qift::gemm(p, a, y);
                CHECK(equal(y, yr));
#if defined(__AVX2__)
                qift::gemm(p, a, y, xsimd::avx2{});
                CHECK(equal(y, yr));
#endif
#if defined(__SSE4_2__)
                qift::gemm(p, a, y, xsimd::sse4_2{});
                CHECK(equal(y, yr));
#endif
                const auto xq = qift::dequantize(a);
                check_close(yr, q.dequantize(), xq);
                if (tokens == 3) {
                    for (std::size_t t = 0; t < tokens; ++t) {
                        const auto at = qift::quantize_activations(x.row(t), 0.9f);
                        std::vector<float> yt(rows);
                        qift::gemv(p, at, yt);
                        for (std::size_t r = 0; r < rows; ++r) CHECK(yt[r] == y(t, r));
                    }
                }
            }
}

TEST_CASE_TEMPLATE("float W2A16 gemm matches dequantize-then-matmul", L, qift::levels::nf2,
                   qift::levels::lloyd, qift::levels::mnz) {
    unsigned seed = 50;
    for (std::size_t tokens : {1u, 3u, 17u})
        for (std::size_t cols : {77u, 513u}) {
            const std::size_t rows = 9;
            const auto w = gaussian_matrix(rows, cols, seed++);
            const auto x = gaussian_matrix(tokens, cols, seed++);
            const auto q = quantize_fast<L>(w);
            const qift::packed_matrix<L> p(q);
            const auto wq = q.dequantize();
            qift::matrix<float> y(tokens, rows);
            qift::gemm_reference(p, x, y);
            check_close(y, wq, x);
            qift::gemm(p, x, y);
            check_close(y, wq, x);
#if defined(__AVX2__) && defined(__FMA__)
            qift::gemm(p, x, y, xsimd::avx2{});
            check_close(y, wq, x);
#endif
#if defined(__SSE4_2__)
            qift::gemm(p, x, y, xsimd::sse4_2{});
            check_close(y, wq, x);
#endif
        }
}

TEST_CASE("gemm rejects bad shapes") {
    const auto w = gaussian_matrix(4, 64, 3);
    const qift::packed_matrix<qift::levels::pot_mnz> p(quantize_fast<qift::levels::pot_mnz>(w));
    const auto a = qift::quantize_activations(gaussian_matrix(3, 64, 4));
    qift::matrix<float> bad(3, 5), good(3, 4);
    CHECK_THROWS_AS(qift::gemm(p, a, bad), qift::error);
    CHECK_NOTHROW(qift::gemm(p, a, good));
    const auto x = gaussian_matrix(3, 65, 5);
    CHECK_THROWS_AS(qift::gemm(p, x, good), qift::error);
}
