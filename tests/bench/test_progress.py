import io

from rich.console import Console

from servewise.bench.progress import RichProgress
from servewise.bench.records import Outcome

from .factories import make_record


def test_rich_progress_shows_counts_and_rates():
    out = io.StringIO()
    with RichProgress(Console(file=out, force_terminal=True, width=200)) as progress:
        progress.point_started("rate=2/s", total=3)
        progress.request_done(make_record(0))
        progress.request_done(make_record(1, outcome=Outcome.TIMEOUT, ttft_s=None))
        progress.request_done(make_record(2))
        progress.point_finished()
    text = out.getvalue()
    assert "rate=2/s" in text and "3/3" in text and "2 ok" in text and "1 failed" in text and "req/s" in text
