"""Request bodies of the OpenAI-compatible endpoints: strict msgspec structs.

Unknown fields, wrong types and out-of-range values are refused by msgspec
while decoding; the app turns that into a 400 that names the field. Only the
parameters the server honours exist here, so nothing is silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
Stop = str | Annotated[list[str], msgspec.Meta(max_length=4)] | None
OnlyOne = Annotated[int, msgspec.Meta(ge=1, le=1, description="only n=1 is supported")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    """``stream_options``: ``include_usage`` adds a last chunk carrying the usage counts."""

    include_usage: bool = False


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    """One chat turn."""

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class SamplingFields(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Fields shared by completions and chat completions."""

    model: Name
    max_tokens: PositiveInt | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    stop: Stop = None
    seed: int | None = None
    n: OnlyOne = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stops(self) -> list[str]:
        """``stop`` as a list of non-empty strings."""
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]


class CompletionRequest(SamplingFields, kw_only=True):
    """``POST /v1/completions``."""

    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=1)]

    def text(self) -> str:
        """The single prompt."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ChatCompletionRequest(SamplingFields, kw_only=True):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
