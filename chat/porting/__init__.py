"""Export and import of conversations (issue #17).

`ours` is our documented JSON format (docs/export-format.md), `markdown` the readable copy,
`chatgpt` and `claude` read those services' exports, `importer` detects a file's shape and
drives one import, `exporter` builds the all-conversations zip behind an expiring link.
"""
