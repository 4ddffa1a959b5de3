import doctest
import signal
import threading
import time

import pytest

import softtok.answers
from softtok.answers import _with_timeout, check_answer, extract_answer, normalize_answer, to_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"first \boxed{1}, then \boxed{\frac{3}{{4}}}", r"\frac{3}{{4}}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are literal, not grouping
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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is \u22125.", "-5"),  # U+2212 MINUS SIGN
        ("Final answer: \uff0d\uff15", "-5"),  # fullwidth "－５"
        ("Final answer\uff1a\uff0b\uff13", "+3"),  # fullwidth colon, plus and digit
        ("\\boxed{\u2212\\frac{1}{2}}", r"-\frac{1}{2}"),
        ("so x = \u20135", "-5"),  # en dash used as a sign
        ("pages 3\u20135", "5"),  # en dash between numbers is a range, not a minus
        ("the total is \u0661\u066c\u0662\u0663\u0664\u066b\u0665", "1234.5"),  # Arabic-Indic digits and separators
        ("The answer is \u0664\u0662", "42"),  # Arabic-Indic
        ("The answer is \u096a\u0968", "42"),  # Devanagari
        ("about 1\u202f234\u202f567 people", "1234567"),  # narrow no-break space groups
        ("paid 1\u00a0234 then 12\u2009345", "12345"),  # no-break space, thin space
        (r"\boxed{1\,234}", "1234"),  # LaTeX thin space groups
        ("Final answer: x\u00b2", "x\u00b2"),  # a superscript is not a digit
        ("Final answer: 3\u200b4", "34"),  # zero-width space dropped
    ],
)
def test_extract_answer_unicode(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        r"so the answer is \boxed{\frac{1}{2",
        r"\boxed{12",
        r"ok \boxed{7} but cut off \boxed{8",  # an unclosed box after a closed one: the answer was being replaced
        r"Final answer: 5 so \fbox{",
        "#### 3\n\\boxed{\\frac{1}{",  # earlier markers do not stand in for the cut-off box
        r"\boxed{ a \boxed{5}",  # the outer box is still open at the end
    ],
)
def test_extract_answer_truncated_box_is_no_answer(text):
    assert extract_answer(text) is None


def test_check_answer_truncated_box_is_wrong():
    assert not check_answer(r"\boxed{12", "12")
    assert not check_answer(r"\boxed{12", "12", scorer=lambda answer: 1.0)
    assert check_answer(r"\boxed{12}", "12")


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
    assert to_number("\u22121\u202f234.5") == to_number("-1234.5")
    assert to_number("\uff15") == 5
    assert to_number("\u0663\u066b\u0665") == to_number("3.5")
    assert normalize_answer("\u2212\uff15") == "-5"


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


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("\u22125", "-5", True),
        ("-5", "\u22125", True),
        ("\uff15", "5", True),
        ("\uff0d\uff15", "-5", True),
        ("\uff0b\uff13", "3", True),
        ("\u0663\u066b\u0665", "3.5", True),
        ("1\u00a0234", "1234", True),
        (r"1\,234", "1234", True),
        ("\u2212\\frac{1}{2}", "-0.5", True),
        ("\u20135", "-5", True),
        ("3\u20135", "-2", False),  # a range, not a subtraction
        ("\u22125", "5", False),
    ],
)
def test_check_answer_unicode(prediction, reference, expected):
    assert check_answer(prediction, reference) is expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # exact values compare exactly (math-verify's tolerance alone accepts these)
        (r"\frac{1}{2^{98}}", r"\frac{1}{2^{99}}", False),
        (r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}", False),
        ("2^{-1001}", "2^{-1000}", False),
        ("10^{-9}", "10^{-10}", False),
        ("2^{64}", "18446744073709551617", False),
        ("18446744073709551617", "2^{64}", False),
        (r"\{\frac{1}{2^{99}}, 1\}", r"\{1, \frac{1}{2^{98}}\}", False),
        ("(1, 2^{-99})", "(1, 2^{-98})", False),
        ("[1, 2^{-99}]", "[1, 2^{-98}]", False),
        ("x = 2^{-99}", "x = 2^{-98}", False),
        ("2^{-99}", "x = 2^{-98}", False),
        ("x < 2^{-99}", "x < 2^{-98}", False),
        (r"x = \frac{1}{2^{99}}, y = 1", r"x = \frac{1}{2^{98}}, y = 1", False),
        # ... and equal ones stay equal
        ("18446744073709551616", "2^{64}", True),
        ("2^{-98}", r"\frac{1}{2^{98}}", True),
        (r"\sqrt{2}/2", r"\frac{1}{\sqrt{2}}", True),
        (r"\frac{1}{\sqrt{2}}", r"\sqrt{2}/2", True),
        (r"\sqrt{3+2\sqrt{2}}", r"1+\sqrt{2}", True),
        (r"\{\frac{1}{2^{98}}, 1\}", r"\{1, 2^{-98}\}", True),
        ("2^{-98} > x", "x < 2^{-98}", True),
        ("y = 2, x = 1", "x = 1, y = 2", True),
        ("9\\%", "9", True),  # math-verify's percentage rule is kept
        # a decimal approximates: 6 decimal places (as math-verify) and a relative 1e-5
        (r"\frac{1}{2}", "0.5", True),
        (r"\frac{1}{3}", "0.3333333", True),
        ("0.3333333", r"\frac{1}{3}", True),
        ("0.333", r"\frac{1}{3}", False),
        ("3.14159265", r"\pi", True),
        ("0.0000000001", "10^{-9}", False),
        (r"1.5 \times 10^{-20}", r"1.6 \times 10^{-20}", False),
    ],
)
def test_check_answer_exact_values(prediction, reference, expected):
    assert check_answer(prediction, reference) is expected


def test_check_answer_scorer():
    exact = lambda answer: 1.0 if answer == "156" else 0.0  # like reasoning-gym's default scorer
    assert check_answer("156", "ignored", scorer=exact)
    assert check_answer(" 156. ", "ignored", scorer=exact)  # trivially equivalent forms are tried
    assert check_answer("156.0", "ignored", scorer=exact)
    assert check_answer("\uff11\uff15\uff16", "ignored", scorer=exact)  # fullwidth digits are offered folded
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
            results.append(check_answer(r"\frac{1}{2^{98}}", r"\frac{1}{2^{99}}"))  # the exactness check, no alarm
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert not errors
    assert results == [True, False, False]


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


@pytest.mark.skipif(not hasattr(signal, "alarm"), reason="no SIGALRM on this platform")
def test_exactness_check_timeout_means_not_verified():
    previous = signal.getsignal(signal.SIGALRM)
    assert _with_timeout(lambda: time.sleep(5) or False, 1)  # timed out: "provably different", i.e. not verified
    assert not _with_timeout(lambda: False, 1)
    assert signal.getsignal(signal.SIGALRM) is previous
    assert signal.alarm(0) == 0  # no alarm left behind


def test_docstring_examples():
    assert doctest.testmod(softtok.answers).failed == 0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 3/4.", "3/4"),
        ("The probability is 1/2.", "1/2"),
        ("The answer is $\\frac{1}{2}$", "\\frac{1}{2}"),
        ("so it is -\\dfrac{3}{4} here", "-\\dfrac{3}{4}"),
        ("Thus x = 10^{-3}", "10^{-3}"),
        ("2^10", "2^10"),
        ("So it is 1e-3", "0.001"),
        ("about 3.5e3 metres", "3500"),
        ("It ends at 12:30", "12:30"),
        ("6 / 2 = 3", "3"),  # the last value, not a fraction across an equals sign
        ("so 5-3 = 2", "2"),
    ],
)
def test_last_value_fallback_takes_the_whole_expression(text, expected):
    """The fallback never returns a denominator, an exponent or the minutes of a time: as an RL reward,
    "3/4" scored against a reference "4" would be a false positive."""
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, reference, correct",
    [
        ("The answer is 3/4.", "4", False),
        ("The answer is 3/4.", "\\frac{3}{4}", True),
        ("The answer is 3/4.", "0.75", True),
        ("Thus x = 10^{-3}", "-3", False),
        ("Thus x = 10^{-3}", "0.001", True),
        ("So it is 1e-3", "0.001", True),
        ("So it is 1e-3", "3", False),
    ],
)
def test_last_value_fallback_scores_right(text, reference, correct):
    assert check_answer(extract_answer(text), reference) is correct


@pytest.mark.parametrize("dash", ["\u2011", "\u2012"])  # non-breaking hyphen, figure dash
def test_more_unicode_minus_forms(dash):
    assert extract_answer(f"The answer is {dash}5.") == "-5"
    assert check_answer(extract_answer(f"Final answer: {dash}7"), "-7")
