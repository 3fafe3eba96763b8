"""Packing is proven on the model, not assumed: tiny random models of several architectures that
transformers ships — those that mask by ``position_ids`` pass, those with their own masking are refused."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from chattune.errors import ConfigError
from chattune.model.packing_proof import prove_packing, require_exact_packing

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000)
ARCHS = {
    "llama": (True, lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**SMALL, num_key_value_heads=2))),
    "qwen3": (True, lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16))),
    "mistral": (True, lambda: tf.MistralForCausalLM(tf.MistralConfig(**SMALL, num_key_value_heads=2))),
    "gemma3": (True, lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**SMALL, num_key_value_heads=2, head_dim=16))),
    "gpt_neox": (True, lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**SMALL))),
    "opt": (False, lambda: tf.OPTForCausalLM(tf.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                                          num_attention_heads=4, vocab_size=1000,
                                                          word_embed_proj_dim=64))),
    "bloom": (False, lambda: tf.BloomForCausalLM(tf.BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=1000))),
    "falcon_old_decoder": (False, lambda: tf.FalconForCausalLM(tf.FalconConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000, new_decoder_architecture=False))),
}


@pytest.mark.parametrize("name", ARCHS)
def test_packing_proof_passes_position_masked_models_and_refuses_the_others(name):
    exact, build = ARCHS[name]
    torch.manual_seed(0)
    model = build()
    model.train()
    proof = prove_packing(model)
    assert proof.exact is exact, proof.describe()
    assert model.training  # the check leaves the mode as it found it
    if exact:
        assert proof.swap_diff == 0.0 and proof.alone_diff < 1e-5
        assert require_exact_packing(model) == proof
    else:
        assert proof.swap_diff > 1e-3
        with pytest.raises(ConfigError, match="train.packing.*ATTENDS ACROSS EXAMPLES.*set train.packing=false"):
            require_exact_packing(model)


def test_packing_proof_in_bf16_still_tells_them_apart():
    """Half precision: an isolated model's second example is bit-identical after either first example."""
    for name in ("llama", "bloom"):
        torch.manual_seed(0)
        proof = prove_packing(ARCHS[name][1]().to(torch.bfloat16))
        assert proof.exact is ARCHS[name][0], proof.describe()
