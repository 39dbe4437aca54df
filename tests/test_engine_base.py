"""check_stop: the one rule every engine ends a row by (eos, then stop string, then length)."""

from __future__ import annotations

import pytest

from genq.worker.engines.base import check_stop

EOS = 0
# A toy vocabulary: token i decodes to one character, the end-of-sequence token to nothing.
VOCAB = {EOS: "", 1: "a", 2: "b", 3: "c", 4: "\n"}


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def never_decode(ids: list[int]) -> str:
    raise AssertionError("decode was called without stop strings")


def test_a_row_below_its_limit_without_eos_or_stop_goes_on() -> None:
    assert check_stop([1, 2], eos_id=EOS, stops=["c"], max_new_tokens=5, decode=decode) is None


def test_a_row_ends_for_length_when_it_holds_max_new_tokens() -> None:
    assert check_stop([1, 2, 1], eos_id=EOS, stops=[], max_new_tokens=3, decode=decode) == (
        "length"
    )


def test_the_eos_token_ends_a_row() -> None:
    assert check_stop([1, EOS], eos_id=EOS, stops=[], max_new_tokens=5, decode=decode) == "eos"


def test_eos_wins_when_it_is_also_the_last_allowed_token() -> None:
    assert check_stop([1, 2, EOS], eos_id=EOS, stops=[], max_new_tokens=3, decode=decode) == "eos"


def test_eos_wins_over_a_stop_string_already_in_the_tail() -> None:
    reason = check_stop([1, 2, EOS], eos_id=EOS, stops=["ab"], max_new_tokens=9, decode=decode)
    assert reason == "eos"


def test_a_completed_stop_string_ends_a_row() -> None:
    reason = check_stop([3, 1, 2], eos_id=EOS, stops=["ab"], max_new_tokens=9, decode=decode)
    assert reason == "stop"


def test_a_stop_string_wins_when_completed_on_the_last_allowed_token() -> None:
    reason = check_stop([3, 1, 2], eos_id=EOS, stops=["ab"], max_new_tokens=3, decode=decode)
    assert reason == "stop"


def test_any_of_several_stop_strings_ends_a_row() -> None:
    reason = check_stop([1, 4], eos_id=EOS, stops=["zz", "\n"], max_new_tokens=9, decode=decode)
    assert reason == "stop"


def test_only_the_newest_token_counts_as_eos() -> None:
    assert check_stop([EOS, 1], eos_id=EOS, stops=[], max_new_tokens=9, decode=decode) is None


def test_without_an_eos_id_no_token_ends_a_row_as_eos() -> None:
    assert check_stop([1, EOS], eos_id=None, stops=[], max_new_tokens=9, decode=decode) is None


def test_without_stop_strings_nothing_is_decoded() -> None:
    assert check_stop([1, 2], eos_id=EOS, stops=[], max_new_tokens=2, decode=never_decode) == (
        "length"
    )


def test_only_the_tail_of_a_long_row_is_decoded() -> None:
    seen: list[int] = []

    def counting(ids: list[int]) -> str:
        seen.append(len(ids))
        return decode(ids)

    row = [1] * 1000
    assert check_stop(row, eos_id=EOS, stops=["bc"], max_new_tokens=2000, decode=counting) is None
    assert seen == [4 * 2 + 4]  # 4 x the longest stop string + 4 tokens


@pytest.mark.parametrize("generated", [[], [1]])
def test_a_row_with_no_limit_left_ends_for_length(generated: list[int]) -> None:
    reason = check_stop(
        generated, eos_id=EOS, stops=["c"], max_new_tokens=len(generated), decode=decode
    )
    assert reason == "length"
