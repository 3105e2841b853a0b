// Internal pieces of the CUDA kernels: geometry, workspace layout and the two launch
// stages (sign-pack, popcount GEMM). The public API is bimaco/binary_ops_cuda.h; this
// header is shared by the .cu files here and by selftest.cu, which also drives the
// plain-popcount path explicitly.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "bimaco/binary_ops_cuda.h"
#include "bimaco/contract.h"

namespace bimaco {
namespace cuda {
namespace detail {

// Packed words per pixel are padded to a multiple of this: one k128 step of the
// 1-bit MMA covers 4 words, and the padding words are zero in X, so they add nothing.
constexpr int kWordAlign = 4;
// Every workspace region starts on this boundary (16 would do for the vector loads;
// 256 matches cudaMalloc and keeps regions in separate cache sectors).
constexpr size_t kRegionAlign = 256;

// Everything a kernel needs to know about one call, derived once on the host.
// Linear layers are run as 1x1 convolutions with n = rows and h = w = 1.
struct Geometry {
  int n = 0, c = 0, h = 0, w = 0, o = 0;
  int kh = 1, kw = 1, sh = 1, sw = 1, pt = 0, pl = 0;
  int hp = 0, wp = 0;          // zero-padded input extent (the packed grid)
  int ho = 0, wo = 0;          // output extent
  int words = 0;               // num_words(c): packed words per weight row
  int wpad = 0;                // words rounded up to kWordAlign: packed words per X pixel
  int64_t padded_pixels = 0;   // n * hp * wp
  int64_t m = 0;               // GEMM rows: n * ho * wo output pixels
  int lr_rank = 0;             // LRMB rank of a fused layer (sizes the lrt workspace region)
  bool linear_op = false;      // a BinaryLinear (its side branches add in the linear order)
};

// Fills `g` from a contract shape. Returns false when the shape is not a valid call
// (non-positive extents, negative pads, output extent < 1, sizes beyond int range).
bool make_geometry(const ConvShape& s, Geometry* g);
// The linear op as a 1x1 convolution; false when rows exceed the int range.
bool make_linear_geometry(const LinearShape& s, Geometry* g);

// Pointers into one call's workspace. Layout (each region kRegionAlign-aligned):
//   flag   int32              set to 1 by the pack kernel when X holds an exact zero
//                             that can change a result (some pixel has 0 < zeros < C)
//   xbits  int32 [pixels][wpad] sign bits of X (set = negative), padded pixels all 0
//   xzero  int32 [pixels][wpad] zero mask of X
//   scale  float [pixels]     mean |X| over channels, 0 at padded pixels
//   xpop   int32 [pixels]     popcount of xbits (the AND-form MMA needs it)
//   zpix   uint8 [pixels]     1 where that pixel has 0 < zeros < C: the GEMM tiles that
//                             read such a pixel take the masked path, the others keep MMA
//   lrt    float [n][lr_rank][h*w]  LRMB down projection of X (fused layers with an LRMB)
struct Workspace {
  int32_t* flag = nullptr;
  uint32_t* xbits = nullptr;
  uint32_t* xzero = nullptr;
  float* scale = nullptr;
  int32_t* xpop = nullptr;
  uint8_t* zpix = nullptr;
  float* lrt = nullptr;
};

// The side branches as the GEMM epilogue reads them (SideBranches of the API plus the
// layer input and the down projection in the workspace).
struct SideArgs {
  int any = 0;
  int linear_order = 0;  // 1: core + LRMB + SMB (linear); 0: RPReLU(core) + SMB + LRMB (conv)
  const void* x = nullptr;
  const void* rprelu = nullptr;
  const uint16_t* smb_rowptr = nullptr;
  const uint16_t* smb_col = nullptr;
  const void* smb_val = nullptr;
  int rank = 0;
  const void* lr_up = nullptr;
  const float* lrt = nullptr;
};

size_t workspace_bytes(const Geometry& g);
// Carves `base` (any alignment: workspace_bytes includes slack to realign it).
Workspace carve_workspace(const Geometry& g, void* base);

// Which GEMM kernel to run. kAuto: per output tile, the 1-bit tensor-core MMA where the
// device has it (sm_75: m8n8k128 xor.popc, sm_80+: m16n8k128 and.popc) unless the tile
// reads a pixel whose zeros matter or the weights carry a zero mask, then plain popcount. kPopcount: always the plain __popc kernel (selftest uses
// it to hold the MMA path to an independent implementation).
enum class Path : int { kAuto = 0, kPopcount = 1 };

// Stage 1: sign-pack X (NCHW, `dtype`) into ws. Expects ws.flag zeroed on `stream`.
// Linear geometries (1x1 pixels, channels contiguous) take a warp-per-row kernel whose
// loads are coalesced along the channels; convolutions one thread per pixel, coalesced
// along the pixels of NCHW.
cudaError_t launch_pack(const Geometry& g, DType dtype, const void* x, const Workspace& ws,
                        cudaStream_t stream);

// Stage 1b (fused layers with an LRMB): ws.lrt = down X, per pixel of the unpadded input.
cudaError_t launch_lrmb_down(const Geometry& g, DType dtype, const void* x, const void* down, const Workspace& ws,
                             cudaStream_t stream);

// Stage 2: Y = bias + alpha * sum_taps s * dot over the packed X in ws, then the side
// branches of `side` (side.any == 0: none).
cudaError_t launch_gemm(const Geometry& g, DType dtype, const int32_t* wbits, const int32_t* wzero,
                        const float* alpha, const float* bias, void* y, const Workspace& ws, Path path,
                        cudaStream_t stream, const SideArgs& side = SideArgs());

// Whole op on a prepared geometry: zero the flag, pack, (down-project,) GEMM. `workspace`
// must hold workspace_bytes(g) with g.lr_rank = the side branches' rank.
cudaError_t run(const Geometry& g, DType dtype, const void* x, const int32_t* wbits, const int32_t* wzero,
                const float* alpha, const float* bias, void* y, void* workspace, Path path,
                cudaStream_t stream, const SideBranches* side = nullptr);

}  // namespace detail
}  // namespace cuda
}  // namespace bimaco
