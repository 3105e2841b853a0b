// Static registration for libbimaco_trt_plugin_static.so: the library for loaders that
// only dlopen it and then expect the creators in the global registry (Python
// ctypes.CDLL, polygraphy --plugins, trtexec --staticPlugins, nvidia-modelopt, linking
// it into an application).
//
// A global constructor registers the creators with getPluginRegistry() at load, and the
// matching destructor takes back, at unload, exactly the registrations it made (the
// bookkeeping is core::StaticRegistrations, host-tested): creators left registered after
// a dlclose would point into unmapped code. A creator of the same name, version and
// namespace that is already registered is left alone and logged.
//
// This library exports no getCreators: IPluginRegistry::loadLibrary is not its loader
// (use libbimaco_trt_plugin.so there), and without that entry point TensorRT refuses to
// load it instead of registering its creators a second time.
#include <string>

#include <NvInferRuntime.h>

#include "bimaco/contract.h"
#include "creators.h"
#include "logging.h"
#include "registration.h"

namespace bimaco {
namespace trt {
namespace {

class TrtRegistry final : public core::CreatorRegistry {
 public:
  explicit TrtRegistry(nvinfer1::IPluginRegistry& r) : mRegistry(r) {}
  bool add(void* creator, const char* ns) override {
    return mRegistry.registerCreator(*static_cast<nvinfer1::IPluginCreatorInterface*>(creator), ns);
  }
  bool remove(const void* creator) override {
    return mRegistry.deregisterCreator(*static_cast<nvinfer1::IPluginCreatorInterface const*>(creator));
  }

 private:
  nvinfer1::IPluginRegistry& mRegistry;
};

core::StaticRegistrations g_registrations;

struct StaticRegistrar {
  StaticRegistrar() noexcept {
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr) {
      log_error("libbimaco_trt_plugin_static: no global plugin registry; no creator registered");
      return;
    }
    int32_t n = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = plugin_creators(&n);
    void* list[core::StaticRegistrations::kMax] = {};
    for (int32_t i = 0; i < n && i < core::StaticRegistrations::kMax; ++i) list[i] = creators[i];
    TrtRegistry r(*registry);
    int refused[core::StaticRegistrations::kMax] = {}, nrefused = 0;
    g_registrations.register_all(r, list, n, kPluginNamespace, refused, &nrefused);
    for (int i = 0; i < nrefused; ++i) {
      auto const* creator = static_cast<nvinfer1::IPluginCreatorV3One const*>(creators[refused[i]]);
      log_warning(std::string("libbimaco_trt_plugin_static: ") + kPluginNamespace + "::" + creator->getPluginName() +
                  " is already registered (by another loader or another copy of the library); left as it is");
    }
  }
  ~StaticRegistrar() {
    if (g_registrations.registered() == 0) return;
    if (nvinfer1::IPluginRegistry* registry = getPluginRegistry()) {
      TrtRegistry r(*registry);
      g_registrations.deregister_all(r);
    }
  }
};

StaticRegistrar g_static_registrar;

}  // namespace
}  // namespace trt
}  // namespace bimaco
