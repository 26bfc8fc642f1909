"""Render and tokenise examples, with a mask of the tokens that are training targets.

Formats, detected per row (the first that fits wins, in this order):

* ``chat`` — ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``.
  Rendered with the tokenizer's own chat template. The loss covers each assistant
  turn: the tokens between the rendering of ``messages[:i]`` with
  ``add_generation_prompt=True`` and the rendering of ``messages[:i + 1]``, i.e. the
  assistant content plus the end-of-turn tokens the template writes after it. The
  renderings are strings (``tokenize=False``) tokenised with
  ``add_special_tokens=False`` — exactly what ``apply_chat_template(tokenize=True)``
  does, because templates write their own BOS — and each prefix's token ids must be a
  prefix of the whole conversation's ids, else an error is raised. Only ``role`` and
  ``content`` of each message reach the template.

  Without a chat template (``tokenizer.chat_template is None``) the Tulu / LESS
  format is used, tokenised as plain text after the tokenizer's BOS (if it adds one)::

      <|system|>\\n{content}\\n
      <|user|>\\n{content}\\n
      <|assistant|>\\n{content}{eos_token}\\n

  with the loss on ``{content}{eos_token}\\n`` of assistant turns (contents are not
  stripped).
* ``prompt_completion`` — ``{"prompt": str, "completion": str}``: BOS (if the tokenizer
  adds one) + prompt tokens + completion tokens + EOS (if the tokenizer has one), each
  part tokenised without special tokens; loss on the completion and EOS.
* ``alpaca`` — ``{"instruction": str, "input": str (optional), "output": str}``: becomes
  the chat ``[user: instruction + "\\n\\n" + input (if non-empty), assistant: output]``.
* ``text`` — ``{"text": str}``: the tokenizer's own special tokens, plus EOS at the end
  if it has one and did not add it; loss on every token but the first.

A field whose value is null counts as absent. Position 0 is never a target (nothing
predicts it). Examples longer than ``max_length`` keep the response: see
:func:`truncate`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gradstore.errors import GradstoreError
from gradstore.grads.data import Record

FORMATS = ("chat", "prompt_completion", "alpaca", "text")
ROLES = ("system", "user", "assistant")

SKIP_NO_RESPONSE = "no response tokens"
SKIP_TRUNCATED = "no response tokens after truncation"

_ACCEPTED = (
    'chat {"messages": [{"role", "content"}, ...]}, '
    'prompt_completion {"prompt", "completion"}, '
    'alpaca {"instruction", "input" (optional), "output"}, '
    'text {"text"}'
)


@dataclass(frozen=True, eq=False)
class TokenizedExample:
    """One tokenised example; ``loss_mask[t]`` marks tokens predicted from position t-1."""

    id: str
    index: int
    input_ids: np.ndarray
    loss_mask: np.ndarray
    subtask: str | None
    content_hash: str
    truncated: bool

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


@dataclass
class TokenizeReport:
    """Tokenised examples, skipped ids by reason, and how many kept examples were cut."""

    examples: list[TokenizedExample]
    skipped: dict[str, list[str]] = field(default_factory=dict)
    truncated: int = 0

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())


def content_hash(input_ids: np.ndarray, loss_mask: np.ndarray) -> str:
    """sha256 (first 32 hex chars) of ids as little-endian int32 + mask as uint8 bytes."""
    h = hashlib.sha256()
    h.update(np.asarray(input_ids).astype("<i4").tobytes())
    h.update(np.asarray(loss_mask).astype(np.uint8).tobytes())
    return h.hexdigest()[:32]


def data_fingerprint(examples: list[TokenizedExample]) -> str:
    """A hash of the tokenised examples (ids, tokens, loss masks, subtasks) in order: a rerun
    on changed data is told apart from one on the same data."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(f"{ex.id}\x00{ex.content_hash}\x00{ex.subtask}\n".encode())
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------- formats


def _present(fields: dict, key: str) -> bool:
    return fields.get(key) is not None


def _need_str(fields: dict, key: str, where: str, fmt: str) -> None:
    value = fields[key]
    if not isinstance(value, str):
        raise GradstoreError(
            f"{where}: field {key!r} is a {type(value).__name__}, but the {fmt} format needs a "
            f"string; fix the row (accepted formats: {_ACCEPTED})"
        )


def _check_messages(messages: Any, where: str) -> None:
    hint = 'messages must be a list of {"role": "system"|"user"|"assistant", "content": str}'
    if not isinstance(messages, list):
        raise GradstoreError(f"{where}: 'messages' is a {type(messages).__name__}; {hint}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise GradstoreError(f"{where}: messages[{i}] is not a role/content object; {hint}")
        if m["role"] not in ROLES:
            raise GradstoreError(
                f"{where}: messages[{i}] has role {m['role']!r}; use one of {', '.join(ROLES)}"
            )
        if not isinstance(m["content"], str):
            raise GradstoreError(
                f"{where}: messages[{i}] content is a {type(m['content']).__name__}; "
                "content must be a string"
            )


def detect_format(fields: dict, where: str) -> str:
    """The row's format (one of FORMATS), after checking its fields' types."""
    if _present(fields, "messages"):
        _check_messages(fields["messages"], where)
        return "chat"
    if _present(fields, "prompt") and _present(fields, "completion"):
        for key in ("prompt", "completion"):
            _need_str(fields, key, where, "prompt_completion")
        return "prompt_completion"
    if _present(fields, "instruction") and _present(fields, "output"):
        for key in ("instruction", "output"):
            _need_str(fields, key, where, "alpaca")
        if _present(fields, "input"):
            _need_str(fields, "input", where, "alpaca")
        return "alpaca"
    if _present(fields, "text"):
        _need_str(fields, "text", where, "text")
        return "text"
    keys = ", ".join(map(str, fields)) or "none"
    raise GradstoreError(
        f"{where}: row matches no example format (its keys: {keys}); accepted formats: {_ACCEPTED}"
    )


# --------------------------------------------------------------------------- tokenizer glue


@dataclass(frozen=True)
class _Tok:
    """What we need to know about a tokenizer, worked out once."""

    tokenizer: Any
    bos_prefix: tuple[int, ...]  # [bos] if the tokenizer adds BOS with special tokens
    bos_id: int | None
    eos_id: int | None
    has_template: bool

    @classmethod
    def of(cls, tokenizer: Any) -> _Tok:
        bos_id = getattr(tokenizer, "bos_token_id", None)
        with_sp = _ids(tokenizer("a", add_special_tokens=True, verbose=False))
        without = _ids(tokenizer("a", add_special_tokens=False, verbose=False))
        adds_bos = (
            bos_id is not None and len(with_sp) > len(without) and with_sp[0] == bos_id
        )
        return cls(
            tokenizer=tokenizer,
            bos_prefix=(bos_id,) if adds_bos else (),
            bos_id=bos_id,
            eos_id=getattr(tokenizer, "eos_token_id", None),
            has_template=getattr(tokenizer, "chat_template", None) is not None,
        )

    def encode(self, text: str, special: bool = False) -> list[int]:
        if not text and not special:
            return []
        return _ids(self.tokenizer(text, add_special_tokens=special, verbose=False))


def _ids(out: Any) -> list[int]:
    """Token ids from a tokenizer output: BatchEncoding/dict, list, array or tensor."""
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):  # a batch of one
        out = out[0]
    return [int(t) for t in out]


def _fallback_render(messages: list[dict], eos: str, add_generation_prompt: bool) -> str:
    parts = []
    for m in messages:
        if m["role"] == "assistant":
            parts.append(f"<|assistant|>\n{m['content']}{eos}\n")
        else:
            parts.append(f"<|{m['role']}|>\n{m['content']}\n")
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)


def _render(tok: _Tok, messages: list[dict], gen: bool, where: str) -> str:
    if not tok.has_template:
        return _fallback_render(messages, tok.tokenizer.eos_token or "", gen)
    try:
        out = tok.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=gen
        )
    except Exception as e:  # jinja TemplateError, template raise_exception, ValueError
        raise GradstoreError(
            f"{where}: the tokenizer's chat template failed on this conversation ({e}); "
            "fix the messages (e.g. role order) or remove the row"
        ) from e
    if isinstance(out, list) and len(out) == 1:
        out = out[0]
    if not isinstance(out, str):
        raise GradstoreError(
            f"{where}: apply_chat_template(tokenize=False) returned {type(out).__name__}, not a "
            "string; use a tokenizer whose chat template renders text"
        )
    return out


def _chat(tok: _Tok, messages: list[dict], where: str) -> tuple[list[int], list[bool]]:
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not any(m["role"] == "assistant" for m in messages):
        return [], []

    def enc(text: str) -> list[int]:
        return list(tok.bos_prefix) + tok.encode(text) if not tok.has_template else tok.encode(text)

    full_text = _render(tok, messages, False, where)
    full = enc(full_text)
    mask = [False] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0 and tok.has_template:
            raise GradstoreError(
                f"{where}: the conversation starts with an assistant turn, which a chat template "
                "cannot place (transformers will not render an empty conversation); start it "
                "with a system or user message"
            )
        start_text = _render(tok, messages[:i], True, where)
        last = i == len(messages) - 1
        end_text = full_text if last else _render(tok, messages[: i + 1], False, where)
        start, end = enc(start_text), enc(end_text)
        if not (start == end[: len(start)] and end == full[: len(end)]):
            kind = (
                "text"
                if not (end_text.startswith(start_text) and full_text.startswith(end_text))
                else "token ids"
            )
            raise GradstoreError(
                f"{where}: the chat template's rendering of messages[:{i}] (with "
                f"add_generation_prompt) / messages[:{i + 1}] is not a {kind} prefix of the whole "
                f"conversation's rendering, so assistant turn {i} cannot be located; the template "
                "rewrites earlier turns or merges tokens across turns — use an append-only chat "
                "template or give the row as prompt/completion"
            )
        for j in range(len(start), len(end)):
            mask[j] = True
    return full, mask


def _alpaca_messages(fields: dict) -> list[dict]:
    user = fields["instruction"]
    if fields.get("input"):
        user = f"{user}\n\n{fields['input']}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": fields["output"]}]


def _prompt_completion(tok: _Tok, prompt: str, completion: str) -> tuple[list[int], list[bool]]:
    head = list(tok.bos_prefix) + tok.encode(prompt)
    tail = tok.encode(completion) + ([tok.eos_id] if tok.eos_id is not None else [])
    return head + tail, [False] * len(head) + [True] * len(tail)


def _text(tok: _Tok, text: str) -> tuple[list[int], list[bool]]:
    if text == "":
        return [], []
    ids = tok.encode(text, special=True)
    if tok.eos_id is not None and (not ids or ids[-1] != tok.eos_id):
        ids.append(tok.eos_id)
    return ids, [True] * len(ids)


# --------------------------------------------------------------------------- truncation


def truncate(
    ids: np.ndarray, mask: np.ndarray, max_length: int, bos_id: int | None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Cut ``ids``/``mask`` to ``max_length`` tokens, keeping the response.

    Short enough: unchanged. Else with ``end`` = last loss token + 1: keep the first
    ``max_length`` tokens if ``end`` fits, otherwise the window of ``max_length`` tokens
    ending at ``end`` (oldest context dropped), with the original leading BOS kept in
    front if there was one. ``mask[0]`` is False afterwards.
    """
    n = ids.shape[0]
    if n <= max_length:
        mask = mask.copy()
        if n:
            mask[0] = False
        return ids, mask, False
    hits = np.flatnonzero(mask)
    end = int(hits[-1]) + 1 if hits.size else n
    if end <= max_length:
        ids, mask = ids[:max_length], mask[:max_length].copy()
    elif bos_id is not None and ids[0] == bos_id:
        keep = max_length - 1
        ids = np.concatenate([ids[:1], ids[end - keep : end]])
        mask = np.concatenate([[False], mask[end - keep : end]])
    else:
        ids, mask = ids[end - max_length : end], mask[end - max_length : end].copy()
    mask[0] = False
    return ids, mask, True


# --------------------------------------------------------------------------- public API


def _check_max_length(max_length: int) -> None:
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise GradstoreError(
            f"max_length {max_length!r} is too small; use an integer of at least 2 "
            "(a prompt token and a target token)"
        )


def _subtask(record: Record, subtask_field: str | None) -> str | None:
    if subtask_field is None:
        value = record.fields.get("subtask")
        return None if value is None else str(value)
    value = record.fields.get(subtask_field)
    if value is None:
        raise GradstoreError(
            f"{record.where}: no {subtask_field!r} field for the subtask; add it to every row "
            "or choose another subtask field"
        )
    return str(value)


def _tokenize(record: Record, tok: _Tok, max_length: int, subtask_field: str | None):
    fields, where = record.fields, record.where
    subtask = _subtask(record, subtask_field)
    fmt = detect_format(fields, where)
    if fmt == "chat":
        ids, mask = _chat(tok, fields["messages"], where)
    elif fmt == "alpaca":
        ids, mask = _chat(tok, _alpaca_messages(fields), where)
    elif fmt == "prompt_completion":
        ids, mask = _prompt_completion(tok, fields["prompt"], fields["completion"])
    else:
        ids, mask = _text(tok, fields["text"])
    ids_a = np.asarray(ids, dtype=np.int64)
    mask_a = np.asarray(mask, dtype=bool)
    if mask_a.size:
        mask_a[0] = False
    if not mask_a.any():
        return SKIP_NO_RESPONSE
    ids_a, mask_a, cut = truncate(ids_a, mask_a, max_length, tok.bos_id)
    if not mask_a.any():
        return SKIP_TRUNCATED
    ids_a = np.ascontiguousarray(ids_a, dtype=np.int64)
    mask_a = np.ascontiguousarray(mask_a, dtype=bool)
    ids_a.setflags(write=False)
    mask_a.setflags(write=False)
    return TokenizedExample(
        id=record.id,
        index=record.index,
        input_ids=ids_a,
        loss_mask=mask_a,
        subtask=subtask,
        content_hash=content_hash(ids_a, mask_a),
        truncated=cut,
    )


def tokenize_record(
    record: Record, tokenizer: Any, max_length: int = 2048, subtask_field: str | None = None
) -> TokenizedExample | str:
    """Tokenise one record; a string return value is the reason it was skipped."""
    _check_max_length(max_length)
    return _tokenize(record, _Tok.of(tokenizer), max_length, subtask_field)


def tokenize_records(
    records: list[Record],
    tokenizer: Any,
    max_length: int = 2048,
    subtask_field: str | None = None,
    progress: bool = False,
) -> TokenizeReport:
    """Tokenise every record; skipped ones are listed by reason, never silently dropped."""
    _check_max_length(max_length)
    tok = _Tok.of(tokenizer)
    report = TokenizeReport(examples=[])
    show = progress and len(records) >= 2000
    for record in tqdm(records, desc="tokenise", unit="ex", disable=not show, mininterval=1.0):
        out = _tokenize(record, tok, max_length, subtask_field)
        if isinstance(out, str):
            report.skipped.setdefault(out, []).append(record.id)
            continue
        report.examples.append(out)
        report.truncated += int(out.truncated)
    return report
