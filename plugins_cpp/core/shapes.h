// Shape, type and launch logic of the bimaco plugins, without TensorRT.
//
// The TensorRT plugin passes its tensor descriptions through these functions:
// output-shape arithmetic (written once as a template over an arithmetic adapter,
// so the plugin instantiates it with IExprBuilder expressions and the host tests
// with plain integers), input checks, the format-combination rule and the
// selection of the kernel launch (ConvShape / LinearShape of contract.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bimaco/contract.h"
#include "fields.h"

namespace bimaco {
namespace core {

// Tensor element types the plugins meet (a subset of nvinfer1::DataType).
enum class TensorType : int { kFloat32, kFloat16, kInt32, kOther };

const char* type_name(TensorType t);

// One tensor as the plugin sees it: dims with -1 for a dimension unknown at build
// time, its type, and whether its format is the plain linear (row-major) layout.
struct TensorInfo {
  std::vector<int64_t> dims;
  TensorType type = TensorType::kOther;
  bool linear = true;
};

// Inputs: X, Wbits, alpha, bias and the optional Wzero.
constexpr int kMinInputs = 4;
constexpr int kMaxInputs = 5;

// Output extent of one spatial axis of a conv, over any arithmetic `A` with
//   A::Expr, A::constant(int64_t), A::add, A::sub, A::floor_div(Expr, Expr).
// (size + p0 + p1 - k) / stride + 1, floor division as ONNX Conv.
template <class A>
typename A::Expr conv_out_extent(A& a, typename A::Expr size, int k, int stride, int p0, int p1) {
  auto padded = a.add(size, a.constant(static_cast<int64_t>(p0) + p1 - k));
  return a.add(a.floor_div(padded, a.constant(stride)), a.constant(1));
}

// Integer arithmetic for conv_out_extent (host tests, runtime checks).
struct IntArith {
  using Expr = int64_t;
  Expr constant(int64_t v) const { return v; }
  Expr add(Expr x, Expr y) const { return x + y; }
  Expr sub(Expr x, Expr y) const { return x - y; }
  Expr floor_div(Expr x, Expr y) const { return x >= 0 ? x / y : -((-x + y - 1) / y); }
};

// Output dims of the op from input dims (-1 stays -1 where it cannot be known).
// Errors when a known extent is too small for the kernel.
Status output_dims(const OpParams& p, const std::vector<TensorInfo>& inputs, const std::string& layer,
                   std::vector<int64_t>* out);

// Check the number, ranks, types and static extents of the inputs against the
// params (X channels == in_channels, Wbits [O][KH][KW][words] int32, alpha/bias
// float32 [O], Wzero like Wbits). Dims of -1 are not checked.
Status check_inputs(const OpParams& p, const std::vector<TensorInfo>& inputs, const std::string& layer);

// The supportsFormatCombination rule: decides position `pos` of in_out (inputs
// then the one output) from positions 0..pos only, as TensorRT requires.
// X: float32 or float16, linear; Wbits / Wzero: int32 linear; alpha, bias:
// float32 linear; Y: the type of X, linear.
bool supports_combination(int pos, const TensorInfo* in_out, int nb_inputs, int nb_outputs);

// The output type for a given X type (Y has the dtype of X); kOther when X is unsupported.
TensorType output_type(TensorType x);

// One kernel call, chosen from concrete (runtime) shapes.
struct LaunchPlan {
  OpKind kind = OpKind::kConv2d;
  DType dtype = DType::kFloat32;
  ConvShape conv;
  LinearShape linear;
  bool has_wzero = false;
  bool empty = false;  // a zero-sized batch or row count: nothing to launch
};

// Build the launch from concrete shapes (no -1). Also used with the max-profile
// shapes to size the workspace at build time.
Status plan_launch(const OpParams& p, const std::vector<TensorInfo>& inputs, const std::string& layer,
                   LaunchPlan* out);

}  // namespace core
}  // namespace bimaco
