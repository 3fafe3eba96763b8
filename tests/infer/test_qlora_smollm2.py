"""QLoRA end to end on the real SmolLM2-135M-Instruct (CPU): the 4-bit model answers users with exactly what
training computed, and the merged folder answers as the 4-bit model does.

bitsandbytes >= 0.50 has a second, inference-only CPU path for 4-bit layers (on CPUs with AVX512-BF16: the
weights repacked in place, absmax rounded to bf16, a bf16 kernel) that an eval-mode forward without gradients
switches to. On SmolLM2 that changes greedy answers of a QLoRA run kept 4-bit against its merged folder
(while merge verification, whose reference on CPU is the dequantised base, passes), and an evaluation during
training would change the weights being trained. chattune.model.quant pins the training path for every 4-bit
model it loads; this test holds the product to it on a real model."""
from __future__ import annotations

import pytest
import torch
from tests.train.test_qlora import qlora_cfg
from tests.train.test_trainer import FACTS

from chattune.data.render import prompt_ids
from chattune.infer.generate import Generator
from chattune.rundir.load import LoadedModel, load_run

PROMPTS = [[{"role": "user", "content": f["prompt"]}] for f in FACTS[:8]]
MAX_NEW = 24


def _generator(loaded: LoadedModel) -> Generator:
    info = loaded.info
    return Generator(loaded.model, loaded.tokenizer, eos_token_ids=list(info.eos_token_ids), name=info.path,
                     thinking=info.thinking, info=info, system=info.system, date=info.date)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.detach()


@pytest.mark.slow  # SmolLM2 trained (4 steps), merged, and loaded five times
def test_smollm2_qlora_answers_with_what_training_computed_and_merges_to_the_same_answers(tmp_path, smollm2_gguf):
    """1. The 4-bit model in training mode with autograd (the training matmul) == in eval without gradients at
    batch 1 and batch 2 == in training mode again afterwards (nothing repacked in place), bit for bit; the
    dequantised base CPU inference loads by default computes the same logits.
    2. Greedy answers of the 4-bit model, one prompt at a time (a served request) and in a batch, equal the
    merged folder's; their logits differ only by the merge's rounding."""
    from chattune.infer.merge import merge
    from chattune.model.load import SMOLLM2_ALIAS
    from chattune.train.trainer import train

    run, merged_dir = tmp_path / "run", tmp_path / "merged"
    train(qlora_cfg(tmp_path, SMOLLM2_ALIAS, "run", max_steps=4, lr=2e-3, save_steps=100))
    merge(run, merged_dir, n_verify=0)  # its verification is tested on the tiny model; here: compared below

    four_bit = _generator(load_run(run, device="cpu", dequantise=False))
    model, tok = four_bit.model, four_bit.tokenizer
    assert four_bit.info.quantised == "nf4"
    rows = [prompt_ids(tok, p) for p in PROMPTS[1:3]]
    assert len(rows[0]) == len(rows[1])  # no padding: batch 1 and batch 2 see the same tokens
    ids = torch.tensor(rows)
    for name, p in model.named_parameters():  # gradients flow as in training: bitsandbytes' autograd matmul
        p.requires_grad_("lora_" in name)
    model.train()
    trained = _logits(model, ids)
    model.eval()
    with torch.inference_mode():
        one, two = _logits(model, ids[:1]), _logits(model, ids)
    model.train()
    again = _logits(model, ids)
    model.eval()
    assert torch.equal(one, trained[:1]) and torch.equal(two, trained) and torch.equal(again, trained)
    alone = [four_bit.generate([p], max_new_tokens=MAX_NEW)[0].text for p in PROMPTS[:3]]
    batched = [c.text for c in four_bit.generate(PROMPTS, max_new_tokens=MAX_NEW)]
    del four_bit, model

    default = load_run(run, device="cpu", tokenizer=tok)  # what chat, serve and eval load on CPU
    assert default.info.quantised == "nf4-dequantised"
    with torch.inference_mode():
        assert torch.equal(_logits(default.model, ids), trained)
    del default

    merged = _generator(load_run(merged_dir, device="cpu", tokenizer=tok))
    assert merged.info.kind == "model" and merged.info.method == "qlora"
    with torch.inference_mode():
        assert (_logits(merged.model, ids) - trained).abs().max() < 1e-3
    assert len(set(batched)) > 1  # the prompts get different answers: the comparison can tell them apart
    assert [merged.generate([p], max_new_tokens=MAX_NEW)[0].text for p in PROMPTS[:3]] == alone
    assert [c.text for c in merged.generate(PROMPTS, max_new_tokens=MAX_NEW)] == batched
