"""The figures of a batch job (`close-epoch`, `settle`) for Prometheus: pushed to a Pushgateway when one is set.

A batch job ends before any scrape, so its figures go to a Pushgateway (setting `pushgateway_url`), grouped
by job name; each push replaces the job's previous figures. The commands print the same figures themselves.
A failed push is a warning, never a failure: the epoch is closed (or the root proposed) either way.
"""

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

push_timeout_s = 10.0


def job_registry(job: str, figures: Mapping[str, int | None]) -> CollectorRegistry:
    """A registry of one gauge per numeric figure, `royalty_<job>_<figure>` (figures that are None left out)."""
    registry = CollectorRegistry(auto_describe=True)
    prefix = "royalty_" + job.replace("-", "_")
    for name, value in figures.items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        Gauge(f"{prefix}_{name}", f"`royalty {job}`: {name.replace('_', ' ')} of the last run.", registry=registry).set(
            value
        )
    return registry


def push_figures(job: str, figures: Mapping[str, int | None], url: str) -> str | None:
    """Push `figures` to the Pushgateway at `url`; return a warning to print when that failed, else None."""
    try:
        push_to_gateway(
            url, job=f"royalty_{job.replace('-', '_')}", registry=job_registry(job, figures), timeout=push_timeout_s
        )
    except (OSError, ValueError) as error:
        from ledger.redact import redact

        return redact(f"could not push the figures to the Pushgateway at {url}: {error}; the job itself succeeded")
    return None
