/* The C core driven from C, without Python: the per-request cost the Python API is
 * measured against (bench/test_lifecycle_bench.py builds and runs this in the same run).
 *
 *   driver LIBWASMTIME_SO PLUGIN.wasm ABI ROUNDS [CONFIG]
 *
 * ABI is 0 (0.1.0), 1 (0.2.0) or 2 (0.2.1). One lifecycle is the one bench/ uses
 * everywhere: 6 request headers, a request body (end of stream), 4 response headers, a
 * response body (end of stream), teardown (log, done, delete). Prints one line:
 *   ns_per_request=<median over 15 batches of ROUNDS lifecycles>
 * Under callgrind, `--toggle-collect=run_batch` counts exactly ROUNDS lifecycles (one
 * batch runs when the environment has PW_BENCH_ONE_BATCH set). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../csrc/pw.h"

#define BATCHES 15

static const char *const REQUEST[][2] = {
    {":method", "GET"}, {":path", "/"}, {":authority", "example.com"},
    {":scheme", "http"}, {"user-agent", "bench"}, {"accept", "*/*"},
};
static const char *const RESPONSE[][2] = {
    {":status", "200"}, {"content-type", "text/plain"}, {"content-length", "5"},
    {"server", "upstream"},
};

/* The pairs wire format (ABI.md §6.1). */
static size_t encode(const char *const (*h)[2], uint32_t n, uint8_t *out) {
    uint8_t *p = out + 4 + 8 * n;
    memcpy(out, &n, 4);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t kl = (uint32_t)strlen(h[i][0]), vl = (uint32_t)strlen(h[i][1]);
        memcpy(out + 4 + 8 * i, &kl, 4);
        memcpy(out + 8 + 8 * i, &vl, 4);
        memcpy(p, h[i][0], kl + 1);
        p += kl + 1;
        memcpy(p, h[i][1], vl + 1);
        p += vl + 1;
    }
    return (size_t)(p - out);
}

static uint8_t req[512], resp[512];
static size_t req_len, resp_len;
static int errors;

static void log_cb(void *h, int level, const char *msg, size_t len) {
    (void)h;
    if (level >= 4) fprintf(stderr, "plugin log %d: %.*s\n", level, (int)len, msg);
}

static int foreign_cb(void *h, const uint8_t *a, size_t n, void *r) {
    (void)h, (void)a, (void)n, (void)r;
    return 12;
}

static void lifecycles(pw_vm *vm, uint32_t root, long rounds) {
    for (long i = 0; i < rounds; i++) {
        uint32_t id;
        int f = pw_http_start(vm, root, req, req_len, -1, 0, &id);
        f |= pw_http_data(vm, id, PW_DIR_REQUEST, (const uint8_t *)"hello", 5, 1);
        f |= pw_http_headers(vm, id, PW_DIR_RESPONSE, resp, resp_len, -1, 0);
        f |= pw_http_data(vm, id, PW_DIR_RESPONSE, (const uint8_t *)"world", 5, 1);
        f |= pw_http_finish(vm, id);
        if (f < 0) errors++;
    }
}

/* The measured batches. Not static and not inlined: callgrind's --toggle-collect names it,
 * so the warm-up (lifecycles() called directly) is not counted. */
__attribute__((noinline)) void run_batch(pw_vm *vm, uint32_t root, long rounds) {
    lifecycles(vm, root, rounds);
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(*len ? *len : 1);
    if (p && fread(p, 1, *len, f) != *len) {
        free(p);
        p = NULL;
    }
    fclose(f);
    return p;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s LIBWASMTIME_SO PLUGIN.wasm ABI ROUNDS [CONFIG]\n", argv[0]);
        return 2;
    }
    char err[1024];
    if (pw_wt_bind(argv[1], err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    pw_set_callbacks(log_cb, foreign_cb);
    pw_engine *e = pw_engine_new(err, sizeof err);
    if (!e) {
        fprintf(stderr, "engine: %s\n", err);
        return 1;
    }
    size_t wlen;
    uint8_t *wasm = read_file(argv[2], &wlen);
    if (!wasm) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 1;
    }
    /* PW_BENCH_CACHE=FILE: the compiled module is kept there (callgrind runs skip the
     * compile, which valgrind makes slow). */
    const char *cache = getenv("PW_BENCH_CACHE");
    pw_module *m = NULL;
    size_t clen;
    uint8_t *cbytes = cache ? read_file(cache, &clen) : NULL;
    if (cbytes) {
        m = pw_module_deserialize(e, cbytes, clen, atoi(argv[3]), 3, 0, err, sizeof err);
        free(cbytes);
    }
    if (!m) {
        m = pw_module_new(e, wasm, wlen, atoi(argv[3]), 3, 0, err, sizeof err);
        uint8_t *ser;
        size_t slen;
        FILE *f;
        if (m && cache && !pw_module_serialize(m, &ser, &slen)) {
            if ((f = fopen(cache, "wb"))) {
                fwrite(ser, 1, slen, f);
                fclose(f);
            }
            pw_bytes_free(ser);
        }
    }
    if (!m) {
        fprintf(stderr, "module: %s\n", err);
        return 1;
    }
    pw_dispatcher *d = pw_dispatcher_new();
    pw_vm *vm = pw_vm_new(m, d, NULL, NULL, 0, (const uint8_t *)"bench", 5, NULL, 0, NULL, 0, NULL, err,
                          sizeof err);
    if (!vm) {
        fprintf(stderr, "vm: %s\n", err);
        return 1;
    }
    /* The Python host's defaults, so that both sides of the comparison do the same work:
     * the per-call deadline (PluginConfig.deadline_ms) armed on every guest call... */
    pw_vm_set_deadline(vm, 100);
    const char *config = argc > 5 ? argv[5] : "";
    uint32_t root = 0;
    /* ...and log level 3 (warn): what the Python host hands the core for a logger left at
     * Python's default (WARNING). A guest that asks proxy_get_log_level (the Go SDK does)
     * then skips formatting its info lines on both sides of the comparison. */
    int rc = pw_root_new(vm, (const uint8_t *)"bench", 5, (const uint8_t *)"", 0,
                         (const uint8_t *)config, strlen(config), NULL, 3, &root);
    if (rc != PW_OK) {
        fprintf(stderr, "root: %d %s\n", rc, pw_vm_error(vm));
        return 1;
    }
    req_len = encode(REQUEST, 6, req);
    resp_len = encode(RESPONSE, 4, resp);
    long rounds = atol(argv[4]);
    lifecycles(vm, root, rounds < 200 ? rounds : 200); /* warm: pooled contexts, caches */
    if (getenv("PW_BENCH_ONE_BATCH")) {
        run_batch(vm, root, rounds);
    } else {
        double t[BATCHES];
        for (int b = 0; b < BATCHES; b++) {
            double t0 = now_ns();
            run_batch(vm, root, rounds);
            t[b] = (now_ns() - t0) / (double)rounds;
        }
        qsort(t, BATCHES, sizeof t[0], cmp);
        printf("ns_per_request=%.1f\n", t[BATCHES / 2]);
    }
    if (errors || pw_vm_failed(vm)) {
        fprintf(stderr, "errors: %d %s\n", errors, pw_vm_error(vm));
        return 1;
    }
    pw_vm_free(vm);
    pw_dispatcher_free(d);
    pw_module_free(m);
    pw_engine_free(e);
    free(wasm);
    return 0;
}
