// AVX-512 kernel with VPOPCNTDQ (Ice Lake and later Intel, AMD Zen 4 and later):
// 16 output channels per 512-bit vector and a native per-lane 32-bit popcount, so no
// byte-counter flushing. Built with target attributes and only run when CPUID says the
// CPU has avx512f + avx512vpopcntdq (the dispatcher checks).
#if defined(__x86_64__) || defined(_M_X64)
// GCC 12's avx512 intrinsic headers trip -Wmaybe-uninitialized on their own
// `__Y = __Y` idiom (a known false positive); silence it for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// Shared headers first, compiled for baseline x86-64 (see BIMACO_TARGET_BEGIN).
#include <immintrin.h>

#include "kernel_common.h"

BIMACO_TARGET_BEGIN("avx512f,avx512vpopcntdq,avx2,fma,popcnt")

namespace bimaco {
namespace cpu {
namespace detail {
namespace {

constexpr int kLanes = 16;

template <int P, bool kMasked>
inline void block(const Gemm& g, const uint32_t* xb, const uint32_t* xz, const float* xs,
                  const int64_t* base, int ob, __m512* out) {
  const int words = g.words;
  const __m512i cvec = _mm512_set1_epi32(g.c);
  const uint32_t* wblk = g.w + int64_t(ob) * g.taps * words * kLanes;
  const uint32_t* wzblk = kMasked ? g.wz + int64_t(ob) * g.taps * words * kLanes : nullptr;
  __m512 acc[P];
  for (int i = 0; i < P; ++i) acc[i] = _mm512_setzero_ps();
  for (int k = 0; k < g.taps; ++k) {
    const uint32_t* xp[P];
    const uint32_t* xzp[P];
    for (int i = 0; i < P; ++i) {
      const int64_t q = base[i] + g.tap_off[k];
      xp[i] = xb + q * words;
      xzp[i] = kMasked ? xz + q * words : nullptr;
    }
    const uint32_t* wk = wblk + int64_t(k) * words * kLanes;
    const uint32_t* wzk = kMasked ? wzblk + int64_t(k) * words * kLanes : nullptr;
    __m512i cnt[P], vcnt[P];
    for (int i = 0; i < P; ++i) cnt[i] = vcnt[i] = _mm512_setzero_si512();
    for (int j = 0; j < words; ++j) {
      const __m512i wv = _mm512_loadu_si512(wk + j * kLanes);
      __m512i wzv = _mm512_setzero_si512();
      if (kMasked) wzv = _mm512_loadu_si512(wzk + j * kLanes);
      for (int i = 0; i < P; ++i) {
        __m512i d = _mm512_xor_si512(_mm512_set1_epi32(int(xp[i][j])), wv);
        if (kMasked) {
          // valid = ~(xz | wz)
          const __m512i valid = _mm512_andnot_si512(
              _mm512_or_si512(_mm512_set1_epi32(int(xzp[i][j])), wzv), _mm512_set1_epi32(-1));
          d = _mm512_and_si512(d, valid);
          vcnt[i] = _mm512_add_epi32(vcnt[i], _mm512_popcnt_epi32(valid));
        }
        cnt[i] = _mm512_add_epi32(cnt[i], _mm512_popcnt_epi32(d));
      }
    }
    for (int i = 0; i < P; ++i) {
      const __m512i dot = _mm512_sub_epi32(kMasked ? vcnt[i] : cvec, _mm512_slli_epi32(cnt[i], 1));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(xs[base[i] + g.tap_off[k]]), acc[i]);
    }
  }
  const __m512 av = _mm512_loadu_ps(g.alpha + ob * kLanes);
  const __m512 bv = _mm512_loadu_ps(g.bias + ob * kLanes);
  for (int i = 0; i < P; ++i) out[i] = _mm512_fmadd_ps(acc[i], av, bv);
}

template <int P, bool kMasked>
inline void run_pixels(const Gemm& g, const Tile& t, int ow, int ob, const uint32_t* xb,
                       const uint32_t* xz, const float* xs) {
  int64_t base[P];
  for (int i = 0; i < P; ++i) base[i] = g.in_pixel(t.oh, ow + i);
  __m512 out[P];
  block<P, kMasked>(g, xb, xz, xs, base, ob, out);
  for (int i = 0; i < P; ++i) {
    alignas(64) float vals[kLanes];
    _mm512_store_ps(vals, out[i]);
    store_block(g, t.n, int64_t(t.oh) * g.wo + ow + i, ob, vals);
  }
}

template <bool kMasked>
void gemm_impl(const Gemm& g, const Tile& t) {
  constexpr int P = 4;
  const int64_t img = int64_t(t.n) * g.img_pixels;
  const uint32_t* xb = g.xbits + img * g.words;
  const uint32_t* xz = kMasked ? g.xzero + img * g.words : nullptr;
  const float* xs = g.xs + img;
  for (int ob = t.ob0; ob < t.ob1; ++ob) {
    int ow = t.ow0;
    for (; ow + P <= t.ow1; ow += P) run_pixels<P, kMasked>(g, t, ow, ob, xb, xz, xs);
    for (; ow < t.ow1; ++ow) run_pixels<1, kMasked>(g, t, ow, ob, xb, xz, xs);
  }
}

}  // namespace

void gemm_avx512(const Gemm& g, const Tile& t) {
  if (g.wz)
    gemm_impl<true>(g, t);
  else
    gemm_impl<false>(g, t);
}

}  // namespace detail
}  // namespace cpu
}  // namespace bimaco

BIMACO_TARGET_END
#endif  // x86-64
