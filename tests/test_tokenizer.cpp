// SPDX-License-Identifier: MIT
// The llama2.c tokenizer on the prose6M vocabulary: round trips on the held-out text, agreement
// with the SentencePiece ids shipped with it, hand-checked pieces, and rejection of bad files.
#include <doctest/doctest.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <qift/model/tokenizer.hpp>
#include <qift/npy.hpp>

namespace {

const std::string models_dir = std::string(QIFT_SHARED_DIR) + "/models/";
const std::string tokenizer_path = models_dir + "prose6M_tokenizer.bin";
const std::string checkpoint_path = models_dir + "prose6M.bin";
const std::string test_ids_path = models_dir + "prose6M_test.npy";
constexpr int prose_vocab = 4096;

bool have_file(const std::string& path) {
    if (std::filesystem::exists(path)) return true;
    MESSAGE("SKIPPED: " << path << " is missing (CI always has it)");
    return false;
}

std::string file_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// A file under the temporary directory, removed when the test ends.
struct temp_file {
    std::string path;
    temp_file(const std::string& name, const std::string& bytes)
        : path((std::filesystem::temp_directory_path() / name).string()) {
        std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
    }
    ~temp_file() { std::filesystem::remove(path); }
    temp_file(const temp_file&) = delete;
    temp_file& operator=(const temp_file&) = delete;
};

void put_i32(std::string& s, std::int32_t v) {
    char b[4];
    std::memcpy(b, &v, 4);  // the test machines are little-endian, like the format
    s.append(b, 4);
}
void put_f32(std::string& s, float v) {
    char b[4];
    std::memcpy(b, &v, 4);
    s.append(b, 4);
}

// A minimal valid tokenizer.bin: unk, BOS, EOS, 256 byte tokens, then `extra` pieces.
std::string small_tokenizer(const std::vector<std::pair<std::string, float>>& extra) {
    std::string s;
    put_i32(s, 8);
    const auto entry = [&](const std::string& piece, float score) {
        put_f32(s, score);
        put_i32(s, std::int32_t(piece.size()));
        s += piece;
    };
    entry("<unk>", 0);
    entry("\n<s>\n", 0);
    entry("\n</s>\n", 0);
    for (int b = 0; b < 256; ++b) entry(std::string(1, static_cast<char>(b)), 0);
    for (const auto& [p, sc] : extra) entry(p, sc);
    return s;
}

// The held-out documents as token ids, each starting with BOS.
std::vector<std::vector<int>> test_documents() {
    const auto a = qift::read_npy<std::int32_t>(test_ids_path);
    std::vector<std::vector<int>> docs;
    for (const std::int32_t id : a.data) {
        if (id == qift::tokenizer::bos_id || docs.empty()) docs.emplace_back();
        docs.back().push_back(id);
    }
    return docs;
}

// run.c's encode written out plainly, O(n^2): rescan all adjacent pairs, merge the best
// (strictly greater score wins, so the leftmost among equals), until none is a piece. As in
// tokenizer::encode, text is looked up among the ordinary pieces and byte tokens never merge.
std::vector<int> naive_encode(const qift::tokenizer& tok, const std::string& text) {
    std::vector<int> t;
    if (text.empty()) return t;
    const std::string work = " " + text;
    for (std::size_t i = 0; i < work.size();) {
        std::size_t j = i + 1;
        while (j < work.size() && j - i < 4 && (static_cast<unsigned char>(work[j]) & 0xC0) == 0x80)
            ++j;
        const int id = tok.find(work.substr(i, j - i));
        if (id >= 0)
            t.push_back(id);
        else
            for (std::size_t k = i; k < j; ++k)
                t.push_back(3 + static_cast<unsigned char>(work[k]));
        i = j;
    }
    for (;;) {
        float best = -std::numeric_limits<float>::infinity();
        int best_id = -1;
        std::size_t best_at = 0;
        for (std::size_t i = 0; i + 1 < t.size(); ++i) {
            if (t[i] < qift::tokenizer::min_vocab_size ||
                t[i + 1] < qift::tokenizer::min_vocab_size)
                continue;
            const int id =
                tok.find(std::string(tok.piece(t[i])) + std::string(tok.piece(t[i + 1])));
            if (id >= 0 && tok.score(id) > best) {
                best = tok.score(id);
                best_id = id;
                best_at = i;
            }
        }
        if (best_id < 0) break;
        t[best_at] = best_id;
        t.erase(t.begin() + std::ptrdiff_t(best_at) + 1);
    }
    return t;
}

// Random strings over fragments chosen to make many merges, ties and byte fallbacks.
std::vector<std::string> random_texts(std::size_t count, std::uint32_t seed) {
    const std::vector<std::string> parts = {
        "a",     "b",   "c",    "e",    "t", "h", " ",  "  ",       "the",          " the",
        "whale", "ing", "\n",   ".",    ",", "1", "23", "\xc3\xa9", "\xe2\x80\xa2", "\xff",
        "\t",    "abc", "bcab", "Ahab", "'s"};
    std::mt19937 rng(seed);
    std::vector<std::string> out;
    for (std::size_t n = 0; n < count; ++n) {
        std::string s;
        const std::size_t len = rng() % 60;
        for (std::size_t k = 0; k < len; ++k) s += parts[rng() % parts.size()];
        out.push_back(s);
    }
    return out;
}

template <class F>
std::string message_of(F&& f) {
    try {
        f();
    } catch (const qift::error& e) {
        return e.what();
    }
    return "(no qift::error)";
}

bool contains(const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("tokenizer: prose6M vocabulary, hand-checked pieces") {
    if (!have_file(tokenizer_path)) return;
    const auto tok = qift::load_tokenizer(tokenizer_path, prose_vocab);
    CHECK(tok.vocab_size() == prose_vocab);
    CHECK(tok.max_token_length() == 16);
    CHECK(tok.piece(262) == " the");
    CHECK(tok.piece(1598) == " whale");
    CHECK(tok.find(" the") == 262);
    CHECK(tok.find(" whale") == 1598);
    CHECK(tok.find(" ") == 3996);  // "▁", not the byte token 0x20 (id 35) of the same bytes
    CHECK(tok.find("12") == -1);   // split_digits: no multi-digit pieces
    CHECK(tok.score(259) == 0.0f);
    CHECK(tok.score(262) == -3.0f);
    CHECK(tok.score(260) > tok.score(262));

    using V = std::vector<int>;
    CHECK(tok.encode("", false, false) == V{});
    CHECK(tok.encode("", true, true) == V{1, 2});
    CHECK(tok.encode("the", false, false) == V{262});  // dummy prefix: " the"
    CHECK(tok.encode("the", true, true) == V{1, 262, 2});
    CHECK(tok.encode("whale", true, false) == V{1, 1598});
    CHECK(tok.encode("The whale", true, false) == V{1, 344, 1598});
    CHECK(tok.encode("Ahab", true, false) == V{1, 2359});
    // digits stay single; "\n" is no piece, so it is byte 0x0A = id 13
    CHECK(tok.encode("12", true, false) == V{1, 3996, 4032, tok.find("2")});
    CHECK(tok.find("sea") == -1);
    CHECK(tok.encode("the\nsea", true, false) == V{1, 262, 13, tok.find("se"), tok.find("a")});
    // "é" is no piece: its UTF-8 bytes C3 A9 become byte tokens 0xC3 + 3 and 0xA9 + 3
    CHECK(tok.encode("\xc3\xa9", true, false) == V{1, 3996, 0xC3 + 3, 0xA9 + 3});

    CHECK(tok.decode_piece(1, 262) == "the");  // the dummy prefix goes after BOS
    CHECK(tok.decode_piece(262, 262) == " the");
    CHECK(tok.decode_piece(-1, 262) == " the");
    CHECK(tok.decode_piece(5, 1) == "");
    CHECK(tok.decode_piece(5, 2) == "");
    CHECK(tok.decode_piece(1, 0xC3 + 3) == "\xc3");  // raw byte, not its stored "Ã"
    CHECK(tok.decode(V{1, 344, 1598, 2}) == "The whale");
}

TEST_CASE("tokenizer: hand-written strings round-trip") {
    if (!have_file(tokenizer_path)) return;
    const auto tok = qift::load_tokenizer(tokenizer_path, prose_vocab);
    const std::vector<std::string> texts = {
        "",
        "a",
        " ",
        "\n",
        "x y",
        "   leading spaces",
        "trailing spaces   ",
        "tabs\tand  double  spaces\t\t",
        "line one\nline two\n\nline four\n",
        "Call me Ishmael. Some years ago--never mind how long precisely--having little money",
        "In 1865, 2,083 ships; 3.14159 and 0.5% of $1,000,000 (approx.) #42 @home",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "caf\xc3\xa9 na\xc3\xafve \xce\xb7\xce\xbf \xe2\x80\xa2 \xe6\x97\xa5\xe6\x9c\xac "
        "\xf0\x9f\x90\x8b",
        [] {
            const char with_nul[] = "nul\0byte and \x01\x7f controls";
            return std::string(with_nul, sizeof with_nul - 1);
        }(),
        "invalid \xff\xfe utf-8 \xc3 lone lead, \x80\x80\x80\x80\x80 stray continuations",
    };
    for (const auto& s : texts) {
        CAPTURE(s);
        const auto ids = tok.encode(s, true, true);
        CHECK(tok.decode(ids) == s);
        for (const int id : ids) CHECK((id >= 0 && id < tok.vocab_size()));
        CHECK(ids.front() == 1);
        CHECK(ids.back() == 2);
    }
    // The byte-fallback tokens really are used for a character the vocabulary lacks.
    const auto whale = tok.encode("\xf0\x9f\x90\x8b", false, false);
    CHECK(whale == std::vector<int>{3996, 0xF0 + 3, 0x9F + 3, 0x90 + 3, 0x8B + 3});
}

TEST_CASE("tokenizer: the queue-based merge equals run.c's rescanning merge") {
    SUBCASE("ties go to the leftmost pair") {
        const temp_file f("qift_tok_ties.bin", small_tokenizer({{" ", -9},
                                                                {"a", -9},
                                                                {"b", -9},
                                                                {"c", -9},
                                                                {"ab", -1},
                                                                {"bc", -1},
                                                                {"abc", -2},
                                                                {" a", -3}}));
        const auto tok = qift::load_tokenizer(f.path, 267);
        // " abc": "ab" and "bc" tie at -1 and beat " a" (-3); the leftmost, "ab", merges, then
        // "abc" (-2). In " bcab" the tie between "bc" and "ab" also goes to the left one.
        CHECK(tok.encode("abc", false, false) == std::vector<int>{259, 265});
        CHECK(tok.encode("bcab", false, false) == std::vector<int>{259, 264, 263});
        CHECK(tok.encode("bcab", false, false) == naive_encode(tok, "bcab"));
        for (const auto& s : random_texts(300, 7)) {
            CAPTURE(s);
            CHECK(tok.encode(s, false, false) == naive_encode(tok, s));
            CHECK(tok.decode(tok.encode(s, true, false)) == s);
        }
    }
    SUBCASE("the prose6M vocabulary") {
        if (!have_file(tokenizer_path)) return;
        const auto tok = qift::load_tokenizer(tokenizer_path, prose_vocab);
        for (const auto& s : random_texts(300, 11)) {
            CAPTURE(s);
            CHECK(tok.encode(s, false, false) == naive_encode(tok, s));
        }
    }
}

TEST_CASE("tokenizer: the prose6M test text round-trips and re-encodes to its shipped ids") {
    if (!have_file(tokenizer_path) || !have_file(test_ids_path)) return;
    const auto tok = qift::load_tokenizer(tokenizer_path, prose_vocab);
    const auto docs = test_documents();
    REQUIRE(docs.size() == 44);
    std::size_t exact_docs = 0, total = 0, matching = 0;
    for (std::size_t d = 0; d < docs.size(); ++d) {
        const auto& ids = docs[d];
        REQUIRE(ids.front() == 1);
        const std::string text = tok.decode(ids);
        const auto again = tok.encode(text, true, false);
        CHECK(tok.decode(again) == text);
        if (again == ids) ++exact_docs;
        // Per-token agreement: the longest common prefix and suffix bound the differing middle;
        // tokens outside it agree.
        std::size_t pre = 0, suf = 0;
        while (pre < ids.size() && pre < again.size() && ids[pre] == again[pre]) ++pre;
        while (suf < ids.size() - pre && suf < again.size() - pre &&
               ids[ids.size() - 1 - suf] == again[again.size() - 1 - suf])
            ++suf;
        total += ids.size();
        matching += pre + suf;
        if (pre + suf < ids.size())
            MESSAGE("document " << d << ": " << ids.size() - pre - suf
                                << " shipped ids differ from the re-encoding");
    }
    const double per_token = double(matching) / double(total);
    const double per_doc = double(exact_docs) / double(docs.size());
    MESSAGE("encode(decode(ids)) == ids: " << exact_docs << " of " << docs.size() << " documents, "
                                           << matching << " of " << total << " tokens ("
                                           << per_token * 100 << "%)");
    // Measured: every document re-encodes to exactly its shipped ids (SentencePiece's BPE
    // and the greedy merge agree on this vocabulary, whose merge scores are all distinct).
    CHECK(per_token == 1.0);
    CHECK(per_doc == 1.0);
}

TEST_CASE("tokenizer: consistency with the prose6M checkpoint") {
    if (!have_file(tokenizer_path) || !have_file(checkpoint_path)) return;
    const auto model = qift::load_llama2c(checkpoint_path);
    const auto tok = qift::load_tokenizer(tokenizer_path, model.config.vocab_size);
    CHECK_NOTHROW(qift::check_tokenizer_matches(tok, model.config, checkpoint_path));
    auto other = model.config;
    other.vocab_size = 512;
    const auto msg =
        message_of([&] { qift::check_tokenizer_matches(tok, other, "stories260K.bin"); });
    CHECK(contains(msg, tokenizer_path));
    CHECK(contains(msg, "stories260K.bin"));
    CHECK(contains(msg, "4096"));
    CHECK(contains(msg, "512"));
}

TEST_CASE("tokenizer: bad files and ids are rejected with the file and the values") {
    SUBCASE("missing file") {
        const std::string path =
            (std::filesystem::temp_directory_path() / "qift_no_such_tokenizer.bin").string();
        const auto msg = message_of([&] { qift::load_tokenizer(path, 300); });
        CHECK(contains(msg, path));
        CHECK(contains(msg, std::strerror(ENOENT)));
    }
    SUBCASE("vocab_size below the fixed ids") {
        const temp_file f("qift_tok_small_vocab.bin", small_tokenizer({}));
        const auto msg = message_of([&] { qift::load_tokenizer(f.path, 100); });
        CHECK(contains(msg, f.path));
        CHECK(contains(msg, "vocab_size 100"));
    }
    SUBCASE("a valid small file loads, encodes and decodes") {
        const temp_file f("qift_tok_ok.bin", small_tokenizer({{" ", -3}, {"a", -4}, {" a", -1}}));
        const auto tok = qift::load_tokenizer(f.path, 262);
        CHECK(tok.encode("a", true, false) == std::vector<int>{1, 261});
        CHECK(tok.encode("ab", true, false) == std::vector<int>{1, 261, 'b' + 3});
        CHECK(tok.decode(tok.encode("a ab", true, true)) == "a ab");
    }
    SUBCASE("truncated: fewer entries than vocab_size") {
        const temp_file f("qift_tok_short.bin", small_tokenizer({{"ab", -1}}));
        const auto msg = message_of([&] { qift::load_tokenizer(f.path, 300); });
        CHECK(contains(msg, f.path));
        CHECK(contains(msg, "truncated"));
        CHECK(contains(msg, "entry 260"));
        CHECK(contains(msg, "vocab_size 300"));
    }
    SUBCASE("truncated: a length running past the end") {
        std::string bytes = small_tokenizer({{"abcdef", -1}});
        bytes.resize(bytes.size() - 2);
        const temp_file f("qift_tok_cut.bin", bytes);
        const auto msg = message_of([&] { qift::load_tokenizer(f.path, 260); });
        CHECK(contains(msg, f.path));
        CHECK(contains(msg, "entry 259"));
        CHECK(contains(msg, "6 piece bytes"));
        CHECK(contains(msg, std::to_string(bytes.size()) + " bytes"));
    }
    SUBCASE("oversized: entries left after vocab_size") {
        const temp_file f("qift_tok_big.bin", small_tokenizer({{"ab", -1}, {"cd", -2}}));
        const auto msg = message_of([&] { qift::load_tokenizer(f.path, 259); });
        CHECK(contains(msg, f.path));
        CHECK(contains(msg, "oversized"));
        CHECK(contains(msg, "holds 261 entries"));
        CHECK(contains(msg, "vocab_size 259"));
    }
    SUBCASE("negative and too-long lengths, non-finite scores, bad header") {
        std::string neg = small_tokenizer({});
        put_f32(neg, -1);
        put_i32(neg, -5);
        const temp_file f1("qift_tok_neg.bin", neg);
        auto msg = message_of([&] { qift::load_tokenizer(f1.path, 260); });
        CHECK(contains(msg, f1.path));
        CHECK(contains(msg, "entry 259 has length -5"));

        const temp_file f2("qift_tok_long.bin", small_tokenizer({{"123456789", -1}}));
        msg = message_of([&] { qift::load_tokenizer(f2.path, 260); });
        CHECK(contains(msg, "entry 259 has length 9"));
        CHECK(contains(msg, "max_token_length 8"));

        const temp_file f3("qift_tok_nan.bin",
                           small_tokenizer({{"ab", std::numeric_limits<float>::quiet_NaN()}}));
        msg = message_of([&] { qift::load_tokenizer(f3.path, 260); });
        CHECK(contains(msg, f3.path));
        CHECK(contains(msg, "entry 259 has a non-finite score"));

        std::string zero;
        put_i32(zero, 0);
        const temp_file f4("qift_tok_header.bin", zero);
        msg = message_of([&] { qift::load_tokenizer(f4.path, 260); });
        CHECK(contains(msg, "max_token_length 0"));

        const temp_file f5("qift_tok_empty.bin", "ab");
        msg = message_of([&] { qift::load_tokenizer(f5.path, 260); });
        CHECK(contains(msg, "2 bytes"));
    }
    SUBCASE("the prose6M file with the wrong vocab_size") {
        if (!have_file(tokenizer_path)) return;
        auto msg = message_of([&] { qift::load_tokenizer(tokenizer_path, 4000); });
        CHECK(contains(msg, tokenizer_path));
        CHECK(contains(msg, "oversized"));
        CHECK(contains(msg, "holds 4096 entries"));
        CHECK(contains(msg, "vocab_size 4000"));
        msg = message_of([&] { qift::load_tokenizer(tokenizer_path, 5000); });
        CHECK(contains(msg, "truncated"));
        CHECK(contains(msg, "entry 4096 of vocab_size 5000"));
        CHECK(contains(msg, std::to_string(file_bytes(tokenizer_path).size())));
    }
    SUBCASE("ids out of range") {
        const temp_file f("qift_tok_ids.bin", small_tokenizer({}));
        const auto tok = qift::load_tokenizer(f.path, 259);
        const std::vector<int> ids = {1, 100, 259};
        auto msg = message_of([&] { (void)tok.decode(ids); });
        CHECK(contains(msg, "id 259 at position 2"));
        CHECK(contains(msg, "vocab_size 259"));
        msg = message_of([&] { (void)tok.decode(std::vector<int>{-1}); });
        CHECK(contains(msg, "id -1"));
        msg = message_of([&] { (void)tok.piece(300); });
        CHECK(contains(msg, "id 300"));
        msg = message_of([&] { (void)tok.score(-7); });
        CHECK(contains(msg, "id -7"));
        msg = message_of([&] { (void)tok.decode_piece(1, 4096); });
        CHECK(contains(msg, "id 4096"));
    }
}
