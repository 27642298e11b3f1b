// masked_conv2d on CUDA: gather / scatter kernels around one cuBLAS GEMM (see masked_conv.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../masked_conv.h"

namespace glimpse {
namespace {

constexpr int kThreads = 256;

// Grid-stride loops cover whatever the capped grid does not.
inline unsigned int num_blocks(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 20));
}

// cols[i, (c*kh + ky)*kw + kx] = features[n_i, c, y_i - ph + ky, x_i - pw + kx] (0 outside).
template <typename scalar_t>
__global__ void masked_im2col_kernel(const scalar_t* __restrict__ feat,
                                     const int64_t* __restrict__ index,
                                     scalar_t* __restrict__ cols, int64_t total, int64_t C,
                                     int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t ph,
                                     int64_t pw) {
  const int64_t kdim = C * kh * kw;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < total;
       j += int64_t(blockDim.x) * gridDim.x) {
    const int64_t i = j / kdim, col = j % kdim;
    const int64_t kx = col % kw, ky = (col / kw) % kh, c = col / (kw * kh);
    const int64_t n = index[3 * i], y = index[3 * i + 1] - ph + ky, x = index[3 * i + 2] - pw + kx;
    cols[j] = (y >= 0 && y < H && x >= 0 && x < W) ? feat[((n * C + c) * H + y) * W + x]
                                                   : scalar_t(0);
  }
}

template <typename scalar_t>
__global__ void masked_scatter_kernel(const scalar_t* __restrict__ rows,
                                      const int64_t* __restrict__ index,
                                      scalar_t* __restrict__ out, int64_t total, int64_t Co,
                                      int64_t Ho, int64_t Wo) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < total;
       j += int64_t(blockDim.x) * gridDim.x) {
    const int64_t i = j / Co, o = j % Co;
    const int64_t n = index[3 * i], y = index[3 * i + 1], x = index[3 * i + 2];
    out[((n * Co + o) * Ho + y) * Wo + x] = rows[j];
  }
}

void masked_im2col_cuda(const at::Tensor& feat, const at::Tensor& index, at::Tensor& cols,
                        int64_t kh, int64_t kw, int64_t ph, int64_t pw) {
  const int64_t total = cols.numel();
  if (total == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(),
                                  "glimpse::masked_conv2d im2col (CUDA)", [&] {
    masked_im2col_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        feat.const_data_ptr<scalar_t>(), index.const_data_ptr<int64_t>(),
        cols.mutable_data_ptr<scalar_t>(), total, feat.size(1), feat.size(2), feat.size(3), kh,
        kw, ph, pw);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void masked_scatter_cuda(const at::Tensor& rows, const at::Tensor& index, at::Tensor& out) {
  const int64_t total = rows.numel();
  if (total == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                  "glimpse::masked_conv2d scatter (CUDA)", [&] {
    masked_scatter_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        rows.const_data_ptr<scalar_t>(), index.const_data_ptr<int64_t>(),
        out.mutable_data_ptr<scalar_t>(), total, out.size(1), out.size(2), out.size(3));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor masked_conv2d_cuda(const at::Tensor& features, const at::Tensor& mask,
                              const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              at::IntArrayRef padding) {
  const c10::cuda::CUDAGuard guard(features.device());
  return masked_conv2d_impl(features, mask, weight, bias, padding, masked_im2col_cuda,
                            masked_scatter_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(glimpse, CUDA, m) { m.impl("masked_conv2d", &masked_conv2d_cuda); }

}  // namespace glimpse
