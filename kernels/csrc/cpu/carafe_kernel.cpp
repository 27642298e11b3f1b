// CARAFE forward and backward on CPU.
//
// All three passes are 25 (k*k) multiply-adds per output element and channel; each is organised
// so that the multiply-adds run on whole SIMD vectors whose sums stay in registers, with about one
// vector load per multiply-add and no stores in the inner loop:
//
// * forward: the source rows a block of output rows reads are copied once per channel into
//   zero-padded, horizontally nearest-upsampled rows
//     fup[y][j] = features[c, y, j / s - r]   (0 outside the map),
//   so that output pixel X of row Y = s*y0 + sy reads tap (ky, kx) at fup[y0 + ky - r][X + s*kx]:
//   a contiguous vector. Two output rows (sy, sy + 1) read the same vectors, so each feature
//   vector loaded feeds two multiply-adds; kForwardChannels channels share each mask vector, and
//   the 2 x kForwardChannels x kForwardVectors sums stay in registers. On AVX-512 the output goes
//   out with non-temporal stores.
// * mask gradient: dmask[t][Y][X] = sum_c dout[c][Y][X] * fup_c[ky][X + s*kx]; for k = 5, s = 2
//   the tap sums of a vector of X for both output rows of a source row stay in registers (two tap
//   rows at a time) over a block of kMaskChannels channels, each feature vector loaded feeding
//   both rows (otherwise the dout vectors of kChannels channels stay in registers and the tap sums
//   go through memory). dout is prefetched a row pair ahead.
// * feature gradient: a gather per source pixel (the transpose of the forward). In upsampled
//   column coordinates X' = s*x + sx it is a forward-like sum over zero-padded copies of the mask
//   and dout rows, followed by folding the s sub-columns. Two source rows y, y + 1 are computed
//   together: an output row read by both is read with mask planes k apart and the same dout
//   vectors, so each dout vector loaded feeds two multiply-adds. Every unit owns its output
//   rows, so threads never write the same memory and nothing is scattered.
//
// Vectors are GCC vector extensions of 64 bytes; the hot loops are compiled for AVX-512 (chosen
// by a run-time check), AVX2+FMA and the baseline ISA (chosen by the loader: ifunc). Row buffers
// carry one vector of zero slack, so that the last, partial vector of a row is computed like the
// others.
// Reduced precision (bfloat16, float16) runs the float32 kernels on float32 copies: float32
// accumulation, rounded once at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../checks.h"

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
// Each pass has its own AVX-512 build (register pinning and non-temporal stores in inline asm,
// which only an AVX-512 function may contain), chosen at run time; the rest is cloned below it.
#define GLIMPSE_AVX512_PASSES 1
#define GLIMPSE_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define GLIMPSE_AVX512 __attribute__((target("arch=x86-64-v4")))
#else
#define GLIMPSE_AVX512_PASSES 0
#define GLIMPSE_CLONES
#endif
#define GLIMPSE_ALWAYS_INLINE inline __attribute__((always_inline))

namespace glimpse {
namespace {

// One SIMD vector of T (64 bytes: one AVX-512 register), loaded and stored unaligned.
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(64)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 64 / static_cast<int64_t>(sizeof(T));

template <typename T>
GLIMPSE_ALWAYS_INLINE Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
GLIMPSE_ALWAYS_INLINE void store(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// Channels per register block of the mask gradient's generic path.
constexpr int64_t kChannels = 4;
// The forward's blocking, for two output rows at once: kForwardChannels x kForwardVectors
// feature vectors per tap, each used for both rows (2 x 4 x 2 sums).
constexpr int64_t kForwardChannels = 4;
constexpr int64_t kForwardVectors = 2;
// Source rows per work unit: the rows around them are prepared once for all of the unit's rows.
constexpr int64_t kRows = 8;

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

// Row stride of the padded row buffers: Lp plus one vector of zero slack for partial vectors.
template <typename T>
int64_t buffer_row(const Geometry& g) {
  return g.Lp + kLanes<T>;
}

// Wo rounded up to whole vectors.
template <typename T>
int64_t vector_row(const Geometry& g) {
  return (g.Wo + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
}

// Number of row blocks of one (image, group) plane.
inline int64_t row_blocks(const Geometry& g) { return (g.H + kRows - 1) / kRows; }

// buf (rows `stride` apart) <- zero-padded, horizontally s-times repeated source rows
// y_first .. y_first + nrows - 1 (rows outside the map are zeros), slack included.
template <typename T>
GLIMPSE_ALWAYS_INLINE void build_upsampled_rows(const T* __restrict__ plane, int64_t y_first,
                                                int64_t nrows, int64_t stride, const Geometry& g,
                                                T* __restrict__ buf) {
  for (int64_t i = 0; i < nrows; ++i) {
    T* row = buf + i * stride;
    const int64_t yy = y_first + i;
    if (yy < 0 || yy >= g.H) {
      std::fill(row, row + stride, T(0));
      continue;
    }
    std::fill(row, row + g.s * g.r, T(0));
    std::fill(row + g.s * (g.W + g.r), row + stride, T(0));
    const T* src = plane + yy * g.W;
    T* dst = row + g.s * g.r;
    if (g.s == 1) {
      std::memcpy(dst, src, sizeof(T) * g.W);
    } else if (g.s == 2) {
      for (int64_t x = 0; x < g.W; ++x) dst[2 * x] = dst[2 * x + 1] = src[x];
    } else {
      for (int64_t x = 0; x < g.W; ++x) {
        for (int64_t q = 0; q < g.s; ++q) dst[g.s * x + q] = src[x];
      }
    }
  }
}

// buf row (length `stride`) <- [zeros(lead), src[0:n], zeros...]: a row padded on both sides.
template <typename T>
GLIMPSE_ALWAYS_INLINE void padded_row(const T* __restrict__ src, int64_t n, int64_t lead,
                                      int64_t stride, T* __restrict__ buf) {
  std::fill(buf, buf + lead, T(0));
  std::memcpy(buf + lead, src, sizeof(T) * n);
  std::fill(buf + lead + n, buf + stride, T(0));
}

// acc[i][cb][j] += sum_{ky,kx} m[i*mrow + ky*mky + kx*mkx + j*L] * f[cb*fc + ky*fky + kx*fkx + j*L]
// for R mask rows, CB channels and NV vectors: every feature vector loaded is used by R
// multiply-adds (the s output rows of one source row read the same features). The forward (m =
// masks, f = upsampled features) and the feature gradient (m and f = padded mask and dout rows,
// walked backwards, R = 1) differ only in the strides.
template <typename T, int64_t R, int64_t CB, int64_t NV, bool kAvx512 = false>
GLIMPSE_ALWAYS_INLINE void weighted_taps(const T* __restrict__ m, int64_t mrow, int64_t mky,
                                         int64_t mkx, const T* __restrict__ f, int64_t fc,
                                         int64_t fky, int64_t fkx, int64_t k,
                                         Vec<T> (&acc)[R][CB][NV]) {
  constexpr int64_t L = kLanes<T>;
  // One pointer per channel, advanced tap by tap: the addresses of the inner loop are then a
  // register plus a constant, and no channel offset is kept in (or spilled from) a register.
  const T* fp[CB];
  for (int64_t cb = 0; cb < CB; ++cb) fp[cb] = f + cb * fc;
  for (int64_t ky = 0; ky < k; ++ky) {
    for (int64_t kx = 0; kx < k; ++kx) {
      Vec<T> mv[R][NV];
#pragma GCC unroll 4
      for (int64_t i = 0; i < R; ++i) {
#pragma GCC unroll 4
        for (int64_t j = 0; j < NV; ++j) mv[i][j] = load(m + i * mrow + j * L);
      }
#pragma GCC unroll 16
      for (int64_t cb = 0; cb < CB; ++cb) {
#pragma GCC unroll 4
        for (int64_t j = 0; j < NV; ++j) {
          Vec<T> fv = load(fp[cb] + j * L);
          // GCC would fold this load into each of the R multiply-adds (a memory operand each),
          // loading it R times; an empty asm keeps it in one register (one AVX-512 register: so
          // only in the AVX-512 build, where it saved about 10% of the forward).
          if constexpr (kAvx512 && R > 1) asm("" : "+v"(fv));
#pragma GCC unroll 4
          for (int64_t i = 0; i < R; ++i) acc[i][cb][j] += mv[i][j] * fv;
        }
        fp[cb] += fkx;
      }
      m += mkx;
    }
    for (int64_t cb = 0; cb < CB; ++cb) fp[cb] += fky - k * fkx;
    m += mky - k * mkx;
  }
}

template <typename T, int64_t CB, int64_t NV>
GLIMPSE_ALWAYS_INLINE void store_block(const Vec<T> (&acc)[CB][NV], T* out, int64_t stride) {
  for (int64_t cb = 0; cb < CB; ++cb) {
    for (int64_t j = 0; j < NV; ++j) store(out + cb * stride + j * kLanes<T>, acc[cb][j]);
  }
}

// store_block for the forward's output, which is far larger than the caches and not read again
// by the kernel: in the AVX-512 build, whole aligned cache lines are written with non-temporal
// stores (no read for ownership; about 9% of the forward), the others with plain stores.
// Inline asm rather than intrinsics: the intrinsics cannot be inlined into these target-neutral
// templates. The caller fences (sfence) before returning.
template <typename T, int64_t CB, int64_t NV, bool kAvx512>
GLIMPSE_ALWAYS_INLINE void store_output_block(const Vec<T> (&acc)[CB][NV], T* out,
                                              int64_t stride) {
  for (int64_t cb = 0; cb < CB; ++cb) {
    for (int64_t j = 0; j < NV; ++j) {
      T* p = out + cb * stride + j * kLanes<T>;
      if constexpr (kAvx512) {
        if ((reinterpret_cast<uintptr_t>(p) & 63) == 0) {
          asm("vmovntps %1, %0" : "=m"(*reinterpret_cast<Vec<T>*>(p)) : "v"(acc[cb][j]));
          continue;
        }
      }
      store(p, acc[cb][j]);
    }
  }
}

// R consecutive output rows of CB channels (rows Wo apart, channels hw apart):
// out[X] = sum_t mask[t][X] * fup[ky][X + s*kx], fup rows lstride apart and channels fstride
// apart. mtail: R*k*k vectors of scratch.
template <typename T, int64_t R, int64_t CB, int64_t NV, bool kAvx512>
GLIMPSE_ALWAYS_INLINE void reassemble_rows(const T* mask_row, int64_t hw, const T* fup,
                                           int64_t fstride, int64_t lstride, const Geometry& g,
                                           T* out_row, T* mtail) {
  constexpr int64_t L = kLanes<T>;
  const int64_t mky = g.k * hw;
  int64_t x0 = 0;
  for (; x0 + NV * L <= g.Wo; x0 += NV * L) {
    Vec<T> acc[R][CB][NV] = {};
    weighted_taps<T, R, CB, NV, kAvx512>(mask_row + x0, g.Wo, mky, hw, fup + x0, fstride,
                                         lstride, g.s, g.k, acc);
    for (int64_t i = 0; i < R; ++i) {
      store_output_block<T, CB, NV, kAvx512>(acc[i], out_row + i * g.Wo + x0, hw);
    }
  }
  for (; x0 + L <= g.Wo; x0 += L) {
    Vec<T> acc[R][CB][1] = {};
    weighted_taps<T, R, CB, 1, kAvx512>(mask_row + x0, g.Wo, mky, hw, fup + x0, fstride, lstride,
                                        g.s, g.k, acc);
    for (int64_t i = 0; i < R; ++i) {
      store_output_block<T, CB, 1, kAvx512>(acc[i], out_row + i * g.Wo + x0, hw);
    }
  }
  if (x0 < g.Wo) {  // partial vector: its mask columns are copied into zero-padded scratch
    const int64_t nb = g.Wo - x0;
    for (int64_t i = 0; i < R; ++i) {
      for (int64_t t = 0; t < g.k2; ++t) {
        padded_row(mask_row + i * g.Wo + t * hw + x0, nb, 0, L, mtail + (i * g.k2 + t) * L);
      }
    }
    Vec<T> acc[R][CB][1] = {};
    weighted_taps<T, R, CB, 1, kAvx512>(mtail, g.k2 * L, g.k * L, L, fup + x0, fstride, lstride,
                                        g.s, g.k, acc);
    T tmp[CB * kLanes<T>];
    for (int64_t i = 0; i < R; ++i) {
      store_block<T, CB, 1>(acc[i], tmp, L);
      for (int64_t cb = 0; cb < CB; ++cb) {
        std::memcpy(out_row + i * g.Wo + cb * hw + x0, tmp + cb * L, sizeof(T) * nb);
      }
    }
  }
}

// The s output rows of source row y0 (R at a time), all channels of one block of cn.
template <typename T, int64_t R, bool kAvx512>
GLIMPSE_ALWAYS_INLINE void reassemble_source_row(const T* mask_row, int64_t hw, const T* rows,
                                                 int64_t fstride, int64_t lstride, int64_t cn,
                                                 const Geometry& g, T* out_row, T* mtail) {
  for (int64_t sy = 0; sy < g.s; sy += R) {
    const T* mrow = mask_row + sy * g.Wo;
    T* orow = out_row + sy * g.Wo;
    if (cn == kForwardChannels) {
      reassemble_rows<T, R, kForwardChannels, kForwardVectors, kAvx512>(mrow, hw, rows, fstride,
                                                                        lstride, g, orow, mtail);
      continue;
    }
    for (int64_t cb = 0; cb < cn; ++cb) {
      reassemble_rows<T, R, 1, kForwardVectors, kAvx512>(mrow, hw, rows + cb * fstride, fstride,
                                                          lstride, g, orow + cb * hw, mtail);
    }
  }
}

template <typename T>
struct ForwardScratch {
  std::vector<T> fup, mtail;
  explicit ForwardScratch(const Geometry& g)
      : fup(kForwardChannels * (kRows + 2 * g.r) * buffer_row<T>(g)),
        mtail(g.s * g.k2 * kLanes<T>) {}
};

template <typename T, bool kAvx512>
GLIMPSE_ALWAYS_INLINE void forward_units(const T* feat, const T* mask, T* out, const Geometry& g,
                                         int64_t begin, int64_t end, T* fup, T* mtail) {
  const int64_t hw = g.Ho * g.Wo;
  const int64_t nb = row_blocks(g);
  const int64_t lstride = buffer_row<T>(g);
  for (int64_t u = begin; u < end; ++u) {
    const int64_t ya = (u % nb) * kRows, yb = std::min(g.H, ya + kRows);
    const int64_t gi = (u / nb) % g.G;
    const int64_t n = u / (nb * g.G);
    const int64_t nrows = yb - ya + 2 * g.r;
    const int64_t fstride = nrows * lstride;
    const T* fb = feat + (n * g.C + gi * g.Cg) * g.H * g.W;
    const T* mb = mask + (n * g.G + gi) * g.k2 * hw;
    T* ob = out + (n * g.C + gi * g.Cg) * hw;
    for (int64_t c = 0; c < g.Cg; c += kForwardChannels) {
      const int64_t cn = std::min(kForwardChannels, g.Cg - c);
      for (int64_t cb = 0; cb < cn; ++cb) {
        build_upsampled_rows(fb + (c + cb) * g.H * g.W, ya - g.r, nrows, lstride, g,
                             fup + cb * fstride);
      }
      for (int64_t y0 = ya; y0 < yb; ++y0) {
        const T* rows = fup + (y0 - ya) * lstride;
        const int64_t y = y0 * g.s;
        if (g.s % 2 == 0) {
          reassemble_source_row<T, 2, kAvx512>(mb + y * g.Wo, hw, rows, fstride, lstride, cn, g,
                                      ob + c * hw + y * g.Wo, mtail);
        } else {
          reassemble_source_row<T, 1, kAvx512>(mb + y * g.Wo, hw, rows, fstride, lstride, cn, g,
                                      ob + c * hw + y * g.Wo, mtail);
        }
      }
    }
  }
}

// One output row, CB channels: arow[t][X] += sum_cb d_cb[X] * fup_cb[ky][X + s*kx] (arow rows
// are vector_row long; d rows hw apart, fup rows lstride apart, channels fstride apart).
template <typename T, int64_t CB>
GLIMPSE_ALWAYS_INLINE void mask_grad_row(const T* __restrict__ d, int64_t hw,
                                         const T* __restrict__ fup, int64_t fstride,
                                         int64_t lstride, const Geometry& g,
                                         T* __restrict__ arow) {
  constexpr int64_t L = kLanes<T>;
  const int64_t astride = vector_row<T>(g);
  for (int64_t x0 = 0; x0 < g.Wo; x0 += L) {
    Vec<T> dv[CB];
    const int64_t nb = std::min(L, g.Wo - x0);
    for (int64_t cb = 0; cb < CB; ++cb) {
      if (nb == L) {
        dv[cb] = load(d + cb * hw + x0);
      } else {
        T tmp[kLanes<T>];
        padded_row(d + cb * hw + x0, nb, 0, L, tmp);
        dv[cb] = load(tmp);
      }
    }
    for (int64_t ky = 0; ky < g.k; ++ky) {
      for (int64_t kx = 0; kx < g.k; ++kx) {
        T* a = arow + (ky * g.k + kx) * astride + x0;
        const T* f = fup + ky * lstride + g.s * kx + x0;
        Vec<T> sum = load(a);
#pragma GCC unroll 16
        for (int64_t cb = 0; cb < CB; ++cb) sum += dv[cb] * load(f + cb * fstride);
        store(a, sum);
      }
    }
  }
}

// Tap rows per register block of mask_grad_row_pair: 2 output rows x kMaskTapRows*K sums.
constexpr int64_t kMaskTapRows = 2;

// Tap rows ky0 .. ky0 + NKY - 1 of mask_grad_row_pair for the vector of X at x0; kFull: a whole
// vector of dout (otherwise nb < L columns, the rest read as zeros).
template <typename T, int64_t K, int64_t NKY, bool kFull, bool kAvx512>
GLIMPSE_ALWAYS_INLINE void mask_grad_pair_taps(const T* __restrict__ d, int64_t wo, int64_t cn,
                                               int64_t hw, const T* __restrict__ fup,
                                               int64_t fstride, int64_t lstride, int64_t nb,
                                               int64_t astride, T* __restrict__ arow0,
                                               T* __restrict__ arow1) {
  constexpr int64_t L = kLanes<T>;
  Vec<T> acc[2][NKY * K];
#pragma GCC unroll 16
  for (int64_t t = 0; t < NKY * K; ++t) {
    acc[0][t] = load(arow0 + t * astride);
    acc[1][t] = load(arow1 + t * astride);
  }
  for (int64_t cb = 0; cb < cn; ++cb) {
    Vec<T> dv0, dv1;
    if constexpr (kFull) {
      dv0 = load(d + cb * hw);
      dv1 = load(d + cb * hw + wo);
    } else {
      T tmp[2 * kLanes<T>];
      padded_row(d + cb * hw, nb, 0, L, tmp);
      padded_row(d + cb * hw + wo, nb, 0, L, tmp + L);
      dv0 = load(tmp);
      dv1 = load(tmp + L);
    }
    const T* f = fup + cb * fstride;
#pragma GCC unroll 4
    for (int64_t ky = 0; ky < NKY; ++ky) {
#pragma GCC unroll 8
      for (int64_t kx = 0; kx < K; ++kx) {
        Vec<T> fv = load(f + 2 * kx);
        if constexpr (kAvx512) asm("" : "+v"(fv));  // one load for both rows (see weighted_taps)
        acc[0][ky * K + kx] += dv0 * fv;
        acc[1][ky * K + kx] += dv1 * fv;
      }
      f += lstride;
    }
  }
#pragma GCC unroll 16
  for (int64_t t = 0; t < NKY * K; ++t) {
    store(arow0 + t * astride, acc[0][t]);
    store(arow1 + t * astride, acc[1][t]);
  }
}

// The mask gradient of both output rows Y = 2*y0 and 2*y0 + 1 of scale 2 (d: row 2*y0 of
// channel 0; fup: tap row 0 of source row y0), a batched dot product over the cn channels: the
// tap sums of a vector of X stay in registers while the channels are added in, and the two rows
// read the same feature vectors, so each one loaded feeds two multiply-adds. 2 x K*K sums do not
// fit the registers: they are kept kMaskTapRows tap rows at a time.
template <typename T, int64_t K, bool kAvx512>
GLIMPSE_ALWAYS_INLINE void mask_grad_row_pair(const T* d, int64_t cn, int64_t hw, const T* fup,
                                              int64_t fstride, int64_t lstride, const Geometry& g,
                                              T* arow0, T* arow1) {
  constexpr int64_t L = kLanes<T>;
  constexpr int64_t R = kMaskTapRows;
  const int64_t astride = vector_row<T>(g);
  for (int64_t x0 = 0; x0 < g.Wo; x0 += L) {
    const int64_t nb = std::min(L, g.Wo - x0);
    for (int64_t ky = 0; ky < K; ky += R) {
      const T* f = fup + ky * lstride + x0;
      T* a0 = arow0 + ky * K * astride + x0;
      T* a1 = arow1 + ky * K * astride + x0;
      if (ky + R <= K && nb == L) {
        mask_grad_pair_taps<T, K, R, true, kAvx512>(d + x0, g.Wo, cn, hw, f, fstride, lstride,
                                                    nb, astride, a0, a1);
      } else if (ky + R <= K) {
        mask_grad_pair_taps<T, K, R, false, kAvx512>(d + x0, g.Wo, cn, hw, f, fstride, lstride,
                                                     nb, astride, a0, a1);
      } else if (nb == L) {
        mask_grad_pair_taps<T, K, K % R, true, kAvx512>(d + x0, g.Wo, cn, hw, f, fstride,
                                                        lstride, nb, astride, a0, a1);
      } else {
        mask_grad_pair_taps<T, K, K % R, false, kAvx512>(d + x0, g.Wo, cn, hw, f, fstride,
                                                         lstride, nb, astride, a0, a1);
      }
    }
  }
}

// Prefetches output rows [y_begin, y_end) of cn channels of dout (planes hw apart), which the
// mask gradient reads next: its dout reads run from memory at about the rate of its arithmetic,
// and the hardware prefetchers, following kMaskChannels interleaved streams of short rows, leave
// the loads stalled.
template <typename T>
GLIMPSE_ALWAYS_INLINE void prefetch_rows(const T* dout, int64_t hw, int64_t cn, int64_t y_begin,
                                         int64_t y_end, const Geometry& g) {
  y_begin = std::max<int64_t>(y_begin, 0);
  y_end = std::min(y_end, g.Ho);
  if (y_end <= y_begin) return;
  const int64_t bytes = (y_end - y_begin) * g.Wo * static_cast<int64_t>(sizeof(T));
  for (int64_t cb = 0; cb < cn; ++cb) {
    const char* p = reinterpret_cast<const char*>(dout + cb * hw + y_begin * g.Wo);
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 3);
  }
}

// Channels per block of the mask gradient (their upsampled rows are built together).
constexpr int64_t kMaskChannels = 16;

template <typename T>
struct MaskGradScratch {
  std::vector<T> fup, acc;
  explicit MaskGradScratch(const Geometry& g)
      : fup(kMaskChannels * (kRows + 2 * g.r) * buffer_row<T>(g)),
        acc(kRows * g.s * g.k2 * vector_row<T>(g)) {}
};

// dmask[t][Y][X] = sum_{c in group} dout[c][Y][X] * fup_c[ky][X + s*kx], for the rows of one
// row block, accumulated over the group's channels in acc.
template <typename T, bool kAvx512>
GLIMPSE_ALWAYS_INLINE void mask_grad_units(const T* feat, const T* dout, T* dmask,
                                           const Geometry& g, int64_t begin, int64_t end, T* fup,
                                           T* acc) {
  const int64_t hw = g.Ho * g.Wo;
  const int64_t nb = row_blocks(g);
  const int64_t lstride = buffer_row<T>(g);
  const int64_t astride = vector_row<T>(g);
  const int64_t row_acc = g.k2 * astride;  // accumulator of one output row
  for (int64_t u = begin; u < end; ++u) {
    const int64_t ya = (u % nb) * kRows, yb = std::min(g.H, ya + kRows);
    const int64_t gi = (u / nb) % g.G;
    const int64_t n = u / (nb * g.G);
    const int64_t nrows = yb - ya + 2 * g.r;
    const int64_t fstride = nrows * lstride;
    const T* fb = feat + (n * g.C + gi * g.Cg) * g.H * g.W;
    const T* db = dout + (n * g.C + gi * g.Cg) * hw;
    std::fill(acc, acc + (yb - ya) * g.s * row_acc, T(0));
    for (int64_t c = 0; c < g.Cg; c += kMaskChannels) {
      const int64_t cn = std::min(kMaskChannels, g.Cg - c);
      for (int64_t cb = 0; cb < cn; ++cb) {
        build_upsampled_rows(fb + (c + cb) * g.H * g.W, ya - g.r, nrows, lstride, g,
                             fup + cb * fstride);
      }
      for (int64_t y0 = ya; y0 < yb; ++y0) {
        if (y0 + 1 < yb) {
          prefetch_rows(db + c * hw, hw, cn, g.s * (y0 + 1), g.s * (y0 + 2), g);
        } else if (c + cn < g.Cg) {  // the first rows of the next channel block
          prefetch_rows(db + (c + cn) * hw, hw, std::min(kMaskChannels, g.Cg - c - cn), g.s * ya,
                        g.s * (ya + 1), g);
        }
        const T* rows = fup + (y0 - ya) * lstride;
        for (int64_t y = y0 * g.s; y < (y0 + 1) * g.s; ++y) {
          T* arow = acc + (y - ya * g.s) * row_acc;
          const T* drow = db + c * hw + y * g.Wo;
          if (g.k == 5 && g.s == 2) {  // mmdet's CARAFE upsampler: both rows of y0 at once
            mask_grad_row_pair<T, 5, kAvx512>(drow, cn, hw, rows, fstride, lstride, g, arow,
                                              arow + row_acc);
            break;
          }
          int64_t cb = 0;
          for (; cb + kChannels <= cn; cb += kChannels) {
            mask_grad_row<T, kChannels>(drow + cb * hw, hw, rows + cb * fstride, fstride,
                                        lstride, g, arow);
          }
          for (; cb < cn; ++cb) {
            mask_grad_row<T, 1>(drow + cb * hw, hw, rows + cb * fstride, fstride, lstride, g,
                                arow);
          }
        }
      }
    }
    T* mb = dmask + (n * g.G + gi) * g.k2 * hw;
    for (int64_t y = ya * g.s; y < yb * g.s; ++y) {
      for (int64_t t = 0; t < g.k2; ++t) {
        std::memcpy(mb + t * hw + y * g.Wo, acc + (y - ya * g.s) * row_acc + t * astride,
                    sizeof(T) * g.Wo);
      }
    }
  }
}

// Channels and vectors per register block of the feature gradient, which computes two source
// rows at once: 2 x kGradChannels x kGradVectors sums.
constexpr int64_t kGradChannels = 8;
constexpr int64_t kGradVectors = 1;

// The k taps (kx) of one output row Y for the two source rows that read it: row y (kA, mask
// plane ma) and row y + 1 (kB, mask plane mb, k planes further), CB channels of dout d:
//   acc[0][cb] += ma[kx] * d_cb[kx],  acc[1][cb] += mb[kx] * d_cb[kx],
// with tap kx at mask plane + kx (mkx apart) and column shift -s*kx (dkx). Both rows read the
// same dout vectors, so each one loaded feeds two multiply-adds.
template <typename T, int64_t CB, int64_t NV, bool kA, bool kB, bool kAvx512>
GLIMPSE_ALWAYS_INLINE void row_pair_taps(const T* __restrict__ ma, const T* __restrict__ mb,
                                         int64_t mkx, const T* __restrict__ d, int64_t dstride,
                                         int64_t dkx, int64_t k, Vec<T> (&acc)[2][CB][NV]) {
  constexpr int64_t L = kLanes<T>;
  const T* dp[CB];
  for (int64_t cb = 0; cb < CB; ++cb) dp[cb] = d + cb * dstride;
  for (int64_t kx = 0; kx < k; ++kx) {
    Vec<T> va[NV], vb[NV];
#pragma GCC unroll 4
    for (int64_t j = 0; j < NV; ++j) {
      if constexpr (kA) va[j] = load(ma + j * L);
      if constexpr (kB) vb[j] = load(mb + j * L);
    }
#pragma GCC unroll 16
    for (int64_t cb = 0; cb < CB; ++cb) {
#pragma GCC unroll 4
      for (int64_t j = 0; j < NV; ++j) {
        Vec<T> dv = load(dp[cb] + j * L);
        // One register for both multiply-adds (see weighted_taps).
        if constexpr (kAvx512 && kA && kB) asm("" : "+v"(dv));
        if constexpr (kA) acc[0][cb][j] += va[j] * dv;
        if constexpr (kB) acc[1][cb][j] += vb[j] * dv;
      }
      dp[cb] += dkx;
    }
    if constexpr (kA) ma += mkx;
    if constexpr (kB) mb += mkx;
  }
}

// Feature gradient of source rows y and, if `pair`, y + 1, CB channels, NV vectors of upsampled
// columns X' = s*x + sx from x0:
//   acc[i][cb][X'] = sum_{ky, sy, kx} mpad[t][Y][X' + s*(2r - kx)] * dpad_cb[Y][X' + s*(2r - kx)],
// Y = s*(y + i + r - ky) + sy, t = ky*k + kx (padded columns; rows relative to the unit's first
// output row, y relative to its first source row). Output row Y = s*(y + 1 + r - q) + sy is read
// by row y at ky = q - 1 and by row y + 1 at ky = q.
template <typename T, int64_t CB, int64_t NV, bool kAvx512>
GLIMPSE_ALWAYS_INLINE void feature_grad_block(const T* mpad, int64_t mplane, const T* dpad,
                                              int64_t dstride, int64_t lstride, int64_t yrel,
                                              bool pair, int64_t x0, const Geometry& g,
                                              Vec<T> (&acc)[2][CB][NV]) {
  const int64_t col0 = 2 * g.r * g.s + x0;  // padded column of X' + s*(2r - kx) at kx = 0
  const int64_t mkx = mplane - g.s, dkx = -g.s;
  for (int64_t sy = 0; sy < g.s; ++sy) {
    for (int64_t q = pair ? 0 : 1; q <= g.k; ++q) {
      const int64_t off = (g.s * (yrel + 1 + 2 * g.r - q) + sy) * lstride + col0;
      const T* d = dpad + off;
      if (q == 0) {
        row_pair_taps<T, CB, NV, false, true, kAvx512>(nullptr, mpad + off, mkx, d, dstride, dkx,
                                                        g.k, acc);
      } else if (q == g.k || !pair) {
        row_pair_taps<T, CB, NV, true, false, kAvx512>(mpad + (q - 1) * g.k * mplane + off,
                                                        nullptr, mkx, d, dstride, dkx, g.k, acc);
      } else {
        row_pair_taps<T, CB, NV, true, true, kAvx512>(mpad + (q - 1) * g.k * mplane + off,
                                                       mpad + q * g.k * mplane + off, mkx, d,
                                                       dstride, dkx, g.k, acc);
      }
    }
  }
}

// dst[x] = sum_q src[s*x + q] for x < W: the s upsampled sub-columns of each source column.
template <typename T>
GLIMPSE_ALWAYS_INLINE void fold_columns(const T* __restrict__ src, const Geometry& g,
                                        T* __restrict__ dst) {
  if (g.s == 1) {
    std::memcpy(dst, src, sizeof(T) * g.W);
  } else if (g.s == 2) {  // a loop GCC vectorises
    for (int64_t x = 0; x < g.W; ++x) dst[x] = src[2 * x] + src[2 * x + 1];
  } else {
    for (int64_t x = 0; x < g.W; ++x) {
      T v = 0;
      for (int64_t q = 0; q < g.s; ++q) v += src[g.s * x + q];
      dst[x] = v;
    }
  }
}

// Source rows y and (if pair) y + 1 of CB channels: the register blocks of feature_grad_block
// along the row, gathered in fold (2*CB rows of vector_row) and folded into out (CB rows, H*W
// apart; row y + 1 is W further).
template <typename T, int64_t CB, bool kAvx512>
GLIMPSE_ALWAYS_INLINE void feature_grad_rows(const T* mpad, int64_t mplane, const T* dpad,
                                             int64_t dstride, int64_t lstride, int64_t yrel,
                                             bool pair, const Geometry& g, T* out, T* fold) {
  constexpr int64_t L = kLanes<T>;
  constexpr int64_t NV = kGradVectors;
  const int64_t vrow = vector_row<T>(g);
  int64_t x0 = 0;
  for (; x0 + NV * L <= vrow; x0 += NV * L) {
    Vec<T> acc[2][CB][NV] = {};
    feature_grad_block<T, CB, NV, kAvx512>(mpad, mplane, dpad, dstride, lstride, yrel, pair, x0,
                                           g, acc);
    store_block<T, CB, NV>(acc[0], fold + x0, vrow);
    if (pair) store_block<T, CB, NV>(acc[1], fold + CB * vrow + x0, vrow);
  }
  for (; x0 < vrow; x0 += L) {
    Vec<T> acc[2][CB][1] = {};
    feature_grad_block<T, CB, 1, kAvx512>(mpad, mplane, dpad, dstride, lstride, yrel, pair, x0, g,
                                          acc);
    store_block<T, CB, 1>(acc[0], fold + x0, vrow);
    if (pair) store_block<T, CB, 1>(acc[1], fold + CB * vrow + x0, vrow);
  }
  for (int64_t i = 0; i < (pair ? 2 : 1); ++i) {
    for (int64_t cb = 0; cb < CB; ++cb) {
      fold_columns(fold + (i * CB + cb) * vrow, g, out + cb * g.H * g.W + i * g.W);
    }
  }
}

template <typename T>
struct FeatureGradScratch {
  std::vector<T> mpad, dpad, fold;
  explicit FeatureGradScratch(const Geometry& g)
      : mpad(g.k2 * g.s * (kRows + 2 * g.r) * buffer_row<T>(g)),
        dpad(kGradChannels * g.s * (kRows + 2 * g.r) * buffer_row<T>(g)),
        fold(2 * kGradChannels * vector_row<T>(g)) {}
};

// rows (nrows of length lstride, zero-padded by s*r columns on each side) <- rows
// Y_first .. Y_first + nrows - 1 of an output-sized plane (rows outside it are zeros).
template <typename T>
GLIMPSE_ALWAYS_INLINE void padded_output_rows(const T* plane, int64_t y_first, int64_t nrows,
                                              int64_t lstride, const Geometry& g, T* rows) {
  for (int64_t i = 0; i < nrows; ++i) {
    const int64_t y = y_first + i;
    if (y < 0 || y >= g.Ho) {
      std::fill(rows + i * lstride, rows + (i + 1) * lstride, T(0));
    } else {
      padded_row(plane + y * g.Wo, g.Wo, g.s * g.r, lstride, rows + i * lstride);
    }
  }
}

// dfeat[c][y][x] = sum over the outputs that read source pixel (y, x): the transpose of the
// forward, gathered per pair of source rows so that each unit owns its output rows.
template <typename T, bool kAvx512>
GLIMPSE_ALWAYS_INLINE void feature_grad_units(const T* mask, const T* dout, T* dfeat,
                                              const Geometry& g, int64_t begin, int64_t end,
                                              T* mpad, T* dpad, T* fold) {
  const int64_t hw = g.Ho * g.Wo;
  const int64_t nb = row_blocks(g);
  const int64_t lstride = buffer_row<T>(g);
  for (int64_t u = begin; u < end; ++u) {
    const int64_t ya = (u % nb) * kRows, yb = std::min(g.H, ya + kRows);
    const int64_t gi = (u / nb) % g.G;
    const int64_t n = u / (nb * g.G);
    // Output rows read by source rows [ya, yb): s*(ya - r) .. s*(yb + r) - 1.
    const int64_t y_first = g.s * (ya - g.r);
    const int64_t nrows = g.s * (yb - ya + 2 * g.r);
    const int64_t plane = nrows * lstride;
    const T* mb = mask + (n * g.G + gi) * g.k2 * hw;
    const T* db = dout + (n * g.C + gi * g.Cg) * hw;
    T* fb = dfeat + (n * g.C + gi * g.Cg) * g.H * g.W;
    for (int64_t t = 0; t < g.k2; ++t) {
      padded_output_rows(mb + t * hw, y_first, nrows, lstride, g, mpad + t * plane);
    }
    for (int64_t c = 0; c < g.Cg; c += kGradChannels) {
      const int64_t cn = std::min(kGradChannels, g.Cg - c);
      for (int64_t cb = 0; cb < cn; ++cb) {
        padded_output_rows(db + (c + cb) * hw, y_first, nrows, lstride, g, dpad + cb * plane);
      }
      for (int64_t y = ya; y < yb; y += 2) {
        const bool pair = y + 1 < yb;
        T* out = fb + c * g.H * g.W + y * g.W;
        if (cn == kGradChannels) {
          feature_grad_rows<T, kGradChannels, kAvx512>(mpad, plane, dpad, plane, lstride, y - ya,
                                                       pair, g, out, fold);
          continue;
        }
        for (int64_t cb = 0; cb < cn; ++cb) {
          feature_grad_rows<T, 1, kAvx512>(mpad, plane, dpad + cb * plane, plane, lstride,
                                           y - ya, pair, g, out + cb * g.H * g.W, fold);
        }
      }
    }
  }
}

#if GLIMPSE_AVX512_PASSES
bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("x86-64-v4");
  return yes;
}
// The AVX-512 builds of the three passes; the fence orders the forward's non-temporal stores
// before the caller's.
#define GLIMPSE_AVX512_ENTRY_POINTS(T, SUFFIX)                                                     \
  GLIMPSE_AVX512 void forward_avx512_##SUFFIX(const T* f, const T* m, T* o, const Geometry& g,     \
                                              int64_t b, int64_t e, ForwardScratch<T>& s) {        \
    forward_units<T, true>(f, m, o, g, b, e, s.fup.data(), s.mtail.data());                        \
    asm volatile("sfence" ::: "memory");                                                           \
  }                                                                                                \
  GLIMPSE_AVX512 void mask_grad_avx512_##SUFFIX(const T* f, const T* d, T* dm,                     \
                                                const Geometry& g, int64_t b, int64_t e,           \
                                                MaskGradScratch<T>& s) {                           \
    mask_grad_units<T, true>(f, d, dm, g, b, e, s.fup.data(), s.acc.data());                       \
  }                                                                                                \
  GLIMPSE_AVX512 void feature_grad_avx512_##SUFFIX(const T* m, const T* d, T* df,                  \
                                                   const Geometry& g, int64_t b, int64_t e,        \
                                                   FeatureGradScratch<T>& s) {                     \
    feature_grad_units<T, true>(m, d, df, g, b, e, s.mpad.data(), s.dpad.data(), s.fold.data());   \
  }
#define GLIMPSE_RUN_AVX512_FORWARD(SUFFIX)                                                         \
  if (has_avx512()) return forward_avx512_##SUFFIX(f, m, o, g, b, e, s);
#define GLIMPSE_RUN_AVX512_MASK_GRAD(SUFFIX)                                                       \
  if (has_avx512()) return mask_grad_avx512_##SUFFIX(f, d, dm, g, b, e, s);
#define GLIMPSE_RUN_AVX512_FEATURE_GRAD(SUFFIX)                                                    \
  if (has_avx512()) return feature_grad_avx512_##SUFFIX(m, d, df, g, b, e, s);
#else
#define GLIMPSE_AVX512_ENTRY_POINTS(T, SUFFIX)
#define GLIMPSE_RUN_AVX512_FORWARD(SUFFIX)
#define GLIMPSE_RUN_AVX512_MASK_GRAD(SUFFIX)
#define GLIMPSE_RUN_AVX512_FEATURE_GRAD(SUFFIX)
#endif

// Non-template entry points, so that each gets ISA clones (target_clones cannot clone templates).
#define GLIMPSE_ENTRY_POINTS(T, SUFFIX)                                                            \
  GLIMPSE_AVX512_ENTRY_POINTS(T, SUFFIX)                                                           \
  GLIMPSE_CLONES void forward_##SUFFIX(const T* f, const T* m, T* o, const Geometry& g,            \
                                               int64_t b, int64_t e, ForwardScratch<T>& s) {       \
    forward_units<T, false>(f, m, o, g, b, e, s.fup.data(), s.mtail.data());                       \
  }                                                                                                \
  GLIMPSE_CLONES void mask_grad_##SUFFIX(const T* f, const T* d, T* dm, const Geometry& g,         \
                                         int64_t b, int64_t e, MaskGradScratch<T>& s) {            \
    mask_grad_units<T, false>(f, d, dm, g, b, e, s.fup.data(), s.acc.data());                      \
  }                                                                                                \
  GLIMPSE_CLONES void feature_grad_##SUFFIX(const T* m, const T* d, T* df,                         \
                                                    const Geometry& g, int64_t b, int64_t e,       \
                                                    FeatureGradScratch<T>& s) {                    \
    feature_grad_units<T, false>(m, d, df, g, b, e, s.mpad.data(), s.dpad.data(),                  \
                                 s.fold.data());                                                   \
  }                                                                                                \
  inline void run_forward(const T* f, const T* m, T* o, const Geometry& g, int64_t b, int64_t e,   \
                          ForwardScratch<T>& s) {                                                  \
    GLIMPSE_RUN_AVX512_FORWARD(SUFFIX)                                                             \
    forward_##SUFFIX(f, m, o, g, b, e, s);                                                         \
  }                                                                                                \
  inline void run_mask_grad(const T* f, const T* d, T* dm, const Geometry& g, int64_t b,           \
                            int64_t e, MaskGradScratch<T>& s) {                                    \
    GLIMPSE_RUN_AVX512_MASK_GRAD(SUFFIX)                                                           \
    mask_grad_##SUFFIX(f, d, dm, g, b, e, s);                                                      \
  }                                                                                                \
  inline void run_feature_grad(const T* m, const T* d, T* df, const Geometry& g, int64_t b,        \
                               int64_t e, FeatureGradScratch<T>& s) {                              \
    GLIMPSE_RUN_AVX512_FEATURE_GRAD(SUFFIX)                                                        \
    feature_grad_##SUFFIX(m, d, df, g, b, e, s);                                                   \
  }
GLIMPSE_ENTRY_POINTS(float, f32)
GLIMPSE_ENTRY_POINTS(double, f64)
#undef GLIMPSE_ENTRY_POINTS

// Units (of kRows source rows) per parallel task: about GRAIN_SIZE multiply-adds, so that tiny
// inputs stay on one thread.
int64_t grain_for(const Geometry& g) {
  const int64_t per_unit = std::max<int64_t>(1, kRows * g.Cg * g.s * g.Wo * g.k2);
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / per_unit);
}

// A fresh tensor for a kernel to overwrite completely. Large ones are backed by transparent huge
// pages where the kernel allows it (THP "madvise" mode): first-touching a fresh 4 KiB-paged
// output costs a page fault per 4 KiB, as much time as the kernel's own arithmetic.
at::Tensor fresh_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  auto out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const auto begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t end = begin + out.nbytes();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return out;
}

// float32 copies of reduced-precision tensors, so that they run the float32 kernels.
bool reduced(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}
at::Tensor as_float(const at::Tensor& t) {
  return reduced(t) ? t.to(at::kFloat).contiguous() : t.contiguous();
}

at::Tensor carafe_forward_cpu(const at::Tensor& features, const at::Tensor& masks,
                              int64_t kernel_size, int64_t group_size, int64_t scale_factor) {
  check_carafe_args(features, masks, kernel_size, group_size, scale_factor);
  const auto feat = as_float(features);
  const auto mask = as_float(masks);
  const Geometry g = make_geometry(feat, kernel_size, group_size, scale_factor);
  auto out = fresh_output({g.N, g.C, g.Ho, g.Wo}, feat.options());
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "glimpse::carafe (CPU)", [&] {
      const scalar_t* f = feat.const_data_ptr<scalar_t>();
      const scalar_t* m = mask.const_data_ptr<scalar_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, g.N * g.G * row_blocks(g), grain_for(g), [&](int64_t b, int64_t e) {
        ForwardScratch<scalar_t> scratch(g);
        run_forward(f, m, o, g, b, e, scratch);
      });
    });
  }
  return reduced(features) ? out.to(features.scalar_type()) : out;
}

std::tuple<at::Tensor, at::Tensor> carafe_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& features, const at::Tensor& masks,
    int64_t kernel_size, int64_t group_size, int64_t scale_factor) {
  check_carafe_args(features, masks, kernel_size, group_size, scale_factor);
  check_carafe_grad(grad_output, features, scale_factor);
  const auto feat = as_float(features);
  const auto mask = as_float(masks);
  const auto dout = as_float(grad_output);
  const Geometry g = make_geometry(feat, kernel_size, group_size, scale_factor);
  // Every element of both gradients is written below, so they need no zero fill.
  auto dfeat = fresh_output(feat.sizes(), feat.options());
  auto dmask = fresh_output(mask.sizes(), mask.options());
  if (dout.numel() == 0) {  // e.g. C = 0: dmask is 0
    dfeat.zero_();
    dmask.zero_();
  } else {
    AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "glimpse::carafe_backward (CPU)", [&] {
      const scalar_t* f = feat.const_data_ptr<scalar_t>();
      const scalar_t* m = mask.const_data_ptr<scalar_t>();
      const scalar_t* d = dout.const_data_ptr<scalar_t>();
      scalar_t* df = dfeat.mutable_data_ptr<scalar_t>();
      scalar_t* dm = dmask.mutable_data_ptr<scalar_t>();
      const int64_t units = g.N * g.G * row_blocks(g);
      at::parallel_for(0, units, grain_for(g), [&](int64_t b, int64_t e) {
        MaskGradScratch<scalar_t> scratch(g);
        run_mask_grad(f, d, dm, g, b, e, scratch);
      });
      at::parallel_for(0, units, grain_for(g), [&](int64_t b, int64_t e) {
        FeatureGradScratch<scalar_t> scratch(g);
        run_feature_grad(m, d, df, g, b, e, scratch);
      });
    });
  }
  if (!reduced(features)) return {dfeat, dmask};
  return {dfeat.to(features.scalar_type()), dmask.to(masks.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(glimpse, CPU, m) {
  m.impl("carafe", &carafe_forward_cpu);
  m.impl("carafe_backward", &carafe_backward_cpu);
}

}  // namespace glimpse
