// SPDX-License-Identifier: MIT
// Python bindings of the model layer: a float32 Llama model loaded from a llama2.c checkpoint or a
// Hugging Face folder (model/llama2c.hpp, model/hf.hpp), its next-token logits for one sequence
// (model/llama.hpp) and its perplexity over context windows of token ids (model/eval.hpp).
#include <qift/model/eval.hpp>
#include <qift/model/hf.hpp>
#include <qift/model/llama.hpp>
#include <qift/model/llama2c.hpp>

#include "bindings.hpp"

namespace qift::python {

namespace {

/// A loaded model and where it came from (for repr).
struct py_llama_model {
    llama_model model;
    std::string source;
};

std::shared_ptr<py_llama_model> make_model(llama2c_model&& ckpt, std::string source) {
    auto out = std::make_shared<py_llama_model>();
    out->model = float_model(llama_weights::from(ckpt));
    out->source = std::move(source);
    return out;
}

/// Token ids: a 1-D integer array (or list) read as int, every id in [0, vocab); ValueError
/// naming the first id outside it (and its index), TypeError for a non-integer dtype.
std::vector<int> token_ids(py::handle obj, const llama2c_config& c, const std::string& where) {
    py::array a = as_array(obj, where);
    if (a.ndim() != 1)
        value_error(where + " must be 1-D (one sequence of token ids), got shape " + shape_name(a));
    if (a.size() == 0) value_error(where + " is empty");
    const char kind = a.dtype().kind();
    if (kind != 'i' && kind != 'u')
        type_error(where + " must be an integer array, got dtype " + dtype_name(a));
    std::vector<int> out(static_cast<std::size_t>(a.size()));
    const auto read = [&]<class T>(T) {
        const auto ids = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
        if (!ids) throw py::error_already_set();
        const T* d = ids.data();
        for (std::size_t i = 0; i < out.size(); ++i) {
            bool negative = false;
            if constexpr (std::is_signed_v<T>) negative = d[i] < 0;
            if (negative || d[i] >= T(c.vocab_size))
                value_error(where + ": id " + std::to_string(d[i]) + " at index " +
                            std::to_string(i) + " is outside the vocabulary [0, " +
                            std::to_string(c.vocab_size) + ")");
            out[i] = static_cast<int>(d[i]);
        }
    };
    if (kind == 'u')
        read(std::uint64_t{});
    else
        read(std::int64_t{});
    return out;
}

py::dict config_dict(const llama2c_config& c) {
    py::dict d;
    d["dim"] = c.dim;
    d["hidden_dim"] = c.hidden_dim;
    d["n_layers"] = c.n_layers;
    d["n_heads"] = c.n_heads;
    d["n_kv_heads"] = c.n_kv_heads;
    d["vocab_size"] = c.vocab_size;
    d["seq_len"] = c.seq_len;
    d["head_dim"] = c.head_dim();
    d["shared_classifier"] = c.shared_classifier;
    d["rope_theta"] = c.rope_theta;
    d["norm_eps"] = c.norm_eps;
    return d;
}

/// Next-token logits [len(ids)][vocab] of one sequence from position 0 (one prefill).
py::array_t<float> logits(const py_llama_model& self, py::handle ids_obj) {
    const llama_model& m = self.model;
    const std::vector<int> ids = token_ids(ids_obj, m.config, "qift.LlamaModel.logits: ids");
    if (ids.size() > std::size_t(m.config.seq_len))
        value_error("qift.LlamaModel.logits: " + std::to_string(ids.size()) +
                    " ids exceed the model's context of " + std::to_string(m.config.seq_len) +
                    " tokens");
    matrix<float> out = nogil([&] {
        llama_state s(m, ids.size());
        const matrix_view<const float> r = forward(m, s, ids);
        return matrix<float>::from(r);
    });
    return to_numpy(std::move(out));
}

py::dict perplexity(const py_llama_model& self, py::handle ids_obj, std::size_t windows,
                    const py_llama_model* reference) {
    const llama_model& m = self.model;
    const std::vector<int> ids = token_ids(ids_obj, m.config, "qift.LlamaModel.perplexity: ids");
    eval_options opt;
    opt.max_windows = windows;
    if (reference) opt.reference = &reference->model;
    const eval_result r = nogil([&] { return evaluate(m, ids, opt); });
    py::dict d;
    d["perplexity"] = r.perplexity;
    d["nll"] = r.nll;
    d["tokens"] = r.tokens;
    d["windows"] = r.windows;
    if (reference) {
        d["kl"] = r.kl;
        d["top1"] = r.top1;
    }
    return d;
}

}  // namespace

void bind_model(py::module_& m) {
    py::class_<py_llama_model, std::shared_ptr<py_llama_model>>(
        m, "LlamaModel",
        "A float32 Llama model (qift::llama_model with float linears and a float KV cache), "
        "loaded with LlamaModel.from_llama2c(path) or LlamaModel.from_hf(folder). Token ids are "
        "1-D integer arrays (or lists) with every id in [0, vocab_size).")
        .def_static(
            "from_llama2c",
            [](const std::string& path) {
                return nogil([&] { return make_model(load_llama2c(path), path); });
            },
            py::arg("path"),
            "Loads a llama2.c checkpoint (qift::load_llama2c); qift.Error when the file cannot "
            "be read or its size is not the size its header implies.")
        .def_static(
            "from_hf",
            [](const std::string& dir) {
                return nogil([&] { return make_model(load_hf_llama(dir), dir); });
            },
            py::arg("folder"),
            "Loads a Hugging Face Llama folder: config.json and model.safetensors or its shards "
            "(qift::load_hf_llama); qift.Error naming the file for anything missing or "
            "unsupported.")
        .def_property_readonly(
            "config", [](const py_llama_model& s) { return config_dict(s.model.config); },
            "dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len (the context), "
            "head_dim, shared_classifier, rope_theta and norm_eps, as a dict.")
        .def("logits", &logits, py::arg("ids"),
             "Next-token logits, float32 [len(ids)][vocab_size]: row t is the model's output "
             "after reading ids[0..t] from position 0 (one prefill; 1 <= len(ids) <= seq_len). "
             "ValueError for an id outside the vocabulary or too many ids. Runs without the GIL.")
        .def("perplexity", &perplexity, py::arg("ids"), py::kw_only(), py::arg("windows") = 0,
             py::arg("reference") = py::none(),
             "Perplexity over non-overlapping windows (qift::evaluate): with T = seq_len, window k "
             "reads ids[kT:(k+1)T] from position 0 and predicts ids[kT+1:(k+1)T+1]; windows=N "
             "evaluates the first N (0: every whole window). Returns a dict: perplexity "
             "(exp(nll)), nll (mean nats per token), tokens and windows, and with a reference "
             "LlamaModel also kl (mean KL(reference || model) per token) and top1 (argmax "
             "agreement). qift.Error when the ids hold no whole window. Runs without the GIL.")
        .def("__repr__", [](const py_llama_model& s) {
            const auto& c = s.model.config;
            return "LlamaModel('" + s.source + "', dim=" + std::to_string(c.dim) +
                   ", n_layers=" + std::to_string(c.n_layers) +
                   ", vocab_size=" + std::to_string(c.vocab_size) +
                   ", seq_len=" + std::to_string(c.seq_len) + ")";
        });
}

}  // namespace qift::python
