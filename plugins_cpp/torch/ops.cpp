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

using OptTensor = c10::optional<at::Tensor>;

// The layer's side branches as the fused ops receive them (all optional).
struct SideArgs {
  OptTensor rprelu, smb_rowptr, smb_col, smb_val, lr_down, lr_up;
  bool any() const { return rprelu || smb_rowptr || smb_col || smb_val || lr_down || lr_up; }
};

// Tensors that must outlive the kernel call (contiguous copies, LRMB's A x).
struct SideHold {
  at::Tensor rprelu, rowptr, col, val, down, up;
};

void check_float(const at::Tensor& t, at::IntArrayRef shape, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.sizes() == shape, op, ": ", name, " must be float32 ", shape,
              ", got ", t.scalar_type(), " ", t.sizes());
}

// Validates the side-branch tensors against the layer (o outputs, c inputs) and fills
// `sb`; `h` keeps the contiguous tensors alive for the call.
void prepare_side(const SideArgs& a, int64_t o, int64_t c, bool conv, const char* op, SideHold* h,
                  bc::SideBranches* sb) {
  if (a.rprelu) {
    TORCH_CHECK(conv, op, ": RPReLU belongs to conv layers");
    check_float(*a.rprelu, {3, o}, op, "rprelu (rows b0, slope, b1)");
    h->rprelu = a.rprelu->contiguous();
    const float* rp = h->rprelu.data_ptr<float>();
    sb->rp_b0 = rp;
    sb->rp_slope = rp + o;
    sb->rp_b1 = rp + 2 * o;
  }
  const bool smb = a.smb_rowptr || a.smb_col || a.smb_val;
  if (smb) {
    TORCH_CHECK(a.smb_rowptr && a.smb_col && a.smb_val, op, ": SMB needs smb_rowptr, smb_col and smb_val");
    TORCH_CHECK(a.smb_rowptr->scalar_type() == at::kInt && a.smb_rowptr->dim() == 1 && a.smb_rowptr->size(0) == o + 1,
                op, ": smb_rowptr must be int32 [", o + 1, "], got ", a.smb_rowptr->scalar_type(), " ",
                a.smb_rowptr->sizes());
    const int64_t nnz = a.smb_col->numel();
    TORCH_CHECK(a.smb_col->scalar_type() == at::kShort && a.smb_col->dim() == 1, op, ": smb_col must be int16 [nnz], got ",
                a.smb_col->scalar_type(), " ", a.smb_col->sizes());
    check_float(*a.smb_val, {nnz}, op, "smb_val");
    h->rowptr = a.smb_rowptr->contiguous();
    h->col = a.smb_col->contiguous();
    h->val = a.smb_val->contiguous();
    // O(O + nnz) per call, small next to the layer: a bad table must not read out of bounds
    const int32_t* rp = h->rowptr.data_ptr<int32_t>();
    TORCH_CHECK(rp[0] == 0 && rp[o] == nnz, op, ": smb_rowptr must run from 0 to nnz=", nnz, ", got ", rp[0],
                " .. ", rp[o]);
    for (int64_t i = 0; i < o; ++i)
      TORCH_CHECK(rp[i] <= rp[i + 1], op, ": smb_rowptr decreases at output ", i);
    const int16_t* cp = h->col.data_ptr<int16_t>();
    for (int64_t e = 0; e < nnz; ++e)
      TORCH_CHECK(cp[e] >= 0 && cp[e] < c, op, ": smb_col[", e, "] = ", cp[e], " is not an input channel (0..",
                  c - 1, ")");
    sb->smb_rowptr = rp;
    sb->smb_col = cp;
    sb->smb_val = h->val.data_ptr<float>();
  }
  if (a.lr_down || a.lr_up) {
    TORCH_CHECK(a.lr_down && a.lr_up, op, ": LRMB needs lr_down and lr_up");
    const int64_t r = a.lr_down->size(0);
    check_float(*a.lr_down, {r, c}, op, "lr_down [rank, in]");
    check_float(*a.lr_up, {o, r}, op, "lr_up [out, rank]");
    TORCH_CHECK(r > 0, op, ": LRMB rank must be positive");
    h->down = a.lr_down->contiguous();
    h->up = a.lr_up->contiguous();
    sb->rank = int(r);
    sb->lr_down = h->down.data_ptr<float>();
    sb->lr_up = h->up.data_ptr<float>();
  }
}

at::Tensor conv_impl(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha, const at::Tensor& bias,
                     at::IntArrayRef stride, at::IntArrayRef padding, int64_t in_channels, const OptTensor& wzero,
                     const SideArgs* side) {
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
  SideHold hold;
  bc::SideBranches sb;
  if (side && side->any()) {
    TORCH_CHECK(!(side->smb_rowptr || side->lr_down) ||
                    (s.stride_h == 1 && s.stride_w == 1 && s.out_h() == s.h && s.out_w() == s.w),
                "binary_conv2d_fused: SMB/LRMB need stride 1 and an output the size of the input, got input ",
                x.sizes(), " stride ", stride, " padding ", padding);
    prepare_side(*side, s.o, s.c, true, "binary_conv2d_fused", &hold, &sb);
  }
  if (s.n > 0)
    bc::binary_conv2d(s, xf.data_ptr<float>(), wb.data_ptr<int32_t>(), wz.defined() ? wz.data_ptr<int32_t>() : nullptr,
                      a.data_ptr<float>(), b.data_ptr<float>(), y.data_ptr<float>(), torch_parallel_for(),
                      side ? &sb : nullptr);
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

at::Tensor binary_conv2d_cpu(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha,
                             const at::Tensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                             int64_t in_channels, const OptTensor& wzero) {
  return conv_impl(x, wbits, alpha, bias, stride, padding, in_channels, wzero, nullptr);
}

at::Tensor binary_conv2d_fused_cpu(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha,
                                   const at::Tensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                                   int64_t in_channels, const OptTensor& wzero, const OptTensor& rprelu,
                                   const OptTensor& smb_rowptr, const OptTensor& smb_col, const OptTensor& smb_val,
                                   const OptTensor& lr_down, const OptTensor& lr_up) {
  const SideArgs side{rprelu, smb_rowptr, smb_col, smb_val, lr_down, lr_up};
  return conv_impl(x, wbits, alpha, bias, stride, padding, in_channels, wzero, &side);
}

at::Tensor linear_impl(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha, const at::Tensor& bias,
                       int64_t in_features, const OptTensor& wzero, const SideArgs* side) {
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
  SideHold hold;
  bc::SideBranches sb;
  if (side && side->any())
    prepare_side(*side, s.o, s.k, false, "binary_linear_fused", &hold, &sb);
  if (s.rows > 0)
    bc::binary_linear(s, xf.data_ptr<float>(), wb.data_ptr<int32_t>(), wz.defined() ? wz.data_ptr<int32_t>() : nullptr,
                      a.data_ptr<float>(), b.data_ptr<float>(), y.data_ptr<float>(), torch_parallel_for(),
                      side ? &sb : nullptr);
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

at::Tensor binary_linear_cpu(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha,
                             const at::Tensor& bias, int64_t in_features, const OptTensor& wzero) {
  return linear_impl(x, wbits, alpha, bias, in_features, wzero, nullptr);
}

at::Tensor binary_linear_fused_cpu(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha,
                                   const at::Tensor& bias, int64_t in_features, const OptTensor& wzero,
                                   const OptTensor& smb_rowptr, const OptTensor& smb_col, const OptTensor& smb_val,
                                   const OptTensor& lr_down, const OptTensor& lr_up) {
  const SideArgs side{c10::nullopt, smb_rowptr, smb_col, smb_val, lr_down, lr_up};
  return linear_impl(x, wbits, alpha, bias, in_features, wzero, &side);
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
  // A whole BiMaCoSR binary layer: the contract op plus its side branches (RPReLU, SMB
  // as CSR, LRMB as its two factors) fused into the GEMM epilogue. CPU kernels here; the
  // CUDA ones (ops_cuda.cu) are the TensorRT plugin's epilogue, held to these by the
  // cuda-marked tests. The packed backend uses the CPU ones and composes elsewhere.
  m.def(
      "binary_conv2d_fused(Tensor x, Tensor wbits, Tensor alpha, Tensor bias, int[2] stride, int[4] padding, "
      "int in_channels, Tensor? wzero=None, Tensor? rprelu=None, Tensor? smb_rowptr=None, Tensor? smb_col=None, "
      "Tensor? smb_val=None, Tensor? lr_down=None, Tensor? lr_up=None) -> Tensor");
  m.def(
      "binary_linear_fused(Tensor x, Tensor wbits, Tensor alpha, Tensor bias, int in_features, Tensor? wzero=None, "
      "Tensor? smb_rowptr=None, Tensor? smb_col=None, Tensor? smb_val=None, Tensor? lr_down=None, "
      "Tensor? lr_up=None) -> Tensor");
  // Introspection and test hooks of the CPU kernels (no tensors: catch-all kernels).
  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("cpu_available_isas() -> str", &cpu_available_isas);
  m.def("cpu_set_isa(str isa) -> bool", &cpu_set_isa);
}

TORCH_LIBRARY_IMPL(bimaco, CPU, m) {
  m.impl("binary_conv2d", &binary_conv2d_cpu);
  m.impl("binary_linear", &binary_linear_cpu);
  m.impl("binary_conv2d_fused", &binary_conv2d_fused_cpu);
  m.impl("binary_linear_fused", &binary_linear_fused_cpu);
}
