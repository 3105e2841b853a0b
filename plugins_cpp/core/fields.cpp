#include "fields.h"

#include <cstring>
#include <sstream>

#include "bimaco/contract.h"

namespace bimaco {
namespace core {

namespace {

std::string where(OpKind kind, const std::string& layer) {
  std::string s = op_name(kind);
  if (!layer.empty()) s += " '" + layer + "'";
  return s;
}

// Integer elements of a field, widened from int32 or int64.
Status read_ints(const FieldView& f, const std::string& ctx, std::vector<int64_t>* out) {
  if (f.length < 0 || (f.length > 0 && f.data == nullptr)) {
    return Status::Error(ctx + ": field '" + f.name + "' has no data");
  }
  out->clear();
  if (f.type == FieldType::kInt32) {
    const auto* v = static_cast<const int32_t*>(f.data);
    out->assign(v, v + f.length);
  } else if (f.type == FieldType::kInt64) {
    const auto* v = static_cast<const int64_t*>(f.data);
    out->assign(v, v + f.length);
  } else {
    return Status::Error(ctx + ": field '" + f.name + "' must be integer (ONNX INT/INTS), got another type");
  }
  return Status::Ok();
}

// A kChar field's text: `length` chars, with a trailing NUL (which some writers include) dropped.
std::string read_chars(const FieldView& f) {
  if (f.data == nullptr || f.length <= 0) return std::string();
  std::string s(static_cast<const char*>(f.data), static_cast<size_t>(f.length));
  const auto nul = s.find('\0');
  if (nul != std::string::npos) s.resize(nul);
  return s;
}

std::string join(const std::vector<int64_t>& v) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << "]";
  return os.str();
}

Status take_ints(const FieldView& f, const std::string& ctx, size_t expected, int* dst) {
  std::vector<int64_t> v;
  Status st = read_ints(f, ctx, &v);
  if (!st.ok) return st;
  if (v.size() != expected) {
    return Status::Error(ctx + ": field '" + f.name + "' has " + std::to_string(v.size()) + " values " + join(v) +
                         ", expected " + std::to_string(expected));
  }
  for (size_t i = 0; i < expected; ++i) {
    if (v[i] < INT32_MIN || v[i] > INT32_MAX) {
      return Status::Error(ctx + ": field '" + f.name + "' value " + std::to_string(v[i]) + " does not fit int32");
    }
    dst[i] = static_cast<int>(v[i]);
  }
  return Status::Ok();
}

}  // namespace

const char* op_name(OpKind kind) { return kind == OpKind::kConv2d ? kConvOpName : kLinearOpName; }

std::vector<FieldSpec> field_specs(OpKind kind) {
  if (kind == OpKind::kConv2d) {
    return {{"in_channels", FieldType::kInt32, 1},  {"kernel_shape", FieldType::kInt32, 2},
            {"strides", FieldType::kInt32, 2},      {"pads", FieldType::kInt32, 4},
            {kAttrRprelu, FieldType::kInt32, 1},    {kAttrSmb, FieldType::kInt32, 1},
            {kAttrLrmbRank, FieldType::kInt32, 1}};
  }
  return {{"in_features", FieldType::kInt32, 1}, {kAttrSmb, FieldType::kInt32, 1}, {kAttrLrmbRank, FieldType::kInt32, 1}};
}

Status parse_fields(OpKind kind, const std::vector<FieldView>& fields, const std::string& layer, OpParams* out) {
  const std::string ctx = where(kind, layer);
  OpParams p;
  p.kind = kind;
  bool have_in = false, have_kernel = false;
  for (const FieldView& f : fields) {
    Status st;
    if (f.name == "plugin_version" || f.name == "plugin_namespace") {
      if (f.type != FieldType::kChar) {
        return Status::Error(ctx + ": field '" + f.name + "' must be a string");
      }
      const std::string want = f.name == "plugin_version" ? kPluginVersion : kPluginNamespace;
      const std::string got = read_chars(f);
      if (got != want) {
        return Status::Error(ctx + ": " + f.name + " is '" + got + "', this library implements '" + want + "'");
      }
      continue;
    }
    if (kind == OpKind::kConv2d && f.name == "in_channels") {
      st = take_ints(f, ctx, 1, &p.conv.in_channels);
      have_in = true;
    } else if (kind == OpKind::kConv2d && f.name == "kernel_shape") {
      st = take_ints(f, ctx, 2, p.conv.kernel);
      have_kernel = true;
    } else if (kind == OpKind::kConv2d && f.name == "strides") {
      st = take_ints(f, ctx, 2, p.conv.strides);
    } else if (kind == OpKind::kConv2d && f.name == "pads") {
      st = take_ints(f, ctx, 4, p.conv.pads);
    } else if (kind == OpKind::kLinear && f.name == "in_features") {
      st = take_ints(f, ctx, 1, &p.linear.in_features);
      have_in = true;
    } else if ((kind == OpKind::kConv2d && f.name == kAttrRprelu) || f.name == kAttrSmb) {
      int flag = 0;
      st = take_ints(f, ctx, 1, &flag);
      if (st.ok && flag != 0 && flag != 1) {
        st = Status::Error(ctx + ": field '" + f.name + "' must be 0 or 1, got " + std::to_string(flag));
      }
      (f.name == kAttrSmb ? p.side.smb : p.side.rprelu) = flag == 1;
    } else if (f.name == kAttrLrmbRank) {
      st = take_ints(f, ctx, 1, &p.side.lrmb_rank);
    } else {
      // An attribute we do not know would change the maths silently if ignored.
      std::string known;
      for (const FieldSpec& s : field_specs(kind)) known += std::string(known.empty() ? "" : ", ") + s.name;
      return Status::Error(ctx + ": unknown field '" + f.name + "' (known: " + known +
                           ", plugin_version, plugin_namespace)");
    }
    if (!st.ok) return st;
  }
  if (!have_in) {
    return Status::Error(ctx + ": missing required field '" +
                         std::string(kind == OpKind::kConv2d ? "in_channels" : "in_features") + "'");
  }
  if (kind == OpKind::kConv2d && !have_kernel) {
    return Status::Error(ctx + ": missing required field 'kernel_shape'");
  }
  Status st = validate_params(p, layer);
  if (!st.ok) return st;
  *out = p;
  return Status::Ok();
}

Status validate_params(const OpParams& p, const std::string& layer) {
  const std::string ctx = where(p.kind, layer);
  if (p.side.lrmb_rank < 0 || p.side.lrmb_rank > kMaxLrmbRank) {
    return Status::Error(ctx + ": lrmb_rank must lie in [0, " + std::to_string(kMaxLrmbRank) + "], got " +
                         std::to_string(p.side.lrmb_rank));
  }
  if (p.kind == OpKind::kLinear) {
    if (p.linear.in_features <= 0) {
      return Status::Error(ctx + ": in_features must be positive, got " + std::to_string(p.linear.in_features));
    }
    if (p.side.rprelu) return Status::Error(ctx + ": RPReLU belongs to conv layers");
    if (p.side.smb && p.linear.in_features > kSmbMaxChannels) {
      return Status::Error(ctx + ": SMB columns hold at most " + std::to_string(kSmbMaxChannels) + " inputs");
    }
    return Status::Ok();
  }
  const ConvParams& c = p.conv;
  if (c.in_channels <= 0) {
    return Status::Error(ctx + ": in_channels must be positive, got " + std::to_string(c.in_channels));
  }
  for (int i = 0; i < 2; ++i) {
    if (c.kernel[i] <= 0) {
      return Status::Error(ctx + ": kernel_shape must be positive, got [" + std::to_string(c.kernel[0]) + ", " +
                           std::to_string(c.kernel[1]) + "]");
    }
    if (c.strides[i] <= 0) {
      return Status::Error(ctx + ": strides must be positive, got [" + std::to_string(c.strides[0]) + ", " +
                           std::to_string(c.strides[1]) + "]");
    }
  }
  for (int i = 0; i < 4; ++i) {
    if (c.pads[i] < 0) {
      return Status::Error(ctx + ": pads must be non-negative, got [" + std::to_string(c.pads[0]) + ", " +
                           std::to_string(c.pads[1]) + ", " + std::to_string(c.pads[2]) + ", " +
                           std::to_string(c.pads[3]) + "]");
    }
  }
  if (p.side.reads_input()) {
    // SMB and LRMB add X at the output's own pixel: the output grid must be the input grid.
    for (int i = 0; i < 2; ++i) {
      if (c.strides[i] != 1 || c.pads[i] + c.pads[i + 2] != c.kernel[i] - 1) {
        return Status::Error(ctx + ": SMB/LRMB need stride 1 and an output the size of the input (pads summing to "
                             "kernel - 1 per axis), got strides [" + std::to_string(c.strides[0]) + ", " +
                             std::to_string(c.strides[1]) + "], kernel [" + std::to_string(c.kernel[0]) + ", " +
                             std::to_string(c.kernel[1]) + "]");
      }
    }
    if (p.side.smb && c.in_channels > kSmbMaxChannels) {
      return Status::Error(ctx + ": SMB columns hold at most " + std::to_string(kSmbMaxChannels) + " inputs");
    }
  }
  return Status::Ok();
}

std::vector<OwnedField> serialize_fields(const OpParams& p) {
  const SideParams& sd = p.side;
  if (p.kind == OpKind::kLinear) {
    return {{"in_features", FieldType::kInt32, {p.linear.in_features}},
            {kAttrSmb, FieldType::kInt32, {sd.smb ? 1 : 0}},
            {kAttrLrmbRank, FieldType::kInt32, {sd.lrmb_rank}}};
  }
  const ConvParams& c = p.conv;
  return {{"in_channels", FieldType::kInt32, {c.in_channels}},
          {"kernel_shape", FieldType::kInt32, {c.kernel[0], c.kernel[1]}},
          {"strides", FieldType::kInt32, {c.strides[0], c.strides[1]}},
          {"pads", FieldType::kInt32, {c.pads[0], c.pads[1], c.pads[2], c.pads[3]}},
          {kAttrRprelu, FieldType::kInt32, {sd.rprelu ? 1 : 0}},
          {kAttrSmb, FieldType::kInt32, {sd.smb ? 1 : 0}},
          {kAttrLrmbRank, FieldType::kInt32, {sd.lrmb_rank}}};
}

std::string params_key(const OpParams& p) {
  std::ostringstream os;
  os << op_name(p.kind) << "_v" << kPluginVersion;
  if (p.kind == OpKind::kLinear) {
    os << "_k" << p.linear.in_features;
  } else {
    const ConvParams& c = p.conv;
    os << "_c" << c.in_channels << "_k" << c.kernel[0] << "x" << c.kernel[1] << "_s" << c.strides[0] << "x"
       << c.strides[1] << "_p" << c.pads[0] << "." << c.pads[1] << "." << c.pads[2] << "." << c.pads[3];
  }
  // the fused epilogue is part of what TensorRT times: a fused layer never shares a plain one's entry
  if (p.side.any()) os << "_side" << (p.side.rprelu ? "R" : "") << (p.side.smb ? "S" : "") << p.side.lrmb_rank;
  return os.str();
}

bool operator==(const OpParams& a, const OpParams& b) {
  if (a.kind != b.kind) return false;
  if (a.side.rprelu != b.side.rprelu || a.side.smb != b.side.smb || a.side.lrmb_rank != b.side.lrmb_rank) return false;
  if (a.kind == OpKind::kLinear) return a.linear.in_features == b.linear.in_features;
  const ConvParams &x = a.conv, &y = b.conv;
  return x.in_channels == y.in_channels && std::memcmp(x.kernel, y.kernel, sizeof x.kernel) == 0 &&
         std::memcmp(x.strides, y.strides, sizeof x.strides) == 0 && std::memcmp(x.pads, y.pads, sizeof x.pads) == 0;
}

}  // namespace core
}  // namespace bimaco
