"""Document-level access control: documents carry the principals (users, groups) that may read
them, callers carry theirs, and every path that returns or uses document text keeps to it.

A document's ``acl`` comes from its source (a JSONL ``acl`` field, a CSV column, a ``.acl``
sidecar file). ``*`` in it makes the document public; a document without one follows the
configured default (``public`` or ``deny``). A caller whose principals hold ``*`` reads every
document. Chunks are tagged ``_acl=<principal>`` (``_acl=@unset`` without an ACL) in the dense
and sparse indexes, so a search filters before ranking (a pre-filter: no top-k is cut short
and nothing restricted is ever scored for the caller). Fail-closed: a chunk without tags, or
a document the index does not know, is readable by no restricted caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

ACL_KEY = "_acl"  # the filter key of chunk ACL tags (user filters may not use "_" keys)
EVERYONE = "*"
UNSET = "@unset"  # the tag of a chunk whose document has no ACL
MAX_PRINCIPALS = 1000
MAX_PRINCIPAL_CHARS = 200
AclDefault = Literal["public", "deny"]
Acl = tuple[str, ...] | None  # a document's principals; None: no ACL (the default applies)
_SPLIT = re.compile(r"[,;\n]")


class AclError(ValueError):
    """An ACL value that cannot be read; the message names what to change."""


def parse_acl(value: object, where: str = "acl") -> Acl:
    """A document's ACL from a source value: a list of strings, or one string of principals
    separated by commas, semicolons or new lines; ``None``/empty: no ACL."""
    if value is None:
        return None
    if isinstance(value, str):
        items = [part.strip() for part in _SPLIT.split(value)]
    elif isinstance(value, list | tuple):
        if not all(isinstance(v, str) for v in value):
            raise AclError(f"{where}: every principal must be a string, got {value!r}.")
        items = [v.strip() for v in value]
    else:
        raise AclError(
            f"{where}: an ACL is a list of principals or a comma-separated string, "
            f"not {type(value).__name__}."
        )
    principals = sorted({p for p in items if p})
    if not principals:
        return None
    for principal in principals:
        check_principal(principal, where)
    return tuple(principals)


def check_principal(principal: str, where: str = "principal") -> None:
    """:class:`AclError` for a principal that cannot be a tag (too long, a reserved name)."""
    if len(principal) > MAX_PRINCIPAL_CHARS or principal == UNSET:
        raise AclError(
            f"{where}: {principal[:40]!r} is not a principal (at most "
            f"{MAX_PRINCIPAL_CHARS} characters, not {UNSET!r})."
        )


def acl_tags(acl: Acl) -> list[str]:
    """The ``_acl`` tag values of a chunk of a document with ``acl``."""
    return [UNSET] if acl is None else list(acl)  # () (an empty sidecar): no tag, nobody


def check_filters(filters: Mapping[str, object] | None) -> None:
    """:class:`AclError` when a caller's filter names a reserved key (``_`` first)."""
    for key in filters or {}:
        if key.startswith("_"):
            raise AclError(
                f"filters: {key!r} is reserved (keys starting with '_' are Slipway's own); "
                "filter on your documents' metadata keys."
            )


def may_read(acl: Acl, principals: Iterable[str], default: AclDefault) -> bool:
    """Whether a caller with ``principals`` may read a document with ``acl``."""
    held = set(principals)
    if EVERYONE in held:
        return True
    if acl is None:
        return default == "public"
    return EVERYONE in acl or not held.isdisjoint(acl)


def open_to_all(acls: Iterable[Acl], default: AclDefault) -> bool:
    """Whether every document of a set may be read by anyone (no filter is needed)."""
    return all((EVERYONE in acl) if acl is not None else default == "public" for acl in acls)


@dataclass(frozen=True)
class Reader:
    """A caller as access control sees it: its principals and the configured default."""

    principals: frozenset[str]
    default: AclDefault = "public"

    @property
    def sees_all(self) -> bool:
        """Whether the caller reads every document (``*`` among its principals)."""
        return EVERYONE in self.principals

    def tag_values(self) -> list[str]:
        """The ``_acl`` tags of the chunks this caller may read."""
        extra = {EVERYONE, UNSET} if self.default == "public" else {EVERYONE}
        return sorted(self.principals | extra)

    def may_read(self, acl: Acl) -> bool:
        """Whether this caller may read a document with ``acl``."""
        return may_read(acl, self.principals, self.default)

    def restrict(
        self, filters: Mapping[str, str | Sequence[str]] | None, open_index: bool
    ) -> dict[str, str | Sequence[str]]:
        """The caller's ``filters`` (checked) with the ACL tags it may read added, unless the
        index is open to everyone under this default or the caller sees every document."""
        check_filters(filters)
        out = dict(filters or {})
        if not (self.sees_all or open_index):
            out[ACL_KEY] = self.tag_values()
        return out


EVERY_DOCUMENT = Reader(frozenset({EVERYONE}))  # pipelines and operators: no restriction
