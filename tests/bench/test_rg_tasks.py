"""The reasoning-gym task catalogue (benchmarks/e2e/rg_tasks.py) and its candidates:
deterministic rows in make_pool's format, disjoint splits, answers that reasoning-gym's own
scorer (and, where a few lines can, an independent re-computation) accepts, exact mixture
shares, planted copies; the catalogue's names fixed (the pool is built from all of them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("reasoning_gym")

import make_pool  # noqa: E402
import rg_tasks  # noqa: E402

from gradstore.grads.examples import detect_format  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TASKS = list(rg_tasks.TASKS)
CANDIDATES = list(rg_tasks.CANDIDATES)
ALL = TASKS + CANDIDATES  # every per-task check covers the candidates too
N = 60
# The catalogue the recorded jobs were built from: every entry of TASKS goes into the pool.
CATALOGUE = ["reverse_words", "spell_backward", "rotate_matrix", "add_sub", "solve_equation",
             "sort_words", "chain_sum", "leg_counting", "caesar_word", "letter_count",
             "aiw_siblings", "number_sequence", "time_diff", "base_conversion",
             "filter_numbers", "spiral_matrix"]


def prompt(r: dict) -> str:
    return r["messages"][0]["content"]


def answer(r: dict) -> str:
    return r["messages"][-1]["content"]


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[list[dict], list[dict], list[dict]]]:
    return {t: rg_tasks.split(t, n_pool=N, n_target=10, n_test=30, seed=0) for t in ALL}


def test_catalogue():
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    assert 8 <= len(TASKS) <= 16
    for name in ALL:
        task = rg_tasks.spec(name)
        assert task.dataset in DATASETS, name
        reasoning_gym.create_dataset(task.dataset, size=1, seed=0, **rg_tasks._kwargs(task))


def test_catalogue_names_fixed_and_candidates_apart():
    """Promoting a candidate changes the pool and so every recorded job: not by accident."""
    assert TASKS == CATALOGUE  # names and order
    assert CANDIDATES and not set(CANDIDATES) & set(TASKS)
    for name in TASKS:
        assert rg_tasks.spec(name) is rg_tasks.TASKS[name]
    for name in CANDIDATES:
        assert rg_tasks.spec(name) is rg_tasks.CANDIDATES[name]
    for bad in ("nope", ""):
        with pytest.raises(KeyError, match="unknown task"):
            rg_tasks.spec(bad)
        with pytest.raises(KeyError, match="unknown task"):
            rg_tasks.examples(bad, 1)


@pytest.mark.parametrize("task", ALL)
def test_rows_deterministic_and_shaped(task):
    rows = rg_tasks.examples(task, 30, seed=0)
    assert rows == rg_tasks.examples(task, 30, seed=0)
    assert rows[:10] == rg_tasks.examples(task, 10, seed=0)  # a prefix of a longer call
    other = rg_tasks.examples(task, 30, seed=1)
    assert len({prompt(r) for r in rows} & {prompt(r) for r in other}) < 10  # another seed
    ids = [r["id"] for r in rows]
    assert ids == [f"{task}-s0-{i:05d}" for i in range(30)]
    assert {r["id"] for r in other}.isdisjoint(ids)
    like = make_pool.row("x", "s", "p", "a")
    for r in rows:
        assert set(like) <= set(r) and r["skill"] == task
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert detect_format(r, r["id"]) == "chat"
        assert answer(r) == answer(r).strip() and answer(r)
        assert prompt(r) == prompt(r).strip() and len(prompt(r)) <= 300
        assert len(answer(r)) <= 40
        json.dumps(r)


def test_same_rows_in_another_process():
    """No dependence on hash seeds or anything else that changes between processes."""
    code = ("import json, sys; sys.path.insert(0, 'benchmarks/e2e'); import rg_tasks; "
            "print(json.dumps({t: rg_tasks.examples(t, 15, 3) "
            "for t in [*rg_tasks.TASKS, *rg_tasks.CANDIDATES]}))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == {t: rg_tasks.examples(t, 15, 3) for t in ALL}


def test_calibration_keys_are_the_same_in_another_process():
    """A calibration record is found again by its key: a task's keep/instance functions
    enter it as their source, not as their address."""
    import rg_calibrate

    code = ("import json, sys; sys.path.insert(0, 'benchmarks/e2e'); import rg_calibrate; "
            "s = rg_calibrate.Settings(); print(json.dumps({t: s.key(t) for t in sys.argv[1:]}))")
    tasks = ["time_diff", "leg_counting", "reverse_words", "insert_char"]
    done = subprocess.run([sys.executable, "-c", code, *tasks], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    s = rg_calibrate.Settings()
    assert json.loads(done.stdout) == {t: s.key(t) for t in tasks}


@pytest.mark.parametrize("task", ALL)
def test_splits_disjoint(task, splits):
    pool, target, test = splits[task]
    assert (len(pool), len(target), len(test)) == (N, 10, 30)
    sets = [{prompt(r) for r in rows} for rows in (pool, target, test)]
    assert [len(s) for s in sets] == [N, 10, 30]  # no repeats inside a split either
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    ids = [r["id"] for rows in (pool, target, test) for r in rows]
    assert len(ids) == len(set(ids))
    assert all(r["group"] == r["id"] and r["dup_of"] is None for r in pool)
    # the target is the same whatever the pool size
    assert rg_tasks.split(task, 5, 10, 30, seed=0)[1:] == (target, test)
    inst = rg_tasks.spec(task).instance
    if inst is not None:  # one instance, several phrasings: never in two splits
        keys = [{repr(inst(rg_tasks.entry(r))) for r in rows} for rows in (pool, target, test)]
        assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


@pytest.mark.parametrize("task", ALL)
def test_answers_pass_reasoning_gym_scorer(task, splits):
    for rows in splits[task]:
        for r in rows:
            item = rg_tasks.entry(r)
            assert answer(r) == str(item["answer"]).strip()
            assert rg_tasks.score(r) == 1.0, (prompt(r), answer(r))


def _words(text: str) -> list[str]:
    return text.split(", ")


def _solve(equation: str) -> int:
    lhs, rhs = equation.split(" = ")
    var = re.search(r"[a-z]", equation).group()
    found = [x for x in range(-1000, 1001)
             if eval(lhs.replace(var, f"({x})").replace(")(", ")*(")) == int(rhs)]
    assert len(found) == 1, equation
    return found[0]


def _base(name: str) -> int:
    return 2 if name == "binary" else 10 if name == "decimal" else int(name.split("-")[1])


def _to_base(n: int, b: int) -> str:
    digits = ""
    while n:
        digits = "0123456789"[n % b] + digits
        n //= b
    return digits or "0"


def _rotate(text: str) -> str:
    m = [line.split() for line in text.splitlines()]
    n = len(m)
    return "\n".join(" ".join(m[n - 1 - j][i] for j in range(n)) for i in range(n))


def _matrix(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def _show(m: list[list[str]]) -> str:
    return "\n".join(" ".join(row) for row in m)


def _mirror(p: str) -> str:
    how, text = p.split(":\n", 1)
    m = _matrix(text)
    n = len(m)
    return _show({"Horizontally mirror the matrix": m[::-1],
                  "Vertically mirror the matrix": [row[::-1] for row in m],
                  "Mirror the matrix along the diagonal":
                      [[m[j][i] for j in range(n)] for i in range(n)],
                  "Mirror the matrix along the counterdiagonal":
                      [[m[n - 1 - j][n - 1 - i] for j in range(n)] for i in range(n)]}[how])


def _max_pool(p: str) -> str:
    m = [[int(x) for x in row] for row in _matrix(p.split(":\n", 1)[1])]
    return "\n".join(" ".join(str(max(m[i][j], m[i][j + 1], m[i + 1][j], m[i + 1][j + 1]))
                              for j in (0, 2)) for i in (0, 2))


def _sort_numbers(p: str) -> str:
    values = sorted((float(x) for x in p.rsplit(": ", 1)[1].split(", ")),
                    reverse="descending" in p)
    return str([str(v) for v in values])


def _replace_digit(p: str) -> str:
    a, b, text = re.fullmatch(r"Map each occurrence of (\d) to (\d):\n(.+)", p, re.S).groups()
    return _show([[b if x == a else x for x in row] for row in _matrix(text)])


def _insert(s: str) -> str:
    rules = {"ABCD": "A", "BCDE": "B", "CDEA": "C", "DEAB": "D", "EABC": "E"}
    out, i = "", 0
    while i < len(s):
        if s[i:i + 4] in rules:
            out, i = out + s[i:i + 4] + rules[s[i:i + 4]], i + 4
        else:
            out, i = out + s[i], i + 1
    return out


def _palindrome(p: str) -> str:
    letters = Counter(p.rsplit(": ", 1)[1].split(", "))
    (pair, _), *rest = letters.most_common()
    return pair + (rest[0][0] if rest else pair) + pair


RECOMPUTE = {  # prompt -> answer, written without reasoning-gym
    "reverse_words": lambda p: ", ".join(_words(p.split(": ", 1)[1])[::-1]),
    "spell_backward": lambda p: p.rsplit(": ", 1)[1][::-1],
    "rotate_matrix": lambda p: _rotate(p.split(":\n", 1)[1]),
    "add_sub": lambda p: str(eval(re.fullmatch(r"Calculate (\d+ [+-] \d+)\.", p).group(1))),
    "solve_equation": lambda p: str(_solve(p.rsplit(": ", 1)[1])),
    "sort_words": lambda p: ", ".join(sorted(_words(p.split(": ", 1)[1]),
                                             reverse="descending" in p)),
    "chain_sum": lambda p: str(eval(re.search(r": ([\d +-]+) =$", p).group(1))),
    "caesar_word": lambda p: "".join(
        chr((ord(c) - 65 - 3) % 26 + 65)
        for c in re.fullmatch(r"Decrypt this Caesar cipher text: ([A-Z]+)\. .*", p).group(1)),
    "letter_count": lambda p: str(
        (lambda m: m.group(2).lower().count(m.group(1)))(
            re.fullmatch(r'How many times does the letter "(.)" appear in the text: "(.*)"\?',
                         p))),
    "aiw_siblings": lambda p: str(int(re.search(r"(\d+) sisters", p).group(1)) + 1),
    "time_diff": lambda p: (lambda a, b: f"{(b - a) % 1440 // 60:02d}:{(b - a) % 60:02d}")(
        *[int(h) * 60 + int(m) for h, m in re.findall(r"(\d\d):(\d\d)", p)]),
    "base_conversion": lambda p: (lambda m: _to_base(int(m.group(2), _base(m.group(1))),
                                                     _base(m.group(3))))(
        re.fullmatch(r"Convert the (\S+) number (\w+) to (\S+)\.", p)),
    # candidates
    "mirror_matrix": _mirror,
    "max_pool": _max_pool,
    "sort_numbers": _sort_numbers,
    "replace_digit": _replace_digit,
    "insert_char": lambda p: _insert(p.rsplit(": ", 1)[1]),
    "palindrome3": _palindrome,
    "triangle_angle": lambda p: str(180 - sum(
        int(float(a)) for a in re.search(r"are: ([\d.]+)°, ([\d.]+)°\.", p).groups())),
}


@pytest.mark.parametrize("task", sorted(RECOMPUTE))
def test_answers_recomputed(task, splits):
    for rows in splits[task]:
        for r in rows:
            assert RECOMPUTE[task](prompt(r)) == answer(r), (prompt(r), answer(r))


@pytest.mark.parametrize("task", [t for t in ALL if rg_tasks.spec(t).max_answer_share])
def test_answer_cap(task):
    share = rg_tasks.spec(task).max_answer_share
    rows = rg_tasks.examples(task, 200, seed=0)
    top = Counter(answer(r) for r in rows).most_common(1)[0][1]
    assert top <= share * 200 + 1


def test_unscramble_word_is_a_scramble(splits):
    """Not in RECOMPUTE (which word a scramble is needs a dictionary): the same letters,
    never the word itself."""
    for rows in splits["unscramble_word"]:
        for r in rows:
            word = prompt(r).rsplit(": ", 1)[1]
            assert sorted(word) == sorted(answer(r)) and word != answer(r)


def test_mixture_shares_exact(splits):
    tasks = ["add_sub", "reverse_words", "spell_backward"]
    mix = rg_tasks.mixture(tasks, [0.6, 0.3, 0.1], 10, seed=0, target_size=10)
    assert Counter(r["skill"] for r in mix) == {"add_sub": 6, "reverse_words": 3,
                                               "spell_backward": 1}
    assert mix == rg_tasks.mixture(tasks, [0.6, 0.3, 0.1], 10, seed=0)
    for r in mix:  # rows of the task's own target: never in its pool or test set
        pool, target, test = splits[r["skill"]]
        assert r in target and r not in pool and r not in test
    mix = rg_tasks.mixture(tasks[:2], [0.7, 0.3], 9, seed=0)
    assert Counter(r["skill"] for r in mix) == {"add_sub": 6, "reverse_words": 3}
    with pytest.raises(ValueError, match="its target has 10"):
        rg_tasks.mixture(tasks, [0.6, 0.3, 0.1], 20, seed=0, target_size=10)


def test_flooded(splits):
    pool = [r for t in ("add_sub", "reverse_words", "rotate_matrix") for r in splits[t][0]]
    flood = rg_tasks.flooded(pool, 0.3, seed=0, sizes=(5, 12))
    assert flood == rg_tasks.flooded(pool, 0.3, seed=0, sizes=(5, 12))
    assert len(flood) == len(pool)
    ids = [r["id"] for r in flood]
    assert len(ids) == len(set(ids))
    copies = [r for r in flood if r["dup_of"] is not None]
    assert len(copies) >= 0.3 * len(flood)
    by_id = {r["id"]: r for r in pool}
    exact = near = 0
    for c in copies:
        orig = by_id[c["dup_of"]]
        assert c["group"] == orig["id"] and c["id"] != orig["id"] and c["skill"] == orig["skill"]
        assert answer(c) == answer(orig) and orig["id"] in ids  # the original is there too
        if prompt(c) == prompt(orig):
            exact += 1
        else:
            assert any(prompt(c) == w.format(prompt(orig)) for w in make_pool.REWORDINGS)
            near += 1
    assert exact and near
    families = Counter(r["group"] for r in flood)
    assert all(5 <= families[g] <= 12 for g in {c["group"] for c in copies})


def test_tiny_mode(capsys):
    rg_tasks.main(["--tiny"])
    assert "splits disjoint" in capsys.readouterr().out
