// Schemas of every glimpse::* operator, defined once. Each device registers its kernels in its own
// file (cpu/*.cpp, cuda/*.cu) with TORCH_LIBRARY_IMPL; fake (meta) kernels and autograd formulas
// are registered from Python in glimpse/ops/_registrations.py.
#include <Python.h>
#include <torch/library.h>

// Importing glimpse_kernels._C loads this shared object, which runs the static TORCH_LIBRARY
// initialisers below. The module itself is empty: every op is reached through torch.ops.glimpse.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "glimpse compiled operators (see torch.ops.glimpse)", -1,
      nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(glimpse, m) {
  // CARAFE reassembly (Wang et al., ICCV 2019): features (N, C, H, W), masks (N, G*k*k, sH, sW)
  // -> (N, C, sH, sW). Mask channel m = g*k*k + ky*k + kx; channel c belongs to group c / (C/G).
  m.def(
      "carafe(Tensor features, Tensor masks, int kernel_size, int group_size, int scale_factor)"
      " -> Tensor");
  // Gradients of carafe with respect to (features, masks), both contiguous.
  m.def(
      "carafe_backward(Tensor grad_output, Tensor features, Tensor masks, int kernel_size,"
      " int group_size, int scale_factor) -> (Tensor, Tensor)");
  // Stride-1 convolution evaluated only where mask > 0 (Guided Anchoring inference); zeros
  // elsewhere. features (N, C, H, W), mask (N, Ho, Wo), weight (Co, C, kh, kw), bias (Co,) or None.
  m.def(
      "masked_conv2d(Tensor features, Tensor mask, Tensor weight, Tensor? bias, int[2] padding)"
      " -> Tensor");
  // RoIAlign (Mask R-CNN), torchvision's semantics and results: input (N, C, H, W), rois (R, 5)
  // (batch index, x1, y1, x2, y2) -> (R, C, pooled_height, pooled_width).
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height,"
      " int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  // Gradient of roi_align with respect to its input, (batch_size, channels, height, width).
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height,"
      " int pooled_width, int batch_size, int channels, int height, int width,"
      " int sampling_ratio, bool aligned) -> Tensor");
}
