"""model.precision auto: bf16 where the hardware computes it natively, fp32 on other CPUs."""

from __future__ import annotations

import pytest
import torch

from trainer.errors import ConfigError
from trainer.model import choose_precision, cpu_has_native_bf16

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"


@pytest.mark.parametrize(("cpuinfo", "native"), [(ZEN4, True), (SKYLAKE, False), ("", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, cpuinfo, native):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_native_bf16(path) is native


def test_unreadable_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_has_native_bf16(tmp_path / "missing") is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU choice")
def test_auto_on_cpu_follows_native_bf16():
    bf16 = choose_precision("auto", native_bf16_cpu=True)
    assert (bf16.name, bf16.mixed_precision, bf16.dtype) == ("bf16", "bf16", torch.bfloat16)
    fp32 = choose_precision("auto", native_bf16_cpu=False)
    assert (fp32.name, fp32.mixed_precision, fp32.dtype) == ("fp32", "no", torch.float32)
    assert choose_precision("fp32", native_bf16_cpu=True).name == "fp32"  # explicit wins


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU refusal")
def test_fp16_on_cpu_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU.*use fp32 or bf16"):
        choose_precision("fp16")


def test_one_process_can_set_up_runs_in_both_precisions(tmp_path, tiny_dataset):
    """accelerate keeps one state per process; a second run in another precision must still set up."""
    from tests.trainer.sample_data import MODELS_DIR
    from trainer.config import load_config
    from trainer.train import setup

    def run(precision: str):
        return setup(load_config(None, [
            "--models_dir", str(MODELS_DIR), "--out_dir", str(tmp_path / precision), "--publish.enabled", "false",
            "--data.train", str(tiny_dataset), "--data.eval", "null", "--model.precision", precision,
        ]))  # fmt: skip

    bf16 = run("bf16")  # runs in turn: the state is the process's, so the newest run's precision applies
    assert bf16.accelerator.mixed_precision == "bf16"
    q_proj = bf16.peft_model.get_base_model().model.layers[0].self_attn.q_proj
    assert (q_proj.base_layer.weight.dtype, q_proj.lora_A["default"].weight.dtype) == (torch.bfloat16, torch.float32)
    fp32 = run("fp32")
    assert fp32.accelerator.mixed_precision == "no"
    assert {p.dtype for p in fp32.peft_model.parameters()} == {torch.float32}
