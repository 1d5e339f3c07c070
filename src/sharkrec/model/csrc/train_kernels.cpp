// Training kernels: sparse row updates of many tables in one call, and DLRM's pairwise dot interaction.
//
// Row updates take, per table, the uncoalesced sparse gradient an embedding lookup leaves (n ids, (n, D)
// values; an id may repeat): duplicates are summed in gradient order (the same bits every run), each distinct
// row's gradient summed once, then the row and its optimizer state
// updated in place. Nothing of (rows, D) is ever allocated; tables are split over the intra-op threads.
//
//   row-wise Adagrad   G_r += mean(g_r^2);             e_r -= lr * g_r / (sqrt(G_r) + eps)
//   lazy Adam          m_r += (1 - b1) (g_r - m_r);    v_r += (1 - b2) (g_r^2 - v_r)
//                      e_r -= step_size * m_r / (sqrt(v_r) + eps)    (step_size carries the bias corrections)
//
// Dot interaction of (B, F, D) field vectors: out[b, p] = <v_i, v_j> for the p-th pair i < j (row-major
// upper triangle, torch.triu_indices(F, F, 1)); its gradient gv_i = sum_{j != i} g_ij v_j.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

void check_table(const torch::Tensor& weight, const torch::Tensor& ids, const torch::Tensor& values) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous() && weight.scalar_type() == torch::kFloat32,
              "weights must be contiguous (rows, D) float32");
  TORCH_CHECK(ids.scalar_type() == torch::kInt64 && ids.is_contiguous(), "ids must be contiguous int64");
  TORCH_CHECK(values.scalar_type() == torch::kFloat32 && values.is_contiguous() && values.dim() == 2 &&
                  values.size(0) == ids.numel() && values.size(1) == weight.size(1),
              "values must be contiguous (n, D) float32");
}

// Sums the gradient rows of each distinct id, in gradient order (the same bits every run), and calls
// update(row, summed) once per distinct row, in order of first appearance, after checking every id is a row of
// the table (nothing is written when one is not). Distinct ids are found with a small open-addressing hash
// table (no sort); `prefetch(row)` is called a few rows ahead: the table rows are random reads from memory.
template <typename Update, typename Prefetch>
void for_each_row(const int64_t* ids, const float* values, int64_t n, int64_t dim, int64_t rows, Update update,
                  Prefetch prefetch) {
  for (int64_t k = 0; k < n; ++k) {
    TORCH_CHECK(ids[k] >= 0 && ids[k] < rows, "row id ", ids[k], " outside the table of ", rows, " rows");
  }
  int64_t capacity = 16;
  while (capacity < 2 * n) capacity *= 2;
  std::vector<int64_t> bucket_id(capacity, -1);
  std::vector<int64_t> bucket_slot(capacity);
  std::vector<int64_t> distinct;
  distinct.reserve(n);
  std::vector<float> summed(n * dim);
  for (int64_t k = 0; k < n; ++k) {
    const int64_t id = ids[k];
    uint64_t h = (static_cast<uint64_t>(id) * 0x9E3779B97F4A7C15ull) >> 20;
    int64_t b = static_cast<int64_t>(h & static_cast<uint64_t>(capacity - 1));
    while (bucket_id[b] != -1 && bucket_id[b] != id) b = (b + 1) & (capacity - 1);
    const float* g = values + k * dim;
    if (bucket_id[b] == -1) {
      bucket_id[b] = id;
      bucket_slot[b] = static_cast<int64_t>(distinct.size());
      prefetch(id);
      std::copy(g, g + dim, summed.data() + distinct.size() * dim);
      distinct.push_back(id);
    } else {
      float* acc = summed.data() + bucket_slot[b] * dim;
      for (int64_t d = 0; d < dim; ++d) acc[d] += g[d];
    }
  }
  for (size_t slot = 0; slot < distinct.size(); ++slot) update(distinct[slot], summed.data() + slot * dim);
}

// The (n,) ids and (n, D) values of each table's sparse COO gradient (uncoalesced: ids may repeat).
void split_gradients(const std::vector<torch::Tensor>& grads, std::vector<torch::Tensor>& ids,
                     std::vector<torch::Tensor>& values) {
  for (const auto& grad : grads) {
    TORCH_CHECK(grad.is_sparse() && grad.sparse_dim() == 1 && grad.dense_dim() == 1,
                "gradients must be sparse COO (rows, D) with one sparse dimension");
    ids.push_back(grad._indices().select(0, 0).contiguous());
    values.push_back(grad._values().contiguous());
  }
}

}  // namespace

void rowwise_adagrad(std::vector<torch::Tensor> weights, std::vector<torch::Tensor> sums,
                     std::vector<torch::Tensor> grads, double lr, double eps) {
  const int64_t tables = static_cast<int64_t>(weights.size());
  TORCH_CHECK(sums.size() == weights.size() && grads.size() == weights.size(), "one state and gradient per table");
  std::vector<torch::Tensor> ids, values;
  split_gradients(grads, ids, values);
  for (int64_t t = 0; t < tables; ++t) {
    check_table(weights[t], ids[t], values[t]);
    TORCH_CHECK(sums[t].is_contiguous() && sums[t].scalar_type() == torch::kFloat32 &&
                    sums[t].numel() == weights[t].size(0), "accumulators must be contiguous (rows,) float32");
  }
  const float rate = static_cast<float>(lr), epsilon = static_cast<float>(eps);
  at::parallel_for(0, tables, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t dim = weights[t].size(1);
      float* weight = weights[t].data_ptr<float>();
      float* sum = sums[t].data_ptr<float>();
      for_each_row(ids[t].data_ptr<int64_t>(), values[t].data_ptr<float>(), ids[t].numel(), dim, weights[t].size(0),
                   [&](int64_t row, const float* g) {
                     float squares = 0.0f;
                     for (int64_t d = 0; d < dim; ++d) squares += g[d] * g[d];
                     const float accumulated = sum[row] + squares / static_cast<float>(dim);
                     sum[row] = accumulated;
                     const float scale = rate / (std::sqrt(accumulated) + epsilon);
                     float* e = weight + row * dim;
                     for (int64_t d = 0; d < dim; ++d) e[d] -= scale * g[d];
                   },
                   [&](int64_t row) {
                     __builtin_prefetch(weight + row * dim, 1);
                     __builtin_prefetch(sum + row, 1);
                   });
    }
  });
}

void lazy_adam(std::vector<torch::Tensor> weights, std::vector<torch::Tensor> exp_avgs,
               std::vector<torch::Tensor> exp_avg_sqs, std::vector<torch::Tensor> grads,
               std::vector<double> step_sizes, double beta1, double beta2, double eps) {
  const int64_t tables = static_cast<int64_t>(weights.size());
  TORCH_CHECK(exp_avgs.size() == weights.size() && exp_avg_sqs.size() == weights.size() &&
                  grads.size() == weights.size() && step_sizes.size() == weights.size(),
              "one state, gradient and step size per table");
  std::vector<torch::Tensor> ids, values;
  split_gradients(grads, ids, values);
  for (int64_t t = 0; t < tables; ++t) {
    check_table(weights[t], ids[t], values[t]);
    for (const auto* state : {&exp_avgs[t], &exp_avg_sqs[t]}) {
      TORCH_CHECK(state->is_contiguous() && state->scalar_type() == torch::kFloat32 &&
                      state->sizes() == weights[t].sizes(), "Adam moments must be contiguous float32 like the table");
    }
  }
  const float keep1 = static_cast<float>(1.0 - beta1), keep2 = static_cast<float>(1.0 - beta2);
  const float epsilon = static_cast<float>(eps);
  at::parallel_for(0, tables, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t dim = weights[t].size(1);
      float* weight = weights[t].data_ptr<float>();
      float* mean = exp_avgs[t].data_ptr<float>();
      float* square = exp_avg_sqs[t].data_ptr<float>();
      const float step = static_cast<float>(step_sizes[t]);
      for_each_row(ids[t].data_ptr<int64_t>(), values[t].data_ptr<float>(), ids[t].numel(), dim, weights[t].size(0),
                   [&](int64_t row, const float* g) {
                     float* m = mean + row * dim;
                     float* v = square + row * dim;
                     float* e = weight + row * dim;
                     for (int64_t d = 0; d < dim; ++d) {
                       m[d] += (g[d] - m[d]) * keep1;
                       v[d] += (g[d] * g[d] - v[d]) * keep2;
                       e[d] -= step * (m[d] / (std::sqrt(v[d]) + epsilon));
                     }
                   },
                   [&](int64_t row) {
                     __builtin_prefetch(weight + row * dim, 1);
                     __builtin_prefetch(mean + row * dim, 1);
                     __builtin_prefetch(square + row * dim, 1);
                   });
    }
  });
}

namespace {

// 8 floats in one register (GCC / Clang vector extension; AVX2 or better with -march=native).
typedef float Lanes __attribute__((vector_size(32)));

inline Lanes load_lanes(const float* p) {
  Lanes x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}

// One sample's dots, F <= W fields (W a multiple of 8, fixed at compile time so every row of the square is
// W / 8 registers). columns: (D, W) scratch, the vectors transposed and zero-padded past F; the dots of
// field i with every field are then sum_d v_i[d] * columns[d, :], accumulated in registers.
template <int W>
void sample_dots(const float* sample, int64_t fields, int64_t dim, float* columns, float* row) {
  constexpr int kLanes = W / 8;
  for (int64_t d = 0; d < dim; ++d) {
    float* column = columns + d * W;
    for (int64_t f = 0; f < fields; ++f) column[f] = sample[f * dim + d];
    for (int64_t f = fields; f < W; ++f) column[f] = 0.0f;
  }
  alignas(32) float dots[W];
  for (int64_t i = 0; i + 1 < fields; ++i) {
    Lanes acc[kLanes];
    for (int k = 0; k < kLanes; ++k) acc[k] = Lanes{};
    const float* a = sample + i * dim;
    for (int64_t d = 0; d < dim; ++d) {
      const float x = a[d];
      const float* column = columns + d * W;
      for (int k = 0; k < kLanes; ++k) acc[k] += x * load_lanes(column + 8 * k);
    }
    std::memcpy(dots, acc, sizeof(dots));
    for (int64_t j = i + 1; j < fields; ++j) *row++ = dots[j];
  }
}

// One sample's vector gradient. U (F, W): the gradient of the dots in the upper triangle (U[i, j] = g_ij, i < j;
// zero elsewhere and in the padding), L (F, W) its transpose. As torch.bmm's backward computes it (the same sums
// in the same order, so the result is the same to the bit): gv_i = sum_j U[i, j] v_j + sum_j U[j, i] v_j, i.e.
// column d of gv is sum_j v_j[d] L[j, :] + sum_j v_j[d] U[j, :], both accumulated in registers.
template <int W>
void sample_dots_backward(const float* weights, const float* sample, int64_t fields, int64_t dim, float* square,
                          float* gv) {
  constexpr int kLanes = W / 8;
  float* upper = square;
  float* lower = square + fields * W;
  for (int64_t i = 0; i < 2 * fields * W; ++i) square[i] = 0.0f;
  for (int64_t i = 0; i < fields; ++i) {
    for (int64_t j = i + 1; j < fields; ++j) {
      const float w = *weights++;
      upper[i * W + j] = w;
      lower[j * W + i] = w;
    }
  }
  alignas(32) float first[W];
  alignas(32) float second[W];
  for (int64_t d = 0; d < dim; ++d) {
    Lanes by_row[kLanes], by_column[kLanes];
    for (int k = 0; k < kLanes; ++k) by_row[k] = by_column[k] = Lanes{};
    for (int64_t j = 0; j < fields; ++j) {
      const float x = sample[j * dim + d];
      const float* l = lower + j * W;
      const float* u = upper + j * W;
      for (int k = 0; k < kLanes; ++k) {
        by_row[k] += x * load_lanes(l + 8 * k);
        by_column[k] += x * load_lanes(u + 8 * k);
      }
    }
    std::memcpy(first, by_row, sizeof(first));
    std::memcpy(second, by_column, sizeof(second));
    for (int64_t f = 0; f < fields; ++f) gv[f * dim + d] = first[f] + second[f];
  }
}

void generic_dots(const float* sample, int64_t fields, int64_t dim, float* row) {
  for (int64_t i = 0; i < fields; ++i)
    for (int64_t j = i + 1; j < fields; ++j) {
      float dot = 0.0f;
      for (int64_t d = 0; d < dim; ++d) dot += sample[i * dim + d] * sample[j * dim + d];
      *row++ = dot;
    }
}

void generic_dots_backward(const float* weights, const float* sample, int64_t fields, int64_t dim, float* gv) {
  std::fill(gv, gv + fields * dim, 0.0f);
  for (int64_t i = 0; i < fields; ++i)
    for (int64_t j = i + 1; j < fields; ++j) {
      const float w = *weights++;
      for (int64_t d = 0; d < dim; ++d) {
        gv[i * dim + d] += w * sample[j * dim + d];
        gv[j * dim + d] += w * sample[i * dim + d];
      }
    }
}

int padded_width(int64_t fields) { return fields <= 16 ? 16 : fields <= 32 ? 32 : fields <= 48 ? 48 : fields <= 64 ? 64 : 0; }

}  // namespace

// With dense_first, each output row starts with the D values of field 0 (DLRM's dense vector) before the dots:
// out (B, D + P), the interaction features in one tensor, no separate concatenation.
torch::Tensor pair_dots(torch::Tensor vectors, bool dense_first) {
  TORCH_CHECK(vectors.dim() == 3 && vectors.scalar_type() == torch::kFloat32, "vectors must be (B, F, D) float32");
  vectors = vectors.contiguous();
  const int64_t batch = vectors.size(0), fields = vectors.size(1), dim = vectors.size(2);
  const int64_t pairs = fields * (fields - 1) / 2;
  const int64_t lead = dense_first ? dim : 0, width_out = lead + pairs;
  torch::Tensor out = torch::empty({batch, width_out}, vectors.options());
  const float* v = vectors.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int width = padded_width(fields);
  at::parallel_for(0, batch, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> columns(dim * std::max(width, 1));
    for (int64_t b = begin; b < end; ++b) {
      const float* sample = v + b * fields * dim;
      float* row = o + b * width_out;
      std::copy(sample, sample + lead, row);
      row += lead;
      switch (width) {
        case 16: sample_dots<16>(sample, fields, dim, columns.data(), row); break;
        case 32: sample_dots<32>(sample, fields, dim, columns.data(), row); break;
        case 48: sample_dots<48>(sample, fields, dim, columns.data(), row); break;
        case 64: sample_dots<64>(sample, fields, dim, columns.data(), row); break;
        default: generic_dots(sample, fields, dim, row);
      }
    }
  });
  return out;
}

torch::Tensor pair_dots_backward(torch::Tensor grad, torch::Tensor vectors, bool dense_first) {
  TORCH_CHECK(grad.scalar_type() == torch::kFloat32 && vectors.scalar_type() == torch::kFloat32,
              "pair_dots_backward works on float32");
  grad = grad.contiguous();
  vectors = vectors.contiguous();
  const int64_t batch = vectors.size(0), fields = vectors.size(1), dim = vectors.size(2);
  const int64_t pairs = fields * (fields - 1) / 2;
  const int64_t lead = dense_first ? dim : 0, width_out = lead + pairs;
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == batch && grad.size(1) == width_out,
              "grad must be (B, F(F-1)/2), (B, D + F(F-1)/2) with dense_first");
  torch::Tensor out = torch::empty_like(vectors);
  const float* v = vectors.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int width = padded_width(fields);
  at::parallel_for(0, batch, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> square(2 * fields * std::max(width, 1));
    for (int64_t b = begin; b < end; ++b) {
      const float* weights = g + b * width_out + lead;
      const float* sample = v + b * fields * dim;
      float* gv = o + b * fields * dim;
      switch (width) {
        case 16: sample_dots_backward<16>(weights, sample, fields, dim, square.data(), gv); break;
        case 32: sample_dots_backward<32>(weights, sample, fields, dim, square.data(), gv); break;
        case 48: sample_dots_backward<48>(weights, sample, fields, dim, square.data(), gv); break;
        case 64: sample_dots_backward<64>(weights, sample, fields, dim, square.data(), gv); break;
        default: generic_dots_backward(weights, sample, fields, dim, gv);
      }
      const float* dense = g + b * width_out;  // the dense vector's own gradient, added after the dots' (as autograd)
      for (int64_t d = 0; d < lead; ++d) gv[d] = gv[d] + dense[d];
    }
  });
  return out;
}

// Single-hot lookups of S tables in one pass: out (B, S, D)[b, f] = tables[f][ids[f][b]]. Every id is checked
// first; the first field holding an id outside its table is returned (nothing is read then), else -1.
int64_t gather_fields(std::vector<torch::Tensor> tables, std::vector<torch::Tensor> ids, torch::Tensor out) {
  const int64_t fields = static_cast<int64_t>(tables.size());
  TORCH_CHECK(static_cast<int64_t>(ids.size()) == fields && out.dim() == 3 && out.size(1) == fields &&
                  out.is_contiguous() && out.scalar_type() == torch::kFloat32, "out must be contiguous (B, S, D)");
  const int64_t batch = out.size(0), dim = out.size(2);
  std::vector<const float*> rows(fields);
  std::vector<const int64_t*> keys(fields);
  for (int64_t f = 0; f < fields; ++f) {
    TORCH_CHECK(tables[f].dim() == 2 && tables[f].size(1) == dim && tables[f].is_contiguous() &&
                    tables[f].scalar_type() == torch::kFloat32, "tables must be contiguous (rows, D) float32");
    TORCH_CHECK(ids[f].scalar_type() == torch::kInt64 && ids[f].is_contiguous() && ids[f].numel() == batch,
                "ids must be contiguous int64, one per sample");
    rows[f] = tables[f].data_ptr<float>();
    keys[f] = ids[f].data_ptr<int64_t>();
    const int64_t limit = tables[f].size(0);
    for (int64_t b = 0; b < batch; ++b) {
      if (keys[f][b] < 0 || keys[f][b] >= limit) return f;
    }
  }
  float* o = out.data_ptr<float>();
  at::parallel_for(0, batch, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int64_t f = 0; f < fields; ++f)
        std::memcpy(o + (b * fields + f) * dim, rows[f] + keys[f][b] * dim, dim * sizeof(float));
  });
  return -1;
}

// The gradients of gather_fields: one uncoalesced sparse COO tensor (rows_f, D) per table, ids[f] as indices and
// grad[:, f] as values (what F.embedding(sparse=True) gives each table), the values of all tables copied once.
std::vector<torch::Tensor> field_gradients(torch::Tensor grad, std::vector<torch::Tensor> ids,
                                           std::vector<int64_t> rows) {
  const int64_t fields = static_cast<int64_t>(ids.size());
  TORCH_CHECK(grad.dim() == 3 && grad.size(1) == fields, "grad must be (B, S, D)");
  const torch::Tensor by_field = grad.transpose(0, 1).contiguous();  // (S, B, D)
  std::vector<torch::Tensor> out;
  out.reserve(fields);
  for (int64_t f = 0; f < fields; ++f) {
    out.push_back(at::_sparse_coo_tensor_unsafe(ids[f].view({1, -1}), by_field[f], {rows[f], grad.size(2)},
                                                grad.options().layout(torch::kSparse)));
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rowwise_adagrad", &rowwise_adagrad, "row-wise Adagrad on the sparse gradients of many tables (in place)");
  m.def("lazy_adam", &lazy_adam, "lazy (sparse) Adam on the sparse gradients of many tables (in place)");
  m.def("pair_dots", &pair_dots, "(B, F, D) -> (B, F(F-1)/2) dot products of the field pairs i < j (after field 0 with dense_first)");
  m.def("gather_fields", &gather_fields, "single-hot lookups of many tables into (B, S, D); first bad field or -1");
  m.def("field_gradients", &field_gradients, "sparse COO gradients of gather_fields, one per table");
  m.def("pair_dots_backward", &pair_dots_backward, "gradient of pair_dots with respect to the vectors");
}
