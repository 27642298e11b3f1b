// Argument checks shared by the CPU and CUDA kernels. The Python wrappers in glimpse.ops check the
// same conditions first with friendlier messages; these guard direct torch.ops.glimpse.* calls.
#pragma once

#include <ATen/ATen.h>

namespace glimpse {

inline void check_carafe_args(
    const at::Tensor& features, const at::Tensor& masks, int64_t kernel_size, int64_t group_size,
    int64_t scale_factor) {
  TORCH_CHECK(features.dim() == 4, "carafe: features must be 4-D (N, C, H, W), got ",
              features.dim(), "-D");
  TORCH_CHECK(masks.dim() == 4, "carafe: masks must be 4-D (N, G*k*k, sH, sW), got ", masks.dim(),
              "-D");
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1,
              "carafe: kernel_size must be odd and >= 1, got ", kernel_size);
  TORCH_CHECK(group_size >= 1, "carafe: group_size must be >= 1, got ", group_size);
  TORCH_CHECK(scale_factor >= 1, "carafe: scale_factor must be >= 1, got ", scale_factor);
  TORCH_CHECK(features.size(1) % group_size == 0, "carafe: channels (", features.size(1),
              ") must be divisible by group_size (", group_size, ")");
  TORCH_CHECK(masks.size(0) == features.size(0), "carafe: batch sizes differ: features ",
              features.size(0), ", masks ", masks.size(0));
  TORCH_CHECK(masks.size(1) == kernel_size * kernel_size * group_size,
              "carafe: masks must have kernel_size^2 * group_size = ",
              kernel_size * kernel_size * group_size, " channels, got ", masks.size(1));
  TORCH_CHECK(masks.size(2) == features.size(2) * scale_factor &&
                  masks.size(3) == features.size(3) * scale_factor,
              "carafe: masks must be scale_factor x the feature size (", features.size(2) *
              scale_factor, ", ", features.size(3) * scale_factor, "), got (", masks.size(2), ", ",
              masks.size(3), ")");
  TORCH_CHECK(features.device() == masks.device(), "carafe: features and masks are on different"
              " devices (", features.device(), ", ", masks.device(), ")");
  TORCH_CHECK(features.scalar_type() == masks.scalar_type(), "carafe: features and masks have"
              " different dtypes (", features.scalar_type(), ", ", masks.scalar_type(), ")");
}

inline void check_carafe_grad(const at::Tensor& grad_output, const at::Tensor& features,
                              int64_t scale_factor) {
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == features.size(0) &&
                  grad_output.size(1) == features.size(1) &&
                  grad_output.size(2) == features.size(2) * scale_factor &&
                  grad_output.size(3) == features.size(3) * scale_factor,
              "carafe_backward: grad_output has shape ", grad_output.sizes(),
              ", expected the output shape");
  TORCH_CHECK(grad_output.device() == features.device() &&
                  grad_output.scalar_type() == features.scalar_type(),
              "carafe_backward: grad_output must match the features' device and dtype");
}

// Returns the output size (Ho, Wo) of a stride-1 convolution.
inline std::pair<int64_t, int64_t> check_masked_conv_args(
    const at::Tensor& features, const at::Tensor& mask, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, at::IntArrayRef padding) {
  TORCH_CHECK(features.dim() == 4, "masked_conv2d: features must be 4-D (N, C, H, W), got ",
              features.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4, "masked_conv2d: weight must be 4-D (Co, C, kh, kw), got ",
              weight.dim(), "-D");
  TORCH_CHECK(mask.dim() == 3, "masked_conv2d: mask must be 3-D (N, Ho, Wo), got ", mask.dim(),
              "-D");
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0,
              "masked_conv2d: padding must be two non-negative ints, got ", padding);
  TORCH_CHECK(weight.size(1) == features.size(1), "masked_conv2d: weight expects ", weight.size(1),
              " input channels, features have ", features.size(1));
  const int64_t ho = features.size(2) + 2 * padding[0] - weight.size(2) + 1;
  const int64_t wo = features.size(3) + 2 * padding[1] - weight.size(3) + 1;
  TORCH_CHECK(ho >= 0 && wo >= 0, "masked_conv2d: kernel larger than the padded input");
  TORCH_CHECK(mask.size(0) == features.size(0) && mask.size(1) == ho && mask.size(2) == wo,
              "masked_conv2d: mask must have shape (", features.size(0), ", ", ho, ", ", wo,
              "), got ", mask.sizes());
  TORCH_CHECK(features.device() == weight.device() && features.device() == mask.device(),
              "masked_conv2d: features, mask and weight must be on one device");
  TORCH_CHECK(features.scalar_type() == weight.scalar_type(),
              "masked_conv2d: features and weight have different dtypes");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0),
                "masked_conv2d: bias must have shape (", weight.size(0), ",)");
    TORCH_CHECK(bias->device() == features.device() &&
                    bias->scalar_type() == features.scalar_type(),
                "masked_conv2d: bias must match the features' device and dtype");
  }
  return {ho, wo};
}

}  // namespace glimpse
