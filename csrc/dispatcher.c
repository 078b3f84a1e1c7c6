/* Dispatchers: how events reach a VM's own thread (ABI.md §9.2, §9.5, DESIGN §3).
 *
 * Each thread that owns VMs has one dispatcher: a lock-free inbox any thread posts to and
 * an eventfd the owner waits on (select/poll, or an asyncio loop's add_reader). Running it
 * on the owner thread delivers queue notifications (one on_queue_ready per enqueue), the
 * answers to outbound calls, and the ticks that are due, never inside another callback. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"

enum { NOTICE_QUEUE, NOTICE_CALL };

typedef struct notice_node {
    mpsc_node node;
    uint64_t vm_key;
    int kind;
    uint32_t root, queue; /* NOTICE_QUEUE */
    pw_call_event ev;     /* NOTICE_CALL; its bytes follow in data */
    uint8_t data[];
} notice_node;

/* A dispatcher that a queue owner names is never freed (a producer on any thread may
 * still post to it); a closed one drops what is posted. Its eventfd is closed anyway:
 * posters and wakers announce themselves in `active` and check `closed` inside that
 * bracket, and close waits for the bracket to empty, so no write can reach a closed (or
 * reused) descriptor. A dispatcher no queue names is freed by pw_dispatcher_free. */
static int enter(pw_dispatcher *d) {
    atomic_fetch_add(&d->active, 1);
    if (atomic_load(&d->closed)) {
        atomic_fetch_sub(&d->active, 1);
        return 0;
    }
    return 1;
}

static void leave(pw_dispatcher *d) { atomic_fetch_sub(&d->active, 1); }

/* Inside the active bracket (seq_cst against close's closed-then-wait). */
static void wake_locked(pw_dispatcher *d) {
    if (!atomic_exchange_explicit(&d->signaled, 1, memory_order_acq_rel)) {
        uint64_t one = 1;
        ssize_t r;
        do r = write(d->efd, &one, sizeof one);
        while (r < 0 && errno == EINTR);
    }
}

/* Inside the active bracket; counted, so a run takes only what was posted before it. */
static void push(pw_dispatcher *d, notice_node *n) {
    atomic_fetch_add_explicit(&d->posted, 1, memory_order_relaxed);
    mpsc_push(&d->inbox, &n->node);
    wake_locked(d); /* after the push is complete, so no wake-up is lost */
}

pw_dispatcher *pw_dispatcher_new(void) {
    pw_dispatcher *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (d->efd < 0) {
        free(d);
        return NULL;
    }
    mpsc_init(&d->inbox);
    d->owner = pthread_self();
    return d;
}

int pw_dispatcher_fd(pw_dispatcher *d) { return atomic_load(&d->closed) ? -1 : d->efd; }

void pw_dispatcher_wake(pw_dispatcher *d) {
    if (!enter(d)) return;
    wake_locked(d);
    leave(d);
}

void pw_dispatcher_set_autorun(pw_dispatcher *d, int on) { d->autorun = on != 0; }

void pw_dispatcher_track_changes(pw_dispatcher *d, int on) {
    d->track_changes = on != 0;
    if (!on) buf_free(&d->changed);
}

int dispatcher_post(pw_dispatcher *d, uint64_t vm_key, uint32_t root, uint32_t queue) {
    if (!enter(d)) return -1;
    notice_node *n = calloc(1, sizeof *n);
    if (!n) {
        leave(d);
        return -1;
    }
    n->vm_key = vm_key;
    n->kind = NOTICE_QUEUE;
    n->root = root;
    n->queue = queue;
    push(d, n);
    leave(d);
    return 0;
}

int pw_dispatcher_post_call(pw_dispatcher *d, uint64_t vm_key, uint32_t token, int ev,
                            uint32_t status, const uint8_t *headers, size_t headers_len,
                            int nheaders, const uint8_t *body, size_t body_len,
                            const uint8_t *trailers, size_t trailers_len, int ntrailers) {
    size_t total = headers_len + body_len + trailers_len;
    if (total < headers_len || total > SIZE_MAX - sizeof(notice_node)) return -1;
    if (!enter(d)) return -1;
    notice_node *n = malloc(sizeof *n + total);
    if (!n) {
        leave(d);
        return -1;
    }
    n->vm_key = vm_key;
    n->kind = NOTICE_CALL;
    n->root = n->queue = 0;
    uint8_t *p = n->data;
    if (headers_len) memcpy(p, headers, headers_len);
    if (body_len) memcpy(p + headers_len, body, body_len);
    if (trailers_len) memcpy(p + headers_len + body_len, trailers, trailers_len);
    n->ev = (pw_call_event){.token = token, .status = status, .ev = ev,
                            .headers = p, .headers_len = headers_len, .nheaders = nheaders,
                            .body = p + headers_len, .body_len = body_len,
                            .trailers = p + headers_len + body_len,
                            .trailers_len = trailers_len, .ntrailers = ntrailers};
    push(d, n);
    leave(d);
    return 0;
}

/* A stream changed by an event this dispatcher delivered (vm.c, after deferred actions). */
void dispatcher_changed(pw_dispatcher *d, uint64_t vm_key, uint32_t ctx) {
    /* Changed by a call the embedding made (it knows), or nobody reads the list. */
    if (!d || !d->running || !d->track_changes) return;
    uint8_t rec[12];
    wr_le(rec, vm_key, 8);
    wr_le(rec + 8, ctx, 4);
    buf_append(&d->changed, rec, sizeof rec); /* out of memory: the embedding re-checks later */
}

int pw_dispatcher_changed(pw_dispatcher *d, uint8_t *out, size_t cap, size_t *len) {
    size_t n = d->changed.len < cap ? d->changed.len : cap - cap % 12;
    if (n) memcpy(out, d->changed.p, n);
    *len = n;
    buf_drain_front(&d->changed, n);
    return d->changed.len != 0;
}

int dispatcher_add_vm(pw_dispatcher *d, pw_vm *vm) {
    if (d->n_vms == d->cap_vms) {
        size_t nc = d->cap_vms ? d->cap_vms * 2 : 8;
        pw_vm **n = realloc(d->vms, nc * sizeof *n);
        if (!n) return -1;
        d->vms = n;
        d->cap_vms = nc;
    }
    d->vms[d->n_vms++] = vm;
    return 0;
}

void dispatcher_remove_vm(pw_dispatcher *d, pw_vm *vm) {
    for (size_t i = 0; i < d->n_vms; i++)
        if (d->vms[i] == vm) {
            d->vms[i] = d->vms[--d->n_vms];
            return;
        }
}

static pw_vm *vm_by_key(pw_dispatcher *d, uint64_t key) {
    for (size_t i = 0; i < d->n_vms; i++)
        if (d->vms[i]->vm_key == key) return d->vms[i];
    return NULL;
}

int pw_dispatcher_run(pw_dispatcher *d) {
    if (!pthread_equal(d->owner, pthread_self())) return -PW_ERR_THREAD;
    if (atomic_load(&d->closed)) return -PW_ERR_CLOSED;
    for (size_t i = 0; i < d->n_vms; i++)
        if (d->vms[i]->depth) return -PW_ERR_REENTRANT; /* from inside a callback */
    /* Consume the fd first, then clear the flag: a wake-up that lands in between leaves
     * the fd readable (one spurious run), and none is ever lost. */
    uint64_t count;
    while (read(d->efd, &count, sizeof count) < 0 && errno == EINTR) {
    }
    atomic_exchange_explicit(&d->signaled, 0, memory_order_acq_rel); /* acquires the posts */
    int calls = 0;
    mpsc_node *n;
    d->running = 1;
    /* Only what was posted before this run: an on_queue_ready that enqueues to its own
     * queue is served by the next run (the post woke the fd), never in an endless drain. */
    uint64_t budget = atomic_load_explicit(&d->posted, memory_order_relaxed) - d->consumed;
    while (budget && (n = mpsc_pop(&d->inbox))) {
        budget--;
        d->consumed++;
        notice_node *nn = (notice_node *)n;
        pw_vm *vm = vm_by_key(d, nn->vm_key);
        if (vm && (nn->kind == NOTICE_QUEUE ? vm_queue_ready(vm, nn->root, nn->queue)
                                             : callout_deliver(vm, &nn->ev)))
            calls++;
        free(nn);
    }
    for (size_t i = 0; i < d->n_vms; i++) calls += vm_run_ticks(d->vms[i]);
    d->running = 0;
    return calls;
}

uint64_t pw_dispatcher_next_tick_in(pw_dispatcher *d) {
    uint64_t best = UINT64_MAX;
    for (size_t i = 0; i < d->n_vms; i++) {
        uint64_t t = pw_vm_next_tick_in(d->vms[i]);
        if (t < best) best = t;
    }
    return best;
}

void pw_dispatcher_close(pw_dispatcher *d) {
    if (atomic_exchange(&d->closed, 1)) return;
    while (atomic_load(&d->active)) sched_yield(); /* posters inside their bracket */
    mpsc_node *n;
    while ((n = mpsc_pop(&d->inbox))) free(n);
    close(d->efd);
    d->efd = -1;
    /* VMs outliving their dispatcher (Python's collector frees garbage in any order) must
     * not reach back into it. */
    for (size_t i = 0; i < d->n_vms; i++) d->vms[i]->disp = NULL;
    free(d->vms);
    buf_free(&d->changed);
    d->vms = NULL;
    d->n_vms = d->cap_vms = 0;
}

void pw_dispatcher_free(pw_dispatcher *d) {
    if (!d) return;
    pw_dispatcher_close(d);
    /* Named by a queue owner: kept (closed) for producers that may still find it. */
    if (!atomic_load(&d->named)) free(d);
}
