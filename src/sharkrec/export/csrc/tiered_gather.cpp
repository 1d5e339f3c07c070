// Fused lookup over tier-ordered slots: every row is read in its stored precision in one pass.
//
// Per field f, local slots [0, ends[f][0]) are fp32 rows, then fp16 up to ends[f][1], int8 up to
// ends[f][2], int4 up to ends[f][3]. Each tier is one pool shared by all fields; the pool row of
// local slot s in tier t is s + shift[f][t] (an affine map, not a remap table). int8 and int4 pool
// rows carry their own scale in front of the codes (the per-row header of SHARK's Table 1):
//   int8 row: float32 scale, D int8 codes              value = scale * code
//   int4 row: float32 scale, ceil(D/2) bytes, low nibble first, code = nibble - 8
#include <torch/extension.h>
#include <immintrin.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>

namespace {

struct Pools {
  const float* fp32;
  const uint16_t* fp16;
  const uint8_t* int8;
  const uint8_t* int4;
  int64_t dim, stride8, stride4;
};

inline void read_fp16(const uint16_t* src, float* out, int64_t dim) {
  int64_t d = 0;
#ifdef __F16C__
  for (; d + 8 <= dim; d += 8) {
    __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + d));
    _mm256_storeu_ps(out + d, _mm256_cvtph_ps(half));
  }
#endif
  for (; d < dim; ++d) out[d] = c10::detail::fp16_ieee_to_fp32_value(src[d]);
}

inline void read_int8(const uint8_t* row, float* out, int64_t dim) {
  float scale;
  std::memcpy(&scale, row, sizeof(float));
  const int8_t* codes = reinterpret_cast<const int8_t*>(row + sizeof(float));
  for (int64_t d = 0; d < dim; ++d) out[d] = scale * static_cast<float>(codes[d]);
}

inline void read_int4(const uint8_t* row, float* out, int64_t dim) {
  float scale;
  std::memcpy(&scale, row, sizeof(float));
  const uint8_t* codes = row + sizeof(float);
  const int64_t pairs = dim / 2;
  for (int64_t k = 0; k < pairs; ++k) {
    const uint8_t byte = codes[k];
    out[2 * k] = scale * static_cast<float>(static_cast<int>(byte & 15) - 8);
    out[2 * k + 1] = scale * static_cast<float>(static_cast<int>(byte >> 4) - 8);
  }
  if (dim & 1) out[dim - 1] = scale * static_cast<float>(static_cast<int>(codes[pairs] & 15) - 8);
}

// Address and length of the stored row of local slot `slot` of a field (ends, shift: 4 words each).
inline const void* locate(const Pools& p, const int64_t* ends, const int64_t* shift, int64_t slot, int* tier) {
  if (slot < ends[0]) { *tier = 0; return p.fp32 + (slot + shift[0]) * p.dim; }
  if (slot < ends[1]) { *tier = 1; return p.fp16 + (slot + shift[1]) * p.dim; }
  if (slot < ends[2]) { *tier = 2; return p.int8 + (slot + shift[2]) * p.stride8; }
  *tier = 3;
  return p.int4 + (slot + shift[3]) * p.stride4;
}

}  // namespace

// slots (B, F) int64, ends and shift (F, 4) int64; pools: fp32 (n32, D) float32, fp16 (n16, D)
// float16, int8 (n8, 4 + D) uint8, int4 (n4, 4 + ceil(D/2)) uint8. Writes field f of sample b to
// out[b, columns[f]]: `out` is (B, C, D) float32, possibly a strided view (e.g. columns 1.. of the
// network's field-vector matrix) with a contiguous last dimension; `columns` (F,) int64 in [0, C).
// Returns the flat index of the first out-of-range slot, or -1.
int64_t tiered_gather(const torch::Tensor& slots, const torch::Tensor& ends, const torch::Tensor& shift,
                      const torch::Tensor& fp32, const torch::Tensor& fp16, const torch::Tensor& int8,
                      const torch::Tensor& int4, int64_t dim, torch::Tensor out, const torch::Tensor& columns) {
  TORCH_CHECK(slots.dim() == 2 && slots.scalar_type() == torch::kInt64 && slots.is_contiguous(), "slots: (B, F) int64");
  const int64_t batch = slots.size(0), fields = slots.size(1);
  TORCH_CHECK(ends.sizes() == torch::IntArrayRef({fields, 4}) && shift.sizes() == ends.sizes(), "ends/shift: (F, 4)");
  TORCH_CHECK(out.scalar_type() == torch::kFloat32 && out.dim() == 3 && out.size(0) == batch &&
              out.size(2) == dim && (dim <= 1 || out.stride(2) == 1), "out: (B, C, D) float32");
  TORCH_CHECK(columns.scalar_type() == torch::kInt64 && columns.is_contiguous() && columns.numel() == fields,
              "columns: (F,) int64");
  const int64_t* column = columns.data_ptr<int64_t>();
  for (int64_t f = 0; f < fields; ++f) TORCH_CHECK(column[f] >= 0 && column[f] < out.size(1), "columns out of range");
  Pools p{fp32.data_ptr<float>(), reinterpret_cast<const uint16_t*>(fp16.data_ptr<at::Half>()),
          int8.data_ptr<uint8_t>(), int4.data_ptr<uint8_t>(), dim, int8.size(1), int4.size(1)};
  const int64_t out_sample = out.stride(0), out_field = out.stride(1);
  const int64_t* s = slots.data_ptr<int64_t>();
  const int64_t* e = ends.data_ptr<int64_t>();
  const int64_t* h = shift.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  const int64_t n = batch * fields;
  int64_t first_bad = -1;
  constexpr int64_t kAhead = 8;
  {
    pybind11::gil_scoped_release no_gil;
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n) {
        const int64_t j = i + kAhead, fj = j % fields, sj = s[j];
        if (sj >= 0 && sj < e[4 * fj + 3]) {
          int tier;
          const char* row = static_cast<const char*>(locate(p, e + 4 * fj, h + 4 * fj, sj, &tier));
          _mm_prefetch(row, _MM_HINT_T0);
          if (tier == 0) {
            for (int64_t b = 64; b < dim * 4; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
          } else if (tier == 1) {
            for (int64_t b = 64; b < dim * 2; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
          } else if (tier == 2) {
            for (int64_t b = 64; b < p.stride8; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
          }
        }
      }
      const int64_t f = i % fields, slot = s[i];
      if (slot < 0 || slot >= e[4 * f + 3]) {
        first_bad = i;
        break;
      }
      int tier;
      const void* row = locate(p, e + 4 * f, h + 4 * f, slot, &tier);
      float* dst = o + (i / fields) * out_sample + column[f] * out_field;
      switch (tier) {
        case 0: std::memcpy(dst, row, dim * sizeof(float)); break;
        case 1: read_fp16(static_cast<const uint16_t*>(row), dst, dim); break;
        case 2: read_int8(static_cast<const uint8_t*>(row), dst, dim); break;
        default: read_int4(static_cast<const uint8_t*>(row), dst, dim); break;
      }
    }
  }
  return first_bad;
}

// One multi-hot field: bags of local slots `values` (nnz,) cut by `offsets` (B + 1,), summed into
// `out` (B, D) float32 (last dimension contiguous). ends, shift: (4,) int64 of this field.
// Returns the position in `values` of the first out-of-range slot, or -1.
int64_t tiered_bag(const torch::Tensor& values, const torch::Tensor& offsets, const torch::Tensor& ends,
                   const torch::Tensor& shift, const torch::Tensor& fp32, const torch::Tensor& fp16,
                   const torch::Tensor& int8, const torch::Tensor& int4, int64_t dim, torch::Tensor out) {
  TORCH_CHECK(values.scalar_type() == torch::kInt64 && values.is_contiguous() && offsets.scalar_type() == torch::kInt64 &&
              offsets.is_contiguous() && offsets.dim() == 1 && offsets.size(0) >= 1, "values, offsets: int64");
  const int64_t batch = offsets.size(0) - 1, nnz = values.numel();
  TORCH_CHECK(ends.numel() == 4 && shift.numel() == 4 && ends.is_contiguous() && shift.is_contiguous(), "ends/shift: (4,)");
  TORCH_CHECK(out.scalar_type() == torch::kFloat32 && out.dim() == 2 && out.size(0) == batch && out.size(1) == dim &&
              (dim <= 1 || out.stride(1) == 1), "out: (B, D) float32");
  Pools p{fp32.data_ptr<float>(), reinterpret_cast<const uint16_t*>(fp16.data_ptr<at::Half>()),
          int8.data_ptr<uint8_t>(), int4.data_ptr<uint8_t>(), dim, int8.size(1), int4.size(1)};
  const int64_t* v = values.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* e = ends.data_ptr<int64_t>();
  const int64_t* h = shift.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  const int64_t out_sample = out.stride(0);
  std::vector<float> row_values(static_cast<size_t>(dim));
  int64_t first_bad = -1;
  {
    pybind11::gil_scoped_release no_gil;
    for (int64_t b = 0; b < batch && first_bad < 0; ++b) {
      float* dst = o + b * out_sample;
      std::fill(dst, dst + dim, 0.0f);
      const int64_t begin = std::max<int64_t>(off[b], 0), end = std::min<int64_t>(off[b + 1], nnz);
      for (int64_t j = begin; j < end; ++j) {
        const int64_t slot = v[j];
        if (slot < 0 || slot >= e[3]) {
          first_bad = j;
          break;
        }
        int tier;
        const void* row = locate(p, e, h, slot, &tier);
        float* tmp = row_values.data();
        switch (tier) {
          case 0: std::memcpy(tmp, row, dim * sizeof(float)); break;
          case 1: read_fp16(static_cast<const uint16_t*>(row), tmp, dim); break;
          case 2: read_int8(static_cast<const uint8_t*>(row), tmp, dim); break;
          default: read_int4(static_cast<const uint8_t*>(row), tmp, dim); break;
        }
        for (int64_t d = 0; d < dim; ++d) dst[d] += tmp[d];
      }
    }
  }
  return first_bad;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("tiered_gather", &tiered_gather, "fused gather over tier-ordered slots (see tiered_gather.cpp)");
  m.def("tiered_bag", &tiered_bag, "sum-pooled bags of one multi-hot field over the same pools");
}
