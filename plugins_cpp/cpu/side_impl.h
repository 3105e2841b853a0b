// Side-branch epilogue (SideBranches in binary_ops_cpu.h), included by one kernel file
// per instruction set so that each copy is vectorised for that file's target. The
// anonymous namespace keeps the copies apart: identical inline functions compiled for
// different targets must not be merged by the linker.
#pragma once

#include <algorithm>

#include "kernel_common.h"

namespace bimaco {
namespace cpu {
namespace detail {
namespace {

// Register blocks of kBlock floats as four 8-float vectors (GCC/Clang vector extensions:
// AVX registers in the AVX2 build, SSE pairs or NEON quads elsewhere), kept in registers
// across the reduction loop; a runtime-length accumulator array would live in memory.
constexpr int kBlock = 32;
#if defined(__GNUC__) && !defined(__clang__)
// The scalar build passes v8f between these inline functions, which all stay inside this
// file's anonymous namespace: GCC's note that such calls would have another ABI without
// AVX concerns no boundary anyone calls across.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float v8f __attribute__((vector_size(32), aligned(4)));  // aligned(4): unaligned loads OK

inline v8f splat(float v) { return v8f{v, v, v, v, v, v, v, v}; }
inline v8f load8(const float* p) { return *reinterpret_cast<const v8f*>(p); }
inline void store8(float* p, v8f v) { *reinterpret_cast<v8f*>(p) = v; }

typedef int32_t v8i __attribute__((vector_size(32), aligned(4)));

// RPReLU of 8 values: v = y + b0, then (v > 0 ? v : 0) + a * (v > 0 ? 0 : v), plus b1.
// Exactly "v > 0 ? v : a * v" (NaN included), written with a compare mask and bitwise
// selects, which both GCC and Clang keep as whole-vector operations.
inline v8f rprelu8(v8f y, float b0, float a, float b1) {
  const v8f v = y + splat(b0);
  const v8i pos = v > splat(0.f);
  const v8f p = (v8f)((v8i)v & pos), n = (v8f)((v8i)v & ~pos);
  return (p + splat(a) * n) + splat(b1);
}

// The epilogue of one output channel's pixels y[i], i < n (contiguous), in one pass with
// V 8-float vectors in registers at a time, in the reference's order of additions:
//   y = ((RPReLU(y) + sum_e val[e] * x[col[e]]) + sum_r up[r] * t[r])
// Each branch is summed apart and then added, as the reference adds whole branch outputs.
// rp: {b0, slope, b1} or nullptr; e0 == e1: no SMB entries; rank 0: no LRMB.
struct RowTerms {
  const float* rp;
  const int16_t* col;
  const float* val;
  int e0, e1;
  const float* x;
  int64_t x_stride;
  const float* up;
  const float* t;
  int64_t t_stride;
  int rank;
};

template <int V>
inline void finish_vectors(float* y, int i, const RowTerms& r) {
  v8f yv[V], a[V];
  for (int k = 0; k < V; ++k) yv[k] = load8(y + i + 8 * k);
  if (r.rp)
    for (int k = 0; k < V; ++k) yv[k] = rprelu8(yv[k], r.rp[0], r.rp[1], r.rp[2]);
  if (r.e0 < r.e1) {
    for (int k = 0; k < V; ++k) a[k] = splat(0.f);
    for (int e = r.e0; e < r.e1; ++e) {
      const v8f v = splat(r.val[e]);
      const float* xc = r.x + int64_t(r.col[e]) * r.x_stride + i;
      for (int k = 0; k < V; ++k) a[k] += v * load8(xc + 8 * k);
    }
    for (int k = 0; k < V; ++k) yv[k] += a[k];
  }
  if (r.rank) {
    for (int k = 0; k < V; ++k) a[k] = splat(0.f);
    for (int q = 0; q < r.rank; ++q) {
      const v8f b = splat(r.up[q]);
      const float* tq = r.t + q * r.t_stride + i;
      for (int k = 0; k < V; ++k) a[k] += b * load8(tq + 8 * k);
    }
    for (int k = 0; k < V; ++k) yv[k] += a[k];
  }
  for (int k = 0; k < V; ++k) store8(y + i + 8 * k, yv[k]);
}

inline void finish_row(float* y, int n, const RowTerms& r) {
  int i = 0;
  for (; i + kBlock <= n; i += kBlock) finish_vectors<kBlock / 8>(y, i, r);
  for (; i + 8 <= n; i += 8) finish_vectors<1>(y, i, r);  // rows of 8 and 16 pixels
  for (; i < n; ++i) {
    float v = y[i];
    if (r.rp) {
      const float u = v + r.rp[0];
      v = (std::max(u, 0.f) + r.rp[1] * std::min(u, 0.f)) + r.rp[2];
    }
    if (r.e0 < r.e1) {
      float a = 0.f;
      for (int e = r.e0; e < r.e1; ++e) a += r.val[e] * r.x[int64_t(r.col[e]) * r.x_stride + i];
      v += a;
    }
    if (r.rank) {
      float a = 0.f;
      for (int q = 0; q < r.rank; ++q) a += r.up[q] * r.t[q * r.t_stride + i];
      v += a;
    }
    y[i] = v;
  }
}

// Planar layout: y[n][o][p], pixels contiguous; x[n][c][p] on the same pixel grid.
inline void side_planes(const Gemm& g, const Tile& t) {
  const SideBranches& s = *g.side;
  const int o0 = t.ob0 * g.lanes, o1 = std::min(g.o, t.ob1 * g.lanes);
  const int np = t.ow1 - t.ow0;
  const int64_t p0 = int64_t(t.oh) * g.wo + t.ow0;
  const float* xn = g.x + t.n * g.x_n_stride + (p0 - g.x_p0);
  const float* tn = g.lr_t ? g.lr_t + t.n * g.lr_n_stride + (p0 - g.x_p0) : nullptr;
  const int rank = tn ? s.rank : 0;
  for (int o = o0; o < o1; ++o) {
    float rp[3];
    if (s.rp_b0) rp[0] = s.rp_b0[o], rp[1] = s.rp_slope[o], rp[2] = s.rp_b1[o];
    const RowTerms r{s.rp_b0 ? rp : nullptr,
                     s.smb_col,
                     s.smb_val,
                     s.smb_rowptr ? s.smb_rowptr[o] : 0,
                     s.smb_rowptr ? s.smb_rowptr[o + 1] : 0,
                     xn,
                     g.x_c_stride,
                     rank ? s.lr_up + int64_t(o) * s.rank : nullptr,
                     tn,
                     g.lr_r_stride,
                     rank};
    finish_row(g.y_at(t.n, p0, o), np, r);
  }
}

// Down projection of one conv image row; rank 8 (the model's) keeps one 8-pixel vector
// per rank in registers over the whole channel loop.
inline void down_planes(const float* x, int c, int64_t x_stride, int w, int rank, const float* down_t, float* t,
                        int64_t t_stride) {
  int i = 0;
  if (rank == 8) {
    for (; i + 8 <= w; i += 8) {
      v8f a0 = splat(0.f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
      for (int ch = 0; ch < c; ++ch) {
        const v8f xv = load8(x + ch * x_stride + i);
        const float* d = down_t + ch * 8;
        a0 += splat(d[0]) * xv;
        a1 += splat(d[1]) * xv;
        a2 += splat(d[2]) * xv;
        a3 += splat(d[3]) * xv;
        a4 += splat(d[4]) * xv;
        a5 += splat(d[5]) * xv;
        a6 += splat(d[6]) * xv;
        a7 += splat(d[7]) * xv;
      }
      store8(t + i, a0);
      store8(t + t_stride + i, a1);
      store8(t + 2 * t_stride + i, a2);
      store8(t + 3 * t_stride + i, a3);
      store8(t + 4 * t_stride + i, a4);
      store8(t + 5 * t_stride + i, a5);
      store8(t + 6 * t_stride + i, a6);
      store8(t + 7 * t_stride + i, a7);
    }
  }
  for (; i < w; ++i) {
    for (int r = 0; r < rank; ++r) {
      float a = 0.f;
      for (int ch = 0; ch < c; ++ch) a += down_t[ch * rank + r] * x[ch * x_stride + i];
      t[r * t_stride + i] = a;
    }
  }
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols: a chunk of
// linear rows into the planar [C][64] layout and back. 8x8 blocks, so each block's rows
// and columns stay within a few cache lines.
inline void transpose(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int rows, int cols) {
  for (int i0 = 0; i0 < rows; i0 += 8) {
    const int i1 = std::min(rows, i0 + 8);
    for (int j0 = 0; j0 < cols; j0 += 8) {
      const int j1 = std::min(cols, j0 + 8);
      for (int i = i0; i < i1; ++i)
        for (int j = j0; j < j1; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
    }
  }
}

}  // namespace
}  // namespace detail
}  // namespace cpu
}  // namespace bimaco
