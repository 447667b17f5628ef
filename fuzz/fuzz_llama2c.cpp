// SPDX-License-Identifier: MIT
// libFuzzer target: the llama2.c checkpoint reader on arbitrary file contents (written to a
// scratch file: the reader takes a path). Sizes come from the header, so this is where an
// unchecked product or an allocation before validation would show.
#include <qift/model/llama2c.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string& path = qift::fuzz::scratch_file({data, size});
    try {
        const auto m = qift::load_llama2c(path);
        if (m.layers.size() != std::size_t(m.config.n_layers))
            qift::fuzz::violated("llama2c: layer count");
        if (m.token_embedding.rows() != std::size_t(m.config.vocab_size))
            qift::fuzz::violated("llama2c: embedding rows");
    } catch (const qift::error&) {
    }
    return 0;
}
