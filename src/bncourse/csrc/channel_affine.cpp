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

// One span of the output: len values of u (and v) at o. PER_LANE: a, b, m and q hold a value for each
// of the span's values (a row of channels); else one value for the whole span (a plane of a channel).
template <bool TWO, bool STREAM, bool PER_LANE>
static inline void span(const float* __restrict__ u, const float* __restrict__ v, const float* a,
                        const float* b, const float* m, const float* q, float* __restrict__ o, int64_t len) {
  const auto at = [](const float* p, int64_t k) { return PER_LANE ? p[k] : p[0]; };
  int64_t k = 0;
  for (const int64_t first = head(o, len); k < first; ++k)
    o[k] = map<TWO>(u[k], v[k], at(a, k), at(b, k), at(m, k), at(q, k));
#if INDUCTOR_USE_VECTOR_TYPES()
  if constexpr (PER_LANE) {
    for (; k + LANES <= len; k += LANES)
      store<STREAM>(o + k, map<TWO>(u + k, v + k, Vec::loadu(a + k), Vec::loadu(b + k),
                                    Vec::loadu(m + k), Vec::loadu(q + k)));
  } else {
    const Vec av(a[0]), bv(b[0]), mv(m[0]), qv(q[0]);
    for (; k + LANES <= len; k += LANES) store<STREAM>(o + k, map<TWO>(u + k, v + k, av, bv, mv, qv));
  }
#endif
  for (; k < len; ++k) o[k] = map<TWO>(u[k], v[k], at(a, k), at(b, k), at(m, k), at(q, k));
}

// An (n, c, l) batch as n * c planes of l values, or (l = 1) as n rows of c channels.
template <bool TWO, bool STREAM>
static void run(const float* u, const float* v, const float* a, const float* b, const float* m,
                const float* q, float* out, int64_t n, int64_t c, int64_t l, int64_t threads) {
  if (l == 1) {
#pragma omp parallel for num_threads(threads)
    for (int64_t r = 0; r < n; ++r)
      span<TWO, STREAM, true>(u + r * c, v + r * c, a, b, m, q, out + r * c, c);
  } else {
#pragma omp parallel for num_threads(threads)
    for (int64_t p = 0; p < n * c; ++p) {
      const int64_t ch = p % c;
      span<TWO, STREAM, false>(u + p * l, v + p * l, a + ch, b + ch, m + ch, q + ch, out + p * l, l);
    }
  }
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
