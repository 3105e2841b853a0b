// Side-branch epilogue (SideBranches in binary_ops_cpu.h), included by one kernel file
// per instruction set so that each copy is vectorised for that file's target. The
// anonymous namespace keeps the copies apart: identical inline functions compiled for
// different targets must not be merged by the linker.
#pragma once

#include <algorithm>
#include <vector>

#include "kernel_common.h"

namespace bimaco {
namespace cpu {
namespace detail {
namespace {

// Register blocks of kBlock floats as four 8-float vectors (GCC/Clang vector extensions:
// AVX registers in the AVX2 build, SSE pairs or NEON quads elsewhere), kept in registers
// across the reduction loop; a runtime-length accumulator array would live in memory.
constexpr int kBlock = 32;
typedef float v8f __attribute__((vector_size(32), aligned(4)));  // aligned(4): unaligned loads OK

inline v8f splat(float v) { return v8f{v, v, v, v, v, v, v, v}; }
inline v8f load8(const float* p) { return *reinterpret_cast<const v8f*>(p); }
inline void store8(float* p, v8f v) { *reinterpret_cast<v8f*>(p) = v; }

// add_lowrank and add_sparse share their shape on purpose: one template over a "term"
// callback measured 7% slower on the whole UNet (2.21x vs 2.36x, bimaco-deploy bench, 2
// threads), the compiler no longer keeping the accumulators in registers.

// y[i] += sum_r w[r * w_stride] * t[r * t_stride + i], i < n.
inline void add_lowrank(float* y, const float* w, int64_t w_stride, const float* t, int64_t t_stride, int rank,
                        int n) {
  int i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    v8f a0 = splat(0.f), a1 = a0, a2 = a0, a3 = a0;
    for (int r = 0; r < rank; ++r) {
      const v8f b = splat(w[r * w_stride]);
      const float* tr = t + r * t_stride + i;
      a0 += b * load8(tr);
      a1 += b * load8(tr + 8);
      a2 += b * load8(tr + 16);
      a3 += b * load8(tr + 24);
    }
    store8(y + i, load8(y + i) + a0);
    store8(y + i + 8, load8(y + i + 8) + a1);
    store8(y + i + 16, load8(y + i + 16) + a2);
    store8(y + i + 24, load8(y + i + 24) + a3);
  }
  for (; i < n; ++i) {
    float a = 0.f;
    for (int r = 0; r < rank; ++r) a += w[r * w_stride] * t[r * t_stride + i];
    y[i] += a;
  }
}

// y[i] += sum_e val[e] * x[col[e] * x_stride + i] over entries [e0, e1), i < n.
inline void add_sparse(float* y, const int16_t* col, const float* val, int e0, int e1, const float* x,
                       int64_t x_stride, int n) {
  int i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    v8f a0 = splat(0.f), a1 = a0, a2 = a0, a3 = a0;
    for (int e = e0; e < e1; ++e) {
      const v8f v = splat(val[e]);
      const float* xc = x + int64_t(col[e]) * x_stride + i;
      a0 += v * load8(xc);
      a1 += v * load8(xc + 8);
      a2 += v * load8(xc + 16);
      a3 += v * load8(xc + 24);
    }
    store8(y + i, load8(y + i) + a0);
    store8(y + i + 8, load8(y + i + 8) + a1);
    store8(y + i + 16, load8(y + i + 16) + a2);
    store8(y + i + 24, load8(y + i + 24) + a3);
  }
  for (; i < n; ++i) {
    float a = 0.f;
    for (int e = e0; e < e1; ++e) a += val[e] * x[int64_t(col[e]) * x_stride + i];
    y[i] += a;
  }
}

// Conv layout: y[n][o][p], pixels contiguous; x[n][c][p] on the same pixel grid.
inline void side_planes(const Gemm& g, const Tile& t) {
  const SideBranches& s = *g.side;
  const int o0 = t.ob0 * g.lanes, o1 = std::min(g.o, t.ob1 * g.lanes);
  const int np = t.ow1 - t.ow0;
  const int64_t hw = int64_t(g.ho) * g.wo;
  const int64_t p0 = int64_t(t.oh) * g.wo + t.ow0;
  const float* xn = g.x + int64_t(t.n) * g.c * hw + p0;
  const float* tn = g.lr_t ? g.lr_t + int64_t(t.n) * s.rank * hw + p0 : nullptr;
  for (int o = o0; o < o1; ++o) {
    float* y = g.y + t.n * g.y_n_stride + int64_t(o) * g.y_o_stride + p0;
    if (s.rp_b0) {
      const float b0 = s.rp_b0[o], a = s.rp_slope[o], b1 = s.rp_b1[o];
      // max(v, 0) + a * min(v, 0) is exactly "v > 0 ? v : a * v" for finite a, in a form
      // the compiler vectorises (the select does not)
      for (int i = 0; i < np; ++i) {
        const float v = y[i] + b0;
        y[i] = (std::max(v, 0.f) + a * std::min(v, 0.f)) + b1;
      }
    }
    if (s.smb_rowptr) {
      const int e0 = s.smb_rowptr[o], e1 = s.smb_rowptr[o + 1];
      if (e0 < e1) {
        add_sparse(y, s.smb_col, s.smb_val, e0, e1, xn, hw, np);
      }
    }
    if (tn) {
      const float* up = s.lr_up + int64_t(o) * s.rank;
      add_lowrank(y, up, 1, tn, hw, s.rank, np);
    }
  }
}

// Linear layout: y[p][o], channels contiguous; x[p][c]. LRMB runs along each row's
// channels. SMB then works on the tile transposed: with x as [c][row], every entry is a
// vector multiply-add across the tile's rows (as in the conv layout) instead of one
// scalar gather per row.
inline void side_rows(const Gemm& g, const Tile& t) {
  const SideBranches& s = *g.side;
  const int o_begin = t.ob0 * g.lanes, o_end = std::min(g.o, t.ob1 * g.lanes), no = o_end - o_begin;
  const int np = t.ow1 - t.ow0;
  const int64_t p0 = int64_t(t.oh) * g.wo + t.ow0;
  float* y0 = g.y + t.n * g.y_n_stride + p0 * g.y_p_stride;
  if (g.lr_t) {
    for (int i = 0; i < np; ++i)
      add_lowrank(y0 + i * g.y_p_stride + o_begin, g.lr_t + (p0 + i) * s.rank, 1, g.lr_up_t + o_begin, g.o, s.rank,
                  no);
  }
  if (!s.smb_rowptr) return;
  thread_local std::vector<float> xt;  // [c][kPixelChunk]
  xt.resize(size_t(g.c) * kPixelChunk);
  const float* x0 = g.x + p0 * g.c;
  for (int i = 0; i < np; ++i)
    for (int c = 0; c < g.c; ++c) xt[size_t(c) * kPixelChunk + i] = x0[int64_t(i) * g.c + c];
  float a[kPixelChunk];
  for (int o = o_begin; o < o_end; ++o) {
    const int e0 = s.smb_rowptr[o], e1 = s.smb_rowptr[o + 1];
    if (e0 == e1) continue;  // adds 0
    for (int i = 0; i < np; ++i) a[i] = 0.f;
    add_sparse(a, s.smb_col, s.smb_val, e0, e1, xt.data(), kPixelChunk, np);
    float* yo = y0 + o;
    for (int i = 0; i < np; ++i) yo[i * g.y_p_stride] += a[i];
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

// Down projection of linear rows: rank dot products of length k per row.
inline void down_rows(const float* x, int64_t rows, int k, int rank, const float* down, float* t) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * k;
    for (int r = 0; r < rank; ++r) {
      const float* d = down + int64_t(r) * k;
      v8f a = splat(0.f);
      int ch = 0;
      for (; ch + 8 <= k; ch += 8) a += load8(d + ch) * load8(xr + ch);
      float sum = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
      for (; ch < k; ++ch) sum += d[ch] * xr[ch];
      t[i * rank + r] = sum;
    }
  }
}

inline void side_tile(const Gemm& g, const Tile& t) {
  if (g.row_major)
    side_rows(g, t);
  else
    side_planes(g, t);
}

}  // namespace
}  // namespace detail
}  // namespace cpu
}  // namespace bimaco
