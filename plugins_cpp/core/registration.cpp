#include "registration.h"

namespace bimaco {
namespace core {

bool StaticRegistrations::owns(const void* creator) const {
  for (int i = 0; i < n_; ++i)
    if (mine_[i] == creator) return true;
  return false;
}

int StaticRegistrations::register_all(CreatorRegistry& registry, void* const* creators, int n,
                                      const char* plugin_namespace, int* refused, int* nrefused) {
  int added = 0, nref = 0;
  for (int i = 0; i < n; ++i) {
    // A second call (the constructor of a second copy of this object, a retry) must not
    // try again what is already ours: the registry would refuse it and we would log a
    // duplicate that is not one.
    if (owns(creators[i])) continue;
    if (n_ < kMax && registry.add(creators[i], plugin_namespace)) {
      mine_[n_++] = creators[i];
      ++added;
    } else if (refused != nullptr) {
      refused[nref++] = i;
    } else {
      ++nref;
    }
  }
  if (nrefused != nullptr) *nrefused = nref;
  return added;
}

int StaticRegistrations::deregister_all(CreatorRegistry& registry) {
  int removed = 0;
  for (int i = 0; i < n_; ++i)
    if (registry.remove(mine_[i])) ++removed;
  n_ = 0;
  return removed;
}

}  // namespace core
}  // namespace bimaco
