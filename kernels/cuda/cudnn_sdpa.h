// kernels/cuda/cudnn_sdpa.h: causal grouped-query attention through cuDNN 9's fused flash-attention engines,
// the comparison (and, where it measures faster, the alternative) to flash_attention.cu.
//
// The graphs are those cuDNN's runtime-fusion engines recognise as SDPA, written with the backend API (no
// cudnn-frontend): forward Q K^T -> scale -> causal mask -> softmax (its log-sum-exp written out) -> P V;
// backward the same scores recomputed from the saved log-sum-exp, dV = P^T dO, dS = P (dO V^T - rowsum(dO O))
// scale, dQ = dS K, dK = dS^T Q. Tensors keep Strata's layouts through strides: qkv (B,T,(NH+2*KVH)*HS), out
// (B,T,NH*HS), lse and delta (B,NH,T) fp32, the same arguments and meanings as ops::flash_attention_*.
//
// libcudnn.so.9 is opened at run time (dlopen), so Strata builds and runs without it; only an attention that
// asks for cuDNN fails, with the loader's reason. Plans are built once per shape and cached. They can also be
// built without a GPU from a serialised device description (cuDNN >= 9.8), which is how the graphs are tested
// on machines with none: cuDNN's heuristics must offer an engine for each graph and its plan must finalise.
#pragma once

#include <cstdint>
#include <string>

namespace strata::cuda::cudnn {

// The loaded library: ok, or why not (library not found, too old, a symbol missing).
struct Library {
  bool ok = false;
  std::string error;
  int64_t version = 0;  // cudnnGetVersion(), e.g. 91900
};
const Library& library();

struct SdpaShape {
  int B = 0, T = 0, NH = 0, KVH = 0, HS = 0;
};

enum class Direction { kForward, kBackward };

// The backward comes in two graphs. require_deterministic: dQ written directly, which cuDNN's engines serve
// deterministically by keeping dP for the whole sequence in the workspace (~B*NH*T*T*2 bytes). Otherwise dQ
// goes through an fp32 accumulator (B*NH*T*HS*4 bytes, placed after the plan's own workspace) that the
// engines fill with atomics: less memory, bits that may differ from run to run. The forward is deterministic.
//
// One planned graph: the engine cuDNN chose (the first of its heuristic's list that finalises and, when
// asked, is deterministic), the workspace it needs and how many configurations the heuristic offered.
struct PlanInfo {
  int64_t engine = -1;          // CUDNN_ATTR_ENGINE_GLOBAL_INDEX
  int64_t workspace_bytes = 0;  // the plan's workspace (+ the dQ accumulator)
  bool deterministic = false;   // as above, and no CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC on the engine
  int candidates = 0;           // engine configurations the heuristic returned (support checks passed)
  int rejected = 0;  // of those, skipped (nondeterministic when determinism was asked) or not finalising
};

// Checks a graph without a device, for the GPU described by device_json (a
// CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR serialisation): cuDNN's heuristic must return a configuration whose
// engine passes its support checks. No plan is finalised (that compiles and loads kernels, which needs a
// driver); the heuristic itself needs libcuda.so.1 loadable (the toolkit's stub is enough). Throws
// strata::Error naming the graph and cuDNN's reason when there is no engine.
PlanInfo plan_deviceless(Direction, const SdpaShape&, const std::string& device_json,
                         bool require_deterministic);

// On the current device (a cuDNN handle per thread, plans cached by shape and direction). workspace_bytes of
// device memory at `workspace` must cover PlanInfo::workspace_bytes of the plan (plan() returns it first).
PlanInfo plan(Direction, const SdpaShape&, bool require_deterministic);
// out (B,T,NH*HS), lse (B,NH,T) fp32 = log sum_s<=t exp(q.k / sqrt(HS)); qkv bf16 as above.
void forward(void* stream, void* out, float* lse, const void* qkv, const SdpaShape&,
             bool require_deterministic, void* workspace, int64_t workspace_bytes);
// dqkv `=` (every part written); delta (B,NH,T) fp32 scratch (cuDNN's rowsum(dO O)).
void backward(void* stream, void* dqkv, float* delta, const void* dout, const void* out, const void* qkv,
              const float* lse, const SdpaShape&, bool require_deterministic, void* workspace,
              int64_t workspace_bytes);

}  // namespace strata::cuda::cudnn
