"""Derive the fast decoder's types from the pydantic models, so it has no schema of its own.

Every constraint pydantic knows about a field (type, bounds, lengths, literal values,
defaults, unknown fields forbidden) is translated to msgspec's equivalent. Two kinds of
constraint on top-level fields are instead returned as `ColumnCheck`s, run once per batch on
the Arrow column by the decoder: regex patterns (Python's `re` per value costs several times
the whole decode; Arrow's RE2 has the same end-of-text semantics as pydantic's Rust regex) and
bounds on times (msgspec has none). Checks that are plain Python functions (pydantic
`AfterValidator`s and `model_validator(mode="after")`s) are called from the Struct's
`__post_init__`, so both decoders run the very same code.
"""

from dataclasses import dataclass
from datetime import datetime
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import msgspec
from pydantic import AfterValidator, AwareDatetime, BaseModel, StringConstraints
from pydantic_core import PydanticUndefined

from schemas.arrow import optional_of
from schemas.errors import require


@dataclass(frozen=True)
class ColumnCheck:
    """A constraint on a top-level field, checked on its whole Arrow column.

    `kind` is `pattern` (value: a regex) or one of `gt`, `ge`, `lt`, `le` (value: a bound).
    """

    path: str
    kind: str
    value: Any


def python_pattern(pattern: str) -> str:
    # pydantic matches with Rust regex, where `$` is the end of text; Python's `$` also matches
    # before a final newline, which would let "id\n" through. `\Z` is Python's end of text.
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern


def constraints_of(metadata: list[Any]) -> tuple[dict[str, Any], list[Any]]:
    """msgspec.Meta keyword arguments and Python validators of one field's metadata."""
    kwargs: dict[str, Any] = {}
    validators: list[Any] = []
    for item in metadata:
        if isinstance(item, StringConstraints):
            for name in ("min_length", "max_length", "pattern"):
                if getattr(item, name) is not None:
                    kwargs[name] = getattr(item, name)
        elif isinstance(
            item, annotated_types.Gt | annotated_types.Ge | annotated_types.Lt | annotated_types.Le
        ):
            kind = type(item).__name__.lower()
            kwargs[kind] = getattr(item, kind)
        elif isinstance(item, annotated_types.MinLen | annotated_types.MaxLen):
            kind = "min_length" if isinstance(item, annotated_types.MinLen) else "max_length"
            kwargs[kind] = getattr(item, kind)
        elif isinstance(item, AfterValidator):
            validators.append(item.func)
        else:
            raise TypeError(f"no msgspec translation for field metadata {item!r}; extend schemas/derive.py")
    return kwargs, validators


class Derived:
    """Struct types derived from pydantic models, each model becoming one Struct."""

    def __init__(self) -> None:
        self._structs: dict[type[BaseModel], type[msgspec.Struct]] = {}
        self.column_checks: dict[type[BaseModel], list[ColumnCheck]] = {}

    def envelope_struct(self, model: type[BaseModel], tag_field: str) -> type[msgspec.Struct]:
        """The Struct of an envelope model, tagged by `tag_field`; its column checks are kept."""
        checks: list[ColumnCheck] = []
        struct = self._struct_for(model, tag_field, checks, prefix="")
        self.column_checks[model] = checks
        return struct

    def _struct_for(
        self, model: type[BaseModel], tag_field: str | None, checks: list[ColumnCheck] | None, prefix: str
    ) -> type[msgspec.Struct]:
        if model in self._structs:
            return self._structs[model]
        fields: list[tuple[str, Any, Any]] = []
        field_validators: list[tuple[str, Any]] = []
        tag: str | None = None
        for name, info in model.model_fields.items():
            if name == tag_field:
                (tag,) = get_args(info.annotation)
                continue
            kwargs, validators = constraints_of(list(info.metadata))
            if checks is not None:
                kwargs = _split_column_checks(info.annotation, kwargs, checks, prefix + name)
            nested_checks = checks if name == "data" else None
            field_type = self._type_for(info.annotation, kwargs, nested_checks, prefix + name + ".")
            field_validators.extend((name, check) for check in validators)
            fields.append((name, field_type, info.default))
        model_validators = [
            decorator.func
            for decorator in model.__pydantic_decorators__.model_validators.values()
            if decorator.info.mode == "after"
        ]
        # Fields without defaults must come first in a Struct; the wire format does not care.
        fields.sort(key=lambda field: field[2] is not PydanticUndefined)
        namespace = (
            {"__post_init__": _post_init(field_validators, model_validators)}
            if field_validators or model_validators
            else {}
        )
        struct = msgspec.defstruct(
            model.__name__,
            [
                (name, field_type) if default is PydanticUndefined else (name, field_type, default)
                for name, field_type, default in fields
            ],
            namespace=namespace,
            forbid_unknown_fields=True,
            frozen=True,
            # Decoded events hold only strings, numbers and other such Structs: no cycles, so
            # the cyclic GC need not track the millions of them a batch makes.
            gc=False,
            tag_field=tag_field if tag is not None else None,
            tag=tag,
        )
        self._structs[model] = struct
        return struct

    def _type_for(
        self, annotation: Any, kwargs: dict[str, Any], checks: list[ColumnCheck] | None, prefix: str
    ) -> Any:
        origin = get_origin(annotation)
        if annotation is AwareDatetime:
            return Annotated[datetime, msgspec.Meta(tz=True, **kwargs)]
        if annotation in (str, int, bool):
            if "pattern" in kwargs:
                kwargs = {**kwargs, "pattern": python_pattern(str(kwargs["pattern"]))}
            return Annotated[annotation, msgspec.Meta(**kwargs)] if kwargs else annotation
        if origin is Literal:
            require(not kwargs, "constraints on a Literal are meaningless")
            return annotation
        if origin is list:
            (item,) = get_args(annotation)
            list_type = list[self._type_for(item, {}, None, prefix)]  # type: ignore[misc]
            return Annotated[list_type, msgspec.Meta(**kwargs)] if kwargs else list_type
        if origin is Annotated:
            inner, *metadata = get_args(annotation)
            inner_kwargs, validators = constraints_of(metadata)
            require(not validators, f"no validators inside an optional field: {annotation!r}")
            return self._type_for(inner, {**inner_kwargs, **kwargs}, checks, prefix)
        if optional_of(annotation) is not None:
            # `T | None = None`: an optional field, null when absent. Its constraints stay in msgspec
            # (not column checks: a null would fail them there).
            return self._type_for(optional_of(annotation), kwargs, None, prefix) | None
        if origin in (Union, UnionType):
            raise TypeError(f"unions other than `T | None` are not supported in event data: {annotation!r}")
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            require(not kwargs, "constraints on a nested model are not supported")
            return self._struct_for(annotation, None, checks, prefix)
        raise TypeError(f"no msgspec translation for {annotation!r}; extend schemas/derive.py")


def _split_column_checks(
    annotation: Any, kwargs: dict[str, Any], checks: list[ColumnCheck], path: str
) -> dict[str, Any]:
    """Move the constraints that are cheaper on a whole column from `kwargs` to `checks`."""
    kept = dict(kwargs)
    if annotation is str and "pattern" in kept:
        checks.append(ColumnCheck(path, "pattern", str(kept.pop("pattern"))))
    if annotation is AwareDatetime:
        for kind in ("gt", "ge", "lt", "le"):
            if kind in kept:
                checks.append(ColumnCheck(path, kind, kept.pop(kind)))
    return kept


def _post_init(field_validators: list[tuple[str, Any]], model_validators: list[Any]) -> Any:
    def __post_init__(self: Any) -> None:
        for name, check in field_validators:
            try:
                check(getattr(self, name))
            except ValueError as error:
                # msgspec reports errors raised here without a path; name the field ourselves.
                raise ValueError(f"{name}: {error}") from None
        for check in model_validators:
            check(self)

    return __post_init__
