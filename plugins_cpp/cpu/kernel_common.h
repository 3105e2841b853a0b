// Internal to plugins_cpp/cpu: the packed problem every ISA-specific GEMM kernel
// consumes, and the per-ISA entry points. Not part of the public API.
#pragma once

#include <cstddef>
#include <cstdint>

#include "binary_ops_cpu.h"

// The functions between BIMACO_TARGET_BEGIN("avx2,fma") and BIMACO_TARGET_END are compiled
// for those extra instruction sets (GCC and Clang), the rest of the file for the baseline.
// A kernels_<isa>.cpp includes every header it shares with other files (this one, the
// standard library) BEFORE the BEGIN, and after it only code of its own, in an anonymous
// namespace or named for the ISA (gemm_avx2, ...). Why: an inline function or template
// instance with external linkage (store_block, std::min<float>, ...) is emitted by every
// object file that does not inline it, and the linker keeps one copy for all. Compiled
// after the BEGIN, that copy could hold AVX-512 (or AVX2, or POPCNT) instructions and be
// called from the portable path on a CPU without them. tests/plugins/test_cpu_kernels.py
// (test_isa_specific_code_stays_in_its_own_kernel) checks the object code at -O0/-O2/-O3.
#define BIMACO_PRAGMA(tokens) _Pragma(#tokens)
#if defined(__clang__)
#define BIMACO_TARGET_BEGIN(isa) BIMACO_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define BIMACO_TARGET_END BIMACO_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
#define BIMACO_TARGET_BEGIN(isa) BIMACO_PRAGMA(GCC push_options) BIMACO_PRAGMA(GCC target(isa))
#define BIMACO_TARGET_END BIMACO_PRAGMA(GCC pop_options)
#else
#define BIMACO_TARGET_BEGIN(isa)
#define BIMACO_TARGET_END
#endif

namespace bimaco {
namespace cpu {
namespace detail {

// Output pixels of one row per work item (a tile is at most this wide).
constexpr int kPixelChunk = 64;

// One implicit-GEMM problem over packed activations.
//
// Activations are packed channel-last per pixel of a PADDED image: xbits[n][hp][wp][words]
// (bit b of word j = channel 32j+b is negative), xzero the same for exact zeros (nullptr
// on the fast path), xs[n][hp][wp] the per-pixel scale (0 at padded pixels).
// Weights are repacked per call into lane-interleaved blocks of `lanes` output channels:
// w[ob][tap][word][lane], tail bits cleared; wz (masked path only) has tail bits SET so
// that valid = ~(xz | wz) never counts them. alpha/bias are padded to o_pad.
struct Gemm {
  int n = 0, c = 0, words = 0, o = 0, o_pad = 0, lanes = 1;
  int taps = 1;
  const int64_t* tap_off = nullptr;  // pixel offset of each tap inside the padded image
  int ho = 0, wo = 0, sh = 1, sw = 1;
  int64_t wp = 0, img_pixels = 0;  // padded width, padded pixels per image
  const uint32_t* xbits = nullptr;
  const uint32_t* xzero = nullptr;
  const float* xs = nullptr;
  const uint32_t* w = nullptr;
  const uint32_t* wz = nullptr;  // non-null <=> masked path
  const float* alpha = nullptr;
  const float* bias = nullptr;
  float* y = nullptr;
  int64_t y_n_stride = 0, y_o_stride = 0, y_p_stride = 0;  // y[n, o, p = oh*wo + ow]
  // Fused side branches (nullptr: none) and the float32 layer input they read, planar
  // like y (see the strides below).
  const SideBranches* side = nullptr;
  const float* x = nullptr;
  // LRMB's down projection, computed in the packing pass: [n][rank][p].
  const float* lr_t = nullptr;
  // Where the planar arrays live: element (n, channel or rank, pixel p) of x and lr_t at
  // [n * *_n_stride + c * *_c_stride + (p - x_p0)], and y's through y_at. The origins are
  // 0 for whole tensors and a chunk's first pixel for chunk-local buffers.
  int64_t x_p0 = 0, y_p0 = 0;
  int64_t x_n_stride = 0, x_c_stride = 0;
  int64_t lr_n_stride = 0, lr_r_stride = 0;

  float* y_at(int n, int64_t p, int o) const {
    return y + n * y_n_stride + (p - y_p0) * y_p_stride + int64_t(o) * y_o_stride;
  }

  // Index of the first padded input pixel read by output pixel (oh, ow).
  int64_t in_pixel(int oh, int ow) const { return int64_t(oh) * sh * wp + int64_t(ow) * sw; }
};

// A rectangle of work: image n, output row oh, output columns [ow0, ow1),
// output-channel blocks [ob0, ob1) (block = `lanes` channels).
struct Tile {
  int n, oh, ow0, ow1, ob0, ob1;
};

// Writes one output element block: `vals` holds lanes values for channels ob*lanes...
inline void store_block(const Gemm& g, int n, int64_t p, int ob, const float* vals) {
  const int o0 = ob * g.lanes;
  const int cnt = (g.o - o0) < g.lanes ? (g.o - o0) : g.lanes;
  float* dst = g.y_at(n, p, o0);
  for (int l = 0; l < cnt; ++l) dst[int64_t(l) * g.y_o_stride] = vals[l];
}

// Per-ISA kernels. Each computes every output of the tile.
void gemm_scalar(const Gemm& g, const Tile& t);
void gemm_popcnt(const Gemm& g, const Tile& t);
void gemm_avx2(const Gemm& g, const Tile& t);
void gemm_avx512(const Gemm& g, const Tile& t);
void gemm_neon(const Gemm& g, const Tile& t);

// Side-branch epilogue of one tile (after its GEMM). The AVX2 build is the same code
// compiled for AVX2 (the compiler vectorises the contiguous inner loops).
void side_generic(const Gemm& g, const Tile& t);
void side_avx2(const Gemm& g, const Tile& t);
// LRMB down projection in the packing pass, on planar input (w pixels of C planes):
// t[r * t_stride + i] = sum_c down_t[c * rank + r] * x[c * x_stride + i].
using DownPlanesFn = void (*)(const float* x, int c, int64_t x_stride, int w, int rank, const float* down_t,
                              float* t, int64_t t_stride);
void down_planes_generic(const float*, int, int64_t, int, int, const float*, float*, int64_t);
void down_planes_avx2(const float*, int, int64_t, int, int, const float*, float*, int64_t);
// Sign packing of one image row (NCHW input): writes words, zero words and scales of
// the w pixels of row h into dst pointers (already offset to the first real pixel of
// that row in the padded buffer). Returns true if any exact zero was seen.
bool pack_row_scalar(const float* x, int c, int64_t hw, int w, int words, uint32_t* bits,
                     uint32_t* zero, float* s);
bool pack_row_avx2(const float* x, int c, int64_t hw, int w, int words, uint32_t* bits,
                   uint32_t* zero, float* s);
// dst[j * dst_stride + i] = src[i * src_stride + j] (side_impl.h), per ISA.
using TransposeFn = void (*)(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int rows,
                             int cols);
void transpose_generic(const float*, int64_t, float*, int64_t, int, int);
void transpose_avx2(const float*, int64_t, float*, int64_t, int, int);

}  // namespace detail
}  // namespace cpu
}  // namespace bimaco
