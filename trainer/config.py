"""The trainer's typed config: every default lives here; YAML files and CLI flags only override.

    cfg = load_config("configs/train/demo.yaml", ["--train.max_steps", "3", "--publish.version", "v2"])

Keys are dotted paths into the dataclass tree (`train.max_steps`, `lora.r`, `publish.name`).
An unknown key or a value of the wrong type raises ConfigError naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer.errors import ConfigError
from trainer.registry_contract import ADAPTER_NAME_RE, ADAPTER_VERSION_RE

DATA_FORMATS = ("auto", "chat", "alpaca", "sharegpt", "prompt_completion")
GENERATION_METRICS = ("exact_match", "json_valid", "rouge_l", "bleu")  # trainer/evaluation/metrics.py computes them


@dataclass
class ModelConfig:
    """How the base is loaded: quantization and precision (auto = chosen by hardware)."""

    quantization: Literal["none", "nf4", "int8"] = "none"  # nf4: QLoRA 4-bit; int8: 8-bit; none
    double_quant: bool = True  # NF4 only: quantize the quantization constants too
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA w/ bf16, else fp32
    gradient_checkpointing: bool = False  # recompute activations: less memory, slower
    attn_implementation: str = "sdpa"  # sdpa, eager or flash_attention_2


def parse_layers(value: list[int] | str, key: str = "lora.layers") -> list[int]:
    """`[20, 21]`, `"20-29"` or `"20,22,24-26"` -> sorted distinct layer indices."""
    if isinstance(value, list):
        layers = value
    else:
        layers = []
        for part in value.replace(" ", "").split(","):
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not match or (match[2] is not None and int(match[2]) < int(match[1])):
                raise ConfigError(f'{key}: {value!r} is not a layer list; write e.g. [20, 21, 22] or "20-29"')
            layers += range(int(match[1]), int(match[2] or match[1]) + 1)
    if not layers or min(layers) < 0:
        raise ConfigError(f"{key} must name layers >= 0, got {value!r}")
    return sorted(set(layers))


@dataclass
class AdaLoraConfig:
    """AdaLoRA's rank budget (lora.method: adalora): every module starts at rank init_r; after
    tinit_ratio of the steps the budget shrinks (cubic schedule) to an average of target_r, and
    is frozen for the last tfinal_ratio. Published as a plain LoRA of rank = the largest kept rank."""

    init_r: int = 12  # AdaLoRA: rank each layer starts with
    target_r: int = 8  # AdaLoRA: average rank after pruning (what is published)
    tinit_ratio: float = 0.1  # fraction of train.max_steps before pruning starts
    tfinal_ratio: float = 0.2  # fraction of train.max_steps with the final ranks fixed
    delta_t: int = 1  # steps between budget allocations
    beta1: float = 0.85  # EMA of sensitivity
    beta2: float = 0.85  # EMA of uncertainty
    # PEFT's orthogonal regulariser on A and B (trainer/adalora.py): + weight * mean ||A A^T - I||_F,
    # ||B^T B - I||_F, added once per optimizer step to the step's mean loss; 0 turns it off
    orth_reg_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.target_r <= self.init_r:
            raise ConfigError(f"lora.adalora.target_r must be in [1, init_r={self.init_r}], got {self.target_r}")
        if min(self.tinit_ratio, self.tfinal_ratio) < 0 or self.tinit_ratio + self.tfinal_ratio >= 1.0:
            raise ConfigError(
                f"lora.adalora.tinit_ratio + tfinal_ratio must be < 1 (both >= 0), got "
                f"{self.tinit_ratio} + {self.tfinal_ratio}"
            )
        if self.delta_t < 1:
            raise ConfigError(f"lora.adalora.delta_t must be >= 1, got {self.delta_t}")
        if not self.orth_reg_weight >= 0:  # also catches nan
            raise ConfigError(f"lora.adalora.orth_reg_weight must be >= 0 (0 turns it off), got {self.orth_reg_weight}")


@dataclass
class LoraConfig:
    method: Literal["lora", "adalora"] = "lora"  # adalora: see AdaLoraConfig (lora.r is then unused)
    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA scale numerator: the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the LoRA input
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])  # or "all-linear"
    rslora: bool = False  # scale by alpha/sqrt(r) instead of alpha/r
    use_dora: bool = False  # trainable, but the publisher refuses it (vLLM cannot load DoRA)
    modules_to_save: list[str] = field(default_factory=list)  # likewise refused at publish
    # continue training an existing adapter: adapters/NAME/vN, NAME@vN (in publish.adapters_dir) or a
    # run's adapter dir. Its own r/alpha/dropout/target_modules then apply; the manifest records it as parent.
    init_from: str | None = None
    layers: list[int] | str | None = None  # only these decoder layers: [20, 21, 22] or "20-29"; None: all
    adalora: AdaLoraConfig = field(default_factory=AdaLoraConfig)

    def __post_init__(self) -> None:
        if self.layers is not None:
            self.layers = parse_layers(self.layers)
            if isinstance(self.target_modules, str):
                raise ConfigError("lora.layers needs lora.target_modules as a list of names (not 'all-linear')")
        if self.method == "adalora" and self.use_dora:
            raise ConfigError("lora.method adalora cannot be combined with lora.use_dora")
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            raise ConfigError(
                f"lora.target_modules must be a list of module names or 'all-linear', got {self.target_modules!r}"
            )
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ConfigError("lora.target_modules is empty; list module names (e.g. [q_proj, v_proj])")


@dataclass
class DataConfig:
    train: str = "data/demo/train.jsonl"  # training file (JSONL, csv, json, parquet)
    eval: str | None = "data/demo/heldout.jsonl"  # a file, or None to split train by val_ratio
    val_ratio: float = 0.0  # used only when eval is None
    format: str = "auto"  # auto | chat | alpaca | sharegpt | prompt_completion
    chat_template: str | None = None  # None: the tokenizer's; else a name (chatml) or a .jinja path
    max_seq_len: int = 512  # tokens; longer samples are truncated (the answer keeps its EOS if it fits)
    packing: bool = False  # concatenate samples into max_seq_len rows, attention kept per sample
    skip_bad_lines: bool = False  # count and skip bad lines instead of failing on the first
    seed: int = 0  # shuffling and val split

    def __post_init__(self) -> None:
        if self.format not in DATA_FORMATS:
            raise ConfigError(f"data.format must be one of {', '.join(DATA_FORMATS)}, got {self.format!r}")
        if self.max_seq_len < 8:
            raise ConfigError(f"data.max_seq_len must be >= 8 tokens, got {self.max_seq_len}")
        if not 0.0 <= self.val_ratio < 1.0:
            raise ConfigError(f"data.val_ratio must be in [0, 1), got {self.val_ratio}")
        if self.eval is not None and self.val_ratio > 0:
            raise ConfigError("Can't set both `data.eval` and `data.val_ratio`; set data.eval to null to split train")


@dataclass
class TrainConfig:
    max_steps: int = 60  # optimizer steps
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW weight decay on the LoRA weights
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"  # learning-rate decay after warmup
    warmup_ratio: float = 0.05  # fraction of max_steps spent warming up linearly
    min_lr_ratio: float = 0.0  # cosine/linear decay floor, as a fraction of lr
    max_grad_norm: float | None = 1.0  # None: no clipping
    seed: int = 0  # seed of LoRA init, dropout and batch order
    log_every: int = 1  # steps between progress/TensorBoard train-loss points
    eval_every: int = 0  # steps between evals (loss + perplexity); 0: only at the end
    early_stopping_patience: int = 0  # evals without eval-loss improvement before stopping; 0: off
    # steps between resumable checkpoints (the newest 2 kept in out_dir/checkpoints; a LoRA checkpoint is the
    # adapter plus its optimizer state, ~3x the adapter); what `resume: true` continues from; 0: none
    save_every: int = 50
    length_grouping: bool = True  # batch samples of similar length together (less padding)
    method: Literal["sft", "dpo", "distill", "kto"] = "sft"  # the objective (trainer/objectives/)
    histogram_every: int = 10  # steps between LoRA weight/gradient histograms in TensorBoard; 0: off
    restore_best: bool = True  # with eval_every: publish the best-eval-loss weights, not the last step's

    def __post_init__(self) -> None:
        for key in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        for key in ("log_every", "eval_every", "save_every", "early_stopping_patience", "histogram_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if self.early_stopping_patience and not self.eval_every:
            raise ConfigError("train.early_stopping_patience needs train.eval_every > 0 (evals to compare)")


@dataclass
class DpoConfig:
    """train.method dpo: sigmoid DPO against the starting point (reference log-probs computed once)."""

    beta: float = 0.1  # strength of the KL pull to the reference (TRL's default)
    # w * mean NLL of the chosen answers added to the DPO loss (TRL loss_type [sigmoid, sft], RPO); 0: off
    sft_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"dpo.beta must be > 0, got {self.beta}")
        if self.sft_weight < 0:
            raise ConfigError(f"dpo.sft_weight must be >= 0, got {self.sft_weight}")


@dataclass
class KtoConfig:
    """train.method kto: KTO on rated answers (label true/false) against the starting point (reference
    log-probs computed once); the KL baseline from mismatched pairs within each micro-batch, as TRL does."""

    beta: float = 0.1  # strength of the pull to the reference (TRL's default)
    # per-row loss weights; the KTO paper keeps desirable_weight * n_desirable / (undesirable_weight *
    # n_undesirable) in [1, 4/3]: with fewer good rows than bad, raise desirable_weight
    desirable_weight: float = 1.0  # loss weight of thumbs-up rows
    undesirable_weight: float = 1.0  # loss weight of thumbs-down rows

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ConfigError(f"kto.beta must be > 0, got {self.beta}")
        for key in ("desirable_weight", "undesirable_weight"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"kto.{key} must be > 0, got {getattr(self, key)}")


@dataclass
class DistillConfig:
    """train.method distill: loss = (1-w)*CE + w*T^2*KL(teacher||student) on answer tokens."""

    teacher: str | None = None  # a local HF model dir, or an adapter (NAME@vN, adapters/NAME/vN, run dir)
    kl_weight: float = 0.5  # w
    temperature: float = 2.0  # T: both distributions are softened by T

    def __post_init__(self) -> None:
        if not 0.0 <= self.kl_weight <= 1.0:
            raise ConfigError(f"distill.kl_weight must be in [0, 1], got {self.kl_weight}")
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature must be > 0, got {self.temperature}")


@dataclass
class EvalConfig:
    exact_match: bool = True  # greedy-generate each eval prompt at the end; false: no generation metrics
    metrics: list[str] = field(default_factory=lambda: ["exact_match"])  # of GENERATION_METRICS
    max_examples: int | None = None  # cap on eval examples (None: all)
    batch_size: int = 16  # prompts per generate() call (left padded)
    max_new_tokens: int = 64  # tokens generated per eval example (greedy)

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in GENERATION_METRICS]
        if unknown or not self.metrics:
            raise ConfigError(
                f"eval.metrics: {'unknown ' + ', '.join(unknown) if unknown else 'empty'}; "
                f"choose from {', '.join(GENERATION_METRICS)}"
            )


@dataclass
class PublishConfig:
    enabled: bool = True  # publish to the registry after training
    name: str | None = None  # adapter name in the registry, ^[a-z0-9][a-z0-9_-]{0,62}$
    version: str | None = None  # v1, v2, ...
    adapters_dir: str = "adapters"  # the registry's adapters/ directory
    max_lora_rank: int = 16  # the serving engine's --max-lora-rank; higher ranks are refused

    def __post_init__(self) -> None:
        if self.name is not None and not ADAPTER_NAME_RE.match(self.name):
            raise ConfigError(f"publish.name must match {ADAPTER_NAME_RE.pattern}, got {self.name!r}")
        if self.version is not None and not ADAPTER_VERSION_RE.match(self.version):
            raise ConfigError(f"publish.version must look like v1, v2, ..., got {self.version!r}")
        if self.max_lora_rank < 1:
            raise ConfigError(f"publish.max_lora_rank must be >= 1, got {self.max_lora_rank}")

    def require_target(self) -> None:
        """Called before training, so a run that will publish does not fail after the work."""
        if self.enabled and (self.name is None or self.version is None):
            raise ConfigError(
                "publish.name and publish.version are required to publish (e.g. --publish.name demo-json "
                "--publish.version v1); or set --publish.enabled false"
            )


@dataclass
class Config:
    base: str = "smollm2-135m-instruct"  # registry name in models_dir, or a local HF model dir
    models_dir: str = "models"  # where registered bases live (models/NAME)
    out_dir: str = "runs/default"  # logs, loss plot, checkpoints, final adapter
    resume: bool = True  # continue from the newest complete checkpoint in out_dir if any
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    kto: KtoConfig = field(default_factory=KtoConfig)

    def __post_init__(self) -> None:
        if self.train.method == "distill" and self.distill.teacher is None:
            raise ConfigError("train.method distill needs distill.teacher (a model dir or an adapter NAME@vN)")
        if self.train.method == "kto" and self.train.batch_size < 2:
            raise ConfigError(
                "train.method kto estimates its KL baseline from mismatched prompt/completion pairs within a "
                f"micro-batch; train.batch_size must be >= 2, got {self.train.batch_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a type hint; accept ints for floats; raise ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key} must be one of {', '.join(map(str, typing.get_args(hint)))}, got {value!r}")
        return value
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            return hint(value)
        except ValueError:
            raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}") from None
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # `--publish.version 1` arrives as int 1; validation then explains v1
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, checking every key and value against the hints."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(names))}")
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping of {hint.__name__} keys, got {value!r}")
            kwargs[name] = _build(hint, value, f"{key}.")
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """`--a.b value` pairs (or `--a.b=value`) into a nested dict; values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        flag = argv[i]
        if not flag.startswith("--") or len(flag) == 2:
            raise ConfigError(f"expected a --section.key flag, got {flag!r}")
        if "=" in flag:
            dotted, raw = flag[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"flag {flag} needs a value")
            dotted, raw = flag[2:], argv[i + 1]
            i += 2
        dotted = dotted.replace("-", "_")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--{dotted}: {part} is set both as a value and as a section")
        node[leaf] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(values).__name__}")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- dotted CLI overrides, validated."""
    values = read_yaml(path) if path is not None else {}
    values = _merge(values, parse_overrides(overrides or []))
    return _build(Config, values)
