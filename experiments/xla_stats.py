"""What XLA reports of a compiled program: its FLOPs and its bytes, defined once for every
table in experiments/ (the sweeps, the benchmarks, the memory report).

``program_bytes``: arguments + temporaries + outputs, less the outputs that alias an
argument (a donated train state is written back into its own buffers, so those outputs
need no memory of their own). It is what the device holds at the peak of one call.
"""

from __future__ import annotations

from typing import Any

# memory_analysis() fields, in the order the reports print them.
MEMORY_FIELDS = (("temporaries", "temp_size_in_bytes"), ("arguments", "argument_size_in_bytes"),
                 ("outputs", "output_size_in_bytes"),
                 ("outputs aliasing arguments", "alias_size_in_bytes"))


def flops(compiled: Any) -> float | None:
    """'flops' of XLA's cost analysis (a dict, or a list of dicts on some jax versions)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def memory_fields(compiled: Any) -> dict[str, int | None] | None:
    """``{label: bytes or None}`` of ``MEMORY_FIELDS``; None when the backend reports nothing."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    out = {}
    for label, field in MEMORY_FIELDS:
        value = getattr(stats, field, None)
        out[label] = None if value is None else int(value)
    return out


def program_bytes(compiled: Any) -> int | None:
    """Arguments + temporaries + outputs not aliasing an argument, or None if unreported."""
    fields = memory_fields(compiled)
    if fields is None or all(v is None for v in fields.values()):
        return None
    return (sum(fields[k] or 0 for k in ("arguments", "temporaries", "outputs"))
            - (fields["outputs aliasing arguments"] or 0))
