"""Generate the small, deterministic demo dataset used by `make demo`.

Writes two JSONL files of chat-style instruction examples:

* ``demo_pool.jsonl``: 300 examples, exactly 50 for each of 6 skills, shuffled.
* ``demo_target.jsonl``: 10 examples of the "reverse" skill whose words never
  appear in any pool prompt.
* ``demo_test.jsonl``: 60 held-out "reverse" examples (``gradstore evaluate``), on words
  that neither the target nor any pool "reverse" prompt uses.

Every answer is exactly checkable. Standard library only; the same seed always
gives byte-identical files.

    python examples/make_demo_data.py [--out examples] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

POOL_PER_SKILL = 50
N_TARGET = 10
N_TEST = 60
TARGET_SKILL = "reverse"
SKILLS = ["arithmetic", "reverse", "capital", "sort", "uppercase", "count"]

# ~150 common English words (4-8 letters, no palindromes), in a fixed order.
WORDS = [
    "planet", "garden", "window", "silver", "bridge", "pocket", "candle", "forest",
    "butter", "yellow", "rabbit", "pencil", "orange", "basket", "winter", "summer",
    "spring", "autumn", "market", "doctor", "island", "hammer", "kitten", "ladder",
    "mirror", "napkin", "pepper", "rocket", "saddle", "ticket", "velvet", "wallet",
    "anchor", "button", "carpet", "dinner", "engine", "finger", "guitar", "helmet",
    "jacket", "kettle", "lemon", "monkey", "needle", "oyster", "parrot", "quiet",
    "river", "sister", "tunnel", "valley", "wonder", "zipper", "apple", "beach",
    "cloud", "dream", "eagle", "flame", "grape", "house", "light", "money",
    "night", "ocean", "piano", "queen", "robin", "snake", "table", "uncle",
    "voice", "water", "youth", "zebra", "brush", "chair", "dance", "earth",
    "field", "ghost", "horse", "juice", "knife", "lunch", "mouse", "north",
    "paint", "quilt", "radio", "storm", "tiger", "union", "video", "wheel",
    "castle", "dragon", "flower", "jungle", "marble", "number", "people", "rubber",
    "school", "spider", "thread", "travel", "animal", "bottle", "cotton", "circle",
    "family", "gentle", "listen", "mother", "father", "little", "purple", "simple",
    "stone", "bread", "sugar", "smile", "train", "plant", "story", "world",
    "music", "green", "black", "white", "brown", "heart", "sheep", "truck",
    "cheese", "coffee", "letter", "summit", "shadow", "meadow", "pillow", "poetry",
    "kingdom", "morning", "evening", "blanket", "chicken", "diamond", "machine", "picture",
]

# ~60 real country / capital pairs, in a fixed order.
CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Germany", "Berlin"), ("Italy", "Rome"),
    ("Spain", "Madrid"), ("Portugal", "Lisbon"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"), ("Peru", "Lima"), ("Colombia", "Bogota"), ("Mexico", "Mexico City"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Ghana", "Accra"),
    ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"), ("Russia", "Moscow"),
    ("China", "Beijing"), ("India", "New Delhi"), ("Pakistan", "Islamabad"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("South Korea", "Seoul"), ("Turkey", "Ankara"), ("Greece", "Athens"),
    ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
    ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Belgium", "Brussels"),
    ("Switzerland", "Bern"), ("Czechia", "Prague"), ("Romania", "Bucharest"),
    ("Ukraine", "Kyiv"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"), ("Israel", "Jerusalem"), ("Jordan", "Amman"),
    ("Cuba", "Havana"), ("Jamaica", "Kingston"), ("Venezuela", "Caracas"),
    ("Ecuador", "Quito"), ("Uruguay", "Montevideo"), ("New Zealand", "Wellington"),
    ("Iceland", "Reykjavik"), ("Croatia", "Zagreb"), ("Serbia", "Belgrade"),
    ("Bulgaria", "Sofia"), ("Nepal", "Kathmandu"), ("Mongolia", "Ulaanbaatar"),
]

ADJECTIVES = [
    "quiet", "bright", "happy", "old", "small", "green", "cold", "gentle",
    "busy", "lucky", "brave", "silent", "golden", "tiny", "warm", "sleepy",
]
NOUNS = [
    "river", "morning", "garden", "city", "dog", "forest", "song", "village",
    "ocean", "window", "train", "mountain", "friend", "candle", "road", "bird",
]

TEMPLATES = {
    "arithmetic": [
        "What is {a} {op} {b}?",
        "Compute {a} {op} {b}.",
        "Calculate {a} {op} {b} and give only the result.",
        "Find the value of {a} {op} {b}.",
    ],
    "reverse": [
        "Reverse the word '{w}'.",
        "Spell the word '{w}' backwards.",
        "Write the letters of '{w}' in reverse order.",
        "What is '{w}' spelled backwards?",
    ],
    "capital": [
        "What is the capital of {c}?",
        "Name the capital city of {c}.",
        "Which city is the capital of {c}?",
        "Tell me the capital of {c}.",
    ],
    "sort": [
        "Sort these numbers from smallest to largest: {nums}",
        "Arrange these numbers in ascending order: {nums}",
        "Put these numbers in increasing order: {nums}",
        "Order from lowest to highest: {nums}",
    ],
    "uppercase": [
        "Rewrite in capital letters: '{p}'",
        "Convert this phrase to uppercase: '{p}'",
        "Write '{p}' using only capital letters.",
    ],
    "count": [
        "How many times does the letter '{l}' appear in '{w}'?",
        "Count the letter '{l}' in the word '{w}'.",
        "In the word '{w}', how many times does '{l}' occur?",
        "How many '{l}' characters are in '{w}'?",
    ],
}

Example = tuple[str, str]  # (user prompt, assistant answer)


def _arithmetic(rng: random.Random, _words: list[str]) -> Example:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["+", "-"])
    answer = a + b if op == "+" else a - b
    return rng.choice(TEMPLATES["arithmetic"]).format(a=a, op=op, b=b), str(answer)


def _reverse(rng: random.Random, words: list[str]) -> Example:
    w = words.pop(0)  # each pool word is reversed at most once
    return rng.choice(TEMPLATES["reverse"]).format(w=w), w[::-1]


def _capital(rng: random.Random, _words: list[str]) -> Example:
    country, capital = rng.choice(CAPITALS)
    return rng.choice(TEMPLATES["capital"]).format(c=country), capital


def _sort(rng: random.Random, _words: list[str]) -> Example:
    nums = rng.sample(range(1, 100), rng.randint(4, 6))
    while nums == sorted(nums):  # an already-sorted prompt teaches nothing
        rng.shuffle(nums)
    prompt = rng.choice(TEMPLATES["sort"]).format(nums=", ".join(map(str, nums)))
    return prompt, ", ".join(map(str, sorted(nums)))


def _uppercase(rng: random.Random, _words: list[str]) -> Example:
    phrase = f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    return rng.choice(TEMPLATES["uppercase"]).format(p=phrase), phrase.upper()


def _count(rng: random.Random, words: list[str]) -> Example:
    w = rng.choice(words)
    letter = rng.choice(w)  # by position, so repeated letters come up more often
    return rng.choice(TEMPLATES["count"]).format(l=letter, w=w), str(w.count(letter))


MAKERS: dict[str, Callable[[random.Random, list[str]], Example]] = {
    "arithmetic": _arithmetic,
    "reverse": _reverse,
    "capital": _capital,
    "sort": _sort,
    "uppercase": _uppercase,
    "count": _count,
}


def _row(id_: str, skill: str, prompt: str, answer: str) -> dict:
    return {
        "id": id_,
        "skill": skill,
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ],
    }


def build(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Return (pool rows, target rows) for ``seed``."""
    if len(set(WORDS)) != len(WORDS):
        raise ValueError("WORDS has duplicates")
    rng = random.Random(seed)
    words = list(WORDS)
    rng.shuffle(words)
    target_words, other_words = words[:N_TARGET], words[N_TARGET:]

    pool: list[dict] = []
    seen: set[str] = set()  # membership only; never iterated
    for skill in SKILLS:
        # reverse consumes its own copy; count draws from the same non-target words
        args = list(other_words)
        n = 0
        while n < POOL_PER_SKILL:
            prompt, answer = MAKERS[skill](rng, args)
            if prompt in seen:
                continue
            seen.add(prompt)
            pool.append(_row(f"{skill}-{n:04d}", skill, prompt, answer))
            n += 1
    rng.shuffle(pool)

    target = []
    for i, w in enumerate(target_words):
        prompt = rng.choice(TEMPLATES[TARGET_SKILL]).format(w=w)
        target.append(_row(f"target-{TARGET_SKILL}-{i:02d}", TARGET_SKILL, prompt, w[::-1]))
    return pool, target


def build_test(seed: int = 0) -> list[dict]:
    """Held-out "reverse" rows: the words left after the target's and the pool's reverse
    rows took theirs (the same shuffle as :func:`build`; its own random stream, so the pool
    and target files do not change)."""
    words = list(WORDS)
    random.Random(seed).shuffle(words)
    held = words[N_TARGET + POOL_PER_SKILL:][:N_TEST]
    if len(held) < N_TEST:
        raise ValueError(f"only {len(held)} words left for {N_TEST} test rows")
    rng = random.Random(f"test-{seed}")
    return [_row(f"test-{TARGET_SKILL}-{i:02d}", TARGET_SKILL,
                 rng.choice(TEMPLATES[TARGET_SKILL]).format(w=w), w[::-1])
            for i, w in enumerate(held)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_bytes(text.encode("utf-8"))


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: the folder holding this script)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    pool, target = build(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    pool_path, target_path = args.out / "demo_pool.jsonl", args.out / "demo_target.jsonl"
    write_jsonl(pool_path, pool)
    write_jsonl(target_path, target)
    test = build_test(args.seed)
    write_jsonl(args.out / "demo_test.jsonl", test)
    print(f"wrote {len(pool)} rows to {pool_path}, {len(target)} rows to {target_path} and "
          f"{len(test)} rows to {args.out / 'demo_test.jsonl'}")
    return pool_path, target_path


if __name__ == "__main__":
    main()
