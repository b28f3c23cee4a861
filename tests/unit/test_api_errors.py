"""API errors: OpenAI's error shape, statuses, and field names from validation errors."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError

from slipway.api.errors import (
    ApiError,
    field_path,
    from_exception,
    from_validation,
    overloaded,
    rate_limited,
)
from slipway.api.keys import AuthError, ScopeError


class Message(BaseModel):
    role: str
    content: str = Field(min_length=1)


class Chat(BaseModel):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=1, le=512)


def test_validation_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        Chat.model_validate({"messages": [{"role": "user", "content": ""}], "max_tokens": 9999})
    error = from_validation(caught.value.errors())
    assert error.status == 400 and error.param == "messages.0.content"
    assert error.message.startswith("messages.0.content: ") and "(and 1 more)" in error.message
    body = error.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"


def test_malformed_json_is_a_400_not_a_500() -> None:
    with pytest.raises(ValidationError) as caught:
        Chat.model_validate_json(b'{"messages": [')
    error = from_validation(caught.value.errors())
    assert error.status == 400 and error.code == "json_invalid"


def test_exceptions_map_to_statuses_without_leaking_internals() -> None:
    assert from_exception(AuthError("Unknown API key.")).status == 401
    assert from_exception(ScopeError("no")).body()["error"]["code"] == "insufficient_scope"
    internal = from_exception(RuntimeError("/secret/path exploded"))
    assert internal.status == 500 and "/secret" not in internal.message
    mine = ApiError(413, "too big", param="texts")
    assert from_exception(mine) is mine
    with pytest.raises(ApiError, match="413 too big") as raised:
        try:
            raise KeyError("x")
        except KeyError as exc:
            raise mine from exc
    assert isinstance(raised.value.__cause__, KeyError)
    assert rate_limited(0.2).status == 429 and "1 s" in rate_limited(0.2).message
    assert overloaded().status == 503


@pytest.mark.parametrize(
    ("loc", "path"), [(("body", "texts", 3), "texts.3"), (("body",), None), (("query", "k"), "k")]
)
def test_field_path(loc: tuple, path: str | None) -> None:
    assert field_path(loc) == path
