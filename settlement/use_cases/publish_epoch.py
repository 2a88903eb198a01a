"""The verb `publish`: a closed epoch's bundle, its inputs as Parquet and a manifest (`settlement.reports.bundle`)."""

from settlement.reports.bundle import BundleError, PublishSummary, publish_epoch

__all__ = ["BundleError", "PublishSummary", "publish_epoch"]
