// The public CUDA API of the op contract (bimaco/binary_ops_cuda.h): shape checks,
// workspace layout and the pack -> (LRMB down) -> GEMM launch sequence. Kernels live in
// pack.cu, side.cu and gemm.cu.

#include <climits>
#include <cstdint>

#include "bimaco/binary_ops_cuda.h"
#include "kernels.cuh"

namespace bimaco {
namespace cuda {
namespace detail {
namespace {

size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Bytes of each region, in layout order (see Workspace).
struct RegionSizes {
  size_t flag, xbits, xzero, scale, xpop, zpix, lrt;
};

RegionSizes region_sizes(const Geometry& g) {
  const size_t pixels = static_cast<size_t>(g.padded_pixels);
  const size_t words = pixels * static_cast<size_t>(g.wpad);
  const size_t input_pixels = static_cast<size_t>(g.n) * g.h * g.w;
  return {sizeof(int32_t), words * sizeof(uint32_t), words * sizeof(uint32_t), pixels * sizeof(float),
          pixels * sizeof(int32_t), pixels * sizeof(uint8_t),
          input_pixels * static_cast<size_t>(g.lr_rank) * sizeof(float)};
}

}  // namespace

bool make_geometry(const ConvShape& s, Geometry* g) {
  if (s.n < 0 || s.c <= 0 || s.h <= 0 || s.w <= 0 || s.o <= 0 || s.kh <= 0 || s.kw <= 0) return false;
  if (s.stride_h <= 0 || s.stride_w <= 0) return false;
  if (s.pad_top < 0 || s.pad_left < 0 || s.pad_bottom < 0 || s.pad_right < 0) return false;
  const int64_t hp = static_cast<int64_t>(s.h) + s.pad_top + s.pad_bottom;
  const int64_t wp = static_cast<int64_t>(s.w) + s.pad_left + s.pad_right;
  if (hp > INT_MAX || wp > INT_MAX || hp < s.kh || wp < s.kw) return false;
  Geometry r;
  r.n = s.n;
  r.c = s.c;
  r.h = s.h;
  r.w = s.w;
  r.o = s.o;
  r.kh = s.kh;
  r.kw = s.kw;
  r.sh = s.stride_h;
  r.sw = s.stride_w;
  r.pt = s.pad_top;
  r.pl = s.pad_left;
  r.hp = static_cast<int>(hp);
  r.wp = static_cast<int>(wp);
  r.ho = static_cast<int>((hp - s.kh) / s.stride_h + 1);
  r.wo = static_cast<int>((wp - s.kw) / s.stride_w + 1);
  r.words = num_words(s.c);
  r.wpad = (r.words + kWordAlign - 1) / kWordAlign * kWordAlign;
  r.padded_pixels = static_cast<int64_t>(s.n) * hp * wp;
  r.m = static_cast<int64_t>(s.n) * r.ho * r.wo;
  *g = r;
  return true;
}

bool make_linear_geometry(const LinearShape& s, Geometry* g) {
  if (s.rows < 0 || s.rows > INT_MAX) return false;
  ConvShape c;
  c.n = static_cast<int>(s.rows);
  c.c = s.k;
  c.h = 1;
  c.w = 1;
  c.o = s.o;
  if (!make_geometry(c, g)) return false;
  g->linear_op = true;
  return true;
}

size_t workspace_bytes(const Geometry& g) {
  const RegionSizes r = region_sizes(g);
  // One kRegionAlign of slack lets carve_workspace realign a base of any alignment.
  return kRegionAlign + align_up(r.flag, kRegionAlign) + align_up(r.xbits, kRegionAlign) +
         align_up(r.xzero, kRegionAlign) + align_up(r.scale, kRegionAlign) + align_up(r.xpop, kRegionAlign) +
         align_up(r.zpix, kRegionAlign) + align_up(r.lrt, kRegionAlign);
}

Workspace carve_workspace(const Geometry& g, void* base) {
  const RegionSizes r = region_sizes(g);
  uintptr_t p = align_up(reinterpret_cast<uintptr_t>(base), kRegionAlign);
  Workspace ws;
  ws.flag = reinterpret_cast<int32_t*>(p);
  p += align_up(r.flag, kRegionAlign);
  ws.xbits = reinterpret_cast<uint32_t*>(p);
  p += align_up(r.xbits, kRegionAlign);
  ws.xzero = reinterpret_cast<uint32_t*>(p);
  p += align_up(r.xzero, kRegionAlign);
  ws.scale = reinterpret_cast<float*>(p);
  p += align_up(r.scale, kRegionAlign);
  ws.xpop = reinterpret_cast<int32_t*>(p);
  p += align_up(r.xpop, kRegionAlign);
  ws.zpix = reinterpret_cast<uint8_t*>(p);
  p += align_up(r.zpix, kRegionAlign);
  ws.lrt = g.lr_rank > 0 ? reinterpret_cast<float*>(p) : nullptr;
  return ws;
}

// A side-branch set the kernels can run on this geometry: complete tables, a rank in
// range, and for SMB/LRMB an output on the input's own pixel grid.
bool side_valid(const Geometry& g, const SideBranches& s) {
  if (s.rank < 0 || s.rank > kMaxLrmbRank) return false;
  if ((s.rank > 0) != (s.lr_down != nullptr) || (s.rank > 0) != (s.lr_up != nullptr)) return false;
  const bool smb = s.smb_rowptr != nullptr;
  if (smb != (s.smb_col != nullptr) || smb != (s.smb_val != nullptr)) return false;
  if ((smb || s.rank > 0) && (g.ho != g.h || g.wo != g.w || g.sh != 1 || g.sw != 1)) return false;
  return true;
}

cudaError_t run(const Geometry& g_in, DType dtype, const void* x, const int32_t* wbits, const int32_t* wzero,
                const float* alpha, const float* bias, void* y, void* workspace, Path path,
                cudaStream_t stream, const SideBranches* side) {
  if (dtype != DType::kFloat32 && dtype != DType::kFloat16) return cudaErrorInvalidValue;
  if (g_in.m == 0) return cudaSuccess;  // empty batch: nothing to read or write
  if (x == nullptr || wbits == nullptr || alpha == nullptr || bias == nullptr || y == nullptr ||
      workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  const bool fused = side != nullptr && side->any();
  if (fused && !side_valid(g_in, *side)) return cudaErrorInvalidValue;
  Geometry g = g_in;
  g.lr_rank = fused ? side->rank : 0;  // the layout workspace_bytes(g) was sized for
  const Workspace ws = carve_workspace(g, workspace);
  // The flag is stream-ordered state: reset it on the stream (graph-capturable).
  cudaError_t err = cudaMemsetAsync(ws.flag, 0, sizeof(int32_t), stream);
  if (err != cudaSuccess) return err;
  err = launch_pack(g, dtype, x, ws, stream);
  if (err != cudaSuccess) return err;
  SideArgs sa;
  if (fused) {
    if (side->rank > 0) {
      err = launch_lrmb_down(g, dtype, x, side->lr_down, ws, stream);
      if (err != cudaSuccess) return err;
    }
    sa.any = 1;
    sa.linear_order = g.linear_op ? 1 : 0;
    sa.x = x;
    sa.rprelu = side->rprelu;
    sa.smb_rowptr = side->smb_rowptr;
    sa.smb_col = side->smb_col;
    sa.smb_val = side->smb_val;
    sa.rank = side->rank;
    sa.lr_up = side->lr_up;
    sa.lrt = ws.lrt;
  }
  return launch_gemm(g, dtype, wbits, wzero, alpha, bias, y, ws, path, stream, sa);
}

}  // namespace detail

size_t conv2d_workspace_bytes(const ConvShape& s, int lrmb_rank) {
  detail::Geometry g;
  if (lrmb_rank < 0 || lrmb_rank > kMaxLrmbRank || !detail::make_geometry(s, &g)) return 0;
  g.lr_rank = lrmb_rank;
  return detail::workspace_bytes(g);
}

size_t linear_workspace_bytes(const LinearShape& s, int lrmb_rank) {
  detail::Geometry g;
  if (lrmb_rank < 0 || lrmb_rank > kMaxLrmbRank || !detail::make_linear_geometry(s, &g)) return 0;
  g.lr_rank = lrmb_rank;
  return detail::workspace_bytes(g);
}

cudaError_t binary_conv2d(const ConvShape& s, DType dtype, const void* x, const int32_t* wbits,
                          const int32_t* wzero, const float* alpha, const float* bias, void* y,
                          void* workspace, cudaStream_t stream, const SideBranches* side) {
  detail::Geometry g;
  if (!detail::make_geometry(s, &g)) return cudaErrorInvalidValue;
  return detail::run(g, dtype, x, wbits, wzero, alpha, bias, y, workspace, detail::Path::kAuto, stream, side);
}

cudaError_t binary_linear(const LinearShape& s, DType dtype, const void* x, const int32_t* wbits,
                          const int32_t* wzero, const float* alpha, const float* bias, void* y,
                          void* workspace, cudaStream_t stream, const SideBranches* side) {
  detail::Geometry g;
  if (!detail::make_linear_geometry(s, &g)) return cudaErrorInvalidValue;
  return detail::run(g, dtype, x, wbits, wzero, alpha, bias, y, workspace, detail::Path::kAuto, stream, side);
}

}  // namespace cuda
}  // namespace bimaco
