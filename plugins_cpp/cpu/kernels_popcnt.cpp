// x86 scalar kernel with the hardware POPCNT instruction (any x86-64 since ~2008).
// On AMD Zen3 this runs 4 popcounts per cycle, so it competes with the AVX2 nibble-
// lookup kernel; benchmarks/bench_layers.py measures both.
#if defined(__x86_64__) || defined(_M_X64)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("popcnt")
#endif
#include "kernel_common.h"
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("popcnt"))), apply_to = function)
#endif
#include "kernels_scalar_impl.h"

namespace bimaco {
namespace cpu {
namespace detail {
void gemm_popcnt(const Gemm& g, const Tile& t) { scalar_impl::gemm(g, t); }
}  // namespace detail
}  // namespace cpu
}  // namespace bimaco
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
