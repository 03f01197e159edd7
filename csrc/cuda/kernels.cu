// CUDA kernels of agent_lightning._C: packed layouts, pad / unpad, segment reductions, packed GAE.
//
// Written against the CUDA runtime only (raw pointers + lengths); the torch-facing launcher
// code lives in csrc/ops.cpp. Compile check: nvcc -c -arch=sm_90 csrc/cuda/kernels.cu
#include "kernels.h"

#include <cstdint>

namespace al_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxChunks = 1024;  // blocks per sequence along its tokens (grid.y)

__global__ void fill_positions_kernel(const int32_t* __restrict__ cu, int64_t* __restrict__ pos,
                                      int32_t* __restrict__ seq) {
  const int64_t b = blockIdx.x;
  const int64_t start = cu[b];
  const int64_t end = cu[b + 1];
  for (int64_t t = start + blockIdx.y * blockDim.x + threadIdx.x; t < end; t += (int64_t)blockDim.x * gridDim.y) {
    pos[t] = t - start;
    seq[t] = static_cast<int32_t>(b);
  }
}

// One (sequence, chunk) per block; words of type W (1, 4 or 16 bytes) copied with coalesced access.
template <typename W>
__global__ void pad_rows_kernel(const W* __restrict__ flat, const int32_t* __restrict__ cu, int64_t max_len,
                                int64_t row_words, const W* __restrict__ pad_row, W* __restrict__ out) {
  const int64_t b = blockIdx.x;
  const int64_t start = cu[b];
  const int64_t len = cu[b + 1] - start;
  const int64_t n = max_len * row_words;
  W* dst = out + b * n;
  for (int64_t i = blockIdx.y * blockDim.x + threadIdx.x; i < n; i += (int64_t)blockDim.x * gridDim.y) {
    const int64_t t = i / row_words;
    const int64_t w = i - t * row_words;
    dst[i] = t < len ? flat[(start + t) * row_words + w] : pad_row[w];
  }
}

template <typename W>
__global__ void unpad_rows_kernel(const W* __restrict__ padded, const int32_t* __restrict__ cu, int64_t padded_len,
                                  int64_t row_words, W* __restrict__ flat) {
  const int64_t b = blockIdx.x;
  const int64_t start = cu[b];
  const int64_t n = (cu[b + 1] - start) * row_words;
  const W* src = padded + b * padded_len * row_words;
  W* dst = flat + start * row_words;
  for (int64_t i = blockIdx.y * blockDim.x + threadIdx.x; i < n; i += (int64_t)blockDim.x * gridDim.y) {
    dst[i] = src[i];
  }
}

template <typename T>
__global__ void segment_reduce_kernel(const T* __restrict__ values, const bool* __restrict__ mask,
                                      const int32_t* __restrict__ cu, bool mean, T* __restrict__ sums,
                                      int64_t* __restrict__ counts) {
  __shared__ T s_sum[kThreads];
  __shared__ int64_t s_cnt[kThreads];
  const int64_t b = blockIdx.x;
  const int64_t start = cu[b];
  const int64_t end = cu[b + 1];
  T acc = T(0);
  int64_t cnt = 0;
  for (int64_t t = start + threadIdx.x; t < end; t += blockDim.x) {
    if (mask == nullptr || mask[t]) {
      if (values != nullptr) acc += values[t];
      ++cnt;
    }
  }
  s_sum[threadIdx.x] = acc;
  s_cnt[threadIdx.x] = cnt;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      s_sum[threadIdx.x] += s_sum[threadIdx.x + stride];
      s_cnt[threadIdx.x] += s_cnt[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const int64_t c = s_cnt[0];
    T total = s_sum[0];
    if (mean) total = c > 0 ? total / static_cast<T>(c) : T(0);
    if (sums != nullptr) sums[b] = total;
    if (counts != nullptr) counts[b] = c;
  }
}

// One thread per sequence, walking it backwards; masked-out positions are skipped but do not
// break the recursion (observation tokens between two policy turns).
__global__ void gae_packed_kernel(const float* __restrict__ rewards, const float* __restrict__ values,
                                  const bool* __restrict__ mask, const int32_t* __restrict__ cu, int64_t batch,
                                  float gamma, float lam, float* __restrict__ adv, float* __restrict__ ret) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const float gl = gamma * lam;
  float next_value = 0.f;
  float next_adv = 0.f;
  for (int64_t t = (int64_t)cu[b + 1] - 1; t >= (int64_t)cu[b]; --t) {
    if (!mask[t]) {
      adv[t] = 0.f;
      ret[t] = 0.f;
      continue;
    }
    const float v = values[t];
    const float delta = rewards[t] + gamma * next_value - v;
    const float a = delta + gl * next_adv;
    adv[t] = a;
    ret[t] = a + v;
    next_value = v;
    next_adv = a;
  }
}

inline dim3 seq_grid(int64_t batch, int64_t work_per_seq) {
  int64_t chunks = (work_per_seq + kThreads - 1) / kThreads;
  if (chunks < 1) chunks = 1;
  if (chunks > kMaxChunks) chunks = kMaxChunks;
  return dim3(static_cast<unsigned>(batch), static_cast<unsigned>(chunks));
}

inline bool aligned(const void* p, int64_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; }

}  // namespace

cudaError_t fill_positions(const int32_t* cu_seqlens, int64_t batch, int64_t* position_ids, int32_t* seq_ids,
                           cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  // Average work is unknown on the host; a few chunks per sequence keep long sequences parallel.
  fill_positions_kernel<<<dim3(static_cast<unsigned>(batch), 8), kThreads, 0, stream>>>(cu_seqlens, position_ids,
                                                                                        seq_ids);
  return cudaGetLastError();
}

cudaError_t pad_rows(const void* flat, const int32_t* cu_seqlens, int64_t batch, int64_t max_len, int64_t row_bytes,
                     const void* pad_row, void* out, cudaStream_t stream) {
  if (batch == 0 || max_len == 0 || row_bytes == 0) return cudaSuccess;
  if (row_bytes % 16 == 0 && aligned(flat, 16) && aligned(pad_row, 16) && aligned(out, 16)) {
    const int64_t words = row_bytes / 16;
    pad_rows_kernel<uint4><<<seq_grid(batch, max_len * words), kThreads, 0, stream>>>(
        static_cast<const uint4*>(flat), cu_seqlens, max_len, words, static_cast<const uint4*>(pad_row),
        static_cast<uint4*>(out));
  } else if (row_bytes % 4 == 0 && aligned(flat, 4) && aligned(pad_row, 4) && aligned(out, 4)) {
    const int64_t words = row_bytes / 4;
    pad_rows_kernel<uint32_t><<<seq_grid(batch, max_len * words), kThreads, 0, stream>>>(
        static_cast<const uint32_t*>(flat), cu_seqlens, max_len, words, static_cast<const uint32_t*>(pad_row),
        static_cast<uint32_t*>(out));
  } else {
    pad_rows_kernel<uint8_t><<<seq_grid(batch, max_len * row_bytes), kThreads, 0, stream>>>(
        static_cast<const uint8_t*>(flat), cu_seqlens, max_len, row_bytes, static_cast<const uint8_t*>(pad_row),
        static_cast<uint8_t*>(out));
  }
  return cudaGetLastError();
}

cudaError_t unpad_rows(const void* padded, const int32_t* cu_seqlens, int64_t batch, int64_t padded_len,
                       int64_t row_bytes, void* flat, cudaStream_t stream) {
  if (batch == 0 || padded_len == 0 || row_bytes == 0) return cudaSuccess;
  if (row_bytes % 16 == 0 && aligned(padded, 16) && aligned(flat, 16)) {
    const int64_t words = row_bytes / 16;
    unpad_rows_kernel<uint4><<<seq_grid(batch, padded_len * words), kThreads, 0, stream>>>(
        static_cast<const uint4*>(padded), cu_seqlens, padded_len, words, static_cast<uint4*>(flat));
  } else if (row_bytes % 4 == 0 && aligned(padded, 4) && aligned(flat, 4)) {
    const int64_t words = row_bytes / 4;
    unpad_rows_kernel<uint32_t><<<seq_grid(batch, padded_len * words), kThreads, 0, stream>>>(
        static_cast<const uint32_t*>(padded), cu_seqlens, padded_len, words, static_cast<uint32_t*>(flat));
  } else {
    unpad_rows_kernel<uint8_t><<<seq_grid(batch, padded_len * row_bytes), kThreads, 0, stream>>>(
        static_cast<const uint8_t*>(padded), cu_seqlens, padded_len, row_bytes, static_cast<uint8_t*>(flat));
  }
  return cudaGetLastError();
}

cudaError_t segment_reduce_f32(const float* values, const bool* mask, const int32_t* cu_seqlens, int64_t batch,
                               bool mean, float* sums, int64_t* counts, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  segment_reduce_kernel<float><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(values, mask, cu_seqlens, mean,
                                                                                     sums, counts);
  return cudaGetLastError();
}

cudaError_t segment_reduce_f64(const double* values, const bool* mask, const int32_t* cu_seqlens, int64_t batch,
                               bool mean, double* sums, int64_t* counts, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  segment_reduce_kernel<double><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(values, mask, cu_seqlens,
                                                                                       mean, sums, counts);
  return cudaGetLastError();
}

cudaError_t gae_packed(const float* rewards, const float* values, const bool* mask, const int32_t* cu_seqlens,
                       int64_t batch, float gamma, float lam, float* advantages, float* returns,
                       cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  constexpr int threads = 128;
  const unsigned blocks = static_cast<unsigned>((batch + threads - 1) / threads);
  gae_packed_kernel<<<blocks, threads, 0, stream>>>(rewards, values, mask, cu_seqlens, batch, gamma, lam, advantages,
                                                    returns);
  return cudaGetLastError();
}

}  // namespace al_cuda
