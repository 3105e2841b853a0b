// ARM NEON kernel (AArch64: Jetson Orin's Cortex-A78AE, Apple, Graviton): 4 output
// channels per 128-bit vector, popcount with vcntq_u8 and pairwise widening adds.
#if defined(__aarch64__)
#include <arm_neon.h>

#include "kernel_common.h"

namespace bimaco {
namespace cpu {
namespace detail {
namespace {

constexpr int kLanes = 4;

inline uint32x4_t popcnt32(uint32x4_t v) {
  return vpaddlq_u16(vpaddlq_u8(vcntq_u8(vreinterpretq_u8_u32(v))));
}

template <int P, bool kMasked>
inline void block(const Gemm& g, const uint32_t* xb, const uint32_t* xz, const float* xs,
                  const int64_t* base, int ob, float32x4_t* out) {
  const int words = g.words;
  const int32x4_t cvec = vdupq_n_s32(g.c);
  const uint32_t* wblk = g.w + int64_t(ob) * g.taps * words * kLanes;
  const uint32_t* wzblk = kMasked ? g.wz + int64_t(ob) * g.taps * words * kLanes : nullptr;
  float32x4_t acc[P];
  for (int i = 0; i < P; ++i) acc[i] = vdupq_n_f32(0.f);
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
    uint32x4_t cnt[P], vcnt[P];
    for (int i = 0; i < P; ++i) cnt[i] = vcnt[i] = vdupq_n_u32(0);
    for (int j = 0; j < words; ++j) {
      const uint32x4_t wv = vld1q_u32(wk + j * kLanes);
      uint32x4_t wzv = vdupq_n_u32(0);
      if (kMasked) wzv = vld1q_u32(wzk + j * kLanes);
      for (int i = 0; i < P; ++i) {
        uint32x4_t d = veorq_u32(vdupq_n_u32(xp[i][j]), wv);
        if (kMasked) {
          const uint32x4_t valid = vmvnq_u32(vorrq_u32(vdupq_n_u32(xzp[i][j]), wzv));
          d = vandq_u32(d, valid);
          vcnt[i] = vaddq_u32(vcnt[i], popcnt32(valid));
        }
        cnt[i] = vaddq_u32(cnt[i], popcnt32(d));
      }
    }
    for (int i = 0; i < P; ++i) {
      const int32x4_t base_cnt = kMasked ? vreinterpretq_s32_u32(vcnt[i]) : cvec;
      const int32x4_t dot = vsubq_s32(base_cnt, vreinterpretq_s32_u32(vshlq_n_u32(cnt[i], 1)));
      acc[i] = vfmaq_n_f32(acc[i], vcvtq_f32_s32(dot), xs[base[i] + g.tap_off[k]]);
    }
  }
  const float32x4_t av = vld1q_f32(g.alpha + ob * kLanes);
  const float32x4_t bv = vld1q_f32(g.bias + ob * kLanes);
  for (int i = 0; i < P; ++i) out[i] = vfmaq_f32(bv, acc[i], av);
}

template <int P, bool kMasked>
inline void run_pixels(const Gemm& g, const Tile& t, int ow, int ob, const uint32_t* xb,
                       const uint32_t* xz, const float* xs) {
  int64_t base[P];
  for (int i = 0; i < P; ++i) base[i] = g.in_pixel(t.oh, ow + i);
  float32x4_t out[P];
  block<P, kMasked>(g, xb, xz, xs, base, ob, out);
  for (int i = 0; i < P; ++i) {
    float vals[kLanes];
    vst1q_f32(vals, out[i]);
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

void gemm_neon(const Gemm& g, const Tile& t) {
  if (g.wz)
    gemm_impl<true>(g, t);
  else
    gemm_impl<false>(g, t);
}

}  // namespace detail
}  // namespace cpu
}  // namespace bimaco
#endif  // __aarch64__
