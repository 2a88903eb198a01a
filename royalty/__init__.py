"""The `royalty` command line (`royalty.cli`)."""

import sys

from royalty.allocator import keep_freed_pages

keep_freed_pages(sys.argv)  # before anything imports polars: its allocator reads this once
