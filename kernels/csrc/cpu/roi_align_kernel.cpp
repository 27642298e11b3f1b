// RoIAlign forward and backward on CPU, bit-identical to torchvision's CPU kernels.
//
// Both directions first tabulate, once per RoI, the four bilinear taps (flat offset, weight) of
// every sample point of every bin, with torchvision's formulas. The forward then reads them per
// channel exactly as torchvision does. torchvision's backward instead recomputes the sample
// geometry for every (RoI, channel, bin) and scatters into a planar (N, C, H, W) gradient, which
// on CPU costs several times the forward. Here the backward scatters each tap into a
// channels-last (N, H, W, C) buffer with a contiguous multiply-add over the channels (vectorised
// by the compiler), then transposes once. Per channel and pixel the additions come in the same
// order as torchvision's (RoI, bin, sample, tap), so the gradients are equal to the bit.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"

namespace glimpse {
namespace {

template <typename T>
struct Tap4 {
  int64_t pos[4];
  T w[4];
  bool inside;  // false: outside the map, weights 0 (the forward adds 0, the backward skips)
};

struct RoIGeometry {
  int64_t batch;
  int64_t grid_h, grid_w;
};

// Taps of every (bin, sample) of one RoI, in the order ph, pw, iy, ix (torchvision's
// pre_calc_for_bilinear_interpolate; samples outside [-1, H] x [-1, W] get zero weights).
template <typename T>
RoIGeometry roi_taps(const T* roi, T spatial_scale, int64_t height, int64_t width,
                     int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                     std::vector<Tap4<T>>& taps) {
  const T offset = aligned ? T(0.5) : T(0.0);
  const T start_w = roi[1] * spatial_scale - offset;
  const T start_h = roi[2] * spatial_scale - offset;
  T roi_w = roi[3] * spatial_scale - offset - start_w;
  T roi_h = roi[4] * spatial_scale - offset - start_h;
  if (!aligned) {
    roi_w = std::max(roi_w, T(1));
    roi_h = std::max(roi_h, T(1));
  }
  const T bin_h = roi_h / static_cast<T>(pooled_h);
  const T bin_w = roi_w / static_cast<T>(pooled_w);
  RoIGeometry g;
  g.batch = static_cast<int64_t>(roi[0]);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio
                                : static_cast<int64_t>(std::ceil(roi_h / pooled_h));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio
                                : static_cast<int64_t>(std::ceil(roi_w / pooled_w));
  taps.resize(pooled_h * pooled_w * g.grid_h * g.grid_w);
  int64_t k = 0;
  for (int64_t ph = 0; ph < pooled_h; ++ph) {
    for (int64_t pw = 0; pw < pooled_w; ++pw) {
      for (int64_t iy = 0; iy < g.grid_h; ++iy) {
        const T yy = start_h + ph * bin_h +
                     static_cast<T>(iy + .5f) * bin_h / static_cast<T>(g.grid_h);
        for (int64_t ix = 0; ix < g.grid_w; ++ix, ++k) {
          const T xx = start_w + pw * bin_w +
                       static_cast<T>(ix + .5f) * bin_w / static_cast<T>(g.grid_w);
          Tap4<T>& t = taps[k];
          T y = yy, x = xx;
          if (y < -1.0 || y > height || x < -1.0 || x > width) {
            t = Tap4<T>{{0, 0, 0, 0}, {0, 0, 0, 0}, false};
            continue;
          }
          if (y <= 0) y = 0;
          if (x <= 0) x = 0;
          int64_t y_low = static_cast<int>(y), x_low = static_cast<int>(x), y_high, x_high;
          if (y_low >= height - 1) {
            y_high = y_low = height - 1;
            y = static_cast<T>(y_low);
          } else {
            y_high = y_low + 1;
          }
          if (x_low >= width - 1) {
            x_high = x_low = width - 1;
            x = static_cast<T>(x_low);
          } else {
            x_high = x_low + 1;
          }
          const T ly = y - y_low, lx = x - x_low;
          const T hy = T(1.) - ly, hx = T(1.) - lx;
          t = Tap4<T>{{y_low * width + x_low, y_low * width + x_high, y_high * width + x_low,
                       y_high * width + x_high},
                      {hy * hx, hy * lx, ly * hx, ly * lx}, true};
        }
      }
    }
  }
  return g;
}

void check_roi_align_args(const at::Tensor& rois, int64_t pooled_h, int64_t pooled_w,
                          int64_t sampling_ratio) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5,
              "roi_align: rois must be (R, 5) (batch index, x1, y1, x2, y2), got ", rois.sizes());
  TORCH_CHECK(pooled_h > 0 && pooled_w > 0, "roi_align: output size must be positive, got (",
              pooled_h, ", ", pooled_w, ")");
  TORCH_CHECK(sampling_ratio >= 0, "roi_align: sampling_ratio must be >= 0, got ",
              sampling_ratio);
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                 int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.dim() == 4, "roi_align: input must be 4-D (N, C, H, W), got ", input.dim(),
              "-D");
  check_roi_align_args(rois, pooled_h, pooled_w, sampling_ratio);
  TORCH_CHECK(input.scalar_type() == rois.scalar_type(),
              "roi_align: input and rois have different dtypes");
  const int64_t channels = input.size(1), height = input.size(2), width = input.size(3);
  const int64_t num_rois = rois.size(0);
  at::Tensor output = at::zeros({num_rois, channels, pooled_h, pooled_w}, input.options());
  if (num_rois == 0 || output.numel() == 0) return output;
  const at::Tensor feat = input.contiguous();
  const at::Tensor boxes = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "glimpse::roi_align (CPU)", [&] {
    const scalar_t* f = feat.const_data_ptr<scalar_t>();
    const scalar_t* r = boxes.const_data_ptr<scalar_t>();
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, num_rois, 1, [&](int64_t begin, int64_t end) {
      std::vector<Tap4<scalar_t>> taps;
      for (int64_t n = begin; n < end; ++n) {
        const RoIGeometry g = roi_taps(r + n * 5, static_cast<scalar_t>(spatial_scale), height,
                                       width, pooled_h, pooled_w, sampling_ratio, aligned, taps);
        const scalar_t count = std::max<int64_t>(g.grid_h * g.grid_w, 1);
        const int64_t samples = g.grid_h * g.grid_w;
        for (int64_t c = 0; c < channels; ++c) {
          const scalar_t* plane = f + (g.batch * channels + c) * height * width;
          scalar_t* dst = out + (n * channels + c) * pooled_h * pooled_w;
          const Tap4<scalar_t>* t = taps.data();
          for (int64_t bin = 0; bin < pooled_h * pooled_w; ++bin) {
            scalar_t val = 0.;
            for (int64_t s = 0; s < samples; ++s, ++t) {
              val += t->w[0] * plane[t->pos[0]] + t->w[1] * plane[t->pos[1]] +
                     t->w[2] * plane[t->pos[2]] + t->w[3] * plane[t->pos[3]];
            }
            dst[bin] = val / count;
          }
        }
      }
    });
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                  int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_args(rois, pooled_h, pooled_w, sampling_ratio);
  const int64_t num_rois = rois.size(0);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == num_rois && grad.size(1) == channels &&
                  grad.size(2) == pooled_h && grad.size(3) == pooled_w,
              "roi_align_backward: grad has shape ", grad.sizes(), ", expected (", num_rois,
              ", ", channels, ", ", pooled_h, ", ", pooled_w, ")");
  TORCH_CHECK(grad.scalar_type() == rois.scalar_type(),
              "roi_align_backward: grad and rois have different dtypes");
  TORCH_CHECK(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0,
              "roi_align_backward: negative input size");
  // channels-last accumulator: the taps of one sample point touch C contiguous values
  at::Tensor grad_hwc = at::zeros({batch_size, height, width, channels}, grad.options());
  if (num_rois > 0 && grad_hwc.numel() > 0) {
    const at::Tensor grad_bins = grad.permute({0, 2, 3, 1}).contiguous();  // (R, ph, pw, C)
    const at::Tensor boxes = rois.contiguous();
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "glimpse::roi_align_backward (CPU)", [&] {
      const scalar_t* g_in = grad_bins.const_data_ptr<scalar_t>();
      const scalar_t* r = boxes.const_data_ptr<scalar_t>();
      scalar_t* acc = grad_hwc.mutable_data_ptr<scalar_t>();
      // threads own disjoint channel ranges, so no two write the same value
      at::parallel_for(0, channels, 16, [&](int64_t c0, int64_t c1) {
        std::vector<Tap4<scalar_t>> taps;
        for (int64_t n = 0; n < num_rois; ++n) {
          const RoIGeometry g = roi_taps(r + n * 5, static_cast<scalar_t>(spatial_scale),
                                         height, width, pooled_h, pooled_w, sampling_ratio,
                                         aligned, taps);
          // torchvision divides by the sample count without the forward's max(., 1); an empty
          // grid has no samples, so that never divides by zero
          const scalar_t count = static_cast<scalar_t>(g.grid_h * g.grid_w);
          const int64_t samples = g.grid_h * g.grid_w;
          scalar_t* image = acc + g.batch * height * width * channels;
          const Tap4<scalar_t>* t = taps.data();
          for (int64_t bin = 0; bin < pooled_h * pooled_w; ++bin) {
            const scalar_t* gb = g_in + (n * pooled_h * pooled_w + bin) * channels;
            for (int64_t s = 0; s < samples; ++s, ++t) {
              if (!t->inside) continue;
              for (int k = 0; k < 4; ++k) {
                const scalar_t w = t->w[k];
                scalar_t* dst = image + t->pos[k] * channels;
                for (int64_t c = c0; c < c1; ++c) dst[c] += gb[c] * w / count;
              }
            }
          }
        }
      });
    });
  }
  return grad_hwc.permute({0, 3, 1, 2}).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(glimpse, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace glimpse
