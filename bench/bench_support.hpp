// SPDX-License-Identifier: MIT
// Pieces shared by the benchmarks: cold-cache copy counts, random packed weights, the int8×int8
// GEMV baseline and the read loop of the bandwidth roofline.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <qift/gemv.hpp>

namespace bench {

/// Copies of a `bytes`-sized operand cycled in the cold runs: at least 256 MiB in all, well
/// beyond the L2 and beyond the L3 of most machines.
inline std::size_t cold_copies(std::size_t bytes) {
    return std::max<std::size_t>(2, (std::size_t{256} << 20) / bytes + 1);
}

/// An N×K packed matrix of random codes of L (scales 0.01, zero-points 1 where L has them).
template <class L>
qift::packed_matrix<L> random_packed(std::size_t n, std::size_t k, unsigned seed) {
    std::mt19937 gen(seed);
    qift::matrix<std::uint8_t> codes(n, k);
    for (auto& c : codes.flat())
        c = static_cast<std::uint8_t>(gen() % qift::level_traits<L>::count);
    qift::matrix<float> scales(n, 1, 0.01f);
    qift::matrix<float> zeros = qift::level_traits<L>::has_zero_point
                                    ? qift::matrix<float>(n, 1, 1.0f)
                                    : qift::matrix<float>();
    return qift::packed_matrix<L>(qift::quantized_matrix<L>(codes, scales, zeros, k));
}

/// int8 × int8 GEMV baseline on rows [r0, r1): y[r] = Σ w[r][k]·a[k] in int32, w [rows][k]
/// with k a multiple of 128 (AVX-512 VNNI: |w| as unsigned bytes times a with w's sign applied;
/// scalar elsewhere).
inline void int8_gemv_rows(const std::int8_t* w, const std::int8_t* a, std::size_t k,
                           std::size_t r0, std::size_t r1, std::int32_t* y) {
    for (std::size_t r = r0; r < r1; ++r) {
        const std::int8_t* wr = w + r * k;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
        __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
        const __m512i zero = _mm512_setzero_si512();
        for (std::size_t j = 0; j < k; j += 128) {
            const __m512i w0 = _mm512_load_si512(wr + j), w1 = _mm512_load_si512(wr + j + 64);
            const __m512i a0 = _mm512_load_si512(a + j), a1 = _mm512_load_si512(a + j + 64);
            acc0 = _mm512_dpbusd_epi32(acc0, _mm512_abs_epi8(w0),
                                       _mm512_mask_sub_epi8(a0, _mm512_movepi8_mask(w0), zero, a0));
            acc1 = _mm512_dpbusd_epi32(acc1, _mm512_abs_epi8(w1),
                                       _mm512_mask_sub_epi8(a1, _mm512_movepi8_mask(w1), zero, a1));
        }
        y[r] = _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1));
#else
        std::int32_t s = 0;
        for (std::size_t j = 0; j < k; ++j) s += std::int32_t{wr[j]} * std::int32_t{a[j]};
        y[r] = s;
#endif
    }
}

/// The roofline's read: the sum of the 64-bit words [begin, end) of p (aligned; end − begin a
/// multiple of four batches), four independent vector accumulators.
inline std::uint64_t read_words(const std::uint64_t* p, std::size_t begin, std::size_t end) {
    using batch = xsimd::batch<std::uint64_t>;
    constexpr std::size_t w = batch::size;
    batch s0(0), s1(0), s2(0), s3(0);
    for (std::size_t j = begin; j + 4 * w <= end; j += 4 * w) {
        s0 += batch::load_aligned(p + j);
        s1 += batch::load_aligned(p + j + w);
        s2 += batch::load_aligned(p + j + 2 * w);
        s3 += batch::load_aligned(p + j + 3 * w);
    }
    return qift::detail::reduce_add((s0 + s1) + (s2 + s3));
}

}  // namespace bench
