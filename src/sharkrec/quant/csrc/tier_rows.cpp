// F-Quantization training kernels: every field's touched rows read from, and written back to, their tiers in
// one call per batch (sharkrec/quant/kernels.py loads this file; sharkrec/quant/embedding.py holds the same
// algorithm in PyTorch ops, used when no compiler is available and checked against this in the tests).
//
// Storage of field f (MixedPrecisionEmbedding's buffers): tier[f] (R,) int8 code (0 fp32, 1 fp16, 2 int8,
// 3 int4), slot[f] (R,) int32 position in that tier's pool; pools fp32[f] (n32, D) float32, fp16[f] (n16, D)
// float16, int8[f] (n8, D) int8 + int8_scale[f] (n8,), int4[f] (n4, ceil(D/2)) uint8 (low nibble first,
// code = nibble - 8) + int4_scale[f] (n4,).
//
// A batch's rows: `rows` (U,) int64 local row ids, field f's block rows[starts[f]:starts[f+1]].
// Rounding matches sharkrec.quant.codec exactly: scale = max|e| / I_max, code = clamp(floor(e / scale + u))
// with u the caller's uniform draws (stochastic) or round-half-even (nearest); fp16 by round-to-nearest-even
// after clamping to +-65504. Build with -ffp-contract=off so no multiply-add is fused (bit-equal results).
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using TensorList = std::vector<torch::Tensor>;

struct Field {
  const int8_t* tier;
  const int32_t* slot;
  float* fp32;
  c10::Half* fp16;
  int8_t* int8;
  float* int8_scale;
  uint8_t* int4;
  float* int4_scale;
};

Field field_storage(int64_t f, const TensorList& tier, const TensorList& slot, const TensorList& fp32,
                    const TensorList& fp16, const TensorList& int8, const TensorList& int8_scale,
                    const TensorList& int4, const TensorList& int4_scale) {
  return {tier[f].data_ptr<int8_t>(), slot[f].data_ptr<int32_t>(), fp32[f].data_ptr<float>(),
          fp16[f].data_ptr<c10::Half>(), int8[f].data_ptr<int8_t>(), int8_scale[f].data_ptr<float>(),
          int4[f].data_ptr<uint8_t>(), int4_scale[f].data_ptr<float>()};
}

void check_lists(int64_t fields, const TensorList& tier, const TensorList& slot, const TensorList& fp32,
                 const TensorList& fp16, const TensorList& int8, const TensorList& int8_scale,
                 const TensorList& int4, const TensorList& int4_scale) {
  for (const TensorList* list : {&tier, &slot, &fp32, &fp16, &int8, &int8_scale, &int4, &int4_scale}) {
    TORCH_CHECK(static_cast<int64_t>(list->size()) == fields, "one tensor per field in every storage list");
    for (const auto& t : *list) TORCH_CHECK(t.is_contiguous(), "storage tensors must be contiguous");
  }
}

inline void decode(const Field& s, int tier, int64_t slot, int64_t dim, float* out) {
  switch (tier) {
    case 0:
      std::memcpy(out, s.fp32 + slot * dim, dim * sizeof(float));
      break;
    case 1: {
      const c10::Half* src = s.fp16 + slot * dim;
      for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<float>(src[d]);
      break;
    }
    case 2: {
      const int8_t* src = s.int8 + slot * dim;
      const float scale = s.int8_scale[slot];
      for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<float>(src[d]) * scale;
      break;
    }
    default: {
      const int64_t width = (dim + 1) / 2;
      const uint8_t* src = s.int4 + slot * width;
      const float scale = s.int4_scale[slot];
      for (int64_t d = 0; d < dim; ++d) {
        const uint8_t byte = src[d >> 1];
        const int code = (d & 1 ? byte >> 4 : byte & 15) - 8;
        out[d] = static_cast<float>(code) * scale;
      }
    }
  }
}

// Row-wise symmetric codes of `values` (dim,) into `codes`; returns the scale (0 for an all-zero row).
inline float quantize(const float* values, int64_t dim, int max_level, const float* noise, int8_t* codes) {
  float amax = 0.0f;
  for (int64_t d = 0; d < dim; ++d) amax = std::max(amax, std::fabs(values[d]));
  const float scale = amax / static_cast<float>(max_level);
  const float safe = scale > 0.0f ? scale : 1.0f;
  const float level = static_cast<float>(max_level);
  for (int64_t d = 0; d < dim; ++d) {
    const float x = values[d] / safe;
    float q = noise != nullptr ? std::floor(x + noise[d]) : std::nearbyint(x);
    q = std::min(std::max(q, -level), level);
    codes[d] = static_cast<int8_t>(q);
  }
  return scale;
}

inline void encode(const Field& s, int tier, int64_t slot, int64_t dim, const float* values, const float* noise,
                   int8_t* scratch) {
  switch (tier) {
    case 0:
      std::memcpy(s.fp32 + slot * dim, values, dim * sizeof(float));
      break;
    case 1: {
      c10::Half* dst = s.fp16 + slot * dim;
      for (int64_t d = 0; d < dim; ++d) dst[d] = c10::Half(std::min(std::max(values[d], -65504.0f), 65504.0f));
      break;
    }
    case 2:
      s.int8_scale[slot] = quantize(values, dim, 127, noise, s.int8 + slot * dim);
      break;
    default: {
      s.int4_scale[slot] = quantize(values, dim, 7, noise, scratch);
      const int64_t width = (dim + 1) / 2;
      uint8_t* dst = s.int4 + slot * width;
      for (int64_t k = 0; k < width; ++k) {
        const uint8_t low = static_cast<uint8_t>(scratch[2 * k] + 8);
        const uint8_t high = 2 * k + 1 < dim ? static_cast<uint8_t>(scratch[2 * k + 1] + 8) : 8;
        dst[k] = static_cast<uint8_t>(low | (high << 4));
      }
    }
  }
}

}  // namespace

// (U, D) float32 `out` <- the stored values of `rows`; returns (F,) int64, per field the rows held in an
// integer tier (the noise rows a stochastic write of them needs).
torch::Tensor gather_rows(const torch::Tensor& rows, const torch::Tensor& starts, const TensorList& tier,
                          const TensorList& slot, const TensorList& fp32, const TensorList& fp16,
                          const TensorList& int8, const TensorList& int8_scale, const TensorList& int4,
                          const TensorList& int4_scale, int64_t dim, torch::Tensor out) {
  TORCH_CHECK(rows.scalar_type() == torch::kInt64 && rows.is_contiguous(), "rows: (U,) int64");
  TORCH_CHECK(starts.scalar_type() == torch::kInt64 && starts.dim() == 1, "starts: (F + 1,) int64");
  const int64_t fields = starts.size(0) - 1;
  check_lists(fields, tier, slot, fp32, fp16, int8, int8_scale, int4, int4_scale);
  TORCH_CHECK(out.scalar_type() == torch::kFloat32 && out.is_contiguous() && out.size(0) == rows.size(0) &&
                  out.size(1) == dim, "out: (U, D) float32");
  const int64_t* row = rows.data_ptr<int64_t>();
  const int64_t* start = starts.data_ptr<int64_t>();
  float* values = out.data_ptr<float>();
  auto counts = torch::zeros({fields}, torch::kInt64);
  int64_t* integer_rows = counts.data_ptr<int64_t>();
  for (int64_t f = 0; f < fields; ++f) {
    const Field s = field_storage(f, tier, slot, fp32, fp16, int8, int8_scale, int4, int4_scale);
    const int64_t held = tier[f].size(0);
    for (int64_t u = start[f]; u < start[f + 1]; ++u) {
      const int64_t r = row[u];
      TORCH_CHECK(r >= 0 && r < held, "row ", r, " outside field ", f, "'s ", held, " rows");
      const int t = s.tier[r];
      integer_rows[f] += t >= 2;
      decode(s, t, s.slot[r], dim, values + u * dim);
    }
  }
  return counts;
}

// One optimizer step on the touched rows, then each row stored back in its tier.
// values (U, D): the rows as read; grads: per field (U_f, D) float32 or an empty tensor (no gradient: the
// field's rows are left alone); accumulators: per field (R_f,) float32 row-wise Adagrad sums, or an empty list
// for SGD. noise: (N, D) uniform draws, one row per integer-tier row of the fields with a gradient, taken in
// row order (N = 0 for round-to-nearest).
//   sgd:      e <- e - lr * g
//   adagrad:  G_r += mean(g^2);  e <- e - lr * g / (sqrt(G_r) + eps)
void step_rows(const torch::Tensor& rows, const torch::Tensor& starts, const torch::Tensor& values,
               const TensorList& grads, const TensorList& accumulators, double lr, double eps,
               const torch::Tensor& noise, bool stochastic, const TensorList& tier, const TensorList& slot,
               const TensorList& fp32, const TensorList& fp16, const TensorList& int8,
               const TensorList& int8_scale, const TensorList& int4, const TensorList& int4_scale, int64_t dim) {
  const int64_t fields = starts.size(0) - 1;
  check_lists(fields, tier, slot, fp32, fp16, int8, int8_scale, int4, int4_scale);
  TORCH_CHECK(static_cast<int64_t>(grads.size()) == fields, "one gradient (or empty tensor) per field");
  const bool adagrad = !accumulators.empty();
  TORCH_CHECK(!adagrad || static_cast<int64_t>(accumulators.size()) == fields, "one accumulator per field");
  TORCH_CHECK(values.scalar_type() == torch::kFloat32 && values.is_contiguous(), "values: (U, D) float32");
  TORCH_CHECK(!stochastic || (noise.scalar_type() == torch::kFloat32 && noise.is_contiguous()),
              "noise: (N, D) float32");
  const int64_t* row = rows.data_ptr<int64_t>();
  const int64_t* start = starts.data_ptr<int64_t>();
  const float* read = values.data_ptr<float>();
  const float* draws = stochastic ? noise.data_ptr<float>() : nullptr;
  const int64_t noise_rows = stochastic ? noise.size(0) : 0;
  const float rate = static_cast<float>(lr), epsilon = static_cast<float>(eps);
  std::vector<float> updated(dim);
  std::vector<int8_t> scratch(dim + 1);
  int64_t next_noise = 0;
  for (int64_t f = 0; f < fields; ++f) {
    if (grads[f].numel() == 0) continue;
    const torch::Tensor grad_tensor = grads[f].contiguous();
    TORCH_CHECK(grad_tensor.scalar_type() == torch::kFloat32 && grad_tensor.size(0) == start[f + 1] - start[f] &&
                    grad_tensor.size(1) == dim, "grads[", f, "]: (U_f, D) float32");
    const float* grad = grad_tensor.data_ptr<float>();
    float* sums = adagrad ? accumulators[f].data_ptr<float>() : nullptr;
    const Field s = field_storage(f, tier, slot, fp32, fp16, int8, int8_scale, int4, int4_scale);
    for (int64_t u = start[f]; u < start[f + 1]; ++u, grad += dim) {
      const int64_t r = row[u];
      const float* value = read + u * dim;
      if (adagrad) {
        float squares = 0.0f;
        for (int64_t d = 0; d < dim; ++d) squares += grad[d] * grad[d];
        const float total = sums[r] + squares / static_cast<float>(dim);
        sums[r] = total;
        const float denominator = std::sqrt(total) + epsilon;
        for (int64_t d = 0; d < dim; ++d) updated[d] = value[d] - rate * (grad[d] / denominator);
      } else {
        for (int64_t d = 0; d < dim; ++d) updated[d] = value[d] - rate * grad[d];
      }
      const int t = s.tier[r];
      const float* row_noise = nullptr;
      if (t >= 2 && stochastic) {
        TORCH_CHECK(next_noise < noise_rows, "noise has ", noise_rows, " rows; the integer rows need more");
        row_noise = draws + (next_noise++) * dim;
      }
      encode(s, t, s.slot[r], dim, updated.data(), row_noise, scratch.data());
    }
  }
}

// The distinct values of `flat` (N,) int64 in [0, total) and where each value sits among them:
// returns {rows (U,) int64 sorted, inverse (N,) int64} (torch.unique(flat, return_inverse=True)) in
// O(N + U log U) with a (total,) scratch map instead of a sort of all N values.
std::vector<torch::Tensor> flat_unique(const torch::Tensor& flat, int64_t total) {
  TORCH_CHECK(flat.scalar_type() == torch::kInt64 && flat.dim() == 1, "flat: (N,) int64");
  const torch::Tensor ids = flat.contiguous();
  const int64_t n = ids.size(0);
  const int64_t* value = ids.data_ptr<int64_t>();
  std::vector<int32_t> position(static_cast<size_t>(total), -1);
  std::vector<int64_t> distinct;
  distinct.reserve(static_cast<size_t>(std::min<int64_t>(n, total)));
  for (int64_t k = 0; k < n; ++k) {
    const int64_t v = value[k];
    TORCH_CHECK(v >= 0 && v < total, "value ", v, " outside 0..", total - 1);
    if (position[v] < 0) {
      position[v] = 0;
      distinct.push_back(v);
    }
  }
  std::sort(distinct.begin(), distinct.end());
  auto rows = torch::empty({static_cast<int64_t>(distinct.size())}, torch::kInt64);
  int64_t* row = rows.data_ptr<int64_t>();
  for (size_t u = 0; u < distinct.size(); ++u) {
    row[u] = distinct[u];
    position[distinct[u]] = static_cast<int32_t>(u);
  }
  auto inverse = torch::empty({n}, torch::kInt64);
  int64_t* where = inverse.data_ptr<int64_t>();
  for (int64_t k = 0; k < n; ++k) where[k] = position[value[k]];
  return {rows, inverse};
}

// The batch's ids of every field (values[f] (nnz_f,) int64, local to field f) in the flat row space of all
// fields (field f's rows from bases[f], bases (F + 1,)): the distinct flat rows, sorted, and the inverse
// (sum nnz,) of every value, field-major, as flat_unique of their concatenation. The third tensor holds the
// first field with an id outside 0..rows_f - 1 (-1 when none), checked before anything is built.
std::vector<torch::Tensor> flat_unique_fields(const TensorList& values, const std::vector<int64_t>& bases) {
  const int64_t fields = static_cast<int64_t>(values.size());
  TORCH_CHECK(static_cast<int64_t>(bases.size()) == fields + 1, "bases: one start per field and the total");
  int64_t n = 0;
  for (int64_t f = 0; f < fields; ++f) {
    TORCH_CHECK(values[f].scalar_type() == torch::kInt64 && values[f].dim() == 1 && values[f].is_contiguous(),
                "values: (nnz,) contiguous int64 per field");
    const int64_t* id = values[f].data_ptr<int64_t>();
    const int64_t rows = bases[f + 1] - bases[f], count = values[f].numel();
    for (int64_t k = 0; k < count; ++k) {
      if (id[k] < 0 || id[k] >= rows) {
        auto bad = torch::full({1}, f, torch::kInt64);
        return {torch::empty({0}, torch::kInt64), torch::empty({0}, torch::kInt64), bad};
      }
    }
    n += count;
  }
  auto flat = torch::empty({n}, torch::kInt64);
  int64_t* out = flat.data_ptr<int64_t>();
  for (int64_t f = 0; f < fields; ++f) {
    const int64_t* id = values[f].data_ptr<int64_t>();
    for (int64_t k = 0, count = values[f].numel(); k < count; ++k) *out++ = id[k] + bases[f];
  }
  std::vector<torch::Tensor> unique = flat_unique(flat, bases[fields]);
  unique.push_back(torch::full({1}, -1, torch::kInt64));
  return unique;
}

// Eq. 7 for one batch, lazily (sharkrec.quant.priority.lazy_update with the weights summed here): every value k
// of the batch adds alpha (its sample is positive, flags[k mod M] of the M flags: one per value, or one per
// sample of a single-hot field-major batch) or 1 to its row's weight, float32 sums in value order as index_add_
// does; then each touched row's priority is decayed by keep^(step - last_step) and gains
// gain * weight, in float64, stored as float32, and its last_step (int32) set to step.
void observe_rows(torch::Tensor priority, torch::Tensor last_step, const torch::Tensor& rows,
                  const torch::Tensor& inverse, const torch::Tensor& flags, double alpha, int64_t step, double keep,
                  double gain) {
  TORCH_CHECK(priority.scalar_type() == torch::kFloat32 && priority.is_contiguous() &&
                  last_step.scalar_type() == torch::kInt32 && last_step.is_contiguous() &&
                  priority.numel() == last_step.numel(),
              "priority (R,) float32 and last_step (R,) int32, contiguous");
  TORCH_CHECK(rows.scalar_type() == torch::kInt64 && inverse.scalar_type() == torch::kInt64 &&
                  flags.scalar_type() == torch::kBool &&
                  (inverse.numel() == 0 || (flags.numel() > 0 && inverse.numel() % flags.numel() == 0)),
              "rows (U,) int64, inverse (N,) int64 and flags (M,) bool with N a multiple of M");
  const torch::Tensor row_ids = rows.contiguous(), where = inverse.contiguous(), positive = flags.contiguous();
  const int64_t touched = row_ids.numel(), n = where.numel(), total = priority.numel();
  const int64_t period = std::max<int64_t>(positive.numel(), 1);
  const int64_t* row = row_ids.data_ptr<int64_t>();
  const int64_t* slot = where.data_ptr<int64_t>();
  const bool* flag = positive.data_ptr<bool>();
  std::vector<float> weight(static_cast<size_t>(touched), 0.0f);
  const float positive_weight = static_cast<float>(alpha);
  for (int64_t start = 0; start < n; start += period) {
    for (int64_t j = 0; j < period; ++j) {
      const int64_t k = start + j;
      TORCH_CHECK(slot[k] >= 0 && slot[k] < touched, "inverse ", slot[k], " outside 0..", touched - 1);
      weight[slot[k]] += flag[j] ? positive_weight : 1.0f;
    }
  }
  float* value = priority.data_ptr<float>();
  int32_t* last = last_step.data_ptr<int32_t>();
  for (int64_t u = 0; u < touched; ++u) {
    const int64_t r = row[u];
    TORCH_CHECK(r >= 0 && r < total, "row ", r, " outside 0..", total - 1);
    const double decayed = static_cast<double>(value[r]) * std::pow(keep, static_cast<double>(step - last[r]));
    value[r] = static_cast<float>(decayed + gain * static_cast<double>(weight[u]));
    last[r] = static_cast<int32_t>(step);
  }
}

// One field's rows moved to the tiers `codes` (R,) int8: pools rebuilt in row order (a row keeps its stored
// bytes when its tier is unchanged, else it is decoded and re-encoded in its new tier, the i-th such row that
// lands in an integer tier rounded with noise row i when `stochastic`). Returns {slot (R,) int32, fp32, fp16,
// int8, int8_scale, int4, int4_scale}.
std::vector<torch::Tensor> migrate_field(const torch::Tensor& tier, const torch::Tensor& slot,
                                         const torch::Tensor& fp32, const torch::Tensor& fp16,
                                         const torch::Tensor& int8, const torch::Tensor& int8_scale,
                                         const torch::Tensor& int4, const torch::Tensor& int4_scale,
                                         const torch::Tensor& codes, const torch::Tensor& noise, bool stochastic,
                                         int64_t dim) {
  const TensorList old_lists[8] = {{tier}, {slot}, {fp32}, {fp16}, {int8}, {int8_scale}, {int4}, {int4_scale}};
  check_lists(1, old_lists[0], old_lists[1], old_lists[2], old_lists[3], old_lists[4], old_lists[5], old_lists[6],
              old_lists[7]);
  const int64_t rows = tier.size(0);
  TORCH_CHECK(codes.scalar_type() == torch::kInt8 && codes.is_contiguous() && codes.size(0) == rows,
              "codes: (R,) int8");
  const Field old = field_storage(0, old_lists[0], old_lists[1], old_lists[2], old_lists[3], old_lists[4],
                                  old_lists[5], old_lists[6], old_lists[7]);
  const int8_t* code = codes.data_ptr<int8_t>();
  int64_t count[4] = {0, 0, 0, 0};
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(code[r] >= 0 && code[r] <= 3, "tier code ", int(code[r]), " is not 0..3");
    ++count[code[r]];
  }
  const int64_t width = (dim + 1) / 2;
  auto new_slot = torch::empty({rows}, torch::kInt32);
  auto new_fp32 = torch::empty({count[0], dim}, torch::kFloat32);
  auto new_fp16 = torch::empty({count[1], dim}, torch::kFloat16);
  auto new_int8 = torch::empty({count[2], dim}, torch::kInt8);
  auto new_int8_scale = torch::empty({count[2]}, torch::kFloat32);
  auto new_int4 = torch::empty({count[3], width}, torch::kUInt8);
  auto new_int4_scale = torch::empty({count[3]}, torch::kFloat32);
  const Field fresh = {nullptr, nullptr, new_fp32.data_ptr<float>(), new_fp16.data_ptr<c10::Half>(),
                       new_int8.data_ptr<int8_t>(), new_int8_scale.data_ptr<float>(), new_int4.data_ptr<uint8_t>(),
                       new_int4_scale.data_ptr<float>()};
  const float* draws = stochastic ? noise.data_ptr<float>() : nullptr;
  const int64_t noise_rows = stochastic ? noise.size(0) : 0;
  int32_t* slot_out = new_slot.data_ptr<int32_t>();
  int64_t next[4] = {0, 0, 0, 0}, next_noise = 0;
  std::vector<float> value(dim);
  std::vector<int8_t> scratch(dim + 1);
  for (int64_t r = 0; r < rows; ++r) {
    const int t = code[r], before = old.tier[r];
    const int64_t s = next[t]++, from = old.slot[r];
    slot_out[r] = static_cast<int32_t>(s);
    if (t == before) {
      switch (t) {
        case 0: std::memcpy(fresh.fp32 + s * dim, old.fp32 + from * dim, dim * sizeof(float)); break;
        case 1: std::memcpy(fresh.fp16 + s * dim, old.fp16 + from * dim, dim * sizeof(c10::Half)); break;
        case 2:
          std::memcpy(fresh.int8 + s * dim, old.int8 + from * dim, dim);
          fresh.int8_scale[s] = old.int8_scale[from];
          break;
        default:
          std::memcpy(fresh.int4 + s * width, old.int4 + from * width, width);
          fresh.int4_scale[s] = old.int4_scale[from];
      }
      continue;
    }
    decode(old, before, from, dim, value.data());
    const float* row_noise = nullptr;
    if (t >= 2 && stochastic) {
      TORCH_CHECK(next_noise < noise_rows, "noise has ", noise_rows, " rows; the moved integer rows need more");
      row_noise = draws + (next_noise++) * dim;
    }
    encode(fresh, t, s, dim, value.data(), row_noise, scratch.data());
  }
  return {new_slot, new_fp32, new_fp16, new_int8, new_int8_scale, new_int4, new_int4_scale};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("flat_unique_fields", &flat_unique_fields, "every field's ids checked and made flat, then flat_unique");
  m.def("observe_rows", &observe_rows, "Eq. 7 lazy priority update of one batch's rows, weights summed here");
  m.def("migrate_field", &migrate_field, "one field's rows moved to new tiers, pools rebuilt in row order");
  m.def("gather_rows", &gather_rows, "every field's rows read from their tiers into one fp32 block");
  m.def("step_rows", &step_rows, "SGD / row-wise Adagrad on the touched rows, stored back in their tiers");
}
