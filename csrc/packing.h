// Packed layouts: pack_lengths, pack, unpack, pad_packed, unpad (CPU memcpy over sequences; CUDA via kernels.cu).
//
// Internal header of agent_lightning._C: included once, by csrc/ops.cpp (the extension is a
// single translation unit because every file that includes torch/extension.h costs tens of
// seconds to compile).
#pragma once

#include <cstring>
#include <limits>
#include <tuple>

#include "common.h"

namespace al {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, int64_t> pack_lengths(const Tensor& lengths_in) {
  const char* op = "pack_lengths";
  TORCH_CHECK(lengths_in.dim() == 1, op, ": lengths must be 1-D [B], got shape ", lengths_in.sizes());
  TORCH_CHECK(at::isIntegralType(lengths_in.scalar_type(), /*includeBool=*/false), op,
              ": lengths must be an integer tensor, got ", lengths_in.scalar_type());
  const Tensor lengths = lengths_in.to(at::kLong).contiguous();
  const int64_t batch = lengths.numel();
  if (is_cuda(lengths)) {
#ifdef AL_WITH_CUDA
    c10::cuda::CUDAGuard guard(lengths.device());
    Tensor cu = at::zeros({batch + 1}, lengths.options().dtype(at::kLong));
    if (batch > 0) cu.narrow(0, 1, batch).copy_(at::cumsum(lengths, 0));
    const int64_t total = batch > 0 ? cu[batch].item<int64_t>() : 0;
    const int64_t max_len = batch > 0 ? lengths.max().item<int64_t>() : 0;
    TORCH_CHECK(batch == 0 || lengths.min().item<int64_t>() >= 0, op, ": lengths must be >= 0");
    TORCH_CHECK(total <= std::numeric_limits<int32_t>::max(), op, ": ", total, " tokens overflow int32 cu_seqlens");
    Tensor cu32 = cu.to(at::kInt);
    Tensor pos = at::empty({total}, lengths.options().dtype(at::kLong));
    Tensor seq = at::empty({total}, lengths.options().dtype(at::kInt));
    check_launch(al_cuda::fill_positions(cu32.data_ptr<int32_t>(), batch, pos.data_ptr<int64_t>(),
                                         seq.data_ptr<int32_t>(), current_stream(lengths)),
                 op);
    return {cu32, pos, seq, max_len};
#else
    no_cuda(op);
#endif
  }
  const int64_t* len = lengths.data_ptr<int64_t>();
  Tensor cu = at::empty({batch + 1}, lengths.options().dtype(at::kInt));
  int32_t* c = cu.data_ptr<int32_t>();
  int64_t total = 0, max_len = 0;
  c[0] = 0;
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(len[b] >= 0, op, ": lengths must be >= 0, got lengths[", b, "]=", len[b]);
    total += len[b];
    TORCH_CHECK(total <= std::numeric_limits<int32_t>::max(), op, ": ", total, " tokens overflow int32 cu_seqlens");
    c[b + 1] = static_cast<int32_t>(total);
    max_len = std::max(max_len, len[b]);
  }
  Tensor pos = at::empty({total}, lengths.options().dtype(at::kLong));
  Tensor seq = at::empty({total}, lengths.options().dtype(at::kInt));
  int64_t* p = pos.data_ptr<int64_t>();
  int32_t* s = seq.data_ptr<int32_t>();
  for_each_index(batch, total >= kParallelElems, [&](int64_t b) {
    for (int64_t t = c[b], i = 0; t < c[b + 1]; ++t, ++i) {
      p[t] = i;
      s[t] = static_cast<int32_t>(b);
    }
  });
  return {cu, pos, seq, max_len};
}

std::tuple<Tensor, Tensor> pack(const std::vector<Tensor>& seqs) {
  const char* op = "pack";
  TORCH_CHECK(!seqs.empty(), op, ": needs at least one sequence");
  const Tensor& first = seqs[0];
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Tensor& s = seqs[i];
    TORCH_CHECK(s.dim() >= 1, op, ": sequence ", i, " is a scalar; every sequence must be [L_i, ...]");
    TORCH_CHECK(s.scalar_type() == first.scalar_type() && s.device() == first.device() &&
                    s.sizes().slice(1) == first.sizes().slice(1),
                op, ": sequence ", i, " is ", s.scalar_type(), " ", s.sizes(), " on ", s.device(), ", but sequence 0 is ",
                first.scalar_type(), " ", first.sizes(), " on ", first.device(),
                "; trailing shape, dtype and device must match");
  }
  const int64_t batch = static_cast<int64_t>(seqs.size());
  Tensor cu = at::empty({batch + 1}, at::TensorOptions().dtype(at::kInt));
  int32_t* c = cu.data_ptr<int32_t>();
  int64_t total = 0;
  c[0] = 0;
  for (int64_t b = 0; b < batch; ++b) {
    total += seqs[b].size(0);
    TORCH_CHECK(total <= std::numeric_limits<int32_t>::max(), op, ": ", total, " tokens overflow int32 cu_seqlens");
    c[b + 1] = static_cast<int32_t>(total);
  }
  if (is_cuda(first)) {
    // Concatenation on the GPU is already one fused copy kernel in ATen.
    return {at::cat(seqs, 0), cu.to(first.device())};
  }
  std::vector<Tensor> contig(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) contig[i] = seqs[i].contiguous();
  std::vector<int64_t> shape = trailing_shape(first, 1);
  shape.insert(shape.begin(), total);
  Tensor flat = at::empty(shape, first.options());
  const int64_t row = row_bytes_of(first);
  char* dst = static_cast<char*>(flat.data_ptr());
  for_each_index(batch, total * row >= kParallelBytes, [&](int64_t b) {
    const int64_t n = (c[b + 1] - c[b]) * row;
    if (n > 0) std::memcpy(dst + c[b] * row, contig[b].data_ptr(), n);
  });
  return {flat, cu};
}

std::vector<Tensor> unpack(const Tensor& flat, const Tensor& cu_seqlens) {
  const char* op = "unpack";
  TORCH_CHECK(flat.dim() >= 1, op, ": flat must be [total, ...], got a scalar");
  const Tensor cu = checked_cu(cu_seqlens, flat.size(0), op);
  const std::vector<int64_t> off = host_offsets(cu);
  TORCH_CHECK(off.back() == flat.size(0), op, ": cu_seqlens[-1]=", off.back(), " but flat has ", flat.size(0), " rows");
  std::vector<int64_t> sizes(off.size() - 1);
  for (size_t b = 0; b + 1 < off.size(); ++b) sizes[b] = off[b + 1] - off[b];
  // One split_with_sizes dispatch (views); a narrow() per sequence costs a full dispatch each.
  return flat.split_with_sizes(sizes, 0);
}

Tensor pad_packed(const Tensor& flat_in, const Tensor& cu_seqlens, double pad_value) {
  const char* op = "pad_packed";
  TORCH_CHECK(flat_in.dim() >= 1, op, ": flat must be [total, ...], got a scalar");
  same_device(flat_in, cu_seqlens, op, "flat", "cu_seqlens");
  const Tensor flat = flat_in.contiguous();
  const Tensor cu = checked_cu(cu_seqlens, flat.size(0), op);
  const int64_t batch = cu.numel() - 1;
  const std::vector<int64_t> off = host_offsets(cu);
  TORCH_CHECK(off.back() == flat.size(0), op, ": cu_seqlens[-1]=", off.back(), " but flat has ", flat.size(0), " rows");
  int64_t max_len = 0;
  for (int64_t b = 0; b < batch; ++b) max_len = std::max(max_len, off[b + 1] - off[b]);
  std::vector<int64_t> trailing = trailing_shape(flat, 1);
  std::vector<int64_t> shape = trailing;
  shape.insert(shape.begin(), {batch, max_len});
  const Tensor pad_row = at::full(trailing, pad_value, flat.options()).contiguous();
  Tensor out = at::empty(shape, flat.options());
  const int64_t row = row_bytes_of(flat);
  if (is_cuda(flat)) {
#ifdef AL_WITH_CUDA
    c10::cuda::CUDAGuard guard(flat.device());
    check_launch(al_cuda::pad_rows(flat.data_ptr(), cu.data_ptr<int32_t>(), batch, max_len, row, pad_row.data_ptr(),
                                   out.data_ptr(), current_stream(flat)),
                 op);
    return out;
#else
    no_cuda(op);
#endif
  }
  const char* src = static_cast<const char*>(flat.data_ptr());
  const char* pad = static_cast<const char*>(pad_row.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const bool zero_pad = pad_value == 0.0;  // 0 of every dtype is all-zero bytes
  for_each_index(batch, batch * max_len * row >= kParallelBytes, [&](int64_t b) {
    const int64_t len = off[b + 1] - off[b];
    char* d = dst + b * max_len * row;
    if (len > 0) std::memcpy(d, src + off[b] * row, len * row);
    if (zero_pad) {
      if (max_len > len) std::memset(d + len * row, 0, (max_len - len) * row);
    } else {
      for (int64_t t = len; t < max_len; ++t) std::memcpy(d + t * row, pad, row);
    }
  });
  return out;
}

Tensor unpad(const Tensor& padded_in, const Tensor& cu_seqlens) {
  const char* op = "unpad";
  TORCH_CHECK(padded_in.dim() >= 2, op, ": padded must be [B, T, ...], got shape ", padded_in.sizes());
  same_device(padded_in, cu_seqlens, op, "padded", "cu_seqlens");
  const Tensor padded = padded_in.contiguous();
  const Tensor cu = checked_cu(cu_seqlens, -1, op);
  const int64_t batch = padded.size(0), t_len = padded.size(1);
  TORCH_CHECK(cu.numel() == batch + 1, op, ": cu_seqlens has ", cu.numel(), " entries but padded has B=", batch,
              " rows (need B+1)");
  const std::vector<int64_t> off = host_offsets(cu);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(off[b + 1] - off[b] <= t_len, op, ": sequence ", b, " has length ", off[b + 1] - off[b],
                " > padded length T=", t_len);
  }
  std::vector<int64_t> shape = trailing_shape(padded, 2);
  shape.insert(shape.begin(), off.back());
  Tensor flat = at::empty(shape, padded.options());
  int64_t row = padded.element_size();
  for (int64_t d = 2; d < padded.dim(); ++d) row *= padded.size(d);
  if (is_cuda(padded)) {
#ifdef AL_WITH_CUDA
    c10::cuda::CUDAGuard guard(padded.device());
    check_launch(al_cuda::unpad_rows(padded.data_ptr(), cu.data_ptr<int32_t>(), batch, t_len, row, flat.data_ptr(),
                                     current_stream(padded)),
                 op);
    return flat;
#else
    no_cuda(op);
#endif
  }
  const char* src = static_cast<const char*>(padded.data_ptr());
  char* dst = static_cast<char*>(flat.data_ptr());
  for_each_index(batch, off.back() * row >= kParallelBytes, [&](int64_t b) {
    const int64_t n = (off[b + 1] - off[b]) * row;
    if (n > 0) std::memcpy(dst + off[b] * row, src + b * t_len * row, n);
  });
  return flat;
}

}  // namespace al
