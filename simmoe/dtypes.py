"""Bytes per element of the tensor formats simmoe moves and stores."""

BF16_BYTES_PER_ELEMENT = 2.0
# Fine-grained FP8 (DeepSeek-V3 / DeepEP layout): one byte per element plus one FP32 scale per
# 128-element tile (deepseek-ai/DeepEP tests: fp8_factor = (1 + 4/128) / 2 of the BF16 size).
FP8_BYTES_PER_ELEMENT = 1.0 + 4.0 / 128.0
# MXFP8 (OCP Microscaling spec v1.0): E4M3 elements with one E8M0 (1-byte) scale per block of 32
# along the reduction dimension. The same bytes per element as above, laid out differently.
MXFP8_BYTES_PER_ELEMENT = 1.0 + 1.0 / 32.0

# GEMM dtypes whose inputs are quantized to FP8 by a kernel of their own (simmoe.workload.builder).
FP8_GEMM_DTYPES = frozenset({"fp8", "mxfp8"})
# Tensor-core generations with MX block-scaled FP8 (hardware.yaml `architecture`).
MX_ARCHITECTURES = frozenset({"blackwell"})
