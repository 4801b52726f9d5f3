"""Completion-only labels token by token, EOS, truncation, packing and collation (real tokenizer)."""

from __future__ import annotations

from trainer.tokens import IGNORE, Encoded, collate, encode, epoch_batches, pack, render

MULTI_TURN = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome"},
]


def test_mask_token_by_token_on_multi_turn(tokenizer):
    enc = encode(tokenizer, MULTI_TURN, max_seq_len=512)
    # the ids are exactly the tokenized template rendering (what the server will see)
    full = render(tokenizer, MULTI_TURN, add_generation_prompt=False)
    assert tokenizer.decode(enc.input_ids) == full
    trained = [(i, t) for i, (t, label) in enumerate(zip(enc.input_ids, enc.labels, strict=True)) if label != IGNORE]
    for i, t in trained:
        assert enc.labels[i] == t  # a trained label is the token itself (shifted in the loss)
    # the trained tokens are exactly the two answers, each followed by EOS, nothing else
    spans, current = [], []
    for pos in range(len(enc.input_ids)):
        if enc.labels[pos] != IGNORE:
            current.append(enc.input_ids[pos])
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert [tokenizer.decode(s) for s in spans] == ["Paris<|im_end|>", "Rome<|im_end|>"]
    assert all(s[-1] == tokenizer.eos_token_id for s in spans)
    # every system/user/header token is masked
    masked_text = tokenizer.decode([t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab == IGNORE])
    for text in ("Answer in one word.", "Capital of France?", "And of Italy?", "<|im_start|>assistant"):
        assert text in masked_text


def test_eos_is_appended_when_the_template_has_none(tokenizer):
    original = tokenizer.chat_template
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    try:
        enc = encode(tokenizer, MULTI_TURN[1:3], max_seq_len=512)
    finally:
        tokenizer.chat_template = original
    trained = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert tokenizer.decode(trained).startswith("Paris") and trained[-1] == tokenizer.eos_token_id


def test_truncation(tokenizer):
    enc = encode(tokenizer, MULTI_TURN, max_seq_len=20)
    assert len(enc.input_ids) == len(enc.labels) == 20


def test_packing_resets_positions_and_masks_boundaries():
    a = Encoded([1, 2, 3], [IGNORE, 2, 3])
    b = Encoded([4, 5], [IGNORE, 5])
    c = Encoded([6, 7, 8, 9], [IGNORE, IGNORE, 8, 9])
    rows = pack([a, b, c], max_seq_len=6, seed=0)
    assert sum(len(r.input_ids) for r in rows) == 9 and len(rows) == 2
    assert sorted(t for r in rows for t in r.input_ids) == list(range(1, 10))
    for row in rows:
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        assert all(row.labels[i] == IGNORE for i in starts)  # no target across a boundary
        assert len(row.input_ids) <= 6


def test_collate_pads_right_and_masks_padding():
    batch = collate([Encoded([1, 2, 3], [IGNORE, 2, 3]), Encoded([4], [IGNORE])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [IGNORE, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    packed = collate([Encoded([1, 2, 3], [IGNORE, 2, 3], [0, 1, 0]), Encoded([4], [IGNORE], [0])], pad_id=0)
    assert "attention_mask" not in packed
    assert packed["position_ids"].tolist() == [[0, 1, 0], [0, 0, 1]]


def test_epoch_batches_are_deterministic_and_cover_everything():
    lengths = [5, 50, 7, 48, 6, 49, 8, 51]
    one = epoch_batches(lengths, 2, seed=1, epoch=0, group_by_length=True)
    assert one == epoch_batches(lengths, 2, seed=1, epoch=0, group_by_length=True)
    assert sorted(i for b in one for i in b) == list(range(8))
    assert one != epoch_batches(lengths, 2, seed=1, epoch=1, group_by_length=True)
    # grouped batches hold similar lengths: much less padding than random batches
    pad = lambda bs: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert pad(one) == 4 < pad(epoch_batches(lengths, 2, seed=1, epoch=0, group_by_length=False))
