#!/bin/sh
# Builds {{name}}.wasm: `./build.sh`. Needs componentize-py at the version
# requirements-build.txt pins (`pip install -r requirements-build.txt`).
set -eu
cd "$(dirname "$0")"
want=$(sed -n 's/^componentize-py==//p' requirements-build.txt)
have=$(componentize-py --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
    echo "componentize-py $want is needed, found ${have:-none}: pip install -r requirements-build.txt" >&2
    exit 1
fi
# The world `connector` of weft:connector@0.1.0 (wit/). WASI is left in:
# weft serves it deny-by-default, and stderr carries tracebacks into
# weft's error messages (`--stub-wasi` would drop them).
componentize-py -d wit -w connector componentize app -o {{name}}.wasm
echo "built {{name}}.wasm; check it: weft plugin check {{name}}.wasm --sandbox --emulator stripe"
