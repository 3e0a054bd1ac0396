// Fused CPU loops for the baselines' writes (Sparse-MeZO, HiZOO, LOZO), loaded and checked by finetune/zo/kernels.py.
//
// Each function is one pass over a part of one block that the eager path makes in two to four (abs, compare,
// multiply, add; addcmul, multiply; an outer product, addcmul per further rank, add). They compute the eager path's
// numbers bit for bit: the eager add with an alpha and addcmul are one fused multiply-add on CPUs with FMA, and
// kernels.py uses these loops only after a probe has matched them against the eager operations on this machine. All
// tensors are contiguous float32 CPU tensors (checked); an output may be the same tensor as an input.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace {

constexpr int64_t kGrain = 32768;  // ATen's grain size for elementwise loops

void check(const torch::Tensor& t, int64_t n, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.is_contiguous() && t.numel() == n,
              what, " must be a contiguous float32 CPU tensor of ", n, " elements");
}

}  // namespace

// out = theta + alpha * m * z with m = 1 where |theta| <= threshold, else 0 (Sparse-MeZO's masked perturbation
// and update: the eager path's add(theta, mul(z, m), alpha)).
void below_magnitude_add(const torch::Tensor& theta, const torch::Tensor& z, torch::Tensor out, double alpha,
                         double threshold) {
  const int64_t n = theta.numel();
  check(theta, n, "theta");
  check(z, n, "z");
  check(out, n, "out");
  const float* t = theta.data_ptr<float>();
  const float* zz = z.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const float a = static_cast<float>(alpha);
  const float h = static_cast<float>(threshold);
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float x = t[i];
      const float m = std::fabs(x) <= h ? 1.0f : 0.0f;
      o[i] = std::fma(zz[i] * m, a, x);
    }
  });
}

// theta += value * z * s, then s *= factor (HiZOO's update along its stored scaling s = H^{-1/2}, and that
// scaling's step: the eager path's addcmul(theta, z, s, value) and mul(s, factor)): one pass where it makes two.
void scaled_update(torch::Tensor theta, const torch::Tensor& z, torch::Tensor s, const torch::Tensor& factor,
                   double value) {
  const int64_t n = theta.numel();
  check(theta, n, "theta");
  check(z, n, "z");
  check(s, n, "s");
  check(factor, n, "factor");
  float* t = theta.data_ptr<float>();
  const float* zz = z.data_ptr<float>();
  float* ss = s.data_ptr<float>();
  const float* f = factor.data_ptr<float>();
  const float v = static_cast<float>(value);
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      t[i] = std::fma(v * zz[i], ss[i], t[i]);
      ss[i] = ss[i] * f[i];
    }
  });
}

// out = theta + alpha * (U V^T) on the flat segment [at, at + count) of an m x n block (theta and out are that
// segment; u is m x rank, vt = V^T is rank x n), each entry of the product summed in a fixed order: acc = u[i,0]
// vt[0,j], then acc = fma(u[i,k], vt[k,j], acc) for k = 1 .. rank - 1 (LOZO's low-rank noise: the eager path's
// outer product, one addcmul per further rank and an add with an alpha, finetune/zo/noise.py).
void low_rank_add(const torch::Tensor& theta, const torch::Tensor& u, const torch::Tensor& vt, torch::Tensor out,
                  double alpha, int64_t at) {
  const int64_t count = theta.numel();
  check(theta, count, "theta");
  check(out, count, "out");
  check(u, u.numel(), "u");
  check(vt, vt.numel(), "vt");
  TORCH_CHECK(u.dim() == 2 && vt.dim() == 2 && u.size(1) == vt.size(0) && u.size(1) >= 1 && at >= 0 &&
                  at + count <= u.size(0) * vt.size(1),
              "low_rank_add: u (m x r), vt (r x n) and the segment [at, at + count) of an m x n block");
  const int64_t r = u.size(1), n = vt.size(1);
  const float* t = theta.data_ptr<float>();
  const float* up = u.data_ptr<float>();
  const float* vp = vt.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const float a = static_cast<float>(alpha);
  at::parallel_for(0, count, kGrain, [&](int64_t lo, int64_t hi) {
    constexpr int64_t kStretch = 512;  // the product for up to this many entries of one row, in a local buffer
    float acc[kStretch];
    int64_t e = lo;
    while (e < hi) {  // a stretch of one row of the block: j runs over contiguous entries of vt's rows
      const int64_t i = (at + e) / n, j0 = (at + e) % n, len = std::min({n - j0, hi - e, kStretch});
      const float* ui = up + i * r;
      const float u0 = ui[0];
      const float* v0 = vp + j0;
      for (int64_t q = 0; q < len; ++q) acc[q] = u0 * v0[q];
      for (int64_t k = 1; k < r; ++k) {
        const float uk = ui[k];
        const float* vk = vp + k * n + j0;
        for (int64_t q = 0; q < len; ++q) acc[q] = std::fma(uk, vk[q], acc[q]);
      }
      const float* tt = t + e;
      float* oo = o + e;
      for (int64_t q = 0; q < len; ++q) oo[q] = std::fma(acc[q], a, tt[q]);
      e += len;
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("below_magnitude_add", &below_magnitude_add);
  m.def("scaled_update", &scaled_update);
  m.def("low_rank_add", &low_rank_add);
}
