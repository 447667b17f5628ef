// SPDX-License-Identifier: MIT
// The kernel suite of the dispatch test, compiled once per x86 target by
// qift_add_dispatch_sources: every SIMD kernel family against its scalar reference on random,
// odd shapes (integer kernels bit for bit, float kernels within their stated bounds), with a
// hash / sum of the outputs that main.cpp compares across targets.
#include "kernel_suite.hpp"

#include <qift/act.hpp>
#include <qift/binary_matrix.hpp>
#include <qift/bitplane.hpp>
#include <qift/gemm.hpp>
#include <qift/gemv.hpp>
#include <qift/hadamard.hpp>
#include <qift/kv_cache.hpp>
#include <qift/mx.hpp>
#include <qift/scale.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using dispatch_test::family_result;
using qift::matrix;
using qift::matrix_view;

// Sizes that are not multiples of any vector width (16 floats, 64 bytes, 256 packed codes),
// plus one exact multiple for the no-tail path.
constexpr std::size_t test_rows[] = {1, 5, 13, 37};
constexpr std::size_t test_cols[] = {1, 63, 256, 257, 1000};

/// Records the checks of one family: pass/fail, and the outputs into its hash or sums.
class recorder {
  public:
    /// exact: bit for bit against the reference; portable: the same bits on every target.
    recorder(std::string name, bool exact, bool portable) {
        r_.name = std::move(name);
        r_.exact = exact;
        r_.portable = portable;
        r_.hash = 14695981039346656037ull;
    }
    void check(bool ok, const std::string& where) {
        ++r_.checks;
        if (!ok && r_.failures++ == 0) r_.first_failure = where;
    }
    template <class T>
    void add(std::span<const T> v) {
        const auto* p = reinterpret_cast<const unsigned char*>(v.data());
        for (std::size_t i = 0; i < v.size_bytes(); ++i)
            r_.hash = (r_.hash ^ p[i]) * 1099511628211ull;
        for (const T& x : v) {
            r_.sum += double(x);
            r_.abs_sum += std::fabs(double(x));
        }
    }
    family_result result() && { return std::move(r_); }

  private:
    family_result r_;
};

std::string shape(std::size_t rows, std::size_t cols) {
    return std::to_string(rows) + "x" + std::to_string(cols);
}

matrix<float> gaussian(std::size_t rows, std::size_t cols, std::mt19937_64& gen,
                       float sigma = 1.0f) {
    std::normal_distribution<float> nd(0.0f, sigma);
    matrix<float> m(rows, cols);
    for (auto& x : m.flat()) x = nd(gen);
    return m;
}

bool bit_equal(std::span<const float> a, std::span<const float> b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

/// |y − ref| <= tol · mag elementwise (mag: a magnitude bound per output).
bool within(std::span<const float> y, std::span<const double> ref, std::span<const double> mag,
            double tol) {
    for (std::size_t i = 0; i < y.size(); ++i)
        if (!(std::fabs(double(y[i]) - ref[i]) <= tol * mag[i] + 1e-30)) return false;
    return true;
}

/// RTN quantization with the max-based scale: a valid quantized matrix quickly.
template <class L>
qift::quantized_matrix<L> quantize_max(const matrix<float>& w) {
    qift::scale_options opt;
    opt.rule = qift::scale_rule::max;
    return qift::quantize<L>(w, opt);
}

// ---------------------------------------------------------------------------------------

family_result activations(std::mt19937_64& gen) {
    recorder rec("quantize_activations A4", true, true);
    for (std::size_t cols : {1u, 7u, 63u, 257u, 1000u, 4097u})
        for (auto range : {qift::a4_range::symmetric, qift::a4_range::full})
            for (float clip : {1.0f, 0.9f}) {
                const auto x = gaussian(3, cols, gen);
                const auto q = qift::quantize_activations(x, clip, range);
                const int lo = range == qift::a4_range::full ? -8 : -7;
                std::vector<std::int8_t> ref(cols);
                for (std::size_t t = 0; t < 3; ++t) {
                    const float s =
                        qift::detail::quantize_token_scalar(x.row(t), clip, lo, ref.data());
                    std::int32_t sum = 0;
                    for (auto c : ref) sum += c;
                    bool ok = s == q.scales[t] && sum == q.sums[t] &&
                              std::memcmp(ref.data(), q.row(t), cols) == 0;
                    for (std::size_t k = cols; k < q.padded_cols; ++k) ok = ok && q.code(t, k) == 0;
                    rec.check(ok, "cols " + std::to_string(cols) + " clip " + std::to_string(clip));
                }
                rec.add(std::span<const std::int8_t>(q.codes));
                rec.add(std::span<const float>(q.scales));
            }
    return std::move(rec).result();
}

/// W2A4 / W4A4 GEMV (and its shift-add form) and GEMM of level set L against the references.
template <class L>
void integer_products(const char* set, std::mt19937_64& gen, std::vector<family_result>& out) {
    recorder gemv(std::string("gemv W") + std::to_string(qift::storage_bits<L>) + "A4 " + set, true,
                  true);
    for (std::size_t rows : test_rows)
        for (std::size_t cols : test_cols) {
            const qift::packed_matrix<L> p(quantize_max<L>(gaussian(rows, cols, gen)));
            const auto a = qift::quantize_activations(gaussian(1, cols, gen), 0.9f);
            std::vector<float> y(rows), y2(rows), ref(rows);
            qift::gemv_reference(p, a, ref);
            qift::gemv(p, a, y);
            qift::gemv_shift_add(p, a, y2);
            gemv.check(bit_equal(y, ref) && bit_equal(y2, ref), shape(rows, cols));
            gemv.add(std::span<const float>(y));
        }
    out.push_back(std::move(gemv).result());

    recorder gemm(std::string("gemm W") + std::to_string(qift::storage_bits<L>) + "A4 " + set, true,
                  true);
    for (std::size_t tokens : {2u, 5u, 67u})
        for (std::size_t cols : {63u, 257u}) {
            const std::size_t rows = 19;
            const qift::packed_matrix<L> p(quantize_max<L>(gaussian(rows, cols, gen)));
            const auto a =
                qift::quantize_activations(gaussian(tokens, cols, gen), 0.9f, qift::a4_range::full);
            matrix<float> y(tokens, rows), ref(tokens, rows);
            qift::gemm_reference(p, a, ref);
            qift::gemm(p, a, y);
            gemm.check(bit_equal(y.flat(), ref.flat()),
                       std::to_string(tokens) + " tokens, " + shape(rows, cols));
            gemm.add(std::span<const float>(y.flat()));
        }
    out.push_back(std::move(gemm).result());
}

/// W2A16 float GEMV (NF2; packed codes and bit planes) against the scalar reference and
/// dequantize-then-matmul in double.
family_result w2a16(std::mt19937_64& gen) {
    recorder rec("gemv W2A16 nf2 (packed, bit planes)", false, false);
    for (std::size_t rows : test_rows)
        for (std::size_t cols : test_cols) {
            const auto q = quantize_max<qift::levels::nf2>(gaussian(rows, cols, gen));
            const qift::packed_matrix<qift::levels::nf2> p(q);
            const auto x = gaussian(1, cols, gen);
            const auto w = q.dequantize();
            std::vector<double> want(rows), mag(rows);
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t k = 0; k < cols; ++k) {
                    want[r] += double(w(r, k)) * double(x(0, k));
                    mag[r] += std::fabs(double(w(r, k)) * double(x(0, k)));
                }
            std::vector<float> y(rows), ref(rows), planes(rows);
            qift::gemv_reference(p, x.row(0), ref);
            qift::gemv(p, x.row(0), y);
            qift::gemv(qift::bitplane_matrix<qift::levels::nf2>(p), x.row(0), planes);
            rec.check(within(y, want, mag, 1e-5) && within(ref, want, mag, 1e-5) &&
                          within(planes, want, mag, 1e-5),
                      shape(rows, cols));
            rec.add(std::span<const float>(y));
            rec.add(std::span<const float>(planes));
        }
    return std::move(rec).result();
}

/// Hadamard transforms (powers of two and K·2^m sizes) against the dense H_n·x / √n.
family_result hadamard(std::mt19937_64& gen) {
    recorder rec("hadamard_transform", false, false);
    for (std::size_t n : {2u, 8u, 64u, 512u, 4096u, 12u, 20u, 344u, 448u}) {
        const auto h = qift::hadamard_matrix(n);
        const auto x = gaussian(1, n, gen);
        for (bool transpose : {false, true}) {
            std::vector<float> y(x.row(0).begin(), x.row(0).end());
            if (transpose)
                qift::hadamard_transform_transpose(y);
            else
                qift::hadamard_transform(y);
            double num = 0.0, den = 0.0;
            for (std::size_t i = 0; i < n; ++i) {
                double want = 0.0;
                for (std::size_t j = 0; j < n; ++j)
                    want += double(transpose ? h(j, i) : h(i, j)) * double(x(0, j));
                want /= std::sqrt(double(n));
                num += (y[i] - want) * (y[i] - want);
                den += want * want;
            }
            rec.check(std::sqrt(num / den) < 1e-6,
                      "n " + std::to_string(n) + (transpose ? " transposed" : ""));
            rec.add(std::span<const float>(y));
        }
    }
    return std::move(rec).result();
}

/// KV4 cache attention against attention in double on the dequantized cache.
family_result kv4(std::mt19937_64& gen) {
    recorder rec("kv_cache attend KV4", false, false);
    constexpr std::size_t nkv = 2, nh = 6;
    for (std::size_t d : {24u, 64u, 128u})
        for (std::size_t T : {1u, 17u, 37u})
            for (bool rot : {false, true}) {
                qift::kv_cache<> cache(
                    {.head_dim = d, .n_kv_heads = nkv, .capacity = T, .rotate_keys = rot});
                const auto k = gaussian(T, nkv * d, gen), v = gaussian(T, nkv * d, gen);
                cache.append(k, v);
                std::vector<float> kd(T * nkv * d), vd(T * nkv * d);
                for (std::size_t t = 0; t < T; ++t)
                    for (std::size_t g = 0; g < nkv; ++g) {
                        cache.read_key(t, g, std::span(&kd[(t * nkv + g) * d], d));
                        cache.read_value(t, g, std::span(&vd[(t * nkv + g) * d], d));
                    }
                const auto q = gaussian(1, nh * d, gen, 0.3f);
                std::vector<float> y(nh * d);
                cache.attend(q.row(0), nh, y);
                double num = 0.0, den = 0.0;
                for (std::size_t h = 0; h < nh; ++h) {
                    const std::size_t g = h / (nh / nkv);
                    std::vector<double> s(T);
                    double m = -1e300, z = 0.0;
                    for (std::size_t t = 0; t < T; ++t) {
                        double dot = 0.0;
                        for (std::size_t i = 0; i < d; ++i)
                            dot += double(q(0, h * d + i)) * kd[(t * nkv + g) * d + i];
                        s[t] = dot / std::sqrt(double(d));
                        m = std::max(m, s[t]);
                    }
                    for (auto& e : s) z += (e = std::exp(e - m));
                    for (std::size_t i = 0; i < d; ++i) {
                        double o = 0.0;
                        for (std::size_t t = 0; t < T; ++t)
                            o += s[t] / z * vd[(t * nkv + g) * d + i];
                        num += (y[h * d + i] - o) * (y[h * d + i] - o);
                        den += o * o;
                    }
                }
                rec.check(std::sqrt(num / den) < 1e-5, "head_dim " + std::to_string(d) + ", T " +
                                                           std::to_string(T) +
                                                           (rot ? ", rotated" : ""));
                rec.add(std::span<const float>(y));
            }
    return std::move(rec).result();
}

/// MXFP4 quantization against quantize_mxfp4_block, every rounding mode.
family_result mx_quantize(std::mt19937_64& gen) {
    recorder rec("quantize_mxfp4", true, true);
    for (std::size_t cols : {1u, 31u, 33u, 100u, 4097u})
        for (auto mode :
             {qift::mx_rounding::nearest, qift::mx_rounding::even, qift::mx_rounding::floor}) {
            const auto x = gaussian(3, cols, gen, 5.0f);
            const auto q = qift::quantize_mxfp4(x, mode);
            bool ok = true;
            std::uint8_t codes[qift::mxfp4_matrix::block_bytes];
            for (std::size_t r = 0; r < 3; ++r)
                for (std::size_t b = 0; b < q.blocks_per_row(); ++b) {
                    const std::size_t k0 = b * qift::mx_block_size;
                    const std::size_t len = std::min(qift::mx_block_size, cols - k0);
                    const std::uint8_t s =
                        qift::quantize_mxfp4_block(x.row(r).subspan(k0, len), codes, mode);
                    ok = ok && s == q.row_scales(r)[b] &&
                         std::memcmp(codes, q.row_codes(r) + b * 16, sizeof codes) == 0;
                }
            rec.check(ok, "cols " + std::to_string(cols) + " mode " + std::to_string(int(mode)));
            rec.add(std::span<const std::uint8_t>(q.row_codes(0), 3 * q.blocks_per_row() * 16));
            rec.add(std::span<const std::uint8_t>(q.row_scales(0), 3 * q.blocks_per_row()));
        }
    return std::move(rec).result();
}

/// MXFP4 × MXFP4 and MXFP4 × float GEMVs against their scalar references, within the stated
/// bounds ((blocks + 16)·ε and 2·(32 + blocks)·ε times Σ|w·x|, which bounds Σ_b |term_b|).
family_result mx_gemv(std::mt19937_64& gen) {
    recorder rec("gemv MXFP4", false, false);
    constexpr double eps = 1.0 / 16777216.0;
    for (std::size_t rows : {1u, 5u, 17u})
        for (std::size_t cols : {33u, 100u, 4097u}) {
            const auto wq = qift::quantize_mxfp4(gaussian(rows, cols, gen));
            const auto x = gaussian(1, cols, gen);
            const auto aq = qift::quantize_mxfp4(x);
            const auto w = qift::dequantize(wq), a = qift::dequantize(aq);
            const double blocks = double(wq.blocks_per_row());
            std::vector<double> ref_a(rows), mag_a(rows), ref_x(rows), mag_x(rows);
            std::vector<float> y(rows), ref(rows), yx(rows), refx(rows);
            qift::gemv_reference(wq, aq, ref);
            qift::gemv(wq, aq, y);
            qift::gemv_reference(wq, x.row(0), refx);
            qift::gemv(wq, x.row(0), yx);
            for (std::size_t r = 0; r < rows; ++r) {
                ref_a[r] = ref[r];
                ref_x[r] = refx[r];
                for (std::size_t k = 0; k < cols; ++k) {
                    mag_a[r] += std::fabs(double(w(r, k)) * double(a(0, k)));
                    mag_x[r] += std::fabs(double(w(r, k)) * double(x(0, k)));
                }
            }
            rec.check(within(y, ref_a, mag_a, (blocks + 16) * eps), "A-MXFP4 " + shape(rows, cols));
            rec.check(within(yx, ref_x, mag_x, 2 * (32 + blocks) * eps),
                      "A-float " + shape(rows, cols));
            rec.add(std::span<const float>(y));
            rec.add(std::span<const float>(yx));
        }
    return std::move(rec).result();
}

/// binary_matrix GEMVs, float (within 1e-5 of Ŵ·x in double), A8 and A4 (bit for bit against
/// the references), on matrices with 1-3 planes, element / column / complementary masks, column
/// scales and means, per-row and 64-column blocks.
void binary_gemvs(std::mt19937_64& gen, std::vector<family_result>& out) {
    // A8 / A4: bit for bit against the reference of the same target, but not across targets:
    // the float epilogue (detail::binary_accumulate, Σ α·float(dot)) is contracted into FMAs
    // where the target has them (GCC's default -ffp-contract=fast), the baseline rounds twice.
    recorder fl("binary_matrix gemv float", false, false), a8("binary_matrix gemv A8", true, false),
        a4("binary_matrix gemv A4", true, false);
    std::uniform_int_distribution<int> coin(0, 1);
    std::uniform_real_distribution<float> unit(0.01f, 1.0f);
    for (int config = 0; config < 3; ++config)
        for (std::size_t rows : {1u, 17u})
            for (std::size_t cols : {100u, 300u, 1000u}) {
                const std::size_t group = config == 1 ? 64 : 0;
                const std::size_t blocks = group ? (cols + group - 1) / group : 1;
                const std::size_t planes = std::size_t(config) + 1;
                std::vector<matrix<std::int8_t>> signs;
                std::vector<matrix<float>> scales;
                std::vector<matrix<std::uint8_t>> masks;
                for (std::size_t p = 0; p < planes; ++p) {
                    matrix<std::int8_t> s(rows, cols);
                    for (auto& v : s.flat()) v = std::int8_t(coin(gen) ? 1 : -1);
                    matrix<float> a(rows, blocks);
                    for (auto& v : a.flat()) v = unit(gen);
                    matrix<std::uint8_t> m;
                    if (config == 1) {  // an element mask and its complement (BiLLM's groups)
                        m = matrix<std::uint8_t>(rows, cols);
                        for (std::size_t i = 0; i < m.size(); ++i)
                            m.flat()[i] = p == 0 ? std::uint8_t(coin(gen))
                                                 : std::uint8_t(1 - masks[0].flat()[i]);
                        if (p == 1) s = signs[0];
                    } else if (config == 2 && p == 2) {  // a column mask
                        m = matrix<std::uint8_t>(rows, cols);
                        for (std::size_t k = 0; k < cols; ++k)
                            for (std::size_t r = 0; r < rows; ++r) m(r, k) = k % 7 == 0;
                    }
                    signs.push_back(std::move(s));
                    scales.push_back(std::move(a));
                    masks.push_back(std::move(m));
                }
                std::vector<float> col;
                matrix<float> means;
                if (config >= 1) {
                    col.resize(cols);
                    for (auto& v : col) v = 2.0f * unit(gen);
                    means = matrix<float>(rows, blocks);
                    for (auto& v : means.flat()) v = unit(gen) - 0.5f;
                }
                std::vector<qift::binary_plane_view> views;
                for (std::size_t p = 0; p < planes; ++p)
                    views.push_back({signs[p], scales[p], masks[p]});
                const qift::binary_matrix w(views, group, col, means);
                const auto x = gaussian(1, cols, gen);
                const auto d = qift::dequantize(w);
                std::vector<double> want(rows), mag(rows);
                for (std::size_t r = 0; r < rows; ++r)
                    for (std::size_t k = 0; k < cols; ++k) {
                        want[r] += double(d(r, k)) * double(x(0, k));
                        mag[r] += std::fabs(double(d(r, k)) * double(x(0, k)));
                    }
                const std::string where =
                    "config " + std::to_string(config) + " " + shape(rows, cols);
                std::vector<float> y(rows), ref(rows);
                qift::gemv_reference(w, x.row(0), ref);
                qift::gemv(w, x.row(0), y);
                fl.check(within(y, want, mag, 1e-5) && within(ref, want, mag, 1e-5), where);
                fl.add(std::span<const float>(y));
                const auto q8 = qift::quantize_int8_activations(w, x);
                qift::gemv_reference(w, q8, ref);
                qift::gemv(w, q8, y);
                a8.check(bit_equal(y, ref), where);
                a8.add(std::span<const float>(y));
                const auto q4 = qift::quantize_activations(w, x, 0.9f, qift::a4_range::full);
                qift::gemv_reference(w, q4, ref);
                qift::gemv(w, q4, y);
                a4.check(bit_equal(y, ref), where);
                a4.add(std::span<const float>(y));
            }
    out.push_back(std::move(fl).result());
    out.push_back(std::move(a8).result());
    out.push_back(std::move(a4).result());
}

}  // namespace

namespace dispatch_test {

suite_result QIFT_DISPATCH_INSTANCE(kernel_suite)(std::uint64_t seed) {
    // Serial: the results do not depend on it, and the suite then needs no thread pool (each
    // target's copy of qift has its own).
    qift::set_parallel_executor(qift::serial_executor);
    suite_result out;
    out.isa = qift::isa_name();
    // One generator per family, so that a family's inputs do not depend on the others.
    std::uint64_t stream = seed;
    const auto next = [&] { return std::mt19937_64(stream++); };
    {
        auto gen = next();
        out.families.push_back(activations(gen));
    }
    {
        auto gen = next();
        integer_products<qift::levels::mnz>("mnz", gen, out.families);
        integer_products<qift::levels::pot_mnz>("pot_mnz", gen, out.families);
        integer_products<qift::levels::standard>("int2", gen, out.families);
        integer_products<qift::levels::int4>("int4", gen, out.families);
    }
    auto g1 = next(), g2 = next(), g3 = next(), g4 = next(), g5 = next(), g6 = next();
    out.families.push_back(w2a16(g1));
    out.families.push_back(hadamard(g2));
    out.families.push_back(kv4(g3));
    out.families.push_back(mx_quantize(g4));
    out.families.push_back(mx_gemv(g5));
    binary_gemvs(g6, out.families);
    qift::set_parallel_executor(nullptr);
    return out;
}

QIFT_DISPATCH_REGISTER(kernel_suite, suite_fn);

}  // namespace dispatch_test
