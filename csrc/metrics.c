/* Metrics (ABI.md §5.10): stats by (namespace, kind, name) with atomic values; each VM
 * hands out its own ids, with the kind in the low two bits as Envoy does. A histogram also
 * counts its samples in fixed buckets with Envoy's default bounds (its Prometheus
 * exposition). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum { M_COUNTER = 0, M_GAUGE = 1, M_HISTOGRAM = 2 };

/* Envoy's default histogram bucket bounds (HistogramSettingsImpl::defaultBuckets). */
static const double bounds[PW_HIST_BUCKETS - 1] = {
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
    600000, 1800000, 3600000};

void pw_hist_bounds(double out[PW_HIST_BUCKETS - 1]) { memcpy(out, bounds, sizeof bounds); }

struct metric {
    int kind;
    pw_buf ns, name;
    _Atomic uint64_t *buckets; /* histogram: PW_HIST_BUCKETS counters, else NULL */
    _Atomic int64_t value; /* counter, gauge; sample count for a histogram */
    _Atomic uint64_t sum;  /* histogram: sum of samples */
    struct metric *next;
};

/* The stats list: guarded by metrics_lock (any thread); values are atomics. */
static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static struct metric *metrics;

static int eq(const pw_buf *b, const uint8_t *p, size_t n) {
    return b->len == n && (!n || !memcmp(b->p, p, n));
}

static struct metric *find_locked(const uint8_t *ns, size_t nsl, int kind, const uint8_t *name,
                                  size_t nl) {
    for (struct metric *m = metrics; m; m = m->next)
        if ((kind < 0 || m->kind == kind) && eq(&m->name, name, nl) && eq(&m->ns, ns, nsl))
            return m;
    return NULL;
}

int metric_define(pw_vm *vm, uint32_t kind, const uint8_t *name, size_t nl, uint32_t *id) {
    pthread_mutex_lock(&metrics_lock);
    struct metric *m = find_locked(vm->ns.p, vm->ns.len, (int)kind, name, nl);
    if (!m && (m = calloc(1, sizeof *m))) {
        if ((kind == M_HISTOGRAM &&
             !(m->buckets = calloc(PW_HIST_BUCKETS, sizeof(_Atomic uint64_t)))) ||
            buf_set(&m->name, name, nl) || buf_set(&m->ns, vm->ns.p, vm->ns.len)) {
            free((void *)m->buckets);
            buf_free(&m->name);
            buf_free(&m->ns);
            free(m);
            m = NULL;
        } else {
            m->kind = (int)kind;
            m->next = metrics;
            metrics = m;
        }
    }
    pthread_mutex_unlock(&metrics_lock);
    if (!m) return ST_INTERNAL_FAILURE;
    /* A new id on every call, even for the same name (Envoy). */
    if (vm->n_metrics == vm->cap_metrics) {
        size_t nc = vm->cap_metrics ? vm->cap_metrics * 2 : 16;
        struct metric **n = realloc(vm->metrics, nc * sizeof *n);
        if (!n) return ST_INTERNAL_FAILURE;
        vm->metrics = n;
        vm->cap_metrics = nc;
    }
    if (vm->n_metrics >= (UINT32_MAX >> 2) - 1) return ST_INTERNAL_FAILURE;
    vm->metrics[vm->n_metrics++] = m;
    *id = ((uint32_t)vm->n_metrics << 2) | kind;
    return ST_OK;
}

static struct metric *by_id(pw_vm *vm, uint32_t id) {
    size_t i = id >> 2;
    if (!i || i > vm->n_metrics) return NULL;
    struct metric *m = vm->metrics[i - 1];
    return (uint32_t)m->kind == (id & 3) ? m : NULL;
}

int metric_increment(pw_vm *vm, uint32_t id, int64_t off) {
    struct metric *m = by_id(vm, id);
    if (!m) return ST_NOT_FOUND;
    if (m->kind == M_HISTOGRAM || (m->kind == M_COUNTER && off <= 0)) return ST_BAD_ARGUMENT;
    atomic_fetch_add(&m->value, off);
    return ST_OK;
}

int metric_record(pw_vm *vm, uint32_t id, uint64_t v) {
    struct metric *m = by_id(vm, id);
    if (!m) return ST_NOT_FOUND;
    switch (m->kind) {
    case M_COUNTER: atomic_fetch_add(&m->value, (int64_t)v); break; /* adds, as Envoy */
    case M_GAUGE: atomic_store(&m->value, (int64_t)v); break;
    default: {
        size_t b = 0;
        while (b < PW_HIST_BUCKETS - 1 && (double)v > bounds[b]) b++;
        atomic_fetch_add(&m->buckets[b], 1);
        atomic_fetch_add(&m->value, 1);
        atomic_fetch_add(&m->sum, v);
    }
    }
    return ST_OK;
}

int metric_get(pw_vm *vm, uint32_t id, uint64_t *v) {
    struct metric *m = by_id(vm, id);
    if (!m) return ST_NOT_FOUND;
    if (m->kind == M_HISTOGRAM) return ST_BAD_ARGUMENT;
    *v = (uint64_t)atomic_load(&m->value);
    return ST_OK;
}

int pw_metric_get(const uint8_t *ns, size_t ns_len, const uint8_t *name, size_t name_len,
                  int *kind, int64_t *value, uint64_t *sum) {
    pthread_mutex_lock(&metrics_lock);
    struct metric *m = find_locked(ns, ns_len, -1, name, name_len);
    if (m) {
        *kind = m->kind;
        *value = atomic_load(&m->value);
        *sum = atomic_load(&m->sum);
    }
    pthread_mutex_unlock(&metrics_lock);
    return m ? ST_OK : ST_NOT_FOUND;
}

int pw_metrics_dump(const uint8_t *ns, size_t ns_len, uint8_t **out, size_t *len) {
    pw_buf b = {0};
    int ok = 1;
    pthread_mutex_lock(&metrics_lock);
    for (struct metric *m = metrics; m && ok; m = m->next) {
        if (!eq(&m->ns, ns, ns_len)) continue;
        /* kind u8, name length u32, value i64, sum u64 (little-endian), then the name */
        uint8_t rec[21];
        uint32_t nl = (uint32_t)m->name.len;
        int64_t v = atomic_load(&m->value);
        uint64_t sum = atomic_load(&m->sum);
        rec[0] = (uint8_t)m->kind;
        wr_le(rec + 1, nl, 4);
        wr_le(rec + 5, (uint64_t)v, 8);
        wr_le(rec + 13, sum, 8);
        ok = !buf_append(&b, rec, sizeof rec) && !buf_append(&b, m->name.p, m->name.len);
        for (int i = 0; ok && m->buckets && i < PW_HIST_BUCKETS; i++) {
            uint64_t c = atomic_load(&m->buckets[i]);
            uint8_t le[8];
            for (int j = 0; j < 8; j++) le[j] = (uint8_t)(c >> (8 * j));
            ok = !buf_append(&b, le, 8);
        }
    }
    pthread_mutex_unlock(&metrics_lock);
    if (!ok || (!b.p && buf_reserve(&b, 1))) {
        buf_free(&b);
        return PW_ERR;
    }
    *out = b.p;
    *len = b.len;
    return PW_OK;
}
