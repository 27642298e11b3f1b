// CARAFE forward and backward on CUDA. One thread per element of the tensor being written, each
// gathering what it needs, so no atomics are used and the results are deterministic:
//   forward:      one thread per output (n, c, Y, X), k*k taps;
//   feature grad: one thread per source (n, c, y, x), the k*k*s*s outputs that read it;
//   mask grad:    one thread per mask element (n, g*k*k + t, Y, X), the C/G channels of its group.
// Sums are accumulated in float for half/bfloat16 (at::opmath_type).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"

namespace glimpse {
namespace {

constexpr int kThreads = 256;

// Grid-stride loops cover whatever the capped grid does not.
inline unsigned int num_blocks(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 20));
}

template <typename scalar_t>
__global__ void carafe_forward_kernel(const scalar_t* __restrict__ feat,
                                      const scalar_t* __restrict__ mask,
                                      scalar_t* __restrict__ out, int64_t total, int64_t C,
                                      int64_t H, int64_t W, int64_t Cg, int64_t k, int64_t s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Ho = H * s, Wo = W * s, r = (k - 1) / 2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t X = i % Wo, Y = (i / Wo) % Ho, c = (i / (Wo * Ho)) % C, n = i / (Wo * Ho * C);
    const int64_t g = c / Cg, G = C / Cg;
    const scalar_t* f = feat + (n * C + c) * H * W;
    const scalar_t* m = mask + ((n * G + g) * k * k) * Ho * Wo + Y * Wo + X;
    const int64_t y0 = Y / s - r, x0 = X / s - r;
    acc_t acc = 0;
    for (int64_t ky = 0; ky < k; ++ky) {
      const int64_t y = y0 + ky;
      if (y < 0 || y >= H) continue;
      for (int64_t kx = 0; kx < k; ++kx) {
        const int64_t x = x0 + kx;
        if (x < 0 || x >= W) continue;
        acc += acc_t(m[(ky * k + kx) * Ho * Wo]) * acc_t(f[y * W + x]);
      }
    }
    out[i] = scalar_t(acc);
  }
}

template <typename scalar_t>
__global__ void carafe_feature_grad_kernel(const scalar_t* __restrict__ dout,
                                           const scalar_t* __restrict__ mask,
                                           scalar_t* __restrict__ dfeat, int64_t total,
                                           int64_t C, int64_t H, int64_t W, int64_t Cg, int64_t k,
                                           int64_t s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Ho = H * s, Wo = W * s, r = (k - 1) / 2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t x = i % W, y = (i / W) % H, c = (i / (W * H)) % C, n = i / (W * H * C);
    const int64_t g = c / Cg, G = C / Cg;
    const scalar_t* d = dout + (n * C + c) * Ho * Wo;
    const scalar_t* m = mask + ((n * G + g) * k * k) * Ho * Wo;
    acc_t acc = 0;
    for (int64_t ky = 0; ky < k; ++ky) {
      const int64_t yc = y - ky + r;  // source row of the outputs that read (y, x) with tap ky
      if (yc < 0 || yc >= H) continue;
      for (int64_t kx = 0; kx < k; ++kx) {
        const int64_t xc = x - kx + r;
        if (xc < 0 || xc >= W) continue;
        const scalar_t* mt = m + (ky * k + kx) * Ho * Wo;
        for (int64_t sy = 0; sy < s; ++sy) {
          for (int64_t sx = 0; sx < s; ++sx) {
            const int64_t o = (yc * s + sy) * Wo + xc * s + sx;
            acc += acc_t(mt[o]) * acc_t(d[o]);
          }
        }
      }
    }
    dfeat[i] = scalar_t(acc);
  }
}

template <typename scalar_t>
__global__ void carafe_mask_grad_kernel(const scalar_t* __restrict__ dout,
                                        const scalar_t* __restrict__ feat,
                                        scalar_t* __restrict__ dmask, int64_t total, int64_t C,
                                        int64_t H, int64_t W, int64_t Cg, int64_t k, int64_t s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Ho = H * s, Wo = W * s, r = (k - 1) / 2, G = C / Cg, K = k * k * G;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t X = i % Wo, Y = (i / Wo) % Ho, ch = (i / (Wo * Ho)) % K, n = i / (Wo * Ho * K);
    const int64_t g = ch / (k * k), t = ch % (k * k);
    const int64_t y = Y / s + t / k - r, x = X / s + t % k - r;
    acc_t acc = 0;
    if (y >= 0 && y < H && x >= 0 && x < W) {
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        acc += acc_t(dout[((n * C + c) * Ho + Y) * Wo + X]) *
               acc_t(feat[((n * C + c) * H + y) * W + x]);
      }
    }
    dmask[i] = scalar_t(acc);
  }
}

at::Tensor carafe_forward_cuda(const at::Tensor& features, const at::Tensor& masks,
                               int64_t kernel_size, int64_t group_size, int64_t scale_factor) {
  check_carafe_args(features, masks, kernel_size, group_size, scale_factor);
  const c10::cuda::CUDAGuard guard(features.device());
  const auto feat = features.contiguous();
  const auto mask = masks.contiguous();
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  auto out = at::empty({N, C, H * scale_factor, W * scale_factor}, feat.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(),
                                  "glimpse::carafe (CUDA)", [&] {
    carafe_forward_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        feat.const_data_ptr<scalar_t>(), mask.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), total, C, H, W, C / group_size, kernel_size,
        scale_factor);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> carafe_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& features, const at::Tensor& masks,
    int64_t kernel_size, int64_t group_size, int64_t scale_factor) {
  check_carafe_args(features, masks, kernel_size, group_size, scale_factor);
  check_carafe_grad(grad_output, features, scale_factor);
  const c10::cuda::CUDAGuard guard(features.device());
  const auto feat = features.contiguous();
  const auto mask = masks.contiguous();
  const auto dout = grad_output.contiguous();
  const int64_t C = feat.size(1), H = feat.size(2), W = feat.size(3);
  auto dfeat = at::zeros(feat.sizes(), feat.options());
  auto dmask = at::zeros(mask.sizes(), mask.options());
  if (dout.numel() == 0) return {dfeat, dmask};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(),
                                  "glimpse::carafe_backward (CUDA)", [&] {
    const int64_t nf = dfeat.numel(), nm = dmask.numel();
    carafe_feature_grad_kernel<scalar_t><<<num_blocks(nf), kThreads, 0, stream>>>(
        dout.const_data_ptr<scalar_t>(), mask.const_data_ptr<scalar_t>(),
        dfeat.mutable_data_ptr<scalar_t>(), nf, C, H, W, C / group_size, kernel_size,
        scale_factor);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    carafe_mask_grad_kernel<scalar_t><<<num_blocks(nm), kThreads, 0, stream>>>(
        dout.const_data_ptr<scalar_t>(), feat.const_data_ptr<scalar_t>(),
        dmask.mutable_data_ptr<scalar_t>(), nm, C, H, W, C / group_size, kernel_size,
        scale_factor);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dfeat, dmask};
}

}  // namespace

TORCH_LIBRARY_IMPL(glimpse, CUDA, m) {
  m.impl("carafe", &carafe_forward_cuda);
  m.impl("carafe_backward", &carafe_backward_cuda);
}

}  // namespace glimpse
