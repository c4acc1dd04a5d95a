"""What an Evolution did with a child, remembered in two steps (pure, both platforms): the child's name in a
status list (handledDecisions, superseded, repairs) until the next reconcile marks the child (actions.Mark), then
the mark alone. A mark is written only for a name the persisted status holds, so a crash before that status was
saved never leaves a mark for something not done; the name is forgotten once the mark is seen, so the bounded
lists hold only what is on its way and nothing falls off them to be done again."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

Marks = Mapping[str, "str | None"]  # child name -> its mark (None: not marked yet)


def to_mark(persisted: Iterable[str], marks: Marks) -> list[str]:
    """The children the persisted list names that are not marked yet, by name."""
    done = set(persisted)
    return sorted(n for n, m in marks.items() if m is None and n in done)


def forget_marked(names: Sequence[str], marks: Marks) -> list[str]:
    return [n for n in names if marks.get(n) is None]
