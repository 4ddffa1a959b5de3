"""Final-answer extraction and checking for generated reasoning.

Two pure functions, shared by Soft Thinking evaluation and RL rewards:

* :func:`extract_answer` pulls the final answer out of model text (``\\boxed{}``,
  ``Final answer:``, ``####``, else the last number).
* :func:`check_answer` decides whether it is right: with a reasoning-gym scorer
  when one is given, else with `math-verify <https://github.com/huggingface/Math-Verify>`_
  after a fast normalised string / numeric comparison.

Everything is offline. math-verify guards its sympy work with ``signal.alarm``
timeouts, which only work in the main thread; :func:`check_answer` uses them there
(unless an outer alarm is already pending, which they would cancel) and disables
them in any other thread, so it is safe in dataloader threads and callbacks.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from fractions import Fraction

__all__ = ["extract_answer", "check_answer", "normalize_answer", "to_number"]

# A number: thousands-grouped ("1,234.5"), plain ("-12", "3.50") or leading-dot (".5").
# The sign only counts when not glued to a preceding word or digit ("5-3" -> "3", "x=-3" -> "-3").
_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
_FULL_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+|\d+\.)")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "Final answer:" or "final answer is" (a bare "final answer" in prose is not a marker).
_FINAL_RE = re.compile(r"final\s+answer\s*(?:[:：]|\bis\b\s*[:：]?)", re.IGNORECASE)
_HASHES_RE = re.compile(r"####")
# Markup that wraps an answer but is not part of it: bold/italic, inline math, quotes.
_EDGE_CHARS = " \t*_`\"'"
_MAX_VERIFY_CHARS = 500  # longer strings skip math-verify (sympy on huge input can hang without a timeout)
_VERIFY_TIMEOUT_S = 5


class _DropTimeoutWarning(logging.Filter):
    """Silence math-verify's one-off "Timeout is disabled" warning: we disable it on purpose off the main thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` whose braces balance, else ``None``."""
    for match in reversed(list(_BOXED_RE.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def _clean(text: str) -> str:
    """Strip surrounding markup (``**``, quotes, ``$``), a trailing period and thousands commas of a number."""
    text = text.strip().strip(_EDGE_CHARS).rstrip(" .").strip(_EDGE_CHARS)
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            text = text[len(left) : len(text) - len(right)].strip()
    text = text.rstrip(" .").strip(_EDGE_CHARS)
    if text.startswith("$") and _FULL_NUMBER_RE.fullmatch(text[1:].strip()):
        text = text[1:].strip()  # currency: "$1,687.50"
    if _FULL_NUMBER_RE.fullmatch(text):
        text = text.replace(",", "").rstrip(".")
    return text


def _after_marker(text: str, pattern: re.Pattern[str]) -> str | None:
    """Text after the last match of ``pattern`` up to the end of its line (or the next non-empty line)."""
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    for line in rest.split("\n"):
        line = _clean(line)
        if line:
            return line
    return None


def extract_answer(text: str) -> str | None:
    """Extract the final answer from generated text.

    Priority: the last ``\\boxed{...}`` with balanced braces; the text after the last
    ``Final answer:`` (case-insensitive, also ``The final answer is``) to the end of
    its line; the text after the last ``####``; else the last number in the text.
    Surrounding markup (``**``, ``$``, quotes) and a trailing period are stripped, and
    a thousands-grouped number loses its commas (``1,234`` -> ``1234``).

    Args:
        text: Model output (thinking and/or answer phase).

    Returns:
        The answer string, or ``None`` if nothing answer-like is found.

    Examples:
        >>> extract_answer("so it is \\\\boxed{\\\\frac{1}{2}}.")
        '\\\\frac{1}{2}'
        >>> extract_answer("**Final answer:** 1,234.")
        '1234'
        >>> extract_answer("12 + 7 = 19 apples")
        '19'
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a str, got {type(text).__name__}")
    boxed = _last_boxed(text)
    if boxed:
        return _clean(boxed) or None
    for pattern in (_FINAL_RE, _HASHES_RE):
        found = _after_marker(text, pattern)
        if found:
            return found
    numbers = _NUMBER_RE.findall(text)
    if numbers:
        return numbers[-1].replace(",", "")
    return None


def to_number(text: str) -> Fraction | None:
    """Exact value of a plain decimal number string (``"-1,234.50"``, ``"+3"``, ``".5"``), else ``None``."""
    text = text.strip()
    if not _FULL_NUMBER_RE.fullmatch(text):
        return None
    try:
        return Fraction(Decimal(text.replace(",", "")))
    except (InvalidOperation, ValueError):
        return None


def normalize_answer(text: str) -> str:
    """Normalised form for string comparison: cleaned markup, collapsed whitespace, lower case."""
    return re.sub(r"\s+", " ", _clean(text)).lower()


def _math_verify_timeout() -> int | None:
    """Timeout for math-verify's signal alarms: only in the main thread, and only if no outer alarm is pending."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "alarm"):
        return None
    pending = signal.alarm(0)  # probing cancels an outer alarm (e.g. pytest-timeout): re-arm it and stay out of its way
    if pending:
        signal.alarm(pending)
        return None
    return _VERIFY_TIMEOUT_S


def _math_verify(prediction: str, reference: str) -> bool:
    """math-verify equivalence of two answer strings (LaTeX or plain), ``False`` on any failure."""
    if len(prediction) > _MAX_VERIFY_CHARS or len(reference) > _MAX_VERIFY_CHARS:
        return False
    try:
        from math_verify import parse, verify
    except ImportError as err:  # a declared dependency; say so rather than silently mark everything wrong
        raise ImportError("check_answer needs math-verify: pip install math-verify") from err
    timeout = _math_verify_timeout()

    def _parse(text: str) -> list:
        # Extracted answers are bare LaTeX ("\frac{1}{2}"): wrapping in $...$ lets the LaTeX extractor see them.
        parsed = parse(f"${text.strip().strip('$')}$", parsing_timeout=timeout)
        return parsed or parse(text, parsing_timeout=timeout)

    try:
        gold, pred = _parse(reference), _parse(prediction)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - parse/verify failures and timeouts mean "not verified"
        return False


def _sole_number(text: str) -> str | None:
    """The number in ``text`` if it is the only one among plain words ("The sum is $42." -> "42"), else ``None``.

    Every other whitespace-separated token must be purely alphabetic, so expressions
    ("x^2", "2x", "12 + 7") never reduce to one of their numbers.
    """
    numbers, words = [], 0
    for token in text.split():
        core = token.strip(".,:;!?\"'()$*_`")
        if _FULL_NUMBER_RE.fullmatch(core):
            numbers.append(core.replace(",", "").rstrip("."))
        elif core.isalpha() or not core:
            words += 1
        else:
            return None
    return numbers[0] if len(numbers) == 1 and words else None


def _scorer_candidates(prediction: str) -> list[str]:
    """Forms of a prediction worth offering a reasoning-gym scorer (which often wants an exact string)."""
    candidates = [prediction, prediction.strip(), _clean(prediction)]
    value = to_number(candidates[-1])
    if value is not None and value.denominator == 1:
        candidates.append(str(value.numerator))  # "156.0" -> "156" (basic_arithmetic scores exact strings)
    sole = _sole_number(candidates[2])
    if sole is not None:
        candidates.append(sole)  # "156 apples" -> "156"
    return list(dict.fromkeys(candidates))


def check_answer(
    prediction: str | None,
    reference: str,
    scorer: Callable[[str], float] | None = None,
) -> bool:
    """Whether ``prediction`` is a correct answer for ``reference``.

    With ``scorer`` (a reasoning-gym ``score_answer`` bound to its entry, called as
    ``scorer(answer) -> float``) the answer is correct iff the score reaches ``1.0`` for
    the prediction or one of its trivially equivalent forms (stripped, markup removed,
    ``"156.0"`` -> ``"156"``, the single number in ``"156 apples"``); a scorer that
    raises counts as wrong. The reference is then unused.

    Without a scorer: normalised string equality, then exact numeric equality when both
    sides are plain numbers, then math-verify (LaTeX / sympy equivalence, e.g.
    ``\\frac{1}{2}`` == ``0.5``).

    Args:
        prediction: Extracted answer (see :func:`extract_answer`); ``None`` is wrong.
        reference: Gold answer string.
        scorer: Optional reasoning-gym style scorer.

    Returns:
        ``True`` if correct.
    """
    if prediction is None:
        return False
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str or None, got {type(prediction).__name__}")
    if scorer is not None:
        for candidate in _scorer_candidates(prediction):
            try:
                if float(scorer(candidate)) >= 1.0:
                    return True
            except Exception:  # noqa: BLE001 - a crashing scorer marks the answer wrong, never the run
                continue
        return False
    reference = str(reference)
    pred_norm, ref_norm = normalize_answer(prediction), normalize_answer(reference)
    if not pred_norm:
        return False
    if pred_norm == ref_norm:
        return True
    pred_num, ref_num = to_number(pred_norm), to_number(ref_norm)
    if pred_num is not None and ref_num is not None:
        return pred_num == ref_num
    sole = _sole_number(pred_norm)
    if ref_num is not None and sole is not None and to_number(sole) == ref_num:
        return True  # "the sum is 42" vs "42"
    return _math_verify(prediction, reference)
