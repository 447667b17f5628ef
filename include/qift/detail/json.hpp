// SPDX-License-Identifier: MIT
// A small strict JSON (RFC 8259) reader and string writer for the checkpoint formats: safetensors
// headers and Hugging Face config.json / index files. Not a general-purpose JSON library.
#pragma once

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "../core.hpp"

namespace qift::inline QIFT_ISA::detail {

/// A parsed JSON value. Objects keep their members in document order (`keys[i]` ↔
/// `values[i]`); numbers keep their literal text (read exactly by as_u64 / as_i64 / as_double).
struct json_value {
    enum class kind { null, boolean, number, string, array, object };
    kind type = kind::null;
    bool boolean = false;
    std::string text;                ///< a string's decoded UTF-8, or a number's literal
    std::vector<json_value> values;  ///< array items, or object member values
    std::vector<std::string> keys;   ///< object member names (unique)

    bool is(kind k) const noexcept { return type == k; }
    /// The member named `key` of an object, or nullptr (also for a non-object).
    const json_value* find(std::string_view key) const noexcept {
        if (type != kind::object) return nullptr;
        for (std::size_t i = 0; i < keys.size(); ++i)
            if (keys[i] == key) return &values[i];
        return nullptr;
    }
};

inline const char* json_kind_name(json_value::kind k) noexcept {
    constexpr const char* names[] = {"null",     "a boolean", "a number",
                                     "a string", "an array",  "an object"};
    return names[static_cast<unsigned>(k)];
}

/// The value of an integer literal (no fraction, no exponent) that fits std::uint64_t; false
/// otherwise.
inline bool json_to_u64(const json_value& v, std::uint64_t& out) noexcept {
    if (v.type != json_value::kind::number) return false;
    const char* b = v.text.data();
    const char* e = b + v.text.size();
    const auto r = std::from_chars(b, e, out);
    return r.ec == std::errc{} && r.ptr == e;
}

/// The value of an integer literal that fits std::int64_t; false otherwise.
inline bool json_to_i64(const json_value& v, std::int64_t& out) noexcept {
    if (v.type != json_value::kind::number) return false;
    const char* b = v.text.data();
    const char* e = b + v.text.size();
    const auto r = std::from_chars(b, e, out);
    return r.ec == std::errc{} && r.ptr == e;
}

/// The value of any number literal as the nearest double (locale-independent); false when it
/// is not a number or overflows double's range.
inline bool json_to_double(const json_value& v, double& out) noexcept {
    if (v.type != json_value::kind::number) return false;
    const char* b = v.text.data();
    const char* e = b + v.text.size();
    const auto r = std::from_chars(b, e, out);
    return r.ec == std::errc{} && r.ptr == e;
}

/// Length of the well-formed UTF-8 sequence starting at s[i] (1–4), or 0 when it is not one
/// (overlong forms, surrogates and code points above U+10FFFF are not well-formed).
inline std::size_t utf8_sequence_length(std::string_view s, std::size_t i) noexcept {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned c = byte(i);
    if (c < 0x80) return 1;
    std::size_t n = 0;
    unsigned lo = 0x80, hi = 0xbf;  // range of the second byte
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else
        return 0;
    if (i + n > s.size()) return 0;
    if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
    for (std::size_t k = 2; k < n; ++k)
        if (byte(i + k) < 0x80 || byte(i + k) > 0xbf) return 0;
    return n;
}

/// Appends the JSON string literal of UTF-8 text `s` (quotes, escapes of '"', '\\' and control
/// characters) to `out`.
inline void json_append_string(std::string& out, std::string_view s) {
    out += '"';
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += ch;
        } else if (c < 0x20) {
            constexpr char hex[] = "0123456789abcdef";
            out += "\\u00";
            out += hex[c >> 4];
            out += hex[c & 15];
        } else
            out += ch;
    }
    out += '"';
}

/// A strict recursive-descent parser: RFC 8259 grammar only (no comments, no trailing commas,
/// no NaN/Infinity, no leading zeros, no raw control characters in strings), UTF-8 validated,
/// \u escapes decoded (surrogate pairs joined, lone surrogates refused), duplicate object keys
/// refused, nesting at most 64 deep. Errors name `what` and the byte offset.
class json_parser {
  public:
    json_parser(std::string_view text, std::string what) : s_(text), what_(std::move(what)) {}

    /// Parses the whole text as one value (whitespace around it allowed).
    json_value parse() {
        json_value v = value(0);
        skip();
        if (i_ != s_.size()) fail_at("unexpected characters after the JSON value");
        return v;
    }

  private:
    [[noreturn]] void fail_at(const std::string& why) const {
        fail(what_ + ": " + why + " at byte " + std::to_string(i_));
    }
    void skip() noexcept {
        while (i_ < s_.size() &&
               (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r'))
            ++i_;
    }
    bool literal(std::string_view word) noexcept {
        if (s_.substr(i_, word.size()) != word) return false;
        i_ += word.size();
        return true;
    }

    json_value value(int depth) {
        if (depth > 64) fail_at("JSON nested more than 64 deep");
        skip();
        if (i_ >= s_.size()) fail_at("unexpected end of the JSON text");
        json_value v;
        const char c = s_[i_];
        if (c == '{') {
            v.type = json_value::kind::object;
            ++i_;
            skip();
            if (i_ < s_.size() && s_[i_] == '}') return ++i_, v;
            for (;;) {
                skip();
                if (i_ >= s_.size() || s_[i_] != '"') fail_at("expected a string key");
                const std::size_t key_at = i_;
                std::string key = string();
                for (const auto& k : v.keys)
                    if (k == key) {
                        i_ = key_at;
                        fail_at("duplicate key \"" + key + "\"");
                    }
                skip();
                if (i_ >= s_.size() || s_[i_] != ':') fail_at("expected ':'");
                ++i_;
                v.keys.push_back(std::move(key));
                v.values.push_back(value(depth + 1));
                skip();
                if (i_ < s_.size() && s_[i_] == ',') {
                    ++i_;
                    continue;
                }
                if (i_ < s_.size() && s_[i_] == '}') return ++i_, v;
                fail_at("expected ',' or '}'");
            }
        }
        if (c == '[') {
            v.type = json_value::kind::array;
            ++i_;
            skip();
            if (i_ < s_.size() && s_[i_] == ']') return ++i_, v;
            for (;;) {
                v.values.push_back(value(depth + 1));
                skip();
                if (i_ < s_.size() && s_[i_] == ',') {
                    ++i_;
                    continue;
                }
                if (i_ < s_.size() && s_[i_] == ']') return ++i_, v;
                fail_at("expected ',' or ']'");
            }
        }
        if (c == '"') {
            v.type = json_value::kind::string;
            v.text = string();
            return v;
        }
        if (literal("true")) {
            v.type = json_value::kind::boolean;
            v.boolean = true;
            return v;
        }
        if (literal("false")) {
            v.type = json_value::kind::boolean;
            return v;
        }
        if (literal("null")) return v;
        if (c == '-' || (c >= '0' && c <= '9')) {
            v.type = json_value::kind::number;
            v.text = number();
            return v;
        }
        fail_at(std::string("unexpected character '") + c + "'");
    }

    std::string number() {
        const std::size_t start = i_;
        const auto digits = [&] {
            const std::size_t from = i_;
            while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
            return i_ - from;
        };
        if (s_[i_] == '-') ++i_;
        if (i_ < s_.size() && s_[i_] == '0') {
            ++i_;
            if (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9')
                fail_at("a number with a leading zero");
        } else if (digits() == 0)
            fail_at("a malformed number");
        if (i_ < s_.size() && s_[i_] == '.') {
            ++i_;
            if (digits() == 0) fail_at("a malformed number (no digits after '.')");
        }
        if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
            ++i_;
            if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
            if (digits() == 0) fail_at("a malformed number (no exponent digits)");
        }
        return std::string(s_.substr(start, i_ - start));
    }

    unsigned hex4() {
        if (s_.size() - i_ < 4) fail_at("a truncated \\u escape");
        unsigned v = 0;
        for (int k = 0; k < 4; ++k) {
            const char h = s_[i_++];
            v <<= 4;
            if (h >= '0' && h <= '9')
                v |= unsigned(h - '0');
            else if (h >= 'a' && h <= 'f')
                v |= unsigned(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F')
                v |= unsigned(h - 'A' + 10);
            else
                fail_at("a malformed \\u escape");
        }
        return v;
    }

    static void append_utf8(std::string& out, unsigned cp) {
        const auto put = [&](unsigned b) { out += static_cast<char>(b); };
        if (cp < 0x80)
            put(cp);
        else if (cp < 0x800)
            put(0xc0 | cp >> 6), put(0x80 | (cp & 0x3f));
        else if (cp < 0x10000)
            put(0xe0 | cp >> 12), put(0x80 | (cp >> 6 & 0x3f)), put(0x80 | (cp & 0x3f));
        else
            put(0xf0 | cp >> 18), put(0x80 | (cp >> 12 & 0x3f)), put(0x80 | (cp >> 6 & 0x3f)),
                put(0x80 | (cp & 0x3f));
    }

    std::string string() {
        ++i_;  // the opening quote
        std::string out;
        for (;;) {
            if (i_ >= s_.size()) fail_at("an unterminated string");
            const auto c = static_cast<unsigned char>(s_[i_]);
            if (c == '"') return ++i_, out;
            if (c < 0x20) fail_at("a raw control character in a string");
            if (c != '\\') {
                const std::size_t n = utf8_sequence_length(s_, i_);
                if (n == 0) fail_at("invalid UTF-8");
                out.append(s_.substr(i_, n));
                i_ += n;
                continue;
            }
            if (++i_ >= s_.size()) fail_at("an unterminated string");
            const char e = s_[i_++];
            switch (e) {
                case '"':
                case '\\':
                case '/':
                    out += e;
                    break;
                case 'b':
                    out += '\b';
                    break;
                case 'f':
                    out += '\f';
                    break;
                case 'n':
                    out += '\n';
                    break;
                case 'r':
                    out += '\r';
                    break;
                case 't':
                    out += '\t';
                    break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xdc00 && cp <= 0xdfff) fail_at("a lone low surrogate escape");
                    if (cp >= 0xd800 && cp <= 0xdbff) {
                        if (!literal("\\u")) fail_at("a high surrogate escape without its pair");
                        const unsigned low = hex4();
                        if (low < 0xdc00 || low > 0xdfff)
                            fail_at("a high surrogate escape without its pair");
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                    }
                    append_utf8(out, cp);
                    break;
                }
                default:
                    --i_;
                    fail_at(std::string("an invalid escape '\\") + e + "'");
            }
        }
    }

    std::string_view s_;
    std::string what_;
    std::size_t i_ = 0;
};

/// Parses `text` as strict JSON (see json_parser); `what` prefixes error messages.
inline json_value parse_json(std::string_view text, const std::string& what) {
    return json_parser(text, what).parse();
}

}  // namespace qift::detail
