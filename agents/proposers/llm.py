"""LLM proposers: Gemini through google-genai (structured output) and any OpenAI-compatible endpoint.

Both return a ProposerResult and never raise for a bad answer: an API error, an empty answer
(finishReason MAX_TOKENS) or malformed JSON becomes `result.error`, which the loop journals as a
Rejected hypothesis after one retry.
"""

from __future__ import annotations

import os
from typing import Any

from cambrian.agents.proposers.base import (
    PROPOSAL_SCHEMA,
    ProposalParseError,
    ProposalRequest,
    ProposerResult,
    parse_response_text,
)

DEFAULT_GEMINI_MODEL = "gemini-2.5-pro"
SYSTEM = "You are the Offline Agent of a self-evolving recommender system. Answer with JSON only."


def _finish(result: ProposerResult, text: str | None) -> ProposerResult:
    result.raw_text = text or ""
    try:
        result.proposals, result.queries = parse_response_text(result.raw_text)
    except ProposalParseError as exc:
        why = str(exc)
        if result.finish_reason and result.finish_reason not in ("STOP", "stop"):
            why += f" (finish reason {result.finish_reason})"
        result.error = why
    return result


class GeminiProposer:
    name = "gemini"

    def __init__(
        self,
        model: str = DEFAULT_GEMINI_MODEL,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float = 0.9,
        max_output_tokens: int = 8192,
        timeout_s: float = 300.0,
        client: Any = None,
    ):
        from google import genai
        from google.genai import types

        self.model = model
        self._types = types
        self.temperature = temperature
        self.max_output_tokens = max_output_tokens
        if client is None:
            key = api_key or os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
            if not key:
                raise ValueError("the gemini provider needs GEMINI_API_KEY (or provider.api_key)")
            http = types.HttpOptions(
                base_url=base_url,
                timeout=int(timeout_s * 1000),
                retry_options=types.HttpRetryOptions(attempts=2),
            )
            client = genai.Client(api_key=key, http_options=http)
        self.client = client

    def propose(self, request: ProposalRequest) -> ProposerResult:
        types = self._types
        result = ProposerResult(model=self.model)
        try:
            response = self.client.models.generate_content(
                model=self.model,
                contents=request.prompt,
                config=types.GenerateContentConfig(
                    system_instruction=SYSTEM,
                    temperature=self.temperature,
                    max_output_tokens=self.max_output_tokens,
                    response_mime_type="application/json",
                    response_json_schema=PROPOSAL_SCHEMA,
                ),
            )
        except Exception as exc:  # any API/transport error is a failed wake-up, not a crashed loop
            result.error = f"gemini API error: {type(exc).__name__}: {str(exc)[:300]}"
            return result
        usage = getattr(response, "usage_metadata", None)
        if usage is not None:
            result.input_tokens = int(usage.prompt_token_count or 0)
            result.output_tokens = int((usage.candidates_token_count or 0) + (getattr(usage, "thoughts_token_count", 0) or 0))
        cands = getattr(response, "candidates", None) or []
        if cands and cands[0].finish_reason is not None:
            fr = cands[0].finish_reason
            result.finish_reason = getattr(fr, "name", None) or str(fr)
        try:
            text = response.text
        except Exception:  # .text raises on some blocked responses
            text = None
        return _finish(result, text)


class OpenAIProposer:
    """Any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, LiteLLM, OpenAI itself)."""

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.9,
        max_output_tokens: int = 8192,
        structured: bool = True,
        timeout_s: float = 300.0,
    ):
        import openai

        self.model = model
        self.temperature = temperature
        self.max_output_tokens = max_output_tokens
        self.structured = structured
        key = api_key or os.environ.get("OPENAI_API_KEY") or "none"
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=1)

    def propose(self, request: ProposalRequest) -> ProposerResult:
        result = ProposerResult(model=self.model)
        fmt: dict[str, Any] = (
            {"type": "json_schema", "json_schema": {"name": "proposals", "schema": PROPOSAL_SCHEMA}}
            if self.structured
            else {"type": "json_object"}
        )
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": request.prompt}],
                temperature=self.temperature,
                max_tokens=self.max_output_tokens,
                response_format=fmt,
            )
        except Exception as exc:
            result.error = f"openai API error: {type(exc).__name__}: {str(exc)[:300]}"
            return result
        if response.usage is not None:
            result.input_tokens = int(response.usage.prompt_tokens or 0)
            result.output_tokens = int(response.usage.completion_tokens or 0)
        text = None
        if response.choices:
            result.finish_reason = response.choices[0].finish_reason
            text = response.choices[0].message.content
            if result.finish_reason == "length":
                result.finish_reason = "MAX_TOKENS"
        return _finish(result, text)
