"""Tests for forgekit.flops against hand-computed values."""

import pytest
from transformers import LlamaConfig

from forgekit.flops import matmul_params, mfu, model_flops_per_token, peak_tflops

LLAMA_31_8B = LlamaConfig(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
)
# per layer: q,o 2*4096*4096 + k,v 2*4096*1024 + mlp 3*4096*14336 = 218,103,808; head 4096*128256
N_8B = 32 * 218_103_808 + 525_336_576


def test_matmul_params_llama_8b():
    assert matmul_params(LLAMA_31_8B) == N_8B == 7_504_658_432


def test_tiny_config_by_hand_and_dict_input():
    cfg = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 1, "head_dim": 4, "vocab_size": 10}
    # per layer: q,o 2*8*8 = 128; k,v 2*8*4 = 64; mlp 3*8*16 = 384 -> 576; x2 layers + head 80
    assert matmul_params(cfg) == 1232
    # full: 6N + 12 * layers * heads * head_dim * T = 7392 + 12*2*2*4*4
    assert model_flops_per_token(cfg, 4, lora=False) == 7392 + 768
    assert model_flops_per_token(cfg, 4, lora=True) == 4 * 1232 + 768
    assert model_flops_per_token(cfg, 0, lora=True) == 4 * 1232


def test_lora_8b_matches_the_reference_mfu():
    # shared/device/README: 5,919 tokens/s at seq 2048 -> 0.199 MFU on an H100 (989 TFLOP/s)
    fpt = model_flops_per_token(LLAMA_31_8B, 2048, lora=True)
    assert fpt == 4 * N_8B + 12 * 32 * 4096 * 2048 == 33_239_859_200
    assert mfu(5919, fpt, 1, peak_tflops("NVIDIA H100 80GB HBM3")) == pytest.approx(0.1989, abs=1e-4)
    assert model_flops_per_token(LLAMA_31_8B, 2048, lora=False) == 6 * N_8B + 3_221_225_472


def test_peak_tflops_names():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert peak_tflops("NVIDIA H100 PCIe") == 756
    assert peak_tflops("NVIDIA H200") == 989
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert peak_tflops("NVIDIA L4") == 121
    assert peak_tflops("NVIDIA L40S") == 362
    assert peak_tflops("cpu") is None


def test_mfu_scales_with_gpus_and_handles_unknown_peak():
    assert mfu(1000, 1e12, 2, 1000) == pytest.approx(0.5)
    assert mfu(1000, 1e12, 1, None) is None
    with pytest.raises(ValueError, match="n_gpus"):
        mfu(1000, 1e12, 0, 989)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="hidden_size"):
        matmul_params({"num_hidden_layers": 2})
    with pytest.raises(ValueError, match="seq_len"):
        model_flops_per_token(LLAMA_31_8B, -1, lora=True)
