"""tests/waiting.py: the polling helper every module waits with."""

from __future__ import annotations

import pytest

from tests.waiting import wait_until


def test_returns_the_first_truthy_answer() -> None:
    answers = iter([None, [], ["a"], ["b"]])
    assert wait_until("a list", lambda: next(answers), 5, every=0.001) == ["a"]


def test_transient_errors_count_as_not_yet_and_are_told_on_a_timeout() -> None:
    calls: list[int] = []

    def starting(up_after: int) -> bool:
        calls.append(1)
        if len(calls) < up_after:
            raise ConnectionError("refused")
        return True

    assert wait_until("the server", lambda: starting(3), 5, every=0.001, transient=(ConnectionError,))
    assert len(calls) == 3
    with pytest.raises(AssertionError, match=r"waiting for the server \(last: ConnectionError\('refused'\)\)"):
        wait_until("the server", lambda: starting(10**9), 0.01, every=0.001, transient=(ConnectionError,))


def test_other_errors_fail_at_once() -> None:
    empty: dict[str, int] = {}
    with pytest.raises(KeyError):
        wait_until("a key", lambda: empty["x"], 5, transient=(ConnectionError,))


def test_a_timeout_names_what_the_last_answer_and_the_explanation() -> None:
    with pytest.raises(AssertionError, match=r"after 0.01s waiting for three \(last: 0\); seen: 0, 0"):
        wait_until("three", lambda: 0, 0.01, every=0.001, explain=lambda: "seen: 0, 0")
