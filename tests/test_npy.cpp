// SPDX-License-Identifier: MIT
// Tests of npy.hpp: round trips through files and memory, bytes NumPy itself writes, and a clear
// error for every kind of malformed or truncated file.
#include <doctest/doctest.h>

#include <qift/npy.hpp>

#include <unistd.h>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace qift;

namespace {

// What np.save writes for np.arange(6, dtype='<f4').reshape(2, 3) (version 1.0, 128-byte
// header in NumPy ≥ 2; the reader accepts any padding).
std::string numpy_bytes(const std::string& descr, const std::string& shape,
                        const std::string& payload, bool fortran = false) {
    std::string dict = "{'descr': '" + descr +
                       "', 'fortran_order': " + (fortran ? "True" : "False") +
                       ", 'shape': " + shape + ", }";
    dict.append((64 - (10 + dict.size() + 1) % 64) % 64, ' ');
    dict += '\n';
    std::string out("\x93NUMPY\x01\x00", 8);
    out += static_cast<char>(dict.size() & 0xff);
    out += static_cast<char>(dict.size() >> 8);
    return out + dict + payload;
}

std::string floats_le(std::initializer_list<float> v) {
    std::string s;
    for (float x : v) s.append(reinterpret_cast<const char*>(&x), sizeof x);
    return s;
}

std::filesystem::path npy_temp_file(const std::string& name) {
    return std::filesystem::temp_directory_path() /
           ("qift_test_npy_" + std::to_string(::getpid()) + "_" + name);
}

}  // namespace

TEST_CASE("npy: matrices round-trip through files") {
    matrix<float> m(3, 5);
    for (std::size_t i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(i) * 0.5f - 3.0f;
    const auto path = npy_temp_file("f32.npy");
    write_npy<float>(path.string(), m.view());
    const matrix<float> back = read_npy_matrix<float>(path.string());
    CHECK(back.rows() == 3);
    CHECK(back.cols() == 5);
    CHECK(std::ranges::equal(back.flat(), m.flat()));
    // float32 file read as double
    const matrix<double> as_double = read_npy_matrix<double>(path.string());
    CHECK(as_double(2, 4) == double(m(2, 4)));
    // A strided view writes only its columns.
    write_npy<float>(path.string(), matrix_view<const float>(m.data(), 3, 2, 5));
    const matrix<float> sub = read_npy_matrix<float>(path.string());
    CHECK(sub.cols() == 2);
    CHECK(sub(2, 1) == m(2, 1));
    // uint8 codes
    matrix<std::uint8_t> codes(2, 4);
    for (std::size_t i = 0; i < codes.size(); ++i) codes.data()[i] = static_cast<std::uint8_t>(i);
    write_npy<std::uint8_t>(path.string(), codes.view());
    CHECK(std::ranges::equal(read_npy_matrix<std::uint8_t>(path.string()).flat(), codes.flat()));
    CHECK_THROWS_WITH_AS(read_npy_matrix<std::int32_t>(path.string()),
                         doctest::Contains("expected 'i4'"), qift::error);
    std::filesystem::remove(path);
    CHECK_THROWS_WITH_AS(read_npy<float>(path.string()), doctest::Contains("cannot open"),
                         qift::error);
}

TEST_CASE("npy: header layout, shapes of every rank") {
    const std::vector<double> v{1.0, -2.0, 3.5};
    const std::size_t shape1[1] = {3};
    const std::string bytes = format_npy<double>(v, shape1);
    CHECK(bytes.find("'shape': (3,)") != std::string::npos);
    CHECK(bytes.find("'descr': '<f8'") != std::string::npos);
    CHECK((bytes.size() - v.size() * sizeof(double)) % 64 == 0);
    const npy_array<double> a = parse_npy<double>(bytes);
    CHECK(a.shape == std::vector<std::size_t>{3});
    CHECK(a.data[2] == 3.5);
    const std::vector<float> scalar{7.0f};
    const npy_array<float> s = parse_npy<float>(format_npy<float>(scalar, {}));
    CHECK(s.shape.empty());
    CHECK(s.data[0] == 7.0f);
    const std::vector<float> empty;
    const std::size_t shape0[2] = {0, 4};
    const npy_array<float> e = parse_npy<float>(format_npy<float>(empty, shape0));
    CHECK(e.shape == std::vector<std::size_t>{0, 4});
    const std::size_t wrong[2] = {2, 2};
    CHECK_THROWS_AS(format_npy<double>(v, wrong), qift::error);
}

TEST_CASE("npy: reads what NumPy writes, including big-endian and version 2.0") {
    const auto a = parse_npy<float>(numpy_bytes("<f4", "(2, 3)", floats_le({0, 1, 2, 3, 4, 5})));
    CHECK(a.shape == std::vector<std::size_t>{2, 3});
    CHECK(a.data[4] == 4.0f);
    std::string be;
    for (float x : {1.5f, -2.0f}) {
        const auto* p = reinterpret_cast<const char*>(&x);
        for (int b = 3; b >= 0; --b) be += p[b];
    }
    const auto b = parse_npy<float>(numpy_bytes(">f4", "(2,)", be));
    CHECK(b.data[0] == 1.5f);
    CHECK(b.data[1] == -2.0f);
    // Version 2.0: 4-byte header length.
    std::string v1 = numpy_bytes("<f4", "(1,)", floats_le({9}));
    const std::string dict = v1.substr(10, v1.size() - 10 - 4);
    std::string v2("\x93NUMPY\x02\x00", 8);
    v2 += static_cast<char>(dict.size() & 0xff);
    v2 += static_cast<char>(dict.size() >> 8);
    v2 += std::string(2, '\0');
    v2 += dict + floats_le({9});
    CHECK(parse_npy<float>(v2).data[0] == 9.0f);
    // Keys in another order, double quotes, no trailing comma.
    std::string odd = "{\"shape\": (1, 1), 'fortran_order': False, 'descr': '<f4'}";
    odd += '\n';
    std::string f("\x93NUMPY\x01\x00", 8);
    f += static_cast<char>(odd.size());
    f += '\0';
    CHECK(parse_npy<float>(f + odd + floats_le({4})).data[0] == 4.0f);
}

TEST_CASE("npy: malformed and truncated files fail with clear errors") {
    const std::string good = numpy_bytes("<f4", "(2, 3)", floats_le({0, 1, 2, 3, 4, 5}));
    const auto fails_with = [](const std::string& bytes, const char* text) {
        CAPTURE(text);
        CHECK_THROWS_WITH_AS(parse_npy<float>(bytes, "x.npy"), doctest::Contains(text),
                             qift::error);
    };
    fails_with("", "too short");
    fails_with("PK\x03\x04 not numpy at all", "bad magic");
    std::string v = good;
    v[6] = 9;
    fails_with(v, "version 9.0");
    fails_with(good.substr(0, 40), "truncated header");
    fails_with(good.substr(0, good.size() - 3), "truncated data");
    fails_with(good + "xx", "2 unexpected bytes");
    fails_with(numpy_bytes("<f4", "(2, 3)", floats_le({0, 1, 2, 3, 4, 5}), true), "fortran_order");
    fails_with(numpy_bytes("<c8", "(1,)", floats_le({0, 0})), "unsupported dtype '<c8'");
    fails_with(numpy_bytes("<f1", "(1,)", "a"), "unsupported dtype '<f1'");
    fails_with(numpy_bytes("<V4", "(1,)", "abcd"), "unsupported dtype '<V4'");
    fails_with(numpy_bytes("<f4", "(2, x)", ""), "malformed header");
    std::string missing = "{'descr': '<f4', 'shape': (1,), }";
    missing += '\n';
    std::string m("\x93NUMPY\x01\x00", 8);
    m += static_cast<char>(missing.size());
    m += '\0';
    fails_with(m + missing + floats_le({1}), "lacks the key 'fortran_order'");
    std::string no_newline = good;
    no_newline[no_newline.size() - 24 - 1] = ' ';
    fails_with(no_newline, "newline");
    fails_with(numpy_bytes("<f4", "(99999999999, 99999999999, 99999999999)", ""), "overflow");
    // The file name is in the message.
    CHECK_THROWS_WITH_AS(parse_npy<float>("", "weights.npy"), doctest::Contains("weights.npy"),
                         qift::error);
}

namespace {

// An independent reference for IEEE binary16: (-1)^s · 2^(e-15) · (1 + m/1024), subnormals
// 2^-14 · m/1024, in double.
double npy_half_reference(std::uint16_t h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    if (e == 31) return m ? std::nan("") : sign * INFINITY;
    return sign * (e == 0 ? std::ldexp(m / 1024.0, -14) : std::ldexp(1.0 + m / 1024.0, e - 15));
}

std::string u16_bytes(const std::vector<std::uint16_t>& v, bool big_endian = false) {
    std::string s;
    for (std::uint16_t x : v) {
        const char lo = static_cast<char>(x & 0xff), hi = static_cast<char>(x >> 8);
        s += big_endian ? hi : lo;
        s += big_endian ? lo : hi;
    }
    return s;
}

}  // namespace

TEST_CASE("npy: float16 files convert exactly, every bit pattern, both byte orders") {
    std::vector<std::uint16_t> all(65536);
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<std::uint16_t>(i);
    for (const bool big : {false, true}) {
        const std::string bytes =
            numpy_bytes(big ? ">f2" : "<f2", "(256, 256)", u16_bytes(all, big));
        const auto f = parse_npy<float>(bytes);
        const auto d = parse_npy<double>(bytes);
        REQUIRE(f.shape == std::vector<std::size_t>{256, 256});
        std::size_t nan = 0, exact = 0;
        for (std::size_t i = 0; i < all.size(); ++i) {
            const double want = npy_half_reference(all[i]);
            if (std::isnan(want)) {
                nan += std::isnan(f.data[i]) && std::isnan(d.data[i]);
                continue;
            }
            exact += double(f.data[i]) == want && d.data[i] == want &&
                     std::signbit(f.data[i]) == std::signbit(want);
        }
        CHECK(nan == 2 * 1023);
        CHECK(exact == 65536 - 2 * 1023);
    }
    // What np.save writes for np.array([1, -2.5, 65504, 6e-8], dtype=np.float16).
    const auto a =
        parse_npy<float>(numpy_bytes("<f2", "(4,)", u16_bytes({0x3c00, 0xc100, 0x7bff, 0x0001})));
    CHECK(a.data[0] == 1.0f);
    CHECK(a.data[1] == -2.5f);
    CHECK(a.data[2] == 65504.0f);
    CHECK(a.data[3] == std::ldexp(1.0f, -24));
    // float16 is a float type: integer T refuses it.
    CHECK_THROWS_WITH_AS(parse_npy<std::int32_t>(numpy_bytes("<f2", "(1,)", "ab")),
                         doctest::Contains("expected 'i4'"), qift::error);
}

TEST_CASE("npy: bfloat16 as ml_dtypes saves it ('<V2'), by name, or as uint16 bits with the flag") {
    std::vector<std::uint16_t> all(65536);
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<std::uint16_t>(i);
    const std::string payload = u16_bytes(all);
    const auto check_all = [&](const npy_array<float>& a) {
        std::size_t nan = 0, exact = 0;
        for (std::size_t i = 0; i < all.size(); ++i) {
            // bfloat16 is the top half of a float32: the reference is the bit shift itself.
            const std::uint32_t wide = std::uint32_t(all[i]) << 16;
            float want;
            std::memcpy(&want, &wide, 4);
            if (std::isnan(want))
                nan += std::isnan(a.data[i]);
            else
                exact += std::memcmp(&want, &a.data[i], 4) == 0;
        }
        CHECK(nan == 2 * 127);
        CHECK(exact == 65536 - 2 * 127);
    };
    check_all(parse_npy<float>(numpy_bytes("<V2", "(65536,)", payload)));
    check_all(parse_npy<float>(numpy_bytes("|V2", "(65536,)", payload)));
    check_all(parse_npy<float>(numpy_bytes("bfloat16", "(65536,)", payload)));
    check_all(
        parse_npy<float>(numpy_bytes("<u2", "(65536,)", payload), "x", {.bfloat16_bits = true}));
    check_all(
        parse_npy<float>(numpy_bytes("<i2", "(65536,)", payload), "x", {.bfloat16_bits = true}));
    check_all(parse_npy<float>(numpy_bytes(">u2", "(65536,)", u16_bytes(all, true)), "x",
                               {.bfloat16_bits = true}));
    const auto d = parse_npy<double>(numpy_bytes("<V2", "(2,)", u16_bytes({0x3f80, 0xc0a0})));
    CHECK(d.data[0] == 1.0);
    CHECK(d.data[1] == -5.0);
    // Without the flag a uint16 file holds integers.
    CHECK(parse_npy<float>(numpy_bytes("<u2", "(1,)", u16_bytes({0x3f80}))).data[0] == 16256.0f);
    // The flag needs a float destination and a 16-bit integer file.
    CHECK_THROWS_WITH_AS(
        parse_npy<std::int32_t>(numpy_bytes("<i4", "(1,)", "abcd"), "x", {.bfloat16_bits = true}),
        doctest::Contains("read the file into float"), qift::error);
    CHECK_THROWS_WITH_AS(
        parse_npy<float>(numpy_bytes("<i4", "(1,)", "abcd"), "x", {.bfloat16_bits = true}),
        doctest::Contains("expected 16-bit integers"), qift::error);
    // Through a file, as a matrix.
    const auto path = npy_temp_file("bf16.npy");
    {
        std::ofstream f(path, std::ios::binary);
        const std::string b =
            numpy_bytes("<V2", "(2, 2)", u16_bytes({0x3f80, 0x4000, 0x4040, 0x4080}));
        f.write(b.data(), std::streamsize(b.size()));
    }
    const matrix<float> m = read_npy_matrix<float>(path.string());
    CHECK(m(1, 1) == 4.0f);
    std::filesystem::remove(path);
}

// Run by ctest's hf_prose6M test after tests/export_hf.py wrote QIFT_HF_DIR/npy with np.save.
TEST_CASE("npy: float16 and bfloat16 files written by NumPy read exactly") {
    const char* env = std::getenv("QIFT_HF_DIR");
    if (!env) {
        MESSAGE(
            "SKIPPED: QIFT_HF_DIR is not set (ctest's hf_prose6M test runs this case after "
            "tests/export_hf.py wrote the files)");
        return;
    }
    const std::string dir = std::string(env) + "/npy/";
    const auto h = read_npy<float>(dir + "f16_all.npy");
    const auto hb = read_npy<double>(dir + "f16_all_be.npy");
    const auto bv = read_npy<float>(dir + "bf16_void.npy");
    const auto bb = read_npy<float>(dir + "bf16_bits.npy", {.bfloat16_bits = true});
    CHECK(h.shape == std::vector<std::size_t>{256, 256});
    std::size_t ok = 0;
    for (std::uint32_t i = 0; i < 65536; ++i) {
        const double want = npy_half_reference(static_cast<std::uint16_t>(i));
        const std::uint32_t wide = i << 16;
        float bw;
        std::memcpy(&bw, &wide, 4);
        const bool h_ok = std::isnan(want) ? std::isnan(h.data[i]) && std::isnan(hb.data[i])
                                           : double(h.data[i]) == want && hb.data[i] == want;
        const bool b_ok = std::isnan(bw) ? std::isnan(bv.data[i]) && std::isnan(bb.data[i])
                                         : std::memcmp(&bw, &bv.data[i], 4) == 0 &&
                                               std::memcmp(&bw, &bb.data[i], 4) == 0;
        ok += h_ok && b_ok;
    }
    CHECK(ok == 65536);
    // Without the flag the bit patterns are integers.
    CHECK(read_npy<float>(dir + "bf16_bits.npy").data[0x3f80] == 16256.0f);
}

TEST_CASE("npy: sizes that overflow size_t are refused before allocating") {
    const auto fails = [](const std::string& bytes, const std::string& text) {
        CAPTURE(text);
        CHECK_THROWS_WITH_AS(parse_npy<float>(bytes, "big.npy"), doctest::Contains(text.c_str()),
                             qift::error);
        CHECK_THROWS_WITH_AS(parse_npy<double>(bytes, "big.npy"), doctest::Contains("big.npy"),
                             qift::error);
    };
    // The shape product wraps: (2^33, 2^33), and (2^62, 4).
    fails(numpy_bytes("<f4", "(8589934592, 8589934592)", floats_le({1, 2})),
          "npy: big.npy: shape: size 8589934592 x 8589934592 overflows 64-bit size arithmetic");
    fails(numpy_bytes("<f8", "(4611686018427387904, 4)", ""), "overflows 64-bit");
    // The element count fits but not its bytes: 2^61 float64 are 2^64 bytes; 2^63 elements are
    // over the largest allocation even as bytes.
    fails(numpy_bytes("<f8", "(1152921504606846976, 2)", ""),
          "2305843009213693952 x 8 overflows 64-bit");
    fails(numpy_bytes("<u1", "(2305843009213693952, 4)", ""), "exceeds the largest allocation");
    // Huge without overflow (2^40 x 2^20 float32 = 2^62 bytes): refused against the file size.
    fails(numpy_bytes("<f4", "(1099511627776, 1048576)", floats_le({1})),
          "need 4611686018427387904 bytes, the file has 4");
    // A version 2.0 header length of 2^32 − 1.
    std::string v2("\x93NUMPY\x02\x00\xff\xff\xff\xff{}\n", 15);
    fails(v2, "truncated header: it declares 4294967295 bytes");
    // A zero dimension makes the product 0 however large the others are (as NumPy has it).
    const auto empty = parse_npy<float>(numpy_bytes("<f4", "(0, 99999999999, 99999999999)", ""));
    CHECK(empty.data.empty());
    CHECK(empty.shape == std::vector<std::size_t>{0, 99999999999, 99999999999});
    // Through a file, and the writer: a shape whose product wraps to data.size() is refused.
    const auto path = npy_temp_file("qift_overflow_big.npy");
    {
        const std::string bytes = numpy_bytes("<f4", "(8589934592, 8589934593)", "");
        std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
    }
    CHECK_THROWS_WITH_AS(read_npy_matrix<float>(path.string()),
                         doctest::Contains("8589934592 x 8589934593"), qift::error);
    std::filesystem::remove(path);
    const std::size_t wraps[2] = {std::size_t{1} << 32, std::size_t{1} << 32};
    CHECK_THROWS_WITH_AS(format_npy<float>(std::span<const float>(), wraps),
                         doctest::Contains("format_npy: shape: size 4294967296 x 4294967296"),
                         qift::error);
}
