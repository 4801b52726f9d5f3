"""The architectures vLLM serves as text-generation models, as the trainer holds them.

`loraplane base add` refuses a checkpoint whose config.json names none of these, so a base that
vLLM would refuse at engine start is refused when it is registered. Derived from vLLM's model
registry (its text-generation table, `vllm.model_executor.models.registry`) for the vLLM version
below; tests/trainer/test_vllm_archs.py fails when the installed vLLM disagrees. To refresh after
a vLLM upgrade: `python -m trainer.vllm_archs > trainer/vllm_archs.py` in an environment with vLLM.
Nothing here imports vLLM (the trainer and the gateway run without it).
"""

from __future__ import annotations

VLLM_VERSION = "0.32.0"

VLLM_TEXT_ARCHITECTURES: frozenset[str] = frozenset(
    (
        "AXK1ForCausalLM",
        "AfmoeForCausalLM",
        "ApertusForCausalLM",
        "BailingMoeForCausalLM",
        "BailingMoeV2ForCausalLM",
        "BailingMoeV2_5ForCausalLM",
        "BailingMoeV3ForCausalLM",
        "BloomForCausalLM",
        "ChatGLMForConditionalGeneration",
        "ChatGLMModel",
        "Cohere2ForCausalLM",
        "Cohere2MoeForCausalLM",
        "CohereForCausalLM",
        "DbrxForCausalLM",
        "DeciLMForCausalLM",
        "DeepseekForCausalLM",
        "DeepseekV2ForCausalLM",
        "DeepseekV32ForCausalLM",
        "DeepseekV3ForCausalLM",
        "DeepseekV4ForCausalLM",
        "Ernie4_5ForCausalLM",
        "Ernie4_5_MoeForCausalLM",
        "Exaone4ForCausalLM",
        "ExaoneForCausalLM",
        "ExaoneMoEForCausalLM",
        "ExaoneMoeForCausalLM",
        "FalconForCausalLM",
        "FalconH1ForCausalLM",
        "FalconMambaForCausalLM",
        "GPT2LMHeadModel",
        "GPTJForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Gemma3nForCausalLM",
        "Gemma4ForCausalLM",
        "GemmaForCausalLM",
        "Glm4ForCausalLM",
        "Glm4MoeForCausalLM",
        "Glm4MoeLiteForCausalLM",
        "Glm5NextForCausalLM",
        "GlmMoeDsaForCausalLM",
        "GptOssForCausalLM",
        "GraniteForCausalLM",
        "GraniteMoeForCausalLM",
        "GraniteMoeHybridForCausalLM",
        "GraniteMoeSWAForCausalLM",
        "GraniteMoeSharedForCausalLM",
        "GraniteSWAForCausalLM",
        "HCXVisionV2ForCausalLM",
        "HYV3ForCausalLM",
        "HYV4ForCausalLM",
        "HrmTextForCausalLM",
        "HyperCLOVAXForCausalLM",
        "IQuestCoderForCausalLM",
        "IQuestLoopCoderForCausalLM",
        "InklingForCausalLM",
        "InklingForConditionalGeneration",
        "InternLM2ForCausalLM",
        "InternLM3ForCausalLM",
        "JambaForCausalLM",
        "K2HorizonForCausalLM",
        "KimiLinearForCausalLM",
        "LLaMAForCausalLM",
        "LagunaForCausalLM",
        "Lfm2ForCausalLM",
        "Lfm2MoeForCausalLM",
        "Llama4ForCausalLM",
        "LlamaForCausalLM",
        "LongcatFlashForCausalLM",
        "LongcatFlashNgramForCausalLM",
        "Mamba2ForCausalLM",
        "MambaForCausalLM",
        "MiMoForCausalLM",
        "MiMoV2FlashForCausalLM",
        "MiMoV2ForCausalLM",
        "MiniCPM3ForCausalLM",
        "MiniCPMForCausalLM",
        "MiniMaxM2ForCausalLM",
        "MiniMaxM3SparseForCausalLM",
        "Ministral3ForCausalLM",
        "MistralForCausalLM",
        "MistralLarge3ForCausalLM",
        "MixtralForCausalLM",
        "MuseGlimmerForCausalLM",
        "NemotronForCausalLM",
        "NemotronHForCausalLM",
        "NemotronHPuzzleForCausalLM",
        "OPTForCausalLM",
        "OlmoHybridForCausalLM",
        "OlmoeForCausalLM",
        "OrionForCausalLM",
        "PanguEmbeddedForCausalLM",
        "PanguProMoEV2ForCausalLM",
        "PanguUltraMoEForCausalLM",
        "Param2MoEForCausalLM",
        "Phi3ForCausalLM",
        "PhiMoEForCausalLM",
        "Plamo3ForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "Qwen3NextForCausalLM",
        "Qwen3_5ForCausalLM",
        "Qwen3_5MoeForCausalLM",
        "Qwen4ExpForCausalLM",
        "Rnj1ForCausalLM",
        "SarvamMLAForCausalLM",
        "SarvamMoEForCausalLM",
        "SolarForCausalLM",
        "StableLmForCausalLM",
        "Step1ForCausalLM",
        "Step3TextForCausalLM",
        "Step3p5ForCausalLM",
        "TeleChat2ForCausalLM",
        "TeleChat3ForCausalLM",
        "TeleFLMForCausalLM",
        "Zamba2ForCausalLM",
    )
)


def installed_vllm_architectures() -> tuple[str, frozenset[str]]:
    """(version, text-generation architectures) of the installed vLLM (imports it: slow)."""
    import vllm
    from vllm.model_executor.models import registry

    supported = registry.ModelRegistry.get_supported_archs()
    return vllm.__version__, frozenset(a for a in registry._TEXT_GENERATION_MODELS if a in supported)


if __name__ == "__main__":
    import inspect
    import sys

    version, archs = installed_vllm_architectures()
    source = inspect.getsource(sys.modules[__name__])
    head, _, rest = source.partition("VLLM_VERSION = ")
    _, _, tail = rest.partition("\n)\n")
    listing = "".join(f'        "{a}",\n' for a in sorted(archs))
    sys.stdout.write(
        f'{head}VLLM_VERSION = "{version}"\n\nVLLM_TEXT_ARCHITECTURES: frozenset[str] = frozenset(\n'
        f"    (\n{listing}    )\n)\n{tail}"
    )
