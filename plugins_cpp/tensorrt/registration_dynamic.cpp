// Entry points of libbimaco_trt_plugin.so for IPluginRegistry::loadLibrary
// (trt.get_plugin_registry().load_library, trtexec --dynamicPlugins, plugins serialized
// with an engine): TensorRT dlopens the library, calls setLoggerFinder and getCreators,
// and registers what getCreators returns, tied to the library handle.
//
// Nothing in this library touches a registry itself: no global constructor registers
// anything, and getCreators only hands out the creators. A plain dlopen of this library
// (ctypes.CDLL, `bimaco-deploy doctor`) therefore registers nothing, and a loadLibrary
// into any registry never removes or duplicates creators registered by someone else.
// Plain-dlopen loaders use libbimaco_trt_plugin_static.so (registration_static.cpp).
#include <NvInferRuntime.h>

#include "creators.h"
#include "logging.h"

extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  return bimaco::trt::plugin_creators(&nbCreators);
}

extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  bimaco::trt::set_logger_finder(finder);
}
