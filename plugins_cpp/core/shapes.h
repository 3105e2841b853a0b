// Shape, type and launch logic of the bimaco plugins, without TensorRT.
//
// The TensorRT plugin passes its tensor descriptions through these functions:
// output-shape arithmetic (written once as a template over an arithmetic adapter,
// so the plugin instantiates it with IExprBuilder expressions and the host tests
// with plain integers), input checks, the format-combination rule and the
// selection of the kernel launch (ConvShape / LinearShape of contract.h).
//
// Everything on the per-inference path (LaunchCache::plan and what it calls) works on
// fixed-size values and builds no string unless it reports an error: TensorRT calls
// onShapeChange and enqueue for every plugin layer of every inference, and a heap
// allocation there costs more than a small layer's kernel.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "bimaco/contract.h"
#include "fields.h"

namespace bimaco {
namespace core {

// Tensor element types the plugins meet (a subset of nvinfer1::DataType).
enum class TensorType : int { kFloat32, kFloat16, kInt32, kOther };

const char* type_name(TensorType t);

// Up to nvinfer1::Dims::MAX_DIMS (8) extents, stored inline: copying or comparing a
// Dims never allocates.
class Dims {
 public:
  static constexpr int kMax = 8;
  Dims() = default;
  Dims(std::initializer_list<int64_t> v) {
    for (int64_t e : v) push_back(e);
  }
  // Extents past kMax are dropped and mark the Dims as overflowed (rank() then
  // reports kMax + 1, which every check rejects).
  void push_back(int64_t v) {
    if (n_ < kMax) d_[n_] = v;
    if (n_ <= kMax) ++n_;
  }
  int rank() const { return n_; }
  size_t size() const { return static_cast<size_t>(n_ > kMax ? kMax : n_); }
  bool empty() const { return n_ == 0; }
  void resize(int n) { n_ = n < 0 ? 0 : (n > kMax ? kMax : n); }
  int64_t& operator[](size_t i) { return d_[i]; }
  int64_t operator[](size_t i) const { return d_[i]; }
  int64_t back() const { return d_[size() - 1]; }
  int64_t& back() { return d_[size() - 1]; }
  const int64_t* begin() const { return d_; }
  const int64_t* end() const { return d_ + size(); }
  bool operator==(const Dims& o) const;
  bool operator!=(const Dims& o) const { return !(*this == o); }

 private:
  int n_ = 0;
  int64_t d_[kMax] = {};
};

// One tensor as the plugin sees it: dims with -1 for a dimension unknown at build
// time, its type, and whether its format is the plain linear (row-major) layout.
struct TensorInfo {
  Dims dims;
  TensorType type = TensorType::kOther;
  bool linear = true;
  bool operator==(const TensorInfo& o) const { return dims == o.dims && type == o.type && linear == o.linear; }
  bool operator!=(const TensorInfo& o) const { return !(*this == o); }
};

// Inputs: X, Wbits, alpha, bias, the optional Wzero, then the side-branch inputs the
// params announce (contract.h).
constexpr int kMinInputs = 4;

// Where each input of a node sits. Wzero, when present, comes right after bias; the
// side inputs follow in the contract's order. -1: absent.
struct InputLayout {
  int wzero = -1;
  int rprelu = -1;
  int smb_rowptr = -1, smb_col = -1, smb_val = -1;
  int lr_down = -1, lr_up = -1;
  int count = kMinInputs;
  // The inputs that are int32 (Wbits, Wzero, smb_rowptr, smb_col); the rest past X are
  // float: alpha and bias float32, the side floats in X's dtype.
  bool is_int(int i) const { return i == 1 || i == wzero || i == smb_rowptr || i == smb_col; }
  bool is_side_float(int i) const { return i == rprelu || i == smb_val || i == lr_down || i == lr_up; }
};

// The layout for `nb_inputs` inputs, or an error naming the counts this op accepts.
Status input_layout(const OpParams& p, int nb_inputs, const std::string& layer, InputLayout* out);

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
Status output_dims(const OpParams& p, const TensorInfo* inputs, int nb_inputs, const std::string& layer, Dims* out);

// Check the number, ranks, types and static extents of the inputs against the
// params (X channels == in_channels, Wbits [O][KH][KW][words] int32, alpha/bias
// float32 [O], Wzero like Wbits, the side inputs as contract.h lists them). Dims of -1
// are not checked.
Status check_inputs(const OpParams& p, const TensorInfo* inputs, int nb_inputs, const std::string& layer);

// The supportsFormatCombination rule: decides position `pos` of in_out (inputs
// then the one output) from positions 0..pos only, as TensorRT requires.
// X: float32 or float16, linear; Wbits / Wzero / smb_rowptr / smb_col: int32 linear;
// alpha, bias: float32 linear; the side floats and Y: the type of X, linear.
bool supports_combination(const OpParams& p, int pos, const TensorInfo* in_out, int nb_inputs, int nb_outputs);

// The output type for a given X type (Y has the dtype of X); kOther when X is unsupported.
TensorType output_type(TensorType x);

// One kernel call, chosen from concrete (runtime) shapes.
struct LaunchPlan {
  OpKind kind = OpKind::kConv2d;
  DType dtype = DType::kFloat32;
  ConvShape conv;
  LinearShape linear;
  InputLayout layout;
  SideParams side;
  int64_t smb_nnz = 0;  // entries of the SMB table (length of smb_val)
  Dims y_dims;          // the output the launch writes
  bool has_wzero = false;
  bool empty = false;  // a zero-sized batch or row count: nothing to launch
};

// Build the launch from concrete shapes (no -1). Also used with the max-profile
// shapes to size the workspace at build time.
Status plan_launch(const OpParams& p, const TensorInfo* inputs, int nb_inputs, const std::string& layer,
                   LaunchPlan* out);

// The output TensorRT hands to enqueue must be the one the plan writes: the type of X,
// the planned dims, linear. Anything else would be written past or short of its buffer.
Status check_output(const LaunchPlan& plan, const TensorInfo& y, const std::string& layer);

// The launch of the current call, planned from the descriptors of that very call.
//
// TensorRT calls onShapeChange when shapes change, but a plugin must not trust a plan
// from an earlier call at enqueue: the builder times several formats and types of one
// layer (fp32 and fp16 with the FP16 flag) on one plugin object, and onShapeChange is
// documented once per profile, not once per type. So enqueue plans again from its own
// inputDesc; this cache makes that a comparison of a few fixed-size descriptors when
// nothing changed, and allocation-free in either case.
class LaunchCache {
 public:
  // 4 core inputs, Wzero, 6 side inputs: 11; the rest is headroom, not a limit we rely on.
  static constexpr int kMaxIo = 16;
  // The plan for `inputs` and the output `y` (nullptr: not checked), re-planned only
  // when an input's dims, type or format differ from the last successful call.
  Status plan(const OpParams& p, const TensorInfo* inputs, int nb_inputs, const TensorInfo* y,
              const std::string& layer, const LaunchPlan** out);
  // How many times plan() had to plan from scratch (tests, diagnostics).
  int64_t replans() const { return replans_; }
  void reset() { valid_ = false; }

 private:
  TensorInfo last_[kMaxIo];
  int n_ = 0;
  bool valid_ = false;
  LaunchPlan plan_;
  int64_t replans_ = 0;
};

// Convenience overloads for callers holding a std::vector (tests, build-time paths).
inline Status output_dims(const OpParams& p, const std::vector<TensorInfo>& in, const std::string& layer, Dims* out) {
  return output_dims(p, in.data(), static_cast<int>(in.size()), layer, out);
}
inline Status check_inputs(const OpParams& p, const std::vector<TensorInfo>& in, const std::string& layer) {
  return check_inputs(p, in.data(), static_cast<int>(in.size()), layer);
}
inline Status plan_launch(const OpParams& p, const std::vector<TensorInfo>& in, const std::string& layer,
                          LaunchPlan* out) {
  return plan_launch(p, in.data(), static_cast<int>(in.size()), layer, out);
}

}  // namespace core
}  // namespace bimaco
