"""Input serializer base for the API: unknown fields and wrong JSON types are errors.

DRF ignores keys a serializer does not declare, so a client's typo (`refund_too`) or a
field from another API version would be accepted and do nothing; and it coerces types
(`1.5` into a CharField becomes "1.5", `true` into an IntegerField becomes 1, `"yes"` into
a BooleanField becomes True). Subclass `StrictInputSerializer` (or mix
`StrictInputMixin` into a ModelSerializer) for request bodies:
- an unknown key → 400 INVALID_REQUEST, `details.fields.<key>: ["Unknown field."]`;
- a value of the wrong JSON type → 400 INVALID_REQUEST, `details.fields.<key>: ["Expected ..."]`:
  CharField/UUIDField/DateTimeField/ChoiceField want a string (ChoiceField an int too when
  its choices are ints), BooleanField a boolean, IntegerField an integer, FloatField a number,
  DecimalField a string or an integer (amounts travel as strings; never a float), ListField a
  list. `null` is left to the field's own allow_null.
Nested serializers that subclass it are checked too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers

UNKNOWN_FIELD = "Unknown field."


def _type_problem(field: serializers.Field, value: Any) -> str | None:
    """Why `value` is the wrong JSON type for `field`, or None when it is acceptable."""
    if value is None:
        return None
    if isinstance(field, serializers.BooleanField):
        return None if isinstance(value, bool) else "Expected a boolean."
    if isinstance(value, bool):
        # bool is an int in Python: refuse it everywhere a boolean is not expected.
        return "Expected a string." if isinstance(field, serializers.CharField) else "Expected a number."
    if isinstance(field, serializers.IntegerField):
        return None if isinstance(value, int) else "Expected an integer."
    if isinstance(field, serializers.FloatField):
        return None if isinstance(value, int | float) else "Expected a number."
    if isinstance(field, serializers.DecimalField):
        return None if isinstance(value, str | int) else "Expected a string of digits."
    if isinstance(field, serializers.ChoiceField):
        ints = all(isinstance(choice, int) for choice in field.choices)
        return None if isinstance(value, str) or (ints and isinstance(value, int)) else "Expected a string."
    if isinstance(field, serializers.CharField | serializers.UUIDField | serializers.DateTimeField
                  | serializers.DateField):
        return None if isinstance(value, str) else "Expected a string."
    if isinstance(field, serializers.ListField | serializers.ListSerializer):
        return None if isinstance(value, list) else "Expected a list."
    return None


class StrictInputMixin:
    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            fields = self.fields  # type: ignore[attr-defined]
            writable = {name: field for name, field in fields.items() if not field.read_only}
            errors: dict[str, list[str]] = {}
            for key in sorted(str(k) for k in data if k not in writable)[:20]:
                errors[key[:64]] = [UNKNOWN_FIELD]
            for name, field in writable.items():
                if name in data:
                    problem = _type_problem(field, data[name])
                    if problem:
                        errors[name] = [problem]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)  # type: ignore[misc]


# The name other code may already import.
RejectUnknownFieldsMixin = StrictInputMixin


class StrictInputSerializer(StrictInputMixin, serializers.Serializer):
    """A request-body serializer that refuses undeclared fields and wrong JSON types."""
