"""The OpenAPI schema: what FastAPI derives from the routes, plus the bodies routes read
themselves.

A route that must check something before its body is read (the send route authenticates
first; the callback route verifies a signature over the raw form) reads the body by hand,
so FastAPI cannot see it. `body_read_by_hand(Model)` declares that body from its model,
as FastAPI would have.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app import errors

REF = "#/components/schemas/{model}"
_read_by_hand: dict[str, type[BaseModel]] = {}


def body_read_by_hand(
    model: type[BaseModel], media_type: str = "application/json"
) -> dict[str, Any]:
    """`openapi_extra` declaring a required request body of this model."""
    _read_by_hand[model.__name__] = model
    ref = REF.format(model=model.__name__)
    return {"requestBody": {"required": True, "content": {media_type: {"schema": {"$ref": ref}}}}}


def schema_of(app: FastAPI) -> dict[str, Any]:
    """The app's schema, built once; errors as application/problem+json."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, definitions = models_json_schema(
            [(model, "validation") for model in _read_by_hand.values()], ref_template=REF
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(definitions.get("$defs", {}))
        app.openapi_schema = errors.move_problems_to_problem_json(schema)
    return app.openapi_schema
