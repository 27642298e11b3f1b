// CARAFE forward and backward on CPU.
//
// The work unit is one (image n, group g, block of kRows source rows). For every channel of the
// group the source rows the block reads are copied once into zero-padded, horizontally
// nearest-upsampled rows
//   fup[y][j] = features[c, y, j / s - r]   (0 outside the map),
// so that output pixel X of row Y = s*y0 + sy reads tap (ky, kx) at fup[y0 + ky - r][X + s*kx].
// Every inner loop is then a contiguous multiply-add over X that the compiler vectorises, borders
// need no branches, kChannels channels share each mask load, and the unit's mask rows stay in
// cache while all channels of the group reuse them. The feature gradient uses the same trick
// backwards (scatter into a padded row, then fold the s sub-columns), organised per source row so
// that threads never write the same memory.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../checks.h"

// Hot loops are compiled for AVX-512, AVX2+FMA and the baseline ISA; the loader picks one (ifunc).
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define GLIMPSE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GLIMPSE_CLONES
#endif
#if defined(__GNUC__)
#define GLIMPSE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define GLIMPSE_ALWAYS_INLINE inline
#endif

namespace glimpse {
namespace {

struct Geometry {
  int64_t N, C, H, W;  // features
  int64_t G, Cg;       // groups, channels per group
  int64_t k, r, k2;    // kernel size, radius, taps
  int64_t s;           // scale factor
  int64_t Ho, Wo;      // output size (s*H, s*W)
  int64_t Lp;          // padded, upsampled row length s*(W + 2r)
};

Geometry make_geometry(const at::Tensor& features, int64_t k, int64_t G, int64_t s) {
  Geometry g;
  g.N = features.size(0);
  g.C = features.size(1);
  g.H = features.size(2);
  g.W = features.size(3);
  g.G = G;
  g.Cg = g.C / G;
  g.k = k;
  g.r = (k - 1) / 2;
  g.k2 = k * k;
  g.s = s;
  g.Ho = g.H * s;
  g.Wo = g.W * s;
  g.Lp = s * (g.W + 2 * g.r);
  return g;
}

// Outputs per register block (two AVX-512 registers of floats), and channels processed together:
// each mask value loaded from cache then feeds kChannels multiply-adds held in registers.
template <typename T>
constexpr int64_t kBlock = 128 / static_cast<int64_t>(sizeof(T));
constexpr int64_t kChannels = 4;

// Source rows per work unit: the rows around them are copied once for all of the unit's rows.
constexpr int64_t kRows = 4;

// buf (rows of length Lp) <- zero-padded, horizontally s-times repeated source rows
// y_first .. y_first + nrows - 1 (rows outside the map are zeros).
template <typename T>
GLIMPSE_ALWAYS_INLINE void build_upsampled_rows(const T* __restrict__ plane, int64_t y_first,
                                                int64_t nrows, const Geometry& g,
                                                T* __restrict__ buf) {
  for (int64_t i = 0; i < nrows; ++i) {
    T* row = buf + i * g.Lp;
    const int64_t yy = y_first + i;
    if (yy < 0 || yy >= g.H) {
      std::fill(row, row + g.Lp, T(0));
      continue;
    }
    std::fill(row, row + g.s * g.r, T(0));
    std::fill(row + g.s * (g.W + g.r), row + g.Lp, T(0));
    const T* src = plane + yy * g.W;
    T* dst = row + g.s * g.r;
    if (g.s == 1) {
      std::memcpy(dst, src, sizeof(T) * g.W);
    } else if (g.s == 2) {
      for (int64_t x = 0; x < g.W; ++x) {
        const T v = src[x];
        dst[2 * x] = v;
        dst[2 * x + 1] = v;
      }
    } else {
      for (int64_t x = 0; x < g.W; ++x) {
        for (int64_t q = 0; q < g.s; ++q) dst[g.s * x + q] = src[x];
      }
    }
  }
}

// For CB channels (fup buffers fstride apart, output rows hw apart), one output row:
// out[X] = sum_t mask[t][X] * fup[ky][X + s*kx] for X in [x0, x0 + B); mask rows are hw apart.
template <typename T, int64_t CB>
GLIMPSE_ALWAYS_INLINE void reassemble_block(const T* __restrict__ mask_row, int64_t hw,
                                            const T* __restrict__ fup, int64_t fstride,
                                            const Geometry& g, int64_t x0,
                                            T* __restrict__ out_row) {
  constexpr int64_t B = kBlock<T>;
  T acc[CB][B] = {};
  for (int64_t ky = 0; ky < g.k; ++ky) {
    for (int64_t kx = 0; kx < g.k; ++kx) {
      const T* m = mask_row + (ky * g.k + kx) * hw + x0;
      const T* f = fup + ky * g.Lp + g.s * kx + x0;
      for (int64_t cb = 0; cb < CB; ++cb) {
        for (int64_t i = 0; i < B; ++i) acc[cb][i] += m[i] * f[cb * fstride + i];
      }
    }
  }
  for (int64_t cb = 0; cb < CB; ++cb) {
    for (int64_t i = 0; i < B; ++i) out_row[cb * hw + x0 + i] = acc[cb][i];
  }
}

template <typename T, int64_t CB>
GLIMPSE_ALWAYS_INLINE void reassemble_rows(const T* mask_row, int64_t hw, const T* fup,
                                           int64_t fstride, const Geometry& g, T* out_row) {
  constexpr int64_t B = kBlock<T>;
  int64_t x0 = 0;
  for (; x0 + B <= g.Wo; x0 += B) {
    reassemble_block<T, CB>(mask_row, hw, fup, fstride, g, x0, out_row);
  }
  if (x0 < g.Wo) {
    const int64_t nb = g.Wo - x0;
    T acc[CB][B] = {};
    for (int64_t ky = 0; ky < g.k; ++ky) {
      for (int64_t kx = 0; kx < g.k; ++kx) {
        const T* m = mask_row + (ky * g.k + kx) * hw + x0;
        const T* f = fup + ky * g.Lp + g.s * kx + x0;
        for (int64_t cb = 0; cb < CB; ++cb) {
          for (int64_t i = 0; i < nb; ++i) acc[cb][i] += m[i] * f[cb * fstride + i];
        }
      }
    }
    for (int64_t cb = 0; cb < CB; ++cb) {
      for (int64_t i = 0; i < nb; ++i) out_row[cb * hw + x0 + i] = acc[cb][i];
    }
  }
}

// Number of row blocks of one (image, group) plane, and the rows [ya, yb) of block b.
inline int64_t row_blocks(const Geometry& g) { return (g.H + kRows - 1) / kRows; }

template <typename T>
GLIMPSE_ALWAYS_INLINE void forward_units(const T* feat, const T* mask, T* out, const Geometry& g,
                                         int64_t begin, int64_t end, T* fup) {
  const int64_t hw = g.Ho * g.Wo;
  const int64_t nb = row_blocks(g);
  for (int64_t u = begin; u < end; ++u) {
    const int64_t ya = (u % nb) * kRows, yb = std::min(g.H, ya + kRows);
    const int64_t gi = (u / nb) % g.G;
    const int64_t n = u / (nb * g.G);
    const int64_t nrows = yb - ya + 2 * g.r;
    const int64_t fstride = nrows * g.Lp;
    const T* fb = feat + (n * g.C + gi * g.Cg) * g.H * g.W;
    const T* mb = mask + (n * g.G + gi) * g.k2 * hw;
    T* ob = out + (n * g.C + gi * g.Cg) * hw;
    int64_t c = 0;
    for (; c < g.Cg; c += kChannels) {
      const int64_t cn = std::min(kChannels, g.Cg - c);
      for (int64_t cb = 0; cb < cn; ++cb) {
        build_upsampled_rows(fb + (c + cb) * g.H * g.W, ya - g.r, nrows, g, fup + cb * fstride);
      }
      for (int64_t y0 = ya; y0 < yb; ++y0) {
        const T* rows = fup + (y0 - ya) * g.Lp;
        for (int64_t sy = 0; sy < g.s; ++sy) {
          const int64_t y = y0 * g.s + sy;
          if (cn == kChannels) {
            reassemble_rows<T, kChannels>(mb + y * g.Wo, hw, rows, fstride, g,
                                          ob + c * hw + y * g.Wo);
          } else {
            for (int64_t cb = 0; cb < cn; ++cb) {
              reassemble_rows<T, 1>(mb + y * g.Wo, hw, rows + cb * fstride, fstride, g,
                                    ob + (c + cb) * hw + y * g.Wo);
            }
          }
        }
      }
    }
  }
}

// For CB channels: dmask[t][X] += sum_cb dout_cb[X] * fup_cb[ky][X + s*kx] over one output row.
template <typename T, int64_t CB>
GLIMPSE_ALWAYS_INLINE void mask_grad_row(const T* __restrict__ d /* CB rows, hw apart */,
                                         int64_t hw, const T* __restrict__ fup, int64_t fstride,
                                         const Geometry& g, T* __restrict__ arow) {
  constexpr int64_t B = kBlock<T>;
  for (int64_t x0 = 0; x0 < g.Wo; x0 += B) {
    const int64_t nb = std::min(B, g.Wo - x0);
    for (int64_t ky = 0; ky < g.k; ++ky) {
      for (int64_t kx = 0; kx < g.k; ++kx) {
        T* __restrict__ a = arow + (ky * g.k + kx) * g.Wo + x0;
        const T* __restrict__ f = fup + ky * g.Lp + g.s * kx + x0;
        if (nb == B) {
          T sum[B];
          for (int64_t i = 0; i < B; ++i) sum[i] = a[i];
          for (int64_t cb = 0; cb < CB; ++cb) {
            for (int64_t i = 0; i < B; ++i) sum[i] += d[cb * hw + x0 + i] * f[cb * fstride + i];
          }
          for (int64_t i = 0; i < B; ++i) a[i] = sum[i];
        } else {
          for (int64_t cb = 0; cb < CB; ++cb) {
            for (int64_t i = 0; i < nb; ++i) a[i] += d[cb * hw + x0 + i] * f[cb * fstride + i];
          }
        }
      }
    }
  }
}

// dmask[t][Y][X] = sum_{c in group} dout[c][Y][X] * fup_c[ky][X + s*kx], for the rows of one
// row block, accumulated over the group's channels in acc.
template <typename T>
GLIMPSE_ALWAYS_INLINE void mask_grad_units(const T* feat, const T* dout, T* dmask,
                                           const Geometry& g, int64_t begin, int64_t end, T* fup,
                                           T* acc /* kRows * s * k2 * Wo */) {
  const int64_t hw = g.Ho * g.Wo;
  const int64_t nb = row_blocks(g);
  const int64_t row_acc = g.k2 * g.Wo;  // accumulator of one output row
  for (int64_t u = begin; u < end; ++u) {
    const int64_t ya = (u % nb) * kRows, yb = std::min(g.H, ya + kRows);
    const int64_t gi = (u / nb) % g.G;
    const int64_t n = u / (nb * g.G);
    const int64_t nrows = yb - ya + 2 * g.r;
    const int64_t fstride = nrows * g.Lp;
    const T* fb = feat + (n * g.C + gi * g.Cg) * g.H * g.W;
    const T* db = dout + (n * g.C + gi * g.Cg) * hw;
    std::fill(acc, acc + (yb - ya) * g.s * row_acc, T(0));
    for (int64_t c = 0; c < g.Cg; c += kChannels) {
      const int64_t cn = std::min(kChannels, g.Cg - c);
      for (int64_t cb = 0; cb < cn; ++cb) {
        build_upsampled_rows(fb + (c + cb) * g.H * g.W, ya - g.r, nrows, g, fup + cb * fstride);
      }
      for (int64_t y0 = ya; y0 < yb; ++y0) {
        const T* rows = fup + (y0 - ya) * g.Lp;
        for (int64_t sy = 0; sy < g.s; ++sy) {
          const int64_t y = y0 * g.s + sy;
          T* arow = acc + ((y0 - ya) * g.s + sy) * row_acc;
          if (cn == kChannels) {
            mask_grad_row<T, kChannels>(db + c * hw + y * g.Wo, hw, rows, fstride, g, arow);
          } else {
            for (int64_t cb = 0; cb < cn; ++cb) {
              mask_grad_row<T, 1>(db + (c + cb) * hw + y * g.Wo, hw, rows + cb * fstride,
                                  fstride, g, arow);
            }
          }
        }
      }
    }
    T* mb = dmask + (n * g.G + gi) * g.k2 * hw;
    for (int64_t y = ya * g.s; y < yb * g.s; ++y) {
      for (int64_t t = 0; t < g.k2; ++t) {
        std::memcpy(mb + t * hw + y * g.Wo, acc + (y - ya * g.s) * row_acc + t * g.Wo,
                    sizeof(T) * g.Wo);
      }
    }
  }
}

// For CB channels (padded rows Lp apart): row_cb[X + s*kx] += m_kx[X] * d_cb[X] over one output
// row, for every kx; the dout chunk stays in registers across the k taps.
template <typename T, int64_t CB>
GLIMPSE_ALWAYS_INLINE void feature_grad_row(const T* __restrict__ m /* k rows, hw apart */,
                                            const T* __restrict__ d /* CB rows, hw apart */,
                                            int64_t hw, const Geometry& g,
                                            T* __restrict__ rows /* CB x Lp */) {
  constexpr int64_t B = kBlock<T>;
  for (int64_t x0 = 0; x0 < g.Wo; x0 += B) {
    const int64_t nb = std::min(B, g.Wo - x0);
    if (nb == B) {
      T dv[CB][B];
      for (int64_t cb = 0; cb < CB; ++cb) {
        for (int64_t i = 0; i < B; ++i) dv[cb][i] = d[cb * hw + x0 + i];
      }
      for (int64_t kx = 0; kx < g.k; ++kx) {
        const T* mk = m + kx * hw + x0;
        for (int64_t cb = 0; cb < CB; ++cb) {
          T* dst = rows + cb * g.Lp + g.s * kx + x0;
          for (int64_t i = 0; i < B; ++i) dst[i] += mk[i] * dv[cb][i];
        }
      }
    } else {
      for (int64_t kx = 0; kx < g.k; ++kx) {
        const T* mk = m + kx * hw + x0;
        for (int64_t cb = 0; cb < CB; ++cb) {
          T* dst = rows + cb * g.Lp + g.s * kx + x0;
          for (int64_t i = 0; i < nb; ++i) dst[i] += mk[i] * d[cb * hw + x0 + i];
        }
      }
    }
  }
}

template <typename T, int64_t CB>
GLIMPSE_ALWAYS_INLINE void feature_grad_channels(const T* mb, const T* db, int64_t y,
                                                 const Geometry& g, T* rows, T* out) {
  const int64_t hw = g.Ho * g.Wo;
  std::fill(rows, rows + CB * g.Lp, T(0));
  for (int64_t ky = 0; ky < g.k; ++ky) {
    // Output rows whose window row ky lands on source row y have y0 = y - ky + r.
    const int64_t y0 = y - ky + g.r;
    if (y0 < 0 || y0 >= g.H) continue;
    for (int64_t sy = 0; sy < g.s; ++sy) {
      const int64_t yo = y0 * g.s + sy;
      feature_grad_row<T, CB>(mb + ky * g.k * hw + yo * g.Wo, db + yo * g.Wo, hw, g, rows);
    }
  }
  // Fold the s sub-columns of each padded source column back onto the source pixel.
  for (int64_t cb = 0; cb < CB; ++cb) {
    const T* src = rows + cb * g.Lp + g.s * g.r;
    T* dst = out + cb * g.H * g.W;
    for (int64_t x = 0; x < g.W; ++x) {
      T v = 0;
      for (int64_t q = 0; q < g.s; ++q) v += src[g.s * x + q];
      dst[x] = v;
    }
  }
}

// dfeat[c][y][x] = sum over the outputs that read source pixel (y, x): the transpose of
// reassemble_rows, gathered per source row y so that each unit owns its output row.
template <typename T>
GLIMPSE_ALWAYS_INLINE void feature_grad_units(const T* mask, const T* dout, T* dfeat,
                                              const Geometry& g, int64_t begin, int64_t end,
                                              T* rows /* kChannels * Lp */) {
  const int64_t hw = g.Ho * g.Wo;
  for (int64_t u = begin; u < end; ++u) {
    const int64_t y = u % g.H;
    const int64_t gi = (u / g.H) % g.G;
    const int64_t n = u / (g.H * g.G);
    const T* mb = mask + (n * g.G + gi) * g.k2 * hw;
    const T* db = dout + (n * g.C + gi * g.Cg) * hw;
    T* fb = dfeat + (n * g.C + gi * g.Cg) * g.H * g.W + y * g.W;
    int64_t c = 0;
    for (; c + kChannels <= g.Cg; c += kChannels) {
      feature_grad_channels<T, kChannels>(mb, db + c * hw, y, g, rows, fb + c * g.H * g.W);
    }
    for (; c < g.Cg; ++c) {
      feature_grad_channels<T, 1>(mb, db + c * hw, y, g, rows, fb + c * g.H * g.W);
    }
  }
}

// Non-template entry points, so that each gets ISA clones (target_clones cannot clone templates).
GLIMPSE_CLONES void forward_f32(const float* f, const float* m, float* o, const Geometry& g,
                                int64_t b, int64_t e, float* buf) {
  forward_units<float>(f, m, o, g, b, e, buf);
}
GLIMPSE_CLONES void forward_f64(const double* f, const double* m, double* o, const Geometry& g,
                                int64_t b, int64_t e, double* buf) {
  forward_units<double>(f, m, o, g, b, e, buf);
}
GLIMPSE_CLONES void mask_grad_f32(const float* f, const float* d, float* dm, const Geometry& g,
                                  int64_t b, int64_t e, float* buf, float* acc) {
  mask_grad_units<float>(f, d, dm, g, b, e, buf, acc);
}
GLIMPSE_CLONES void mask_grad_f64(const double* f, const double* d, double* dm, const Geometry& g,
                                  int64_t b, int64_t e, double* buf, double* acc) {
  mask_grad_units<double>(f, d, dm, g, b, e, buf, acc);
}
GLIMPSE_CLONES void feature_grad_f32(const float* m, const float* d, float* df, const Geometry& g,
                                     int64_t b, int64_t e, float* buf) {
  feature_grad_units<float>(m, d, df, g, b, e, buf);
}
GLIMPSE_CLONES void feature_grad_f64(const double* m, const double* d, double* df,
                                     const Geometry& g, int64_t b, int64_t e, double* buf) {
  feature_grad_units<double>(m, d, df, g, b, e, buf);
}

inline void forward_dispatch(const float* f, const float* m, float* o, const Geometry& g,
                             int64_t b, int64_t e, float* buf) {
  forward_f32(f, m, o, g, b, e, buf);
}
inline void forward_dispatch(const double* f, const double* m, double* o, const Geometry& g,
                             int64_t b, int64_t e, double* buf) {
  forward_f64(f, m, o, g, b, e, buf);
}
inline void mask_grad_dispatch(const float* f, const float* d, float* dm, const Geometry& g,
                               int64_t b, int64_t e, float* buf, float* acc) {
  mask_grad_f32(f, d, dm, g, b, e, buf, acc);
}
inline void mask_grad_dispatch(const double* f, const double* d, double* dm, const Geometry& g,
                               int64_t b, int64_t e, double* buf, double* acc) {
  mask_grad_f64(f, d, dm, g, b, e, buf, acc);
}
inline void feature_grad_dispatch(const float* m, const float* d, float* df, const Geometry& g,
                                  int64_t b, int64_t e, float* buf) {
  feature_grad_f32(m, d, df, g, b, e, buf);
}
inline void feature_grad_dispatch(const double* m, const double* d, double* df, const Geometry& g,
                                  int64_t b, int64_t e, double* buf) {
  feature_grad_f64(m, d, df, g, b, e, buf);
}

// Units (of `rows` source rows) per parallel task: about GRAIN_SIZE multiply-adds, so that tiny
// inputs stay on one thread.
int64_t grain_for(const Geometry& g, int64_t rows) {
  const int64_t per_unit = std::max<int64_t>(1, rows * g.Cg * g.s * g.Wo * g.k2);
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / per_unit);
}

at::Tensor carafe_forward_cpu(const at::Tensor& features, const at::Tensor& masks,
                              int64_t kernel_size, int64_t group_size, int64_t scale_factor) {
  check_carafe_args(features, masks, kernel_size, group_size, scale_factor);
  const auto feat = features.contiguous();
  const auto mask = masks.contiguous();
  const Geometry g = make_geometry(feat, kernel_size, group_size, scale_factor);
  auto out = at::empty({g.N, g.C, g.Ho, g.Wo}, feat.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "glimpse::carafe (CPU)", [&] {
    const scalar_t* f = feat.const_data_ptr<scalar_t>();
    const scalar_t* m = mask.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.N * g.G * row_blocks(g), grain_for(g, kRows), [&](int64_t b, int64_t e) {
      std::vector<scalar_t> fup(kChannels * (kRows + 2 * g.r) * g.Lp);
      forward_dispatch(f, m, o, g, b, e, fup.data());
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> carafe_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& features, const at::Tensor& masks,
    int64_t kernel_size, int64_t group_size, int64_t scale_factor) {
  check_carafe_args(features, masks, kernel_size, group_size, scale_factor);
  check_carafe_grad(grad_output, features, scale_factor);
  const auto feat = features.contiguous();
  const auto mask = masks.contiguous();
  const auto dout = grad_output.contiguous();
  const Geometry g = make_geometry(feat, kernel_size, group_size, scale_factor);
  // Every element of both gradients is written below, so they need no zero fill.
  auto dfeat = at::empty(feat.sizes(), feat.options());
  auto dmask = at::empty(mask.sizes(), mask.options());
  if (dout.numel() == 0) return {dfeat.zero_(), dmask.zero_()};  // e.g. C = 0: dmask is 0
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "glimpse::carafe_backward (CPU)", [&] {
    const scalar_t* f = feat.const_data_ptr<scalar_t>();
    const scalar_t* m = mask.const_data_ptr<scalar_t>();
    const scalar_t* d = dout.const_data_ptr<scalar_t>();
    scalar_t* df = dfeat.mutable_data_ptr<scalar_t>();
    scalar_t* dm = dmask.mutable_data_ptr<scalar_t>();
    const int64_t units = g.N * g.G * g.H;
    at::parallel_for(0, g.N * g.G * row_blocks(g), grain_for(g, kRows), [&](int64_t b, int64_t e) {
      std::vector<scalar_t> fup(kChannels * (kRows + 2 * g.r) * g.Lp);
      std::vector<scalar_t> acc(kRows * g.s * g.k2 * g.Wo);
      mask_grad_dispatch(f, d, dm, g, b, e, fup.data(), acc.data());
    });
    at::parallel_for(0, units, grain_for(g, 1), [&](int64_t b, int64_t e) {
      std::vector<scalar_t> row(kChannels * g.Lp);
      feature_grad_dispatch(m, d, df, g, b, e, row.data());
    });
  });
  return {dfeat, dmask};
}

}  // namespace

TORCH_LIBRARY_IMPL(glimpse, CPU, m) {
  m.impl("carafe", &carafe_forward_cpu);
  m.impl("carafe_backward", &carafe_backward_cpu);
}

}  // namespace glimpse
