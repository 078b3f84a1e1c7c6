/* Shared data (ABI.md §9.1): one key/value store per scope, (host namespace, vm_id), shared
 * by every VM of that namespace in the process; CAS values from one process-wide counter
 * that starts at 1 and skips 0. This is the in-process backend (slot 0 of backend.c): VMs
 * whose scope has no other backend call it directly.
 *
 * No global lock: each vm_id's store is split into SHARDS by key hash, each with its own
 * lock, so threads working on different keys do not wait for each other. Every operation
 * on a key happens under its shard's lock, which makes get/set linearizable. A VM finds its
 * store once (vm->space); the list of stores is locked only when a store is created or
 * looked up by name.
 *
 * Beyond the ABI (backend.h): delete (with cas), a TTL per key (CLOCK_MONOTONIC; an expired
 * key reads as absent and is removed when touched, and each write sweeps a few buckets of
 * its shard so keys nobody reads again do not pile up; shards without TTL keys skip both),
 * and a byte cap per store (keys + values; the store's own, from the host's InProcess
 * options, else the process default). The byte cap does not see what each key costs
 * beyond its bytes (its entry and two allocations, about 100 bytes): a guest writing
 * endless one-byte keys would hold some 100 times the cap. So a store also holds at most
 * MAX_ENTRIES keys, as a shared queue holds at most so many items.
 *
 * Lifetime: a store is referenced by the VMs of its scope and, during a call, by the
 * embedding API; a namespace released by its last host (backend.c) retires its stores,
 * which are freed with their data when the last reference goes. The default namespace ""
 * is never retired. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define SHARDS 64
#define SWEEP_BUCKETS 4 /* buckets a write looks at for expired keys */
#define SWEEP_ALL_NS 10000000ull /* a write refused by the cap sweeps every shard, this rarely */
#define MAX_ENTRIES (1 << 20)     /* keys per store (see the top of the file) */

typedef struct entry {
    pw_buf key, value;
    uint32_t cas;
    uint64_t expires_ns; /* CLOCK_MONOTONIC; 0: never */
    struct entry *next;
} entry;

typedef struct shard {
    pthread_mutex_t lock;
    entry **buckets;
    size_t nbuckets, n;
    size_t n_ttl;  /* entries with a TTL (0: no expiry work at all) */
    size_t sweep;  /* the next bucket the sweep looks at */
} __attribute__((aligned(64))) shard;

struct pw_space {
    pw_buf vm_id; /* the scope key */
    _Atomic int64_t bytes; /* keys and values held, against the cap */
    _Atomic int64_t entries; /* keys held, against MAX_ENTRIES */
    _Atomic int64_t max_bytes; /* this store's cap; 0: the process default */
    _Atomic uint64_t default_ttl_ms; /* given to keys at their first write; 0: none */
    _Atomic int64_t refs;   /* the list's (until retired), VMs' and calls' in flight */
    _Atomic int64_t n_ttl;  /* keys with a TTL, all shards */
    _Atomic uint64_t swept_ns; /* the last full sweep (at most one per SWEEP_ALL_NS) */
    shard shards[SHARDS];
    struct pw_space *next;
};

/* All live stores: guarded by spaces_lock (any thread, creation, lookup, retirement). */
static pthread_mutex_t spaces_lock = PTHREAD_MUTEX_INITIALIZER;
static pw_space *spaces;
static _Atomic uint32_t cas_counter;
/* Bytes (keys + values) a store without its own cap may hold; set by any thread. */
static _Atomic int64_t default_max_bytes = 64 << 20;

void pw_shared_set_max_bytes(uint64_t n) {
    atomic_store(&default_max_bytes, n && n < INT64_MAX ? (int64_t)n : INT64_MAX);
}

void shared_space_configure(pw_space *s, uint64_t max_bytes, uint64_t default_ttl_ms) {
    if (!s) return;
    atomic_store(&s->max_bytes, !max_bytes ? 0 : max_bytes < INT64_MAX ? (int64_t)max_bytes
                                                                        : INT64_MAX);
    atomic_store(&s->default_ttl_ms, default_ttl_ms);
}

static int64_t cap_of(pw_space *s) {
    int64_t m = atomic_load_explicit(&s->max_bytes, memory_order_relaxed);
    return m ? m : atomic_load_explicit(&default_max_bytes, memory_order_relaxed);
}

/* Takes delta bytes from the store's budget (returns them when negative); 0 if refused. */
static int charge(pw_space *s, int64_t delta) {
    if (delta <= 0) {
        atomic_fetch_add(&s->bytes, delta);
        return 1;
    }
    if (atomic_fetch_add(&s->bytes, delta) + delta > cap_of(s)) {
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

/* The key hash's secret (siphash.c): random per process, drawn once before the first
 * store exists (hash_key_init, under spaces_lock), read-only afterwards by any thread. */
static uint64_t hash_key[2];

static void hash_key_init(void) {
    static int done;
    if (done) return;
    if (getrandom(hash_key, sizeof hash_key, 0) != (ssize_t)sizeof hash_key) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t); /* no entropy source: still not a constant */
        hash_key[0] = (uint64_t)t.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
        hash_key[1] = (uint64_t)t.tv_sec ^ (uint64_t)(uintptr_t)&t;
    }
    done = 1;
}

static uint64_t hash(const uint8_t *p, size_t n) { return pw_hash_keyed(hash_key[0], hash_key[1], p, n); }

uint64_t shared_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

uint64_t shared_deadline(uint64_t ttl_ms) {
    if (!ttl_ms) return 0;
    uint64_t now = shared_now_ns();
    return ttl_ms > (UINT64_MAX - now) / 1000000u ? UINT64_MAX : now + ttl_ms * 1000000u;
}

static void space_free(pw_space *s) {
    for (int i = 0; i < SHARDS; i++) {
        shard *sh = &s->shards[i];
        for (size_t b = 0; sh->buckets && b < sh->nbuckets; b++)
            for (entry *e = sh->buckets[b], *next; e; e = next) {
                next = e->next;
                buf_free(&e->key);
                buf_free(&e->value);
                free(e);
            }
        free(sh->buckets);
        pthread_mutex_destroy(&sh->lock);
    }
    buf_free(&s->vm_id);
    free(s);
}

pw_space *shared_space(const uint8_t *vm_id, size_t vl, int create) {
    pthread_mutex_lock(&spaces_lock);
    hash_key_init();
    pw_space *s = spaces;
    while (s && !(s->vm_id.len == vl && (vl == 0 || !memcmp(s->vm_id.p, vm_id, vl)))) s = s->next;
    if (!s && create && (s = calloc(1, sizeof *s))) {
        int ok = !buf_set(&s->vm_id, vm_id, vl);
        for (int i = 0; i < SHARDS; i++) {
            s->shards[i].nbuckets = 16;
            if (ok) ok = (s->shards[i].buckets = calloc(16, sizeof(entry *))) != NULL;
            pthread_mutex_init(&s->shards[i].lock, NULL);
        }
        if (ok) {
            atomic_store(&s->refs, 1); /* the list's own, dropped when it is retired */
            s->next = spaces;
            spaces = s;
        } else {
            space_free(s);
            s = NULL;
        }
    }
    if (s) atomic_fetch_add(&s->refs, 1);
    pthread_mutex_unlock(&spaces_lock);
    return s;
}

void shared_space_unref(pw_space *s) {
    if (s && atomic_fetch_sub(&s->refs, 1) == 1) space_free(s); /* the list let go first */
}

/* The namespace whose scope keys start with `prefix` is gone: its stores leave the list
 * (nobody finds them again) and are freed now, or by whoever drops the last reference. */
void shared_retire(const uint8_t *prefix, size_t pl) {
    pthread_mutex_lock(&spaces_lock);
    pw_space **ps = &spaces, *gone = NULL;
    while (*ps) {
        pw_space *s = *ps;
        if (s->vm_id.len >= pl && !memcmp(s->vm_id.p, prefix, pl)) {
            *ps = s->next;
            s->next = gone;
            gone = s;
        } else {
            ps = &s->next;
        }
    }
    pthread_mutex_unlock(&spaces_lock);
    while (gone) {
        pw_space *s = gone;
        gone = s->next;
        shared_space_unref(s); /* the list's reference: the last holder frees it */
    }
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
    sh->sweep = 0;
}

/* Under the shard's lock: unlinks *pe and returns its bytes to the budget. */
static void unlink_entry(pw_space *s, shard *sh, entry **pe) {
    entry *e = *pe;
    *pe = e->next;
    sh->n--;
    if (e->expires_ns) {
        sh->n_ttl--;
        atomic_fetch_sub(&s->n_ttl, 1);
    }
    charge(s, -(int64_t)(e->key.len + e->value.len));
    atomic_fetch_sub(&s->entries, 1);
    buf_free(&e->key);
    buf_free(&e->value);
    free(e);
}

/* Under the shard's lock: the entry for the key, with an expired one removed first. */
static entry **live(pw_space *s, shard *sh, uint64_t h, const uint8_t *k, size_t kl,
                    uint64_t *now) {
    entry **pe = slot(sh, h, k, kl);
    if (*pe && (*pe)->expires_ns) {
        if (!*now) *now = shared_now_ns();
        if ((*pe)->expires_ns <= *now) unlink_entry(s, sh, pe);
    }
    return pe;
}

/* Under the shard's lock: looks at a few buckets for expired keys. */
static void sweep(pw_space *s, shard *sh, uint64_t *now) {
    if (!sh->n_ttl) return;
    if (!*now) *now = shared_now_ns();
    for (int i = 0; i < SWEEP_BUCKETS; i++) {
        size_t b = sh->sweep++ & (sh->nbuckets - 1);
        for (entry **pe = &sh->buckets[b]; *pe;) {
            if ((*pe)->expires_ns && (*pe)->expires_ns <= *now)
                unlink_entry(s, sh, pe);
            else
                pe = &(*pe)->next;
        }
    }
}

int shared_get(pw_space *s, const uint8_t *k, size_t kl, pw_buf *out, uint32_t *cas) {
    if (!s) return ST_NOT_FOUND;
    uint64_t h = hash(k, kl), now = 0;
    shard *sh = &s->shards[h % SHARDS];
    int st = ST_NOT_FOUND;
    pthread_mutex_t *l = lock_of(sh);
    pthread_mutex_lock(l);
    entry *e = sh->n_ttl ? *live(s, sh, h, k, kl, &now) : *slot(sh, h, k, kl);
    if (e) {
        st = buf_set(out, e->value.p, e->value.len) ? ST_INTERNAL_FAILURE : ST_OK;
        *cas = e->cas;
    }
    pthread_mutex_unlock(l);
    return st;
}

/* A write the cap refused, in a store holding TTL keys: expired keys of every shard give
 * their bytes back (rate-limited, so a guest hammering a full store does not make every
 * write a scan). 1 if it swept. */
static int sweep_all(pw_space *s) {
    uint64_t now = shared_now_ns(), last = atomic_load(&s->swept_ns);
    if (!atomic_load(&s->n_ttl) || (last && now - last < SWEEP_ALL_NS) ||
        !atomic_compare_exchange_strong(&s->swept_ns, &last, now))
        return 0;
    for (int i = 0; i < SHARDS; i++) {
        shard *sh = &s->shards[i];
        pthread_mutex_t *l = lock_of(sh);
        pthread_mutex_lock(l);
        for (size_t b = 0; sh->n_ttl && b < sh->nbuckets; b++)
            for (entry **pe = &sh->buckets[b]; *pe;) {
                if ((*pe)->expires_ns && (*pe)->expires_ns <= now)
                    unlink_entry(s, sh, pe);
                else
                    pe = &(*pe)->next;
            }
        pthread_mutex_unlock(l);
    }
    return 1;
}

static int set_once(pw_space *s, const uint8_t *k, size_t kl, const uint8_t *v, size_t n,
                    uint32_t cas, int *capped);

int shared_set(pw_space *s, const uint8_t *k, size_t kl, const uint8_t *v, size_t n,
               uint32_t cas) {
    int capped = 0;
    int st = set_once(s, k, kl, v, n, cas, &capped);
    if (capped && sweep_all(s)) st = set_once(s, k, kl, v, n, cas, &capped);
    return st;
}

static int set_once(pw_space *s, const uint8_t *k, size_t kl, const uint8_t *v, size_t n,
                    uint32_t cas, int *capped) {
    if (!s) return ST_INTERNAL_FAILURE;
    uint64_t h = hash(k, kl), now = 0;
    shard *sh = &s->shards[h % SHARDS];
    /* Copy outside the lock; only the swap happens under it. */
    pw_buf fresh = {0};
    if (buf_set(&fresh, v, n)) return ST_INTERNAL_FAILURE;
    entry *created = NULL;
    int st = ST_OK;
    pthread_mutex_t *l = lock_of(sh);
    pthread_mutex_lock(l);
    sweep(s, sh, &now);
    entry **pe = sh->n_ttl ? live(s, sh, h, k, kl, &now) : slot(sh, h, k, kl), *e = *pe;
    if (e) {
        /* cas 0 writes unconditionally; a stale cas is a mismatch (Envoy). The TTL stays. */
        if (cas && cas != e->cas) {
            st = ST_CAS_MISMATCH;
        } else if (!charge(s, (int64_t)n - (int64_t)e->value.len)) {
            st = ST_INTERNAL_FAILURE; /* past the store's cap */
            *capped = 1;
        } else {
            pw_buf old = e->value;
            e->value = fresh;
            fresh = old;
            e->cas = next_cas();
        }
    } else if (atomic_fetch_add(&s->entries, 1) >= MAX_ENTRIES) {
        atomic_fetch_sub(&s->entries, 1);
        st = ST_INTERNAL_FAILURE; /* past the store's key count */
        *capped = 1;
    } else if (!charge(s, (int64_t)(kl + n))) {
        atomic_fetch_sub(&s->entries, 1);
        st = ST_INTERNAL_FAILURE;
        *capped = 1;
    } else if ((created = calloc(1, sizeof *created)) && !buf_set(&created->key, k, kl)) {
        /* A missing key never mismatches (Envoy). */
        created->value = fresh;
        fresh = (pw_buf){0};
        created->cas = next_cas();
        created->expires_ns = shared_deadline(atomic_load(&s->default_ttl_ms));
        if (created->expires_ns) {
            sh->n_ttl++;
            atomic_fetch_add(&s->n_ttl, 1);
        }
        *pe = created;
        if (++sh->n > sh->nbuckets) grow(sh);
        created = NULL;
    } else {
        charge(s, -(int64_t)(kl + n));
        atomic_fetch_sub(&s->entries, 1);
        st = ST_INTERNAL_FAILURE;
    }
    pthread_mutex_unlock(l);
    if (created) {
        buf_free(&created->key);
        free(created);
    }
    buf_free(&fresh);
    return st;
}

int shared_del(pw_space *s, const uint8_t *k, size_t kl, uint32_t cas) {
    if (!s) return ST_NOT_FOUND;
    uint64_t h = hash(k, kl), now = 0;
    shard *sh = &s->shards[h % SHARDS];
    pthread_mutex_t *l = lock_of(sh);
    pthread_mutex_lock(l);
    entry **pe = live(s, sh, h, k, kl, &now);
    int st = !*pe ? ST_NOT_FOUND : cas && cas != (*pe)->cas ? ST_CAS_MISMATCH : ST_OK;
    if (st == ST_OK) unlink_entry(s, sh, pe);
    pthread_mutex_unlock(l);
    return st;
}

int shared_expire(pw_space *s, const uint8_t *k, size_t kl, uint64_t ttl_ms) {
    if (!s) return ST_NOT_FOUND;
    uint64_t h = hash(k, kl), now = 0;
    shard *sh = &s->shards[h % SHARDS];
    pthread_mutex_t *l = lock_of(sh);
    pthread_mutex_lock(l);
    entry *e = *live(s, sh, h, k, kl, &now);
    if (e) {
        if (e->expires_ns) {
            sh->n_ttl--;
            atomic_fetch_sub(&s->n_ttl, 1);
        }
        e->expires_ns = shared_deadline(ttl_ms);
        if (e->expires_ns) {
            sh->n_ttl++;
            atomic_fetch_add(&s->n_ttl, 1);
        }
    }
    pthread_mutex_unlock(l);
    return e ? ST_OK : ST_NOT_FOUND;
}
