"""``--check-overload``: does the server degrade gracefully when pushed past capacity?

A well-behaved server sheds what it cannot serve with 429/503 *and* a Retry-After
header, never drops a request it accepted (200 headers, then no [DONE] or
finish_reason, an error event, a cut or a timeout), and answers no 5xx besides
a 503 shed. Every request counts here, warm-up included: overload behaviour
does not stop mattering while the server warms up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from servewise.bench.records import Outcome, RequestRecord
from servewise.bench.results import BenchResult

MAX_EXAMPLES = 5  # lost requests quoted in the report


@dataclass
class OverloadReport:
    num_requests: int  # every request of every point
    num_shed: int  # 429/503 answers
    num_shed_with_retry_after: int  # of which carried a Retry-After header
    num_accepted: int  # answered with 200 headers
    num_lost: int  # accepted, then not completed
    num_5xx: int  # 5xx answers other than 503 (a 503 is a shed)
    lost_examples: list[str] = field(default_factory=list)  # "point #index: outcome: error" of a few lost

    @property
    def num_shed_without_retry_after(self) -> int:
        return self.num_shed - self.num_shed_with_retry_after

    @property
    def passed(self) -> bool:
        return self.num_lost == 0 and self.num_5xx == 0 and self.num_shed_without_retry_after == 0

    def lines(self) -> list[str]:
        """The verdict, one finding a line."""
        shed = (f"{self.num_shed} shed (429/503): {self.num_shed_with_retry_after} with Retry-After, "
                f"{self.num_shed_without_retry_after} without")
        lines = [
            f"{'PASS' if self.passed else 'FAIL'}: {self.num_requests} requests",
            ("ok" if self.num_shed_without_retry_after == 0 else "PROBLEM") + f" - {shed}",
            ("ok" if self.num_lost == 0 else "PROBLEM")
            + f" - {self.num_lost} of {self.num_accepted} accepted requests lost",
            ("ok" if self.num_5xx == 0 else "PROBLEM") + f" - {self.num_5xx} server errors (5xx other than 503)",
        ]
        lines += [f"  lost: {example}" for example in self.lost_examples]
        return lines


def check_overload(result: BenchResult) -> OverloadReport:
    records: list[tuple[str, RequestRecord]] = [(p.load.label, r) for p in result.points for r in p.records]
    shed = [r for _, r in records if r.outcome is Outcome.SHED]
    lost = [(label, r) for label, r in records if r.lost]
    return OverloadReport(
        num_requests=len(records),
        num_shed=len(shed),
        num_shed_with_retry_after=sum(1 for r in shed if r.retry_after),
        num_accepted=sum(1 for _, r in records if r.accepted),
        num_lost=len(lost),
        num_5xx=sum(1 for _, r in records if r.outcome is Outcome.SERVER_ERROR),
        lost_examples=[f"{label} #{r.index}: {r.outcome.value}: {r.error}" for label, r in lost[:MAX_EXAMPLES]],
    )
