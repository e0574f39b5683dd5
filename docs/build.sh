#!/usr/bin/env bash
# Build the documentation site into docs/_build/html/ (or $DOCS_OUT), from the repository root, with the `docs`
# extra: python -m pip install ".[docs]". Warnings are errors (-W; --keep-going lists them all), every internal link
# and cross-reference must resolve (-n), and every page is re-read (-E), so no warning hides behind a cached page.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m sphinx -E -q -W --keep-going -n -b html docs "${DOCS_OUT:-docs/_build/html}" "$@"
