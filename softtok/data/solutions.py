"""Worked solutions of reasoning-gym problems: training targets that show the steps.

A small model asked for a bare number has to do the whole computation in one token; asked
to write the steps (``82 + 88 = 170`` then ``170 - 66 = 104``), it does one small operation
per line, which it can. Training a soft prompt on worked solutions teaches that procedure.
Each solution ends with ``Final answer: <answer>``, the line
:func:`softtok.answers.extract_answer` reads first.

Tasks without a solver here can still train on worked solutions: put them in a JSONL
field and pass ``target="solution"`` with ``solution_field`` to
:class:`~softtok.data.InstructDataModule`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _chain_solution(record: dict[str, Any], task: str, ops: str) -> str:
    """Left-to-right partial results of an expression of ``ops`` (one line per operation)."""
    expression = str(record.get("metadata", {}).get("expression", ""))
    terms = expression.split()
    example = f" {ops[0]} ".join("abc")
    if len(terms) < 3 or len(terms) % 2 == 0 or any(op not in ops for op in terms[1::2]):
        raise ValueError(f"{task} expression {expression!r} is not {example!r} (operators {', '.join(ops)})")
    total, lines = int(terms[0]), []
    for op, term in zip(terms[1::2], terms[2::2], strict=True):
        new = total + int(term) if op == "+" else total - int(term) if op == "-" else total * int(term)
        lines.append(f"{total} {op} {term} = {new}")
        total = new
    if str(total) != str(record["answer"]).strip():
        raise ValueError(f"partial results of {expression!r} give {total}, the record says {record['answer']!r}")
    return "\n".join([*lines, f"Final answer: {total}"])


def chain_sum_solution(record: dict[str, Any]) -> str:
    """Left-to-right partial sums of a reasoning-gym ``chain_sum`` problem.

    Args:
        record: A ``chain_sum`` record (its ``metadata["expression"]``, e.g. ``"82 + 88 - 66"``).

    Returns:
        ``"82 + 88 = 170\\n170 - 66 = 104\\nFinal answer: 104"``.

    Raises:
        ValueError: The record has no well-formed expression, or its answer disagrees with the sums.
    """
    return _chain_solution(record, "chain_sum", "+-")


def products_solution(record: dict[str, Any]) -> str:
    """Left-to-right partial products of a reasoning-gym ``products`` problem.

    ``"3 * 4 * 5"`` gives ``"3 * 4 = 12\\n12 * 5 = 60\\nFinal answer: 60"`` (the out-of-domain
    task of the continuous-CoT results: same format, another operation).

    Raises:
        ValueError: As :func:`chain_sum_solution`.
    """
    return _chain_solution(record, "products", "*")


#: reasoning-gym task -> worked-solution builder.
SOLVERS: dict[str, Callable[[dict[str, Any]], str]] = {"chain_sum": chain_sum_solution, "products": products_solution}


def worked_solution(record: dict[str, Any]) -> str:
    """The worked solution of a reasoning-gym record, by its task.

    Raises:
        ValueError: No solver for the record's task (the message names the tasks that have one).
    """
    task = record.get("task")
    if task not in SOLVERS:
        raise ValueError(f"no worked solutions for task {task!r}; available: {', '.join(sorted(SOLVERS))} "
                         "(or use source='jsonl' with a solution_field)")
    return SOLVERS[task](record)
