// Nearest centroid of every point, fused: the distances of a few points to a block of centroids stay in
// registers and only the running minimum is kept (sharkrec/cluster/kmeans.py loads this file; its
// nearest_centroid holds the same computation in PyTorch ops: a blocked GEMM, then an argmin over the
// (points, K) distance block it wrote to memory, used when no compiler is available).
//
// score(x, c) = bias_c + alpha * <x, c>: euclidean bias ||c||^2, alpha -2 (||x||^2 is the same for every c, so
// it is left out); cosine bias 0, alpha -1 (unit rows: the largest dot is the smallest score). The answer is
// the lowest centroid index reaching the smallest score (ties in a lane go to the earlier block by the strict
// comparison, ties across lanes to the lower index in the final reduction).
//
// Layout: centroids packed in blocks of kLanes (one 16-float vector: one AVX-512 register, two AVX2 ones):
// packed[block][d][lane], padding lanes with bias +inf so they never win. kPoints points at a time share every
// centroid load (8 points x 1 block: 0.40 s for 1M points x 1,024 centroids x D 16 on one EPYC core, against
// 0.48 s for 6 x 2 blocks of 8 lanes and 1.0-1.3 s for the GEMM + argmin path).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));

constexpr int64_t kLanes = 16;  // centroids per block: one vf
constexpr int64_t kPoints = 8;  // points per pass over the blocks

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline vf splat(float x) { return x - vf{}; }

inline vi splat_i(int32_t x) { return x - vi{}; }

// Keep the smaller of (best, score) per lane with its centroid index; `index` holds the lanes' indices.
inline void keep_min(vf& best, vi& best_index, vf score, vi index) {
  vi smaller = score < best;  // all-ones lanes where score is strictly smaller
  best = reinterpret_cast<vf>((reinterpret_cast<vi>(score) & smaller) | (reinterpret_cast<vi>(best) & ~smaller));
  best_index = (index & smaller) | (best_index & ~smaller);
}

}  // namespace

torch::Tensor nearest_centroid(torch::Tensor points, torch::Tensor centroids, bool cosine) {
  TORCH_CHECK(points.dim() == 2 && centroids.dim() == 2, "points (N, D) and centroids (K, D)");
  TORCH_CHECK(points.scalar_type() == torch::kFloat32 && centroids.scalar_type() == torch::kFloat32,
              "float32 points and centroids");
  TORCH_CHECK(points.size(1) == centroids.size(1), "points and centroids of the same dimension");
  TORCH_CHECK(centroids.size(0) >= 1 && centroids.size(0) < (int64_t{1} << 31), "1 to 2^31 - 1 centroids");
  points = points.contiguous();
  centroids = centroids.contiguous();
  const int64_t n = points.size(0), dim = points.size(1), k = centroids.size(0);
  const int64_t blocks = (k + kLanes - 1) / kLanes;
  const float alpha = cosine ? -1.0f : -2.0f;
  std::vector<float> packed(blocks * dim * kLanes, 0.0f);
  std::vector<float> bias(blocks * kLanes, std::numeric_limits<float>::infinity());
  const float* c = centroids.data_ptr<float>();
  for (int64_t j = 0; j < k; ++j) {
    const int64_t block = j / kLanes, lane = j % kLanes;
    float norm = 0.0f;
    for (int64_t d = 0; d < dim; ++d) {
      const float v = c[j * dim + d];
      packed[(block * dim + d) * kLanes + lane] = v;
      norm += v * v;
    }
    bias[j] = cosine ? 0.0f : norm;
  }
  auto out = torch::empty({n}, torch::kInt64);
  const float* x = points.data_ptr<float>();
  int64_t* answer = out.data_ptr<int64_t>();
  const vi lane_index = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  at::parallel_for(0, (n + kPoints - 1) / kPoints, 64, [&](int64_t first, int64_t last) {
    std::vector<float> scaled(kPoints * dim);
    for (int64_t group = first; group < last; ++group) {
      const int64_t start = group * kPoints;
      const int64_t count = std::min(kPoints, n - start);
      for (int64_t p = 0; p < kPoints; ++p) {  // a short last group repeats its last point
        const float* row = x + (start + std::min(p, count - 1)) * dim;
        for (int64_t d = 0; d < dim; ++d) scaled[p * dim + d] = alpha * row[d];
      }
      vf best[kPoints];
      vi best_index[kPoints];
      for (int64_t p = 0; p < kPoints; ++p) {
        best[p] = splat(std::numeric_limits<float>::infinity());
        best_index[p] = splat_i(0);
      }
      for (int64_t block = 0; block < blocks; ++block) {
        const float* column = packed.data() + block * dim * kLanes;
        const vf block_bias = load(bias.data() + block * kLanes);
        vf score[kPoints];
        for (int64_t p = 0; p < kPoints; ++p) score[p] = block_bias;
        for (int64_t d = 0; d < dim; ++d) {
          const vf centre = load(column + d * kLanes);
          for (int64_t p = 0; p < kPoints; ++p) score[p] += splat(scaled[p * dim + d]) * centre;
        }
        const vi index = lane_index + splat_i(static_cast<int32_t>(block * kLanes));
        for (int64_t p = 0; p < kPoints; ++p) keep_min(best[p], best_index[p], score[p], index);
      }
      for (int64_t p = 0; p < count; ++p) {
        float value = std::numeric_limits<float>::infinity();
        int32_t index = 0;
        for (int lane = 0; lane < kLanes; ++lane) {
          const float v = best[p][lane];
          const int32_t i = best_index[p][lane];
          if (lane == 0 || v < value || (v == value && i < index)) {
            value = v;
            index = i;
          }
        }
        answer[start + p] = index;
      }
    }
  });
  return out;
}

// Greedy weighted k-means++ (sharkrec/cluster/kmeans.py, _greedy_initial_centroids, holds the same algorithm
// in PyTorch ops): the first centre is the point where uniforms[0][0] * total mass falls in the running sum of
// `mass`; every next one draws T = uniforms.size(1) candidates, candidate t where uniforms[i][t] * total falls
// in the running sum of mass * closest (closest: squared distance to the nearest centre so far; the plain
// mass when that sum is 0), and keeps the candidate of the lowest potential sum_j mass_j * min(closest_j,
// d(x_j, candidate)^2), the first on ties. All T candidates are scored in one pass over the points
// (transposed, kLanes at a time), reached distances kept so the chosen one becomes `closest` without a
// second pass. Returns the (K,) indices of the chosen points.
torch::Tensor greedy_seeds(torch::Tensor points, torch::Tensor mass, torch::Tensor uniforms) {
  TORCH_CHECK(points.dim() == 2 && points.scalar_type() == torch::kFloat32, "points (N, D) float32");
  TORCH_CHECK(mass.dim() == 1 && mass.scalar_type() == torch::kFloat64 && mass.size(0) == points.size(0),
              "mass (N,) float64");
  TORCH_CHECK(uniforms.dim() == 2 && uniforms.scalar_type() == torch::kFloat64 && uniforms.size(1) >= 1,
              "uniforms (K, T) float64");
  points = points.contiguous();
  mass = mass.contiguous();
  uniforms = uniforms.contiguous();
  const int64_t n = points.size(0), dim = points.size(1), k = uniforms.size(0), trials = uniforms.size(1);
  TORCH_CHECK(n >= 1 && k >= 1, "at least one point and one centre");
  const int64_t blocks = (n + kLanes - 1) / kLanes, padded = blocks * kLanes;
  const float* x = points.data_ptr<float>();
  const double* w = mass.data_ptr<double>();
  const double* u = uniforms.data_ptr<double>();
  std::vector<float> transposed(dim * padded, 0.0f), norm(padded, 0.0f), weight(padded, 0.0f);
  for (int64_t j = 0; j < n; ++j) {
    float sq = 0.0f;
    for (int64_t d = 0; d < dim; ++d) {
      transposed[d * padded + j] = x[j * dim + d];
      sq += x[j * dim + d] * x[j * dim + d];
    }
    norm[j] = sq;
    weight[j] = static_cast<float>(w[j]);  // padding points weigh 0
  }
  std::vector<double> running(n), mass_running(n);
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) mass_running[j] = sum += w[j];
  auto draw = [n](const std::vector<double>& cumulative, double threshold) {  // searchsorted(right=True)
    const int64_t at = std::upper_bound(cumulative.begin(), cumulative.end(), threshold) - cumulative.begin();
    return std::min(at, n - 1);
  };
  auto out = torch::empty({k}, torch::kInt64);
  int64_t* chosen = out.data_ptr<int64_t>();
  std::vector<float> closest(padded), reached(trials * padded), centre(trials * dim);
  std::vector<int64_t> drawn(trials);
  chosen[0] = draw(mass_running, u[0] * mass_running[n - 1]);
  for (int64_t j = 0; j < padded; ++j) {
    float dot = 0.0f;
    for (int64_t d = 0; d < dim; ++d) dot += transposed[d * padded + j] * x[chosen[0] * dim + d];
    closest[j] = std::max(norm[j] + norm[chosen[0]] - 2.0f * dot, 0.0f);
  }
  for (int64_t i = 1; i < k; ++i) {
    sum = 0.0;
    for (int64_t j = 0; j < n; ++j) running[j] = sum += w[j] * static_cast<double>(closest[j]);
    const bool spread = sum > 0.0;  // else every weighted point already is a centre: draw by mass
    const std::vector<double>& cumulative = spread ? running : mass_running;
    const double total = cumulative[n - 1];
    for (int64_t t = 0; t < trials; ++t) {
      drawn[t] = draw(cumulative, u[i * trials + t] * total);
      for (int64_t d = 0; d < dim; ++d) centre[t * dim + d] = -2.0f * x[drawn[t] * dim + d];
    }
    std::vector<vf> sums(trials, splat(0.0f));
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t j0 = b * kLanes;
      vf acc[16];
      const int64_t groups = (trials + 15) / 16;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t count = std::min<int64_t>(16, trials - g * 16);
        for (int64_t t = 0; t < count; ++t) acc[t] = load(norm.data() + j0);
        for (int64_t d = 0; d < dim; ++d) {
          const vf column = load(transposed.data() + d * padded + j0);
          for (int64_t t = 0; t < count; ++t) acc[t] += splat(centre[(g * 16 + t) * dim + d]) * column;
        }
        const vf near = load(closest.data() + j0), mass_block = load(weight.data() + j0);
        for (int64_t t = 0; t < count; ++t) {
          const int64_t c = g * 16 + t;
          vf value = acc[t] + splat(norm[drawn[c]]);
          value = reinterpret_cast<vf>((reinterpret_cast<vi>(value) & (value > 0.0f)));  // max(value, 0)
          const vi nearer = near < value;
          value = reinterpret_cast<vf>((reinterpret_cast<vi>(near) & nearer) | (reinterpret_cast<vi>(value) & ~nearer));
          std::memcpy(reached.data() + c * padded + j0, &value, sizeof(value));
          sums[c] += value * mass_block;
        }
      }
    }
    int64_t best = 0;
    float lowest = 0.0f;
    for (int64_t t = 0; t < trials; ++t) {
      float potential = 0.0f;
      for (int lane = 0; lane < kLanes; ++lane) potential += sums[t][lane];
      if (t == 0 || potential < lowest) {
        best = t;
        lowest = potential;
      }
    }
    chosen[i] = drawn[best];
    std::memcpy(closest.data(), reached.data() + best * padded, padded * sizeof(float));
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("nearest_centroid", &nearest_centroid, "index of the nearest centroid of every point (fused, blocked)");
  m.def("greedy_seeds", &greedy_seeds, "greedy weighted k-means++: the indices of the K chosen points");
}
