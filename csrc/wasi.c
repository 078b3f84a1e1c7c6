/* WASI preview1 as a proxy offers it (ABI.md §8): stdout/stderr become plugin log lines,
 * clocks follow the VM's clock, randomness is the OS CSPRNG, the environment is only what
 * the VM was configured with, and there is no filesystem or network. Every function is
 * registered under wasi_snapshot_preview1 and wasi_unstable, with exact wasm types. */
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "internal.h"

enum {
    E_SUCCESS = 0,
    E_BADF = 8,
    E_FAULT = 21,
    E_INVAL = 28,
    E_NOENT = 44,
    E_NOSYS = 52,
    E_NOTDIR = 54,
    E_NOTSUP = 58,
    E_SPIPE = 70,
};

#define WASI(name)                                                                        \
    static wasm_trap_t *w_##name(void *env_, wasmtime_caller_t *caller,                   \
                                 wasmtime_val_raw_t *a, size_t nargs_)
#define BEGIN                                        \
    (void)env_;                                      \
    (void)nargs_;                                    \
    wasmtime_context_t *cx = WT.caller_context(caller); \
    pw_vm *vm = WT.context_get_data(cx);             \
    mem_refresh(vm, cx);
#define U(i) ((uint32_t)a[i].i32)
#define RET(v)                   \
    do {                         \
        a[0].i32 = (int32_t)(v); \
        return NULL;             \
    } while (0)

static int is_stdio_out(uint32_t fd) { return fd == 1 || fd == 2; }

/* stdout and stderr are line-buffered into log lines (INFO and ERROR): a guest that writes
 * a line in pieces, as Go's runtime does for a panic, still logs one line. What is left
 * without a newline is logged when the guest call returns (wasi_flush). */
static void emit_lines(pw_vm *vm, int err, int all) {
    pw_buf *b = &vm->stdio[err];
    size_t start = 0;
    for (size_t i = 0; i < b->len; i++)
        if (b->p[i] == '\n') {
            vm_log(vm, ctx_effective(vm), err ? LOG_ERROR : LOG_INFO, (const char *)b->p + start,
                   i - start);
            start = i + 1;
        }
    if (all && start < b->len) {
        vm_log(vm, ctx_effective(vm), err ? LOG_ERROR : LOG_INFO, (const char *)b->p + start,
               b->len - start);
        start = b->len;
    }
    buf_drain_front(b, start);
}

void wasi_flush(pw_vm *vm) {
    if (vm->stdio[0].len) emit_lines(vm, 0, 1);
    if (vm->stdio[1].len) emit_lines(vm, 1, 1);
}

WASI(fd_write) {
    BEGIN;
    uint32_t fd = U(0), iovs = U(1), n = U(2);
    if (!is_stdio_out(fd)) RET(E_BADF);
    if ((uint64_t)n * 8u > UINT32_MAX || !gmem(vm, iovs, n * 8u) || !gmem(vm, U(3), 4))
        RET(E_FAULT);
    pw_buf *line = &vm->stdio[fd - 1];
    /* At most `cap` bytes are taken per call (a short write, which callers retry): each
     * iovec may name the whole memory, and the output becomes log lines the host holds. */
    size_t cap = vm->limits.log_bytes ? vm->limits.log_bytes : 65536;
    uint32_t total = 0;
    for (uint32_t i = 0; i < n && total < cap; i++) {
        const uint8_t *iov = gmem(vm, iovs + 8 * i, 8);
        uint32_t p = (uint32_t)rd_le(iov, 4), l = (uint32_t)rd_le(iov + 4, 4);
        const uint8_t *d = gmem(vm, p, l);
        if (!d) RET(E_FAULT);
        if (l > cap - total) l = (uint32_t)(cap - total);
        if (buf_append(line, d, l)) RET(E_FAULT);
        total += l;
        /* A runaway line is logged in pieces rather than held without bound. */
        emit_lines(vm, fd - 1, line->len >= cap);
    }
    gput_u32(vm, U(3), total);
    RET(E_SUCCESS);
}

WASI(fd_pwrite) { /* (fd, iovs, iovs_len, offset i64, nwritten): the offset means nothing */
    wasm_trap_t *t;
    wasmtime_val_raw_t b[4] = {a[0], a[1], a[2], a[4]};
    t = w_fd_write(env_, caller, b, 4);
    a[0] = b[0];
    (void)nargs_;
    return t;
}

WASI(clock_time_get) {
    BEGIN;
    uint32_t id = U(0);
    if (id > 1) RET(E_NOTSUP);
    if (gput_u64(vm, U(2), vm_now_ns(vm, id == 1))) RET(E_FAULT);
    RET(E_SUCCESS);
}

WASI(clock_res_get) {
    BEGIN;
    if (U(0) > 1) RET(E_NOTSUP);
    if (gput_u64(vm, U(1), 1)) RET(E_FAULT);
    RET(E_SUCCESS);
}

WASI(random_get) {
    BEGIN;
    uint32_t len = U(1);
    if (len > 65536) RET(E_INVAL);
    uint8_t *p = gmem(vm, U(0), len);
    if (!p) RET(E_FAULT);
    size_t got = 0;
    while (got < len) {
        ssize_t r = getrandom(p + got, len - got, 0);
        if (r <= 0) RET(E_INVAL);
        got += (size_t)r;
    }
    RET(E_SUCCESS);
}

/* The environment is "K=V\0K=V\0" as configured for the VM, never the host's own. */
WASI(environ_sizes_get) {
    BEGIN;
    uint32_t count = 0;
    for (size_t i = 0; i < vm->environ.len; i++) count += vm->environ.p[i] == 0;
    if (gput_u32(vm, U(0), count) || gput_u32(vm, U(1), (uint32_t)vm->environ.len))
        RET(E_FAULT);
    RET(E_SUCCESS);
}

WASI(environ_get) {
    BEGIN;
    uint32_t array = U(0), buf = U(1), count = 0;
    for (size_t i = 0; i < vm->environ.len; i++) count += vm->environ.p[i] == 0;
    uint8_t *dst = gmem(vm, buf, (uint32_t)vm->environ.len);
    if (!dst || !gmem(vm, array, count * 4u)) RET(E_FAULT);
    if (vm->environ.len) memcpy(dst, vm->environ.p, vm->environ.len);
    uint32_t start = 0, k = 0;
    for (size_t i = 0; i < vm->environ.len; i++)
        if (vm->environ.p[i] == 0) {
            gput_u32(vm, array + 4 * k++, buf + start);
            start = (uint32_t)i + 1;
        }
    RET(E_SUCCESS);
}

WASI(args_sizes_get) {
    BEGIN;
    if (gput_u32(vm, U(0), 0) || gput_u32(vm, U(1), 0)) RET(E_FAULT);
    RET(E_SUCCESS);
}

WASI(proc_exit) {
    BEGIN;
    vm->exited = 1;
    vm->exit_code = a[0].i32;
    char msg[48];
    int n = snprintf(msg, sizeof msg, "proc_exit(%d)", a[0].i32);
    return WT.trap_new(msg, (size_t)n);
}

/* Go's runtime sleeps through poll_oneoff and throws if it fails: report no events. */
WASI(poll_oneoff) {
    BEGIN;
    if (gput_u32(vm, U(3), 0)) RET(E_FAULT);
    RET(E_SUCCESS);
}

WASI(fd_fdstat_get) {
    BEGIN;
    if (!is_stdio_out(U(0))) RET(E_BADF);
    uint8_t *p = gmem(vm, U(1), 24);
    if (!p) RET(E_FAULT);
    memset(p, 0, 24);
    p[8] = 64; /* rights_base = FD_WRITE */
    RET(E_SUCCESS);
}

WASI(fd_tell) {
    BEGIN;
    if (!is_stdio_out(U(0))) RET(E_BADF);
    if (gput_u64(vm, U(1), 0)) RET(E_FAULT);
    RET(E_SUCCESS);
}

WASI(fd_seek) {
    BEGIN;
    RET(U(0) <= 2 ? E_SPIPE : E_BADF);
}

/* Calls that are fine on stdout/stderr and meaningless elsewhere. */
WASI(stdio_ok) {
    BEGIN;
    RET(is_stdio_out(U(0)) ? E_SUCCESS : E_BADF);
}

WASI(ok) {
    BEGIN;
    RET(E_SUCCESS);
}

WASI(badf) {
    BEGIN;
    RET(E_BADF);
}

WASI(nosys) {
    BEGIN;
    RET(E_NOSYS);
}

WASI(notsup) {
    BEGIN;
    RET(E_NOTSUP);
}

WASI(noent) {
    BEGIN;
    RET(E_NOENT);
}

WASI(notdir) {
    BEGIN;
    RET(E_NOTDIR);
}

static const import_def wasi_imports[] = {
    {"args_get", "ii", "i", w_ok},
    {"args_sizes_get", "ii", "i", w_args_sizes_get},
    {"environ_get", "ii", "i", w_environ_get},
    {"environ_sizes_get", "ii", "i", w_environ_sizes_get},
    {"clock_res_get", "ii", "i", w_clock_res_get},
    {"clock_time_get", "iIi", "i", w_clock_time_get},
    {"fd_advise", "iIIi", "i", w_ok},
    {"fd_allocate", "iII", "i", w_stdio_ok},
    {"fd_close", "i", "i", w_badf},
    {"fd_datasync", "i", "i", w_stdio_ok},
    {"fd_fdstat_get", "ii", "i", w_fd_fdstat_get},
    {"fd_fdstat_set_flags", "ii", "i", w_nosys},
    {"fd_fdstat_set_rights", "iII", "i", w_stdio_ok},
    {"fd_filestat_get", "ii", "i", w_badf},
    {"fd_filestat_set_size", "iI", "i", w_stdio_ok},
    {"fd_filestat_set_times", "iIIi", "i", w_stdio_ok},
    {"fd_pread", "iiiIi", "i", w_nosys},
    {"fd_prestat_get", "ii", "i", w_badf},
    {"fd_prestat_dir_name", "iii", "i", w_nosys},
    {"fd_pwrite", "iiiIi", "i", w_fd_pwrite},
    {"fd_read", "iiii", "i", w_nosys},
    {"fd_readdir", "iiiIi", "i", w_notdir},
    {"fd_renumber", "ii", "i", w_notsup},
    {"fd_seek", "iIii", "i", w_fd_seek},
    {"fd_sync", "i", "i", w_stdio_ok},
    {"fd_tell", "ii", "i", w_fd_tell},
    {"fd_write", "iiii", "i", w_fd_write},
    {"path_create_directory", "iii", "i", w_notsup},
    {"path_filestat_get", "iiiii", "i", w_notsup},
    {"path_filestat_set_times", "iiiiIIi", "i", w_notsup},
    {"path_link", "iiiiiii", "i", w_notsup},
    {"path_open", "iiiiiIIii", "i", w_noent},
    {"path_readlink", "iiiiii", "i", w_notsup},
    {"path_remove_directory", "iii", "i", w_notsup},
    {"path_rename", "iiiiii", "i", w_notsup},
    {"path_symlink", "iiiii", "i", w_notsup},
    {"path_unlink_file", "iii", "i", w_notsup},
    {"poll_oneoff", "iiii", "i", w_poll_oneoff},
    {"proc_exit", "i", "", w_proc_exit},
    {"proc_raise", "i", "i", w_nosys},
    {"sched_yield", "", "i", w_ok},
    {"random_get", "ii", "i", w_random_get},
    {"sock_accept", "iii", "i", w_notsup},
    {"sock_recv", "iiiiii", "i", w_notsup},
    {"sock_send", "iiiii", "i", w_notsup},
    {"sock_shutdown", "ii", "i", w_notsup},
};

int wasi_define(wasmtime_linker_t *linker, char *err, size_t errlen) {
    size_t n = sizeof wasi_imports / sizeof wasi_imports[0];
    return define_imports(linker, "wasi_snapshot_preview1", wasi_imports, n, err, errlen) ||
           define_imports(linker, "wasi_unstable", wasi_imports, n, err, errlen);
}
