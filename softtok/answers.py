"""Final-answer extraction and checking for generated reasoning.

Two pure functions, shared by Soft Thinking evaluation and RL rewards:

* :func:`extract_answer` pulls the final answer out of model text (``\\boxed{}``,
  ``Final answer:``, ``####``, else the last numeric value, taken whole: ``3/4``,
  ``\\frac{1}{2}``, ``10^{-3}``).
* :func:`check_answer` decides whether it is right: with a reasoning-gym scorer
  when one is given, else with `math-verify <https://github.com/huggingface/Math-Verify>`_
  after a fast normalised string / numeric comparison.

Since the verdicts serve as rewards, the rules lean against false positives:

* **Unicode.** Before anything else, text is folded to the ASCII forms of signs,
  digits and separators: the minus sign ``−`` (U+2212), the non-breaking hyphen and
  figure dash (U+2011, U+2012), small and fullwidth forms
  (``－５`` -> ``-5``, ``＋`` -> ``+``, and the whole fullwidth ASCII block), every
  Unicode decimal digit (Arabic-Indic ``٣``, Devanagari, mathematical bold ...) via
  :mod:`unicodedata`, the Arabic decimal and thousands separators, and an en dash
  ``–`` where it is a sign (``= –5``, not the range ``3–5``). No-break, narrow
  no-break, thin and figure spaces (U+00A0, U+202F, U+2009, U+2007) and LaTeX ``\\,``
  / ``{,}`` between groups of three digits are thousands separators (``1\\,234\\,567``
  -> ``1234567``); elsewhere Unicode spaces become plain spaces and zero-width
  characters are dropped. Superscripts (``x²``) are not digits and are kept.
* **Truncated boxes.** A ``\\boxed{`` / ``\\fbox{`` still open at the end of the text
  is a cut-off generation: the final answer was never given, so
  :func:`extract_answer` returns ``None`` rather than a number from inside the box or
  from earlier text (an earlier closed box or ``Final answer:`` was superseded by
  the final box the model began to write).
* **Exact values compare exactly.** math-verify compares exact expressions with a
  numeric tolerance (``\\frac{1}{2^{98}}`` "equals" ``\\frac{1}{2^{99}}``). When
  math-verify accepts a pair whose two sides are exact (no floating-point atoms), the
  difference is also simplified with sympy and the pair is rejected if it is provably
  non-zero; this also applies inside sets, tuples, intervals, matrices, assignments
  (``x = ...``) and relations such as ``x < c``. A decimal written by the model is an approximation:
  math-verify's rounding to 6 decimal places stays (``\\frac{1}{3}`` == ``0.333333``,
  as in math-verify, but ``!= 0.333``), and the values must also agree to a relative
  ``1e-5``, so small magnitudes are not all equal (``10^{-9}`` != ``0.0000000001``).
  Two plain decimals are compared exactly before math-verify is consulted.

Everything is offline. math-verify guards its sympy work with ``signal.alarm``
timeouts, which only work in the main thread; :func:`check_answer` uses them there
(unless an outer alarm is already pending, which they would cancel) and disables
them in any other thread, so it is safe in dataloader threads and callbacks. The
exactness check above runs under the same discipline; if it times out, the pair
counts as not verified.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import unicodedata
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import partial

__all__ = ["extract_answer", "check_answer", "normalize_answer", "to_number"]

# A number: thousands-grouped ("1,234.5"), plain ("-12", "3.50") or leading-dot (".5").
# The sign only counts when not glued to a preceding word or digit ("5-3" -> "3", "x=-3" -> "-3").
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
# The last-value fallback takes a whole numeric expression, never a piece of one: a fraction
# ("3/4", "\frac{1}{2}"), scientific notation ("1e-3"), a power ("10^{-3}", "2^10") or a
# time / ratio ("12:30") is returned whole, not its denominator, exponent or minutes.
_VALUE_RE = re.compile(
    r"(?<![\w.\\])[-+]?(?:"
    r"\\[dt]?frac\s*\{\s*[-+]?" + _NUM + r"\s*\}\s*\{\s*[-+]?" + _NUM + r"\s*\}"
    r"|" + _NUM + r"(?:\s*/\s*[-+]?" + _NUM + r"|[eE][-+]?\d+|\s*\^\s*(?:\{\s*[-+]?" + _NUM + r"\s*\}|[-+]?\d+)"
    r"|:\d{2}(?!\d))?"
    r")"
)
_SCIENTIFIC_RE = re.compile(r"[-+]?" + _NUM + r"[eE][-+]?\d+")
_FULL_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+|\d+\.)")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "Final answer:" or "final answer is" (a bare "final answer" in prose is not a marker).
_FINAL_RE = re.compile(r"final\s+answer\s*(?:[:：]|\bis\b\s*[:：]?)", re.IGNORECASE)
_HASHES_RE = re.compile(r"####")
# Markup that wraps an answer but is not part of it: bold/italic, inline math, quotes.
_EDGE_CHARS = " \t*_`\"'"
_MAX_VERIFY_CHARS = 500  # longer strings skip math-verify (sympy on huge input can hang without a timeout)
_VERIFY_TIMEOUT_S = 5
# A decimal approximation must match an exact value to this relative error as well as to
# math-verify's 6 decimal places (which alone would make every number below 5e-7 equal to 0).
_FLOAT_REL_TOL = 1e-5

# Unicode -> ASCII for signs and separators that are always what they look like.
_FOLD = {0xFF01 + i: chr(0x21 + i) for i in range(0x5E)}  # fullwidth ASCII block: "－５" -> "-5", "＋", "："
_FOLD.update(
    {
        0x2212: "-",  # MINUS SIGN
        0x2011: "-",  # NON-BREAKING HYPHEN (word processors' "-5")
        0x2012: "-",  # FIGURE DASH (a dash the width of a digit)
        0xFE63: "-",  # SMALL HYPHEN-MINUS
        0xFE62: "+",  # SMALL PLUS SIGN
        0x066B: ".",  # ARABIC DECIMAL SEPARATOR
        0x066C: ",",  # ARABIC THOUSANDS SEPARATOR
        0x00AD: None,  # soft hyphen and zero-width characters carry nothing
        0x200B: None,
        0x200C: None,
        0x200D: None,
        0x2060: None,
        0xFEFF: None,
    }
)
# Spaces used to group digits (NBSP, figure, thin, narrow NBSP; LaTeX "\," and "{,}") between 3-digit groups.
_GROUP_SEP = r"(?:[\u00a0\u2007\u2009\u202f]|\\,|\{,\})"
_GROUPED_RE = re.compile(r"(?<![\d.^_])\d{1,3}(?:" + _GROUP_SEP + r"\d{3})+(?!\d)")
_GROUP_SEP_RE = re.compile(_GROUP_SEP)
# An en dash is a minus only as a sign: not after a word, digit or closing bracket ("3–5" is a range).
_EN_DASH_SIGN_RE = re.compile(r"(?<![\w)\]}.])\u2013(?=\.?\d|\\)")
_UNICODE_DIGIT_RE = re.compile(r"(?![0-9])\d")  # any Unicode decimal digit (category Nd) but ASCII
_UNICODE_SPACE_RE = re.compile(r"[^\S\n\r\t\f\v ]")  # whitespace other than ASCII: NBSP, thin, ideographic ...


class _DropTimeoutWarning(logging.Filter):
    """Silence math-verify's one-off "Timeout is disabled" warning: we disable it on purpose off the main thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())


def _fold_unicode(text: str) -> str:
    """ASCII forms of the Unicode signs, digits and digit separators in ``text`` (see the module docstring).

    Examples:
        >>> _fold_unicode("\\u2212\\uff15 and \\u0663\\u066b\\u0665 and 1\\u202f234")
        '-5 and 3.5 and 1234'
    """
    if not text.isascii():
        text = text.translate(_FOLD)
        text = _UNICODE_DIGIT_RE.sub(lambda match: str(unicodedata.decimal(match.group())), text)
    if "\\," in text or "{,}" in text or not text.isascii():
        text = _GROUPED_RE.sub(lambda match: _GROUP_SEP_RE.sub("", match.group()), text)
    if not text.isascii():
        text = _EN_DASH_SIGN_RE.sub("-", text)
        text = _UNICODE_SPACE_RE.sub(" ", text)
    return text


def _last_boxed(text: str) -> tuple[str | None, bool]:
    """Content of the last closed ``\\boxed{...}`` / ``\\fbox{...}``, and whether a box is still open at the end.

    One pass over the text, so degenerate repetitions stay linear. Escaped braces
    (``\\{``, ``\\}``) are literal characters in LaTeX and do not count. A box whose
    braces do not balance before the end of the text is a generation cut off inside
    its final answer.
    """
    openers = {match.end() - 1: match.end() for match in _BOXED_RE.finditer(text)}  # "{" index -> content start
    if not openers:
        return None, False
    open_boxes: list[tuple[int, int]] = []  # (brace depth of the box, content start)
    depth, last, i = 0, None, 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip what a backslash escapes: a command letter, \{, \} or \\
            continue
        if char == "{":
            depth += 1
            if i in openers:
                open_boxes.append((depth, openers[i]))
        elif char == "}":
            if open_boxes and open_boxes[-1][0] == depth:
                start = open_boxes.pop()[1]
                if last is None or start > last[0]:
                    last = (start, i)
            depth -= 1
        i += 1
    if open_boxes:
        return None, True
    return (text[last[0] : last[1]].strip() if last else None), False


def last_boxed(text: str) -> str | None:
    """Content of the last closed ``\\boxed{...}`` / ``\\fbox{...}`` of ``text``.

    ``None`` without one, and when a box is still open at the end (a cut-off generation).
    """
    return _last_boxed(text)[0]


def _clean(text: str) -> str:
    """Strip surrounding markup (``**``, quotes, ``$``), a trailing period and thousands commas of a number."""
    text = _fold_unicode(text)
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
    its line; the text after the last ``####``; else the last numeric value in the text,
    taken whole: a fraction (``3/4``, ``\\frac{1}{2}``), scientific notation (``1e-3``),
    a power (``10^{-3}``) or a time (``12:30``), never its denominator or exponent alone;
    scientific notation becomes a plain decimal (``1e-3`` -> ``0.001``).
    Surrounding markup (``**``, ``$``, quotes) and a trailing period are stripped, and
    a thousands-grouped number loses its commas (``1,234`` -> ``1234``).

    The text is first folded to ASCII signs and digits (``−5`` -> ``-5``, ``５`` ->
    ``5``, ``1 234`` with a narrow no-break space -> ``1234``; see the module
    docstring). A ``\\boxed{`` / ``\\fbox{`` still open at the end of the text means the
    generation was cut off before its final answer was complete: the result is then
    ``None``, not a number from inside the box or an answer the box was replacing.

    Args:
        text: Model output (thinking and/or answer phase).

    Returns:
        The answer string, or ``None`` if nothing answer-like is found or the final box
        is unclosed.

    Raises:
        TypeError: If ``text`` is not a str.

    Examples:
        >>> extract_answer("so it is \\\\boxed{\\\\frac{1}{2}}.")
        '\\\\frac{1}{2}'
        >>> extract_answer("**Final answer:** 1,234.")
        '1234'
        >>> extract_answer("12 + 7 = 19 apples")
        '19'
        >>> extract_answer("The probability is 3/4.")
        '3/4'
        >>> extract_answer("The answer is \\u22125.")
        '-5'
        >>> extract_answer("so the answer is \\\\boxed{\\\\frac{1}{2") is None
        True
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a str, got {type(text).__name__}")
    text = _fold_unicode(text)
    boxed, truncated = _last_boxed(text)
    if truncated:
        return None
    if boxed:
        return _clean(boxed) or None
    for pattern in (_FINAL_RE, _HASHES_RE):
        found = _after_marker(text, pattern)
        if found:
            return found
    values = [match.group() for match in _VALUE_RE.finditer(text)]
    if not values:
        return None
    last = values[-1]
    if _FULL_NUMBER_RE.fullmatch(last):
        return last.replace(",", "")
    if _SCIENTIFIC_RE.fullmatch(last):
        return format(Decimal(last.replace(",", "")).normalize(), "f")  # "1e-3" -> "0.001": compares exactly
    return last


def to_number(text: str) -> Fraction | None:
    """Exact value of a plain decimal number string, else ``None``.

    Accepts ``"-1,234.50"``, ``"+3"``, ``".5"`` and their Unicode forms (``"−5"``,
    ``"－５"``, Arabic-Indic digits, no-break-space thousands separators).

    Args:
        text: The string to read.

    Returns:
        The value as a :class:`~fractions.Fraction`, or ``None`` if ``text`` is not a plain number.
    """
    text = _fold_unicode(text).strip()
    if not _FULL_NUMBER_RE.fullmatch(text):
        return None
    try:
        return Fraction(Decimal(text.replace(",", "")))
    except (InvalidOperation, ValueError):
        return None


def normalize_answer(text: str) -> str:
    """Normalised form for string comparison: ASCII signs and digits, no markup, collapsed whitespace, lower case."""
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


class _ExactCheckTimeout(BaseException):
    """The alarm around :func:`_provably_different` fired (a BaseException: sympy must not catch it)."""


def _with_timeout(func: Callable[[], bool], seconds: int | None) -> bool:
    """``func()`` under a ``signal.alarm`` of ``seconds`` (no alarm if ``None``); ``True`` if it times out.

    Used for :func:`_provably_different`, where ``True`` on a timeout means "not verified".
    """
    if seconds is None:
        return func()

    def _raise(signum, frame):
        raise _ExactCheckTimeout

    previous = signal.signal(signal.SIGALRM, _raise)
    try:
        try:
            signal.alarm(seconds)
            return func()
        finally:
            signal.alarm(0)
    except _ExactCheckTimeout:
        return True
    finally:
        signal.signal(signal.SIGALRM, previous)


def _values_differ(gold, pred) -> bool:
    """Whether two sympy expressions are provably different values.

    Exact sides (no Float atoms): the simplified difference is a number that sympy
    shows non-zero (symbols may cancel: ``x - 2^{-98}`` vs ``x - 2^{-99}``). A side with
    a Float is an approximation: different if both are numbers whose relative
    difference exceeds :data:`_FLOAT_REL_TOL`. Anything else (symbols left in the
    difference, percentages, failures) is not provably different.
    """
    from sympy import Float, UnevaluatedExpr, simplify

    if gold.has(UnevaluatedExpr) or pred.has(UnevaluatedExpr):
        return False  # math-verify's percentages ("9\%" == "9" on purpose)
    try:
        if gold.has(Float) or pred.has(Float):
            if not (gold.is_number and pred.is_number):
                return False
            a, b = gold.doit().evalf(30), pred.doit().evalf(30)
            diff = abs((a - b).evalf(30))
            scale = max(abs(a), abs(b))
            return bool(diff.is_comparable and scale.is_comparable and diff > _FLOAT_REL_TOL * scale)
        diff = (gold - pred).doit()
        if not diff.is_Number:
            diff = simplify(diff)
        return bool(diff.is_number and diff.is_zero is False)
    except Exception:  # noqa: BLE001 - sympy cannot do the arithmetic: undecided, math-verify's verdict stands
        return False


def _relation_parts(relation):
    """``(type, symbol, value)`` of a relation between a symbol and a constant, symbol first, else ``None``."""
    from sympy import Symbol

    if isinstance(relation.rhs, Symbol) and not relation.lhs.free_symbols:
        relation = relation.reversed  # "1/2 > x" -> "x < 1/2"
    if isinstance(relation.lhs, Symbol) and not relation.rhs.free_symbols:
        return type(relation), relation.lhs, relation.rhs
    return None


def _elements(value):
    """``(elements, ordered)`` of a tuple, interval (its endpoints), finite set or single expression, else ``None``."""
    from sympy import Expr, FiniteSet, Interval, Tuple

    if isinstance(value, Tuple):
        return value.args, True
    if isinstance(value, Interval):
        return (value.start, value.end), True
    if isinstance(value, FiniteSet):
        return value.args, False
    if isinstance(value, Expr):
        return (value,), True  # math-verify compares a value with a set as a singleton
    return None


def _provably_different(gold, pred) -> bool:
    """Whether two parsed answers that math-verify accepted are in fact different exact values.

    math-verify compares expressions numerically with a tolerance (and decimals by
    rounding), so it accepts ``\\frac{1}{2^{98}}`` for ``\\frac{1}{2^{99}}`` and
    ``0.0000000001`` for ``10^{-9}``. This veto decides the underlying values with
    :func:`_values_differ`, looking into what math-verify looks into: matrices,
    tuples, intervals and finite sets (element-wise; a set in any order), assignments
    (``x = v`` against ``v``, and an equation's right side against a value) and relations
    between one symbol and a constant. It only ever rejects; what it cannot decide is
    left to math-verify.

    Args:
        gold: Parsed reference (a sympy object or a string).
        pred: Parsed prediction.

    Returns:
        ``True`` if the pair is provably different.
    """
    from sympy import Basic, Eq, Expr, MatrixBase, Symbol
    from sympy.core.relational import Relational

    if isinstance(gold, MatrixBase) and isinstance(pred, MatrixBase):
        return gold.shape == pred.shape and any(_provably_different(a, b) for a, b in zip(gold, pred, strict=True))
    if not isinstance(gold, Basic) or not isinstance(pred, Basic):
        return False
    # math-verify's unwrapping: "x = 1/2" against "1/2" compares values; so does "3 + 2 = 5" against "5".
    if isinstance(pred, Eq) and not isinstance(gold, Relational):
        pred = pred.rhs
    elif isinstance(gold, Eq) and isinstance(gold.lhs, Symbol) and not isinstance(pred, Relational):
        gold = gold.rhs
    if isinstance(gold, Relational) and isinstance(pred, Relational):
        gold_parts, pred_parts = _relation_parts(gold), _relation_parts(pred)
        if gold_parts is None or pred_parts is None or gold_parts[0] is not pred_parts[0]:
            return False
        if gold_parts[1] != pred_parts[1]:
            return True  # "x = 1" is not "y = 1" (math-verify's strict mode: variables matter)
        return _values_differ(gold_parts[2], pred_parts[2])
    if isinstance(gold, Expr) and isinstance(pred, Expr):
        return _values_differ(gold, pred)
    gold_items, pred_items = _elements(gold), _elements(pred)
    if gold_items is None or pred_items is None or len(gold_items[0]) != len(pred_items[0]):
        return False
    (gold_args, gold_ordered), (pred_args, pred_ordered) = gold_items, pred_items
    if gold_ordered and pred_ordered:
        return any(_provably_different(a, b) for a, b in zip(gold_args, pred_args, strict=True))
    # A set: some element of one side differs from every element of the other.
    return any(all(_provably_different(a, b) for b in pred_args) for a in gold_args) or any(
        all(_provably_different(a, b) for a in gold_args) for b in pred_args
    )


def _math_verify(prediction: str, reference: str) -> bool:
    """math-verify equivalence of two answer strings (LaTeX or plain), ``False`` on any failure.

    A pair math-verify accepts is rejected when :func:`_provably_different` shows the
    exact values differ (math-verify's numeric tolerance is not equality).
    """
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
        for gold_item in gold:
            for pred_item in pred:
                if not verify(gold_item, pred_item, timeout_seconds=timeout):
                    continue
                if not _with_timeout(partial(_provably_different, gold_item, pred_item), timeout):
                    return True
        return False
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
    Unicode signs and digits folded to ASCII, ``"156.0"`` -> ``"156"``, the single number
    in ``"156 apples"``); a scorer that raises counts as wrong. The reference is then unused.

    Without a scorer, both sides are folded to ASCII signs and digits (``"−5"`` ==
    ``"-5"``, ``"５"`` == ``"5"``), then compared by normalised string equality, then
    exact numeric equality when both sides are plain numbers, then math-verify
    (LaTeX / sympy equivalence, e.g. ``\\frac{1}{2}`` == ``0.5``). Exact values must be
    equal exactly (``\\frac{1}{2^{98}}`` != ``\\frac{1}{2^{99}}``, ``2^{64}`` !=
    ``18446744073709551617``); a decimal approximation of an exact value counts when it
    matches to 6 decimal places and a relative ``1e-5`` (``0.333333`` == ``\\frac{1}{3}``,
    ``0.333`` != ``\\frac{1}{3}``, ``0.0000000001`` != ``10^{-9}``); see the module docstring.

    A prediction with a ``\\boxed{`` / ``\\fbox{`` still open at its end is a cut-off
    generation and is wrong in both modes.

    Args:
        prediction: Extracted answer (see :func:`extract_answer`); ``None`` is wrong.
        reference: Gold answer string.
        scorer: Optional reasoning-gym style scorer.

    Returns:
        ``True`` if correct.

    Raises:
        TypeError: If ``prediction`` is neither a str nor ``None``.
    """
    if prediction is None:
        return False
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str or None, got {type(prediction).__name__}")
    if _last_boxed(_fold_unicode(prediction))[1]:
        return False  # a truncated final box: no answer was given
    if scorer is not None:
        for candidate in _scorer_candidates(prediction):
            try:
                if float(scorer(candidate)) >= 1.0:
                    return True
            except Exception:  # noqa: BLE001 - a crashing scorer marks the answer wrong, never the run
                continue
        return False
    prediction, reference = _fold_unicode(prediction), _fold_unicode(str(reference))
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
