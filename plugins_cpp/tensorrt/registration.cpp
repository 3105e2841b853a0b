// How TensorRT finds the plugins of libbimaco_trt_plugin.so.
//
// Two ways of loading a plugin library are in common use, and we serve both:
//
//  1. Static registration: a plain dlopen of the library (Python ctypes.CDLL,
//     polygraphy --plugins, trtexec --staticPlugins, linking it into an app)
//     runs the library's global constructors, and ours registers the two
//     creators with the global registry (getPluginRegistry()).
//  2. Dynamic loading: IPluginRegistry::loadLibrary (trt.get_plugin_registry()
//     .load_library, trtexec --dynamicPlugins, an engine built with the library
//     serialized into it) dlopens the library, then calls the exported
//     setLoggerFinder and getCreators, and registers every creator returned,
//     failing the whole load "if any of the plugins are already registered".
//
// The catch: path 2 also runs the global constructors of path 1 during its
// dlopen, so a naive library registers every creator twice and loadLibrary
// fails. The mechanism here keeps exactly one registration at any time:
//
//  * Both paths hand out the SAME creator objects (function-local statics).
//  * The static registrar records which creators it registered itself.
//  * getCreators first takes those static registrations back out of the
//    global registry (deregisterCreator, matched by object identity, so it never
//    touches a creator some other library or copy registered), then returns the
//    creators for the calling registry to own. After loadLibrary the creators
//    are registered once, by TensorRT, tied to the library handle (so
//    deregisterLibrary works).
//  * A dlopen after loadLibrary (same path: constructors do not run again) or
//    a second static load changes nothing. A static load into a registry that
//    already has our creators (registerCreator returns false) is logged and
//    skipped, not an error.
//
// BIMACO_TRT_NO_STATIC_REGISTRATION=1 turns path 1 off, for applications that
// only ever use loadLibrary and want no side effect from a plain dlopen. (Not yet
// verified on hardware: that TensorRT accepts registerCreator from a constructor
// that runs inside loadLibrary's own dlopen, as REGISTER_TENSORRT_PLUGIN users rely
// on. If a TensorRT release ever deadlocks or errors there, this switch is the fix.)
//
// Not covered: two *different files* of this library in one process (e.g. an
// engine built with trtexec --staticPlugins plus --setPluginsToSerialize; the
// runtime extracts its embedded copy to a new path). Build such engines with
// --dynamicPlugins instead; the docs say so.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include <NvInferRuntime.h>

#include "bimaco/contract.h"
#include "binary_plugin.h"
#include "logging.h"

namespace bimaco {
namespace trt {
namespace {

constexpr int kNumCreators = 2;

struct Creators {
  BinaryPluginCreator conv{core::OpKind::kConv2d};
  BinaryPluginCreator linear{core::OpKind::kLinear};
  nvinfer1::IPluginCreatorInterface* list[kNumCreators] = {&conv, &linear};
  // Which creators the static registrar put into the global registry.
  std::atomic<bool> static_registered[kNumCreators] = {{false}, {false}};
};

Creators& creators() {
  static Creators c;  // constructed on first use: safe from either entry point, in any order
  return c;
}

bool static_registration_disabled() {
  const char* v = std::getenv("BIMACO_TRT_NO_STATIC_REGISTRATION");
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

struct StaticRegistrar {
  StaticRegistrar() noexcept {
    if (static_registration_disabled()) return;
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr) return;
    Creators& c = creators();
    for (int i = 0; i < kNumCreators; ++i) {
      if (registry->registerCreator(*c.list[i], kPluginNamespace)) {
        c.static_registered[i].store(true);
      } else {
        log_warning(std::string("static registration of ") + kPluginNamespace + "::" +
                    core::op_name(i == 0 ? core::OpKind::kConv2d : core::OpKind::kLinear) +
                    " skipped: a creator with that name, version and namespace is already registered");
      }
    }
  }
};

StaticRegistrar g_static_registrar;

}  // namespace
}  // namespace trt
}  // namespace bimaco

extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  using namespace bimaco::trt;
  Creators& c = creators();
  nvinfer1::IPluginRegistry* registry = nullptr;
  for (int i = 0; i < kNumCreators; ++i) {
    if (!c.static_registered[i].exchange(false)) continue;
    if (registry == nullptr) registry = getPluginRegistry();
    if (registry != nullptr && !registry->deregisterCreator(*c.list[i])) {
      log_warning("could not withdraw the static registration before loadLibrary; it may report a duplicate");
    }
  }
  nbCreators = kNumCreators;
  return c.list;
}

extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  bimaco::trt::set_logger_finder(finder);
}
