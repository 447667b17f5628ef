// SPDX-License-Identifier: MIT
// GPTQ (Frantar et al., arXiv 2210.17323) for any level set and scale rule, following the
// IST-DASLab reference step by step: Hessian accumulation, dead columns, damping,
// act-order, lazy block updates, dynamic and static groups.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "core.hpp"
#include "detail/linalg.hpp"
#include "levels.hpp"
#include "scale.hpp"

namespace qift::inline QIFT_ISA {

// ---------------------------------------------------------------------------------------
// Hessian accumulation

/// Accumulates the GPTQ proxy Hessian H = (2/N)·Σ x·xᵀ [in×in] from calibration activations
/// streamed in batches, with the reference's running rescale: on a batch of t samples,
/// H ← H·N/(N+t), N ← N+t, H += (2/N)·XᵀX. Accumulated in double.
/// What counts as a sample: `add(x)` counts every token (row of x), as the GPTQ paper writes it;
/// `add(x, samples)` lets the caller count like the reference, which counts sequences (the
/// batch dimension) and not tokens. The count only scales H, which leaves GPTQ's codes unchanged
/// (damping is relative) and scales the proxy loss.
class hessian_accumulator {
  public:
    /// An empty accumulator for `in` input features. Throws qift::error when in == 0 or, before
    /// allocating, when the in×in doubles of H do not fit in std::size_t.
    explicit hessian_accumulator(std::size_t in) : in_(in) {
        detail::require(in > 0, [] { return std::string("hessian_accumulator: in is 0"); });
        (void)detail::checked_size<double>({in, in}, "hessian_accumulator: in x in");
        h_ = matrix<double>(in, in);
    }

    std::size_t size() const noexcept { return in_; }
    /// N, the samples accumulated so far.
    std::size_t samples() const noexcept { return samples_; }

    /// Adds a batch x [tokens][in] (row-major, any stride) counted as x.rows samples.
    void add(matrix_view<const float> x) { add(x, x.rows); }

    /// Adds a batch x [tokens][in] counted as `samples` samples (> 0).
    /// Throws qift::error when x.cols != in, samples == 0, or x holds a non-finite value.
    /// O(tokens·in²) flops (half of them: only the lower triangle is accumulated), parallel.
    void add(matrix_view<const float> x, std::size_t samples) {
        detail::require(x.cols == in_, [&] {
            return "hessian_accumulator::add: x has " + std::to_string(x.cols) +
                   " columns, expected in = " + std::to_string(in_);
        });
        detail::require(samples > 0,
                        [] { return std::string("hessian_accumulator::add: samples is 0"); });
        for (std::size_t t = 0; t < x.rows; ++t)
            for (std::size_t c = 0; c < x.cols; ++c)
                detail::require(std::isfinite(x(t, c)), [&] {
                    return "hessian_accumulator::add: x(" + std::to_string(t) + ", " +
                           std::to_string(c) + ") is " + std::to_string(x(t, c));
                });
        const double old_n = static_cast<double>(samples_);
        samples_ = detail::checked_add(samples_, samples, "hessian_accumulator::add: samples");
        const double n = static_cast<double>(samples_);
        if (samples_ != samples)
            for (std::size_t i = 0; i < in_; ++i)
                for (std::size_t j = 0; j <= i; ++j) h_(i, j) *= old_n / n;
        const double s = std::sqrt(2.0 / n);
        constexpr std::size_t chunk = 256, nb = detail::factor_block;
        // H += Xsᵀ·Xs as H −= (−Xsᵀ)·Xs, chunks of tokens, the lower triangle by row blocks.
        matrix<double> xs(std::min(chunk, x.rows), in_), xt(in_, std::min(chunk, x.rows));
        for (std::size_t t0 = 0; t0 < x.rows; t0 += chunk) {
            const std::size_t tc = std::min(chunk, x.rows - t0);
            for (std::size_t t = 0; t < tc; ++t)
                for (std::size_t c = 0; c < in_; ++c) xs(t, c) = s * double(x(t0 + t, c));
            for (std::size_t t = 0; t < tc; ++t)
                for (std::size_t c = 0; c < in_; ++c) xt(c, t) = -xs(t, c);
            const std::size_t blocks = (in_ + nb - 1) / nb;
            parallel_for(blocks, [&](std::size_t b, std::size_t e) {
                for (std::size_t k = b; k < e; ++k) {
                    const std::size_t i0 = detail::balanced_index(k, blocks) * nb,
                                      rows = std::min(nb, in_ - i0);
                    detail::gemm_sub<double>(
                        {&h_(i0, 0), rows, i0 + rows, in_},
                        matrix_view<const double>(&xt(i0, 0), rows, tc, xt.cols()),
                        matrix_view<const double>(xs.data(), tc, i0 + rows, in_));
                }
            });
        }
    }

    /// The symmetric H [in][in] (zero before the first batch).
    matrix<double> hessian() const {
        matrix<double> h(in_, in_);
        for (std::size_t i = 0; i < in_; ++i)
            for (std::size_t j = 0; j <= i; ++j) h(i, j) = h(j, i) = h_(i, j);
        return h;
    }

  private:
    std::size_t in_ = 0;
    std::size_t samples_ = 0;
    matrix<double> h_;  // lower triangle valid (the blocked update also writes above it)
};

// ---------------------------------------------------------------------------------------
// Solver

/// Options of gptq(). Defaults are the reference's (blocksize 128, percdamp 0.01, no act-order,
/// no groups) with GPTQ/QuaRot's clipping-grid scale search.
struct gptq_options {
    /// Columns per lazy batch update (the reference's blocksize). >= 1.
    std::size_t block_size = 128;
    /// Relative damping: H_ii += damp · mean(diag H). >= 0.
    double damp = 0.01;
    /// Process columns in order of descending diag(H) (stable for ties).
    bool act_order = false;
    /// With groups: find every group's parameters up front on the original W (dead columns
    /// zeroed) in original column order, instead of when the column reaches the group start.
    bool static_groups = false;
    /// When the damped H is not positive definite: multiply damp by 10 (from 1e-4 if it was 0)
    /// and retry, at most this many times, then throw qift::error.
    int max_retries = 5;
    /// Scale rule for each row (or group); scale.group_size > 0 enables groups of that many
    /// columns (must divide in).
    scale_options scale{};
    /// Called with (done, total) weights as the solve advances (after each block of each tile
    /// of rows); may be called from worker threads, never concurrently.
    std::function<void(std::size_t done, std::size_t total)> progress{};
};

/// What gptq() returns. Shapes for W [out][in] with G groups (G = 1 without groups).
template <level_set L>
struct gptq_result {
    /// Codes, scales (and zero-points) in the original column order: code (r, c) quantizes
    /// W(r, c). Its group layout is contiguous in original order: group_size = in without
    /// groups, scale.group_size with groups (no act-order, or static groups). With act-order and
    /// dynamic groups the groups are contiguous in processing order and no contiguous layout can
    /// hold them: `quantized` then carries per-column parameters (group_size 1, each column the
    /// parameters of its group), exact but large; the compact form is group_scales + g_idx.
    quantized_matrix<L> quantized;
    /// permutation[i] = original column processed i-th (identity without act-order).
    std::vector<std::size_t> permutation;
    /// g_idx[c] = group of original column c, indexing the columns of group_scales/group_zeros
    /// (c / group_size unless act-order with dynamic groups; all 0 without groups).
    std::vector<std::size_t> g_idx;
    /// Parameters per row and group [out][G]; group_zeros is empty for sets without zero-point.
    matrix<float> group_scales;
    matrix<float> group_zeros;
    /// The dequantized weights Q [out][in] in the original column order (the reference's Q).
    matrix<float> dequantized;
    /// Σ (w − q)² / d² over all weights, d = Hinv_ii (the reference reports half of it).
    double proxy_loss = 0.0;
    /// Relative damping finally used (opt.damp · 10^retries) and the absolute amount added to
    /// each diagonal entry.
    double damping = 0.0;
    double damping_absolute = 0.0;
    /// Cholesky failures recovered by raising the damping.
    int retries = 0;
    /// Columns with H_jj = 0 (their weights were set to 0 before quantization).
    std::size_t dead_columns = 0;
};

namespace detail {

template <class HT>
void check_gptq_inputs(matrix_view<const float> w, matrix_view<const HT> h,
                       const gptq_options& opt) {
    checked_group_size(w, 0, "gptq");
    require(h.rows == w.cols && h.cols == w.cols, [&] {
        return "gptq: hessian is " + std::to_string(h.rows) + "x" + std::to_string(h.cols) +
               ", expected in x in = " + std::to_string(w.cols) + "x" + std::to_string(w.cols);
    });
    for (std::size_t i = 0; i < h.rows; ++i)
        for (std::size_t j = 0; j < h.cols; ++j)
            require(std::isfinite(h(i, j)), [&] {
                return "gptq: hessian(" + std::to_string(i) + ", " + std::to_string(j) + ") is " +
                       std::to_string(h(i, j));
            });
    for (std::size_t i = 0; i < h.rows; ++i)
        require(h(i, i) >= 0, [&] {
            return "gptq: hessian(" + std::to_string(i) + ", " + std::to_string(i) + ") is " +
                   std::to_string(h(i, i)) + " (a Hessian has a non-negative diagonal)";
        });
    require(opt.block_size >= 1, [] { return std::string("gptq: block_size is 0"); });
    require(opt.damp >= 0.0 && std::isfinite(opt.damp),
            [&] { return "gptq: damp must be finite and >= 0, got " + std::to_string(opt.damp); });
    require(opt.max_retries >= 0, [&] {
        return "gptq: max_retries must be >= 0, got " + std::to_string(opt.max_retries);
    });
    const std::size_t g = opt.scale.group_size;
    require(g == 0 || w.cols % g == 0, [&] {
        return "gptq: scale.group_size " + std::to_string(g) +
               " does not divide in = " + std::to_string(w.cols);
    });
}

}  // namespace detail

/// GPTQ of W [out][in] (row-major, out × in as nn.Linear stores it) against the Hessian
/// H [in][in] (precondition: symmetric, as every Hessian from XᵀX is; it is read in place,
/// never copied),
/// quantizing onto level set L with per-row (or per-group) parameters from find_params<L>
/// under opt.scale. Follows the IST-DASLab reference `fasterquant` (arXiv 2210.17323):
///  1. without groups, each row's parameters come from find_params on the original row (before
///     dead columns are zeroed, as the reference calls quantizer.find_params(W) first);
///  2. dead columns (H_jj = 0): H_jj = 1 and W[:, j] = 0; static groups are found now;
///  3. act-order: columns sorted by descending diag(H) (stable);
///  4. H_ii += damp·mean(diag H); Hinv = upper Cholesky factor of H⁻¹, computed in float as
///     the reference does (it factors the layer's float32 H). Measured against a double
///     factorization on a 4096² layer (bench_gptq's problem): 0.35–0.5% of the codes differ,
///     as they do under any perturbation of that size, and ‖(W − Q)·Xᵀ‖² agrees within 0.05%
///     either way; the tests' layers give identical codes. Float halves the time and memory;
///  5. blocks of block_size columns: for each column i, q = quant(w_i), loss += (w−q)²/d²,
///     err = (w−q)/d with d = Hinv_ii, the rest of the block −= err ⊗ Hinv[i, i+1:]; after the
///     block, W[:, end:] −= Err·Hinv[block, end:] (the lazy batch update, in float as the
///     reference). Dynamic groups find parameters when a column reaches a group start, on W as
///     it stood at the start of the current block (the reference reads W, not its in-block
///     copy W1, so in-block updates are not seen when group_size is not a multiple of
///     block_size);
///  6. the permutation is undone.
/// If the damped H is not positive definite the damping is raised ×10 up to opt.max_retries
/// times (reported in the result); after that qift::error says so. Also throws qift::error for
/// empty or non-finite W, a Hessian of the wrong shape, non-finite or with a negative diagonal,
/// and bad options (block_size 0, negative damp, group_size not dividing in).
/// Rows are independent: tiles of rows run in parallel through parallel_for; the dense linear
/// algebra (2in³/3 flops for Hinv, out·in² flops of lazy updates, both in float) is blocked and
/// vectorized (detail/linalg.hpp). Scratch: Hinv and W transposed (4·in² + 4·out·in bytes,
/// huge pages where the OS offers them) besides the outputs.
template <level_set L, class HT>
requires(std::is_same_v<HT, float> || std::is_same_v<HT, double>) gptq_result<L> gptq(
    matrix_view<const float> w, matrix_view<const HT> h, const gptq_options& opt = {}) {
    using traits = level_traits<L>;
    constexpr bool affine = traits::has_zero_point;
    detail::check_gptq_inputs(w, h, opt);
    const std::size_t out = w.rows, n = w.cols, g = opt.scale.group_size;
    const bool groups = g > 0, dynamic_groups = groups && !opt.static_groups;
    const std::size_t n_groups = groups ? n / g : 1;
    scale_options sopt = opt.scale;
    sopt.group_size = 0;
    gptq_result<L> res;

    // 1. Row parameters (no groups) on the original W.
    std::vector<channel_params> row_params(groups ? 0 : out);
    if (!groups)
        parallel_for(out, [&](std::size_t b, std::size_t e) {
            for (std::size_t r = b; r < e; ++r) row_params[r] = find_params<L>(w.row(r), sopt);
        });

    // 2. Dead columns (H itself is not copied: the factorization reads it through the
    // permutation with the fixed-up diagonal).
    std::vector<double> diag(n);
    std::vector<char> dead(n, 0);
    for (std::size_t j = 0; j < n; ++j) {
        diag[j] = static_cast<double>(h(j, j));
        if (diag[j] == 0.0) dead[j] = 1, diag[j] = 1.0, ++res.dead_columns;
    }

    // Static groups, in original order, on W with dead columns zeroed.
    matrix<channel_params> static_params(opt.static_groups && groups ? out : 0, n_groups);
    if (opt.static_groups && groups)
        parallel_for(out, [&](std::size_t b, std::size_t e) {
            std::vector<float> row(n);
            for (std::size_t r = b; r < e; ++r) {
                for (std::size_t j = 0; j < n; ++j) row[j] = dead[j] ? 0.0f : w(r, j);
                for (std::size_t k = 0; k < n_groups; ++k)
                    static_params(r, k) =
                        find_params<L>(std::span<const float>(row).subspan(k * g, g), sopt);
            }
        });

    // 3. Act-order.
    std::vector<std::size_t> perm(n);
    std::iota(perm.begin(), perm.end(), std::size_t{0});
    if (opt.act_order)
        std::stable_sort(perm.begin(), perm.end(),
                         [&](std::size_t a, std::size_t b) { return diag[a] > diag[b]; });

    // 4. Damping and the upper Cholesky factor of H⁻¹ (stored transposed: ut(j, i) = Hinv(i, j)),
    // factored in float in place.
    double mean_diag = 0.0;
    for (double v : diag) mean_diag += v;
    mean_diag /= static_cast<double>(n);
    const detail::scratch<float> ut_buf(n * n);
    const matrix_view<float> ut(ut_buf.get(), n, n);
    std::vector<double> damped(n);
    double damp = opt.damp;
    for (int attempt = 0;; ++attempt) {
        const double add = damp * mean_diag;
        for (std::size_t i = 0; i < n; ++i) damped[i] = diag[perm[i]] + add;
        if (detail::inverse_cholesky_upper_transposed<float, HT>(h, perm, damped, ut)) {
            res.damping = damp;
            res.damping_absolute = add;
            res.retries = attempt;
            break;
        }
        detail::require(attempt < opt.max_retries, [&] {
            return "gptq: the Hessian is not positive definite: Cholesky failed with damp " +
                   std::to_string(opt.damp) + " and after " + std::to_string(opt.max_retries) +
                   " retries up to damp " + std::to_string(damp) + " (absolute " +
                   std::to_string(add) + ", mean diagonal " + std::to_string(mean_diag) + ")";
        });
        damp = damp > 0.0 ? damp * 10.0 : 1e-4;
    }

    // W transposed into processing order: wt(i, r) = W(r, perm[i]) (0 for dead columns);
    // columns become rows. Tiled so that both sides stream.
    const detail::scratch<float> wt_buf(n * out);
    const matrix_view<float> wt(wt_buf.get(), n, out);
    {
        constexpr std::size_t tb = 32;
        const std::size_t row_tiles = (n + tb - 1) / tb;
        parallel_for(row_tiles, [&](std::size_t b, std::size_t e) {
            for (std::size_t t = b; t < e; ++t)
                for (std::size_t r0 = 0; r0 < out; r0 += tb)
                    for (std::size_t i = t * tb; i < std::min(n, t * tb + tb); ++i) {
                        const std::size_t c = perm[i];
                        for (std::size_t r = r0; r < std::min(out, r0 + tb); ++r)
                            wt(i, r) = dead[c] ? 0.0f : w(r, c);
                    }
        });
    }

    // 5. The blocked solve, tiles of rows in parallel. Codes and dequantized values go straight
    // into the outputs (original order) after each block, through a per-tile block buffer.
    matrix<std::uint8_t> codes(out, n);
    res.dequantized = matrix<float>(out, n);
    matrix<channel_params> dyn_params(dynamic_groups ? out : 0, n_groups);
    const std::size_t threads = detail::default_thread_count();
    const std::size_t tile = std::min<std::size_t>(
        256, std::max<std::size_t>(16, ((out + threads - 1) / threads + 15) / 16 * 16));
    const std::size_t tiles = (out + tile - 1) / tile, nb = opt.block_size;
    std::vector<double> tile_loss(tiles, 0.0);
    std::atomic<std::size_t> done{0};
    std::mutex progress_mutex;
    parallel_for(tiles, [&](std::size_t tb, std::size_t te) {
        const std::size_t bmax = std::min(nb, n);
        // Rows of groups transposed at once: at most 64 Ki floats.
        const std::size_t gather_rows =
            dynamic_groups ? std::clamp<std::size_t>((std::size_t{1} << 16) / g, 1, tile) : 0;
        aligned_vector<float> w1(bmax * tile), err(bmax * tile), qblock(bmax * tile),
            gathered(gather_rows * g);
        std::vector<std::uint8_t> cblock(bmax * tile);
        std::vector<channel_params> params(tile);
        for (std::size_t t = tb; t < te; ++t) {
            const std::size_t r0 = t * tile, tw = std::min(tile, out - r0);
            if (!groups)
                for (std::size_t r = 0; r < tw; ++r) params[r] = row_params[r0 + r];
            double loss = 0.0;
            for (std::size_t i1 = 0; i1 < n; i1 += nb) {
                const std::size_t i2 = std::min(n, i1 + nb), bw = i2 - i1;
                for (std::size_t i = i1; i < i2; ++i)
                    std::copy_n(&wt(i, r0), tw, w1.data() + (i - i1) * tile);
                for (std::size_t i = i1; i < i2; ++i) {
                    if (dynamic_groups && i % g == 0) {
                        // Parameters on W as it stood at the start of this block (wt rows),
                        // each row's group made contiguous by one tiled transpose.
                        for (std::size_t rb = 0; rb < tw; rb += gather_rows) {
                            const std::size_t rows = std::min(gather_rows, tw - rb);
                            detail::transpose_copy<float, float>(
                                matrix_view<const float>(&wt(i, r0 + rb), g, rows, out),
                                matrix_view<float>(gathered.data(), rows, g));
                            for (std::size_t r = rb; r < rb + rows; ++r) {
                                params[r] = find_params<L>(
                                    std::span<const float>(gathered.data() + (r - rb) * g, g),
                                    sopt);
                                dyn_params(r0 + r, i / g) = params[r];
                            }
                        }
                    } else if (opt.static_groups && groups) {
                        for (std::size_t r = 0; r < tw; ++r)
                            params[r] = static_params(r0 + r, perm[i] / g);
                    }
                    const float d = ut(i, i);
                    float* wi = w1.data() + (i - i1) * tile;
                    float* ei = err.data() + (i - i1) * tile;
                    std::uint8_t* ci = cblock.data() + (i - i1) * tile;
                    float* qi = qblock.data() + (i - i1) * tile;
                    for (std::size_t r = 0; r < tw; ++r) {
                        const std::uint8_t c = quantize_value<L>(wi[r], params[r]);
                        const float q = dequantize_value<L>(c, params[r]);
                        const float diff = wi[r] - q;
                        ci[r] = c;
                        qi[r] = q;
                        loss += double(diff) * double(diff) / (double(d) * double(d));
                        ei[r] = diff / d;
                    }
                    for (std::size_t j = i + 1; j < i2; ++j)
                        detail::axpy_sub(w1.data() + (j - i1) * tile, ei, ut(j, i), tw);
                }
                for (std::size_t r = 0; r < tw; ++r) {
                    std::uint8_t* crow = &codes(r0 + r, 0);
                    float* qrow = &res.dequantized(r0 + r, 0);
                    for (std::size_t i = i1; i < i2; ++i) {
                        crow[perm[i]] = cblock[(i - i1) * tile + r];
                        qrow[perm[i]] = qblock[(i - i1) * tile + r];
                    }
                }
                if (i2 < n)
                    detail::gemm_sub<float>({&wt(i2, r0), n - i2, tw, out},
                                            matrix_view<const float>(&ut(i2, i1), n - i2, bw, n),
                                            matrix_view<const float>(err.data(), bw, tw, tile));
                const std::size_t now = done.fetch_add(bw * tw) + bw * tw;
                if (opt.progress) {
                    std::lock_guard lock(progress_mutex);
                    opt.progress(now, out * n);
                }
            }
            tile_loss[t] = loss;
        }
    });
    for (double l : tile_loss) res.proxy_loss += l;

    // 6. Back to the original column order.
    res.permutation = perm;
    std::vector<std::size_t> pos(n);
    for (std::size_t i = 0; i < n; ++i) pos[perm[i]] = i;
    res.g_idx.assign(n, 0);
    if (groups)
        for (std::size_t c = 0; c < n; ++c) res.g_idx[c] = (dynamic_groups ? pos[c] : c) / g;
    res.group_scales = matrix<float>(out, n_groups);
    if (affine) res.group_zeros = matrix<float>(out, n_groups);
    for (std::size_t r = 0; r < out; ++r)
        for (std::size_t k = 0; k < n_groups; ++k) {
            const channel_params p = !groups             ? row_params[r]
                                     : opt.static_groups ? static_params(r, k)
                                                         : dyn_params(r, k);
            res.group_scales(r, k) = p.scale;
            if (affine) res.group_zeros(r, k) = p.zero;
        }
    const bool per_column = dynamic_groups && opt.act_order;
    const std::size_t qgs = !groups ? n : per_column ? 1 : g;
    matrix<float> scales(out, n / qgs), zeros(affine ? out : 0, affine ? n / qgs : 0);
    for (std::size_t r = 0; r < out; ++r)
        for (std::size_t k = 0; k < n / qgs; ++k) {
            const std::size_t gi = per_column ? res.g_idx[k] : (groups ? k : 0);
            scales(r, k) = res.group_scales(r, gi);
            if (affine) zeros(r, k) = res.group_zeros(r, gi);
        }
    res.quantized = quantized_matrix<L>(std::move(codes), std::move(scales), std::move(zeros), qgs);
    return res;
}

/// gptq() with a Hessian given as a matrix<double> or matrix<float> (e.g. from
/// hessian_accumulator::hessian()).
template <level_set L, class HT>
gptq_result<L> gptq(matrix_view<const float> w, const matrix<HT>& h, const gptq_options& opt = {}) {
    return gptq<L, HT>(w, h.view(), opt);
}

}  // namespace qift
