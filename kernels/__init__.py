"""Fused Triton kernels of X-CLIP and the "triton" backend that uses them (backend.triton_ops).

One file per kernel (reference function, @triton.jit kernel, launcher, torch.library op): frame_attention,
message_attention, layer_norm, quick_gelu, prompt_attention, and EVL's adjacent_attention. Nothing is
imported here, so importing the package needs neither triton nor a GPU.
"""
