// One binary layer through the framework-free CPU API (plugins_cpp/cpu/binary_ops_cpu.h),
// with or without its side branches, timed in a loop: for profiling a kernel with perf
// without torch in the picture. Random activations (no exact zeros unless ZERO_FRAC > 0,
// which selects the masked kernel), random sign weights; side branches as in the published model: RPReLU (convs), SMB with `nnz_per_row`
// entries per output channel, LRMB of rank 8.
//
// Build and run from the repository root (one command line):
//   g++ -std=c++17 -O3 -Iplugins_cpp/include -Iplugins_cpp/cpu benchmarks/cpu_layer_micro.cpp
//       plugins_cpp/cpu/binary_ops_cpu.cpp plugins_cpp/cpu/kernels_*.cpp -lpthread -o /tmp/cpu_layer_micro
//   /tmp/cpu_layer_micro KIND PIXELS C_IN C_OUT SIDE ITERS [NNZ_PER_ROW=2] [THREADS=1] [ZERO_FRAC=0]
// KIND: lin (PIXELS rows), conv1 or conv3 (a square image of PIXELS pixels, "same" padding);
// SIDE: 0 the contract op alone, 1 with the side branches; ZERO_FRAC: that fraction of X is
// exactly 0 (GELU-underflow-like), so the zero-masked kernel runs. BIMACO_CPU_ISA=avx2 (...)
// forces an instruction set. Prints the mean time per call.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "binary_ops_cpu.h"

using namespace bimaco;

int main(int argc, char** argv) {
  if (argc < 7) {
    std::fprintf(stderr, "usage: %s lin|conv1|conv3 PIXELS C_IN C_OUT SIDE ITERS [NNZ_PER_ROW] [THREADS] [ZERO_FRAC]\n",
                 argv[0]);
    return 2;
  }
  const std::string kind = argv[1];
  const int pixels = std::atoi(argv[2]), k = std::atoi(argv[3]), o = std::atoi(argv[4]);
  const bool with_side = std::atoi(argv[5]) != 0;
  const int iters = std::atoi(argv[6]);
  const int nnz_per_row = argc > 7 ? std::atoi(argv[7]) : 2;
  const int threads = argc > 8 ? std::atoi(argv[8]) : 1;
  const double zero_frac = argc > 9 ? std::atof(argv[9]) : 0.0;
  const int taps = kind == "conv3" ? 9 : 1;
  const int side_len = int(std::lround(std::sqrt(double(pixels))));
  if ((kind != "lin" && kind != "conv1" && kind != "conv3") || pixels <= 0 || k <= 0 || o <= 0 || iters <= 0 ||
      (kind != "lin" && side_len * side_len != pixels)) {
    std::fprintf(stderr, "bad arguments (convs need a square PIXELS)\n");
    return 2;
  }

  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<double> uniform;
  std::vector<float> x(size_t(pixels) * k);
  for (auto& v : x) {
    v = normal(rng);
    if (v == 0.f) v = 1e-3f;  // exact zeros select the masked kernel: only where asked
    if (zero_frac > 0 && uniform(rng) < zero_frac) v = 0.f;
  }
  const int words = (k + 31) / 32;
  std::vector<int32_t> wbits(size_t(o) * taps * words);
  for (auto& v : wbits) v = int32_t(rng());
  std::vector<float> alpha(o, 0.1f), bias(o, 0.01f), y(size_t(pixels) * o);
  std::vector<float> b0(o, 0.1f), slope(o, 0.2f), b1(o, 0.1f);
  std::vector<int32_t> rowptr(o + 1);
  std::vector<int16_t> col;
  std::vector<float> val;
  for (int i = 0; i < o; ++i) {
    rowptr[i] = int32_t(col.size());
    for (int e = 0; e < nnz_per_row; ++e) {
      col.push_back(int16_t((i * 7 + e * 31) % k));
      val.push_back(0.5f);
    }
  }
  rowptr[o] = int32_t(col.size());
  const int rank = 8;
  std::vector<float> down(size_t(rank) * k, 0.01f), up(size_t(o) * rank, 0.02f);
  cpu::SideBranches sb;
  if (with_side) {
    sb.smb_rowptr = rowptr.data(), sb.smb_col = col.data(), sb.smb_val = val.data();
    sb.rank = rank, sb.lr_down = down.data(), sb.lr_up = up.data();
    if (kind != "lin") sb.rp_b0 = b0.data(), sb.rp_slope = slope.data(), sb.rp_b1 = b1.data();
  }
  setenv("BIMACO_NUM_THREADS", std::to_string(threads).c_str(), 1);
  const cpu::ParallelFor pfor = cpu::default_parallel_for();

  auto run = [&] {
    if (kind == "lin") {
      LinearShape s;
      s.rows = pixels, s.k = k, s.o = o;
      cpu::binary_linear(s, x.data(), wbits.data(), nullptr, alpha.data(), bias.data(), y.data(), pfor,
                         with_side ? &sb : nullptr);
    } else {
      ConvShape s;
      s.n = 1, s.c = k, s.h = s.w = side_len, s.o = o, s.kh = s.kw = taps == 9 ? 3 : 1;
      s.pad_top = s.pad_bottom = s.pad_left = s.pad_right = taps == 9 ? 1 : 0;
      cpu::binary_conv2d(s, x.data(), wbits.data(), nullptr, alpha.data(), bias.data(), y.data(), pfor,
                         with_side ? &sb : nullptr);
    }
  };
  run();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) run();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
  std::printf("%s pixels=%d c_in=%d c_out=%d side=%d threads=%d zeros=%g (%s): %.3f ms per call (%.2f ns per output)\n",
              kind.c_str(), pixels, k, o, int(with_side), threads, zero_frac, cpu::isa_name(cpu::active_isa()), ms,
              ms * 1e6 / (double(pixels) * o));
  return 0;
}
