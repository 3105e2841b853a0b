// AVX2 kernels (x86-64 with AVX2 + FMA): 8 output channels per 256-bit vector, the
// activation word of one pixel broadcast against them, popcount by the nibble-lookup
// (vpshufb) method with byte counters flushed to 32-bit every 31 words.
// Also the AVX2 sign packing (8 pixels per vector, compare -> bit or).
#if defined(__x86_64__) || defined(_M_X64)
// Shared headers first, compiled for baseline x86-64 (see BIMACO_TARGET_BEGIN).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernel_common.h"

BIMACO_TARGET_BEGIN("avx2,fma,popcnt")
#include "side_impl.h"  // its own anonymous namespace: this file's copy, built for AVX2

namespace bimaco {
namespace cpu {
namespace detail {
namespace {

constexpr int kLanes = 8;
// byte counters hold at most 8 per word: flush before 255 / 8 words
constexpr int kFlushWords = 31;

inline __m256i popcnt_bytes(__m256i v, __m256i lut, __m256i low) {
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

inline __m256i bytes_to_u32(__m256i b) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(b, _mm256_set1_epi8(1)), _mm256_set1_epi16(1));
}

// P output pixels x 8 output channels (block ob): out[i][l]. kWords > 0 fixes the word
// count at compile time (the published model's channel counts) so the word loop unrolls.
template <int P, bool kMasked, int kWords>
inline void block(const Gemm& g, const uint32_t* xb, const uint32_t* xz, const float* xs,
                  const int64_t* base, int ob, __m256* out) {
  const int words = kWords > 0 ? kWords : g.words;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1,
                                       2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi32(-1);
  const __m256i cvec = _mm256_set1_epi32(g.c);
  const uint32_t* wblk = g.w + int64_t(ob) * g.taps * words * kLanes;
  const uint32_t* wzblk = kMasked ? g.wz + int64_t(ob) * g.taps * words * kLanes : nullptr;
  __m256 acc[P];
  for (int i = 0; i < P; ++i) acc[i] = _mm256_setzero_ps();
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
    __m256i cnt[P], vcnt[P];
    for (int i = 0; i < P; ++i) cnt[i] = vcnt[i] = _mm256_setzero_si256();
    for (int j0 = 0; j0 < words; j0 += kFlushWords) {
      const int j1 = std::min(words, j0 + kFlushWords);
      __m256i bd[P], bv[P];
      for (int i = 0; i < P; ++i) bd[i] = bv[i] = _mm256_setzero_si256();
      // not unrolled: fully unrolled (kWords fixed), GCC hoists every lookup of every word
      // ahead of the byte adds and spills them to the stack (4-10% slower on the model's shapes)
#pragma GCC unroll 1
      for (int j = j0; j < j1; ++j) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk + j * kLanes));
        __m256i wzv = _mm256_setzero_si256();
        if (kMasked) wzv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wzk + j * kLanes));
        for (int i = 0; i < P; ++i) {
          __m256i d = _mm256_xor_si256(_mm256_set1_epi32(int(xp[i][j])), wv);
          if (kMasked) {
            const __m256i valid =
                _mm256_andnot_si256(_mm256_or_si256(_mm256_set1_epi32(int(xzp[i][j])), wzv), ones);
            d = _mm256_and_si256(d, valid);
            bv[i] = _mm256_add_epi8(bv[i], popcnt_bytes(valid, lut, low));
          }
          bd[i] = _mm256_add_epi8(bd[i], popcnt_bytes(d, lut, low));
        }
      }
      for (int i = 0; i < P; ++i) {
        cnt[i] = _mm256_add_epi32(cnt[i], bytes_to_u32(bd[i]));
        if (kMasked) vcnt[i] = _mm256_add_epi32(vcnt[i], bytes_to_u32(bv[i]));
      }
    }
    for (int i = 0; i < P; ++i) {
      const __m256i dot = _mm256_sub_epi32(kMasked ? vcnt[i] : cvec, _mm256_slli_epi32(cnt[i], 1));
      const __m256 sv = _mm256_set1_ps(xs[base[i] + g.tap_off[k]]);
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sv, acc[i]);
    }
  }
  const __m256 av = _mm256_loadu_ps(g.alpha + ob * kLanes);
  const __m256 bvv = _mm256_loadu_ps(g.bias + ob * kLanes);
  for (int i = 0; i < P; ++i) out[i] = _mm256_fmadd_ps(acc[i], av, bvv);
}

template <int P, bool kMasked, int kWords>
inline void run_pixels(const Gemm& g, const Tile& t, int ow, int ob, const uint32_t* xb,
                       const uint32_t* xz, const float* xs) {
  int64_t base[P];
  for (int i = 0; i < P; ++i) base[i] = g.in_pixel(t.oh, ow + i);
  __m256 out[P];
  block<P, kMasked, kWords>(g, xb, xz, xs, base, ob, out);
  const bool full_block = (ob + 1) * kLanes <= g.o;
  if constexpr (P == 4) {
    if (g.y_p_stride == 1 && full_block) {
      // NCHW output: transpose 4 pixels x 8 channels so each channel row gets one
      // 4-float store instead of 4 scalar stores
      const __m256 t0 = _mm256_unpacklo_ps(out[0], out[1]), t1 = _mm256_unpackhi_ps(out[0], out[1]);
      const __m256 t2 = _mm256_unpacklo_ps(out[2], out[3]), t3 = _mm256_unpackhi_ps(out[2], out[3]);
      const __m256 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                           _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
      float* dst = g.y_at(t.n, int64_t(t.oh) * g.wo + ow, ob * kLanes);
      for (int l = 0; l < 4; ++l) {
        _mm_storeu_ps(dst + l * g.y_o_stride, _mm256_castps256_ps128(u[l]));
        _mm_storeu_ps(dst + (l + 4) * g.y_o_stride, _mm256_extractf128_ps(u[l], 1));
      }
      return;
    }
  }
  const bool direct = g.y_o_stride == 1 && full_block;
  for (int i = 0; i < P; ++i) {
    const int64_t p = int64_t(t.oh) * g.wo + ow + i;
    if (direct) {
      _mm256_storeu_ps(g.y_at(t.n, p, ob * kLanes), out[i]);
    } else {
      alignas(32) float vals[kLanes];
      _mm256_store_ps(vals, out[i]);
      store_block(g, t.n, p, ob, vals);
    }
  }
}

template <bool kMasked, int kWords>
void gemm_impl(const Gemm& g, const Tile& t) {
  constexpr int P = kMasked ? 2 : 4;
  const int64_t img = int64_t(t.n) * g.img_pixels;
  const uint32_t* xb = g.xbits + img * g.words;
  const uint32_t* xz = kMasked ? g.xzero + img * g.words : nullptr;
  const float* xs = g.xs + img;
  for (int ob = t.ob0; ob < t.ob1; ++ob) {
    int ow = t.ow0;
    for (; ow + P <= t.ow1; ow += P) run_pixels<P, kMasked, kWords>(g, t, ow, ob, xb, xz, xs);
    for (; ow < t.ow1; ++ow) run_pixels<1, kMasked, kWords>(g, t, ow, ob, xb, xz, xs);
  }
}

}  // namespace

void side_avx2(const Gemm& g, const Tile& t) { side_planes(g, t); }
void down_planes_avx2(const float* x, int c, int64_t x_stride, int w, int rank, const float* down_t, float* t,
                        int64_t t_stride) {
  down_planes(x, c, x_stride, w, rank, down_t, t, t_stride);
}
void transpose_avx2(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int rows, int cols) {
  int i0 = 0;
  for (; i0 + 8 <= rows; i0 += 8) {
    int j0 = 0;
    for (; j0 + 8 <= cols; j0 += 8) {
      const float* s = src + i0 * src_stride + j0;
      __m256 r[8];
      for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(s + k * src_stride);
      const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
      const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
      const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
      const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* d = dst + j0 * dst_stride + i0;
      _mm256_storeu_ps(d + 0 * dst_stride, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(d + 1 * dst_stride, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(d + 2 * dst_stride, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(d + 3 * dst_stride, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(d + 4 * dst_stride, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(d + 5 * dst_stride, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(d + 6 * dst_stride, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(d + 7 * dst_stride, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    if (j0 < cols) transpose(src + i0 * src_stride + j0, src_stride, dst + j0 * dst_stride + i0, dst_stride, 8, cols - j0);
  }
  if (i0 < rows) transpose(src + i0 * src_stride, src_stride, dst + i0, dst_stride, rows - i0, cols);
}

void gemm_avx2(const Gemm& g, const Tile& t) {
  if (g.wz) return gemm_impl<true, 0>(g, t);
  switch (g.words) {  // 160, 192, 320, 480, 640, 768, 960 channels
    case 5:
      return gemm_impl<false, 5>(g, t);
    case 6:
      return gemm_impl<false, 6>(g, t);
    case 10:
      return gemm_impl<false, 10>(g, t);
    case 15:
      return gemm_impl<false, 15>(g, t);
    case 20:
      return gemm_impl<false, 20>(g, t);
    case 24:
      return gemm_impl<false, 24>(g, t);
    case 30:
      return gemm_impl<false, 30>(g, t);
    default:
      return gemm_impl<false, 0>(g, t);
  }
}

bool pack_row_avx2(const float* x, int c, int64_t hw, int w, int words, uint32_t* bits,
                   uint32_t* zero, float* s) {
  const __m256 zf = _mm256_setzero_ps();
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  // a true division, as torch's mean: sum * (1/c) can be 1 ulp off (e.g. c = 470)
  const __m256 cnum = _mm256_set1_ps(float(c));
  __m256i anyz = _mm256_setzero_si256();
  int i = 0;
  for (; i + 8 <= w; i += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int j = 0; j < words; ++j) {
      __m256i nb = _mm256_setzero_si256(), zb = _mm256_setzero_si256();
      const int cend = std::min(c, 32 * j + 32);
      for (int ch = 32 * j; ch < cend; ++ch) {
        const __m256 v = _mm256_loadu_ps(x + int64_t(ch) * hw + i);
        const __m256i bit = _mm256_set1_epi32(int(1u << (ch - 32 * j)));
        nb = _mm256_or_si256(nb, _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(v, zf, _CMP_LT_OQ)), bit));
        zb = _mm256_or_si256(zb, _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(v, zf, _CMP_EQ_OQ)), bit));
        acc = _mm256_add_ps(acc, _mm256_and_ps(v, absmask));
      }
      anyz = _mm256_or_si256(anyz, zb);
      alignas(32) uint32_t nbs[8], zbs[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(nbs), nb);
      _mm256_store_si256(reinterpret_cast<__m256i*>(zbs), zb);
      for (int l = 0; l < 8; ++l) {
        bits[int64_t(i + l) * words + j] = nbs[l];
        zero[int64_t(i + l) * words + j] = zbs[l];
      }
    }
    _mm256_storeu_ps(s + i, _mm256_div_ps(acc, cnum));
  }
  bool any_zero = !_mm256_testz_si256(anyz, anyz);
  if (i < w) {
    any_zero |= pack_row_scalar(x + i, c, hw, w - i, words, bits + int64_t(i) * words,
                                zero + int64_t(i) * words, s + i);
  }
  return any_zero;
}

}  // namespace detail
}  // namespace cpu
}  // namespace bimaco

BIMACO_TARGET_END
#endif  // x86-64
