"""What every mapping result counts for the OTLP response's partial success."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class Rejections:
    """Items that could not be mapped, by reason: counted in `rejected_*` with one English
    message, while the rest of the request is stored (the sender must not retry them)."""

    items: ClassVar[str] = "items"
    rejected: Counter[str] = field(default_factory=Counter)

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    @property
    def rejected_count(self) -> int:
        return sum(self.rejected.values())

    def rejection_message(self) -> str:
        parts = [f"{n} {reason}" for reason, n in sorted(self.rejected.items())]
        return f"rejected {self.items}: " + "; ".join(parts) if parts else ""
