"""The model: pure Flax NNX modules and arithmetic on their configs.

layers     dense and embedding layers with logical axis names, norms, MLP variants
positions  learned table, rotary embeddings (NeoX and GPT-J layouts, partial), ALiBi
kernels    how the model runs on a device (attention path, fused projections, activation placement):
           chosen outside, once, by for_device, and passed in as a value
attention  causal self-attention with dense, banded (GPT-3 local) and kernel paths, and its KV cache
gpt        the GPT stack (GPT, abstract_model, init_model), decoding over a KVCache and DecodeWeights
counting   parameter and FLOP counts from a ModelConfig
"""
