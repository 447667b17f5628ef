// SPDX-License-Identifier: MIT
// IEEE 754 binary16 (float16) and bfloat16 <-> float32 conversions, bit-exact and constexpr, for
// the checkpoint readers and writers (npy.hpp, safetensors.hpp).
#pragma once

#include "target.hpp"

#include <bit>
#include <cstdint>

namespace qift::inline QIFT_ISA::detail {

/// The float32 value of an IEEE binary16 bit pattern: exact for every finite value (subnormals
/// included) and for ±inf; a NaN stays a NaN with its sign and payload shifted into the top of
/// float32's mantissa (so its quiet bit stays the quiet bit).
constexpr float half_to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
    const std::uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | mantissa << 13);
    if (exponent != 0)
        return std::bit_cast<float>(sign | (exponent + (127 - 15)) << 23 | mantissa << 13);
    // Zero or subnormal: mantissa · 2^-24, exact in float32.
    const float magnitude = float(mantissa) * (1.0f / 16777216.0f);
    return sign ? -magnitude : magnitude;
}

/// The binary16 bit pattern nearest to x (round to nearest, ties to even): values beyond the
/// largest half (65504) round to ±inf as IEEE prescribes (from 65520 on), values below half the
/// smallest subnormal to ±0; a NaN stays a quiet NaN with its sign and the top of its payload.
constexpr std::uint16_t float_to_half(float x) noexcept {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
    const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
    const std::uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u)  // NaN: keep the top payload bits, force the quiet bit
        return static_cast<std::uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
    if (magnitude >= 0x47800000u)  // >= 65536 (and inf): inf
        return static_cast<std::uint16_t>(sign | 0x7c00u);
    if (magnitude >= 0x38800000u) {  // normal half range [2^-14, 65536)
        // Rebias the exponent, then round the 13 dropped bits to nearest even; a carry out of
        // the mantissa correctly bumps the exponent (up to inf for [65520, 65536)).
        const std::uint32_t v = magnitude - ((127u - 15u) << 23);
        const std::uint32_t rounded = v + 0x0fffu + ((v >> 13) & 1u);
        return static_cast<std::uint16_t>(sign | (rounded >> 13));
    }
    if (magnitude < 0x33000000u)  // < 2^-25: rounds to zero (2^-25 itself ties to even 0)
        return sign;
    // Subnormal half: value = m · 2^-24 with m = the 24-bit significand shifted right.
    const std::uint32_t exponent = magnitude >> 23,
                        significand = (magnitude & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - exponent;  // 14..24 for exponents 102..112
    const std::uint32_t kept = significand >> shift, rest = significand & ((1u << shift) - 1u),
                        halfway = 1u << (shift - 1);
    const std::uint32_t m = kept + (rest > halfway || (rest == halfway && (kept & 1u)) ? 1u : 0u);
    return static_cast<std::uint16_t>(sign | m);  // m == 0x400 is the smallest normal: correct
}

/// The float32 value of a bfloat16 bit pattern (its upper 16 bits): exact for every value.
constexpr float bfloat16_to_float(std::uint16_t b) noexcept {
    return std::bit_cast<float>(std::uint32_t(b) << 16);
}

/// The bfloat16 bit pattern nearest to x (round to nearest, ties to even; overflow to ±inf as
/// IEEE prescribes); a NaN stays a quiet NaN with its sign and the top of its payload.
constexpr std::uint16_t float_to_bfloat16(float x) noexcept {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
    return static_cast<std::uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace qift::detail
