"""One module per verb the CLI runs: `close_epoch`, `settle`, `sync_claims`, `export_epoch`, `write_report`.

Each module names the verb and its result; the work is done in the package that owns it. This
package re-exports nothing itself, so a module and its verb never share a name in one namespace.
"""
