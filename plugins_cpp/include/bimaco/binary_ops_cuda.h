// CUDA kernels of the op contract: the one API that the torch CUDA binding and the
// TensorRT plugin call. Implemented in plugins_cpp/cuda/. No framework dependency.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "bimaco/contract.h"

namespace bimaco {
namespace cuda {

// Scratch bytes one call needs (packed activation signs, zero masks and per-pixel
// scales). Callers allocate it once for the largest shape they will run; the pointer
// needs no particular alignment. 0 means the shape is not a valid call.
size_t conv2d_workspace_bytes(const ConvShape& s);
size_t linear_workspace_bytes(const LinearShape& s);

// Y = BinaryConv2d(X, Wbits, alpha, bias) of the contract. x and y are NCHW in
// `dtype` (float or half); wbits is [O][KH][KW][words]; wzero is the optional
// weight zero mask in the same layout (nullptr: no scattered zero weights);
// alpha and bias are float32 [O]. Asynchronous on `stream` (one cudaMemsetAsync and
// two kernel launches, all capturable in a CUDA graph); returns cudaErrorInvalidValue
// for an invalid shape or null pointer, else the launch error. n == 0 is a no-op.
cudaError_t binary_conv2d(const ConvShape& s, DType dtype, const void* x, const int32_t* wbits,
                          const int32_t* wzero, const float* alpha, const float* bias, void* y,
                          void* workspace, cudaStream_t stream);

// Y = BinaryLinear(X, Wbits, alpha, bias): x is rows x k, y rows x o, row-major.
cudaError_t binary_linear(const LinearShape& s, DType dtype, const void* x, const int32_t* wbits,
                          const int32_t* wzero, const float* alpha, const float* bias, void* y,
                          void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace bimaco
