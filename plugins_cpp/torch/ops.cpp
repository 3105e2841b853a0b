// Torch binding of the op contract: defines the `bimaco` operator schemas (the CUDA
// binding, plugins_cpp/torch/ops_cuda.cu, adds CUDA kernels for the same schemas) and
// registers the CPU kernels of plugins_cpp/cpu. Threads follow torch.set_num_threads
// through at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

#include "../cpu/binary_ops_cpu.h"

namespace {

namespace bc = bimaco::cpu;

bc::ParallelFor torch_parallel_for() {
  return [](int64_t n, const bc::RangeFn& fn) {
    // grain 1: the kernels' work items are already coarse (a row strip x a weight block)
    at::parallel_for(0, n, 1, [&fn](int64_t b, int64_t e) { fn(b, e); });
  };
}

void check_params(const at::Tensor& wbits, const at::Tensor& alpha, const at::Tensor& bias,
                  const c10::optional<at::Tensor>& wzero, int64_t channels, int64_t expect_dim,
                  const char* op) {
  TORCH_CHECK(wbits.scalar_type() == at::kInt && wbits.dim() == expect_dim, op, ": wbits must be int32 with ",
              expect_dim, " dims, got ", wbits.scalar_type(), " ", wbits.sizes());
  const int64_t o = wbits.size(0);
  TORCH_CHECK(wbits.size(-1) == bimaco::num_words(int(channels)), op, ": wbits last dim ", wbits.size(-1),
              " cannot hold ", channels, " channels (need ", bimaco::num_words(int(channels)), " int32 words)");
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && alpha.dim() == 1 && alpha.size(0) == o, op,
              ": alpha must be float32 [", o, "], got ", alpha.scalar_type(), " ", alpha.sizes());
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.dim() == 1 && bias.size(0) == o, op,
              ": bias must be float32 [", o, "], got ", bias.scalar_type(), " ", bias.sizes());
  if (wzero.has_value()) {
    TORCH_CHECK(wzero->scalar_type() == at::kInt && wzero->sizes() == wbits.sizes(), op,
                ": wzero must be int32 of the shape of wbits ", wbits.sizes(), ", got ", wzero->scalar_type(),
                " ", wzero->sizes());
  }
}

at::Tensor binary_conv2d_cpu(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha,
                             const at::Tensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                             int64_t in_channels, const c10::optional<at::Tensor>& wzero) {
  TORCH_CHECK(x.dim() == 4, "binary_conv2d: x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf,
              "binary_conv2d: x must be float32 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.size(1) == in_channels, "binary_conv2d: x has ", x.size(1), " channels, in_channels=",
              in_channels);
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0,
              "binary_conv2d: stride must be 2 positive ints, got ", stride);
  TORCH_CHECK(padding.size() == 4 && padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 && padding[3] >= 0,
              "binary_conv2d: padding must be 4 non-negative ints (top, left, bottom, right), got ", padding);
  check_params(wbits, alpha, bias, wzero, in_channels, 4, "binary_conv2d");
  bimaco::ConvShape s;
  s.n = int(x.size(0));
  s.c = int(x.size(1));
  s.h = int(x.size(2));
  s.w = int(x.size(3));
  s.o = int(wbits.size(0));
  s.kh = int(wbits.size(1));
  s.kw = int(wbits.size(2));
  s.stride_h = int(stride[0]);
  s.stride_w = int(stride[1]);
  s.pad_top = int(padding[0]);
  s.pad_left = int(padding[1]);
  s.pad_bottom = int(padding[2]);
  s.pad_right = int(padding[3]);
  TORCH_CHECK(s.out_h() > 0 && s.out_w() > 0, "binary_conv2d: input ", x.sizes(), " too small for kernel ",
              s.kh, "x", s.kw, " with stride ", stride, " and padding ", padding);
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const at::Tensor wb = wbits.contiguous();
  const at::Tensor a = alpha.contiguous(), b = bias.contiguous();
  at::Tensor wz;
  if (wzero.has_value()) wz = wzero->contiguous();
  at::Tensor y = at::empty({s.n, s.o, s.out_h(), s.out_w()}, xf.options());
  if (s.n > 0)
    bc::binary_conv2d(s, xf.data_ptr<float>(), wb.data_ptr<int32_t>(), wz.defined() ? wz.data_ptr<int32_t>() : nullptr,
                      a.data_ptr<float>(), b.data_ptr<float>(), y.data_ptr<float>(), torch_parallel_for());
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

at::Tensor binary_linear_cpu(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha,
                             const at::Tensor& bias, int64_t in_features, const c10::optional<at::Tensor>& wzero) {
  TORCH_CHECK(x.dim() >= 1, "binary_linear: x must have at least one dim");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf,
              "binary_linear: x must be float32 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.size(-1) == in_features, "binary_linear: x has last dim ", x.size(-1), ", in_features=",
              in_features);
  check_params(wbits, alpha, bias, wzero, in_features, 2, "binary_linear");
  bimaco::LinearShape s;
  s.k = int(in_features);
  s.o = int(wbits.size(0));
  s.rows = x.numel() / in_features;
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const at::Tensor wb = wbits.contiguous();
  const at::Tensor a = alpha.contiguous(), b = bias.contiguous();
  at::Tensor wz;
  if (wzero.has_value()) wz = wzero->contiguous();
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = s.o;
  at::Tensor y = at::empty(out_shape, xf.options());
  if (s.rows > 0)
    bc::binary_linear(s, xf.data_ptr<float>(), wb.data_ptr<int32_t>(), wz.defined() ? wz.data_ptr<int32_t>() : nullptr,
                      a.data_ptr<float>(), b.data_ptr<float>(), y.data_ptr<float>(), torch_parallel_for());
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

std::string cpu_isa() { return bc::isa_name(bc::active_isa()); }

std::string cpu_available_isas() {
  std::string out;
  for (bc::Isa isa : bc::available_isas()) {
    if (!out.empty()) out += ",";
    out += bc::isa_name(isa);
  }
  return out;
}

// "auto" returns to the automatic choice; anything else must be an available ISA.
bool cpu_set_isa(const std::string& name) {
  if (name == "auto") {
    bc::reset_isa();
    return true;
  }
  bc::Isa isa;
  return bc::parse_isa(name, &isa) && bc::set_isa(isa);
}

}  // namespace

TORCH_LIBRARY(bimaco, m) {
  m.def(
      "binary_conv2d(Tensor x, Tensor wbits, Tensor alpha, Tensor bias, int[2] stride, int[4] padding, "
      "int in_channels, Tensor? wzero=None) -> Tensor");
  m.def("binary_linear(Tensor x, Tensor wbits, Tensor alpha, Tensor bias, int in_features, Tensor? wzero=None) -> Tensor");
  // Introspection and test hooks of the CPU kernels (no tensors: catch-all kernels).
  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("cpu_available_isas() -> str", &cpu_available_isas);
  m.def("cpu_set_isa(str isa) -> bool", &cpu_set_isa);
}

TORCH_LIBRARY_IMPL(bimaco, CPU, m) {
  m.impl("binary_conv2d", &binary_conv2d_cpu);
  m.impl("binary_linear", &binary_linear_cpu);
}
