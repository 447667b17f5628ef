// SPDX-License-Identifier: MIT
// Hadamard matrices without tables: prime-power arithmetic in GF(p^k), the Paley I and II
// constructions, the spectra of their Jacobsthal cores (DFT, partial DFT and Rader forms), and
// the search for the cheapest factorization n = K_1 ··· K_t · 2^m.
#pragma once

#include "target.hpp"

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace qift::inline QIFT_ISA::detail {

/// Largest order of one non-power-of-two Hadamard block: its float matrix is then at most
/// 16 MiB, and the block mix costs K multiply-adds per element.
inline constexpr std::size_t max_hadamard_block = 2048;

struct prime_power {
    std::size_t p = 0;
    unsigned k = 0;
};

/// q = p^k with p prime and k >= 1, or nothing.
inline std::optional<prime_power> as_prime_power(std::size_t q) noexcept {
    if (q < 2) return std::nullopt;
    std::size_t p = q;
    for (std::size_t d = 2; d * d <= q; ++d)
        if (q % d == 0) {
            p = d;
            break;
        }
    unsigned k = 0;
    while (q % p == 0) {
        q /= p;
        ++k;
    }
    if (q != 1) return std::nullopt;
    return prime_power{p, k};
}

/// Which Paley construction gives a Hadamard matrix of order c: 1 (Paley I, q = c - 1 a prime
/// power, q ≡ 3 mod 4), 2 (Paley II, q = c/2 - 1 a prime power, q ≡ 1 mod 4), or 0.
inline int paley_kind(std::size_t c) noexcept {
    if (c < 4 || c % 4 != 0 || c > max_hadamard_block) return 0;
    if ((c - 1) % 4 == 3 && as_prime_power(c - 1)) return 1;
    if ((c / 2 - 1) % 4 == 1 && as_prime_power(c / 2 - 1)) return 2;
    return 0;
}

/// GF(p^k): element e <-> polynomial Σ digit_i(e) x^i with base-p digits, reduced modulo a
/// monic irreducible polynomial of degree k found by search.
class galois_field {
  public:
    explicit galois_field(prime_power pk) : p_(pk.p), k_(pk.k), q_(1) {
        for (unsigned i = 0; i < k_; ++i) q_ *= p_;
        if (k_ > 1) modulus_ = find_irreducible();
    }

    std::size_t order() const noexcept { return q_; }
    std::size_t characteristic() const noexcept { return p_; }
    unsigned degree() const noexcept { return k_; }

    std::size_t sub(std::size_t a, std::size_t b) const noexcept {
        std::size_t r = 0, place = 1;
        for (unsigned i = 0; i < k_; ++i, a /= p_, b /= p_, place *= p_)
            r += ((a % p_ + p_ - b % p_) % p_) * place;
        return r;
    }

    std::size_t mul(std::size_t a, std::size_t b) const {
        if (k_ == 1) return a * b % p_;
        std::vector<std::size_t> x = digits(a), y = digits(b), prod(2 * k_ - 1, 0);
        for (unsigned i = 0; i < k_; ++i)
            for (unsigned j = 0; j < k_; ++j) prod[i + j] = (prod[i + j] + x[i] * y[j]) % p_;
        reduce(prod, modulus_);
        std::size_t r = 0;
        for (unsigned i = k_; i-- > 0;) r = r * p_ + prod[i];
        return r;
    }

    /// Quadratic character: 0 for 0, +1 for a nonzero square, -1 otherwise.
    std::vector<int> quadratic_character() const {
        std::vector<int> chi(q_, -1);
        chi[0] = 0;
        for (std::size_t x = 1; x < q_; ++x) chi[mul(x, x)] = 1;
        return chi;
    }

  private:
    std::vector<std::size_t> digits(std::size_t a) const {
        std::vector<std::size_t> d(k_);
        for (unsigned i = 0; i < k_; ++i, a /= p_) d[i] = a % p_;
        return d;
    }

    // Remainder of `a` (coefficients low to high) modulo the monic `m`, left in a[0 .. deg m).
    void reduce(std::vector<std::size_t>& a, const std::vector<std::size_t>& m) const {
        const std::size_t d = m.size() - 1;
        for (std::size_t top = a.size(); top-- > d;) {
            const std::size_t c = a[top] % p_;
            if (c == 0) continue;
            for (std::size_t i = 0; i <= d; ++i)
                a[top - d + i] = (a[top - d + i] + (p_ - c) * m[i]) % p_;
        }
        a.resize(d);
    }

    // First monic polynomial of degree k with no monic factor of degree 1 .. k/2.
    std::vector<std::size_t> find_irreducible() const {
        for (std::size_t low = 1; low < q_; ++low) {
            std::vector<std::size_t> f = digits(low);
            f.push_back(1);
            if (f[0] == 0) continue;
            bool irreducible = true;
            for (unsigned deg = 1; irreducible && 2 * deg <= k_; ++deg) {
                std::size_t count = 1;
                for (unsigned i = 0; i < deg; ++i) count *= p_;
                for (std::size_t g_low = 0; irreducible && g_low < count; ++g_low) {
                    std::vector<std::size_t> g(deg + 1, 1);
                    for (unsigned i = 0; i < deg; ++i) g[i] = (g_low / pow(i)) % p_;
                    std::vector<std::size_t> r = f;
                    reduce(r, g);
                    irreducible = std::any_of(r.begin(), r.end(), [](std::size_t c) { return c; });
                }
            }
            if (irreducible) return f;
        }
        return {};  // unreachable: an irreducible polynomial of every degree exists
    }

    std::size_t pow(unsigned e) const noexcept {
        std::size_t r = 1;
        while (e--) r *= p_;
        return r;
    }

    std::size_t p_;
    unsigned k_;
    std::size_t q_;
    std::vector<std::size_t> modulus_;
};

/// The Paley Hadamard matrix of order c (paley_kind(c) != 0) as c×c row-major ±1 entries.
/// Paley I: H = I + S, S = [[0, 1ᵀ], [-1, Q]]; Paley II: the symmetric conference matrix
/// C = [[0, 1ᵀ], [1, Q]] with 0 -> [[1, -1], [-1, -1]] and ±1 -> ±[[1, 1], [1, -1]]; Q is
/// the Jacobsthal matrix Q[a][b] = χ(a - b) of GF(q). O(c² log q).
inline std::vector<std::int8_t> paley_matrix(std::size_t c) {
    const int kind = paley_kind(c);
    const std::size_t q = kind == 1 ? c - 1 : c / 2 - 1;
    const galois_field field(*as_prime_power(q));
    const std::vector<int> chi = field.quadratic_character();
    // Conference-type core of order q + 1: s(i, j) for i, j in 0..q.
    auto core = [&](std::size_t i, std::size_t j) -> int {
        if (i == 0 && j == 0) return 0;
        if (i == 0) return 1;
        if (j == 0) return kind == 1 ? -1 : 1;
        return chi[field.sub(i - 1, j - 1)];
    };
    std::vector<std::int8_t> h(c * c);
    if (kind == 1) {
        for (std::size_t i = 0; i < c; ++i)
            for (std::size_t j = 0; j < c; ++j)
                h[i * c + j] = static_cast<std::int8_t>(i == j ? 1 : core(i, j));
    } else {
        const std::size_t m = q + 1;
        for (std::size_t i = 0; i < m; ++i)
            for (std::size_t j = 0; j < m; ++j) {
                const int s = core(i, j);
                for (std::size_t a = 0; a < 2; ++a)
                    for (std::size_t b = 0; b < 2; ++b) {
                        int v;
                        if (s == 0)
                            v = (a == 0 && b == 0) ? 1 : -1;
                        else
                            v = s * ((a == 1 && b == 1) ? -1 : 1);
                        h[(2 * i + a) * c + 2 * j + b] = static_cast<std::int8_t>(v);
                    }
            }
    }
    return h;
}

/// The Jacobsthal matrix of a Paley order c with the border of its Hadamard (Paley I) or
/// conference (Paley II) matrix: core = [[1, 1ᵀ], [σ·1, Q + I]] of order m = q + 1, σ = -1 for
/// Paley I (then core = H_c itself) and +1 for Paley II (then core = C + I, C the symmetric
/// conference matrix, and H_c = C ⊗ [[1, 1], [1, -1]] + I ⊗ [[1, -1], [-1, -1]]). Q[a][b] =
/// χ(a - b) over GF(q), field elements numbered by their base-p digits, so a - b is digit-wise
/// subtraction mod p and Q is a convolution over the group (Z_p)^r.
struct paley_core {
    int kind = 0;  ///< 1 or 2, as paley_kind
    std::size_t q = 0, p = 0;
    unsigned r = 0;        ///< q = p^r
    std::vector<int> chi;  ///< quadratic character of GF(q), indexed by element
    std::size_t order() const noexcept { return q + 1; }
    int sigma() const noexcept { return kind == 1 ? -1 : 1; }
    /// The core as m×m row-major ±1 entries (Q's zero diagonal replaced by the +1 of I).
    std::vector<std::int8_t> matrix(const galois_field& field) const {
        const std::size_t m = q + 1;
        std::vector<std::int8_t> h(m * m);
        for (std::size_t i = 0; i < m; ++i)
            for (std::size_t j = 0; j < m; ++j) {
                int v;
                if (i == 0)
                    v = 1;
                else if (j == 0)
                    v = sigma();
                else if (i == j)
                    v = 1;
                else
                    v = chi[field.sub(i - 1, j - 1)];
                h[i * m + j] = static_cast<std::int8_t>(v);
            }
        return h;
    }
};

inline paley_core make_paley_core(std::size_t c) {
    paley_core core;
    core.kind = paley_kind(c);
    core.q = core.kind == 1 ? c - 1 : c / 2 - 1;
    const prime_power pk = *as_prime_power(core.q);
    core.p = pk.p;
    core.r = pk.k;
    core.chi = galois_field(pk).quadratic_character();
    return core;
}

/// Eigenvalues of the Jacobsthal matrix as a convolution over (Z_p)^r: Λ(u) = Σ_d χ(d)·
/// ω^(-<u, d>), ω = e^(2πi/p), <u, d> the digit-wise dot product mod p, so that the DFT
/// X(u) = Σ_a x_a ω^(-<u, a>) of y = Q·x is Λ(u)·X(u). Λ is purely imaginary for q ≡ 3 mod 4
/// (Q antisymmetric) and real for q ≡ 1 mod 4 (Q symmetric). O(q²).
inline std::vector<std::complex<double>> jacobsthal_eigenvalues(const paley_core& core) {
    const std::size_t q = core.q, p = core.p;
    std::vector<std::complex<double>> root(p);
    for (std::size_t t = 0; t < p; ++t) {
        const double a =
            -2.0 * 3.14159265358979323846 * static_cast<double>(t) / static_cast<double>(p);
        root[t] = {std::cos(a), std::sin(a)};
    }
    std::vector<std::complex<double>> lambda(q);
    for (std::size_t u = 0; u < q; ++u) {
        std::complex<double> acc = 0;
        for (std::size_t d = 1; d < q; ++d) {
            std::size_t dot = 0;
            for (std::size_t uu = u, dd = d; uu || dd; uu /= p, dd /= p) dot += (uu % p) * (dd % p);
            acc += static_cast<double>(core.chi[d]) * root[dot % p];
        }
        lambda[u] = acc;
    }
    return lambda;
}

/// Rader form of the Jacobsthal matrix of a prime field GF(q): with g a generator of Z_q^*,
/// Q[g^k][g^j] = χ(g^k - g^j) = χ(g^k)·c(j - k), c(t) = χ(1 - g^t), so on the nonzero elements
/// Q is diag(χ) times the circulant C[k][j] = c(j - k) of length N = q - 1. N is split into
/// coprime prime powers (the axes); k sits at slot Σ_i (k mod radix_i)·stride_i, stride_i =
/// Π_(l<i) radix_l, so the cyclic correlation w = C·v becomes a convolution over the product of
/// the axes, diagonalized by one DFT per axis: DFT(w)(u) = eigenvalue(u)·DFT(v)(u), eigenvalue
/// at slot u = Σ_m c(-m)·Π_i ω_i^(-u_i·m_i), ω_i = e^(2πi/radix_i).
struct rader_form {
    std::vector<std::size_t> radix;    ///< coprime axis lengths, Π radix = q - 1
    std::vector<std::uint32_t> slot;   ///< slot[g^k] for the q - 1 nonzero elements
    std::size_t alternating_slot = 0;  ///< slot of the frequency (q-1)/2: the character (-1)^k
    std::vector<std::complex<double>> eigenvalues;  ///< q - 1, indexed by slot
};

/// The Rader form of a prime-field Jacobsthal core (core.r == 1), or nothing when q - 1 has a
/// prime-power factor outside `radix_ok` (a predicate on the axis length). O(q²).
template <class RadixOk>
std::optional<rader_form> make_rader_form(const paley_core& core, RadixOk radix_ok) {
    if (core.r != 1 || core.q < 3) return std::nullopt;
    const std::size_t q = core.q, n = q - 1;
    rader_form f;
    std::vector<std::size_t> primes;
    for (std::size_t m = n, d = 2; m > 1; ++d) {
        if (d * d > m) d = m;
        if (m % d != 0) continue;
        std::size_t pk = 1;
        while (m % d == 0) {
            m /= d;
            pk *= d;
        }
        if (!radix_ok(pk)) return std::nullopt;
        primes.push_back(d);
        f.radix.push_back(pk);
    }
    auto pow_mod = [q](std::size_t b, std::size_t e) {
        std::size_t r = 1;
        for (b %= q; e; e >>= 1, b = b * b % q)
            if (e & 1) r = r * b % q;
        return r;
    };
    std::size_t g = 2;
    for (;; ++g) {
        bool generator = true;
        for (std::size_t p : primes) generator = generator && pow_mod(g, n / p) != 1;
        if (generator) break;
    }
    std::vector<std::size_t> stride(f.radix.size());
    for (std::size_t i = 0, s = 1; i < f.radix.size(); s *= f.radix[i], ++i) {
        stride[i] = s;
        // (-1)^k = (-1)^(k mod radix_i) on the one even axis, 1 on the odd ones.
        if (f.radix[i] % 2 == 0) f.alternating_slot = f.radix[i] / 2 * s;
    }
    auto slot_of = [&](std::size_t k) {
        std::size_t s = 0;
        for (std::size_t i = 0; i < f.radix.size(); ++i) s += (k % f.radix[i]) * stride[i];
        return s;
    };
    // c(t) = χ(1 - g^t) and the slots of the powers of g.
    std::vector<int> c(n);
    f.slot.assign(q, 0);
    for (std::size_t t = 0, a = 1; t < n; ++t, a = a * g % q) {
        c[t] = core.chi[(1 + q - a) % q];
        f.slot[a] = static_cast<std::uint32_t>(slot_of(t));
    }
    // eigenvalue(u) = Σ_m c(-m)·e^(-2πi·Σ_i u_i·m_i/radix_i); the phase in units of 1/n.
    std::vector<std::complex<double>> root(n);
    for (std::size_t t = 0; t < n; ++t) {
        const double a =
            -2.0 * 3.14159265358979323846 * static_cast<double>(t) / static_cast<double>(n);
        root[t] = {std::cos(a), std::sin(a)};
    }
    f.eigenvalues.assign(n, 0.0);
    for (std::size_t u = 0; u < n; ++u) {
        std::vector<std::size_t> digit(f.radix.size());
        for (std::size_t i = 0; i < f.radix.size(); ++i) digit[i] = (u / stride[i]) % f.radix[i];
        std::complex<double> acc = 0;
        for (std::size_t m = 0; m < n; ++m) {
            std::size_t phase = 0;
            for (std::size_t i = 0; i < f.radix.size(); ++i)
                phase += digit[i] * (m % f.radix[i]) * (n / f.radix[i]);
            acc += static_cast<double>(c[(n - m) % n]) * root[phase % n];
        }
        f.eigenvalues[u] = acc;
    }
    return f;
}

/// For a Jacobsthal core over GF(p^r), r >= 2: the convolution kernel M(a) = d·[a = 0] +
/// ε·χ(a) over (Z_p)^r transformed along the base-p digits 1 .. r-1 and divided by R =
/// p^(r-1): K[u·p + m_0] = (1/R)·Σ_(m') M(m_0 + p·m')·ω^(-<u, m'>), ω = e^(2πi/p), u and m'
/// the digits 1 .. r-1 (u = Σ_i u_i·p^(i-1)). O(R²·p·r).
inline std::vector<std::complex<double>> jacobsthal_partial_kernel(const paley_core& core,
                                                                   double diag, double eps) {
    const std::size_t p = core.p, q = core.q, rows = q / p;
    std::vector<std::complex<double>> root(p);
    for (std::size_t t = 0; t < p; ++t) {
        const double a =
            -2.0 * 3.14159265358979323846 * static_cast<double>(t) / static_cast<double>(p);
        root[t] = {std::cos(a), std::sin(a)};
    }
    std::vector<std::complex<double>> k(q);
    for (std::size_t u = 0; u < rows; ++u)
        for (std::size_t m0 = 0; m0 < p; ++m0) {
            std::complex<double> acc = 0;
            for (std::size_t mh = 0; mh < rows; ++mh) {
                const std::size_t m = m0 + p * mh;
                const double v = (m == 0 ? diag : 0.0) + eps * core.chi[m];
                if (v == 0.0) continue;
                std::size_t dot = 0;
                for (std::size_t uu = u, dd = mh; uu || dd; uu /= p, dd /= p)
                    dot += (uu % p) * (dd % p);
                acc += v * root[dot % p];
            }
            k[u * p + m0] = acc / static_cast<double>(rows);
        }
    return k;
}

/// n = blocks[0] · blocks[1] ··· · power_of_two with every block a Paley order.
struct hadamard_blocks {
    std::size_t power_of_two = 1;
    std::vector<std::size_t> blocks;
    std::size_t cost() const noexcept {
        std::size_t s = 0;
        for (std::size_t b : blocks) s += b;
        return s;
    }
};

// Cheapest (smallest Σ blocks) way to write odd · 2^twos as Paley blocks times a power of two.
inline std::optional<hadamard_blocks> cheapest_blocks(std::size_t odd, unsigned twos) {
    if (odd == 1) return hadamard_blocks{std::size_t{1} << twos, {}};
    std::optional<hadamard_blocks> best;
    for (std::size_t d = 3; d <= odd && 4 * d <= max_hadamard_block; d += 2) {
        if (odd % d != 0) continue;
        for (unsigned a = 2; a <= twos && (d << a) <= max_hadamard_block; ++a) {
            if (!paley_kind(d << a)) continue;
            auto rest = cheapest_blocks(odd / d, twos - a);
            if (!rest) continue;
            rest->blocks.insert(rest->blocks.begin(), d << a);
            if (!best || rest->cost() < best->cost()) best = std::move(rest);
        }
    }
    return best;
}

/// The cheapest factorization of n into Paley blocks and one power of two, or nothing.
inline std::optional<hadamard_blocks> factor_hadamard_size(std::size_t n) {
    if (n == 0) return std::nullopt;
    unsigned twos = 0;
    while (n % 2 == 0) {
        n /= 2;
        ++twos;
    }
    auto r = cheapest_blocks(n, twos);
    if (r) std::sort(r->blocks.begin(), r->blocks.end());
    return r;
}

}  // namespace qift::detail
