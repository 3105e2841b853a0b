// Small device helpers shared by the CUDA kernels (value loads/stores for float and
// half, bit masks). Device-only; include from .cu files.
#pragma once

#include <cstdint>

#include <cuda_fp16.h>

namespace bimaco {
namespace cuda {
namespace detail {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

// Bits of the last packed word that stand for real channels; the contract lets the
// tail bits of a weight word be anything, so every weight word is ANDed with this.
__host__ __device__ __forceinline__ uint32_t tail_mask(int channels) {
  const int r = channels % 32;
  return r == 0 ? 0xffffffffu : ((1u << r) - 1u);
}

}  // namespace detail
}  // namespace cuda
}  // namespace bimaco
