"""The demo dataset in examples/ is reproducible from its generator and every answer is right."""

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SKILLS = {"arithmetic", "reverse", "capital", "sort", "uppercase", "count"}
KNOWN_CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Germany": "Berlin", "Italy": "Rome",
    "Spain": "Madrid", "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Norway": "Oslo", "Greece": "Athens", "Peru": "Lima", "Australia": "Canberra",
}


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_demo_data", EXAMPLES / "make_demo_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _qa(row: dict) -> tuple[str, str]:
    (user, assistant) = row["messages"]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    return user["content"], assistant["content"]


def _quoted(prompt: str) -> list[str]:
    return re.findall(r"'([^']*)'", prompt)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    _load_generator().main(["--out", str(out), "--seed", "0"])
    return out


@pytest.fixture(scope="module")
def pool():
    return _read(EXAMPLES / "demo_pool.jsonl")


@pytest.fixture(scope="module")
def target():
    return _read(EXAMPLES / "demo_target.jsonl")


@pytest.mark.parametrize("name", ["demo_pool.jsonl", "demo_target.jsonl", "demo_test.jsonl"])
def test_committed_files_match_generator(generated, name):
    assert (generated / name).read_bytes() == (EXAMPLES / name).read_bytes()


def test_pool_shape(pool):
    assert len(pool) == 300
    counts = Counter(r["skill"] for r in pool)
    assert set(counts) == SKILLS
    assert all(n == 50 for n in counts.values())
    ids = [r["id"] for r in pool]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(rf"{r['skill']}-\d{{4}}", r["id"]) for r in pool)
    prompts = [_qa(r)[0] for r in pool]
    assert len(set(prompts)) == len(prompts)


def test_target_shape_and_disjoint(pool, target):
    assert len(target) == 10
    assert all(r["skill"] == "reverse" for r in target)
    assert [r["id"] for r in target] == [f"target-reverse-{i:02d}" for i in range(10)]
    pool_prompts = {_qa(r)[0] for r in pool}
    assert not any(_qa(r)[0] in pool_prompts for r in target)
    # the target's words appear in no pool prompt at all
    pool_words = {w for r in pool for w in _quoted(_qa(r)[0])}
    assert not any(w in pool_words for r in target for w in _quoted(_qa(r)[0]))


def test_test_set_is_held_out(pool, target):
    test = _read(EXAMPLES / "demo_test.jsonl")
    assert len(test) == 60 and all(r["skill"] == "reverse" for r in test)
    used = {w for r in pool + target if r["skill"] == "reverse" for w in _quoted(_qa(r)[0])}
    for r in test:
        (word,) = _quoted(_qa(r)[0])
        assert word not in used and _qa(r)[1] == word[::-1]


def test_lengths(pool, target):
    for r in pool + target:
        prompt, answer = _qa(r)
        assert len(prompt.split()) < 25 and len(answer.split()) < 15


def test_answers_are_correct(pool, target):
    capitals_checked = 0
    for r in pool + target:
        prompt, answer = _qa(r)
        skill = r["skill"]
        if skill == "reverse":
            (word,) = _quoted(prompt)
            assert answer == "".join(reversed(word))
        elif skill == "arithmetic":
            a, op, b = re.search(r"(\d+) ([+-]) (\d+)", prompt).groups()
            assert int(answer) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        elif skill == "sort":
            nums = [int(x) for x in prompt.split(":")[1].split(",")]
            assert 4 <= len(nums) <= 6
            assert [int(x) for x in answer.split(", ")] == sorted(nums)
        elif skill == "uppercase":
            (phrase,) = _quoted(prompt)
            assert answer == phrase.upper() and answer != phrase
        elif skill == "count":
            letters = [q for q in _quoted(prompt) if len(q) == 1]
            words = [q for q in _quoted(prompt) if len(q) > 1]
            assert len(letters) == 1 and len(words) == 1
            assert int(answer) == words[0].count(letters[0])
        elif skill == "capital":
            for country, capital in KNOWN_CAPITALS.items():
                if re.search(rf"\b{country}\b", prompt):
                    assert answer == capital, prompt
                    capitals_checked += 1
        else:
            raise AssertionError(f"unknown skill {skill}")
    assert capitals_checked >= 3
