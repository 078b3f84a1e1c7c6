#!/usr/bin/env bash
# Runs a command against the C core built with a sanitizer, in place of the installed one.
#   csrc/sanitize.sh asan pytest -q      AddressSanitizer + UndefinedBehaviorSanitizer
#   csrc/sanitize.sh tsan pytest -q      ThreadSanitizer
# The package must be installed (pip install .); the sanitized _core is built into a
# scratch copy of pyproxywasm/ that is put first on PYTHONPATH, with the per-event
# extension (pyproxywasm/_fast*.c) built with the same sanitizer.
set -euo pipefail
kind="$1"; shift
here="$(cd "$(dirname "$0")/.." && pwd)"
case "$kind" in
  asan) flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
        runtime="$(gcc -print-file-name=libasan.so)"
        # wasmtime turns guest faults into traps with its own SIGSEGV handler. A small
        # quarantine keeps the RSS-bound tests meaningful (freed memory is reused sooner).
        # SANITIZER_LOG=path also writes each report to path.<pid> (pytest's fd capture would
        # otherwise swallow a report written by a process that aborts).
        log="${SANITIZER_LOG:+:log_path=$SANITIZER_LOG}"
        export ASAN_OPTIONS="detect_leaks=0:quarantine_size_mb=32:handle_segv=0:allow_user_segv_handler=1:handle_sigbus=0:handle_sigfpe=0$log"
        export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1$log" ;;
  tsan) flags="-fsanitize=thread"
        runtime="$(gcc -print-file-name=libtsan.so)"
        export TSAN_OPTIONS="halt_on_error=1:report_signal_unsafe=0" ;;
  *) echo "usage: $0 asan|tsan COMMAND..." >&2; exit 2 ;;
esac
# Guests run many times slower under a sanitizer: a roomier default callback deadline.
export PYPROXYWASM_DEADLINE_MS="${PYPROXYWASM_DEADLINE_MS:-2000}"
scratch="$(mktemp -d)"
cp -r "$here/pyproxywasm" "$scratch/"
rm -f "$scratch"/pyproxywasm/_core*.so "$scratch"/pyproxywasm/_fast*.so
(cd "$here" && CFLAGS="$flags -g -O1" LDFLAGS="$flags" python - "$scratch" <<'PY'
import sys, pathlib
scratch = pathlib.Path(sys.argv[1])
ns = {"__file__": str(pathlib.Path("pyproxywasm/_build_core.py").resolve())}
exec(compile(open("pyproxywasm/_build_core.py").read(), "_build_core.py", "exec"), ns)
ffi = ns["ffibuilder"]
# ffi.compile() works from its tmpdir: make the relative csrc paths absolute
kw = ffi._assigned_source[3]
kw["sources"] = [str(pathlib.Path(p).resolve()) for p in kw["sources"]]
kw["include_dirs"] = [str(pathlib.Path(p).resolve()) for p in kw["include_dirs"]]
so = ffi.compile(tmpdir=str(scratch / "build"), verbose=False)
target = scratch / "pyproxywasm" / pathlib.Path(so).name
pathlib.Path(so).rename(target)
print("sanitized core:", target)
PY
)
inc="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
gcc -std=c11 -shared -fPIC $flags -g -O1 -Wall -Wextra -Werror -I"$inc" \
    -o "$scratch/pyproxywasm/_fast.abi3.so" "$here/pyproxywasm/_fast.c" "$here/pyproxywasm/_fast_exchange.c"
echo "sanitized fast path: $scratch/pyproxywasm/_fast.abi3.so"
export PYTHONPATH="$scratch${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$runtime"
cd "$here"
exec "$@"
