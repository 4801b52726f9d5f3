"""Generation metrics: hand-checked values, and the same numbers the libraries give directly."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from trainer.config import load_config
from trainer.errors import ConfigError
from trainer.evaluation.metrics import markdown_table, score

REFERENCES = ['{"city": "Paris", "qty": 2}', "the cat sat on the mat", '{"a": 1}']
REPLIES = ['{"city": "Paris", "qty": 2}', "the cat on the mat", '{"a": 1']  # hit, near miss, broken JSON
ALL = ["exact_match", "json_valid", "rouge_l", "bleu"]


def test_hand_checked_values():
    values = score(REPLIES, REFERENCES, ALL)
    assert values["exact_match"] == pytest.approx(1 / 3)
    assert values["json_valid"] == pytest.approx(1 / 3)  # the third reply lacks its closing brace
    # ROUGE-L of the near miss: LCS 5 words; P = 5/5, R = 5/6, F1 = 10/11; the others are 1.0 each
    assert values["rouge_l"] == pytest.approx((1 + 10 / 11 + 1) / 3)
    assert score(REFERENCES, REFERENCES, ["bleu"])["bleu"] == pytest.approx(100.0)


def test_same_numbers_as_the_libraries():
    values = score([f"  {r}\n" for r in REPLIES], REFERENCES, ["rouge_l", "bleu"])  # replies are stripped
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(ref, reply)["rougeL"].fmeasure for ref, reply in zip(REFERENCES, REPLIES, strict=True)]
    assert values["rouge_l"] == pytest.approx(sum(rouge) / 3, abs=1e-12)
    assert values["bleu"] == pytest.approx(sacrebleu.corpus_bleu(REPLIES, [REFERENCES]).score, abs=1e-12)
    assert 0 < values["bleu"] < 100


def test_order_and_table():
    values = score(REPLIES, REFERENCES, ["bleu", "exact_match"])
    assert list(values) == ["bleu", "exact_match"]
    table = markdown_table({"demo-json@v1": {"n": 3, **values}}, ["bleu", "exact_match"])
    assert table.splitlines()[0] == "| model | n | bleu | exact_match |"
    assert table.splitlines()[2] == f"| demo-json@v1 | 3 | {values['bleu']:.2f} | 0.333 |"


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match="unknown metric 'meteor'"):
        score(["a"], ["a"], ["meteor"])
    with pytest.raises(ConfigError, match="eval.metrics: unknown meteor; choose from exact_match, json_valid"):
        load_config(None, ["--eval.metrics", "[exact_match, meteor]"])
