// Standalone self-test of the CUDA kernels against a CPU reference of the op contract.
//
// Build and run on a GPU machine (tests/plugins/test_cuda_kernels.py does this):
//   nvcc -std=c++17 -O2 -Iplugins_cpp/include -arch=native plugins_cpp/cuda/*.cu -o bimaco_cuda_selftest
//   ./bimaco_cuda_selftest [--seed N] [--cases N]
// Every case runs the public entry point (tensor cores where the device has them)
// and the forced plain-popcount path: both must match the reference within float
// tolerance and each other exactly (they add the same products in the same order).
// Fused cases add the side branches (RPReLU, SMB, LRMB) in the GEMM epilogue.
// Exit status 0 on success, 1 on a mismatch, 2 on a CUDA error or no device.

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bimaco/binary_ops_cuda.h"
#include "kernels.cuh"

namespace {

using bimaco::ConvShape;
using bimaco::DType;
namespace detail = bimaco::cuda::detail;

#define CHECK_CUDA(expr)                                                                        \
  do {                                                                                          \
    const cudaError_t err_ = (expr);                                                            \
    if (err_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(err_), __FILE__, \
                   __LINE__, cudaGetErrorString(err_));                                         \
      std::exit(2);                                                                             \
    }                                                                                           \
  } while (0)

// One generated case: X (as float values that are exactly representable in the
// dtype), signs of W (+1 / -1 / 0), alpha, bias, and the packed form of W.
struct Case {
  std::string name;
  ConvShape s;
  DType dtype = DType::kFloat32;
  bool linear = false;
  std::vector<float> x;        // N*C*H*W, already rounded to the dtype
  std::vector<int8_t> wsgn;    // O*KH*KW*C
  std::vector<float> alpha, bias;
  std::vector<int32_t> wbits, wzero;  // wzero empty: no weight zero mask
  // Fused side branches (empty: absent), values already rounded to the dtype.
  std::vector<float> rprelu;     // [3][O]
  std::vector<uint16_t> rowptr;  // [O + 1]
  std::vector<uint16_t> cols;    // [nnz]
  std::vector<float> vals;       // [nnz]
  int rank = 0;
  std::vector<float> down, up;   // [rank][C], [O][rank]
};

// Options a case generator takes.
struct Spec {
  std::string name;
  ConvShape s;
  DType dtype;
  bool linear;
  double x_zero_rate;    // fraction of activations that are exactly 0
  double w_zero_rate;    // fraction of scattered zero weights (carried by Wzero)
  bool garbage_tail;     // set the unused tail bits of every weight word
  bool zero_channel;     // make output channel 0 all-zero weights (alpha 0)
  // x_zero_rate applies to image 0 only: tiles of the other images have no zero and keep
  // the MMA path while image 0's tiles take the masked one (the path is chosen per tile).
  bool zeros_in_first_image_only = false;
  // Side branches in the epilogue: RPReLU (conv), SMB with 2 max(C, O) entries, LRMB of
  // this rank. SMB/LRMB need stride 1 and "same" padding (conv).
  bool rprelu = false;
  bool smb = false;
  int rank = 0;
};

float round_to(DType dt, float v) { return dt == DType::kFloat16 ? __half2float(__float2half_rn(v)) : v; }

Case make_case(const Spec& sp, std::mt19937& rng) {
  Case k;
  k.name = sp.name;
  k.s = sp.s;
  k.dtype = sp.dtype;
  k.linear = sp.linear;
  const ConvShape& s = sp.s;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  k.x.resize(static_cast<size_t>(s.n) * s.c * s.h * s.w);
  const size_t image = static_cast<size_t>(s.c) * s.h * s.w;
  for (size_t i = 0; i < k.x.size(); ++i) {
    const bool may_zero = !sp.zeros_in_first_image_only || i < image;
    k.x[i] = may_zero && ud(rng) < sp.x_zero_rate ? 0.f : round_to(sp.dtype, nd(rng));
  }
  const int words = bimaco::num_words(s.c);
  const size_t taps = static_cast<size_t>(s.kh) * s.kw;
  k.wsgn.resize(static_cast<size_t>(s.o) * taps * s.c);
  k.wbits.assign(static_cast<size_t>(s.o) * taps * words, 0);
  std::vector<int32_t> zero(k.wbits.size(), 0);
  bool any_zero = false;
  for (int o = 0; o < s.o; ++o) {
    for (size_t t = 0; t < taps; ++t) {
      for (int c = 0; c < s.c; ++c) {
        int8_t v = ud(rng) < 0.5 ? -1 : 1;
        if (sp.zero_channel && o == 0) v = 0;
        else if (ud(rng) < sp.w_zero_rate) v = 0;
        k.wsgn[(o * taps + t) * s.c + c] = v;
        const size_t wi = (o * taps + t) * words + c / 32;
        if (v < 0) k.wbits[wi] |= static_cast<int32_t>(1u << (c % 32));
        if (v == 0 && !(sp.zero_channel && o == 0)) {
          zero[wi] |= static_cast<int32_t>(1u << (c % 32));
          any_zero = true;
        }
      }
      if (sp.garbage_tail && s.c % 32 != 0) {
        const size_t wi = (o * taps + t) * words + words - 1;
        k.wbits[wi] |= static_cast<int32_t>(~((1u << (s.c % 32)) - 1u));
        zero[wi] |= static_cast<int32_t>(~((1u << (s.c % 32)) - 1u));  // used only if any zero
      }
    }
  }
  if (any_zero) k.wzero = zero;
  k.alpha.resize(s.o);
  k.bias.resize(s.o);
  for (int o = 0; o < s.o; ++o) {
    k.alpha[o] = (sp.zero_channel && o == 0) ? 0.f : 0.05f + static_cast<float>(ud(rng));
    k.bias[o] = nd(rng);
  }
  auto value = [&](float scale) { return round_to(sp.dtype, scale * nd(rng)); };
  if (sp.rprelu) {
    k.rprelu.resize(3 * static_cast<size_t>(s.o));
    for (int o = 0; o < s.o; ++o) {
      k.rprelu[o] = value(1.f);
      k.rprelu[s.o + o] = round_to(sp.dtype, static_cast<float>(ud(rng)) - 0.5f);
      k.rprelu[2 * s.o + o] = value(1.f);
    }
  }
  if (sp.smb) {
    // 2 max(C, O) entries spread unevenly over the outputs, some outputs with none
    const int nnz = 2 * std::max(s.c, s.o);
    std::vector<int> count(s.o, 0);
    std::uniform_int_distribution<int> pick_o(0, s.o - 1), pick_c(0, s.c - 1);
    for (int e = 0; e < nnz; ++e) ++count[std::min(pick_o(rng), pick_o(rng))];
    k.rowptr.assign(s.o + 1, 0);
    for (int o = 0; o < s.o; ++o) k.rowptr[o + 1] = static_cast<uint16_t>(k.rowptr[o] + count[o]);
    k.cols.resize(nnz);
    k.vals.resize(nnz);
    for (int e = 0; e < nnz; ++e) {
      k.cols[e] = static_cast<uint16_t>(pick_c(rng));
      k.vals[e] = value(0.1f);
    }
  }
  k.rank = sp.rank;
  if (sp.rank) {
    k.down.resize(static_cast<size_t>(sp.rank) * s.c);
    k.up.resize(static_cast<size_t>(s.o) * sp.rank);
    for (float& v : k.down) v = value(0.1f);
    for (float& v : k.up) v = value(0.1f);
  }
  return k;
}

// The side branches in double on the core output y (and their magnitude into mag), in the
// contract's order: conv ((RPReLU(y) + SMB) + LRMB), linear ((y + LRMB) + SMB).
void reference_side(const Case& k, std::vector<double>* y, std::vector<double>* mag) {
  const ConvShape& s = k.s;
  const size_t plane = static_cast<size_t>(s.h) * s.w;  // SMB/LRMB: output grid == input grid
  auto xat = [&](int n, int c, size_t p) { return static_cast<double>(k.x[(static_cast<size_t>(n) * s.c + c) * plane + p]); };
  const size_t oplane = static_cast<size_t>(s.out_h()) * s.out_w();
  for (int n = 0; n < s.n; ++n)
    for (int o = 0; o < s.o; ++o)
      for (size_t p = 0; p < oplane; ++p) {
        const size_t i = (static_cast<size_t>(n) * s.o + o) * oplane + p;
        double v = (*y)[i], m = (*mag)[i];
        if (!k.rprelu.empty()) {
          const double u = v + k.rprelu[o], slope = k.rprelu[s.o + o];
          v = (u > 0 ? u : slope * u) + k.rprelu[2 * s.o + o];
          m = m * std::max(1.0, std::fabs(slope)) + std::fabs(k.rprelu[o]) + std::fabs(k.rprelu[2 * s.o + o]);
        }
        double smb = 0, smb_mag = 0, low = 0, low_mag = 0;
        if (!k.rowptr.empty()) {
          for (int e = k.rowptr[o]; e < k.rowptr[o + 1]; ++e) {
            smb += k.vals[e] * xat(n, k.cols[e], p);
            smb_mag += std::fabs(k.vals[e] * xat(n, k.cols[e], p));
          }
        }
        for (int q = 0; q < k.rank; ++q) {
          double t = 0, tm = 0;
          for (int c = 0; c < s.c; ++c) {
            t += k.down[static_cast<size_t>(q) * s.c + c] * xat(n, c, p);
            tm += std::fabs(k.down[static_cast<size_t>(q) * s.c + c] * xat(n, c, p));
          }
          low += k.up[static_cast<size_t>(o) * k.rank + q] * t;
          low_mag += std::fabs(k.up[static_cast<size_t>(o) * k.rank + q]) * tm;
        }
        (*y)[i] = k.linear ? (v + low) + smb : (v + smb) + low;
        (*mag)[i] = m + smb_mag + low_mag;
      }
}

// The contract in plain C++: exact integer dots per tap, accumulated in double.
// Also returns, per output, the magnitude scale used for the tolerance.
void reference(const Case& k, std::vector<double>* y, std::vector<double>* mag) {
  const ConvShape& s = k.s;
  const int ho = s.out_h(), wo = s.out_w();
  y->assign(static_cast<size_t>(s.n) * s.o * ho * wo, 0.0);
  mag->assign(y->size(), 0.0);
  std::vector<float> scale(static_cast<size_t>(s.n) * s.h * s.w, 0.f);
  for (int n = 0; n < s.n; ++n)
    for (int p = 0; p < s.h * s.w; ++p) {
      double acc = 0.0;
      for (int c = 0; c < s.c; ++c) acc += std::fabs(k.x[(static_cast<size_t>(n) * s.c + c) * s.h * s.w + p]);
      scale[static_cast<size_t>(n) * s.h * s.w + p] = static_cast<float>(acc / s.c);
    }
  const int taps = s.kh * s.kw;
  for (int n = 0; n < s.n; ++n)
    for (int o = 0; o < s.o; ++o)
      for (int oy = 0; oy < ho; ++oy)
        for (int ox = 0; ox < wo; ++ox) {
          double acc = 0.0, amag = 0.0;
          for (int ky = 0; ky < s.kh; ++ky)
            for (int kx = 0; kx < s.kw; ++kx) {
              const int iy = oy * s.stride_h + ky - s.pad_top, ix = ox * s.stride_w + kx - s.pad_left;
              if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;  // s = 0 at padding
              const size_t pix = static_cast<size_t>(iy) * s.w + ix;
              long dot = 0;
              for (int c = 0; c < s.c; ++c) {
                const float xv = k.x[(static_cast<size_t>(n) * s.c + c) * s.h * s.w + pix];
                const int sx = xv > 0.f ? 1 : (xv < 0.f ? -1 : 0);
                dot += sx * k.wsgn[(static_cast<size_t>(o) * taps + ky * s.kw + kx) * s.c + c];
              }
              const double sc = scale[static_cast<size_t>(n) * s.h * s.w + pix];
              acc += sc * static_cast<double>(dot);
              amag += sc * s.c;
            }
          const size_t out = ((static_cast<size_t>(n) * s.o + o) * ho + oy) * wo + ox;
          (*y)[out] = static_cast<double>(k.bias[o]) + static_cast<double>(k.alpha[o]) * acc;
          (*mag)[out] = std::fabs(k.bias[o]) + std::fabs(k.alpha[o]) * amag;
        }
  reference_side(k, y, mag);
}

std::vector<__half> to_half(const std::vector<float>& v) {
  std::vector<__half> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __float2half_rn(v[i]);
  return out;
}

std::vector<float> read_output(DType dt, const void* dev, size_t count) {
  std::vector<float> out(count);
  if (dt == DType::kFloat32) {
    CHECK_CUDA(cudaMemcpy(out.data(), dev, count * sizeof(float), cudaMemcpyDeviceToHost));
  } else {
    std::vector<__half> h(count);
    CHECK_CUDA(cudaMemcpy(h.data(), dev, count * sizeof(__half), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < count; ++i) out[i] = __half2float(h[i]);
  }
  return out;
}

template <typename T>
void* upload(const std::vector<T>& v) {
  void* p = nullptr;
  if (v.empty()) return nullptr;
  CHECK_CUDA(cudaMalloc(&p, v.size() * sizeof(T)));
  CHECK_CUDA(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

// Runs one case through both paths; returns the number of failed checks.
int run_case(const Case& k, cudaStream_t stream, bool verbose) {
  const ConvShape& s = k.s;
  const size_t ycount = static_cast<size_t>(s.n) * s.o * s.out_h() * s.out_w();
  const size_t esize = k.dtype == DType::kFloat16 ? sizeof(__half) : sizeof(float);
  void* dx = k.dtype == DType::kFloat16 ? upload(to_half(k.x)) : upload(k.x);
  void* dw = upload(k.wbits);
  void* dz = upload(k.wzero);
  void* da = upload(k.alpha);
  void* db = upload(k.bias);
  // Side tables: floats in the case's dtype (the contract: side parameters follow X).
  auto upload_float = [&](const std::vector<float>& v) {
    return k.dtype == DType::kFloat16 ? upload(to_half(v)) : upload(v);
  };
  bimaco::cuda::SideBranches side;
  void* d_rp = upload_float(k.rprelu);
  void* d_rowptr = upload(k.rowptr);
  void* d_cols = upload(k.cols);
  void* d_vals = upload_float(k.vals);
  void* d_down = upload_float(k.down);
  void* d_up = upload_float(k.up);
  side.rprelu = d_rp;
  side.smb_rowptr = static_cast<const uint16_t*>(d_rowptr);
  side.smb_col = static_cast<const uint16_t*>(d_cols);
  side.smb_val = d_vals;
  side.rank = k.rank;
  side.lr_down = d_down;
  side.lr_up = d_up;
  const bimaco::cuda::SideBranches* sidep = side.any() ? &side : nullptr;
  size_t ws_bytes = 0;
  if (k.linear) {
    bimaco::LinearShape ls;
    ls.rows = s.n;
    ls.k = s.c;
    ls.o = s.o;
    ws_bytes = bimaco::cuda::linear_workspace_bytes(ls, k.rank);
  } else {
    ws_bytes = bimaco::cuda::conv2d_workspace_bytes(s, k.rank);
  }
  void* dws = nullptr;
  CHECK_CUDA(cudaMalloc(&dws, ws_bytes));
  CHECK_CUDA(cudaMemset(dws, 0xA5, ws_bytes));  // stale garbage must not leak into results
  void* dy_auto = nullptr;
  void* dy_popc = nullptr;
  CHECK_CUDA(cudaMalloc(&dy_auto, ycount * esize));
  CHECK_CUDA(cudaMalloc(&dy_popc, ycount * esize));
  CHECK_CUDA(cudaMemset(dy_auto, 0xFF, ycount * esize));  // NaN: every output must be written
  CHECK_CUDA(cudaMemset(dy_popc, 0xFF, ycount * esize));

  const int32_t* wz = static_cast<const int32_t*>(dz);
  if (k.linear) {
    bimaco::LinearShape ls;
    ls.rows = s.n;
    ls.k = s.c;
    ls.o = s.o;
    CHECK_CUDA(bimaco::cuda::binary_linear(ls, k.dtype, dx, static_cast<const int32_t*>(dw), wz,
                                           static_cast<const float*>(da), static_cast<const float*>(db),
                                           dy_auto, dws, stream, sidep));
    detail::Geometry g;
    if (!detail::make_linear_geometry(ls, &g)) std::exit(2);
    CHECK_CUDA(detail::run(g, k.dtype, dx, static_cast<const int32_t*>(dw), wz, static_cast<const float*>(da),
                           static_cast<const float*>(db), dy_popc, dws, detail::Path::kPopcount, stream, sidep));
  } else {
    CHECK_CUDA(bimaco::cuda::binary_conv2d(s, k.dtype, dx, static_cast<const int32_t*>(dw), wz,
                                           static_cast<const float*>(da), static_cast<const float*>(db),
                                           dy_auto, dws, stream, sidep));
    detail::Geometry g;
    if (!detail::make_geometry(s, &g)) std::exit(2);
    CHECK_CUDA(detail::run(g, k.dtype, dx, static_cast<const int32_t*>(dw), wz, static_cast<const float*>(da),
                           static_cast<const float*>(db), dy_popc, dws, detail::Path::kPopcount, stream, sidep));
  }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const std::vector<float> y_auto = read_output(k.dtype, dy_auto, ycount);
  const std::vector<float> y_popc = read_output(k.dtype, dy_popc, ycount);
  std::vector<double> ref, mag;
  reference(k, &ref, &mag);

  // fp32: the float accumulation of nine taps vs double; fp16: one output rounding.
  const double rel = k.dtype == DType::kFloat16 ? 1.0 / 1024 : 2e-6;
  int bad = 0;
  double worst = 0.0;
  for (size_t i = 0; i < ycount; ++i) {
    const double tol = rel * (std::fabs(ref[i]) + 1e-3 * mag[i]) + 1e-6 * mag[i] + 1e-7;
    const double err = std::fabs(static_cast<double>(y_auto[i]) - ref[i]);
    const bool finite = std::isfinite(y_auto[i]) && std::isfinite(y_popc[i]);
    if (!finite || err > tol || y_auto[i] != y_popc[i]) {
      if (bad < 5) {
        std::fprintf(stderr, "  %s: output %zu: auto %.9g popcount %.9g reference %.9g (tol %.3g)\n",
                     k.name.c_str(), i, y_auto[i], y_popc[i], ref[i], tol);
      }
      ++bad;
    }
    if (std::isfinite(err) && tol > 0) worst = std::fmax(worst, err / tol);
  }
  if (verbose || bad) {
    std::printf("%-4s %-48s outputs=%-7zu worst err/tol %.3f\n", bad ? "FAIL" : "ok", k.name.c_str(), ycount,
                worst);
  }
  for (void* p : {dx, dw, dz, da, db, dws, dy_auto, dy_popc, d_rp, d_rowptr, d_cols, d_vals, d_down, d_up}) {
    if (p) CHECK_CUDA(cudaFree(p));
  }
  return bad ? 1 : 0;
}

ConvShape conv(int n, int c, int h, int w, int o, int k, int stride, int pt, int pl, int pb, int pr) {
  ConvShape s;
  s.n = n;
  s.c = c;
  s.h = h;
  s.w = w;
  s.o = o;
  s.kh = k;
  s.kw = k;
  s.stride_h = stride;
  s.stride_w = stride;
  s.pad_top = pt;
  s.pad_left = pl;
  s.pad_bottom = pb;
  s.pad_right = pr;
  return s;
}

std::string describe(const Spec& sp) {
  const ConvShape& s = sp.s;
  char buf[200];
  if (sp.linear) {
    std::snprintf(buf, sizeof(buf), "linear rows%d k%d o%d", s.n, s.c, s.o);
  } else {
    std::snprintf(buf, sizeof(buf), "conv n%d c%d %dx%d o%d k%d s%d p%d%d%d%d", s.n, s.c, s.h, s.w, s.o, s.kh,
                  s.stride_h, s.pad_top, s.pad_left, s.pad_bottom, s.pad_right);
  }
  std::string out = buf;
  out += sp.dtype == DType::kFloat16 ? " fp16" : " fp32";
  if (sp.x_zero_rate > 0) out += " xzero";
  if (sp.w_zero_rate > 0) out += " wzero";
  if (sp.garbage_tail) out += " tail";
  if (sp.zero_channel) out += " zchan";
  if (sp.zeros_in_first_image_only) out += " xzero-img0";
  if (sp.rprelu) out += " +rprelu";
  if (sp.smb) out += " +smb";
  if (sp.rank) out += " +lrmb" + std::to_string(sp.rank);
  return out;
}

std::vector<Spec> fixed_specs() {
  std::vector<Spec> v;
  auto add = [&](ConvShape s, DType dt, bool lin, double xz, double wz, bool tail, bool zc, bool img0 = false) {
    Spec sp{"", s, dt, lin, xz, wz, tail, zc, img0};
    sp.name = describe(sp);
    v.push_back(sp);
  };
  const DType f32 = DType::kFloat32, f16 = DType::kFloat16;
  // The published model's channel widths (160 = 5 words: not a multiple of 128 bits).
  add(conv(1, 160, 16, 16, 160, 3, 1, 1, 1, 1, 1), f32, false, 0, 0, false, false);
  add(conv(1, 160, 16, 16, 160, 3, 1, 1, 1, 1, 1), f16, false, 0, 0, false, false);
  add(conv(2, 320, 9, 11, 70, 3, 1, 1, 1, 1, 1), f32, false, 0, 0, false, false);
  add(conv(1, 640, 8, 8, 640, 3, 1, 1, 1, 1, 1), f16, false, 0, 0, false, false);
  add(conv(1, 1280, 4, 4, 96, 3, 1, 1, 1, 1, 1), f32, false, 0, 0, false, false);  // > one 16-word chunk
  // Stride 2 downsample, ONNX asymmetric pads, 1x1, odd channel counts.
  add(conv(1, 160, 16, 16, 160, 3, 2, 1, 1, 1, 1), f32, false, 0, 0, false, false);
  add(conv(2, 33, 7, 9, 5, 3, 2, 0, 1, 1, 0), f32, false, 0, 0, true, false);
  add(conv(1, 1, 5, 5, 3, 3, 1, 1, 1, 1, 1), f32, false, 0, 0, false, false);
  add(conv(1, 31, 6, 5, 65, 1, 1, 0, 0, 0, 0), f16, false, 0, 0, true, false);
  add(conv(1, 200, 5, 7, 129, 3, 1, 2, 0, 0, 2), f32, false, 0, 0, true, true);
  // Exact zeros: in X (the flag path), in W (the mask input), both.
  add(conv(1, 160, 8, 8, 64, 3, 1, 1, 1, 1, 1), f32, false, 0.05, 0, false, false);
  add(conv(1, 37, 6, 6, 20, 3, 2, 1, 1, 1, 1), f16, false, 0.3, 0, true, false);
  add(conv(1, 96, 6, 6, 40, 3, 1, 1, 1, 1, 1), f32, false, 0, 0.1, false, false);
  add(conv(2, 45, 5, 6, 33, 3, 1, 1, 1, 1, 1), f32, false, 0.2, 0.2, true, true);
  add(conv(1, 64, 4, 4, 8, 3, 1, 1, 1, 1, 1), f32, false, 1.0, 0, false, false);  // all-zero X
  // Zeros in some GEMM tiles only: masked and MMA tiles in one launch (per-tile choice).
  add(conv(3, 160, 12, 12, 96, 3, 1, 1, 1, 1, 1), f32, false, 0.01, 0, false, false, true);
  add(conv(2, 70, 16, 8, 40, 1, 1, 0, 0, 0, 0), f16, false, 0.2, 0, true, false, true);
  add(conv(200, 768, 1, 1, 192, 1, 1, 0, 0, 0, 0), f32, true, 0.001, 0, false, false, true);  // fc2 after GELU
  // Fused side branches (the epilogue), on both GEMM paths, ranks across the 8-wide steps.
  auto fused = [&](ConvShape s, DType dt, bool lin, double xz, double wz, bool rp, bool smb, int rank) {
    Spec sp{"", s, dt, lin, xz, wz, false, false, false, rp, smb, rank};
    sp.name = describe(sp);
    v.push_back(sp);
  };
  fused(conv(1, 160, 16, 16, 160, 3, 1, 1, 1, 1, 1), f32, false, 0, 0, true, true, 8);
  fused(conv(2, 45, 7, 9, 70, 3, 1, 1, 1, 1, 1), f16, false, 0.1, 0, true, true, 11);
  fused(conv(1, 96, 6, 6, 40, 1, 1, 0, 0, 0, 0), f32, false, 0, 0.1, false, true, 0);
  fused(conv(1, 64, 8, 8, 64, 3, 2, 1, 1, 1, 1), f32, false, 0, 0, true, false, 0);  // strided: RPReLU only
  fused(conv(130, 192, 1, 1, 576, 1, 1, 0, 0, 0, 0), f32, true, 0, 0, false, true, 8);
  fused(conv(65, 100, 1, 1, 70, 1, 1, 0, 0, 0, 0), f16, true, 0.05, 0.05, false, true, 4);
  fused(conv(3, 33, 1, 1, 7, 1, 1, 0, 0, 0, 0), f32, true, 0, 0, false, false, 17);
  // Linear layers: swin qkv / proj / fc1 / fc2 widths, odd K, rows not a multiple of 64.
  add(conv(100, 192, 1, 1, 576, 1, 1, 0, 0, 0, 0), f32, true, 0, 0, false, false);
  add(conv(64, 768, 1, 1, 192, 1, 1, 0, 0, 0, 0), f16, true, 0.02, 0, false, false);
  add(conv(3, 33, 1, 1, 7, 1, 1, 0, 0, 0, 0), f32, true, 0, 0, true, true);
  add(conv(1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0), f32, true, 0, 0, false, false);
  add(conv(65, 100, 1, 1, 70, 1, 1, 0, 0, 0, 0), f32, true, 0.1, 0.05, true, false);
  return v;
}

Spec random_spec(std::mt19937& rng) {
  std::uniform_int_distribution<int> pick(0, 1 << 30);
  auto r = [&](int lo, int hi) { return lo + pick(rng) % (hi - lo + 1); };
  Spec sp;
  sp.linear = r(0, 3) == 0;
  sp.dtype = r(0, 1) ? DType::kFloat16 : DType::kFloat32;
  if (sp.linear) {
    sp.s = conv(r(1, 150), r(1, 300), 1, 1, r(1, 150), 1, 1, 0, 0, 0, 0);
  } else {
    const int k = r(0, 2) ? 3 : 1;
    sp.s = conv(r(1, 2), r(1, 300), r(1, 12), r(1, 12), r(1, 150), k, r(1, 2), r(0, k - 1), r(0, k - 1),
                r(0, k - 1), r(0, k - 1));
    if (sp.s.h + sp.s.pad_top + sp.s.pad_bottom < k) sp.s.h = k;
    if (sp.s.w + sp.s.pad_left + sp.s.pad_right < k) sp.s.w = k;
  }
  sp.x_zero_rate = r(0, 3) == 0 ? 0.1 : 0.0;
  sp.w_zero_rate = r(0, 4) == 0 ? 0.1 : 0.0;
  sp.garbage_tail = r(0, 1) == 1;
  sp.zero_channel = r(0, 4) == 0;
  sp.zeros_in_first_image_only = sp.x_zero_rate > 0 && r(0, 1) == 1;
  const bool same_grid = sp.linear || (sp.s.stride_h == 1 && sp.s.out_h() == sp.s.h && sp.s.out_w() == sp.s.w);
  sp.rprelu = !sp.linear && r(0, 2) == 0;
  sp.smb = same_grid && r(0, 2) == 0;
  sp.rank = same_grid && r(0, 2) == 0 ? r(1, 12) : 0;
  sp.name = describe(sp);
  return sp;
}

// Public-API argument checks that need no kernel to run.
int check_invalid_arguments(cudaStream_t stream) {
  int bad = 0;
  ConvShape s = conv(1, 8, 2, 2, 4, 3, 1, 0, 0, 0, 0);  // 2x2 input, 3x3 kernel, no padding
  if (bimaco::cuda::binary_conv2d(s, DType::kFloat32, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                  nullptr, stream) != cudaErrorInvalidValue) {
    std::fprintf(stderr, "FAIL: a conv with an empty output was accepted\n");
    ++bad;
  }
  if (bimaco::cuda::conv2d_workspace_bytes(s) != 0) {
    std::fprintf(stderr, "FAIL: workspace size for an invalid conv is not 0\n");
    ++bad;
  }
  bimaco::LinearShape ls;
  ls.rows = 0;
  ls.k = 16;
  ls.o = 4;
  // An empty batch is a valid no-op: nothing is read or written.
  if (bimaco::cuda::binary_linear(ls, DType::kFloat32, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                  nullptr, stream) != cudaSuccess) {
    std::fprintf(stderr, "FAIL: an empty linear batch was not a no-op\n");
    ++bad;
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  unsigned seed = 1234;
  int random_cases = 60;
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--seed") && i + 1 < argc) seed = static_cast<unsigned>(std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--cases") && i + 1 < argc) random_cases = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "-v")) verbose = true;
    else {
      std::fprintf(stderr, "usage: %s [--seed N] [--cases N] [-v]\n", argv[0]);
      return 2;
    }
  }
  int dev_count = 0;
  if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
    std::fprintf(stderr, "no CUDA device\n");
    return 2;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const int cc = prop.major * 10 + prop.minor;
  std::printf("device: %s (sm_%d), auto path: %s\n", prop.name, cc,
              cc >= 80 ? "mma m16n8k128 and.popc" : (cc >= 75 ? "mma m8n8k128 xor.popc" : "popcount"));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));

  std::mt19937 rng(seed);
  int failed = check_invalid_arguments(stream);
  int total = 0;
  for (const Spec& sp : fixed_specs()) {
    failed += run_case(make_case(sp, rng), stream, verbose);
    ++total;
  }
  for (int i = 0; i < random_cases; ++i) {
    const Spec sp = random_spec(rng);
    failed += run_case(make_case(sp, rng), stream, verbose);
    ++total;
  }
  CHECK_CUDA(cudaStreamDestroy(stream));
  if (failed) {
    std::printf("FAILED %d of %d cases (seed %u)\n", failed, total, seed);
    return 1;
  }
  std::printf("PASSED %d cases (seed %u)\n", total, seed);
  return 0;
}
