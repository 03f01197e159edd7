// Per-sequence sum / mean / count over a packed stream (loss aggregation).
//
// Internal header of agent_lightning._C: included once, by csrc/ops.cpp (the extension is a
// single translation unit because every file that includes torch/extension.h costs tens of
// seconds to compile).
#pragma once

#include <ATen/OpMathType.h>

#include <tuple>

#include "common.h"

namespace al {

using at::Tensor;

struct SegmentInputs {
  Tensor values;  // contiguous 1-D, or undefined for counts only
  Tensor mask;    // contiguous bool 1-D, or undefined
  Tensor cu;      // int32 [B+1]
};

SegmentInputs segment_inputs(const Tensor* values, const c10::optional<Tensor>& mask, const Tensor& cu_seqlens,
                             const char* op) {
  SegmentInputs in;
  int64_t total = -1;
  if (values != nullptr) {
    TORCH_CHECK(values->dim() == 1, op, ": values must be 1-D [total], got shape ", values->sizes());
    TORCH_CHECK(at::isFloatingType(values->scalar_type()), op, ": values must be floating point, got ",
                values->scalar_type());
    same_device(*values, cu_seqlens, op, "values", "cu_seqlens");
    in.values = values->contiguous();
    total = values->size(0);
  }
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->dim() == 1, op, ": mask must be 1-D [total], got shape ", mask->sizes());
    TORCH_CHECK(mask->scalar_type() == at::kBool, op, ": mask must be bool, got ", mask->scalar_type());
    same_device(*mask, cu_seqlens, op, "mask", "cu_seqlens");
    TORCH_CHECK(total < 0 || mask->size(0) == total, op, ": mask has ", mask->size(0), " tokens but values has ",
                total);
    in.mask = mask->contiguous();
    total = mask->size(0);
  }
  in.cu = checked_cu(cu_seqlens, total, op);
  return in;
}

// Returns (reduced [B] in values' dtype, counts int64 [B]).
std::tuple<Tensor, Tensor> segment_reduce(const SegmentInputs& in, bool mean, const char* op) {
  const int64_t batch = in.cu.numel() - 1;
  const bool has_values = in.values.defined();
  const bool has_mask = in.mask.defined();
  const at::TensorOptions opts = in.cu.options();
  Tensor counts = at::empty({batch}, opts.dtype(at::kLong));
  Tensor out = has_values ? at::empty({batch}, in.values.options()) : Tensor();
  if (is_cuda(in.cu)) {
#ifdef AL_WITH_CUDA
    c10::cuda::CUDAGuard guard(in.cu.device());
    cudaStream_t stream = current_stream(in.cu);
    const bool* m = has_mask ? in.mask.data_ptr<bool>() : nullptr;
    if (!has_values) {
      check_launch(al_cuda::segment_reduce_f32(nullptr, m, in.cu.data_ptr<int32_t>(), batch, false, nullptr,
                                               counts.data_ptr<int64_t>(), stream),
                   op);
    } else if (in.values.scalar_type() == at::kDouble) {
      check_launch(al_cuda::segment_reduce_f64(in.values.data_ptr<double>(), m, in.cu.data_ptr<int32_t>(), batch,
                                               mean, out.data_ptr<double>(), counts.data_ptr<int64_t>(), stream),
                   op);
    } else {
      // float32 directly; half / bfloat16 accumulate in float32 and are cast back.
      Tensor v32 = in.values.to(at::kFloat);
      Tensor o32 = in.values.scalar_type() == at::kFloat ? out : at::empty({batch}, opts.dtype(at::kFloat));
      check_launch(al_cuda::segment_reduce_f32(v32.data_ptr<float>(), m, in.cu.data_ptr<int32_t>(), batch, mean,
                                               o32.data_ptr<float>(), counts.data_ptr<int64_t>(), stream),
                   op);
      if (!o32.is_same(out)) out.copy_(o32);
    }
    return {out, counts};
#else
    no_cuda(op);
#endif
  }
  const int32_t* cu = in.cu.data_ptr<int32_t>();
  const bool* m = has_mask ? in.mask.data_ptr<bool>() : nullptr;
  int64_t* cnt = counts.data_ptr<int64_t>();
  const int64_t total = cu[batch];
  if (!has_values) {
    for_each_index(batch, total >= kParallelElems, [&](int64_t b) {
      int64_t c = 0;
      for (int64_t t = cu[b]; t < cu[b + 1]; ++t) c += (m == nullptr || m[t]) ? 1 : 0;
      cnt[b] = c;
    });
    return {out, counts};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.values.scalar_type(), "segment_reduce", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* v = in.values.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for_each_index(batch, total >= kParallelElems, [&](int64_t b) {
      acc_t acc = 0;
      int64_t c = 0;
      for (int64_t t = cu[b]; t < cu[b + 1]; ++t) {
        if (m == nullptr || m[t]) {
          acc += static_cast<acc_t>(v[t]);
          ++c;
        }
      }
      if (mean) acc = c > 0 ? acc / static_cast<acc_t>(c) : acc_t(0);
      o[b] = static_cast<scalar_t>(acc);
      cnt[b] = c;
    });
  });
  return {out, counts};
}

Tensor segment_sum(const Tensor& values, const Tensor& cu_seqlens, const c10::optional<Tensor>& mask) {
  const char* op = "segment_sum";
  return std::get<0>(segment_reduce(segment_inputs(&values, mask, cu_seqlens, op), false, op));
}

std::tuple<Tensor, Tensor> segment_mean(const Tensor& values, const Tensor& cu_seqlens,
                                        const c10::optional<Tensor>& mask) {
  const char* op = "segment_mean";
  return segment_reduce(segment_inputs(&values, mask, cu_seqlens, op), true, op);
}

Tensor segment_count(const Tensor& mask, const Tensor& cu_seqlens) {
  const char* op = "segment_count";
  return std::get<1>(segment_reduce(segment_inputs(nullptr, mask, cu_seqlens, op), false, op));
}

}  // namespace al
