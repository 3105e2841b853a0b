// The implicit-GEMM loops of the SIMD kernels (AVX-512, AVX2, NEON), written once over a
// small per-ISA traits type V. Each kernels_<isa>.cpp keeps only its intrinsics (V) and
// the entry point gemm_<isa> = simd::gemm<V>, and includes this header after its
// BIMACO_TARGET_BEGIN, so every instantiation is compiled with that file's flags and no
// other's. Everything here is in an anonymous namespace (and V is too): no instantiation
// is a symbol the linker could share with another file, so code built for AVX-512 cannot
// end up called from an AVX2-only path (see BIMACO_TARGET_BEGIN in kernel_common.h).
//
// Work of one call (block): P output pixels x V::kLanes output channels (one channel block
// ob), for each tap the XNOR-popcount dot over the packed words, scaled by the tap pixel's
// s and summed; then alpha * acc + bias. The word loop broadcasts one activation word per
// pixel against kLanes weight words.
//
// What V provides (all static, inline):
//   kLanes                 output channels per vector (the weight repacking's lanes)
//   kPixels, kPixelsMasked pixels per register block, fast and zero-masked paths
//   kFlushWords            0: count_add adds 32-bit popcounts (a native per-lane popcount);
//                          N > 0: Count holds byte counters, widened into 32-bit counts
//                          by widen() every N words (before they can overflow)
//   kFixedWords            instantiate the model's word counts (see gemm below) so that the
//                          word loop's bounds are compile-time constants
//   kTransposedStore       P (or 0): V::store_transposed writes P pixels x kLanes channels
//                          into a planar output (channel rows dst + l * stride)
//   U (32-bit int lanes), F (float lanes), Count (popcount accumulator), Consts (constants
//   the popcount needs, made once per block by consts())
//   load, splat, zero, bxor, band, nor (~(a | b)), add, dot (base - 2 * cnt),
//   count_zero, count_add, widen, to_float (lanes as signed int32), fzero, fsplat, fload,
//   fstore, madd (a * b + c, fused)
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernel_common.h"

namespace bimaco {
namespace cpu {
namespace detail {
namespace {
namespace simd {

// Adds the popcounts of words [j0, j1) of the tap into bd (and, masked, the valid-bit counts
// into bv): bd[i] += popc((x_i ^ w) & ~(xz_i | wz)), bv[i] += popc(~(xz_i | wz)).
template <class V, int P, bool kMasked>
__attribute__((always_inline)) inline void count_words(const typename V::Consts& k, const uint32_t* wk,
                                                       const uint32_t* wzk, const uint32_t* const* xp,
                                                       const uint32_t* const* xzp, int j0, int j1,
                                                       typename V::Count* bd, typename V::Count* bv) {
  // not unrolled: fully unrolled (kFixedWords), GCC hoists every popcount lookup of every
  // word ahead of the adds and spills them to the stack (4-10% slower on the model's shapes)
#pragma GCC unroll 1
  for (int j = j0; j < j1; ++j) {
    const typename V::U wv = V::load(wk + j * V::kLanes);
    typename V::U wzv = V::zero();
    if (kMasked) wzv = V::load(wzk + j * V::kLanes);
    for (int i = 0; i < P; ++i) {
      typename V::U d = V::bxor(V::splat(xp[i][j]), wv);
      if (kMasked) {
        const typename V::U valid = V::nor(V::splat(xzp[i][j]), wzv);
        d = V::band(d, valid);
        bv[i] = V::count_add(k, bv[i], valid);
      }
      bd[i] = V::count_add(k, bd[i], d);
    }
  }
}

// P output pixels (first padded input pixels base[i]) x kLanes channels of block ob: out[i].
// kWords > 0 fixes the word count at compile time.
template <class V, int P, bool kMasked, int kWords>
inline void block(const Gemm& g, const uint32_t* xb, const uint32_t* xz, const float* xs, const int64_t* base, int ob,
                  typename V::F* out) {
  using U = typename V::U;
  using Count = typename V::Count;
  constexpr int L = V::kLanes;
  const int words = kWords > 0 ? kWords : g.words;
  const typename V::Consts k = V::consts();
  const U cvec = V::splat(uint32_t(g.c));
  const uint32_t* wblk = g.w + int64_t(ob) * g.taps * words * L;
  const uint32_t* wzblk = kMasked ? g.wz + int64_t(ob) * g.taps * words * L : nullptr;
  typename V::F acc[P];
  for (int i = 0; i < P; ++i) acc[i] = V::fzero();
  for (int t = 0; t < g.taps; ++t) {
    const uint32_t* xp[P];
    const uint32_t* xzp[P];
    for (int i = 0; i < P; ++i) {
      const int64_t q = base[i] + g.tap_off[t];
      xp[i] = xb + q * words;
      xzp[i] = kMasked ? xz + q * words : nullptr;
    }
    const uint32_t* wk = wblk + int64_t(t) * words * L;
    const uint32_t* wzk = kMasked ? wzblk + int64_t(t) * words * L : nullptr;
    U cnt[P], vcnt[P];
    if constexpr (V::kFlushWords > 0) {
      for (int i = 0; i < P; ++i) cnt[i] = vcnt[i] = V::zero();
      for (int j0 = 0; j0 < words; j0 += V::kFlushWords) {
        Count bd[P], bv[P];
        for (int i = 0; i < P; ++i) bd[i] = bv[i] = V::count_zero();
        count_words<V, P, kMasked>(k, wk, wzk, xp, xzp, j0, std::min(words, j0 + V::kFlushWords), bd, bv);
        for (int i = 0; i < P; ++i) {
          cnt[i] = V::add(cnt[i], V::widen(bd[i]));
          if (kMasked) vcnt[i] = V::add(vcnt[i], V::widen(bv[i]));
        }
      }
    } else {
      for (int i = 0; i < P; ++i) cnt[i] = vcnt[i] = V::count_zero();
      count_words<V, P, kMasked>(k, wk, wzk, xp, xzp, 0, words, cnt, vcnt);
    }
    for (int i = 0; i < P; ++i) {
      const U dot = V::dot(kMasked ? vcnt[i] : cvec, cnt[i]);
      acc[i] = V::madd(V::to_float(dot), V::fsplat(xs[base[i] + g.tap_off[t]]), acc[i]);
    }
  }
  const typename V::F av = V::fload(g.alpha + ob * L);
  const typename V::F bv = V::fload(g.bias + ob * L);
  for (int i = 0; i < P; ++i) out[i] = V::madd(acc[i], av, bv);
}

// Output pixels ow .. ow + P - 1 of the tile's row, channel block ob: computed and stored.
template <class V, int P, bool kMasked, int kWords>
inline void run_pixels(const Gemm& g, const Tile& t, int ow, int ob, const uint32_t* xb, const uint32_t* xz,
                       const float* xs) {
  constexpr int L = V::kLanes;
  int64_t base[P];
  for (int i = 0; i < P; ++i) base[i] = g.in_pixel(t.oh, ow + i);
  typename V::F out[P];
  block<V, P, kMasked, kWords>(g, xb, xz, xs, base, ob, out);
  const bool full_block = (ob + 1) * L <= g.o;
  if constexpr (P == V::kTransposedStore) {
    if (g.y_p_stride == 1 && full_block) {  // planar output: one P-float store per channel row
      V::store_transposed(g.y_at(t.n, int64_t(t.oh) * g.wo + ow, ob * L), g.y_o_stride, out);
      return;
    }
  }
  const int64_t p0 = int64_t(t.oh) * g.wo + ow;
  if (g.y_o_stride == 1 && full_block) {  // channel-last output: whole vectors
    for (int i = 0; i < P; ++i) V::fstore(g.y_at(t.n, p0 + i, ob * L), out[i]);
    return;
  }
  for (int i = 0; i < P; ++i) {
    alignas(64) float vals[L];
    V::fstore(vals, out[i]);
    store_block(g, t.n, p0 + i, ob, vals);
  }
}

template <class V, bool kMasked, int kWords>
void gemm_tile(const Gemm& g, const Tile& t) {
  constexpr int P = kMasked ? V::kPixelsMasked : V::kPixels;
  const int64_t img = int64_t(t.n) * g.img_pixels;
  const uint32_t* xb = g.xbits + img * g.words;
  const uint32_t* xz = kMasked ? g.xzero + img * g.words : nullptr;
  const float* xs = g.xs + img;
  for (int ob = t.ob0; ob < t.ob1; ++ob) {
    int ow = t.ow0;
    for (; ow + P <= t.ow1; ow += P) run_pixels<V, P, kMasked, kWords>(g, t, ow, ob, xb, xz, xs);
    for (; ow < t.ow1; ++ow) run_pixels<V, 1, kMasked, kWords>(g, t, ow, ob, xb, xz, xs);
  }
}

// The kernel of one tile: the zero-masked path when the problem has zeros, else the fast
// path, with the word count fixed for the model's channel counts where V asks for it.
template <class V>
void gemm(const Gemm& g, const Tile& t) {
  if (g.wz) return gemm_tile<V, true, 0>(g, t);
  if constexpr (V::kFixedWords) {
    switch (g.words) {  // 160, 192, 320, 480, 640, 768, 960 channels
      case 5:
        return gemm_tile<V, false, 5>(g, t);
      case 6:
        return gemm_tile<V, false, 6>(g, t);
      case 10:
        return gemm_tile<V, false, 10>(g, t);
      case 15:
        return gemm_tile<V, false, 15>(g, t);
      case 20:
        return gemm_tile<V, false, 20>(g, t);
      case 24:
        return gemm_tile<V, false, 24>(g, t);
      case 30:
        return gemm_tile<V, false, 30>(g, t);
      default:
        break;
    }
  }
  gemm_tile<V, false, 0>(g, t);
}

}  // namespace simd
}  // namespace
}  // namespace detail
}  // namespace cpu
}  // namespace bimaco
