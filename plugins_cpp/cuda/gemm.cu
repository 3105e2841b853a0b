// Stage 2 of both ops: the popcount implicit GEMM over packed sign words.
//
// GEMM rows are output pixels (n, oy, ox), columns output channels, and the
// reduction runs tap by tap: the scale s varies per input pixel, so each tap's
// integer dot product is finished, weighted by that tap's s and added to a float
// accumulator before the next tap starts (a 3x3 conv is nine popcount GEMMs).
//
// One block computes a 64 x 64 output tile with 4 warps (2 x 2 warps of 32 x 32),
// walking (tap, 16-word chunk) stages; X words are padded per pixel to a multiple of 4
// (one k128 step), so channel counts that are not multiples of 128 need no tail path.
// Two bodies share that tiling:
//  * mma_tile: 1-bit tensor cores. sm_80+ uses mma m16n8k128 .and.popc (the form
//    every sm_80+ part has; .xor.popc is deprecated on sm_90) and rebuilds the XOR
//    count as popc(a^b) = popc(a) + popc(b) - 2 popc(a&b) from per-row popcounts of
//    X (written by the pack kernel) and per-column popcounts of W (summed while the
//    weight tile is staged). sm_75 uses mma m8n8k128 .xor.popc directly.
//  * popc_tile: plain __popc with zero masks, dot = popc(valid) - 2 popc((x^w) & valid),
//    valid = ~xz & ~wz. Runs for the tiles that read a pixel whose exact zeros matter
//    (zpix from the pack kernel), for every tile when the weights carry a zero mask, on
//    archs without 1-bit MMA, and on request.
// Both add s * dot with the same fused multiply-add in the same tap order, so they
// produce bit-identical outputs; selftest.cu relies on that. Both end in store_output,
// which applies a fused layer's side branches (side_epilogue) to each output.

#include <cuda_fp16.h>

#include "device_utils.cuh"
#include "kernels.cuh"

namespace bimaco {
namespace cuda {
namespace detail {
namespace {

constexpr int kBM = 64;          // output pixels per block
constexpr int kBN = 64;          // output channels per block
constexpr int kThreads = 128;    // 4 warps
constexpr int kChunk = 16;       // packed words staged per pass (512 channels)
constexpr int kStride = kChunk + 4;  // smem row stride in words: conflict-free fragment loads

struct GemmArgs {
  Geometry g;
  const uint32_t* wbits;  // [O][KH][KW][words]
  const uint32_t* wzero;  // same layout or nullptr
  const float* alpha;
  const float* bias;
  void* y;
  Workspace ws;
  int force_popcount;
  SideArgs side;
};

// alignas(16): the staging stores write a[][] as uint4. Without it the struct is only
// 8-byte aligned (its widest member is long long) and those stores are correct only
// while nothing else in the kernel's static shared memory shifts its offset.
struct alignas(16) Smem {
  uint32_t a[kBM][kStride];  // X words of the tile's pixels for the current tap and chunk
  uint32_t b[kBN][kStride];  // W words of the tile's channels for the current tap and chunk
  float s[kBM];              // scale of each row's input pixel for the current tap
  int xpop[kBM];             // popcount of that pixel's sign bits
  int wpop[kBN];             // popcount of each channel's sign bits for the current tap
  long long rowpix[kBM];     // padded-grid pixel of tap (0, 0) for each row, -1 past M
};
static_assert(alignof(Smem) >= 16 && kStride % 4 == 0, "uint4 stores into Smem::a need 16-byte rows and base");

// Output position of GEMM row m: image n and offset inside the output plane.
__device__ __forceinline__ void row_position(const Geometry& g, int64_t m, int64_t* n, int64_t* r) {
  const int64_t plane = static_cast<int64_t>(g.ho) * g.wo;
  *n = m / plane;
  *r = m - *n * plane;
}

__device__ __forceinline__ int64_t row_pixel(const Geometry& g, int64_t m) {
  int64_t n, r;
  row_position(g, m, &n, &r);
  const int oy = static_cast<int>(r / g.wo), ox = static_cast<int>(r % g.wo);
  return n * g.hp * g.wp + static_cast<int64_t>(oy) * g.sh * g.wp + static_cast<int64_t>(ox) * g.sw;
}

// SMB of output channel oc at output pixel r of image n: its CSR row over X at the same
// pixel (the fused conv has stride 1 and the input's size; a linear row is a 1x1 image).
template <typename T>
__device__ __forceinline__ float smb_term(const GemmArgs& a, int64_t n, int64_t r, int64_t plane, int oc) {
  const SideArgs& s = a.side;
  const T* x = static_cast<const T*>(s.x);
  const T* val = static_cast<const T*>(s.smb_val);
  float acc = 0.f;
  const int e1 = __ldg(s.smb_rowptr + oc + 1);
  for (int e = __ldg(s.smb_rowptr + oc); e < e1; ++e) {
    const int64_t col = __ldg(s.smb_col + e);
    acc = __fmaf_rn(to_float(val[e]), to_float(x[(n * a.g.c + col) * plane + r]), acc);
  }
  return acc;
}

// LRMB: up[oc] . t[n, :, r], with t = down X from the workspace.
template <typename T>
__device__ __forceinline__ float lrmb_term(const GemmArgs& a, int64_t n, int64_t r, int64_t plane, int oc) {
  const SideArgs& s = a.side;
  const T* up = static_cast<const T*>(s.lr_up) + static_cast<int64_t>(oc) * s.rank;
  float acc = 0.f;
  for (int q = 0; q < s.rank; ++q) acc = __fmaf_rn(to_float(up[q]), s.lrt[(n * s.rank + q) * plane + r], acc);
  return acc;
}

// The fused side branches on one core output v, in the reference's order of additions
// (contract.h): conv ((RPReLU(v) + SMB) + LRMB), linear ((v + LRMB) + SMB). Each branch
// is summed on its own and then added, as the CPU kernels do.
template <typename T>
__device__ __forceinline__ float side_epilogue(const GemmArgs& a, int64_t n, int64_t r, int64_t plane, int oc, float v) {
  const SideArgs& s = a.side;
  if (s.rprelu != nullptr) {
    const T* rp = static_cast<const T*>(s.rprelu);
    const float u = v + to_float(rp[oc]);
    v = (u > 0.f ? u : to_float(rp[a.g.o + oc]) * u) + to_float(rp[2 * a.g.o + oc]);
  }
  if (s.linear_order) {
    if (s.rank > 0) v += lrmb_term<T>(a, n, r, plane, oc);
    if (s.smb_rowptr != nullptr) v += smb_term<T>(a, n, r, plane, oc);
  } else {
    if (s.smb_rowptr != nullptr) v += smb_term<T>(a, n, r, plane, oc);
    if (s.rank > 0) v += lrmb_term<T>(a, n, r, plane, oc);
  }
  return v;
}

template <typename T>
__device__ __forceinline__ void store_output(const GemmArgs& a, int64_t m, int oc, float acc) {
  int64_t n, r;
  row_position(a.g, m, &n, &r);
  const int64_t plane = static_cast<int64_t>(a.g.ho) * a.g.wo;
  float v = __fmaf_rn(a.alpha[oc], acc, a.bias[oc]);
  if (a.side.any) v = side_epilogue<T>(a, n, r, plane, oc, v);
  static_cast<T*>(a.y)[(n * a.g.o + oc) * plane + r] = from_float<T>(v);
}

// ----------------------------------------------------------------- tensor-core path

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define BIMACO_MMA_AND 1
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
#define BIMACO_MMA_XOR 1
#endif

#if defined(BIMACO_MMA_AND) || defined(BIMACO_MMA_XOR)
#define BIMACO_HAS_MMA 1

// One thread's share of one stage's tiles, loaded from global memory ahead of use.
struct StageRegs {
  uint4 a[2];     // X words: tile rows idx >> 2, words (idx & 3) * 4 .. +3, idx = tid + 128 i
  uint32_t b[8];  // W words: channel tid >> 1, words (tid & 1) * 8 .. +7 of the chunk
  float s;        // scale of tile row tid (tid < 64, first chunk of a tap only)
  int xpop;       // popcount of that row's sign bits
};

__device__ __forceinline__ void load_stage(const GemmArgs& a, const Smem& sm, int n0, int stage, int chunks,
                                           StageRegs& out) {
  const Geometry& g = a.g;
  const int tid = threadIdx.x;
  const int tap = stage / chunks;
  const int kc0 = (stage % chunks) * kChunk;
  const int ky = tap / g.kw, kx = tap % g.kw;
  const int64_t tap_off = static_cast<int64_t>(ky) * g.wp + kx;
  // A: 64 rows x 16 words = 256 uint4, two per thread. wpad is a multiple of 4, so a
  // uint4 lies wholly inside or wholly past the row.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int idx = tid + i * kThreads;
    const int word = kc0 + (idx & 3) * 4;
    const long long rp = sm.rowpix[idx >> 2];
    out.a[i] = make_uint4(0u, 0u, 0u, 0u);
    if (rp >= 0 && word < g.wpad) {
      out.a[i] = __ldg(reinterpret_cast<const uint4*>(a.ws.xbits + (rp + tap_off) * g.wpad + word));
    }
  }
  // B: the weight row is not padded, so loads are scalar and bounded; the tail bits of
  // the last word are cleared (the contract lets them be anything).
  const int oc = n0 + (tid >> 1);
  const uint32_t last_mask = tail_mask(g.c);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int word = kc0 + (tid & 1) * 8 + i;
    uint32_t v = 0u;
    if (oc < g.o && word < g.words) {
      v = __ldg(a.wbits + (static_cast<int64_t>(oc) * g.kh * g.kw + tap) * g.words + word);
      if (word == g.words - 1) v &= last_mask;
    }
    out.b[i] = v;
  }
  out.s = 0.f;
  out.xpop = 0;
  if (kc0 == 0 && tid < kBM) {
    const long long rp = sm.rowpix[tid];
    out.s = rp >= 0 ? a.ws.scale[rp + tap_off] : 0.f;
    out.xpop = rp >= 0 ? a.ws.xpop[rp + tap_off] : 0;
  }
}

template <typename T>
__device__ void mma_tile(const GemmArgs& a, Smem& sm, int64_t m0, int n0) {
  const Geometry& g = a.g;
  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int grp = lane >> 2, tig = lane & 3;  // MMA groupID / threadID_in_group
  const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;
  const int taps = g.kh * g.kw;

  // acc[r][j][e]: row wm + 8r + grp, column wn + 8j + 2*tig + e.
  int iacc[4][4][2];
  float facc[4][4][2];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        iacc[r][j][e] = 0;
        facc[r][j][e] = 0.f;
      }

  // One stage = one (tap, chunk of kChunk words). The next stage's global loads are
  // issued into registers before this stage's MMAs, so their latency overlaps compute.
  const int chunks = (g.wpad + kChunk - 1) / kChunk;
  const int stages = taps * chunks;
  const int b_col = tid >> 1, b_half = tid & 1;  // B staging: two threads per channel
  StageRegs next;
  load_stage(a, sm, n0, 0, chunks, next);

  for (int stage = 0; stage < stages; ++stage) {
    const int chunk = stage % chunks;
    const int kc0 = chunk * kChunk;
    __syncthreads();  // every warp is done with the previous stage's smem (MMA + epilogue)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int idx = tid + i * kThreads;
      *reinterpret_cast<uint4*>(&sm.a[idx >> 2][(idx & 3) * 4]) = next.a[i];
    }
    int pop = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      sm.b[b_col][b_half * 8 + i] = next.b[i];
      pop += __popc(next.b[i]);
    }
    pop += __shfl_xor_sync(0xffffffffu, pop, 1);
    if (b_half == 0) sm.wpop[b_col] = (chunk == 0 ? 0 : sm.wpop[b_col]) + pop;
    if (chunk == 0 && tid < kBM) {
      sm.s[tid] = next.s;
      sm.xpop[tid] = next.xpop;
    }
    __syncthreads();
    if (stage + 1 < stages) load_stage(a, sm, n0, stage + 1, chunks, next);

    const int ksteps = min(kChunk, g.wpad - kc0) / 4;
    for (int ks = 0; ks < ksteps; ++ks) {
      const int kw0 = ks * 4 + tig;
      uint32_t af[4], bf[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) af[r] = sm.a[wm + r * 8 + grp][kw0];
#pragma unroll
      for (int j = 0; j < 4; ++j) bf[j] = sm.b[wn + j * 8 + grp][kw0];
#if defined(BIMACO_MMA_AND)
      // m16n8k128: a0 = rows 0-7 (groupID), a1 = rows 8-15; d0,d1 row groupID,
      // d2,d3 row groupID + 8, columns 2*tig and 2*tig + 1.
#pragma unroll
      for (int rr = 0; rr < 2; ++rr)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          asm volatile(
              "mma.sync.aligned.m16n8k128.row.col.s32.b1.b1.s32.and.popc "
              "{%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
              : "+r"(iacc[2 * rr][j][0]), "+r"(iacc[2 * rr][j][1]), "+r"(iacc[2 * rr + 1][j][0]),
                "+r"(iacc[2 * rr + 1][j][1])
              : "r"(af[2 * rr]), "r"(af[2 * rr + 1]), "r"(bf[j]));
        }
#else
      // m8n8k128: a0 = row groupID, b0 = column groupID; d0,d1 columns 2*tig + {0,1}.
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          asm volatile(
              "mma.sync.aligned.m8n8k128.row.col.s32.b1.b1.s32.xor.popc "
              "{%0,%1}, {%2}, {%3}, {%0,%1};\n"
              : "+r"(iacc[r][j][0]), "+r"(iacc[r][j][1])
              : "r"(af[r]), "r"(bf[j]));
        }
#endif
    }
    if (chunk != chunks - 1) continue;

    // Tap epilogue: finish the integer dot products and weight them by s.
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = wm + r * 8 + grp;
      const float s = sm.s[row];
#if defined(BIMACO_MMA_AND)
      const int xp = sm.xpop[row];
#endif
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
#if defined(BIMACO_MMA_AND)
          const int col = wn + j * 8 + 2 * tig + e;
          const int xor_count = xp + sm.wpop[col] - 2 * iacc[r][j][e];
#else
          const int xor_count = iacc[r][j][e];
#endif
          const int dot = g.c - 2 * xor_count;
          facc[r][j][e] = __fmaf_rn(s, static_cast<float>(dot), facc[r][j][e]);
          iacc[r][j][e] = 0;
        }
    }
  }

#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t m = m0 + wm + r * 8 + grp;
    if (m >= g.m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int oc = n0 + wn + j * 8 + 2 * tig + e;
        if (oc < g.o) store_output<T>(a, m, oc, facc[r][j][e]);
      }
  }
}
#endif  // BIMACO_MMA_AND || BIMACO_MMA_XOR

// ----------------------------------------------------------------- plain popcount path

// Thread t owns tile row t % 64 and the channels n0 + t / 64 + 2i, i < 32, taken in
// groups of kGroup: the group's accumulators live across all taps, and the next group
// reads the same X words again (from L1). Holding all 32 at once made this rarely used
// path set the register count, and so the occupancy, of the whole kernel.
template <typename T>
__device__ void popc_tile(const GemmArgs& a, const Smem& sm, int64_t m0, int n0) {
  const Geometry& g = a.g;
  const int tid = threadIdx.x;
  const int row = tid % kBM;
  const int c_first = n0 + tid / kBM;
  const long long rp0 = sm.rowpix[row];
  if (rp0 < 0) return;
  const uint32_t last_mask = tail_mask(g.c);
  const int taps = g.kh * g.kw;
  constexpr int kPerThread = kBN * kBM / kThreads;  // 32
  constexpr int kColStep = kThreads / kBM;           // 2
  constexpr int kGroup = 8;
  const int64_t m = m0 + row;

#pragma unroll 1
  for (int i0 = 0; i0 < kPerThread; i0 += kGroup) {
    float acc[kGroup];
#pragma unroll
    for (int i = 0; i < kGroup; ++i) acc[i] = 0.f;
    for (int ky = 0; ky < g.kh; ++ky) {
      for (int kx = 0; kx < g.kw; ++kx) {
        const int tap = ky * g.kw + kx;
        const int64_t pix = rp0 + static_cast<int64_t>(ky) * g.wp + kx;
        const float s = a.ws.scale[pix];
        if (s == 0.f) continue;  // padded (or all-zero) pixel: s * dot = 0, as the MMA path gets
        const uint32_t* xb = a.ws.xbits + pix * g.wpad;
        const uint32_t* xz = a.ws.xzero + pix * g.wpad;
#pragma unroll
        for (int i = 0; i < kGroup; ++i) {
          const int oc = c_first + (i0 + i) * kColStep;
          if (oc < g.o) {
            const int64_t wrow = (static_cast<int64_t>(oc) * taps + tap) * g.words;
            int dot = 0;
            for (int wd = 0; wd < g.words; ++wd) {
              const uint32_t lim = wd == g.words - 1 ? last_mask : 0xffffffffu;
              const uint32_t wz = a.wzero != nullptr ? __ldg(a.wzero + wrow + wd) : 0u;
              const uint32_t valid = ~xz[wd] & ~wz & lim;
              const uint32_t diff = (xb[wd] ^ __ldg(a.wbits + wrow + wd)) & valid;
              dot += __popc(valid) - 2 * __popc(diff);
            }
            acc[i] = __fmaf_rn(s, static_cast<float>(dot), acc[i]);
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kGroup; ++i) {
      const int oc = c_first + (i0 + i) * kColStep;
      if (oc < g.o) store_output<T>(a, m, oc, acc[i]);
    }
  }
}

// At most 128 registers per thread, so four blocks (16 warps) fit an SM's 64K registers
// (the unbounded build used 152-168: three blocks, 12 warps, a quarter of Orin's 48).
// ptxas meets the bound without spills because the popcount path keeps only kGroup
// accumulators live; tests/plugins/test_cuda_compile.py fails on any spill.
constexpr int kMinBlocksPerSm = 4;

template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) gemm_kernel(GemmArgs a) {
  __shared__ Smem sm;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int n0 = blockIdx.y * kBN;
  if (threadIdx.x < kBM) {
    const int64_t m = m0 + threadIdx.x;
    sm.rowpix[threadIdx.x] = m < a.g.m ? row_pixel(a.g, m) : -1;
  }
  __syncthreads();
#if defined(BIMACO_HAS_MMA)
  // The path is chosen per tile (uniform over the block): a weight zero mask or a forced
  // run sends every tile to the masked path; an exact zero in X only the tiles that read
  // its pixel (mlp.fc2 after GELU has a few such pixels, and the rest of the layer keeps
  // the tensor cores). The grid-wide flag spares the per-tile scan when X has none.
  bool masked = a.force_popcount != 0 || a.wzero != nullptr;
  if (!masked && *a.ws.flag != 0) {
    int hit = 0;
    if (threadIdx.x < kBM) {
      const long long rp = sm.rowpix[threadIdx.x];
      if (rp >= 0) {
        for (int ky = 0; ky < a.g.kh; ++ky)
          for (int kx = 0; kx < a.g.kw; ++kx) hit |= a.ws.zpix[rp + static_cast<int64_t>(ky) * a.g.wp + kx];
      }
    }
    masked = __syncthreads_or(hit) != 0;
  }
  if (!masked) {
    mma_tile<T>(a, sm, m0, n0);
    return;
  }
#endif
  popc_tile<T>(a, sm, m0, n0);
}

}  // namespace

cudaError_t launch_gemm(const Geometry& g, DType dtype, const int32_t* wbits, const int32_t* wzero,
                        const float* alpha, const float* bias, void* y, const Workspace& ws, Path path,
                        cudaStream_t stream, const SideArgs& side) {
  if (g.m == 0) return cudaSuccess;
  const int64_t row_blocks = (g.m + kBM - 1) / kBM;
  const int64_t col_blocks = (static_cast<int64_t>(g.o) + kBN - 1) / kBN;
  if (row_blocks > 0x7fffffffLL || col_blocks > 65535) return cudaErrorInvalidValue;
  GemmArgs args;
  args.g = g;
  args.wbits = reinterpret_cast<const uint32_t*>(wbits);
  args.wzero = reinterpret_cast<const uint32_t*>(wzero);
  args.alpha = alpha;
  args.bias = bias;
  args.y = y;
  args.ws = ws;
  args.force_popcount = path == Path::kPopcount ? 1 : 0;
  args.side = side;
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(col_blocks));
  if (dtype == DType::kFloat32) {
    gemm_kernel<float><<<grid, kThreads, 0, stream>>>(args);
  } else if (dtype == DType::kFloat16) {
    gemm_kernel<__half><<<grid, kThreads, 0, stream>>>(args);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace detail
}  // namespace cuda
}  // namespace bimaco
