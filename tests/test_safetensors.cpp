// SPDX-License-Identifier: MIT
// Tests of safetensors.hpp and the pieces under it: the float16/bfloat16 conversions on every bit
// pattern against independent references, the strict JSON reader, writer → reader round trips
// through memory and memory-mapped files, a clear error for every malformed file, and quantized
// matrices that read back exactly.
#include <doctest/doctest.h>

#include <qift/safetensors.hpp>

#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "test_support.hpp"

using namespace qift;

namespace {

std::filesystem::path safetensors_temp_file(const std::string& name) {
    return std::filesystem::temp_directory_path() /
           ("qift_test_st_" + std::to_string(::getpid()) + "_" + name);
}

// Independent reference for binary16: (-1)^s · 2^(e-15) · (1 + m/1024), subnormals
// 2^-14 · m/1024, in double.
double half_reference(std::uint16_t h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    if (e == 31) return m ? std::nan("") : sign * INFINITY;
    return sign * (e == 0 ? std::ldexp(m / 1024.0, -14) : std::ldexp(1.0 + m / 1024.0, e - 15));
}

float bits_to_float(std::uint32_t b) {
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}
std::uint32_t float_to_bits(float f) {
    std::uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
}

// Reference float → half rounding: the nearest of all finite halves by search (ties to the even
// bit pattern), inf from 65520 on (IEEE: beyond the largest finite plus half an ulp).
std::uint16_t half_round_reference(float x, const std::vector<double>& positive) {
    const double a = std::fabs(double(x));
    const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
    if (a >= 65520.0) return sign | 0x7c00;
    const auto it = std::lower_bound(positive.begin(), positive.end(), a);
    std::size_t hi = std::size_t(it - positive.begin());
    if (hi == positive.size()) hi = positive.size() - 1;
    std::size_t pick = hi;
    if (hi > 0) {
        const double dl = a - positive[hi - 1], dh = positive[hi] - a;
        pick = dl < dh ? hi - 1 : dh < dl ? hi : (hi % 2 == 0 ? hi : hi - 1);
    }
    return static_cast<std::uint16_t>(sign | pick);
}

// Reference float → bfloat16: truncation or the next pattern up, whichever is nearer in double
// (ties to the even pattern).
std::uint16_t bf16_round_reference(float x) {
    const std::uint32_t b = float_to_bits(x);
    const auto lo = static_cast<std::uint16_t>(b >> 16), up = static_cast<std::uint16_t>(lo + 1);
    const double a = double(x), vl = double(bits_to_float(std::uint32_t(lo) << 16));
    const double vu = (up & 0x7f80) == 0x7f80 ? (x > 0 ? 1.0 : -1.0) * std::ldexp(1.0, 128)
                                              : double(bits_to_float(std::uint32_t(up) << 16));
    const double dl = std::fabs(a - vl), du = std::fabs(vu - a);
    return dl < du ? lo : du < dl ? up : (lo % 2 == 0 ? lo : up);
}

// A file image from a header text and a data buffer (header length field = header size).
std::string image(const std::string& header, const std::string& data) {
    std::string out;
    std::uint64_t n = header.size();
    for (int b = 0; b < 8; ++b) out += static_cast<char>((n >> (8 * b)) & 0xff);
    return out + header + data;
}

}  // namespace

TEST_CASE("float16: every bit pattern converts exactly and round-trips; NaN stays NaN") {
    std::size_t exact = 0, nan = 0, round_trip = 0;
    for (std::uint32_t i = 0; i < 65536; ++i) {
        const auto h = static_cast<std::uint16_t>(i);
        const float f = detail::half_to_float(h);
        const double want = half_reference(h);
        if (std::isnan(want)) {
            nan += std::isnan(f) && std::isnan(detail::half_to_float(detail::float_to_half(f))) &&
                   (detail::float_to_half(f) & 0x8000) == (h & 0x8000);
            continue;
        }
        exact += double(f) == want && std::signbit(f) == std::signbit(want);
        round_trip += detail::float_to_half(f) == h;
    }
    CHECK(exact == 65536 - 2046);
    CHECK(round_trip == 65536 - 2046);
    CHECK(nan == 2046);
    static_assert(detail::half_to_float(0x3c00) == 1.0f);
    static_assert(detail::float_to_half(65504.0f) == 0x7bff);
}

TEST_CASE("float16: float → half rounds to nearest even, against a search over every half") {
    std::vector<double> positive;  // every finite non-negative half, ascending with its bits
    for (std::uint16_t h = 0; h < 0x7c00; ++h) positive.push_back(half_reference(h));
    std::vector<float> xs;
    // Every midpoint between adjacent halves (exact ties) and its float neighbours.
    for (std::size_t k = 0; k + 1 < positive.size(); ++k) {
        const auto mid = float((positive[k] + positive[k + 1]) / 2);
        for (float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY)})
            xs.push_back(x), xs.push_back(-x);
    }
    // Random floats across and beyond the half range, and the edges.
    std::mt19937 gen(7);
    std::uniform_int_distribution<std::uint32_t> bits(0x30000000u, 0x48000000u);
    for (int k = 0; k < 200000; ++k)
        xs.push_back(bits_to_float(bits(gen) | (k % 2 ? 0x80000000u : 0)));
    for (float x : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e10f, INFINITY, -INFINITY,
                    std::ldexp(1.0f, -25), std::ldexp(1.5f, -25), std::ldexp(1.0f, -24)})
        xs.push_back(x);
    std::size_t wrong = 0;
    for (float x : xs) {
        const std::uint16_t got = detail::float_to_half(x),
                            want = std::isinf(x) ? std::uint16_t((x < 0 ? 0x8000 : 0) | 0x7c00)
                                                 : half_round_reference(x, positive);
        if (got != want && wrong++ < 5)
            MESSAGE("x = " << x << ": got " << got << ", want " << want);
    }
    CHECK(wrong == 0);
    CHECK(detail::float_to_half(65519.0f) == 0x7bff);
    CHECK(detail::float_to_half(65520.0f) == 0x7c00);
    CHECK(std::isnan(detail::half_to_float(detail::float_to_half(std::nanf("")))));
}

TEST_CASE(
    "bfloat16: every bit pattern converts exactly and round-trips; rounding to nearest even") {
    std::size_t exact = 0, nan = 0;
    for (std::uint32_t i = 0; i < 65536; ++i) {
        const auto b = static_cast<std::uint16_t>(i);
        const float f = detail::bfloat16_to_float(b);
        const std::uint32_t wide = i << 16;
        if (std::isnan(bits_to_float(wide))) {
            nan += std::isnan(f) &&
                   std::isnan(detail::bfloat16_to_float(detail::float_to_bfloat16(f)));
            continue;
        }
        exact += float_to_bits(f) == wide && detail::float_to_bfloat16(f) == b;
    }
    CHECK(exact == 65536 - 2 * 127);
    CHECK(nan == 2 * 127);
    std::mt19937 gen(11);
    std::uniform_int_distribution<std::uint32_t> any;
    std::size_t wrong = 0;
    for (int k = 0; k < 300000; ++k) {
        std::uint32_t b = any(gen);
        if (k % 3 == 0) b = (b & 0xffff0000u) | 0x8000u;  // exact ties
        const float x = bits_to_float(b);
        if (std::isnan(x)) continue;
        wrong += detail::float_to_bfloat16(x) !=
                 (std::isinf(x) ? std::uint16_t(b >> 16) : bf16_round_reference(x));
    }
    CHECK(wrong == 0);
    CHECK(detail::float_to_bfloat16(3.4028235e38f) == 0x7f80);  // rounds up to inf
}

TEST_CASE("json: strict RFC 8259 parsing") {
    using detail::json_value;
    const json_value v = detail::parse_json(
        R"( {"a": [1, -2, 3.5e-1, true, false, null], "s": "q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00",
             "o": {}, "e": [], "big": 18446744073709551615, "neg": -9223372036854775808} )",
        "t");
    REQUIRE(v.is(json_value::kind::object));
    CHECK(v.keys == std::vector<std::string>{"a", "s", "o", "e", "big", "neg"});
    const json_value& a = *v.find("a");
    REQUIRE(a.values.size() == 6);
    std::uint64_t u = 0;
    std::int64_t i = 0;
    double d = 0;
    CHECK(detail::json_to_u64(a.values[0], u));
    CHECK(u == 1);
    CHECK(!detail::json_to_u64(a.values[1], u));
    CHECK(detail::json_to_i64(a.values[1], i));
    CHECK(i == -2);
    CHECK(!detail::json_to_i64(a.values[2], i));
    CHECK(detail::json_to_double(a.values[2], d));
    CHECK(d == 0.35);
    CHECK(a.values[3].boolean);
    CHECK(a.values[5].is(json_value::kind::null));
    CHECK(v.find("s")->text == "q\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80");
    CHECK(detail::json_to_u64(*v.find("big"), u));
    CHECK(u == 18446744073709551615ull);
    CHECK(detail::json_to_i64(*v.find("neg"), i));
    CHECK(!detail::json_to_u64(
        json_value{json_value::kind::number, false, "18446744073709551616", {}, {}}, u));
    const auto bad = [](const std::string& text, const char* why) {
        CAPTURE(text);
        CHECK_THROWS_WITH_AS(detail::parse_json(text, "t.json"), doctest::Contains(why),
                             qift::error);
    };
    bad("", "unexpected end");
    bad("{\"a\": 1,}", "expected a string key");
    bad("[1, 2,]", "unexpected character ']'");
    bad("{\"a\": 1 // c\n}", "expected ',' or '}'");
    bad("{\"a\": 1, \"a\": 2}", "duplicate key \"a\"");
    bad("[01]", "leading zero");
    bad("[1.]", "no digits after '.'");
    bad("[1e]", "no exponent digits");
    bad("[-]", "malformed number");
    bad("[NaN]", "unexpected character 'N'");
    bad("[\"\\ud800\"]", "without its pair");
    bad("[\"\\udc00\"]", "lone low surrogate");
    bad("[\"a\tb\"]", "raw control character");
    bad("[\"\xc3\x28\"]", "invalid UTF-8");
    bad("[\"\xed\xa0\x80\"]", "invalid UTF-8");  // an encoded surrogate
    bad("[\"\\x\"]", "invalid escape");
    bad("[\"abc", "unterminated string");
    bad("{} x", "after the JSON value");
    bad(std::string(100, '[') + std::string(100, ']'), "64 deep");
    CHECK_THROWS_WITH_AS(detail::parse_json("[1, 2,]", "t.json"), doctest::Contains("t.json"),
                         qift::error);
    std::string out;
    detail::json_append_string(out, "a\"b\\c\n\x01");
    CHECK(out == "\"a\\\"b\\\\c\\u000a\\u0001\"");
    CHECK(detail::parse_json(out, "t").text == "a\"b\\c\n\x01");
}

TEST_CASE("safetensors: every dtype round-trips through memory and a memory-mapped file") {
    const matrix<float> w = test::gaussian_matrix(5, 7, 3);
    const std::vector<std::int8_t> i8{-128, -1, 0, 1, 127};
    const std::vector<std::uint8_t> u8{0, 255, 7};
    const std::vector<std::int16_t> i16{-32768, 3, 32767};
    const std::vector<std::uint16_t> u16{0, 65535};
    const std::vector<std::int32_t> i32{-2147483647 - 1, 5, 2147483647, 0};
    const std::vector<std::uint32_t> u32{4294967295u};
    const std::vector<std::int64_t> i64{-9223372036854775807 - 1, 9};
    const std::vector<std::uint64_t> u64{18446744073709551615ull};
    const std::vector<double> f64{1.0 / 3.0, -2.5};
    const bool flags[3] = {true, false, true};
    safetensors_writer sw;
    sw.add("w.f32", w.view());
    sw.add("w.f16", w.view(), safetensors_dtype::F16);
    sw.add("w.bf16", w.view(), safetensors_dtype::BF16);
    sw.add("w.f64", w.view(), safetensors_dtype::F64);
    sw.add("i8", std::span<const std::int8_t>(i8), {5});
    sw.add("u8", std::span<const std::uint8_t>(u8), {3, 1});
    sw.add("i16", std::span<const std::int16_t>(i16), {3});
    sw.add("u16", std::span<const std::uint16_t>(u16), {2});
    sw.add("i32", std::span<const std::int32_t>(i32), {2, 2});
    sw.add("u32", std::span<const std::uint32_t>(u32), {1});
    sw.add("i64", std::span<const std::int64_t>(i64), {2});
    sw.add("u64", std::span<const std::uint64_t>(u64), {1});
    sw.add("f64", std::span<const double>(f64), {2});
    sw.add("bool", std::span<const bool>(flags), {3});
    const float scalar = 4.5f;
    sw.add("scalar", std::span<const float>(&scalar, 1), {});
    sw.add("empty", std::span<const float>(), {0, 3});
    sw.add("név \"quoted\"", std::span<const float>(&scalar, 1), {1});
    sw.set_metadata("format", "pt");
    sw.set_metadata("note", "line\nbreak \"quoted\" ü");
    const std::string bytes = sw.bytes();
    std::uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    CHECK(n % 8 == 0);
    const auto path = safetensors_temp_file("all.safetensors");
    sw.write(path.string());
    for (const bool from_file : {false, true}) {
        CAPTURE(from_file);
        const safetensors_file f = from_file ? safetensors_file(path.string())
                                             : safetensors_file::from_bytes(bytes, "mem");
        CHECK(f.memory_mapped() == from_file);
        CHECK(f.tensors().size() == 17);
        REQUIRE(f.find_metadata("note") != nullptr);
        CHECK(*f.find_metadata("note") == "line\nbreak \"quoted\" ü");
        CHECK(f.metadata().size() == 2);
        // Tensors ordered by descending element size: every offset aligned.
        for (const auto& t : f.tensors()) CHECK(t.begin % dtype_size(t.dtype) == 0);
        CHECK(f.at("w.f32").shape == std::vector<std::size_t>{5, 7});
        const auto v = f.view<float>("w.f32");
        CHECK(std::equal(v.begin(), v.end(), w.data()));
        CHECK(std::ranges::equal(f.to_matrix("w.f32").flat(), w.flat()));
        const auto h = f.to_float("w.f16"), b = f.to_float("w.bf16");
        const auto d = f.to_double("w.f64");
        for (std::size_t k = 0; k < w.size(); ++k) {
            CHECK(h[k] == detail::half_to_float(detail::float_to_half(w.data()[k])));
            CHECK(b[k] == detail::bfloat16_to_float(detail::float_to_bfloat16(w.data()[k])));
            CHECK(d[k] == double(w.data()[k]));
        }
        CHECK(f.copy<std::int8_t>("i8") == i8);
        CHECK(f.copy<std::uint8_t>("u8") == u8);
        CHECK(f.copy<std::int16_t>("i16") == i16);
        CHECK(f.copy<std::uint16_t>("u16") == u16);
        CHECK(f.copy<std::int32_t>("i32") == i32);
        CHECK(std::ranges::equal(f.view<std::int32_t>("i32"), i32));
        CHECK(f.copy<std::uint32_t>("u32") == u32);
        CHECK(f.copy<std::int64_t>("i64") == i64);
        CHECK(f.copy<std::uint64_t>("u64") == u64);
        CHECK(f.copy<double>("f64") == f64);
        CHECK(f.copy<bool>("bool") == std::vector<bool>{true, false, true});
        CHECK(f.to_float("bool") == std::vector<float>{1, 0, 1});
        CHECK(f.to_float("i8")[0] == -128.0f);
        CHECK(f.to_double("i32")[0] == -2147483648.0);
        CHECK(f.at("scalar").shape.empty());
        CHECK(f.to_float("scalar") == std::vector<float>{4.5f});
        CHECK(f.to_float("empty").empty());
        CHECK(f.to_float("név \"quoted\"") == std::vector<float>{4.5f});
        CHECK_THROWS_WITH_AS(f.copy<float>("i8"),
                             doctest::Contains("tensor 'i8' is I8, read as F32"), qift::error);
        CHECK_THROWS_WITH_AS(f.to_float("nope"), doctest::Contains("no tensor 'nope'"),
                             qift::error);
        CHECK(f.to_matrix("i32").rows() == 2);
        CHECK_THROWS_WITH_AS(f.to_matrix("scalar"), doctest::Contains("expected a matrix"),
                             qift::error);
    }
    std::filesystem::remove(path);
    CHECK_THROWS_WITH_AS(safetensors_file(path.string()), doctest::Contains("cannot open"),
                         qift::error);
    CHECK_THROWS_WITH_AS(safetensors_file(std::filesystem::temp_directory_path().string()),
                         doctest::Contains("directory"), qift::error);
}

TEST_CASE("safetensors: all 65536 float16 and bfloat16 patterns read exactly") {
    std::string h16, b16;
    for (std::uint32_t i = 0; i < 65536; ++i) {
        h16 += static_cast<char>(i & 0xff), h16 += static_cast<char>(i >> 8);
    }
    b16 = h16;
    const std::string header =
        R"({"h":{"dtype":"F16","shape":[256,256],"data_offsets":[0,131072]},)"
        R"("b":{"dtype":"BF16","shape":[65536],"data_offsets":[131072,262144]}})";
    const auto f = safetensors_file::from_bytes(image(header, h16 + b16));
    const auto h = f.to_float("h");
    const auto hd = f.to_double("h");
    const auto b = f.to_float("b");
    std::size_t ok = 0;
    for (std::uint32_t i = 0; i < 65536; ++i) {
        const double want = half_reference(static_cast<std::uint16_t>(i));
        const float bw = bits_to_float(i << 16);
        const bool h_ok = std::isnan(want) ? std::isnan(h[i]) && std::isnan(hd[i])
                                           : double(h[i]) == want && hd[i] == want &&
                                                 std::signbit(h[i]) == std::signbit(want);
        const bool b_ok = std::isnan(bw) ? std::isnan(b[i]) : float_to_bits(b[i]) == (i << 16);
        ok += h_ok && b_ok;
    }
    CHECK(ok == 65536);
    // The writer stores every finite half / bf16 value back to its own bit pattern.
    std::vector<float> hv(h), bv(b);
    for (std::size_t i = 0; i < 65536; ++i) {
        if (std::isnan(hv[i])) hv[i] = 0;
        if (std::isnan(bv[i])) bv[i] = 0;
    }
    safetensors_writer sw;
    sw.add("h", std::span<const float>(hv), {65536}, safetensors_dtype::F16);
    sw.add("b", std::span<const float>(bv), {65536}, safetensors_dtype::BF16);
    const auto back = safetensors_file::from_bytes(sw.bytes());
    std::size_t same = 0;
    for (std::size_t i = 0; i < 65536; ++i) {
        std::uint16_t x, y;
        std::memcpy(&x, back.at("h").bytes.data() + 2 * i, 2);
        std::memcpy(&y, back.at("b").bytes.data() + 2 * i, 2);
        same += (std::isnan(h[i]) || x == i) && (std::isnan(b[i]) || y == i);
    }
    CHECK(same == 65536);
}

TEST_CASE("safetensors: malformed files fail with errors naming the file and the tensor") {
    const auto fails = [](const std::string& bytes, const std::string& text) {
        CAPTURE(text);
        CHECK_THROWS_WITH_AS(safetensors_file::from_bytes(bytes, "bad.safetensors"),
                             doctest::Contains(text.c_str()), qift::error);
        CHECK_THROWS_WITH_AS(safetensors_file::from_bytes(bytes, "bad.safetensors"),
                             doctest::Contains("bad.safetensors"), qift::error);
    };
    const std::string f32x2(8, '\0');
    const auto entry = [](const std::string& name, const std::string& dtype,
                          const std::string& shape, std::size_t b, std::size_t e) {
        return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
               ",\"data_offsets\":[" + std::to_string(b) + "," + std::to_string(e) + "]}";
    };
    const std::string ok = "{" + entry("a", "F32", "[2]", 0, 8) + "}";
    CHECK_NOTHROW(safetensors_file::from_bytes(image(ok, f32x2)));
    fails("", "too short for the 8-byte header length");
    fails("abc", "too short");
    {
        std::string s = image(ok, f32x2);
        s[0] = char(0xff);
        fails(s, "the header length field says 255 bytes");
    }
    {
        std::string s = image(ok, f32x2);
        s[5] = 1;  // a huge length
        fails(s, "truncated, or not a safetensors file");
    }
    fails(image("[1]", ""), "does not start with '{'");
    fails(image("", ""), "does not start with '{'");
    fails(image("{\"a\":{\"dtype\":\"F32\",}}", f32x2), "expected a string key");
    fails(image("{" + entry("a", "F8_E4M3", "[2]", 0, 2) + "}", "ab"),
          "tensor 'a': unknown dtype 'F8_E4M3'");
    fails(image("{" + entry("a", "F32", "[2]", 8, 0) + "}", f32x2),
          "tensor 'a': data_offsets [8, 0] has begin > end");
    fails(image("{" + entry("a", "F32", "[4]", 0, 16) + "}", f32x2),
          "tensor 'a': data_offsets [0, 16] runs past the 8 bytes of data");
    fails(image("{" + entry("a", "F32", "[3]", 0, 8) + "}", f32x2),
          "tensor 'a': shape [3] of F32 needs 12 bytes");
    fails(image("{" + entry("a", "F32", "[4294967296,4294967296]", 0, 8) + "}", f32x2),
          "tensor 'a': shape [4294967296, 4294967296] of F32 overflows");
    fails(image("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[1]", 4, 8) + "}",
                f32x2),
          "tensors 'a' [0, 8) and 'b' [4, 8) overlap");
    fails(image("{" + entry("a", "F32", "[1]", 4, 8) + "}", f32x2),
          "4 bytes before tensor 'a' [4, 8) belong to no tensor");
    fails(image("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "U8", "[2]", 6, 8) + "}",
                f32x2),
          "2 bytes before tensor 'b'");
    fails(image("{" + entry("a", "F32", "[1]", 0, 4) + "}", f32x2),
          "the last 4 bytes of the data buffer");
    fails(image("{" + entry("a", "U8", "[2]", 0, 2) + "," + entry("b", "F32", "[1]", 2, 6) + "," +
                    entry("c", "U8", "[2]", 6, 8) + "}",
                f32x2),
          "tensor 'b': data_offsets [2, 6] is misaligned");
    fails(image("{" + entry("a", "U8", "[1]", 0, 1) + "," + entry("b", "F32", "[1]", 1, 5) + "}",
                "abcde"),
          "misaligned");
    fails(image("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("a", "F32", "[1]", 4, 8) + "}",
                f32x2),
          "duplicate key \"a\"");
    fails(image(R"({"a":{"dtype":"F32","shape":[2]}})", f32x2),
          "tensor 'a': missing 'data_offsets'");
    fails(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", f32x2),
          "tensor 'a': unexpected key 'x'");
    fails(image(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", f32x2),
          "tensor 'a': 'shape' holds '-2', not a non-negative integer");
    fails(image(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", f32x2), "'2.0'");
    fails(image(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", f32x2),
          "'shape' is a number");
    fails(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", f32x2),
          "data_offsets has 3 entries");
    fails(image(R"({"a":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", f32x2),
          "unknown dtype a number");
    fails(image(R"({"a":[1]})", f32x2), "tensor 'a': its entry is an array");
    fails(image(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                f32x2),
          "__metadata__ value of 'k' is a number");
    fails(image(R"({"__metadata__":[]})", ""), "__metadata__ is an array");
    // BOOL bytes must be 0 or 1 (checked when read).
    const auto b = safetensors_file::from_bytes(
        image("{" + entry("b", "BOOL", "[2]", 0, 2) + "}", "\x01\x02"), "b.st");
    CHECK_THROWS_WITH_AS(b.to_float("b"), doctest::Contains("tensor 'b': BOOL element 1 is 2"),
                         qift::error);
    CHECK_THROWS_WITH_AS(b.copy<bool>("b"), doctest::Contains("BOOL element 1 is 2"), qift::error);
    // A header length that is not a multiple of 8: copies work, an unaligned view is refused.
    std::string hdr = "{" + entry("a", "F32", "[2]", 0, 8) + "}";
    while ((8 + hdr.size()) % 4 == 0) hdr += ' ';
    const auto odd = safetensors_file::from_bytes(
        image(hdr, std::string("\0\0\x80\x3f\0\0\0\x40", 8)), "odd.st");
    CHECK(odd.copy<float>("a") == std::vector<float>{1.0f, 2.0f});
    CHECK_THROWS_WITH_AS(odd.view<float>("a"), doctest::Contains("not 4-byte aligned"),
                         qift::error);
    // An empty file with an empty header object and no data is valid.
    CHECK(safetensors_file::from_bytes(image("{}", "")).tensors().empty());
}

TEST_CASE("safetensors writer: bad input is refused") {
    safetensors_writer sw;
    const std::vector<float> v{1, 2, 3};
    CHECK_THROWS_WITH_AS(sw.add("a", std::span<const float>(v), {2, 2}),
                         doctest::Contains("shape [2, 2] has 4"), qift::error);
    CHECK_THROWS_WITH_AS(sw.add("", std::span<const float>(v), {3}),
                         doctest::Contains("invalid tensor name"), qift::error);
    CHECK_THROWS_WITH_AS(sw.add("__metadata__", std::span<const float>(v), {3}),
                         doctest::Contains("invalid tensor name"), qift::error);
    CHECK_THROWS_WITH_AS(sw.add("\xff", std::span<const float>(v), {3}), doctest::Contains("UTF-8"),
                         qift::error);
    sw.add("a", std::span<const float>(v), {3});
    CHECK_THROWS_WITH_AS(sw.add("a", std::span<const float>(v), {3}),
                         doctest::Contains("'a' added twice"), qift::error);
    CHECK_THROWS_WITH_AS(sw.add("i", std::span<const float>(v), {3}, safetensors_dtype::I32),
                         doctest::Contains("not a float type"), qift::error);
    const std::vector<float> big{1.0f, 65520.0f};
    CHECK_THROWS_WITH_AS(sw.add("h", std::span<const float>(big), {2}, safetensors_dtype::F16),
                         doctest::Contains("tensor 'h': element 1 = 65520.000000 overflows F16"),
                         qift::error);
    CHECK_NOTHROW(sw.add("b", std::span<const float>(big), {2}, safetensors_dtype::BF16));
    const std::vector<float> huge{3.4028235e38f};
    CHECK_THROWS_WITH_AS(sw.add("b2", std::span<const float>(huge), {1}, safetensors_dtype::BF16),
                         doctest::Contains("overflows BF16"), qift::error);
    const std::vector<float> special{INFINITY, std::nanf("")};
    sw.add("s", std::span<const float>(special), {2}, safetensors_dtype::F16);
    const auto f = safetensors_file::from_bytes(sw.bytes());
    CHECK(std::isinf(f.to_float("s")[0]));
    CHECK(std::isnan(f.to_float("s")[1]));
    CHECK_THROWS_WITH_AS(sw.write("/nonexistent/dir/x.safetensors"),
                         doctest::Contains("cannot open"), qift::error);
}

TEST_CASE_TEMPLATE("safetensors: quantized matrices round-trip exactly", L, levels::mnz,
                   levels::asymmetric_int<2>, levels::nf2, levels::signed_int<4>) {
    const matrix<float> w = test::gaussian_matrix(6, 24, 9);
    scale_options opt;
    opt.group_size = 8;
    const quantized_matrix<L> q = quantize<L>(w, opt);
    safetensors_writer sw;
    add_quantized(sw, "model.layers.0.mlp.down_proj", q);
    sw.add("other", w.view(), safetensors_dtype::BF16);
    const auto path = safetensors_temp_file("q.safetensors");
    sw.write(path.string());
    const safetensors_file f(path.string());
    CHECK(stored_level_set(f, "model.layers.0.mlp.down_proj") == level_set_name<L>());
    const quantized_matrix<L> back = read_quantized<L>(f, "model.layers.0.mlp.down_proj");
    CHECK(back.group_size() == 8);
    CHECK(std::ranges::equal(back.codes().flat(), q.codes().flat()));
    CHECK(std::ranges::equal(back.scales().flat(), q.scales().flat()));
    CHECK(std::ranges::equal(back.zeros().flat(), q.zeros().flat()));
    CHECK(std::ranges::equal(back.dequantize().flat(), q.dequantize().flat()));
    const bool has_zeros = f.find("model.layers.0.mlp.down_proj.zeros") != nullptr;
    CHECK(has_zeros == level_traits<L>::has_zero_point);
    // Read as another level set, or from a prefix that is not there: a clear error.
    if constexpr (!std::is_same_v<L, levels::mnz>)
        CHECK_THROWS_WITH_AS(read_quantized<levels::mnz>(f, "model.layers.0.mlp.down_proj"),
                             doctest::Contains("read as 'mnz'"), qift::error);
    CHECK_THROWS_WITH_AS(read_quantized<L>(f, "nope"),
                         doctest::Contains("no __metadata__ entry 'nope.level_set'"), qift::error);
    std::filesystem::remove(path);
}

TEST_CASE("safetensors: read_quantized checks what it reads") {
    const matrix<float> w = test::gaussian_matrix(2, 4, 1);
    const auto q = test::quantize_fast<levels::mnz>(w);
    safetensors_writer sw;
    add_quantized(sw, "q", q);
    sw.set_metadata("q.group_size", "0");
    CHECK_THROWS_WITH_AS(
        read_quantized<levels::mnz>(safetensors_file::from_bytes(sw.bytes(), "g.st"), "q"),
        doctest::Contains("group_size '0'"), qift::error);
    sw.set_metadata("q.group_size", "3");  // does not divide 4: quantized_matrix refuses
    CHECK_THROWS_WITH_AS(read_quantized<levels::mnz>(safetensors_file::from_bytes(sw.bytes()), "q"),
                         doctest::Contains("group_size 3 does not divide"), qift::error);
    sw.set_metadata("q.group_size", "4");
    sw.set_metadata("q.levels", "[-3,-1,1,2]");
    CHECK_THROWS_WITH_AS(read_quantized<levels::mnz>(safetensors_file::from_bytes(sw.bytes()), "q"),
                         doctest::Contains("holds level set 'mnz' [-3,-1,1,2]"), qift::error);
    safetensors_writer bad;
    add_quantized(bad, "q", q);
    const std::vector<std::uint8_t> codes(8, 9);
    safetensors_writer sw2;
    sw2.add("q.codes", std::span<const std::uint8_t>(codes), {2, 4});
    sw2.add("q.scales", q.scales().view());
    for (const char* k : {"q.level_set", "q.levels", "q.group_size"})
        sw2.set_metadata(k, *safetensors_file::from_bytes(bad.bytes()).find_metadata(k));
    CHECK_THROWS_WITH_AS(
        read_quantized<levels::mnz>(safetensors_file::from_bytes(sw2.bytes()), "q"),
        doctest::Contains("code 9 out of range"), qift::error);
}

TEST_CASE("safetensors: sizes that overflow size_t are refused before allocating") {
    const auto fails = [](const std::string& header, const std::string& text) {
        CAPTURE(text);
        CHECK_THROWS_WITH_AS(
            safetensors_file::from_bytes(image(header, std::string(8, '\0')), "big.safetensors"),
            doctest::Contains(text.c_str()), qift::error);
    };
    const auto entry = [](const std::string& shape, const std::string& b, const std::string& e) {
        return "{\"a\":{\"dtype\":\"F32\",\"shape\":" + shape + ",\"data_offsets\":[" + b + "," +
               e + "]}}";
    };
    // The shape product wraps (2^33 x 2^33), or its bytes do (2^62 F32 = 2^64 bytes).
    fails(entry("[8589934592,8589934592]", "0", "8"),
          "tensor 'a': shape [8589934592, 8589934592] of F32 overflows");
    fails(entry("[4611686018427387904]", "0", "8"),
          "tensor 'a': shape [4611686018427387904] of F32 overflows");
    // Huge without overflow (2^40 F32 = 2^42 bytes): its offsets run past the data.
    fails(entry("[1099511627776]", "0", "4398046511104"), "runs past the 8 bytes of data");
    // Offsets near 2^64, and past it.
    fails(entry("[2]", "18446744073709551615", "18446744073709551615"), "runs past");
    fails(entry("[2]", "0", "18446744073709551615"), "runs past");
    fails(entry("[2]", "18446744073709551608", "0"), "has begin > end");
    fails(entry("[2]", "0", "18446744073709551616"), "not a non-negative integer");
    fails(entry("[18446744073709551616]", "0", "8"), "not a non-negative integer");
    // A zero dimension: 0 bytes however large the others.
    CHECK_NOTHROW(safetensors_file::from_bytes(
        image("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,18446744073709551615,4611686018427387904],"
              "\"data_offsets\":[0,0]}}",
              "")));
    // The writer: a shape whose product wraps to the value count is refused.
    safetensors_writer w;
    CHECK_THROWS_WITH_AS(
        w.add("a", std::span<const float>(), {std::size_t{1} << 32, std::size_t{1} << 32}),
        doctest::Contains("shape [4294967296, 4294967296]: size 4294967296 x 4294967296 "
                          "overflows 64-bit size arithmetic"),
        qift::error);
    CHECK_THROWS_AS(
        w.add<std::uint8_t>("b", std::span<const std::uint8_t>(), {std::size_t{1} << 63, 2}),
        qift::error);
}
