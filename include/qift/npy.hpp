// SPDX-License-Identifier: MIT
// NumPy .npy interchange: a validating reader and a writer for C-order arrays, so research code
// in NumPy can hand W, H and calibration tensors to qift and read codes and scales back.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "core.hpp"
#include "detail/float16.hpp"

namespace qift::inline QIFT_ISA {

/// Element types qift reads and writes in .npy files: float32 '<f4', float64 '<f8', uint8
/// '|u1', int8 '|i1', int32 '<i4', int64 '<i8', uint32 '<u4'. Files of float16 and bfloat16
/// are read into float or double (see parse_npy for the bfloat16 convention).
template <class T>
concept npy_element =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::uint8_t> ||
    std::is_same_v<T, std::int8_t> || std::is_same_v<T, std::int32_t> ||
    std::is_same_v<T, std::int64_t> || std::is_same_v<T, std::uint32_t>;

/// The parsed header of a .npy file (format versions 1.0, 2.0 and 3.0).
struct npy_header {
    char kind = 'f';            ///< 'f' float, 'i' signed, 'u' unsigned integer
    std::size_t item_size = 0;  ///< bytes per element
    bool big_endian = false;    ///< '>' in descr (values are byte-swapped on reading)
    /// kind 'f', item_size 2: bfloat16 rather than IEEE float16 (descr '<V2', '|V2' or
    /// 'bfloat16', see parse_npy).
    bool bfloat16 = false;
    bool fortran_order = false;
    std::vector<std::size_t> shape;
    std::size_t data_offset = 0;  ///< bytes before the first element
    /// Number of elements (1 for a 0-d array).
    std::size_t elements() const noexcept {
        std::size_t n = 1;
        for (std::size_t d : shape) n *= d;
        return n;
    }
};

/// Reading options. `bfloat16_bits`: a 16-bit integer file ('<u2', '<i2', big-endian too) holds
/// bfloat16 bit patterns (PyTorch's `t.view(torch.int16).numpy()`, or `np.uint16` views of
/// ml_dtypes arrays): read into float/double as bfloat16 values instead of as integers.
struct npy_options {
    bool bfloat16_bits = false;
};

/// An n-dimensional array read from a .npy file, values converted to T, C order.
template <npy_element T>
struct npy_array {
    std::vector<std::size_t> shape;
    aligned_vector<T> data;
};

namespace detail {

template <class T>
constexpr char npy_kind() {
    if constexpr (std::is_floating_point_v<T>)
        return 'f';
    else if constexpr (std::is_signed_v<T>)
        return 'i';
    else
        return 'u';
}

template <class T>
std::string npy_descr() {
    const char order = sizeof(T) == 1 ? '|' : '<';
    return std::string{order, npy_kind<T>()} + std::to_string(sizeof(T));
}

[[noreturn]] inline void npy_fail(const std::string& what, const std::string& why) {
    fail("npy: " + what + ": " + why);
}

// A tiny parser for the header's Python dict literal: {'descr': '<f4', 'fortran_order': False,
// 'shape': (3, 4), } with keys in any order, each exactly once.
struct npy_dict_parser {
    std::string_view s;
    std::size_t i = 0;
    const std::string& what;

    void skip() {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n')) ++i;
    }
    [[noreturn]] void bad(const std::string& expected) const {
        npy_fail(what, "malformed header dict: expected " + expected + " at offset " +
                           std::to_string(i) + " in \"" + std::string(s) + "\"");
    }
    void expect(char c) {
        skip();
        if (i >= s.size() || s[i] != c) bad(std::string("'") + c + "'");
        ++i;
    }
    bool accept(char c) {
        skip();
        if (i < s.size() && s[i] == c) return ++i, true;
        return false;
    }
    std::string string_literal() {
        skip();
        if (i >= s.size() || (s[i] != '\'' && s[i] != '"')) bad("a string");
        const char q = s[i++];
        const std::size_t start = i;
        while (i < s.size() && s[i] != q) ++i;
        if (i >= s.size()) bad("the end of a string");
        return std::string(s.substr(start, i++ - start));
    }
    bool boolean() {
        skip();
        if (s.substr(i, 4) == "True") return i += 4, true;
        if (s.substr(i, 5) == "False") return i += 5, false;
        bad("True or False");
    }
    std::size_t integer() {
        skip();
        if (i >= s.size() || s[i] < '0' || s[i] > '9') bad("a non-negative integer");
        std::size_t v = 0;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
            const std::size_t digit = static_cast<std::size_t>(s[i++] - '0');
            if (v > (std::numeric_limits<std::size_t>::max() - digit) / 10) bad("a smaller size");
            v = v * 10 + digit;
        }
        if (i < s.size() && s[i] == 'L') ++i;  // Python 2 long suffix
        return v;
    }
    std::vector<std::size_t> tuple() {
        expect('(');
        std::vector<std::size_t> dims;
        if (accept(')')) return dims;
        for (;;) {
            dims.push_back(integer());
            if (accept(')')) return dims;
            expect(',');
            if (accept(')')) return dims;
        }
    }
};

inline npy_header parse_npy_header(std::string_view bytes, const std::string& what) {
    constexpr std::string_view magic("\x93NUMPY", 6);
    if (bytes.size() < 10 || bytes.substr(0, 6) != magic)
        npy_fail(what, bytes.size() < 6 ? "file too short for the .npy magic (" +
                                              std::to_string(bytes.size()) + " bytes)"
                                        : "not a .npy file (bad magic string)");
    const auto major = static_cast<unsigned char>(bytes[6]),
               minor = static_cast<unsigned char>(bytes[7]);
    if (major < 1 || major > 3 || minor != 0)
        npy_fail(what, "unsupported .npy format version " + std::to_string(major) + "." +
                           std::to_string(minor) + " (1.0, 2.0 and 3.0 are supported)");
    const auto byte = [&](std::size_t k) {
        return static_cast<std::size_t>(static_cast<unsigned char>(bytes[k]));
    };
    std::size_t header_len = 0, start = 0;
    if (major == 1) {
        header_len = byte(8) | byte(9) << 8;
        start = 10;
    } else {
        if (bytes.size() < 12) npy_fail(what, "truncated header length");
        header_len = byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24;
        start = 12;
    }
    if (bytes.size() - start < header_len)
        npy_fail(what, "truncated header: it declares " + std::to_string(header_len) +
                           " bytes, the file has " + std::to_string(bytes.size() - start));
    std::string_view dict = bytes.substr(start, header_len);
    if (dict.empty() || dict.back() != '\n')
        npy_fail(what, "the header does not end with a newline");
    npy_header h;
    h.data_offset = start + header_len;
    npy_dict_parser p{dict, 0, what};
    bool have_descr = false, have_order = false, have_shape = false;
    std::string descr;
    p.expect('{');
    while (!p.accept('}')) {
        const std::string key = p.string_literal();
        p.expect(':');
        const auto once = [&](bool& seen) {
            if (seen) npy_fail(what, "header key '" + key + "' appears twice");
            seen = true;
        };
        if (key == "descr")
            once(have_descr), descr = p.string_literal();
        else if (key == "fortran_order")
            once(have_order), h.fortran_order = p.boolean();
        else if (key == "shape")
            once(have_shape), h.shape = p.tuple();
        else
            npy_fail(what, "unexpected header key '" + key + "'");
        if (!p.accept(',')) {
            p.expect('}');
            break;
        }
    }
    if (!have_descr || !have_order || !have_shape)
        npy_fail(what, std::string("header lacks the key '") +
                           (!have_descr   ? "descr"
                            : !have_order ? "fortran_order"
                                          : "shape") +
                           "'");
    // descr: byte order, kind, item size, e.g. '<f4', '|u1', '>f8', '<f2'; bfloat16 as ml_dtypes'
    // arrays are saved ('<V2': a 2-byte void) or as some tools write its name ('bfloat16').
    if (descr == "bfloat16" || descr == "<V2" || descr == "|V2" || descr == "=V2" ||
        descr == ">V2") {
        h.kind = 'f';
        h.item_size = 2;
        h.bfloat16 = true;
        h.big_endian = descr[0] == '>';
    } else {
        if (descr.size() < 3 || std::string_view("<>|=").find(descr[0]) == std::string_view::npos ||
            std::string_view("fiu").find(descr[1]) == std::string_view::npos)
            npy_fail(what, "unsupported dtype '" + descr +
                               "' (expected a float (float16/bfloat16/float32/float64) or integer "
                               "type, e.g. '<f4')");
        h.kind = descr[1];
        const std::string size_text = descr.substr(2);
        if (size_text != "1" && size_text != "2" && size_text != "4" && size_text != "8")
            npy_fail(what, "unsupported dtype '" + descr + "'");
        h.item_size = static_cast<std::size_t>(size_text[0] - '0');
        h.big_endian = descr[0] == '>' && h.item_size > 1;
        if (h.kind == 'f' && h.item_size < 2)
            npy_fail(what, "unsupported dtype '" + descr + "' (no 1-byte float type)");
    }
    // Shape against the file size, with overflow checks (before the caller allocates).
    const std::string shape_what = "npy: " + what + ": shape";
    const std::size_t count = checked_size(std::span<const std::size_t>(h.shape), shape_what);
    const std::size_t need = checked_mul(count, h.item_size, shape_what),
                      have = bytes.size() - h.data_offset;
    if (have < need)
        npy_fail(what, "truncated data: shape and dtype need " + std::to_string(need) +
                           " bytes, the file has " + std::to_string(have));
    if (have > need)
        npy_fail(what, std::to_string(have - need) + " unexpected bytes after the data");
    return h;
}

// Tags of the 16-bit float formats: stored as uint16 bit patterns, decoded by the conversions
// of float16.hpp (exact in float and double).
struct npy_float16 {
    std::uint16_t bits;
};
struct npy_bfloat16 {
    std::uint16_t bits;
};

template <class S, class T>
void npy_convert(const char* src, std::size_t count, bool swap, T* dst) {
    for (std::size_t k = 0; k < count; ++k) {
        char raw[sizeof(S)];
        std::memcpy(raw, src + k * sizeof(S), sizeof(S));
        if (swap)
            for (std::size_t b = 0; b < sizeof(S) / 2; ++b)
                std::swap(raw[b], raw[sizeof(S) - 1 - b]);
        S v;
        std::memcpy(&v, raw, sizeof(S));
        if constexpr (std::is_same_v<S, npy_float16>)
            dst[k] = static_cast<T>(half_to_float(v.bits));
        else if constexpr (std::is_same_v<S, npy_bfloat16>)
            dst[k] = static_cast<T>(bfloat16_to_float(v.bits));
        else
            dst[k] = static_cast<T>(v);
    }
}

inline std::string read_file_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) npy_fail(path, "cannot open the file for reading");
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (f.bad()) npy_fail(path, "read error");
    return bytes;
}

}  // namespace detail

/// Parses a whole .npy image held in memory (`what` names it in error messages) into an array
/// of T. Accepted: versions 1.0–3.0, C order, dtypes '<f2' '<f4' '<f8' (and big-endian '>'),
/// bfloat16, integer dtypes. Floating-point T accepts float and integer files; integer T
/// requires the file's exact dtype. float16 and bfloat16 values convert exactly (every finite
/// value, ±inf; a NaN stays a NaN).
///
/// bfloat16 convention: NumPy has no bfloat16, so a bfloat16 file is one of
///   - descr '<V2' (or '|V2'): what np.save writes for an ml_dtypes.bfloat16 array (its dtype
///     is a 2-byte void to NumPy); every 2-byte void array is taken to be bfloat16;
///   - descr 'bfloat16': a header written by hand with the dtype's name;
///   - a '<u2'/'<i2' file of bit patterns, read with `opt.bfloat16_bits` set (without the
///     flag it is an integer array).
/// Throws qift::error on a bad magic string or version, a malformed or
/// incomplete header dict, an unsupported or mismatched dtype, fortran_order True, or a data
/// size that does not match the shape (truncated or trailing bytes).
template <npy_element T>
npy_array<T> parse_npy(std::string_view bytes, const std::string& what = "buffer",
                       npy_options opt = {}) {
    const npy_header h = detail::parse_npy_header(bytes, what);
    if (h.fortran_order)
        detail::npy_fail(what,
                         "fortran_order is True; save a C-order array "
                         "(np.ascontiguousarray) instead");
    if constexpr (!std::is_floating_point_v<T>)
        if (h.kind != detail::npy_kind<T>() || h.item_size != sizeof(T))
            detail::npy_fail(what, "dtype is '" + std::string(1, h.kind) +
                                       std::to_string(h.item_size) + "', expected '" +
                                       detail::npy_descr<T>().substr(1) + "'");
    if constexpr (!std::is_floating_point_v<T>)
        if (opt.bfloat16_bits)
            detail::npy_fail(what, "bfloat16_bits is set: read the file into float or double");
    if constexpr (std::is_floating_point_v<T>)
        if (opt.bfloat16_bits && (h.kind == 'i' || h.kind == 'u') && h.item_size != 2)
            detail::npy_fail(what, "bfloat16_bits is set but the dtype is '" +
                                       std::string(1, h.kind) + std::to_string(h.item_size) +
                                       "', expected 16-bit integers ('<u2' or '<i2')");
    npy_array<T> a;
    a.shape = h.shape;
    // The file holds count · item_size bytes; count elements of T may still not fit (a 32-bit
    // target reading a 1-byte dtype into double).
    const std::size_t count = detail::checked_size<T>({h.elements()}, "npy: " + what);
    a.data.resize(count);
    const char* src = bytes.data() + h.data_offset;
    const bool swap = h.big_endian && std::endian::native == std::endian::little;
    const auto go = [&](auto tag) {
        detail::npy_convert<decltype(tag)>(src, count, swap, a.data.data());
    };
    if (h.item_size == 2 && (h.bfloat16 || (h.kind != 'f' && opt.bfloat16_bits))) {
        go(detail::npy_bfloat16{});
        return a;
    }
    switch (h.kind) {
        case 'f':
            h.item_size == 2   ? go(detail::npy_float16{})
            : h.item_size == 4 ? go(float{})
                               : go(double{});
            break;
        case 'i':
            h.item_size == 1   ? go(std::int8_t{})
            : h.item_size == 2 ? go(std::int16_t{})
            : h.item_size == 4 ? go(std::int32_t{})
                               : go(std::int64_t{});
            break;
        default:
            h.item_size == 1   ? go(std::uint8_t{})
            : h.item_size == 2 ? go(std::uint16_t{})
            : h.item_size == 4 ? go(std::uint32_t{})
                               : go(std::uint64_t{});
    }
    return a;
}

/// Reads the .npy file at `path` (see parse_npy for what is accepted and checked).
template <npy_element T>
npy_array<T> read_npy(const std::string& path, npy_options opt = {}) {
    return parse_npy<T>(detail::read_file_bytes(path), path, opt);
}

/// Reads a 2-D .npy file into a matrix<T> [shape[0]][shape[1]]; a 1-D array of length n becomes
/// a 1×n matrix. Throws qift::error for other ranks (and everything read_npy rejects).
template <npy_element T>
matrix<T> read_npy_matrix(const std::string& path, npy_options opt = {}) {
    npy_array<T> a = read_npy<T>(path, opt);
    if (a.shape.size() != 1 && a.shape.size() != 2)
        detail::npy_fail(
            path, "expected a 2-D array, got " + std::to_string(a.shape.size()) + " dimensions");
    const std::size_t rows = a.shape.size() == 2 ? a.shape[0] : 1, cols = a.shape.back();
    matrix<T> m(rows, cols);
    std::copy(a.data.begin(), a.data.end(), m.data());
    return m;
}

/// The bytes of a version 1.0 .npy file holding `data` with `shape` (C order, little-endian;
/// header padded to a multiple of 64 bytes as NumPy writes it). Throws qift::error when the
/// shape does not match data.size().
template <npy_element T>
std::string format_npy(std::span<const T> data, std::span<const std::size_t> shape) {
    const std::size_t count = detail::checked_size(shape, "format_npy: shape");
    std::string dims;
    for (std::size_t d : shape) dims += std::to_string(d) + ", ";
    if (shape.size() == 1)
        dims.pop_back();  // a 1-tuple keeps its comma: "(3,)"
    else if (shape.size() > 1)
        dims.resize(dims.size() - 2);  // "(3, 4)"
    detail::require(count == data.size(), [&] {
        return "format_npy: shape has " + std::to_string(count) + " elements, data has " +
               std::to_string(data.size());
    });
    std::string dict = "{'descr': '" + detail::npy_descr<T>() +
                       "', 'fortran_order': False, 'shape': (" + dims + "), }";
    const std::size_t unpadded = 10 + dict.size() + 1;
    dict.append((64 - unpadded % 64) % 64, ' ');
    dict += '\n';
    std::string out("\x93NUMPY\x01\x00", 8);
    out += static_cast<char>(dict.size() & 0xff);
    out += static_cast<char>(dict.size() >> 8);
    out += dict;
    const std::size_t offset = out.size();
    out.resize(offset + data.size() * sizeof(T));
    for (std::size_t k = 0; k < data.size(); ++k) {
        char raw[sizeof(T)];
        std::memcpy(raw, &data[k], sizeof(T));
        if constexpr (std::endian::native == std::endian::big)
            for (std::size_t b = 0; b < sizeof(T) / 2; ++b)
                std::swap(raw[b], raw[sizeof(T) - 1 - b]);
        std::memcpy(out.data() + offset + k * sizeof(T), raw, sizeof(T));
    }
    return out;
}

/// Writes `data` with `shape` to a .npy file at `path` (see format_npy). Throws qift::error
/// when the file cannot be written.
template <npy_element T>
void write_npy(const std::string& path, std::span<const T> data,
               std::span<const std::size_t> shape) {
    const std::string bytes = format_npy<T>(data, shape);
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f) detail::npy_fail(path, "cannot open the file for writing");
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!f) detail::npy_fail(path, "write error");
}

/// Writes a matrix view (any stride) as a 2-D C-order .npy file [rows][cols].
template <npy_element T>
void write_npy(const std::string& path, matrix_view<const T> m) {
    std::vector<T> flat;
    flat.reserve(m.rows * m.cols);
    for (std::size_t r = 0; r < m.rows; ++r) flat.insert(flat.end(), &m(r, 0), &m(r, 0) + m.cols);
    const std::size_t shape[2] = {m.rows, m.cols};
    write_npy<T>(path, std::span<const T>(flat), std::span<const std::size_t>(shape));
}

}  // namespace qift
