/* Shared queues (ABI.md §9.2): keyed by (vm_id, name), ids from a process-wide counter
 * starting at 1; the last registration chooses who is notified. Each enqueue posts one
 * on_queue_ready to the owner VM, delivered later on the owner's thread. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct item {
    struct item *next;
    size_t len;
    uint8_t data[];
} item;

typedef struct queue {
    pw_buf vm_id, name;
    uint64_t owner_vm;
    uint32_t owner_root;
    item *head, *tail;
    size_t depth;
} queue;

/* All queues, indexed by id - 1; guarded by queues_lock (any thread). */
static pthread_mutex_t queues_lock = PTHREAD_MUTEX_INITIALIZER;
static queue **queues;
static size_t nqueues, capqueues;

static int same(const pw_buf *b, const uint8_t *p, size_t n) {
    return b->len == n && (n == 0 || !memcmp(b->p, p, n));
}

static queue *find_locked(const uint8_t *vm_id, size_t vl, const uint8_t *name, size_t nl,
                          uint32_t *id) {
    for (size_t i = 0; i < nqueues; i++)
        if (same(&queues[i]->vm_id, vm_id, vl) && same(&queues[i]->name, name, nl)) {
            *id = (uint32_t)i + 1;
            return queues[i];
        }
    return NULL;
}

uint32_t queue_register(const uint8_t *vm_id, size_t vl, const uint8_t *name, size_t nl,
                        uint64_t vm_key, uint32_t root) {
    uint32_t id = 0;
    pthread_mutex_lock(&queues_lock);
    queue *q = find_locked(vm_id, vl, name, nl, &id);
    if (!q && nqueues < UINT32_MAX - 1) {
        if (nqueues == capqueues) {
            size_t nc = capqueues ? capqueues * 2 : 16;
            queue **n = realloc(queues, nc * sizeof *n);
            if (n) {
                queues = n;
                capqueues = nc;
            }
        }
        q = nqueues < capqueues ? calloc(1, sizeof *q) : NULL;
        if (q && (buf_set(&q->vm_id, vm_id, vl) || buf_set(&q->name, name, nl))) {
            buf_free(&q->vm_id);
            free(q);
            q = NULL;
        }
        if (q) {
            queues[nqueues++] = q;
            id = (uint32_t)nqueues;
        }
    }
    if (q) { /* the last registration wins */
        q->owner_vm = vm_key;
        q->owner_root = root;
    }
    pthread_mutex_unlock(&queues_lock);
    return q ? id : 0;
}

int queue_resolve(const uint8_t *vm_id, size_t vl, const uint8_t *name, size_t nl, uint32_t *id) {
    pthread_mutex_lock(&queues_lock);
    queue *q = find_locked(vm_id, vl, name, nl, id);
    pthread_mutex_unlock(&queues_lock);
    return q ? ST_OK : ST_NOT_FOUND;
}

int queue_enqueue(uint32_t id, const uint8_t *d, size_t n) {
    item *it = malloc(sizeof *it + n);
    if (!it) return ST_INTERNAL_FAILURE;
    it->next = NULL;
    it->len = n;
    if (n) memcpy(it->data, d, n);
    pthread_mutex_lock(&queues_lock);
    if (!id || id > nqueues) {
        pthread_mutex_unlock(&queues_lock);
        free(it);
        return ST_NOT_FOUND;
    }
    queue *q = queues[id - 1];
    if (q->tail) q->tail->next = it;
    else q->head = it;
    q->tail = it;
    q->depth++;
    uint64_t owner = q->owner_vm;
    uint32_t root = q->owner_root;
    pthread_mutex_unlock(&queues_lock);
    vm_post_notice(owner, root, id);
    return ST_OK;
}

int queue_dequeue(uint32_t id, pw_buf *out) {
    pthread_mutex_lock(&queues_lock);
    if (!id || id > nqueues) {
        pthread_mutex_unlock(&queues_lock);
        return ST_NOT_FOUND;
    }
    queue *q = queues[id - 1];
    item *it = q->head;
    if (it) {
        q->head = it->next;
        if (!q->head) q->tail = NULL;
        q->depth--;
    }
    pthread_mutex_unlock(&queues_lock);
    if (!it) return ST_EMPTY;
    int st = buf_set(out, it->data, it->len) ? ST_INTERNAL_FAILURE : ST_OK;
    free(it);
    return st;
}

int pw_queue_resolve(const uint8_t *vm_id, size_t vm_id_len, const uint8_t *name,
                     size_t name_len, uint32_t *out_id) {
    return queue_resolve(vm_id, vm_id_len, name, name_len, out_id);
}

int pw_queue_size(uint32_t id) {
    pthread_mutex_lock(&queues_lock);
    int n = (!id || id > nqueues) ? -1 : (int)queues[id - 1]->depth;
    pthread_mutex_unlock(&queues_lock);
    return n;
}

int pw_queue_enqueue(uint32_t id, const uint8_t *data, size_t len) {
    return queue_enqueue(id, data, len);
}
