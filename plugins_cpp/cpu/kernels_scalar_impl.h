// Scalar GEMM kernel body, shared by the portable build (kernels_scalar.cpp) and the
// x86 POPCNT build (kernels_popcnt.cpp), which differ only in how the compiler lowers
// __builtin_popcountll. Weight layout: lanes = 1, w[o][tap][word]. In an anonymous
// namespace: each file keeps its own copy, and the linker cannot hand the portable kernel
// the POPCNT build's (an inline function with external linkage is one symbol to it).
#pragma once

#include <cstring>

#include "kernel_common.h"

namespace bimaco {
namespace cpu {
namespace detail {
namespace {
namespace scalar_impl {

inline uint64_t load64(const uint32_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Integer dot of one tap: sum over channels of sgn(x) * sgn(w).
template <bool kMasked>
inline int tap_dot(const uint32_t* x, const uint32_t* xz, const uint32_t* w, const uint32_t* wz,
                   int words, int c) {
  int j = 0;
  if (!kMasked) {
    int pc = 0;
    // two 32-bit words at a time through one 64-bit popcount
    for (; j + 2 <= words; j += 2) pc += __builtin_popcountll(load64(x + j) ^ load64(w + j));
    if (j < words) pc += __builtin_popcount(x[j] ^ w[j]);
    return c - 2 * pc;
  } else {
    int valid = 0, diff = 0;
    for (; j + 2 <= words; j += 2) {
      const uint64_t v = ~(load64(xz + j) | load64(wz + j));
      valid += __builtin_popcountll(v);
      diff += __builtin_popcountll((load64(x + j) ^ load64(w + j)) & v);
    }
    if (j < words) {
      const uint32_t v = ~(xz[j] | wz[j]);
      valid += __builtin_popcount(v);
      diff += __builtin_popcount((x[j] ^ w[j]) & v);
    }
    return valid - 2 * diff;
  }
}

template <bool kMasked>
inline void gemm_tile(const Gemm& g, const Tile& t) {
  const int words = g.words;
  const int64_t img = int64_t(t.n) * g.img_pixels;
  const uint32_t* xb = g.xbits + img * words;
  const uint32_t* xz = kMasked ? g.xzero + img * words : nullptr;
  const float* xs = g.xs + img;
  for (int o = t.ob0; o < t.ob1 && o < g.o; ++o) {
    const uint32_t* wo = g.w + int64_t(o) * g.taps * words;
    const uint32_t* wzo = kMasked ? g.wz + int64_t(o) * g.taps * words : nullptr;
    for (int ow = t.ow0; ow < t.ow1; ++ow) {
      const int64_t base = g.in_pixel(t.oh, ow);
      float acc = 0.f;
      for (int k = 0; k < g.taps; ++k) {
        const int64_t q = base + g.tap_off[k];
        const int d = tap_dot<kMasked>(xb + q * words, kMasked ? xz + q * words : nullptr,
                                       wo + int64_t(k) * words,
                                       kMasked ? wzo + int64_t(k) * words : nullptr, words, g.c);
        acc += xs[q] * float(d);
      }
      const float v = g.bias[o] + g.alpha[o] * acc;
      store_block(g, t.n, int64_t(t.oh) * g.wo + ow, o, &v);
    }
  }
}

inline void gemm(const Gemm& g, const Tile& t) {
  if (g.wz)
    gemm_tile<true>(g, t);
  else
    gemm_tile<false>(g, t);
}

}  // namespace scalar_impl
}  // namespace
}  // namespace detail
}  // namespace cpu
}  // namespace bimaco
