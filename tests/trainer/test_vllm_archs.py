"""trainer/vllm_archs.py, the architectures `base add` accepts, agrees with the installed vLLM."""

from __future__ import annotations

import pytest

from trainer.vllm_archs import VLLM_TEXT_ARCHITECTURES, VLLM_VERSION


def test_the_list_matches_the_installed_vllm() -> None:
    pytest.importorskip("vllm")
    from trainer.vllm_archs import installed_vllm_architectures

    version, archs = installed_vllm_architectures()
    assert (version, archs) == (VLLM_VERSION, VLLM_TEXT_ARCHITECTURES), (
        "vLLM changed: regenerate with `python -m trainer.vllm_archs > trainer/vllm_archs.py`"
    )


def test_the_architectures_our_users_name_first_are_there() -> None:
    # DeepSeek-LLM-7B is LlamaForCausalLM; BERT-style encoders are not text generators
    assert {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"} <= VLLM_TEXT_ARCHITECTURES
    assert "BertForMaskedLM" not in VLLM_TEXT_ARCHITECTURES
