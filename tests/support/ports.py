"""Whether an adapter implements a port's methods with the port's signatures (``isinstance`` on a Protocol
checks names only)."""

from __future__ import annotations

import inspect


def signature_mismatches(adapter: object, port: type) -> list[str]:
    """Every way ``adapter``'s methods differ from ``port``'s: a method missing, a parameter of the port missing
    or of another kind, a default the port has that the adapter lacks, or a required parameter the port does
    not have. Extra optional parameters are allowed."""
    problems = []
    for name, member in vars(port).items():
        if name.startswith("_") or not callable(member):
            continue
        impl = getattr(type(adapter), name, None)
        if impl is None or not callable(impl):
            problems.append(f"{name}: missing")
            continue
        want = inspect.signature(member).parameters
        got = inspect.signature(impl).parameters
        for pname, p in want.items():
            q = got.get(pname)
            if q is None:
                problems.append(f"{name}: no parameter {pname!r}")
            elif q.kind != p.kind:
                problems.append(f"{name}: {pname!r} is {q.kind.description}, the port says {p.kind.description}")
            elif p.default is not inspect.Parameter.empty and q.default is inspect.Parameter.empty:
                problems.append(f"{name}: {pname!r} has no default, the port gives one")
        for qname, q in got.items():
            if qname not in want and q.default is inspect.Parameter.empty and q.kind not in (
                    inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                problems.append(f"{name}: requires {qname!r}, which the port does not pass")
    return problems
