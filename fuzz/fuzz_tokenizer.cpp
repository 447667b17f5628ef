// SPDX-License-Identifier: MIT
// libFuzzer target: the llama2.c tokenizer reader on arbitrary file contents, then encode and
// decode of arbitrary text with the tokenizer it accepted. Input: 2 bytes of vocabulary size
// offset, 2 bytes of file length, the file, then the text.
#include <qift/model/tokenizer.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    qift::fuzz::byte_reader in(data, size);
    const int vocab = qift::tokenizer::min_vocab_size + in.take<std::uint16_t>() % 512;
    const std::size_t file_len = std::min<std::size_t>(in.take<std::uint16_t>(), in.remaining());
    const auto rest = in.rest();
    const std::string& path = qift::fuzz::scratch_file(rest.first(file_len));
    const std::string_view text(reinterpret_cast<const char*>(rest.data()) + file_len,
                                rest.size() - file_len);
    try {
        const auto tok = qift::load_tokenizer(path, vocab);
        const auto ids = tok.encode(text, true, true);
        for (int id : ids)
            if (id < 0 || id >= vocab) qift::fuzz::violated("tokenizer: id out of range");
        (void)tok.decode(ids);
    } catch (const qift::error&) {
    }
    return 0;
}
