"""The GPU-backed planner: Triton kernels (one program per problem) and torch ops, on CUDA tensors
(or CPU tensors under TRITON_INTERPRET=1). Imported only when a plan runs on a GPU."""
