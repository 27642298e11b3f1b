// masked_conv2d on CPU: gather / scatter loops around one GEMM (see masked_conv.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../masked_conv.h"

namespace glimpse {
namespace {

void masked_im2col_cpu(const at::Tensor& feat, const at::Tensor& index, at::Tensor& cols,
                       int64_t kh, int64_t kw, int64_t ph, int64_t pw) {
  const int64_t c_in = feat.size(1), h = feat.size(2), w = feat.size(3);
  const int64_t m = index.size(0), kdim = cols.size(1);
  const int64_t* idx = index.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(),
                                  "glimpse::masked_conv2d im2col (CPU)", [&] {
    const scalar_t* f = feat.const_data_ptr<scalar_t>();
    scalar_t* col = cols.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, m, std::max<int64_t>(1, 4096 / std::max<int64_t>(kdim, 1)),
                     [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t n = idx[3 * i], y = idx[3 * i + 1], x = idx[3 * i + 2];
        scalar_t* dst = col + i * kdim;
        for (int64_t c = 0; c < c_in; ++c) {
          const scalar_t* plane = f + (n * c_in + c) * h * w;
          for (int64_t ky = 0; ky < kh; ++ky) {
            const int64_t iy = y - ph + ky;
            for (int64_t kx = 0; kx < kw; ++kx) {
              const int64_t ix = x - pw + kx;
              *dst++ = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? plane[iy * w + ix] : scalar_t(0);
            }
          }
        }
      }
    });
  });
}

void masked_scatter_cpu(const at::Tensor& rows, const at::Tensor& index, at::Tensor& out) {
  const int64_t co = out.size(1), ho = out.size(2), wo = out.size(3);
  const int64_t m = index.size(0);
  const int64_t* idx = index.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                  "glimpse::masked_conv2d scatter (CPU)", [&] {
    const scalar_t* src = rows.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < m; ++i) {
      const int64_t n = idx[3 * i], y = idx[3 * i + 1], x = idx[3 * i + 2];
      for (int64_t o = 0; o < co; ++o) dst[((n * co + o) * ho + y) * wo + x] = src[i * co + o];
    }
  });
}

at::Tensor masked_conv2d_cpu(const at::Tensor& features, const at::Tensor& mask,
                             const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef padding) {
  return masked_conv2d_impl(features, mask, weight, bias, padding, masked_im2col_cpu,
                            masked_scatter_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(glimpse, CPU, m) { m.impl("masked_conv2d", &masked_conv2d_cpu); }

}  // namespace glimpse
