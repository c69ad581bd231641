// Host-compiler shim for dcn's CUDA kernels (tests only).
//
// Force-included (g++ -include cuda_shim.h) before a .cu file of src/dcn/ops/cuda, it provides just
// enough of CUDA's language extensions for the kernel source to compile as plain C++, and a launcher
// that runs a kernel serially over every (block, thread) of a grid, in CUDA's (x fastest) order.
// The kernels are written so that this is a faithful execution: threads are independent (no shared
// memory, barriers or warp intrinsics) and cross-thread accumulation goes through atomicAdd, which is
// an ordinary read-add-write when threads run one after another.
#pragma once

#include <math.h>

#include <cstddef>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};
typedef dim3 uint3;

// The built-in index variables: set by dcn_shim::launch for each emulated thread.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

inline float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}

inline double atomicAdd(double* address, double value) {
  const double old = *address;
  *address = old + value;
  return old;
}

namespace dcn_shim {

// Unpack cuLaunchKernel-style parameters: params[i] points at the value of the kernel's i-th argument.
template <typename... Args, std::size_t... I>
inline void call(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
  kernel(*static_cast<Args*>(params[I])...);
}

// Run `kernel` for every thread of the grid, serially.
template <typename... Args>
inline void launch(void (*kernel)(Args...), const unsigned int* grid, const unsigned int* block,
                   void** params) {
  gridDim.x = grid[0];
  gridDim.y = grid[1];
  gridDim.z = grid[2];
  blockDim.x = block[0];
  blockDim.y = block[1];
  blockDim.z = block[2];
  for (unsigned int bz = 0; bz < grid[2]; ++bz)
    for (unsigned int by = 0; by < grid[1]; ++by)
      for (unsigned int bx = 0; bx < grid[0]; ++bx)
        for (unsigned int tz = 0; tz < block[2]; ++tz)
          for (unsigned int ty = 0; ty < block[1]; ++ty)
            for (unsigned int tx = 0; tx < block[0]; ++tx) {
              blockIdx.x = bx;
              blockIdx.y = by;
              blockIdx.z = bz;
              threadIdx.x = tx;
              threadIdx.y = ty;
              threadIdx.z = tz;
              call(kernel, params, std::index_sequence_for<Args...>{});
            }
}

}  // namespace dcn_shim
