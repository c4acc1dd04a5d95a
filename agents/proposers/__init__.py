"""Proposers behind one interface (`Proposer.propose(ProposalRequest) -> ProposerResult`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cambrian.errors import ConfigError
from cambrian.agents.proposers.base import Proposer, ProposalRequest, ProposerResult

if TYPE_CHECKING:
    from cambrian.agents.settings import ProviderSettings

__all__ = ["Proposer", "ProposalRequest", "ProposerResult", "make_proposer"]


def make_proposer(settings: "ProviderSettings", seed: int = 0) -> Proposer:
    """Build the configured proposer; a missing key is a clear ConfigError, never a silent fallback."""
    if settings.kind == "builtin":
        from cambrian.agents.proposers.builtin import BuiltinProposer

        return BuiltinProposer(seed=seed)
    key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    if settings.kind == "gemini":
        from cambrian.agents.proposers.llm import DEFAULT_GEMINI_MODEL, GeminiProposer

        key = key or os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        if not key:
            raise ConfigError("provider.kind is gemini but no API key is set (GEMINI_API_KEY)",
                              hint="export GEMINI_API_KEY, or set provider.api_key_env, or use provider.kind: builtin")
        return GeminiProposer(
            model=settings.model or DEFAULT_GEMINI_MODEL, api_key=key, base_url=settings.base_url,
            temperature=settings.temperature, max_output_tokens=settings.max_output_tokens, timeout_s=settings.timeout_s,
        )
    if settings.kind == "openai":
        from cambrian.agents.proposers.llm import OpenAIProposer

        if not settings.model:
            raise ConfigError("provider.model is required for provider.kind openai")
        return OpenAIProposer(
            model=settings.model, base_url=settings.base_url, api_key=key, temperature=settings.temperature,
            max_output_tokens=settings.max_output_tokens, structured=settings.structured, timeout_s=settings.timeout_s,
        )
    raise ConfigError(f"provider.kind: unknown provider {settings.kind!r}")
