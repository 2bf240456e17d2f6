"""Tests for forgekit.perf: each speed lever keeps what the model computes (CPU, a tiny random Llama)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forgekit import perf

CFG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
       "num_key_value_heads": 2, "vocab_size": 97, "max_position_embeddings": 256}
LENGTHS = [7, 30, 1, 19]


def tiny(attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CFG, use_cache=False))
    model.set_attn_implementation(attn)
    return model.eval()


def examples() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, CFG["vocab_size"], (n,), generator=g) for n in LENGTHS]


def packed(ex: list[torch.Tensor]) -> dict:
    ids = torch.cat(ex)[None]
    pos = torch.cat([torch.arange(len(x)) for x in ex])[None]
    return {"input_ids": ids, "position_ids": pos}


def test_varlen_kwargs_finds_documents_and_row_starts():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [5, 6, 0, 1, 2, 3]])
    kw = perf.varlen_kwargs(pos)
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 8, 12]
    assert kw["cu_seq_lens_q"].dtype == torch.int32
    assert kw["max_length_q"] == kw["max_length_k"] == 4


@pytest.mark.parametrize("with_kwargs", [False, True])
def test_varlen_packed_logits_equal_each_example_alone(with_kwargs):
    ref, model = tiny("sdpa"), tiny(perf.register_varlen_attention())
    ex = examples()
    batch = packed(ex)
    if with_kwargs:
        batch |= perf.varlen_kwargs(batch["position_ids"])
    with torch.no_grad():
        out = model(**batch).logits[0]
        alone = [ref(input_ids=x[None]).logits[0] for x in ex]
    torch.testing.assert_close(out, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_varlen_padded_batch_equals_unpadded():
    ref, model = tiny("sdpa"), tiny(perf.pick_attention("varlen", packing=False, on_gpu=False))
    ex = examples()
    width = max(LENGTHS)
    ids = torch.zeros(len(ex), width, dtype=torch.long)
    mask = torch.zeros(len(ex), width, dtype=torch.long)
    for i, x in enumerate(ex):
        ids[i, : len(x)], mask[i, : len(x)] = x, 1
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
        for i, x in enumerate(ex):
            torch.testing.assert_close(out[i, : len(x)], ref(input_ids=x[None]).logits[0], rtol=1e-5, atol=1e-5)


def test_varlen_refuses_dropout():
    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="dropout"):
        perf.varlen_attention_forward(None, q, q, q, None, dropout=0.1)


def test_pick_attention():
    assert perf.pick_attention("sdpa", packing=True, on_gpu=True) == "sdpa"
    assert perf.pick_attention("auto", packing=True, on_gpu=False) == "sdpa"
    assert perf.pick_attention("varlen", packing=True, on_gpu=False) == perf.VARLEN
    expected = perf.VARLEN if perf.varlen_available() else "flex_attention"
    assert perf.pick_attention("auto", packing=True, on_gpu=True) == expected


def test_selective_checkpointing_counts_layers():
    model = tiny()
    assert perf.set_activation_checkpointing(model, 1) == 3
    assert perf.set_activation_checkpointing(model, 2) == 2  # layers 0 and 2
    assert [layer.gradient_checkpointing for layer in perf.decoder_layers(model)] == [True, False, True]
    assert perf.set_activation_checkpointing(model, 0) == 0
    with pytest.raises(ValueError, match=">= 0"):
        perf.set_activation_checkpointing(model, -1)


def test_selective_checkpointing_keeps_gradients():
    ex = examples()
    grads = []
    for every in (0, 2, 1):
        model = tiny().train()
        perf.set_activation_checkpointing(model, every)
        batch = packed(ex)
        model(**batch, labels=batch["input_ids"]).loss.backward()
        grads.append(model.model.layers[0].mlp.up_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])


def test_checkpoint_period_grows_with_tokens():
    llama8b = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8}
    free = 60 * 2**30
    periods = [perf.checkpoint_period(llama8b, n, free, liger=True) for n in (1024, 8192, 65536)]
    assert periods[0] == 0 and periods[-1] == 1
    stored, ckpt = perf.activation_bytes_per_token(llama8b, liger=True)
    assert ckpt == 2 * 4096 and stored > 10 * ckpt


def test_pad_packed_batch_adds_a_separate_example():
    ex = examples()
    batch = packed(ex)
    batch["labels"] = batch["input_ids"].clone()
    out = perf.pad_packed_batch(batch, 16, pad_token_id=0)
    n = batch["input_ids"].shape[1]
    assert out["input_ids"].shape[1] % 16 == 0 and out["input_ids"].shape[1] >= n
    assert (out["labels"][0, n:] == -100).all() and out["position_ids"][0, n] == 0
    model = tiny()
    with torch.no_grad():
        a = model(**batch).logits[0]
        b = model(**out).logits[0, :n]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="packed row"):
        perf.pad_packed_batch({"input_ids": batch["input_ids"]}, 16, 0)


def test_compile_decoder_layers_same_outputs():
    ex = examples()
    model = tiny()
    with torch.no_grad():
        before = model(**packed(ex)).logits
        assert perf.compile_decoder_layers(model, backend="eager") == 3
        after = model(**packed(ex)).logits
    torch.testing.assert_close(before, after)


def test_fused_optimizer_name():
    assert perf.fused_optimizer_name(True) == "adamw_torch_fused"
    assert perf.fused_optimizer_name(False) == "adamw_torch"


def test_apply_liger_reports_what_it_did():
    pytest.importorskip("liger_kernel")
    assert perf.apply_liger(tiny()) is True


def test_zero3_buckets_fill_auto_with_one_layer():
    model = tiny()
    per_layer = sum(p.numel() for p in perf.decoder_layers(model)[0].parameters())
    ds = {"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": 12345}}
    assert perf.zero3_buckets(ds, model) == {"reduce_bucket_size": per_layer}
    assert ds["zero_optimization"] == {"stage": 3, "reduce_bucket_size": per_layer,
                                       "stage3_prefetch_bucket_size": 12345}  # explicit value kept
    ds2 = {"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}
    assert perf.zero3_buckets(ds2, model) == {} and ds2["zero_optimization"]["reduce_bucket_size"] == "auto"


def test_lora_sum_in_fp32_keeps_small_updates_under_cpu_autocast():
    """A LoRA update 1e-4 of the layer's output is rounded away when peft adds it in bf16, kept in fp32."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules=["0"]))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.base_layer.weight.copy_(torch.eye(64))  # output = input = 1.0
        layer.lora_A["default"].weight.fill_(1.0 / 64)
        layer.lora_B["default"].weight.fill_(1e-4 / 4)  # update = 4 * (1/64 * 64) * 1e-4 / 4 = 1e-4 per output
    x = torch.ones(2, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = model(x)
    assert rounded.dtype == torch.bfloat16 and torch.all(rounded == 1.0)  # 1 + 1e-4 in bf16 is 1
    assert perf.lora_sum_in_fp32(model) == 1
    assert perf.lora_sum_in_fp32(model) == 0  # hooks are added once
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept = model(x)
    assert kept.dtype == torch.float32
    assert torch.allclose(kept - 1.0, torch.full_like(kept, 1e-4), rtol=1e-2)
    with torch.no_grad():  # without autocast nothing changes: fp32 in, fp32 out
        assert torch.allclose(model(x), kept, atol=1e-6)


@pytest.mark.parametrize("lora", [True, False])
def test_supervised_logits_only_same_loss_and_gradients(lora):
    """Logits at supervised positions only: the loss and every gradient as the full forward, generation untouched."""
    import copy

    from peft import LoraConfig, get_peft_model

    def model_pair():
        base = tiny().train()
        if lora:
            base = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        return base, copy.deepcopy(base)

    full, selective = model_pair()
    assert perf.supervised_logits_only(selective) is True
    assert perf.supervised_logits_only(selective) is True  # patched once
    g = torch.Generator().manual_seed(2)
    # a padded batch of two rows and a packed row of four examples; prompts (-100) at the start of each example
    padded = {"input_ids": torch.randint(0, CFG["vocab_size"], (2, 24), generator=g),
              "attention_mask": torch.ones(2, 24, dtype=torch.long)}
    padded["attention_mask"][1, 17:] = 0
    padded["labels"] = padded["input_ids"].clone()
    padded["labels"][:, :9] = -100
    padded["labels"][1, 17:] = -100
    row = packed(examples())
    row["labels"] = row["input_ids"].clone()
    for start, n in zip(torch.tensor([0, *LENGTHS]).cumsum(0)[:-1].tolist(), LENGTHS, strict=True):
        row["labels"][0, start:start + n // 2 + 1] = -100  # the first half (and the boundary token) unsupervised
    for batch, items in ((padded, None), (row, None), (padded, torch.tensor(40))):
        kwargs = {} if items is None else {"num_items_in_batch": items}
        for m in (full, selective):
            m.zero_grad()
        ref = full(**batch, **kwargs).loss
        got = selective(**batch, **kwargs)
        assert torch.allclose(got.loss, ref, rtol=1e-6, atol=1e-7), (got.loss, ref)
        n_supervised = int((batch["labels"][:, 1:] != -100).sum())
        assert got.logits.shape == (1, n_supervised, CFG["vocab_size"])
        ref.backward()
        got.loss.backward()
        grads = [(n, p.grad, q.grad) for (n, p), q in zip(full.named_parameters(), selective.parameters(), strict=True)
                 if p.requires_grad]
        assert grads and all(a is not None and torch.allclose(a, b, rtol=1e-5, atol=1e-7) for _, a, b in grads), \
            [n for n, a, b in grads if not torch.allclose(a, b, rtol=1e-5, atol=1e-7)]
    with torch.no_grad():  # no labels (generation, evaluation scoring): the original forward
        ids = padded["input_ids"]
        assert torch.equal(full(input_ids=ids).logits, selective(input_ids=ids).logits)
        # tuples as the original returns them; hidden states passed through
        as_tuple = selective(**padded, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.allclose(as_tuple[0], full(**padded).loss)
        hidden = selective(**padded, output_hidden_states=True).hidden_states
        assert hidden is not None and torch.equal(hidden[-1], full(**padded, output_hidden_states=True).hidden_states[-1])
        # a deep copy (a reference model, say) computes with its own weights
        twin = copy.deepcopy(selective)
        for q in twin.parameters():
            q.add_(0.5)
        assert not torch.allclose(twin(**padded).loss, selective(**padded).loss)


def test_supervised_logits_only_skips_models_with_other_heads():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    model = Gemma2ForCausalLM(Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           vocab_size=97))
    assert perf.supervised_logits_only(model) is False  # soft-capped logits: not the plain forward
    llama = tiny()
    llama.forward = lambda **kw: None  # another library's forward (Liger's fused loss, say): left as it is
    assert perf.supervised_logits_only(llama) is False
