"""edgec report: saved benchmark results as a self-contained HTML page and/or a Markdown file."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--html", "html_out", type=click.Path(path_type=Path), help="Write a self-contained HTML page (plots inline, no network).")
@click.option("--md", "md_out", type=click.Path(path_type=Path), help="Write the tables as Markdown.")
@click.option("--title", default="edgec benchmark report", show_default=True, help="The report's title.")
def report(results, html_out, md_out, title) -> None:
    """Render RESULTS (JSON files written by `edgec bench --json`; several are merged) as a report.

    Without --html or --md, prints the Markdown to stdout.
    """
    from edgec.benchmarks.htmlreport import load_results, render_markdown, write_report

    if html_out is None and md_out is None:
        click.echo(render_markdown(load_results(list(results)), title), nl=False)
        return
    for path in write_report(list(results), html_out, md_out, title):
        click.echo(f"wrote {path}", err=True)
