import signal
import threading

import pytest

from softtok.answers import check_answer, extract_answer, normalize_answer, to_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"first \boxed{1}, then \boxed{\frac{3}{{4}}}", r"\frac{3}{{4}}"),
        (r"ok \boxed{7} but cut off \boxed{8", "7"),  # last one unbalanced: fall back to the last balanced one
        (r"\boxed{1,234}", "1234"),
        ("Let me think.\nFinal answer: 17", "17"),
        ("**Final Answer:** 1,234.", "1234"),
        ("final answer: $\\frac{1}{2}$.", r"\frac{1}{2}"),
        ("The final answer is 12.", "12"),
        ("Final answer:\n\n  -5\n", "-5"),
        ("Final answer: 3\nmore text\nFINAL ANSWER: 4", "4"),
        ("Final answer: $1,687.50", "1687.50"),
        ("Final answer: x = 3", "x = 3"),
        ("Now the final answer.\n12 + 7 = 19", "19"),  # prose "final answer" without ':' or 'is'
        ("The Final Answer is: 8", "8"),
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("#### 1\n#### 2,000", "2000"),
        ("12 + 7 = 19 apples", "19"),
        ("the result is -3.5.", "-3.5"),
        ("x=-3", "-3"),
        ("5-3", "3"),
        ("about 1,234,567 people", "1234567"),
        ("costs .5 dollars", ".5"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_priority():
    both = "Final answer: 3\n#### 4\n\\boxed{5} and 6"
    assert extract_answer(both) == "5"
    assert extract_answer("Final answer: 3\n#### 4\n6") == "3"
    assert extract_answer("#### 4\n6") == "4"
    assert extract_answer("Final answer:\n") is None  # a marker with nothing after it and no number


def test_extract_answer_type_error():
    with pytest.raises(TypeError, match="str"):
        extract_answer(None)


def test_to_number_and_normalize():
    assert to_number("1,234.50") == to_number("1234.5")
    assert to_number("+3") == 3
    assert to_number("abc") is None
    assert normalize_answer("  **$X$**. ") == "x"


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("42", "42", True),
        ("42.0", "42", True),
        ("1,234", "1234", True),
        ("$1687.5", "1687.5", True),
        ("41", "42", False),
        ("0.5", r"\frac{1}{2}", True),
        (r"\frac{1}{2}", "1/2", True),
        (r"\dfrac{3}{4}", "0.75", True),
        (r"\sqrt{2}", r"\sqrt 2", True),
        (r"\frac{1}{3}", r"\frac{1}{2}", False),
        ("C", "c", True),
        ("The sum is $42.", "42", True),
        ("42 apples", "42", True),
        ("x^2", "2", False),
        ("2x", "2", False),
        ("1 and 2", "2", False),
        ("abc", "abd", False),
        ("", "0", False),
        (None, "42", False),
    ],
)
def test_check_answer_math_verify(prediction, reference, expected):
    assert check_answer(prediction, reference) is expected


def test_check_answer_scorer():
    exact = lambda answer: 1.0 if answer == "156" else 0.0  # like reasoning-gym's default scorer
    assert check_answer("156", "ignored", scorer=exact)
    assert check_answer(" 156. ", "ignored", scorer=exact)  # trivially equivalent forms are tried
    assert check_answer("156.0", "ignored", scorer=exact)
    assert check_answer("156 apples", "ignored", scorer=exact)
    assert check_answer("The sum is 156.", "ignored", scorer=exact)
    assert not check_answer("12 + 156", "ignored", scorer=exact)
    assert not check_answer("157", "156", scorer=exact)
    assert not check_answer(None, "156", scorer=exact)
    assert not check_answer("156", "156", scorer=lambda answer: 0.5)  # partial credit is not correct

    def broken(answer):
        raise RuntimeError("scorer bug")

    assert not check_answer("156", "156", scorer=broken)


def test_check_answer_off_main_thread():
    # math-verify's default signal timeouts raise outside the main thread; check_answer must not.
    results, errors = [], []

    def work():
        try:
            results.append(check_answer(r"\frac{1}{2}", "0.5"))
            results.append(check_answer(r"\frac{1}{3}", "0.5"))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert not errors
    assert results == [True, False]


@pytest.mark.skipif(not hasattr(signal, "alarm"), reason="no SIGALRM on this platform")
def test_check_answer_keeps_outer_alarm():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.alarm(100)
        assert check_answer(r"\frac{1}{2}", "0.5")
        remaining = signal.alarm(0)
        assert remaining > 0  # math-verify's own alarm did not cancel ours
        assert not fired
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
