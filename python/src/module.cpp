// SPDX-License-Identifier: MIT
// The qift Python module: errors, threads, level sets, scale search and RTN quantization,
// statistics, code packing and A4 activations. The other parts live in rotations.cpp,
// kernels.cpp and methods.cpp.
#include <mutex>
#include <thread>

#include <qift/pack.hpp>
#include <qift/stats.hpp>

#include "bindings.hpp"

namespace qift::python {

namespace {

// ---------------------------------------------------------------------------------------
// Threads

// The executor installed by set_num_threads(n): qift's default split into n threads.
void run_on_threads(std::size_t threads, std::size_t n, const range_fn& body) {
    threads = std::min(threads, n);
    if (threads <= 1) {
        if (n) body(0, n);
        return;
    }
    const std::size_t chunk = (n + threads - 1) / threads;
    std::exception_ptr first_error;
    std::mutex error_mutex;
    auto run = [&](std::size_t b, std::size_t e) {
        try {
            body(b, e);
        } catch (...) {
            std::lock_guard lock(error_mutex);
            if (!first_error) first_error = std::current_exception();
        }
    };
    std::vector<std::thread> pool;
    std::size_t begin = 0;
    for (std::size_t t = 0; t + 1 < threads && begin < n; ++t, begin += chunk)
        pool.emplace_back(run, begin, std::min(n, begin + chunk));
    if (begin < n) run(begin, n);
    for (auto& th : pool) th.join();
    if (first_error) std::rethrow_exception(first_error);
}

std::size_t current_threads = 0;  // 0: qift's default executor

void set_num_threads(std::size_t n) {
    if (n == 0)
        set_parallel_executor(nullptr);
    else if (n == 1)
        set_parallel_executor(serial_executor);
    else
        set_parallel_executor(
            [n](std::size_t count, const range_fn& body) { run_on_threads(n, count, body); });
    current_threads = n;
}

std::size_t get_num_threads() {
    return current_threads == 0 ? qift::detail::default_thread_count() : current_threads;
}

// ---------------------------------------------------------------------------------------
// Level sets

template <class L>
py::dict level_info(L) {
    using T = level_traits<L>;
    py::dict d;
    d["name"] = std::string(py_name<L>());
    d["bits"] = T::bits;
    d["levels"] = std::vector<float>(L::levels.begin(), L::levels.end());
    d["has_zero_point"] = T::has_zero_point;
    d["has_zero"] = T::has_zero;
    d["symmetric"] = T::symmetric;
    d["clip_abs"] = T::clip_abs;
    d["inner_outer_ratio"] = T::inner_outer_ratio;
    d["integer_multiplier"] = T::integer_multiplier;
    d["power_of_two"] = T::sign_shift_decodable;
    d["storage_bits"] = storage_bits<L>;
    return d;
}

py::array_t<float> level_table(const std::string& name) {
    return with_level_set("qift.levels", name, [](auto l) {
        using L = decltype(l);
        return py::array_t<float>(static_cast<py::ssize_t>(L::levels.size()), L::levels.data());
    });
}

// ---------------------------------------------------------------------------------------
// QuantizedMatrix

py::object zeros_or_none(const any_quantized& q, py::handle self) {
    if (!q.has_zero_point()) return py::none();
    return readonly_view(q.zeros(), self);
}

std::shared_ptr<any_quantized> make_quantized(py::handle codes_obj, py::handle scales_obj,
                                              py::handle zeros_obj,
                                              std::optional<std::size_t> group_size,
                                              const std::string& levels) {
    const auto codes = code_matrix(codes_obj, "qift.QuantizedMatrix: codes");
    const auto scales = float_matrix(scales_obj, "qift.QuantizedMatrix: scales");
    std::size_t g = 0;
    if (group_size)
        g = *group_size;
    else if (scales.view.cols > 0 && codes.view.cols % scales.view.cols == 0)
        g = codes.view.cols / scales.view.cols;
    return with_level_set(
        "qift.QuantizedMatrix", levels, [&](auto l) -> std::shared_ptr<any_quantized> {
            using L = decltype(l);
            matrix<float> zeros;
            if (!zeros_obj.is_none()) {
                if (!level_traits<L>::has_zero_point)
                    value_error("qift.QuantizedMatrix: zeros given for level set '" +
                                std::string(py_name<L>()) + "', which has no zero-point");
                zeros = matrix<float>::from(
                    float_matrix(zeros_obj, "qift.QuantizedMatrix: zeros").view);
            } else if (level_traits<L>::has_zero_point) {
                value_error("qift.QuantizedMatrix: level set '" + std::string(py_name<L>()) +
                            "' needs zeros (one zero-point per row and group)");
            }
            return hold(quantized_matrix<L>(matrix<std::uint8_t>::from(codes.view),
                                            matrix<float>::from(scales.view), std::move(zeros), g));
        });
}

std::shared_ptr<any_quantized> quantize_any(py::handle w_obj, const std::string& levels,
                                            const scale_options& opt) {
    const auto w = float_matrix(w_obj, "qift.quantize: w");
    return with_level_set("qift.quantize", levels, [&](auto l) -> std::shared_ptr<any_quantized> {
        using L = decltype(l);
        return hold(nogil([&] { return quantize<L>(w.view, opt); }));
    });
}

// ---------------------------------------------------------------------------------------
// Statistics

void bind_stats(py::module_& m) {
    py::class_<distribution_stats>(m, "DistributionStats",
                                   "Summary of a sample (population moments); see qift::describe.")
        .def_readonly("count", &distribution_stats::count)
        .def_readonly("mean", &distribution_stats::mean)
        .def_readonly("stddev", &distribution_stats::stddev)
        .def_readonly("skewness", &distribution_stats::skewness)
        .def_readonly("excess_kurtosis", &distribution_stats::excess_kurtosis)
        .def_readonly("qq_error", &distribution_stats::qq_error)
        .def("as_dict",
             [](const distribution_stats& s) {
                 py::dict d;
                 d["count"] = s.count;
                 d["mean"] = s.mean;
                 d["stddev"] = s.stddev;
                 d["skewness"] = s.skewness;
                 d["excess_kurtosis"] = s.excess_kurtosis;
                 d["qq_error"] = s.qq_error;
                 return d;
             })
        .def("__repr__", [](const distribution_stats& s) {
            return "DistributionStats(count=" + std::to_string(s.count) +
                   ", mean=" + py::repr(py::float_(s.mean)).cast<std::string>() +
                   ", stddev=" + py::repr(py::float_(s.stddev)).cast<std::string>() +
                   ", skewness=" + py::repr(py::float_(s.skewness)).cast<std::string>() +
                   ", excess_kurtosis=" +
                   py::repr(py::float_(s.excess_kurtosis)).cast<std::string>() +
                   ", qq_error=" + py::repr(py::float_(s.qq_error)).cast<std::string>() + ")";
        });

    m.def(
        "describe",
        [](py::handle x) {
            const auto in = float_flat(x, "qift.describe: x");
            return nogil([&] { return describe(in.view.row(0)); });
        },
        py::arg("x"),
        "Statistics of all elements of x (any shape; float16/float64 are converted, float32 "
        "C-contiguous arrays are read in place).");
    m.def(
        "matrix_stats",
        [](py::handle w) {
            const auto in = float_matrix(w, "qift.matrix_stats: w");
            return nogil([&] { return matrix_stats(in.view); });
        },
        py::arg("w"), "Statistics of all elements of the 2-D array w together.");
    m.def(
        "row_stats",
        [](py::handle w) {
            const auto in = float_matrix(w, "qift.row_stats: w");
            return nogil([&] { return row_stats(in.view); });
        },
        py::arg("w"), "Statistics of every row of the 2-D array w (a list of DistributionStats).");
    m.def("normal_quantile", &normal_quantile, py::arg("p"), "Standard normal quantile Φ⁻¹(p).");
}

// ---------------------------------------------------------------------------------------
// Packing

template <unsigned Bits>
py::array_t<std::uint8_t> pack_bits(const matrix_view<const std::uint8_t>& codes) {
    packed_codes<Bits> p = nogil([&] { return pack<Bits>(codes); });
    py::array_t<std::uint8_t> out(
        {static_cast<py::ssize_t>(p.rows()), static_cast<py::ssize_t>(p.row_bytes())});
    std::copy_n(p.row_data(0), p.size_bytes(), out.mutable_data());
    return out;
}

template <unsigned Bits>
py::array_t<std::uint8_t> unpack_bits(const matrix_input<std::uint8_t>& bytes, std::size_t cols) {
    packed_codes<Bits> p(bytes.view.rows, cols);
    if (bytes.view.cols != p.row_bytes())
        value_error("qift.unpack: " + std::to_string(cols) + " columns of " + std::to_string(Bits) +
                    "-bit codes take " + std::to_string(p.row_bytes()) +
                    " bytes per row, the array has " + std::to_string(bytes.view.cols));
    for (std::size_t r = 0; r < bytes.view.rows; ++r)
        std::copy_n(&bytes.view(r, 0), p.row_bytes(), p.row_data(r));
    return to_numpy(unpack<Bits>(p));
}

void require_bits(unsigned bits, const char* fn) {
    if (bits != 1 && bits != 2 && bits != 4)
        value_error(std::string(fn) + ": bits must be 1, 2 or 4, got " + std::to_string(bits));
}

void bind_pack(py::module_& m) {
    m.def(
        "pack",
        [](py::handle codes, unsigned bits) {
            require_bits(bits, "qift.pack");
            const auto in = code_matrix(codes, "qift.pack: codes");
            switch (bits) {
                case 1:
                    return pack_bits<1>(in.view);
                case 2:
                    return pack_bits<2>(in.view);
                default:
                    return pack_bits<4>(in.view);
            }
        },
        py::arg("codes"), py::arg("bits"),
        "Packs a [rows][cols] code matrix (integers < 2**bits) into qift's kernel layout: a "
        "uint8 array [rows][row_bytes], row_bytes a multiple of 64 (see include/qift/pack.hpp). "
        "uint8 codes with a contiguous last axis are read in place.");
    m.def(
        "unpack",
        [](py::handle packed, unsigned bits, std::size_t cols) {
            require_bits(bits, "qift.unpack");
            const auto in = code_matrix(packed, "qift.unpack: packed");
            switch (bits) {
                case 1:
                    return unpack_bits<1>(in, cols);
                case 2:
                    return unpack_bits<2>(in, cols);
                default:
                    return unpack_bits<4>(in, cols);
            }
        },
        py::arg("packed"), py::arg("bits"), py::arg("cols"),
        "Inverse of pack: the [rows][cols] uint8 codes of a packed array.");
    m.def(
        "packed_row_bytes",
        [](std::size_t cols, unsigned bits) {
            require_bits(bits, "qift.packed_row_bytes");
            const std::size_t block = 64 * (8 / bits);
            return (cols + block - 1) / block * 64;
        },
        py::arg("cols"), py::arg("bits"), "Bytes per packed row of cols codes of `bits` bits.");
}

// ---------------------------------------------------------------------------------------
// A4 activations

void bind_activations(py::module_& m) {
    py::class_<quantized_activations, std::shared_ptr<quantized_activations>>(
        m, "QuantizedActivations",
        "Per-token symmetric INT4 activations (qift::quantized_activations): x(t, k) ≈ "
        "scales[t]·codes[t, k]. Made by quantize_activations; consumed by gemv/gemm.")
        .def_property_readonly("tokens", [](const quantized_activations& a) { return a.tokens; })
        .def_property_readonly("cols", [](const quantized_activations& a) { return a.cols; })
        .def_property_readonly("padded_cols",
                               [](const quantized_activations& a) { return a.padded_cols; })
        .def_property_readonly(
            "codes",
            [](py::object self) {
                const auto& a = self.cast<const quantized_activations&>();
                return readonly_view<std::int8_t>(
                    a.codes.data(),
                    {static_cast<py::ssize_t>(a.tokens), static_cast<py::ssize_t>(a.cols)},
                    {static_cast<py::ssize_t>(a.padded_cols), 1}, self);
            },
            "int8 codes [tokens][cols] (a read-only view of the padded buffer).")
        .def_property_readonly("scales",
                               [](py::object self) {
                                   const auto& a = self.cast<const quantized_activations&>();
                                   return readonly_view<float>(a.scales.data(),
                                                               {static_cast<py::ssize_t>(a.tokens)},
                                                               {4}, self);
                               })
        .def_property_readonly("sums",
                               [](py::object self) {
                                   const auto& a = self.cast<const quantized_activations&>();
                                   return readonly_view<std::int32_t>(
                                       a.sums.data(), {static_cast<py::ssize_t>(a.tokens)}, {4},
                                       self);
                               })
        .def(
            "dequantize",
            [](const quantized_activations& a) { return to_numpy(qift::dequantize(a)); },
            "scales[t]·codes[t, k] as float32 [tokens][cols].")
        .def("__repr__", [](const quantized_activations& a) {
            return "QuantizedActivations(tokens=" + std::to_string(a.tokens) +
                   ", cols=" + std::to_string(a.cols) + ")";
        });

    m.def(
        "quantize_activations",
        [](py::handle x, float clip, const std::string& range) {
            const auto in = float_matrix(x, "qift.quantize_activations: x", true);
            const a4_range r = parse_a4_range("qift.quantize_activations", range);
            return std::make_shared<quantized_activations>(
                nogil([&] { return quantize_activations(in.view, clip, r); }));
        },
        py::arg("x"), py::arg("clip") = 1.0f, py::arg("range") = "symmetric",
        "A4 quantization of x [tokens][cols] (or one token [cols]): per token scale "
        "clip·max|x|/7, codes round-half-even, in -7..7 ('symmetric') or -8..7 ('full').");
}

// ---------------------------------------------------------------------------------------
// Quantization

void bind_quantize(py::module_& m) {
    py::class_<any_quantized, std::shared_ptr<any_quantized>>(
        m, "QuantizedMatrix",
        "The result of quantizing a [rows][cols] matrix onto a level set (qift::quantized_matrix):"
        " weight (r, c) = scales[r, g]·(levels[codes[r, c]] − zeros[r, g]), g = c // group_size.")
        .def(py::init(&make_quantized), py::arg("codes"), py::arg("scales"),
             py::arg("zeros") = py::none(), py::arg("group_size") = py::none(),
             py::arg("levels") = "mnz",
             "Builds one from its parts (copied and validated as the C++ constructor does); "
             "group_size defaults to cols // scales.shape[1].")
        .def_property_readonly("levels",
                               [](const any_quantized& q) { return std::string(q.levels()); })
        .def_property_readonly("rows", &any_quantized::rows)
        .def_property_readonly("cols", &any_quantized::cols)
        .def_property_readonly(
            "shape", [](const any_quantized& q) { return py::make_tuple(q.rows(), q.cols()); })
        .def_property_readonly("group_size", &any_quantized::group_size)
        .def_property_readonly("groups",
                               [](const any_quantized& q) { return q.cols() / q.group_size(); })
        .def_property_readonly(
            "codes",
            [](py::object self) {
                return readonly_view(self.cast<const any_quantized&>().codes(), self);
            },
            "uint8 codes [rows][cols] (read-only view).")
        .def_property_readonly(
            "scales",
            [](py::object self) {
                return readonly_view(self.cast<const any_quantized&>().scales(), self);
            },
            "float32 scales [rows][groups] (read-only view).")
        .def_property_readonly(
            "zeros",
            [](py::object self) { return zeros_or_none(self.cast<const any_quantized&>(), self); },
            "float32 zero-points [rows][groups] for affine level sets, None otherwise.")
        .def_property_readonly(
            "level_table",
            [](const any_quantized& q) { return level_table(std::string(q.levels())); })
        .def(
            "dequantize",
            [](const any_quantized& q) { return to_numpy(nogil([&] { return q.dequantize(); })); },
            "The dequantized float32 [rows][cols] matrix.")
        .def("__repr__", [](const any_quantized& q) {
            return "QuantizedMatrix(levels='" + std::string(q.levels()) + "', shape=(" +
                   std::to_string(q.rows()) + ", " + std::to_string(q.cols()) +
                   "), group_size=" + std::to_string(q.group_size()) + ")";
        });

    m.def(
        "quantize",
        [](py::handle w, const std::string& levels, const std::string& rule, float exponent,
           int grid, float grid_step, bool refine, int max_refine_iterations,
           std::size_t group_size) {
            const scale_options opt =
                make_scale_options("qift.quantize", rule, exponent, grid, grid_step, refine,
                                   max_refine_iterations, group_size);
            return quantize_any(w, levels, opt);
        },
        py::arg("w"), py::arg("levels") = "mnz", py::kw_only(), py::arg("rule") = "search",
        py::arg("exponent") = 2.4f, py::arg("grid") = 80, py::arg("grid_step") = 0.01f,
        py::arg("refine") = false, py::arg("max_refine_iterations") = 100,
        py::arg("group_size") = 0,
        "Round-to-nearest quantization of w [rows][cols] onto a level set with per-row (or "
        "per-group) scales from the scale search (qift::quantize). rule: 'search' (GPTQ/QuaRot "
        "clipping grid, minimizing Σ|w − q|^exponent) or 'max'; refine: least-squares scale "
        "refinement; group_size: columns per group (0: whole rows). Returns a QuantizedMatrix.");
    m.def(
        "fake_quantize",
        [](py::handle w, const std::string& levels, const std::string& rule, float exponent,
           int grid, float grid_step, bool refine, int max_refine_iterations,
           std::size_t group_size) {
            const scale_options opt =
                make_scale_options("qift.fake_quantize", rule, exponent, grid, grid_step, refine,
                                   max_refine_iterations, group_size);
            const auto q = quantize_any(w, levels, opt);
            return to_numpy(nogil([&] { return q->dequantize(); }));
        },
        py::arg("w"), py::arg("levels") = "mnz", py::kw_only(), py::arg("rule") = "search",
        py::arg("exponent") = 2.4f, py::arg("grid") = 80, py::arg("grid_step") = 0.01f,
        py::arg("refine") = false, py::arg("max_refine_iterations") = 100,
        py::arg("group_size") = 0, "quantize(...).dequantize() in one call.");
    m.def(
        "find_params",
        [](py::handle w, const std::string& levels, const std::string& rule, float exponent,
           int grid, float grid_step, bool refine, int max_refine_iterations) {
            const auto in = float_vector(w, "qift.find_params: w");
            const scale_options opt =
                make_scale_options("qift.find_params", rule, exponent, grid, grid_step, refine,
                                   max_refine_iterations, 0);
            return with_level_set("qift.find_params", levels, [&](auto l) {
                using L = decltype(l);
                const channel_params p = find_params<L>(in.view.row(0), opt);
                return py::make_tuple(p.scale, p.zero);
            });
        },
        py::arg("w"), py::arg("levels") = "mnz", py::kw_only(), py::arg("rule") = "search",
        py::arg("exponent") = 2.4f, py::arg("grid") = 80, py::arg("grid_step") = 0.01f,
        py::arg("refine") = false, py::arg("max_refine_iterations") = 100,
        "(scale, zero) of one channel (a 1-D array) under the scale rule.");
    m.def(
        "relative_mse",
        [](py::handle a, py::handle b) {
            const auto x = float_matrix(a, "qift.relative_mse: a", true);
            const auto y = float_matrix(b, "qift.relative_mse: b", true);
            return relative_mse(x.view, y.view);
        },
        py::arg("a"), py::arg("b"), "‖a − b‖² / ‖a‖² (float32 arithmetic inputs, double sums).");
}

}  // namespace

void bind_core(py::module_& m) {
    m.def("set_num_threads", &set_num_threads, py::arg("n"),
          "Threads every qift parallel loop uses: n >= 2 splits loops over n threads, 1 runs "
          "them on the calling thread, 0 restores qift's default (one per hardware thread). "
          "Set it while no qift call is running.");
    m.def("get_num_threads", &get_num_threads, "Threads qift's parallel loops use.");

    m.def(
        "level_sets", [] { return names_of(weight_levels{}); },
        "Names of the built-in level sets this module knows.");
    m.def("levels", &level_table, py::arg("name"),
          "The level table of a level set, indexed by code (float32).");
    m.def(
        "level_set_info",
        [](const std::string& name) {
            return with_level_set("qift.level_set_info", name,
                                  [](auto l) { return level_info(l); });
        },
        py::arg("name"), "Everything level_traits derives from a level set's table, as a dict.");

    bind_quantize(m);
    bind_stats(m);
    bind_pack(m);
    bind_activations(m);
}

}  // namespace qift::python

PYBIND11_MODULE(_qift, m) {
    namespace qp = qift::python;
    m.doc() =
        "qift: two-bit LLM quantization and inference primitives (NumPy bindings of the C++ "
        "header-only library).";
    // qift::error -> qift.Error, a subclass of ValueError carrying the same message.
    pybind11::register_exception<qift::error>(m, "Error", PyExc_ValueError);
    m.attr("__version__") = QIFT_VERSION_STRING;
    qp::bind_core(m);
    qp::bind_rotations(m);
    qp::bind_kernels(m);
    qp::bind_methods(m);
    qp::bind_checkpoints(m);
    qp::bind_model(m);
}
