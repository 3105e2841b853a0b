// Host tests of the TensorRT-free plugin logic (plugins_cpp/core/). No framework:
// each TEST registers itself; main runs them all and exits non-zero on a failure.
// `test_core --dump-fields` prints the advertised fields as JSON instead, so the
// pytest side can hold them to bimaco_deploy/plugins/contract.py.
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <atomic>
#include <cstdlib>
#include <new>

#include "fields.h"
#include "registration.h"
#include "shapes.h"

// Every heap allocation of this program goes through here, so a test can assert that a
// code path allocates nothing (the per-inference path of the plugin must not).
namespace {
std::atomic<long> g_allocations{0};
}
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
// These replacements pair malloc with free themselves; GCC, seeing free() inlined where
// the standard allocator called operator new, reports a mismatch that is not one.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC diagnostic pop
#endif

using namespace bimaco;
using namespace bimaco::core;

namespace {

struct TestCase {
  const char* name;
  std::function<void()> fn;
};
std::vector<TestCase>& registry() {
  static std::vector<TestCase> r;
  return r;
}
struct Register {
  Register(const char* n, std::function<void()> f) { registry().push_back({n, std::move(f)}); }
};
int g_failures = 0;

#define TEST(name)                             \
  void name();                                 \
  static Register reg_##name(#name, name);     \
  void name()

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                             \
    }                                                                           \
  } while (0)

#define CHECK_CONTAINS(text, needle)                                                              \
  do {                                                                                            \
    if (std::string(text).find(needle) == std::string::npos) {                                    \
      std::fprintf(stderr, "  %s:%d: '%s' does not contain '%s'\n", __FILE__, __LINE__,            \
                   std::string(text).c_str(), needle);                                            \
      ++g_failures;                                                                               \
    }                                                                                             \
  } while (0)

// Views of owned fields, as the plugin builds PluginFields from getFieldsToSerialize.
std::vector<FieldView> views(const std::vector<OwnedField>& owned) {
  std::vector<FieldView> v;
  for (const OwnedField& f : owned) v.push_back({f.name, f.type, f.ints.data(), static_cast<int32_t>(f.ints.size())});
  return v;
}

FieldView ints_field(const char* name, const std::vector<int32_t>& data) {
  return {name, FieldType::kInt32, data.data(), static_cast<int32_t>(data.size())};
}

OpParams conv_params(int c, int k, int s, int pad) {
  OpParams p;
  p.kind = OpKind::kConv2d;
  p.conv.in_channels = c;
  p.conv.kernel[0] = p.conv.kernel[1] = k;
  p.conv.strides[0] = p.conv.strides[1] = s;
  for (int& v : p.conv.pads) v = pad;
  return p;
}

OpParams linear_params(int k) {
  OpParams p;
  p.kind = OpKind::kLinear;
  p.linear.in_features = k;
  return p;
}

std::vector<TensorInfo> conv_inputs(Dims x, int o, int k, int c, TensorType xt = TensorType::kFloat32,
                                    bool wzero = false) {
  std::vector<TensorInfo> in = {{x, xt, true},
                                {{o, k, k, num_words(c)}, TensorType::kInt32, true},
                                {{o}, TensorType::kFloat32, true},
                                {{o}, TensorType::kFloat32, true}};
  if (wzero) in.push_back({{o, k, k, num_words(c)}, TensorType::kInt32, true});
  return in;
}

// ------------------------------------------------------------------ fields

TEST(conv_fields_roundtrip) {
  OpParams p = conv_params(33, 3, 2, 1);
  p.conv.pads[2] = 0;  // asymmetric
  OpParams q;
  Status st = parse_fields(OpKind::kConv2d, views(serialize_fields(p)), "l", &q);
  CHECK(st.ok);
  CHECK(q == p);
  CHECK(q.conv.pads[2] == 0 && q.conv.pads[3] == 1);
}

TEST(linear_fields_roundtrip) {
  OpParams p = linear_params(192), q;
  CHECK(parse_fields(OpKind::kLinear, views(serialize_fields(p)), "l", &q).ok);
  CHECK(q == p);
}

TEST(serialized_fields_follow_specs) {
  for (OpKind kind : {OpKind::kConv2d, OpKind::kLinear}) {
    const OpParams p = kind == OpKind::kConv2d ? conv_params(8, 3, 1, 1) : linear_params(8);
    const auto specs = field_specs(kind);
    const auto owned = serialize_fields(p);
    CHECK(specs.size() == owned.size());
    for (size_t i = 0; i < specs.size() && i < owned.size(); ++i) {
      CHECK(owned[i].name == specs[i].name);
      CHECK(static_cast<int32_t>(owned[i].ints.size()) == specs[i].length);
    }
  }
}

TEST(defaults_apply_for_strides_and_pads) {
  std::vector<int32_t> c = {16}, k = {1, 1};
  OpParams q;
  CHECK(parse_fields(OpKind::kConv2d, {ints_field("in_channels", c), ints_field("kernel_shape", k)}, "", &q).ok);
  CHECK(q.conv.strides[0] == 1 && q.conv.strides[1] == 1);
  CHECK(q.conv.pads[0] == 0 && q.conv.pads[3] == 0);
}

TEST(int64_fields_are_accepted) {
  std::vector<int64_t> c = {40}, k = {3, 3};
  OpParams q;
  std::vector<FieldView> f = {{"in_channels", FieldType::kInt64, c.data(), 1},
                              {"kernel_shape", FieldType::kInt64, k.data(), 2}};
  CHECK(parse_fields(OpKind::kConv2d, f, "", &q).ok);
  CHECK(q.conv.in_channels == 40 && q.conv.kernel[1] == 3);
}

TEST(missing_required_field_is_named) {
  std::vector<int32_t> k = {3, 3};
  OpParams q;
  Status st = parse_fields(OpKind::kConv2d, {ints_field("kernel_shape", k)}, "input_blocks.1.0.in_layers.2", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "in_channels");
  CHECK_CONTAINS(st.message, "input_blocks.1.0.in_layers.2");
  st = parse_fields(OpKind::kLinear, {}, "qkv", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "in_features");
}

TEST(wrong_lengths_and_types_are_rejected) {
  std::vector<int32_t> c = {8}, k = {3, 3}, pads2 = {1, 1}, neg = {-1, 0, 0, 0}, zero_stride = {0, 1};
  OpParams q;
  Status st = parse_fields(OpKind::kConv2d,
                           {ints_field("in_channels", c), ints_field("kernel_shape", k), ints_field("pads", pads2)},
                           "", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "'pads' has 2 values");
  st = parse_fields(OpKind::kConv2d,
                    {ints_field("in_channels", c), ints_field("kernel_shape", k), ints_field("pads", neg)}, "", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "non-negative");
  st = parse_fields(OpKind::kConv2d,
                    {ints_field("in_channels", c), ints_field("kernel_shape", k), ints_field("strides", zero_stride)},
                    "", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "strides must be positive");
  float f = 1.0f;
  st = parse_fields(OpKind::kLinear, {{"in_features", FieldType::kFloat32, &f, 1}}, "", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "must be integer");
  std::vector<int32_t> zero = {0};
  st = parse_fields(OpKind::kLinear, {ints_field("in_features", zero)}, "", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "positive");
}

TEST(unknown_field_is_an_error) {
  std::vector<int32_t> k = {8}, one = {1};
  OpParams q;
  Status st = parse_fields(OpKind::kLinear, {ints_field("in_features", k), ints_field("fuse_rprelu", one)}, "", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "unknown field 'fuse_rprelu'");
}

TEST(plugin_version_and_namespace_are_checked) {
  std::vector<int32_t> k = {8};
  const char v1[] = "1", ns[] = "bimaco", v2[] = "2";
  OpParams q;
  // some writers count the NUL, some do not: both must parse
  CHECK(parse_fields(OpKind::kLinear,
                     {ints_field("in_features", k), {"plugin_version", FieldType::kChar, v1, 1},
                      {"plugin_namespace", FieldType::kChar, ns, 7}},
                     "", &q)
            .ok);
  Status st = parse_fields(OpKind::kLinear, {ints_field("in_features", k), {"plugin_version", FieldType::kChar, v2, 1}},
                           "", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "plugin_version is '2'");
}

TEST(params_key_distinguishes_params) {
  CHECK(params_key(conv_params(8, 3, 1, 1)) != params_key(conv_params(8, 3, 2, 1)));
  CHECK(params_key(conv_params(8, 3, 1, 1)) == params_key(conv_params(8, 3, 1, 1)));
  CHECK(params_key(linear_params(8)) != params_key(linear_params(9)));
  CHECK_CONTAINS(params_key(conv_params(8, 3, 1, 1)), "BinaryConv2d_v1");
}

// ------------------------------------------------------------------ shapes

TEST(conv_output_extent_matches_onnx_floor_rule) {
  IntArith a;
  // (size + p0 + p1 - k) / s + 1, compared with a brute-force count of window starts
  for (int size = 1; size <= 20; ++size)
    for (int k = 1; k <= 3; ++k)
      for (int s = 1; s <= 3; ++s)
        for (int p = 0; p < k; ++p) {
          int starts = 0;
          for (int pos = -p; pos + k <= size + p; pos += s) ++starts;
          if (starts == 0) continue;
          CHECK(conv_out_extent(a, size, k, s, p, p) == starts);
        }
  CHECK(conv_out_extent(a, 64, 3, 2, 1, 1) == 32);
  CHECK(conv_out_extent(a, 7, 3, 2, 1, 0) == 3);  // asymmetric
}

TEST(floor_div_rounds_down_for_negatives) {
  IntArith a;
  CHECK(a.floor_div(-1, 2) == -1);
  CHECK(a.floor_div(-4, 2) == -2);
  CHECK(a.floor_div(5, 2) == 2);
}

TEST(conv_output_dims_keep_dynamic_axes) {
  Dims y;
  CHECK(output_dims(conv_params(40, 3, 2, 1), conv_inputs({-1, 40, 64, -1}, 24, 3, 40), "", &y).ok);
  CHECK((y == Dims{-1, 24, 32, -1}));
}

TEST(conv_input_too_small_is_an_error) {
  Dims y;
  Status st = output_dims(conv_params(8, 3, 1, 0), conv_inputs({1, 8, 2, 8}, 8, 3, 8), "down", &y);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "height 2 is too small");
}

TEST(linear_output_dims_replace_last_axis) {
  std::vector<TensorInfo> in = {{{-1, 4096, 192}, TensorType::kFloat16, true},
                                {{576, 6}, TensorType::kInt32, true},
                                {{576}, TensorType::kFloat32, true},
                                {{576}, TensorType::kFloat32, true}};
  Dims y;
  CHECK(output_dims(linear_params(192), in, "", &y).ok);
  CHECK((y == Dims{-1, 4096, 576}));
}

TEST(check_inputs_names_the_bad_input) {
  // X channels disagree with in_channels
  Status st = check_inputs(conv_params(40, 3, 1, 1), conv_inputs({1, 41, 8, 8}, 8, 3, 40), "mid");
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "input 0 (X) has shape [1, 41, 8, 8], expected [?, 40, ?, ?]");
  // Wbits word count disagrees with in_channels (33 channels need 2 words)
  auto in = conv_inputs({1, 33, 8, 8}, 8, 3, 32);
  st = check_inputs(conv_params(33, 3, 1, 1), in, "");
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "input 1 (Wbits)");
  // alpha length disagrees with O
  in = conv_inputs({1, 8, 8, 8}, 8, 3, 8);
  in[2].dims = {7};
  st = check_inputs(conv_params(8, 3, 1, 1), in, "");
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "input 2 (alpha)");
  // Wbits of the wrong type (uint8 widened elsewhere, or float)
  in = conv_inputs({1, 8, 8, 8}, 8, 3, 8);
  in[1].type = TensorType::kFloat32;
  st = check_inputs(conv_params(8, 3, 1, 1), in, "");
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "input 1 (Wbits) is float32, expected int32");
  // X of an unsupported type
  in = conv_inputs({1, 8, 8, 8}, 8, 3, 8, TensorType::kInt32);
  st = check_inputs(conv_params(8, 3, 1, 1), in, "");
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "expected float32 or float16");
  // Wzero must have the layout of Wbits
  in = conv_inputs({1, 8, 8, 8}, 8, 3, 8, TensorType::kFloat32, true);
  in[4].dims = {8, 1, 1, 1};
  st = check_inputs(conv_params(8, 3, 1, 1), in, "");
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "input 4 (Wzero)");
  // wrong input count
  in.resize(3);
  st = check_inputs(conv_params(8, 3, 1, 1), in, "");
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "has 3 inputs");
}

TEST(format_combinations) {
  const OpParams p8 = conv_params(8, 3, 1, 1);
  auto in = conv_inputs({1, 8, 8, 8}, 8, 3, 8);
  in.push_back({{1, 8, 8, 8}, TensorType::kFloat32, true});  // Y
  for (int pos = 0; pos < 5; ++pos) CHECK(supports_combination(p8, pos, in.data(), 4, 1));
  in[4].type = TensorType::kFloat16;  // Y must follow X
  CHECK(!supports_combination(p8, 4, in.data(), 4, 1));
  in[0].type = TensorType::kFloat16;
  CHECK(supports_combination(p8, 0, in.data(), 4, 1));
  CHECK(supports_combination(p8, 4, in.data(), 4, 1));
  in[0].linear = false;  // e.g. kCHW32
  CHECK(!supports_combination(p8, 0, in.data(), 4, 1));
  in[0] = {{1, 8, 8, 8}, TensorType::kOther, true};  // e.g. int8 or bf16
  CHECK(!supports_combination(p8, 0, in.data(), 4, 1));
  in[0].type = TensorType::kFloat32;
  in[1].type = TensorType::kFloat32;  // weights stay int32
  CHECK(!supports_combination(p8, 1, in.data(), 4, 1));
  in[1].type = TensorType::kInt32;
  in[2].type = TensorType::kFloat16;  // alpha stays float32 even for fp16 X
  CHECK(!supports_combination(p8, 2, in.data(), 4, 1));
  // with Wzero: position 4 is an input (int32), position 5 the output
  auto in5 = conv_inputs({1, 8, 8, 8}, 8, 3, 8, TensorType::kFloat32, true);
  in5.push_back({{1, 8, 8, 8}, TensorType::kFloat32, true});
  CHECK(supports_combination(p8, 4, in5.data(), 5, 1));
  CHECK(supports_combination(p8, 5, in5.data(), 5, 1));
  in5[4].type = TensorType::kFloat32;
  CHECK(!supports_combination(p8, 4, in5.data(), 5, 1));
  CHECK(!supports_combination(p8, 0, in5.data(), 5, 2));  // one output only
}

TEST(plan_conv_launch) {
  OpParams p = conv_params(33, 3, 2, 1);
  p.conv.pads[3] = 0;
  LaunchPlan plan;
  Status st = plan_launch(p, conv_inputs({2, 33, 9, 10}, 17, 3, 33, TensorType::kFloat16, true), "", &plan);
  CHECK(st.ok);
  CHECK(plan.kind == OpKind::kConv2d);
  CHECK(plan.dtype == DType::kFloat16);
  CHECK(plan.has_wzero);
  CHECK(!plan.empty);
  CHECK(plan.conv.n == 2 && plan.conv.c == 33 && plan.conv.h == 9 && plan.conv.w == 10 && plan.conv.o == 17);
  CHECK(plan.conv.words() == 2);
  CHECK(plan.conv.pad_right == 0 && plan.conv.pad_bottom == 1);
  CHECK(plan.conv.out_h() == 5 && plan.conv.out_w() == 5);
}

TEST(plan_linear_launch_flattens_leading_dims) {
  std::vector<TensorInfo> in = {{{2, 3, 5, 70}, TensorType::kFloat32, true},
                                {{9, 3}, TensorType::kInt32, true},
                                {{9}, TensorType::kFloat32, true},
                                {{9}, TensorType::kFloat32, true}};
  LaunchPlan plan;
  CHECK(plan_launch(linear_params(70), in, "", &plan).ok);
  CHECK(plan.linear.rows == 30 && plan.linear.k == 70 && plan.linear.o == 9);
  CHECK(plan.linear.words() == 3);
  CHECK(!plan.has_wzero);
  in[0].dims[0] = 0;
  CHECK(plan_launch(linear_params(70), in, "", &plan).ok);
  CHECK(plan.empty);
}

TEST(plan_needs_concrete_shapes) {
  LaunchPlan plan;
  Status st = plan_launch(conv_params(8, 1, 1, 0), conv_inputs({-1, 8, 8, 8}, 8, 1, 8), "", &plan);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "concrete shapes");
}

// ------------------------------------------------------------------ per-call launch (enqueue)

TensorInfo y_like(Dims d, TensorType t) { return {d, t, true}; }

TEST(launch_follows_the_descriptors_of_each_call) {
  // The builder times fp32 and fp16 kernels of one layer on one plugin object; a plan
  // made for the first type must never serve the second.
  const OpParams p = conv_params(40, 3, 1, 1);
  LaunchCache cache;
  const LaunchPlan* plan = nullptr;
  auto in32 = conv_inputs({2, 40, 8, 8}, 24, 3, 40, TensorType::kFloat32);
  auto in16 = conv_inputs({2, 40, 8, 8}, 24, 3, 40, TensorType::kFloat16);
  const TensorInfo y32 = y_like({2, 24, 8, 8}, TensorType::kFloat32), y16 = y_like({2, 24, 8, 8}, TensorType::kFloat16);
  CHECK(cache.plan(p, in32.data(), 4, &y32, "l", &plan).ok);
  CHECK(plan != nullptr && plan->dtype == DType::kFloat32);
  CHECK(cache.plan(p, in16.data(), 4, &y16, "l", &plan).ok);
  CHECK(plan->dtype == DType::kFloat16);
  CHECK(cache.replans() == 2);
  CHECK(cache.plan(p, in16.data(), 4, &y16, "l", &plan).ok);  // unchanged: no new plan
  CHECK(cache.replans() == 2);
  // a new spatial size re-plans, and the plan carries it
  auto big = conv_inputs({2, 40, 16, 8}, 24, 3, 40, TensorType::kFloat16);
  const TensorInfo ybig = y_like({2, 24, 16, 8}, TensorType::kFloat16);
  CHECK(cache.plan(p, big.data(), 4, &ybig, "l", &plan).ok);
  CHECK(cache.replans() == 3 && plan->conv.h == 16 && plan->y_dims[2] == 16);
  // an input count that now includes Wzero re-plans too
  auto with_zero = conv_inputs({2, 40, 16, 8}, 24, 3, 40, TensorType::kFloat16, true);
  CHECK(cache.plan(p, with_zero.data(), 5, &ybig, "l", &plan).ok);
  CHECK(plan->has_wzero && cache.replans() == 4);
}

TEST(output_descriptor_must_match_the_launch) {
  const OpParams p = conv_params(40, 3, 1, 1);
  LaunchCache cache;
  const LaunchPlan* plan = nullptr;
  auto in32 = conv_inputs({2, 40, 8, 8}, 24, 3, 40, TensorType::kFloat32);
  // fp32 X with an fp16 Y buffer: the kernel would write twice the buffer's size
  const TensorInfo y16 = y_like({2, 24, 8, 8}, TensorType::kFloat16);
  Status st = cache.plan(p, in32.data(), 4, &y16, "mid", &plan);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "output is float16 [2, 24, 8, 8], the launch writes float32 [2, 24, 8, 8]");
  CHECK_CONTAINS(st.message, "'mid'");
  const TensorInfo ysmall = y_like({2, 24, 4, 8}, TensorType::kFloat32);
  CHECK(!cache.plan(p, in32.data(), 4, &ysmall, "mid", &plan).ok);
  TensorInfo y32 = y_like({2, 24, 8, 8}, TensorType::kFloat32);
  y32.linear = false;
  CHECK(!cache.plan(p, in32.data(), 4, &y32, "mid", &plan).ok);
  // an input that no longer checks out is an error, not a stale plan
  y32.linear = true;
  CHECK(cache.plan(p, in32.data(), 4, &y32, "mid", &plan).ok);
  auto bad = in32;
  bad[1].type = TensorType::kFloat32;
  CHECK(!cache.plan(p, bad.data(), 4, &y32, "mid", &plan).ok);
}

TEST(per_call_planning_does_not_allocate) {
  const OpParams conv = conv_params(40, 3, 1, 1), lin = linear_params(70);
  auto in = conv_inputs({2, 40, 8, 8}, 24, 3, 40, TensorType::kFloat16, true);
  const TensorInfo y = y_like({2, 24, 8, 8}, TensorType::kFloat16);
  std::vector<TensorInfo> lin_in = {{{2, 3, 70}, TensorType::kFloat32, true},
                                    {{9, 3}, TensorType::kInt32, true},
                                    {{9}, TensorType::kFloat32, true},
                                    {{9}, TensorType::kFloat32, true}};
  const TensorInfo ylin = y_like({2, 3, 9}, TensorType::kFloat32);
  const std::string layer = "input_blocks.1.0.in_layers.2";  // longer than any small-string buffer
  LaunchCache cache, lin_cache;
  const LaunchPlan* plan = nullptr;
  const long before = g_allocations.load();
  const bool first = cache.plan(conv, in.data(), 5, &y, layer, &plan).ok;     // plans from scratch
  const bool again = cache.plan(conv, in.data(), 5, &y, layer, &plan).ok;     // cached
  const bool linear = lin_cache.plan(lin, lin_in.data(), 4, &ylin, layer, &plan).ok;
  const long allocated = g_allocations.load() - before;
  CHECK(first && again && linear);
  CHECK(allocated == 0);
  if (allocated) std::fprintf(stderr, "  %ld heap allocations on the per-call path\n", allocated);
  // the counter itself works: an error message is built on the heap
  const long before_err = g_allocations.load();
  auto bad = in;
  bad[2].type = TensorType::kInt32;
  CHECK(!cache.plan(conv, bad.data(), 5, &y, layer, &plan).ok);
  CHECK(g_allocations.load() > before_err);
}

// ------------------------------------------------------------------ fused side branches

OpParams fused_conv(int c, bool rprelu, bool smb, int rank) {
  OpParams p = conv_params(c, 3, 1, 1);
  p.side.rprelu = rprelu;
  p.side.smb = smb;
  p.side.lrmb_rank = rank;
  return p;
}

// X, Wbits, alpha, bias, [Wzero], rprelu, smb_rowptr, smb_col, smb_val, lr_down, lr_up.
std::vector<TensorInfo> fused_inputs(int c, int o, int rank, int nnz, bool wzero, TensorType xt,
                                     TensorType side_t) {
  auto in = conv_inputs({2, c, 8, 8}, o, 3, c, xt, wzero);
  in.push_back({{3, o}, side_t, true});
  in.push_back({{(o + 2) / 2}, TensorType::kInt32, true});  // o + 1 row starts, two per word
  in.push_back({{(nnz + 1) / 2}, TensorType::kInt32, true});
  in.push_back({{nnz}, side_t, true});
  in.push_back({{rank, c}, side_t, true});
  in.push_back({{o, rank}, side_t, true});
  return in;
}

TEST(side_fields_roundtrip_and_key) {
  const OpParams p = fused_conv(40, true, true, 8);
  OpParams q;
  CHECK(parse_fields(OpKind::kConv2d, views(serialize_fields(p)), "l", &q).ok);
  CHECK(q == p && q.side.rprelu && q.side.smb && q.side.lrmb_rank == 8);
  CHECK(!(q == fused_conv(40, true, true, 4)));
  CHECK(params_key(p) != params_key(fused_conv(40, false, true, 8)));
  CHECK(params_key(p) != params_key(conv_params(40, 3, 1, 1)));
  OpParams lin = linear_params(192), lq;
  lin.side.smb = true;
  lin.side.lrmb_rank = 8;
  CHECK(parse_fields(OpKind::kLinear, views(serialize_fields(lin)), "l", &lq).ok && lq == lin);
  // absent side fields: the plain op (ONNX nodes written before the fused form existed)
  std::vector<int32_t> c = {16}, k = {3, 3};
  CHECK(parse_fields(OpKind::kConv2d, {ints_field("in_channels", c), ints_field("kernel_shape", k)}, "", &q).ok);
  CHECK(!q.side.any());
}

TEST(side_fields_are_validated) {
  std::vector<int32_t> c = {16}, k = {3, 3}, one = {1}, two = {2}, s2 = {2, 2}, big = {kMaxLrmbRank + 1};
  OpParams q;
  Status st = parse_fields(OpKind::kConv2d, {ints_field("in_channels", c), ints_field("kernel_shape", k),
                                             ints_field("strides", s2), ints_field("smb", one)}, "down", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "stride 1 and an output the size of the input");
  // RPReLU alone needs no input at the output pixel: a strided layer may carry it
  CHECK(parse_fields(OpKind::kConv2d, {ints_field("in_channels", c), ints_field("kernel_shape", k),
                                       ints_field("strides", s2), ints_field("rprelu", one)}, "down", &q).ok);
  st = parse_fields(OpKind::kConv2d, {ints_field("in_channels", c), ints_field("kernel_shape", k),
                                      ints_field("lrmb_rank", big)}, "", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "lrmb_rank must lie in");
  st = parse_fields(OpKind::kConv2d, {ints_field("in_channels", c), ints_field("kernel_shape", k),
                                      ints_field("smb", two)}, "", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "must be 0 or 1");
  st = parse_fields(OpKind::kLinear, {ints_field("in_features", c), ints_field("rprelu", one)}, "", &q);
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "unknown field 'rprelu'");
}

TEST(side_inputs_layout_and_checks) {
  const OpParams p = fused_conv(40, true, true, 8);
  for (bool wz : {false, true}) {
    auto in = fused_inputs(40, 24, 8, 79, wz, TensorType::kFloat16, TensorType::kFloat16);
    InputLayout l;
    CHECK(input_layout(p, static_cast<int>(in.size()), "", &l).ok);
    const int b = wz ? 5 : 4;
    CHECK(l.wzero == (wz ? 4 : -1) && l.rprelu == b && l.smb_rowptr == b + 1 && l.smb_col == b + 2 &&
          l.smb_val == b + 3 && l.lr_down == b + 4 && l.lr_up == b + 5);
    CHECK(check_inputs(p, in, "").ok);
    LaunchPlan plan;
    CHECK(plan_launch(p, in, "", &plan).ok && plan.smb_nnz == 79 && plan.side.lrmb_rank == 8);
  }
  auto in = fused_inputs(40, 24, 8, 79, false, TensorType::kFloat16, TensorType::kFloat16);
  auto bad = in;
  bad[6] = {{41}, TensorType::kInt32, true};  // smb_col: 79 entries take 40 words
  Status st = check_inputs(p, bad, "l");
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "input 6 (smb_col) has shape [41], expected [40]");
  bad = in;
  bad[4].type = TensorType::kFloat32;  // side parameters follow X (fp16 here)
  st = check_inputs(p, bad, "l");
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "input 4 (rprelu) is float32, expected float16");
  bad = in;
  bad[5] = {{25}, TensorType::kInt32, true};  // smb_rowptr: 25 row starts take 13 words
  st = check_inputs(p, bad, "l");
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "input 5 (smb_rowptr) has shape [25], expected [13]");
  auto big = fused_inputs(40, 24, 8, kSmbMaxEntries + 1, false, TensorType::kFloat16, TensorType::kFloat16);
  st = check_inputs(p, big, "l");
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "16-bit row starts");
  bad = in;
  bad[8] = {{8, 41}, TensorType::kFloat16, true};
  CHECK(!check_inputs(p, bad, "l").ok);
  bad = in;
  bad.pop_back();  // lr_up missing
  st = check_inputs(p, bad, "l");
  CHECK(!st.ok);
  CHECK_CONTAINS(st.message, "expected 10");
}

TEST(format_combinations_with_side_inputs) {
  const OpParams p = fused_conv(40, true, true, 8);
  auto io = fused_inputs(40, 24, 8, 79, true, TensorType::kFloat16, TensorType::kFloat16);
  io.push_back({{2, 24, 8, 8}, TensorType::kFloat16, true});  // Y
  const int n = static_cast<int>(io.size()) - 1;
  for (int pos = 0; pos <= n; ++pos) CHECK(supports_combination(p, pos, io.data(), n, 1));
  io[5].type = TensorType::kFloat32;  // rprelu must follow X
  CHECK(!supports_combination(p, 5, io.data(), n, 1));
  io[5].type = TensorType::kFloat16;
  io[7].type = TensorType::kFloat16;  // smb_col stays int32
  CHECK(!supports_combination(p, 7, io.data(), n, 1));
  io[7].type = TensorType::kInt32;
  io[2].type = TensorType::kFloat16;  // alpha stays float32
  CHECK(!supports_combination(p, 2, io.data(), n, 1));
}

// ------------------------------------------------------------------ static registration bookkeeping

// A registry with TensorRT's documented rules for registerCreator / deregisterCreator:
// one creator per (name, namespace) (version is the same for all of ours), refusal of a
// second one, removal by object identity. It stands in for the registry only to
// observe our bookkeeping; the real one is exercised by tests/plugins/trt_plugin/test_plugin_loading.py.
struct NamedCreator {
  const char* name;
};
class RuleRegistry final : public CreatorRegistry {
 public:
  struct Entry {
    const void* creator;
    std::string key;
  };
  std::vector<Entry> entries;
  int adds = 0, removes = 0;
  bool add(void* creator, const char* ns) override {
    ++adds;
    const std::string key = std::string(ns) + "::" + static_cast<NamedCreator*>(creator)->name;
    for (const Entry& e : entries)
      if (e.key == key) return false;
    entries.push_back({creator, key});
    return true;
  }
  bool remove(const void* creator) override {
    ++removes;
    for (size_t i = 0; i < entries.size(); ++i)
      if (entries[i].creator == creator) {
        entries.erase(entries.begin() + static_cast<long>(i));
        return true;
      }
    return false;
  }
  bool holds(const void* creator) const {
    for (const Entry& e : entries)
      if (e.creator == creator) return true;
    return false;
  }
};

TEST(static_registration_registers_each_creator_once) {
  NamedCreator conv{"BinaryConv2d"}, lin{"BinaryLinear"};
  void* list[] = {&conv, &lin};
  RuleRegistry reg;
  StaticRegistrations mine;
  int refused[StaticRegistrations::kMax], nrefused = -1;
  CHECK(mine.register_all(reg, list, 2, "bimaco", refused, &nrefused) == 2);
  CHECK(nrefused == 0 && mine.registered() == 2 && reg.entries.size() == 2);
  // a second run (e.g. a retry) asks the registry nothing and reports no duplicate
  const int adds = reg.adds;
  CHECK(mine.register_all(reg, list, 2, "bimaco", refused, &nrefused) == 0);
  CHECK(nrefused == 0 && reg.adds == adds && reg.entries.size() == 2);
}

TEST(static_registration_leaves_foreign_creators_alone) {
  // BinaryLinear is already registered by someone else: TensorRT's loadLibrary of the
  // other library, another copy of this one, or the application.
  NamedCreator conv{"BinaryConv2d"}, lin{"BinaryLinear"}, foreign_lin{"BinaryLinear"}, other{"Unrelated"};
  RuleRegistry reg;
  CHECK(reg.add(&foreign_lin, "bimaco") && reg.add(&other, ""));
  void* list[] = {&conv, &lin};
  StaticRegistrations mine;
  int refused[StaticRegistrations::kMax], nrefused = 0;
  CHECK(mine.register_all(reg, list, 2, "bimaco", refused, &nrefused) == 1);
  CHECK(nrefused == 1 && refused[0] == 1);
  CHECK(mine.owns(&conv) && !mine.owns(&lin) && !mine.owns(&foreign_lin));
  // unload: exactly our own registration goes, the foreign ones stay
  CHECK(mine.deregister_all(reg) == 1);
  CHECK(!reg.holds(&conv) && reg.holds(&foreign_lin) && reg.holds(&other));
  CHECK(mine.registered() == 0);
  const int removes = reg.removes;
  CHECK(mine.deregister_all(reg) == 0 && reg.removes == removes);  // nothing left to take back
}

TEST(static_registration_refuses_more_creators_than_it_can_track) {
  NamedCreator many[StaticRegistrations::kMax + 2] = {
      {"a"}, {"b"}, {"c"}, {"d"}, {"e"}, {"f"}, {"g"}, {"h"}, {"i"}, {"j"}};
  void* list[StaticRegistrations::kMax + 2];
  for (int i = 0; i < StaticRegistrations::kMax + 2; ++i) list[i] = &many[i];
  RuleRegistry reg;
  StaticRegistrations mine;
  int nrefused = 0;
  CHECK(mine.register_all(reg, list, StaticRegistrations::kMax + 2, "", nullptr, &nrefused) ==
        StaticRegistrations::kMax);
  // an untracked registration could never be taken back at unload: it is not made at all
  CHECK(nrefused == 2 && static_cast<int>(reg.entries.size()) == StaticRegistrations::kMax);
  CHECK(mine.deregister_all(reg) == StaticRegistrations::kMax && reg.entries.empty());
}

void dump_fields() {
  std::printf("{");
  bool first_op = true;
  for (OpKind kind : {OpKind::kConv2d, OpKind::kLinear}) {
    std::printf("%s\"%s\": [", first_op ? "" : ", ", op_name(kind));
    first_op = false;
    bool first = true;
    for (const FieldSpec& s : field_specs(kind)) {
      std::printf("%s{\"name\": \"%s\", \"length\": %d}", first ? "" : ", ", s.name, s.length);
      first = false;
    }
    std::printf("]");
  }
  std::printf("}\n");
}

// Input positions per op, side-branch combination and Wzero presence, as JSON, for the
// pytest that holds them to contract.OpSpec.layout.
void dump_layouts() {
  std::printf("[");
  bool first = true;
  for (OpKind kind : {OpKind::kConv2d, OpKind::kLinear})
    for (int rp = 0; rp < 2; ++rp)
      for (int smb = 0; smb < 2; ++smb)
        for (int rank : {0, 4})
          for (int wz = 0; wz < 2; ++wz) {
            if (kind == OpKind::kLinear && rp) continue;
            OpParams p = kind == OpKind::kConv2d ? conv_params(8, 3, 1, 1) : linear_params(8);
            p.side.rprelu = rp;
            p.side.smb = smb;
            p.side.lrmb_rank = rank;
            const int n = kMinInputs + wz + p.side.extra_inputs();
            InputLayout l;
            if (!input_layout(p, n, "", &l).ok) continue;
            std::printf("%s{\"op\": \"%s\", \"rprelu\": %d, \"smb\": %d, \"lrmb_rank\": %d, \"n\": %d, "
                        "\"positions\": {\"Wzero\": %d, \"rprelu\": %d, \"smb_rowptr\": %d, \"smb_col\": %d, "
                        "\"smb_val\": %d, \"lr_down\": %d, \"lr_up\": %d}}",
                        first ? "" : ", ", op_name(kind), rp, smb, rank, n, l.wzero, l.rprelu, l.smb_rowptr,
                        l.smb_col, l.smb_val, l.lr_down, l.lr_up);
            first = false;
          }
  std::printf("]\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--dump-fields") == 0) {
    dump_fields();
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--dump-layouts") == 0) {
    dump_layouts();
    return 0;
  }
  int failed_tests = 0;
  for (const TestCase& t : registry()) {
    const int before = g_failures;
    t.fn();
    const bool ok = g_failures == before;
    failed_tests += ok ? 0 : 1;
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", t.name);
  }
  std::printf("%zu tests, %d failed\n", registry().size(), failed_tests);
  return failed_tests == 0 ? 0 : 1;
}
