"""Bytes per element of the tensor formats simmoe moves and stores."""

BF16_BYTES_PER_ELEMENT = 2.0
# Fine-grained FP8 (DeepSeek-V3 / DeepEP layout): one byte per element plus one FP32 scale per
# 128-element tile (deepseek-ai/DeepEP tests: fp8_factor = (1 + 4/128) / 2 of the BF16 size).
FP8_BYTES_PER_ELEMENT = 1.0 + 4.0 / 128.0
