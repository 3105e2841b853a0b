// CUDA kernels of the op contract: the one API that the torch CUDA binding and the
// TensorRT plugin call. Implemented in plugins_cpp/cuda/. No framework dependency.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "bimaco/contract.h"

namespace bimaco {
namespace cuda {

// The fused side branches of a layer (contract.h, "Fused side branches"), applied in
// the GEMM epilogue. Null / zero members are absent. The float tables are in X's dtype.
// smb_rowptr and smb_col point at 16-bit entries: the contract's int32 words holding two
// entries each are exactly such arrays on the (little-endian) GPU.
struct SideBranches {
  const void* rprelu = nullptr;          // [3][O]: b0, slope, b1
  const uint16_t* smb_rowptr = nullptr;  // [O + 1], entries < 2^15
  const uint16_t* smb_col = nullptr;     // [nnz]
  const void* smb_val = nullptr;        // [nnz]
  int rank = 0;                         // LRMB rank, 0: no LRMB
  const void* lr_down = nullptr;        // [rank][C]
  const void* lr_up = nullptr;          // [O][rank]
  bool any() const { return rprelu != nullptr || smb_rowptr != nullptr || rank > 0; }
};

// Scratch bytes one call needs (packed activation signs, zero masks, per-pixel scales
// and, with an LRMB of rank `lrmb_rank`, its down projection). Callers allocate it once
// for the largest shape they will run; the pointer needs no particular alignment. 0
// means the shape is not a valid call.
size_t conv2d_workspace_bytes(const ConvShape& s, int lrmb_rank = 0);
size_t linear_workspace_bytes(const LinearShape& s, int lrmb_rank = 0);

// Y = BinaryConv2d(X, Wbits, alpha, bias) of the contract, plus the side branches when
// `side` is given. x and y are NCHW in `dtype` (float or half); wbits is
// [O][KH][KW][words]; wzero is the optional weight zero mask in the same layout
// (nullptr: no scattered zero weights); alpha and bias are float32 [O]. SMB and LRMB
// need stride 1 and an output the size of the input. Asynchronous on `stream` (one
// cudaMemsetAsync and two or three kernel launches, all capturable in a CUDA graph);
// returns cudaErrorInvalidValue for an invalid shape, side-branch set or null pointer,
// else the launch error. n == 0 is a no-op.
cudaError_t binary_conv2d(const ConvShape& s, DType dtype, const void* x, const int32_t* wbits,
                          const int32_t* wzero, const float* alpha, const float* bias, void* y,
                          void* workspace, cudaStream_t stream, const SideBranches* side = nullptr);

// Y = BinaryLinear(X, Wbits, alpha, bias) (+ side branches): x is rows x k, y rows x o.
cudaError_t binary_linear(const LinearShape& s, DType dtype, const void* x, const int32_t* wbits,
                          const int32_t* wzero, const float* alpha, const float* bias, void* y,
                          void* workspace, cudaStream_t stream, const SideBranches* side = nullptr);

}  // namespace cuda
}  // namespace bimaco
