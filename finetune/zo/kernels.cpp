// Fused CPU loops for the baselines' table-noise writes, loaded and checked by finetune/zo/kernels.py.
//
// Each function is one pass over a table chunk of one block that the eager path makes in two to four
// (abs, compare, multiply, add; addcmul, multiply). They compute the eager path's numbers bit for bit:
// the eager add with an alpha and addcmul are one fused multiply-add on CPUs with FMA, and kernels.py uses
// these loops only after a probe has matched them against the eager operations on this machine. All tensors are
// contiguous float32 CPU tensors of one length (checked); an output may be the same tensor as an input.
#include <torch/extension.h>

#include <ATen/Parallel.h>

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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("below_magnitude_add", &below_magnitude_add);
  m.def("scaled_update", &scaled_update);
}
