/* The shared-memory backend (backend.h): one machine, many processes.
 *
 * A named POSIX shared-memory segment of fixed size holds everything: shared data, queues,
 * the cas counter and an allocator, all addressed by offsets from the segment's start
 * (never pointers: each process maps it elsewhere). Every process that opens the same
 * name sees the same state.
 *
 * Layout (offsets from the start; computed from the size by layout(), the same in every
 * process, and checked against the header when a process attaches):
 *   header    magic, version, size, a random nonce, ready flag, cas counter, the bump
 *             pointer and the free lists of the allocator, counters, the queue table's lock
 *   shards    SHM_SHARDS × (robust mutex, bucket count); key → entry index, sharded by hash
 *   buckets   SHM_SHARDS × nbuckets offsets (0: empty), one chain of entries per bucket
 *   scopes    nscopes × (scope hash, bytes held): the per-scope byte cap
 *   queues    nqueues × queue records (robust mutex, scope + name, head/tail of a FIFO
 *             list of items, depth, owner, pending notifications)
 *   data      blocks of 64 << class bytes: an 8-byte header (magic, class), then the entry
 *             or queue item
 *
 * Allocation is lock-free: a free list per size class (a Treiber stack whose head carries
 * a 24-bit tag against ABA; offsets are below 2^40) and, when a list is empty, an atomic
 * bump pointer. Memory freed in one class is reused by that class only. When nothing
 * fits, the operation answers INTERNAL_FAILURE and counts it (`unavailable`, and
 * `full` in the segment): the state is unchanged.
 *
 * Locking: one process-shared robust mutex per shard (processes on different keys do not
 * wait for each other) and per queue, one for the queue table (registration). Locks are
 * taken with a 1 s timeout (a lock held by a wedged or buggy process answers
 * INTERNAL_FAILURE rather than blocking a worker). A process that dies holding one leaves
 * it EOWNERDEAD to the next locker, which makes the structure consistent, then calls
 * pthread_mutex_consistent. Updates are designed so a half-done one is harmless or
 * detectable:
 *   - an entry is never changed in place (but its expiry: one 8-byte store); a write builds a
 *     whole new entry and publishes it with one 8-byte store (the bucket head or the
 *     predecessor's next), then frees the old one; a delete is one store. A death between
 *     the steps leaks one block at most.
 *   - a queue's items are a list from head; a death mid-append or mid-pop can leave tail,
 *     depth or bytes stale, and the repair recomputes them by walking from head.
 *   - per-scope byte counts are updated next to the structure; after a death under a shard
 *     lock they are recounted from the entries (all shards locked in order).
 *   - the allocator's steps are single compare-and-swaps.
 * Everything read from the segment is checked before use (another process may be buggy):
 * offsets in range and aligned, block headers, lengths within their block, chains no
 * longer than the segment could hold. A bad link is cut (its entries are lost, counted in
 * `corrupt`), never followed.
 *
 * Queue notifications: every process attached to a segment binds an abstract unix datagram
 * socket named from the segment's nonce, its pid and an instance number, and runs one small
 * thread that receives wake-ups. A queue's owner is (pid, instance, registration number);
 * the registration number names, in that process, the dispatcher, VM and root to notify.
 * Each enqueue adds one to the queue's `pending` count; the enqueue that takes it from 0
 * to 1 wakes the owner (directly when the owner is in the same process, else with a
 * datagram). The owner's side takes the whole count with one exchange and posts that many
 * on_queue_ready to the owner's dispatcher: exactly one per item. The receiver also looks
 * at the queues its process owns every 100 ms, so a lost datagram only delays. A dead
 * owner (connection refused) loses nothing: the items and the count stay, and the next
 * process to register the queue takes them. */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"

#define SHM_MAGIC 0x314d485357595050ull /* "PPYWSHM1" */
#define SHM_VERSION 2u /* 2: keys hashed with SipHash-1-3 keyed by the nonce */
#define SHM_SHARDS 64
#define SHM_QNAME 256 /* scope + queue name, bytes */
#define SHM_CLASSES 34 /* blocks of 64 B .. 512 GiB */
#define BLK_MAGIC 0x4b4c4257u
#define OFF_MASK ((1ull << 40) - 1)
#define TAG_ONE (1ull << 40)
#define SHM_QUEUE_MAX_ITEMS (1u << 20)
#define LOCK_TIMEOUT_S 1

typedef struct shm_header {
    uint64_t magic;
    uint32_t version, hdr_size;
    uint64_t size;
    uint64_t nonce;
    uint64_t nbuckets; /* per shard */
    _Atomic uint32_t ready;
    _Atomic uint32_t cas;
    _Atomic uint64_t bump;
    _Atomic uint64_t free[SHM_CLASSES]; /* tag << 40 | offset of the first free block */
    _Atomic uint64_t full, corrupt, recovered;
    pthread_mutex_t qtable;
} shm_header;

typedef struct shm_shard {
    pthread_mutex_t lock;
    uint64_t sweep; /* the next bucket the write-time sweep looks at */
} __attribute__((aligned(64))) shm_shard;

typedef struct shm_scope {
    _Atomic uint64_t hash; /* 0: free */
    _Atomic int64_t bytes;
} shm_scope;

typedef struct shm_queue {
    pthread_mutex_t lock;
    _Atomic uint32_t used;
    uint32_t name_len, scope_len;
    uint64_t hash;
    _Atomic uint64_t owner; /* pid << 32 | instance << 24 | registration; 0: none */
    _Atomic uint64_t pending; /* items not yet notified */
    uint64_t head, tail;    /* offsets of item payloads */
    _Atomic int64_t depth;
    int64_t bytes;
    uint8_t name[SHM_QNAME]; /* scope, then the queue's name */
} shm_queue;

/* An entry's payload; scope, key and value bytes follow. */
typedef struct shm_entry {
    _Atomic uint64_t next;
    uint64_t hash, scope_hash, expires_ns;
    uint32_t cas, scope_len, key_len, value_len;
} shm_entry;

/* A queue item's payload; its bytes follow. */
typedef struct shm_item {
    uint64_t next, len;
} shm_item;

/* Where things are, from the size: computed in each process, never read from the segment. */
typedef struct layout {
    uint64_t shards, buckets, scopes, queues, data, nbuckets;
    uint32_t nscopes, nqueues; /* 1,024 / 64 per MiB up to 16,384 / 4,096 */
} layout;

/* One local owner: registration number → who to notify in this process. */
typedef struct local_owner {
    uint32_t reg, qid;
    pw_queue_owner o;
} local_owner;

typedef struct shm_backend {
    pw_backend head;
    uint8_t *base;
    uint64_t size;
    layout L;
    shm_header *h;
    uint32_t pid, inst;
    int sock;
    pthread_t rx;
    int rx_started;
    _Atomic int stopping;
    _Atomic int need_recount;
    _Atomic uint64_t swept_ns; /* this process's last full sweep (shm_set) */
    pthread_mutex_t owners_lock; /* guards owners (this process's threads) */
    local_owner *owners;
    size_t n_owners, cap_owners;
    uint32_t next_reg;
    char name[256];
} shm_backend;

/* Instances of shm backends opened in this process (any thread, atomically): part of the
 * owner id and the socket name, so one process may attach a segment twice. */
static _Atomic uint32_t instances;

/* ---- the layout ------------------------------------------------------------------------------- */
static uint64_t up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

static int compute_layout(uint64_t size, layout *L) {
    uint64_t nb = 64;
    while (nb < 65536 && nb * SHM_SHARDS * 512 < size) nb *= 2;
    L->nbuckets = nb;
    uint64_t mib = size >> 20;
    L->nscopes = (uint32_t)(mib * 1024 < 16384 ? mib * 1024 : 16384);
    L->nqueues = (uint32_t)(mib * 64 < 4096 ? mib * 64 : 4096);
    L->shards = up(sizeof(shm_header), 64);
    L->buckets = up(L->shards + SHM_SHARDS * sizeof(shm_shard), 64);
    L->scopes = up(L->buckets + SHM_SHARDS * nb * 8, 64);
    L->queues = up(L->scopes + (uint64_t)L->nscopes * sizeof(shm_scope), 64);
    L->data = up(L->queues + (uint64_t)L->nqueues * sizeof(shm_queue), 4096);
    return L->data + (64 << 10) <= size ? 0 : -1;
}

static shm_shard *shard_at(shm_backend *m, uint32_t i) {
    return (shm_shard *)(m->base + m->L.shards) + i;
}
static _Atomic uint64_t *bucket_at(shm_backend *m, uint32_t shard, uint64_t i) {
    return (_Atomic uint64_t *)(m->base + m->L.buckets) + shard * m->L.nbuckets + i;
}
static shm_scope *scope_at(shm_backend *m, uint32_t i) {
    return (shm_scope *)(m->base + m->L.scopes) + i;
}
static shm_queue *queue_at(shm_backend *m, uint32_t i) {
    return (shm_queue *)(m->base + m->L.queues) + i;
}

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static uint64_t scope_hash(const pw_buf *scope) {
    uint64_t h = fnv(1469598103934665603ull ^ 0x5c, scope->p, scope->len);
    return (h ^ (h >> 31)) | 1;
}

/* A key's hash: keyed (siphash.c) by the segment's random nonce, which every process
 * mapping it shares and no guest sees, and by the key's scope (the host's choice, so FNV
 * is enough there): a guest cannot choose keys that pile up in one bucket. */
static uint64_t key_hash(shm_backend *m, const pw_buf *scope, const uint8_t *k, size_t kl) {
    uint64_t n = m->h->nonce;
    return pw_hash_keyed(n ^ scope_hash(scope), n * 0x9e3779b97f4a7c15ull + 1, k, kl);
}

/* ---- blocks ------------------------------------------------------------------------------------- */
static uint64_t class_size(uint32_t c) { return 64ull << c; }

/* The payload at `off` if it is a plausible block's payload of at least `need` bytes. */
static uint8_t *payload(shm_backend *m, uint64_t off, uint64_t need, uint64_t *cap) {
    if (off < m->L.data + 8 || off >= m->size || (off & 7)) return NULL;
    uint32_t hdr[2];
    memcpy(hdr, m->base + off - 8, 8);
    if (hdr[0] != BLK_MAGIC || hdr[1] >= SHM_CLASSES) return NULL;
    uint64_t c = class_size(hdr[1]) - 8;
    if (c > m->size - off || need > c) return NULL;
    if (cap) *cap = c;
    return m->base + off;
}

static void blk_free(shm_backend *m, uint64_t off) {
    uint64_t cap;
    if (!payload(m, off, 8, &cap)) return;
    uint32_t c;
    memcpy(&c, m->base + off - 4, 4);
    _Atomic uint64_t *link = (_Atomic uint64_t *)(m->base + off);
    uint64_t h = atomic_load(&m->h->free[c]), nh;
    do {
        atomic_store_explicit(link, h & OFF_MASK, memory_order_relaxed);
        nh = ((h & ~OFF_MASK) + TAG_ONE) | (off - 8);
    } while (!atomic_compare_exchange_weak(&m->h->free[c], &h, nh));
}

/* A payload of at least n bytes, or 0 when the segment has no room (counted). */
static uint64_t blk_alloc(shm_backend *m, uint64_t n) {
    uint32_t c = 0;
    while (c < SHM_CLASSES && class_size(c) < n + 8) c++;
    if (c == SHM_CLASSES) goto full;
    for (;;) {
        uint64_t h = atomic_load(&m->h->free[c]);
        uint64_t blk = h & OFF_MASK;
        if (!blk) break;
        if (!payload(m, blk + 8, n, NULL)) { /* a corrupt list: dropped */
            if (atomic_compare_exchange_strong(&m->h->free[c], &h, (h & ~OFF_MASK) + TAG_ONE))
                atomic_fetch_add(&m->h->corrupt, 1);
            continue;
        }
        uint64_t next = atomic_load((_Atomic uint64_t *)(m->base + blk + 8)) & OFF_MASK;
        if (atomic_compare_exchange_weak(&m->h->free[c], &h, ((h & ~OFF_MASK) + TAG_ONE) | next))
            return blk + 8;
    }
    uint64_t cur = atomic_load(&m->h->bump), sz = class_size(c);
    do {
        if (cur < m->L.data || cur > m->size || sz > m->size - cur) goto full;
    } while (!atomic_compare_exchange_weak(&m->h->bump, &cur, cur + sz));
    uint32_t hdr[2] = {BLK_MAGIC, c};
    memcpy(m->base + cur, hdr, 8);
    return cur + 8;
full:
    atomic_fetch_add(&m->h->full, 1);
    atomic_fetch_add(&m->head.unavailable, 1);
    return 0;
}

/* ---- entries -------------------------------------------------------------------------------- */
/* Reads the entry at off into *e (a copy: another process cannot change it under us) and
 * returns its bytes (scope, key, value), or NULL if it is not a valid entry. */
static const uint8_t *entry_read(shm_backend *m, uint64_t off, shm_entry *e) {
    uint64_t cap;
    uint8_t *p = payload(m, off, sizeof(shm_entry), &cap);
    if (!p) return NULL;
    memcpy(e, p, sizeof *e);
    uint64_t n = (uint64_t)e->scope_len + e->key_len + e->value_len;
    if (n > cap - sizeof(shm_entry)) return NULL;
    return p + sizeof(shm_entry);
}

static uint64_t now_ns(void) { return shared_now_ns(); }

/* ---- locks -------------------------------------------------------------------------------------- */
static void repair_shard(shm_backend *m, uint32_t s);
static void repair_queue(shm_backend *m, shm_queue *q);

static int init_mutex(pthread_mutex_t *mu) {
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a)) return -1;
    int rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) ||
             pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) || pthread_mutex_init(mu, &a);
    pthread_mutexattr_destroy(&a);
    return rc ? -1 : 0;
}

enum { LK_SHARD, LK_QUEUE, LK_QTABLE };

/* The type word of a mutex init_mutex made (glibc keeps it in the mutex, and trusts it:
 * a garbage one can make the C library abort). Set once, before any backend is used. */
static int mutex_kind_ok(const pthread_mutex_t *mu) {
#ifdef __GLIBC__
    static _Atomic int want = -1; /* any thread; the same value every time */
    int w = atomic_load(&want);
    if (w == -1) {
        pthread_mutex_t t;
        if (init_mutex(&t)) return 0;
        w = t.__data.__kind;
        pthread_mutex_destroy(&t);
        atomic_store(&want, w);
    }
    return *(const volatile int *)&mu->__data.__kind == w;
#else
    (void)mu;
    return 1;
#endif
}

/* 0 with the lock held (made consistent if its holder died), -1 when it cannot be had
 * within LOCK_TIMEOUT_S, or the mutex is not one we made (counted). */
static int lock(shm_backend *m, pthread_mutex_t *mu, int kind, void *what) {
    if (!mutex_kind_ok(mu)) {
        atomic_fetch_add(&m->h->corrupt, 1);
        atomic_fetch_add(&m->head.unavailable, 1);
        return -1;
    }
    int rc = pthread_mutex_trylock(mu);
    if (rc == EBUSY) {
        lock_yield(); /* this thread may block: not with the embedding's lock */
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_sec += LOCK_TIMEOUT_S;
        rc = pthread_mutex_timedlock(mu, &t);
    }
    if (rc == EOWNERDEAD) {
        atomic_fetch_add(&m->h->recovered, 1);
        if (kind == LK_SHARD) {
            repair_shard(m, (uint32_t)(uintptr_t)what);
            atomic_store(&m->need_recount, 1);
        } else if (kind == LK_QUEUE) {
            repair_queue(m, what);
        } /* the queue table: a record half-written has used == 0, i.e. free */
        rc = pthread_mutex_consistent(mu);
    }
    if (rc) {
        atomic_fetch_add(&m->head.unavailable, 1);
        return -1;
    }
    return 0;
}

static void recount(shm_backend *m);

static void unlock(shm_backend *m, pthread_mutex_t *mu) {
    pthread_mutex_unlock(mu);
    /* A load first: an exchange on every unlock would bounce the line between threads. */
    if (atomic_load_explicit(&m->need_recount, memory_order_relaxed) &&
        atomic_exchange(&m->need_recount, 0))
        recount(m);
}

/* ---- scopes (the per-scope byte cap) ---------------------------------------------------------- */
static shm_scope *scope_find(shm_backend *m, uint64_t sh, int create) {
    for (uint32_t i = 0; i < m->L.nscopes; i++) {
        shm_scope *s = scope_at(m, (uint32_t)((sh + i) % m->L.nscopes));
        uint64_t cur = atomic_load(&s->hash);
        if (cur == sh) return s;
        if (!cur) {
            if (!create) return NULL;
            if (atomic_compare_exchange_strong(&s->hash, &cur, sh) || cur == sh) return s;
        }
    }
    return NULL;
}

static int charge(shm_backend *m, shm_scope *s, int64_t delta) {
    if (!s) return delta <= 0;
    if (delta <= 0) {
        atomic_fetch_add(&s->bytes, delta);
        return 1;
    }
    int64_t max = m->head.max_bytes && m->head.max_bytes < INT64_MAX ? (int64_t)m->head.max_bytes
                                                                     : INT64_MAX;
    if (atomic_fetch_add(&s->bytes, delta) + delta > max) {
        atomic_fetch_sub(&s->bytes, delta);
        return 0;
    }
    return 1;
}

/* ---- the index ------------------------------------------------------------------------------ */
/* Longest chain worth following: more links than the segment has blocks is a loop. */
static uint64_t max_chain(shm_backend *m) { return (m->size - m->L.data) / 64 + 1; }

/* Unlinks the entry at *link (whose copy is e) and frees it, giving its bytes back. */
static void unlink_entry(shm_backend *m, _Atomic uint64_t *link, uint64_t off, const shm_entry *e) {
    atomic_store(link, e->next);
    charge(m, scope_find(m, e->scope_hash, 0), -(int64_t)(e->key_len + e->value_len));
    blk_free(m, off);
}

/* Under the shard's lock: finds (scope, key) in its bucket, dropping expired entries and
 * cutting bad links on the way. Returns the link that points at it (or NULL), its offset
 * and a copy of it. */
static _Atomic uint64_t *find(shm_backend *m, uint32_t s, uint64_t h, const pw_buf *scope,
                              const uint8_t *k, size_t kl, uint64_t *off_out, shm_entry *e,
                              const uint8_t **bytes) {
    _Atomic uint64_t *link = bucket_at(m, s, (h / SHM_SHARDS) & (m->L.nbuckets - 1));
    uint64_t now = 0, steps = max_chain(m);
    for (uint64_t off; (off = atomic_load(link)) != 0;) {
        const uint8_t *p = steps-- ? entry_read(m, off, e) : NULL;
        if (!p) { /* corrupt: cut here */
            atomic_store(link, 0);
            atomic_fetch_add(&m->h->corrupt, 1);
            return NULL;
        }
        if (e->expires_ns) {
            if (!now) now = now_ns();
            if (e->expires_ns <= now) {
                unlink_entry(m, link, off, e);
                continue;
            }
        }
        if (e->hash == h && e->scope_len == scope->len && e->key_len == kl &&
            !memcmp(p, scope->p, scope->len) && !memcmp(p + scope->len, k, kl)) {
            *off_out = off;
            *bytes = p;
            return link;
        }
        link = (_Atomic uint64_t *)(m->base + off); /* next is the payload's first field */
    }
    return NULL;
}

/* Under the shard's lock: drops expired entries of a few buckets. */
static void sweep(shm_backend *m, uint32_t s) {
    shm_shard *sh = shard_at(m, s);
    uint64_t now = now_ns();
    for (int i = 0; i < 4; i++) {
        _Atomic uint64_t *link = bucket_at(m, s, sh->sweep++ & (m->L.nbuckets - 1));
        uint64_t steps = max_chain(m);
        shm_entry e;
        for (uint64_t off; (off = atomic_load(link)) != 0;) {
            if (!steps-- || !entry_read(m, off, &e)) {
                atomic_store(link, 0);
                atomic_fetch_add(&m->h->corrupt, 1);
                break;
            }
            if (e.expires_ns && e.expires_ns <= now) {
                unlink_entry(m, link, off, &e);
                continue;
            }
            link = (_Atomic uint64_t *)(m->base + off);
        }
    }
}

/* After a death under the shard's lock: its chains are walked and bad links cut (every
 * update publishes with one store, so a chain is never half-linked; this guards against
 * a holder that was writing garbage). */
static void repair_shard(shm_backend *m, uint32_t s) {
    for (uint64_t b = 0; b < m->L.nbuckets; b++) {
        _Atomic uint64_t *link = bucket_at(m, s, b);
        uint64_t steps = max_chain(m);
        shm_entry e;
        for (uint64_t off; (off = atomic_load(link)) != 0;) {
            if (!steps-- || !entry_read(m, off, &e) || e.hash % SHM_SHARDS != s) {
                atomic_store(link, 0);
                atomic_fetch_add(&m->h->corrupt, 1);
                break;
            }
            link = (_Atomic uint64_t *)(m->base + off);
        }
    }
}

/* The per-scope byte counts from the entries, with every shard locked (in order, so two
 * recounts or a recount and an operation never deadlock). */
static void recount(shm_backend *m) {
    uint32_t held = 0;
    while (held < SHM_SHARDS && lock(m, &shard_at(m, held)->lock, LK_SHARD,
                                     (void *)(uintptr_t)held) == 0)
        held++;
    if (held == SHM_SHARDS) {
        for (uint32_t i = 0; i < m->L.nscopes; i++) atomic_store(&scope_at(m, i)->bytes, 0);
        for (uint32_t s = 0; s < SHM_SHARDS; s++)
            for (uint64_t b = 0; b < m->L.nbuckets; b++) {
                uint64_t off = atomic_load(bucket_at(m, s, b)), steps = max_chain(m);
                shm_entry e;
                while (off && steps-- && entry_read(m, off, &e)) {
                    shm_scope *sc = scope_find(m, e.scope_hash, 1);
                    if (sc) atomic_fetch_add(&sc->bytes, (int64_t)(e.key_len + e.value_len));
                    off = e.next;
                }
            }
    } else {
        atomic_store(&m->need_recount, 1); /* a shard's lock was not had: the next unlock tries */
    }
    while (held) pthread_mutex_unlock(&shard_at(m, --held)->lock);
}

/* ---- shared data ------------------------------------------------------------------------------ */
/* A key's place: its shard, locked by lock_key, and what find() saw there. */
typedef struct {
    shm_shard *sh;
    _Atomic uint64_t *link; /* the link to the key's entry; NULL: no such key */
    uint64_t off;           /* the entry's offset */
    shm_entry e;            /* its header, validated */
    const uint8_t *p;       /* its scope, key and value */
} shm_at;

/* Locks the key's shard and looks the key up in it; -1 if the lock could not be had. */
static int lock_key(shm_backend *m, const pw_buf *scope, const uint8_t *k, size_t kl, shm_at *a) {
    uint64_t h = key_hash(m, scope, k, kl);
    uint32_t s = (uint32_t)(h % SHM_SHARDS);
    a->sh = shard_at(m, s);
    if (lock(m, &a->sh->lock, LK_SHARD, (void *)(uintptr_t)s)) return -1;
    a->link = find(m, s, h, scope, k, kl, &a->off, &a->e, &a->p);
    return 0;
}

static int shm_get(pw_backend *b, const pw_buf *scope, const uint8_t *k, size_t kl, pw_buf *out,
                   uint32_t *cas) {
    shm_backend *m = (shm_backend *)b;
    shm_at a;
    if (lock_key(m, scope, k, kl, &a)) return ST_INTERNAL_FAILURE;
    int st = ST_NOT_FOUND;
    if (a.link) {
        st = buf_set(out, a.p + a.e.scope_len + a.e.key_len, a.e.value_len) ? ST_INTERNAL_FAILURE : ST_OK;
        *cas = a.e.cas;
    }
    unlock(m, &a.sh->lock);
    return st;
}

static uint32_t next_cas(shm_backend *m) {
    uint32_t v;
    do v = atomic_fetch_add(&m->h->cas, 1) + 1;
    while (v == 0);
    return v;
}

static int set_once(shm_backend *m, const pw_buf *scope, const uint8_t *k, size_t kl,
                    const uint8_t *v, size_t n, uint32_t cas, int *capped);

/* A write the cap refused: expired keys of every shard give their bytes back (at most once
 * per 10 ms per process, so a guest hammering a full scope does not make each write a
 * scan), then the write is tried once more. */
static int shm_set(pw_backend *b, const pw_buf *scope, const uint8_t *k, size_t kl,
                   const uint8_t *v, size_t n, uint32_t cas) {
    shm_backend *m = (shm_backend *)b;
    int capped = 0;
    int st = set_once(m, scope, k, kl, v, n, cas, &capped);
    uint64_t now = now_ns(), last = atomic_load(&m->swept_ns);
    if (capped && (!last || now - last > 10000000ull) &&
        atomic_compare_exchange_strong(&m->swept_ns, &last, now)) {
        for (uint32_t i = 0; i < SHM_SHARDS; i++) {
            shm_shard *sh = shard_at(m, i);
            if (lock(m, &sh->lock, LK_SHARD, (void *)(uintptr_t)i)) continue;
            for (uint64_t j = 0; j < m->L.nbuckets; j += 4) sweep(m, i);
            unlock(m, &sh->lock);
        }
        st = set_once(m, scope, k, kl, v, n, cas, &capped);
    }
    return st;
}

static int set_once(shm_backend *m, const pw_buf *scope, const uint8_t *k, size_t kl,
                    const uint8_t *v, size_t n, uint32_t cas, int *capped) {
    if (scope->len > UINT32_MAX || kl > UINT32_MAX || n > UINT32_MAX) return ST_INTERNAL_FAILURE;
    uint64_t h = key_hash(m, scope, k, kl), sch = scope_hash(scope), off = 0;
    uint32_t s = (uint32_t)(h % SHM_SHARDS);
    shm_shard *sh = shard_at(m, s);
    if (lock(m, &sh->lock, LK_SHARD, (void *)(uintptr_t)s)) return ST_INTERNAL_FAILURE;
    sweep(m, s);
    shm_entry e;
    const uint8_t *p;
    _Atomic uint64_t *link = find(m, s, h, scope, k, kl, &off, &e, &p);
    int st = ST_OK;
    shm_scope *sc = scope_find(m, sch, 1);
    int64_t delta = link ? (int64_t)n - (int64_t)e.value_len : (int64_t)(kl + n);
    uint64_t fresh = 0;
    if (link && cas && cas != e.cas) {
        st = ST_CAS_MISMATCH;
    } else if (!sc || !charge(m, sc, delta)) {
        st = ST_INTERNAL_FAILURE; /* past the scope's cap (or the scope table is full) */
        *capped = sc != NULL;
    } else if (!(fresh = blk_alloc(m, sizeof(shm_entry) + scope->len + kl + n))) {
        charge(m, sc, -delta);
        st = ST_INTERNAL_FAILURE; /* the segment is full */
    } else {
        /* Build the whole new entry, then publish it with one store. */
        shm_entry ne = {.hash = h, .scope_hash = sch, .cas = next_cas(m),
                        .scope_len = (uint32_t)scope->len, .key_len = (uint32_t)kl,
                        .value_len = (uint32_t)n};
        ne.expires_ns = link ? e.expires_ns : shared_deadline(m->head.default_ttl_ms);
        uint8_t *dst = m->base + fresh;
        atomic_store_explicit(&ne.next, link ? e.next : 0, memory_order_relaxed);
        memcpy(dst, &ne, sizeof ne);
        memcpy(dst + sizeof ne, scope->p, scope->len);
        if (kl) memcpy(dst + sizeof ne + scope->len, k, kl);
        if (n) memcpy(dst + sizeof ne + scope->len + kl, v, n);
        if (link) {
            atomic_store(link, fresh); /* replaces the old entry in its chain */
            blk_free(m, off);
        } else {
            _Atomic uint64_t *bucket = bucket_at(m, s, (h / SHM_SHARDS) & (m->L.nbuckets - 1));
            atomic_store((_Atomic uint64_t *)dst, atomic_load(bucket));
            atomic_store(bucket, fresh);
        }
    }
    unlock(m, &sh->lock);
    return st;
}

static int shm_del(pw_backend *b, const pw_buf *scope, const uint8_t *k, size_t kl, uint32_t cas) {
    shm_backend *m = (shm_backend *)b;
    shm_at a;
    if (lock_key(m, scope, k, kl, &a)) return ST_INTERNAL_FAILURE;
    int st = !a.link ? ST_NOT_FOUND : cas && cas != a.e.cas ? ST_CAS_MISMATCH : ST_OK;
    if (st == ST_OK) unlink_entry(m, a.link, a.off, &a.e);
    unlock(m, &a.sh->lock);
    return st;
}

static int shm_expire(pw_backend *b, const pw_buf *scope, const uint8_t *k, size_t kl,
                      uint64_t ttl_ms) {
    shm_backend *m = (shm_backend *)b;
    shm_at a;
    if (lock_key(m, scope, k, kl, &a)) return ST_INTERNAL_FAILURE;
    if (a.link) /* one aligned 8-byte field of an entry nobody else changes while we hold the lock */
        atomic_store((_Atomic uint64_t *)(m->base + a.off + offsetof(shm_entry, expires_ns)),
                     shared_deadline(ttl_ms));
    unlock(m, &a.sh->lock);
    return a.link ? ST_OK : ST_NOT_FOUND;
}

/* ---- queues --------------------------------------------------------------------------------- */
static shm_queue *queue_of(shm_backend *m, uint32_t id) {
    if (!id || id > m->L.nqueues) return NULL;
    shm_queue *q = queue_at(m, id - 1);
    return atomic_load_explicit(&q->used, memory_order_acquire) == 1 &&
                   q->name_len <= SHM_QNAME && q->scope_len <= q->name_len
               ? q
               : NULL;
}

static int queue_named(const shm_queue *q, const pw_buf *scope, const uint8_t *name, size_t nl) {
    return q->scope_len == scope->len && q->name_len == scope->len + nl &&
           !memcmp(q->name, scope->p, scope->len) && !memcmp(q->name + scope->len, name, nl);
}

static uint32_t queue_find(shm_backend *m, const pw_buf *scope, const uint8_t *name, size_t nl,
                           uint64_t h) {
    for (uint32_t i = 1; i <= m->L.nqueues; i++) {
        shm_queue *q = queue_of(m, i);
        if (q && q->hash == h && queue_named(q, scope, name, nl)) return i;
    }
    return 0;
}

/* After a death under a queue's lock: tail, depth and bytes from a walk from head. */
static void repair_queue(shm_backend *m, shm_queue *q) {
    uint64_t off = q->head, last = 0, steps = max_chain(m);
    int64_t depth = 0, bytes = 0;
    uint64_t *link = &q->head;
    while (off) {
        uint64_t cap;
        uint8_t *p = steps-- ? payload(m, off, sizeof(shm_item), &cap) : NULL;
        shm_item it;
        if (p) memcpy(&it, p, sizeof it);
        if (!p || it.len > cap - sizeof it) {
            *link = 0; /* cut at the bad link */
            atomic_fetch_add(&m->h->corrupt, 1);
            break;
        }
        depth++;
        bytes += (int64_t)it.len;
        last = off;
        link = &((shm_item *)p)->next;
        off = it.next;
    }
    q->tail = last;
    atomic_store(&q->depth, depth);
    q->bytes = bytes;
}

static void rx_wake(shm_backend *m, uint64_t owner);

/* This process's owner of registration `reg`, if still known. */
static int local_owner_of(shm_backend *m, uint32_t reg, uint32_t qid, pw_queue_owner *o) {
    int found = 0;
    pthread_mutex_lock(&m->owners_lock);
    for (size_t i = 0; i < m->n_owners && !found; i++)
        if (m->owners[i].reg == reg && m->owners[i].qid == qid) {
            *o = m->owners[i].o;
            found = 1;
        }
    pthread_mutex_unlock(&m->owners_lock);
    return found;
}

static uint64_t my_owner_bits(shm_backend *m) {
    return (uint64_t)m->pid << 32 | (uint64_t)(m->inst & 0xff) << 24;
}

/* The queue's pending notifications go to its owner, if the owner is in this process:
 * takes the whole count and posts that many on_queue_ready (exactly one per item). When
 * the owner is elsewhere, wakes it. */
static void deliver(shm_backend *m, uint32_t qid) {
    shm_queue *q = queue_of(m, qid);
    if (!q || !atomic_load(&q->pending)) return;
    uint64_t owner = atomic_load(&q->owner);
    if (!owner) return; /* kept for whoever registers next */
    if ((owner & ~0xffffffull) != my_owner_bits(m)) {
        rx_wake(m, owner);
        return;
    }
    pw_queue_owner o;
    if (!local_owner_of(m, (uint32_t)(owner & 0xffffff), qid, &o)) return;
    uint64_t n = atomic_exchange(&q->pending, 0);
    uint32_t gid = (m->head.slot << 24) | qid;
    for (uint64_t i = 0; i < n; i++)
        if (dispatcher_post(o.d, o.vm_key, o.root, gid)) {
            /* Its dispatcher is closed (its host went): the rest wait for the next owner. */
            atomic_fetch_add(&q->pending, n - i);
            break;
        }
}

static int shm_q_register(pw_backend *b, const pw_buf *scope, const uint8_t *name, size_t nl,
                          const pw_queue_owner *owner, int may_create, int *created, uint32_t *id) {
    shm_backend *m = (shm_backend *)b;
    *created = 0;
    *id = 0;
    if (scope->len + nl > SHM_QNAME) return ST_INTERNAL_FAILURE; /* documented limit */
    uint64_t h = fnv(fnv(1469598103934665603ull, scope->p, scope->len) ^ 0xff, name, nl);
    /* This process's registration number for that owner (reused for the same one). */
    if (lock(m, &m->h->qtable, LK_QTABLE, NULL)) return ST_INTERNAL_FAILURE;
    uint32_t qid = queue_find(m, scope, name, nl, h);
    if (!qid && may_create) {
        for (uint32_t i = 1; i <= m->L.nqueues && !qid; i++) {
            shm_queue *q = queue_at(m, i - 1);
            if (atomic_load(&q->used) == 1) continue;
            /* A record is written whole, then marked used (a death before that leaves it free). */
            if (init_mutex(&q->lock)) break;
            q->scope_len = (uint32_t)scope->len;
            q->name_len = (uint32_t)(scope->len + nl);
            memcpy(q->name, scope->p, scope->len);
            if (nl) memcpy(q->name + scope->len, name, nl);
            q->hash = h;
            q->head = q->tail = 0;
            q->bytes = 0;
            atomic_store(&q->depth, 0);
            atomic_store(&q->owner, 0);
            atomic_store(&q->pending, 0);
            atomic_store_explicit(&q->used, 1, memory_order_release);
            qid = i;
            *created = 1;
        }
    }
    int st = qid ? ST_OK : ST_INTERNAL_FAILURE;
    if (qid) {
        pthread_mutex_lock(&m->owners_lock);
        /* One entry per queue: the owner is the last registrant, so an earlier one of this
         * process is dead and its entry is taken over (the table stays as small as the
         * queue table, whatever the reloads). A registration's number only has to differ
         * from that queue's previous one here, so the counter wraps. */
        uint32_t reg = 0;
        size_t at = m->n_owners;
        for (size_t i = 0; i < m->n_owners; i++) {
            local_owner *lo = &m->owners[i];
            if (lo->qid != qid) continue;
            at = i;
            if (lo->o.d == owner->d && lo->o.vm_key == owner->vm_key && lo->o.root == owner->root)
                reg = lo->reg;
            break;
        }
        if (!reg) {
            if (at == m->n_owners && m->n_owners == m->cap_owners) {
                size_t nc = m->cap_owners ? m->cap_owners * 2 : 16;
                local_owner *no = realloc(m->owners, nc * sizeof *no);
                if (no) {
                    m->owners = no;
                    m->cap_owners = nc;
                }
            }
            if (at < m->cap_owners) {
                m->next_reg = m->next_reg % 0xffffffu + 1; /* 1 .. 2^24 - 1 */
                reg = m->next_reg;
                m->owners[at] = (local_owner){reg, qid, *owner};
                if (at == m->n_owners) m->n_owners++;
            }
        }
        pthread_mutex_unlock(&m->owners_lock);
        if (reg) {
            atomic_store(&queue_at(m, qid - 1)->owner, my_owner_bits(m) | reg); /* the last wins */
            *id = qid;
        } else {
            st = ST_INTERNAL_FAILURE;
        }
    }
    unlock(m, &m->h->qtable);
    if (*id) deliver(m, qid); /* items a previous (maybe dead) owner left */
    return st;
}

static int shm_q_resolve(pw_backend *b, const pw_buf *scope, const uint8_t *name, size_t nl,
                         uint32_t *id) {
    shm_backend *m = (shm_backend *)b;
    if (scope->len + nl > SHM_QNAME) return ST_NOT_FOUND;
    uint64_t h = fnv(fnv(1469598103934665603ull, scope->p, scope->len) ^ 0xff, name, nl);
    *id = queue_find(m, scope, name, nl, h);
    return *id ? ST_OK : ST_NOT_FOUND;
}

static int shm_q_enqueue(pw_backend *b, uint32_t id, const uint8_t *d, size_t n) {
    shm_backend *m = (shm_backend *)b;
    shm_queue *q = queue_of(m, id);
    if (!q) return ST_NOT_FOUND;
    if (atomic_load(&q->depth) >= SHM_QUEUE_MAX_ITEMS) return ST_INTERNAL_FAILURE;
    uint64_t off = blk_alloc(m, sizeof(shm_item) + n);
    if (!off) return ST_INTERNAL_FAILURE;
    shm_item it = {0, n};
    memcpy(m->base + off, &it, sizeof it);
    if (n) memcpy(m->base + off + sizeof it, d, n);
    if (lock(m, &q->lock, LK_QUEUE, q)) {
        blk_free(m, off);
        return ST_INTERNAL_FAILURE;
    }
    uint64_t cap;
    uint8_t *tail = q->tail ? payload(m, q->tail, sizeof(shm_item), &cap) : NULL;
    if (q->tail && !tail) repair_queue(m, q); /* a bad tail: found again from head */
    tail = q->tail ? payload(m, q->tail, sizeof(shm_item), &cap) : NULL;
    if (tail)
        ((shm_item *)tail)->next = off;
    else
        q->head = off;
    q->tail = off;
    atomic_fetch_add(&q->depth, 1);
    q->bytes += (int64_t)n;
    unlock(m, &q->lock);
    if (atomic_fetch_add(&q->pending, 1) == 0) deliver(m, id);
    return ST_OK;
}

static int shm_q_dequeue(pw_backend *b, uint32_t id, pw_buf *out) {
    shm_backend *m = (shm_backend *)b;
    shm_queue *q = queue_of(m, id);
    if (!q) return ST_NOT_FOUND;
    if (lock(m, &q->lock, LK_QUEUE, q)) return ST_INTERNAL_FAILURE;
    int st = ST_EMPTY;
    uint64_t off = q->head, cap;
    if (off) {
        uint8_t *p = payload(m, off, sizeof(shm_item), &cap);
        shm_item it;
        if (p) memcpy(&it, p, sizeof it);
        if (!p || it.len > cap - sizeof it) {
            repair_queue(m, q); /* cuts the bad link */
            st = ST_INTERNAL_FAILURE;
        } else if (buf_set(out, p + sizeof it, it.len)) {
            st = ST_INTERNAL_FAILURE; /* the item stays */
        } else {
            q->head = it.next;
            if (!it.next) q->tail = 0;
            atomic_fetch_sub(&q->depth, 1);
            q->bytes -= (int64_t)it.len;
            blk_free(m, off);
            st = ST_OK;
        }
    }
    unlock(m, &q->lock);
    return st;
}

static int64_t shm_q_size(pw_backend *b, uint32_t id) {
    shm_queue *q = queue_of((shm_backend *)b, id);
    return q ? atomic_load(&q->depth) : -1;
}

/* ---- notifications ---------------------------------------------------------------------------- */
typedef struct wake_msg {
    uint32_t magic, qid;
} wake_msg;

static socklen_t sock_addr(const shm_backend *m, uint32_t pid, uint32_t inst, struct sockaddr_un *a) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "pyproxywasm-shm-%016llx-%u-%u",
                     (unsigned long long)m->h->nonce, pid, inst);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* Tells the process owning `owner` that a queue has pending items (for every queue it owns:
 * the receiver looks at all of them). A refused connection is a dead owner: nothing is lost. */
static void rx_wake(shm_backend *m, uint64_t owner) {
    struct sockaddr_un a;
    socklen_t al = sock_addr(m, (uint32_t)(owner >> 32), (uint32_t)(owner >> 24) & 0xff, &a);
    wake_msg w = {BLK_MAGIC, 0};
    sendto(m->sock, &w, sizeof w, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&a, al);
}

/* The receiver: on a wake-up, and every 100 ms, delivers what is pending on the queues this
 * process owns. */
static void *rx_main(void *arg) {
    shm_backend *m = arg;
    while (!atomic_load(&m->stopping)) {
        wake_msg w;
        ssize_t r = recv(m->sock, &w, sizeof w, 0);
        if (atomic_load(&m->stopping)) break;
        (void)r; /* any message (or the timeout) means: look */
        for (uint32_t i = 1; i <= m->L.nqueues; i++) {
            shm_queue *q = queue_of(m, i);
            if (q && atomic_load(&q->pending) &&
                (atomic_load(&q->owner) & ~0xffffffull) == my_owner_bits(m))
                deliver(m, i);
        }
    }
    return NULL;
}

/* ---- opening and closing ------------------------------------------------------------------------ */
static void shm_destroy(pw_backend *b) {
    shm_backend *m = (shm_backend *)b;
    if (m->rx_started) {
        atomic_store(&m->stopping, 1);
        shutdown(m->sock, SHUT_RDWR);
        pthread_join(m->rx, NULL);
    }
    if (m->sock >= 0) close(m->sock);
    if (m->base) munmap(m->base, m->size);
    pthread_mutex_destroy(&m->owners_lock);
    free(m->owners);
    free(m);
}

static const pw_backend_ops shm_ops = {
    .kind = "shm",
    .get = shm_get,
    .set = shm_set,
    .del = shm_del,
    .expire = shm_expire,
    .q_register = shm_q_register,
    .q_resolve = shm_q_resolve,
    .q_enqueue = shm_q_enqueue,
    .q_dequeue = shm_q_dequeue,
    .q_size = shm_q_size,
    .destroy = shm_destroy,
};

static int init_segment(shm_backend *m) {
    shm_header *h = m->h;
    h->version = SHM_VERSION;
    h->hdr_size = sizeof *h;
    h->size = m->size;
    h->nbuckets = m->L.nbuckets;
    if (getrandom(&h->nonce, sizeof h->nonce, 0) != sizeof h->nonce)
        h->nonce = now_ns() ^ ((uint64_t)getpid() << 32);
    atomic_store(&h->bump, m->L.data);
    if (init_mutex(&h->qtable)) return -1;
    for (uint32_t i = 0; i < SHM_SHARDS; i++)
        if (init_mutex(&shard_at(m, i)->lock)) return -1;
    h->magic = SHM_MAGIC;
    atomic_store_explicit(&h->ready, 1, memory_order_release);
    return 0;
}

static int check_header(shm_backend *m, char *err, size_t errlen) {
    shm_header *h = m->h;
    for (int i = 0; i < 2000 && !atomic_load_explicit(&h->ready, memory_order_acquire); i++)
        usleep(1000); /* its creator is initializing it */
    if (!atomic_load(&h->ready)) {
        snprintf(err, errlen, "the segment was never initialized (its creator died?)");
        return -1;
    }
    if (h->magic != SHM_MAGIC || h->version != SHM_VERSION || h->hdr_size != sizeof *h ||
        h->size != m->size || h->nbuckets != m->L.nbuckets) {
        snprintf(err, errlen, "not a pyproxywasm segment of this version (or corrupted)");
        return -1;
    }
    return 0;
}

pw_backend *pw_shm_open(const uint8_t *name, size_t name_len, uint64_t size, uint64_t max_bytes,
                        uint64_t default_ttl_ms, char *err, size_t errlen) {
    snprintf(err, errlen, "error");
    if (!name_len || name_len > 200) {
        snprintf(err, errlen, "a segment name is 1 to 200 bytes");
        return NULL;
    }
    for (size_t i = 0; i < name_len; i++) {
        uint8_t c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.')) {
            snprintf(err, errlen, "a segment name holds only [A-Za-z0-9_.-]");
            return NULL;
        }
    }
    if ((name_len == 1 && name[0] == '.') || (name_len == 2 && !memcmp(name, "..", 2))) {
        snprintf(err, errlen, "a segment name cannot be . or ..");
        return NULL;
    }
    if (size < (1u << 20) || size > (1ull << 40)) {
        snprintf(err, errlen, "a segment is 1 MiB to 1 TiB");
        return NULL;
    }
    shm_backend *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->head.ops = &shm_ops;
    m->head.max_bytes = max_bytes;
    m->head.default_ttl_ms = default_ttl_ms;
    m->sock = -1;
    pthread_mutex_init(&m->owners_lock, NULL);
    m->name[0] = '/';
    memcpy(m->name + 1, name, name_len);
    m->name[name_len + 1] = 0;

    int created = 1;
    int fd = shm_open(m->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) {
        created = 0;
        fd = shm_open(m->name, O_RDWR | O_CLOEXEC, 0600);
    }
    if (fd < 0) {
        snprintf(err, errlen, "shm_open: %s", strerror(errno));
        shm_destroy(&m->head);
        return NULL;
    }
    struct stat st;
    if (created) {
        /* The pages are reserved now: a /dev/shm that cannot hold the segment is an error
         * here, not a SIGBUS later when a write touches a page tmpfs has no room for. */
        int fe = ftruncate(fd, (off_t)size) ? errno : 0;
        if (!fe) {
            fe = posix_fallocate(fd, 0, (off_t)size);
            if (fe == EOPNOTSUPP || fe == EINVAL) fe = 0; /* a file system without it */
        }
        if (fe) {
            snprintf(err, errlen, "cannot reserve %llu bytes for the segment: %s",
                     (unsigned long long)size, strerror(fe));
            close(fd);
            shm_unlink(m->name);
            shm_destroy(&m->head);
            return NULL;
        }
        m->size = size;
    } else {
        /* Its size is the creator's; wait a moment for the creator's ftruncate. */
        for (int i = 0; i < 2000; i++) {
            if (fstat(fd, &st) == 0 && st.st_size > 0) break;
            usleep(1000);
        }
        if (fstat(fd, &st) || st.st_size < (off_t)(1u << 20) || (uint64_t)st.st_size > (1ull << 40)) {
            snprintf(err, errlen, "the existing segment has an unusable size");
            close(fd);
            shm_destroy(&m->head);
            return NULL;
        }
        m->size = (uint64_t)st.st_size;
    }
    if (compute_layout(m->size, &m->L)) {
        snprintf(err, errlen, "the segment is too small");
        close(fd);
        shm_destroy(&m->head);
        return NULL;
    }
    void *base = mmap(NULL, m->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED) {
        snprintf(err, errlen, "mmap: %s", strerror(errno));
        shm_destroy(&m->head);
        return NULL;
    }
    m->base = base;
    m->h = base;
    if (created ? init_segment(m) : check_header(m, err, errlen)) {
        if (created) snprintf(err, errlen, "cannot initialize the segment's locks");
        shm_destroy(&m->head);
        return NULL;
    }
    m->pid = (uint32_t)getpid();
    m->inst = atomic_fetch_add(&instances, 1) & 0xff;
    m->sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a;
    socklen_t al = sock_addr(m, m->pid, m->inst, &a);
    struct timeval tv = {0, 100000};
    if (m->sock < 0 || bind(m->sock, (struct sockaddr *)&a, al) ||
        setsockopt(m->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv)) {
        snprintf(err, errlen, "notification socket: %s", strerror(errno));
        shm_destroy(&m->head);
        return NULL;
    }
    if (pthread_create(&m->rx, NULL, rx_main, m)) {
        snprintf(err, errlen, "cannot start the notification thread");
        shm_destroy(&m->head);
        return NULL;
    }
    m->rx_started = 1;
    return &m->head;
}

int pw_shm_unlink(const uint8_t *name, size_t name_len) {
    char path[256];
    if (!name_len || name_len > 200 || memchr(name, '/', name_len)) return PW_ERR;
    path[0] = '/';
    memcpy(path + 1, name, name_len);
    path[name_len + 1] = 0;
    return shm_unlink(path) ? PW_ERR : PW_OK;
}

/* Counters kept in the segment (every process's): writes refused because it was full,
 * bad links cut, locks recovered from a dead holder. */
int pw_shm_stats(pw_backend *b, uint64_t out[3]) {
    if (!b || b->ops != &shm_ops) return PW_ERR;
    shm_backend *m = (shm_backend *)b;
    out[0] = atomic_load(&m->h->full);
    out[1] = atomic_load(&m->h->corrupt);
    out[2] = atomic_load(&m->h->recovered);
    return PW_OK;
}
