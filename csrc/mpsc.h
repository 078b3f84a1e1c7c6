/* A lock-free multi-producer single-consumer FIFO (Vyukov's intrusive queue).
 *
 * Producers on any thread push with one atomic exchange and one store; each producer's
 * nodes come out in the order it pushed them. One consumer at a time pops. A pop may
 * answer "empty" for a moment while a producer is between its exchange and its store;
 * callers that need a wake-up make the producer signal after its push completes. */
#ifndef PW_MPSC_H
#define PW_MPSC_H

#include <stdatomic.h>
#include <stddef.h>

typedef struct mpsc_node {
    _Atomic(struct mpsc_node *) next;
} mpsc_node;

typedef struct mpsc {
    _Atomic(mpsc_node *) head; /* producers' end */
    mpsc_node *tail;           /* consumer's end */
    mpsc_node stub;
} mpsc;

static inline void mpsc_init(mpsc *q) {
    atomic_store_explicit(&q->stub.next, NULL, memory_order_relaxed);
    atomic_store_explicit(&q->head, &q->stub, memory_order_relaxed);
    q->tail = &q->stub;
}

static inline void mpsc_push(mpsc *q, mpsc_node *n) {
    atomic_store_explicit(&n->next, NULL, memory_order_relaxed);
    mpsc_node *prev = atomic_exchange_explicit(&q->head, n, memory_order_acq_rel);
    atomic_store_explicit(&prev->next, n, memory_order_release);
}

static inline mpsc_node *mpsc_pop(mpsc *q) {
    mpsc_node *tail = q->tail;
    mpsc_node *next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (tail == &q->stub) {
        if (!next) return NULL;
        q->tail = next;
        tail = next;
        next = atomic_load_explicit(&next->next, memory_order_acquire);
    }
    if (next) {
        q->tail = next;
        return tail;
    }
    if (tail != atomic_load_explicit(&q->head, memory_order_acquire)) return NULL; /* mid-push */
    mpsc_push(q, &q->stub);
    next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (next) {
        q->tail = next;
        return tail;
    }
    return NULL;
}

#endif
