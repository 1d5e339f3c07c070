// Fused inference lookups of the hashed layers (sharkrec.hashed): per field and sample, the row of each
// id is computed (hash, quotient / remainder, binary search, block), read and (weighted) sum-pooled
// straight into the (B, F, D) float32 output, in one pass over the batch.
//
// Every kernel takes the batch as three per-field lists: `values` (N_f,) int64 or int32 ids, `offsets`
// (B + 1,) int64 or None (one id per sample) and `weights` (N_f,) float32 or None, plus `value_rows`
// (F,) the vocabulary rows each field accepts, and returns (out, status):
//   status -1  out holds the lookup;
//   status -2  an input this kernel does not take (a tensor off the CPU, a table not float32, weights
//              not float32): the caller runs its PyTorch path;
//   status f   field f is bad (ids outside [0, V_f), a wrong dtype, batch size, offsets or weights).
//
// The arithmetic is the PyTorch path's, in its order: the same int64 hash (torch's wrap-around
// product and floor remainder), the element-wise combine, then `vector * weight` and a sum over the
// bag in id order starting from zero (index_add). Built with -ffp-contract=off so no multiply-add is
// fused: every kind but mixed dims equals the PyTorch path bit for bit. Mixed dims project each
// block's rows with the same at::mm call on the same (n_b, d_b) matrix as the PyTorch path.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kPrime = 2147483647;  // 2^31 - 1, hashing.py's HASH_PRIME
constexpr int64_t kOk = -1;
constexpr int64_t kUnsupported = -2;
constexpr int64_t kGrain = 64;  // samples per parallel task

using Tensors = std::vector<torch::Tensor>;
using OptionalTensors = std::vector<std::optional<torch::Tensor>>;
using Result = std::tuple<torch::Tensor, int64_t>;

// torch's integer remainder: the sign of the divisor.
inline int64_t floor_mod(int64_t x, int64_t m) {
  const int64_t r = x % m;
  return (r != 0 && ((r < 0) != (m < 0))) ? r + m : r;
}

// hashing.universal_hash of one id: ((a * (id mod p) + b) mod p) mod buckets, with int64 wrap-around as torch.
inline int64_t universal_hash(int64_t id, const int64_t* ab, int64_t buckets) {
  const uint64_t x = static_cast<uint64_t>(floor_mod(id, kPrime));
  const int64_t t = static_cast<int64_t>(static_cast<uint64_t>(ab[0]) * x + static_cast<uint64_t>(ab[1]));
  return floor_mod(floor_mod(t, kPrime), buckets);
}

// One field of the batch, checked: ids (n,), bag offsets (B + 1,) or null, bag weights (n,) or null.
struct Field {
  const int64_t* ids;
  int64_t n;
  const int64_t* offsets;
  const float* weights;
};

struct Batch {
  std::vector<Field> fields;
  Tensors keep;  // converted tensors the pointers read
  int64_t size = 0;
};

bool on_cpu(const torch::Tensor& t) { return t.device().is_cpu(); }

// Checks and converts the batch; returns kOk, kUnsupported or the first bad field.
int64_t prepare(const Tensors& values, const OptionalTensors& offsets, const OptionalTensors& weights,
                const std::vector<int64_t>& value_rows, Batch* batch) {
  const int64_t fields = static_cast<int64_t>(value_rows.size());
  if (static_cast<int64_t>(values.size()) != fields || offsets.size() != values.size() ||
      weights.size() != values.size()) {
    return 0;
  }
  for (int64_t f = 0; f < fields; ++f) {
    const torch::Tensor& v = values[f];
    if (!on_cpu(v)) return kUnsupported;
    if ((v.scalar_type() != torch::kInt64 && v.scalar_type() != torch::kInt32) || v.dim() != 1) return f;
    torch::Tensor ids = v.to(torch::kInt64).contiguous();
    const int64_t n = ids.numel();
    const int64_t* id = ids.data_ptr<int64_t>();
    const int64_t rows = value_rows[f];
    for (int64_t i = 0; i < n; ++i) {
      if (id[i] < 0 || id[i] >= rows) return f;
    }
    Field field{id, n, nullptr, nullptr};
    int64_t samples = n;
    if (offsets[f].has_value()) {
      const torch::Tensor& o = *offsets[f];
      if (!on_cpu(o)) return kUnsupported;
      if ((o.scalar_type() != torch::kInt64 && o.scalar_type() != torch::kInt32) || o.dim() != 1 || o.numel() < 1) {
        return f;
      }
      torch::Tensor bounds = o.to(torch::kInt64).contiguous();
      const int64_t* ob = bounds.data_ptr<int64_t>();
      samples = bounds.numel() - 1;
      if (ob[0] != 0 || ob[samples] != n) return f;
      for (int64_t b = 0; b < samples; ++b) {
        if (ob[b + 1] < ob[b]) return f;
      }
      field.offsets = ob;
      batch->keep.push_back(bounds);
      if (weights[f].has_value()) {
        const torch::Tensor& w = *weights[f];
        if (!on_cpu(w) || w.scalar_type() != torch::kFloat32) return kUnsupported;
        if (w.numel() != n) return f;
        torch::Tensor contiguous = w.contiguous();
        field.weights = contiguous.data_ptr<float>();
        batch->keep.push_back(contiguous);
      }
    }
    if (f == 0) batch->size = samples;
    if (samples != batch->size) return f;
    batch->keep.push_back(ids);
    batch->fields.push_back(field);
  }
  return kOk;
}

// CPU float32 tables, made contiguous into `out`; false if one is not (the PyTorch path serves it).
bool float_tables(const Tensors& tables, Tensors* out) {
  for (const torch::Tensor& t : tables) {
    if (!on_cpu(t) || t.scalar_type() != torch::kFloat32) return false;
    out->push_back(t.contiguous());
  }
  return true;
}

bool int_table(const torch::Tensor& t, torch::ScalarType type) { return on_cpu(t) && t.scalar_type() == type; }

// The pooled lookup of every field and sample into `out` (B, F, D). `row(f, id, scratch)` returns the
// address of the D floats of the id's vector: a table row, or `scratch` it filled.
template <typename Row>
void pooled(const Batch& batch, int64_t dim, float* out, const Row& row) {
  const int64_t fields = static_cast<int64_t>(batch.fields.size());
  at::parallel_for(0, batch.size, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(dim);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t f = 0; f < fields; ++f) {
        const Field& field = batch.fields[f];
        float* dst = out + (b * fields + f) * dim;
        if (field.offsets == nullptr) {
          const float* vector = row(f, field.ids[b], dst);
          if (vector != dst) std::memcpy(dst, vector, dim * sizeof(float));
          continue;
        }
        std::fill(dst, dst + dim, 0.0f);
        for (int64_t i = field.offsets[b]; i < field.offsets[b + 1]; ++i) {
          const float* vector = row(f, field.ids[i], scratch.data());
          if (field.weights != nullptr) {
            const float weight = field.weights[i];
            for (int64_t d = 0; d < dim; ++d) dst[d] += vector[d] * weight;
          } else {
            for (int64_t d = 0; d < dim; ++d) dst[d] += vector[d];
          }
        }
      }
    }
  });
}

torch::Tensor empty_output(const Batch& batch, int64_t dim) {
  return torch::empty({batch.size, static_cast<int64_t>(batch.fields.size()), dim}, torch::kFloat32);
}

}  // namespace

// QR: per field f, e(x) = remainders[f][x mod m_f] (*|+) quotients[f][x div m_f]; both (rows, D) float32.
Result qr_lookup(const Tensors& values, const OptionalTensors& offsets, const OptionalTensors& weights,
                 const std::vector<int64_t>& value_rows, const Tensors& remainders, const Tensors& quotients,
                 const std::vector<int64_t>& remainder_rows, bool multiply, int64_t dim) {
  at::NoGradGuard no_grad;
  Batch batch;
  const int64_t status = prepare(values, offsets, weights, value_rows, &batch);
  Tensors r, q;
  if (status != kOk || !float_tables(remainders, &r) || !float_tables(quotients, &q)) {
    return {torch::Tensor(), status != kOk ? status : kUnsupported};
  }
  const int64_t fields = static_cast<int64_t>(batch.fields.size());
  TORCH_CHECK(static_cast<int64_t>(r.size()) == fields && static_cast<int64_t>(q.size()) == fields &&
              static_cast<int64_t>(remainder_rows.size()) == fields, "qr_lookup: one table pair per field");
  std::vector<const float*> rp(fields), qp(fields);
  for (int64_t f = 0; f < fields; ++f) {
    const int64_t m = remainder_rows[f];
    TORCH_CHECK(m >= 1 && r[f].dim() == 2 && r[f].size(0) == m && r[f].size(1) == dim && q[f].dim() == 2 &&
                q[f].size(0) == (value_rows[f] + m - 1) / m && q[f].size(1) == dim, "qr_lookup: table shapes");
    rp[f] = r[f].data_ptr<float>();
    qp[f] = q[f].data_ptr<float>();
  }
  torch::Tensor out = empty_output(batch, dim);
  {
    pybind11::gil_scoped_release no_gil;
    pooled(batch, dim, out.data_ptr<float>(), [&](int64_t f, int64_t id, float* v) -> const float* {
      const int64_t m = remainder_rows[f];
      const float* a = rp[f] + (id % m) * dim;
      const float* b = qp[f] + (id / m) * dim;
      if (multiply) {
        for (int64_t d = 0; d < dim; ++d) v[d] = a[d] * b[d];
      } else {
        for (int64_t d = 0; d < dim; ++d) v[d] = a[d] + b[d];
      }
      return v;
    });
  }
  return {out, kOk};
}

// ROBE-Z: chunk c of field f's id x reads `chunk` weights from (h_fc(x) + j) mod size of the (size, 1)
// array, times the sign s_fc(x) = 2 * (((a*x + b) mod p) mod 2) - 1 when `sign_hash` has rows;
// offset_hash, sign_hash: (F * C, 2) int64, C = ceil(dim / chunk); the last chunk is cut at dim.
Result robe_lookup(const Tensors& values, const OptionalTensors& offsets, const OptionalTensors& weights,
                   const std::vector<int64_t>& value_rows, const torch::Tensor& array,
                   const torch::Tensor& offset_hash, const torch::Tensor& sign_hash, int64_t chunk, int64_t dim) {
  at::NoGradGuard no_grad;
  Batch batch;
  const int64_t status = prepare(values, offsets, weights, value_rows, &batch);
  Tensors w;
  if (status != kOk || !float_tables({array}, &w) || !int_table(offset_hash, torch::kInt64) ||
      !int_table(sign_hash, torch::kInt64)) {
    return {torch::Tensor(), status != kOk ? status : kUnsupported};
  }
  const int64_t fields = static_cast<int64_t>(batch.fields.size());
  const int64_t chunks = (dim + chunk - 1) / chunk, size = w[0].numel();
  const bool signed_ = sign_hash.numel() > 0;
  TORCH_CHECK(chunk >= 1 && chunk <= size && offset_hash.dim() == 2 && offset_hash.size(0) == fields * chunks &&
              offset_hash.size(1) == 2 && (!signed_ || sign_hash.sizes() == offset_hash.sizes()),
              "robe_lookup: hash shapes");
  torch::Tensor offset_ab = offset_hash.contiguous(), sign_ab = sign_hash.contiguous();
  const int64_t* oh = offset_ab.data_ptr<int64_t>();
  const int64_t* sh = signed_ ? sign_ab.data_ptr<int64_t>() : nullptr;
  const float* array_p = w[0].data_ptr<float>();
  torch::Tensor out = empty_output(batch, dim);
  {
    pybind11::gil_scoped_release no_gil;
    pooled(batch, dim, out.data_ptr<float>(), [&](int64_t f, int64_t id, float* v) -> const float* {
      for (int64_t c = 0; c < chunks; ++c) {
        int64_t position = universal_hash(id, oh + (f * chunks + c) * 2, size);
        const int64_t start = c * chunk, stop = std::min(start + chunk, dim);
        if (sh == nullptr) {
          for (int64_t k = start; k < stop; ++k) {
            v[k] = array_p[position];
            if (++position == size) position = 0;
          }
        } else {
          const float s = universal_hash(id, sh + (f * chunks + c) * 2, 2) == 1 ? 1.0f : -1.0f;
          for (int64_t k = start; k < stop; ++k) {
            v[k] = array_p[position] * s;
            if (++position == size) position = 0;
          }
        }
      }
      return v;
    });
  }
  return {out, kOk};
}

// Hot / cold hybrid: field f's id x reads row i of tables[f] (H_f + S_f, D) if hot[f][i] == x (hot: (H_f,)
// sorted int32, binary search), else row H_f + ((a*x + b) mod p) mod S_f, (a, b) = cold_hash[f] ((F, 2) int64).
Result hybrid_lookup(const Tensors& values, const OptionalTensors& offsets, const OptionalTensors& weights,
                     const std::vector<int64_t>& value_rows, const Tensors& hot, const Tensors& tables,
                     const torch::Tensor& cold_hash, const std::vector<int64_t>& shared_rows, int64_t dim) {
  at::NoGradGuard no_grad;
  Batch batch;
  const int64_t status = prepare(values, offsets, weights, value_rows, &batch);
  Tensors t;
  bool hot_ok = int_table(cold_hash, torch::kInt64);
  for (const torch::Tensor& h : hot) hot_ok = hot_ok && int_table(h, torch::kInt32);
  if (status != kOk || !float_tables(tables, &t) || !hot_ok) {
    return {torch::Tensor(), status != kOk ? status : kUnsupported};
  }
  const int64_t fields = static_cast<int64_t>(batch.fields.size());
  TORCH_CHECK(static_cast<int64_t>(hot.size()) == fields && static_cast<int64_t>(t.size()) == fields &&
              static_cast<int64_t>(shared_rows.size()) == fields && cold_hash.dim() == 2 &&
              cold_hash.size(0) == fields && cold_hash.size(1) == 2, "hybrid_lookup: one table per field");
  Tensors hot_c;
  std::vector<const int32_t*> hp(fields);
  std::vector<int64_t> hn(fields);
  std::vector<const float*> tp(fields);
  for (int64_t f = 0; f < fields; ++f) {
    hot_c.push_back(hot[f].contiguous());
    hp[f] = hot_c[f].data_ptr<int32_t>();
    hn[f] = hot_c[f].numel();
    TORCH_CHECK(shared_rows[f] >= 1 && t[f].dim() == 2 && t[f].size(0) == hn[f] + shared_rows[f] &&
                t[f].size(1) == dim, "hybrid_lookup: table shapes");
    tp[f] = t[f].data_ptr<float>();
  }
  torch::Tensor ab = cold_hash.contiguous();
  const int64_t* cold = ab.data_ptr<int64_t>();
  torch::Tensor out = empty_output(batch, dim);
  {
    pybind11::gil_scoped_release no_gil;
    pooled(batch, dim, out.data_ptr<float>(), [&](int64_t f, int64_t id, float*) -> const float* {
      const int32_t key = static_cast<int32_t>(id);  // ids are below V_f <= 2^31 - 1 (checked)
      const int32_t* first = hp[f];
      const int32_t* found = std::lower_bound(first, first + hn[f], key);
      const int64_t row = (found != first + hn[f] && *found == key)
                              ? found - first
                              : hn[f] + universal_hash(id, cold + f * 2, shared_rows[f]);
      return tp[f] + row * dim;
    });
  }
  return {out, kOk};
}

// Mixed dims: field f's id x is in block b, the last with starts[f][b] <= x, and reads
// tables[first_f + b][x - starts[f][b]] (n_b, d_b) @ projections[first_f + b] (d_b, D).
// Per field and block, the block's rows are gathered in id order and projected by one at::mm.
Result mixed_lookup(const Tensors& values, const OptionalTensors& offsets, const OptionalTensors& weights,
                    const std::vector<int64_t>& value_rows, const Tensors& tables, const Tensors& projections,
                    const Tensors& starts, const std::vector<int64_t>& first, int64_t dim) {
  at::NoGradGuard no_grad;
  Batch batch;
  const int64_t status = prepare(values, offsets, weights, value_rows, &batch);
  Tensors t, p;
  bool starts_ok = true;
  for (const torch::Tensor& s : starts) starts_ok = starts_ok && int_table(s, torch::kInt64);
  if (status != kOk || !float_tables(tables, &t) || !float_tables(projections, &p) || !starts_ok) {
    return {torch::Tensor(), status != kOk ? status : kUnsupported};
  }
  const int64_t fields = static_cast<int64_t>(batch.fields.size());
  TORCH_CHECK(static_cast<int64_t>(starts.size()) == fields && static_cast<int64_t>(first.size()) == fields &&
              t.size() == p.size(), "mixed_lookup: one block list per field");
  torch::Tensor out = empty_output(batch, dim);
  float* o = out.data_ptr<float>();
  const int64_t row_stride = fields * dim;
  for (int64_t f = 0; f < fields; ++f) {
    const Field& field = batch.fields[f];
    torch::Tensor block_starts = starts[f].contiguous();
    const int64_t* st = block_starts.data_ptr<int64_t>();
    const int64_t count = block_starts.numel();
    TORCH_CHECK(count >= 1 && first[f] >= 0 && first[f] + count <= static_cast<int64_t>(t.size()),
                "mixed_lookup: block numbers");
    // vectors (n, D) of the field's ids, in id order
    torch::Tensor vectors;
    const float* vp = nullptr;
    if (count == 1) {
      torch::Tensor ids = torch::from_blob(const_cast<int64_t*>(field.ids), {field.n}, torch::kInt64);
      vectors = at::mm(t[first[f]].index_select(0, ids), p[first[f]]);
    } else {
      std::vector<std::vector<int64_t>> chosen(count), local(count);
      for (int64_t i = 0; i < field.n; ++i) {
        const int64_t id = field.ids[i];
        const int64_t b = std::upper_bound(st + 1, st + count, id) - (st + 1);
        chosen[b].push_back(i);
        local[b].push_back(id - st[b]);
      }
      vectors = torch::empty({field.n, dim}, torch::kFloat32);
      float* dst = vectors.data_ptr<float>();
      for (int64_t b = 0; b < count; ++b) {
        const int64_t n = static_cast<int64_t>(chosen[b].size());
        if (n == 0) continue;
        torch::Tensor rows = torch::from_blob(local[b].data(), {n}, torch::kInt64);
        torch::Tensor projected = at::mm(t[first[f] + b].index_select(0, rows), p[first[f] + b]).contiguous();
        const float* src = projected.data_ptr<float>();
        for (int64_t j = 0; j < n; ++j) std::memcpy(dst + chosen[b][j] * dim, src + j * dim, dim * sizeof(float));
      }
    }
    vectors = vectors.contiguous();
    vp = vectors.data_ptr<float>();
    TORCH_CHECK(vectors.size(0) == field.n && vectors.size(1) == dim, "mixed_lookup: projection shapes");
    float* column = o + f * dim;
    for (int64_t b = 0; b < batch.size; ++b) {
      float* dst = column + b * row_stride;
      if (field.offsets == nullptr) {
        std::memcpy(dst, vp + b * dim, dim * sizeof(float));
        continue;
      }
      std::fill(dst, dst + dim, 0.0f);
      for (int64_t i = field.offsets[b]; i < field.offsets[b + 1]; ++i) {
        const float* vector = vp + i * dim;
        if (field.weights != nullptr) {
          const float weight = field.weights[i];
          for (int64_t d = 0; d < dim; ++d) dst[d] += vector[d] * weight;
        } else {
          for (int64_t d = 0; d < dim; ++d) dst[d] += vector[d];
        }
      }
    }
  }
  return {out, kOk};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("qr_lookup", &qr_lookup, "fused QR lookup (see lookup.cpp)");
  m.def("robe_lookup", &robe_lookup, "fused ROBE-Z lookup");
  m.def("hybrid_lookup", &hybrid_lookup, "fused hot / cold hybrid lookup");
  m.def("mixed_lookup", &mixed_lookup, "fused mixed-dimension lookup");
}
