// agent_lightning._C — packed-sequence rollout buffers, segment reductions and packed GAE.
//
// The whole extension is this one translation unit (the headers below are its parts): every
// file that includes torch/extension.h costs tens of seconds to compile. CPU kernels run
// OpenMP over sequences; CUDA kernels live in cuda/kernels.cu behind plain-pointer launchers
// and are called when the extension was built with AL_WITH_CUDA. Python references:
// agent_lightning/ops/packing.py and segments.py; types: agent_lightning/_C.pyi.
//
// Conventions: cu_seqlens is int32 [B+1] (int64 accepted and converted), cu_seqlens[0] == 0,
// non-decreasing, cu_seqlens[B] == total tokens. Errors name the op and the argument.
#include <torch/extension.h>

#include "common.h"
#include "gae.h"
#include "packing.h"
#include "partition.h"
#include "segments.h"

using namespace al;
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
