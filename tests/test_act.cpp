// SPDX-License-Identifier: MIT
// Tests of act.hpp: A4 per-token quantization against its scalar reference and its contract.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include <qift/act.hpp>

namespace {

qift::matrix<float> random_matrix(std::size_t rows, std::size_t cols, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    qift::matrix<float> m(rows, cols);
    for (auto& v : m.flat()) v = dist(gen);
    return m;
}

}  // namespace

TEST_CASE("quantize_activations matches the scalar reference and pads with zeros") {
    for (std::size_t cols : {1u, 7u, 63u, 256u, 257u, 4097u})
        for (auto range : {qift::a4_range::symmetric, qift::a4_range::full})
            for (float clip : {1.0f, 0.9f}) {
                const auto x = random_matrix(3, cols, static_cast<unsigned>(cols));
                const auto q = qift::quantize_activations(x, clip, range);
                REQUIRE(q.tokens == 3);
                REQUIRE(q.padded_cols % 256 == 0);
                REQUIRE(q.padded_cols >= cols);
                const int lo = range == qift::a4_range::full ? -8 : -7;
                std::vector<std::int8_t> ref(cols);
                for (std::size_t t = 0; t < 3; ++t) {
                    const float s =
                        qift::detail::quantize_token_scalar(x.row(t), clip, lo, ref.data());
                    CHECK(s == q.scales[t]);
                    std::int32_t sum = 0;
                    for (std::size_t k = 0; k < cols; ++k) {
                        CHECK(q.code(t, k) == ref[k]);
                        CHECK(q.code(t, k) >= lo);
                        CHECK(q.code(t, k) <= 7);
                        sum += ref[k];
                    }
                    CHECK(q.sums[t] == sum);
                    for (std::size_t k = cols; k < q.padded_cols; ++k) CHECK(q.code(t, k) == 0);
                    // round-to-nearest: error at most half a step inside the clip range
                    for (std::size_t k = 0; k < cols; ++k) {
                        const float v = x(t, k);
                        if (std::fabs(v) <= clip * 7.0f * s)
                            CHECK(std::fabs(v - s * float(q.code(t, k))) <= 0.5f * s * 1.0001f);
                    }
                }
            }
}

TEST_CASE("quantize_activations: extremes, zeros and errors") {
    qift::matrix<float> x(2, 300, 1.0f);
    for (std::size_t k = 0; k < 300; ++k) x(1, k) = -1.0f;
    const auto q = qift::quantize_activations(x, 1.0f);
    CHECK(q.code(0, 0) == 7);
    CHECK(q.code(1, 299) == -7);
    CHECK(q.sums[1] == -7 * 300);
    const auto f = qift::quantize_activations(x, 0.5f, qift::a4_range::full);
    CHECK(f.code(1, 5) == -8);
    CHECK(f.code(0, 5) == 7);
    const qift::matrix<float> z(1, 10, 0.0f);
    const auto qz = qift::quantize_activations(z);
    CHECK(qz.scales[0] == 0.0f);
    CHECK(qz.code(0, 3) == 0);
    const auto back = qift::dequantize(q);
    CHECK(back(0, 0) == doctest::Approx(1.0f));

    CHECK_THROWS_AS(qift::quantize_activations(x, 0.0f), qift::error);
    CHECK_THROWS_AS(qift::quantize_activations(x, 1.5f), qift::error);
    qift::matrix<float> bad(1, 4, 1.0f);
    bad(0, 2) = NAN;
    CHECK_THROWS_AS(qift::quantize_activations(bad), qift::error);
    CHECK_THROWS_AS(qift::quantize_activations(qift::matrix<float>(1, 65537, 1.0f)), qift::error);
    CHECK_THROWS_AS(qift::quantize_activations(qift::matrix<float>()), qift::error);
}
