/* Shared queues (ABI.md §9.2): keyed by (scope, name), a scope being (namespace, vm_id), ids from 1, process-wide.
 *
 * Producers never take a lock: finding a queue by id reads a published slot, and an item
 * goes in with one lock-free MPSC push. Any VM may dequeue, so dequeuers take the queue's
 * consumer lock (only they contend for it). Each enqueue posts one on_queue_ready to the
 * dispatcher of the last registrant, delivered later on that thread. Registration and
 * lookup by name are rare and share a reader/writer lock.
 *
 * Bound: at most max_items (default QUEUE_MAX_ITEMS, pw_queue_set_max_items) wait in one
 * queue, and at most max_bytes (pw_queue_set_max_bytes) in all of one scope's queues
 * together (a guest may create PW_QUEUES_PER_VM queues: a cap per queue would let it hold
 * that many times the cap); an enqueue past either answers INTERNAL_FAILURE and stores
 * nothing (the producer decides what to do; nothing is lost silently). Names are found
 * through a hash index, and one VM may create at most PW_QUEUES_PER_VM queues
 * (hostcalls.c), so no guest can make registration slow or use up the process's table. */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define QUEUE_SEG 256
#define QUEUE_SEGS 4096 /* up to 1,048,576 queues in the process */

typedef struct qitem {
    mpsc_node node;
    size_t len;
    uint8_t data[];
} qitem;

/* Who is notified: immutable once published. Replaced owners are kept (a producer may be
 * reading one), a few bytes per re-registration. */
typedef struct owner {
    pw_dispatcher *d;
    uint64_t vm_key;
    uint32_t root;
} owner;

/* Bytes waiting in all of one scope's queues. One per scope that ever had a queue, found
 * (or made) at registration under `names`, never freed (as the queues themselves). */
typedef struct budget {
    pw_buf scope;
    _Atomic int64_t bytes;
    struct budget *next;
} budget;

static budget *budgets; /* the list: guarded by `names` */

typedef struct queue {
    pw_buf vm_id, name; /* immutable */
    budget *budget;     /* its scope's (immutable) */
    _Atomic(owner *) owner;
    mpsc items;
    _Atomic int dead;        /* its namespace is gone (queue_retire): finds nothing */
    _Atomic int64_t inflight; /* enqueues and dequeues inside their bracket */
    _Atomic int64_t depth;
    _Atomic int64_t bytes;  /* its part of budget->bytes */
    pthread_mutex_t consumer;
} queue;

typedef struct seg {
    _Atomic(queue *) q[QUEUE_SEG];
} seg;

/* The registry, shared by every thread: slots are published with release stores and read
 * without locks; `names` serializes registration and guards lookups by name. */
static _Atomic(seg *) segs[QUEUE_SEGS];
static _Atomic uint32_t nqueues;
static pthread_rwlock_t names = PTHREAD_RWLOCK_INITIALIZER;
static _Atomic int64_t max_items = QUEUE_MAX_ITEMS;
static _Atomic int64_t max_bytes = 64 << 20; /* per scope; pw_queue_set_max_bytes */

void pw_queue_set_max_bytes(uint64_t n) {
    atomic_store(&max_bytes, n && n < INT64_MAX ? (int64_t)n : INT64_MAX);
}

void pw_queue_set_max_items(uint32_t n) { atomic_store(&max_items, n ? (int64_t)n : QUEUE_MAX_ITEMS); }

static queue *by_id(uint32_t id) {
    if (!id || id > atomic_load_explicit(&nqueues, memory_order_acquire)) return NULL;
    uint32_t i = id - 1;
    seg *s = atomic_load_explicit(&segs[i / QUEUE_SEG], memory_order_acquire);
    return s ? atomic_load_explicit(&s->q[i % QUEUE_SEG], memory_order_acquire) : NULL;
}

static int same(const pw_buf *b, const uint8_t *p, size_t n) {
    return b->len == n && (n == 0 || !memcmp(b->p, p, n));
}

/* The name index: open addressing over queue ids by hash of (vm_id, name); written under
 * `names` held for writing, read under it held for reading. */
static uint32_t *index_ids;
static size_t index_cap, index_n;

static uint64_t name_hash(const uint8_t *vm_id, size_t vl, const uint8_t *name, size_t nl) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < vl; i++) h = (h ^ vm_id[i]) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull; /* separates ("ab","c") from ("a","bc") */
    for (size_t i = 0; i < nl; i++) h = (h ^ name[i]) * 1099511628211ull;
    return h ^ (h >> 31);
}

/* Under `names`. */
static uint32_t find(const uint8_t *vm_id, size_t vl, const uint8_t *name, size_t nl) {
    if (!index_cap) return 0;
    size_t mask = index_cap - 1;
    for (size_t i = name_hash(vm_id, vl, name, nl) & mask; index_ids[i]; i = (i + 1) & mask) {
        queue *q = by_id(index_ids[i]);
        if (q && same(&q->vm_id, vm_id, vl) && same(&q->name, name, nl)) return index_ids[i];
    }
    return 0;
}

/* Under `names` held for writing. */
static int index_add(uint32_t id, const queue *q) {
    if ((index_n + 1) * 2 > index_cap) {
        size_t nc = index_cap ? index_cap * 2 : 256;
        uint32_t *ns = calloc(nc, sizeof *ns);
        if (!ns) return -1;
        for (size_t j = 0; j < index_cap; j++) {
            uint32_t old = index_ids[j];
            if (!old) continue;
            queue *oq = by_id(old);
            size_t k = name_hash(oq->vm_id.p, oq->vm_id.len, oq->name.p, oq->name.len) & (nc - 1);
            while (ns[k]) k = (k + 1) & (nc - 1);
            ns[k] = old;
        }
        free(index_ids);
        index_ids = ns;
        index_cap = nc;
    }
    size_t k = name_hash(q->vm_id.p, q->vm_id.len, q->name.p, q->name.len) & (index_cap - 1);
    while (index_ids[k]) k = (k + 1) & (index_cap - 1);
    index_ids[k] = id;
    index_n++;
    return 0;
}

/* Under `names` (written): the scope's budget, made on first use; NULL out of memory. */
static budget *budget_of(const uint8_t *scope, size_t n) {
    for (budget *b = budgets; b; b = b->next)
        if (b->scope.len == n && (!n || !memcmp(b->scope.p, scope, n))) return b;
    budget *b = calloc(1, sizeof *b);
    if (!b || buf_set(&b->scope, scope, n)) {
        free(b);
        return NULL;
    }
    b->next = budgets;
    budgets = b;
    return b;
}

uint32_t queue_register(const uint8_t *vm_id, size_t vl, const uint8_t *name, size_t nl,
                        pw_dispatcher *d, uint64_t vm_key, uint32_t root, int may_create,
                        int *created) {
    *created = 0;
    owner *o = malloc(sizeof *o);
    if (!o) return 0;
    *o = (owner){d, vm_key, root};
    pthread_rwlock_wrlock(&names);
    uint32_t id = find(vm_id, vl, name, nl);
    if (!id && may_create) {
        uint32_t i = atomic_load_explicit(&nqueues, memory_order_relaxed);
        seg *s = i < QUEUE_SEG * QUEUE_SEGS ? atomic_load(&segs[i / QUEUE_SEG]) : NULL;
        if (i < QUEUE_SEG * QUEUE_SEGS && !s && (s = calloc(1, sizeof *s)))
            atomic_store_explicit(&segs[i / QUEUE_SEG], s, memory_order_release);
        budget *b = s ? budget_of(vm_id, vl) : NULL;
        queue *q = b ? calloc(1, sizeof *q) : NULL;
        if (q && !buf_set(&q->vm_id, vm_id, vl) && !buf_set(&q->name, name, nl)) {
            q->budget = b;
            mpsc_init(&q->items);
            pthread_mutex_init(&q->consumer, NULL);
            atomic_store_explicit(&s->q[i % QUEUE_SEG], q, memory_order_release);
            atomic_store_explicit(&nqueues, i + 1, memory_order_release);
            id = i + 1;
            *created = 1;
            if (index_add(id, q)) id = 0; /* unfindable by name: refused (its slot stays) */
        } else if (q) {
            buf_free(&q->vm_id);
            buf_free(&q->name);
            free(q);
        }
    }
    if (id) {
        atomic_store_explicit(&d->named, 1, memory_order_release);
        atomic_store_explicit(&by_id(id)->owner, o, memory_order_release); /* the last wins */
    } else {
        free(o);
    }
    pthread_rwlock_unlock(&names);
    return id;
}

int queue_resolve(const uint8_t *vm_id, size_t vl, const uint8_t *name, size_t nl, uint32_t *id) {
    pthread_rwlock_rdlock(&names);
    *id = find(vm_id, vl, name, nl);
    pthread_rwlock_unlock(&names);
    return *id ? ST_OK : ST_NOT_FOUND;
}

/* Producers and consumers bracket their use of a queue, so queue_retire can wait for
 * them before freeing its items (the queue struct itself is never freed: a thread may hold
 * it between by_id and the bracket). NULL: no such queue, or retired. */
static int enqueue(queue *q, uint32_t id, const uint8_t *d, size_t n);

static queue *enter(uint32_t id) {
    queue *q = by_id(id);
    if (!q) return NULL;
    atomic_fetch_add(&q->inflight, 1);
    if (atomic_load(&q->dead)) {
        atomic_fetch_sub(&q->inflight, 1);
        return NULL;
    }
    return q;
}

static void leave(queue *q) { atomic_fetch_sub(&q->inflight, 1); }

int queue_enqueue(uint32_t id, const uint8_t *d, size_t n) {
    queue *q = enter(id);
    if (!q) return ST_NOT_FOUND;
    int st = enqueue(q, id, d, n);
    leave(q);
    return st;
}

static int enqueue(queue *q, uint32_t id, const uint8_t *d, size_t n) {
    if (atomic_fetch_add_explicit(&q->depth, 1, memory_order_relaxed) >=
        atomic_load_explicit(&max_items, memory_order_relaxed)) {
        atomic_fetch_sub_explicit(&q->depth, 1, memory_order_relaxed);
        return ST_INTERNAL_FAILURE;
    }
    if (atomic_fetch_add(&q->budget->bytes, (int64_t)n) + (int64_t)n > atomic_load(&max_bytes)) {
        atomic_fetch_sub(&q->budget->bytes, (int64_t)n);
        atomic_fetch_sub_explicit(&q->depth, 1, memory_order_relaxed);
        return ST_INTERNAL_FAILURE;
    }
    qitem *it = malloc(sizeof *it + n);
    if (!it) {
        atomic_fetch_sub(&q->budget->bytes, (int64_t)n);
        atomic_fetch_sub_explicit(&q->depth, 1, memory_order_relaxed);
        return ST_INTERNAL_FAILURE;
    }
    atomic_fetch_add(&q->bytes, (int64_t)n);
    it->len = n;
    if (n) memcpy(it->data, d, n);
    mpsc_push(&q->items, &it->node);
    owner *o = atomic_load_explicit(&q->owner, memory_order_acquire);
    if (o) dispatcher_post(o->d, o->vm_key, o->root, id);
    return ST_OK;
}

int queue_dequeue(uint32_t id, pw_buf *out) {
    queue *q = enter(id);
    if (!q) return ST_NOT_FOUND;
    pthread_mutex_lock(&q->consumer);
    qitem *it = (qitem *)mpsc_pop(&q->items);
    pthread_mutex_unlock(&q->consumer);
    leave(q);
    if (!it) return ST_EMPTY;
    atomic_fetch_sub_explicit(&q->depth, 1, memory_order_relaxed);
    atomic_fetch_sub(&q->bytes, (int64_t)it->len);
    atomic_fetch_sub(&q->budget->bytes, (int64_t)it->len);
    int st = buf_set(out, it->data, it->len) ? ST_INTERNAL_FAILURE : ST_OK;
    free(it);
    return st;
}

int queue_size(uint32_t id) {
    queue *q = by_id(id);
    return q && !atomic_load(&q->dead) ? (int)atomic_load_explicit(&q->depth, memory_order_relaxed)
                                       : -1;
}

/* A namespace is gone: its queues stop being found (by name or id) and their items are
 * freed once no producer or consumer is inside its bracket. The structs stay as
 * tombstones (ids are never reused), a few dozen bytes per queue. */
void queue_retire(const uint8_t *prefix, size_t pl) {
    pthread_rwlock_wrlock(&names);
    uint32_t n = atomic_load(&nqueues), dead = 0;
    for (uint32_t id = 1; id <= n; id++) {
        queue *q = by_id(id);
        if (q && !atomic_load(&q->dead) && q->vm_id.len >= pl && !memcmp(q->vm_id.p, prefix, pl)) {
            atomic_store(&q->dead, 1);
            dead++;
        }
    }
    if (dead) { /* the name index again, without them */
        uint32_t *old = index_ids;
        size_t cap = index_cap;
        index_ids = NULL;
        index_cap = index_n = 0;
        for (size_t j = 0; j < cap; j++) {
            queue *q = old[j] ? by_id(old[j]) : NULL;
            if (q && !atomic_load(&q->dead)) index_add(old[j], q);
        }
        free(old);
    }
    pthread_rwlock_unlock(&names);
    for (uint32_t id = 1; dead && id <= n; id++) {
        queue *q = by_id(id);
        if (!q || !atomic_load(&q->dead) || q->vm_id.len < pl || memcmp(q->vm_id.p, prefix, pl))
            continue;
        while (atomic_load(&q->inflight)) sched_yield();
        pthread_mutex_lock(&q->consumer);
        for (qitem *it; (it = (qitem *)mpsc_pop(&q->items));) free(it);
        pthread_mutex_unlock(&q->consumer);
        atomic_store(&q->depth, 0);
        atomic_fetch_sub(&q->budget->bytes, atomic_exchange(&q->bytes, 0)); /* the scope may come back */
    }
}
