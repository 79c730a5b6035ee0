// Per-channel sums of an (n, c) batch, row by row: s1 = sum(u - mu), s2 = sum((u - mu) * (v - mv)).
//
// Each thread streams its share of the rows from memory in order, adding every row into c-wide
// accumulators that stay in L1 (as ATen's batch norm does), so the hardware prefetcher sees one
// sequential stream per thread. Rows are summed in float in chunks of 64, the chunks in double:
// the rounding error grows with the chunk, not with n. The threads' sums are added into out (s1,
// then s2). Sums of squares (u is v and mu is mv: the forward's variance) read and subtract once.
#include <torch/csrc/inductor/cpp_prefix.h>

#if INDUCTOR_USE_VECTOR_TYPES()
using Vec = at::vec::Vectorized<float>;
#endif
constexpr int64_t CHUNK = 64;
constexpr int64_t LINE = 64 / sizeof(float);  // floats in a cache line

template <bool SQUARES>
static void sums(const float* u, const float* v, const float* mu, const float* mv, double* out, int64_t n,
                 int64_t c, int64_t threads) {
  std::vector<double> partial(2 * c * threads, 0.0);  // each thread's (s1, s2)
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), team = omp_get_num_threads();
    double* total1 = partial.data() + 2 * c * t;
    double* total2 = total1 + c;
    // the chunk's sums, each starting on a cache line (a vector across two lines costs two accesses)
    const int64_t stride = (c + LINE - 1) / LINE * LINE;
    std::vector<float> chunk(2 * stride + LINE);
    const int64_t misaligned = reinterpret_cast<uintptr_t>(chunk.data()) / sizeof(float) % LINE;
    float* s1 = chunk.data() + (LINE - misaligned) % LINE;
    float* s2 = s1 + stride;
    const int64_t end = n * (t + 1) / team;
    for (int64_t first = n * t / team; first < end; first += CHUNK) {
      std::fill(s1, s1 + 2 * stride, 0.0f);
      for (int64_t r = first; r < std::min(first + CHUNK, end); ++r) {
        const float* ur = u + r * c;
        const float* vr = v + r * c;
        int64_t j = 0;
        // a build without vector types (ATEN_CPU_CAPABILITY=default): the scalar loop only
#if INDUCTOR_USE_VECTOR_TYPES()
        for (; j + Vec::size() <= c; j += Vec::size()) {
          const auto du = Vec::loadu(ur + j) - Vec::loadu(mu + j);
          const auto dv = SQUARES ? du : Vec::loadu(vr + j) - Vec::loadu(mv + j);
          (Vec::loadu(s1 + j) + du).store(s1 + j);
          (Vec::loadu(s2 + j) + du * dv).store(s2 + j);
        }
#endif
        for (; j < c; ++j) {
          const float du = ur[j] - mu[j], dv = SQUARES ? du : vr[j] - mv[j];
          s1[j] += du;
          s2[j] += du * dv;
        }
      }
      for (int64_t j = 0; j < c; ++j) {
        total1[j] += s1[j];
        total2[j] += s2[j];
      }
    }
#pragma omp barrier
#pragma omp for
    for (int64_t j = 0; j < 2 * c; ++j) {
      double sum = 0.0;
      for (int64_t k = 0; k < team; ++k) sum += partial[2 * c * k + j];
      out[j] = sum;
    }
  }
}

extern "C" void kernel(const float* u, const float* v, const float* mu, const float* mv, double* out,
                       int64_t n, int64_t c, int64_t threads) {
  if (u == v && mu == mv)
    sums<true>(u, v, mu, mv, out, n, c, threads);
  else
    sums<false>(u, v, mu, mv, out, n, c, threads);
}
