// SPDX-License-Identifier: MIT
// Umbrella header: includes every public qift header and nothing else.
#pragma once

#include "act.hpp"
#include "core.hpp"
#include "gemm.hpp"
#include "gemv.hpp"
#include "gptq.hpp"
#include "hadamard.hpp"
#include "kv_cache.hpp"
#include "levels.hpp"
#include "model/calibrate.hpp"
#include "model/eval.hpp"
#include "model/linear.hpp"
#include "model/llama.hpp"
#include "model/llama2c.hpp"
#include "model/quarot.hpp"
#include "model/tokenizer.hpp"
#include "mx.hpp"
#include "npy.hpp"
#include "pack.hpp"
#include "scale.hpp"
#include "stats.hpp"
