// SPDX-License-Identifier: MIT
// Python bindings of safetensors.hpp: reading tensors (zero-copy read-only views of the mapped
// file where NumPy has the dtype), and saving / loading quantized matrices with their level set.
#include <bit>

#include <qift/safetensors.hpp>

#include "bindings.hpp"

namespace qift::python {

namespace {

// The NumPy dtype string of a safetensors dtype, or "" when NumPy has none (BF16).
const char* numpy_dtype(safetensors_dtype d) {
    switch (d) {
        case safetensors_dtype::F64:
            return "<f8";
        case safetensors_dtype::F32:
            return "<f4";
        case safetensors_dtype::F16:
            return "<f2";
        case safetensors_dtype::BF16:
            return "";
        case safetensors_dtype::I64:
            return "<i8";
        case safetensors_dtype::I32:
            return "<i4";
        case safetensors_dtype::I16:
            return "<i2";
        case safetensors_dtype::I8:
            return "i1";
        case safetensors_dtype::U64:
            return "<u8";
        case safetensors_dtype::U32:
            return "<u4";
        case safetensors_dtype::U16:
            return "<u2";
        case safetensors_dtype::U8:
            return "u1";
        case safetensors_dtype::BOOL:
            return "?";
    }
    return "";
}

std::vector<py::ssize_t> shape_of(const safetensors_tensor& t) {
    return std::vector<py::ssize_t>(t.shape.begin(), t.shape.end());
}

py::object tensor_array(py::object self, const std::string& name) {
    const auto& f = self.cast<const safetensors_file&>();
    const safetensors_tensor& t = f.at(name);
    const char* dt = numpy_dtype(t.dtype);
    if (*dt == '\0') {
        // bfloat16: NumPy has no such dtype; an exact float32 copy.
        std::vector<float> v = f.to_float(name);
        return to_numpy(std::move(v), shape_of(t));
    }
    if (t.dtype == safetensors_dtype::BOOL) (void)f.view<bool>(name);  // validates 0/1
    const py::dtype dtype(dt);
    std::vector<py::ssize_t> strides(t.shape.size());
    py::ssize_t s = static_cast<py::ssize_t>(dtype_size(t.dtype));
    for (std::size_t k = t.shape.size(); k-- > 0;) {
        strides[k] = s;
        s *= static_cast<py::ssize_t>(t.shape[k]);
    }
    py::array a(dtype, shape_of(t), strides, t.bytes.data(), self);
    py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
    return a;
}

safetensors_dtype parse_float_dtype(const std::string& s) {
    return parse_choice<safetensors_dtype, 4>("qift.save_safetensors", "dtype", s,
                                              {{{"F32", safetensors_dtype::F32},
                                                {"F16", safetensors_dtype::F16},
                                                {"BF16", safetensors_dtype::BF16},
                                                {"F64", safetensors_dtype::F64}}});
}

// Calls f(L{}) for the level set stored under a C++ name (level_set_name<L>()).
template <class F, class... Ls>
std::shared_ptr<any_quantized> by_stored_name(const std::string& name, F& f, level_list<Ls...>) {
    std::shared_ptr<any_quantized> out;
    ((out || (name == level_set_name<Ls>() ? (out = f(Ls{}), true) : false)), ...);
    if (!out)
        value_error("qift.load_quantized: the file stores level set '" + name +
                    "', which this module does not instantiate");
    return out;
}

void save(const std::string& path, py::dict quantized, py::dict tensors, py::dict metadata,
          const std::string& dtype) {
    safetensors_writer w;
    const safetensors_dtype d = parse_float_dtype(dtype);
    for (auto [key, value] : quantized) {
        const std::string prefix = py::str(key).cast<std::string>();
        const auto& q = value.cast<const any_quantized&>();
        with_level_set("qift.save_safetensors", q.levels(), [&](auto l) {
            using L = decltype(l);
            add_quantized(w, prefix, unwrap<L>(q));
            return 0;
        });
    }
    for (auto [key, value] : tensors) {
        const std::string name = py::str(key).cast<std::string>();
        const auto in = float_flat(value, "qift.save_safetensors: tensor '" + name + "'");
        const py::array a = as_array(value, name);
        std::vector<std::size_t> shape;
        for (py::ssize_t k = 0; k < a.ndim(); ++k)
            shape.push_back(static_cast<std::size_t>(a.shape(k)));
        w.add(name, in.view.row(0), std::move(shape), d);
    }
    for (auto [key, value] : metadata)
        w.set_metadata(py::str(key).cast<std::string>(), py::str(value).cast<std::string>());
    nogil([&] { w.write(path); });
}

}  // namespace

void bind_checkpoints(py::module_& m) {
    py::class_<safetensors_file>(
        m, "SafetensorsFile",
        "A safetensors file, memory-mapped and validated (qift::safetensors_file). tensor(name) "
        "(or file[name]) is a read-only NumPy view of the mapped bytes for every dtype NumPy has "
        "(F64, F32, F16, integers, BOOL; the view keeps the file open) and an exact float32 copy "
        "for BF16; to_float(name) converts any dtype to float32.")
        .def(py::init<const std::string&>(), py::arg("path"))
        .def_static(
            "from_bytes",
            [](py::bytes data, const std::string& what) {
                return safetensors_file::from_bytes(std::string_view(data), what);
            },
            py::arg("data"), py::arg("name") = "buffer")
        .def_property_readonly("path", &safetensors_file::path)
        .def_property_readonly("memory_mapped", &safetensors_file::memory_mapped)
        .def_property_readonly("metadata",
                               [](const safetensors_file& f) {
                                   py::dict d;
                                   for (const auto& [k, v] : f.metadata()) d[py::str(k)] = v;
                                   return d;
                               })
        .def("keys",
             [](const safetensors_file& f) {
                 std::vector<std::string> names;
                 for (const auto& t : f.tensors()) names.push_back(t.name);
                 return names;
             })
        .def("__len__", [](const safetensors_file& f) { return f.tensors().size(); })
        .def("__contains__", [](const safetensors_file& f,
                                const std::string& name) { return f.find(name) != nullptr; })
        .def(
            "dtype",
            [](const safetensors_file& f, const std::string& name) {
                return std::string(dtype_name(f.at(name).dtype));
            },
            py::arg("name"), "The tensor's safetensors dtype ('F32', 'BF16', ...).")
        .def(
            "shape",
            [](const safetensors_file& f, const std::string& name) {
                return py::tuple(py::cast(f.at(name).shape));
            },
            py::arg("name"))
        .def("tensor", &tensor_array, py::arg("name"))
        .def("__getitem__", &tensor_array, py::arg("name"))
        .def(
            "to_float",
            [](const safetensors_file& f, const std::string& name) {
                const auto& t = f.at(name);
                return to_numpy(f.to_float(name), shape_of(t));
            },
            py::arg("name"), "The tensor converted to float32 (a copy, any dtype).")
        .def("__repr__", [](const safetensors_file& f) {
            return "SafetensorsFile('" + f.path() +
                   "', tensors=" + std::to_string(f.tensors().size()) + ")";
        });

    m.def("save_safetensors", &save, py::arg("path"), py::arg("quantized") = py::dict(),
          py::kw_only(), py::arg("tensors") = py::dict(), py::arg("metadata") = py::dict(),
          py::arg("dtype") = "F32",
          "Writes a safetensors file: every QuantizedMatrix of `quantized` under its key (prefix"
          ".codes U8, prefix.scales F32, prefix.zeros F32 for affine sets, and the level set's "
          "name, table, bits and group size in the metadata; qift::add_quantized), float arrays "
          "of `tensors` as `dtype` ('F32', 'F16', 'BF16' or 'F64'), and string metadata.");
    m.def(
        "load_quantized",
        [](py::object source, const std::string& prefix) {
            const safetensors_file f = py::isinstance<safetensors_file>(source)
                                           ? source.cast<safetensors_file>()
                                           : safetensors_file(source.cast<std::string>());
            const std::string name = stored_level_set(f, prefix);
            auto read = [&](auto l) -> std::shared_ptr<any_quantized> {
                using L = decltype(l);
                return hold(read_quantized<L>(f, prefix));
            };
            return by_stored_name(name, read, weight_levels{});
        },
        py::arg("file"), py::arg("prefix"),
        "The QuantizedMatrix that save_safetensors stored under `prefix` (file: a path or a "
        "SafetensorsFile); the stored level set and table must match a built-in one exactly.");
}

}  // namespace qift::python
