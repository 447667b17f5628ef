// SPDX-License-Identifier: MIT
// The llama2.c checkpoint reader: the real model in ../shared/models, and corrupted files.
#include <qift/model/llama2c.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <vector>

using namespace qift;

namespace {

const std::string model_path = std::string(QIFT_SHARED_DIR) + "/models/stories260K.bin";

std::vector<char> read_all(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::string write_temp(const std::vector<char>& bytes, const char* name) {
    const auto path = (std::filesystem::temp_directory_path() / name).string();
    std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
    return path;
}

}  // namespace

TEST_CASE("the real stories260K checkpoint loads with the documented shapes") {
    if (!std::filesystem::exists(model_path)) {
        MESSAGE("SKIPPED: " << model_path << " is missing (CI always has it)");
        return;
    }
    const auto m = load_llama2c(model_path);
    const auto& c = m.config;
    CHECK(c.dim == 64);
    CHECK(c.hidden_dim == 172);
    CHECK(c.n_layers == 5);
    CHECK(c.n_heads == 8);
    CHECK(c.n_kv_heads == 4);
    CHECK(c.vocab_size == 512);
    CHECK(c.seq_len == 512);
    CHECK(c.shared_classifier);
    CHECK(c.kv_dim() == 32);
    REQUIRE(m.layers.size() == 5);
    CHECK(m.layers[4].wk.rows() == 32);
    CHECK(m.layers[4].w2.cols() == 172);
    CHECK(m.classifier.rows() == 512);
    CHECK(m.classifier(3, 5) == m.token_embedding(3, 5));
    // RMSNorm gains of a trained model are positive-ish and O(1); weights finite and non-zero.
    double sum = 0;
    for (float x : m.layers[0].rms_att) sum += x;
    CHECK(sum / 64 > 0.1);
    for (float x : m.layers[2].w1.flat()) REQUIRE(std::isfinite(x));
}

TEST_CASE("corrupted checkpoints are rejected with a clear error") {
    std::vector<char> good;
    if (std::filesystem::exists(model_path)) {
        good = read_all(model_path);
    } else {
        // A tiny synthetic checkpoint with the same layout.
        const std::int32_t h[7] = {8, 12, 1, 2, 1, 16, 4};
        llama2c_config c{8, 12, 1, 2, 1, 16, 4, true};
        good.resize(28 + 4 * llama2c_float_count(c));
        std::memcpy(good.data(), h, 28);
    }
    CHECK_NOTHROW(load_llama2c(write_temp(good, "qift_ok.bin")));

    auto truncated = good;
    truncated.resize(good.size() - 10);
    CHECK_THROWS_WITH_AS(load_llama2c(write_temp(truncated, "qift_trunc.bin")),
                         doctest::Contains("(truncated)"), error);
    auto oversized = good;
    oversized.resize(good.size() + 4);
    CHECK_THROWS_WITH_AS(load_llama2c(write_temp(oversized, "qift_over.bin")),
                         doctest::Contains("(oversized)"), error);
    auto bad_heads = good;
    const std::int32_t six = 6;
    std::memcpy(bad_heads.data() + 3 * 4, &six, 4);  // n_heads = 6 does not divide dim
    CHECK_THROWS_WITH_AS(load_llama2c(write_temp(bad_heads, "qift_heads.bin")),
                         doctest::Contains("n_heads"), error);
    auto negative = good;
    const std::int32_t minus = -5;
    std::memcpy(negative.data() + 2 * 4, &minus, 4);  // n_layers = -5
    CHECK_THROWS_WITH_AS(load_llama2c(write_temp(negative, "qift_neg.bin")),
                         doctest::Contains("n_layers = -5"), error);
    auto min_vocab = good;
    const std::int32_t int_min = std::numeric_limits<std::int32_t>::min();
    std::memcpy(min_vocab.data() + 5 * 4, &int_min, 4);  // |INT32_MIN| overflowed (fuzz_llama2c)
    CHECK_THROWS_WITH_AS(load_llama2c(write_temp(min_vocab, "qift_min_vocab.bin")),
                         doctest::Contains("vocab_size"), error);
    CHECK_THROWS_WITH_AS(load_llama2c(write_temp({'a', 'b'}, "qift_short.bin")),
                         doctest::Contains("too short"), error);
    CHECK_THROWS_WITH_AS(load_llama2c("/nonexistent/qift.bin"), doctest::Contains("cannot open"),
                         error);
}

TEST_CASE("llama2c: sizes that overflow size_t are refused before allocating") {
    const auto header = [](std::initializer_list<std::int32_t> fields) {
        std::vector<char> bytes(fields.size() * 4);
        std::memcpy(bytes.data(), fields.begin(), bytes.size());
        return bytes;
    };
    // Every field at its bound: the weights would be about 2^48 bytes (no 64-bit overflow), so
    // the 28-byte file is refused by its size, before a weight is read.
    llama2c_config big{65536, 1 << 18, 1024, 1, 1, 1 << 21, 1 << 20};
    big.shared_classifier = false;
    const std::uint64_t floats = llama2c_float_count(big);
    CHECK(floats > (std::uint64_t{1} << 45));
    const auto path = write_temp(header({65536, 1 << 18, 1024, 1, 1, -(1 << 21), 1 << 20}),
                                 "qift_overflow_big.bin");
    const std::string implies =
        "is 28 bytes but its header implies " + std::to_string(28 + 4 * floats) + " (truncated)";
    CHECK_THROWS_WITH_AS(load_llama2c(path), doctest::Contains(implies.c_str()), error);
    // Fields beyond the bounds (dim · dim would overflow int32 arithmetic, layers · dim² 64-bit
    // ones in a careless reader) are refused by range.
    constexpr std::int32_t imax = std::numeric_limits<std::int32_t>::max();
    const auto dim = write_temp(header({imax, 64, 1, 1, 1, 300, 8}), "qift_overflow_dim.bin");
    CHECK_THROWS_WITH_AS(load_llama2c(dim),
                         doctest::Contains("header field dim = 2147483647 is outside"), error);
    const auto layers =
        write_temp(header({64, 64, imax, 1, 1, 300, 8}), "qift_overflow_layers.bin");
    CHECK_THROWS_WITH_AS(load_llama2c(layers),
                         doctest::Contains("n_layers = 2147483647 is outside"), error);
    for (const auto& p : {path, dim, layers}) std::filesystem::remove(p);
    // llama2c_float_count on a config no file can match: checked 64-bit arithmetic.
    const llama2c_config huge{imax, imax, imax, 1, 1, imax, imax};
    CHECK_THROWS_WITH_AS((void)llama2c_float_count(huge),
                         doctest::Contains("llama2c_float_count: "), error);
    CHECK_THROWS_WITH_AS((void)llama2c_float_count(llama2c_config{64, 64, 1, 0, 0, 300, 8}),
                         doctest::Contains("n_heads 0"), error);
    CHECK_THROWS_AS((void)llama2c_float_count(llama2c_config{64, -64, 1, 1, 1, 300, 8}), error);
}
