// Dispatcher of the CPU kernels: ISA choice, sign packing into a padded channel-last
// buffer, weight repacking into the chosen kernel's lane layout, work tiling.
#include "binary_ops_cpu.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "kernel_common.h"

namespace bimaco {
namespace cpu {

using detail::Gemm;
using detail::kPixelChunk;
using detail::Tile;

namespace {

// Weights up to this size stay in a core's L2 across a whole row of tiles.
constexpr int64_t kL2WeightBytes = 256 * 1024;
// Below this many (pixel, channel-block, tap, word) steps a call runs on the calling thread.
constexpr int64_t kInlineWork = 16 * 1024;

// Weight bytes of one work item's output-channel group: small enough to stay in L1
// next to the activation rows and output lines. BIMACO_CPU_WBLOCK overrides (tuning).
int64_t weight_block_bytes() {
  static const int64_t v = [] {
    const char* env = std::getenv("BIMACO_CPU_WBLOCK");
    const long long n = env ? std::atoll(env) : 0;
    return n > 0 ? int64_t(n) : int64_t(8 * 1024);
  }();
  return v;
}

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return true;
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::kPopcnt:
      return __builtin_cpu_supports("popcnt");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
#endif
#if defined(__aarch64__)
    case Isa::kNeon:
      return true;  // Advanced SIMD is mandatory on AArch64
#endif
    default:
      return false;
  }
}

int lanes_of(Isa isa) {
  switch (isa) {
    case Isa::kAvx2:
      return 8;
    case Isa::kAvx512:
      return 16;
    case Isa::kNeon:
      return 4;
    default:
      return 1;
  }
}

using GemmFn = void (*)(const Gemm&, const Tile&);

#if defined(__x86_64__) || defined(_M_X64)
// The AVX2 builds of the non-GEMM helpers (packing, side branches, transposes) serve the
// AVX-512 kernel too.
bool avx2_helpers(Isa isa) { return isa == Isa::kAvx2 || isa == Isa::kAvx512; }
#endif

GemmFn side_of(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (avx2_helpers(isa)) return detail::side_avx2;
#endif
  (void)isa;
  return detail::side_generic;
}

detail::DownPlanesFn down_planes_of(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (avx2_helpers(isa)) return detail::down_planes_avx2;
#endif
  (void)isa;
  return detail::down_planes_generic;
}

detail::TransposeFn transpose_of(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (avx2_helpers(isa)) return detail::transpose_avx2;
#endif
  (void)isa;
  return detail::transpose_generic;
}

// m [rows][cols] -> [cols][rows]
std::vector<float> transposed(const float* m, int rows, int cols) {
  std::vector<float> out(size_t(rows) * cols);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) out[size_t(j) * rows + i] = m[size_t(i) * cols + j];
  return out;
}

GemmFn gemm_of(Isa isa) {
  switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::kPopcnt:
      return detail::gemm_popcnt;
    case Isa::kAvx2:
      return detail::gemm_avx2;
    case Isa::kAvx512:
      return detail::gemm_avx512;
#endif
#if defined(__aarch64__)
    case Isa::kNeon:
      return detail::gemm_neon;
#endif
    default:
      return detail::gemm_scalar;
  }
}

Isa best_isa() {
  // Measured on AMD Zen3 (benchmarks/bench_layers.py): the AVX2 nibble-lookup kernel
  // beats the scalar POPCNT kernel, so it is preferred when both exist.
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kNeon, Isa::kPopcnt})
    if (cpu_has(isa)) return isa;
  return Isa::kScalar;
}

// -1: automatic; else the forced Isa value.
std::atomic<int> g_forced{-2};  // -2: environment not read yet

int forced_isa() {
  int f = g_forced.load();
  if (f == -2) {
    f = -1;
    if (const char* env = std::getenv("BIMACO_CPU_ISA")) {
      Isa isa;
      if (parse_isa(env, &isa) && cpu_has(isa)) f = int(isa);
      // an unknown or unavailable value falls back to automatic choice; the Python
      // layer reports the active ISA so the user can see what ran
    }
    int expected = -2;
    g_forced.compare_exchange_strong(expected, f);
    f = g_forced.load();
  }
  return f;
}

// Weights [o][taps][words] -> lane-interleaved blocks [ob][tap][word][lane]. Tail bits of
// the last word are cleared in the sign words and SET in the zero words, so neither can
// count; padded output channels get all-zero signs and all-invalid zero words.
void repack(const int32_t* src, int o, int taps, int words, int c, int lanes, bool as_zero_mask,
            std::vector<uint32_t>* dst) {
  const int nob = (o + lanes - 1) / lanes;
  const int tail = c - 32 * (words - 1);  // 1..32 real bits in the last word
  const uint32_t tail_mask = tail == 32 ? 0xffffffffu : ((1u << tail) - 1u);
  dst->resize(size_t(nob) * taps * words * lanes);
  uint32_t* d = dst->data();
  // written in destination order: one sequential pass (it runs on every call)
  for (int ob = 0; ob < nob; ++ob)
    for (int k = 0; k < taps; ++k)
      for (int j = 0; j < words; ++j) {
        const uint32_t keep = j == words - 1 ? tail_mask : 0xffffffffu;
        for (int l = 0; l < lanes; ++l) {
          const int oc = ob * lanes + l;
          uint32_t v = oc < o && src ? uint32_t(src[(int64_t(oc) * taps + k) * words + j]) : 0u;
          if (oc >= o) v = as_zero_mask ? 0xffffffffu : 0u;  // padded channel: never counts
          *d++ = as_zero_mask ? (v | ~keep) : (v & keep);
        }
      }
}

struct Prepared {
  std::vector<uint32_t> w, wz;
  std::vector<float> alpha, bias;
};

void prepare(Isa isa, int o, int taps, int words, int c, const int32_t* wbits, const int32_t* wzero,
             bool masked, const float* alpha, const float* bias, Prepared* p, Gemm* g) {
  const int lanes = lanes_of(isa);
  repack(wbits, o, taps, words, c, lanes, false, &p->w);
  if (masked) repack(wzero, o, taps, words, c, lanes, true, &p->wz);
  const int o_pad = (o + lanes - 1) / lanes * lanes;
  p->alpha.assign(o_pad, 0.f);
  p->bias.assign(o_pad, 0.f);
  std::memcpy(p->alpha.data(), alpha, sizeof(float) * o);
  std::memcpy(p->bias.data(), bias, sizeof(float) * o);
  g->lanes = lanes;
  g->o = o;
  g->o_pad = o_pad;
  g->c = c;
  g->words = words;
  g->taps = taps;
  g->w = p->w.data();
  g->wz = masked ? p->wz.data() : nullptr;
  g->alpha = p->alpha.data();
  g->bias = p->bias.data();
}

// Copies `rows` rows of `cols` floats between a strided and a dense layout (channel
// planes <-> a chunk's [C][64] buffer). The planes are a page or more apart, where the
// hardware prefetchers do not follow, so the rows kAhead ahead are prefetched by hand.
constexpr int kAhead = 8;
void copy_rows(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int rows, int cols,
               bool prefetch_src) {
  const size_t bytes = sizeof(float) * size_t(cols);
  for (int r = 0; r < rows; ++r) {
    if (r + kAhead < rows) {
      const char* a = reinterpret_cast<const char*>(prefetch_src ? src + (r + kAhead) * src_stride
                                                                 : dst + (r + kAhead) * dst_stride);
      for (size_t off = 0; off < bytes; off += 64) {
        if (prefetch_src)
          __builtin_prefetch(a + off, 0);
        else
          __builtin_prefetch(a + off, 1);
      }
    }
    std::memcpy(dst + r * dst_stride, src + r * src_stride, bytes);
  }
}

void run_tiles(Isa isa, const Gemm& g, const ParallelFor& pfor) {
  const int nob = g.o_pad / g.lanes;
  const int64_t ob_bytes = int64_t(g.taps) * g.words * g.lanes * 4;
  const int group = int(std::max<int64_t>(1, std::min<int64_t>(nob, weight_block_bytes() / ob_bytes)));
  const int ngroups = (nob + group - 1) / group;
  const int nchunks = (g.wo + kPixelChunk - 1) / kPixelChunk;
  const int64_t rows = int64_t(g.n) * g.ho * nchunks;
  const GemmFn fn = gemm_of(isa);
  const GemmFn side = g.side ? side_of(isa) : nullptr;
  // Tiny problems (a time-embedding linear on one row) finish faster than a thread
  // wake-up, which on a busy machine can take a scheduler tick: run them inline.
  const int64_t work = int64_t(g.n) * g.ho * g.wo * nob * g.taps * g.words;
  const bool inline_run = work < kInlineWork;
  const ParallelFor serial = [](int64_t n, const RangeFn& f) { if (n > 0) f(0, n); };
  // Group outermost: a thread's consecutive items reuse the same weight block. With side
  // branches, and weights that fit in L2 anyway, rows go outermost instead: the epilogue
  // reads the input rows (SMB) and the output tile again, and all groups of one row then
  // run back to back while those rows are still in cache.
  const int64_t weight_bytes = int64_t(nob) * ob_bytes * (g.wz ? 2 : 1);
  const bool rows_outer = side && weight_bytes <= kL2WeightBytes;
  (inline_run ? serial : pfor)(int64_t(ngroups) * rows, [&](int64_t b, int64_t e) {
    for (int64_t it = b; it < e; ++it) {
      const int gi = int(rows_outer ? it % ngroups : it / rows);
      int64_t r = rows_outer ? it / ngroups : it % rows;
      const int chunk = int(r % nchunks);
      r /= nchunks;
      Tile t;
      t.oh = int(r % g.ho);
      t.n = int(r / g.ho);
      t.ow0 = chunk * kPixelChunk;
      t.ow1 = std::min(g.wo, t.ow0 + kPixelChunk);
      t.ob0 = gi * group;
      t.ob1 = std::min(nob, t.ob0 + group);
      if (!side) {
        fn(g, t);
        continue;
      }
      // The epilogue re-reads the tile per output channel; in Y those rows are a channel
      // plane apart (16 KiB at 64x64, the same cache sets): finish the tile in a dense
      // buffer, then copy it out once.
      thread_local std::vector<float> tile;
      tile.resize(size_t(g.o_pad) * kPixelChunk);
      const int64_t p0 = int64_t(t.oh) * g.wo + t.ow0;
      Gemm gt = g;
      gt.y = tile.data();
      gt.y_p0 = p0;
      gt.y_n_stride = 0;
      gt.y_o_stride = kPixelChunk;
      gt.y_p_stride = 1;
      fn(gt, t);
      side(gt, t);
      const int o0 = t.ob0 * g.lanes, o1 = std::min(g.o, t.ob1 * g.lanes);
      copy_rows(&tile[size_t(o0) * kPixelChunk], kPixelChunk, g.y_at(t.n, p0, o0), g.y_o_stride, o1 - o0,
                t.ow1 - t.ow0, false);
    }
  });
}

// The side branches read the input at the output pixel: they need stride 1 and an
// output the size of the input, and their arrays must be complete.
void check_side(const SideBranches& sb, bool conv, bool same_grid, const char* op) {
  if (sb.reads_input() && !same_grid)
    throw std::invalid_argument(std::string(op) +
                                ": SMB/LRMB side branches need stride 1 and an output the size of the input");
  if (sb.rp_b0 && (!conv || !sb.rp_slope || !sb.rp_b1))
    throw std::invalid_argument(std::string(op) + ": RPReLU needs b0, slope and b1 (conv layers only)");
  if (sb.smb_rowptr && (!sb.smb_col || !sb.smb_val))
    throw std::invalid_argument(std::string(op) + ": SMB needs rowptr, col and val");
  if (sb.lr_down && (!sb.lr_up || sb.rank <= 0))
    throw std::invalid_argument(std::string(op) + ": LRMB needs down, up and a positive rank");
}

// Sign packing of one image row / strip through the ISA's packer (see kernel_common.h).
bool pack_planes(Isa isa, const float* x, int c, int64_t stride, int w, int words, uint32_t* bits, uint32_t* zero,
                 float* s) {
#if defined(__x86_64__) || defined(_M_X64)
  if (avx2_helpers(isa)) return detail::pack_row_avx2(x, c, stride, w, words, bits, zero, s);
#endif
  (void)isa;
  return detail::pack_row_scalar(x, c, stride, w, words, bits, zero, s);
}

// A GEMM over pixels: n images of hw pixels, c input and o output channels, with X and Y
// either planar ([n][c][hw], [n][o][hw]: a 1x1, stride-1, unpadded conv) or as rows
// ([n * hw][c], [n * hw][o]: a linear layer).
struct Pointwise {
  int n = 0;
  int64_t hw = 0;
  int c = 0, o = 0;
  bool rows = false;
};

// The GEMM over pixels, one chunk of 64 pixels per work item. Each item first gathers its
// chunk of X into a dense planar [C][64] buffer, and from then on everything of that
// chunk stays in L1/L2: sign packing, LRMB's down projection, the GEMM into a planar
// [O][64] output tile, the side-branch epilogue on that tile, and one copy (or transpose)
// of the finished tile into Y. Why: at the model's 64x64 latent a channel plane is 16 KiB,
// so one chunk's planes all fall into the same few cache sets, and reading them strided
// three times (pack, project, SMB) missed to L3 every time; a linear layer's output rows
// are as bad for the epilogue, which works per output channel.
// `g` is fully prepared from `p` except for the activations. The masked kernel runs only
// on chunks whose activations (or the weights) hold exact zeros; the zero mask of weights
// without zeros is repacked once, by the first such chunk, since most calls have none.
void run_pointwise(Isa isa, const Pointwise& s, const float* x, float* y, Gemm g, Prepared& p, const float* down_t,
                   const ParallelFor& pfor) {
  const int64_t hw = s.hw;
  const int words = num_words(s.c), c = s.c, o = s.o;
  const int rank = g.side && g.side->lr_down ? g.side->rank : 0;
  std::vector<uint32_t> xbits(size_t(s.n * hw * words)), xzero(size_t(s.n * hw * words));
  std::vector<float> xs(size_t(s.n * hw));
  g.n = s.n;
  g.ho = 1;  // each image is one row of hw pixels
  g.wo = int(hw);
  g.wp = hw;
  g.img_pixels = hw;
  g.xbits = xbits.data();
  g.xs = xs.data();
  const int nob = g.o_pad / g.lanes;
  const int64_t ob_bytes = int64_t(g.words) * g.lanes * 4;
  const int group = int(std::max<int64_t>(1, std::min<int64_t>(nob, weight_block_bytes() / ob_bytes)));
  const GemmFn fn = gemm_of(isa);
  const GemmFn side = g.side ? side_of(isa) : nullptr;
  const detail::DownPlanesFn down = down_planes_of(isa);
  const detail::TransposeFn transpose = transpose_of(isa);
  const int64_t nchunks = (hw + kPixelChunk - 1) / kPixelChunk;
  const ParallelFor serial = [](int64_t n, const RangeFn& f) { if (n > 0) f(0, n); };
  // Tiny problems (a time-embedding linear on one row) finish faster than a thread
  // wake-up, which on a busy machine can take a scheduler tick: run them inline.
  const bool small = int64_t(s.n) * hw * nob * words < kInlineWork;
  std::once_flag wz_once;
  (small ? serial : pfor)(int64_t(s.n) * nchunks, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> strip, lr, tile;
    strip.resize(size_t(c) * kPixelChunk);
    lr.resize(size_t(rank) * kPixelChunk);
    tile.resize(size_t(g.o_pad) * kPixelChunk);
    for (int64_t it = b; it < e; ++it) {
      const int n = int(it / nchunks);
      const int64_t p0 = (it % nchunks) * kPixelChunk;
      const int np = int(std::min<int64_t>(kPixelChunk, hw - p0));
      const int64_t pix = int64_t(n) * hw + p0;
      if (s.rows)
        transpose(x + pix * c, c, strip.data(), kPixelChunk, np, c);
      else
        copy_rows(x + int64_t(n) * c * hw + p0, hw, strip.data(), kPixelChunk, c, np, true);
      const bool z = pack_planes(isa, strip.data(), c, kPixelChunk, np, words, &xbits[pix * words],
                                 &xzero[pix * words], &xs[pix]);
      if (rank) down(strip.data(), c, kPixelChunk, np, rank, down_t, lr.data(), kPixelChunk);
      Gemm gt = g;
      if (z || g.wz) {
        if (!g.wz) std::call_once(wz_once, [&] { repack(nullptr, o, 1, words, c, g.lanes, true, &p.wz); });
        gt.wz = p.wz.data();
        gt.xzero = xzero.data();
      }
      gt.x_p0 = gt.y_p0 = p0;
      gt.x = strip.data();
      gt.x_n_stride = 0;
      gt.x_c_stride = kPixelChunk;
      gt.lr_t = rank ? lr.data() : nullptr;
      gt.lr_n_stride = 0;
      gt.lr_r_stride = kPixelChunk;
      gt.y = tile.data();
      gt.y_n_stride = 0;
      gt.y_o_stride = kPixelChunk;
      gt.y_p_stride = 1;
      for (int ob0 = 0; ob0 < nob; ob0 += group) {
        const Tile t{n, 0, int(p0), int(p0) + np, ob0, std::min(nob, ob0 + group)};
        fn(gt, t);
        if (side) side(gt, t);
      }
      if (s.rows)
        transpose(tile.data(), kPixelChunk, y + pix * o, o, o, np);
      else
        copy_rows(tile.data(), kPixelChunk, y + int64_t(n) * o * hw + p0, hw, o, np, false);
    }
  });
}

// Repacks the weights for run_pointwise (the zero mask only when the weights have zeros).
void prepare_pointwise(Isa isa, const Pointwise& s, const int32_t* wbits, const int32_t* wzero, const float* alpha,
                       const float* bias, const SideBranches* side, Prepared* p, Gemm* g) {
  prepare(isa, s.o, 1, num_words(s.c), s.c, wbits, wzero, wzero != nullptr, alpha, bias, p, g);
  static const int64_t tap0 = 0;
  g->tap_off = &tap0;
  g->side = side;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kPopcnt:
      return "popcnt";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kNeon:
      return "neon";
  }
  return "unknown";
}

bool parse_isa(const std::string& name, Isa* out) {
  for (Isa isa : {Isa::kScalar, Isa::kPopcnt, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    if (name == isa_name(isa)) {
      *out = isa;
      return true;
    }
  }
  return false;
}

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kScalar, Isa::kPopcnt, Isa::kNeon, Isa::kAvx2, Isa::kAvx512})
    if (cpu_has(isa)) out.push_back(isa);
  return out;
}

Isa active_isa() {
  const int f = forced_isa();
  return f >= 0 ? Isa(f) : best_isa();
}

bool set_isa(Isa isa) {
  if (!cpu_has(isa)) return false;
  forced_isa();
  g_forced.store(int(isa));
  return true;
}

void reset_isa() {
  forced_isa();
  g_forced.store(-1);
}

ParallelFor default_parallel_for() {
  int threads = int(std::thread::hardware_concurrency());
  if (const char* env = std::getenv("BIMACO_NUM_THREADS")) threads = std::atoi(env);
  threads = std::max(1, threads);
  return [threads](int64_t n, const RangeFn& fn) {
    const int64_t t = std::min<int64_t>(threads, n);
    if (t <= 1) {
      if (n > 0) fn(0, n);
      return;
    }
    std::vector<std::thread> pool;
    const int64_t step = (n + t - 1) / t;
    for (int64_t i = 1; i < t; ++i) {
      const int64_t b = i * step, e = std::min(n, b + step);
      if (b < e) pool.emplace_back([&fn, b, e] { fn(b, e); });
    }
    fn(0, std::min(n, step));
    for (auto& th : pool) th.join();
  };
}

void binary_conv2d(const ConvShape& s, const float* x, const int32_t* wbits, const int32_t* wzero,
                   const float* alpha, const float* bias, float* y, const ParallelFor& pfor,
                   const SideBranches* side) {
  if (s.n <= 0 || s.c <= 0 || s.o <= 0 || s.out_h() <= 0 || s.out_w() <= 0)
    throw std::invalid_argument("binary_conv2d: empty or invalid shape");
  if (side && side->empty()) side = nullptr;
  if (side)
    check_side(*side, true, s.stride_h == 1 && s.stride_w == 1 && s.out_h() == s.h && s.out_w() == s.w,
               "binary_conv2d");
  const Isa isa = active_isa();
  const int words = s.words();
  const bool lowrank = side && side->lr_down;
  const int rank = lowrank ? side->rank : 0;
  std::vector<float> down_t;
  if (lowrank) down_t = transposed(side->lr_down, rank, s.c);  // [C][rank]: one contiguous load per channel
  const bool pointwise = s.kh == 1 && s.kw == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_top == 0 &&
                         s.pad_left == 0 && s.pad_bottom == 0 && s.pad_right == 0;
  if (pointwise) {
    const Pointwise pw{s.n, int64_t(s.h) * s.w, s.c, s.o, false};
    Gemm g;
    Prepared p;
    prepare_pointwise(isa, pw, wbits, wzero, alpha, bias, side, &p, &g);
    run_pointwise(isa, pw, x, y, g, p, lowrank ? down_t.data() : nullptr, pfor);
    return;
  }
  const int64_t hp = int64_t(s.h) + s.pad_top + s.pad_bottom;
  const int64_t wp = int64_t(s.w) + s.pad_left + s.pad_right;
  const int64_t img = hp * wp;
  // zero-initialised: padded pixels keep bits 0 and scale 0, so they contribute 0
  std::vector<uint32_t> xbits(size_t(s.n * img * words), 0u), xzero(size_t(s.n * img * words), 0u);
  std::vector<float> xs(size_t(s.n * img), 0.f);
  std::atomic<bool> any_zero{false};
  const int64_t hw = int64_t(s.h) * s.w;
  const ParallelFor serial = [](int64_t n, const RangeFn& f) { if (n > 0) f(0, n); };
  const bool small = int64_t(s.n) * s.c * hw < 64 * 1024;  // see kInlineWork
  std::vector<float> lr_t(size_t(s.n) * rank * hw);
  const detail::DownPlanesFn down = down_planes_of(isa);
  (small ? serial : pfor)(int64_t(s.n) * s.h, [&](int64_t b, int64_t e) {
    bool z = false;
    for (int64_t r = b; r < e; ++r) {
      const int64_t ni = r / s.h, hi = r % s.h;
      const float* src = x + ni * s.c * hw + hi * s.w;
      // the row was just read for its signs: project it while it is in cache
      if (lowrank) down(src, s.c, hw, s.w, rank, down_t.data(), &lr_t[size_t((ni * rank) * hw + hi * s.w)], hw);
      const int64_t pix = ni * img + (hi + s.pad_top) * wp + s.pad_left;
      z |= pack_planes(isa, src, s.c, hw, s.w, words, &xbits[pix * words], &xzero[pix * words], &xs[pix]);
    }
    if (z) any_zero.store(true);
  });
  const bool masked = any_zero.load() || wzero != nullptr;
  Gemm g;
  Prepared p;
  const int taps = s.kh * s.kw;
  prepare(isa, s.o, taps, words, s.c, wbits, wzero, masked, alpha, bias, &p, &g);
  std::vector<int64_t> tap_off(taps);
  for (int i = 0; i < s.kh; ++i)
    for (int j = 0; j < s.kw; ++j) tap_off[i * s.kw + j] = int64_t(i) * wp + j;
  g.n = s.n;
  g.tap_off = tap_off.data();
  g.ho = s.out_h();
  g.wo = s.out_w();
  g.sh = s.stride_h;
  g.sw = s.stride_w;
  g.wp = wp;
  g.img_pixels = img;
  g.xbits = xbits.data();
  g.xzero = masked ? xzero.data() : nullptr;
  g.xs = xs.data();
  g.y = y;
  g.y_n_stride = int64_t(s.o) * g.ho * g.wo;
  g.y_o_stride = int64_t(g.ho) * g.wo;
  g.y_p_stride = 1;
  g.side = side;
  g.x = x;
  g.x_n_stride = int64_t(s.c) * hw;
  g.x_c_stride = hw;
  g.lr_t = lowrank ? lr_t.data() : nullptr;
  g.lr_n_stride = int64_t(rank) * hw;
  g.lr_r_stride = hw;
  run_tiles(isa, g, pfor);
}

void binary_linear(const LinearShape& s, const float* x, const int32_t* wbits, const int32_t* wzero,
                   const float* alpha, const float* bias, float* y, const ParallelFor& pfor,
                   const SideBranches* side) {
  if (s.rows < 0 || s.k <= 0 || s.o <= 0) throw std::invalid_argument("binary_linear: invalid shape");
  if (side && side->empty()) side = nullptr;
  if (side) check_side(*side, false, true, "binary_linear");
  if (s.rows == 0) return;
  if (s.rows > int64_t(1) << 30) throw std::invalid_argument("binary_linear: too many rows");
  const Isa isa = active_isa();
  const Pointwise pw{1, s.rows, s.k, s.o, true};
  std::vector<float> down_t;
  if (side && side->lr_down) down_t = transposed(side->lr_down, side->rank, s.k);  // [K][rank]
  Gemm g;
  Prepared p;
  prepare_pointwise(isa, pw, wbits, wzero, alpha, bias, side, &p, &g);
  run_pointwise(isa, pw, x, y, g, p, down_t.empty() ? nullptr : down_t.data(), pfor);
}

}  // namespace cpu
}  // namespace bimaco
