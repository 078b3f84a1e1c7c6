/* Contexts: the id table of a VM, root (plugin) contexts, creation and teardown in
 * Envoy's order, and properties stored per context. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- id table: open addressing, ids are never reused ----------------------------------- */
static size_t slot_of(const pw_ctx_table *t, uint32_t id) {
    size_t mask = t->cap - 1, i = (id * 2654435761u) & mask;
    while (t->slots[i] && t->slots[i]->id != id) i = (i + 1) & mask;
    return i;
}

pw_ctx *ctx_get(pw_vm *vm, uint32_t id) {
    if (!vm->ctxs.cap || !id) return NULL;
    return vm->ctxs.slots[slot_of(&vm->ctxs, id)];
}

static int table_put(pw_ctx_table *t, pw_ctx *c) {
    if ((t->n + 1) * 2 > t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 64;
        pw_ctx **ns = calloc(nc, sizeof *ns);
        if (!ns) return -1;
        pw_ctx_table nt = {ns, nc, 0};
        for (size_t i = 0; i < t->cap; i++)
            if (t->slots[i]) {
                nt.slots[slot_of(&nt, t->slots[i]->id)] = t->slots[i];
                nt.n++;
            }
        free(t->slots);
        *t = nt;
    }
    t->slots[slot_of(t, c->id)] = c;
    t->n++;
    return 0;
}

static void table_del(pw_ctx_table *t, uint32_t id) {
    size_t mask = t->cap - 1, i = slot_of(t, id);
    if (!t->slots[i]) return;
    t->slots[i] = NULL;
    t->n--;
    /* Re-seat the rest of the cluster so lookups keep finding them. */
    for (size_t j = (i + 1) & mask; t->slots[j]; j = (j + 1) & mask) {
        pw_ctx *c = t->slots[j];
        t->slots[j] = NULL;
        t->slots[slot_of(t, c->id)] = c;
    }
}

/* ---- properties stored on a context ------------------------------------------------------ */
const pw_prop *prop_find(const pw_prop *list, const uint8_t *path, size_t pl) {
    for (; list; list = list->next)
        if (list->path.len == pl && (pl == 0 || memcmp(list->path.p, path, pl) == 0)) return list;
    return NULL;
}

int prop_set(pw_prop **list, const uint8_t *path, size_t pl, const uint8_t *v, size_t vl) {
    pw_prop *p = (pw_prop *)prop_find(*list, path, pl);
    if (p) return buf_set(&p->value, v, vl);
    p = calloc(1, sizeof *p);
    if (!p || buf_set(&p->path, path, pl) || buf_set(&p->value, v, vl)) {
        if (p) {
            buf_free(&p->path);
            free(p);
        }
        return -1;
    }
    p->next = *list;
    *list = p;
    return 0;
}

void prop_free_all(pw_prop **list) {
    while (*list) {
        pw_prop *p = *list;
        *list = p->next;
        buf_free(&p->path);
        buf_free(&p->value);
        free(p);
    }
}

/* ---- lifecycle ------------------------------------------------------------------------------ */
/* Finished HTTP stream contexts are kept (up to SPARE_MAX per VM) with their buffers, so
 * a steady flow of requests allocates nothing on the hot path. */
#define SPARE_MAX 64

static pw_ctx *ctx_alloc(pw_vm *vm, int kind) {
    if (kind == CTX_HTTP && vm->spare) {
        pw_ctx *c = vm->spare;
        vm->spare = c->root; /* the spare list is linked through root */
        vm->n_spare--;
        pw_http *h = c->h;
        http_reset(h);
        memset(c, 0, sizeof *c);
        c->h = h;
        return c;
    }
    pw_ctx *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    if (kind == CTX_ROOT) c->r = calloc(1, sizeof *c->r);
    if (kind == CTX_HTTP) c->h = calloc(1, sizeof *c->h);
    if (kind == CTX_TCP) c->t = calloc(1, sizeof *c->t);
    if (!c->r && !c->h && !c->t) {
        free(c);
        return NULL;
    }
    return c;
}

pw_ctx *ctx_new(pw_vm *vm, int kind, pw_ctx *root) {
    pw_ctx *c = ctx_alloc(vm, kind);
    if (!c) return NULL;
    c->kind = kind;
    /* One counter per VM, starting at 1, shared by roots and streams (ABI.md §2.4). */
    c->id = vm->next_id++;
    if (!vm->next_id) vm->next_id = 1;
    c->root = kind == CTX_ROOT ? c : root;
    if (table_put(&vm->ctxs, c)) {
        free(c->r);
        if (c->h) http_free(c->h);
        free(c->h);
        free(c->t);
        free(c);
        return NULL;
    }
    return c;
}

/* Delivers proxy_on_context_create the first time a stream is used, as Envoy does. */
int ctx_ensure_created(pw_vm *vm, pw_ctx *c) {
    if (c->created) return 0;
    c->created = 1;
    uint32_t a[2] = {c->id, c->kind == CTX_ROOT ? 0 : c->root->id};
    return vm_call(vm, FN_ON_CONTEXT_CREATE, c, PH_OTHER, 2, a, NULL) < 0 ? -1 : 0;
}

static void ctx_free(pw_vm *vm, pw_ctx *c) {
    prop_free_all(&c->host_props);
    prop_free_all(&c->filter_state);
    if (c->h && vm && vm->n_spare < SPARE_MAX) {
        c->root = vm->spare;
        vm->spare = c;
        vm->n_spare++;
        return;
    }
    if (c->r) {
        buf_free(&c->r->name);
        buf_free(&c->r->root_id);
        buf_free(&c->r->config);
        buf_free(&c->r->status_msg);
        prop_free_all(&c->r->readonly_props);
        free(c->r);
    }
    if (c->h) {
        http_free(c->h);
        free(c->h);
    }
    if (c->t) {
        tcp_free(c->t);
        free(c->t);
    }
    free(c);
}

/* Sends proxy_on_delete (only for contexts the guest knows) and forgets the context. */
void ctx_delete(pw_vm *vm, pw_ctx *c) {
    uint32_t id = c->id;
    if (c->created) vm_call(vm, FN_ON_DELETE, c, PH_OTHER, 1, &id, NULL);
    /* A callback still running against this context falls back to the current one. */
    if (vm->eff == c) vm->eff = vm->cur;
    table_del(&vm->ctxs, id);
    /* A deleted root's calls are cancelled: no answer reaches a context that is gone. */
    if (c->kind == CTX_ROOT) callout_cancel_root(vm, id);
    /* Streams of a deleted root keep a dangling pointer otherwise: detach them. */
    if (c->kind == CTX_ROOT)
        for (size_t i = 0; i < vm->ctxs.cap; i++)
            if (vm->ctxs.slots[i] && vm->ctxs.slots[i]->root == c) vm->ctxs.slots[i]->root = NULL;
    ctx_free(vm, c);
}

void ctx_table_free(pw_vm *vm) {
    for (size_t i = 0; i < vm->ctxs.cap; i++)
        if (vm->ctxs.slots[i]) ctx_free(NULL, vm->ctxs.slots[i]);
    while (vm->spare) {
        pw_ctx *c = vm->spare;
        vm->spare = c->root;
        ctx_free(NULL, c);
    }
    free(vm->ctxs.slots);
    memset(&vm->ctxs, 0, sizeof vm->ctxs);
}

pw_ctx *ctx_effective(pw_vm *vm) { return vm->eff ? vm->eff : vm->cur; }

/* ---- roots --------------------------------------------------------------------------------- */
int pw_root_new(pw_vm *vm, const uint8_t *name, size_t name_len, const uint8_t *root_id,
                size_t root_id_len, const uint8_t *config, size_t config_len, void *log_handle,
                int log_level, uint32_t *out_id) {
    VM_ENTER(vm);
    if (vm->failed) return PW_ERR_FAILED;
    pw_ctx *c = ctx_new(vm, CTX_ROOT, NULL);
    if (!c) return PW_ERR;
    if (buf_set(&c->r->name, name, name_len) || buf_set(&c->r->root_id, root_id, root_id_len) ||
        buf_set(&c->r->config, config, config_len)) {
        ctx_delete(vm, c);
        return PW_ERR;
    }
    c->r->log_handle = log_handle;
    c->r->log_level = log_level;
    c->r->deadline_ms = vm->limits.deadline_ms;
    *out_id = c->id;
    if (ctx_ensure_created(vm, c)) return PW_ERR_TRAP;
    uint32_t ok = 1, a[2] = {c->id, (uint32_t)vm->vm_config.len};
    if (vm_call(vm, FN_ON_VM_START, c, PH_VM_START, 2, a, &ok) < 0) return PW_ERR_TRAP;
    vm_run_deferred(vm);
    if (!ok) return PW_ERR_VM_REJECTED;
    ok = 1;
    a[1] = (uint32_t)c->r->config.len;
    if (vm_call(vm, FN_ON_CONFIGURE, c, PH_CONFIGURE, 2, a, &ok) < 0) return PW_ERR_TRAP;
    vm_run_deferred(vm);
    return ok ? PW_OK : PW_ERR_REJECTED;
}

static pw_ctx *root_of(pw_vm *vm, uint32_t id) {
    pw_ctx *c = ctx_get(vm, id);
    return (c && c->kind == CTX_ROOT) ? c : NULL;
}

void pw_root_set_fail_open(pw_vm *vm, uint32_t root, int fail_open) {
    pw_ctx *c = root_of(vm, root);
    if (c) c->r->fail_open = fail_open != 0;
}

void pw_root_set_log_level(pw_vm *vm, uint32_t root, int level) {
    pw_ctx *c = root_of(vm, root);
    if (c) c->r->log_level = level;
}

uint32_t pw_root_tick_period(pw_vm *vm, uint32_t root) {
    pw_ctx *c = root_of(vm, root);
    return c ? c->r->tick_period_ms : 0;
}

int pw_root_tick(pw_vm *vm, uint32_t root) {
    VM_ENTER(vm);
    if (vm->failed) return PW_ERR_FAILED;
    pw_ctx *c = root_of(vm, root);
    if (!c) return PW_ERR_NO_CONTEXT;
    if (vm_call(vm, FN_ON_TICK, c, PH_OTHER, 1, &root, NULL) < 0) return PW_ERR_TRAP;
    vm_run_deferred(vm);
    return PW_OK;
}

int pw_context_alive(pw_vm *vm, uint32_t ctx) { return ctx_get(vm, ctx) != NULL; }

int pw_root_done(pw_vm *vm, uint32_t root) {
    VM_ENTER_NEG(vm);
    pw_ctx *c = root_of(vm, root);
    if (!c) return -PW_ERR_NO_CONTEXT;
    uint32_t done = 1;
    if (c->created && vm_call(vm, FN_ON_DONE, c, PH_OTHER, 1, &root, &done) < 0) done = 1;
    if (!done) {
        c->r->pending_done = 1;
        vm_run_deferred(vm);
        return 0;
    }
    ctx_delete(vm, c);
    vm_run_deferred(vm);
    return 1;
}

int pw_root_foreign_call(pw_vm *vm, uint32_t root, uint32_t function_id, const uint8_t *args,
                         size_t len) {
    VM_ENTER(vm);
    if (vm->failed) return PW_ERR_FAILED;
    pw_ctx *c = root_of(vm, root);
    if (!c) return PW_ERR_NO_CONTEXT;
    if (buf_set(&vm->call_data, args, len)) return PW_ERR;
    uint32_t a[3] = {root, function_id, (uint32_t)len};
    int r = vm_call(vm, FN_ON_FOREIGN_FUNCTION, c, PH_FOREIGN, 3, a, NULL);
    buf_clear(&vm->call_data);
    vm_run_deferred(vm);
    return r < 0 ? PW_ERR_TRAP : PW_OK;
}

uint32_t pw_vm_current_context(pw_vm *vm, int *kind) {
    *kind = -1;
    if (!pthread_equal(vm->owner, pthread_self())) return 0;
    pw_ctx *c = ctx_effective(vm);
    if (!c) return 0;
    *kind = c->kind == CTX_ROOT ? PW_CTX_ROOT : c->kind == CTX_HTTP ? PW_CTX_HTTP : PW_CTX_TCP;
    return c->id;
}
