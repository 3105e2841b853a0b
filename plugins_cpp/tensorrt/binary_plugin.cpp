#include "binary_plugin.h"

#include <exception>
#include <new>

#include <cuda_runtime_api.h>

#include "bimaco/binary_ops_cuda.h"
#include "bimaco/contract.h"
#include "logging.h"

namespace bimaco {
namespace trt {

using nvinfer1::DataType;
using nvinfer1::DimensionOperation;
using nvinfer1::IDimensionExpr;
using nvinfer1::PluginFieldType;

namespace {

core::TensorType to_core(DataType t) {
  switch (t) {
    case DataType::kFLOAT: return core::TensorType::kFloat32;
    case DataType::kHALF: return core::TensorType::kFloat16;
    case DataType::kINT32: return core::TensorType::kInt32;
    default: return core::TensorType::kOther;
  }
}

core::Dims to_core(nvinfer1::Dims const& d) {
  core::Dims v;
  for (int32_t i = 0; i < d.nbDims && i < nvinfer1::Dims::MAX_DIMS; ++i) v.push_back(d.d[i]);
  return v;
}

core::TensorInfo info(nvinfer1::PluginTensorDesc const& d) {
  return {to_core(d.dims), to_core(d.type), d.format == nvinfer1::TensorFormat::kLINEAR};
}

// The per-inference path (onShapeChange, enqueue) converts descriptors into this
// fixed-size array on the stack: no allocation.
struct CallInfos {
  core::TensorInfo v[core::LaunchCache::kMaxIo];
  int n = 0;
  bool fits = true;
  CallInfos(nvinfer1::PluginTensorDesc const* d, int32_t count) {
    fits = d != nullptr && count >= 0 && count <= core::LaunchCache::kMaxIo;
    if (!fits) return;
    n = count;
    for (int32_t i = 0; i < count; ++i) v[i] = info(d[i]);
  }
};

// Build-time descriptions: `desc.dims` holds -1 for dynamic axes; `which` picks
// desc / min / opt / max ('d', 'n', 'o', 'x').
std::vector<core::TensorInfo> infos(nvinfer1::DynamicPluginTensorDesc const* d, int32_t n, char which) {
  std::vector<core::TensorInfo> v;
  for (int32_t i = 0; i < n; ++i) {
    core::TensorInfo t = info(d[i].desc);
    if (which == 'n') t.dims = to_core(d[i].min);
    if (which == 'o') t.dims = to_core(d[i].opt);
    if (which == 'x') t.dims = to_core(d[i].max);
    v.push_back(std::move(t));
  }
  return v;
}

core::FieldType to_core(PluginFieldType t) {
  switch (t) {
    case PluginFieldType::kINT32: return core::FieldType::kInt32;
    case PluginFieldType::kINT64: return core::FieldType::kInt64;
    case PluginFieldType::kFLOAT32: return core::FieldType::kFloat32;
    case PluginFieldType::kCHAR: return core::FieldType::kChar;
    default: return core::FieldType::kOther;
  }
}

PluginFieldType to_trt(core::FieldType t) {
  switch (t) {
    case core::FieldType::kInt64: return PluginFieldType::kINT64;
    case core::FieldType::kFloat32: return PluginFieldType::kFLOAT32;
    case core::FieldType::kChar: return PluginFieldType::kCHAR;
    default: return PluginFieldType::kINT32;
  }
}

// core::conv_out_extent over TensorRT's symbolic dimension expressions.
struct ExprArith {
  using Expr = IDimensionExpr const*;
  nvinfer1::IExprBuilder& b;
  Expr constant(int64_t v) const { return b.constant(v); }
  Expr add(Expr x, Expr y) const { return b.operation(DimensionOperation::kSUM, *x, *y); }
  Expr sub(Expr x, Expr y) const { return b.operation(DimensionOperation::kSUB, *x, *y); }
  Expr floor_div(Expr x, Expr y) const { return b.operation(DimensionOperation::kFLOOR_DIV, *x, *y); }
};

}  // namespace

// ------------------------------------------------------------------ BinaryPlugin

BinaryPlugin::BinaryPlugin(std::string layer, const core::OpParams& params, nvinfer1::TensorRTPhase phase)
    : mLayer(std::move(layer)), mParams(params), mPhase(phase), mCacheId(core::params_key(params)) {}

nvinfer1::IPluginCapability* BinaryPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD:
      // A plugin deserialized from an engine only runs: it has no build capability.
      return mPhase == nvinfer1::TensorRTPhase::kBUILD ? static_cast<nvinfer1::IPluginV3OneBuild*>(this) : nullptr;
  }
  return nullptr;
}

nvinfer1::IPluginV3* BinaryPlugin::clone() noexcept {
  try {
    // Every member is a value type: the copy shares nothing with this plugin.
    auto* p = new BinaryPlugin(mLayer, mParams, mPhase);
    p->mLaunch = mLaunch;
    p->mNbInputs = mNbInputs;
    return p;
  } catch (std::exception const& e) {
    log_error(mLayer + ": clone failed: " + e.what());
    return nullptr;
  }
}

char const* BinaryPlugin::getPluginName() const noexcept { return core::op_name(mParams.kind); }
char const* BinaryPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* BinaryPlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

int32_t BinaryPlugin::getNbOutputs() const noexcept { return 1; }

int32_t BinaryPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                      nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  try {
    if (nbOutputs != 1) {
      log_error(mLayer + ": expected 1 output, got " + std::to_string(nbOutputs));
      return -1;
    }
    core::Status st = core::check_inputs(mParams, infos(in, nbInputs, 'd'), mLayer);
    if (!st.ok) {
      log_error(st.message);
      return -1;
    }
    // The largest shapes of the profile must also be valid (too small a min is caught at enqueue).
    core::Dims y;
    st = core::output_dims(mParams, infos(in, nbInputs, 'x'), mLayer, &y);
    if (!st.ok) {
      log_error(st.message);
      return -1;
    }
    return 0;
  } catch (std::exception const& e) {
    log_error(mLayer + ": configurePlugin: " + e.what());
    return -1;
  }
}

int32_t BinaryPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                         int32_t nbInputs) const noexcept {
  try {
    core::InputLayout layout;
    core::Status st = core::input_layout(mParams, nbInputs, mLayer, &layout);
    if (nbOutputs != 1 || !st.ok) {
      log_error(st.ok ? mLayer + ": expected 1 output, got " + std::to_string(nbOutputs) : st.message);
      return -1;
    }
    const core::TensorType y = core::output_type(to_core(inputTypes[0]));
    if (y == core::TensorType::kOther) {
      log_error(mLayer + ": input 0 (X) must be float32 or float16 (no int8/bf16/fp8 support in the binary kernels)");
      return -1;
    }
    outputTypes[0] = inputTypes[0];  // Y has the dtype of X
    return 0;
  } catch (std::exception const& e) {
    log_error(mLayer + ": getOutputDataTypes: " + e.what());
    return -1;
  }
}

int32_t BinaryPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                      nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                      nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                      nvinfer1::IExprBuilder& exprBuilder) noexcept {
  try {
    core::InputLayout layout;
    core::Status st = core::input_layout(mParams, nbInputs, mLayer, &layout);
    if (nbOutputs != 1 || !st.ok) {
      log_error(st.ok ? mLayer + ": expected 1 output, got " + std::to_string(nbOutputs) : st.message);
      return -1;
    }
    nvinfer1::DimsExprs const& x = inputs[0];
    nvinfer1::DimsExprs const& w = inputs[1];
    if (w.nbDims < 1) {
      log_error(mLayer + ": input 1 (Wbits) must have O as its first axis");
      return -1;
    }
    if (mParams.kind == core::OpKind::kConv2d) {
      if (x.nbDims != 4) {
        log_error(mLayer + ": input 0 (X) must be 4-D NCHW, got rank " + std::to_string(x.nbDims));
        return -1;
      }
      ExprArith a{exprBuilder};
      const core::ConvParams& c = mParams.conv;
      outputs[0].nbDims = 4;
      outputs[0].d[0] = x.d[0];
      outputs[0].d[1] = w.d[0];
      outputs[0].d[2] = core::conv_out_extent(a, x.d[2], c.kernel[0], c.strides[0], c.pads[0], c.pads[2]);
      outputs[0].d[3] = core::conv_out_extent(a, x.d[3], c.kernel[1], c.strides[1], c.pads[1], c.pads[3]);
    } else {
      if (x.nbDims < 1) {
        log_error(mLayer + ": input 0 (X) must be [..., in_features]");
        return -1;
      }
      outputs[0] = x;
      outputs[0].d[x.nbDims - 1] = w.d[0];
    }
    return 0;
  } catch (std::exception const& e) {
    log_error(mLayer + ": getOutputShapes: " + e.what());
    return -1;
  }
}

bool BinaryPlugin::supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                             int32_t nbInputs, int32_t nbOutputs) noexcept {
  try {
    // Only positions 0..pos are decided when TensorRT asks about pos.
    std::vector<core::TensorInfo> io = infos(inOut, pos + 1, 'd');
    return core::supports_combination(mParams, pos, io.data(), nbInputs, nbOutputs);
  } catch (...) {
    return false;
  }
}

size_t BinaryPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                      nvinfer1::DynamicPluginTensorDesc const* /*outputs*/,
                                      int32_t /*nbOutputs*/) const noexcept {
  try {
    // Sized for the profile's max shapes: the workspace then fits every shape the engine accepts.
    core::LaunchPlan plan;
    core::Status st = core::plan_launch(mParams, infos(inputs, nbInputs, 'x'), mLayer, &plan);
    if (!st.ok) {
      log_error(st.message);
      return 0;
    }
    const int rank = mParams.side.lrmb_rank;
    return mParams.kind == core::OpKind::kConv2d ? cuda::conv2d_workspace_bytes(plan.conv, rank)
                                                 : cuda::linear_workspace_bytes(plan.linear, rank);
  } catch (std::exception const& e) {
    log_error(mLayer + ": getWorkspaceSize: " + e.what());
    return 0;
  }
}

char const* BinaryPlugin::getTimingCacheID() noexcept {
  // One entry per attribute set: layers with equal attributes share their timing.
  return mCacheId.c_str();
}

int32_t BinaryPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                                    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept {
  try {
    // Validates the new shapes early (a bad shape fails here, before any enqueue) and warms
    // the cache enqueue reads; when the shapes did not change this is only a comparison.
    const CallInfos ins(in, nbInputs), outs(out, nbOutputs);
    if (!ins.fits || !outs.fits || outs.n != 1) {
      log_error(mLayer + ": onShapeChange with " + std::to_string(nbInputs) + " inputs and " +
                std::to_string(nbOutputs) + " outputs");
      return -1;
    }
    mNbInputs = nbInputs;
    core::LaunchPlan const* plan = nullptr;
    core::Status st = mLaunch.plan(mParams, ins.v, ins.n, &outs.v[0], mLayer, &plan);
    if (!st.ok) {
      log_error(st.message);
      return -1;
    }
    return 0;
  } catch (std::exception const& e) {
    log_error(mLayer + ": onShapeChange: " + e.what());
    return -1;
  }
}

int32_t BinaryPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                              void const* const* inputs, void* const* outputs, void* workspace,
                              cudaStream_t stream) noexcept {
  try {
    // The launch comes from this call's own descriptors (type included), never from a plan
    // made for another call: see core::LaunchCache. getNbOutputs() is 1.
    // enqueue is not told the input count: it is the node's, recorded by onShapeChange,
    // which TensorRT calls before the first enqueue of every context.
    if (mNbInputs <= 0) {
      log_error(mLayer + ": enqueue before onShapeChange");
      return -1;
    }
    const CallInfos ins(inputDesc, mNbInputs), outs(outputDesc, 1);
    core::LaunchPlan const* plan = nullptr;
    core::Status st = ins.fits && outs.fits ? mLaunch.plan(mParams, ins.v, ins.n, &outs.v[0], mLayer, &plan)
                                            : core::Status::Error(mLayer + ": enqueue without descriptors");
    if (!st.ok) {
      log_error(st.message);
      return -1;
    }
    if (plan->empty) return 0;
    const auto* wbits = static_cast<int32_t const*>(inputs[1]);
    const auto* alpha = static_cast<float const*>(inputs[2]);
    const auto* bias = static_cast<float const*>(inputs[3]);
    const core::InputLayout& l = plan->layout;
    const auto* wzero = plan->has_wzero ? static_cast<int32_t const*>(inputs[l.wzero]) : nullptr;
    // The side tables, where the layout puts them; the SMB index tables' int32 words are
    // read as the 16-bit entries they hold (contract.h).
    cuda::SideBranches side;
    if (l.rprelu >= 0) side.rprelu = inputs[l.rprelu];
    if (l.smb_rowptr >= 0) {
      side.smb_rowptr = static_cast<uint16_t const*>(inputs[l.smb_rowptr]);
      side.smb_col = static_cast<uint16_t const*>(inputs[l.smb_col]);
      side.smb_val = inputs[l.smb_val];
    }
    if (l.lr_down >= 0) {
      side.rank = plan->side.lrmb_rank;
      side.lr_down = inputs[l.lr_down];
      side.lr_up = inputs[l.lr_up];
    }
    cuda::SideBranches const* sidep = side.any() ? &side : nullptr;
    cudaError_t err = plan->kind == core::OpKind::kConv2d
                          ? cuda::binary_conv2d(plan->conv, plan->dtype, inputs[0], wbits, wzero, alpha, bias,
                                                outputs[0], workspace, stream, sidep)
                          : cuda::binary_linear(plan->linear, plan->dtype, inputs[0], wbits, wzero, alpha, bias,
                                                outputs[0], workspace, stream, sidep);
    if (err != cudaSuccess) {
      log_error(mLayer + ": kernel launch failed: " + cudaGetErrorString(err));
      return -1;
    }
    return 0;
  } catch (std::exception const& e) {
    log_error(mLayer + ": enqueue: " + e.what());
    return -1;
  }
}

nvinfer1::IPluginV3* BinaryPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
  // No per-context resources: each execution context gets its own full copy.
  return clone();
}

nvinfer1::PluginFieldCollection const* BinaryPlugin::getFieldsToSerialize() noexcept {
  try {
    mSerialized = core::serialize_fields(mParams);
    mFields.clear();
    for (core::OwnedField const& f : mSerialized) {
      mFields.emplace_back(f.name.c_str(), f.ints.data(), to_trt(f.type), static_cast<int32_t>(f.ints.size()));
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
    return &mFieldCollection;
  } catch (std::exception const& e) {
    log_error(mLayer + ": getFieldsToSerialize: " + e.what());
    return nullptr;
  }
}

// ------------------------------------------------------------------ BinaryPluginCreator

BinaryPluginCreator::BinaryPluginCreator(core::OpKind kind) : mKind(kind) {
  for (core::FieldSpec const& s : core::field_specs(kind)) {
    mFieldNames.emplace_back(s.name, nullptr, to_trt(s.type), s.length);
  }
  mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
  mFieldCollection.fields = mFieldNames.data();
}

nvinfer1::IPluginV3* BinaryPluginCreator::createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                                       nvinfer1::TensorRTPhase phase) noexcept {
  try {
    const std::string layer = name != nullptr ? name : "";
    // The field buffers belong to the caller and die after this call: copy out of them here.
    std::vector<core::FieldView> fields;
    if (fc != nullptr) {
      for (int32_t i = 0; i < fc->nbFields; ++i) {
        nvinfer1::PluginField const& f = fc->fields[i];
        fields.push_back({f.name != nullptr ? f.name : "", to_core(f.type), f.data, f.length});
      }
    }
    core::OpParams params;
    core::Status st = core::parse_fields(mKind, fields, layer, &params);
    if (!st.ok) {
      log_error(st.message);
      return nullptr;
    }
    return new BinaryPlugin(layer, params, phase);
  } catch (std::exception const& e) {
    log_error(std::string(core::op_name(mKind)) + ": createPlugin failed: " + e.what());
    return nullptr;
  }
}

nvinfer1::PluginFieldCollection const* BinaryPluginCreator::getFieldNames() noexcept { return &mFieldCollection; }
char const* BinaryPluginCreator::getPluginName() const noexcept { return core::op_name(mKind); }
char const* BinaryPluginCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* BinaryPluginCreator::getPluginNamespace() const noexcept { return kPluginNamespace; }

}  // namespace trt
}  // namespace bimaco
