// SPDX-License-Identifier: MIT
// Python bindings of gptq.hpp (GPTQ with the GIL released and a progress callback, the Hessian
// accumulator), gemv.hpp / gemm.hpp (packed_matrix and its W2A4 / W4A4 / W2A16 products) and
// kv_cache.hpp.
#include <atomic>
#include <mutex>
#include <variant>

#include <qift/bitplane.hpp>
#include <qift/gemm.hpp>
#include <qift/gemv.hpp>
#include <qift/gptq.hpp>
#include <qift/kv_cache.hpp>

#include "bindings.hpp"

namespace qift::python {

namespace {

// ---------------------------------------------------------------------------------------
// GPTQ

/// Thrown through the solver's worker threads to stop it once the Python callback failed.
struct progress_aborted {};

/// The bridge from gptq_options::progress (called from worker threads, never concurrently,
/// without the GIL) to a Python callable: it takes the GIL for the call, checks for Ctrl-C,
/// and on a Python exception remembers it and stops the solve by throwing progress_aborted
/// (every later call throws at once, so each worker stops at its next block).
class progress_bridge {
  public:
    explicit progress_bridge(py::object callback) : callback_(std::move(callback)) {}

    std::function<void(std::size_t, std::size_t)> hook() {
        if (callback_.is_none()) return {};
        return [this](std::size_t done, std::size_t total) {
            if (failed_.load()) throw progress_aborted{};
            py::gil_scoped_acquire gil;
            try {
                callback_(done, total);
                if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            } catch (py::error_already_set& e) {
                error_.emplace(std::move(e));
                failed_.store(true);
                throw progress_aborted{};
            }
        };
    }

    /// Runs solve() (without the GIL) and rethrows the callback's Python exception, if any.
    template <class Solve>
    auto run(Solve&& solve) {
        using R = decltype(solve());
        std::optional<R> result;
        {
            py::gil_scoped_release release;
            try {
                result.emplace(solve());
            } catch (const progress_aborted&) {
            }
        }
        if (error_) throw py::error_already_set(*error_);
        return std::move(*result);
    }

  private:
    py::object callback_;
    std::optional<py::error_already_set> error_;
    std::atomic<bool> failed_{false};
};

struct py_gptq_result {
    std::shared_ptr<any_quantized> quantized;
    py::array permutation, g_idx, group_scales, dequantized;
    py::object group_zeros;
    double proxy_loss = 0.0, damping = 0.0, damping_absolute = 0.0;
    int retries = 0;
    std::size_t dead_columns = 0;
};

template <level_set L>
py_gptq_result convert(gptq_result<L>&& r) {
    py_gptq_result p;
    p.permutation = to_index_array(r.permutation);
    p.g_idx = to_index_array(r.g_idx);
    p.group_scales = to_numpy(std::move(r.group_scales));
    p.group_zeros = level_traits<L>::has_zero_point ? py::object(to_numpy(std::move(r.group_zeros)))
                                                    : py::none();
    p.dequantized = to_numpy(std::move(r.dequantized));
    p.quantized = hold(std::move(r.quantized));
    p.proxy_loss = r.proxy_loss;
    p.damping = r.damping;
    p.damping_absolute = r.damping_absolute;
    p.retries = r.retries;
    p.dead_columns = r.dead_columns;
    return p;
}

py_gptq_result run_gptq(py::handle w_obj, py::handle hessian_obj, py::handle activations_obj,
                        const std::string& levels, gptq_options opt, py::object progress) {
    if (hessian_obj.is_none() == activations_obj.is_none())
        value_error(
            "qift.gptq: give exactly one of hessian= (a [in][in] Hessian) and "
            "activations= (calibration inputs [tokens][in])");
    if (!progress.is_none() && !PyCallable_Check(progress.ptr()))
        type_error("qift.gptq: progress must be callable as progress(done, total), got " +
                   py::str(py::type::handle_of(progress)).cast<std::string>());
    const auto w = float_matrix(w_obj, "qift.gptq: w");
    matrix_input<double> h_in;
    matrix<double> h_owned;
    matrix_view<const double> h;
    if (!hessian_obj.is_none()) {
        h_in = double_matrix(hessian_obj, "qift.gptq: hessian");
        h = h_in.view;
    } else {
        const auto x = float_matrix(activations_obj, "qift.gptq: activations");
        h_owned = nogil([&] {
            hessian_accumulator acc(x.view.cols);
            acc.add(x.view);
            return acc.hessian();
        });
        h = h_owned.view();
    }
    progress_bridge bridge(std::move(progress));
    opt.progress = bridge.hook();
    return with_level_set("qift.gptq", levels, [&](auto l) {
        using L = decltype(l);
        return convert(bridge.run([&] { return gptq<L, double>(w.view, h, opt); }));
    });
}

/// hessian_accumulator with a lock: add() runs without the GIL.
struct py_hessian {
    explicit py_hessian(std::size_t in) : acc(in) {}
    hessian_accumulator acc;
    mutable std::mutex mutex;
};

void bind_gptq(py::module_& m) {
    py::class_<py_gptq_result>(m, "GptqResult",
                               "What gptq returns (qift::gptq_result). Shapes for W [out][in] "
                               "with G groups (G = 1 without groups).")
        .def_readonly("quantized", &py_gptq_result::quantized,
                      "QuantizedMatrix: codes, scales (and zeros) in the original column order "
                      "(per-column parameters with act-order and dynamic groups).")
        .def_readonly("permutation", &py_gptq_result::permutation,
                      "int64 [in]: the original column processed i-th.")
        .def_readonly("g_idx", &py_gptq_result::g_idx, "int64 [in]: the group of each column.")
        .def_readonly("group_scales", &py_gptq_result::group_scales, "float32 [out][G].")
        .def_readonly("group_zeros", &py_gptq_result::group_zeros,
                      "float32 [out][G] for affine level sets, else None.")
        .def_readonly("dequantized", &py_gptq_result::dequantized, "float32 Q [out][in].")
        .def_readonly("proxy_loss", &py_gptq_result::proxy_loss)
        .def_readonly("damping", &py_gptq_result::damping)
        .def_readonly("damping_absolute", &py_gptq_result::damping_absolute)
        .def_readonly("retries", &py_gptq_result::retries)
        .def_readonly("dead_columns", &py_gptq_result::dead_columns)
        .def("__repr__", [](const py_gptq_result& r) {
            return "GptqResult(levels='" + std::string(r.quantized->levels()) + "', shape=(" +
                   std::to_string(r.quantized->rows()) + ", " +
                   std::to_string(r.quantized->cols()) +
                   "), proxy_loss=" + py::repr(py::float_(r.proxy_loss)).cast<std::string>() +
                   ", retries=" + std::to_string(r.retries) + ")";
        });

    m.def(
        "gptq",
        [](py::handle w, py::handle hessian, py::handle activations, const std::string& levels,
           std::size_t block_size, double damp, bool act_order, bool static_groups, int max_retries,
           const std::string& rule, float exponent, int grid, float grid_step, bool refine,
           int max_refine_iterations, std::size_t group_size, py::object progress) {
            gptq_options opt;
            opt.block_size = block_size;
            opt.damp = damp;
            opt.act_order = act_order;
            opt.static_groups = static_groups;
            opt.max_retries = max_retries;
            opt.scale = make_scale_options("qift.gptq", rule, exponent, grid, grid_step, refine,
                                           max_refine_iterations, group_size);
            return run_gptq(w, hessian, activations, levels, opt, std::move(progress));
        },
        py::arg("w"), py::arg("hessian") = py::none(), py::kw_only(),
        py::arg("activations") = py::none(), py::arg("levels") = "mnz", py::arg("block_size") = 128,
        py::arg("damp") = 0.01, py::arg("act_order") = false, py::arg("static_groups") = false,
        py::arg("max_retries") = 5, py::arg("rule") = "search", py::arg("exponent") = 2.4f,
        py::arg("grid") = 80, py::arg("grid_step") = 0.01f, py::arg("refine") = false,
        py::arg("max_refine_iterations") = 100, py::arg("group_size") = 0,
        py::arg("progress") = py::none(),
        "GPTQ of w [out][in] (qift::gptq) against a Hessian [in][in] (float64 read in place; "
        "float32/float16 converted exactly to float64) or calibration activations [tokens][in] "
        "(H = 2/N·XᵀX accumulated in float64). Every gptq_options field is a keyword; the scale "
        "keywords are quantize's. The solve runs without the GIL; progress(done, total) is "
        "called (with the GIL, from worker threads) after each block, and an exception it "
        "raises (or Ctrl-C seen there) stops the solve and propagates.");

    py::class_<py_hessian>(
        m, "HessianAccumulator",
        "GPTQ's proxy Hessian H = (2/N)·Σ x·xᵀ [in][in] from batches of activations, accumulated "
        "in float64 with the reference's running rescale (qift::hessian_accumulator).")
        .def(py::init<std::size_t>(), py::arg("in_features"))
        .def_property_readonly("size", [](const py_hessian& h) { return h.acc.size(); })
        .def_property_readonly("samples",
                               [](const py_hessian& h) {
                                   std::lock_guard lock(h.mutex);
                                   return h.acc.samples();
                               })
        .def(
            "add",
            [](py_hessian& h, py::handle x, std::optional<std::size_t> samples) {
                const auto in = float_matrix(x, "qift.HessianAccumulator.add: x", true);
                nogil([&] {
                    std::lock_guard lock(h.mutex);
                    if (samples)
                        h.acc.add(in.view, *samples);
                    else
                        h.acc.add(in.view);
                });
            },
            py::arg("x"), py::arg("samples") = py::none(),
            "Adds a batch x [tokens][in] (or one token), counted as `samples` samples (default: "
            "its rows). float32 rows are read in place.")
        .def(
            "hessian",
            [](const py_hessian& h) {
                return to_numpy(nogil([&] {
                    std::lock_guard lock(h.mutex);
                    return h.acc.hessian();
                }));
            },
            "The symmetric float64 H [in][in].");
}

// ---------------------------------------------------------------------------------------
// packed_matrix and its products

enum class kernel_choice { standard, reference, shift_add, bitplane };

kernel_choice parse_kernel(const std::string& fn, const std::string& s) {
    return parse_choice<kernel_choice, 4>(fn, "kernel", s,
                                          {{{"default", kernel_choice::standard},
                                            {"reference", kernel_choice::reference},
                                            {"shift_add", kernel_choice::shift_add},
                                            {"bitplane", kernel_choice::bitplane}}});
}

class any_packed {
  public:
    virtual ~any_packed() = default;
    virtual std::string_view levels() const noexcept = 0;
    virtual std::size_t rows() const noexcept = 0;
    virtual std::size_t cols() const noexcept = 0;
    virtual unsigned bits() const noexcept = 0;
    virtual bool integer() const noexcept = 0;
    virtual bool bit_linear() const noexcept = 0;
    virtual std::size_t code_bytes() const noexcept = 0;
    virtual std::size_t row_bytes() const noexcept = 0;
    virtual const std::uint8_t* code_data() const noexcept = 0;
    virtual std::span<const float> scales() const noexcept = 0;
    virtual std::span<const float> zeros() const noexcept = 0;
    virtual void product(matrix_view<const float> x, matrix_view<float> y, bool gemv,
                         kernel_choice k) const = 0;
    virtual void product(const quantized_activations& a, matrix_view<float> y, bool gemv,
                         kernel_choice k) const = 0;
};

// (no_planes: what a packed_holder keeps in place of bit planes for sets they reject.)
struct no_planes {};

template <packed_level_set L>
class packed_holder final : public any_packed {
  public:
    explicit packed_holder(const quantized_matrix<L>& q) : p_(q) {}
    std::string_view levels() const noexcept override { return py_name<L>(); }
    std::size_t rows() const noexcept override { return p_.rows(); }
    std::size_t cols() const noexcept override { return p_.cols(); }
    unsigned bits() const noexcept override { return packed_matrix<L>::bits; }
    bool integer() const noexcept override { return integer_dot_level_set<L>; }
    bool bit_linear() const noexcept override { return bit_linear_level_set<L>; }
    std::size_t code_bytes() const noexcept override { return p_.code_bytes(); }
    std::size_t row_bytes() const noexcept override { return p_.codes().row_bytes(); }
    const std::uint8_t* code_data() const noexcept override { return p_.codes().row_data(0); }
    std::span<const float> scales() const noexcept override { return p_.scales(); }
    std::span<const float> zeros() const noexcept override { return p_.zeros(); }

    // Float activations: W2A16 (kernel 'bitplane': on the bit planes, built at the first such
    // call and kept; the caller has checked bit_linear()).
    void product(matrix_view<const float> x, matrix_view<float> y, bool one,
                 kernel_choice k) const override {
        if constexpr (bit_linear_level_set<L>) {
            if (k == kernel_choice::bitplane) {
                std::call_once(planes_once_, [&] { planes_ = bitplane_matrix<L>(p_); });
                if (one)
                    gemv(planes_, std::span<const float>(x.data, x.cols),
                         std::span<float>(y.data, y.cols));
                else
                    gemm(planes_, x, y);
                return;
            }
        }
        if (one) {
            const std::span<const float> xv(x.data, x.cols);
            const std::span<float> yv(y.data, y.cols);
            if (k == kernel_choice::reference)
                gemv_reference(p_, xv, yv);
            else
                gemv(p_, xv, yv);
        } else if (k == kernel_choice::reference) {
            gemm_reference(p_, x, y);
        } else {
            gemm(p_, x, y);
        }
    }
    void product(const quantized_activations& a, matrix_view<float> y, bool one,
                 kernel_choice k) const override {
        if constexpr (integer_dot_level_set<L>) {
            const std::span<float> yv(y.data, y.cols);
            if (one) {
                if (k == kernel_choice::reference)
                    gemv_reference(p_, a, yv);
                else if (k == kernel_choice::shift_add)
                    gemv_shift_add(p_, a, yv);
                else
                    gemv(p_, a, yv);
            } else if (k == kernel_choice::reference) {
                gemm_reference(p_, a, y);
            } else {
                gemm(p_, a, y);
            }
        } else {
            (void)a, (void)y, (void)one, (void)k;
        }
    }

  private:
    packed_matrix<L> p_;
    mutable std::once_flag planes_once_;
    mutable typename bitplane_if<L, bit_linear_level_set<L>, no_planes>::type planes_;
};

std::shared_ptr<any_packed> make_packed(const any_quantized& q) {
    return with_level_set(
        "qift.PackedMatrix", q.levels(), [&](auto l) -> std::shared_ptr<any_packed> {
            using L = decltype(l);
            if constexpr (packed_level_set<L>) {
                return nogil([&] { return std::make_shared<packed_holder<L>>(unwrap<L>(q)); });
            } else {
                value_error(
                    "qift.PackedMatrix: level set '" + std::string(py_name<L>()) +
                    "' has 1-bit codes; one-bit weights are packed with qift.pack(result) of a "
                    "binarize_* result (BinaryMatrix)");
            }
        });
}

py::array packed_product(const any_packed& w, py::handle x, bool gemv_call,
                         const std::string& kernel) {
    const std::string fn = gemv_call ? "qift.PackedMatrix.gemv" : "qift.PackedMatrix.gemm";
    const kernel_choice k = parse_kernel(fn, kernel);
    if (py::isinstance<quantized_activations>(x)) {
        if (k == kernel_choice::bitplane)
            value_error(fn + ": kernel='bitplane' needs float activations (W2A16)");
        if (!w.integer())
            value_error(fn + ": level set '" + std::string(w.levels()) +
                        "' has no integer form for A4 activations; pass float activations "
                        "(W2A16) instead");
        const auto& a = x.cast<const quantized_activations&>();
        if (gemv_call && a.tokens != 1)
            value_error(fn + ": gemv takes one token, the activations hold " +
                        std::to_string(a.tokens) + " (use gemm)");
        float_output y = new_float_output(a.tokens, w.rows(), gemv_call);
        nogil([&] { w.product(a, y.view, gemv_call, k); });
        return std::move(y.array);
    }
    if (k == kernel_choice::shift_add)
        value_error(fn + ": kernel='shift_add' needs A4 activations (QuantizedActivations)");
    if (k == kernel_choice::bitplane && !w.bit_linear())
        value_error(fn + ": kernel='bitplane' needs a 2-bit level set linear in its code bits; '" +
                    std::string(w.levels()) + "' is not");
    const auto in = gemv_call ? float_vector(x, fn + ": x") : float_matrix(x, fn + ": x");
    float_output y = new_float_output(in.view.rows, w.rows(), gemv_call);
    nogil([&] { w.product(in.view, y.view, gemv_call, k); });
    return std::move(y.array);
}

void bind_packed(py::module_& m) {
    py::class_<any_packed, std::shared_ptr<any_packed>>(
        m, "PackedMatrix",
        "Weights in kernel form (qift::packed_matrix): codes packed with the level set's storage "
        "bits, one scale (and zero-point) per row. Built from a QuantizedMatrix with one group per "
        "row.")
        .def(py::init([](const std::shared_ptr<any_quantized>& q) { return make_packed(*q); }),
             py::arg("quantized"))
        .def_property_readonly("levels",
                               [](const any_packed& p) { return std::string(p.levels()); })
        .def_property_readonly("rows", &any_packed::rows)
        .def_property_readonly("cols", &any_packed::cols)
        .def_property_readonly(
            "shape", [](const any_packed& p) { return py::make_tuple(p.rows(), p.cols()); })
        .def_property_readonly("bits", &any_packed::bits)
        .def_property_readonly("integer", &any_packed::integer,
                               "True when the integer (A4) kernels apply to this level set.")
        .def_property_readonly("code_bytes", &any_packed::code_bytes)
        .def_property_readonly("scales",
                               [](py::object self) {
                                   const auto s = self.cast<const any_packed&>().scales();
                                   return readonly_view<float>(
                                       s.data(), {static_cast<py::ssize_t>(s.size())}, {4}, self);
                               })
        .def_property_readonly("zeros",
                               [](py::object self) -> py::object {
                                   const auto z = self.cast<const any_packed&>().zeros();
                                   if (z.empty()) return py::none();
                                   return readonly_view<float>(
                                       z.data(), {static_cast<py::ssize_t>(z.size())}, {4}, self);
                               })
        .def_property_readonly(
            "packed_codes",
            [](py::object self) {
                const auto& p = self.cast<const any_packed&>();
                const auto rb = static_cast<py::ssize_t>(p.row_bytes());
                return readonly_view<std::uint8_t>(
                    p.code_data(), {static_cast<py::ssize_t>(p.rows()), rb}, {rb, 1}, self);
            },
            "uint8 [rows][row_bytes] in the layout of qift.pack (read-only view).")
        .def(
            "gemv",
            [](const any_packed& w, py::handle x, const std::string& kernel) {
                return packed_product(w, x, true, kernel);
            },
            py::arg("x"), py::kw_only(), py::arg("kernel") = "default",
            "y = W·x for one token: x float [cols] (W2A16, float FMAs) or QuantizedActivations "
            "of one token (W2A4 / W4A4 integer kernels). kernel: 'default', 'reference' (the "
            "scalar oracle), 'shift_add' (integer path only) or 'bitplane' (W2A16 on bit planes, "
            "for 2-bit sets linear in the code bits: NF2, Lloyd, MNZ, ...; the planes are built "
            "at the first such call and kept). Returns float32 [rows].")
        .def(
            "gemm",
            [](const any_packed& w, py::handle x, const std::string& kernel) {
                return packed_product(w, x, false, kernel);
            },
            py::arg("x"), py::kw_only(), py::arg("kernel") = "default",
            "Y = X·Wᵀ for tokens X: float [tokens][cols] or QuantizedActivations. Returns float32 "
            "[tokens][rows].")
        .def("__repr__", [](const any_packed& p) {
            return "PackedMatrix(levels='" + std::string(p.levels()) + "', shape=(" +
                   std::to_string(p.rows()) + ", " + std::to_string(p.cols()) + "))";
        });
}

// ---------------------------------------------------------------------------------------
// kv_cache

using kv_variant = std::variant<kv_cache<levels::asymmetric_int<4>>, kv_cache<levels::int4>>;

/// A kv_cache of either policy. Every access goes through visit_kv, which holds `mutex`: calls
/// from several Python threads (running without the GIL) are serialized, never racing.
struct py_kv_cache {
    py_kv_cache(kv_variant c, std::string p) : cache(std::move(c)), policy(std::move(p)) {}
    kv_variant cache;
    std::string policy;
    mutable std::mutex mutex;
};

std::unique_ptr<py_kv_cache> make_kv(std::size_t head_dim, std::size_t n_kv_heads,
                                     std::size_t capacity, float clip, bool rotate_keys,
                                     std::uint64_t rotation_seed, const std::string& policy) {
    kv_cache_options o;
    o.head_dim = head_dim;
    o.n_kv_heads = n_kv_heads;
    o.capacity = capacity;
    o.clip = clip;
    o.rotate_keys = rotate_keys;
    o.rotation_seed = rotation_seed;
    if (policy == "asymmetric")
        return std::make_unique<py_kv_cache>(kv_variant(std::in_place_index<0>, o), policy);
    if (policy == "int4")
        return std::make_unique<py_kv_cache>(kv_variant(std::in_place_index<1>, o), policy);
    value_error("qift.KVCache: unknown policy '" + policy + "'; valid: 'asymmetric', 'int4'");
}

template <class F>
decltype(auto) visit_kv(py_kv_cache& c, F&& f) {
    std::lock_guard lock(c.mutex);
    return std::visit(std::forward<F>(f), c.cache);
}
template <class F>
decltype(auto) visit_kv(const py_kv_cache& c, F&& f) {
    std::lock_guard lock(c.mutex);
    return std::visit(std::forward<F>(f), c.cache);
}

void bind_kv(py::module_& m) {
    py::class_<py_kv_cache>(
        m, "KVCache",
        "4-bit KV cache of one attention layer (qift::kv_cache): each (token, kv head) group of "
        "head_dim values quantized with its own scale and zero ('asymmetric', the default, as "
        "QuaRot) or symmetric INT4 ('int4'); keys optionally rotated by a randomized Hadamard.")
        .def(py::init(&make_kv), py::arg("head_dim"), py::arg("n_kv_heads") = 1,
             py::arg("capacity") = 0, py::kw_only(), py::arg("clip") = 0.95f,
             py::arg("rotate_keys") = true, py::arg("rotation_seed") = 0x51f7,
             py::arg("policy") = "asymmetric")
        .def_readonly("policy", &py_kv_cache::policy)
        .def_property_readonly("size",
                               [](const py_kv_cache& c) {
                                   return visit_kv(c, [](const auto& k) { return k.size(); });
                               })
        .def("__len__",
             [](const py_kv_cache& c) {
                 return visit_kv(c, [](const auto& k) { return k.size(); });
             })
        .def_property_readonly("capacity",
                               [](const py_kv_cache& c) {
                                   return visit_kv(c, [](const auto& k) { return k.capacity(); });
                               })
        .def_property_readonly("n_kv_heads",
                               [](const py_kv_cache& c) {
                                   return visit_kv(c, [](const auto& k) { return k.n_kv_heads(); });
                               })
        .def_property_readonly("head_dim",
                               [](const py_kv_cache& c) {
                                   return visit_kv(c, [](const auto& k) { return k.head_dim(); });
                               })
        .def_property_readonly("bytes_per_group",
                               [](const py_kv_cache& c) {
                                   return visit_kv(
                                       c, [](const auto& k) { return k.bytes_per_group(); });
                               })
        .def_property_readonly("memory_bytes",
                               [](const py_kv_cache& c) {
                                   return visit_kv(c,
                                                   [](const auto& k) { return k.memory_bytes(); });
                               })
        .def(
            "append",
            [](py_kv_cache& c, py::handle k, py::handle v) {
                const auto kin = float_matrix(k, "qift.KVCache.append: k", true);
                const auto vin = float_matrix(v, "qift.KVCache.append: v", true);
                nogil([&] { visit_kv(c, [&](auto& kv) { kv.append(kin.view, vin.view); }); });
            },
            py::arg("k"), py::arg("v"),
            "Appends one token (k, v of n_kv_heads·head_dim values) or M tokens ([M][...]).")
        .def(
            "attend",
            [](const py_kv_cache& c, py::handle q, std::size_t n_heads,
               std::optional<std::size_t> length) {
                const auto qin = float_vector(q, "qift.KVCache.attend: q");
                float_output out = new_float_output(1, qin.view.cols, true);
                nogil([&] {
                    visit_kv(c, [&](const auto& kv) {
                        kv.attend(qin.view.row(0), n_heads, out.view.row(0), length);
                    });
                });
                return out.array;
            },
            py::arg("q"), py::arg("n_heads"), py::arg("length") = py::none(),
            "Decode attention of q [n_heads·head_dim] over the first `length` tokens (all by "
            "default): softmax(q·Kᵀ/√head_dim)·V per query head, from the 4-bit codes.")
        .def(
            "prefill",
            [](py_kv_cache& c, py::handle q, py::handle k, py::handle v, std::size_t n_heads) {
                const auto qin = float_matrix(q, "qift.KVCache.prefill: q");
                const auto kin = float_matrix(k, "qift.KVCache.prefill: k");
                const auto vin = float_matrix(v, "qift.KVCache.prefill: v");
                float_output out = new_float_output(qin.view.rows, qin.view.cols, false);
                nogil([&] {
                    visit_kv(c, [&](auto& kv) {
                        kv.prefill(qin.view, kin.view, vin.view, n_heads, out.view);
                    });
                });
                return out.array;
            },
            py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_heads"),
            "Causal prefill of M tokens: appends k, v [M][n_kv_heads·head_dim] and returns the "
            "attention of each q row over every token up to itself [M][n_heads·head_dim].")
        .def(
            "reserve",
            [](py_kv_cache& c, std::size_t n) { visit_kv(c, [&](auto& kv) { kv.reserve(n); }); },
            py::arg("capacity"))
        .def(
            "slide",
            [](py_kv_cache& c, std::size_t n) { visit_kv(c, [&](auto& kv) { kv.slide(n); }); },
            py::arg("count"), "Drops the oldest `count` tokens.")
        .def("clear", [](py_kv_cache& c) { visit_kv(c, [](auto& kv) { kv.clear(); }); })
        .def(
            "read_key",
            [](const py_kv_cache& c, std::size_t t, std::size_t h) {
                return visit_kv(c, [&](const auto& kv) {
                    float_output o = new_float_output(1, kv.head_dim(), true);
                    kv.read_key(t, h, o.view.row(0));
                    return o.array;
                });
            },
            py::arg("token"), py::arg("kv_head"),
            "Dequantized key of a token and kv head, in the original (unrotated) basis.")
        .def(
            "read_value",
            [](const py_kv_cache& c, std::size_t t, std::size_t h) {
                return visit_kv(c, [&](const auto& kv) {
                    float_output o = new_float_output(1, kv.head_dim(), true);
                    kv.read_value(t, h, o.view.row(0));
                    return o.array;
                });
            },
            py::arg("token"), py::arg("kv_head"))
        .def("__repr__", [](const py_kv_cache& c) {
            return visit_kv(c, [&](const auto& kv) {
                return "KVCache(head_dim=" + std::to_string(kv.head_dim()) +
                       ", n_kv_heads=" + std::to_string(kv.n_kv_heads()) +
                       ", size=" + std::to_string(kv.size()) +
                       ", capacity=" + std::to_string(kv.capacity()) + ", policy='" + c.policy +
                       "')";
            });
        });
}

}  // namespace

void bind_kernels(py::module_& m) {
    bind_gptq(m);
    bind_packed(m);
    bind_kv(m);
}

}  // namespace qift::python
