"""Writes tests/plugins/wat/fuzz_guest.wat: the "interpreter" guest of the hostcall fuzzer.

Why generated: the guest imports every hostcall the host defines, with the host's own
signatures, read from the declarations in csrc/abi.h (HOSTCALLS, CALLBACKS) and the WASI
table in csrc/wasi.c (wasi_imports). A hostcall or callback declared there reaches the
fuzzer by running this script again (then tests/plugins/build.sh or
tests/plugins/wat/build.py turns the .wat into .wasm).

The guest runs a script the fuzz driver (csrc/fuzz/fuzz_hostcalls.c) copies into its memory.
Every callback interprets ops from the script until an END op; the driver reads its own
event bytes from the same script through the exported fuzz_byte(), so the cursor is one
wasm global that no hostcall can write. The encoding is documented in csrc/fuzz/README.md.
"""
from __future__ import annotations

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "plugins" / "wat" / "fuzz_guest.wat"

# Memory layout (bytes). Everything the interpreter itself touches is below HEAP.
OUT_SLOTS = 1024  # 32 u32 out-parameter slots
DATA = 2048  # 64 slots of 16 bytes: keys, values, paths written by DATA ops
PAIRS = 4096  # a pairs blob built by the PAIRS op
SCRIPT = 0x10000  # the script, at most SCRIPT_MAX bytes
SCRIPT_MAX = 0x10000
HEAP = 0x20000  # the bump allocator's arena, up to the end of memory
PAGES, MAX_PAGES = 4, 64
MAX_OPS = 64  # per callback
MAX_DEPTH = 3  # interpreter nesting through the allocator
N_CONTROL = 8

ENTRY = re.compile(r'\{"(\w+)",\s*"([iI]*)",\s*"([iI]*)",\s*\w+\}')
# abi.h: X(c_name, "import", link, (params), result) and A("import", c_name) entries
PARAM = re.compile(r'\b(I32|S32|I64|U64)\((\w+)\)')
LETTER = {"I32": "i", "S32": "i", "I64": "I", "U64": "I"}


def _list(name: str) -> list[tuple[str, list[str]]]:
    """The entries of one of abi.h's lists, as (kind, top-level fields) in order."""
    text = (ROOT / "csrc" / "abi.h").read_text()
    start = text.index(f"#define {name}(")
    end = text.index("\n\n", start)
    body = re.sub(r"/\*.*?\*/", " ", text[text.index("\n", start):end], flags=re.S)
    body = body.replace("\\\n", "\n")
    out = []
    i = 0
    while True:
        m = re.compile(r'\b([XA])\(').search(body, i)
        if not m:
            return out
        depth, j, fields, cur = 1, m.end(), [], ""
        while depth:
            c = body[j]
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            if depth == 1 and c == ",":
                fields.append(cur.strip())
                cur = ""
            elif depth:
                cur += c
            j += 1
        fields.append(cur.strip())
        out.append((m.group(1), [" ".join(f.split()) for f in fields]))
        i = j


def _sig(params: str) -> str:
    return "".join(LETTER[t] for t, _ in PARAM.findall(params))


def imports() -> list[tuple[str, str, str, str]]:
    """(module, name, params, results) for every hostcall the C core defines (for modules
    with the spec's shapes), then the WASI table."""
    out = []
    sigs = {}
    for kind, f in _list("HOSTCALLS"):
        if kind == "X":
            cname, name, link, params, res = f
            sigs[cname] = (_sig(params), "i" if res == "I32" else "")
            if link != "HC_AS":
                out.append(("env", name.strip('"'), *sigs[cname]))
        else:
            name, cname = f
            out.append(("env", name.strip('"'), *sigs[cname]))
    text = (ROOT / "csrc" / "wasi.c").read_text()
    start = text.index("import_def wasi_imports[] = {")
    body = text[start:text.index("};", start)]
    for name, params, results in ENTRY.findall(body):
        out.append(("wasi_snapshot_preview1", name, params, results))
    if len(out) < 40:
        sys.exit("too few hostcalls found: did the declarations change shape?")
    return out


# Callbacks whose default answer (when a plugin does not export them) is success / true.
TRUE_BY_DEFAULT = {"proxy_on_vm_start", "proxy_on_configure", "proxy_on_done"}


def callbacks() -> list[tuple[str, int, int | None]]:
    """(export name, parameter count, default result or None) for every proxy_on_* callback
    the host calls (abi.h's CALLBACKS), the allocator aside."""
    out = []
    for _, (cid, name, alt, params, res) in _list("CALLBACKS"):
        name = name.strip('"')
        if not name.startswith("proxy_on_") or cid == "ALLOC":
            continue
        default = None if res == "VOID" else (1 if name in TRUE_BY_DEFAULT else 0)
        out.append((name, len(PARAM.findall(params)), default))
    return out


def wtype(c: str) -> str:
    return "i64" if c == "I" else "i32"


def arg(c: str) -> str:
    return "(i64.extend_i32_s (call $arg))" if c == "I" else "(call $arg)"


def render() -> str:
    """The guest's WAT text for the current import tables."""
    imps = imports()
    n = len(imps)
    if n >= 200:
        sys.exit("too many hostcalls for one op byte")
    w = []
    w.append(";; GENERATED by csrc/fuzz/gen_guest.py; do not edit. The interpreter guest of the")
    w.append(";; hostcall fuzzer (csrc/fuzz/fuzz_hostcalls.c): every callback runs ops from a")
    w.append(f";; script; op 0..{n - 1} calls one of the {n} hostcalls below with decoded arguments.")
    w.append("(module")
    for i, (mod, name, params, results) in enumerate(imps):
        p = " ".join(wtype(c) for c in params)
        r = " ".join(wtype(c) for c in results)
        sig = (f" (param {p})" if p else "") + (f" (result {r})" if r else "")
        w.append(f'  (import "{mod}" "{name}" (func $h{i}{sig}))')
    w.append(f'  (memory (export "memory") {PAGES} {MAX_PAGES})')
    for g in ("cursor", "len", "ctx", "root", "last", "plen", "depth", "amode", "count"):
        w.append(f"  (global ${g} (mut i32) (i32.const 0))")
    w.append(f"  (global $heap (mut i32) (i32.const {HEAP}))")
    w.append('  (func (export "proxy_abi_version_0_2_1"))')
    w.append(f"""
  ;; ---- the driver's view ----------------------------------------------------------
  (func (export "fuzz_reset") (param $len i32)
    (global.set $cursor (i32.const 0))
    (global.set $len (select (local.get $len) (i32.const {SCRIPT_MAX})
                             (i32.le_u (local.get $len) (i32.const {SCRIPT_MAX}))))
    (global.set $heap (i32.const {HEAP}))
    (global.set $amode (i32.const 0))
    (global.set $depth (i32.const 0))
    (global.set $count (i32.const 0)))
  (func (export "fuzz_byte") (result i32)
    (if (i32.ge_u (global.get $cursor) (global.get $len)) (then (return (i32.const -1))))
    (call $byte))
  (func (export "fuzz_count") (result i32) (global.get $count))

  ;; ---- script decoding ----------------------------------------------------------------
  ;; The next script byte, or 0 once the script is over.
  (func $byte (result i32)
    (local $c i32)
    (local.set $c (global.get $cursor))
    (if (i32.ge_u (local.get $c) (global.get $len)) (then (return (i32.const 0))))
    (global.set $cursor (i32.add (local.get $c) (i32.const 1)))
    (i32.load8_u (i32.add (i32.const {SCRIPT}) (local.get $c))))
  (func $memsize (result i32) (i32.shl (memory.size) (i32.const 16)))
  ;; An argument: 00-3f small value; 40-7f a DATA slot; 80-9f an out slot; a0-bf a special
  ;; value; c0-df a raw u32 (4 bytes follow); e0-ff a 13-bit value (1 byte follows).
  (func $arg (result i32)
    (local $b i32)
    (local.set $b (call $byte))
    (if (i32.lt_u (local.get $b) (i32.const 0x40)) (then (return (local.get $b))))
    (if (i32.lt_u (local.get $b) (i32.const 0x80))
      (then (return (i32.add (i32.const {DATA})
                             (i32.shl (i32.and (local.get $b) (i32.const 63)) (i32.const 4))))))
    (if (i32.lt_u (local.get $b) (i32.const 0xa0))
      (then (return (i32.add (i32.const {OUT_SLOTS})
                             (i32.shl (i32.and (local.get $b) (i32.const 31)) (i32.const 2))))))
    (if (i32.lt_u (local.get $b) (i32.const 0xc0))
      (then (return (call $special (i32.and (local.get $b) (i32.const 31))))))
    (if (i32.lt_u (local.get $b) (i32.const 0xe0))
      (then (return (i32.or (i32.or (call $byte) (i32.shl (call $byte) (i32.const 8)))
                            (i32.or (i32.shl (call $byte) (i32.const 16))
                                    (i32.shl (call $byte) (i32.const 24)))))))
    (i32.or (call $byte) (i32.shl (i32.and (local.get $b) (i32.const 31)) (i32.const 8))))
  (func $special (param $k i32) (result i32)
    (if (i32.ge_u (local.get $k) (i32.const 16))
      (then (return (i32.load (i32.add (i32.const {OUT_SLOTS})
                                       (i32.shl (i32.sub (local.get $k) (i32.const 16))
                                                (i32.const 2)))))))
    (block $s15 (block $s14 (block $s13 (block $s12 (block $s11 (block $s10 (block $s9
    (block $s8 (block $s7 (block $s6 (block $s5 (block $s4 (block $s3 (block $s2 (block $s1
    (block $s0
      (br_table $s0 $s1 $s2 $s3 $s4 $s5 $s6 $s7 $s8 $s9 $s10 $s11 $s12 $s13 $s14 $s15
                (local.get $k)))
      (return (i32.const 0)))
      (return (i32.const -1)))
      (return (i32.const -4)))
      (return (i32.const 0x7fffffff)))
      (return (i32.const 0x80000000)))
      (return (call $memsize)))
      (return (i32.sub (call $memsize) (i32.const 1))))
      (return (i32.sub (call $memsize) (i32.const 4))))
      (return (i32.sub (call $memsize) (i32.const 8))))
      (return (i32.const {PAIRS})))
      (return (global.get $plen)))
      (return (i32.const 0x10000)))
      (return (global.get $ctx)))
      (return (global.get $root)))
      (return (global.get $last)))
    (i32.add (i32.const {SCRIPT}) (global.get $cursor)))

  ;; ---- control ops ----------------------------------------------------------------------
  ;; DATA: slot byte, length byte, then that many bytes into the slot.
  (func $op_data
    (local $dst i32) (local $n i32)
    (local.set $dst (i32.add (i32.const {DATA})
                             (i32.shl (i32.and (call $byte) (i32.const 63)) (i32.const 4))))
    (local.set $n (call $byte))
    (block $done (loop $copy
      (br_if $done (i32.eqz (local.get $n)))
      (i32.store8 (local.get $dst) (call $byte))
      (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $copy))))
  ;; PAIRS: a well-formed pairs blob at PAIRS: count (0..15), then per pair key length
  ;; (0..15) and value length (0..31) bytes, then the bytes.
  (func $op_pairs
    (local $count i32) (local $i i32) (local $kl i32) (local $vl i32) (local $d i32)
    (local $j i32)
    (local.set $count (i32.and (call $byte) (i32.const 15)))
    (i32.store (i32.const {PAIRS}) (local.get $count))
    (local.set $d (i32.add (i32.const {PAIRS + 4})
                           (i32.shl (local.get $count) (i32.const 3))))
    (block $done (loop $pair
      (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
      (local.set $kl (i32.and (call $byte) (i32.const 15)))
      (local.set $vl (i32.and (call $byte) (i32.const 31)))
      (i32.store (i32.add (i32.const {PAIRS + 4}) (i32.shl (local.get $i) (i32.const 3)))
                 (local.get $kl))
      (i32.store (i32.add (i32.const {PAIRS + 8}) (i32.shl (local.get $i) (i32.const 3)))
                 (local.get $vl))
      (local.set $j (i32.add (local.get $kl) (i32.add (local.get $vl) (i32.const 2))))
      (block $k (loop $bytes
        (br_if $k (i32.eqz (local.get $j)))
        (i32.store8 (local.get $d) (call $byte))
        (local.set $d (i32.add (local.get $d) (i32.const 1)))
        (local.set $j (i32.sub (local.get $j) (i32.const 1)))
        (br $bytes)))
      ;; the terminators the format wants (the fuzzer may break them with POKE)
      (i32.store8 (i32.sub (local.get $d) (i32.const 1)) (i32.const 0))
      (i32.store8 (i32.sub (i32.sub (local.get $d) (local.get $vl)) (i32.const 2))
                  (i32.const 0))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $pair)))
    (global.set $plen (i32.sub (local.get $d) (i32.const {PAIRS}))))
  ;; POKE: address, value; stored only if it fits in memory.
  (func $op_poke
    (local $a i32) (local $v i32)
    (local.set $a (call $arg))
    (local.set $v (call $arg))
    (if (i64.le_u (i64.add (i64.extend_i32_u (local.get $a)) (i64.const 4))
                  (i64.extend_i32_u (call $memsize)))
      (then (i32.store (local.get $a) (local.get $v)))))

  ;; ---- the allocator: a bump arena, or as hostile as the mode byte says ------------------
  (func $bump (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (if (i32.gt_u (local.get $size) (i32.sub (call $memsize) (i32.const {HEAP})))
      (then (return (i32.const 0))))
    (if (i32.gt_u (local.get $p) (i32.sub (call $memsize) (local.get $size)))
      (then (local.set $p (i32.const {HEAP}))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (local.get $p))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (block $m9 (block $m8 (block $m7 (block $m6 (block $m5 (block $m4 (block $m3 (block $m2
    (block $m1 (block $m0
      (br_table $m0 $m1 $m2 $m3 $m4 $m5 $m6 $m7 $m8 $m9 $m0
                (i32.and (global.get $amode) (i32.const 15))))
      (return (call $bump (local.get $size))))
      (return (i32.const 0)))
      (return (i32.const -16)))
      (return (i32.sub (call $memsize) (i32.const 1))))
      (return (i32.const {OUT_SLOTS})))
      (return (i32.const {SCRIPT})))
      (drop (memory.grow (i32.const 1)))
      (return (call $bump (local.get $size))))
      (unreachable))
      ;; hostcalls from inside the allocator
      (drop (call $run (i32.const 0)))
      (return (call $bump (local.get $size))))
    (i32.sub (call $memsize) (local.get $size)))

  ;; ---- the interpreter ------------------------------------------------------------------
  (func $run (param $status i32) (result i32)
    (local $op i32) (local $n i32)
    (if (i32.ge_u (global.get $depth) (i32.const {MAX_DEPTH}))
      (then (return (local.get $status))))
    (global.set $depth (i32.add (global.get $depth) (i32.const 1)))
    (block $out (loop $next
      (br_if $out (i32.ge_u (local.get $n) (i32.const {MAX_OPS})))
      (br_if $out (i32.ge_u (global.get $cursor) (global.get $len)))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (local.set $op (call $byte))
      (if (i32.ge_u (local.get $op) (i32.const {n}))
        (then
          (block $k7 (block $k6 (block $k5 (block $k4 (block $k3 (block $k2 (block $k1
          (block $k0
            (br_table $k0 $k1 $k2 $k3 $k4 $k5 $k6 $k7
                      (i32.rem_u (i32.sub (local.get $op) (i32.const {n})) (i32.const {N_CONTROL}))))
            (local.set $status (call $arg))
            (br $out))
            (br $out))
            (call $op_data) (br $next))
            (call $op_pairs) (br $next))
            (global.set $amode (call $byte)) (br $next))
            (drop (memory.grow (i32.rem_u (call $byte) (i32.const 3)))) (br $next))
            (call $op_poke) (br $next))
          (br $out)))
      (global.set $count (i32.add (global.get $count) (i32.const 1)))""")
    # The hostcall dispatch: one block per hostcall, innermost first.
    labels = " ".join(f"$c{i}" for i in range(n))
    body = []
    body.append("      " + "".join(f"(block $c{i} " for i in reversed(range(n))))
    body.append(f"        (br_table {labels} (local.get $op))" + ")" * 1)
    for i, (_, _, params, results) in enumerate(imps):
        call = f"(call $h{i}" + "".join(" " + arg(c) for c in params) + ")"
        if results:
            line = f"      (global.set $last {call}) (br $next))"
        else:
            line = f"      {call} (br $next))"
        if i == n - 1:
            line = line[:-1]  # the outermost block closes with the loop body below
        body.append(line)
    w.extend(body)
    w.append("      (br $next)))")
    w.append("    (global.set $depth (i32.sub (global.get $depth) (i32.const 1)))")
    w.append("    (local.get $status))")
    cbs = callbacks()
    w.append("\n  ;; ---- callbacks: remember the context, then run the script -------------------")
    for name, nparams, default in cbs:
        params = " ".join("i32" for _ in range(nparams))
        res = " (result i32)" if default is not None else ""
        setroot = ""
        if name in ("proxy_on_vm_start", "proxy_on_configure", "proxy_on_tick",
                    "proxy_on_queue_ready", "proxy_on_foreign_function") or "_call_" in name \
                or "_grpc_" in name:
            setroot = " (global.set $root (local.get 0))"
        elif name == "proxy_on_context_create":
            setroot = " (global.set $root (local.get 1))"
        call = f"(call $run (i32.const {default if default is not None else 0}))"
        if default is None:
            call = f"(drop {call})"
        w.append(f'  (func (export "{name}") (param {params}){res}'
                 f" (global.set $ctx (local.get 0)){setroot}")
        w.append(f"    {call})")
    w.append(")")
    return "\n".join(w) + "\n"


def main() -> None:
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}: {len(imports())} hostcalls")


if __name__ == "__main__":
    main()
