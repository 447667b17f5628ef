// SPDX-License-Identifier: MIT
// The safetensors format (Hugging Face): a validating, memory-mapped reader with raw views and
// conversion to float, and a writer, including quantized results that read back exactly.
#pragma once

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "core.hpp"
#include "detail/float16.hpp"
#include "detail/json.hpp"
#include "levels.hpp"
#include "scale.hpp"

#if __has_include(<sys/mman.h>) && __has_include(<unistd.h>)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define QIFT_HAS_MMAP 1
#else
#define QIFT_HAS_MMAP 0
#endif

namespace qift::inline QIFT_ISA {

/// Element types of safetensors tensors (the format's dtype strings). F8 types are not
/// supported: reading a file that holds one throws.
enum class safetensors_dtype { F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL };

/// The dtype's name in the header ("F32", "BF16", ...).
constexpr std::string_view dtype_name(safetensors_dtype d) noexcept {
    constexpr std::string_view names[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16",
                                          "I8",  "U64", "U32", "U16",  "U8",  "BOOL"};
    return names[static_cast<unsigned>(d)];
}

/// Bytes per element.
constexpr std::size_t dtype_size(safetensors_dtype d) noexcept {
    constexpr std::size_t sizes[] = {8, 4, 2, 2, 8, 4, 2, 1, 8, 4, 2, 1, 1};
    return sizes[static_cast<unsigned>(d)];
}

/// C++ types that view or copy a tensor exactly, one per dtype (bool: BOOL). float16 and
/// bfloat16 have no C++ type here: read them with to_float / to_double, or as raw bytes.
template <class T>
concept safetensors_element = std::is_same_v<T, double> || std::is_same_v<T, float> ||
    std::is_same_v<T, std::int64_t> || std::is_same_v<T, std::int32_t> ||
    std::is_same_v<T, std::int16_t> || std::is_same_v<T, std::int8_t> ||
    std::is_same_v<T, std::uint64_t> || std::is_same_v<T, std::uint32_t> ||
    std::is_same_v<T, std::uint16_t> || std::is_same_v<T, std::uint8_t> || std::is_same_v<T, bool>;

/// The dtype that stores T.
template <safetensors_element T>
constexpr safetensors_dtype dtype_of() noexcept {
    using D = safetensors_dtype;
    if constexpr (std::is_same_v<T, double>) return D::F64;
    if constexpr (std::is_same_v<T, float>) return D::F32;
    if constexpr (std::is_same_v<T, std::int64_t>) return D::I64;
    if constexpr (std::is_same_v<T, std::int32_t>) return D::I32;
    if constexpr (std::is_same_v<T, std::int16_t>) return D::I16;
    if constexpr (std::is_same_v<T, std::int8_t>) return D::I8;
    if constexpr (std::is_same_v<T, std::uint64_t>) return D::U64;
    if constexpr (std::is_same_v<T, std::uint32_t>) return D::U32;
    if constexpr (std::is_same_v<T, std::uint16_t>) return D::U16;
    if constexpr (std::is_same_v<T, std::uint8_t>) return D::U8;
    if constexpr (std::is_same_v<T, bool>) return D::BOOL;
}

/// One tensor of a file: its header entry and a view of its little-endian bytes (valid as long
/// as any safetensors_file sharing the mapping lives).
struct safetensors_tensor {
    std::string name;
    safetensors_dtype dtype = safetensors_dtype::F32;
    std::vector<std::size_t> shape;  ///< C order; empty for a scalar
    std::size_t begin = 0, end = 0;  ///< "data_offsets": bytes [begin, end) of the data buffer
    std::span<const std::byte> bytes;

    /// Number of elements (1 for a scalar).
    std::size_t elements() const noexcept {
        std::size_t n = 1;
        for (std::size_t d : shape) n *= d;
        return n;
    }
};

namespace detail {

/// The bytes of a file, memory-mapped read-only (POSIX mmap) or, when mapping fails or is not
/// available, read into memory. Immovable: views into it stay valid while it lives.
class file_bytes {
  public:
    file_bytes(const file_bytes&) = delete;
    file_bytes& operator=(const file_bytes&) = delete;
    ~file_bytes() {
#if QIFT_HAS_MMAP
        if (map_) ::munmap(map_, size_);
#endif
    }

    /// Maps (or reads) the file at `path`; `fn` names the caller in error messages.
    static std::shared_ptr<const file_bytes> open(const std::string& path, const std::string& fn) {
        std::shared_ptr<file_bytes> f(new file_bytes);
#if QIFT_HAS_MMAP
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        require(fd >= 0,
                [&] { return fn + ": cannot open " + path + ": " + std::strerror(errno); });
        struct stat st {};
        const bool ok = ::fstat(fd, &st) == 0;
        const int saved = errno;
        if (!ok || S_ISDIR(st.st_mode)) {
            ::close(fd);
            fail(fn + ": cannot read " + path + ": " +
                 (ok ? std::string("it is a directory") : std::strerror(saved)));
        }
        // A file larger than the address space (a 32-bit target) would map truncated.
        if (!std::in_range<std::size_t>(st.st_size)) {
            ::close(fd);
            fail(fn + ": " + path + " is " + std::to_string(st.st_size) +
                 " bytes, more than the address space (" +
                 std::to_string(std::numeric_limits<std::size_t>::max()) + " bytes)");
        }
        if (st.st_size > 0) {
            void* p = ::mmap(nullptr, std::size_t(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
            if (p != MAP_FAILED) {
                f->map_ = p;
                f->size_ = std::size_t(st.st_size);
            }
        }
        ::close(fd);
        if (f->map_) return f;
#endif
        // Fallback: read the whole file.
        std::ifstream in(path, std::ios::binary);
        require(bool(in), [&] { return fn + ": cannot open " + path; });
        f->copy_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        require(!in.bad(), [&] { return fn + ": read error in " + path; });
        f->size_ = f->copy_.size();
        return f;
    }

    /// Holds a copy of `bytes`.
    static std::shared_ptr<const file_bytes> copy_of(std::string_view bytes) {
        std::shared_ptr<file_bytes> f(new file_bytes);
        f->copy_.assign(bytes.begin(), bytes.end());
        f->size_ = bytes.size();
        return f;
    }

    const std::byte* data() const noexcept {
        return static_cast<const std::byte*>(map_ ? map_ : static_cast<const void*>(copy_.data()));
    }
    std::size_t size() const noexcept {
        return size_;
    }
    bool mapped() const noexcept {
        return map_ != nullptr;
    }

  private:
    file_bytes() = default;
    void* map_ = nullptr;
    std::size_t size_ = 0;
    std::vector<char> copy_;
};

/// Little-endian element k of `src`, as T (memcpy: any alignment).
template <class T>
T load_le(const std::byte* src, std::size_t k) noexcept {
    std::byte raw[sizeof(T)];
    std::memcpy(raw, src + k * sizeof(T), sizeof(T));
    if constexpr (std::endian::native == std::endian::big && sizeof(T) > 1)
        std::reverse(raw, raw + sizeof(T));
    T v;
    std::memcpy(&v, raw, sizeof(T));
    return v;
}

template <class T>
void store_le(std::string& out, T v) {
    char raw[sizeof(T)];
    std::memcpy(raw, &v, sizeof(T));
    if constexpr (std::endian::native == std::endian::big && sizeof(T) > 1)
        std::reverse(raw, raw + sizeof(T));
    out.append(raw, sizeof(T));
}

inline bool parse_dtype(std::string_view s, safetensors_dtype& out) noexcept {
    for (unsigned k = 0; k <= static_cast<unsigned>(safetensors_dtype::BOOL); ++k)
        if (dtype_name(static_cast<safetensors_dtype>(k)) == s) {
            out = static_cast<safetensors_dtype>(k);
            return true;
        }
    return false;
}

inline std::string shape_text(std::span<const std::size_t> shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

/// Converts `count` elements of dtype `d` at `src` to T (float or double).
template <class T>
void convert_elements(safetensors_dtype d, const std::byte* src, std::size_t count, T* dst,
                      const std::string& what) {
    using D = safetensors_dtype;
    const auto go = [&](auto tag) {
        using S = decltype(tag);
        for (std::size_t k = 0; k < count; ++k) dst[k] = static_cast<T>(load_le<S>(src, k));
    };
    switch (d) {
        case D::F64:
            return go(double{});
        case D::F32:
            return go(float{});
        case D::F16:
            for (std::size_t k = 0; k < count; ++k)
                dst[k] = static_cast<T>(half_to_float(load_le<std::uint16_t>(src, k)));
            return;
        case D::BF16:
            for (std::size_t k = 0; k < count; ++k)
                dst[k] = static_cast<T>(bfloat16_to_float(load_le<std::uint16_t>(src, k)));
            return;
        case D::I64:
            return go(std::int64_t{});
        case D::I32:
            return go(std::int32_t{});
        case D::I16:
            return go(std::int16_t{});
        case D::I8:
            return go(std::int8_t{});
        case D::U64:
            return go(std::uint64_t{});
        case D::U32:
            return go(std::uint32_t{});
        case D::U16:
            return go(std::uint16_t{});
        case D::U8:
            return go(std::uint8_t{});
        case D::BOOL:
            for (std::size_t k = 0; k < count; ++k) {
                const auto b = static_cast<unsigned char>(src[k]);
                require(b <= 1, [&] {
                    return what + ": BOOL element " + std::to_string(k) + " is " +
                           std::to_string(b) + ", not 0 or 1";
                });
                dst[k] = static_cast<T>(b);
            }
            return;
    }
}

}  // namespace detail

/// A safetensors file, opened and validated. The format: an unsigned 64-bit little-endian
/// header length N, N bytes of UTF-8 JSON mapping each tensor name to {"dtype", "shape",
/// "data_offsets": [begin, end]} (offsets into the data buffer that follows the header) plus an
/// optional "__metadata__" object of strings, then the data buffer.
///
/// Validated when opening (each failure a qift::error naming the file and, where there is one,
/// the tensor): the file holds the 8-byte length and the N header bytes it announces; N ≤ 100 MB
/// (as the reference implementation); the header is strict JSON (detail/json.hpp: duplicate
/// names refused) starting with '{', every entry has exactly the three keys, a known dtype (F64,
/// F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL), a shape whose byte size
/// (shape product × element size, overflow-checked) equals end − begin, begin ≤ end ≤ the data
/// size; tensors tile the data buffer exactly (sorted by offset, each begins where the previous
/// ends: no overlap, no gap, no unindexed trailing bytes, as the format specification requires);
/// and, qift's alignment rule, each begin is a multiple of the element size (what the reference
/// writer produces by ordering tensors by descending alignment).
///
/// The file is memory-mapped (read into memory where mapping fails); the object is cheap to
/// copy (copies share the mapping). Views need a little-endian host and a tensor address aligned
/// to its type (true when the header length is a multiple of 8, as every writer since 2023 pads
/// it); conversions (to_float, to_double, copy) work on any file.
class safetensors_file {
  public:
    /// Opens, maps and validates the file at `path`.
    explicit safetensors_file(const std::string& path)
        : what_(path), bytes_(detail::file_bytes::open(path, "safetensors")) {
        index();
    }

    /// Validates an in-memory image (copied); `what` names it in error messages.
    static safetensors_file from_bytes(std::string_view bytes, const std::string& what = "buffer") {
        return safetensors_file(what, detail::file_bytes::copy_of(bytes));
    }

    /// The file's path (or the name given to from_bytes).
    const std::string& path() const noexcept { return what_; }
    /// True when the bytes are memory-mapped rather than read.
    bool memory_mapped() const noexcept { return bytes_->mapped(); }
    /// Every tensor, ordered by offset.
    const std::vector<safetensors_tensor>& tensors() const noexcept { return tensors_; }
    /// The "__metadata__" entries, in header order.
    const std::vector<std::pair<std::string, std::string>>& metadata() const noexcept {
        return metadata_;
    }
    /// The metadata value of `key`, or nullptr.
    const std::string* find_metadata(std::string_view key) const noexcept {
        for (const auto& [k, v] : metadata_)
            if (k == key) return &v;
        return nullptr;
    }
    /// The tensor named `name`, or nullptr.
    const safetensors_tensor* find(std::string_view name) const noexcept {
        const auto it = by_name_.find(name);
        return it == by_name_.end() ? nullptr : &tensors_[it->second];
    }
    /// The tensor named `name`; throws qift::error naming the file when there is none.
    const safetensors_tensor& at(std::string_view name) const {
        const safetensors_tensor* t = find(name);
        detail::require(t != nullptr, [&] {
            return "safetensors: " + what_ + ": no tensor '" + std::string(name) + "'";
        });
        return *t;
    }

    /// The tensor's values converted to float, C order: exact for F32, F16, BF16, U8, I8, I16,
    /// U16, BOOL; nearest float for F64 and for integers beyond 2^24.
    std::vector<float> to_float(std::string_view name) const { return convert<float>(at(name)); }
    /// The tensor's values converted to double (exact except for 64-bit integers beyond 2^53).
    std::vector<double> to_double(std::string_view name) const { return convert<double>(at(name)); }
    /// A rank-2 tensor [rows][cols] (a rank-1 tensor of n: 1×n) converted to float as to_float.
    /// Throws qift::error naming the tensor for other ranks.
    matrix<float> to_matrix(std::string_view name) const {
        const safetensors_tensor& t = at(name);
        detail::require(t.shape.size() == 1 || t.shape.size() == 2, [&] {
            return "safetensors: " + what_ + ": tensor '" + t.name + "' has shape " +
                   detail::shape_text(t.shape) + ", expected a matrix (rank 2)";
        });
        matrix<float> m(t.shape.size() == 2 ? t.shape[0] : 1, t.shape.back());
        detail::convert_elements(t.dtype, t.bytes.data(), t.elements(), m.data(), context(t));
        return m;
    }

    /// A zero-copy view of a tensor whose dtype is T's (dtype_of<T>). Throws qift::error when
    /// the dtype differs, the host is big-endian, or the tensor's address is not aligned for T
    /// (a header length not a multiple of 8): use copy() then.
    template <safetensors_element T>
    std::span<const T> view(std::string_view name) const {
        const safetensors_tensor& t = exact<T>(name);
        detail::require(std::endian::native == std::endian::little || sizeof(T) == 1, [&] {
            return context(t) + ": views need a little-endian host; use copy()";
        });
        const auto address = reinterpret_cast<std::uintptr_t>(t.bytes.data());
        detail::require(address % alignof(T) == 0, [&] {
            return context(t) + ": its data is not " + std::to_string(alignof(T)) +
                   "-byte aligned in memory (header length not a multiple of 8); use copy()";
        });
        if constexpr (std::is_same_v<T, bool>) check_bool(t);
        return {reinterpret_cast<const T*>(t.bytes.data()), t.elements()};
    }

    /// A copy of a tensor whose dtype is T's. Throws qift::error when the dtype differs.
    template <safetensors_element T>
    std::vector<T> copy(std::string_view name) const {
        const safetensors_tensor& t = exact<T>(name);
        if constexpr (std::is_same_v<T, bool>) check_bool(t);
        std::vector<T> out(t.elements());
        for (std::size_t k = 0; k < out.size(); ++k) out[k] = detail::load_le<T>(t.bytes.data(), k);
        return out;
    }

  private:
    safetensors_file(std::string what, std::shared_ptr<const detail::file_bytes> bytes)
        : what_(std::move(what)), bytes_(std::move(bytes)) {
        index();
    }

    std::string context(const safetensors_tensor& t) const {
        return "safetensors: " + what_ + ": tensor '" + t.name + "'";
    }

    template <safetensors_element T>
    const safetensors_tensor& exact(std::string_view name) const {
        const safetensors_tensor& t = at(name);
        detail::require(t.dtype == dtype_of<T>(), [&] {
            return context(t) + " is " + std::string(dtype_name(t.dtype)) + ", read as " +
                   std::string(dtype_name(dtype_of<T>()));
        });
        return t;
    }

    void check_bool(const safetensors_tensor& t) const {
        for (std::size_t k = 0; k < t.elements(); ++k)
            detail::require(static_cast<unsigned char>(t.bytes[k]) <= 1, [&] {
                return context(t) + ": BOOL element " + std::to_string(k) + " is " +
                       std::to_string(static_cast<unsigned char>(t.bytes[k])) + ", not 0 or 1";
            });
    }

    template <class T>
    std::vector<T> convert(const safetensors_tensor& t) const {
        // The file holds t.elements() values; as T they may still not fit (a 32-bit target
        // reading U8 or F16 into double).
        std::vector<T> out(detail::checked_size<T>({t.elements()}, context(t)));
        detail::convert_elements(t.dtype, t.bytes.data(), out.size(), out.data(), context(t));
        return out;
    }

    void index();

    std::string what_;
    std::shared_ptr<const detail::file_bytes> bytes_;
    std::vector<safetensors_tensor> tensors_;
    std::vector<std::pair<std::string, std::string>> metadata_;
    std::map<std::string, std::size_t, std::less<>> by_name_;
};

/// Largest header the reader accepts (the reference implementation's limit).
inline constexpr std::uint64_t safetensors_max_header = 100'000'000;

inline void safetensors_file::index() {
    using detail::require;
    const std::string where = "safetensors: " + what_;
    const std::size_t size = bytes_->size();
    const std::byte* base = bytes_->data();
    require(size >= 8, [&] {
        return where + ": the file is " + std::to_string(size) +
               " bytes, too short for the 8-byte header length";
    });
    const auto n = detail::load_le<std::uint64_t>(base, 0);
    require(n <= size - 8, [&] {
        return where + ": the header length field says " + std::to_string(n) + " bytes but only " +
               std::to_string(size - 8) + " follow it (truncated, or not a safetensors file)";
    });
    require(n <= safetensors_max_header, [&] {
        return where + ": the header is " + std::to_string(n) + " bytes, over the limit of " +
               std::to_string(safetensors_max_header);
    });
    const std::string_view header(reinterpret_cast<const char*>(base + 8), std::size_t(n));
    require(!header.empty() && header[0] == '{',
            [&] { return where + ": the JSON header does not start with '{'"; });
    const detail::json_value root = detail::parse_json(header, where + ": header");
    require(root.is(detail::json_value::kind::object),
            [&] { return where + ": the header is not a JSON object"; });
    const std::size_t data_size = size - 8 - std::size_t(n);
    const std::byte* data = base + 8 + n;
    for (std::size_t m = 0; m < root.keys.size(); ++m) {
        const std::string& name = root.keys[m];
        const detail::json_value& entry = root.values[m];
        if (name == "__metadata__") {
            require(entry.is(detail::json_value::kind::object), [&] {
                return where + ": __metadata__ is " + detail::json_kind_name(entry.type) +
                       ", expected an object of strings";
            });
            for (std::size_t k = 0; k < entry.keys.size(); ++k) {
                require(entry.values[k].is(detail::json_value::kind::string), [&] {
                    return where + ": __metadata__ value of '" + entry.keys[k] + "' is " +
                           detail::json_kind_name(entry.values[k].type) + ", expected a string";
                });
                metadata_.emplace_back(entry.keys[k], entry.values[k].text);
            }
            continue;
        }
        const std::string tw = where + ": tensor '" + name + "'";
        require(entry.is(detail::json_value::kind::object), [&] {
            return tw + ": its entry is " + detail::json_kind_name(entry.type) +
                   ", expected an object";
        });
        for (const auto& key : entry.keys)
            require(key == "dtype" || key == "shape" || key == "data_offsets",
                    [&] { return tw + ": unexpected key '" + key + "'"; });
        const auto member = [&](const char* key) -> const detail::json_value& {
            const detail::json_value* v = entry.find(key);
            require(v != nullptr, [&] { return tw + ": missing '" + key + "'"; });
            return *v;
        };
        const auto sizes = [&](const char* key) {
            const detail::json_value& v = member(key);
            require(v.is(detail::json_value::kind::array), [&] {
                return tw + ": '" + key + "' is " + detail::json_kind_name(v.type) +
                       ", expected an array of non-negative integers";
            });
            std::vector<std::size_t> out;
            for (const auto& item : v.values) {
                std::uint64_t x = 0;
                require(
                    detail::json_to_u64(item, x) && x <= std::numeric_limits<std::size_t>::max(),
                    [&] {
                        return tw + ": '" + key + "' holds " +
                               (item.is(detail::json_value::kind::number)
                                    ? "'" + item.text + "'"
                                    : std::string(detail::json_kind_name(item.type))) +
                               ", not a non-negative integer";
                    });
                out.push_back(std::size_t(x));
            }
            return out;
        };
        safetensors_tensor t;
        t.name = name;
        const detail::json_value& dtype = member("dtype");
        require(
            dtype.is(detail::json_value::kind::string) && detail::parse_dtype(dtype.text, t.dtype),
            [&] {
                return tw + ": unknown dtype " +
                       (dtype.is(detail::json_value::kind::string)
                            ? "'" + dtype.text + "'"
                            : std::string(detail::json_kind_name(dtype.type))) +
                       " (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL)";
            });
        t.shape = sizes("shape");
        const std::vector<std::size_t> offsets = sizes("data_offsets");
        require(offsets.size() == 2, [&] {
            return tw + ": data_offsets has " + std::to_string(offsets.size()) +
                   " entries, expected [begin, end]";
        });
        t.begin = offsets[0];
        t.end = offsets[1];
        const std::string range =
            "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
        std::size_t bytes = dtype_size(t.dtype);
        bool overflow = false;
        for (std::size_t d : t.shape) {
            if (d != 0 && bytes > std::numeric_limits<std::size_t>::max() / d) overflow = true;
            bytes = overflow ? 0 : bytes * d;
        }
        if (std::any_of(t.shape.begin(), t.shape.end(), [](std::size_t d) { return d == 0; }))
            bytes = 0, overflow = false;
        require(!overflow, [&] {
            return tw + ": shape " + detail::shape_text(t.shape) + " of " +
                   std::string(dtype_name(t.dtype)) + " overflows the address space";
        });
        require(t.begin <= t.end, [&] { return tw + ": " + range + " has begin > end"; });
        require(t.end <= data_size, [&] {
            return tw + ": " + range + " runs past the " + std::to_string(data_size) +
                   " bytes of data (truncated file?)";
        });
        require(t.end - t.begin == bytes, [&] {
            return tw + ": shape " + detail::shape_text(t.shape) + " of " +
                   std::string(dtype_name(t.dtype)) + " needs " + std::to_string(bytes) +
                   " bytes, " + range + " cover " + std::to_string(t.end - t.begin);
        });
        require(t.begin % dtype_size(t.dtype) == 0, [&] {
            return tw + ": " + range + " is misaligned: begin is not a multiple of the " +
                   std::string(dtype_name(t.dtype)) + " element size " +
                   std::to_string(dtype_size(t.dtype));
        });
        t.bytes = {data + t.begin, t.end - t.begin};
        tensors_.push_back(std::move(t));
    }
    std::sort(tensors_.begin(), tensors_.end(), [](const auto& a, const auto& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::size_t covered = 0;
    std::string previous;
    for (const auto& t : tensors_) {
        const auto span_text = [](const safetensors_tensor& x) {
            return "'" + x.name + "' [" + std::to_string(x.begin) + ", " + std::to_string(x.end) +
                   ")";
        };
        require(t.begin >= covered, [&] {
            return where + ": tensors " + previous + " and " + span_text(t) + " overlap";
        });
        require(t.begin == covered, [&] {
            return where + ": " + std::to_string(t.begin - covered) + " bytes before tensor " +
                   span_text(t) + " belong to no tensor (the data buffer must have no gaps)";
        });
        covered = t.end;
        previous = span_text(t);
    }
    require(covered == data_size, [&] {
        return where + ": the last " + std::to_string(data_size - covered) +
               " bytes of the data buffer belong to no tensor";
    });
    for (std::size_t i = 0; i < tensors_.size(); ++i) by_name_.emplace(tensors_[i].name, i);
}

// ---------------------------------------------------------------------------------------
// Writer

/// Builds a safetensors file: add tensors and metadata, then bytes() or write(). The layout is
/// the reference writer's: tensors ordered by descending element size, then by name (so every
/// offset is aligned to its element size), "__metadata__" first in the header, the header padded
/// with spaces to a multiple of 8 bytes. Holds every tensor's bytes until written.
class safetensors_writer {
  public:
    /// Adds float values with `shape` (C order), stored as F32, F64, F16 or BF16 (the 16-bit
    /// formats rounded to nearest, ties to even). Throws qift::error naming the tensor when the
    /// name is empty, "__metadata__" or taken, the shape does not match the size, the dtype is
    /// not a float type, or a finite value overflows F16 (beyond 65504) or BF16 to infinity.
    /// Non-finite values are stored as they are.
    void add(std::string name, std::span<const float> values, std::vector<std::size_t> shape,
             safetensors_dtype dtype = safetensors_dtype::F32) {
        using D = safetensors_dtype;
        check(name, values.size(), shape);
        detail::require(dtype == D::F32 || dtype == D::F64 || dtype == D::F16 || dtype == D::BF16,
                        [&] {
                            return "safetensors_writer: tensor '" + name + "': dtype " +
                                   std::string(dtype_name(dtype)) +
                                   " is not a float type (F32, F64, F16, BF16)";
                        });
        std::string data;
        data.reserve(detail::checked_mul(values.size(), dtype_size(dtype),
                                         "safetensors_writer: tensor '" + name + "': bytes"));
        for (std::size_t k = 0; k < values.size(); ++k) {
            const float x = values[k];
            std::uint16_t bits = 0;
            switch (dtype) {
                case D::F64:
                    detail::store_le(data, double(x));
                    continue;
                case D::F16:
                    bits = detail::float_to_half(x);
                    break;
                case D::BF16:
                    bits = detail::float_to_bfloat16(x);
                    break;
                default:
                    detail::store_le(data, x);
                    continue;
            }
            detail::require(
                !std::isfinite(x) || (bits & 0x7fffu) != (dtype == D::F16 ? 0x7c00u : 0x7f80u),
                [&] {
                    return "safetensors_writer: tensor '" + name + "': element " +
                           std::to_string(k) + " = " + std::to_string(x) + " overflows " +
                           std::string(dtype_name(dtype)) +
                           (dtype == D::F16 ? " (largest finite 65504)" : "");
                });
            detail::store_le(data, bits);
        }
        entries_.push_back({std::move(name), dtype, std::move(shape), std::move(data)});
    }

    /// Adds a float matrix (any stride) as a rank-2 tensor [rows][cols], stored as `add` above.
    void add(std::string name, matrix_view<const float> m,
             safetensors_dtype dtype = safetensors_dtype::F32) {
        std::vector<float> flat;
        flat.reserve(m.size());
        for (std::size_t r = 0; r < m.rows; ++r)
            flat.insert(flat.end(), &m(r, 0), &m(r, 0) + m.cols);
        add(std::move(name), std::span<const float>(flat), {m.rows, m.cols}, dtype);
    }

    /// Adds values of an exact type T with `shape`, stored as dtype_of<T>() (U8 codes, I8, I32,
    /// ...). Throws qift::error as `add` above.
    template <safetensors_element T>
    void add(std::string name, std::span<const T> values, std::vector<std::size_t> shape) {
        check(name, values.size(), shape);
        std::string data;
        data.reserve(values.size() * sizeof(T));
        for (const T& v : values) detail::store_le(data, v);
        entries_.push_back({std::move(name), dtype_of<T>(), std::move(shape), std::move(data)});
    }

    /// Adds a matrix of an exact type T as a rank-2 tensor [rows][cols].
    template <safetensors_element T>
    void add(std::string name, const matrix<T>& m) {
        add(std::move(name), m.flat(), {m.rows(), m.cols()});
    }

    /// Sets "__metadata__"[key] = value (replacing an earlier value).
    void set_metadata(const std::string& key, std::string value) {
        for (auto& [k, v] : metadata_)
            if (k == key) {
                v = std::move(value);
                return;
            }
        metadata_.emplace_back(key, std::move(value));
    }

    /// The file's bytes.
    std::string bytes() const {
        std::vector<const entry*> order;
        for (const auto& e : entries_) order.push_back(&e);
        std::sort(order.begin(), order.end(), [](const entry* a, const entry* b) {
            const std::size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
            return sa != sb ? sa > sb : a->name < b->name;
        });
        std::string header = "{";
        if (!metadata_.empty()) {
            header += "\"__metadata__\":{";
            for (std::size_t i = 0; i < metadata_.size(); ++i) {
                if (i) header += ',';
                detail::json_append_string(header, metadata_[i].first);
                header += ':';
                detail::json_append_string(header, metadata_[i].second);
            }
            header += '}';
        }
        std::size_t offset = 0;
        for (const entry* e : order) {
            if (header.size() > 1) header += ',';
            detail::json_append_string(header, e->name);
            // Appended piece by piece: GCC 12 at -O3 warns falsely (-Wrestrict, bug 105329) on
            // "literal" + std::string temporaries here.
            header += ":{\"dtype\":\"";
            header += dtype_name(e->dtype);
            header += "\",\"shape\":[";
            for (std::size_t i = 0; i < e->shape.size(); ++i) {
                if (i) header += ',';
                header += std::to_string(e->shape[i]);
            }
            header += "],\"data_offsets\":[";
            header += std::to_string(offset);
            header += ',';
            header += std::to_string(offset + e->data.size());
            header += "]}";
            offset += e->data.size();
        }
        header += '}';
        header.append((8 - header.size() % 8) % 8, ' ');
        std::string out;
        out.reserve(8 + header.size() + offset);
        detail::store_le(out, std::uint64_t(header.size()));
        out += header;
        for (const entry* e : order) out += e->data;
        return out;
    }

    /// Writes the file to `path`. Throws qift::error when it cannot be written.
    void write(const std::string& path) const {
        const std::string b = bytes();
        std::ofstream f(path, std::ios::binary | std::ios::trunc);
        detail::require(bool(f), [&] {
            return "safetensors_writer: cannot open " + path +
                   " for writing: " + std::strerror(errno);
        });
        f.write(b.data(), static_cast<std::streamsize>(b.size()));
        f.close();
        detail::require(!f.fail(), [&] { return "safetensors_writer: write error on " + path; });
    }

  private:
    struct entry {
        std::string name;
        safetensors_dtype dtype;
        std::vector<std::size_t> shape;
        std::string data;
    };

    void check(const std::string& name, std::size_t size,
               const std::vector<std::size_t>& shape) const {
        detail::require(!name.empty() && name != "__metadata__",
                        [&] { return "safetensors_writer: invalid tensor name '" + name + "'"; });
        for (std::size_t i = 0; i < name.size();) {
            const std::size_t n = detail::utf8_sequence_length(name, i);
            detail::require(n != 0, [&] {
                return "safetensors_writer: tensor name '" + name + "' is not valid UTF-8";
            });
            i += n;
        }
        for (const auto& e : entries_)
            detail::require(e.name != name, [&] {
                return "safetensors_writer: tensor '" + name + "' added twice";
            });
        const std::size_t count = detail::checked_size(
            std::span<const std::size_t>(shape),
            "safetensors_writer: tensor '" + name + "': shape " + detail::shape_text(shape));
        detail::require(count == size, [&] {
            return "safetensors_writer: tensor '" + name + "': shape " + detail::shape_text(shape) +
                   " has " + std::to_string(count) + " elements, the data " + std::to_string(size);
        });
    }

    std::vector<entry> entries_;
    std::vector<std::pair<std::string, std::string>> metadata_;
};

// ---------------------------------------------------------------------------------------
// Quantized results

namespace detail {

/// The level table as a JSON array of shortest round-trip decimal floats, e.g. "[-2,-1,0,1]".
template <level_set L>
std::string level_table_text() {
    std::string s = "[";
    for (std::size_t c = 0; c < L::levels.size(); ++c) {
        char buf[32];
        const auto r = std::to_chars(buf, buf + sizeof buf, L::levels[c]);
        if (c) s += ',';
        s.append(buf, r.ptr);
    }
    return s + "]";
}

inline std::string required_metadata(const safetensors_file& f, const std::string& key) {
    const std::string* v = f.find_metadata(key);
    require(v != nullptr, [&] {
        return "read_quantized: " + f.path() + ": no __metadata__ entry '" + key + "'";
    });
    return *v;
}

}  // namespace detail

/// Stores a quantized matrix under `prefix`:
///   tensors  prefix.codes  U8  [rows][cols]    level codes
///            prefix.scales F32 [rows][groups]
///            prefix.zeros  F32 [rows][groups]  only for affine level sets
///   metadata prefix.level_set   the set's name (level_set_name<L>())
///            prefix.levels      its table, code order, as a JSON array of floats (exact)
///            prefix.bits, prefix.group_size   decimal integers
///            prefix.dequantize  the formula, for readers without qift
/// Weight (r, c) = scales[r][c / group_size] · (levels[codes[r][c]] − zeros[r][c / group_size]).
template <level_set L>
void add_quantized(safetensors_writer& w, const std::string& prefix, const quantized_matrix<L>& q) {
    w.add(prefix + ".codes", q.codes());
    w.add(prefix + ".scales", q.scales().view());
    if constexpr (level_traits<L>::has_zero_point) w.add(prefix + ".zeros", q.zeros().view());
    w.set_metadata(prefix + ".level_set", std::string(level_set_name<L>()));
    w.set_metadata(prefix + ".levels", detail::level_table_text<L>());
    w.set_metadata(prefix + ".bits", std::to_string(L::bits));
    w.set_metadata(prefix + ".group_size", std::to_string(q.group_size()));
    w.set_metadata(prefix + ".dequantize",
                   level_traits<L>::has_zero_point
                       ? "scales[r][c // group_size] * (levels[codes[r][c]] - "
                         "zeros[r][c // group_size])"
                       : "scales[r][c // group_size] * levels[codes[r][c]]");
}

/// The level set name stored under `prefix` by add_quantized (to choose L before
/// read_quantized). Throws qift::error when there is none.
inline std::string stored_level_set(const safetensors_file& f, const std::string& prefix) {
    return detail::required_metadata(f, prefix + ".level_set");
}

/// Reads back what add_quantized stored under `prefix`: the same codes, scales, zeros and group
/// size. Throws qift::error naming the file when an entry is missing or has the wrong dtype or
/// shape, when the stored level set (name and table, compared exactly) is not L, or when
/// quantized_matrix rejects the parts (codes out of range, shapes).
template <level_set L>
quantized_matrix<L> read_quantized(const safetensors_file& f, const std::string& prefix) {
    const std::string where = "read_quantized: " + f.path() + ": '" + prefix + "'";
    const std::string name = detail::required_metadata(f, prefix + ".level_set");
    const std::string table = detail::required_metadata(f, prefix + ".levels");
    detail::require(name == level_set_name<L>() && table == detail::level_table_text<L>(), [&] {
        return where + " holds level set '" + name + "' " + table + ", read as '" +
               std::string(level_set_name<L>()) + "' " + detail::level_table_text<L>();
    });
    const std::string gs = detail::required_metadata(f, prefix + ".group_size");
    std::size_t group_size = 0;
    const auto r = std::from_chars(gs.data(), gs.data() + gs.size(), group_size);
    detail::require(r.ec == std::errc{} && r.ptr == gs.data() + gs.size() && group_size > 0,
                    [&] { return where + ": group_size '" + gs + "' is not a positive integer"; });
    const auto rank2 = [&](const std::string& tensor) {
        const safetensors_tensor& t = f.at(tensor);
        detail::require(t.shape.size() == 2, [&] {
            return where + ": tensor '" + tensor + "' has shape " + detail::shape_text(t.shape) +
                   ", expected rank 2";
        });
        return t.shape;
    };
    const auto codes_shape = rank2(prefix + ".codes");
    matrix<std::uint8_t> codes(codes_shape[0], codes_shape[1]);
    const auto c = f.copy<std::uint8_t>(prefix + ".codes");
    std::copy(c.begin(), c.end(), codes.data());
    const auto read_f32 = [&](const std::string& tensor) {
        const auto shape = rank2(tensor);
        matrix<float> m(shape[0], shape[1]);
        const auto v = f.copy<float>(tensor);
        std::copy(v.begin(), v.end(), m.data());
        return m;
    };
    matrix<float> scales = read_f32(prefix + ".scales");
    matrix<float> zeros;
    if constexpr (level_traits<L>::has_zero_point) zeros = read_f32(prefix + ".zeros");
    return quantized_matrix<L>(std::move(codes), std::move(scales), std::move(zeros), group_size);
}

}  // namespace qift
