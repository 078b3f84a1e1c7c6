#!/usr/bin/env bash
# Runs the libFuzzer targets built by `make -C csrc fuzz` (use the make targets, which set
# WASMTIME_SO and FUZZ_OUT):
#   run.sh short   CI: replay every committed corpus entry, then fuzz each target briefly
#   run.sh long    FUZZ_TIME seconds per target (default 1800); the corpus it grows is kept
#                  in $FUZZ_OUT/corpus and reused by the next long run
# Any sanitizer report, crash, failed check, timeout (an input running > 10 s: a hang) or
# out-of-memory stops that target with a reproducer in $FUZZ_OUT/artifacts and makes the
# script exit non-zero. The totals go to $FUZZ_OUT/<mode>.txt. FUZZ_TARGETS="fuzz_hmap ..."
# runs only those.
set -euo pipefail
mode="${1:?usage: run.sh short|long}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${FUZZ_OUT:?}"
export FUZZ_WASMTIME_SO="${WASMTIME_SO:?}"
export FUZZ_GUEST="$root/tests/plugins/wat/fuzz_guest.wasm"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$here/lsan.supp"
# wasmtime's own guard pages and its code are not ASan's business (same as sanitize.sh).
asan_base="handle_segv=0:allow_user_segv_handler=1:handle_sigbus=0:handle_sigfpe=0"

case "$mode" in
  short) declare -A secs=([fuzz_hmap]=15 [fuzz_hmap_swar]=10 [fuzz_props]=15 [fuzz_hostcalls]=40) ;;
  long) t="${FUZZ_TIME:-1800}"
        declare -A secs=([fuzz_hmap]=$t [fuzz_hmap_swar]=$t [fuzz_props]=$t [fuzz_hostcalls]=$t) ;;
  *) echo "usage: $0 short|long" >&2; exit 2 ;;
esac

mkdir -p "$out/artifacts"
summary="$out/$mode.txt"
: > "$summary"
status=0
for t in ${FUZZ_TARGETS:-fuzz_hmap fuzz_hmap_swar fuzz_props fuzz_hostcalls}; do
  name="${t#fuzz_}"
  name="${name%_swar}"  # (the portable parser's build shares the map target's corpus)
  seeds="$here/corpus/$name"
  opts=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        "-artifact_prefix=$out/artifacts/${t#fuzz_}-")
  case "$t" in
    fuzz_props) opts+=("-dict=$here/props.dict") ;;
    # Shared data, queues and metrics are process-wide and outlive an input by design, so
    # a leak check after every input would scan the heap each time: LeakSanitizer runs
    # once, at exit, over the whole run instead.
    fuzz_hostcalls) opts+=(-max_len=4096 -detect_leaks=0) ;;
  esac
  export ASAN_OPTIONS="$asan_base:detect_leaks=1"
  if [ "$mode" = short ]; then
    work="$(mktemp -d)"
  else
    work="$out/corpus/$name"
    mkdir -p "$work"
  fi
  echo "== $t: replay $(ls "$seeds" | wc -l) committed inputs"
  "$out/$t" -runs=0 "${opts[@]}" "$seeds" > "$out/$t.replay.log" 2>&1 \
    || { echo "FAIL: $t on a committed input (see $out/$t.replay.log)"; tail -40 "$out/$t.replay.log"; status=1; continue; }
  echo "== $t: fuzz ${secs[$t]} s"
  stats="$out/$t.stats"
  : > "$stats"
  rc=0
  FUZZ_STATS="$stats" "$out/$t" -max_total_time="${secs[$t]}" "${opts[@]}" "$work" "$seeds" \
    > "$out/$t.$mode.log" 2>&1 || rc=$?
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/$t.$mode.log" | grep -o '[0-9]*$' || echo 0)"
  line="$t: ${secs[$t]} s, $execs inputs"
  if [ -s "$stats" ]; then line="$line; $(tail -1 "$stats" | sed 's/^fuzz_hostcalls: //')"; fi
  if [ "$rc" -ne 0 ]; then
    line="$line; FAILED (exit $rc, see $out/$t.$mode.log)"
    grep -E 'ERROR|SUMMARY|runtime error|check failed|Test unit written' "$out/$t.$mode.log" | head -20 || true
    status=1
  fi
  echo "$line" | tee -a "$summary"
  [ "$mode" = short ] && rm -rf "$work"
done
echo "== summary ($summary)"
cat "$summary"
exit "$status"
