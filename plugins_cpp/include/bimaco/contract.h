// The op contract, C++ side. Mirrors bimaco_deploy/plugins/contract.py, which is the
// one home of the contract; tests/plugins/test_contract_header.py holds these
// constants to the Python ones. No framework dependency: used by the CPU kernels,
// the CUDA kernels, the torch bindings and the TensorRT plugin alike.
#pragma once

#include <cstdint>

namespace bimaco {

constexpr int kContractVersion = 1;
constexpr int kWordBits = 32;  // sign bits per packed int32 word
constexpr const char* kPluginVersion = "1";
constexpr const char* kPluginNamespace = "bimaco";
constexpr const char* kConvOpName = "BinaryConv2d";
constexpr const char* kLinearOpName = "BinaryLinear";

// Fused side branches (contract.py, "Fused side branches"): attributes, all 0 by default.
// Nonzero ones add inputs after bias (and Wzero), in this order: rprelu [3][O];
// smb_rowptr int32 [ceil((O+1)/2)] and smb_col int32 [ceil(nnz/2)] (16-bit row starts and
// column indices, two per word, entry 2j in the low half of word j: on the little-endian
// GPU, uint16 arrays), smb_val [nnz]; lr_down [r][C], lr_up [O][r]. Float side inputs
// have X's dtype.
//   conv:   Y = ((RPReLU(core) + SMB(X)) + LRMB(X)),  RPReLU(v) = P(v + b0) + b1
//   linear: Y = ((core + LRMB(X)) + SMB(X))
constexpr const char* kAttrRprelu = "rprelu";
constexpr const char* kAttrSmb = "smb";
constexpr const char* kAttrLrmbRank = "lrmb_rank";
constexpr int kHalfBits = 16;
constexpr int kSmbMaxChannels = 1 << 15;
constexpr int kSmbMaxEntries = (1 << 15) - 1;  // per node: its row starts are 16-bit too
constexpr int kMaxLrmbRank = 64;

// Bit i of word j stands for input channel 32*j + i; a set bit means negative.
inline constexpr int num_words(int channels) { return (channels + kWordBits - 1) / kWordBits; }

// Geometry of one BinaryConv2d call. Input X is NCHW, weights are
// Wbits[O][KH][KW][num_words(C)], output Y is N x O x out_h() x out_w().
struct ConvShape {
  int n = 0, c = 0, h = 0, w = 0;
  int o = 0, kh = 1, kw = 1;
  int stride_h = 1, stride_w = 1;
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;

  constexpr int out_h() const { return (h + pad_top + pad_bottom - kh) / stride_h + 1; }
  constexpr int out_w() const { return (w + pad_left + pad_right - kw) / stride_w + 1; }
  constexpr int words() const { return num_words(c); }
};

// Geometry of one BinaryLinear call: X is rows x k (all leading dims flattened),
// Wbits[O][num_words(k)], Y is rows x o.
struct LinearShape {
  int64_t rows = 0;
  int k = 0;
  int o = 0;
  constexpr int words() const { return num_words(k); }
};

enum class DType : int { kFloat32 = 0, kFloat16 = 1 };

}  // namespace bimaco
