// ARM NEON kernel (AArch64: Jetson Orin's Cortex-A78AE, Apple, Graviton): 4 output
// channels per 128-bit vector, popcount with vcntq_u8 and pairwise widening adds. The
// loops are simd_gemm.h's; this file holds the intrinsics. Advanced SIMD is part of the
// AArch64 baseline, so no target flags.
#if defined(__aarch64__)
#include <arm_neon.h>

#include <cstdint>

#include "kernel_common.h"
#include "simd_gemm.h"

namespace bimaco {
namespace cpu {
namespace detail {
namespace {

struct Neon {
  static constexpr int kLanes = 4;
  static constexpr int kPixels = 4, kPixelsMasked = 4;
  static constexpr int kFlushWords = 0;  // each word's popcount widened to 32 bits at once
  static constexpr bool kFixedWords = false;
  static constexpr int kTransposedStore = 0;
  using U = uint32x4_t;
  using F = float32x4_t;
  using Count = uint32x4_t;
  struct Consts {};

  static Consts consts() { return {}; }
  static U load(const uint32_t* p) { return vld1q_u32(p); }
  static U splat(uint32_t v) { return vdupq_n_u32(v); }
  static U zero() { return vdupq_n_u32(0); }
  static U bxor(U a, U b) { return veorq_u32(a, b); }
  static U band(U a, U b) { return vandq_u32(a, b); }
  static U nor(U a, U b) { return vmvnq_u32(vorrq_u32(a, b)); }
  static U add(U a, U b) { return vaddq_u32(a, b); }
  static U dot(U base, U cnt) { return vsubq_u32(base, vshlq_n_u32(cnt, 1)); }
  static Count count_zero() { return vdupq_n_u32(0); }
  static Count count_add(const Consts&, Count c, U v) {
    return vaddq_u32(c, vpaddlq_u16(vpaddlq_u8(vcntq_u8(vreinterpretq_u8_u32(v)))));
  }
  static U widen(Count c) { return c; }
  static F to_float(U v) { return vcvtq_f32_s32(vreinterpretq_s32_u32(v)); }
  static F fzero() { return vdupq_n_f32(0.f); }
  static F fsplat(float v) { return vdupq_n_f32(v); }
  static F fload(const float* p) { return vld1q_f32(p); }
  static void fstore(float* p, F v) { vst1q_f32(p, v); }
  static F madd(F a, F b, F c) { return vfmaq_f32(c, a, b); }
};

}  // namespace

void gemm_neon(const Gemm& g, const Tile& t) { simd::gemm<Neon>(g, t); }

}  // namespace detail
}  // namespace cpu
}  // namespace bimaco
#endif  // __aarch64__
