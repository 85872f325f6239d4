// A vector of 16 floats and its unaligned load and store.
//
// GCC / clang vector extensions: the compiler maps a `Lanes` to the
// machine's registers (one with AVX-512, two with AVX2). Kernels that sum
// in lanes keep one accumulator per lane and add the lanes in a fixed
// order at the end, so their results do not depend on the ISA.
#pragma once

#include <cstring>

namespace fairjax_native {

constexpr int kLanes = 16;

typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

inline Lanes Load(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(Lanes));
  return v;
}

inline void Store(float* p, Lanes v) { std::memcpy(p, &v, sizeof(Lanes)); }

}  // namespace fairjax_native
