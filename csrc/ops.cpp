// agent_lightning._C — packed-sequence rollout buffers, segment reductions and packed GAE.
//
// One translation unit on purpose: every file that includes torch/extension.h costs tens of
// seconds to compile. CPU kernels are here (OpenMP over sequences); CUDA kernels live in
// cuda/kernels.cu behind plain-pointer launchers and are called when the extension was built
// with AL_WITH_CUDA. Python references: agent_lightning/ops/packing.py and segments.py.
//
// Conventions: cu_seqlens is int32 [B+1] (int64 accepted and converted), cu_seqlens[0] == 0,
// non-decreasing, cu_seqlens[B] == total tokens. Errors name the op and the argument.
#include <torch/extension.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef AL_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/kernels.h"
#endif

namespace {

using at::Tensor;

// ---------------------------------------------------------------- helpers

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

// ---------------------------------------------------------------- layouts

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
  std::vector<Tensor> out;
  out.reserve(off.size() - 1);
  for (size_t b = 0; b + 1 < off.size(); ++b) out.push_back(flat.narrow(0, off[b], off[b + 1] - off[b]));
  return out;
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

// ---------------------------------------------------------------- micro-batching

// Least-loaded placement into k bins of `budget` tokens; empty result when something does not fit.
std::vector<std::vector<int64_t>> least_loaded(const std::vector<int64_t>& order, const int64_t* len, int64_t budget,
                                               int64_t k) {
  std::vector<int64_t> loads(k, 0);
  std::vector<std::vector<int64_t>> bins(k);
  for (int64_t i : order) {
    int64_t best = -1;
    for (int64_t b = 0; b < k; ++b) {
      if (loads[b] + len[i] <= budget && (best < 0 || loads[b] < loads[best])) best = b;
    }
    if (best < 0) return {};
    loads[best] += len[i];
    bins[best].push_back(i);
  }
  return bins;
}

std::vector<std::vector<int64_t>> first_fit_decreasing(const std::vector<int64_t>& order, const int64_t* len,
                                                       int64_t budget) {
  std::vector<int64_t> loads;
  std::vector<std::vector<int64_t>> bins;
  for (int64_t i : order) {
    bool placed = false;
    for (size_t b = 0; b < bins.size(); ++b) {
      if (loads[b] + len[i] <= budget) {
        loads[b] += len[i];
        bins[b].push_back(i);
        placed = true;
        break;
      }
    }
    if (!placed) {
      loads.push_back(len[i]);
      bins.push_back({i});
    }
  }
  return bins;
}

// Same algorithm, tie-breaking and output order as partition_microbatches_ref in ops/packing.py.
std::vector<std::vector<int64_t>> partition_microbatches(const Tensor& lengths_in, int64_t budget) {
  const char* op = "partition_microbatches";
  TORCH_CHECK(budget >= 1, op, ": token_budget must be >= 1, got ", budget);
  TORCH_CHECK(lengths_in.dim() == 1, op, ": lengths must be 1-D [B], got shape ", lengths_in.sizes());
  const Tensor lengths = lengths_in.to(at::kCPU, at::kLong).contiguous();
  const int64_t* len = lengths.data_ptr<int64_t>();
  const int64_t n = lengths.numel();
  std::vector<std::vector<int64_t>> result;
  std::vector<int64_t> fitting;
  int64_t fitting_tokens = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(len[i] >= 0, op, ": lengths must be >= 0, got lengths[", i, "]=", len[i]);
    if (len[i] > budget) {
      result.push_back({i});
    } else {
      fitting.push_back(i);
      fitting_tokens += len[i];
    }
  }
  std::sort(fitting.begin(), fitting.end(),
            [len](int64_t a, int64_t b) { return len[a] != len[b] ? len[a] > len[b] : a < b; });
  if (!fitting.empty()) {
    std::vector<std::vector<int64_t>> ffd = first_fit_decreasing(fitting, len, budget);
    std::vector<std::vector<int64_t>> bins;
    const int64_t lower = std::max<int64_t>(1, (fitting_tokens + budget - 1) / budget);
    for (int64_t k = lower; k <= static_cast<int64_t>(ffd.size()); ++k) {
      bins = least_loaded(fitting, len, budget, k);
      if (!bins.empty()) break;
    }
    if (bins.empty()) bins = std::move(ffd);
    for (auto& b : bins) {
      if (b.empty()) continue;
      std::sort(b.begin(), b.end());
      result.push_back(std::move(b));
    }
  }
  std::sort(result.begin(), result.end(),
            [](const std::vector<int64_t>& a, const std::vector<int64_t>& b) { return a[0] < b[0]; });
  return result;
}

// ---------------------------------------------------------------- segment reductions

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

// ---------------------------------------------------------------- packed GAE

std::tuple<Tensor, Tensor> gae_packed(const Tensor& rewards_in, const Tensor& values_in, const Tensor& mask_in,
                                      const Tensor& cu_seqlens, double gamma, double lam) {
  const char* op = "gae_packed";
  TORCH_CHECK(rewards_in.dim() == 1 && values_in.dim() == 1 && mask_in.dim() == 1, op,
              ": rewards, values and mask must be 1-D [T], got ", rewards_in.sizes(), ", ", values_in.sizes(), ", ",
              mask_in.sizes());
  const int64_t total = rewards_in.size(0);
  TORCH_CHECK(values_in.size(0) == total && mask_in.size(0) == total, op, ": rewards has ", total,
              " tokens but values has ", values_in.size(0), " and mask ", mask_in.size(0));
  TORCH_CHECK(rewards_in.scalar_type() == at::kFloat && values_in.scalar_type() == at::kFloat, op,
              ": rewards and values must be float32, got ", rewards_in.scalar_type(), " and ",
              values_in.scalar_type());
  TORCH_CHECK(mask_in.scalar_type() == at::kBool, op, ": mask must be bool, got ", mask_in.scalar_type());
  same_device(rewards_in, values_in, op, "rewards", "values");
  same_device(rewards_in, mask_in, op, "rewards", "mask");
  same_device(rewards_in, cu_seqlens, op, "rewards", "cu_seqlens");
  const Tensor rewards = rewards_in.contiguous(), values = values_in.contiguous(), mask = mask_in.contiguous();
  const Tensor cu = checked_cu(cu_seqlens, total, op);
  const int64_t batch = cu.numel() - 1;
  Tensor adv = at::empty({total}, rewards.options());
  Tensor ret = at::empty({total}, rewards.options());
  // gamma * lam is formed in double and rounded once, as torch does for `tensor * (gamma * lam)`.
  const float g = static_cast<float>(gamma), gl = static_cast<float>(gamma * lam);
  if (is_cuda(rewards)) {
#ifdef AL_WITH_CUDA
    c10::cuda::CUDAGuard guard(rewards.device());
    check_launch(al_cuda::gae_packed(rewards.data_ptr<float>(), values.data_ptr<float>(), mask.data_ptr<bool>(),
                                     cu.data_ptr<int32_t>(), batch, g, static_cast<float>(lam), adv.data_ptr<float>(),
                                     ret.data_ptr<float>(), current_stream(rewards)),
                 op);
    return {adv, ret};
#else
    no_cuda(op);
#endif
  }
  const float* r = rewards.data_ptr<float>();
  const float* v = values.data_ptr<float>();
  const bool* m = mask.data_ptr<bool>();
  const int32_t* c = cu.data_ptr<int32_t>();
  float* a = adv.data_ptr<float>();
  float* R = ret.data_ptr<float>();
  for_each_index(batch, total >= kParallelElems, [&](int64_t b) {
    float next_value = 0.f, next_adv = 0.f;
    for (int64_t t = static_cast<int64_t>(c[b + 1]) - 1; t >= c[b]; --t) {
      if (!m[t]) {
        a[t] = 0.f;
        R[t] = 0.f;
        continue;
      }
      const float delta = r[t] + g * next_value - v[t];
      const float at_ = delta + gl * next_adv;
      a[t] = at_;
      R[t] = at_ + v[t];
      next_value = v[t];
      next_adv = at_;
    }
  });
  return {adv, ret};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "agent_lightning._C: packed-sequence buffers, segment reductions and packed GAE (C++/OpenMP, CUDA)";
#ifdef AL_WITH_CUDA
  m.attr("cuda_enabled") = true;
#else
  m.attr("cuda_enabled") = false;
#endif
#ifdef _OPENMP
  m.attr("openmp_enabled") = true;
#else
  m.attr("openmp_enabled") = false;
#endif
  m.def("pack_lengths", &pack_lengths, "(cu_seqlens int32 [B+1], position_ids int64 [T], seq_ids int32 [T], max_seqlen)",
        py::arg("lengths"));
  m.def("pack", &pack, "Concatenate [L_i, ...] sequences -> (flat [T, ...], cu_seqlens int32 [B+1])", py::arg("seqs"));
  m.def("unpack", &unpack, "Views of flat split at cu_seqlens", py::arg("flat"), py::arg("cu_seqlens"));
  m.def("pad_packed", &pad_packed, "flat [T, ...] -> right-padded [B, Tmax, ...]", py::arg("flat"),
        py::arg("cu_seqlens"), py::arg("pad_value") = 0.0);
  m.def("unpad", &unpad, "padded [B, T, ...] -> flat [sum L_b, ...]", py::arg("padded"), py::arg("cu_seqlens"));
  m.def("partition_microbatches", &partition_microbatches, "Balanced micro-batches of sequence indices",
        py::arg("lengths"), py::arg("token_budget"));
  m.def("segment_sum", &segment_sum, "Per-sequence sum of values [T] -> [B]", py::arg("values"),
        py::arg("cu_seqlens"), py::arg("mask") = py::none());
  m.def("segment_mean", &segment_mean, "Per-sequence masked mean -> (mean [B], counts int64 [B])", py::arg("values"),
        py::arg("cu_seqlens"), py::arg("mask") = py::none());
  m.def("segment_count", &segment_count, "Per-sequence count of true mask entries -> int64 [B]", py::arg("mask"),
        py::arg("cu_seqlens"));
  m.def("gae_packed", &gae_packed, "Packed GAE -> (advantages f32 [T], returns f32 [T])", py::arg("rewards"),
        py::arg("values"), py::arg("mask"), py::arg("cu_seqlens"), py::arg("gamma"), py::arg("lam"));
}
