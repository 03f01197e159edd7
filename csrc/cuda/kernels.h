// Host launchers of the CUDA kernels in kernels.cu.
//
// Plain C++ / CUDA runtime only (raw device pointers + lengths), no torch headers, so the
// .cu file compiles standalone with `nvcc -c -arch=sm_90 csrc/cuda/kernels.cu`.
// Every launcher enqueues on `stream` and returns the launch status (cudaGetLastError).
// All pointers are device pointers; cu_seqlens is int32 [B+1] with cu_seqlens[0] = 0.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace al_cuda {

// position_ids[t] = t - cu_seqlens[b], seq_ids[t] = b for every token t of sequence b.
cudaError_t fill_positions(const int32_t* cu_seqlens, int64_t batch, int64_t* position_ids, int32_t* seq_ids,
                           cudaStream_t stream);

// Copy packed rows into a right-padded [B, max_len, row_bytes] buffer; positions past a
// sequence's end receive a copy of `pad_row` (row_bytes bytes, device memory).
cudaError_t pad_rows(const void* flat, const int32_t* cu_seqlens, int64_t batch, int64_t max_len, int64_t row_bytes,
                     const void* pad_row, void* out, cudaStream_t stream);

// Inverse of pad_rows: gather the first L_b rows of every padded sequence (padded_len rows each).
cudaError_t unpad_rows(const void* padded, const int32_t* cu_seqlens, int64_t batch, int64_t padded_len,
                       int64_t row_bytes, void* flat, cudaStream_t stream);

// sums[b] = sum of values over sequence b (only where mask != 0 when mask is not null);
// counts[b] = number of summed tokens (may be null). When `mean` is true, sums[b] is divided
// by counts (0 for a segment with no token). With values == nullptr and sums == nullptr only
// the counts are computed.
cudaError_t segment_reduce_f32(const float* values, const bool* mask, const int32_t* cu_seqlens, int64_t batch,
                               bool mean, float* sums, int64_t* counts, cudaStream_t stream);
cudaError_t segment_reduce_f64(const double* values, const bool* mask, const int32_t* cu_seqlens, int64_t batch,
                               bool mean, double* sums, int64_t* counts, cudaStream_t stream);

// Packed GAE, one thread per sequence; semantics as agent_lightning._C.gae_packed.
cudaError_t gae_packed(const float* rewards, const float* values, const bool* mask, const int32_t* cu_seqlens,
                       int64_t batch, float gamma, float lam, float* advantages, float* returns,
                       cudaStream_t stream);

}  // namespace al_cuda
