#!/bin/sh
# Runs the native tests (test_app.py) against a fake http.send: `./test.sh`.
set -eu
cd "$(dirname "$0")"
# The Python bindings of the WIT, for running natively (not committed).
rm -rf bindings
componentize-py -d wit -w connector bindings bindings >/dev/null
python3 -m unittest -v test_app
