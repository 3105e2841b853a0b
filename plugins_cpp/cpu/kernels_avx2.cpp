// AVX2 kernels (x86-64 with AVX2 + FMA): 8 output channels per 256-bit vector, the
// activation word of one pixel broadcast against them, popcount by the nibble-lookup
// (vpshufb) method with byte counters flushed to 32-bit every 31 words. The GEMM loops are
// simd_gemm.h's; this file holds their intrinsics (Avx2), the AVX2 sign packing (8 pixels
// per vector, compare -> bit or) and the AVX2 builds of the side-branch epilogue.
#if defined(__x86_64__) || defined(_M_X64)
// Shared headers first, compiled for baseline x86-64 (see BIMACO_TARGET_BEGIN).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernel_common.h"

BIMACO_TARGET_BEGIN("avx2,fma,popcnt")

#include "side_impl.h"  // its own anonymous namespace: this file's copy, built for AVX2
#include "simd_gemm.h"

namespace bimaco {
namespace cpu {
namespace detail {
namespace {

inline __m256i popcnt_bytes(__m256i v, __m256i lut, __m256i low) {
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

inline __m256i bytes_to_u32(__m256i b) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(b, _mm256_set1_epi8(1)), _mm256_set1_epi16(1));
}

struct Avx2 {
  static constexpr int kLanes = 8;
  // masked: 2 pixels, so that counters, valid counts and lookups fit the 16 registers
  static constexpr int kPixels = 4, kPixelsMasked = 2;
  // byte counters hold at most 8 per word: flush before 255 / 8 words
  static constexpr int kFlushWords = 31;
  static constexpr bool kFixedWords = true;
  static constexpr int kTransposedStore = 4;
  using U = __m256i;
  using F = __m256;
  using Count = __m256i;  // 32 byte counters
  struct Consts {
    __m256i lut, low;
  };

  static Consts consts() {
    return {_mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3,
                             3, 4),
            _mm256_set1_epi8(0x0f)};
  }
  static U load(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static U splat(uint32_t v) { return _mm256_set1_epi32(int(v)); }
  static U zero() { return _mm256_setzero_si256(); }
  static U bxor(U a, U b) { return _mm256_xor_si256(a, b); }
  static U band(U a, U b) { return _mm256_and_si256(a, b); }
  static U nor(U a, U b) { return _mm256_andnot_si256(_mm256_or_si256(a, b), _mm256_set1_epi32(-1)); }
  static U add(U a, U b) { return _mm256_add_epi32(a, b); }
  static U dot(U base, U cnt) { return _mm256_sub_epi32(base, _mm256_slli_epi32(cnt, 1)); }
  static Count count_zero() { return _mm256_setzero_si256(); }
  static Count count_add(const Consts& k, Count c, U v) { return _mm256_add_epi8(c, popcnt_bytes(v, k.lut, k.low)); }
  static U widen(Count c) { return bytes_to_u32(c); }
  static F to_float(U v) { return _mm256_cvtepi32_ps(v); }
  static F fzero() { return _mm256_setzero_ps(); }
  static F fsplat(float v) { return _mm256_set1_ps(v); }
  static F fload(const float* p) { return _mm256_loadu_ps(p); }
  static void fstore(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F madd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }

  // 4 pixels x 8 channels, transposed so that each channel row of a planar output gets one
  // 4-float store instead of 4 scalar ones.
  static void store_transposed(float* dst, int64_t stride, const F* out) {
    const __m256 t0 = _mm256_unpacklo_ps(out[0], out[1]), t1 = _mm256_unpackhi_ps(out[0], out[1]);
    const __m256 t2 = _mm256_unpacklo_ps(out[2], out[3]), t3 = _mm256_unpackhi_ps(out[2], out[3]);
    const __m256 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                         _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
    for (int l = 0; l < 4; ++l) {
      _mm_storeu_ps(dst + l * stride, _mm256_castps256_ps128(u[l]));
      _mm_storeu_ps(dst + (l + 4) * stride, _mm256_extractf128_ps(u[l], 1));
    }
  }
};

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

void gemm_avx2(const Gemm& g, const Tile& t) { simd::gemm<Avx2>(g, t); }

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
