"""Config fields declared next to the code that reads them.

Every module that reads config fields declares them in a module-level `FIELDS` dict, dotted
path -> `Field(default, doc, choices=..., check=...)`, and may define `validate(config)` for
checks across fields. `idlm_jax.config` assembles the whole config from those declarations
(and from what objectives and samplers register), so a field's default, meaning, allowed values
and checks live in one place. This module imports nothing from the package: every layer can
declare fields.
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Optional


class ConfigError(ValueError):
  """A config field is unknown, of the wrong type, or has an invalid value."""


class Check(NamedTuple):
  """A predicate on a field's value and the words for what it must be."""

  ok: Callable[[Any], bool]
  what: str


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: its default (which fixes its type), what it means, and what is valid.

  choices: the allowed values (a tuple, or a callable returning one, for registries that
  grow, e.g. the objective names). check: a `Check` on the value.
  """

  default: Any
  doc: str = ""
  choices: Any = None
  check: Optional[Check] = None

  def allowed(self) -> Optional[tuple]:
    return self.choices() if callable(self.choices) else self.choices

  def error(self, path: str, value) -> Optional[str]:
    """None if `value` is valid, else the message (naming the field) of why not."""
    options = self.allowed()
    if options is not None and value not in options:
      return f"config.{path}: {value!r} is not one of {tuple(options)}"
    if self.check is not None and not self.check.ok(value):
      return f"config.{path}: must be {self.check.what}, got {value!r}"
    return None


# --------------------------------------------------------------------------- common checks

positive = Check(lambda v: v > 0, "positive")
non_negative = Check(lambda v: v >= 0, ">= 0")
unit_open = Check(lambda v: 0.0 < v < 1.0, "in (0, 1)")
unit_right_open = Check(lambda v: 0.0 <= v < 1.0, "in [0, 1)")
unit_closed = Check(lambda v: 0.0 <= v <= 1.0, "in [0, 1]")


def at_least(n, note: str = "") -> Check:
  return Check(lambda v: v >= n, f">= {n}" + (f" ({note})" if note else ""))


def non_negative_or_off(note: str) -> Check:
  """>= 0 where 0 switches something off; `note` says what."""
  return Check(lambda v: v >= 0, f">= 0 ({note})")


def _int_list(v, allow_empty: bool) -> bool:
  parts = [s.strip() for s in str(v).split(",")]
  if allow_empty and not any(parts):
    return True
  return all(s.isdigit() and int(s) > 0 for s in parts)


step_list = Check(lambda v: _int_list(v, False), "comma-separated positive ints")
step_list_or_empty = Check(lambda v: _int_list(v, True), "comma-separated positive ints or empty")


def names_in(known, what: str) -> Check:
  """A comma-separated subset of `known` ('' allowed)."""
  return Check(lambda v: all(n.strip() in known for n in str(v).split(",") if n.strip()),
               f"a comma-separated subset of {', '.join(known)}{what}")


def merge(*tables: dict) -> dict:
  """One field table from several; a path declared twice is a programming error."""
  out: dict = {}
  for table in tables:
    for path, field in table.items():
      if path in out and out[path] != field:
        raise ValueError(f"config field {path!r} is declared twice with different definitions")
      out[path] = field
  return out
