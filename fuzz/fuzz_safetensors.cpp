// SPDX-License-Identifier: MIT
// libFuzzer target: the safetensors reader (its strict JSON header parser included) on arbitrary
// bytes; every tensor of an accepted file is converted to float and, for ranks 1 and 2, to a
// matrix. Properties: an accepted tensor's bytes lie inside the file and its value count is the
// product of its shape.
#include <qift/safetensors.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    try {
        const auto f = qift::safetensors_file::from_bytes(bytes, "fuzz");
        for (const auto& t : f.tensors()) {
            std::size_t n = 1;
            for (std::size_t d : t.shape) n *= d;
            const auto v = f.to_float(t.name);
            if (v.size() != n) qift::fuzz::violated("safetensors: value count");
            if (t.shape.size() == 1 || t.shape.size() == 2) (void)f.to_matrix(t.name);
        }
        for (const auto& [k, v] : f.metadata())
            if (f.find_metadata(k) == nullptr) qift::fuzz::violated("safetensors: metadata key");
    } catch (const qift::error&) {
    }
    return 0;
}
