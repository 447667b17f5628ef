// SPDX-License-Identifier: MIT
// Packing: exact round trips for every shape, the documented bit positions, and the claim the
// layout is built on: one shift and one mask per slot unpack a register of consecutive codes.
#include <qift/detail/xsimd.hpp>
#include <qift/pack.hpp>
#include <qift/scale.hpp>

#include <doctest/doctest.h>

#include <cstring>
#include <limits>

#include "test_support.hpp"

using namespace qift;

TEST_CASE_TEMPLATE("pack/unpack round trips exactly for every shape", B,
                   std::integral_constant<unsigned, 1>, std::integral_constant<unsigned, 2>,
                   std::integral_constant<unsigned, 4>) {
    constexpr unsigned bits = B::value;
    for (std::size_t rows : {1u, 3u, 8u})
        for (std::size_t cols :
             {1u, 3u, 63u, 64u, 65u, 127u, 128u, 255u, 256u, 257u, 511u, 513u, 1000u, 4097u}) {
            const auto codes =
                test::random_codes(rows, cols, bits, static_cast<std::uint32_t>(cols));
            const auto p = pack<bits>(codes);
            CHECK(p.row_bytes() % 64 == 0);
            CHECK(p.padded_cols() >= cols);
            CHECK(p.padded_cols() < cols + packed_codes<bits>::block_codes);
            const auto u = unpack(p);
            CHECK(std::memcmp(u.data(), codes.data(), codes.size()) == 0);
            // padding is code 0
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t c = cols; c < p.padded_cols(); ++c) CHECK(p.get(r, c) == 0);
        }
}

TEST_CASE("documented bit positions of the 2-bit layout") {
    matrix<std::uint8_t> codes(1, 300);
    codes(0, 0) = 1;    // byte 0, bits 0-1
    codes(0, 64) = 2;   // byte 0, bits 2-3
    codes(0, 128) = 3;  // byte 0, bits 4-5
    codes(0, 255) = 1;  // byte 63, bits 6-7
    codes(0, 256) = 3;  // second block: byte 64, bits 0-1
    const auto p = pack<2>(codes);
    CHECK(p.row_bytes() == 128);
    CHECK(p.row_data(0)[0] == (1 | 2 << 2 | 3 << 4));
    CHECK(p.row_data(0)[63] == (1 << 6));
    CHECK(p.row_data(0)[64] == 3);
}

TEST_CASE_TEMPLATE("one shift and one mask per slot yield a register of consecutive codes", B,
                   std::integral_constant<unsigned, 1>, std::integral_constant<unsigned, 2>,
                   std::integral_constant<unsigned, 4>) {
    constexpr unsigned bits = B::value;
    using P = packed_codes<bits>;
    const auto codes = test::random_codes(2, 3 * P::block_codes - 5, bits, 99);
    const auto p = pack<bits>(codes);
    using batch = xsimd::batch<std::uint32_t>;
    const std::uint32_t byte_mask = 0x01010101u * P::mask;
    for (std::size_t r = 0; r < 2; ++r)
        for (std::size_t blk = 0; blk < p.row_bytes() / 64; ++blk)
            for (std::size_t slot = 0; slot < P::slots; ++slot)
                for (std::size_t off = 0; off < 64; off += batch::size * 4) {
                    const auto* src =
                        reinterpret_cast<const std::uint32_t*>(p.row_data(r) + blk * 64 + off);
                    const batch v = (batch::load_aligned(src) >> static_cast<int>(slot * bits)) &
                                    batch(byte_mask);
                    alignas(64) std::uint8_t out[batch::size * 4];
                    v.store_aligned(reinterpret_cast<std::uint32_t*>(out));
                    for (std::size_t j = 0; j < batch::size * 4; ++j) {
                        const std::size_t c = blk * P::block_codes + slot * 64 + off + j;
                        CHECK(out[j] == (c < codes.cols() ? codes(r, c) : 0));
                    }
                }
}

TEST_CASE("pack rejects codes that do not fit and empty matrices") {
    matrix<std::uint8_t> codes(2, 10, 1);
    codes(1, 7) = 4;
    CHECK_THROWS_WITH_AS(pack<2>(codes), "pack: codes(1, 7) = 4 does not fit in 2 bits", error);
    CHECK_THROWS_AS(pack<4>(matrix<std::uint8_t>()), error);
}

namespace {
struct pack_user_set {
    static constexpr unsigned bits = 2;
    static constexpr std::array<float, 4> levels{-2.5f, -0.5f, 0.5f, 2.5f};
};
}  // namespace

TEST_CASE("packing a quantized matrix of a user-defined 2-bit set") {
    const auto w = test::gaussian_matrix(5, 300, 8);
    const auto q = quantize<pack_user_set>(w);
    const auto p = pack<storage_bits<pack_user_set>>(q.codes());
    CHECK(std::memcmp(unpack(p).data(), q.codes().data(), q.codes().size()) == 0);
    static_assert(storage_bits<levels::int3> == 4);
}

TEST_CASE("pack: sizes that overflow size_t are refused before allocating") {
    constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
    constexpr std::size_t t40 = std::size_t{1} << 40;
    // rows · row_bytes wraps (2^40 rows of 2^38 bytes).
    CHECK_THROWS_WITH_AS(packed_codes<2>(t40, t40),
                         doctest::Contains("packed_codes: size 1099511627776 x 274877906944"),
                         error);
    // No wrap, but 2^25 rows of 2^38 bytes (2^41 one-bit codes) are 2^63 bytes, over PTRDIFF_MAX.
    CHECK_THROWS_WITH_AS(packed_codes<1>(std::size_t{1} << 25, std::size_t{1} << 41),
                         doctest::Contains("exceeds the largest allocation"), error);
    // Padding cols up to whole blocks would wrap.
    CHECK_THROWS_WITH_AS(packed_codes<4>(1, max),
                         doctest::Contains("cols 18446744073709551615 overflows"), error);
    CHECK_THROWS_AS(packed_codes<1>(0, max - 10), error);
    // The largest cols that pads without wrapping, with no rows: nothing allocated.
    const packed_codes<2> none(0, max / 256 * 256);
    CHECK(none.size_bytes() == 0);
    CHECK(none.padded_cols() == max / 256 * 256);
}
