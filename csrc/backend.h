/* Shared-state backends: where one scope's shared data and shared queues live.
 *
 * A scope is (namespace, vm_id), written as one opaque key by scope_make (namespace.c).
 * The in-process store (shared.c, queue.c) is the default and is called directly, with no
 * indirection, when a scope has no backend attached. Other backends (shm.c: one machine,
 * many processes; redis.c: many machines) implement the operations below with the same
 * semantics, which are Envoy's for the ABI part:
 *
 * - get: OK and the value with its cas; NOT_FOUND for a key never set (or deleted, or
 *   expired).
 * - set: cas 0 writes unconditionally; a cas that is not the key's current one answers
 *   CAS_MISMATCH and changes nothing; a key that does not exist never mismatches. Every
 *   successful write gives the key a new cas, never 0, never one the key had before
 *   (within 2^32 writes). A write past the scope's byte cap answers INTERNAL_FAILURE and
 *   changes nothing.
 * - del (beyond the ABI): cas 0 deletes unconditionally, else only if the cas matches
 *   (CAS_MISMATCH otherwise); NOT_FOUND if absent. The key's bytes return to the cap.
 * - expire (beyond the ABI): the key disappears ttl_ms from now (0: never); NOT_FOUND if
 *   absent. A later set keeps the TTL unless it sets a new one (Redis's KEEPTTL).
 * - Queues: ids are u32, never 0. q_register creates the queue if may_create (else only
 *   finds it) and makes `owner` the queue's one owner (the last registrant wins, in any
 *   process); q_resolve finds it by name; q_enqueue stores the item (INTERNAL_FAILURE and
 *   nothing stored when the queue is full) and has the owner's dispatcher deliver one
 *   on_queue_ready for it, on the owner's thread, in the owner's process; q_dequeue takes
 *   the oldest item (EMPTY when none); each item is dequeued exactly once, items from one
 *   producer in the order it enqueued them.
 *
 * Statuses are ABI statuses (ST_* in internal.h). An operation that cannot reach its store
 * (a Redis outage past the backend's timeout) answers INTERNAL_FAILURE and counts it in
 * `unavailable`; it never blocks a worker longer than the backend's configured timeout.
 *
 * Threads: every operation may be called from any thread at once; a backend does its own
 * locking. Guest-visible queue ids carry the backend's slot in their top 8 bits
 * (PW_QUEUE_SLOT), so an id resolves to its backend without a lookup; slot 0 is the
 * in-process store, whose ids stay below 2^24. */
#ifndef PW_BACKEND_H
#define PW_BACKEND_H

#include <stdatomic.h>
#include <stdint.h>

#include "internal.h"

/* PW_QUEUE_SLOT(id), PW_QUEUE_LOCAL(id), PW_BACKEND_SLOTS: in internal.h (the hostcalls
 * route queue ids by slot without including this header). */

/* Who gets a queue's on_queue_ready: meaningful only in the process that registered. The
 * dispatcher pointer stays valid for the process's life: backend.c marks an owner's
 * dispatcher `named` at registration, so it is never freed, only closed (a post to it then
 * answers -1). A post that answers -1 means the owner is gone: keep the item, and its
 * notification, for the next registrant. */
typedef struct pw_queue_owner {
    pw_dispatcher *d;
    uint64_t vm_key;
    uint32_t root;
} pw_queue_owner;

typedef struct pw_backend pw_backend;

typedef struct pw_backend_ops {
    const char *kind; /* "shm", "redis": in errors and stats */
    int (*get)(pw_backend *b, const pw_buf *scope, const uint8_t *k, size_t kl, pw_buf *out,
               uint32_t *cas);
    int (*set)(pw_backend *b, const pw_buf *scope, const uint8_t *k, size_t kl,
               const uint8_t *v, size_t n, uint32_t cas);
    int (*del)(pw_backend *b, const pw_buf *scope, const uint8_t *k, size_t kl, uint32_t cas);
    int (*expire)(pw_backend *b, const pw_buf *scope, const uint8_t *k, size_t kl,
                  uint64_t ttl_ms);
    /* *id is the backend-local id (below 2^24, never 0); backend.c adds the slot. The
     * on_queue_ready a backend posts (dispatcher_post) carries the guest's id:
     * (b->slot << 24) | local id. */
    int (*q_register)(pw_backend *b, const pw_buf *scope, const uint8_t *name, size_t nl,
                      const pw_queue_owner *owner, int may_create, int *created, uint32_t *id);
    int (*q_resolve)(pw_backend *b, const pw_buf *scope, const uint8_t *name, size_t nl,
                     uint32_t *id);
    int (*q_enqueue)(pw_backend *b, uint32_t id, const uint8_t *d, size_t n);
    int (*q_dequeue)(pw_backend *b, uint32_t id, pw_buf *out);
    int64_t (*q_size)(pw_backend *b, uint32_t id); /* -1: no such queue or unreachable */
    void (*destroy)(pw_backend *b);
} pw_backend_ops;

/* The common head of every backend; a backend's own struct starts with it. A backend's
 * constructor fills ops, max_bytes, default_ttl_ms and leaves the rest zero (calloc):
 * slot and refs belong to backend.c. The constructor's caller owns one reference, given
 * back with pw_backend_close; attachments and VMs hold their own, and `destroy` runs when
 * the last one goes, after no operation through the slot is in flight. */
struct pw_backend {
    const pw_backend_ops *ops;
    uint32_t slot;                   /* 1..PW_BACKEND_SLOTS-1 once attached; backend.c */
    _Atomic int64_t refs;            /* holders beyond the creator's one (backend.c) */
    _Atomic uint64_t unavailable;    /* operations answered INTERNAL_FAILURE: store unreachable */
    uint64_t max_bytes;              /* per scope, keys + values; 0: no cap */
    uint64_t default_ttl_ms;         /* given to keys on first write; 0: none */
};

/* backend.c: taking and giving back a reference (the last one destroys the backend). */
void backend_acquire(pw_backend *b);
void backend_release(pw_backend *b);

#endif
