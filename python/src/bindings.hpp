// SPDX-License-Identifier: MIT
// Shared pieces of the qift Python module: NumPy array <-> matrix_view conversion (zero-copy
// where the layout allows, one documented copy otherwise), arrays that own qift's results, the
// level-set dispatcher (name -> template instantiation) and the type-erased result holders.
#pragma once

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <qift/act.hpp>
#include <qift/core.hpp>
#include <qift/levels.hpp>
#include <qift/scale.hpp>

namespace qift::python {

namespace py = pybind11;

// ---------------------------------------------------------------------------------------
// Level sets by name

/// W4 asymmetric (min-max with a zero-point), the 4-bit counterpart of levels::asymmetric.
using asymmetric_int4 = levels::asymmetric_int<4>;

template <class... Ls>
struct level_list {};

/// Every level set the module instantiates, in the order error messages list them.
using weight_levels =
    level_list<levels::standard, levels::asymmetric, levels::mnz, levels::pot_mnz, levels::nf2,
               levels::lloyd, levels::pm12, levels::ternary, levels::binary, levels::int3,
               levels::int4, asymmetric_int4, levels::e2m1>;

/// The subset the smoothing layer error is instantiated for (its quantizers are heavy).
using smooth_levels = level_list<levels::int4, levels::int3, levels::mnz, levels::pot_mnz,
                                 levels::standard, levels::asymmetric>;

/// The Python name of a level set: its `name`, except asymmetric_int<4> (whose C++ name is the
/// generic "asymmetric_int").
template <class L>
constexpr std::string_view py_name() {
    if constexpr (std::is_same_v<L, asymmetric_int4>)
        return "asymmetric_int4";
    else
        return level_set_name<L>();
}

template <class... Ls>
std::string joined_names(level_list<Ls...>) {
    std::string s;
    ((s += (s.empty() ? "" : ", ") + std::string(py_name<Ls>())), ...);
    return s;
}

template <class... Ls>
std::vector<std::string> names_of(level_list<Ls...>) {
    return {std::string(py_name<Ls>())...};
}

[[noreturn]] inline void unknown_level_set(std::string_view fn, std::string_view name,
                                           const std::string& valid) {
    throw py::value_error(std::string(fn) + ": unknown level set '" + std::string(name) +
                          "'; valid names: " + valid);
}

namespace detail {
template <class F, class L, class... Rest>
decltype(auto) dispatch_levels(std::string_view fn, std::string_view name, F& f,
                               const std::string& valid) {
    if (name == py_name<L>()) return f(L{});
    if constexpr (sizeof...(Rest) > 0)
        return dispatch_levels<F, Rest...>(fn, name, f, valid);
    else
        unknown_level_set(fn, name, valid);
}
}  // namespace detail

/// Calls f(L{}) for the level set of List named `name`; ValueError naming the valid names
/// otherwise. Every f(L{}) must return the same type.
template <class List = weight_levels, class F>
decltype(auto) with_level_set(std::string_view fn, std::string_view name, F&& f) {
    return [&]<class... Ls>(level_list<Ls...> list) -> decltype(auto) {
        return detail::dispatch_levels<F, Ls...>(fn, name, f, joined_names(list));
    }(List{});
}

// ---------------------------------------------------------------------------------------
// Errors and the GIL

/// Runs f with the GIL released (qift never touches Python objects).
template <class F>
decltype(auto) nogil(F&& f) {
    py::gil_scoped_release release;
    return f();
}

[[noreturn]] inline void type_error(const std::string& msg) {
    throw py::type_error(msg);
}
[[noreturn]] inline void value_error(const std::string& msg) {
    throw py::value_error(msg);
}

/// A choice among named options ("search" -> scale_rule::search); ValueError listing them.
template <class E, std::size_t N>
E parse_choice(std::string_view fn, std::string_view what, std::string_view s,
               const std::array<std::pair<std::string_view, E>, N>& table) {
    std::string valid;
    for (const auto& [name, value] : table) {
        if (s == name) return value;
        valid += (valid.empty() ? "'" : ", '") + std::string(name) + "'";
    }
    value_error(std::string(fn) + ": unknown " + std::string(what) + " '" + std::string(s) +
                "'; valid: " + valid);
}

// ---------------------------------------------------------------------------------------
// NumPy inputs

inline std::string dtype_name(const py::array& a) {
    return py::str(a.dtype()).cast<std::string>();
}

inline std::string shape_name(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i)
        s += (i ? ", " : "") + std::to_string(a.shape(i)) + (a.ndim() == 1 ? "," : "");
    return s + ")";
}

/// Any object as a NumPy array (lists and other array-likes are converted by NumPy).
inline py::array as_array(py::handle obj, const std::string& where) {
    if (obj.is_none()) type_error(where + " is None, expected an array");
    py::array a = py::array::ensure(obj);
    if (!a) {
        PyErr_Clear();
        type_error(where + ": cannot convert " +
                   py::str(py::type::handle_of(obj)).cast<std::string>() + " to an array");
    }
    return a;
}

/// A 2-D (or 1-D, as one row, when `vector_ok`) array read as a row-major matrix of T.
/// Zero-copy when the array already is native T with a contiguous last axis, a non-negative
/// row stride that is a multiple of sizeof(T), and aligned storage (a C-contiguous array, or a
/// column slice of one); otherwise one converted C-contiguous copy. `keep` holds whatever
/// memory the view points into.
template <class T>
struct matrix_input {
    py::object keep;  // (py::object, not py::array: a default py::array allocates, with the GIL)
    matrix_view<const T> view;
    bool copied = false;
    bool was_vector = false;
};

/// The accepted float dtypes: float16, float32, float64 (float16 and float64 are converted).
inline void require_float_dtype(const py::array& a, const std::string& where) {
    const auto dt = a.dtype();
    if (dt.kind() != 'f' || (dt.itemsize() != 2 && dt.itemsize() != 4 && dt.itemsize() != 8))
        type_error(where + " must be a float32, float64 or float16 array, got dtype " +
                   dtype_name(a));
}

inline void require_ndim(const py::array& a, const std::string& where, bool vector_ok,
                         bool matrix_ok = true) {
    const auto nd = a.ndim();
    if ((nd == 2 && matrix_ok) || (nd == 1 && vector_ok)) return;
    const std::string want = matrix_ok && vector_ok ? "1-D or 2-D" : matrix_ok ? "2-D" : "1-D";
    value_error(where + " must be " + want + ", got a " + std::to_string(nd) +
                "-D array of shape " + shape_name(a));
}

/// A new C-contiguous, aligned, native-T copy of `a` (NumPy's casting rules; always a copy).
template <class T>
py::array fresh_copy(const py::array& a) {
    constexpr int ensure_copy = 0x0020;  // NPY_ARRAY_ENSURECOPY
    using api = py::detail::npy_api;
    PyObject* r = api::get().PyArray_FromAny_(
        a.ptr(), py::dtype::of<T>().release().ptr(), 0, 0,
        api::NPY_ARRAY_ENSUREARRAY_ | api::NPY_ARRAY_C_CONTIGUOUS_ | api::NPY_ARRAY_ALIGNED_ |
            api::NPY_ARRAY_FORCECAST_ | ensure_copy,
        nullptr);
    if (!r) throw py::error_already_set();
    return py::reinterpret_steal<py::array>(r);
}

template <class T>
matrix_input<T> view_or_copy(py::array a, bool vector) {
    matrix_input<T> in;
    in.was_vector = vector;
    const auto rows = static_cast<std::size_t>(vector ? 1 : a.shape(0));
    const auto cols = static_cast<std::size_t>(vector ? a.shape(0) : a.shape(1));
    const py::ssize_t item = sizeof(T);
    const bool native = py::array_t<T>::check_(a);
    const bool aligned = (a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) != 0;
    bool ok = native && aligned;
    std::size_t stride = cols;
    if (ok && cols > 1) ok = a.strides(vector ? 0 : 1) == item;
    if (ok && !vector && rows > 1) {
        const py::ssize_t rs = a.strides(0);
        ok = rs >= 0 && rs % item == 0 && static_cast<std::size_t>(rs / item) >= cols;
        if (ok) stride = static_cast<std::size_t>(rs / item);
    }
    if (!ok) {
        a = fresh_copy<T>(a);
        in.copied = true;
        stride = cols;
    }
    in.keep = a;
    in.view = matrix_view<const T>(static_cast<const T*>(a.data()), rows, cols, stride);
    return in;
}

/// A float matrix argument: float32/float64/float16, 2-D (or 1-D as one row when vector_ok).
inline matrix_input<float> float_matrix(py::handle obj, const std::string& where,
                                        bool vector_ok = false) {
    py::array a = as_array(obj, where);
    require_float_dtype(a, where);
    require_ndim(a, where, vector_ok);
    return view_or_copy<float>(std::move(a), a.ndim() == 1);
}

/// A float vector argument (1-D).
inline matrix_input<float> float_vector(py::handle obj, const std::string& where) {
    py::array a = as_array(obj, where);
    require_float_dtype(a, where);
    require_ndim(a, where, true, false);
    return view_or_copy<float>(std::move(a), true);
}

/// Any-rank float array flattened (a 1-D view of its elements in C order; copies unless
/// C-contiguous float32).
inline matrix_input<float> float_flat(py::handle obj, const std::string& where) {
    py::array a = as_array(obj, where);
    require_float_dtype(a, where);
    if (!(py::array_t<float>::check_(a) && (a.flags() & py::array::c_style) &&
          (a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_)))
        a = fresh_copy<float>(a);
    matrix_input<float> in;
    in.was_vector = true;
    in.view = matrix_view<const float>(static_cast<const float*>(a.data()), 1,
                                       static_cast<std::size_t>(a.size()));
    in.keep = std::move(a);
    return in;
}

/// A float64 matrix argument (Grams, Hessians): float64 is read in place, float32/float16
/// converted (exactly) to float64.
inline matrix_input<double> double_matrix(py::handle obj, const std::string& where) {
    py::array a = as_array(obj, where);
    require_float_dtype(a, where);
    require_ndim(a, where, false);
    return view_or_copy<double>(std::move(a), false);
}

/// An integer (or bool) matrix argument read as T: native T in place, other integer dtypes
/// converted after a range check (ValueError naming the range found).
template <class T>
matrix_input<T> integer_matrix(py::handle obj, const std::string& where) {
    py::array a = as_array(obj, where);
    const char kind = a.dtype().kind();
    if (kind != 'u' && kind != 'i' && kind != 'b')
        type_error(where + " must be an integer array, got dtype " + dtype_name(a));
    require_ndim(a, where, false);
    if (!py::array_t<T>::check_(a) && a.size() > 0 && kind != 'b') {
        const py::module_ np = py::module_::import("numpy");
        const long long lo = np.attr("min")(a).template cast<long long>();
        const long long hi = np.attr("max")(a).template cast<long long>();
        constexpr long long tmin = std::numeric_limits<T>::min(),
                            tmax = std::numeric_limits<T>::max();
        if (lo < tmin || hi > tmax)
            value_error(where + " holds values in [" + std::to_string(lo) + ", " +
                        std::to_string(hi) + "], outside [" + std::to_string(tmin) + ", " +
                        std::to_string(tmax) + "]");
    }
    return view_or_copy<T>(std::move(a), false);
}

/// Codes: an integer matrix read as uint8.
inline matrix_input<std::uint8_t> code_matrix(py::handle obj, const std::string& where) {
    return integer_matrix<std::uint8_t>(obj, where);
}

/// A writable float32 array to transform in place: 1-D or 2-D, native float32, contiguous last
/// axis, writeable; TypeError/ValueError saying so otherwise.
inline matrix_view<float> inplace_matrix(py::array& a, const std::string& where) {
    require_ndim(a, where, true);
    if (!py::array_t<float>::check_(a))
        type_error(where + ": inplace=True needs a float32 array, got dtype " + dtype_name(a));
    if (!a.writeable()) value_error(where + ": inplace=True needs a writeable array");
    const bool vector = a.ndim() == 1;
    const auto rows = static_cast<std::size_t>(vector ? 1 : a.shape(0));
    const auto cols = static_cast<std::size_t>(vector ? a.shape(0) : a.shape(1));
    std::size_t stride = cols;
    const bool last_ok = cols <= 1 || a.strides(vector ? 0 : 1) == 4;
    bool rows_ok = true;
    if (!vector && rows > 1) {
        const py::ssize_t rs = a.strides(0);
        rows_ok = rs >= 0 && rs % 4 == 0 && static_cast<std::size_t>(rs / 4) >= cols;
        if (rows_ok) stride = static_cast<std::size_t>(rs / 4);
    }
    if (!last_ok || !rows_ok || !(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        value_error(where +
                    ": inplace=True needs rows with a contiguous last axis (e.g. a C-contiguous "
                    "array); got strides that are not");
    return {static_cast<float*>(a.mutable_data()), rows, cols, stride};
}

// ---------------------------------------------------------------------------------------
// NumPy outputs

/// matrix<T> -> [rows][cols] array owning the matrix's storage.
template <class T>
py::array_t<T> to_numpy(matrix<T>&& m) {
    const auto r = static_cast<py::ssize_t>(m.rows()), c = static_cast<py::ssize_t>(m.cols());
    auto* heap = new matrix<T>(std::move(m));
    const py::capsule free_it(heap, [](void* p) { delete static_cast<matrix<T>*>(p); });
    return py::array_t<T>({r, c}, heap->data(), free_it);
}

/// std::vector (any allocator) -> 1-D array owning it, or reshaped to `shape`.
template <class T, class A>
py::array_t<T> to_numpy(std::vector<T, A>&& v, std::vector<py::ssize_t> shape = {}) {
    if (shape.empty()) shape = {static_cast<py::ssize_t>(v.size())};
    auto* heap = new std::vector<T, A>(std::move(v));
    const py::capsule free_it(heap, [](void* p) { delete static_cast<std::vector<T, A>*>(p); });
    return py::array_t<T>(std::move(shape), heap->data(), free_it);
}

/// std::vector<size_t> -> int64 array (a copy: NumPy indices are signed).
inline py::array_t<std::int64_t> to_index_array(const std::vector<std::size_t>& v) {
    py::array_t<std::int64_t> a(static_cast<py::ssize_t>(v.size()));
    auto* d = a.mutable_data();
    for (std::size_t i = 0; i < v.size(); ++i) d[i] = static_cast<std::int64_t>(v[i]);
    return a;
}

/// A read-only view into memory owned by `owner` (a Python object kept alive as the base).
template <class T>
py::array_t<T> readonly_view(const T* data, std::vector<py::ssize_t> shape,
                             std::vector<py::ssize_t> strides, py::handle owner) {
    py::array_t<T> a(std::move(shape), std::move(strides), data, owner);
    py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
    return a;
}

template <class T>
py::array_t<T> readonly_view(const matrix<T>& m, py::handle owner) {
    const auto r = static_cast<py::ssize_t>(m.rows()), c = static_cast<py::ssize_t>(m.cols());
    return readonly_view<T>(m.data(), {r, c}, {c * static_cast<py::ssize_t>(sizeof(T)), sizeof(T)},
                            owner);
}

/// The result of a computation on `in` shaped like it: a 1-D input gives a 1-D output.
inline py::array shaped_like_input(py::array out, bool was_vector) {
    if (was_vector && out.ndim() == 2) return out.attr("reshape")(-1);
    return out;
}

/// A fresh float32 output [rows][cols] (or [cols] for a vector) and its view.
struct float_output {
    py::array_t<float> array;
    matrix_view<float> view;
};
inline float_output new_float_output(std::size_t rows, std::size_t cols, bool vector) {
    float_output o;
    if (vector)
        o.array = py::array_t<float>(static_cast<py::ssize_t>(cols));
    else
        o.array =
            py::array_t<float>({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
    o.view = matrix_view<float>(o.array.mutable_data(), rows, cols);
    return o;
}

/// A float32 copy of an input (the output of a function that transforms a copy in place).
inline float_output copy_of(const matrix_input<float>& in) {
    float_output o = new_float_output(in.view.rows, in.view.cols, in.was_vector);
    for (std::size_t r = 0; r < in.view.rows; ++r)
        std::copy_n(&in.view(r, 0), in.view.cols, &o.view(r, 0));
    return o;
}

/// Applies f(matrix_view<float>) to the rows of x: in place (x itself, returned) when `inplace`,
/// else to a new float32 array returned in x's shape (1-D or 2-D). The new array is the only
/// copy: a float16/float64 x is converted once into it. f runs without the GIL.
template <class F>
py::object transform_rows(py::handle x, const std::string& where, bool inplace, F&& f) {
    if (inplace) {
        py::array a = as_array(x, where);
        if (!py::isinstance<py::array>(x))
            type_error(where + ": inplace=True needs a NumPy array, got " +
                       py::str(py::type::handle_of(x)).cast<std::string>());
        const matrix_view<float> v = inplace_matrix(a, where);
        nogil([&] { f(v); });
        return py::reinterpret_borrow<py::object>(x);
    }
    matrix_input<float> in = float_matrix(x, where, true);
    if (in.copied && py::array_t<float>::check_(in.keep) && in.view.stride == in.view.cols) {
        // The conversion already made a fresh C-contiguous float32 array: transform it.
        py::array a = py::reinterpret_borrow<py::array>(in.keep);
        const matrix_view<float> v(static_cast<float*>(a.mutable_data()), in.view.rows,
                                   in.view.cols);
        nogil([&] { f(v); });
        return a;
    }
    float_output out = copy_of(in);
    nogil([&] { f(out.view); });
    return std::move(out.array);
}

// ---------------------------------------------------------------------------------------
// Options shared by several functions

/// scale_options from the keyword arguments every quantizer takes.
inline scale_options make_scale_options(const std::string& fn, const std::string& rule,
                                        float exponent, int grid, float grid_step, bool refine,
                                        int max_refine_iterations, std::size_t group_size) {
    scale_options o;
    o.rule = parse_choice<scale_rule, 2>(
        fn, "rule", rule, {{{"search", scale_rule::search}, {"max", scale_rule::max}}});
    o.exponent = exponent;
    o.grid = grid;
    o.grid_step = grid_step;
    o.refine = refine;
    o.max_refine_iterations = max_refine_iterations;
    o.group_size = group_size;
    return o;
}

inline a4_range parse_a4_range(const std::string& fn, const std::string& s) {
    return parse_choice<a4_range, 2>(
        fn, "range", s, {{{"symmetric", a4_range::symmetric}, {"full", a4_range::full}}});
}

// ---------------------------------------------------------------------------------------
// Type-erased results shared between translation units

/// quantized_matrix<L> for a level set chosen at run time.
class any_quantized {
  public:
    virtual ~any_quantized() = default;
    virtual std::string_view levels() const noexcept = 0;
    virtual std::size_t rows() const noexcept = 0;
    virtual std::size_t cols() const noexcept = 0;
    virtual std::size_t group_size() const noexcept = 0;
    virtual const matrix<std::uint8_t>& codes() const noexcept = 0;
    virtual const matrix<float>& scales() const noexcept = 0;
    virtual const matrix<float>& zeros() const noexcept = 0;
    virtual bool has_zero_point() const noexcept = 0;
    virtual matrix<float> dequantize() const = 0;
};

template <level_set L>
class quantized_holder final : public any_quantized {
  public:
    explicit quantized_holder(quantized_matrix<L> q) : q_(std::move(q)) {}
    std::string_view levels() const noexcept override { return py_name<L>(); }
    std::size_t rows() const noexcept override { return q_.rows(); }
    std::size_t cols() const noexcept override { return q_.cols(); }
    std::size_t group_size() const noexcept override { return q_.group_size(); }
    const matrix<std::uint8_t>& codes() const noexcept override { return q_.codes(); }
    const matrix<float>& scales() const noexcept override { return q_.scales(); }
    const matrix<float>& zeros() const noexcept override { return q_.zeros(); }
    bool has_zero_point() const noexcept override { return level_traits<L>::has_zero_point; }
    matrix<float> dequantize() const override { return q_.dequantize(); }
    const quantized_matrix<L>& get() const noexcept { return q_; }

  private:
    quantized_matrix<L> q_;
};

template <level_set L>
std::shared_ptr<any_quantized> hold(quantized_matrix<L>&& q) {
    return std::make_shared<quantized_holder<L>>(std::move(q));
}

/// The quantized_matrix<L> inside `q` (whose level set the caller dispatched on).
template <level_set L>
const quantized_matrix<L>& unwrap(const any_quantized& q) {
    return static_cast<const quantized_holder<L>&>(q).get();
}

// ---------------------------------------------------------------------------------------
// Registration of each part of the module (one per translation unit)

void bind_core(py::module_& m);         // errors, threads, levels, quantize, stats, pack, act
void bind_rotations(py::module_& m);    // Hadamard transforms and rotations
void bind_kernels(py::module_& m);      // gptq, Hessians, packed_matrix, gemv/gemm, kv_cache
void bind_methods(py::module_& m);      // MXFP4, TORQ, smoothing, one-bit
void bind_checkpoints(py::module_& m);  // safetensors files, quantized results
void bind_model(py::module_& m);        // Llama models: logits, perplexity

}  // namespace qift::python
