// Stage 1 of both ops: sign-pack the activations.
//
// For every pixel of the zero-padded input grid this writes the channel sign bits
// (bit i of word j = channel 32j+i, set = negative), the exact-zero mask, the scale
// s = mean |x| over channels, the popcount of the sign bits and whether the pixel's
// zeros can change a result (zpix, which picks the GEMM path tile by tile). Padded pixels get all
// zero words and s = 0, which is what makes zero padding exact: their taps add
// s * dot = 0 whatever dot is. Words past num_words(C) up to the MMA-aligned width
// are written as zero in both masks, so they add nothing to any popcount.

#include <cuda_fp16.h>

#include "device_utils.cuh"
#include "kernels.cuh"

namespace bimaco {
namespace cuda {
namespace detail {
namespace {

constexpr int kPixelsPerBlock = 32;  // threadIdx.x: consecutive pixels -> coalesced loads
constexpr int kWordLanes = 8;        // threadIdx.y: word lanes of one pixel

template <typename T>
__global__ void __launch_bounds__(kPixelsPerBlock* kWordLanes)
    pack_kernel(Geometry g, const T* __restrict__ x, Workspace ws) {
  // Partial sums per word lane, reduced in a fixed order so s is deterministic.
  __shared__ float abs_part[kWordLanes][kPixelsPerBlock];
  __shared__ int neg_part[kWordLanes][kPixelsPerBlock];
  __shared__ int zero_part[kWordLanes][kPixelsPerBlock];

  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * kPixelsPerBlock + tx;
  const bool live = pix < g.padded_pixels;
  bool in_bounds = false;
  int64_t xbase = 0;
  if (live) {
    const int64_t plane = static_cast<int64_t>(g.hp) * g.wp;
    const int64_t nn = pix / plane;
    const int64_t rem = pix - nn * plane;
    const int yy = static_cast<int>(rem / g.wp) - g.pt;
    const int xx = static_cast<int>(rem % g.wp) - g.pl;
    in_bounds = yy >= 0 && yy < g.h && xx >= 0 && xx < g.w;
    xbase = (nn * g.c) * g.h * g.w + static_cast<int64_t>(yy) * g.w + xx;
  }
  const int64_t cstride = static_cast<int64_t>(g.h) * g.w;

  float abs_sum = 0.f;
  int negs = 0, zeros = 0;
  for (int wd = ty; wd < g.wpad; wd += kWordLanes) {
    uint32_t bits = 0, zbits = 0;
    if (in_bounds) {
      const int c0 = wd * 32;
      const int count = min(32, g.c - c0);  // <= 0 for alignment words
      const T* src = x + xbase + c0 * cstride;
#pragma unroll 4
      for (int i = 0; i < count; ++i) {
        const float v = to_float(src[i * cstride]);
        abs_sum += fabsf(v);
        bits |= static_cast<uint32_t>(v < 0.f) << i;
        zbits |= static_cast<uint32_t>(v == 0.f) << i;
      }
    }
    if (live) {
      ws.xbits[pix * g.wpad + wd] = bits;
      ws.xzero[pix * g.wpad + wd] = zbits;
    }
    negs += __popc(bits);
    zeros += __popc(zbits);
  }
  abs_part[ty][tx] = abs_sum;
  neg_part[ty][tx] = negs;
  zero_part[ty][tx] = zeros;
  __syncthreads();
  if (ty == 0 && live) {
    float total = 0.f;
    int neg_total = 0, zero_total = 0;
#pragma unroll
    for (int k = 0; k < kWordLanes; ++k) {
      total += abs_part[k][tx];
      neg_total += neg_part[k][tx];
      zero_total += zero_part[k][tx];
    }
    ws.scale[pix] = in_bounds ? total / static_cast<float>(g.c) : 0.f;
    ws.xpop[pix] = neg_total;
    // Only a zero at a pixel with s != 0 can change a result; an all-zero pixel has
    // s = 0 and is exact on the MMA path too, so it needs no masked path.
    const bool matters = zero_total > 0 && zero_total < g.c;
    ws.zpix[pix] = matters ? 1 : 0;
    if (matters) atomicOr(ws.flag, 1);
  }
}

// The linear layout: X is [rows][C] with the channels contiguous (Geometry of a linear
// op: h = w = 1, no padding, one pixel per row). One warp per row: lane i reads channel
// 32 j + i of word j, so each load instruction covers 32 consecutive channels (128 bytes
// in float32) instead of 32 rows C elements apart; the word is the warp's ballot.
constexpr int kRowWarps = 8;

template <typename T>
__global__ void __launch_bounds__(32 * kRowWarps) pack_rows_kernel(Geometry g, const T* __restrict__ x, Workspace ws) {
  const int lane = threadIdx.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.y;
  if (row >= g.padded_pixels) return;  // whole warps leave together: the ballots below stay full
  const T* src = x + row * g.c;
  float abs_sum = 0.f;
  int negs = 0, zeros = 0;
  for (int w0 = 0; w0 < g.wpad; w0 += 32) {
    // lane j keeps word w0 + j, so the 32 words of a group are stored by one coalesced write
    uint32_t my_bits = 0u, my_zero = 0u;
    const int group = min(32, g.wpad - w0);
#pragma unroll 4
    for (int j = 0; j < group; ++j) {
      const int c = (w0 + j) * 32 + lane;
      const bool real = c < g.c;
      const float v = real ? to_float(src[c]) : 0.f;
      abs_sum += fabsf(v);
      const uint32_t bits = __ballot_sync(0xffffffffu, real && v < 0.f);
      const uint32_t zbits = __ballot_sync(0xffffffffu, real && v == 0.f);
      if (lane == j) {
        my_bits = bits;
        my_zero = zbits;
      }
      negs += __popc(bits);
      zeros += __popc(zbits);
    }
    if (lane < group) {
      ws.xbits[row * g.wpad + w0 + lane] = my_bits;
      ws.xzero[row * g.wpad + w0 + lane] = my_zero;
    }
  }
  // A fixed butterfly: the same order on every call, so s is deterministic.
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) abs_sum += __shfl_xor_sync(0xffffffffu, abs_sum, off);
  if (lane == 0) {
    ws.scale[row] = abs_sum / static_cast<float>(g.c);
    ws.xpop[row] = negs;
    const bool matters = zeros > 0 && zeros < g.c;
    ws.zpix[row] = matters ? 1 : 0;
    if (matters) atomicOr(ws.flag, 1);
  }
}

bool is_row_layout(const Geometry& g) { return g.h == 1 && g.w == 1 && g.hp == 1 && g.wp == 1; }

template <typename T>
cudaError_t launch_pack_typed(const Geometry& g, const T* x, const Workspace& ws, cudaStream_t stream) {
  if (is_row_layout(g)) {
    const int64_t blocks = (g.padded_pixels + kRowWarps - 1) / kRowWarps;
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
    pack_rows_kernel<T><<<dim3(static_cast<unsigned>(blocks)), dim3(32, kRowWarps), 0, stream>>>(g, x, ws);
  } else {
    const int64_t blocks = (g.padded_pixels + kPixelsPerBlock - 1) / kPixelsPerBlock;
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
    pack_kernel<T><<<dim3(static_cast<unsigned>(blocks)), dim3(kPixelsPerBlock, kWordLanes), 0, stream>>>(g, x, ws);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_pack(const Geometry& g, DType dtype, const void* x, const Workspace& ws,
                        cudaStream_t stream) {
  if (g.padded_pixels == 0) return cudaSuccess;
  if (dtype == DType::kFloat32) return launch_pack_typed(g, static_cast<const float*>(x), ws, stream);
  if (dtype == DType::kFloat16) return launch_pack_typed(g, static_cast<const __half*>(x), ws, stream);
  return cudaErrorInvalidValue;
}

}  // namespace detail
}  // namespace cuda
}  // namespace bimaco
