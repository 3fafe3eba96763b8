"""The batch contract (chattune.data.collate.Collator) and packed == unpacked on a real Qwen3 graph."""
from __future__ import annotations

import pytest
import torch

from chattune.data.collate import IGNORE_INDEX, Collator


def _ex(ids, n_prompt=1):
    return {"input_ids": list(ids), "labels": [IGNORE_INDEX] * n_prompt + list(ids[n_prompt:]), "length": len(ids)}


def test_padding_masks_by_position_not_by_token_id():
    # pad id 7 also occurs as a real token: the mask must come from positions, never from the id.
    feats = [_ex([5, 7, 7, 9]), _ex([7, 3])]
    b = Collator(pad_token_id=7)(feats)
    assert set(b) == {"input_ids", "labels", "attention_mask"}
    assert b["input_ids"].tolist() == [[5, 7, 7, 9], [7, 3, 7, 7]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert b["labels"].tolist() == [[-100, 7, 7, 9], [-100, 3, -100, -100]]
    assert all(v.dtype == torch.long for v in b.values())


def test_pad_to_multiple_of():
    b = Collator(0, pad_to_multiple_of=8)([_ex([1, 2, 3])])
    assert b["input_ids"].shape == (1, 8)
    assert b["attention_mask"].sum() == 3 and (b["labels"][0, 3:] == IGNORE_INDEX).all()


def test_packing_flattens_with_restarting_positions_and_boundary_labels():
    feats = [_ex([11, 12, 13], n_prompt=0), _ex([21, 22], n_prompt=0), _ex([31, 32, 33, 34], n_prompt=2)]
    b = Collator(0, packing=True)(feats)
    assert set(b) == {"input_ids", "labels", "position_ids", "use_cache"}
    assert b["input_ids"].tolist() == [[11, 12, 13, 21, 22, 31, 32, 33, 34]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    # first label of every example is -100: nothing is predicted across a boundary
    assert b["labels"].tolist() == [[-100, 12, 13, -100, 22, -100, -100, 33, 34]]


def test_packing_filler_is_its_own_untrained_segment():
    b = Collator(9, packing=True, pad_to_multiple_of=4)([_ex([1, 2, 3], 0), _ex([4, 5], 0)])
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 9, 9, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert b["labels"][0, 5:].tolist() == [-100, -100, -100]


def test_mismatched_lengths_and_missing_pad_are_errors():
    with pytest.raises(ValueError, match="input_ids has 3 tokens but labels has 2"):
        Collator(0)([{"input_ids": [1, 2, 3], "labels": [1, 2]}])
    with pytest.raises(ValueError, match="pad_token_id"):
        Collator(None)


def test_trained_logits_only_marks_positions_whose_next_token_is_trained():
    feats = [_ex([5, 6, 7, 8], n_prompt=2), _ex([1, 2, 3], n_prompt=1)]
    b = Collator(0, trained_logits_only=True)(feats)
    # row 0 trains tokens 7, 8 (predicted from positions 1, 2); row 1 trains 2, 3 (positions 0, 1)
    assert b["logits_to_keep"].tolist() == [[False, True, True, False], [True, True, False, False]]
    assert b["shift_labels"].tolist() == [7, 8, 2, 3]
    p = Collator(0, packing=True, trained_logits_only=True)(feats)
    assert p["logits_to_keep"].tolist() == [[False, True, True, False, True, True, False]]
    assert p["shift_labels"].tolist() == [7, 8, 2, 3]


def _token_losses(logits, labels):
    """Per-token loss of each shifted prediction (fp32), NaN where the label is -100."""
    loss = torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=IGNORE_INDEX,
                                             reduction="none")
    return torch.where(labels[1:] == IGNORE_INDEX, torch.nan, loss)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_losses_equal_each_example_alone(tiny_qwen3_dir, attn):
    """No attention across examples: every example's per-token losses inside a packed row equal its
    losses run alone (fp32, max abs diff < 1e-4), with the model's training config (use_cache off)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32, attn_implementation=attn)
    model.config.use_cache = False  # what TrainingArguments(use_cache=False) does in the Trainer
    model.train()
    g = torch.Generator().manual_seed(0)
    feats = [_ex(torch.randint(10, 20000, (n,), generator=g).tolist(), n_prompt=2) for n in (9, 14, 5, 11)]
    with torch.no_grad():
        alone = [_token_losses(model(input_ids=torch.tensor([f["input_ids"]])).logits[0], torch.tensor(f["labels"]))
                 for f in feats]
        packed = Collator(0, packing=True, pad_to_multiple_of=8)(feats)
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0]
        padded = Collator(0)(feats)
        plogits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    off = 0
    for i, (f, ref) in enumerate(zip(feats, alone)):
        n = len(f["input_ids"])
        got = _token_losses(logits[off:off + n], torch.tensor(f["labels"]))
        pad = _token_losses(plogits[i, :n], torch.tensor(f["labels"]))
        keep = ~torch.isnan(ref)
        assert keep.sum() == n - 2  # shifted labels minus the prompt token
        assert (got[keep] - ref[keep]).abs().max() < 1e-4, f"example {i} attends across the packed boundary"
        assert (pad[keep] - ref[keep]).abs().max() < 1e-4
        off += n
    # The loss the Trainer computes (mean over trained tokens) is the same packed or padded, and with
    # logits computed only where a token is trained (then only those rows of logits exist).
    with torch.no_grad():
        ref = model(**padded).loss.item()
        assert abs(model(**packed).loss.item() - ref) < 1e-4
        for packing in (False, True):
            b = Collator(0, packing=packing, trained_logits_only=True)(feats)
            out = model(**b)
            assert out.logits.shape[0] == int(b["logits_to_keep"].sum()) == sum(len(f["input_ids"]) - 2 for f in feats)
            assert abs(out.loss.item() - ref) < 1e-4


def test_a_packed_batch_never_attends_across_examples_even_with_the_kv_cache_on():
    """With ``use_cache=True`` (most models' default config) a causal LM builds a KV cache in the
    forward and then ignores the packed ``position_ids`` for masking. `model(**batch)` on a packed batch
    must be exact however the model is configured: the batch itself turns the cache off."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=1000))
    assert model.config.use_cache
    model.train()
    first, second = list(range(10, 22)), [5, 6, 7, 8]
    batch = Collator(0, packing=True)([_ex(first, 0), _ex(second, 0)])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([second])).logits[0]
        packed = model(**batch).logits[0, len(first):]
    assert (packed - alone).abs().max() < 1e-5, "the second example attends to the first"
    assert batch["use_cache"] is False  # and a caller cannot turn it back on: model(**batch, use_cache=True) is a TypeError
