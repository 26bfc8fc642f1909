"""The controlled instruction pool for the end-to-end benchmark (deterministic, stdlib only).

Eight skills, each answerable by exact match:

    add       "Add 37 and 48."                              -> "85"
    words     "Write 47 in words."                          -> "forty-seven"
    reverse   "Reverse the letters of 'tamoki'."            -> "ikomat"
    sort      "Sort in ascending order: 41, 7, 19."         -> "7, 19, 41"
    convert   "Convert 7 km to m."                          -> "7000"
    count     "How many times does 'a' occur in 'banana'?"  -> "3"
    roman     "Write 14 in Roman numerals."                 -> "XIV"
    upper     "Write 'green apple' in capital letters."     -> "GREEN APPLE"

Writes to ``--out``:

* ``pool.jsonl``: ``--pool-size`` examples (default 2,000), shuffled; 5% of them
  (``--dup-share``) are planted near-duplicates: an earlier pool example
  trivially re-worded ("Please ...", "Quick question: ...") with the same
  answer. Each row carries ``id``, ``skill``, ``messages``, ``group`` (the id
  of the original; equal for an example and its copies) and ``dup_of`` (the
  original's id, or null).
* ``target-<skill>.jsonl``: ``--target-size`` examples per skill (default 20).
* ``test-<skill>.jsonl``: ``--test-size`` examples per skill (default 100).

Pool, target and test sets never share an instance (the same numbers, word or
phrase), so nothing tested was seen in training. The same arguments always give
byte-identical files.

Scenarios built from these (``mixtures``, ``flooded``; the files above do not change):

* ``target-mix-<name>.jsonl`` / ``test-mix-<name>.jsonl``: mixture targets, 2-3 skills in
  unequal shares (``MIXTURES``, e.g. 60/30/10) of the skills' own target and test rows;
* a duplicate-flooded pool: the same size, at least 30% of it copies in families of 5-50
  (an original and its copies, exact or re-worded).

    python benchmarks/e2e/make_pool.py --out bench-e2e/data
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

SKILLS = ["add", "words", "reverse", "sort", "convert", "count", "roman", "upper"]

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
        "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
        "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

WORDS = [
    "planet", "garden", "window", "silver", "bridge", "pocket", "candle", "forest", "butter",
    "yellow", "rabbit", "pencil", "orange", "basket", "winter", "summer", "spring", "market",
    "doctor", "island", "hammer", "kitten", "ladder", "mirror", "pepper", "rocket", "ticket",
    "wallet", "anchor", "button", "carpet", "dinner", "engine", "finger", "guitar", "jacket",
    "kettle", "lemon", "monkey", "needle", "parrot", "river", "tunnel", "valley", "apple",
    "beach", "cloud", "dream", "eagle", "flame", "grape", "house", "light", "money", "night",
    "ocean", "piano", "queen", "snake", "table", "voice", "water", "zebra", "brush", "chair",
    "dance", "earth", "field", "horse", "juice", "knife", "mouse", "paint", "radio", "storm",
    "tiger", "wheel", "castle", "dragon", "flower", "jungle", "marble", "school", "spider",
    "bottle", "cotton", "circle", "purple", "stone", "bread", "sugar", "train", "green",
    "black", "white", "brown", "heart", "sheep", "truck", "cheese", "coffee", "shadow",
]

# (from, to, factor): "Convert 7 km to m." -> 7000
UNITS = [("km", "m", 1000), ("m", "cm", 100), ("kg", "g", 1000), ("hours", "minutes", 60),
         ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7),
         ("litres", "millilitres", 1000), ("cm", "mm", 10), ("years", "months", 12)]

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]

REWORDINGS = [
    "Please {}", "Quick question: {}", "{} Thanks!", "Could you help? {}", "Task: {}",
]


def words_of(n: int) -> str:
    """English words for 0 <= n <= 999 ('forty-seven', 'three hundred and five')."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    rest = n % 100
    head = f"{ONES[n // 100]} hundred"
    return head if rest == 0 else f"{head} and {words_of(rest)}"


def roman_of(n: int) -> str:
    out = []
    for value, sym in [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"),
                       (90, "XC"), (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"),
                       (4, "IV"), (1, "I")]:
        while n >= value:
            out.append(sym)
            n -= value
    return "".join(out)


def pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


# Each generator returns (instance key, prompt, answer); the key decides uniqueness.
def gen_add(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    t = rng.choice(["Add {a} and {b}.", "What is {a} plus {b}?", "Compute {a} + {b}."])
    return f"{a}+{b}", t.format(a=a, b=b), str(a + b)


def gen_words(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(1, 999)
    t = rng.choice(["Write {n} in words.", "Spell out the number {n} in English words."])
    return str(n), t.format(n=n), words_of(n)


def gen_reverse(rng: random.Random) -> tuple[str, str, str]:
    w = pseudo_word(rng)
    t = rng.choice(["Reverse the letters of '{w}'.", "Write '{w}' backwards."])
    return w, t.format(w=w), w[::-1]


def gen_sort(rng: random.Random) -> tuple[str, str, str]:
    xs = rng.sample(range(1, 100), rng.randint(3, 5))
    t = rng.choice(["Sort in ascending order: {xs}.", "Order these numbers from smallest "
                    "to largest: {xs}."])
    return ",".join(map(str, xs)), t.format(xs=", ".join(map(str, xs))), ", ".join(
        map(str, sorted(xs)))


def gen_convert(rng: random.Random) -> tuple[str, str, str]:
    src, dst, f = rng.choice(UNITS)
    x = rng.randint(2, 99)
    t = rng.choice(["Convert {x} {src} to {dst}.", "How many {dst} are in {x} {src}?"])
    return f"{x}{src}", t.format(x=x, src=src, dst=dst), str(x * f)


def gen_count(rng: random.Random) -> tuple[str, str, str]:
    w = "".join(rng.sample(WORDS, 2))
    # the count first, then a letter with it: drawing a letter would make "1" the answer
    # 4 times in 5, which a constant answer gets right (no room to learn)
    by_count: dict[int, list[str]] = {}
    for c in sorted(set(w)):
        by_count.setdefault(w.count(c), []).append(c)
    ch = rng.choice(by_count[rng.choice(sorted(by_count))])
    t = rng.choice(["How many times does the letter '{c}' occur in '{w}'?",
                    "Count the letter '{c}' in '{w}'."])
    return f"{ch}:{w}", t.format(c=ch, w=w), str(w.count(ch))


def gen_roman(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(1, 899)
    t = rng.choice(["Write {n} in Roman numerals.", "Convert {n} to a Roman numeral."])
    return str(n), t.format(n=n), roman_of(n)


def gen_upper(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.sample(WORDS, 2)
    t = rng.choice(["Write '{p}' in capital letters.", "Convert '{p}' to upper case."])
    return f"{a} {b}", t.format(p=f"{a} {b}"), f"{a} {b}".upper()


GENERATORS: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "add": gen_add, "words": gen_words, "reverse": gen_reverse, "sort": gen_sort,
    "convert": gen_convert, "count": gen_count, "roman": gen_roman, "upper": gen_upper,
}


def row(rid: str, skill: str, prompt: str, answer: str, **extra) -> dict:
    return {"id": rid, "skill": skill,
            "messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": answer}], **extra}


def unique_instances(skill: str, n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    seen: set[str] = set()
    out = []
    tries = 0
    while len(out) < n:
        key, prompt, answer = GENERATORS[skill](rng)
        tries += 1
        if tries > 200 * n:
            raise SystemExit(f"make_pool: skill {skill!r} has too few distinct instances "
                             f"for {n} examples; lower the sizes")
        if key in seen:
            continue
        seen.add(key)
        out.append((key, prompt, answer))
    return out


def build(pool_size: int = 2000, dup_share: float = 0.05, target_size: int = 20,
          test_size: int = 100, seed: int = 0) -> dict[str, list[dict]]:
    """All files' rows, by file name."""
    rng = random.Random(seed)
    n_dups = round(pool_size * dup_share)
    n_unique = pool_size - n_dups
    per_skill = [n_unique // len(SKILLS) + (i < n_unique % len(SKILLS))
                 for i in range(len(SKILLS))]
    files: dict[str, list[dict]] = {}
    pool: list[dict] = []
    for skill, n_pool in zip(SKILLS, per_skill, strict=True):
        inst = unique_instances(skill, n_pool + target_size + test_size, rng)
        pool += [row(f"{skill}-{i:04d}", skill, p, a, group=f"{skill}-{i:04d}", dup_of=None)
                 for i, (_, p, a) in enumerate(inst[:n_pool])]
        files[f"target-{skill}.jsonl"] = [
            row(f"{skill}-target-{i:03d}", skill, p, a)
            for i, (_, p, a) in enumerate(inst[n_pool : n_pool + target_size])]
        files[f"test-{skill}.jsonl"] = [
            row(f"{skill}-test-{i:03d}", skill, p, a)
            for i, (_, p, a) in enumerate(inst[n_pool + target_size :])]
    for orig in rng.sample(pool, n_dups):
        prompt = rng.choice(REWORDINGS).format(orig["messages"][0]["content"])
        pool.append(row(f"{orig['id']}-dup", orig["skill"], prompt,
                        orig["messages"][1]["content"], group=orig["id"], dup_of=orig["id"]))
    rng.shuffle(pool)
    files["pool.jsonl"] = pool
    return files


MIXTURES: dict[str, dict[str, float]] = {
    "convert60-sort30-words10": {"convert": 0.6, "sort": 0.3, "words": 0.1},
    "count70-upper30": {"count": 0.7, "upper": 0.3},
    "sort50-count30-convert20": {"sort": 0.5, "count": 0.3, "convert": 0.2},
}
"""Mixture targets: sub-skills in unequal shares of the target's rows (the selector is given
no labels; the rows keep their ``skill`` for scoring)."""


def shares(n: int, mix: dict[str, float]) -> dict[str, int]:
    """``n`` rows split by ``mix``'s shares (largest remainders; every sub-skill >= 1)."""
    raw = {k: n * v / sum(mix.values()) for k, v in mix.items()}
    got = {k: max(1, int(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - int(raw[k]), reverse=True):
        if sum(got.values()) >= n:
            break
        got[k] += 1
    return got


def mixtures(files: dict[str, list[dict]], specs: dict[str, dict[str, float]] = MIXTURES,
             ) -> dict[str, list[dict]]:
    """``target-mix-<name>.jsonl`` and ``test-mix-<name>.jsonl`` for each mixture: rows of
    the skills' own target and test sets (so still disjoint from the pool), in the mixture's
    shares of the target and test sizes. Deterministic: the first rows of each set."""
    out = {}
    for name, mix in specs.items():
        for kind in ("target", "test"):
            size = len(files[f"{kind}-{next(iter(mix))}.jsonl"])
            rows = []
            for skill, n in shares(size, mix).items():
                pool = files[f"{kind}-{skill}.jsonl"]
                if n > len(pool):
                    raise SystemExit(f"make_pool: mixture {name!r} needs {n} {kind} rows of "
                                     f"{skill!r}, the set has {len(pool)}")
                rows += pool[:n]
            out[f"{kind}-mix-{name}.jsonl"] = rows
    return out


def flooded(pool: list[dict], share: float = 0.3, sizes: tuple[int, int] = (5, 50),
            seed: int = 0) -> list[dict]:
    """A pool of the same size with at least ``share`` of it in families of ``sizes`` copies
    (an original and its copies, half exact with a new id, half re-worded), the rest the
    original pool's unique examples. Rows keep ``group`` (the original's id) and ``dup_of``."""
    rng = random.Random(f"flood-{seed}")
    unique = [r for r in pool if r["dup_of"] is None]
    order = rng.sample(unique, len(unique))
    rows, copies, i = [], 0, 0
    while copies < share * len(pool):
        orig, size = order[i], rng.randint(*sizes)
        i += 1
        rows.append(orig)
        for c in range(size - 1):
            prompt = orig["messages"][0]["content"]
            if c % 2:
                prompt = rng.choice(REWORDINGS).format(prompt)
            rows.append(row(f"{orig['id']}-copy{c:02d}", orig["skill"], prompt,
                            orig["messages"][1]["content"], group=orig["id"],
                            dup_of=orig["id"]))
            copies += 1
    rows += order[i: i + max(0, len(pool) - len(rows))]  # the rest: unique examples
    rng.shuffle(rows)
    return rows


def write(out: Path, files: dict[str, list[dict]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out / name).write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pool-size", type=int, default=2000)
    ap.add_argument("--dup-share", type=float, default=0.05)
    ap.add_argument("--target-size", type=int, default=20)
    ap.add_argument("--test-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    files = build(a.pool_size, a.dup_share, a.target_size, a.test_size, a.seed)
    write(a.out, files)
    print(f"wrote {len(files['pool.jsonl'])} pool examples and {len(SKILLS)} target/test sets "
          f"to {a.out}")


if __name__ == "__main__":
    main()
