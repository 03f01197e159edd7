// Packed GAE: resets at every sequence boundary, skips masked (observation) tokens.
//
// Internal header of agent_lightning._C: included once, by csrc/ops.cpp (the extension is a
// single translation unit because every file that includes torch/extension.h costs tens of
// seconds to compile).
#pragma once

#include <tuple>

#include "common.h"

namespace al {

using at::Tensor;

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

}  // namespace al
