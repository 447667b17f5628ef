// SPDX-License-Identifier: MIT
// Run-time choice of the instruction-set target on x86-64: the four targets qift instantiates
// its kernels for, CPU detection (cpuid + xgetbv), the QIFT_TARGET override, and macros that let
// an application compile ITS OWN function once per target and call the best instance.
//
// The default stays the compile-time choice: build with -march=... and every qift kernel uses
// what that target has. Run-time dispatch is an addition for programs that ship one binary to
// every x86-64 CPU. It is a multi-translation-unit scheme: the application's code that calls
// qift (a layer's forward pass, a whole model step) goes into source files that CMake compiles
// once per target (cmake/QiftDispatch.cmake, qift_add_dispatch_sources), each with that target's
// flags and -DQIFT_DISPATCH_TARGET=<name>. Each copy sees qift in its own inline namespace
// (detail/target.hpp: qift::isa_x86v1, qift::isa_x86v3, ...), so the copies never share a
// mangled name; the macros below give each copy's entry point a per-target name and generate, in
// the lowest target's copy, a selector that returns the instance for this CPU.
//
//     // app_kernels.hpp, seen by every translation unit: only std types or the application's
//     // own plain types cross the boundary (qift's types differ per target, that is the point)
//     #include <qift/dispatch.hpp>
//     using forward_fn = void(std::span<const float> x, std::span<float> y);
//     QIFT_DISPATCH_DECLARE(forward, forward_fn);
//
//     // app_kernels.cpp, listed in qift_add_dispatch_sources(app SOURCES app_kernels.cpp)
//     #include "app_kernels.hpp"
//     #include <qift/gemv.hpp>
//     void QIFT_DISPATCH_INSTANCE(forward)(std::span<const float> x, std::span<float> y) {
//         ... qift calls, compiled for this copy's target ...
//     }
//     QIFT_DISPATCH_REGISTER(forward, forward_fn);
//
//     // main.cpp (compiled for the baseline: no -march beyond x86-64)
//     forward_fn* f = forward_select();  // QIFT_TARGET, else the best compiled target
//     f(x, y);
//
// Rules of the scheme:
//  * Types that cross from one target to another (parameters, return values, exceptions) must
//    not live in qift's target namespace: std types, raw pointers, spans, and the application's
//    own structs are fine; qift::matrix, packed_matrix, ... are per-target types. A signature
//    that names one fails to link (the mangled names differ), which is the intended guard.
//    qift::error is the exception: it is shared by every target, so callers catch it.
//  * qift's global state is per target too: the executor of set_parallel_executor, the thread
//    pool, the Hadamard plan cache. Configure it from inside the dispatched function (e.g. a
//    dispatched `setup` function), not from the baseline code.
//  * The caveat of every multi-target build (this one included): inline functions that are NOT
//    in qift's target namespace (std::vector<float>::push_back, std::sort<float*>, xsimd's and
//    other libraries' non-template inline functions) are emitted by every copy as COMDAT
//    sections with one mangled name, and the linker keeps the FIRST copy it sees. The object
//    files must therefore come in ascending target order on the link line, the baseline first:
//    then the copy kept for each such function comes from the lowest target that uses it, and
//    runs on every CPU that runs any of its callers. qift_add_dispatch_sources guarantees the
//    order within its objects and puts them before the target's own sources; the target's own
//    sources must be compiled for the baseline as well (set no -march beyond x86-64 on the
//    target). Do not combine with -flto (link-time optimization merges the copies).
//  * The compile-time path: without QIFT_DISPATCH_TARGET (a plain build of the same sources)
//    the macros define one instance, name_qift_native, and the selector returns it; on x86 it
//    still checks the CPU and QIFT_TARGET against compiled_target (a QIFT_TARGET naming another
//    target is an error: not compiled in). Non-x86 builds (and x86 compilers other than GCC and
//    clang) have only this path, and ignore QIFT_TARGET.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "core.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
/// 1 where run-time dispatch exists (x86-64 with GCC or clang), 0 elsewhere.
#define QIFT_DISPATCH_X86 1
#else
#define QIFT_DISPATCH_X86 0
#endif

// Outside the target namespace, like qift::error: the selector generated in one target's copy
// and the baseline code that calls it both name this type.
namespace qift {

/// The x86-64 targets of run-time dispatch, in ascending order (each one's CPUs run every lower
/// one). Flags: target_flags(). Feature sets (what cpu_supports() checks):
///   baseline     x86-64: SSE2 (every x86-64 CPU)
///   avx2         x86-64-v3: + SSE3..SSE4.2, POPCNT, CX16, LAHF, AVX, AVX2, FMA, BMI1, BMI2,
///                F16C, LZCNT, MOVBE, XSAVE, and OS support of the ymm state (Haswell, Zen 1+)
///   avx512       x86-64-v4: + AVX-512 F, CD, DQ, BW, VL and OS support of the zmm and opmask
///                state (Skylake-X, Cascade Lake); no VNNI, so qift's int8 dots use vpmaddubsw
///   avx512_vnni  x86-64-v4 + AVX512-VNNI + AVX512-VBMI (Ice Lake, Sapphire Rapids, Zen 4+):
///                qift's fastest integer kernels (vpdpbusd, vpermb)
enum class x86_target : std::uint8_t { baseline, avx2, avx512, avx512_vnni };

}  // namespace qift

namespace qift::inline QIFT_ISA {

/// Number of x86_target values, and all of them in ascending order.
inline constexpr std::size_t x86_target_count = 4;
inline constexpr std::array<x86_target, x86_target_count> x86_targets{
    x86_target::baseline, x86_target::avx2, x86_target::avx512, x86_target::avx512_vnni};

/// A set of targets as a bit mask: bit i for the target of value i (QIFT_DISPATCH_TARGETS uses
/// the same encoding).
using x86_target_set = std::uint32_t;
inline constexpr x86_target_set all_x86_targets = (1u << x86_target_count) - 1;
constexpr x86_target_set target_bit(x86_target t) noexcept {
    return x86_target_set{1} << static_cast<unsigned>(t);
}

/// The name of a target ("baseline", "avx2", "avx512", "avx512_vnni"): what QIFT_TARGET,
/// QIFT_DISPATCH_TARGET and the TARGETS of qift_add_dispatch_sources accept.
constexpr std::string_view target_name(x86_target t) noexcept {
    switch (t) {
        case x86_target::baseline:
            return "baseline";
        case x86_target::avx2:
            return "avx2";
        case x86_target::avx512:
            return "avx512";
        case x86_target::avx512_vnni:
            return "avx512_vnni";
    }
    return "?";
}

/// The GCC (>= 11) and clang (>= 12) flags that compile for a target, space-separated; the
/// same as QIFT_DISPATCH_FLAGS_<name> in cmake/QiftDispatch.cmake. A later -march overrides an
/// earlier one (-march=native included), so they may follow the project's own flags.
constexpr std::string_view target_flags(x86_target t) noexcept {
    switch (t) {
        case x86_target::baseline:
            return "-march=x86-64";
        case x86_target::avx2:
            return "-march=x86-64-v3";
        case x86_target::avx512:
            return "-march=x86-64-v4";
        case x86_target::avx512_vnni:
            return "-march=x86-64-v4 -mavx512vnni -mavx512vbmi";
    }
    return "";
}

/// The target named `name`, or nullopt when it names none.
constexpr std::optional<x86_target> target_from_name(std::string_view name) noexcept {
    for (x86_target t : x86_targets)
        if (target_name(t) == name) return t;
    return std::nullopt;
}

/// The names of the targets in `set`, comma-separated ("baseline, avx2"), "none" when empty.
inline std::string target_names(x86_target_set set) {
    std::string out;
    for (x86_target t : x86_targets)
        if (set & target_bit(t)) {
            if (!out.empty()) out += ", ";
            out += target_name(t);
        }
    return out.empty() ? std::string("none") : out;
}

/// The name of this translation unit's instruction-set namespace, e.g. "isa_x86v3" (see
/// detail/target.hpp): an inline function whose body differs per target, so each target's copy
/// has its own symbol (qift::isa_x86v1::isa_name(), qift::isa_x86v3::isa_name(), ...).
constexpr const char* isa_name() noexcept {
    return QIFT_ISA_NAME;
}

#if QIFT_DISPATCH_X86

/// The highest target whose features this translation unit's flags enable (the compile-time
/// choice): avx512_vnni for -march=sapphirerapids or native on such a CPU, baseline for
/// -march=x86-64 or x86-64-v2.
#if QIFT_DETAIL_X86V4 && defined(__AVX512VNNI__) && defined(__AVX512VBMI__)
inline constexpr x86_target compiled_target = x86_target::avx512_vnni;
#elif QIFT_DETAIL_X86V4
inline constexpr x86_target compiled_target = x86_target::avx512;
#elif QIFT_DETAIL_X86V3
inline constexpr x86_target compiled_target = x86_target::avx2;
#else
inline constexpr x86_target compiled_target = x86_target::baseline;
#endif

namespace detail {

/// One CPU feature that a target needs: the cpuid register bit, and its name for messages.
enum class cpuid_reg : std::uint8_t { l1_ecx, l1_edx, l7_ebx, l7_ecx, le1_ecx, xcr0 };
struct cpu_feature {
    cpuid_reg reg;
    unsigned bit;
    const char* name;
};

/// The features each target adds to the one below (x86-64 psABI levels; xcr0: the OS saves
/// that register state, which AVX and AVX-512 code needs besides the cpuid bits).
inline constexpr cpu_feature x86_v3_features[] = {{cpuid_reg::l1_ecx, 0, "SSE3"},
                                                  {cpuid_reg::l1_ecx, 9, "SSSE3"},
                                                  {cpuid_reg::l1_ecx, 13, "CX16"},
                                                  {cpuid_reg::l1_ecx, 19, "SSE4.1"},
                                                  {cpuid_reg::l1_ecx, 20, "SSE4.2"},
                                                  {cpuid_reg::l1_ecx, 23, "POPCNT"},
                                                  {cpuid_reg::le1_ecx, 0, "LAHF-SAHF"},
                                                  {cpuid_reg::l1_ecx, 12, "FMA"},
                                                  {cpuid_reg::l1_ecx, 22, "MOVBE"},
                                                  {cpuid_reg::l1_ecx, 26, "XSAVE"},
                                                  {cpuid_reg::l1_ecx, 27, "OSXSAVE"},
                                                  {cpuid_reg::l1_ecx, 28, "AVX"},
                                                  {cpuid_reg::l1_ecx, 29, "F16C"},
                                                  {cpuid_reg::l7_ebx, 3, "BMI1"},
                                                  {cpuid_reg::l7_ebx, 5, "AVX2"},
                                                  {cpuid_reg::l7_ebx, 8, "BMI2"},
                                                  {cpuid_reg::le1_ecx, 5, "LZCNT"},
                                                  {cpuid_reg::xcr0, 1, "OS-saved XMM state"},
                                                  {cpuid_reg::xcr0, 2, "OS-saved YMM state"}};
inline constexpr cpu_feature x86_v4_features[] = {{cpuid_reg::l7_ebx, 16, "AVX512F"},
                                                  {cpuid_reg::l7_ebx, 17, "AVX512DQ"},
                                                  {cpuid_reg::l7_ebx, 28, "AVX512CD"},
                                                  {cpuid_reg::l7_ebx, 30, "AVX512BW"},
                                                  {cpuid_reg::l7_ebx, 31, "AVX512VL"},
                                                  {cpuid_reg::xcr0, 5, "OS-saved opmask state"},
                                                  {cpuid_reg::xcr0, 6, "OS-saved ZMM_Hi256 state"},
                                                  {cpuid_reg::xcr0, 7, "OS-saved Hi16_ZMM state"}};
inline constexpr cpu_feature x86_vnni_features[] = {{cpuid_reg::l7_ecx, 11, "AVX512VNNI"},
                                                    {cpuid_reg::l7_ecx, 1, "AVX512VBMI"}};

/// The cpuid and xgetbv words the features above are read from.
struct cpuid_words {
    std::uint32_t l1_ecx = 0, l1_edx = 0, l7_ebx = 0, l7_ecx = 0, le1_ecx = 0;
    std::uint64_t xcr0 = 0;

    bool has(const cpu_feature& f) const noexcept {
        std::uint64_t w = 0;
        switch (f.reg) {
            case cpuid_reg::l1_ecx:
                w = l1_ecx;
                break;
            case cpuid_reg::l1_edx:
                w = l1_edx;
                break;
            case cpuid_reg::l7_ebx:
                w = l7_ebx;
                break;
            case cpuid_reg::l7_ecx:
                w = l7_ecx;
                break;
            case cpuid_reg::le1_ecx:
                w = le1_ecx;
                break;
            case cpuid_reg::xcr0:
                w = xcr0;
                break;
        }
        return (w >> f.bit) & 1u;
    }
};

/// Reads this CPU's words (cpuid leaves 1, 7.0 and 0x80000001; XCR0 through xgetbv when the OS
/// has enabled it, OSXSAVE). Plain cpuid and inline xgetbv: compiled for the baseline.
inline cpuid_words read_cpuid() noexcept {
    cpuid_words w;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return w;
    w.l1_ecx = c;
    w.l1_edx = d;
    if (__get_cpuid_max(0, nullptr) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        w.l7_ebx = b;
        w.l7_ecx = c;
    }
    if (__get_cpuid(0x80000001u, &a, &b, &c, &d)) w.le1_ecx = c;
    if ((w.l1_ecx >> 27) & 1u) {
        std::uint32_t lo = 0, hi = 0;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0u));
        w.xcr0 = (std::uint64_t{hi} << 32) | lo;
    }
    return w;
}

/// This CPU's words, read once.
inline const cpuid_words& cpu_words() noexcept {
    static const cpuid_words w = read_cpuid();
    return w;
}

/// The names of the features target t needs that `w` lacks, comma-separated ("" when none).
inline std::string missing_features(x86_target t, const cpuid_words& w) {
    std::string out;
    const auto check = [&](const auto& list) {
        for (const cpu_feature& f : list)
            if (!w.has(f)) {
                if (!out.empty()) out += ", ";
                out += f.name;
            }
    };
    if (t >= x86_target::avx2) check(x86_v3_features);
    if (t >= x86_target::avx512) check(x86_v4_features);
    if (t >= x86_target::avx512_vnni) check(x86_vnni_features);
    return out;
}

}  // namespace detail

/// True when this CPU and OS run code compiled for t (every feature of the table above,
/// including the OS's saving of the ymm / zmm registers). baseline: always true.
inline bool cpu_supports(x86_target t) noexcept {
    const detail::cpuid_words& w = detail::cpu_words();
    const auto all = [&](const auto& list) {
        for (const detail::cpu_feature& f : list)
            if (!w.has(f)) return false;
        return true;
    };
    switch (t) {
        case x86_target::baseline:
            return true;
        case x86_target::avx2:
            return all(detail::x86_v3_features);
        case x86_target::avx512:
            return all(detail::x86_v3_features) && all(detail::x86_v4_features);
        case x86_target::avx512_vnni:
            return all(detail::x86_v3_features) && all(detail::x86_v4_features) &&
                   all(detail::x86_vnni_features);
    }
    return false;
}

/// The set of targets this CPU runs.
inline x86_target_set supported_targets() noexcept {
    x86_target_set s = 0;
    for (x86_target t : x86_targets)
        if (cpu_supports(t)) s |= target_bit(t);
    return s;
}

/// The highest target this CPU runs (baseline at least).
inline x86_target best_target() noexcept {
    x86_target best = x86_target::baseline;
    for (x86_target t : x86_targets)
        if (cpu_supports(t)) best = t;
    return best;
}

/// The target the environment variable QIFT_TARGET names, nullopt when it is unset or empty
/// (automatic choice). Throws qift::error when it names no target (the message lists the valid
/// names) or a target this CPU lacks (naming the missing features).
inline std::optional<x86_target> forced_target() {
    const char* env = std::getenv("QIFT_TARGET");
    if (env == nullptr || *env == '\0') return std::nullopt;
    const std::optional<x86_target> t = target_from_name(env);
    detail::require(t.has_value(), [&] {
        return "QIFT_TARGET='" + std::string(env) +
               "' is not a target; valid names: " + target_names(all_x86_targets) +
               " (or empty for the automatic choice)";
    });
    detail::require(cpu_supports(*t), [&] {
        return "QIFT_TARGET=" + std::string(env) + ": this CPU lacks " +
               detail::missing_features(*t, detail::cpu_words()) + " (it runs up to " +
               std::string(target_name(best_target())) + ")";
    });
    return t;
}

/// The target to run among `compiled` (the targets a function was compiled for): the one
/// QIFT_TARGET forces, else the highest compiled target this CPU runs. Throws qift::error for a
/// bad QIFT_TARGET (see forced_target), a forced target not in `compiled`, or when this CPU
/// runs none of `compiled`.
inline x86_target select_target(x86_target_set compiled = all_x86_targets) {
    if (const std::optional<x86_target> forced = forced_target()) {
        detail::require((compiled & target_bit(*forced)) != 0, [&] {
            return "QIFT_TARGET=" + std::string(target_name(*forced)) +
                   ": not compiled into this program (compiled: " + target_names(compiled) + ")";
        });
        return *forced;
    }
    const x86_target_set usable = compiled & supported_targets();
    detail::require(usable != 0, [&] {
        x86_target lowest = x86_target::avx512_vnni;
        for (x86_target t : x86_targets)
            if (compiled & target_bit(t)) {
                lowest = t;
                break;
            }
        return "select_target: this CPU runs none of the compiled targets (" +
               target_names(compiled) + "); it lacks " +
               detail::missing_features(lowest, detail::cpu_words());
    });
    return x86_target(31 - __builtin_clz(usable));
}

#endif  // QIFT_DISPATCH_X86

}  // namespace qift

// ---------------------------------------------------------------------------------------
// Per-target instances of an application's function

#define QIFT_DETAIL_DISPATCH_CAT2(a, b) a##b
#define QIFT_DETAIL_DISPATCH_CAT(a, b) QIFT_DETAIL_DISPATCH_CAT2(a, b)
// Target ids for the preprocessor: x86_target value + 1 (an unknown name pastes to an
// undefined identifier, which #if reads as 0).
#define QIFT_DETAIL_DISPATCH_ID_baseline 1
#define QIFT_DETAIL_DISPATCH_ID_avx2 2
#define QIFT_DETAIL_DISPATCH_ID_avx512 3
#define QIFT_DETAIL_DISPATCH_ID_avx512_vnni 4

/// Declares, in the namespace where it appears, the selector functions of a dispatched
/// function `name` of function type `type` (e.g. `void(std::span<const float>)`):
///   type* name_select()   the instance for QIFT_TARGET or else the best compiled target this
///                         CPU runs, chosen on the first call (thread-safe) and kept; throws
///                         qift::error as select_target() does
///   type* name_instance(qift::x86_target t) noexcept
///                         the instance compiled for t, nullptr when t was not compiled (or
///                         the CPU-independent lookup of the compile-time path: the one
///                         instance for compiled_target, nullptr on non-x86)
/// Both are defined by QIFT_DISPATCH_REGISTER in the lowest target's copy of the source.
#define QIFT_DISPATCH_DECLARE(name, type) \
    type* name##_select();                \
    type* name##_instance(::qift::x86_target t) noexcept

#if defined(QIFT_DISPATCH_TARGET)

#if !QIFT_DISPATCH_X86
#error "QIFT_DISPATCH_TARGET is for x86-64 builds with GCC or clang (elsewhere: leave it undefined)"
#endif
#define QIFT_DISPATCH_TARGET_ID \
    QIFT_DETAIL_DISPATCH_CAT(QIFT_DETAIL_DISPATCH_ID_, QIFT_DISPATCH_TARGET)
#if QIFT_DISPATCH_TARGET_ID < 1 || QIFT_DISPATCH_TARGET_ID > 4
#error "QIFT_DISPATCH_TARGET must be one of baseline, avx2, avx512, avx512_vnni"
#endif

/// The targets this source is compiled for, as an x86_target_set (bit i: x86_target value i);
/// qift_add_dispatch_sources passes it with each copy. Default: all four.
#ifndef QIFT_DISPATCH_TARGETS
#define QIFT_DISPATCH_TARGETS 15
#endif
#if (QIFT_DISPATCH_TARGETS & (1 << (QIFT_DISPATCH_TARGET_ID - 1))) == 0
#error "QIFT_DISPATCH_TARGET is not in QIFT_DISPATCH_TARGETS"
#endif

// The copy's flags must be exactly its target's: a lower level would miss the kernels it is
// chosen for, and a higher one (e.g. -march=native leaking in before the target's -march)
// would crash the CPUs the target promises to run on.
#if QIFT_DISPATCH_TARGET_ID == 1 && defined(__AVX__)
#error "QIFT_DISPATCH_TARGET=baseline is compiled with AVX: use -march=x86-64 (target_flags)"
#elif QIFT_DISPATCH_TARGET_ID == 2 && (!QIFT_DETAIL_X86V3 || defined(__AVX512F__))
#error "QIFT_DISPATCH_TARGET=avx2 needs exactly -march=x86-64-v3 (target_flags)"
#elif QIFT_DISPATCH_TARGET_ID == 3 && \
    (!QIFT_DETAIL_X86V4 || defined(__AVX512VNNI__) || defined(__AVX512VBMI__))
#error "QIFT_DISPATCH_TARGET=avx512 needs exactly -march=x86-64-v4 (target_flags)"
#elif QIFT_DISPATCH_TARGET_ID == 4 && \
    (!QIFT_DETAIL_X86V4 || !defined(__AVX512VNNI__) || !defined(__AVX512VBMI__))
#error "QIFT_DISPATCH_TARGET=avx512_vnni needs -march=x86-64-v4 -mavx512vnni -mavx512vbmi"
#endif
#if defined(__AVXVNNI__) || defined(__AVX512FP16__) || defined(__AVX512BF16__) || \
    defined(__AVX512VBMI2__) || defined(__AMX_TILE__)
#error \
    "QIFT_DISPATCH_TARGET: features beyond the target are enabled (-march=native before the target's flags?)"
#endif

/// The name of this copy's instance of `name`: name_qift_<target>, e.g. forward_qift_avx2.
#define QIFT_DISPATCH_INSTANCE(name) QIFT_DETAIL_DISPATCH_CAT(name##_qift_, QIFT_DISPATCH_TARGET)

// In the lowest compiled target's copy (the primary one) the selector is defined; its code runs
// before any target is chosen, so it must be the one every CPU of the build runs.
#if QIFT_DISPATCH_TARGETS & 1
#define QIFT_DETAIL_DISPATCH_PRIMARY_ID 1
#elif QIFT_DISPATCH_TARGETS & 2
#define QIFT_DETAIL_DISPATCH_PRIMARY_ID 2
#elif QIFT_DISPATCH_TARGETS & 4
#define QIFT_DETAIL_DISPATCH_PRIMARY_ID 3
#else
#define QIFT_DETAIL_DISPATCH_PRIMARY_ID 4
#endif
/// 1 in the copy that defines the selectors (the lowest compiled target's, or the one copy of
/// the compile-time path), 0 in the others: guard code that must exist once, e.g. main().
#define QIFT_DISPATCH_PRIMARY (QIFT_DISPATCH_TARGET_ID == QIFT_DETAIL_DISPATCH_PRIMARY_ID)

// Per target: the instance's address, or nullptr when the target is not compiled (its
// declaration is then never used, so it need not be defined anywhere).
#if QIFT_DISPATCH_TARGETS & 1
#define QIFT_DETAIL_DISPATCH_PTR_baseline(name) &name##_qift_baseline
#else
#define QIFT_DETAIL_DISPATCH_PTR_baseline(name) nullptr
#endif
#if QIFT_DISPATCH_TARGETS & 2
#define QIFT_DETAIL_DISPATCH_PTR_avx2(name) &name##_qift_avx2
#else
#define QIFT_DETAIL_DISPATCH_PTR_avx2(name) nullptr
#endif
#if QIFT_DISPATCH_TARGETS & 4
#define QIFT_DETAIL_DISPATCH_PTR_avx512(name) &name##_qift_avx512
#else
#define QIFT_DETAIL_DISPATCH_PTR_avx512(name) nullptr
#endif
#if QIFT_DISPATCH_TARGETS & 8
#define QIFT_DETAIL_DISPATCH_PTR_avx512_vnni(name) &name##_qift_avx512_vnni
#else
#define QIFT_DETAIL_DISPATCH_PTR_avx512_vnni(name) nullptr
#endif

#define QIFT_DETAIL_DISPATCH_SELECTORS(name, type)                                                 \
    type name##_qift_baseline, name##_qift_avx2, name##_qift_avx512, name##_qift_avx512_vnni;      \
    type* name##_instance(::qift::x86_target t) noexcept {                                         \
        type* const table[] = {                                                                    \
            QIFT_DETAIL_DISPATCH_PTR_baseline(name), QIFT_DETAIL_DISPATCH_PTR_avx2(name),          \
            QIFT_DETAIL_DISPATCH_PTR_avx512(name), QIFT_DETAIL_DISPATCH_PTR_avx512_vnni(name)};    \
        const auto i = static_cast<std::size_t>(t);                                                \
        return i < ::qift::x86_target_count ? table[i] : nullptr;                                  \
    }                                                                                              \
    type* name##_select() {                                                                        \
        static type* const chosen = name##_instance(::qift::select_target(QIFT_DISPATCH_TARGETS)); \
        return chosen;                                                                             \
    }

#else  // compile-time path: one copy, compiled with the project's flags

#define QIFT_DISPATCH_INSTANCE(name) name##_qift_native
#define QIFT_DISPATCH_PRIMARY 1

#if QIFT_DISPATCH_X86
#define QIFT_DETAIL_DISPATCH_SELECTORS(name, type)                                               \
    type* name##_instance(::qift::x86_target t) noexcept {                                       \
        return t == ::qift::compiled_target ? &name##_qift_native : nullptr;                     \
    }                                                                                            \
    type* name##_select() {                                                                      \
        static type* const chosen =                                                              \
            name##_instance(::qift::select_target(::qift::target_bit(::qift::compiled_target))); \
        return chosen;                                                                           \
    }
#else
#define QIFT_DETAIL_DISPATCH_SELECTORS(name, type)       \
    type* name##_instance(::qift::x86_target) noexcept { \
        return nullptr;                                  \
    }                                                    \
    type* name##_select() {                              \
        return &name##_qift_native;                      \
    }
#endif

#endif  // QIFT_DISPATCH_TARGET

#if QIFT_DISPATCH_PRIMARY
#define QIFT_DETAIL_DISPATCH_PRIMARY_SELECTORS(name, type) \
    QIFT_DETAIL_DISPATCH_SELECTORS(name, type)
#else
#define QIFT_DETAIL_DISPATCH_PRIMARY_SELECTORS(name, type)
#endif

/// Registers this copy's instance of `name` (defined before it with QIFT_DISPATCH_INSTANCE(name)
/// as its name), checking that its type is `type` (a mismatch is a compile error; a parameter
/// type that differs between copies, such as a qift type, a link error), and in the primary copy
/// defines name_select() and name_instance() (QIFT_DISPATCH_DECLARE). Use it at namespace scope,
/// in the namespace of the QIFT_DISPATCH_DECLARE, followed by a semicolon.
#define QIFT_DISPATCH_REGISTER(name, type)                                                       \
    QIFT_DETAIL_DISPATCH_PRIMARY_SELECTORS(name, type)                                           \
    static_assert(std::is_same_v<decltype(QIFT_DISPATCH_INSTANCE(name)), type>,                  \
                  "QIFT_DISPATCH_REGISTER(" #name ", " #type                                     \
                  "): the instance's type differs (define it with QIFT_DISPATCH_INSTANCE(" #name \
                  ") and exactly that signature)")
