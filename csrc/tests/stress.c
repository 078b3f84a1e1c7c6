/* Stress test of the C core's shared state, in C alone so that it can run under
 * ThreadSanitizer (an uninstrumented CPython cannot load TSan). Real guests on real
 * threads: each thread owns a dispatcher and a VM.
 *
 *   stress LIBWASMTIME_SO PLUGIN_DIR
 *
 * 1. CAS: THREADS threads each make REQUESTS requests of PER_REQUEST compare-and-swap
 *    increments of one shared key and of their own key (cas_loop.wasm): totals are exact.
 * 2. Queues: THREADS producer threads enqueue ITEMS items each (queue_pc.wasm, "p") to a
 *    consumer VM on its own thread ("c"): every item arrives once, each producer's in order,
 *    and on_queue_ready runs on the consumer's thread.
 * 3. Both again with the namespace's shared state in a shared-memory segment (shm.c):
 *    the same totals, order and threads through the backend's locks, allocator and
 *    notification thread.
 * Exit status 0 when everything holds. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../pw.h"

#define THREADS 4
#define REQUESTS 5
#define PER_REQUEST 2000
#define ITEMS 5000

static pw_engine *engine;
static pw_module *cas_mod, *queue_mod;
static int failures;

#define CHECK(cond, ...)                         \
    do {                                         \
        if (!(cond)) {                           \
            fprintf(stderr, "FAIL: " __VA_ARGS__); \
            fputc('\n', stderr);                 \
            failures++;                          \
        }                                        \
    } while (0)

static void on_log(void *h, int level, const char *msg, size_t len) {
    (void)h;
    if (level >= 3) fprintf(stderr, "plugin log %d: %.*s\n", level, (int)len, msg);
}

/* Items the consumer hands over through the foreign function "consumed". */
static pthread_t consumer_thread;
static _Atomic int consumed_count, wrong_thread;
static uint32_t last_seq[THREADS];
static int out_of_order;

static int on_foreign(void *h, const uint8_t *args, size_t len, void *result) {
    (void)h;
    (void)result;
    if (!pthread_equal(pthread_self(), consumer_thread)) atomic_fetch_add(&wrong_thread, 1);
    if (len != 8) return 2;
    uint32_t producer, seq;
    memcpy(&producer, args, 4);
    memcpy(&seq, args + 4, 4);
    if (producer >= THREADS || seq != last_seq[producer]) out_of_order++;
    else last_seq[producer]++;
    atomic_fetch_add(&consumed_count, 1);
    return 0;
}

static uint8_t *read_file(const char *dir, const char *name, size_t *len) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(*len);
    if (fread(p, 1, *len, f) != *len) {
        free(p);
        p = NULL;
    }
    fclose(f);
    return p;
}

static pw_vm *new_vm(pw_module *m, pw_dispatcher *d, const char *vm_id) {
    char err[512];
    pw_vm *vm = pw_vm_new(m, d, NULL, NULL, 0, (const uint8_t *)vm_id, strlen(vm_id), NULL, 0, NULL, 0, NULL,
                          err, sizeof err);
    if (!vm) fprintf(stderr, "vm: %s\n", err);
    return vm;
}

static uint32_t new_root(pw_vm *vm, const char *config) {
    uint32_t id = 0;
    int rc = pw_root_new(vm, (const uint8_t *)"p", 1, (const uint8_t *)"", 0,
                         (const uint8_t *)config, strlen(config), NULL, 0, &id);
    CHECK(rc == PW_OK, "root start %d", rc);
    return id;
}

/* "k|v|k|v" -> the flat header form ("k\0v\0k\0v"); returns its length. */
static size_t flat(char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++)
        if (s[i] == '|') s[i] = 0;
    return n;
}

static void request(pw_vm *vm, uint32_t root, const char *flat, size_t len, int pairs) {
    uint32_t id;
    int f = pw_http_start(vm, root, (const uint8_t *)flat, len, pairs, 1, &id);
    CHECK(f >= 0, "request %d", f);
    pw_http_finish(vm, id);
}

/* ---- 1. CAS ------------------------------------------------------------------------- */
static void *cas_thread(void *arg) {
    int me = (int)(intptr_t)arg;
    pw_dispatcher *d = pw_dispatcher_new();
    pw_vm *vm = new_vm(cas_mod, d, "stress-cas");
    if (!vm) return NULL;
    uint32_t root = new_root(vm, "");
    char own[64], shared[64];
    snprintf(own, sizeof own, ":path|/|x-n|%d|x-key|own-%d", PER_REQUEST, me);
    snprintf(shared, sizeof shared, ":path|/|x-n|%d|x-key|shared", PER_REQUEST);
    size_t own_len = flat(own), shared_len = flat(shared);
    for (int i = 0; i < REQUESTS; i++) {
        request(vm, root, shared, shared_len, 3);
        request(vm, root, own, own_len, 3);
    }
    pw_vm_free(vm);
    pw_dispatcher_free(d);
    return NULL;
}

static uint64_t counter(const char *key) {
    uint8_t *v = NULL;
    size_t n = 0;
    uint32_t cas = 0;
    uint64_t out = 0;
    if (pw_shared_get((const uint8_t *)"", 0, (const uint8_t *)"stress-cas", 10, (const uint8_t *)key, strlen(key), &v, &n,
                      &cas) == 0 && n == 8)
        memcpy(&out, v, 8);
    pw_bytes_free(v);
    return out;
}

static void test_cas(void) {
    uint8_t zero[8] = {0};
    char key[32];
    pw_shared_set((const uint8_t *)"", 0, (const uint8_t *)"stress-cas", 10, (const uint8_t *)"shared", 6, zero, 8, 0);
    for (int i = 0; i < THREADS; i++) {
        int n = snprintf(key, sizeof key, "own-%d", i);
        pw_shared_set((const uint8_t *)"", 0, (const uint8_t *)"stress-cas", 10, (const uint8_t *)key, (size_t)n, zero, 8, 0);
    }
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, cas_thread, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    CHECK(counter("shared") == (uint64_t)THREADS * REQUESTS * PER_REQUEST, "shared = %llu",
          (unsigned long long)counter("shared"));
    for (int i = 0; i < THREADS; i++) {
        snprintf(key, sizeof key, "own-%d", i);
        CHECK(counter(key) == (uint64_t)REQUESTS * PER_REQUEST, "%s = %llu", key,
              (unsigned long long)counter(key));
    }
}

/* ---- 2. queues ----------------------------------------------------------------------- */
static _Atomic int consumer_up;

static void *consumer(void *arg) {
    (void)arg;
    pw_dispatcher *d = pw_dispatcher_new();
    pw_vm *vm = new_vm(queue_mod, d, "stress-queue");
    if (!vm) return NULL;
    const char *name = "consumed";
    pw_vm_register_foreign(vm, name, strlen(name), NULL);
    new_root(vm, "c");
    atomic_store(&consumer_up, 1);
    while (atomic_load(&consumed_count) < THREADS * ITEMS) pw_dispatcher_run(d);
    pw_vm_free(vm);
    pw_dispatcher_free(d);
    return NULL;
}

static void *producer(void *arg) {
    int me = (int)(intptr_t)arg;
    pw_dispatcher *d = pw_dispatcher_new();
    pw_vm *vm = new_vm(queue_mod, d, "stress-queue");
    if (!vm) return NULL;
    uint32_t root = new_root(vm, "p");
    char hdrs[64];
    snprintf(hdrs, sizeof hdrs, ":path|/|x-n|%d|x-p|%d", ITEMS, me);
    request(vm, root, hdrs, flat(hdrs), 3);
    pw_vm_free(vm);
    pw_dispatcher_free(d);
    return NULL;
}

static void test_queues(void) {
    pthread_create(&consumer_thread, NULL, consumer, NULL);
    while (!atomic_load(&consumer_up)) {
    }
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, producer, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    pthread_join(consumer_thread, NULL);
    CHECK(atomic_load(&consumed_count) == THREADS * ITEMS, "consumed %d", atomic_load(&consumed_count));
    CHECK(!out_of_order, "%d items out of order", out_of_order);
    CHECK(!atomic_load(&wrong_thread), "on_queue_ready off the consumer's thread");
    for (int i = 0; i < THREADS; i++) CHECK(last_seq[i] == ITEMS, "producer %d: %u", i, last_seq[i]);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LIBWASMTIME_SO PLUGIN_DIR\n", argv[0]);
        return 2;
    }
    char err[512];
    if (pw_wt_bind(argv[1], err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    pw_set_callbacks(on_log, on_foreign);
    engine = pw_engine_new(err, sizeof err);
    size_t n;
    uint8_t *wasm = read_file(argv[2], "cas_loop.wasm", &n);
    cas_mod = wasm ? pw_module_new(engine, wasm, n, PW_ABI_0_2_1, 3, 0, err, sizeof err) : NULL;
    free(wasm);
    wasm = read_file(argv[2], "queue_pc.wasm", &n);
    queue_mod = wasm ? pw_module_new(engine, wasm, n, PW_ABI_0_2_1, 3, 0, err, sizeof err) : NULL;
    free(wasm);
    if (!engine || !cas_mod || !queue_mod) {
        fprintf(stderr, "setup: %s\n", err);
        return 2;
    }
    test_cas();
    test_queues();
    /* 3. The same through the shared-memory backend. */
    char seg[64];
    int sl = snprintf(seg, sizeof seg, "pwstress-%d", (int)getpid());
    pw_backend *b = pw_shm_open((const uint8_t *)seg, (size_t)sl, 16 << 20, 0, 0, err, sizeof err);
    CHECK(b != NULL, "shm open: %s", err);
    if (b) {
        CHECK(pw_backend_attach(b, (const uint8_t *)"", 0, NULL, 0, 1) == PW_OK, "attach");
        atomic_store(&consumed_count, 0);
        atomic_store(&consumer_up, 0);
        memset(last_seq, 0, sizeof last_seq);
        test_cas();
        test_queues();
        pw_backend_detach(b, (const uint8_t *)"", 0, NULL, 0, 1);
        pw_backend_close(b);
        pw_shm_unlink((const uint8_t *)seg, (size_t)sl);
    }
    pw_module_free(cas_mod);
    pw_module_free(queue_mod);
    pw_engine_free(engine);
    printf("stress: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
