/* Routing of shared data and queues to a scope's backend (backend.h).
 *
 * A scope (namespace, vm_id) uses the in-process store (shared.c, queue.c) unless a
 * backend is attached to it: to one (namespace, vm_id), or to a namespace for all its
 * vm_ids (an exact attachment wins over a namespace-wide one; among equals the latest
 * wins). A VM looks its backend up once, when it is made (vm_namespace_apply), and keeps a
 * reference; the hostcalls then call the in-process store directly when vm->backend is
 * NULL (internal.h's state_* inlines) and the backend's ops otherwise. Queue ids carry
 * the slot of their backend in their top 8 bits, so enqueue/dequeue by id route without a
 * lookup, and a queue resolved in another vm_id's backend is reachable by its id.
 *
 * An "in-process" backend (pw_backend_inprocess) is a set of options for the in-process
 * store (per-scope byte cap, default TTL): it takes no slot and VMs of its scopes take the
 * direct path.
 *
 * Lifetime: attachments and VMs hold references (backend.h); an operation routed by slot
 * brackets itself with the slot's in-flight count, and a backend's slot is cleared and
 * drained before it is destroyed, so no thread reaches a destroyed backend. Namespaces are
 * reference-counted by their hosts (pw_namespace_acquire/release): when the last host of
 * a non-default namespace goes, its in-process data and queues are freed. */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

/* Slots of attached backends: written under attach_lock, read by any thread. slot_active
 * counts operations in flight through each slot (never freed, so safe to touch even
 * while the slot is being emptied). */
static _Atomic(pw_backend *) slots[PW_BACKEND_SLOTS];
static _Atomic int64_t slot_active[PW_BACKEND_SLOTS];
static uint32_t next_slot = 1; /* under attach_lock: slots are handed out round-robin */

typedef struct attachment {
    pw_buf ns, vm_id;
    int all;
    int soft; /* a host's default options: used only where nothing was chosen */
    pw_backend *b;
    struct attachment *next; /* newest first */
} attachment;

typedef struct nsref {
    pw_buf ns;
    int64_t hosts;
    struct nsref *next;
} nsref;

/* Attachments and namespace counts: any thread, under attach_lock. */
static pthread_mutex_t attach_lock = PTHREAD_MUTEX_INITIALIZER;
static attachment *attached;
static nsref *namespaces;

/* ---- the in-process options --------------------------------------------------------- */
static void inprocess_destroy(pw_backend *b) { free(b); }
static const pw_backend_ops inprocess_ops = {.kind = "inprocess", .destroy = inprocess_destroy};

static int is_local(const pw_backend *b) { return !b || b->ops == &inprocess_ops; }

pw_backend *pw_backend_inprocess(uint64_t max_bytes, uint64_t default_ttl_ms) {
    pw_backend *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->ops = &inprocess_ops;
    b->max_bytes = max_bytes;
    b->default_ttl_ms = default_ttl_ms;
    return b;
}

/* ---- references ------------------------------------------------------------------------ */
void backend_acquire(pw_backend *b) { atomic_fetch_add(&b->refs, 1); }

void backend_release(pw_backend *b) {
    if (!b || atomic_fetch_sub(&b->refs, 1) != 0) return;
    uint32_t s = b->slot;
    if (s) {
        pthread_mutex_lock(&attach_lock);
        atomic_store(&slots[s], NULL);
        pthread_mutex_unlock(&attach_lock);
        while (atomic_load(&slot_active[s])) sched_yield(); /* ops in flight finish */
    }
    b->ops->destroy(b);
}

void pw_backend_close(pw_backend *b) { backend_release(b); }

uint64_t pw_backend_unavailable(pw_backend *b) { return b ? atomic_load(&b->unavailable) : 0; }

const char *pw_backend_kind(pw_backend *b) { return b ? b->ops->kind : "inprocess"; }

/* The backend of a slot, bracketed: backend_exit(slot) when done. NULL: none there. */
static pw_backend *backend_enter(uint32_t s) {
    atomic_fetch_add(&slot_active[s], 1);
    pw_backend *b = atomic_load(&slots[s]);
    if (!b) atomic_fetch_sub(&slot_active[s], 1);
    return b;
}

static void backend_exit(uint32_t s) { atomic_fetch_sub(&slot_active[s], 1); }

/* ---- attachments ------------------------------------------------------------------------- */
static int same(const pw_buf *b, const uint8_t *p, size_t n) {
    return b->len == n && (n == 0 || !memcmp(b->p, p, n));
}

/* Under attach_lock: the newest attachment for exactly this key (soft or chosen ones). */
static attachment *find_exact(const uint8_t *ns, size_t nsl, const uint8_t *vm_id, size_t vl,
                              int all, int soft) {
    for (attachment *a = attached; a; a = a->next)
        if (a->soft == soft && a->all == !!all && same(&a->ns, ns, nsl) &&
            (all || same(&a->vm_id, vm_id, vl)))
            return a;
    return NULL;
}

/* The backend a scope uses, with a reference (NULL: the in-process store, defaults): one
 * chosen for its vm_id, else for its namespace, else a host's default options. */
static pw_backend *lookup(const uint8_t *ns, size_t nsl, const uint8_t *vm_id, size_t vl) {
    pthread_mutex_lock(&attach_lock);
    attachment *a = find_exact(ns, nsl, vm_id, vl, 0, 0);
    if (!a) a = find_exact(ns, nsl, NULL, 0, 1, 0);
    if (!a) a = find_exact(ns, nsl, NULL, 0, 1, 1);
    pw_backend *b = a ? a->b : NULL;
    if (b) backend_acquire(b);
    pthread_mutex_unlock(&attach_lock);
    return b;
}

static int attach(pw_backend *b, const uint8_t *ns, size_t nsl, const uint8_t *vm_id, size_t vl,
                  int all_vm_ids, int soft);

int pw_backend_attach(pw_backend *b, const uint8_t *ns, size_t nsl, const uint8_t *vm_id,
                      size_t vl, int all_vm_ids) {
    return attach(b, ns, nsl, vm_id, vl, all_vm_ids, 0);
}

int pw_backend_attach_default(pw_backend *b, const uint8_t *ns, size_t nsl) {
    return b && is_local(b) ? attach(b, ns, nsl, NULL, 0, 1, 1) : PW_ERR;
}

static int attach(pw_backend *b, const uint8_t *ns, size_t nsl, const uint8_t *vm_id, size_t vl,
                  int all_vm_ids, int soft) {
    if (!b) return PW_ERR;
    attachment *n = calloc(1, sizeof *n);
    if (!n || buf_set(&n->ns, ns, nsl) || buf_set(&n->vm_id, all_vm_ids ? NULL : vm_id,
                                                   all_vm_ids ? 0 : vl)) {
        if (n) buf_free(&n->ns);
        free(n);
        return PW_ERR;
    }
    n->all = !!all_vm_ids;
    n->soft = soft;
    n->b = b;
    int rc = PW_OK;
    pthread_mutex_lock(&attach_lock);
    attachment *cur = find_exact(ns, nsl, vm_id, vl, all_vm_ids, soft);
    /* One scope, one store: a second, different backend for the same key would split the
     * scope's state between VMs made before and after. In-process options may replace
     * in-process options (the latest wins). */
    if (cur && cur->b != b && (!is_local(cur->b) || !is_local(b))) rc = PW_ERR;
    if (rc == PW_OK && !is_local(b) && !b->slot) {
        uint32_t s = 0;
        for (uint32_t i = 0; i < PW_BACKEND_SLOTS - 1 && !s; i++) {
            uint32_t c = 1 + (next_slot - 1 + i) % (PW_BACKEND_SLOTS - 1);
            if (!atomic_load(&slots[c]) && !atomic_load(&slot_active[c])) s = c;
        }
        if (!s) {
            rc = PW_ERR; /* 255 backends attached at once */
        } else {
            next_slot = s % (PW_BACKEND_SLOTS - 1) + 1;
            b->slot = s;
            atomic_store(&slots[s], b);
        }
    }
    if (rc == PW_OK) {
        backend_acquire(b);
        n->next = attached;
        attached = n;
    }
    pthread_mutex_unlock(&attach_lock);
    if (rc != PW_OK) {
        buf_free(&n->ns);
        buf_free(&n->vm_id);
        free(n);
    }
    return rc;
}

int pw_backend_detach(pw_backend *b, const uint8_t *ns, size_t nsl, const uint8_t *vm_id,
                      size_t vl, int all_vm_ids) {
    attachment *gone = NULL;
    pthread_mutex_lock(&attach_lock);
    for (attachment **pa = &attached; *pa; pa = &(*pa)->next) {
        attachment *a = *pa;
        if (a->b == b && a->all == !!all_vm_ids && same(&a->ns, ns, nsl) &&
            (all_vm_ids || same(&a->vm_id, vm_id, vl))) {
            *pa = a->next;
            gone = a;
            break;
        }
    }
    pthread_mutex_unlock(&attach_lock);
    if (!gone) return PW_ERR;
    buf_free(&gone->ns);
    buf_free(&gone->vm_id);
    free(gone);
    backend_release(b);
    return PW_OK;
}

/* ---- namespaces ------------------------------------------------------------------------- */
int pw_namespace_acquire(const uint8_t *ns, size_t nsl) {
    pthread_mutex_lock(&attach_lock);
    nsref *r = namespaces;
    while (r && !same(&r->ns, ns, nsl)) r = r->next;
    if (!r && (r = calloc(1, sizeof *r))) {
        if (buf_set(&r->ns, ns, nsl)) {
            free(r);
            r = NULL;
        } else {
            r->next = namespaces;
            namespaces = r;
        }
    }
    if (r) r->hosts++;
    pthread_mutex_unlock(&attach_lock);
    return r ? PW_OK : PW_ERR;
}

void pw_namespace_release(const uint8_t *ns, size_t nsl) {
    int last = 0;
    pthread_mutex_lock(&attach_lock);
    for (nsref **pr = &namespaces; *pr; pr = &(*pr)->next) {
        nsref *r = *pr;
        if (!same(&r->ns, ns, nsl)) continue;
        if (--r->hosts == 0) {
            *pr = r->next;
            buf_free(&r->ns);
            free(r);
            last = 1;
        }
        break;
    }
    pthread_mutex_unlock(&attach_lock);
    /* The default namespace is the process's, as in Envoy: it is never freed. */
    if (!last || nsl == 0) return;
    pw_buf prefix = {0};
    if (scope_make(&prefix, ns, nsl, NULL, 0) == 0) {
        shared_retire(prefix.p, prefix.len);
        queue_retire(prefix.p, prefix.len);
    }
    buf_free(&prefix);
}

/* ---- VMs ---------------------------------------------------------------------------------- */
int vm_namespace_apply(pw_vm *vm, const uint8_t *ns, size_t nsl) {
    pw_buf scope = {0};
    if (scope_make(&scope, ns, nsl, vm->vm_id.p, vm->vm_id.len) || buf_set(&vm->ns, ns, nsl)) {
        buf_free(&scope);
        return -1;
    }
    pw_backend *b = lookup(ns, nsl, vm->vm_id.p, vm->vm_id.len);
    pw_space *space = NULL;
    if (is_local(b)) {
        if (!(space = shared_space(scope.p, scope.len, 1))) {
            backend_release(b);
            buf_free(&scope);
            return -1;
        }
        if (b) shared_space_configure(space, b->max_bytes, b->default_ttl_ms);
        backend_release(b);
        b = NULL;
    }
    vm_namespace_release(vm);
    buf_free(&vm->scope);
    vm->scope = scope;
    vm->space = space;
    vm->backend = b;
    return 0;
}

void vm_namespace_release(pw_vm *vm) {
    shared_space_unref(vm->space);
    vm->space = NULL;
    backend_release(vm->backend);
    vm->backend = NULL;
}

/* ---- the hostcalls' slow paths -------------------------------------------------------------- */
/* Time a guest spends waiting on a backend (a Redis round trip, up to its timeout) is not
 * the guest's: it counts as paused for the callback's deadline (epoch.c), as Python's
 * time does. */
int backend_get(pw_vm *vm, const uint8_t *k, size_t kl, pw_buf *out, uint32_t *cas) {
    uint64_t t0 = epoch_now_ns();
    int st = vm->backend->ops->get(vm->backend, &vm->scope, k, kl, out, cas);
    vm_paused(vm, t0);
    return st;
}

int backend_set(pw_vm *vm, const uint8_t *k, size_t kl, const uint8_t *v, size_t n, uint32_t cas) {
    uint64_t t0 = epoch_now_ns();
    int st = vm->backend->ops->set(vm->backend, &vm->scope, k, kl, v, n, cas);
    vm_paused(vm, t0);
    return st;
}

int backend_del(pw_vm *vm, const uint8_t *k, size_t kl, uint32_t cas) {
    if (!vm->backend) return shared_del(vm->space, k, kl, cas);
    uint64_t t0 = epoch_now_ns();
    int st = vm->backend->ops->del(vm->backend, &vm->scope, k, kl, cas);
    vm_paused(vm, t0);
    return st;
}

int backend_expire(pw_vm *vm, const uint8_t *k, size_t kl, uint64_t ttl_ms) {
    if (!vm->backend) return shared_expire(vm->space, k, kl, ttl_ms);
    uint64_t t0 = epoch_now_ns();
    int st = vm->backend->ops->expire(vm->backend, &vm->scope, k, kl, ttl_ms);
    vm_paused(vm, t0);
    return st;
}

int backend_q_register(pw_vm *vm, const uint8_t *name, size_t nl, uint32_t root, int may_create,
                       int *created, uint32_t *id) {
    *created = 0;
    *id = 0;
    if (!vm->backend) {
        *id = queue_register(vm->scope.p, vm->scope.len, name, nl, vm->disp, vm->vm_key, root,
                             may_create, created);
        return *id ? ST_OK : ST_INTERNAL_FAILURE;
    }
    pw_backend *b = vm->backend;
    pw_queue_owner o = {vm->disp, vm->vm_key, root};
    uint32_t local = 0;
    uint64_t t0 = epoch_now_ns();
    int st = b->ops->q_register(b, &vm->scope, name, nl, &o, may_create, created, &local);
    vm_paused(vm, t0);
    if (st == ST_OK && (!local || local > 0xffffffu)) st = ST_INTERNAL_FAILURE;
    if (st == ST_OK) {
        /* The owner may be posted to from the backend's threads: keep it alive (as
         * queue.c does for its owners). */
        atomic_store_explicit(&vm->disp->named, 1, memory_order_release);
        *id = (b->slot << 24) | local;
    }
    return st;
}

/* Resolves in the backend of (ns, vm_id) (b NULL: in-process), giving a routed id. */
static int resolve_in(pw_backend *b, const pw_buf *scope, const uint8_t *name, size_t nl,
                      uint32_t *id) {
    if (is_local(b)) return queue_resolve(scope->p, scope->len, name, nl, id);
    uint32_t local = 0;
    int st = b->ops->q_resolve(b, scope, name, nl, &local);
    if (st == ST_OK && (!local || local > 0xffffffu)) st = ST_NOT_FOUND;
    if (st == ST_OK) *id = (b->slot << 24) | local;
    return st;
}

int backend_q_resolve(pw_vm *vm, const uint8_t *vm_id, size_t vl, const uint8_t *name,
                      size_t nl, uint32_t *id) {
    if (!vl) {
        uint64_t t0 = epoch_now_ns();
        int st = resolve_in(vm->backend, &vm->scope, name, nl, id);
        if (vm->backend) vm_paused(vm, t0);
        return st;
    }
    /* Another vm_id in this VM's namespace: its own backend. */
    pw_buf scope = {0};
    if (scope_make(&scope, vm->ns.p, vm->ns.len, vm_id, vl)) {
        buf_free(&scope);
        return ST_INTERNAL_FAILURE;
    }
    pw_backend *b = lookup(vm->ns.p, vm->ns.len, vm_id, vl);
    uint64_t t0 = epoch_now_ns();
    int st = resolve_in(b, &scope, name, nl, id);
    if (b) vm_paused(vm, t0);
    backend_release(b);
    buf_free(&scope);
    return st;
}

int backend_q_enqueue(uint32_t id, const uint8_t *d, size_t n) {
    uint32_t s = PW_QUEUE_SLOT(id);
    pw_backend *b = backend_enter(s);
    if (!b) return ST_NOT_FOUND;
    int st = b->ops->q_enqueue(b, PW_QUEUE_LOCAL(id), d, n);
    backend_exit(s);
    return st;
}

int backend_q_dequeue(uint32_t id, pw_buf *out) {
    uint32_t s = PW_QUEUE_SLOT(id);
    pw_backend *b = backend_enter(s);
    if (!b) return ST_NOT_FOUND;
    int st = b->ops->q_dequeue(b, PW_QUEUE_LOCAL(id), out);
    backend_exit(s);
    return st;
}

/* ---- the embedding's API ------------------------------------------------------------------- */
/* One scope's store for the duration of a call: either a backend or an in-process space. */
typedef struct target {
    pw_buf scope;
    pw_backend *b;
    pw_space *space;
} target;

static int target_open(target *t, const uint8_t *ns, size_t nsl, const uint8_t *vm_id, size_t vl,
                       int create) {
    memset(t, 0, sizeof *t);
    if (scope_make(&t->scope, ns, nsl, vm_id, vl)) return -1;
    t->b = lookup(ns, nsl, vm_id, vl);
    if (is_local(t->b)) {
        t->space = shared_space(t->scope.p, t->scope.len, create);
        if (t->space && t->b) shared_space_configure(t->space, t->b->max_bytes, t->b->default_ttl_ms);
        backend_release(t->b);
        t->b = NULL;
    }
    return 0;
}

static void target_close(target *t) {
    shared_space_unref(t->space);
    backend_release(t->b);
    buf_free(&t->scope);
}

int pw_shared_get(const uint8_t *ns, size_t ns_len, const uint8_t *vm_id, size_t vm_id_len,
                  const uint8_t *key, size_t key_len, uint8_t **out, size_t *out_len,
                  uint32_t *cas) {
    target t;
    pw_buf b = {0};
    int st = ST_INTERNAL_FAILURE;
    if (!target_open(&t, ns, ns_len, vm_id, vm_id_len, 0))
        st = t.b ? t.b->ops->get(t.b, &t.scope, key, key_len, &b, cas)
                 : shared_get(t.space, key, key_len, &b, cas);
    target_close(&t);
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
    target t;
    int st = ST_INTERNAL_FAILURE;
    if (!target_open(&t, ns, ns_len, vm_id, vm_id_len, 1))
        st = t.b ? t.b->ops->set(t.b, &t.scope, key, key_len, value, value_len, cas)
                 : shared_set(t.space, key, key_len, value, value_len, cas);
    target_close(&t);
    return st;
}

int pw_shared_delete(const uint8_t *ns, size_t ns_len, const uint8_t *vm_id, size_t vm_id_len,
                     const uint8_t *key, size_t key_len, uint32_t cas) {
    target t;
    int st = ST_INTERNAL_FAILURE;
    if (!target_open(&t, ns, ns_len, vm_id, vm_id_len, 0))
        st = t.b ? t.b->ops->del(t.b, &t.scope, key, key_len, cas)
                 : shared_del(t.space, key, key_len, cas);
    target_close(&t);
    return st;
}

int pw_shared_expire(const uint8_t *ns, size_t ns_len, const uint8_t *vm_id, size_t vm_id_len,
                     const uint8_t *key, size_t key_len, uint64_t ttl_ms) {
    target t;
    int st = ST_INTERNAL_FAILURE;
    if (!target_open(&t, ns, ns_len, vm_id, vm_id_len, 0))
        st = t.b ? t.b->ops->expire(t.b, &t.scope, key, key_len, ttl_ms)
                 : shared_expire(t.space, key, key_len, ttl_ms);
    target_close(&t);
    return st;
}

int pw_queue_resolve(const uint8_t *ns, size_t ns_len, const uint8_t *vm_id, size_t vm_id_len,
                     const uint8_t *name, size_t name_len, uint32_t *out_id) {
    pw_buf scope = {0};
    int st = ST_INTERNAL_FAILURE;
    if (!scope_make(&scope, ns, ns_len, vm_id, vm_id_len)) {
        pw_backend *b = lookup(ns, ns_len, vm_id, vm_id_len);
        st = resolve_in(b, &scope, name, name_len, out_id);
        backend_release(b);
    }
    buf_free(&scope);
    return st;
}

int pw_queue_size(uint32_t id) {
    uint32_t s = PW_QUEUE_SLOT(id);
    if (!s) return queue_size(id);
    pw_backend *b = backend_enter(s);
    if (!b) return -1;
    int64_t n = b->ops->q_size(b, PW_QUEUE_LOCAL(id));
    backend_exit(s);
    return n < 0 ? -1 : n > INT32_MAX ? INT32_MAX : (int)n;
}

int pw_queue_enqueue(uint32_t id, const uint8_t *data, size_t len) {
    return state_enqueue(id, data, len);
}

int pw_queue_dequeue(uint32_t id, uint8_t **out, size_t *out_len) {
    pw_buf b = {0};
    int st = state_dequeue(id, &b);
    if (st != ST_OK) {
        buf_free(&b);
        return st;
    }
    if (!b.p) b.p = malloc(1);
    *out = b.p;
    *out_len = b.len;
    return b.p ? ST_OK : ST_INTERNAL_FAILURE;
}

/* ---- the foreign functions (beyond the ABI, every backend) ------------------------------------ */
/* delete_shared_data: u32 cas (little-endian), then the key. OK, NOT_FOUND, CAS_MISMATCH. */
static int ff_delete(pw_vm *vm, const uint8_t *a, size_t n, pw_buf *out) {
    (void)out;
    if (n < 4) return ST_BAD_ARGUMENT;
    return backend_del(vm, a + 4, n - 4, (uint32_t)rd_le(a, 4));
}

/* expire_shared_data: u64 ttl in ms (little-endian; 0: never), then the key. OK, NOT_FOUND. */
static int ff_expire(pw_vm *vm, const uint8_t *a, size_t n, pw_buf *out) {
    (void)out;
    if (n < 8) return ST_BAD_ARGUMENT;
    return backend_expire(vm, a + 8, n - 8, rd_le(a, 8));
}

int backend_register_foreign(pw_vm *vm) {
    static const struct {
        const char *name;
        int (*fn)(pw_vm *, const uint8_t *, size_t, pw_buf *);
    } fns[] = {{"delete_shared_data", ff_delete}, {"expire_shared_data", ff_expire}};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        pw_foreign *f = calloc(1, sizeof *f);
        if (!f || buf_set(&f->name, (const uint8_t *)fns[i].name, strlen(fns[i].name))) {
            free(f);
            return -1;
        }
        f->native = fns[i].fn;
        f->next = vm->foreign;
        vm->foreign = f;
    }
    return 0;
}
