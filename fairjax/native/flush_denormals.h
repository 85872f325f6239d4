// Denormal floats flushed to zero while a kernel runs, as in XLA's CPU code.
//
// XLA runs its CPU computations with flush-to-zero and denormals-are-zero
// set (tsl::port::ScopedFlushDenormal): a result below the smallest normal
// float becomes 0 and a denormal input reads as 0. A native kernel that
// stands in for jnp ops must do the same, or values near zero part from the
// jnp path's (e.g. Adam on rows decaying under L2: m ~ 1e-38 stays a
// denormal here and a zero there). The guard is per thread: take one in
// every thread that computes (run_tasks.h does for its participants).
#pragma once

#include <cstdint>

#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>

namespace fairjax_native {
class ScopedFlushDenormals {
 public:
  ScopedFlushDenormals() : saved_(_mm_getcsr()) {
    _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero);
  }
  ~ScopedFlushDenormals() { _mm_setcsr(saved_); }
  ScopedFlushDenormals(const ScopedFlushDenormals&) = delete;
  ScopedFlushDenormals& operator=(const ScopedFlushDenormals&) = delete;

 private:
  static constexpr unsigned int kFlushToZero = 0x8000;       // MXCSR bit 15
  static constexpr unsigned int kDenormalsAreZero = 0x0040;  // MXCSR bit 6
  unsigned int saved_;
};
}  // namespace fairjax_native

#elif defined(__aarch64__)

namespace fairjax_native {
class ScopedFlushDenormals {
 public:
  ScopedFlushDenormals() {
    asm volatile("mrs %0, fpcr" : "=r"(saved_));
    const uint64_t flush = saved_ | (uint64_t{1} << 24);  // FPCR.FZ
    asm volatile("msr fpcr, %0" : : "r"(flush));
  }
  ~ScopedFlushDenormals() { asm volatile("msr fpcr, %0" : : "r"(saved_)); }
  ScopedFlushDenormals(const ScopedFlushDenormals&) = delete;
  ScopedFlushDenormals& operator=(const ScopedFlushDenormals&) = delete;

 private:
  uint64_t saved_;
};
}  // namespace fairjax_native

#else
#error "fairjax native kernels: no flush-to-zero control for this CPU"
#endif
