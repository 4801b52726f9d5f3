"""KTO's rated rows: accepted shapes, bad rows as file:line errors or skipped, config keys, encoding."""

from __future__ import annotations

import pytest

from tests.trainer.sample_data import chat, write_jsonl
from trainer.config import load_config
from trainer.errors import ConfigError, DataError
from trainer.objectives import objective_for
from trainer.preferences import is_rated_file, load_rated_file, to_rated

USER = [{"role": "user", "content": "Q"}]
GOOD = {"prompt": "Q", "completion": "A", "label": True}


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": "Q", "completion": "A", "label": False},
        {"prompt": USER, "completion": [{"role": "assistant", "content": "A"}], "label": False},
        {"messages": USER, "completion": "A", "label": False},
    ],
)
def test_shapes_become_a_conversation_and_a_label(record):
    assert to_rated(record) == (USER + [{"role": "assistant", "content": "A"}], False)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"prompt": "Q", "completion": "A"}, r"r\.jsonl:2: 'label' must be true .* it is missing"),
        ({"prompt": "Q", "completion": "A", "label": "yes"}, r"r\.jsonl:2: 'label' must be .*got 'yes'"),
        ({"prompt": "Q", "completion": "A", "label": 1}, r"r\.jsonl:2: 'label' must be .*got 1"),
        ({"prompt": "Q", "completion": "  ", "label": True}, r"r\.jsonl:2: 'completion' must be a non-empty string"),
        ({"prompt": "Q", "label": True}, r"r\.jsonl:2: missing field 'completion'"),
    ],
)
def test_bad_rows_are_file_line_errors(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "r.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(DataError, match=message):
        load_rated_file(str(path))


def test_bad_rows_are_counted_and_skipped_with_skip_bad_lines(tmp_path):
    rows = [GOOD, {"prompt": "Q", "completion": "A"}, {"prompt": "Q", "completion": "", "label": False}, "{broken"]
    path = write_jsonl(tmp_path / "r.jsonl", rows + [{"prompt": "Q", "completion": "B", "label": False}])
    data = load_rated_file(str(path), skip_bad_lines=True)
    assert (len(data.conversations), data.labels, data.skipped) == (2, [True, False], 3)
    cfg = load_config(None, ["--train.method", "kto", "--data.train", str(path), "--data.eval", "null"])
    with pytest.raises(DataError, match=r"r\.jsonl:2: "):
        objective_for("kto").load_data(cfg)
    cfg = load_config(None, ["--train.method", "kto", "--data.train", str(path), "--data.eval", "null"] + [
        "--data.skip_bad_lines", "true"])  # fmt: skip
    train, _ = objective_for("kto").load_data(cfg)
    assert train.skipped == 3 and train.labels == [True, False]


def test_sft_run_on_a_rated_file_names_kto(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [GOOD])
    assert is_rated_file(str(path))
    cfg = load_config(None, ["--data.train", str(path), "--data.eval", "null"])
    with pytest.raises(ConfigError, match="--train.method kto"):
        objective_for("sft").load_data(cfg)


def test_kto_eval_file_may_be_rated_or_a_golden_chat_set(tmp_path):
    rated = write_jsonl(tmp_path / "r.jsonl", [GOOD, {"prompt": "Q2", "completion": "B", "label": False}])
    golden = write_jsonl(tmp_path / "g.jsonl", [chat("Q", "A")])
    kto = objective_for("kto")
    _, ev = kto.load_data(
        load_config(None, ["--train.method", "kto", "--data.train", str(rated), "--data.eval", str(rated)])
    )
    assert ev is not None and ev.labels == [True, False]
    assert kto.eval_conversations(ev) == [USER + [{"role": "assistant", "content": "A"}]]  # desirable rows only
    _, ev = kto.load_data(
        load_config(None, ["--train.method", "kto", "--data.train", str(rated), "--data.eval", str(golden)])
    )
    assert ev is not None and not ev.labels and kto.eval_conversations(ev) == ev.conversations


def test_val_ratio_split_keeps_labels_with_their_rows(tmp_path):
    rows = [{"prompt": f"Q{i}", "completion": f"A{i}", "label": i % 3 == 0} for i in range(10)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    args = ["--train.method", "kto", "--data.train", str(path), "--data.eval", "null", "--data.val_ratio", "0.3"]
    train, val = objective_for("kto").load_data(load_config(None, args))
    assert val is not None and len(train.conversations) == 7 and len(val.conversations) == 3
    for data in (train, val):
        for conversation, label in zip(data.conversations, data.labels, strict=True):
            assert label == (int(conversation[-1]["content"][1:]) % 3 == 0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kto.beta", "0"], "kto.beta must be > 0, got 0"),
        (["--kto.desirable_weight", "-1"], "kto.desirable_weight must be > 0"),
        (["--kto.undesirable_weight", "0"], "kto.undesirable_weight must be > 0"),
        (["--kto.gamma", "1"], "unknown config key 'kto.gamma'"),
        (["--train.method", "kto", "--train.batch_size", "1"], "train.batch_size must be >= 2"),
    ],
)
def test_kto_config_errors_name_the_key(flags, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, flags)


def test_completion_encoding_joins_any_prompt_to_any_completion(tokenizer):
    from trainer.tokens import IGNORE, encode, encode_completion

    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    messages = earlier + [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Answer"}]
    prompt, completion, labels = encode_completion(tokenizer, messages)
    whole = encode(tokenizer, messages, 512)
    assert prompt + completion == whole.input_ids  # the same ids the other objectives train on
    trained = [t for t in labels if t != IGNORE]
    assert tokenizer.decode(trained) == "Answer" + tokenizer.eos_token  # only the last answer, up to its EOS
    assert sum(t != IGNORE for t in whole.labels) > len(trained)  # sft trains the earlier answer too
