// The plugin creators of this library, shared by its two registration paths
// (registration_dynamic.cpp, registration_static.cpp: see plugins_cpp/core/registration.h
// for why there are two).
#pragma once

#include <cstdint>

#include <NvInferRuntime.h>

namespace bimaco {
namespace trt {

// The creators (BinaryConv2d, BinaryLinear), constructed on first use and alive until
// the library is unloaded. `*count` receives their number.
nvinfer1::IPluginCreatorInterface* const* plugin_creators(int32_t* count);

}  // namespace trt
}  // namespace bimaco
