// Stage 1b of a fused layer with an LRMB: the down projection t = down X of every input
// pixel (conv) or row (linear), rank values each, into the workspace, for the GEMM
// epilogue to finish as up t. It runs once per layer over X (rank x C multiply-adds per
// pixel), where doing it per output channel in the epilogue would repeat it O times.
//
// The rank is taken kRankStep values at a time, so the accumulators stay in registers
// whatever the rank. Sums run over the channels in a fixed order: deterministic.

#include <cuda_fp16.h>

#include "device_utils.cuh"
#include "kernels.cuh"

namespace bimaco {
namespace cuda {
namespace detail {
namespace {

constexpr int kRankStep = 8;
constexpr int kPlaneThreads = 128;
constexpr int kRowWarps = 8;

// NCHW: one thread per pixel of one image, consecutive threads on consecutive pixels
// (coalesced X loads); the down weights are the same address across the warp.
// t[(n * rank + q) * plane + p].
template <typename T>
__global__ void __launch_bounds__(kPlaneThreads)
    lrmb_down_planes(Geometry g, const T* __restrict__ x, const T* __restrict__ down, float* __restrict__ t) {
  const int64_t plane = static_cast<int64_t>(g.h) * g.w;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kPlaneThreads + threadIdx.x;
  if (idx >= static_cast<int64_t>(g.n) * plane) return;
  const int64_t n = idx / plane, p = idx - n * plane;
  const T* xp = x + n * g.c * plane + p;
  for (int q0 = 0; q0 < g.lr_rank; q0 += kRankStep) {
    float acc[kRankStep];
#pragma unroll
    for (int j = 0; j < kRankStep; ++j) acc[j] = 0.f;
    for (int c = 0; c < g.c; ++c) {
      const float v = to_float(xp[c * plane]);
#pragma unroll
      for (int j = 0; j < kRankStep; ++j)
        if (q0 + j < g.lr_rank) acc[j] = __fmaf_rn(to_float(down[static_cast<int64_t>(q0 + j) * g.c + c]), v, acc[j]);
    }
#pragma unroll
    for (int j = 0; j < kRankStep; ++j)
      if (q0 + j < g.lr_rank) t[(n * g.lr_rank + q0 + j) * plane + p] = acc[j];
  }
}

// [rows][C], channels contiguous: one warp per row, lanes over the channels (coalesced
// loads of X and of the down rows), then a fixed butterfly sum. t[row * rank + q].
template <typename T>
__global__ void __launch_bounds__(32 * kRowWarps)
    lrmb_down_rows(Geometry g, const T* __restrict__ x, const T* __restrict__ down, float* __restrict__ t) {
  const int lane = threadIdx.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.y;
  if (row >= g.n) return;  // whole warps leave together
  const T* xr = x + row * g.c;
  for (int q0 = 0; q0 < g.lr_rank; q0 += kRankStep) {
    float acc[kRankStep];
#pragma unroll
    for (int j = 0; j < kRankStep; ++j) acc[j] = 0.f;
    for (int c = lane; c < g.c; c += 32) {
      const float v = to_float(xr[c]);
#pragma unroll
      for (int j = 0; j < kRankStep; ++j)
        if (q0 + j < g.lr_rank) acc[j] = __fmaf_rn(to_float(down[static_cast<int64_t>(q0 + j) * g.c + c]), v, acc[j]);
    }
#pragma unroll
    for (int j = 0; j < kRankStep; ++j) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], off);
    }
    if (lane == 0) {
#pragma unroll
      for (int j = 0; j < kRankStep; ++j)
        if (q0 + j < g.lr_rank) t[row * g.lr_rank + q0 + j] = acc[j];
    }
  }
}

template <typename T>
cudaError_t launch_typed(const Geometry& g, const T* x, const T* down, float* t, cudaStream_t stream) {
  if (g.linear_op) {
    const int64_t blocks = (static_cast<int64_t>(g.n) + kRowWarps - 1) / kRowWarps;
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
    lrmb_down_rows<T><<<dim3(static_cast<unsigned>(blocks)), dim3(32, kRowWarps), 0, stream>>>(g, x, down, t);
  } else {
    const int64_t pixels = static_cast<int64_t>(g.n) * g.h * g.w;
    const int64_t blocks = (pixels + kPlaneThreads - 1) / kPlaneThreads;
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
    lrmb_down_planes<T><<<dim3(static_cast<unsigned>(blocks)), dim3(kPlaneThreads), 0, stream>>>(g, x, down, t);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_lrmb_down(const Geometry& g, DType dtype, const void* x, const void* down, const Workspace& ws,
                             cudaStream_t stream) {
  if (g.lr_rank <= 0 || g.n == 0) return cudaSuccess;
  if (down == nullptr || ws.lrt == nullptr) return cudaErrorInvalidValue;
  if (dtype == DType::kFloat32) {
    return launch_typed(g, static_cast<const float*>(x), static_cast<const float*>(down), ws.lrt, stream);
  }
  if (dtype == DType::kFloat16) {
    return launch_typed(g, static_cast<const __half*>(x), static_cast<const __half*>(down), ws.lrt, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace detail
}  // namespace cuda
}  // namespace bimaco
