"""The held-back cancel queue: due after the delay, all at a normal shutdown, dropped at an exit."""

from __future__ import annotations

from boinc_executor.cancels import OPERATOR, HeldCancels


def test_cancels_are_due_after_the_delay_in_the_order_asked() -> None:
    held = HeldCancels(2.0)
    held.add("a", 10.0)
    held.add("b", 11.0)
    assert held.take_due(11.5, all_now=False) == ([], 0.5)
    assert held.take_due(12.0, all_now=False) == (["a"], 1.0)
    assert held and held.take_due(13.5, all_now=False) == (["b"], None)
    assert not held


def test_a_normal_shutdown_sends_all_and_an_exit_keeps_only_the_operators() -> None:
    held = HeldCancels(2.0)
    held.add("a", 10.0)
    held.add("b", 10.0)
    assert held.take_due(10.1, all_now=True) == (["a", "b"], None)
    held.add("mine", 20.0)
    held.add("operator", OPERATOR)
    held.drop_held()
    assert held.take_due(20.0, all_now=False) == (["operator"], None)
    held.add("c", 30.0)
    held.clear()
    assert not held
