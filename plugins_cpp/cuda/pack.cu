// Stage 1 of both ops: sign-pack the activations.
//
// For every pixel of the zero-padded input grid this writes the channel sign bits
// (bit i of word j = channel 32j+i, set = negative), the exact-zero mask, the scale
// s = mean |x| over channels and the popcount of the sign bits. Padded pixels get all
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
    if (zero_total > 0 && zero_total < g.c) atomicOr(ws.flag, 1);
  }
}

}  // namespace

cudaError_t launch_pack(const Geometry& g, DType dtype, const void* x, const Workspace& ws,
                        cudaStream_t stream) {
  if (g.padded_pixels == 0) return cudaSuccess;
  const int64_t blocks = (g.padded_pixels + kPixelsPerBlock - 1) / kPixelsPerBlock;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks));
  const dim3 block(kPixelsPerBlock, kWordLanes);
  if (dtype == DType::kFloat32) {
    pack_kernel<float><<<grid, block, 0, stream>>>(g, static_cast<const float*>(x), ws);
  } else if (dtype == DType::kFloat16) {
    pack_kernel<__half><<<grid, block, 0, stream>>>(g, static_cast<const __half*>(x), ws);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace detail
}  // namespace cuda
}  // namespace bimaco
