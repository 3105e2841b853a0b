// Attributes of the bimaco ops as TensorRT plugin fields, without TensorRT.
//
// The TensorRT plugin (plugins_cpp/tensorrt/) converts nvinfer1::PluginField lists
// into FieldView lists and back; everything else (which fields exist, their types,
// defaults, validation, the serialized layout) lives here so the host tests in
// plugins_cpp/tests/ cover it on machines without TensorRT. Field names are the ONNX
// attribute names of bimaco_deploy/plugins/contract.py; a pytest compares them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bimaco {
namespace core {

// The subset of nvinfer1::PluginFieldType values the ONNX parser produces for our
// attributes (INT/INTS -> kINT32, STRING -> kCHAR). kInt64 is accepted from API users.
enum class FieldType : int { kInt32, kInt64, kFloat32, kChar, kOther };

// A borrowed view of one field: `data` points at `length` elements of `type`.
struct FieldView {
  std::string name;
  FieldType type = FieldType::kOther;
  const void* data = nullptr;
  int32_t length = 0;
};

// An owned field, for getFieldsToSerialize: the plugin keeps these alive while
// TensorRT reads the PluginField array that points into them.
struct OwnedField {
  std::string name;
  FieldType type = FieldType::kInt32;
  std::vector<int32_t> ints;
};

// What the creator advertises in getFieldNames (name, type, element count).
struct FieldSpec {
  const char* name;
  FieldType type;
  int32_t length;
};

// Result of a check: ok, or a message that names what is wrong and what was expected.
struct Status {
  bool ok = true;
  std::string message;
  static Status Ok() { return Status{}; }
  static Status Error(std::string msg) { return Status{false, std::move(msg)}; }
};

enum class OpKind : int { kConv2d = 0, kLinear = 1 };

const char* op_name(OpKind kind);

struct ConvParams {
  int in_channels = 0;
  int kernel[2] = {0, 0};     // kh, kw
  int strides[2] = {1, 1};    // sh, sw
  int pads[4] = {0, 0, 0, 0}; // ONNX order: top, left, bottom, right
};

struct LinearParams {
  int in_features = 0;
};

// The fused side branches a node carries (attributes rprelu, smb, lrmb_rank of the
// contract; all off: the plain op). Each one adds inputs after bias / Wzero.
struct SideParams {
  bool rprelu = false;  // conv only
  bool smb = false;
  int lrmb_rank = 0;
  bool any() const { return rprelu || smb || lrmb_rank > 0; }
  // SMB or LRMB read X at the output pixel: a conv needs stride 1 and "same" padding.
  bool reads_input() const { return smb || lrmb_rank > 0; }
  int extra_inputs() const { return (rprelu ? 1 : 0) + (smb ? 3 : 0) + (lrmb_rank > 0 ? 2 : 0); }
};

// Attributes of one plugin instance. Only the member matching `kind` is meaningful.
struct OpParams {
  OpKind kind = OpKind::kConv2d;
  ConvParams conv;
  LinearParams linear;
  SideParams side;
};

// The fields a creator advertises, in serialization order.
std::vector<FieldSpec> field_specs(OpKind kind);

// Parse a field list (as handed to createPlugin, at build or runtime phase) into
// params. Every field has a default except in_channels / kernel_shape /
// in_features (the side-branch fields default to 0: the plain op); "plugin_version" and "plugin_namespace" (kChar), when present,
// must match the contract. `layer` names the node in error messages.
Status parse_fields(OpKind kind, const std::vector<FieldView>& fields, const std::string& layer, OpParams* out);

// Range checks on parsed params (positive sizes, non-negative pads, ...).
Status validate_params(const OpParams& p, const std::string& layer);

// The fields getFieldsToSerialize writes; parse_fields(serialize_fields(p)) == p.
std::vector<OwnedField> serialize_fields(const OpParams& p);

// A stable text key of the params, used as the plugin's timing-cache ID.
std::string params_key(const OpParams& p);

bool operator==(const OpParams& a, const OpParams& b);

}  // namespace core
}  // namespace bimaco
