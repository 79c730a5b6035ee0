// out = a * u + q, or with a second input out = a * u + (b * (v - m) + q), where a, b, m and q hold
// one value per channel, for an (n, c, l) batch: l = 1 for rows of channels, else planes of l values.
//
// It reads one or two tensors and writes one. With stream set, the writes bypass the caches
// (non-temporal stores, on CPUs with AVX2 or AVX-512), so writing out costs no read of its old
// contents first (write-allocate) and leaves the cache to the reads: worth it for outputs too large
// to stay in the cache; a smaller output is better left there for whoever reads it next.
#include <torch/csrc/inductor/cpp_prefix.h>

#if INDUCTOR_USE_VECTOR_TYPES()
using Vec = at::vec::Vectorized<float>;
constexpr int64_t LANES = Vec::size();

template <bool STREAM>
static inline void store(float* o, const Vec& value) {  // o aligned to a vector
#if defined(CPU_CAPABILITY_AVX512)
  if (STREAM) return _mm512_stream_ps(o, value);
#elif defined(CPU_CAPABILITY_AVX2)
  if (STREAM) return _mm256_stream_ps(o, value);
#endif
  value.store(o);
}

template <bool TWO>
static inline Vec map(const float* u, const float* v, Vec a, Vec b, Vec m, Vec q) {
  return TWO ? at::vec::fmadd(Vec::loadu(u), a, at::vec::fmadd(Vec::loadu(v) - m, b, q))
             : at::vec::fmadd(Vec::loadu(u), a, q);
}
#else  // a build without vector types (a CPU without AVX2, or ATEN_CPU_CAPABILITY=default): scalars
constexpr int64_t LANES = 1;
#endif

template <bool TWO>
static inline float map(float u, float v, float a, float b, float m, float q) {
  return TWO ? std::fma(u, a, std::fma(v - m, b, q)) : std::fma(u, a, q);
}

// lanes before the first address aligned to a vector, at most size
static inline int64_t head(const float* o, int64_t size) {
  const int64_t misaligned = static_cast<int64_t>(reinterpret_cast<uintptr_t>(o) / sizeof(float)) % LANES;
  return std::min(size, misaligned ? LANES - misaligned : 0);
}

template <bool TWO, bool STREAM>
static void rows(const float* u, const float* v, const float* a, const float* b, const float* m,
                 const float* q, float* out, int64_t n, int64_t c, int64_t threads) {
#pragma omp parallel for num_threads(threads)
  for (int64_t r = 0; r < n; ++r) {
    const float* ur = u + r * c;
    const float* vr = TWO ? v + r * c : ur;
    float* o = out + r * c;
    int64_t j = 0;
    for (const int64_t first = head(o, c); j < first; ++j)
      o[j] = map<TWO>(ur[j], vr[j], a[j], b[j], m[j], q[j]);
#if INDUCTOR_USE_VECTOR_TYPES()
    for (; j + LANES <= c; j += LANES)
      store<STREAM>(o + j, map<TWO>(ur + j, vr + j, Vec::loadu(a + j), Vec::loadu(b + j),
                                       Vec::loadu(m + j), Vec::loadu(q + j)));
#endif
    for (; j < c; ++j) o[j] = map<TWO>(ur[j], vr[j], a[j], b[j], m[j], q[j]);
  }
}

template <bool TWO, bool STREAM>
static void planes(const float* u, const float* v, const float* a, const float* b, const float* m,
                   const float* q, float* out, int64_t n, int64_t c, int64_t l, int64_t threads) {
#pragma omp parallel for num_threads(threads)
  for (int64_t p = 0; p < n * c; ++p) {
    const int64_t ch = p % c;
    const float* up = u + p * l;
    const float* vp = TWO ? v + p * l : up;
    float* o = out + p * l;
    int64_t k = 0;
    for (const int64_t first = head(o, l); k < first; ++k)
      o[k] = map<TWO>(up[k], vp[k], a[ch], b[ch], m[ch], q[ch]);
#if INDUCTOR_USE_VECTOR_TYPES()
    const Vec av(a[ch]), bv(b[ch]), mv(m[ch]), qv(q[ch]);
    for (; k + LANES <= l; k += LANES) store<STREAM>(o + k, map<TWO>(up + k, vp + k, av, bv, mv, qv));
#endif
    for (; k < l; ++k) o[k] = map<TWO>(up[k], vp[k], a[ch], b[ch], m[ch], q[ch]);
  }
}

template <bool TWO, bool STREAM>
static void run(const float* u, const float* v, const float* a, const float* b, const float* m,
                const float* q, float* out, int64_t n, int64_t c, int64_t l, int64_t threads) {
  if (l == 1)
    rows<TWO, STREAM>(u, v, a, b, m, q, out, n, c, threads);
  else
    planes<TWO, STREAM>(u, v, a, b, m, q, out, n, c, l, threads);
}

extern "C" void kernel(const float* u, const float* v, const float* a, const float* b, const float* m,
                       const float* q, float* out, int64_t n, int64_t c, int64_t l, int64_t two,
                       int64_t stream, int64_t threads) {
  if (two)
    stream ? run<true, true>(u, v, a, b, m, q, out, n, c, l, threads)
           : run<true, false>(u, v, a, b, m, q, out, n, c, l, threads);
  else
    stream ? run<false, true>(u, v, a, b, m, q, out, n, c, l, threads)
           : run<false, false>(u, v, a, b, m, q, out, n, c, l, threads);
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if (stream) _mm_sfence();  // non-temporal stores are weakly ordered: made visible before returning
#endif
}
