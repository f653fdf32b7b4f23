// Pass-1 kernels of neuronindex.stats on both CPU cores: the spatial reduction of one feature map
// (optionally rectifying it on the way, for a tapped ReLU) and the merge of a batch's candidates
// into the running top lists.
//
// Written for the place they run: inside the model's forward, right after the map is produced,
// where numba's single-threaded loops cost about 15% of the forward. The loops run in OpenMP
// parallel regions, and libgomp is the runtime torch itself uses (one copy is loaded per process),
// so they take torch's own worker threads instead of competing with them. Vector lanes come from
// GCC vector extensions; each kernel is compiled for AVX-512, AVX2 and baseline x86-64 and the
// loader picks one for the CPU at hand (target_clones).
//
// The Python side (neuronindex/stats.py) checks dtypes, shapes and contiguity before calling;
// arguments are raw addresses and sizes. Results equal the numba kernels exactly (same first
// maximum, same tie rules); tests/test_stats.py compares them.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int W = 16;  // float lanes per vector

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif
#define INLINE inline __attribute__((always_inline))

const float NEG_INF = -std::numeric_limits<float>::infinity();

// torch.relu's values exactly (it is clamp_min(x, 0)): 0 where x < 0; x itself elsewhere, so NaN
// stays NaN and -0.0 stays -0.0.
INLINE void rectify(vf& v) {  // in place: a vector return value would be an ABI note per clone
  const vf zero = {};
  v = v < zero ? zero : v;
}
INLINE float relu(float v) { return v < 0.f ? 0.f : v; }

// Channels-first rows: row r = (b, c) holds P positions. Each of U vectors keeps, per lane, its
// running maximum, where it was first reached and how many positions fired (> 0); lanes are
// folded at the end, the earliest position winning ties, then the tail is read in order.
// With R (fused ReLU) the map read is the ReLU's input: its rectified values are written to Y (same
// layout) and summarised, so the ReLU's output is never read back.
template <int U, bool R>
INLINE void rows_first(const float* X, float* Y, int64_t r0, int64_t r1, int64_t C, int64_t P, const float* bar,
                       float* values, int64_t vstride, int64_t* loc, int64_t lstride, int32_t* fired) {
  constexpr int K = W * U;
  const int64_t chunks = P / K;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / C, c = r % C;
    const float* row = X + r * P;
    float* out = R ? Y + r * P : nullptr;
    float m = NEG_INF;
    int64_t p = 0;
    int32_t n = 0;
    if (chunks) {
      const vi lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
      vf best[U];
      vi at[U], fi[U], idx[U];
      for (int u = 0; u < U; ++u) {
        best[u] = vf{} + NEG_INF;
        at[u] = vi{};
        fi[u] = vi{};
        idx[u] = lane + u * W;
      }
      const vf zero = {};
      for (int64_t i = 0; i < chunks; ++i)
        for (int u = 0; u < U; ++u) {
          vf v;
          std::memcpy(&v, row + i * K + u * W, sizeof v);
          if (R) {
            rectify(v);
            std::memcpy(out + i * K + u * W, &v, sizeof v);
          }
          const vi better = v > best[u];
          best[u] = better ? v : best[u];
          at[u] = better ? idx[u] : at[u];
          fi[u] -= (v > zero);  // a true comparison is -1
          idx[u] += K;
        }
      m = best[0][0];
      p = at[0][0];
      for (int u = 0; u < U; ++u)
        for (int j = 0; j < W; ++j) {
          const float bv = best[u][j];
          const int32_t a = at[u][j];
          if (bv > m || (bv == m && a < p)) {
            m = bv;
            p = a;
          }
          n += fi[u][j];
        }
    }
    for (int64_t q = chunks * K; q < P; ++q) {
      float v = row[q];
      if (R) out[q] = v = relu(v);
      if (v > m) {
        m = v;
        p = q;
      }
      n += v > 0.f;
    }
    values[b * vstride + c] = m;
    loc[b * lstride + c] = m >= bar[c] ? p : -1;
    fired[r] = n;
  }
}

// OpenMP outlines a parallel loop's body into a function of its own, which target_clones does not
// clone, so the loop bodies below call clone-compiled workers for their share of the rows.
template <bool R>
INLINE void first_rows_u(const float* X, float* Y, int64_t r0, int64_t r1, int64_t C, int64_t P, const float* bar,
                         float* values, int64_t vstride, int64_t* loc, int64_t lstride, int32_t* fired) {
  if (P >= 256)
    rows_first<4, R>(X, Y, r0, r1, C, P, bar, values, vstride, loc, lstride, fired);
  else if (P >= 64)  // short rows: fewer lanes to fold
    rows_first<2, R>(X, Y, r0, r1, C, P, bar, values, vstride, loc, lstride, fired);
  else
    rows_first<1, R>(X, Y, r0, r1, C, P, bar, values, vstride, loc, lstride, fired);
}

CLONES void first_rows(const float* X, float* Y, int64_t r0, int64_t r1, int64_t C, int64_t P, const float* bar,
                       float* values, int64_t vstride, int64_t* loc, int64_t lstride, int32_t* fired) {
  if (Y)
    first_rows_u<true>(X, Y, r0, r1, C, P, bar, values, vstride, loc, lstride, fired);
  else
    first_rows_u<false>(X, Y, r0, r1, C, P, bar, values, vstride, loc, lstride, fired);
}

void reduce_first(const float* X, float* Y, int64_t B, int64_t C, int64_t P, const float* bar, float* values,
                  int64_t vstride, int64_t* loc, int64_t lstride, int32_t* fired, int threads) {
  const int64_t R = B * C, step = 16;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t s = 0; s < R; s += step)
    first_rows(X, Y, s, s + step < R ? s + step : R, C, P, bar, values, vstride, loc, lstride, fired);
}

// Channels-last maps (B, P, C), C a multiple of 16: a task reads U vectors (up to 64 lanes) down
// the positions of one image. Lanes are channels c0.. of one group; when there are fewer than 64
// channels, `fold` consecutive positions lie side by side in the lanes (lane k: channel k % C,
// position offset k / C) and are folded at the end, the earliest position winning ties.
template <int U, bool R>
INLINE void last_group(const float* img, float* oimg, int64_t c0, int64_t C, int64_t P, int64_t fold, const float* bar,
                       float* values, int64_t* loc, int32_t* fired) {
  constexpr int K = W * U;
  const int64_t rows = P / fold, stride = fold * C;
  vf best[U];
  vi at[U], fi[U];
  for (int u = 0; u < U; ++u) {
    best[u] = vf{} + NEG_INF;
    at[u] = vi{};
    fi[u] = vi{};
  }
  const vf zero = {};
  vi row = {};
  const vi one = row + 1;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = img + r * stride + c0;
    float* o = oimg + r * stride + c0;
    for (int u = 0; u < U; ++u) {
      vf v;
      std::memcpy(&v, x + u * W, sizeof v);
      if (R) {
        rectify(v);
        std::memcpy(o + u * W, &v, sizeof v);
      }
      const vi better = v > best[u];
      best[u] = better ? v : best[u];
      at[u] = better ? row : at[u];
      fi[u] -= (v > zero);
    }
    row += one;
  }
  const int64_t n = K < C ? K : C;  // channels in this group
  float m[K];
  int64_t p[K];
  int32_t cnt[K];
  for (int64_t k = 0; k < n; ++k) {
    m[k] = NEG_INF;
    p[k] = 0;
    cnt[k] = 0;
  }
  for (int k = 0; k < K; ++k) {
    const float bv = best[k / W][k % W];
    const int64_t c = k % C, q = at[k / W][k % W] * fold + k / C;
    if (bv > m[c] || (bv == m[c] && q < p[c])) {
      m[c] = bv;
      p[c] = q;
    }
    cnt[c] += fi[k / W][k % W];
  }
  for (int64_t k = 0; k < n; ++k) {
    values[c0 + k] = m[k];
    loc[c0 + k] = m[k] >= bar[c0 + k] ? p[k] : -1;
    fired[c0 + k] = cnt[k];
  }
}

// Any other channel count: 16 channels per vector down the positions, the rest one by one.
template <bool R>
INLINE void last_any(const float* img, float* oimg, int64_t C, int64_t P, const float* bar, float* values, int64_t* loc,
                     int32_t* fired) {
  const int64_t blocks = C / W;
  for (int64_t k = 0; k < blocks; ++k) last_group<1, R>(img, oimg, k * W, C, P, 1, bar, values, loc, fired);
  for (int64_t c = blocks * W; c < C; ++c) {
    float m = NEG_INF;
    int64_t p = 0;
    int32_t n = 0;
    for (int64_t q = 0; q < P; ++q) {
      float v = img[q * C + c];
      if (R) oimg[q * C + c] = v = relu(v);
      if (v > m) {
        m = v;
        p = q;
      }
      n += v > 0.f;
    }
    values[c] = m;
    loc[c] = m >= bar[c] ? p : -1;
    fired[c] = n;
  }
}

template <bool R>
INLINE void last_task_r(const float* X, float* Y, int64_t b, int64_t k, int64_t C, int64_t P, int64_t fold,
                        const float* bar, float* values, int64_t vstride, int64_t* loc, int64_t lstride,
                        int32_t* fired) {
  const float* img = X + b * P * C;
  float* oimg = R ? Y + b * P * C : nullptr;
  float* V = values + b * vstride;
  int64_t* Lc = loc + b * lstride;
  int32_t* F = fired + b * C;
  if (C % W) return last_any<R>(img, oimg, C, P, bar, V, Lc, F);
  const int64_t c0 = k * 4 * W, lanes = fold > 1 ? fold * C : (C - c0 < 4 * W ? C - c0 : 4 * W);
  switch (lanes / W) {
    case 1: return last_group<1, R>(img, oimg, c0, C, P, fold, bar, V, Lc, F);
    case 2: return last_group<2, R>(img, oimg, c0, C, P, fold, bar, V, Lc, F);
    case 3: return last_group<3, R>(img, oimg, c0, C, P, fold, bar, V, Lc, F);
    default: return last_group<4, R>(img, oimg, c0, C, P, fold, bar, V, Lc, F);
  }
}

// Task k of image b: channel group k (64 channels) when C is a multiple of 16, else all channels.
CLONES void last_task(const float* X, float* Y, int64_t b, int64_t k, int64_t C, int64_t P, int64_t fold,
                      const float* bar, float* values, int64_t vstride, int64_t* loc, int64_t lstride,
                      int32_t* fired) {
  if (Y)
    last_task_r<true>(X, Y, b, k, C, P, fold, bar, values, vstride, loc, lstride, fired);
  else
    last_task_r<false>(X, Y, b, k, C, P, fold, bar, values, vstride, loc, lstride, fired);
}

void reduce_last(const float* X, float* Y, int64_t B, int64_t C, int64_t P, const float* bar, float* values,
                 int64_t vstride, int64_t* loc, int64_t lstride, int32_t* fired, int threads) {
  int64_t fold = 1;  // positions side by side, so that few channels still fill 64 lanes
  if (C % W == 0)
    while (fold * 2 * C <= 4 * W && P % (fold * 2) == 0) fold *= 2;
  const int64_t groups = C % W ? 1 : (C + 4 * W - 1) / (4 * W);
  const int64_t tasks = B * groups;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < tasks; ++t)
    last_task(X, Y, t / groups, t % groups, C, P, fold, bar, values, vstride, loc, lstride, fired);
}

// Per channel, merge the batch's candidates (loc[b, c] >= 0) into the top list
// (values, ids, ys, xs)[c] ordered by value descending, then image id ascending: the algorithm of
// stats._merge_top, with channels split between threads. `loc` (B, C) is read row by row within a
// thread's channel range, so each image costs a cache line or two, not one per channel.
void merge_top(float* values, int64_t* ids, int32_t* ys, int32_t* xs, int64_t C, int64_t L,
                      const float* vals, const int64_t* loc, const int64_t* image_ids, const int64_t* width,
                      int64_t B, int threads) {
  const int64_t span = 64;  // channels per task
  const int64_t tasks = (C + span - 1) / span;
#pragma omp parallel num_threads(threads)
  {
    std::vector<int64_t> start(span + 1), fill(span), rows;
    std::vector<float> cv(B);
    std::vector<int64_t> ci(B), cb(B);
#pragma omp for schedule(static, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t c0 = t * span, c1 = c0 + span < C ? c0 + span : C, n = c1 - c0;
      std::fill(start.begin(), start.end(), 0);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = c0; c < c1; ++c) start[c - c0 + 1] += loc[b * C + c] >= 0;
      for (int64_t c = 0; c < n; ++c) start[c + 1] += start[c];
      rows.resize(start[n]);
      for (int64_t c = 0; c < n; ++c) fill[c] = start[c];
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = c0; c < c1; ++c)
          if (loc[b * C + c] >= 0) rows[fill[c - c0]++] = b;
      for (int64_t c = c0; c < c1; ++c) {
        float* V = values + c * L;
        int64_t* I = ids + c * L;
        int32_t* Y = ys + c * L;
        int32_t* X = xs + c * L;
        const float last_v = V[L - 1];
        const int64_t last_i = I[L - 1];
        int64_t m = 0;
        for (int64_t k = start[c - c0]; k < start[c - c0 + 1]; ++k) {
          const int64_t b = rows[k];
          const float v = vals[b * C + c];
          const int64_t i = image_ids[b];
          if (v < last_v || (v == last_v && i > last_i)) continue;
          int64_t j = m;
          while (j > 0 && (cv[j - 1] < v || (cv[j - 1] == v && ci[j - 1] > i))) {
            cv[j] = cv[j - 1];
            ci[j] = ci[j - 1];
            cb[j] = cb[j - 1];
            --j;
          }
          cv[j] = v;
          ci[j] = i;
          cb[j] = b;
          ++m;
        }
        // L + m entries in all: drop the m worst, then write from position L - 1 upwards
        int64_t old = L - 1, nw = m - 1;
        for (int64_t k = 0; k < m; ++k) {
          if (nw >= 0 && (old < 0 || cv[nw] < V[old] || (cv[nw] == V[old] && ci[nw] > I[old])))
            --nw;
          else
            --old;
        }
        for (int64_t w = L - 1; nw >= 0; --w) {
          if (old >= 0 && (V[old] < cv[nw] || (V[old] == cv[nw] && I[old] > ci[nw]))) {
            V[w] = V[old];
            I[w] = I[old];
            Y[w] = Y[old];
            X[w] = X[old];
            --old;
          } else {
            const int64_t a = loc[cb[nw] * C + c];
            V[w] = cv[nw];
            I[w] = ci[nw];
            Y[w] = (int32_t)(a / width[c]);
            X[w] = (int32_t)(a % width[c]);
            --nw;
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------- Python bindings
// Every argument is a Python int: an address or a size.

bool ints(PyObject* const* args, Py_ssize_t nargs, Py_ssize_t want, int64_t* out) {
  if (nargs != want) {
    PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd", want, nargs);
    return false;
  }
  for (Py_ssize_t k = 0; k < want; ++k) {
    out[k] = PyLong_AsLongLong(args[k]);
    if (out[k] == -1 && PyErr_Occurred()) return false;
  }
  return true;
}

template <class T>
T* ptr(int64_t a) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(a));
}

// reduce(layout, x, B, C, P, bar, values, vstride, loc, lstride, firing, threads, y); layout 0 is
// channels-first (B, C, P), 1 channels-last (B, P, C); each channel's count of firing positions
// is added to firing (C,) float64. y: 0, or where to write relu(x) (x's layout), which is then
// what is summarised.
PyObject* py_reduce(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  int64_t a[13];
  if (!ints(args, nargs, 13, a)) return nullptr;
  const int64_t B = a[2], C = a[3];
  Py_BEGIN_ALLOW_THREADS;
  std::vector<int32_t> fired(B * C);
  auto fn = a[0] ? reduce_last : reduce_first;
  fn(ptr<const float>(a[1]), ptr<float>(a[12]), B, C, a[4], ptr<const float>(a[5]), ptr<float>(a[6]), a[7], ptr<int64_t>(a[8]), a[9],
     fired.data(), (int)a[11]);
  double* firing = ptr<double>(a[10]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) firing[c] += fired[b * C + c];
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

// merge_top(values, ids, ys, xs, C, L, vals, loc, image_ids, width, B, threads)
PyObject* py_merge_top(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  int64_t a[12];
  if (!ints(args, nargs, 12, a)) return nullptr;
  Py_BEGIN_ALLOW_THREADS;
  merge_top(ptr<float>(a[0]), ptr<int64_t>(a[1]), ptr<int32_t>(a[2]), ptr<int32_t>(a[3]), a[4], a[5],
            ptr<const float>(a[6]), ptr<const int64_t>(a[7]), ptr<const int64_t>(a[8]), ptr<const int64_t>(a[9]),
            a[10], (int)a[11]);
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"reduce", (PyCFunction)(void (*)(void))py_reduce, METH_FASTCALL, "Spatial max, first argmax and firing counts."},
    {"merge_top", (PyCFunction)(void (*)(void))py_merge_top, METH_FASTCALL, "Merge candidates into top lists."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "neuronindex._pass1", "Pass-1 kernels (see _pass1.cpp).", -1, methods,
                   nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__pass1(void) { return PyModule_Create(&module); }
