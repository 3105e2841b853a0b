#include "shapes.h"

#include <climits>
#include <sstream>

namespace bimaco {
namespace core {

namespace {

std::string where(const OpParams& p, const std::string& layer) {
  std::string s = op_name(p.kind);
  if (!layer.empty()) s += " '" + layer + "'";
  return s;
}

std::string dims_str(const Dims& d) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < d.size(); ++i) os << (i ? ", " : "") << (d[i] < 0 ? std::string("?") : std::to_string(d[i]));
  if (d.rank() > Dims::kMax) os << ", ...";
  os << "]";
  return os.str();
}

// Compare known dims of `t` with `want` (-1 in want: any).
Status check_dims(const OpParams& p, const std::string& layer, int index, const char* name, const TensorInfo& t,
                  const Dims& want) {
  bool ok = t.dims.rank() == want.rank();
  for (size_t i = 0; ok && i < want.size(); ++i) {
    if (want[i] >= 0 && t.dims[i] >= 0 && t.dims[i] != want[i]) ok = false;
  }
  if (!ok) {
    return Status::Error(where(p, layer) + ": input " + std::to_string(index) + " (" + name + ") has shape " +
                         dims_str(t.dims) + ", expected " + dims_str(want));
  }
  return Status::Ok();
}

Status check_type(const OpParams& p, const std::string& layer, int index, const char* name, const TensorInfo& t,
                  TensorType want) {
  if (t.type != want) {
    return Status::Error(where(p, layer) + ": input " + std::to_string(index) + " (" + name + ") is " +
                         type_name(t.type) + ", expected " + type_name(want));
  }
  return Status::Ok();
}

// The side inputs: shapes from O, C, rank and nnz (the length of smb_val); types int32
// for the SMB index tables, X's type for the rest.
Status check_side_inputs(const OpParams& p, const InputLayout& l, const TensorInfo* in, int64_t o,
                         const std::string& layer) {
  const int64_t c = p.kind == OpKind::kConv2d ? p.conv.in_channels : p.linear.in_features;
  const TensorType xt = in[0].type;
  Status st;
  if (l.rprelu >= 0) {
    if (!(st = check_dims(p, layer, l.rprelu, "rprelu", in[l.rprelu], {3, o})).ok) return st;
    if (!(st = check_type(p, layer, l.rprelu, "rprelu", in[l.rprelu], xt)).ok) return st;
  }
  if (l.smb_rowptr >= 0) {
    const int64_t nnz = in[l.smb_val].dims.rank() == 1 ? in[l.smb_val].dims[0] : -2;
    if (nnz == -2) {
      return Status::Error(where(p, layer) + ": input " + std::to_string(l.smb_val) + " (smb_val) has shape " +
                           dims_str(in[l.smb_val].dims) + ", expected [nnz]");
    }
    if (nnz > kSmbMaxEntries) {
      return Status::Error(where(p, layer) + ": input " + std::to_string(l.smb_val) + " (smb_val) has " +
                           std::to_string(nnz) + " entries; a node's 16-bit row starts hold at most " +
                           std::to_string(kSmbMaxEntries));
    }
    // 16-bit row starts and columns, two per int32 word (contract.h)
    const int64_t o_words = o < 0 ? -1 : (o + 2) / 2, words = nnz < 0 ? -1 : (nnz + 1) / 2;
    if (!(st = check_dims(p, layer, l.smb_rowptr, "smb_rowptr", in[l.smb_rowptr], {o_words})).ok) return st;
    if (!(st = check_dims(p, layer, l.smb_col, "smb_col", in[l.smb_col], {words})).ok) return st;
    if (!(st = check_type(p, layer, l.smb_rowptr, "smb_rowptr", in[l.smb_rowptr], TensorType::kInt32)).ok) return st;
    if (!(st = check_type(p, layer, l.smb_col, "smb_col", in[l.smb_col], TensorType::kInt32)).ok) return st;
    if (!(st = check_type(p, layer, l.smb_val, "smb_val", in[l.smb_val], xt)).ok) return st;
  }
  if (l.lr_down >= 0) {
    const int64_t r = p.side.lrmb_rank;
    if (!(st = check_dims(p, layer, l.lr_down, "lr_down", in[l.lr_down], {r, c})).ok) return st;
    if (!(st = check_dims(p, layer, l.lr_up, "lr_up", in[l.lr_up], {o, r})).ok) return st;
    if (!(st = check_type(p, layer, l.lr_down, "lr_down", in[l.lr_down], xt)).ok) return st;
    if (!(st = check_type(p, layer, l.lr_up, "lr_up", in[l.lr_up], xt)).ok) return st;
  }
  return Status::Ok();
}

}  // namespace

bool Dims::operator==(const Dims& o) const {
  if (n_ != o.n_) return false;
  for (size_t i = 0; i < size(); ++i)
    if (d_[i] != o.d_[i]) return false;
  return true;
}

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

Status input_layout(const OpParams& p, int n, const std::string& layer, InputLayout* out) {
  const int base = kMinInputs + p.side.extra_inputs();
  InputLayout l;
  int next = kMinInputs;
  if (n == base + 1) {
    l.wzero = next++;
  } else if (n != base) {
    return Status::Error(where(p, layer) + ": has " + std::to_string(n) + " inputs, expected " +
                         std::to_string(base) + " (X, Wbits, alpha, bias" + (p.side.any() ? ", side inputs" : "") +
                         ") or " + std::to_string(base + 1) + " (with Wzero after bias)");
  }
  if (p.side.rprelu) l.rprelu = next++;
  if (p.side.smb) {
    l.smb_rowptr = next++;
    l.smb_col = next++;
    l.smb_val = next++;
  }
  if (p.side.lrmb_rank > 0) {
    l.lr_down = next++;
    l.lr_up = next++;
  }
  l.count = n;
  *out = l;
  return Status::Ok();
}

Status check_inputs(const OpParams& p, const TensorInfo* in, int n, const std::string& layer) {
  InputLayout l;
  Status st = input_layout(p, n, layer, &l);
  if (!st.ok) return st;
  if (output_type(in[0].type) == TensorType::kOther) {
    return Status::Error(where(p, layer) + ": input 0 (X) is " + type_name(in[0].type) +
                         ", expected float32 or float16");
  }
  // O from Wbits when known; alpha/bias/Wzero must agree with it.
  const int64_t o = in[1].dims.empty() ? -1 : in[1].dims[0];
  Dims wshape;
  if (p.kind == OpKind::kConv2d) {
    const ConvParams& c = p.conv;
    if (in[0].dims.rank() != 4) {
      return Status::Error(where(p, layer) + ": input 0 (X) has shape " + dims_str(in[0].dims) +
                           ", expected 4-D [N, " + std::to_string(c.in_channels) + ", H, W]");
    }
    if (!(st = check_dims(p, layer, 0, "X", in[0], {-1, c.in_channels, -1, -1})).ok) return st;
    wshape = {o, c.kernel[0], c.kernel[1], num_words(c.in_channels)};
  } else {
    const int k = p.linear.in_features;
    if (in[0].dims.empty()) {
      return Status::Error(where(p, layer) + ": input 0 (X) is a scalar, expected [..., " + std::to_string(k) + "]");
    }
    Dims xshape;
    for (int i = 0; i < in[0].dims.rank(); ++i) xshape.push_back(-1);
    xshape.back() = k;
    if (!(st = check_dims(p, layer, 0, "X", in[0], xshape)).ok) return st;
    wshape = {o, num_words(k)};
  }
  if (!(st = check_dims(p, layer, 1, "Wbits", in[1], wshape)).ok) return st;
  if (l.wzero >= 0 && !(st = check_dims(p, layer, l.wzero, "Wzero", in[l.wzero], wshape)).ok) return st;
  if (!(st = check_type(p, layer, 1, "Wbits", in[1], TensorType::kInt32)).ok) return st;
  if (!(st = check_type(p, layer, 2, "alpha", in[2], TensorType::kFloat32)).ok) return st;
  if (!(st = check_type(p, layer, 3, "bias", in[3], TensorType::kFloat32)).ok) return st;
  if (l.wzero >= 0 && !(st = check_type(p, layer, l.wzero, "Wzero", in[l.wzero], TensorType::kInt32)).ok) return st;
  if (!(st = check_dims(p, layer, 2, "alpha", in[2], {o})).ok) return st;
  if (!(st = check_dims(p, layer, 3, "bias", in[3], {o})).ok) return st;
  return check_side_inputs(p, l, in, o, layer);
}

Status output_dims(const OpParams& p, const TensorInfo* in, int n, const std::string& layer, Dims* out) {
  Status st = check_inputs(p, in, n, layer);
  if (!st.ok) return st;
  const int64_t o = in[1].dims[0];
  if (p.kind == OpKind::kLinear) {
    *out = in[0].dims;
    out->back() = o;
    return Status::Ok();
  }
  const ConvParams& c = p.conv;
  IntArith a;
  Dims y = {in[0].dims[0], o, -1, -1};
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

bool supports_combination(const OpParams& p, int pos, const TensorInfo* io, int nb_inputs, int nb_outputs) {
  InputLayout l;
  if (nb_outputs != 1 || !input_layout(p, nb_inputs, std::string(), &l).ok) return false;
  if (pos < 0 || pos > nb_inputs) return false;
  const TensorInfo& t = io[pos];
  if (!t.linear) return false;
  if (pos == nb_inputs) return t.type == io[0].type;  // Y has the dtype of X
  if (pos == 0) return t.type == TensorType::kFloat32 || t.type == TensorType::kFloat16;
  if (l.is_int(pos)) return t.type == TensorType::kInt32;  // Wbits, Wzero, SMB index tables
  if (l.is_side_float(pos)) return t.type == io[0].type;   // side parameters follow X
  return t.type == TensorType::kFloat32;                   // alpha, bias
}

Status plan_launch(const OpParams& p, const TensorInfo* in, int n, const std::string& layer, LaunchPlan* out) {
  Status st = check_inputs(p, in, n, layer);
  if (!st.ok) return st;
  for (int i = 0; i < n; ++i) {
    for (int64_t d : in[i].dims) {
      if (d < 0) return Status::Error(where(p, layer) + ": launch needs concrete shapes, got " + dims_str(in[i].dims));
      if (d > INT32_MAX) return Status::Error(where(p, layer) + ": dimension " + std::to_string(d) + " exceeds int32");
    }
  }
  LaunchPlan plan;
  plan.kind = p.kind;
  plan.dtype = in[0].type == TensorType::kFloat16 ? DType::kFloat16 : DType::kFloat32;
  if (!(st = input_layout(p, n, layer, &plan.layout)).ok) return st;
  plan.has_wzero = plan.layout.wzero >= 0;
  plan.side = p.side;
  plan.smb_nnz = plan.layout.smb_val >= 0 ? in[plan.layout.smb_val].dims[0] : 0;
  if (!(st = output_dims(p, in, n, layer, &plan.y_dims)).ok) return st;
  const int o = static_cast<int>(in[1].dims[0]);
  if (p.kind == OpKind::kConv2d) {
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

Status check_output(const LaunchPlan& plan, const TensorInfo& y, const std::string& layer) {
  const TensorType want = plan.dtype == DType::kFloat16 ? TensorType::kFloat16 : TensorType::kFloat32;
  if (y.type != want || !y.linear || y.dims != plan.y_dims) {
    OpParams p;
    p.kind = plan.kind;
    return Status::Error(where(p, layer) + ": output is " + type_name(y.type) + (y.linear ? " " : " (non-linear) ") +
                         dims_str(y.dims) + ", the launch writes " + type_name(want) + " " + dims_str(plan.y_dims));
  }
  return Status::Ok();
}

Status LaunchCache::plan(const OpParams& p, const TensorInfo* in, int n, const TensorInfo* y, const std::string& layer,
                         const LaunchPlan** out) {
  bool same = valid_ && n == n_;
  for (int i = 0; same && i < n; ++i) same = in[i] == last_[i];
  if (!same) {
    valid_ = false;
    if (n < 0 || n > kMaxIo) {
      OpParams q = p;
      return Status::Error(where(q, layer) + ": " + std::to_string(n) + " inputs is more than any bimaco op takes");
    }
    Status st = plan_launch(p, in, n, layer, &plan_);
    if (!st.ok) return st;
    for (int i = 0; i < n; ++i) last_[i] = in[i];
    n_ = n;
    valid_ = true;
    ++replans_;
  }
  if (y != nullptr) {
    Status st = check_output(plan_, *y, layer);
    if (!st.ok) return st;
  }
  *out = &plan_;
  return Status::Ok();
}

}  // namespace core
}  // namespace bimaco
