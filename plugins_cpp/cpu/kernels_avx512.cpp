// AVX-512 kernel with VPOPCNTDQ (Ice Lake and later Intel, AMD Zen 4 and later):
// 16 output channels per 512-bit vector and a native per-lane 32-bit popcount, so no
// byte-counter flushing. The loops are simd_gemm.h's; this file holds the intrinsics.
// Built with target attributes and only run when CPUID says the CPU has avx512f +
// avx512vpopcntdq (the dispatcher checks).
#if defined(__x86_64__) || defined(_M_X64)
// GCC 12's avx512 intrinsic headers trip -Wmaybe-uninitialized on their own
// `__Y = __Y` idiom (a known false positive); silence it for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// Shared headers first, compiled for baseline x86-64 (see BIMACO_TARGET_BEGIN).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernel_common.h"

BIMACO_TARGET_BEGIN("avx512f,avx512vpopcntdq,avx2,fma,popcnt")

#include "simd_gemm.h"

namespace bimaco {
namespace cpu {
namespace detail {
namespace {

struct Avx512 {
  static constexpr int kLanes = 16;
  static constexpr int kPixels = 4, kPixelsMasked = 4;
  static constexpr int kFlushWords = 0;  // native 32-bit popcount per lane
  static constexpr bool kFixedWords = false;
  static constexpr int kTransposedStore = 4;
  using U = __m512i;
  using F = __m512;
  using Count = __m512i;
  struct Consts {};

  static Consts consts() { return {}; }
  static U load(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static U splat(uint32_t v) { return _mm512_set1_epi32(int(v)); }
  static U zero() { return _mm512_setzero_si512(); }
  static U bxor(U a, U b) { return _mm512_xor_si512(a, b); }
  static U band(U a, U b) { return _mm512_and_si512(a, b); }
  static U nor(U a, U b) { return _mm512_andnot_si512(_mm512_or_si512(a, b), _mm512_set1_epi32(-1)); }
  static U add(U a, U b) { return _mm512_add_epi32(a, b); }
  static U dot(U base, U cnt) { return _mm512_sub_epi32(base, _mm512_slli_epi32(cnt, 1)); }
  static Count count_zero() { return _mm512_setzero_si512(); }
  static Count count_add(const Consts&, Count c, U v) { return _mm512_add_epi32(c, _mm512_popcnt_epi32(v)); }
  static U widen(Count c) { return c; }
  static F to_float(U v) { return _mm512_cvtepi32_ps(v); }
  static F fzero() { return _mm512_setzero_ps(); }
  static F fsplat(float v) { return _mm512_set1_ps(v); }
  static F fload(const float* p) { return _mm512_loadu_ps(p); }
  static void fstore(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F madd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }

  // 4 pixels x 16 channels, transposed within each 128-bit lane so that each channel row
  // of a planar output gets one 4-float store instead of 4 scalar ones.
  static void store_transposed(float* dst, int64_t stride, const F* out) {
    const __m512 t0 = _mm512_unpacklo_ps(out[0], out[1]), t1 = _mm512_unpackhi_ps(out[0], out[1]);
    const __m512 t2 = _mm512_unpacklo_ps(out[2], out[3]), t3 = _mm512_unpackhi_ps(out[2], out[3]);
    // u[j], 128-bit lane k: the 4 pixels of channel 4k + j
    const __m512 u[4] = {_mm512_shuffle_ps(t0, t2, 0x44), _mm512_shuffle_ps(t0, t2, 0xEE),
                         _mm512_shuffle_ps(t1, t3, 0x44), _mm512_shuffle_ps(t1, t3, 0xEE)};
    for (int j = 0; j < 4; ++j) {
      _mm_storeu_ps(dst + j * stride, _mm512_castps512_ps128(u[j]));
      _mm_storeu_ps(dst + (4 + j) * stride, _mm512_extractf32x4_ps(u[j], 1));
      _mm_storeu_ps(dst + (8 + j) * stride, _mm512_extractf32x4_ps(u[j], 2));
      _mm_storeu_ps(dst + (12 + j) * stride, _mm512_extractf32x4_ps(u[j], 3));
    }
  }
};

}  // namespace

void gemm_avx512(const Gemm& g, const Tile& t) { simd::gemm<Avx512>(g, t); }

}  // namespace detail
}  // namespace cpu
}  // namespace bimaco

BIMACO_TARGET_END
#endif  // x86-64
