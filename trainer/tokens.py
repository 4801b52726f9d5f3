"""Conversations -> token ids with completion-only labels, packing, batching and collation.

Labels are -100 (ignored by the loss) on every token that is not an assistant answer: system,
user, template markup, and the assistant header. Each answer is trained up to and including the
EOS token (`<|im_end|>` for ChatML templates) so the served model learns to stop.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.data import Messages
from trainer.errors import ConfigError, DataError

IGNORE = -100

NAMED_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
        " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
        "{% endif %}"
    ),
}


def apply_template_override(tokenizer, name_or_path: str | None) -> None:
    """data.chat_template: None keeps the tokenizer's; a name from NAMED_TEMPLATES or a .jinja file."""
    if name_or_path is None:
        if not tokenizer.chat_template:
            raise ConfigError("the tokenizer has no chat template; set data.chat_template (e.g. chatml)")
        return
    if name_or_path in NAMED_TEMPLATES:
        tokenizer.chat_template = NAMED_TEMPLATES[name_or_path]
    elif Path(name_or_path).is_file():
        tokenizer.chat_template = Path(name_or_path).read_text()
    else:
        raise ConfigError(
            f"data.chat_template {name_or_path!r} is neither a named template ({', '.join(NAMED_TEMPLATES)}) nor a file"
        )


def render(tokenizer, messages: Messages, add_generation_prompt: bool) -> str:
    """The conversation as the chat template renders it; a Conversation's `tools` go in as `tools`."""
    tools = getattr(messages, "tools", None)
    if tools is not None or any(m.get("tool_calls") for m in messages):
        check_template_knows_tools(tokenizer.chat_template)
    return tokenizer.apply_chat_template(
        list(messages), tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def check_template_knows_tools(template: str | None) -> None:
    """A template that never reads `tools` / `tool_calls` would silently drop them from training."""
    missing = [word for word in ("tools", "tool_calls") if word not in (template or "")]
    if missing:
        raise DataError(
            f"the chat template ignores {' and '.join(missing)}, but the data has tool calls; set "
            "data.chat_template to a template that renders them (configs/templates/tool-pythonic.jinja)"
        )


def template_record(tokenizer, name_or_path: str | None) -> dict[str, str]:
    """The manifest's `chat_template`: where it came from and the sha256 of the exact text trained with."""
    text = tokenizer.chat_template or ""
    return {"source": name_or_path or "tokenizer", "sha256": hashlib.sha256(text.encode()).hexdigest()}


def render_segments(tokenizer, messages: Messages) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_trained) pieces; trained = answers + EOS."""
    eos = tokenizer.eos_token
    segments: list[tuple[str, bool]] = []
    done = ""  # rendered text covered by segments so far
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise DataError(
                "the chat template does not render conversations prefix-consistently, so answers "
                "cannot be located; set data.chat_template to a simpler template (e.g. chatml)"
            )
        segments.append((prompt[len(done) :], False))
        answer = full[len(prompt) :]
        content = msg.get("content") or ""  # None for a tool-call turn: the call text is the answer
        start = len(content) if answer.startswith(content) else 0
        end = answer.find(eos, start)
        if end < 0:  # template does not close the turn with EOS: append one
            segments.append((answer + eos, True))
            done = full
            continue
        end += len(eos)
        segments.append((answer[:end], True))
        if answer[end:]:
            segments.append((answer[end:], False))
        done = full
    return segments


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] = field(default_factory=list)  # set for packed rows only

    @property
    def n_trained(self) -> int:
        return sum(1 for t in self.labels[1:] if t != IGNORE)


def encode(tokenizer, messages: Messages, max_seq_len: int) -> Encoded:
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in render_segments(tokenizer, messages):
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += tokens
        labels += tokens if trained else [IGNORE] * len(tokens)
    return Encoded(ids[:max_seq_len], labels[:max_seq_len])


def encode_completion(tokenizer, messages: Messages) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, completion ids, completion labels): the last assistant answer is the completion.

    Earlier assistant turns belong to the prompt (not trained). prompt + completion ids equal
    encode()'s ids, so a prompt can be joined to another row's completion (kto's KL baseline).
    """
    segments = render_segments(tokenizer, messages)
    last = max(i for i, (_, trained) in enumerate(segments) if trained)
    tokens = [tokenizer(text, add_special_tokens=False)["input_ids"] for text, _ in segments]
    prompt = [t for part in tokens[:last] for t in part]
    completion = [t for part in tokens[last:] for t in part]
    labels: list[int] = []
    for part, (_, trained) in zip(tokens[last:], segments[last:], strict=True):
        labels += part if trained else [IGNORE] * len(part)
    return prompt, completion, labels


def encode_all(tokenizer, conversations: list[Messages], max_seq_len: int) -> tuple[list[Encoded], int]:
    """Encode every conversation; drop (and count) those whose answers were truncated away."""
    out, dropped = [], 0
    for messages in conversations:
        enc = encode(tokenizer, messages, max_seq_len)
        if enc.n_trained == 0:
            dropped += 1
            continue
        out.append(enc)
    return out, dropped


def pack(examples: list[Encoded], max_seq_len: int, seed: int) -> list[Encoded]:
    """Concatenate shuffled examples into rows of <= max_seq_len tokens.

    Position ids restart at 0 for every example; the model builds a block-diagonal causal mask
    from them (no attention across examples), so a packed row trains like separate rows.
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    rows: list[Encoded] = []
    row = Encoded([], [], [])
    for i in order:
        ex = examples[i]
        if row.input_ids and len(row.input_ids) + len(ex.input_ids) > max_seq_len:
            rows.append(row)
            row = Encoded([], [], [])
        row.input_ids += ex.input_ids
        # the first token of each example has no in-example context: never a target
        row.labels += [IGNORE] + ex.labels[1:]
        row.position_ids += list(range(len(ex.input_ids)))
    if row.input_ids:
        rows.append(row)
    return rows


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """One epoch's micro-batches (example indices), deterministic in (seed, epoch).

    With length grouping, windows of 16 batches are sorted by length before slicing, so a batch
    holds similar lengths (little padding) while batch order stays random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 16
        order = [
            i for s in range(0, len(order), window) for i in sorted(order[s : s + window], key=lengths.__getitem__)
        ]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch. Packed rows carry position_ids instead of an attention mask."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    packed = bool(examples[0].position_ids)
    mask_or_pos = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        if packed:  # padding continues as one more "example" starting at position 0
            mask_or_pos[row, :n] = torch.tensor(ex.position_ids)
            mask_or_pos[row, n:] = torch.arange(width - n)
        else:
            mask_or_pos[row, :n] = 1
    batch = {"input_ids": input_ids, "labels": labels}
    batch["position_ids" if packed else "attention_mask"] = mask_or_pos
    return batch


@dataclass
class Batches:
    """Micro-batches as a pure function of the step: the data position needs no state."""

    examples: list[Encoded]
    batch_size: int
    grad_accum: int
    seed: int
    group_by_length: bool
    world: int = 1
    rank: int = 0
    _epochs: dict[int, list[list[int]]] = field(default_factory=dict)  # cache: the current epoch only

    def _micro(self, index: int) -> list[Encoded]:
        """The index-th micro-batch of the endless stream of epochs (global, all processes)."""
        per_epoch = math.ceil(len(self.examples) / self.batch_size)
        epoch = index // per_epoch
        if epoch not in self._epochs:
            lengths = [len(e.input_ids) for e in self.examples]
            self._epochs = {epoch: epoch_batches(lengths, self.batch_size, self.seed, epoch, self.group_by_length)}
        return [self.examples[i] for i in self._epochs[epoch][index % per_epoch]]

    def for_step(self, step: int) -> tuple[list[list[Encoded]], int, int]:
        """(this process's micro-batches, trained tokens in the whole step, all tokens in the step)."""
        first = step * self.world * self.grad_accum
        everyone = [self._micro(first + i) for i in range(self.world * self.grad_accum)]
        trained = sum(e.n_trained for micro in everyone for e in micro)
        tokens = sum(len(e.input_ids) for micro in everyone for e in micro)
        mine = everyone[self.rank * self.grad_accum : (self.rank + 1) * self.grad_accum]
        return mine, trained, tokens
