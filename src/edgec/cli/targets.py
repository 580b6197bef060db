"""edgec targets: device profiles and backends, with availability and, when unavailable, why."""

from __future__ import annotations

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def targets(as_json: bool) -> None:
    """List device profiles and backends, and whether each can build here."""
    import json

    from edgec.targets.base import describe_options
    from edgec.targets.registry import availability, backends, profiles, target_class

    status = {name: availability(name) for name in backends()}
    rows = []
    for p in profiles().values():
        ok, why = status.get(p.backend, (False, f"unknown backend '{p.backend}'"))
        rows.append({
            "profile": p.name, "aliases": list(p.aliases), "backend": p.backend,
            "precisions": sorted(x.value for x in p.precisions), "available": ok, "why": why,
            "description": p.description,
        })
    if as_json:
        click.echo(json.dumps({"profiles": rows, "backends": {k: {"available": v[0], "why": v[1]} for k, v in status.items()}}, indent=2))
        return
    click.echo("Profiles (--target NAME):")
    for r in rows:
        mark = "ok " if r["available"] else "-- "
        alias = f" (alias: {', '.join(r['aliases'])})" if r["aliases"] else ""
        click.echo(f"  {mark}{r['profile']:<17} {r['backend']:<12} {'/'.join(r['precisions']):<16} {r['description']}{alias}")
        if not r["available"]:
            click.echo(f"       unavailable: {r['why']}")
    click.echo("\nBackends:")
    for name, (ok, why) in status.items():
        click.echo(f"  {'ok ' if ok else '-- '}{name}" + ("" if ok else f"  unavailable: {why}"))
        if ok:
            for opt, typ, default, help_text in describe_options(target_class(name).Options):
                click.echo(f"       {opt} ({typ}, default {default!r}): {help_text}")
