"""Training objectives by train.method: each owns its data, its reference and its loss.

objective = objective_for(cfg.train.method)   # a class; the interface: trainer/objectives/base.py

sft      cross-entropy on answer tokens                       trainer/objectives/sft.py
dpo      sigmoid DPO on preference pairs                      trainer/objectives/dpo.py
distill  CE + KL to a teacher's logits                        trainer/objectives/distill.py
kto      KTO on rated (thumbs up/down), unpaired answers      trainer/objectives/kto.py
"""

from __future__ import annotations

from trainer.errors import ConfigError
from trainer.objectives.base import Objective, Setting
from trainer.objectives.distill import Distill, distill_kl
from trainer.objectives.dpo import DPO, Pair, chosen_nll, dpo_losses
from trainer.objectives.kto import KTO, RatedAnswer, kto_losses
from trainer.objectives.logps import answer_logits, sequence_logps, token_logps
from trainer.objectives.sft import SFT

OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (SFT, DPO, Distill, KTO)}


def objective_for(method: str) -> type[Objective]:
    if method not in OBJECTIVES:
        raise ConfigError(f"train.method must be one of {', '.join(OBJECTIVES)}, got {method!r}")
    return OBJECTIVES[method]


__all__ = [
    "DPO", "KTO", "OBJECTIVES", "SFT", "Distill", "Objective", "Pair", "RatedAnswer", "Setting",
    "answer_logits", "chosen_nll", "distill_kl", "dpo_losses", "kto_losses", "objective_for",
    "sequence_logps", "token_logps",
]  # fmt: skip
