// Device-independent part of masked_conv2d: pick the masked output pixels, gather their receptive
// fields into a (M, C*kh*kw) matrix with a device kernel, multiply by the weight with one GEMM and
// scatter the (M, Co) result into a zero output. Cost scales with the number of masked pixels M.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"

namespace glimpse {

// im2col(features (N, C, H, W) contiguous, index (M, 3) int64 [n, y, x], cols (M, C*kh*kw), kh, kw,
// ph, pw) and scatter(rows (M, Co) contiguous, index (M, 3), out (N, Co, Ho, Wo) contiguous).
template <typename Im2Col, typename Scatter>
at::Tensor masked_conv2d_impl(const at::Tensor& features, const at::Tensor& mask,
                              const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              at::IntArrayRef padding, const Im2Col& im2col,
                              const Scatter& scatter) {
  const auto [ho, wo] = check_masked_conv_args(features, mask, weight, bias, padding);
  const auto feat = features.contiguous();
  const int64_t co = weight.size(0);
  auto out = at::zeros({feat.size(0), co, ho, wo}, feat.options());
  const auto selected = mask.scalar_type() == at::kBool ? mask : mask.gt(0);
  // nonzero returns a column-major (M, 3) tensor; the kernels read rows [n, y, x].
  const auto index = at::nonzero(selected).contiguous();
  const int64_t m = index.size(0);
  if (m == 0 || out.numel() == 0) return out;
  const int64_t kh = weight.size(2);
  const int64_t kw = weight.size(3);
  auto cols = at::empty({m, feat.size(1) * kh * kw}, feat.options());
  im2col(feat, index, cols, kh, kw, padding[0], padding[1]);
  auto rows = at::mm(cols, weight.reshape({co, -1}).t());  // (M, Co)
  if (bias.has_value() && bias->defined()) rows.add_(*bias);
  scatter(rows.contiguous(), index, out);
  return out;
}

}  // namespace glimpse
