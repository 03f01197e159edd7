// Balanced micro-batch partition under a token budget (same algorithm and tie-breaking as ops/packing.py).
//
// Internal header of agent_lightning._C: included once, by csrc/ops.cpp (the extension is a
// single translation unit because every file that includes torch/extension.h costs tens of
// seconds to compile).
#pragma once

#include <algorithm>
#include <vector>

#include "common.h"

namespace al {

using at::Tensor;

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

}  // namespace al
