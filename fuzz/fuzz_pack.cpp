// SPDX-License-Identifier: MIT
// libFuzzer target: pack / unpack of arbitrary code matrices at 1, 2 and 4 bits. A code that
// does not fit must be refused (qift::error); every accepted matrix must round-trip exactly.
#include <qift/pack.hpp>

#include "fuzz_support.hpp"

namespace {

template <unsigned Bits>
void round_trip(const qift::matrix<std::uint8_t>& codes) {
    bool fits = true;
    for (std::uint8_t c : codes.flat()) fits = fits && c < (1u << Bits);
    try {
        const auto p = qift::pack<Bits>(codes.view());
        if (!fits) qift::fuzz::violated("pack: accepted a code that does not fit");
        const auto back = qift::unpack(p);
        if (back.rows() != codes.rows() || back.cols() != codes.cols())
            qift::fuzz::violated("pack: unpacked shape");
        for (std::size_t i = 0; i < codes.size(); ++i)
            if (back.flat()[i] != codes.flat()[i]) qift::fuzz::violated("pack: round trip");
    } catch (const qift::error&) {
        if (fits && !codes.empty()) qift::fuzz::violated("pack: refused valid codes");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    qift::fuzz::byte_reader in(data, size);
    const unsigned bits = in.take<std::uint8_t>() % 3;
    const std::size_t rows = in.take<std::uint8_t>() % 9;
    const std::size_t cols = in.take<std::uint16_t>() % 1100;
    const auto rest = in.rest();
    qift::matrix<std::uint8_t> codes(rows, cols);
    for (std::size_t i = 0; i < codes.size(); ++i)
        codes.flat()[i] = rest.empty() ? 0 : rest[i % rest.size()];
    // Mostly valid codes: keep the low bits unless the byte's top bit asks for a raw value.
    for (auto& c : codes.flat())
        if ((c & 0x80) == 0) c &= static_cast<std::uint8_t>((1u << (1u << bits)) - 1u);
    if (bits == 0) round_trip<1>(codes);
    if (bits == 1) round_trip<2>(codes);
    if (bits == 2) round_trip<4>(codes);
    return 0;
}
