// SPDX-License-Identifier: MIT
// The instruction-set target a translation unit is compiled for, as a namespace name.
//
// Every kernel body in qift is chosen at compile time from the compiler's feature macros
// (__AVX2__, __AVX512VNNI__, __ARM_NEON, ...). So that two translation units built with
// different -m flags never share a mangled name with different bodies (a one-definition-rule
// violation: the linker would keep one of them for both), everything qift defines lives in an
// inline namespace named after the target:
//
//     namespace qift::inline QIFT_ISA { ... }        // e.g. qift::isa_x86v4_vnni_vbmi_avxvnni
//
// Code still writes qift::gemv, qift::packed_matrix, ...; only the mangled names differ. The one
// exception is qift::error, which stays in namespace qift so that an exception thrown by code of
// one target is caught by code of another.
//
// The name is the highest x86-64 micro-architecture level whose features (as far as qift and
// xsimd look at them) are all enabled, then every further feature qift or xsimd tests:
//   x86v1  SSE2 (the x86-64 baseline)        x86v2  + SSE3, SSSE3, SSE4.1, SSE4.2
//   x86v3  + AVX, AVX2, FMA                   x86v4  + AVX-512 F, CD, DQ, BW, VL
//   extras _avx _avx2 _fma _avx512f _avx512cd _avx512dq _avx512bw _avx512vl (below their level),
//          _vnni (AVX-512 VNNI) _vbmi (AVX-512 VBMI) _avxvnni (AVX-VNNI) _fma4
//   arm64 (AArch64 with NEON), arm32 (ARMv7 NEON), generic (anything else).
// Examples: -march=x86-64 -> isa_x86v1; -march=x86-64-v3 -> isa_x86v3; -march=skylake-avx512
// -> isa_x86v4; -march=sapphirerapids -> isa_x86v4_vnni_vbmi_avxvnni.
#pragma once

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)

#if defined(__SSE2__) && defined(__SSE3__) && defined(__SSSE3__) && defined(__SSE4_1__) && \
    defined(__SSE4_2__)
#define QIFT_DETAIL_X86V2 1
#else
#define QIFT_DETAIL_X86V2 0
#endif
#if QIFT_DETAIL_X86V2 && defined(__AVX__) && defined(__AVX2__) && defined(__FMA__)
#define QIFT_DETAIL_X86V3 1
#else
#define QIFT_DETAIL_X86V3 0
#endif
#if QIFT_DETAIL_X86V3 && defined(__AVX512F__) && defined(__AVX512CD__) && defined(__AVX512DQ__) && \
    defined(__AVX512BW__) && defined(__AVX512VL__)
#define QIFT_DETAIL_X86V4 1
#else
#define QIFT_DETAIL_X86V4 0
#endif

#if QIFT_DETAIL_X86V4
#define QIFT_DETAIL_ISA_LEVEL isa_x86v4
#elif QIFT_DETAIL_X86V3
#define QIFT_DETAIL_ISA_LEVEL isa_x86v3
#elif QIFT_DETAIL_X86V2
#define QIFT_DETAIL_ISA_LEVEL isa_x86v2
#else
#define QIFT_DETAIL_ISA_LEVEL isa_x86v1
#endif

// One token per feature that the level does not already imply (empty otherwise).
#if !QIFT_DETAIL_X86V3 && defined(__AVX__)
#define QIFT_DETAIL_ISA_AVX _avx
#else
#define QIFT_DETAIL_ISA_AVX
#endif
#if !QIFT_DETAIL_X86V3 && defined(__AVX2__)
#define QIFT_DETAIL_ISA_AVX2 _avx2
#else
#define QIFT_DETAIL_ISA_AVX2
#endif
#if !QIFT_DETAIL_X86V3 && defined(__FMA__)
#define QIFT_DETAIL_ISA_FMA _fma
#else
#define QIFT_DETAIL_ISA_FMA
#endif
#if !QIFT_DETAIL_X86V4 && defined(__AVX512F__)
#define QIFT_DETAIL_ISA_AVX512F _avx512f
#else
#define QIFT_DETAIL_ISA_AVX512F
#endif
#if !QIFT_DETAIL_X86V4 && defined(__AVX512CD__)
#define QIFT_DETAIL_ISA_AVX512CD _avx512cd
#else
#define QIFT_DETAIL_ISA_AVX512CD
#endif
#if !QIFT_DETAIL_X86V4 && defined(__AVX512DQ__)
#define QIFT_DETAIL_ISA_AVX512DQ _avx512dq
#else
#define QIFT_DETAIL_ISA_AVX512DQ
#endif
#if !QIFT_DETAIL_X86V4 && defined(__AVX512BW__)
#define QIFT_DETAIL_ISA_AVX512BW _avx512bw
#else
#define QIFT_DETAIL_ISA_AVX512BW
#endif
#if !QIFT_DETAIL_X86V4 && defined(__AVX512VL__)
#define QIFT_DETAIL_ISA_AVX512VL _avx512vl
#else
#define QIFT_DETAIL_ISA_AVX512VL
#endif
#if defined(__AVX512VNNI__)
#define QIFT_DETAIL_ISA_VNNI _vnni
#else
#define QIFT_DETAIL_ISA_VNNI
#endif
#if defined(__AVX512VBMI__)
#define QIFT_DETAIL_ISA_VBMI _vbmi
#else
#define QIFT_DETAIL_ISA_VBMI
#endif
#if defined(__AVXVNNI__)
#define QIFT_DETAIL_ISA_AVXVNNI _avxvnni
#else
#define QIFT_DETAIL_ISA_AVXVNNI
#endif
#if defined(__FMA4__)
#define QIFT_DETAIL_ISA_FMA4 _fma4
#else
#define QIFT_DETAIL_ISA_FMA4
#endif

#define QIFT_DETAIL_ISA_CAT(l, a, b, c, d, e, f, g, h, i, j, k, m) \
    l##a##b##c##d##e##f##g##h##i##j##k##m
#define QIFT_DETAIL_ISA_EXPAND(...) QIFT_DETAIL_ISA_CAT(__VA_ARGS__)
#define QIFT_ISA                                                                                   \
    QIFT_DETAIL_ISA_EXPAND(QIFT_DETAIL_ISA_LEVEL, QIFT_DETAIL_ISA_AVX, QIFT_DETAIL_ISA_AVX2,       \
                           QIFT_DETAIL_ISA_FMA, QIFT_DETAIL_ISA_AVX512F, QIFT_DETAIL_ISA_AVX512CD, \
                           QIFT_DETAIL_ISA_AVX512DQ, QIFT_DETAIL_ISA_AVX512BW,                     \
                           QIFT_DETAIL_ISA_AVX512VL, QIFT_DETAIL_ISA_VNNI, QIFT_DETAIL_ISA_VBMI,   \
                           QIFT_DETAIL_ISA_AVXVNNI, QIFT_DETAIL_ISA_FMA4)

#elif defined(__aarch64__) && defined(__ARM_NEON)
#define QIFT_ISA isa_arm64
#elif defined(__ARM_NEON)
#define QIFT_ISA isa_arm32
#else
#define QIFT_ISA isa_generic
#endif

/// The target's namespace name as a string, e.g. "isa_x86v3" (for messages and tests).
#define QIFT_ISA_NAME QIFT_DETAIL_STRINGIFY(QIFT_ISA)
#define QIFT_DETAIL_STRINGIFY(x) QIFT_DETAIL_STRINGIFY2(x)
#define QIFT_DETAIL_STRINGIFY2(x) #x
