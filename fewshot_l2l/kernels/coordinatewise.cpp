// Fused coordinatewise steps on the CPU: one pass over memory per step, forward and backward.
//
// The equations are stated once, in readable torch, by fewshot_l2l/meta_learner.py (meta_lstm_step) and
// fewshot_l2l/optim/rules.py (AndrychowiczRule); the tests check this file against them. Built and loaded by
// fewshot_l2l/kernels/cpu.py (plain g++, no torch headers: C functions over raw pointers, called through ctypes).
//
// Layout. A coordinate is one column: the layer-1 state h, c is [hidden, N] (row k of every coordinate contiguous,
// N = B * P), the per-coordinate scalars are [N], the loss [B]. A *tile* is W consecutive coordinates of one episode
// (W = one SIMD register of lanes: 16 floats with AVX-512); the weights are shared by all lanes and broadcast from
// cache. Per tile, the inputs of an LSTM unit stay in registers while its four gates are accumulated, so each step
// reads and writes every state row once.
//
// Backward. It recomputes the tile's forward from the step's inputs instead of reading saved gates
// (docs/results/meta_step.md measures both); the gradient of theta_{t-1}, of the recurrent state and of every weight
// come out of the same pass. Weight gradients: per-lane vector accumulators per thread, summed over blocks of
// kTileBlock tiles in registers first, then across lanes and threads (fixed order: deterministic for a given
// thread count).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef FS_VECTOR_BYTES
#if defined(__AVX512F__)
#define FS_VECTOR_BYTES 64
#elif defined(__AVX__)
#define FS_VECTOR_BYTES 32
#else
#define FS_VECTOR_BYTES 16
#endif
#endif

#if FS_VECTOR_BYTES == 64 && defined(__AVX512F__)
#include <immintrin.h>
#define FS_AVX512_RECIPROCAL 1
#endif

namespace {

typedef float vf __attribute__((vector_size(FS_VECTOR_BYTES)));
typedef int32_t vi32 __attribute__((vector_size(FS_VECTOR_BYTES)));
typedef double vd __attribute__((vector_size(FS_VECTOR_BYTES)));

template <typename T> struct Simd;
template <> struct Simd<float> { using V = vf; static constexpr int W = FS_VECTOR_BYTES / 4; };
template <> struct Simd<double> { using V = vd; static constexpr int W = FS_VECTOR_BYTES / 8; };

constexpr int kTileBlock = 8;  // tiles whose weight-gradient contributions are summed in registers at once

template <typename V, typename T> inline V splat(T s) { return V{} + s; }

template <typename V, typename T> inline V load(const T* p, int n) {
  V v;
  if (n == int(sizeof(V) / sizeof(T))) {
    std::memcpy(&v, p, sizeof(V));
  } else {
    v = V{};
    for (int l = 0; l < n; ++l) v[l] = p[l];
  }
  return v;
}

template <typename V, typename T> inline void store(T* p, V v, int n) {
  if (n == int(sizeof(V) / sizeof(T))) {
    std::memcpy(p, &v, sizeof(V));
  } else {
    for (int l = 0; l < n; ++l) p[l] = v[l];
  }
}

// A tile reads and writes dozens of rows N apart, more streams than the hardware prefetchers follow: the next
// tile's lines of each row are prefetched by hand (first and last lane: a tile need not be cache-line aligned).
template <typename T> inline void prefetch_rows(const T* base, int64_t stride, int rows, int64_t j, int write) {
  constexpr int W = Simd<T>::W;
  for (int k = 0; k < rows; ++k) {
    if (write) {
      __builtin_prefetch(base + k * stride + j, 1, 3);
      __builtin_prefetch(base + k * stride + j + W - 1, 1, 3);
    } else {
      __builtin_prefetch(base + k * stride + j, 0, 3);
      __builtin_prefetch(base + k * stride + j + W - 1, 0, 3);
    }
  }
}

template <typename T> inline double lane_sum(typename Simd<T>::V v) {
  double s = 0;
  for (int l = 0; l < Simd<T>::W; ++l) s += v[l];
  return s;
}

// ---- float32 elementwise functions (a few ulp; the tests bound the step's error against torch) ----

inline vf reciprocal(vf x) {
#ifdef FS_AVX512_RECIPROCAL
  // 14-bit estimate and one Newton step (relative error ~1e-8): a fraction of the cost of a 512-bit division.
  vf r = (vf)_mm512_maskz_rcp14_ps(0xffff, (__m512)x);
  return r * (2.0f - x * r);
#else
  return 1.0f / x;
#endif
}

inline vf vexp(vf x) {  // Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, e^r by a degree-6 polynomial, times 2^n
  const vf hi = splat<vf>(88.3762626647949f), lo = splat<vf>(-87.3365478515625f);
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
#ifdef FS_AVX512_RECIPROCAL
  const vf n = (vf)_mm512_maskz_roundscale_ps(0xffff, (__m512)(x * 1.44269504088896341f),
                                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  vf t = x * 1.44269504088896341f + 0.5f;
  vf n = __builtin_convertvector(__builtin_convertvector(t, vi32), vf);
  n = n > t ? n - 1.0f : n;  // floor(t): n rounds x log2(e) to the nearest integer
#endif
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf y = splat<vf>(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
#ifdef FS_AVX512_RECIPROCAL
  return (vf)_mm512_maskz_scalef_ps(0xffff, (__m512)y, (__m512)n);
#else
  vi32 bits = (__builtin_convertvector(n, vi32) + 127) << 23;
  return y * (vf)bits;
#endif
}

inline vf vsigmoid(vf x) { return reciprocal(1.0f + vexp(-x)); }

inline vf vtanh(vf x) {
  // x P(x^2) / Q(x^2) on [-9, 9] (tanh rounds to +-1 beyond), P and Q of degrees 5 and 3 fitted to tanh in
  // relative error (at most 3.5e-7 in float32 arithmetic, 3 ulp): no exp, one reciprocal.
  const vf hi = splat<vf>(9.0f), lo = splat<vf>(-9.0f);
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const vf u = x * x;
  vf p = splat<vf>(1.8596735262832453e-11f);
  p = p * u - 1.2936445692446341e-08f;
  p = p * u + 9.327208317699842e-06f;
  p = p * u + 0.002927991794422269f;
  p = p * u + 0.12926241755485535f;
  p = p * u + 1.0f;
  vf q = splat<vf>(0.00022905772493686527f);
  q = q * u + 0.02379360981285572f;
  q = q * u + 0.46259549260139465f;
  q = q * u + 1.0f;
  return x * p * reciprocal(q);
}

inline vf vlog(vf x) {  // Cephes logf for positive normal x; other lanes (0, subnormal, inf, NaN) by std::log
  vi32 bits = (vi32)x;
  vi32 e = ((bits >> 23) & 0xff) - 126;  // x = m 2^e, m in [0.5, 1)
  vf m = (vf)((bits & 0x007fffff) | 0x3f000000);
  vi32 below = m < 0.707106781186547524f;  // -1 where m < sqrt(1/2): then m -> 2m - 1, e -> e - 1
  e = e + below;
  m = below ? m + m - 1.0f : m - 1.0f;
  vf fe = __builtin_convertvector(e, vf);
  vf z = m * m;
  vf y = splat<vf>(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  vf r = m + y + fe * 0.693359375f;
  vi32 special = (x < std::numeric_limits<float>::min()) | !(x < std::numeric_limits<float>::infinity());
  for (int l = 0; l < Simd<float>::W; ++l)
    if (special[l]) r[l] = std::log(x[l]);
  return r;
}

// ---- float64: the same steps lane by lane through libm (a reference precision for tests and gradcheck) ----

inline vd vexp(vd x) {
  for (int l = 0; l < Simd<double>::W; ++l) x[l] = std::exp(x[l]);
  return x;
}
inline vd vsigmoid(vd x) { return 1.0 / (1.0 + vexp(-x)); }
inline vd vtanh(vd x) {
  for (int l = 0; l < Simd<double>::W; ++l) x[l] = std::tanh(x[l]);
  return x;
}
inline vd vlog(vd x) {
  for (int l = 0; l < Simd<double>::W; ++l) x[l] = std::log(x[l]);
  return x;
}

// The preprocessing of Andrychowicz et al. (fewshot_l2l/preprocess.py): (log(max(|x|, e^-p)) / p, sign x) where
// |x| >= e^-p, (-1, e^p x) below.
template <typename T> struct Preprocess {
  T threshold, p, scale;  // e^-p, p, e^p (rounded to T as torch rounds them)
  template <typename V> inline void apply(V x, V& magnitude, V& direction) const {
    const V zero = V{}, one = zero + T(1);
    V a = x < zero ? -x : x;
    V clamped = a < threshold ? zero + threshold : a;
    magnitude = vlog(clamped) / p;
    V sign = x > zero ? one : (x < zero ? -one : zero);
    direction = a >= threshold ? sign : x * scale;
  }
  inline void apply(T x, T& magnitude, T& direction) const {
    T a = std::fabs(x);
    magnitude = std::log(std::max(a, threshold)) / p;
    direction = a >= threshold ? T((x > 0) - (x < 0)) : x * scale;
  }
};

// One LSTM unit u of a tile: its four gate pre-activations (input, forget, cell, output, nn.LSTMCell's order) from
// the K inputs in[] (registers when K is a compile-time constant). w holds the unit's four weight rows, [4][K].
template <int KS, typename V, typename T>
inline void unit_gates(const T* w, const T* bias, const V* in, int k_runtime, V& gi, V& gf, V& gc, V& go) {
  const int K = KS ? KS : k_runtime;
  gi = splat<V>(bias[0]);
  gf = splat<V>(bias[1]);
  gc = splat<V>(bias[2]);
  go = splat<V>(bias[3]);
#pragma GCC unroll 48
  for (int m = 0; m < K; ++m) {
    const V x = in[m];
    gi += w[m] * x;
    gf += w[K + m] * x;
    gc += w[2 * K + m] * x;
    go += w[3 * K + m] * x;
  }
}

// One LSTM unit's cell from its four gate pre-activations: the activations, c' = sigma(f) c + sigma(i) tanh(g)
// and h' = sigma(o) tanh(c'), kept for the backward.
template <typename V> struct Cell {
  V si, sf, tc, so, c_prev, tanh_c, h_next, c_next;
  Cell() = default;
  Cell(const V* gates, V c) : si(vsigmoid(gates[0])), sf(vsigmoid(gates[1])), tc(vtanh(gates[2])), so(vsigmoid(gates[3])),
                              c_prev(c) {
    c_next = sf * c_prev + si * tc;
    tanh_c = vtanh(c_next);
    h_next = so * tanh_c;
  }
  // From the gradients of h' and c': the gradients of the four gate pre-activations (into d_gates) and of c.
  template <typename T> V backward(V d_h_next, V d_c_next, V* d_gates) const {
    d_c_next += d_h_next * so * (T(1) - tanh_c * tanh_c);
    d_gates[0] = d_c_next * tc * si * (T(1) - si);
    d_gates[1] = d_c_next * c_prev * sf * (T(1) - sf);
    d_gates[2] = d_c_next * si * (T(1) - tc * tc);
    d_gates[3] = d_h_next * tanh_c * so * (T(1) - so);
    return d_c_next * sf;
  }
};

// out[k] = sum_r packed[r][offset + k] d_gates[r], k < H: the transposed weights of H of a layer's K inputs times
// the gradients of its 4H gates (an input's gradient). Accumulators in registers when HS is a compile-time size.
template <int HS, typename V, typename T>
inline void transposed_product(const T* packed, int K, int offset, const V* d_gates, int h_runtime, V* out) {
  const int H = HS ? HS : h_runtime;
  if (HS) {
    V acc[HS ? HS : 1];
#pragma GCC unroll 32
    for (int k = 0; k < H; ++k) acc[k] = V{};
    for (int r = 0; r < 4 * H; ++r) {
      const V d = d_gates[r];
      const T* row = packed + size_t(r) * K + offset;
#pragma GCC unroll 32
      for (int k = 0; k < H; ++k) acc[k] += row[k] * d;
    }
#pragma GCC unroll 32
    for (int k = 0; k < H; ++k) out[k] = acc[k];
  } else {
    for (int k = 0; k < H; ++k) {
      V sum = V{};
      for (int r = 0; r < 4 * H; ++r) sum += packed[size_t(r) * K + offset + k] * d_gates[r];
      out[k] = sum;
    }
  }
}

// A layer's weight gradients from a block of kTileBlock tiles (R = 4H gate gradients and K inputs per tile):
// acc[r][m] += sum_b d_gates[b][r] in[b][m], summed in registers first, and acc_bias[b][r] += d_gates[b][r]
// (a bias accumulator per tile: the Meta-LSTM keeps one per episode, see MetaWeights).
template <typename V>
inline void accumulate_outer_products(const V* d_gates_block, int R, const V* in_block, int K, V* acc,
                                      V* const* acc_bias) {
  for (int r = 0; r < R; ++r) {
    V d[kTileBlock];
#pragma GCC unroll 8
    for (int b = 0; b < kTileBlock; ++b) d[b] = d_gates_block[size_t(b) * R + r];
    V* out = acc + size_t(r) * K;
    for (int m = 0; m < K; ++m) {
      V sum = V{};
#pragma GCC unroll 8
      for (int b = 0; b < kTileBlock; ++b) sum += d[b] * in_block[size_t(b) * K + m];
      out[m] += sum;
    }
  }
  for (int first = 0, last; first < kTileBlock; first = last) {  // runs of tiles sharing a bias (one, mostly)
    for (last = first + 1; last < kTileBlock && acc_bias[last] == acc_bias[first]; ++last) {
    }
    for (int r = 0; r < R; ++r) {
      V sum = V{};
      for (int b = first; b < last; ++b) sum += d_gates_block[size_t(b) * R + r];
      acc_bias[first][r] += sum;
    }
  }
}

// Per-thread weight-gradient sums, vectors of lanes, reduced over lanes into this thread's row of `partial`
// (doubles) and then over threads in a fixed order.
template <typename T> struct Sums {
  using V = typename Simd<T>::V;
  std::vector<V> lanes;
  explicit Sums(size_t n) : lanes(n) {}
  V* at(size_t offset) { return lanes.data() + offset; }
  void to(double* row) const {
    for (size_t s = 0; s < lanes.size(); ++s) row[s] = lane_sum<T>(lanes[s]);
  }
};

std::vector<double> sum_over_threads(const std::vector<double>& partial, int threads, size_t n) {
  std::vector<double> total(n, 0.0);
  for (int t = 0; t < threads; ++t)
    for (size_t s = 0; s < n; ++s) total[s] += partial[size_t(t) * n + s];
  return total;
}

// An LSTM layer's weights regrouped per unit: packed[u][g][m] = [weight_ih | weight_hh][g H + u][m] and
// bias[u][g] = bias[g H + u]; and back, for the gradients.
template <typename T>
void pack_lstm(const T* weight_ih, const T* weight_hh, const T* bias, int hidden, int inputs, T* packed, T* packed_bias) {
  const int K = inputs + hidden;
  for (int u = 0; u < hidden; ++u)
    for (int g = 0; g < 4; ++g) {
      const int row = g * hidden + u;
      T* out = packed + (4 * u + g) * K;
      for (int m = 0; m < inputs; ++m) out[m] = weight_ih[row * inputs + m];
      for (int k = 0; k < hidden; ++k) out[inputs + k] = weight_hh[row * hidden + k];
      packed_bias[4 * u + g] = bias[row];
    }
}

template <typename T>
void unpack_lstm_grad(const double* packed, const double* packed_bias, int hidden, int inputs, T* d_weight_ih,
                      T* d_weight_hh, T* d_bias) {
  const int K = inputs + hidden;
  for (int u = 0; u < hidden; ++u)
    for (int g = 0; g < 4; ++g) {
      const int row = g * hidden + u;
      const double* in = packed + (4 * u + g) * K;
      for (int m = 0; m < inputs; ++m) d_weight_ih[row * inputs + m] = T(in[m]);
      for (int k = 0; k < hidden; ++k) d_weight_hh[row * hidden + k] = T(in[inputs + k]);
      d_bias[row] = T(packed_bias[4 * u + g]);
    }
}

int thread_count(int requested) {
#ifdef _OPENMP
  return std::max(1, requested);
#else
  (void)requested;
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace

// ============================== Meta-LSTM (Ravi & Larochelle) ==============================
// Mirrors fewshot_l2l/kernels/cpu.py: MetaLSTMCall. Pointers are to contiguous tensors of the step's dtype.
extern "C" struct MetaLSTMCall {
  int64_t batch, n_params, hidden;
  double p, threshold, scale;  // p, e^-p, e^p
  int64_t threads;
  // inputs: theta, grad [N]; loss [B]; h, c [hidden, N]; f, i [N]
  const void *theta, *grad, *loss, *h, *c, *f, *i;
  // weights: weight_ih [4H, 4], weight_hh [4H, H], bias [4H], weight_forget, weight_input [H + 2], biases []
  const void *weight_ih, *weight_hh, *bias, *weight_forget, *weight_input, *bias_forget, *bias_input;
  // forward outputs; in the backward, theta_out is unused and f_out, i_out are the saved outputs
  void *theta_out, *h_out, *c_out, *f_out, *i_out;
  // backward: the gradients of the outputs, then the gradients of the inputs and weights
  const void *d_theta_out, *d_h_out, *d_c_out, *d_f_out, *d_i_out;
  void *d_theta, *d_h, *d_c, *d_f, *d_i;
  void *d_weight_ih, *d_weight_hh, *d_bias, *d_weight_forget, *d_weight_input, *d_bias_forget, *d_bias_input;
};

namespace {

// Layer 1's inputs are [preprocessed grad (2), preprocessed loss (2), h (H)]; the loss is one value per episode,
// so its two columns are folded into a bias per episode: the tiles' gates take K = H + 2 inputs, not H + 4
// (8% fewer multiply-adds), and the two columns' gradients come from each episode's bias gradient.
template <typename T> struct MetaWeights {
  int H, K;
  std::vector<T> packed, loss_columns, forget, input;  // packed [H][4][K] over [x0, x1, h], loss_columns [H][4][2]
  std::vector<T> episode_bias, loss_features;          // [B][H][4]: bias + loss_columns . preprocess(loss_b); [B][2]
  T bias_forget, bias_input;
  MetaWeights(const MetaLSTMCall& a, const Preprocess<T>& pre) : H(int(a.hidden)), K(2 + int(a.hidden)) {
    const int R = 4 * H;
    std::vector<T> full(size_t(R) * (H + 4)), bias(R);
    pack_lstm((const T*)a.weight_ih, (const T*)a.weight_hh, (const T*)a.bias, H, 4, full.data(), bias.data());
    packed.resize(size_t(R) * K);
    loss_columns.resize(size_t(R) * 2);
    for (int r = 0; r < R; ++r) {
      const T* row = &full[size_t(r) * (H + 4)];
      packed[size_t(r) * K] = row[0];
      packed[size_t(r) * K + 1] = row[1];
      std::copy(row + 4, row + 4 + H, &packed[size_t(r) * K + 2]);
      loss_columns[2 * r] = row[2];
      loss_columns[2 * r + 1] = row[3];
    }
    episode_bias.resize(size_t(a.batch) * R);
    loss_features.resize(size_t(a.batch) * 2);
    for (int64_t b = 0; b < a.batch; ++b) {
      pre.apply(((const T*)a.loss)[b], loss_features[2 * b], loss_features[2 * b + 1]);
      for (int r = 0; r < R; ++r)
        episode_bias[size_t(b) * R + r] = bias[r] + loss_columns[2 * r] * loss_features[2 * b] +
                                          loss_columns[2 * r + 1] * loss_features[2 * b + 1];
    }
    forget.assign((const T*)a.weight_forget, (const T*)a.weight_forget + H + 2);
    input.assign((const T*)a.weight_input, (const T*)a.weight_input + H + 2);
    bias_forget = *(const T*)a.bias_forget;
    bias_input = *(const T*)a.bias_input;
  }
  const T* bias_of(int64_t episode) const { return &episode_bias[size_t(episode) * 4 * H]; }
};

struct Tiles {  // tile t: episode t / per_episode, coordinates [start, start + width) of N
  int64_t per_episode, count, n_params;
  int W;
  Tiles(int64_t batch, int64_t n_params, int W)
      : per_episode((n_params + W - 1) / W), count(batch * ((n_params + W - 1) / W)), n_params(n_params), W(W) {}
  int64_t episode(int64_t t) const { return t / per_episode; }
  int64_t start(int64_t t) const { return episode(t) * n_params + (t % per_episode) * W; }
  int width(int64_t t) const { return int(std::min<int64_t>(W, n_params - (t % per_episode) * W)); }
};

template <typename T, int HS> struct MetaLSTMKernel {
  using V = typename Simd<T>::V;
  static constexpr int W = Simd<T>::W;
  static constexpr int KS = HS ? HS + 2 : 0;

  static void forward(const MetaLSTMCall& a) {
    const Preprocess<T> pre{T(a.threshold), T(a.p), T(a.scale)};
    const MetaWeights<T> w(a, pre);
    const int H = HS ? HS : w.H, K = H + 2;
    const int64_t N = a.batch * a.n_params;
    const Tiles tiles(a.batch, a.n_params, W);
    const T *theta = (const T*)a.theta, *grad = (const T*)a.grad;
    const T *h = (const T*)a.h, *c = (const T*)a.c, *f = (const T*)a.f, *i = (const T*)a.i;
    T *theta_out = (T*)a.theta_out, *h_out = (T*)a.h_out, *c_out = (T*)a.c_out, *f_out = (T*)a.f_out,
      *i_out = (T*)a.i_out;
    const T *wf = w.forget.data(), *wi = w.input.data();
#pragma omp parallel num_threads(thread_count(int(a.threads)))
    {
      std::vector<V> scratch(HS ? 0 : 5 * H + 4);
      V local_in[HS ? KS : 1], local_gates[HS ? 4 * HS : 1];
      V* in = HS ? local_in : scratch.data();
      V* gates = HS ? local_gates : scratch.data() + K;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tiles.count; ++t) {
        const int64_t j = tiles.start(t);
        const int n = tiles.width(t);
        if (t + 1 < tiles.count) {
          const int64_t next = tiles.start(t + 1);
          prefetch_rows(h, N, H, next, 0);
          prefetch_rows(c, N, H, next, 0);
          for (const T* row : {theta, grad, f, i}) prefetch_rows(row, 0, 1, next, 0);
          prefetch_rows(h_out, N, H, next, 1);
          prefetch_rows(c_out, N, H, next, 1);
        }
        const V th = load<V>(theta + j, n), g = load<V>(grad + j, n);
        pre.apply(g, in[0], in[1]);
#pragma GCC unroll 32
        for (int k = 0; k < H; ++k) in[2 + k] = load<V>(h + k * N + j, n);
        const T* bias = w.bias_of(tiles.episode(t));
        V F = wf[H] * th + wf[H + 1] * load<V>(f + j, n) + w.bias_forget;
        V I = wi[H] * th + wi[H + 1] * load<V>(i + j, n) + w.bias_input;
        // All gates first, then the activations: independent chains that the core overlaps (one unit at a
        // time was latency-bound: a 24-deep FMA chain, then two dependent transcendental functions).
        for (int u = 0; u < H; ++u)
          unit_gates<KS>(&w.packed[size_t(4) * u * K], bias + 4 * u, in, K, gates[4 * u], gates[4 * u + 1],
                         gates[4 * u + 2], gates[4 * u + 3]);
        for (int u = 0; u < H; ++u) {
          const Cell<V> cell(&gates[4 * u], load<V>(c + u * N + j, n));
          store(c_out + u * N + j, cell.c_next, n);
          store(h_out + u * N + j, cell.h_next, n);
          F += wf[u] * cell.h_next;
          I += wi[u] * cell.h_next;
        }
        store(theta_out + j, vsigmoid(F) * th - vsigmoid(I) * g, n);
        store(f_out + j, F, n);
        store(i_out + j, I, n);
      }
    }
  }

  static void backward(const MetaLSTMCall& a) {
    const Preprocess<T> pre{T(a.threshold), T(a.p), T(a.scale)};
    const MetaWeights<T> w(a, pre);
    const int H = HS ? HS : w.H, K = H + 2;
    const int64_t N = a.batch * a.n_params;
    const Tiles tiles(a.batch, a.n_params, W);
    const int64_t blocks = (tiles.count + kTileBlock - 1) / kTileBlock;
    const T *theta = (const T*)a.theta, *grad = (const T*)a.grad;
    const T *h = (const T*)a.h, *c = (const T*)a.c, *f = (const T*)a.f, *i = (const T*)a.i;
    const T *F_saved = (const T*)a.f_out, *I_saved = (const T*)a.i_out;
    const T *d_theta_out = (const T*)a.d_theta_out, *d_h_out = (const T*)a.d_h_out, *d_c_out = (const T*)a.d_c_out,
            *d_f_out = (const T*)a.d_f_out, *d_i_out = (const T*)a.d_i_out;
    T *d_theta = (T*)a.d_theta, *d_h = (T*)a.d_h, *d_c = (T*)a.d_c, *d_f = (T*)a.d_f, *d_i = (T*)a.d_i;
    const T *wf = w.forget.data(), *wi = w.input.data();
    const int threads = thread_count(int(a.threads));
    // Sums: layer 1's packed weights [4H][K], its bias per episode [B][4H], then W_F and b_F [H + 3], W_I and b_I.
    const size_t episode_bias_at = size_t(4) * H * K, forget_at = episode_bias_at + size_t(a.batch) * 4 * H,
                 input_at = forget_at + H + 3, n_sums = input_at + H + 3;
    std::vector<double> partial(size_t(threads) * n_sums, 0.0);
#pragma omp parallel num_threads(threads)
    {
      Sums<T> sums(n_sums);
      V *acc_lstm = sums.at(0), *acc_forget = sums.at(forget_at), *acc_input = sums.at(input_at);
      V* tile_bias[kTileBlock];
      std::vector<V> in_block(size_t(kTileBlock) * K), dgates_block(size_t(kTileBlock) * 4 * H), dh_scratch(HS ? 0 : H);
#pragma omp for schedule(static)
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t first = block * kTileBlock;
        const int in_block_tiles = int(std::min<int64_t>(kTileBlock, tiles.count - first));
        for (int b = 0; b < kTileBlock; ++b)  // a short last block's missing tiles add zeros to the first's
          tile_bias[b] = sums.at(episode_bias_at + size_t(tiles.episode(first + (b < in_block_tiles ? b : 0))) * 4 * H);
        for (int b = 0; b < in_block_tiles; ++b) {
          const int64_t t = first + b;
          const int64_t j = tiles.start(t);
          const int n = tiles.width(t);
          if (t + 1 < tiles.count) {
            const int64_t next = tiles.start(t + 1);
            for (const T* rows : {h, c, d_h_out, d_c_out}) prefetch_rows(rows, N, H, next, 0);
            for (const T* row : {theta, grad, f, i, F_saved, I_saved, d_theta_out, d_f_out, d_i_out})
              prefetch_rows(row, 0, 1, next, 0);
            prefetch_rows(d_h, N, H, next, 1);
            prefetch_rows(d_c, N, H, next, 1);
          }
          V* in = &in_block[size_t(b) * K];
          V* dgates = &dgates_block[size_t(b) * 4 * H];
          // Layer 2 (lanes beyond n load as zeros, gradients included, so they add nothing to the sums).
          const V th = load<V>(theta + j, n), g = load<V>(grad + j, n);
          const V f_prev = load<V>(f + j, n), i_prev = load<V>(i + j, n);
          const V sF = vsigmoid(load<V>(F_saved + j, n)), sI = vsigmoid(load<V>(I_saved + j, n));
          const V dto = load<V>(d_theta_out + j, n);
          const V dF = load<V>(d_f_out + j, n) + dto * th * sF * (T(1) - sF);
          const V dI = load<V>(d_i_out + j, n) - dto * g * sI * (T(1) - sI);
          store(d_theta + j, dto * sF + dF * wf[H] + dI * wi[H], n);
          store(d_f + j, dF * wf[H + 1], n);
          store(d_i + j, dI * wi[H + 1], n);
          acc_forget[H] += dF * th;
          acc_forget[H + 1] += dF * f_prev;
          acc_forget[H + 2] += dF;
          acc_input[H] += dI * th;
          acc_input[H + 1] += dI * i_prev;
          acc_input[H + 2] += dI;
          // Layer 1, recomputed unit by unit.
          pre.apply(g, in[0], in[1]);
          V local[HS ? KS : 1];
          V* regs = HS ? local : in;
#pragma GCC unroll 32
          for (int k = 0; k < H; ++k) in[2 + k] = load<V>(h + k * N + j, n);
          const T* bias = w.bias_of(tiles.episode(t));
          if (HS) {
#pragma GCC unroll 32
            for (int m = 0; m < K; ++m) local[m] = in[m];
          }
          for (int u = 0; u < H; ++u)
            unit_gates<KS>(&w.packed[size_t(4) * u * K], bias + 4 * u, regs, K, dgates[4 * u], dgates[4 * u + 1],
                           dgates[4 * u + 2], dgates[4 * u + 3]);  // the gates, overwritten by their gradients
          for (int u = 0; u < H; ++u) {
            const Cell<V> cell(&dgates[4 * u], load<V>(c + u * N + j, n));
            acc_forget[u] += dF * cell.h_next;
            acc_input[u] += dI * cell.h_next;
            const V dh_next = load<V>(d_h_out + u * N + j, n) + dF * wf[u] + dI * wi[u];
            const V dc_prev = cell.template backward<T>(dh_next, load<V>(d_c_out + u * N + j, n), &dgates[4 * u]);
            store(d_c + u * N + j, dc_prev, n);
          }
          // d h_{t-1} = weight_hh^T d gates.
          V dh[HS ? HS : 1];
          V* dh_rows = HS ? dh : dh_scratch.data();
          transposed_product<HS>(w.packed.data(), K, 2, dgates, H, dh_rows);
#pragma GCC unroll 32
          for (int k = 0; k < H; ++k) store(d_h + k * N + j, dh_rows[k], n);
        }
        for (int b = in_block_tiles; b < kTileBlock; ++b) {  // a short last block: zeros add nothing
          std::fill_n(&in_block[size_t(b) * K], K, V{});
          std::fill_n(&dgates_block[size_t(b) * 4 * H], 4 * H, V{});
        }
        accumulate_outer_products(dgates_block.data(), 4 * H, in_block.data(), K, acc_lstm, tile_bias);
      }
      sums.to(&partial[size_t(thread_id()) * n_sums]);
    }
    const std::vector<double> total = sum_over_threads(partial, threads, n_sums);
    // Back to the weights' layouts: packed row r = 4u + g is row g H + u; the loss columns' gradients are
    // sum over episodes of preprocess(loss_b) times the episode's bias gradient.
    std::vector<double> full(size_t(4) * H * (H + 4)), bias(4 * H, 0.0);
    for (int r = 0; r < 4 * H; ++r) {
      const double* in = &total[size_t(r) * K];
      double* out = &full[size_t(r) * (H + 4)];
      out[0] = in[0];
      out[1] = in[1];
      std::copy(in + 2, in + 2 + H, out + 4);
      out[2] = out[3] = 0.0;
      for (int64_t e = 0; e < a.batch; ++e) {
        const double d = total[episode_bias_at + size_t(e) * 4 * H + r];
        bias[r] += d;
        out[2] += w.loss_features[2 * e] * d;
        out[3] += w.loss_features[2 * e + 1] * d;
      }
    }
    unpack_lstm_grad(full.data(), bias.data(), H, 4, (T*)a.d_weight_ih, (T*)a.d_weight_hh, (T*)a.d_bias);
    const double *forget = total.data() + forget_at, *input = total.data() + input_at;
    for (int k = 0; k < H + 2; ++k) {
      ((T*)a.d_weight_forget)[k] = T(forget[k]);
      ((T*)a.d_weight_input)[k] = T(input[k]);
    }
    *(T*)a.d_bias_forget = T(forget[H + 2]);
    *(T*)a.d_bias_input = T(input[H + 2]);
  }
};

template <typename T> int meta_lstm_dispatch(const MetaLSTMCall* a, bool backward) {
  if (a->hidden < 1 || a->batch < 0 || a->n_params < 1) return 1;
  switch (a->hidden) {
    case 8:
      backward ? MetaLSTMKernel<T, 8>::backward(*a) : MetaLSTMKernel<T, 8>::forward(*a);
      return 0;
    case 20:
      backward ? MetaLSTMKernel<T, 20>::backward(*a) : MetaLSTMKernel<T, 20>::forward(*a);
      return 0;
    default:
      backward ? MetaLSTMKernel<T, 0>::backward(*a) : MetaLSTMKernel<T, 0>::forward(*a);
      return 0;
  }
}

}  // namespace

// ============================== Andrychowicz et al.'s coordinatewise LSTM optimizer ==============================
// Mirrors fewshot_l2l/kernels/cpu.py: AndrychowiczCall. x = preprocess(grad) (2 features) -> LSTM(2 -> H) ->
// LSTM(H -> H) -> theta + output_scale (w_out . h2 + b_out), as fewshot_l2l/optim/rules.py: AndrychowiczRule.
extern "C" struct AndrychowiczCall {
  int64_t batch, n_params, hidden;
  double p, threshold, scale, output_scale;
  int64_t threads;
  const void *theta, *grad, *h1, *c1, *h2, *c2;  // theta, grad [N]; the two layers' states [hidden, N]
  // layer 1: weight_ih [4H, 2], weight_hh [4H, H], bias [4H]; layer 2: [4H, H], [4H, H], [4H]; output [1, H], [1]
  const void *weight_ih1, *weight_hh1, *bias1, *weight_ih2, *weight_hh2, *bias2, *weight_out, *bias_out;
  void *theta_out, *h1_out, *c1_out, *h2_out, *c2_out;
  const void *d_theta_out, *d_h1_out, *d_c1_out, *d_h2_out, *d_c2_out;
  void *d_theta, *d_h1, *d_c1, *d_h2, *d_c2;
  void *d_weight_ih1, *d_weight_hh1, *d_bias1, *d_weight_ih2, *d_weight_hh2, *d_bias2, *d_weight_out, *d_bias_out;
};

namespace {

template <typename T> struct AndrychowiczWeights {
  int H, K1, K2;
  std::vector<T> packed1, bias1, packed2, bias2, out;  // packed [H][4][K], bias [H][4], out [H]
  T bias_out;
  explicit AndrychowiczWeights(const AndrychowiczCall& a)
      : H(int(a.hidden)), K1(2 + int(a.hidden)), K2(2 * int(a.hidden)) {
    packed1.resize(size_t(4) * H * K1);
    bias1.resize(size_t(4) * H);
    packed2.resize(size_t(4) * H * K2);
    bias2.resize(size_t(4) * H);
    pack_lstm((const T*)a.weight_ih1, (const T*)a.weight_hh1, (const T*)a.bias1, H, 2, packed1.data(), bias1.data());
    pack_lstm((const T*)a.weight_ih2, (const T*)a.weight_hh2, (const T*)a.bias2, H, H, packed2.data(), bias2.data());
    out.assign((const T*)a.weight_out, (const T*)a.weight_out + H);
    bias_out = *(const T*)a.bias_out;
  }
};

template <typename T, int HS> struct AndrychowiczKernel {
  using V = typename Simd<T>::V;
  static constexpr int W = Simd<T>::W;
  static constexpr int K1S = HS ? HS + 2 : 0, K2S = HS ? 2 * HS : 0;

  static void forward(const AndrychowiczCall& a) {
    const AndrychowiczWeights<T> w(a);
    const int H = HS ? HS : w.H, K1 = H + 2, K2 = 2 * H;
    const int64_t N = a.batch * a.n_params;
    const Tiles tiles(a.batch, a.n_params, W);
    const Preprocess<T> pre{T(a.threshold), T(a.p), T(a.scale)};
    const T output_scale = T(a.output_scale);
    const T *theta = (const T*)a.theta, *grad = (const T*)a.grad;
    const T *h1 = (const T*)a.h1, *c1 = (const T*)a.c1, *h2 = (const T*)a.h2, *c2 = (const T*)a.c2;
    T *theta_out = (T*)a.theta_out, *h1_out = (T*)a.h1_out, *c1_out = (T*)a.c1_out, *h2_out = (T*)a.h2_out,
      *c2_out = (T*)a.c2_out;
#pragma omp parallel num_threads(thread_count(int(a.threads)))
    {
      std::vector<V> scratch(HS ? 0 : K1 + K2 + 4 * H);
      V local_in1[HS ? K1S : 1], local_in2[HS ? K2S : 1], local_gates[HS ? 4 * HS : 1];
      V* in1 = HS ? local_in1 : scratch.data();
      V* in2 = HS ? local_in2 : scratch.data() + K1;
      V* gates = HS ? local_gates : scratch.data() + K1 + K2;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tiles.count; ++t) {
        const int64_t j = tiles.start(t);
        const int n = tiles.width(t);
        if (t + 1 < tiles.count) {
          const int64_t next = tiles.start(t + 1);
          for (const T* rows : {h1, c1, h2, c2}) prefetch_rows(rows, N, H, next, 0);
          for (T* rows : {h1_out, c1_out, h2_out, c2_out}) prefetch_rows(rows, N, H, next, 1);
          prefetch_rows(theta, 0, 1, next, 0);
          prefetch_rows(grad, 0, 1, next, 0);
        }
        const V th = load<V>(theta + j, n);
        pre.apply(load<V>(grad + j, n), in1[0], in1[1]);
#pragma GCC unroll 32
        for (int k = 0; k < H; ++k) in1[2 + k] = load<V>(h1 + k * N + j, n);
        for (int u = 0; u < H; ++u)
          unit_gates<K1S>(&w.packed1[size_t(4) * u * K1], &w.bias1[4 * u], in1, K1, gates[4 * u], gates[4 * u + 1],
                          gates[4 * u + 2], gates[4 * u + 3]);
        for (int u = 0; u < H; ++u) {
          const Cell<V> cell(&gates[4 * u], load<V>(c1 + u * N + j, n));
          store(c1_out + u * N + j, cell.c_next, n);
          store(h1_out + u * N + j, cell.h_next, n);
          in2[u] = cell.h_next;
        }
#pragma GCC unroll 32
        for (int k = 0; k < H; ++k) in2[H + k] = load<V>(h2 + k * N + j, n);
        for (int u = 0; u < H; ++u)
          unit_gates<K2S>(&w.packed2[size_t(4) * u * K2], &w.bias2[4 * u], in2, K2, gates[4 * u], gates[4 * u + 1],
                          gates[4 * u + 2], gates[4 * u + 3]);
        V out = V{};
        for (int u = 0; u < H; ++u) {
          const Cell<V> cell(&gates[4 * u], load<V>(c2 + u * N + j, n));
          store(c2_out + u * N + j, cell.c_next, n);
          store(h2_out + u * N + j, cell.h_next, n);
          out += w.out[u] * cell.h_next;
        }
        store(theta_out + j, th + (out + w.bias_out) * output_scale, n);
      }
    }
  }

  static void backward(const AndrychowiczCall& a) {
    const AndrychowiczWeights<T> w(a);
    const int H = HS ? HS : w.H, K1 = H + 2, K2 = 2 * H;
    const int64_t N = a.batch * a.n_params;
    const Tiles tiles(a.batch, a.n_params, W);
    const int64_t blocks = (tiles.count + kTileBlock - 1) / kTileBlock;
    const Preprocess<T> pre{T(a.threshold), T(a.p), T(a.scale)};
    const T output_scale = T(a.output_scale);
    const T *grad = (const T*)a.grad;
    const T *h1 = (const T*)a.h1, *c1 = (const T*)a.c1, *h2 = (const T*)a.h2, *c2 = (const T*)a.c2;
    const T *d_theta_out = (const T*)a.d_theta_out, *d_h1_out = (const T*)a.d_h1_out, *d_c1_out = (const T*)a.d_c1_out,
            *d_h2_out = (const T*)a.d_h2_out, *d_c2_out = (const T*)a.d_c2_out;
    T *d_theta = (T*)a.d_theta, *d_h1 = (T*)a.d_h1, *d_c1 = (T*)a.d_c1, *d_h2 = (T*)a.d_h2, *d_c2 = (T*)a.d_c2;
    const int threads = thread_count(int(a.threads));
    // Sums: layer 1 [4H][K1] and [4H], layer 2 [4H][K2] and [4H], the output layer [H] and [1].
    const size_t bias1_at = size_t(4) * H * K1, layer2_at = bias1_at + 4 * H, bias2_at = layer2_at + size_t(4) * H * K2,
                 out_at = bias2_at + 4 * H, n_sums = out_at + H + 1;
    std::vector<double> partial(size_t(threads) * n_sums, 0.0);
#pragma omp parallel num_threads(threads)
    {
      Sums<T> sums(n_sums);
      std::vector<V> in1_block(size_t(kTileBlock) * K1), in2_block(size_t(kTileBlock) * K2),
          d_gates1_block(size_t(kTileBlock) * 4 * H), d_gates2_block(size_t(kTileBlock) * 4 * H),
          scratch(HS ? 0 : 2 * H);
      std::vector<Cell<V>> cells_scratch(HS ? 0 : H);
#pragma omp for schedule(static)
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t first = block * kTileBlock;
        const int in_block_tiles = int(std::min<int64_t>(kTileBlock, tiles.count - first));
        for (int b = 0; b < in_block_tiles; ++b) {
          const int64_t t = first + b;
          const int64_t j = tiles.start(t);
          const int n = tiles.width(t);
          if (t + 1 < tiles.count) {
            const int64_t next = tiles.start(t + 1);
            for (const T* rows : {h1, c1, h2, c2, d_h1_out, d_c1_out, d_h2_out, d_c2_out}) prefetch_rows(rows, N, H, next, 0);
            for (T* rows : {d_h1, d_c1, d_h2, d_c2}) prefetch_rows(rows, N, H, next, 1);
          }
          V* in1 = &in1_block[size_t(b) * K1];
          V* in2 = &in2_block[size_t(b) * K2];
          V* d_gates1 = &d_gates1_block[size_t(b) * 4 * H];
          V* d_gates2 = &d_gates2_block[size_t(b) * 4 * H];
          V local_in1[HS ? K1S : 1], local_in2[HS ? K2S : 1], local_d[HS ? 2 * HS : 1];
          Cell<V> local_cells[HS ? HS : 1];
          Cell<V>* cells1 = HS ? local_cells : cells_scratch.data();
          V* d_in2 = HS ? local_d : scratch.data();  // d h1' from layer 2 [H], then d h2 [H]
          // Forward again (lanes beyond n load as zeros, gradients included: they add nothing to the sums).
          pre.apply(load<V>(grad + j, n), in1[0], in1[1]);
#pragma GCC unroll 32
          for (int k = 0; k < H; ++k) in1[2 + k] = load<V>(h1 + k * N + j, n);
          if (HS) {
#pragma GCC unroll 32
            for (int m = 0; m < K1; ++m) local_in1[m] = in1[m];
          }
          for (int u = 0; u < H; ++u)
            unit_gates<K1S>(&w.packed1[size_t(4) * u * K1], &w.bias1[4 * u], HS ? local_in1 : in1, K1, d_gates1[4 * u],
                            d_gates1[4 * u + 1], d_gates1[4 * u + 2], d_gates1[4 * u + 3]);
          for (int u = 0; u < H; ++u) {
            cells1[u] = Cell<V>(&d_gates1[4 * u], load<V>(c1 + u * N + j, n));
            in2[u] = cells1[u].h_next;
          }
#pragma GCC unroll 32
          for (int k = 0; k < H; ++k) in2[H + k] = load<V>(h2 + k * N + j, n);
          if (HS) {
#pragma GCC unroll 32
            for (int m = 0; m < K2; ++m) local_in2[m] = in2[m];
          }
          for (int u = 0; u < H; ++u)
            unit_gates<K2S>(&w.packed2[size_t(4) * u * K2], &w.bias2[4 * u], HS ? local_in2 : in2, K2, d_gates2[4 * u],
                            d_gates2[4 * u + 1], d_gates2[4 * u + 2], d_gates2[4 * u + 3]);
          // Backward: theta_next = theta + output_scale (w_out . h2' + b_out).
          const V dto = load<V>(d_theta_out + j, n);
          store(d_theta + j, dto, n);
          const V d_out = dto * output_scale;
          *sums.at(out_at + H) += d_out;
          for (int u = 0; u < H; ++u) {
            const Cell<V> cell(&d_gates2[4 * u], load<V>(c2 + u * N + j, n));
            *sums.at(out_at + u) += d_out * cell.h_next;
            const V dh = load<V>(d_h2_out + u * N + j, n) + d_out * w.out[u];
            store(d_c2 + u * N + j, cell.template backward<T>(dh, load<V>(d_c2_out + u * N + j, n), &d_gates2[4 * u]), n);
          }
          transposed_product<HS>(w.packed2.data(), K2, 0, d_gates2, H, d_in2);      // d h1' through layer 2
          transposed_product<HS>(w.packed2.data(), K2, H, d_gates2, H, d_in2 + H);  // d h2
#pragma GCC unroll 32
          for (int k = 0; k < H; ++k) store(d_h2 + k * N + j, d_in2[H + k], n);
          for (int u = 0; u < H; ++u) {
            const V dh = load<V>(d_h1_out + u * N + j, n) + d_in2[u];
            store(d_c1 + u * N + j, cells1[u].template backward<T>(dh, load<V>(d_c1_out + u * N + j, n), &d_gates1[4 * u]), n);
          }
          transposed_product<HS>(w.packed1.data(), K1, 2, d_gates1, H, d_in2);  // d h1
#pragma GCC unroll 32
          for (int k = 0; k < H; ++k) store(d_h1 + k * N + j, d_in2[k], n);
        }
        for (int b = in_block_tiles; b < kTileBlock; ++b) {  // a short last block: zeros add nothing
          std::fill_n(&in1_block[size_t(b) * K1], K1, V{});
          std::fill_n(&in2_block[size_t(b) * K2], K2, V{});
          std::fill_n(&d_gates1_block[size_t(b) * 4 * H], 4 * H, V{});
          std::fill_n(&d_gates2_block[size_t(b) * 4 * H], 4 * H, V{});
        }
        V *bias1[kTileBlock], *bias2[kTileBlock];
        std::fill_n(bias1, kTileBlock, sums.at(bias1_at));
        std::fill_n(bias2, kTileBlock, sums.at(bias2_at));
        accumulate_outer_products(d_gates1_block.data(), 4 * H, in1_block.data(), K1, sums.at(0), bias1);
        accumulate_outer_products(d_gates2_block.data(), 4 * H, in2_block.data(), K2, sums.at(layer2_at), bias2);
      }
      sums.to(&partial[size_t(thread_id()) * n_sums]);
    }
    const std::vector<double> total = sum_over_threads(partial, threads, n_sums);
    unpack_lstm_grad(total.data(), total.data() + bias1_at, H, 2, (T*)a.d_weight_ih1, (T*)a.d_weight_hh1, (T*)a.d_bias1);
    unpack_lstm_grad(total.data() + layer2_at, total.data() + bias2_at, H, H, (T*)a.d_weight_ih2, (T*)a.d_weight_hh2,
                     (T*)a.d_bias2);
    for (int k = 0; k < H; ++k) ((T*)a.d_weight_out)[k] = T(total[out_at + k]);
    *(T*)a.d_bias_out = T(total[out_at + H]);
  }
};

template <typename T> int andrychowicz_dispatch(const AndrychowiczCall* a, bool backward) {
  if (a->hidden < 1 || a->batch < 0 || a->n_params < 1) return 1;
  switch (a->hidden) {
    case 8:
      backward ? AndrychowiczKernel<T, 8>::backward(*a) : AndrychowiczKernel<T, 8>::forward(*a);
      return 0;
    case 20:
      backward ? AndrychowiczKernel<T, 20>::backward(*a) : AndrychowiczKernel<T, 20>::forward(*a);
      return 0;
    default:
      backward ? AndrychowiczKernel<T, 0>::backward(*a) : AndrychowiczKernel<T, 0>::forward(*a);
      return 0;
  }
}

}  // namespace

extern "C" {
// dtype: 0 float32, 1 float64. Returns 0, or 1 for arguments out of range.
int fewshot_meta_lstm_forward(const MetaLSTMCall* call, int dtype) {
  return dtype == 0 ? meta_lstm_dispatch<float>(call, false) : meta_lstm_dispatch<double>(call, false);
}
int fewshot_meta_lstm_backward(const MetaLSTMCall* call, int dtype) {
  return dtype == 0 ? meta_lstm_dispatch<float>(call, true) : meta_lstm_dispatch<double>(call, true);
}
int fewshot_andrychowicz_forward(const AndrychowiczCall* call, int dtype) {
  return dtype == 0 ? andrychowicz_dispatch<float>(call, false) : andrychowicz_dispatch<double>(call, false);
}
int fewshot_andrychowicz_backward(const AndrychowiczCall* call, int dtype) {
  return dtype == 0 ? andrychowicz_dispatch<float>(call, true) : andrychowicz_dispatch<double>(call, true);
}
int fewshot_vector_bytes() { return FS_VECTOR_BYTES; }
}
