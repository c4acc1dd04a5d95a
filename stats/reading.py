"""How an effect reads in words: one format for the decision's reasons and the Evolution's journal.

No numpy or scipy here: the Evolution's reconcile imports it without the decision machinery."""

from __future__ import annotations


def format_effect(value: float, relative: bool) -> str:
    """A lift as a signed percentage ('+5.53%'), a difference as a signed number ('+0.03125')."""
    return f"{value * 100:+.3g}%" if relative else f"{value:+.4g}"
