#include "creators.h"

#include "binary_plugin.h"

namespace bimaco {
namespace trt {

namespace {

struct Creators {
  BinaryPluginCreator conv{core::OpKind::kConv2d};
  BinaryPluginCreator linear{core::OpKind::kLinear};
  nvinfer1::IPluginCreatorInterface* list[2] = {&conv, &linear};
};

}  // namespace

nvinfer1::IPluginCreatorInterface* const* plugin_creators(int32_t* count) {
  // A function-local static: safe to reach from a constructor of another translation unit
  // (the static registrar), whatever the order of static initialisation.
  static Creators c;
  *count = 2;
  return c.list;
}

}  // namespace trt
}  // namespace bimaco
