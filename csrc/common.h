// Shared helpers: OpenMP loop, argument checks, cu_seqlens validation, CUDA stream access.
//
// Internal header of agent_lightning._C: included once, by csrc/ops.cpp (the extension is a
// single translation unit because every file that includes torch/extension.h costs tens of
// seconds to compile).
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef AL_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/kernels.h"
#endif

namespace al {

using at::Tensor;

// Run f(i) for i in [0, n), in parallel over OpenMP threads when `parallel` (enough work) and
// OpenMP is available. f must not throw.
template <typename F>
void for_each_index(int64_t n, bool parallel, const F& f) {
#ifdef _OPENMP
  if (parallel && n > 1 && at::get_num_threads() > 1 && !omp_in_parallel()) {
    const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), n));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) f(i);
}

// Below this many bytes / tokens of work one thread wins: these ops are memory-bound and take
// well under a millisecond single-threaded, while a parallel region pays thread wake-up and, on
// a loaded machine, waits for a descheduled worker at its end barrier (measured: 0.4 ms on one
// thread vs 8 ms on two for 270k tokens on a shared 2-core box).
constexpr int64_t kParallelBytes = int64_t(8) << 20;
constexpr int64_t kParallelElems = int64_t(1) << 20;

bool is_cuda(const Tensor& t) { return t.device().is_cuda(); }

#ifdef AL_WITH_CUDA
cudaStream_t current_stream(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }
void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}
#endif

[[noreturn]] void no_cuda(const char* op) {
  TORCH_CHECK(false, op, ": got CUDA tensors but agent_lightning._C was built without CUDA kernels "
                         "(agent_lightning._C.cuda_enabled is False); use the torch path");
}

void same_device(const Tensor& a, const Tensor& b, const char* op, const char* name_a, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_a, " is on ", a.device(), " but ", name_b, " is on ",
              b.device());
}

// Validated int32 contiguous copy of cu_seqlens (on its own device). On CPU also checks the
// offsets; `total` < 0 skips the end check.
Tensor checked_cu(const Tensor& cu_seqlens, int64_t total, const char* op) {
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.numel() >= 1, op, ": cu_seqlens must be 1-D [B+1], got shape ",
              cu_seqlens.sizes());
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt || cu_seqlens.scalar_type() == at::kLong, op,
              ": cu_seqlens must be int32 (or int64), got ", cu_seqlens.scalar_type());
  Tensor cu = cu_seqlens.to(at::kInt).contiguous();
  if (!is_cuda(cu)) {
    const int32_t* p = cu.data_ptr<int32_t>();
    const int64_t n = cu.numel();
    TORCH_CHECK(p[0] == 0, op, ": cu_seqlens[0] must be 0, got ", p[0]);
    for (int64_t i = 1; i < n; ++i) {
      TORCH_CHECK(p[i] >= p[i - 1], op, ": cu_seqlens must be non-decreasing, but cu_seqlens[", i, "]=", p[i],
                  " < cu_seqlens[", i - 1, "]=", p[i - 1]);
    }
    if (total >= 0) {
      TORCH_CHECK(p[n - 1] == total, op, ": cu_seqlens[-1]=", p[n - 1], " but the packed tensor has ", total,
                  " rows");
    }
  }
  return cu;
}

// Host copy of the offsets (a device sync for CUDA tensors).
std::vector<int64_t> host_offsets(const Tensor& cu) {
  Tensor c = cu.to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

std::vector<int64_t> trailing_shape(const Tensor& t, int64_t from) {
  return std::vector<int64_t>(t.sizes().begin() + from, t.sizes().end());
}

int64_t row_bytes_of(const Tensor& t) {
  int64_t n = t.element_size();
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

}  // namespace al
