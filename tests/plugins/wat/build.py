"""Builds every .wat here into its .wasm with wasmtime's wat2wasm (run by ../build.sh)."""
import pathlib

import wasmtime

here = pathlib.Path(__file__).resolve().parent
for wat in sorted(here.glob("*.wat")):
    wat.with_suffix(".wasm").write_bytes(wasmtime.wat2wasm(wat.read_text()))
    print("built", wat.with_suffix(".wasm").name)
