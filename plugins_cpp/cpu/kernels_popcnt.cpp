// x86 scalar kernel with the hardware POPCNT instruction (any x86-64 since ~2008).
// On AMD Zen3 this runs 4 popcounts per cycle, so it competes with the AVX2 nibble-
// lookup kernel; benchmarks/bench_layers.py measures both.
#if defined(__x86_64__) || defined(_M_X64)
// Shared headers first, compiled for baseline x86-64 (see BIMACO_TARGET_BEGIN).
#include <cstdint>
#include <cstring>

#include "kernel_common.h"

BIMACO_TARGET_BEGIN("popcnt")
#include "kernels_scalar_impl.h"

namespace bimaco {
namespace cpu {
namespace detail {
void gemm_popcnt(const Gemm& g, const Tile& t) { scalar_impl::gemm(g, t); }
}  // namespace detail
}  // namespace cpu
}  // namespace bimaco
BIMACO_TARGET_END
#endif
