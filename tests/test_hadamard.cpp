// SPDX-License-Identifier: MIT
// Tests of hadamard.hpp: the constructions (H·Hᵀ = n·I exactly), the SIMD kernels against
// their scalar references, the transforms against the explicit matrix, and the rotations.
#include <qift/hadamard.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <complex>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "test_support.hpp"

namespace {

using qift::test::on_every_target;

// The paley_core of a field GF(q) used as kind 1 (Paley I) or 2 (Paley II).
qift::detail::paley_core field_core(int kind, std::size_t q) {
    qift::detail::paley_core pc;
    pc.kind = kind;
    pc.q = q;
    const auto pk = *qift::detail::as_prime_power(q);
    pc.p = pk.p;
    pc.r = pk.k;
    pc.chi = qift::detail::galois_field(pk).quadratic_character();
    return pc;
}

std::vector<float> random_vector(std::size_t n, std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = dist(gen);
    return v;
}

double norm(const std::vector<float>& v) {
    double s = 0;
    for (float x : v) s += static_cast<double>(x) * x;
    return std::sqrt(s);
}

// ‖a - b‖ / ‖b‖ (or ‖a - b‖ when b = 0), in double.
double relative_error(const std::vector<float>& a, const std::vector<double>& b) {
    double d = 0, s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        d += (a[i] - b[i]) * (a[i] - b[i]);
        s += b[i] * b[i];
    }
    return std::sqrt(d) / (s > 0 ? std::sqrt(s) : 1.0);
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
    return relative_error(a, std::vector<double>(b.begin(), b.end()));
}

// y = scale · H x (or Hᵀ x) with the explicit matrix, in double.
std::vector<double> explicit_product(const qift::matrix<float>& h, const std::vector<float>& x,
                                     bool transpose, double scale) {
    const std::size_t n = x.size();
    std::vector<double> y(n, 0.0);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j)
            y[i] += (transpose ? h(j, i) : h(i, j)) * static_cast<double>(x[j]);
    for (double& v : y) v *= scale;
    return y;
}

// H·Hᵀ == n·I exactly, with rows packed as sign bits: <r_i, r_j> = n - 2·popcount(r_i ^ r_j).
bool is_hadamard(const qift::matrix<float>& h) {
    const std::size_t n = h.rows(), words = (n + 63) / 64;
    std::vector<std::uint64_t> bits(n * words, 0);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j) {
            if (h(i, j) != 1.0f && h(i, j) != -1.0f) return false;
            if (h(i, j) < 0) bits[i * words + j / 64] |= std::uint64_t{1} << (j % 64);
        }
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = i + 1; j < n; ++j) {
            std::size_t differ = 0;
            for (std::size_t w = 0; w < words; ++w)
                differ += static_cast<std::size_t>(
                    std::popcount(bits[i * words + w] ^ bits[j * words + w]));
            if (2 * differ != n) return false;
        }
    return true;
}

}  // namespace

TEST_CASE("hadamard: every constructible order up to 1024 gives H·Hᵀ = n·I exactly") {
    std::string covered, missing;
    std::size_t count = 0;
    for (std::size_t n = 1; n <= 1024; ++n) {
        if (n > 2 && n % 4 != 0) {
            CHECK_FALSE(qift::is_hadamard_size(n));
            continue;
        }
        if (!qift::is_hadamard_size(n)) {
            if (n % 4 == 0) missing.append(" ").append(std::to_string(n));
            continue;
        }
        CAPTURE(n);
        const qift::matrix<float> h = qift::hadamard_matrix(n);
        REQUIRE(h.rows() == n);
        CHECK(is_hadamard(h));
        if (n % 4 == 0) {
            covered.append(" ").append(std::to_string(n));
            ++count;
        }
    }
    std::printf("hadamard: %zu of 256 multiples of 4 up to 1024 are covered:%s\n", count,
                covered.c_str());
    std::printf("hadamard: not covered:%s\n", missing.c_str());
    CHECK(count == 198);
}

TEST_CASE("hadamard: the LLM dimensions are supported, with the cheapest blocks") {
    struct expect {
        std::size_t n, power_of_two;
        std::vector<std::size_t> blocks;
    };
    const std::vector<expect> cases = {{4096, 4096, {}},
                                       {5120, 256, {20}},
                                       {8192, 8192, {}},
                                       {11008, 32, {344}},
                                       {13824, 8, {12, 12, 12}},
                                       {14336, 512, {28}},
                                       {18944, 128, {148}},
                                       {28672, 1024, {28}},
                                       {52, 1, {52}},
                                       {108 * 128, 8, {12, 12, 12}}};
    for (const auto& c : cases) {
        CAPTURE(c.n);
        const auto f = qift::find_hadamard_factorization(c.n);
        REQUIRE(f.has_value());
        CHECK(f->power_of_two == c.power_of_two);
        CHECK(f->blocks == c.blocks);
    }
    // Paley I over GF(7³), GF(3³) and Paley II over GF(5²), the prime-power fields.
    for (std::size_t k : {344u, 28u, 52u, 148u, 108u}) {
        CAPTURE(k);
        CHECK(qift::detail::paley_kind(k) != 0);
    }
    CHECK(qift::detail::paley_kind(344) == 1);
    CHECK(qift::detail::paley_kind(52) == 2);
    CHECK(is_hadamard(qift::hadamard_matrix(344)));
}

TEST_CASE("hadamard: unsupported sizes throw naming the nearest supported ones") {
    CHECK_FALSE(qift::is_hadamard_size(172));
    CHECK_FALSE(qift::is_hadamard_size(0));
    const auto near = qift::supported_hadamard_sizes_near(172);
    CHECK(near.below == 168);
    CHECK(near.above == 176);
    std::vector<float> x(172, 1.0f);
    std::string msg;
    try {
        qift::hadamard_transform(x);
    } catch (const qift::error& e) {
        msg = e.what();
    }
    CHECK(msg.find("qift::hadamard_transform") != std::string::npos);
    CHECK(msg.find("n = 172") != std::string::npos);
    CHECK(msg.find("168 and 176") != std::string::npos);
    CHECK(msg.find("random_orthogonal") != std::string::npos);
    CHECK_THROWS_AS(qift::rotation::hadamard(172, 1), qift::error);
    CHECK_THROWS_AS(qift::hadamard_matrix(172), qift::error);
    std::vector<float> y(12, 1.0f);
    CHECK_THROWS_WITH_AS(qift::fwht(y), doctest::Contains("n = 12"), qift::error);
    std::vector<float> empty;
    CHECK_THROWS_AS(qift::fwht(empty), qift::error);
}

TEST_CASE("hadamard: the transform equals the product with the explicit matrix") {
    std::vector<std::size_t> sizes = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 12, 20, 28, 36,
                                      40, 52, 60, 108, 140, 144, 148, 24, 88, 96, 344, 688, 148 * 4,
                                      28 * 16,
                                      // Rader cores on wide and narrow panels, narrow GF(7³).
                                      44 * 64, 68 * 32, 132 * 16, 76 * 2, 1376};
    for (std::size_t n : sizes) {
        CAPTURE(n);
        const qift::matrix<float> h = qift::hadamard_matrix(n);
        const std::vector<float> x = random_vector(n, static_cast<std::uint32_t>(n));
        const double s = 1.0 / std::sqrt(static_cast<double>(n));
        for (bool transpose : {false, true}) {
            CAPTURE(transpose);
            std::vector<float> y = x, z = x;
            if (transpose) {
                qift::hadamard_transform_transpose(y);
                qift::hadamard_transform_transpose(z, qift::hadamard_norm::none);
            } else {
                qift::hadamard_transform(y);
                qift::hadamard_transform(z, qift::hadamard_norm::none);
            }
            CHECK(relative_error(y, explicit_product(h, x, transpose, s)) < 1e-6);
            CHECK(relative_error(z, explicit_product(h, x, transpose, 1.0)) < 1e-6);
        }
        if ((n & (n - 1)) == 0) {
            std::vector<float> y = x;
            qift::fwht(y);
            CHECK(relative_error(y, explicit_product(h, x, false, s)) < 1e-6);
        }
    }
}

namespace {

template <class Arch>
void check_kernels_against_reference() {
    for (std::size_t n = 1; n <= (std::size_t{1} << 17); n *= 2) {
        CAPTURE(n);
        const std::vector<float> x = random_vector(n, static_cast<std::uint32_t>(n + 7));
        for (float scale : {1.0f, 0.125f, 0.3f}) {
            std::vector<float> a = x, b = x;
            qift::detail::fwht_kernel{}(Arch{}, a.data(), n, scale);
            qift::detail::fwht_reference(b.data(), n, scale);
            CHECK(relative_error(a, b) < 1e-6);
        }
    }
    for (std::size_t k : {1u, 3u, 4u, 12u, 14u, 28u, 36u}) {
        for (std::size_t cols : {1u, 3u, 7u, 8u, 15u, 16u, 17u, 31u, 32u, 33u, 48u, 100u}) {
            CAPTURE(k);
            CAPTURE(cols);
            const std::vector<float> h = random_vector(k * k, 3);
            const std::vector<float> in = random_vector(k * cols, 4);
            std::vector<float> a(k * cols, 9.0f), b(k * cols, -9.0f);
            std::vector<float> packed((k + 3) / 4 * 4 * k);
            qift::detail::pack_mix_coefficients(h.data(), k, packed.data());
            qift::detail::hadamard_mix_kernel{}(Arch{}, packed.data(), k, in.data(), a.data(),
                                                cols);
            qift::detail::hadamard_mix_reference(h.data(), k, in.data(), b.data(), cols);
            CHECK(relative_error(a, b) < 1e-6);
        }
    }
    // The transform through this architecture matches the default one.
    for (std::size_t n : {4096u, 11008u, 14336u, 28u * 8u}) {
        CAPTURE(n);
        std::vector<float> a = random_vector(n, 5), b = a;
        qift::hadamard_transform<Arch>(a);
        qift::hadamard_transform(b);
        CHECK(relative_error(a, b) < 1e-6);
    }
}

}  // namespace

TEST_CASE("hadamard: SIMD kernels match the scalar references on every compiled target") {
    on_every_target([]<class Arch>() { check_kernels_against_reference<Arch>(); });
}

TEST_CASE("hadamard: norm preserved and inverse round trip for the LLM sizes") {
    for (std::size_t n : {256u, 4096u, 5120u, 8192u, 11008u, 13824u, 14336u, 18944u, 28672u, 65536u,
                          688u, 1376u, 2752u, 4864u, 8704u, 16896u}) {
        CAPTURE(n);
        const std::vector<float> x = random_vector(n, static_cast<std::uint32_t>(n));
        std::vector<float> y = x;
        qift::hadamard_transform(y);
        CHECK(std::abs(norm(y) / norm(x) - 1.0) < 1e-5);
        qift::hadamard_transform_transpose(y);
        CHECK(relative_error(y, x) < 1e-5);
        if ((n & (n - 1)) == 0) {
            std::vector<float> z = x;
            qift::fwht(z);
            CHECK(std::abs(norm(z) / norm(x) - 1.0) < 1e-5);
            qift::fwht(z);  // symmetric and orthogonal: its own inverse
            CHECK(relative_error(z, x) < 1e-5);
        }
    }
}

TEST_CASE("hadamard: the batched rows forms equal the per-row transforms") {
    for (std::size_t cols : {64u, 1024u, 344u * 2u}) {
        CAPTURE(cols);
        const std::size_t rows = 37;
        std::vector<float> stored(rows * (cols + 5));
        const std::vector<float> src = random_vector(stored.size(), 11);
        stored = src;
        // A strided view: every row has 5 padding elements that must stay untouched.
        qift::matrix_view<float> m(stored.data(), rows, cols, cols + 5);
        if ((cols & (cols - 1)) == 0)
            qift::fwht_rows(m);
        else
            qift::hadamard_transform_rows(m);
        for (std::size_t r = 0; r < rows; ++r) {
            std::vector<float> row(
                src.begin() + static_cast<std::ptrdiff_t>(r * (cols + 5)),
                src.begin() + static_cast<std::ptrdiff_t>(r * (cols + 5) + cols));
            qift::hadamard_transform(row);
            const std::vector<float> got(m.row(r).begin(), m.row(r).end());
            CHECK(relative_error(got, row) < 1e-6);
            for (std::size_t p = 0; p < 5; ++p)
                CHECK(stored[r * (cols + 5) + cols + p] == src[r * (cols + 5) + cols + p]);
        }
    }
}

namespace {

// y = W x for W [out][in] in double.
std::vector<double> matvec(const qift::matrix<float>& w, const std::vector<float>& x) {
    std::vector<double> y(w.rows(), 0.0);
    for (std::size_t i = 0; i < w.rows(); ++i)
        for (std::size_t j = 0; j < w.cols(); ++j) y[i] += w(i, j) * static_cast<double>(x[j]);
    return y;
}

qift::matrix<float> random_matrix(std::size_t rows, std::size_t cols, std::uint32_t seed) {
    qift::matrix<float> m(rows, cols);
    const std::vector<float> v = random_vector(rows * cols, seed);
    std::copy(v.begin(), v.end(), m.data());
    return m;
}

void check_rotation(const qift::rotation& rot) {
    const std::size_t n = rot.size();
    const qift::matrix<float> q = rot.to_matrix();
    // Q·Qᵀ = I.
    double worst = 0;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j) {
            double d = 0;
            for (std::size_t k = 0; k < n; ++k) d += static_cast<double>(q(i, k)) * q(j, k);
            worst = std::max(worst, std::abs(d - (i == j ? 1.0 : 0.0)));
        }
    CHECK(worst < 1e-5);

    // apply is x·Q, apply_transpose x·Qᵀ, and they undo each other.
    const std::vector<float> x = random_vector(n, 21);
    std::vector<float> y = x;
    rot.apply(y);
    std::vector<double> expect(n, 0.0);
    for (std::size_t j = 0; j < n; ++j)
        for (std::size_t i = 0; i < n; ++i) expect[j] += x[i] * static_cast<double>(q(i, j));
    CHECK(relative_error(y, expect) < 1e-5);
    CHECK(std::abs(norm(y) / norm(x) - 1.0) < 1e-5);
    rot.apply_transpose(y);
    CHECK(relative_error(y, x) < 1e-5);

    // Folding into the input side: (W·Q)·(x·Q)ᵀ = W·x.
    const std::size_t out = 19;
    const qift::matrix<float> w = random_matrix(out, n, 22);
    qift::matrix<float> w_in = w;
    rot.fold_into_input(w_in);
    std::vector<float> x_rot = x;
    rot.apply(x_rot);
    const std::vector<double> y_ref = matvec(w, x);
    const std::vector<double> y_in = matvec(w_in, x_rot);
    CHECK(relative_error(std::vector<float>(y_in.begin(), y_in.end()), y_ref) < 1e-5);

    // Folding into the output side: (Qᵀ·W)·x = apply(W·x).
    const qift::matrix<float> v = random_matrix(n, 23, 24);
    qift::matrix<float> v_out = v;
    rot.fold_into_output(v_out);
    const std::vector<float> x2 = random_vector(23, 25);
    const std::vector<double> z_ref = matvec(v, x2);
    std::vector<float> z_rot(z_ref.begin(), z_ref.end());
    rot.apply(z_rot);
    const std::vector<double> z_out = matvec(v_out, x2);
    CHECK(relative_error(z_rot, z_out) < 1e-5);

    // rotate_rows_transpose and rotate_columns_transpose undo their counterparts.
    qift::matrix<float> a = random_matrix(n, n, 26);
    const qift::matrix<float> a0 = a;
    rot.rotate_rows(a);
    rot.rotate_rows_transpose(a);
    rot.rotate_columns(a);
    rot.rotate_columns_transpose(a);
    const std::vector<float> af(a.flat().begin(), a.flat().end());
    const std::vector<float> a0f(a0.flat().begin(), a0.flat().end());
    CHECK(relative_error(af, a0f) < 1e-5);

    // Shape errors name the argument and both sizes.
    std::vector<float> wrong(n + 1);
    CHECK_THROWS_WITH_AS(rot.apply(wrong), doctest::Contains(std::to_string(n + 1).c_str()),
                         qift::error);
    qift::matrix<float> bad(3, n + 1);
    CHECK_THROWS_AS(rot.fold_into_input(bad), qift::error);
    CHECK_THROWS_AS(rot.fold_into_output(bad), qift::error);
}

}  // namespace

TEST_CASE("rotation: randomized Hadamard, fallback and for_size") {
    SUBCASE("hadamard 256, no sign flips, is H/√n") {
        const auto rot = qift::rotation::hadamard(256);
        CHECK(rot.type() == qift::rotation::kind::hadamard);
        const qift::matrix<float> q = rot.to_matrix();
        const qift::matrix<float> h = qift::hadamard_matrix(256);
        for (std::size_t i = 0; i < 256; ++i)
            for (std::size_t j = 0; j < 256; ++j) REQUIRE(q(i, j) == h(i, j) / 16.0f);
        check_rotation(rot);
    }
    SUBCASE("hadamard 344 seeded") {
        check_rotation(qift::rotation::hadamard(344, 7));
    }
    SUBCASE("hadamard 28·8 seeded") {
        check_rotation(qift::rotation::hadamard(224, 9));
    }
    SUBCASE("hadamard 144 = 12·12 seeded") {
        check_rotation(qift::rotation::hadamard(144, 3));
    }
    SUBCASE("random orthogonal fallback for 172") {
        const auto rot = qift::rotation::for_size(172, 5);
        CHECK(rot.type() == qift::rotation::kind::random_orthogonal);
        check_rotation(rot);
        // Same seed, same matrix; another seed, another matrix.
        const auto q1 = rot.to_matrix();
        const auto q2 = qift::rotation::random_orthogonal(172, 5).to_matrix();
        const auto q3 = qift::rotation::random_orthogonal(172, 6).to_matrix();
        CHECK(std::equal(q1.flat().begin(), q1.flat().end(), q2.flat().begin()));
        CHECK_FALSE(std::equal(q1.flat().begin(), q1.flat().end(), q3.flat().begin()));
    }
    SUBCASE("random orthogonal of odd size") {
        check_rotation(qift::rotation::random_orthogonal(37, 1));
    }
    SUBCASE("signs depend on the seed") {
        const auto a = qift::rotation::hadamard(64, 1).to_matrix();
        const auto b = qift::rotation::hadamard(64, 2).to_matrix();
        CHECK_FALSE(std::equal(a.flat().begin(), a.flat().end(), b.flat().begin()));
        CHECK(qift::rotation::for_size(64, 1).type() == qift::rotation::kind::hadamard);
    }
}

TEST_CASE("rotation: folding the rotation into weights leaves x·Wᵀ unchanged at 11008") {
    // The down-projection pattern: rotate the 11008-wide input online, fold into W offline.
    const std::size_t n = 11008, out = 8;
    const auto rot = qift::rotation::hadamard(n, 42);
    const qift::matrix<float> w = random_matrix(out, n, 31);
    qift::matrix<float> w_rot = w;
    rot.fold_into_input(w_rot);
    const std::vector<float> x = random_vector(n, 32);
    std::vector<float> x_rot = x;
    rot.apply(x_rot);
    const std::vector<double> y = matvec(w, x), y_rot = matvec(w_rot, x_rot);
    CHECK(relative_error(std::vector<float>(y_rot.begin(), y_rot.end()), y) < 1e-5);
}

// ---------------------------------------------------------------------------------------
// Any-size rotations: the short-row FWHT, the narrow mix, the Paley II pairs, the Jacobsthal
// DFT and the seeded Kronecker construction.

namespace {

template <class Arch>
void check_any_size_kernels() {
    constexpr std::size_t w = xsimd::batch<float, Arch>::size;
    // Short rows: every power-of-two length up to the register width, n not a multiple of it.
    for (std::size_t len = 1; len <= w; len *= 2)
        for (std::size_t rows : {1u, 3u, 5u, 17u, 40u}) {
            CAPTURE(len);
            CAPTURE(rows);
            const std::size_t n = len * rows;
            const std::vector<float> x = random_vector(n, static_cast<std::uint32_t>(n + len));
            std::vector<float> a = x, b = x;
            qift::detail::fwht_short_rows_kernel{}(Arch{}, a.data(), n, len, 0.3f);
            for (std::size_t r = 0; r < n; r += len)
                qift::detail::fwht_reference(b.data() + r, len, 0.3f);
            CHECK(relative_error(a, b) < 1e-6);
        }
    // Many rows of a leaf-sized length in one pass.
    for (std::size_t len = 2 * w; len <= 1024; len *= 2) {
        CAPTURE(len);
        const std::size_t n = len * 7;
        const std::vector<float> x = random_vector(n, 3);
        std::vector<float> a = x, b = x;
        qift::detail::fwht_kernel{}.rows(Arch{}, a.data(), n, len, 0.5f);
        for (std::size_t r = 0; r < n; r += len)
            qift::detail::fwht_reference(b.data() + r, len, 0.5f);
        CHECK(relative_error(a, b) < 1e-6);
    }
    // Narrow mix: odd k, column ranges of every length 1..5 inside wider panels.
    for (std::size_t k : {1u, 3u, 12u, 43u, 70u, 173u}) {
        for (std::size_t cols : {1u, 2u, 3u, 5u, 9u, 21u}) {
            CAPTURE(k);
            CAPTURE(cols);
            const std::vector<float> h = random_vector(k * k, 5);
            const std::vector<float> in = random_vector(k * cols, 6);
            std::vector<float> a(k * cols, 0.0f), b(k * cols, 0.0f);
            qift::aligned_vector<float> cm(qift::detail::narrow_mix_stride(k) * k);
            qift::detail::pack_narrow_mix_coefficients(h.data(), k, cm.data());
            qift::detail::narrow_mix_kernel{}(Arch{}, cm.data(), k, in.data(), a.data(), cols, 0,
                                              cols);
            qift::detail::hadamard_mix_reference(h.data(), k, in.data(), b.data(), cols);
            CHECK(relative_error(a, b) < 1e-6);
            // Only the asked columns are written.
            std::vector<float> c(k * cols, 7.0f);
            qift::detail::narrow_mix_kernel{}(Arch{}, cm.data(), k, in.data(), c.data(), cols,
                                              cols / 2, cols);
            for (std::size_t i = 0; i < k; ++i)
                for (std::size_t col = 0; col < cols; ++col) {
                    const float want = col < cols / 2 ? 7.0f : b[i * cols + col];
                    REQUIRE(std::abs(c[i * cols + col] - want) <= 1e-4f * (1.0f + std::abs(want)));
                }
        }
    }
    // The Jacobsthal core by DFT against the dense core: q = 27, 49, 81, 125, 169, 243, 343
    // (p = 3, 7, 3, 5, 13, 3, 7), forward and transposed, several panel widths.
    const std::pair<int, std::size_t> fields[] = {{1, 27},  {2, 49},  {2, 81}, {2, 125},
                                                  {2, 169}, {1, 243}, {1, 343}};
    for (const auto& [kind, q] : fields) {
        const qift::detail::paley_core pc = field_core(kind, q);
        const std::size_t c = kind == 1 ? q + 1 : 2 * (q + 1);
        const std::size_t m = pc.order();
        const auto lambda = qift::detail::jacobsthal_eigenvalues(pc);
        for (bool transpose : {false, true}) {
            if (pc.kind == 2 && transpose) continue;  // symmetric
            const double eps = transpose ? -1.0 : 1.0;
            std::vector<float> mul(2 * pc.q);
            for (std::size_t u = 0; u < pc.q; ++u) {
                const auto v = (1.0 + eps * lambda[u]) / static_cast<double>(pc.q);
                mul[2 * u] = static_cast<float>(v.real());
                mul[2 * u + 1] = static_cast<float>(v.imag());
            }
            qift::detail::jacobsthal_dft_params prm;
            prm.p = pc.p;
            prm.r = pc.r;
            prm.q = pc.q;
            prm.tau = transpose ? -1 : 1;
            prm.sigma = transpose ? 1 : pc.sigma();
            prm.mul = mul.data();
            // The dense core of this field, built independently of the eigenvalues.
            const qift::detail::galois_field field(qift::detail::prime_power{pc.p, pc.r});
            const std::vector<std::int8_t> core = pc.matrix(field);
            std::vector<float> h(m * m);
            for (std::size_t i = 0; i < m; ++i)
                for (std::size_t j = 0; j < m; ++j)
                    h[i * m + j] = transpose ? core[j * m + i] : core[i * m + j];
            for (std::size_t cols : {std::size_t{2} * w, 4 * w, 6 * w}) {
                CAPTURE(c);
                CAPTURE(m);
                CAPTURE(transpose);
                CAPTURE(cols);
                const std::vector<float> x = random_vector(m * cols, static_cast<std::uint32_t>(m));
                std::vector<float> a = x, b(m * cols);
                qift::detail::jacobsthal_dft_kernel{}(Arch{}, prm, a.data(), cols);
                qift::detail::hadamard_mix_reference(h.data(), m, x.data(), b.data(), cols);
                CHECK(relative_error(a, b) < 2e-6);
            }
        }
    }
    // Whole blocks (pairs, DFT, dense and narrow forms) against the dense Paley matrix.
    for (std::size_t c : {12u, 20u, 36u, 44u, 52u, 68u, 76u, 124u, 132u, 148u, 244u, 340u, 344u}) {
        const qift::detail::kron_block b = qift::detail::make_paley_block(c);
        const std::vector<std::int8_t> hp = qift::detail::paley_matrix(c);
        for (bool transpose : {false, true})
            for (std::size_t cols :
                 {std::size_t{1}, std::size_t{2}, std::size_t{3}, w, 2 * w, 5 * w, 5 * w + 3}) {
                CAPTURE(c);
                CAPTURE(transpose);
                CAPTURE(cols);
                std::vector<float> h(c * c);
                for (std::size_t i = 0; i < c; ++i)
                    for (std::size_t j = 0; j < c; ++j)
                        h[i * c + j] = transpose ? hp[j * c + i] : hp[i * c + j];
                const std::vector<float> x =
                    random_vector(c * cols, static_cast<std::uint32_t>(c + cols));
                std::vector<float> a = x, b2(c * cols), scratch(c * cols);
                qift::detail::apply_kron_block<Arch>(b, a.data(), cols, transpose, scratch.data());
                qift::detail::hadamard_mix_reference(h.data(), c, x.data(), b2.data(), cols);
                CHECK(relative_error(a, b2) < 2e-6);
            }
    }
}

}  // namespace

TEST_CASE("hadamard: the any-size kernels match their scalar references on every target") {
    CHECK(qift::detail::make_paley_block(344).dft_p == 7);
    CHECK(qift::detail::make_paley_block(148).pairs);
    CHECK(qift::detail::make_paley_block(340).dft_p == 13);
    on_every_target([]<class Arch>() { check_any_size_kernels<Arch>(); });
}

namespace {

// The dense core of a paley_core (transposed when asked) as floats.
std::vector<float> dense_core(const qift::detail::paley_core& pc, bool transpose) {
    const qift::detail::galois_field field(qift::detail::prime_power{pc.p, pc.r});
    const std::vector<std::int8_t> core = pc.matrix(field);
    const std::size_t m = pc.order();
    std::vector<float> h(m * m);
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t j = 0; j < m; ++j)
            h[i * m + j] = transpose ? core[j * m + i] : core[i * m + j];
    return h;
}

template <class Arch>
void check_fast_core_kernels() {
    constexpr std::size_t w = xsimd::batch<float, Arch>::size;
    // Every DFT codelet, forward and inverse, on three rows of W complex lanes each, rows at a
    // stride of 3 rows (the other rows untouched), against the double DFT of each lane.
    for (std::size_t p : {2u, 3u, 4u, 5u, 7u, 8u, 9u, 11u, 13u}) {
        REQUIRE(qift::detail::dft_codelets::supports(p));
        for (bool inverse : {false, true}) {
            CAPTURE(p);
            CAPTURE(inverse);
            const std::size_t stride = 2 * w, rows = 3 * p;
            const std::vector<float> x =
                random_vector(rows * stride, static_cast<std::uint32_t>(p));
            std::vector<float> a = x;
            if (inverse)
                qift::detail::dft_codelets::pass<Arch, true>(p, a.data() + stride, p, 1,
                                                             3 * stride);
            else
                qift::detail::dft_codelets::pass<Arch, false>(p, a.data() + stride, p, 1,
                                                              3 * stride);
            // Rows 1, 4, 7, ... form the DFT; rows 0, 2, 3, 5, ... are untouched.
            double err = 0, ref = 0;
            for (std::size_t lane = 0; lane < w; ++lane) {
                std::vector<std::complex<double>> v(p);
                for (std::size_t t = 0; t < p; ++t) {
                    const float* row = x.data() + (1 + 3 * t) * stride;
                    v[t] = {row[lane], row[w + lane]};
                }
                qift::detail::dft_reference(v.data(), p, inverse);
                for (std::size_t t = 0; t < p; ++t) {
                    const float* row = a.data() + (1 + 3 * t) * stride;
                    err += std::norm(std::complex<double>(row[lane], row[w + lane]) - v[t]);
                    ref += std::norm(v[t]);
                }
            }
            CHECK(std::sqrt(err / ref) < 1e-6);
            for (std::size_t r = 0; r < rows; ++r)
                if (r % 3 != 1)
                    for (std::size_t c = 0; c < stride; ++c)
                        REQUIRE(a[r * stride + c] == x[r * stride + c]);
        }
    }
    // The Rader form of prime fields (q - 1 = 2·5, 4·3, 2·9, 4·9, 2·3·7, 2·3·11, 8·9, 2·5·13)
    // against the dense core, forward and transposed, in place and out of place, on the first
    // c_end columns of wider panels.
    const std::pair<int, std::size_t> primes[] = {{1, 11}, {2, 13}, {1, 19}, {2, 37},
                                                  {1, 43}, {1, 67}, {2, 73}, {1, 131}};
    for (const auto& field : primes) {
        const int kind = field.first;
        const std::size_t q = field.second;
        const qift::detail::paley_core pc = field_core(kind, q);
        const auto form = qift::detail::make_rader_form(
            pc, [](std::size_t len) { return qift::detail::dft_codelets::supports(len); });
        REQUIRE(form.has_value());
        const std::size_t m = pc.order();
        std::vector<float> chi(q), mul(2 * (q - 1));
        for (std::size_t a = 0; a < q; ++a) chi[a] = static_cast<float>(pc.chi[a]);
        for (std::size_t u = 0; u + 1 < q; ++u) {
            mul[2 * u] =
                static_cast<float>(form->eigenvalues[u].real() / static_cast<double>(q - 1));
            mul[2 * u + 1] =
                static_cast<float>(form->eigenvalues[u].imag() / static_cast<double>(q - 1));
        }
        for (bool transpose : {false, true}) {
            const int chi_m1 = pc.chi[q - 1];
            qift::detail::jacobsthal_rader_params prm;
            prm.q = q;
            prm.radix = form->radix.data();
            prm.axes = form->radix.size();
            prm.slot = form->slot.data();
            prm.alternating_slot = form->alternating_slot;
            prm.chi = chi.data();
            prm.mul = mul.data();
            prm.tau = transpose ? pc.sigma() : 1;
            prm.sigma = transpose ? 1 : pc.sigma();
            prm.eps = transpose ? chi_m1 : 1;
            const std::vector<float> h = dense_core(pc, transpose);
            for (std::size_t cols : {2 * w, 4 * w + 3, 6 * w}) {
                CAPTURE(q);
                CAPTURE(transpose);
                CAPTURE(cols);
                const std::size_t c_end = cols / (2 * w) * (2 * w);
                const std::vector<float> x = random_vector(m * cols, static_cast<std::uint32_t>(q));
                std::vector<float> ref(m * cols), a = x, b(m * cols, 5.0f);
                std::vector<float> work((q - 1) * 2 * w);
                qift::detail::hadamard_mix_reference(h.data(), m, x.data(), ref.data(), cols);
                qift::detail::jacobsthal_rader_kernel{}(Arch{}, prm, a.data(), a.data(), cols,
                                                        c_end, work.data());
                qift::detail::jacobsthal_rader_kernel{}(Arch{}, prm, x.data(), b.data(), cols,
                                                        c_end, work.data());
                double err = 0, err_b = 0, s = 0;
                for (std::size_t i = 0; i < m; ++i)
                    for (std::size_t c = 0; c < cols; ++c) {
                        const std::size_t at = i * cols + c;
                        if (c < c_end) {
                            err += (a[at] - ref[at]) * (a[at] - ref[at]);
                            err_b += (b[at] - ref[at]) * (b[at] - ref[at]);
                            s += ref[at] * ref[at];
                        } else {
                            REQUIRE(a[at] == x[at]);
                            REQUIRE(b[at] == 5.0f);
                        }
                    }
                CHECK(std::sqrt(err / s) < 2e-6);
                CHECK(std::sqrt(err_b / s) < 2e-6);
            }
        }
    }
    // The narrow GF(p^r) kernel against the dense core on odd column counts and column ranges
    // (pairs, a last single column) inside wider panels.
    const std::pair<int, std::size_t> fields[] = {{1, 27},  {2, 49},  {2, 81}, {2, 125},
                                                  {2, 169}, {1, 243}, {1, 343}};
    for (const auto& field : fields) {
        const int kind = field.first;
        const std::size_t q = field.second;
        const qift::detail::paley_core pc = field_core(kind, q);
        const std::size_t m = pc.order(), lanes = qift::detail::narrow_dft_lanes(pc.p);
        for (bool transpose : {false, true}) {
            const double eps = transpose && kind == 1 ? -1.0 : 1.0;
            const auto k = qift::detail::jacobsthal_partial_kernel(pc, 1.0, eps);
            std::vector<float> conv(q * 2 * lanes, 0.0f);
            for (std::size_t u = 0; u < q / pc.p; ++u)
                for (std::size_t b = 0; b < pc.p; ++b)
                    for (std::size_t a = 0; a < pc.p; ++a) {
                        const auto v = k[u * pc.p + (a + pc.p - b) % pc.p];
                        conv[(u * pc.p + b) * 2 * lanes + a] = static_cast<float>(v.real());
                        conv[(u * pc.p + b) * 2 * lanes + lanes + a] = static_cast<float>(v.imag());
                    }
            qift::detail::jacobsthal_dft_narrow_params prm;
            prm.p = pc.p;
            prm.r = pc.r;
            prm.q = q;
            prm.tau = transpose ? pc.sigma() : 1;
            prm.sigma = transpose ? 1 : pc.sigma();
            prm.conv = conv.data();
            const std::vector<float> h = dense_core(pc, transpose);
            std::vector<float> work(
                qift::detail::jacobsthal_dft_narrow_kernel::work_floats(pc.p, q));
            // (cols, c0, pair_hadamard, scale): adjacent pairs (cols = 2), strided pairs, a
            // last single column, column ranges inside wider panels, with and without the
            // fused 2-point FWHT and scale.
            struct range_case {
                std::size_t cols, c0;
                bool pair_hadamard;
                float scale;
            };
            for (const range_case& range : {range_case{1, 0, false, 1.0f},
                                            {2, 0, false, 1.0f},
                                            {3, 0, false, 1.0f},
                                            {5, 0, false, 0.5f},
                                            {7, 2, false, 1.0f},
                                            {9, 4, false, 1.0f},
                                            {2, 0, true, 0.25f},
                                            {4, 0, true, 1.0f},
                                            {9, 3, true, 0.75f}}) {
                const std::size_t cols = range.cols, c0 = range.c0;
                CAPTURE(q);
                CAPTURE(transpose);
                CAPTURE(cols);
                CAPTURE(c0);
                CAPTURE(range.pair_hadamard);
                const std::vector<float> x =
                    random_vector(m * cols, static_cast<std::uint32_t>(q + cols));
                std::vector<float> ref(m * cols), a = x;
                qift::detail::hadamard_mix_reference(h.data(), m, x.data(), ref.data(), cols);
                for (std::size_t i = 0; i < m; ++i)
                    for (std::size_t c = c0; c < cols; c += 2) {
                        float* y = ref.data() + i * cols + c;
                        if (range.pair_hadamard)
                            std::tie(y[0], y[1]) = std::pair(y[0] + y[1], y[0] - y[1]);
                        y[0] *= range.scale;
                        if (c + 1 < cols) y[1] *= range.scale;
                    }
                prm.pair_hadamard = range.pair_hadamard;
                prm.scale = range.scale;
                qift::detail::jacobsthal_dft_narrow_kernel{}(Arch{}, prm, a.data(), cols, c0, cols,
                                                             work.data());
                double err = 0, s = 0;
                for (std::size_t i = 0; i < m; ++i)
                    for (std::size_t c = 0; c < cols; ++c) {
                        const std::size_t at = i * cols + c;
                        if (c < c0) {
                            REQUIRE(a[at] == x[at]);
                            continue;
                        }
                        err += (a[at] - ref[at]) * (a[at] - ref[at]);
                        s += ref[at] * ref[at];
                    }
                CHECK(std::sqrt(err / s) < 2e-6);
            }
        }
    }
}

}  // namespace

#if defined(__AVX512F__)
TEST_CASE("hadamard: the packed AVX-512 DFTs and lane convolutions match the scalar ones") {
    // packed_dft<P> on P registers of 8 complex lanes ([re | im] halves), every lane against
    // the double DFT; convolve against the direct circulant sum over the P live lanes (the
    // padding lanes P .. 7 stay zero).
    auto check = [](auto p_constant) {
        constexpr std::size_t P = decltype(p_constant)::value;
        CAPTURE(P);
        const qift::detail::packed_dft<P> dft;
        for (bool inverse : {false, true}) {
            CAPTURE(inverse);
            const std::vector<float> x = random_vector(16 * P, static_cast<std::uint32_t>(P));
            __m512 v[P];
            for (std::size_t t = 0; t < P; ++t) v[t] = _mm512_loadu_ps(x.data() + 16 * t);
            if (inverse)
                dft.template dft<true>(v);
            else
                dft.template dft<false>(v);
            std::vector<float> a(16 * P);
            for (std::size_t t = 0; t < P; ++t) _mm512_storeu_ps(a.data() + 16 * t, v[t]);
            double err = 0, ref = 0;
            for (std::size_t lane = 0; lane < 8; ++lane) {
                std::vector<std::complex<double>> y(P);
                for (std::size_t t = 0; t < P; ++t) y[t] = {x[16 * t + lane], x[16 * t + 8 + lane]};
                qift::detail::dft_reference(y.data(), P, inverse);
                for (std::size_t t = 0; t < P; ++t) {
                    err += std::norm(std::complex<double>(a[16 * t + lane], a[16 * t + 8 + lane]) -
                                     y[t]);
                    ref += std::norm(y[t]);
                }
            }
            CHECK(std::sqrt(err / ref) < 1e-6);
        }
        std::vector<float> x = random_vector(16, 7), k = random_vector(16, 8);
        for (std::size_t l = P; l < 8; ++l) x[l] = x[8 + l] = 0.0f;
        alignas(64) float y[16];
        _mm512_store_ps(y, dft.convolve(k.data(), _mm512_loadu_ps(x.data())));
        double err = 0, ref = 0;
        for (std::size_t a = 0; a < 8; ++a) {
            std::complex<double> want = 0;
            for (std::size_t b = 0; a < P && b < P; ++b)
                want += std::complex<double>(k[(a + P - b) % P], k[8 + (a + P - b) % P]) *
                        std::complex<double>(x[b], x[8 + b]);
            err += std::norm(std::complex<double>(y[a], y[8 + a]) - want);
            ref += std::norm(want);
        }
        CHECK(std::sqrt(err / ref) < 1e-6);
    };
    check(std::integral_constant<std::size_t, 3>{});
    check(std::integral_constant<std::size_t, 5>{});
    check(std::integral_constant<std::size_t, 7>{});
}
#endif

TEST_CASE("hadamard: the Rader, narrow DFT and codelet kernels match the dense cores") {
    CHECK(!qift::detail::make_paley_block(148).rader_radix.empty());
    CHECK(qift::detail::make_paley_block(344).dft_narrow);
    CHECK(qift::detail::make_paley_block(108).rader_radix.empty());  // 106 = 2·53: dense
    on_every_target([]<class Arch>() { check_fast_core_kernels<Arch>(); });
}

namespace {

// H_K = H_{blocks[0]} ⊗ H_{blocks[1]} ⊗ ... from the Paley matrices, as ±1 ints.
std::vector<int> block_product(const std::vector<std::size_t>& blocks, std::size_t& size) {
    std::vector<int> m{1};
    size = 1;
    for (std::size_t k : blocks) {
        const std::vector<std::int8_t> b = qift::detail::paley_matrix(k);
        const std::size_t s = size * k;
        std::vector<int> out(s * s);
        for (std::size_t i = 0; i < s; ++i)
            for (std::size_t j = 0; j < s; ++j)
                out[i * s + j] = m[(i / k) * size + j / k] * b[(i % k) * k + j % k];
        m = std::move(out);
        size = s;
    }
    return m;
}

}  // namespace

TEST_CASE("hadamard: the fast transform equals H_K ⊗ H_L at the LLM sizes, sampled rows") {
    // 11008 = 344·32 (DFT over GF(7³)), 10880 = 340·32 (Paley II pairs + DFT over GF(13²)),
    // 15616 = 244·64 (DFT over GF(3⁵)), 1376 = 344·4 (narrow), 13824 = 12³·8 (gathered),
    // 18944 = 148·128 (Paley II pairs, Rader core), 14336 = 28·512.
    // Rader form: 18944 (8·9), 4864 = 76·64 (4·9), 8704 = 68·128 (2·3·11); narrow GF(7³): 688.
    for (std::size_t n :
         {11008u, 10880u, 15616u, 1376u, 13824u, 18944u, 14336u, 4864u, 8704u, 688u}) {
        CAPTURE(n);
        const auto f = qift::find_hadamard_factorization(n);
        REQUIRE(f.has_value());
        std::size_t k = 0;
        const std::vector<int> hk = block_product(f->blocks, k);
        const std::size_t len = f->power_of_two;
        REQUIRE(k * len == n);
        const std::vector<float> x = random_vector(n, static_cast<std::uint32_t>(n));
        const double s = 1.0 / std::sqrt(static_cast<double>(n));
        for (bool transpose : {false, true}) {
            CAPTURE(transpose);
            std::vector<float> y = x;
            if (transpose)
                qift::hadamard_transform_transpose(y);
            else
                qift::hadamard_transform(y);
            double err = 0, ref2 = 0;
            for (std::size_t t = 0; t < 97; ++t) {
                const std::size_t i = t == 0 ? 0 : t == 1 ? n - 1 : (t * 7919u) % n;
                double acc = 0;
                for (std::size_t j = 0; j < n; ++j) {
                    const std::size_t a = transpose ? j : i, b = transpose ? i : j;
                    const int sylvester = std::popcount((a % len) & (b % len)) & 1 ? -1 : 1;
                    acc += hk[(a / len) * k + b / len] * sylvester * static_cast<double>(x[j]);
                }
                acc *= s;
                err += (y[i] - acc) * (y[i] - acc);
                ref2 += acc * acc;
            }
            CHECK(std::sqrt(err / ref2) < 1e-6);
        }
    }
}

namespace {

// Q = (Q_K ⊗ H_L/√L)·D of rotation::kronecker, built densely from its documented parts.
qift::matrix<float> kronecker_reference(std::size_t n, std::uint64_t seed) {
    const auto shape = qift::detail::odd_split(n);
    const std::size_t len = shape.power_of_two, k = n / len;
    const qift::matrix<float> qk =
        k > 1 ? qift::detail::random_orthogonal_matrix(k, ~seed) : qift::matrix<float>(1, 1, 1.0f);
    const qift::matrix<float> hl = qift::hadamard_matrix(len);
    std::vector<float> signs(n, 1.0f);
    std::uint64_t state = seed;
    for (std::size_t i = 0; seed != 0 && i < n; i += 64) {
        const std::uint64_t bits = qift::detail::splitmix64(state);
        for (std::size_t b = 0; b < 64 && i + b < n; ++b)
            signs[i + b] = (bits >> b) & 1 ? -1.0f : 1.0f;
    }
    const double s = 1.0 / std::sqrt(static_cast<double>(len));
    qift::matrix<float> q(n, n);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < n; ++j)
            q(i, j) =
                static_cast<float>(qk(i / len, j / len) * hl(i % len, j % len) * s * signs[j]);
    return q;
}

}  // namespace

TEST_CASE("rotation: seeded Kronecker construction for every n and the make() choices") {
    // Orthogonal to 1e-5, exactly invertible, folds consistent, against the explicit product.
    for (std::size_t n : {1u, 5u, 21u, 37u, 3u * 64u, 5u * 32u, 7u * 16u, 172u, 64u, 688u}) {
        CAPTURE(n);
        const auto rot = qift::rotation::kronecker(n, 11);
        CHECK(rot.type() == qift::rotation::kind::kronecker);
        check_rotation(rot);
        const qift::matrix<float> q = rot.to_matrix(), ref = kronecker_reference(n, 11);
        double worst = 0;
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j < n; ++j)
                worst = std::max(worst, static_cast<double>(std::abs(q(i, j) - ref(i, j))));
        CHECK(worst < 1e-5);
    }
    // Large sizes: round trip and norm only (to_matrix would be n² floats).
    for (std::size_t n : {11008u, 13824u, 18944u, 43u * 256u + 0u, 1000u * 8u}) {
        CAPTURE(n);
        const auto rot = qift::rotation::kronecker(n, 5);
        const std::vector<float> x = random_vector(n, 8);
        std::vector<float> y = x;
        rot.apply(y);
        CHECK(std::abs(norm(y) / norm(x) - 1.0) < 1e-5);
        rot.apply_transpose(y);
        CHECK(relative_error(y, x) < 1e-5);
    }
    // Deterministic for a seed, different for another.
    const auto a = qift::rotation::kronecker(172, 3).to_matrix();
    const auto b = qift::rotation::make(172, {qift::rotation_construction::any, 3}).to_matrix();
    const auto c = qift::rotation::kronecker(172, 4).to_matrix();
    CHECK(std::equal(a.flat().begin(), a.flat().end(), b.flat().begin()));
    CHECK_FALSE(std::equal(a.flat().begin(), a.flat().end(), c.flat().begin()));
    // The choices.
    using qift::rotation_construction;
    CHECK(qift::rotation::make(11008, {rotation_construction::any, 1}).type() ==
          qift::rotation::kind::hadamard);
    CHECK(qift::rotation::make(172, {rotation_construction::any, 1}).type() ==
          qift::rotation::kind::kronecker);
    CHECK(qift::rotation::make(172, {rotation_construction::dense, 1}).type() ==
          qift::rotation::kind::random_orthogonal);
    CHECK(qift::rotation::make(11008, {rotation_construction::kronecker, 1}).type() ==
          qift::rotation::kind::kronecker);
    CHECK(qift::rotation::make(64).type() == qift::rotation::kind::hadamard);
    CHECK_THROWS_WITH_AS(qift::rotation::make(172, {rotation_construction::hadamard, 1}),
                         doctest::Contains("n = 172"), qift::error);
    CHECK_THROWS_WITH_AS(qift::rotation::kronecker(0, 1), doctest::Contains("n = 0"), qift::error);
    CHECK_THROWS_AS(qift::rotation::make(0), qift::error);
    CHECK_THROWS_AS(qift::rotation::make(16, {static_cast<rotation_construction>(9), 1}),
                    qift::error);
    // Power of two: the Kronecker construction is the randomized Hadamard rotation.
    const auto k64 = qift::rotation::kronecker(64, 9).to_matrix();
    const auto h64 = qift::rotation::hadamard(64, 9).to_matrix();
    for (std::size_t i = 0; i < 64 * 64; ++i)
        REQUIRE(std::abs(k64.flat()[i] - h64.flat()[i]) < 1e-6f);
}

TEST_CASE("rotation: sizes that overflow size_t are refused before allocating") {
    using qift::rotation;
    using qift::rotation_construction;
    constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
    const std::size_t odd = (std::size_t{1} << 33) + 1;  // no power-of-two factor: K = n
    // n floats of signs: 2^62 floats are 2^64 bytes (a power of two: every construction fits).
    for (auto c : {rotation_construction::hadamard, rotation_construction::any,
                   rotation_construction::kronecker})
        CHECK_THROWS_WITH_AS(rotation::make(std::size_t{1} << 62, {.construction = c}),
                             doctest::Contains("qift::rotation: n: size 4611686018427387904"),
                             qift::error);
    CHECK_THROWS_AS(rotation::make(max, {.construction = rotation_construction::any}), qift::error);
    // The dense K×K factor (kronecker with odd n, and the dense construction): K² wraps.
    for (auto c : {rotation_construction::any, rotation_construction::kronecker,
                   rotation_construction::dense})
        CHECK_THROWS_WITH_AS(rotation::make(odd, {.construction = c}),
                             doctest::Contains("8589934593 x 8589934593 elements of 8 bytes "
                                               "overflows"),
                             qift::error);
    // Huge without wrapping: (2^30 + 1)² doubles are just over 2^63 bytes, over PTRDIFF_MAX.
    CHECK_THROWS_WITH_AS(rotation::random_orthogonal((std::size_t{1} << 30) + 1, 1),
                         doctest::Contains("exceeds the largest allocation"), qift::error);
    CHECK_THROWS_AS(qift::hadamard_matrix(std::size_t{1} << 62), qift::error);
}
