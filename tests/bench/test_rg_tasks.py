"""The reasoning-gym task catalogue (benchmarks/e2e/rg_tasks.py): deterministic rows in
make_pool's format, disjoint splits, answers that reasoning-gym's own scorer (and, where a
few lines can, an independent re-computation) accepts, exact mixture shares, planted
copies."""

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
N = 60


def prompt(r: dict) -> str:
    return r["messages"][0]["content"]


def answer(r: dict) -> str:
    return r["messages"][-1]["content"]


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[list[dict], list[dict], list[dict]]]:
    return {t: rg_tasks.split(t, n_pool=N, n_target=10, n_test=30, seed=0) for t in TASKS}


def test_catalogue():
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    assert 8 <= len(TASKS) <= 16
    for name, task in rg_tasks.TASKS.items():
        assert task.dataset in DATASETS, name
        reasoning_gym.create_dataset(task.dataset, size=1, seed=0, **rg_tasks._kwargs(task))


@pytest.mark.parametrize("task", TASKS)
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
            "print(json.dumps({t: rg_tasks.examples(t, 15, 3) for t in rg_tasks.TASKS}))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == {t: rg_tasks.examples(t, 15, 3) for t in TASKS}


@pytest.mark.parametrize("task", TASKS)
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
    inst = rg_tasks.TASKS[task].instance
    if inst is not None:  # one instance, several phrasings: never in two splits
        keys = [{repr(inst(rg_tasks.entry(r))) for r in rows} for rows in (pool, target, test)]
        assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


@pytest.mark.parametrize("task", TASKS)
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
}


@pytest.mark.parametrize("task", sorted(RECOMPUTE))
def test_answers_recomputed(task, splits):
    for rows in splits[task]:
        for r in rows:
            assert RECOMPUTE[task](prompt(r)) == answer(r), (prompt(r), answer(r))


def test_answer_cap():
    rows = rg_tasks.examples("letter_count", 200, seed=0)
    top = Counter(answer(r) for r in rows).most_common(1)[0][1]
    assert top <= 0.35 * 200 + 1


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
