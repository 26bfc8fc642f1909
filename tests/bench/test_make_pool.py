"""The benchmark's pool generator, checked against independent re-computations."""

from __future__ import annotations

import re
from collections import Counter

import make_pool
import pytest

UNITS = {("km", "m"): 1000, ("m", "cm"): 100, ("kg", "g"): 1000, ("hours", "minutes"): 60,
         ("minutes", "seconds"): 60, ("days", "hours"): 24, ("weeks", "days"): 7,
         ("litres", "millilitres"): 1000, ("cm", "mm"): 10, ("years", "months"): 12}
SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * i for i, w in enumerate(
    "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if w != "_"}
ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
CANONICAL_ROMAN = re.compile(r"^M{0,3}(CM|CD|D?C{0,3})(XC|XL|L?X{0,3})(IX|IV|V?I{0,3})$")


def words_to_int(text: str) -> int:
    total = 0
    for part in text.replace(" and ", " ").split():
        if part == "hundred":
            total *= 100
        elif "-" in part:
            tens, ones = part.split("-")
            total += TENS[tens] + SMALL[ones]
        else:
            total += TENS.get(part, SMALL.get(part, None))
    return total


def roman_to_int(text: str) -> int:
    vals = [ROMAN[c] for c in text]
    return sum(-v if i + 1 < len(vals) and v < vals[i + 1] else v for i, v in enumerate(vals))


def ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def quoted(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


def expected_answer(skill: str, prompt: str) -> str:
    """The right answer, computed from the prompt text alone."""
    if skill == "add":
        a, b = ints(prompt)
        return str(a + b)
    if skill == "sort":
        return ", ".join(map(str, sorted(ints(prompt))))
    if skill == "convert":
        x = ints(prompt)[0]
        for (src, dst), f in UNITS.items():
            if (re.search(rf"\b{x} {src}\b", prompt) and re.search(rf"\bto {dst}\.", prompt)) \
                    or re.search(rf"How many {dst} are in {x} {src}\?", prompt):
                return str(x * f)
        raise AssertionError(f"no unit pair in {prompt!r}")
    if skill == "count":
        letter, word = quoted(prompt)
        return str(sum(ch == letter for ch in word))
    if skill == "reverse":
        (word,) = quoted(prompt)
        return "".join(reversed(word))
    if skill == "upper":
        (phrase,) = quoted(prompt)
        return phrase.upper()
    raise AssertionError(skill)


def instance(row: dict) -> tuple:
    """What makes two examples the same question, whatever the wording."""
    prompt = row["messages"][0]["content"]
    units = tuple(u for pair in UNITS for u in pair if re.search(rf"\b{u}\b", prompt))
    return row["skill"], tuple(ints(prompt)), tuple(quoted(prompt)), units


@pytest.fixture(scope="module")
def files():
    return make_pool.build()


def test_sizes_and_skills(files):
    pool = files["pool.jsonl"]
    assert len(pool) == 2000
    assert len({r["id"] for r in pool}) == 2000
    assert len(make_pool.SKILLS) >= 8
    originals = Counter(r["skill"] for r in pool if r["dup_of"] is None)
    assert set(originals) == set(make_pool.SKILLS)
    assert max(originals.values()) - min(originals.values()) <= 1
    for s in make_pool.SKILLS:
        assert len(files[f"target-{s}.jsonl"]) == 20
        assert len(files[f"test-{s}.jsonl"]) == 100


def test_every_answer_is_right(files):
    rows = [r for rs in files.values() for r in rs]
    for r in rows:
        prompt, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        if r["skill"] == "words":
            assert words_to_int(answer) == ints(prompt)[0], r
        elif r["skill"] == "roman":
            assert CANONICAL_ROMAN.match(answer) and roman_to_int(answer) == ints(prompt)[0], r
        else:
            assert answer == expected_answer(r["skill"], prompt), r


def test_planted_duplicates(files):
    pool = files["pool.jsonl"]
    by_id = {r["id"]: r for r in pool}
    dups = [r for r in pool if r["dup_of"] is not None]
    assert len(dups) == 100  # 5% of 2,000
    assert len({r["dup_of"] for r in dups}) == 100  # each original copied once
    for d in dups:
        orig = by_id[d["dup_of"]]
        assert orig["dup_of"] is None and d["group"] == orig["id"] == orig["group"]
        assert d["skill"] == orig["skill"]
        assert d["messages"][1] == orig["messages"][1]  # same answer
        assert d["messages"][0]["content"] != orig["messages"][0]["content"]
        assert orig["messages"][0]["content"] in d["messages"][0]["content"]  # re-worded
        assert instance(d) == instance(orig)
    # no accidental duplicates among the originals
    originals = [instance(r) for r in pool if r["dup_of"] is None]
    assert len(set(originals)) == len(originals)


def test_pool_target_and_test_share_no_instance(files):
    seen: dict[tuple, str] = {}
    for name, rows in files.items():
        for key in {instance(r) for r in rows}:
            assert key not in seen or seen[key] == name, (key, seen.get(key), name)
            seen[key] = name


def test_deterministic_and_seeded(tmp_path):
    make_pool.main(["--out", str(tmp_path / "a")])
    make_pool.main(["--out", str(tmp_path / "b")])
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()
    other = make_pool.build(seed=1)["pool.jsonl"]
    assert other != make_pool.build()["pool.jsonl"]


def test_too_small_an_instance_space_is_refused():
    with pytest.raises(SystemExit, match="too few distinct instances"):
        make_pool.build(pool_size=8 * 2000, target_size=0, test_size=0)


def test_mixture_targets_have_their_shares(files):
    mixed = make_pool.mixtures(files)
    assert len(mixed) == 2 * len(make_pool.MIXTURES)
    for name, mix in make_pool.MIXTURES.items():
        for kind, size in (("target", 20), ("test", 100)):
            rows = mixed[f"{kind}-mix-{name}.jsonl"]
            got = Counter(r["skill"] for r in rows)
            want = {k: round(size * v) for k, v in mix.items()}  # the shares are whole here
            assert dict(got) == want and len(rows) == size, (name, kind)
            own = {r["id"] for s in mix for r in files[f"{kind}-{s}.jsonl"]}
            assert {r["id"] for r in rows} <= own  # the skills' own rows: not in the pool
    assert make_pool.shares(7, {"a": 0.6, "b": 0.3, "c": 0.1}) == {"a": 4, "b": 2, "c": 1}


def test_flooded_pool_families(files):
    pool = files["pool.jsonl"]
    flood = make_pool.flooded(pool)
    assert len(flood) == len(pool) and len({r["id"] for r in flood}) == len(flood)
    by_id = {r["id"]: r for r in pool}
    copies = [r for r in flood if r["dup_of"] is not None]
    assert len(copies) >= 0.3 * len(flood)
    families = Counter(r["group"] for r in copies)
    assert all(4 <= n <= 49 for n in families.values())  # 5-50 rows with the original
    for c in copies:
        orig = by_id[c["dup_of"]]
        assert orig["dup_of"] is None and c["group"] == orig["id"]
        assert c["messages"][1] == orig["messages"][1] and instance(c) == instance(orig)
        assert orig["messages"][0]["content"] in c["messages"][0]["content"]
    exact = sum(c["messages"] == by_id[c["dup_of"]]["messages"] for c in copies)
    assert 0.4 * len(copies) <= exact <= 0.6 * len(copies)  # half exact, half re-worded
    originals = [r for r in flood if r["dup_of"] is None]
    assert all(r["id"] in by_id for r in originals)
    assert len({instance(r) for r in originals}) == len(originals)
    assert make_pool.flooded(pool) == flood  # deterministic
