// Standalone self-test of the CPU kernels, no torch needed: every ISA this CPU runs
// must reproduce an independent naive implementation of the contract (written here
// from scratch on unpacked signs) on random shapes with odd channel counts, strides,
// asymmetric padding, exact zeros in X and scattered zero weights. Used to check the
// NEON kernel under qemu-aarch64 and the AVX-512 kernel on machines that have it.
//
//   g++ -std=c++17 -O2 -I plugins_cpp/include plugins_cpp/cpu/*.cpp -o selftest -pthread && ./selftest
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "binary_ops_cpu.h"

using namespace bimaco;

namespace {

int sgn(float v) { return v > 0.f ? 1 : (v < 0.f ? -1 : 0); }

// Naive contract: y = bias + alpha * sum_taps s * sum_c sgn(x) * sgn(w).
void naive_conv(const ConvShape& s, const std::vector<float>& x, const std::vector<int>& wsign,
                const std::vector<float>& alpha, const std::vector<float>& bias, std::vector<float>* y) {
  const int ho = s.out_h(), wo = s.out_w();
  y->assign(size_t(s.n) * s.o * ho * wo, 0.f);
  for (int n = 0; n < s.n; ++n)
    for (int o = 0; o < s.o; ++o)
      for (int oh = 0; oh < ho; ++oh)
        for (int ow = 0; ow < wo; ++ow) {
          double acc = 0;
          for (int i = 0; i < s.kh; ++i)
            for (int j = 0; j < s.kw; ++j) {
              const int ih = oh * s.stride_h + i - s.pad_top, iw = ow * s.stride_w + j - s.pad_left;
              if (ih < 0 || iw < 0 || ih >= s.h || iw >= s.w) continue;
              double sc = 0;
              long dot = 0;
              for (int c = 0; c < s.c; ++c) {
                const float v = x[((size_t(n) * s.c + c) * s.h + ih) * s.w + iw];
                sc += std::fabs(v);
                dot += sgn(v) * wsign[((size_t(o) * s.kh + i) * s.kw + j) * s.c + c];
              }
              acc += float(sc / s.c) * double(dot);
            }
          (*y)[((size_t(n) * s.o + o) * ho + oh) * wo + ow] = float(bias[o] + alpha[o] * acc);
        }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  auto uni = [&](int a, int b) { return std::uniform_int_distribution<int>(a, b)(rng); };
  std::normal_distribution<float> normal;
  const int channels[] = {1, 5, 31, 32, 33, 63, 64, 65, 100, 130};
  int failures = 0, checks = 0;
  const auto pfor = cpu::default_parallel_for();
  for (int trial = 0; trial < 60; ++trial) {
    ConvShape s;
    s.n = uni(1, 2);
    s.c = channels[uni(0, 9)];
    s.o = uni(1, 37);
    s.kh = s.kw = uni(0, 1) ? 3 : 1;
    s.stride_h = s.stride_w = uni(1, 2);
    s.pad_top = uni(0, 1), s.pad_left = uni(0, 1), s.pad_bottom = uni(0, 1), s.pad_right = uni(0, 1);
    s.h = uni(3, 9), s.w = uni(3, 11);
    if (trial % 4 == 1) {  // a 1x1 geometry that the linear entry point can reproduce too
      s.n = 1, s.kh = s.kw = 1, s.stride_h = s.stride_w = 1;
      s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 0;
    }
    const bool zeros = trial % 3 == 0, wzeros = trial % 4 == 0;
    std::vector<float> x(size_t(s.n) * s.c * s.h * s.w);
    for (auto& v : x) v = (zeros && uni(0, 4) == 0) ? 0.f : normal(rng);
    const int words = s.words(), taps = s.kh * s.kw;
    std::vector<int> wsign(size_t(s.o) * taps * s.c);
    std::vector<int32_t> wbits(size_t(s.o) * taps * words, 0), wzero(wbits.size(), 0);
    for (size_t i = 0; i < wsign.size(); ++i) {
      const int r = uni(0, 9);
      wsign[i] = (wzeros && r == 0) ? 0 : (r < 5 ? -1 : 1);
      const size_t ot = i / s.c;
      const int c = int(i % s.c);
      if (wsign[i] < 0) wbits[ot * words + c / 32] |= int32_t(1u << (c % 32));
      if (wsign[i] == 0) wzero[ot * words + c / 32] |= int32_t(1u << (c % 32));
    }
    std::vector<float> alpha(s.o), bias(s.o);
    for (int o = 0; o < s.o; ++o) alpha[o] = std::fabs(normal(rng)), bias[o] = normal(rng);
    std::vector<float> ref;
    naive_conv(s, x, wsign, alpha, bias, &ref);
    double scale = 1e-30;
    for (float v : ref) scale = std::fmax(scale, std::fabs(v));
    for (cpu::Isa isa : cpu::available_isas()) {
      cpu::set_isa(isa);
      std::vector<float> y(ref.size(), NAN);
      cpu::binary_conv2d(s, x.data(), wbits.data(), wzeros ? wzero.data() : nullptr, alpha.data(), bias.data(),
                         y.data(), pfor);
      double err = 0;
      for (size_t i = 0; i < y.size(); ++i) err = std::fmax(err, std::fabs(double(y[i]) - ref[i]));
      ++checks;
      if (!(err <= 1e-5 * scale)) {
        ++failures;
        std::printf("FAIL %s conv n%d c%d o%d k%d s%d pads %d%d%d%d %dx%d: max err %.3g (scale %.3g)\n",
                    cpu::isa_name(isa), s.n, s.c, s.o, s.kh, s.stride_h, s.pad_top, s.pad_left, s.pad_bottom,
                    s.pad_right, s.h, s.w, err, scale);
      }
      // the same numbers through the linear entry point (1x1, stride 1, no padding: rows = pixels)
      if (s.kh == 1 && s.stride_h == 1 && s.pad_top + s.pad_left + s.pad_bottom + s.pad_right == 0 && s.n == 1) {
        std::vector<float> xr(size_t(s.h) * s.w * s.c), yl(size_t(s.h) * s.w * s.o);
        for (int c = 0; c < s.c; ++c)
          for (int p = 0; p < s.h * s.w; ++p) xr[size_t(p) * s.c + c] = x[size_t(c) * s.h * s.w + p];
        LinearShape ls;
        ls.rows = int64_t(s.h) * s.w, ls.k = s.c, ls.o = s.o;
        cpu::binary_linear(ls, xr.data(), wbits.data(), wzeros ? wzero.data() : nullptr, alpha.data(), bias.data(),
                           yl.data(), pfor);
        double lerr = 0;
        for (int o = 0; o < s.o; ++o)
          for (int p = 0; p < s.h * s.w; ++p)
            lerr = std::fmax(lerr, std::fabs(double(yl[size_t(p) * s.o + o]) - ref[size_t(o) * s.h * s.w + p]));
        ++checks;
        if (!(lerr <= 1e-5 * scale)) {
          ++failures;
          std::printf("FAIL %s linear k%d o%d rows%d: max err %.3g\n", cpu::isa_name(isa), s.c, s.o, s.h * s.w, lerr);
        }
      }
    }
  }
  std::printf("bimaco cpu selftest: ISAs");
  for (cpu::Isa isa : cpu::available_isas()) std::printf(" %s", cpu::isa_name(isa));
  std::printf("; %d checks, %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
