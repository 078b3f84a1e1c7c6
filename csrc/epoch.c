/* Deadlines: the epoch ticker, per-call deadlines, interrupts from other threads, and the
 * check that a thread's stack has room for the wasm stack.
 *
 * The engine is built with epoch interruption: compiled code checks the engine's epoch at
 * function entries and loop back-edges. One ticker thread advances the epoch every
 * EPOCH_TICK_NS while any VM exists. Each top-level guest call arms a deadline one tick
 * ahead; when it is reached, wasmtime calls epoch_callback on the guest's own thread, which
 * traps the call if the VM was interrupted or its deadline (minus the time spent in Python
 * callbacks) has passed, and otherwise waits one more tick. A runaway guest is therefore
 * stopped within one tick of its deadline, and a guest with no deadline can still be
 * stopped by pw_vm_interrupt (Host.close with a timeout). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define EPOCH_TICK_NS 1000000u /* 1 ms */

/* The ticker's state, guarded by tick_lock: which engine it ticks, how many VMs need it
 * (it sleeps on tick_cond when none do), and whether it must end. Touched by the threads
 * that create and free engines and VMs, and by the ticker thread. */
static pthread_mutex_t tick_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tick_cond = PTHREAD_COND_INITIALIZER;
static wasm_engine_t *tick_engine;
static size_t tick_users;
static int tick_stop, tick_running;
static pthread_t tick_thread;

uint64_t epoch_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *ticker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&tick_lock);
    for (;;) {
        while (!tick_users && !tick_stop) pthread_cond_wait(&tick_cond, &tick_lock);
        if (tick_stop) break;
        pthread_mutex_unlock(&tick_lock);
        struct timespec ts = {0, EPOCH_TICK_NS};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
        }
        pw_signals_verify(); /* a handler installed since the last tick goes behind ours */
        pthread_mutex_lock(&tick_lock);
        if (tick_engine) WT.engine_increment_epoch(tick_engine); /* any thread may */
    }
    pthread_mutex_unlock(&tick_lock);
    return NULL;
}

void epoch_configure(wasm_config_t *cfg) {
    WT.config_epoch_interruption_set(cfg, true);
    /* The wasm stack must stay well inside any thread's real stack: without signal
     * handlers an overflow of the real stack is a crash, of the wasm stack a trap. */
    WT.config_max_wasm_stack_set(cfg, PW_WASM_STACK);
}

void epoch_engine_start(wasm_engine_t *e) {
    pthread_mutex_lock(&tick_lock);
    if (!tick_engine) tick_engine = e;
    pthread_mutex_unlock(&tick_lock);
}

void epoch_engine_stop(wasm_engine_t *e) {
    pthread_mutex_lock(&tick_lock);
    int join = 0;
    if (tick_engine == e) {
        tick_engine = NULL;
        if (tick_running) {
            tick_stop = 1;
            join = 1;
            pthread_cond_signal(&tick_cond);
        }
    }
    pthread_mutex_unlock(&tick_lock);
    if (join) {
        pthread_join(tick_thread, NULL);
        pthread_mutex_lock(&tick_lock);
        tick_running = tick_stop = 0;
        pthread_mutex_unlock(&tick_lock);
    }
}

static wasmtime_error_t *epoch_callback(wasmtime_context_t *cx, void *data, uint64_t *delta,
                                        wasmtime_update_deadline_kind_t *kind) {
    (void)cx;
    pw_vm *vm = data;
    *kind = WASMTIME_UPDATE_DEADLINE_CONTINUE;
    *delta = 1;
    if (atomic_load_explicit(&vm->interrupt, memory_order_acquire))
        return WT.error_new("interrupted: the host is shutting down");
    /* Time in Python callbacks (log handlers, foreign functions) is not the guest's, up
     * to one more deadline's worth: a guest that logs without end is still stopped. */
    uint64_t grace = vm->paused_ns < vm->call_deadline_ms * 1000000u ? vm->paused_ns
                                                                     : vm->call_deadline_ms * 1000000u;
    if (vm->call_deadline_ns && epoch_now_ns() > vm->call_deadline_ns + grace) {
        char msg[96];
        snprintf(msg, sizeof msg, "deadline exceeded: the call ran longer than %llu ms",
                 (unsigned long long)vm->call_deadline_ms);
        return WT.error_new(msg);
    }
    return NULL;
}

void epoch_vm_attach(pw_vm *vm) {
    pw_signals_verify(); /* a new VM is rare next to its calls: check the handlers now */
    WT.store_epoch_deadline_callback(vm->store, epoch_callback, vm, NULL);
    pthread_mutex_lock(&tick_lock);
    tick_users++;
    if (!tick_running && tick_engine &&
        pthread_create(&tick_thread, NULL, ticker, NULL) == 0)
        tick_running = 1;
    pthread_cond_signal(&tick_cond);
    pthread_mutex_unlock(&tick_lock);
}

void epoch_vm_detach(pw_vm *vm) {
    (void)vm;
    pthread_mutex_lock(&tick_lock);
    if (tick_users) tick_users--;
    pthread_mutex_unlock(&tick_lock);
}

/* This thread's lowest usable stack address, found once (thread-local: each thread reads
 * and writes only its own). */
static _Thread_local uintptr_t stack_lo;

int epoch_stack_room(size_t *have) {
    char here;
    if (!stack_lo) {
        pthread_attr_t attr;
        void *addr = NULL;
        size_t size = 0;
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            pthread_attr_getstack(&attr, &addr, &size);
            pthread_attr_destroy(&attr);
        }
        stack_lo = addr ? (uintptr_t)addr : 1;
    }
    uintptr_t sp = (uintptr_t)&here;
    *have = sp > stack_lo ? sp - stack_lo : 0;
    return *have >= (size_t)PW_WASM_STACK + PW_STACK_MARGIN;
}

int epoch_call_begin(pw_vm *vm, uint32_t deadline_ms, char *why, size_t whylen) {
    size_t have;
    if (!epoch_stack_room(&have)) {
        snprintf(why, whylen,
                 "this thread's stack has %zu KiB left; a guest call needs %u KiB (the wasm "
                 "stack and the host frames below it): give the thread a bigger stack",
                 have >> 10, (PW_WASM_STACK + PW_STACK_MARGIN) >> 10);
        return -1;
    }
    vm->paused_ns = 0;
    vm->call_deadline_ms = deadline_ms;
    vm->call_deadline_ns = deadline_ms ? epoch_now_ns() + (uint64_t)deadline_ms * 1000000u : 0;
    WT.context_set_epoch_deadline(vm->cx, 1);
    return 0;
}

void pw_vm_interrupt(pw_vm *vm) { atomic_store_explicit(&vm->interrupt, 1, memory_order_release); }
