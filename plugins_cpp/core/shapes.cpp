#include "shapes.h"

#include <climits>
#include <sstream>

namespace bimaco {
namespace core {

namespace {

const char* const kInputNames[kMaxInputs] = {"X", "Wbits", "alpha", "bias", "Wzero"};

std::string where(const OpParams& p, const std::string& layer) {
  std::string s = op_name(p.kind);
  if (!layer.empty()) s += " '" + layer + "'";
  return s;
}

std::string dims_str(const std::vector<int64_t>& d) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < d.size(); ++i) os << (i ? ", " : "") << (d[i] < 0 ? std::string("?") : std::to_string(d[i]));
  os << "]";
  return os.str();
}

std::string expect_str(const std::vector<int64_t>& d) { return dims_str(d); }

// Compare known dims of `t` with `want` (-1 in want: any).
Status check_dims(const std::string& ctx, int index, const TensorInfo& t, const std::vector<int64_t>& want) {
  bool ok = t.dims.size() == want.size();
  for (size_t i = 0; ok && i < want.size(); ++i) {
    if (want[i] >= 0 && t.dims[i] >= 0 && t.dims[i] != want[i]) ok = false;
  }
  if (!ok) {
    return Status::Error(ctx + ": input " + std::to_string(index) + " (" + kInputNames[index] + ") has shape " +
                         dims_str(t.dims) + ", expected " + expect_str(want));
  }
  return Status::Ok();
}

Status check_type(const std::string& ctx, int index, const TensorInfo& t, TensorType want) {
  if (t.type != want) {
    return Status::Error(ctx + ": input " + std::to_string(index) + " (" + kInputNames[index] + ") is " +
                         type_name(t.type) + ", expected " + type_name(want));
  }
  return Status::Ok();
}

}  // namespace

const char* type_name(TensorType t) {
  switch (t) {
    case TensorType::kFloat32: return "float32";
    case TensorType::kFloat16: return "float16";
    case TensorType::kInt32: return "int32";
    default: return "an unsupported type";
  }
}

TensorType output_type(TensorType x) {
  return (x == TensorType::kFloat32 || x == TensorType::kFloat16) ? x : TensorType::kOther;
}

Status check_inputs(const OpParams& p, const std::vector<TensorInfo>& in, const std::string& layer) {
  const std::string ctx = where(p, layer);
  const int n = static_cast<int>(in.size());
  if (n < kMinInputs || n > kMaxInputs) {
    return Status::Error(ctx + ": has " + std::to_string(n) +
                         " inputs, expected 4 (X, Wbits, alpha, bias) or 5 (with Wzero)");
  }
  if (output_type(in[0].type) == TensorType::kOther) {
    return Status::Error(ctx + ": input 0 (X) is " + type_name(in[0].type) + ", expected float32 or float16");
  }
  // O from Wbits when known; alpha/bias/Wzero must agree with it.
  const int64_t o = in[1].dims.empty() ? -1 : in[1].dims[0];
  Status st;
  if (p.kind == OpKind::kConv2d) {
    const ConvParams& c = p.conv;
    if (in[0].dims.size() != 4) {
      return Status::Error(ctx + ": input 0 (X) has shape " + dims_str(in[0].dims) + ", expected 4-D [N, " +
                           std::to_string(c.in_channels) + ", H, W]");
    }
    if (!(st = check_dims(ctx, 0, in[0], {-1, c.in_channels, -1, -1})).ok) return st;
    const std::vector<int64_t> wshape = {o, c.kernel[0], c.kernel[1], num_words(c.in_channels)};
    if (!(st = check_dims(ctx, 1, in[1], wshape)).ok) return st;
    if (n == 5 && !(st = check_dims(ctx, 4, in[4], wshape)).ok) return st;
  } else {
    const int k = p.linear.in_features;
    if (in[0].dims.empty()) {
      return Status::Error(ctx + ": input 0 (X) is a scalar, expected [..., " + std::to_string(k) + "]");
    }
    std::vector<int64_t> xshape(in[0].dims.size(), -1);
    xshape.back() = k;
    if (!(st = check_dims(ctx, 0, in[0], xshape)).ok) return st;
    const std::vector<int64_t> wshape = {o, num_words(k)};
    if (!(st = check_dims(ctx, 1, in[1], wshape)).ok) return st;
    if (n == 5 && !(st = check_dims(ctx, 4, in[4], wshape)).ok) return st;
  }
  if (!(st = check_type(ctx, 1, in[1], TensorType::kInt32)).ok) return st;
  if (!(st = check_type(ctx, 2, in[2], TensorType::kFloat32)).ok) return st;
  if (!(st = check_type(ctx, 3, in[3], TensorType::kFloat32)).ok) return st;
  if (n == 5 && !(st = check_type(ctx, 4, in[4], TensorType::kInt32)).ok) return st;
  if (!(st = check_dims(ctx, 2, in[2], {o})).ok) return st;
  if (!(st = check_dims(ctx, 3, in[3], {o})).ok) return st;
  return Status::Ok();
}

Status output_dims(const OpParams& p, const std::vector<TensorInfo>& in, const std::string& layer,
                   std::vector<int64_t>* out) {
  Status st = check_inputs(p, in, layer);
  if (!st.ok) return st;
  const int64_t o = in[1].dims[0];
  if (p.kind == OpKind::kLinear) {
    *out = in[0].dims;
    out->back() = o;
    return Status::Ok();
  }
  const ConvParams& c = p.conv;
  IntArith a;
  std::vector<int64_t> y = {in[0].dims[0], o, -1, -1};
  for (int axis = 0; axis < 2; ++axis) {
    const int64_t size = in[0].dims[2 + axis];
    if (size < 0) continue;
    const int64_t e = conv_out_extent(a, size, c.kernel[axis], c.strides[axis], c.pads[axis], c.pads[axis + 2]);
    if (e <= 0) {
      return Status::Error(where(p, layer) + ": input " + std::string(axis ? "width " : "height ") +
                           std::to_string(size) + " is too small for kernel " + std::to_string(c.kernel[axis]) +
                           " with pads (" + std::to_string(c.pads[axis]) + ", " + std::to_string(c.pads[axis + 2]) +
                           ")");
    }
    y[2 + axis] = e;
  }
  *out = y;
  return Status::Ok();
}

bool supports_combination(int pos, const TensorInfo* io, int nb_inputs, int nb_outputs) {
  if (nb_outputs != 1 || nb_inputs < kMinInputs || nb_inputs > kMaxInputs) return false;
  if (pos < 0 || pos > nb_inputs) return false;
  const TensorInfo& t = io[pos];
  if (!t.linear) return false;
  if (pos == nb_inputs) return t.type == io[0].type;  // Y has the dtype of X
  if (pos == 0) return t.type == TensorType::kFloat32 || t.type == TensorType::kFloat16;
  if (pos == 1 || pos == 4) return t.type == TensorType::kInt32;  // Wbits, Wzero
  return t.type == TensorType::kFloat32;                          // alpha, bias
}

Status plan_launch(const OpParams& p, const std::vector<TensorInfo>& in, const std::string& layer, LaunchPlan* out) {
  Status st = check_inputs(p, in, layer);
  if (!st.ok) return st;
  const std::string ctx = where(p, layer);
  for (const TensorInfo& t : in) {
    for (int64_t d : t.dims) {
      if (d < 0) return Status::Error(ctx + ": launch needs concrete shapes, got " + dims_str(t.dims));
      if (d > INT32_MAX) return Status::Error(ctx + ": dimension " + std::to_string(d) + " exceeds int32");
    }
  }
  LaunchPlan plan;
  plan.kind = p.kind;
  plan.dtype = in[0].type == TensorType::kFloat16 ? DType::kFloat16 : DType::kFloat32;
  plan.has_wzero = in.size() == 5;
  const int o = static_cast<int>(in[1].dims[0]);
  if (p.kind == OpKind::kConv2d) {
    std::vector<int64_t> y;
    if (!(st = output_dims(p, in, layer, &y)).ok) return st;
    ConvShape s;
    s.n = static_cast<int>(in[0].dims[0]);
    s.c = p.conv.in_channels;
    s.h = static_cast<int>(in[0].dims[2]);
    s.w = static_cast<int>(in[0].dims[3]);
    s.o = o;
    s.kh = p.conv.kernel[0];
    s.kw = p.conv.kernel[1];
    s.stride_h = p.conv.strides[0];
    s.stride_w = p.conv.strides[1];
    s.pad_top = p.conv.pads[0];
    s.pad_left = p.conv.pads[1];
    s.pad_bottom = p.conv.pads[2];
    s.pad_right = p.conv.pads[3];
    plan.conv = s;
    plan.empty = s.n == 0 || s.o == 0;
  } else {
    LinearShape s;
    s.rows = 1;
    for (size_t i = 0; i + 1 < in[0].dims.size(); ++i) s.rows *= in[0].dims[i];
    s.k = p.linear.in_features;
    s.o = o;
    plan.linear = s;
    plan.empty = s.rows == 0 || s.o == 0;
  }
  *out = plan;
  return Status::Ok();
}

}  // namespace core
}  // namespace bimaco
