// CPU kernels of the op contract (bimaco_deploy/plugins/contract.py): sign-packed
// XNOR-popcount BinaryConv2d / BinaryLinear. Plain C++17, no framework dependency:
// the torch binding (plugins_cpp/torch/ops.cpp) and standalone tools call this API.
//
// Data path of one call:
//   1. one pass over X packs activation signs along channels into int32 words per
//      pixel (channel-last, padded borders included), the exact-zero mask, and the
//      per-pixel scale s = mean|x| (0 at padded pixels);
//   2. an implicit GEMM over the packed words: for every output pixel and output
//      channel, sum over taps of s[tap pixel] * (C - 2*popcount(x ^ w)), or the masked
//      form popc(valid) - 2*popc((x ^ w) & valid) when zeros exist;
//   3. y = bias + alpha * acc.
// The instruction set is picked at run time (AVX-512 VPOPCNTDQ, AVX2, x86 POPCNT,
// NEON, portable scalar). Environment: BIMACO_CPU_ISA forces an ISA ("avx2", ...);
// BIMACO_NUM_THREADS sets default_parallel_for's workers (the torch binding follows
// torch.set_num_threads instead); BIMACO_CPU_WBLOCK (bytes, default 8192) tunes how many
// output channels' weights one work item keeps hot in L1.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "bimaco/contract.h"

namespace bimaco {
namespace cpu {

enum class Isa : int { kScalar = 0, kPopcnt = 1, kAvx2 = 2, kAvx512 = 3, kNeon = 4 };

const char* isa_name(Isa isa);
// Parses "scalar", "popcnt", "avx2", "avx512", "neon"; returns false if unknown.
bool parse_isa(const std::string& name, Isa* out);
// Instruction sets this build contains AND this CPU can run, slowest first.
std::vector<Isa> available_isas();
// The ISA calls use now: the forced one (set_isa / BIMACO_CPU_ISA) or the best available.
Isa active_isa();
// Force an ISA for later calls (tests, benchmarks). Returns false if it is not available.
bool set_isa(Isa isa);
// Back to automatic choice.
void reset_isa();

// Runs fn(begin, end) over [0, n) split into chunks, possibly on several threads.
// The torch binding passes at::parallel_for so torch.set_num_threads is respected.
using RangeFn = std::function<void(int64_t, int64_t)>;
using ParallelFor = std::function<void(int64_t n, const RangeFn& fn)>;
// Default: std::thread over BIMACO_NUM_THREADS (or hardware_concurrency) workers.
ParallelFor default_parallel_for();

// The full-precision side branches of a BiMaCoSR binary layer, applied to each output
// tile right after the binary GEMM, while the tile is still in cache: the packed torch
// backend's whole layer in one pass instead of one pass over memory per branch. The
// order of additions is the reference's (bimaco_deploy/models/binary_layers.py):
//   conv:   y = ((RPReLU(binconv) + SMB) + LRMB)
//   linear: y = ((binlin + LRMB) + SMB)
// Null members are skipped. SMB and LRMB read the layer input at the output pixel, so
// they need an output the size of the input (stride 1, "same" padding; checked).
struct SideBranches {
  // RPReLU, conv only: v = y + b0; v = v > 0 ? v : slope * v; y = v + b1. [O] each.
  const float* rp_b0 = nullptr;
  const float* rp_slope = nullptr;
  const float* rp_b1 = nullptr;
  // SMB as CSR over output channels: entries rowptr[o] .. rowptr[o+1] - 1 of col (input
  // channel, int16: channel counts stay far below 32768, and nnz-sized arrays dominate
  // the table) and val: out[o] = sum val * x[col]. rowptr [O + 1], nondecreasing.
  const int32_t* smb_rowptr = nullptr;
  const int16_t* smb_col = nullptr;
  const float* smb_val = nullptr;
  // LRMB as its two factors: y += up (down x), rank values per pixel in between. The
  // down projection runs inside the sign-packing pass, while the input row is in cache.
  //   lr_down [rank][C], lr_up [O][rank]
  int rank = 0;
  const float* lr_down = nullptr;
  const float* lr_up = nullptr;

  bool empty() const { return !rp_b0 && !smb_rowptr && !lr_down; }
  bool reads_input() const { return smb_rowptr || lr_down; }
};

// Y = BinaryConv2d(X, Wbits, alpha, bias). x: float32 NCHW contiguous; wbits (and the
// optional wzero mask, nullptr when absent) int32 [O][KH][KW][words]; alpha, bias
// float32 [O]; y: float32 N x O x out_h x out_w, fully written. `side` (optional) adds
// the layer's side branches in the GEMM epilogue.
void binary_conv2d(const ConvShape& s, const float* x, const int32_t* wbits, const int32_t* wzero,
                   const float* alpha, const float* bias, float* y, const ParallelFor& pfor,
                   const SideBranches* side = nullptr);

// Y = BinaryLinear(X, Wbits, alpha, bias): x rows x k row-major, y rows x o.
void binary_linear(const LinearShape& s, const float* x, const int32_t* wbits, const int32_t* wzero,
                   const float* alpha, const float* bias, float* y, const ParallelFor& pfor,
                   const SideBranches* side = nullptr);

}  // namespace cpu
}  // namespace bimaco
