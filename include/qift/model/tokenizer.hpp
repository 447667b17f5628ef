// SPDX-License-Identifier: MIT
// The BPE tokenizer of llama2.c checkpoints (its tokenizer.bin format), validated at load:
// encode and decode as llama2.c's run.c does them, with byte fallback and an O(n log n) merge.
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../core.hpp"
#include "llama2c.hpp"

namespace qift::inline QIFT_ISA {

/// A SentencePiece-style BPE vocabulary read from llama2.c's `tokenizer.bin`: int32
/// max_token_length, then per token float32 score, int32 length and `length` bytes (all
/// little-endian; the file does not store the vocabulary size, the checkpoint does).
/// Ids: 0 unk, 1 BOS, 2 EOS, 3..258 the byte-fallback tokens for bytes 0x00..0xFF (taken as
/// bytes by id, whatever their stored piece: exporters write "<0x0A>" or the byte itself),
/// 259.. the ordinary pieces, with SentencePiece's "▁" stored as a space. Immutable after
/// load; all members are safe to call concurrently.
class tokenizer {
  public:
    static constexpr int unk_id = 0;       ///< unknown piece
    static constexpr int bos_id = 1;       ///< beginning of sequence
    static constexpr int eos_id = 2;       ///< end of sequence
    static constexpr int byte_offset = 3;  ///< id of the byte-fallback token for byte 0x00
    /// Smallest vocabulary with the fixed ids: unk, BOS, EOS and the 256 byte tokens.
    static constexpr int min_vocab_size = byte_offset + 256;

    /// Reads the tokenizer at `path` holding exactly `vocab_size` entries (the checkpoint's
    /// llama2c_config::vocab_size). Throws qift::error, naming the file and the values, when
    /// the file cannot be opened (with strerror), vocab_size is below min_vocab_size, the
    /// header's max_token_length is not positive, an entry's length is negative or above
    /// max_token_length, a score is not finite, the file ends before entry `vocab_size`
    /// (truncated: names the entry, its offset and the file size) or bytes remain after it
    /// (oversized: the file holds more tokens than vocab_size). Builds the sorted piece index
    /// once: O(V log V).
    static tokenizer load(const std::string& path, int vocab_size) {
        const auto where = [&] { return "load_tokenizer: " + path; };
        detail::require(vocab_size >= min_vocab_size && vocab_size <= (1 << 21), [&] {
            return where() + ": vocab_size " + std::to_string(vocab_size) + " is outside [" +
                   std::to_string(min_vocab_size) + ", " + std::to_string(1 << 21) +
                   "] (unk, BOS, EOS and 256 byte tokens come first)";
        });
        std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"),
                                                          &std::fclose);
        detail::require(f != nullptr, [&] {
            return "load_tokenizer: cannot open " + path + ": " + std::strerror(errno);
        });
        std::string bytes;
        char chunk[1 << 16];
        for (std::size_t got; (got = std::fread(chunk, 1, sizeof chunk, f.get())) > 0;)
            bytes.append(chunk, got);
        detail::require(!std::ferror(f.get()), [&] { return where() + ": read error"; });
        const std::size_t size = bytes.size();
        detail::require(size >= 4, [&] {
            return where() + " is " + std::to_string(size) +
                   " bytes, too short for the 4-byte max_token_length";
        });

        tokenizer t;
        t.path_ = path;
        t.max_token_length_ = read_i32(bytes, 0);
        detail::require(t.max_token_length_ >= 1 && t.max_token_length_ <= (1 << 16), [&] {
            return where() + ": max_token_length " + std::to_string(t.max_token_length_) +
                   " is outside [1, 65536]";
        });
        const std::size_t n = std::size_t(vocab_size);
        t.scores_.resize(n);
        t.offsets_.resize(n + 1);
        std::size_t at = 4;
        for (std::size_t i = 0; i < n; ++i) {
            const auto truncated = [&](const std::string& need) {
                return where() + " is truncated: entry " + std::to_string(i) + " of vocab_size " +
                       std::to_string(vocab_size) + " needs " + need + " at offset " +
                       std::to_string(at) + " but the file is " + std::to_string(size) +
                       " bytes (only " + std::to_string(i) + " whole entries)";
            };
            detail::require(size - at >= 8, [&] { return truncated("8 bytes (score, length)"); });
            const float s = read_f32(bytes, at);
            const std::int32_t len = read_i32(bytes, at + 4);
            detail::require(std::isfinite(s), [&] {
                return where() + ": entry " + std::to_string(i) + " has a non-finite score " +
                       std::to_string(s);
            });
            detail::require(len >= 0 && len <= t.max_token_length_, [&] {
                return where() + ": entry " + std::to_string(i) + " has length " +
                       std::to_string(len) + ", outside [0, max_token_length " +
                       std::to_string(t.max_token_length_) + "]";
            });
            at += 8;
            detail::require(size - at >= std::size_t(len),
                            [&] { return truncated(std::to_string(len) + " piece bytes"); });
            t.scores_[i] = s;
            t.offsets_[i] = t.pieces_.size();
            t.pieces_.append(bytes, at, std::size_t(len));
            at += std::size_t(len);
        }
        t.offsets_[n] = t.pieces_.size();
        detail::require(at == size, [&] {
            return where() + " is oversized: " + std::to_string(size - at) +
                   " bytes remain after the " + std::to_string(vocab_size) +
                   " entries of vocab_size (they end at offset " + std::to_string(at) + " of " +
                   std::to_string(size) + "); the file holds " + count_entries(bytes, at, n) +
                   " entries, so it does not belong to a checkpoint with vocab_size " +
                   std::to_string(vocab_size);
        });

        // Text is looked up among the ordinary pieces only: the byte tokens' stored pieces
        // can equal ordinary ones (" " is both byte 0x20 and "▁"), and SentencePiece never
        // emits byte or control tokens for text it has pieces for. Ties keep the lowest id.
        for (int id = min_vocab_size; id < vocab_size; ++id)
            if (!t.piece_unchecked(id).empty()) t.sorted_.push_back(id);
        std::sort(t.sorted_.begin(), t.sorted_.end(), [&](int a, int b) {
            const auto pa = t.piece_unchecked(a), pb = t.piece_unchecked(b);
            return pa != pb ? pa < pb : a < b;
        });
        // first_[c] .. first_[c + 1]: the sorted ids whose piece starts with byte c.
        std::size_t k = 0;
        for (std::size_t c = 0; c < 256; ++c) {
            t.first_[c] = k;
            while (k < t.sorted_.size() &&
                   static_cast<unsigned char>(t.piece_unchecked(t.sorted_[k]).front()) == c)
                ++k;
        }
        t.first_[256] = k;
        return t;
    }

    /// Number of tokens (ids are [0, vocab_size())).
    int vocab_size() const noexcept { return int(scores_.size()); }
    /// The header's bound on a piece's length in bytes.
    int max_token_length() const noexcept { return max_token_length_; }
    /// The file this tokenizer was read from (named in error messages).
    const std::string& path() const noexcept { return path_; }

    /// The merge score of `id` (higher merges first). Throws qift::error for an id outside
    /// [0, vocab_size()).
    float score(int id) const {
        check_id(id, "score");
        return scores_[std::size_t(id)];
    }

    /// The bytes stored for `id` in the file (a space stands for "▁"; control tokens and
    /// byte tokens as the exporter wrote them). Throws qift::error for an id out of range.
    std::string_view piece(int id) const {
        check_id(id, "piece");
        return piece_unchecked(id);
    }

    /// The id of the ordinary piece (id >= 259) whose bytes are `text`, or -1 if none.
    /// O(log V).
    int find(std::string_view text) const noexcept {
        if (text.empty()) return -1;
        const std::size_t c = static_cast<unsigned char>(text.front());
        const auto first = sorted_.begin() + std::ptrdiff_t(first_[c]);
        const auto last = sorted_.begin() + std::ptrdiff_t(first_[c + 1]);
        const auto it = std::lower_bound(
            first, last, text, [&](int id, std::string_view s) { return piece_unchecked(id) < s; });
        return it != last && piece_unchecked(*it) == text ? *it : -1;
    }

    /// The text of `id` following `prev` (prev is -1 at the start), as llama2.c's run.c
    /// decode(): after BOS a leading space (SentencePiece's dummy prefix) is dropped; byte
    /// tokens give their raw byte. Unlike run.c, BOS and EOS give "" (control tokens have no
    /// text, as in SentencePiece). The view stays valid as long as the tokenizer. Throws
    /// qift::error for an id out of range.
    std::string_view decode_piece(int prev, int id) const {
        check_id(id, "decode");
        if (id == bos_id || id == eos_id) return {};
        if (id >= byte_offset && id < min_vocab_size)
            return {&byte_chars[std::size_t(id - byte_offset)], 1};
        std::string_view p = piece_unchecked(id);
        if (prev == bos_id && !p.empty() && p.front() == ' ') p.remove_prefix(1);
        return p;
    }

    /// The text of a whole id sequence: the concatenation of decode_piece(ids[i-1], ids[i]).
    /// decode(encode(s, true, ...)) == s for every s whose characters are pieces or bytes.
    /// Throws qift::error naming the position, the id and vocab_size for an id out of range.
    std::string decode(std::span<const int> ids) const {
        std::string out;
        int prev = -1;
        for (std::size_t i = 0; i < ids.size(); ++i) {
            detail::require(ids[i] >= 0 && ids[i] < vocab_size(), [&] {
                return "tokenizer::decode: id " + std::to_string(ids[i]) + " at position " +
                       std::to_string(i) + " is outside [0, vocab_size " +
                       std::to_string(vocab_size()) + ") of " + path_;
            });
            out += decode_piece(prev, ids[i]);
            prev = ids[i];
        }
        return out;
    }

    /// Token ids of `text` (UTF-8; invalid sequences fall back to bytes), as llama2.c's
    /// run.c encode(): optional BOS; if text is non-empty a dummy-prefix space (the prose6M
    /// tokenizer was trained with SentencePiece's add_dummy_prefix); each code point (a lead
    /// byte and up to 3 continuation bytes) as its piece, or else as byte tokens (byte + 3);
    /// then, until no adjacent pair of pieces concatenates to a piece, merge the pair whose
    /// result scores highest, the leftmost among equals; optional EOS. Byte tokens never
    /// merge (as in SentencePiece, where byte fallback follows the merges). Cost
    /// O(n log n · log V) with a priority queue over a linked list of symbols, not run.c's
    /// O(n²) rescans; the result is the same.
    std::vector<int> encode(std::string_view text, bool bos, bool eos) const {
        std::vector<int> out;
        if (bos) out.push_back(bos_id);
        if (!text.empty()) {
            detail::require(text.size() < std::size_t(std::numeric_limits<int>::max()), [&] {
                return "tokenizer::encode: text of " + std::to_string(text.size()) +
                       " bytes is too long (at most 2^31 - 2)";
            });
            std::string work;
            work.reserve(text.size() + 1);
            work += ' ';
            work += text;
            merge(work, out);
        }
        if (eos) out.push_back(eos_id);
        return out;
    }

  private:
    std::string path_;
    int max_token_length_ = 0;
    std::vector<float> scores_;
    std::string pieces_;                    // all pieces, concatenated
    std::vector<std::size_t> offsets_;      // piece i is pieces_[offsets_[i], offsets_[i + 1])
    std::vector<int> sorted_;               // ordinary piece ids sorted by their bytes
    std::array<std::size_t, 257> first_{};  // sorted_ ranges by first byte

    static constexpr std::array<char, 256> byte_chars = [] {
        std::array<char, 256> a{};
        for (std::size_t b = 0; b < 256; ++b) a[b] = static_cast<char>(b);
        return a;
    }();

    static std::uint32_t read_u32(const std::string& b, std::size_t at) noexcept {
        std::uint32_t v = 0;
        for (std::size_t k = 0; k < 4; ++k)
            v |= std::uint32_t(static_cast<unsigned char>(b[at + k])) << (8 * k);
        return v;
    }
    static std::int32_t read_i32(const std::string& b, std::size_t at) noexcept {
        return static_cast<std::int32_t>(read_u32(b, at));
    }
    static float read_f32(const std::string& b, std::size_t at) noexcept {
        const std::uint32_t u = read_u32(b, at);
        float f;
        std::memcpy(&f, &u, sizeof f);
        return f;
    }

    // How many whole entries the bytes from `at` (after `n` entries) hold in total, for the
    // oversized-file message; "more than n" when the tail does not parse as entries.
    static std::string count_entries(const std::string& b, std::size_t at, std::size_t n) {
        while (b.size() - at >= 8) {
            const std::int32_t len = read_i32(b, at + 4);
            if (len < 0 || b.size() - at - 8 < std::size_t(len)) break;
            at += 8 + std::size_t(len);
            ++n;
        }
        return at == b.size() ? std::to_string(n) : "more than " + std::to_string(n);
    }

    std::string_view piece_unchecked(int id) const noexcept {
        const std::size_t i = std::size_t(id);
        return std::string_view(pieces_).substr(offsets_[i], offsets_[i + 1] - offsets_[i]);
    }

    void check_id(int id, const char* what) const {
        detail::require(id >= 0 && id < vocab_size(), [&] {
            return std::string("tokenizer::") + what + ": id " + std::to_string(id) +
                   " is outside [0, vocab_size " + std::to_string(vocab_size()) + ") of " + path_;
        });
    }

    // The merge loop of encode() on `work` (dummy prefix included); appends ids to `out`.
    // Symbols are byte ranges of `work` in a doubly linked list (index order is text order);
    // a candidate pair is checked when popped (left still present, still adjacent to the same
    // right symbol, whose end is unchanged), so the queue replays run.c's "best score, then
    // leftmost" choice without rescanning. Byte tokens never merge, so the runs between them
    // are independent and go through the queue one at a time, which keeps it small.
    void merge(const std::string& work, std::vector<int>& out) const {
        struct symbol {
            int begin, end;  // bytes of work
            int id;          // -1: a byte-fallback byte (never merges), -2: absorbed
            int prev, next;  // neighbours in the list, -1 at the ends
        };
        std::vector<symbol> sym;
        sym.reserve(work.size());
        const int size = int(work.size());
        const auto is_continuation = [&](int i) {
            return (static_cast<unsigned char>(work[std::size_t(i)]) & 0xC0) == 0x80;
        };
        const auto bytes = [&](int begin, int end) {
            return std::string_view(work).substr(std::size_t(begin), std::size_t(end - begin));
        };
        for (int i = 0; i < size;) {
            int j = i + 1;
            while (j < size && j - i < 4 && is_continuation(j)) ++j;
            const int id = find(bytes(i, j));
            if (id >= 0) {
                sym.push_back({i, j, id, -1, -1});
            } else {
                for (int k = i; k < j; ++k) sym.push_back({k, k + 1, -1, -1, -1});
            }
            i = j;
        }
        const int count = int(sym.size());
        for (int s = 0; s < count; ++s) {
            sym[std::size_t(s)].prev = s - 1;
            sym[std::size_t(s)].next = s + 1 < count ? s + 1 : -1;
        }

        struct candidate {
            float score;
            int left, right;  // symbols; left < right, so left orders by text position
            int end;          // byte end of the right symbol when the pair was seen
            int id;           // the merged piece
        };
        const auto worse = [](const candidate& x, const candidate& y) {
            return x.score != y.score ? x.score < y.score : x.left > y.left;
        };
        std::priority_queue<candidate, std::vector<candidate>, decltype(worse)> queue(worse);
        const auto consider = [&](int left) {
            if (left < 0) return;
            const symbol& l = sym[std::size_t(left)];
            if (l.next < 0 || l.id < 0) return;
            const symbol& r = sym[std::size_t(l.next)];
            if (r.id < 0 || r.end - l.begin > max_token_length_) return;
            const int id = find(bytes(l.begin, r.end));
            if (id >= 0) queue.push({scores_[std::size_t(id)], left, l.next, r.end, id});
        };
        for (int run = 0; run < count;) {
            int stop = run;
            while (stop < count && sym[std::size_t(stop)].id >= 0) ++stop;
            for (int s = run; s + 1 < stop; ++s) consider(s);
            while (!queue.empty()) {
                const candidate c = queue.top();
                queue.pop();
                symbol& l = sym[std::size_t(c.left)];
                symbol& r = sym[std::size_t(c.right)];
                if (l.id < 0 || l.next != c.right || r.end != c.end) continue;  // stale
                l.end = r.end;
                l.id = c.id;
                l.next = r.next;
                if (r.next >= 0) sym[std::size_t(r.next)].prev = c.left;
                r.id = -2;
                consider(l.prev);
                consider(c.left);
            }
            run = std::max(stop, run + 1);
        }
        for (int s = count > 0 ? 0 : -1; s >= 0; s = sym[std::size_t(s)].next) {
            const symbol& x = sym[std::size_t(s)];
            out.push_back(x.id >= 0 ? x.id
                                    : byte_offset +
                                          static_cast<unsigned char>(work[std::size_t(x.begin)]));
        }
    }
};

/// Same as tokenizer::load(path, vocab_size).
inline tokenizer load_tokenizer(const std::string& path, int vocab_size) {
    return tokenizer::load(path, vocab_size);
}

/// Checks that `tok` fits the checkpoint with `config` (read from `checkpoint_path`): their
/// vocabulary sizes must be equal, or ids would index the wrong embedding rows. Throws
/// qift::error naming both files and both sizes.
inline void check_tokenizer_matches(const tokenizer& tok, const llama2c_config& config,
                                    const std::string& checkpoint_path) {
    detail::require(tok.vocab_size() == config.vocab_size, [&] {
        return "check_tokenizer_matches: tokenizer " + tok.path() + " has vocab_size " +
               std::to_string(tok.vocab_size()) + " but checkpoint " + checkpoint_path +
               " has vocab_size " + std::to_string(config.vocab_size);
    });
}

}  // namespace qift
