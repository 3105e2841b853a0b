// Bookkeeping of the static (dlopen-time) registration of the plugin creators,
// without TensorRT, so the host tests cover it.
//
// The plugin ships as two libraries built from the same objects (see
// plugins_cpp/tensorrt/registration_static.cpp and registration_dynamic.cpp):
//  * libbimaco_trt_plugin.so serves IPluginRegistry::loadLibrary: it exports
//    getCreators / setLoggerFinder and contains no code that touches a registry, so
//    TensorRT alone registers its creators, into whichever registry loads it.
//  * libbimaco_trt_plugin_static.so serves plain dlopen loaders: a constructor
//    registers the creators with the global registry and exports no getCreators.
// Each library serves exactly one loader, so neither can undo the other. What is left
// to get right is the static library's own bookkeeping, here: it registers each
// creator once, remembers which registrations are its own (a creator with the same
// name, version and namespace may already be there, from another loader), and at
// unload takes back exactly those.
#pragma once

namespace bimaco {
namespace core {

// What the static registrar needs from a plugin registry; the plugin adapts
// nvinfer1::IPluginRegistry (registerCreator / deregisterCreator) to it.
class CreatorRegistry {
 public:
  virtual ~CreatorRegistry() = default;
  // false: a creator of the same name, version and namespace is already registered.
  virtual bool add(void* creator, const char* plugin_namespace) = 0;
  // false: `creator` is not registered.
  virtual bool remove(const void* creator) = 0;
};

class StaticRegistrations {
 public:
  static constexpr int kMax = 8;
  // Registers creators[0..n) that this object has not registered yet. Returns how many
  // this call added; `refused` (when not null) receives the indices the registry
  // refused and `*nrefused` their count. Creators past kMax are refused.
  int register_all(CreatorRegistry& registry, void* const* creators, int n, const char* plugin_namespace,
                   int* refused = nullptr, int* nrefused = nullptr);
  // Takes back every registration this object made, and nothing else. Returns how many
  // the registry confirmed.
  int deregister_all(CreatorRegistry& registry);
  // How many creators this object has registered and not taken back.
  int registered() const { return n_; }
  bool owns(const void* creator) const;

 private:
  const void* mine_[kMax] = {};
  int n_ = 0;
};

}  // namespace core
}  // namespace bimaco
