/* Shared data (ABI.md §9.1): one key/value store per vm_id, shared by every VM in the
 * process; CAS values from one process-wide counter that starts at 1 and skips 0.
 * The C API (shared_get / shared_set) is kept narrow so the store can change backend. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct entry {
    pw_buf key, value;
    uint32_t cas;
    struct entry *next;
} entry;

typedef struct space {
    pw_buf vm_id;
    pthread_mutex_t lock; /* guards the buckets of this vm_id */
    entry **buckets;
    size_t nbuckets, n;
    struct space *next;
} space;

/* The list of namespaces: guarded by spaces_lock, shared by all threads. */
static pthread_mutex_t spaces_lock = PTHREAD_MUTEX_INITIALIZER;
static space *spaces;
static _Atomic uint32_t cas_counter;

static uint32_t next_cas(void) {
    uint32_t v;
    do v = atomic_fetch_add(&cas_counter, 1) + 1;
    while (v == 0);
    return v;
}

static uint64_t hash(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static space *space_for(const uint8_t *vm_id, size_t vl, int create) {
    pthread_mutex_lock(&spaces_lock);
    space *s = spaces;
    while (s && !(s->vm_id.len == vl && (vl == 0 || !memcmp(s->vm_id.p, vm_id, vl)))) s = s->next;
    if (!s && create) {
        s = calloc(1, sizeof *s);
        if (s) {
            s->nbuckets = 64;
            s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
            if (!s->buckets || buf_set(&s->vm_id, vm_id, vl)) {
                free(s->buckets);
                free(s);
                s = NULL;
            } else {
                pthread_mutex_init(&s->lock, NULL);
                s->next = spaces;
                spaces = s;
            }
        }
    }
    pthread_mutex_unlock(&spaces_lock);
    return s;
}

static entry **slot(space *s, const uint8_t *k, size_t kl) {
    entry **e = &s->buckets[hash(k, kl) & (s->nbuckets - 1)];
    while (*e && !((*e)->key.len == kl && (kl == 0 || !memcmp((*e)->key.p, k, kl)))) e = &(*e)->next;
    return e;
}

static void grow(space *s) {
    size_t nb = s->nbuckets * 2;
    entry **b = calloc(nb, sizeof *b);
    if (!b) return;
    for (size_t i = 0; i < s->nbuckets; i++)
        for (entry *e = s->buckets[i], *next; e; e = next) {
            next = e->next;
            entry **d = &b[hash(e->key.p, e->key.len) & (nb - 1)];
            e->next = *d;
            *d = e;
        }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
}

int shared_get(const uint8_t *vm_id, size_t vl, const uint8_t *k, size_t kl, pw_buf *out,
               uint32_t *cas) {
    space *s = space_for(vm_id, vl, 0);
    if (!s) return ST_NOT_FOUND;
    int st = ST_NOT_FOUND;
    pthread_mutex_lock(&s->lock);
    entry *e = *slot(s, k, kl);
    if (e) {
        st = buf_set(out, e->value.p, e->value.len) ? ST_INTERNAL_FAILURE : ST_OK;
        *cas = e->cas;
    }
    pthread_mutex_unlock(&s->lock);
    return st;
}

int shared_set(const uint8_t *vm_id, size_t vl, const uint8_t *k, size_t kl, const uint8_t *v,
               size_t n, uint32_t cas) {
    space *s = space_for(vm_id, vl, 1);
    if (!s) return ST_INTERNAL_FAILURE;
    int st = ST_OK;
    pthread_mutex_lock(&s->lock);
    entry **pe = slot(s, k, kl), *e = *pe;
    if (e) {
        /* cas 0 writes unconditionally; a stale cas is a mismatch. A missing key never
         * mismatches (Envoy). */
        if (cas && cas != e->cas) st = ST_CAS_MISMATCH;
        else if (buf_set(&e->value, v, n)) st = ST_INTERNAL_FAILURE;
        else e->cas = next_cas();
    } else {
        e = calloc(1, sizeof *e);
        if (!e || buf_set(&e->key, k, kl) || buf_set(&e->value, v, n)) {
            if (e) {
                buf_free(&e->key);
                free(e);
            }
            st = ST_INTERNAL_FAILURE;
        } else {
            e->cas = next_cas();
            *pe = e;
            if (++s->n > s->nbuckets) grow(s);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return st;
}

int pw_shared_get(const uint8_t *vm_id, size_t vm_id_len, const uint8_t *key, size_t key_len,
                  uint8_t **out, size_t *out_len, uint32_t *cas) {
    pw_buf b = {0};
    int st = shared_get(vm_id, vm_id_len, key, key_len, &b, cas);
    if (st != ST_OK) {
        buf_free(&b);
        return st;
    }
    if (!b.p) b.p = malloc(1);
    *out = b.p;
    *out_len = b.len;
    return b.p ? ST_OK : ST_INTERNAL_FAILURE;
}

int pw_shared_set(const uint8_t *vm_id, size_t vm_id_len, const uint8_t *key, size_t key_len,
                  const uint8_t *value, size_t value_len, uint32_t cas) {
    return shared_set(vm_id, vm_id_len, key, key_len, value, value_len, cas);
}
