// CUDA kernels for the `bimaco` torch operator schemas defined in ops.cpp. A thin
// adapter: check the tensors, allocate the workspace from torch's caching allocator,
// and call the framework-free API of bimaco/binary_ops_cuda.h on torch's current stream.
//
// Only device-generic c10 headers are used (c10::DeviceGuard, the device guard
// interface's current stream and Stream::native_handle) rather than c10/cuda/*: the
// file then also compiles against a CPU-only torch, which is how
// tests/plugins/test_cuda_compile.py checks it on machines without a GPU.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include <vector>

#include "bimaco/binary_ops_cuda.h"

namespace {

cudaStream_t current_stream(const at::Device& device) {
  const c10::Stream stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(device);
  return static_cast<cudaStream_t>(stream.native_handle());
}

void check_cuda(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorName(err), ": ",
              cudaGetErrorString(err));
}

void check_same_device(const at::Tensor& x, const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

void check_params(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha, const at::Tensor& bias,
                  const c10::optional<at::Tensor>& wzero, int64_t channels, int64_t expect_dim, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf, op,
              ": x must be float32 or float16, got ", x.scalar_type());
  TORCH_CHECK(channels > 0 && channels <= INT32_MAX, op, ": channel count must be positive, got ", channels);
  TORCH_CHECK(wbits.scalar_type() == at::kInt && wbits.dim() == expect_dim, op, ": wbits must be int32 with ",
              expect_dim, " dims, got ", wbits.scalar_type(), " ", wbits.sizes());
  const int64_t o = wbits.size(0);
  TORCH_CHECK(o > 0 && o <= INT32_MAX, op, ": wbits must have a positive number of output channels, got ",
              wbits.sizes());
  TORCH_CHECK(wbits.size(-1) == bimaco::num_words(static_cast<int>(channels)), op, ": wbits last dim ",
              wbits.size(-1), " cannot hold ", channels, " channels (need ",
              bimaco::num_words(static_cast<int>(channels)), " int32 words)");
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && alpha.dim() == 1 && alpha.size(0) == o, op,
              ": alpha must be float32 [", o, "], got ", alpha.scalar_type(), " ", alpha.sizes());
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.dim() == 1 && bias.size(0) == o, op,
              ": bias must be float32 [", o, "], got ", bias.scalar_type(), " ", bias.sizes());
  check_same_device(x, wbits, op, "wbits");
  check_same_device(x, alpha, op, "alpha");
  check_same_device(x, bias, op, "bias");
  if (wzero.has_value()) {
    TORCH_CHECK(wzero->scalar_type() == at::kInt && wzero->sizes() == wbits.sizes(), op,
                ": wzero must be int32 of the shape of wbits ", wbits.sizes(), ", got ", wzero->scalar_type(), " ",
                wzero->sizes());
    check_same_device(x, *wzero, op, "wzero");
  }
}

bimaco::DType dtype_of(const at::Tensor& x) {
  return x.scalar_type() == at::kHalf ? bimaco::DType::kFloat16 : bimaco::DType::kFloat32;
}

at::Tensor workspace(const at::Tensor& x, size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
}

using OptTensor = c10::optional<at::Tensor>;

// The fused ops' side-branch tensors, checked and made contiguous in the layout the
// kernels read; `side` points into `hold`, which must outlive the launch.
struct SideHold {
  at::Tensor rprelu, rowptr, col, val, down, up;
};

void prepare_side(const at::Tensor& x, int64_t o, int64_t c, const OptTensor& rprelu, const OptTensor& rowptr,
                  const OptTensor& col, const OptTensor& val, const OptTensor& down, const OptTensor& up,
                  const char* op, SideHold* hold, bimaco::cuda::SideBranches* side) {
  // Side parameters follow X's dtype (the contract); the CPU ops take float32, so a caller
  // with fp16 X may pass float32 tables: they are converted here, once per call.
  auto floats = [&](const at::Tensor& t, at::IntArrayRef shape, const char* name) {
    TORCH_CHECK(t.is_floating_point() && t.sizes() == shape, op, ": ", name, " must be float ", shape, ", got ",
                t.scalar_type(), " ", t.sizes());
    check_same_device(x, t, op, name);
    return t.to(x.scalar_type()).contiguous();
  };
  if (rprelu) {
    hold->rprelu = floats(*rprelu, {3, o}, "rprelu (rows b0, slope, b1)");
    side->rprelu = hold->rprelu.data_ptr();
  }
  if (rowptr || col || val) {
    TORCH_CHECK(rowptr && col && val, op, ": SMB needs smb_rowptr, smb_col and smb_val");
    TORCH_CHECK(rowptr->scalar_type() == at::kInt && rowptr->dim() == 1 && rowptr->size(0) == o + 1, op,
                ": smb_rowptr must be int32 [", o + 1, "], got ", rowptr->scalar_type(), " ", rowptr->sizes());
    TORCH_CHECK(col->scalar_type() == at::kShort && col->dim() == 1, op, ": smb_col must be int16 [nnz], got ",
                col->scalar_type(), " ", col->sizes());
    check_same_device(x, *rowptr, op, "smb_rowptr");
    check_same_device(x, *col, op, "smb_col");
    TORCH_CHECK(col->size(0) <= bimaco::kSmbMaxEntries, op, ": ", col->size(0), " SMB entries exceed the ",
                bimaco::kSmbMaxEntries, " the 16-bit row starts of the CUDA kernels hold");
    // the kernels read 16-bit row starts (the TensorRT plugin's input layout); every start
    // is at most nnz, so the narrowing is exact
    hold->rowptr = rowptr->to(at::kShort).contiguous();
    hold->col = col->contiguous();
    hold->val = floats(*val, {col->size(0)}, "smb_val");
    // The table itself lives on the device; bad entries would read out of bounds. The
    // exporter and pack_layer build it from validated checkpoints: checking it here would
    // cost a device-to-host copy per call.
    TORCH_CHECK(c <= bimaco::kSmbMaxChannels, op, ": SMB columns hold at most ", bimaco::kSmbMaxChannels,
                " input channels, got ", c);
    side->smb_rowptr = reinterpret_cast<const uint16_t*>(hold->rowptr.data_ptr<int16_t>());
    side->smb_col = reinterpret_cast<const uint16_t*>(hold->col.data_ptr<int16_t>());
    side->smb_val = hold->val.data_ptr();
  }
  if (down || up) {
    TORCH_CHECK(down && up, op, ": LRMB needs lr_down and lr_up");
    const int64_t r = down->size(0);
    TORCH_CHECK(r > 0 && r <= bimaco::kMaxLrmbRank, op, ": LRMB rank must lie in [1, ", bimaco::kMaxLrmbRank,
                "], got ", r);
    hold->down = floats(*down, {r, c}, "lr_down [rank, in]");
    hold->up = floats(*up, {o, r}, "lr_up [out, rank]");
    side->rank = static_cast<int>(r);
    side->lr_down = hold->down.data_ptr();
    side->lr_up = hold->up.data_ptr();
  }
}

at::Tensor conv_cuda(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha, const at::Tensor& bias,
                     at::IntArrayRef stride, at::IntArrayRef padding, int64_t in_channels, const OptTensor& wzero,
                     const OptTensor& rprelu, const OptTensor& rowptr, const OptTensor& col, const OptTensor& val,
                     const OptTensor& down, const OptTensor& up, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.size(1) == in_channels, op, ": x has ", x.size(1), " channels, in_channels=", in_channels);
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op, ": stride must be 2 positive ints, got ",
              stride);
  TORCH_CHECK(padding.size() == 4 && padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 && padding[3] >= 0, op,
              ": padding must be 4 non-negative ints (top, left, bottom, right), got ", padding);
  check_params(x, wbits, alpha, bias, wzero, in_channels, 4, op);
  for (int64_t d : x.sizes()) TORCH_CHECK(d <= INT32_MAX, op, ": x dimension ", d, " exceeds the int32 range");
  bimaco::ConvShape s;
  s.n = static_cast<int>(x.size(0));
  s.c = static_cast<int>(x.size(1));
  s.h = static_cast<int>(x.size(2));
  s.w = static_cast<int>(x.size(3));
  s.o = static_cast<int>(wbits.size(0));
  s.kh = static_cast<int>(wbits.size(1));
  s.kw = static_cast<int>(wbits.size(2));
  s.stride_h = static_cast<int>(stride[0]);
  s.stride_w = static_cast<int>(stride[1]);
  s.pad_top = static_cast<int>(padding[0]);
  s.pad_left = static_cast<int>(padding[1]);
  s.pad_bottom = static_cast<int>(padding[2]);
  s.pad_right = static_cast<int>(padding[3]);
  TORCH_CHECK(s.h > 0 && s.w > 0 && s.out_h() > 0 && s.out_w() > 0, op, ": input ", x.sizes(),
              " too small for kernel ", s.kh, "x", s.kw, " with stride ", stride, " and padding ", padding);

  const c10::DeviceGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor wb = wbits.contiguous(), a = alpha.contiguous(), b = bias.contiguous();
  const at::Tensor wz = wzero.has_value() ? wzero->contiguous() : at::Tensor();
  SideHold hold;
  bimaco::cuda::SideBranches side;
  prepare_side(xc, s.o, s.c, rprelu, rowptr, col, val, down, up, op, &hold, &side);
  TORCH_CHECK(!(side.smb_rowptr || side.rank) || (s.stride_h == 1 && s.stride_w == 1 && s.out_h() == s.h &&
                                                 s.out_w() == s.w),
              op, ": SMB/LRMB need stride 1 and an output the size of the input");
  at::Tensor y = at::empty({s.n, s.o, s.out_h(), s.out_w()}, xc.options());
  if (s.n == 0) return y;
  const at::Tensor ws = workspace(xc, bimaco::cuda::conv2d_workspace_bytes(s, side.rank));
  check_cuda(bimaco::cuda::binary_conv2d(s, dtype_of(xc), xc.data_ptr(), wb.data_ptr<int32_t>(),
                                         wz.defined() ? wz.data_ptr<int32_t>() : nullptr, a.data_ptr<float>(),
                                         b.data_ptr<float>(), y.data_ptr(), ws.data_ptr(),
                                         current_stream(xc.device()), side.any() ? &side : nullptr),
             op);
  return y;
}

at::Tensor binary_conv2d_cuda(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha,
                              const at::Tensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                              int64_t in_channels, const OptTensor& wzero) {
  return conv_cuda(x, wbits, alpha, bias, stride, padding, in_channels, wzero, {}, {}, {}, {}, {}, {},
                   "binary_conv2d");
}

at::Tensor binary_conv2d_fused_cuda(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha,
                                    const at::Tensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                                    int64_t in_channels, const OptTensor& wzero, const OptTensor& rprelu,
                                    const OptTensor& smb_rowptr, const OptTensor& smb_col, const OptTensor& smb_val,
                                    const OptTensor& lr_down, const OptTensor& lr_up) {
  return conv_cuda(x, wbits, alpha, bias, stride, padding, in_channels, wzero, rprelu, smb_rowptr, smb_col, smb_val,
                   lr_down, lr_up, "binary_conv2d_fused");
}

at::Tensor linear_cuda(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha, const at::Tensor& bias,
                       int64_t in_features, const OptTensor& wzero, const OptTensor& rowptr, const OptTensor& col,
                       const OptTensor& val, const OptTensor& down, const OptTensor& up, const char* op) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dim");
  TORCH_CHECK(x.size(-1) == in_features, op, ": x has last dim ", x.size(-1), ", in_features=", in_features);
  check_params(x, wbits, alpha, bias, wzero, in_features, 2, op);
  bimaco::LinearShape s;
  s.k = static_cast<int>(in_features);
  s.o = static_cast<int>(wbits.size(0));
  s.rows = x.numel() / in_features;
  TORCH_CHECK(s.rows <= INT32_MAX, op, ": ", s.rows, " rows exceed the int32 range of the CUDA kernels");

  const c10::DeviceGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor wb = wbits.contiguous(), a = alpha.contiguous(), b = bias.contiguous();
  const at::Tensor wz = wzero.has_value() ? wzero->contiguous() : at::Tensor();
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = s.o;
  SideHold hold;
  bimaco::cuda::SideBranches side;
  prepare_side(xc, s.o, s.k, {}, rowptr, col, val, down, up, op, &hold, &side);
  at::Tensor y = at::empty(out_shape, xc.options());
  if (s.rows == 0) return y;
  const at::Tensor ws = workspace(xc, bimaco::cuda::linear_workspace_bytes(s, side.rank));
  check_cuda(bimaco::cuda::binary_linear(s, dtype_of(xc), xc.data_ptr(), wb.data_ptr<int32_t>(),
                                         wz.defined() ? wz.data_ptr<int32_t>() : nullptr, a.data_ptr<float>(),
                                         b.data_ptr<float>(), y.data_ptr(), ws.data_ptr(),
                                         current_stream(xc.device()), side.any() ? &side : nullptr),
             op);
  return y;
}

at::Tensor binary_linear_cuda(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha,
                              const at::Tensor& bias, int64_t in_features, const OptTensor& wzero) {
  return linear_cuda(x, wbits, alpha, bias, in_features, wzero, {}, {}, {}, {}, {}, "binary_linear");
}

at::Tensor binary_linear_fused_cuda(const at::Tensor& x, const at::Tensor& wbits, const at::Tensor& alpha,
                                    const at::Tensor& bias, int64_t in_features, const OptTensor& wzero,
                                    const OptTensor& smb_rowptr, const OptTensor& smb_col, const OptTensor& smb_val,
                                    const OptTensor& lr_down, const OptTensor& lr_up) {
  return linear_cuda(x, wbits, alpha, bias, in_features, wzero, smb_rowptr, smb_col, smb_val, lr_down, lr_up,
                     "binary_linear_fused");
}

}  // namespace

TORCH_LIBRARY_IMPL(bimaco, CUDA, m) {
  m.impl("binary_conv2d", &binary_conv2d_cuda);
  m.impl("binary_linear", &binary_linear_cuda);
  m.impl("binary_conv2d_fused", &binary_conv2d_fused_cuda);
  m.impl("binary_linear_fused", &binary_linear_fused_cuda);
}
