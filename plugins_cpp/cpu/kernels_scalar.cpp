// Portable scalar kernels: any CPU, any compiler. Also the sign packing fallback.
#include <cmath>
#include <vector>

#include "kernel_common.h"
#include "kernels_scalar_impl.h"
#include "side_impl.h"

namespace bimaco {
namespace cpu {
namespace detail {

void gemm_scalar(const Gemm& g, const Tile& t) { scalar_impl::gemm(g, t); }

void side_generic(const Gemm& g, const Tile& t) { side_planes(g, t); }
void down_planes_generic(const float* x, int c, int64_t x_stride, int w, int rank, const float* down_t, float* t,
                        int64_t t_stride) {
  down_planes(x, c, x_stride, w, rank, down_t, t, t_stride);
}
void transpose_generic(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int rows, int cols) {
  transpose(src, src_stride, dst, dst_stride, rows, cols);
}

bool pack_row_scalar(const float* x, int c, int64_t hw, int w, int words, uint32_t* bits,
                     uint32_t* zero, float* s) {
  // Channel-outer loop so every load walks a contiguous image row.
  std::vector<uint32_t> nb(w), zb(w);
  std::vector<float> acc(w, 0.f);
  bool any_zero = false;
  for (int j = 0; j < words; ++j) {
    std::fill(nb.begin(), nb.end(), 0u);
    std::fill(zb.begin(), zb.end(), 0u);
    const int cend = (32 * j + 32) < c ? (32 * j + 32) : c;
    for (int ch = 32 * j; ch < cend; ++ch) {
      const float* xr = x + int64_t(ch) * hw;
      const uint32_t bit = 1u << (ch - 32 * j);
      for (int i = 0; i < w; ++i) {
        const float v = xr[i];
        nb[i] |= (v < 0.f) ? bit : 0u;
        zb[i] |= (v == 0.f) ? bit : 0u;
        acc[i] += std::fabs(v);
      }
    }
    for (int i = 0; i < w; ++i) {
      bits[int64_t(i) * words + j] = nb[i];
      zero[int64_t(i) * words + j] = zb[i];
      any_zero |= zb[i] != 0;
    }
  }
  for (int i = 0; i < w; ++i) s[i] = acc[i] / float(c);  // divide, as torch's mean
  return any_zero;
}

}  // namespace detail
}  // namespace cpu
}  // namespace bimaco
