/* Shared data (ABI.md §9.1): one key/value store per scope, (host namespace, vm_id), shared
 * by every VM of that namespace in the process; CAS values from one process-wide counter that starts at 1 and skips 0.
 *
 * No global lock: each vm_id's store is split into SHARDS by key hash, each with its own
 * lock, so threads working on different keys do not wait for each other. Every operation
 * on a key happens under its shard's lock, which makes get/set linearizable. A VM finds its
 * store once (vm->space); the list of stores is locked only when a store is created or
 * looked up by name. The C API (shared_get / shared_set) stays narrow so the backend can
 * change (shared memory, Redis). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SHARDS 64

typedef struct entry {
    pw_buf key, value;
    uint32_t cas;
    struct entry *next;
} entry;

typedef struct shard {
    pthread_mutex_t lock;
    entry **buckets;
    size_t nbuckets, n;
} __attribute__((aligned(64))) shard;

struct pw_space {
    pw_buf vm_id;
    _Atomic int64_t bytes; /* keys and values held, against max_bytes */
    shard shards[SHARDS];
    struct pw_space *next;
};

/* All stores, never freed: guarded by spaces_lock (any thread, creation and lookup). */
static pthread_mutex_t spaces_lock = PTHREAD_MUTEX_INITIALIZER;
static pw_space *spaces;
static _Atomic uint32_t cas_counter;
/* Bytes (keys + values) one vm_id may hold; set by any thread, read by all. */
static _Atomic int64_t max_bytes = 64 << 20;

void pw_shared_set_max_bytes(uint64_t n) {
    atomic_store(&max_bytes, n && n < INT64_MAX ? (int64_t)n : INT64_MAX);
}

/* Takes delta bytes from the vm_id's budget (returns them when negative); 0 if refused. */
static int charge(pw_space *s, int64_t delta) {
    if (delta <= 0) {
        atomic_fetch_add(&s->bytes, delta);
        return 1;
    }
    if (atomic_fetch_add(&s->bytes, delta) + delta > atomic_load(&max_bytes)) {
        atomic_fetch_sub(&s->bytes, delta);
        return 0;
    }
    return 1;
}

/* Benchmark baseline only (pw_shared_single_lock): every shard takes one process lock. */
static _Atomic int single_lock_mode;
static pthread_mutex_t single_lock = PTHREAD_MUTEX_INITIALIZER;

void pw_shared_single_lock(int on) { atomic_store(&single_lock_mode, on != 0); }

static pthread_mutex_t *lock_of(shard *s) {
    return atomic_load_explicit(&single_lock_mode, memory_order_relaxed) ? &single_lock : &s->lock;
}

static uint32_t next_cas(void) {
    uint32_t v;
    do v = atomic_fetch_add(&cas_counter, 1) + 1;
    while (v == 0);
    return v;
}

static uint64_t hash(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

pw_space *shared_space(const uint8_t *vm_id, size_t vl, int create) {
    pthread_mutex_lock(&spaces_lock);
    pw_space *s = spaces;
    while (s && !(s->vm_id.len == vl && (vl == 0 || !memcmp(s->vm_id.p, vm_id, vl)))) s = s->next;
    if (!s && create && (s = calloc(1, sizeof *s))) {
        int ok = !buf_set(&s->vm_id, vm_id, vl);
        for (int i = 0; i < SHARDS && ok; i++) {
            s->shards[i].nbuckets = 16;
            ok = (s->shards[i].buckets = calloc(16, sizeof(entry *))) != NULL;
            pthread_mutex_init(&s->shards[i].lock, NULL);
        }
        if (ok) {
            s->next = spaces;
            spaces = s;
        } else {
            for (int i = 0; i < SHARDS; i++) free(s->shards[i].buckets);
            buf_free(&s->vm_id);
            free(s);
            s = NULL;
        }
    }
    pthread_mutex_unlock(&spaces_lock);
    return s;
}

static entry **slot(shard *sh, uint64_t h, const uint8_t *k, size_t kl) {
    entry **e = &sh->buckets[(h / SHARDS) & (sh->nbuckets - 1)];
    while (*e && !((*e)->key.len == kl && (kl == 0 || !memcmp((*e)->key.p, k, kl)))) e = &(*e)->next;
    return e;
}

static void grow(shard *sh) {
    size_t nb = sh->nbuckets * 2;
    entry **b = calloc(nb, sizeof *b);
    if (!b) return;
    for (size_t i = 0; i < sh->nbuckets; i++)
        for (entry *e = sh->buckets[i], *next; e; e = next) {
            next = e->next;
            entry **d = &b[(hash(e->key.p, e->key.len) / SHARDS) & (nb - 1)];
            e->next = *d;
            *d = e;
        }
    free(sh->buckets);
    sh->buckets = b;
    sh->nbuckets = nb;
}

int shared_get(pw_space *s, const uint8_t *k, size_t kl, pw_buf *out, uint32_t *cas) {
    if (!s) return ST_NOT_FOUND;
    uint64_t h = hash(k, kl);
    shard *sh = &s->shards[h % SHARDS];
    int st = ST_NOT_FOUND;
    pthread_mutex_t *l = lock_of(sh);
    pthread_mutex_lock(l);
    entry *e = *slot(sh, h, k, kl);
    if (e) {
        st = buf_set(out, e->value.p, e->value.len) ? ST_INTERNAL_FAILURE : ST_OK;
        *cas = e->cas;
    }
    pthread_mutex_unlock(l);
    return st;
}

int shared_set(pw_space *s, const uint8_t *k, size_t kl, const uint8_t *v, size_t n,
               uint32_t cas) {
    if (!s) return ST_INTERNAL_FAILURE;
    uint64_t h = hash(k, kl);
    shard *sh = &s->shards[h % SHARDS];
    /* Copy outside the lock; only the swap happens under it. */
    pw_buf fresh = {0};
    if (buf_set(&fresh, v, n)) return ST_INTERNAL_FAILURE;
    entry *created = NULL;
    int st = ST_OK;
    pthread_mutex_t *l = lock_of(sh);
    pthread_mutex_lock(l);
    entry **pe = slot(sh, h, k, kl), *e = *pe;
    if (e) {
        /* cas 0 writes unconditionally; a stale cas is a mismatch (Envoy). */
        if (cas && cas != e->cas) {
            st = ST_CAS_MISMATCH;
        } else if (!charge(s, (int64_t)n - (int64_t)e->value.len)) {
            st = ST_INTERNAL_FAILURE; /* past the vm_id's shared-data cap */
        } else {
            pw_buf old = e->value;
            e->value = fresh;
            fresh = old;
            e->cas = next_cas();
        }
    } else if (!charge(s, (int64_t)(kl + n))) {
        st = ST_INTERNAL_FAILURE;
    } else if ((created = calloc(1, sizeof *created)) && !buf_set(&created->key, k, kl)) {
        /* A missing key never mismatches (Envoy). */
        created->value = fresh;
        fresh = (pw_buf){0};
        created->cas = next_cas();
        *pe = created;
        if (++sh->n > sh->nbuckets) grow(sh);
        created = NULL;
    } else {
        charge(s, -(int64_t)(kl + n));
        st = ST_INTERNAL_FAILURE;
    }
    pthread_mutex_unlock(l);
    if (created) free(created);
    buf_free(&fresh);
    return st;
}

/* The embedding's view: a (namespace, vm_id) store, made into its scope (namespace.c). */
int pw_shared_get(const uint8_t *ns, size_t ns_len, const uint8_t *vm_id, size_t vm_id_len,
                  const uint8_t *key, size_t key_len, uint8_t **out, size_t *out_len,
                  uint32_t *cas) {
    pw_buf b = {0}, scope = {0};
    if (scope_make(&scope, ns, ns_len, vm_id, vm_id_len)) {
        buf_free(&scope);
        return ST_INTERNAL_FAILURE;
    }
    int st = shared_get(shared_space(scope.p, scope.len, 0), key, key_len, &b, cas);
    buf_free(&scope);
    if (st != ST_OK) {
        buf_free(&b);
        return st;
    }
    if (!b.p) b.p = malloc(1);
    *out = b.p;
    *out_len = b.len;
    return b.p ? ST_OK : ST_INTERNAL_FAILURE;
}

int pw_shared_set(const uint8_t *ns, size_t ns_len, const uint8_t *vm_id, size_t vm_id_len,
                  const uint8_t *key, size_t key_len, const uint8_t *value, size_t value_len,
                  uint32_t cas) {
    pw_buf scope = {0};
    int st = scope_make(&scope, ns, ns_len, vm_id, vm_id_len)
                 ? ST_INTERNAL_FAILURE
                 : shared_set(shared_space(scope.p, scope.len, 1), key, key_len, value,
                              value_len, cas);
    buf_free(&scope);
    return st;
}
