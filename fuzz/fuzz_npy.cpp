// SPDX-License-Identifier: MIT
// libFuzzer target: the .npy parser on arbitrary bytes, read as every element type it offers.
#include <qift/npy.hpp>

#include "fuzz_support.hpp"

namespace {

template <class T>
void parse_as(std::string_view bytes) {
    try {
        const auto a = qift::parse_npy<T>(bytes, "fuzz");
        std::size_t n = 1;
        for (std::size_t d : a.shape) n *= d;
        if (n != a.data.size()) qift::fuzz::violated("npy: shape does not match the data");
    } catch (const qift::error&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    parse_as<float>(bytes);
    parse_as<double>(bytes);
    parse_as<std::int32_t>(bytes);
    parse_as<std::int64_t>(bytes);
    parse_as<std::uint8_t>(bytes);
    return 0;
}
