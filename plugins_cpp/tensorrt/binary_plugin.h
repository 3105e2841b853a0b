// TensorRT IPluginV3 plugins BinaryConv2d and BinaryLinear (version "1",
// namespace "bimaco"): a thin adapter from TensorRT's plugin interfaces to the
// TensorRT-free logic in plugins_cpp/core/ and the CUDA kernels of
// plugins_cpp/include/bimaco/binary_ops_cuda.h. One source tree for TensorRT
// 10.3 (JetPack 6) through 11.x: the IPluginV3One* signatures are the same there.
#pragma once

#include <string>
#include <vector>

#include <NvInferRuntime.h>

#include "fields.h"
#include "shapes.h"

namespace bimaco {
namespace trt {

class BinaryPlugin final : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuild,
                           public nvinfer1::IPluginV3OneRuntime {
 public:
  BinaryPlugin(std::string layer, const core::OpParams& params, nvinfer1::TensorRTPhase phase);
  ~BinaryPlugin() override = default;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;

  // IPluginV3OneBuild
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getNbOutputs() const noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
  char const* getTimingCacheID() noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 private:
  std::string mLayer;  // the ONNX node name, for messages
  core::OpParams mParams;
  nvinfer1::TensorRTPhase mPhase;
  std::string mCacheId;
  // The launch of the latest onShapeChange / enqueue, re-planned only when a descriptor
  // changes (core::LaunchCache), and the node's input count, which enqueue is not given.
  core::LaunchCache mLaunch;
  int32_t mNbInputs = 0;
  // getFieldsToSerialize returns pointers into these; they live as long as the plugin.
  std::vector<core::OwnedField> mSerialized;
  std::vector<nvinfer1::PluginField> mFields;
  nvinfer1::PluginFieldCollection mFieldCollection{};
};

class BinaryPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  explicit BinaryPluginCreator(core::OpKind kind);
  ~BinaryPluginCreator() override = default;

  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;

 private:
  core::OpKind mKind;
  std::vector<nvinfer1::PluginField> mFieldNames;
  nvinfer1::PluginFieldCollection mFieldCollection{};
};

}  // namespace trt
}  // namespace bimaco
