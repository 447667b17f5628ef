// SPDX-License-Identifier: MIT
// Python bindings of the methods above the kernels: MXFP4 (mx.hpp), TORQ and the other MX
// rotations (torq.hpp), smoothing (smooth.hpp) and one-bit weights (binary.hpp,
// binary_matrix.hpp).
#include <mutex>

#include <qift/binary.hpp>
#include <qift/binary_matrix.hpp>
#include <qift/mx.hpp>
#include <qift/smooth.hpp>
#include <qift/torq.hpp>

#include "bindings.hpp"

namespace qift::python {

namespace {

py::array_t<float> vector_out(std::vector<float>&& v) {
    return to_numpy(std::move(v));
}

py::array_t<double> vector_out(std::vector<double>&& v) {
    return to_numpy(std::move(v));
}

template <class T>
py::array_t<T> span_view(std::span<const T> s, py::handle owner) {
    return readonly_view<T>(s.data(), {static_cast<py::ssize_t>(s.size())},
                            {static_cast<py::ssize_t>(sizeof(T))}, owner);
}

// ---------------------------------------------------------------------------------------
// MXFP4

mx_rounding parse_rounding(const std::string& fn, const std::string& s) {
    return parse_choice<mx_rounding, 3>(fn, "rounding", s,
                                        {{{"nearest", mx_rounding::nearest},
                                          {"even", mx_rounding::even},
                                          {"floor", mx_rounding::floor}}});
}

py::dict fit_dict(const mxfp4_fit& f) {
    py::dict d;
    d["relative_mse"] = f.relative_mse;
    d["code_entropy"] = f.code_entropy;
    return d;
}

py::array mx_product(const mxfp4_matrix& w, py::handle x, bool gemv_call, bool reference) {
    const std::string fn = gemv_call ? "qift.MXFP4Matrix.gemv" : "qift.MXFP4Matrix.gemm";
    if (reference && !gemv_call) value_error(fn + ": reference=True exists for gemv only");
    if (py::isinstance<mxfp4_matrix>(x)) {
        const auto& a = x.cast<const mxfp4_matrix&>();
        float_output y = new_float_output(a.rows(), w.rows(), gemv_call);
        nogil([&] {
            if (!gemv_call)
                gemm(w, a, y.view);
            else if (reference)
                gemv_reference(w, a, y.view.row(0));
            else
                gemv(w, a, y.view.row(0));
        });
        return std::move(y.array);
    }
    const auto in = gemv_call ? float_vector(x, fn + ": x") : float_matrix(x, fn + ": x");
    float_output y = new_float_output(in.view.rows, w.rows(), gemv_call);
    nogil([&] {
        if (!gemv_call)
            gemm(w, in.view, y.view);
        else if (reference)
            gemv_reference(w, in.view.row(0), y.view.row(0));
        else
            gemv(w, in.view.row(0), y.view.row(0));
    });
    return std::move(y.array);
}

void bind_mx(py::module_& m) {
    py::class_<mxfp4_matrix, std::shared_ptr<mxfp4_matrix>>(
        m, "MXFP4Matrix",
        "A [rows][cols] matrix in MXFP4 (OCP MX v1.0): blocks of 32 E2M1 elements along each row "
        "sharing one E8M0 scale (qift::mxfp4_matrix). Made by quantize_mxfp4 or from_ggml.")
        .def_property_readonly("rows", &mxfp4_matrix::rows)
        .def_property_readonly("cols", &mxfp4_matrix::cols)
        .def_property_readonly(
            "shape", [](const mxfp4_matrix& q) { return py::make_tuple(q.rows(), q.cols()); })
        .def_property_readonly("blocks_per_row", &mxfp4_matrix::blocks_per_row)
        .def_property_readonly("padded_cols", &mxfp4_matrix::padded_cols)
        .def_property_readonly("nan_blocks", &mxfp4_matrix::nan_blocks)
        .def_property_readonly("size_bytes", &mxfp4_matrix::size_bytes)
        .def_property_readonly(
            "packed_codes",
            [](py::object self) {
                const auto& q = self.cast<const mxfp4_matrix&>();
                const auto rb = static_cast<py::ssize_t>(q.blocks_per_row() * 16);
                return readonly_view<std::uint8_t>(
                    q.row_codes(0), {static_cast<py::ssize_t>(q.rows()), rb}, {rb, 1}, self);
            },
            "uint8 [rows][blocks·16]: byte j of block b holds element j (low nibble) and j + 16 "
            "(high nibble), ggml's order (read-only view).")
        .def_property_readonly(
            "scales",
            [](py::object self) {
                const auto& q = self.cast<const mxfp4_matrix&>();
                const auto b = static_cast<py::ssize_t>(q.blocks_per_row());
                return readonly_view<std::uint8_t>(
                    q.row_scales(0), {static_cast<py::ssize_t>(q.rows()), b}, {b, 1}, self);
            },
            "uint8 E8M0 scale codes [rows][blocks] (e + 127 for 2^e; 255 marks a NaN block).")
        .def(
            "codes",
            [](const mxfp4_matrix& q) {
                py::array_t<std::uint8_t> out(
                    {static_cast<py::ssize_t>(q.rows()), static_cast<py::ssize_t>(q.cols())});
                auto* d = out.mutable_data();
                for (std::size_t r = 0; r < q.rows(); ++r)
                    for (std::size_t k = 0; k < q.cols(); ++k) d[r * q.cols() + k] = q.code(r, k);
                return out;
            },
            "The E2M1 code of every element, uint8 [rows][cols] (indexes qift.levels('e2m1')).")
        .def(
            "dequantize", [](const mxfp4_matrix& q) { return to_numpy(qift::dequantize(q)); },
            "float32 [rows][cols]; NaN blocks read as NaN.")
        .def(
            "to_ggml", [](const mxfp4_matrix& q) { return to_numpy(to_ggml_mxfp4(q)); },
            "ggml block_mxfp4 bytes (17 per block: scale byte, 16 code bytes), uint8 1-D.")
        .def_static(
            "from_ggml",
            [](py::handle bytes, std::size_t rows, std::size_t cols) {
                py::array a = as_array(bytes, "qift.MXFP4Matrix.from_ggml: data");
                if (!py::array_t<std::uint8_t>::check_(a))
                    type_error(
                        "qift.MXFP4Matrix.from_ggml: data must be a uint8 array, got "
                        "dtype " +
                        dtype_name(a));
                a = fresh_copy<std::uint8_t>(a);
                return std::make_shared<mxfp4_matrix>(from_ggml_mxfp4(
                    std::span<const std::uint8_t>(static_cast<const std::uint8_t*>(a.data()),
                                                  static_cast<std::size_t>(a.size())),
                    rows, cols));
            },
            py::arg("data"), py::arg("rows"), py::arg("cols"))
        .def(
            "gemv",
            [](const mxfp4_matrix& w, py::handle x, bool reference) {
                return mx_product(w, x, true, reference);
            },
            py::arg("x"), py::kw_only(), py::arg("reference") = false,
            "y = W·x for one token: x float [cols] (MXFP4 × float) or an MXFP4Matrix of one row "
            "(MXFP4 × MXFP4, integer block dots). reference=True runs the scalar oracle.")
        .def(
            "gemm",
            [](const mxfp4_matrix& w, py::handle x) { return mx_product(w, x, false, false); },
            py::arg("x"), "Y = X·Wᵀ for float X [tokens][cols] or an MXFP4Matrix of tokens.")
        .def("__repr__", [](const mxfp4_matrix& q) {
            return "MXFP4Matrix(shape=(" + std::to_string(q.rows()) + ", " +
                   std::to_string(q.cols()) + "), nan_blocks=" + std::to_string(q.nan_blocks()) +
                   ")";
        });

    m.def(
        "quantize_mxfp4",
        [](py::handle x, const std::string& rounding) {
            const auto in = float_matrix(x, "qift.quantize_mxfp4: x", true);
            const mx_rounding r = parse_rounding("qift.quantize_mxfp4", rounding);
            return std::make_shared<mxfp4_matrix>(
                nogil([&] { return quantize_mxfp4(in.view, r); }));
        },
        py::arg("x"), py::arg("rounding") = "nearest",
        "MXFP4 quantization of x [rows][cols] (or one row), blocks of 32 along each row, bit-exact "
        "with microsoft/microxcaling. rounding: 'nearest' (ties away), 'even' or 'floor'. "
        "Non-finite values make NaN blocks (never an error).");
    m.def(
        "mxfp4_quality",
        [](py::handle x) {
            const auto in = float_matrix(x, "qift.mxfp4_quality: x", true);
            return fit_dict(nogil([&] { return mxfp4_quality(in.view); }));
        },
        py::arg("x"),
        "{'relative_mse', 'code_entropy'} of MXFP4-quantizing x (entropy of the 8 E2M1 "
        "magnitude codes, in bits).");
}

// ---------------------------------------------------------------------------------------
// TORQ and the other MX rotations

mx_rotation_method parse_method(const std::string& fn, const std::string& s) {
    const auto m = parse_mx_rotation(s);
    if (!m) {
        std::string valid;
        for (auto k : all_mx_rotation_methods)
            valid += (valid.empty() ? "'" : ", '") + std::string(to_string(k)) + "'";
        value_error(fn + ": unknown method '" + s + "'; valid: " + valid);
    }
    return *m;
}

py::dict report_dict(const torq_fit_report& r) {
    py::dict d;
    d["sample_blocks"] = r.sample_blocks;
    d["steps"] = r.steps;
    d["accepted"] = r.accepted;
    d["identity"] = fit_dict(r.identity);
    d["start"] = fit_dict(r.start);
    d["best_mse"] = fit_dict(r.best_mse);
    d["best_entropy"] = fit_dict(r.best_entropy);
    d["selected"] = fit_dict(r.selected);
    d["selected_identity"] = r.selected_identity;
    return d;
}

void bind_torq(py::module_& m) {
    m.def(
        "mx_rotation_methods",
        [] {
            std::vector<std::string> v;
            for (auto k : all_mx_rotation_methods) v.emplace_back(to_string(k));
            return v;
        },
        "Names of the MX rotation methods (MXRotation.fit).");

    py::class_<mx_rotation>(m, "MXRotation",
                            "An orthogonal Q for MXFP4 activations, x <- x·Q (qift::mx_rotation): "
                            "none, hadamard, block-hadamard, perq, torq-inter, torq-intra, torq.")
        .def_static(
            "fit",
            [](const std::string& method, py::handle x, std::uint64_t seed, std::size_t iterations,
               double step, double temperature, std::size_t max_blocks, const std::string& select,
               const std::string& objective) {
                torq_options o;
                o.seed = seed;
                o.iterations = iterations;
                o.step = step;
                o.temperature = temperature;
                o.max_blocks = max_blocks;
                o.select = parse_choice<torq_selection, 2>(
                    "qift.MXRotation.fit", "select", select,
                    {{{"relative_mse", torq_selection::relative_mse},
                      {"code_entropy", torq_selection::code_entropy}}});
                o.objective = parse_choice<torq_objective, 2>(
                    "qift.MXRotation.fit", "objective", objective,
                    {{{"code_entropy", torq_objective::code_entropy},
                      {"relative_mse", torq_objective::relative_mse}}});
                const mx_rotation_method k = parse_method("qift.MXRotation.fit", method);
                const auto in = float_matrix(x, "qift.MXRotation.fit: x");
                return nogil([&] { return mx_rotation::fit(k, in.view, o); });
            },
            py::arg("method"), py::arg("x"), py::kw_only(), py::arg("seed") = 1,
            py::arg("iterations") = 48, py::arg("step") = 0.1, py::arg("temperature") = 0.1,
            py::arg("max_blocks") = 8192, py::arg("select") = "relative_mse",
            py::arg("objective") = "code_entropy",
            "Fits `method` to calibration activations x [tokens][d] (d a multiple of 32); the "
            "keywords are torq_options'.")
        .def_static(
            "fixed",
            [](const std::string& method, std::size_t d, std::uint64_t seed) {
                torq_options o;
                o.seed = seed;
                return mx_rotation::fixed(parse_method("qift.MXRotation.fixed", method), d, o);
            },
            py::arg("method"), py::arg("d"), py::kw_only(), py::arg("seed") = 1,
            "The data-free methods (none, hadamard, block-hadamard) for width d.")
        .def_property_readonly(
            "method", [](const mx_rotation& r) { return std::string(to_string(r.method())); })
        .def_property_readonly("size", &mx_rotation::size)
        .def_property_readonly(
            "permutation",
            [](const mx_rotation& r) {
                const auto p = r.permutation();
                return to_numpy(std::vector<std::int64_t>(p.begin(), p.end()));
            },
            "int64 [d]: new position p holds old channel permutation[p] (empty: none).")
        .def_property_readonly(
            "givens",
            [](const mx_rotation& r) {
                std::vector<py::tuple> v;
                for (const auto& g : r.givens()) v.push_back(py::make_tuple(g.i, g.j, g.c, g.s));
                return v;
            },
            "The inter stage's plane rotations (i, j, c, s), in the order applied.")
        .def_property_readonly(
            "block_matrix",
            [](const mx_rotation& r) -> py::object {
                const auto b = r.block_matrix();
                if (!b) return py::none();
                return py::array_t<float>({32, 32}, b->data());
            },
            "The 32×32 block matrix R applied to every block (float32), or None.")
        .def_property_readonly("report",
                               [](const mx_rotation& r) { return report_dict(r.report()); })
        .def("online_flops_per_token", &mx_rotation::online_flops_per_token)
        .def("to_matrix", [](const mx_rotation& r) { return to_numpy(r.to_matrix()); })
        .def(
            "apply",
            [](const mx_rotation& r, py::handle x, bool inplace) {
                return transform_rows(x, "qift.MXRotation.apply: x", inplace,
                                      [&](matrix_view<float> v) { r.rotate_rows(v); });
            },
            py::arg("x"), py::kw_only(), py::arg("inplace") = false,
            "x·Q for a vector or every row of x [tokens][d] (also folds Q into W [out][d]).")
        .def("__repr__", [](const mx_rotation& r) {
            return "MXRotation(method='" + std::string(to_string(r.method())) +
                   "', size=" + std::to_string(r.size()) + ")";
        });
}

// ---------------------------------------------------------------------------------------
// Smoothing

weight_statistic parse_stat(const std::string& fn, const std::string& s) {
    return parse_choice<weight_statistic, 2>(
        fn, "weight statistic", s,
        {{{"abs_max", weight_statistic::abs_max}, {"signed_max", weight_statistic::signed_max}}});
}

/// A float64 list argument kept in double (quantile and alpha grids).
std::vector<double> double_list(py::handle obj, const std::string& where) {
    py::array a = as_array(obj, where);
    require_float_dtype(a, where);
    a = fresh_copy<double>(a);
    const auto* d = static_cast<const double*>(a.data());
    return std::vector<double>(d, d + a.size());
}

class py_sketch {
  public:
    py_sketch(std::size_t channels, double eps, double lo, double hi) : s_(channels, eps, lo, hi) {}
    channel_quantile_sketch s_;
    mutable std::mutex mutex_;
};

class any_smooth_layer {
  public:
    virtual ~any_smooth_layer() = default;
    virtual std::string_view levels() const noexcept = 0;
    virtual std::size_t tokens() const noexcept = 0;
    virtual std::size_t channels() const noexcept = 0;
    virtual std::size_t outputs() const noexcept = 0;
    virtual double reference_energy() const noexcept = 0;
    virtual double error(std::span<const float> s) const = 0;
    virtual double error_and_gradient(std::span<const float> s, std::span<double> grad,
                                      std::span<const std::size_t> subset,
                                      ste_scales mode) const = 0;
    virtual smooth_search_result search(const smooth_search_options& o) const = 0;
    virtual smooth_training_result train(std::span<const float> s0,
                                         matrix_view<const float> heldout,
                                         const smooth_training_options& o) const = 0;
    py::object x_keep, w_keep;  // the arrays the layer views
    mutable std::mutex mutex_;  // smooth_layer's const members share a workspace
};

template <level_set L>
class smooth_holder final : public any_smooth_layer {
  public:
    explicit smooth_holder(smooth_layer<L> layer) : layer_(std::move(layer)) {}
    std::string_view levels() const noexcept override { return py_name<L>(); }
    std::size_t tokens() const noexcept override { return layer_.tokens(); }
    std::size_t channels() const noexcept override { return layer_.channels(); }
    std::size_t outputs() const noexcept override { return layer_.outputs(); }
    double reference_energy() const noexcept override { return layer_.reference_energy(); }
    double error(std::span<const float> s) const override { return layer_.error(s); }
    double error_and_gradient(std::span<const float> s, std::span<double> grad,
                              std::span<const std::size_t> subset, ste_scales mode) const override {
        return subset.empty() ? layer_.error_and_gradient(s, grad, mode)
                              : layer_.error_and_gradient(s, grad, subset, mode);
    }
    smooth_search_result search(const smooth_search_options& o) const override {
        return smooth_search(layer_, o);
    }
    smooth_training_result train(std::span<const float> s0, matrix_view<const float> heldout,
                                 const smooth_training_options& o) const override {
        return train_smooth_scales(layer_, s0, heldout, o);
    }

  private:
    smooth_layer<L> layer_;
};

struct smooth_quantizer_args {
    bool activations = true;
    float activation_clip = 1.0f;
    std::string activation_range = "symmetric";
    bool weights = true;
    std::optional<std::string> weight_rule;
    float weight_exponent = 2.4f;
    int weight_grid = 80;
    float weight_grid_step = 0.01f;
    bool weight_refine = false;
    std::size_t weight_group_size = 0;
};

std::shared_ptr<any_smooth_layer> make_smooth_layer(py::handle x, py::handle w, py::handle rot,
                                                    const std::string& levels,
                                                    const smooth_quantizer_args& qa) {
    const std::string fn = "qift.SmoothLayer";
    const auto xin = float_matrix(x, fn + ": x");
    const auto win = float_matrix(w, fn + ": w");
    std::optional<rotation> h;
    std::optional<std::uint64_t> seed;
    if (py::isinstance<rotation>(rot))
        h = rot.cast<rotation>();
    else if (py::isinstance<py::int_>(rot))
        seed = rot.cast<std::uint64_t>();
    else if (!rot.is_none())
        type_error(fn + ": rotation must be None, a seed (int) or a qift.Rotation, got " +
                   py::str(py::type::handle_of(rot)).cast<std::string>());
    const a4_range range = parse_a4_range(fn, qa.activation_range);
    auto holder =
        with_level_set<smooth_levels>(fn, levels, [&](auto l) -> std::shared_ptr<any_smooth_layer> {
            using L = decltype(l);
            smooth_quantizers<L> q;
            q.activations = qa.activations;
            q.activation_clip = qa.activation_clip;
            q.activation_range = range;
            q.weights = qa.weights;
            scale_options so = make_scale_options(
                fn, qa.weight_rule.value_or("search"), qa.weight_exponent, qa.weight_grid,
                qa.weight_grid_step, qa.weight_refine, 100, qa.weight_group_size);
            if (!qa.weight_rule) so.rule = default_smooth_weight_scale<L>().rule;
            q.weight_scale = so;
            return nogil([&]() -> std::shared_ptr<any_smooth_layer> {
                if (seed)
                    return std::make_shared<smooth_holder<L>>(
                        smooth_layer<L>(xin.view, win.view, *seed, q));
                return std::make_shared<smooth_holder<L>>(
                    smooth_layer<L>(xin.view, win.view, h, q));
            });
        });
    holder->x_keep = xin.keep;
    holder->w_keep = win.keep;
    return holder;
}

py::dict search_dict(smooth_search_result&& r) {
    py::dict d;
    d["alpha"] = r.alpha;
    d["quantile"] = r.quantile;
    d["scales"] = vector_out(std::move(r.scales));
    d["error"] = r.error;
    d["rotation_error"] = r.rotation_error;
    d["alphas"] = vector_out(std::move(r.alphas));
    d["quantiles"] = vector_out(std::move(r.quantiles));
    d["errors"] = to_numpy(std::move(r.errors));
    return d;
}

py::dict training_dict(smooth_training_result&& r) {
    py::dict d;
    d["scales"] = vector_out(std::move(r.scales));
    d["delta"] = vector_out(std::move(r.delta));
    d["loss"] = vector_out(std::move(r.loss));
    d["best_step"] = r.best_step;
    d["initial_error"] = r.initial_error;
    d["error"] = r.error;
    d["heldout_initial_error"] = r.heldout_initial_error;
    d["heldout_error"] = r.heldout_error;
    return d;
}

ste_scales parse_ste(const std::string& fn, const std::string& s) {
    return parse_choice<ste_scales, 2>(
        fn, "scales mode", s,
        {{{"differentiated", ste_scales::differentiated}, {"constant", ste_scales::constant}}});
}

void bind_smooth(py::module_& m) {
    m.attr("default_smooth_rotation_seed") = default_smooth_rotation_seed;
    m.attr("smooth_level_sets") = names_of(smooth_levels{});
    m.def(
        "channel_absmax",
        [](py::handle x) {
            const auto in = float_matrix(x, "qift.channel_absmax: x");
            return vector_out(nogil([&] { return channel_absmax(in.view); }));
        },
        py::arg("x"), "max_t |x[t, j]| per channel of x [tokens][n] (float32 [n]).");
    m.def(
        "channel_quantiles",
        [](py::handle x, py::handle qs) {
            const auto in = float_matrix(x, "qift.channel_quantiles: x");
            const auto q = double_list(qs, "qift.channel_quantiles: qs");
            return to_numpy(nogil([&] { return channel_quantiles(in.view, q); }));
        },
        py::arg("x"), py::arg("qs"),
        "Exact per-channel quantiles of |x| over tokens (numpy's 'linear' method): float32 "
        "[len(qs)][n].");
    m.def(
        "channel_quantile",
        [](py::handle x, double q) {
            const auto in = float_matrix(x, "qift.channel_quantile: x");
            return vector_out(nogil([&] { return channel_quantile(in.view, q); }));
        },
        py::arg("x"), py::arg("q"));

    py::class_<py_sketch, std::shared_ptr<py_sketch>>(
        m, "ChannelQuantileSketch",
        "Streaming per-channel quantiles of |x| in bounded memory (qift::channel_quantile_sketch)"
        ": log buckets of relative width relative_error over [min_value, max_value].")
        .def(py::init<std::size_t, double, double, double>(), py::arg("channels"),
             py::arg("relative_error") = 0.01, py::arg("min_value") = 1e-6,
             py::arg("max_value") = 1e6)
        .def_property_readonly("channels", [](const py_sketch& s) { return s.s_.channels(); })
        .def_property_readonly("tokens", [](const py_sketch& s) { return s.s_.tokens(); })
        .def_property_readonly("buckets", [](const py_sketch& s) { return s.s_.buckets(); })
        .def(
            "add",
            [](py_sketch& s, py::handle x) {
                const auto in = float_matrix(x, "qift.ChannelQuantileSketch.add: x", true);
                nogil([&] {
                    std::lock_guard lock(s.mutex_);
                    s.s_.add(in.view);
                });
            },
            py::arg("x"), "Adds rows [tokens][channels].")
        .def(
            "quantiles",
            [](const py_sketch& s, py::handle qs) {
                const auto q = double_list(qs, "qift.ChannelQuantileSketch.quantiles: qs");
                std::lock_guard lock(s.mutex_);
                return to_numpy(s.s_.quantiles(q));
            },
            py::arg("qs"))
        .def(
            "quantile",
            [](const py_sketch& s, double q) {
                std::lock_guard lock(s.mutex_);
                return vector_out(s.s_.quantile(q));
            },
            py::arg("q"));

    m.def(
        "weight_channel_max",
        [](py::handle w, const std::string& stat) {
            const auto in = float_matrix(w, "qift.weight_channel_max: w");
            return vector_out(
                weight_channel_max(in.view, parse_stat("qift.weight_channel_max", stat)));
        },
        py::arg("w"), py::arg("stat") = "abs_max",
        "Per-input-channel weight statistic of W [out][in]: 'abs_max' or 'signed_max'.");
    m.def(
        "smooth_scales",
        [](py::handle a, py::handle w, double alpha) {
            const auto av = float_vector(a, "qift.smooth_scales: a");
            const auto wv = float_vector(w, "qift.smooth_scales: w");
            return vector_out(smooth_scales(av.view.row(0), wv.view.row(0), alpha));
        },
        py::arg("a"), py::arg("w"), py::arg("alpha"),
        "s_j = max(a_j^α / w_j^(1−α), 1e-5), computed in double.");
    m.def(
        "smoothrot_scales",
        [](py::handle a, py::handle w, double alpha, const std::string& stat) {
            const auto av = float_vector(a, "qift.smoothrot_scales: a");
            const auto wm = float_matrix(w, "qift.smoothrot_scales: w");
            return vector_out(smoothrot_scales(av.view.row(0), wm.view, alpha,
                                               parse_stat("qift.smoothrot_scales", stat)));
        },
        py::arg("a"), py::arg("w"), py::arg("alpha"), py::arg("stat") = "abs_max",
        "SmoothRot's scales for W [out][in] from activation statistics a [in].");
    m.def(
        "smoothrot_quantile_scales",
        [](py::handle x, py::handle w, double alpha, double q, const std::string& stat) {
            const auto xm = float_matrix(x, "qift.smoothrot_quantile_scales: x");
            const auto wm = float_matrix(w, "qift.smoothrot_quantile_scales: w");
            const weight_statistic st = parse_stat("qift.smoothrot_quantile_scales", stat);
            return vector_out(
                nogil([&] { return smoothrot_quantile_scales(xm.view, wm.view, alpha, q, st); }));
        },
        py::arg("x"), py::arg("w"), py::arg("alpha"), py::arg("q"), py::arg("stat") = "abs_max");
    m.def(
        "smooth_activations",
        [](py::handle x, py::handle s) {
            const auto xm = float_matrix(x, "qift.smooth_activations: x");
            const auto sv = float_vector(s, "qift.smooth_activations: s");
            return to_numpy(smooth_activations(xm.view, sv.view.row(0)));
        },
        py::arg("x"), py::arg("s"), "x / s per channel.");
    m.def(
        "smooth_weights",
        [](py::handle w, py::handle s) {
            const auto wm = float_matrix(w, "qift.smooth_weights: w");
            const auto sv = float_vector(s, "qift.smooth_weights: s");
            return to_numpy(smooth_weights(wm.view, sv.view.row(0)));
        },
        py::arg("w"), py::arg("s"), "W·diag(s).");

    py::class_<any_smooth_layer, std::shared_ptr<any_smooth_layer>>(
        m, "SmoothLayer",
        "One linear layer under smoothing and rotation (qift::smooth_layer): E(s) = ‖X·Wᵀ − "
        "Q_a(X/s·H)·Q_w(W·diag(s)·H)ᵀ‖². Keeps references to x and w (float32 arrays with "
        "contiguous rows are not copied).")
        .def(py::init([](py::handle x, py::handle w, py::handle rot, const std::string& levels,
                         bool activations, float activation_clip,
                         const std::string& activation_range, bool weights,
                         std::optional<std::string> weight_rule, float weight_exponent,
                         int weight_grid, float weight_grid_step, bool weight_refine,
                         std::size_t weight_group_size) {
                 smooth_quantizer_args qa{activations,      activation_clip,  activation_range,
                                          weights,          weight_rule,      weight_exponent,
                                          weight_grid,      weight_grid_step, weight_refine,
                                          weight_group_size};
                 return make_smooth_layer(x, w, rot, levels, qa);
             }),
             py::arg("x"), py::arg("w"), py::kw_only(),
             py::arg("rotation") = default_smooth_rotation_seed, py::arg("levels") = "int4",
             py::arg("activations") = true, py::arg("activation_clip") = 1.0f,
             py::arg("activation_range") = "symmetric", py::arg("weights") = true,
             py::arg("weight_rule") = py::none(), py::arg("weight_exponent") = 2.4f,
             py::arg("weight_grid") = 80, py::arg("weight_grid_step") = 0.01f,
             py::arg("weight_refine") = false, py::arg("weight_group_size") = 0,
             "x [tokens][n] calibration inputs, w [out][n]; rotation: a seed (Rotation.for_size), "
             "a qift.Rotation, or None; levels: one of smooth_level_sets; weight_rule None means "
             "the level set's default (max with a zero level, search otherwise).")
        .def_property_readonly("levels",
                               [](const any_smooth_layer& l) { return std::string(l.levels()); })
        .def_property_readonly("tokens", &any_smooth_layer::tokens)
        .def_property_readonly("channels", &any_smooth_layer::channels)
        .def_property_readonly("outputs", &any_smooth_layer::outputs)
        .def_property_readonly("reference_energy", &any_smooth_layer::reference_energy)
        .def(
            "error",
            [](const any_smooth_layer& l, py::handle s) {
                const auto sv = float_vector(s, "qift.SmoothLayer.error: s");
                return nogil([&] {
                    std::lock_guard lock(l.mutex_);
                    return l.error(sv.view.row(0));
                });
            },
            py::arg("s"), "E(s) for scales s [n].")
        .def(
            "error_and_gradient",
            [](const any_smooth_layer& l, py::handle s, const std::string& mode,
               std::optional<std::vector<std::size_t>> subset) {
                const auto sv = float_vector(s, "qift.SmoothLayer.error_and_gradient: s");
                const ste_scales md = parse_ste("qift.SmoothLayer.error_and_gradient", mode);
                std::vector<double> grad(l.channels());
                const std::vector<std::size_t> sub = subset.value_or(std::vector<std::size_t>{});
                if (subset && sub.empty())
                    value_error("qift.SmoothLayer.error_and_gradient: the token subset is empty");
                const double e = nogil([&] {
                    std::lock_guard lock(l.mutex_);
                    return l.error_and_gradient(sv.view.row(0), grad, sub, md);
                });
                return py::make_tuple(e, vector_out(std::move(grad)));
            },
            py::arg("s"), py::kw_only(), py::arg("mode") = "differentiated",
            py::arg("subset") = py::none(),
            "(E(s), ∂E/∂ln s [n] float64), the straight-through gradient; subset: token indices "
            "(strictly increasing) for a minibatch gradient.")
        .def(
            "search",
            [](const any_smooth_layer& l, py::object alphas, py::object quantiles,
               const std::string& stat, std::shared_ptr<py_sketch> sketch) {
                smooth_search_options o;
                if (!alphas.is_none())
                    o.alphas = double_list(alphas, "qift.SmoothLayer.search: alphas");
                if (!quantiles.is_none())
                    o.quantiles = double_list(quantiles, "qift.SmoothLayer.search: quantiles");
                o.weight_stat = parse_stat("qift.SmoothLayer.search", stat);
                std::unique_lock<std::mutex> sketch_lock;
                if (sketch) o.sketch = &sketch->s_;
                auto r = nogil([&] {
                    std::lock_guard lock(l.mutex_);
                    if (sketch) sketch_lock = std::unique_lock<std::mutex>(sketch->mutex_);
                    return l.search(o);
                });
                return search_dict(std::move(r));
            },
            py::arg("alphas") = py::none(), py::arg("quantiles") = py::none(),
            py::arg("weight_stat") = "abs_max", py::arg("sketch") = nullptr,
            "smooth_search: the grid over α (default 0, 0.05, ..., 1) and quantile levels "
            "(default 0.9 ... 1) minimizing E; a dict with alpha, quantile, scales, error, "
            "rotation_error and the errors grid.")
        .def(
            "train",
            [](const any_smooth_layer& l, py::handle s0, py::object heldout_x, int steps,
               double learning_rate, double beta1, double beta2, double epsilon, double bound,
               std::size_t batch_tokens, std::uint64_t seed, const std::string& scales) {
                const auto sv = float_vector(s0, "qift.SmoothLayer.train: s0");
                matrix_input<float> held;
                if (!heldout_x.is_none())
                    held = float_matrix(heldout_x, "qift.SmoothLayer.train: heldout_x");
                smooth_training_options o;
                o.steps = steps;
                o.learning_rate = learning_rate;
                o.beta1 = beta1;
                o.beta2 = beta2;
                o.epsilon = epsilon;
                o.bound = bound;
                o.batch_tokens = batch_tokens;
                o.seed = seed;
                o.scales = parse_ste("qift.SmoothLayer.train", scales);
                auto r = nogil([&] {
                    std::lock_guard lock(l.mutex_);
                    return l.train(sv.view.row(0), held.view, o);
                });
                return training_dict(std::move(r));
            },
            py::arg("s0"), py::arg("heldout_x") = py::none(), py::kw_only(), py::arg("steps") = 100,
            py::arg("learning_rate") = 0.01, py::arg("beta1") = 0.9, py::arg("beta2") = 0.999,
            py::arg("epsilon") = 1e-8, py::arg("bound") = 1.0, py::arg("batch_tokens") = 0,
            py::arg("seed") = 0, py::arg("scales") = "differentiated",
            "train_smooth_scales: Adam on ln s from s0 with the straight-through gradient; a dict "
            "with scales, delta, loss, best_step, errors (held-out ones when heldout_x is given).")
        .def("__repr__", [](const any_smooth_layer& l) {
            return "SmoothLayer(levels='" + std::string(l.levels()) +
                   "', tokens=" + std::to_string(l.tokens()) +
                   ", channels=" + std::to_string(l.channels()) +
                   ", outputs=" + std::to_string(l.outputs()) + ")";
        });
}

// ---------------------------------------------------------------------------------------
// One-bit weights

py::dict storage_dict(const binary_storage& s) {
    py::dict d;
    d["weights"] = s.weights;
    d["sign_bits"] = s.sign_bits;
    d["residual_sign_bits"] = s.residual_sign_bits;
    d["bitmap_bits"] = s.bitmap_bits;
    d["half_values"] = s.half_values;
    d["total_bits"] = s.total_bits();
    d["bits_per_weight"] = s.bits_per_weight();
    return d;
}

template <class R, class T>
auto matrix_member(matrix<T> R::*field) {
    return [field](py::object self) { return readonly_view(self.cast<const R&>().*field, self); };
}
template <class R, class T>
auto vector_member(std::vector<T> R::*field) {
    return [field](py::object self) {
        const auto& v = self.cast<const R&>().*field;
        return span_view<T>(std::span<const T>(v), self);
    };
}

amp_mode parse_amp(const std::string& fn, const std::string& s) {
    return parse_choice<amp_mode, 3>(fn, "amp mode", s,
                                     {{{"off", amp_mode::off},
                                       {"gradient_sign", amp_mode::gradient_sign},
                                       {"exact", amp_mode::exact}}});
}

using binary_ptr = std::shared_ptr<binary_matrix>;

py::array binary_product(const binary_matrix& w, py::handle x, bool gemv_call, bool reference) {
    const std::string fn = gemv_call ? "qift.BinaryMatrix.gemv" : "qift.BinaryMatrix.gemm";
    auto run = [&](const auto& a, std::size_t tokens) {
        if (gemv_call && tokens != 1)
            value_error(fn + ": gemv takes one token, the activations hold " +
                        std::to_string(tokens) + " (use gemm)");
        float_output y = new_float_output(tokens, w.rows(), gemv_call);
        nogil([&] {
            constexpr bool floats =
                std::is_same_v<std::decay_t<decltype(a)>, matrix_view<const float>>;
            if constexpr (!floats) {
                if (gemv_call) {
                    if (reference)
                        gemv_reference(w, a, y.view.row(0));
                    else
                        gemv(w, a, y.view.row(0));
                    return;
                }
            }
            if (reference)
                gemm_reference(w, a, y.view);
            else
                gemm(w, a, y.view);
        });
        return py::array(std::move(y.array));
    };
    if (py::isinstance<quantized_activations>(x)) {
        const auto& a = x.cast<const quantized_activations&>();
        return run(a, a.tokens);
    }
    if (py::isinstance<int8_activations>(x)) {
        const auto& a = x.cast<const int8_activations&>();
        return run(a, a.tokens);
    }
    const auto in = gemv_call ? float_vector(x, fn + ": x") : float_matrix(x, fn + ": x");
    if (gemv_call) {
        float_output y = new_float_output(1, w.rows(), true);
        nogil([&] {
            if (reference)
                gemv_reference(w, in.view.row(0), y.view.row(0));
            else
                gemv(w, in.view.row(0), y.view.row(0));
        });
        return std::move(y.array);
    }
    return run(in.view, in.view.rows);
}

binary_ptr make_binary_matrix(py::sequence planes, std::size_t group_size, py::handle col_scales,
                              py::handle means) {
    const std::string fn = "qift.BinaryMatrix";
    std::vector<matrix_input<std::int8_t>> signs;
    std::vector<matrix_input<float>> scales;
    std::vector<matrix_input<std::uint8_t>> masks;
    std::vector<binary_plane_view> views;
    const std::size_t n = py::len(planes);
    signs.reserve(n), scales.reserve(n), masks.reserve(n);
    for (std::size_t p = 0; p < n; ++p) {
        const std::string where = fn + ": plane " + std::to_string(p);
        py::object item = planes[p];
        py::object s, sc, mk = py::none();
        if (py::isinstance<py::dict>(item)) {
            const py::dict d = item.cast<py::dict>();
            s = d.contains("signs") ? py::object(d["signs"]) : py::none();
            if (!d.contains("scales")) value_error(where + " has no 'scales'");
            sc = d["scales"];
            if (d.contains("mask")) mk = d["mask"];
        } else {
            const py::tuple t = py::tuple(item);
            if (t.size() < 2 || t.size() > 3)
                value_error(where + ": expected (signs, scales[, mask]) or a dict");
            s = t[0], sc = t[1];
            if (t.size() == 3) mk = t[2];
        }
        signs.push_back(s.is_none() ? matrix_input<std::int8_t>{}
                                    : integer_matrix<std::int8_t>(s, where + " signs"));
        scales.push_back(float_matrix(sc, where + " scales"));
        masks.push_back(mk.is_none() ? matrix_input<std::uint8_t>{}
                                     : integer_matrix<std::uint8_t>(mk, where + " mask"));
        views.push_back({signs.back().view, scales.back().view, masks.back().view});
    }
    matrix_input<float> cs, mn;
    if (!col_scales.is_none()) cs = float_vector(col_scales, fn + ": column_scales");
    if (!means.is_none()) mn = float_matrix(means, fn + ": means");
    const std::span<const float> csv =
        col_scales.is_none() ? std::span<const float>() : cs.view.row(0);
    return nogil([&] {
        return std::make_shared<binary_matrix>(std::span<const binary_plane_view>(views),
                                               group_size, csv, mn.view);
    });
}

void bind_binary(py::module_& m) {
    py::class_<binary_affine_result, std::shared_ptr<binary_affine_result>>(
        m, "BinaryAffineResult",
        "XNOR / ARB / ARB-X: Ŵ[r, c] = scale[r]·signs[r, c] + mean[r] (arrays are read-only "
        "views).")
        .def_property_readonly("signs", matrix_member(&binary_affine_result::signs))
        .def_property_readonly("scale", vector_member(&binary_affine_result::scale))
        .def_property_readonly("mean", vector_member(&binary_affine_result::mean))
        .def_property_readonly("dequantized", matrix_member(&binary_affine_result::dequantized))
        .def_property_readonly("objective", vector_member(&binary_affine_result::objective))
        .def_property_readonly(
            "storage", [](const binary_affine_result& r) { return storage_dict(r.storage); });
    py::class_<binary_rc_result, std::shared_ptr<binary_rc_result>>(
        m, "BinaryRCResult",
        "ARB-RC / output alignment: Ŵ[r, c] = row_scale[r]·signs[r, c]·col_scale[c].")
        .def_property_readonly("signs", matrix_member(&binary_rc_result::signs))
        .def_property_readonly("row_scale", vector_member(&binary_rc_result::row_scale))
        .def_property_readonly("col_scale", vector_member(&binary_rc_result::col_scale))
        .def_property_readonly("dequantized", matrix_member(&binary_rc_result::dequantized))
        .def_property_readonly("objective", vector_member(&binary_rc_result::objective))
        .def_property_readonly("preservation", vector_member(&binary_rc_result::preservation))
        .def_readonly("sign_flips", &binary_rc_result::sign_flips)
        .def_readonly("amp_rejected", &binary_rc_result::amp_rejected)
        .def_property_readonly("storage",
                               [](const binary_rc_result& r) { return storage_dict(r.storage); });
    py::class_<billm_result, std::shared_ptr<billm_result>>(
        m, "BiLLMResult", "BiLLM: two sign planes, salient columns and magnitude groups.")
        .def_property_readonly("signs", matrix_member(&billm_result::signs))
        .def_property_readonly("residual_signs", matrix_member(&billm_result::residual_signs))
        .def_property_readonly("high_group", matrix_member(&billm_result::high_group))
        .def_property_readonly("salient_column", vector_member(&billm_result::salient_column))
        .def_property_readonly("dequantized", matrix_member(&billm_result::dequantized))
        .def_property_readonly(
            "blocks",
            [](const billm_result& r) {
                py::list l;
                for (const auto& b : r.blocks) {
                    py::dict d;
                    d["begin"] = b.begin;
                    d["width"] = b.width;
                    d["salient"] = b.salient;
                    d["break_point"] = b.break_point;
                    d["search_error"] = b.search_error;
                    d["salient_scale1"] = b.salient_scale1;
                    d["salient_scale2"] = b.salient_scale2;
                    d["salient_mean"] = b.salient_mean;
                    d["low_scale"] = b.low_scale;
                    d["low_mean"] = b.low_mean;
                    d["high_scale"] = b.high_scale;
                    d["high_mean"] = b.high_mean;
                    l.append(d);
                }
                return l;
            },
            "Per block: begin, width, salient columns, break_point and per-row parameters.")
        .def_readonly("proxy_loss", &billm_result::proxy_loss)
        .def_readonly("damping", &billm_result::damping)
        .def_readonly("damping_absolute", &billm_result::damping_absolute)
        .def_readonly("retries", &billm_result::retries)
        .def_readonly("dead_columns", &billm_result::dead_columns)
        .def_property_readonly("storage",
                               [](const billm_result& r) { return storage_dict(r.storage); });

    m.def(
        "binarize_xnor",
        [](py::handle w) {
            const auto in = float_matrix(w, "qift.binarize_xnor: w");
            return std::make_shared<binary_affine_result>(
                nogil([&] { return binarize_xnor(in.view); }));
        },
        py::arg("w"), "XNOR per row of W [out][in]: μ = mean, α = mean|w − μ|, B = sign(w − μ).");
    m.def(
        "binarize_arb",
        [](py::handle w, int iterations) {
            const auto in = float_matrix(w, "qift.binarize_arb: w");
            return std::make_shared<binary_affine_result>(
                nogil([&] { return binarize_arb(in.view, arb_options{iterations}); }));
        },
        py::arg("w"), py::kw_only(), py::arg("iterations") = 15, "ARB (ARB-LLM) per row.");
    m.def(
        "binarize_arb_x",
        [](py::handle w, py::handle gram, int iterations) {
            const auto in = float_matrix(w, "qift.binarize_arb_x: w");
            const auto g = double_matrix(gram, "qift.binarize_arb_x: gram");
            return std::make_shared<binary_affine_result>(
                nogil([&] { return binarize_arb_x(in.view, g.view, arb_options{iterations}); }));
        },
        py::arg("w"), py::arg("gram"), py::kw_only(), py::arg("iterations") = 15,
        "ARB-X: ARB weighted by the input Gram X̂ᵀX̂ [in][in] (float64 read in place).");
    m.def(
        "binarize_arb_rc",
        [](py::handle w, int iterations, bool refine_signs) {
            const auto in = float_matrix(w, "qift.binarize_arb_rc: w");
            return std::make_shared<binary_rc_result>(nogil([&] {
                return binarize_arb_rc(in.view, arb_rc_options{iterations, refine_signs});
            }));
        },
        py::arg("w"), py::kw_only(), py::arg("iterations") = 15, py::arg("refine_signs") = true,
        "ARB-RC: Ŵ = diag(u)·B·diag(v) by alternating least squares.");
    m.def(
        "binarize_output_aligned",
        [](py::handle w, py::handle cross, py::handle gram, int iterations, int init_iterations,
           bool init_refine_signs, const std::string& amp) {
            const auto in = float_matrix(w, "qift.binarize_output_aligned: w");
            const auto c = double_matrix(cross, "qift.binarize_output_aligned: cross");
            const auto g = double_matrix(gram, "qift.binarize_output_aligned: gram");
            output_alignment_options o;
            o.iterations = iterations;
            o.init = arb_rc_options{init_iterations, init_refine_signs};
            o.amp = parse_amp("qift.binarize_output_aligned", amp);
            return std::make_shared<binary_rc_result>(
                nogil([&] { return binarize_output_aligned(in.view, c.view, g.view, o); }));
        },
        py::arg("w"), py::arg("cross"), py::arg("gram"), py::kw_only(), py::arg("iterations") = 15,
        py::arg("init_iterations") = 15, py::arg("init_refine_signs") = true,
        py::arg("amp") = "gradient_sign",
        "Output alignment: Ŵ = diag(u)·B·diag(v) minimizing ‖X·Wᵀ − X̂·Ŵᵀ‖² from cross = X̂ᵀX and "
        "gram = X̂ᵀX̂ (float64 [in][in]); amp: 'off', 'gradient_sign' or 'exact'.");
    m.def(
        "binarize_billm",
        [](py::handle w, py::handle hessian, std::size_t block_size, std::size_t min_salient,
           std::size_t max_salient, py::object break_points, double damp, int max_retries) {
            const auto in = float_matrix(w, "qift.binarize_billm: w");
            const auto h = double_matrix(hessian, "qift.binarize_billm: hessian");
            billm_options o;
            o.block_size = block_size;
            o.min_salient = min_salient;
            o.max_salient = max_salient;
            if (!break_points.is_none())
                o.break_point_quantiles =
                    double_list(break_points, "qift.binarize_billm: break_point_quantiles");
            o.damp = damp;
            o.max_retries = max_retries;
            return std::make_shared<billm_result>(
                nogil([&] { return binarize_billm(in.view, h.view, o); }));
        },
        py::arg("w"), py::arg("hessian"), py::kw_only(), py::arg("block_size") = 128,
        py::arg("min_salient") = 1, py::arg("max_salient") = 49,
        py::arg("break_point_quantiles") = py::none(), py::arg("damp") = 0.01,
        py::arg("max_retries") = 5, "BiLLM with GPTQ error feedback against a Hessian [in][in].");
    m.def(
        "weighted_error",
        [](py::handle w, py::handle w_hat, py::handle g) {
            const auto a = float_matrix(w, "qift.weighted_error: w");
            const auto b = float_matrix(w_hat, "qift.weighted_error: w_hat");
            const auto gm = double_matrix(g, "qift.weighted_error: g");
            return nogil([&] { return weighted_error(a.view, b.view, gm.view); });
        },
        py::arg("w"), py::arg("w_hat"), py::arg("g"), "tr((W − Ŵ)·G·(W − Ŵ)ᵀ).");
    m.def(
        "output_alignment_loss",
        [](py::handle w, py::handle w_hat, py::handle cross, py::handle gram,
           py::handle gram_float) {
            const auto a = float_matrix(w, "qift.output_alignment_loss: w");
            const auto b = float_matrix(w_hat, "qift.output_alignment_loss: w_hat");
            const auto c = double_matrix(cross, "qift.output_alignment_loss: cross");
            const auto g = double_matrix(gram, "qift.output_alignment_loss: gram");
            matrix_input<double> f;
            if (!gram_float.is_none())
                f = double_matrix(gram_float, "qift.output_alignment_loss: gram_float");
            return nogil(
                [&] { return output_alignment_loss(a.view, b.view, c.view, g.view, f.view); });
        },
        py::arg("w"), py::arg("w_hat"), py::arg("cross"), py::arg("gram"),
        py::arg("gram_float") = py::none(),
        "‖X·Wᵀ − X̂·Ŵᵀ‖² from the Grams (without the constant when gram_float is None).");
    m.def(
        "attention_preservation",
        [](py::handle w, py::handle w_hat, py::handle cross) {
            const auto a = float_matrix(w, "qift.attention_preservation: w");
            const auto b = float_matrix(w_hat, "qift.attention_preservation: w_hat");
            const auto c = double_matrix(cross, "qift.attention_preservation: cross");
            return nogil([&] { return attention_preservation(a.view, b.view, c.view); });
        },
        py::arg("w"), py::arg("w_hat"), py::arg("cross"), "AMP's T = ‖P·Ŵᵀ‖², P = W·crossᵀ.");

    py::class_<int8_activations, std::shared_ptr<int8_activations>>(
        m, "Int8Activations", "Per-token symmetric INT8 activations (qift::int8_activations).")
        .def_property_readonly("tokens", [](const int8_activations& a) { return a.tokens; })
        .def_property_readonly("cols", [](const int8_activations& a) { return a.cols; })
        .def_property_readonly(
            "codes",
            [](py::object self) {
                const auto& a = self.cast<const int8_activations&>();
                return readonly_view<std::int8_t>(
                    a.codes.data(),
                    {static_cast<py::ssize_t>(a.tokens), static_cast<py::ssize_t>(a.cols)},
                    {static_cast<py::ssize_t>(a.padded_cols), 1}, self);
            })
        .def_property_readonly("scales",
                               [](py::object self) {
                                   const auto& a = self.cast<const int8_activations&>();
                                   return span_view<float>(std::span<const float>(a.scales), self);
                               })
        .def("dequantize", [](const int8_activations& a) { return to_numpy(qift::dequantize(a)); });
    m.def(
        "quantize_int8_activations",
        [](py::handle z) {
            const auto in = float_matrix(z, "qift.quantize_int8_activations: z", true);
            return std::make_shared<int8_activations>(
                nogil([&] { return quantize_int8_activations(in.view); }));
        },
        py::arg("z"), "Per-token INT8: scale max|z|/127, codes -127..127 (round half even).");

    py::class_<binary_matrix, binary_ptr>(
        m, "BinaryMatrix",
        "One-bit weights in kernel form (qift::binary_matrix): sign planes with optional masks, "
        "per (row, block) scales, optional column scales and means. Made by qift.pack(result) of a "
        "binarize_* result or from planes.")
        .def(py::init(&make_binary_matrix), py::arg("planes"), py::arg("group_size") = 0,
             py::arg("column_scales") = py::none(), py::arg("means") = py::none(),
             "planes: a list of (signs, scales[, mask]) tuples or dicts with those keys; signs "
             "int8 ±1 [rows][cols] (None for a constant plane with a mask), scales float "
             "[rows][blocks], mask 0/1 [rows][cols].")
        .def_property_readonly("rows", &binary_matrix::rows)
        .def_property_readonly("cols", &binary_matrix::cols)
        .def_property_readonly(
            "shape", [](const binary_matrix& b) { return py::make_tuple(b.rows(), b.cols()); })
        .def_property_readonly("group_size", &binary_matrix::group_size)
        .def_property_readonly("blocks_per_row", &binary_matrix::blocks_per_row)
        .def_property_readonly("plane_count", &binary_matrix::plane_count)
        .def_property_readonly("words_per_row", &binary_matrix::words_per_row)
        .def_property_readonly("size_bytes", &binary_matrix::size_bytes)
        .def_property_readonly("stored_sign_planes", &binary_matrix::stored_sign_planes)
        .def_property_readonly("stored_masks", &binary_matrix::stored_masks)
        .def(
            "scales",
            [](py::object self, std::size_t p) {
                const auto& b = self.cast<const binary_matrix&>();
                if (p >= b.plane_count())
                    throw py::index_error("qift.BinaryMatrix.scales: plane " + std::to_string(p) +
                                          " of " + std::to_string(b.plane_count()));
                const auto bl = static_cast<py::ssize_t>(b.blocks_per_row());
                return readonly_view<float>(b.scales(p).data(),
                                            {static_cast<py::ssize_t>(b.rows()), bl}, {bl * 4, 4},
                                            self);
            },
            py::arg("plane"))
        .def_property_readonly("column_scales",
                               [](py::object self) -> py::object {
                                   const auto s = self.cast<const binary_matrix&>().column_scales();
                                   if (s.empty()) return py::none();
                                   return span_view<float>(s, self);
                               })
        .def_property_readonly("means",
                               [](py::object self) -> py::object {
                                   const auto& b = self.cast<const binary_matrix&>();
                                   if (b.means().empty()) return py::none();
                                   const auto bl = static_cast<py::ssize_t>(b.blocks_per_row());
                                   return readonly_view<float>(
                                       b.means().data(), {static_cast<py::ssize_t>(b.rows()), bl},
                                       {bl * 4, 4}, self);
                               })
        .def("dequantize", [](const binary_matrix& b) { return to_numpy(qift::dequantize(b)); })
        .def(
            "quantize_activations",
            [](const binary_matrix& b, py::handle x, float clip, const std::string& range) {
                const auto in = float_matrix(x, "qift.BinaryMatrix.quantize_activations: x", true);
                const a4_range r = parse_a4_range("qift.BinaryMatrix.quantize_activations", range);
                return std::make_shared<quantized_activations>(
                    nogil([&] { return quantize_activations(b, in.view, clip, r); }));
            },
            py::arg("x"), py::arg("clip") = 1.0f, py::arg("range") = "symmetric",
            "A4 activations of column_scales ⊙ x, ready for gemv/gemm.")
        .def(
            "quantize_int8_activations",
            [](const binary_matrix& b, py::handle x) {
                const auto in =
                    float_matrix(x, "qift.BinaryMatrix.quantize_int8_activations: x", true);
                return std::make_shared<int8_activations>(
                    nogil([&] { return quantize_int8_activations(b, in.view); }));
            },
            py::arg("x"), "A8 activations of column_scales ⊙ x.")
        .def(
            "gemv",
            [](const binary_matrix& b, py::handle x, bool reference) {
                return binary_product(b, x, true, reference);
            },
            py::arg("x"), py::kw_only(), py::arg("reference") = false,
            "y = Ŵ·x for one token: float x [cols], Int8Activations or QuantizedActivations (made "
            "by this matrix's quantize_*activations, which apply the column scales).")
        .def(
            "gemm",
            [](const binary_matrix& b, py::handle x, bool reference) {
                return binary_product(b, x, false, reference);
            },
            py::arg("x"), py::kw_only(), py::arg("reference") = false,
            "Y = X·Ŵᵀ for float X [tokens][cols] or activations of several tokens.")
        .def("__repr__", [](const binary_matrix& b) {
            return "BinaryMatrix(shape=(" + std::to_string(b.rows()) + ", " +
                   std::to_string(b.cols()) + "), planes=" + std::to_string(b.plane_count()) + ")";
        });

    m.def(
        "pack",
        [](const binary_affine_result& r) {
            return std::make_shared<binary_matrix>(nogil([&] { return pack(r); }));
        },
        py::arg("result"), "The BinaryMatrix of an XNOR / ARB / ARB-X result.");
    m.def(
        "pack",
        [](const binary_rc_result& r) {
            return std::make_shared<binary_matrix>(nogil([&] { return pack(r); }));
        },
        py::arg("result"), "The BinaryMatrix of an ARB-RC / output-alignment result.");
    m.def(
        "pack",
        [](const billm_result& r) {
            return std::make_shared<binary_matrix>(nogil([&] { return pack(r); }));
        },
        py::arg("result"), "The BinaryMatrix of a BiLLM result.");
}

}  // namespace

void bind_methods(py::module_& m) {
    bind_mx(m);
    bind_torq(m);
    bind_smooth(m);
    bind_binary(m);
}

}  // namespace qift::python
