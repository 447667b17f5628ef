// SPDX-License-Identifier: MIT
// Tests of bitplane.hpp: the layout round-trips every code, the kernels on every compiled target
// agree with the scalar reference and with dequantize-then-matmul to 1e-5 on odd shapes, the
// GEMM rows equal the GEMV bit for bit, threads change nothing, and bad input is rejected.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <qift/bitplane.hpp>

#include "test_support.hpp"

namespace {

using qift::test::gaussian_matrix;
using qift::test::max_product_error;
using qift::test::on_every_target;
using qift::test::quantize_fast;

// A 2-bit set whose levels are not linear in the code bits (-1 + 1 != 0 + 0.5).
struct bitplane_skewed_set {
    static constexpr unsigned bits = 2;
    static constexpr std::array<float, 4> levels{-1.0f, 0.0f, 0.5f, 1.0f};
};

static_assert(qift::bit_linear_level_set<qift::levels::nf2>);
static_assert(qift::bit_linear_level_set<qift::levels::lloyd>);
static_assert(qift::bit_linear_level_set<qift::levels::mnz>);
static_assert(qift::bit_linear_level_set<qift::levels::pot_mnz>);
static_assert(qift::bit_linear_level_set<qift::levels::standard>);
static_assert(qift::bit_linear_level_set<qift::levels::asymmetric>);
static_assert(qift::bit_linear_level_set<qift::levels::ternary>);
static_assert(qift::level_set<bitplane_skewed_set> &&
              !qift::bit_linear_level_set<bitplane_skewed_set>);
static_assert(!qift::bit_linear_level_set<qift::levels::int4>);
static_assert(!qift::bit_linear_level_set<qift::levels::binary>);

// A quantized matrix in bit planes, its dequantized weights and activations [tokens][cols].
template <class L>
struct bitplane_case {
    qift::bitplane_matrix<L> planes;
    qift::matrix<float> weights, x;
};

}  // namespace

TEST_CASE_TEMPLATE("bitplane_matrix stores every code of the packed matrix", L, qift::levels::nf2,
                   qift::levels::ternary, qift::levels::asymmetric) {
    unsigned seed = 1;
    for (std::size_t rows : {1u, 16u, 17u, 33u, 64u})
        for (std::size_t cols : {1u, 29u, 30u, 31u, 61u, 300u, 961u, 1000u}) {
            const auto q = quantize_fast<L>(gaussian_matrix(rows, cols, seed++));
            const qift::packed_matrix<L> p(q);
            const qift::bitplane_matrix<L> b(p);
            CHECK(b.rows() == rows);
            CHECK(b.cols() == cols);
            CHECK(b.tiles() == (rows + 31) / 32);
            CHECK(b.chunks() == (cols + 29) / 30);
            CHECK(b.plane_bytes() == b.tiles() * b.chunks() * 256);
            bool same = true;
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t c = 0; c < cols; ++c)
                    same = same && b.code(r, c) == p.codes().get(r, c);
            CHECK(same);
            // Padding: bits 30-31 of every word, columns past cols and rows past rows are zero.
            std::size_t stray = 0;
            for (std::size_t t = 0; t < b.tiles(); ++t)
                for (std::size_t ch = 0; ch < b.chunks(); ++ch)
                    for (std::size_t w = 0; w < 64; ++w) {
                        const std::uint32_t word = b.chunk_data(t, ch)[w];
                        const std::size_t row = t * 32 + (w / 32) * 16 + w % 16;
                        const std::size_t valid =
                            row < rows ? std::min<std::size_t>(30, cols - std::min(cols, ch * 30))
                                       : 0;
                        if (word >> valid != 0) ++stray;
                    }
            CHECK(stray == 0);
        }
}

TEST_CASE_TEMPLATE("bitplane gemv matches its reference and dequantize-then-matmul on every target",
                   L, qift::levels::nf2, qift::levels::lloyd, qift::levels::mnz,
                   qift::levels::pot_mnz, qift::levels::asymmetric, qift::levels::ternary) {
    unsigned seed = 200;
    std::vector<bitplane_case<L>> cases;
    for (std::size_t rows : {1u, 15u, 16u, 17u, 33u, 70u})
        for (std::size_t cols : {1u, 4u, 5u, 29u, 30u, 31u, 65u, 257u, 4097u}) {
            const auto q = quantize_fast<L>(gaussian_matrix(rows, cols, seed++));
            cases.push_back(
                {qift::bitplane_matrix<L>(q), q.dequantize(), gaussian_matrix(1, cols, seed++)});
            const auto& c = cases.back();
            std::vector<float> yr(rows);
            qift::gemv_reference(c.planes, c.x.row(0), yr);
            CHECK(max_product_error(yr, c.weights, c.x.row(0)) <= 1e-5);
        }
    on_every_target([&]<class Arch>() {
        for (const auto& c : cases) {
            std::vector<float> y(c.planes.rows(), -1.0f);
            qift::gemv(c.planes, c.x.row(0), y, Arch{});
            CHECK(max_product_error(y, c.weights, c.x.row(0)) <= 1e-5);
        }
    });
}

TEST_CASE("bitplane gemv: closed forms on constant codes and large activations") {
    using L = qift::levels::lloyd;
    // Every code c on every weight of a row: y[r] = s_r · L[c] · Σx; x spans 2^±40.
    const std::size_t rows = 40, cols = 97;
    qift::matrix<std::uint8_t> codes(rows, cols);
    qift::matrix<float> scales(rows, 1);
    for (std::size_t r = 0; r < rows; ++r) {
        for (std::size_t k = 0; k < cols; ++k) codes(r, k) = std::uint8_t(r % 4);
        scales(r, 0) = 0.5f + float(r);
    }
    const qift::quantized_matrix<L> q(std::move(codes), std::move(scales), qift::matrix<float>(),
                                      cols);
    const qift::bitplane_matrix<L> b(q);
    std::vector<float> x(cols);
    double sum = 0.0;
    for (std::size_t k = 0; k < cols; ++k) {
        x[k] = std::ldexp(k % 2 ? -1.0f : 1.0f, int(k % 81) - 40);
        sum += double(x[k]);
    }
    on_every_target([&]<class Arch>() {
        std::vector<float> y(rows);
        qift::gemv(b, std::span<const float>(x), y, Arch{});
        for (std::size_t r = 0; r < rows; ++r) {
            const double want = (0.5 + double(r)) * double(L::levels[r % 4]) * sum;
            CHECK(std::fabs(double(y[r]) - want) <= 1e-6 * std::fabs(want));
        }
    });
}

TEST_CASE_TEMPLATE("bitplane gemm rows equal the gemv bit for bit, on one thread and on the pool",
                   L, qift::levels::nf2, qift::levels::asymmetric) {
    unsigned seed = 300;
    std::vector<bitplane_case<L>> cases;
    // 1100 x 1000 crosses the work threshold of the parallel split; 70 x 31 stays serial.
    for (const auto& shape : {std::pair<std::size_t, std::size_t>{70, 31}, {1100, 1000}})
        for (std::size_t tokens : {1u, 2u, 3u, 4u, 5u, 9u}) {
            const auto q = quantize_fast<L>(gaussian_matrix(shape.first, shape.second, seed++));
            cases.push_back({qift::bitplane_matrix<L>(q), q.dequantize(),
                             gaussian_matrix(tokens, shape.second, seed++)});
        }
    on_every_target([&]<class Arch>() {
        for (const auto& c : cases) {
            const std::size_t tokens = c.x.rows(), rows = c.planes.rows();
            qift::matrix<float> y(tokens, rows), y1(tokens, rows);
            qift::gemm(c.planes, c.x.view(), y.view(), Arch{});
            qift::set_parallel_executor(qift::serial_executor);
            bool same = true;
            for (std::size_t t = 0; t < tokens; ++t) {
                std::vector<float> g(rows);
                qift::gemv(c.planes, c.x.row(t), g, Arch{});
                for (std::size_t r = 0; r < rows; ++r) same = same && g[r] == y(t, r);
            }
            qift::gemm(c.planes, c.x.view(), y1.view(), Arch{});
            qift::set_parallel_executor(nullptr);
            CHECK(same);
            CHECK(std::equal(y.flat().begin(), y.flat().end(), y1.flat().begin()));
            for (std::size_t t = 0; t < tokens; ++t)
                CHECK(max_product_error(y.row(t), c.weights, c.x.row(t)) <= 1e-5);
        }
    });
}

TEST_CASE("bitplane_matrix and its products reject bad input") {
    using L = qift::levels::nf2;
    const auto w = gaussian_matrix(4, 64, 7);
    qift::scale_options opt;
    opt.rule = qift::scale_rule::max;
    opt.group_size = 32;
    CHECK_THROWS_AS(qift::bitplane_matrix<L>(qift::quantize<L>(w, opt)), qift::error);
    const qift::bitplane_matrix<L> b(quantize_fast<L>(w));
    std::vector<float> x(64), y(4), bad_x(63), bad_y(5);
    CHECK_THROWS_WITH_AS(qift::gemv(b, std::span<const float>(bad_x), y),
                         doctest::Contains("the weights are 4x64"), qift::error);
    CHECK_THROWS_AS(qift::gemv(b, std::span<const float>(x), bad_y), qift::error);
    CHECK_THROWS_AS(qift::gemv_reference(b, std::span<const float>(bad_x), y), qift::error);
    qift::matrix<float> xm(2, 64), ym(3, 4);
    CHECK_THROWS_AS(qift::gemm(b, xm.view(), ym.view()), qift::error);
    // An empty matrix multiplies to nothing.
    const qift::bitplane_matrix<L> empty;
    std::vector<float> none;
    qift::gemv(empty, std::span<const float>(none), std::span<float>(none));
}
