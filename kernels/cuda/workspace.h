// kernels/cuda/workspace.h: how much device scratch (ops::Cuda::workspace) each CUDA op that needs some
// wants. The caller allocates the largest of these once; each op checks its size with STRATA_CHECK.
#pragma once

#include <cstddef>

namespace strata::cuda {

// embedding_backward: the sorted (token, position) pairs and the sort's own scratch, for B*T tokens.
size_t embedding_backward_workspace_bytes(int B, int T);

// rmsnorm_backward and layernorm_backward: the per-row-block fp32 partial sums of dweight (and dbias) for N
// rows of width C.
size_t norm_backward_workspace_bytes(int N, int C);

// grad_norm_squared: one fp32 partial sum per block of its fixed grid (independent of the tensors).
size_t grad_norm_workspace_bytes();

// flash_attention_backward with ops::Cuda::deterministic == false: an fp32 dQ accumulator (B,T,NH,HS) that the
// atomic path adds into (none is needed when deterministic).
size_t flash_attention_backward_workspace_bytes(int B, int T, int NH, int HS);

// flash_attention_forward/backward with ops::Cuda::cudnn_attention: the larger of cuDNN's forward and
// backward plans' workspaces (kernels/cuda/cudnn_sdpa.h) on the current device. Builds and caches the plans;
// a strata::Error when cuDNN cannot be loaded or has no engine for the shape.
size_t cudnn_attention_workspace_bytes(int B, int T, int NH, int KVH, int HS, bool deterministic);

}  // namespace strata::cuda
