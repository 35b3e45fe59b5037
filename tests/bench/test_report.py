import io

from rich.console import Console

from servewise.bench.report import fmt_ms, print_summary, render_report, summary_rows

from .test_output import sweep_result


def test_summary_rows_and_terminal_table_agree():
    result = sweep_result()
    rows = summary_rows(result)
    assert [row[0] for row in rows] == ["rate=1/s", "rate=2/s", "rate=4/s"]
    assert rows[0][1:3] == ["12", "1"]  # ok, failed
    out = io.StringIO()
    print_summary(result, Console(file=out, width=250))
    text = out.getvalue()
    assert all(cell in text for row in rows for cell in row)
    report = render_report(result)
    assert all("| " + " | ".join(row) + " |" in report for row in rows)


def test_fmt_ms():
    assert (fmt_ms(None), fmt_ms(0.0123), fmt_ms(0.45), fmt_ms(2.0)) == ("-", "12.3", "450", "2000")
