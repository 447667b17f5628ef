// SPDX-License-Identifier: MIT
// Python bindings of hadamard.hpp: Hadamard sizes and matrices, FWHT and Hadamard transforms of
// vectors and matrix rows, and qift::rotation (randomized Hadamard / seeded orthogonal).
#include <qift/hadamard.hpp>

#include "bindings.hpp"

namespace qift::python {

namespace {

hadamard_norm parse_norm(const std::string& fn, const std::string& s) {
    return parse_choice<hadamard_norm, 2>(
        fn, "norm", s,
        {{{"orthonormal", hadamard_norm::orthonormal}, {"none", hadamard_norm::none}}});
}

// Calls f(row span) on every row of m, rows split through qift::parallel_for.
template <class F>
void each_row(matrix_view<float> m, const F& f) {
    parallel_for(m.rows, [&](std::size_t b, std::size_t e) {
        for (std::size_t r = b; r < e; ++r) f(m.row(r));
    });
}

const char* kind_name(rotation::kind k) {
    return k == rotation::kind::hadamard ? "hadamard" : "random_orthogonal";
}

}  // namespace

void bind_rotations(py::module_& m) {
    m.def("is_hadamard_size", &is_hadamard_size, py::arg("n"),
          "True when hadamard_transform supports length n (n = K·2^m, K a product of Paley "
          "orders).");
    m.def(
        "hadamard_sizes_near",
        [](std::size_t n) {
            const auto s = supported_hadamard_sizes_near(n);
            return py::make_tuple(s.below, s.above);
        },
        py::arg("n"), "(below, above): the nearest supported sizes strictly below and above n.");
    m.def(
        "hadamard_factorization",
        [](std::size_t n) -> py::object {
            const auto f = find_hadamard_factorization(n);
            if (!f) return py::none();
            py::dict d;
            d["power_of_two"] = f->power_of_two;
            d["blocks"] = f->blocks;
            return d;
        },
        py::arg("n"),
        "How H_n is built: {'power_of_two': 2^m, 'blocks': [Paley orders]}, or None when no "
        "construction reaches n.");
    m.def(
        "hadamard_matrix",
        [](std::size_t n) { return to_numpy(nogil([&] { return hadamard_matrix(n); })); },
        py::arg("n"),
        "The explicit ±1 Hadamard matrix H_n (float32 [n][n], unnormalized: H·Hᵀ = n·I); "
        "hadamard_transform(x) = H_n·x/√n.");

    m.def(
        "fwht",
        [](py::handle x, const std::string& norm, bool inplace) {
            const hadamard_norm nm = parse_norm("qift.fwht", norm);
            return transform_rows(x, "qift.fwht: x", inplace,
                                  [&](matrix_view<float> v) { fwht_rows(v, nm); });
        },
        py::arg("x"), py::arg("norm") = "orthonormal", py::kw_only(), py::arg("inplace") = false,
        "Walsh-Hadamard transform of a vector, or of every row of a 2-D array, of power-of-two "
        "length: x <- H·x·s (s = 1/√n for 'orthonormal', 1 for 'none'). Returns a new float32 "
        "array, or transforms x itself with inplace=True (float32, contiguous rows).");
    m.def(
        "hadamard_transform",
        [](py::handle x, const std::string& norm, bool transpose, bool inplace) {
            const hadamard_norm nm = parse_norm("qift.hadamard_transform", norm);
            return transform_rows(
                x, "qift.hadamard_transform: x", inplace, [&](matrix_view<float> v) {
                    if (!transpose) return hadamard_transform_rows(v, nm);
                    // Check once on the calling thread, then per row.
                    if (v.rows > 0) hadamard_transform_transpose(v.row(0), nm);
                    matrix_view<float> rest(v.rows > 1 ? &v(1, 0) : v.data,
                                            v.rows > 0 ? v.rows - 1 : 0, v.cols, v.stride);
                    each_row(rest,
                             [&](std::span<float> r) { hadamard_transform_transpose(r, nm); });
                });
        },
        py::arg("x"), py::arg("norm") = "orthonormal", py::kw_only(), py::arg("transpose") = false,
        py::arg("inplace") = false,
        "Hadamard transform x <- H_n·x·s of a vector or of every row, for any supported n "
        "(is_hadamard_size); transpose=True applies H_nᵀ (the inverse when orthonormal). "
        "Returns a new float32 array unless inplace=True.");

    py::class_<rotation> rot(
        m, "Rotation",
        "An n×n orthogonal Q applied without forming it (qift::rotation): a randomized Hadamard "
        "H_n·diag(s)/√n, or a seeded Haar-random orthogonal matrix. Vectors are rows: "
        "apply(x) = x·Q; fold_into_input(W) = W·Q; fold_into_output(W) = Qᵀ·W.");
    rot.def_static(
           "hadamard",
           [](std::size_t n, std::uint64_t seed) { return rotation::hadamard(n, seed); },
           py::arg("n"), py::arg("seed") = 0,
           "Randomized Hadamard rotation of order n (seed 0: no sign flips).")
        .def_static(
            "random_orthogonal",
            [](std::size_t n, std::uint64_t seed) {
                return nogil([&] { return rotation::random_orthogonal(n, seed); });
            },
            py::arg("n"), py::arg("seed"), "Seeded Haar-random orthogonal Q (O(n³) to build).")
        .def_static(
            "for_size",
            [](std::size_t n, std::uint64_t seed) {
                return nogil([&] { return rotation::for_size(n, seed); });
            },
            py::arg("n"), py::arg("seed"),
            "hadamard(n, seed) when is_hadamard_size(n), random_orthogonal(n, seed) otherwise.")
        .def_property_readonly("size", &rotation::size)
        .def_property_readonly("kind", [](const rotation& r) { return kind_name(r.type()); })
        .def_property_readonly("seed", &rotation::seed)
        .def(
            "to_matrix", [](const rotation& r) { return to_numpy(r.to_matrix()); },
            "The explicit float32 Q [n][n].")
        .def("__repr__", [](const rotation& r) {
            return std::string("Rotation(kind='") + kind_name(r.type()) +
                   "', size=" + std::to_string(r.size()) + ", seed=" + std::to_string(r.seed()) +
                   ")";
        });

    // The row-vector transforms: x may be one vector [n] or rows [m][n].
    const auto row_method = [&](const char* name, void (rotation::*fn)(matrix_view<float>) const,
                                const char* doc) {
        rot.def(
            name,
            [fn, name](const rotation& r, py::handle x, bool inplace) {
                return transform_rows(x, std::string("qift.Rotation.") + name + ": x", inplace,
                                      [&](matrix_view<float> v) { (r.*fn)(v); });
            },
            py::arg("x"), py::kw_only(), py::arg("inplace") = false, doc);
    };
    row_method("apply", &rotation::rotate_rows, "x·Q for a vector or every row (new array).");
    row_method("rotate_rows", &rotation::rotate_rows, "M·Q (rows rotated).");
    row_method("apply_transpose", &rotation::rotate_rows_transpose,
               "x·Qᵀ for a vector or every row: the inverse of apply.");
    row_method("rotate_rows_transpose", &rotation::rotate_rows_transpose, "M·Qᵀ.");
    row_method("fold_into_input", &rotation::fold_into_input,
               "W·Q for W [out][n]: the layer then takes inputs rotated by apply.");

    // The column transforms need a 2-D matrix.
    const auto column_method = [&](const char* name, void (rotation::*fn)(matrix_view<float>) const,
                                   const char* doc) {
        rot.def(
            name,
            [fn, name](const rotation& r, py::handle x, bool inplace) {
                const std::string where = std::string("qift.Rotation.") + name + ": w";
                if (py::array a = as_array(x, where); a.ndim() != 2) require_ndim(a, where, false);
                return transform_rows(x, where, inplace, [&](matrix_view<float> v) { (r.*fn)(v); });
            },
            py::arg("w"), py::kw_only(), py::arg("inplace") = false, doc);
    };
    column_method("rotate_columns", &rotation::rotate_columns, "Qᵀ·M (columns rotated).");
    column_method("rotate_columns_transpose", &rotation::rotate_columns_transpose, "Q·M.");
    column_method("fold_into_output", &rotation::fold_into_output,
                  "Qᵀ·W for W [n][in]: the layer then emits outputs rotated as by apply.");
}

}  // namespace qift::python
