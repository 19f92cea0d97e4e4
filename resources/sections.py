"""The configuration's sections as Dagster config: fields come from `attention_influence.config`, never
declared twice, so the launchpad shows every knob with its description and default."""

from __future__ import annotations

import types
import typing

import dagster as dg
import pydantic

from attention_influence.config import ConfigError, Section


def _dagster_type(annotation):
    """Dagster's config types have no Literal or constraints: the values are checked by `validated`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _dagster_type(args[0])
    if origin is typing.Literal:
        return type(args[0])
    if origin is list:
        return list[_dagster_type(args[0])]
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        # a number or a word ("auto"): any value in the launchpad, checked by the section's model
        kind = _dagster_type(inner[0]) if len(inner) == 1 else typing.Any
        return typing.Optional[kind] if type(None) in args else kind  # noqa: UP045 - dagster reads Optional
    return annotation


def section_fields(section: type[Section], **defaults) -> dict:
    """pydantic `create_model` field definitions of a section; `defaults` replace the model's."""
    return {
        name: (
            _dagster_type(info.annotation),
            pydantic.Field(default=defaults.get(name, info.default), description=info.description),
        )
        for name, info in section.model_fields.items()
    }


def section_config(section: type[Section]) -> type[dg.Config]:
    """A `dg.Config` class with the section's fields (nested config of a resource)."""
    return pydantic.create_model(
        section.__name__.removesuffix("Config"), __base__=dg.Config, **section_fields(section)
    )


def section_resource(section: type[Section]) -> type[dg.ConfigurableResource]:
    """A `ConfigurableResource` base class whose fields are the section's."""
    return pydantic.create_model(
        f"{section.__name__.removesuffix('Config')}Fields",
        __base__=dg.ConfigurableResource,
        **section_fields(section),
    )


def validated(section: type[Section], values, where: str, prefix: str):
    """The section's model from resource config (launchpad values included); errors name the key."""
    data = values.model_dump() if hasattr(values, "model_dump") else dict(values)
    data = {k: v for k, v in data.items() if k in section.model_fields}
    try:
        return section.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = [
            f"{prefix}.{err['loc'][0]} = {err.get('input')!r} in {where}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
